"""The cache: objects, per-informer checkpoints and per-context change sequences.

A SQLite file (WAL mode) or a PostgreSQL database, through SQLAlchemy Core; what
differs between the two is in :mod:`watcher.cache.backend`. One writer thread per process
(:class:`CacheStore` owns it) applies everything in batched transactions, in the order
informers enqueued it, so an informer's checkpoint resourceVersion is never committed
ahead of the events it covers. Readers open their own connection and get a consistent
snapshot (one read transaction) without blocking the writer.

Derived rows (a pod's containers, ``ResourceDescriptor.derived``) are objects rows of
their own, under a resource key of their own, written and tombstoned in the same
transaction as the object they come from and carrying its resourceVersion.

Change sequences, one per context: every write of an object takes the next ``seq`` of
its context; a delete keeps the row as a tombstone (``deleted``) with a new seq. A
context's counter lives in ``context_seqs`` beside the name of the one writer that owns
the context, and every write transaction locks that row (``SELECT ... FOR UPDATE``)
before it takes a seq and checks it still owns the context. Hence, per context:

- commits happen in seq order: the next transaction waits for the row lock until the
  previous one committed, so a reader never sees seq n+1 without seq n;
- a reader's snapshot holds ``context_seqs.seq`` together with exactly the rows up to
  it, so the incremental cursor (context -> seq) never skips a change, whichever
  replica committed it;
- a replica that lost a context (its Lease taken over after it stopped renewing) finds
  another owner in the row and writes nothing more for it (fencing), while the new
  owner continues the same counter, from the checkpoints the old one committed.

One global counter could not give this with several writers: a seq taken by one
replica may commit after a higher seq taken by another, and a cursor that moved past
the higher one would skip the lower one forever.

The retention job purges old tombstones of a context and records its purge point, so
a reader with an older cursor for that context takes a full snapshot of it instead.

The parts live in :mod:`watcher.cache`: ``schema`` (the tables and the format version),
``writer`` (:class:`CacheStore`: every write operation, the locks), ``writeloop`` (the
writer thread, its batches and retries), ``transaction`` (one transaction's seqs,
fencing and statement batching), ``history`` (the history's rows), ``reader`` (every
read query: status, syncs, metrics, tests) and ``backend`` (where the cache lives,
SQLite or PostgreSQL, and what differs between the two). This module is the
front door: callers import from here.
"""

from __future__ import annotations

from watcher.cache.backend import CacheLocation, CacheLocked, CacheUnusable, snapshot_connection
from watcher.cache.reader import (
    ClusterView,
    ContextLog,
    changed_since,
    count_rows,
    deleted_uids,
    live_crds,
    live_names,
    live_row_cursor,
    live_versions,
    open_reader,
    read_checkpoints,
    read_cluster_view,
    read_clusters,
    read_context_logs,
    read_meta,
    read_positions,
    read_retired_contexts,
    reading,
    stored_resource_versions,
)
from watcher.cache.schema import SCHEMA_VERSION
from watcher.cache.transaction import ContextFenced
from watcher.cache.writeloop import MAX_RETRY_DELAY
from watcher.cache.writer import CacheStore, InformerStatus, writer_identity
from watcher.informerstate import UNSERVED, InformerState, informer_state

__all__ = [
    "MAX_RETRY_DELAY",
    "SCHEMA_VERSION",
    "UNSERVED",
    "CacheLocation",
    "CacheLocked",
    "CacheStore",
    "CacheUnusable",
    "ClusterView",
    "ContextFenced",
    "ContextLog",
    "InformerState",
    "InformerStatus",
    "changed_since",
    "count_rows",
    "deleted_uids",
    "informer_state",
    "live_crds",
    "live_names",
    "live_row_cursor",
    "live_versions",
    "open_reader",
    "read_checkpoints",
    "read_cluster_view",
    "read_clusters",
    "read_context_logs",
    "read_meta",
    "read_positions",
    "read_retired_contexts",
    "reading",
    "snapshot_connection",
    "stored_resource_versions",
    "writer_identity",
]
