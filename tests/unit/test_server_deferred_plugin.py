"""A ``registry: local`` plugin listens before it is built: the CLI gives it 5 s to accept
its connection, and each call waits for the plugin instead."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import grpc
from cloudquery.plugin_v3 import plugin_pb2, plugin_pb2_grpc

from watcher.server import serve_plugin


def test_the_server_accepts_connections_before_the_plugin_exists_and_calls_wait_for_it() -> None:
    plugin: Future[Any] = Future()
    addresses: list[str] = []
    server = serve_plugin(plugin, "127.0.0.1:0", on_listening=addresses.append)
    try:
        channel = grpc.insecure_channel(addresses[0])
        grpc.channel_ready_future(channel).result(timeout=5)  # listening, no plugin yet
        stub = plugin_pb2_grpc.PluginStub(channel)
        answers: list[str] = []
        call = threading.Thread(
            target=lambda: answers.append(stub.GetName(plugin_pb2.GetName.Request()).name)
        )
        call.start()
        call.join(0.3)
        assert call.is_alive() and not answers  # waiting for the plugin
        plugin.set_result(SimpleNamespace(name="k8s-watcher"))
        call.join(5)
        assert answers == ["k8s-watcher"]
        channel.close()
    finally:
        server.stop(grace=None)


def test_a_plugin_that_failed_to_build_fails_each_call_with_its_error() -> None:
    plugin: Future[Any] = Future()
    plugin.set_exception(RuntimeError("no module named pyarrow"))
    addresses: list[str] = []
    server = serve_plugin(plugin, "127.0.0.1:0", on_listening=addresses.append)
    try:
        with grpc.insecure_channel(addresses[0]) as channel:
            stub = plugin_pb2_grpc.PluginStub(channel)
            try:
                stub.GetName(plugin_pb2.GetName.Request(), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNKNOWN
            else:
                raise AssertionError("GetName succeeded without a plugin")
    finally:
        server.stop(grace=None)
