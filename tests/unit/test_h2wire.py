"""meshplug.agent.h2wire's inbound header checks and meshplug.agent.h2conn's frame dispatch against the h2
library itself: for every block (hand-picked oddities, then random mutations of valid ones) the compiled
checks give what h2's own normalize_inbound_headers + validate_headers give (the same list, or a
ProtocolError where h2 raises one), and a connection without the trace formatting answers the same bytes
with the same events as h2's H2Connection, frames on reset and ended streams included."""

from __future__ import annotations

import random

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.utilities
import pytest

from meshplug.agent import h2wire
from meshplug.agent.h2conn import Connection

pytestmark = pytest.mark.unit

Header = tuple[bytes, bytes]

#: h2's HeaderValidationFlags for each kind as the agent receives it (server: requests and their trailers;
#: client: responses and their trailers)
FLAGS = {
    h2wire.REQUEST: h2.utilities.HeaderValidationFlags(False, False, False, False),
    h2wire.RESPONSE: h2.utilities.HeaderValidationFlags(True, False, True, False),
    h2wire.TRAILERS: h2.utilities.HeaderValidationFlags(False, True, False, False),
}

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/M"), (b":authority", b"app")]
REQUEST += [(b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"cookie", b"a=1")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"cookie", b"x")]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
VALID = {h2wire.REQUEST: REQUEST, h2wire.RESPONSE: RESPONSE, h2wire.TRAILERS: TRAILERS}

ODD: list[tuple[int, list[Header]]] = [
    (h2wire.REQUEST, [*REQUEST, (b"cookie", b"b=2"), (b"x", b"1"), (b"cookie", b"c=3")]),
    (h2wire.REQUEST, [(b":method", b"CONNECT"), (b":authority", b"h:443")]),
    (h2wire.REQUEST, [(b":method", b"CONNECT"), (b":authority", b"h:443"), (b":path", b"/")]),
    (h2wire.REQUEST, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":authority", b"h")]),
    (h2wire.REQUEST, [(b":method", b"CONNECT"), (b":protocol", b"ws"), *REQUEST[1:4]]),
    (h2wire.REQUEST, [*REQUEST[:3], (b"host", b"app")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"host", b"other")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"host", b"app"), (b"host", b"app")]),
    (h2wire.REQUEST, REQUEST[:3]),
    (h2wire.REQUEST, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"a")]),
    (h2wire.REQUEST, [*REQUEST, (b":status", b"200")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b":protocol", b"x")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b":status", b"200")]),
    (h2wire.REQUEST, [REQUEST[0], REQUEST[0], *REQUEST[1:4]]),
    (h2wire.REQUEST, [*REQUEST[:4], (b":custom", b"1")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"te", b"gzip")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"te", b"Trailers")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"connection", b"close")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x:y", b"1")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"X-Up", b"1")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"", b"1")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"", b"")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"a b", b"1")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x\x7f", b"1")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x", b" 1")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x", b"1\t")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x", b"1\r\n2")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x", b"\x001")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x", b"")]),
    (h2wire.REQUEST, [*REQUEST[:4], (b"x", b"\xff\x80 ok")]),
    (h2wire.REQUEST, [(b"x", b"1"), *REQUEST[:4]]),
    (h2wire.RESPONSE, [(b":status", b"100")]),
    (h2wire.RESPONSE, [(b"content-type", b"text/plain")]),
    (h2wire.RESPONSE, [*RESPONSE, (b":path", b"/")]),
    (h2wire.RESPONSE, [(b":status", b"200"), (b":status", b"200")]),
    (h2wire.RESPONSE, [(b":status", b"200"), (b"host", b"a"), (b"host", b"b")]),
    (h2wire.RESPONSE, [(b":status", b"204"), (b"keep-alive", b"1")]),
    (h2wire.TRAILERS, [*TRAILERS, (b":status", b"200")]),
    (h2wire.TRAILERS, [*TRAILERS, (b"cookie", b"a"), (b"cookie", b"b")]),
    (h2wire.TRAILERS, [*TRAILERS, (b"transfer-encoding", b"chunked")]),
    (h2wire.TRAILERS, []),
]


def _h2(headers: list[Header], kind: int) -> list[Header] | str:
    flags = FLAGS[kind]
    try:
        return list(h2.utilities.validate_headers(h2.utilities.normalize_inbound_headers(headers, flags), flags))
    except h2.exceptions.ProtocolError:
        return "ProtocolError"


def _ours(headers: list[Header], kind: int) -> list[Header] | str:
    try:
        return h2wire.received_headers(headers, kind)
    except h2.exceptions.ProtocolError:
        return "ProtocolError"


@pytest.mark.parametrize(("kind", "headers"), ODD)
def test_checks_match_h2_on_odd_blocks(kind: int, headers: list[Header]) -> None:
    assert _ours(headers, kind) == _h2(headers, kind)


#: bytes poked into names and values: allowed, uppercase, separators, whitespace, CR/LF/NUL, DEL, non-ASCII
ALPHABET = b":aZ \t\r\n\x00\x7f\xc3-1A"


def _mutate(rng: random.Random, headers: list[Header]) -> list[Header]:
    out = list(headers)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(out) + 1)
        if op == 0 or not out:  # insert a known or odd field
            name = rng.choice([b":path", b":method", b":status", b":protocol", b"host", b"te", b"cookie", b"upgrade"])
            out.insert(i, (name, rng.choice([b"", b"x", b"trailers", b"CONNECT", b"app"])))
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


def test_checks_match_h2_on_random_blocks() -> None:
    rng = random.Random(17)
    outcomes = set()
    for _ in range(6000):
        kind = rng.choice(list(VALID))
        headers = _mutate(rng, VALID[kind])
        theirs = _h2(headers, kind)
        assert _ours(headers, kind) == theirs, (kind, headers)
        outcomes.add(theirs == "ProtocolError")
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
    """What a server answers (events, then bytes) to a client's frames on open, reset, ended and skipped
    streams."""
    client, server = _pair(cls)
    seen: list[str] = []

    def feed(data: bytes) -> None:
        try:
            events = server.receive_data(data)
            seen.append(repr([(type(e).__name__, getattr(e, "stream_id", None)) for e in events]))
        except h2.exceptions.ProtocolError as exc:
            seen.append(type(exc).__name__)
        seen.append(server.data_to_send().hex())

    client.send_headers(1, REQUEST)
    feed(client.data_to_send())
    server.reset_stream(1)
    client.send_data(1, b"late")  # DATA on a stream the server reset: RST_STREAM STREAM_CLOSED
    feed(client.data_to_send())
    client.send_headers(3, REQUEST, end_stream=True)
    client.send_headers(7, REQUEST, end_stream=True)
    feed(client.data_to_send())
    server.send_headers(3, RESPONSE, end_stream=True)
    seen.append(server.data_to_send().hex())
    frames = client.data_to_send()
    # a client breaking the protocol: DATA on stream 3 (ended both ways) and on stream 5 (skipped)
    stale = b"\x00\x00\x01\x00\x00\x00\x00\x00\x03x"
    skipped = b"\x00\x00\x01\x00\x00\x00\x00\x00\x05x"
    feed(frames + stale)
    feed(skipped)
    # HEADERS on the reset stream 1 (a stream error), then on the ended stream 3 (a connection error)
    feed(b"\x00\x00\x03\x01\x05\x00\x00\x00\x01\x82\x86\x84")
    feed(b"\x00\x00\x03\x01\x05\x00\x00\x00\x03\x82\x86\x84")
    return seen


def test_connection_without_trace_formatting_answers_as_h2() -> None:
    assert _script(Connection) == _script(h2.connection.H2Connection)


def _ends(peer_side: bool) -> list[str]:
    """A client sends a valid request, then one with an uppercase field name: what the server answers."""
    config = h2.config.H2Configuration(client_side=False, header_encoding=None)
    if peer_side:  # the agent's fallback codec: the library's checks off, h2wire's in PyCodec.receive
        config.validate_inbound_headers = config.normalize_inbound_headers = False
        codec = h2wire.PyCodec(
            True,
            [],
            connection_window=65535,
            max_header_bytes=65536,
            stream_window=0,
            on_failed=lambda sid: None,
            config=config,
        )
        server, receive = codec.h2, codec.receive
    else:
        server = h2.connection.H2Connection(config)
        receive = server.receive_data
        server.initiate_connection()
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
    )
    client.initiate_connection()
    seen = [server.data_to_send().hex()]
    client.send_headers(1, REQUEST, end_stream=True)
    client.send_headers(3, [*REQUEST[:4], (b"X-Up", b"1")], end_stream=True)
    try:
        seen.append(repr(receive(client.data_to_send())))
    except h2.exceptions.ProtocolError as exc:
        seen.append(type(exc).__name__)
    seen.append(server.data_to_send().hex())
    return seen


def test_a_bad_block_ends_the_connection_as_h2_does() -> None:
    assert _ends(True) == _ends(False)
    assert _ends(True)[1] == "ProtocolError"
