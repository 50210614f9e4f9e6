"""Route tables (Envoy's RouteConfiguration subset): which virtual host, route and cluster serve a request;
and `ListenerState`, what the data path knows of one listener (its routes, pools, active chain).

Called by the data path (meshplug.agent.downstream / exchange / filtered for HTTP, tcp for TCP) and, through
`chain.Stream.route()`, by plugins' `xds.*` properties. Pure: no I/O. Semantics as Envoy's:

* Virtual host by the request's :authority (lower-cased, port included): an exact domain, else the longest
  suffix wildcard ("*.example.com", "*-api.example.com"), else the longest prefix wildcard ("api.*"), else "*"
  (a wildcard never matches an empty remainder).
* The first route whose match holds: `prefix` of the whole :path, `path` equal to the path without its query,
  `safe_regex` fully matching the path without its query (`case_sensitive: false` compares lower-cased), and
  every header matcher (a header's values joined by ","; absent headers as Envoy treats them).
* Weighted clusters: a value (the request header `header_name` as an unsigned integer, else random) modulo the
  total weight picks the cluster whose cumulative weight range contains it, in the listed order.
A route's decision is cached on the stream until a plugin changes the request headers (Envoy clears the route
cache then, and the router picks again).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from meshplug.agent import chain, config, hcm, streamtimeouts

if TYPE_CHECKING:
    from meshplug.agent.upstream import Pool

Header = tuple[bytes, bytes]
_U64: Final = 1 << 64


class Decision:
    """Where one request goes: its virtual host and route (None: no match, 404) and the upstream cluster
    ("" for a direct response or no route)."""

    __slots__ = ("cluster", "route", "vhost")

    def __init__(self, vhost: config.VirtualHost | None, route: config.Route | None, cluster: str) -> None:
        self.vhost = vhost
        self.route = route
        self.cluster = cluster


NO_VHOST: Final = Decision(None, None, "")


def router_reply(decision: Decision | None) -> tuple[int, bytes, str, int] | None:
    """The reply the router itself gives instead of forwarding, as (status, body, details, response flags): 404
    route_not_found without a route, the route's direct response; None when the request goes to a cluster."""
    route = decision.route if decision is not None else None
    if route is None:
        return 404, b"", "route_not_found", chain.RESPONSE_FLAG_NO_ROUTE_FOUND
    if route.direct_status:
        return route.direct_status, route.direct_body, "direct_response", 0
    return None


class _Header:
    __slots__ = ("ignore_case", "invert", "kind", "name", "present", "regex", "value")

    def __init__(self, m: config.HeaderMatch) -> None:
        self.name = m.name.encode()
        self.kind = m.kind
        self.invert = m.invert
        self.present = m.present
        self.value = (m.value.lower() if m.ignore_case else m.value).encode()
        flags = re.IGNORECASE if m.ignore_case else 0
        self.regex = re.compile(m.value.encode(), flags) if m.kind == "regex" else None
        self.ignore_case = m.ignore_case

    def matches(self, found: bytes | None) -> bool:
        if found is None:  # Envoy: an absent header matches only `present_match: false`, and inverted matchers
            if self.kind == "present":
                return self.invert == self.present
            return self.invert
        if self.kind == "present":
            return self.present != self.invert
        value = found.lower() if self.ignore_case else found
        kind = self.kind
        if kind == "exact":
            ok = value == self.value
        elif kind == "prefix":
            ok = value.startswith(self.value)
        elif kind == "suffix":
            ok = value.endswith(self.value)
        elif kind == "contains":
            ok = self.value in value
        else:
            assert self.regex is not None
            ok = self.regex.fullmatch(found) is not None
        return ok != self.invert


class _Route:
    __slots__ = ("case_sensitive", "decision", "headers", "path", "prefix", "regex", "route", "total", "weights")

    def __init__(self, vhost: config.VirtualHost, route: config.Route) -> None:
        m = route.match
        self.route = route
        self.case_sensitive = m.case_sensitive
        self.prefix = _fold(m.prefix, m.case_sensitive).encode() if m.prefix is not None else None
        self.path = _fold(m.path, m.case_sensitive).encode() if m.path is not None else None
        flags = 0 if m.case_sensitive else re.IGNORECASE
        self.regex = re.compile(m.regex.encode(), flags) if m.regex is not None else None
        self.headers = tuple(_Header(h) for h in m.headers)
        self.weights = tuple((w.name, w.weight) for w in route.weighted_clusters if w.weight > 0)
        self.total = sum(w for _, w in self.weights)
        self.decision = Decision(vhost, route, route.cluster)

    def matches(self, path: bytes, headers: Sequence[Header]) -> bool:
        if self.prefix is not None:
            subject = path if self.case_sensitive else path.lower()
            if not subject.startswith(self.prefix):
                return False
        else:
            bare = path.partition(b"?")[0]
            if self.path is not None:
                if (bare if self.case_sensitive else bare.lower()) != self.path:
                    return False
            elif self.regex is not None and self.regex.fullmatch(bare) is None:
                return False
        return all(h.matches(_joined(headers, h.name)) for h in self.headers)

    def decide(self, headers: Sequence[Header]) -> Decision:
        if not self.weights:
            return self.decision
        route = self.route
        value = -1
        if route.weight_header:
            raw = _joined(headers, route.weight_header.encode())
            if raw is not None and raw.isdigit() and int(raw) < _U64:
                value = int(raw)
        if value < 0:
            value = random.getrandbits(64)
        selected = value % self.total
        end = 0
        for name, weight in self.weights:
            end += weight
            if selected < end:
                return Decision(self.decision.vhost, route, name)
        return Decision(self.decision.vhost, route, self.weights[-1][0])  # not reached: selected < total


def _fold(text: str, case_sensitive: bool) -> str:
    return text if case_sensitive else text.lower()


def _joined(headers: Sequence[Header], name: bytes) -> bytes | None:
    """A header's values joined by "," (Envoy's getAllOfHeaderAsString); None when absent."""
    found: bytes | None = None
    for k, v in headers:
        if k == name:
            found = v if found is None else found + b"," + v
    return found


class _Host:
    __slots__ = ("routes", "vhost")

    def __init__(self, vhost: config.VirtualHost) -> None:
        self.vhost = vhost
        self.routes = tuple(_Route(vhost, r) for r in vhost.routes)


class RouteTable:
    """A listener's compiled routes. `constant` is the decision every request whose path begins with "/" gets
    when the table cannot tell those apart (one "*" virtual host whose first route takes every such path to one
    cluster): the data path then skips matching entirely. A path without that "/" (HTTP/2 with a :scheme other
    than http(s), which nghttp2 lets through with any :path) is matched as Envoy matches it: prefix "/" misses it."""

    def __init__(self, routes: config.RouteConfig) -> None:
        self.config = routes
        self.exact: dict[bytes, _Host] = {}
        self.suffixes: list[tuple[bytes, _Host]] = []
        self.prefixes: list[tuple[bytes, _Host]] = []
        self.default: _Host | None = None
        for vh in routes.virtual_hosts:
            host = _Host(vh)
            for domain in vh.domains:
                d = domain.lower().encode()
                if d == b"*":
                    self.default = host
                elif d.startswith(b"*"):
                    self.suffixes.append((d[1:], host))
                elif d.endswith(b"*"):
                    self.prefixes.append((d[:-1], host))
                else:
                    self.exact[d] = host
        #: some route matches a pseudo-header (:method, ...): `resolve` shows them to header matchers
        self.pseudo = any(
            h.name.startswith(":") for vh in routes.virtual_hosts for r in vh.routes for h in r.match.headers
        )
        self.suffixes.sort(key=lambda item: -len(item[0]))
        self.prefixes.sort(key=lambda item: -len(item[0]))
        self.constant: Decision | None = None
        if not self.exact and not self.suffixes and not self.prefixes and self.default is not None:
            first = self.default.routes[0] if self.default.routes else None
            if (
                first is not None
                and first.prefix == b"/"
                and first.case_sensitive
                and not first.headers
                and not first.weights
            ):
                self.constant = first.decision

    def host(self, authority: bytes) -> _Host | None:
        name = authority.lower()
        found = self.exact.get(name)
        if found is not None:
            return found
        for suffix, host in self.suffixes:
            if len(name) > len(suffix) and name.endswith(suffix):
                return host
        for prefix, host in self.prefixes:
            if len(name) > len(prefix) and name.startswith(prefix):
                return host
        return self.default

    def resolve(self, authority: bytes, path: bytes, headers: Sequence[Header], method: bytes = b"") -> Decision:
        """The decision for a request; `headers` are searched by header matchers (an HTTP/1.1 request's
        lines: its pseudo-headers are made from `method`, `path`, `authority` when a matcher needs them)."""
        constant = self.constant
        if constant is not None and path[:1] == b"/":
            return constant
        host = self.host(authority)
        if host is None:
            return NO_VHOST
        if self.pseudo and method:
            pseudo = [(b":method", method), (b":path", path), (b":authority", authority), (b":scheme", b"http")]
            headers = [*pseudo, *headers]
        for route in host.routes:
            if route.matches(path, headers):
                return route.decide(headers)
        return Decision(host.vhost, None, "")

    def resolve_map(self, headers: Sequence[Header]) -> Decision:
        """`resolve` for a proxy-wasm request map (:authority and :path among the headers)."""
        constant = self.constant
        if constant is not None:
            for k, v in headers:
                if k == b":path":
                    if v[:1] == b"/":
                        return constant
                    break
        authority = path = b""
        for k, v in headers:
            if k == b":authority":
                authority = v
            elif k == b":path":
                path = v
        return self.resolve(authority, path, headers)


def rewrite_prefix(path: bytes, route: config.Route) -> bytes:
    """`path` after the route's prefix_rewrite (the matched prefix replaced), as the router sends it."""
    rewrite = route.prefix_rewrite
    prefix = route.match.prefix
    if rewrite is None or prefix is None:
        return path
    return rewrite.encode() + path[len(prefix.encode()) :]


class ListenerState:
    """One listener as the data path sees it: its configuration, compiled routes, the cluster pools, and
    the plugin chains the push path installs (swapped in one assignment each)."""

    def __init__(self, listener: config.Listener, routes: RouteTable | None, pools: dict[str, Pool]) -> None:
        self.config = listener
        self.name = listener.name
        self.routes = routes
        self.pools = pools
        self.default_pool: Pool | None = pools.get(listener.cluster) if listener.cluster else None
        #: the HCM's date/server step on every response; the router's x-envoy-* headers off
        self.server = hcm.ServerHeader(listener)
        self.suppress_envoy_headers = listener.suppress_envoy_headers
        #: some route sets its own max_stream_duration or idle_timeout: streams look for their route early
        self.route_limits = streamtimeouts.any_route_limits(routes.config if routes is not None else None)
        #: the active HTTP chain or None: no plugins on this listener (the fast path)
        self.filters: chain.Chain | None = None
        #: the active network filters (tcp.NetworkFilter) of a TCP listener
        self.network: tuple[Any, ...] = ()
