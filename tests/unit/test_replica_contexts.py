"""What a replica does when a Lease comes or goes (watcher.replicas.ReplicaContexts):
claim before watching, stop and commit before giving up, tombstone what left the
kubeconfig, and never leave informers running for a context it let go."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from watcher.reload import ContextChanges
from watcher.replicas import ReplicaContexts


@dataclass
class _Client:
    context: str


@dataclass
class _Recorder:
    """The manager and the store, recording calls in one list (their order is the point)."""

    calls: list[str] = field(default_factory=list)
    watched: set[str] = field(default_factory=set)
    start_delay: float = 0.0

    # InformerManager
    def add(self, client: _Client) -> None:
        time.sleep(self.start_delay)  # an API server answering slowly
        self.watched.add(client.context)
        self.calls.append(f"add {client.context}")

    def remove(self, ctx: str) -> bool:
        self.calls.append(f"remove {ctx}")
        found = ctx in self.watched
        self.watched.discard(ctx)
        return found

    # CacheStore
    def claim_context(self, ctx: str) -> None:
        self.calls.append(f"claim {ctx}")

    def unretire_context(self, ctx: str) -> None:
        self.calls.append(f"unretire {ctx}")

    def flush(self, *, history: bool = True) -> None:
        self.calls.append("flush")

    def drop_context(self, ctx: str) -> None:
        self.calls.append(f"drop {ctx}")

    def release_context(self, ctx: str) -> None:
        self.calls.append(f"release {ctx}")

    def write_cluster(self, ctx: str, **values: str) -> None:
        self.calls.append(f"cluster {ctx}")


def _replica(rec: _Recorder, contexts: list[str]) -> ReplicaContexts:
    return ReplicaContexts(manager=rec, store=rec, make_client=_Client, contexts=contexts)  # type: ignore[arg-type]


def _wait(predicate: object, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():  # type: ignore[operator]
        time.sleep(0.01)


def test_an_acquired_context_is_claimed_in_the_cache_before_its_informers_start() -> None:
    rec = _Recorder()
    replica = _replica(rec, ["a"])
    replica.acquired("a")
    _wait(lambda: "add a" in rec.calls)
    assert rec.calls == ["claim a", "unretire a", "add a"]
    assert replica.held() == ["a"]


def test_a_released_context_stops_and_commits_before_ownership_is_given_up() -> None:
    rec = _Recorder()
    replica = _replica(rec, ["a"])
    replica.acquired("a")
    _wait(lambda: "add a" in rec.calls)
    rec.calls.clear()
    replica.released("a")
    assert rec.calls == ["remove a", "flush", "release a"]
    assert rec.watched == set() and replica.held() == []


def test_a_context_released_while_its_informers_start_is_not_left_running() -> None:
    """The start (on its own thread) is slow; the release waits for it, then stops it."""
    rec = _Recorder(start_delay=0.3)
    replica = _replica(rec, ["a"])
    replica.acquired("a")
    time.sleep(0.05)  # the start is under way
    replica.released("a")
    time.sleep(0.4)
    assert rec.watched == set()
    assert rec.calls.index("add a") < rec.calls.index("remove a") < rec.calls.index("release a")


def test_a_context_released_before_its_start_began_is_never_watched() -> None:
    rec = _Recorder()
    replica = _replica(rec, ["a"])
    lock = replica._lock("a")
    with lock:  # hold the start back until the release is recorded
        replica.acquired("a")
        threading.Thread(target=replica.released, args=("a",)).start()
        time.sleep(0.1)
    _wait(lambda: "release a" in rec.calls)
    time.sleep(0.1)
    assert "add a" not in rec.calls and rec.watched == set()


def test_the_holder_of_a_context_removed_from_the_kubeconfig_tombstones_it_as_it_lets_go() -> None:
    rec = _Recorder()
    replica = _replica(rec, ["a", "b"])
    replica.acquired("a")
    _wait(lambda: "add a" in rec.calls)
    replica.apply(ContextChanges(added=(), removed=("a",), changed=()), ["b"])
    rec.calls.clear()
    replica.released("a")  # the coordinator lets it go: it left the kubeconfig
    assert rec.calls == ["remove a", "flush", "drop a", "release a"]


def test_a_held_context_whose_kubeconfig_entry_changed_is_rebuilt_and_others_are_left_alone() -> None:
    rec = _Recorder()
    replica = _replica(rec, ["a", "b"])
    replica.acquired("a")
    _wait(lambda: "add a" in rec.calls)
    rec.calls.clear()
    replica.apply(ContextChanges(added=(), removed=(), changed=("a", "b")), ["a", "b"])
    assert rec.calls == ["remove a", "add a"]
