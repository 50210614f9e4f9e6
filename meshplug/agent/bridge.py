"""An HTTP/1.1 request to a cluster that speaks HTTP/2: `H2UpExchange`, the `FilteredExchange` whose upstream
side is a stream (`meshplug.agent.relay.H2Request`) instead of a keep-alive connection.

Created by `meshplug.agent.downstream.Downstream` for listeners whose cluster has `http2: true`, with or
without plugins (no plugins: an empty chain, which passes every event through). The request's header list is
already in the chain's form (pseudo-headers first, Host folded into :authority, hop-by-hop headers dropped),
which is what an HTTP/2 request is made of; the response arrives per DATA frame through the same `Sink`
callbacks an HTTP/1.1 connection uses, and leaves as HTTP/1.1 (chunked when it has no length, trailers in the
last chunk).
"""

from __future__ import annotations

from collections.abc import Sequence

from meshplug.agent import chain as agent_chain
from meshplug.agent import hcm, relay, routing, wire
from meshplug.agent.exchange import failure_reply
from meshplug.agent.filtered import FilteredExchange, rewritten

#: what plugins see when there are none: every event passes through
EMPTY_CHAIN = agent_chain.Chain([])


class H2UpExchange(FilteredExchange):
    """A filtered exchange whose upstream is an HTTP/2 stream."""

    __slots__ = ("req",)

    req: relay.H2Request | None

    def _send_up_headers(self, headers: tuple[tuple[bytes, bytes], ...], end_stream: bool) -> None:
        decision = self.stream.route()  # the router, as FilteredExchange's
        reply = routing.router_reply(decision)
        if reply is not None:
            self.proxy_reply(*reply)
            return
        assert decision is not None and decision.route is not None
        route = decision.route
        h2pool = self.conn.proxy.h2pools.get(decision.cluster)
        if h2pool is None:  # plugins re-routed an HTTP/2 exchange to an HTTP/1.1 cluster: not supported
            self.proxy_reply(503, wire.reset_body(wire.RESET_PROTOCOL), "cluster_protocol_changed", 0)
            return
        self.timeout_s = route.timeout_s
        headers = self.route_limits(route, headers)
        if route.prefix_rewrite is not None:
            headers = rewritten(headers, route)
        self.up_end = end_stream
        out = h2_request_headers(headers)
        expected = hcm.expected_timeout(route.timeout_s, suppressed=self.conn.state.suppress_envoy_headers)
        if expected is not None:
            out.append(expected)
        self.sent_at = self.conn.proxy.loop.time()  # x-envoy-upstream-service-time counts from here
        req = self.req = relay.H2Request(h2pool, self)
        req.send_headers(out, end_stream)
        pending, self.body_pending = self.body_pending, []
        self.body_bytes_buffered = 0
        for chunk in pending:
            req.send_data(chunk, False)
        if end_stream:
            self._arm_timer()

    def _send_up_data(self, data: bytes, end_stream: bool) -> None:
        req = getattr(self, "req", None)
        if req is None:
            if data:
                self.body_pending.append(data)
            return
        if self.up_end:
            return
        if data or end_stream:
            req.send_data(data, end_stream)
        if end_stream:
            self.up_end = True
            self._arm_timer()

    def _send_up_trailers(self, trailers: tuple[tuple[bytes, bytes], ...]) -> None:
        req = getattr(self, "req", None)
        if req is None or self.up_end:
            return
        req.send_trailers(trailers)
        self.up_end = True
        self._arm_timer()

    def _drop_upstream(self) -> None:
        req = getattr(self, "req", None)
        self.req = None
        if req is not None:
            req.cancel()

    def attach(self, up: object) -> None:
        raise AssertionError("an HTTP/2 cluster's exchange has no HTTP/1.1 connection")

    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: object) -> None:
        req = getattr(self, "req", None)
        if req is not None:
            self.stream.set_upstream_fields(req.upstream_fields())
        super().up_headers(status, reason, headers, parser)
        # an HTTP/2 response ends with END_STREAM, never with its connection: without a length it is still not
        # close-delimited, and a connection lost before END_STREAM cuts it (Envoy: the client sees no last chunk)
        self.up_eof_ends = False

    def up_failed(self, reset_reason: str) -> None:
        self.req = None
        if wire.is_connect_failure(reset_reason):
            self.proxy_reply(*failure_reply(reset_reason))
            return
        super().up_failed(reset_reason)


def h2_request_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A chain-form request head as an HTTP/2 request: no hop-by-hop headers but TE: trailers, no Host
    (:authority has it)."""
    return [h for h in headers if (h[0] not in wire.HOP_BY_HOP and h[0] != b"host") or h == (b"te", b"trailers")]
