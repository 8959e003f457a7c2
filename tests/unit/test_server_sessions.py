"""A daemon serves several CLIs at once: each Sync runs with the spec its own CLI's Init
sent (on the same connection), never with the spec of a CLI that called Init later."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cloudquery.plugin_v3 import plugin_pb2, plugin_pb2_grpc

from watcher.messages import SyncError, SyncMessage, SyncOptions
from watcher.server import Sessions, serve_plugin


class EchoPlugin:
    """Its session is the spec it was given; its sync reports that spec as an error message."""

    name = "k8s-watcher"

    def init(self, raw_spec: bytes, *, no_connection: bool) -> str:
        return raw_spec.decode()

    def sync(self, session: str, options: SyncOptions) -> Iterator[SyncMessage]:
        yield SyncError("k8s_clusters", session)


def _connect(address: str) -> tuple[grpc.Channel, Any]:
    # A subchannel pool of its own: a connection of its own, as each CLI process has.
    channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
    return channel, plugin_pb2_grpc.PluginStub(channel)


def _synced_spec(stub: Any) -> str:
    (response,) = stub.Sync(plugin_pb2.Sync.Request(), timeout=5)
    return str(response.error.error)


def test_each_connection_syncs_with_the_spec_its_own_init_sent() -> None:
    addresses: list[str] = []
    server = serve_plugin(EchoPlugin(), "127.0.0.1:0", on_listening=addresses.append)  # type: ignore[arg-type]
    try:
        (a, stub_a), (b, stub_b) = _connect(addresses[0]), _connect(addresses[0])
        stub_a.Init(plugin_pb2.Init.Request(spec=b'{"incremental": true}'), timeout=5)
        stub_b.Init(plugin_pb2.Init.Request(spec=b"{}"), timeout=5)  # after a's Init, before a's Sync
        assert _synced_spec(stub_a) == '{"incremental": true}'
        assert _synced_spec(stub_b) == "{}"
        a.close()
        b.close()
    finally:
        server.stop(grace=None)


def test_a_sync_on_a_connection_that_never_called_init_fails_with_a_clear_error() -> None:
    addresses: list[str] = []
    server = serve_plugin(EchoPlugin(), "127.0.0.1:0", on_listening=addresses.append)  # type: ignore[arg-type]
    try:
        initialised, stub = _connect(addresses[0])
        stub.Init(plugin_pb2.Init.Request(spec=b"{}"), timeout=5)
        other, stranger = _connect(addresses[0])
        with pytest.raises(grpc.RpcError) as failed:
            _synced_spec(stranger)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Sync before Init" in str(failed.value.details())
        initialised.close()
        other.close()
    finally:
        server.stop(grace=None)


def test_the_sessions_forget_the_least_recently_used_connection_first() -> None:
    sessions = Sessions()
    for i in range(Sessions.LIMIT):
        sessions.put(f"peer-{i}", f"spec-{i}")  # type: ignore[arg-type]
    assert sessions.get("peer-0") == "spec-0"  # used again: now the most recent
    sessions.put("peer-new", "spec-new")  # type: ignore[arg-type]
    assert sessions.get("peer-0") == "spec-0"
    assert sessions.get("peer-1") is None
    assert sessions.get("peer-new") == "spec-new"
