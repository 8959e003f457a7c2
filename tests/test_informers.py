"""The informer cache against real API servers (issue 3)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import ControlPlanes, crd_manifest
from tests.conftest import (
    cache_bytes,
    cache_matches,
    cached,
    configmap,
    eventually,
    kubeconfig_with,
    namespace,
    unique,
    unreachable_cluster,
)
from watcher.informers import InformerManager, InformerOptions
from watcher.kube import KubeClient
from watcher.resources import BY_KEY, CUSTOM_OBJECTS_TABLE, RESOURCES
from watcher.state import CacheStore

PODS, CMS, DEPLOYS, SVCS, SECRETS, NSS = (
    BY_KEY[k] for k in ("pods", "configmaps", "deployments.apps", "services", "secrets", "namespaces")
)

Runner = Callable[..., InformerManager]


@pytest.fixture
def run_informers(tmp_path: Path) -> Iterator[Runner]:
    """Start an InformerManager on a cache file; everything started is stopped after."""
    started: list[tuple[InformerManager, CacheStore]] = []

    def run(
        kubeconfig: Path, contexts: list[str], *, cache: Path | None = None, sync: bool = True, **options: Any
    ) -> InformerManager:
        store = CacheStore(cache or tmp_path / "cache.db")
        manager = InformerManager(
            clients=[KubeClient(kubeconfig, c) for c in contexts],
            store=store,
            options=InformerOptions(**options),
            reconcile_interval=0.5,
        )
        manager.start()
        started.append((manager, store))
        if sync:
            assert manager.wait_synced(60), [
                (s.context, s.resource, s.state, s.last_error) for s in manager.statuses()
            ]
        return manager

    yield run
    for manager, store in started:
        manager.stop()
        store.close()


def stop(manager: InformerManager) -> None:
    manager.stop()
    manager.store.close()


def _pod(name: str, image: str = "nginx:1.27") -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": image}]}}


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "app:1"}]},
            },
        },
    }


def test_crud_in_two_contexts_is_reflected(
    planes: ControlPlanes, run_informers: Runner, tmp_path: Path
) -> None:
    manager = run_informers(planes.kubeconfig, ["dev", "prod"])
    cache = manager.store.path
    for ctx, server in planes.servers.items():
        admin = server.admin()
        ns = namespace(admin, unique("crud"))
        base = f"/api/v1/namespaces/{ns}"
        for i in range(3):
            configmap(admin, ns, f"cm{i}", k=str(i))
            admin.create(f"{base}/pods", _pod(f"pod{i}"))
            admin.create(f"{base}/secrets", {"metadata": {"name": f"s{i}"}, "stringData": {"k": "v"}})
        admin.create(f"/apis/apps/v1/namespaces/{ns}/deployments", _deployment("web", 2))
        admin.create(f"{base}/services", {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}})
        # updates
        admin.patch(f"{base}/configmaps/cm0", {"data": {"k": "changed"}})
        admin.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/web", {"spec": {"replicas": 5}})
        admin.patch(f"{base}/pods/pod1", {"metadata": {"labels": {"tier": "db"}}})
        # deletes
        admin.delete(f"{base}/configmaps/cm2")
        admin.delete(f"{base}/pods/pod2")
        admin.delete(f"{base}/secrets/s1")
        admin.delete(f"{base}/services/web")
        for desc in (PODS, CMS, DEPLOYS, SVCS, SECRETS, NSS):
            eventually(lambda d=desc, c=ctx, a=admin: cache_matches(cache, c, a, d), what=f"{ctx} {desc.key}")
    statuses = manager.statuses()
    assert {s.context for s in statuses} == {"dev", "prod"}
    assert all(s.state == "watching" for s in statuses)
    assert sum(s.events for s in statuses) >= 2 * 20


def test_watch_cuts_do_not_relist(
    planes: ControlPlanes, run_informers: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = planes.servers["dev"].proxy
    assert proxy is not None
    admin = planes.servers["dev"].admin()
    manager = run_informers(planes.kubeconfig, ["dev"])
    ns = namespace(admin, unique("cuts"))
    stop_writing = threading.Event()
    written: list[str] = []

    def writer() -> None:
        i = 0
        while not stop_writing.is_set():
            configmap(admin, ns, f"cm{i}", n=str(i))
            if i % 3 == 2:
                admin.delete(f"/api/v1/namespaces/{ns}/configmaps/cm{i - 1}")
            written.append(f"cm{i}")
            i += 1
            time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # Twenty cuts of a live connection: a round that finds the daemon still
        # reconnecting (a loaded machine) cuts nothing and does not count.
        cuts, deadline = 0, time.monotonic() + 90
        while cuts < 20 and time.monotonic() < deadline:
            time.sleep(0.4)
            cuts += proxy.cut_all() > 0
    finally:
        stop_writing.set()
        thread.join()
    assert cuts == 20, f"the proxy cut a live watch {cuts} times in 90 s"
    for desc in (CMS, NSS, PODS, SECRETS):
        eventually(lambda d=desc: cache_matches(manager.store.path, "dev", admin, d), what=desc.key)
    statuses = {s.resource: s for s in manager.statuses()}
    assert len(written) > 50
    # One streaming list + one re-watch per cut, each from the RV it had reached. But
    # a request the API server itself failed (a 500 under load: "etcd event received
    # with PrevKv=nil") backs the informer off for about a second, and the one or two
    # cuts in that second find no configmaps watch to cut: each such failure may hide
    # two re-watches (and adds its own).
    server_errors = sum("dev/configmaps: HTTP 5" in r.getMessage() for r in caplog.records)
    eventually(
        lambda: statuses["configmaps"].watches >= 21 - server_errors,
        what=f"a re-watch after every cut ({server_errors} server errors)",
    )
    assert sum(s.relists for s in statuses.values()) == 0
    assert all(s.lists == 1 for s in statuses.values()), {k: s.lists for k, s in statuses.items()}


def test_compaction_gives_410_and_relist_removes_deleted(
    planes: ControlPlanes, run_informers: Runner
) -> None:
    server = planes.servers["dev"]
    proxy, admin = server.proxy, server.admin()
    assert proxy is not None and planes.etcd is not None
    ns = namespace(admin, unique("gone"))
    doomed = [configmap(admin, ns, f"doomed{i}")["metadata"]["name"] for i in range(5)]
    manager = run_informers(planes.kubeconfig, ["dev"])
    cms = next(i for c in manager.contexts for k, i in c.informers.items() if k == "configmaps")
    eventually(lambda: cache_matches(manager.store.path, "dev", admin, CMS))
    proxy.pause()  # the network goes away
    try:
        for name in doomed:
            admin.delete(f"/api/v1/namespaces/{ns}/configmaps/{name}")
        created = [configmap(admin, ns, f"new{i}")["metadata"]["uid"] for i in range(5)]
        planes.etcd.compact()  # the informer's RV is now older than anything etcd keeps
    finally:
        proxy.resume()
    eventually(lambda: cms.status.relists >= 1, what="a relist after 410")
    eventually(lambda: cache_matches(manager.store.path, "dev", admin, CMS), what="cache == truth")
    live = cached(manager.store.path, "dev", CMS)
    assert set(created) <= live.keys()
    assert cms.status.relists == 1


def test_restart_resumes_from_stored_rv_without_list(
    planes: ControlPlanes, run_informers: Runner, tmp_path: Path
) -> None:
    server = planes.servers["prod"]
    admin = server.admin()
    cache = tmp_path / "resume.db"
    first = run_informers(planes.kubeconfig, ["prod"], cache=cache)
    ns = namespace(admin, unique("resume"))
    configmap(admin, ns, "before")
    eventually(lambda: cache_matches(cache, "prod", admin, CMS))
    stop(first)
    # Changes while the process is down arrive through the resumed watch.
    configmap(admin, ns, "while-down")
    admin.delete(f"/api/v1/namespaces/{ns}/configmaps/before")
    restart_time = time.time()
    second = run_informers(planes.kubeconfig, ["prod"], cache=cache)
    for desc in (CMS, NSS, PODS, SECRETS):
        eventually(lambda d=desc: cache_matches(cache, "prod", admin, d), what=desc.key)
    assert all(s.lists == 0 for s in second.statuses()), [(s.resource, s.lists) for s in second.statuses()]
    # The API server's audit log agrees: k8s-watcher issued no LIST, nor any streaming
    # list (a watch with sendInitialEvents), after the restart.
    time.sleep(0.5)
    since = [
        e
        for e in server.audit_events()
        if e.get("userAgent", "").startswith("k8s-watcher/")
        and _event_time(e) >= restart_time
        and e.get("objectRef", {}).get("resource") in {d.plural for d in RESOURCES}
    ]
    lists = [
        e["requestURI"] for e in since if e["verb"] == "list" or "sendInitialEvents=true" in e["requestURI"]
    ]
    watches = [e for e in since if e["verb"] == "watch"]
    assert watches, "the restarted informers issued no watch at all"
    assert lists == []


def _event_time(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def test_forbidden_resource_and_unreachable_context(
    planes: ControlPlanes, run_informers: Runner, tmp_path: Path
) -> None:
    kubeconfig = kubeconfig_with(
        planes, tmp_path / "kubeconfig", {"dead": (unreachable_cluster(), {"token": "x"})}
    )
    manager = run_informers(kubeconfig, ["prod-viewer", "dead"], sync=False)

    def by(ctx: str) -> dict[str, Any]:
        return {s.resource: s for s in manager.statuses() if s.context == ctx}

    eventually(lambda: by("prod-viewer")["secrets"].state == "forbidden", what="secrets forbidden")
    eventually(
        lambda: all(s.state == "watching" for k, s in by("prod-viewer").items() if k != "secrets"),
        what="the viewer's other informers watching",
    )
    eventually(
        lambda: all(s.state == "backoff" for s in by("dead").values()), what="dead context backing off"
    )
    # The healthy context keeps syncing while the dead one backs off.
    admin = planes.servers["prod"].admin()
    namespace(admin, unique("alive"))
    eventually(lambda: cache_matches(manager.store.path, "prod-viewer", admin, NSS))
    assert "403" in (by("prod-viewer")["secrets"].last_error or "")
    assert all(s.errors >= 1 for s in by("dead").values())


def test_crd_created_and_deleted_at_run_time(planes: ControlPlanes, run_informers: Runner) -> None:
    admin = planes.servers["dev"].admin()
    plural = unique("widgets").replace("-", "")
    group = "testbed.k8s-watcher.io"
    manager = run_informers(planes.kubeconfig, ["dev"])
    crd = crd_manifest(group, plural)
    admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    ns = namespace(admin, unique("crs"))
    path = f"/apis/{group}/v1/namespaces/{ns}/{plural}"

    def create_instance(name: str) -> bool:
        try:
            admin.create(
                path,
                {
                    "apiVersion": f"{group}/v1",
                    "kind": plural.capitalize(),
                    "metadata": {"name": name},
                    "spec": {"size": 3},
                },
            )
            return True
        except RuntimeError:
            return False  # the CRD is not established yet

    eventually(lambda: create_instance("w0"), what="CRD established")
    create_instance("w1")
    key = f"{plural}.{group}"
    ctx = manager.contexts[0]
    eventually(
        lambda: key in ctx.informers and ctx.informers[key].status.state == "watching", what="CR informer"
    )
    desc = ctx.informers[key].descriptor
    assert desc.table == CUSTOM_OBJECTS_TABLE
    eventually(lambda: len(cached(manager.store.path, "dev", desc)) == 2, what="2 CR instances cached")
    assert cache_matches(manager.store.path, "dev", admin, desc)

    admin.delete(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{group}")
    eventually(lambda: key not in ctx.informers, what="CR informer stopped")
    eventually(lambda: cached(manager.store.path, "dev", desc) == {}, what="CR instances tombstoned")


def test_secret_canary_never_reaches_the_cache(
    planes: ControlPlanes, run_informers: Runner, tmp_path: Path
) -> None:
    admin = planes.servers["prod"].admin()
    canary = "CANARY-" + unique("secret")
    ns = namespace(admin, unique("sec"))
    applied = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "app"},
        "stringData": {"password": canary},
    }
    admin.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "metadata": {
                "name": "app",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": str(applied),
                    "owner": "team-a",
                },
            },
            "stringData": {"password": canary},
            "data": {"token": __import__("base64").b64encode(canary.encode()).decode()},
        },
    )
    manager = run_informers(planes.kubeconfig, ["prod"], cache=tmp_path / "secret.db")
    eventually(lambda: cache_matches(manager.store.path, "prod", admin, SECRETS))
    admin.patch(f"/api/v1/namespaces/{ns}/secrets/app", {"stringData": {"password": canary + "-2"}})
    eventually(lambda: cache_matches(manager.store.path, "prod", admin, SECRETS))
    blobs = cache_bytes(manager.store.path)  # the log before the history is derived from it...
    manager.store.flush()
    blobs += cache_bytes(manager.store.path)  # ...and the change rows after
    assert b"owner" in blobs and b"team-a" in blobs  # metadata is cached...
    assert canary.encode() not in blobs  # ...the secret's value is not, in any form
    assert __import__("base64").b64encode(canary.encode()) not in blobs
    assert oct(manager.store.path.stat().st_mode & 0o777) == "0o600"
