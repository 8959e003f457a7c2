"""The CloudQuery source plugin's behaviour: spec -> tables -> Sync from the cache.

A pure reader: it never talks to an API server and never writes the cache. Before a
sync it asks its :class:`~watcher.refresh.Refresher` to make the cache current (the
daemon's informers, or the fallback relist outside a daemon), then opens one read
snapshot of the cache and yields plain messages (``watcher.messages``): every selected
table as large record batches (snapshot mode), or only what changed since the cursor
kept in CloudQuery's state backend, plus delete-record messages (incremental mode).
With ``follow`` the sync then stays open and sends each change as the cache commits
it, each batch followed by the cursor (see docs/streaming.md).
``watcher.server`` turns them into protocol v3 messages; this module speaks no
protobuf.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from watcher import state
from watcher.catalog import ALL_TABLES, HISTORY_TABLES, excluded, schema_for, selects
from watcher.clusters import CLUSTERS_TABLE
from watcher.cursor import Cursor, CursorGate
from watcher.errors import CacheError
from watcher.kubeconfig import KubeconfigError, resolve_contexts
from watcher.messages import (
    Shard,
    SyncDeleteRecord,
    SyncError,
    SyncInsert,
    SyncMessage,
    SyncMigrateTable,
    SyncOptions,
)
from watcher.resources import CUSTOM_OBJECTS_TABLE
from watcher.snapshot import SnapshotReader
from watcher.spec import JSON_SCHEMA, Spec

if TYPE_CHECKING:
    import pyarrow as pa

    from watcher.refresh import Refresher

log = logging.getLogger(__name__)

PLUGIN_NAME = "k8s-watcher"
#: How often a follow sync looks for new changes (one read of the contexts' seqs).
FOLLOW_POLL_SECONDS = 0.1
#: How often a follow sync re-sends k8s_clusters (informer states, staleness): those
#: rows are computed, not logged in the change sequence.
FOLLOW_CLUSTERS_SECONDS = 30.0


@dataclass(frozen=True)
class Session:
    """What one CLI's Init set up: its spec and the contexts that spec names. A daemon
    serves several CLIs at once (a cron sync beside a follow stream, two pipelines into
    two databases), each with a spec of its own, so the spec travels with each call
    instead of living on the shared plugin."""

    spec: Spec
    contexts: list[str]


@dataclass
class FollowStatus:
    """What the follow syncs of this plugin are doing, for the daemon's metrics."""

    streams: int = 0
    #: context -> the change seq the last follow batch (and its cursor) carried.
    sent: dict[str, int] = field(default_factory=dict)
    #: Changes committed to the cache but not yet sent: since when (monotonic), or None.
    pending_since: float | None = None
    last_error: str = ""
    last_error_at: float = 0.0

    def lag_seconds(self) -> float:
        return 0.0 if self.pending_since is None else time.monotonic() - self.pending_since


class Plugin:
    """The plugin's behaviour, independent of gRPC plumbing.

    ``defaults`` fill spec fields the user left out: a daemon passes its own
    kubeconfig and cache file, so a ``registry: grpc`` spec can be empty.
    """

    name = PLUGIN_NAME
    spec_schema = JSON_SCHEMA

    def __init__(
        self,
        refresher: Refresher,
        *,
        defaults: dict[str, Any] | None = None,
        on_sync_done: Callable[[float, int], None] | None = None,
    ) -> None:
        self.refresher = refresher
        self.defaults = defaults or {}
        self.on_sync_done = on_sync_done
        self.follow_status = FollowStatus()
        self._follow_lock = threading.Lock()
        self.cursor_gate = CursorGate()

    def init(self, raw_spec: bytes, *, no_connection: bool) -> Session:
        spec = Spec.parse(raw_spec, defaults=self.defaults)
        if no_connection:
            return Session(spec, [])
        contexts = resolve_contexts(spec.kubeconfig, list(spec.contexts))
        if not contexts:
            raise KubeconfigError(f"kubeconfig {spec.kubeconfig} defines no context")
        return Session(spec, contexts)

    @staticmethod
    def select_tables(
        patterns: list[str], skip: list[str], allowed: tuple[str, ...] = ALL_TABLES
    ) -> tuple[str, ...]:
        chosen = [
            t for t in allowed
            if any(selects(p, t) for p in (patterns or ["*"]))
            and not any(fnmatch.fnmatchcase(t, p) for p in skip)
        ]  # fmt: skip
        return tuple(chosen)

    def _with_custom_tables(
        self, session: Session, snap: SnapshotReader, options: SyncOptions, tables: tuple[str, ...]
    ) -> tuple[str, ...]:
        """``tables`` plus the typed table of every cached CRD (selected as the CLI asks,
        not excluded), without k8s_custom_objects when the spec wants typed tables only."""
        spec = session.spec
        for resource, problems in snap.load_custom_tables(session.contexts).items():
            log.warning("custom resource %s: %s", resource, "; ".join(problems))
        typed = tuple(
            t
            for t in self.select_tables(
                list(options.tables), list(options.skip_tables), tuple(sorted(snap.custom))
            )
            if not excluded(spec.exclude, t, snap.custom[t].resource)
        )
        kept = tuple(t for t in tables if spec.custom_objects == "both" or t != CUSTOM_OBJECTS_TABLE)
        return kept + typed

    def discovered_tables(
        self, session: Session, snap: SnapshotReader, options: SyncOptions
    ) -> tuple[str, ...]:
        """The tables of resources found in discovery that the cache holds for the
        synced contexts, selected as the CLI asks and not excluded by the spec."""
        spec = session.spec
        found = {
            table: key
            for table, key in snap.cached_tables(session.contexts).items()
            if table not in ALL_TABLES and not excluded(spec.exclude, table, key, key.partition(".")[0])
        }
        return self.select_tables(list(options.tables), list(options.skip_tables), tuple(sorted(found)))

    def table_schemas(self, session: Session | None, patterns: list[str], skip: list[str]) -> list[pa.Schema]:
        allowed = session.spec.tables if session is not None else ALL_TABLES
        return [schema_for(t) for t in self.select_tables(patterns, skip, allowed)]

    def test_connection(self, raw_spec: bytes) -> list[str]:
        """Problems with the spec's contexts, one line each (empty: all reachable).
        Raises :class:`SpecError` or :class:`KubeconfigError` for a bad spec."""
        spec = Spec.parse(raw_spec, defaults=self.defaults)
        return self.refresher.test_connection(spec, resolve_contexts(spec.kubeconfig, list(spec.contexts)))

    def sync(self, session: Session, options: SyncOptions) -> Iterator[SyncMessage]:
        spec, contexts = session.spec, session.contexts
        tables = self.select_tables(list(options.tables), list(options.skip_tables), spec.tables)
        started = time.monotonic()
        # The CRDs' typed tables are made from the cached custom objects.
        typed = CUSTOM_OBJECTS_TABLE in spec.tables and spec.custom_objects != "generic"
        needed = tables if not typed or CUSTOM_OBJECTS_TABLE in tables else (*tables, CUSTOM_OBJECTS_TABLE)
        failures = self.refresher.refresh(spec, contexts, needed)
        for ctx, why in failures.items():
            log.error("context %s could not be synced: %s", ctx, why)
            if options.with_error_messages:
                yield SyncError(CLUSTERS_TABLE, f"{ctx}: {why}")
        cursor = Cursor(options, on_stream=spec.cursor == "stream") if spec.incremental else None
        with cursor.held(self.cursor_gate, follow=spec.follow) if cursor is not None else nullcontext():
            yield from self._send(session, options, tables, cursor, typed=typed, started=started)

    def _send(
        self,
        session: Session,
        options: SyncOptions,
        tables: tuple[str, ...],
        cursor: Cursor | None,
        *,
        typed: bool,
        started: float,
    ) -> Iterator[SyncMessage]:
        """The snapshot (or the changes since the cursor), then with ``follow`` the
        changes as they commit."""
        spec, contexts = session.spec, session.contexts
        with SnapshotReader.open(spec.cache, batch_max_rows=spec.batch_max_rows) as snap:
            if spec.discovery:
                tables += self.discovered_tables(session, snap, options)
            if typed:
                tables = self._with_custom_tables(session, snap, options, tables)
            owns = _ownership(options.shard, by_pair=spec.incremental)
            if options.shard is not None:
                tables = tuple(t for t in tables if any(owns(t, ctx) for ctx in contexts))
                pairs = sum(owns(t, ctx) for t in tables for ctx in contexts)
                unit = "pair" if spec.incremental else "whole table"
                log.info(
                    "shard %s: %d tables, %d (table, context) pairs, sharded by %s",
                    options.shard, len(tables), pairs, unit,
                )  # fmt: skip
            since = cursor.since(snap.cache_id, snap.logs, contexts) if cursor else None
            for table in tables:
                yield SyncMigrateTable(snap.schema(table))
            if cursor is not None and (migrate := cursor.in_band_table()) is not None:
                yield migrate
            rows = deletes = 0
            retired = _retired_since(snap, since, watched=contexts) if cursor is not None else []
            for ctx in retired:
                # A retired context's history stays at the destination: it happened.
                for table in (t for t in tables if owns(t, ctx) and t not in HISTORY_TABLES):
                    deletes += 1
                    yield SyncDeleteRecord(table, ctx)
            # A context that could not be refreshed still sends what the cache holds for
            # it (k8s_clusters says how stale): skipping it would let delete-stale wipe
            # its rows, and would move the incremental cursor past changes never sent.
            # Only the (table, context) pairs that moved since the cursor are read: an
            # idle fleet's incremental sync costs a query per context, not per pair.
            after = {ctx: seq for ctx in contexts if since and (seq := since.get(ctx)) is not None}
            moved = snap.changed(after) if after else set()
            for table in tables:
                per_object = table != CLUSTERS_TABLE
                mine = [c for c in contexts if owns(table, c)]
                whole = [c for c in mine if c not in after or not per_object]
                clear_first = cursor is not None and per_object and table not in HISTORY_TABLES
                for ctx in whole if clear_first else ():
                    # A full snapshot in incremental mode (first run, lost or expired
                    # cursor): the destination does not delete stale rows in overwrite
                    # mode, so clear this context's rows first. Not the history's: the
                    # destination keeps what the cache has purged.
                    yield SyncDeleteRecord(table, ctx)
                # The contexts sent whole share one query and full batches.
                for batch in snap.table_batches(table, whole):
                    rows += batch.num_rows
                    yield SyncInsert(batch)
                for ctx in (c for c in mine if c not in whole and (table, c) in moved):
                    for uid in snap.deleted_uids(table, ctx, since_seq=after[ctx]):
                        deletes += 1
                        yield SyncDeleteRecord(table, ctx, uid)
                    for batch in snap.batches(table, ctx, since_seq=after[ctx]):
                        rows += batch.num_rows
                        yield SyncInsert(batch)
            full = since is None or all(since.get(ctx) is None for ctx in contexts)
            mode = "full snapshot" if full else f"changes since {_describe(since or {})}"
            elapsed = time.monotonic() - started
            log.info(
                "sync sent %d rows and %d deletions from %d tables, %d contexts (%s) in %.2fs",
                rows, deletes, len(tables), len(contexts), mode, elapsed,
            )  # fmt: skip
            if self.on_sync_done is not None:
                self.on_sync_done(elapsed, rows)
            sent = {ctx: snap.position.get(ctx, 0) for ctx in [*contexts, *retired]}
            if cursor is not None:
                checkpoint = cursor.commit(snap.cache_id, sent)
                if checkpoint is not None:
                    yield checkpoint
            start = (snap.cache_id, sent)
        if spec.follow and cursor is not None:
            yield from self._follow(session, tables, owns, cursor, start, options.stop or threading.Event())

    def _follow(
        self,
        session: Session,
        tables: tuple[str, ...],
        owns: Callable[[str, str], bool],
        cursor: Cursor,
        start: tuple[str, dict[str, int]],
        stop: threading.Event,
    ) -> Iterator[SyncMessage]:
        """Send what the cache commits after ``start``, until ``stop``: per batch the
        deletions, then the rows, then the cursor, so the destination commits the cursor
        no earlier than the changes it covers (a stopped CLI resumes from it)."""
        spec, contexts = session.spec, session.contexts
        cache_id, last = start
        last = {ctx: last.get(ctx, 0) for ctx in contexts}
        selected = set(tables) - {CLUSTERS_TABLE}
        engine = state.open_reader(spec.cache)
        status = self.follow_status
        with self._follow_lock:
            status.streams += 1
        clusters_due = time.monotonic() + FOLLOW_CLUSTERS_SECONDS
        log.info("follow: streaming changes after %s", _describe(last))
        try:
            while not stop.wait(FOLLOW_POLL_SECONDS):
                with engine.connect() as conn:
                    newest = state.read_positions(conn)
                moved = any(newest.get(ctx, 0) > seq for ctx, seq in last.items())
                refresh_clusters = CLUSTERS_TABLE in tables and time.monotonic() >= clusters_due
                if not moved and not refresh_clusters:
                    continue
                if moved and status.pending_since is None:
                    status.pending_since = time.monotonic()
                with SnapshotReader(engine, batch_max_rows=spec.batch_max_rows) as snap:
                    purged = {c: snap.logs[c].purged_seq for c in last if c in snap.logs}
                    if snap.cache_id != cache_id or any(p > last[c] for c, p in purged.items()):
                        raise CacheError(
                            f"follow: the cache moved under the stream (cache id {snap.cache_id}, purged "
                            f"up to {_describe(purged)}, stream at {_describe(last)}); restart the sync"
                        )
                    if CUSTOM_OBJECTS_TABLE in spec.tables and spec.custom_objects != "generic":
                        snap.load_custom_tables(contexts)  # the CRDs' typed tables, as of now
                    yield from _changes(snap, selected, owns, last)
                    if refresh_clusters:
                        clusters_due = time.monotonic() + FOLLOW_CLUSTERS_SECONDS
                        for ctx in (c for c in contexts if owns(CLUSTERS_TABLE, c)):
                            yield from (SyncInsert(b) for b in snap.batches(CLUSTERS_TABLE, ctx))
                    last = {ctx: snap.position.get(ctx, 0) for ctx in last}
                    checkpoint = cursor.commit(snap.cache_id, last)
                    if checkpoint is not None:
                        yield checkpoint
                    status.sent = dict(last)
                status.pending_since = None
        except CacheError as exc:
            status.last_error, status.last_error_at = str(exc), time.time()
            raise
        finally:
            engine.dispose()
            with self._follow_lock:
                status.streams -= 1
            log.info("follow: stream ended at %s", _describe(last))


def _describe(position: Mapping[str, int | None]) -> str:
    """``dev@12, prod@40``; a context to be sent in full: ``prod@full``."""
    return (
        ", ".join(f"{ctx}@{'full' if seq is None else seq}" for ctx, seq in sorted(position.items()))
        or "nothing"
    )


def _ownership(shard: Shard | None, *, by_pair: bool) -> Callable[[str, str], bool]:
    """Whether this sync sends a (table, context) pair: all of them, or its shard's."""
    if shard is None:
        return lambda _table, _context: True
    if by_pair:
        return shard.owns
    return lambda table, _context: shard.owns(table)


def _changes(
    snap: SnapshotReader, tables: set[str], owns: Callable[[str, str], bool], since: Mapping[str, int]
) -> Iterator[SyncMessage]:
    """Deletions, then rows, changed after ``since`` (context -> seq) in the selected
    (table, context) pairs (grouped by kind: the destination flushes its batch at every
    switch of kind)."""
    pairs = sorted(p for p in snap.changed(since) if p[0] in tables and owns(*p))
    for table, ctx in pairs:
        for uid in snap.deleted_uids(table, ctx, since_seq=since[ctx]):
            yield SyncDeleteRecord(table, ctx, uid)
    for table, ctx in pairs:
        for batch in snap.batches(table, ctx, since_seq=since[ctx]):
            yield SyncInsert(batch)


def _retired_since(
    snap: SnapshotReader, since: Mapping[str, int | None] | None, *, watched: list[str]
) -> list[str]:
    """Contexts removed from the kubeconfig (their objects tombstoned) since the cursor,
    or at all for a full snapshot: an incremental sync deletes all their rows."""
    found = []
    for r in snap.retired_contexts():
        after = since.get(r["context"]) if since is not None else None
        if r["context"] not in watched and (after is None or r["seq"] > after):
            found.append(r["context"])
    return found
