"""The upstream side for clusters that speak HTTP/2 (`Cluster.http2`): one h2c connection carrying many
streams (`H2Upstream`), a request on it (`UpStream`) and the cluster's connections (`H2Pool`).

Used by the HTTP/2 downstream (`meshplug.agent.h2down`), the HTTP/1.1 exchanges of listeners whose cluster speaks
HTTP/2, and plugins' HTTP and gRPC calls (`meshplug.agent.grpccall`). Framing, HPACK and flow control are the
codec's (`meshplug.agent.h2wire`); this module does the I/O, backpressure and stream bookkeeping. A stream delivers
its response to a `meshplug.agent.upstream.Sink` exactly as an HTTP/1.1 connection does (`up_headers`, `up_body`
per DATA frame, `up_trailers`, `up_complete`, `up_failed` with Envoy's reset reason), so the exchanges do not care
which protocol the cluster speaks.

Connections are opened with prior knowledge (the preface at once, Envoy's `http2_protocol_options` on a
plaintext cluster) and shared: a new stream goes on the newest connection that has room under the server's
SETTINGS_MAX_CONCURRENT_STREAMS (and `limits.H2_UPSTREAM_MAX_STREAMS`); concurrent requests wait for one
connection being opened rather than each opening its own. GOAWAY: the connection takes no new stream;
streams above its last-stream-id fail with "remote refused stream reset" (never processed: the exchange may
retry them), the others finish. Flow control both ways: request bodies wait for window; response DATA is
acknowledged (window re-opened) only while the receiving side is not paused. An upstream that breaks the protocol
ends its connection as Envoy's codec client ends it: nothing more is written but nghttp2's own GOAWAY (the codec's
`silent`), the streams fail with a protocol error (502, UPE); a response head past max_response_headers_kb / _count
(the pool's `max_head` / `max_count`) resets only its stream (RST_STREAM INTERNAL_ERROR), reported as Envoy reports
it: a remote reset (503, UR).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import cast

import h2.errors
import h2.settings

from meshplug import limits
from meshplug.agent import config as agent_config
from meshplug.agent import h2peer, h2wire, wire
from meshplug.agent import stats as agent_stats
from meshplug.agent.upstream import Sink

Header = tuple[bytes, bytes]


def client_settings() -> list[tuple[int, int]]:
    """The SETTINGS the agent sends an upstream, Envoy 1.40's (in its order): no push, the header table, no
    extended CONNECT, its stream limit; no SETTINGS_MAX_HEADER_LIST_SIZE (a response head's bound is the listener's
    max_response_headers_kb, applied to the decoded head). The stream window is opened per stream by a
    WINDOW_UPDATE after its HEADERS (the codec's `stream_window`), not by SETTINGS_INITIAL_WINDOW_SIZE as Envoy
    does: grpc-core's server ignores a larger initial window for a stream opened in the same flight as the SETTINGS
    and stalls at 64 KiB (seen with grpcio 1.85)."""
    return [
        (h2.settings.SettingCodes.ENABLE_PUSH, 0),
        (h2.settings.SettingCodes.HEADER_TABLE_SIZE, limits.H2_HEADER_TABLE_SIZE),
        (h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL, 0),
        (h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS, limits.H2_MAX_CONCURRENT_STREAMS),
    ]


def _reset_reason(remote: bool, code: int) -> str:
    """Envoy's reset reason for a stream reset by the server (`remote`: its RST_STREAM) or by the codec (the
    response broke the protocol: a content-length the DATA does not match, ...)."""
    if not remote:
        return wire.RESET_PROTOCOL
    return wire.RESET_REFUSED if code == h2.errors.ErrorCodes.REFUSED_STREAM else wire.RESET_REMOTE


class UpStream(h2peer.OutStream):
    """One request on an upstream HTTP/2 connection; its response goes to `sink`."""

    __slots__ = ("conn", "paused", "sink", "unacked")

    def __init__(self, conn: H2Upstream, stream_id: int, sink: Sink) -> None:
        super().__init__(stream_id)
        self.conn = conn
        self.sink: Sink | None = sink
        self.paused = False  # the receiving side cannot take more: DATA is not acknowledged meanwhile
        self.unacked = 0

    def send_headers(self, headers: Sequence[Header], end_stream: bool) -> None:
        """The request head; pseudo-headers first (:method, :scheme, :authority, :path), lower-case names."""
        self.conn.send_headers(self, headers, end_stream)

    def send_data(self, data: bytes, end_stream: bool) -> None:
        self.conn.send_data(self, data, end_stream)

    def send_trailers(self, trailers: Sequence[Header]) -> None:
        self.conn.send_trailers(self, trailers)

    def cancel(self) -> None:
        """Reset the stream (RST_STREAM CANCEL); nothing more is delivered to the sink."""
        self.sink = None
        if not self.closed:
            self.conn.drop(self, h2.errors.ErrorCodes.CANCEL)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.unacked and not self.closed:
                self.conn.ack(self.id, self.unacked)
            self.unacked = 0


class H2Upstream(h2peer.H2Peer, asyncio.Protocol):
    """One HTTP/2 connection to a cluster: its streams and their flow control."""

    def __init__(self, pool: H2Pool) -> None:
        super().__init__(pool.stats)
        self.pool = pool
        self.streams: dict[int, UpStream] = {}
        self.goaway_seen = False
        #: the upstream sent a GOAWAY: the connection closes without one of ours (as Envoy's codec client)
        self.peer_goaway = False
        self.closed = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool.stats.upstream_cx_total += 1
        self.pool.stats.upstream_cx_active += 1
        pool = self.pool
        self.start_codec(  # SETTINGS sent with the preface, applied once acknowledged
            server=False,
            settings=client_settings(),
            connection_window=limits.H2_INITIAL_CONNECTION_WINDOW,
            max_header_bytes=pool.max_head,  # a response head past them: its stream is reset, as Envoy's
            max_header_count=pool.max_count,
            stream_window=limits.H2_INITIAL_STREAM_WINDOW,  # a WINDOW_UPDATE after each stream's HEADERS
        )
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.stats.upstream_cx_active -= 1
        self.pool.forget(self)
        self._fail_all(wire.RESET_TERMINATION)

    def read(self, data: bytes) -> None:
        try:
            events = self.receive(data)
        except h2wire.PROTOCOL_ERRORS as exc:
            self.goaway_seen = True  # no new stream goes on this connection
            self.closed = True  # the codec ended it: its GOAWAY is the last frame sent
            self.flush()
            # as Envoy: what the frames before the error gave is passed on (a response head and body: the exchange
            # then cuts the response it started); the streams still open fail with a protocol error
            for event in h2wire.events_before(exc):
                self._event(event)
            self._fail_all(wire.RESET_PROTOCOL)
            self.close()
            return
        for event in events:
            self._event(event)
        code = self.outbound_flood()  # what the read made us queue (Envoy's codec checks after each dispatch)
        if code:
            self._flooded_after_read(code)
            return
        self.schedule_flush()

    def _flooded_after_read(self, code: int) -> None:
        """Envoy's outbound flood limits after a read: the upstream does not read what it makes us send. The
        connection is closed at once (Envoy's codec client: NoFlush), its streams fail as for a protocol error (a
        dispatch error)."""
        if self.closed:
            return
        self.stats.count_h2_flood(code)
        self.goaway_seen = True
        self.closed = True
        self._fail_all(wire.RESET_PROTOCOL)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        for s in list(self.streams.values()):
            if s.sink is not None:
                s.sink.up_pause()

    def resume_writing(self) -> None:
        for s in list(self.streams.values()):
            if s.sink is not None:
                s.sink.up_resume()

    def _event(self, ev: h2wire.Event) -> None:  # noqa: PLR0912, PLR0915 - one branch per event kind
        kind = ev[0]
        if kind == h2wire.EV_DATA:
            sid = ev[1]
            s = self.streams.get(sid)
            size = ev[4]
            if s is None:
                if size:
                    self.codec.ack(sid, size)
                return
            if size:
                if s.paused:
                    s.unacked += size
                else:
                    self.codec.ack(sid, size)
            data = ev[2]
            if data and s.sink is not None:
                s.sink.up_body(data)
            if ev[3]:
                self._ended(s)
        elif kind == h2wire.EV_RESPONSE:
            s = self.streams.get(ev[1])
            if s is None or s.sink is None:
                return
            status = 0
            headers: list[Header] = []
            for name, value in ev[2]:
                if name == b":status":
                    status = int(value)
                elif name[:1] != b":":
                    headers.append((name, value))
            ended = ev[3]
            s.sink.up_headers(status, b"", headers, wire.END_STREAM if ended else None)
            if ended:
                self._ended(s)
        elif kind == h2wire.EV_TRAILERS:
            s = self.streams.get(ev[1])
            if s is not None:
                if s.sink is not None:
                    s.sink.up_trailers([(n, v) for n, v in ev[2] if n[:1] != b":"])
                self._ended(s)
        elif kind == h2wire.EV_END:
            s = self.streams.get(ev[1])
            if s is not None:
                self._ended(s)
        elif kind == h2wire.EV_RESET:
            s = self.streams.pop(ev[1], None)
            if s is not None:
                self.forget_stream(s)
                sink, s.sink = s.sink, None
                if sink is not None:
                    sink.up_failed(_reset_reason(ev[3], ev[4]))
                self._settle()
        elif kind == h2wire.EV_GOAWAY:
            self.goaway_seen = self.peer_goaway = True
            self.pool.forget(self)
            last = ev[1]
            for sid in [sid for sid in self.streams if sid > last]:
                s = self.streams.pop(sid)
                self.forget_stream(s)
                sink, s.sink = s.sink, None
                if sink is not None:
                    sink.up_failed(wire.RESET_REFUSED)  # never processed by the server
            self._settle()

    def _ended(self, s: UpStream) -> None:
        if self.streams.pop(s.id, None) is None:
            return
        self.forget_stream(s)
        sink, s.sink = s.sink, None
        if sink is not None:
            sink.up_complete()
        self._settle()

    def _settle(self) -> None:
        if self.goaway_seen and not self.streams:
            self.close()

    def _fail_all(self, reason: str) -> None:
        streams, self.streams = self.streams, {}
        for s in streams.values():
            self.forget_stream(s)
            sink, s.sink = s.sink, None
            if sink is not None:
                sink.up_failed(reason)

    # streams
    def has_room(self) -> bool:
        if self.goaway_seen or self.closed or self.transport is None or self.transport.is_closing():
            return False
        remote = self.codec.remote_max_streams()
        return len(self.streams) < min(remote, limits.H2_UPSTREAM_MAX_STREAMS)

    def open(self, sink: Sink) -> UpStream:
        s = UpStream(self, self.codec.next_stream_id(), sink)
        self.streams[s.id] = s
        self.pool.stats.upstream_rq_total += 1
        return s

    def send_failed(self, sid: int) -> None:
        up = self.streams.get(sid)
        sink = None
        if up is not None:
            sink, up.sink = up.sink, None
        self.drop(up or h2peer.OutStream(sid), h2.errors.ErrorCodes.INTERNAL_ERROR)
        if sink is not None:
            sink.up_failed(wire.RESET_PROTOCOL)

    def drop(self, s: h2peer.OutStream, code: int) -> None:
        """Reset `s` and forget it (its sink is told nothing)."""
        if self.streams.pop(s.id, None) is not None:
            self.reset_stream(s, code)
        else:
            self.forget_stream(s)
        self._settle()

    def close(self) -> None:
        """GOAWAY (unless the connection is gone, or the upstream sent its own) and close once written."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self.closed and not self.peer_goaway:
            self.goaway()
        self.transport.close()


class H2Pool:
    """A cluster that speaks HTTP/2: its connections; streams go on the newest one with room."""

    def __init__(
        self, cluster: agent_config.Cluster, stats: agent_stats.Stats, http: agent_config.HttpOptions | None = None
    ) -> None:
        self.cluster = cluster
        self.stats = stats
        http = http or agent_config.HttpOptions()
        #: a response head's bounds (max_response_headers_kb / _count)
        self.max_head = http.max_response_headers_kb * 1024
        self.max_count = http.max_response_headers_count
        self.conns: list[H2Upstream] = []
        self._connecting: asyncio.Future[H2Upstream] | None = None

    def take(self, sink: Sink) -> UpStream | None:
        """A stream on an open connection with room, or None (then `open` connects)."""
        for conn in reversed(self.conns):
            if conn.has_room():
                return conn.open(sink)
        return None

    async def open(self, sink: Sink) -> UpStream:
        """A stream, connecting when no connection has room; raises OSError or TimeoutError."""
        while True:
            s = self.take(sink)
            if s is not None:
                return s
            conn = await self._connect()
            if conn.has_room():
                return conn.open(sink)

    async def _connect(self) -> H2Upstream:
        pending = self._connecting
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[H2Upstream] = loop.create_future()
        self._connecting = fut
        c = self.cluster
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: H2Upstream(self), c.address, c.port), timeout=c.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else needs to
            raise
        self._connecting = None
        self.conns.append(conn)
        fut.set_result(conn)
        return conn

    def forget(self, conn: H2Upstream) -> None:
        with contextlib.suppress(ValueError):
            self.conns.remove(conn)

    def close(self) -> None:
        for conn in list(self.conns):
            conn.close()
        self.conns.clear()
