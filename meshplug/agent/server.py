"""The agent's data path: listener -> filter chain -> upstream, as asyncio Protocols over httptools + uvloop.

Called by `meshplug.agent.runtime` (which owns the event loop, admin and push); holds no configuration
logic of its own. One `Proxy` serves every listener; per downstream connection a `Downstream` protocol
parses requests (httptools) into `Exchange`s, served strictly in order (pipelining); each exchange borrows
an `Upstream` connection from its cluster's keep-alive `Pool`, streams the request head and body to it,
and streams the response back. Flow control both ways: a full write buffer on one side pauses reading on
the other (asyncio's pause_writing/resume_writing -> pause_reading/resume_reading).

Filters: `Proxy.filters` is the active `chain.Chain` (swapped in one assignment by the push path) or None
(no plugins: the fast path, `Exchange`). With a chain, each request becomes a `FilteredExchange`, which feeds
the sans-IO `chain.Stream` events and performs its outputs (send headers/data upstream or downstream, abort
the upstream, reset). An exchange keeps the chain it started with, so in-flight requests finish on the old
chain after a swap.

Local replies follow Envoy's wording (503 "upstream connect error or disconnect/reset before headers.
reset reason: connection failure", 504 "upstream request timeout", 502 for an unparseable upstream
response), `text/plain`, so clients and the corpus see the same bodies from both data planes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import http
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Protocol, cast

import httptools

from meshplug import limits
from meshplug.agent import chain as agent_chain
from meshplug.agent import config as agent_config

log = logging.getLogger("meshplug.agent.server")

Headers = list[tuple[bytes, bytes]]

#: request/response headers that describe one hop only (RFC 9110 7.6.1) and are never forwarded
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
_REASONS: Final = {s.value: s.phrase.encode() for s in http.HTTPStatus}

RESET_CONNECT_FAILURE: Final = "connection failure"
RESET_TERMINATION: Final = "connection termination"
RESET_PROTOCOL: Final = "protocol error"
BODY_TIMEOUT: Final = b"upstream request timeout"


def reset_body(reason: str) -> bytes:
    return f"upstream connect error or disconnect/reset before headers. reset reason: {reason}".encode()


class _DateCache:
    """RFC 9110 Date header value, formatted at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = email.utils.formatdate(now, usegmt=True).encode()
        return self._value


_DATE: Final = _DateCache()


class _RequestIds:
    """x-request-id values shaped like a UUID4: a random per-process prefix, then a counter in the last
    48 bits. Unique per process by construction, across processes by the ~62 random bits of the prefix;
    costs one %-format per request instead of uuid4()'s urandom + UUID object + str()."""

    __slots__ = ("_next", "_prefix")

    def __init__(self) -> None:
        u = uuid.uuid4().hex
        self._prefix = f"{u[:8]}-{u[8:12]}-4{u[13:16]}-{'89ab'[int(u[16], 16) & 3]}{u[17:20]}-".encode()
        self._next = itertools.count(int(u[20:32], 16)).__next__

    def new(self) -> bytes:
        return b"%b%012x" % (self._prefix, self._next() & 0xFFFFFFFFFFFF)


_REQUEST_IDS: Final = _RequestIds()
#: ":status" values by code, encoded once
_STATUS_BYTES: Final = {code: str(code).encode() for code in range(100, 600)}
_SCHEME_HTTP: Final = (b":scheme", b"http")


def refresh_debug() -> None:
    """Re-read whether debug logging of the data path is on (called at start and when the level changes)."""
    _DEBUG[0] = log.isEnabledFor(logging.DEBUG)


# --- statistics --------------------------------------------------------------------------------------


class Stats:
    """Proxy counters; rendered by the admin endpoint. Plain ints: the data path only increments."""

    NAMES = (
        "downstream_cx_active",
        "downstream_cx_total",
        "downstream_rq_1xx",
        "downstream_rq_2xx",
        "downstream_rq_3xx",
        "downstream_rq_4xx",
        "downstream_rq_5xx",
        "downstream_rq_active",
        "downstream_rq_local_reply",
        "downstream_rq_total",
        "upstream_cx_active",
        "upstream_cx_connect_fail",
        "upstream_cx_total",
        "upstream_rq_reset",
        "upstream_rq_retry_stale",
        "upstream_rq_timeout",
        "upstream_rq_total",
    )

    def __init__(self) -> None:
        self.downstream_cx_active = 0
        self.downstream_cx_total = 0
        self.downstream_rq_1xx = 0
        self.downstream_rq_2xx = 0
        self.downstream_rq_3xx = 0
        self.downstream_rq_4xx = 0
        self.downstream_rq_5xx = 0
        self.downstream_rq_active = 0
        self.downstream_rq_local_reply = 0
        self.downstream_rq_total = 0
        self.upstream_cx_active = 0
        self.upstream_cx_connect_fail = 0
        self.upstream_cx_total = 0
        self.upstream_rq_reset = 0
        self.upstream_rq_retry_stale = 0
        self.upstream_rq_timeout = 0
        self.upstream_rq_total = 0

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in self.NAMES}

    def count_status(self, status: int) -> None:
        klass = status // 100
        if klass == 2:
            self.downstream_rq_2xx += 1
        elif klass == 5:
            self.downstream_rq_5xx += 1
        elif klass == 4:
            self.downstream_rq_4xx += 1
        elif klass == 3:
            self.downstream_rq_3xx += 1
        else:
            self.downstream_rq_1xx += 1


# --- upstream side -----------------------------------------------------------------------------------


class Sink(Protocol):
    """Who an upstream connection delivers a response to (an `Exchange`, or a plugin's http call)."""

    def up_headers(self, status: int, reason: bytes, headers: Headers, parser: Any) -> None: ...

    def up_body(self, data: bytes) -> None: ...

    def up_complete(self) -> None: ...

    def up_trailers(self, trailers: Headers) -> None: ...

    def up_failed(self, reset_reason: str) -> None: ...

    def up_pause(self) -> None: ...

    def up_resume(self) -> None: ...


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a cluster; parses one response at a time for its current `sink`."""

    __slots__ = (
        "_headers",
        "_interim",
        "_reason",
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
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.reused = False
        self.got_bytes = False
        self.head_request = False
        self.keep_alive = True
        self._headers: Headers = []
        self._reason = b""
        self._interim = False
        #: an exchange holding the last body chunk of this read back (to deliver it with end_stream when the
        #: message ends in the same read, as Envoy's codec does); told when the read is parsed
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
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.up_failed(RESET_TERMINATION)

    def data_received(self, data: bytes) -> None:
        if self.sink is None:  # bytes on an idle connection: the server is misbehaving; drop it
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.flush_sink = None
            sink, self.sink = self.sink, None
            self.close()
            if sink is not None:
                sink.up_failed(RESET_PROTOCOL)
            return
        held = self.flush_sink
        if held is not None:
            self.flush_sink = None
            held.up_flush()

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
        self._headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status: int = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103): the proxy answers 100 itself; drop these
            self._interim = True
            return
        self._interim = False
        self.keep_alive = self.parser.should_keep_alive()
        headers = self._headers
        self._headers = []  # header lines after the body are trailers
        if self.sink is not None:
            self.sink.up_headers(status, self._reason, headers, self.parser)
        if self.head_request and self.sink is not None:
            # a response to HEAD has no body whatever its content-length says; llhttp cannot be told,
            # so the message ends here and the next response gets a fresh parser
            self.parser = httptools.HttpResponseParser(self)
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.up_body(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        trailers = self._headers
        if trailers and self.sink is not None:
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


class Pool:
    """A cluster: its address, timeouts and idle keep-alive connections (LIFO: the warmest first)."""

    def __init__(self, cluster: agent_config.Cluster, stats: Stats) -> None:
        self.cluster = cluster
        self.stats = stats
        self.idle: list[Upstream] = []

    def take_idle(self) -> Upstream | None:
        idle = self.idle
        while idle:
            up = idle.pop()
            if up.transport is not None and not up.transport.is_closing():
                up.reused = True
                up.got_bytes = False
                return up
        return None

    async def connect(self) -> Upstream:
        """A new connection; raises OSError or TimeoutError."""
        loop = asyncio.get_running_loop()
        c = self.cluster
        _, up = await asyncio.wait_for(
            loop.create_connection(lambda: Upstream(self), c.address, c.port), timeout=c.connect_timeout_s
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


# --- downstream side ---------------------------------------------------------------------------------

_CONNECTION_IDS: Final = itertools.count(1)
#: whether the data path logs per-exchange details (read once per start/level change, not per call)
_DEBUG: Final = [False]


def _close_delimited(method: bytes, status: int, headers: Headers) -> bool:
    """A response whose body runs until the upstream closes (no length, not chunked; RFC 9112 6.3)."""
    if method == b"HEAD" or status in (204, 304) or status < 200:
        return False
    for name, value in headers:
        if name == b"content-length" or (name == b"transfer-encoding" and b"chunked" in value.lower()):
            return False
    return True


_PAUSE_UPSTREAM_FULL: Final = 1  # upstream write buffer full
_PAUSE_BUFFER: Final = 2  # body buffered while waiting for an upstream connection
_PAUSE_PIPELINE: Final = 4  # a complete request is waiting for its response

#: header fields never forwarded as trailers (framing, routing; RFC 9110 6.5.1)
_NOT_TRAILERS: Final = HOP_BY_HOP | {b"content-length", b"host"}
_LAST_CHUNK: Final = b"0\r\n\r\n"

#: how proxy-generated replies are described to plugins (response.code_details / response.flags), as Envoy's router
_DETAILS_CONNECT: Final = "upstream_reset_before_response_started{connection_failure}"
_DETAILS_TIMEOUT: Final = "upstream_response_timeout"


def _reset_details(reason: str) -> str:
    return "upstream_reset_before_response_started{" + reason.replace(" ", "_") + "}"


def _last_chunk(trailers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The end of a chunked body carrying `trailers` (RFC 9112 7.1.2)."""
    lines = [b"%b: %b\r\n" % (n, v) for n, v in trailers if n[:1] != b":" and n not in _NOT_TRAILERS]
    return b"0\r\n%b\r\n" % b"".join(lines) if lines else _LAST_CHUNK


class Exchange:
    """One request/response through the proxy; the `Sink` of its upstream connection."""

    __slots__ = (
        "body_bytes_buffered",
        "body_pending",
        "chunked_in",
        "conn",
        "deadline",
        "has_body",
        "head",
        "http11",
        "keep_alive",
        "method",
        "req_done",
        "req_tail",
        "resp_done",
        "resp_mode",
        "resp_started",
        "retried",
        "status",
        "up",
        "up_end",
        "up_eof_ends",
    )

    def __init__(self, conn: Downstream, method: bytes, head: bytes, keep_alive: bool, has_body: bool) -> None:
        self.conn = conn
        self.method = method
        self.head = head  # the request head to send upstream (built once, re-sent on a stale-connection retry)
        self.keep_alive = keep_alive
        self.has_body = has_body
        self.http11 = conn.http11
        self.chunked_in = False
        self.req_done = False
        self.req_tail = _LAST_CHUNK  # what ends a chunked upstream request (with the trailers, if any)
        self.body_pending: list[bytes] = []
        self.body_bytes_buffered = 0
        self.up: Upstream | None = None
        self.resp_started = False
        self.resp_done = False
        self.resp_mode = 0  # 0 raw, 1 re-chunk, 2 close-delimited
        self.status = 0
        #: loop time by which the upstream response must have ended (0: no deadline); the connection's one
        #: timer checks it (Downstream.wake_at): no timer handle per request
        self.deadline = 0.0
        self.retried = False
        self.up_end = False  # the whole request has been handed to the upstream side
        self.up_eof_ends = False  # the upstream response is close-delimited: its EOF ends the body

    # --- request side ---
    def start(self) -> None:
        """This exchange reached the head of its connection's queue: borrow a connection and send."""
        conn = self.conn
        pool = conn.pool
        up = pool.take_idle()
        if up is not None:
            self.attach(up)
        else:
            conn.proxy.loop.create_task(self._connect(pool))

    async def _connect(self, pool: Pool) -> None:
        try:
            up = await pool.connect()
        except (OSError, TimeoutError) as exc:
            pool.stats.upstream_cx_connect_fail += 1
            log.debug("connect to cluster %s failed: %r", pool.cluster.name, exc)
            self.proxy_reply(
                503,
                reset_body(RESET_CONNECT_FAILURE),
                _DETAILS_CONNECT,
                agent_chain.RESPONSE_FLAG_UPSTREAM_CONNECTION_FAILURE,
            )
            return
        if self.conn.closed or self.resp_done:
            pool.release(up)
            return
        self.attach(up)

    def attach(self, up: Upstream) -> None:
        """Send the request head, whatever body is buffered (and its end, if known) in one write."""
        self.up = up
        up.sink = self
        up.head_request = self.method == b"HEAD"
        conn = self.conn
        conn.proxy.stats.upstream_rq_total += 1
        data = self.head
        if self.body_pending or (self.up_end and self.chunked_in):
            parts = [data]
            parts += [self._frame(chunk) for chunk in self.body_pending]
            if self.up_end and self.chunked_in:
                parts.append(self.req_tail)
            data = b"".join(parts)
            if self.body_pending:
                self.body_pending = []
                self.body_bytes_buffered = 0
                conn.resume(_PAUSE_BUFFER)
        conn.up_write(up, data)
        if self.up_end:
            self._arm_timer()

    def _frame(self, chunk: bytes) -> bytes:
        if self.chunked_in:
            return b"%x\r\n%b\r\n" % (len(chunk), chunk)
        return chunk

    def request_body(self, chunk: bytes) -> None:
        up = self.up
        if up is not None and up.sink is self:
            self.conn.up_write(up, self._frame(chunk))
        elif not self.resp_done:
            self.body_pending.append(chunk)
            self.body_bytes_buffered += len(chunk)
            if self.body_bytes_buffered > limits.PROXY_BUFFER_HIGH_WATER:
                self.conn.pause(_PAUSE_BUFFER)

    def request_trailers(self, trailers: Headers) -> None:
        """Trailers of a chunked request (before `request_complete`)."""
        self.req_tail = _last_chunk(trailers)

    def request_complete(self) -> None:
        self.req_done = True
        self.up_end = True
        if self.up is not None and self.up.sink is self:
            self._request_sent()

    def _request_sent(self) -> None:
        if self.chunked_in and self.up is not None:
            self.conn.up_write(self.up, self.req_tail)
        self._arm_timer()

    def _arm_timer(self) -> None:
        conn = self.conn
        self.deadline = deadline = conn.proxy.loop.time() + conn.pool.cluster.response_timeout_s
        conn.wake_at(deadline)

    def _timed_out(self) -> None:
        self.deadline = 0.0
        self.conn.proxy.stats.upstream_rq_timeout += 1
        self._drop_upstream()
        if self.resp_started:
            self.conn.abort()
        else:
            self.proxy_reply(504, BODY_TIMEOUT, _DETAILS_TIMEOUT, agent_chain.RESPONSE_FLAG_UPSTREAM_REQUEST_TIMEOUT)

    # --- Sink: response side ---
    def up_headers(self, status: int, reason: bytes, headers: Headers, parser: Any) -> None:
        self.status = status
        self.up_eof_ends = _close_delimited(self.method, status, headers)
        out = [b"HTTP/1.1 %d %b\r\n" % (status, reason or _REASONS.get(status, b"Unknown"))]
        framed = False
        no_body = self.method == b"HEAD" or status in (204, 304)
        for name, value in headers:
            if name in HOP_BY_HOP:
                if name == b"transfer-encoding":
                    framed = framed or no_body
                continue
            if name == b"content-length":
                framed = True
            out.append(b"%b: %b\r\n" % (name, value))
        self._send_head(out, bodiless=no_body or framed, empty=False)

    def _send_head(self, out: list[bytes], *, bodiless: bool, empty: bool) -> None:
        """Finish a response head: its framing (as received, re-chunked, content-length 0 when ``empty``, or
        close-delimited for HTTP/1.0), the connection header, the blank line; then send it in one write."""
        keep = self.keep_alive and not self.conn.proxy.draining
        if bodiless:
            self.resp_mode = 0
        elif empty:
            self.resp_mode = 0
            out.append(b"content-length: 0\r\n")
        elif self.http11:
            self.resp_mode = 1
            out.append(b"transfer-encoding: chunked\r\n")
        else:
            self.resp_mode = 2
            keep = False
        if not keep:
            self.keep_alive = False
            out.append(b"connection: close\r\n")
        elif not self.http11:
            out.append(b"connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.resp_started = True
        self.conn.write(b"".join(out))

    def up_body(self, data: bytes) -> None:
        if self.resp_mode == 1:
            if data:
                self.conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.conn.write(data)

    def up_trailers(self, trailers: Headers) -> None:
        if self.resp_mode == 1:  # re-chunked: the trailers go in its last chunk (otherwise there is no place)
            self.conn.write(_last_chunk(trailers))
            self.resp_mode = 0

    def up_complete(self) -> None:
        if self.resp_mode == 1:
            self.conn.write(_LAST_CHUNK)
        up, self.up = self.up, None
        if up is not None:
            if self.up_end:
                self.conn.pool.release(up)
            else:
                up.close()
        self._finish()

    def up_failed(self, reset_reason: str) -> None:
        if self.up_eof_ends and reset_reason == RESET_TERMINATION:
            self.up_complete()  # close-delimited body: end of connection is end of body
            return
        up, self.up = self.up, None
        if self.resp_started:
            self.conn.proxy.stats.upstream_rq_reset += 1
            self.conn.abort()
            return
        if (
            up is not None
            and up.reused
            and not up.got_bytes
            and not self.has_body
            and not self.retried
            and reset_reason == RESET_TERMINATION
        ):
            # the app closed an idle pooled connection as we reused it: retry once on a fresh one
            self.retried = True
            self.conn.proxy.stats.upstream_rq_retry_stale += 1
            self._cancel_timer()
            self.conn.proxy.loop.create_task(self._connect(self.conn.pool))
            return
        self.conn.proxy.stats.upstream_rq_reset += 1
        status = 502 if reset_reason == RESET_PROTOCOL else 503
        flags = agent_chain.RESPONSE_FLAG_UPSTREAM_CONNECTION_TERMINATION if status == 503 else 0
        self.proxy_reply(status, reset_body(reset_reason), _reset_details(reset_reason), flags)

    def up_pause(self) -> None:
        self.conn.pause(_PAUSE_UPSTREAM_FULL)

    def up_resume(self) -> None:
        self.conn.resume(_PAUSE_UPSTREAM_FULL)

    # --- endings ---
    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def _drop_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            self.conn.discard_up(up)
            up.sink = None
            up.close()

    def proxy_reply(self, status: int, body: bytes, details: str, flags: int) -> None:
        """A reply the proxy generates (connect failure, reset, timeout); `details`/`flags` describe it to
        plugins (response.code_details / response.flags), which only a filtered exchange has."""
        self.local_reply(status, body)

    def local_reply(self, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer from the proxy itself, bypassing any plugin (errors, plugin replies)."""
        if self.resp_done or self.conn.closed:
            return
        if self.resp_started:
            self.conn.abort()
            return
        self._drop_upstream()
        self.conn.proxy.stats.downstream_rq_local_reply += 1
        self.status = status
        keep = self.keep_alive and self.req_done and not self.conn.proxy.draining
        self.keep_alive = keep
        out = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        has_type = False
        for name, value in headers:
            if name in HOP_BY_HOP or name == b"content-length":
                continue
            has_type = has_type or name == b"content-type"
            out.append(b"%b: %b\r\n" % (name, value))
        if body and not has_type:
            out.append(b"content-type: text/plain\r\n")
        out.append(b"content-length: %d\r\ndate: %b\r\nserver: meshplug\r\n" % (len(body), _DATE.get()))
        if not keep:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        if self.method != b"HEAD":
            out.append(body)
        self.resp_started = True
        self.resp_mode = 0
        self.conn.write(b"".join(out))
        self._finish()

    def _finish(self) -> None:
        if self.resp_done:
            return
        self.resp_done = True
        self._cancel_timer()
        self._ended()
        self.conn.proxy.stats.count_status(self.status)
        self.conn.exchange_done(self, reusable=self.keep_alive and self.req_done and self.resp_mode != 2)

    def abandon(self) -> None:
        """The downstream connection went away."""
        self._cancel_timer()
        self.resp_done = True
        self._drop_upstream()
        self._ended()

    def _ended(self) -> None:
        """Hook: the exchange is over (answered or abandoned)."""


_SendHeaders = agent_chain.SendHeaders
_SendData = agent_chain.SendData
_SendTrailers = agent_chain.SendTrailers
_AbortUpstream = agent_chain.AbortUpstream
_UPSTREAM: Final = agent_chain.Target.UPSTREAM


class FilteredExchange(Exchange):
    """An exchange through a plugin chain: HTTP events go into a `chain.Stream`, its outputs are performed.

    Costs on top of `Exchange` when every plugin continues: the chain's own work, nothing else of note.
    The request and response heads are serialized in the same pass that builds the chain's header lists;
    when the chain hands back the same headers (compared by identity of the entries: cheap), those bytes
    are sent; headers plugins appended after the received ones are serialized alone. The last body chunk
    of a read is held back until the read is parsed, so a body that ends in the same read reaches the
    plugins as one chunk with end_stream (as Envoy's codec dispatches it), not as data + an empty end.
    Upstream writes of one downstream read leave in one send (`Downstream.up_write`), downstream writes of
    one loop iteration in one send (`Downstream.write`); no task or future unless a plugin pauses.
    """

    __slots__ = (
        "fed_end",
        "proxy_made",
        "req_fed",
        "req_framed",
        "req_hold",
        "req_lines",
        "req_trailers",
        "request_headers",
        "resp_end_fed",
        "resp_fed",
        "resp_framed",
        "resp_hold",
        "resp_lines",
        "stream",
    )

    def __init__(
        self,
        conn: Downstream,
        method: bytes,
        keep_alive: bool,
        has_body: bool,
        chain: agent_chain.Chain,
        *,
        headers: Headers,
        lines: list[bytes],
        framed: bool,
    ) -> None:
        super().__init__(conn, method, b"", keep_alive, has_body)
        self.stream = stream = chain.new_stream(conn.stream_info(), start_time_ns=time.time_ns())
        stream.on_progress = self._progress
        self.request_headers = headers  # in the chain's form (pseudo-headers first), fed at `start`
        self.req_fed: tuple[tuple[bytes, bytes], ...] = ()  # what the chain got, to recognise it unchanged
        self.req_lines = lines  # the upstream head of `request_headers`: request line + host, then a line each
        self.req_framed = framed  # request_headers has content-length
        self.req_hold: bytes | None = None
        self.req_trailers: Headers | None = None
        self.fed_end = False
        self.resp_fed: tuple[tuple[bytes, bytes], ...] = ()
        self.resp_lines: list[bytes] = []
        self.resp_framed = False
        self.resp_hold: bytes | None = None
        self.resp_end_fed = False
        self.proxy_made = False  # the response is a reply the proxy generated (gets date and server)

    # --- driving the chain ---
    def _progress(self, _stream: agent_chain.Stream) -> None:
        if _DEBUG[0]:
            log.debug("stream %d progressed", self.stream.id)
        self.conn.proxy.loop.call_soon(self._pump)

    def _pump(self) -> None:
        if not self.resp_done:
            self.perform(self.stream.take_outputs())

    def start(self) -> None:
        headers = self.request_headers
        self.request_headers = []
        self.req_fed = tuple(headers)
        if not self.has_body:
            self.fed_end = True
        stream = self.stream
        if stream.pass_request_headers(headers, not self.has_body):
            self._send_up_headers(tuple(stream.request_headers), not self.has_body)
        else:
            self.perform(stream.take_outputs())
        if self.body_pending:
            pending, self.body_pending = self.body_pending, []
            self.body_bytes_buffered = 0
            for chunk in pending:
                self.request_body(chunk)
            if not self.req_done:
                self.flush_request()
        if self.req_done:
            self.request_complete()

    def request_body(self, chunk: bytes) -> None:
        if self.resp_done or not chunk:
            return
        held = self.req_hold
        self.req_hold = chunk
        if held is None:
            self.conn.hold = self  # delivered when this read is parsed, or with the request's end
        else:
            self._request_data(held, False)

    def flush_request(self) -> None:
        held, self.req_hold = self.req_hold, None
        if held is not None and not self.resp_done:
            self._request_data(held, False)

    def _request_data(self, data: bytes, end_stream: bool) -> None:
        stream = self.stream
        out = stream.pass_request_data(data, end_stream)
        if out is None:
            self.perform(stream.take_outputs())
        elif not self.resp_done:
            self._send_up_data(out, end_stream)

    def request_trailers(self, trailers: Headers) -> None:
        self.req_trailers = trailers

    def request_complete(self) -> None:
        self.req_done = True
        held, self.req_hold = self.req_hold, None
        if self.fed_end or self.resp_done:
            return
        self.fed_end = True
        stream = self.stream
        trailers = self.req_trailers
        if trailers:
            if held:
                self._request_data(held, False)
            if not self.resp_done:
                self.perform(stream.recv_request_trailers(trailers))
        else:
            self._request_data(held or b"", True)

    def attach(self, up: Upstream) -> None:
        self.stream.set_upstream_fields(up.upstream_fields())
        Exchange.attach(self, up)

    def up_headers(self, status: int, reason: bytes, headers: Headers, parser: Any) -> None:
        self.status = status
        no_body = self.method == b"HEAD" or status in (204, 304) or status < 200
        self.resp_end_fed = no_body
        # the chain's form (names are lower-case already): :status first, hop-by-hop headers dropped; the
        # downstream head lines in the same pass
        chain_headers: Headers = [(b":status", _STATUS_BYTES.get(status) or str(status).encode())]
        lines: list[bytes] = []
        framed = chunked = False
        for h in headers:
            name = h[0]
            if name in HOP_BY_HOP:
                if name == b"transfer-encoding" and b"chunked" in h[1].lower():
                    chunked = True
                continue
            if name == b"content-length":
                framed = True
            chain_headers.append(h)
            lines.append(b"%b: %b\r\n" % h)
        self.up_eof_ends = not (no_body or framed or chunked)  # _close_delimited
        self.resp_fed = tuple(chain_headers)
        self.resp_lines = lines
        self.resp_framed = framed
        stream = self.stream
        if stream.pass_response_headers(chain_headers, no_body):
            if not self.resp_done:
                self._send_down_headers(tuple(stream.response_headers), no_body)
        else:
            self.perform(stream.take_outputs())

    def _response_data(self, data: bytes, end_stream: bool) -> None:
        stream = self.stream
        out = stream.pass_response_data(data, end_stream)
        if out is None:
            self.perform(stream.take_outputs())
        elif not self.resp_done:
            self._send_down_data(out, end_stream)

    def up_body(self, data: bytes) -> None:
        if not data or self.resp_done:
            return
        held = self.resp_hold
        self.resp_hold = data
        if held is not None:
            self._response_data(held, False)
        elif self.up is not None:
            self.up.flush_sink = self  # delivered when this read is parsed, or with the message's end
        else:
            self.up_flush()

    def up_flush(self) -> None:
        held, self.resp_hold = self.resp_hold, None
        if held is not None and not self.resp_done:
            self._response_data(held, False)

    def up_trailers(self, trailers: Headers) -> None:
        held, self.resp_hold = self.resp_hold, None
        if self.resp_done or self.resp_end_fed:
            return
        self.resp_end_fed = True
        stream = self.stream
        if held:
            self._response_data(held, False)
        if not self.resp_done:
            self.perform(stream.recv_response_trailers([h for h in trailers if h[0] not in _NOT_TRAILERS]))

    def up_complete(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.flush_sink = None
            if self.up_end:
                self.conn.pool.release(up)
            else:
                up.close()
        held, self.resp_hold = self.resp_hold, None
        if not self.resp_end_fed and not self.resp_done:
            self.resp_end_fed = True
            self._response_data(held or b"", True)

    def proxy_reply(self, status: int, body: bytes, details: str, flags: int) -> None:
        """Through the plugins' response callbacks, as Envoy's router sends its local replies
        (sendLocalReply from the last filter: every plugin that saw the request sees the reply)."""
        stream = self.stream
        if (
            self.resp_done
            or self.conn.closed
            or self.resp_started
            or stream.completed
            or stream.reset is not None
            or stream.local_reply is not None
        ):
            self.local_reply(status, body)  # aborts or answers directly
            return
        self._cancel_timer()
        self._drop_upstream()
        self.up_end = True
        self.conn.proxy.stats.downstream_rq_local_reply += 1
        self.proxy_made = True
        stream.response_flags |= flags
        reply = agent_chain.LocalReply(status, body=body, details=details)
        progress, stream.on_progress = stream.on_progress, None  # the outputs are taken right here
        try:
            agent_chain.StreamControl(stream, len(stream.chain.filters) - 1).send_local_reply(reply)
        finally:
            stream.on_progress = progress
        self.perform(stream.take_outputs())

    def _ended(self) -> None:
        stream = self.stream
        stream.complete()
        stream.on_progress = None  # the exchange <-> stream cycle ends here: freed by refcount, not by the GC

    # --- performing outputs ---
    def perform(self, outputs: list[agent_chain.Output]) -> None:
        if _DEBUG[0]:
            log.debug("stream %d outputs: %s", self.stream.id, [type(o).__name__ for o in outputs])
        for out in outputs:
            if self.resp_done:
                return
            # exact types, the most frequent first (no isinstance chain)
            if type(out) is _SendData:
                if out.target is _UPSTREAM:
                    self._send_up_data(out.data, out.end_stream)
                else:
                    self._send_down_data(out.data, out.end_stream)
            elif type(out) is _SendHeaders:
                if out.target is _UPSTREAM:
                    self._send_up_headers(out.headers, out.end_stream)
                else:
                    self._send_down_headers(out.headers, out.end_stream)
            elif type(out) is _SendTrailers:
                if out.target is _UPSTREAM:
                    self._send_up_trailers(out.trailers)
                else:
                    self._send_down_trailers(out.trailers)
            elif type(out) is _AbortUpstream:
                self._cancel_timer()
                self._drop_upstream()
                self.up_end = True  # nothing more goes upstream
            else:  # ResetStream
                self.conn.abort()
                return

    def _send_up_headers(self, headers: tuple[tuple[bytes, bytes], ...], end_stream: bool) -> None:
        if headers == self.req_fed:  # unchanged: the lines built while parsing
            out = self.req_lines
            has_length = self.req_framed
        else:
            out = self._up_head_lines(headers)
            has_length = any(name == b"content-length" for name, _ in headers)
        self.req_lines = []
        if not end_stream and not has_length:
            self.chunked_in = True
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        self.head = b"".join(out)
        self.up_end = end_stream
        pool = self.conn.pool
        up = pool.take_idle()
        if up is not None:
            self.attach(up)
        else:
            self.conn.proxy.loop.create_task(self._connect(pool))

    def _up_head_lines(self, headers: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
        method = path = authority = host = None
        out = [b""]  # the request line and host go first, once the pseudo-headers are known
        for name, value in headers:
            if name[:1] == b":":
                if name == b":method":
                    method = method or value
                elif name == b":path":
                    path = path or value
                elif name == b":authority":
                    authority = authority or value
                continue
            if name in HOP_BY_HOP:
                continue
            if name == b"host":
                host = host or value
                continue
            out.append(b"%b: %b\r\n" % (name, value))
        method = method or self.method
        self.method = method
        authority = authority or host
        if authority:
            out[0] = b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (method, path or b"/", authority)
        else:
            out[0] = b"%b %b HTTP/1.1\r\n" % (method, path or b"/")
        return out

    def _send_up_data(self, data: bytes, end_stream: bool) -> None:
        up = self.up
        attached = up is not None and up.sink is self
        if data:
            if attached and up is not None:
                self.conn.up_write(up, self._frame(data))
            else:
                self.body_pending.append(data)
        if end_stream and not self.up_end:
            self.up_end = True
            if attached:
                self._request_sent()

    def _send_up_trailers(self, trailers: tuple[tuple[bytes, bytes], ...]) -> None:
        if self.chunked_in:  # a request sent with content-length has no place for trailers
            self.req_tail = _last_chunk(trailers)
        self._send_up_data(b"", True)

    def _send_down_headers(self, headers: tuple[tuple[bytes, bytes], ...], end_stream: bool) -> None:
        fed = self.resp_fed
        n = len(fed)
        if n and headers[:n] == fed:  # the received headers, maybe with some appended: serialize only those
            status = self.status
            out = [b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown")), *self.resp_lines]
            framed = self.resp_framed
            for name, value in headers[n:]:
                if name[:1] == b":" or name in HOP_BY_HOP:
                    continue
                framed = framed or name == b"content-length"
                out.append(b"%b: %b\r\n" % (name, value))
        else:
            out, status, framed = self._down_head_lines(headers)
            self.status = status
        no_body = self.method == b"HEAD" or status in (204, 304)
        self._send_head(out, bodiless=no_body or framed, empty=end_stream)
        if end_stream:
            self._finish()

    def _down_head_lines(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[list[bytes], int, bool]:
        raw_status: bytes | None = None
        out = [b""]  # the status line, once :status is known
        framed = has_date = has_server = False
        for name, value in headers:
            if name[:1] == b":":
                if name == b":status" and raw_status is None:
                    raw_status = value
                continue
            if name in HOP_BY_HOP:
                continue
            framed = framed or name == b"content-length"
            has_date = has_date or name == b"date"
            has_server = has_server or name == b"server"
            out.append(b"%b: %b\r\n" % (name, value))
        try:
            status = int(raw_status or b"200")
        except ValueError:
            status = 502
        out[0] = b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Unknown"))
        if self.proxy_made:  # as `local_reply` answers without plugins
            if not has_date:
                out.append(b"date: %b\r\n" % _DATE.get())
            if not has_server:
                out.append(b"server: meshplug\r\n")
        return out, status, framed

    def _send_down_data(self, data: bytes, end_stream: bool) -> None:
        conn = self.conn
        if data:
            if self.resp_mode == 1:
                conn.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                conn.write(data)
        if end_stream:
            if self.resp_mode == 1:
                conn.write(_LAST_CHUNK)
            self._finish()

    def _send_down_trailers(self, trailers: tuple[tuple[bytes, bytes], ...]) -> None:
        if self.resp_mode == 1:
            self.conn.write(_last_chunk(trailers))
            self.resp_mode = 0
        self._finish()


class Downstream(asyncio.Protocol):
    """One client connection: parse requests, queue them, serve them in order."""

    def __init__(self, proxy: Proxy, pool: Pool) -> None:
        self.proxy = proxy
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.id = next(_CONNECTION_IDS)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the exchange being parsed
        self.closed = False
        self.eof = False
        self.http11 = True
        self._paused = 0
        self._write_paused = False
        #: one timer per connection, firing at `_timer_at` at the latest, for the earliest deadline: the idle
        #: timeout (`_idle_at`, loop time; 0 = busy) and the response deadline of the exchange being served
        #: (`Exchange.deadline`). Deadlines move without touching the timer (lazily: when it fires it
        #: re-arms for what is still pending), so a request costs no timer handle.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._idle_at = 0.0
        self._out: list[bytes] = []
        self._url = b""
        self._headers: Headers = []
        self._head_bytes = 0
        #: while a read is parsed, upstream writes collect here and leave in one send when it is done
        self._parsing = False
        self._up_target: Upstream | None = None
        self._up_out: list[bytes] = []
        #: a filtered exchange holding the last request body chunk of this read (see FilteredExchange)
        self.hold: FilteredExchange | None = None
        self._info: agent_chain.StreamInfo | None = None  # this connection's StreamInfo, without the time

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.peer = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        self.proxy.connections.add(self)
        self.proxy.stats.downstream_cx_total += 1
        self.proxy.stats.downstream_cx_active += 1
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        self.proxy.stats.downstream_cx_active -= 1
        self._idle_at = 0.0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.queue:
            ex = self.queue.popleft()
            if not ex.resp_done:
                self.proxy.stats.downstream_rq_active -= 1
            ex.abandon()
        self.proxy.connection_closed()

    def data_received(self, data: bytes) -> None:
        self._parsing = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, b"upgrade not supported")
        except httptools.HttpParserError:
            self._reject(400, b"Bad Request")
        finally:
            held = self.hold
            if held is not None:
                self.hold = None
                held.flush_request()
            self._parsing = False
            if self._up_target is not None:
                self._flush_up()

    def eof_received(self) -> bool | None:
        # the client half-closed: finish what is queued, then close (pipelined requests may still be served)
        self.eof = True
        if not self.queue:
            return None
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.queue and self.queue[0].up is not None:
            self.queue[0].up.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.queue and self.queue[0].up is not None:
            self.queue[0].up.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._idle_at = 0.0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > limits.MAX_REQUEST_HEADER_BYTES:
            raise httptools.HttpParserError("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > limits.MAX_REQUEST_HEADER_BYTES:
            raise httptools.HttpParserError("request head too large")
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        method: bytes = parser.get_method()
        self.http11 = parser.get_http_version() == "1.1"
        keep_alive: bool = parser.should_keep_alive()
        headers = self._headers
        self._headers = []  # header lines after the body are trailers
        proxy = self.proxy
        proxy.stats.downstream_rq_total += 1
        proxy.stats.downstream_rq_active += 1

        # which headers name more hop-by-hop headers
        drop = HOP_BY_HOP
        has_rid = has_host = chunked = expect_continue = False
        content_length = -1
        for name, value in headers:
            if name == b"connection":
                extra = {t.strip().lower() for t in value.split(b",")} - {b"close", b"keep-alive", b""}
                if extra:
                    drop = drop | extra
            elif name == b"x-request-id":
                has_rid = True
            elif name == b"host":
                has_host = True
            elif name == b"transfer-encoding":
                chunked = chunked or b"chunked" in value.lower()
            elif name == b"content-length":
                with contextlib.suppress(ValueError):
                    content_length = int(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
        if not has_rid:
            headers.append((b"x-request-id", _REQUEST_IDS.new()))
        if not has_host:
            c = self.pool.cluster
            headers.append((b"host", f"{c.address}:{c.port}".encode()))
        has_body = chunked or content_length > 0

        filters = proxy.filters
        if filters is not None:
            # the chain's form in one pass (names are lower-case already): pseudo-headers first, Host folded
            # into :authority as Envoy's HTTP/1 codec does, hop-by-hop headers dropped; and the upstream head
            # of the same headers, sent as is when the plugins leave them unchanged
            url = self._url
            authority = b""
            chain_headers: Headers = [(b":method", method), (b":path", url), (b":authority", b""), _SCHEME_HTTP]
            lines = [b""]
            framed = False
            for h in headers:
                name = h[0]
                if name in drop or (name == b"expect" and expect_continue):
                    continue
                if name == b"host":
                    if not authority:
                        authority = h[1]
                    continue
                if name == b"content-length":
                    framed = True
                chain_headers.append(h)
                lines.append(b"%b: %b\r\n" % h)
            if authority:
                chain_headers[2] = (b":authority", authority)
                lines[0] = b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (method, url, authority)
            else:
                lines[0] = b"%b %b HTTP/1.1\r\n" % (method, url)
            fx = FilteredExchange(
                self, method, keep_alive, has_body, filters, headers=chain_headers, lines=lines, framed=framed
            )
            self.current = fx
            self.queue.append(fx)
            if expect_continue and has_body:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if len(self.queue) == 1:
                fx.start()
            return

        ex = Exchange(self, method, b"", keep_alive, has_body)
        ex.chunked_in = chunked
        out = [b"%b %b HTTP/1.1\r\n" % (method, self._url)]
        for name, value in headers:
            if name in drop or name == b"content-length" or (name == b"expect" and expect_continue):
                continue
            out.append(b"%b: %b\r\n" % (name, value))
        if chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        elif content_length >= 0:
            out.append(b"content-length: %d\r\n" % content_length)
        out.append(b"\r\n")
        ex.head = b"".join(out)

        self.current = ex
        self.queue.append(ex)
        if expect_continue and has_body:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(self.queue) == 1:
            ex.start()

    def on_body(self, body: bytes) -> None:
        ex = self.current
        if ex is None:
            return
        if self.queue and ex is self.queue[0]:
            ex.request_body(body)
        elif not ex.resp_done:
            ex.body_pending.append(body)
            ex.body_bytes_buffered += len(body)

    def on_message_complete(self) -> None:
        ex, self.current = self.current, None
        if ex is None:
            return
        trailers = self._headers
        if trailers:
            self._headers = []
            ex.request_trailers(trailers)
        if self.queue and ex is self.queue[0]:
            ex.request_complete()
        else:
            ex.req_done = True
        if not ex.resp_done:
            self.pause(_PAUSE_PIPELINE)

    # --- flow control and writes ---
    def pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def stream_info(self) -> agent_chain.StreamInfo:
        """The StreamInfo of this connection's streams, without their start time (computed once; shared)."""
        info = self._info
        if info is None:
            peer = self.peer or ("", 0)
            local = self.local or ("", 0)
            info = self._info = agent_chain.StreamInfo(
                remote_address=str(peer[0]),
                remote_port=int(peer[1]),
                local_address=str(local[0]),
                local_port=int(local[1]),
                protocol="HTTP/1.1" if self.http11 else "HTTP/1.0",
                connection_id=self.id,
                cluster_name=self.pool.cluster.name,
            )
        elif (info.protocol == "HTTP/1.1") is not self.http11:
            info = self._info = agent_chain.replace_info(info, {"protocol": "HTTP/1.1" if self.http11 else "HTTP/1.0"})
        return info

    def up_write(self, up: Upstream, data: bytes) -> None:
        """Write to an upstream connection; while a read is parsed, the writes leave together after it."""
        if not self._parsing:
            up.write(data)
            return
        target = self._up_target
        if target is not up:
            if target is not None:
                self._flush_up()
            self._up_target = up
        self._up_out.append(data)

    def _flush_up(self) -> None:
        up, self._up_target = self._up_target, None
        out = self._up_out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if up is not None and up.transport is not None and not up.transport.is_closing():
            up.transport.write(data)

    def discard_up(self, up: Upstream) -> None:
        """`up` is being dropped: what is pending for it is not sent."""
        if self._up_target is up:
            self._up_target = None
            self._up_out.clear()

    def write(self, data: bytes) -> None:
        """Queue `data`; everything written in one loop iteration leaves in one send (head + body together)."""
        out = self._out
        out.append(data)
        if len(out) == 1:
            self.proxy.loop.call_soon(self.flush)

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        self._out.clear()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _reject(self, status: int, body: bytes) -> None:
        ex = Exchange(self, b"GET", b"", False, False)
        ex.req_done = True
        if self.queue and not self.queue[-1].resp_done:
            # a response is still in flight: we cannot answer in order, just end the connection
            self.abort()
            return
        self.queue.append(ex)
        self.proxy.stats.downstream_rq_total += 1
        self.proxy.stats.downstream_rq_active += 1
        ex.local_reply(status, body)

    def _arm_idle(self) -> None:
        self._idle_at = idle_at = self.proxy.loop.time() + self.proxy.idle_timeout_s
        self.wake_at(idle_at)

    def wake_at(self, when: float) -> None:
        """Make the connection's timer fire by loop time `when` (a deadline was set)."""
        if self._timer is None or when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            if self.closed:
                self._timer = None
                return
            self._timer_at = when
            self._timer = self.proxy.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.proxy.loop.time()
        pending = 0.0
        for ex in list(self.queue):
            deadline = ex.deadline
            if deadline:
                if deadline <= now:
                    ex._timed_out()
                elif not pending or deadline < pending:
                    pending = deadline
        idle_at = self._idle_at
        if idle_at:
            if idle_at <= now:
                self._idle_at = 0.0
                self.close()
                return
            if not pending or idle_at < pending:
                pending = idle_at
        if pending:
            self.wake_at(pending)

    def exchange_done(self, ex: Exchange, *, reusable: bool) -> None:
        self.proxy.stats.downstream_rq_active -= 1
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if not reusable or self.proxy.draining or (self.eof and not self.queue):
            self.close()
            return
        if self.queue:
            nxt = self.queue[0]
            nxt.start()
            if nxt.req_done:
                return  # still paused for the pipeline: resume once this one is answered
        self.resume(_PAUSE_PIPELINE)
        if self._write_paused and self.queue and self.queue[0].up is not None:
            self.queue[0].up.pause_reading()
        if not self.queue and self.current is None and self.transport is not None and not self.transport.is_closing():
            self._arm_idle()


# --- network (L4) listeners --------------------------------------------------------------------------


class NetworkStream(Protocol):
    """One network plugin's context for one TCP connection (host.TcpStream implements it)."""

    def start(self) -> agent_chain.Action: ...

    def on_downstream_data(self, data: bytes, end_stream: bool) -> tuple[agent_chain.Action, bytes]: ...

    def on_upstream_data(self, data: bytes, end_stream: bool) -> tuple[agent_chain.Action, bytes]: ...

    def on_close(self, peer: str, peer_type: int = 2) -> None: ...

    def finish(self) -> None: ...


class NetworkFilter(Protocol):
    """A plugin as a network filter (host.Plugin implements it)."""

    @property
    def fail_strategy(self) -> agent_chain.FailStrategy: ...

    def new_connection(self, info: agent_chain.StreamInfo) -> NetworkStream | None: ...


#: proxy-wasm PeerType: the close came from this proxy or from the peer
PEER_LOCAL, PEER_REMOTE = 1, 2


class _TcpUpstream(asyncio.Protocol):
    """The upstream half of a TCP proxy connection; reports everything to its `TcpDownstream`."""

    def __init__(self, owner: TcpDownstream) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner.proxy.stats.upstream_cx_total += 1
        self.owner.proxy.stats.upstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        self.owner.from_upstream(data, False)

    def eof_received(self) -> bool | None:
        self.owner.from_upstream(b"", True)
        return True  # keep our write side open until the downstream half-closes too

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.proxy.stats.upstream_cx_active -= 1
        self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_down(True)

    def resume_writing(self) -> None:
        self.owner.pause_down(False)


class TcpDownstream(asyncio.Protocol):
    """A TCP proxy connection (Envoy's tcp_proxy with wasm network filters in front of it).

    Bytes from the client pass every plugin's `on_downstream_data` in chain order, bytes from the upstream
    every plugin's `on_upstream_data` in reverse order (network write filters run backwards, as in Envoy).
    STOP keeps the bytes buffered in that plugin's context (they go out with its next CONTINUE); a failed
    plugin is bypassed under FAIL_OPEN and closes the connection otherwise. Half-closes are forwarded
    (end_stream reaches the plugins first). When both sides are gone, each plugin gets its close callbacks
    and then `finish` (on_done, on_log, on_delete).
    """

    def __init__(self, proxy: Proxy, pool: Pool) -> None:
        self.proxy = proxy
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.up: _TcpUpstream | None = None
        self.streams: list[tuple[NetworkFilter, NetworkStream]] = []
        self.pending_up: list[bytes] = []  # bytes for the upstream before it is connected
        self.up_eof_pending = False
        self.down_eof = False  # the client half-closed (and it was forwarded)
        self.up_eof = False  # the upstream half-closed (and it was forwarded)
        self.down_closed = False
        self.up_closed = False
        self.finished = False
        self.local_close = False  # this proxy closed (a plugin failed, both halves ended, drain)
        self.id = next(_CONNECTION_IDS)

    # downstream: asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        proxy.stats.downstream_cx_total += 1
        proxy.stats.downstream_cx_active += 1
        proxy.connections.add(self)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        info = agent_chain.StreamInfo(
            remote_address=str(peer[0]),
            remote_port=int(peer[1]),
            local_address=str(local[0]),
            local_port=int(local[1]),
            protocol="",
            connection_id=self.id,
            start_time_ns=time.time_ns(),
            cluster_name=self.pool.cluster.name,
        )
        for f in proxy.network_filters:
            stream = f.new_connection(info)
            if stream is None or stream.start() is agent_chain.Action.FAIL:
                if f.fail_strategy is agent_chain.FailStrategy.FAIL_OPEN:
                    continue
                log.debug("tcp connection %d refused by a failed network plugin", self.id)
                if stream is not None:
                    self.streams.append((f, stream))
                self.up_closed = True
                self.local_close = True
                self.transport.close()
                return
            self.streams.append((f, stream))
        self.transport.pause_reading()  # until the upstream is connected
        proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        c = self.pool.cluster
        try:
            _, up = await asyncio.wait_for(
                self.proxy.loop.create_connection(lambda: _TcpUpstream(self), c.address, c.port),
                timeout=c.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            self.proxy.stats.upstream_cx_connect_fail += 1
            log.debug("tcp connect to cluster %s failed: %r", c.name, exc)
            self.up_closed = True
            self.close()
            return
        assert up.transport is not None
        if self.down_closed:  # the client went away while we connected
            self.up = up
            self.local_close = True
            up.transport.close()
            return
        self.up = up
        for data in self.pending_up:
            up.transport.write(data)
        self.pending_up = []
        if self.up_eof_pending and up.transport.can_write_eof():
            up.transport.write_eof()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._to_upstream(data, False)

    def eof_received(self) -> bool | None:
        self.down_eof = True
        self._to_upstream(b"", True)
        self._maybe_close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.stats.downstream_cx_active -= 1
        self.proxy.connections.discard(self)
        self.down_closed = True
        for _, stream in self.streams:
            stream.on_close("downstream", PEER_LOCAL if self.local_close else PEER_REMOTE)
        up = self.up
        if up is not None and up.transport is not None and not up.transport.is_closing():
            self.local_close = True
            up.transport.close()
        elif up is None:
            self.up_closed = True
        self._finish()
        self.proxy.connection_closed()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None and not self.up.transport.is_closing():
            self.up.transport.resume_reading()

    # the two directions
    def _through(self, data: bytes, end_stream: bool, *, downstream: bool) -> bytes | None:
        """`data` after every plugin of this direction; None when a plugin holds it or closed the connection."""
        order = self.streams if downstream else list(reversed(self.streams))
        for f, stream in order:
            if downstream:
                action, out = stream.on_downstream_data(data, end_stream)
            else:
                action, out = stream.on_upstream_data(data, end_stream)
            if action is agent_chain.Action.CONTINUE:
                data = out
            elif action is agent_chain.Action.FAIL:
                if f.fail_strategy is not agent_chain.FailStrategy.FAIL_OPEN:
                    self.abort()
                    return None
                self.streams = [(g, s) for g, s in self.streams if s is not stream]
            else:
                return None
        return data

    def _to_upstream(self, data: bytes, end_stream: bool) -> None:
        out = self._through(data, end_stream, downstream=True)
        if out is None:
            return
        up = self.up
        if up is None or up.transport is None:
            if out:
                self.pending_up.append(out)
            self.up_eof_pending = self.up_eof_pending or end_stream
            return
        if up.transport.is_closing():
            return
        if out:
            up.transport.write(out)
        if end_stream and up.transport.can_write_eof():
            up.transport.write_eof()

    def from_upstream(self, data: bytes, end_stream: bool) -> None:
        out = self._through(data, end_stream, downstream=False)
        t = self.transport
        if end_stream:
            self.up_eof = True
        if out is None or t is None or t.is_closing():
            return
        if out:
            t.write(out)
        if end_stream:
            if t.can_write_eof():
                t.write_eof()
            self._maybe_close()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.up_closed = True
        for _, stream in self.streams:
            stream.on_close("upstream", PEER_LOCAL if self.local_close else PEER_REMOTE)
        t = self.transport
        if t is not None and not t.is_closing():
            self.local_close = True
            t.close()  # flushes what is buffered, then closes
        self._finish()

    def pause_down(self, paused: bool) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if paused:
                t.pause_reading()
            else:
                t.resume_reading()

    # endings
    def _maybe_close(self) -> None:
        if self.down_eof and self.up_eof:
            self.close()

    def close(self) -> None:
        self.local_close = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.up is not None and self.up.transport is not None and not self.up.transport.is_closing():
            self.up.transport.close()

    def abort(self) -> None:
        self.local_close = True
        if self.transport is not None:
            self.transport.abort()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.abort()

    def _finish(self) -> None:
        if self.finished or not (self.down_closed and self.up_closed):
            return
        self.finished = True
        for _, stream in self.streams:
            stream.finish()


# --- plugins' http calls ---------------------------------------------------------------------------


class _CallSink:
    """Collects one whole response for a plugin's http call."""

    def __init__(self, future: asyncio.Future[tuple[int, Headers, bytes] | None], up: Upstream) -> None:
        self.future = future
        self.up = up
        self.status = 0
        self.headers: Headers = []
        self.body: list[bytes] = []

    def up_headers(self, status: int, reason: bytes, headers: Headers, parser: Any) -> None:
        self.status = status
        self.headers = [(n, v) for n, v in headers if n not in HOP_BY_HOP]

    def up_body(self, data: bytes) -> None:
        self.body.append(data)

    def up_trailers(self, trailers: Headers) -> None:
        return None

    def up_complete(self) -> None:
        self.up.pool.release(self.up)
        if not self.future.done():
            self.future.set_result((self.status, self.headers, b"".join(self.body)))

    def up_failed(self, reset_reason: str) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def up_pause(self) -> None:
        return None

    def up_resume(self) -> None:
        return None


# --- the proxy -----------------------------------------------------------------------------------------


class Proxy:
    """Listeners, cluster pools, counters, the active filter chain, and drain."""

    def __init__(
        self,
        cfg: agent_config.AgentConfig,
        *,
        loop: asyncio.AbstractEventLoop,
        idle_timeout_s: float = limits.DOWNSTREAM_IDLE_TIMEOUT_S,
    ) -> None:
        self.cfg = cfg
        self.loop = loop
        self.stats = Stats()
        self.pools = {c.name: Pool(c, self.stats) for c in cfg.clusters}
        self.filters: agent_chain.Chain | None = None
        self.idle_timeout_s = idle_timeout_s
        self.draining = False
        self.network_filters: tuple[NetworkFilter, ...] = ()  # swapped with `filters` by the push path
        self.connections: set[Downstream | TcpDownstream] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self._drained: asyncio.Event | None = None

    async def start(self) -> None:
        for lst in self.cfg.listeners:
            pool = self.pools[lst.cluster]
            factory = functools.partial(TcpDownstream if lst.type == "tcp" else Downstream, self, pool)
            server = await self.loop.create_server(factory, lst.address, lst.port, reuse_address=True, backlog=1024)
            self.servers.append(server)
            log.info(
                "%s listener %s on %s:%d -> cluster %s",
                lst.type,
                lst.name,
                lst.address,
                self.port_of(server),
                lst.cluster,
            )

    @staticmethod
    def port_of(server: asyncio.AbstractServer) -> int:
        sockets = getattr(server, "sockets", ())
        return int(sockets[0].getsockname()[1]) if sockets else 0

    def connection_closed(self) -> None:
        if self.draining and not self.connections and self._drained is not None:
            self._drained.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop accepting, let in-flight exchanges finish (closing each connection after), up to `timeout_s`.

        Returns True when every connection ended in time; remaining ones are aborted otherwise.
        """
        self.draining = True
        for server in self.servers:
            server.close()
        self._drained = asyncio.Event()
        for conn in list(self.connections):
            if isinstance(conn, Downstream) and not conn.queue:
                conn.close()  # idle HTTP connections end now; TCP ones run until they end or the deadline
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        clean = not self.connections
        for conn in list(self.connections):
            conn.abort()
        for pool in self.pools.values():
            pool.close()
        return clean

    async def http_call(
        self, cluster: str, headers: Sequence[tuple[bytes, bytes]], body: bytes, timeout_s: float
    ) -> tuple[int, Headers, bytes] | None:
        """A plugin's HTTP call to a named cluster: (status, headers, body), or None on connect/reset failure.

        A timeout answers 504 "upstream request timeout", as Envoy's async client reports it.
        """
        pool = self.pools.get(cluster)
        if pool is None:
            return None
        method, path, authority = b"GET", b"/", b""
        out: list[bytes] = []
        for name, value in headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif not name.startswith(b":") and name not in HOP_BY_HOP and name not in (b"content-length", b"host"):
                out.append(b"%b: %b\r\n" % (name, value))
        host = authority or f"{pool.cluster.address}:{pool.cluster.port}".encode()
        head = b"%b %b HTTP/1.1\r\nhost: %b\r\n%bcontent-length: %d\r\n\r\n" % (
            method,
            path,
            host,
            b"".join(out),
            len(body),
        )
        up = pool.take_idle()
        if up is None:
            try:
                up = await pool.connect()
            except (OSError, TimeoutError):
                self.stats.upstream_cx_connect_fail += 1
                return None
        future: asyncio.Future[tuple[int, Headers, bytes] | None] = self.loop.create_future()
        up.sink = _CallSink(future, up)
        up.head_request = method == b"HEAD"
        self.stats.upstream_rq_total += 1
        up.write(head + body)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            up.sink = None
            up.close()
            self.stats.upstream_rq_timeout += 1
            return 504, [(b"content-type", b"text/plain")], BODY_TIMEOUT
