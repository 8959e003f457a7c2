"""LeaseCoordinator (watcher.leases) on an in-memory lease namespace with the API
server's write rules (a resourceVersion per write, 409 on a stale one or an existing
name) and a fake monotonic clock: who holds which context, and when it changes hands."""

from __future__ import annotations

import copy
import itertools
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.unit.clock import ManualClock
from watcher.kube import ApiError
from watcher.leases import (
    CONTEXT_ANNOTATION,
    LeaseConflict,
    LeaseCoordinator,
    assign,
    context_lease_name,
    member_lease_name,
)

CONTEXTS = ["ci", "dev", "prod", "staging"]
DURATION = 15.0
PERIOD = 5.0
MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class MemoryLeases:
    """One namespace's leases in memory. ``before_write(name)`` runs before each write
    (to make another writer win a race)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self._versions = itertools.count(1)
        self.before_write: Callable[[str], None] | None = None

    def list(self, label_selector: str) -> list[dict[str, Any]]:
        want = dict(term.split("=", 1) for term in label_selector.split(","))
        return [
            copy.deepcopy(o)
            for o in self.objects.values()
            if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())
        ]

    def get(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(name))

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[obj["metadata"]["name"]] = obj
        return copy.deepcopy(obj)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if self.before_write:
            self.before_write(name)
        if name in self.objects:
            raise LeaseConflict(f'leases "{name}" already exists')
        assert "resourceVersion" not in body["metadata"]
        return self._store(body)

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.before_write:
            self.before_write(name)
        current = self.objects.get(name)
        if current is None:
            raise ApiError(404, "Not Found", f'leases "{name}" not found')
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise LeaseConflict(f'Operation cannot be fulfilled on leases "{name}"')
        return self._store(body)

    def delete(self, name: str, resource_version: str) -> None:
        current = self.objects.get(name)
        if current is None:
            return
        if current["metadata"]["resourceVersion"] != resource_version:
            raise LeaseConflict(f'Precondition failed for leases "{name}"')
        del self.objects[name]

    # -- reading for assertions
    def spec(self, name: str) -> dict[str, Any]:
        return self.objects[name]["spec"]

    def context_holder(self, ctx: str, group: str = "default") -> str:
        return self.spec(context_lease_name(group, ctx)).get("holderIdentity") or ""

    def outsider_renews(self, ctx: str, holder: str, group: str = "default") -> None:
        """Another process (not a coordinator here) writes the lease as its holder."""
        name = context_lease_name(group, ctx)
        current = self.objects.get(name)
        body = copy.deepcopy(current) or {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "labels": {
                    "app.kubernetes.io/managed-by": "k8s-watcher",
                    "k8s-watcher.io/group": group,
                    "k8s-watcher.io/role": "context",
                },
                "annotations": {CONTEXT_ANNOTATION: ctx},
            },
            "spec": {"leaseTransitions": 0},
        }
        body["spec"].update(holderIdentity=holder, leaseDurationSeconds=int(DURATION))
        body["spec"]["renewTime"] = f"2026-01-01T00:00:{next(self._versions) % 60:02d}.000000Z"
        self._store(body)


class Unreachable:
    """A replica's view of the API: the shared leases, or connection refused when down."""

    def __init__(self, leases: MemoryLeases) -> None:
        self.leases = leases
        self.down = False
        self.calls = 0

    def __getattr__(self, method: str) -> Any:
        target = getattr(self.leases, method)

        def call(*args: Any) -> Any:
            self.calls += 1
            if self.down:
                raise ApiError(0, "connection error", "connection refused")
            return target(*args)

        return call


@dataclass
class Replica:
    identity: str
    api: Unreachable
    events: list[tuple[str, str]] = field(default_factory=list)
    coordinator: LeaseCoordinator = field(init=False)

    @property
    def held(self) -> frozenset[str]:
        return self.coordinator.held

    def step(self) -> None:
        self.coordinator.step()


@pytest.fixture
def leases() -> MemoryLeases:
    return MemoryLeases()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make(leases: MemoryLeases, clock: ManualClock) -> Callable[..., Replica]:
    def make(identity: str, contexts: list[str] = CONTEXTS, **kw: Any) -> Replica:
        replica = Replica(identity, Unreachable(leases))
        options: dict[str, Any] = {
            "identity": identity,
            "lease_duration": DURATION,
            "on_acquired": lambda ctx: replica.events.append(("acquired", ctx)),
            "on_released": lambda ctx: replica.events.append(("released", ctx)),
            "clock": clock,
        } | kw
        replica.coordinator = LeaseCoordinator(replica.api, **options)
        replica.coordinator.set_contexts(contexts)
        return replica

    return make


def rounds(clock: ManualClock, replicas: list[Replica], count: int, every: float = PERIOD) -> None:
    for _ in range(count):
        for r in replicas:
            r.step()
        clock.advance(every)


def three_settled(make: Callable[..., Replica], clock: ManualClock) -> list[Replica]:
    """Replicas pod-a, pod-b and pod-c after enough rounds to share the contexts."""
    replicas = [make(name) for name in ("pod-a", "pod-b", "pod-c")]
    rounds(clock, replicas, 3)
    return replicas


def assert_each_context_held_once(replicas: list[Replica], leases: MemoryLeases) -> None:
    held = Counter(ctx for r in replicas for ctx in r.held)
    assert sorted(held) == sorted(CONTEXTS) and set(held.values()) == {1}, held
    for r in replicas:
        for ctx in r.held:
            assert leases.context_holder(ctx) == r.identity


# --------------------------------------------------------------------------- spreading


def test_three_replicas_converge_to_two_one_one_over_four_contexts(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    replicas = three_settled(make, clock)
    assert_each_context_held_once(replicas, leases)
    assert sorted(len(r.held) for r in replicas) == [1, 1, 2]
    desired = assign([r.identity for r in replicas], CONTEXTS)
    assert {ctx: r.identity for r in replicas for ctx in r.held} == desired
    # Nothing was started and stopped again on the way: each context acquired once.
    assert all(kind == "acquired" for r in replicas for kind, _ in r.events)
    rounds(clock, replicas, 5)  # and it stays so
    assert {ctx: r.identity for r in replicas for ctx in r.held} == desired
    assert sum(len(r.events) for r in replicas) == len(CONTEXTS)


def test_the_first_round_only_announces_the_replica(
    make: Callable[..., Replica], leases: MemoryLeases
) -> None:
    a = make("pod-a")
    a.step()
    assert a.held == frozenset()
    assert leases.spec(member_lease_name("default", "pod-a"))["holderIdentity"] == "pod-a"
    a.step()
    assert a.held == frozenset(CONTEXTS)


def test_a_newcomer_waits_for_the_holder_to_hand_over_and_never_steals(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a")
    rounds(clock, [a], 2)
    assert a.held == frozenset(CONTEXTS)
    b = make("pod-b")
    mine = {c for c, owner in assign(["pod-a", "pod-b"], CONTEXTS).items() if owner == "pod-b"}
    assert mine
    for _ in range(10):  # a live holder: b's desired contexts stay a's
        b.step()
        clock.advance(1)
    assert b.held == frozenset()
    assert all(leases.context_holder(c) == "pod-a" for c in CONTEXTS)
    a.step()  # a sees b, and hands over b's share
    assert a.held == frozenset(CONTEXTS) - mine
    assert all(leases.context_holder(c) == "" for c in mine)
    b.step()
    assert b.held == mine
    assert_each_context_held_once([a, b], leases)


def test_a_lease_renewed_by_another_holder_is_never_taken(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    leases.outsider_renews("prod", "someone-else")
    a = make("pod-a")
    for _ in range(20):  # 100 s: many lease durations, but the holder keeps renewing
        a.step()
        leases.outsider_renews("prod", "someone-else")
        clock.advance(PERIOD)
    assert a.held == frozenset(CONTEXTS) - {"prod"}
    assert leases.context_holder("prod") == "someone-else"
    # It stops renewing: taken once it has been unchanged for the lease duration.
    before = leases.spec(context_lease_name("default", "prod"))["leaseTransitions"]
    a.step()  # observes the last renewal now
    clock.advance(DURATION - 1)
    a.step()
    assert "prod" not in a.held
    clock.advance(1)
    a.step()
    assert "prod" in a.held
    assert leases.spec(context_lease_name("default", "prod"))["leaseTransitions"] == before + 1


# --------------------------------------------------------------------------- failover


def test_a_silent_replica_loses_its_contexts_after_the_lease_duration_and_not_before(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a, b, c = three_settled(make, clock)
    orphans = set(c.held)
    c.step()  # c's last renewal: c is gone from here on (no stop, no release)
    silent_since = clock.now
    while clock.now < silent_since + DURATION:
        for r in (a, b):
            r.step()
            assert not r.held & orphans, f"taken {clock.now - silent_since:.1f}s after the last renewal"
        clock.advance(1)
    rounds(clock, [a, b], 2, every=1)
    assert_each_context_held_once([a, b], leases)
    assert sorted(len(r.held) for r in (a, b)) == [2, 2]
    for ctx in orphans:
        spec = leases.spec(context_lease_name("default", ctx))
        assert spec["holderIdentity"] in ("pod-a", "pod-b")
        assert spec["leaseTransitions"] == 1


def test_stop_with_release_hands_over_at_once(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a, b, c = three_settled(make, clock)
    orphans = set(c.held)
    c.coordinator.stop(release=True)
    assert c.held == frozenset()
    assert c.events[-len(orphans) :] == [("released", ctx) for ctx in sorted(orphans)]
    assert all(leases.context_holder(ctx) == "" for ctx in orphans)
    assert leases.spec(member_lease_name("default", "pod-c"))["holderIdentity"] == ""
    rounds(clock, [a, b], 2, every=0)  # no time passes: nothing waited out
    assert_each_context_held_once([a, b], leases)
    c.step()  # a stopped coordinator does nothing any more
    assert c.held == frozenset()


def test_stop_without_release_leaves_the_leases_to_expire(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a")
    rounds(clock, [a], 2)
    a.coordinator.stop(release=False)
    assert sorted(a.events) == sorted(
        [("acquired", c) for c in CONTEXTS] + [("released", c) for c in CONTEXTS]
    )
    assert all(leases.context_holder(c) == "pod-a" for c in CONTEXTS)


def test_on_released_runs_while_the_lease_is_still_held(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    holders_seen: list[tuple[str, str]] = []

    def on_released(ctx: str) -> None:
        holders_seen.append((ctx, leases.context_holder(ctx)))

    a = make("pod-a", on_released=on_released)
    rounds(clock, [a], 2)
    b = make("pod-b")
    b.step()
    a.step()  # hands b's share over
    handed, kept = sorted(set(CONTEXTS) - a.held), sorted(a.held)
    assert handed
    assert holders_seen == [(ctx, "pod-a") for ctx in handed]
    assert all(leases.context_holder(ctx) == "" for ctx in handed)  # released after
    a.coordinator.stop()
    assert holders_seen[len(handed) :] == [(ctx, "pod-a") for ctx in kept]
    assert all(leases.context_holder(ctx) == "" for ctx in kept)


def test_an_api_failure_makes_a_holder_give_up_before_the_lease_can_expire(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a")
    rounds(clock, [a], 2)
    last_renewal = clock.now - PERIOD
    a.api.down = True
    with pytest.raises(ApiError):
        a.step()
    assert a.held == frozenset(CONTEXTS)  # 5 s without renewal: still ours
    clock.advance(PERIOD)
    with pytest.raises(ApiError):
        a.step()
    # 10 s = lease duration - renew period: given up now, since the next round would come
    # when another replica may already take the leases (15 s after they last saw them).
    assert a.held == frozenset()
    assert clock.now - last_renewal < DURATION
    assert sorted(a.events[-4:]) == [("released", c) for c in CONTEXTS]
    # Back again: the leases still name this replica, so it takes them again at once.
    a.api.down = False
    a.step()
    assert a.held == frozenset(CONTEXTS)


def test_a_failing_renewal_alone_also_ends_in_giving_up(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a", contexts=["prod"])
    rounds(clock, [a], 2)
    name = context_lease_name("default", "prod")

    def refuse(lease: str) -> None:
        if lease == name:
            raise ApiError(503, "Service Unavailable", "etcd leader changed")

    leases.before_write = refuse  # lists work, writes of this lease fail
    rounds(clock, [a], 2)
    assert a.held == frozenset()
    assert a.events == [("acquired", "prod"), ("released", "prod")]


# --------------------------------------------------------------------------- races


def test_losing_a_race_for_a_lease_is_not_an_error(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    a = make("pod-a", contexts=["prod"])
    a.step()

    def other_first(name: str) -> None:  # another writer commits between a's read and write
        if name == context_lease_name("default", "prod"):
            leases.before_write = None
            leases.outsider_renews("prod", "pod-z")

    leases.before_write = other_first
    with caplog.at_level(logging.WARNING):
        a.step()  # create: AlreadyExists
    assert a.held == frozenset() and a.events == []
    assert leases.context_holder("prod") == "pod-z"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    clock.advance(DURATION)
    a.step()  # observes pod-z's record...
    clock.advance(DURATION)
    leases.before_write = other_first
    a.step()  # ...expired, but pod-z renews first: the PUT is a conflict
    assert a.held == frozenset() and a.events == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_conflict_on_renewal_keeps_the_lease(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a", contexts=["prod"])
    rounds(clock, [a], 2)
    name = context_lease_name("default", "prod")

    def annotate(lease: str) -> None:  # someone edits the object meanwhile (kubectl annotate)
        if lease == name:
            leases.before_write = None
            obj = copy.deepcopy(leases.objects[name])
            obj["metadata"].setdefault("annotations", {})["note"] = "x"
            leases._store(obj)

    leases.before_write = annotate
    a.step()
    assert a.held == {"prod"} and a.events == [("acquired", "prod")]
    clock.advance(PERIOD)
    a.step()  # renewed from the fresh read, the edit kept
    assert leases.objects[name]["metadata"]["annotations"] == {CONTEXT_ANNOTATION: "prod", "note": "x"}
    assert leases.spec(name)["holderIdentity"] == "pod-a"


def test_a_lease_taken_over_by_another_replica_is_given_up(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a", contexts=["prod"])
    rounds(clock, [a], 2)
    leases.outsider_renews("prod", "pod-z")  # e.g. it thought a was gone
    a.step()
    assert a.held == frozenset()
    assert a.events == [("acquired", "prod"), ("released", "prod")]
    assert leases.context_holder("prod") == "pod-z"


# --------------------------------------------------------------------------- contexts and callbacks


def test_set_contexts_adds_and_removes(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a", contexts=["dev", "prod"])
    rounds(clock, [a], 2)
    a.coordinator.set_contexts(["prod", "staging"])
    a.step()
    assert a.held == {"prod", "staging"}
    assert a.events[2:] == [("released", "dev"), ("acquired", "staging")]
    assert leases.context_holder("dev") == ""


def test_a_failing_on_acquired_gives_the_lease_back_and_is_retried(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    failures = [RuntimeError("kubeconfig unreadable")]

    def on_acquired(ctx: str) -> None:
        if failures:
            raise failures.pop()

    a = make("pod-a", contexts=["prod"], on_acquired=on_acquired)
    rounds(clock, [a], 2)
    assert a.held == frozenset()
    assert leases.context_holder("prod") == ""
    a.step()
    assert a.held == {"prod"}


def test_a_failing_on_released_still_releases(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    def on_released(ctx: str) -> None:
        raise RuntimeError("flush failed")

    a = make("pod-a", contexts=["prod"], on_released=on_released)
    rounds(clock, [a], 2)
    a.coordinator.set_contexts([])
    a.step()
    assert a.held == frozenset()
    assert leases.context_holder("prod") == ""


# --------------------------------------------------------------------------- the objects


def test_the_lease_objects_follow_client_go(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a = make("pod-a", contexts=["arn:aws:eks:eu-west-1:1:cluster/Prod"], group="team-1")
    rounds(clock, [a], 2)
    name = context_lease_name("team-1", "arn:aws:eks:eu-west-1:1:cluster/Prod")
    lease = leases.objects[name]
    assert lease["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "k8s-watcher",
        "k8s-watcher.io/group": "team-1",
        "k8s-watcher.io/role": "context",
    }
    assert lease["metadata"]["annotations"] == {CONTEXT_ANNOTATION: "arn:aws:eks:eu-west-1:1:cluster/Prod"}
    spec = dict(lease["spec"])
    assert spec["holderIdentity"] == "pod-a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert MICRO_TIME.match(spec["acquireTime"]) and MICRO_TIME.match(spec["renewTime"])
    time.sleep(0.001)
    a.step()
    renewed = leases.spec(name)
    assert renewed["acquireTime"] == spec["acquireTime"] and renewed["renewTime"] > spec["renewTime"]
    member = leases.objects[member_lease_name("team-1", "pod-a")]
    assert member["metadata"]["labels"]["k8s-watcher.io/role"] == "member"
    a.coordinator.stop()
    released = leases.spec(name)
    assert released["holderIdentity"] == "" and released["leaseDurationSeconds"] == 1
    assert released["leaseTransitions"] == 0


def test_groups_in_one_namespace_are_independent(make: Callable[..., Replica], clock: ManualClock) -> None:
    a, b = make("pod-a", group="blue"), make("pod-b", group="green")
    rounds(clock, [a, b], 2)
    assert a.held == b.held == frozenset(CONTEXTS)


def test_member_leases_of_replicas_gone_are_deleted(
    make: Callable[..., Replica], leases: MemoryLeases, clock: ManualClock
) -> None:
    a, b, c = make("pod-a"), make("pod-b"), make("pod-c")
    rounds(clock, [a, b, c], 2)
    b.coordinator.stop(release=True)  # gone cleanly
    rounds(clock, [a, c], 1)  # c gone silently from here
    rounds(clock, [a], int(4 * DURATION / PERIOD) - 1)
    assert member_lease_name("default", "pod-b") in leases.objects
    rounds(clock, [a], 2)
    assert {n for n in leases.objects if "-member-" in n} == {member_lease_name("default", "pod-a")}


def test_bad_settings_are_refused(leases: MemoryLeases) -> None:
    def noop(ctx: str) -> None:
        pass

    for kw in (
        {"group": "Team_1"},
        {"group": "g" * 28},
        {"renew_period": 15.0},
        {"renew_deadline": 15.0},
        {"identity": ""},
    ):
        options: dict[str, Any] = {"identity": "pod-a", "on_acquired": noop, "on_released": noop} | kw
        with pytest.raises(ValueError):
            LeaseCoordinator(leases, **options)


# --------------------------------------------------------------------------- the thread


def test_start_steps_in_a_thread_and_survives_failing_rounds(leases: MemoryLeases) -> None:
    api = Unreachable(leases)
    api.down = True
    acquired = threading.Event()
    coordinator = LeaseCoordinator(
        api,
        identity="pod-a",
        lease_duration=3.0,
        renew_period=0.02,
        on_acquired=lambda ctx: acquired.set(),
        on_released=lambda ctx: None,
    )
    coordinator.set_contexts(["prod"])
    coordinator.start()
    try:
        deadline = time.monotonic() + 5
        while api.calls < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert api.calls >= 3 and not acquired.is_set()  # failing rounds, retried
        api.down = False
        assert acquired.wait(5)
        assert coordinator.held == {"prod"}
    finally:
        coordinator.stop()
    assert coordinator.held == frozenset()
    assert leases.context_holder("prod") == ""
