"""Object history, the cache's part: :class:`HistoryRecorder` turns the writer's object
writes into change and lifetime rows, inside the writer's transaction.

What a change is, and the policy, live in :mod:`watcher.history`. Here:

- ``history_heads`` holds each followed object's last recorded version: the next
  change's patch and managers start from it. It is read once per batch of writes and
  written when the transaction sends its statements (a retried transaction starts over
  from the database, so :meth:`HistoryRecorder.reset` forgets what was pending).
- Change and lifetime rows are rows of ``objects`` under their own resource keys: they
  take the context's next seq like any write, so incremental and follow syncs carry
  them; they are never tombstoned, only purged by age or size (a purge is no deletion:
  the destination keeps its copy).
- ``history_followed`` says which (context, resource) pairs have a history already: the
  first list of one records its objects as ``observed`` (they existed before); a later
  list follows a watch that ended (a 410 after compaction, a restart, a retired context
  re-added), so it records a ``gap`` row first and its new objects as ``added``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import delete, func, select

from watcher.cache.schema import history_followed, objects
from watcher.history import (
    CHANGE_COLUMNS,
    CHANGES_KEY,
    CHANGES_TABLE,
    HISTORY_KEYS,
    LIFETIME_COLUMNS,
    LIFETIMES_KEY,
    LIFETIMES_TABLE,
    ChangeType,
    HistoryPolicy,
    ManagerEntry,
    changed_managers,
    history_doc,
    json_patch,
    managers_of,
    same_but_status,
)
from watcher.resources import Column, ResourceDescriptor
from watcher.tables import document

#: The row documents' columns, key columns included (in the schemas' order).
_CHANGE_DOC = (Column("change_seq", "int64", lambda o: None), *CHANGE_COLUMNS)
_LIFETIME_DOC = (Column("uid", "uuid", lambda o: None), *LIFETIME_COLUMNS)

_UPSERT_HEAD = """
INSERT INTO history_heads (context, resource, uid, resource_version, doc, managers, first_seen, first_seen_as, first_seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (context, resource, uid) DO UPDATE SET
    resource_version = excluded.resource_version, doc = excluded.doc, managers = excluded.managers
"""
_DELETE_HEAD = "DELETE FROM history_heads WHERE context = ? AND resource = ? AND uid = ?"
_SELECT_HEADS = """
SELECT uid, resource_version, doc, managers, first_seen, first_seen_as, first_seq FROM history_heads
WHERE context = ? AND resource = ? AND uid IN ({})
"""

#: An objects row (the writer's upsert statement's parameters).
ObjectRow = tuple[Any, ...]


@dataclass(slots=True)
class Head:
    """An object's last recorded version."""

    resource_version: str
    doc: dict[str, Any]
    managers: list[ManagerEntry]
    first_seen: float
    first_seen_as: str
    first_seq: int


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class HistoryRecorder:
    """Change and lifetime rows for the writer (writer thread only)."""

    def __init__(self, policy: HistoryPolicy, sql: Callable[[str], str]) -> None:
        self.policy = policy
        self._sql = sql
        self._upsert_head = sql(_UPSERT_HEAD)
        self._delete_head = sql(_DELETE_HEAD)
        #: The heads' SELECT by IN-list length (see _select_heads).
        self._select_heads_sql: dict[int, str] = {}
        self._records: dict[str, bool] = {}
        #: (context, resource, uid) -> the head written by this transaction (None: removed).
        self._pending: dict[tuple[str, str, str], Head | None] = {}
        #: (context, resource, uid) -> the head in the database, as this transaction read
        #: or wrote it (None: none): a watch read's heads are read once (see prefetch).
        self._known: dict[tuple[str, str, str], Head | None] = {}
        #: (context, resource) -> whether its history has begun (this transaction's view).
        self._followed: dict[tuple[str, str], bool] = {}
        self._new_followed: list[tuple[str, str]] = []

    def reset(self) -> None:
        """A transaction begins (or begins again after a failure)."""
        self._pending.clear()
        self._known.clear()
        self._followed.clear()
        self._new_followed.clear()

    def records(self, desc: ResourceDescriptor) -> bool:
        # Asked on every write: the policy's globs, matched once per kind.
        if desc.key not in self._records:
            self._records[desc.key] = self.policy.records(desc)
        return self._records[desc.key]

    # -- heads -------------------------------------------------------------------

    def prefetch(self, conn: Any, context: str, resource: str, uids: Sequence[str]) -> None:
        """Read the heads of a watch read's objects in one SELECT: its runs of writes and
        deletions (a SELECT each before) then find them here."""
        found = self._heads(conn, context, resource, uids)
        for uid in uids:
            self._known.setdefault((context, resource, uid), found.get(uid))

    def _heads(self, conn: Any, context: str, resource: str, uids: Sequence[str]) -> dict[str, Head]:
        found: dict[str, Head] = {}
        missing = []
        for uid in uids:
            key = (context, resource, uid)
            if key in self._pending:
                head = self._pending[key]
            elif key in self._known:
                head = self._known[key]
            else:
                missing.append(uid)
                continue
            if head is not None:
                found[uid] = head
        for i in range(0, len(missing), 500):
            some = missing[i : i + 500]
            for uid, rv, doc, managers, first_seen, first_seen_as, first_seq in conn.exec_driver_sql(
                self._select_heads(len(some)), (context, resource, *some)
            ):
                found[uid] = Head(
                    rv,
                    orjson.loads(doc),
                    [tuple(e) for e in orjson.loads(managers)],
                    first_seen,
                    first_seen_as,
                    first_seq,
                )
        return found

    def _select_heads(self, n: int) -> str:
        """The heads' SELECT of ``n`` uids, as driver SQL: it runs for every watch read and
        every deletion, and building and compiling a Core select each time was a third of
        a history-on writer's time (bench/history_bench.py)."""
        if n not in self._select_heads_sql:
            self._select_heads_sql[n] = self._sql(_SELECT_HEADS.format(", ".join("?" * n)))
        return self._select_heads_sql[n]

    def send(self, conn: Any) -> None:
        """Write the heads this transaction changed (before any read that needs them)."""
        upserts, deletes = [], []
        for (context, resource, uid), head in self._pending.items():
            if head is None:
                deletes.append((context, resource, uid))
            else:
                upserts.append(
                    (
                        context, resource, uid, head.resource_version, orjson.dumps(head.doc),
                        orjson.dumps(head.managers), head.first_seen, head.first_seen_as, head.first_seq,
                    )
                )  # fmt: skip
        if deletes:
            conn.exec_driver_sql(self._delete_head, deletes)
        if upserts:
            conn.exec_driver_sql(self._upsert_head, upserts)
        if self._new_followed:
            now = time.time()
            conn.execute(
                history_followed.insert(),
                [{"context": c, "resource": r, "since": now} for c, r in self._new_followed],
            )
        self._known.update(self._pending)
        self._pending.clear()
        self._new_followed.clear()

    def followed(self, conn: Any, context: str, resource: str) -> bool:
        key = (context, resource)
        if key not in self._followed:
            f = history_followed.c
            self._followed[key] = (
                conn.execute(select(f.since).where((f.context == context) & (f.resource == resource))).first()
                is not None
            )
        return self._followed[key]

    def _follow(self, context: str, resource: str) -> None:
        if not self._followed.get((context, resource)):
            self._followed[(context, resource)] = True
            self._new_followed.append((context, resource))

    # -- rows --------------------------------------------------------------------

    def upserted(
        self,
        conn: Any,
        context: str,
        desc: ResourceDescriptor,
        versions: Sequence[tuple[str, dict[str, Any], dict[str, Any]]],
        next_seq: Callable[[], int],
    ) -> list[ObjectRow]:
        """The rows recording new versions of objects: ``versions`` are (event type,
        raw, sanitized) in the order they were observed; a list's objects come as
        ``LISTED``."""
        now = time.time()
        heads = self._heads(conn, context, desc.key, [clean["metadata"]["uid"] for _, _, clean in versions])
        listed_as: ChangeType = "added"
        if any(event == "LISTED" for event, _, _ in versions) and not self.followed(conn, context, desc.key):
            listed_as = "observed"  # the first list: these objects existed before
        rows: list[ObjectRow] = []
        for event, raw, clean in versions:
            meta = clean["metadata"]
            uid, rv = meta["uid"], meta.get("resourceVersion") or ""
            head = heads.get(uid)
            if head is not None and head.resource_version == rv:
                continue  # the version recorded last (a relist of an unchanged object)
            doc = history_doc(clean, desc)
            if head is not None and not self.policy.status_updates and same_but_status(head.doc, doc):
                continue  # status only (or no change the document shows): not recorded
            managers = managers_of(raw)
            if head is None:
                seq = next_seq()
                # A MODIFIED object without a head was not followed (history just turned on).
                kind: ChangeType = {"LISTED": listed_as, "ADDED": "added"}.get(event, "observed")
                head = Head(rv, doc, managers, now, kind, seq)
                who = changed_managers([], managers)  # every manager made it
                rows.append(self._change(context, desc, seq, kind, now, uid, meta, rv, None, who, None, doc))
                rows.append(self._lifetime(context, desc, head, meta, deleted_at=None, last_seq=seq))
            else:
                patch = json_patch(head.doc, doc)
                paths = [op["path"] for op in patch]
                if not self.policy.keeps(paths):
                    continue  # status only (or nothing the document shows, e.g. managedFields)
                seq = next_seq()
                who = changed_managers(head.managers, managers)
                rows.append(
                    self._change(context, desc, seq, "modified", now, uid, meta, rv, head, who, patch, doc)
                )
                head = Head(rv, doc, managers, head.first_seen, head.first_seen_as, head.first_seq)
            heads[uid] = head
            self._pending[(context, desc.key, uid)] = head
        return rows

    def deleted(
        self,
        conn: Any,
        context: str,
        desc: ResourceDescriptor,
        gone: Sequence[tuple[str, dict[str, Any] | None, dict[str, Any] | None]],
        next_seq: Callable[[], int],
    ) -> list[ObjectRow]:
        """The rows recording deletions: (uid, raw, sanitized) of each object, the last
        two None when only the cache knew it (a relist did not return it)."""
        now = time.time()
        heads = self._heads(conn, context, desc.key, [uid for uid, _, _ in gone])
        rows: list[ObjectRow] = []
        for uid, raw, clean in gone:
            head = heads.get(uid)
            if clean is None and head is None:
                continue  # never recorded: nothing to close
            doc = history_doc(clean, desc) if clean is not None else head.doc  # type: ignore[union-attr]
            meta = doc["metadata"]
            rv = (clean or {}).get("metadata", {}).get("resourceVersion") or (
                head.resource_version if head else ""
            )
            managers = managers_of(raw) if raw is not None else []
            who = changed_managers(head.managers, managers) if head is not None else []
            seq = next_seq()
            rows.append(self._change(context, desc, seq, "deleted", now, uid, meta, rv, head, who, None, doc))
            life = head or Head(rv, doc, managers, now, "deleted", seq)
            rows.append(self._lifetime(context, desc, life, meta, deleted_at=now, last_seq=seq))
            self._pending[(context, desc.key, uid)] = None
        return rows

    def listed(
        self, conn: Any, context: str, desc: ResourceDescriptor, list_rv: str, next_seq: Callable[[], int]
    ) -> list[ObjectRow]:
        """A list of ``desc`` ended: a gap row if its history had begun before (the
        watch it replaces ended: versions in between may be missing). Called after the
        list's pages and deletions, so its objects' ``observed``/``added`` are decided."""
        rows: list[ObjectRow] = []
        if self.followed(conn, context, desc.key):
            seq = next_seq()
            rows.append(
                self._change(context, desc, seq, "gap", time.time(), None, {}, list_rv, None, [], None, None)
            )
        self._follow(context, desc.key)
        return rows

    def _change(
        self,
        context: str,
        desc: ResourceDescriptor,
        seq: int,
        kind: ChangeType,
        now: float,
        uid: str | None,
        meta: dict[str, Any],
        rv: str,
        before: Head | None,
        who: list[dict[str, str]],
        patch: list[dict[str, Any]] | None,
        doc: dict[str, Any] | None,
    ) -> ObjectRow:
        values = {
            "change_seq": seq,
            "uid": uid,
            "change_type": kind,
            "observed_at": _ts(now),
            "kind": desc.kind,
            "api_version": desc.api_version,
            "resource": desc.key,
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "resource_version": rv or None,
            "previous_resource_version": before.resource_version if before is not None else None,
            "managers": who or None,
            "paths": [op["path"] for op in patch] if patch is not None else None,
            "patch": patch,
            "object": doc,
        }
        name = meta.get("name") or ""
        return (
            context, CHANGES_KEY, f"{seq}", CHANGES_TABLE, meta.get("namespace"), name, rv,
            document(values, _CHANGE_DOC), seq, None, now,
        )  # fmt: skip

    def _lifetime(
        self,
        context: str,
        desc: ResourceDescriptor,
        head: Head,
        meta: dict[str, Any],
        *,
        deleted_at: float | None,
        last_seq: int,
    ) -> ObjectRow:
        uid = meta.get("uid") or head.doc["metadata"]["uid"]
        created = meta.get("creationTimestamp")
        lived = None
        if deleted_at is not None:
            start = head.first_seen
            if created:
                start = min(start, datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
            lived = round(deleted_at - start, 3)
        values = {
            "uid": uid,
            "kind": desc.kind,
            "api_version": desc.api_version,
            "resource": desc.key,
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "created_at": created,
            "first_seen_at": _ts(head.first_seen),
            "first_seen_as": head.first_seen_as,
            "deleted": deleted_at is not None,
            "deleted_at": _ts(deleted_at) if deleted_at is not None else None,
            "lived_seconds": lived,
            "first_change_seq": head.first_seq,
            "last_change_seq": last_seq,
        }
        # The row's resourceVersion says which state it records: a re-write of the same
        # state keeps its seq (the writer's upsert), a deletion takes a new one.
        marker = f"deleted:{last_seq}" if deleted_at is not None else f"alive:{head.first_seq}"
        return (
            context, LIFETIMES_KEY, uid, LIFETIMES_TABLE, meta.get("namespace"), meta.get("name") or "",
            marker, document(values, _LIFETIME_DOC), last_seq, None, deleted_at,
        )  # fmt: skip


def purge_history(conn: Any, contexts: Any, policy: HistoryPolicy, now: float) -> int:
    """Delete history rows past the retention (changes, and lifetimes of objects deleted
    before it), then the oldest changes beyond ``max_bytes``, in the contexts this writer
    may purge (``contexts``: a subquery). Returns the rows deleted."""
    o = objects.c
    mine = o.context.in_(contexts) & o.resource.in_(HISTORY_KEYS)
    gone = conn.execute(
        delete(objects).where(mine & (o.observed_at < now - policy.retention_seconds))
    ).rowcount
    changes = o.context.in_(contexts) & (o.resource == CHANGES_KEY)
    total = conn.execute(select(func.coalesce(func.sum(func.length(o.row)), 0)).where(changes)).scalar_one()
    excess = int(total) - policy.max_bytes
    if excess > 0:
        # The oldest changes first, until what is left fits.
        # (A transaction's changes share their time: the seq orders them.)
        running = func.sum(func.length(o.row)).over(order_by=(o.observed_at, o.seq))
        ranked = select(o.observed_at, o.seq, running.label("upto")).where(changes).subquery()
        cutoff = conn.execute(
            select(ranked.c.observed_at, ranked.c.seq)
            .where(ranked.c.upto >= excess)
            .order_by(ranked.c.upto)
            .limit(1)
        ).first()
        if cutoff is not None:
            at, seq = cutoff
            older = (o.observed_at < at) | ((o.observed_at == at) & (o.seq <= seq))
            gone += conn.execute(delete(objects).where(changes & older)).rowcount
    return int(gone or 0)
