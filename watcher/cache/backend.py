"""Where the cache lives: a SQLite file or a PostgreSQL database, as SQLAlchemy engines.

Everything that differs between the two backends is here, so ``watcher.state`` and
``watcher.snapshot`` speak one SQL:

- engines: SQLite in WAL mode with its pragmas; PostgreSQL through psycopg 3 with a
  connect timeout, and snapshot reads in REPEATABLE READ (one consistent view for a
  whole sync, as a SQLite read transaction gives);
- who may write: a SQLite file has one writer (an ``flock``); a PostgreSQL cache has
  one writer (a session advisory lock), or, for replicas sharing contexts by Lease,
  many writers that each own some contexts (a shared advisory lock: a lone daemon and
  a replica group never write the same database);
- the hot statements' placeholders (``?`` for sqlite3, ``%s`` for psycopg) and the
  upsert construct of the dialect;
- the streaming read cursor: sqlite3's cursor streams by itself; psycopg's would load
  the whole result, so PostgreSQL reads through a server-side cursor in binary (row
  documents arrive as bytes, not hex text).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.sql import Select

from watcher.errors import CacheError


class CacheUnusable(CacheError):
    """The cache cannot be opened or written (locked, read-only, unreachable, not a cache)."""


class CacheLocked(CacheUnusable):
    """Another process already writes this cache."""


@dataclass(frozen=True)
class CacheLocation:
    """A cache: a SQLite file (``cache_path``) or any SQLAlchemy URL (``cache_url``)."""

    url: URL

    @classmethod
    def of(cls, where: CacheLocation | Path | str) -> CacheLocation:
        """A location from a path, a URL or a location (``postgresql://`` means psycopg 3)."""
        if isinstance(where, CacheLocation):
            return where
        if isinstance(where, str) and "://" in where:
            try:
                url = make_url(where)
            except ArgumentError as exc:
                raise CacheUnusable(f"cache_url is not a database URL: {exc}") from None
            backend = url.get_backend_name()
            if backend == "postgresql":
                return cls(url.set(drivername="postgresql+psycopg"))
            if backend == "sqlite" and url.database:
                return cls.of(Path(url.database))
            raise CacheUnusable(
                f"cache_url {url.render_as_string(hide_password=True)}: the cache lives in a SQLite "
                "file (sqlite:///path) or a PostgreSQL database (postgresql://user@host/db)"
            )
        return cls(URL.create("sqlite+pysqlite", database=str(Path(where).expanduser())))

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def path(self) -> Path:
        """The SQLite file (only for a SQLite cache)."""
        assert self.is_sqlite and self.url.database
        return Path(self.url.database)

    def __str__(self) -> str:
        """For logs and errors: the file, or the URL without its password."""
        return str(self.path) if self.is_sqlite else self.url.render_as_string(hide_password=True)


def is_connection_error(location: CacheLocation, exc: BaseException) -> bool:
    """The database could not be reached (a restart, a network cut): worth retrying
    the same write for as long as it takes. A SQLite file is never "unreachable": its
    operational errors (read-only file, disk I/O) are faults of their own."""
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or (not location.is_sqlite and isinstance(exc, OperationalError))


# --------------------------------------------------------------------------- engines


def sqlite_engine(path: Path, *, readonly: bool) -> Engine:
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
            # 32 MiB of pages for the writer (SQLite's default is 2 MB): a watch read's
            # writes touch the objects table's indexes all over, and with history on its
            # heads too; the cache grows to hundreds of MB (bench/history_bench.py).
            cur.execute("PRAGMA cache_size = -32768")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


def postgres_engine(location: CacheLocation) -> Engine:
    return create_engine(
        location.url,
        pool_size=2,
        max_overflow=8,
        # A connection broken by a database restart is noticed before it is used.
        pool_pre_ping=True,
        connect_args={"connect_timeout": 10, "application_name": "k8s-watcher"},
    )


def snapshot_connection(engine: Engine) -> Connection:
    """A connection whose next transaction is one consistent, read-only view."""
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        # READ COMMITTED (the default) would let each statement of a sync see newer
        # commits: tables of one sync would disagree, and the cursor would not match.
        conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return conn


def check_reachable(location: CacheLocation, engine: Engine) -> None:
    """Connect once, so that an unreachable database fails at start with a clear error."""
    if location.is_sqlite:
        return
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise CacheUnusable(f"cache database {location} is unreachable: {_first_line(exc.orig)}") from None


def _first_line(exc: BaseException | None) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else repr(exc)


# --------------------------------------------------------------------------- statements


def driver_sql(engine: Engine, sql: str) -> str:
    """A hot statement written with ``?`` placeholders, in the driver's paramstyle."""
    return sql if engine.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


def upsert(engine: Engine) -> Callable[..., Any]:
    """The dialect's ``insert`` with ``on_conflict_do_update`` / ``excluded``."""
    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def stream_rows(conn: Connection, query: Select[Any], *, chunk: int = 4096) -> Any:
    """Run ``query`` on the raw DB-API cursor of ``conn`` (in its transaction) and return
    the cursor, for ``fetchmany``: SQLAlchemy's row objects cost more than the whole
    Arrow conversion. PostgreSQL: a server-side binary cursor, so memory stays bounded."""
    # render_postcompile: an IN list becomes one placeholder per value, which a raw
    # DB-API cursor understands (SQLAlchemy expands them only on its own execution).
    compiled = query.compile(conn, compile_kwargs={"render_postcompile": True})
    driver: Any = conn.connection.driver_connection  # psycopg or sqlite3: DB-API, untyped here
    if conn.dialect.name == "postgresql":
        cursor = driver.cursor(name=f"snapshot_{uuid.uuid4().hex[:12]}", binary=True)
        cursor.itersize = chunk
        cursor.execute(str(compiled), compiled.params)
        return cursor
    cursor = driver.cursor()
    cursor.execute(str(compiled), tuple(compiled.params[k] for k in compiled.positiontup or ()))
    return cursor


# --------------------------------------------------------------------------- writers


class FileWriterLock:
    """An exclusive ``flock`` on ``<cache>.lock`` for as long as a writer is open.

    The kernel drops the lock when the process dies, so a crashed daemon never leaves
    the cache locked.
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

    def ensure(self) -> None:
        """The kernel keeps an ``flock`` for as long as the process lives."""

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


class AdvisoryWriterLock:
    """A PostgreSQL session advisory lock on the cache, held on a connection of its own.

    Exclusive for a lone writer; shared for replicas, which own contexts one by one
    (``context_seqs.owner``, fenced in every write transaction). Exclusive and shared
    conflict, so a lone daemon never writes beside a replica group or another lone
    daemon. A replica also holds its group's key shared: :meth:`group_alive` tells
    whether another group still writes the database (``watcher.state`` refuses to join
    it). The lock goes with the session: a killed process frees it at once.
    """

    #: One key per database: the cache's tables are the whole database's.
    KEY = zlib.crc32(b"k8s-watcher cache writer")

    def __init__(self, location: CacheLocation, engine: Engine, *, group: str | None) -> None:
        self.location, self.engine, self.group = location, engine, group
        self.shared = group is not None
        self._take()

    @staticmethod
    def _group_key(group: str) -> int:
        return zlib.crc32(f"k8s-watcher replica group {group}".encode())

    def group_alive(self, group: str) -> bool:
        """Whether a replica of ``group`` holds the database (its key is held shared)."""
        assert self._conn is not None
        free = self._conn.execute(
            text("SELECT pg_try_advisory_lock(:k)"), {"k": self._group_key(group)}
        ).scalar()
        if free:
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._group_key(group)})
        return not free

    def _take(self) -> None:
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        fn = "pg_try_advisory_lock_shared" if self.shared else "pg_try_advisory_lock"
        if not conn.execute(text(f"SELECT {fn}(:k)"), {"k": self.KEY}).scalar():
            conn.close()
            who = (
                "a lone daemon: replicas need it to themselves"
                if self.shared
                else "another daemon or replica group"
            )
            raise CacheLocked(
                f"cache database {self.location} is already written by {who}; a cache has one writer, "
                "or one group of replicas sharing its contexts by Lease (--replicas-lease-namespace)"
            )
        if self.group is not None:
            conn.execute(text("SELECT pg_advisory_lock_shared(:k)"), {"k": self._group_key(self.group)})
        self._conn: Connection | None = conn

    def ensure(self) -> None:
        """After the database was unreachable: a restart ended the session and the lock
        with it; take it again (:class:`CacheLocked` if another writer got it meanwhile)."""
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return
            except DBAPIError:
                self._drop()
        self._take()

    def _drop(self) -> None:
        # Closed for good, not returned to the pool: ending the session releases the lock.
        if self._conn is not None:
            self._conn.invalidate()
            self._conn.close()
            self._conn = None

    def release(self) -> None:
        self._drop()
