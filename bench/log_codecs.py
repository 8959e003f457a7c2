"""What compressing the history log's segments costs and saves (see BENCHMARKS.md,
"History"): the history bench's churn (bench/history_bench.py's 100k mix) logged as the
writer logs it, a segment per watch read, then each segment encoded as JSON alone and
compressed by each codec: microseconds per version and bytes per version.

    .venv/bin/python -m bench.log_codecs [--objects 30000]     # about a minute
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from collections.abc import Callable

import orjson
import zstandard

from bench.history_bench import KINDS, Fleet
from watcher.cache.history import logged_upsert
from watcher.resources import BY_KEY
from watcher.tables import sanitize


def segments(objects: int) -> tuple[list[list[list[object]]], int]:
    """The churn's segments (one per watch read of 50 events) and their versions."""
    fleet = Fleet(objects)
    out = []
    for _ctx, kind, events in fleet.churn(objects):
        desc = BY_KEY[KINDS[kind]]
        out.append(
            [logged_upsert(t, o, sanitize(o, desc), metadata_only=desc.metadata_only) for t, o in events]
        )
    return out, sum(len(s) for s in out)


def measure(
    name: str, encode: Callable[[bytes], bytes], bodies: list[bytes], versions: int
) -> dict[str, float]:
    started = time.perf_counter()
    out = [encode(b) for b in bodies]
    seconds = time.perf_counter() - started
    size = sum(map(len, out))
    return {"codec": name, "us_per_version": round(seconds / versions * 1e6, 2),
            "bytes_per_version": round(size / versions), "ratio": round(sum(map(len, bodies)) / size, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--objects", type=int, default=30_000, help="objects listed, and as many churn events"
    )
    args = parser.parse_args()
    segs, versions = segments(args.objects)
    started = time.perf_counter()
    bodies = [orjson.dumps(s) for s in segs]
    json_us = (time.perf_counter() - started) / versions * 1e6
    results = [{"codec": "JSON alone (orjson)", "us_per_version": round(json_us, 2),
                "bytes_per_version": round(sum(map(len, bodies)) / versions), "ratio": 1.0}]  # fmt: skip
    zstd1 = zstandard.ZstdCompressor(level=1)
    for name, encode in (
        ("zstd level 1 (the writer's)", zstd1.compress),
        ("zstd level 3", zstandard.ZstdCompressor(level=3).compress),
        ("zlib level 1", lambda b: zlib.compress(b, 1)),
    ):
        results.append(measure(name, encode, bodies, versions))
    print(json.dumps({"segments": len(bodies), "versions": versions, "codecs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
