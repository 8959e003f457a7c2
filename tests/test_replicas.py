"""Scale-out on the test bed: three ``k8s-watcher serve`` replicas on loopback share one
PostgreSQL cache and four contexts by Lease; one is SIGKILLed while objects keep
changing; the others take its contexts over from the stored resourceVersions, and the
cache, then PostgreSQL through the real destination, end equal to the API servers."""

from __future__ import annotations

import json
import random
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes, KubeHttp
from testbed.daemon import DaemonProcess, console_script, watcher_status
from testbed.postgres import Postgres
from tests.conftest import (
    assert_pg_equals_api,
    configmap,
    eventually,
    namespace,
    new_dsn,
    pg_uids,
    sync,
    truth,
    unique,
)
from tests.unit.builders import CMS
from watcher import state
from watcher.history import CHANGES_TABLE
from watcher.leases import assign
from watcher.snapshot import SnapshotReader

pytestmark = pytest.mark.slow

CONTEXTS = ["dev", "dev-viewer", "prod", "prod-viewer"]
LEASE_SECONDS = 4.0
TABLES = ["k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_configmaps", "k8s_secrets"]


def _owners(cache_url: str) -> dict[str, str | None]:
    with state.reading(cache_url) as conn:
        return {ctx: log.owner for ctx, log in state.read_context_logs(conn).items()}


def _runs(d: DaemonProcess, owner: str | None) -> bool:
    """Whether ``owner`` (an identity, <host>-<pid>-<random>) is the replica ``d``."""
    return bool(owner) and d.proc is not None and f"-{d.proc.pid}-" in str(owner)


def _held_by(cache_url: str, daemons: list[DaemonProcess]) -> dict[int, list[str]]:
    """Replica index -> the contexts it owns in the cache."""
    owners = _owners(cache_url)
    return {i: [ctx for ctx, owner in owners.items() if _runs(d, owner)] for i, d in enumerate(daemons)}


def _settled(cache_url: str, daemons: list[DaemonProcess]) -> bool:
    """Every context owned where the replicas' shared assignment puts it, each replica
    owning one or more (so their identities are all known). A spread of the right shape
    is not enough: contexts handed over one at a time pass through spreads like 2/1/1
    on their way to the one :func:`assign` gives."""
    owners = _owners(cache_url)
    live = {str(o) for o in owners.values() if any(_runs(d, o) for d in daemons)}
    return len(live) == len(daemons) and owners == assign(live, CONTEXTS)


def _cache_equals_api(cache_url: str, planes: ControlPlanes) -> bool:
    with state.reading(cache_url) as conn:
        for ctx in CONTEXTS:
            server = planes.servers[ctx.removesuffix("-viewer")].admin()
            if state.live_versions(conn, ctx, CMS.key) != truth(server, CMS):
                return False
    return True


class _Churn:
    """Creates, updates and deletes configmaps in one namespace of both clusters until stopped."""

    def __init__(self, admins: list[KubeHttp], ns: str) -> None:
        self.admins, self.ns = admins, ns
        self.stop = threading.Event()
        self.changes = 0
        #: Per cluster (0: dev, 1: prod): every (uid, resourceVersion) created or updated,
        #: and the uids deleted: what the history must record, once each.
        self.versions: dict[int, set[tuple[str, str]]] = {0: set(), 1: set()}
        self.deleted: dict[int, set[str]] = {0: set(), 1: set()}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = random.Random(7)
        names: dict[int, list[str]] = {0: [], 1: []}
        uids: dict[str, str] = {}
        while not self.stop.is_set():
            which = rng.randrange(2)
            admin, mine = self.admins[which], names[which]
            op = rng.random()
            path = f"/api/v1/namespaces/{self.ns}/configmaps"
            obj = None
            if mine and op < 0.25:
                name = mine.pop(rng.randrange(len(mine)))
                admin.delete(f"{path}/{name}")
                self.deleted[which].add(uids[name])
            elif mine and op < 0.6:
                name = rng.choice(mine)
                obj = admin.apply(
                    path,
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": name},
                        "data": {"v": str(rng.random())},
                    },
                )
            else:
                mine.append(f"cm-{self.changes}")
                obj = configmap(admin, self.ns, mine[-1], v="0")
            if obj is not None:
                uids[obj["metadata"]["name"]] = obj["metadata"]["uid"]
                self.versions[which].add((obj["metadata"]["uid"], obj["metadata"]["resourceVersion"]))
            self.changes += 1
            time.sleep(0.02)


@pytest.fixture
def replicas(
    planes: ControlPlanes, pg_server: Postgres, tmp_path: Path
) -> Iterator[tuple[list[DaemonProcess], str]]:
    """Three replicas of one group, Leases in a fresh namespace of ``prod``."""
    cache_url = new_dsn(pg_server)
    lease_ns = namespace(planes.servers["prod"].admin(), unique("leases"))
    args = [
        "--cache-url", cache_url, "--replicas-lease-namespace", lease_ns,
        "--replicas-lease-context", "prod", "--lease-duration", f"{LEASE_SECONDS:.0f}s",
    ]  # fmt: skip
    contexts = ",".join(CONTEXTS)
    logs = [tmp_path / f"replica-{i}.log" for i in range(3)]
    daemons = [
        DaemonProcess(planes.kubeconfig, tmp_path / "unused.db", log, contexts, extra_args=args)
        for log in logs
    ]
    try:
        for d in daemons:
            d.start(synced=False)
        yield daemons, cache_url
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.kill()


def _lists_since(planes: ControlPlanes, since: float) -> list[str]:
    """Full reads (LIST, or a streaming list) of configmaps by k8s-watcher since ``since``."""
    found = []
    for name, server in planes.servers.items():
        for e in server.audit_events():
            if not e.get("userAgent", "").startswith("k8s-watcher/") or "/configmaps" not in e["requestURI"]:
                continue
            received = datetime.fromisoformat(
                e["requestReceivedTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if received >= since and (e["verb"] == "list" or "sendInitialEvents=true" in e["requestURI"]):
                found.append(f"{name}: {e['verb']} {e['requestURI']}")
    return found


def test_replicas_share_the_contexts_and_take_over_a_killed_one_without_losing_or_repeating_anything(
    planes: ControlPlanes, replicas: tuple[list[DaemonProcess], str], dsn: str, tmp_path: Path
) -> None:
    daemons, cache_url = replicas
    began = time.time() - 60  # the replicas started just before
    admins = [planes.servers["dev"].admin(), planes.servers["prod"].admin()]
    ns = unique("replicas")
    for admin in admins:
        namespace(admin, ns)

    # Even spread: 4 contexts over 3 live replicas is 2/1/1, each context owned once.
    eventually(lambda: _settled(cache_url, daemons), timeout=6 * LEASE_SECONDS, what="contexts assigned")
    assert sorted(len(v) for v in _held_by(cache_url, daemons).values()) == [1, 1, 2]
    for d in daemons:
        d.wait_synced(120)
    writers = json.loads(watcher_status(cache_url, "--json"))["writers"]
    assert sorted(writers) == sorted(CONTEXTS) and len(set(writers.values())) == 3
    source = {
        "registry": "grpc",
        "path": daemons[0].grpc_address,
        "with_state_backend": True,
        "write_mode": "overwrite",
    }
    spec = {"incremental": True, "tables": TABLES, "contexts": CONTEXTS}

    with _Churn(admins, ns) as churn:
        first = sync(tmp_path, dsn, spec, **source)
        assert first.returncode == 0, first.output[-3000:]
        held = _held_by(cache_url, daemons)
        victim = max(held, key=lambda i: len(held[i]))
        orphans = held[victim]
        killed_at = time.time()
        daemons[victim].kill()  # SIGKILL: no release, no flush
        taken = time.monotonic()
        survivors = [d for i, d in enumerate(daemons) if i != victim]
        # Any replica serves syncs of every context (they read the shared cache).
        serving = survivors[0]
        source["path"] = serving.grpc_address
        eventually(
            lambda: set(orphans) <= {c for held in _held_by(cache_url, survivors).values() for c in held},
            timeout=3 * LEASE_SECONDS, what=f"{orphans} taken over",
        )  # fmt: skip
        handover = time.monotonic() - taken
        print(f"hand-over of {orphans} after SIGKILL: {handover:.1f}s (lease {LEASE_SECONDS:.0f}s)")
        assert handover <= 2 * LEASE_SECONDS + 2, handover
        # (The survivors may move one more context between them to even out.)
        eventually(
            lambda: _settled(cache_url, survivors), timeout=3 * LEASE_SECONDS, what="contexts reassigned"
        )
        assert sorted(len(v) for v in _held_by(cache_url, survivors).values()) == [2, 2]
        for d in survivors:
            d.wait_synced(120)
        time.sleep(2)  # changes keep coming while the new owners watch
        during = sync(tmp_path, dsn, spec, **source)
        assert during.returncode == 0, during.output[-3000:]
    assert churn.changes > 100

    # The new owners resumed the watches from the resourceVersions the killed one had
    # committed: no LIST of configmaps since the kill.
    assert _lists_since(planes, killed_at) == []
    assert _lists_since(planes, began), "the audit log shows no list at all: the check above proves nothing"
    eventually(lambda: _cache_equals_api(cache_url, planes), timeout=30, what="cache == API servers")
    last = sync(tmp_path, dsn, spec, **source)
    assert last.returncode == 0, last.output[-3000:]
    assert_pg_equals_api(dsn, planes, ["dev", "prod"])
    for ctx in ("dev-viewer", "prod-viewer"):
        assert pg_uids(dsn, CMS.table, ctx) == set(
            truth(planes.servers[ctx.removesuffix("-viewer")].admin(), CMS)
        )
    # Nothing repeated: with nothing changing, the next incremental sync sends no object
    # (only the computed k8s_clusters rows), though two contexts changed hands.
    idle = sync(tmp_path, dsn, spec, **source)
    sent = re.findall(r"sync sent (\d+) rows", serving.log.read_text())
    assert idle.returncode == 0 and sent[-1] == str(len(CONTEXTS)), sent
    with psycopg.connect(dsn) as conn:
        (rows,) = conn.execute(
            "SELECT count(*) FROM k8s_configmaps WHERE context_name = ANY(%s)", (CONTEXTS,)
        ).fetchone()
    assert rows == len({(c, u) for c in CONTEXTS for u in pg_uids(dsn, CMS.table, c)})

    # History: each context's change rows hold every version the churn made on its
    # cluster exactly once, and each deletion once, across the hand-over.
    with SnapshotReader.open(cache_url) as snap:
        changes = [r for b in snap.table_batches(CHANGES_TABLE, CONTEXTS) for r in b.to_pylist()]
    for ctx in CONTEXTS:
        server = 0 if ctx.startswith("dev") else 1
        mine = [c for c in changes if c["context_name"] == ctx and c["namespace"] == ns]
        written = [
            (str(uuid.UUID(bytes=c["uid"])), c["resource_version"])
            for c in mine
            if c["change_type"] in ("added", "modified")
        ]
        assert len(written) == len(set(written)), f"{ctx}: a change recorded twice"
        assert set(written) == churn.versions[server], f"{ctx}: changes lost or invented"
        gone = [str(uuid.UUID(bytes=c["uid"])) for c in mine if c["change_type"] == "deleted"]
        assert sorted(gone) == sorted(churn.deleted[server]), f"{ctx}: deletions"


def test_a_replica_refuses_a_sqlite_cache_and_a_missing_lease_cluster(
    planes: ControlPlanes, tmp_path: Path
) -> Any:
    """Replicas need a shared PostgreSQL cache, and a cluster to hold their Leases."""

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [console_script("k8s-watcher"), "serve", "--kubeconfig", str(planes.kubeconfig), "--cache", str(tmp_path / "c.db"), *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    sqlite = serve("--replicas-lease-namespace", "default")
    assert sqlite.returncode == 2 and "replicas share one PostgreSQL cache" in sqlite.stderr
    no_cluster = serve("--replicas-lease-namespace", "default", "--cache-url", "postgresql://u@127.0.0.1:1/x")
    assert no_cluster.returncode == 2 and "unreachable" in no_cluster.stderr
