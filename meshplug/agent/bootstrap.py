"""Envoy's own configuration as the agent's input: the subset of a v3 static bootstrap wasm deployments use.

Called by `meshplug agent --envoy-config FILE` and `meshplug run --envoy-config FILE` (meshplug.commands);
produces the same frozen `meshplug.agent.config.AgentConfig` as the agent's native format, so everything
after it is shared. YAML or JSON, with Envoy's field names (snake_case or the lowerCamelCase JSON names),
defaults and enum spellings (case-insensitive, as Envoy parses them). This module reads the bootstrap's
frame -- node, admin, clusters, listeners --; the pieces it holds are read by their own modules:

* `envoyjson`: the message reader all of them use (field paths, Envoy's JSON mapping, Any / TypedStruct,
  DataSource; refuses what is not taken).
* `envoyroutes`: an http_connection_manager's inline `route_config`.
* `envoywasm`: wasm filters (HTTP and network), Lua filters and `envoy.bootstrap.wasm` services.

What is read here:

* `static_resources.listeners[]`: `name`, `address.socket_address`, `traffic_direction`, `metadata`, one
  `filter_chains[]` entry (`name`, no `filter_chain_match`, a `transport_socket` DownstreamTlsContext with one
  certificate from files) holding either
  - `envoy.filters.network.http_connection_manager` (`stat_prefix`, `codec_type` AUTO/HTTP1,
    `generate_request_id`, `server_header_transformation` (OVERWRITE, the default, APPEND_IF_ABSENT,
    PASS_THROUGH) with `server_name` (default "envoy"), `http_protocol_options` (`enable_trailers`,
    `accept_http_10`), `request_timeout`, `request_headers_timeout`, `stream_idle_timeout`,
    `common_http_protocol_options` (`idle_timeout`, `max_connection_duration`, `max_stream_duration`) -- one set
    of these for all
    listeners, Envoy's defaults --, `upgrade_configs`, an inline `route_config`
    (meshplug.agent.envoyroutes) and `http_filters`: any number of `envoy.filters.http.wasm` and
    `envoy.filters.http.lua` (inline code), then the router (`suppress_envoy_headers`); or
  - any number of `envoy.filters.network.wasm`, then `envoy.filters.network.tcp_proxy` (`cluster`).
* `static_resources.clusters[]`: `name`, `type` STATIC / STRICT_DNS / LOGICAL_DNS, `connect_timeout`,
  `lb_policy` ROUND_ROBIN, `load_assignment` endpoints, `metadata`, `dns_lookup_family`, the protocol
  (`typed_extension_protocol_options` HttpProtocolOptions `explicit_http_config` with http2_protocol_options
  or http_protocol_options `enable_trailers`; the legacy http2_protocol_options / http_protocol_options).
* `bootstrap_extensions[]` `envoy.bootstrap.wasm` (WasmService): singleton plugins (meshplug.agent.envoywasm).
* `admin` (`address`, `access_log_path`), `node` (`id`, `cluster`, `metadata`); `stats_flush_interval` and
  `stats_flush_on_admin` are accepted and change nothing (the agent's /stats always shows current values, as
  Envoy's does with stats_flush_on_admin).

Everything else is refused with its field path and a one-line reason (a ConfigError), never ignored. Two
legacy forms the seeds use are accepted with a warning, though Envoy 1.40 refuses them: a filter with an empty
`typed_config` named by its well-known name (the router of a Go filter tutorial's envoy.yaml), and a plugin
`configuration` given as a plain string (envoy-wasm's v2 form, in wasme's path_rewrite example).

Relative file names are relative to the working directory, as Envoy reads them. Inline module code
(inline_bytes / inline_string) is written once to a content-addressed file under the module cache.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meshplug import limits, protocol
from meshplug.agent import config, envoyjson, envoyroutes, envoywasm, metadata

log = logging.getLogger("meshplug.agent.bootstrap")

#: the HCM's server_name default
ENVOY_SERVER_NAME = "envoy"
_DIRECTIONS = {"UNSPECIFIED": "UNSPECIFIED", "INBOUND": "INBOUND", "OUTBOUND": "OUTBOUND"}
_DISCOVERY = {"STATIC": "STATIC", "STRICT_DNS": "STRICT_DNS", "LOGICAL_DNS": "LOGICAL_DNS"}


# --- the bootstrap ---------------------------------------------------------------------------------
def parse(raw: Any, *, inline_dir: Path | None = None) -> config.AgentConfig:
    """A loaded bootstrap (YAML/JSON document) as the agent's config. Raises ConfigError naming the field."""
    ctx = envoyjson.Read(inline_dir=inline_dir or _default_inline_dir(), warnings=[])
    top = envoyjson.Message(raw, "")
    node = _node(top.obj("node"))
    admin, access_log = _admin(top.obj("admin"))
    static = top.obj("static_resources")
    if static is None:
        raise envoyjson.error("static_resources", "is required (listeners and clusters)")
    clusters = tuple(_cluster(item, path) for item, path in static.items("clusters"))
    names = [c.name for c in clusters]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise envoyjson.error(f"static_resources.clusters[{i}].name", f"duplicate cluster name {name!r}")
    listeners: list[config.Listener] = []
    plugins: list[protocol.ExtensionConfig] = []
    for item, path in static.items("listeners"):
        listener, filters = _listener(item, path, len(listeners), ctx, set(names))
        if any(lst.name == listener.name for lst in listeners):
            raise envoyjson.error(f"{path}.name", f"duplicate listener name {listener.name!r}")
        listeners.append(listener)
        plugins += filters
    if not listeners:
        raise envoyjson.error("static_resources.listeners", "needs at least one listener")
    static.done()
    singletons = tuple(envoywasm.wasm_service(item, path, ctx) for item, path in top.items("bootstrap_extensions"))
    # the agent's admin endpoints read live values: Envoy's stats flush settings change nothing it shows
    top.duration("stats_flush_interval", 5.0)
    top.flag("stats_flush_on_admin", False)
    top.done()
    for warning in ctx.warnings:
        log.warning("envoy bootstrap: %s", warning)
    roots = {Path(urllib.parse.unquote(urllib.parse.urlsplit(p.url).path)).parent for p in (*plugins, *singletons)}
    return config.AgentConfig(
        http=ctx.http1[0] if ctx.http1 is not None else config.HttpOptions(),
        listeners=tuple(listeners),
        clusters=clusters,
        admin=admin,
        plugins=tuple(plugins),
        modules=config.Modules(file_roots=tuple(sorted(r for r in roots if str(r) not in ("", ".")))),
        node=node,
        singletons=singletons,
        admin_access_log=access_log,
        source="envoy",
    )


def load(path: Path, *, environ: Mapping[str, str] | None = None) -> config.AgentConfig:
    """Read an Envoy bootstrap file (YAML or JSON); the node is completed from the environment like the
    native format's (config.node_from_env)."""
    return config.load_with(path, "Envoy bootstrap", parse, environ)


def _default_inline_dir() -> Path:
    base = Path(os.environ.get("MESHPLUG_CACHE", Path.home() / ".cache" / "meshplug"))
    return base / "modules" / "inline"


def _node(obj: envoyjson.Message | None) -> config.Node:
    if obj is None:
        return config.Node()
    meta = obj.raw("metadata")
    fields = metadata.struct_from_json(meta, obj.at("metadata")).fields if meta is not None else ()
    node = config.Node(id=obj.text("id"), cluster=obj.text("cluster"), metadata=fields)
    obj.done()
    return node


def _socket_address(obj: envoyjson.Message, *, default_port: int | None = None) -> config.Endpoint:
    """An envoy.config.core.v3.Address holding a socket_address."""
    sock = obj.obj("socket_address")
    if sock is None:
        raise envoyjson.error(obj.at("socket_address"), "is required (pipe and internal addresses are not supported)")
    address = sock.need_text("address")
    sock.enum("protocol", {"TCP": "TCP"}, "TCP")
    port = sock.uint("port_value", -1 if default_port is None else default_port, high=65535)
    if port < 0:
        raise envoyjson.error(sock.at("port_value"), "is required (named ports are not supported)")
    sock.done()
    obj.done()
    return config.Endpoint(address=address, port=port)


def _admin(obj: envoyjson.Message | None) -> tuple[config.Endpoint, Path | None]:
    if obj is None:
        return config.Endpoint("127.0.0.1", 0), None
    address = obj.obj("address")
    endpoint = _socket_address(address) if address is not None else config.Endpoint("127.0.0.1", 0)
    log_path = obj.text("access_log_path")
    obj.done()
    return endpoint, Path(log_path) if log_path else None


def _cluster(raw: Any, path: str) -> config.Cluster:
    obj = envoyjson.Message(raw, path)
    name = obj.need_text("name")
    discovery = obj.enum("type", _DISCOVERY, "STATIC")
    connect = obj.duration("connect_timeout", limits.UPSTREAM_CONNECT_TIMEOUT_S)
    obj.enum("lb_policy", {"ROUND_ROBIN": "ROUND_ROBIN"}, "ROUND_ROBIN")
    obj.enum("dns_lookup_family", {"AUTO": "AUTO", "V4_ONLY": "V4_ONLY", "V4_PREFERRED": "V4_PREFERRED"}, "AUTO")
    meta = metadata.metadata_from_json(obj.raw("metadata"), obj.at("metadata"))
    http2, trailers = _cluster_protocol(obj)
    endpoints: list[config.Endpoint] = []
    la = obj.obj("load_assignment")
    if la is not None:
        la.text("cluster_name")
        for item, epath in la.items("endpoints"):
            group = envoyjson.Message(item, epath)
            for lb_raw, lbpath in group.items("lb_endpoints"):
                lb = envoyjson.Message(lb_raw, lbpath)
                ep = lb.need("endpoint")
                endpoints.append(_socket_address(ep.need("address")))
                ep.done()
                lb.done()
            group.done()
        la.done()
    obj.done()
    if not endpoints:
        raise envoyjson.error(obj.at("load_assignment"), "needs at least one endpoint")
    if discovery == "STATIC":
        for i, endpoint in enumerate(endpoints):
            if not _is_ip(endpoint.address):
                reason = f"endpoint {i}: {endpoint.address!r} is not an IP address (a STATIC cluster's must be)"
                raise envoyjson.error(obj.at("load_assignment"), reason)
    if discovery == "LOGICAL_DNS" and len(endpoints) != 1:
        raise envoyjson.error(obj.at("load_assignment"), "LOGICAL_DNS clusters have exactly one endpoint")
    first = endpoints[0]
    return config.Cluster(
        name=name,
        address=first.address,
        port=first.port,
        connect_timeout_s=connect if connect > 0 else limits.UPSTREAM_CONNECT_TIMEOUT_S,
        endpoints=tuple(endpoints),
        discovery=discovery,
        metadata=meta,
        http2=http2,
        enable_trailers=trailers,
    )


def _h1_trailers(h1: envoyjson.Message) -> bool:
    """An upstream HTTP/1 codec's options (Http1ProtocolOptions): enable_trailers."""
    trailers = h1.flag("enable_trailers", False)
    h1.done()
    return trailers


def _cluster_protocol(obj: envoyjson.Message) -> tuple[bool, bool]:
    """(whether the cluster speaks HTTP/2 -- h2c with prior knowledge --, whether its HTTP/1.1 carries
    trailers): typed_extension_protocol_options' HttpProtocolOptions.explicit_http_config
    http2_protocol_options / http_protocol_options.enable_trailers, or the legacy cluster fields
    http2_protocol_options / http_protocol_options."""
    http2 = False
    trailers = False
    legacy = obj.obj("http2_protocol_options")
    if legacy is not None:
        legacy.done()  # its settings (window sizes, ...) are the agent's own
        http2 = True
    legacy_h1 = obj.obj("http_protocol_options")
    if legacy_h1 is not None:
        trailers = _h1_trailers(legacy_h1)
    options = obj.raw("typed_extension_protocol_options")
    if options is None:
        return http2, trailers
    path = obj.at("typed_extension_protocol_options")
    if not isinstance(options, dict):
        raise envoyjson.error(path, f"must be a mapping, got {envoyjson.type_name(options)}")
    for key in options:
        if key != envoyjson.HTTP_PROTOCOL_OPTIONS:
            raise envoyjson.error(f"{path}.{key}", f"only {envoyjson.HTTP_PROTOCOL_OPTIONS} is supported")
        holder = envoyjson.Message({"value": options[key]}, path)
        kind, body = envoyjson.typed(holder, "value")
        if kind != envoyjson.HTTP_PROTOCOL_OPTIONS:
            raise envoyjson.error(f"{path}.{key}.@type", f"{kind}: expected {envoyjson.HTTP_PROTOCOL_OPTIONS}")
        explicit = body.obj("explicit_http_config")
        if explicit is None:
            raise envoyjson.error(
                body.at("explicit_http_config"), "is required (the agent does not auto-detect the protocol)"
            )
        h2 = explicit.obj("http2_protocol_options")
        h1 = explicit.obj("http_protocol_options")
        if h2 is not None:
            h2.done()
            http2 = True
        elif h1 is not None:
            trailers = _h1_trailers(h1)
        else:
            raise envoyjson.error(explicit.path, "needs http_protocol_options or http2_protocol_options")
        explicit.done()
        body.done()
    return http2, trailers


def _is_ip(address: str) -> bool:
    import ipaddress  # noqa: PLC0415 -- only while reading a bootstrap

    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


# --- listeners -------------------------------------------------------------------------------------
def _listener(
    raw: Any, path: str, index: int, ctx: envoyjson.Read, clusters: set[str]
) -> tuple[config.Listener, list[protocol.ExtensionConfig]]:
    obj = envoyjson.Message(raw, path)
    name = obj.text("name") or f"listener_{index}"
    endpoint = _socket_address(obj.need("address"))
    direction = obj.enum("traffic_direction", _DIRECTIONS, "UNSPECIFIED")
    meta = metadata.metadata_from_json(obj.raw("metadata"), obj.at("metadata"))
    stat_prefix = obj.text("stat_prefix")
    chains = obj.items("filter_chains")
    tls: config.ListenerTls | None = None
    if len(chains) != 1:
        raise envoyjson.error(obj.at("filter_chains"), f"needs exactly one filter chain, got {len(chains)}")
    chain = envoyjson.Message(*chains[0])
    chain_name = chain.text("name")
    filters = chain.items("filters")
    socket = chain.obj("transport_socket")
    if socket is not None:
        tls = _downstream_tls(socket)
    chain.done()
    obj.done()
    if not filters:
        raise envoyjson.error(chain.at("filters"), "needs at least one filter")
    base = config.Listener(
        name=name,
        address=endpoint.address,
        port=endpoint.port,
        cluster="",
        direction=direction,
        metadata=meta,
        filter_chain_name=chain_name,
        stat_prefix=stat_prefix,
        tls=tls,
    )
    last_raw, last_path = filters[-1]
    last = envoyjson.Message(last_raw, last_path)
    kind, _ = envoyjson.typed(last, "typed_config", legacy_name=last.text("name"))
    if kind == envoyjson.HCM and len(filters) == 1:
        return _http_listener(base, filters[0], ctx, clusters)
    if kind == envoyjson.TCP_PROXY:
        return _tcp_listener(base, filters, ctx, clusters)
    if kind == envoyjson.HCM:
        raise envoyjson.error(filters[0][1], "network filters before http_connection_manager are not supported")
    raise envoyjson.error(f"{last_path}.typed_config", f"{kind}: the last network filter must be "
                 "http_connection_manager or tcp_proxy")  # fmt: skip


def _downstream_tls(socket: envoyjson.Message) -> config.ListenerTls:
    """A filter chain's transport_socket: envoy.transport_sockets.tls with a DownstreamTlsContext holding one
    certificate chain and key from files (ALPN h2, http/1.1 as the agent serves)."""
    socket.text("name")
    kind, ctx = envoyjson.typed(socket, "typed_config")
    socket.done()
    if kind != envoyjson.DOWNSTREAM_TLS:
        raise envoyjson.error(socket.at("typed_config"), f"{kind}: only a DownstreamTlsContext is supported")
    common = ctx.need("common_tls_context")
    certs = common.items("tls_certificates")
    if len(certs) != 1:
        raise envoyjson.error(common.at("tls_certificates"), "needs exactly one certificate")
    cert = envoyjson.Message(*certs[0])
    chain_src = cert.need("certificate_chain")
    key_src = cert.need("private_key")
    cert_file, key_file = chain_src.text("filename"), key_src.text("filename")
    if not cert_file or not key_file:
        raise envoyjson.error(cert.path, "certificate_chain and private_key must be files (filename)")
    chain_src.done()
    key_src.done()
    cert.done()
    for proto, ppath in common.items("alpn_protocols"):
        if proto not in ("h2", "http/1.1"):
            raise envoyjson.error(ppath, f"{proto!r}: the agent offers h2 and http/1.1")
    common.done()
    ctx.done()
    return config.ListenerTls(cert_file=Path(cert_file).absolute(), key_file=Path(key_file).absolute())


def _upgrade_types(hcm: envoyjson.Message) -> tuple[str, ...]:
    """hcm upgrade_configs: the Upgrade protocols passed through (enabled unless `enabled: false`)."""
    out: list[str] = []
    for raw, path in hcm.items("upgrade_configs"):
        uc = envoyjson.Message(raw, path)
        kind = uc.need_text("upgrade_type").lower()
        if uc.flag("enabled", True):
            out.append(kind)
        uc.done()
    return tuple(out)


def _http_listener(
    base: config.Listener, item: tuple[Any, str], ctx: envoyjson.Read, clusters: set[str]
) -> tuple[config.Listener, list[protocol.ExtensionConfig]]:
    f = envoyjson.Message(*item)
    f.text("name")
    _, hcm = envoyjson.typed(f, "typed_config")
    f.done()
    stat_prefix = hcm.need_text("stat_prefix", "is required (Envoy refuses an empty stat_prefix)")
    hcm.enum("codec_type", {"AUTO": "AUTO", "HTTP1": "HTTP1", "HTTP2": "HTTP2"}, "AUTO")
    request_ids = hcm.flag("generate_request_id", True)
    server_header = hcm.enum(
        "server_header_transformation", {t: t for t in config.SERVER_HEADER_TRANSFORMATIONS}, "OVERWRITE"
    )
    server_name = hcm.text("server_name") or ENVOY_SERVER_NAME
    _http_options(hcm, ctx)
    upgrade_types = _upgrade_types(hcm)
    if hcm.has("rds"):
        raise envoyjson.error(hcm.at("rds"), envoyjson.REASONS["rds"])
    routes = envoyroutes.route_config(hcm.need("route_config"), clusters)
    plugins: list[protocol.ExtensionConfig] = []
    suppress = False
    http_filters = hcm.items("http_filters")
    if not http_filters:
        raise envoyjson.error(hcm.at("http_filters"), "needs the router (envoy.filters.http.router) last")
    for i, (raw, path) in enumerate(http_filters):
        hf = envoyjson.Message(raw, path)
        fname = hf.text("name")
        kind, body = envoyjson.typed(hf, "typed_config", legacy_name=fname)
        if kind == envoyjson.ROUTER:
            if i != len(http_filters) - 1:
                raise envoyjson.error(path, "the router must be the last HTTP filter")
            if not hf.has("typed_config") or hf.fields.get("typed_config") == {}:
                ctx.warnings.append(
                    f"{hf.at('typed_config')}: an empty typed_config for the router (Envoy 1.40 refuses it: "
                    "\"Didn't find a registered implementation ... with type URL: ''\"); read as the router"
                )
            suppress = body.flag("suppress_envoy_headers", False)
            body.done()
        elif kind == envoyjson.HTTP_WASM:
            plugins.append(envoywasm.wasm_filter(body, ctx, base.name, protocol.PluginType.HTTP))
        elif kind == envoyjson.LUA:
            plugins.append(envoywasm.lua_filter(body, fname or f"lua.{i}", base.name))
        else:
            raise envoyjson.error(
                f"{hf.at('typed_config')}", f"{kind}: only wasm, lua and router HTTP filters are supported"
            )
        if hf.raw("disabled"):
            raise envoyjson.error(hf.at("disabled"), "disabled filters are not supported")
        hf.done()
        if i == len(http_filters) - 1 and kind != envoyjson.ROUTER:
            raise envoyjson.error(path, "the last HTTP filter must be the router (envoy.filters.http.router)")
    hcm.done()
    listener = dataclasses.replace(
        base,
        type="http",
        routes=routes,
        stat_prefix=stat_prefix,
        generate_request_id=request_ids,
        upgrade_types=upgrade_types,
        server_header_transformation=server_header,
        server_name=server_name,
        suppress_envoy_headers=suppress,
    )
    return listener, plugins


#: the agent's HttpOptions an hcm sets, and the hcm field each comes from
_HTTP_FIELDS = {
    "enable_trailers": "http_protocol_options",
    "accept_http_10": "http_protocol_options",
    "request_timeout_s": "request_timeout",
    "request_headers_timeout_s": "request_headers_timeout",
    "stream_idle_timeout_s": "stream_idle_timeout",
    "idle_timeout_s": "common_http_protocol_options",
    "max_connection_duration_s": "common_http_protocol_options",
    "max_stream_duration_s": "common_http_protocol_options",
}


def _http_options(hcm: envoyjson.Message, ctx: envoyjson.Read) -> None:
    """The hcm's HTTP options the agent keeps one set of for all listeners, so listeners that differ are refused:
    http_protocol_options (its HTTP/1 codec: enable_trailers, accept_http_10), the request timeouts
    (request_timeout, request_headers_timeout, stream_idle_timeout) and common_http_protocol_options
    (idle_timeout, max_connection_duration, max_stream_duration), with Envoy's defaults (a 0 duration is off)."""
    options = config.HttpOptions(
        request_timeout_s=hcm.duration("request_timeout", limits.REQUEST_TIMEOUT_S),
        request_headers_timeout_s=hcm.duration("request_headers_timeout", limits.REQUEST_HEADERS_TIMEOUT_S),
        stream_idle_timeout_s=hcm.duration("stream_idle_timeout", limits.STREAM_IDLE_TIMEOUT_S),
        idle_timeout_s=limits.HCM_IDLE_TIMEOUT_S,
    )
    h1 = hcm.obj("http_protocol_options")
    if h1 is not None:
        options = dataclasses.replace(
            options,
            enable_trailers=h1.flag("enable_trailers", False),
            accept_http_10=h1.flag("accept_http_10", False),
        )
        h1.done()
    common = hcm.obj("common_http_protocol_options")
    if common is not None:
        options = dataclasses.replace(
            options,
            idle_timeout_s=common.duration("idle_timeout", limits.HCM_IDLE_TIMEOUT_S),
            max_connection_duration_s=common.duration("max_connection_duration", limits.MAX_CONNECTION_DURATION_S),
            max_stream_duration_s=common.duration("max_stream_duration", limits.MAX_STREAM_DURATION_S),
        )
        common.done()
    if ctx.http1 is None:
        ctx.http1 = (options, hcm.path)
        return
    first, first_path = ctx.http1
    for name, field in _HTTP_FIELDS.items():
        if getattr(options, name) != getattr(first, name):
            reason = f"differs from {first_path}.{field} (the agent applies one set of HTTP/1 options to all listeners)"
            raise envoyjson.error(hcm.at(field), reason)


def _tcp_listener(
    base: config.Listener, filters: Sequence[tuple[Any, str]], ctx: envoyjson.Read, clusters: set[str]
) -> tuple[config.Listener, list[protocol.ExtensionConfig]]:
    plugins: list[protocol.ExtensionConfig] = []
    cluster = ""
    stat_prefix = ""
    for i, (raw, path) in enumerate(filters):
        f = envoyjson.Message(raw, path)
        f.text("name")
        kind, body = envoyjson.typed(f, "typed_config")
        f.done()
        if kind == envoyjson.NETWORK_WASM:
            plugins.append(envoywasm.wasm_filter(body, ctx, base.name, protocol.PluginType.NETWORK))
        elif kind == envoyjson.TCP_PROXY and i == len(filters) - 1:
            stat_prefix = body.need_text("stat_prefix")
            cluster = body.need_text("cluster", "is required (weighted tcp_proxy clusters are not supported)")
            if cluster not in clusters:
                raise envoyjson.error(body.at("cluster"), f"unknown cluster {cluster!r}")
            body.done()
        else:
            raise envoyjson.error(
                f"{path}.typed_config", f"{kind}: only wasm network filters, then tcp_proxy, are supported"
            )
    listener = dataclasses.replace(base, type="tcp", cluster=cluster, stat_prefix=stat_prefix)
    return listener, plugins
