"""The data path's pure helpers (meshplug.agent.wire: request ids, close-delimited responses, the wording and flags of
upstream failures) and the connection's lazy deadlines (idle and response timeouts) on a manual clock."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from meshplug.agent import config as agent_config
from meshplug.agent import downstream, server, upstream, wire
from meshplug.agent.exchange import failure_reply, reset_flags


def test_request_ids_are_uuid4_shaped_and_unique() -> None:
    ids = wire.RequestIds()
    values = [ids.new() for _ in range(10_000)]
    assert len(set(values)) == len(values)
    for raw in (values[0], values[-1]):
        parsed = uuid.UUID(raw.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed).encode() == raw
    # two processes (two generators) do not share a prefix
    assert wire.RequestIds().new()[:24] != values[0][:24]


# the failure, then Envoy 1.40's reset reason, 503/502 body tail, response.code_details and flags (as
# tests/integration/test_differential_upstream_flags.py shows Envoy giving them)
_REFUSED_DETAILS = (
    "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}"
)
RESETS: list[tuple[str, BaseException | str, int, bytes, str, int]] = [
    ("refused", ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"), 503, b"remote connection failure",
     _REFUSED_DETAILS, 0x20),
    ("timeout", TimeoutError(), 503, b"connection timeout",
     "upstream_reset_before_response_started{connection_timeout}", 0x20),
    ("unreachable", OSError(errno.ENETUNREACH, "x"), 503, b"remote connection failure",
     "upstream_reset_before_response_started{remote_connection_failure|immediate_connect_error:_Network_is_unreachable}",
     0x20),
    ("termination", wire.RESET_TERMINATION, 503, b"connection termination",
     "upstream_reset_before_response_started{connection_termination}", 0x40),
    ("protocol", wire.RESET_PROTOCOL, 502, b"protocol error", "upstream_reset_before_response_started{protocol_error}",
     0x800000),
    ("remote reset", wire.RESET_REMOTE, 503, b"remote reset", "upstream_reset_before_response_started{remote_reset}",
     0x10),
    ("refused stream", wire.RESET_REFUSED, 503, b"remote refused stream reset",
     "upstream_reset_before_response_started{remote_refused_stream_reset}", 0x10),
    ("overflow", wire.RESET_OVERFLOW, 503, b"overflow", "upstream_reset_before_response_started{overflow}", 0x80),
]  # fmt: skip


@pytest.mark.parametrize(
    ("failure", "status", "tail", "details", "flags"), [r[1:] for r in RESETS], ids=[r[0] for r in RESETS]
)
def test_upstream_failures_are_worded_and_flagged_as_envoys_router(
    failure: BaseException | str, status: int, tail: bytes, details: str, flags: int
) -> None:
    reason = failure if isinstance(failure, str) else wire.connect_failure(failure)
    assert wire.is_connect_failure(reason) == (not isinstance(failure, str))
    body = b"upstream connect error or disconnect/reset before headers. reset reason: " + tail
    assert failure_reply(reason) == (status, body, details, flags)
    started = details.replace("before_response_started", "after_response_started")
    assert (reset_flags(reason), wire.reset_details(reason, started=True)) == (flags, started)


def test_close_delimited() -> None:
    assert wire.close_delimited(b"GET", 200, [])
    assert not wire.close_delimited(b"GET", 200, [(b"content-length", b"3")])
    assert not wire.close_delimited(b"GET", 200, [(b"transfer-encoding", b"Chunked")])
    assert not wire.close_delimited(b"HEAD", 200, [])
    assert not wire.close_delimited(b"GET", 204, [])


# --- the connection's lazy deadlines (one timer per connection, no timer handle per request) -------------
class _Handle:
    def __init__(self, loop: _Loop, when: float, fn: Callable[[], None]) -> None:
        self.loop, self.when, self.fn, self.cancelled = loop, when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """A manual clock: `advance(s)` runs the timers due by then; call_soon runs at once."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        fn(*args)

    def call_at(self, when: float, fn: Callable[[], None]) -> _Handle:
        handle = _Handle(self, when, fn)
        self.timers.append(handle)
        return handle

    def live(self) -> int:
        return sum(not h.cancelled for h in self.timers)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while due := [h for h in self.timers if not h.cancelled and h.when <= self.now]:
            for h in due:
                self.timers.remove(h)
                h.fn()


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, _key: str) -> tuple[str, int]:
        return ("127.0.0.1", 5555)


def _proxy(loop: _Loop, http: dict[str, Any] | None = None) -> tuple[server.Proxy, upstream.Pool]:
    cfg = agent_config.parse(
        {
            "listeners": [{"name": "m", "address": "127.0.0.1", "port": 1, "cluster": "u"}],
            "clusters": [{"name": "u", "address": "127.0.0.1", "port": 2, "response_timeout_s": 5}],
            "admin": {"address": "127.0.0.1", "port": 3},
            "http": http or {},
        },
        base=Path("/tmp"),
    )
    proxy = server.Proxy(cfg, loop=cast(Any, loop), idle_timeout_s=30.0)
    return proxy, proxy.pools["u"]


_REQ = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
_RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _connected(
    loop: _Loop, http: dict[str, Any] | None = None
) -> tuple[downstream.Downstream, _Transport, upstream.Upstream, _Transport]:
    proxy, pool = _proxy(loop, http)
    up, ut = upstream.Upstream(pool), _Transport()
    up.connection_made(cast(Any, ut))
    pool.idle.append(up)
    down, dt = downstream.Downstream(proxy, proxy.listeners[0]), _Transport()
    down.connection_made(cast(Any, dt))
    return down, dt, up, ut


def test_an_idle_connection_closes_after_the_idle_timeout_counted_from_its_last_response() -> None:
    loop = _Loop()
    down, dt, up, _ = _connected(loop)
    loop.advance(20)
    for _ in range(50):  # requests move the idle deadline without a timer each
        down.data_received(_REQ)
        up.data_received(_RESP)
    assert b"".join(dt.out).count(b"200 OK") == 50
    assert loop.live() == 1
    loop.advance(20)  # the first timer fires 30 s after connect: the connection was busy since, not idle
    assert not dt.closed and loop.live() == 1
    loop.advance(9.9)
    assert not dt.closed
    loop.advance(0.2)
    assert dt.closed


def test_a_response_deadline_answers_504_and_a_served_request_leaves_none() -> None:
    loop = _Loop()
    down, dt, up, ut = _connected(loop)
    down.data_received(_REQ)
    up.data_received(_RESP)
    loop.advance(4.9)
    down.data_received(_REQ)  # sent upstream; no answer
    assert len(ut.out) == 2
    loop.advance(4.9)
    assert b"504" not in b"".join(dt.out)
    loop.advance(0.2)
    assert b"HTTP/1.1 504 Gateway Timeout" in dt.out[-1] and b"upstream request timeout" in dt.out[-1]


# --- the request's own deadlines (stream idle, request headers) and the connection's lifetime --------------


def test_a_stalled_partial_request_gets_408_at_the_stream_idle_timeout_and_activity_moves_it() -> None:
    loop = _Loop()
    down, dt, _, ut = _connected(loop, {"stream_idle_timeout_s": 10})
    down.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
    loop.advance(9)
    down.data_received(b"cd")  # activity: the deadline moves
    loop.advance(9)
    assert not dt.closed and not any(b"408" in o for o in dt.out)
    loop.advance(1.5)
    assert dt.out[-1].startswith(b"HTTP/1.1 408 Request Timeout") and dt.out[-1].endswith(b"stream timeout")
    assert dt.closed and ut.closed  # the half-sent request's upstream connection goes too


def test_request_headers_timeout_counts_from_the_first_byte_whatever_follows() -> None:
    loop = _Loop()
    down, dt, _, _ = _connected(loop, {"request_headers_timeout_s": 5})
    down.data_received(b"GET / HTTP/1.1\r\n")
    for _ in range(4):
        loop.advance(1)
        down.data_received(b"X-Slow: 1\r\n")  # trickling headers do not move it
    loop.advance(1.1)
    assert dt.out[-1].startswith(b"HTTP/1.1 408 ") and dt.out[-1].endswith(b"request header timeout")


def test_stream_idle_timeout_is_not_moved_by_a_head_trickling_in() -> None:
    """As Envoy 1.40: the idle timer starts with the request's first byte and moves with what the codec hands the
    stream (the whole head, body bytes), not with a head's lines."""
    loop = _Loop()
    down, dt, _, _ = _connected(loop, {"stream_idle_timeout_s": 5})
    down.data_received(b"GET / HTTP/1.1\r\n")
    for _ in range(4):
        loop.advance(1)
        down.data_received(b"X-Slow: 1\r\n")
    loop.advance(1.1)
    assert dt.out[-1].startswith(b"HTTP/1.1 408 ") and dt.out[-1].endswith(b"stream timeout")
    assert down.proxy.stats.downstream_rq_idle_timeout == 1


def test_request_timeout_counts_from_the_first_byte_whatever_follows() -> None:
    loop = _Loop()
    down, dt, _, ut = _connected(loop, {"request_timeout_s": 5, "stream_idle_timeout_s": 2})
    down.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
    for _ in range(4):
        loop.advance(1)
        down.data_received(b"a")  # body bytes keep the stream idle timeout away, not this one
    assert not any(b"408" in o for o in dt.out)
    loop.advance(1.1)
    assert dt.out[-1].startswith(b"HTTP/1.1 408 ") and dt.out[-1].endswith(b"request timeout")
    assert b"connection: close" in dt.out[-1] and ut.closed
    assert down.proxy.stats.downstream_rq_timeout == 1


def test_request_timeout_ends_with_the_request_or_once_its_response_started() -> None:
    loop = _Loop()
    down, dt, up, _ = _connected(loop, {"request_timeout_s": 5})
    down.data_received(_REQ)  # whole: the request timeout is over; the route's 5 s response timeout runs
    loop.advance(4)
    up.data_received(_RESP)
    down.data_received(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
    up.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nea")  # answered early, still sending
    loop.advance(5.5)
    assert down.proxy.stats.downstream_rq_timeout == 0 and not any(b"408" in o for o in dt.out)


@pytest.mark.parametrize(
    ("idle_s", "answered_at", "body"),
    [(2, 2, b"stream timeout"), (10, 5, b"upstream request timeout")],  # the route's timeout (5 s) when shorter
)
def test_a_request_waiting_for_a_silent_upstream_ends_at_the_stream_idle_timeout(
    idle_s: float, answered_at: float, body: bytes
) -> None:
    loop = _Loop()
    down, dt, _, ut = _connected(loop, {"stream_idle_timeout_s": idle_s})
    down.data_received(_REQ)
    loop.advance(answered_at - 0.1)
    assert not dt.out
    loop.advance(0.2)
    assert dt.out[-1].startswith(b"HTTP/1.1 504 ") and dt.out[-1].endswith(body)
    assert ut.closed and not dt.closed  # the upstream connection goes; the client's stays (keep-alive)
    assert down.proxy.stats.downstream_rq_idle_timeout == (body == b"stream timeout")


def test_max_connection_duration_closes_after_the_response_in_flight() -> None:
    loop = _Loop()
    down, dt, up, _ = _connected(loop, {"max_connection_duration_s": 3})
    down.data_received(_REQ)
    up.data_received(_RESP)
    down.data_received(_REQ)  # in flight when the duration ends (before its 5 s response timeout)
    loop.advance(3.5)
    assert not dt.closed
    up.data_received(_RESP)
    out = b"".join(dt.out)
    assert out.count(b"200 OK") == 2 and out.endswith(b"connection: close\r\n\r\nok") and dt.closed
