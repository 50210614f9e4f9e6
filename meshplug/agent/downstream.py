"""The downstream side of the HTTP data path: one client connection (`Downstream`), parsing HTTP/1.1 requests
with httptools into exchanges, queued and served strictly in order (pipelining).

Created per accepted connection by `meshplug.agent.server.Proxy`'s HTTP listeners. It builds each request's
upstream head (hop-by-hop headers dropped, x-request-id and Host added) or, with plugins, the chain's header
list (pseudo-headers first, Host folded into :authority) and hands it to an `Exchange` or `FilteredExchange`.
It owns the connection's flow control (a full write buffer on one side pauses reading on the other), batches
writes (one send per loop iteration downstream, one per parsed read upstream) and runs one lazy timer for the
idle timeout and the response deadline of the exchange being served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from meshplug import limits
from meshplug.agent import chain as agent_chain
from meshplug.agent import wire
from meshplug.agent.exchange import Exchange
from meshplug.agent.filtered import FilteredExchange
from meshplug.agent.upstream import Pool, Upstream

if TYPE_CHECKING:
    from meshplug.agent.server import Proxy


class Downstream(asyncio.Protocol):
    """One client connection: parse requests, queue them, serve them in order."""

    def __init__(self, proxy: Proxy, pool: Pool) -> None:
        self.proxy = proxy
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.id = next(wire.CONNECTION_IDS)
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
        self._headers: wire.Headers = []
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
        drop = wire.HOP_BY_HOP
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
            headers.append((b"x-request-id", wire.REQUEST_IDS.new()))
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
            chain_headers: wire.Headers = [
                (b":method", method),
                (b":path", url),
                (b":authority", b""),
                wire.SCHEME_HTTP,
            ]
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
            self.pause(wire.PAUSE_PIPELINE)

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
        self.resume(wire.PAUSE_PIPELINE)
        if self._write_paused and self.queue and self.queue[0].up is not None:
            self.queue[0].up.pause_reading()
        if not self.queue and self.current is None and self.transport is not None and not self.transport.is_closing():
            self._arm_idle()
