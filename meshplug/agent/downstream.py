"""The downstream side of the HTTP data path: one client connection (`Downstream`), parsing HTTP/1.1 requests
with httptools into exchanges, queued and served strictly in order (pipelining).

Created per accepted connection by `meshplug.agent.server.Proxy`'s HTTP listeners. It builds each request's
upstream head (hop-by-hop headers dropped, x-request-id and Host added) or, with plugins, the chain's header
list (pseudo-headers first, Host folded into :authority) and hands it to an `Exchange` or `FilteredExchange`.
It owns the connection's flow control (a full write buffer on one side pauses reading on the other) and runs
one lazy timer for the idle timeout and the response deadline of the exchange being served; pausing reads and
the batched writes (one send per loop iteration downstream, one per parsed read upstream) are its base's,
`meshplug.agent.h1peer.H1Peer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, TypeVar, cast

import httptools

from meshplug import limits
from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, hcm, routing, wire
from meshplug.agent.bridge import EMPTY_CHAIN, H2UpExchange
from meshplug.agent.exchange import Exchange
from meshplug.agent.filtered import FilteredExchange
from meshplug.agent.h1peer import H1Peer
from meshplug.agent.h2down import PREFACE, H2Downstream
from meshplug.agent.tunnel import Tunnel
from meshplug.agent.upstream import Pool

if TYPE_CHECKING:
    from meshplug.agent.server import Proxy


#: a read inside a head with more than this after the head's end (a POST's head and the first part of its body)
#: gives the parser the head alone: a Content-Length body after it is read past the parser (not copied by it)
_SPLIT_AFTER_HEAD: Final = 16 * 1024

_In = TypeVar("_In")
_Out = TypeVar("_Out")


class Downstream(H1Peer, asyncio.Protocol):
    """One client connection: parse requests, queue them, serve them in order."""

    def __init__(self, proxy: Proxy, state: routing.ListenerState) -> None:
        super().__init__(proxy.loop)
        self.proxy = proxy
        self.state = state
        #: the listener's default cluster (a native listener's; None when its routes decide everything)
        self.pool: Pool | None = state.default_pool
        routes = state.routes
        assert routes is not None  # an HTTP listener
        self.routes = routes
        #: the router chains use (`chain.Stream.route_resolver`)
        self.resolve = routes.resolve_map
        #: Upgrade tokens this listener passes through (Envoy's upgrade_configs); others get 403
        self.upgrade_types = state.config.upgrade_types
        #: an allowed upgrade's request, started as a tunnel once the parser stops at its head's end: the head
        #: as bytes (no plugins; `_tunnel_pool` is the cluster its route picked) or in the chain's form
        #: (`_tunnel_headers`, through the plugins first; the router picks after them)
        self._tunnel_head = b""
        self._tunnel_pool: Pool | None = None
        self._tunnel_headers: wire.Headers | None = None
        #: the first bytes are not in yet: they tell HTTP/2 (the connection preface) from HTTP/1.1
        self.sniffing = True
        self._sniffed = b""
        self.opts = opts = proxy.cfg.http
        self.parser = httptools.HttpRequestParser(self)
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.id = next(wire.CONNECTION_IDS)
        self.queue: deque[Exchange] = deque()
        self.current: Exchange | None = None  # the exchange being parsed
        self.eof = False
        self.http11 = True
        self._write_paused = False
        #: one lazy timer per connection (wire.ConnTimer) for the earliest deadline: the idle timeout
        #: (`timer.idle_at`), the stream deadline of a request still being received (`_stream_at`: stream idle /
        #: request headers timeout), the connection's end of life (`_end_at`) and the response deadline of the
        #: exchange being served (`Exchange.deadline`)
        self.timer = wire.ConnTimer(proxy.loop, self._on_timer)
        self._stream_at = 0.0
        self._headers_at = 0.0
        self._end_at = 0.0
        self._url = b""
        self._headers: wire.Headers = []
        #: the request head's bounds, held while parsing (a head never grows past them, however slowly sent):
        #: bytes left for the head being read (`_in_head`: between messages or inside a head) and header lines
        self._in_head = True
        self._head_room = self._max_head = opts.max_request_headers_kb * 1024
        self._max_count = opts.max_headers_count
        self._headers_timeout = opts.request_headers_timeout_s
        self._count = 0
        self._line_bytes = 0  # a head's (then its trailers') header bytes, counted when each line is whole
        #: bytes of a Content-Length body still to come (a keep-alive request): reads inside it go to the
        #: exchange as they are, past the parser (which would copy them); a fresh parser takes what follows
        self._body_left = 0
        self._begun = False  # a request has started (its first byte arrived) and is not complete
        #: why parsing stopped on purpose (set before raising from a callback): the local reply to give
        self._refusal: framing.Refusal | None = None
        self._stopped = False  # nothing more is read from this connection
        self._lingering = False  # a delayed close: what the client still sends is read and dropped
        self.expired = False  # max_connection_duration passed: close after the current response
        #: a filtered exchange holding the request body of this read (one chunk; see FilteredExchange)
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
        if self.opts.max_connection_duration_s:
            self._end_at = self.proxy.loop.time() + self.opts.max_connection_duration_s
        ssl_object = transport.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject) and ssl_object.selected_alpn_protocol() == "h2":
            self._to_h2(b"", tls=True)
            return
        self.timer.arm_idle(self.proxy.idle_timeout_s)
        if self._end_at:
            self.timer.wake_at(self._end_at)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        self.proxy.stats.downstream_cx_active -= 1
        self.timer.stop()
        while self.queue:
            ex = self.queue.popleft()
            if not ex.resp_done:
                self.proxy.stats.downstream_rq_active -= 1
            ex.abandon()
        self.proxy.connection_closed()

    def data_received(self, data: bytes) -> None:
        if self.sniffing:
            data = self._sniff(data)
            if not data:
                return
        if self._stopped:
            return
        self._parsing = True
        try:
            while data:
                if self._body_left:
                    data = self._direct_body(data)
                    if not data:
                        break
                data = self._parse(data)  # what it returns: a Content-Length body's first bytes, read direct
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
        finally:
            held = self.hold
            if held is not None:
                self.hold = None
                held.flush_request()
            self._parsing = False
            if self._up_target is not None:
                self._flush_up()
        if self._begun and not self._stopped:
            self._stream_active()

    def _direct_body(self, data: bytes) -> bytes:
        """A read inside a Content-Length body whose head the parser took (`_body_left` > 0): the body's bytes
        go to the exchange as read, without the parser's copy; at its last byte the request is complete and a
        fresh parser is made for what follows (returned: bytes after the body, to parse)."""
        left = self._body_left
        n = len(data)
        if n < left:
            self._body_left = left - n
            self._body(data)
            return b""
        self._body_left = 0
        self._body(data if n == left else data[:left])
        self.parser = httptools.HttpRequestParser(self)  # the old one still waits for the body's bytes
        self.on_message_complete()
        return data[left:] if n > left else b""

    def _parse(self, data: bytes) -> bytes:
        """Parse `data`; returns b"", or the bytes after a head whose Content-Length body is read past the parser
        (`_direct_body`): a read with a head and a large part of its body (a POST's first read) gives the parser
        the head alone, so the body is not copied by the parser, then joined to the rest of the read."""
        if self._in_head and len(data) > _SPLIT_AFTER_HEAD:
            end = data.find(b"\r\n\r\n", 0, self._head_room) + 4
            if end >= 4 and len(data) - end > _SPLIT_AFTER_HEAD:
                self._head_room -= end
                if self._feed(data, end) or self._stopped:
                    return b""  # an upgrade took the read (a tunnel's first bytes, an h2c upgrade's next request)
                data = data[end:]
                if self._body_left:
                    return data
                if len(data) > self._head_room:  # the read went past the head's limit: bounded as a whole read is
                    self._feed_bounded(data, whole=True)
                    return b""
        if self._in_head and len(data) > self._head_room:
            self._feed_bounded(data)
        else:
            if self._in_head:
                self._head_room -= len(data)
            self._feed(data)
        return b""

    def _feed(self, data: bytes, stop: int = -1) -> bool:
        """Feed `data` (up to `stop` when given) to the parser; True: an upgrade took all of `data`."""
        try:
            self.parser.feed_data(data if stop < 0 else data[:stop])
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else (len(data) if stop < 0 else stop)
            if self._tunnel_head or self._tunnel_headers is not None:  # allowed: the connection becomes a tunnel
                self._start_tunnel(data[offset:])
                return True
            # an h2c upgrade (on_headers_complete refuses the others): served as HTTP/1.1, the bytes after its
            # head are the next request, for a fresh parser
            self.parser = httptools.HttpRequestParser(self)
            if offset < len(data):
                self._feed(data[offset:])
            return True
        return False

    def _feed_bounded(self, data: bytes, *, whole: bool = False) -> None:
        """Feed a read that could take the head past its limit: up to the limit first; a head still not
        complete there is refused (431) before the parser holds any more of it (`whole`: `data` is the rest of a
        read whose head the parser took, checked there even though the parser is past the head: trailers)."""
        while data:
            room = self._head_room
            if not (self._in_head or whole) or len(data) <= room:
                if self._in_head:
                    self._head_room = room - len(data)
                self._feed(data)
                return
            part, data = data[:room], data[room:]
            self._head_room = 0
            whole = False
            self._feed(part)
            if self._stopped:
                return
            if self._in_head and not self._head_room:  # the same head, still not complete at its limit (a head
                # or trailers begun inside ``part``, after a message or a chunk ended there, have their room back)
                self._refuse_now(framing.Refusal(431, b"Request Header Fields Too Large"))
                return

    def _sniff(self, data: bytes) -> bytes:
        """The connection's first bytes: the HTTP/2 preface hands the connection over (returns b""), a part of
        it waits for more; anything else is HTTP/1.1 (returned to be parsed)."""
        buf = self._sniffed + data if self._sniffed else data
        if buf[:24] == PREFACE:
            tls = self.transport is not None and isinstance(self.transport.get_extra_info("ssl_object"), ssl.SSLObject)
            self._to_h2(buf, tls=tls)
            return b""
        if len(buf) < 24 and PREFACE.startswith(buf):
            self._sniffed = buf
            return b""
        self.sniffing = False
        self._sniffed = b""
        return buf

    def _to_h2(self, data: bytes, *, tls: bool) -> None:
        """Hand the connection to the HTTP/2 downstream (prior knowledge, or ALPN h2 over TLS)."""
        self.sniffing = False
        self._stopped = True
        transport = self.transport
        assert transport is not None
        proxy = self.proxy
        self._drop_timer()
        proxy.connections.discard(self)
        conn = H2Downstream(proxy, self.state, tls=tls)
        transport.set_protocol(conn)
        conn.take_over(transport, data, self.peer, self.local, self.id)

    def _tunnel(self, method: bytes, path: bytes, headers: wire.Headers) -> bool:
        """`Connection: upgrade` with Upgrade tokens this listener allows (Envoy's upgrade_configs): the request
        is the head of a tunnel, started when the parser stops at the head's end (True: no exchange)."""
        offered = [v.strip().lower().decode("latin-1") for n, v in headers if n == b"upgrade"]
        if not offered or offered == ["h2c"] or self.queue or not all(t in self.upgrade_types for t in offered):
            return False
        headers = list(headers)
        hcm.add_forwarded(headers, wire.SCHEME_HTTP[1], request_id=self.state.config.generate_request_id)
        authority = next((v for n, v in headers if n == b"host"), b"")
        if self.state.filters is not None:  # the plugins see it as Envoy's filters do: Host as :authority
            chain_headers = [(b":method", method), (b":path", path), (b":authority", authority), wire.SCHEME_HTTP]
            chain_headers += [h for h in headers if h[0] != b"host"]
            self._tunnel_headers = chain_headers
            self.proxy.stats.downstream_rq_total += 1
            return True
        decision = self.routes.constant or self.routes.resolve(authority, path, headers, method)
        reply = routing.router_reply(decision)
        if reply is not None:  # the router's own reply instead of a tunnel (404, a direct response), as Envoy
            self._refuse(reply[0], reply[1], reply[2])
        route = decision.route
        assert route is not None  # (router_reply answers a request without one)
        self._tunnel_pool = self.state.pools[decision.cluster]
        self.proxy.stats.downstream_rq_total += 1
        expected = hcm.expected_timeout(route.timeout_s, suppressed=self.state.suppress_envoy_headers)
        if expected is not None:
            headers.append(expected)
        lines = [b"%b %b HTTP/1.1\r\n" % (method, path)]
        lines += [b"%b: %b\r\n" % h for h in headers]
        lines.append(b"\r\n")
        self._tunnel_head = b"".join(lines)
        return True

    def _start_tunnel(self, rest: bytes) -> None:
        """Hand the connection to a tunnel (the upgrade's head, then `rest`, go to the cluster first)."""
        transport = self.transport
        self._stopped = True
        if transport is None or self.closed:
            return
        self._drop_timer()
        self.proxy.connections.discard(self)
        filters, headers = self.state.filters, self._tunnel_headers
        if filters is not None and headers is not None:
            tunnel = Tunnel(self.proxy, None, self.state.pools, self.state.server)
            tunnel.start_filtered(
                transport,
                filters,
                self.stream_info(),
                self.resolve,
                headers=headers,
                rest=rest,
                suppress_envoy_headers=self.state.suppress_envoy_headers,
            )
        else:
            tunnel = Tunnel(self.proxy, self._tunnel_pool, self.state.pools, self.state.server)
            tunnel.start(transport, self._tunnel_head, rest)
        self._tunnel_head = b""
        self._tunnel_headers = None

    def _drop_timer(self) -> None:
        self.timer.stop()
        self._stream_at = self._end_at = 0.0

    def eof_received(self) -> bool | None:
        self.eof = True
        if self._begun:
            # the client went away in the middle of a request: it can never complete; both sides end now
            self._stopped = True
            self.abort()
            return None
        # the client half-closed after whole requests: finish what is queued, then close
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
        transport = self.transport
        if self._lingering:  # a request after one whose answer closes the connection: never parsed
            raise httptools.HttpParserError("the connection is closing")
        if transport is None or transport.is_closing():  # an answer ended the connection: nothing more is read
            self._stop_reading()
            raise httptools.HttpParserError("the connection is closing")
        self._url = b""
        self._headers = []
        self._count = 0
        self._line_bytes = 0
        self.timer.idle_at = 0.0
        self._begun = True
        if self._headers_timeout:
            self._headers_at = self.proxy.loop.time() + self._headers_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > self._max_count:
            self._refusal = framing.Refusal(431, b"Request Header Fields Too Large")
            raise self._refusal
        self._line_bytes += len(name) + len(value)
        if self._line_bytes > self._max_head:  # trailers: a section that began inside a read fed whole is
            # counted here, line by line (the head itself is bounded as its bytes arrive, before this)
            self._refusal = framing.Refusal(431, b"Request Header Fields Too Large")
            raise self._refusal
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:  # noqa: PLR0912, PLR0915 - the request head's checks in Envoy's order, once per request on the data path (mypyc); split, each refusal would cost a call
        self._in_head = False
        self._line_bytes = 0
        self._headers_at = 0.0
        parser = self.parser
        method: bytes = parser.get_method()
        version: str = parser.get_http_version()
        if version != "1.1" and (version != "1.0" or not self.opts.accept_http_10):
            self._refuse(426, b"Upgrade Required")
        self.http11 = version == "1.1"
        keep_alive: bool = parser.should_keep_alive()
        headers = self._headers
        self._headers = []  # header lines after the body are trailers
        if method not in framing.METHODS:
            self._refuse(400, framing.BAD_REQUEST)
        # Envoy's header map and request mutations (TE is reduced below, once an upgrade is ruled out)
        headers = hcm.sanitize_request(headers, upgrade=True)
        if method == b"CONNECT":  # no route serves CONNECT (Envoy: 404; its codec's 400 for an origin-form target)
            self._refuse(400, framing.BAD_REQUEST) if self._url[:1] == b"/" else self._refuse(404, b"")
        path = self._url
        authority = b""
        unroutable = False  # no route can serve the target: the router's 404, the connection goes on (as Envoy)
        if path[:1] != b"/" or 35 in path:  # not plain origin form (35: "#"): the rules decide
            try:
                path, authority = framing.request_target(method, path)
            except framing.Unroutable:
                unroutable = True
            except framing.Refusal as refusal:
                self._refusal = refusal
                raise

        # which headers name more hop-by-hop headers; Host, framing, upgrade
        drop = wire.HOP_BY_HOP
        expect_continue = upgrade = has_te = False
        hosts = 0
        host = b""
        te: list[bytes] | None = None
        content_length = -1
        for name, value in headers:
            if name == b"connection":
                extra = self._check(framing.nominated, value) - framing.NOT_REMOVED_BY_CONNECTION
                if extra:
                    upgrade = upgrade or b"upgrade" in extra
                    drop = drop | extra
            elif name == b"host":
                hosts += 1
                host = value
            elif name == b"transfer-encoding":
                te = [value] if te is None else [*te, value]
            elif name == b"content-length":
                with contextlib.suppress(ValueError):
                    content_length = int(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
            elif name == b"te":
                has_te = True
        if te is not None and any(n == b"content-length" for n, _ in headers):
            self._refuse(400, framing.BAD_REQUEST)  # both framings (RFC 9112 6.1: a smuggling vector), as Envoy
        chunked = te is not None and self._check(framing.chunked, te)
        if hosts > 1 or (hosts and not framing.authority_ok(host)):
            self._refuse(400, framing.BAD_REQUEST)  # RFC 9112 3.2 (stricter than Envoy, which merges them)
        if upgrade and self.upgrade_types and self._tunnel(method, path, headers):
            return
        if has_te:  # TE goes on as "trailers" alone, when it asks for them (as Envoy forwards it)
            headers = hcm.reduce_te(headers)
            drop = drop - {b"te"}
        if upgrade and self._upgrade(headers):
            drop = drop | {b"http2-settings"}
        else:
            upgrade = False
        has_body = chunked or content_length > 0
        #: the body is read past the parser (`_direct_body`); not when the connection ends after it (the parser
        #: then refuses what follows, as Envoy ignores it)
        direct = content_length if content_length > 0 and te is None and keep_alive else 0
        if upgrade and has_body:  # an h2c upgrade with a body: the parser took it for upgraded bytes
            self._refuse(400, framing.BAD_REQUEST)
        if authority:
            hosts = 1
        elif hosts:
            authority = host
        elif self.http11:
            self._refuse(400, b"")  # RFC 9112 3.2, as Envoy (its HCM's refusal: no body)
        elif self.pool is not None:  # HTTP/1.0 (accept_http_10) without Host: the cluster's address
            c = self.pool.cluster
            authority = f"{c.address}:{c.port}".encode()
        else:  # ... or, when routes pick the cluster, the listener's
            local = self.local or ("", 0)
            authority = f"{local[0]}:{local[1]}".encode()
        state = self.state
        if b"x-request-id" in drop:  # nominated by Connection: gone before the HCM generates its own
            headers = [h for h in headers if h[0] != b"x-request-id"]
            drop = drop - {b"x-request-id"}
        hcm.add_forwarded(headers, wire.SCHEME_HTTP[1], request_id=state.config.generate_request_id)
        proxy = self.proxy
        proxy.stats.downstream_rq_total += 1
        proxy.stats.downstream_rq_active += 1

        routes = self.routes
        # the route on the request as received: it picks the cluster's protocol (plugins may re-route the request
        # later, within clusters of that protocol); without plugins it is the route
        decision = routes.constant or routes.resolve(authority, path, headers, method)
        if unroutable:
            decision = routing.NO_VHOST
        http2 = decision.cluster in proxy.h2pools
        filters = None if unroutable else state.filters
        if filters is None and http2:
            filters = EMPTY_CHAIN  # an HTTP/2 cluster: the request goes as a header list (bridge.H2UpExchange)
        if filters is not None:
            # the chain's form in one pass (names are lower-case already): pseudo-headers first, Host folded
            # into :authority as Envoy's HTTP/1 codec does, hop-by-hop headers dropped; and the upstream head
            # of the same headers, sent as is when the plugins leave them unchanged
            chain_headers: wire.Headers = [  # in Envoy's order (its HTTP/1 codec's request map)
                (b":authority", authority),
                (b":path", path),
                (b":method", method),
                wire.SCHEME_HTTP,
            ]
            lines = [b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (method, path, authority)]
            framed = False
            for h in headers:
                name = h[0]
                if name in drop or name == b"host" or (name == b"expect" and expect_continue):
                    continue
                if name == b"content-length":
                    framed = True
                chain_headers.append(h)
                lines.append(b"%b: %b\r\n" % h)
            if http2:
                fx: FilteredExchange = H2UpExchange(
                    self, method, keep_alive, has_body, filters, headers=chain_headers, lines=lines, framed=framed
                )
            else:  # a direct constructor call: mypyc makes it a native one
                fx = FilteredExchange(
                    self, method, keep_alive, has_body, filters, headers=chain_headers, lines=lines, framed=framed
                )
            self.current = fx
            self._body_left = direct
            self.queue.append(fx)
            if expect_continue:  # as Envoy, whether a body follows or not
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if len(self.queue) == 1:
                fx.start()
            return

        ex = Exchange(self, method, b"", keep_alive, has_body)
        ex.chunked_in = chunked
        route = decision.route
        reply = routing.router_reply(decision)
        if reply is not None:
            ex.reply = reply
        else:
            assert route is not None
            ex.pool = state.pools[decision.cluster]
            ex.timeout_s = route.timeout_s
            if route.prefix_rewrite is not None:
                headers.append((b"x-envoy-original-path", path))
                path = routing.rewrite_prefix(path, route)
            expected = hcm.expected_timeout(route.timeout_s, suppressed=state.suppress_envoy_headers)
            if expected is not None:
                headers.append(expected)
        out = [b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (method, path, authority)]
        for name, value in headers:
            if name in drop or name in (b"content-length", b"host") or (name == b"expect" and expect_continue):
                continue
            out.append(b"%b: %b\r\n" % (name, value))
        if chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        elif content_length >= 0:
            out.append(b"content-length: %d\r\n" % content_length)
        out.append(b"\r\n")
        ex.head = b"".join(out)

        self.current = ex
        self._body_left = direct
        self.queue.append(ex)
        if expect_continue:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(self.queue) == 1:
            ex.start()

    def _refuse(self, status: int, body: bytes, details: str = framing.CODEC_ERROR) -> None:
        """Stop parsing this request (from a parser callback): it is answered `status` instead."""
        self._refusal = framing.Refusal(status, body, details)
        raise self._refusal

    def _check(self, rule: Callable[[_In], _Out], arg: _In) -> _Out:
        """`rule(arg)`, its Refusal kept for the parse error it raises (from a parser callback)."""
        try:
            return rule(arg)
        except framing.Refusal as refusal:
            self._refusal = refusal
            raise

    def _upgrade(self, headers: wire.Headers) -> bool:
        """`Connection: upgrade`: h2c is served as HTTP/1.1 (True: its Upgrade and HTTP2-Settings are dropped,
        as Envoy does); any other upgrade (WebSocket, ...) is not enabled: 403, as Envoy without upgrade_configs."""
        offered = [v.strip().lower() for n, v in headers if n == b"upgrade"]
        if offered and offered != [b"h2c"]:
            self._refuse(403, b"")
        return bool(offered)

    def on_chunk_header(self) -> None:
        """A chunk's size line: when it is the last chunk's, trailer lines follow, bounded as a head is (Envoy counts
        them against max_request_headers_kb); a chunk's data (`on_body`) ends that."""
        self._in_head = True
        self._head_room = self._max_head

    def on_body(self, body: bytes) -> None:
        self._in_head = False
        if self._body_left:  # a Content-Length body read past the parser from the next read on
            self._body_left -= len(body)
        self._body(body)

    def _body(self, body: bytes) -> None:
        ex = self.current
        if ex is None:
            return
        if self.queue and ex is self.queue[0]:
            ex.request_body(body)
        elif not ex.resp_done:
            ex.body_pending.append(body)
            ex.body_bytes_buffered += len(body)

    def on_message_complete(self) -> None:
        self._body_left = 0
        self._in_head = True
        self._head_room = self._max_head
        self._begun = False
        self._stream_at = 0.0
        ex, self.current = self.current, None
        if ex is None:
            return
        if ex.resp_done and not self.queue and not self.closed:
            # answered before its end was read (a bodiless request a plugin answered)
            self.timer.arm_idle(self.proxy.idle_timeout_s)
        trailers = self._headers
        if trailers:
            self._headers = []
            if self.opts.enable_trailers:  # else dropped, as Envoy's HTTP/1.1 codec does
                ex.request_trailers(trailers)
        if self.queue and ex is self.queue[0]:
            ex.request_complete()
        else:
            ex.req_done = True
        if not ex.resp_done:
            self.pause(wire.PAUSE_PIPELINE)

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
                cluster_name=self.pool.cluster.name if self.pool is not None else "",
                listener=self.state.config,
            )
        elif (info.protocol == "HTTP/1.1") is not self.http11:
            info = self._info = agent_chain.replace_info(info, {"protocol": "HTTP/1.1" if self.http11 else "HTTP/1.0"})
        return info

    def _delayed_close(self) -> None:
        """Close a connection whose request is still arriving (its answer said Connection: close) as Envoy's
        delayed close does: the answer is flushed and the write side shut, what the client still sends is read
        and dropped until it closes or `limits.DOWNSTREAM_DELAYED_CLOSE_S` passed. A close with unread bytes
        would be a reset, which can destroy the answer before the client reads it."""
        transport = self.transport
        self.flush()
        if transport is None or transport.is_closing() or not transport.can_write_eof():
            self.close()
            return
        self._stopped = self._lingering = True  # nothing more is parsed: data_received drops what comes
        self._body_left = 0
        self._stream_at = self._headers_at = 0.0
        transport.write_eof()
        transport.resume_reading()
        self.timer.arm_idle(limits.DOWNSTREAM_DELAYED_CLOSE_S)

    def close_after_reset(self) -> None:
        """A started response its upstream reset (it cannot go on): as Envoy's HCM, what was written goes out and
        the connection closes `limits.DOWNSTREAM_DELAYED_CLOSE_S` later (FlushWriteAndDelay: no FIN before, nothing
        read meanwhile, so a pipelined request is never answered)."""
        self.flush()
        self._stop_reading()
        self._lingering = True
        self.timer.arm_idle(limits.DOWNSTREAM_DELAYED_CLOSE_S)

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if self._lingering:
            return  # the bytes after a request whose answer closes the connection (as Envoy, ignored)
        if self._stopped and not self._begun and (self.transport is None or self.transport.is_closing()):
            return  # the bytes after a request answered with Connection: close (as Envoy, they are ignored)
        refusal, self._refusal = self._refusal, None
        if refusal is None and isinstance(exc.__context__, framing.Refusal):
            refusal = exc.__context__
        if refusal is None:
            if not self._begun and self.queue and not self.queue[-1].keep_alive:
                # bytes after a request that ends the connection (Connection: close): that request is
                # answered, the bytes ignored (as Envoy does)
                self._stop_reading()
                return
            # the parser's own refusals: malformed framing or syntax (Envoy: 400), an unknown coding (501), a
            # version other than 0.9, 1.x or 2.0 (Envoy: 426)
            refusal = _parser_refusal(str(exc))
        self._refuse_now(refusal)

    def _stop_reading(self) -> None:
        self._stopped = True
        self._body_left = 0
        self._begun = False
        self._stream_at = self._headers_at = 0.0
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def _refuse_now(self, refusal: framing.Refusal) -> None:
        """Answer the request being read with `refusal` (in its turn), read nothing more, close after.
        A request whose head already went upstream loses its upstream side; one already being answered is
        reset (as Envoy's codec errors do)."""
        # the method of the request refused, once the parser read it in this message (a reply to HEAD has no body;
        # but Envoy's codec errors with a body send it even to a HEAD)
        codec_body = bool(refusal.body) and refusal.details == framing.CODEC_ERROR
        method: bytes = self.parser.get_method() if self._begun and self._url and not codec_body else b"GET"
        self._stop_reading()
        cur, self.current = self.current, None
        if cur is not None:
            cur.keep_alive = False
            if cur.resp_started or cur.resp_done:
                if cur.resp_started and not cur.resp_done:
                    self.abort()
                elif not self.queue:
                    self.close()
                return
            if self.queue and self.queue[0] is cur:  # through the plugins that saw the request, as Envoy's HCM
                cur.proxy_reply(refusal.status, refusal.body, refusal.details, 0)
            else:
                cur.refusal = refusal  # answered when its turn comes
            return
        ex = Exchange(self, method, b"", False, False)
        ex.req_done = True
        self.queue.append(ex)
        self.proxy.stats.downstream_rq_total += 1
        self.proxy.stats.downstream_rq_active += 1
        if len(self.queue) == 1:
            ex.local_reply(refusal.status, refusal.body)
        else:
            ex.refusal = refusal

    def _stream_active(self) -> None:
        """Bytes of an unfinished request arrived: its stream idle deadline moves (and is watched)."""
        idle = self.opts.stream_idle_timeout_s
        if idle:
            self._stream_at = at = self.proxy.loop.time() + idle
            self.timer.wake_at(at)
        if self._headers_at:
            self.timer.wake_at(self._headers_at)

    def _on_timer(self) -> None:  # noqa: PLR0912 - one timer per connection: one branch per phase it can fire in
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
        for at, status, body, details in (
            (self._headers_at, 408, b"request header timeout", "request_header_timeout"),
            (self._stream_at, 408, b"stream timeout", "stream_idle_timeout"),
        ):
            if at:
                if at <= now:
                    self._refuse_now(framing.Refusal(status, body, details))
                    return
                if not pending or at < pending:
                    pending = at
        end_at = self._end_at
        if end_at:
            if end_at <= now:  # max_connection_duration: no more requests; close once idle
                self._end_at = 0.0
                self.expired = True
                if not self.queue and not self._begun:
                    self.close()
                    return
            elif not pending or end_at < pending:
                pending = end_at
        idle_at = self.timer.idle_at
        if idle_at:
            if idle_at <= now:
                self.timer.idle_at = 0.0
                self.close()
                return
            if not pending or idle_at < pending:
                pending = idle_at
        if pending:
            self.timer.wake_at(pending)

    def exchange_done(self, ex: Exchange, *, reusable: bool) -> None:
        self.proxy.stats.downstream_rq_active -= 1
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if not reusable or self.proxy.draining or self.expired or (self.eof and not self.queue):
            if self._begun and not self.eof:
                self._delayed_close()  # answered before its request was read to the end
            else:
                self.close()
            return
        if self.queue:
            nxt = self.queue[0]
            refusal = nxt.refusal
            if refusal is not None:
                nxt.local_reply(refusal.status, refusal.body)
                return
            nxt.start()
            if nxt.req_done:
                return  # still paused for the pipeline: resume once this one is answered
        self.resume(wire.PAUSE_PIPELINE)
        if self._write_paused and self.queue and self.queue[0].up is not None:
            self.queue[0].up.pause_reading()
        if not self.queue and self.current is None and self.transport is not None and not self.transport.is_closing():
            self.timer.arm_idle(self.proxy.idle_timeout_s)


def _parser_refusal(message: str) -> framing.Refusal:
    """The parser's (llhttp's) own refusal, by its message, as Envoy answers it: an unknown transfer coding 501, a
    version other than 0.9, 1.x and 2.0 (HTTP/1.2, 3.0, 9.9) 426, any other malformed framing or syntax 400."""
    if "`Transfer-Encoding`" in message:
        return framing.Refusal(501, b"Not Implemented")
    if message == "Invalid HTTP version":
        return framing.Refusal(426, b"Upgrade Required")
    return framing.Refusal(400, framing.BAD_REQUEST)
