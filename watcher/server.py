"""The gRPC side of the plugin (protocol v3 plus discovery v1): the servicer, the one
place that builds protocol messages from the plugin's plain ones, and the server.

It imports no part of the plugin at run time (only its plain types), so serving costs
only grpc, pyarrow and the SDK's generated code: the benchmark's null source starts with
it on every sync without importing the plugin (SQLAlchemy, the cache, the informers).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pyarrow as pa
from cloudquery.discovery_v1 import discovery_pb2_grpc
from cloudquery.plugin_v3 import arrow, plugin_pb2, plugin_pb2_grpc
from cloudquery.sdk.internal.servers.discovery_v1.discovery import DiscoveryServicer
from cloudquery.sdk.types import UUIDType

from watcher import __version__
from watcher.errors import CacheError, ConfigError
from watcher.messages import (
    Shard,
    StateBackend,
    SyncCheckpoint,
    SyncDeleteRecord,
    SyncError,
    SyncInsert,
    SyncMessage,
    SyncMigrateTable,
    SyncOptions,
)

if TYPE_CHECKING:
    from watcher.plugin import Plugin, Session

log = logging.getLogger(__name__)


class ServerTls:
    """A certificate and key for serving gRPC over TLS, read again when either file
    changes (a renewed certificate is used for the next connection, no restart)."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._stamp = self._mtimes()
        self.initial = self._configuration()

    def _mtimes(self) -> tuple[float, float]:
        return self.cert_file.stat().st_mtime, self.key_file.stat().st_mtime

    def _configuration(self) -> Any:
        pair = (self.key_file.read_bytes(), self.cert_file.read_bytes())
        return grpc.ssl_server_certificate_configuration([pair])

    def _fetch(self) -> Any:
        """Called by gRPC for each new connection: a new configuration, or None (unchanged)."""
        try:
            stamp = self._mtimes()
            if stamp == self._stamp:
                return None
            config = self._configuration()
        except OSError as exc:
            log.warning("gRPC TLS certificate not reloaded: %s", exc)
            return None
        self._stamp = stamp
        log.info("gRPC TLS certificate %s reloaded", self.cert_file)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self.initial, self._fetch)


def serve_servicer(
    servicer: plugin_pb2_grpc.PluginServicer,
    address: str,
    *,
    network: str = "tcp",
    max_workers: int = 10,
    tls: ServerTls | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> grpc.Server:
    """Start a gRPC server for a protocol v3 servicer (plus discovery v1) and return it.

    The CLI passes unix socket addresses as bare paths, which grpc cannot bind
    ("Failed to bind"); they need the ``unix:`` scheme. ``on_listening`` is told the
    address listened on: with port 0, the port the system chose.
    """
    if network == "unix" and not address.startswith("unix:"):
        address = f"unix:{address}"
    # The CLI sends and accepts large record batches; lift gRPC's 4 MB default.
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    discovery_pb2_grpc.add_DiscoveryServicer_to_server(DiscoveryServicer([3]), server)
    plugin_pb2_grpc.add_PluginServicer_to_server(servicer, server)
    port = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if port == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    if not address.startswith("unix:"):
        address = f"{address.rsplit(':', 1)[0]}:{port}"
    server.start()
    log.info("plugin server listening on %s%s", address, " (TLS)" if tls else "")
    if on_listening is not None:
        on_listening(address)
    return server


def serve_until_signalled(server: grpc.Server) -> None:
    """Block until SIGINT or SIGTERM, then stop the server. The CLI stops a
    ``registry: local`` plugin with SIGINT: that is a clean exit, not a traceback."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(grace=2).wait(5)


# --------------------------------------------------------------------------- the servicer


def _value_record(name: str, array: pa.Array) -> bytes:
    return arrow.record_to_bytes(pa.RecordBatch.from_arrays([array], names=[name]))


def _equals(column: str, array: pa.Array) -> plugin_pb2.Predicate:
    return plugin_pb2.Predicate(
        operator=plugin_pb2.Predicate.Operator.EQ, column=column, record=_value_record(column, array)
    )


def _delete_record(msg: SyncDeleteRecord) -> plugin_pb2.Sync.Response:
    """``DELETE FROM table WHERE context_name = ? [AND uid = ?]`` (the destination's
    ``DeleteRecordsBatch`` builds it from equality predicates on named columns)."""
    predicates = [_equals("context_name", pa.array([msg.context], pa.string()))]
    if msg.uid is not None:
        uid = pa.array([uuid.UUID(msg.uid).bytes], pa.binary(16))
        predicates.append(_equals("uid", pa.ExtensionArray.from_storage(UUIDType(), uid)))
    return plugin_pb2.Sync.Response(
        delete_record=plugin_pb2.Sync.MessageDeleteRecord(
            table_name=msg.table,
            where_clause=[
                plugin_pb2.PredicatesGroup(
                    grouping_type=plugin_pb2.PredicatesGroup.GroupingType.AND, predicates=predicates
                )
            ],
        )
    )


def to_protocol(msg: SyncMessage) -> plugin_pb2.Sync.Response:
    """A plain sync message (``watcher.messages``) as a protocol v3 Sync response."""
    Response = plugin_pb2.Sync.Response
    match msg:
        case SyncInsert(record=record):
            return Response(insert=plugin_pb2.Sync.MessageInsert(record=arrow.record_to_bytes(record)))
        case SyncMigrateTable(schema=schema):
            return Response(
                migrate_table=plugin_pb2.Sync.MessageMigrateTable(table=arrow.schema_to_bytes(schema))
            )
        case SyncDeleteRecord():
            return _delete_record(msg)
        case SyncError(table=table, error=error):
            return Response(error=plugin_pb2.Sync.MessageError(table_name=table, error=error))
        case SyncCheckpoint(record=record):
            return Response(
                checkpoint=plugin_pb2.Sync.MessageCheckpoint(record=arrow.record_to_bytes(record))
            )
    raise TypeError(f"not a sync message: {msg!r}")


def sync_options(request: plugin_pb2.Sync.Request, stop: threading.Event | None = None) -> SyncOptions:
    backend = request.backend
    return SyncOptions(
        tables=tuple(request.tables),
        skip_tables=tuple(request.skip_tables),
        backend=StateBackend(backend.connection, backend.table_name) if backend.table_name else None,
        supports_checkpoints=request.supports_checkpoints,
        with_error_messages=request.withErrorMessages,
        stop=stop,
        shard=Shard(request.shard.num, request.shard.total) if request.shard.total > 1 else None,
    )


class Sessions:
    """Each CLI's :class:`~watcher.plugin.Session` by its connection: a CLI makes its
    Init, GetTables and Sync on one connection (one gRPC peer address), and a daemon
    serves several CLIs at once, so the Sync finds the spec its own Init sent. Bounded:
    a CLI does not say when it is gone, so the least recently used are forgotten (a
    sync under way holds its own session)."""

    LIMIT = 256

    def __init__(self) -> None:
        self._by_peer: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, peer: str, session: Session) -> None:
        with self._lock:
            self._by_peer[peer] = session
            self._by_peer.move_to_end(peer)
            while len(self._by_peer) > self.LIMIT:
                self._by_peer.popitem(last=False)

    def get(self, peer: str) -> Session | None:
        with self._lock:
            found = self._by_peer.get(peer)
            if found is not None:
                self._by_peer.move_to_end(peer)
            return found


class PluginServicer(plugin_pb2_grpc.PluginServicer):
    """gRPC front of :class:`watcher.plugin.Plugin`: the one place that builds protocol
    messages. Every failure becomes a gRPC status with a message that names the
    problem, never a bare traceback."""

    def __init__(self, plugin: Plugin | Future[Plugin]) -> None:
        self._plugin = plugin
        self.sessions = Sessions()

    @property
    def plugin(self) -> Plugin:
        """The plugin; one still being built (``registry: local``, see
        :func:`watcher.cli.plugin_main`) is waited for by each call."""
        if isinstance(self._plugin, Future):
            self._plugin = self._plugin.result()
        return self._plugin

    def GetName(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetName.Response(name=self.plugin.name)

    def GetVersion(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetVersion.Response(version=f"v{__version__}")

    def GetSpecSchema(self, request: Any, context: Any) -> Any:
        return plugin_pb2.GetSpecSchema.Response(json_schema=json.dumps(self.plugin.spec_schema))

    def Init(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            self.sessions.put(
                context.peer(), self.plugin.init(request.spec, no_connection=request.no_connection)
            )
        except ConfigError as exc:
            log.error("invalid configuration: %s", exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k8s-watcher: {exc}")
        return plugin_pb2.Init.Response()

    def GetTables(self, request: Any, context: grpc.ServicerContext) -> Any:
        session = self.sessions.get(context.peer())
        schemas = self.plugin.table_schemas(session, list(request.tables), list(request.skip_tables))
        return plugin_pb2.GetTables.Response(tables=[arrow.schema_to_bytes(s) for s in schemas])

    def Sync(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        # A follow sync never ends by itself: it stops when the CLI cancels the call
        # (exit, signal) or the server shuts down, both of which run this callback.
        stop = threading.Event()
        context.add_callback(stop.set)
        session = self.sessions.get(context.peer())
        if session is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "k8s-watcher: Sync before Init on this connection (the plugin keeps each CLI's spec by its connection)",
            )
            return
        try:
            for msg in self.plugin.sync(session, sync_options(request, stop)):
                yield to_protocol(msg)
        except (ConfigError, CacheError) as exc:
            log.error("sync failed: %s", exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"k8s-watcher: {exc}")
        finally:
            stop.set()

    def TestConnection(self, request: Any, context: Any) -> Any:
        try:
            problems = self.plugin.test_connection(request.spec)
        except ConfigError as exc:
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


def serve_plugin(
    plugin: Plugin | Future[Plugin],
    address: str,
    *,
    network: str = "tcp",
    tls: ServerTls | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> grpc.Server:
    return serve_servicer(
        PluginServicer(plugin), address, network=network, tls=tls, on_listening=on_listening
    )
