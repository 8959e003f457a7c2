"""Scale-out benchmark (issue 15): the PostgreSQL cache beside the SQLite cache, and
replicas sharing the contexts of one PostgreSQL cache by Lease. One run, one test bed,
side by side, against the real parts (see BENCHMARKS.md, "Scale-out (issue 15)").

The test bed is bench/run.py's: 3 API servers (c1..c3) on one etcd, N objects in its
mix (``populate``), one local PostgreSQL server holding the destination databases and
the PostgreSQL caches (a database each), the real CloudQuery CLI and PostgreSQL
destination. Measures:

1. Warm ``cloudquery sync`` (registry grpc, every table, 3 contexts, a fresh
   destination database each time) from a daemon on the SQLite cache (``--cache``) and
   one on the PostgreSQL cache (``--cache-url``), interleaved, median of 3 each; the
   destination's rows from both compared table by table. Plugin-side emission
   (``SnapshotReader``, every table and context into Arrow, no destination) from each
   cache, and a cProfile pass of it (where the seconds go: the driver's fetch, Arrow).
2. Ingest on the PostgreSQL cache with 1 and 3 replicas (one Lease group each, Leases on
   c1) watching 6 contexts: c1..c6, c4..c6 aliasing the servers of c1..c3 (each context
   is cached on its own). Time from start until the cache holds every object of the 6
   contexts; then watch events driven through etcd (bench/etcd_load.py) in steps, each
   put reaching two contexts: the highest event rate the cache kept up with, and the
   rate it absorbed. The same for a lone daemon on a SQLite cache, as the baseline.
3. RSS (VmRSS steady, VmHWM peak) of one lone daemon holding 2 contexts, and of each of
   the 3 replicas once the 6 contexts are spread 2/2/2.

    .venv/bin/python -m bench.scaleout --sizes 100000     # writes bench/scaleout-results.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import platform
import pstats
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from bench.etcd_load import etcd_blast
from bench.run import CONTEXTS, blast_servers, populate, timed_sync
from testbed.cluster import ControlPlanes, binary_dir, control_planes
from testbed.cq import DESTINATION_VERSION, cloudquery_binary, destination_config, source_config
from testbed.daemon import DaemonProcess
from testbed.postgres import Postgres, postgres_server
from watcher.catalog import ALL_TABLES, DEFAULT_TABLES
from watcher.snapshot import SnapshotReader

REPO = Path(__file__).resolve().parent.parent
#: Six contexts on the three API servers: c4..c6 are c1..c3 under other names.
SIX = [f"c{i + 1}" for i in range(6)]
SERVER_OF = {ctx: CONTEXTS[i % len(CONTEXTS)] for i, ctx in enumerate(SIX)}
#: Where the replicas' Leases live.
LEASE_CONTEXT, LEASE_NAMESPACE = "c1", "k8s-watcher-leases"
#: Tables whose rows the API servers change by themselves between two syncs (lease
#: renewals; the clusters table carries the daemon's own state): compared by keys only.
VOLATILE_TABLES = {"k8s_leases", "k8s_clusters"}


# --------------------------------------------------------------------------- helpers


def new_database(pg: Postgres, name: str) -> str:
    """A fresh database on the bench's PostgreSQL server; its URL."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return pg.dsn.replace("/postgres?", f"/{name}?")


def six_contexts(planes: ControlPlanes, path: Path) -> Path:
    """A kubeconfig naming the test bed's 3 servers as 6 contexts (admin users)."""
    assert planes.kubeconfig is not None
    config = yaml.safe_load(planes.kubeconfig.read_text())
    config["contexts"] = [
        {"name": ctx, "context": {"cluster": server, "user": f"{server}-admin"}}
        for ctx, server in SERVER_OF.items()
    ]
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _tables(snap: SnapshotReader, contexts: list[str]) -> list[str]:
    """What a default sync of ``contexts`` sends: built-in, discovered and CRD tables."""
    snap.load_custom_tables(contexts)
    found = set(snap.cached_tables(contexts)) | set(snap.custom)
    return [*DEFAULT_TABLES, *sorted(found - set(ALL_TABLES))]


def _emit_all(where: Path | str, contexts: list[str]) -> int:
    rows = 0
    with SnapshotReader.open(where) as snap:
        for table in _tables(snap, contexts):
            rows += sum(b.num_rows for ctx in contexts for b in snap.batches(table, ctx))
    return rows


def emission(where: Path | str, contexts: list[str], *, passes: int = 4) -> dict[str, float]:
    """Cache -> Arrow of every table and context, no destination (``where``: a SQLite
    file or a PostgreSQL URL): the first pass and the median of the others, rows/s."""
    rates, rows = [], 0
    for _ in range(passes):
        started = time.perf_counter()
        rows = _emit_all(where, contexts)
        rates.append(rows / (time.perf_counter() - started))
    return {"first_pass_rows_per_s": rates[0], "rows_per_s": statistics.median(rates[1:]), "rows": rows}


#: Where a pass of emission spends its time, by the functions that own it (cumulative).
PROFILE_PARTS = {
    "driver fetch (fetchmany)": lambda f, fn: "fetchmany" in fn,
    "Arrow conversion (rows_to_batch)": lambda f, fn: fn == "rows_to_batch",
    "opening the snapshot (engine, reads of meta/checkpoints)": lambda f, fn: (
        fn == "__enter__" and f.endswith("snapshot.py")
    ),
    "CRD tables (load_custom_tables)": lambda f, fn: fn == "load_custom_tables",
}


def profile_emission(where: Path | str, contexts: list[str]) -> dict[str, Any]:
    """One emission pass under cProfile: seconds per part (``PROFILE_PARTS``) and the
    functions with the most own time."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(_emit_all, where, contexts)
    wall = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts = {
        part: sum(ct for (f, _, fn), (_, _, _, ct, _) in stats.items() if match(f, fn))
        for part, match in PROFILE_PARTS.items()
    }
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:12]
    return {
        "wall_s_profiled": wall,
        "parts_s": parts,
        "top_own_time": [f"{Path(f).name}:{line} {fn}: {tt:.3f}s" for (f, line, fn), (_, _, tt, _, _) in top],
    }


def destination_digest(dsn: str) -> dict[str, dict[str, Any]]:
    """Per k8s table of a destination database: rows, and md5 digests of its keys
    (context_name, uid) and of its rows without CloudQuery's own ``_cq_`` columns."""
    out: dict[str, dict[str, Any]] = {}
    with psycopg.connect(dsn) as conn:
        tables = [
            t
            for (t,) in conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = 'public' AND table_name LIKE 'k8s%%' ORDER BY 1"
            )
        ]
        for table in tables:
            cols = [
                c
                for (c,) in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
                    " AND table_name = %s AND column_name NOT LIKE '\\_cq\\_%%' ORDER BY 1",
                    (table,),
                )
            ]
            keys = [c for c in ("context_name", "uid") if c in cols] or cols[:1]
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(k, ',' ORDER BY k), '')),"
                " md5(coalesce(string_agg(r, ',' ORDER BY r), ''))"
                " FROM (SELECT ROW({keys})::text AS k, ROW({cols})::text AS r FROM {table}) s"
            ).format(
                keys=sql.SQL(", ").join(map(sql.Identifier, keys)),
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                table=sql.Identifier(table),
            )
            count, keys_md5, rows_md5 = conn.execute(query).fetchone()  # type: ignore[misc]
            out[table] = {"rows": count, "keys": keys_md5, "content": rows_md5}
    return out


def compare_destinations(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    tables = sorted(set(a) | set(b))
    return {
        "tables": len(tables),
        "rows": (sum(v["rows"] for v in a.values()), sum(v["rows"] for v in b.values())),
        "keys_differ": [t for t in tables if a.get(t, {}).get("keys") != b.get(t, {}).get("keys")],
        "content_differs": [t for t in tables if a.get(t, {}).get("content") != b.get(t, {}).get("content")],
    }


def _cache_rows(where: Path | str, query: str) -> list[tuple[Any, ...]]:
    """Rows of one query on a cache (a SQLite file or a PostgreSQL URL); none while the
    daemon has not created its tables yet."""
    try:
        if isinstance(where, str):
            with psycopg.connect(where) as conn:
                return conn.execute(query).fetchall()
        if not where.exists():
            return []
        con = sqlite3.connect(f"file:{where}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(query).fetchall()
        finally:
            con.close()
    except (psycopg.errors.UndefinedTable, sqlite3.OperationalError):
        return []


def live_per_context(where: Path | str) -> dict[str, int]:
    """context -> live (not deleted) rows in a cache (derived rows included), Leases
    left out: the replicas' own come and go (member leases are collected); the history's
    rows too: each cache has its own (what it saw)."""
    rows = _cache_rows(
        where,
        "SELECT context, count(*) FROM objects WHERE NOT deleted AND table_name <> 'k8s_leases'"
        " AND resource NOT LIKE '~%' GROUP BY context",
    )
    return {str(c): int(n) for c, n in rows}


def newest_ingest_rv(where: Path | str) -> dict[str, int]:
    """context -> the newest resourceVersion cached in the etcd load's namespace."""
    rows = _cache_rows(
        where,
        "SELECT context, max(CAST(resource_version AS BIGINT)) FROM objects"
        " WHERE table_name = 'k8s_configmaps' AND namespace = 'ingest' GROUP BY context",
    )
    return {str(c): int(v) for c, v in rows}


def owners(url: str, daemons: Sequence[DaemonProcess]) -> list[list[str]]:
    """The contexts each replica owns in the cache (owners are <host>-<pid>-<random>)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT context, owner FROM context_seqs").fetchall()
    return [
        sorted(c for c, o in rows if o and d.proc is not None and f"-{d.proc.pid}-" in o) for d in daemons
    ]


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, every: float = 0.25) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(every)
    raise TimeoutError(f"{what}: not after {timeout:.0f}s")


def memory(daemon: DaemonProcess) -> dict[str, float]:
    return {"rss_mb": daemon.rss_mb(), "peak_rss_mb": daemon.peak_rss_mb()}


class Group:
    """Replicas of one Lease group, seen as one daemon where the ingest needs one."""

    def __init__(self, daemons: list[DaemonProcess]) -> None:
        self.daemons = daemons

    def metric(self, name: str) -> float:
        return sum(d.metric(name) for d in self.daemons)

    def stop(self) -> None:
        # Together: a replica stopping alone would hand its contexts to the others.
        with ThreadPoolExecutor(max_workers=len(self.daemons)) as pool:
            list(pool.map(lambda d: d.stop(), self.daemons))


# --------------------------------------------------------------------------- 1. the two caches


def cache_syncs(planes: ControlPlanes, pg: Postgres, work: Path, *, repeats: int = 3) -> dict[str, Any]:
    """The same daemon on each cache: initial sync, ``repeats`` warm syncs each
    (interleaved), the destinations compared, emission from each cache."""
    out: dict[str, Any] = {"pg_cache": "a database of its own on the destination's PostgreSQL server"}
    where: dict[str, Path | str] = {"sqlite": work / "cache.db", "postgresql": new_database(pg, "cache_pg")}
    daemons = {
        "sqlite": DaemonProcess(planes.kubeconfig, work / "cache.db", work / "daemon-sqlite.log", ",".join(CONTEXTS)),
        "postgresql": DaemonProcess(
            planes.kubeconfig, work / "unused.db", work / "daemon-pg.log", ",".join(CONTEXTS),
            extra_args=["--cache-url", str(where["postgresql"])],
        ),
    }  # fmt: skip
    try:
        for kind, daemon in daemons.items():  # one at a time: each initial sync alone
            daemon.start(synced=False)
            out[f"{kind}_initial_sync_s"] = daemon.wait_synced()
            print(f"  {kind} cache: daemon synced in {out[f'{kind}_initial_sync_s']:.1f}s", flush=True)
        time.sleep(2)
        runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in daemons}
        for i in range(repeats):
            for kind, daemon in daemons.items():
                plugin_before = daemon.metric("k8s_watcher_sync_duration_seconds_sum")
                dsn = new_database(pg, f"dst_{kind}_{i}")
                wall, rows = timed_sync(
                    work / f"sync-{kind}-{i}",
                    [source_config({}, registry="grpc", path=daemon.grpc_address), destination_config(dsn)],
                )
                plugin = daemon.metric("k8s_watcher_sync_duration_seconds_sum") - plugin_before
                runs[kind].append({"wall_s": wall, "rows": rows, "plugin_sync_s": plugin})
                print(
                    f"  sync {i + 1} from {kind}: {wall:.2f}s, {rows} rows (plugin's Sync {plugin:.2f}s)",
                    flush=True,
                )
        for kind, done in runs.items():
            out[kind] = {
                "syncs": done,
                "sync_median_s": statistics.median(r["wall_s"] for r in done),
                "plugin_sync_median_s": statistics.median(r["plugin_sync_s"] for r in done),
                "rows": done[0]["rows"],
            }
        out["pg_over_sqlite_sync"] = out["postgresql"]["sync_median_s"] / out["sqlite"]["sync_median_s"]
        out["pg_over_sqlite_plugin_sync"] = (
            out["postgresql"]["plugin_sync_median_s"] / out["sqlite"]["plugin_sync_median_s"]
        )
        # The same rows? (pairs synced back to back; VOLATILE_TABLES by keys only)
        out["compare"] = [
            compare_destinations(
                destination_digest(pg.dsn.replace("/postgres?", f"/dst_sqlite_{i}?")),
                destination_digest(pg.dsn.replace("/postgres?", f"/dst_postgresql_{i}?")),
            )
            for i in range(repeats)
        ]
        print(f"  destinations compared: {out['compare']}", flush=True)
        for kind in daemons:
            out[kind]["emission"] = emission(where[kind], CONTEXTS)
            out[kind]["emission_profile"] = profile_emission(where[kind], CONTEXTS)
            print(f"  emission from {kind}: {out[kind]['emission']}", flush=True)
            print(f"    profile: {out[kind]['emission_profile']['parts_s']}", flush=True)
        out["pg_over_sqlite_emission_time"] = (
            out["sqlite"]["emission"]["rows_per_s"] / out["postgresql"]["emission"]["rows_per_s"]
        )
        out["cache_pg_url"] = str(where["postgresql"])
        for kind, daemon in daemons.items():
            out[kind]["daemon"] = memory(daemon)
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return out


# --------------------------------------------------------------------------- 2. and 3. replicas


def start_group(
    planes: ControlPlanes, kubeconfig: Path, url: str, work: Path, name: str, replicas: int, *, lease: str
) -> Group:
    """``replicas`` daemons of one Lease group on the PostgreSQL cache ``url``, watching
    the 6 contexts, started together."""
    args = [
        "--cache-url", url, "--replicas-lease-namespace", LEASE_NAMESPACE,
        "--replicas-lease-context", LEASE_CONTEXT, "--replicas-group", name, "--lease-duration", lease,
    ]  # fmt: skip
    group = Group(
        [
            DaemonProcess(
                kubeconfig, work / "unused.db", work / f"{name}-{i}.log", ",".join(SIX), extra_args=args
            )
            for i in range(replicas)
        ]
    )
    for daemon in group.daemons:
        daemon.start(synced=False)
    return group


def etcd_steps(
    planes: ControlPlanes,
    group: Group,
    url: Path | str,
    *,
    rates: Sequence[int],
    seconds: float,
    batch: int = 10,
) -> dict[str, Any]:
    """Watch events through etcd at stepped rates (puts/s over the 3 servers; each put is
    one event in each of the 2 contexts naming its server). Per step: events the
    replicas received, and the lag from the end of the load until the cache holds every
    context's last revision. Kept up with: every event arrived, lag under a second."""
    # Untimed: the load's 2000 ConfigMaps per server exist and are cached before the steps.
    with ThreadPoolExecutor(max_workers=len(CONTEXTS)) as pool:
        warm = dict(zip(CONTEXTS, pool.map(lambda s: etcd_blast(planes, s, namespace="ingest", objects=2000, rate=300, seconds=1), CONTEXTS), strict=True))  # fmt: skip
    wait_for(
        lambda: all(newest_ingest_rv(url).get(c, 0) >= int(warm[SERVER_OF[c]]["last_revision"]) for c in SIX),
        timeout=300, what="the load's objects cached",
    )  # fmt: skip
    steps = []
    for rate in rates:
        before = group.metric("k8s_watcher_events_total")
        blasts = blast_servers(planes, rate=rate, seconds=seconds, batch=batch)
        last = {ctx: int(blasts[SERVER_OF[ctx]]["last_revision"]) for ctx in SIX}
        try:
            lag = wait_for(
                lambda last=last: all(newest_ingest_rv(url).get(c, 0) >= rv for c, rv in last.items()),
                timeout=120, what="cache caught up", every=0.05,
            )  # fmt: skip
        except TimeoutError:
            lag = math.inf
        per_server = {s: b["puts"] + b["created"] for s, b in blasts.items()}
        expected = sum(per_server[SERVER_OF[ctx]] for ctx in SIX)
        received = group.metric("k8s_watcher_events_total") - before
        offered = 2 * sum(b["puts_per_s"] for b in blasts.values())
        took = max(b["seconds"] for b in blasts.values())
        step = {
            "puts_per_s_target": rate, "cache_events_per_s_offered": offered, "events_expected": expected,
            "events_received": received, "lag_s": lag, "kept_up": lag < 1.0 and received >= expected,
            # What the cache absorbed: the step's events over the load's time plus the lag.
            "cache_events_per_s_applied": expected / (took + lag),
        }  # fmt: skip
        print(f"    etcd-driven step: {step}", flush=True)
        steps.append(step)
    kept = [s["cache_events_per_s_offered"] for s in steps if s["kept_up"]]
    return {
        "batch": batch, "steps": steps, "max_kept_up_events_per_s": max(kept, default=0.0),
        "max_applied_events_per_s": max(s["cache_events_per_s_applied"] for s in steps),
    }  # fmt: skip


def replica_run(
    planes: ControlPlanes,
    pg: Postgres,
    kubeconfig: Path,
    work: Path,
    replicas: int | None,
    *,
    expected: dict[str, int],
    rates: Sequence[int],
    seconds: float,
    lease: str,
) -> dict[str, Any]:
    """One Lease group of ``replicas`` on a fresh PostgreSQL cache (None: the baseline, a
    lone daemon on a SQLite cache) watching the 6 contexts: time until the cache holds
    every object (``expected`` live rows per context at least), until the contexts are
    spread evenly and every replica reports synced; RSS of each once settled; the
    etcd-driven ingest; RSS after it."""
    out: dict[str, Any] = {"replicas": replicas or 1, "cache": "sqlite" if replicas is None else "postgresql"}
    started = time.monotonic()
    where: Path | str
    if replicas is None:
        where = work / "ingest-sqlite.db"
        group = Group([DaemonProcess(kubeconfig, where, work / "sqlite-6.log", ",".join(SIX))])
        group.daemons[0].start(synced=False)
    else:
        where = new_database(pg, f"group{replicas}")
        group = start_group(planes, kubeconfig, where, work, f"group{replicas}", replicas, lease=lease)
    label = "lone daemon, SQLite cache" if replicas is None else f"{replicas} replica(s)"
    try:
        held_max = [0] * len(group.daemons)

        def complete() -> bool:
            for i, d in enumerate(group.daemons):
                held_max[i] = max(held_max[i], int(d.metric("k8s_watcher_leases_held")))
            counts = live_per_context(where)
            return all(counts.get(ctx, 0) >= n for ctx, n in expected.items())

        wait_for(complete, timeout=1800, what="cache holds every object", every=0.5)
        out["all_objects_s"] = time.monotonic() - started
        if isinstance(where, str) and replicas is not None:
            share = len(SIX) // replicas
            wait_for(
                lambda: sorted(map(len, owners(where, group.daemons))) == [share] * replicas,
                timeout=300, what="contexts spread evenly",
            )  # fmt: skip
            out["contexts_held"] = owners(where, group.daemons)
            out["max_contexts_held_while_starting"] = held_max
        out["spread_s"] = time.monotonic() - started
        for d in group.daemons:
            d.wait_synced(600)
        out["all_synced_s"] = time.monotonic() - started
        print(
            f"  {label}: every object cached after {out['all_objects_s']:.1f}s,"
            f" spread {out.get('contexts_held')} after {out['spread_s']:.1f}s (most held while starting: {held_max})",
            flush=True,
        )
        time.sleep(3)
        out["memory_settled"] = [memory(d) for d in group.daemons]
        print(f"    RSS settled: {out['memory_settled']}", flush=True)
        out["ingest"] = etcd_steps(planes, group, where, rates=rates, seconds=seconds)
        out["memory_after_ingest"] = [memory(d) for d in group.daemons]
        out["live_rows"] = live_per_context(where)
    finally:
        group.stop()
    return out


def lone_daemon(pg: Postgres, kubeconfig: Path, work: Path, contexts: list[str]) -> dict[str, Any]:
    """One daemon (no Leases) on a fresh PostgreSQL cache holding ``contexts``: RSS."""
    url = new_database(pg, "lone")
    daemon = DaemonProcess(
        kubeconfig, work / "unused.db", work / "lone.log", ",".join(contexts), extra_args=["--cache-url", url]
    )
    daemon.start(synced=False)
    try:
        out: dict[str, Any] = {"contexts": contexts, "initial_sync_s": daemon.wait_synced()}
        time.sleep(3)
        out.update(memory(daemon))
        out["live_rows"] = live_per_context(url)
    finally:
        daemon.stop()
    print(f"  lone daemon, {contexts}: {out}", flush=True)
    return out


# --------------------------------------------------------------------------- one size


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError as exc:
            return f"unknown ({exc})"
        return (
            (done.stdout or done.stderr).strip().splitlines()[0]
            if (done.stdout or done.stderr).strip()
            else ""
        )

    from testbed.postgres import pg_bin

    return {
        "kube-apiserver": first_line([str(binary_dir() / "kube-apiserver"), "--version"]),
        "etcd": first_line([str(binary_dir() / "etcd"), "--version"]),
        "cloudquery": first_line([str(cloudquery_binary()), "--version"]),
        "destination": f"cloudquery postgresql {DESTINATION_VERSION}",
        "postgresql": first_line([str(pg_bin() / "postgres"), "--version"]),
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "cpu": model.group(1) if model else platform.processor(),
        "loadavg_at_start": os.getloadavg(),
    }


def bench_size(
    n: int,
    work: Path,
    *,
    repeats: int = 3,
    etcd_rates: Sequence[int] = (1000, 2000, 4000, 6000),
    seconds: float = 10,
    lease: str = "5s",
) -> dict[str, Any]:
    """Every scale-out figure for one N; the keyword arguments shrink for the smoke test
    (tests/test_bench_scaleout.py)."""
    out: dict[str, Any] = {"n": n, "machine": machine()}
    print(f"== N = {n}", flush=True)
    with control_planes(CONTEXTS, workdir=work / "kube") as planes, postgres_server() as pg:
        out.update(populate(planes, n))
        out["caches"] = cache_syncs(planes, pg, work, repeats=repeats)
        kubeconfig = six_contexts(planes, work / "kubeconfig-6")
        planes.servers[LEASE_CONTEXT].admin().create(
            "/api/v1/namespaces", {"metadata": {"name": LEASE_NAMESPACE}}
        )
        # What every context must hold: what the PostgreSQL cache of phase 1 holds for
        # its server (the Lease namespace, created since, only adds).
        reference = live_per_context(out["caches"]["cache_pg_url"])
        expected = {ctx: reference[SERVER_OF[ctx]] for ctx in SIX}
        runs: dict[int | None, dict[str, Any]] = {}
        for replicas in (None, 1, 3):
            runs[replicas] = replica_run(
                planes, pg, kubeconfig, work, replicas, expected=expected, rates=etcd_rates, seconds=seconds, lease=lease
            )  # fmt: skip
            # The next run's cache must hold what this one ended with (the etcd load's objects).
            expected = {ctx: max(n, runs[replicas]["live_rows"].get(ctx, 0)) for ctx, n in expected.items()}
        out["sqlite_6_contexts"], out["replicas_1"], out["replicas_3"] = runs[None], runs[1], runs[3]
        out["lone_2_contexts"] = lone_daemon(pg, kubeconfig, work, ["c1", "c2"])
        out["versions"] = versions()
    out["machine"]["loadavg_at_end"] = os.getloadavg()
    out["summary"] = summary(out)
    print(json.dumps(out["summary"], indent=2), flush=True)
    return out


def summary(out: dict[str, Any]) -> dict[str, Any]:
    """The figures against the issue's targets."""
    caches, r1, r3, lone = out["caches"], out["replicas_1"], out["replicas_3"], out["lone_2_contexts"]
    settled = r3["memory_settled"]
    steady = statistics.mean(m["rss_mb"] for m in settled)
    peak = max(m["peak_rss_mb"] for m in settled)
    return {
        "sync_median_s": {k: caches[k]["sync_median_s"] for k in ("sqlite", "postgresql")},
        "pg_over_sqlite_sync": caches["pg_over_sqlite_sync"],
        "sync_target_met (<= 1.5)": caches["pg_over_sqlite_sync"] <= 1.5,
        "emission_rows_per_s": {k: caches[k]["emission"]["rows_per_s"] for k in ("sqlite", "postgresql")},
        "rows_equal": all(not c["keys_differ"] and c["rows"][0] == c["rows"][1] for c in caches["compare"]),
        "all_objects_s": {
            "SQLite cache, lone daemon": out["sqlite_6_contexts"]["all_objects_s"],
            "1 replica": r1["all_objects_s"],
            "3 replicas": r3["all_objects_s"],
        },
        "ingest_max_kept_up_events_per_s": {
            "SQLite cache, lone daemon": out["sqlite_6_contexts"]["ingest"]["max_kept_up_events_per_s"],
            "1 replica": r1["ingest"]["max_kept_up_events_per_s"],
            "3 replicas": r3["ingest"]["max_kept_up_events_per_s"],
        },
        "ingest_max_applied_events_per_s": {
            "SQLite cache, lone daemon": out["sqlite_6_contexts"]["ingest"]["max_applied_events_per_s"],
            "1 replica": r1["ingest"]["max_applied_events_per_s"],
            "3 replicas": r3["ingest"]["max_applied_events_per_s"],
        },
        "rss_lone_2_contexts_mb": {"steady": lone["rss_mb"], "peak": lone["peak_rss_mb"]},
        "rss_replica_2_contexts_mb": {"steady_mean": steady, "peak_max": peak},
        "rss_1_replica_6_contexts_mb": r1["memory_settled"][0],
        "replica_over_lone_rss": {"steady": steady / lone["rss_mb"], "peak": peak / lone["peak_rss_mb"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000")
    parser.add_argument("--repeats", type=int, default=3, help="warm syncs per cache (median)")
    parser.add_argument("--out", default=str(REPO / "bench" / "scaleout-results.json"))
    args = parser.parse_args()
    os.environ["CQ_TELEMETRY_LEVEL"] = "none"
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"k8s-watcher-scaleout-{n}-") as tmp:
            results.append(bench_size(n, Path(tmp), repeats=args.repeats))
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(f"results in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
