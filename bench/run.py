"""Benchmarks, side by side in one run, against the real parts (see BENCHMARKS.md).

For each size N: a fresh test bed with 3 contexts, N objects in a realistic mix, the
k8s-watcher daemon, PostgreSQL, the real CloudQuery CLI and the real PostgreSQL
destination v8.16.0. Measures:

1. `cloudquery sync` wall time: (a) daemon, warm cache, registry grpc (with the
   plugin's own Sync time and the fixed cost of a one-table sync beside it); (b)
   forced relist (registry local, no cache); (c) the official CloudQuery k8s source
   v6.2.4 with its defaults (bench/peer.py); (d) a null source emitting the same rows
   from memory; (e) PostgreSQL alone (binary COPY of the same rows). Ratios a/b, a/c,
   a/d. Incremental syncs: one carrying nothing, one carrying 1k changes.
2. Cache -> Arrow emission rate (rows/s, no destination).
3. Freshness: API write -> visible in the cache, p50/p99, under sustained writes/s.
4. Ingest: the watch-event rate the cache keeps up with under a write blast.
5. Daemon peak RSS (VmHWM).
6. API requests (LIST, WATCH) each variant issues per sync (audit log).

    .venv/bin/python -m bench.run --sizes 10000,100000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sqlite3
import ssl
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pyarrow as pa

from bench.etcd_load import etcd_blast
from bench.null_source import write_batches
from bench.peer import official_sync
from testbed.cluster import ApiServer, ControlPlanes, control_planes, crd_manifest
from testbed.cq import destination_config, run_cloudquery, source_config
from testbed.daemon import DaemonProcess
from testbed.postgres import postgres_server
from watcher.catalog import ALL_TABLES, DEFAULT_TABLES
from watcher.snapshot import SnapshotReader

REPO = Path(__file__).resolve().parent.parent
CONTEXTS = ["c1", "c2", "c3"]
#: Share of N per kind: mostly pods and configmaps, as in real clusters.
MIX = {
    "pods": 0.40, "configmaps": 0.30, "events": 0.10, "secrets": 0.05, "deployments": 0.04,
    "services": 0.04, "widgets": 0.04, "namespaces": 0.03,
}  # fmt: skip
GROUP = "bench.k8s-watcher.io"


class Conn:
    """A keep-alive HTTPS connection to one API server (one per writer thread)."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(server.ca_file))
        self.conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=self.ctx, timeout=60)

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {self.server.admin_token}",
            "Content-Type": content_type,
            "Accept": "application/json",
        }
        for attempt in range(5):
            try:
                self.conn.request(
                    method, path, body=orjson.dumps(body) if body is not None else None, headers=headers
                )
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.status == 429 or resp.status >= 500:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                if resp.status >= 400 and resp.status != 409:
                    raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
                return orjson.loads(data)
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPSConnection(
                    "127.0.0.1", self.server.port, context=self.ctx, timeout=60
                )
        raise RuntimeError(f"{method} {path}: gave up")


_local = threading.local()


def _conn(server: ApiServer) -> Conn:
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    if server.name not in conns:
        conns[server.name] = Conn(server)
    return conns[server.name]


def _object(kind: str, i: int, ns: str) -> tuple[str, dict[str, Any]]:
    labels = {"app": f"app-{i % 50}", "tier": ("web", "db", "cache")[i % 3]}
    meta = {"name": f"{kind[:-1]}-{i}", "labels": labels, "annotations": {"bench/owner": f"team-{i % 7}"}}
    container = {
        "name": "app",
        "image": f"registry.example/app-{i % 50}:1.{i % 9}",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
    }
    base = f"/api/v1/namespaces/{ns}"
    if kind == "pods":
        return f"{base}/pods", {
            "metadata": meta,
            "spec": {"containers": [container], "nodeName": f"node-{i % 20}"},
        }
    if kind == "configmaps":
        return f"{base}/configmaps", {
            "metadata": meta,
            "data": {"config.yaml": f"key: value-{i}\nreplicas: {i % 5}\n" * 4},
        }
    if kind == "secrets":
        return f"{base}/secrets", {"metadata": meta, "stringData": {"password": f"bench-secret-{i}"}}
    if kind == "services":
        return f"{base}/services", {
            "metadata": meta,
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        }
    if kind == "deployments":
        return f"/apis/apps/v1/namespaces/{ns}/deployments", {
            "metadata": meta,
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        }
    if kind == "events":
        return f"/apis/events.k8s.io/v1/namespaces/{ns}/events", {
            "metadata": meta, "eventTime": "2026-11-26T00:00:00.000000Z", "reason": "Scheduled", "note": f"event {i}",
            "type": "Normal", "action": "Binding", "reportingController": "bench", "reportingInstance": "bench-1",
            "regarding": {"kind": "Pod", "namespace": ns, "name": f"pod-{i}"},
        }  # fmt: skip
    if kind == "widgets":
        return f"/apis/{GROUP}/v1/namespaces/{ns}/widgets", {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Widget",
            "metadata": meta,
            "spec": {"size": i % 10},
        }
    raise ValueError(kind)


def populate(planes: ControlPlanes, n: int) -> dict[str, int]:
    """Create about ``n`` objects across the contexts in the MIX proportions."""
    per_ctx = n // len(CONTEXTS)
    counts = {k: max(1, int(per_ctx * share)) for k, share in MIX.items()}
    n_ns = counts.pop("namespaces")
    jobs: list[tuple[ApiServer, str, dict[str, Any]]] = []
    for ctx in CONTEXTS:
        server = planes.servers[ctx]
        admin = server.admin()
        admin.create(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd_manifest(GROUP, "widgets", kind="Widget"),
        )
        for j in range(n_ns):
            admin.create(
                "/api/v1/namespaces", {"metadata": {"name": f"ns-{j}", "labels": {"team": f"t{j % 5}"}}}
            )
        for kind, count in counts.items():
            for i in range(count):
                path, body = _object(kind, i, f"ns-{i % n_ns}")
                jobs.append((server, path, body))
    for ctx in CONTEXTS:  # wait for the CRD to be served
        admin = planes.servers[ctx].admin()
        for _ in range(100):
            try:
                if admin.get(f"/apis/{GROUP}/v1/widgets") is not None:
                    break
            except RuntimeError:  # 429 "storage is (re)initializing"
                pass
            time.sleep(0.2)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(lambda job: _conn(job[0]).request("POST", job[1], job[2]), jobs, chunksize=64))
    elapsed = time.monotonic() - started
    total = len(jobs) + n_ns * len(CONTEXTS)
    print(f"  populated {total} objects in {elapsed:.0f}s ({len(jobs) / elapsed:.0f}/s)", flush=True)
    return {"objects_created": total}


# --------------------------------------------------------------------------- helpers


def audit_counts(planes: ControlPlanes, since: float, until: float) -> dict[str, int]:
    """LIST and WATCH requests issued by k8s-watcher (user agent) in [since, until]."""
    counts = {"list": 0, "watch": 0, "get": 0}
    for server in planes.servers.values():
        for e in server.audit_events():
            if not e.get("userAgent", "").startswith("k8s-watcher/") or (
                e.get("stage") != "ResponseStarted" and e["verb"] == "watch"
            ):
                continue
            t = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if since <= t <= until and e["verb"] in counts:
                if e["verb"] == "list" and e.get("stage") != "ResponseComplete":
                    continue
                counts[e["verb"]] += 1
    return counts


def timed_sync(work: Path, configs: list[dict[str, Any]]) -> tuple[float, int]:
    started = time.monotonic()
    result = run_cloudquery(["sync"], workdir=work, configs=configs, timeout=3600)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(result.output[-3000:])
    import re

    match = re.search(r'"resources":(\d+)', result.output)
    return elapsed, int(match.group(1)) if match else -1


def emission_rate(cache: Path, *, passes: int = 4) -> tuple[float, float, int, Path]:
    """Cache -> Arrow for every table and context (no destination): the first pass
    (cold: what a freshly started process pays once) and the median of the following
    ones (what a running daemon does on each sync). Also writes the batches to an IPC
    file for the null source."""
    ipc_path = cache.with_suffix(".arrow")
    rates: list[float] = []
    for _ in range(passes):
        rows = 0
        batches: list[pa.RecordBatch] = []
        started = time.perf_counter()
        with SnapshotReader.open(cache) as snap:
            # Every table a default sync sends: the built-in ones, what discovery found,
            # and each CRD's typed table.
            snap.load_custom_tables(CONTEXTS)
            tables = [
                *DEFAULT_TABLES,
                *sorted(set(snap.cached_tables(CONTEXTS)) - set(ALL_TABLES)),
                *sorted(snap.custom),
            ]
            for table in tables:
                for ctx in CONTEXTS:
                    for batch in snap.batches(table, ctx):
                        rows += batch.num_rows
                        batches.append(batch)
        rates.append(rows / (time.perf_counter() - started))
    write_batches(ipc_path, batches)
    return rates[0], statistics.median(rates[1:]), rows, ipc_path


def _hot_configmaps(planes: ControlPlanes, limit: int = 200) -> int:
    """How many of the populated ConfigMaps (configmap-0 ...) the write loads cycle through."""
    items = planes.servers["c1"].admin().list("/api/v1/configmaps")["items"]
    return min(limit, sum(1 for i in items if i["metadata"]["name"].startswith("configmap-")))


def incremental(
    planes: ControlPlanes, daemon: DaemonProcess, work: Path, dsn: str, *, changes: int
) -> dict[str, float]:
    """Incremental syncs through the warm daemon: one that carries nothing (the cursor is
    current) and one that carries ``changes`` updated ConfigMaps; the target is the
    second within 1.2x the first. The state backend is the real destination's."""
    source = source_config(
        {"incremental": True}, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}", with_state_backend=True
    )
    configs = [source, destination_config(dsn, write_mode="overwrite")]
    timed_sync(work / "full", configs)  # the first incremental sync is a full snapshot
    idle_s, idle_rows = timed_sync(work / "idle", configs)
    server = planes.servers["c1"]
    names = [f"configmap-{i}" for i in range(_hot_configmaps(planes, limit=changes))]
    before = daemon.metric("k8s_watcher_events_total")

    def patch(name: str) -> None:
        ns = f"ns-{int(name.split('-')[1]) % _ns_count(planes)}"
        _conn(server).request(
            "PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}", {"metadata": {"annotations": {"bench/inc": "1"}}},
            content_type="application/merge-patch+json",
        )  # fmt: skip

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(patch, names))
    deadline = time.monotonic() + 60
    while daemon.metric("k8s_watcher_events_total") - before < len(names) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # the events counter is bumped before the write commits
    delta_s, delta_rows = timed_sync(work / "delta", configs)
    return {
        "idle_s": idle_s, "idle_rows": idle_rows, "changes": len(names),
        "delta_s": delta_s, "delta_rows": delta_rows, "ratio": delta_s / idle_s,
    }  # fmt: skip


def pg_alone(dsn: str) -> float:
    """(e) PostgreSQL alone: the rows (d) wrote, copied out in PostgreSQL's binary format
    and timed back in with COPY into the emptied tables. No CLI, no plugin, no
    destination, no conversion: the floor under (a), (b) and (d) (the destination also
    upserts, which costs more than a plain COPY)."""
    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'k8s_%'"
            )
        ]
        dumps: dict[str, bytes] = {}
        for table in tables:
            with conn.cursor().copy(f"COPY {table} TO STDOUT (FORMAT binary)") as copy:
                dumps[table] = b"".join(bytes(chunk) for chunk in copy)
            conn.execute(f"TRUNCATE {table}")
        conn.commit()
        started = time.monotonic()
        for table, data in dumps.items():
            with conn.cursor().copy(f"COPY {table} FROM STDIN (FORMAT binary)") as copy:
                copy.write(data)
        conn.commit()
        return time.monotonic() - started


def freshness(planes: ControlPlanes, cache: Path, *, hot: int, rate: int, seconds: float) -> dict[str, float]:
    """Latency from a PATCH's response to the new RV being visible in the cache file."""
    server = planes.servers["c1"]
    names = [f"configmap-{i}" for i in range(hot)]
    # name -> [(rv, time the PATCH returned)]: a later write of the same object can
    # overtake an earlier one in the cache (one row per object), which then counts as
    # seen when any RV at least as new is visible.
    pending: dict[str, list[tuple[int, float]]] = {}
    # Newest RV the poller has seen per name: the cache can hold a write before its
    # PATCH response is back in this process (it is then visible at latency <= 0).
    seen: dict[str, int] = {}
    early = 0
    lock = threading.Lock()
    latencies: list[float] = []
    stop = threading.Event()
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, check_same_thread=False)
    last_seq = con.execute("SELECT max(seq) FROM objects").fetchone()[0] or 0

    def poll() -> None:
        nonlocal last_seq
        while not stop.is_set() or pending:
            rows = con.execute(
                "SELECT name, resource_version, seq FROM objects WHERE seq > ? AND context = 'c1' AND resource = 'configmaps'",
                (last_seq,),
            ).fetchall()
            now = time.monotonic()
            with lock:
                for name, rv, seq in rows:
                    last_seq = max(last_seq, seq)
                    seen[name] = max(seen.get(name, 0), int(rv))
                    waiting = pending.get(name, [])
                    latencies.extend(now - t for r, t in waiting if r <= int(rv))
                    rest = [(r, t) for r, t in waiting if r > int(rv)]
                    if rest:
                        pending[name] = rest
                    else:
                        pending.pop(name, None)
            if stop.is_set() and time.monotonic() - stop_time > 10:
                break
            time.sleep(0.002)

    stop_time = 0.0
    poller = threading.Thread(target=poll)
    poller.start()
    workers = 16
    interval = workers / rate

    def write(worker: int) -> int:
        nonlocal early
        n = 0
        next_at = time.monotonic()
        deadline = next_at + seconds
        while time.monotonic() < deadline:
            name = names[(worker + n * workers) % len(names)]
            ns = f"ns-{int(name.split('-')[1]) % _ns_count(planes)}"
            obj = _conn(server).request(
                "PATCH", f"/api/v1/namespaces/{ns}/configmaps/{name}", {"metadata": {"annotations": {"bench/n": str(n)}}},
                content_type="application/merge-patch+json",
            )  # fmt: skip
            rv = int(obj["metadata"]["resourceVersion"])
            with lock:
                if seen.get(name, 0) >= rv:
                    early += 1
                    latencies.append(0.0)
                else:
                    pending.setdefault(name, []).append((rv, time.monotonic()))
            n += 1
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        return n

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        writes = sum(pool.map(write, range(workers)))
    achieved = writes / (time.monotonic() - started)
    stop_time = time.monotonic()
    stop.set()
    poller.join()
    con.close()
    latencies.sort()
    return {
        "writes_per_s": achieved,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "unseen": sum(len(v) for v in pending.values()),
        "visible_before_response": early,
    }


_NS_COUNT: dict[int, int] = {}


def _ns_count(planes: ControlPlanes) -> int:
    key = id(planes)
    if key not in _NS_COUNT:
        items = planes.servers["c1"].admin().list("/api/v1/namespaces")["items"]
        _NS_COUNT[key] = sum(1 for i in items if i["metadata"]["name"].startswith("ns-"))
    return _NS_COUNT[key]


def ingest(
    planes: ControlPlanes, daemon: DaemonProcess, *, hot: int, seconds: float, workers: int = 24
) -> dict[str, float]:
    """Blast writes from many threads; compare the API write rate with the rate the
    daemon applies events, and the lag left at the end."""
    events_before = daemon.metric("k8s_watcher_events_total")
    stop_at = time.monotonic() + seconds
    servers = [planes.servers[c] for c in CONTEXTS]

    def blast(worker: int) -> int:
        n = 0
        server = servers[worker % len(servers)]
        while time.monotonic() < stop_at:
            i = (worker * 997 + n) % hot
            _conn(server).request(
                "PATCH", f"/api/v1/namespaces/ns-{i % _ns_count(planes)}/configmaps/configmap-{i}",
                {"metadata": {"annotations": {"bench/blast": f"{worker}-{n}"}}}, content_type="application/merge-patch+json",
            )  # fmt: skip
            n += 1
        return n

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        writes = sum(pool.map(blast, range(workers)))
    write_elapsed = time.monotonic() - started
    # Wait for the cache to catch up: how long after the last write?
    caught_up = None
    while time.monotonic() - started < write_elapsed + 60:
        applied = daemon.metric("k8s_watcher_events_total") - events_before
        if applied >= writes:
            caught_up = time.monotonic() - started - write_elapsed
            break
        time.sleep(0.05)
    applied = daemon.metric("k8s_watcher_events_total") - events_before
    return {
        "api_writes_per_s": writes / write_elapsed,
        "events_applied": applied,
        "writes": writes,
        "events_per_s": applied / (write_elapsed + (caught_up or 0)),
        "lag_after_blast_s": caught_up if caught_up is not None else float("inf"),
    }


def blast_servers(
    planes: ControlPlanes, *, rate: int, seconds: float, batch: int
) -> dict[str, dict[str, Any]]:
    """ConfigMap updates straight into etcd at ``rate`` puts/s in total over the bench's
    API servers, in parallel: server -> what its blast did."""
    with ThreadPoolExecutor(max_workers=len(CONTEXTS)) as pool:
        futures = {
            ctx: pool.submit(etcd_blast, planes, ctx, namespace="ingest", objects=2000, rate=rate // len(CONTEXTS), seconds=seconds, batch=batch)
            for ctx in CONTEXTS
        }  # fmt: skip
        return {ctx: f.result() for ctx, f in futures.items()}


def ingest_etcd(
    planes: ControlPlanes,
    daemon: DaemonProcess,
    cache: Path,
    *,
    rates: list[int],
    seconds: float,
    batch: int = 10,
) -> dict[str, Any]:
    """Step the watch-event rate up with writes straight into etcd (bench/etcd_load.py:
    the API server's write path tops out near 1k/s here; its watch path does not).

    Per step: ConfigMap updates at ``rate`` puts/s in total over the 3 contexts; the
    events the daemon received (metric) and the lag from the end of the blast until the
    cache file holds every context's last revision. A step is kept up with when every
    event arrived and the lag is under a second."""
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, check_same_thread=False)

    def newest(ctx: str) -> int:
        row = con.execute(
            "SELECT max(CAST(resource_version AS INTEGER)) FROM objects WHERE context = ? AND namespace = 'ingest'",
            (ctx,),
        ).fetchone()
        return int(row[0] or 0)

    steps = []
    for rate in rates:
        before = daemon.metric("k8s_watcher_events_total")
        results = blast_servers(planes, rate=rate, seconds=seconds, batch=batch)
        ended = time.monotonic()
        lag = None
        while time.monotonic() - ended < 60:
            if all(newest(ctx) >= int(r["last_revision"]) for ctx, r in results.items()):
                lag = time.monotonic() - ended
                break
            time.sleep(0.02)
        expected = sum(r["puts"] + r["created"] for r in results.values())
        received = daemon.metric("k8s_watcher_events_total") - before
        offered = sum(r["puts_per_s"] for r in results.values())
        step = {
            "target_per_s": rate, "offered_per_s": offered, "events_expected": expected, "events_received": received,
            "lag_s": lag if lag is not None else float("inf"),
            "kept_up": lag is not None and lag < 1.0 and received >= expected,
        }  # fmt: skip
        print(f"    etcd-driven step: {step}", flush=True)
        steps.append(step)
    con.close()
    kept = [s["offered_per_s"] for s in steps if s["kept_up"]]
    return {"batch": batch, "steps": steps, "max_kept_up_per_s": max(kept, default=0.0)}


# --------------------------------------------------------------------------- one size


def bench_size(
    n: int,
    work: Path,
    *,
    phase_seconds: float = 20,
    etcd_rates: tuple[int, ...] = (2000, 5000, 8000, 12000),
    with_official: bool = True,
    daemon_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every figure for one N. ``phase_seconds`` and ``etcd_rates`` shrink for the
    test suite's smoke run (tests/test_bench_smoke.py)."""
    out: dict[str, Any] = {"n": n, "daemon_args": list(daemon_args)}
    print(f"== N = {n}", flush=True)
    with control_planes(CONTEXTS, workdir=work / "kube") as planes, postgres_server() as pg:
        out.update(populate(planes, n))
        cache = work / "cache.db"
        daemon = DaemonProcess(
            planes.kubeconfig, cache, work / "daemon.log", ",".join(CONTEXTS), extra_args=daemon_args
        )
        daemon.start(synced=False)
        try:
            out["daemon_initial_sync_s"] = daemon.wait_synced()
            time.sleep(2)
            print(f"  daemon synced in {out['daemon_initial_sync_s']:.1f}s", flush=True)
            out["daemon_rss_mb"] = daemon.rss_mb()
            out["daemon_peak_rss_mb"] = daemon.peak_rss_mb()

            def pg_db(name: str) -> str:
                with psycopg.connect(pg.dsn, autocommit=True) as c:
                    c.execute(f"CREATE DATABASE {name}")
                return pg.dsn.replace("/postgres?", f"/{name}?")

            # (a) warm daemon, registry grpc
            t0 = time.time()
            plugin_s = daemon.metric("k8s_watcher_sync_duration_seconds_sum")
            out["a_warm_grpc_s"], out["a_rows"] = timed_sync(
                work / "a",
                [
                    source_config({}, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}"),
                    destination_config(pg_db("a")),
                ],
            )
            out["a_requests"] = audit_counts(planes, t0, time.time())
            # Where (a)'s seconds go: the plugin's own Sync call (cache reads, Arrow, gRPC
            # sends; it waits when the CLI reads slower), and the fixed cost of a sync that
            # carries one small table (CLI start, destination start, migrate, stop).
            out["a_plugin_sync_s"] = daemon.metric("k8s_watcher_sync_duration_seconds_sum") - plugin_s
            out["a0_fixed_s"], _ = timed_sync(
                work / "a0",
                [
                    source_config(
                        {}, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}", tables=["k8s_clusters"]
                    ),
                    destination_config(pg_db("a0")),
                ],
            )
            print(
                f"  (a) warm grpc: {out['a_warm_grpc_s']:.1f}s for {out['a_rows']} rows {out['a_requests']};"
                f" plugin's Sync {out['a_plugin_sync_s']:.1f}s; fixed cost {out['a0_fixed_s']:.1f}s",
                flush=True,
            )
            out["daemon_peak_rss_mb"] = daemon.peak_rss_mb()

            out["incremental"] = incremental(planes, daemon, work / "inc", pg_db("inc"), changes=1000)
            print(f"  incremental: {out['incremental']}", flush=True)

            # (b) forced relist: registry local, no cache file, no daemon involved
            t0 = time.time()
            spec = {
                "kubeconfig": str(planes.kubeconfig),
                "contexts": CONTEXTS,
                "cache_path": str(work / "cold" / "cache.db"),
            }
            out["b_relist_s"], out["b_rows"] = timed_sync(
                work / "b", [source_config(spec), destination_config(pg_db("b"))]
            )
            out["b_requests"] = audit_counts(planes, t0, time.time())
            print(
                f"  (b) relist: {out['b_relist_s']:.1f}s for {out['b_rows']} rows {out['b_requests']}",
                flush=True,
            )

            # (c) the official CloudQuery k8s source v6.2.4, its defaults, same objects
            if with_official:
                out["c_official"] = official_sync(planes, pg_db("c"), work / "c")
                out["c_official_s"] = out["c_official"]["wall_s"]
                print(
                    f"  (c) official plugin: {out['c_official_s']:.1f}s for {out['c_official']['resources']} rows,"
                    f" peak RSS {out['c_official']['plugin_peak_rss_mb']:.0f} MB,"
                    f" requests {out['c_official']['requests']['by_verb']}",
                    flush=True,
                )

            # 2. emission rate, and the batches for (d)
            out["emission_first_pass_rows_per_s"], out["emission_rows_per_s"], out["emission_rows"], ipc = (
                emission_rate(cache)
            )
            print(
                f"  emission: {out['emission_rows_per_s']:.0f} rows/s over {out['emission_rows']} rows"
                f" (first pass in a fresh process: {out['emission_first_pass_rows_per_s']:.0f})", flush=True,
            )  # fmt: skip

            # (d) null source with the same rows
            null = work / "null-source"
            null.write_text(
                f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m bench.null_source "$@"\n'
            )
            null.chmod(0o755)
            d_dsn = pg_db("d")
            out["d_null_s"], out["d_rows"] = timed_sync(
                work / "d",
                [
                    source_config({"batches": str(ipc)}, path=null, name="null"),
                    destination_config(d_dsn),
                ],
            )
            print(f"  (d) null source: {out['d_null_s']:.1f}s for {out['d_rows']} rows", flush=True)
            out["e_pg_alone_s"] = pg_alone(d_dsn)
            print(f"  (e) PostgreSQL alone: {out['e_pg_alone_s']:.1f}s", flush=True)

            # 3. freshness and 4. ingest
            hot = _hot_configmaps(planes)
            out["freshness"] = freshness(planes, cache, hot=hot, rate=500, seconds=phase_seconds)
            print(f"  freshness: {out['freshness']}", flush=True)
            out["ingest"] = ingest(planes, daemon, hot=hot, seconds=phase_seconds)
            print(f"  ingest (end to end, API-bound): {out['ingest']}", flush=True)
            out["ingest_etcd"] = ingest_etcd(
                planes, daemon, cache, rates=list(etcd_rates), seconds=phase_seconds / 2
            )
            print(
                f"  ingest (etcd-driven watch events): kept up with {out['ingest_etcd']['max_kept_up_per_s']:.0f}/s",
                flush=True,
            )
            out["daemon_peak_rss_mb"] = daemon.peak_rss_mb()
        finally:
            daemon.stop()
    # The cache alone, fed synthetic watch events in-process: what it can absorb when the
    # load generator and the API server on this 2-core machine are not the limit.
    from bench.cache_bench import ingest as cache_ingest
    from watcher.state import CacheStore

    store = CacheStore(work / "ingest.db")
    out["cache_ingest_events_per_s"] = cache_ingest(store, n, chunk=50)
    store.close()
    print(f"  ingest (cache alone): {out['cache_ingest_events_per_s']:.0f} events/s", flush=True)
    out["ratio_a_b"] = out["a_warm_grpc_s"] / out["b_relist_s"]
    if with_official:
        out["ratio_a_c"] = out["a_warm_grpc_s"] / out["c_official_s"]
    out["ratio_a_d"] = out["a_warm_grpc_s"] / out["d_null_s"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument(
        "--without-official",
        action="store_true",
        help="skip (c), the official plugin (7 min at 100k): a regression check of this project alone",
    )
    parser.add_argument(
        "--daemon-arg", action="append", default=[], metavar="ARG",
        help="an argument for the daemon's serve, e.g. --daemon-arg=--no-history (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ["CQ_TELEMETRY_LEVEL"] = "none"
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"k8s-watcher-bench-{n}-") as tmp:
            results.append(
                bench_size(
                    n, Path(tmp), with_official=not args.without_official, daemon_args=tuple(args.daemon_arg)
                )
            )
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
