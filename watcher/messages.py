"""The plain messages a sync yields (and the plain options it is asked with), before
anything speaks protobuf.

``watcher.plugin`` yields these; ``watcher.server`` (the gRPC servicer) is the one place
that turns them into CloudQuery protocol v3 messages, as the CloudQuery Python SDK
splits ``SyncInsertMessage`` and friends from its servicer. The SDK's own classes are
not used: importing them costs 0.3 s (its schema module pulls in pandas), and it has
no class for the protocol's delete-record message.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class SyncMigrateTable:
    """Create or migrate a destination table to ``schema``."""

    schema: pa.Schema


@dataclass(frozen=True)
class SyncInsert:
    """Rows to upsert (or append, by the destination's write mode)."""

    record: pa.RecordBatch


@dataclass(frozen=True)
class SyncDeleteRecord:
    """``DELETE FROM table WHERE context_name = context [AND uid = uid]``."""

    table: str
    context: str
    uid: str | None = None


@dataclass(frozen=True)
class SyncError:
    """A failure the CLI should report without ending the sync."""

    table: str
    error: str


@dataclass(frozen=True)
class SyncCheckpoint:
    """State-backend rows the CLI persists once everything sent before is committed."""

    record: pa.RecordBatch


@dataclass(frozen=True)
class StateBackend:
    """Where CloudQuery's state backend is (``backend_options`` of the source)."""

    connection: str
    table_name: str


@dataclass(frozen=True)
class Shard:
    """``cloudquery sync --shard num/total``: this sync sends one shard's (table, context) pairs.

    A pair belongs to the shard its names hash to (CRC-32, stable across runs and whatever
    else is synced), so n runs write every pair exactly once, as the Go SDK's scheduler
    shards its (table, client) pairs. Pairs, not whole tables, spread a fleet's biggest
    table (pods) over the shards.

    A snapshot sync shards whole tables instead (``context=None``): each sharded CLI run
    has its own sync time, and ``overwrite-delete-stale`` deletes a table's rows of this
    source older than it, so a table written by two snapshot shards would lose the other
    shard's rows. An incremental sync deletes through delete-record messages scoped to a
    context (its destination runs in ``overwrite``, without delete-stale): pairs are safe.
    """

    num: int
    total: int

    def owns(self, table: str, context: str | None = None) -> bool:
        key = table if context is None else f"{table}\0{context}"
        return zlib.crc32(key.encode()) % self.total == self.num - 1

    def __str__(self) -> str:
        return f"{self.num}/{self.total}"


@dataclass(frozen=True)
class SyncOptions:
    """What the CLI asks of one sync, as plain values."""

    tables: tuple[str, ...] = ("*",)
    skip_tables: tuple[str, ...] = ()
    backend: StateBackend | None = None
    supports_checkpoints: bool = False
    with_error_messages: bool = False
    #: Set when the CLI went away (or the server stops): a ``follow`` sync ends.
    stop: threading.Event | None = None
    shard: Shard | None = None


SyncMessage = SyncMigrateTable | SyncInsert | SyncDeleteRecord | SyncError | SyncCheckpoint
