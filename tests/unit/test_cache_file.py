"""The cache file itself: private, rebuilt when corrupt or of another format, one writer,
and writes never silently lost (watcher.state)."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.unit.builders import (
    CMS,
    NO_HISTORY,
    cache_meta,
    configmap,
    informer_status,
    query_cache,
    seq_of,
    stored_rows,
)
from watcher.cache.transaction import WriteTransaction
from watcher.state import SCHEMA_VERSION, CacheLocked, CacheStore, CacheUnusable, open_reader


def test_the_cache_file_and_its_wal_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        s = CacheStore(tmp_path / "sub" / "cache.db")
    finally:
        os.umask(old)
    try:
        s.relist_page("ctx", CMS, [configmap("a", str(uuid.uuid4()), "1")], s.begin_relist())
        s.flush()
        assert stat.S_IMODE((tmp_path / "sub" / "cache.db").stat().st_mode) == 0o600
        for side in ("cache.db-wal", "cache.db-shm"):
            p = tmp_path / "sub" / side  # WAL mode: both exist while the store is open
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, side
    finally:
        s.close()


def test_a_corrupt_cache_file_is_moved_aside_and_rebuilt_private(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    s = CacheStore(path)
    try:
        aside = list(tmp_path.glob("cache.db.unusable-*"))
        assert len(aside) == 1
        assert aside[0].read_bytes() == garbage
        s.relist_page("ctx", CMS, [configmap("a", str(uuid.uuid4()), "1")], s.begin_relist())
        assert set(stored_rows(s)) == {"a"}
        assert cache_meta(s, "schema_version") == SCHEMA_VERSION
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        s.close()


def test_cache_of_another_format_is_moved_aside_not_misread(tmp_path: Path) -> None:
    """A cache written by a version with another row format is rebuilt (relist), and
    a reader refuses it with the reason, instead of decoding its rows wrongly."""
    path = tmp_path / "cache.db"
    s = CacheStore(path)
    s.apply_events("ctx", CMS, [("ADDED", configmap("old", str(uuid.uuid4()), "1"))], informer_status())
    s.flush()
    s.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(CacheUnusable, match=f"cache format 1, this version reads format {SCHEMA_VERSION}"):
        open_reader(path)
    s2 = CacheStore(path)
    try:
        assert len(list(tmp_path.glob("cache.db.unusable-*"))) == 1
        assert set(stored_rows(s2)) == set()
        assert cache_meta(s2, "schema_version") == SCHEMA_VERSION
    finally:
        s2.close()


def test_reopening_a_cache_keeps_its_seq_and_cache_id(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    s = CacheStore(path, history=NO_HISTORY)
    s.apply_events("ctx", CMS, [("ADDED", configmap("a", str(uuid.uuid4()), "1"))], informer_status())
    s.flush()
    seq = seq_of(s)
    cache_id = cache_meta(s, "cache_id")
    assert cache_id
    s.close()
    s2 = CacheStore(path, history=NO_HISTORY)
    try:
        # A new process takes the context over and continues its sequence.
        s2.apply_events("ctx", CMS, [("ADDED", configmap("b", str(uuid.uuid4()), "1"))], informer_status())
        assert seq_of(s2) == seq + 1
        assert cache_meta(s2, "cache_id") == cache_id
        assert not list(tmp_path.glob("*.unusable-*"))
    finally:
        s2.close()


def test_a_second_writer_on_the_same_cache_is_refused_and_the_sequence_stays_increasing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.db"
    first = CacheStore(path, history=NO_HISTORY)
    first.apply_events("ctx", CMS, [("ADDED", configmap("a", str(uuid.uuid4()), "1"))], informer_status())
    with pytest.raises(CacheLocked, match=f"cache file {path} is already written by another process"):
        CacheStore(path)
    # Another process (a registry: local plugin relisting) is refused the same way.
    other = subprocess.run(
        [sys.executable, "-c", f"from watcher.state import CacheStore; CacheStore({str(path)!r})"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr
    first.flush()
    seqs = [seq_of(first)]
    first.close()
    second = CacheStore(path, history=NO_HISTORY)  # the lock went with the first writer
    try:
        second.apply_events(
            "ctx", CMS, [("ADDED", configmap("b", str(uuid.uuid4()), "1"))], informer_status()
        )
        second.flush()
        seqs.append(seq_of(second))
        assert [r[0] for r in query_cache(second, "SELECT seq FROM objects ORDER BY seq")] == [
            seqs[0],
            seqs[1],
        ]
        assert seqs[1] > seqs[0]
    finally:
        second.close()


def test_a_write_that_keeps_failing_is_counted_not_silently_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watcher.cache.writeloop as writer_module

    monkeypatch.setattr(writer_module.time, "sleep", lambda _s: None)  # no retry delays in a unit test
    store = CacheStore(tmp_path / "cache.db")
    try:
        attempts: list[int] = []

        def failing(tx: WriteTransaction) -> None:
            attempts.append(1)
            tx.conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")

        store._loop.submit(failing, wait=True)
        assert len(attempts) == 5
        assert store.dropped_batches == 1
        store.flush()  # the writer survived and still works
        assert store.writer_alive()
    finally:
        store.close()
