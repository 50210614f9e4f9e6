"""Behaviour specs of the plugin corpus: `examples/filters/<sdk>/<name>/spec.yaml` -> frozen `Spec`.

The format is written down in examples/filters/SPEC.md. This module is its only parser: it checks every
field (unknown keys, types, allowed values) and names the offending path in `SpecFormatError`, so a typo in a
spec fails loudly instead of testing nothing. Called by tests/corpus/runner.py, the corpus tests
(tests/integration/test_corpus_*.py), tests/unit/test_corpus_spec.py and scripts that list the corpus.
Nothing here knows about a particular data plane.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from meshplug.fields import REQUIRED, Fields

REPO_ROOT = Path(__file__).resolve().parents[2]
FILTERS_DIR = REPO_ROOT / "examples" / "filters"

#: log levels of the proxy-wasm ABI (proxy_log), data-plane neutral spelling
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")
#: kinds of test-bed services a spec's cluster can name (tests/testbed/upstream.py implements them)
SERVICE_KINDS = ("echo", "auth", "counter", "tcp_echo", "grpc")
#: services that speak HTTP/2: their clusters are HTTP/2 clusters in every plane
HTTP2_SERVICES = frozenset({"grpc"})
#: what a spec's chain can route to (`upstream:`): an HTTP/1.1 echo, or the gRPC test service over HTTP/2
UPSTREAM_KINDS = ("echo", "grpc")
GRPC_METHODS = ("Unary", "ServerStream", "ClientStream", "Bidi")
#: the cluster every request is routed to (http: an echo service, network: a tcp_echo service)
UPSTREAM_CLUSTER = "upstream"
DEFAULT_WAIT_S = 30.0


class SpecFormatError(ValueError):
    """A spec.yaml that does not follow SPEC.md; the message names the file and the field."""


# --- the value types -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginSpec:
    """One filter of the chain (chain order = list order): a wasm plugin, or a Lua filter (`lua` set)."""

    module: str  # "<sdk>/<name>" key of a built corpus module ("" for a Lua filter)
    name: str  # plugin_name (a Lua filter's stat prefix)
    root_id: str
    vm_id: str
    configuration: str  # already JSON-encoded when the spec gave an object
    vm_configuration: str
    env: tuple[tuple[str, str], ...]  # VM environment variables, sorted by key
    fail_open: bool
    lua: str | None = None  # the script of a Lua filter (Envoy's envoy.filters.http.lua)


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    service: str  # one of SERVICE_KINDS


@dataclass(frozen=True)
class NodeSpec:
    """The proxy's node (Envoy's bootstrap `node`): what plugins read as `xds.node.*` and `node.*`."""

    id: str  # "" when the spec gave none
    cluster: str  # "" when the spec gave none
    metadata: tuple[tuple[str, str], ...]  # string values, sorted by key


@dataclass(frozen=True)
class LogExpect:
    contains: str
    level: str | None  # None: any level


@dataclass(frozen=True)
class MetricExpect:
    name: str  # the name the plugin defined, without any data-plane prefix
    value: int | None  # None: only that the metric exists (histograms)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body_chunks: tuple[bytes, ...]  # empty: no body; one element: a plain body; more: chunked upload


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body_chunks: tuple[bytes, ...]  # sent as a chunked response when there is more than one


@dataclass(frozen=True)
class UpstreamExpect:
    method: str | None
    path: str | None
    headers: tuple[tuple[str, str], ...]
    absent_headers: tuple[str, ...]
    body: bytes | None
    body_contains: bytes | None


@dataclass(frozen=True)
class HttpExpect:
    status: int | None
    headers: tuple[tuple[str, str], ...]
    headers_match: tuple[tuple[str, str], ...]  # name -> regex that one value must fully match
    absent_headers: tuple[str, ...]
    body: bytes | None
    body_contains: bytes | None
    upstream: UpstreamExpect | None
    upstream_reached: bool | None  # False: `upstream: null` (must not be reached); None: not checked
    logs: tuple[LogExpect, ...]
    metrics: tuple[MetricExpect, ...]
    grpc: GrpcExpect | None = None


@dataclass(frozen=True)
class GrpcRequest:
    """A gRPC call of the test service (tests/testbed/grpcpeer.py) made with grpcio through the plane."""

    method: str  # one of GRPC_METHODS
    messages: tuple[bytes, ...]
    metadata: tuple[tuple[str, str], ...]
    timeout_s: float


@dataclass(frozen=True)
class GrpcExpect:
    status: int | None  # the grpc-status the client saw (0 OK ... 16)
    message: str | None  # its grpc-message
    messages: tuple[bytes, ...] | None  # the response messages, in order
    initial_metadata: tuple[tuple[str, str], ...]
    trailing_metadata: tuple[tuple[str, str], ...]
    absent_metadata: tuple[str, ...]  # in neither


@dataclass(frozen=True)
class WaitFor:
    logs: tuple[LogExpect, ...]
    timeout_s: float


@dataclass(frozen=True)
class HttpCase:
    name: str
    request: Request
    upstream_response: UpstreamResponse | None
    expect: HttpExpect
    wait_for: WaitFor | None
    grpc: GrpcRequest | None = None  # a gRPC call instead of `request` (the spec's upstream is grpc)


@dataclass(frozen=True)
class NetworkExpect:
    received: bytes | None
    received_contains: bytes | None
    logs: tuple[LogExpect, ...]
    metrics: tuple[MetricExpect, ...]


@dataclass(frozen=True)
class NetworkCase:
    name: str
    send: tuple[bytes, ...]
    expect: NetworkExpect
    wait_for: WaitFor | None


@dataclass(frozen=True)
class StartFailure:
    """The plane must refuse the chain when plugin `plugin` gets this configuration (a Lua filter: this
    script) instead."""

    name: str
    plugin: int
    configuration: str
    logs: tuple[LogExpect, ...]
    lua: str | None = None  # the replacement script of a Lua filter
    error: str | None = None  # must appear in the plane's refusal (e.g. the Lua compile error)


@dataclass(frozen=True)
class Spec:
    key: str  # "<sdk>/<name>", the plugin dir relative to examples/filters
    path: Path
    description: str
    type: Literal["http", "network"]
    behaviours: tuple[str, ...]
    plugins: tuple[PluginSpec, ...]  # () when `bootstrap` gives the chain
    clusters: tuple[ClusterSpec, ...]
    start_logs: tuple[LogExpect, ...]
    http_cases: tuple[HttpCase, ...]
    network_cases: tuple[NetworkCase, ...]
    start_failures: tuple[StartFailure, ...]
    envoy_broken: str | None
    node: NodeSpec | None  # None: the plane's default node (Envoy: empty id and cluster, no metadata)
    upstream: str = "echo"  # the service kind behind cluster `upstream` (UPSTREAM_KINDS)
    #: a hand-written Envoy bootstrap (the template's text, placeholders unexpanded) both planes run
    #: instead of the one generated from `plugins`; None: generated (tests/corpus/bootstrap.py)
    bootstrap: str | None = None

    @property
    def modules(self) -> tuple[str, ...]:
        if self.bootstrap is not None:
            return bootstrap_modules(self.bootstrap, self.key)
        return tuple(sorted({p.module for p in self.plugins if p.lua is None}))


#: placeholders of a hand-written bootstrap (see SPEC.md): ${PORT}, ${ADMIN_PORT}, ${CLUSTER_PORT:<name>},
#: ${MODULE} (this plugin's module), ${MODULE:<sdk>/<name>}
PLACEHOLDER = re.compile(
    r"\$\{(PORT|ADMIN_PORT|CLUSTER_PORT:[A-Za-z0-9_.-]+|MODULE(?::[A-Za-z0-9_-]+/[A-Za-z0-9_-]+)?)\}"
)


def bootstrap_modules(template: str, key: str) -> tuple[str, ...]:
    """The corpus modules a bootstrap template names."""
    names = (m.group(1) for m in PLACEHOLDER.finditer(template))
    return tuple(sorted({n.partition(":")[2] or key for n in names if n.startswith("MODULE")}))


# --- parsing -------------------------------------------------------------------------------------


class _At(Fields):
    """A mapping of a spec being read at a known path: `meshplug.fields.Fields` (one set of rules, errors are
    SpecFormatError) plus what the corpus format adds (chunks, header maps, bytes)."""

    def __init__(self, where: str, raw: object) -> None:
        super().__init__(raw, where, error=SpecFormatError)

    def only(self, *allowed: str) -> _At:
        super().only(*allowed)
        return self

    def str_(self, key: str, default: str | None = None) -> str:
        """A string; an empty default makes the empty string a value of the field, else it is refused."""
        return self.text(key, REQUIRED if default is None else default, empty=default == "")

    def opt_str(self, key: str) -> str | None:
        return self.opt_text(key)

    def bool_(self, key: str, default: bool) -> bool:
        return self.flag(key, default)

    def opt_int(self, key: str, lo: int, hi: int) -> int | None:
        return self.opt_integer(key, lo=lo, hi=hi)

    def positive(self, key: str, default: float) -> float:
        return self.number(key, default, positive=True)

    def list_(self, key: str, *, required: bool = False) -> list[Any]:
        return self.array(key, REQUIRED if required else ())

    def str_list(self, key: str) -> tuple[str, ...]:
        return self.strings(key)

    def header_map(self, key: str, *, lower_keys: bool = False) -> tuple[tuple[str, str], ...]:
        """Header names to values (numbers are written as they read, e.g. ``content-length: 5``)."""
        value = self.value(key, {})
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int) and not isinstance(v, bool) for k, v in value.items()
        ):
            raise self.fail(key, "a mapping of header names to strings")
        return tuple(sorted((k.lower() if lower_keys else k, str(v)) for k, v in value.items()))

    def child(self, key: str) -> _At:
        return _At(self.at(key), self.raw[key])

    def at_index(self, key: str, index: int) -> str:
        return f"{self.at(key)}[{index}]"

    def opt_bytes(self, key: str) -> bytes | None:
        return None if not self.has(key) else self.text(key, empty=True).encode()

    def chunks(self, one: str, many: str) -> tuple[bytes, ...]:
        if self.has(one) and self.has(many):
            raise SpecFormatError(f"{self.where}: give `{one}` or `{many}`, not both")
        if self.has(one):
            text = self.text(one, empty=True)
            return (text.encode(),) if text else ()
        return tuple(s.encode() for s in self.str_list(many))


def _config_value(where: str, value: object) -> str:
    """A plugin/VM configuration: a string as is, any other YAML value as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list | int | float | bool):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    raise SpecFormatError(f"{where}: expected a string or a YAML value, got {type(value).__name__}")


def _logs(at: _At, key: str) -> tuple[LogExpect, ...]:
    out: list[LogExpect] = []
    for i, raw in enumerate(at.list_(key)):
        item = _At(at.at_index(key, i), raw)
        item.only("level", "contains")
        level = item.opt_str("level")
        if level is not None and level not in LOG_LEVELS:
            raise SpecFormatError(f"{item.where}.level: {level!r} is not one of {list(LOG_LEVELS)}")
        out.append(LogExpect(contains=item.str_("contains"), level=level))
    return tuple(out)


def _metrics(at: _At, key: str) -> tuple[MetricExpect, ...]:
    out: list[MetricExpect] = []
    for i, raw in enumerate(at.list_(key)):
        item = _At(at.at_index(key, i), raw)
        item.only("name", "value")
        out.append(MetricExpect(name=item.str_("name"), value=item.opt_int("value", -(2**63), 2**64 - 1)))
    return tuple(out)


def _wait_for(at: _At) -> WaitFor | None:
    if at.raw.get("wait_for") is None:
        return None
    w = at.child("wait_for")
    w.only("logs", "timeout_s")
    logs = _logs(w, "logs")
    if not logs:
        raise SpecFormatError(f"{w.where}.logs: at least one log expectation is needed")
    return WaitFor(logs=logs, timeout_s=w.positive("timeout_s", DEFAULT_WAIT_S))


#: SDK directory of Lua filters: its specs' plugins default to `lua: filter.lua`
LUA_DIR = "lua"
LUA_DEFAULT_FILE = "filter.lua"


def _lua_plugin(p: _At, spec_dir: Path, default_name: str) -> PluginSpec:
    p.only("lua", "name")
    file = p.str_("lua")
    script = (spec_dir / file).resolve()
    if spec_dir.resolve() not in script.parents or not script.is_file():
        raise SpecFormatError(f"{p.where}.lua: {file!r} is not a file in {spec_dir}")
    return PluginSpec(
        module="", name=p.str_("name", default_name), root_id="", vm_id="", configuration="",
        vm_configuration="", env=(), fail_open=False, lua=script.read_text(),
    )  # fmt: skip


def _plugin(where: str, raw: object, default_module: str, spec_dir: Path) -> PluginSpec:
    p = _At(where, raw)
    if p.has("lua"):
        return _lua_plugin(p, spec_dir, Path(p.str_("lua")).stem)
    p.only("module", "name", "root_id", "vm_id", "configuration", "vm_configuration", "env", "fail_open")
    module = p.str_("module", default_module)
    if module.count("/") != 1 or not all(module.split("/")):
        raise SpecFormatError(f"{where}.module: expected '<sdk>/<name>', got {module!r}")
    return PluginSpec(
        module=module,
        name=p.str_("name", module.split("/")[1]),
        root_id=p.str_("root_id", ""),
        vm_id=p.str_("vm_id", ""),
        configuration=_config_value(f"{where}.configuration", p.raw.get("configuration")),
        vm_configuration=_config_value(f"{where}.vm_configuration", p.raw.get("vm_configuration")),
        env=p.header_map("env"),
        fail_open=p.bool_("fail_open", default=False),
    )


def _node(top: _At) -> NodeSpec | None:
    if top.raw.get("node") is None:
        return None
    n = top.child("node")
    n.only("id", "cluster", "metadata")
    metadata = n.text_map("metadata")
    if "" in metadata:
        raise SpecFormatError(f"{n.at('metadata')}: keys must not be empty")
    return NodeSpec(id=n.str_("id", ""), cluster=n.str_("cluster", ""), metadata=tuple(sorted(metadata.items())))


def _request(where: str, raw: object) -> Request:
    r = _At(where, raw)
    r.only("method", "path", "headers", "body", "body_chunks")
    path = r.str_("path", "/")
    if not path.startswith("/"):
        raise SpecFormatError(f"{where}.path: must start with '/', got {path!r}")
    return Request(
        method=r.str_("method", "GET").upper(),
        path=path,
        headers=r.header_map("headers", lower_keys=True),
        body_chunks=r.chunks("body", "body_chunks"),
    )


def _upstream_response(where: str, raw: object) -> UpstreamResponse:
    r = _At(where, raw)
    r.only("status", "headers", "body", "body_chunks")
    return UpstreamResponse(
        status=r.opt_int("status", 100, 599) or 200,
        headers=r.header_map("headers", lower_keys=True),
        body_chunks=r.chunks("body", "body_chunks"),
    )


def _body_expect(at: _At) -> tuple[bytes | None, bytes | None]:
    if at.has("body") and at.has("body_contains"):
        raise SpecFormatError(f"{at.where}: give `body` or `body_contains`, not both")
    return at.opt_bytes("body"), at.opt_bytes("body_contains")


def _grpc_request(where: str, raw: object) -> GrpcRequest:
    g = _At(where, raw)
    g.only("method", "messages", "metadata", "timeout_s")
    method = g.str_("method", "Unary")
    if method not in GRPC_METHODS:
        raise SpecFormatError(f"{where}.method: {method!r} is not one of {list(GRPC_METHODS)}")
    messages = tuple(m.encode() for m in g.str_list("messages"))
    if not messages and method in ("Unary", "ServerStream"):
        raise SpecFormatError(f"{where}.messages: a {method} call sends one message")
    return GrpcRequest(
        method=method, messages=messages, metadata=g.header_map("metadata", lower_keys=True),
        timeout_s=g.positive("timeout_s", 10.0),
    )  # fmt: skip


def _grpc_expect(where: str, raw: object) -> GrpcExpect:
    g = _At(where, raw)
    g.only("status", "message", "messages", "initial_metadata", "trailing_metadata", "absent_metadata")
    return GrpcExpect(
        status=g.opt_int("status", 0, 16),
        message=g.opt_str("message"),
        messages=tuple(m.encode() for m in g.str_list("messages")) if g.has("messages") else None,
        initial_metadata=g.header_map("initial_metadata", lower_keys=True),
        trailing_metadata=g.header_map("trailing_metadata", lower_keys=True),
        absent_metadata=tuple(h.lower() for h in g.str_list("absent_metadata")),
    )


def _http_expect(where: str, raw: object) -> HttpExpect:
    e = _At(where, raw)
    e.only(
        "status", "headers", "headers_match", "absent_headers", "body", "body_contains", "upstream", "logs", "metrics",
        "grpc",
    )  # fmt: skip
    for name, pattern in e.header_map("headers_match"):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SpecFormatError(f"{where}.headers_match.{name}: bad regex {pattern!r}: {exc}") from None
    body, contains = _body_expect(e)
    upstream: UpstreamExpect | None = None
    reached: bool | None = None
    if "upstream" in e.raw:  # `upstream: null` is a value here: the upstream must not be reached
        if e.raw["upstream"] is None:
            reached = False
        else:
            u = e.child("upstream")
            u.only("method", "path", "headers", "absent_headers", "body", "body_contains")
            u_body, u_contains = _body_expect(u)
            reached = True
            upstream = UpstreamExpect(
                method=u.opt_str("method"),
                path=u.opt_str("path"),
                headers=u.header_map("headers", lower_keys=True),
                absent_headers=tuple(h.lower() for h in u.str_list("absent_headers")),
                body=u_body,
                body_contains=u_contains,
            )
    return HttpExpect(
        status=e.opt_int("status", 100, 599),
        headers=e.header_map("headers", lower_keys=True),
        headers_match=e.header_map("headers_match", lower_keys=True),
        absent_headers=tuple(h.lower() for h in e.str_list("absent_headers")),
        body=body,
        body_contains=contains,
        upstream=upstream,
        upstream_reached=reached,
        logs=_logs(e, "logs"),
        metrics=_metrics(e, "metrics"),
        grpc=_grpc_expect(f"{where}.grpc", e.raw["grpc"]) if e.raw.get("grpc") is not None else None,
    )


def _http_case(where: str, raw: object) -> HttpCase:
    c = _At(where, raw)
    c.only("name", "request", "upstream_response", "expect", "wait_for", "grpc")
    if c.has("grpc"):
        if c.has("request") or c.has("upstream_response"):
            raise SpecFormatError(f"{where}: a `grpc` case has no `request` or `upstream_response`")
        expect = _http_expect(f"{where}.expect", c.raw.get("expect", {}))
        if expect.status is not None or expect.body is not None or expect.upstream_reached is not None:
            raise SpecFormatError(f"{where}.expect: a `grpc` case checks `grpc`, logs and metrics")
        return HttpCase(
            name=c.str_("name"), request=Request("POST", "/", (), ()), upstream_response=None, expect=expect,
            wait_for=_wait_for(c), grpc=_grpc_request(f"{where}.grpc", c.raw["grpc"]),
        )  # fmt: skip
    return HttpCase(
        name=c.str_("name"),
        request=_request(f"{where}.request", c.raw.get("request", {})),
        upstream_response=(
            _upstream_response(f"{where}.upstream_response", c.raw["upstream_response"])
            if c.raw.get("upstream_response") is not None
            else None
        ),
        expect=_http_expect(f"{where}.expect", c.raw.get("expect", {})),
        wait_for=_wait_for(c),
    )


def _network_case(where: str, raw: object) -> NetworkCase:
    c = _At(where, raw)
    c.only("name", "send", "expect", "wait_for")
    e = _At(f"{where}.expect", c.raw.get("expect", {}))
    e.only("received", "received_contains", "logs", "metrics")
    if e.has("received") and e.has("received_contains"):
        raise SpecFormatError(f"{e.where}: give `received` or `received_contains`, not both")
    send = tuple(s.encode() for s in c.str_list("send"))
    if not send:
        raise SpecFormatError(f"{where}.send: at least one chunk to send is needed")
    return NetworkCase(
        name=c.str_("name"),
        send=send,
        expect=NetworkExpect(
            received=e.opt_bytes("received"),
            received_contains=e.opt_bytes("received_contains"),
            logs=_logs(e, "logs"),
            metrics=_metrics(e, "metrics"),
        ),
        wait_for=_wait_for(c),
    )


def _clusters(top: _At) -> tuple[ClusterSpec, ...]:
    clusters: list[ClusterSpec] = []
    for i, raw_c in enumerate(top.list_("clusters")):
        c = _At(top.at_index("clusters", i), raw_c)
        c.only("name", "service")
        cluster = ClusterSpec(name=c.str_("name"), service=c.str_("service"))
        if cluster.service not in SERVICE_KINDS:
            raise SpecFormatError(f"{c.where}.service: {cluster.service!r} is not one of {list(SERVICE_KINDS)}")
        if cluster.name == UPSTREAM_CLUSTER or cluster.name in {x.name for x in clusters}:
            raise SpecFormatError(f"{c.where}.name: {cluster.name!r} is reserved or given twice")
        clusters.append(cluster)
    return tuple(clusters)


def _cases(top: _At, kind: str, upstream_kind: str) -> tuple[tuple[HttpCase, ...], tuple[NetworkCase, ...]]:
    cases = top.list_("cases", required=True)
    if not cases:
        raise SpecFormatError(f"{top.where}.cases: at least one case is needed")
    http_cases: tuple[HttpCase, ...] = ()
    network_cases: tuple[NetworkCase, ...] = ()
    if kind == "http":
        http_cases = tuple(_http_case(top.at_index("cases", i), c) for i, c in enumerate(cases))
        names = [c.name for c in http_cases]
        if any(c.grpc is not None for c in http_cases) and upstream_kind != "grpc":
            raise SpecFormatError(f"{top.where}.upstream: `grpc` cases need `upstream: grpc`")
    else:
        network_cases = tuple(_network_case(top.at_index("cases", i), c) for i, c in enumerate(cases))
        names = [c.name for c in network_cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecFormatError(f"{top.where}.cases: case names must be unique, repeated: {dupes}")
    return http_cases, network_cases


def _start_failures(top: _At, plugins: tuple[PluginSpec, ...], spec_dir: Path) -> tuple[StartFailure, ...]:
    failures: list[StartFailure] = []
    for i, raw_f in enumerate(top.list_("start_failures")):
        f = _At(top.at_index("start_failures", i), raw_f)
        index = f.opt_int("plugin", 0, len(plugins) - 1) or 0
        if plugins[index].lua is not None:
            f.only("name", "plugin", "lua", "error", "logs")
            replaced = _lua_plugin(_At(f.where, {"lua": f.str_("lua")}), spec_dir, plugins[index].name)
            failures.append(
                StartFailure(
                    name=f.str_("name"), plugin=index, configuration="", logs=_logs(f, "logs"), lua=replaced.lua,
                    error=f.str_("error"),
                )
            )  # fmt: skip
            continue
        f.only("name", "plugin", "configuration", "logs")
        if not f.has("configuration"):
            raise SpecFormatError(f"{f.where}.configuration: required")
        if not f.raw.get("logs"):
            raise SpecFormatError(f"{f.where}.logs: name at least one plugin log line that shows the refusal")
        failures.append(
            StartFailure(
                name=f.str_("name"),
                plugin=index,
                configuration=_config_value(f"{f.where}.configuration", f.raw["configuration"]),
                logs=_logs(f, "logs"),
            )
        )
    return tuple(failures)


def parse(raw: object, *, key: str, path: Path) -> Spec:
    """Validate one spec document (already YAML-decoded) for the plugin `key` ("<sdk>/<name>")."""
    top = _At(str(path), raw)
    top.only(
        "description", "type", "behaviours", "plugins", "clusters", "start_logs", "cases", "start_failures",
        "envoy_broken", "node", "upstream", "bootstrap",
    )  # fmt: skip
    template = _bootstrap(top, path)
    upstream_kind = top.str_("upstream", "echo")
    if upstream_kind not in UPSTREAM_KINDS or (upstream_kind != "echo" and top.raw.get("type", "http") != "http"):
        raise SpecFormatError(f"{path}.upstream: expected one of {list(UPSTREAM_KINDS)} (HTTP specs only)")
    kind = top.str_("type", "http")
    if kind not in ("http", "network"):
        raise SpecFormatError(f"{path}.type: expected 'http' or 'network', got {kind!r}")
    default_plugin: dict[str, str] = {}
    if key.split("/", maxsplit=1)[0] == LUA_DIR:
        default_plugin = {"lua": LUA_DEFAULT_FILE, "name": key.rsplit("/", maxsplit=1)[-1]}
    # a bootstrap gives the chain itself: no default plugin stands in for it
    raw_plugins = [] if template is not None else top.list_("plugins") or [default_plugin]
    plugins = tuple(_plugin(top.at_index("plugins", i), p, key, path.parent) for i, p in enumerate(raw_plugins))
    clusters = _clusters(top)
    http_cases, network_cases = _cases(top, kind, upstream_kind)
    failures = _start_failures(top, plugins, path.parent)
    return Spec(
        key=key,
        path=path,
        description=top.str_("description"),
        type="http" if kind == "http" else "network",
        behaviours=top.str_list("behaviours"),
        plugins=plugins,
        clusters=tuple(clusters),
        start_logs=_logs(top, "start_logs"),
        http_cases=http_cases,
        network_cases=network_cases,
        start_failures=tuple(failures),
        envoy_broken=top.opt_str("envoy_broken"),
        node=_node(top),
        upstream=upstream_kind,
        bootstrap=template,
    )


def _bootstrap(top: _At, path: Path) -> str | None:
    """A spec's own bootstrap: the template's text (its plugins and node are there, not in the spec)."""
    if top.raw.get("bootstrap") is None:
        return None
    file = top.str_("bootstrap")
    tpath = (path.parent / file).resolve()
    if path.parent.resolve() not in tpath.parents or not tpath.is_file():
        raise SpecFormatError(f"{path}.bootstrap: {file!r} is not a file in {path.parent}")
    for other in ("plugins", "node", "start_failures"):
        if top.raw.get(other):
            raise SpecFormatError(f"{path}.{other}: a spec with a bootstrap gives its plugins and node there")
    template = tpath.read_text()
    for bad in re.findall(r"\$\{[^}]*\}", template):
        if not PLACEHOLDER.fullmatch(bad):
            raise SpecFormatError(f"{path}.bootstrap: unknown placeholder {bad} in {file}")
    return template


def load(path: Path) -> Spec:
    """Read and validate `<plugin dir>/spec.yaml`; its key is the dir relative to examples/filters."""
    path = path.resolve()
    try:
        key = path.parent.relative_to(FILTERS_DIR).as_posix()
    except ValueError:
        key = f"{path.parent.parent.name}/{path.parent.name}"
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecFormatError(f"{path}: not valid YAML: {exc}") from None
    return parse(raw, key=key, path=path)


def find_specs(root: Path = FILTERS_DIR) -> list[Path]:
    """Every plugin spec under examples/filters (skipping SDK-shared `_*` dirs and build outputs)."""
    out: list[Path] = []
    for path in sorted(root.glob("*/*/spec.yaml")):
        if any(part.startswith(("_", ".")) for part in path.relative_to(root).parts[:-1]):
            continue
        out.append(path)
    return out


def load_all(paths: Sequence[Path] | None = None) -> list[Spec]:
    return [load(p) for p in (find_specs() if paths is None else paths)]
