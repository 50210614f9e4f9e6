"""The sans-IO HTTP filter chain: plugins ordered by phase and priority; events in, decisions out.

Called by the agent's I/O shell (meshplug.agent.server). It imports neither wasmtime, nor an HTTP server,
nor asyncio (an .importlinter contract enforces it): filters are anything implementing `Filter`
(meshplug.agent.host.Plugin does), and all I/O is the shell's.

Shell usage::

    chain = Chain([plugin_a, plugin_b])              # sorted: AUTHN, AUTHZ, STATS, UNSPECIFIED; priority desc
    s = chain.new_stream(StreamInfo(remote_address="10.0.0.7", remote_port=5555, protocol="HTTP/1.1"))
    s.on_progress = wake                              # called when async work (http-call response, tick,
                                                      # queue) produced outputs for this stream
    out = s.recv_request_headers(http1_request_headers(b"GET", b"/x", hdrs), end_stream=False)
    out += s.recv_request_data(b"...", end_stream=True)
    ... perform `out` in order:
        SendHeaders(UPSTREAM|DOWNSTREAM, headers, end_stream)   headers keep pseudo-headers; see split_pseudo
        SendData(target, data, end_stream)   SendTrailers(target, trailers)
        AbortUpstream(reason)    a local reply replaced the upstream exchange: drop/close the upstream request
        ResetStream(reason)      close downstream (and upstream) now; nothing more will be emitted
    out = s.recv_response_headers(http1_response_headers(200, hdrs), end_stream=False); ... recv_response_data
    s.complete()                                      # always, once: runs on_log / on_done / on_delete
    later = s.take_outputs()                          # outputs produced asynchronously (after on_progress)

Semantics: meshplug.agent.stream. The chain's vocabulary (meshplug.agent.streamapi), header maps
(meshplug.agent.headermap) and match rules (meshplug.agent.rules) are re-exported here as the shell and the
filters name them.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshplug.agent.headermap import (
    REQUEST_INLINE_HEADERS,
    REQUEST_TRAILER_INLINE_HEADERS,
    RESPONSE_INLINE_HEADERS,
    RESPONSE_TRAILER_INLINE_HEADERS,
    add_header,
    http1_request_headers,
    http1_response_headers,
    http_to_grpc_status,
    is_grpc_request,
    local_reply_headers,
    split_pseudo,
)
from meshplug.agent.rules import Match, Rule, host_and_path, request_host
from meshplug.agent.stream import Stream
from meshplug.agent.streamapi import (
    RESPONSE_FLAG_DOWNSTREAM_CONNECTION_TERMINATION,
    RESPONSE_FLAG_DOWNSTREAM_PROTOCOL_ERROR,
    RESPONSE_FLAG_DOWNSTREAM_REMOTE_RESET,
    RESPONSE_FLAG_LOCAL_RESET,
    RESPONSE_FLAG_NO_HEALTHY_UPSTREAM,
    RESPONSE_FLAG_NO_ROUTE_FOUND,
    RESPONSE_FLAG_UPSTREAM_CONNECTION_FAILURE,
    RESPONSE_FLAG_UPSTREAM_CONNECTION_TERMINATION,
    RESPONSE_FLAG_UPSTREAM_OVERFLOW,
    RESPONSE_FLAG_UPSTREAM_PROTOCOL_ERROR,
    RESPONSE_FLAG_UPSTREAM_REMOTE_RESET,
    RESPONSE_FLAG_UPSTREAM_REQUEST_TIMEOUT,
    RQ_TIME_BOUNDS_NS,
    AbortUpstream,
    Action,
    Direction,
    FailStrategy,
    Filter,
    FilterStream,
    ForeignFilter,
    Header,
    Headers,
    LocalReply,
    NativeFilter,
    NativeFilterStream,
    Output,
    Phase,
    ResetStream,
    SendData,
    SendHeaders,
    SendTrailers,
    StreamControl,
    StreamInfo,
    Target,
    replace_info,
)

__all__ = [
    "REQUEST_INLINE_HEADERS", "REQUEST_TRAILER_INLINE_HEADERS", "RESPONSE_FLAG_DOWNSTREAM_CONNECTION_TERMINATION",
    "RESPONSE_FLAG_DOWNSTREAM_PROTOCOL_ERROR", "RESPONSE_FLAG_DOWNSTREAM_REMOTE_RESET", "RESPONSE_FLAG_LOCAL_RESET",
    "RESPONSE_FLAG_NO_HEALTHY_UPSTREAM", "RESPONSE_FLAG_NO_ROUTE_FOUND", "RESPONSE_FLAG_UPSTREAM_CONNECTION_FAILURE",
    "RESPONSE_FLAG_UPSTREAM_CONNECTION_TERMINATION", "RESPONSE_FLAG_UPSTREAM_OVERFLOW",
    "RESPONSE_FLAG_UPSTREAM_PROTOCOL_ERROR", "RESPONSE_FLAG_UPSTREAM_REMOTE_RESET",
    "RESPONSE_FLAG_UPSTREAM_REQUEST_TIMEOUT", "RESPONSE_INLINE_HEADERS",
    "RESPONSE_TRAILER_INLINE_HEADERS", "AbortUpstream", "Action", "Chain", "Direction", "FailStrategy", "Filter",
    "FilterStream", "Header", "Headers", "LocalReply", "Match", "NativeFilter", "NativeFilterStream", "Output",
    "Phase", "ResetStream", "Rule", "SendData", "SendHeaders", "SendTrailers", "Stream", "StreamControl",
    "StreamInfo", "Target", "add_header", "http1_request_headers", "http1_response_headers", "http_to_grpc_status",
    "is_grpc_request", "local_reply_headers", "order", "replace_info", "request_host", "split_pseudo",
]  # fmt: skip


def order(filters: Sequence[Filter]) -> list[Filter]:
    """Istio order: phase (AUTHN, AUTHZ, STATS, UNSPECIFIED), then priority high->low (unset last),
    then the given order (creation time), then name."""
    return [filters[i] for i in _order_indices(filters)]


def _order_indices(filters: Sequence[Filter]) -> list[int]:
    """`order` as indices into `filters`."""

    def key(idx: int) -> tuple[int, int, int, int, str]:
        f = filters[idx]
        prio = f.priority
        return (int(f.phase), 0 if prio is not None else 1, -(prio or 0), idx, f.name)

    return sorted(range(len(filters)), key=key)


class MatchStream(Stream):
    """A stream of a chain with match rules: when the request headers arrive (before any filter sees
    them) every filter whose rules do not match the request is bypassed for the whole stream, as if it
    were not in the chain: no context, no callback, not even `on_complete`."""

    _decided = False

    def _decide(self, headers: Sequence[Header]) -> None:
        self._decided = True
        host, path = host_and_path(headers)
        for index, match in self.chain.matchers:
            if not match.matches(host, path):
                self.bypass(index)

    def recv_request_headers(self, headers: Headers, end_stream: bool) -> list[Output]:
        if not self._decided:
            self._decide(headers)
        return super().recv_request_headers(headers, end_stream)

    def pass_request_headers(self, headers: Headers, end_stream: bool, *, own: bool = False) -> bool:
        if not self._decided:
            self._decide(headers)
        return super().pass_request_headers(headers, end_stream, own=own)

    def complete(self) -> list[Output]:
        # a request that never reached the chain (e.g. the proxy answered it) matches no rule: no host, no path
        if not self._decided and not self.completed:
            self._decide(self.request_headers)
        return super().complete()


# ---- the chain ------------------------------------------------------------------------------------
class Chain:
    """An ordered set of filters; makes streams. Immutable once built (a new config builds a new chain)."""

    def __init__(self, filters: Sequence[Filter], match: Sequence[Sequence[Rule]] | None = None) -> None:
        """`match`: per filter (same order as `filters`), the rules of the requests it runs for; a filter
        whose rules are empty (or absent) runs for every request."""
        if match is not None and len(match) != len(filters):
            raise ValueError(f"{len(match)} match rule sets for {len(filters)} filters")
        indices = _order_indices(filters)
        self.filters: tuple[Filter, ...] = tuple(filters[i] for i in indices)
        #: the same, as the chain calls them (`NativeFilter`s as they are, others behind an adapter)
        self.makers: tuple[NativeFilter, ...] = tuple(
            f if isinstance(f, NativeFilter) else ForeignFilter(f) for f in self.filters
        )
        n = len(self.filters)
        #: per filter (chain order): failures (trap, budget, start), FAIL_OPEN bypasses that followed, and the
        #: local replies the filter itself sent, by status class (index status // 100, 0..5)
        self.failures: list[int] = [0] * n
        self.bypasses: list[int] = [0] * n
        self.local_replies: list[list[int]] = [[0] * 6 for _ in range(n)]
        #: streams through the chain, and their time from the request's start to the exchange's end, as counts
        #: per bucket of `limits.PLUGIN_RQ_TIME_BUCKETS_MS` then the overflow (each plugin's request stats)
        self.requests = 0
        self.latency: list[int] = [0] * (len(RQ_TIME_BOUNDS_NS) + 1)
        #: (position in chain order, its rules) of every filter that has rules
        self.matchers: tuple[tuple[int, Match], ...] = tuple(
            (pos, Match(match[i])) for pos, i in enumerate(indices) if match is not None and match[i]
        )

    def new_stream(self, info: StreamInfo | None = None, *, start_time_ns: int | None = None) -> Stream:
        """A stream (one that decides per request which filters run when any filter has rules);
        `start_time_ns` (if given) replaces info's start_time_ns, lazily: the StreamInfo a plugin reads is
        built only when one asks (`Stream.info`), not per request."""
        self.requests += 1
        if self.matchers:
            return MatchStream(self, info or StreamInfo(), start_time_ns)
        return Stream(self, info or StreamInfo(), start_time_ns)
