"""An Envoy RouteConfiguration (an http_connection_manager's inline `route_config`) as the agent's routes.

Called by `meshplug.agent.bootstrap` for each HTTP listener; produces `meshplug.agent.config.RouteConfig`.
What is read: `virtual_hosts[]` with `name`, `domains` and `metadata`, their `routes[]` -- `match` by `prefix`
/ `path` / `safe_regex` (+ `case_sensitive` and `headers[]` matchers), then `route` (`cluster` or
`weighted_clusters` with `header_name`, `prefix_rewrite`, `timeout`, `idle_timeout`, `max_stream_duration` with
`max_stream_duration` / `grpc_timeout_header_max` / `grpc_timeout_header_offset`) or `direct_response` --, route `name`
and `metadata`. Everything else is refused with its field path (meshplug.agent.envoyjson).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from meshplug.agent import config, envoyjson, metadata


def route_config(obj: envoyjson.Message, clusters: set[str]) -> config.RouteConfig:
    """An hcm's inline route_config; `clusters` are the bootstrap's cluster names (routes may name no other)."""
    name = obj.text("name")
    obj.flag("validate_clusters", True)
    hosts: list[config.VirtualHost] = []
    for raw, path in obj.items("virtual_hosts"):
        vh = envoyjson.Message(raw, path)
        vname = vh.need_text("name")
        domains: list[str] = []
        for d, dpath in vh.items("domains"):
            if not isinstance(d, str) or not d:
                raise envoyjson.error(dpath, "must be a non-empty string")
            domains.append(d.lower())
        if not domains:
            raise envoyjson.error(vh.at("domains"), "needs at least one domain")
        meta = metadata.metadata_from_json(vh.raw("metadata"), vh.at("metadata"))
        routes = tuple(_route(r, rpath, clusters) for r, rpath in vh.items("routes"))
        vh.done()
        hosts.append(config.VirtualHost(name=vname, domains=tuple(domains), routes=routes, metadata=meta))
    seen: set[str] = set()
    for host in hosts:
        for d in host.domains:
            if d in seen:
                raise envoyjson.error(obj.at("virtual_hosts"), f"domain {d!r} is in more than one virtual host")
            seen.add(d)
    obj.done()
    return config.RouteConfig(name=name, virtual_hosts=tuple(hosts))


def _route(raw: Any, path: str, clusters: set[str]) -> config.Route:
    obj = envoyjson.Message(raw, path)
    route = config.Route(
        match=_route_match(obj.need("match")),
        name=obj.text("name"),
        metadata=metadata.metadata_from_json(obj.raw("metadata"), obj.at("metadata")),
    )
    action = obj.obj("route")
    direct = obj.obj("direct_response")
    obj.done()
    if (action is None) == (direct is None):
        raise envoyjson.error(path, "needs exactly one of route, direct_response")
    if direct is not None:
        status = direct.uint("status", 0, low=100, high=599)
        if not status:
            raise envoyjson.error(direct.at("status"), "is required (100-599)")
        src = direct.obj("body")
        body = envoyjson.data_source(src, allow_file=True) if src is not None else b""
        direct.done()
        return dataclasses.replace(route, direct_status=status, direct_body=body)
    assert action is not None
    cluster = action.text("cluster")
    weighted = action.obj("weighted_clusters")
    if bool(cluster) == (weighted is not None):
        raise envoyjson.error(action.path, "needs exactly one of cluster, weighted_clusters")
    entries, header = _weighted(weighted) if weighted is not None else ((), "")
    for target in [cluster] if cluster else [e.name for e in entries]:
        if target not in clusters:
            raise envoyjson.error(
                action.at("cluster" if cluster else "weighted_clusters"), f"unknown cluster {target!r}"
            )
    rewrite = action.text("prefix_rewrite") if action.has("prefix_rewrite") else None
    timeout = action.duration("timeout", config.ROUTE_TIMEOUT_S)
    idle = action.duration("idle_timeout", 0.0) if action.has("idle_timeout") else None
    limit = action.obj("max_stream_duration")
    action.done()
    return dataclasses.replace(
        route,
        cluster=cluster,
        weighted_clusters=entries,
        weight_header=header.lower(),
        prefix_rewrite=rewrite,
        timeout_s=timeout,
        idle_timeout_s=idle,
        max_stream_duration=_max_stream_duration(limit) if limit is not None else None,
    )


def _max_stream_duration(obj: envoyjson.Message) -> config.MaxStreamDuration:
    """A route's max_stream_duration: each of its three durations as given (None: unset)."""
    fields = ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
    given = [obj.duration(name, 0.0) if obj.has(name) else None for name in fields]
    obj.done()
    return config.MaxStreamDuration(*given)


def _weighted(weighted: envoyjson.Message) -> tuple[tuple[config.WeightedCluster, ...], str]:
    """weighted_clusters: the clusters with their weights, and header_name."""
    entries: list[config.WeightedCluster] = []
    for item, wpath in weighted.items("clusters"):
        w = envoyjson.Message(item, wpath)
        wname = w.need_text("name")
        entries.append(config.WeightedCluster(wname, w.uint("weight", 0)))
        w.done()
    if not entries:
        raise envoyjson.error(weighted.at("clusters"), "needs at least one cluster")
    total = sum(e.weight for e in entries)
    declared = weighted.uint("total_weight", total)
    if declared != total or total == 0:
        raise envoyjson.error(
            weighted.at("total_weight"), f"the weights add up to {total}; total_weight says {declared}"
        )
    header = weighted.text("header_name")
    weighted.done()
    return tuple(entries), header


def _route_match(obj: envoyjson.Message) -> config.RouteMatch:
    given = [k for k in ("prefix", "path", "safe_regex") if obj.has(k)]
    if len(given) != 1:
        raise envoyjson.error(obj.path, "needs exactly one of prefix, path, safe_regex")
    prefix = obj.text("prefix") if obj.has("prefix") else None
    path = obj.text("path") if obj.has("path") else None
    regex = _regex(obj.need("safe_regex")) if obj.has("safe_regex") else None
    headers = tuple(_header_match(h, hpath) for h, hpath in obj.items("headers"))
    case_sensitive = obj.flag("case_sensitive", True)
    obj.done()
    return config.RouteMatch(prefix=prefix, path=path, regex=regex, case_sensitive=case_sensitive, headers=headers)


def _regex(obj: envoyjson.Message) -> str:
    """A RegexMatcher (RE2; Python's re compiles the common subset the agent accepts)."""
    pattern = obj.text("regex")
    engine = obj.obj("google_re2")
    if engine is not None:
        engine.uint("max_program_size", 0)
        engine.done()
    obj.done()
    try:
        re.compile(pattern)
    except re.error as exc:
        raise envoyjson.error(obj.at("regex"), f"{pattern!r} does not compile: {exc}") from None
    return pattern


def _header_match(raw: Any, path: str) -> config.HeaderMatch:
    obj = envoyjson.Message(raw, path)
    name = obj.need_text("name").lower()
    invert = obj.flag("invert_match", False)
    kinds = [k for k in ("exact_match", "prefix_match", "suffix_match", "contains_match", "safe_regex_match",
                         "present_match", "string_match") if obj.has(k)]  # fmt: skip
    if len(kinds) > 1:
        raise envoyjson.error(path, f"give one matcher, got {', '.join(kinds)}")
    kind = kinds[0] if kinds else "present_match"
    match: config.HeaderMatch
    if kind == "string_match":
        sm = obj.need("string_match")
        which = [k for k in ("exact", "prefix", "suffix", "contains", "safe_regex") if sm.has(k)]
        if len(which) != 1:
            raise envoyjson.error(sm.path, "needs exactly one of exact, prefix, suffix, contains, safe_regex")
        ignore_case = sm.flag("ignore_case", False)
        if which[0] == "safe_regex":
            match = config.HeaderMatch(name, "regex", _regex(sm.need("safe_regex")), invert, ignore_case)
        else:
            match = config.HeaderMatch(name, which[0], sm.text(which[0]), invert, ignore_case)
        sm.done()
    elif kind == "safe_regex_match":
        match = config.HeaderMatch(name, "regex", _regex(obj.need("safe_regex_match")), invert)
    elif kind == "present_match":
        match = config.HeaderMatch(name, "present", invert=invert, present=obj.flag("present_match", True))
    else:
        match = config.HeaderMatch(name, kind.removesuffix("_match"), obj.text(kind), invert)
    obj.done()
    return match
