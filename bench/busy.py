"""What a busy cluster costs: the daemon on the live test bed (testbed/live.py) with
simulated nodes, pods in Deployments and a steady background of rollouts and scale-ups
and -downs, for ``--seconds`` after the initial sync.

Measured in one run: watch events per second by kind (the daemon's
``k8s_watcher_events_total``), CPU (cores) of the daemon beside kube-apiserver's (and
etcd's, the controllers', the scheduler's, kwok's) over the same steady phase, the
daemon's RSS (quiet, after the initial sync, and over the steady phase), the cache's
growth (live rows, tombstones, file + WAL size), an incremental ``cloudquery sync``
through the real CLI and PostgreSQL destination every ``--sync-every`` seconds (rows
and deletions it carried, wall time), and freshness (API write -> the cache file) p99
for the bench's own writes. At the end the churn stops, the cluster settles, and one
more incremental sync must leave PostgreSQL equal to the API server object by object.

    .venv/bin/python -m bench.busy --nodes 500 --pods 20000 --seconds 600

Results go to ``bench/busy-results.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

from testbed import live as livebed
from testbed.cluster import KubeHttp, binary_dir
from testbed.cq import cloudquery_binary, destination_config, run_cloudquery, source_config
from testbed.daemon import DaemonProcess
from testbed.live import LiveCluster, deployment_manifest, live_cluster, service_manifest
from testbed.postgres import pg_bin, postgres_server

CTX = "busy"
TICK = os.sysconf("SC_CLK_TCK")
#: The kinds compared object by object at quiesce (those the churn writes or causes).
EXACT = {
    "k8s_pods": "/api/v1/pods",
    "k8s_replicasets": "/apis/apps/v1/replicasets",
    "k8s_deployments": "/apis/apps/v1/deployments",
    "k8s_endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
    "k8s_configmaps": "/api/v1/configmaps",
    "k8s_namespaces": "/api/v1/namespaces",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Parts:
    """The pids of every real part, for CPU per part over a phase."""

    def __init__(self, cluster: LiveCluster, daemon: DaemonProcess) -> None:
        assert daemon.proc is not None and cluster.planes.etcd is not None
        server = cluster.planes.servers[CTX].process.proc
        etcd = cluster.planes.etcd.process.proc
        assert server is not None and etcd is not None
        self.pids = {"daemon": daemon.proc.pid, "kube-apiserver": server.pid, "etcd": etcd.pid}
        for process in cluster.processes:
            assert process.proc is not None
            self.pids[process.name] = process.proc.pid

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
        return {name: round((after[name] - before[name]) / seconds, 3) for name in before}


class Cache:
    """Read-only looks at the daemon's SQLite cache file (what the bench measures)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)

    def size_mb(self) -> float:
        wal = self.path.with_name(self.path.name + "-wal")
        return (self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 2**20

    def counts(self) -> dict[str, int]:
        """Live object rows and tombstones, and the history's rows (watcher.history)."""
        live, dead, changes, lifetimes = self.conn.execute(
            "SELECT sum(NOT deleted AND resource NOT LIKE '~%'), sum(deleted), "
            "sum(resource = '~history/changes'), sum(resource = '~history/lifetimes') "
            "FROM objects WHERE context = ?",
            (CTX,),
        ).fetchone()
        return {
            "rows": int(live or 0),
            "tombstones": int(dead or 0),
            "changes": int(changes or 0),
            "lifetimes": int(lifetimes or 0),
        }

    def history(self) -> dict[str, Any]:
        """The recorded changes: by type and kind, and the bytes each takes in the cache
        (its row document: the JSON patch, the managers, the object after it)."""
        by_type: dict[str, int] = {}
        by_kind: dict[str, int] = {}
        sizes = []
        for (row,) in self.conn.execute(
            "SELECT row FROM objects WHERE context = ? AND resource = '~history/changes'", (CTX,)
        ):
            sizes.append(len(row))
            head = json.loads(bytes(row).split(b"\x1e", 1)[0])
            by_type[head["change_type"]] = by_type.get(head["change_type"], 0) + 1
            by_kind[head["kind"]] = by_kind.get(head["kind"], 0) + 1
        sizes.sort()
        (heads,) = self.conn.execute(
            "SELECT count(*) FROM history_heads WHERE context = ?", (CTX,)
        ).fetchone()
        return {
            "changes": len(sizes),
            "by_type": by_type,
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
            "bytes_per_change": {
                "median": sizes[len(sizes) // 2] if sizes else 0,
                "p99": sizes[min(len(sizes) - 1, int(len(sizes) * 0.99))] if sizes else 0,
                "max": sizes[-1] if sizes else 0,
            },
            "heads": int(heads),
        }


class Freshness:
    """API write -> visible in the cache, for the bench's own writes: each write's
    (resource, name, resourceVersion, time its response came back) is matched by a
    poller that reads the rows the cache wrote since its last look."""

    def __init__(self, cache: Path) -> None:
        self.conn = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, check_same_thread=False)
        self.last_seq = self.conn.execute("SELECT coalesce(max(seq), 0) FROM objects").fetchone()[0]
        self.pending: dict[tuple[str, str], list[tuple[int, float]]] = {}
        self.seen: dict[tuple[str, str], int] = {}
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def wrote(self, resource: str, name: str, rv: str) -> None:
        key, now = (resource, name), time.monotonic()
        with self.lock:
            if self.seen.get(key, 0) >= int(rv):
                self.latencies.append(0.0)
            else:
                self.pending.setdefault(key, []).append((int(rv), now))

    def _poll(self) -> None:
        while not self.stop.is_set():
            rows = self.conn.execute(
                "SELECT resource, name, resource_version, seq FROM objects WHERE seq > ? AND context = ? "
                "AND resource IN ('configmaps', 'deployments.apps')",
                (self.last_seq, CTX),
            ).fetchall()
            now = time.monotonic()
            with self.lock:
                for resource, name, rv, seq in rows:
                    self.last_seq = max(self.last_seq, seq)
                    key = (resource, name)
                    self.seen[key] = max(self.seen.get(key, 0), int(rv))
                    waiting = self.pending.pop(key, [])
                    self.latencies.extend(now - t for r, t in waiting if r <= int(rv))
                    rest = [(r, t) for r, t in waiting if r > int(rv)]
                    if rest:
                        self.pending[key] = rest
            time.sleep(0.05)

    def result(self, drain: float = 10) -> dict[str, Any]:
        """The latencies, once the writes still in flight were seen (``drain`` s at most)."""
        deadline = time.monotonic() + drain
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.1)
        self.stop.set()
        self.thread.join()
        with self.lock:
            lat, missing = list(self.latencies), sum(len(v) for v in self.pending.values())
        return {
            "writes_seen": len(lat),
            "missing": missing,
            "p50_s": round(percentile(lat, 0.50), 3),
            "p99_s": round(percentile(lat, 0.99), 3),
            "max_s": round(max(lat), 3) if lat else None,
        }


def events_by_kind(daemon: DaemonProcess) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in daemon.http("/metrics")[1].splitlines():
        if line.startswith("k8s_watcher_events_total{"):
            resource = re.search(r'resource="([^"]+)"', line)
            if resource:
                out[resource.group(1)] = out.get(resource.group(1), 0) + float(line.rsplit(" ", 1)[1])
    return out


# --------------------------------------------------------------------------- the cluster


def populate(
    cluster: LiveCluster, pods: int, per_deployment: int, namespaces: int, create_rate: float
) -> list[tuple[str, str]]:
    """Namespaces and Deployments of ``per_deployment`` replicas adding up to ``pods``,
    each behind a Service (so the EndpointSlice controller has work, as in a real cluster)."""
    admin = cluster.admin()
    names = [f"team-{i}" for i in range(namespaces)]
    for ns in names:
        admin.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    deployments = [(names[i % namespaces], f"app-{i}") for i in range(max(1, pods // per_deployment))]

    def create(item: tuple[str, str]) -> None:
        ns, name = item
        admin.create(f"/api/v1/namespaces/{ns}/services", service_manifest(name, {"app": name}))
        admin.create(
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            deployment_manifest(name, per_deployment, f"registry.example/{name}:0"),
        )

    # Paced: a burst of thousands of pods starves kwok's Lease renewals on 2 cores and
    # the controller manager marks nodes NotReady (and their pods not ready).
    with ThreadPoolExecutor(max_workers=4) as pool:
        for item in deployments:
            pool.submit(create, item)
            time.sleep(1 / create_rate)
    return deployments


def settled_count(admin: KubeHttp) -> tuple[int, int]:
    """(pods of settled Deployments, pods wanted): a Deployment is settled when its
    controller saw its last change and every replica is of the newest ReplicaSet, with
    no older pod left (readiness aside: a pod marked not ready by a NotReady node stays
    so, kwok's Stages only make Pending pods ready)."""
    done = want = 0
    for d in admin.list("/apis/apps/v1/deployments")["items"]:
        replicas, status = d["spec"]["replicas"], d.get("status", {})
        want += replicas
        if status.get("observedGeneration", 0) >= d["metadata"]["generation"] and all(
            status.get(k, 0) == replicas for k in ("replicas", "updatedReplicas")
        ):
            done += replicas
    return done, want


def all_settled(admin: KubeHttp) -> bool:
    """Every Deployment settled and every pod Running (none pending or terminating)."""
    done, want = settled_count(admin)
    if done != want:
        return False
    pending = admin.get("/api/v1/pods?fieldSelector=status.phase!=Running&limit=1") or {}
    return not pending.get("items")


def node_trouble(admin: KubeHttp) -> dict[str, int]:
    """Events that say the machine could not keep up: nodes whose Lease expired."""
    reasons = ("NodeNotReady", "TaintManagerEviction")
    items = admin.list("/api/v1/events")["items"]
    return {r: sum(1 for e in items if e.get("reason") == r) for r in reasons}


def wait(predicate: Callable[[], bool], timeout: float, what: str, every: float = 2) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(what)
        time.sleep(every)
    return time.monotonic() - started


class Churn:
    """Rollouts (a new image) and scale-ups/-downs of random Deployments at steady
    rates, plus a probe ConfigMap patched ``probe_rate`` times a second; every write's
    response feeds :class:`Freshness`."""

    def __init__(
        self,
        admin: KubeHttp,
        deployments: list[tuple[str, str]],
        per_deployment: int,
        fresh: Freshness,
        *,
        rollouts_per_min: float,
        scales_per_min: float,
        probe_rate: float,
    ) -> None:
        self.admin, self.deployments, self.per = admin, deployments, per_deployment
        self.fresh = fresh
        self.rates = {"rollout": rollouts_per_min / 60, "scale": scales_per_min / 60, "probe": probe_rate}
        self.counts = dict.fromkeys(self.rates, 0)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.rng = random.Random(21)
        admin.create(
            "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "probe"}, "data": {"n": "0"}}
        )
        self.threads = [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in self.rates]
        for t in self.threads:
            t.start()

    def _loop(self, kind: str) -> None:
        period = 1 / self.rates[kind]
        next_at = time.monotonic()
        while not self.stop.is_set():
            next_at += period
            try:
                getattr(self, f"_{kind}")()
                self.counts[kind] += 1
            except Exception as exc:  # noqa: BLE001 - a conflict or timeout is counted, the load goes on
                self.errors.append(f"{kind}: {exc}"[:200])
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def _patch_deployment(self, ns: str, name: str, patch: dict[str, Any]) -> None:
        out = self.admin.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}", patch)
        self.fresh.wrote("deployments.apps", name, out["metadata"]["resourceVersion"])

    def _rollout(self) -> None:
        ns, name = self.rng.choice(self.deployments)
        image = f"registry.example/{name}:{self.counts['rollout'] + 1}"
        containers = deployment_manifest(name, 1, image)["spec"]["template"]["spec"]["containers"]
        self._patch_deployment(ns, name, {"spec": {"template": {"spec": {"containers": containers}}}})

    def _scale(self) -> None:
        ns, name = self.rng.choice(self.deployments)
        step = max(1, self.per // 5)
        replicas = self.per + self.rng.choice((-step, step))
        self._patch_deployment(ns, name, {"spec": {"replicas": replicas}})

    def _probe(self) -> None:
        out = self.admin.patch(
            "/api/v1/namespaces/default/configmaps/probe", {"data": {"n": str(time.time())}}
        )
        self.fresh.wrote("configmaps", "probe", out["metadata"]["resourceVersion"])

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for t in self.threads:
            t.join()
        return {"writes": dict(self.counts), "errors": len(self.errors), "first_errors": self.errors[:5]}


# --------------------------------------------------------------------------- syncs


class Syncs:
    """Incremental ``cloudquery sync`` runs (registry: grpc) into one PostgreSQL database."""

    def __init__(self, daemon: DaemonProcess, dsn: str, work: Path) -> None:
        self.daemon, self.dsn, self.work = daemon, dsn, work
        self.runs: list[dict[str, Any]] = []

    def run(self) -> dict[str, Any]:
        source = source_config(
            {"incremental": True}, registry="grpc", path=self.daemon.grpc_address, with_state_backend=True
        )
        started = time.monotonic()
        result = run_cloudquery(
            ["sync"],
            workdir=self.work / "cq",
            configs=[source, destination_config(self.dsn, write_mode="overwrite")],
        )
        wall = time.monotonic() - started
        sent = re.findall(
            r"sync sent (\d+) rows and (\d+) deletions", self.daemon.log.read_text(errors="replace")
        )
        rows, deletes = (int(x) for x in sent[-1]) if sent else (-1, -1)
        run = {
            "at": time.time(),
            "wall_s": round(wall, 2),
            "rows": rows,
            "deletions": deletes,
            "rc": result.returncode,
        }
        if result.returncode != 0:
            run["error"] = result.output[-1500:]
        else:
            run["rows_by_table"] = self.rows_by_table()
        self.runs.append(run)
        print(f"  sync: {run}", flush=True)
        return run

    def rows_by_table(self) -> dict[str, int]:
        """Rows the last sync wrote, per table: those stamped with its ``_cq_sync_time``
        (k8s_clusters is in every sync)."""
        out: dict[str, int] = {}
        with psycopg.connect(self.dsn) as conn:
            (at,) = conn.execute("SELECT max(_cq_sync_time) FROM k8s_clusters").fetchone() or (None,)
            tables = [
                r[0]
                for r in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'k8s_%'"
                )
            ]
            for table in tables:
                (n,) = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE _cq_sync_time = %s", (at,)
                ).fetchone() or (0,)
                if n:
                    out[table] = int(n)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def exactness(admin: KubeHttp, dsn: str) -> dict[str, Any]:
    """PostgreSQL against a consistent LIST, object by object (uid -> resourceVersion)."""
    out: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for table, path in EXACT.items():
            api = {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in admin.list(path)["items"]}
            pg = dict(
                conn.execute(
                    f"SELECT uid::text, resource_version FROM {table} WHERE context_name = %s", (CTX,)
                ).fetchall()
            )
            wrong = sum(1 for uid, rv in api.items() if pg.get(uid) != rv)
            extra = len(set(pg) - set(api))
            out[table] = {"api": len(api), "postgresql": len(pg), "missing_or_stale": wrong, "extra": extra}
    out["exact"] = all(
        v["missing_or_stale"] == 0 and v["extra"] == 0 for v in out.values() if isinstance(v, dict)
    )
    return out


# --------------------------------------------------------------------------- the run


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0] if text else ""

    bindir = binary_dir()
    return {
        "kube-apiserver": first_line([str(bindir / "kube-apiserver"), "--version"]),
        "etcd": first_line([str(bindir / "etcd"), "--version"]),
        **livebed.versions(),
        "cloudquery": first_line([str(cloudquery_binary()), "--version"]),
        "destination": first_line([str(bindir / "cq-postgresql"), "--version"]),
        "postgresql": first_line([str(pg_bin() / "postgres"), "--version"]),
        "python": platform.python_version(),
        "informers_runtime": subprocess.run(
            ["git", "log", "--oneline", "-1", "--", "watcher/informers.py"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }


def machine() -> dict[str, Any]:
    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "cpu": model.group(1) if model else platform.processor(),
        "loadavg_at_start": os.getloadavg(),
    }


def busy(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"args": vars(args), "machine": machine(), "versions": versions()}
    per = args.pods_per_deployment
    with (
        live_cluster(
            args.nodes, context=CTX, workdir=work / "live", audit=False, kube_api_qps=args.qps
        ) as cluster,
        postgres_server() as pg,
    ):
        admin = cluster.admin()
        print(
            f"busy: {args.nodes} nodes Ready; creating {args.pods} pods in Deployments of {per}", flush=True
        )
        started = time.monotonic()
        deployments = populate(cluster, args.pods, per, args.namespaces, args.create_rate)

        def progress() -> bool:
            done, want = settled_count(admin)
            print(f"  {time.monotonic() - started:.0f} s: {done}/{want} pods settled", flush=True)
            return done == want and all_settled(admin)

        wait(progress, args.populate_timeout, "every pod Running", every=30)
        out["populate_s"] = round(time.monotonic() - started, 1)
        out["node_trouble_after_populate"] = node_trouble(admin)
        print(
            f"busy: pods Running in {out['populate_s']} s; {out['node_trouble_after_populate']}", flush=True
        )

        cache = work / "cache.db"
        daemon = DaemonProcess(
            cluster.planes.kubeconfig,
            cache,
            work / "daemon.log",
            CTX,
            extra_args=["--tombstone-retention", str(args.retention)],
        )
        try:
            out.update(measure(args, cluster, daemon, cache, deployments, pg.dsn, work))
        finally:
            daemon.stop()
    return out


def measure(
    args: argparse.Namespace,
    cluster: LiveCluster,
    daemon: DaemonProcess,
    cache_path: Path,
    deployments: list[tuple[str, str]],
    dsn: str,
    work: Path,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    admin = cluster.admin()
    started = time.monotonic()
    daemon.start(timeout=600)
    out["initial_sync_s"] = round(time.monotonic() - started, 1)
    parts, cache = Parts(cluster, daemon), Cache(cache_path)
    print(f"busy: daemon synced in {out['initial_sync_s']} s; {cache.counts()}", flush=True)
    syncs = Syncs(daemon, dsn, work)
    out["first_sync"] = syncs.run()

    # Quiet: the same objects, only the nodes' heartbeats (Leases), synced as often.
    out["quiet"] = phase(args.quiet, parts, cache, daemon, syncs, args.sync_every)
    print(f"busy: quiet {summary(out['quiet'])}", flush=True)

    fresh = Freshness(cache_path)
    churn = Churn(
        admin,
        deployments,
        args.pods_per_deployment,
        fresh,
        rollouts_per_min=args.rollouts_per_min,
        scales_per_min=args.scales_per_min,
        probe_rate=args.probe_rate,
    )
    steady = phase(args.seconds, parts, cache, daemon, syncs, args.sync_every)
    out["churn"] = churn.finish()
    out["history"] = cache.history()
    out["freshness"] = fresh.result()
    steady["growth_per_hour"] = growth(steady["samples"], after=args.retention)
    steady["rss_over_quiet"] = round(steady["daemon_rss_mb"]["max"] / out["quiet"]["daemon_rss_mb"]["max"], 3)
    out["steady"] = steady
    print(f"busy: steady {summary(steady)}; freshness {out['freshness']}", flush=True)

    # Quiesce: no more churn, every Deployment settled, the cache caught up; then the
    # incremental sync must leave PostgreSQL exactly equal to the API server.
    wait(lambda: all_settled(admin), 600, "settled after the churn")
    time.sleep(5)
    out["final_sync"] = syncs.run()
    out["exactness"] = exactness(admin, dsn)
    out["node_trouble_at_end"] = node_trouble(admin)
    print(f"busy: exactness {out['exactness']}", flush=True)
    return out


def phase(
    seconds: float, parts: Parts, cache: Cache, daemon: DaemonProcess, syncs: Syncs, sync_every: float
) -> dict[str, Any]:
    """``seconds`` of whatever runs: samples every 10 s, an incremental sync every
    ``sync_every`` s; CPU per part and watch events per kind over the whole phase."""
    samples: list[dict[str, Any]] = []
    first_sync = len(syncs.runs)
    cpu0, events0, t0 = parts.cpu(), events_by_kind(daemon), time.monotonic()
    next_sync = t0 + sync_every
    while (now := time.monotonic()) - t0 < seconds:
        samples.append(
            {
                "t": round(now - t0, 1),
                "daemon_rss_mb": round(rss_mb(parts.pids["daemon"]), 1),
                "cache_mb": round(cache.size_mb(), 1),
                **cache.counts(),
            }
        )
        if now >= next_sync:
            syncs.run()
            next_sync += sync_every
        time.sleep(max(0.0, min(10.0, next_sync - time.monotonic(), t0 + seconds - time.monotonic())))
    elapsed = time.monotonic() - t0
    cores = Parts.cores(cpu0, parts.cpu(), elapsed)
    rss = [s["daemon_rss_mb"] for s in samples]
    return {
        "seconds": round(elapsed, 1),
        "cores": cores,
        "daemon_over_apiserver": round(cores["daemon"] / max(cores["kube-apiserver"], 1e-9), 3),
        "events_per_s": rate(events0, events_by_kind(daemon), elapsed),
        "daemon_rss_mb": {"min": min(rss), "median": statistics.median(rss), "max": max(rss)},
        "syncs": syncs.runs[first_sync:],
        "samples": samples,
    }


def summary(phase_out: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in phase_out.items() if k not in ("samples", "syncs")}


def rate(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    per = {k: round((after.get(k, 0) - before.get(k, 0)) / seconds, 2) for k in after}
    per = {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}
    per["total"] = round(sum(per.values()), 2)
    return per


def growth(samples: list[dict[str, Any]], *, after: float) -> dict[str, Any]:
    """Growth per hour of rows, tombstones and cache size over the samples taken after
    ``after`` seconds (the tombstone retention: before it, nothing has been purged yet)."""
    late = [s for s in samples if s["t"] >= after] or samples
    if len(late) < 2 or late[-1]["t"] == late[0]["t"]:
        return {"window_s": 0}
    hours = (late[-1]["t"] - late[0]["t"]) / 3600
    return {
        "window_s": round(late[-1]["t"] - late[0]["t"], 1),
        **{
            f"{k}_per_h": round((late[-1][k] - late[0][k]) / hours, 1)
            for k in ("rows", "tombstones", "changes", "lifetimes", "cache_mb")
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--pods", type=int, default=20000)
    parser.add_argument("--pods-per-deployment", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=600, help="steady phase after the initial sync")
    parser.add_argument(
        "--quiet", type=float, default=60, help="quiet phase (heartbeats only) before the churn"
    )
    parser.add_argument("--sync-every", type=float, default=60)
    parser.add_argument("--rollouts-per-min", type=float, default=6)
    parser.add_argument("--scales-per-min", type=float, default=12)
    parser.add_argument("--probe-rate", type=float, default=5, help="probe ConfigMap patches per second")
    parser.add_argument("--retention", type=int, default=180, help="the daemon's --tombstone-retention")
    parser.add_argument(
        "--qps", type=int, default=200, help="client QPS of the controllers and the scheduler"
    )
    parser.add_argument("--populate-timeout", type=float, default=3600)
    parser.add_argument("--create-rate", type=float, default=0.5, help="Deployments created per second")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("busy-results.json"))
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C: every process of the test bed is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="k8s-watcher-busy-"))
    print(f"busy: working in {work}", flush=True)
    out = busy(args, work)
    args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"busy: results in {args.out}", flush=True)
    return 0 if out["exactness"]["exact"] and out["final_sync"]["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
