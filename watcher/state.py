"""The on-disk cache: objects, per-informer checkpoints and the change sequence.

SQLite in WAL mode through SQLAlchemy Core. One writer thread (:class:`CacheStore`
owns it) applies everything in batched transactions, in the order informers
enqueued it, so an informer's checkpoint resourceVersion is never committed ahead
of the events it covers. Readers open their own connection and get a consistent
snapshot (one read transaction) without blocking the writer.

Derived rows (a pod's containers, ``ResourceDescriptor.derived``) are objects rows of
their own, under a resource key of their own, written and tombstoned in the same
transaction as the object they come from and carrying its resourceVersion.

Change sequence: every write of an object takes a new ``seq`` from one monotonic
counter; a delete keeps the row as a tombstone (``deleted = 1``) with a new seq.
``seq > cursor`` is therefore exactly "changed or deleted since the cursor". The
retention job purges old tombstones and records the highest purged seq, so a reader
with an older cursor knows it must take a full snapshot instead.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from watcher.errors import CacheError
from watcher.resources import ResourceDescriptor
from watcher.tables import columns_of, decode_row, derived_rows, extract_row, sanitize

log = logging.getLogger(__name__)

#: The row document format (see ``tables.encode_row``). 2: JSON columns stored as is.
#: 3: derived rows (a pod's containers) cached beside their object; a cache of format 2
#: lacks them, and informers resuming from it would never write them.
SCHEMA_VERSION = "3"

metadata = MetaData()

objects = Table(
    "objects",
    metadata,
    Column("context", String, primary_key=True),
    Column("resource", String, primary_key=True),
    Column("uid", String, primary_key=True),
    Column("table_name", String, nullable=False),
    Column("namespace", String),
    Column("name", String, nullable=False),
    Column("resource_version", String, nullable=False),
    Column("row", LargeBinary, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("list_gen", Integer),
    # seq last: an incremental or follow read of one table and context is a range scan.
    Index("objects_by_table", "table_name", "context", "deleted", "seq"),
    Index("objects_by_seq", "seq"),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("context", String, primary_key=True),
    Column("resource", String, primary_key=True),
    Column("table_name", String, nullable=False),
    Column("resource_version", String),
    Column("state", String, nullable=False),
    Column("last_list_at", Float),
    Column("last_event_at", Float),
    Column("last_error", String),
    Column("lists", Integer, nullable=False, default=0),
    Column("relists", Integer, nullable=False, default=0),
    Column("watches", Integer, nullable=False, default=0),
    Column("events", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)

clusters = Table(
    "clusters",
    metadata,
    Column("context", String, primary_key=True),
    Column("cluster_name", String),
    Column("server", String),
    Column("ca_file", String),
    Column("insecure_skip_verify", Boolean),
    Column("namespace", String),
    Column("kubernetes_version", String),
    Column("last_error", String),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)

#: Contexts removed from the kubeconfig while a daemon ran: their objects were
#: tombstoned at ``seq``, so an incremental sync deletes their rows. Purged with the
#: tombstones.
retired_contexts = Table(
    "retired_contexts",
    metadata,
    Column("context", String, primary_key=True),
    Column("retired_at", Float, nullable=False),
    Column("seq", Integer, nullable=False),
)


# The hot write statements, as plain SQL run with executemany: building SQLAlchemy
# constructs per batch cost more than SQLite itself.
_UPSERT_OBJECT = """
INSERT INTO objects (context, resource, uid, table_name, namespace, name, resource_version, row, seq, deleted, list_gen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)
ON CONFLICT (context, resource, uid) DO UPDATE SET
    namespace = excluded.namespace,
    name = excluded.name,
    row = excluded.row,
    -- An object re-listed unchanged keeps its seq: a relist alone must not make the
    -- next incremental sync re-emit every object. (Right-hand sides see the old row.)
    seq = CASE WHEN objects.resource_version = excluded.resource_version AND objects.deleted = 0
               THEN objects.seq ELSE excluded.seq END,
    resource_version = excluded.resource_version,
    deleted = 0,
    list_gen = coalesce(excluded.list_gen, objects.list_gen)
"""
_TOMBSTONE_OBJECT = """
UPDATE objects SET deleted = 1, seq = ?, resource_version = ?
WHERE context = ? AND resource = ? AND uid = ? AND deleted = 0
"""
_STATUS_COLUMNS = [c.name for c in checkpoints.columns]
_UPSERT_STATUS = (
    f"INSERT INTO checkpoints ({', '.join(_STATUS_COLUMNS)}) VALUES ({', '.join('?' for _ in _STATUS_COLUMNS)}) "
    "ON CONFLICT (context, resource) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STATUS_COLUMNS if c not in ("context", "resource"))
)


class CacheUnusable(CacheError):
    """The cache file cannot be opened or written (locked, read-only, not a database)."""


class CacheLocked(CacheUnusable):
    """Another process already writes this cache file: a cache has one writer."""


class _WriterLock:
    """An exclusive ``flock`` on ``<cache>.lock`` for as long as a :class:`CacheStore` is open.

    The change sequence is handed out by the one writer from a counter seeded with the
    file's highest seq; two writers would hand out the same numbers and an incremental
    cursor would skip changes. The kernel drops the lock when the process dies, so a
    crashed daemon never leaves the cache locked.
    """

    def __init__(self, cache: Path) -> None:
        self.path = Path(f"{cache}.lock")
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CacheLocked(
                f"cache file {cache} is already written by another process (pid {holder}); "
                "a cache has one writer: point this one at another cache_path, or sync "
                "through the daemon that owns it (registry: grpc)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


# --------------------------------------------------------------------------- engine


def _engine(path: Path, *, readonly: bool) -> Engine:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    engine = create_engine(
        "sqlite+pysqlite:///" + str(path),
        creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30),
        pool_pre_ping=False,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's BEGIN below start transactions (pysqlite's own handling
        # would not start one for SELECTs, and readers need one for a snapshot).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        if not readonly:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does (it copies the mode to -wal and -shm)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


def _unusable_reason(path: Path, *, thorough: bool) -> str | None:
    """Why the file is not a readable cache of this version (None: it is). ``thorough``
    runs SQLite's quick_check, which reads every page: done once when a writer opens
    the file, not per sync."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if not found or found[0] != SCHEMA_VERSION:
                # Rows of another format would be misread, not merely slow: start over.
                return f"cache format {found[0] if found else 'unknown'}, this version reads format {SCHEMA_VERSION}"
            if thorough:
                ok = con.execute("PRAGMA quick_check").fetchone()
                if not (ok and ok[0] == "ok"):
                    return f"integrity check failed: {ok[0] if ok else 'no answer'}"
            return None
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return f"not a usable SQLite database: {exc}"


# --------------------------------------------------------------------------- writes


@dataclass
class _Op:
    """One queued write; ``apply`` runs on the writer thread inside a transaction."""

    apply: Callable[[Any, CacheStore], None]
    done: threading.Event | None = None


#: The checkpoint state of a built-in resource the API server does not serve: no
#: informer runs for it, and a sync does not count it as cold.
UNSERVED = "unserved"


@dataclass
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


class CacheStore:
    """Owner of the cache file and its single writer thread; at most one per file
    (a second one, in any process, raises :class:`CacheLocked`)."""

    def __init__(self, path: Path, *, batch_max: int = 5000, batch_wait: float = 0.02) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _WriterLock(self.path)
        except OSError as exc:
            raise CacheUnusable(f"cache file {self.path} cannot be created: {exc}") from exc
        try:
            self._prepare_file()
            self.engine = _engine(self.path, readonly=False)
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                for key, value in (("schema_version", SCHEMA_VERSION), ("cache_id", uuid.uuid4().hex)):
                    # The cache id tells an incremental cursor which file its seq belongs to.
                    conn.execute(sqlite_insert(meta).values(key=key, value=value).on_conflict_do_nothing())
                # Safe only because this is the one writer (the lock above).
                self._seq = max_seq(conn)
        except Exception as exc:
            self._lock.release()
            if isinstance(exc, CacheUnusable):
                raise
            raise CacheUnusable(f"cache file {self.path} cannot be written: {exc}") from exc
        self._batch_max = batch_max
        self._batch_wait = batch_wait
        # Bounded: when the disk falls behind, informers wait here instead of piling up
        # parsed objects in memory (a relist page holds up to 500 of them).
        self._queue: queue.Queue[_Op | None] = queue.Queue(maxsize=4)
        self._gen = 0
        self.dropped_batches = 0
        self._writer = threading.Thread(target=self._write_loop, name="cache-writer", daemon=True)
        self._writer.start()

    def _prepare_file(self) -> None:
        reason = (
            _unusable_reason(self.path, thorough=True)
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

    # -- the writer thread ---------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._batch_wait
            stop = False
            while len(batch) < self._batch_max:
                try:
                    op = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            self._apply(batch)
            if stop:
                return

    def _apply(self, batch: list[_Op]) -> None:
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    for op in batch:
                        op.apply(conn, self)
                break
            except Exception:
                log.exception("cache write of %d operations failed (attempt %d)", len(batch), attempt + 1)
                time.sleep(0.5 * (attempt + 1))
        else:
            # Events were lost on the way to disk: the cache no longer follows the
            # watches. The informer manager sees this counter and relists everything.
            self.dropped_batches += 1
            log.error(
                "cache write of %d operations dropped after 5 attempts; informers will relist", len(batch)
            )
        for op in batch:
            if op.done is not None:
                op.done.set()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _submit(self, fn: Callable[[Any, CacheStore], None], *, wait: bool = False) -> None:
        if not self._writer.is_alive():
            raise CacheUnusable(f"cache {self.path} is closed")
        done = threading.Event() if wait else None
        self._queue.put(_Op(fn, done))
        if done is not None:
            done.wait()

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
            return [decode_row(r, columns_of(descriptor)) for r in rows]

    def resource_versions(self, context: str) -> dict[str, str]:
        """The resourceVersion each informer of ``context`` resumes its watch from."""
        with self.engine.connect() as conn:
            return stored_resource_versions(conn, context)

    def writer_alive(self) -> bool:
        return self._writer.is_alive()

    def flush(self) -> None:
        """Block until everything enqueued so far is committed."""
        self._submit(lambda _c, _s: None, wait=True)

    def close(self) -> None:
        if not self._writer.is_alive():
            return
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=30)
        self.engine.dispose()
        self._lock.release()

    # -- object writes -------------------------------------------------------

    def _upsert_rows(
        self,
        conn: Any,
        context: str,
        desc: ResourceDescriptor,
        objs: Sequence[dict[str, Any]],
        gen: int | None,
    ) -> None:
        if not objs:
            return
        rows = []
        for obj in objs:
            clean = sanitize(obj, desc)
            m = clean["metadata"]
            namespace, name, rv = m.get("namespace"), m.get("name") or "", m.get("resourceVersion") or ""
            row = extract_row(clean, desc)
            rows.append(
                (context, desc.key, m["uid"], desc.table, namespace, name, rv, row, self._next_seq(), gen)
            )
            # Derived rows carry their object's resourceVersion: they change (take a new
            # seq) exactly when it does, and a relist generation tombstones them with it.
            rows.extend(
                (context, d.key, uid, d.table, namespace, f"{name}/{child}", rv, doc, self._next_seq(), gen)
                for d, uid, child, doc in derived_rows(clean, desc)
            )
        conn.exec_driver_sql(_UPSERT_OBJECT, rows)

    def _tombstone(
        self, conn: Any, context: str, desc: ResourceDescriptor, objs: Sequence[dict[str, Any]]
    ) -> None:
        rows = []
        for obj in objs:
            m = obj.get("metadata") or {}
            rv = m.get("resourceVersion") or ""
            rows.append((self._next_seq(), rv, context, desc.key, m.get("uid")))
            # A deleted object's last state names its derived rows (their uids are stable).
            for derived in desc.derived:
                rows.extend((self._next_seq(), rv, context, derived.key, r["uid"]) for r in derived.rows(obj))
        conn.exec_driver_sql(_TOMBSTONE_OBJECT, rows)

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

        def apply(conn: Any, store: CacheStore) -> None:
            batch: list[dict[str, Any]] = []
            for kind, obj in events:
                if kind in ("ADDED", "MODIFIED"):
                    batch.append(obj)
                    continue
                store._upsert_rows(conn, context, desc, batch, None)
                batch = []
                if kind == "DELETED":
                    store._tombstone(conn, context, desc, [obj])
            store._upsert_rows(conn, context, desc, batch, None)
            store._write_status(conn, status)

        self._submit(apply)

    def begin_relist(self) -> int:
        """A new list generation: objects written with it survive ``end_relist``."""
        self._gen += 1
        return int(time.time() * 1000) * 1000 + self._gen

    def relist_page(
        self, context: str, desc: ResourceDescriptor, items: Sequence[dict[str, Any]], gen: int
    ) -> None:
        items = list(items)
        self._submit(lambda conn, store: store._upsert_rows(conn, context, desc, items, gen))

    def end_relist(self, context: str, desc: ResourceDescriptor, gen: int, status: InformerStatus) -> None:
        """Tombstone every cached object of this resource that the list did not return,
        then record the list's resourceVersion: the cache now equals the list."""

        def apply(conn: Any, store: CacheStore) -> None:
            conn.execute(
                update(objects)
                .where(
                    (objects.c.context == context)
                    & objects.c.resource.in_([desc.key, *(d.key for d in desc.derived)])
                    & (objects.c.deleted == False)  # noqa: E712
                    & ((objects.c.list_gen != gen) | objects.c.list_gen.is_(None))
                )
                .values(deleted=True, seq=store._next_seq())
            )
            store._write_status(conn, status)

        self._submit(apply)

    def drop_resource(self, context: str, resource: str) -> None:
        """Tombstone every object of a resource that no longer exists (a deleted CRD)
        and forget its checkpoint."""

        def apply(conn: Any, store: CacheStore) -> None:
            conn.execute(
                update(objects)
                .where(
                    (objects.c.context == context)
                    & (objects.c.resource == resource)
                    & (objects.c.deleted == False)  # noqa: E712
                )
                .values(deleted=True, seq=store._next_seq())
            )
            conn.execute(
                checkpoints.delete().where(
                    (checkpoints.c.context == context) & (checkpoints.c.resource == resource)
                )
            )

        self._submit(apply)

    def drop_context(self, context: str) -> None:
        """A context removed from the kubeconfig: tombstone all its objects, forget its
        checkpoints and cluster row, and record it as retired."""

        def apply(conn: Any, store: CacheStore) -> None:
            seq = store._next_seq()
            conn.execute(
                update(objects)
                .where((objects.c.context == context) & (objects.c.deleted == False))  # noqa: E712
                .values(deleted=True, seq=seq)
            )
            conn.execute(checkpoints.delete().where(checkpoints.c.context == context))
            conn.execute(clusters.delete().where(clusters.c.context == context))
            stmt = sqlite_insert(retired_contexts).values(context=context, retired_at=time.time(), seq=seq)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[retired_contexts.c.context],
                    set_={"retired_at": stmt.excluded.retired_at, "seq": stmt.excluded.seq},
                )
            )

        self._submit(apply)

    def unretire_context(self, context: str) -> None:
        """A context (re)added to the kubeconfig is no longer retired."""
        self._submit(
            lambda conn, _store: conn.execute(
                retired_contexts.delete().where(retired_contexts.c.context == context)
            )
        )

    # -- status --------------------------------------------------------------

    @staticmethod
    def _write_status(conn: Any, status: InformerStatus) -> None:
        conn.exec_driver_sql(_UPSERT_STATUS, tuple(getattr(status, c) for c in _STATUS_COLUMNS))

    def write_status(self, status: InformerStatus) -> None:
        snapshot = InformerStatus(**status.__dict__)
        self._submit(lambda conn, store: store._write_status(conn, snapshot))

    def write_cluster(self, context: str, **values: Any) -> None:
        now = time.time()

        def apply(conn: Any, _store: CacheStore) -> None:
            stmt = sqlite_insert(clusters).values(context=context, created_at=now, updated_at=now, **values)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[clusters.c.context],
                    set_={**{k: stmt.excluded[k] for k in values}, "updated_at": now},
                )
            )

        self._submit(apply)

    # -- maintenance ---------------------------------------------------------

    def write_meta(self, **values: str) -> None:
        """Set ``meta`` keys (what the daemon tells ``status``, e.g. the kubeconfig generation)."""

        def apply(conn: Any, _store: CacheStore) -> None:
            for key, value in values.items():
                stmt = sqlite_insert(meta).values(key=key, value=value)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[meta.c.key], set_={"value": stmt.excluded.value}
                    )
                )

        self._submit(apply)

    def heartbeat(self) -> None:
        """Record that a daemon is alive and keeping the cache warm."""
        now = str(time.time())

        def apply(conn: Any, _store: CacheStore) -> None:
            stmt = sqlite_insert(meta).values(key="daemon_heartbeat", value=now)
            conn.execute(
                stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": stmt.excluded.value})
            )

        self._submit(apply)

    def purge_tombstones(self, older_than_seq: int) -> int:
        """Delete tombstones with seq <= ``older_than_seq``; remember the purge point."""
        result: dict[str, int] = {}

        def apply(conn: Any, _store: CacheStore) -> None:
            gone = conn.execute(
                objects.delete().where((objects.c.deleted == True) & (objects.c.seq <= older_than_seq))  # noqa: E712
            ).rowcount
            conn.execute(retired_contexts.delete().where(retired_contexts.c.seq <= older_than_seq))
            stmt = sqlite_insert(meta).values(key="purged_seq", value=str(older_than_seq))
            conn.execute(
                stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": stmt.excluded.value})
            )
            result["n"] = int(gone or 0)

        self._submit(apply, wait=True)
        return result["n"]

    def checkpoint_wal(self) -> None:
        """Fold the WAL back into the main file (a scheduled job keeps the -wal small).
        PASSIVE: never waits for readers, so a long sync cannot stall the daemon."""
        self.flush()
        with self.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    @property
    def seq(self) -> int:
        return self._seq


# --------------------------------------------------------------------------- reads


def open_reader(path: Path) -> Engine:
    """A read-only engine on the cache file (a daemon may be writing it meanwhile)."""
    if not Path(path).exists():
        raise CacheUnusable(f"cache file {path} does not exist")
    reason = _unusable_reason(Path(path), thorough=False)
    if reason:
        raise CacheUnusable(f"cache file {path}: {reason}")
    return _engine(Path(path), readonly=True)


def read_checkpoints(conn: Any, context: str | None = None) -> list[dict[str, Any]]:
    query = select(checkpoints).order_by(checkpoints.c.context, checkpoints.c.resource)
    if context is not None:
        query = query.where(checkpoints.c.context == context)
    return [dict(r._mapping) for r in conn.execute(query)]


@contextmanager
def reading(path: Path) -> Iterator[Any]:
    """One read-only connection to the cache file (status, tests, bench)."""
    engine = open_reader(path)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def stored_resource_versions(conn: Any, context: str) -> dict[str, str]:
    """resource -> the resourceVersion its informer checkpointed (listed resources only)."""
    rows = conn.execute(
        select(checkpoints.c.resource, checkpoints.c.resource_version).where(checkpoints.c.context == context)
    ).all()
    return {str(r): str(v) for r, v in rows if v}


def live_versions(conn: Any, context: str, resource: str, namespace: str | None = None) -> dict[str, str]:
    """uid -> resourceVersion of the live (not deleted) cached objects of one resource
    (in one namespace, if given): what a consistent LIST of the API server must equal."""
    query = select(objects.c.uid, objects.c.resource_version).where(
        (objects.c.context == context) & (objects.c.resource == resource) & (objects.c.deleted == False)  # noqa: E712
    )
    if namespace is not None:
        query = query.where(objects.c.namespace == namespace)
    return {str(u): str(v) for u, v in conn.execute(query)}


def live_names(conn: Any, context: str, resource: str, namespace: str | None = None) -> list[str]:
    """Names of the live cached objects of one resource (in one namespace, if given)."""
    query = select(objects.c.name).where(
        (objects.c.context == context) & (objects.c.resource == resource) & (objects.c.deleted == False)  # noqa: E712
    )
    if namespace is not None:
        query = query.where(objects.c.namespace == namespace)
    return [str(n) for (n,) in conn.execute(query)]


def read_clusters(conn: Any) -> list[dict[str, Any]]:
    """What the cache knows about each context (kubeconfig entry, server version, last error)."""
    return [dict(r._mapping) for r in conn.execute(select(clusters).order_by(clusters.c.context))]


def read_retired_contexts(conn: Any) -> list[dict[str, Any]]:
    """Contexts removed from the kubeconfig whose tombstones are still kept."""
    query = select(retired_contexts).order_by(retired_contexts.c.context)
    return [dict(r._mapping) for r in conn.execute(query)]


def read_meta(conn: Any, key: str) -> str | None:
    return conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()


def max_seq(conn: Any) -> int:
    return int(conn.execute(select(func.coalesce(func.max(objects.c.seq), 0))).scalar_one())


def count_rows(conn: Any) -> dict[str, int]:
    """Live (not deleted) cached objects per table."""
    rows = conn.execute(
        text("SELECT table_name, count(*) FROM objects WHERE deleted = 0 GROUP BY table_name")
    ).all()
    return {str(t): int(n) for t, n in rows}
