"""The operator <-> agent wire format: ECDS-style pushes of extension configs, answered by ACK or NACK.

Both sides import this module (the operator to build pushes and read replies, the agent to read pushes and
build replies); it imports only the standard library and `meshplug.errors`, and does no I/O.

Shape (JSON over HTTP, like Envoy's ECDS DiscoveryResponse / DiscoveryRequest pair, without gRPC):

    PUT {PUSH_PATH}   Authorization: Bearer <token>   Content-Type: application/json
    {"version_info": "v42", "nonce": "n-1", "resources": [ExtensionConfig, ...]}

`resources` is the FULL desired set, in chain order (the operator sorts by phase, then priority); a plugin
missing from the set is removed. Each resource names where the agent fetches the module and its sha256::

    {"name": "ns.plugin", "root_id": "add_header", "url": "https://operator:8443/modules/<sha256>.wasm",
     "sha256": "<64 hex>", "configuration": "<plugin config string>", "vm_env": {"K": "V"},
     "fail_strategy": "FAIL_CLOSE", "vm_id": "", "vm_configuration": ""}

Optional ``match`` (omitted when empty, so agents predating it accept every push that does not use it, and an
agent that does not know it refuses a push that does, instead of running the plugin on every request)::

    "match": [{"hosts": ["api.example.com", "*.example.org"], "path_prefixes": ["/v1/"], "exact_paths": ["/"]}]

Optional ``compiled`` (omitted when the operator has none): the module precompiled by the operator with the
agent's engine settings (meshplug.compiled), for agents whose artifact key -- module sha256, wasmtime version,
engine settings and CPU fingerprint, as its file name -- is exactly ``key``; any other agent ignores it and
compiles the module itself. The agent checks the downloaded file against ``sha256`` (this push is what vouches
for the machine code: it travels on the same authenticated channel as the module's digest) and the artifact's
own header and payload checksum before it loads it::

    "compiled": {"key": "<module sha256>.<wasmtime version>.<16 hex>.cwasm",
                 "url": "https://operator:8443/compiled/<key>", "sha256": "<64 hex of the file>"}

Optional ``signature`` (only for a plugin whose module must be signed: its ``verificationKey`` or the operator's
policy): what the operator verified, for the agent to verify again before it loads anything (`ModuleSignature`;
the chain is in meshplug.fetch.provenance). The module's bytes must be what the signed manifest's layer holds --
the layer itself, or, when ``layer_url`` is given, unpacked from the layer blob fetched there -- whoever served
them; otherwise the push is NACKed ``signature_invalid`` and the last good set keeps serving. A signed resource's
``compiled`` artifact is not used (the signature does not cover the operator's machine code). ``version`` says
which evidence this is: an agent refuses a version it does not know, and an agent predating the field refuses
the unknown key, so no agent loads a module whose push demands a signature without checking it::

    "signature": {"version": 1, "key": "-----BEGIN PUBLIC KEY-----...", "layout": "tag" | "bundle",
                  "payload": "<base64 of the signed bytes>", "signature": "<base64>",
                  "manifests": ["<base64 of the signed manifest>", "<base64 of the one its index picks>"],
                  "layer_url": "https://operator:8443/modules/sha256/<layer hex>"}

A Lua filter (a TrafficExtension with ``lua.inlineCode``) carries its script instead of a module: ``"lua":
{"inline_code": "<script>"}``, no ``url``; ``sha256`` is then the sha256 of the script's UTF-8 bytes (optional on
the wire, checked when given) and ``root_id``, ``vm_*`` and ``configuration`` must stay empty. An agent that does
not know ``lua`` refuses the push (unknown field) instead of running something else.

Optional placement fields (each omitted when default, for the same reason): ``"type": "NETWORK"`` (Istio's
WasmPlugin type; default HTTP: an HTTP plugin runs only in HTTP listeners' chains, a network one only in TCP
listeners'), ``"traffic": [{"mode": "SERVER", "ports": [8080]}]`` (Istio's ``match``: SERVER = inbound
listeners, CLIENT = outbound, CLIENT_AND_SERVER = both; ports of the listener, empty = any),
``"host_env_keys": ["POD_NAME"]`` (VM environment variables copied from the agent's own environment:
Istio's ``valueFrom: HOST``), ``"listeners": ["inbound"]`` (only these listeners, by name).

The plugin runs for a request only when some rule matches it: any of ``hosts`` matches the request's host
(``:authority``/Host without its port, case-insensitive; ``*.d`` matches any name ending in ``.d``) AND any of
``path_prefixes`` / ``exact_paths`` matches its path (prefix: plain string prefix of the path, query included,
as Envoy's route ``prefix``; exact: the path without its query string). An empty list matches everything.
Otherwise the request skips the plugin as if it were not in the chain.

The agent answers 200 with a Reply in both outcomes (the HTTP status only says the push was read):

    ACK:  {"ack": true,  "version_info": "v42", "nonce": "n-1", "error_detail": null,
           "plugins": [{"name": ..., "sha256": ..., "state": "running"}]}
    NACK: {"ack": false, "version_info": "v41" (the version still applied, "" if none), "nonce": "n-1",
           "error_detail": {"reason": "checksum_mismatched", "resource": "ns.plugin", "message": "..."},
           "plugins": [... the plugins still serving ...]}

401 (missing/wrong token) and 400 (unparseable push) carry a Reply-shaped NACK body too, with reason
``unauthorized`` / ``protocol_error``; nothing changes on the agent in either case. A push whose
(version_info, resources) equal the applied ones is ACKed without reloading anything.

``GET /v1/plugin_health`` on the same port, with the same authentication, answers the applied set's per-plugin
stats (`Health`), what a canary rollout compares (`meshplug.controller.rollout`): per plugin, the requests through
its chain, its failures (trap, CPU budget, memory cap) and its own 5xx local replies, and the request time
histogram (counts per bucket of ``bounds_ms``, then the overflow); counted since the set was applied:

    {"version_info": "v42", "bounds_ms": [0.5, 1, ...],
     "plugins": [{"name": "shop.hdr", "sha256": ..., "requests": 812, "failures": 0, "local_5xx": 0,
                  "latency": [0, 790, 20, ...]}]}
"""

from __future__ import annotations

import base64
import enum
import hashlib
import itertools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshplug import errors
from meshplug.fields import REQUIRED, Fields

#: where the agent answers its per-plugin health stats (GET) on its push port
HEALTH_PATH = "/v1/plugin_health"
#: where the agent accepts pushes (method PUT or POST) on its push port
PUSH_PATH = "/v1/extension_configs"
#: media type of pushes and replies
CONTENT_TYPE = "application/json"
#: version_info the agent reports for the plugin set of its static config file
STATIC_VERSION = "static"
#: the whole of an agent's trusted keys file (`meshplug agent --trusted-keys`, the agent Secret's trusted-keys.pem)
#: when the operator trusts no key: "no list of keys" said on purpose, which an agent tells apart from a file that
#: is empty, missing or unreadable (those refuse every signed module). An agent with --require-signatures refuses
#: every module under it; one without trusts the key a signed module's push names.
TRUSTED_KEYS_NONE = b"# meshplug: no trusted keys\n"

_SHA256 = re.compile(r"^[a-f0-9]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}$")


class FailStrategy(enum.StrEnum):
    """What the agent does with a request when the plugin cannot serve it (Istio's failStrategy)."""

    FAIL_CLOSE = "FAIL_CLOSE"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class PluginState(enum.StrEnum):
    RUNNING = "running"
    FAILED = "failed"


@dataclass(frozen=True)
class MatchRule:
    """When a plugin runs: hosts (any of) AND paths (any prefix or exact path); empty tuples match everything."""

    hosts: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()
    exact_paths: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {
            "hosts": list(self.hosts),
            "path_prefixes": list(self.path_prefixes),
            "exact_paths": list(self.exact_paths),
        }


class PluginType(enum.StrEnum):
    """Istio's WasmPlugin `type`: an HTTP filter or a network (L4) filter."""

    HTTP = "HTTP"
    NETWORK = "NETWORK"


class TrafficMode(enum.StrEnum):
    """Istio's `match[].mode`: CLIENT = outbound listeners, SERVER = inbound, CLIENT_AND_SERVER = both."""

    CLIENT = "CLIENT"
    SERVER = "SERVER"
    CLIENT_AND_SERVER = "CLIENT_AND_SERVER"


@dataclass(frozen=True)
class TrafficSelector:
    """One entry of Istio's `match`: a traffic direction and the listener ports (empty: every port)."""

    mode: TrafficMode = TrafficMode.CLIENT_AND_SERVER
    ports: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode.value, "ports": list(self.ports)}


@dataclass(frozen=True)
class CompiledArtifact:
    """A module precompiled by the operator: its artifact key (file name), where to get it, its file's sha256."""

    key: str
    url: str
    sha256: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "url": self.url, "sha256": self.sha256}


#: the `ModuleSignature` evidence this side writes and verifies; any other version is refused
SIGNATURE_VERSION = 1
#: caps on a signature's parts: a PEM public key, the signed bytes, one manifest
MAX_SIGNATURE_KEY = 16 * 1024
MAX_SIGNATURE_PAYLOAD = 64 * 1024
MAX_SIGNATURE_MANIFEST = 4 * 1024 * 1024
#: the signed manifest, and the manifest an image index leads to
MAX_SIGNATURE_MANIFESTS = 2


@dataclass(frozen=True)
class ModuleSignature:
    """A cosign signature the operator verified, with what binds it to the module: the agent checks it again."""

    key: str  # the verifying public key, PEM
    layout: str  # "tag" (cosign's sha256-<hex>.sig) | "bundle" (a Sigstore bundle referrer)
    payload: bytes  # the signed bytes; b"" for a bundle's message signature (over manifests[0])
    signature: bytes
    manifests: tuple[bytes, ...]  # the signed manifest's bytes (then the one its index picks)
    #: where the layer blob is, when the layer wraps the module (a tar.gz) rather than being it
    layer_url: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": SIGNATURE_VERSION,
            "key": self.key,
            "layout": self.layout,
            "payload": base64.b64encode(self.payload).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "manifests": [base64.b64encode(m).decode() for m in self.manifests],
        }
        if self.layer_url:
            out["layer_url"] = self.layer_url
        return out

    def __repr__(self) -> str:  # version_of() hashes reprs: every byte counts, so keep them all, but short
        parts = (self.key, self.layout, self.payload, self.signature, *self.manifests, self.layer_url)
        return f"ModuleSignature({hashlib.sha256(repr(parts).encode()).hexdigest()})"


@dataclass(frozen=True)
class ExtensionConfig:
    """One plugin the agent must run: the module (url + sha256) and how to configure it."""

    name: str
    root_id: str
    url: str
    sha256: str
    configuration: str = ""
    vm_env: tuple[tuple[str, str], ...] = ()
    fail_strategy: FailStrategy = FailStrategy.FAIL_CLOSE
    #: plugins with the same non-empty vm_id, module and vm_configuration share one VM (Envoy semantics)
    vm_id: str = ""
    vm_configuration: str = ""
    #: run only for requests matching one of these rules; empty: every request
    match: tuple[MatchRule, ...] = ()
    #: inline Lua (Envoy's Lua filter) instead of a wasm module; then `url` is "" and `sha256` the script's
    lua: str = ""
    #: the module precompiled by the operator (agents with the same artifact key load it instead of compiling)
    compiled: CompiledArtifact | None = None
    #: Istio's `type`: an HTTP plugin runs only in HTTP listeners' chains, a NETWORK one only in TCP listeners'
    type: PluginType = PluginType.HTTP
    #: Istio's `match`: the listeners (direction, port) the plugin runs on; empty: every listener
    traffic: tuple[TrafficSelector, ...] = ()
    #: VM environment variables whose value is the agent's own (Istio's `valueFrom: HOST`, Envoy's
    #: `environment_variables.host_env_keys`), read when the plugin is loaded; unset on the agent: left out
    host_env_keys: tuple[str, ...] = ()
    #: only these listeners (by name; an Envoy bootstrap's filters belong to their listener); empty: any
    listeners: tuple[str, ...] = ()
    #: the module must be the one this signature signs (the agent verifies it before loading anything)
    signature: ModuleSignature | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "root_id": self.root_id,
            "url": self.url,
            "sha256": self.sha256,
            "configuration": self.configuration,
            "vm_env": dict(self.vm_env),
            "fail_strategy": self.fail_strategy.value,
            "vm_id": self.vm_id,
            "vm_configuration": self.vm_configuration,
        }
        if self.lua:
            del out["url"]
            out["lua"] = {"inline_code": self.lua}
        if self.match:
            out["match"] = [m.to_json() for m in self.match]
        if self.compiled is not None:
            out["compiled"] = self.compiled.to_json()
        # omitted when default, so agents predating them accept pushes that do not use them (and refuse the rest)
        if self.type is not PluginType.HTTP:
            out["type"] = self.type.value
        if self.traffic:
            out["traffic"] = [t.to_json() for t in self.traffic]
        if self.host_env_keys:
            out["host_env_keys"] = list(self.host_env_keys)
        if self.listeners:
            out["listeners"] = list(self.listeners)
        if self.signature is not None:
            out["signature"] = self.signature.to_json()
        return out


@dataclass(frozen=True)
class Push:
    """The full desired set of extension configs, versioned; `nonce` ties the reply to this push."""

    version_info: str
    nonce: str
    resources: tuple[ExtensionConfig, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version_info": self.version_info,
            "nonce": self.nonce,
            "resources": [r.to_json() for r in self.resources],
        }


@dataclass(frozen=True)
class ErrorDetail:
    """Why a push was NACKed. `reason` is a metric label (a `MeshplugError.reason`)."""

    reason: str
    message: str
    resource: str = ""

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "resource": self.resource}


@dataclass(frozen=True)
class PluginStatus:
    """One plugin as the agent runs it after the push (or still runs it, after a NACK)."""

    name: str
    sha256: str
    state: PluginState

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256, "state": self.state.value}


@dataclass(frozen=True)
class Reply:
    """ACK (`ack=True`, `version_info` = the version now applied) or NACK (`error_detail` set)."""

    ack: bool
    version_info: str
    nonce: str
    error_detail: ErrorDetail | None = None
    plugins: tuple[PluginStatus, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "ack": self.ack,
            "version_info": self.version_info,
            "nonce": self.nonce,
            "error_detail": None if self.error_detail is None else self.error_detail.to_json(),
            "plugins": [p.to_json() for p in self.plugins],
        }


# --- encoding --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginHealth:
    """One plugin's stats since its set was applied (summed over the agent's listeners' chains and workers)."""

    name: str
    sha256: str
    requests: int
    failures: int
    local_5xx: int
    latency: tuple[int, ...]  # request time: counts per bucket of Health.bounds_ms, then the overflow

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "requests": self.requests,
            "failures": self.failures,
            "local_5xx": self.local_5xx,
            "latency": list(self.latency),
        }


@dataclass(frozen=True)
class Health:
    """The answer to GET `HEALTH_PATH`: the applied set's version and its plugins' stats."""

    version_info: str
    bounds_ms: tuple[float, ...]
    plugins: tuple[PluginHealth, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version_info": self.version_info,
            "bounds_ms": list(self.bounds_ms),
            "plugins": [p.to_json() for p in self.plugins],
        }


def decode_health(data: bytes | str) -> Health:
    obj = _fields(_load(data), "health")
    bounds = obj.array("bounds_ms")
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds):
        raise errors.ProtocolError("health.bounds_ms must be a list of numbers")
    if not all(0 < b < math.inf for b in bounds) or any(a >= b for a, b in itertools.pairwise(bounds)):
        raise errors.ProtocolError("health.bounds_ms must be increasing positive finite numbers")
    plugins = []
    for p in obj.items("plugins"):
        latency = p.array("latency")
        if len(latency) != len(bounds) + 1 or not all(type(c) is int and c >= 0 for c in latency):
            raise errors.ProtocolError(f"{p.where}.latency must be {len(bounds) + 1} counts")
        plugins.append(
            PluginHealth(
                name=p.text("name"),
                sha256=p.text("sha256", empty=True),
                requests=p.integer("requests", lo=0),
                failures=p.integer("failures", lo=0),
                local_5xx=p.integer("local_5xx", lo=0),
                latency=tuple(latency),
            )
        )
    return Health(obj.text("version_info", empty=True), tuple(float(b) for b in bounds), tuple(plugins))


def encode(message: Push | Reply | Health) -> bytes:
    return json.dumps(message.to_json(), separators=(",", ":"), sort_keys=True).encode()


def bearer(token: str) -> dict[str, str]:
    """The request headers that authenticate a push."""
    return {"authorization": f"Bearer {token}", "content-type": CONTENT_TYPE}


# --- decoding (strict: every problem is a ProtocolError naming the field) ----------------------------


def _load(data: bytes | str) -> Mapping[str, Any]:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise errors.ProtocolError("message must be a JSON object")
    return raw


def _fields(raw: Any, where: str) -> Fields:
    return Fields(raw, where, error=errors.ProtocolError)


_RESOURCE_KEYS = frozenset(
    {
        "name",
        "root_id",
        "url",
        "sha256",
        "configuration",
        "vm_env",
        "fail_strategy",
        "vm_id",
        "vm_configuration",
        "match",
        "lua",
        "compiled",
        "type",
        "traffic",
        "host_env_keys",
        "listeners",
        "signature",
    }
)
_COMPILED_KEYS = frozenset({"key", "url", "sha256"})
_ARTIFACT_KEY = re.compile(r"^([0-9a-f]{64})\.[A-Za-z0-9.+-]{1,64}\.[0-9a-f]{16}\.cwasm$")


def decode_compiled(obj: Any, where: str, sha256: str) -> CompiledArtifact:
    art = _fields(obj, where).only(*_COMPILED_KEYS)
    key, url, digest = art.text("key"), art.text("url"), art.text("sha256")
    m = _ARTIFACT_KEY.match(key)
    if m is None or m.group(1) != sha256:
        raise errors.ProtocolError(f"{where}.key {key!r} is not an artifact key of the module sha256 {sha256}")
    if not url.startswith(("http://", "https://")):
        raise errors.ProtocolError(f"{where}.url {url!r}: scheme must be http or https")
    if not _SHA256.match(digest):
        raise errors.ProtocolError(f"{where}.sha256 {digest!r} is not 64 lower-case hex digits")
    return CompiledArtifact(key=key, url=url, sha256=digest)


_SIGNATURE_KEYS = ("version", "key", "layout", "payload", "signature", "manifests", "layer_url")


def _base64(value: Any, where: str, cap: int, *, empty: bool = False) -> bytes:
    if not isinstance(value, str) or not (value or empty):
        raise errors.ProtocolError(f"{where} must be a base64 string, got {type(value).__name__}")
    try:
        data = base64.b64decode(value, validate=True)
    except ValueError:
        raise errors.ProtocolError(f"{where} is not base64") from None
    if len(data) > cap:
        raise errors.ProtocolError(f"{where} is {len(data)} bytes, over the cap of {cap}")
    return data


def decode_signature(obj: Any, where: str) -> ModuleSignature:
    f = _fields(obj, where)
    version = f.integer("version", lo=1)
    if version != SIGNATURE_VERSION:  # before anything else: a newer operator's evidence is never half-read
        raise errors.ProtocolError(
            f"{where}.version {version}: this agent verifies signature evidence version {SIGNATURE_VERSION} only, "
            "and does not load a module whose signature it cannot check"
        )
    f.only(*_SIGNATURE_KEYS)
    key = f.text("key")
    if len(key) > MAX_SIGNATURE_KEY:
        raise errors.ProtocolError(f"{where}.key is {len(key)} characters, over the cap of {MAX_SIGNATURE_KEY}")
    manifests = f.array("manifests", REQUIRED, max_items=MAX_SIGNATURE_MANIFESTS)
    if not manifests:
        raise errors.ProtocolError(f"{where}.manifests: the signed manifest is required")
    layer_url = f.text("layer_url", "", empty=True)
    if layer_url and not layer_url.startswith(("http://", "https://")):
        raise errors.ProtocolError(f"{where}.layer_url {layer_url!r}: scheme must be http or https")
    return ModuleSignature(
        key=key,
        layout=f.choice("layout", ("tag", "bundle")),
        payload=_base64(f.value("payload", ""), f.at("payload"), MAX_SIGNATURE_PAYLOAD, empty=True),
        signature=_base64(f.value("signature"), f.at("signature"), MAX_SIGNATURE_PAYLOAD),
        manifests=tuple(_base64(m, f"{where}.manifests[{i}]", MAX_SIGNATURE_MANIFEST) for i, m in enumerate(manifests)),
        layer_url=layer_url,
    )


_MATCH_KEYS = frozenset({"hosts", "path_prefixes", "exact_paths"})
_MAX_MATCH = 64


def decode_match(obj: Any, where: str) -> tuple[MatchRule, ...]:
    if not isinstance(obj, list) or len(obj) > _MAX_MATCH:
        raise errors.ProtocolError(f"{where} must be a list of at most {_MAX_MATCH} rules")
    rules: list[MatchRule] = []
    for i, raw in enumerate(obj):
        at = _fields(raw, f"{where}[{i}]").only(*_MATCH_KEYS)
        rule = MatchRule(
            hosts=tuple(h.lower() for h in at.strings("hosts", max_items=_MAX_MATCH)),
            path_prefixes=at.strings("path_prefixes", max_items=_MAX_MATCH),
            exact_paths=at.strings("exact_paths", max_items=_MAX_MATCH),
        )
        if not all(p.startswith("/") for p in (*rule.path_prefixes, *rule.exact_paths)):
            raise errors.ProtocolError(f"{at.where}: paths must start with /")
        if not (rule.hosts or rule.path_prefixes or rule.exact_paths):
            raise errors.ProtocolError(f"{at.where} matches everything: leave it out")
        rules.append(rule)
    return tuple(rules)


def decode_extension_config(obj: Any, where: str) -> ExtensionConfig:
    res = _fields(obj, where).only(*_RESOURCE_KEYS)
    name = res.text("name")
    if not _NAME.match(name):
        raise errors.ProtocolError(f"{where}.name {name!r} is not a valid plugin name")
    sha256 = res.text("sha256", "", empty=True)
    if sha256 and not _SHA256.match(sha256):
        raise errors.ProtocolError(f"{where}.sha256 {sha256!r} is not 64 lower-case hex digits")
    if "lua" in res.raw:
        return _decode_lua(res, name, sha256)
    url = res.text("url")
    if not url.startswith(("http://", "https://", "file://")):
        form = " (a file url is file:///path)" if url.lower().startswith("file:") else ""
        raise errors.ProtocolError(f"{where}.url {url!r}: must be an http://, https:// or file:// url{form}")
    if not sha256 and not url.startswith("file://"):
        raise errors.ProtocolError(f"{where}.sha256 is required for {url.split(':', 1)[0]} modules")
    if not sha256 and res.has("signature"):
        raise errors.ProtocolError(f"{where}.sha256 is required for a signed module")
    return ExtensionConfig(
        name=name,
        root_id=res.text("root_id", "", empty=True),
        url=url,
        sha256=sha256,
        configuration=res.text("configuration", "", empty=True),
        vm_env=tuple(sorted(res.text_map("vm_env").items())),
        fail_strategy=FailStrategy(res.choice("fail_strategy", [s.value for s in FailStrategy], "FAIL_CLOSE")),
        vm_id=res.text("vm_id", "", empty=True),
        vm_configuration=res.text("vm_configuration", "", empty=True),
        match=decode_match(res.value("match", []), f"{where}.match"),
        compiled=decode_compiled(res.raw["compiled"], f"{where}.compiled", sha256) if res.has("compiled") else None,
        **_placement(res),
        signature=decode_signature(res.raw["signature"], f"{where}.signature") if res.has("signature") else None,
    )


_MAX_TRAFFIC = 64
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _placement(res: Fields) -> dict[str, Any]:
    """The fields saying where a plugin runs and what it reads from the agent: type, traffic, host_env_keys,
    listeners (each optional)."""
    traffic: list[TrafficSelector] = []
    for item in res.items("traffic")[: _MAX_TRAFFIC + 1]:
        item.only("mode", "ports")
        mode = item.choice("mode", [m.value for m in TrafficMode], TrafficMode.CLIENT_AND_SERVER.value)
        ports = item.array("ports")
        if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports):
            raise item.fail("ports", "a list of port numbers (1-65535)")
        traffic.append(TrafficSelector(TrafficMode(mode), tuple(ports)))
    if len(traffic) > _MAX_TRAFFIC:
        raise res.fail("traffic", f"a list of at most {_MAX_TRAFFIC} selectors")
    keys = res.strings("host_env_keys")
    if not all(_ENV_KEY.match(k) for k in keys):
        raise res.fail("host_env_keys", "a list of environment variable names")
    return {
        "type": PluginType(res.choice("type", [t.value for t in PluginType], PluginType.HTTP.value)),
        "traffic": tuple(traffic),
        "host_env_keys": keys,
        "listeners": res.strings("listeners"),
    }


def lua_sha256(code: str) -> str:
    """The digest a Lua resource is known by: sha256 of the script's UTF-8 bytes."""
    return hashlib.sha256(code.encode()).hexdigest()


def _decode_lua(res: Fields, name: str, sha256: str) -> ExtensionConfig:
    where, obj = res.where, res.raw
    if "url" in obj:
        raise errors.ProtocolError(f"{where}: give url (a wasm module) or lua (inline code), not both")
    code = _fields(obj["lua"], f"{where}.lua").only("inline_code").text("inline_code")
    digest = lua_sha256(code)
    if sha256 and sha256 != digest:
        raise errors.ProtocolError(f"{where}.sha256 {sha256} is not the sha256 of lua.inline_code ({digest})")
    for key in ("root_id", "configuration", "vm_id", "vm_configuration", "compiled", "signature"):
        if obj.get(key):
            raise errors.ProtocolError(f"{where}.{key} does not apply to a lua filter")
    if obj.get("vm_env") or obj.get("host_env_keys"):
        raise errors.ProtocolError(f"{where}.vm_env does not apply to a lua filter")
    placement = _placement(res)
    if placement["type"] is not PluginType.HTTP:
        raise errors.ProtocolError(f"{where}.type: a lua filter is an HTTP filter")
    return ExtensionConfig(
        name=name,
        root_id="",
        url="",
        sha256=digest,
        match=decode_match(obj.get("match", []), f"{where}.match"),
        lua=code,
        **placement,
    )


def decode_push(data: bytes | str) -> Push:
    obj = _fields(_load(data), "push").only("version_info", "nonce", "resources")
    version = obj.text("version_info")
    nonce = obj.text("nonce", empty=True)
    resources_raw = obj.array("resources", REQUIRED)
    resources = tuple(decode_extension_config(r, f"push.resources[{i}]") for i, r in enumerate(resources_raw))
    names = [r.name for r in resources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise errors.ProtocolError(f"push.resources: duplicate name(s) {', '.join(dup)}")
    return Push(version_info=version, nonce=nonce, resources=resources)


def decode_reply(data: bytes | str) -> Reply:
    obj = _fields(_load(data), "reply")
    ack = obj.flag("ack")
    detail: ErrorDetail | None = None
    if obj.has("error_detail"):
        d = obj.sub("error_detail")
        detail = ErrorDetail(
            reason=d.text("reason"), message=d.text("message", empty=True), resource=d.text("resource", "", empty=True)
        )
    if not ack and detail is None:
        raise errors.ProtocolError("reply: a NACK must carry error_detail")
    plugins = [
        PluginStatus(
            name=p.text("name"),
            sha256=p.text("sha256", empty=True),
            state=PluginState(p.choice("state", [s.value for s in PluginState])),
        )
        for p in obj.items("plugins")
    ]
    return Reply(
        ack=ack,
        version_info=obj.text("version_info", empty=True),
        nonce=obj.text("nonce", empty=True),
        error_detail=detail,
        plugins=tuple(plugins),
    )


def raise_for_nack(reply: Reply) -> Reply:
    """Return an ACK unchanged; turn a NACK into `PushError` (reason = the agent's reason)."""
    if reply.ack:
        return reply
    assert reply.error_detail is not None
    d = reply.error_detail
    where = f" ({d.resource})" if d.resource else ""
    raise errors.PushError(f"agent NACKed push {reply.nonce!r}{where}: {d.message}", reason=d.reason)
