"""An HTTP/2 connection over an asyncio transport, either end of the agent's (`H2Peer`), and a stream's outbound
state (`OutStream`).

Base of `meshplug.agent.h2down.H2Downstream` (clients) and `meshplug.agent.h2up.H2Upstream` (clusters): the codec
(`meshplug.agent.h2wire`), one write per loop iteration, and Envoy's outbound flood limits -- frames written to the
transport are in the outbound queue until the socket took the write that carried them. Past a limit outside a read
the connection is closed here, at once, as Envoy's codec closes it when a write goes past one; after a read each
end checks (`outbound_flood`) and ends the connection its own way. A read (`data_received`) is the subclass's
`read`: while it runs, a flush past a limit writes nothing and leaves it to that check (Envoy's codec writes
nothing while it dispatches).
"""

from __future__ import annotations

import asyncio
import collections
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Final, cast

import h2.errors

from meshplug import limits
from meshplug.agent import h2wire
from meshplug.agent.stats import Stats

Header = tuple[bytes, bytes]


class OutStream:
    """A stream as its connection's owner holds it: its id, and whether it is done with (nothing more is sent)."""

    __slots__ = ("closed", "id")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.closed = False


class H2Peer(ABC):
    """An HTTP/2 connection over an asyncio transport: its codec (`start_codec`), its reads (`read`), one write per
    loop iteration and Envoy's outbound flood limits; `stats` counts the floods."""

    def __init__(self, stats: Stats) -> None:
        self.codec: h2wire.Codec = _UNSTARTED
        self.transport: asyncio.Transport | None = None
        self.stats = stats
        self._flush_scheduled = False
        #: nothing more is written: the connection ended on our side (a connection error, a flood)
        self.sealed = False
        #: a read is being handled: a flush past an outbound limit leaves it to the check at the read's end (Envoy's
        #: codec writes nothing while it dispatches)
        self.reading = False
        self._written = 0  # bytes handed to the transport
        #: frames (all, control) the socket took, and the writes it has not taken all of yet: (the byte offset
        #: their end is at, the frame counts up to it)
        self._taken = (0, 0)
        self._writes: collections.deque[tuple[int, tuple[int, int]]] = collections.deque()

    def start_codec(
        self,
        *,
        server: bool,
        settings: Sequence[tuple[int, int]],
        connection_window: int,
        max_header_bytes: int,
        stream_window: int = 0,
        max_header_count: int = 0,
    ) -> None:
        """The codec, its SETTINGS (and the connection window) queued; the caller flushes."""
        self.codec = h2wire.new_codec(
            server=server,
            settings=settings,
            connection_window=connection_window,
            max_header_bytes=max_header_bytes,
            stream_window=stream_window,
            on_failed=self.send_failed,
            max_header_count=max_header_count,
        )

    # reading
    def data_received(self, data: bytes) -> None:
        if self.sealed:
            return  # the connection ended on our side: what the peer still sends is dropped
        self.reading = True
        try:
            self.read(data)
        finally:
            self.reading = False

    @abstractmethod
    def read(self, data: bytes) -> None:
        """What the peer sent: `receive` it, act on its events, then check the outbound limits (`outbound_flood`)."""

    def receive(self, data: bytes) -> list[h2wire.Event]:
        """The codec's events for `data`; one of PROTOCOL_ERRORS (its GOAWAY queued) when the peer broke the
        protocol."""
        return self.codec.receive(data)

    @abstractmethod
    def send_failed(self, sid: int) -> None:
        """Stream `sid` could not be sent (the codec refused it: closed stream, bad header): reset it
        (`reset_stream`) and tell its owner."""

    # sending
    def send_headers(self, s: OutStream, headers: Sequence[Header], end_stream: bool) -> None:
        if s.closed:
            return
        if not self.codec.send_headers(s.id, headers, end_stream):
            self.send_failed(s.id)
            return
        self.schedule_flush()

    def send_data(self, s: OutStream, data: bytes, end_stream: bool) -> None:
        if s.closed or (not data and not end_stream):
            return
        if not self.codec.send_data(s.id, data, end_stream):
            self.send_failed(s.id)
            return
        self.schedule_flush()

    def send_trailers(self, s: OutStream, trailers: Sequence[Header]) -> None:
        if s.closed:
            return
        if not self.codec.send_trailers(s.id, trailers):
            self.send_failed(s.id)
            return
        self.schedule_flush()

    def ack(self, sid: int, size: int) -> None:
        """`size` received bytes of stream `sid` were taken: the windows may open again."""
        self.codec.ack(sid, size)
        self.schedule_flush()

    def forget_stream(self, s: OutStream) -> None:
        s.closed = True
        self.codec.forget(s.id)

    def reset_stream(self, s: OutStream, code: int) -> None:
        """RST_STREAM `s` (if still open) and forget what it had pending."""
        s.closed = True
        self.codec.reset(s.id, code)
        self.schedule_flush()

    def reset_after_end(self, s: OutStream) -> None:
        """Our side of `s` ended before the peer's: RST_STREAM NO_ERROR once our END_STREAM is out (RFC 9113
        8.1: the peer may stop sending)."""
        self.codec.reset_after_end(s.id)
        self.schedule_flush()

    def buffered(self) -> int:
        """Body bytes waiting for window on all streams."""
        return self.codec.buffered()

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR, last_stream_id: int = -1) -> None:
        self.codec.goaway(code, last_stream_id)
        self.flush()

    # writes: everything of one loop iteration in one send
    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what the codec queued. Past an outbound flood limit nothing is written; outside a read the
        connection is closed at once (Envoy's check after its codec sent frames: no flush), counted in `stats`."""
        self._flush_scheduled = False
        t = self.transport
        if t is None or t.is_closing() or self.sealed:
            self.codec.data_to_send()  # nothing more goes out
            return
        counts = self.codec.frames_out()
        code = self._over(counts)
        if code:
            if not self.reading:
                self.stats.count_h2_flood(code)
                self.sealed = True
                t.abort()  # connection_lost ends the streams
            return
        data = self.codec.data_to_send()
        if data:
            t.write(data)
            self._written += len(data)
            if t.get_write_buffer_size():
                self._writes.append((self._written, counts))
            else:
                self._taken = counts
                self._writes.clear()

    def outbound_flood(self) -> int:
        """Which outbound limit the frames queued for the peer (in the codec, or written and not yet taken by the
        socket) are past: limits.H2_FLOOD_OUTBOUND or _OUTBOUND_CONTROL, else 0."""
        return self._over(self.codec.frames_out())

    def _over(self, counts: tuple[int, int]) -> int:
        writes = self._writes
        if writes:
            t = self.transport
            taken = self._written - (t.get_write_buffer_size() if t is not None else 0)
            while writes and writes[0][0] <= taken:
                self._taken = writes.popleft()[1]
        frames, control = self._taken
        if counts[0] - frames > limits.H2_MAX_OUTBOUND_FRAMES:
            return limits.H2_FLOOD_OUTBOUND
        if counts[1] - control > limits.H2_MAX_OUTBOUND_CONTROL_FRAMES:
            return limits.H2_FLOOD_OUTBOUND_CONTROL
        return 0


class _Unstarted:
    """The codec of a connection before `H2Peer.start_codec`: sends nothing."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"HTTP/2 codec not started ({name})")


_UNSTARTED: Final = cast(h2wire.Codec, _Unstarted())
