"""On the live test bed (testbed/live.py: kube-controller-manager, kube-scheduler and kwok
nodes beside a real API server), through the real CLI and PostgreSQL destination: a
rollout, a namespace cascade, a node removed, and the seed's queries on real values.

The daemon is used only through its public interfaces (DaemonProcess, ``cloudquery sync``
through registry: grpc, ``k8s-watcher status``). PostgreSQL is compared with the API
server object by object (uid -> resourceVersion), after the cluster settled and the cache
caught up with it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import KUBE_VERSION
from testbed.daemon import DaemonProcess
from testbed.live import LiveCluster, deployment_manifest, live_cluster, service_manifest
from tests.conftest import eventually, namespace, sync, unique
from watcher.resources import BY_KEY, ResourceDescriptor

CTX = "live"
NODES = 4
PODS, RSS, DEPLOYS, SLICES, NSS, NODE = (
    BY_KEY[k]
    for k in (
        "pods",
        "replicasets.apps",
        "deployments.apps",
        "endpointslices.discovery.k8s.io",
        "namespaces",
        "nodes",
    )
)
CMS, SECRETS, SERVICES, SAS, EVENTS, ENDPOINTS = (
    BY_KEY[k]
    for k in ("configmaps", "secrets", "services", "serviceaccounts", "events.events.k8s.io", "endpoints")
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    with live_cluster(NODES, context=CTX, workdir=tmp_path_factory.mktemp("live")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def daemon(live: LiveCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    work = tmp_path_factory.mktemp("live-daemon")
    process = DaemonProcess(live.planes.kubeconfig, work / "cache.db", work / "daemon.log", CTX)
    process.start(timeout=120)
    yield process
    process.stop()


def truth(live: LiveCluster, desc: ResourceDescriptor, namespace: str | None = None) -> dict[str, str]:
    """uid -> resourceVersion from a consistent LIST (one namespace or all)."""
    path = desc.collection_path()
    if namespace:
        prefix, _, plural = path.rpartition("/")
        path = f"{prefix}/namespaces/{namespace}/{plural}"
    items = live.admin().list(path)["items"]
    return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}


def in_pg(dsn: str, desc: ResourceDescriptor, namespace: str | None = None) -> dict[str, str]:
    where = " AND namespace = %s" if namespace else ""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT uid::text, resource_version FROM {desc.table} WHERE context_name = %s{where}",
            (CTX, namespace) if namespace else (CTX,),
        ).fetchall()
    return dict(rows)


def caught_up(daemon: DaemonProcess, live: LiveCluster, descs: list[ResourceDescriptor]) -> bool:
    """The cache holds as many live objects as the API server and each informer's
    checkpoint is past the newest object's resourceVersion (``k8s-watcher status``)."""
    status = daemon.status()
    watched = {d.key for d in descs}
    rvs = {
        r["resource"]: int(r["resource_version"] or 0)
        for r in status["informers"]
        if r["context"] == CTX and r["resource"] in watched  # (a polled one's RV is a digest)
    }
    for desc in descs:
        now = truth(live, desc)
        if status["rows"].get(desc.table, 0) != len(now):
            return False
        if now and rvs.get(desc.key, 0) < max(int(v) for v in now.values()):
            return False
    return True


def wait_caught_up(daemon: DaemonProcess, live: LiveCluster, descs: list[ResourceDescriptor]) -> None:
    eventually(lambda: caught_up(daemon, live, descs), timeout=60, interval=0.5, what="cache caught up")


def grpc(daemon: DaemonProcess, **extra: Any) -> dict[str, Any]:
    return {"registry": "grpc", "path": daemon.grpc_address, **extra}


def assert_exact(dsn: str, live: LiveCluster, descs: list[ResourceDescriptor]) -> None:
    for desc in descs:
        assert in_pg(dsn, desc) == truth(live, desc), desc.table


def tables(*descs: ResourceDescriptor) -> list[str]:
    return ["k8s_clusters", *(d.table for d in descs)]


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_rollout_of_20_replicas_lands_exactly_and_joins_to_the_new_image(
    live: LiveCluster, daemon: DaemonProcess, dsn: str, tmp_path: Path
) -> None:
    admin = live.admin()
    ns = namespace(admin, unique("rollout"))
    admin.create(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        deployment_manifest("web", 20, "registry.example/web:v1"),
    )
    admin.create(f"/api/v1/namespaces/{ns}/services", service_manifest("web", {"app": "web"}))
    live.wait_settled(ns, "web")
    first_rs = set(truth(live, RSS, ns))

    container = deployment_manifest("web", 20, "registry.example/web:v2")["spec"]["template"]["spec"][
        "containers"
    ]
    admin.patch(
        f"/apis/apps/v1/namespaces/{ns}/deployments/web",
        {"spec": {"template": {"spec": {"containers": container}}}},
    )
    eventually(lambda: len(truth(live, RSS, ns)) == 2, what="a second ReplicaSet")
    live.wait_settled(ns, "web")

    descs = [PODS, RSS, DEPLOYS, SLICES]
    wait_caught_up(daemon, live, descs)
    result = sync(tmp_path, dsn, {"tables": tables(*descs)}, **grpc(daemon))
    assert result.returncode == 0, result.output[-3000:]
    assert_exact(dsn, live, descs)

    with psycopg.connect(dsn) as conn:
        joined = conn.execute(
            "SELECT p.name, p.images, p.phase, p.node_name, r.uid::text, d.name FROM k8s_pods p "
            "JOIN k8s_replicasets r ON r.context_name = p.context_name "
            "  AND r.uid::text = p.owner_references->0->>'uid' "
            "JOIN k8s_deployments d ON d.context_name = r.context_name "
            "  AND d.uid::text = r.owner_references->0->>'uid' "
            "WHERE p.context_name = %s AND p.namespace = %s",
            (CTX, ns),
        ).fetchall()
        pod_ips = {r[0] for r in conn.execute("SELECT pod_ip FROM k8s_pods WHERE namespace = %s", (ns,))}
        sliced = {
            r[0]
            for r in conn.execute(
                "SELECT a FROM k8s_endpointslices s, jsonb_array_elements(s.endpoints) e, "
                "jsonb_array_elements_text(e->'addresses') a "
                "WHERE s.namespace = %s AND s.labels->>'kubernetes.io/service-name' = 'web'",
                (ns,),
            )
        }
    assert len(joined) == 20
    assert {tuple(images) for _, images, *_ in joined} == {("registry.example/web:v2",)}
    assert {phase for _, _, phase, *_ in joined} == {"Running"}
    assert all(node in live.nodes for *_, node, _, _ in joined)
    new_rs = {rs for *_, rs, _ in joined}
    assert len(new_rs) == 1 and not new_rs & first_rs
    assert {d for *_, d in joined} == {"web"}
    # The EndpointSlices the controller rewrote during the rollout point at the new pods.
    assert sliced == pod_ips and len(pod_ips) == 20 and None not in pod_ips


@pytest.mark.slow
def test_namespace_cascade_of_200_objects_is_deleted_by_an_incremental_sync(
    live: LiveCluster, daemon: DaemonProcess, dsn: str, tmp_path: Path
) -> None:
    admin = live.admin()
    ns = namespace(admin, unique("doomed"))
    for name, replicas in (("api", 30), ("worker", 20)):
        admin.create(
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            deployment_manifest(name, replicas, f"registry.example/{name}:1"),
        )
        admin.create(f"/api/v1/namespaces/{ns}/services", service_manifest(name, {"app": name}))
    for i in range(100):
        admin.create(
            f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}}
        )
    for i in range(40):
        admin.create(
            f"/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": f"s-{i}"}, "stringData": {"k": "v"}}
        )
    live.wait_settled(ns, "api")
    live.wait_settled(ns, "worker")

    descs = [NSS, PODS, RSS, DEPLOYS, SERVICES, SLICES, ENDPOINTS, CMS, SECRETS, SAS, EVENTS]
    spec = {"incremental": True, "tables": tables(*descs)}
    source = grpc(daemon, with_state_backend=True, write_mode="overwrite")
    eventually(
        lambda: sum(len(truth(live, d, ns)) for d in descs[1:]) >= 200, what="200 objects in the namespace"
    )
    wait_caught_up(daemon, live, descs)
    full = sync(tmp_path, dsn, spec, **source)
    assert full.returncode == 0, full.output[-3000:]
    before = {d.table: len(in_pg(dsn, d, ns)) for d in descs[1:]}
    assert sum(before.values()) >= 200, before

    admin.delete(f"/api/v1/namespaces/{ns}")
    eventually(lambda: admin.get(f"/api/v1/namespaces/{ns}") is None, timeout=180, interval=1, what="cascade")
    wait_caught_up(daemon, live, descs)
    delta = sync(tmp_path, dsn, spec, **source)
    assert delta.returncode == 0, delta.output[-3000:]
    assert {d.table: len(in_pg(dsn, d, ns)) for d in descs[1:]} == dict.fromkeys(before, 0)
    assert_exact(dsn, live, descs)


def test_a_removed_node_has_its_pods_recreated_elsewhere_in_the_cache_and_postgresql(
    live: LiveCluster, daemon: DaemonProcess, dsn: str, tmp_path: Path
) -> None:
    admin = live.admin()
    ns = namespace(admin, unique("evict"))
    admin.create(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        deployment_manifest("spread", 12, "registry.example/s:1"),
    )
    live.wait_settled(ns, "spread")
    placed = Counter(p["spec"]["nodeName"] for p in admin.list(f"/api/v1/namespaces/{ns}/pods")["items"])
    node, _ = placed.most_common(1)[0]
    evicted = live.drain_and_remove(node)
    live.wait_settled(ns, "spread")

    descs = [NODE, PODS]
    wait_caught_up(daemon, live, descs)
    assert daemon.status()["rows"]["k8s_nodes"] == NODES - 1
    result = sync(tmp_path, dsn, {"tables": tables(*descs)}, **grpc(daemon))
    assert result.returncode == 0, result.output[-3000:]
    # Nodes heartbeat, so only their set is compared; pods object by object.
    assert set(in_pg(dsn, NODE)) == set(truth(live, NODE))
    assert in_pg(dsn, PODS) == truth(live, PODS)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT name, node_name, phase FROM k8s_pods WHERE namespace = %s AND context_name = %s",
            (ns, CTX),
        ).fetchall()
        node_count = conn.execute(
            "SELECT node_count FROM k8s_clusters WHERE context_name = %s", (CTX,)
        ).fetchone()
    assert len(rows) == 12 and not {name for name, *_ in rows} & set(evicted)
    assert {n for _, n, _ in rows} <= set(live.nodes) and node not in {n for _, n, _ in rows}
    assert {phase for *_, phase in rows} == {"Running"}
    assert node_count == (NODES - 1,)
    live.add_nodes(1)


def test_the_seed_queries_return_real_nodes_and_pod_phases(
    live: LiveCluster, daemon: DaemonProcess, dsn: str, tmp_path: Path
) -> None:
    admin = live.admin()
    ns = namespace(admin, unique("seed"))
    admin.create(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        deployment_manifest("shop", 5, "registry.example/shop:1"),
    )
    live.wait_settled(ns, "shop")
    wait_caught_up(daemon, live, [NODE, PODS, NSS])
    result = sync(tmp_path, dsn, {"tables": tables(NODE, PODS, NSS)}, **grpc(daemon))
    assert result.returncode == 0, result.output[-3000:]

    api_pods = admin.list("/api/v1/pods")["items"]
    with psycopg.connect(dsn) as conn:
        clusters = conn.execute(
            "SELECT context_name, kubernetes_version, node_count FROM k8s_clusters"
        ).fetchall()
        phases = dict(conn.execute("SELECT phase, count(*) FROM k8s_pods GROUP BY phase").fetchall())
        joined = conn.execute(
            "SELECT c.context_name, c.kubernetes_version, n.name, p.name, p.node_name FROM k8s_clusters c "
            "JOIN k8s_namespaces n ON c.context_name = n.context_name "
            "JOIN k8s_pods p ON n.name = p.namespace AND c.context_name = p.context_name WHERE n.name = %s",
            (ns,),
        ).fetchall()
    assert clusters == [(CTX, KUBE_VERSION, len(live.nodes))] and len(live.nodes) == NODES
    assert phases == dict(Counter(p["status"]["phase"] for p in api_pods)) and phases.get("Running", 0) >= 5
    assert len(joined) == 5 and {row[4] for row in joined} <= set(live.nodes)
