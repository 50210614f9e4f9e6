"""Envoy's own configuration as the agent's input: the subset of a v3 static bootstrap wasm deployments use.

Called by `meshplug agent --envoy-config FILE` and `meshplug run --envoy-config FILE` (meshplug.commands);
produces the same frozen `meshplug.agent.config.AgentConfig` as the agent's native format, so everything
after it is shared. YAML or JSON, with Envoy's field names (snake_case or the lowerCamelCase JSON names),
defaults and enum spellings (case-insensitive, as Envoy parses them). What is read:

* `static_resources.listeners[]`: `name`, `address.socket_address`, `traffic_direction`, `metadata`, one
  `filter_chains[]` entry (`name`, no `filter_chain_match`) holding either
  - `envoy.filters.network.http_connection_manager` (`stat_prefix`, `codec_type` AUTO/HTTP1,
    `generate_request_id`, `server_header_transformation` PASS_THROUGH (what the agent does, also when the
    field is absent: Envoy's default OVERWRITE is not done), `http_protocol_options` (`enable_trailers`,
    `accept_http_10`: one set for all listeners), an inline `route_config`: `virtual_hosts[]` with `name`,
    `domains`, `metadata` and `routes[]` -- `match` by `prefix` / `path` / `safe_regex` (+ `case_sensitive`, `headers[]`
    matchers), then `route` (`cluster` or `weighted_clusters` with `header_name`, `prefix_rewrite`,
    `timeout`) or `direct_response`, route `name` and `metadata`) and `http_filters`: any number of
    `envoy.filters.http.wasm` and `envoy.filters.http.lua` (inline code), then the router; or
  - any number of `envoy.filters.network.wasm`, then `envoy.filters.network.tcp_proxy` (`cluster`).
* `static_resources.clusters[]`: `name`, `type` STATIC / STRICT_DNS / LOGICAL_DNS, `connect_timeout`,
  `lb_policy` ROUND_ROBIN, `load_assignment` endpoints, `metadata`, `dns_lookup_family`, the protocol
  (`typed_extension_protocol_options` HttpProtocolOptions `explicit_http_config` with http2_protocol_options
  or http_protocol_options `enable_trailers`; the legacy http2_protocol_options / http_protocol_options).
* `bootstrap_extensions[]` `envoy.bootstrap.wasm` (WasmService): singleton plugins.
* `admin` (`address`, `access_log_path`), `node` (`id`, `cluster`, `metadata`); `stats_flush_interval` and
  `stats_flush_on_admin` are accepted and change nothing (the agent's /stats always shows current values, as
  Envoy's does with stats_flush_on_admin).

A wasm filter's whole PluginConfig is read: `name`, `root_id`, `vm_config` (`vm_id`, `runtime` -- v8,
wasmtime, wamr, wavm or null, all run on wasmtime --, `code.local` filename / inline_bytes / inline_string,
`code.remote` http_uri + sha256, `configuration`, `allow_precompiled`, `environment_variables` key_values and
host_env_keys), `configuration`, `fail_open` / `failure_policy`. A configuration (or VM configuration) reaches
the plugin as Envoy hands it over: a StringValue's string, a BytesValue's bytes, any other message (a Struct)
as its serialized protobuf. Typed configs may be wrapped in `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct`.

Everything else is refused with its field path and a one-line reason (a ConfigError), never ignored. Two
legacy forms the seeds use are accepted with a warning, though Envoy 1.40 refuses them: a filter with an empty
`typed_config` named by its well-known name (the router of a Go filter tutorial's envoy.yaml), and a plugin
`configuration` given as a plain string (envoy-wasm's v2 form, in wasme's path_rewrite example).

Relative file names are relative to the working directory, as Envoy reads them. Inline module code
(inline_bytes / inline_string) is written once to a content-addressed file under the module cache.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshplug import errors, files, limits, protocol
from meshplug.agent import config, metadata

log = logging.getLogger("meshplug.agent.bootstrap")

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_WASM = "envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM = "envoy.extensions.filters.network.wasm.v3.Wasm"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
LUA = "envoy.extensions.filters.http.lua.v3.Lua"
WASM_SERVICE = "envoy.extensions.wasm.v3.WasmService"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DOWNSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")
STRING_VALUE = "google.protobuf.StringValue"
BYTES_VALUE = "google.protobuf.BytesValue"
STRUCT = "google.protobuf.Struct"
#: filters Envoy once found by name alone (an empty typed_config); Envoy 1.40 refuses that
_LEGACY_NAMES = {"envoy.filters.http.router": ROUTER, "envoy.router": ROUTER}
#: wasm runtimes Envoy names; the agent runs every module on wasmtime
RUNTIMES = frozenset(
    {
        "",
        "envoy.wasm.runtime.v8",
        "envoy.wasm.runtime.wasmtime",
        "envoy.wasm.runtime.wamr",
        "envoy.wasm.runtime.wavm",
        "envoy.wasm.runtime.null",
    }
)
_FAILURE_POLICIES = {
    "FAIL_UNSPECIFIED": protocol.FailStrategy.FAIL_CLOSE,
    "FAIL_CLOSED": protocol.FailStrategy.FAIL_CLOSE,
    "FAIL_OPEN": protocol.FailStrategy.FAIL_OPEN,
    "FAIL_RELOAD": protocol.FailStrategy.FAIL_RELOAD,
}
_DIRECTIONS = {"UNSPECIFIED": "UNSPECIFIED", "INBOUND": "INBOUND", "OUTBOUND": "OUTBOUND"}
_DISCOVERY = {"STATIC": "STATIC", "STRICT_DNS": "STRICT_DNS", "LOGICAL_DNS": "LOGICAL_DNS"}
_DURATION = re.compile(r"^(-?\d+)(\.\d{1,9})?s$")
_CAMEL = re.compile(r"(?<!^)([A-Z])")

#: why notable fields outside the subset are refused (anything else: "not supported")
_REASONS = {
    "dynamic_resources": "dynamic resources (xDS) need a management server; the agent reads static resources",
    "rds": "routes from RDS need a management server; give an inline route_config",
    "access_log": "access logs are not written by the agent",
    "listener_filters": "listener filters are not supported",
    "filter_chain_match": "filter chain matching is not supported (one filter chain per listener)",
    "transport_socket": "only a listener's DownstreamTlsContext with one certificate (files) is supported",
    "typed_per_filter_config": "per-route filter configuration is not supported",
    "request_headers_to_add": "header manipulation in routes is not supported",
    "response_headers_to_add": "header manipulation in routes is not supported",
    "request_headers_to_remove": "header manipulation in routes is not supported",
    "response_headers_to_remove": "header manipulation in routes is not supported",
    "redirect": "redirect routes are not supported (route or direct_response only)",
    "retry_policy": "retries are not supported",
    "health_checks": "active health checks are not supported",
    "circuit_breakers": "circuit breakers are not supported",
    "layered_runtime": "the runtime is not supported",
    "stats_sinks": "stats sinks are not supported (read the admin /stats endpoints)",
    "tracing": "tracing is not supported",
    "config": "the v2 `config` Struct was removed in Envoy v3: use typed_config",
    "capability_restriction_config": "capability restrictions are not supported",
}


@dataclass
class _Context:
    """State of one read: the inline-module directory and what needs a warning."""

    inline_dir: Path
    warnings: list[str]
    #: the first HTTP listener's hcm http_protocol_options (the agent has one set for every listener) and where
    http1: tuple[config.HttpOptions, str] | None = None


class _Obj:
    """A message being read at `path`: fields are taken one by one (either spelling); `done()` refuses what
    was not taken."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise _error(path, f"must be a mapping, got {_type_name(raw)}")
        self.path = path
        self.fields: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise _error(path, f"field {key!r} is not a string")
            name = key if key.startswith("@") else _CAMEL.sub(r"_\1", key).lower()
            if name in self.fields:
                raise _error(f"{path}.{name}", "given twice (snake_case and camelCase)")
            self.fields[name] = value
        self.taken: set[str] = set()

    def at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.fields.get(name) is not None

    def raw(self, name: str) -> Any:
        self.taken.add(name)
        return self.fields.get(name)

    def text(self, name: str, default: str = "") -> str:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise _error(self.at(name), f"must be a string, got {_type_name(value)}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, dict) and set(value) == {"value"}:  # google.protobuf.BoolValue
            value = value["value"]
        if not isinstance(value, bool):
            raise _error(self.at(name), f"must be a bool, got {_type_name(value)}")
        return value

    def uint(self, name: str, default: int, *, low: int = 0, high: int = 2**32 - 1) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, dict) and set(value) == {"value"}:  # google.protobuf.UInt32Value
            value = value["value"]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _error(self.at(name), f"must be an integer {low}..{high}, got {value!r}")
        return value

    def duration(self, name: str, default: float) -> float:
        """A google.protobuf.Duration ("1.5s" or {seconds, nanos}) in seconds."""
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, str):
            m = _DURATION.match(value.strip())
            if not m:
                raise _error(self.at(name), f'{value!r} is not a duration such as "5s" or "0.25s"')
            seconds = float(m.group(1) + (m.group(2) or ""))
        elif isinstance(value, dict):
            d = _Obj(value, self.at(name))
            seconds = d.uint("seconds", 0, high=315_576_000_000) + d.uint("nanos", 0, high=999_999_999) / 1e9
            d.done()
        else:
            raise _error(self.at(name), f"must be a duration, got {_type_name(value)}")
        if seconds < 0:
            raise _error(self.at(name), "must not be negative")
        return seconds

    def enum(self, name: str, values: Mapping[str, str], default: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise _error(self.at(name), f"must be an enum name, got {_type_name(value)}")
        key = value.upper()
        if key not in values:
            raise _error(self.at(name), f"{value!r} is not supported (one of {', '.join(sorted(values))})")
        return values[key]

    def obj(self, name: str) -> _Obj | None:
        value = self.raw(name)
        return None if value is None else _Obj(value, self.at(name))

    def need(self, name: str) -> _Obj:
        found = self.obj(name)
        if found is None:
            raise _error(self.at(name), "is required")
        return found

    def items(self, name: str) -> list[tuple[Any, str]]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise _error(self.at(name), f"must be a list, got {_type_name(value)}")
        return [(item, f"{self.at(name)}[{i}]") for i, item in enumerate(value)]

    def done(self) -> None:
        for name in sorted(set(self.fields) - self.taken):
            if name == "@type":
                continue
            reason = _REASONS.get(name, "not supported by the agent (outside the Envoy bootstrap subset it reads)")
            raise _error(self.at(name), reason)


def _error(path: str, reason: str) -> errors.ConfigError:
    return errors.ConfigError(f"envoy bootstrap: {path or '(top level)'}: {reason}", reason="unsupported_config")


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a bool", int: "a number"}.get(
        type(value), type(value).__name__
    )


def _type_url(value: str, path: str) -> str:
    """The message name of an Any's type URL ("type.googleapis.com/x.y.Z" -> "x.y.Z")."""
    if "/" not in value:
        raise _error(path, f"{value!r} is not a type URL (type.googleapis.com/<message>)")
    return value.rsplit("/", 1)[1]


def _typed(obj: _Obj, name: str, *, legacy_name: str = "") -> tuple[str, _Obj]:
    """A typed_config (google.protobuf.Any, maybe a TypedStruct): (message name, its fields)."""
    raw = obj.raw(name)
    path = obj.at(name)
    if raw is None or raw == {}:
        legacy = _LEGACY_NAMES.get(legacy_name)
        if legacy is not None:
            return legacy, _Obj({}, path)
        raise _error(path, "is required (an Any with @type)")
    body = _Obj(raw, path)
    url = body.text("@type")
    if not url:
        raise _error(body.at("@type"), "is required")
    kind = _type_url(url, body.at("@type"))
    if kind in TYPED_STRUCTS:
        inner_url = body.text("type_url")
        if not inner_url:
            raise _error(body.at("type_url"), "is required in a TypedStruct")
        value = body.raw("value")
        body.done()
        return _type_url(inner_url, body.at("type_url")), _Obj(value if value is not None else {}, body.at("value"))
    return kind, body


# --- the bootstrap ---------------------------------------------------------------------------------
def parse(raw: Any, *, inline_dir: Path | None = None) -> config.AgentConfig:
    """A loaded bootstrap (YAML/JSON document) as the agent's config. Raises ConfigError naming the field."""
    ctx = _Context(inline_dir=inline_dir or _default_inline_dir(), warnings=[])
    top = _Obj(raw, "")
    node = _node(top.obj("node"))
    admin, access_log = _admin(top.obj("admin"))
    static = top.obj("static_resources")
    if static is None:
        raise _error("static_resources", "is required (listeners and clusters)")
    clusters = tuple(_cluster(item, path) for item, path in static.items("clusters"))
    names = [c.name for c in clusters]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _error(f"static_resources.clusters[{i}].name", f"duplicate cluster name {name!r}")
    listeners: list[config.Listener] = []
    plugins: list[protocol.ExtensionConfig] = []
    for item, path in static.items("listeners"):
        listener, filters = _listener(item, path, len(listeners), ctx, set(names))
        if any(lst.name == listener.name for lst in listeners):
            raise _error(f"{path}.name", f"duplicate listener name {listener.name!r}")
        listeners.append(listener)
        plugins += filters
    if not listeners:
        raise _error("static_resources.listeners", "needs at least one listener")
    static.done()
    singletons = tuple(_extension(item, path, ctx) for item, path in top.items("bootstrap_extensions"))
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
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read Envoy bootstrap {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{path}: not valid YAML or JSON: {exc}") from None
    cfg = parse(raw)
    node = config.node_from_env(cfg.node, os.environ if environ is None else environ)
    return cfg if node == cfg.node else dataclasses.replace(cfg, node=node)


def _default_inline_dir() -> Path:
    base = Path(os.environ.get("MESHPLUG_CACHE", Path.home() / ".cache" / "meshplug"))
    return base / "modules" / "inline"


def _node(obj: _Obj | None) -> config.Node:
    if obj is None:
        return config.Node()
    meta = obj.raw("metadata")
    fields = metadata.struct_from_json(meta, obj.at("metadata")).fields if meta is not None else ()
    node = config.Node(id=obj.text("id"), cluster=obj.text("cluster"), metadata=fields)
    obj.done()
    return node


def _socket_address(obj: _Obj, *, default_port: int | None = None) -> config.Endpoint:
    """An envoy.config.core.v3.Address holding a socket_address."""
    sock = obj.obj("socket_address")
    if sock is None:
        raise _error(obj.at("socket_address"), "is required (pipe and internal addresses are not supported)")
    address = sock.text("address")
    if not address:
        raise _error(sock.at("address"), "is required")
    sock.enum("protocol", {"TCP": "TCP"}, "TCP")
    port = sock.uint("port_value", -1 if default_port is None else default_port, high=65535)
    if port < 0:
        raise _error(sock.at("port_value"), "is required (named ports are not supported)")
    sock.done()
    obj.done()
    return config.Endpoint(address=address, port=port)


def _admin(obj: _Obj | None) -> tuple[config.Endpoint, Path | None]:
    if obj is None:
        return config.Endpoint("127.0.0.1", 0), None
    address = obj.obj("address")
    endpoint = _socket_address(address) if address is not None else config.Endpoint("127.0.0.1", 0)
    log_path = obj.text("access_log_path")
    obj.done()
    return endpoint, Path(log_path) if log_path else None


def _cluster(raw: Any, path: str) -> config.Cluster:
    obj = _Obj(raw, path)
    name = obj.text("name")
    if not name:
        raise _error(obj.at("name"), "is required")
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
            group = _Obj(item, epath)
            for lb_raw, lbpath in group.items("lb_endpoints"):
                lb = _Obj(lb_raw, lbpath)
                ep = lb.need("endpoint")
                endpoints.append(_socket_address(ep.need("address")))
                ep.done()
                lb.done()
            group.done()
        la.done()
    obj.done()
    if not endpoints:
        raise _error(obj.at("load_assignment"), "needs at least one endpoint")
    if discovery == "STATIC":
        for i, endpoint in enumerate(endpoints):
            if not _is_ip(endpoint.address):
                reason = f"endpoint {i}: {endpoint.address!r} is not an IP address (a STATIC cluster's must be)"
                raise _error(obj.at("load_assignment"), reason)
    if discovery == "LOGICAL_DNS" and len(endpoints) != 1:
        raise _error(obj.at("load_assignment"), "LOGICAL_DNS clusters have exactly one endpoint")
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


def _h1_trailers(h1: _Obj) -> bool:
    """An upstream HTTP/1 codec's options (Http1ProtocolOptions): enable_trailers."""
    trailers = h1.flag("enable_trailers", False)
    h1.done()
    return trailers


def _cluster_protocol(obj: _Obj) -> tuple[bool, bool]:
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
        raise _error(path, f"must be a mapping, got {_type_name(options)}")
    for key in options:
        if key != HTTP_PROTOCOL_OPTIONS:
            raise _error(f"{path}.{key}", f"only {HTTP_PROTOCOL_OPTIONS} is supported")
        holder = _Obj({"value": options[key]}, path)
        kind, body = _typed(holder, "value")
        if kind != HTTP_PROTOCOL_OPTIONS:
            raise _error(f"{path}.{key}.@type", f"{kind}: expected {HTTP_PROTOCOL_OPTIONS}")
        explicit = body.obj("explicit_http_config")
        if explicit is None:
            raise _error(body.at("explicit_http_config"), "is required (the agent does not auto-detect the protocol)")
        h2 = explicit.obj("http2_protocol_options")
        h1 = explicit.obj("http_protocol_options")
        if h2 is not None:
            h2.done()
            http2 = True
        elif h1 is not None:
            trailers = _h1_trailers(h1)
        else:
            raise _error(explicit.path, "needs http_protocol_options or http2_protocol_options")
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
    raw: Any, path: str, index: int, ctx: _Context, clusters: set[str]
) -> tuple[config.Listener, list[protocol.ExtensionConfig]]:
    obj = _Obj(raw, path)
    name = obj.text("name") or f"listener_{index}"
    endpoint = _socket_address(obj.need("address"))
    direction = obj.enum("traffic_direction", _DIRECTIONS, "UNSPECIFIED")
    meta = metadata.metadata_from_json(obj.raw("metadata"), obj.at("metadata"))
    stat_prefix = obj.text("stat_prefix")
    chains = obj.items("filter_chains")
    tls: config.ListenerTls | None = None
    if len(chains) != 1:
        raise _error(obj.at("filter_chains"), f"needs exactly one filter chain, got {len(chains)}")
    chain = _Obj(*chains[0])
    chain_name = chain.text("name")
    filters = chain.items("filters")
    socket = chain.obj("transport_socket")
    if socket is not None:
        tls = _downstream_tls(socket)
    chain.done()
    obj.done()
    if not filters:
        raise _error(chain.at("filters"), "needs at least one filter")
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
    last = _Obj(last_raw, last_path)
    kind, _ = _typed(last, "typed_config", legacy_name=last.text("name"))
    if kind == HCM and len(filters) == 1:
        return _http_listener(base, filters[0], ctx, clusters)
    if kind == TCP_PROXY:
        return _tcp_listener(base, filters, ctx, clusters)
    if kind == HCM:
        raise _error(filters[0][1], "network filters before http_connection_manager are not supported")
    raise _error(f"{last_path}.typed_config", f"{kind}: the last network filter must be "
                 "http_connection_manager or tcp_proxy")  # fmt: skip


def _downstream_tls(socket: _Obj) -> config.ListenerTls:
    """A filter chain's transport_socket: envoy.transport_sockets.tls with a DownstreamTlsContext holding one
    certificate chain and key from files (ALPN h2, http/1.1 as the agent serves)."""
    socket.text("name")
    kind, ctx = _typed(socket, "typed_config")
    socket.done()
    if kind != DOWNSTREAM_TLS:
        raise _error(socket.at("typed_config"), f"{kind}: only a DownstreamTlsContext is supported")
    common = ctx.need("common_tls_context")
    certs = common.items("tls_certificates")
    if len(certs) != 1:
        raise _error(common.at("tls_certificates"), "needs exactly one certificate")
    cert = _Obj(*certs[0])
    chain_src = cert.need("certificate_chain")
    key_src = cert.need("private_key")
    cert_file, key_file = chain_src.text("filename"), key_src.text("filename")
    if not cert_file or not key_file:
        raise _error(cert.path, "certificate_chain and private_key must be files (filename)")
    chain_src.done()
    key_src.done()
    cert.done()
    for proto, ppath in common.items("alpn_protocols"):
        if proto not in ("h2", "http/1.1"):
            raise _error(ppath, f"{proto!r}: the agent offers h2 and http/1.1")
    common.done()
    ctx.done()
    return config.ListenerTls(cert_file=Path(cert_file).absolute(), key_file=Path(key_file).absolute())


def _upgrade_types(hcm: _Obj) -> tuple[str, ...]:
    """hcm upgrade_configs: the Upgrade protocols passed through (enabled unless `enabled: false`)."""
    out: list[str] = []
    for raw, path in hcm.items("upgrade_configs"):
        uc = _Obj(raw, path)
        kind = uc.text("upgrade_type").lower()
        if not kind:
            raise _error(uc.at("upgrade_type"), "is required")
        if uc.flag("enabled", True):
            out.append(kind)
        uc.done()
    return tuple(out)


def _http_listener(
    base: config.Listener, item: tuple[Any, str], ctx: _Context, clusters: set[str]
) -> tuple[config.Listener, list[protocol.ExtensionConfig]]:
    f = _Obj(*item)
    f.text("name")
    _, hcm = _typed(f, "typed_config")
    f.done()
    stat_prefix = hcm.text("stat_prefix")
    if not stat_prefix:
        raise _error(hcm.at("stat_prefix"), "is required (Envoy refuses an empty stat_prefix)")
    hcm.enum("codec_type", {"AUTO": "AUTO", "HTTP1": "HTTP1", "HTTP2": "HTTP2"}, "AUTO")
    request_ids = hcm.flag("generate_request_id", True)
    # the agent passes the upstream's server header through (Envoy's default, OVERWRITE with "envoy", is not done)
    hcm.enum("server_header_transformation", {"PASS_THROUGH": "PASS_THROUGH"}, "PASS_THROUGH")
    _http1_options(hcm, ctx)
    upgrade_types = _upgrade_types(hcm)
    if hcm.has("rds"):
        raise _error(hcm.at("rds"), _REASONS["rds"])
    routes = _route_config(hcm.need("route_config"), clusters)
    plugins: list[protocol.ExtensionConfig] = []
    http_filters = hcm.items("http_filters")
    if not http_filters:
        raise _error(hcm.at("http_filters"), "needs the router (envoy.filters.http.router) last")
    for i, (raw, path) in enumerate(http_filters):
        hf = _Obj(raw, path)
        fname = hf.text("name")
        kind, body = _typed(hf, "typed_config", legacy_name=fname)
        if kind == ROUTER:
            if i != len(http_filters) - 1:
                raise _error(path, "the router must be the last HTTP filter")
            if not hf.has("typed_config") or hf.fields.get("typed_config") == {}:
                ctx.warnings.append(
                    f"{hf.at('typed_config')}: an empty typed_config for the router (Envoy 1.40 refuses it: "
                    "\"Didn't find a registered implementation ... with type URL: ''\"); read as the router"
                )
            body.flag("suppress_envoy_headers", False)
            body.done()
        elif kind == HTTP_WASM:
            plugins.append(_wasm_filter(body, ctx, base.name, protocol.PluginType.HTTP))
        elif kind == LUA:
            plugins.append(_lua_filter(body, fname or f"lua.{i}", base.name))
        else:
            raise _error(f"{hf.at('typed_config')}", f"{kind}: only wasm, lua and router HTTP filters are supported")
        if hf.raw("disabled"):
            raise _error(hf.at("disabled"), "disabled filters are not supported")
        hf.done()
        if i == len(http_filters) - 1 and kind != ROUTER:
            raise _error(path, "the last HTTP filter must be the router (envoy.filters.http.router)")
    hcm.done()
    listener = dataclasses.replace(
        base,
        type="http",
        routes=routes,
        stat_prefix=stat_prefix,
        generate_request_id=request_ids,
        upgrade_types=upgrade_types,
    )
    return listener, plugins


def _http1_options(hcm: _Obj, ctx: _Context) -> None:
    """The hcm's http_protocol_options (its HTTP/1 codec): enable_trailers and accept_http_10. The agent keeps
    one set for all listeners, so listeners that differ are refused."""
    options = config.HttpOptions()
    h1 = hcm.obj("http_protocol_options")
    if h1 is not None:
        options = dataclasses.replace(
            options,
            enable_trailers=h1.flag("enable_trailers", False),
            accept_http_10=h1.flag("accept_http_10", False),
        )
        h1.done()
    path = hcm.at("http_protocol_options")
    if ctx.http1 is None:
        ctx.http1 = (options, path)
    elif ctx.http1[0] != options:
        reason = f"differs from {ctx.http1[1]} (the agent applies one set of HTTP/1 options to all listeners)"
        raise _error(path, reason)


def _tcp_listener(
    base: config.Listener, filters: Sequence[tuple[Any, str]], ctx: _Context, clusters: set[str]
) -> tuple[config.Listener, list[protocol.ExtensionConfig]]:
    plugins: list[protocol.ExtensionConfig] = []
    cluster = ""
    stat_prefix = ""
    for i, (raw, path) in enumerate(filters):
        f = _Obj(raw, path)
        f.text("name")
        kind, body = _typed(f, "typed_config")
        f.done()
        if kind == NETWORK_WASM:
            plugins.append(_wasm_filter(body, ctx, base.name, protocol.PluginType.NETWORK))
        elif kind == TCP_PROXY and i == len(filters) - 1:
            stat_prefix = body.text("stat_prefix")
            if not stat_prefix:
                raise _error(body.at("stat_prefix"), "is required")
            cluster = body.text("cluster")
            if not cluster:
                raise _error(body.at("cluster"), "is required (weighted tcp_proxy clusters are not supported)")
            if cluster not in clusters:
                raise _error(body.at("cluster"), f"unknown cluster {cluster!r}")
            body.done()
        else:
            raise _error(f"{path}.typed_config", f"{kind}: only wasm network filters, then tcp_proxy, are supported")
    listener = dataclasses.replace(base, type="tcp", cluster=cluster, stat_prefix=stat_prefix)
    return listener, plugins


# --- routes ----------------------------------------------------------------------------------------
def _route_config(obj: _Obj, clusters: set[str]) -> config.RouteConfig:
    name = obj.text("name")
    obj.flag("validate_clusters", True)
    hosts: list[config.VirtualHost] = []
    for raw, path in obj.items("virtual_hosts"):
        vh = _Obj(raw, path)
        vname = vh.text("name")
        if not vname:
            raise _error(vh.at("name"), "is required")
        domains: list[str] = []
        for d, dpath in vh.items("domains"):
            if not isinstance(d, str) or not d:
                raise _error(dpath, "must be a non-empty string")
            domains.append(d.lower())
        if not domains:
            raise _error(vh.at("domains"), "needs at least one domain")
        meta = metadata.metadata_from_json(vh.raw("metadata"), vh.at("metadata"))
        routes = tuple(_route(r, rpath, clusters) for r, rpath in vh.items("routes"))
        vh.done()
        hosts.append(config.VirtualHost(name=vname, domains=tuple(domains), routes=routes, metadata=meta))
    seen: set[str] = set()
    for host in hosts:
        for d in host.domains:
            if d in seen:
                raise _error(obj.at("virtual_hosts"), f"domain {d!r} is in more than one virtual host")
            seen.add(d)
    obj.done()
    return config.RouteConfig(name=name, virtual_hosts=tuple(hosts))


def _route(raw: Any, path: str, clusters: set[str]) -> config.Route:
    obj = _Obj(raw, path)
    route = config.Route(
        match=_route_match(obj.need("match")),
        name=obj.text("name"),
        metadata=metadata.metadata_from_json(obj.raw("metadata"), obj.at("metadata")),
    )
    action = obj.obj("route")
    direct = obj.obj("direct_response")
    obj.done()
    if (action is None) == (direct is None):
        raise _error(path, "needs exactly one of route, direct_response")
    if direct is not None:
        status = direct.uint("status", 0, low=100, high=599)
        if not status:
            raise _error(direct.at("status"), "is required (100-599)")
        src = direct.obj("body")
        body = _data_source(src, allow_file=True) if src is not None else b""
        direct.done()
        return dataclasses.replace(route, direct_status=status, direct_body=body)
    assert action is not None
    cluster = action.text("cluster")
    weighted = action.obj("weighted_clusters")
    if bool(cluster) == (weighted is not None):
        raise _error(action.path, "needs exactly one of cluster, weighted_clusters")
    entries, header = _weighted(weighted) if weighted is not None else ((), "")
    for target in [cluster] if cluster else [e.name for e in entries]:
        if target not in clusters:
            raise _error(action.at("cluster" if cluster else "weighted_clusters"), f"unknown cluster {target!r}")
    rewrite = action.text("prefix_rewrite") if action.has("prefix_rewrite") else None
    timeout = action.duration("timeout", config.ROUTE_TIMEOUT_S)
    action.done()
    return dataclasses.replace(
        route,
        cluster=cluster,
        weighted_clusters=entries,
        weight_header=header.lower(),
        prefix_rewrite=rewrite,
        timeout_s=timeout,
    )


def _weighted(weighted: _Obj) -> tuple[tuple[config.WeightedCluster, ...], str]:
    """weighted_clusters: the clusters with their weights, and header_name."""
    entries: list[config.WeightedCluster] = []
    for item, wpath in weighted.items("clusters"):
        w = _Obj(item, wpath)
        wname = w.text("name")
        if not wname:
            raise _error(w.at("name"), "is required")
        entries.append(config.WeightedCluster(wname, w.uint("weight", 0)))
        w.done()
    if not entries:
        raise _error(weighted.at("clusters"), "needs at least one cluster")
    total = sum(e.weight for e in entries)
    declared = weighted.uint("total_weight", total)
    if declared != total or total == 0:
        raise _error(weighted.at("total_weight"), f"the weights add up to {total}; total_weight says {declared}")
    header = weighted.text("header_name")
    weighted.done()
    return tuple(entries), header


def _route_match(obj: _Obj) -> config.RouteMatch:
    given = [k for k in ("prefix", "path", "safe_regex") if obj.has(k)]
    if len(given) != 1:
        raise _error(obj.path, "needs exactly one of prefix, path, safe_regex")
    prefix = obj.text("prefix") if obj.has("prefix") else None
    path = obj.text("path") if obj.has("path") else None
    regex = _regex(obj.need("safe_regex")) if obj.has("safe_regex") else None
    headers = tuple(_header_match(h, hpath) for h, hpath in obj.items("headers"))
    case_sensitive = obj.flag("case_sensitive", True)
    obj.done()
    return config.RouteMatch(prefix=prefix, path=path, regex=regex, case_sensitive=case_sensitive, headers=headers)


def _regex(obj: _Obj) -> str:
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
        raise _error(obj.at("regex"), f"{pattern!r} does not compile: {exc}") from None
    return pattern


def _header_match(raw: Any, path: str) -> config.HeaderMatch:
    obj = _Obj(raw, path)
    name = obj.text("name").lower()
    if not name:
        raise _error(obj.at("name"), "is required")
    invert = obj.flag("invert_match", False)
    kinds = [k for k in ("exact_match", "prefix_match", "suffix_match", "contains_match", "safe_regex_match",
                         "present_match", "string_match") if obj.has(k)]  # fmt: skip
    if len(kinds) > 1:
        raise _error(path, f"give one matcher, got {', '.join(kinds)}")
    kind = kinds[0] if kinds else "present_match"
    match: config.HeaderMatch
    if kind == "string_match":
        sm = obj.need("string_match")
        which = [k for k in ("exact", "prefix", "suffix", "contains", "safe_regex") if sm.has(k)]
        if len(which) != 1:
            raise _error(sm.path, "needs exactly one of exact, prefix, suffix, contains, safe_regex")
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


# --- plugins ---------------------------------------------------------------------------------------
def _data_source(obj: _Obj, *, allow_file: bool) -> bytes:
    """An envoy.config.core.v3.DataSource: filename, inline_bytes (base64) or inline_string."""
    given = [k for k in ("filename", "inline_bytes", "inline_string") if obj.has(k)]
    if len(given) != 1:
        raise _error(obj.path, "needs exactly one of filename, inline_bytes, inline_string")
    if given[0] == "inline_string":
        data = obj.text("inline_string").encode()
    elif given[0] == "inline_bytes":
        data = _base64(obj.text("inline_bytes"), obj.at("inline_bytes"))
    else:
        if not allow_file:
            raise _error(obj.at("filename"), "not supported here")
        name = obj.text("filename")
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise _error(obj.at("filename"), f"cannot read {name}: {exc.strerror}") from None
    obj.done()
    return data


def _base64(text: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _error(path, "is not base64 (bytes fields are base64 in Envoy's YAML/JSON)") from None


def _any_bytes(obj: _Obj, name: str) -> bytes:
    """A plugin/VM configuration as Envoy hands it to the plugin: a StringValue's string, a BytesValue's
    bytes, a Struct serialized; a plain string is envoy-wasm's v2 form (accepted, Envoy 1.40 refuses it)."""
    raw = obj.raw(name)
    path = obj.at(name)
    if raw is None or raw == {}:
        return b""
    if isinstance(raw, str):
        return raw.encode()
    any_ = _Obj(raw, path)
    url = any_.text("@type")
    if not url:
        raise _error(any_.at("@type"), "is required (google.protobuf.StringValue, BytesValue or Struct)")
    kind = _type_url(url, any_.at("@type"))
    value = any_.raw("value")
    any_.done()
    if kind == STRING_VALUE:
        if not isinstance(value, str | None):
            raise _error(any_.at("value"), f"must be a string, got {_type_name(value)}")
        return (value or "").encode()
    if kind == BYTES_VALUE:
        if not isinstance(value, str | None):
            raise _error(any_.at("value"), f"must be base64 text, got {_type_name(value)}")
        return _base64(value or "", any_.at("value"))
    if kind == STRUCT:
        return metadata.struct_from_json(value if value is not None else {}, any_.at("value")).proto()
    raise _error(any_.at("@type"), f"{kind}: configurations are StringValue, BytesValue or Struct")


def _as_text(data: bytes) -> str:
    """Bytes in the str form ExtensionConfig carries (lossless for any bytes: surrogateescape)."""
    return data.decode("utf-8", "surrogateescape")


def _plugin_config(obj: _Obj, ctx: _Context) -> dict[str, Any]:
    """An envoy.extensions.wasm.v3.PluginConfig as ExtensionConfig fields."""
    name = obj.text("name")
    root_id = obj.text("root_id")
    if isinstance(obj.fields.get("configuration"), str):
        ctx.warnings.append(
            f"{obj.at('configuration')}: a plain string (envoy-wasm's v2 form; Envoy 1.40 refuses it: "
            '"invalid JSON ... configuration: message google.protobuf.Any"); handed to the plugin as is'
        )
    configuration = _any_bytes(obj, "configuration")
    strategy = _FAILURE_POLICIES[obj.enum("failure_policy", {k: k for k in _FAILURE_POLICIES}, "FAIL_UNSPECIFIED")]
    if obj.flag("fail_open", False):
        if obj.has("failure_policy"):
            raise _error(obj.at("fail_open"), "give fail_open or failure_policy, not both")
        strategy = protocol.FailStrategy.FAIL_OPEN
    vm = obj.obj("vm_config")
    if vm is None:
        raise _error(obj.at("vm_config"), "is required")
    vm_id = vm.text("vm_id")
    runtime = vm.text("runtime")
    if runtime not in RUNTIMES:
        raise _error(vm.at("runtime"), f"{runtime!r} is not a wasm runtime Envoy names ({', '.join(sorted(RUNTIMES))})")
    url, sha256 = _code(vm.need("code"), ctx, runtime)
    vm_configuration = _any_bytes(vm, "configuration")
    vm.flag("allow_precompiled", False)  # wasmtime modules carry no precompiled section the agent could use
    env: dict[str, str] = {}
    host_keys: list[str] = []
    ev = vm.obj("environment_variables")
    if ev is not None:
        for key, kpath in ev.items("host_env_keys"):
            if not isinstance(key, str) or not key:
                raise _error(kpath, "must be a variable name")
            host_keys.append(key)
        kv = ev.raw("key_values") or {}
        if not isinstance(kv, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in kv.items()):
            raise _error(ev.at("key_values"), "must be a mapping of strings")
        env.update(kv)
        ev.done()
        both = sorted(set(env) & set(host_keys))
        if both:
            raise _error(ev.path, f"{both[0]} is in both key_values and host_env_keys")
    vm.done()
    obj.done()
    return {
        "name": name,
        "root_id": root_id,
        "url": url,
        "sha256": sha256,
        "configuration": _as_text(configuration),
        "vm_env": tuple(sorted(env.items())),
        "fail_strategy": strategy,
        "vm_id": vm_id,
        "vm_configuration": _as_text(vm_configuration),
        "host_env_keys": tuple(host_keys),
    }


def _code(obj: _Obj, ctx: _Context, runtime: str) -> tuple[str, str]:
    """code (AsyncDataSource) -> (url, sha256) for the loader."""
    local, remote = obj.obj("local"), obj.obj("remote")
    obj.done()
    if (local is None) == (remote is None):
        raise _error(obj.path, "needs exactly one of local, remote")
    if remote is not None:
        uri = remote.need("http_uri")
        url = uri.text("uri")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
            raise _error(uri.at("uri"), f"{url!r} is not an http(s) URL")
        uri.text("cluster")  # the agent fetches the URL itself (meshplug.fetch: SSRF guard, cache, sha256)
        uri.duration("timeout", 0)
        uri.done()
        sha256 = remote.text("sha256").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise _error(remote.at("sha256"), "is required: 64 hex digits")
        remote.done()
        return url, sha256
    assert local is not None
    if local.has("filename"):
        path = Path(local.text("filename")).expanduser().absolute()
        local.done()
        if not path.is_file():
            raise _error(local.at("filename"), f"{path}: no such file")
        return path.as_uri(), ""
    if runtime == "envoy.wasm.runtime.null" and local.has("inline_string"):
        name = local.text("inline_string")
        raise _error(local.at("inline_string"), f"{name!r}: the agent has no NullVM plugins (give a wasm module)")
    data = _data_source(local, allow_file=False)
    digest = hashlib.sha256(data).hexdigest()
    path = ctx.inline_dir / f"{digest}.wasm"
    if not path.exists():
        try:
            files.write_atomic(path, data)
        except OSError as exc:
            raise _error(local.path, f"cannot keep the inline module in {ctx.inline_dir}: {exc.strerror}") from None
    return path.as_uri(), digest


def _wasm_filter(body: _Obj, ctx: _Context, listener: str, kind: protocol.PluginType) -> protocol.ExtensionConfig:
    fields = _plugin_config(body.need("config"), ctx)
    body.done()
    return protocol.ExtensionConfig(type=kind, listeners=(listener,), **fields)


def _lua_filter(body: _Obj, name: str, listener: str) -> protocol.ExtensionConfig:
    """An envoy.filters.http.lua filter: its stats (`lua.<stat_prefix>.errors`) are named by its stat_prefix."""
    name = body.text("stat_prefix") or name
    code = body.text("inline_code")
    source = body.obj("default_source_code")
    if source is not None:
        if code:
            raise _error(body.path, "give inline_code or default_source_code, not both")
        code = _data_source(source, allow_file=True).decode(errors="replace")
    body.done()
    if not code:
        raise _error(body.path, "needs inline_code or default_source_code")
    return protocol.ExtensionConfig(
        name=name, root_id="", url="", sha256=protocol.lua_sha256(code), lua=code, listeners=(listener,)
    )


def _extension(raw: Any, path: str, ctx: _Context) -> protocol.ExtensionConfig:
    obj = _Obj(raw, path)
    obj.text("name")
    kind, body = _typed(obj, "typed_config")
    obj.done()
    if kind != WASM_SERVICE:
        raise _error(f"{path}.typed_config", f"{kind}: only envoy.bootstrap.wasm (WasmService) is supported")
    fields = _plugin_config(body.need("config"), ctx)
    body.flag("singleton", False)  # one VM either way: the agent runs one worker
    body.text("stat_prefix")
    body.done()
    return protocol.ExtensionConfig(**fields)
