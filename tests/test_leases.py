"""Context leases (watcher.leases) on a real API server: Lease objects in a namespace of
the ``prod`` test bed plane, coordinators on threads as in separate replicas."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from testbed.cluster import ControlPlanes, KubeHttp
from tests.conftest import eventually, namespace, unique
from watcher import kube
from watcher.kube import ApiError, KubeClient
from watcher.leases import (
    CONTEXT_ANNOTATION,
    LEASES_PATH,
    KubeLeaseApi,
    LeaseConflict,
    LeaseCoordinator,
    assign,
    context_lease_name,
    member_lease_name,
)

CONTEXTS = ["ci", "dev", "prod", "arn:aws:eks:eu-west-1:123456789012:cluster/Staging"]
DURATION = 3.0
PERIOD = 0.5
MICRO_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


@pytest.fixture
def ns(planes: ControlPlanes) -> str:
    return namespace(planes.servers["prod"].admin(), unique("leases"))


@pytest.fixture
def client(planes: ControlPlanes) -> Iterator[KubeClient]:
    assert planes.kubeconfig is not None
    c = KubeClient(planes.kubeconfig, "prod")
    yield c
    c.close()


class Replica:
    def __init__(self, coordinator: LeaseCoordinator, client: KubeClient) -> None:
        self.coordinator = coordinator
        self.client = client
        self.events: list[tuple[str, str]] = []


@pytest.fixture
def replicas(planes: ControlPlanes, ns: str) -> Iterator[Callable[[str], Replica]]:
    """``make(identity)``: a started coordinator of its own (own KubeClient) on CONTEXTS."""
    made: list[Replica] = []

    def make(identity: str) -> Replica:
        assert planes.kubeconfig is not None
        client = KubeClient(planes.kubeconfig, "prod")
        replica = Replica(None, client)  # type: ignore[arg-type]
        replica.coordinator = LeaseCoordinator(
            KubeLeaseApi(client, ns),
            identity=identity,
            lease_duration=DURATION,
            renew_period=PERIOD,
            on_acquired=lambda ctx: replica.events.append(("acquired", ctx)),
            on_released=lambda ctx: replica.events.append(("released", ctx)),
        )
        replica.coordinator.set_contexts(CONTEXTS)
        made.append(replica)
        return replica

    yield make
    for r in made:
        r.coordinator.stop()
        r.client.close()


def leases_of(admin: KubeHttp, ns: str) -> dict[str, dict[str, Any]]:
    items = admin.list(LEASES_PATH.format(namespace=ns))["items"]
    return {i["metadata"]["name"]: i for i in items}


def holders(admin: KubeHttp, ns: str) -> dict[str, str]:
    """context -> holderIdentity, from the context leases on the server."""
    return {
        lease["metadata"]["annotations"][CONTEXT_ANNOTATION]: lease["spec"].get("holderIdentity") or ""
        for lease in leases_of(admin, ns).values()
        if lease["metadata"]["labels"]["k8s-watcher.io/role"] == "context"
    }


def settled(rs: list[Replica]) -> bool:
    """Every context held where the shared assignment of ``rs`` puts it: contexts handed
    over one at a time pass through spreads of the final shape on their way there."""
    held = [(ctx, r.coordinator.identity) for r in rs for ctx in r.coordinator.held]
    return sorted(held) == sorted(assign([r.coordinator.identity for r in rs], CONTEXTS).items())


def spread(rs: list[Replica], loads: list[int]) -> bool:
    """Every context held by exactly one of ``rs``, with these (sorted) loads."""
    held = Counter(ctx for r in rs for ctx in r.coordinator.held)
    return (
        sorted(held) == sorted(CONTEXTS)
        and set(held.values()) == {1}
        and sorted(len(r.coordinator.held) for r in rs) == loads
    )


def test_the_lease_api_writes_optimistically(client: KubeClient, ns: str) -> None:
    api = KubeLeaseApi(client, ns)
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "probe", "labels": {"app.kubernetes.io/managed-by": "k8s-watcher"}},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 3},
    }
    created = api.create(body)
    assert created["metadata"]["resourceVersion"]
    with pytest.raises(LeaseConflict):
        api.create(body)
    with pytest.raises(ApiError) as raised:  # the raw error says why: the name exists
        client.send("POST", LEASES_PATH.format(namespace=ns), body)
    assert kube.is_conflict(raised.value) and kube.is_already_exists(raised.value)
    stale = {**created, "spec": {**created["spec"], "holderIdentity": "pod-b"}}
    api.replace("probe", stale)
    with pytest.raises(LeaseConflict):  # the same resourceVersion again: stale now
        api.replace("probe", stale)
    with pytest.raises(ApiError) as raised:
        client.send("PUT", f"{LEASES_PATH.format(namespace=ns)}/probe", stale)
    assert kube.is_conflict(raised.value) and not kube.is_already_exists(raised.value)
    assert raised.value.status_reason == "Conflict"
    current = api.get("probe")
    assert current is not None and current["spec"]["holderIdentity"] == "pod-b"
    assert [i["metadata"]["name"] for i in api.list("app.kubernetes.io/managed-by=k8s-watcher")] == ["probe"]
    assert api.list("app.kubernetes.io/managed-by=someone-else") == []
    with pytest.raises(LeaseConflict):
        api.delete("probe", created["metadata"]["resourceVersion"])
    api.delete("probe", current["metadata"]["resourceVersion"])
    api.delete("probe", current["metadata"]["resourceVersion"])  # gone already: fine
    assert api.get("probe") is None


def test_three_replicas_spread_four_contexts_and_take_over_a_dead_ones(
    planes: ControlPlanes, ns: str, replicas: Callable[[str], Replica]
) -> None:
    admin = planes.servers["prod"].admin()
    rs = [replicas(name) for name in ("pod-a", "pod-b", "pod-c")]
    for r in rs:
        r.coordinator.start()
    eventually(lambda: settled(rs), timeout=10, what="the contexts assigned")
    assert spread(rs, [1, 1, 2])
    # The server agrees, and the objects carry what an operator needs to read them.
    assert holders(admin, ns) == {ctx: r.coordinator.identity for r in rs for ctx in r.coordinator.held}
    objects = leases_of(admin, ns)
    for ctx in CONTEXTS:
        lease = objects[context_lease_name("default", ctx)]
        assert lease["metadata"]["labels"] == {
            "app.kubernetes.io/managed-by": "k8s-watcher",
            "k8s-watcher.io/group": "default",
            "k8s-watcher.io/role": "context",
        }
        assert lease["metadata"]["annotations"][CONTEXT_ANNOTATION] == ctx
        assert lease["spec"]["leaseDurationSeconds"] == int(DURATION)
        assert all(re.match(MICRO_TIME, lease["spec"][k]) for k in ("acquireTime", "renewTime"))
    for r in rs:
        member = objects[member_lease_name("default", r.coordinator.identity)]
        assert member["spec"]["holderIdentity"] == r.coordinator.identity
        assert member["metadata"]["labels"]["k8s-watcher.io/role"] == "member"
    transitions = {
        ctx: objects[context_lease_name("default", ctx)]["spec"]["leaseTransitions"] for ctx in CONTEXTS
    }

    # The replica with two contexts dies: no release, its leases are left to expire.
    dead = max(rs, key=lambda r: len(r.coordinator.held))
    orphans = set(dead.coordinator.held)
    live = [r for r in rs if r is not dead]
    dead.coordinator.stop(release=False)
    stopped = time.monotonic()
    eventually(lambda: settled(live), timeout=10, interval=0.05, what="the orphans taken over")
    assert spread(live, [2, 2])
    took = time.monotonic() - stopped
    # Its last renewal was at most one period before the stop; nobody may take its leases
    # sooner than the lease duration after they saw that renewal.
    assert DURATION - PERIOD <= took < DURATION + 4 * PERIOD, took
    after = holders(admin, ns)
    assert {after[ctx] for ctx in orphans} <= {r.coordinator.identity for r in live}
    objects = leases_of(admin, ns)
    for ctx in orphans:
        assert objects[context_lease_name("default", ctx)]["spec"]["leaseTransitions"] == transitions[ctx] + 1

    # A replica stopping cleanly hands over at once, not after the lease duration.
    leaving, last = live
    leaving.coordinator.stop(release=True)
    stopped = time.monotonic()
    eventually(lambda: spread([last], [4]), timeout=10, interval=0.05, what="the handover")
    assert time.monotonic() - stopped < DURATION - PERIOD
    assert ("released", sorted(orphans)[0]) in dead.events
