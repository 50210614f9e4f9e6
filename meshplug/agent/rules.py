"""Match rules: which requests a filter sees (a WasmPlugin's `match`), compiled once per chain.

Used by the stream (meshplug.agent.stream): a filter with rules is bypassed for requests no rule matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from meshplug.agent.streamapi import Header


# ---- match rules: which requests a filter sees ----------------------------------------------------
class Rule(Protocol):
    """One match rule (meshplug.protocol.MatchRule has this shape): hosts (any of) AND paths (any prefix
    or exact path); an empty sequence matches everything."""

    @property
    def hosts(self) -> Sequence[str]: ...

    @property
    def path_prefixes(self) -> Sequence[str]: ...

    @property
    def exact_paths(self) -> Sequence[str]: ...


def request_host(authority: bytes) -> bytes:
    """The host of an :authority / Host value: without its port, lower-case ("[::1]:80" -> "[::1]")."""
    if authority.startswith(b"["):  # an IPv6 literal keeps its brackets
        end = authority.find(b"]")
        return (authority if end < 0 else authority[: end + 1]).lower()
    return authority.partition(b":")[0].lower()


class _CompiledRule:
    __slots__ = ("exact", "names", "prefixes", "suffixes")

    def __init__(self, rule: Rule) -> None:
        hosts = [h.lower().encode() for h in rule.hosts]
        #: None: any host; else exact names and the ".d" suffixes of "*.d" patterns
        self.names: frozenset[bytes] | None = frozenset(h for h in hosts if not h.startswith(b"*.")) if hosts else None
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith(b"*."))
        prefixes = tuple(p.encode() for p in rule.path_prefixes)
        exact = frozenset(p.encode() for p in rule.exact_paths)
        if not prefixes and not exact:  # any path: every path starts with ""
            prefixes = (b"",)
        self.prefixes = prefixes
        self.exact = exact

    def matches(self, host: bytes, path: bytes) -> bool:
        names = self.names
        # "*.d" matches names ending in ".d", not ".d" itself
        if names is not None and host not in names and not any(host.endswith(s) and host != s for s in self.suffixes):
            return False
        if path.startswith(self.prefixes):  # a plain prefix of the raw path, query included (Envoy's prefix)
            return True
        return bool(self.exact) and path.partition(b"?")[0] in self.exact


class Match:
    """A filter's match rules, compiled: `matches` is true when any rule matches the request
    (see meshplug.protocol: host without port, case-insensitive, exact or "*.d"; path prefix of the raw
    path, exact path without the query). No rules: every request matches."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = tuple(_CompiledRule(r) for r in rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def matches(self, host: bytes, path: bytes) -> bool:
        """`host` as `request_host` returns it; `path` the raw :path."""
        return not self._rules or any(r.matches(host, path) for r in self._rules)

    def matches_request(self, headers: Sequence[Header]) -> bool:
        """The rules against a request map (:authority, else Host; :path)."""
        host, path = host_and_path(headers)
        return self.matches(host, path)


def host_and_path(headers: Sequence[Header]) -> tuple[bytes, bytes]:
    authority = path = host = None
    for k, v in headers:
        if k == b":authority":
            if authority is None:
                authority = v
        elif k == b":path":
            if path is None:
                path = v
        elif k == b"host" and host is None:
            host = v
    return request_host(authority or host or b""), path or b""
