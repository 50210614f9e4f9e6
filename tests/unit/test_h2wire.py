"""meshplug.agent.h2wire's inbound header checks (the fallback codec's, PyCodec over the h2 library) against
nghttp2's as the native codec runs them with Envoy's options (meshplug/agent/_h2codec.c): for every block
(hand-picked oddities, then random mutations of valid ones) both codecs refuse it (the connection ends) or hand
over the same header list; and meshplug.agent.h2conn's frame dispatch against the h2 library: a connection without
the trace formatting answers the same bytes with the same events as h2's H2Connection, frames on reset and ended
streams included. The nghttp2 half needs `make native` (CI requires it: MESHPLUG_REQUIRE_NATIVE=1)."""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from hyperframe.frame import HeadersFrame, SettingsFrame

from meshplug import limits
from meshplug.agent import h2down, h2up, h2wire
from meshplug.agent.h2conn import Broken, Connection

pytestmark = pytest.mark.unit

Header = tuple[bytes, bytes]

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/M"), (b":authority", b"app")]
REQUEST += [(b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"cookie", b"a=1")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"cookie", b"x")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
#: what a block is received as: a request head or its trailers (the agent as server), a response head or its
#: trailers (the agent as client)
HEAD, TRAILING = "head", "trailers"
SIDES = [(h2wire.REQUEST, HEAD), (h2wire.RESPONSE, HEAD), (h2wire.REQUEST, TRAILING), (h2wire.RESPONSE, TRAILING)]
VALID = {(h2wire.REQUEST, HEAD): REQUEST, (h2wire.RESPONSE, HEAD): RESPONSE}
VALID |= {(h2wire.REQUEST, TRAILING): TRAILERS, (h2wire.RESPONSE, TRAILING): TRAILERS}
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]

ODD: list[tuple[int, str, list[Header]]] = [
    (h2wire.REQUEST, HEAD, [*REQUEST, (b"cookie", b"b=2"), (b"x", b"1"), (b"cookie", b"c=3")]),
    (h2wire.REQUEST, HEAD, [(b":method", b"CONNECT"), (b":authority", b"h:443")]),
    (h2wire.REQUEST, HEAD, [(b":method", b"CONNECT"), (b":authority", b"h:443"), (b":path", b"/")]),
    (h2wire.REQUEST, HEAD, [(b":method", b"CONNECT")]),
    (h2wire.REQUEST, HEAD, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":authority", b"h")]),
    (h2wire.REQUEST, HEAD, [(b":method", b"CONNECT"), (b":protocol", b"ws"), *REQUEST[1:4]]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:3], (b"host", b"app")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"host", b"other")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"host", b"app"), (b"host", b"app")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"host", b"")]),
    (h2wire.REQUEST, HEAD, REQUEST[:3]),
    (h2wire.REQUEST, HEAD, [*GET[:2], (b":path", b""), GET[3]]),
    (h2wire.REQUEST, HEAD, [*GET[:2], (b":path", b"abc"), GET[3]]),
    (h2wire.REQUEST, HEAD, [*GET[:2], (b":path", b"/a b"), GET[3]]),
    (h2wire.REQUEST, HEAD, [*GET[:2], (b":path", b"/a\x7f"), GET[3]]),
    (h2wire.REQUEST, HEAD, [*GET[:2], (b":path", b"/\xc3\xa9"), GET[3]]),
    (h2wire.REQUEST, HEAD, [(b":method", b"OPTIONS"), GET[1], (b":path", b"*"), GET[3]]),
    (h2wire.REQUEST, HEAD, [GET[0], GET[1], (b":path", b"*"), GET[3]]),
    (h2wire.REQUEST, HEAD, [GET[0], (b":scheme", b"foo"), (b":path", b"abc"), GET[3]]),
    (h2wire.REQUEST, HEAD, [GET[0], (b":scheme", b"ht tp"), *GET[2:]]),
    (h2wire.REQUEST, HEAD, [GET[0], (b":scheme", b"1http"), *GET[2:]]),
    (h2wire.REQUEST, HEAD, [GET[0], (b":scheme", b"HTTPS"), (b":path", b"x"), GET[3]]),
    (h2wire.REQUEST, HEAD, [(b":method", b"G T"), *GET[1:]]),
    (h2wire.REQUEST, HEAD, [(b":method", b"get"), *GET[1:]]),
    (h2wire.REQUEST, HEAD, [(b":method", b""), *GET[1:]]),
    (h2wire.REQUEST, HEAD, [*GET[:3], (b":authority", b"a b")]),
    (h2wire.REQUEST, HEAD, [*GET[:3], (b":authority", b"u@a")]),
    (h2wire.REQUEST, HEAD, [*GET[:3], (b":authority", b"[::1]:80")]),
    (h2wire.REQUEST, HEAD, [*GET[:3], (b":authority", b"")]),
    (h2wire.REQUEST, HEAD, [*GET[:3], (b"host", b"u@a")]),
    (h2wire.REQUEST, HEAD, [*REQUEST, (b":status", b"200")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b":protocol", b"x")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b":status", b"200")]),
    (h2wire.REQUEST, HEAD, [REQUEST[0], REQUEST[0], *REQUEST[1:4]]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b":custom", b"1")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b":", b"1")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"te", b"gzip")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"te", b"Trailers")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"connection", b"close")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"content-length", b"0"), (b"content-length", b"0")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"content-length", b"1x")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"content-length", b"")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"content-length", b"99999999999999999999")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x:y", b"1")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"X-Up", b"1")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"", b"1")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"", b"")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"a b", b"1")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x\x7f", b"1")]),
    *[(h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x" + bytes([c]), b"1")]) for c in b'"(),/;<=>?@[\\]{}_|~^`'],
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b" 1")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b"1\t")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b" ")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b"1\r\n2")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b"\x001")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b"a\x7fb")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b"a\x01b")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b"")]),
    (h2wire.REQUEST, HEAD, [*REQUEST[:4], (b"x", b"\xff\x80 ok")]),
    (h2wire.REQUEST, HEAD, [(b"x", b"1"), *REQUEST[:4]]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"100")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"101")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"20")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"2x0")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"")]),
    (h2wire.RESPONSE, HEAD, [(b"content-type", b"text/plain")]),
    (h2wire.RESPONSE, HEAD, [*RESPONSE, (b":path", b"/")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"200"), (b":status", b"200")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"200"), (b"host", b"a"), (b"host", b"b")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"200"), (b"host", b"u@a b")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"204"), (b"keep-alive", b"1")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"204"), (b"content-length", b"0")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"204"), (b"content-length", b"3")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"200"), (b"content-length", b"0"), (b"content-length", b"0")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"200"), (b"x", b" spaced ")]),
    (h2wire.RESPONSE, HEAD, [(b":status", b"200"), (b"te", b"x")]),
]
#: odd trailers, received both ways
ODD += [
    (side, TRAILING, headers)
    for headers in (
        [*TRAILERS, (b":status", b"200")],
        [*TRAILERS, (b"cookie", b"a"), (b"cookie", b"b")],
        [*TRAILERS, (b"transfer-encoding", b"chunked")],
        [*TRAILERS, (b"x", b"a\x7f")],
        [*TRAILERS, (b"host", b"u@a")],
        [],
    )
    for side in (h2wire.REQUEST, h2wire.RESPONSE)
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _headers_frame(block: list[Header], enc: hpack.Encoder, *, end_stream: bool = True) -> bytes:
    frame = HeadersFrame(1)
    frame.data = enc.encode(block)
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return bytes(frame.serialize())


def _received(native: bool, side: int, part: str, headers: list[Header]) -> list[list[Header]] | str:
    """What one codec hands over for `headers` received on stream 1 as a request's (`side` REQUEST: the codec is
    a server) or a response's (a client) head or trailers (`part`): the header lists of its events, or "refused"
    (the connection ends)."""
    if native and h2wire.CODEC_NAME == "h2":
        pytest.skip("no native build (make native)")
    server = side == h2wire.REQUEST
    codec = h2wire.new_codec(
        server=server,
        settings=h2down.server_settings() if server else h2up.client_settings(),
        connection_window=limits.H2_INITIAL_CONNECTION_WINDOW,
        max_header_bytes=limits.MAX_REQUEST_HEADER_BYTES,  # (a bound past every head here)
        stream_window=0 if server else limits.H2_INITIAL_STREAM_WINDOW,
        on_failed=lambda sid: None,
        native=native,
    )
    enc = hpack.Encoder()
    wire = (PREFACE if server else b"") + SettingsFrame(0).serialize()
    if not server:
        assert codec.send_headers(1, REQUEST[:4], True)
        codec.data_to_send()
    if part == TRAILING:
        wire += _headers_frame(REQUEST[:4] if server else RESPONSE, enc, end_stream=False)
    wire += _headers_frame(headers, enc)
    try:
        events = codec.receive(wire)
    except h2wire.PROTOCOL_ERRORS:
        return "refused"
    kinds = (h2wire.EV_REQUEST, h2wire.EV_RESPONSE, h2wire.EV_TRAILERS)
    return [[(bytes(n), bytes(v)) for n, v in ev[2]] for ev in events if ev[0] in kinds]


@pytest.mark.parametrize(("side", "part", "headers"), ODD)
def test_checks_match_nghttp2_on_odd_blocks(side: int, part: str, headers: list[Header]) -> None:
    assert _received(False, side, part, headers) == _received(True, side, part, headers)


#: bytes poked into names and values: allowed, uppercase, separators, whitespace, CR/LF/NUL, DEL, non-ASCII, '@'
ALPHABET = b':aZ \t\r\n\x00\x7f\xc3-1A@/"*'


def _mutate(rng: random.Random, headers: list[Header]) -> list[Header]:
    out = list(headers)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(out) + 1)
        if op == 0 or not out:  # insert a known or odd field
            name = rng.choice([b":path", b":method", b":status", b":protocol", b"host", b"te", b"cookie", b"upgrade",
                               b"content-length", b":authority", b":scheme"])  # fmt: skip
            out.insert(i, (name, rng.choice([b"", b"x", b"trailers", b"CONNECT", b"app", b"0", b"/", b"*"])))
        elif op == 1:  # drop one
            del out[min(i, len(out) - 1)]
        elif op == 2:  # move one
            out.insert(i, out.pop(rng.randrange(len(out))))
        else:  # poke a byte into a name (op 3) or a value (op 4)
            j = min(i, len(out) - 1)
            name, value = out[j]
            field = bytearray(name if op == 3 else value)
            field.insert(rng.randint(0, len(field)), rng.choice(ALPHABET))
            out[j] = (bytes(field), value) if op == 3 else (name, bytes(field))
    return out


def test_checks_match_nghttp2_on_random_blocks() -> None:
    rng = random.Random(17)
    outcomes = set()
    for _ in range(3000):
        side, part = rng.choice(SIDES)
        headers = _mutate(rng, VALID[side, part])
        theirs = _received(True, side, part, headers)
        assert _received(False, side, part, headers) == theirs, (side, part, headers)
        outcomes.add(theirs == "refused")
    assert outcomes == {True, False}  # both outcomes were exercised


def _pair(cls: type[h2.connection.H2Connection]) -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    server = cls(h2.config.H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def _script(cls: type[h2.connection.H2Connection]) -> list[str]:
    """What a server answers (events, then bytes) to a client's frames on open, reset and ended streams (frames on
    a reset or skipped stream, or after the request's END_STREAM, are answered as nghttp2 answers them instead:
    tests/unit/test_h2codec.py's test_frames_on_a_stream_not_open)."""
    client, server = _pair(cls)
    seen: list[str] = []

    def feed(data: bytes) -> None:
        try:
            events = server.receive_data(data)
            seen.append(repr([(type(e).__name__, getattr(e, "stream_id", None)) for e in events]))
        except h2.exceptions.ProtocolError as exc:  # ours carries the library's error as its cause
            seen.append(type(exc.__cause__ if isinstance(exc, Broken) else exc).__name__)
        seen.append(server.data_to_send().hex())

    client.send_headers(1, REQUEST)
    feed(client.data_to_send())
    server.reset_stream(1)
    seen.append(server.data_to_send().hex())
    client.send_headers(3, REQUEST, end_stream=True)
    client.send_headers(7, REQUEST, end_stream=True)
    feed(client.data_to_send())
    server.send_headers(3, RESPONSE, end_stream=True)
    seen.append(server.data_to_send().hex())
    frames = client.data_to_send()
    # a client breaking the protocol: DATA on stream 3 (ended both ways), then HEADERS on it (a connection error)
    stale = b"\x00\x00\x01\x00\x00\x00\x00\x00\x03x"
    feed(frames + stale)
    feed(b"\x00\x00\x03\x01\x05\x00\x00\x00\x03\x82\x86\x84")
    return seen


def test_connection_without_trace_formatting_answers_as_h2() -> None:
    assert _script(Connection) == _script(h2.connection.H2Connection)


def test_a_bad_block_ends_the_connection_as_nghttp2_does_in_envoy() -> None:
    """A client sends a valid request, then one with an upper-case field name: the fallback codec hands over the
    valid request, raises, and writes nothing more -- not even its SETTINGS, queued in this first read (nghttp2
    reports the block as an invalid frame, Envoy's codec fails the read; tests/integration/test_differential_h2.py
    compares the bytes with Envoy's)."""
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    config.validate_inbound_headers = config.normalize_inbound_headers = False
    codec = h2wire.PyCodec(
        True, [], connection_window=65535, max_header_bytes=65536, stream_window=0, on_failed=lambda sid: None,
        config=config,
    )  # fmt: skip
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    client.initiate_connection()
    client.send_headers(1, REQUEST, end_stream=True)
    client.send_headers(3, [*REQUEST[:4], (b"X-Up", b"1")], end_stream=True)
    with pytest.raises(h2.exceptions.ProtocolError) as raised:
        codec.receive(client.data_to_send())
    assert [ev[:2] for ev in h2wire.events_before(raised.value)] == [(h2wire.EV_REQUEST, 1), (h2wire.EV_END, 1)]
    assert codec.data_to_send() == b""
