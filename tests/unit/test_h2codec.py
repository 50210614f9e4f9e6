"""The agent's two HTTP/2 codecs (meshplug.agent.h2wire: nghttp2 in meshplug/agent/_h2codec.c, and the h2
library as PyCodec) against a real peer (the h2 library's own connection): the same bytes in give the same
events out, and what they send the peer reads as the same frames -- header blocks, bodies past both flow-control
windows, trailers, resets, an HPACK bomb.

The native half needs `make native` (CI requires it: MESHPLUG_REQUIRE_NATIVE=1)."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import pytest
from hyperframe.frame import HeadersFrame, PriorityFrame, WindowUpdateFrame

from meshplug import limits
from meshplug.agent import h2conn, h2down, h2up, h2wire

pytestmark = pytest.mark.unit

Header = tuple[bytes, bytes]
REQUEST: list[Header] = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/M"), (b":authority", b"app")]
CODECS = ["native", "h2"]
#: the decoded header-block bounds the agent gives its codecs: a client's request head (h2down: the HPACK bomb
#: factor times max_request_headers_kb) and an upstream's response head (h2up: max_response_headers_kb)
_SERVER_HEAD_BOUND = limits.H2_HPACK_BOMB_FACTOR * limits.MAX_REQUEST_HEADER_BYTES
_CLIENT_HEAD_BOUND = limits.MAX_RESPONSE_HEADERS_KB * 1024


def _codec(kind: str, *, server: bool, failed: list[int] | None = None) -> h2wire.Codec:
    if kind == "native" and h2wire.CODEC_NAME == "h2":
        pytest.skip("no native build (make native)")
    return h2wire.new_codec(
        server=server,
        settings=h2down.server_settings() if server else h2up.client_settings(),
        connection_window=limits.H2_INITIAL_CONNECTION_WINDOW,
        max_header_bytes=_SERVER_HEAD_BOUND if server else _CLIENT_HEAD_BOUND,
        stream_window=0 if server else limits.H2_INITIAL_STREAM_WINDOW,
        on_failed=(failed if failed is not None else []).append,
        native=kind == "native",
    )


def _peer(*, client: bool) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
    peer.initiate_connection()
    return peer


def _exchange(codec: h2wire.Codec, peer: h2.connection.H2Connection) -> list[Any]:
    """Codec -> peer until quiet; the peer's events (DATA acknowledged as read)."""
    seen: list[Any] = []
    for _ in range(64):
        data = codec.data_to_send()
        if not data:
            break
        for ev in peer.receive_data(data):
            seen.append(ev)
            if isinstance(ev, h2.events.DataReceived):
                peer.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        back = peer.data_to_send()
        if back:
            codec.receive(back)
    return seen


def _ours(events: list[h2wire.Event]) -> list[h2wire.Event]:
    """Events as both codecs give them (h2's separate stream-end event left out: END_STREAM is on the frame)."""
    return [e for e in events if e[0] != h2wire.EV_END]


def _request_events(kind: str) -> list[h2wire.Event]:
    server = _codec(kind, server=True)
    client = _peer(client=True)
    client.send_headers(1, [*REQUEST, (b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2")])
    client.send_data(1, b"hello")
    client.send_headers(1, [(b"grpc-timeout", b"1S")], end_stream=True)
    client.send_headers(3, REQUEST, end_stream=True)
    return server.receive(client.data_to_send())


def test_request_events_are_the_same() -> None:
    want = [
        (1, 1, [*REQUEST, (b"te", b"trailers"), (b"cookie", b"a=1; b=2")], False, 0),
        (4, 1, b"hello", False, 5),
        (3, 1, [(b"grpc-timeout", b"1S")], True, 0),
        (1, 3, REQUEST, True, 0),
    ]
    for kind in CODECS:
        assert _ours(_request_events(kind)) == want, kind


def _response_frames(kind: str) -> list[tuple[str, Any]]:
    """A response head, a body past the peer's 64 KiB windows, trailers; then a reset stream."""
    server = _codec(kind, server=True)
    client = _peer(client=True)
    client.send_headers(1, REQUEST, end_stream=True)
    client.send_headers(3, REQUEST, end_stream=True)
    server.receive(client.data_to_send())
    assert server.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    assert server.send_data(1, b"x" * 200_000, False)
    assert server.send_trailers(1, [(b"grpc-status", b"0")])
    server.reset(3, h2.errors.ErrorCodes.CANCEL)
    got: list[tuple[str, Any]] = []
    body = 0
    for ev in _exchange(server, client):
        if isinstance(ev, h2.events.DataReceived):
            body += len(ev.data)
        elif isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            got.append((type(ev).__name__, ev.headers))
        elif isinstance(ev, h2.events.StreamReset):
            got.append(("reset", (ev.stream_id, ev.error_code)))
        elif isinstance(ev, h2.events.StreamEnded):
            got.append(("ended", ev.stream_id))
    got.append(("body", body))
    return sorted(got, key=repr)


def test_response_frames_are_the_same() -> None:
    assert _response_frames("native") == _response_frames("h2")
    assert ("body", 200_000) in _response_frames("h2")


def _client_events(kind: str) -> list[h2wire.Event]:
    client = _codec(kind, server=False)
    server = _peer(client=False)
    sid = client.next_stream_id()
    assert client.send_headers(sid, REQUEST, False)
    assert client.send_data(sid, b"ping", True)
    for ev in _exchange(client, server):
        if isinstance(ev, h2.events.RequestReceived):
            server.send_headers(ev.stream_id, [(b":status", b"100")])
            server.send_headers(ev.stream_id, [(b":status", b"200"), (b"x-a", b"1")])
            server.send_data(ev.stream_id, b"pong")
            server.send_headers(ev.stream_id, [(b"grpc-status", b"0")], end_stream=True)
    return client.receive(server.data_to_send())


def test_client_events_are_the_same() -> None:
    want = [
        (2, 1, [(b":status", b"200"), (b"x-a", b"1")], False, 0),
        (4, 1, b"pong", False, 4),
        (3, 1, [(b"grpc-status", b"0")], True, 0),
    ]
    for kind in CODECS:
        assert _ours(_client_events(kind)) == want, kind


def _bomb(kind: str) -> tuple[str, int | None]:
    """A 4 KB value indexed once, then referenced 70 times: past 4 x 60 KiB decoded."""
    server = _codec(kind, server=True)
    client = _peer(client=True)
    client.receive_data(server.data_to_send())
    enc = hpack.Encoder()
    frames = []
    for sid, n in ((1, 1), (3, 70)):
        block = enc.encode([*REQUEST, *[(b"x-bomb", b"b" * 4000)] * n])
        frames.append(len(block).to_bytes(3, "big") + b"\x01\x05" + sid.to_bytes(4, "big") + block)
    try:
        server.receive(client.data_to_send() + b"".join(frames))
        outcome = "served"
    except h2wire.PROTOCOL_ERRORS:
        outcome = "refused"
    events = client.receive_data(server.data_to_send())
    codes = [e.error_code for e in events if isinstance(e, h2.events.ConnectionTerminated)]
    return outcome, codes[0] if codes else None


@pytest.mark.parametrize("kind", CODECS)
def test_hpack_bomb_ends_the_connection(kind: str) -> None:
    assert _bomb(kind) == ("refused", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)


def _reset_after_end(kind: str, body: bool) -> list[tuple[str, Any]]:
    server = _codec(kind, server=True)
    client = _peer(client=True)
    client.send_headers(1, REQUEST)  # the request goes on
    server.receive(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")], not body)  # without a body: a trailers-only reply
    if body:
        server.send_data(1, b"done", True)
    server.reset_after_end(1)
    out: list[tuple[str, Any]] = []
    for ev in _exchange(server, client):
        if isinstance(ev, h2.events.StreamReset):
            out.append(("reset", ev.error_code))
        elif isinstance(ev, h2.events.DataReceived):
            out.append(("data", ev.data))
        elif isinstance(ev, h2.events.ResponseReceived):
            out.append(("head", ev.headers))
    return out


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("body", [True, False])
def test_reset_after_the_response_ended(kind: str, body: bool) -> None:
    """The response is whole, then RST_STREAM NO_ERROR tells the client to stop sending (RFC 9113 8.1)."""
    head = ("head", [(b":status", b"200")])
    sent = [head, ("data", b"done")] if body else [head]
    assert _reset_after_end(kind, body) == [*sent, ("reset", h2.errors.ErrorCodes.NO_ERROR)]


def _broken_after_body(kind: str, trailers: list[Header], end: bool) -> tuple[object, list[Any]]:
    """A response head and DATA, then a trailer block the codec refuses, in one read: what `receive` raised
    the events before (`h2wire.events_before`) and the GOAWAY codes the peer got."""
    client = _codec(kind, server=False)
    server = _peer(client=False)
    sid = client.next_stream_id()
    assert client.send_headers(sid, REQUEST, True)
    _exchange(client, server)
    server.send_headers(sid, [(b":status", b"200")])
    server.send_data(sid, b"ok")
    frame = HeadersFrame(sid)
    frame.data = server.encoder.encode(trailers)  # the peer's own encoder: the tables stay in step
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    try:
        client.receive(server.data_to_send() + frame.serialize())
    except h2wire.PROTOCOL_ERRORS as exc:
        before: object = h2wire.events_before(exc)
    else:
        before = "served"
    codes = [e.error_code for e in server.receive_data(client.data_to_send()) if hasattr(e, "last_stream_id")]
    return before, codes


# trailer blocks nghttp2 (with Envoy's options) refuses with a connection error: name, block, END_STREAM on it
BAD_TRAILERS: list[tuple[str, list[Header], bool]] = [
    ("pseudo-header", [(b":status", b"200")], True),
    ("upper-case name", [(b"X-T", b"1")], True),
    ("without END_STREAM", [(b"x-t", b"1")], False),
]


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("name", "trailers", "end"), BAD_TRAILERS, ids=[c[0] for c in BAD_TRAILERS])
def test_a_connection_error_hands_over_the_events_before_it(
    kind: str, name: str, trailers: list[Header], end: bool
) -> None:
    """As Envoy: the response head and body read before the frame that broke the connection are passed on (the
    exchange then cuts the response it started); the connection ends with nothing more written, no GOAWAY (Envoy's
    codec client closes it without a flush)."""
    head = (h2wire.EV_RESPONSE, 1, [(b":status", b"200")], False, 0)
    assert _broken_after_body(kind, trailers, end) == ([head, (h2wire.EV_DATA, 1, b"ok", False, 2)], [])


def _window_updates(stream_id: int, n: int) -> bytes:
    frames = []
    for _ in range(n):
        w = WindowUpdateFrame(stream_id)
        w.window_increment = 1
        frames.append(w.serialize())
    return b"".join(frames)


def _priorities(stream_id: int, n: int) -> bytes:
    frames = []
    for _ in range(n):
        p = PriorityFrame(stream_id)
        p.depends_on, p.stream_weight = 0, 16
        frames.append(p.serialize())
    return b"".join(frames)


def _floods(codec: h2wire.Codec, data: bytes) -> bool:
    return _flood_code(codec, data) != 0


def _flood_code(codec: h2wire.Codec, data: bytes) -> int:
    """The flood's code (limits.H2_FLOOD_*) when `data` floods `codec`, else 0."""
    try:
        codec.receive(data)
    except h2wire.FLOOD_ERRORS as exc:
        return h2wire.flood_code(exc)
    return 0


_POST_HEAD = HeadersFrame(1)
_POST_HEAD.data = hpack.Encoder().encode(REQUEST)
_POST_HEAD.flags.add("END_HEADERS")
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

# name, what a client sends after its preface and a POST's HEADERS, the flood code both codecs raise
FLOOD_CODES = [
    ("two empty DATA frames", b"\x00\x00\x00\x00\x00\x00\x00\x00\x01" * 2, limits.H2_FLOOD_EMPTY_FRAMES),
    ("201 PRIORITY frames", _priorities(1, 201), limits.H2_FLOOD_PRIORITY),
    ("8 WINDOW_UPDATE frames", _window_updates(1, 8), limits.H2_FLOOD_WINDOW_UPDATE),
]


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("name", "frames", "code"), FLOOD_CODES, ids=[c[0] for c in FLOOD_CODES])
def test_a_flood_names_its_limit_by_code(kind: str, name: str, frames: bytes, code: int) -> None:
    server = _codec(kind, server=True)
    assert _flood_code(server, _PREFACE + _POST_HEAD.serialize() + frames) == code


def test_the_native_flood_codes_are_the_limits_ones() -> None:
    native = h2wire._NATIVE
    if native is None:
        pytest.skip("no native build (make native)")
    assert (native.FLOOD_EMPTY_FRAMES, native.FLOOD_PRIORITY, native.FLOOD_WINDOW_UPDATE) == (
        limits.H2_FLOOD_EMPTY_FRAMES,
        limits.H2_FLOOD_PRIORITY,
        limits.H2_FLOOD_WINDOW_UPDATE,
    )


def _pings(n: int) -> bytes:
    return b"".join(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + i.to_bytes(8, "big") for i in range(n))


@pytest.mark.parametrize("kind", CODECS)
def test_frames_out_counts_what_is_serialized_and_its_control_frames(kind: str) -> None:
    """Envoy's outbound accounting: every frame, and the PING/SETTINGS ACKs and RST_STREAMs among them; what
    frames_out serializes is still handed over by data_to_send, once."""
    server = _codec(kind, server=True)
    server.receive(_PREFACE + _POST_HEAD.serialize() + _pings(3))
    frames, control = server.frames_out()  # SETTINGS, WINDOW_UPDATE, SETTINGS ACK, 3 PING ACKs
    assert (frames, control) == (6, 4)
    server.reset(1, h2.errors.ErrorCodes.CANCEL)
    assert server.frames_out() == (7, 5)
    out = server.data_to_send()
    assert sorted(f[0] for f in h2raw_frames(out)) == [3, 4, 4, 6, 6, 6, 8]
    assert server.data_to_send() == b""
    assert server.frames_out() == (7, 5)


def h2raw_frames(data: bytes) -> list[tuple[int, int]]:
    out = []
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4]))
        data = data[9 + length :]
    return out


# chunks a byte stream of frames may be cut into: (frame sizes, cut points)
@pytest.mark.parametrize("cut", [1, 4, 9, 10, 17, 26, 1000])
def test_the_fallback_frame_count_reads_headers_across_chunks(cut: int) -> None:
    stream = _PREFACE[24:] + _pings(4) + b"\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08"
    count = h2conn.FrameCount()
    for i in range(0, len(stream), cut):
        count.add(stream[i : i + cut])
    assert (count.frames, count.control) == (6, 1)  # a SETTINGS (no ACK), 4 PINGs (no ACK), an RST_STREAM


#: (DATA frames the server sent on its one stream, WINDOW_UPDATE frames then received): Envoy's allowance is
#: 5 + 2 x (streams opened + 10 x DATA frames sent)
WINDOW_CASES = [(0, 7, False), (0, 8, True), (1, 27, False), (1, 28, True), (3, 67, False), (3, 68, True)]


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("sent", "updates", "flood"), WINDOW_CASES)
def test_window_updates_allowed_per_data_frame_sent(kind: str, sent: int, updates: int, flood: bool) -> None:
    server = _codec(kind, server=True)
    client = _peer(client=True)
    client.send_headers(1, REQUEST)
    server.receive(client.data_to_send())
    server.send_headers(1, [(b":status", b"200")], False)
    for _ in range(sent):
        server.send_data(1, b"x", False)
        client.receive_data(server.data_to_send())  # each a DATA frame of its own
    assert _floods(server, _window_updates(1, updates)) is flood


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("priorities", "flood"), [(200, False), (201, True)])
def test_an_upstream_connection_has_the_flood_limits_too(kind: str, priorities: int, flood: bool) -> None:
    """The client codec (an HTTP/2 cluster): its stream opened by our HEADERS counts, as Envoy's newStream."""
    client = _codec(kind, server=False)
    server = _peer(client=False)
    server.receive_data(client.data_to_send())
    assert client.send_headers(1, REQUEST, True)
    server.receive_data(client.data_to_send())
    assert _floods(client, server.data_to_send() + _priorities(1, priorities)) is flood


def _response_head(kind: str, fields: int, size: int) -> tuple[list[h2wire.Event], list[Any]]:
    """A client codec (80 KiB / 100 fields, Envoy's cluster defaults) given a response head of `fields` fields of
    `size` value bytes on stream 1, then a good response on stream 3: its events, and what the server then reads."""
    client = h2wire.new_codec(
        server=False,
        settings=h2up.client_settings(),
        connection_window=limits.H2_INITIAL_CONNECTION_WINDOW,
        max_header_bytes=limits.MAX_RESPONSE_HEADERS_KB * 1024,
        max_header_count=limits.MAX_RESPONSE_HEADERS_COUNT,
        stream_window=limits.H2_INITIAL_STREAM_WINDOW,
        on_failed=[].append,
        native=kind == "native",
    )
    server = _peer(client=False)
    server.receive_data(client.data_to_send())
    for sid in (1, 3):
        assert client.send_headers(sid, REQUEST, True)
    server.receive_data(client.data_to_send())
    head = [(b":status", b"200"), *[(b"x-h%d" % i, b"v" * size) for i in range(fields - 1)]]
    server.send_headers(1, head, end_stream=False)
    server.send_data(1, b"lost", end_stream=False)
    server.send_headers(3, [(b":status", b"200")], end_stream=True)
    events = client.receive(server.data_to_send())
    return events, server.receive_data(client.data_to_send())


# fields in the head (":status" counted), each regular one's value bytes; whether its stream is reset
HEAD_CASES = [(100, 1, False), (101, 1, True), (21, 4000, False), (22, 4000, True)]


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("fields", "size", "reset"), HEAD_CASES)
def test_a_response_head_past_envoys_limits_resets_its_stream(kind: str, fields: int, size: int, reset: bool) -> None:
    """Envoy's max_response_headers_kb (80: names and values) and _count (100): past either only that stream is
    reset, RST_STREAM INTERNAL_ERROR, reported as the peer's reset (Envoy: remote_reset); the connection goes on."""
    if kind == "native" and h2wire.CODEC_NAME == "h2":
        pytest.skip("no native build (make native)")
    events, seen = _response_head(kind, fields, size)
    ours = [e for e in _ours(events) if e[1] == 1]
    resets = [(e.stream_id, e.error_code) for e in seen if isinstance(e, h2.events.StreamReset)]
    if reset:
        assert ours == [(h2wire.EV_RESET, 1, None, True, h2.errors.ErrorCodes.INTERNAL_ERROR)]
        assert resets == [(1, h2.errors.ErrorCodes.INTERNAL_ERROR)]
    else:
        assert [e[0] for e in ours] == [h2wire.EV_RESPONSE, h2wire.EV_DATA]
        assert resets == []
    assert [e[0] for e in _ours(events) if e[1] == 3] == [h2wire.EV_RESPONSE]  # the connection goes on


def _frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


_GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"app")]
_PUT_1 = [
    (b":method", b"PUT"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"app"),
    (b"content-length", b"1"),
]
_END, _END_HEADERS, _PRIORITY_FLAG = 0x1, 0x4, 0x20


def _served(kind: str, steps: list[tuple[str, int, int, Any]]) -> tuple[list[tuple[int, int]], bool, list[Any]]:
    """A client's preface then `steps` (("headers" | "data" | "priority", stream, flags, fields | payload | the stream
    depended on)) in one read: the
    events (kind, stream), whether the connection broke, and the RST_STREAM / GOAWAY frames (type, stream, code)
    the codec wrote after."""
    server = _codec(kind, server=True)
    encoder = hpack.Encoder()
    data = _PREFACE
    for what, sid, flags, arg in steps:
        if what == "headers":
            data += _frame(0x1, flags | _END_HEADERS, sid, encoder.encode(arg))
        elif what == "priority":  # `arg`: the stream it depends on (HEADERS' PRIORITY flag when flags has it)
            weighted = arg.to_bytes(4, "big") + b"\x0f"
            if flags & _PRIORITY_FLAG:
                data += _frame(0x1, flags | _END | _END_HEADERS, sid, weighted + encoder.encode(_GET))
            else:
                data += _frame(0x2, 0, sid, weighted)
        else:
            data += _frame(0x0, flags, sid, arg)
    try:
        events = server.receive(data)
        broke = False
    except h2wire.PROTOCOL_ERRORS as exc:
        events, broke = h2wire.events_before(exc), True
    out, frames = server.data_to_send(), []
    while len(out) >= 9:
        size, ftype, sid = int.from_bytes(out[:3], "big"), out[3], int.from_bytes(out[5:9], "big")
        payload, out = out[9 : 9 + size], out[9 + size :]
        if ftype == 0x3:
            frames.append(("rst", sid, int.from_bytes(payload[:4], "big")))
        elif ftype == 0x7:
            frames.append(("goaway", int.from_bytes(payload[:4], "big"), int.from_bytes(payload[4:8], "big")))
    return [(e[0], e[1]) for e in _ours(events)], broke, frames


_CLOSED = h2.errors.ErrorCodes.STREAM_CLOSED
_PROTOCOL = h2.errors.ErrorCodes.PROTOCOL_ERROR
# name, what the client sends, what nghttp2 (Envoy 1.40's codec) gives: events, connection broken, frames written
ON_CLOSED = [
    (
        "HEADERS after END_STREAM: the connection ends, nothing written",
        [("headers", 1, _END, _GET), ("headers", 1, _END, _GET)],
        ([(h2wire.EV_REQUEST, 1)], True, []),
    ),
    (
        "DATA after END_STREAM: GOAWAY STREAM_CLOSED",
        [("headers", 1, _END, _GET), ("data", 1, _END, b"late")],
        ([(h2wire.EV_REQUEST, 1)], True, [("goaway", 1, _CLOSED)]),
    ),
    (
        "HEADERS on a lower stream never opened: dropped",
        [("headers", 5, _END, _GET), ("headers", 3, _END, _GET), ("headers", 7, _END, _GET)],
        ([(h2wire.EV_REQUEST, 5), (h2wire.EV_REQUEST, 7)], False, []),
    ),
    (
        "DATA on a lower stream never opened: dropped",
        [("headers", 5, _END, _GET), ("data", 3, _END, b"x")],
        ([(h2wire.EV_REQUEST, 5)], False, []),
    ),
    (
        "DATA after the codec's reset: dropped",
        [("headers", 1, 0, _PUT_1), ("data", 1, 0, b"12"), ("data", 1, _END, b"")],
        ([(h2wire.EV_REQUEST, 1), (h2wire.EV_RESET, 1)], False, [("rst", 1, _PROTOCOL)]),
    ),
]


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("name", "steps", "want"), ON_CLOSED, ids=[c[0] for c in ON_CLOSED])
def test_frames_on_a_stream_not_open(kind: str, name: str, steps: list[Any], want: Any) -> None:
    """HEADERS and DATA on a stream that is not open, as nghttp2 answers them (the fallback codec's h2 would reset
    the stream STREAM_CLOSED, or end the connection for a lower stream id); shown against Envoy by
    tests/differential/found_h2.yaml's cases in test_differential_h2_fuzz."""
    assert _served(kind, steps) == want


_POST_5 = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/"),
    (b":authority", b"app"),
    (b"content-length", b"5"),
]
_CONNECT = [(b":method", b"CONNECT"), (b":authority", b"app:80"), (b"content-length", b"05")]
_GET_6 = [*_GET, (b"content-length", b"6")]
_TRAILERS = [(b"x-t", b"1")]
# name, what the client sends, what nghttp2 gives: events, connection broken, frames written
LENGTHS = [
    (
        "trailers end a body shorter than its content-length: the connection ends, nothing written",
        [("headers", 1, 0, _POST_5), ("data", 1, 0, b"abc"), ("headers", 1, _END, _TRAILERS)],
        ([(h2wire.EV_REQUEST, 1), (h2wire.EV_DATA, 1)], True, []),
    ),
    (
        "trailers end a body of its content-length",
        [("headers", 1, 0, _POST_5), ("data", 1, 0, b"abcde"), ("headers", 1, _END, _TRAILERS)],
        ([(h2wire.EV_REQUEST, 1), (h2wire.EV_DATA, 1), (h2wire.EV_TRAILERS, 1)], False, []),
    ),
    (
        "a head ending the stream with content-length 6: the connection ends, nothing written",
        [("headers", 1, _END, _GET_6)],
        ([], True, []),
    ),
    (
        "a CONNECT head ending the stream with a content-length: nghttp2 drops a CONNECT's length",
        [("headers", 1, _END, _CONNECT)],
        ([(h2wire.EV_REQUEST, 1)], False, []),
    ),
]


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("name", "steps", "want"), LENGTHS, ids=[c[0] for c in LENGTHS])
def test_a_request_length_checked_at_its_end(kind: str, name: str, steps: list[Any], want: Any) -> None:
    """A request's content-length against its body where the stream ends, as nghttp2 checks it (shown against
    Envoy by found_h2.yaml's cases in test_differential_h2_fuzz)."""
    assert _served(kind, steps) == want


# name, what the client sends, what the nghttp2 Envoy 1.40 builds gives (the compiled codec takes the PRIORITY frame
# out before Debian's 1.52, which would end the connection for it, reads it)
SELF_DEPENDENT = [
    (
        "a PRIORITY frame making stream 1 depend on itself, then a GET on 1: dropped",
        [("priority", 1, 0, 1), ("headers", 1, _END, _GET)],
        ([(h2wire.EV_REQUEST, 1)], False, []),
    ),
    (
        "HEADERS whose PRIORITY flag makes stream 1 depend on itself: the connection ends",
        [("priority", 1, _PRIORITY_FLAG, 1)],
        ([], True, []),
    ),
]


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("name", "steps", "want"), SELF_DEPENDENT, ids=[c[0] for c in SELF_DEPENDENT])
def test_a_stream_depending_on_itself(kind: str, name: str, steps: list[Any], want: Any) -> None:
    """Both codecs as Envoy (found_h2.yaml's priority-on-itself cases in test_differential_h2_fuzz)."""
    assert _served(kind, steps) == want


def _priority(stream_id: int, depends_on: int, *, exclusive: bool = False) -> bytes:
    """A PRIORITY frame, written by hand (hyperframe makes none on stream 0)."""
    head = b"\x00\x00\x05\x02\x00" + stream_id.to_bytes(4, "big")
    return head + (depends_on | (exclusive << 31)).to_bytes(4, "big") + b"\x0f"


def _block(stream_id: int, headers: list[Header], enc: hpack.Encoder, *, end: bool) -> bytes:
    f = HeadersFrame(stream_id)
    f.data = enc.encode(headers)
    f.flags.add("END_HEADERS")
    if end:
        f.flags.add("END_STREAM")
    return f.serialize()


def _priorities_between() -> tuple[bytes, bytes]:
    """(a client's bytes with PRIORITY frames nghttp2 1.65+ ignores between its frames -- stream 0, depending on
    their own stream, on an idle, open and closed stream --, the same bytes without them)"""
    enc = hpack.Encoder()
    head = _block(1, REQUEST, enc, end=False)
    trailers = _block(1, [(b"x-t", b"1")], enc, end=True)
    get = _block(3, REQUEST, enc, end=True)
    body = b"\x00\x00\x02\x00\x00\x00\x00\x00\x01hi"
    parts = [_PREFACE, head, body, trailers, get]
    ignored = [
        _priority(1, 1) + _priority(0, 0),
        _priority(1, 1, exclusive=True),
        _priority(5, 5) + _priority(1, 3),
        _priority(1, 1) + _priority(3, 3),
        _priority(3, 3),
    ]
    with_them = b"".join(p + q for p, q in zip(parts, ignored, strict=True))
    return with_them, b"".join(parts)


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize("cut", [1, 5, 9, 13, 14, 23, 24, 33, 10_000])
def test_priority_frames_are_ignored_as_by_envoys_nghttp2(kind: str, cut: int) -> None:
    """Envoy 1.40's nghttp2 (1.65+) reads PRIORITY frames and drops them: on stream 0, depending on their own
    stream (Debian's 1.52 and h2 end the connection for those); the same events as without them, however the
    reads cut the bytes."""
    with_them, without = _priorities_between()
    events = []
    server = _codec(kind, server=True)
    for i in range(0, len(with_them), cut):
        events += server.receive(with_them[i : i + cut])
    assert _ours(events) == _ours(_codec(kind, server=True).receive(without))
    assert [e[:2] for e in _ours(events)] == [(1, 1), (4, 1), (3, 1), (1, 3)]


#: PRIORITY frames both nghttp2s refuse (a connection error): as a client's first frame (SETTINGS expected), inside
#: a header block (CONTINUATION expected), of a length other than 5
REFUSED_PRIORITIES = [
    ("first frame", _PREFACE[:24] + _priority(1, 0) + _PREFACE[24:]),
    ("inside a header block", _PREFACE + _POST_HEAD.serialize()[:4] + b"\x00" + _POST_HEAD.serialize()[5:]
     + _priority(1, 0)),
    ("4 bytes", _PREFACE + b"\x00\x00\x04\x02\x00\x00\x00\x00\x01\x00\x00\x00\x00"),
]  # fmt: skip


@pytest.mark.parametrize("kind", CODECS)
@pytest.mark.parametrize(("name", "data"), REFUSED_PRIORITIES, ids=[c[0] for c in REFUSED_PRIORITIES])
def test_priority_frames_nghttp2_refuses_end_the_connection(kind: str, name: str, data: bytes) -> None:
    server = _codec(kind, server=True)
    with pytest.raises(h2wire.PROTOCOL_ERRORS):
        server.receive(data)
