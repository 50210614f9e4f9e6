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

What the client sends after its request head (a body, the first frames) goes to the cluster once it switched
protocols (101 with Upgrade and Connection: upgrade), never before: Envoy 1.40 pauses an upgrade's payload until
then. A cluster that answers otherwise (each probed on Envoy 1.40 in tests/integration/test_agent_websocket.py):
* interim 1xx heads other than 101 are dropped;
* a WebSocket upgrade answered below 400 (200, 204, 302, ...): Envoy's own reply of that status with the
  cluster's headers but its body and framing (content-length 0, connection: close), through the plugins'
  response callbacks as a local reply; the cluster's body is not read;
* anything else (400 and up; any status for other upgrades; a 101 without Upgrade) is relayed as a response:
  Envoy's reason phrase, date and server, connection: close, the body framed as Envoy's codec frames it
  (content-length as is, otherwise chunked), then both connections close -- unless the answer itself says
  Connection: upgrade with an Upgrade, which Envoy passes on as is and keeps relaying the cluster's bytes (the
  client's never go);
* no answer within the route's timeout (WebSocket only): 504, as Envoy's router.
The proxy's own answers close the client's connection as Envoy's delayed close does: after
`limits.DOWNSTREAM_DELAYED_CLOSE_S`, nothing read meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from meshplug import limits
from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, hcm, routing, wire
from meshplug.agent.exchange import reset_flags
from meshplug.agent.filtered import rewritten

if TYPE_CHECKING:
    from meshplug.agent.server import Proxy
    from meshplug.agent.upstream import Pool

Header = tuple[bytes, bytes]
#: hop-by-hop headers an upgrade does not forward (Connection and Upgrade are the upgrade itself)
_UPGRADE_DROP: Final = wire.HOP_BY_HOP - {b"connection", b"upgrade"}
#: the most of a response head read before the tunnel gives up on it (Envoy: max_response_headers_kb)
_MAX_RESPONSE_HEAD: Final = 80 * 1024
#: the headers of a refused WebSocket handshake's answer that Envoy's local reply leaves out: its upstream codec, in
#: upgrade mode, leaves Keep-Alive, TE and Trailer in (probed: a 200's keep-alive reaches the client; a relayed
#: 404's does not: `wire.RESPONSE_DROPPED`)
_REFUSED_DROP: Final = frozenset({b"connection", b"upgrade", b"transfer-encoding", b"proxy-connection"})
#: what Envoy's local reply drops of the headers it copies from a refused WebSocket handshake (it has no body)
_REPLY_DROP: Final = frozenset({b"content-length", b"content-type"})
#: response.code_details of Envoy's reply to a WebSocket handshake answered without switching
_HANDSHAKE_DETAILS: Final = "websocket_handshake_unsuccessful"


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
        tunnel = self.tunnel
        if self is tunnel.up:
            if tunnel.head_pending:
                tunnel.response_bytes(data)
                return
            relay = tunnel.relay
            if relay is not None:
                relay.feed(data)
                return
        elif not tunnel.switched:
            tunnel.client_bytes(data)
            return
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.write(data)

    def eof_received(self) -> bool | None:
        tunnel = self.tunnel
        if tunnel.head_pending or tunnel.relay is not None or not tunnel.switched:
            # the response head never came, a relayed response ends (side_closed says how), or the client
            # went before the cluster switched: both ends close
            return None
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
        self._raw_head = b""  # the cluster's final response head as read (status line to blank line)
        #: what the client sent after its request head: sent once the cluster switched protocols (as Envoy)
        self._rest = b""
        self._replied = False  # the client got its answer from the agent: nothing from the cluster follows
        self._head_seen = False  # the cluster's response head was read (and is in the plugins' hands)
        self._suppress = False  # the router adds no x-envoy-* headers (suppress_envoy_headers)
        self._head_request = False  # the upgrade request is a HEAD: the agent's own answer has no body
        self._websocket = False  # the upgrade asks for WebSocket (Envoy's handshake rules are its own)
        self._timeout_s = 0.0  # the route's timeout: how long a WebSocket handshake's answer may take (0: none)
        #: the handshake's deadline, or the delayed close of the proxy's own answer
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False  # the client's connection closes on the delayed close's timer
        #: the cluster's head says 101 with Upgrade and went to the client: bytes flow both ways
        self.switched = False
        self._switching = False  # the cluster's head says 101 with Upgrade (and goes through the plugins)
        self._upgrade_answer = False  # the cluster's head says Connection: upgrade with an Upgrade (both kept)
        self._chunked_answer = False  # ... and Transfer-Encoding: chunked (its bytes pass as they come)
        self._drop = wire.HOP_BY_HOP  # the headers the client's head leaves out
        #: the body of a cluster's answer relayed as a response (it did not switch protocols)
        self.relay: _Relay | None = None
        #: the cluster answered without switching but with Connection: upgrade: only its bytes flow (as Envoy)
        self.one_way = False

    @property
    def queue(self) -> tuple[()]:
        """Nothing waits for a response (the proxy's drain lets a tunnel run until the deadline)."""
        return ()

    def start(self, transport: asyncio.Transport, head: bytes, rest: bytes, *, timeout_s: float = 0.0) -> None:
        """Take over the client's `transport` (its request `head` read, `rest` already read after it) and
        connect to the cluster; `head` goes first, `rest` once the cluster switched protocols. `timeout_s`: the
        route's timeout (a WebSocket handshake's answer is awaited that long)."""
        self._take(transport)
        self.head_pending = True
        self._head_request = head[:5] == b"HEAD "
        self._websocket = _asks_websocket(head)
        self._timeout_s = timeout_s
        self._rest = rest
        self.proxy.loop.create_task(self._connect(head))

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
        self._websocket = _wants_websocket(headers)
        self.head_pending = True
        stream = self.stream = chain.new_stream(info, start_time_ns=time.time_ns())
        stream.route_resolver = resolve
        stream.on_progress = self._progress
        self._perform(stream.recv_request_headers(headers, False))

    def _take(self, transport: asyncio.Transport) -> None:
        transport.set_protocol(self.down)
        self.down.transport = transport
        transport.resume_reading()  # what comes is held (`client_bytes`) until the cluster switched protocols
        self.proxy.connections.add(self)
        self.proxy.stats.downstream_cx_upgrades_total += 1

    async def _connect(self, head: bytes) -> None:
        pool = self.pool
        assert pool is not None
        c = pool.cluster
        loop = self.proxy.loop
        if self._websocket and self._timeout_s > 0:  # Envoy's router times the handshake out (504)
            self._timer = loop.call_later(self._timeout_s, self._timed_out)
        try:
            _, _ = await asyncio.wait_for(
                loop.create_connection(lambda: self.up, c.address, c.port), timeout=c.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            pool.stats.upstream_cx_connect_fail += 1
            if self.head_pending and not self._replied:
                self._failed(wire.connect_failure(exc))
            return
        pool.stats.upstream_cx_total += 1
        pool.stats.upstream_rq_total += 1
        down = self.down.transport
        if down is None or down.is_closing() or self._replied:
            self.up.close()
            return
        self.up.write(head)

    def client_bytes(self, data: bytes) -> None:
        """Bytes from the client before the cluster switched protocols: held for the cluster (reading pauses past
        `limits.PROXY_BUFFER_HIGH_WATER`), or dropped once the cluster answered otherwise."""
        if self._replied or self._closing or self.one_way or not (self.head_pending or self._switching):
            return
        self._rest += data
        if len(self._rest) > limits.PROXY_BUFFER_HIGH_WATER and self.down.transport is not None:
            self.down.transport.pause_reading()

    def _failed(self, reason: str) -> None:
        """The cluster cannot be reached (or answered no head): 503 with Envoy's wording."""
        self._proxy_reply(503, wire.reset_body(reason), wire.reset_details(reason), reset_flags(reason))

    def _timed_out(self) -> None:
        """No answer to a WebSocket handshake within the route's timeout: Envoy's router answers 504."""
        self._timer = None
        if self.head_pending and not self._replied and not self.closed:
            flag = agent_chain.RESPONSE_FLAG_UPSTREAM_REQUEST_TIMEOUT
            self._proxy_reply(504, wire.BODY_TIMEOUT, wire.DETAILS_TIMEOUT, flag)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _proxy_reply(
        self, status: int, body: bytes, details: str, flags: int, headers: tuple[Header, ...] = ()
    ) -> None:
        """The proxy's own answer, through the plugins' response callbacks when there are plugins (as Envoy's
        router replies)."""
        stream = self.stream
        if stream is not None and not self._replied and not stream.completed and stream.local_reply is None:
            stream.response_flags |= flags
            reply = agent_chain.LocalReply(status, headers=headers, body=body, details=details)
            agent_chain.StreamControl(stream, len(stream.chain.filters) - 1).send_proxy_reply(reply)
            self._perform(stream.take_outputs())
            return
        if headers:  # (no plugins: the headers as a local reply gets them, its framing the agent's own)
            self._replied = True
            self.up.close()
            self._send_down_head([(b":status", b"%d" % status), *headers], True)
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
                        self._close_later()
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
        self._timeout_s = route.timeout_s
        if route.prefix_rewrite is not None:
            headers = rewritten(headers, route)
        expected = hcm.expected_timeout(route.timeout_s, suppressed=self._suppress)
        if expected is not None:
            headers = (*headers, expected)
        lines = framing.request_head_lines(headers, b"GET", _UPGRADE_DROP)
        if lines is None:  # a plugin set a header that cannot be written (as the HTTP/1.1 path: 503)
            self._local_reply(503, b"invalid header value")
            return
        self.proxy.loop.create_task(self._connect(b"".join([*lines[1], b"\r\n"])))

    def response_bytes(self, data: bytes) -> None:
        """Bytes of the cluster's response before its head was decided on (and went through the plugins)."""
        buf = self._head_in + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_RESPONSE_HEAD:
                    self.up.close()
                    self._failed(wire.RESET_PROTOCOL)
                else:
                    self._head_in = buf
                return
            parsed = _response_head(buf[:end])
            if parsed is None:
                self.up.close()
                self._failed(wire.RESET_PROTOCOL)
                return
            code = parsed[0][1]
            if code[:1] != b"1" or code == b"101":
                break
            buf = buf[end + 4 :]  # an interim answer (100 Continue, 103): dropped, as Envoy's router does
        self._raw_head = buf[: end + 4]
        self._head_in = buf[end + 4 :]  # the first bytes after the head (the tunnel's, or the body's)
        self._head_seen = True
        self._cancel_timer()
        parsed = hcm.upstream_response(parsed, -1)  # the codec's header map (the router adds no time here)
        status = int(code)
        self._upgrade_answer = _upgrade_answer(parsed)
        self._chunked_answer = any(n == b"transfer-encoding" and b"chunked" in v.lower() for n, v in parsed)
        if status == 101 and self._upgrade_answer:
            self._switching = True
        elif self._websocket and status < 400 and status != 101:
            self._handshake_refused(status, parsed)
            return
        else:
            self._drop = wire.RESPONSE_DROPPED
        stream = self.stream
        if stream is None:  # no plugins: the head as the HCM writes it
            self._send_down_head(parsed, False)
            return
        if self.up.transport is not None:
            self.up.transport.pause_reading()  # until the head went out
        self._perform(stream.recv_response_headers(parsed, False))

    def _handshake_refused(self, status: int, headers: list[Header]) -> None:
        """A WebSocket handshake the cluster answered below 400 without switching: as Envoy, the proxy answers
        itself with that status and the cluster's headers (a local reply: no body, so no content-length or
        content-type of the cluster's) and closes the cluster's connection unread."""
        self._drop = _REFUSED_DROP
        kept = tuple(h for h in headers[1:] if h[0] not in _REPLY_DROP)
        self._proxy_reply(status, b"", _HANDSHAKE_DETAILS, 0, kept)

    def _send_down_head(self, headers: Sequence[Header], end_stream: bool) -> None:
        status = 200
        kept: list[Header] = []
        drop, keep_upgrade = self._drop, self._upgrade_answer
        for name, value in headers:
            if name == b":status":
                try:
                    status = int(value)
                except ValueError:
                    status = 502
            elif name[:1] != b":" and (name not in drop or (keep_upgrade and name in _KEEP_101)):
                if not framing.field_ok(name, value):
                    self._local_reply(502, b"invalid header value")
                    return
                kept.append((name, value))
        own = self._replied or not self._head_seen or not self.head_pending  # the agent's own answer
        if own and end_stream:  # an empty body's content-length goes last, as Envoy's codec writes it
            kept = [h for h in kept if h[0] != b"content-length"]
        out = [b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown")), *self.server.lines(kept)]
        if own:
            self._reply_head(out, status, b"" if end_stream else None)
            return
        self.head_pending = False
        if not self._switching and not keep_upgrade:
            self._relay_response(out, kept, status, end_stream)
        else:
            self._switched(out, end_stream)

    def _switched(self, out: list[bytes], end_stream: bool) -> None:
        """The cluster's head (`out`: its lines so far) switched protocols, or says Connection: upgrade without
        101: it goes to the client and the bytes after it flow (the client's only after a 101); a chunked one's
        Transfer-Encoding after the date and server, as Envoy's codec writes it (its chunks pass as they come)."""
        if self._chunked_answer and not self._switching:
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        self.down.write(b"".join(out))
        first, self._head_in = self._head_in, b""
        if first:
            self.down.write(first)
        if end_stream:
            self.close()
            return
        held, self._rest = self._rest, b""
        if not self._switching:
            self.one_way = True  # the client's bytes never go (Envoy keeps them paused)
        else:
            self.switched = True
            if held:
                self.up.write(held)
        if self.up.transport is not None:
            self.up.transport.resume_reading()
        if self.down.transport is not None:
            self.down.transport.resume_reading()

    def _relay_response(self, out: list[bytes], kept: list[Header], status: int, end_stream: bool) -> None:
        """The cluster did not switch: its answer goes to the client as a response (`out`: its head's lines so
        far), Connection: close, the body framed as Envoy's codec frames it; then both connections close."""
        self._rest = b""
        out.append(b"connection: close\r\n")
        bodiless = end_stream or self._head_request or status < 200 or status in (204, 304)
        length = any(n == b"content-length" for n, _ in kept)
        if not bodiless and not length:
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        self.down.write(b"".join(out))
        if bodiless:
            self._head_in = b""
            self.up.close()
            self._close_later()
            return
        relay = self.relay = _Relay(self, chunked=not length)
        raw, self._raw_head, first, self._head_in = self._raw_head, b"", self._head_in, b""
        relay.feed(raw + first)  # (the parser reads the head again to know the body's framing)
        if self.relay is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    def relay_ended(self, *, closed: bool) -> None:
        """The relayed response's body ended: complete (`closed` False), or the cluster closed (the end of a
        body without a length; a cut one otherwise)."""
        relay, self.relay = self.relay, None
        if relay is None:
            return
        if relay.chunked and (not closed or relay.until_close):
            self.down.write(wire.LAST_CHUNK)
        self.up.close()
        self._close_later()

    def _local_reply(self, status: int, body: bytes) -> None:
        head = [b"HTTP/1.1 %d %b\r\n" % (status, wire.REASONS.get(status, b"Unknown"))]
        if body:
            head += [b"content-length: %d\r\n" % len(body), b"content-type: text/plain\r\n"]
        self._reply_head(head, status, body)

    def _reply_head(self, head: list[bytes], status: int, body: bytes | None) -> None:
        """Answer the client ourselves (head lines without the blank line; `body` None: it follows as data)
        and close once written (`_close_later`); the cluster gets nothing more."""
        self._replied = True
        self.head_pending = False
        self._rest = b""
        self._cancel_timer()
        self.up.close()
        if not any(line[:5].lower() == b"date:" or line[:7].lower() == b"server:" for line in head):
            head += self.server.lines([])  # (a head from `_send_down_head` has had its date and server)
        if body != b"" or status < 200 or status in (204, 304):  # (Envoy's codec frames no body on these)
            head.append(b"connection: close\r\n\r\n")
        elif self._head_request:  # (to a HEAD, the codec cannot know a length: chunked, and no chunk follows)
            head.append(b"connection: close\r\ntransfer-encoding: chunked\r\n\r\n")
        else:
            head.append(b"connection: close\r\ncontent-length: 0\r\n\r\n")
        self.down.write(b"".join(head))
        if body is not None:
            if body and not self._head_request:
                self.down.write(body)
            self._close_later()

    def _close_later(self) -> None:
        """Close the client's connection as Envoy's delayed close does after a response that ends it: what was
        written goes out, nothing more is read, and it closes `limits.DOWNSTREAM_DELAYED_CLOSE_S` later."""
        if self._closing or self.closed:
            return
        self._closing = True
        self._cancel_timer()
        transport = self.down.transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        self._timer = self.proxy.loop.call_later(limits.DOWNSTREAM_DELAYED_CLOSE_S, self.down.close)

    def side_closed(self, side: _Side) -> None:
        """One end is gone: the other is closed too (the client's after its delayed close, when the proxy
        answered); the client's end closing ends the tunnel."""
        if side is self.up:
            if self.head_pending and not self._replied:
                self.head_pending = False
                self._failed(wire.RESET_TERMINATION)
                return
            if self.relay is not None:
                self.relay_ended(closed=True)
                return
            if not (self._replied or self._closing):
                self.down.close()
            return
        self.up.close()
        self._cancel_timer()
        if not self.closed:
            self.closed = True
            self.relay = None
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


class _Relay:
    """The body of a cluster's answer relayed as a response (it did not switch protocols): read as HTTP/1.1 by
    httptools (the head again, for the framing), written to the client as Envoy's codec frames it -- as is under
    its Content-Length, otherwise as chunks (`chunked`)."""

    def __init__(self, tunnel: Tunnel, *, chunked: bool) -> None:
        self.tunnel = tunnel
        self.chunked = chunked
        self.until_close = False  # the body has no length: it ends when the cluster closes
        self.framed = False  # the cluster's head has a Transfer-Encoding
        self.done = False
        self.parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:  # a malformed body: cut, as Envoy resets it
            self._end(closed=True)

    def _end(self, *, closed: bool) -> None:
        if not self.done:
            self.done = True
            self.tunnel.relay_ended(closed=closed)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.done:  # bytes after the response: the connection closes anyway
            raise httptools.HttpParserError("more after the relayed response")

    def on_header(self, name: bytes, _value: bytes) -> None:
        if name.lower() == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        # written as chunks without a length from the cluster: chunked from it too, or a body up to its close
        self.until_close = self.chunked and not self.framed

    def on_body(self, body: bytes) -> None:
        if self.chunked:
            self.tunnel.down.write(b"".join(wire.chunk_parts(body)))
        else:
            self.tunnel.down.write(body)

    def on_message_complete(self) -> None:
        self._end(closed=False)


def _wants_websocket(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """An upgrade request's headers (lower-case names) ask for WebSocket."""
    return any(name == b"upgrade" and value.strip().lower() == b"websocket" for name, value in headers)


def _asks_websocket(head: bytes) -> bool:
    """`_wants_websocket` of an upgrade request's head as the downstream wrote it."""
    lines = (line.partition(b":") for line in head.split(b"\r\n")[1:])
    return _wants_websocket((name, value) for name, _, value in lines)


def _upgrade_answer(headers: Sequence[Header]) -> bool:
    """A response head says Upgrade with Connection: upgrade (Envoy's Utility::isUpgrade)."""
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = True
        elif name == b"connection" and any(t.strip().lower() == b"upgrade" for t in value.split(b",")):
            connection = True
    return upgrade and connection


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
