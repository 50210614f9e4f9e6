"""The agent's static configuration file (like Envoy's static bootstrap), parsed into frozen dataclasses.

Called by `meshplug agent --config FILE` and `meshplug run`; everything after this module sees only
`AgentConfig`. Every problem is a `ConfigError` naming the offending key. YAML or JSON:

    listeners:                       # where the proxy accepts traffic (>= 1)
      - {name: inbound, address: 127.0.0.1, port: 15006, cluster: app}     # type: http (the default)
      - {name: db, port: 15007, cluster: db, type: tcp}   # L4: bytes through the network plugins (tcp_proxy)
      # http listeners serve HTTP/1.1 and HTTP/2 (h2c with prior knowledge; h2 by ALPN with tls) on one port;
      # upgrade_types: the Upgrade protocols passed through (Envoy's upgrade_configs), others answer 403
      - {name: ws, port: 15008, cluster: app, upgrade_types: [websocket]}
      - {name: secure, port: 15443, cluster: app, tls: {cert_file: tls.crt, key_file: tls.key}}
      # responses get `server: istio-envoy` (Istio's sidecar inbound; server_header_transformation OVERWRITE,
      # APPEND_IF_ABSENT or PASS_THROUGH; server_name), x-envoy-upstream-service-time, and requests
      # x-envoy-expected-rq-timeout-ms, unless suppress_envoy_headers: true -- as Envoy's router
      - {name: plain, port: 15009, cluster: app, server_header_transformation: PASS_THROUGH}
    clusters:                        # named upstreams: the listeners' targets and plugins' http-call targets
      - {name: app, address: 127.0.0.1, port: 8080, connect_timeout_s: 5, response_timeout_s: 15}
      - {name: grpc, port: 9090, http2: true}    # speaks HTTP/2 (h2c) upstream: many streams per connection
      - {name: legacy, port: 8081, enable_trailers: true}  # HTTP/1.1 trailers to/from it (else dropped, as Envoy)
    admin: {address: 127.0.0.1, port: 15000}         # /ready /config_dump /stats/prometheus /logging
    push:                            # optional: where the operator pushes plugin sets
      address: 0.0.0.0
      port: 15010
      token_file: /etc/meshplug/agent/token        # accepted bearer tokens, one per line (the second factor)
      tls:                                         # mutual TLS; required unless allow_plaintext
        cert_file: /etc/meshplug/agent/tls.crt
        key_file: /etc/meshplug/agent/tls.key
        client_ca_file: /etc/meshplug/agent/ca.crt # the client certificate must be issued by this CA ...
        client_name: meshplug-operator             # ... to this common name (the default)
      allow_plaintext: false         # true: plain HTTP pushes, for local runs only
    state_dir: /var/lib/meshplug     # optional: last good pushed config + modules survive restarts
    modules:                         # optional: module supply (meshplug.fetch: https, oci, file + sha256)
      cache_dir: /var/lib/meshplug/cache       # default <state_dir>/cache, else $MESHPLUG_CACHE/modules
      file_roots: [/modules]         # file:// URLs are read only below these (+ the static plugins' files)
      allow_loopback: false          # SSRF guard: loopback is refused unless true (local runs); link-local and
      block_cidrs: [10.0.0.0/8]      # cloud metadata always are; these networks too
      server:                        # the operator's module server: requests to it carry the bearer token
        url: https://meshplug-modules.meshplug-system.svc:8443
        token_file: /etc/meshplug/agent/sa-token   # the pod's projected ServiceAccount token (re-read per request)
        ca_file: /etc/meshplug/agent/ca.crt        # optional: verify the server with this CA (else system roots)
      precompiled: true              # load the operator's precompiled module when a push names one for this
                                     # agent's engine and CPU (checked against the push's sha256); false: compile
    drain_timeout_s: 20
    http:                            # optional: HTTP/1.1 limits and timeouts, Envoy's names and defaults (0 = off)
      max_request_headers_kb: 60     # request line + headers; 431 beyond
      max_headers_count: 100         # 431 beyond
      max_response_headers_kb: 80    # an upstream's response head; 502 beyond
      max_response_headers_count: 100
      request_headers_timeout_s: 0   # whole head within this after its first byte, else 408
      request_timeout_s: 0           # whole request (head and body) within this, else 408 (Envoy's request_timeout)
      stream_idle_timeout_s: 300     # no activity on a request this long: 408 (or reset once answering)
      idle_timeout_s: 300            # a connection without a request this long is closed
      max_stream_duration_s: 0       # a request not done this long after its first byte: 408 while it arrives, 504
                                     # until answered, else reset ("downstream duration timeout", Envoy's HCM
                                     # common_http_protocol_options.max_stream_duration)
      max_connection_duration_s: 0   # then the connection closes after its current response
      accept_http_10: false          # HTTP/1.0 (and 0.9) requests get 426 unless true
      enable_trailers: false         # HTTP/1.1 trailers from/to clients (else dropped, as Envoy)
    wasm:                            # optional: the wasm VMs
      recycle_memory_mb: 128         # a VM whose linear memory grew past this is replaced by a fresh one (same
                                     # module and configuration) once no stream uses it, its memory freed; 0: never
    node:                            # optional: what plugins read as node.* / xds.node.* (Envoy's bootstrap node)
      id: sidecar~10.0.0.7~web-1.shop~shop.svc.cluster.local
      cluster: web.shop
      metadata: {NAME: web-1, NAMESPACE: shop}   # string values
    plugins:                         # chain order; same fields as a pushed protocol.ExtensionConfig
      - name: add-header
        root_id: add_header
        module: {file: ./add_header.wasm}            # or {url: https://..., sha256: <64 hex>}
        configuration: {"header": "x-hello"}          # a string, or any JSON value (sent JSON-encoded)
        vm_env: {LEVEL: debug}
        fail_strategy: FAIL_CLOSE
        match:                                        # optional: run only for requests some rule matches
          - {hosts: [api.example.com, "*.example.org"], path_prefixes: [/v1/], exact_paths: [/healthz]}
      - name: lua-header                              # a Lua filter (Envoy's Lua filter API) instead of a module
        lua: {inline_code: "function envoy_on_request(h) h:headers():add('x-lua', '1') end"}

Relative paths (module files, token, certificate and key files, state_dir) are relative to the config file's
directory. Files mounted from Secrets (tokens, certificates) are re-read when they change: a rotation needs no
restart.

`load` (what `meshplug agent` uses) also takes the node from the Downward API's environment variables, like
Istio's sidecar: POD_NAME and POD_NAMESPACE fill node metadata NAME and NAMESPACE, and the node id defaults
to `<POD_NAME>.<POD_NAMESPACE>`; anything the file's `node` sets wins.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshplug import errors, limits, protocol
from meshplug.agent import metadata
from meshplug.agent.metadata import EMPTY_METADATA, Metadata
from meshplug.fields import Fields

#: listener types: an HTTP/1.1 reverse proxy through the HTTP filter chain, or a TCP proxy through the
#: plugins' network (L4) callbacks
LISTENER_TYPES = ("http", "tcp")
#: a listener's traffic direction (Envoy's traffic_direction; Istio's match mode SERVER = INBOUND,
#: CLIENT = OUTBOUND); an UNSPECIFIED listener takes plugins of every mode
DIRECTIONS = ("UNSPECIFIED", "INBOUND", "OUTBOUND")
#: Envoy's default route timeout
ROUTE_TIMEOUT_S = 15.0
#: the server header Istio's sidecar writes on its inbound listeners (ProxyHeaders' EnvoyServerName)
SIDECAR_SERVER_NAME = "istio-envoy"
#: Envoy's server_header_transformation values
SERVER_HEADER_TRANSFORMATIONS = ("OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH")


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


# --- routes (Envoy's RouteConfiguration subset; a native listener's `cluster` is one catch-all route) ---
@dataclass(frozen=True)
class HeaderMatch:
    """One of a route's header matchers (Envoy's HeaderMatcher): `kind` exact | prefix | suffix | contains |
    regex | present; `present` is present_match's value; `invert` inverts the result."""

    name: str
    kind: str
    value: str = ""
    invert: bool = False
    ignore_case: bool = False
    present: bool = True


@dataclass(frozen=True)
class RouteMatch:
    """Exactly one of prefix (of the whole :path), path (exact, query removed), regex (full match, query
    removed); all `headers` must match too."""

    prefix: str | None = None
    path: str | None = None
    regex: str | None = None
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True)
class WeightedCluster:
    name: str
    weight: int


@dataclass(frozen=True)
class MaxStreamDuration:
    """A route's max_stream_duration (Envoy's RouteAction.MaxStreamDuration; None: the field is unset). Its presence
    makes the route's streams take their duration limit from it instead of the HCM's: `max_stream_duration_s` (0:
    none), or the request's grpc-timeout header when `grpc_timeout_header_max_s` is set (capped by it unless 0,
    less `grpc_timeout_header_offset_s`); a gRPC request's grpc-timeout upstream says the limit
    (meshplug.agent.streamtimeouts)."""

    max_stream_duration_s: float | None = None
    grpc_timeout_header_max_s: float | None = None
    grpc_timeout_header_offset_s: float | None = None


@dataclass(frozen=True)
class Route:
    """A route: where matching requests go (one cluster, weighted clusters, or a direct response)."""

    match: RouteMatch
    name: str = ""
    cluster: str = ""
    weighted_clusters: tuple[WeightedCluster, ...] = ()
    #: weighted_clusters.header_name: that request header's integer value picks the cluster (else random)
    weight_header: str = ""
    prefix_rewrite: str | None = None
    #: the upstream response must have ended within this (0: no timeout)
    timeout_s: float = ROUTE_TIMEOUT_S
    #: the stream idle timeout of the route's streams instead of the HCM's (Envoy's route idle_timeout; None:
    #: unset, 0: none)
    idle_timeout_s: float | None = None
    max_stream_duration: MaxStreamDuration | None = None
    #: direct_response: answered by the proxy itself (0: not a direct response)
    direct_status: int = 0
    direct_body: bytes = b""
    metadata: Metadata = EMPTY_METADATA

    @property
    def clusters(self) -> tuple[str, ...]:
        if self.weighted_clusters:
            return tuple(w.name for w in self.weighted_clusters)
        return (self.cluster,) if self.cluster else ()


@dataclass(frozen=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    metadata: Metadata = EMPTY_METADATA


@dataclass(frozen=True)
class RouteConfig:
    name: str = ""
    virtual_hosts: tuple[VirtualHost, ...] = ()


def catch_all(cluster: str, timeout_s: float) -> RouteConfig:
    """The route table of a native listener: every request to `cluster`."""
    route = Route(match=RouteMatch(prefix="/"), cluster=cluster, timeout_s=timeout_s)
    return RouteConfig(virtual_hosts=(VirtualHost(name="", domains=("*",), routes=(route,)),))


@dataclass(frozen=True)
class ListenerTls:
    """A listener's TLS (Envoy's DownstreamTlsContext): serving certificate chain and key, PEM files; ALPN
    offers h2 and http/1.1."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class Listener:
    name: str
    address: str
    port: int
    #: tcp: the upstream cluster (tcp_proxy); http: the default cluster ("" when the routes decide everything)
    cluster: str
    type: str = "http"
    #: Upgrade protocols passed through to the cluster (Envoy's upgrade_configs[].upgrade_type, lower-case)
    upgrade_types: tuple[str, ...] = ()
    tls: ListenerTls | None = None
    #: http: the route table (None: every request to `cluster`)
    routes: RouteConfig | None = None
    direction: str = "UNSPECIFIED"
    metadata: Metadata = EMPTY_METADATA
    filter_chain_name: str = ""
    #: Envoy's stat_prefix (http.<prefix>.* / tcp.<prefix>.* stats); "" = the listener's name
    stat_prefix: str = ""
    #: add x-request-id to requests without one (Envoy's generate_request_id)
    generate_request_id: bool = True
    #: Envoy's server_header_transformation: OVERWRITE (every response's server is `server_name`),
    #: APPEND_IF_ABSENT (only when it has none) or PASS_THROUGH (the upstream's, none on local replies)
    server_header_transformation: str = "OVERWRITE"
    #: the native default is what Istio's sidecar inbound listener sets; a bootstrap's HCM default is "envoy"
    server_name: str = SIDECAR_SERVER_NAME
    #: the router adds no x-envoy-upstream-service-time / x-envoy-expected-rq-timeout-ms (its suppress_envoy_headers)
    suppress_envoy_headers: bool = False


@dataclass(frozen=True)
class Cluster:
    name: str
    address: str
    port: int
    connect_timeout_s: float = limits.UPSTREAM_CONNECT_TIMEOUT_S
    response_timeout_s: float = limits.UPSTREAM_RESPONSE_TIMEOUT_S
    max_idle_connections: int = limits.UPSTREAM_MAX_IDLE_CONNECTIONS
    #: the cluster speaks HTTP/2 (h2c with prior knowledge): Envoy's typed_extension_protocol_options
    #: envoy.extensions.upstreams.http.v3.HttpProtocolOptions explicit_http_config.http2_protocol_options
    http2: bool = False
    #: HTTP/1.1 to this cluster carries trailers both ways (Envoy's http_protocol_options.enable_trailers of the
    #: cluster); without it they are dropped, as Envoy does
    enable_trailers: bool = False

    #: every endpoint (address, port is the first); new connections go round robin
    endpoints: tuple[Endpoint, ...] = ()
    #: STATIC, STRICT_DNS or LOGICAL_DNS (names are resolved when connecting)
    discovery: str = "STATIC"
    metadata: Metadata = EMPTY_METADATA


#: the common name the push client certificate must carry by default (the operator's)
OPERATOR_NAME = "meshplug-operator"


@dataclass(frozen=True)
class PushTLS:
    """Mutual TLS on the push port: our certificate, and the CA and name the client's must have."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path
    client_name: str = OPERATOR_NAME


@dataclass(frozen=True)
class PushEndpoint:
    address: str
    port: int
    token_file: Path
    tls: PushTLS | None = None  # None only with allow_plaintext


@dataclass(frozen=True)
class ModuleServer:
    """Where the operator serves modules; requests to this origin carry `Authorization: Bearer <token>`."""

    url: str
    token_file: Path
    ca_file: Path | None = None


@dataclass(frozen=True)
class Modules:
    """Module supply: the fetch cache, the directories file:// URLs may read, the module server, the SSRF guard."""

    cache_dir: Path | None = None
    file_roots: tuple[Path, ...] = ()
    server: ModuleServer | None = None
    allow_loopback: bool = False
    block_cidrs: tuple[str, ...] = ()
    #: load the operator's precompiled artifacts (protocol.CompiledArtifact) instead of compiling
    precompiled: bool = True
    #: the agent's own list of keys that may sign pushed modules (`meshplug agent --trusted-keys`,
    #: meshplug.agent.trust); None: a signed module's push names the key it is checked under
    trusted_keys: Path | None = None
    #: every pushed module must be signed (`meshplug agent --require-signatures`; needs `trusted_keys`)
    require_signatures: bool = False


@dataclass(frozen=True)
class Node:
    """The proxy's node (Envoy's bootstrap `node`): plugins read it as `xds.node.*`."""

    id: str = ""
    cluster: str = ""
    metadata: tuple[tuple[str, metadata.Value], ...] = ()  # a Struct's fields, in the file's order


@dataclass(frozen=True)
class HttpOptions:
    """HTTP/1.1 limits and timeouts (the config's `http:` section), named and defaulted as Envoy's
    http_connection_manager and cluster protocol options; a timeout of 0 is off."""

    max_request_headers_kb: int = limits.MAX_REQUEST_HEADERS_KB
    max_headers_count: int = limits.MAX_HEADERS_COUNT
    max_response_headers_kb: int = limits.MAX_RESPONSE_HEADERS_KB
    max_response_headers_count: int = limits.MAX_RESPONSE_HEADERS_COUNT
    request_headers_timeout_s: float = limits.REQUEST_HEADERS_TIMEOUT_S
    #: the whole request within this of its first byte unless its response started (Envoy's request_timeout)
    request_timeout_s: float = limits.REQUEST_TIMEOUT_S
    stream_idle_timeout_s: float = limits.STREAM_IDLE_TIMEOUT_S
    idle_timeout_s: float = limits.DOWNSTREAM_IDLE_TIMEOUT_S
    #: a stream's whole life from its first byte (Envoy's common_http_protocol_options.max_stream_duration)
    max_stream_duration_s: float = limits.MAX_STREAM_DURATION_S
    max_connection_duration_s: float = limits.MAX_CONNECTION_DURATION_S
    accept_http_10: bool = False
    #: HTTP/1.1 clients' request trailers are read and responses carry trailers (Envoy's hcm
    #: http_protocol_options.enable_trailers); without it both are dropped, as Envoy does
    enable_trailers: bool = False


@dataclass(frozen=True)
class WasmOptions:
    """The wasm VMs (the config's `wasm:` section)."""

    #: a VM whose linear memory grew past this many MiB is replaced by a fresh one with the same module and
    #: configuration once no stream uses it, and its memory returned to the OS; 0: never
    recycle_memory_mb: int = limits.VM_RECYCLE_MEMORY_BYTES // (1024 * 1024)


@dataclass(frozen=True)
class AgentConfig:
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    admin: Endpoint
    push: PushEndpoint | None = None
    state_dir: Path | None = None
    drain_timeout_s: float = limits.DRAIN_TIMEOUT_S
    plugins: tuple[protocol.ExtensionConfig, ...] = ()
    modules: Modules = Modules()
    node: Node = Node()
    http: HttpOptions = HttpOptions()
    #: singleton plugins (Envoy's bootstrap_extensions envoy.bootstrap.wasm / WasmService): started once, on
    #: VMs of their own, in no filter chain (ticks, http calls, shared data and queues)
    singletons: tuple[protocol.ExtensionConfig, ...] = ()
    #: admin requests are appended here, one line each (Envoy's admin access_log_path)
    admin_access_log: Path | None = None
    #: where the config came from: "agent" (this module's format) or "envoy" (meshplug.agent.bootstrap)
    source: str = "agent"
    wasm: WasmOptions = WasmOptions()

    @property
    def plugin_kind(self) -> str | None:
        """How plugins are used: "http" or "network" when every listener is of one type, None when both."""
        kinds = {lst.type for lst in self.listeners}
        if kinds == {"tcp"}:
            return "network"
        return "http" if kinds == {"http"} else None

    def routes(self, listener: Listener) -> RouteConfig:
        """An HTTP listener's route table (a native listener: everything to its cluster)."""
        if listener.routes is not None:
            return listener.routes
        return catch_all(listener.cluster, self.cluster(listener.cluster).response_timeout_s)

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise errors.ConfigError(f"unknown cluster {name!r}")


# --- parsing (meshplug.fields: one set of rules; every problem is a ConfigError naming the key) ---------------


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _file(fields: Fields, key: str, base: Path) -> Path:
    return _path(base, fields.text(key))


def _port(fields: Fields) -> int:
    return fields.integer("port", lo=0, hi=65535)


_PLUGIN_KEYS = ("name", "root_id", "module", "configuration", "vm_env", "fail_strategy", "vm_id", "vm_configuration")
#: where a plugin runs and what it reads from the agent (protocol.ExtensionConfig's placement fields)
_PLACEMENT_KEYS = ("type", "traffic", "host_env_keys", "listeners")


def _plugin(obj: Fields, base: Path, default_type: str) -> protocol.ExtensionConfig:
    where = obj.where
    obj.only(*_PLUGIN_KEYS, *_PLACEMENT_KEYS, "match", "lua")
    if obj.has("lua"):
        if obj.has("module"):
            raise errors.ConfigError(f"{where} needs exactly one of module, lua")
        lua_wire = {k: v for k, v in obj.raw.items() if k != "match"}
        lua_wire["match"] = _match(obj)
        lua_wire.setdefault("type", "HTTP")
        return _decoded(lua_wire, where)
    module = obj.sub("module", "file", "url", "sha256")
    if module.has("file") == module.has("url"):
        raise errors.ConfigError(f"{where}.module needs exactly one of file, url")
    url = _file(module, "file", base).as_uri() if module.has("file") else module.text("url")
    conf = obj.value("configuration", "")
    wire = {
        "name": obj.text("name"),
        "root_id": obj.value("root_id", ""),
        "url": url,
        "sha256": module.value("sha256", ""),
        "configuration": conf if isinstance(conf, str) else json.dumps(conf, separators=(",", ":")),
        "vm_env": obj.value("vm_env", {}),
        "fail_strategy": obj.value("fail_strategy", protocol.FailStrategy.FAIL_CLOSE.value),
        "vm_id": obj.value("vm_id", ""),
        "vm_configuration": obj.value("vm_configuration", ""),
        "match": _match(obj),
        "type": obj.value("type", default_type),
        "traffic": obj.value("traffic", []),
        "host_env_keys": obj.value("host_env_keys", []),
        "listeners": obj.value("listeners", []),
    }
    return _decoded(wire, where)


def _decoded(wire: Mapping[str, Any], where: str) -> protocol.ExtensionConfig:
    try:
        return protocol.decode_extension_config(wire, where)
    except errors.ProtocolError as exc:
        raise errors.ConfigError(exc.message) from None


_HOST_NAME = re.compile(
    r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*$"
)


def _match(plugin: Fields) -> list[Any]:
    """A plugin's `match` rules, checked beyond the wire format's shape (protocol.decode_match checks that):
    hosts are names or ``*.domain`` without a port, paths start with ``/``."""
    if "match" in plugin.raw and plugin.raw["match"] is None:
        raise errors.ConfigError(f"{plugin.at('match')} must be a list of rules (leave it out to match every request)")
    for rule in plugin.items("match"):
        if "paths" in rule.raw:
            raise errors.ConfigError(f"{rule.where}: unknown key paths (use path_prefixes and exact_paths)")
        for key in ("hosts", "path_prefixes", "exact_paths"):
            for value in rule.strings(key):
                if key == "hosts" and not _HOST_NAME.match(value):
                    raise errors.ConfigError(
                        f"{rule.at('hosts')}: {value!r} is not a host name or *.domain (and has no port)"
                    )
                if key != "hosts" and not value.startswith("/"):
                    raise errors.ConfigError(f"{rule.at(key)}: {value!r} does not start with /")
    return plugin.array("match")


def _upgrade_types(listener: Fields) -> tuple[str, ...]:
    types = listener.strings("upgrade_types")
    if not all(re.fullmatch(r"[!-~]+", t) for t in types):
        raise listener.fail("upgrade_types", "a list of protocol tokens (e.g. [websocket])")
    return tuple(dict.fromkeys(t.lower() for t in types))


def _listener_tls(listener: Fields, base: Path) -> ListenerTls | None:
    if not listener.has("tls"):
        return None
    obj = listener.sub("tls", "cert_file", "key_file")
    tls = ListenerTls(cert_file=_file(obj, "cert_file", base), key_file=_file(obj, "key_file", base))
    for f in (tls.cert_file, tls.key_file):
        if not f.is_file():
            raise errors.ConfigError(f"{obj.where}: {f} is not a readable file")
    return tls


def _module_server(obj: Fields, base: Path) -> ModuleServer | None:
    if not obj.has("server"):
        return None
    srv = obj.sub("server", "url", "token_file", "ca_file")
    url = srv.text("url")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
        raise srv.fail("url", "an http(s) URL")
    ca = _file(srv, "ca_file", base) if srv.has("ca_file") else None
    return ModuleServer(url=url, token_file=_file(srv, "token_file", base), ca_file=ca)


def _modules(obj: Fields, base: Path, plugins: tuple[protocol.ExtensionConfig, ...]) -> Modules:
    obj.only("cache_dir", "file_roots", "server", "allow_loopback", "block_cidrs", "precompiled")
    roots = [_path(base, r) for r in obj.strings("file_roots")]
    for plugin in plugins:  # the static config's own module files are trusted: their directories are roots
        if plugin.lua:
            continue
        parts = urllib.parse.urlsplit(plugin.url)
        if parts.scheme == "file":
            roots.append(Path(urllib.parse.unquote(parts.path)).parent)
    return Modules(
        cache_dir=_file(obj, "cache_dir", base) if obj.has("cache_dir") else None,
        file_roots=tuple(dict.fromkeys(roots)),
        server=_module_server(obj, base),
        allow_loopback=obj.flag("allow_loopback", False),
        block_cidrs=obj.cidrs("block_cidrs"),
        precompiled=obj.flag("precompiled", True),
    )


def _http(obj: Fields) -> HttpOptions:
    names = [f.name for f in dataclasses.fields(HttpOptions)]
    obj.only(*names)
    values: dict[str, Any] = {}
    for key in names:
        if not obj.has(key):
            continue
        if key in ("accept_http_10", "enable_trailers"):
            values[key] = obj.flag(key)
        elif key.endswith("_s"):  # 0: off
            if obj.number(key) < 0:
                raise obj.fail(key, "a number of seconds >= 0 (0: off)")
            values[key] = obj.number(key)
        else:
            values[key] = obj.integer(key, lo=1)
    return HttpOptions(**values)


def _node(obj: Fields) -> Node:
    obj.only("id", "cluster", "metadata")
    meta = obj.text_map("metadata")
    return Node(
        id=obj.text("id", "", empty=True), cluster=obj.text("cluster", "", empty=True), metadata=tuple(meta.items())
    )


#: Downward API environment variables -> node metadata keys (as Istio's sidecar sets them)
NODE_ENV = (("POD_NAME", "NAME"), ("POD_NAMESPACE", "NAMESPACE"))


def node_from_env(node: Node, environ: Mapping[str, str]) -> Node:
    """`node` completed from POD_NAME / POD_NAMESPACE: metadata NAME / NAMESPACE and a default id."""
    have = dict(node.metadata)
    extra = tuple((key, environ[var]) for var, key in NODE_ENV if environ.get(var) and key not in have)
    node_id = node.id
    if not node_id and environ.get("POD_NAME") and environ.get("POD_NAMESPACE"):
        node_id = f"{environ['POD_NAME']}.{environ['POD_NAMESPACE']}"
    return Node(id=node_id, cluster=node.cluster, metadata=node.metadata + extra)


def _clusters(top: Fields) -> tuple[Cluster, ...]:
    clusters: list[Cluster] = []
    for obj in top.items("clusters"):
        obj.only(
            "name",
            "address",
            "port",
            "connect_timeout_s",
            "response_timeout_s",
            "max_idle_connections",
            "http2",
            "enable_trailers",
        )
        clusters.append(
            Cluster(
                name=obj.text("name"),
                address=obj.text("address", "127.0.0.1"),
                port=_port(obj),
                connect_timeout_s=obj.number("connect_timeout_s", limits.UPSTREAM_CONNECT_TIMEOUT_S, positive=True),
                response_timeout_s=obj.number("response_timeout_s", limits.UPSTREAM_RESPONSE_TIMEOUT_S, positive=True),
                max_idle_connections=obj.integer("max_idle_connections", limits.UPSTREAM_MAX_IDLE_CONNECTIONS, lo=0),
                http2=obj.flag("http2", False),
                enable_trailers=obj.flag("enable_trailers", False),
            )
        )
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise errors.ConfigError(f"clusters: duplicate names in {names}")
    return tuple(clusters)


def _listeners(top: Fields, clusters: tuple[Cluster, ...], base: Path) -> tuple[Listener, ...]:
    names = [c.name for c in clusters]
    listeners = []
    items = top.items("listeners")
    if not items:
        raise errors.ConfigError("listeners must be a non-empty list")
    for i, obj in enumerate(items):
        obj.only(
            "name",
            "address",
            "port",
            "cluster",
            "type",
            "upgrade_types",
            "tls",
            "direction",
            "server_header_transformation",
            "server_name",
            "suppress_envoy_headers",
        )
        cluster = obj.text("cluster")
        if cluster not in names:
            raise errors.ConfigError(f"{obj.at('cluster')} {cluster!r} is not a defined cluster (have {names})")
        listeners.append(
            Listener(
                name=obj.text("name", f"listener{i}"),
                address=obj.text("address", "127.0.0.1"),
                port=_port(obj),
                cluster=cluster,
                type=obj.choice("type", LISTENER_TYPES, "http"),
                upgrade_types=_upgrade_types(obj),
                tls=_listener_tls(obj, base),
                direction=obj.choice("direction", ("inbound", "outbound", "unspecified"), "unspecified").upper(),
                server_header_transformation=obj.choice(
                    "server_header_transformation", SERVER_HEADER_TRANSFORMATIONS, "OVERWRITE"
                ),
                server_name=obj.text("server_name", SIDECAR_SERVER_NAME),
                suppress_envoy_headers=obj.flag("suppress_envoy_headers", False),
            )
        )
    return tuple(listeners)


def _push(top: Fields, base: Path) -> PushEndpoint | None:
    if not top.has("push"):
        return None
    p = top.sub("push", "address", "port", "token_file", "tls", "allow_plaintext")
    tls: PushTLS | None = None
    if p.has("tls"):
        t = p.sub("tls", "cert_file", "key_file", "client_ca_file", "client_name")
        tls = PushTLS(
            cert_file=_file(t, "cert_file", base),
            key_file=_file(t, "key_file", base),
            client_ca_file=_file(t, "client_ca_file", base),
            client_name=t.text("client_name", OPERATOR_NAME),
        )
    if tls is None and not p.flag("allow_plaintext", False):
        raise errors.ConfigError(
            "push needs tls (mutual TLS with the operator); plain HTTP pushes only with "
            "push.allow_plaintext: true, for local runs"
        )
    return PushEndpoint(
        address=p.text("address", "127.0.0.1"), port=_port(p), token_file=_file(p, "token_file", base), tls=tls
    )


_TOP_KEYS = ("listeners", "clusters", "admin", "push", "state_dir", "drain_timeout_s", "plugins", "modules", "node")


def parse(raw: Any, *, base: Path) -> AgentConfig:
    """Turn a loaded YAML/JSON document into `AgentConfig`; `base` resolves relative paths."""
    if not isinstance(raw, Mapping):
        raise errors.ConfigError(f"config must be a mapping, got {type(raw).__name__}")
    top = Fields(raw, "").only(*_TOP_KEYS, "http", "wasm")
    clusters = _clusters(top)
    admin = top.sub("admin", "address", "port")
    listeners = _listeners(top, clusters, base)
    # a plugin without `type` in an agent whose listeners are all TCP is a network filter (this format's
    # rule before `type` existed); pushed plugins follow Istio: no type is HTTP
    default_type = "NETWORK" if {lst.type for lst in listeners} == {"tcp"} else "HTTP"
    plugins = tuple(_plugin(p, base, default_type) for p in top.items("plugins"))
    pnames = [p.name for p in plugins]
    if len(set(pnames)) != len(pnames):
        raise errors.ConfigError(f"plugins: duplicate names in {pnames}")
    return AgentConfig(
        modules=_modules(top.sub("modules"), base, plugins),
        listeners=listeners,
        clusters=clusters,
        admin=Endpoint(address=admin.text("address", "127.0.0.1"), port=_port(admin)),
        push=_push(top, base),
        state_dir=_file(top, "state_dir", base) if top.has("state_dir") else None,
        drain_timeout_s=top.number("drain_timeout_s", limits.DRAIN_TIMEOUT_S, positive=True),
        plugins=plugins,
        node=_node(top.sub("node")),
        http=_http(top.sub("http")),
        wasm=WasmOptions(
            recycle_memory_mb=top.sub("wasm", "recycle_memory_mb").integer("recycle_memory_mb", 128, lo=0)
        ),
    )


def load(path: Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and parse a config file (YAML, of which JSON is a subset); the node is completed from
    `environ` (default: the process environment, see `node_from_env`)."""
    return load_with(path, "agent config", lambda raw: parse(raw, base=path.resolve().parent), environ)


def load_with(
    path: Path, what: str, parse_document: Callable[[Any], AgentConfig], environ: Mapping[str, str] | None
) -> AgentConfig:
    """The agent's static input from a YAML (or JSON) file `what` names in errors -- this module's format or
    Envoy's bootstrap (meshplug.agent.bootstrap) --, parsed by `parse_document`, its node completed from
    `environ` (default: the process environment, see `node_from_env`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{path}: not valid YAML or JSON: {exc}") from None
    cfg = parse_document(raw)
    node = node_from_env(cfg.node, os.environ if environ is None else environ)
    return cfg if node == cfg.node else dataclasses.replace(cfg, node=node)


def read_tokens(path: Path) -> tuple[str, ...]:
    """The bearer tokens of a token file mounted from a Secret or projected by the kubelet: one per line, the
    newest first (surrounding whitespace ignored). ConfigError when it cannot be read or holds none."""
    try:
        tokens = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError as exc:
        raise errors.ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    if not tokens:
        raise errors.ConfigError(f"token file {path} is empty")
    return tokens
