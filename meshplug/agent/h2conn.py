"""The `h2` library's connection as the agent's fallback HTTP/2 codec uses it (`meshplug.agent.h2wire.PyCodec`,
when there is no native build): h2's own state machine, framing and flow control, with HPACK from
`meshplug.agent.hpackcache` and two costs left out.

* h2 4.4.1 (pinned in pyproject) formats every frame it receives (`repr(frame)`: flags sorted, payload
  hexlified) for a trace log that is off: about 6% of the agent's HTTP/2 CPU (bench/h2_vs_envoy.py). Our
  `Connection._receive_frame` hands the frame to h2's own handler for its type without that. A frame on a
  stream that is not open is answered as nghttp2 answers it, not as the library would: HEADERS or DATA on a
  request stream never opened (below a higher one) or closed by a reset is dropped (h2: RST_STREAM
  STREAM_CLOSED), on a stream whose request had ended (half-closed remote) a connection error (h2: RST_STREAM
  STREAM_CLOSED and on); on a stream both ends had ended, h2's own answer stands. HEADERS whose PRIORITY
  fields make their stream depend on itself end the connection only on a request's head, as Envoy's nghttp2
  (h2 ends it for trailers too: `Connection._receive_headers_frame`). An RST_STREAM on an idle stream ends the
  connection with nothing written, as nghttp2's invalid frame in Envoy (h2 ignores it).
* The inbound header checks are nghttp2's as Envoy runs them, in `meshplug.agent.h2wire.received_headers` (the
  configs switch the library's own off; `PyCodec.receive` applies them to every header event).
* A connection error in `receive_data` (raised as `Broken`) keeps the events of the frames before it: Envoy
  passes on a response head and body it received before the frame that broke the connection. h2's GOAWAY is
  queued; `Broken.goaway` says what nghttp2 as Envoy's codec runs it answers instead (`nghttp2_goaway`): a GOAWAY
  for the errors nghttp2 ends the connection for itself, nothing at all for those it reports as an invalid frame
  (Envoy's codec fails the read and writes nothing more) -- `meshplug.agent.h2wire.PyCodec` writes that as a
  server. A body longer or shorter than its content-length resets only its stream (RST_STREAM PROTOCOL_ERROR),
  as nghttp2 does.
* Envoy's inbound flood limits (its ProtocolConstraints, as meshplug/agent/_h2codec.c applies them to nghttp2):
  `FloodGuard` counts every frame as h2's frame buffer parses it (CONTINUATION frames included, before h2 joins
  them); a peer past one raises `Flood`, nothing queued for it. PRIORITY frames are counted there and dropped:
  the nghttp2 Envoy 1.40 runs ignores them (`_GuardedFrames.__next__`).
* A GOAWAY received ends no stream at or below its last-stream-id (RFC 9113 6.8; nghttp2 reads their frames on):
  h2 would close its whole state machine, so the next frame of such a stream (the rest of a response) or our
  answer to it were a connection error, and drop what it had queued to send.

Not compiled (it subclasses an interpreted class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.stream
import hpack.exceptions
import hyperframe.exceptions
import hyperframe.frame

from meshplug import limits

if TYPE_CHECKING:
    from collections.abc import Iterable

    from h2._typing import Buffer
    from hpack.struct import HeaderWeaklyTyped


class Broken(h2.exceptions.ProtocolError):
    """The peer broke the protocol (a connection error); `events`: what the data before the frame that broke it
    gave; `goaway`: the GOAWAY's error code and debug data nghttp2 would send, None when it would send nothing
    (`nghttp2_goaway`; h2's own GOAWAY is queued)."""

    def __init__(
        self,
        message: str,
        error_code: h2.errors.ErrorCodes,
        events: list[Any],
        goaway: tuple[int, bytes] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.events = events
        self.goaway = goaway


_DATA = 0x0
_HEADERS = 0x1
_PRIORITY = 0x2
#: a PRIORITY frame's payload (RFC 9113 6.3: a dependency and a weight)
_PRIORITY_PAYLOAD = 5
_SETTINGS = 0x4
_CONTINUATION = 0x9
#: what h2 raises a header block that does not decode from (its own ProtocolError's cause); an HPACK bomb is a
#: DenialOfServiceError
_HPACK_ERRORS: Final = (hpack.exceptions.HPACKError, IndexError, TypeError, UnicodeDecodeError)


class SettingsExpected(h2.exceptions.ProtocolError):
    """A client's first frame after the preface was not a SETTINGS frame (RFC 9113 3.4)."""


class HeadersOnClosed(h2.exceptions.ProtocolError):
    """A header block on a stream whose request had ended (half-closed remote): nghttp2's connection error
    "HEADERS: stream closed", reported as an invalid frame (Envoy writes nothing more and closes)."""

    error_code = h2.errors.ErrorCodes.STREAM_CLOSED


class DataOnClosed(h2.exceptions.ProtocolError):
    """A DATA frame on a stream whose request had ended (half-closed remote): nghttp2 ends the connection itself,
    GOAWAY STREAM_CLOSED "DATA: stream in half-closed(remote)"."""

    error_code = h2.errors.ErrorCodes.STREAM_CLOSED


def nghttp2_goaway(exc: Exception, frame_type: int, stream_id: int, idle: bool) -> tuple[int, bytes] | None:
    """The GOAWAY (error code, debug data) nghttp2 answers the connection error `exc` with, raised for a frame of
    `frame_type` on `stream_id` (`idle`: a stream not opened yet), or None for an error it reports as an invalid
    frame (a bad header block or SETTINGS, a zero or overflowing WINDOW_UPDATE, a frame on a stream in the wrong
    state): Envoy's codec then fails the read and writes nothing more, not even what it had queued."""
    answer: tuple[int, bytes] | None = None
    codes = h2.errors.ErrorCodes
    if isinstance(exc, SettingsExpected):
        answer = codes.PROTOCOL_ERROR, b"SETTINGS expected"
    elif isinstance(exc, DataOnClosed):
        answer = codes.STREAM_CLOSED, b"DATA: stream in half-closed(remote)"
    elif isinstance(exc, h2.exceptions.FrameTooLargeError):
        answer = codes.FRAME_SIZE_ERROR, b"too large frame size"
    elif isinstance(exc, h2.exceptions.FrameDataMissingError):
        answer = codes.FRAME_SIZE_ERROR, b""
    elif isinstance(exc, h2.exceptions.DenialOfServiceError):  # an HPACK bomb: the agent's guard, as _h2codec's
        answer = codes.ENHANCE_YOUR_CALM, b""
    elif isinstance(exc.__cause__, _HPACK_ERRORS):
        answer = codes.COMPRESSION_ERROR, b""
    elif frame_type == _DATA and stream_id == 0:
        answer = codes.PROTOCOL_ERROR, b"DATA: stream_id == 0"
    elif frame_type == _DATA and idle:
        answer = codes.PROTOCOL_ERROR, b"DATA: stream in idle"
    elif frame_type == _DATA and isinstance(exc, h2.exceptions.FlowControlError):
        answer = codes.FLOW_CONTROL_ERROR, b""
    elif frame_type == _CONTINUATION:
        answer = codes.PROTOCOL_ERROR, b"CONTINUATION: unexpected"
    return answer


class Flood(h2.exceptions.ProtocolError):
    """The peer went past one of Envoy's inbound flood limits (`FloodGuard`): the connection is to be closed, no
    GOAWAY; `code`: which limit (limits.H2_FLOOD_*, as _h2codec's FloodError.code); `events`: what the frames
    before gave."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.events: list[Any] = []


class FrameCount:
    """Frames in the bytes handed to a peer, counted as Envoy counts them against its outbound limits: all of them,
    and the control frames (PING and SETTINGS ACKs, RST_STREAM); chunks may cut a frame anywhere."""

    __slots__ = ("_head", "_skip", "control", "frames")

    def __init__(self) -> None:
        self.frames = 0
        self.control = 0
        self._skip = 0  # the rest of the current frame's payload
        self._head = b""  # the part of the next frame's header seen

    def add(self, data: bytes) -> None:
        pos, end = self._skip, len(data)
        if self._head:
            data = self._head + data
            end = len(data)
            pos = 0
        while pos + 9 <= end:
            kind, flags = data[pos + 3], data[pos + 4]
            self.frames += 1
            if kind == _RST_STREAM or (kind in _ACKED and flags & 1):
                self.control += 1
            pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
        self._head = data[pos:] if pos < end else b""
        self._skip = pos - end if pos > end else 0


_RST_STREAM = 0x3
_ACKED = (0x4, 0x6)  # SETTINGS, PING
_BLOCK_OR_DATA = (hyperframe.frame.HeadersFrame, hyperframe.frame.ContinuationFrame, hyperframe.frame.DataFrame)
_HEADERS_OR_DATA = (hyperframe.frame.HeadersFrame, hyperframe.frame.DataFrame)


class FloodGuard:
    """Envoy's ProtocolConstraints on received frames: consecutive HEADERS/CONTINUATION/DATA frames with an empty
    payload and no END_STREAM, PRIORITY frames per stream opened, WINDOW_UPDATE frames per stream opened and DATA
    frame sent (meshplug.limits.H2_MAX_*)."""

    __slots__ = ("data_frames_sent", "empty_run", "opened_streams", "priority_frames", "window_frames")

    def __init__(self) -> None:
        self.empty_run = 0
        self.priority_frames = 0
        self.window_frames = 0
        self.opened_streams = 0
        self.data_frames_sent = 0

    def received(self, frame: hyperframe.frame.Frame) -> None:
        """Count `frame`; raises Flood when a limit is passed."""
        if isinstance(frame, _BLOCK_OR_DATA):
            # the payload without padding (HEADERS: its priority fields count, as nghttp2 measures it)
            size = len(frame.data)
            if "PRIORITY" in frame.flags:
                size += 5
            self.empty_run = self.empty_run + 1 if size == 0 and "END_STREAM" not in frame.flags else 0
        elif isinstance(frame, hyperframe.frame.PriorityFrame):
            self.priority_frames += 1
        elif isinstance(frame, hyperframe.frame.WindowUpdateFrame):
            self.window_frames += 1
        else:
            return
        self._check()

    def priority(self) -> None:
        """Count a PRIORITY frame taken out before it was parsed; raises Flood when a limit is passed."""
        self.priority_frames += 1
        self._check()

    def _check(self) -> None:
        if self.empty_run > limits.H2_MAX_CONSECUTIVE_EMPTY_FRAMES:
            raise Flood("Too many consecutive frames with an empty payload", limits.H2_FLOOD_EMPTY_FRAMES)
        if self.priority_frames > limits.H2_MAX_PRIORITY_FRAMES_PER_STREAM * (1 + self.opened_streams):
            raise Flood("Too many PRIORITY frames", limits.H2_FLOOD_PRIORITY)
        per_data = limits.H2_MAX_WINDOW_UPDATES_PER_DATA_FRAME_SENT
        if self.window_frames > 5 + 2 * (self.opened_streams + per_data * self.data_frames_sent):
            raise Flood("Too many WINDOW_UPDATE frames", limits.H2_FLOOD_WINDOW_UPDATE)


class _GuardedFrames(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, each frame shown to a FloodGuard as it is parsed (before CONTINUATION frames are joined);
    a server's new stream counts as opened with its HEADERS frame."""

    def __init__(self, guard: FloodGuard, *, server: bool) -> None:
        super().__init__(server=server)
        self.guard = guard
        self.server = server
        self.highest_opened = 0
        #: a server's first frame is yet to come (it must be SETTINGS)
        self.first = server

    def __next__(self) -> hyperframe.frame.Frame:
        """The next frame; its header is checked as nghttp2 checks it, as soon as it is in: a server's first frame
        a SETTINGS (not an ACK), the length within SETTINGS_MAX_FRAME_SIZE (h2 would wait for the whole frame).
        A PRIORITY frame of 5 bytes outside a header block is counted and dropped unparsed, as the nghttp2 Envoy
        1.40 is built with (1.65 and later) ignores it on any stream, whatever it depends on (h2 would end the
        connection for one on stream 0 or depending on its own stream)."""
        head = self._data
        while len(head) >= 9:
            if self.first:
                if head[3] != _SETTINGS or head[4] & 1:
                    raise SettingsExpected("SETTINGS expected")
                self.first = False
            length = int.from_bytes(head[:3], "big")
            self._validate_frame_length(length)
            if head[3] != _PRIORITY or length != _PRIORITY_PAYLOAD or self._headers_buffer:
                break
            if len(head) < 9 + length:
                raise StopIteration
            del head[: 9 + length]
            self.guard.priority()
        return super().__next__()

    def _update_header_buffer(self, f: hyperframe.frame.Frame | None) -> hyperframe.frame.Frame | None:
        if f is not None:
            if self.server and isinstance(f, hyperframe.frame.HeadersFrame) and f.stream_id > self.highest_opened:
                self.highest_opened = f.stream_id
                self.guard.opened_streams += 1
            self.guard.received(f)
        return super()._update_header_buffer(f)


class Connection(h2.connection.H2Connection):
    """h2's H2Connection; received frames are not formatted for the (disabled) trace log; Envoy's flood limits."""

    def __init__(self, config: h2.config.H2Configuration) -> None:
        super().__init__(config=config)
        self.guard = FloodGuard()
        self.incoming_buffer = _GuardedFrames(self.guard, server=not config.client_side)
        #: the decoder's bound on a header list once our SETTINGS are acknowledged, when not what they announce
        #: (a client's: an HPACK bomb's, far past the response head's limit it checks itself; 0: the announced one)
        self.header_list_bound = 0

    def _local_settings_acked(self) -> Any:
        changes = super()._local_settings_acked()
        if self.header_list_bound:
            self.decoder.max_header_list_size = self.header_list_bound
        return changes

    def send_headers(  # noqa: PLR0917 - h2's own signature
        self,
        stream_id: int,
        headers: Iterable[HeaderWeaklyTyped],
        end_stream: bool = False,
        priority_weight: int | None = None,
        priority_depends_on: int | None = None,
        priority_exclusive: bool | None = None,
    ) -> None:
        opens = self.config.client_side and stream_id not in self.streams
        super().send_headers(stream_id, headers, end_stream, priority_weight, priority_depends_on, priority_exclusive)
        if opens:
            self.guard.opened_streams += 1

    def send_data(self, stream_id: int, data: Any, end_stream: bool = False, pad_length: Any = None) -> None:
        super().send_data(stream_id, data, end_stream=end_stream, pad_length=pad_length)
        self.guard.data_frames_sent += 1

    def receive_data(self, data: Buffer) -> list[Any]:
        """h2's receive_data, its connection errors raised as `Broken` with the events gathered before them (and
        what nghttp2 would answer: `nghttp2_goaway`; a flood as `Flood`, nothing queued)."""
        events: list[Any] = []
        try:
            self.incoming_buffer.add_data(data)
        except h2.exceptions.ProtocolError as exc:  # a client magic that is not HTTP/2's (h2 checks it here): as
            # nghttp2's BAD_CLIENT_MAGIC, the connection fails with nothing written, not even our SETTINGS
            raise Broken(str(exc), h2.errors.ErrorCodes.PROTOCOL_ERROR, events, None) from exc
        self.incoming_buffer.max_frame_size = self.max_inbound_frame_size
        current: hyperframe.frame.Frame | None = None  # the frame being handled
        try:
            for frame in self.incoming_buffer:
                current = frame
                events.extend(self._receive_frame(frame))
                current = None
        except Flood as exc:
            exc.events = events
            raise
        except hyperframe.exceptions.InvalidPaddingError as exc:
            self._terminate_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
            raise Broken("Received frame with invalid padding.", h2.errors.ErrorCodes.PROTOCOL_ERROR, events) from exc
        except h2.exceptions.ProtocolError as exc:
            if current is None:  # refused while parsed: its header is still at the buffer's start (h2 4.4.1)
                head = bytes(self.incoming_buffer._data[:9])
                kind, sid = (head[3], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF) if len(head) == 9 else (-1, 0)
            else:
                kind, sid = current.type or 0, current.stream_id
            mine = (sid % 2 == 1) == bool(self.config.client_side)  # nghttp2's session_detect_idle_stream
            idle = sid > (self.highest_outbound_stream_id or 0) if mine else sid > self.highest_inbound_stream_id
            if kind == _HEADERS and idle and not mine and isinstance(exc.__cause__, _HPACK_ERRORS):
                self.highest_inbound_stream_id = sid  # nghttp2 opened the stream before its block did not decode
            self._terminate_connection(exc.error_code)
            raise Broken(str(exc), exc.error_code, events, nghttp2_goaway(exc, kind, sid, idle)) from exc
        return events

    def _receive_frame(self, frame: hyperframe.frame.Frame) -> list[Any]:
        if isinstance(frame, _HEADERS_OR_DATA) and self._ignored(frame):
            return []
        handler = self._frame_dispatch_table[frame.__class__]
        try:
            frames, events = handler(frame)
        except h2.exceptions.InvalidBodyLengthError:
            # a stream error in nghttp2: RST_STREAM PROTOCOL_ERROR, the connection goes on
            code = h2.errors.ErrorCodes.PROTOCOL_ERROR
            self.reset_stream(frame.stream_id, code)
            if isinstance(frame, hyperframe.frame.DataFrame):  # the connection's share of its window
                self.acknowledge_received_data(frame.flow_controlled_length, frame.stream_id)
            return [h2.events.StreamReset(stream_id=frame.stream_id, error_code=code, remote_reset=False)]
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

    def _ignored(self, frame: hyperframe.frame.Frame) -> bool:
        """Whether `frame` (HEADERS or DATA) is one nghttp2 reads and drops, on a request stream (odd) at or below
        the highest opened that is not open: never opened or closed by a reset -- a header block decoded all the
        same (the HPACK state is the connection's), a DATA frame's length given back to the connection window (h2
        answers both with RST_STREAM STREAM_CLOSED). One on a stream whose request (or response) had ended
        (half-closed remote) is nghttp2's connection error: `HeadersOnClosed`, `DataOnClosed`. On a stream closed
        by both ends' END_STREAM h2's own answer stands."""
        sid = frame.stream_id
        stream = self.streams.get(sid)
        if stream is not None and stream.state_machine.state == h2.stream.StreamState.HALF_CLOSED_REMOTE:
            if isinstance(frame, hyperframe.frame.DataFrame):
                raise DataOnClosed(f"DATA on stream {sid} after its END_STREAM")
            raise HeadersOnClosed(f"HEADERS on stream {sid} after its END_STREAM")
        highest = self.highest_outbound_stream_id if self.config.client_side else self.highest_inbound_stream_id
        if sid % 2 == 0 or sid > (highest or 0) or (stream is not None and not stream.closed):
            return False
        if self._stream_is_closed_by_end(sid):
            return False
        if isinstance(frame, hyperframe.frame.DataFrame):
            self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_DATA)
            self._inbound_flow_control_window_manager.window_consumed(frame.flow_controlled_length)
            self.acknowledge_received_data(frame.flow_controlled_length, sid)
        elif isinstance(frame, hyperframe.frame.HeadersFrame):
            self.state_machine.process_input(h2.connection.ConnectionInputs.RECV_HEADERS)
            h2.connection._decode_headers(self.decoder, frame.data)
        return True

    def _receive_headers_frame(self, frame: hyperframe.frame.HeadersFrame) -> tuple[list[Any], list[Any]]:
        """h2's own; a dependency on its own stream in the PRIORITY fields of a HEADERS frame ends the connection only
        on a request's head, as the nghttp2 Envoy 1.40 runs checks it (trailers, a response: ignored; h2 refuses
        all)."""
        itself = "PRIORITY" in frame.flags and frame.depends_on == frame.stream_id
        if itself and (self.config.client_side or frame.stream_id in self.streams):
            frame.depends_on = 0
        received: tuple[list[Any], list[Any]] = super()._receive_headers_frame(frame)
        return received

    def _receive_rst_stream_frame(self, frame: hyperframe.frame.RstStreamFrame) -> tuple[list[Any], list[Any]]:
        """h2's own, but an RST_STREAM on an idle stream (one not opened yet, by either side) is nghttp2's
        connection error "RST_STREAM: stream in idle", reported as an invalid frame (Envoy writes nothing more
        and closes); h2 ignores it."""
        sid = frame.stream_id
        mine = (sid % 2 == 1) == bool(self.config.client_side)  # nghttp2's session_detect_idle_stream
        if sid > ((self.highest_outbound_stream_id or 0) if mine else self.highest_inbound_stream_id):
            raise h2.exceptions.ProtocolError(f"RST_STREAM: stream {sid} in idle")
        received: tuple[list[Any], list[Any]] = super()._receive_rst_stream_frame(frame)
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

    def reset_anyway(self, stream_id: int, code: int) -> None:
        """RST_STREAM `stream_id`, even when the frames of this read closed it already (nghttp2 resets a stream
        whose head it refused before it reads the frames after it)."""
        try:
            self.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            self._rst(stream_id, code)

    def _rst(self, stream_id: int, code: int) -> None:
        rst = hyperframe.frame.RstStreamFrame(stream_id)
        rst.error_code = code
        self._prepare_for_sending([rst])
