"""watcher.transport against a real kube-apiserver v1.37 from the test bed: h2 negotiated,
hundreds of watch streams on a few connections (the server's own SETTINGS_MAX_CONCURRENT_STREAMS
decides how many), events arriving on every one of them, a server that refuses HTTP/2
(``--disable-http2-serving``) served over a bounded number of HTTP/1.1 connections, and the
same through an HTTP CONNECT proxy.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import signal
import ssl
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import ApiServer, ControlPlanes, control_planes
from testbed.proxy import ConnectProxy
from watcher.transport import ConnectionPool, HttpResponse, TransportError

WATCH = "/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true&timeoutSeconds=60"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlanes]:
    with control_planes(["tp"], workdir=tmp_path_factory.mktemp("transport")) as cp:
        yield cp


@pytest.fixture(scope="module")
def http1_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlanes]:
    """An API server that refuses HTTP/2 (ALPN offers only http/1.1)."""
    workdir = tmp_path_factory.mktemp("transport-http1")
    with control_planes(["tph1"], workdir=workdir, apiserver_args=("--disable-http2-serving",)) as cp:
        yield cp


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a test's coroutine; fail on anything the loop reports on the side (a future's
    exception nobody retrieved, a callback that raised)."""
    reported: list[dict[str, Any]] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
        try:
            return await asyncio.wait_for(coro, 120)
        finally:
            gc.collect()

    result = asyncio.run(main())
    assert not reported, [c.get("message") for c in reported]
    return result


def pool_for(server: ApiServer, **options: Any) -> ConnectionPool:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    return ConnectionPool(server.url, ssl_context=ctx, name="it", **options)


def auth(server: ApiServer) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {server.admin_token}"), ("Accept", "application/json")]


def sockets_to(port: int) -> int:
    """This process's established TCP connections to ``port`` on loopback, from /proc."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01" and fields[9] in inodes:
            count += 1
    return count


async def lines_until(resp: HttpResponse, name: str) -> dict[str, Any]:
    """Read watch events until one about the object ``name``; return it."""
    buffered = b""
    async for chunk in resp.chunks(idle_timeout=30):
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            event = json.loads(line)
            if event["object"]["metadata"].get("name") == name:
                return event
    raise AssertionError(f"watch ended before an event about {name}")


def test_version_over_h2(plane: ControlPlanes, caplog: pytest.LogCaptureFixture) -> None:
    server = plane.servers["tp"]

    async def main() -> None:
        # kubeconfig tls-server-name: the certificate is checked against this name.
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        pool = ConnectionPool(server.url, ssl_context=ctx, server_hostname="localhost", name="it")
        resp = await pool.request("GET", "/version", auth(server))
        assert (resp.status, resp.reason, resp.http_version) == (200, "OK", "HTTP/2")
        assert json.loads(await resp.read())["gitVersion"] == "v1.37.2"
        assert (pool.protocol, pool.connections, pool.streams) == ("h2", 1, 0)
        denied = await pool.request("GET", "/api/v1/namespaces", [("Authorization", "Bearer wrong")])
        assert denied.status == 401 and b"Unauthorized" in await denied.read()
        await pool.aclose()

    with caplog.at_level(logging.INFO, logger="watcher.transport"):
        run(main())
    assert re.search(
        r"it: connected to https://127\.0\.0\.1:\d+ over h2 \(max 100 concurrent streams\)", caplog.text
    )


def test_200_watches_share_two_connections_and_all_see_an_event(plane: ControlPlanes) -> None:
    """kube-apiserver v1.37 allows 100 concurrent streams per connection (unless started with
    --http2-max-streams-per-connection), so 200 watches take exactly two connections."""
    server = plane.servers["tp"]
    name = f"cm-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        pool = pool_for(server)
        watches = await asyncio.gather(*(pool.request("GET", WATCH, auth(server)) for _ in range(200)))
        assert {w.status for w in watches} == {200}
        assert {w.http_version for w in watches} == {"HTTP/2"}
        assert (pool.protocol, pool.connections, pool.streams) == ("h2", 2, 200)
        assert sockets_to(server.port) == 2
        readers = [asyncio.ensure_future(lines_until(w, name)) for w in watches]
        await asyncio.to_thread(
            server.admin().create, "/api/v1/namespaces/default/configmaps", {"metadata": {"name": name}}
        )
        events = await asyncio.gather(*readers)
        assert {e["type"] for e in events} == {"ADDED"}
        for w in watches:
            w.cancel()
        assert pool.streams == 0 and pool.connections == 2
        # Freed streams are reused: 100 more watches open no new connection.
        more = await asyncio.gather(*(pool.request("GET", WATCH, auth(server)) for _ in range(100)))
        assert pool.connections == 2 and pool.streams == 100
        for w in more:
            await w.aclose()
        await pool.aclose()
        await asyncio.sleep(0.1)
        assert sockets_to(server.port) == 0

    run(main())


def test_a_server_without_http2_is_served_over_bounded_http1(
    http1_plane: ControlPlanes, caplog: pytest.LogCaptureFixture
) -> None:
    server = http1_plane.servers["tph1"]
    name = f"cm-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        pool = pool_for(server, max_http1_connections=4)
        lists = await asyncio.gather(
            *(pool.request("GET", "/api/v1/namespaces/default/configmaps", auth(server)) for _ in range(10))
        )
        bodies = [json.loads(await r.read()) for r in lists]
        assert {b["kind"] for b in bodies} == {"ConfigMapList"}
        assert {r.http_version for r in lists} == {"HTTP/1.1"}
        assert pool.protocol == "http/1.1" and 1 <= pool.connections <= 4
        # Four watches hold every connection; a fifth request waits for one.
        watches = await asyncio.gather(*(pool.request("GET", WATCH, auth(server)) for _ in range(4)))
        assert pool.connections == 4 and sockets_to(server.port) == 4
        with pytest.raises(TransportError) as info:
            await pool.request("GET", "/version", auth(server), timeout=0.5)
        assert info.value.kind == "timeout"
        late = asyncio.ensure_future(pool.request("GET", "/version", auth(server)))
        readers = [asyncio.ensure_future(lines_until(w, name)) for w in watches]
        await asyncio.to_thread(
            server.admin().create, "/api/v1/namespaces/default/configmaps", {"metadata": {"name": name}}
        )
        assert {e["type"] for e in await asyncio.gather(*readers)} == {"ADDED"}
        await watches[0].aclose()  # a watch abandoned mid-body closes its connection
        version = await late
        assert json.loads(await version.read())["gitVersion"] == "v1.37.2"
        assert pool.connections <= 4 and sockets_to(server.port) <= 4
        for w in watches[1:]:
            w.cancel()
        await pool.aclose()

    with caplog.at_level(logging.INFO, logger="watcher.transport"):
        run(main())
    assert "over HTTP/1.1" in caplog.text and "over h2" not in caplog.text


def test_watches_go_through_a_connect_proxy(plane: ControlPlanes) -> None:
    server = plane.servers["tp"]
    proxy = ConnectProxy().start()
    name = f"cm-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        pool = pool_for(server, proxy_url=proxy.url)
        watches = await asyncio.gather(*(pool.request("GET", WATCH, auth(server)) for _ in range(20)))
        assert (pool.protocol, pool.connections) == ("h2", 1)
        readers = [asyncio.ensure_future(lines_until(w, name)) for w in watches]
        await asyncio.to_thread(
            server.admin().create, "/api/v1/namespaces/default/configmaps", {"metadata": {"name": name}}
        )
        assert len(await asyncio.gather(*readers)) == 20
        for w in watches:
            w.cancel()
        await pool.aclose()

    try:
        run(main())
        assert proxy.tunnels == [f"127.0.0.1:{server.port}"]
    finally:
        proxy.stop()


def test_a_frozen_server_is_detected_by_ping(plane: ControlPlanes) -> None:
    """No frame for ping_interval sends a PING; kube-apiserver answers it while alive, and a
    stopped (SIGSTOP) server fails every stream of the connection after ping_timeout."""
    server = plane.servers["tp"]
    assert server.process.proc is not None
    pid = server.process.proc.pid

    async def main() -> None:
        pool = pool_for(server, ping_interval=0.5, ping_timeout=1.0)
        watches = await asyncio.gather(*(pool.request("GET", WATCH, auth(server)) for _ in range(5)))
        await asyncio.sleep(2.5)  # several PINGs answered: the quiet connection lives
        assert pool.connections == 1 and pool.streams == 5
        os.kill(pid, signal.SIGSTOP)
        try:
            started = asyncio.get_running_loop().time()
            for w in watches:
                with pytest.raises(TransportError) as info:
                    async for _ in w.chunks():
                        pass
                assert info.value.kind == "timeout"
            assert asyncio.get_running_loop().time() - started < 3
            assert pool.connections == 0 and pool.streams == 0
            await asyncio.sleep(0.1)
            assert sockets_to(server.port) == 0  # aborted, not waiting for a TLS goodbye
        finally:
            os.kill(pid, signal.SIGCONT)
        resp = await pool.request("GET", "/version", auth(server))
        assert resp.status == 200 and pool.connections == 1
        await pool.aclose()

    run(main())


def test_watches_end_when_the_server_restarts_and_the_pool_reconnects(plane: ControlPlanes) -> None:
    server = plane.servers["tp"]

    async def main() -> None:
        pool = pool_for(server)
        watches = await asyncio.gather(*(pool.request("GET", WATCH, auth(server)) for _ in range(10)))

        async def drain(w: HttpResponse) -> str:
            try:
                async for _ in w.chunks(idle_timeout=60):
                    pass
            except TransportError as exc:
                return exc.kind
            return "ended"

        readers = [asyncio.ensure_future(drain(w)) for w in watches]
        await asyncio.to_thread(server.stop)
        outcomes = set(await asyncio.gather(*readers))
        assert outcomes <= {"ended", "reset", "goaway"}, outcomes
        assert pool.streams == 0
        await asyncio.to_thread(server.start)
        resp = await pool.request("GET", "/version", auth(server))
        assert resp.status == 200 and pool.connections == 1 and pool.protocol == "h2"
        await pool.aclose()

    run(main())
