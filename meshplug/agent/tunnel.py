"""Upgraded HTTP/1.1 connections (WebSocket and any other protocol a listener allows in `upgrade_types`, as
Envoy's `upgrade_configs`): the request head goes to the cluster on a connection of its own, then bytes flow
both ways untouched until either side closes -- `Tunnel.start`.

Called by `meshplug.agent.downstream.Downstream` when a request asks `Connection: upgrade` with an `Upgrade`
token its listener allows (others are refused there, 403 as Envoy). The downstream transport is handed over
here (`transport.set_protocol`). Flow control both ways: a full write buffer on one side pauses reading on
the other. A cluster that cannot be reached answers 503 with Envoy's wording.

With plugins, the upgrade is an HTTP stream of the chain until the cluster answers, as Envoy runs its HTTP
filters on it: the request head goes through the request headers callbacks (end_of_stream false; Connection
and Upgrade kept) and is sent as they leave it -- a plugin's local reply refuses the upgrade (the reply is
the answer, the connection closes) -- and the cluster's response head through the response headers
callbacks before it reaches the client. The bytes after the heads are not shown to the plugins. The stream
completes (on_log, on_done) when the tunnel closes. Without plugins the heads are relayed as they come.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, hcm, routing, wire
from meshplug.agent.filtered import rewritten

if TYPE_CHECKING:
    from meshplug.agent.server import Proxy
    from meshplug.agent.upstream import Pool

Header = tuple[bytes, bytes]
#: hop-by-hop headers an upgrade does not forward (Connection and Upgrade are the upgrade itself)
_UPGRADE_DROP: Final = wire.HOP_BY_HOP - {b"connection", b"upgrade"}
#: the most of a response head read before the tunnel gives up on it (Envoy: max_response_headers_kb)
_MAX_RESPONSE_HEAD: Final = 80 * 1024


class _Side(asyncio.Protocol):
    """One end of a tunnel: what it reads goes to the other end."""

    def __init__(self, tunnel: Tunnel, name: str) -> None:
        self.tunnel = tunnel
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None
        self.eof = False  # this end sent its FIN (what it sends is over)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.tunnel.head_pending and self is self.tunnel.up:
            self.tunnel.response_bytes(data)
            return
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.write(data)

    def eof_received(self) -> bool | None:
        if self.tunnel.head_pending:
            return None  # the response head never came: both ends close
        self.eof = True
        other = self.other
        if other is not None and other.eof:
            return None  # both ends are done sending: the tunnel closes (connection_lost closes the other end)
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()
            return True  # keep our side open for what the other still sends (half-close)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.tunnel.side_closed(self)

    def pause_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Tunnel:
    """A client connection upgraded to a raw byte stream to the cluster."""

    def __init__(self, proxy: Proxy, pool: Pool | None, pools: Mapping[str, Pool], server: hcm.ServerHeader) -> None:
        self.proxy = proxy
        self.server = server  # the listener's date/server step on the heads this tunnel answers or filters
        #: the cluster (with plugins: None until the router picked it after the request headers callbacks)
        self.pool = pool
        self.pools = pools
        self.down = _Side(self, "downstream")
        self.up = _Side(self, "upstream")
        self.down.other, self.up.other = self.up, self.down
        self.closed = False
        self.stream: agent_chain.Stream | None = None
        #: the cluster's response head is read here (to go through the plugins) before bytes flow
        self.head_pending = False
        self._head_in = b""
        self._rest = b""  # what the client sent after its request head: sent after the (filtered) head
        self._replied = False  # the client got its answer from the agent: nothing from the cluster follows
        self._head_seen = False  # the cluster's response head was read (and is in the plugins' hands)
        self._suppress = False  # the router adds no x-envoy-* headers (suppress_envoy_headers)
        self._head_request = False  # the upgrade request is a HEAD: the agent's own answer has no body

    @property
    def queue(self) -> tuple[()]:
        """Nothing waits for a response (the proxy's drain lets a tunnel run until the deadline)."""
        return ()

    def start(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        """Take over the client's `transport` (its request `head` read, `rest` already read after it) and
        connect to the cluster; `head` and `rest` go first. A 101 answer's head gets the listener's date and
        server (as Envoy's HCM writes it); any other answer passes as the cluster sent it."""
        self._take(transport)
        self.head_pending = True
        self._head_request = head[:5] == b"HEAD "
        self.proxy.loop.create_task(self._connect(head + rest))

    def start_filtered(
        self, transport: asyncio.Transport, chain: agent_chain.Chain, info: agent_chain.StreamInfo,
        resolve: Callable[[wire.Headers], Any], *, headers: wire.Headers, rest: bytes, suppress_envoy_headers: bool,
    ) -> None:  # fmt: skip
        """As `start`, with the request `headers` (the chain's form) through the plugins first; the router
        (`resolve`) picks the cluster on the headers they leave."""
        self._take(transport)
        self._rest = rest
        self._suppress = suppress_envoy_headers
        self._head_request = (b":method", b"HEAD") in headers
        self.head_pending = True
        stream = self.stream = chain.new_stream(info, start_time_ns=time.time_ns())
        stream.route_resolver = resolve
        stream.on_progress = self._progress
        self._perform(stream.recv_request_headers(headers, False))

    def _take(self, transport: asyncio.Transport) -> None:
        transport.set_protocol(self.down)
        self.down.transport = transport
        transport.pause_reading()  # until the upstream is there
        self.proxy.connections.add(self)
        self.proxy.stats.downstream_cx_upgrades_total += 1

    async def _connect(self, first: bytes) -> None:
        pool = self.pool
        assert pool is not None
        c = pool.cluster
        loop = self.proxy.loop
        try:
            _, _ = await asyncio.wait_for(
                loop.create_connection(lambda: self.up, c.address, c.port), timeout=c.connect_timeout_s
            )
        except (OSError, TimeoutError):
            pool.stats.upstream_cx_connect_fail += 1
            self._failed(wire.RESET_CONNECT_FAILURE)
            return
        pool.stats.upstream_cx_total += 1
        pool.stats.upstream_rq_total += 1
        down = self.down.transport
        if down is None or down.is_closing() or self._replied:
            self.up.close()
            return
        self.up.write(first)
        if not self.head_pending:
            down.resume_reading()

    def _failed(self, reason: str) -> None:
        """The cluster cannot be reached (or answered no head): 503 with Envoy's wording."""
        self._proxy_reply(503, wire.reset_body(reason), wire.reset_details(reason), 0)

    def _proxy_reply(self, status: int, body: bytes, details: str, flags: int) -> None:
        """The proxy's own answer, through the plugins' response callbacks when there are plugins (as Envoy's
        router replies)."""
        stream = self.stream
        if stream is not None and not self._replied and not stream.completed and stream.local_reply is None:
            stream.response_flags |= flags
            reply = agent_chain.LocalReply(status, body=body, details=details)
            agent_chain.StreamControl(stream, len(stream.chain.filters) - 1).send_proxy_reply(reply)
            self._perform(stream.take_outputs())
            return
        self._local_reply(status, body)

    # --- the plugins ---
    def _progress(self, _stream: agent_chain.Stream) -> None:
        self.proxy.loop.call_soon(self._pump)

    def _pump(self) -> None:
        stream = self.stream
        if stream is not None and not self.closed:
            self._perform(stream.take_outputs())

    def _perform(self, outputs: Sequence[agent_chain.Output]) -> None:
        for out in outputs:
            if self.closed:
                return
            if type(out) is agent_chain.SendHeaders:
                if out.target is agent_chain.Target.UPSTREAM:
                    self._send_up_head(out.headers)
                else:
                    self._send_down_head(out.headers, out.end_stream)
            elif type(out) is agent_chain.SendData:
                if out.target is agent_chain.Target.DOWNSTREAM and self._replied:  # a local reply's body
                    if not self._head_request:
                        self.down.write(out.data)
                    if out.end_stream:
                        self.down.close()
            elif type(out) is agent_chain.AbortUpstream:
                self._replied = True
                self.up.close()
            elif type(out) is agent_chain.ResetStream:
                self.abort()
                return

    def _send_up_head(self, headers: tuple[Header, ...]) -> None:
        # the router, on the headers the plugins left (as filtered.FilteredExchange)
        stream = self.stream
        decision = stream.route() if stream is not None else None
        reply = routing.router_reply(decision)
        if reply is not None:
            self._proxy_reply(*reply)
            return
        assert decision is not None and decision.route is not None
        route = decision.route
        self.pool = self.pools[decision.cluster]
        if route.prefix_rewrite is not None:
            headers = rewritten(headers, route)
        expected = hcm.expected_timeout(route.timeout_s, suppressed=self._suppress)
        if expected is not None:
            headers = (*headers, expected)
        lines = framing.request_head_lines(headers, b"GET", _UPGRADE_DROP)
        if lines is None:  # a plugin set a header that cannot be written (as the HTTP/1.1 path: 503)
            self._local_reply(503, b"invalid header value")
            return
        head = b"".join([*lines[1], b"\r\n"])
        rest, self._rest = self._rest, b""
        self.proxy.loop.create_task(self._connect(head + rest))

    def response_bytes(self, data: bytes) -> None:
        """Bytes of the cluster's response before its head went through the plugins."""
        buf = self._head_in + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_RESPONSE_HEAD:
                self.up.close()
                self._failed(wire.RESET_PROTOCOL)
            else:
                self._head_in = buf
            return
        self._head_in = buf[end + 4 :]  # the first bytes of the tunnel: sent after the head
        parsed = _response_head(buf[:end])
        if parsed is None:
            self.up.close()
            self._failed(wire.RESET_PROTOCOL)
            return
        self._head_seen = True
        parsed = hcm.upstream_response(parsed, -1)  # the codec's header map (the router adds no time to a 101)
        stream = self.stream
        if stream is None:  # no plugins: a 101 head as the HCM writes it, any other answer as it came
            if parsed[0][1] == b"101":
                self._send_down_head(parsed, False)
                return
            self.head_pending = False
            self._head_in = b""
            self.down.write(buf)
            if self.down.transport is not None:
                self.down.transport.resume_reading()
            return
        if self.up.transport is not None:
            self.up.transport.pause_reading()  # until the head went out
        self._perform(stream.recv_response_headers(parsed, False))

    def _send_down_head(self, headers: Sequence[Header], end_stream: bool) -> None:
        status = 200
        kept: list[Header] = []
        for name, value in headers:
            if name == b":status":
                try:
                    status = int(value)
                except ValueError:
                    status = 502
            elif name[:1] != b":" and (name not in wire.HOP_BY_HOP or (status == 101 and name in _KEEP_101)):
                if not framing.field_ok(name, value):
                    self._local_reply(502, b"invalid header value")
                    return
                kept.append((name, value))
        own = self._replied or not self._head_seen or not self.head_pending  # the agent's own answer
        if own and end_stream:  # an empty body's content-length goes last, as Envoy's codec writes it
            kept = [h for h in kept if h[0] != b"content-length"]
        out = [b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown")), *self.server.lines(kept)]
        if own:
            self._reply_head(out, b"" if end_stream else None)
            return
        self.head_pending = False
        out.append(b"\r\n")
        self.down.write(b"".join(out))
        first, self._head_in = self._head_in, b""
        if first:
            self.down.write(first)
        if end_stream:
            self.close()
            return
        if self.up.transport is not None:
            self.up.transport.resume_reading()
        if self.down.transport is not None:
            self.down.transport.resume_reading()

    def _local_reply(self, status: int, body: bytes) -> None:
        head = [b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown"))]
        if body:
            head += [b"content-length: %d\r\n" % len(body), b"content-type: text/plain\r\n"]
        self._reply_head(head, body)

    def _reply_head(self, head: list[bytes], body: bytes | None) -> None:
        """Answer the client ourselves (head lines without the blank line; `body` None: it follows as data)
        and close once written; the cluster gets nothing more."""
        self._replied = True
        self.head_pending = False
        self.up.close()
        if not any(line[:5].lower() == b"date:" or line[:7].lower() == b"server:" for line in head):
            head += self.server.lines([])  # (a head from `_send_down_head` has had its date and server)
        head.append(b"connection: close\r\ncontent-length: 0\r\n\r\n" if body == b"" else b"connection: close\r\n\r\n")
        self.down.write(b"".join(head))
        if body is not None:
            if not self._head_request:
                self.down.write(body)
            self.down.close()

    def side_closed(self, side: _Side) -> None:
        """One end is gone: the other is closed too; the client's end closing ends the tunnel."""
        if side is self.up:
            if self.head_pending and not self._replied:
                self.head_pending = False
                self._failed(wire.RESET_TERMINATION)
                return
            self.down.close()
            return
        self.up.close()
        if not self.closed:
            self.closed = True
            self.proxy.connections.discard(self)
            self.proxy.stats.downstream_cx_active -= 1
            stream, self.stream = self.stream, None
            if stream is not None:
                stream.on_progress = None
                stream.complete()
            self.proxy.connection_closed()

    def close(self) -> None:
        self.down.close()
        self.up.close()

    def abort(self) -> None:
        for side in (self.down, self.up):
            if side.transport is not None:
                side.transport.abort()


#: the hop-by-hop headers a 101 response keeps (the protocol switch it confirms)
_KEEP_101: Final = frozenset({b"connection", b"upgrade"})


def _response_head(raw: bytes) -> list[Header] | None:
    """The cluster's response head (status line and header lines, without the blank line) in the chain's form,
    or None when it is not HTTP/1.1."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
        return None
    headers: list[Header] = [(b":status", parts[1])]
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None
        headers.append((name.lower(), value.strip()))
    return headers
