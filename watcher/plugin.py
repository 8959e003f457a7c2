"""The CloudQuery source plugin (protocol v3): spec -> tables -> Sync from the cache.

Only this module speaks the CloudQuery protocol. It implements the gRPC servicer
itself rather than the SDK's scheduler, which emits one single-row RecordBatch per
resource, cannot send delete-record messages, and kills the sync on an error
message. A sync:

1. checks the cache's freshness per (context, resource) and relists into the cache
   whatever is cold (never listed) or stale (older than ``max_staleness`` with no
   live daemon), logging why;
2. opens one read snapshot of the cache and sends every selected table as large
   record batches (snapshot mode), or only what changed since the cursor kept in
   CloudQuery's state backend, plus delete-record messages (incremental mode).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pyarrow as pa
from cloudquery.plugin_v3 import arrow, plugin_pb2, plugin_pb2_grpc

from watcher import __version__
from watcher.informers import (
    InformerOptions,
    ResourceInformer,
    cached_custom_descriptors,
    record_cluster_info,
)
from watcher.kube import ApiError, KubeClient, KubeconfigError, resolve_contexts
from watcher.resources import (
    BY_TABLE,
    CRD,
    CUSTOM_OBJECTS_TABLE,
    NODES,
    ResourceDescriptor,
)
from watcher.server import serve_servicer
from watcher.snapshot import Freshness, SnapshotReader, schema_for
from watcher.spec import ALL_TABLES, CLUSTERS_TABLE, JSON_SCHEMA, Spec, SpecError
from watcher.state import CacheStore, CacheUnusable
from watcher.tables import uuid_bytes

log = logging.getLogger(__name__)

PLUGIN_NAME = "k8s-watcher"
CURSOR_KEY = "k8s-watcher|cursor"


def _needed_resources(tables: tuple[str, ...]) -> list[ResourceDescriptor]:
    """The built-in resources the selected tables are made from."""
    needed: list[ResourceDescriptor] = []
    for table in tables:
        if table == CLUSTERS_TABLE:
            needed += [BY_TABLE["k8s_namespaces"], NODES]
        elif table == CUSTOM_OBJECTS_TABLE:
            needed.append(CRD)
        else:
            needed.append(BY_TABLE[table])
    return list(dict.fromkeys(needed))


class CacheRefresher:
    """Relists cold or stale (context, resource) pairs into the cache (the fallback
    when no daemon keeps it warm)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def stale(
        self,
        fresh: list[Freshness],
        contexts: list[str],
        resources: list[ResourceDescriptor],
        heartbeat: float,
    ) -> dict[str, list[ResourceDescriptor]]:
        now = time.time()
        daemon_alive = now - heartbeat < self.spec.max_staleness
        by_key = {(f.context, f.resource): f for f in fresh}
        todo: dict[str, list[ResourceDescriptor]] = {}
        for ctx in contexts:
            for desc in resources:
                f = by_key.get((ctx, desc.key))
                if f is None or not f.listed:
                    reason = "cold (never listed)"
                elif f.state == "watching" and daemon_alive:
                    continue
                elif now - f.updated_at > self.spec.max_staleness:
                    reason = f"stale ({now - f.updated_at:.0f}s old, no live watch)"
                else:
                    continue
                log.info("cache for %s/%s is %s: relisting", ctx, desc.key, reason)
                todo.setdefault(ctx, []).append(desc)
        return todo

    def relist(
        self, todo: dict[str, list[ResourceDescriptor]], *, with_custom_objects: bool
    ) -> dict[str, str]:
        """Relist into the cache; returns the contexts that failed, with the reason."""
        failures: dict[str, str] = {}
        store = CacheStore(self.spec.cache_path)
        options = InformerOptions(list_semaphore=threading.Semaphore(self.spec.concurrency))
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:
                pending = {
                    ctx: pool.submit(self._relist_context, store, ctx, descs, options, with_custom_objects)
                    for ctx, descs in todo.items()
                }
                for ctx, fut in pending.items():
                    error = fut.result()
                    if error:
                        failures[ctx] = error
        finally:
            store.close()
        return failures

    def _relist_context(
        self,
        store: CacheStore,
        ctx: str,
        descs: list[ResourceDescriptor],
        options: InformerOptions,
        with_custom: bool,
    ) -> str | None:
        try:
            client = KubeClient(self.spec.kubeconfig, ctx)
        except KubeconfigError as exc:
            return str(exc)
        errors: list[str] = []
        try:
            _version, error = record_cluster_info(client, store)
            if error is not None:
                # The server does not answer /version (unreachable, hanging, bad TLS or
                # credentials): listing 30 resources would fail 30 times more slowly.
                return error
            with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
                for desc, error in zip(
                    descs, pool.map(lambda d: _relist_one(client, store, d, options), descs), strict=True
                ):
                    if error:
                        errors.append(f"{desc.key}: {error}")
            if with_custom and CRD in descs:
                store.flush()
                for desc in cached_custom_descriptors(store, ctx):
                    error = _relist_one(client, store, desc, options)
                    if error:
                        errors.append(f"{desc.key}: {error}")
        finally:
            client.close()
        store.flush()
        if errors and len(errors) == len(descs):
            return "; ".join(errors[:3])
        for e in errors:
            log.warning("%s: relist failed for %s", ctx, e)
        return None


def _relist_one(
    client: KubeClient, store: CacheStore, desc: ResourceDescriptor, options: InformerOptions
) -> str | None:
    informer = ResourceInformer(client=client, descriptor=desc, store=store, options=options, streaming=False)
    try:
        informer.relist()
        return None
    except ApiError as exc:
        informer.record_failure(exc)
        return str(exc)


# --------------------------------------------------------------------------- messages


def _insert(batch: pa.RecordBatch) -> plugin_pb2.Sync.Response:
    return plugin_pb2.Sync.Response(insert=plugin_pb2.Sync.MessageInsert(record=arrow.record_to_bytes(batch)))


def _value_record(name: str, array: pa.Array) -> bytes:
    return arrow.record_to_bytes(pa.RecordBatch.from_arrays([array], names=[name]))


def _delete_where(table: str, context: str, uid: str | None = None) -> plugin_pb2.Sync.Response:
    """A delete-record message: ``DELETE FROM table WHERE context_name = ? [AND uid = ?]``."""
    predicates = [
        plugin_pb2.Predicate(
            operator=plugin_pb2.Predicate.Operator.EQ,
            column="context_name",
            record=_value_record("context_name", pa.array([context], pa.string())),
        )
    ]
    if uid is not None:
        uid_array = uuid_bytes(pa.array([uid], pa.string()))
        predicates.append(
            plugin_pb2.Predicate(
                operator=plugin_pb2.Predicate.Operator.EQ,
                column="uid",
                record=_value_record("uid", uid_array),
            )
        )
    return plugin_pb2.Sync.Response(
        delete_record=plugin_pb2.Sync.MessageDeleteRecord(
            table_name=table,
            where_clause=[
                plugin_pb2.PredicatesGroup(
                    grouping_type=plugin_pb2.PredicatesGroup.GroupingType.AND, predicates=predicates
                )
            ],
        )
    )


class Plugin:
    """The plugin's behaviour, independent of gRPC plumbing.

    ``defaults`` fill spec fields the user left out: a daemon passes its own
    kubeconfig and cache file, so a ``registry: grpc`` spec can be empty.
    """

    def __init__(
        self,
        *,
        defaults: dict[str, Any] | None = None,
        on_sync_done: Callable[[float, int], None] | None = None,
    ) -> None:
        self.defaults = defaults or {}
        self.on_sync_done = on_sync_done
        self.spec: Spec | None = None
        self.contexts: list[str] = []

    def init(self, raw_spec: bytes, *, no_connection: bool) -> None:
        spec = Spec.parse(raw_spec, defaults=self.defaults)
        self.spec = spec
        if no_connection:
            return
        self.contexts = resolve_contexts(spec.kubeconfig, list(spec.contexts))
        if not self.contexts:
            raise KubeconfigError(f"kubeconfig {spec.kubeconfig} defines no context")

    def select_tables(self, patterns: list[str], skip: list[str]) -> tuple[str, ...]:
        allowed = self.spec.tables if self.spec else ALL_TABLES
        chosen = [
            t for t in allowed
            if any(fnmatch.fnmatchcase(t, p) for p in (patterns or ["*"]))
            and not any(fnmatch.fnmatchcase(t, p) for p in skip)
        ]  # fmt: skip
        return tuple(chosen)

    def sync(self, request: plugin_pb2.Sync.Request) -> Iterator[plugin_pb2.Sync.Response]:
        spec = self._require_spec()
        tables = self.select_tables(list(request.tables), list(request.skip_tables))
        started = time.monotonic()
        failures = self._refresh_cache(tables)
        for ctx, why in failures.items():
            log.error("context %s could not be synced: %s", ctx, why)
            if request.withErrorMessages:
                yield plugin_pb2.Sync.Response(
                    error=plugin_pb2.Sync.MessageError(table_name=CLUSTERS_TABLE, error=f"{ctx}: {why}")
                )
        state = (
            _CursorState(request.backend, supports_checkpoints=request.supports_checkpoints)
            if spec.incremental
            else None
        )
        with SnapshotReader.open(spec.cache_path, batch_max_rows=spec.batch_max_rows) as snap:
            since = state.since(snap) if state else None
            for table in tables:
                yield plugin_pb2.Sync.Response(
                    migrate_table=plugin_pb2.Sync.MessageMigrateTable(
                        table=arrow.schema_to_bytes(schema_for(table))
                    )
                )
            rows = deletes = 0
            # A context that could not be refreshed still sends what the cache holds for
            # it (k8s_clusters says how stale): skipping it would let delete-stale wipe
            # its rows, and would move the incremental cursor past changes never sent.
            for table in tables:
                for ctx in self.contexts:
                    if since is not None and table != CLUSTERS_TABLE:
                        for uid in snap.deleted_uids(table, ctx, since_seq=since):
                            deletes += 1
                            yield _delete_where(table, ctx, uid)
                    elif state is not None and table != CLUSTERS_TABLE:
                        # A full snapshot in incremental mode (first run, lost or expired
                        # cursor): the destination does not delete stale rows in overwrite
                        # mode, so clear this context's rows first.
                        yield _delete_where(table, ctx)
                    for batch in snap.batches(
                        table, ctx, since_seq=since if table != CLUSTERS_TABLE else None
                    ):
                        rows += batch.num_rows
                        yield _insert(batch)
            mode = "full snapshot" if since is None else f"changes since seq {since}"
            elapsed = time.monotonic() - started
            log.info(
                "sync sent %d rows and %d deletions from %d tables, %d contexts (%s) in %.2fs",
                rows, deletes, len(tables), len(self.contexts), mode, elapsed,
            )  # fmt: skip
            if self.on_sync_done is not None:
                self.on_sync_done(elapsed, rows)
            if state is not None:
                checkpoint = state.commit(snap)
                if checkpoint is not None:
                    yield checkpoint

    def _require_spec(self) -> Spec:
        if self.spec is None:
            raise SpecError("the plugin was not initialised with a spec")
        return self.spec

    def _refresh_cache(self, tables: tuple[str, ...]) -> dict[str, str]:
        spec = self._require_spec()
        resources = _needed_resources(tables)
        refresher = CacheRefresher(spec)
        try:
            with SnapshotReader.open(spec.cache_path) as snap:
                todo = refresher.stale(snap.freshness(), self.contexts, resources, snap.daemon_heartbeat())
        except CacheUnusable as exc:
            log.info("no usable cache (%s): relisting everything", exc)
            todo = {ctx: resources for ctx in self.contexts}
        if not todo:
            return {}
        return refresher.relist(todo, with_custom_objects=CUSTOM_OBJECTS_TABLE in tables)


class _CursorState:
    """The incremental cursor, kept in CloudQuery's state backend so that it travels
    with the destination: ``<cache id>:<seq>`` of the last completed sync."""

    def __init__(self, backend: Any, *, supports_checkpoints: bool) -> None:
        # Imported here: the SDK's state client pulls in pandas (~60 MB), which a daemon
        # serving snapshot syncs never needs.
        from cloudquery.sdk.plugin.plugin import BackendOptions
        from cloudquery.sdk.stateclient.stateclient import StateClientBuilder

        options = BackendOptions(connection=backend.connection, table_name=backend.table_name)
        self.client = StateClientBuilder.build(backend_options=options)
        self.enabled = bool(backend.table_name)
        self.supports_checkpoints = supports_checkpoints
        if not self.enabled:
            log.warning(
                "incremental mode without a state backend (backend_options): every sync is a full snapshot"
            )

    def since(self, snap: SnapshotReader) -> int | None:
        raw = self.client.get_key(CURSOR_KEY) if self.enabled else None
        if not raw:
            log.info("incremental: no cursor yet, full snapshot")
            return None
        cache_id, _, seq_text = raw.partition(":")
        seq = int(seq_text or 0)
        if cache_id != snap.cache_id:
            log.info("incremental: the cursor belongs to another cache file, full snapshot")
            return None
        if seq < snap.purged_seq:
            log.info(
                "incremental: cursor %d is older than the retained change log (%d), full snapshot",
                seq,
                snap.purged_seq,
            )
            return None
        if seq > snap.seq:
            log.info("incremental: cursor %d is ahead of the cache (%d), full snapshot", seq, snap.seq)
            return None
        return seq

    def commit(self, snap: SnapshotReader) -> plugin_pb2.Sync.Response | None:
        """Advance the cursor to this sync's snapshot. With checkpoint support it goes on
        the stream, and the CLI persists it only once the destination committed everything
        before it; otherwise it is written to the backend at the end of the sync."""
        if not self.enabled:
            return None
        value = f"{snap.cache_id}:{snap.seq}"
        if self.supports_checkpoints:
            record = self.client.table.record([(CURSOR_KEY, value)])
            return plugin_pb2.Sync.Response(
                checkpoint=plugin_pb2.Sync.MessageCheckpoint(record=arrow.record_to_bytes(record))
            )
        self.client.set_key(CURSOR_KEY, value)
        self.client.flush()
        return None


# --------------------------------------------------------------------------- gRPC


class PluginServicer(plugin_pb2_grpc.PluginServicer):
    """gRPC front of :class:`Plugin`; turns every failure into a gRPC status with a
    message that names the problem, never a bare traceback."""

    def __init__(self, plugin: Plugin | None = None) -> None:
        self.plugin = plugin or Plugin()

    def GetName(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetName.Response(name=PLUGIN_NAME)

    def GetVersion(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetVersion.Response(version=f"v{__version__}")

    def GetSpecSchema(self, request: Any, context: Any) -> Any:
        import json

        return plugin_pb2.GetSpecSchema.Response(json_schema=json.dumps(JSON_SCHEMA))

    def Init(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self.plugin.init(request.spec, no_connection=request.no_connection)
        except (SpecError, KubeconfigError) as exc:
            log.error("invalid configuration: %s", exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k8s-watcher: {exc}")
        return plugin_pb2.Init.Response()

    def GetTables(self, request: Any, context: Any) -> Any:
        tables = self.plugin.select_tables(list(request.tables), list(request.skip_tables))
        return plugin_pb2.GetTables.Response(tables=[arrow.schema_to_bytes(schema_for(t)) for t in tables])

    def Sync(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from self.plugin.sync(request)
        except (SpecError, KubeconfigError, CacheUnusable) as exc:
            log.error("sync failed: %s", exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"k8s-watcher: {exc}")

    def TestConnection(self, request: Any, context: Any) -> Any:
        try:
            spec = Spec.parse(request.spec)
            contexts = resolve_contexts(spec.kubeconfig, list(spec.contexts))
            problems = []
            for ctx in contexts:
                try:
                    client = KubeClient(spec.kubeconfig, ctx)
                    client.get("/version", timeout=10)
                    client.close()
                except (ApiError, KubeconfigError) as exc:
                    problems.append(f"{ctx}: {exc}")
        except (SpecError, KubeconfigError) as exc:
            return plugin_pb2.TestConnection.Response(
                success=False, failure_code="INVALID_SPEC", failure_description=str(exc)
            )
        if problems:
            return plugin_pb2.TestConnection.Response(
                success=False, failure_code="UNREACHABLE", failure_description="; ".join(problems)
            )
        return plugin_pb2.TestConnection.Response(success=True)

    def Read(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "k8s-watcher is a source plugin")
        yield from ()

    def Write(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "k8s-watcher is a source plugin")

    def Close(self, request: Any, context: Any) -> Any:
        return plugin_pb2.Close.Response()


def serve_plugin(plugin: Plugin, address: str, *, network: str = "tcp") -> grpc.Server:
    return serve_servicer(PluginServicer(plugin), address, network=network)
