"""The `h2` library's connection as the agent's fallback HTTP/2 codec uses it (`meshplug.agent.h2wire.PyCodec`,
when there is no native build): h2's own state machine, framing and flow control, with HPACK from
`meshplug.agent.hpackcache` and two costs left out.

* h2 4.4.1 (pinned in pyproject) formats every frame it receives (`repr(frame)`: flags sorted, payload
  hexlified) for a trace log that is off: about 6% of the agent's HTTP/2 CPU (bench/h2_vs_envoy.py). Our
  `Connection._receive_frame` hands the frame to h2's own handler for its type without that, and answers a
  frame on a closed stream as the library does (RFC 9113 5.1: RST_STREAM STREAM_CLOSED when the stream was
  reset, a connection error when it had ended).
* The inbound header checks are nghttp2's as Envoy runs them, in `meshplug.agent.h2wire.received_headers` (the
  configs switch the library's own off; `PyCodec.receive` applies them to every header event).

Not compiled (it subclasses an interpreted class).
"""

from __future__ import annotations

from typing import Any

import h2.connection
import h2.errors
import h2.exceptions
import hyperframe.frame


class Connection(h2.connection.H2Connection):
    """h2's H2Connection; received frames are not formatted for the (disabled) trace log."""

    def _receive_frame(self, frame: hyperframe.frame.Frame) -> list[Any]:
        handler = self._frame_dispatch_table[frame.__class__]
        try:
            frames, events = handler(frame)
        except h2.exceptions.StreamClosedError as closed:
            if not self._stream_is_closed_by_reset(closed.stream_id):
                raise  # a connection error
            self._rst(closed.stream_id, closed.error_code)  # a stream error: the reset stream is reset again
            return list(closed._events)
        except h2.exceptions.StreamIDTooLowError as low:
            if self._stream_is_closed_by_reset(low.stream_id):
                self._rst(low.stream_id, h2.errors.ErrorCodes.STREAM_CLOSED)
                return []
            if self._stream_is_closed_by_end(low.stream_id):
                raise h2.exceptions.StreamClosedError(low.stream_id) from low
            raise  # closed implicitly (a higher stream id opened): PROTOCOL_ERROR
        self._prepare_for_sending(frames)
        received: list[Any] = events
        return received

    def _rst(self, stream_id: int, code: int) -> None:
        rst = hyperframe.frame.RstStreamFrame(stream_id)
        rst.error_code = code
        self._prepare_for_sending([rst])
