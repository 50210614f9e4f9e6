"""What both ends of the agent's HTTP/2 share: a connection's outbound half (`H2Peer`: flow-controlled DATA,
trailers, one write per loop iteration) and a stream's outbound state (`OutStream`).

Base of `meshplug.agent.h2down.H2Downstream` (clients) and `meshplug.agent.h2up.H2Upstream` (clusters). The
`h2` library (sans-IO) does framing, HPACK and the flow-control arithmetic; a body that does not fit the
peer's window waits here until a WINDOW_UPDATE (or a SETTINGS change) opens it, then its end or trailers
follow it. HPACK is `meshplug.agent.hpackcache`'s (the library's, with a cache). Imports nothing else of the data
path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Final

import h2.connection
import h2.errors
import h2.exceptions

from meshplug.agent.hpackcache import CachedDecoder, CachedEncoder

Header = tuple[bytes, bytes]

# the h2/hpack libraries log every frame and header at DEBUG: far too much (and too slow) for a proxy's debug log
for _name in ("h2", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING)

#: h2's exceptions that mean "this stream (or connection) cannot send that"
SEND_ERRORS: Final = (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError, ValueError, TypeError)


class OutStream:
    """A stream's outbound half: body bytes waiting for window, then its end or its trailers."""

    __slots__ = ("closed", "end_pending", "id", "pending", "trailers_pending")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.pending = bytearray()
        self.end_pending = False
        self.trailers_pending: Sequence[Header] | None = None
        self.closed = False


class H2Peer:
    """An HTTP/2 connection's outbound half over an asyncio transport."""

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        # HPACK that reuses what it just encoded or decoded (meshplug.agent.hpackcache), set before any frame
        conn.encoder = CachedEncoder()
        conn.decoder = CachedDecoder(conn.decoder.max_header_list_size)
        self.h2 = conn
        self.transport: asyncio.Transport | None = None
        self._blocked: set[OutStream] = set()  # streams whose body waits for window
        self._flush_scheduled = False

    # what subclasses answer
    def send_failed(self, s: OutStream) -> None:
        """`s` could not be sent (h2 refused it: closed stream, bad header): reset it and tell its owner."""
        raise NotImplementedError

    # sending
    def send_headers(self, s: OutStream, headers: Sequence[Header], end_stream: bool) -> None:
        if s.closed:
            return
        try:
            self.h2.send_headers(s.id, headers, end_stream=end_stream)
        except SEND_ERRORS:
            self.send_failed(s)
            return
        self.schedule_flush()

    def send_data(self, s: OutStream, data: bytes, end_stream: bool) -> None:
        if s.closed or (not data and not end_stream):
            return
        s.pending += data
        s.end_pending = s.end_pending or end_stream
        if s not in self._blocked:
            self._push(s)
            self.schedule_flush()

    def send_trailers(self, s: OutStream, trailers: Sequence[Header]) -> None:
        if s.closed:
            return
        s.trailers_pending = list(trailers)
        if s not in self._blocked:
            self._push(s)
            self.schedule_flush()

    def _push(self, s: OutStream) -> None:
        """Send what `s` has pending, then its end or trailers, as far as the windows allow."""
        h = self.h2
        pending = s.pending
        try:
            while True:
                if not pending:
                    if s.trailers_pending is not None:
                        trailers, s.trailers_pending = s.trailers_pending, None
                        s.end_pending = False
                        h.send_headers(s.id, list(trailers), end_stream=True)
                    elif s.end_pending:
                        s.end_pending = False
                        h.send_data(s.id, b"", end_stream=True)
                    break
                window = min(h.local_flow_control_window(s.id), h.max_outbound_frame_size)
                if window <= 0:
                    self._blocked.add(s)
                    return
                chunk = bytes(pending[:window])
                del pending[:window]
                last = not pending and s.trailers_pending is None and s.end_pending
                if last:
                    s.end_pending = False
                h.send_data(s.id, chunk, end_stream=last)
                if last:
                    break
            self._blocked.discard(s)
        except SEND_ERRORS:
            self._blocked.discard(s)
            self.send_failed(s)

    def unblock(self) -> None:
        """Windows opened: send what waited."""
        for s in list(self._blocked):
            self._blocked.discard(s)
            if not s.closed:
                self._push(s)

    def forget_stream(self, s: OutStream) -> None:
        s.closed = True
        s.pending.clear()
        self._blocked.discard(s)

    def reset_stream(self, s: OutStream, code: int) -> None:
        """RST_STREAM `s` (if h2 still has it open) and forget what it had pending."""
        self.forget_stream(s)
        with contextlib.suppress(*SEND_ERRORS):
            self.h2.reset_stream(s.id, code)
        self.schedule_flush()

    def buffered(self) -> int:
        """Bytes waiting for window on all streams."""
        return sum(len(s.pending) for s in self._blocked)

    # writes: everything of one loop iteration in one send
    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR, last_stream_id: int | None = None) -> None:
        with contextlib.suppress(*SEND_ERRORS):
            self.h2.close_connection(error_code=code, last_stream_id=last_stream_id)
        self.flush()
