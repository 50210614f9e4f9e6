"""An HTTP/1.1 client connection's transport side (`H1Peer`): reading paused and resumed by reason, and writes
batched both ways -- one send per loop iteration downstream (at the end of the read when it is answered at once),
one per parsed read upstream.

Base of `meshplug.agent.downstream.Downstream`, which parses the requests, sets `_parsing` while a read is
parsed and parses the reads held while a pipelined request waits (`hold_read`, `take_held`) when its turn
comes; its exchanges (`meshplug.agent.exchange`, `meshplug.agent.filtered`) write through it. The HTTP/2
counterpart is `meshplug.agent.h2peer.H2Peer`.
"""

from __future__ import annotations

import asyncio

from meshplug import limits
from meshplug.agent import wire
from meshplug.agent.upstream import Upstream


class H1Peer:
    """A client connection's reads (paused by reason: `wire.PAUSE_*`) and batched writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._paused = 0
        #: the transport's reads are paused: for any reason but a pipeline wait alone, which keeps reading (as
        #: Envoy detects an early close while read-disabled) and holds what comes (`held`) until its turn
        self._reading_paused = False
        self.held: list[bytes] = []
        self.held_bytes = 0
        self._out: list[bytes] = []
        #: while a read is parsed, upstream writes collect here and leave in one send when it is done (and
        #: downstream writes in `_out`, sent then too)
        self._parsing = False
        self._up_target: Upstream | None = None
        self._up_out: list[bytes] = []

    def pause(self, reason: int) -> None:
        self._paused |= reason
        self._sync_reading()

    def resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        self._sync_reading()

    def hold_read(self, data: bytes) -> None:
        """A read that came while the connection waits for an answer (PAUSE_PIPELINE): kept for its turn (the
        subclass parses `held` then); past `limits.PROXY_BUFFER_HIGH_WATER` held, reading pauses (the next close
        is then seen once it resumes)."""
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes > limits.PROXY_BUFFER_HIGH_WATER:
            self._sync_reading()

    def _sync_reading(self) -> None:
        want = bool(self._paused & ~wire.PAUSE_PIPELINE) or self.held_bytes > limits.PROXY_BUFFER_HIGH_WATER
        if want is self._reading_paused or self.transport is None or self.closed:
            return
        self._reading_paused = want
        if want:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def take_held(self) -> bytes:
        """The held reads as one, emptied (reading resumes if they had paused it)."""
        data = b"".join(self.held)
        self.held.clear()
        self.held_bytes = 0
        self._sync_reading()
        return data

    def up_write(self, up: Upstream, data: bytes) -> None:
        """Write to an upstream connection; while a read is parsed, the writes leave together after it."""
        if not self._parsing:
            up.write(data)
            return
        self._hold_for(up)
        self._up_out.append(data)

    def up_write_parts(self, up: Upstream, parts: list[bytes]) -> None:
        """`up_write` of several pieces (a body chunk and its framing)."""
        if not self._parsing:
            up.write_parts(parts)
            return
        self._hold_for(up)
        self._up_out += parts

    def _hold_for(self, up: Upstream) -> None:
        """The held writes are for `up` from now on (those held for another upstream leave first)."""
        target = self._up_target
        if target is not up:
            if target is not None:
                self._flush_up()
            self._up_target = up

    def _flush_up(self) -> None:
        up, self._up_target = self._up_target, None
        out = self._up_out
        if not out:
            return
        if up is not None and up.transport is not None and not up.transport.is_closing():
            wire.send_parts(up.transport, out)
        out.clear()

    def discard_up(self, up: Upstream) -> None:
        """`up` is being dropped: what is pending for it is not sent."""
        if self._up_target is up:
            self._up_target = None
            self._up_out.clear()

    def write(self, data: bytes) -> None:
        """Queue `data`; everything written in one loop iteration leaves in one send (head + body together).
        Written while a read is parsed (a local reply, a refusal, a 100 Continue), it leaves when that read is
        done (`flush` at the end of Downstream.data_received): no callback scheduled for it."""
        out = self._out
        out.append(data)
        if len(out) == 1 and not self._parsing:
            self.loop.call_soon(self.flush)

    def write_parts(self, parts: list[bytes]) -> None:
        """`write` of several pieces (a body chunk and its framing)."""
        out = self._out
        if not out and not self._parsing:
            self.loop.call_soon(self.flush)
        out += parts

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        if self.transport is not None and not self.closed:
            wire.send_parts(self.transport, out)
        out.clear()

    def abort(self) -> None:
        self._out.clear()
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
