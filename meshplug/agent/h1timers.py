"""The timers of one HTTP/1.1 client connection (`meshplug.agent.downstream.Downstream`), as Envoy 1.40's HTTP
connection manager runs them per stream and per connection, on the connection's one lazy timer (`wire.ConnTimer`).

The connection keeps the deadlines (loop times; 0: none) and calls in here: when a request's first byte arrives
(`stream_begun`), when more of it arrives (`stream_active`), when its route sets its own limits (`route_limits`,
from `meshplug.agent.h1request`), when an exchange has its whole request and waits for its answer
(`watch_serving`), when one was answered (`next_turn`), when a plugin's header change re-routed one
(`route_refreshed`), and when its timer fires (`on_timer`). What fires here:

* per connection: the idle timeout (`timer.idle_at`) and max_connection_duration (`end_at`: no more requests, close
  once idle);
* per stream being received: request_headers_timeout (`headers_at`, 408), request_timeout (`request_at`, 408),
  the stream idle timeout (`stream_at`, 408 "stream timeout", flag SI) and the duration limit while the head is
  not complete (`duration_at`; max_stream_duration, `meshplug.agent.streamtimeouts`);
* per exchange: the route timeout (`Exchange.deadline`), the duration limit (`Exchange.end_by`: 408, 504 or a reset
  by the stream's phase; a pipelined request's counts from its turn, `next_turn`) and the stream idle timeout of the
  one being served (`serve_at`: 504 before its response started, a reset once a started response stalls).

The connection owns the bytes and the queue; this module owns when they time out. Functions over the connection
rather than methods (as `meshplug.agent.h1request`): compiled by mypyc in the same group, the calls are native.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, streamtimeouts, wire
from meshplug.agent.exchange import Exchange
from meshplug.agent.filtered import FilteredExchange
from meshplug.agent.streamapi import RESPONSE_FLAG_STREAM_IDLE_TIMEOUT

if TYPE_CHECKING:
    from meshplug.agent.config import Route
    from meshplug.agent.downstream import Downstream


def stream_begun(conn: Downstream) -> None:
    """A request's first byte arrived: its stream's deadlines from now (request headers timeout, request timeout,
    the HCM's max_stream_duration) and the HCM's stream idle timeout until its route changes it."""
    conn.started_at = now = conn.proxy.loop.time()
    opts = conn.opts
    conn.idle_s = opts.stream_idle_timeout_s
    timer = conn.timer
    if opts.request_headers_timeout_s:
        conn.headers_at = now + opts.request_headers_timeout_s
    if opts.request_timeout_s:  # Envoy's request_timeout: the whole request within it (watched from its start)
        conn.request_at = at = now + opts.request_timeout_s
        timer.wake_at(at)
    if opts.max_stream_duration_s:  # the stream's whole life, from its start
        conn.duration_at = at = now + opts.max_stream_duration_s
        timer.wake_at(at)


def stream_active(conn: Downstream) -> None:
    """Bytes of an unfinished request arrived: its stream idle deadline moves (and is watched) -- armed by its first
    bytes, then moved only by what Envoy's codec hands its stream (the whole head, body bytes), not by a head's
    lines trickling in (Envoy 1.40: a head sent line by line every 0.1 s gets its 408 "stream timeout" at the idle
    timeout after its first byte)."""
    idle = conn.idle_s
    if idle and (not conn.in_head or not conn.stream_at):
        conn.stream_at = at = conn.proxy.loop.time() + idle
        conn.timer.wake_at(at)
    if conn.headers_at:
        conn.timer.wake_at(conn.headers_at)


def route_limits(conn: Downstream, route: Route, headers: wire.Headers) -> None:
    """The request being received was routed to `route`, which sets its own duration limit or stream idle timeout
    (meshplug.agent.streamtimeouts): they replace the HCM's, the grpc-timeout header in `headers` may change."""
    conn.duration_at, idle = streamtimeouts.limits_of(route, conn.opts, conn.started_at, headers)
    if conn.duration_at:
        conn.timer.wake_at(conn.duration_at)
    if route.idle_timeout_s is not None:  # Envoy's idle timer starts again with the route's value
        _restart_stream_idle(conn, idle)


def _restart_stream_idle(conn: Downstream, idle: float) -> None:
    """The stream being received takes a route's idle_timeout (`idle`, 0: none), counted again from now."""
    conn.idle_s = idle
    conn.stream_at = at = conn.proxy.loop.time() + idle if idle else 0.0
    if at:
        conn.timer.wake_at(at)


def route_refreshed(
    conn: Downstream, ex: Exchange, route: Route, headers: tuple[tuple[bytes, bytes], ...]
) -> tuple[tuple[bytes, bytes], ...]:
    """A plugin changed `ex`'s request headers (the route cache was cleared) and the router resolved `route` on
    them: as Envoy's HCM when it caches a route again, the stream's duration limit is computed anew (still from the
    stream's start; the HCM's unless the route sets its own) and a route's idle_timeout replaces the stream idle
    timeout, counted again from now. Returns the request headers to send (a gRPC request's grpc-timeout may
    change)."""
    fields = list(headers)
    end_by, idle = streamtimeouts.limits_of(route, conn.opts, ex.started_at, fields)
    ex.end_by = end_by
    if end_by:
        conn.timer.wake_at(end_by)
    if route.idle_timeout_s is not None:
        ex.idle_s = idle
        if ex is conn.current:  # its request still arrives
            _restart_stream_idle(conn, idle)
        elif conn.queue and ex is conn.queue[0] and ex.req_done:
            conn.serve_at = 0.0
            watch_serving(conn, ex)
    return tuple(fields)


def next_turn(conn: Downstream) -> None:
    """The exchange at the queue's head was answered: the next request's stream starts now, its duration counted
    from here -- Envoy's HTTP/1.1 codec reads a pipelined request only once the one before it was answered (probed
    on Envoy 1.40: a request sent right behind one answered after 1 s, on a route whose limit is 1 s, is answered
    by its upstream 0.3 s later). The agent has parsed what came in the same read: its clock moves, and, when its
    request is still arriving, its request headers timeout, request timeout and stream idle timeout start now
    (`waiting` kept them from firing meanwhile: probed on Envoy 1.40, a request whose head or body ends after its
    turn is served, however long the one before it took). Its plugins' request.time is its turn too (probed: at
    least the time the one before it took after that one's)."""
    now = conn.proxy.loop.time()
    timer = conn.timer
    if conn.queue:
        ex = conn.queue[0]
        waited = now - ex.started_at
        ex.started_at = now
        if ex.end_by:
            ex.end_by += waited
            timer.wake_at(ex.end_by)
        if isinstance(ex, FilteredExchange):  # (not started: no plugin read its StreamInfo yet)
            stream = ex.stream
            stream.started_ns = start_ns = time.time_ns()
            stream.info = agent_chain.replace_info(stream.info, {"start_time_ns": start_ns})
        if ex is not conn.current:
            return
        conn.started_at = now
    elif conn.begun and conn.current is None:  # the next request's head is still arriving
        waited = now - conn.started_at
        conn.started_at = now
        if conn.duration_at:
            conn.duration_at += waited
            timer.wake_at(conn.duration_at)
    else:
        return
    opts = conn.opts
    if conn.headers_at:
        conn.headers_at = at = now + opts.request_headers_timeout_s
        timer.wake_at(at)
    if conn.request_at:
        conn.request_at = at = now + opts.request_timeout_s
        timer.wake_at(at)
    if conn.stream_at:
        conn.stream_at = at = now + conn.idle_s
        timer.wake_at(at)


def waiting(conn: Downstream) -> bool:
    """The request being received waits its turn behind another (parsed in the same read): to Envoy it has not
    begun (its codec has not read it), so none of its stream's timers runs yet (`next_turn` starts them)."""
    queue = conn.queue
    return bool(queue) and conn.current is not queue[0]


def watch_serving(conn: Downstream, ex: Exchange) -> None:
    """`ex` (at the queue's head) has its whole request and waits for its response: its stream idle deadline (until
    its response ended), unless its route timeout (counted from about now) is no longer."""
    idle = ex.idle_s
    if idle and not ex.resp_done:
        timeout = ex.timeout_s
        if timeout <= 0 or timeout > idle:
            conn.serve_at = at = conn.proxy.loop.time() + idle
            conn.active_at = 0.0
            conn.timer.wake_at(at)


def on_timer(conn: Downstream) -> None:  # noqa: PLR0912 - one timer per connection: one branch per phase it can fire in
    """The connection's timer fired: act on the deadline that passed (one at most: acting moves the connection on,
    and its deadlines are read again), else ask the timer for the earliest one pending."""
    if conn.closed:
        return
    now = conn.proxy.loop.time()
    timer = conn.timer
    pending = 0.0
    queue = conn.queue
    for ex in list(queue):
        end_by = ex.end_by
        if end_by and ex is queue[0]:  # (a request queued behind another has not started: `next_turn`)
            if end_by <= now:
                _duration_reached(conn, ex)
                timer.wake_at(now)  # the connection moved on: its deadlines are read again
                return
            if not pending or end_by < pending:
                pending = end_by
        deadline = ex.deadline
        if deadline:
            if deadline <= now:
                ex._timed_out()
            elif not pending or deadline < pending:
                pending = deadline
    due = _stream_deadlines(conn, now)
    if due < 0:
        return  # one passed: the connection moved on (its timer is armed again by what follows)
    if due and (not pending or due < pending):
        pending = due
    end_at = conn.end_at
    if end_at:
        if end_at <= now:  # max_connection_duration: no more requests; close once idle
            conn.end_at = 0.0
            conn.expired = True
            if not conn.queue and not conn.begun:
                conn.close()
                return
        elif not pending or end_at < pending:
            pending = end_at
    idle_at = timer.idle_at
    if idle_at:
        if idle_at <= now:
            timer.idle_at = 0.0
            conn.close()
            return
        if not pending or idle_at < pending:
            pending = idle_at
    if pending:
        timer.wake_at(pending)


def _serving_idle(conn: Downstream, now: float) -> float:
    """The stream idle deadline of the exchange being served (`serve_at`): acted on when it passed (-1.0) -- 504
    before its response started, a reset once it did (a response that stalled: Envoy's SI, stream_idle_timeout) --,
    else returned (0: none)."""
    serve_at = conn.serve_at
    if not serve_at or serve_at > now:
        return serve_at
    conn.serve_at = 0.0
    served = conn.queue[0] if conn.queue else None
    if served is None or not served.req_done or served.resp_done:
        return 0.0
    if conn.active_at + served.idle_s > now:  # active since (a write, the upstream's bytes): watched on
        conn.serve_at = serve_at = conn.active_at + served.idle_s
        return serve_at
    conn.proxy.stats.downstream_rq_idle_timeout += 1
    if served.resp_started:
        _reset_started(conn, served, "stream_idle_timeout", RESPONSE_FLAG_STREAM_IDLE_TIMEOUT)
        return -1.0
    served.proxy_reply(504, b"stream timeout", "stream_idle_timeout", RESPONSE_FLAG_STREAM_IDLE_TIMEOUT)
    conn.timer.wake_at(now)  # the reply moved the connection on: its other deadlines are read again
    return -1.0


def _stream_deadlines(conn: Downstream, now: float) -> float:  # noqa: PLR0912 - one branch per timer of a stream
    """The deadlines of the requests (Envoy's per-stream timers): the one being served (stream idle until its
    response ends), the one being received (request timeout, request headers timeout, stream idle, the duration
    limit). One that passed is acted on (-1.0: the caller stops); else the earliest pending one (0: none)."""
    earliest = _serving_idle(conn, now)
    if earliest < 0 or waiting(conn):
        return earliest
    request_at = conn.request_at
    if request_at and request_at <= now:
        conn.request_at = request_at = 0.0
        cur = conn.current
        if cur is None or not (cur.resp_started or cur.resp_done):  # a started response disarms it (Envoy)
            conn.proxy.stats.downstream_rq_timeout += 1
            conn.refuse_now(framing.Refusal(408, b"request timeout", "request_overall_timeout", codec=False))
            return -1.0
    if request_at and (not earliest or request_at < earliest):
        earliest = request_at
    duration_at = conn.duration_at  # a stream whose head is not complete yet (then its exchange's `end_by`)
    if duration_at:
        if duration_at <= now:
            conn.duration_at = 0.0
            conn.proxy.stats.downstream_rq_max_duration_reached += 1
            conn.refuse_now(framing.Refusal(408, streamtimeouts.BODY, streamtimeouts.DETAILS, codec=False))
            return -1.0
        if not earliest or duration_at < earliest:
            earliest = duration_at
    for at, status, body, details, flags in (  # as Envoy's HCM: the stream idle timeout flags the stream SI
        (conn.headers_at, 408, b"request header timeout", "request_header_timeout", 0),
        (conn.stream_at, 408, b"stream timeout", "stream_idle_timeout", RESPONSE_FLAG_STREAM_IDLE_TIMEOUT),
    ):
        if at:
            if at <= now:
                stats = conn.proxy.stats
                if flags:
                    stats.downstream_rq_idle_timeout += 1
                else:
                    stats.downstream_rq_header_timeout += 1
                conn.refuse_now(framing.Refusal(status, body, details, codec=False, flags=flags))
                return -1.0
            if not earliest or at < earliest:
                earliest = at
    return earliest


def _duration_reached(conn: Downstream, ex: Exchange) -> None:
    """`ex` outlived its duration limit (max_stream_duration): 408 while its request arrives, 504 once it ended,
    reset once its response started (Envoy's HCM; details max_duration_timeout, no response flag)."""
    ex.end_by = 0.0
    if ex.resp_done:
        return
    conn.proxy.stats.downstream_rq_max_duration_reached += 1
    if ex.resp_started:
        _reset_started(conn, ex, streamtimeouts.DETAILS, 0)
    elif not ex.req_done and ex is conn.current:
        conn.refuse_now(framing.Refusal(408, streamtimeouts.BODY, streamtimeouts.DETAILS, codec=False))
    else:  # (the exchange at the queue's head: those behind it have not started)
        ex.proxy_reply(504, streamtimeouts.BODY, streamtimeouts.DETAILS, 0, grpc_status=streamtimeouts.GRPC_STATUS)


def _reset_started(conn: Downstream, ex: Exchange, details: str, flags: int) -> None:
    """Reset `ex`, whose response started, for one of the HCM's timers: what was written goes out, the connection
    closes as after an upstream reset; its plugins log `details` and `flags`."""
    if isinstance(ex, FilteredExchange):
        ex.stream.code_details = details
        ex.stream.response_flags |= flags
    ex._drop_upstream()
    ex._cancel_timer()
    ex.end_by = 0.0
    conn.serve_at = 0.0
    conn.close_after_reset()
