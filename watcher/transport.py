"""An asyncio HTTP client for thousands of long-lived requests: HTTP/2 with HTTP/1.1 fallback.

Why not one thread and one TLS connection per watch: a watch then costs a thread stack, a
socket and a TLS session, about 0.1 MB and some CPU even when nothing changes. client-go
carries every watch of a process as a stream of one HTTP/2 connection per API server; this
module does the same on one asyncio event loop, with the ``h2`` state machine on an
:class:`asyncio.Protocol` (no thread, no task per connection) and ``h11`` where the server or a
proxy only speaks HTTP/1.1.

What it copies from Go's ``net/http`` + ``x/net/http2`` transport:

- ALPN ``h2``/``http/1.1``; plain ``http://`` origins use HTTP/1.1.
- A pool opens another connection when every connection is at the server's
  SETTINGS_MAX_CONCURRENT_STREAMS (``StrictMaxConcurrentStreams=false``): a request is never
  queued behind long-lived watches. kube-apiserver advertises 100 unless started with
  ``--http2-max-streams-per-connection`` (k8s.io/apiserver pkg/server/secure_serving.go).
- Receive windows of 4 MiB per stream and 1 GiB per connection, credited back as the consumer
  takes chunks, so a slow consumer pushes back on the server and memory stays bounded.
- ReadIdleTimeout/PingTimeout: one timer per connection (not per stream); no frame for
  ``ping_interval`` sends a PING, no ACK within ``ping_timeout`` kills the connection and fails
  its streams. Connections without streams close after ``idle_close``.
- GOAWAY: no new streams on that connection; the streams up to ``last_stream_id`` finish.
  A request above it was never processed: :meth:`ConnectionPool.request` sends it once more
  on another connection (so does a stream refused with REFUSED_STREAM), and a second drop
  raises ``kind="goaway"``. A stream that already had its response fails instead.
- HTTP/1.1: one request per connection at a time, keep-alive reuse, at most
  ``max_http1_connections`` per pool, further requests wait FIFO; a GET on a kept-alive
  connection that the server closed before answering is sent once more.
- Proxies: ``http://`` and ``https://`` (CONNECT, Basic credentials from the URL), ``socks5://``
  (the name resolved here) and ``socks5h://`` (resolved by the proxy), then TLS and ALPN inside
  the tunnel.

Everything runs on the loop thread that created the pool; nothing here is thread-safe.
Header values (the Authorization header) never appear in logs or exception messages.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import collections
import contextlib
import http
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import h11
import hyperframe.frame

log = logging.getLogger(__name__)

__all__ = ["ConnectionPool", "HttpResponse", "TransportError"]

#: Per-stream and per-connection receive windows (Go's transportDefaultStreamFlow/ConnFlow).
STREAM_WINDOW = 4 << 20
CONNECTION_WINDOW = 1 << 30
#: Consumed bytes of a stream credited back to the server at once (far below STREAM_WINDOW).
CREDIT_BATCH = 1 << 16
#: Largest DATA frame we accept: fewer, bigger frames cost less Python per byte.
MAX_FRAME_SIZE = 1 << 18
#: Streams per connection assumed when a server advertises no limit (Go's default too).
DEFAULT_MAX_STREAMS = 1000
#: HTTP/1.1 back-pressure: stop reading the socket above HIGH unread bytes, resume below LOW.
HTTP1_HIGH_WATER = 1 << 20
HTTP1_LOW_WATER = 1 << 18

#: Methods retried once on a reused HTTP/1.1 connection that closed before answering.
_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})
_SOCKS_REPLIES = {
    1: "general failure",
    2: "not allowed by the ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host"}
)


class _Slot:
    """Handed to a waiter instead of a connection: a free slot under the pool's HTTP/1.1
    limit, reserved for it to dial in."""

    __slots__ = ()


class TransportError(Exception):
    """No (complete) HTTP answer: connect refused/timed out, TLS failure, connection reset or closed,
    stream reset by the server, GOAWAY that dropped this stream, PING timeout, read timeout.

    ``kind`` is one of ``connect``, ``tls``, ``reset``, ``timeout``, ``goaway``, ``proxy``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Unprocessed(TransportError):
    """The server dropped the stream without processing it (GOAWAY above it, REFUSED_STREAM):
    safe to send again."""


class HttpResponse:
    """One response: status and headers at once, the body as it arrives.

    The connection appends body chunks with :meth:`_deliver`; the consumer takes them with
    :meth:`chunks` or :meth:`read`, and each chunk taken is credited back to the server
    (:meth:`_credit`). Slots only: an idle watch is this object and an empty list.
    """

    __slots__ = (
        "_buf",
        "_cancelled",
        "_ended",
        "_error",
        "_idle_from",
        "_idle_timer",
        "_tap",
        "_unacked",
        "_waiter",
        "headers",
        "status",
    )

    http_version = ""

    def __init__(self) -> None:
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self._buf: list[bytes] = []
        self._unacked = 0
        self._ended = False
        self._cancelled = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._idle_from = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tap: Callable[[bytes], bool] | None = None

    @property
    def reason(self) -> str:
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return ""

    async def read(self) -> bytes:
        """The whole body; TransportError if it does not arrive complete."""
        parts = [chunk async for chunk in self.chunks()]
        if self._cancelled and not self._ended:
            raise TransportError("reset", "response cancelled before its body ended")
        return b"".join(parts)

    async def chunks(self, idle_timeout: float | None = None) -> AsyncGenerator[bytes, None]:
        """Body chunks as they arrive. No byte for ``idle_timeout`` seconds abandons the
        response (as :meth:`aclose`) and raises TransportError(kind="timeout"); so does
        leaving the iteration early (``break``, the consuming task cancelled), so that no
        stream outlives its reader."""
        try:
            while taken := await self.receive(idle_timeout):
                for chunk in taken:
                    if self._cancelled:
                        return
                    yield chunk
                # Nothing received stays referenced while the stream waits: an idle
                # watch would hold its last DATA frame (tens of thousands of them).
                taken, chunk = [], b""
        except (asyncio.CancelledError, GeneratorExit):
            self.cancel()
            raise

    async def receive(self, idle_timeout: float | None = None) -> list[bytes]:
        """The body chunks received since the last call, waiting for some if there are
        none; an empty list at the end of the body (or once cancelled). No byte for
        ``idle_timeout`` seconds abandons the response and raises TransportError
        (kind="timeout"). A reader that stops before the end must :meth:`cancel`.

        One coroutine that waits in place, so that an idle watch is one frame here,
        not a generator over a waiting coroutine. The idle timer outlives the wait
        and is only re-armed when it fires: a stream receiving an event a second does
        not create and cancel a timer for each (a tenth of the CPU of 25,000 idle
        watches)."""
        while not self._buf:
            if self._cancelled or self._ended:
                self._stop_reading()
                return []
            if self._error is not None:
                self._stop_reading()
                raise self._error
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[bool] = loop.create_future()
            self._waiter = waiter
            if idle_timeout is not None:
                self._idle_from = loop.time()
                if self._idle_timer is None:
                    self._idle_timer = loop.call_at(
                        self._idle_from + idle_timeout, self._idle_check, idle_timeout
                    )
            try:
                arrived = await waiter
            except BaseException:
                self._waiter = None
                self.cancel()
                raise
            self._waiter = None
            if not arrived:
                self.cancel()
                raise TransportError("timeout", f"no data for {idle_timeout:g}s")
        taken, self._buf = self._buf, []
        for chunk in taken:
            self._unacked -= len(chunk)
            self._credit(len(chunk))
        return taken

    def tap(self, taker: Callable[[bytes], bool] | None) -> None:
        """Offer each chunk that arrives while the reader waits in :meth:`receive`, with
        nothing received before it still unread, to ``taker`` first: when it returns
        True the chunk counts as read (credited back, and as data for the idle timeout)
        and the wait goes on, so the reader's task is not woken. ``taker`` runs in the
        connection's ``data_received``, in the order chunks arrive; it must not raise.
        ``None`` removes it."""
        self._tap = taker

    async def aclose(self) -> None:
        """Abandon the response (a no-op once the body has been received)."""
        self.cancel()

    def cancel(self) -> None:
        """Abandon the response from the loop thread; a running :meth:`chunks` ends quietly."""
        if self._cancelled:
            return
        self._cancelled = True
        self._buf = []
        self._stop_reading()
        self._abandon()
        self._wake()

    # -- called by connections

    def _deliver(self, data: bytes) -> None:
        tap = self._tap
        if tap is not None and not self._buf:
            waiter = self._waiter
            if waiter is not None and not waiter.done() and tap(data):
                if self._idle_timer is not None:
                    self._idle_from = waiter.get_loop().time()
                self._credit(len(data))
                return
        self._buf.append(data)
        self._unacked += len(data)
        self._wake()

    def _finish(self) -> None:
        self._ended = True
        self._wake()

    def _fail(self, error: TransportError) -> None:
        if not self._ended and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    async def _wait(self, timeout: float | None) -> bool:
        """Wait until something happens to the response; False when ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _stop_reading(self) -> None:
        """No more reading of the body: its idle timer goes, and the credit held back."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._settle()

    def _idle_check(self, timeout: float) -> None:
        self._idle_timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting now: the next wait arms the timer again
        loop = waiter.get_loop()
        deadline = self._idle_from + timeout
        if loop.time() >= deadline:
            waiter.set_result(False)
        else:
            self._idle_timer = loop.call_at(deadline, self._idle_check, timeout)

    # -- implemented per protocol

    def _credit(self, size: int) -> None:
        """The consumer took ``size`` bytes: let the server send that much more."""

    def _settle(self) -> None:
        """The consumer stopped reading: return any credit held back."""

    def _abandon(self) -> None:
        """Stop the exchange (RST_STREAM, or close an HTTP/1.1 connection mid-body)."""


_HEADER_NAMES: dict[bytes, str] = {}


def _header_name(raw: bytes) -> str:
    """One str per header name for every response (a watch keeps its headers for hours)."""
    name = _HEADER_NAMES.get(raw)
    if name is None:
        name = raw.decode("latin-1")
        if len(_HEADER_NAMES) < 512:
            _HEADER_NAMES[raw] = name
    return name


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


async def _until(fut: asyncio.Future[Any], deadline: float, *, cancel: bool = True) -> bool:
    """Wait for ``fut`` until the loop time ``deadline``; False when the deadline came first
    and ``fut`` is still not done (True if it got its result between the deadline and this
    coroutine running again: a result handed over is never dropped). One timer handle, no
    task. ``fut`` is cancelled when the wait ends without it (the deadline, or the caller
    cancelled) unless ``cancel`` is False: a dial that other requests share goes on (what
    asyncio.shield would do, without a future per waiter whose exception nobody retrieves)."""
    loop = asyncio.get_running_loop()
    if fut.done():
        return True
    done = loop.create_future()

    def settle(_: object) -> None:
        if not done.done():
            done.set_result(fut.done())

    fut.add_done_callback(settle)
    timer = loop.call_at(deadline, settle, None)
    try:
        await done
    finally:
        timer.cancel()
        fut.remove_done_callback(settle)
        if cancel and not fut.done():
            fut.cancel()
    return fut.done() and not fut.cancelled()


# --------------------------------------------------------------------------- HTTP/2


def _short_frame_repr(frame: hyperframe.frame.Frame) -> str:
    """A frame's repr without its flags and body.

    h2 evaluates ``repr(frame)`` of every received frame for a trace log even when nothing
    logs. hyperframe's repr formats the flags and hex-encodes the payload: half of the
    client's CPU reading a large LIST (before the payload was cut to its first bytes), and
    4 % of an idle fleet's loop time, where every frame is a bookmark (after).
    """
    return f"{type(frame).__name__}(stream_id={frame.stream_id})"


hyperframe.frame.Frame.__repr__ = _short_frame_repr  # type: ignore[method-assign]

#: asyncio's TLS transport reads the socket into a buffer of ``SSLProtocol.max_size``,
#: allocated (and zeroed, so resident) per connection, and asks OpenSSL for that much
#: plaintext at a time (a bytes object of that size each read, shrunk afterwards). Its
#: 256 KiB default is 62 MB for a fleet's 247 connections that mostly carry bookmarks,
#: and an allocation above malloc's mmap threshold for every read. A TLS record holds at
#: most 16 KiB, so 32 KiB (two records a read) costs a large LIST only more, smaller reads.
#: Process-wide: every asyncio TLS connection of the process is one of this module's.
#: Direct connections use ``_TlsTransport`` (one buffer of this size per thread), only
#: those through a proxy asyncio's TLS (``start_tls`` in the tunnel).
TLS_READ_BUFFER = 32 << 10
asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


class _H2State(h2.connection.H2Connection):
    """h2's connection, except that a received GOAWAY keeps the connection readable.

    h2 moves to CLOSED on GOAWAY and then treats every further DATA frame as a protocol
    error, but RFC 9113 §6.8 says the streams up to ``last_stream_id`` go on (Go's server sends
    GOAWAY on graceful shutdown and with ``--goaway-chance`` while answering requests).
    """

    def _receive_goaway_frame(self, frame: Any) -> Any:
        result = super()._receive_goaway_frame(frame)
        self.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        return result


_OPEN_FOR_DATA = (h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL)


def _plain_data_frames(conn: h2.connection.H2Connection, data: bytes) -> list[tuple[int, int, int]] | None:
    """A read that holds only whole DATA frames without flags (no END_STREAM, no
    padding) on streams h2 has open and whose headers arrived, and nothing buffered
    before it: the (stream id, payload start, payload end) of each, after doing to h2's
    state what ``receive_data`` would (the connection's and the streams' receive windows
    shrink, the body length grows). None, with h2 untouched, for anything else, which
    then goes through h2.

    An idle watch's bookmark is one such frame: h2's generic path (frame objects, flag
    sets, two state machines, events) was most of the loop's time spent on each of the
    400 a second that a fleet of 25,000 watches receives. Relies on h2 4.x internals,
    checked by tests/unit/test_transport.py against h2's own path."""
    buffer = conn.incoming_buffer
    if buffer._data or buffer._headers_buffer or buffer._preamble_len:
        return None
    if conn.state_machine.state is not h2.connection.ConnectionState.CLIENT_OPEN:
        return None
    frames: list[tuple[int, int, int]] = []
    limit, size, pos, total = conn.max_inbound_frame_size, len(data), 0, 0
    streams = conn.streams
    while pos < size:
        if size - pos < 9 or data[pos + 3] or data[pos + 4]:  # not a DATA frame without flags
            return None
        length = int.from_bytes(data[pos : pos + 3], "big")
        start = pos + 9
        pos = start + length
        if length > limit or pos > size:
            return None
        sid = int.from_bytes(data[start - 4 : start], "big") & 0x7FFFFFFF
        stream = streams.get(sid)
        if (
            stream is None
            or stream.state_machine.state not in _OPEN_FOR_DATA
            or not stream.state_machine.headers_received
            or stream._expected_content_length is not None
        ):
            return None
        frames.append((sid, start, pos))
        total += length
    if not frames or total > conn._inbound_flow_control_window_manager.current_window_size:
        return None
    if len(frames) > 1:
        by_stream: dict[int, int] = {}
        for sid, start, end in frames:
            by_stream[sid] = by_stream.get(sid, 0) + end - start
        if any(n > streams[sid]._inbound_window_manager.current_window_size for sid, n in by_stream.items()):
            return None
    else:
        sid, start, end = frames[0]
        if end - start > streams[sid]._inbound_window_manager.current_window_size:
            return None
    conn._inbound_flow_control_window_manager.current_window_size -= total
    for sid, start, end in frames:
        stream = streams[sid]
        stream._inbound_window_manager.current_window_size -= end - start
        stream._actual_content_length += end - start
    return frames


class _H2Stream(HttpResponse):
    """One request/response exchange on an HTTP/2 connection.

    Credit goes back in batches of :data:`CREDIT_BATCH` bytes (the stream window is 4 MiB):
    a watch's small events do not each cost a pass through h2's flow-control bookkeeping.
    """

    __slots__ = ("_body", "_conn", "_id", "_owed")

    http_version = "HTTP/2"

    def __init__(self, conn: _H2Connection, stream_id: int) -> None:
        super().__init__()
        self._conn = conn
        self._id = stream_id
        self._body = b""
        self._owed = 0

    def _credit(self, size: int) -> None:
        owed = self._owed + size
        if owed >= CREDIT_BATCH:
            self._conn.credit(self._id, owed)
            owed = 0
        self._owed = owed

    def _settle(self) -> None:
        if self._owed:
            self._conn.credit(self._id, self._owed)
            self._owed = 0

    def _abandon(self) -> None:
        self._conn.abandon(self)


class _H2Connection(asyncio.Protocol):
    """One HTTP/2 connection: the h2 state machine fed from ``data_received``.

    All events of one read are handled before one ``transport.write``; credits returned by
    consumers during a loop iteration are flushed together by one ``call_soon``.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = _H2State(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 10 << 20,
            },
        )
        del self.h2.local_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]
        # Accept big frames at once: h2 would apply the limit only at the next read after
        # the server's SETTINGS ACK, and fail a big frame that shares a read with that ACK.
        self.h2.max_inbound_frame_size = MAX_FRAME_SIZE
        self.streams: dict[int, _H2Stream] = {}
        self.max_streams = 0
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed = False
        self.goaway = False
        self.last_rx = self.loop.time()
        self.idle_since: float | None = self.last_rx
        self._ping_deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self._handlers: dict[type[h2.events.Event], Callable[[Any], None]] = {
            h2.events.ResponseReceived: self._on_response,
            h2.events.DataReceived: self._on_data,
            h2.events.StreamEnded: self._on_end,
            h2.events.StreamReset: self._on_reset,
            h2.events.TrailersReceived: self._on_trailers,
            h2.events.WindowUpdated: self._on_window,
            h2.events.RemoteSettingsChanged: self._on_settings,
            h2.events.PingAckReceived: self._on_ping_ack,
            h2.events.ConnectionTerminated: self._on_goaway,
        }

    @property
    def capacity(self) -> int:
        """How many more streams this connection may open now."""
        if self.closed or self.goaway or not self.ready.done():
            return 0
        return self.max_streams - len(self.streams)

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._flush()
        self._arm(self.last_rx + self.pool.ping_interval)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        frames = _plain_data_frames(self.h2, data)
        if frames is not None:
            # Only DATA frames of open streams: what h2 would do with them is done, the
            # payloads go to their streams as _on_data would hand them over.
            for sid, start, end in frames:
                stream = self.streams.get(sid)
                if stream is None or stream._cancelled:
                    self.h2.acknowledge_received_data(end - start, sid)
                    self._schedule_flush()
                elif end > start:
                    stream._deliver(data[start:end] if start or end < len(data) else data)
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._flush()
            self._die(TransportError("reset", f"HTTP/2 protocol error from the server: {exc}"))
            return
        handlers = self._handlers
        for event in events:
            handler = handlers.get(type(event))
            if handler is not None:
                handler(event)
        self._flush()
        if self.goaway and not self.streams:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by the server"
        self._die(TransportError("reset", reason))

    # -- requests

    def start_request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> _H2Stream:
        sid = self.h2.get_next_available_stream_id()
        authority = self.pool.authority
        fields: list[tuple[str, str]] = []
        for name, value in headers:
            name = name.lower()
            if name == "host":
                authority = value
            elif name not in _HOP_BY_HOP:
                fields.append((name, value))
        pseudo = [
            (":method", method),
            (":scheme", self.pool.scheme),
            (":authority", authority),
            (":path", target),
        ]
        self.h2.send_headers(sid, pseudo + fields, end_stream=not body)
        stream = _H2Stream(self, sid)
        self.streams[sid] = stream
        self.idle_since = None
        if body:
            stream._body = body
            self._send_body(stream)
        self._flush()
        return stream

    def _send_body(self, stream: _H2Stream) -> None:
        """Send as much of the request body as the server's windows allow."""
        while stream._body:
            window = min(self.h2.local_flow_control_window(stream._id), self.h2.max_outbound_frame_size)
            if window <= 0:
                return
            piece, stream._body = stream._body[:window], stream._body[window:]
            self.h2.send_data(stream._id, piece, end_stream=not stream._body)

    def credit(self, stream_id: int, size: int) -> None:
        if size and not self.closed:
            self.h2.acknowledge_received_data(size, stream_id)
            self._schedule_flush()

    def abandon(self, stream: _H2Stream) -> None:
        """RST_STREAM(CANCEL) if the stream is still open; return its unread bytes' credit."""
        if self.closed:
            return
        if self.streams.pop(stream._id, None) is not None:
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(stream._id, h2.errors.ErrorCodes.CANCEL)
            self._stream_gone()
        unread = stream._unacked + stream._owed
        if unread:
            self.h2.acknowledge_received_data(unread, stream._id)
            stream._unacked = stream._owed = 0
        self._schedule_flush()

    # -- events

    def _on_response(self, event: h2.events.ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in event.headers:
            name, value = _header_name(raw_name), raw_value.decode("latin-1")
            if name == ":status":
                stream.status = int(value)
            elif name in headers:
                headers[name] += ", " + value
            else:
                headers[name] = value
        stream.headers = headers
        stream._wake()

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        size = event.flow_controlled_length
        if stream is None or stream._cancelled:
            self.h2.acknowledge_received_data(size, event.stream_id)
            return
        data = event.data
        if size > len(data):  # padding: nobody will consume it
            self.h2.acknowledge_received_data(size - len(data), event.stream_id)
        if data:
            stream._deliver(data)

    def _on_end(self, event: h2.events.StreamEnded) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            if stream._body:  # answered before the request body was sent: stop sending it
                stream._body = b""
                self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            stream._finish()
            self._stream_gone()

    def _on_trailers(self, event: h2.events.TrailersReceived) -> None:
        if event.stream_ended is not None:
            self._on_end(event.stream_ended)

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            code = h2.errors._error_code_from_int(event.error_code)
            name = code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)
            message = f"stream reset by the server ({name})"
            refused = code == h2.errors.ErrorCodes.REFUSED_STREAM and stream.status == 0
            stream._fail(_Unprocessed("reset", message) if refused else TransportError("reset", message))
            self._stream_gone()

    def _on_window(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream._body:
                self._send_body(stream)
        else:
            for stream in self.streams.values():
                if stream._body:
                    self._send_body(stream)

    def _on_settings(self, event: h2.events.RemoteSettingsChanged) -> None:
        limit = self.h2.remote_settings.max_concurrent_streams
        self.max_streams = min(limit, DEFAULT_MAX_STREAMS) if limit else 0
        if not self.ready.done():
            self.ready.set_result(None)
        elif self.pool._h2_waiters:
            self.pool._wake_h2()

    def _on_ping_ack(self, event: h2.events.PingAckReceived) -> None:
        self._ping_deadline = None

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self.goaway = True
        last = event.last_stream_id or 0
        code = (
            event.error_code.name if isinstance(event.error_code, h2.errors.ErrorCodes) else event.error_code
        )
        log.info("%s: %s sent GOAWAY (%s, last stream %d)", self.pool.name, self.pool.origin, code, last)
        for sid in [sid for sid in self.streams if sid > last]:
            stream = self.streams.pop(sid)
            stream._fail(_Unprocessed("goaway", f"server sent GOAWAY ({code}) before handling the request"))
        if not self.ready.done():
            self.ready.set_exception(TransportError("goaway", f"server sent GOAWAY ({code}) at once"))

    # -- connection lifetime

    def _stream_gone(self) -> None:
        if self.pool._h2_waiters:
            self.pool._wake_h2()
        if not self.streams:
            self.idle_since = self.loop.time()
            if self._timer is not None and self._timer.when() > self.idle_since + self.pool.idle_close:
                self._arm(self.idle_since + self.pool.idle_close)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """The connection's one timer: PING when quiet, death without its ACK, idle close."""
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        pool = self.pool
        if self._ping_deadline is not None and now >= self._ping_deadline:
            # The peer is gone: abort, a polite TLS close would wait for it.
            self._die(TransportError("timeout", f"no PING answer within {pool.ping_timeout:g}s"), abort=True)
            return
        if self.idle_since is not None and now - self.idle_since >= pool.idle_close:
            self.close()
            return
        if self._ping_deadline is None and now - self.last_rx >= pool.ping_interval:
            self.h2.ping(b"k8swatch")
            self._flush()
            self._ping_deadline = now + pool.ping_timeout
        when = self._ping_deadline if self._ping_deadline is not None else self.last_rx + pool.ping_interval
        if self.idle_since is not None:
            when = min(when, self.idle_since + pool.idle_close)
        self._arm(when)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or self.transport is None:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def close(self) -> None:
        """Close politely (GOAWAY); streams still open fail."""
        if self.closed:
            return
        try:
            self.h2.close_connection()
            self._flush()
        except h2.exceptions.ProtocolError:
            pass
        self._die(TransportError("reset", "connection closed by the client"))

    def _die(self, error: TransportError, *, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: whoever waits gets it from the dial
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream._fail(error)
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self.pool._h2_gone(self)


# --------------------------------------------------------------------------- HTTP/1.1


class _H1Response(HttpResponse):
    __slots__ = ("_conn",)

    http_version = "HTTP/1.1"

    def __init__(self, conn: _H1Connection) -> None:
        super().__init__()
        self._conn = conn

    def _credit(self, size: int) -> None:
        self._conn.consumed(self)

    def _abandon(self) -> None:
        self._conn.abandon(self)


class _H1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection through h11: one exchange at a time, then back to the pool."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.response: _H1Response | None = None
        self.closed = False
        self.paused = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self.exchanges = 0
        self.busy = False  # from the request until its response ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def start_request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> _H1Response:
        if self.closed or self.transport is None:
            raise TransportError("reset", "connection closed")
        assert self.response is None
        self.exchanges += 1
        self.busy = True
        fields = [
            (n, v)
            for n, v in headers
            if n.lower() not in ("connection", "transfer-encoding", "content-length")
        ]
        if not any(n.lower() == "host" for n, _ in fields):
            fields.insert(0, ("Host", self.pool.authority))
        if body is not None or method in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(body or b""))))
        response = self.response = _H1Response(self)
        out = self.h11.send(h11.Request(method=method, target=target, headers=fields))
        if body:
            out += self.h11.send(h11.Data(data=body))
        out += self.h11.send(h11.EndOfMessage())
        self.transport.write(out)
        return response

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        self._process()

    def _process(self) -> None:
        while not self.closed:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._die(TransportError("reset", f"HTTP/1.1 protocol error from the server: {exc}"))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            response = self.response
            if isinstance(event, h11.Response) and response is not None:
                response.status = event.status_code
                headers: dict[str, str] = {}
                for raw_name, raw_value in event.headers:
                    name, value = _header_name(raw_name), raw_value.decode("latin-1")
                    headers[name] = headers[name] + ", " + value if name in headers else value
                response.headers = headers
                response._wake()
            elif isinstance(event, h11.Data) and response is not None:
                if not response._cancelled:
                    response._deliver(bytes(event.data))
                    if response._unacked > HTTP1_HIGH_WATER and not self.paused and self.transport:
                        self.paused = True
                        self.transport.pause_reading()
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                self.response = None
                self.busy = False
                response._finish()
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                    self.pool._h1_offer(self)
                else:
                    self._die(TransportError("reset", "connection not reusable"))
            elif isinstance(event, h11.ConnectionClosed):
                self._die(TransportError("reset", "connection closed by the server"))

    def consumed(self, response: _H1Response) -> None:
        if self.paused and response._unacked < HTTP1_LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abandon(self, response: _H1Response) -> None:
        """The consumer gave up on a body not fully received: the connection cannot be reused."""
        if self.response is response:
            self._die(TransportError("reset", "response abandoned"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed and self.response is not None:
            # A body delimited by the connection's end is complete now.
            with contextlib.suppress(RuntimeError):
                self.h11.receive_data(b"")
            self._process()
        self._die(
            TransportError("reset", f"connection lost: {exc}" if exc else "connection closed by the server")
        )

    def close(self) -> None:
        self._die(TransportError("reset", "connection closed by the client"))

    def _die(self, error: TransportError) -> None:
        if self.closed:
            return
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        response, self.response = self.response, None
        if response is not None:
            response._fail(error)
        if self.transport is not None:
            self.transport.close()
        self.pool._h1_gone(self)


# --------------------------------------------------------------------------- connecting


class _Handoff(asyncio.Protocol):
    """The protocol while connecting: keeps what arrives before the real protocol takes
    over (the server's first SETTINGS may arrive with the end of the handshake), and reads a
    proxy's answer to CONNECT."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.lost = False
        self.exc: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exc = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def read_head(self) -> bytes:
        """Read up to the end of an HTTP/1.1 response head (a proxy's answer to CONNECT)."""
        while b"\r\n\r\n" not in self.buffer:
            if len(self.buffer) > 65536:
                raise TransportError("proxy", "the proxy's answer to CONNECT has no end")
            await self._more()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._more()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _more(self) -> None:
        if self.lost:
            raise TransportError("proxy", "the proxy closed the connection before the tunnel was set up")
        self.waiter = asyncio.get_running_loop().create_future()
        await self.waiter

    def hand_over(self, transport: asyncio.Transport, protocol: asyncio.Protocol) -> None:
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            protocol.data_received(data)
        if self.lost:
            protocol.connection_lost(self.exc)


_read_buffers = threading.local()


def _read_buffer() -> tuple[bytearray, memoryview]:
    """The buffer every ``_TlsTransport`` of this thread reads into, ciphertext from the
    socket and then plaintext from OpenSSL: a read copies what it got out before it
    returns, so one buffer per loop thread serves every connection (asyncio's TLS kept
    one per connection: 8 MB for a fleet's 247)."""
    buffers: tuple[bytearray, memoryview] | None = getattr(_read_buffers, "buffers", None)
    if buffers is None:
        buffer = bytearray(TLS_READ_BUFFER)
        buffers = _read_buffers.buffers = (buffer, memoryview(buffer))
    return buffers


class _TlsTransport(asyncio.BufferedProtocol, asyncio.Transport):
    """TLS over a plain socket transport: the socket's protocol and the transport the
    HTTP protocol sees. It does what asyncio's ``SSLProtocol`` does for a client, on an
    ``ssl.SSLObject`` over memory BIOs, in fewer steps per read: an idle fleet's
    connections read one small TLS record (a bookmark) at a time, 400 a second, and
    asyncio's read path (its state checks, two ``SSLObject.read`` calls of which the
    second raises SSLWantReadError, the outgoing and read-buffer checks, a 32 KiB bytes
    object per call) was a quarter of the loop's time per read. Here a read decrypts
    what it can into one reused buffer and hands it on; nothing is left to do when
    neither the BIO nor OpenSSL holds more.

    Used for direct connections (``ConnectionPool._open``); a connection through a
    proxy keeps asyncio's ``start_tls`` inside the tunnel."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext, server_hostname: str
    ) -> None:
        super().__init__()
        self._loop = loop
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._raw: asyncio.Transport | None = None
        self._protocol: asyncio.BaseProtocol | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        self._shaken = False
        self._closing = False
        self._lost = False

    # -- the socket's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        self._shake()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _read_buffer()[1]

    def buffer_updated(self, nbytes: int) -> None:
        self._incoming.write(_read_buffer()[1][:nbytes])
        if not self._shaken:
            self._shake()
            if not self._shaken:
                return
        self._read()

    def eof_received(self) -> bool:
        return False  # the socket transport closes; connection_lost tells the protocol

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if not self._shaken:
            if not self.handshake.done():
                self.handshake.set_exception(
                    exc or ConnectionResetError("connection closed during the TLS handshake")
                )
            return
        if self._protocol is not None:
            self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._protocol is not None:
            self._protocol.resume_writing()

    def _shake(self) -> None:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._send_outgoing()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._send_outgoing()
            if not self.handshake.done():
                self.handshake.set_exception(exc)
            if self._raw is not None:
                self._raw.abort()
            return
        self._send_outgoing()
        self._shaken = True
        if not self.handshake.done():
            self.handshake.set_result(None)

    def _read(self) -> None:
        """Decrypt what arrived and hand it to the protocol in one call."""
        ssl_object, incoming = self._ssl, self._incoming
        plain, view = _read_buffer()  # the ciphertext in it went into the BIO already
        got: list[bytes] = []
        ended = False
        try:
            while True:
                # With a buffer, SSLObject.read returns how many bytes it wrote there.
                count: int = ssl_object.read(len(plain), plain)  # type: ignore[assignment]
                if not count:
                    ended = True  # close_notify
                    break
                got.append(bytes(view[:count]))
                if not incoming.pending and not ssl_object.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            ended = True
        except ssl.SSLError as exc:
            if self._raw is not None and not self._lost:
                self._raw.abort()
                self.connection_lost(exc)
            return
        if self._outgoing.pending:  # TLS 1.3 post-handshake answers (key update)
            self._send_outgoing()
        protocol = self._protocol
        if got and protocol is not None:
            data = got[0] if len(got) == 1 else b"".join(got)
            protocol.data_received(data)  # type: ignore[attr-defined]
        if ended and self._raw is not None:
            self._raw.close()

    def _send_outgoing(self) -> None:
        if self._outgoing.pending and self._raw is not None and not self._raw.is_closing():
            self._raw.write(self._outgoing.read())

    # -- the transport the protocol sees

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._raw is None:
            return
        self._ssl.write(data)
        self._send_outgoing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """close_notify, then close the socket (without waiting for the peer's)."""
        if self._closing:
            return
        self._closing = True
        if self._shaken:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self._ssl.unwrap()
            self._send_outgoing()
        if self._raw is not None:
            self._raw.close()

    def abort(self) -> None:
        self._closing = True
        if self._raw is not None:
            self._raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self._raw is None or self._raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl
        if name == "peercert":
            return self._ssl.getpeercert()
        if name == "cipher":
            return self._ssl.cipher()
        if name == "sslcontext":
            return self._ssl.context
        return self._raw.get_extra_info(name, default) if self._raw is not None else default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def pause_reading(self) -> None:
        if self._raw is not None:
            self._raw.pause_reading()

    def resume_reading(self) -> None:
        if self._raw is not None:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw is not None and self._raw.is_reading()

    def get_write_buffer_size(self) -> int:
        return (self._raw.get_write_buffer_size() if self._raw is not None else 0) + self._outgoing.pending

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._raw is not None:
            self._raw.set_write_buffer_limits(high, low)


async def _tls_connect(
    loop: asyncio.AbstractEventLoop, host: str, port: int, context: ssl.SSLContext, server_hostname: str
) -> tuple[asyncio.Transport, _Handoff]:
    """A TCP connection to ``host:port`` with TLS done (``_TlsTransport``) and a
    ``_Handoff`` holding what arrived after the handshake."""
    tls = _TlsTransport(loop, context, server_hostname)
    handoff = _Handoff()
    tls.set_protocol(handoff)
    await loop.create_connection(lambda: tls, host, port)
    try:
        await tls.handshake
    except BaseException:
        tls.abort()
        raise
    handoff.connection_made(tls)
    return tls, handoff


def _connect_error(exc: BaseException, what: str) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return TransportError("tls", f"TLS handshake with {what} failed: {exc}")
    if isinstance(exc, TimeoutError):
        return TransportError("connect", f"connecting to {what} timed out")
    return TransportError("connect", f"cannot connect to {what}: {exc}")


# --------------------------------------------------------------------------- the pool


class ConnectionPool:
    """All connections to one origin with one TLS identity (CA, client cert, server name, proxy).
    Used only from the event loop thread that created it.

    The pool sets ALPN on ``ssl_context``: give each pool its own context.
    """

    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None = None,
        proxy_url: str | None = None,
        max_http1_connections: int = 32,
        connect_timeout: float = 10.0,
        ping_interval: float = 30.0,
        ping_timeout: float = 15.0,
        idle_close: float = 90.0,
        name: str = "",
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"origin must be http(s)://host[:port], not {origin!r}")
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.authority = parts.netloc
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.authority_for_connect = f"{host}:{self.port}"
        if parts.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self.ssl_context = ssl_context if parts.scheme == "https" else None
        if self.ssl_context is not None:
            self.ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        self.server_hostname = server_hostname or self.host
        self.proxy_url = proxy_url
        if proxy_url:
            scheme = urlsplit(proxy_url).scheme
            if scheme not in ("http", "https", "socks5", "socks5h"):
                raise ValueError(f"proxy URL scheme {scheme!r} is not http, https, socks5 or socks5h")
        self.max_http1_connections = max_http1_connections
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.idle_close = idle_close
        self.name = name or self.origin
        self._protocol: str | None = None
        self._h2: list[_H2Connection] = []
        self._dialing: asyncio.Task[None] | None = None
        #: Requests waiting for an HTTP/2 stream slot (FIFO); a True result promises one.
        self._h2_waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._h2_promised = 0  # slots promised to woken waiters that have not taken them yet
        self._h1_open: set[_H1Connection] = set()
        self._h1_idle: list[_H1Connection] = []
        self._h1_slots = 0  # open or being opened
        self._h1_waiters: collections.deque[asyncio.Future[_H1Connection | _Slot | None]] = (
            collections.deque()
        )
        self._closed = False

    @property
    def protocol(self) -> str | None:
        """``h2``, ``http/1.1``, or None before the first connection."""
        return self._protocol

    @property
    def connections(self) -> int:
        """Open TCP connections now."""
        return len(self._h2) + len(self._h1_open)

    @property
    def waiting(self) -> int:
        """Requests waiting for an HTTP/1.1 connection (all of them busy); over HTTP/2 a
        request only waits for a connection being opened. Waiters that gave up (timed out,
        cancelled) are not counted."""
        return sum(1 for waiter in self._h1_waiters if not waiter.done())

    @property
    def streams(self) -> int:
        """Requests in flight now."""
        return sum(len(conn.streams) for conn in self._h2) + sum(conn.busy for conn in self._h1_open)

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        *,
        timeout: float = 60.0,
    ) -> HttpResponse:
        """Send a request; return once the response headers arrived (``timeout`` bounds
        connecting and waiting for them).

        Retried once, as Go's transport does, only when the server cannot have processed it:
        an HTTP/2 stream dropped by GOAWAY or refused (REFUSED_STREAM), or a GET/HEAD/OPTIONS
        on a kept-alive HTTP/1.1 connection that the server closed before answering.
        """
        if self._closed:
            raise TransportError("reset", "connection pool closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        what = f"{method} {target.partition('?')[0]}"
        retried = False
        while True:
            response: HttpResponse
            if self._protocol == "http/1.1":
                conn1 = await self._h1_acquire(deadline)
                if conn1 is None:
                    continue  # the server speaks h2 now
                reused = conn1.exchanges > 0
                response = conn1.start_request(method, target, headers, body)
                try:
                    return await self._headers(response, deadline, what, timeout)
                except TransportError as exc:
                    if retried or not reused or exc.kind != "reset" or method not in _REPLAYABLE:
                        raise
                    retried = True
                    continue
            conn = await self._h2_slot(deadline)
            if conn is None:
                continue  # the server turned out to speak HTTP/1.1
            try:
                response = conn.start_request(method, target, headers, body)
            except h2.exceptions.NoAvailableStreamIDError:
                conn.goaway = True  # stream IDs exhausted: let it drain, open another
                continue
            except h2.exceptions.ProtocolError as exc:
                raise TransportError("reset", f"{what}: cannot start an HTTP/2 stream: {exc}") from None
            try:
                return await self._headers(response, deadline, what, timeout)
            except _Unprocessed:
                if retried:
                    raise
                retried = True

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail with TransportError(kind="reset")."""
        self._closed = True
        if self._dialing is not None:
            self._dialing.cancel()
        for conn in list(self._h2):
            conn.close()
        for conn1 in list(self._h1_open):
            conn1.close()
        closed = TransportError("reset", "connection pool closed")
        for waiters in (self._h1_waiters, self._h2_waiters):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(closed)
        await asyncio.sleep(0)

    # -- HTTP/2

    def _h2_with_capacity(self) -> _H2Connection | None:
        best = None
        for conn in self._h2:
            if conn.capacity > 0 and (best is None or conn.capacity < best.capacity):
                best = conn  # fill the busiest usable one: fewer connections in the end
        return best

    async def _h2_slot(self, deadline: float) -> _H2Connection | None:
        """A connection with a free stream slot, or None when the pool turned out to speak
        HTTP/1.1. Requests that find no slot queue FIFO behind one shared dial; a new
        connection or a freed stream wakes only as many of them as it has room for (25,000
        watches re-opening after a restart must not all wake for each new connection)."""
        loop = asyncio.get_running_loop()
        conn = None
        if not self._h2_waiters:
            conn = self._h2_with_capacity()
            # Free slots are counted (all connections again) only while some are promised
            # to woken waiters: a fleet re-opens 55 watches a second over 250 connections.
            if conn is not None and self._h2_promised and self._h2_free() <= 0:
                conn = None
        woken = False
        while conn is None:
            if self._protocol == "http/1.1":
                return None
            if self._closed:
                raise TransportError("reset", "connection pool closed")
            waiter: asyncio.Future[bool] = loop.create_future()
            if woken:
                self._h2_waiters.appendleft(waiter)  # its slot vanished (a connection died): stay first
            else:
                self._h2_waiters.append(waiter)
            self._ensure_dial()
            try:
                arrived = await _until(waiter, deadline)
            except BaseException:
                self._h2_forfeit(waiter)
                raise
            if not arrived:
                raise TransportError(
                    "timeout", f"no connection to {self.origin} within the request's timeout"
                )
            if waiter.result():  # raises the dial's error
                self._h2_promised -= 1
            woken = True
            conn = self._h2_with_capacity()
        return conn

    def _h2_free(self) -> int:
        return sum(max(conn.capacity, 0) for conn in self._h2) - self._h2_promised

    def _h2_forfeit(self, waiter: asyncio.Future[bool]) -> None:
        """A waiter left (cancelled) just as it was woken: pass its slot on."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None and waiter.result():
            self._h2_promised -= 1
            self._wake_h2()

    def _wake_h2(self) -> None:
        """Promise the free stream slots to the first waiters; dial for the rest."""
        free = self._h2_free()
        while free > 0 and self._h2_waiters:
            waiter = self._h2_waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                self._h2_promised += 1
                free -= 1
        if any(not waiter.done() for waiter in self._h2_waiters):
            self._ensure_dial()

    def _ensure_dial(self) -> None:
        if self._dialing is None and not self._closed:
            self._dialing = asyncio.get_running_loop().create_task(self._dial())
            self._dialing.add_done_callback(self._dial_done)

    def _dial_done(self, task: asyncio.Task[None]) -> None:
        self._dialing = None
        error = TransportError("reset", "connection pool closed") if task.cancelled() else task.exception()
        if error is None and self._protocol == "h2":
            self._wake_h2()
            return
        # The dial failed (every queued request fails with its error, as in Go), or the
        # server speaks HTTP/1.1 (they all go the HTTP/1.1 way).
        while self._h2_waiters:
            waiter = self._h2_waiters.popleft()
            if not waiter.done():
                if error is None:
                    waiter.set_result(False)
                else:
                    waiter.set_exception(error)

    async def _dial(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.connect_timeout
        transport, handoff, alpn = await self._open(deadline)
        conn1 = await self._adopt(transport, handoff, alpn, deadline)
        if conn1 is not None:
            self._h1_slots += 1
            self._h1_offer(conn1)

    async def _adopt(
        self, transport: asyncio.Transport, handoff: _Handoff, alpn: str | None, deadline: float
    ) -> _H1Connection | None:
        """Run the protocol ALPN chose on a new connection: an HTTP/1.1 connection is
        returned, an HTTP/2 one joins the pool once the server's SETTINGS arrived."""
        if alpn != "h2":
            conn1 = _H1Connection(self)
            handoff.hand_over(transport, conn1)
            if conn1.closed:
                raise TransportError("reset", f"{self.origin} closed the connection at once")
            self._h1_open.add(conn1)
            # Said once per pool: watches taking turns open a connection every few seconds.
            log.log(
                logging.INFO if self._protocol != "http/1.1" else logging.DEBUG,
                "%s: connected to %s over HTTP/1.1",
                self.name,
                self.origin,
            )
            self._protocol = "http/1.1"
            return conn1
        conn = _H2Connection(self)
        handoff.hand_over(transport, conn)
        self._h2.append(conn)
        try:
            if not await _until(conn.ready, deadline, cancel=False):
                raise TransportError(
                    "connect", f"{self.origin} sent no HTTP/2 SETTINGS within {self.connect_timeout:g}s"
                )
            error = conn.ready.exception()
            if error is not None:
                raise error
        except BaseException:
            conn.close()
            raise
        self._protocol = "h2"
        log.info(
            "%s: connected to %s over h2 (max %d concurrent streams)",
            self.name,
            self.origin,
            conn.max_streams,
        )
        return None

    def _h2_gone(self, conn: _H2Connection) -> None:
        if conn in self._h2:
            self._h2.remove(conn)

    # -- HTTP/1.1

    async def _h1_acquire(self, deadline: float) -> _H1Connection | None:
        """A free HTTP/1.1 connection: an idle one, a new one while under the limit, else
        the next one freed (FIFO). None when a new connection turned out to speak h2."""
        while True:
            while self._h1_idle:
                conn = self._h1_idle.pop()
                if not conn.closed:
                    if conn.idle_timer is not None:
                        conn.idle_timer.cancel()
                        conn.idle_timer = None
                    return conn
            if self._closed:
                raise TransportError("reset", "connection pool closed")
            if self._h1_slots < self.max_http1_connections and not self.waiting:
                self._h1_slots += 1
                return await self._dial_in_slot(deadline)
            waiter: asyncio.Future[_H1Connection | _Slot | None] = asyncio.get_running_loop().create_future()
            self._h1_waiters.append(waiter)
            try:
                arrived = await _until(waiter, deadline)
            except BaseException:
                self._h1_forfeit(waiter)
                raise
            if not arrived:
                raise TransportError(
                    "timeout", f"all {self.max_http1_connections} HTTP/1.1 connections stayed busy"
                )
            handed = waiter.result()
            if isinstance(handed, _Slot):
                return await self._dial_in_slot(deadline)
            if handed is not None and not handed.closed:
                return handed

    def _h1_forfeit(self, waiter: asyncio.Future[_H1Connection | _Slot | None]) -> None:
        """A waiter left (cancelled) just as it was handed a connection or a slot: pass it on."""
        if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
            return
        handed = waiter.result()
        if isinstance(handed, _Slot):
            if not self._wake_h1_waiter(_Slot()):
                self._h1_slots -= 1
        elif handed is not None:
            self._h1_offer(handed)

    async def _dial_in_slot(self, deadline: float) -> _H1Connection | None:
        """Dial in a slot already counted in ``_h1_slots``; the slot is given back on failure."""
        try:
            conn1 = await self._dial_h1(deadline)
        except BaseException:
            self._h1_slots -= 1
            self._wake_h1_waiter(None)
            raise
        if conn1 is None:
            self._h1_slots -= 1
            self._wake_h1_waiter(None)
        return conn1

    async def _dial_h1(self, deadline: float) -> _H1Connection | None:
        loop = asyncio.get_running_loop()
        deadline = min(deadline, loop.time() + self.connect_timeout)
        transport, handoff, alpn = await self._open(deadline)
        return await self._adopt(transport, handoff, alpn, deadline)

    def _h1_offer(self, conn: _H1Connection) -> None:
        """A free connection: to the first waiter, else to the idle list (closed after
        ``idle_close``)."""
        if self._closed:
            conn.close()
            return
        while self._h1_waiters:
            waiter = self._h1_waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_timer = asyncio.get_running_loop().call_later(self.idle_close, conn.close)
        self._h1_idle.append(conn)

    def _h1_gone(self, conn: _H1Connection) -> None:
        if conn in self._h1_idle:
            self._h1_idle.remove(conn)
        if conn in self._h1_open:
            self._h1_open.discard(conn)
            # Its slot goes to the first waiter, which dials in it: a request arriving
            # meanwhile (a watch that just gave up its turn) must not take it and starve
            # the queue.
            if self._wake_h1_waiter(_Slot()):
                return
            self._h1_slots -= 1
        self._wake_h1_waiter(None)

    def _wake_h1_waiter(self, conn: _H1Connection | _Slot | None) -> bool:
        while self._h1_waiters:
            waiter = self._h1_waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    # -- waiting for headers

    async def _headers(
        self, response: HttpResponse, deadline: float, what: str, timeout: float
    ) -> HttpResponse:
        loop = asyncio.get_running_loop()
        try:
            while response.status == 0:
                if response._error is not None:
                    raise response._error
                if response._cancelled:
                    raise TransportError("reset", f"{what}: request cancelled")
                if not await response._wait(deadline - loop.time()):
                    raise TransportError("timeout", f"{what}: no response within {timeout:g}s")
        except BaseException:
            response.cancel()
            raise
        return response

    # -- opening connections

    async def _open(self, deadline: float) -> tuple[asyncio.Transport, _Handoff, str | None]:
        """A connected transport (TLS done, proxy tunnelled), its handoff protocol, and ALPN."""
        loop = asyncio.get_running_loop()
        timeout = max(deadline - loop.time(), 0.001)
        try:
            async with asyncio.timeout(timeout):
                if self.proxy_url:
                    transport, handoff = await self._open_via_proxy(timeout)
                elif self.ssl_context is not None:
                    transport, handoff = await _tls_connect(
                        loop, self.host, self.port, self.ssl_context, self.server_hostname
                    )
                else:
                    raw, handoff = await loop.create_connection(
                        _Handoff,
                        self.host,
                        self.port,
                        ssl=self.ssl_context,
                        server_hostname=self.server_hostname if self.ssl_context else None,
                        ssl_handshake_timeout=timeout if self.ssl_context else None,
                    )
                    transport = raw
        except (OSError, ssl.SSLError, TimeoutError, TransportError) as exc:
            raise _connect_error(exc, self.origin) from None
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        return transport, handoff, alpn

    async def _open_via_proxy(self, timeout: float) -> tuple[asyncio.Transport, _Handoff]:
        """A tunnel through the proxy (HTTP CONNECT, or SOCKS5 CONNECT), then TLS with ALPN
        inside it. An https:// proxy's certificate is checked against the system's CAs."""
        assert self.proxy_url is not None
        loop = asyncio.get_running_loop()
        proxy = urlsplit(self.proxy_url)
        socks = proxy.scheme in ("socks5", "socks5h")
        proxy_tls = ssl.create_default_context() if proxy.scheme == "https" else None
        proxy_port = proxy.port or (1080 if socks else 443 if proxy_tls else 80)
        try:
            raw, handoff = await loop.create_connection(
                _Handoff,
                # A proxy URL without a host is passed on as before (create_connection refuses it).
                proxy.hostname,  # type: ignore[arg-type]
                proxy_port,
                ssl=proxy_tls,
                server_hostname=proxy.hostname if proxy_tls else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(
                "proxy", f"cannot connect to the proxy {proxy.hostname}:{proxy_port}: {exc}"
            ) from None
        transport: asyncio.Transport = raw
        try:
            if socks:
                await self._socks5_connect(transport, handoff, proxy.username, proxy.password, proxy.scheme)
            else:
                await self._http_connect(transport, handoff, proxy.username, proxy.password)
        except BaseException:
            transport.close()
            raise
        if self.ssl_context is None:
            return transport, handoff
        tls = await loop.start_tls(
            transport,
            handoff,
            self.ssl_context,
            server_hostname=self.server_hostname,
            ssl_handshake_timeout=timeout,
        )
        assert tls is not None
        return tls, handoff

    async def _http_connect(
        self, transport: asyncio.Transport, handoff: _Handoff, user: str | None, password: str | None
    ) -> None:
        request = f"CONNECT {self.authority_for_connect} HTTP/1.1\r\nHost: {self.authority_for_connect}\r\n"
        if user is not None:
            credentials = f"{unquote(user)}:{unquote(password or '')}"
            request += f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
        transport.write((request + "\r\n").encode())
        head = await handoff.read_head()
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or fields[1] != "200":
            raise TransportError(
                "proxy", f"the proxy refused CONNECT {self.authority_for_connect}: {status_line}"
            )

    async def _socks5_connect(
        self,
        transport: asyncio.Transport,
        handoff: _Handoff,
        user: str | None,
        password: str | None,
        scheme: str,
    ) -> None:
        """RFC 1928 CONNECT (with RFC 1929 username/password when the URL has them);
        ``socks5h`` lets the proxy resolve the name, ``socks5`` resolves it here."""
        transport.write(b"\x05\x02\x00\x02" if user is not None else b"\x05\x01\x00")
        version, method = await handoff.read_exactly(2)
        if version != 5:
            raise TransportError("proxy", "the proxy does not speak SOCKS5")
        if method == 2 and user is not None:
            name, secret = unquote(user).encode(), unquote(password or "").encode()
            transport.write(b"\x01" + bytes([len(name)]) + name + bytes([len(secret)]) + secret)
            if (await handoff.read_exactly(2))[1] != 0:
                raise TransportError("proxy", "the SOCKS5 proxy refused the username and password")
        elif method != 0:
            raise TransportError("proxy", "the SOCKS5 proxy accepts none of our authentication methods")
        address = await self._socks_address(remote_dns=scheme == "socks5h")
        transport.write(b"\x05\x01\x00" + address + self.port.to_bytes(2, "big"))
        _, reply, _, kind = await handoff.read_exactly(4)
        if reply != 0:
            why = _SOCKS_REPLIES.get(reply, f"error {reply}")
            raise TransportError(
                "proxy", f"the SOCKS5 proxy refused CONNECT {self.authority_for_connect}: {why}"
            )
        bound = {1: 4, 4: 16}.get(kind) or (await handoff.read_exactly(1))[0]
        await handoff.read_exactly(bound + 2)

    async def _socks_address(self, *, remote_dns: bool) -> bytes:
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            if remote_dns:
                name = self.host.encode("idna")
                return b"\x03" + bytes([len(name)]) + name
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM
            )
            ip = ipaddress.ip_address(infos[0][4][0])
        return (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
