"""Streaming into PostgreSQL: API write -> row visible in PostgreSQL, through the daemon,
a ``follow: true`` sync of the real CloudQuery CLI and the real PostgreSQL destination.

Per rate: ConfigMap updates (PATCH) at that many writes/s for ``seconds``, then deletes
of as many pre-created ConfigMaps at the same rate; latency from the API's response to
the new resourceVersion (or the row's absence) in PostgreSQL, p50/p99. At the end
PostgreSQL must equal the API server object by object (uid and resourceVersion).

    .venv/bin/python -m bench.streaming --rates 100,500 --seconds 60

``streaming_bench(work)`` is the same for bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from bench.run import _conn
from testbed.cluster import ControlPlanes, control_planes
from testbed.cq import destination_config, source_config, start_cloudquery
from testbed.daemon import DaemonProcess
from testbed.postgres import postgres_server

CTX = "c1"
HOT = 500
WORKERS = 16


def _pg_rows(dsn: str, namespace: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute(
                "SELECT uid::text, resource_version FROM k8s_configmaps WHERE context_name = %s AND namespace = %s",
                (CTX, namespace),
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {u: v for u, v in rows}


def _api_rows(planes: ControlPlanes, namespace: str) -> dict[str, str]:
    items = planes.servers[CTX].admin().list(f"/api/v1/namespaces/{namespace}/configmaps")["items"]
    return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}


def _create(planes: ControlPlanes, namespace: str, count: int) -> None:
    server = planes.servers[CTX]
    server.admin().create("/api/v1/namespaces", {"metadata": {"name": namespace}})

    def one(i: int) -> None:
        body = {"metadata": {"name": f"cm-{i}"}, "data": {"k": "v" * 200}}
        _conn(server).request("POST", f"/api/v1/namespaces/{namespace}/configmaps", body)

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(one, range(count)))


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def _phase(
    dsn: str, namespace: str, names: list[str], rate: int, seconds: float, write: Callable[[str, int], str]
) -> dict[str, float]:
    """``write(name, n)`` returns what PostgreSQL must show: the new resourceVersion, or
    "" for a deletion (the row gone). Latency: from the API's response to that state in
    PostgreSQL, polled every 50 ms."""
    # uid -> [(rv or "", time of the response)]: a later write of the same object may
    # arrive before an earlier one shows; each write is seen once PostgreSQL has it or newer.
    pending: dict[str, list[tuple[str, float]]] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def poll() -> None:
        while True:
            rows = _pg_rows(dsn, namespace)
            now = time.monotonic()
            with lock:
                for uid, writes in list(pending.items()):
                    have = rows.get(uid)
                    seen = [
                        t for rv, t in writes
                        if (rv == "" and have is None) or (rv and have is not None and int(have) >= int(rv))
                    ]  # fmt: skip
                    latencies.extend(now - t for t in seen)
                    if len(seen) == len(writes):
                        del pending[uid]
                    elif seen:
                        pending[uid] = [(rv, t) for rv, t in writes if t not in seen]
                if stop.is_set() and (not pending or now - stopped_at > 30):
                    return
            time.sleep(0.05)

    stopped_at = 0.0
    poller = threading.Thread(target=poll)
    poller.start()
    interval = WORKERS / rate

    def worker(w: int) -> int:
        n, next_at = 0, time.monotonic()
        deadline = next_at + seconds
        for name in names[w::WORKERS]:
            if time.monotonic() >= deadline:
                break
            uid_rv = write(name, n)
            uid, _, rv = uid_rv.partition(":")
            with lock:
                pending.setdefault(uid, []).append((rv, time.monotonic()))
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        return n

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        writes = sum(pool.map(worker, range(WORKERS)))
    achieved = writes / (time.monotonic() - started)
    stopped_at = time.monotonic()
    stop.set()
    poller.join()
    latencies.sort()
    return {
        "writes": writes,
        "writes_per_s": round(achieved, 1),
        "p50_ms": round(1000 * statistics.median(latencies)) if latencies else float("nan"),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))]) if latencies else float("nan"),
        "max_ms": round(1000 * latencies[-1]) if latencies else float("nan"),
        "not_seen_30s_after": sum(len(w) for w in pending.values()),
    }


def _rate(planes: ControlPlanes, dsn: str, rate: int, seconds: float) -> dict[str, Any]:
    """Updates of the hot ConfigMaps, then deletes of pre-created ones, at ``rate``/s."""
    server = planes.servers[CTX]
    count = int(rate * seconds)
    gone = f"del-{rate}"
    _create(planes, gone, count)
    _wait(lambda: len(_pg_rows(dsn, gone)) == count, 300, f"{gone} streamed")

    def patch(name: str, n: int) -> str:
        obj = _conn(server).request(
            "PATCH", f"/api/v1/namespaces/hot/configmaps/{name}",
            {"metadata": {"annotations": {"bench/n": str(n)}}}, content_type="application/merge-patch+json",
        )  # fmt: skip
        return f"{obj['metadata']['uid']}:{obj['metadata']['resourceVersion']}"

    # A DELETE answers with a Status, not the object: take the uids from a list first.
    items = planes.servers[CTX].admin().list(f"/api/v1/namespaces/{gone}/configmaps")["items"]
    uids = {i["metadata"]["name"]: i["metadata"]["uid"] for i in items}

    def delete(name: str, _n: int) -> str:
        _conn(server).request("DELETE", f"/api/v1/namespaces/{gone}/configmaps/{name}")
        return f"{uids[name]}:"

    updates = _phase(dsn, "hot", [f"cm-{i % HOT}" for i in range(count)], rate, seconds, patch)
    print(f"  {rate}/s updates: {updates}", flush=True)
    deletes = _phase(dsn, gone, [f"cm-{i}" for i in range(count)], rate, seconds, delete)
    print(f"  {rate}/s deletes: {deletes}", flush=True)
    return {"updates": updates, "deletes": deletes}


def streaming_bench(
    work: Path, *, rates: tuple[int, ...] = (100, 500), seconds: float = 60, batch_timeout: str = "1s"
) -> dict[str, Any]:
    out: dict[str, Any] = {"seconds": seconds, "batch_timeout": batch_timeout, "rates": {}}
    with control_planes([CTX], workdir=work / "kube") as planes, postgres_server() as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute("CREATE DATABASE stream")
        dsn = pg.dsn.replace("/postgres?", "/stream?")
        _create(planes, "hot", HOT)
        daemon = DaemonProcess(planes.kubeconfig, work / "cache.db", work / "daemon.log", CTX).start()
        source = source_config(
            {"follow": True}, registry="grpc", path=daemon.grpc_address, tables=["k8s_configmaps"],
            with_state_backend=True,
        )  # fmt: skip
        dest = destination_config(dsn, write_mode="overwrite", spec={"batch_timeout": batch_timeout})
        cli = start_cloudquery(["sync"], workdir=work / "cq", configs=[source, dest])
        try:
            _wait(lambda: len(_pg_rows(dsn, "hot")) == HOT, 120, "initial snapshot in PostgreSQL")
            for rate in rates:
                out["rates"][rate] = _rate(planes, dsn, rate, seconds)
            assert cli.poll() is None, "the follow sync ended"
            time.sleep(3)
            mismatched = {}
            for ns in ["hot", *(f"del-{r}" for r in rates)]:
                api, rows = _api_rows(planes, ns), _pg_rows(dsn, ns)
                missing = sum(1 for u in api if u not in rows)
                stale = sum(1 for u, v in api.items() if u in rows and rows[u] != v)
                extra = sum(1 for u in rows if u not in api)
                mismatched[ns] = {"objects": len(api), "missing": missing, "stale": stale, "extra": extra}
            out["end_state"] = mismatched
            print(f"  end state: {mismatched}", flush=True)
            assert all(m["missing"] == m["stale"] == m["extra"] == 0 for m in mismatched.values()), mismatched
            out["daemon_peak_rss_mb"] = daemon.peak_rss_mb()
        finally:
            cli.send_signal(signal.SIGTERM)
            cli.wait(60)
            daemon.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="100,500")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--batch-timeout", default="1s", help="the destination's batch_timeout")
    args = parser.parse_args()
    os.environ["CQ_TELEMETRY_LEVEL"] = "none"
    with tempfile.TemporaryDirectory(prefix="k8s-watcher-stream-") as tmp:
        result = streaming_bench(
            Path(tmp),
            rates=tuple(int(r) for r in args.rates.split(",")),
            seconds=args.seconds,
            batch_timeout=args.batch_timeout,
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
