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
* A connection error in `receive_data` (raised as `Broken`) keeps the events of the frames before it: Envoy
  passes on a response head and body it received before the frame that broke the connection.
* A GOAWAY received ends no stream at or below its last-stream-id (RFC 9113 6.8; nghttp2 reads their frames on):
  h2 would close its whole state machine, so the next frame of such a stream (the rest of a response) or our
  answer to it were a connection error, and drop what it had queued to send.

Not compiled (it subclasses an interpreted class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import hyperframe.exceptions
import hyperframe.frame

if TYPE_CHECKING:
    from h2._typing import Buffer


class Broken(h2.exceptions.ProtocolError):
    """The peer broke the protocol (a connection error, the GOAWAY queued); `events`: what the data before the
    frame that broke it gave."""

    def __init__(self, message: str, error_code: h2.errors.ErrorCodes, events: list[Any]) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.events = events


class Connection(h2.connection.H2Connection):
    """h2's H2Connection; received frames are not formatted for the (disabled) trace log."""

    def receive_data(self, data: Buffer) -> list[Any]:
        """h2's receive_data, its connection errors raised as `Broken` with the events gathered before them."""
        events: list[Any] = []
        self.incoming_buffer.add_data(data)
        self.incoming_buffer.max_frame_size = self.max_inbound_frame_size
        try:
            for frame in self.incoming_buffer:
                events.extend(self._receive_frame(frame))
        except hyperframe.exceptions.InvalidPaddingError as exc:
            self._terminate_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            raise Broken("Received frame with invalid padding.", h2.errors.ErrorCodes.PROTOCOL_ERROR, events) from exc
        except h2.exceptions.ProtocolError as exc:
            self._terminate_connection(exc.error_code)
            raise Broken(str(exc), exc.error_code, events) from exc
        return events

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

    def _receive_goaway_frame(self, frame: hyperframe.frame.GoAwayFrame) -> tuple[list[Any], list[Any]]:
        """The peer's GOAWAY as an event only: the connection stays open for the streams it will still process
        (the agent opens no new one on it: h2up's `goaway_seen`, h2down's `going_away`)."""
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _rst(self, stream_id: int, code: int) -> None:
        rst = hyperframe.frame.RstStreamFrame(stream_id)
        rst.error_code = code
        self._prepare_for_sending([rst])
