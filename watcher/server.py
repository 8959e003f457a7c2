"""The gRPC server of a CloudQuery plugin (protocol v3 plus discovery v1).

Kept apart from ``watcher.plugin`` so that serving costs only grpc and the SDK's
generated code: the benchmark's null source starts with it on every sync, and
importing the plugin (SQLAlchemy, the kubernetes client) took 0.8 s of that.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

import grpc
from cloudquery.discovery_v1 import discovery_pb2_grpc
from cloudquery.plugin_v3 import plugin_pb2_grpc
from cloudquery.sdk.internal.servers.discovery_v1.discovery import DiscoveryServicer

log = logging.getLogger(__name__)


def serve_servicer(
    servicer: plugin_pb2_grpc.PluginServicer, address: str, *, network: str = "tcp", max_workers: int = 10
) -> grpc.Server:
    """Start a gRPC server for a protocol v3 servicer (plus discovery v1) and return it.

    The CLI passes unix socket addresses as bare paths, which grpc cannot bind
    ("Failed to bind"); they need the ``unix:`` scheme.
    """
    if network == "unix" and not address.startswith("unix:"):
        address = f"unix:{address}"
    # The CLI sends and accepts large record batches; lift gRPC's 4 MB default.
    options = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options)
    discovery_pb2_grpc.add_DiscoveryServicer_to_server(DiscoveryServicer([3]), server)
    plugin_pb2_grpc.add_PluginServicer_to_server(servicer, server)
    if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    server.start()
    log.info("plugin server listening on %s", address)
    return server


def serve_until_signalled(server: grpc.Server) -> None:
    """Block until SIGINT or SIGTERM, then stop the server. The CLI stops a
    ``registry: local`` plugin with SIGINT: that is a clean exit, not a traceback."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(grace=2).wait(5)
