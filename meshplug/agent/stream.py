"""One HTTP exchange through a filter chain (`Stream`), sans-IO: frames in, outputs out.

Made by `meshplug.agent.chain.Chain.new_stream`; the shell drives it (see meshplug.agent.chain for the usage).
Semantics follow Envoy's filter manager as proxy-wasm plugins observe it: request events visit filters in
chain order, response events in reverse order; a filter that stops on headers holds the whole direction
(later data queues and is delivered to it, coalesced, once it resumes); a filter that stops on a body chunk
buffers it and is called again with the accumulated size; `Action.FAIL` applies the filter's
`FailStrategy` (FAIL_OPEN bypasses it for the rest of the stream, FAIL_CLOSE / FAIL_RELOAD answer 503,
details ``wasm_fail_stream``); body results WATERMARK / NO_BUFFER keep / drop the chunk while later calls
see only new data (Envoy's StopIterationAndWatermark / NoBuffer). A local reply stops the request
direction; before the upstream response entered the chain it is encoded through the response path of
the filters that saw the request (Envoy's sendLocalReplyViaFilterChain), after that it goes straight
downstream (sendDirectLocalReply), once the response went downstream the stream is reset. `complete()`
reaches every filter (Envoy's access-log hook).
A filter given match rules (`Chain(filters, match=...)`, `Match`) runs only for requests some rule matches;
the chain decides once, when the request headers arrive, and bypasses the others entirely for the stream
(no context, no callback, no `on_complete`). A chain without rules makes plain `Stream`s (no cost).
Buffered bodies above `limits.MAX_BUFFERED_BODY_BYTES` get 413 (request) / 500 (response), as Envoy; so does a
held body its filter grows past the limit (a held body of exactly the limit passes, as in Envoy 1.40).
Filters act on the stream only through their `StreamControl`, whose methods may be called at any time
outside a filter callback (e.g. from an http-call response); the chain then advances the stream and calls
`on_progress`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from meshplug import limits
from meshplug.agent.headermap import is_grpc_request, local_reply_headers
from meshplug.agent.lane import DATA as _DATA
from meshplug.agent.lane import HEADERS as _HEADERS
from meshplug.agent.lane import TRAILERS as _TRAILERS
from meshplug.agent.lane import TRAILERS_FRAME as _TRAILERS_FRAME
from meshplug.agent.lane import Frame as _Frame
from meshplug.agent.lane import Lane as _Lane
from meshplug.agent.lane import data_frame
from meshplug.agent.lane import headers_frame as _headers_frame
from meshplug.agent.streamapi import (
    AbortUpstream,
    Action,
    Direction,
    FailStrategy,
    ForeignStream,
    Headers,
    LocalReply,
    NativeFilterStream,
    Output,
    ResetStream,
    SendData,
    SendHeaders,
    SendTrailers,
    StreamControl,
    StreamInfo,
    Target,
    replace_info,
    rq_time_bucket,
)

if TYPE_CHECKING:
    from meshplug.agent.chain import Chain

#: the buffer limit, read once (a module attribute lookup per body chunk and filter otherwise)
_MAX_BODY: Final = limits.MAX_BUFFERED_BODY_BYTES
_UPSTREAM: Final = Target.UPSTREAM
_DOWNSTREAM: Final = Target.DOWNSTREAM

_Control = tuple[str, int, object]
_REQUEST: Final = Direction.REQUEST
_RESPONSE: Final = Direction.RESPONSE
_CONTINUE: Final = Action.CONTINUE
_FAIL: Final = Action.FAIL


class _NotCreated(NativeFilterStream):
    """Marks a filter whose stream context is not created yet (a `NativeFilterStream`, so that the list of
    contexts holds one type and the chain calls what it reads from it without an isinstance test)."""

    __slots__ = ()


_NEW: Final = _NotCreated()
#: the wall clock (a constant: compiled, a name imported from a module is a dictionary lookup per call)
_time_ns: Final = time.time_ns


@final
class _Ids:
    """Stream ids: a native counter (compiled, next() on an itertools.count is a builtin looked up and called)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = 0


_IDS: Final = _Ids()


class Stream:
    """One HTTP exchange through the chain. Not thread-safe; the shell serializes calls per chain.

    A frame that meets no stopped filter and no queued frame is pushed through the filters in one pass
    (the common case); otherwise frames queue per position and a loop delivers them as filters resume.
    """

    # scalar state at its initial value: class attributes, shadowed per stream on first change (a stream
    # is made per request: each assignment saved in __init__ counts)
    on_progress: Callable[[Stream], None] | None = None
    response_started = False  # response headers went downstream
    upstream_started = False
    local_reply: LocalReply | None = None
    reset: str | None = None
    completed = False
    _busy = False
    _pending = False  # frames were queued since the loop last ran
    #: how many filters (in chain order) the request headers reached: always a prefix of the chain (they visit
    #: the filters in order), so a count rather than a flag per filter
    _reached = 0
    #: trailers arrived from the peer: bit 1 << direction
    _trailers_in = 0
    bytes_received = 0  # request body bytes from downstream (Envoy's bytesReceived)
    bytes_sent = 0  # response body bytes sent downstream (bytesSent)
    response_entered = False  # upstream response headers entered the chain
    #: property response.code_details: "via_upstream" once the upstream response entered, a local
    #: reply's details, a reset's reason (Envoy's StreamInfo::responseCodeDetails); None = not yet
    code_details: str | None = None
    #: property response.flags: RESPONSE_FLAG_* bits the shell sets (e.g. upstream connect failure)
    response_flags = 0
    #: monotonic ns: the request's first byte went upstream, the response's last byte came back (the shell
    #: sets them; property response.backend_latency)
    upstream_sent_ns = 0
    upstream_done_ns = 0
    #: wall-clock ns when `complete()` ran (Envoy's requestComplete: property request.duration); 0 before
    completed_ns = 0
    #: namespace -> key -> value, made on first use (StreamControl.dynamic_metadata)
    dynamic_metadata: dict[str, dict[str, object]] | None = None
    #: the shell's router (meshplug.agent.routing: request map -> decision), the decision the router uses
    #: (Envoy's route cache; `clear_route_cache` drops it) and the one properties read (the stream info's
    #: route: resolved when the request headers arrive, before any filter, and again only when the router
    #: picks anew -- so a plugin that changes the headers still reads the old route until then, as in Envoy)
    route_resolver: Callable[[Headers], Any] | None = None
    #: what `route_resolver` answers whatever the headers (a route table with one decision for every request),
    #: when the shell knows it: used without the call
    route_constant: Any = None
    _route: Any = None
    _route_info: Any = None
    #: the router's decision was resolved again after a filter cleared the cache (Envoy's refreshCachedRoute):
    #: the shell reads the new route's stream limits then (meshplug.agent.streamtimeouts) and sets it back
    route_refreshed = False

    # `info` is built on first use from the base, the start time (-1: the base's) and the upstream fields
    # (`set_upstream_fields`: the shell's mapping, never changed here)
    _info: StreamInfo | None = None
    _info_start = -1
    _info_up: dict[str, object] | None = None
    #: the lanes (made at the first frame of their direction)
    _req_lane: _Lane | None = None
    _resp_lane: _Lane | None = None
    #: contexts taken out of the chain for the rest of the stream (a failure: `_fail`) but still owed their
    #: `on_complete`, by chain index; None until the first
    _off: dict[int, NativeFilterStream] | None = None
    #: made on first need (most streams never have trailers, a control or an output object): `request_trailers` /
    #: `response_trailers` (properties), `_control`, `_put`
    _req_trailers: Headers | None = None
    _resp_trailers: Headers | None = None
    _controls: list[_Control] | None = None
    _outputs: list[Output] | None = None
    #: a filter's context was made (it holds the header lists: the request's is adopted only before)
    _made = False

    def __init__(self, chain: Chain, info: StreamInfo, start_time_ns: int | None = None) -> None:
        ids = _IDS
        ids.last += 1
        self.id = ids.last
        self.chain = chain
        self._info_base = info
        if start_time_ns is None:
            self._info = info
            self.started_ns: int = info.start_time_ns
        else:
            self._info_start = self.started_ns = start_time_ns
        self.request_headers: Headers = []
        self.response_headers: Headers = []
        n = len(chain.filters)
        self._n = n
        #: per filter in chain order: its context (_NEW: not made yet; None: bypassed, failed or none; a
        #: failed one waits in `_off` for its on_complete)
        self._active: list[NativeFilterStream | None] = [_NEW] * n

    @property
    def request_trailers(self) -> Headers:
        """The request trailers (the list keeps its identity for the stream's life; made on first use)."""
        trailers = self._req_trailers
        if trailers is None:
            trailers = self._req_trailers = []
        return trailers

    @property
    def response_trailers(self) -> Headers:
        """The response trailers, as `request_trailers`."""
        trailers = self._resp_trailers
        if trailers is None:
            trailers = self._resp_trailers = []
        return trailers

    @property
    def info(self) -> StreamInfo:
        info = self._info
        if info is None:
            fields: dict[str, object] = {} if self._info_start < 0 else {"start_time_ns": self._info_start}
            if self._info_up is not None:
                fields.update(self._info_up)
            info = self._info = replace_info(self._info_base, fields)
        return info

    @info.setter
    def info(self, info: StreamInfo) -> None:
        self._info_base = self._info = info
        self._info_start = -1
        self._info_up = None

    def route(self) -> Any:
        """The router's route decision for the request headers as they are now (cached until cleared); None
        without a router."""
        decision = self._route
        if decision is None:
            resolver = self.route_resolver
            if resolver is not None:
                if self._route_info is not None:  # resolved before: a filter cleared the cache since, and may
                    # have set a :path no route takes (one without "/"): the table's one decision is not it
                    decision = resolver(self.request_headers)
                    self.route_refreshed = True
                else:
                    decision = self.route_constant
                    if decision is None:
                        decision = resolver(self.request_headers)
                self._route = self._route_info = decision
        return decision

    def route_info(self) -> Any:
        """The route the stream info shows (xds.route_name & co.): the last one resolved."""
        return self._route_info

    def clear_route_cache(self) -> None:
        """The request headers changed: the router picks again when it sends the request (Envoy's
        clearRouteCache); until then the stream info keeps showing the old route."""
        self._route = None

    def _routed(self) -> None:
        """The request headers arrived: resolve the route before any filter sees them (Envoy's HCM does)."""
        resolver = self.route_resolver
        if resolver is not None:
            decision = self.route_constant
            self._route = self._route_info = resolver(self.request_headers) if decision is None else decision

    # ---- positions: request lane uses chain order, response lane the reverse ------------------------
    def _pos(self, direction: Direction, index: int) -> int:
        return index if direction is _REQUEST else self._n - 1 - index

    def _lane(self, direction: Direction) -> _Lane:
        if direction is _REQUEST:
            lane = self._req_lane
            if lane is None:
                lane = self._req_lane = _Lane(self._n)
        else:
            lane = self._resp_lane
            if lane is None:
                lane = self._resp_lane = _Lane(self._n)
        return lane

    def _lane_of(self, direction: Direction) -> _Lane | None:
        """The lane of `direction` if it was made."""
        return self._req_lane if direction is _REQUEST else self._resp_lane

    def _filter_stream(self, index: int) -> NativeFilterStream | None:
        current = self._active[index]
        if current is not _NEW:
            return current
        self._made = True
        made = self.chain.makers[index].new_stream(StreamControl(self, index))
        fs = made if made is None or isinstance(made, NativeFilterStream) else ForeignStream(made)
        self._active[index] = fs
        return fs

    def bypass(self, index: int) -> None:
        """Filter `index` takes no part in this stream unless its context exists already (no context, no
        callback, not even `on_complete`: a filter whose match rules the request does not match)."""
        if self._active[index] is _NEW:
            self._active[index] = None

    # ---- events in -------------------------------------------------------------------------------
    def recv_request_headers(self, headers: Headers, end_stream: bool) -> list[Output]:
        self.request_headers[:] = headers
        if self.route_resolver is not None:
            self._routed()
        return self._feed(_REQUEST, _headers_frame(end_stream))

    def recv_request_data(self, data: bytes, end_stream: bool) -> list[Output]:
        self.bytes_received += len(data)
        return self._feed(_REQUEST, data_frame(data, end_stream))

    def recv_request_trailers(self, trailers: Headers) -> list[Output]:
        self.request_trailers[:] = [(k.lower(), v) for k, v in trailers]
        self._trailers_in |= 1
        return self._feed(_REQUEST, _TRAILERS_FRAME)

    def set_upstream(self, address: str, port: int, local_address: str = "", local_port: int = 0) -> None:
        """The shell connected the upstream: plugins now read upstream.address / port / local_address."""
        self.set_upstream_fields(
            {
                "upstream_address": address,
                "upstream_port": port,
                "upstream_local_address": local_address,
                "upstream_local_port": local_port,
            }
        )

    def set_upstream_fields(self, fields: dict[str, object]) -> None:
        """`set_upstream` with its four StreamInfo fields as a mapping (the shell computes it once per
        connection); applied lazily, when a plugin next reads `info`."""
        if self._info is not None:
            self._info_base = self._info
            self._info = None
            self._info_start = -1
            self._info_up = fields
        elif self._info_up is None:
            self._info_up = fields
        else:
            self._info_up = {**self._info_up, **fields}

    def recv_response_headers(self, headers: Headers, end_stream: bool) -> list[Output]:
        if self.local_reply is not None or self.reset is not None:
            return self.take_outputs()
        self.response_headers[:] = headers
        self.response_entered = True
        if self.code_details is None:
            self.code_details = "via_upstream"
        return self._feed(_RESPONSE, _headers_frame(end_stream))

    def recv_response_data(self, data: bytes, end_stream: bool) -> list[Output]:
        if self.local_reply is not None or self.reset is not None:
            return self.take_outputs()
        return self._feed(_RESPONSE, data_frame(data, end_stream))

    def recv_response_trailers(self, trailers: Headers) -> list[Output]:
        if self.local_reply is not None or self.reset is not None:
            return self.take_outputs()
        self.response_trailers[:] = [(k.lower(), v) for k, v in trailers]
        self._trailers_in |= 2
        return self._feed(_RESPONSE, _TRAILERS_FRAME)

    def complete(self) -> list[Output]:
        """The exchange is over (or the client went away): `on_complete` once for every filter of the chain,
        in chain order -- also those the request never reached (a local reply, a pause, a reset before them):
        Envoy registers each wasm filter as an access logger and creates its context there if needed."""
        if not self.completed:
            self.completed = True
            # one clock read for the stream and all its filters (names imported from their modules: compiled, a
            # module attribute is a generic getattr per call)
            now = self.completed_ns = _time_ns()
            if self.started_ns:
                self.chain.latency[rq_time_bucket(now - self.started_ns)] += 1
            active, off = self._active, self._off
            for index in range(self._n):
                ctx = active[index]
                if ctx is _NEW:
                    ctx = self._filter_stream(index)
                elif ctx is None and off is not None:
                    ctx = off.pop(index, None)
                if ctx is not None:
                    ctx.on_complete()
                # the stream -> context -> control -> stream cycle ends here: the stream is freed by its
                # reference count, never by the cyclic GC; nothing reaches a filter after its on_complete
                active[index] = None
        return self.take_outputs()

    def take_outputs(self) -> list[Output]:
        out = self._outputs
        if out is None:
            return []
        self._outputs = None
        return out

    def _put(self, output: Output) -> None:
        """An output for the shell (`take_outputs`)."""
        outputs = self._outputs
        if outputs is None:
            self._outputs = [output]
        else:
            outputs.append(output)

    # ---- the direct path: the shell sends what passed itself -------------------------------------
    # Each `pass_*` method is its `recv_*` twin for a shell that performs the common case without output
    # objects: when the frame went through every filter in one pass and nothing else happened (no pause,
    # reply, reset, queued frame or pending output), it returns what to send -- True / the data -- and the
    # shell sends it now: the request headers (`request_headers`) upstream, the response headers
    # (`response_headers`) / data downstream. Otherwise it returns False / None and the outputs are taken
    # with `take_outputs()` (the general path).
    def pass_request_headers(self, headers: Headers, end_stream: bool, *, own: bool = False) -> bool:
        """`own`: the caller hands `headers` over (it never uses the list again): the stream takes it as its
        request header list instead of copying it, unless a filter's context already holds the stream's."""
        if own and not self._made:
            self.request_headers = headers
        else:
            self.request_headers[:] = headers
        if self.route_resolver is not None:
            self._routed()
        if self._direct(_REQUEST, _headers_frame(end_stream)) is None:
            return False
        self.upstream_started = True
        return True

    def pass_request_data(self, data: bytes, end_stream: bool) -> bytes | None:
        self.bytes_received += len(data)
        out = self._direct(_REQUEST, data_frame(data, end_stream))
        return None if out is None else out.data

    def pass_response_headers(self, headers: Headers, end_stream: bool) -> bool:
        if self.local_reply is not None or self.reset is not None:
            return False
        if headers is not self.response_headers:  # (the shell may build them in the stream's own list)
            self.response_headers[:] = headers
        self.response_entered = True
        if self.code_details is None:
            self.code_details = "via_upstream"
        if self._direct(_RESPONSE, _headers_frame(end_stream)) is None:
            return False
        self.response_started = True
        return True

    def pass_response_data(self, data: bytes, end_stream: bool) -> bytes | None:
        if self.local_reply is not None or self.reset is not None:
            return None
        out = self._direct(_RESPONSE, data_frame(data, end_stream))
        if out is None:
            return None
        self.bytes_sent += len(out.data)
        return out.data

    def _direct(self, direction: Direction, frame: _Frame) -> _Frame | None:
        """`_feed` for the pass_* methods: the frame that passed (not emitted: the caller sends it), or None
        with the outputs left for `take_outputs`. The direction's lane is made only once a frame needs it (a body
        chunk, a stop): headers every filter continues on pass without one."""
        lane = self._req_lane if direction is _REQUEST else self._resp_lane
        if self.reset is not None or (lane is not None and lane.closed):
            return None
        if (lane is not None and lane.stalled) or self._busy or self._controls or self._outputs:
            self._lane(direction).queue(0).append(frame)
            self._pending = True
            self._run()
            return None
        out = self._pass(direction, lane, frame)
        if out is not None and not self._pending and not self._outputs:
            return out
        if out is not None:
            self._emit(direction, out)
        self._run()
        return None

    # ---- machinery -------------------------------------------------------------------------------
    def _feed(self, direction: Direction, frame: _Frame) -> list[Output]:
        lane = self._lane(direction)
        if lane.closed or self.reset is not None:
            return self.take_outputs()
        if lane.stalled or self._busy or self._controls:
            lane.queue(0).append(frame)
            self._pending = True
            self._run()
        elif not self._push(direction, lane, frame) or self._pending:
            self._run()
        return self.take_outputs()

    def _push(self, direction: Direction, lane: _Lane, frame: _Frame) -> bool:
        """Deliver `frame` through every position in one pass. False when it stopped (held, buffered,
        failed, or a filter asked for something): the loop (`_run`) takes over from there."""
        out = self._pass(direction, lane, frame)
        if out is None:
            return False
        self._emit(direction, out)
        return True

    def _pass(self, direction: Direction, lane: _Lane | None, frame: _Frame) -> _Frame | None:
        """`_push` without the emit: the frame that came out of the last position, or None (`lane`: the
        direction's, None when not made yet: `_deliver` makes it when the frame needs it)."""
        n = self._n
        if not n:
            return frame
        self._busy = True
        try:
            for pos in range(n):
                out = self._deliver(direction, lane, pos, frame)
                if out is None:
                    return None
                frame = out
                if self._controls:
                    self._lane(direction).queue(pos + 1).append(frame)
                    self._pending = True
                    return None
            return frame
        finally:
            self._busy = False

    def _control(self, control: _Control) -> None:
        controls = self._controls
        if controls is None:
            self._controls = [control]
        else:
            controls.append(control)
        if not self._busy:
            self._run()
            if self._outputs and self.on_progress is not None:
                self.on_progress(self)

    def _run(self) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            progress = True
            while progress:
                self._pending = False
                progress = self._apply_controls()
                lane = self._req_lane
                if lane is not None and lane.inbox is not None:
                    progress = self._step(_REQUEST, lane) or progress
                lane = self._resp_lane
                if lane is not None and lane.inbox is not None:
                    progress = self._step(_RESPONSE, lane) or progress
                progress = progress or self._pending
        finally:
            self._busy = False
        if self._req_lane is not None:
            self._req_lane.settle()
        if self._resp_lane is not None:
            self._resp_lane.settle()

    def _step(self, direction: Direction, lane: _Lane) -> bool:
        inbox = lane.inbox
        assert inbox is not None
        moved = False
        for pos in range(self._n):
            if lane.closed or self.reset is not None:
                return moved
            q = inbox[pos]
            while q and lane.held[pos] is None and not lane.closed and self.reset is None:
                frame = q.popleft()
                if frame.kind == _DATA:
                    # coalesce what queued while the filter held the direction
                    while q and q[0].kind == _DATA:
                        nxt = q.popleft()
                        frame = _Frame(_DATA, nxt.end, frame.data + nxt.data)
                out = self._deliver(direction, lane, pos, frame)
                if out is not None:
                    inbox[pos + 1].append(out)
                moved = True
                if self._controls:
                    return True
        q = inbox[self._n]
        while q:
            self._emit(direction, q.popleft())
        return moved

    def _deliver(  # noqa: PLR0912 - once per position and frame: split, each part would cost a call
        self, direction: Direction, lane: _Lane | None, pos: int, frame: _Frame
    ) -> _Frame | None:
        """Show `frame` to the filter at `pos`; returns what passes on to `pos + 1` (None: nothing now). `lane`:
        the direction's (None: not made yet; made here when the frame needs it)."""
        # identity tests on the direction: no IntEnum comparison per position
        index = pos if direction is _REQUEST else self._n - 1 - pos
        kind = frame.kind
        if direction is _REQUEST:
            if kind == _HEADERS and index >= self._reached:
                self._reached = index + 1
        elif index >= self._reached:
            return frame  # a local reply passes filters the request never reached
        active = self._active[index]
        fs = self._filter_stream(index) if active is _NEW else active
        if fs is None:
            return frame
        if kind == _HEADERS:
            action = fs.on_headers(direction, frame.end)
            if action is _CONTINUE:
                return frame  # what _release does for headers
        elif kind == _TRAILERS:
            action = fs.on_trailers(direction)
        else:
            if lane is None:
                lane = self._lane(direction)
            size = lane.show(pos, frame.data)
            kept = size + (len(lane.stash[pos]) if lane.stash is not None and pos in lane.stash else 0)
            # also for WATERMARK: the shell applies no backpressure through the chain, so the limit Envoy
            # enforces with flow control is a 413 / 500 here
            over = kept > _MAX_BODY
            if not over:
                # the body holds chunks of earlier callbacks (Envoy's buffered data)
                held = lane.grown and lane.buffering[pos]
                action = fs.on_body(direction, size, frame.end)
                # the filter grew the body it held past the limit (a rewrite): Envoy's limit applies to it too
                over = held and action is _CONTINUE and lane.size(pos) > _MAX_BODY
            if over:
                lane.buffer(pos)
                self._overflow(direction)
                return None
            if action is not _CONTINUE:
                lane.keep(pos)  # the filter keeps or stops on the chunk: held, not copied
        if lane is None:  # (the callback may have made it: a body read)
            lane = self._lane(direction)
        if action is _CONTINUE:
            return self._release(lane, pos, frame)
        self._stop(lane, pos, index, frame, action)
        return None

    def _stop(self, lane: _Lane, pos: int, index: int, frame: _Frame, action: Action) -> None:
        """The filter at `pos` (chain `index`) did not continue on `frame`: hold it (or the body) there."""
        lane.stalled = True
        lane.grow()
        kind = frame.kind
        if action is _FAIL:
            controls = self._controls
            if controls is None:
                self._controls = [("fail", index, None)]
            else:
                controls.insert(0, ("fail", index, None))
            lane.held[pos] = frame  # the frame continues if the strategy bypasses the filter
        elif action is Action.HOLD and kind == _HEADERS:
            if lane.hold is None:
                lane.hold = [None] * self._n
            lane.hold[pos] = frame
        elif kind == _DATA:
            lane.buffering[pos] = True
            lane.body_end[pos] = frame.end  # (read when it resumes: `_resume`)
            if action is Action.WATERMARK:
                if lane.stash is None:
                    lane.stash = {}
                body = lane.buffer(pos)
                lane.stash.setdefault(pos, bytearray()).extend(body)
                body.clear()
            elif action is Action.NO_BUFFER:
                lane.drop(pos)
        else:
            lane.held[pos] = frame

    def _release(self, lane: _Lane, pos: int, frame: _Frame) -> _Frame | None:
        """What a filter that continues passes on: data carries its whole (possibly modified) buffer;
        trailers let a buffered body go first; trailers a filter added in its last body callback follow
        that body (Envoy's addDecodedTrailers / addEncodedTrailers) and visit the filters after it.
        Headers the filter holds (HOLD) go before all of it."""
        hold = lane.hold
        if hold is not None and hold[pos] is not None:
            q = lane.queue(pos + 1)
            q.append(hold[pos])  # type: ignore[arg-type]
            hold[pos] = None
            self._pending = True
            out = self._release(lane, pos, frame)
            if out is not None and (out.kind != _DATA or out.end or out.data):
                q.append(out)
            return None
        kind = frame.kind
        if kind == _HEADERS:
            return frame
        if lane.grown:
            data = lane.held_body(pos, frame.data)
            if kind == _DATA:
                lane.buffering[pos] = False
        else:  # nothing is held anywhere in the lane: what passes is the chunk in flight here, if any
            taken = lane.take(pos)
            data = b"" if taken is None else taken
        if kind == _DATA:
            if frame.end:
                direction = _REQUEST if lane is self._req_lane else _RESPONSE
                added = self._req_trailers if direction is _REQUEST else self._resp_trailers
                if added and not self._trailers_in & (1 if direction is _REQUEST else 2):
                    self._add_trailers(direction, lane, pos, data)
                    return None
            return frame if data is frame.data else _Frame(_DATA, frame.end, data)
        if data:  # trailers: the held body goes first
            q = lane.queue(pos + 1)
            q.append(_Frame(_DATA, False, data))
            lane.buffering[pos] = False
            q.append(frame)
            self._pending = True
            return None
        return frame

    def _add_trailers(self, direction: Direction, lane: _Lane, pos: int, data: bytes) -> None:
        self._trailers_in |= 1 if direction is _REQUEST else 2
        q = lane.queue(pos + 1)
        q.append(_Frame(_DATA, False, data))
        q.append(_TRAILERS_FRAME)
        self._pending = True

    def _resume(self, direction: Direction, pos: int) -> None:
        lane = self._lane_of(direction)
        if lane is None:
            return
        if not lane.grown:
            lane.grow()
        held = lane.held[pos]
        hold = lane.hold
        if held is None and not lane.buffering[pos] and hold is not None and hold[pos] is not None:
            lane.queue(pos + 1).append(hold[pos])  # type: ignore[arg-type]
            hold[pos] = None
            self._pending = True
            return
        if held is not None:
            lane.held[pos] = None
            out = self._release(lane, pos, held)
        elif lane.buffering[pos]:
            out = self._release(lane, pos, _Frame(_DATA, lane.body_end[pos], b""))
            if out is not None and not out.data and not out.end:
                return  # nothing kept (NO_BUFFER) and the stream goes on: nothing to forward yet
        else:
            return
        if out is not None:
            lane.queue(pos + 1).append(out)
            self._pending = True

    def _emit(self, direction: Direction, frame: _Frame) -> None:
        kind = frame.kind
        if direction == _REQUEST:
            if kind == _HEADERS:
                self._put(SendHeaders(_UPSTREAM, tuple(self.request_headers), frame.end))
                self.upstream_started = True
            elif kind == _DATA:
                self._put(SendData(_UPSTREAM, frame.data, frame.end))
            else:
                self._put(SendTrailers(Target.UPSTREAM, tuple(self.request_trailers)))
        elif kind == _HEADERS:
            self._put(SendHeaders(_DOWNSTREAM, tuple(self.response_headers), frame.end))
            self.response_started = True
        elif kind == _DATA:
            self.bytes_sent += len(frame.data)
            self._put(SendData(_DOWNSTREAM, frame.data, frame.end))
        else:
            self._put(SendTrailers(Target.DOWNSTREAM, tuple(self.response_trailers)))

    def _apply_controls(self) -> bool:
        applied = False
        controls = self._controls
        if controls is None:
            return False
        while controls:  # (the same list: controls a step adds are appended to it)
            if self.reset is not None:
                controls.clear()
                return applied
            kind, index, arg = controls.pop(0)
            applied = True
            if kind == "resume":
                assert isinstance(arg, Direction)
                if self.local_reply is None or arg == _RESPONSE:
                    self._resume(arg, self._pos(arg, index))
            elif kind in ("reply", "proxy_reply"):
                assert isinstance(arg, LocalReply)
                if self.local_reply is not None:
                    # a second reply (e.g. from the reply's own response callbacks) is ignored, as Envoy does
                    self._resume(_RESPONSE, self._pos(_RESPONSE, index))
                else:
                    if kind == "reply":
                        self.chain.local_replies[index][min(arg.status // 100, 5)] += 1
                    self._send_local_reply(arg, index)
            elif kind == "close":
                self._reset("wasm_close_stream")
            elif kind == "fail":
                self._fail(index)
        return applied

    def _fail(self, index: int) -> None:
        f = self.chain.filters[index]
        fs = self._filter_stream(index)
        if fs is not None:  # out of the chain, still owed its on_complete
            off = self._off
            if off is None:
                off = self._off = {}
            off[index] = fs
        self._active[index] = None
        self.chain.failures[index] += 1
        if f.fail_strategy == FailStrategy.FAIL_OPEN:
            self.chain.bypasses[index] += 1
            for direction in (_REQUEST, _RESPONSE):
                self._resume(direction, self._pos(direction, index))
            return
        if self.response_started:
            self._reset("wasm_fail_stream")
            return
        self._send_local_reply(LocalReply(503, details="wasm_fail_stream", grpc_status=14), index)

    def _overflow(self, direction: Direction) -> None:
        if direction == _REQUEST:
            self._send_local_reply(LocalReply(413, body=b"Payload Too Large", details="request_payload_too_large"), 0)
        elif not self.response_started:
            self._send_local_reply(
                LocalReply(500, body=b"Internal Server Error", details="response_payload_too_large"), self._n - 1
            )
        else:
            self._reset("response_payload_too_large")

    def _reset(self, reason: str) -> None:
        if self.reset is None:
            self.reset = reason
            if self.code_details is None:
                self.code_details = reason
            if self._req_lane is not None:
                self._req_lane.closed = True
            if self._resp_lane is not None:
                self._resp_lane.closed = True
            self._put(ResetStream(reason))

    def _send_local_reply(self, reply: LocalReply, index: int) -> None:
        if self.local_reply is not None:
            return
        if self.response_started:
            self._reset(reply.details or "local_reply_after_response_started")
            return
        self.local_reply = reply
        self.code_details = reply.details
        self._lane(_REQUEST).closed = True
        self._put(AbortUpstream(reply.details or "local_reply"))
        headers, body = local_reply_headers(reply, grpc=is_grpc_request(self.request_headers))
        # a fresh response lane (whatever the upstream response left in the old one is dropped); filters
        # that never saw the request are skipped (see _deliver)
        lane = _Lane(self._n)
        self._resp_lane = lane
        self.response_headers[:] = headers
        if self._resp_trailers is not None:
            self._resp_trailers.clear()
        if self.response_entered:
            # the upstream response already entered the filters: Envoy bypasses them (sendDirectLocalReply)
            lane.closed = True
            self._emit(_RESPONSE, _headers_frame(not body))
            if body:
                self._emit(_RESPONSE, _Frame(_DATA, True, body))
            return
        q = lane.queue(0)
        q.append(_headers_frame(not body))
        if body:
            q.append(_Frame(_DATA, True, body))
        self._pending = True
