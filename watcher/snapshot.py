"""SnapshotReader: one read transaction over the cache, out as Arrow record batches.

Everything a sync emits comes from a single read transaction, so the tables of one
sync agree with each other and with the change positions read first, even while
daemons keep writing (SQLite WAL readers see the database as of their first read;
PostgreSQL reads in REPEATABLE READ, see ``cache.backend.snapshot_connection``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from watcher import state
from watcher.catalog import ALL_TABLES, schema_for
from watcher.clusters import CLUSTERS_TABLE, ClusterFacts, cluster_batch
from watcher.crdtables import CustomTable, custom_tables
from watcher.resources import custom_object_columns
from watcher.tables import COMMON_COLUMNS, decode_row, rows_to_batch

if TYPE_CHECKING:
    from sqlalchemy import Engine

#: The cached columns of a custom object (k8s_custom_objects).
CUSTOM_OBJECT_COLUMNS = COMMON_COLUMNS + custom_object_columns("")


@dataclass(frozen=True)
class Freshness:
    """How current one context's cached copy of one resource is."""

    context: str
    resource: str
    state: str
    listed: bool
    updated_at: float


class SnapshotReader:
    """A consistent read of the cache file. Use as a context manager."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_max_rows: int = 20_000,
        batch_max_bytes: int = 2 << 20,
        owns_engine: bool = False,
    ) -> None:
        self.engine = engine
        self.batch_max_rows = batch_max_rows
        self.batch_max_bytes = batch_max_bytes
        self._owns_engine = owns_engine
        #: The CRDs' typed tables this snapshot reads (load_custom_tables).
        self.custom: dict[str, CustomTable] = {}

    @classmethod
    def open(cls, where: state.CacheLocation | Path | str, **kwargs: Any) -> SnapshotReader:
        """A reader with an engine of its own, disposed on exit (a daemon serves many
        syncs: one pooled connection per sync would leak file descriptors)."""
        return cls(state.open_reader(where), owns_engine=True, **kwargs)

    def __enter__(self) -> SnapshotReader:
        self._conn = state.snapshot_connection(self.engine)
        self._tx = self._conn.begin()
        # The first read pins the snapshot; every later read in this transaction sees it.
        #: context -> its change sequence: the rows read here are exactly those up to ``seq``.
        self.logs = state.read_context_logs(self._conn)
        self.position = {ctx: log.seq for ctx, log in self.logs.items()}
        self.cache_id = state.read_meta(self._conn, "cache_id") or ""
        return self

    def __exit__(self, *exc: object) -> None:
        self._tx.rollback()
        self._conn.close()
        if self._owns_engine:
            self.engine.dispose()

    # -- freshness -----------------------------------------------------------

    def freshness(self) -> list[Freshness]:
        return [
            Freshness(
                context=r["context"],
                resource=r["resource"],
                state=r["state"],
                listed=bool(r["resource_version"]),
                updated_at=float(r["updated_at"]),
            )
            for r in state.read_checkpoints(self._conn)
        ]

    def cached_tables(self, contexts: list[str]) -> dict[str, str]:
        """table -> resource key of what the informers of these contexts write (the
        resources found in discovery included)."""
        return {
            str(r["table_name"]): str(r["resource"])
            for ctx in contexts
            for r in state.read_checkpoints(self._conn, ctx)
            if r["state"] != state.UNSERVED
        }

    def load_custom_tables(self, contexts: list[str]) -> dict[str, list[str]]:
        """Make the typed table of every CRD cached for these contexts readable through
        this snapshot (:mod:`watcher.crdtables`); returns the problems per resource."""
        crds = state.live_crds(self._conn, contexts)
        self.custom, problems = custom_tables(crds, set(ALL_TABLES) | set(self.cached_tables(contexts)))
        return problems

    def schema(self, table: str) -> pa.Schema:
        custom = self.custom.get(table)
        return custom.schema() if custom is not None else schema_for(table)

    def _resource_of(self, table: str) -> str | None:
        """The custom objects' resource a CRD's typed table is made of (None: a table of its own)."""
        custom = self.custom.get(table)
        return custom.resource if custom is not None else None

    def daemon_heartbeat(self) -> float:
        return float(state.read_meta(self._conn, "daemon_heartbeat") or 0)

    def retired_contexts(self) -> list[dict[str, Any]]:
        """Contexts removed from the kubeconfig, as of this snapshot (their retirement seq
        is comparable with :attr:`position`)."""
        return state.read_retired_contexts(self._conn)

    # -- rows ----------------------------------------------------------------

    def batches(self, table: str, context: str, *, since_seq: int | None = None) -> Iterator[pa.RecordBatch]:
        """Live rows of one table and context (changed after ``since_seq`` if given),
        as record batches bounded in rows and bytes."""
        if table == CLUSTERS_TABLE:
            yield self._cluster_batch(context)
            return
        yield from self._batches(table, context, since_seq)

    def table_batches(self, table: str, contexts: list[str]) -> Iterator[pa.RecordBatch]:
        """Live rows of one table in all these contexts, in batches that mix contexts:
        a fleet's thousands of small (table, context) pairs cost one query per table and
        a few full batches, not a query and a message each."""
        if table == CLUSTERS_TABLE:
            for context in contexts:
                yield self._cluster_batch(context)
            return
        if contexts:
            yield from self._batches(table, contexts, None)

    def _batches(self, table: str, scope: str | list[str], since_seq: int | None) -> Iterator[pa.RecordBatch]:
        """The live rows of ``table`` in one context (a str), or in several (a list), each
        row then naming its own."""
        schema = self.schema(table)
        custom = self.custom.get(table)
        context = scope if isinstance(scope, str) else None
        cursor = state.live_row_cursor(
            self._conn,
            table,
            scope,
            resource=self._resource_of(table),
            since_seq=since_seq,
            with_uid=custom is not None,
        )
        rows: list[bytes] = []
        contexts: list[str] = []
        size = 0
        while chunk := cursor.fetchmany(4096):
            for found in chunk:
                row = (
                    found[0]
                    if custom is None
                    else custom.document(found[1], decode_row(found[0], CUSTOM_OBJECT_COLUMNS))
                )
                rows.append(row)
                if context is None:
                    contexts.append(found[-1])
                size += len(row)
                if len(rows) >= self.batch_max_rows or size >= self.batch_max_bytes:
                    # Drop the row documents before the batch goes out: the consumer
                    # serialises it (more copies), and peak memory is what a sync costs.
                    batch = rows_to_batch(schema, context or contexts, rows)
                    rows, contexts, size = [], [], 0
                    yield batch
        cursor.close()
        if rows:
            yield rows_to_batch(schema, context or contexts, rows)

    def deleted_uids(self, table: str, context: str, *, since_seq: int) -> list[str]:
        """uids of objects deleted after ``since_seq`` (tombstones)."""
        return state.deleted_uids(
            self._conn, table, context, since_seq=since_seq, resource=self._resource_of(table)
        )

    def changed(self, since: Mapping[str, int]) -> set[tuple[str, str]]:
        """(table, context) pairs with a write or a deletion after ``since`` (context ->
        seq; only those contexts): one range read of each moved context's seq index, so
        a follow sync reads only the tables that moved."""
        typed = {c.resource: t for t, c in self.custom.items()}
        pairs = set()
        for context, seq in since.items():
            if self.position.get(context, 0) <= seq:
                continue
            for table, resource in state.changed_since(self._conn, context, seq):
                pairs.add((table, context))
                if resource in typed:
                    pairs.add((typed[resource], context))
        return pairs

    def _cluster_batch(self, context: str) -> pa.RecordBatch:
        view = state.read_cluster_view(self._conn, context)
        facts = ClusterFacts(
            context=context,
            info=view.info,
            checkpoints=state.read_checkpoints(self._conn, context),
            kube_system_uid=view.kube_system_uid,
            node_count=view.node_count,
            daemon_heartbeat=self.daemon_heartbeat(),
        )
        return cluster_batch(facts, time.time())
