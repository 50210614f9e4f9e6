"""One request/response through the proxy without plugins (the fast path): `Exchange`.

Created by `meshplug.agent.downstream.Downstream` for each parsed request, served strictly in order; it
borrows an `Upstream` from its cluster's `Pool` (`meshplug.agent.upstream`), streams the request head and
body to it and, as the connection's `Sink`, the response back: re-chunked for HTTP/1.1 clients when the
upstream sent no length, close-delimited for HTTP/1.0 ones. Also the base of
`meshplug.agent.filtered.FilteredExchange` and the answerer of local replies (errors, proxy replies with
Envoy's wording).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from meshplug import limits
from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, hcm, wire
from meshplug.agent.upstream import Pool, Upstream

if TYPE_CHECKING:
    from meshplug.agent.config import Endpoint
    from meshplug.agent.downstream import Downstream

log = logging.getLogger("meshplug.agent.exchange")


#: response.flags for an upstream reset, by reason (Envoy's router: UF, UC, UPE, UR, UO)
_RESET_FLAGS = {
    wire.RESET_CONNECT_TIMEOUT: agent_chain.RESPONSE_FLAG_UPSTREAM_CONNECTION_FAILURE,
    wire.RESET_TERMINATION: agent_chain.RESPONSE_FLAG_UPSTREAM_CONNECTION_TERMINATION,
    wire.RESET_PROTOCOL: agent_chain.RESPONSE_FLAG_UPSTREAM_PROTOCOL_ERROR,
    wire.RESET_REMOTE: agent_chain.RESPONSE_FLAG_UPSTREAM_REMOTE_RESET,
    wire.RESET_REFUSED: agent_chain.RESPONSE_FLAG_UPSTREAM_REMOTE_RESET,
    wire.RESET_OVERFLOW: agent_chain.RESPONSE_FLAG_UPSTREAM_OVERFLOW,
}


def reset_flags(reset_reason: str) -> int:
    """The response.flags bit Envoy's router sets for an upstream reset with this reason (before or after the
    response started)."""
    if wire.is_connect_failure(reset_reason):
        return agent_chain.RESPONSE_FLAG_UPSTREAM_CONNECTION_FAILURE
    return _RESET_FLAGS.get(reset_reason, 0)


def note_client_gone(stream: agent_chain.Stream, answered: bool, *, reset: bool = False) -> None:
    """The client's connection ended before `stream` was answered (Envoy's response flag DC, details
    downstream_remote_disconnect) or, `reset`, the client reset the HTTP/2 stream (DR, http2.remote_reset): what
    the plugins' log callback reads."""
    if answered or stream.completed or stream.response_flags:
        return  # (a stream already failed otherwise, e.g. its upstream reset after the response began: not DC)
    if reset:
        stream.response_flags |= agent_chain.RESPONSE_FLAG_DOWNSTREAM_REMOTE_RESET
    else:
        stream.response_flags |= agent_chain.RESPONSE_FLAG_DOWNSTREAM_CONNECTION_TERMINATION
    if stream.code_details is None or stream.code_details == "via_upstream":
        stream.code_details = wire.DETAILS_H2_REMOTE_RESET if reset else wire.DETAILS_DOWNSTREAM_DISCONNECT


def note_reset_after_start(stream: agent_chain.Stream, reset_reason: str) -> None:
    """An upstream that failed after its response began, as Envoy's router records it for the log (the response
    is cut, not answered): response.flags gets the reset's bit, response.code_details
    upstream_reset_after_response_started{<reason>}."""
    stream.response_flags |= reset_flags(reset_reason)
    stream.code_details = wire.reset_details(reset_reason, started=True)


def reply_through_plugins(stream: agent_chain.Stream, reply: agent_chain.LocalReply) -> list[agent_chain.Output]:
    """A reply the proxy makes, sent through the plugins' response callbacks as Envoy's router sends its local
    replies (sendLocalReply from the last filter: every plugin that saw the request sees it); the stream's outputs
    for the shell, taken right here (its progress callback held off meanwhile)."""
    progress, stream.on_progress = stream.on_progress, None
    try:
        agent_chain.StreamControl(stream, len(stream.chain.filters) - 1).send_proxy_reply(reply)
    finally:
        stream.on_progress = progress
    return stream.take_outputs()


def failure_reply(reset_reason: str, *, head_passed: bool = False) -> tuple[int, bytes, str, int]:
    """The reply to a request its upstream failed before answering, as Envoy's router words it: (status, body,
    response.code_details, response.flags) -- 503 for a connect failure or a reset, 502 for a protocol error.
    `head_passed`: the upstream's response head had been passed to the plugins, one of which still holds it (the
    client got nothing yet): Envoy's router counts that as a response started (its details say
    upstream_reset_after_response_started), the reply is made all the same."""
    status = 502 if reset_reason == wire.RESET_PROTOCOL else 503
    details = wire.reset_details(reset_reason, started=head_passed)
    return status, wire.reset_body(reset_reason), details, reset_flags(reset_reason)


def log_refusal(stream: agent_chain.Stream, refusal: framing.Refusal, status: int) -> None:
    """The plugins' log of a request refused before its head reached them (`stream`: made for the log alone), as
    Envoy 1.40 gives it: response.code_details the refusal's, DPE for a codec error, the reply's status and
    headers when it was answered (`status`; 0 when the client left first). No other callback runs."""
    stream.code_details = refusal.details
    stream.response_flags |= refusal.flags
    if refusal.codec:
        stream.response_flags |= agent_chain.RESPONSE_FLAG_DOWNSTREAM_PROTOCOL_ERROR
    if status:
        reply = agent_chain.LocalReply(status, body=refusal.body, details=refusal.details)
        stream.response_headers[:] = agent_chain.local_reply_headers(reply, grpc=False)[0]
    stream.complete()


class Exchange:
    """One request/response through the proxy; the `Sink` of its upstream connection."""

    __slots__ = (
        "body_bytes_buffered",
        "body_pending",
        "chunked_in",
        "conn",
        "deadline",
        "end_by",
        "has_body",
        "head",
        "http11",
        "idle_s",
        "keep_alive",
        "method",
        "pool",
        "refusal",
        "reply",
        "req_done",
        "req_tail",
        "resp_done",
        "resp_mode",
        "resp_started",
        "retried",
        "sent_at",
        "started_at",
        "status",
        "timeout_s",
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
        self.req_tail = wire.LAST_CHUNK  # what ends a chunked upstream request (with the trailers, if any)
        #: refused while queued behind another (a parse error, a timeout): answered so when its turn comes
        self.refusal: framing.Refusal | None = None
        self.body_pending: list[bytes] = []
        self.body_bytes_buffered = 0
        self.up: Upstream | None = None
        self.resp_started = False
        self.resp_done = False
        self.resp_mode = 0  # 0 raw, 1 re-chunk, 2 close-delimited
        self.status = 0
        #: loop time by which the upstream response must have ended (0: no deadline); the connection's one
        #: timer checks it (Downstream.timer): no timer handle per request
        self.deadline = 0.0
        #: loop time by which the whole stream must have ended (max_stream_duration; 0: none) and its stream idle
        #: timeout (the HCM's or its route's), from its connection when its head was complete
        self.end_by = conn.duration_at
        self.idle_s = conn.idle_s
        self.started_at = conn.started_at  # its stream's start (loop time): what the duration limit counts from
        self.retried = False
        self.sent_at = 0.0  # loop time the request head went to the upstream (x-envoy-upstream-service-time)
        self.up_end = False  # the whole request has been handed to the upstream side
        self.up_eof_ends = False  # the upstream response is close-delimited: its EOF ends the body
        #: the cluster the route chose (None until routed) and the route's timeout (0: none)
        self.pool: Pool | None = conn.pool
        self.timeout_s = conn.pool.cluster.response_timeout_s if conn.pool is not None else 0.0
        #: the route answers itself (status, body, details, response flags): a direct response or no route
        self.reply: tuple[int, bytes, str, int] | None = None

    # --- request side ---
    def start(self) -> None:
        """This exchange reached the head of its connection's queue: borrow a connection and send."""
        reply = self.reply
        if reply is not None:
            self.proxy_reply(*reply)
            return
        pool = self.pool
        assert pool is not None  # routed by the connection
        up = pool.take_idle()
        if up is not None:
            self.attach(up)
        else:
            self.conn.proxy.loop.create_task(self._connect(pool))

    async def _connect(self, pool: Pool, ep: Endpoint | None = None) -> None:
        try:
            up = await pool.connect(ep)
        except (OSError, TimeoutError) as exc:
            pool.stats.upstream_cx_connect_fail += 1
            log.debug("connect to cluster %s failed: %r", pool.cluster.name, exc)
            self.proxy_reply(*failure_reply(wire.connect_failure(exc)))
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
        self.sent_at = conn.proxy.loop.time()
        if self.body_pending or (self.up_end and self.chunked_in):
            parts = [self.head]
            for chunk in self.body_pending:
                if self.chunked_in:
                    parts += wire.chunk_parts(chunk)
                else:
                    parts.append(chunk)
            if self.up_end and self.chunked_in:
                parts.append(self.req_tail)
            conn.up_write_parts(up, parts)
            if self.body_pending:
                self.body_pending = []
                self.body_bytes_buffered = 0
                conn.resume(wire.PAUSE_BUFFER)
        else:
            conn.up_write(up, self.head)
        if self.up_end:
            self._arm_timer()

    def send_body(self, up: Upstream, chunk: bytes) -> None:
        """A request body chunk (not empty) to `up`: as is, or as a chunk of a chunked body (not copied when large)."""
        if self.chunked_in:
            self.conn.up_write_parts(up, wire.chunk_parts(chunk))
        else:
            self.conn.up_write(up, chunk)

    def request_body(self, chunk: bytes) -> None:
        up = self.up
        if up is not None and up.sink is self:
            self.send_body(up, chunk)
        elif not self.resp_done:
            self.body_pending.append(chunk)
            self.body_bytes_buffered += len(chunk)
            if self.body_bytes_buffered > limits.PROXY_BUFFER_HIGH_WATER:
                self.conn.pause(wire.PAUSE_BUFFER)

    def request_trailers(self, trailers: wire.Headers) -> None:
        """Trailers of a chunked request (before `request_complete`)."""
        self.req_tail = wire.last_chunk(trailers, self.trailers_enabled())

    def trailers_enabled(self) -> bool:
        """Whether the routed cluster takes request trailers (its enable_trailers)."""
        pool = self.pool
        return pool is not None and pool.cluster.enable_trailers

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
        timeout = self.timeout_s
        if timeout <= 0:
            return  # the route disables the timeout
        conn = self.conn
        self.deadline = deadline = conn.proxy.loop.time() + timeout
        conn.timer.wake_at(deadline)

    def _timed_out(self) -> None:
        self.deadline = 0.0
        self.conn.proxy.stats.upstream_rq_timeout += 1
        self._drop_upstream()
        if self.resp_started:
            self.conn.abort()
        else:
            self.proxy_reply(
                504, wire.BODY_TIMEOUT, wire.DETAILS_TIMEOUT, agent_chain.RESPONSE_FLAG_UPSTREAM_REQUEST_TIMEOUT
            )

    # --- Sink: response side ---
    def service_ms(self) -> int:
        """The router's x-envoy-upstream-service-time for a response arriving now (-1: suppressed)."""
        conn = self.conn
        if conn.state.suppress_envoy_headers:
            return -1
        return max(0, int((conn.proxy.loop.time() - self.sent_at) * 1000))

    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: Any) -> None:
        self.status = status
        self.up_eof_ends = wire.close_delimited(self.method, status, headers)
        headers = hcm.upstream_response(headers, self.service_ms())  # the router's, then the HCM's date/server
        self.conn.state.server.finish(headers)
        out = [b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown"))]  # Envoy's, not `reason`
        framed = False
        no_body = self.method == b"HEAD" or status in (204, 304)
        for name, value in headers:
            if name in wire.RESPONSE_DROPPED:
                if name == b"transfer-encoding":
                    framed = framed or no_body
                continue
            if name == b"content-length":
                framed = True
                if status == 204:  # Envoy's codec removes a 204's content-length (0: any other was refused)
                    continue
            out.append(b"%b: %b\r\n" % (name, value))
        self._send_head(out, bodiless=no_body or framed, empty=False)

    def _send_head(self, out: list[bytes], *, bodiless: bool, empty: bool) -> None:
        """Finish a response head: its framing (as received, re-chunked, content-length 0 when ``empty``, or
        close-delimited for HTTP/1.0), the connection header, the blank line; then send it in one write. A
        response that starts before its request was read to the end closes the connection (Envoy's HCM:
        Connection: close, downstream_rq_response_before_rq_complete)."""
        keep = self.keep_alive and (self.req_done or not self.has_body)
        keep = keep and not self.conn.proxy.draining and not self.conn.expired
        tail = b"\r\n"  # (after the connection header: Envoy's HCM sets that in the map, its codec the framing)
        if bodiless:
            self.resp_mode = 0
        elif empty:
            self.resp_mode = 0
            tail = b"content-length: 0\r\n\r\n"
        elif self.http11:
            self.resp_mode = 1
            tail = b"transfer-encoding: chunked\r\n\r\n"
        else:
            self.resp_mode = 2
            keep = False
        if not keep:
            self.keep_alive = False
            out.append(b"connection: close\r\n")
        elif not self.http11:
            out.append(b"connection: keep-alive\r\n")
        out.append(tail)
        self.resp_started = True
        self.conn.write(b"".join(out))

    def up_body(self, data: bytes) -> None:
        if self.resp_mode == 1:
            if data:
                self.conn.write_parts(wire.chunk_parts(data))
        else:
            self.conn.write(data)

    def up_trailers(self, trailers: wire.Headers) -> None:
        if self.resp_mode == 1:  # re-chunked: the trailers go in its last chunk (otherwise there is no place)
            self.conn.write(wire.last_chunk(trailers, self.conn.opts.enable_trailers))
            self.resp_mode = 0

    def up_complete(self) -> None:
        if self.resp_mode == 1:
            self.conn.write(wire.LAST_CHUNK)
        up, self.up = self.up, None
        if up is not None:
            if self.up_end:
                up.pool.release(up)
            else:
                up.close()
        self._finish()

    def up_failed(self, reset_reason: str) -> None:
        if self.up_eof_ends and reset_reason == wire.RESET_TERMINATION:
            self.up_complete()  # close-delimited body: end of connection is end of body
            return
        up, self.up = self.up, None
        if self.resp_started:  # what was written of the response goes out first (as Envoy), then the close
            self.reset_after_start(reset_reason)
            self.conn.proxy.stats.upstream_rq_reset += 1
            self._cancel_timer()
            self.conn.close_after_reset()
            return
        if (
            up is not None
            and up.reused
            and not up.got_bytes
            and not self.has_body
            and not self.retried
            and reset_reason == wire.RESET_TERMINATION
        ):
            # the app closed an idle pooled connection as we reused it: retry once on a fresh one
            self.retried = True
            self.conn.proxy.stats.upstream_rq_retry_stale += 1
            self._cancel_timer()
            self.conn.proxy.loop.create_task(self._connect(up.pool))
            return
        self.conn.proxy.stats.upstream_rq_reset += 1
        self.proxy_reply(*failure_reply(reset_reason, head_passed=self.status >= 200))

    def reset_after_start(self, reset_reason: str) -> None:
        """The upstream failed after the response began (plugins' response.flags / code_details: only a filtered
        exchange has plugins)."""

    def up_pause(self) -> None:
        self.conn.pause(wire.PAUSE_UPSTREAM_FULL)

    def up_resume(self) -> None:
        self.conn.resume(wire.PAUSE_UPSTREAM_FULL)

    # --- endings ---
    def _cancel_timer(self) -> None:
        self.deadline = 0.0

    def _drop_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            self.conn.discard_up(up)
            up.sink = None
            up.close()

    def proxy_reply(
        self, status: int, body: bytes, details: str, flags: int, *, log_flags: int = 0, grpc_status: int | None = None
    ) -> None:
        """A reply the proxy generates (connect failure, reset, timeout, refusal); `details`/`flags` describe it
        to plugins (response.code_details / response.flags), which only a filtered exchange has; `log_flags` are
        set once the reply went through them (their log reads them: Envoy's DPE for a codec error); `grpc_status`:
        a gRPC request's grpc-status when not the one its HTTP status maps to (only a filtered exchange answers
        gRPC requests in gRPC's form)."""
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
        keep = self.keep_alive and (self.req_done or not self.has_body) and not self.conn.proxy.draining
        self.keep_alive = keep
        out = [b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown"))]
        # in Envoy's order: a body's content-length and content-type (sendLocalReply), the reply's own headers,
        # date and server (the HCM), connection (the codec), then the codec's framing of an empty body:
        # content-length 0, or to a HEAD transfer-encoding chunked (it cannot know the length; no chunk follows)
        kept: list[tuple[bytes, bytes]] = [(b"content-length", b"%d" % len(body))] if body else []
        has_type = False
        for h in headers:
            name = h[0]
            if name in wire.HOP_BY_HOP or name == b"content-length":
                continue
            has_type = has_type or name == b"content-type"
            kept.append(h)
        if body and not has_type:
            kept.insert(1, (b"content-type", b"text/plain"))
        out += self.conn.state.server.lines(kept)
        if not keep:
            out.append(b"connection: close\r\n")
        if body:
            out.append(b"\r\n")
            if self.method != b"HEAD":
                out.append(body)
        else:
            out.append(
                b"transfer-encoding: chunked\r\n\r\n" if self.method == b"HEAD" else b"content-length: 0\r\n\r\n"
            )
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
        self.conn.exchange_done(
            self, reusable=self.keep_alive and (self.req_done or not self.has_body) and self.resp_mode != 2
        )

    def client_left(self) -> None:
        """The client ended its connection before this exchange was answered (`abandon` follows): a hook for the
        plugins' view of it."""

    def abandon(self) -> None:
        """The downstream connection went away."""
        self._cancel_timer()
        self.resp_done = True
        self._drop_upstream()
        self._ended()

    def _ended(self) -> None:
        """Hook: the exchange is over (answered or abandoned)."""
