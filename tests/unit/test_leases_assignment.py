"""The desired assignment of contexts to replicas (watcher.leases.assign): even,
deterministic, and stable when a replica joins or leaves."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from watcher.leases import assign, context_lease_name, member_lease_name

SIZES = [(n, r) for n in range(11) for r in range(1, 6)]


def names(prefix: str, count: int, seed: int) -> list[str]:
    rng = random.Random(f"{prefix}{seed}")
    return [f"{prefix}-{rng.getrandbits(32):08x}" for _ in range(count)]


def moved(before: dict[str, str], after: dict[str, str]) -> int:
    return sum(1 for c in before if before[c] != after.get(c))


@pytest.mark.parametrize(("n", "r"), SIZES, ids=[f"{n}x{r}" for n, r in SIZES])
def test_every_context_has_one_owner_and_loads_differ_by_at_most_one(n: int, r: int) -> None:
    for seed in range(20):
        contexts, members = names("ctx", n, seed), names("pod", r, seed)
        owners = assign(members, contexts)
        assert set(owners) == set(contexts)
        loads = Counter(owners.values())
        assert set(loads) <= set(members)
        assert sorted(loads[m] for m in members) == sorted(n // r + (i < n % r) for i in range(r))


def test_four_contexts_over_three_replicas_are_two_one_one() -> None:
    owners = assign(["pod-a", "pod-b", "pod-c"], ["prod", "staging", "dev", "ci"])
    assert sorted(Counter(owners.values()).values()) == [1, 1, 2]


def test_the_assignment_does_not_depend_on_input_order_or_duplicates() -> None:
    contexts, members = names("ctx", 9, 1), names("pod", 4, 1)
    expected = assign(members, contexts)
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(contexts)
        rng.shuffle(members)
        assert assign(members + members[:1], contexts + contexts[:2]) == expected


def test_the_assignment_is_the_same_in_every_process() -> None:
    # sha256, not Python's per-process salted hash(): fixed answers for fixed names.
    assert assign(["pod-a", "pod-b", "pod-c"], ["ctx-1", "ctx-2", "ctx-3", "ctx-4"]) == {
        "ctx-1": "pod-a",
        "ctx-2": "pod-a",
        "ctx-3": "pod-c",
        "ctx-4": "pod-b",
    }


def test_no_members_means_no_owners() -> None:
    assert assign([], ["ctx-1"]) == {}


def test_a_member_joining_or_leaving_moves_little_more_than_its_own_share() -> None:
    # Over every size, 20 name sets each, and each member in turn: the assignments with
    # and without it (a join one way, a leave the other). What must move is what it
    # owns; rendezvous hashing alone would move exactly that, and even loads cost a few
    # more when a spare capacity changes hands. (A sorted round robin moves most.)
    total = least = worst = 0
    for n, r in SIZES:
        for seed in range(20):
            contexts, members = names("ctx", n, seed), names("pod", r + 1, seed)
            for i, member in enumerate(members):
                with_it = assign(members, contexts)
                without = assign(members[:i] + members[i + 1 :], contexts)
                must = sum(1 for owner in with_it.values() if owner == member)
                total += moved(with_it, without)
                least += must
                worst = max(worst, moved(with_it, without) - must)
    assert least > 0
    assert total <= 1.3 * least  # 1.25 measured
    assert worst <= 3


def test_lease_names_are_dns_labels_whatever_the_context_is_called() -> None:
    for ctx in ["prod", "arn:aws:eks:eu-west-1:123456789012:cluster/Prod_Cluster", "ü" * 300, ""]:
        name = context_lease_name("default", ctx)
        assert len(name) <= 63
        assert name.startswith("k8s-watcher-default-ctx-")
        assert name == name.lower() and all(ch.isalnum() or ch == "-" for ch in name)
    assert context_lease_name("a", "x") != context_lease_name("b", "x")
    assert context_lease_name("a", "x") != context_lease_name("a", "y")
    assert len(member_lease_name("g" * 27, "pod-" + "x" * 200)) == 63
