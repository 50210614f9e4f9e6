"""The upstream side of the HTTP data path: one keep-alive connection (`Upstream`), a cluster's pool of them
(`Pool`) and the `Sink` interface a connection delivers a response to.

Called by the exchanges (`meshplug.agent.exchange`, `meshplug.agent.filtered`) and `meshplug.agent.relay` (plugins'
calls, HTTP/2 streams' HTTP/1.1 side), which borrow a connection per request and are its sink while the response
streams. An
`Upstream` parses one response at a time (httptools); interim 1xx responses are dropped (the proxy answers
100 Continue itself), a HEAD response ends at its head, and a parse error or a close is reported to the sink
with Envoy's reset reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import httptools

from meshplug.agent import config as agent_config
from meshplug.agent import stats as agent_stats
from meshplug.agent import wire

if TYPE_CHECKING:
    from meshplug.agent.filtered import FilteredExchange


class Sink(Protocol):
    """Who an upstream connection delivers a response to (an `Exchange`, or a plugin's http call)."""

    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: Any) -> None: ...

    def up_body(self, data: bytes) -> None: ...

    def up_complete(self) -> None: ...

    def up_trailers(self, trailers: wire.Headers) -> None: ...

    def up_failed(self, reset_reason: str) -> None: ...

    def up_pause(self) -> None: ...

    def up_resume(self) -> None: ...


#: bytes a reason phrase may not hold (RFC 9112 4: HTAB, SP, VCHAR, obs-text): Envoy's codec refuses the response
_BAD_REASON: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
#: the start of an interim (1xx) response's status line, and the blank line that ends a head
_INTERIM_START: Final = re.compile(rb"HTTP/[0-9]\.[0-9] +1[0-9][0-9][ \r\n]")
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")


def _response_parser(protocol: Upstream) -> Any:
    """llhttp on a response, as lenient as Envoy's codec where Envoy reads more: lines ended by LF alone, any
    HTTP/x.y version (Envoy answers the client as HTTP/1.1)."""
    parser = httptools.HttpResponseParser(protocol)
    parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True, lenient_version=True)
    return parser


def blank_before_status(data: bytes, in_interim: bool) -> bool:
    """Whether a read puts an empty line where a status line begins: at its start (the connection awaits a
    response), or after a 1xx head that ends in it (``in_interim``: the read continues one). llhttp skips such
    lines; Envoy's codec refuses the response (502)."""
    at = 0
    if in_interim:
        end = _HEAD_END.search(data)
        if end is None:
            return False
        at = end.end()
    while at < len(data):
        if data[at] in (10, 13):
            return True
        if _INTERIM_START.match(data, at) is None:
            return False
        end = _HEAD_END.search(data, at)
        if end is None:
            return False
        at = end.end()
    return False


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a cluster; parses one response at a time for its current `sink`."""

    __slots__ = (
        "_await_status",
        "_count",
        "_head_room",
        "_headers",
        "_in_head",
        "_interim",
        "_interim_head",
        "_mid",
        "_reason",
        "_te",
        "flush_sink",
        "got_bytes",
        "head_request",
        "info_fields",
        "keep_alive",
        "parser",
        "pool",
        "reused",
        "sink",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = _response_parser(self)
        self.sink: Sink | None = None
        self.reused = False
        self.got_bytes = False
        self.head_request = False
        self.keep_alive = True
        self._headers: wire.Headers = []
        self._reason = b""
        self._interim = False
        self._await_status = True  # the next byte read should begin a status line
        self._interim_head = False  # inside a 1xx response's head
        #: the parser is inside a message whose end the connection's close cannot be (Envoy's codec reads such a
        #: close as a protocol error: a premature EOF), i.e. not at a message boundary nor in a close-delimited body
        self._mid = False
        #: the response head's bounds, held while parsing (max_response_headers_kb / _count): bytes left for
        #: the head being read (`_in_head`) and header lines so far
        self._in_head = True
        self._head_room = pool.max_head
        self._count = 0
        self._te = False  # the response head has a Transfer-Encoding line
        #: an exchange holding the body of this read back (delivered in one chunk, as Envoy's codec does);
        #: told when the read is parsed
        self.flush_sink: FilteredExchange | None = None
        #: StreamInfo's upstream_* fields for this connection, computed on first use
        self.info_fields: dict[str, Any] | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.pool.stats.upstream_cx_total += 1
        self.pool.stats.upstream_cx_active += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.stats.upstream_cx_active -= 1
        self.pool.forget(self)
        # its parser holds its bound methods: let go, the connection is freed by its reference count, not the GC
        self.parser = _SPENT
        self.flush_sink = None
        sink, self.sink = self.sink, None
        if sink is not None:
            # a close inside a head or a framed body is a premature EOF (502 before the response started); at a
            # message boundary or ending a close-delimited body it is the connection's end
            sink.up_failed(wire.RESET_PROTOCOL if self._mid else wire.RESET_TERMINATION)

    def data_received(self, data: bytes) -> None:
        if self.sink is None:  # bytes on an idle connection: the server is misbehaving; drop it
            self.close()
            return
        self.got_bytes = True
        try:
            if (self._await_status or self._interim_head) and blank_before_status(data, self._interim_head):
                raise httptools.HttpParserError("upstream response: a blank line where a status line begins")
            if self._in_head and len(data) > self._head_room:
                self._feed_bounded(data)
            else:
                if self._in_head:
                    self._head_room -= len(data)
                self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadEnd):
                self._head_ended(data)
                return
            self.flush_sink = None
            sink, self.sink = self.sink, None
            self.close()
            if sink is not None:
                sink.up_failed(wire.RESET_PROTOCOL)
            return
        held = self.flush_sink
        if held is not None:
            self.flush_sink = None
            held.up_flush()

    def _head_ended(self, data: bytes) -> None:
        """A HEAD response's head was read: its message ends; bytes after it in the same read (a body the
        server sent anyway) leave the connection out of step: it is closed, not reused."""
        self.parser = _response_parser(self)
        self._in_head = True
        self._mid = False
        self._await_status = True
        self._head_room = self.pool.max_head
        if not data.endswith(b"\r\n\r\n"):
            self.close()
        self._finish()

    def _feed_bounded(self, data: bytes) -> None:
        """Feed a read that could take the head past its limit: a head not complete at the limit is a
        protocol error (Envoy resets the upstream: 502), before the parser holds more of it."""
        while data:
            room = self._head_room
            if not self._in_head or len(data) <= room:
                if self._in_head:
                    self._head_room = room - len(data)
                self.parser.feed_data(data)
                return
            part, data = data[:room], data[room:]
            self._head_room = 0
            self.parser.feed_data(part)
            if self._in_head and not self._head_room:  # the same head (or trailers) still not complete at its limit
                raise httptools.HttpParserError("upstream response head too large")

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost reports to the sink

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.up_pause()

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.up_resume()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.sink is None:
            # more bytes after the response ended (past its length, a body on 204/304/HEAD): the connection
            # is out of step and never reused, or the next request would get them (as Envoy drops it)
            raise _OutOfStep
        self._headers = []
        self._reason = b""
        self._count = 0
        self._te = False
        self._mid = True
        self._await_status = False

    def on_status(self, status: bytes) -> None:
        if _BAD_REASON.search(status) is not None:  # Envoy's codec: 502 (a tab or obs-text are fine)
            raise httptools.HttpParserError("upstream response: a control character in the reason phrase")
        self._reason += status
        self._interim_head = self.parser.get_status_code() < 200

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > self.pool.max_count:
            raise httptools.HttpParserError("upstream response has too many headers")
        name = name.lower()
        if name == b"transfer-encoding":
            self._te = True
        self._headers.append((name, value.rstrip(b" \t")))  # as Envoy's codec (rtrim): no blanks at the end

    def on_headers_complete(self) -> None:
        status: int = self.parser.get_status_code()
        if (status < 200 or status == 204) and (
            self._te or any(n == b"content-length" and v != b"0" for n, v in self._headers)
        ):
            # 1xx and 204 have no body (RFC 9110 6.4.1): framing one is a protocol error, as Envoy's codec
            # reads it (Content-Length other than exactly "0", or any Transfer-Encoding: 502, connection dropped)
            raise httptools.HttpParserError("upstream 1xx/204 response frames a body")
        if 100 <= status < 200:  # interim (100 Continue, 103): the proxy answers 100 itself; drop these
            self._interim = True
            return
        self._interim = False
        self._in_head = False
        self.keep_alive = self.parser.should_keep_alive()
        headers = self._headers
        method = b"HEAD" if self.head_request else b"GET"
        self._mid = not wire.close_delimited(method, status, headers)
        self._headers = []  # header lines after the body are trailers
        if self._te:
            te = [v for n, v in headers if n == b"transfer-encoding"]
            if len(te) > 1 or te[0].strip(b" \t").lower() != b"chunked":
                # a coding other than chunked alone cannot be framed or passed on (Envoy: 502)
                raise httptools.HttpParserError("upstream response transfer-encoding is not chunked")
        if self.sink is not None:
            self.sink.up_headers(status, self._reason, headers, self.parser)
        if self.head_request and self.sink is not None:
            # a response to HEAD has no body whatever its content-length says; llhttp cannot be told, so the
            # parser stops here (data_received ends the message; the next response gets a fresh parser)
            raise _HeadEnd

    def on_chunk_header(self) -> None:
        """A chunk's size line: when it is the last chunk's, trailer lines follow, bounded as the head is (Envoy
        counts them against max_response_headers_kb: the response is reset); a chunk's data ends that."""
        self._in_head = True
        self._head_room = self.pool.max_head

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        if self.sink is None:
            raise _OutOfStep  # body bytes of a response that already ended (a HEAD response's "length")
        self.sink.up_body(body)

    def on_message_complete(self) -> None:
        self._mid = False
        self._await_status = True
        self._interim_head = False
        self._in_head = True
        self._head_room = self.pool.max_head
        if self._interim:
            self._interim = False
            return
        trailers = self._headers
        if trailers and self.sink is not None and self.pool.cluster.enable_trailers:  # else dropped, as Envoy
            self.sink.up_trailers(trailers)
        self._finish()

    def _finish(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.up_complete()

    # used by sinks
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def write_parts(self, parts: list[bytes]) -> None:
        """`write` of several pieces (`wire.send_parts`: a large body is not copied to join them)."""
        if self.transport is not None:
            wire.send_parts(self.transport, parts)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def reusable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.keep_alive

    def upstream_fields(self) -> dict[str, Any]:
        """StreamInfo's upstream_* values for this connection (Stream.set_upstream's arguments)."""
        fields = self.info_fields
        if fields is None:
            t = self.transport
            peer = (t.get_extra_info("peername") if t is not None else None) or ("", 0)
            local = (t.get_extra_info("sockname") if t is not None else None) or ("", 0)
            fields = self.info_fields = {
                "upstream_address": str(peer[0]),
                "upstream_port": int(peer[1]),
                "upstream_local_address": str(local[0]),
                "upstream_local_port": int(local[1]),
            }
        return fields


class _Gone:
    """The parser callbacks of a connection that is gone: none."""


#: the parser a closed connection holds instead of its own (which held the connection)
_SPENT: Final = httptools.HttpResponseParser(_Gone())


class _OutOfStep(Exception):
    """Raised from a parser callback: bytes arrived for no request."""


class _HeadEnd(Exception):
    """Raised from a parser callback: a HEAD response ends with its head."""


class Pool:
    """A cluster: its address, timeouts and idle keep-alive connections (LIFO: the warmest first)."""

    def __init__(
        self,
        cluster: agent_config.Cluster,
        stats: agent_stats.Stats,
        http: agent_config.HttpOptions | None = None,
    ) -> None:
        self.cluster = cluster
        self.stats = stats
        http = http or agent_config.HttpOptions()
        self.max_head = http.max_response_headers_kb * 1024
        self.max_count = http.max_response_headers_count
        self.idle: list[Upstream] = []
        #: the endpoints new connections go to, round robin (a native cluster has its one address)
        self.endpoints = cluster.endpoints or (agent_config.Endpoint(cluster.address, cluster.port),)
        self._next = 0

    def endpoint(self) -> agent_config.Endpoint:
        """The endpoint of the next new connection (round robin, Envoy's default lb_policy)."""
        endpoints = self.endpoints
        ep = endpoints[self._next % len(endpoints)]
        self._next += 1
        return ep

    def take_idle(self) -> Upstream | None:
        idle = self.idle
        while idle:
            up = idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                up.reused = True
                up.got_bytes = False
                return up
        return None

    async def connect(self, ep: agent_config.Endpoint | None = None) -> Upstream:
        """A new connection (to `ep`, else the next endpoint); raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        if ep is None:
            ep = self.endpoint()
        _, up = await asyncio.wait_for(
            loop.create_connection(lambda: Upstream(self), ep.address, ep.port), timeout=self.cluster.connect_timeout_s
        )
        return up

    def release(self, up: Upstream) -> None:
        if up.reusable() and len(self.idle) < self.cluster.max_idle_connections:
            up.sink = None
            up.resume_reading()
            self.idle.append(up)
        else:
            up.close()

    def forget(self, up: Upstream) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(up)

    def close(self) -> None:
        for up in self.idle:
            up.close()
        self.idle.clear()
