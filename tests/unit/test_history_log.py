"""The history's log: versions logged with the objects in the writer's transaction, and
derived into change and lifetime rows later, in order, exactly once
(watcher.cache.history, the writer's scheduling in watcher.cache.writer/writeloop)."""

from __future__ import annotations

import argparse
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.builders import CMS, SECRETS, configmap, informer_status, secret
from tests.unit.test_history import rows
from watcher.cache import writeloop, writer
from watcher.cache.history import segment_ops
from watcher.cache.writeloop import BusyShare, WriteLoop
from watcher.cache.writer import BOUND_STEP, CATCH_UP_STEP, HISTORY_LAG, IDLE_STEP
from watcher.history import CHANGES_TABLE, LIFETIMES_TABLE, HistoryPolicy
from watcher.state import CacheStore


def logged(path: Path) -> tuple[int, int]:
    """(segments, versions) in the log of a cache file."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        n, v = con.execute("SELECT count(*), coalesce(sum(versions), 0) FROM history_log").fetchone()
    finally:
        con.close()
    return int(n), int(v)


def history_rows(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(con.execute("SELECT count(*) FROM objects WHERE resource LIKE '~history/%'").fetchone()[0])
    finally:
        con.close()


@pytest.fixture
def no_idle_derivation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer never finds itself idle long enough to derive on its own."""
    monkeypatch.setattr(writeloop, "IDLE_AFTER", 3600.0)


@pytest.fixture
def store(tmp_path: Path, no_idle_derivation: None) -> Iterator[CacheStore]:
    """A writer that derives only when flushed."""
    s = CacheStore(tmp_path / "c.db", batch_wait=0.0)
    yield s
    s.close()


def test_a_log_left_by_a_writer_that_stopped_is_derived_by_the_next_exactly_once(
    tmp_path: Path, no_idle_derivation: None
) -> None:
    path = tmp_path / "c.db"
    uid = str(uuid.uuid4())
    first = CacheStore(path, batch_wait=0.0)
    first.apply_events(
        "ctx",
        CMS,
        [("ADDED", configmap("a", uid, "1")), ("MODIFIED", configmap("a", uid, "2", k="v"))],
        informer_status(rv="2"),
    )
    first.apply_events("ctx", CMS, [("DELETED", configmap("a", uid, "3", k="v"))], informer_status(rv="3"))
    first.flush(history=False)
    first.close()
    # Committed with the objects, not derived yet: as a kill -9 would leave it.
    assert logged(path) == (2, 3)
    assert history_rows(path) == 0

    second = CacheStore(path, batch_wait=0.0)
    try:
        assert second.history_backlog == 3
        changes = rows(second, CHANGES_TABLE)  # (flushes: derives the log)
        assert [(c["change_type"], c["resource_version"]) for c in changes] == [
            ("added", "1"),
            ("modified", "2"),
            ("deleted", "3"),
        ]
        assert changes[1]["patch"] == [{"op": "add", "path": "/data/k", "value": "v"}]
        (life,) = rows(second, LIFETIMES_TABLE)
        assert life["deleted"] is True
        assert logged(path) == (0, 0)
        second.flush()
        assert len(rows(second, CHANGES_TABLE)) == 3  # nothing derived twice
    finally:
        second.close()


def test_each_watch_read_keeps_the_time_it_was_seen(tmp_path: Path, no_idle_derivation: None) -> None:
    store = CacheStore(tmp_path / "c.db", batch_wait=0.5)  # both reads in one transaction
    uid = str(uuid.uuid4())
    try:
        store.apply_events("ctx", CMS, [("ADDED", configmap("a", uid, "1"))], informer_status(rv="1"))
        time.sleep(0.05)
        store.apply_events(
            "ctx", CMS, [("MODIFIED", configmap("a", uid, "2", k="v"))], informer_status(rv="2")
        )
        added, modified = rows(store, CHANGES_TABLE)
        assert modified["observed_at"] > added["observed_at"]
    finally:
        store.close()


def test_a_segment_that_cannot_be_derived_is_a_gap_and_the_next_ones_are_derived(store: CacheStore) -> None:
    assert store.path is not None
    store.flush()
    con = sqlite3.connect(store.path)
    with con:  # a version without metadata: replaying it fails
        con.execute(
            "INSERT INTO history_log (context, resource, kind, api_version, observed_at, versions, body) "
            "VALUES ('ctx', 'configmaps', 'ConfigMap', 'v1', ?, 1, ?)",
            (time.time(), b'[["U", "ADDED", {"kind": "ConfigMap"}, []]]'),
        )
    con.close()
    uid = str(uuid.uuid4())
    store.apply_events("ctx", CMS, [("ADDED", configmap("a", uid, "1"))], informer_status(rv="1"))
    changes = rows(store, CHANGES_TABLE)
    assert [c["change_type"] for c in changes] == ["gap", "added"]
    assert changes[1]["uid"] == uid
    assert logged(store.path) == (0, 0)


def test_segments_are_stored_compressed_and_one_stored_uncompressed_still_derives(store: CacheStore) -> None:
    """An older writer stored its segments as plain JSON: a log it left is derived all the same."""
    assert store.path is not None
    older, newer = str(uuid.uuid4()), str(uuid.uuid4())
    con = sqlite3.connect(store.path)
    with con:
        con.execute(
            "INSERT INTO history_log (context, resource, kind, api_version, observed_at, versions, body) "
            "VALUES ('ctx', 'configmaps', 'ConfigMap', 'v1', ?, 1, ?)",
            (time.time(), orjson.dumps([["U", "ADDED", configmap("old", older, "1"), []]])),
        )
    con.close()
    versions = [("ADDED", configmap("new", newer, "2", k="v" * 200))] + [
        ("MODIFIED", configmap("new", newer, str(rv), k="v" * 200 + str(rv))) for rv in range(3, 30)
    ]
    store.apply_events("ctx", CMS, versions, informer_status(rv="29"))
    store.flush(history=False)
    con = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        (body,) = con.execute("SELECT body FROM history_log WHERE versions > 1").fetchone()
    finally:
        con.close()
    assert body[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert len(body) * 5 < len(orjson.dumps(segment_ops(body)))
    changes = rows(store, CHANGES_TABLE)
    assert [(c["uid"], c["change_type"]) for c in changes[:2]] == [(older, "added"), (newer, "added")]
    assert len(changes) == 29 and logged(store.path) == (0, 0)


def test_an_idle_writer_derives_its_log_on_its_own(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = CacheStore(path, batch_wait=0.0)
    try:
        store.apply_events("ctx", CMS, [("ADDED", configmap("a", str(uuid.uuid4()), "1"))], informer_status())
        store.flush(history=False)
        deadline = time.monotonic() + 10
        while history_rows(path) < 2 and time.monotonic() < deadline:  # its change and lifetime rows
            time.sleep(0.02)
        assert history_rows(path) == 2
        assert logged(path) == (0, 0)
    finally:
        store.close()


class TestWhenTheWriterDerives:
    """``CacheStore._derivation_step``: the writer's load and the log's state decide."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Any:
        s = CacheStore(tmp_path / "c.db")
        s._loop._background = None  # the test asks, not the writer's own loop
        s._derivable, s.history_backlog, s._oldest_logged = True, 10, time.time()
        yield s
        s.close()

    def step_size(self, store: CacheStore, load: writeloop.Load) -> int | None:
        step = store._derivation_step(load)
        return None if step is None else step.keywords["max_versions"]  # type: ignore[attr-defined]

    def test_an_idle_writer_takes_a_short_step(self, store: CacheStore) -> None:
        assert self.step_size(store, "idle") == IDLE_STEP

    def test_nothing_to_derive_means_no_step(self, store: CacheStore) -> None:
        store._derivable = False
        assert self.step_size(store, "idle") is None

    def test_a_busy_writer_leaves_a_recent_log_for_later(self, store: CacheStore) -> None:
        assert self.step_size(store, "light") is None
        assert self.step_size(store, "heavy") is None

    def test_a_lightly_loaded_writer_derives_a_log_older_than_the_lag(self, store: CacheStore) -> None:
        store._oldest_logged = time.time() - HISTORY_LAG - 1
        assert self.step_size(store, "light") == IDLE_STEP
        assert self.step_size(store, "heavy") is None  # a burst is written first

    def test_a_log_past_its_bound_is_derived_back_under_it_however_busy(self, store: CacheStore) -> None:
        store.history_backlog_max = 1000
        store.history_backlog = 4000
        assert self.step_size(store, "heavy") == 3000 + CATCH_UP_STEP
        store.history_backlog = 1_000_000  # far past it: caught up over several batches
        assert self.step_size(store, "heavy") == BOUND_STEP

    def test_a_step_past_the_bound_takes_what_the_last_batch_logged_so_the_log_cannot_grow(
        self, tmp_path: Path, no_idle_derivation: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(writer, "BOUND_STEP", 100)  # batches log more than a step
        path = tmp_path / "big.db"
        store = CacheStore(path)
        try:
            store.history_backlog_max = 0
            pages = [
                [configmap(f"cm-{p}-{i}", str(uuid.uuid4()), "1") for i in range(200)] for p in range(20)
            ]
            gen = store.begin_relist()
            for page in pages:
                store.relist_page("ctx", CMS, page, gen)
            store.flush(history=False)
            # The step after the last batch runs after flush returns, and the writer counts
            # what it derived just after committing it.
            deadline = time.monotonic() + 5
            while (logged(path), store.history_backlog) != ((0, 0), 0) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert logged(path) == (0, 0)
            assert store.history_backlog == 0
        finally:
            store.close()


def test_the_busy_share_counts_the_last_second_only() -> None:
    share = BusyShare(window=1.0)
    share.add(0.0, 0.5)
    share.add(9.2, 9.6)
    assert share.share(10.0) == pytest.approx(0.4)
    share.add(9.7, 10.0)
    assert share.share(10.5) == pytest.approx(0.4)  # 9.5-9.6 and 9.7-10.0


def test_a_failed_background_step_pauses_the_work_and_drops_no_write(tmp_path: Path) -> None:
    from watcher.cache.backend import CacheLocation, FileWriterLock

    steps: list[str] = []
    committed: list[int] = []

    def commit(ops: list[writeloop.Operation]) -> None:
        for op in ops:
            op.apply(None)  # type: ignore[arg-type]

    def failing_step(_tx: Any) -> None:
        steps.append("step")
        raise RuntimeError("derivation broke")

    def background(load: writeloop.Load) -> Any:
        return failing_step

    lock = FileWriterLock(tmp_path / "c.db")
    loop = WriteLoop(
        commit, location=CacheLocation.of(tmp_path / "c.db"), lock=lock, batch_max=10, batch_wait=0.0,
        background=background,
    )  # fmt: skip
    try:
        done = threading.Event()
        loop.submit(lambda _tx: committed.append(1))
        loop.submit(lambda _tx: done.set(), wait=True)
        time.sleep(0.3)  # idle: the step runs, fails once, and rests
        loop.submit(lambda _tx: committed.append(2), wait=True)
        time.sleep(0.3)
        assert committed == [1, 2]
        assert steps == ["step"]
        assert loop.dropped_batches == 0
    finally:
        loop.close(5)
        lock.release()


def test_the_log_of_a_secret_holds_neither_its_data_nor_the_names_of_its_keys(store: CacheStore) -> None:
    uid = str(uuid.uuid4())
    entry = {
        "manager": "kubectl",
        "operation": "Update",
        "time": "2026-12-06T10:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {"f:password": {}}},
    }
    db = secret("db", uid, "1", password="aHVudGVyMg==")
    config = configmap("c", str(uuid.uuid4()), "2", password="x")
    for obj in (db, config):
        obj["metadata"]["managedFields"] = [entry]
    store.apply_events("ctx", SECRETS, [("ADDED", db)], informer_status(SECRETS))
    store.apply_events("ctx", CMS, [("ADDED", config)], informer_status())
    store.flush(history=False)
    con = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    # (Read as JSON: a compressed segment would hide any string from a search of its bytes.)
    bodies = {
        r: orjson.dumps(segment_ops(b)) for r, b in con.execute("SELECT resource, body FROM history_log")
    }
    con.close()
    assert b"aHVudGVy" not in bodies["secrets"] and b"password" not in bodies["secrets"]
    assert b"kubectl" in bodies["secrets"]  # its managers, as fingerprints
    assert b"f:password" in bodies["configmaps"]  # a ConfigMap's entries as they came
    store.flush()
    (change,) = [c for c in rows(store, CHANGES_TABLE) if c["uid"] == uid]
    assert [m["manager"] for m in change["managers"]] == ["kubectl"]


def test_the_backlog_bound_is_a_daemon_option_and_a_bad_value_is_refused() -> None:
    from watcher.cli import _count, _history_policy

    none = {f"history_{k}": None for k in ("off", "on", "retention", "max_size")}
    given = argparse.Namespace(no_history=False, history_status_updates=False, history_backlog=5000, **none)
    assert _history_policy(given).backlog_max == 5000
    given.history_backlog = None
    assert _history_policy(given).backlog_max == 200_000
    assert _count("200_000") == 200_000 and _count("0") == 0
    for bad in ("-1", "lots", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="not a count"):
            _count(bad)


def test_a_store_takes_its_backlog_bound_from_the_policy(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c.db", history=HistoryPolicy(backlog_max=7))
    try:
        assert store.history_backlog_max == 7
    finally:
        store.close()
