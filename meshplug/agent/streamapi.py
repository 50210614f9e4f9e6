"""The filter chain's vocabulary: what a filter, the chain and the I/O shell say to each other.

Phases and fail strategies (Istio's), a callback's `Action`, the stream facts plugins read (`StreamInfo`),
a `LocalReply`, the chain's outputs to the shell (`SendHeaders`, `SendData`, ...), what a filter implements
(`Filter`, `FilterStream`, the `Native*` bases the compiled chain calls directly and the adapters for any
other filter) and a filter's handle on its stream (`StreamControl`). Imported by the chain
(meshplug.agent.chain, meshplug.agent.stream), by the wasm host and the Lua filter that implement filters, and by
the shell (through meshplug.agent.chain, which re-exports it); it imports none of them (the stream a
`StreamControl` acts on is named for types only).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from meshplug import limits

if TYPE_CHECKING:
    from meshplug.agent.stream import Stream

Header = tuple[bytes, bytes]
Headers = list[Header]


class Phase(IntEnum):
    """Istio WasmPlugin phases, in chain order."""

    AUTHN = 0
    AUTHZ = 1
    STATS = 2
    UNSPECIFIED = 3


class FailStrategy(Enum):
    FAIL_CLOSE = "FAIL_CLOSE"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class Action(Enum):
    """What a filter callback decided (proxy-wasm return codes are mapped by the host, ABI ref. 1.7)."""

    CONTINUE = "continue"
    STOP = "stop"  # headers/trailers: stop all iteration until resumed
    BUFFER = "buffer"  # body: keep the chunk, call again with the accumulated body (StopIterationAndBuffer)
    FAIL = "fail"  # the plugin failed (trap, budget): apply its FailStrategy
    # body: keep the chunk out of the filter's view -- later calls show only new data -- and forward
    # everything kept when the filter continues (Envoy's StopIterationAndWatermark)
    WATERMARK = "watermark"
    NO_BUFFER = "no_buffer"  # body: drop the chunk, stop (Envoy's StopIterationNoBuffer)
    # headers: hold them here but keep showing this direction's body and trailers to this filter; they go
    # on (before any body it buffered) when it continues from a later callback or resumes (Envoy's
    # StopIteration, as the Lua filter returns it)
    HOLD = "hold"


class Direction(IntEnum):
    REQUEST = 0
    RESPONSE = 1


_REQUEST: Final = Direction.REQUEST  # (compiled, `Direction.REQUEST` is a class attribute lookup per use)


class Target(Enum):
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


@dataclass(frozen=True, init=False)
class StreamInfo:
    """Connection facts the shell knows; plugins read them as properties. A written-out ``__init__``, as the
    records below: the generated one runs interpreted (~25k instructions with its 17 fields, once per
    connection of a listener with plugins)."""

    remote_address: str
    remote_port: int
    local_address: str
    local_port: int
    protocol: str
    scheme: str
    connection_id: int
    start_time_ns: int
    mtls: bool
    #: the route's upstream cluster (property xds.cluster_name); "" = unknown (NotFound)
    cluster_name: str
    #: the upstream connection (upstream.address / port / local_address, "ip:port" as Envoy); "" = none yet
    #: (NotFound). Known only once the shell connected: it sets them with `Stream.set_upstream(...)`.
    upstream_address: str
    upstream_port: int
    upstream_local_address: str
    upstream_local_port: int
    #: TLS facts of the downstream connection: connection.requested_server_name (SNI; Envoy answers ""
    #: on plaintext) and connection.tls_version ("" = plaintext: NotFound)
    requested_server_name: str
    tls_version: str
    #: the listener the stream came in on (meshplug.agent.config.Listener; xds.listener_* properties)
    listener: Any

    def __init__(  # noqa: PLR0917 - the generated __init__'s signature: every field, positionally too
        self,
        remote_address: str = "127.0.0.1",
        remote_port: int = 0,
        local_address: str = "127.0.0.1",
        local_port: int = 0,
        protocol: str = "HTTP/1.1",
        scheme: str = "http",
        connection_id: int = 0,
        start_time_ns: int = 0,
        mtls: bool = False,
        cluster_name: str = "",
        upstream_address: str = "",
        upstream_port: int = 0,
        upstream_local_address: str = "",
        upstream_local_port: int = 0,
        requested_server_name: str = "",
        tls_version: str = "",
        listener: Any = None,
    ) -> None:
        object.__setattr__(self, "remote_address", remote_address)
        object.__setattr__(self, "remote_port", remote_port)
        object.__setattr__(self, "local_address", local_address)
        object.__setattr__(self, "local_port", local_port)
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "connection_id", connection_id)
        object.__setattr__(self, "start_time_ns", start_time_ns)
        object.__setattr__(self, "mtls", mtls)
        object.__setattr__(self, "cluster_name", cluster_name)
        object.__setattr__(self, "upstream_address", upstream_address)
        object.__setattr__(self, "upstream_port", upstream_port)
        object.__setattr__(self, "upstream_local_address", upstream_local_address)
        object.__setattr__(self, "upstream_local_port", upstream_local_port)
        object.__setattr__(self, "requested_server_name", requested_server_name)
        object.__setattr__(self, "tls_version", tls_version)
        object.__setattr__(self, "listener", listener)


def replace_info(info: StreamInfo, fields: dict[str, object]) -> StreamInfo:
    """`dataclasses.replace(info, **fields)` without re-running the frozen dataclass's __init__ (~6 us with
    its 17 fields): a new instance with a copied __dict__. `info` itself is never changed."""
    d = getattr(info, "__dict__", None)
    if d is None:  # a slotted StreamInfo: the slow, general way
        return dataclasses.replace(info, **fields)  # type: ignore[arg-type]
    new = object.__new__(type(info))
    nd = new.__dict__
    nd.update(d)
    nd.update(fields)
    return new


#: `limits.PLUGIN_RQ_TIME_BUCKETS_MS` in ns (a bucket counts times up to and including its bound)
RQ_TIME_BOUNDS_NS: Final = tuple(int(ms * 1_000_000) for ms in limits.PLUGIN_RQ_TIME_BUCKETS_MS)


def rq_time_bucket(ns: int) -> int:
    """The index of the first bound of `RQ_TIME_BOUNDS_NS` at or above `ns`: bisect_left written out (compiled, no
    call of the builtin; the probes of a short request's time read bounds below 2**30, unboxed without the
    long-integer path)."""
    bounds = RQ_TIME_BOUNDS_NS
    lo, hi = 0, len(bounds)
    while lo < hi:
        mid = (lo + hi) // 2
        if bounds[mid] < ns:
            lo = mid + 1
        else:
            hi = mid
    return lo


#: on `Stream.response_flags`: e.g. UF upstream connection failure, UT upstream request timeout
RESPONSE_FLAG_NO_HEALTHY_UPSTREAM: Final = 0x2
RESPONSE_FLAG_UPSTREAM_REQUEST_TIMEOUT: Final = 0x4
RESPONSE_FLAG_LOCAL_RESET: Final = 0x8
RESPONSE_FLAG_UPSTREAM_REMOTE_RESET: Final = 0x10
RESPONSE_FLAG_UPSTREAM_CONNECTION_FAILURE: Final = 0x20
RESPONSE_FLAG_UPSTREAM_CONNECTION_TERMINATION: Final = 0x40
RESPONSE_FLAG_UPSTREAM_OVERFLOW: Final = 0x80
RESPONSE_FLAG_NO_ROUTE_FOUND: Final = 0x100
RESPONSE_FLAG_DOWNSTREAM_CONNECTION_TERMINATION: Final = 0x4000
#: SI: the stream idle timeout ended the request
RESPONSE_FLAG_STREAM_IDLE_TIMEOUT: Final = 0x10000
RESPONSE_FLAG_DOWNSTREAM_PROTOCOL_ERROR: Final = 0x40000
RESPONSE_FLAG_DOWNSTREAM_REMOTE_RESET: Final = 0x10000000
RESPONSE_FLAG_UPSTREAM_PROTOCOL_ERROR: Final = 0x800000


#: The records a stream makes per request (a local reply, the chain's outputs) are frozen dataclasses with a
#: written-out ``__init__`` (``init=False``): mypyc compiles methods written in the source, while the
#: ``__init__`` the dataclasses module generates runs interpreted (~0.7 us per record, 2% of a local reply's
#: CPU at 500 req/s; the written one costs ~0.03 us). ``object.__setattr__`` is how a frozen dataclass's
#: own ``__init__`` sets its fields.
@dataclass(frozen=True, init=False)
class LocalReply:
    status: int
    headers: tuple[Header, ...]
    body: bytes
    details: str
    grpc_status: int | None

    def __init__(
        self,
        status: int,
        headers: tuple[Header, ...] = (),
        body: bytes = b"",
        details: str = "",
        grpc_status: int | None = None,
    ) -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "details", details)
        object.__setattr__(self, "grpc_status", grpc_status)


# ---- outputs (frozen dataclasses with a compiled __init__, as LocalReply) ----------------------------
@dataclass(frozen=True, init=False)
class SendHeaders:
    target: Target
    headers: tuple[Header, ...]
    end_stream: bool

    def __init__(self, target: Target, headers: tuple[Header, ...], end_stream: bool) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "end_stream", end_stream)


@dataclass(frozen=True, init=False)
class SendData:
    target: Target
    data: bytes
    end_stream: bool

    def __init__(self, target: Target, data: bytes, end_stream: bool) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "end_stream", end_stream)


@dataclass(frozen=True, init=False)
class SendTrailers:
    target: Target
    trailers: tuple[Header, ...]

    def __init__(self, target: Target, trailers: tuple[Header, ...]) -> None:
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "trailers", trailers)


@dataclass(frozen=True, init=False)
class AbortUpstream:
    reason: str

    def __init__(self, reason: str) -> None:
        object.__setattr__(self, "reason", reason)


@dataclass(frozen=True, init=False)
class ResetStream:
    reason: str

    def __init__(self, reason: str) -> None:
        object.__setattr__(self, "reason", reason)


Output = SendHeaders | SendData | SendTrailers | AbortUpstream | ResetStream


# ---- what filters implement -----------------------------------------------------------------------
class FilterStream(Protocol):
    """One filter's state for one stream (a proxy-wasm HTTP context)."""

    def on_headers(self, direction: Direction, end_stream: bool) -> Action: ...

    def on_body(self, direction: Direction, size: int, end_stream: bool) -> Action: ...

    def on_trailers(self, direction: Direction) -> Action: ...

    def on_complete(self) -> None: ...


class Filter(Protocol):
    """A plugin instance as the chain sees it."""

    @property
    def name(self) -> str: ...

    @property
    def phase(self) -> Phase: ...

    @property
    def priority(self) -> int | None: ...

    @property
    def fail_strategy(self) -> FailStrategy: ...

    def new_stream(self, control: StreamControl) -> FilterStream | None:
        """A stream context; None = bypass this filter for the stream (e.g. failed and FAIL_OPEN)."""
        ...


class NativeFilterStream:
    """A base for `FilterStream`s compiled with the chain (the wasm host's contexts): the compiled chain calls
    them directly (a vtable call) where a Protocol call is a method lookup by name and an argument-parsing
    wrapper, several times per filter per request. Any other `FilterStream` gets a forwarding adapter."""

    __slots__ = ()

    def on_headers(self, direction: Direction, end_stream: bool) -> Action:
        raise NotImplementedError

    def on_body(self, direction: Direction, size: int, end_stream: bool) -> Action:
        raise NotImplementedError

    def on_trailers(self, direction: Direction) -> Action:
        raise NotImplementedError

    def on_complete(self) -> None:
        raise NotImplementedError


class NativeFilter:
    """A base for `Filter`s compiled with the chain (the wasm host's plugins): `new_stream` called directly,
    as `NativeFilterStream`'s methods are."""

    __slots__ = ()

    def new_stream(self, control: StreamControl) -> FilterStream | None:
        raise NotImplementedError


class ForeignStream(NativeFilterStream):
    """A `FilterStream` that is not a `NativeFilterStream`, as the chain calls it."""

    __slots__ = ("fs",)

    def __init__(self, fs: FilterStream) -> None:
        self.fs = fs

    def on_headers(self, direction: Direction, end_stream: bool) -> Action:
        return self.fs.on_headers(direction, end_stream)

    def on_body(self, direction: Direction, size: int, end_stream: bool) -> Action:
        return self.fs.on_body(direction, size, end_stream)

    def on_trailers(self, direction: Direction) -> Action:
        return self.fs.on_trailers(direction)

    def on_complete(self) -> None:
        self.fs.on_complete()


class ForeignFilter(NativeFilter):
    """A `Filter` that is not a `NativeFilter`, as the chain calls it."""

    __slots__ = ("f",)

    def __init__(self, f: Filter) -> None:
        self.f = f

    def new_stream(self, control: StreamControl) -> FilterStream | None:
        return self.f.new_stream(control)


class StreamControl:
    """A filter's handle on one stream: the maps and bodies it may read/write, and its actions."""

    __slots__ = ("_stream", "index")

    def __init__(self, stream: Stream, index: int) -> None:
        self._stream = stream
        self.index = index  # position in request order

    @property
    def info(self) -> StreamInfo:
        return self._stream.info

    def headers(self, direction: Direction) -> Headers:
        s = self._stream
        return s.request_headers if direction is _REQUEST else s.response_headers

    def trailers(self, direction: Direction) -> Headers:
        s = self._stream
        return s.request_trailers if direction is _REQUEST else s.response_trailers

    def body(self, direction: Direction) -> bytearray:
        """The body this filter is being shown (its accumulated buffer)."""
        s = self._stream
        return s._lane(direction).buffer(s._pos(direction, self.index))

    def body_size(self, direction: Direction) -> int:
        """len(`body`), without joining what is held."""
        s = self._stream
        return s._lane(direction).size(s._pos(direction, self.index))

    def body_parts(self, direction: Direction) -> list[bytes | bytearray]:
        """`body` in the pieces it is held in, in order, not joined (for a caller that only copies it out)."""
        s = self._stream
        return s._lane(direction).parts(s._pos(direction, self.index))

    def replace_body(self, direction: Direction, data: bytes) -> None:
        """The whole body this filter is being shown becomes `data` (kept as is: no copy on its way on)."""
        s = self._stream
        s._lane(direction).replace(s._pos(direction, self.index), data)

    def resume(self, direction: Direction) -> None:
        self._stream._control(("resume", self.index, direction))

    def send_local_reply(self, reply: LocalReply) -> None:
        self._stream._control(("reply", self.index, reply))

    def send_proxy_reply(self, reply: LocalReply) -> None:
        """The proxy's own local reply, sent through the filters from this one (not counted as the plugin's)."""
        self._stream._control(("proxy_reply", self.index, reply))

    def close(self) -> None:
        self._stream._control(("close", self.index, None))

    def fail(self) -> None:
        """The plugin failed outside a callback (e.g. a trap in an http-call response)."""
        self._stream._control(("fail", self.index, None))

    @property
    def response_started(self) -> bool:
        return self._stream.response_started

    @property
    def bytes_received(self) -> int:
        """Request body bytes received from downstream so far."""
        return self._stream.bytes_received

    @property
    def bytes_sent(self) -> int:
        """Response body bytes sent downstream so far."""
        return self._stream.bytes_sent

    @property
    def code_details(self) -> str | None:
        return self._stream.code_details

    @property
    def response_flags(self) -> int:
        return self._stream.response_flags

    @property
    def completed_ns(self) -> int:
        """Wall-clock ns when the exchange completed (the stream's `complete()`), read once per stream; now if
        it has not completed yet."""
        done = self._stream.completed_ns
        return done if done else time.time_ns()

    @property
    def backend_latency_ns(self) -> int | None:
        """First request byte sent upstream to the response's last byte received (Envoy's
        response.backend_latency); None until both happened."""
        s = self._stream
        return s.upstream_done_ns - s.upstream_sent_ns if s.upstream_sent_ns and s.upstream_done_ns else None

    def route(self) -> Any:
        """The stream's route decision (meshplug.agent.routing.Decision) or None: see `Stream.route`."""
        return self._stream.route()

    def route_info(self) -> Any:
        """The route the stream info shows (what properties read): see `Stream.route_info`."""
        return self._stream.route_info()

    def clear_route_cache(self) -> None:
        self._stream.clear_route_cache()

    @property
    def dynamic_metadata(self) -> dict[str, dict[str, object]]:
        """The stream's dynamic metadata (Envoy's StreamInfo filter metadata): namespace -> key -> value,
        shared by every filter of the stream (a Lua filter's streamInfo():dynamicMetadata())."""
        s = self._stream
        if s.dynamic_metadata is None:
            s.dynamic_metadata = {}
        return s.dynamic_metadata
