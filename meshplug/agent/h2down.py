"""The HTTP/2 downstream: a client connection speaking h2c (prior knowledge) or h2 (TLS, ALPN) --
`H2Downstream` -- whose streams are exchanges through the proxy (`meshplug.agent.h2exchange.H2Exchange`).

A connection starts as `meshplug.agent.downstream.Downstream` (HTTP/1.1); when its first bytes are the
HTTP/2 connection preface (or TLS negotiated "h2") it hands itself over here (`H2Downstream.take_over`). The
codec (`meshplug.agent.h2wire`: nghttp2, or the `h2` library without a native build) does framing, HPACK,
flow control and the protocol's checks; this module applies Envoy's limits
(`limits.H2_*`: SETTINGS, rapid reset; the listener's `http:` options: header list size and count, stream
idle timeout) and ends the connection as Envoy does.

A client resetting streams in a loop (rapid reset) loses its connection as in Envoy's premature-reset check; a
stream past SETTINGS_MAX_CONCURRENT_STREAMS is refused (RST_STREAM REFUSED_STREAM) and the connection goes on, as
Envoy's codec does; a request head beyond 60 KiB or 100 headers after HPACK decoding is reset; a header block that
decodes past the hard bound (an HPACK bomb) ends the connection (GOAWAY ENHANCE_YOUR_CALM). Any connection error
-- a frame or header block the codec refuses, an inbound flood -- ends it as Envoy 1.40's HCM does: the codec's
GOAWAY (or nothing) written, closed `limits.DOWNSTREAM_DELAYED_CLOSE_S` later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

import h2.errors
import h2.settings

from meshplug import limits
from meshplug.agent import chain as agent_chain
from meshplug.agent import h2peer, h2wire, routing, wire
from meshplug.agent.h2exchange import BY_CLOSE, BY_CODEC, BY_RESET, BY_US, H2Exchange

if TYPE_CHECKING:
    from meshplug.agent.server import Proxy

log = logging.getLogger("meshplug.agent.h2down")

Header = tuple[bytes, bytes]
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def server_settings() -> list[tuple[int, int]]:
    """The SETTINGS the agent announces to clients: Envoy 1.40's."""
    return [
        (h2.settings.SettingCodes.HEADER_TABLE_SIZE, limits.H2_HEADER_TABLE_SIZE),
        (h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0),
        (h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS, limits.H2_MAX_CONCURRENT_STREAMS),
        (h2.settings.SettingCodes.INITIAL_WINDOW_SIZE, limits.H2_INITIAL_STREAM_WINDOW),
    ]


class H2Downstream(h2peer.H2Peer, asyncio.Protocol):
    """One HTTP/2 client connection: its streams, Envoy's limits, one timer."""

    def __init__(self, proxy: Proxy, state: routing.ListenerState, *, tls: bool = False) -> None:
        super().__init__(proxy.stats)
        self.proxy = proxy
        self.state = state
        routes = state.routes
        assert routes is not None  # an HTTP listener
        self.resolve = routes.resolve_map
        self.tls = tls
        self.streams: dict[int, H2Exchange] = {}
        self.client_eof = False  # the client sent its FIN
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        self.id = next(wire.CONNECTION_IDS)
        self.closed = False
        self.going_away = False
        self.closed_streams = 0
        self.premature_resets = 0
        self._info: agent_chain.StreamInfo | None = None
        self.timer = wire.ConnTimer(proxy.loop, self._on_timer)
        #: a connection error ended the connection: its delayed close (`_close_after_error`)
        self._linger: asyncio.TimerHandle | None = None

    @property
    def queue(self) -> dict[int, H2Exchange]:
        """Streams in flight (what the proxy's drain waits for)."""
        return self.streams

    # --- start ---
    def take_over(self, transport: asyncio.Transport, data: bytes, peer: Any, local: Any, conn_id: int) -> None:
        """Continue a connection `Downstream` accepted; `data` is what it read so far (the preface)."""
        self.id = conn_id
        self.transport = transport
        self.peer = peer
        self.local = local
        self.proxy.connections.add(self)
        self.proxy.stats.downstream_cx_http2_total += 1
        self._start()
        if data:  # our SETTINGS go with what the first read brings (Envoy's codec: nothing if it broke the rules)
            self.data_received(data)
        else:
            self.flush()

    def _start(self) -> None:
        opts = self.proxy.cfg.http
        self.start_codec(
            server=True,
            settings=server_settings(),
            connection_window=limits.H2_INITIAL_CONNECTION_WINDOW,
            max_header_bytes=limits.H2_HPACK_BOMB_FACTOR * opts.max_request_headers_kb * 1024,
        )
        self.timer.arm_idle(self.proxy.idle_timeout_s)

    # --- asyncio callbacks ---
    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        self.proxy.connections.discard(self)
        self.proxy.stats.downstream_cx_active -= 1
        self.timer.stop()
        by = BY_CLOSE if self.client_eof or exc is not None else BY_US  # the client's FIN or reset, or ours
        for ex in list(self.streams.values()):
            ex.peer_reset(by)
        self.streams.clear()
        self.proxy.connection_closed()

    def read(self, data: bytes) -> None:
        try:
            events = self.receive(data)
        except h2wire.FLOOD_ERRORS as exc:
            # Envoy's ProtocolConstraints: nothing more is sent (no GOAWAY), the connection ends as for any error
            self.stats.count_h2_flood(h2wire.flood_code(exc))
            log.debug("h2 connection %d: closed: %s", self.id, exc)
            self._close_after_error(flush=False)
            return
        except h2wire.PROTOCOL_ERRORS as exc:
            log.debug("h2 connection %d: protocol error: %s", self.id, exc)
            self._close_after_error(flush=True)  # the codec queued its GOAWAY (or, for an invalid frame, nothing)
            return
        for event in events:
            if self.closed:
                return
            self._event(event)
        code = self.outbound_flood()  # what the read made us queue (Envoy checks after each dispatch)
        if code:
            self._flooded_after_read(code)
            return
        self.schedule_flush()

    def _close_after_error(self, *, flush: bool) -> None:
        """A read broke the protocol, or went past one of Envoy's inbound flood limits (not `flush`: nothing more is
        written), as Envoy 1.40 ends the connection after any codec error (its HCM's FlushWriteAndDelay, seen in
        test_differential_h2_close): what the codec queued -- its GOAWAY, or nothing -- is written and nothing after
        it, the streams end, and the connection closes `limits.DOWNSTREAM_DELAYED_CLOSE_S` later, or when the client
        closes it first. What the client sends meanwhile is dropped: a close with unread bytes is a reset, which
        could destroy the GOAWAY before the client read it."""
        self.going_away = True
        if flush:
            self.flush()
        self.sealed = True
        t = self.transport
        if t is None or t.is_closing():
            return
        self.timer.stop()
        self._linger = self.proxy.loop.call_later(limits.DOWNSTREAM_DELAYED_CLOSE_S, self._linger_over)
        for ex in list(self.streams.values()):  # nothing more is sent: the streams end here
            ex.peer_reset(BY_US)

    def _linger_over(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if t.get_write_buffer_size():
                t.abort()  # the client did not read the GOAWAY in time: nothing more waits for it
            else:
                t.close()

    def _flooded_after_read(self, code: int) -> None:
        """Envoy's outbound flood limits after a read: the client does not read what it makes us send. What is
        queued is written and the connection closes once it is out, or `limits.DOWNSTREAM_DELAYED_CLOSE_S` later
        (Envoy's FlushWriteAndDelay, nothing more read)."""
        t = self.transport
        if t is None or t.is_closing():
            return
        self.stats.count_h2_flood(code)
        log.debug("h2 connection %d: closed: outbound frame flood (%d)", self.id, code)
        self.going_away = True
        data = self.codec.data_to_send()
        if data:
            t.write(data)
        self.sealed = True
        t.close()
        self.proxy.loop.call_later(limits.DOWNSTREAM_DELAYED_CLOSE_S, t.abort)
        for ex in list(self.streams.values()):  # nothing more is sent: the streams end here
            ex.peer_reset(BY_US)

    def eof_received(self) -> bool | None:
        self.client_eof = True
        return None

    def pause_writing(self) -> None:
        for ex in self.streams.values():
            if ex.up is not None:
                ex.up.pause_reading()

    def resume_writing(self) -> None:
        for ex in self.streams.values():
            if ex.up is not None:
                ex.up.resume_reading()

    # --- events ---
    def _event(self, ev: h2wire.Event) -> None:  # noqa: PLR0912 - one branch per event kind
        kind = ev[0]
        if kind == h2wire.EV_DATA:
            sid = ev[1]
            size = ev[4]
            ex = self.streams.get(sid)
            if ex is None:
                if size:
                    self.ack(sid, size)
                return
            end = ev[3]
            if end:
                ex.end_in = True
            if size:
                if ex.up_paused:
                    ex.unacked += size
                else:
                    self.ack(sid, size)
            ex.request_data(ev[2], end)
        elif kind == h2wire.EV_REQUEST:
            self._request(ev[1], ev[2], ev[3])
        elif kind == h2wire.EV_TRAILERS:
            ex = self.streams.get(ev[1])
            if ex is not None:
                ex.end_in = True
                ex.request_trailers([(n, v) for n, v in ev[2]])
        elif kind == h2wire.EV_END:
            ex = self.streams.get(ev[1])
            if ex is not None and not ex.end_in:  # ended without data in this event (never, with h2 4.x)
                ex.end_in = True
                ex.request_data(b"", True)
        elif kind == h2wire.EV_RESET:
            ex = self.streams.get(ev[1])
            if ex is None:
                return
            if ev[3]:  # the client's RST_STREAM
                self.proxy.stats.downstream_rq_rx_reset += 1
                if self.proxy.loop.time() - ex.created < limits.H2_PREMATURE_RESET_MIN_LIFETIME_S:
                    self.premature_resets += 1
            self.forget_stream(ex.out)
            ex.peer_reset(BY_RESET if ev[3] else BY_CODEC)
        # a client's GOAWAY (EV_GOAWAY), whatever its code, changes nothing: Envoy's HCM serves the connection on,
        # new streams too, until the client closes it

    def _request(self, sid: int, headers: list[Header], end_stream: bool) -> None:
        if len(self.streams) >= limits.H2_MAX_CONCURRENT_STREAMS:  # refused by the codec, as Envoy's
            self.reset_stream(h2peer.OutStream(sid), h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stats = self.proxy.stats
        stats.downstream_rq_total += 1
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
        opts = self.proxy.cfg.http
        if size > opts.max_request_headers_kb * 1024 or len(headers) > opts.max_headers_count:
            # Envoy: the stream is reset (its codec refuses the header block); the connection goes on
            stats.downstream_rq_4xx += 1
            self.reset_stream(h2peer.OutStream(sid), h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.closed_streams += 1
            return
        if self.going_away or self.proxy.draining:
            self.reset_stream(h2peer.OutStream(sid), h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stats.downstream_rq_active += 1
        self.timer.idle_at = 0.0
        ex = H2Exchange(self, sid, headers, end_stream)
        self.streams[sid] = ex
        if opts.stream_idle_timeout_s:  # watched from its start (a stream that never ends, nothing else wakes it)
            self.timer.wake_at(ex.created + opts.stream_idle_timeout_s)
        if ex.end_by:
            self.timer.wake_at(ex.end_by)
        if opts.request_timeout_s and not end_stream:  # Envoy's request_timeout: the whole request within it
            self.timer.wake_at(ex.created + opts.request_timeout_s)
        ex.start()

    # --- used by exchanges ---
    def stream_info(self) -> agent_chain.StreamInfo:
        info = self._info
        if info is None:
            peer = self.peer or ("", 0)
            local = self.local or ("", 0)
            info = self._info = agent_chain.StreamInfo(
                remote_address=str(peer[0]),
                remote_port=int(peer[1]),
                local_address=str(local[0]),
                local_port=int(local[1]),
                protocol="HTTP/2",
                scheme="https" if self.tls else "http",
                connection_id=self.id,
                cluster_name=self.state.config.cluster,
                listener=self.state.config,
            )
        return info

    def send_failed(self, sid: int) -> None:
        ex = self.streams.get(sid)
        if ex is not None:
            ex.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            self.reset_stream(h2peer.OutStream(sid), h2.errors.ErrorCodes.INTERNAL_ERROR)

    def reset_after_response(self, s: h2peer.OutStream) -> None:
        """The response ended before the request did: the client may stop sending (RFC 9113 8.1)."""
        self.reset_after_end(s)

    def stream_done(self, ex: H2Exchange) -> None:
        if self.streams.pop(ex.out.id, None) is None:
            return
        self.proxy.stats.downstream_rq_active -= 1
        self.closed_streams += 1
        self._check_premature_resets()
        if not self.streams:
            if self.going_away or self.proxy.draining:
                self.close()
            elif not self.closed:
                self.timer.arm_idle(self.proxy.idle_timeout_s)

    def _check_premature_resets(self) -> None:
        """Envoy's rapid-reset guard (ConnectionManagerImpl::maybeDrainDueToPrematureResets)."""
        premature, total = self.premature_resets, limits.H2_PREMATURE_RESET_TOTAL
        if self.closed_streams < total:
            if premature < total // 2:
                return
        elif premature * 2 < self.closed_streams:
            return
        self.proxy.stats.downstream_rq_too_many_premature_resets += 1
        log.warning("h2 connection %d: closed after %d premature stream resets", self.id, premature)
        self.going_away = True
        self.goaway(h2.errors.ErrorCodes.NO_ERROR)
        if self.transport is not None:
            self.transport.close()

    # --- timers: one per connection (idle timeout, response deadlines, stream idle timeouts) ---
    def _on_timer(self) -> None:
        if self.closed:
            return
        now = self.proxy.loop.time()
        pending = 0.0
        opts = self.proxy.cfg.http
        request_timeout = opts.request_timeout_s or float("inf")
        for ex in list(self.streams.values()):
            idle_at = ex.last_active + (ex.idle_s or float("inf"))  # 0: off
            # the request timeout runs until the client's request ended or the response started (Envoy)
            request_at = float("inf") if ex.end_in or ex.resp_started else ex.created + request_timeout
            if ex.deadline and ex.deadline <= now:
                ex.timed_out()
            elif ex.end_by and ex.end_by <= now:
                ex.duration_reached()
            elif request_at <= now:
                ex.request_timed_out()
            elif idle_at <= now:
                ex.idle_timed_out()
            else:
                due = min(idle_at, request_at, ex.deadline or float("inf"), ex.end_by or float("inf"))
                if due != float("inf") and (not pending or due < pending):
                    pending = due
        idle_at = self.timer.idle_at
        if idle_at and not self.streams:
            if idle_at <= now:
                self.close()
                return
            if not pending or idle_at < pending:
                pending = idle_at
        if pending:
            self.timer.wake_at(pending)

    # --- endings ---
    def close(self) -> None:
        """GOAWAY; the connection closes once its streams are done (at once when there are none)."""
        self.going_away = True
        if self.closed or self.sealed or self.transport is None:
            return
        self.goaway(h2.errors.ErrorCodes.NO_ERROR)
        if not self.streams and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.going_away = True
        if self.transport is not None:
            self.transport.abort()
