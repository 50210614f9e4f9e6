"""The agent's HTTP/2 codec, both ends (`Codec`: framing, HPACK, stream states, flow control), and the events it
gives (`EV_*`); the connection over a transport that drives it is `meshplug.agent.h2peer.H2Peer`.

Two codecs answer the same interface (`Codec`) with the same events (`EV_*` tuples, one list per read):

* `meshplug.agent._h2codec.Session` (meshplug/agent/_h2codec.c, built by `make native`): libnghttp2, the
  library Envoy's HTTP/2 codec is built on, with Envoy's options; frames, HPACK, header checks, DATA framing
  and both windows never reach Python.
* `PyCodec` (no native build, MESHPLUG_NATIVE=0): the `h2` library (sans-IO) with HPACK from
  `meshplug.agent.hpackcache` (the library's, with a cache), the connection `meshplug.agent.h2conn`'s (the
  library's, without its trace formatting) and the inbound header checks `received_headers` here (nghttp2's
  as Envoy runs them, not the library's: the same blocks refused, the same fields handed over); a body that
  does not fit the peer's window waits here until a WINDOW_UPDATE (or a SETTINGS change) opens it, then its
  end or trailers follow it.

Imports nothing else of the data path.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from hpack import NeverIndexedHeaderTuple

from meshplug import limits
from meshplug.agent.h2conn import Broken, Connection, Flood, FrameCount
from meshplug.agent.hpackcache import CachedDecoder, CachedEncoder

Header = tuple[bytes, bytes]

# the h2/hpack libraries log every frame and header at DEBUG: far too much (and too slow) for a proxy's debug log
for _name in ("h2", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: h2's exceptions that mean "this stream (or connection) cannot send that"
SEND_ERRORS: Final = (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError, ValueError, TypeError)


# --- inbound header blocks: nghttp2's checks as Envoy 1.40 runs them (for PyCodec; the native codec is nghttp2) ---
#: the kinds of header block: a request's head (the agent as server), a response's head (informational or final:
#: the agent as client), trailers either way
REQUEST: Final = 0
RESPONSE: Final = 1
TRAILERS: Final = 2
_LOWER: Final = b"abcdefghijklmnopqrstuvwxyz"
_LETTERS: Final = _LOWER + _LOWER.upper()
_TCHAR: Final = b"!#$%&'*+-.^_`|~0123456789"
#: a field name after its optional leading ':' (nghttp2_check_header_name: RFC 9110 tchar, lower case only)
_NAME_BYTES: Final = _TCHAR + _LOWER
#: a field value (nghttp2_check_header_value): HTAB, SP to '~', obs-text; leading and trailing whitespace is
#: accepted, as Envoy switches nghttp2's RFC 9113 whitespace check off (_h2codec.c does too)
_VALUE_BYTES: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
#: :method, a token of either case
_METHOD_BYTES: Final = _TCHAR + _LETTERS
#: :path: visible ASCII and obs-text
_PATH_BYTES: Final = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)])
#: :authority and host as a server receives them: RFC 3986's host and port bytes without '@' (no userinfo, RFC 9113
#: 8.3.1: the nghttp2 Envoy 1.40 builds refuses it; Debian's 1.52 does not, _h2codec.c adds the check)
_AUTHORITY_BYTES: Final = b"!$%&'()*+,-.0123456789:;=[]_~" + _LETTERS
#: :scheme after its first letter
_SCHEME_BYTES: Final = b"+-.0123456789" + _LETTERS
_AUTHORITY_FIELDS: Final = frozenset({b":authority", b"host"})
#: connection-specific fields (RFC 9113 8.2.2): refused in every block
_CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
#: the pseudo-headers a request may carry (and :protocol where SETTINGS_ENABLE_CONNECT_PROTOCOL is on)
_REQUEST_PSEUDO: Final = frozenset({b":authority", b":method", b":path", b":scheme"})
_NEEDED: Final = frozenset({b":method", b":path", b":scheme"})
_MAX_CONTENT_LENGTH: Final = 2**63 - 1


def _bad(msg: str) -> h2.exceptions.ProtocolError:
    return h2.exceptions.ProtocolError(msg)


def _only(value: bytes, allowed: bytes) -> bool:
    """`value` holds no byte outside `allowed`."""
    return not value.translate(None, allowed)


def _check_field(name: bytes, value: bytes, server: bool) -> None:
    """One field's bytes as nghttp2_http_on_header checks them: the name, then the value by its name's rule."""
    if not name or name == b":" or not _only(name[1:] if name[0] == 0x3A else name, _NAME_BYTES):
        raise _bad(f"Invalid header field name: {name!r}")
    if name == b":method":
        ok = bool(value) and _only(value, _METHOD_BYTES)
    elif name == b":path":
        ok = _only(value, _PATH_BYTES)
    elif name == b":scheme":
        ok = bool(value) and value[0] in _LETTERS and _only(value[1:], _SCHEME_BYTES)
    elif server and name in _AUTHORITY_FIELDS:
        ok = _only(value, _AUTHORITY_BYTES)
    else:  # a :protocol of blanks only passes (nghttp2's lws rule; an empty one is refused as empty)
        ok = _only(value, _VALUE_BYTES) or (name == b":protocol" and _only(value, b" \t"))
    if not ok:
        raise _bad(f"Invalid header field value: {name!r}: {value!r}")


def _content_length(value: bytes) -> int:
    """nghttp2's parse_uint: digits only, not empty, within int64."""
    if not value or not value.isdigit() or int(value) > _MAX_CONTENT_LENGTH:
        raise _bad(f"Invalid content-length: {value!r}")
    return int(value)


def _status(value: bytes) -> int:
    """:status: three digits (as nghttp2 1.52 parses it), not 101 (no upgrades in HTTP/2)."""
    if len(value) != 3 or not value.isdigit() or value == b"101":
        raise _bad(f"Invalid :status: {value!r}")
    return int(value)


def received_headers(
    headers: Sequence[Header], kind: int, *, server: bool = True, connect_protocol: bool = False
) -> list[Header]:
    """A received header block checked as nghttp2 checks it in Envoy 1.40 (RFC 9113 8.2-8.3: field bytes by
    name, te, connection-specific fields, content-length, pseudo-headers known, once, not empty, first, the
    ones each kind needs; :path's form for http(s)), cookie fields joined into one (last, never indexed) as
    Envoy does. `server`: the agent receives it as a server (requests and their trailers). Raises h2's
    ProtocolError for a block nghttp2 refuses: Envoy then ends the connection (GOAWAY PROTOCOL_ERROR)."""
    out: list[Header] = []
    cookies: list[bytes] = []
    once: dict[bytes, bytes] = {}  # the pseudo-headers, host (a server's) and content-length: at most once
    regular = False
    status = -1
    for h in headers:
        name, value = h[0], h[1]
        _check_field(name, value, server)
        if name[0] == 0x3A:
            if kind == TRAILERS or regular:
                raise _bad(f"Pseudo-header field out of place: {name!r}")
            _pseudo_field(name, value, kind, once, connect_protocol)
            if name == b":status":
                status = _status(value)
        elif name == b"cookie":
            regular = True
            cookies.append(value)
            continue
        else:
            regular = True
            if not _regular_field(name, value, server, status, once):
                continue
        out.append(h)
    if cookies:
        out.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))
    if kind == REQUEST:
        _request_pseudo(once)
    elif kind == RESPONSE and status < 0:
        raise _bad("Response without :status")
    return out


def _pseudo_field(name: bytes, value: bytes, kind: int, once: dict[bytes, bytes], connect_protocol: bool) -> None:
    """A pseudo-header: one this kind of block may carry, not repeated, not empty."""
    if kind == REQUEST:
        allowed = name in _REQUEST_PSEUDO or (name == b":protocol" and connect_protocol)
    else:
        allowed = name == b":status"
    if not allowed or name in once or not value:
        raise _bad(f"Pseudo-header field not allowed, repeated or empty: {name!r}")
    once[name] = value


def _regular_field(name: bytes, value: bytes, server: bool, status: int, once: dict[bytes, bytes]) -> bool:
    """A regular field's rules (nghttp2's http_request_on_header / http_response_on_header); False for one
    nghttp2 drops (a 204 response's content-length: 0)."""
    if name in _CONNECTION_FIELDS or (name == b"te" and value.lower() != b"trailers"):
        raise _bad(f"Connection-specific header field: {name!r}: {value!r}")
    if name == b"host" and server:
        if name in once or not value:
            raise _bad("Host repeated or empty")
        once[name] = value
    elif name == b"content-length":
        if name in once:
            raise _bad("content-length repeated")
        once[name] = value
        if not server and status == 204:
            if value != b"0":
                raise _bad("content-length in a 204 response")
            return False
        if not server and status // 100 == 1:
            raise _bad("content-length in an informational response")
        _content_length(value)
    return True


def _is_connect(headers: Sequence[Header]) -> bool:
    """A CONNECT request head without :protocol (a tunnel, not RFC 8441's extended CONNECT)."""
    method = protocol = False
    for name, value in headers:
        if name[:1] != b":":
            break
        method = method or (name == b":method" and value == b"CONNECT")
        protocol = protocol or name == b":protocol"
    return method and not protocol


def _request_pseudo(pseudo: dict[bytes, bytes]) -> None:
    """The pseudo-headers a request needs (nghttp2_http_on_request_headers: RFC 9113 8.3.1, RFC 8441 4)."""
    method = pseudo.get(b":method", b"")
    protocol = b":protocol" in pseudo
    if method == b"CONNECT" and not protocol:
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            raise _bad("CONNECT needs :authority and no :scheme or :path")
        return
    if not pseudo.keys() >= _NEEDED or (b":authority" not in pseudo and b"host" not in pseudo):
        raise _bad("Request without :method, :scheme, :path, or :authority and host")
    if protocol and (method != b"CONNECT" or b":authority" not in pseudo):
        raise _bad(":protocol needs CONNECT and :authority")
    path = pseudo[b":path"]
    if pseudo[b":scheme"].lower() in (b"http", b"https") and not (
        path[0] == 0x2F or (method == b"OPTIONS" and path == b"*")
    ):
        raise _bad(f"Invalid :path for an http(s) request: {path!r}")


#: the events that carry a received header block, and its kind
_HEADER_EVENTS: Final[dict[type, int]] = {
    h2.events.RequestReceived: REQUEST,
    h2.events.ResponseReceived: RESPONSE,
    h2.events.InformationalResponseReceived: RESPONSE,
    h2.events.TrailersReceived: TRAILERS,
}


def check_received(events: list[h2.events.Event], *, server: bool, connect_protocol: bool = False) -> int:
    """`received_headers` on every header event of one read (their headers replaced by the checked block), up to
    the first block refused: its index in `events` (len(events) when none was)."""
    for i, ev in enumerate(events):
        kind = _HEADER_EVENTS.get(type(ev))
        if kind is not None:
            block = cast(Any, ev)
            try:
                block.headers = received_headers(block.headers, kind, server=server, connect_protocol=connect_protocol)
            except h2.exceptions.ProtocolError:
                return i
    return len(events)


# --- the codec interface: what `_h2codec.Session` and `PyCodec` both answer ---
#: events, one tuple each: (kind, stream id, obj, flag, num) -- see the kinds
Event = tuple[int, int, Any, bool, int]
#: a request head (obj: [(name, value)], flag: END_STREAM)
EV_REQUEST: Final = 1
#: a final response head (1xx are not handed over)
EV_RESPONSE: Final = 2
#: trailers (flag: END_STREAM)
EV_TRAILERS: Final = 3
#: a DATA frame (obj: its payload, flag: END_STREAM, num: flow-controlled bytes to acknowledge)
EV_DATA: Final = 4
#: the stream was reset (flag: by the peer's RST_STREAM, else by the codec for a stream error; num: the code)
EV_RESET: Final = 5
#: the stream ended with no frame of its own (h2 only: END_STREAM already came with its frame's event)
EV_END: Final = 6
#: GOAWAY received (stream id: the last stream id, num: error code)
EV_GOAWAY: Final = 7


class Codec(Protocol):
    """One HTTP/2 connection's codec, server or client side (see meshplug/agent/_h2codec.c)."""

    def receive(self, data: bytes) -> list[Event]: ...
    def data_to_send(self) -> bytes: ...
    def send_headers(self, sid: int, headers: Sequence[Header], end_stream: bool) -> bool: ...
    def send_data(self, sid: int, data: bytes, end_stream: bool) -> bool: ...
    def send_trailers(self, sid: int, trailers: Sequence[Header]) -> bool: ...
    def reset(self, sid: int, code: int) -> None: ...
    def forget(self, sid: int) -> None: ...
    def reset_after_end(self, sid: int) -> None: ...
    def ack(self, sid: int, size: int) -> None: ...
    def goaway(self, code: int, last_stream_id: int) -> None: ...
    def buffered(self) -> int: ...
    def frames_out(self) -> tuple[int, int]: ...
    def remote_max_streams(self) -> int: ...
    def next_stream_id(self) -> int: ...


def _native_codec() -> Any:
    """meshplug.agent._h2codec when the native build is in use (meshplug.native.guard refuses a stale one); a
    build that cannot load (libnghttp2 missing at run time) is an error under MESHPLUG_REQUIRE_NATIVE=1."""
    try:
        return importlib.import_module("meshplug.agent._h2codec")
    except ImportError:
        if os.environ.get("MESHPLUG_REQUIRE_NATIVE") == "1" and os.environ.get("MESHPLUG_NATIVE") != "0":
            raise
        return None


_NATIVE: Final[Any] = _native_codec()
#: which codec the agent's HTTP/2 runs on ("nghttp2 <version>" or "h2")
CODEC_NAME: Final = f"nghttp2 {_NATIVE.NGHTTP2_VERSION}" if _NATIVE is not None else "h2"
#: what `Codec.receive` raises when the peer broke the protocol (the codec's GOAWAY is queued)
PROTOCOL_ERRORS: Final[tuple[type[Exception], ...]] = (h2.exceptions.ProtocolError,) + (
    (cast(type[Exception], _NATIVE.CodecError),) if _NATIVE is not None else ()
)


#: what `Codec.receive` raises when the peer went past one of Envoy's flood limits (one of PROTOCOL_ERRORS too):
#: nothing is queued; the connection is closed without a GOAWAY, as Envoy closes it
FLOOD_ERRORS: Final[tuple[type[Exception], ...]] = (Flood,) + (
    (cast(type[Exception], _NATIVE.FloodError),) if _NATIVE is not None else ()
)
#: the flood limits the native codec applies (h2conn.FloodGuard reads them from limits itself)
_FLOOD_LIMITS: Final = (
    limits.H2_MAX_CONSECUTIVE_EMPTY_FRAMES,
    limits.H2_MAX_PRIORITY_FRAMES_PER_STREAM,
    limits.H2_MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT,
)


def flood_code(exc: Exception) -> int:
    """Which limit a flood passed (limits.H2_FLOOD_*): the `code` of one of FLOOD_ERRORS."""
    return int(getattr(exc, "code", 0))


def events_before(exc: Exception) -> list[Event]:
    """The events of the frames a read held before the one that broke the connection (`exc`, one of
    PROTOCOL_ERRORS raised by `Codec.receive`)."""
    return cast(list[Event], getattr(exc, "events", None) or [])


def new_codec(
    *,
    server: bool,
    settings: Sequence[tuple[int, int]],
    connection_window: int,
    max_header_bytes: int,
    stream_window: int,
    on_failed: Callable[[int], None],
    native: bool = True,
    max_header_count: int = 0,
) -> Codec:
    """A connection's codec, its SETTINGS and connection window queued: nghttp2 when built, else h2.
    `on_failed(sid)`: a queued body or trailers could not be sent later (h2 only; nghttp2 answers at once).
    `max_header_bytes`: a server's HPACK-bomb bound on a request's header block (a connection error); a client's
    bound on a response head (names and values; `max_header_count` fields, 0: none): past either the stream is
    reset (RST_STREAM INTERNAL_ERROR) and its EV_RESET flagged as the peer's, as Envoy reports it (remote_reset)."""
    if native and _NATIVE is not None:
        return cast(
            Codec,
            _NATIVE.Session(
                server, list(settings), connection_window, max_header_bytes, stream_window, _FLOOD_LIMITS,
                max_header_count,
            ),
        )  # fmt: skip
    return PyCodec(
        server,
        settings,
        connection_window=connection_window,
        max_header_bytes=max_header_bytes,
        stream_window=stream_window,
        on_failed=on_failed,
        max_header_count=max_header_count,
    )


#: h2's events -> ours
_KINDS: Final[dict[type, int]] = {
    h2.events.RequestReceived: EV_REQUEST,
    h2.events.ResponseReceived: EV_RESPONSE,
    h2.events.TrailersReceived: EV_TRAILERS,
    h2.events.DataReceived: EV_DATA,
    h2.events.StreamReset: EV_RESET,
    h2.events.StreamEnded: EV_END,
    h2.events.ConnectionTerminated: EV_GOAWAY,
}
#: the client connection preface
_CLIENT_MAGIC: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: a SETTINGS frame with ACK
_SETTINGS_ACK: Final = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
#: what h2 enforces as SETTINGS_MAX_CONCURRENT_STREAMS on a server (the announced limit is applied per stream)
_NO_STREAM_LIMIT: Final = 2**31 - 1


class _Out:
    """A stream's outbound half in `PyCodec`: body bytes waiting for window, then its end or its trailers."""

    __slots__ = ("end_pending", "id", "pending", "trailers_pending")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.pending = bytearray()
        self.end_pending = False
        self.trailers_pending: Sequence[Header] | None = None


class PyCodec:
    """`Codec` over the `h2` library (the fallback without a native build)."""

    def __init__(
        self,
        server: bool,
        settings: Sequence[tuple[int, int]],
        *,
        connection_window: int,
        max_header_bytes: int,
        stream_window: int,
        on_failed: Callable[[int], None],
        config: h2.config.H2Configuration | None = None,
        max_header_count: int = 0,
    ) -> None:
        if config is None:
            config = h2.config.H2Configuration(
                client_side=not server,
                header_encoding=None,
                validate_inbound_headers=False,  # received_headers: nghttp2's checks instead (receive)
                normalize_inbound_headers=False,
                validate_outbound_headers=False,  # checked where it entered the proxy
                normalize_outbound_headers=False,
            )
        conn = Connection(config=config)
        # HPACK that reuses what it just encoded or decoded (meshplug.agent.hpackcache), set before any frame
        conn.encoder = CachedEncoder()
        conn.decoder = CachedDecoder(conn.decoder.max_header_list_size)
        self.h2 = conn
        self.server = server
        #: a request may carry :protocol (RFC 8441) only where the server announced extended CONNECT
        self.connect_protocol = server and dict(settings).get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1
        self.stream_window = stream_window
        self.on_failed = on_failed
        self._out: dict[int, _Out] = {}
        self._blocked: set[_Out] = set()  # streams whose body waits for window
        h = conn
        h.local_settings.update(dict(settings))
        #: a client's bounds on a response head (Envoy's max_response_headers_kb / _count: `_over_limits`)
        self.max_head = 0 if server else max_header_bytes
        self.max_count = 0 if server else max_header_count
        if server:
            h.local_settings.acknowledge()  # enforced from now on: what we announce is what we apply
            h.decoder.max_header_list_size = max_header_bytes
            h.max_inbound_frame_size = h.local_settings.max_frame_size
        else:  # the library's own bound, an HPACK bomb's (ENHANCE_YOUR_CALM), far past the head's
            h.decoder.max_header_list_size = conn.header_list_bound = limits.H2_HPACK_BOMB_FACTOR * max_header_bytes
        h.initiate_connection()
        h.data_to_send()  # h2's SETTINGS: its defaults (push, frame and header list sizes, ...) beside ours
        #: our SETTINGS until written: kept apart so that a connection error in the first read drops what that read
        #: queued (the ACK of the client's SETTINGS) but not them, as nghttp2 does; they carry `settings` alone, as
        #: nghttp2 writes them (a client's after the connection preface)
        self._preamble = bytes(hyperframe.frame.SettingsFrame(0, settings=dict(settings)).serialize())
        if not server:
            self._preamble = _CLIENT_MAGIC + self._preamble
        #: a connection error left nothing to write (`receive`)
        self.silent = False
        #: a server's open streams whose request head had a content-length, and its value (`_trailer_lengths`)
        self._head_lengths: dict[int, int] = {}
        #: frames handed over (`data_to_send`), and serialized by `frames_out` but not handed over yet
        self._count = FrameCount()
        self._unsent = b""
        #: the connection window's WINDOW_UPDATE, sent after the first read (a server's: as nghttp2 orders it, its
        #: SETTINGS, the ACK of the client's, then the window)
        self._window = max(0, connection_window - 65535)
        if server:
            # the local side re-announced above is in force, except the stream limit: h2 ends the whole
            # connection for a stream over it, Envoy refuses only that stream (RST_STREAM REFUSED_STREAM, which
            # h2down does), so h2 itself is told no limit
            h.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = _NO_STREAM_LIMIT
            h.local_settings.acknowledge()
        elif self._window:
            h.increment_flow_control_window(self._window)
            self._window = 0

    def receive(self, data: bytes) -> list[Event]:
        """Our events for h2's, their header blocks checked (`received_headers`); `Broken` (an h2 ProtocolError,
        the GOAWAY queued) when the peer broke the protocol, its `events` ours for the frames before."""
        h = self.h2
        window = b""
        if self._window:  # a server's first read
            h.increment_flow_control_window(self._window)
            self._window = 0
            window = h.data_to_send()
        try:
            events = h.receive_data(data)
        except Flood as exc:
            exc.events = self._ours(exc.events)
            raise
        except Broken as exc:  # nghttp2's answer, not h2's (a client's too: its last stream id is 0)
            h.clear_outbound_data_buffer()
            self.silent = exc.goaway is None
            if exc.goaway is not None:
                f = hyperframe.frame.GoAwayFrame(0)
                f.last_stream_id, (f.error_code, f.additional_data) = h.highest_inbound_stream_id, exc.goaway
                self._preamble += f.serialize()
            raise Broken(str(exc), exc.error_code, self._ours(exc.events), exc.goaway) from exc
        good = check_received(events, server=self.server, connect_protocol=self.connect_protocol)
        if self.server:
            good = self._trailer_lengths(events, good)
        if good < len(events):
            code = h2.errors.ErrorCodes.PROTOCOL_ERROR
            self.silent = True  # an invalid frame to nghttp2: nothing more is written (see h2conn.nghttp2_goaway)
            raise Broken("Invalid header block", code, self._ours(events[:good]))
        if self.max_head:
            events = self._over_limits(events)
        if window:  # nghttp2's order: SETTINGS frames (ours, the ACK of the client's) before the window's
            out = h.data_to_send()
            ack = out[:9] == _SETTINGS_ACK
            self._preamble += (_SETTINGS_ACK + window + out[9:]) if ack else (window + out)
        return self._ours(events)

    def _trailer_lengths(self, events: list[h2.events.Event], good: int) -> int:
        """`good`, or the index of the first request head or trailers whose content-length nghttp2 refuses at the
        stream's end (its http_request_on_header takes the field in trailers too): a head with END_STREAM and a
        length other than 0, trailers with a second content-length of the stream or one that is not the body's
        length, trailers ending a body shorter than its head's length (h2 checks a length at DATA's END_STREAM
        only) -- Envoy's codec then fails the read (no GOAWAY). A CONNECT (without :protocol) has no length to
        nghttp2: it drops the field's value after the head."""
        for i in range(good):
            ev = events[i]
            kind = type(ev)
            if kind is not h2.events.TrailersReceived and kind is not h2.events.RequestReceived:
                continue
            e = cast(Any, ev)
            declared = [v for n, v in e.headers if n == b"content-length"]
            sid = int(e.stream_id)
            if kind is h2.events.RequestReceived:
                if declared and _is_connect(e.headers):
                    continue
                if declared and e.stream_ended is not None and int(declared[0]) != 0:
                    return i  # a head that ends the stream declares a body it does not have
                if declared:  # (h2 takes the trailers' content-length as the stream's: the head's is kept here)
                    self._head_lengths[sid] = int(declared[0])
                continue
            head = self._head_lengths.pop(sid, None)
            if not declared and head is None:
                continue
            stream = self.h2.streams.get(sid)
            received = 0 if stream is None else stream._actual_content_length
            if declared and (head is not None or int(declared[0]) != received):
                return i
            if head is not None and head != received and e.stream_ended is not None:
                return i
        return good

    def _over_limits(self, events: list[h2.events.Event]) -> list[h2.events.Event]:
        """A client's response heads past Envoy's bounds (names and values but cookies, their count): the stream
        reset (RST_STREAM INTERNAL_ERROR) and reported as reset by the peer, as Envoy's codec does; what else the
        read gave for it dropped (its DATA acknowledged)."""
        out: list[h2.events.Event] = []
        dropped: set[int] = set()
        for ev in events:
            e = cast(Any, ev)
            sid = int(getattr(e, "stream_id", 0) or 0)
            if sid in dropped:
                if isinstance(ev, h2.events.DataReceived):
                    self.ack(sid, e.flow_controlled_length or 0)
                continue
            if type(ev) in _HEADER_EVENTS:
                fields = [h for h in e.headers if h[0] != b"cookie"]
                size = sum(len(h[0]) + len(h[1]) for h in fields)
                if size > self.max_head or (self.max_count and len(fields) > self.max_count):
                    dropped.add(sid)
                    code = h2.errors.ErrorCodes.INTERNAL_ERROR
                    self.forget(sid)
                    self.h2.reset_anyway(sid, code)
                    out.append(h2.events.StreamReset(stream_id=sid, error_code=code, remote_reset=True))
                    continue
            out.append(ev)
        return out

    def _ours(self, events: list[h2.events.Event]) -> list[Event]:
        """h2's events as ours (`EV_*` tuples)."""
        out: list[Event] = []
        for event in events:
            t = type(event)
            kind = _KINDS.get(t, 0)
            ev = cast(Any, event)
            if kind == EV_DATA:
                out.append((kind, ev.stream_id, ev.data, ev.stream_ended is not None, ev.flow_controlled_length))
            elif kind in (EV_REQUEST, EV_RESPONSE, EV_TRAILERS):
                out.append((kind, ev.stream_id, ev.headers, ev.stream_ended is not None, 0))
            elif kind == EV_END:
                out.append((kind, ev.stream_id, None, True, 0))
            elif kind == EV_RESET:
                if ev.remote_reset:
                    self.forget(ev.stream_id)
                out.append((kind, ev.stream_id, None, bool(ev.remote_reset), int(ev.error_code)))
            elif kind == EV_GOAWAY:
                out.append((kind, ev.last_stream_id or 0, None, False, int(ev.error_code or 0)))
            elif t is h2.events.WindowUpdated or t is h2.events.RemoteSettingsChanged:
                self._unblock()  # a larger window may let waiting bodies go
        return out

    def data_to_send(self) -> bytes:
        data = self._serialize()
        if self._unsent:
            data, self._unsent = self._unsent + data, b""
        return data

    def _serialize(self) -> bytes:
        """What the connection queued since the last call, its frames counted."""
        if self.silent:
            return b""
        data = self.h2.data_to_send()
        if self._preamble:
            data, self._preamble = self._preamble + data, b""
        if data:
            self._count.add(data)
        return data

    def frames_out(self) -> tuple[int, int]:
        """Frames serialized so far, all and control (what is queued is serialized first, kept for
        `data_to_send`)."""
        data = self._serialize()
        if data:
            self._unsent += data
        return self._count.frames, self._count.control

    def send_headers(self, sid: int, headers: Sequence[Header], end_stream: bool) -> bool:
        h = self.h2
        try:
            h.send_headers(sid, headers, end_stream=end_stream)
        except SEND_ERRORS:
            return False
        if not self.server and self.stream_window > 65535:  # the response's window (h2up.client_settings)
            with contextlib.suppress(*SEND_ERRORS):
                h.increment_flow_control_window(self.stream_window - 65535, sid)
        return True

    def _stream(self, sid: int) -> _Out:
        s = self._out.get(sid)
        if s is None:
            s = self._out[sid] = _Out(sid)
        return s

    def send_data(self, sid: int, data: bytes, end_stream: bool) -> bool:
        s = self._stream(sid)
        s.pending += data
        s.end_pending = s.end_pending or end_stream
        return s in self._blocked or self._push(s)

    def send_trailers(self, sid: int, trailers: Sequence[Header]) -> bool:
        s = self._stream(sid)
        s.trailers_pending = list(trailers)
        return s in self._blocked or self._push(s)

    def _push(self, s: _Out) -> bool:
        """Send what `s` has pending, then its end or trailers, as far as the windows allow; False when h2
        refused it (the stream is forgotten)."""
        h = self.h2
        pending = s.pending
        try:
            while True:
                if not pending:
                    if s.trailers_pending is not None:
                        trailers, s.trailers_pending = s.trailers_pending, None
                        s.end_pending = False
                        h.send_headers(s.id, list(trailers), end_stream=True)
                    elif s.end_pending:
                        s.end_pending = False
                        h.send_data(s.id, b"", end_stream=True)
                    break
                window = min(h.local_flow_control_window(s.id), h.max_outbound_frame_size)
                if window <= 0:
                    self._blocked.add(s)
                    return True
                chunk = bytes(pending[:window])
                del pending[:window]
                last = not pending and s.trailers_pending is None and s.end_pending
                if last:
                    s.end_pending = False
                h.send_data(s.id, chunk, end_stream=last)
                if last:
                    break
            self._blocked.discard(s)
            if not s.pending and s.trailers_pending is None and not s.end_pending:
                self._out.pop(s.id, None)
            return True
        except SEND_ERRORS:
            self.forget(s.id)
            return False

    def _unblock(self) -> None:
        """Windows opened: send what waited."""
        for s in list(self._blocked):
            self._blocked.discard(s)
            if not self._push(s):
                self.on_failed(s.id)

    def forget(self, sid: int) -> None:
        self._head_lengths.pop(sid, None)
        s = self._out.pop(sid, None)
        if s is not None:
            s.pending.clear()
            self._blocked.discard(s)

    def reset(self, sid: int, code: int) -> None:
        self.forget(sid)
        with contextlib.suppress(*SEND_ERRORS):
            self.h2.reset_stream(sid, code)

    def reset_after_end(self, sid: int) -> None:
        s = self._out.get(sid)
        if s is not None and (s.pending or s in self._blocked):
            return  # the reset would cut the response: the request's remainder is read and dropped instead
        self.reset(sid, h2.errors.ErrorCodes.NO_ERROR)

    def ack(self, sid: int, size: int) -> None:
        with contextlib.suppress(*SEND_ERRORS):
            self.h2.acknowledge_received_data(size, sid)

    def goaway(self, code: int, last_stream_id: int) -> None:
        with contextlib.suppress(*SEND_ERRORS):
            self.h2.close_connection(error_code=code, last_stream_id=None if last_stream_id < 0 else last_stream_id)

    def buffered(self) -> int:
        return sum(len(s.pending) for s in self._blocked)

    def remote_max_streams(self) -> int:
        return int(self.h2.remote_settings.max_concurrent_streams)

    def next_stream_id(self) -> int:
        return int(self.h2.get_next_available_stream_id())
