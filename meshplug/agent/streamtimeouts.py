"""A stream's time limits that depend on its route, as Envoy 1.40's HTTP connection manager sets them: the
duration limit (max_stream_duration) and the route's stream idle timeout.

Used by the downstream connections (`meshplug.agent.h1timers` for HTTP/1.1, `meshplug.agent.h2exchange` for HTTP/2)
once a stream's route is known from its request head as received (before the plugins), and again when a plugin
changed the request headers (clearing the route cache) and the router picked a route anew: Envoy's HCM reads both
limits again whenever it caches a route. Everything here is computed, nothing armed: the connections keep the
deadlines on their one timer.

Probed on Envoy 1.40 (tests/integration/test_differential_stream_limits.py holds it):

* The HCM's common_http_protocol_options.max_stream_duration runs from the stream's start: its first byte, or for
  an HTTP/1.1 request pipelined behind another, the moment the one before it was answered (Envoy's codec reads it
  only then). When it passes: 408 "downstream duration timeout" while the request is still arriving (the HTTP/1.1
  connection closes after it), 504 once the request ended and nothing was answered, a reset (HTTP/1.1: what was
  sent goes out, then the connection closes) once the response started. response.code_details
  max_duration_timeout, no response flag; counter downstream_rq_max_duration_reached. A gRPC request gets the gRPC
  form (200, grpc-status 4).
* A route's max_stream_duration (RouteAction.MaxStreamDuration) replaces the HCM's for its streams, still counted
  from the stream's start: its `max_stream_duration` (0: no limit at all); when `grpc_timeout_header_max` is set
  and the request carries a valid grpc-timeout (any request, not only gRPC), that header's value capped by the max
  (0: not capped), less `grpc_timeout_header_offset` (down to 0, which ends the stream at once). A gRPC request
  (content-type application/grpc) of such a route goes upstream with grpc-timeout set to the limit in ms, or
  without it when the limit is off and the HCM had one.
* A route's idle_timeout replaces the HCM's stream_idle_timeout for its streams (0: none), counted again from the
  moment the route is known. The timer counts the request's bytes and the response's, as they arrive from the
  upstream (a plugin holding the response body does not make the stream idle).
* A plugin that changes the request headers clears the route cache; the route the router then picks sets the limits
  anew: the duration still from the stream's start (the HCM's when the new route sets none), its idle_timeout (if
  set) from that moment, a gRPC request's grpc-timeout rewritten to the new limit.
"""

from __future__ import annotations

import re
from typing import Final

from meshplug import limits
from meshplug.agent.config import HttpOptions, Route, RouteConfig
from meshplug.agent.headermap import is_grpc_content_type

#: the reply's body when the duration limit passes, and its response.code_details (Envoy's words)
BODY: Final = b"downstream duration timeout"
DETAILS: Final = "max_duration_timeout"
#: a gRPC request's grpc-status then (DEADLINE_EXCEEDED, whatever the HTTP status)
GRPC_STATUS: Final = 4
#: no limit
OFF: Final = -1.0

#: a grpc-timeout value as Envoy reads it: an unsigned integer (blanks around it, a plus sign allowed), one unit
_GRPC_TIMEOUT: Final = re.compile(rb"[ \t\n\v\f\r]*\+?([0-9]+)[ \t\n\v\f\r]*([HMSmun])")
#: nanoseconds per grpc-timeout unit
_UNIT_NS: Final = {
    b"H": 3_600_000_000_000,
    b"M": 60_000_000_000,
    b"S": 1_000_000_000,
    b"m": 1_000_000,
    b"u": 1_000,
    b"n": 1,
}
_GRPC_TIMEOUT_NAME: Final = b"grpc-timeout"


def grpc_timeout_ms(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The request's grpc-timeout in whole milliseconds (rounded up: a non-zero value stays non-zero), or None when
    it has none or it is not valid (a number up to `limits.GRPC_TIMEOUT_MAX_VALUE`, then one unit letter)."""
    for name, value in headers:
        if name == _GRPC_TIMEOUT_NAME:
            m = _GRPC_TIMEOUT.fullmatch(value)
            if m is None or int(m.group(1)) > limits.GRPC_TIMEOUT_MAX_VALUE:
                return None
            ns = int(m.group(1)) * _UNIT_NS[m.group(2)]
            return -(-ns // 1_000_000)
    return None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def route_duration(route: Route, hcm_max_s: float, headers: list[tuple[bytes, bytes]]) -> tuple[float, bytes | None]:
    """The duration limit of a stream on `route` (seconds from its start; `OFF`: none), and the grpc-timeout its
    request goes upstream with (None: as received, b"": removed). `hcm_max_s`: the HCM's max_stream_duration (0:
    none); `headers`: the request's (HTTP/1.1 names or HTTP/2 pseudo-headers and names)."""
    limit = route.max_stream_duration
    if limit is None:
        return (hcm_max_s if hcm_max_s > 0 else OFF), None
    header_max = limit.grpc_timeout_header_max_s
    grpc_ms = grpc_timeout_ms(headers) if header_max is not None else None
    off = False
    if grpc_ms is None or header_max is None:
        if limit.max_stream_duration_s is not None:
            timeout_ms = _ms(limit.max_stream_duration_s)
            off = timeout_ms == 0
        else:
            timeout_ms = _ms(hcm_max_s)
            off = timeout_ms == 0
    else:
        timeout_ms = grpc_ms
        cap = _ms(header_max)
        if cap and timeout_ms > cap:
            timeout_ms = cap
        offset = limit.grpc_timeout_header_offset_s
        if timeout_ms and offset is not None:
            offset_ms = _ms(offset)
            timeout_ms = timeout_ms - offset_ms if offset_ms < timeout_ms else 0
    grpc = _grpc(headers)
    if off:
        # Envoy drops the header only where a duration timer was running (the HCM's)
        return OFF, (b"" if grpc and hcm_max_s > 0 else None)
    return timeout_ms / 1000, (b"%dm" % timeout_ms if grpc else None)


def _grpc(headers: list[tuple[bytes, bytes]]) -> bool:
    """A gRPC request (Envoy's Grpc::Common::isGrpcRequestHeaders): content-type application/grpc[+...|;...]."""
    for name, value in headers:
        if name == b"content-type":
            return is_grpc_content_type(value)
    return False


def with_grpc_timeout(headers: list[tuple[bytes, bytes]], value: bytes) -> None:
    """Set the request's grpc-timeout to `value` in place (b"": remove it)."""
    at = [i for i, (name, _) in enumerate(headers) if name == _GRPC_TIMEOUT_NAME]
    for i in reversed(at):
        del headers[i]
    if value:
        headers.insert(at[0] if at else len(headers), (_GRPC_TIMEOUT_NAME, value))


def route_idle(route: Route, hcm_idle_s: float) -> float:
    """The stream idle timeout of a stream on `route` (0: none): the route's idle_timeout when it has one."""
    idle = route.idle_timeout_s
    return hcm_idle_s if idle is None else idle


def any_route_limits(routes: RouteConfig | None) -> bool:
    """Whether some route of `routes` sets its own duration limit or stream idle timeout (the connections only look
    for a stream's route early, before the plugins, when one does)."""
    if routes is None:
        return False
    return any(
        r.max_stream_duration is not None or r.idle_timeout_s is not None
        for vh in routes.virtual_hosts
        for r in vh.routes
    )


def limits_of(
    route: Route, opts: HttpOptions, started_at: float, headers: list[tuple[bytes, bytes]]
) -> tuple[float, float]:
    """A stream on `route` that started at loop time `started_at`: its duration deadline (loop time; 0: none) and
    its stream idle timeout (0: none), the HCM's (`opts`) unless the route sets its own; a gRPC request's
    grpc-timeout in `headers` is set as Envoy sets it."""
    limit, grpc_timeout = route_duration(route, opts.max_stream_duration_s, headers)
    if grpc_timeout is not None:
        with_grpc_timeout(headers, grpc_timeout)
    return (0.0 if limit < 0 else started_at + limit), route_idle(route, opts.stream_idle_timeout_s)
