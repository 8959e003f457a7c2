"""The cache's schema: its tables, its format version, and whether a file holds a
cache of this format. What each table is for: docs/architecture.md and the design
notes in :mod:`watcher.state`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    event,
    text,
)

#: The cache format (see ``tables.encode_row``). 2: JSON columns stored as is.
#: 3: derived rows (a pod's containers) cached beside their object. 4: one change
#: sequence per context (``context_seqs``) instead of one for the whole cache.
#: 5: more columns in some row documents (compat) and the history tables.
#: A SQLite cache of another format is moved aside and rebuilt (a relist).
SCHEMA_VERSION = "5"

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
    Column("seq", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("list_gen", BigInteger),
    #: History rows only (``watcher.history``): when a change was recorded, or when a
    #: lifetime's object was deleted; the retention purge's clock. NULL otherwise.
    Column("observed_at", Float),
    # seq last: an incremental or follow read of one table and context is a range scan.
    Index("objects_by_table", "table_name", "context", "deleted", "seq"),
    # What changed in a context since a cursor (a follow sync's poll).
    Index("objects_by_context_seq", "context", "seq"),
    # The history purge's scan, oldest first (partial: object rows have no observed_at).
    Index(
        "objects_history_age",
        "observed_at",
        sqlite_where=text("observed_at IS NOT NULL"),
        postgresql_where=text("observed_at IS NOT NULL"),
    ),
)

#: The last recorded version of each object with a history (``watcher.cache.history``):
#: the next change's patch starts from ``doc``, its managers from ``managers``.
history_heads = Table(
    "history_heads",
    metadata,
    Column("context", String, primary_key=True),
    Column("resource", String, primary_key=True),
    Column("uid", String, primary_key=True),
    Column("resource_version", String, nullable=False),
    Column("doc", LargeBinary, nullable=False),
    Column("managers", LargeBinary, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("first_seen_as", String, nullable=False),
    Column("first_seq", BigInteger, nullable=False),
)

#: Versions of objects with a history, logged by the writer in the transaction that
#: stores them and not yet turned into change and lifetime rows (``watcher.cache.history``):
#: one row per run of a watch read's or list page's versions, derived in ``id`` order
#: (then deleted) by the same writer when it has nothing else to write.
history_log = Table(
    "history_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("context", String, nullable=False),
    Column("resource", String, nullable=False),
    Column("kind", String, nullable=False),
    Column("api_version", String, nullable=False),
    Column("observed_at", Float, nullable=False),
    Column("versions", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Index("history_log_by_context", "context", "id"),
)


# PostgreSQL would compress each segment (pglz, in the server, while the writer waits
# for its INSERT): a segment is read once and deleted within seconds, so store it as is.
@event.listens_for(history_log, "after_create")
def _store_segments_as_they_are(_table: Table, connection: Any, **_: Any) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("ALTER TABLE history_log ALTER COLUMN body SET STORAGE EXTERNAL")


#: The (context, resource) pairs whose history has begun: a later list of one follows a
#: watch that ended (a 410, a restart past compaction): a gap in its history.
history_followed = Table(
    "history_followed",
    metadata,
    Column("context", String, primary_key=True),
    Column("resource", String, primary_key=True),
    Column("since", Float, nullable=False),
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

#: Each context's change sequence and the writer that owns the context (module doc).
context_seqs = Table(
    "context_seqs",
    metadata,
    Column("context", String, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    #: Tombstones up to here are purged: an older cursor needs a full snapshot.
    Column("purged_seq", BigInteger, nullable=False, default=0),
    Column("owner", String),
    Column("owned_since", Float),
)

#: Contexts removed from the kubeconfig while a daemon ran: their objects were
#: tombstoned at ``seq`` (of the context's own sequence), so an incremental sync
#: deletes their rows. Purged with the tombstones.
retired_contexts = Table(
    "retired_contexts",
    metadata,
    Column("context", String, primary_key=True),
    Column("retired_at", Float, nullable=False),
    Column("seq", BigInteger, nullable=False),
)


def format_problem(found: str | None) -> str | None:
    if found != SCHEMA_VERSION:
        # Rows of another format would be misread, not merely slow: start over.
        return f"cache format {found or 'unknown'}, this version reads format {SCHEMA_VERSION}"
    return None


def unusable_reason(path: Path, *, thorough: bool) -> str | None:
    """Why the file is not a readable cache of this version (None: it is). ``thorough``
    runs SQLite's quick_check, which reads every page: done once when a writer opens
    the file, not per sync."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if problem := format_problem(found[0] if found else None):
                return problem
            if thorough:
                ok = con.execute("PRAGMA quick_check").fetchone()
                if not (ok and ok[0] == "ok"):
                    return f"integrity check failed: {ok[0] if ok else 'no answer'}"
            return None
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return f"not a usable SQLite database: {exc}"
