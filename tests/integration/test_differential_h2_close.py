"""How an HTTP/2 client connection ends when the client breaks the protocol: the same bytes to Envoy 1.40 and to
the agent (tests/differential/h2bed.py), what each wrote compared frame by frame, and when each closed.

Envoy's HCM ends the connection after any error of its codec -- a frame or header block nghttp2 refuses, a client
preface nghttp2 does not accept, one of its inbound flood limits -- with FlushWriteAndDelay: what the codec queued
is written (nghttp2's SETTINGS and GOAWAY, or nothing at all when nghttp2 reported an invalid frame or a flood),
nothing more is read, and the socket is closed delayed_close_timeout (1 s) later, or as soon as the client closes
its side. The agent does the same (`limits.DOWNSTREAM_DELAYED_CLOSE_S`); a close at once with bytes still unread
would send an RST that can destroy the GOAWAY before the client reads it.

The close is timed from the moment the bad bytes were sent: "at once" below `AT_ONCE_S`, "after ~1 s" between
`DELAYED_MIN_S` and `DELAYED_MAX_S` -- bounds a close at once cannot reach (it comes within milliseconds) and a
close 1 s later cannot leave on a loaded machine.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import hpack
import pytest

from meshplug import limits
from tests.differential import h2bed
from tests.testbed import h2raw
from tests.testbed.h2raw import BASE, CLIENT_PREFACE, RawFrame

pytestmark = pytest.mark.integration

#: a close this soon after the bad bytes is one at once
AT_ONCE_S = 0.5
#: a delayed close (delayed_close_timeout: 1 s) comes within these bounds
DELAYED_MIN_S = 0.8 * limits.DOWNSTREAM_DELAYED_CLOSE_S
DELAYED_MAX_S = 2.0 * limits.DOWNSTREAM_DELAYED_CLOSE_S
#: how long a connection is read at most (a connection still open then is "open")
READ_S = 3.0


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h2bed.Bed]:
    with h2bed.started(tmp_path_factory.mktemp("h2close")) as started:
        yield started


Block = tuple[tuple[bytes, bytes], ...]
_GET: Block = (BASE[0], BASE[1], (b":path", b"/h2-close"), BASE[3])
_POST: Block = ((b":method", b"POST"), *_GET[1:])
_MAGIC = CLIENT_PREFACE[:24]


def _pseudo(**fields: bytes) -> Block:
    """A GET's pseudo-headers with some replaced (a value of b"-" leaves the field out)."""
    given = {f":{k}".encode(): v for k, v in fields.items()}
    out = [(n, given.pop(n, v)) for n, v in _GET]
    return tuple((n, v) for n, v in [*out, *given.items()] if v != b"-")


def _raw_frame(kind: int, stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _block(headers: Block, stream_id: int = 1, *, end_stream: bool = True) -> bytes:
    """A HEADERS frame (END_HEADERS) of `headers`, HPACK-encoded by a fresh encoder (stream 0 included)."""
    return _raw_frame(1, stream_id, hpack.Encoder().encode(list(headers)), flags=4 | (1 if end_stream else 0))


@dataclass(frozen=True)
class Ending:
    """What a server wrote, frame by frame -- before the client's bad bytes (only when the client waited for the
    server's SETTINGS first) and after them -- how the connection ended ("eof", "reset" or "open" when still open
    after READ_S) and when: "at once", "after ~1 s", or the seconds it took when neither."""

    before: tuple[RawFrame, ...]
    after: tuple[RawFrame, ...]
    end: str
    when: str


def _never(_: bytes) -> bool:
    return False


def _when(seconds: float) -> str:
    if seconds < AT_ONCE_S:
        return "at once"
    if DELAYED_MIN_S <= seconds <= DELAYED_MAX_S:
        return "after ~1 s"
    return f"after {seconds:.2f} s"


def _read(sock: socket.socket, got: bytearray, deadline: float, done: Callable[[bytes], bool] = _never) -> str:
    """`h2raw.read_until`, `done` last: "eof" / "reset" when the server closed, "open" when `deadline` passed."""
    return h2raw.read_until(sock, got, done, deadline)


def _has(kind: int, flags: int = 0) -> Callable[[bytes], bool]:
    """Whether what was read holds a frame of `kind` with all of `flags`."""
    return lambda got: any(f[0] == kind and f[1] & flags == flags for f in h2raw.frames(got))


_SETTINGS, _RST_STREAM, _GOAWAY = 4, 3, 7


def ending(port: int, bad: bytes, *, preface: bytes, settings_first: bool, until_reset: bool = False) -> Ending:
    """Connect to 127.0.0.1:`port`, send `preface` and `bad` in one write, or -- when `settings_first` -- `preface`
    alone, read until the server's SETTINGS ACK, then `bad`; read what the server writes until it closes, READ_S
    passes or (`until_reset`) an RST_STREAM came."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_S) as sock:
        before = bytearray()
        if settings_first:
            sock.sendall(preface)
            assert _read(sock, before, time.monotonic() + READ_S, _has(_SETTINGS, 1)) == "open", before
            preface = b""
        sent = time.monotonic()
        sock.sendall(preface + bad)
        after = bytearray()
        end = _read(sock, after, sent + READ_S, _has(_RST_STREAM) if until_reset else _never)
        took = time.monotonic() - sent
    when = "open" if end == "open" else _when(took)
    return Ending(tuple(h2raw.frames(bytes(before))), tuple(h2raw.frames(bytes(after))), end, when)


# name, the bytes a client sends after its preface and SETTINGS, and what Envoy 1.40 writes after them: "goaway"
# (nghttp2's GOAWAY: a connection error nghttp2 answers itself), "nothing" (an invalid frame to nghttp2, which
# Envoy's codec turns into a failed read: nothing more is written, not even what was queued), "flood" (past one of
# Envoy's inbound flood limits: nothing) or "reset" (a stream error: RST_STREAM, the connection goes on).
WIRE_CASES: list[tuple[str, bytes, str]] = [
    ("neither :authority nor host", _block(_pseudo(authority=b"-")), "nothing"),
    ("upper-case header name", _block((*_GET, (b"X-Upper", b"1"))), "nothing"),
    ("connection-specific header", _block((*_GET, (b"connection", b"close"))), "nothing"),
    ("value with NUL", _block((*_GET, (b"x-a", b"a\x00b"))), "nothing"),
    (":authority with userinfo", _block(_pseudo(authority=b"u@a")), "nothing"),
    ("no :scheme", _block(_pseudo(scheme=b"-")), "nothing"),
    ("pseudo-header after a regular one", _block((*_GET, (b":foo", b"x"))), "nothing"),
    ("content-length longer than the body", _block((*_POST, (b"content-length", b"10")), end_stream=False)
     + _raw_frame(0, 1, b"12345", flags=1), "reset"),
    ("content-length shorter than the body", _block((*_POST, (b"content-length", b"1")), end_stream=False)
     + _raw_frame(0, 1, b"12345", flags=1), "reset"),
    ("HEADERS on an even stream", _block(_GET, 2), "nothing"),
    ("HEADERS on stream 0", _block(_GET, 0), "nothing"),
    ("header block that does not decode", _raw_frame(1, 1, b"\xff" * 5, flags=5), "goaway"),
    ("DATA on stream 0", _raw_frame(0, 0, b"x"), "goaway"),
    ("DATA on an idle stream", _raw_frame(0, 5, b"x"), "goaway"),
    ("frame past SETTINGS_MAX_FRAME_SIZE", _raw_frame(0, 1, b"x" * 16385), "goaway"),
    ("zero WINDOW_UPDATE on the connection", _raw_frame(8, 0, b"\x00\x00\x00\x00"), "nothing"),
    ("connection window past 2^31-1", _raw_frame(8, 0, b"\x7f\xff\xff\xff"), "nothing"),
    ("zero WINDOW_UPDATE on a stream", _block(_POST, end_stream=False) + _raw_frame(8, 1, b"\x00\x00\x00\x00"),
     "nothing"),
    ("bad SETTINGS_INITIAL_WINDOW_SIZE", _raw_frame(4, 0, b"\x00\x04\x80\x00\x00\x00"), "nothing"),
    ("SETTINGS of a bad length", _raw_frame(4, 0, b"\x00\x04\x00"), "goaway"),
    ("PING of a bad length", _raw_frame(6, 0, b"\x00" * 7), "goaway"),
    ("RST_STREAM on an idle stream", _raw_frame(3, 7, b"\x00\x00\x00\x08"), "nothing"),
    ("CONTINUATION without HEADERS", _raw_frame(9, 1, b"", flags=4), "goaway"),
    ("two empty DATA frames (flood)", _block(_POST, end_stream=False) + _raw_frame(0, 1, b"") * 2, "flood"),
    ("six connection WINDOW_UPDATEs (flood)", _raw_frame(8, 0, b"\x00\x00\x00\x01") * 6 + _block(_GET), "flood"),
]  # fmt: skip


def _written(e: Ending) -> str:
    """What a server wrote after the bad bytes, as WIRE_CASES name it (or the frame types)."""
    kinds = [f[0] for f in e.after]
    if _GOAWAY in kinds:
        return "goaway"
    if _RST_STREAM in kinds:
        return "reset"
    return f"frames {kinds}" if kinds else "nothing"


@pytest.mark.parametrize("settings_first", [False, True], ids=["one write", "after SETTINGS"])
@pytest.mark.parametrize(("name", "bad", "expect"), WIRE_CASES, ids=[c[0] for c in WIRE_CASES])
def test_connection_errors_end_as_envoy(
    bed: h2bed.Bed, name: str, bad: bytes, expect: str, settings_first: bool
) -> None:
    """A client breaking the protocol reads from the agent exactly the frames it reads from Envoy 1.40 (SETTINGS,
    their ACK and the connection window, then a GOAWAY or nothing), and the connection ends the same way at the
    same time: after ~1 s (Envoy's delayed close), or not at all for a stream error. Sent with the preface in one
    write (Envoy then writes nothing at all for an invalid frame or a flood), or after the server's SETTINGS."""
    stream = expect == "reset"
    via_envoy = ending(bed.envoy_port, bad, preface=CLIENT_PREFACE, settings_first=settings_first, until_reset=stream)
    via_agent = ending(bed.agent.port, bad, preface=CLIENT_PREFACE, settings_first=settings_first, until_reset=stream)
    # what the table says of Envoy is what Envoy did
    if stream:
        assert (_written(via_envoy), via_envoy.end) == ("reset", "open"), via_envoy
    else:
        wrote = "nothing" if expect == "flood" else expect
        assert (_written(via_envoy), via_envoy.end, via_envoy.when) == (wrote, "eof", "after ~1 s"), via_envoy
    assert via_agent == via_envoy


# name, what a client sends in place of the preface's SETTINGS frame: nghttp2 expects a SETTINGS frame (not an
# ACK) first and answers anything else with its SETTINGS and GOAWAY PROTOCOL_ERROR "SETTINGS expected", at once
# (before the frame's length is checked or the frame has come whole)
PREFACE_CASES: list[tuple[str, bytes]] = [
    ("HTTP/1.1 bytes after the preface", b"P / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
    ("PING first", _raw_frame(6, 0, b"\x00" * 8)),
    ("SETTINGS ACK first", _raw_frame(4, 0, b"", flags=1)),
    ("HEADERS first", _block(_GET)),
    ("the header of a large DATA frame first", _raw_frame(0, 1, b"x" * 20000)[:9]),
]


@pytest.mark.parametrize(("name", "first"), PREFACE_CASES, ids=[c[0] for c in PREFACE_CASES])
def test_a_preface_without_settings_ends_as_envoy(bed: h2bed.Bed, name: str, first: bytes) -> None:
    """The client preface then no SETTINGS frame: both write SETTINGS and GOAWAY 'SETTINGS expected' and close
    after ~1 s. (The HTTP/1.1 fuzzer's fuzz-664591-1203-preface-then-http1 is the first case.)"""
    via_envoy = ending(bed.envoy_port, first, preface=_MAGIC, settings_first=False)
    via_agent = ending(bed.agent.port, first, preface=_MAGIC, settings_first=False)
    assert [f[0] for f in via_envoy.after] == [_SETTINGS, _GOAWAY], via_envoy
    assert via_envoy.after[-1][3][8:] == b"SETTINGS expected", via_envoy
    assert (via_envoy.end, via_envoy.when) == ("eof", "after ~1 s"), via_envoy
    assert via_agent == via_envoy


# name, a connection's first bytes that begin "PRI * HTTP/2" (Envoy's CLIENT_MAGIC_PREFIX: all its codec choice
# reads) but are no client preface: the HTTP/2 codec refuses the magic, nothing is written, the close comes ~1 s later
BAD_MAGIC_CASES: list[tuple[str, bytes]] = [
    ("the preface's tail wrong", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
    ("HTTP/2.1", b"PRI * HTTP/2.1\r\n\r\nSM\r\n\r\n"),
    ("the magic prefix then HTTP/1.1", b"PRI * HTTP/2 / HTTP/1.1\r\nHost: a.test\r\n\r\n"),
]


@pytest.mark.parametrize(("name", "first"), BAD_MAGIC_CASES, ids=[c[0] for c in BAD_MAGIC_CASES])
def test_a_bad_magic_ends_as_envoy(bed: h2bed.Bed, name: str, first: bytes) -> None:
    """First bytes that start like the client preface and are not one: HTTP/2 for both (no HTTP/1.1 400 or 426),
    nothing written, closed after ~1 s."""
    via_envoy = ending(bed.envoy_port, first, preface=b"", settings_first=False)
    via_agent = ending(bed.agent.port, first, preface=b"", settings_first=False)
    assert (via_envoy.after, via_envoy.end, via_envoy.when) == ((), "eof", "after ~1 s"), via_envoy
    assert via_agent == via_envoy


def test_the_client_closing_first_ends_the_delay(bed: h2bed.Bed) -> None:
    """During the delayed close, a client that shuts its side down gets the connection closed at once by both."""
    got = {}
    for plane, port in (("envoy", bed.envoy_port), ("agent", bed.agent.port)):
        with socket.create_connection(("127.0.0.1", port), timeout=READ_S) as sock:
            sock.sendall(_MAGIC + _raw_frame(6, 0, b"\x00" * 8))
            read = bytearray()
            assert _read(sock, read, time.monotonic() + READ_S, _has(_GOAWAY)) == "open", plane
            shut = time.monotonic()
            sock.shutdown(socket.SHUT_WR)
            end = _read(sock, read, shut + READ_S)
            got[plane] = (end, _when(time.monotonic() - shut))
    assert got == {"envoy": ("eof", "at once"), "agent": ("eof", "at once")}


#: a client's GOAWAY (error code, then a request on stream 1): Envoy's HCM ignores it and serves the request
GOAWAY_CASES: list[tuple[str, int]] = [("NO_ERROR", 0), ("PROTOCOL_ERROR", 1), ("ENHANCE_YOUR_CALM", 11)]


@pytest.mark.parametrize(("name", "code"), GOAWAY_CASES, ids=[c[0] for c in GOAWAY_CASES])
def test_a_client_goaway_changes_nothing(bed: h2bed.Bed, name: str, code: int) -> None:
    """A client sends GOAWAY then a request: both answer it (its HEADERS and a body that ends) and keep the
    connection open, no GOAWAY of their own."""
    goaway = _raw_frame(7, 0, b"\x00\x00\x00\x00" + code.to_bytes(4, "big"))
    got = {}
    for plane, port in (("envoy", bed.envoy_port), ("agent", bed.agent.port)):
        with socket.create_connection(("127.0.0.1", port), timeout=READ_S) as sock:
            sock.sendall(CLIENT_PREFACE + goaway + _block(_GET))
            read = bytearray()
            end = _read(sock, read, time.monotonic() + 1.5 * limits.DOWNSTREAM_DELAYED_CLOSE_S)
        frames = h2raw.frames(bytes(read))
        answered = any(f[0] == 1 and f[2] == 1 for f in frames)
        ended = any(f[0] in (0, 1) and f[2] == 1 and f[1] & 1 for f in frames)
        got[plane] = (answered, ended, any(f[0] == _GOAWAY for f in frames), end)
    assert got["envoy"] == (True, True, False, "open"), got
    assert got["agent"] == got["envoy"]
