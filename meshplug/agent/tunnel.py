"""Upgraded HTTP/1.1 connections (WebSocket and any other protocol a listener allows in `upgrade_types`, as
Envoy's `upgrade_configs`): the request head goes to the cluster on a connection of its own, then bytes flow
both ways untouched until either side closes -- `Tunnel.start`.

Called by `meshplug.agent.downstream.Downstream` when a request asks `Connection: upgrade` with an `Upgrade`
token its listener allows (others are refused there, 403 as Envoy). The downstream transport is handed over
here (`transport.set_protocol`); the upstream's answer (101 Switching Protocols, or a refusal) is relayed as
it comes, like everything after it. Flow control both ways: a full write buffer on one side pauses reading
on the other. A cluster that cannot be reached answers 503 with Envoy's wording. Plugins see neither the
upgrade request nor its bytes (Envoy would run its HTTP filters on the request head: a known difference).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from meshplug.agent import wire

if TYPE_CHECKING:
    from meshplug.agent.server import Proxy
    from meshplug.agent.upstream import Pool


class _Side(asyncio.Protocol):
    """One end of a tunnel: what it reads goes to the other end."""

    def __init__(self, tunnel: Tunnel, name: str) -> None:
        self.tunnel = tunnel
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.other: _Side | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            other.transport.write(data)

    def eof_received(self) -> bool | None:
        other = self.other
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

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Tunnel:
    """A client connection upgraded to a raw byte stream to the cluster."""

    def __init__(self, proxy: Proxy, pool: Pool) -> None:
        self.proxy = proxy
        self.pool = pool
        self.down = _Side(self, "downstream")
        self.up = _Side(self, "upstream")
        self.down.other, self.up.other = self.up, self.down
        self.closed = False

    @property
    def queue(self) -> tuple[()]:
        """Nothing waits for a response (the proxy's drain lets a tunnel run until the deadline)."""
        return ()

    def start(self, transport: asyncio.Transport, head: bytes, rest: bytes) -> None:
        """Take over the client's `transport` (its request `head` read, `rest` already read after it) and
        connect to the cluster; `head` and `rest` go first."""
        transport.set_protocol(self.down)
        self.down.transport = transport
        transport.pause_reading()  # until the upstream is there
        self.proxy.connections.add(self)
        self.proxy.stats.downstream_cx_upgrades_total += 1
        self.proxy.loop.create_task(self._connect(head + rest))

    async def _connect(self, first: bytes) -> None:
        c = self.pool.cluster
        loop = self.proxy.loop
        try:
            _, _ = await asyncio.wait_for(
                loop.create_connection(lambda: self.up, c.address, c.port), timeout=c.connect_timeout_s
            )
        except (OSError, TimeoutError):
            self.pool.stats.upstream_cx_connect_fail += 1
            body = wire.reset_body(wire.RESET_CONNECT_FAILURE)
            reply = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n" % len(
                body
            )
            reply += b"date: %b\r\nserver: meshplug\r\nconnection: close\r\n\r\n%b" % (wire.DATE.get(), body)
            down = self.down.transport
            if down is not None and not down.is_closing():
                down.write(reply)
                down.close()
            return
        self.pool.stats.upstream_cx_total += 1
        self.pool.stats.upstream_rq_total += 1
        up = self.up.transport
        down = self.down.transport
        if down is None or down.is_closing():
            self.up.close()
            return
        if up is not None:
            up.write(first)
        down.resume_reading()

    def side_closed(self, side: _Side) -> None:
        """One end is gone: the other is closed too; the client's end closing ends the tunnel."""
        if side is self.up:
            self.down.close()
            return
        self.up.close()
        if not self.closed:
            self.closed = True
            self.proxy.connections.discard(self)
            self.proxy.stats.downstream_cx_active -= 1
            self.proxy.connection_closed()

    def close(self) -> None:
        self.down.close()
        self.up.close()

    def abort(self) -> None:
        for side in (self.down, self.up):
            if side.transport is not None:
                side.transport.abort()
