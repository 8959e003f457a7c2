"""History benchmark (issue 22), side by side in one run (see BENCHMARKS.md, "History").

1. Ingest with history on (default policy) vs off: the 100k benchmark's object mix
   (bench/run.py's MIX over 3 contexts, shaped as an API server returns them: uid,
   resourceVersion, managedFields, status) listed into a fresh cache, then a churn of
   watch events (creates, spec/label updates, status-only updates, deletes) applied 50 at
   a time as a watch delivers them; then the time the writer takes to derive the
   history it logged. Three arms (``ARMS``: off, on, on with no backlog allowed), their
   order reversed every round, on a SQLite cache and, fewer, on a PostgreSQL cache; each
   round and the medians are reported. One more history-on round under py-spy says
   where the writer thread's time goes (the lists, the churn, the derivation).
2. Storage after that churn: bytes per change row (median, p99), heads per object,
   lifetimes, the cache file with history on vs off.
3. As-of queries in a real PostgreSQL: 100k objects with 1M changes bulk-generated with
   generate_series into k8s_object_changes / k8s_object_lifetimes as the real
   destination creates them (a real sync of the two tables makes them), ANALYZE,
   ``k8s-watcher history install``, then EXPLAIN ANALYZE of the as-of forms (5 runs each).
4. A soak: the busy-cluster benchmark's live churn (its per-kind event rates, 164.6/s)
   replayed in real time for ``--soak-seconds`` into a 100k cache with the default
   policy; the history's growth, and that growth extrapolated to an hour (marked so).

    .venv/bin/python -m bench.history_bench            # ~30 min; bench/history-results.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.run import CONTEXTS, MIX
from testbed.cq import destination_config, run_cloudquery, source_config
from testbed.daemon import console_script
from testbed.postgres import Postgres, postgres_server
from watcher.history import (
    CHANGES_KEY,
    CHANGES_TABLE,
    LIFETIMES_KEY,
    LIFETIMES_TABLE,
    HistoryPolicy,
)
from watcher.resources import BY_KEY, ResourceDescriptor
from watcher.state import CacheStore, InformerStatus

REPO = Path(__file__).resolve().parent.parent
#: bench/run.py's kinds, but its custom resources (4%): their descriptor comes from a CRD.
KINDS = {
    "pods": "pods", "configmaps": "configmaps", "events": "events.events.k8s.io", "secrets": "secrets",
    "deployments": "deployments.apps", "services": "services", "namespaces": "namespaces",
}  # fmt: skip
#: Per kind, the churn's operations and their weights: pods come and go and their status
#: moves most; configuration mostly changes in place.
OPS = {
    "pods": {"create": 20, "update": 10, "status": 50, "delete": 20},
    "configmaps": {"create": 10, "update": 80, "delete": 10},
    "events": {"create": 70, "update": 20, "delete": 10},
    "secrets": {"create": 10, "update": 80, "delete": 10},
    "deployments": {"create": 5, "update": 35, "status": 55, "delete": 5},
    "services": {"create": 10, "update": 80, "delete": 10},
    "namespaces": {"update": 100},
}
CHUNK = 50  # events per watch read, as bench/cache_bench.py
PAGE = 500  # objects per list page, as the informers
Event = tuple[str, dict[str, Any]]


# --------------------------------------------------------------------------- objects


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _managed(manager: str, operation: str, t: float, fields: dict[str, Any], sub: str = "") -> dict[str, Any]:
    entry = {"manager": manager, "operation": operation, "apiVersion": "v1", "time": _ts(t),
             "fieldsType": "FieldsV1", "fieldsV1": fields}  # fmt: skip
    if sub:
        entry["subresource"] = sub
    return entry


def _container(i: int, rev: int) -> dict[str, Any]:
    return {"name": "app", "image": f"registry.example/app-{i % 50}:1.{(i + rev) % 9}",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}  # fmt: skip


_CONTAINER_FIELDS = {'k:{"name":"app"}': {".": {}, "f:image": {}, "f:name": {}, "f:ports": {}, "f:resources": {"f:requests": {"f:cpu": {}, "f:memory": {}}}}}  # fmt: skip
_LABEL_FIELDS = {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:tier": {}}}}


def _pod_status(i: int, t: float, restarts: int) -> dict[str, Any]:
    conditions = [{"type": c, "status": "True", "lastTransitionTime": _ts(t)}
                  for c in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")]  # fmt: skip
    return {
        "phase": "Running", "conditions": conditions, "hostIP": f"10.0.{i % 20}.1", "podIP": f"10.244.{i % 250}.{i % 200}",
        "startTime": _ts(t), "qosClass": "Burstable",
        "containerStatuses": [{"name": "app", "ready": True, "restartCount": restarts, "started": True,
                               "image": f"registry.example/app-{i % 50}:1.{i % 9}", "imageID": f"sha256:{i:064x}",
                               "containerID": f"containerd://{i:064x}", "state": {"running": {"startedAt": _ts(t)}}}],
    }  # fmt: skip


def make(kind: str, i: int, ns: str, rv: int, t: float) -> dict[str, Any]:
    """An object as the API server returns it (bench/run.py's shapes, server fields added)."""
    labels = {"app": f"app-{i % 50}", "tier": ("web", "db", "cache")[i % 3]}
    meta: dict[str, Any] = {
        "name": f"{kind[:-1]}-{i}", "namespace": ns, "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{kind}/{ns}/{i}")),
        "resourceVersion": str(rv), "creationTimestamp": _ts(t), "labels": labels,
        "annotations": {"bench/owner": f"team-{i % 7}"},
    }  # fmt: skip
    if kind == "pods":
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"rs-{i % 500}",
                                    "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, f"rs/{i % 500}")), "controller": True}]  # fmt: skip
        meta["managedFields"] = [
            _managed("kube-controller-manager", "Update", t, {**_LABEL_FIELDS, "f:spec": {"f:containers": _CONTAINER_FIELDS}}),
            _managed("kubelet", "Update", t, {"f:status": {"f:conditions": {}, "f:phase": {}, "f:podIP": {}, "f:startTime": {}}}, "status"),
        ]  # fmt: skip
        body = {"spec": {"containers": [_container(i, 0)], "nodeName": f"node-{i % 20}", "restartPolicy": "Always",
                         "schedulerName": "default-scheduler", "serviceAccountName": "default"},
                "status": _pod_status(i, t, 0)}  # fmt: skip
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, **body}
    if kind == "configmaps":
        meta["managedFields"] = [_managed("kubectl-client-side-apply", "Update", t, {**_LABEL_FIELDS, "f:data": {".": {}, "f:config.yaml": {}}})]  # fmt: skip
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                "data": {"config.yaml": f"key: value-{i}\nreplicas: {i % 5}\n" * 4}}  # fmt: skip
    if kind == "secrets":
        meta["managedFields"] = [_managed("kubectl-create", "Update", t, {"f:data": {".": {}, "f:password": {}}, "f:type": {}})]  # fmt: skip
        return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                "data": {"password": "YmVuY2gtc2VjcmV0"}}  # fmt: skip
    if kind == "services":
        meta["managedFields"] = [_managed("helm", "Update", t, {**_LABEL_FIELDS, "f:spec": {"f:ports": {}, "f:selector": {}}})]  # fmt: skip
        return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
                         "type": "ClusterIP", "clusterIP": f"10.96.{i % 250}.{i % 200}", "sessionAffinity": "None"}}  # fmt: skip
    if kind == "deployments":
        meta["generation"] = 1
        meta["managedFields"] = [
            _managed("kubectl", "Apply", t, {**_LABEL_FIELDS, "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": _CONTAINER_FIELDS}}}}),
            _managed("kube-controller-manager", "Update", t, {"f:status": {"f:availableReplicas": {}, "f:conditions": {}, "f:replicas": {}}}, "status"),
        ]  # fmt: skip
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": {"containers": [_container(i, 0)]}}},
                "status": _deployment_status(t, 1)}  # fmt: skip
    if kind == "events":
        meta["managedFields"] = [_managed("kube-scheduler", "Update", t, {"f:note": {}, "f:reason": {}, "f:regarding": {}})]  # fmt: skip
        return {"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": meta,
                "eventTime": "2026-11-26T00:00:00.000000Z", "reason": "Scheduled", "note": f"event {i}", "type": "Normal",
                "action": "Binding", "reportingController": "bench", "reportingInstance": "bench-1",
                "regarding": {"kind": "Pod", "namespace": ns, "name": f"pod-{i}"}}  # fmt: skip
    if kind == "namespaces":
        del meta["namespace"]
        meta["name"] = ns
        meta["managedFields"] = [_managed("kubectl-create", "Update", t, {"f:metadata": {"f:labels": {}}})]
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta,
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}  # fmt: skip
    raise ValueError(kind)


def _deployment_status(t: float, generation: int) -> dict[str, Any]:
    return {"observedGeneration": generation, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
            "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": _ts(t), "lastTransitionTime": _ts(t),
                            "reason": "MinimumReplicasAvailable"}]}  # fmt: skip


def _touch(obj: dict[str, Any], manager: str, t: float) -> None:
    for entry in obj["metadata"]["managedFields"]:
        if entry["manager"] == manager:
            entry["time"] = _ts(t)


def changed(kind: str, old: dict[str, Any], op: str, n: int, rv: int, t: float) -> dict[str, Any]:
    """A new version of ``old`` (never modified in place: the cache's heads keep it)."""
    obj = copy.deepcopy(old)
    meta = obj["metadata"]
    meta["resourceVersion"] = str(rv)
    if op == "status" and kind == "pods":
        obj["status"]["containerStatuses"][0]["restartCount"] = n % 5
        obj["status"]["conditions"][2]["lastTransitionTime"] = _ts(t)
        _touch(obj, "kubelet", t)
    elif op == "status":  # a Deployment's
        obj["status"] = _deployment_status(t, meta["generation"])
        obj["status"]["readyReplicas"] = 1 + n % 2
        _touch(obj, "kube-controller-manager", t)
    elif kind == "configmaps":
        obj["data"] = {"config.yaml": f"key: value-{n}\nreplicas: {n % 5}\n" * 4}
        meta["annotations"] = {**meta["annotations"], "bench/rev": str(n)}
        _touch(obj, "kubectl-client-side-apply", t)
    elif kind == "deployments":
        meta["generation"] += 1
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = f"registry.example/app:{n}"
        _touch(obj, "kubectl", t)
    elif kind == "events":
        obj["series"] = {"count": 2 + n % 10, "lastObservedTime": _ts(t) + ".000000Z"}
        _touch(obj, "kube-scheduler", t)
    else:  # pods, services, secrets, namespaces: a label or an annotation
        meta["labels"] = {**meta["labels"], "rev": str(n % 13)}
        _touch(obj, meta["managedFields"][0]["manager"], t)
    return obj


class Fleet:
    """The 100k benchmark's objects over its 3 contexts, and a churn on them."""

    def __init__(self, n: int, seed: int = 22) -> None:
        self.rng = random.Random(seed)
        self.rv = 1000
        self.t = time.time() - 3600
        per_ctx = n // len(CONTEXTS)
        counts = {k: max(1, int(per_ctx * MIX[k])) for k in KINDS}
        self.namespaces = counts.pop("namespaces")
        #: (context, kind) -> live objects, by name.
        self.live: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.next_i: dict[str, int] = {}
        for ctx in CONTEXTS:
            self.live[(ctx, "namespaces")] = {
                f"ns-{j}": make("namespaces", j, f"ns-{j}", self._rv(), self.t)
                for j in range(self.namespaces)
            }
            for kind, count in counts.items():
                objs = (make(kind, i, f"ns-{i % self.namespaces}", self._rv(), self.t) for i in range(count))
                self.live[(ctx, kind)] = {o["metadata"]["name"]: o for o in objs}
                self.next_i[kind] = count
        self.listed = {key: list(objs.values()) for key, objs in self.live.items()}

    def _rv(self) -> int:
        self.rv += 1
        return self.rv

    def size(self) -> int:
        return sum(len(v) for v in self.listed.values())

    def events(self, ctx: str, kind: str, count: int, ops: dict[str, int] | None = None) -> list[Event]:
        """``count`` watch events of one (context, kind), as a watch read delivers them."""
        live = self.live[(ctx, kind)]
        ops = ops or OPS[kind]
        names, weights = list(ops), list(ops.values())
        out: list[Event] = []
        for op in self.rng.choices(names, weights, k=count):
            self.t += 0.001
            n = self._rv()
            if op == "create" or not live:
                i = self.next_i[kind] = self.next_i[kind] + 1
                obj = make(kind, i, f"ns-{i % self.namespaces}", n, self.t)
                live[obj["metadata"]["name"]] = obj
                out.append(("ADDED", obj))
                continue
            name = self.rng.choice(list(live)) if len(live) < 64 else self._pick(live)
            if op == "delete":
                obj = copy.deepcopy(live.pop(name))
                obj["metadata"]["resourceVersion"] = str(n)
                out.append(("DELETED", obj))
            else:
                live[name] = changed(kind, live[name], op, n, n, self.t)
                out.append(("MODIFIED", live[name]))
        return out

    def _pick(self, live: dict[str, dict[str, Any]]) -> str:
        # A random live name without listing them all each time: dicts keep insertion
        # order, so a random index into a cached key list, refreshed when it went stale.
        keys = getattr(self, "_keys", {}).get(id(live))
        if keys is None or self.rng.random() < 0.02:
            keys = list(live)
            self.__dict__.setdefault("_keys", {})[id(live)] = keys
        for _ in range(8):
            name = keys[self.rng.randrange(len(keys))]
            if name in live:
                return name
        return next(iter(live))

    def churn(self, total: int) -> list[tuple[str, str, list[Event]]]:
        """``total`` events in watch reads of CHUNK, the kinds in the fleet's proportions."""
        keys = list(self.live)
        weights = [MIX[k[1]] for k in keys]
        reads = []
        for _ in range(total // CHUNK):
            ctx, kind = self.rng.choices(keys, weights)[0]
            reads.append((ctx, kind, self.events(ctx, kind, CHUNK)))
        return reads


# --------------------------------------------------------------------------- 1. ingest


def _status(ctx: str, desc: ResourceDescriptor, rv: str = "") -> InformerStatus:
    return InformerStatus(
        context=ctx, resource=desc.key, table_name=desc.table, state="watching", resource_version=rv
    )


def populate(store: CacheStore, fleet: Fleet) -> None:
    """The daemon's first lists: every (context, kind) in pages, then its end."""
    for (ctx, kind), objs in fleet.listed.items():
        desc = BY_KEY[KINDS[kind]]
        gen = store.begin_relist()
        for start in range(0, len(objs), PAGE):
            store.relist_page(ctx, desc, objs[start : start + PAGE], gen)
        store.end_relist(ctx, desc, gen, _status(ctx, desc, str(fleet.rv)))
    store.flush(history=False)


def apply_churn(store: CacheStore, reads: list[tuple[str, str, list[Event]]]) -> None:
    for ctx, kind, events in reads:
        desc = BY_KEY[KINDS[kind]]
        store.apply_events(
            ctx, desc, events, _status(ctx, desc, events[-1][1]["metadata"]["resourceVersion"])
        )
    store.flush(history=False)


def policy(on: bool) -> HistoryPolicy:
    return HistoryPolicy() if on else HistoryPolicy(enabled=False)


#: The ingest rounds' arms: history off; on (the writer derives the history from its log
#: once the burst is over); on with no backlog allowed (it derives after every batch of
#: writes, as it does once a sustained rate has filled the backlog to its bound).
ARMS: dict[str, tuple[bool, int | None]] = {
    "off": (False, None),
    "on": (True, None),
    "on, no backlog": (True, 0),
}


def one_round(where: str | Path, arm: str, fleet: Fleet, reads: list[Any], events: int) -> dict[str, Any]:
    on, backlog_max = ARMS[arm]
    store = CacheStore(where, history=policy(on))
    if backlog_max is not None:
        store.history_backlog_max = backlog_max
    try:
        started = time.perf_counter()
        populate(store, fleet)
        listed, churn_from = time.perf_counter(), time.time()
        backlog_after_lists = store.history_backlog
        apply_churn(store, reads)
        ended = time.perf_counter()
        backlog = store.history_backlog
        store.flush()  # the history derived: every change and lifetime row written
        derived = time.perf_counter()
    finally:
        store.close()
    return {
        "arm": arm,
        "history": on,
        "list_s": round(listed - started, 3),
        "list_objects_per_s": round(fleet.size() / (listed - started)),
        "churn_s": round(ended - listed, 3),
        "churn_events_per_s": round(events / (ended - listed)),
        "total_events_per_s": round((fleet.size() + events) / (ended - started)),
        "log_backlog_after_lists": backlog_after_lists,
        "log_backlog_after_churn": backlog,
        "derive_after_s": round(derived - ended, 3),
        "complete_events_per_s": round((fleet.size() + events) / (derived - started)),
        "churn_started_at": churn_from,
    }


def sqlite_files(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if not p.name.endswith(".lock"))


def ingest_rounds(
    make_where: Callable[[int, str], str | Path],
    fleet: Fleet,
    reads: list[Any],
    events: int,
    rounds: int,
    after: Callable[[int, str, str | Path, dict[str, Any]], dict[str, Any]] | None = None,
    arms: tuple[str, ...] = tuple(ARMS),
) -> dict[str, Any]:
    """``rounds`` passes over ``arms`` (``off`` first: the ratios are to it), forward
    then backward (a drift of the machine's load hits every arm alike)."""
    results = []
    order = list(arms)
    for r in range(rounds):
        for arm in order if r % 2 == 0 else order[::-1]:
            where = make_where(r, arm)
            res = one_round(where, arm, fleet, reads, events)
            if after is not None:
                res.update(after(r, arm, where, res))
            res["load_avg"] = os.getloadavg()[0]
            print(f"    round {r} history {arm}: {res}", flush=True)
            results.append(res)

    def med(arm: str, key: str) -> float:
        return statistics.median(x[key] for x in results if x["arm"] == arm)

    keys = (
        "churn_events_per_s",
        "list_objects_per_s",
        "total_events_per_s",
        "complete_events_per_s",
        "derive_after_s",
    )
    summary: dict[str, dict[str, float]] = {k: {arm: med(arm, k) for arm in order} for k in keys}
    for key in keys[:4]:
        for arm in order[1:]:
            summary[key][f"{arm} / off"] = round(summary[key][arm] / summary[key]["off"], 3)
    pairs = {
        arm: [
            round(a["churn_events_per_s"] / b["churn_events_per_s"], 3)
            for a, b in zip(
                [x for x in results if x["arm"] == arm],
                [x for x in results if x["arm"] == "off"],
                strict=True,
            )
        ]
        for arm in order[1:]
    }
    return {"rounds": results, "median": summary, "churn_ratio_per_round": pairs}


# --------------------------------------------------------------------------- 2. storage


def _pct(values: list[int], q: float) -> int:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] if values else 0


def storage(cache: Path, churn_from: float) -> dict[str, Any]:
    """Bytes of the history in a closed SQLite cache."""
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT length(row), observed_at >= ? FROM objects WHERE resource = ?", (churn_from, CHANGES_KEY)
        ).fetchall()
        during = [n for n, c in rows if c]
        life = [
            n for (n,) in con.execute("SELECT length(row) FROM objects WHERE resource = ?", (LIFETIMES_KEY,))
        ]
        heads, head_bytes = con.execute(
            "SELECT count(*), coalesce(sum(length(doc) + length(managers)), 0) FROM history_heads"
        ).fetchone()
        live = con.execute(
            "SELECT count(*) FROM objects WHERE deleted = 0 AND resource NOT LIKE '~%'"
        ).fetchone()[0]
        objects_bytes = con.execute(
            "SELECT coalesce(sum(length(row)), 0) FROM objects WHERE resource NOT LIKE '~%'"
        ).fetchone()[0]
    finally:
        con.close()
    all_rows = [n for n, _ in rows]
    return {
        "change_rows": len(rows),
        "change_row_bytes": {"median": _pct(all_rows, 0.5), "p99": _pct(all_rows, 0.99), "mean": round(statistics.fmean(all_rows)) if all_rows else 0, "total": sum(all_rows)},
        "churn_change_rows": len(during),
        "churn_change_row_bytes": {"median": _pct(during, 0.5), "p99": _pct(during, 0.99), "mean": round(statistics.fmean(during)) if during else 0},
        "lifetime_rows": len(life),
        "lifetime_row_bytes": {"median": _pct(life, 0.5), "total": sum(life)},
        "heads": heads,
        "head_bytes": {"total": head_bytes, "per_head": round(head_bytes / heads) if heads else 0},
        "live_objects": live,
        "object_row_bytes_total": objects_bytes,
    }  # fmt: skip


# --------------------------------------------------------------------------- profile


@contextmanager
def spied(out: Path) -> Iterator[None]:
    """py-spy sampling this process (every thread) into ``out``, raw (collapsed stacks)."""
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(os.getpid()), "--rate", "250",
         "--format", "raw", "--threads", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.5)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


def profile_round(where: str | Path, fleet: Fleet, reads: list[Any], work: Path) -> dict[str, Any]:
    """A history-on round with py-spy sampling the lists, the churn and the derivation
    after them: the writer thread's samples, inclusive, by the functions the history adds."""
    store = CacheStore(where, history=policy(True))
    try:
        with spied(work / "spy-list.txt"):
            populate(store, fleet)
        with spied(work / "spy-churn.txt"):
            apply_churn(store, reads)
        with spied(work / "spy-derive.txt"):
            store.flush()
    finally:
        store.close()
    return {phase: where_it_goes(work / f"spy-{phase}.txt") for phase in ("list", "churn", "derive")}


#: The history's parts, as they appear in py-spy's frames ("function (file:line)").
PARTS = {
    "logging versions (logged_upsert, logged_deletion)": "logged_",
    "deriving a segment (HistoryRecorder.replay)": "replay (watcher/cache/history.py",
    "HistoryRecorder.upserted (all of the history on an upsert)": "upserted (watcher/cache/history.py",
    "HistoryRecorder.deleted": "deleted (watcher/cache/history.py",
    "heads SELECT (_heads)": "_heads (watcher/cache/history.py",
    "send (the log's segments encoded and inserted; the heads' UPSERT/DELETE)": "send (watcher/cache/history.py",
    "json_patch": "json_patch (watcher/history.py",
    "managers_of (fieldsV1 fingerprints)": "managers_of (watcher/history.py",
    "changed_managers": "changed_managers (watcher/history.py",
    "history_doc": "history_doc (watcher/history.py",
    "change rows (_change)": "_change (watcher/cache/history.py",
    "lifetime rows": "_lifetime (watcher/cache/history.py",
    "the objects' own rows (extract_row)": "extract_row (watcher/tables.py",
    "executemany (SQLite/PostgreSQL executing the batched statements)": "do_executemany (",
    "COMMIT": "do_commit (",
}


def where_it_goes(raw: Path) -> dict[str, Any]:
    writer = 0
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "cache-writer" not in stack or not count.isdigit():  # the writer thread's name
            continue
        n = int(count)
        writer += n
        for name, needle in PARTS.items():
            if needle in stack:
                parts[name] += n
        leaves[re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])] += n
    return {
        "writer_samples": writer,
        "inclusive_share": {k: round(v / writer, 3) for k, v in parts.most_common()} if writer else {},
        "top_self": {k: round(v / writer, 3) for k, v in leaves.most_common(15)} if writer else {},
    }


# --------------------------------------------------------------------------- 3. as of


def _database(pg: Postgres, name: str) -> str:
    with psycopg.connect(pg.dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return pg.dsn.replace("/postgres?", f"/{name}?")


def destination_tables(dsn: str, work: Path) -> dict[str, Any]:
    """Create k8s_object_changes and k8s_object_lifetimes as the real destination does:
    a real ``cloudquery sync`` of those two tables from a small cache (no API server: the
    history tables need no relist), then their rows are deleted. Returns their DDL."""
    fleet = Fleet(300)
    cache = work / "ddl" / "cache.db"
    store = CacheStore(cache)
    populate(store, fleet)
    apply_churn(store, fleet.churn(500))
    store.flush()  # the history derived from the log
    store.close()
    kubeconfig = work / "ddl" / "kubeconfig"
    kubeconfig.write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c1",
            "clusters": [{"name": c, "cluster": {"server": "https://127.0.0.1:1"}} for c in CONTEXTS],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": c, "context": {"cluster": c, "user": "u"}} for c in CONTEXTS],
        })
    )  # fmt: skip
    spec = {"kubeconfig": str(kubeconfig), "cache_path": str(cache), "contexts": CONTEXTS}
    result = run_cloudquery(
        ["sync"],
        workdir=work / "ddl" / "cq",
        configs=[source_config(spec, tables=[CHANGES_TABLE, LIFETIMES_TABLE]), destination_config(dsn)],
    )
    if result.returncode != 0:
        raise RuntimeError(result.output[-3000:])
    ddl: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for table in (CHANGES_TABLE, LIFETIMES_TABLE):
            synced = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            columns = conn.execute(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_name = %s ORDER BY ordinal_position",
                (table,),
            ).fetchall()
            indexes = [
                r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,))
            ]
            conn.execute(f"DELETE FROM {table}")
            ddl[table] = {"rows_synced": synced, "columns": [list(c) for c in columns], "indexes": indexes}
        conn.commit()
    return ddl


#: The kinds of the generated timeline and their share of the 100k objects.
ASOF_KINDS = [
    ("Pod", "v1", "pods", 40), ("ConfigMap", "v1", "configmaps", 25), ("Secret", "v1", "secrets", 8),
    ("Service", "v1", "services", 8), ("Deployment", "apps/v1", "deployments.apps", 8),
    ("ServiceAccount", "v1", "serviceaccounts", 5), ("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings.rbac.authorization.k8s.io", 4),
    ("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "clusterrolebindings.rbac.authorization.k8s.io", 2),
]  # fmt: skip

# One row per object: its kind (by bucket of o % 100), when it was first seen (70% before
# the day: observed at its start; the rest created during it), whether it is deleted (20%,
# at its last change) and how many changes it has (5 to 15: 10 on average).
_GEN_OBJECTS = """
CREATE TEMP TABLE gen_objects AS
SELECT o, 'c' || (o %% 3 + 1) AS ctx,
       md5('obj' || o)::uuid AS uid, k.kind, k.api_version, k.resource,
       'ns-' || (o %% 300) AS namespace, lower(k.kind) || '-' || o AS name,
       CASE WHEN o %% 10 < 7 THEN %(day)s ELSE %(day)s + ((o * 7919) %% 57600) * interval '1 second' END AS first_seen,
       o %% 5 = 0 AS deleted,
       5 + o %% 11 AS n
FROM generate_series(1, %(objects)s) o
JOIN (VALUES {kinds}) AS k(kind, api_version, resource, lo, hi) ON o %% 100 >= k.lo AND o %% 100 < k.hi
"""
# Change j of an object: spread over what is left of the day after its first sighting;
# its document grows with the kind's payload (a ConfigMap's data, a pod's status...):
# a few hundred bytes to a few KB.
_GEN_CHANGES = """
INSERT INTO k8s_object_changes (
    _cq_sync_time, _cq_source_name, context_name, change_seq, uid, change_type, observed_at, kind, api_version,
    resource, namespace, name, resource_version, previous_resource_version, managers, paths, patch, object)
SELECT %(sync)s, 'k8s', g.ctx, row_number() OVER (ORDER BY g.at, g.o), g.uid,
       CASE WHEN g.j = 1 THEN (CASE WHEN g.first_seen = %(day)s THEN 'observed' ELSE 'added' END)
            WHEN g.j = g.n AND g.deleted THEN 'deleted' ELSE 'modified' END,
       g.at, g.kind, g.api_version, g.resource, g.namespace, g.name,
       (1000000 + g.o * 16 + g.j)::text, CASE WHEN g.j > 1 THEN (1000000 + g.o * 16 + g.j - 1)::text END,
       CASE WHEN g.j > 1 THEN jsonb_build_array(jsonb_build_object('manager', 'kubectl', 'operation', 'Apply', 'subresource', '', 'time', g.at)) END,
       CASE WHEN g.j > 1 THEN ARRAY['/spec/template/spec/containers/0/image', '/metadata/labels/rev'] END,
       CASE WHEN g.j > 1 THEN jsonb_build_array(
           jsonb_build_object('op', 'replace', 'path', '/spec/template/spec/containers/0/image', 'value', 'registry.example/app:' || g.j),
           jsonb_build_object('op', 'replace', 'path', '/metadata/labels/rev', 'value', g.j::text)) END,
       jsonb_build_object(
           'apiVersion', g.api_version, 'kind', g.kind,
           'metadata', jsonb_build_object('name', g.name, 'namespace', g.namespace, 'uid', g.uid,
               'labels', jsonb_build_object('app', 'app-' || g.o %% 50, 'rev', g.j::text, 'team', 't' || g.o %% 7),
               'annotations', jsonb_build_object('bench/owner', 'team-' || g.o %% 7),
               'creationTimestamp', g.first_seen),
           'spec', CASE g.kind
               WHEN 'ClusterRoleBinding' THEN NULL
               ELSE jsonb_build_object('containers', jsonb_build_array(jsonb_build_object(
                   'name', 'app', 'image', 'registry.example/app:' || g.j,
                   'resources', jsonb_build_object('requests', jsonb_build_object('cpu', '100m', 'memory', '128Mi')))))
               END,
           'roleRef', CASE WHEN g.kind = 'ClusterRoleBinding' THEN jsonb_build_object(
               'apiGroup', 'rbac.authorization.k8s.io', 'kind', 'ClusterRole',
               'name', CASE WHEN g.o %% 7 = 0 THEN 'cluster-admin' ELSE 'view' END) END,
           'subjects', CASE WHEN g.kind LIKE '%%Binding' THEN jsonb_build_array(jsonb_build_object(
               'kind', 'User', 'name', 'user-' || g.o %% 97, 'apiGroup', 'rbac.authorization.k8s.io')) END,
           'data', jsonb_build_object('payload', repeat(md5(g.o::text || g.j::text), 4 + (g.o * 31 + g.j) %% 80))
       )
FROM (
    SELECT b.*, j, b.first_seen + ((j - 1) * (86400 - extract(epoch FROM b.first_seen - %(day)s)) / b.n) * interval '1 second' AS at
    FROM gen_objects b, generate_series(1, b.n) j
) g
"""
_GEN_LIFETIMES = """
INSERT INTO k8s_object_lifetimes (
    _cq_sync_time, _cq_source_name, context_name, uid, kind, api_version, resource, namespace, name, created_at,
    first_seen_at, first_seen_as, deleted, deleted_at, lived_seconds, first_change_seq, last_change_seq)
SELECT %(sync)s, 'k8s', b.ctx, b.uid, b.kind, b.api_version, b.resource, b.namespace, b.name, b.first_seen,
       b.first_seen, CASE WHEN b.first_seen = %(day)s THEN 'observed' ELSE 'added' END,
       b.deleted, CASE WHEN b.deleted THEN c.last_at END,
       CASE WHEN b.deleted THEN extract(epoch FROM c.last_at - b.first_seen) END,
       c.first_seq, c.last_seq
FROM gen_objects b
JOIN (SELECT context_name, uid, min(change_seq) AS first_seq, max(change_seq) AS last_seq, max(observed_at) AS last_at
      FROM k8s_object_changes GROUP BY 1, 2) c ON c.context_name = b.ctx AND c.uid = b.uid
"""


def generate_timeline(dsn: str, day: datetime, objects: int) -> dict[str, Any]:
    buckets, lo = [], 0
    for kind, api_version, resource, share in ASOF_KINDS:
        buckets.append(f"('{kind}', '{api_version}', '{resource}', {lo}, {lo + share})")
        lo += share
    assert lo == 100
    params = {"day": day, "objects": objects, "sync": datetime.now(UTC)}
    started = time.monotonic()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        conn.execute("SET work_mem = '256MB'")
        conn.execute("SET TIME ZONE 'UTC'")  # the destination writes UTC into timestamp columns

        for table, sql in ((CHANGES_TABLE, _GEN_CHANGES), (LIFETIMES_TABLE, _GEN_LIFETIMES)):
            # Every column the destination created is written, and no other.
            made = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,))}  # fmt: skip
            written = {c.strip() for c in sql.split("(", 1)[1].split(")", 1)[0].split(",")}
            if made != written:
                raise RuntimeError(
                    f"{table}: the destination made {sorted(made)}, the generator writes {sorted(written)}"
                )
        conn.execute(_GEN_OBJECTS.format(kinds=", ".join(buckets)), params)
        conn.execute(_GEN_CHANGES, params)
        changes_s = time.monotonic() - started
        conn.execute(_GEN_LIFETIMES, params)
        conn.commit()
        conn.autocommit = True
        conn.execute(f"VACUUM ANALYZE {CHANGES_TABLE}")
        conn.execute(f"VACUUM ANALYZE {LIFETIMES_TABLE}")
        sizes = {
            t: conn.execute(
                "SELECT count(*), pg_total_relation_size(%s), avg(pg_column_size(object)) FROM " + t, (t,)
            ).fetchone()
            if t == CHANGES_TABLE
            else conn.execute("SELECT count(*), pg_total_relation_size(%s), NULL FROM " + t, (t,)).fetchone()
            for t in (CHANGES_TABLE, LIFETIMES_TABLE)
        }
        object_sizes = conn.execute(
            "SELECT percentile_disc(ARRAY[0.01, 0.5, 0.99]) WITHIN GROUP (ORDER BY length(object::text)) FROM "
            + CHANGES_TABLE
        ).fetchone()[0]  # type: ignore[index]
    return {
        "generate_changes_s": round(changes_s, 1),
        "generate_total_s": round(time.monotonic() - started, 1),
        "rows": {t: v[0] for t, v in sizes.items()},  # type: ignore[index]
        "bytes_with_indexes_before_install": {t: v[1] for t, v in sizes.items()},  # type: ignore[index]
        "object_text_bytes_p1_p50_p99": object_sizes,
        "object_stored_bytes_avg": round(float(sizes[CHANGES_TABLE][2])),  # type: ignore[index]
    }


def install(dsn: str) -> float:
    started = time.monotonic()
    done = subprocess.run(
        [console_script("k8s-watcher"), "history", "install", "--dsn", dsn], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return time.monotonic() - started


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process (the query's backend), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def explain(dsn: str, sql: str, params: dict[str, Any], runs: int = 5) -> dict[str, Any]:
    """``runs`` EXPLAIN (ANALYZE, TIMING OFF): planning + execution ms (per-node timing
    would add a clock read per row and node: 95k nested loops doubled the figure); then
    ``runs`` plain executions: wall ms at the client and the backend's CPU ms (the
    machine is shared: wall time includes waiting for a core)."""
    times, walls, cpus, plan = [], [], [], None
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(runs):
            row = conn.execute(
                f"EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) {sql}", params
            ).fetchone()
            plan = row[0][0]  # type: ignore[index]
            times.append(round(plan["Planning Time"] + plan["Execution Time"], 1))
        pid = conn.info.backend_pid
        for _ in range(runs):
            cpu, started = _cpu_seconds(pid), time.perf_counter()
            result = conn.execute(sql, params).fetchall()
            walls.append(round(1000 * (time.perf_counter() - started), 1))
            end = _cpu_seconds(pid)
            cpus.append(round(1000 * (end - cpu)) if cpu is not None and end is not None else None)
    return {
        "sql": " ".join(sql.split()), "explain_ms": times, "median_ms": statistics.median(times),
        "wall_ms": walls, "median_wall_ms": statistics.median(walls), "backend_cpu_ms": cpus,
        "load_avg": os.getloadavg()[0], "result": [list(r) for r in result][:5], "rows": len(result), "plan": plan,
    }  # fmt: skip


def asof(pg: Postgres, work: Path, objects: int) -> dict[str, Any]:
    dsn = _database(pg, "asof")
    out: dict[str, Any] = {"ddl": destination_tables(dsn, work)}
    print(f"  destination DDL: {json.dumps(out['ddl'])[:2000]}", flush=True)
    day = datetime(2026, 12, 1, tzinfo=UTC)
    out["timeline"] = generate_timeline(dsn, day, objects)
    print(f"  timeline: {out['timeline']}", flush=True)
    out["install_s"] = round(install(dsn), 1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # As autovacuum leaves an append-only table (PostgreSQL >= 13 vacuums after
        # inserts): its visibility map set, so an index-only scan reads no heap.
        for table in (CHANGES_TABLE, LIFETIMES_TABLE):
            conn.execute(f"VACUUM ANALYZE {table}")
        out["pages_all_visible"] = {
            r[0]: f"{r[2]}/{r[1]}"
            for r in conn.execute(
                "SELECT relname, relpages, relallvisible FROM pg_class WHERE relname IN (%s, %s)",
                (CHANGES_TABLE, LIFETIMES_TABLE),
            )
        }
        out["indexes"] = [r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename LIKE 'k8s_object_%'")]  # fmt: skip
        out["bytes_after_install"] = {
            t: conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]  # type: ignore[index]
            for t in (CHANGES_TABLE, LIFETIMES_TABLE)
        }
    t = day.replace(hour=13, minute=13)
    t1, t2 = day.replace(hour=8), day.replace(hour=16)
    queries = {
        "as_of_all": ("SELECT count(*) FROM k8s_objects_as_of(%(t)s)", {"t": t}),
        "as_of_deployments": ("SELECT count(*) FROM k8s_objects_as_of(%(t)s, ARRAY['Deployment'])", {"t": t}),
        "cluster_admin_bindings": (
            """SELECT context_name, name, object->'subjects' FROM k8s_objects_as_of(%(t)s, ARRAY['ClusterRoleBinding'])
               WHERE object->'roleRef'->>'name' = 'cluster-admin' ORDER BY 1, 2""",
            {"t": t},
        ),
        "diff_deployments": (
            "SELECT change, count(*) FROM k8s_objects_diff(%(t1)s, %(t2)s, ARRAY['Deployment']) GROUP BY 1 ORDER BY 1",
            {"t1": t1, "t2": t2},
        ),
    }
    out["queries"] = {}
    for name, (sql, params) in queries.items():
        res = explain(dsn, sql, params)
        out["queries"][name] = res
        print(
            f"  {name}: EXPLAIN ANALYZE {res['explain_ms']} ms (median {res['median_ms']}); wall {res['wall_ms']},"
            f" backend CPU {res['backend_cpu_ms']} ms; {res['rows']} rows, {res['result'][:3]}",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- 4. soak

#: The busy-cluster benchmark's steady churn (BENCHMARKS.md, issue 21), events/s by kind
#: (ReplicaSets, EndpointSlices, Endpoints, Nodes, Leases as their nearest shape here:
#: their policy is what matters, and all but ReplicaSets have history off by default).
LIVE_RATES = {
    "pods": (72.7, {"create": 14, "update": 28, "status": 44, "delete": 14}),
    "leases": (48.7, None),
    "events": (18.0, {"create": 90, "delete": 10}),
    "replicasets": (6.6, {"update": 20, "status": 80}),
    "configmaps": (5.0, {"update": 100}),
    "endpointslices": (4.9 + 3.8, None),
    "deployments": (4.0, {"update": 20, "status": 80}),
    "nodes": (0.8, None),
}


def soak(cache: Path, fleet: Fleet, seconds: float) -> dict[str, Any]:
    """The busy cluster's churn, paced in real time, into a cache holding ``fleet``;
    kinds with history off by default ride along as Leases (off) so the writer does
    their work too."""
    store = CacheStore(cache)
    populate(store, fleet)
    store.flush()  # the lists' history derived from the log
    store.close()  # sizes are of closed caches (WAL folded in), before and after
    before = storage(cache, time.time())
    size_before = sqlite_files(cache)
    store = CacheStore(cache)
    lease = BY_KEY["leases.coordination.k8s.io"]
    leases = [make("configmaps", i, "kube-node-lease", 0, fleet.t) for i in range(500)]
    for obj in leases:
        obj["kind"], obj["apiVersion"] = "Lease", "coordination.k8s.io/v1"
    started = time.monotonic()
    due: Counter[str] = Counter()
    sent = 0
    tick = 0.5
    while time.monotonic() - started < seconds:
        for kind, (rate, ops) in LIVE_RATES.items():
            due[kind] += rate * tick
            n = int(due[kind])
            if n == 0:
                continue
            due[kind] -= n
            ctx = CONTEXTS[sent % len(CONTEXTS)]
            if ops is None:  # history off by default: a Lease renewal's cost
                batch = []
                for _ in range(n):
                    obj = copy.deepcopy(leases[sent % len(leases)])
                    obj["metadata"]["resourceVersion"] = str(fleet._rv())
                    batch.append(("MODIFIED", obj))
                    sent += 1
                store.apply_events(ctx, lease, batch, _status(ctx, lease))
                continue
            shape = {"replicasets": "deployments"}.get(kind, kind)
            events = fleet.events(ctx, shape, n, ops)
            store.apply_events(ctx, BY_KEY[KINDS[shape]], events, _status(ctx, BY_KEY[KINDS[shape]]))
            sent += n
        time.sleep(max(0.0, tick - (time.monotonic() - started) % tick))
    store.flush()
    elapsed = time.monotonic() - started
    purged = store.purge_history()
    store.close()
    after = storage(cache, 0)
    size_after = sqlite_files(cache)
    grow = {
        "change_rows": after["change_rows"] - before["change_rows"],
        "change_bytes": after["change_row_bytes"]["total"] - before["change_row_bytes"]["total"],
        "lifetime_bytes": after["lifetime_row_bytes"]["total"] - before["lifetime_row_bytes"]["total"],
        "head_bytes": after["head_bytes"]["total"] - before["head_bytes"]["total"],
        "cache_file_bytes": size_after - size_before,
    }
    per_hour = 3600 / elapsed
    return {
        "seconds": round(elapsed, 1),
        "events": sent,
        "events_per_s": round(sent / elapsed, 1),
        "purged_by_default_policy": purged,
        "before": {"cache_file_bytes": size_before, **before},
        "after": {"cache_file_bytes": size_after, **after},
        "growth": grow,
        "extrapolated_to_1h": {
            "note": f"EXTRAPOLATION (linear, x{per_hour:.1f}) of a {elapsed:.0f} s run, not a 1-hour measurement",
            "change_rows": round(grow["change_rows"] * per_hour),
            "history_bytes": round(
                (grow["change_bytes"] + grow["lifetime_bytes"] + grow["head_bytes"]) * per_hour
            ),
            "cache_file_bytes": round(size_before + grow["cache_file_bytes"] * per_hour),
        },
    }


# --------------------------------------------------------------------------- main


@contextmanager
def frozen_gc() -> Iterator[None]:
    """The pre-built events out of the collector's way: a daemon does not hold a
    benchmark's worth of events, so full collections must not scan them."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--churn", type=int, default=100_000, help="watch events after the lists")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="passes over the arms (off, on, on with no backlog) on SQLite (0: none; with --pg-rounds 0 too, no ingest part)",
    )
    parser.add_argument(
        "--pg-rounds", type=int, default=1, help="passes over the arms on PostgreSQL (0: none)"
    )
    parser.add_argument(
        "--arms",
        default=",".join(ARMS),
        help="the ingest's arms, off first (default %(default)s; off,on: the target's pair alone, quicker)",
    )
    parser.add_argument("--asof-objects", type=int, default=100_000, help="0: skip the as-of part")
    parser.add_argument("--soak-seconds", type=float, default=600, help="0: skip the soak")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "history-results.json"))
    args = parser.parse_args()
    arms = tuple(args.arms.split(","))
    if arms[0] != "off" or not set(arms) <= set(ARMS):
        parser.error(f"--arms: off first, then some of {', '.join(list(ARMS)[1:])}")
    os.environ["CQ_TELEMETRY_LEVEL"] = "none"
    out: dict[str, Any] = {
        "args": vars(args),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_avg_start": os.getloadavg(),
        "sqlite": sqlite3.sqlite_version,
        "python": sys.version.split()[0],
    }
    with tempfile.TemporaryDirectory(prefix="k8s-watcher-history-") as tmp, postgres_server() as pg:
        work = Path(tmp)
        with psycopg.connect(pg.dsn) as conn:
            out["postgres"] = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        if args.rounds or args.pg_rounds:
            started = time.monotonic()
            fleet = Fleet(args.objects)
            reads = fleet.churn(args.churn)
            events = sum(len(e) for _, _, e in reads)
            kinds = Counter(e[0] for _, _, evs in reads for e in evs)
            out["workload"] = {"objects_listed": fleet.size(), "churn_events": events, "event_types": dict(kinds),
                               "by_kind": dict(Counter(k for _, k, evs in reads for _ in evs)), "generated_s": round(time.monotonic() - started, 1)}  # fmt: skip
            print(f"workload: {out['workload']}", flush=True)

            with frozen_gc():
                print("1. ingest, SQLite cache", flush=True)
                stores: dict[str, dict[str, Any]] = {}

                def sqlite_after(r: int, arm: str, where: str | Path, res: dict[str, Any]) -> dict[str, Any]:
                    size = sqlite_files(Path(where))
                    found = storage(Path(where), res["churn_started_at"])
                    if r == 0:
                        stores[arm] = {"cache_file_bytes": size, **(found if res["history"] else {})}
                    for p in Path(where).parent.glob("*"):
                        p.unlink()
                    return {"cache_file_bytes": size, "change_rows": found["change_rows"]}

                def pg_after(r: int, arm: str, where: str | Path, res: dict[str, Any]) -> dict[str, Any]:
                    with psycopg.connect(str(where)) as conn:
                        row = conn.execute(
                            "SELECT count(*) FROM objects WHERE resource = %s", (CHANGES_KEY,)
                        ).fetchone()
                    return {"change_rows": row[0] if row else None}

                def sqlite_where(r: int, arm: str) -> Path:
                    (work / f"s{r}{list(ARMS).index(arm)}").mkdir()
                    return work / f"s{r}{list(ARMS).index(arm)}" / "cache.db"

                if args.rounds:
                    out["ingest_sqlite"] = ingest_rounds(
                        sqlite_where, fleet, reads, events, args.rounds, sqlite_after, arms
                    )
                    print(f"  medians: {out['ingest_sqlite']['median']}", flush=True)
                    out["storage"] = stores
                    print(f"2. storage: {json.dumps(stores)}", flush=True)
                if args.pg_rounds:
                    print("1b. ingest, PostgreSQL cache", flush=True)
                    out["ingest_postgres"] = ingest_rounds(
                        lambda r, arm: _database(pg, f"cache_{r}_{list(ARMS).index(arm)}"),
                        fleet,
                        reads,
                        events,
                        args.pg_rounds,
                        pg_after,
                        arms,
                    )
                    print(f"  medians: {out['ingest_postgres']['median']}", flush=True)
                if args.rounds and not args.no_profile:
                    print("1c. where a history-on round's writer time goes (py-spy)", flush=True)
                    (work / "p").mkdir()
                    out["profile"] = {
                        "sqlite": profile_round(work / "p" / "cache.db", fleet, reads, work / "p")
                    }
                    if args.pg_rounds:
                        out["profile"]["postgres"] = profile_round(
                            _database(pg, "profile"), fleet, reads, work / "p"
                        )
                    print(f"  {json.dumps(out['profile'], indent=1)}", flush=True)
            del reads
        if args.asof_objects:
            print("3. as-of queries, PostgreSQL", flush=True)
            out["asof"] = asof(pg, work, args.asof_objects)
        if args.soak_seconds:
            print(
                f"4. soak: the busy cluster's churn for {args.soak_seconds:.0f} s, default policy", flush=True
            )
            (work / "soak").mkdir()
            out["soak"] = soak(work / "soak" / "cache.db", Fleet(args.objects), args.soak_seconds)
            print(f"  {json.dumps(out['soak'])}", flush=True)
    out["load_avg_end"] = os.getloadavg()
    out["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
