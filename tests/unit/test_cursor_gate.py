"""One incremental sync at a time per destination (``watcher.cursor.CursorGate``): two
syncs that read one cursor would write two snapshots into one destination, and the
older one's rows could land after the newer one's deletions. The next sync waits for
the one before it, then for the cursor that one handed to its CLI."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pyarrow as pa
import pytest

from tests.unit.clock import ManualClock
from watcher.cursor import Cursor, CursorGate, SyncConflict, encode_cursor
from watcher.messages import StateBackend, SyncInsert, SyncOptions
from watcher.state import ContextLog

CACHE = "0f8e2d3c4b5a46978877665544332211"
KEY = ("cq_state_k8s", "k8s-watcher|cursor", "lineage-1")


def fake_gate(**kwargs: Any) -> tuple[CursorGate, ManualClock]:
    clock = ManualClock(0.0)
    return CursorGate(clock=clock, sleep=clock.sleep, **kwargs), clock


def test_the_first_sync_of_a_lineage_enters_at_once_with_no_cursor_to_wait_for() -> None:
    gate, _ = fake_gate()
    hold, before = gate.enter(KEY, follow=False, stop=None)
    assert hold.active() and before is None


def test_the_next_sync_learns_the_cursor_the_one_before_handed_to_its_cli() -> None:
    gate, _ = fake_gate()
    first, _ = gate.enter(KEY, follow=False, stop=None)
    first.issued = "c1"
    first.completed = first.released = True
    _, before = gate.enter(KEY, follow=False, stop=None)
    assert before == "c1"


def test_a_sync_after_one_whose_cli_went_away_has_no_cursor_to_wait_for() -> None:
    """A cancelled CLI (SIGTERM, a follow stream stopped) drops what it buffered: the
    last cursor handed to it will never be committed."""
    gate, _ = fake_gate()
    gone = threading.Event()
    first, _ = gate.enter(KEY, follow=True, stop=gone)
    first.issued = "c1"
    gone.set()
    _, before = gate.enter(KEY, follow=True, stop=None)
    assert before is None


def test_a_sync_waits_while_another_holds_its_lineage_and_enters_when_it_ends() -> None:
    gate = CursorGate(poll_seconds=0.01)
    first, _ = gate.enter(KEY, follow=False, stop=None)
    entered: list[str | None] = []
    second = threading.Thread(target=lambda: entered.append(gate.enter(KEY, follow=False, stop=None)[1]))
    second.start()
    second.join(0.2)
    assert second.is_alive() and not entered  # waiting
    first.issued = "c1"
    first.completed = first.released = True
    second.join(5)
    assert entered == ["c1"]


def test_syncs_of_different_lineages_do_not_wait_for_each_other() -> None:
    gate, _ = fake_gate(wait_seconds=0)
    gate.enter(KEY, follow=False, stop=None)
    hold, before = gate.enter((*KEY[:2], "lineage-2"), follow=False, stop=None)
    assert hold.active() and before is None


def test_a_hold_whose_cli_went_away_no_longer_blocks_even_if_never_released() -> None:
    gate, _ = fake_gate(wait_seconds=0)
    gone = threading.Event()
    gate.enter(KEY, follow=False, stop=gone)
    gone.set()  # the RPC ended; its generator was never closed
    hold, _ = gate.enter(KEY, follow=False, stop=None)
    assert hold.active()


def test_a_sync_of_a_lineage_a_follow_stream_holds_fails_at_once() -> None:
    gate, clock = fake_gate()
    gate.enter(KEY, follow=True, stop=threading.Event())
    with pytest.raises(SyncConflict, match="a follow sync is streaming into this destination"):
        gate.enter(KEY, follow=False, stop=None)
    assert clock.now == 0.0


def test_a_sync_that_waited_too_long_fails_with_a_clear_error() -> None:
    gate, clock = fake_gate(wait_seconds=60)
    gate.enter(KEY, follow=False, stop=None)
    with pytest.raises(
        SyncConflict, match="did not end in 60s; run incremental syncs of one destination one at a time"
    ):
        gate.enter(KEY, follow=False, stop=None)
    assert clock.now > 60


def test_a_waiting_sync_whose_own_cli_went_away_stops_waiting() -> None:
    gate, _ = fake_gate()
    gate.enter(KEY, follow=False, stop=None)
    gone = threading.Event()
    gone.set()
    with pytest.raises(SyncConflict, match="the CLI went away"):
        gate.enter(KEY, follow=False, stop=gone)


def test_released_lineages_are_forgotten_oldest_first_past_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CursorGate, "LIMIT", 3)
    gate, _ = fake_gate()
    for i in range(5):
        hold, _ = gate.enter(("t", "k", f"l{i}"), follow=False, stop=None)
        hold.issued = f"c{i}"
        hold.completed = hold.released = True
    assert gate.enter(("t", "k", "l0"), follow=False, stop=None)[1] is None  # forgotten
    assert gate.enter(("t", "k", "l4"), follow=False, stop=None)[1] == "c4"


# -- waiting for the cursor ----------------------------------------------------------


def test_await_cursor_returns_once_the_backend_holds_the_last_holders_cursor() -> None:
    gate, clock = fake_gate(poll_seconds=1)
    reads = iter(["c0", "c0", "c0", "c1"])
    assert gate.await_cursor(lambda: next(reads), "c1", seconds=30) == "c1"
    assert clock.now == 3


def test_await_cursor_gives_up_after_its_time_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    gate, clock = fake_gate(poll_seconds=1)
    assert gate.await_cursor(lambda: "c0", "c1", seconds=30) == "c0"
    assert 30 <= clock.now <= 31
    assert "has not reached the destination" in caplog.text


def test_await_cursor_stops_when_the_backend_moved_to_another_cursor() -> None:
    """Someone else wrote it (another daemon): waiting longer would not bring ``before``."""
    gate, clock = fake_gate(poll_seconds=1)
    reads = iter(["c0", "c0", "cx"])
    assert gate.await_cursor(lambda: next(reads), "c1", seconds=30) == "cx"
    assert clock.now == 2


# -- the cursor of a sync, on a fake state backend -----------------------------------


class FakeStateClient:
    """The state backend as the destination shows it: a key's value changes when the
    destination commits the cursor row, not when the plugin hands it over."""

    def __init__(self) -> None:
        self.stored: dict[str, str] = {}  # what the destination committed
        self.seen: dict[str, str] = {}  # what the client read last (it answers from memory)
        self.table = self

    def get_key(self, key: str) -> str | None:
        return self.seen.get(key)

    def read_all_state(self) -> None:
        self.seen = dict(self.stored)

    def record(self, rows: list[tuple[str, str]]) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist([{"key": k, "value": v} for k, v in rows])


def _cursor(backend: FakeStateClient) -> Cursor:
    return Cursor(SyncOptions(backend=StateBackend("127.0.0.1:1", "cq_state_k8s")), client=backend)


def test_an_overlapping_sync_resumes_from_the_cursor_of_the_sync_before_it_once_committed() -> None:
    """The race the gate closes: sync B starts while A runs, reads the same cursor c0,
    and would send changes since c0 from a newer snapshot while A's older rows are still
    being written. Instead B waits for A, then for A's cursor, and resumes from it."""
    backend = FakeStateClient()
    backend.stored["k8s-watcher|cursor"] = c0 = encode_cursor(CACHE, "line", {"ctx": 10})
    backend.read_all_state()  # as the SDK's client does when it is built
    gate = CursorGate(poll_seconds=0.01)
    a, b = _cursor(backend), _cursor(backend)
    resumed: list[dict[str, int | None] | None] = []

    def second() -> None:
        with b.held(gate, follow=False):
            resumed.append(b.since(CACHE, {"ctx": ContextLog(seq=30, purged_seq=0, owner="")}, ["ctx"]))

    with a.held(gate, follow=False):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.2)
        assert thread.is_alive()  # B waits for A
        handed = a.commit(CACHE, {"ctx": 20})
        assert isinstance(handed, SyncInsert)
    thread.join(0.2)
    assert thread.is_alive() and not resumed  # A ended; its cursor is not committed yet
    assert backend.stored["k8s-watcher|cursor"] == c0
    backend.stored["k8s-watcher|cursor"] = encode_cursor(
        CACHE, "line", {"ctx": 20}
    )  # the destination commits it
    thread.join(5)
    assert resumed == [{"ctx": 20}]


def test_a_sync_without_a_state_backend_holds_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    gate, _ = fake_gate(wait_seconds=0)
    cursor = Cursor(SyncOptions())
    with cursor.held(gate, follow=False), cursor.held(gate, follow=False):
        pass
    assert "every sync is a full snapshot" in caplog.text
