"""The follow loop (``Plugin.sync`` with ``follow: true``) on a real cache file: after the
snapshot it sends each committed change, deletions before rows, and ends on stop."""

from __future__ import annotations

import queue
import threading
import uuid
from pathlib import Path
from typing import Any

from tests.unit.builders import CMS, configmap, informer_status, seq_of
from watcher.messages import SyncDeleteRecord, SyncInsert, SyncMessage, SyncMigrateTable, SyncOptions
from watcher.plugin import Plugin, Session
from watcher.spec import Spec
from watcher.state import CacheStore


class NoRefresh:
    def refresh(self, spec: Spec, contexts: list[str], tables: tuple[str, ...]) -> dict[str, str]:
        return {}

    def test_connection(self, spec: Spec, contexts: list[str]) -> list[str]:
        return []


def _next(messages: queue.Queue[SyncMessage], timeout: float = 5) -> SyncMessage:
    return messages.get(timeout=timeout)


def follow_session(cache: Path, table: str) -> Session:
    return Session(Spec.parse({"follow": True, "cache_path": str(cache), "tables": [table]}), ["ctx"])


def following(
    plugin: Plugin, session: Session, tables: tuple[str, ...] = ("*",)
) -> tuple[queue.Queue[SyncMessage], threading.Event, threading.Thread]:
    """A follow sync of ``tables`` (the CLI's patterns) running on a thread: its
    messages, its stop, the thread."""
    stop = threading.Event()
    messages: queue.Queue[SyncMessage] = queue.Queue()

    def run() -> Any:
        for msg in plugin.sync(session, SyncOptions(tables=tables, stop=stop)):
            messages.put(msg)

    thread = threading.Thread(target=run)
    thread.start()
    return messages, stop, thread


def _uids_and_versions(msg: SyncMessage) -> list[tuple[str, str]]:
    assert isinstance(msg, SyncInsert)
    return [(str(uuid.UUID(bytes=r["uid"])), r["resource_version"]) for r in msg.record.to_pylist()]


def test_follow_sends_changes_as_they_commit_and_stops(store: CacheStore, tmp_path: Path) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    status = informer_status(CMS)
    store.apply_events(
        "ctx", CMS, [("ADDED", configmap("a", a, "1")), ("ADDED", configmap("b", b, "2"))], status
    )
    store.flush()
    plugin = Plugin(NoRefresh())
    messages, stop, thread = following(plugin, follow_session(tmp_path / "cache.db", "k8s_configmaps"))
    try:
        assert isinstance(_next(messages), SyncMigrateTable)
        assert _next(messages) == SyncDeleteRecord("k8s_configmaps", "ctx")  # first run: full snapshot
        assert sorted(_uids_and_versions(_next(messages))) == sorted([(a, "1"), (b, "2")])
        assert messages.empty()
        store.apply_events(
            "ctx", CMS, [("MODIFIED", configmap("a", a, "3")), ("DELETED", configmap("b", b, "4"))], status
        )
        store.flush()
        assert _next(messages) == SyncDeleteRecord("k8s_configmaps", "ctx", b)
        assert _uids_and_versions(_next(messages)) == [(a, "3")]
        assert plugin.follow_status.streams == 1
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert plugin.follow_status.streams == 0
    assert plugin.follow_status.sent == {"ctx": seq_of(store)}
    assert plugin.follow_status.lag_seconds() == 0.0


def test_follow_streams_new_changes_and_never_deletes_history(store: CacheStore, tmp_path: Path) -> None:
    a = str(uuid.uuid4())
    status = informer_status(CMS)
    store.apply_events("ctx", CMS, [("ADDED", configmap("a", a, "1"))], status)
    store.flush()
    session = follow_session(tmp_path / "cache.db", "k8s_object_changes")
    messages, stop, thread = following(
        Plugin(NoRefresh()), session, ("k8s_object_changes",)
    )  # named: history is opt-in
    try:
        assert isinstance(_next(messages), SyncMigrateTable)
        first = _next(messages)  # the full snapshot: no clearing of the history first
        assert isinstance(first, SyncInsert)
        assert [r["change_type"] for r in first.record.to_pylist()] == ["added"]
        store.apply_events(
            "ctx",
            CMS,
            [("MODIFIED", configmap("a", a, "2", k="v")), ("DELETED", configmap("a", a, "3"))],
            status,
        )
        store.flush()
        sent = _next(messages)
        assert isinstance(sent, SyncInsert), sent
        assert [(r["change_type"], r["resource_version"]) for r in sent.record.to_pylist()] == [
            ("modified", "2"),
            ("deleted", "3"),
        ]
        assert messages.empty()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
