"""One stream of the agent's HTTP/2 downstream (`meshplug.agent.h2down.H2Downstream`) as one request/response
through the proxy: `H2Exchange`.

The request runs through the listener's active plugin chain (as `chain.Stream` events: request headers with
their pseudo-headers as received, body callbacks per DATA frame with the frame's END_STREAM, trailers both ways)
and goes to the listener's cluster over HTTP/1.1 or HTTP/2 (`meshplug.agent.relay`); the exchange is the sink of
that upstream request and writes the response back on its connection. Local replies are Envoy's
(`chain.local_reply_headers`): a gRPC request (content-type application/grpc) gets a trailers-only response -- one
HEADERS frame with END_STREAM carrying :status 200, grpc-status and grpc-message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import h2.errors

from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, h2peer, hcm, relay, routing, streamtimeouts, wire
from meshplug.agent.config import Route
from meshplug.agent.exchange import (
    failure_reply,
    log_refusal,
    note_client_gone,
    note_reset_after_start,
    reply_through_plugins,
)
from meshplug.agent.streamapi import RESPONSE_FLAG_STREAM_IDLE_TIMEOUT

if TYPE_CHECKING:
    from meshplug.agent.h2down import H2Downstream

Header = tuple[bytes, bytes]

#: response headers that are meaningless (and forbidden) in HTTP/2
_NOT_H2: Final = wire.HOP_BY_HOP
#: the local reply when a plugin's header cannot be written (Envoy: "invalid header value")
INVALID_HEADER: Final = b"invalid header value"


def response_headers(status: int, headers: Sequence[Header]) -> list[Header]:
    """An upstream response head as HTTP/2 sends it: :status first, hop-by-hop headers dropped."""
    out: list[Header] = [(b":status", wire.STATUS_BYTES.get(status) or str(status).encode())]
    out += [h for h in headers if h[0] not in _NOT_H2]
    return out


#: how a stream ended on the client's side (H2Exchange.peer_reset)
BY_CLOSE: Final = 0
BY_RESET: Final = 1
BY_CODEC: Final = 2
BY_US: Final = 3  # the agent closed the connection


class H2Exchange:
    """One stream: request in (chain optional), to the cluster, response back; the sink of its upstream."""

    __slots__ = (
        "conn",
        "created",
        "deadline",
        "end_by",
        "end_in",
        "fragment",
        "grpc",
        "head",
        "idle_s",
        "last_active",
        "method",
        "out",
        "proxy_made",
        "req_done",
        "resp_done",
        "resp_end_fed",
        "resp_started",
        "sent_at",
        "status",
        "stream",
        "timeout_s",
        "unacked",
        "unroutable",
        "up",
        "up_end",
        "up_paused",
    )

    def __init__(self, conn: H2Downstream, stream_id: int, headers: list[Header], end_stream: bool) -> None:
        self.conn = conn
        self.out = h2peer.OutStream(stream_id)
        self.head = headers
        self.method = b"GET"
        asterisk = fragment = False
        seen = 0
        for name, value in headers:  # the pseudo-headers come first
            if name == b":method":
                self.method = value
                seen += 1
            elif name == b":path":
                asterisk = value == b"*"
                fragment = 35 in value  # "#"
                seen += 1
            if seen == 2:
                break
        # no route serves CONNECT (Envoy matches it only with a connect_matcher) nor the asterisk form (OPTIONS *):
        # the router's 404 once the plugins have seen the request, as Envoy answers both
        self.unroutable = asterisk or self.method == b"CONNECT"
        self.fragment = fragment
        self.grpc = agent_chain.is_grpc_request(headers)
        self.end_in = end_stream  # the client's side of the stream ended
        self.req_done = end_stream
        self.up: relay.UpRequest | None = None
        self.up_end = False  # everything of the request went to the upstream
        self.up_paused = False
        self.unacked = 0
        self.stream: agent_chain.Stream | None = None
        self.status = 0
        self.resp_started = False
        self.resp_done = False
        self.resp_end_fed = False
        self.proxy_made = False
        self.deadline = 0.0
        self.timeout_s = 0.0  # the route's (0: none)
        self.created = self.last_active = conn.proxy.loop.time()
        #: the duration deadline (0: none) and stream idle timeout: the HCM's unless the route sets its own (`start`)
        opts = conn.proxy.cfg.http
        self.end_by = self.created + opts.max_stream_duration_s if opts.max_stream_duration_s else 0.0
        self.idle_s = opts.stream_idle_timeout_s
        self.sent_at = 0.0  # loop time the request went to the upstream (x-envoy-upstream-service-time)

    # --- request side ---
    def start(self) -> None:
        conn = self.conn
        state = conn.state
        if self.fragment:  # Envoy's HCM refuses a :path with a fragment before its filters (400, no body)
            self._refuse(framing.Refusal(400, b"", framing.PATH_NORMALIZATION, codec=False))
            return
        # Envoy's header map and request mutations, as on HTTP/1.1 (hcm); the codec refused TE but trailers
        headers = self.head = hcm.sanitize_request(self.head, upgrade=False)
        hcm.add_forwarded(headers, b"https" if conn.tls else b"http", request_id=state.config.generate_request_id)
        if state.route_limits and not self.unroutable:  # (meshplug.agent.streamtimeouts)
            route = conn.resolve(headers).route
            if route is not None:
                self.end_by, self.idle_s = streamtimeouts.limits_of(route, conn.proxy.cfg.http, self.created, headers)
                for at in (self.end_by, self.idle_s and self.last_active + self.idle_s):
                    if at:
                        conn.timer.wake_at(at)
        filters = state.filters
        end = self.req_done
        if filters is None:
            self._send_up_headers(headers, end)
            return
        stream = self.stream = filters.new_stream(conn.stream_info(), start_time_ns=time.time_ns())
        stream.on_progress = self._progress
        stream.route_resolver = conn.resolve
        self.perform(stream.recv_request_headers(headers, end))

    def _refuse(self, refusal: framing.Refusal) -> None:
        """Answer `refusal` past the plugins; they log the request (as Envoy: its filter chain is made for the
        local reply, a wasm filter's context only for the log callback)."""
        filters = self.conn.state.filters
        log_only = (
            None if filters is None else filters.new_stream(self.conn.stream_info(), start_time_ns=time.time_ns())
        )
        self.local_reply(refusal.status, refusal.body)
        if log_only is not None:
            log_refusal(log_only, refusal, self.status)

    def request_data(self, data: bytes, end_stream: bool) -> None:
        self.last_active = self.conn.proxy.loop.time()
        if end_stream:
            self.req_done = True
        if self.resp_done:
            return
        stream = self.stream
        if stream is None:
            self._send_up_data(data, end_stream)
        else:
            self.perform(stream.recv_request_data(data, end_stream))

    def request_trailers(self, trailers: list[Header]) -> None:
        self.last_active = self.conn.proxy.loop.time()
        self.req_done = True
        if self.resp_done:
            return
        stream = self.stream
        if stream is None:
            self._send_up_trailers(trailers)
        else:
            self.perform(stream.recv_request_trailers(trailers))

    def _send_up_headers(self, headers: Sequence[Header], end_stream: bool) -> None:
        if self.stream is not None and not all(framing.field_ok(n, v) for n, v in headers):
            # a plugin set a header no protocol can carry (CR, LF, NUL, not a token): as the HTTP/1.1 path
            self.local_reply(503, INVALID_HEADER)
            return
        conn = self.conn
        stream = self.stream
        decision: routing.Decision | None = None
        if not self.unroutable:
            decision = stream.route() if stream is not None else conn.resolve(list(headers))
        reply = routing.router_reply(decision)
        if reply is not None:
            self.proxy_reply(*reply)
            return
        assert decision is not None  # router_reply answers a missing decision (the router's 404)
        route = decision.route
        assert route is not None
        self.timeout_s = route.timeout_s
        if stream is not None and stream.route_refreshed:  # a plugin changed the headers: the router re-routed
            stream.route_refreshed = False
            if conn.state.route_limits:
                headers = self._refresh_limits(route, headers)
        if route.prefix_rewrite is not None:
            headers = [
                *(
                    (n, routing.rewrite_prefix(v, route)) if n == b":path" else (n, v)
                    for n, v in headers
                    if n != b"x-envoy-original-path"
                ),
                *((b"x-envoy-original-path", v) for n, v in headers if n == b":path"),
            ]
        out = [h for h in headers if h[0] != b"te" or h[1].lower() == b"trailers"]
        expected = hcm.expected_timeout(route.timeout_s, suppressed=conn.state.suppress_envoy_headers)
        if expected is not None:
            out.append(expected)
        cluster = decision.cluster
        self.sent_at = conn.proxy.loop.time()
        up = self.up = relay.open_request(conn.state.pools[cluster], conn.proxy.h2pools.get(cluster), self)
        up.send_headers(out, end_stream)
        if end_stream:
            self._request_sent()

    def _refresh_limits(self, route: Route, headers: Sequence[Header]) -> list[Header]:
        """The router picked `route` after a plugin cleared the route cache: as Envoy's HCM when it caches a route
        again, the duration limit is computed anew (from the stream's start) and a route's idle_timeout replaces
        the stream idle timeout, counted from now (meshplug.agent.streamtimeouts). Returns the headers to send (a
        gRPC request's grpc-timeout may change)."""
        conn = self.conn
        fields = list(headers)
        self.end_by, idle = streamtimeouts.limits_of(route, conn.proxy.cfg.http, self.created, fields)
        if route.idle_timeout_s is not None:
            self.idle_s = idle
            self.last_active = conn.proxy.loop.time()
        for at in (self.end_by, self.idle_s and self.last_active + self.idle_s):
            if at:
                conn.timer.wake_at(at)
        return fields

    def _send_up_data(self, data: bytes, end_stream: bool) -> None:
        up = self.up
        if up is None or self.up_end:
            return
        up.send_data(data, end_stream)
        if end_stream:
            self._request_sent()

    def _send_up_trailers(self, trailers: Sequence[Header]) -> None:
        up = self.up
        if up is None or self.up_end:
            return
        up.send_trailers(trailers)
        self._request_sent()

    def _request_sent(self) -> None:
        self.up_end = True
        conn = self.conn
        if self.timeout_s <= 0:
            return  # the route disables the timeout
        self.deadline = deadline = conn.proxy.loop.time() + self.timeout_s
        conn.timer.wake_at(deadline)

    # --- Sink: the response ---
    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: Any) -> None:
        if self.resp_done:
            return
        self.last_active = self.conn.proxy.loop.time()
        if 100 <= status < 200:
            return
        self.status = status
        end = parser is wire.END_STREAM or self.method == b"HEAD" or status in (204, 304)
        self.resp_end_fed = end
        service_ms = max(0, int((self.last_active - self.sent_at) * 1000))
        if self.conn.state.suppress_envoy_headers:
            service_ms = -1
        hdrs = response_headers(status, hcm.upstream_response(headers, service_ms))
        stream = self.stream
        if stream is None:
            self._send_down_headers(hdrs, end)
            if end:
                self._finish()
            return
        if self.up is not None:
            stream.set_upstream_fields(self.up.upstream_fields())
        self.perform(stream.recv_response_headers(hdrs, end))

    def up_body(self, data: bytes) -> None:
        if self.resp_done or self.resp_end_fed:
            return
        self.last_active = self.conn.proxy.loop.time()
        stream = self.stream
        if stream is None:
            self.conn.send_data(self.out, data, False)
        else:
            self.perform(stream.recv_response_data(data, False))

    def up_trailers(self, trailers: wire.Headers) -> None:
        if self.resp_done or self.resp_end_fed:
            return
        self.resp_end_fed = True
        trailers = [h for h in trailers if h[0] not in wire.NOT_TRAILERS]
        stream = self.stream
        if stream is None:
            self._send_down_trailers(trailers)
        else:
            self.perform(stream.recv_response_trailers(trailers))

    def up_complete(self) -> None:
        self.up = None
        if self.resp_done or self.resp_end_fed:
            return
        self.resp_end_fed = True
        stream = self.stream
        if stream is None:
            self._send_down_data(b"", True)
        else:
            self.perform(stream.recv_response_data(b"", True))

    def up_failed(self, reset_reason: str) -> None:
        self.up = None
        if self.resp_done:
            return
        stats = self.conn.proxy.stats
        if self.resp_started:
            stats.upstream_rq_reset += 1
            if self.stream is not None:
                note_reset_after_start(self.stream, reset_reason)
            self.conn.flush()  # as Envoy: the head and body given so far go out before the RST_STREAM
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        if not wire.is_connect_failure(reset_reason):
            stats.upstream_rq_reset += 1
        self.proxy_reply(*failure_reply(reset_reason, head_passed=self.status >= 200))

    def up_pause(self) -> None:
        self.up_paused = True

    def up_resume(self) -> None:
        if self.up_paused:
            self.up_paused = False
            if self.unacked:
                self.conn.ack(self.out.id, self.unacked)
                self.unacked = 0

    # --- the chain ---
    def _progress(self, _stream: agent_chain.Stream) -> None:
        self.conn.proxy.loop.call_soon(self._pump)

    def _pump(self) -> None:
        if not self.resp_done and self.stream is not None:
            self.perform(self.stream.take_outputs())

    def perform(self, outputs: list[agent_chain.Output]) -> None:  # noqa: PLR0912 - one branch per chain output type
        for o in outputs:
            if self.resp_done:
                return
            t = type(o)
            if t is agent_chain.SendData:
                d = cast(agent_chain.SendData, o)
                if d.target is agent_chain.Target.UPSTREAM:
                    self._send_up_data(d.data, d.end_stream)
                else:
                    self._send_down_data(d.data, d.end_stream)
            elif t is agent_chain.SendHeaders:
                h = cast(agent_chain.SendHeaders, o)
                if h.target is agent_chain.Target.UPSTREAM:
                    self._send_up_headers(list(h.headers), h.end_stream)
                else:
                    self._send_down_headers(h.headers, h.end_stream)
                    if h.end_stream:
                        self._finish()
            elif t is agent_chain.SendTrailers:
                tr = cast(agent_chain.SendTrailers, o)
                if tr.target is agent_chain.Target.UPSTREAM:
                    self._send_up_trailers(tr.trailers)
                else:
                    self._send_down_trailers(tr.trailers)
            elif t is agent_chain.AbortUpstream:
                self._drop_upstream()
                self.up_end = True
                self.deadline = 0.0
                if not self.proxy_made:  # a plugin's local reply (the proxy's own are counted where made)
                    self.conn.proxy.stats.downstream_rq_local_reply += 1
            else:  # ResetStream
                self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
                return

    # --- downstream writes ---
    def _send_down_headers(self, headers: Sequence[Header], end_stream: bool) -> None:
        if self.stream is not None and not all(framing.field_ok(n.lower(), v) for n, v in headers):
            self.local_reply(502, INVALID_HEADER)
            return
        out: list[Header] = []
        status = 0
        for raw_name, value in headers:
            if raw_name[:1] == b":":
                if raw_name == b":status" and not status:
                    try:
                        status = int(value)
                    except ValueError:
                        status = 502
                continue
            name = raw_name.lower()
            if name in _NOT_H2:
                continue
            out.append((name, value))
        status = status or 200
        self.status = status
        self.conn.state.server.finish(out)  # the HCM's date and server, after the plugins
        out.insert(0, (b":status", wire.STATUS_BYTES.get(status) or str(status).encode()))
        self.resp_started = True
        self.conn.send_headers(self.out, out, end_stream)

    def _send_down_data(self, data: bytes, end_stream: bool) -> None:
        self.conn.send_data(self.out, data, end_stream)
        if end_stream:
            self._finish()

    def _send_down_trailers(self, trailers: Sequence[Header]) -> None:
        out = [(n.lower(), v) for n, v in trailers if n[:1] != b":"]
        if self.stream is not None and not all(framing.field_ok(n, v) for n, v in out):
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        self.conn.send_trailers(self.out, out)
        self._finish()

    def _take_over_response(self) -> bool:
        """The proxy answers this stream itself: False when it cannot (the response is done, or started -- then the
        stream is reset); else the upstream is dropped and the reply counted."""
        if self.resp_done:
            return False
        if self.resp_started:
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            return False
        self._drop_upstream()
        self.up_end = True
        self.deadline = 0.0
        self.conn.proxy.stats.downstream_rq_local_reply += 1
        self.proxy_made = True
        return True

    def proxy_reply(self, status: int, body: bytes, details: str, flags: int, grpc_status: int | None = None) -> None:
        """A reply the proxy generates: through the plugins' response callbacks when there are plugins (as
        Envoy's router sends its local replies), else straight to the client (`local_reply`)."""
        stream = self.stream
        if stream is None or stream.completed or stream.reset is not None or stream.local_reply is not None:
            self.local_reply(status, body, grpc_status)
            return
        if not self._take_over_response():
            return
        stream.response_flags |= flags
        reply = agent_chain.LocalReply(status, body=body, details=details, grpc_status=grpc_status)
        self.perform(reply_through_plugins(stream, reply))

    def local_reply(self, status: int, body: bytes, grpc_status: int | None = None) -> None:
        """Answer straight to the client, past the plugins (a reply they cannot see: their own headers failed)."""
        if not self._take_over_response():
            return
        stream, self.stream = self.stream, None  # what follows is not shown to the plugins
        reply = agent_chain.LocalReply(status, body=body, grpc_status=grpc_status)
        headers, body = agent_chain.local_reply_headers(reply, grpc=self.grpc)
        self._send_down_headers([h for h in headers if h[0] != b"content-length" or body], not body)
        if body:
            self._send_down_data(body, True)
        else:
            self._finish()
        if stream is not None and not stream.completed:
            stream.complete()
            stream.on_progress = None

    def _drop_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.cancel()

    # --- endings ---
    def timed_out(self) -> None:
        self.deadline = 0.0
        self.conn.proxy.stats.upstream_rq_timeout += 1
        if self.resp_started:
            self._drop_upstream()
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            self.proxy_reply(
                504, wire.BODY_TIMEOUT, wire.DETAILS_TIMEOUT, agent_chain.RESPONSE_FLAG_UPSTREAM_REQUEST_TIMEOUT
            )

    def idle_timed_out(self) -> None:
        """No frame either way for the stream idle timeout: before the response started 408, or 504 once the
        client's request had ended (Envoy's maybeRequestTimeoutCode), else reset."""
        self.conn.proxy.stats.downstream_rq_idle_timeout += 1
        if self.resp_started:
            if self.stream is not None:  # what the plugins log (Envoy: SI, stream_idle_timeout)
                self.stream.code_details = "stream_idle_timeout"
                self.stream.response_flags |= RESPONSE_FLAG_STREAM_IDLE_TIMEOUT
            self._drop_upstream()
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            status = 504 if self.end_in else 408
            self.proxy_reply(status, b"stream timeout", "stream_idle_timeout", RESPONSE_FLAG_STREAM_IDLE_TIMEOUT)

    def duration_reached(self) -> None:
        """The stream outlived its duration limit (max_stream_duration): 408 while its request arrives, 504 once it
        ended, reset once its response started (Envoy's HCM: details max_duration_timeout, no response flag)."""
        self.end_by = 0.0
        self.conn.proxy.stats.downstream_rq_max_duration_reached += 1
        if self.resp_started:
            if self.stream is not None:
                self.stream.code_details = streamtimeouts.DETAILS
            self.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            status = 504 if self.end_in else 408
            self.proxy_reply(status, streamtimeouts.BODY, streamtimeouts.DETAILS, 0, streamtimeouts.GRPC_STATUS)

    def request_timed_out(self) -> None:
        """The request did not end within request_timeout, nor did its response start: 408 (Envoy's
        request_overall_timeout, no response flag)."""
        self.conn.proxy.stats.downstream_rq_timeout += 1
        self.proxy_reply(408, b"request timeout", "request_overall_timeout", 0)

    def reset(self, code: int) -> None:
        """Reset the stream towards the client (and drop the upstream side)."""
        if self.resp_done:
            return
        self._drop_upstream()
        self.conn.reset_stream(self.out, code)
        self._ended(counted=False)

    def peer_reset(self, by: int = BY_CLOSE) -> None:
        """The stream ended on the client's side: its connection closed (BY_CLOSE), its RST_STREAM (BY_RESET),
        or a stream error in its frames (BY_CODEC); or the agent closed the connection (BY_US)."""
        if self.resp_done:
            return
        if self.stream is not None and by in (BY_CLOSE, BY_RESET):
            note_client_gone(self.stream, self.resp_done, reset=by == BY_RESET)
        self._drop_upstream()
        self._ended(counted=False)

    def _finish(self) -> None:
        if self.resp_done:
            return
        self.conn.proxy.stats.count_status(self.status)
        if not self.end_in:
            # answered before the request ended: the rest of it is not wanted (RST_STREAM NO_ERROR)
            self.conn.reset_after_response(self.out)
        self._ended(counted=True)

    def _ended(self, *, counted: bool) -> None:
        self.resp_done = True
        self.deadline = 0.0
        stream = self.stream
        if stream is not None:
            stream.complete()
            stream.on_progress = None
        self.conn.stream_done(self)
