"""watcher.transport's own reading of plain DATA frames (``_plain_data_frames``) leaves
h2 exactly where h2's ``receive_data`` would: the same payloads per stream, the same
receive windows and body lengths, the same WINDOW_UPDATEs once the data is credited.
Anything else (flags, other frames, a partial frame, a closed stream) is left to h2."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from watcher import transport

HEADERS = [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/watch")]


def pair(streams: int = 3) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection, list[int]]:
    """A client (as the transport configures it) and a server with ``streams`` answered requests."""
    client = transport._H2State(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    client.increment_flow_control_window(transport.CONNECTION_WINDOW - 65535)
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    ids = []
    for _ in range(streams):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, HEADERS, end_stream=True)
        ids.append(sid)
    server.receive_data(client.data_to_send())
    for sid in ids:
        server.send_headers(sid, [(":status", "200")])
    client.receive_data(server.data_to_send())
    return client, server, ids


def state(conn: h2.connection.H2Connection) -> dict[str, Any]:
    return {
        "window": conn._inbound_flow_control_window_manager.current_window_size,
        "streams": {
            sid: (
                s.state_machine.state,
                s._inbound_window_manager.current_window_size,
                s._actual_content_length,
            )
            for sid, s in conn.streams.items()
        },
        "buffered": bytes(conn.incoming_buffer._data),
    }


def through_h2(conn: h2.connection.H2Connection, data: bytes) -> list[tuple[int, bytes]]:
    return [(e.stream_id, e.data) for e in conn.receive_data(data) if isinstance(e, h2.events.DataReceived)]


def test_plain_data_frames_leave_h2_as_h2_would() -> None:
    fast, server, ids = pair()
    slow, _, ids2 = pair()
    assert ids == ids2
    reads: list[bytes] = []
    for n, sid in enumerate([ids[0], ids[1], ids[0], ids[2]]):
        payload = b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"%d"}}}\n' % n
        server.send_data(sid, payload)
        reads.append(server.data_to_send())
    # Several frames of several streams in one read, too.
    for sid in ids:
        server.send_data(sid, b"x" * 1000)
    reads.append(server.data_to_send())

    delivered_fast: list[tuple[int, bytes]] = []
    for data in reads:
        frames = transport._plain_data_frames(fast, data)
        assert frames is not None
        delivered_fast += [(sid, data[start:end]) for sid, start, end in frames]
    delivered_slow = [d for data in reads for d in through_h2(slow, data)]
    assert delivered_fast == delivered_slow
    assert state(fast) == state(slow)
    # Credit given back the same way sends the same WINDOW_UPDATEs.
    for conn in (fast, slow):
        conn.data_to_send()
        for sid in ids:
            conn.acknowledge_received_data(70_000, sid)
    assert fast.data_to_send() == slow.data_to_send()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda s, sid: s.send_data(sid, b"end", end_stream=True), id="END_STREAM"),
        pytest.param(lambda s, sid: s.send_data(sid, b"padded", pad_length=4), id="padded"),
        pytest.param(lambda s, sid: s.ping(b"12345678"), id="PING"),
        pytest.param(
            lambda s, sid: s.send_headers(sid, [("grpc-status", "0")], end_stream=True), id="trailers"
        ),
    ],
)
def test_anything_but_a_plain_data_frame_is_left_to_h2(make: Any) -> None:
    client, server, ids = pair(1)
    server.send_data(ids[0], b"before")
    make(server, ids[0])
    data = server.data_to_send()
    before = state(client)
    assert transport._plain_data_frames(client, data) is None
    assert state(client) == before  # untouched


def test_a_partial_frame_and_what_follows_it_are_left_to_h2() -> None:
    client, server, ids = pair(1)
    server.send_data(ids[0], b"a whole line\n")
    data = server.data_to_send()
    assert transport._plain_data_frames(client, data[:5]) is None
    assert through_h2(client, data[:5]) == []  # h2 buffers the partial header
    # With h2 holding part of a frame, the rest must go to h2 as well.
    assert transport._plain_data_frames(client, data[5:]) is None
    assert through_h2(client, data[5:]) == [(ids[0], b"a whole line\n")]
    server.send_data(ids[0], b"next\n")
    assert transport._plain_data_frames(client, server.data_to_send()) is not None


def test_data_on_a_stream_h2_does_not_have_open_is_left_to_h2() -> None:
    client, server, ids = pair(2)
    server.send_data(ids[0], b"ok")
    server.send_data(ids[1], b"reset")
    data = server.data_to_send()
    client.reset_stream(ids[1])
    assert transport._plain_data_frames(client, data) is None  # one frame is for a reset stream


def test_a_frame_beyond_the_receive_window_is_left_to_h2() -> None:
    client, server, ids = pair(1)
    client.streams[ids[0]]._inbound_window_manager.current_window_size = 3
    server.send_data(ids[0], b"four")
    assert transport._plain_data_frames(client, server.data_to_send()) is None
