"""What both ends of the agent's HTTP/2 share: a connection's outbound half (`H2Peer`: flow-controlled DATA,
trailers, one write per loop iteration) and a stream's outbound state (`OutStream`).

Base of `meshplug.agent.h2down.H2Downstream` (clients) and `meshplug.agent.h2up.H2Upstream` (clusters). The
`h2` library (sans-IO) does framing, HPACK and the flow-control arithmetic; a body that does not fit the
peer's window waits here until a WINDOW_UPDATE (or a SETTINGS change) opens it, then its end or trailers
follow it. HPACK is `meshplug.agent.hpackcache`'s (the library's, with a cache), the connection
`meshplug.agent.h2conn`'s (the library's, without its trace formatting), and the inbound header checks are
`received_headers` here (the library's, compiled). Imports nothing else of the data path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, Final, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hpack import NeverIndexedHeaderTuple

from meshplug.agent.h2conn import Connection
from meshplug.agent.hpackcache import CachedDecoder, CachedEncoder

Header = tuple[bytes, bytes]

# the h2/hpack libraries log every frame and header at DEBUG: far too much (and too slow) for a proxy's debug log
for _name in ("h2", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: h2's exceptions that mean "this stream (or connection) cannot send that"
SEND_ERRORS: Final = (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError, ValueError, TypeError)


# --- inbound header blocks: h2 4.4.1's normalize_inbound_headers + validate_headers, in one compiled pass ---
#: the kinds of header block (h2's HeaderValidationFlags as they arise: a request's head, a response's head
#: (informational or final), trailers either way)
REQUEST: Final = 0
RESPONSE: Final = 1
TRAILERS: Final = 2
#: h2's connection-specific fields (RFC 9113 8.2.2) and pseudo-header sets
_CONNECTION_FIELDS: Final = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"}
)
_PSEUDO: Final = frozenset({b":method", b":scheme", b":authority", b":path", b":status", b":protocol"})
_REQUEST_ONLY: Final = frozenset({b":scheme", b":path", b":authority", b":method", b":protocol"})
#: bytes a field name may hold (RFC 9113 8.2.1: not 0x00-0x20, 0x41-0x5a, 0x7f-0xff; ':' only first)
_NAME_BYTES: Final = bytes(b for b in range(0x21, 0x7F) if not 0x41 <= b <= 0x5A)


def _bad(msg: str) -> h2.exceptions.ProtocolError:
    return h2.exceptions.ProtocolError(msg)


def received_headers(headers: Sequence[Header], kind: int) -> list[Header]:  # noqa: PLR0912 - one pass
    """A received header block as h2 4.4.1 hands it over with inbound normalization and validation on: cookie
    fields joined into one (last, never indexed), then RFC 9113 8.2-8.3 checked (field bytes, te, connection
    fields, pseudo-headers: known, unique, first, the ones each kind needs; :authority/host; :path not
    empty). Raises h2's ProtocolError where h2 does (the connection ends: GOAWAY PROTOCOL_ERROR)."""
    out: list[Header] = []
    cookies: list[bytes] = []
    for h in headers:
        if h[0] == b"cookie":
            cookies.append(h[1])
        else:
            out.append(h)
    if cookies:
        out.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(cookies)))
    request = kind == REQUEST
    pseudo: set[bytes] = set()
    regular = False
    method: bytes | None = None
    authority: bytes | None = None
    host: bytes | None = None
    for h in out:
        name, value = h[0], h[1]
        _check_field(name, value)
        if name[0] == 0x3A:
            if name in pseudo:
                raise _bad(f"Received duplicate pseudo-header field {name!r}")
            pseudo.add(name)
            if regular:
                raise _bad(f"Received pseudo-header field out of sequence: {name!r}")
            if name not in _PSEUDO:
                raise _bad(f"Received custom pseudo-header field {name!r}")
            if name == b":method":
                method = value
        else:
            regular = True
        if request:
            if name == b":authority":
                authority = value
            elif name == b"host":
                if host is not None:
                    raise _bad("Request header block has multiple Host headers.")
                host = value
            if name == b":path" and not value:
                raise _bad("An empty :path header is forbidden")
    _block_pseudo(kind, pseudo, method)
    if request:
        if authority is None and host is None:
            raise _bad("Request header block does not have an :authority or Host header.")
        if authority is not None and host is not None and authority != host:
            raise _bad(f"Request header block has mismatched :authority and Host headers: {authority!r} / {host!r}")
    return out


def _check_field(name: bytes, value: bytes) -> None:
    """One field's bytes (RFC 9113 8.2.1), te and connection-specific fields (8.2.2), in h2's order."""
    if name.translate(None, _NAME_BYTES):
        raise _bad(f"Illegal character in header name: {name!r}")
    if name.find(b":", 1) != -1:
        raise _bad(f"Illegal character ':' in header name: {name!r}")
    if value and (
        b"\0" in value or b"\n" in value or b"\r" in value or value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)
    ):
        raise _bad(f"Illegal header value: {value!r}")
    if not name:
        raise _bad("Received header name with zero length.")
    if name == b"te" and value.lower() != b"trailers":
        raise _bad(f"Invalid value for TE header: {value!r}")
    if name in _CONNECTION_FIELDS:
        raise _bad(f"Connection-specific header field present: {name!r}.")


def _block_pseudo(kind: int, pseudo: set[bytes], method: bytes | None) -> None:
    """The pseudo-headers each kind of block may and must have (RFC 9113 8.1, 8.3)."""
    if kind == TRAILERS:
        if pseudo:
            raise _bad(f"Received pseudo-header in trailer {pseudo}")
    elif kind == RESPONSE:
        if b":status" not in pseudo:
            raise _bad("Header block missing mandatory b':status' header")
        if pseudo & _REQUEST_ONLY:
            raise _bad(f"Encountered request-only headers {pseudo & _REQUEST_ONLY}")
    else:
        _request_pseudo(pseudo, method)


def _request_pseudo(pseudo: set[bytes], method: bytes | None) -> None:
    """The pseudo-headers a request needs (RFC 9113 8.3.1, RFC 8441 4 for extended CONNECT)."""
    if b":method" not in pseudo:
        raise _bad("Header block missing mandatory b':method' header")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in pseudo:
        if b":scheme" in pseudo or b":path" in pseudo:
            raise _bad("Ordinary CONNECT MUST NOT include :scheme or :path")
    else:
        for needed in (b":scheme", b":path"):
            if needed not in pseudo:
                raise _bad(f"Header block missing mandatory {needed!r} header")
    if b":status" in pseudo:
        raise _bad("Encountered response-only headers {b':status'}")
    if not connect and b":protocol" in pseudo:
        raise _bad("Encountered connect-request-only headers {b':protocol'}")


#: the events that carry a received header block, and its kind
_HEADER_EVENTS: Final[dict[type, int]] = {
    h2.events.RequestReceived: REQUEST,
    h2.events.ResponseReceived: RESPONSE,
    h2.events.InformationalResponseReceived: RESPONSE,
    h2.events.TrailersReceived: TRAILERS,
}


def check_received(events: list[h2.events.Event]) -> None:
    """`received_headers` on every header event of one read (their headers replaced by the checked block)."""
    for ev in events:
        kind = _HEADER_EVENTS.get(type(ev))
        if kind is not None:
            block = cast(Any, ev)
            block.headers = received_headers(block.headers, kind)


class OutStream:
    """A stream's outbound half: body bytes waiting for window, then its end or its trailers."""

    __slots__ = ("closed", "end_pending", "id", "pending", "trailers_pending")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.pending = bytearray()
        self.end_pending = False
        self.trailers_pending: Sequence[Header] | None = None
        self.closed = False


class H2Peer:
    """An HTTP/2 connection's outbound half over an asyncio transport."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        conn = Connection(config=config)
        # HPACK that reuses what it just encoded or decoded (meshplug.agent.hpackcache), set before any frame
        conn.encoder = CachedEncoder()
        conn.decoder = CachedDecoder(conn.decoder.max_header_list_size)
        self.h2 = conn
        self.transport: asyncio.Transport | None = None
        self._blocked: set[OutStream] = set()  # streams whose body waits for window
        self._flush_scheduled = False

    # what subclasses answer
    def send_failed(self, s: OutStream) -> None:
        """`s` could not be sent (h2 refused it: closed stream, bad header): reset it and tell its owner."""
        raise NotImplementedError

    def receive(self, data: bytes) -> list[h2.events.Event]:
        """h2's events for `data`, their header blocks checked (`received_headers`); h2's ProtocolError (its
        GOAWAY queued) when the peer broke the protocol."""
        h = self.h2
        events = h.receive_data(data)
        try:
            check_received(events)
        except h2.exceptions.ProtocolError:
            h.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)  # as h2 ends it
            raise
        return events

    # sending
    def send_headers(self, s: OutStream, headers: Sequence[Header], end_stream: bool) -> None:
        if s.closed:
            return
        try:
            self.h2.send_headers(s.id, headers, end_stream=end_stream)
        except SEND_ERRORS:
            self.send_failed(s)
            return
        self.schedule_flush()

    def send_data(self, s: OutStream, data: bytes, end_stream: bool) -> None:
        if s.closed or (not data and not end_stream):
            return
        s.pending += data
        s.end_pending = s.end_pending or end_stream
        if s not in self._blocked:
            self._push(s)
            self.schedule_flush()

    def send_trailers(self, s: OutStream, trailers: Sequence[Header]) -> None:
        if s.closed:
            return
        s.trailers_pending = list(trailers)
        if s not in self._blocked:
            self._push(s)
            self.schedule_flush()

    def _push(self, s: OutStream) -> None:
        """Send what `s` has pending, then its end or trailers, as far as the windows allow."""
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
                    return
                chunk = bytes(pending[:window])
                del pending[:window]
                last = not pending and s.trailers_pending is None and s.end_pending
                if last:
                    s.end_pending = False
                h.send_data(s.id, chunk, end_stream=last)
                if last:
                    break
            self._blocked.discard(s)
        except SEND_ERRORS:
            self._blocked.discard(s)
            self.send_failed(s)

    def unblock(self) -> None:
        """Windows opened: send what waited."""
        for s in list(self._blocked):
            self._blocked.discard(s)
            if not s.closed:
                self._push(s)

    def forget_stream(self, s: OutStream) -> None:
        s.closed = True
        s.pending.clear()
        self._blocked.discard(s)

    def reset_stream(self, s: OutStream, code: int) -> None:
        """RST_STREAM `s` (if h2 still has it open) and forget what it had pending."""
        self.forget_stream(s)
        with contextlib.suppress(*SEND_ERRORS):
            self.h2.reset_stream(s.id, code)
        self.schedule_flush()

    def buffered(self) -> int:
        """Bytes waiting for window on all streams."""
        return sum(len(s.pending) for s in self._blocked)

    # writes: everything of one loop iteration in one send
    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR, last_stream_id: int | None = None) -> None:
        with contextlib.suppress(*SEND_ERRORS):
            self.h2.close_connection(error_code=code, last_stream_id=last_stream_id)
        self.flush()
