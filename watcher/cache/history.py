"""Object history, the cache's part: the writer logs each new version of an object with a
history (:class:`HistoryLog`, in the transaction that stores the object), and later turns
the log into change and lifetime rows (:meth:`HistoryRecorder.replay`), in the order it
was written, when it has nothing else to write.

What a change is, and the policy, live in :mod:`watcher.history`. Why a log: computing a
change (its patch needs the previous recorded version, its managers the previous
entries) costs twice what storing the object does (BENCHMARKS.md, "History"). In the
write path it made a burst of events, or a first list, take three times as long; logged,
a version costs one encoded copy, and the inventory stays as fresh with history on as
off. Nothing is lost in between: the log commits with the objects, and its derivation
commits with the rows it makes, each segment's exactly once (a kill -9 leaves both or
neither).

- ``history_log`` holds the logged versions, a segment per run of one (context,
  resource)'s writes in a transaction, as JSON compressed with zstd (level 1: 2 µs a
  version and a sixteenth of the bytes in the benchmark's churn, where the bytes a
  commit writes are most of what logging costs; zlib at level 1 took 7 µs for less,
  ``bench/log_codecs.py``; an older, uncompressed segment is read as it is): ``["U", event, object, managers]`` (a new
  version: its watch event type, or ``LISTED``), ``["D", uid, object or null,
  managers]`` (a deletion; null: a relist did not return it), ``["L",
  resourceVersion]`` (a list ended). Objects are sanitized as the cache stores them;
  managers are the ``managedFields`` entries, or for a metadata-only kind (a Secret,
  whose entries name its data's keys) only their fingerprints (``managers_of``).
- ``history_heads`` holds each followed object's last recorded version: the next
  change's patch and managers start from it. It is read once per segment and written
  when the transaction sends its statements (a retried transaction starts over from the
  database, so :meth:`HistoryRecorder.reset` forgets what was pending).
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

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import zstandard
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
    HistoryKind,
    HistoryPolicy,
    ManagerEntry,
    changed_managers,
    history_doc,
    json_patch,
    manager_entries,
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

_INSERT_SEGMENT = """
INSERT INTO history_log (context, resource, kind, api_version, observed_at, versions, body)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
#: A segment holds at most this many versions (an informer's watch read or list page
#: holds fewer; a larger operation is split, so one derivation step, which takes at
#: least a segment, stays about a tenth of a second, with the writes waiting).
SEGMENT_MAX = 500

#: A zstd frame's first bytes (a JSON segment's first byte is ``[``).
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

#: An objects row (the writer's upsert statement's parameters).
ObjectRow = tuple[Any, ...]
#: A logged operation (see the module doc), as JSON.
LoggedOp = list[Any]


@dataclass(slots=True)
class Head:
    """An object's last recorded version."""

    resource_version: str
    doc: dict[str, Any]
    managers: list[ManagerEntry]
    first_seen: float
    first_seen_as: str
    first_seq: int


def _entries(logged: list[Any]) -> list[ManagerEntry]:
    """Managers from their logged form (see ``_logged_managers``): ``managedFields``
    entries (objects), or fingerprints (lists)."""
    if logged and isinstance(logged[0], dict):
        return manager_entries(logged)
    return [tuple(e) for e in logged]


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class HistoryLog:
    """The versions one transaction logs (writer thread only): a segment per run of one
    (context, resource)'s operations, sent with the transaction's other statements."""

    def __init__(self, sql: Callable[[str], str]) -> None:
        self._insert = sql(_INSERT_SEGMENT)
        self._compressor = zstandard.ZstdCompressor(level=1)
        #: [context, kind, observed_at, ops] of each segment not sent yet.
        self._segments: list[tuple[str, HistoryKind, float, list[LoggedOp]]] = []
        #: Versions logged (sent or not) and derived by this transaction.
        self.logged = 0
        self.derived = 0
        #: When the first version this transaction logged was seen.
        self.first_seen_at: float | None = None

    def reset(self) -> None:
        self._segments.clear()
        self.logged = self.derived = 0
        self.first_seen_at = None

    def versions(self, context: str, kind: HistoryKind, seen_at: float, ops: list[LoggedOp]) -> None:
        """Log ``ops`` (see the module doc), seen at ``seen_at``, after those logged before.
        (One watch read's runs of writes and deletions share a segment; two reads keep
        their own times: an as-of query tells their versions apart by them.)"""
        if not ops:
            return
        if self.first_seen_at is None:
            self.first_seen_at = seen_at
        last = self._segments[-1] if self._segments else None
        if (
            last is not None
            and last[:3] == (context, kind, seen_at)
            and len(last[3]) + len(ops) <= SEGMENT_MAX
        ):
            last[3].extend(ops)
        else:
            self._segments.append((context, kind, seen_at, list(ops)))
        self.logged += len(ops)

    def send(self, conn: Any) -> None:
        if self._segments:
            conn.exec_driver_sql(
                self._insert,
                [
                    (context, kind.key, kind.kind, kind.api_version, at, len(ops), self._encode(ops))
                    for context, kind, at, ops in self._segments
                ],
            )
            self._segments.clear()

    def _encode(self, ops: list[LoggedOp]) -> bytes:
        return self._compressor.compress(orjson.dumps(ops))


def segment_ops(body: bytes) -> list[LoggedOp]:
    """A stored segment's operations (see :meth:`HistoryLog.send`)."""
    if body[:4] == _ZSTD_MAGIC:
        body = zstandard.ZstdDecompressor().decompress(body)
    ops: list[LoggedOp] = orjson.loads(body)
    return ops


def logged_upsert(event: str, raw: dict[str, Any], clean: dict[str, Any], *, metadata_only: bool) -> LoggedOp:
    """A new version, as logged: ``clean`` is what the cache stores of ``raw``."""
    return ["U", event, clean, _logged_managers(raw, metadata_only)]


def logged_deletion(
    uid: str, raw: dict[str, Any] | None, clean: dict[str, Any] | None, *, metadata_only: bool
) -> LoggedOp:
    """A deletion, as logged (``raw`` None: only the cache knew the object)."""
    return ["D", uid, clean, _logged_managers(raw, metadata_only) if raw is not None else []]


def _logged_managers(raw: dict[str, Any], metadata_only: bool) -> list[Any]:
    """A version's managers as logged: its ``managedFields`` entries as they came (their
    fingerprints are the derivation's work, not the writer's), but for a metadata-only
    kind their fingerprints at once: a Secret's entries name its data's keys."""
    if metadata_only:
        return managers_of(raw)
    return (raw.get("metadata") or {}).get("managedFields") or []


def logged_list_end(resource_version: str) -> LoggedOp:
    return ["L", resource_version]


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
        """Read the heads of a segment's objects in one SELECT: its runs of writes and
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
        """The heads' SELECT of ``n`` uids, as driver SQL: it runs for every segment, and
        building and compiling a Core select each time was a third of a history-on
        writer's time (bench/history_bench.py)."""
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

    def replay(
        self,
        conn: Any,
        context: str,
        kind: HistoryKind,
        now: float,
        ops: Sequence[LoggedOp],
        next_seq: Callable[[], int],
    ) -> list[ObjectRow]:
        """The change and lifetime rows of one logged segment, observed at ``now``."""
        self.prefetch(
            conn,
            context,
            kind.key,
            [op[2]["metadata"]["uid"] if op[0] == "U" else op[1] for op in ops if op[0] != "L"],
        )
        rows: list[ObjectRow] = []
        for tag, run in itertools.groupby(ops, key=lambda op: op[0]):
            if tag == "U":
                versions = [(event, clean, _entries(managers)) for _, event, clean, managers in run]
                rows += self.upserted(conn, context, kind, versions, next_seq, now)
            elif tag == "D":
                gone = [(uid, clean, _entries(managers)) for _, uid, clean, managers in run]
                rows += self.deleted(conn, context, kind, gone, next_seq, now)
            else:
                for _, list_rv in run:
                    rows += self.listed(conn, context, kind, list_rv, next_seq, now)
        return rows

    def upserted(
        self,
        conn: Any,
        context: str,
        desc: HistoryKind,
        versions: Sequence[tuple[str, dict[str, Any], list[ManagerEntry]]],
        next_seq: Callable[[], int],
        now: float,
    ) -> list[ObjectRow]:
        """The rows recording new versions of objects: ``versions`` are (event type,
        sanitized object, its managers) in the order they were observed; a list's objects
        come as ``LISTED``."""
        heads = self._heads(conn, context, desc.key, [clean["metadata"]["uid"] for _, clean, _ in versions])
        listed_as: ChangeType = "added"
        if any(event == "LISTED" for event, _, _ in versions) and not self.followed(conn, context, desc.key):
            listed_as = "observed"  # the first list: these objects existed before
        rows: list[ObjectRow] = []
        for event, clean, managers in versions:
            meta = clean["metadata"]
            uid, rv = meta["uid"], meta.get("resourceVersion") or ""
            head = heads.get(uid)
            if head is not None and head.resource_version == rv:
                continue  # the version recorded last (a relist of an unchanged object)
            doc = history_doc(clean, desc)
            if head is not None and not self.policy.status_updates and same_but_status(head.doc, doc):
                continue  # status only (or no change the document shows): not recorded
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
        desc: HistoryKind,
        gone: Sequence[tuple[str, dict[str, Any] | None, list[ManagerEntry]]],
        next_seq: Callable[[], int],
        now: float,
    ) -> list[ObjectRow]:
        """The rows recording deletions: (uid, sanitized object, its managers) of each
        object, the object None when only the cache knew it (a relist did not return it)."""
        heads = self._heads(conn, context, desc.key, [uid for uid, _, _ in gone])
        rows: list[ObjectRow] = []
        for uid, clean, managers in gone:
            head = heads.get(uid)
            if clean is None and head is None:
                continue  # never recorded: nothing to close
            doc = history_doc(clean, desc) if clean is not None else head.doc  # type: ignore[union-attr]
            meta = doc["metadata"]
            rv = (clean or {}).get("metadata", {}).get("resourceVersion") or (
                head.resource_version if head else ""
            )
            who = changed_managers(head.managers, managers) if head is not None else []
            seq = next_seq()
            rows.append(self._change(context, desc, seq, "deleted", now, uid, meta, rv, head, who, None, doc))
            life = head or Head(rv, doc, managers, now, "deleted", seq)
            rows.append(self._lifetime(context, desc, life, meta, deleted_at=now, last_seq=seq))
            self._pending[(context, desc.key, uid)] = None
        return rows

    def listed(
        self,
        conn: Any,
        context: str,
        desc: HistoryKind,
        list_rv: str,
        next_seq: Callable[[], int],
        now: float,
    ) -> list[ObjectRow]:
        """A list of ``desc`` ended: a gap row if its history had begun before (the
        watch it replaces ended: versions in between may be missing). Called after the
        list's pages and deletions, so its objects' ``observed``/``added`` are decided."""
        rows: list[ObjectRow] = []
        if self.followed(conn, context, desc.key):
            rows.append(self.gap(context, desc, list_rv, next_seq, now))
        self._follow(context, desc.key)
        return rows

    def gap(
        self, context: str, desc: HistoryKind, resource_version: str, next_seq: Callable[[], int], now: float
    ) -> ObjectRow:
        """A row saying that versions of ``desc``'s objects may be missing before it."""
        return self._change(
            context, desc, next_seq(), "gap", now, None, {}, resource_version, None, [], None, None
        )

    def _change(
        self,
        context: str,
        desc: HistoryKind,
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
        desc: HistoryKind,
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
