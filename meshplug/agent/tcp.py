"""TCP proxying (Envoy's tcp_proxy with wasm network filters in front of it): `TcpDownstream` per client
connection and its upstream half, and the interfaces a network plugin implements (`NetworkFilter`,
`NetworkStream`; meshplug.agent.host implements them).

Created per accepted connection by `meshplug.agent.server.Proxy`'s TCP listeners.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol, cast

from meshplug.agent import chain as agent_chain
from meshplug.agent import routing, wire

if TYPE_CHECKING:
    from meshplug.agent.server import Proxy

log = logging.getLogger("meshplug.agent.tcp")


class NetworkStream(Protocol):
    """One network plugin's context for one TCP connection (host.TcpStream implements it)."""

    def start(self) -> agent_chain.Action: ...

    def on_downstream_data(self, data: bytes, end_stream: bool) -> tuple[agent_chain.Action, bytes]: ...

    def on_upstream_data(self, data: bytes, end_stream: bool) -> tuple[agent_chain.Action, bytes]: ...

    def on_close(self, peer: str, peer_type: int = 2) -> None: ...

    def finish(self) -> None: ...

    def set_upstream_fields(self, fields: dict[str, object]) -> None:
        """The upstream connected: its StreamInfo upstream_* fields (upstream.address / port properties)."""
        ...


class NetworkFilter(Protocol):
    """A plugin as a network filter (host.Plugin implements it)."""

    @property
    def fail_strategy(self) -> agent_chain.FailStrategy: ...

    def new_connection(self, info: agent_chain.StreamInfo) -> NetworkStream | None: ...


#: proxy-wasm PeerType: the close came from this proxy or from the peer
PEER_LOCAL, PEER_REMOTE = 1, 2


class _TcpUpstream(asyncio.Protocol):
    """The upstream half of a TCP proxy connection; reports everything to its `TcpDownstream`."""

    def __init__(self, owner: TcpDownstream) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.owner.proxy.stats.upstream_cx_total += 1
        self.owner.proxy.stats.upstream_cx_active += 1

    def data_received(self, data: bytes) -> None:
        self.owner.from_upstream(data, False)

    def eof_received(self) -> bool | None:
        self.owner.from_upstream(b"", True)
        return True  # keep our write side open until the downstream half-closes too

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.proxy.stats.upstream_cx_active -= 1
        self.owner.upstream_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_down(True)

    def resume_writing(self) -> None:
        self.owner.pause_down(False)


class TcpDownstream(asyncio.Protocol):
    """A TCP proxy connection (Envoy's tcp_proxy with wasm network filters in front of it).

    Bytes from the client pass every plugin's `on_downstream_data` in chain order, bytes from the upstream
    every plugin's `on_upstream_data` in reverse order (network write filters run backwards, as in Envoy).
    STOP keeps the bytes buffered in that plugin's context (they go out with its next CONTINUE); a failed
    plugin is bypassed under FAIL_OPEN and closes the connection otherwise. Half-closes are forwarded
    (end_stream reaches the plugins first). When both sides are gone, each plugin gets its close callbacks
    and then `finish` (on_done, on_log, on_delete).
    """

    def __init__(self, proxy: Proxy, state: routing.ListenerState) -> None:
        self.proxy = proxy
        self.state = state
        pool = state.default_pool
        assert pool is not None  # a TCP listener has its tcp_proxy cluster
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.up: _TcpUpstream | None = None
        self.streams: list[tuple[NetworkFilter, NetworkStream]] = []
        self.pending_up: list[bytes] = []  # bytes for the upstream before it is connected
        self.up_eof_pending = False
        self.down_eof = False  # the client half-closed (and it was forwarded)
        self.up_eof = False  # the upstream half-closed (and it was forwarded)
        self.down_closed = False
        self.up_closed = False
        self.finished = False
        self.local_close = False  # this proxy closed (a plugin failed, both halves ended, drain)
        self.id = next(wire.CONNECTION_IDS)

    # downstream: asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        proxy.stats.downstream_cx_total += 1
        proxy.stats.downstream_cx_active += 1
        proxy.connections.add(self)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        info = agent_chain.StreamInfo(
            remote_address=str(peer[0]),
            remote_port=int(peer[1]),
            local_address=str(local[0]),
            local_port=int(local[1]),
            protocol="",
            connection_id=self.id,
            start_time_ns=time.time_ns(),
            cluster_name=self.pool.cluster.name,
            listener=self.state.config,
        )
        for f in self.state.network:
            stream = f.new_connection(info)
            if stream is None or stream.start() is agent_chain.Action.FAIL:
                if f.fail_strategy is agent_chain.FailStrategy.FAIL_OPEN:
                    continue
                log.debug("tcp connection %d refused by a failed network plugin", self.id)
                if stream is not None:
                    self.streams.append((f, stream))
                self.up_closed = True
                self.local_close = True
                self.transport.close()
                return
            self.streams.append((f, stream))
        self.transport.pause_reading()  # until the upstream is connected
        proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        c = self.pool.cluster
        ep = self.pool.endpoint()
        try:
            _, up = await asyncio.wait_for(
                self.proxy.loop.create_connection(lambda: _TcpUpstream(self), ep.address, ep.port),
                timeout=c.connect_timeout_s,
            )
        except (OSError, TimeoutError) as exc:
            self.proxy.stats.upstream_cx_connect_fail += 1
            log.debug("tcp connect to cluster %s failed: %r", c.name, exc)
            self.up_closed = True
            self.close()
            return
        assert up.transport is not None
        if self.down_closed:  # the client went away while we connected
            self.up = up
            self.local_close = True
            up.transport.close()
            return
        self.up = up
        if self.streams:
            peer = up.transport.get_extra_info("peername") or ("", 0)
            local = up.transport.get_extra_info("sockname") or ("", 0)
            fields: dict[str, object] = {
                "upstream_address": str(peer[0]),
                "upstream_port": int(peer[1]),
                "upstream_local_address": str(local[0]),
                "upstream_local_port": int(local[1]),
            }
            for _, stream in self.streams:
                stream.set_upstream_fields(fields)
        for data in self.pending_up:
            up.transport.write(data)
        self.pending_up = []
        if self.up_eof_pending and up.transport.can_write_eof():
            up.transport.write_eof()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._to_upstream(data, False)

    def eof_received(self) -> bool | None:
        self.down_eof = True
        self._to_upstream(b"", True)
        self._maybe_close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.stats.downstream_cx_active -= 1
        self.proxy.connections.discard(self)
        self.down_closed = True
        for _, stream in self.streams:
            stream.on_close("downstream", PEER_LOCAL if self.local_close else PEER_REMOTE)
        up = self.up
        if up is not None and up.transport is not None and not up.transport.is_closing():
            self.local_close = True
            up.transport.close()
        elif up is None:
            self.up_closed = True
        self._finish()
        self.proxy.connection_closed()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None and not self.up.transport.is_closing():
            self.up.transport.resume_reading()

    # the two directions
    def _through(self, data: bytes, end_stream: bool, *, downstream: bool) -> bytes | None:
        """`data` after every plugin of this direction; None when a plugin holds it or closed the connection."""
        order = self.streams if downstream else list(reversed(self.streams))
        for f, stream in order:
            if downstream:
                action, out = stream.on_downstream_data(data, end_stream)
            else:
                action, out = stream.on_upstream_data(data, end_stream)
            if action is agent_chain.Action.CONTINUE:
                data = out
            elif action is agent_chain.Action.FAIL:
                if f.fail_strategy is not agent_chain.FailStrategy.FAIL_OPEN:
                    self.abort()
                    return None
                self.streams = [(g, s) for g, s in self.streams if s is not stream]
            else:
                return None
        return data

    def _to_upstream(self, data: bytes, end_stream: bool) -> None:
        out = self._through(data, end_stream, downstream=True)
        if out is None:
            return
        up = self.up
        if up is None or up.transport is None:
            if out:
                self.pending_up.append(out)
            self.up_eof_pending = self.up_eof_pending or end_stream
            return
        if up.transport.is_closing():
            return
        if out:
            up.transport.write(out)
        if end_stream and up.transport.can_write_eof():
            up.transport.write_eof()

    def from_upstream(self, data: bytes, end_stream: bool) -> None:
        out = self._through(data, end_stream, downstream=False)
        t = self.transport
        if end_stream:
            self.up_eof = True
        if out is None or t is None or t.is_closing():
            return
        if out:
            t.write(out)
        if end_stream:
            if t.can_write_eof():
                t.write_eof()
            self._maybe_close()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.up_closed = True
        for _, stream in self.streams:
            stream.on_close("upstream", PEER_LOCAL if self.local_close else PEER_REMOTE)
        t = self.transport
        if t is not None and not t.is_closing():
            self.local_close = True
            t.close()  # flushes what is buffered, then closes
        self._finish()

    def pause_down(self, paused: bool) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            if paused:
                t.pause_reading()
            else:
                t.resume_reading()

    # endings
    def _maybe_close(self) -> None:
        if self.down_eof and self.up_eof:
            self.close()

    def close(self) -> None:
        self.local_close = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if self.up is not None and self.up.transport is not None and not self.up.transport.is_closing():
            self.up.transport.close()

    def abort(self) -> None:
        self.local_close = True
        if self.transport is not None:
            self.transport.abort()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.abort()

    def _finish(self) -> None:
        if self.finished or not (self.down_closed and self.up_closed):
            return
        self.finished = True
        for _, stream in self.streams:
            stream.finish()
