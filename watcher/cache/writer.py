"""The cache writer: :class:`CacheStore`, every write operation on the cache, and how a
cache is opened for writing (the file repaired or moved aside, the file or advisory
writer lock, the schema). Its parts: the writer thread and its retries
(:mod:`watcher.cache.writeloop`), one transaction's seqs, fencing and statement batching
(:mod:`watcher.cache.transaction`), the history's rows (:mod:`watcher.cache.history`).
The design is described in :mod:`watcher.state`.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Table, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from watcher.cache import backend
from watcher.cache.backend import CacheLocation, CacheLocked, CacheUnusable
from watcher.cache.history import (
    HistoryLog,
    HistoryRecorder,
    LoggedOp,
    logged_deletion,
    logged_list_end,
    logged_upsert,
    purge_history,
    segment_ops,
)
from watcher.cache.reader import read_meta, stored_resource_versions
from watcher.cache.schema import (
    SCHEMA_VERSION,
    checkpoints,
    clusters,
    context_seqs,
    format_problem,
    history_log,
    meta,
    metadata,
    objects,
    retired_contexts,
    unusable_reason,
)
from watcher.cache.transaction import ContextSeqs, WriteTransaction
from watcher.cache.writeloop import Load, Operation, WriteLoop
from watcher.history import HISTORY_KEYS, HistoryKind, HistoryPolicy
from watcher.resources import ResourceDescriptor
from watcher.tables import columns_of, decode_row, derived_rows, extract_row, sanitize

log = logging.getLogger(__name__)

# The hot write statements, as plain SQL run with executemany: building SQLAlchemy
# constructs per batch cost more than the database itself. ``?`` placeholders, turned
# into the driver's by ``backend.driver_sql``.
_UPSERT_OBJECT = """
INSERT INTO objects (context, resource, uid, table_name, namespace, name, resource_version, row, seq, deleted, list_gen, observed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, FALSE, ?, ?)
ON CONFLICT (context, resource, uid) DO UPDATE SET
    namespace = excluded.namespace,
    name = excluded.name,
    row = excluded.row,
    -- An object re-listed unchanged keeps its seq: a relist alone must not make the
    -- next incremental sync re-emit every object. (Right-hand sides see the old row.)
    seq = CASE WHEN objects.resource_version = excluded.resource_version AND NOT objects.deleted
               THEN objects.seq ELSE excluded.seq END,
    resource_version = excluded.resource_version,
    deleted = FALSE,
    list_gen = coalesce(excluded.list_gen, objects.list_gen),
    observed_at = excluded.observed_at
"""
_TOMBSTONE_OBJECT = """
UPDATE objects SET deleted = TRUE, seq = ?, resource_version = ?
WHERE context = ? AND resource = ? AND uid = ? AND NOT deleted
"""
#: The oldest segments' sizes, then the bodies of those a derivation step takes (the
#: bodies are 50-500 KB: read only those).
_SEGMENT_SIZES = "SELECT id, context, versions, observed_at FROM history_log {where} ORDER BY id LIMIT 512"
_SEGMENT_BODIES = """
SELECT id, context, resource, kind, api_version, observed_at, body FROM history_log
WHERE id <= ? {also} ORDER BY id
"""
#: Versions a derivation step turns into history rows at most (it takes at least one
#: segment): an idle writer's step is short, so a write arriving meanwhile waits little;
#: a catch-up (``flush``, a backlog past its bound) takes longer ones.
IDLE_STEP = 100
CATCH_UP_STEP = 2000
BOUND_STEP = 10_000
#: How old the oldest logged version may get before the writer derives between batches
#: of writes too, not only when it has none (a follow sync streams the history within
#: about a second of the change, as it does objects).
HISTORY_LAG = 1.0
_STATUS_COLUMNS = [c.name for c in checkpoints.columns]
#: An informer status as its checkpoint row (one C call).
_status_row: Callable[[InformerStatus], tuple[Any, ...]] = operator.attrgetter(*_STATUS_COLUMNS)
_CONTEXT, _RESOURCE = _STATUS_COLUMNS.index("context"), _STATUS_COLUMNS.index("resource")
_UPSERT_STATUS = (
    f"INSERT INTO checkpoints ({', '.join(_STATUS_COLUMNS)}) VALUES ({', '.join('?' for _ in _STATUS_COLUMNS)}) "
    "ON CONFLICT (context, resource) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STATUS_COLUMNS if c not in ("context", "resource"))
)


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does (it copies the mode to -wal and -shm)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


@dataclass(slots=True)
class InformerStatus:
    """What an informer reports about itself; persisted in ``checkpoints``."""

    context: str
    resource: str
    table_name: str
    state: str
    resource_version: str | None = None
    last_list_at: float | None = None
    last_event_at: float | None = None
    last_error: str | None = None
    lists: int = 0
    relists: int = 0
    watches: int = 0
    events: int = 0
    errors: int = 0
    updated_at: float = field(default_factory=time.time)


def writer_identity() -> str:
    """Who owns a context in ``context_seqs``: this process, unique across restarts."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class CacheStore:
    """The writer of one cache, with its single writer thread.

    A SQLite file has at most one (a second one, in any process, raises
    :class:`CacheLocked`); so has a PostgreSQL database, unless ``shared``: replicas
    sharing the contexts by Lease, each writing only the contexts it claimed
    (:meth:`claim_context`). A lone writer owns every context it writes.
    """

    def __init__(
        self,
        where: CacheLocation | Path | str,
        *,
        shared: bool = False,
        group: str = "default",
        identity: str | None = None,
        batch_max: int = 5000,
        batch_wait: float = 0.02,
        history: HistoryPolicy | None = None,
    ) -> None:
        self.location = CacheLocation.of(where)
        self.path: Path | None = self.location.path if self.location.is_sqlite else None
        self.shared = shared
        #: The owner name this writer puts on its contexts (unique per process).
        self.identity = identity or writer_identity()
        if shared and self.location.is_sqlite:
            raise CacheUnusable(
                f"cache file {self.location}: a SQLite cache has one writer; replicas share a "
                "PostgreSQL cache (cache_url)"
            )
        self._lock: backend.FileWriterLock | backend.AdvisoryWriterLock
        if self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock = backend.FileWriterLock(self.path)
            except OSError as exc:
                raise CacheUnusable(f"cache file {self.path} cannot be created: {exc}") from exc
            try:
                self._prepare_file()
                self.engine = backend.sqlite_engine(self.path, readonly=False)
                self._create_schema()
            except Exception as exc:
                self._lock.release()
                if isinstance(exc, CacheUnusable):
                    raise
                raise CacheUnusable(f"cache file {self.path} cannot be written: {exc}") from exc
        else:
            self.engine = backend.postgres_engine(self.location)
            backend.check_reachable(self.location, self.engine)
            self._lock = backend.AdvisoryWriterLock(
                self.location, self.engine, group=group if shared else None
            )
            try:
                self._create_schema()
            except Exception as exc:
                self._lock.release()
                self.engine.dispose()
                if isinstance(exc, CacheUnusable):
                    raise
                raise CacheUnusable(f"cache database {self.location} cannot be written: {exc}") from exc
        self._upsert_object = backend.driver_sql(self.engine, _UPSERT_OBJECT)
        self._tombstone_object = backend.driver_sql(self.engine, _TOMBSTONE_OBJECT)
        self._upsert_status = backend.driver_sql(self.engine, _UPSERT_STATUS)
        sql = functools.partial(backend.driver_sql, self.engine)
        self.history = HistoryRecorder(history or HistoryPolicy(), sql)
        self._history_log = HistoryLog(sql)
        owned = "context IN (SELECT context FROM context_seqs WHERE owner = ?)"
        self._segment_sizes = sql(_SEGMENT_SIZES.format(where=f"WHERE {owned}" if shared else ""))
        self._segment_bodies = sql(_SEGMENT_BODIES.format(also=f"AND {owned}" if shared else ""))
        #: Logged versions not yet derived: a lone writer's all; a replica's, those of the
        #: contexts it claimed since it started.
        if shared:
            self.history_backlog = 0
        else:
            with self.engine.connect() as conn:
                self.history_backlog = self._logged_versions(conn)
        #: Beyond this backlog, the writer derives a step after each batch of writes too
        #: (a sustained rate above what it derives must not make the log grow forever).
        self.history_backlog_max = self.history.policy.backlog_max
        #: Whether the last derivation step found something to derive.
        self._derivable = self.history_backlog > 0
        #: When the oldest version not derived yet was seen (wall clock), if known.
        self._oldest_logged: float | None = time.time() if self._derivable else None
        self._seqs = ContextSeqs(self.identity, shared=shared, upsert=self._upsert_stmt)
        self._gen = 0
        self._loop = WriteLoop(
            self._commit,
            location=self.location,
            lock=self._lock,
            batch_max=batch_max,
            batch_wait=batch_wait,
            background=self._derivation_step,
        )

    @property
    def fenced(self) -> dict[str, str | None]:
        """Contexts another writer took over: their writes are skipped (context -> owner)."""
        return self._loop.fenced

    @property
    def dropped_batches(self) -> int:
        """Batches of writes dropped after repeated failures (the informers relist)."""
        return self._loop.dropped_batches

    @property
    def unreachable_since(self) -> float | None:
        """Since when (wall clock) the database has been unreachable, or None."""
        return self._loop.unreachable_since

    def _create_schema(self) -> None:
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                # Replicas starting together would race on CREATE TABLE.
                conn.execute(select(func.pg_advisory_xact_lock(backend.AdvisoryWriterLock.KEY + 1)))
            metadata.create_all(conn)
            found = read_meta(conn, "schema_version")
            if found is not None and (problem := format_problem(found)):
                raise CacheUnusable(
                    f"cache database {self.location}: {problem}; drop its tables (objects, checkpoints, "
                    "clusters, meta, context_seqs, retired_contexts) or point cache_url at another database"
                )
            for key, value in (("schema_version", SCHEMA_VERSION), ("cache_id", uuid.uuid4().hex)):
                # The cache id tells an incremental cursor which cache its seqs belong to.
                conn.execute(self._upsert_stmt(meta, {"key": key, "value": value}, ["key"], []))
            if isinstance(self._lock, backend.AdvisoryWriterLock) and self._lock.group is not None:
                self._join_group(conn, self._lock.group)

    def _join_group(self, conn: Any, group: str) -> None:
        """Two replica groups would both claim every context: one group per database."""
        other = read_meta(conn, "replica_group")
        if other and other != group and self._lock.group_alive(other):  # type: ignore[union-attr]
            raise CacheLocked(
                f"cache database {self.location} is written by replica group {other!r}, not {group!r}: "
                "each group of replicas needs a database of its own"
            )
        conn.execute(self._upsert_stmt(meta, {"key": "replica_group", "value": group}, ["key"], ["value"]))

    def _upsert_stmt(
        self, table: Table, values: dict[str, Any], keys: list[str], update_cols: list[str]
    ) -> Any:
        """INSERT ... ON CONFLICT (keys) DO UPDATE the ``update_cols`` (or DO NOTHING)."""
        stmt = backend.upsert(self.engine)(table).values(**values)
        if not update_cols:
            return stmt.on_conflict_do_nothing(index_elements=keys)
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={c: stmt.excluded[c] for c in update_cols}
        )

    def _prepare_file(self) -> None:
        assert self.path is not None
        reason = (
            unusable_reason(self.path, thorough=True)
            if self.path.exists() and self.path.stat().st_size > 0
            else None
        )
        if reason:
            aside = self.path.with_name(f"{self.path.name}.unusable-{int(time.time())}")
            log.error(
                "cache file %s cannot be used (%s); moved aside to %s, rebuilding", self.path, reason, aside
            )
            shutil.move(self.path, aside)
            for suffix in ("-wal", "-shm"):
                side = Path(str(self.path) + suffix)
                if side.exists():
                    side.unlink()
        try:
            _create_private(self.path)
        except OSError as exc:
            raise CacheUnusable(f"cache file {self.path} cannot be created: {exc}") from exc

    # -- transactions ------------------------------------------------------------

    def _commit(self, ops: list[Operation]) -> None:
        """One batch of operations in one transaction (on the writer thread)."""
        try:
            with self.engine.begin() as conn:
                tx = WriteTransaction(
                    conn,
                    self._seqs,
                    status_sql=self._upsert_status,
                    pending=(self.history, self._history_log),
                )
                for op in ops:
                    if op.context is not None:
                        tx.enter(op.context)
                    if not op.coalesced:
                        # Any other operation may change context_seqs (retire, purge, claim).
                        self._seqs.forget()
                        tx.send_pending()
                    op.apply(tx)
                seqs = tx.finish()
        except BaseException:
            self._seqs.forget()
            raise
        self._seqs.committed(seqs)
        if self._history_log.logged:
            self._derivable = True
            if self._oldest_logged is None:
                self._oldest_logged = self._history_log.first_seen_at
        self.history_backlog = max(
            0, self.history_backlog + self._history_log.logged - self._history_log.derived
        )

    # -- context ownership ---------------------------------------------------

    def claim_context(self, context: str) -> None:
        """Own ``context`` from now on (its Lease was acquired): its previous writer, if
        still running, is fenced off at its next write. Returns once committed."""

        def apply(tx: WriteTransaction) -> None:
            tx.conn.execute(
                select(context_seqs.c.seq).where(context_seqs.c.context == context).with_for_update()
            )
            self._seqs.take_over(tx.conn, context)
            # What its previous writer logged and did not derive is this writer's now.
            inherited = self._logged_versions(tx.conn, context)
            if inherited:
                self.history_backlog += inherited
                self._derivable = True
                self._oldest_logged = self._oldest_logged or time.time()

        self._loop.submit(apply, wait=True)
        self.fenced.pop(context, None)
        log.info("%s: this process (%s) now writes it", context, self.identity)

    def release_context(self, context: str) -> None:
        """Give ``context`` up (its Lease is being released); after its informers stopped."""

        def apply(tx: WriteTransaction) -> None:
            tx.conn.execute(
                update(context_seqs)
                .where((context_seqs.c.context == context) & (context_seqs.c.owner == self.identity))
                .values(owner=None, owned_since=time.time())
            )

        self._loop.submit(apply, wait=True)

    def owned_positions(self) -> dict[str, int]:
        """context -> newest seq, of the contexts this process owns (or, in a replica,
        retired ones nobody owns any more: their tombstones need a purge too)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(context_seqs.c.context, context_seqs.c.seq).where(self._purgeable())
            ).all()
        return {str(c): int(s) for c, s in rows}

    def _purgeable(self) -> Any:
        """The contexts whose tombstones this writer purges: its own, and retired ones
        without an owner (the replica that tombstoned them let them go)."""
        retired_unowned = context_seqs.c.owner.is_(None) & context_seqs.c.context.in_(
            select(retired_contexts.c.context)
        )
        return (context_seqs.c.owner == self.identity) | retired_unowned

    # -- reads for the writer's own use -------------------------------------------

    def live_rows(self, context: str, descriptor: ResourceDescriptor) -> list[dict[str, Any]]:
        """The cached column values of one resource's live objects in one context."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(objects.c.row).where(
                    (objects.c.context == context)
                    & (objects.c.resource == descriptor.key)
                    & (objects.c.deleted == False)  # noqa: E712
                )
            ).scalars()
            return [decode_row(bytes(r), columns_of(descriptor)) for r in rows]

    def resource_versions(self, context: str) -> dict[str, str]:
        """The resourceVersion each informer of ``context`` resumes its watch from."""
        with self.engine.connect() as conn:
            return stored_resource_versions(conn, context)

    def writer_alive(self) -> bool:
        return self._loop.alive()

    def flush(self, *, history: bool = True) -> None:
        """Block until everything enqueued so far is committed, and (``history``) its
        history derived: its change and lifetime rows written."""
        self._loop.submit(lambda _tx: None, wait=True)
        if history:
            self._derive_logged()

    # -- the history's derivation ---------------------------------------------------

    def _logged_versions(self, conn: Any, context: str | None = None) -> int:
        """Versions in the log (of ``context``; else of every context)."""
        query = select(func.coalesce(func.sum(history_log.c.versions), 0))
        if context is not None:
            query = query.where(history_log.c.context == context)
        return int(conn.execute(query).scalar_one())

    def history_lag_seconds(self) -> float:
        """How long ago the oldest logged version not derived yet was seen (0: none)."""
        oldest = self._oldest_logged
        return max(0.0, time.time() - oldest) if oldest is not None and self._derivable else 0.0

    def _derive_logged(self) -> int:
        """Derive the versions logged and committed so far that this writer may (its own
        contexts' in a replica), blocking until done; returns how many. (Not those logged
        meanwhile: under a steady stream of writes the log would never be empty.)"""
        derived: list[int] = []
        budget = self.history_backlog

        def step(tx: WriteTransaction) -> None:
            derived.append(self._derive(tx, CATCH_UP_STEP))

        while self._derivable and sum(derived) < budget:
            before = len(derived)
            self._loop.submit(step, wait=True)
            # (Nothing appended: the step failed, and its batch was dropped.)
            if len(derived) == before or not derived[-1]:
                break
        return sum(derived)

    def _derivation_step(self, load: Load) -> Callable[[WriteTransaction], object] | None:
        """The writer loop's background work: a derivation step when it is idle; between
        batches of writes when its oldest logged version is older than ``HISTORY_LAG``,
        unless the writes keep it busy (a burst is written first, its history after it);
        and, however busy, when the log passed its bound."""
        if not self._derivable:
            return None
        if load == "idle":
            return functools.partial(self._derive, max_versions=IDLE_STEP)
        if self.history_backlog > self.history_backlog_max:
            # Back under the bound (a batch may log thousands of versions), and a step
            # more. A log far past it (after a restart with a lower bound) is caught up
            # BOUND_STEP at a time over several batches, not in one long transaction; but
            # each step also takes what the last batch logged, so the log never grows
            # past the bound however large the batches (an overloaded writer's are). (The
            # log's counters are reset as each transaction begins: they are the last one's.)
            excess = self.history_backlog - self.history_backlog_max
            most = self._history_log.logged + BOUND_STEP
            return functools.partial(self._derive, max_versions=min(excess + CATCH_UP_STEP, most))
        late = self._oldest_logged is not None and time.time() - self._oldest_logged > HISTORY_LAG
        if load == "light" and late:
            return functools.partial(self._derive, max_versions=IDLE_STEP)
        return None

    def _derive(self, tx: WriteTransaction, max_versions: int) -> int:
        """Turn the oldest logged segments (at least one, up to ``max_versions`` versions)
        into change and lifetime rows, and delete them; returns the versions derived."""
        owner = (self.identity,) if self.shared else ()
        sizes = tx.conn.exec_driver_sql(self._segment_sizes, owner).fetchall()
        taken: set[int] = set()
        done = 0
        next_seen: float | None = None
        for seg_id, context, versions, observed_at in sizes:
            if context in self.fenced:
                continue
            if taken and done + versions > max_versions:
                next_seen = observed_at
                break
            taken.add(seg_id)
            done += versions
        if not taken:
            self._derivable = False
            self.history_backlog = 0
            self._oldest_logged = None
            return 0
        # (A full page of sizes all taken: more may follow, seen about now.)
        self._oldest_logged = next_seen if next_seen or len(sizes) < 512 else time.time()
        bodies = tx.conn.exec_driver_sql(self._segment_bodies, (max(taken), *owner))
        for seg_id, context, resource, kind, api_version, observed_at, body in bodies:
            if seg_id not in taken:
                continue  # a fenced context's
            tx.enter(context)
            what, next_seq = HistoryKind(resource, kind, api_version), functools.partial(tx.next_seq, context)
            try:
                rows = self.history.replay(tx.conn, context, what, observed_at, segment_ops(body), next_seq)
            except SQLAlchemyError:
                raise
            except Exception:
                # A segment that cannot be derived must not stop the ones after it.
                log.exception(
                    "%s: history segment %d of %s could not be derived; recorded as a gap",
                    context,
                    seg_id,
                    resource,
                )
                rows = [self.history.gap(context, what, "", next_seq, observed_at)]
            tx.queue_rows(self._upsert_object, rows)
        tx.conn.execute(delete(history_log).where(history_log.c.id.in_(taken)))
        self._history_log.derived += done
        return done

    def close(self, timeout: float = 30) -> None:
        """Commit what is queued and stop. A database still unreachable after
        ``timeout`` loses the queued writes: their checkpoints were not committed either,
        so the next start resumes the watches from before them."""
        if not self._loop.alive():
            return
        self._loop.close(timeout)
        self._lock.release()
        self.engine.dispose()

    # -- object writes -------------------------------------------------------

    def _upsert_rows(
        self,
        tx: WriteTransaction,
        context: str,
        desc: ResourceDescriptor,
        objs: Sequence[dict[str, Any]],
        gen: int | None,
        seen_at: float,
        events: Sequence[str] | None = None,
    ) -> None:
        """Upsert objects (and their derived rows), and log their history as seen at
        ``seen_at``; ``events``: each object's watch event type (None: a list's page)."""
        if not objs:
            return
        rows = []
        versions: list[LoggedOp] = []
        recorded = self.history.records(desc)
        for i, obj in enumerate(objs):
            clean = sanitize(obj, desc)
            if recorded:
                versions.append(
                    logged_upsert(
                        events[i] if events is not None else "LISTED",
                        obj,
                        clean,
                        metadata_only=desc.metadata_only,
                    )
                )
            m = clean["metadata"]
            namespace, name, rv = m.get("namespace"), m.get("name") or "", m.get("resourceVersion") or ""
            row = extract_row(clean, desc)
            rows.append(
                (
                    context,
                    desc.key,
                    m["uid"],
                    desc.table,
                    namespace,
                    name,
                    rv,
                    row,
                    tx.next_seq(context),
                    gen,
                    None,
                )
            )
            # Derived rows carry their object's resourceVersion: they change (take a new
            # seq) exactly when it does, and a relist generation tombstones them with it.
            rows.extend(
                (
                    context,
                    d.key,
                    uid,
                    d.table,
                    namespace,
                    f"{name}/{child}",
                    rv,
                    doc,
                    tx.next_seq(context),
                    gen,
                    None,
                )
                for d, uid, child, doc in derived_rows(clean, desc)
            )
        tx.queue_rows(self._upsert_object, rows)
        self._history_log.versions(context, HistoryKind.of(desc), seen_at, versions)

    def _tombstone(
        self,
        tx: WriteTransaction,
        context: str,
        desc: ResourceDescriptor,
        objs: Sequence[dict[str, Any]],
        seen_at: float,
    ) -> None:
        rows = []
        for obj in objs:
            m = obj.get("metadata") or {}
            rv = m.get("resourceVersion") or ""
            rows.append((tx.next_seq(context), rv, context, desc.key, m.get("uid")))
            # A deleted object's last state names its derived rows (their uids are stable).
            for derived in desc.derived:
                rows.extend(
                    (tx.next_seq(context), rv, context, derived.key, r["uid"]) for r in derived.rows(obj)
                )
        tx.queue_rows(self._tombstone_object, rows)
        if self.history.records(desc):
            gone = [
                logged_deletion(
                    str((o.get("metadata") or {}).get("uid")),
                    o,
                    sanitize(o, desc),
                    metadata_only=desc.metadata_only,
                )
                for o in objs
            ]
            self._history_log.versions(context, HistoryKind.of(desc), seen_at, gone)

    def apply_events(
        self,
        context: str,
        desc: ResourceDescriptor,
        events: Iterable[tuple[str, dict[str, Any]]],
        status: InformerStatus,
    ) -> None:
        """Apply watch events (ADDED/MODIFIED/DELETED/BOOKMARK) and then the informer's
        checkpoint, in one transaction, in order."""
        events = list(events)
        seen_at = time.time()

        def apply(tx: WriteTransaction) -> None:
            # Runs of writes and runs of deletions, each run in one go, the runs in the
            # order the events came.
            upserts: list[dict[str, Any]] = []
            kinds: list[str] = []
            deletes: list[dict[str, Any]] = []
            for kind, obj in events:
                if kind in ("ADDED", "MODIFIED"):
                    if deletes:
                        self._tombstone(tx, context, desc, deletes, seen_at)
                        deletes = []
                    upserts.append(obj)
                    kinds.append(kind)
                elif kind == "DELETED":
                    if upserts:
                        self._upsert_rows(tx, context, desc, upserts, None, seen_at, kinds)
                        upserts, kinds = [], []
                    deletes.append(obj)
            self._upsert_rows(tx, context, desc, upserts, None, seen_at, kinds)
            if deletes:
                self._tombstone(tx, context, desc, deletes, seen_at)
            self._write_status(tx, status)

        self._loop.submit(apply, context=context, coalesced=True)

    def begin_relist(self) -> int:
        """A new list generation: objects written with it survive ``end_relist``."""
        self._gen += 1
        return int(time.time() * 1000) * 1000 + self._gen

    def relist_page(
        self, context: str, desc: ResourceDescriptor, items: Sequence[dict[str, Any]], gen: int
    ) -> None:
        items = list(items)
        seen_at = time.time()
        self._loop.submit(
            lambda tx: self._upsert_rows(tx, context, desc, items, gen, seen_at),
            context=context,
            coalesced=True,
        )

    def end_relist(self, context: str, desc: ResourceDescriptor, gen: int, status: InformerStatus) -> None:
        """Tombstone every cached object of this resource that the list did not return,
        then record the list's resourceVersion: the cache now equals the list."""
        seen_at = time.time()

        def apply(tx: WriteTransaction) -> None:
            missing = (
                (objects.c.context == context)
                & (objects.c.deleted == False)  # noqa: E712
                & ((objects.c.list_gen != gen) | objects.c.list_gen.is_(None))
            )
            if self.history.records(desc):
                # The history first: it needs to know which objects the list did not return.
                tx.send_pending()
                gone = tx.conn.execute(
                    select(objects.c.uid).where(missing & (objects.c.resource == desc.key))
                )
                ops = [
                    logged_deletion(u, None, None, metadata_only=desc.metadata_only) for u in gone.scalars()
                ]
                ops.append(logged_list_end(status.resource_version or ""))
                self._history_log.versions(context, HistoryKind.of(desc), seen_at, ops)
            tx.conn.execute(
                update(objects)
                .where(missing & objects.c.resource.in_([desc.key, *(d.key for d in desc.derived)]))
                .values(deleted=True, seq=tx.next_seq(context))
            )
            self._write_status(tx, status)

        self._loop.submit(apply, context=context)

    def drop_resource(self, context: str, resource: str) -> None:
        """Tombstone every object of a resource that no longer exists (a deleted CRD)
        and forget its checkpoint."""

        def apply(tx: WriteTransaction) -> None:
            tx.conn.execute(
                update(objects)
                .where(
                    (objects.c.context == context)
                    & (objects.c.resource == resource)
                    & (objects.c.deleted == False)  # noqa: E712
                )
                .values(deleted=True, seq=tx.next_seq(context))
            )
            tx.conn.execute(
                checkpoints.delete().where(
                    (checkpoints.c.context == context) & (checkpoints.c.resource == resource)
                )
            )

        self._loop.submit(apply, context=context)

    def drop_context(self, context: str) -> None:
        """A context removed from the kubeconfig: tombstone all its objects, forget its
        checkpoints and cluster row, and record it as retired."""

        def apply(tx: WriteTransaction) -> None:
            seq = tx.next_seq(context)
            # Its history stays: it is what happened, and the destination keeps it.
            tx.conn.execute(
                update(objects)
                .where(
                    (objects.c.context == context)
                    & (objects.c.deleted == False)  # noqa: E712
                    & objects.c.resource.not_in(HISTORY_KEYS)
                )
                .values(deleted=True, seq=seq)
            )
            tx.conn.execute(checkpoints.delete().where(checkpoints.c.context == context))
            tx.conn.execute(clusters.delete().where(clusters.c.context == context))
            values = {"context": context, "retired_at": time.time(), "seq": seq}
            tx.conn.execute(self._upsert_stmt(retired_contexts, values, ["context"], ["retired_at", "seq"]))

        self._loop.submit(apply, context=context)

    def unretire_context(self, context: str) -> None:
        """A context (re)added to the kubeconfig is no longer retired."""
        self._loop.submit(
            lambda tx: tx.conn.execute(retired_contexts.delete().where(retired_contexts.c.context == context))
        )

    # -- status --------------------------------------------------------------

    def _write_status(self, tx: WriteTransaction, status: InformerStatus) -> None:
        tx.write_status((status.context, status.resource), _status_row(status))

    def write_status(self, status: InformerStatus) -> None:
        self.write_statuses([status])

    def write_statuses(self, statuses: Sequence[InformerStatus]) -> None:
        """Several informers' checkpoints, one operation per context. Each status is
        read now (the informer goes on changing it), as its row: a fleet's bookmark
        checkpoints are thousands every few seconds, and a row is the cheapest copy."""
        by_context: dict[str, list[tuple[Any, ...]]] = {}
        for status in statuses:
            by_context.setdefault(status.context, []).append(_status_row(status))

        for context, group in by_context.items():

            def apply(tx: WriteTransaction, group: list[tuple[Any, ...]] = group) -> None:
                for row in group:
                    tx.write_status((row[_CONTEXT], row[_RESOURCE]), row)

            self._loop.submit(apply, context=context, coalesced=True)

    def write_cluster(self, context: str, **values: Any) -> None:
        now = time.time()
        row = {"context": context, "created_at": now, "updated_at": now, **values}
        stmt = self._upsert_stmt(clusters, row, ["context"], [*values, "updated_at"])
        self._loop.submit(lambda tx: tx.conn.execute(stmt), context=context)

    # -- maintenance ---------------------------------------------------------

    def write_meta(self, **values: str) -> None:
        """Set ``meta`` keys (what the daemon tells ``status``, e.g. the kubeconfig generation)."""
        stmts = [
            self._upsert_stmt(meta, {"key": k, "value": v}, ["key"], ["value"]) for k, v in values.items()
        ]

        def apply(tx: WriteTransaction) -> None:
            for stmt in stmts:
                tx.conn.execute(stmt)

        self._loop.submit(apply)

    def heartbeat(self) -> None:
        """Record that a daemon is alive and keeping the cache warm."""
        self.write_meta(daemon_heartbeat=str(time.time()))

    def purge_tombstones(self, cutoffs: Mapping[str, int]) -> int:
        """Delete each context's tombstones with seq <= its cutoff; remember the purge
        points. Only contexts this writer purges (:meth:`_purgeable`)."""
        result: dict[str, int] = {}

        def apply(tx: WriteTransaction) -> None:
            gone = 0
            for ctx, cutoff in cutoffs.items():
                owned = (context_seqs.c.context == ctx) & self._purgeable()
                if not tx.conn.execute(
                    update(context_seqs)
                    .where(owned & (context_seqs.c.purged_seq < cutoff))
                    .values(purged_seq=cutoff)
                ).rowcount:
                    continue
                gone += (
                    tx.conn.execute(
                        objects.delete().where(
                            (objects.c.context == ctx)
                            & objects.c.deleted.is_(True)
                            & (objects.c.seq <= cutoff)
                        )
                    ).rowcount
                    or 0
                )
                tx.conn.execute(
                    retired_contexts.delete().where(
                        (retired_contexts.c.context == ctx) & (retired_contexts.c.seq <= cutoff)
                    )
                )
            result["n"] = gone

        self._loop.submit(apply, wait=True)
        return result["n"]

    def purge_history(self, now: float | None = None) -> int:
        """Delete history rows past the policy's retention and size, in the contexts
        this writer purges; returns how many."""
        result: dict[str, int] = {}
        contexts = select(context_seqs.c.context).where(self._purgeable())
        self.flush()  # what the log holds is history too: its age and size count

        def apply(tx: WriteTransaction) -> None:
            result["n"] = purge_history(
                tx.conn, contexts, self.history.policy, time.time() if now is None else now
            )

        self._loop.submit(apply, wait=True)
        return result["n"]

    def checkpoint_wal(self) -> None:
        """Fold a SQLite WAL back into the main file (a scheduled job keeps the -wal small).
        PASSIVE: never waits for readers, so a long sync cannot stall the daemon."""
        if self.path is None:
            return
        self.flush(history=False)
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
