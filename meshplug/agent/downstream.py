"""The downstream side of the HTTP data path: one client connection (`Downstream`), parsing HTTP/1.1 requests
with httptools into exchanges, queued and served strictly in order (pipelining).

Created per accepted connection by `meshplug.agent.server.Proxy`'s HTTP listeners. It owns the connection's
bytes: the first ones (the HTTP/2 preface hands it to `H2Downstream`), the parser and the bounds of each head as
it arrives, a Content-Length body read past the parser, the queue of exchanges, refusals in their turn, the
hand-over to a tunnel, and the connection's flow control (a full write buffer on one side pauses reading on the
other). It holds one lazy timer and the deadlines it watches (the idle timeout, the request deadlines, those of
the exchange being served); when they pass and what then happens is `meshplug.agent.h1timers`'s. What a complete
head means -- Envoy's checks and the exchange it starts -- is `meshplug.agent.h1request`'s; pausing reads and the
batched writes (one send per loop iteration downstream, one per parsed read upstream) are its base's,
`meshplug.agent.h1peer.H1Peer`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from meshplug import limits
from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, h1request, h1timers, routing, wire
from meshplug.agent.config import Route
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


#: the first bytes that make a cleartext connection HTTP/2 (the preface's start: Envoy 1.40's codec choice)
_H2_MAGIC_PREFIX: Final = PREFACE[:12]


class _Gone:
    """The parser callbacks of a connection that is gone: none."""


#: the parser a closed (or handed over) connection holds instead of its own, which held the connection
_SPENT: Final = httptools.HttpRequestParser(_Gone())


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
        #: as bytes (no plugins; `tunnel_pool` is the cluster its route picked) or in the chain's form
        #: (`tunnel_headers`, through the plugins first; the router picks after them)
        self.tunnel_head = b""
        self.tunnel_pool: Pool | None = None
        self.tunnel_timeout = 0.0  # its route's timeout (how long the handshake's answer may take)
        self.tunnel_headers: wire.Headers | None = None
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
        #: one lazy timer per connection (wire.ConnTimer; fired in meshplug.agent.h1timers) for the earliest
        #: deadline: the idle timeout (`timer.idle_at`), the deadlines of a request still being received
        #: (`stream_at`: stream idle, `headers_at`: request headers timeout, `request_at`: request timeout), the
        #: connection's end of life (`end_at`) and the response deadline of the exchange being served
        #: (`Exchange.deadline`)
        self.timer = wire.ConnTimer(proxy.loop, self._on_timer)
        self.stream_at = 0.0
        self.headers_at = 0.0
        self.request_at = 0.0
        #: the stream idle deadline of the exchange being served once its request ended, until its response starts
        #: (Envoy's idle timer runs on: 504 "stream timeout") and while its response is being sent (a response that
        #: stalls is reset); armed only when its route timeout would not come first. `active_at`: the loop time of
        #: the stream's last activity while it is armed -- a write to the client, a read of the upstream's body (a
        #: plugin may hold it: Envoy's filter manager counts it as it arrives)
        self.serve_at = self.active_at = 0.0
        #: the stream being received: the loop time of its first byte, its duration deadline (max_stream_duration;
        #: 0: none) and stream idle timeout until its route changes them (`h1timers.route_limits`); its exchange
        #: takes them
        self.started_at = self.duration_at = 0.0
        self.idle_s = opts.stream_idle_timeout_s
        self.end_at = 0.0
        self.url = b""
        self.headers: wire.Headers = []
        #: the request head's bounds, held while parsing (a head never grows past them, however slowly sent):
        #: bytes left for the head being read (`in_head`: between messages or inside a head) and header lines
        self.in_head = True
        self._head_room = self._max_head = opts.max_request_headers_kb * 1024
        self._max_count = opts.max_headers_count
        self._count = 0
        self.line_bytes = 0  # a head's (then its trailers') header bytes, counted when each line is whole
        #: bytes of a Content-Length body still to come (a keep-alive request): reads inside it go to the
        #: exchange as they are, past the parser (which would copy them); a fresh parser takes what follows
        self.body_left = 0
        self.begun = False  # a request has started (its first byte arrived) and is not complete
        #: why parsing stopped on purpose (set before raising from a callback): the local reply to give
        self.refusal: framing.Refusal | None = None
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
            self.end_at = self.proxy.loop.time() + self.opts.max_connection_duration_s
        ssl_object = transport.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject) and ssl_object.selected_alpn_protocol() == "h2":
            self._to_h2(b"", tls=True)
            return
        self.timer.arm_idle(self.proxy.idle_timeout_s)
        if self.end_at:
            self.timer.wake_at(self.end_at)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        self.proxy.stats.downstream_cx_active -= 1
        self._release()
        client_left = self.eof or exc is not None  # its FIN or reset, not a close of ours
        while self.queue:
            ex = self.queue.popleft()
            if not ex.resp_done:
                self.proxy.stats.downstream_rq_active -= 1
                if client_left:
                    ex.client_left()
            ex.abandon()
        self.proxy.connection_closed()

    def data_received(self, data: bytes) -> None:
        if self.sniffing:
            data = self._sniff(data)
            if not data:
                return
        if self._stopped:
            return
        if self._paused & wire.PAUSE_PIPELINE:
            self.hold_read(data)  # the next request's bytes: parsed once this one is answered
            return
        self.received(data)

    def resume(self, reason: int) -> None:
        """`H1Peer.resume`; when the pipeline's wait ends, the reads held meanwhile are parsed in a loop callback
        of their own (the answer that ended the wait is sent first)."""
        waited = reason == wire.PAUSE_PIPELINE and bool(self._paused & reason)
        H1Peer.resume(self, reason)  # (named: compiled, a direct call; super() is a lookup with a Python base)
        if waited and self.held:
            self.loop.call_soon(self._replay)

    def _replay(self) -> None:
        """The held reads, parsed now that the pipeline's turn came (unless it waits again meanwhile)."""
        if self._paused & wire.PAUSE_PIPELINE or not self.held or self.closed:
            return
        self.received(self.take_held())

    def received(self, data: bytes) -> None:
        """Parse a read (after the first bytes told HTTP/1.1; not while the pipeline waits)."""
        self._parsing = True
        try:
            while data:
                if self.body_left:
                    data = self._direct_body(data)
                    if not data:
                        break
                data = self._parse(data)  # what it returns: a Content-Length body's first bytes, read direct
        except httptools.HttpParserError as exc:
            self._parse_error(exc, data)
        finally:
            held = self.hold
            if held is not None:
                self.hold = None
                held.flush_request()
            self._parsing = False
            if self._up_target is not None:
                self._flush_up()
            if self._out:  # what this read's requests were answered with (H1Peer.write scheduled no flush)
                self.flush()
        if self.begun and not self._stopped:
            h1timers.stream_active(self)

    def _direct_body(self, data: bytes) -> bytes:
        """A read inside a Content-Length body whose head the parser took (`body_left` > 0): the body's bytes
        go to the exchange as read, without the parser's copy; at its last byte the request is complete and a
        fresh parser is made for what follows (returned: bytes after the body, to parse)."""
        left = self.body_left
        n = len(data)
        if n < left:
            self.body_left = left - n
            self._body(data)
            return b""
        self.body_left = 0
        self._body(data if n == left else data[:left])
        self.parser = httptools.HttpRequestParser(self)  # the old one still waits for the body's bytes
        self.on_message_complete()
        return data[left:] if n > left else b""

    def _parse(self, data: bytes) -> bytes:
        """Parse `data`; returns b"", or the bytes after a head whose Content-Length body is read past the parser
        (`_direct_body`): a read with a head and a large part of its body (a POST's first read) gives the parser
        the head alone, so the body is not copied by the parser, then joined to the rest of the read."""
        if self.in_head and len(data) > _SPLIT_AFTER_HEAD:
            end = data.find(b"\r\n\r\n", 0, self._head_room) + 4
            if end >= 4 and len(data) - end > _SPLIT_AFTER_HEAD:
                self._head_room -= end
                if self._feed(data, end) or self._stopped:
                    return b""  # an upgrade took the read (a tunnel's first bytes, an h2c upgrade's next request)
                data = data[end:]
                if self.body_left:
                    return data
                if len(data) > self._head_room:  # the read went past the head's limit: bounded as a whole read is
                    self._feed_bounded(data, whole=True)
                    return b""
        if self.in_head and len(data) > self._head_room:
            self._feed_bounded(data)
        else:
            if self.in_head:
                self._head_room -= len(data)
            self._feed(data)
        return b""

    def _feed(self, data: bytes, stop: int = -1) -> bool:
        """Feed `data` (up to `stop` when given) to the parser; True: an upgrade took all of `data`."""
        try:
            self.parser.feed_data(data if stop < 0 else data[:stop])
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else (len(data) if stop < 0 else stop)
            if self.tunnel_head or self.tunnel_headers is not None:  # allowed: the connection becomes a tunnel
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
            if not (self.in_head or whole) or len(data) <= room:
                if self.in_head:
                    self._head_room = room - len(data)
                self._feed(data)
                return
            part, data = data[:room], data[room:]
            self._head_room = 0
            whole = False
            self._feed(part)
            if self._stopped:
                return
            if self.in_head and not self._head_room:  # the same head, still not complete at its limit (a head
                # or trailers begun inside ``part``, after a message or a chunk ended there, have their room back)
                self.refuse_now(framing.Refusal(431, b"Request Header Fields Too Large", framing.HEADERS_TOO_LARGE))
                return

    def _sniff(self, data: bytes) -> bytes:
        """The connection's first bytes: "PRI * HTTP/2" (the preface's start, Envoy's CLIENT_MAGIC_PREFIX: all its
        codec choice looks at) hands the connection over to HTTP/2 (returns b""), whose codec then judges the rest
        of the preface; a part of it waits for more; anything else is HTTP/1.1 (returned to be parsed)."""
        buf = self._sniffed + data if self._sniffed else data
        if buf[:12] == _H2_MAGIC_PREFIX:
            tls = self.transport is not None and isinstance(self.transport.get_extra_info("ssl_object"), ssl.SSLObject)
            self._to_h2(buf, tls=tls)
            return b""
        if len(buf) < 12 and _H2_MAGIC_PREFIX.startswith(buf):
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
        self._release()
        proxy.connections.discard(self)
        conn = H2Downstream(proxy, self.state, tls=tls)
        transport.set_protocol(conn)
        conn.take_over(transport, data, self.peer, self.local, self.id)

    def _start_tunnel(self, rest: bytes) -> None:
        """Hand the connection to a tunnel (the upgrade's head goes to the cluster, `rest` once it switched)."""
        transport = self.transport
        self._stopped = True
        if transport is None or self.closed:
            return
        self._release()
        self.flush()  # (a 100 Continue) before the tunnel writes
        self.proxy.connections.discard(self)
        filters, headers = self.state.filters, self.tunnel_headers
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
            tunnel = Tunnel(self.proxy, self.tunnel_pool, self.state.pools, self.state.server)
            tunnel.start(transport, self.tunnel_head, rest, timeout_s=self.tunnel_timeout)
        self.tunnel_head = b""
        self.tunnel_headers = None

    def _release(self) -> None:
        """The connection is gone or handed over: its timer and its parser let go of it (each holds its bound
        methods) and it of the exchange being parsed, so its reference count frees it: nothing per connection
        is left to the cyclic GC (whose passes set the tail latency on a loaded machine)."""
        self.timer.stop()
        self.stream_at = self.end_at = 0.0
        self.parser = _SPENT
        self.current = None
        self.hold = None

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.begun:
            # the client went away in the middle of a request: it can never complete; both sides end now
            self._stopped = True
            self.abort()
            return None
        if not self.queue:
            return None
        # whole requests not answered yet: as Envoy (an HTTP listener does not half-close), the client's FIN ends
        # the connection; those requests are reset, their plugins see the client gone (DC), their upstream
        # connections close now instead of at a timeout
        self._stopped = True
        self.abort()
        return None

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
        self.url = b""
        self.headers = []
        self._count = 0
        self.line_bytes = 0
        self.timer.idle_at = 0.0
        self.begun = True
        h1timers.stream_begun(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count += 1
        if self._count > self._max_count:
            self.refusal = framing.Refusal(431, b"Request Header Fields Too Large", framing.TOO_MANY_HEADERS)
            raise self.refusal
        self.line_bytes += len(name) + len(value)
        if self.line_bytes > self._max_head:  # trailers: a section that began inside a read fed whole is
            # counted here, line by line (the head itself is bounded as its bytes arrive, before this)
            self.refusal = framing.Refusal(431, b"Request Header Fields Too Large", framing.HEADERS_TOO_LARGE)
            raise self.refusal
        # llhttp leaves the blanks before the line's end in the value; Envoy's codec trims them (rtrim), so plugins,
        # the checks below and the upstream see the value without them
        self.headers.append((name.lower(), value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        h1request.headers_complete(self)
        self.duration_at = 0.0  # its exchange (if any) holds it now

    def on_chunk_header(self) -> None:
        """A chunk's size line: when it is the last chunk's, trailer lines follow, bounded as a head is (Envoy counts
        them against max_request_headers_kb); a chunk's data (`on_body`) ends that."""
        self.in_head = True
        self._head_room = self._max_head

    def on_body(self, body: bytes) -> None:
        self.in_head = False
        if self.body_left:  # a Content-Length body read past the parser from the next read on
            self.body_left -= len(body)
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
        self.body_left = 0
        self.in_head = True
        self._head_room = self._max_head
        self.begun = False
        self.stream_at = self.request_at = 0.0
        ex, self.current = self.current, None
        if ex is None:
            return
        if ex.resp_done and not self.queue and not self.closed:
            # answered before its end was read (a bodiless request a plugin answered)
            self.timer.arm_idle(self.proxy.idle_timeout_s)
        trailers = self.headers
        if trailers:
            self.headers = []
            if self.opts.enable_trailers:  # else dropped, as Envoy's HTTP/1.1 codec does
                ex.request_trailers(trailers)
        if self.queue and ex is self.queue[0]:
            ex.request_complete()
            h1timers.watch_serving(self, ex)
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
        self.body_left = 0
        self.stream_at = self.headers_at = self.request_at = self.duration_at = 0.0
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

    def _parse_error(self, exc: httptools.HttpParserError, data: bytes) -> None:
        if self._lingering:
            return  # the bytes after a request whose answer closes the connection (as Envoy, ignored)
        if self._stopped and not self.begun and (self.transport is None or self.transport.is_closing()):
            return  # the bytes after a request answered with Connection: close (as Envoy, they are ignored)
        refusal, self.refusal = self.refusal, None
        if refusal is None and isinstance(exc.__context__, framing.Refusal):
            refusal = exc.__context__
        if refusal is None:
            if not self.begun and self.queue and not self.queue[-1].keep_alive:
                # bytes after a request that ends the connection (Connection: close): that request is
                # answered, the bytes ignored (as Envoy does)
                self._stop_reading()
                return
            # the parser's own refusals: malformed framing or syntax (Envoy: 400), an unknown coding (501), a
            # version other than 0.9, 1.x or 2.0 (Envoy: 426)
            refusal = h1request.parser_refusal(str(exc), self.url, data)
        self.refuse_now(refusal)

    def _stop_reading(self) -> None:
        self._stopped = True
        self.body_left = 0
        self.begun = False
        self.stream_at = self.headers_at = self.request_at = self.duration_at = 0.0
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def refuse_now(self, refusal: framing.Refusal) -> None:
        """Answer the request being read with `refusal` (in its turn), read nothing more, close after.
        A request whose head already went upstream loses its upstream side; one already being answered is
        reset (as Envoy's codec errors do)."""
        # the method of the request refused, once the parser read it in this message (a reply to HEAD has no body;
        # but Envoy's codec errors with a body send it even to a HEAD)
        codec_body = bool(refusal.body) and refusal.codec
        method: bytes = self.parser.get_method() if self.begun and self.url and not codec_body else b"GET"
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
                # (a codec error flags the stream DPE after its reply went through them: only the log reads it)
                dpe = agent_chain.RESPONSE_FLAG_DOWNSTREAM_PROTOCOL_ERROR if refusal.codec else 0
                cur.proxy_reply(refusal.status, refusal.body, refusal.details, refusal.flags, log_flags=dpe)
            else:
                cur.refusal = refusal  # answered when its turn comes
            return
        filters = self.state.filters
        if filters is not None:  # the plugins never see it, but log it (as Envoy)
            ex: Exchange = h1request.RefusedExchange(self, method, refusal, filters)
        else:
            ex = Exchange(self, method, b"", False, False)
            ex.req_done = True
        self.queue.append(ex)
        self.proxy.stats.downstream_rq_total += 1
        self.proxy.stats.downstream_rq_active += 1
        if len(self.queue) == 1:
            ex.local_reply(refusal.status, refusal.body)
        else:
            ex.refusal = refusal

    def flush(self) -> None:
        """`H1Peer.flush`; while the stream idle timeout watches a response, a write is activity."""
        if self.serve_at and self._out:
            self.active_at = self.loop.time()
        H1Peer.flush(self)

    def route_refreshed(
        self, ex: Exchange, route: Route, headers: tuple[tuple[bytes, bytes], ...]
    ) -> tuple[tuple[bytes, bytes], ...]:
        """`h1timers.route_refreshed` (for the exchanges, which sit below it)."""
        return h1timers.route_refreshed(self, ex, route, headers)

    def _on_timer(self) -> None:
        """The connection's timer fired (`wire.ConnTimer` holds this bound method until `_release`)."""
        h1timers.on_timer(self)

    def exchange_done(self, ex: Exchange, *, reusable: bool) -> None:
        self.proxy.stats.downstream_rq_active -= 1
        self.serve_at = 0.0
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
            h1timers.next_turn(self)
        if not reusable or self.proxy.draining or self.expired or (self.eof and not self.queue):
            if self.begun and not self.eof:
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
                h1timers.watch_serving(self, nxt)
                return  # still paused for the pipeline: resume once this one is answered
        self.resume(wire.PAUSE_PIPELINE)
        if self._write_paused and self.queue and self.queue[0].up is not None:
            self.queue[0].up.pause_reading()
        if not self.queue and self.current is None and self.transport is not None and not self.transport.is_closing():
            self.timer.arm_idle(self.proxy.idle_timeout_s)
