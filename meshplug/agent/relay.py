"""A request given as header lists, sent to a cluster of either protocol: `open_request(...)` -> `UpRequest`.

Used by the HTTP/2 downstream's exchanges (`meshplug.agent.h2down`) and plugins' calls to HTTP/2 clusters:
what they send is in the chain's form (pseudo-headers first, lower-case names) and what comes back goes to
their `meshplug.agent.upstream.Sink`. Both kinds answer at once and buffer until the connection is there:

* `H2Request`: a stream on the cluster's `meshplug.agent.h2up.H2Pool` (Cluster.http2): frames as they are.
* `H1Request`: a keep-alive connection of the cluster's `meshplug.agent.upstream.Pool`: the head serialized
  as HTTP/1.1 (`framing.request_head_lines`), a body without content-length chunked with the trailers in its last
  chunk; an idle pooled connection the app closed as it was reused is replaced once (no body sent yet).

A connect failure reaches the sink as `up_failed(wire.connect_failure(exc))` (Envoy's reset reason: a refusal with
its transport failure reason, or "connection timeout").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from meshplug.agent import framing, wire
from meshplug.agent.h2up import H2Pool, UpStream
from meshplug.agent.upstream import Pool, Sink, Upstream

Header = tuple[bytes, bytes]


class UpRequest(Protocol):
    """A request on its way to a cluster (its response goes to the sink it was opened with)."""

    def send_headers(self, headers: Sequence[Header], end_stream: bool) -> None: ...

    def send_data(self, data: bytes, end_stream: bool) -> None: ...

    def send_trailers(self, trailers: Sequence[Header]) -> None: ...

    def cancel(self) -> None:
        """Drop the request: nothing more reaches the sink."""
        ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def upstream_fields(self) -> dict[str, Any]:
        """StreamInfo's upstream_* values once connected ({} before)."""
        ...


def open_request(pool: Pool, h2pool: H2Pool | None, sink: Sink) -> UpRequest:
    """A request to the cluster of `pool` (over HTTP/2 when the cluster speaks it: `h2pool`)."""
    if h2pool is not None:
        return H2Request(h2pool, sink)
    return H1Request(pool, sink)


class H2Request:
    """A stream on an HTTP/2 cluster; what is sent before the stream exists waits in order."""

    __slots__ = ("_ops", "_task", "cancelled", "pool", "sink", "stream")

    def __init__(self, pool: H2Pool, sink: Sink) -> None:
        self.pool = pool
        self.sink = sink
        self.stream: UpStream | None = pool.take(sink)
        self._ops: list[tuple[int, Any, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self.cancelled = False
        if self.stream is None:
            self._task = asyncio.get_running_loop().create_task(self._open())

    async def _open(self) -> None:
        try:
            stream = await self.pool.open(self.sink)
        except (OSError, TimeoutError) as exc:
            self.pool.stats.upstream_cx_connect_fail += 1
            if not self.cancelled:
                self.sink.up_failed(wire.connect_failure(exc))
            return
        if self.cancelled:
            stream.cancel()
            return
        self.stream = stream
        ops, self._ops = self._ops, []
        for kind, arg, end in ops:
            if kind == 0:
                stream.send_headers(arg, end)
            elif kind == 1:
                stream.send_data(arg, end)
            else:
                stream.send_trailers(arg)

    def send_headers(self, headers: Sequence[Header], end_stream: bool) -> None:
        if self.stream is not None:
            self.stream.send_headers(headers, end_stream)
        else:
            self._ops.append((0, list(headers), end_stream))

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if self.stream is not None:
            self.stream.send_data(data, end_stream)
        else:
            self._ops.append((1, data, end_stream))

    def send_trailers(self, trailers: Sequence[Header]) -> None:
        if self.stream is not None:
            self.stream.send_trailers(trailers)
        else:
            self._ops.append((2, list(trailers), True))

    def cancel(self) -> None:
        self.cancelled = True
        if self.stream is not None:
            self.stream.cancel()

    def pause_reading(self) -> None:
        if self.stream is not None:
            self.stream.pause_reading()

    def resume_reading(self) -> None:
        if self.stream is not None:
            self.stream.resume_reading()

    def upstream_fields(self) -> dict[str, Any]:
        s = self.stream
        transport = s.conn.transport if s is not None else None
        if transport is None:
            return {}
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        return {
            "upstream_address": str(peer[0]),
            "upstream_port": int(peer[1]),
            "upstream_local_address": str(local[0]),
            "upstream_local_port": int(local[1]),
        }


class H1Request:
    """A request on a keep-alive HTTP/1.1 connection of the cluster; the sink of that connection."""

    __slots__ = (
        "body_sent",
        "cancelled",
        "chunked",
        "ended",
        "head",
        "out",
        "pool",
        "retried",
        "sink",
        "up",
    )

    def __init__(self, pool: Pool, sink: Sink) -> None:
        self.pool = pool
        self.sink = sink
        self.up: Upstream | None = None
        self.head = b""
        self.out: list[bytes] = []  # what waits for the connection
        self.chunked = False
        self.ended = False  # the whole request was handed over
        self.body_sent = False
        self.retried = False
        self.cancelled = False

    def send_headers(self, headers: Sequence[Header], end_stream: bool) -> None:
        head = framing.request_head_lines(headers, b"GET", wire.REQUEST_HOP_BY_HOP)
        if head is None:  # a field HTTP/1.1 cannot carry (as Envoy's codec: the request fails)
            self.sink.up_failed(wire.RESET_PROTOCOL)
            return
        method, lines = head
        if not any(name == b"content-length" for name, _ in headers):
            if not end_stream:
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            elif method not in wire.BODILESS_METHODS:
                lines.append(b"content-length: 0\r\n")
        lines.append(b"\r\n")
        self.head = b"".join(lines)
        self.ended = end_stream
        up = self.pool.take_idle()
        if up is not None:
            self._attach(up, method)
        else:
            asyncio.get_running_loop().create_task(self._connect(method))

    async def _connect(self, method: bytes) -> None:
        try:
            up = await self.pool.connect()
        except (OSError, TimeoutError) as exc:
            self.pool.stats.upstream_cx_connect_fail += 1
            if not self.cancelled:
                self.sink.up_failed(wire.connect_failure(exc))
            return
        if self.cancelled:
            self.pool.release(up)
            return
        self._attach(up, method)

    def _attach(self, up: Upstream, method: bytes) -> None:
        self.up = up
        up.sink = self
        up.head_request = method == b"HEAD"
        self.pool.stats.upstream_rq_total += 1
        out, self.out = self.out, []
        up.write(b"".join([self.head, *out]) if out else self.head)
        self.body_sent = bool(out)

    def _write(self, data: bytes) -> None:
        up = self.up
        if up is not None:
            up.write(data)
            self.body_sent = True
        else:
            self.out.append(data)

    def send_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self._write(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
        if end_stream and not self.ended:
            self.ended = True
            if self.chunked:
                self._write(wire.LAST_CHUNK)

    def send_trailers(self, trailers: Sequence[Header]) -> None:
        if not self.ended:
            self.ended = True
            if self.chunked:  # a body sent with content-length has no place for trailers
                self._write(wire.last_chunk(trailers, self.pool.cluster.enable_trailers))

    def cancel(self) -> None:
        self.cancelled = True
        up, self.up = self.up, None
        if up is not None:
            up.sink = None
            up.close()

    def pause_reading(self) -> None:
        if self.up is not None:
            self.up.pause_reading()

    def resume_reading(self) -> None:
        if self.up is not None:
            self.up.resume_reading()

    def upstream_fields(self) -> dict[str, Any]:
        return self.up.upstream_fields() if self.up is not None else {}

    # Sink of the connection: passed on
    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: Any) -> None:
        self.sink.up_headers(status, reason, headers, parser)

    def up_body(self, data: bytes) -> None:
        self.sink.up_body(data)

    def up_trailers(self, trailers: wire.Headers) -> None:
        self.sink.up_trailers(trailers)

    def up_complete(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            if self.ended:
                self.pool.release(up)
            else:
                up.close()
        self.sink.up_complete()

    def up_failed(self, reset_reason: str) -> None:
        up, self.up = self.up, None
        if (
            up is not None
            and up.reused
            and not up.got_bytes
            and not self.body_sent
            and not self.retried
            and reset_reason == wire.RESET_TERMINATION
        ):
            # the app closed an idle pooled connection as we reused it: once more on a fresh one
            self.retried = True
            self.pool.stats.upstream_rq_retry_stale += 1
            asyncio.get_running_loop().create_task(self._connect(b"HEAD" if up.head_request else b"GET"))
            return
        self.sink.up_failed(reset_reason)

    def up_pause(self) -> None:
        self.sink.up_pause()

    def up_resume(self) -> None:
        self.sink.up_resume()


#: what a call gives back: (status, headers, body, trailers), or None when the connection failed or was reset
Outcome = tuple[int, wire.Headers, bytes, wire.Headers] | None


def _ignore(_outcome: Outcome) -> None:
    return None


class Call:
    """One whole request to a cluster (`start_call`) and the sink of its response: once it is complete, failed
    or timed out, `done` gets the outcome on a later turn of the event loop (never inside the call that caused
    it, so the caller's state is settled first)."""

    __slots__ = ("body", "done", "finished", "headers", "loop", "req", "stats", "status", "timer", "trailers")

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: Any, done: Callable[[Outcome], object]) -> None:
        self.loop = loop
        self.stats = stats
        self.done = done
        self.finished = False
        self.req: UpRequest | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.status = 0
        self.headers: wire.Headers = []
        self.body: list[bytes] = []
        self.trailers: wire.Headers = []

    def _finish(self, outcome: Outcome) -> None:
        if self.finished:
            return
        self.finished = True
        self.req = None  # (it holds this call as its sink: a cycle left to the collector, ~20 objects per call)
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()
        self.loop.call_soon(self.done, outcome)

    def abandon(self) -> None:
        """Nobody waits for the outcome any more (the request itself runs to its end, holding nothing of the
        caller's)."""
        self.finished = True
        self.done = _ignore
        self.req = None  # (the request keeps this call as its sink until it ends; no cycle back)
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()

    def timed_out(self) -> None:
        """Envoy's async client on a timeout: the request is reset, the caller gets 504 upstream request timeout."""
        self.timer = None
        if self.finished:
            return
        if self.req is not None:
            self.req.cancel()
        self.stats.upstream_rq_timeout += 1
        self._finish((504, [(b"content-type", b"text/plain")], wire.BODY_TIMEOUT, []))

    # -- the response (Sink) --
    def up_headers(self, status: int, reason: bytes, headers: wire.Headers, parser: Any) -> None:
        if status >= 200:
            self.status = status
            self.headers = [h for h in headers if h[0] not in wire.HOP_BY_HOP]

    def up_body(self, data: bytes) -> None:
        self.body.append(data)

    def up_trailers(self, trailers: wire.Headers) -> None:
        self.trailers = list(trailers)

    def up_complete(self) -> None:
        self._finish((self.status, self.headers, b"".join(self.body), self.trailers))

    def up_failed(self, reset_reason: str) -> None:
        self._finish(None)

    def up_pause(self) -> None:
        return None

    def up_resume(self) -> None:
        return None


def start_call(  # noqa: PLR0917 -- a request's parts, in order
    pool: Pool,
    h2pool: H2Pool | None,
    headers: Sequence[Header],
    body: bytes,
    trailers: Sequence[Header],
    timeout_s: float,
    done: Callable[[Outcome], object],
) -> Call:
    """Send one whole request to a cluster; `done` gets the whole response back (`Call`). A timeout
    (`timeout_s` > 0) answers 504 "upstream request timeout" (Envoy's async client)."""
    loop = asyncio.get_running_loop()
    call = Call(loop, pool.stats, done)
    req = call.req = open_request(pool, h2pool, call)
    # pseudo-headers first, :scheme added when the plugin gave none (as Envoy's async client does)
    pseudo = [h for h in headers if h[0][:1] == b":"]
    if not any(h[0] == b":scheme" for h in pseudo):
        pseudo.append((b":scheme", b"http"))
    out = pseudo + [
        h for h in headers if h[0][:1] != b":" and (h[0] not in wire.HOP_BY_HOP or h == (b"te", b"trailers"))
    ]
    if body and not any(h[0] == b"content-length" for h in out) and not trailers:
        out.append((b"content-length", str(len(body)).encode()))
    req.send_headers(out, not body and not trailers)
    if body or trailers:
        req.send_data(body, not trailers)
    if trailers:
        req.send_trailers(trailers)
    if timeout_s > 0 and not call.finished:
        call.timer = loop.call_later(timeout_s, call.timed_out)
    return call


async def call(  # noqa: PLR0917 -- a request's parts, in order
    pool: Pool,
    h2pool: H2Pool | None,
    headers: Sequence[Header],
    body: bytes,
    trailers: Sequence[Header],
    timeout_s: float,
) -> Outcome:
    """`start_call`, awaited: the outcome."""
    future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def done(outcome: Outcome) -> None:
        if not future.done():
            future.set_result(outcome)

    pending = start_call(pool, h2pool, headers, body, trailers, timeout_s, done)
    try:
        return await future
    finally:
        pending.abandon()
