"""watcher.transport against in-process servers: an HTTP/2 server built with the same ``h2``
library and an HTTP/1.1 server built with ``h11``, both on loopback (TLS with ALPN from a
throwaway CA), so every protocol path runs for real in milliseconds: spill-over at
SETTINGS_MAX_CONCURRENT_STREAMS, GOAWAY, PING timeout, RST_STREAM, flow-control credit,
keep-alive and the HTTP/1.1 connection limit, CONNECT proxies.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import h11
import hyperframe.frame
import pytest

from testbed.cluster import Pki
from testbed.proxy import ConnectProxy
from watcher import transport
from watcher.transport import HTTP1_HIGH_WATER, STREAM_WINDOW, ConnectionPool, HttpResponse, TransportError

MiB = 1 << 20


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a test's coroutine; fail on anything the loop reports on the side (a future's
    exception nobody retrieved, a callback that raised)."""
    reported: list[dict[str, Any]] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: reported.append(context))
        try:
            return await asyncio.wait_for(coro, 20)
        finally:
            gc.collect()

    result = asyncio.run(main())
    assert not reported, [c.get("message") for c in reported]
    return result


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def client_tls(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_file))


def server_tls(pki: Pki, alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.cert_file), str(pki.key_file))
    ctx.set_alpn_protocols(alpn)
    return ctx


# --------------------------------------------------------------------------- fake HTTP/2 server


class H2Request:
    """One request as the fake server sees it, with the calls a handler answers it by."""

    def __init__(self, conn: ServerConn, stream_id: int, headers: dict[str, str]) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.headers = headers
        self.body = b""
        self.ended = asyncio.Event()
        self.reset_code: int | None = None
        self.sent = 0

    def respond(
        self, status: int = 200, headers: tuple[tuple[str, str], ...] = (), *, end: bool = False
    ) -> None:
        self.conn.h2.send_headers(self.stream_id, [(":status", str(status)), *headers], end_stream=end)
        self.conn.flush()

    async def send(self, data: bytes, *, end: bool = False) -> None:
        """Send ``data`` as fast as the client's windows allow."""
        h2c = self.conn.h2
        while data:
            window = min(h2c.local_flow_control_window(self.stream_id), h2c.max_outbound_frame_size)
            if window <= 0:
                self.conn.window_open.clear()
                await self.conn.window_open.wait()
                continue
            piece, data = data[:window], data[window:]
            h2c.send_data(self.stream_id, piece)
            self.sent += len(piece)
            self.conn.flush()
        if end:
            self.end()

    def end(self) -> None:
        self.conn.h2.end_stream(self.stream_id)
        self.conn.flush()

    def reset(self, code: h2.errors.ErrorCodes) -> None:
        self.conn.h2.reset_stream(self.stream_id, code)
        self.conn.flush()


Handler = Callable[[H2Request], Awaitable[None]]


class ServerConn(asyncio.Protocol):
    def __init__(self, server: FakeH2Server) -> None:
        self.server = server
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: server.max_streams}
        )
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, H2Request] = {}
        self.window_open = asyncio.Event()
        self.pings = 0
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.conns.append(self)
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                req = H2Request(self, event.stream_id, dict(event.headers))
                self.requests[event.stream_id] = req
                self.server.requests.append(req)
                self.server.tasks.add(asyncio.ensure_future(self.server.handler(req)))
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id].body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.requests[event.stream_id].ended.set()
            elif isinstance(event, h2.events.StreamReset):
                self.requests[event.stream_id].reset_code = event.error_code
                self.server.resets.append(event.error_code)
            elif isinstance(event, h2.events.WindowUpdated):
                self.window_open.set()
            elif isinstance(event, h2.events.PingReceived):
                self.pings += 1
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.h2.data_to_send())

    def goaway(self, last_stream_id: int) -> None:
        """Send GOAWAY and go on serving the streams up to ``last_stream_id`` (as Go's server
        does; h2 alone would refuse to send on them)."""
        self.h2.close_connection(last_stream_id=last_stream_id)
        self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
        self.flush()


class FakeH2Server:
    def __init__(self, pki: Pki, handler: Handler, *, max_streams: int = 100) -> None:
        self.pki = pki
        self.handler = handler
        self.max_streams = max_streams
        self.conns: list[ServerConn] = []
        self.requests: list[H2Request] = []
        self.resets: list[int] = []
        self.tasks: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> FakeH2Server:
        loop = asyncio.get_running_loop()
        ctx = server_tls(self.pki, ["h2"])
        self.server = await loop.create_server(lambda: ServerConn(self), "127.0.0.1", 0, ssl=ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        self.origin = f"https://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in self.conns:
            if conn.transport is not None:
                conn.transport.abort()
        self.server.close()

    def pool(self, **options: Any) -> ConnectionPool:
        return ConnectionPool(self.origin, ssl_context=client_tls(self.pki), name="test", **options)


async def hold_open(req: H2Request) -> None:
    """Answer 200 and keep the stream open (a watch with nothing to say)."""
    req.respond(200, (("content-type", "application/json"),))
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- HTTP/2 tests


def test_get_over_h2(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    async def handler(req: H2Request) -> None:
        req.respond(200, (("content-type", "application/json"), ("x-many", "a"), ("x-many", "b")))
        await req.send(b'{"major": "1"}', end=True)

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            assert pool.protocol is None and pool.connections == 0
            resp = await pool.request(
                "GET", "/version?x=1", [("Authorization", "Bearer s3cret"), ("Accept", "*/*")]
            )
            assert (resp.status, resp.reason, resp.http_version) == (200, "OK", "HTTP/2")
            assert resp.headers["content-type"] == "application/json"
            assert resp.headers["x-many"] == "a, b"
            assert await resp.read() == b'{"major": "1"}'
            assert (pool.protocol, pool.connections, pool.streams) == ("h2", 1, 0)
            seen = server.requests[0].headers
            assert seen[":path"] == "/version?x=1" and seen[":authority"] == f"127.0.0.1:{server.port}"
            assert seen["authorization"] == "Bearer s3cret" and seen[":method"] == "GET"
            await pool.aclose()

    with caplog.at_level(logging.INFO, logger="watcher.transport"):
        run(main())
    assert "test: connected to https://127.0.0.1:" in caplog.text
    assert "over h2 (max 100 concurrent streams)" in caplog.text


def test_full_connections_spill_over_to_new_ones(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH2Server(pki, hold_open, max_streams=3) as server:
            pool = server.pool()
            responses = await asyncio.gather(*(pool.request("GET", f"/w{i}", []) for i in range(7)))
            assert all(r.status == 200 for r in responses)
            assert (pool.connections, pool.streams) == (3, 7)
            assert sorted(len(c.requests) for c in server.conns) == [1, 3, 3]
            for resp in responses[:4]:
                await resp.aclose()
            assert pool.streams == 3
            # Freed streams are used again before any new connection is opened.
            more = await asyncio.gather(*(pool.request("GET", f"/again{i}", []) for i in range(4)))
            assert (pool.connections, pool.streams) == (3, 7)
            for resp in responses[4:] + more:
                resp.cancel()
            await pool.aclose()

    run(main())


def test_a_crowd_of_requests_fills_connections_in_order(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """600 requests at once, 10 streams a connection: exactly 60 connections, opened one
    after the other, each carrying the next 10 requests in the order they were made; and
    each new connection wakes only the 10 requests it has room for, not the whole crowd
    (which made 25,000 watches re-opening after a restart cost minutes of CPU)."""
    looks = 0
    find = ConnectionPool._h2_with_capacity

    def counted(pool: ConnectionPool) -> Any:
        nonlocal looks
        looks += 1
        return find(pool)

    monkeypatch.setattr(ConnectionPool, "_h2_with_capacity", counted)

    async def main() -> None:
        async with FakeH2Server(pki, hold_open, max_streams=10) as server:
            pool = server.pool()
            responses = await asyncio.gather(*(pool.request("GET", f"/w{i:03}", []) for i in range(600)))
            assert {r.status for r in responses} == {200}
            assert (pool.connections, pool.streams, len(server.conns)) == (60, 600, 60)
            for k, conn in enumerate(server.conns):
                paths = sorted(r.headers[":path"] for r in conn.requests.values())
                assert paths == [f"/w{i:03}" for i in range(10 * k, 10 * k + 10)]
            assert looks < 2 * 600  # each request looks for a slot about once
            for resp in responses:
                resp.cancel()
            await pool.aclose()

    run(main())


def test_goaway_retries_unprocessed_streams_elsewhere_and_lets_the_others_finish(pki: Pki) -> None:
    async def handler(req: H2Request) -> None:
        if req.conn is not req.conn.server.conns[0] or req.stream_id < 5:
            req.respond(200)
        await asyncio.Event().wait()

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            first, second = await pool.request("GET", "/a", []), await pool.request("GET", "/b", [])
            third = asyncio.ensure_future(pool.request("GET", "/c", []))
            await eventually(lambda: len(server.requests) == 3)
            conn = server.conns[0]
            conn.goaway(last_stream_id=3)
            # Stream 5 was never processed: it is sent again on a new connection.
            retried = await third
            assert retried.status == 200 and len(server.conns) == 2
            assert [r.headers[":path"] for r in server.conns[1].requests.values()] == ["/c"]
            # Streams 1 and 3 go on after the GOAWAY and end normally.
            await server.requests[0].send(b"one", end=True)
            await server.requests[1].send(b"two", end=True)
            assert await first.read() == b"one"
            assert await second.read() == b"two"
            # The drained connection is closed; new requests use the new one.
            await asyncio.wait_for(conn.closed.wait(), 5)
            fourth = await pool.request("GET", "/d", [])
            assert fourth.status == 200 and len(server.conns) == 2 and pool.connections == 1
            await pool.aclose()

    run(main())


def test_a_request_dropped_by_goaway_twice_fails_with_kind_goaway(pki: Pki) -> None:
    async def go_away(req: H2Request) -> None:
        req.conn.goaway(last_stream_id=0)

    async def main() -> None:
        async with FakeH2Server(pki, go_away) as server:
            pool = server.pool()
            with pytest.raises(TransportError) as info:
                await pool.request("GET", "/a", [])
            assert info.value.kind == "goaway" and len(server.conns) == 2
            await pool.aclose()

    run(main())


def test_a_refused_stream_is_sent_again(pki: Pki) -> None:
    async def refuse_first(req: H2Request) -> None:
        if len(req.conn.server.requests) == 1:
            req.reset(h2.errors.ErrorCodes.REFUSED_STREAM)
        else:
            req.respond(200, end=True)

    async def main() -> None:
        async with FakeH2Server(pki, refuse_first) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/a", [])
            assert resp.status == 200 and len(server.requests) == 2 and len(server.conns) == 1
            await pool.aclose()

    run(main())


def test_unanswered_ping_kills_the_connection_and_fails_its_streams(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH2Server(pki, hold_open) as server:
            pool = server.pool(ping_interval=0.1, ping_timeout=0.2)
            resp = await pool.request("GET", "/watch", [])
            # A healthy but quiet connection is pinged and lives.
            await asyncio.sleep(0.45)
            assert server.conns[0].pings >= 2 and pool.connections == 1
            assert server.conns[0].transport is not None
            server.conns[0].transport.pause_reading()  # the server stops answering
            started = asyncio.get_running_loop().time()
            with pytest.raises(TransportError) as info:
                async for _ in resp.chunks():
                    pass
            elapsed = asyncio.get_running_loop().time() - started
            assert info.value.kind == "timeout" and "PING" in str(info.value)
            assert 0.15 < elapsed < 1.0
            assert pool.connections == 0 and pool.streams == 0
            await pool.aclose()

    run(main())


def test_stream_reset_by_the_server(pki: Pki) -> None:
    async def handler(req: H2Request) -> None:
        req.respond(200)
        await req.send(b"partial")
        req.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/watch", [])
            got = []
            with pytest.raises(TransportError) as info:
                async for chunk in resp.chunks():
                    got.append(chunk)
            assert got == [b"partial"]
            assert info.value.kind == "reset" and "INTERNAL_ERROR" in str(info.value)
            assert pool.connections == 1 and pool.streams == 0
            await pool.aclose()

    run(main())


def test_connection_loss_fails_every_stream(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH2Server(pki, hold_open) as server:
            pool = server.pool()
            responses = [await pool.request("GET", f"/w{i}", []) for i in range(3)]
            assert server.conns[0].transport is not None
            server.conns[0].transport.abort()
            for resp in responses:
                with pytest.raises(TransportError) as info:
                    await resp.read()
                assert info.value.kind == "reset"
            assert (pool.connections, pool.streams) == (0, 0)
            await pool.aclose()

    run(main())


def test_cancel_ends_the_iteration_quietly_and_resets_the_stream(pki: Pki) -> None:
    async def handler(req: H2Request) -> None:
        req.respond(200)
        await req.send(b"event\n")
        await asyncio.Event().wait()

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/watch", [])
            got: list[bytes] = []

            async def consume() -> None:
                async for chunk in resp.chunks():
                    got.append(chunk)

            consumer = asyncio.ensure_future(consume())
            await eventually(lambda: got == [b"event\n"])
            resp.cancel()
            await asyncio.wait_for(consumer, 2)  # no exception
            await eventually(lambda: server.resets == [h2.errors.ErrorCodes.CANCEL])
            assert pool.streams == 0 and pool.connections == 1
            await pool.aclose()

    run(main())


def test_a_reader_that_stops_reading_abandons_the_stream(pki: Pki) -> None:
    async def handler(req: H2Request) -> None:
        req.respond(200)
        await req.send(b"event\n")
        await asyncio.Event().wait()

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            first, second = await pool.request("GET", "/a", []), await pool.request("GET", "/b", [])

            async def consume(resp: HttpResponse) -> None:
                async for _ in resp.chunks():
                    pass

            reader = asyncio.ensure_future(consume(first))
            await asyncio.sleep(0.05)
            reader.cancel()  # e.g. a stop request cancels the informer's task
            with pytest.raises(asyncio.CancelledError):
                await reader
            iterator = second.chunks()
            async for _ in iterator:
                break
            await iterator.aclose()
            await eventually(lambda: server.resets == [h2.errors.ErrorCodes.CANCEL] * 2)
            assert pool.streams == 0
            await pool.aclose()

    run(main())


def test_idle_timeout_abandons_the_stream(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH2Server(pki, hold_open) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/watch", [])
            with pytest.raises(TransportError) as info:
                async for _ in resp.chunks(idle_timeout=0.1):
                    pass
            assert info.value.kind == "timeout"
            await eventually(lambda: server.resets == [h2.errors.ErrorCodes.CANCEL])
            assert pool.streams == 0
            await pool.aclose()

    run(main())


def test_response_timeout_covers_waiting_for_headers(pki: Pki) -> None:
    async def never(req: H2Request) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        async with FakeH2Server(pki, never) as server:
            pool = server.pool()
            with pytest.raises(TransportError) as info:
                await pool.request("GET", "/slow?token=no", [("Authorization", "Bearer s3cret")], timeout=0.2)
            assert info.value.kind == "timeout"
            assert "s3cret" not in str(info.value) and "token" not in str(info.value)
            await eventually(lambda: server.resets == [h2.errors.ErrorCodes.CANCEL])
            assert pool.streams == 0
            await pool.aclose()

    run(main())


def test_a_slow_consumer_holds_the_server_at_the_stream_window(pki: Pki) -> None:
    body = bytes(range(256)) * (6 * MiB // 256)
    requests: list[H2Request] = []

    async def handler(req: H2Request) -> None:
        requests.append(req)
        req.respond(200)
        await req.send(body, end=True)

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/big", [])
            await eventually(lambda: requests and requests[0].sent >= STREAM_WINDOW - 64 * 1024)
            await asyncio.sleep(0.1)
            assert requests[0].sent <= STREAM_WINDOW  # nothing read, nothing credited: the server waits
            assert await resp.read() == body
            assert requests[0].sent == len(body)
            await pool.aclose()

    run(main())


def test_credit_of_small_bodies_is_never_lost(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a connection window of 64 KiB, 120 responses of 1,000 bytes (half of them read,
    half abandoned unread) only all arrive if every stream's credit, held back below
    CREDIT_BATCH, is returned when its reader stops."""
    monkeypatch.setattr(transport, "CONNECTION_WINDOW", 65536)
    monkeypatch.setattr(transport, "STREAM_WINDOW", 65535)

    async def handler(req: H2Request) -> None:
        req.respond(200)
        await req.send(b"x" * 1000, end=True)

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            for i in range(120):
                resp = await asyncio.wait_for(pool.request("GET", f"/{i}", []), 2)
                if i % 2:
                    assert len(await asyncio.wait_for(resp.read(), 2)) == 1000
                else:
                    await eventually(lambda r=resp: r._ended)  # received, never read
                    await resp.aclose()
            assert pool.connections == 1
            await pool.aclose()

    run(main())


def test_idle_timeout_counts_from_the_last_wait(pki: Pki) -> None:
    """A stream whose events come faster than idle_timeout never times out however long it
    lives; once they stop, it times out about idle_timeout later."""

    async def ticking(req: H2Request) -> None:
        req.respond(200)
        for _ in range(12):
            await req.send(b"tick\n")
            await asyncio.sleep(0.05)
        await asyncio.Event().wait()

    async def main() -> None:
        async with FakeH2Server(pki, ticking) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/watch", [])
            ticks = 0
            loop = asyncio.get_running_loop()
            with pytest.raises(TransportError) as info:
                async for _ in resp.chunks(idle_timeout=0.2):
                    ticks += 1
                    last = loop.time()
            assert info.value.kind == "timeout" and ticks == 12
            assert 0.15 <= loop.time() - last < 0.6
            await pool.aclose()

    run(main())


def test_request_body_larger_than_the_initial_window(pki: Pki) -> None:
    payload = b"x" * 200_000

    async def echo_size(req: H2Request) -> None:
        await req.ended.wait()
        req.respond(201)
        await req.send(str(len(req.body)).encode(), end=True)

    async def main() -> None:
        async with FakeH2Server(pki, echo_size) as server:
            pool = server.pool()
            resp = await pool.request(
                "POST", "/api/v1/namespaces", [("content-type", "application/json")], payload
            )
            assert (resp.status, await resp.read()) == (201, b"200000")
            assert server.requests[0].body == payload
            await pool.aclose()

    run(main())


def test_connections_without_streams_close_after_idle_close(pki: Pki) -> None:
    async def handler(req: H2Request) -> None:
        req.respond(200, end=True)

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool(idle_close=0.2)
            resp = await pool.request("GET", "/version", [])
            assert await resp.read() == b"" and pool.connections == 1
            await asyncio.wait_for(server.conns[0].closed.wait(), 2)
            assert pool.connections == 0
            again = await pool.request("GET", "/version", [])
            assert again.status == 200 and len(server.conns) == 2
            await pool.aclose()

    run(main())


def test_closing_the_pool_fails_what_is_in_flight(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH2Server(pki, hold_open) as server:
            pool = server.pool()
            watch = await pool.request("GET", "/watch", [])
            await pool.aclose()
            with pytest.raises(TransportError) as info:
                await watch.read()
            assert info.value.kind == "reset"
            assert pool.connections == 0
            with pytest.raises(TransportError):
                await pool.request("GET", "/late", [])
            await asyncio.wait_for(server.conns[0].closed.wait(), 2)

    run(main())


# --------------------------------------------------------------------------- fake HTTP/1.1 server


class FakeH1Server:
    """An HTTP/1.1 server (h11): ``handler(target)`` returns the status, headers and body parts
    of the response, or waits on ``release`` first when the target starts with ``/hold``."""

    def __init__(self, pki: Pki | None) -> None:
        self.pki = pki
        self.connections = 0
        self.open = 0
        self.release = asyncio.Event()
        self.targets: list[str] = []
        #: Close a kept-alive connection instead of answering its second request (the race
        #: of a server closing an idle connection as the client reuses it).
        self.close_reused = False
        self.written = 0

    async def __aenter__(self) -> FakeH1Server:
        ctx = server_tls(self.pki, ["http/1.1"]) if self.pki else None
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ctx)
        port = self.server.sockets[0].getsockname()[1]
        self.origin = f"{'https' if self.pki else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()  # no handler left waiting
        await asyncio.sleep(0.01)
        self.server.close()

    def pool(self, **options: Any) -> ConnectionPool:
        ctx = client_tls(self.pki) if self.pki else None
        return ConnectionPool(self.origin, ssl_context=ctx, name="test", **options)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        conn = h11.Connection(h11.SERVER)
        served = 0
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    target = event.target.decode()
                    self.targets.append(target)
                    served += 1
                    if self.close_reused and served > 1:
                        return
                    if target.startswith("/hold"):
                        await self.release.wait()
                    if target.startswith("/big"):
                        headers = [("transfer-encoding", "chunked")]
                        parts = [b"z" * 65536] * 512
                    elif target.startswith("/chunked"):
                        headers = [("transfer-encoding", "chunked")]
                        parts = [b"ab", b"cd", b"ef"]
                    else:
                        parts = [f"body of {target}".encode()]
                        headers = [("content-length", str(len(parts[0])))]
                    if target.startswith("/last"):
                        headers.append(("connection", "close"))
                    writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                    for part in parts:
                        writer.write(conn.send(h11.Data(data=part)))
                        await writer.drain()
                        self.written += len(part)
                elif isinstance(event, h11.EndOfMessage):
                    if conn.our_state is h11.SEND_BODY:
                        writer.write(conn.send(h11.EndOfMessage()))
                        await writer.drain()
                        conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (ConnectionError, h11.ProtocolError):
            return
        finally:
            self.open -= 1
            writer.close()


def test_http1_keeps_alive_and_reads_both_body_framings(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(pki) as server:  # TLS whose ALPN only offers http/1.1
            pool = server.pool()
            for target in ("/a", "/chunked", "/b"):
                resp = await pool.request("GET", target, [("Authorization", "Bearer s3cret")])
                assert resp.http_version == "HTTP/1.1" and resp.status == 200
                expected = b"abcdef" if target == "/chunked" else f"body of {target}".encode()
                assert await resp.read() == expected
            assert pool.protocol == "http/1.1"
            assert server.connections == 1 and pool.connections == 1
            await pool.aclose()

    run(main())


def test_http1_connection_close_is_honoured(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:
            pool = server.pool()
            assert await (await pool.request("GET", "/last", [])).read() == b"body of /last"
            await eventually(lambda: server.open == 0)
            assert pool.connections == 0
            assert await (await pool.request("GET", "/next", [])).read() == b"body of /next"
            assert server.connections == 2 and pool.connections == 1
            await pool.aclose()

    run(main())


def test_http1_bounds_connections_and_queues_requests_fifo(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:  # plain http://
            pool = server.pool(max_http1_connections=2)
            held = [asyncio.ensure_future(pool.request("GET", f"/hold{i}", [])) for i in range(2)]
            await eventually(lambda: len(server.targets) == 2)
            queued = [asyncio.ensure_future(pool.request("GET", f"/q{i}", [])) for i in range(3)]
            await asyncio.sleep(0.05)
            assert not any(q.done() for q in queued)
            assert server.connections == 2 and pool.connections == 2 and pool.streams == 2
            assert pool.waiting == 3
            server.release.set()
            for task in held:
                await (await task).read()
            results = [await (await q).read() for q in queued]
            assert pool.waiting == 0
            assert results == [b"body of /q0", b"body of /q1", b"body of /q2"]
            assert server.connections == 2 and server.targets[2:] == ["/q0", "/q1", "/q2"]
            await pool.aclose()

    run(main())


def test_http1_waiting_for_a_free_connection_times_out(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:
            pool = server.pool(max_http1_connections=1)
            held = asyncio.ensure_future(pool.request("GET", "/hold", []))
            await eventually(lambda: server.targets == ["/hold"])
            with pytest.raises(TransportError) as info:
                await pool.request("GET", "/late", [], timeout=0.1)
            assert info.value.kind == "timeout" and pool.waiting == 0
            server.release.set()
            assert await (await held).read() == b"body of /hold"
            assert await (await pool.request("GET", "/next", [])).read() == b"body of /next"
            assert server.connections == 1
            await pool.aclose()

    run(main())


def test_http1_a_freed_slot_goes_to_the_first_waiter_not_a_newcomer(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:
            pool = server.pool(max_http1_connections=1)
            held = asyncio.ensure_future(pool.request("GET", "/hold", []))
            await eventually(lambda: server.targets == ["/hold"])
            first = asyncio.ensure_future(pool.request("GET", "/first", []))
            await eventually(lambda: pool.waiting == 1)
            held.cancel()  # its connection closes: the slot is the waiter's
            newcomer = asyncio.ensure_future(pool.request("GET", "/newcomer", []))
            assert await (await first).read() == b"body of /first"
            assert await (await newcomer).read() == b"body of /newcomer"
            assert server.targets == ["/hold", "/first", "/newcomer"]
            await pool.aclose()

    run(main())


def test_http1_abandoned_body_closes_the_connection(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:
            pool = server.pool()
            server.release.clear()
            task = asyncio.ensure_future(pool.request("GET", "/hold", []))
            await eventually(lambda: server.targets == ["/hold"])
            task.cancel()  # the caller gave up before the answer: the connection is not reusable
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.connections == 0 and pool.streams == 0
            assert await (await pool.request("GET", "/x", [])).read() == b"body of /x"
            assert server.connections == 2
            await pool.aclose()

    run(main())


def test_http1_replays_a_get_once_when_a_reused_connection_was_closed(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:
            server.close_reused = True
            pool = server.pool()
            assert await (await pool.request("GET", "/a", [])).read() == b"body of /a"
            assert await (await pool.request("GET", "/b", [])).read() == b"body of /b"
            assert server.targets == ["/a", "/b", "/b"] and server.connections == 2
            # Not a replayable method: the caller decides.
            with pytest.raises(TransportError) as info:
                await pool.request("POST", "/c", [], b"{}")
            assert info.value.kind == "reset"
            await pool.aclose()

    run(main())


def test_http1_a_slow_consumer_stops_reading_the_socket(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/big", [])
            await asyncio.sleep(0.3)
            # Unread bytes stop at the high-water mark (plus what the kernel buffers): the
            # server is blocked long before its 32 MiB are out.
            assert resp._unacked <= HTTP1_HIGH_WATER + 2 * 65536
            assert server.written < 32 * MiB
            assert len(await resp.read()) == 32 * MiB and server.written == 32 * MiB
            await pool.aclose()

    run(main())


def test_http1_idle_connections_close_after_idle_close(pki: Pki) -> None:
    async def main() -> None:
        async with FakeH1Server(None) as server:
            pool = server.pool(idle_close=0.1)
            assert await (await pool.request("GET", "/a", [])).read() == b"body of /a"
            assert pool.connections == 1
            await eventually(lambda: server.open == 0)
            assert pool.connections == 0
            assert await (await pool.request("GET", "/b", [])).read() == b"body of /b"
            assert server.connections == 2
            await pool.aclose()

    run(main())


# --------------------------------------------------------------------------- connecting


def test_connect_and_tls_failures_have_their_kind(pki: Pki, tmp_path: Path) -> None:
    other = Pki.create(tmp_path / "other")

    async def main() -> None:
        refused = ConnectionPool("https://127.0.0.1:1", ssl_context=client_tls(pki))
        with pytest.raises(TransportError) as info:
            await refused.request("GET", "/", [])
        assert info.value.kind == "connect"
        async with FakeH2Server(pki, hold_open) as server:
            wrong_ca = ConnectionPool(server.origin, ssl_context=client_tls(other))
            with pytest.raises(TransportError) as info:
                await wrong_ca.request("GET", "/", [])
            assert info.value.kind == "tls"
            # tls-server-name: the certificate names 127.0.0.1 and localhost, not this.
            wrong_name = ConnectionPool(
                server.origin, ssl_context=client_tls(pki), server_hostname="kubernetes"
            )
            with pytest.raises(TransportError) as info:
                await wrong_name.request("GET", "/", [])
            assert info.value.kind == "tls"
            right_name = ConnectionPool(
                server.origin, ssl_context=client_tls(pki), server_hostname="localhost"
            )
            resp = await right_name.request("GET", "/", [])
            assert resp.status == 200
            await right_name.aclose()
            # insecure-skip-tls-verify: no CA, no name check.
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE
            skip = ConnectionPool(server.origin, ssl_context=insecure, server_hostname="kubernetes")
            assert (await skip.request("GET", "/", [])).status == 200 and skip.protocol == "h2"
            await skip.aclose()

    run(main())


def test_a_server_that_never_answers_the_tls_handshake_times_out(pki: Pki) -> None:
    """The transport's own TLS (_TlsTransport): a handshake cut by the connect timeout
    leaves no socket open and nothing reported on the side (run() checks)."""
    accepted: list[asyncio.StreamWriter] = []
    ended: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        ended.append(await reader.read())  # the ClientHello, then the client's close

    async def main() -> None:
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool(f"https://127.0.0.1:{port}", ssl_context=client_tls(pki), connect_timeout=0.2)
        with pytest.raises(TransportError) as info:
            await pool.request("GET", "/", [])
        assert info.value.kind == "connect" and "timed out" in str(info.value)
        await eventually(lambda: ended)  # the client closed its socket
        await pool.aclose()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_requests_go_through_a_connect_proxy(pki: Pki) -> None:
    proxy = ConnectProxy().start()

    async def main() -> None:
        async with FakeH2Server(pki, hold_open) as server:
            pool = server.pool(proxy_url=proxy.url)
            responses = [await pool.request("GET", f"/w{i}", []) for i in range(3)]
            assert all(r.status == 200 for r in responses)
            assert pool.protocol == "h2" and pool.connections == 1
            assert proxy.tunnels == [f"127.0.0.1:{server.port}"]
            await pool.aclose()
            # The proxy refuses targets off loopback: its answer is the error.
            refused = ConnectionPool(
                "https://example.invalid", ssl_context=client_tls(pki), proxy_url=proxy.url
            )
            with pytest.raises(TransportError) as info:
                await refused.request("GET", "/", [])
            assert info.value.kind == "proxy" and "403" in str(info.value)

    try:
        run(main())
    finally:
        proxy.stop()


class FakeProxy:
    """An asyncio tunnelling proxy: HTTP CONNECT (over TLS when given a Pki, demanding
    ``user:password`` when given) or SOCKS5; ``targets`` records what it was asked for."""

    def __init__(self, kind: str, pki: Pki | None = None, credentials: tuple[str, str] | None = None) -> None:
        self.kind = kind
        self.pki = pki
        self.credentials = credentials
        self.targets: list[tuple[str, int]] = []

    async def __aenter__(self) -> FakeProxy:
        ctx = server_tls(self.pki, ["http/1.1"]) if self.pki else None
        serve = self._socks if self.kind == "socks5" else self._connect
        self.server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ctx)
        port = self.server.sockets[0].getsockname()[1]
        auth = f"{self.credentials[0]}:{self.credentials[1]}@" if self.credentials else ""
        scheme = "https" if self.pki else self.kind
        self.url = f"{scheme}://{auth}127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        host, _, port = head.split(" ")[1].rpartition(":")
        if self.credentials:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            if f"Proxy-Authorization: Basic {token}" not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                writer.close()
                return
        self.targets.append((host, int(port)))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await self._pipe(reader, writer, "127.0.0.1", int(port))

    async def _socks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if self.credentials:
            assert 2 in methods
            writer.write(b"\x05\x02")
            await reader.readexactly(1)
            user = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            password = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            ok = (user, password) == self.credentials
            writer.write(b"\x01" + (b"\x00" if ok else b"\x01"))
            if not ok:
                writer.close()
                return
        else:
            writer.write(b"\x05\x00")
        _, _, _, kind = await reader.readexactly(4)
        if kind == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            host = str(ipaddress.ip_address(await reader.readexactly(4 if kind == 1 else 16)))
        port = int.from_bytes(await reader.readexactly(2), "big")
        self.targets.append((host, port))
        writer.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big"))
        await self._pipe(reader, writer, "127.0.0.1", port)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, port)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


def test_an_https_proxy_with_credentials_tunnels_tls_in_tls(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))  # the proxy's certificate, from "system" CAs

    async def main() -> None:
        async with FakeH2Server(pki, hold_open) as server, FakeProxy("http", pki, ("bob", "p@ss")) as proxy:
            pool = server.pool(proxy_url=proxy.url.replace("p@ss", "p%40ss"))
            resp = await pool.request("GET", "/w", [])
            assert resp.status == 200 and pool.protocol == "h2"
            assert proxy.targets == [("127.0.0.1", server.port)]
            await pool.aclose()
            wrong = server.pool(proxy_url=proxy.url.replace("p@ss", "nope"))
            with pytest.raises(TransportError) as info:
                await wrong.request("GET", "/w", [])
            assert info.value.kind == "proxy" and "407" in str(info.value) and "nope" not in str(info.value)

    run(main())


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_socks5_proxies(pki: Pki, scheme: str) -> None:
    async def main() -> None:
        async with FakeH2Server(pki, hold_open) as server, FakeProxy("socks5", None, ("amy", "pw")) as proxy:
            origin = f"https://localhost:{server.port}"
            url = proxy.url.replace("socks5://", f"{scheme}://")
            pool = ConnectionPool(origin, ssl_context=client_tls(pki), proxy_url=url)
            resp = await pool.request("GET", "/w", [])
            assert resp.status == 200 and pool.protocol == "h2"
            # socks5h: the proxy resolves the name; socks5: it is resolved here.
            expected_host = "localhost" if scheme == "socks5h" else "127.0.0.1"
            assert proxy.targets == [(expected_host, server.port)]
            await pool.aclose()
            refused = ConnectionPool(
                origin, ssl_context=client_tls(pki), proxy_url=url.replace(":pw@", ":no@")
            )
            with pytest.raises(TransportError) as info:
                await refused.request("GET", "/w", [])
            assert info.value.kind == "proxy" and "username and password" in str(info.value)

    run(main())


def test_response_objects_are_small() -> None:
    assert not hasattr(HttpResponse(), "__dict__")


def test_tls_connections_read_into_a_small_buffer(pki: Pki) -> None:
    """asyncio's default is 256 KiB per connection (62 MB for a fleet's 247): the pool's
    TLS connections read into one TLS_READ_BUFFER per thread, and a body many times
    that arrives whole."""
    body = bytes(range(256)) * (MiB // 256)

    async def handler(req: H2Request) -> None:
        req.respond(200)
        await req.send(body, end=True)

    async def main() -> None:
        async with FakeH2Server(pki, handler) as server:
            pool = server.pool()
            resp = await pool.request("GET", "/big", [])
            assert await resp.read() == body
            assert isinstance(pool._h2[0].transport, transport._TlsTransport)
            # One buffer for the thread's connections, not one each.
            buffer, _ = transport._read_buffer()
            assert len(buffer) == transport.TLS_READ_BUFFER < 256 * 1024
            assert not hasattr(pool._h2[0].transport, "_read_buffer")
            await pool.aclose()

    run(main())


def test_frames_are_formatted_without_their_payload() -> None:
    """h2 formats every received frame for a trace log: a bookmark's or a LIST page's
    payload must not be hex-encoded for nobody."""
    frame = hyperframe.frame.DataFrame(7, data=b"x" * 100_000)
    assert repr(frame) == "DataFrame(stream_id=7)"
