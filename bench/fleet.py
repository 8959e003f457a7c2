"""The fleet benchmark (issue 20): N contexts x K kinds, side by side with a null source.

N kubeconfig contexts all point at the same real API server(s) (``testbed.fleet``): the
daemon's watch load is that of N clusters (one watch per context and kind, one initial
list each), while this 2-core machine runs one control plane. K = the ~65 built-in kinds
plus ``--crds`` typed CRDs with ``--objects`` objects each. In one run it measures:

- time to synced (every informer watching) from the daemon's start;
- threads, TCP connections to the API server (per context), RSS steady and peak;
- idle CPU of the daemon over ``--idle`` seconds with nothing changing;
- ``cloudquery tables`` (GetTables through the CLI);
- warm ``cloudquery sync`` (registry grpc, the real PostgreSQL destination) into a new
  database (every table created), then twice into the same one: wall, rows, and the
  plugin's own Sync seconds;
- (d) a null source carrying the same rows and tables through the same CLI and
  destination (bench/null_source.py), the pipeline's floor, into a new database and
  again into it (compared with the second warm sync: both find their tables);
- a restart (SIGTERM, start again): seconds until every informer watches again, and the
  LISTs it sent (from the API server's audit log; 0 when it resumed from the stored RVs).

    .venv/bin/python -m bench.fleet --contexts 100 --crds 185 --objects 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench.null_source import write_batches
from bench.run import REPO, audit_counts, timed_sync
from testbed.cluster import control_planes
from testbed.cq import destination_config, run_cloudquery, source_config
from testbed.daemon import DaemonProcess
from testbed.fleet import create_crds, create_objects, fleet_crds, fleet_kubeconfig
from testbed.postgres import postgres_server
from testbed.sockets import tcp_connections, thread_count
from watcher.catalog import ALL_TABLES, DEFAULT_TABLES
from watcher.snapshot import SnapshotReader

NS = "fleet"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def null_batches(cache: Path, contexts: list[str], path: Path) -> tuple[int, int]:
    """Every table a default sync sends, as the plugin batches it, into an IPC file for the
    null source; returns (rows, tables)."""
    with SnapshotReader.open(cache) as snap:
        snap.load_custom_tables(contexts)
        tables = [
            *DEFAULT_TABLES,
            *sorted(set(snap.cached_tables(contexts)) - set(ALL_TABLES)),
            *sorted(snap.custom),
        ]
        batches = [b for table in tables for b in snap.table_batches(table, contexts)]
    write_batches(path, batches)
    return sum(b.num_rows for b in batches), len(tables)


def run(
    contexts: int,
    crds: int,
    objects: int,
    idle: float,
    work: Path,
    max_streams: int = 0,
    daemon_args: Sequence[str] = (),
) -> dict[str, Any]:
    out: dict[str, Any] = {"contexts": contexts, "crds": crds, "objects_per_crd": objects}
    out["daemon_args"] = list(daemon_args)
    # kube-apiserver advertises 100 streams a connection unless told otherwise.
    server_args = (f"--http2-max-streams-per-connection={max_streams}",) if max_streams else ()
    out["apiserver_args"] = list(server_args)
    kinds = fleet_crds(crds, prefix="fb")
    with (
        control_planes(["fleet"], workdir=work / "kube", apiserver_args=server_args) as planes,
        postgres_server() as pg,
    ):
        server = planes.servers["fleet"]
        admin = server.admin()
        started = time.monotonic()
        create_crds(admin, kinds)
        admin.create("/api/v1/namespaces", {"metadata": {"name": NS}})
        create_objects(admin, kinds, NS, per_crd=objects)
        print(
            f"  {crds} CRDs, {crds * objects} objects created in {time.monotonic() - started:.0f}s",
            flush=True,
        )
        kubeconfig = work / "kubeconfig"
        names = fleet_kubeconfig(planes, kubeconfig, contexts)
        port = int(server.url.rsplit(":", 1)[1])
        cache = work / "cache.db"
        daemon = DaemonProcess(kubeconfig, cache, work / "daemon.log", "*", extra_args=list(daemon_args))
        daemon.start(synced=False, timeout=300)
        try:
            out["synced_s"] = daemon.wait_synced(timeout=3600)
            pid = daemon.proc.pid  # type: ignore[union-attr]
            out["watches"] = int(daemon.metric("k8s_watcher_api_streams"))
            print(f"  synced in {out['synced_s']:.1f}s, {out['watches']} streams", flush=True)
            # The first lists' history is derived once the writer is idle: idle means after it.
            derived_from = time.monotonic()
            while daemon.metric("k8s_watcher_history_backlog") > 0 and time.monotonic() - derived_from < 600:
                time.sleep(0.5)
            out["history_derived_after_synced_s"] = time.monotonic() - derived_from
            time.sleep(5)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(idle)
            out["idle_cpu_cores"] = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
            out["threads"] = thread_count(pid)
            out["connections"] = tcp_connections(pid, port)
            out["connections_per_context"] = out["connections"] / contexts
            out["rss_steady_mb"] = daemon.rss_mb()
            out["rss_peak_mb"] = daemon.peak_rss_mb()
            print(
                f"  idle CPU {out['idle_cpu_cores']:.3f} cores over {idle:.0f}s; {out['threads']} threads;"
                f" {out['connections']} connections; RSS {out['rss_steady_mb']:.0f} MB"
                f" (peak {out['rss_peak_mb']:.0f})",
                flush=True,
            )

            def pg_db(name: str) -> str:
                name = f"fleet_{name}"
                with psycopg.connect(pg.dsn, autocommit=True) as c:
                    c.execute(f"CREATE DATABASE {name}")
                return pg.dsn.replace("/postgres?", f"/{name}?")

            # GetTables through the CLI (`cloudquery tables` writes the tables' docs).
            started = time.monotonic()
            listed = run_cloudquery(
                ["tables", "--output-dir", str(work / "tables-docs")],
                workdir=work / "tables",
                configs=[source_config({}, registry="grpc", path=daemon.grpc_address)],
            )
            out["cli_tables_s"] = time.monotonic() - started
            if listed.returncode != 0:
                raise RuntimeError(listed.output[-3000:])
            # Into a new database (every table created), again into it (the migration only
            # compares), and once more (the steady state).
            warm_db = pg_db("warm")
            for attempt in ("warm_sync_first", "warm_sync", "warm_sync_again"):
                plugin_s = daemon.metric("k8s_watcher_sync_duration_seconds_sum")
                wall, rows = timed_sync(
                    work / attempt,
                    [
                        source_config({}, registry="grpc", path=daemon.grpc_address),
                        destination_config(warm_db),
                    ],
                )
                out[f"{attempt}_s"], out[f"{attempt}_rows"] = wall, rows
                out[f"{attempt}_plugin_s"] = daemon.metric("k8s_watcher_sync_duration_seconds_sum") - plugin_s
                print(f"  {attempt}: {wall:.1f}s for {rows} rows (plugin {out[f'{attempt}_plugin_s']:.1f}s)")

            ipc = work / "batches.arrow"
            out["null_rows"], out["tables"] = null_batches(cache, names, ipc)
            null = work / "null-source"
            null.write_text(
                f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" -m bench.null_source "$@"\n'
            )
            null.chmod(0o755)
            null_db = pg_db("null")
            for attempt in ("null_first", "null"):
                out[f"{attempt}_s"], out[f"{attempt}_synced_rows"] = timed_sync(
                    work / attempt,
                    [
                        source_config({"batches": str(ipc)}, path=null, name="null"),
                        destination_config(null_db),
                    ],
                )
            out["ratio_warm_to_null"] = out["warm_sync_s"] / out["null_s"]
            print(
                f"  null source: {out['null_s']:.1f}s for {out['null_synced_rows']} rows in {out['tables']} tables;"
                f" warm/null {out['ratio_warm_to_null']:.2f}",
                flush=True,
            )

            # A restart: SIGTERM, start again; time until every informer watches, LISTs sent.
            daemon.terminate()
            t_restart = time.time()
            restarted = time.monotonic()
            daemon.start(synced=False, timeout=300)
            daemon.wait_synced(timeout=3600)
            out["restart_watching_s"] = time.monotonic() - restarted
            out["restart_requests"] = audit_counts(planes, t_restart, time.time())
            print(
                f"  restart: watching again in {out['restart_watching_s']:.1f}s, requests {out['restart_requests']}",
                flush=True,
            )
        finally:
            daemon.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=100)
    parser.add_argument("--crds", type=int, default=185, help="CRDs beside the ~65 built-in kinds")
    parser.add_argument("--objects", type=int, default=3, help="objects per CRD")
    parser.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measurement")
    parser.add_argument(
        "--max-streams", type=int, default=0,
        help="kube-apiserver's --http2-max-streams-per-connection (default: the server's own, 100)",
    )  # fmt: skip
    parser.add_argument(
        "--daemon-arg", action="append", default=[], metavar="ARG",
        help="an argument for k8s-watcher serve (repeat it), e.g. --daemon-arg=--no-history",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "fleet-results.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="k8s-watcher-fleet-") as tmp:
        result = run(
            args.contexts, args.crds, args.objects, args.idle, Path(tmp), args.max_streams, args.daemon_arg
        )
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
