"""One request/response through a plugin chain: `FilteredExchange`, the `Exchange` that feeds HTTP events to
a sans-IO `chain.Stream` and performs its outputs (send headers/data/trailers upstream or downstream, abort
the upstream, reset).

Created by `meshplug.agent.downstream.Downstream` when the proxy has an active chain (`Proxy.filters`); an
exchange keeps the chain it started with, so in-flight requests finish on the old chain after a push swaps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, hcm, routing, wire
from meshplug.agent.config import Route
from meshplug.agent.exchange import Exchange, note_client_gone, note_reset_after_start, reply_through_plugins
from meshplug.agent.upstream import Upstream

if TYPE_CHECKING:
    from meshplug.agent.downstream import Downstream

log = logging.getLogger("meshplug.agent.filtered")


_SendHeaders = agent_chain.SendHeaders
_SendData = agent_chain.SendData
_SendTrailers = agent_chain.SendTrailers
_AbortUpstream = agent_chain.AbortUpstream
_UPSTREAM: Final = agent_chain.Target.UPSTREAM
#: the local reply when a plugin's header cannot be written (Envoy: "invalid header value")
INVALID_HEADER: Final = b"invalid header value"
#: the clocks as constants (compiled, a name imported from a module is a dictionary lookup per call)
_time_ns: Final = time.time_ns
_monotonic_ns: Final = time.monotonic_ns
#: what an exchange holds where its head lines / request header list were once used (shared, never changed: an
#: empty list per request costs an allocation)
_NO_LINES: Final[list[bytes]] = []
_NO_HEADERS: Final[wire.Headers] = []


def _unchanged(headers: wire.Headers, fed: tuple[tuple[bytes, bytes], ...]) -> bool:
    """`headers` holds the entries of `fed`, in order (each the same object, or an equal one): the chain handed
    the header list back as it got it. (Read as objects: compiled, a header typed as a tuple is unboxed and
    boxed anew, which loses its identity.)"""
    n = len(fed)
    if len(headers) != n:
        return False
    now = cast(list[object], headers)
    was = cast(tuple[object, ...], fed)
    for i in range(n):
        a = now[i]
        b = was[i]
        if a is not b and a != b:
            return False
    return True


def _starts_with(headers: tuple[tuple[bytes, bytes], ...], fed: tuple[tuple[bytes, bytes], ...]) -> bool:
    """The first len(`fed`) entries of `headers` are those of `fed` (the same objects or equal ones): a compare
    without the slice `headers[:n] == fed` would make."""
    n = len(fed)
    if len(headers) < n:
        return False
    now = cast(tuple[object, ...], headers)
    was = cast(tuple[object, ...], fed)
    for i in range(n):
        a = now[i]
        b = was[i]
        if a is not b and a != b:
            return False
    return True


def rewritten(headers: tuple[tuple[bytes, bytes], ...], route: Any) -> tuple[tuple[bytes, bytes], ...]:
    """The request headers as the router sends them after the route's prefix_rewrite: the new :path and
    x-envoy-original-path with the old one (Envoy's router adds it unless told to suppress its headers)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b":path":
            out.append((name, routing.rewrite_prefix(value, route)))
            out.append((b"x-envoy-original-path", value))
        elif name != b"x-envoy-original-path":
            out.append((name, value))
    return tuple(out)


def _down_head_lines(
    headers: tuple[tuple[bytes, bytes], ...], *, drop_empty: bool
) -> tuple[list[bytes], int, bool, int, bool] | None:
    """The HTTP/1.1 head of a response header list in the chain's form (a reply, or headers a plugin changed), in
    one pass: (lines with the status line first, status, framed, index of the first server line or -1, dated),
    pseudo-headers and hop-by-hop headers left out (`drop_empty`: content-length 0 too); None when a header cannot
    be written (CR, LF or NUL in a value, a name not a token)."""
    raw_status: bytes | None = None
    out = [b""]  # the status line, once :status is known
    framed = dated = False
    server_at = -1
    for name, value in headers:
        if not framing.field_ok(name, value):
            return None
        if name[:1] == b":":
            if name == b":status" and raw_status is None:
                raw_status = value
            continue
        if name in wire.RESPONSE_DROPPED:
            continue
        if name == b"content-length":
            if drop_empty and value == b"0":
                continue
            framed = True
        elif name == b"date":
            dated = True
        elif name == b"server" and server_at < 0:
            server_at = len(out)
        out.append(b"%b: %b\r\n" % (name, value))  # (a tuple literal: compiled, no generic formatting)
    try:
        status = int(raw_status or b"200")
    except ValueError:
        status = 502
    out[0] = b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown"))
    return out, status, framed, server_at, dated


class FilteredExchange(Exchange):
    """An exchange through a plugin chain: HTTP events go into a `chain.Stream`, its outputs are performed.

    Costs on top of `Exchange` when every plugin continues: the chain's own work, nothing else of note.
    The request and response heads are serialized in the same pass that builds the chain's header lists;
    when the chain hands back the same headers (compared by identity of the entries: cheap), those bytes
    are sent; headers plugins appended after the received ones are serialized alone. Body callbacks follow
    Envoy's HTTP/1 codec: the body bytes of one read reach the plugins as one chunk with end_stream=false
    when the read is parsed (or before the message's end), and the end of the message is a call of its own,
    an empty chunk with end_stream=true (none when trailers end it: they come instead).
    Upstream writes of one downstream read leave in one send (`Downstream.up_write`), downstream writes of
    one loop iteration in one send (`Downstream.write`); no task or future unless a plugin pauses.
    """

    __slots__ = (
        "fed_end",
        "proxy_made",
        "req_at",
        "req_authority",
        "req_fed",
        "req_framed",
        "req_hold",
        "req_path",
        "req_trailers",
        "request_headers",
        "resp_dated",
        "resp_end_fed",
        "resp_fed",
        "resp_framed",
        "resp_hold",
        "resp_lines",
        "resp_server_at",
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
        headers: wire.Headers,
        framed: bool,
    ) -> None:
        super().__init__(conn, method, b"", keep_alive, has_body)
        self.stream = stream = chain.new_stream(conn.stream_info(), start_time_ns=_time_ns())
        stream.on_progress = self._progress
        stream.route_resolver = conn.resolve
        stream.route_constant = conn.routes.constant  # (the one decision of a route table without choices)
        self.request_headers = headers  # in the chain's form (pseudo-headers first), fed at `start`
        self.req_fed: tuple[tuple[bytes, bytes], ...] = ()  # what the chain got, to recognise it unchanged
        # the upstream head of `request_headers` unchanged, written when it goes upstream (a local reply never
        # writes it): its request line's target and host, and where the received headers begin (-1: none, or
        # used); set by the parser (meshplug.agent.h1request)
        self.req_path = b""
        self.req_authority = b""
        self.req_at = -1
        self.req_framed = framed  # request_headers has content-length
        self.req_hold: bytes | None = None
        self.req_trailers: wire.Headers | None = None
        self.fed_end = False
        self.resp_fed: tuple[tuple[bytes, bytes], ...] = ()
        self.resp_lines = _NO_LINES
        self.resp_framed = False
        self.resp_server_at = -1  # the index of the server line in resp_lines (-1: none)
        self.resp_dated = False  # the upstream's response has a date
        self.resp_hold: bytes | None = None
        self.resp_end_fed = False
        self.proxy_made = False  # the response is a reply the proxy generated (counted as such once)

    # --- driving the chain ---
    def _progress(self, _stream: agent_chain.Stream) -> None:
        if wire.DEBUG[0]:
            log.debug("stream %d progressed", self.stream.id)
        self.conn.proxy.loop.call_soon(self._pump)

    def _pump(self) -> None:
        if not self.resp_done:
            self.perform(self.stream.take_outputs())

    def start(self) -> None:
        headers = self.request_headers
        self.request_headers = _NO_HEADERS
        fed = self.req_fed = tuple(headers)
        if not self.has_body:
            self.fed_end = True
        stream = self.stream
        # the list is the stream's from here (not copied); the chain hands it back as `stream.request_headers`
        if stream.pass_request_headers(headers, not self.has_body, own=True):
            sent = stream.request_headers
            self._send_up_headers(fed if _unchanged(sent, fed) else tuple(sent), not self.has_body)
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
        if held is None:
            self.req_hold = chunk
            self.conn.hold = self  # delivered when this read is parsed (or before the request's end)
        else:
            self.req_hold = held + chunk  # one read's body is one callback, as Envoy's codec dispatches it

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

    def request_trailers(self, trailers: wire.Headers) -> None:
        self.req_trailers = trailers

    def request_complete(self) -> None:
        self.req_done = True
        held, self.req_hold = self.req_hold, None
        if self.fed_end or self.resp_done:
            return
        self.fed_end = True
        stream = self.stream
        if held:
            self._request_data(held, False)
            if self.answered():  # a plugin answered on that chunk
                return
        trailers = self.req_trailers
        if trailers:
            self.perform(stream.recv_request_trailers(trailers))
        else:
            self._request_data(b"", True)  # the end on its own, an empty call (Envoy's onMessageComplete)

    def answered(self) -> bool:
        """The response is complete (read through a call: callbacks in between may have ended it)."""
        return self.resp_done

    def attach(self, up: Upstream) -> None:
        stream = self.stream
        stream.set_upstream_fields(up.upstream_fields())
        stream.upstream_sent_ns = _monotonic_ns()
        Exchange.attach(self, up)

    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: Any) -> None:
        self.status = status
        # an HTTP/2 response head with END_STREAM has no body either (Envoy frames it content-length 0)
        no_body = self.method == b"HEAD" or status in (204, 304) or status < 200 or parser is wire.END_STREAM
        self.resp_end_fed = no_body
        # the chain's form (names are lower-case already): :status first, hop-by-hop headers dropped; the
        # downstream head lines in the same pass. Built in the stream's own (empty) list when nothing ended the
        # stream before: the chain takes it as it is, no copy
        stream = self.stream
        chain_headers = stream.response_headers
        if chain_headers or stream.local_reply is not None or stream.reset is not None:
            chain_headers = []
        chain_headers.append((b":status", wire.STATUS_BYTES.get(status) or str(status).encode()))
        lines: list[bytes] = [b""]  # the status line's place (written when the head goes downstream)
        framed = chunked = dated = False
        server_at = -1
        for h in hcm.upstream_response(headers, self.service_ms()):  # the router's, before the plugins
            name = h[0]
            if name in wire.RESPONSE_DROPPED:
                if name == b"transfer-encoding" and b"chunked" in h[1].lower():
                    chunked = True
                continue
            if name == b"content-length":
                framed = True
                if status == 204:  # Envoy's codec removes a 204's content-length (0: any other was refused)
                    continue
            elif name == b"date":
                dated = True
            elif name == b"server" and server_at < 0:
                server_at = len(lines)
            chain_headers.append(h)
            lines.append(b"%b: %b\r\n" % (name, h[1]))  # (a tuple literal: compiled, no generic formatting)
        self.up_eof_ends = not (no_body or framed or chunked)  # wire.close_delimited
        fed = self.resp_fed = tuple(chain_headers)
        self.resp_lines = lines
        self.resp_framed = framed
        self.resp_server_at = server_at
        self.resp_dated = dated
        if stream.pass_response_headers(chain_headers, no_body):
            if not self.resp_done:
                sent = stream.response_headers
                self._send_down_headers(fed if _unchanged(sent, fed) else tuple(sent), no_body)
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
        if held is not None:
            self.resp_hold = held + data  # one read's body is one callback, as Envoy's codec dispatches it
            return
        self.resp_hold = data
        if self.up is not None:
            self.up.flush_sink = self  # delivered when this read is parsed (or before the message's end)
        else:
            self.up_flush()

    def up_flush(self) -> None:
        held, self.resp_hold = self.resp_hold, None
        if held is not None and not self.resp_done:
            conn = self.conn
            if conn.serve_at:  # the upstream's bytes keep the stream idle timer off, held by a plugin or not (Envoy)
                conn.active_at = conn.loop.time()
            self._response_data(held, False)

    def up_trailers(self, trailers: wire.Headers) -> None:
        held, self.resp_hold = self.resp_hold, None
        if self.resp_done or self.resp_end_fed:
            return
        self.resp_end_fed = True
        stream = self.stream
        stream.upstream_done_ns = _monotonic_ns()
        if held:
            self._response_data(held, False)
        if not self.resp_done:
            self.perform(stream.recv_response_trailers([h for h in trailers if h[0] not in wire.NOT_TRAILERS]))

    def up_complete(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.flush_sink = None
            if self.up_end:
                up.pool.release(up)
            else:
                up.close()
        held, self.resp_hold = self.resp_hold, None
        if not self.resp_end_fed and not self.resp_done:
            self.resp_end_fed = True
            self.stream.upstream_done_ns = _monotonic_ns()
            if held:
                self._response_data(held, False)
                if self.answered():
                    return
            self._response_data(b"", True)  # the end on its own, an empty call (Envoy's onMessageComplete)

    def reset_after_start(self, reset_reason: str) -> None:
        note_reset_after_start(self.stream, reset_reason)

    def proxy_reply(
        self, status: int, body: bytes, details: str, flags: int, *, log_flags: int = 0, grpc_status: int | None = None
    ) -> None:
        """Through the plugins' response callbacks, as Envoy's router sends its local replies
        (sendLocalReply from the last filter: every plugin that saw the request sees the reply); `log_flags`
        join the flags after them, for the log."""
        stream = self.stream
        if (
            self.resp_done
            or self.conn.closed
            or self.resp_started
            or stream.completed
            or stream.reset is not None
            or stream.local_reply is not None
        ):
            if not stream.completed:
                stream.response_flags |= log_flags
            self.local_reply(status, body)  # aborts or answers directly
            return
        self._cancel_timer()
        self._drop_upstream()
        self.up_end = True
        self.conn.proxy.stats.downstream_rq_local_reply += 1
        self.proxy_made = True
        stream.response_flags |= flags
        reply = agent_chain.LocalReply(status, body=body, details=details, grpc_status=grpc_status)
        outputs = reply_through_plugins(stream, reply)
        stream.response_flags |= log_flags
        self.perform(outputs)

    def client_left(self) -> None:
        """The client went away before its answer was complete: its plugins log the stream as Envoy does (DC,
        downstream_remote_disconnect)."""
        note_client_gone(self.stream, self.resp_done)

    def _ended(self) -> None:
        stream = self.stream
        stream.complete()
        stream.on_progress = None  # the exchange <-> stream cycle ends here: freed by refcount, not by the GC

    # --- performing outputs ---
    def perform(self, outputs: list[agent_chain.Output]) -> None:  # noqa: PLR0912 - one branch per chain output type
        if wire.DEBUG[0]:
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
                if not self.proxy_made:  # a plugin's local reply (the proxy's own are counted in proxy_reply)
                    self.conn.proxy.stats.downstream_rq_local_reply += 1
            else:  # ResetStream
                self.conn.abort()
                return

    def _send_up_headers(self, headers: tuple[tuple[bytes, bytes], ...], end_stream: bool) -> None:
        # the router: the route the stream resolved (or resolves now, on the headers the plugins left)
        decision: routing.Decision | None = self.stream.route()  # (typed: its fields read directly)
        reply = routing.router_reply(decision)
        if reply is not None:
            self.proxy_reply(*reply)
            return
        assert decision is not None and decision.route is not None
        route = decision.route
        pool = self.pool = self.conn.state.pools[decision.cluster]
        timeout_s = self.timeout_s = route.timeout_s  # (read once: a route is an interpreted object)
        headers = self.route_limits(route, headers)
        if route.prefix_rewrite is not None:
            headers = rewritten(headers, route)
        at = self.req_at
        if at >= 0 and headers == self.req_fed:  # unchanged: the request as received (its headers are valid)
            out = [b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (self.method, self.req_path, self.req_authority)]
            for i in range(at, len(headers)):
                h = headers[i]
                out.append(b"%b: %b\r\n" % (h[0], h[1]))  # (a tuple literal: compiled, no generic formatting)
            has_length = self.req_framed
        else:
            lines = self._up_head_lines(headers)
            if lines is None:  # a plugin set a header that cannot be written (CR, LF, NUL, not a token)
                self.local_reply(503, INVALID_HEADER)
                return
            out = lines
            has_length = any(name == b"content-length" for name, _ in headers)
        self.req_at = -1  # (used once: a second head is built from its headers)
        expected = hcm.expected_timeout(timeout_s, suppressed=self.conn.state.suppress_envoy_headers)
        if expected is not None:
            out.append(b"%b: %b\r\n" % (expected[0], expected[1]))
        if not end_stream and not has_length:
            self.chunked_in = True
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        self.head = b"".join(out)
        self.up_end = end_stream
        up = pool.take_idle()
        if up is not None:
            self.attach(up)
        else:  # the router picked the host: plugins read it (upstream.address/port) before it connects, as Envoy's
            ep = pool.endpoint()
            self.stream.set_upstream_fields(
                {
                    "upstream_address": ep.address,
                    "upstream_port": ep.port,
                    "upstream_local_address": "",
                    "upstream_local_port": 0,
                }
            )
            self.conn.proxy.loop.create_task(self._connect(pool, ep))

    def route_limits(self, route: Route, headers: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, bytes], ...]:
        """The router picked `route` for the request headers a plugin changed (it cleared the route cache): the
        stream's limits are read again from it (`Downstream.route_refreshed`); the headers to send."""
        stream = self.stream
        if not stream.route_refreshed:
            return headers
        stream.route_refreshed = False
        if not self.conn.state.route_limits:
            return headers
        return self.conn.route_refreshed(self, route, headers)

    def _up_head_lines(self, headers: Sequence[tuple[bytes, bytes]]) -> list[bytes] | None:
        """The upstream head of headers a plugin changed; None when one of them cannot be written."""
        head = framing.request_head_lines(headers, self.method, wire.REQUEST_HOP_BY_HOP)
        if head is None:
            return None
        self.method, out = head
        return out

    def _send_up_data(self, data: bytes, end_stream: bool) -> None:
        up = self.up
        attached = up is not None and up.sink is self
        if data:
            if attached and up is not None:
                self.send_body(up, data)
            else:
                self.body_pending.append(data)
        if end_stream and not self.up_end:
            self.up_end = True
            if attached:
                self._request_sent()

    def _send_up_trailers(self, trailers: tuple[tuple[bytes, bytes], ...]) -> None:
        if self.chunked_in:  # a request sent with content-length has no place for trailers
            self.req_tail = wire.last_chunk(trailers, self.trailers_enabled())
        self._send_up_data(b"", True)

    def _send_down_headers(self, headers: tuple[tuple[bytes, bytes], ...], end_stream: bool) -> None:
        fed = self.resp_fed
        n = len(fed)
        server = self.conn.state.server
        fed_lines = self.resp_lines
        # the received headers, maybe with some appended: serialize only those, after the lines built (used once)
        if n and fed_lines is not _NO_LINES and _starts_with(headers, fed):
            self.resp_lines = _NO_LINES
            status = self.status
            out = fed_lines
            out[0] = b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown"))
            framed = self.resp_framed
            server_at = self.resp_server_at
            dated = self.resp_dated
            for i in range(n, len(headers)):
                name, value = headers[i]
                if name[:1] == b":" or name in wire.RESPONSE_DROPPED:
                    continue
                if not framing.field_ok(name, value):
                    self.local_reply(502, INVALID_HEADER)
                    return
                framed = framed or name == b"content-length"
                dated = dated or name == b"date"
                if name == b"server" and server_at < 0:
                    server_at = len(out)
                out.append(b"%b: %b\r\n" % (name, value))
            server.finish_lines(out, server_at, dated=dated)  # the HCM's date and server, after the plugins
        else:
            # a bodiless local reply: its content-length 0 is the codec's, written after the connection header
            head = _down_head_lines(headers, drop_empty=end_stream and self.stream.local_reply is not None)
            if head is None:
                self.local_reply(502, INVALID_HEADER)
                return
            out, status, framed, server_at, dated = head
            server.finish_lines(out, server_at, dated=dated)  # the HCM's date and server, after the plugins
            self.status = status
        no_body = self.method == b"HEAD" or status in (204, 304)
        self._send_head(out, bodiless=no_body or framed, empty=end_stream)
        if end_stream:
            self._finish()

    def _send_down_data(self, data: bytes, end_stream: bool) -> None:
        conn = self.conn
        if data:
            if self.resp_mode == 1:
                conn.write_parts(wire.chunk_parts(data))
            else:
                conn.write(data)
        if end_stream:
            if self.resp_mode == 1:
                conn.write(wire.LAST_CHUNK)
            self._finish()

    def _send_down_trailers(self, trailers: tuple[tuple[bytes, bytes], ...]) -> None:
        if self.resp_mode == 1:
            self.conn.write(wire.last_chunk(trailers, self.conn.opts.enable_trailers))
            self.resp_mode = 0
        self._finish()
