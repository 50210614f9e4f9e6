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
    clusters:                        # named upstreams: the listeners' targets and plugins' http-call targets
      - {name: app, address: 127.0.0.1, port: 8080, connect_timeout_s: 5, response_timeout_s: 15}
      - {name: grpc, port: 9090, http2: true}    # speaks HTTP/2 (h2c) upstream: many streams per connection
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
      stream_idle_timeout_s: 300     # no activity on a request this long: 408 (or reset once answering)
      idle_timeout_s: 300            # a connection without a request this long is closed
      max_connection_duration_s: 0   # then the connection closes after its current response
      accept_http_10: false          # HTTP/1.0 (and 0.9) requests get 426 unless true
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
import ipaddress
import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshplug import errors, limits, protocol

#: listener types: an HTTP/1.1 reverse proxy through the HTTP filter chain, or a TCP proxy through the
#: plugins' network (L4) callbacks
LISTENER_TYPES = ("http", "tcp")


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
    cluster: str
    type: str = "http"
    #: Upgrade protocols passed through to the cluster (Envoy's upgrade_configs[].upgrade_type, lower-case)
    upgrade_types: tuple[str, ...] = ()
    tls: ListenerTls | None = None


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


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


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


@dataclass(frozen=True)
class Node:
    """The proxy's node (Envoy's bootstrap `node`): plugins read it as `node.*` and `xds.node.*`."""

    id: str = ""
    cluster: str = ""
    metadata: tuple[tuple[str, str], ...] = ()  # string values, in the file's order


@dataclass(frozen=True)
class HttpOptions:
    """HTTP/1.1 limits and timeouts (the config's `http:` section), named and defaulted as Envoy's
    http_connection_manager and cluster protocol options; a timeout of 0 is off."""

    max_request_headers_kb: int = limits.MAX_REQUEST_HEADERS_KB
    max_headers_count: int = limits.MAX_HEADERS_COUNT
    max_response_headers_kb: int = limits.MAX_RESPONSE_HEADERS_KB
    max_response_headers_count: int = limits.MAX_RESPONSE_HEADERS_COUNT
    request_headers_timeout_s: float = limits.REQUEST_HEADERS_TIMEOUT_S
    stream_idle_timeout_s: float = limits.STREAM_IDLE_TIMEOUT_S
    idle_timeout_s: float = limits.DOWNSTREAM_IDLE_TIMEOUT_S
    max_connection_duration_s: float = limits.MAX_CONNECTION_DURATION_S
    accept_http_10: bool = False


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

    @property
    def plugin_kind(self) -> str | None:
        """How plugins are used: "http" or "network" when every listener is of one type, None when both."""
        kinds = {lst.type for lst in self.listeners}
        if kinds == {"tcp"}:
            return "network"
        return "http" if kinds == {"http"} else None

    def cluster(self, name: str) -> Cluster:
        for c in self.clusters:
            if c.name == name:
                return c
        raise errors.ConfigError(f"unknown cluster {name!r}")


# --- parsing ---------------------------------------------------------------------------------------


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise errors.ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise errors.ConfigError(f"{where}: keys must be strings, got {key!r}")
    return value


def _keys(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise errors.ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _str(obj: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or not value:
        raise errors.ConfigError(f"{where}.{key} must be a non-empty string")
    return value


def _port(obj: Mapping[str, Any], where: str) -> int:
    value = obj.get("port")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise errors.ConfigError(f"{where}.port must be an integer 0..65535, got {value!r}")
    return value


def _seconds(obj: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise errors.ConfigError(f"{where}.{key} must be a positive number of seconds, got {value!r}")
    return float(value)


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _plugin(raw: Any, where: str, base: Path) -> protocol.ExtensionConfig:
    obj = _obj(raw, where)
    _keys(
        obj,
        {"name", "root_id", "module", "configuration", "vm_env", "fail_strategy", "vm_id", "vm_configuration", "match",
         "lua"},
        where,
    )  # fmt: skip
    if "lua" in obj:
        if "module" in obj:
            raise errors.ConfigError(f"{where} needs exactly one of module, lua")
        lua_wire = {k: v for k, v in obj.items() if k != "match"}
        lua_wire["match"] = _match(obj.get("match", []), f"{where}.match")
        try:
            return protocol.decode_extension_config(lua_wire, where)
        except errors.ProtocolError as exc:
            raise errors.ConfigError(exc.message) from None
    module = _obj(obj.get("module"), f"{where}.module")
    _keys(module, {"file", "url", "sha256"}, f"{where}.module")
    if ("file" in module) == ("url" in module):
        raise errors.ConfigError(f"{where}.module needs exactly one of file, url")
    if "file" in module:
        url = _path(base, _str(module, "file", f"{where}.module")).as_uri()
    else:
        url = _str(module, "url", f"{where}.module")
    conf = obj.get("configuration", "")
    configuration = conf if isinstance(conf, str) else json.dumps(conf, separators=(",", ":"))
    wire = {
        "name": _str(obj, "name", where),
        "root_id": obj.get("root_id", ""),
        "url": url,
        "sha256": module.get("sha256", ""),
        "configuration": configuration,
        "vm_env": obj.get("vm_env", {}),
        "fail_strategy": obj.get("fail_strategy", protocol.FailStrategy.FAIL_CLOSE.value),
        "vm_id": obj.get("vm_id", ""),
        "vm_configuration": obj.get("vm_configuration", ""),
        "match": _match(obj.get("match", []), f"{where}.match"),
    }
    try:
        return protocol.decode_extension_config(wire, where)
    except errors.ProtocolError as exc:
        raise errors.ConfigError(exc.message) from None


_HOST_NAME = re.compile(
    r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*$"
)


def _match(raw: Any, where: str) -> Any:
    """A plugin's `match` rules, checked beyond the wire format's shape (protocol.decode_match checks that):
    hosts are names or ``*.domain`` without a port, paths start with ``/``."""
    if raw is None:
        raise errors.ConfigError(f"{where} must be a list of rules (leave it out to match every request)")
    if not isinstance(raw, list):
        raise errors.ConfigError(f"{where} must be a list of rules, got {type(raw).__name__}")
    for i, rule in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(rule, dict):
            raise errors.ConfigError(f"{at} must be a mapping with hosts, path_prefixes, exact_paths")
        if "paths" in rule:
            raise errors.ConfigError(f"{at}: unknown key paths (use path_prefixes and exact_paths)")
        for key in ("hosts", "path_prefixes", "exact_paths"):
            values = rule.get(key, [])
            if not isinstance(values, list):
                raise errors.ConfigError(f"{at}.{key} must be a list of strings, got {type(values).__name__}")
            for value in values:
                if not isinstance(value, str) or not value:
                    raise errors.ConfigError(f"{at}.{key}: {value!r} is not a non-empty string")
                if key == "hosts" and not _HOST_NAME.match(value):
                    raise errors.ConfigError(f"{at}.hosts: {value!r} is not a host name or *.domain (and has no port)")
                if key != "hosts" and not value.startswith("/"):
                    raise errors.ConfigError(f"{at}.{key}: {value!r} does not start with /")
    return raw


def _upgrade_types(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, str) and re.fullmatch(r"[!-~]+", t) for t in raw):
        raise errors.ConfigError(f"{where}.upgrade_types must be a list of protocol tokens (e.g. [websocket])")
    return tuple(dict.fromkeys(t.lower() for t in raw))


def _listener_tls(raw: Any, where: str, base: Path) -> ListenerTls | None:
    if raw is None:
        return None
    obj = _obj(raw, f"{where}.tls")
    _keys(obj, {"cert_file", "key_file"}, f"{where}.tls")
    tls = ListenerTls(
        cert_file=_path(base, _str(obj, "cert_file", f"{where}.tls")),
        key_file=_path(base, _str(obj, "key_file", f"{where}.tls")),
    )
    for f in (tls.cert_file, tls.key_file):
        if not f.is_file():
            raise errors.ConfigError(f"{where}.tls: {f} is not a readable file")
    return tls


def _modules(raw: Any, base: Path, plugins: tuple[protocol.ExtensionConfig, ...]) -> Modules:
    obj = _obj(raw, "modules")
    _keys(obj, {"cache_dir", "file_roots", "server", "allow_loopback", "block_cidrs", "precompiled"}, "modules")
    allow_loopback = obj.get("allow_loopback", False)
    if not isinstance(allow_loopback, bool):
        raise errors.ConfigError(f"modules.allow_loopback must be true or false, got {allow_loopback!r}")
    cidrs = obj.get("block_cidrs") or []
    if not isinstance(cidrs, list) or not all(isinstance(c, str) and c for c in cidrs):
        raise errors.ConfigError("modules.block_cidrs must be a list of CIDRs")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise errors.ConfigError(f"modules.block_cidrs: not a CIDR: {cidr!r}") from None
    precompiled = obj.get("precompiled", True)
    if not isinstance(precompiled, bool):
        raise errors.ConfigError("modules.precompiled must be true or false")
    cache_dir = _path(base, _str(obj, "cache_dir", "modules")) if obj.get("cache_dir") is not None else None
    roots_raw = obj.get("file_roots") or []
    if not isinstance(roots_raw, list) or not all(isinstance(r, str) and r for r in roots_raw):
        raise errors.ConfigError("modules.file_roots must be a list of directories")
    roots = [_path(base, r) for r in roots_raw]
    for plugin in plugins:  # the static config's own module files are trusted: their directories are roots
        if plugin.lua:
            continue
        parts = urllib.parse.urlsplit(plugin.url)
        if parts.scheme == "file":
            roots.append(Path(urllib.parse.unquote(parts.path)).parent)
    server: ModuleServer | None = None
    if obj.get("server") is not None:
        srv = _obj(obj["server"], "modules.server")
        _keys(srv, {"url", "token_file", "ca_file"}, "modules.server")
        url = _str(srv, "url", "modules.server")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
            raise errors.ConfigError(f"modules.server.url must be an http(s) URL, got {url!r}")
        ca = _path(base, _str(srv, "ca_file", "modules.server")) if srv.get("ca_file") is not None else None
        server = ModuleServer(url=url, token_file=_path(base, _str(srv, "token_file", "modules.server")), ca_file=ca)
    return Modules(
        cache_dir=cache_dir,
        file_roots=tuple(dict.fromkeys(roots)),
        server=server,
        allow_loopback=allow_loopback,
        block_cidrs=tuple(cidrs),
        precompiled=precompiled,
    )


def _http(raw: Any) -> HttpOptions:
    obj = _obj(raw, "http")
    fields = {f.name: f for f in dataclasses.fields(HttpOptions)}
    _keys(obj, set(fields), "http")
    values: dict[str, Any] = {}
    for key, value in obj.items():
        if key == "accept_http_10":
            if not isinstance(value, bool):
                raise errors.ConfigError(f"http.{key} must be true or false, got {value!r}")
        elif key.endswith("_s"):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise errors.ConfigError(f"http.{key} must be a number of seconds >= 0 (0: off), got {value!r}")
            values[key] = float(value)
            continue
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise errors.ConfigError(f"http.{key} must be a positive integer, got {value!r}")
        values[key] = value
    return HttpOptions(**values)


def _node(raw: Any) -> Node:
    obj = _obj(raw, "node")
    _keys(obj, {"id", "cluster", "metadata"}, "node")
    for key in ("id", "cluster"):
        if not isinstance(obj.get(key, ""), str):
            raise errors.ConfigError(f"node.{key} must be a string, got {type(obj[key]).__name__}")
    meta = _obj(obj.get("metadata") or {}, "node.metadata")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise errors.ConfigError(f"node.metadata.{key} must be a string, got {type(value).__name__}")
    return Node(id=obj.get("id", ""), cluster=obj.get("cluster", ""), metadata=tuple(meta.items()))


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


def parse(raw: Any, *, base: Path) -> AgentConfig:
    """Turn a loaded YAML/JSON document into `AgentConfig`; `base` resolves relative paths."""
    top = _obj(raw, "config")
    _keys(
        top,
        {"listeners", "clusters", "admin", "push", "state_dir", "drain_timeout_s", "plugins", "modules", "node"}
        | {"http"},
        "config",
    )

    clusters: list[Cluster] = []
    for i, c in enumerate(top.get("clusters") or []):
        where = f"clusters[{i}]"
        obj = _obj(c, where)
        _keys(
            obj,
            {"name", "address", "port", "connect_timeout_s", "response_timeout_s", "max_idle_connections", "http2"},
            where,
        )
        http2 = obj.get("http2", False)
        if not isinstance(http2, bool):
            raise errors.ConfigError(f"{where}.http2 must be true or false, got {http2!r}")
        idle = obj.get("max_idle_connections", limits.UPSTREAM_MAX_IDLE_CONNECTIONS)
        if isinstance(idle, bool) or not isinstance(idle, int) or idle < 0:
            raise errors.ConfigError(f"{where}.max_idle_connections must be a non-negative integer")
        clusters.append(
            Cluster(
                name=_str(obj, "name", where),
                address=_str(obj, "address", where, "127.0.0.1"),
                port=_port(obj, where),
                connect_timeout_s=_seconds(obj, "connect_timeout_s", where, limits.UPSTREAM_CONNECT_TIMEOUT_S),
                response_timeout_s=_seconds(obj, "response_timeout_s", where, limits.UPSTREAM_RESPONSE_TIMEOUT_S),
                max_idle_connections=idle,
                http2=http2,
            )
        )
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise errors.ConfigError(f"clusters: duplicate names in {names}")

    listeners: list[Listener] = []
    raw_listeners = top.get("listeners")
    if not isinstance(raw_listeners, list) or not raw_listeners:
        raise errors.ConfigError("listeners must be a non-empty list")
    for i, item in enumerate(raw_listeners):
        where = f"listeners[{i}]"
        obj = _obj(item, where)
        _keys(obj, {"name", "address", "port", "cluster", "type", "upgrade_types", "tls"}, where)
        cluster = _str(obj, "cluster", where)
        kind = _str(obj, "type", where, "http")
        if kind not in LISTENER_TYPES:
            raise errors.ConfigError(f"{where}.type must be one of {', '.join(LISTENER_TYPES)}, got {kind!r}")
        if cluster not in names:
            raise errors.ConfigError(f"{where}.cluster {cluster!r} is not a defined cluster (have {names})")
        listeners.append(
            Listener(
                name=_str(obj, "name", where, f"listener{i}"),
                address=_str(obj, "address", where, "127.0.0.1"),
                port=_port(obj, where),
                cluster=cluster,
                type=kind,
                upgrade_types=_upgrade_types(obj.get("upgrade_types"), where),
                tls=_listener_tls(obj.get("tls"), where, base),
            )
        )

    admin_obj = _obj(top.get("admin", {}), "admin")
    _keys(admin_obj, {"address", "port"}, "admin")
    admin = Endpoint(address=_str(admin_obj, "address", "admin", "127.0.0.1"), port=_port(admin_obj, "admin"))

    push: PushEndpoint | None = None
    if top.get("push") is not None:
        p = _obj(top["push"], "push")
        _keys(p, {"address", "port", "token_file", "tls", "allow_plaintext"}, "push")
        tls: PushTLS | None = None
        if p.get("tls") is not None:
            t = _obj(p["tls"], "push.tls")
            _keys(t, {"cert_file", "key_file", "client_ca_file", "client_name"}, "push.tls")
            tls = PushTLS(
                cert_file=_path(base, _str(t, "cert_file", "push.tls")),
                key_file=_path(base, _str(t, "key_file", "push.tls")),
                client_ca_file=_path(base, _str(t, "client_ca_file", "push.tls")),
                client_name=_str(t, "client_name", "push.tls", OPERATOR_NAME),
            )
        plaintext = p.get("allow_plaintext", False)
        if not isinstance(plaintext, bool):
            raise errors.ConfigError(f"push.allow_plaintext must be true or false, got {plaintext!r}")
        if tls is None and not plaintext:
            raise errors.ConfigError(
                "push needs tls (mutual TLS with the operator); plain HTTP pushes only with "
                "push.allow_plaintext: true, for local runs"
            )
        push = PushEndpoint(
            address=_str(p, "address", "push", "127.0.0.1"),
            port=_port(p, "push"),
            token_file=_path(base, _str(p, "token_file", "push")),
            tls=tls,
        )

    state_dir = _path(base, _str(top, "state_dir", "config")) if top.get("state_dir") is not None else None
    plugins_raw = top.get("plugins") or []
    if not isinstance(plugins_raw, list):
        raise errors.ConfigError("plugins must be a list")
    plugins = tuple(_plugin(p, f"plugins[{i}]", base) for i, p in enumerate(plugins_raw))
    pnames = [p.name for p in plugins]
    if len(set(pnames)) != len(pnames):
        raise errors.ConfigError(f"plugins: duplicate names in {pnames}")
    return AgentConfig(
        modules=_modules(top.get("modules") or {}, base, plugins),
        listeners=tuple(listeners),
        clusters=tuple(clusters),
        admin=admin,
        push=push,
        state_dir=state_dir,
        drain_timeout_s=_seconds(top, "drain_timeout_s", "config", limits.DRAIN_TIMEOUT_S),
        plugins=plugins,
        node=_node(top["node"]) if top.get("node") is not None else Node(),
        http=_http(top["http"]) if top.get("http") is not None else HttpOptions(),
    )


def load(path: Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and parse a config file (YAML, of which JSON is a subset); the node is completed from
    `environ` (default: the process environment, see `node_from_env`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read agent config {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{path}: not valid YAML: {exc}") from None
    cfg = parse(raw, base=path.resolve().parent)
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
