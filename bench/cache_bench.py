"""Component benchmark of the cache alone (no API server, no CLI): how many watch events
per second CacheStore applies, and how many rows per second SnapshotReader turns into
Arrow. Synthetic pods and configmaps shaped like the end-to-end benchmark's.

    .venv/bin/python -m bench.cache_bench --objects 100000 [--profile ingest|emission]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from watcher.resources import BY_KEY
from watcher.snapshot import SnapshotReader
from watcher.state import CacheStore, InformerStatus

PODS, CMS = BY_KEY["pods"], BY_KEY["configmaps"]


def pod(i: int, rv: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"pod-{i}", "namespace": f"ns-{i % 30}", "uid": str(uuid.UUID(int=i)), "resourceVersion": str(rv),
            "labels": {"app": f"app-{i % 50}", "tier": "web"}, "annotations": {"bench/owner": f"team-{i % 7}"},
            "creationTimestamp": "2026-11-26T00:00:00Z",
        },
        "spec": {"nodeName": f"node-{i % 20}", "containers": [{"name": "app", "image": f"registry.example/app-{i % 50}:1.{i % 9}",
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
        "status": {"phase": "Pending", "qosClass": "Burstable"},
    }  # fmt: skip


def configmap(i: int, rv: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"cm-{i}", "namespace": f"ns-{i % 30}", "uid": str(uuid.UUID(int=10**9 + i)), "resourceVersion": str(rv),
                     "labels": {"app": f"app-{i % 50}"}, "creationTimestamp": "2026-11-26T00:00:00Z"},
        "data": {"config.yaml": f"key: value-{i}\nreplicas: {i % 5}\n" * 4},
    }  # fmt: skip


def ingest(store: CacheStore, n: int, chunk: int) -> float:
    """Apply n watch events (ADDED) in chunks as a watch delivers them; events/s."""
    half = n // 2
    started = time.perf_counter()
    for desc, make, count in ((PODS, pod, half), (CMS, configmap, n - half)):
        status = InformerStatus(context="bench", resource=desc.key, table_name=desc.table, state="watching")
        for start in range(0, count, chunk):
            events = [("ADDED", make(i, 1000 + i)) for i in range(start, min(count, start + chunk))]
            store.apply_events("bench", desc, events, status)
    store.flush()
    return n / (time.perf_counter() - started)


def emission(path: Path) -> tuple[float, int]:
    rows = 0
    started = time.perf_counter()
    with SnapshotReader.open(path) as snap:
        for table in (PODS.table, CMS.table):
            for batch in snap.batches(table, "bench"):
                rows += batch.num_rows
    return rows / (time.perf_counter() - started), rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument(
        "--chunk", type=int, default=50, help="events per watch read (a busy watch delivers tens)"
    )
    parser.add_argument("--profile", choices=["ingest", "emission"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.db"
        store = CacheStore(path)
        profiler = cProfile.Profile() if args.profile == "ingest" else None
        if profiler:
            profiler.enable()
        rate = ingest(store, args.objects, args.chunk)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        store.close()
        print(f"ingest: {rate:,.0f} events/s ({args.objects} events, {args.chunk} per watch read)")
        profiler = cProfile.Profile() if args.profile == "emission" else None
        if profiler:
            profiler.enable()
        erate, rows = emission(path)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        print(f"emission: {erate:,.0f} rows/s ({rows} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
