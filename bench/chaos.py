"""Chaos run: churn, repeated syncs and random faults, then compare everything to the API.

While objects churn in 3 contexts and `cloudquery sync` runs repeatedly (snapshot into
one database, incremental into another), faults are injected at random: watch
connection cuts (TCP proxy), etcd compactions (real 410s), an API server stopped and
started, the daemon SIGKILLed and restarted, and two syncs at once. At the end the
churn stops, one last sync of each kind runs, and the cache and both databases are
compared with the API object by object.

    .venv/bin/python -m bench.chaos --seconds 180 [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from testbed.cluster import ControlPlanes, control_planes
from testbed.cq import destination_config, run_cloudquery, source_config
from testbed.daemon import DaemonProcess
from testbed.postgres import postgres_server
from watcher import state

CONTEXTS = ["c1", "c2", "c3"]
RESOURCES = {"configmaps": "k8s_configmaps", "namespaces": "k8s_namespaces", "secrets": "k8s_secrets"}


@dataclass
class Report:
    faults: Counter[str] = field(default_factory=Counter)
    churn_ops: int = 0
    syncs: Counter[str] = field(default_factory=Counter)
    sync_failures: Counter[str] = field(default_factory=Counter)
    #: Why syncs failed: the CLI's last error line of each (a fault under a sync is expected
    #: to fail it; the reason tells a daemon killed mid-sync from anything else).
    sync_errors: list[str] = field(default_factory=list)
    #: Syncs started while another of the same mode (same database, same cursor) ran.
    overlaps: Counter[str] = field(default_factory=Counter)
    relists: int = 0
    lost_events: int = 0
    cache_mismatches: list[str] = field(default_factory=list)
    pg_mismatches: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "faults": dict(self.faults),
            "churn_ops": self.churn_ops,
            "syncs": dict(self.syncs),
            "sync_failures": dict(self.sync_failures),
            "sync_errors": self.sync_errors[:10],
            "overlaps": dict(self.overlaps),
            "relists": self.relists,
            "lost_events": self.lost_events,
            "cache_mismatches": len(self.cache_mismatches),
            "pg_mismatches": len(self.pg_mismatches),
            "examples": (self.cache_mismatches + self.pg_mismatches)[:10],
        }


def _mismatches(where: str, got: dict[str, str], truth: dict[str, str]) -> list[str]:
    """One line per uid whose resourceVersion differs from the API's (or is missing on one side)."""
    return [
        f"{where}/{u}: {got.get(u)} != {truth.get(u)}"
        for u in got.keys() | truth.keys()
        if got.get(u) != truth.get(u)
    ]


class Chaos:
    def __init__(self, planes: ControlPlanes, pg_dsn: str, work: Path, rng: random.Random) -> None:
        self.planes, self.work, self.rng = planes, work, rng
        self.report = Report()
        self.stop = threading.Event()
        self.lock = threading.Lock()  # serialises faults that restart things
        self.daemon = DaemonProcess(
            planes.kubeconfig, work / "cache.db", work / "daemon.log", ",".join(CONTEXTS)
        )
        self.dsn = {mode: self._database(pg_dsn, mode) for mode in ("snapshot", "incremental")}
        self.relists_before_restarts = 0
        self.running: Counter[str] = Counter()  # mode -> syncs in flight
        self.lock_running = threading.Lock()

    @staticmethod
    def _database(dsn: str, name: str) -> str:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return dsn.replace("/postgres?", f"/{name}?")

    # -- workers -------------------------------------------------------------

    def churn(self) -> None:
        rng = random.Random(self.rng.random())
        live: dict[str, list[str]] = {c: [] for c in CONTEXTS}
        n = 0
        while not self.stop.is_set():
            ctx = rng.choice(CONTEXTS)
            admin = self.planes.servers[ctx].admin()
            base = "/api/v1/namespaces/chaos"
            try:
                op = rng.random()
                if op < 0.5 or not live[ctx]:
                    name = f"cm-{n}"
                    admin.create(f"{base}/configmaps", {"metadata": {"name": name}, "data": {"n": str(n)}})
                    live[ctx].append(name)
                elif op < 0.8:
                    admin.patch(f"{base}/configmaps/{rng.choice(live[ctx])}", {"data": {"n": str(n)}})
                else:
                    name = live[ctx].pop(rng.randrange(len(live[ctx])))
                    admin.delete(f"{base}/configmaps/{name}")
                self.report.churn_ops += 1
            except (RuntimeError, OSError):
                pass  # that API server is down right now (a fault): the write did not happen
            n += 1
            time.sleep(0.02)

    def sync(self, mode: str) -> bool:
        daemon = self.daemon
        spec: dict[str, Any] = {"incremental": mode == "incremental"}
        source = source_config(
            spec,
            registry="grpc",
            path=f"127.0.0.1:{daemon.grpc_port}",
            with_state_backend=mode == "incremental",
        )
        dest = destination_config(
            self.dsn[mode],
            write_mode="overwrite" if mode == "incremental" else "overwrite-delete-stale",
        )
        workdir = self.work / f"cq-{mode}-{threading.get_ident()}"
        with self.lock_running:
            self.report.overlaps[mode] += self.running[mode] > 0
            self.running[mode] += 1
        try:
            result = run_cloudquery(["sync"], workdir=workdir, configs=[source, dest], timeout=600)
        finally:
            with self.lock_running:
                self.running[mode] -= 1
        self.report.syncs[mode] += 1
        if result.returncode != 0:
            self.report.sync_failures[mode] += 1
            errors = [line for line in result.output.splitlines() if "ERR" in line or "Error" in line]
            self.report.sync_errors.append(f"{mode}: {(errors or ['(no error line)'])[-1][-300:]}")
            return False
        return True

    def syncs(self) -> None:
        while not self.stop.is_set():
            self.sync(self.rng.choice(["snapshot", "incremental"]))
            time.sleep(0.5)

    # -- faults --------------------------------------------------------------

    def inject(self) -> None:
        kind = self.rng.choice(["cut", "cut", "compact", "apiserver-restart", "daemon-kill", "two-syncs"])
        ctx = self.rng.choice(CONTEXTS)
        server = self.planes.servers[ctx]
        with self.lock:
            if kind == "cut":
                assert server.proxy is not None
                server.proxy.cut_all()
            elif kind == "compact":
                assert self.planes.etcd is not None
                server.proxy.pause()  # type: ignore[union-attr] - writes happen while the watch is away
                time.sleep(1.0)
                self.planes.etcd.compact()
                server.proxy.resume()  # type: ignore[union-attr]
            elif kind == "apiserver-restart":
                server.stop()
                time.sleep(1.0)
                server.start()
            elif kind == "daemon-kill":
                self.relists_before_restarts += sum(
                    int(s["relists"]) for s in self.daemon.status()["informers"]
                )
                self.daemon.kill()
                self.daemon.start(synced=False)
            elif kind == "two-syncs":
                threads = [threading.Thread(target=self.sync, args=(m,)) for m in ("snapshot", "incremental")]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        self.report.faults[kind] += 1

    # -- the run -------------------------------------------------------------

    def run(self, seconds: float, fault_every: float, min_faults: int = 0) -> Report:
        """``seconds`` of churn, syncs and faults; on a slow machine (each fault takes
        longer) the run goes on until ``min_faults`` were injected, up to twice as long."""
        for ctx in CONTEXTS:
            self.planes.servers[ctx].admin().create("/api/v1/namespaces", {"metadata": {"name": "chaos"}})
            self.planes.servers[ctx].admin().create(
                "/api/v1/namespaces/chaos/secrets", {"metadata": {"name": "s"}, "stringData": {"k": "v"}}
            )
        self.daemon.start(synced=False)
        workers = [threading.Thread(target=self.churn), threading.Thread(target=self.syncs)]
        for w in workers:
            w.start()
        started = time.monotonic()
        try:
            while (elapsed := time.monotonic() - started) < seconds or (
                sum(self.report.faults.values()) < min_faults and elapsed < 2 * seconds
            ):
                time.sleep(self.rng.uniform(0.5, 1.5) * fault_every)
                self.inject()
        finally:
            self.stop.set()
            for w in workers:
                w.join()
        self.settle()
        self.daemon.stop()
        return self.report

    def settle(self) -> None:
        """Wait until the cache equals the API, then one last sync of each kind; compare."""
        report = self.report
        deadline = time.monotonic() + 120
        while True:
            report.cache_mismatches = self._cache_diff()
            if not report.cache_mismatches or time.monotonic() > deadline:
                break
            time.sleep(1)
        # Lost events: objects whose latest state never reached the cache.
        report.lost_events = len(report.cache_mismatches)
        for mode in ("snapshot", "incremental"):
            if not self.sync(mode):
                report.pg_mismatches.append(f"final {mode} sync failed")
        report.pg_mismatches += self._pg_diff()
        report.relists = self.relists_before_restarts + sum(
            int(s["relists"]) for s in self.daemon.status()["informers"]
        )

    def _truth(self, ctx: str, resource: str) -> dict[str, str]:
        path = "/api/v1/namespaces" if resource == "namespaces" else f"/api/v1/{resource}"
        items = self.planes.servers[ctx].admin().list(path)["items"]
        return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}

    def _cache_diff(self) -> list[str]:
        out = []
        with state.reading(self.daemon.cache) as conn:
            for ctx in CONTEXTS:
                for resource in RESOURCES:
                    cached = state.live_versions(conn, ctx, resource)
                    out += _mismatches(f"cache {ctx}/{resource}", cached, self._truth(ctx, resource))
        return out

    def _pg_diff(self) -> list[str]:
        out = []
        for mode, dsn in self.dsn.items():
            with psycopg.connect(dsn) as conn:
                for ctx in CONTEXTS:
                    for resource, table in RESOURCES.items():
                        rows = dict(conn.execute(
                            f"SELECT uid::text, resource_version FROM {table} WHERE context_name = %s", (ctx,)
                        ).fetchall())  # fmt: skip
                        out += _mismatches(f"{mode} {ctx}/{resource}", rows, self._truth(ctx, resource))
        return out


def run_chaos(
    seconds: float, *, seed: int = 1, fault_every: float = 4.0, min_faults: int = 0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="k8s-watcher-chaos-") as tmp:
        work = Path(tmp)
        with (
            control_planes(CONTEXTS, workdir=work / "kube", with_proxy=True) as planes,
            postgres_server() as pg,
        ):
            report = Chaos(planes, pg.dsn, work, random.Random(seed)).run(seconds, fault_every, min_faults)
    return report.as_dict()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-every", type=float, default=4.0, help="mean seconds between faults")
    args = parser.parse_args()
    started = time.monotonic()
    result = run_chaos(args.seconds, seed=args.seed, fault_every=args.fault_every)
    result["wall_seconds"] = round(time.monotonic() - started)
    print(json.dumps(result, indent=2))
    return (
        0
        if result["lost_events"] == 0 and result["cache_mismatches"] == 0 and result["pg_mismatches"] == 0
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
