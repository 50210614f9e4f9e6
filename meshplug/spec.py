"""WasmPlugin / TrafficExtension custom resource body -> frozen `PluginSpec`; every default is decided here.

Called by the controller on the first line of each handler (and by the admission webhook and `meshplug`
tooling): `parse(body)` turns the untyped dict kopf hands over into a `PluginSpec` or raises
`errors.SpecError` with a one-line message naming the field. The API server's schema and CEL rules
(crds/wasmplugins.meshplug.io.yaml) already rejected most bad input; this module re-checks what it relies on,
because a CR may have been stored before a rule existed.

Istio semantics (extensions.istio.io WasmPlugin) carried over:
- url without a scheme is ``oci://``; schemes oci, http, https, file.
- ``sha256`` is the sha256 of the module's wasm bytes for every scheme (Istio ignores it for file://; meshplug
  checks it). For ``oci://`` the fetcher also accepts the image manifest digest there (Istio's meaning), so an
  Istio manifest ports unchanged; an ``@sha256:`` in the url pins the manifest and is checked against it, and
  may differ from ``sha256`` (one pins the manifest, the other the bytes). Setting ``sha256`` makes the
  default pull policy IfNotPresent, as in Istio.
- ``imagePullPolicy`` unset: IfNotPresent, except an OCI reference tagged literally ``:latest``: Always (an
  untagged reference is IfNotPresent, as in Istio). Always pulls again when the resource's spec changes (its
  generation), never on a timer (`meshplug.controller.reconcile`; the operator's ``--reresolve-interval`` is an
  opt-in on top).
- ``targetRef`` (singular, deprecated in Istio, still accepted by it) is read as a one-entry ``targetRefs``.
- ``verificationKey`` is accepted and stored (`PluginSpec.verification_key`); verifying signatures with it is
  the workflow's (meshplug.fetch) job.
- ``pluginName`` is Envoy's root id; Envoy's plugin name is ``<namespace>.<name>``.
- ``failStrategy`` unset: FAIL_CLOSE. ``type`` unset: HTTP. ``match`` empty: every traffic direction.
- ``vmConfig.env[].valueFrom`` unset: INLINE.
- ``priority`` unset sorts after any explicit value within its phase.
meshplug's own: ``dataPlane`` (istio | agent, default istio), ``istioDelivery`` (native | configmap; unset: the
operator's ``--istio-delivery``), ``pluginConfigSchema`` (a JSON Schema the
``pluginConfig`` must satisfy; `check_plugin_config` is the one check, used here and by the webhook) and
``matchRules`` (HTTP only): when set, the plugin runs only for requests matching a rule, with the first matching
rule's ``pluginConfig`` (else the plugin's). A rule matches when its ``hosts`` (any; ``*.example.com`` matches
subdomains; the port of ``:authority`` is ignored; case-insensitive) AND its ``paths`` (any; ``prefix`` as an
Envoy route prefix, ``exact`` ignoring the query string) match; an empty list matches everything. A rule's own
``pluginConfig`` needs the istio data plane (the agent's protocol carries one configuration per plugin).
``rollout`` (agent data plane; `Rollout`): canary steps for updates -- each step's pods (``percent`` of the
selected pods and/or those matching its ``selector``) run the new version while the rest keep the stable one,
for ``holdSeconds`` with the new version's per-plugin failure ratio and request time within ``analysis``' bounds
of the stable's; `meshplug.controller.rollout` decides, `meshplug.controller.delivery.agent` delivers.

TrafficExtension (Istio 1.30's unified kind, ``meshplug.io/v1alpha1`` here too): the same targeting (selector |
targetRefs), ``phase`` (``UNSPECIFIED`` is the end of the chain, like WasmPlugin's ``UNSPECIFIED_PHASE``),
``priority`` and ``match`` at the top, meshplug's ``dataPlane`` and ``matchRules`` beside them, and exactly one
of ``wasm`` (WasmPlugin's module fields with their meaning and defaults, ``pluginConfigSchema`` included) or
``lua.inlineCode`` (at most 64 KiB; `PluginSpec.lua`, no module: scheme INLINE, ``sha256`` the script's). Both
kinds share one chain order per workload: phase, priority, creation time, name.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from meshplug import errors, limits
from meshplug.fields import REQUIRED, Fields

API_GROUP = "meshplug.io"
API_VERSION = "v1alpha1"
KIND = "WasmPlugin"
PLURAL = "wasmplugins"
KIND_TRAFFIC_EXTENSION = "TrafficExtension"
PLURAL_TRAFFIC_EXTENSION = "trafficextensions"
#: every kind the operator reconciles -> its plural
PLURALS = {KIND: PLURAL, KIND_TRAFFIC_EXTENSION: PLURAL_TRAFFIC_EXTENSION}


def key_name(kind: str, name: str) -> str:
    """The name part of the operator's work-queue key of a resource: its name for a WasmPlugin, ``<Kind>/<name>``
    for another kind (a Kubernetes name has no ``/``), so a WasmPlugin and a TrafficExtension may share a name."""
    return name if kind == KIND else f"{kind}/{name}"


def split_key_name(key_name: str) -> tuple[str, str]:
    """`key_name`'s inverse: (kind, name)."""
    kind, sep, name = key_name.partition("/")
    return (kind, name) if sep else (KIND, key_name)


#: TrafficExtension.wasm fields (WasmPlugin's module fields); everything else of WasmPlugin's spec is top-level
WASM_FIELDS = (
    "url", "sha256", "imagePullPolicy", "imagePullSecret", "pluginConfig", "pluginConfigSchema", "pluginName",
    "failStrategy", "vmConfig", "type", "verificationKey",
)  # fmt: skip
TOP_FIELDS = (
    "selector", "targetRefs", "phase", "priority", "match", "dataPlane", "istioDelivery", "matchRules", "rollout",
)  # fmt: skip

_SHA256 = re.compile(r"^[a-f0-9]{64}$")
HOST_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
PATH_PATTERN = r"^/[^?#\s]*$"
_HOST = re.compile(HOST_PATTERN)
_PATH = re.compile(PATH_PATTERN)
_URL_DIGEST = re.compile(r"@sha256:([a-f0-9]{64})$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class Scheme(enum.StrEnum):
    OCI = "oci"
    HTTP = "http"
    HTTPS = "https"
    FILE = "file"
    INLINE = "inline"  # a TrafficExtension's lua: the script is in the resource, nothing is fetched


class DataPlane(enum.StrEnum):
    ISTIO = "istio"
    AGENT = "agent"


class Phase(enum.StrEnum):
    """Where in the filter chain: UNSPECIFIED = end of chain (before the router)."""

    UNSPECIFIED = "UNSPECIFIED_PHASE"
    AUTHN = "AUTHN"
    AUTHZ = "AUTHZ"
    STATS = "STATS"


class FailStrategy(enum.StrEnum):
    FAIL_CLOSE = "FAIL_CLOSE"
    FAIL_OPEN = "FAIL_OPEN"
    FAIL_RELOAD = "FAIL_RELOAD"


class PluginType(enum.StrEnum):
    HTTP = "HTTP"
    NETWORK = "NETWORK"


class PullPolicy(enum.StrEnum):
    IF_NOT_PRESENT = "IfNotPresent"
    ALWAYS = "Always"


class IstioDelivery(enum.StrEnum):
    """How the istio data plane gets the module: Istio's own resource over ECDS, or EnvoyFilter + ConfigMap."""

    NATIVE = "native"
    CONFIGMAP = "configmap"


class MatchMode(enum.StrEnum):
    CLIENT = "CLIENT"  # outbound traffic of the workload
    SERVER = "SERVER"  # inbound traffic of the workload
    CLIENT_AND_SERVER = "CLIENT_AND_SERVER"


class EnvSource(enum.StrEnum):
    INLINE = "INLINE"
    HOST = "HOST"


@dataclass(frozen=True)
class EnvVar:
    name: str
    source: EnvSource
    value: str  # "" for HOST


@dataclass(frozen=True)
class TrafficMatch:
    """One entry of ``match``: a direction and optional ports (empty = every port)."""

    mode: MatchMode
    ports: tuple[int, ...]


@dataclass(frozen=True)
class MatchRule:
    """One entry of ``matchRules``: hosts (any of) AND paths (any of); an empty tuple matches everything."""

    hosts: tuple[str, ...]  # lower-case; "*.example.com" matches any subdomain
    path_prefixes: tuple[str, ...]
    exact_paths: tuple[str, ...]
    plugin_config: str | None  # canonical JSON; None: the plugin's own pluginConfig


@dataclass(frozen=True)
class RolloutStep:
    """One step of a canary rollout: the selected pods that run the new version during it (with the earlier steps'
    pods): those matching ``selector`` and ``percent`` of all (rounded up, at least one)."""

    percent: int | None  # 1..100
    selector: tuple[tuple[str, str], ...]  # sorted matchLabels; empty: none by labels


@dataclass(frozen=True)
class Rollout:
    """``spec.rollout`` (agent data plane): how an update reaches the selected pods -- step by step, each held
    while the new version's per-plugin failure ratio and latency stay within bounds of the stable version's."""

    steps: tuple[RolloutStep, ...]
    hold_s: int
    min_requests: int
    max_failure_ratio_increase: float  # canary failure ratio <= stable's + this
    latency_percentile: float  # compared quantile of the request time, in percent
    max_latency_ratio: float  # canary quantile <= max(stable's * this, stable's + latency_slack_ms)
    latency_slack_ms: float


@dataclass(frozen=True)
class TargetRef:
    group: str
    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class PluginSpec:
    """A WasmPlugin after defaulting. Hashable and comparable; no field is ever None unless it says so."""

    namespace: str
    name: str
    generation: int
    url: str  # with its scheme, always
    scheme: Scheme
    sha256: str | None  # hex sha256 of the module's bytes (for oci also accepted: the manifest digest)
    pull_policy: PullPolicy
    pull_secret: str | None
    plugin_config: str  # canonical JSON text ("" when unset), what the plugin receives as configuration
    config_schema: str | None  # canonical JSON text of pluginConfigSchema
    root_id: str  # pluginName ("" = the module's default root context)
    phase: Phase
    priority: int | None
    fail_strategy: FailStrategy
    env: tuple[EnvVar, ...]
    match: tuple[TrafficMatch, ...]  # never empty: default is one CLIENT_AND_SERVER entry on every port
    type: PluginType
    data_plane: DataPlane
    selector: tuple[tuple[str, str], ...]  # sorted matchLabels; empty = every workload of the namespace
    target_refs: tuple[TargetRef, ...]
    match_rules: tuple[MatchRule, ...] = ()  # empty: every request; else only requests matching a rule
    kind: str = KIND  # WasmPlugin or TrafficExtension
    lua: str | None = None  # a TrafficExtension's lua.inlineCode (then url is "" and scheme INLINE)
    istio_delivery: IstioDelivery | None = None  # None: the operator's default
    verification_key: str = ""  # stored and reported; enforced by the signature checks of the fetch stage
    rollout: Rollout | None = None  # spec.rollout: canary steps for updates (agent data plane)

    @property
    def envoy_name(self) -> str:
        """Envoy's plugin name, as Istio names it: ``<namespace>.<name>``."""
        return f"{self.namespace}.{self.name}"

    @property
    def selector_labels(self) -> dict[str, str]:
        return dict(self.selector)

    @property
    def plugin_config_value(self) -> Any:
        return json.loads(self.plugin_config) if self.plugin_config else None


def canonical_json(value: Any) -> str:
    """Stable JSON text: sorted keys, no spaces (equal configs render byte-identical)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_plugin_config(config: Any, schema: Mapping[str, Any]) -> None:
    """Raise SpecError unless ``schema`` is a valid JSON Schema and ``config`` satisfies it.

    ``config`` is None when pluginConfig is unset. The message names the failing path and rule.
    """
    schema = dict(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise errors.SpecError(
            f"pluginConfigSchema is not a valid JSON Schema: {exc.message}", reason="InvalidPluginConfigSchema"
        ) from None
    validator = cls(schema)
    found = sorted(validator.iter_errors({} if config is None else config), key=lambda e: list(e.absolute_path))
    if found:
        first = found[0]
        where = "pluginConfig" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in first.absolute_path)
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise errors.SpecError(f"{where}: {first.message}{more}", reason="InvalidPluginConfig")


def _fields(raw: Any, where: str = "spec") -> Fields:
    return Fields(raw, where, error=errors.SpecError, optional=True)


def _str(spec: Mapping[str, Any], key: str, where: str = "spec") -> str:
    """A string field of a spec: absent, null and "" all mean unset (Istio's proto3 reading)."""
    return _fields(spec, where).text(key, "", empty=True)


def _enum(
    spec: Mapping[str, Any],
    key: str,
    cls: type[enum.StrEnum],
    default: enum.StrEnum,
    *,
    unset: str = "",
    where: str = "spec",
) -> Any:
    raw = _str(spec, key, where)
    if raw in ("", unset):
        return default
    try:
        return cls(raw)
    except ValueError:
        allowed = ", ".join(m.value for m in cls)
        raise errors.SpecError(f"{where}.{key}: {raw!r} is not one of {allowed}") from None


def normalise_url(raw: str) -> tuple[str, Scheme]:
    """Add the default ``oci://`` scheme and check the scheme is one we fetch from."""
    if not raw:
        raise errors.SpecError("spec.url is required")
    if any(c.isspace() for c in raw):
        raise errors.SpecError(f"spec.url {raw!r} contains whitespace")
    m = _SCHEME.match(raw)
    if m is None:
        return f"oci://{raw}", Scheme.OCI
    try:
        scheme = Scheme(m.group(1).lower())
    except ValueError:
        scheme = Scheme.INLINE
    if scheme is Scheme.INLINE:
        raise errors.SpecError(f"spec.url {raw!r}: scheme {m.group(1)!r} is not oci, http, https or file")
    return raw, scheme


def oci_tag(url: str, *, explicit: bool = False) -> str | None:
    """The tag of an ``oci://`` reference; None with a digest; without a tag ``latest`` (what a registry
    resolves), or None when ``explicit`` (only a written tag counts)."""
    ref = url.removeprefix("oci://")
    if "@" in ref:
        return None
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return None if explicit else "latest"


def _pull_policy(spec: Mapping[str, Any], url: str, scheme: Scheme, *, pinned: bool) -> PullPolicy:
    raw = _str(spec, "imagePullPolicy")
    if raw not in ("", "UNSPECIFIED_POLICY"):
        return _enum(spec, "imagePullPolicy", PullPolicy, PullPolicy.IF_NOT_PRESENT)  # type: ignore[no-any-return]
    if scheme is Scheme.OCI and oci_tag(url, explicit=True) == "latest" and not pinned:
        return PullPolicy.ALWAYS
    return PullPolicy.IF_NOT_PRESENT


def _sha256(spec: Mapping[str, Any], url: str) -> str | None:
    given = _str(spec, "sha256")
    if given and not _SHA256.match(given):
        raise errors.SpecError(f"spec.sha256 {given!r} is not 64 lowercase hex digits")
    in_url = _URL_DIGEST.search(url)
    if "@sha256:" in url and in_url is None:
        raise errors.SpecError(f"spec.url {url!r}: @sha256: must be followed by 64 lowercase hex digits")
    return given or None


def _env(spec: Mapping[str, Any]) -> tuple[EnvVar, ...]:
    vm = _fields(spec).sub("vmConfig")
    out: list[EnvVar] = []
    seen: set[str] = set()
    for item in vm.items("env"):
        if len(vm.raw["env"]) > limits.MAX_VM_ENV_VARS:
            raise errors.SpecError(
                f"spec.vmConfig.env has {len(vm.raw['env'])} entries; at most {limits.MAX_VM_ENV_VARS}"
            )
        name = item.text("name")
        if name in seen:
            raise errors.SpecError(f"spec.vmConfig.env: duplicate name {name!r}")
        seen.add(name)
        source = _enum(item.raw, "valueFrom", EnvSource, EnvSource.INLINE, where=item.where)
        value = item.text("value", "", empty=True)
        if source is EnvSource.HOST and value:
            raise errors.SpecError(f"{item.where} ({name}): value may only be set when valueFrom is INLINE")
        out.append(EnvVar(name=name, source=source, value=value))
    return tuple(out)


def _match(spec: Mapping[str, Any]) -> tuple[TrafficMatch, ...]:
    out: list[TrafficMatch] = []
    for item in _fields(spec).items("match"):
        mode = _enum(item.raw, "mode", MatchMode, MatchMode.CLIENT_AND_SERVER, unset="UNDEFINED", where=item.where)
        ports = [port.integer("number", lo=1, hi=65535) for port in item.items("ports")]
        out.append(TrafficMatch(mode=mode, ports=tuple(sorted(set(ports)))))
    return tuple(out) or (TrafficMatch(mode=MatchMode.CLIENT_AND_SERVER, ports=()),)


def _match_rules(spec: Mapping[str, Any], schema: Mapping[str, Any] | None) -> tuple[MatchRule, ...]:
    out: list[MatchRule] = []
    for rule in _fields(spec).items("matchRules"):
        item, where = rule.raw, rule.where
        if len(spec["matchRules"]) > limits.MAX_MATCH_RULES:
            raise errors.SpecError(
                f"spec.matchRules has {len(spec['matchRules'])} entries; at most {limits.MAX_MATCH_RULES}"
            )
        hosts = rule.array("hosts", max_items=limits.MAX_MATCH_RULE_ITEMS)
        paths = rule.array("paths", max_items=limits.MAX_MATCH_RULE_ITEMS)
        if not hosts and not paths:
            raise errors.SpecError(f"{where} needs hosts or paths (a rule matching everything is no rule)")
        for host in hosts:
            if not isinstance(host, str) or not _HOST.match(host):
                raise errors.SpecError(f"{where}.hosts: {host!r} is not a lower-case host name (or *.domain)")
        prefixes: list[str] = []
        exact: list[str] = []
        for path in paths:
            kinds = sorted(set(path) & {"prefix", "exact"}) if isinstance(path, Mapping) else []
            if not isinstance(path, Mapping) or len(kinds) != 1 or len(path) != 1:
                raise errors.SpecError(f"{where}.paths: {path!r} must set exactly one of prefix or exact")
            value = path[kinds[0]]
            if not isinstance(value, str) or not _PATH.match(value):
                raise errors.SpecError(f"{where}.paths: {value!r} must start with / (no query, no spaces)")
            (prefixes if kinds[0] == "prefix" else exact).append(value)
        config = item.get("pluginConfig")
        if config is not None and not isinstance(config, Mapping):
            raise errors.SpecError(f"{where}.pluginConfig must be an object")
        if config is not None and schema is not None:
            try:
                check_plugin_config(config, schema)
            except errors.SpecError as exc:
                raise errors.SpecError(f"{where}.{exc.message}", reason=exc.reason) from None
        out.append(
            MatchRule(
                hosts=tuple(dict.fromkeys(hosts)),
                path_prefixes=tuple(dict.fromkeys(prefixes)),
                exact_paths=tuple(dict.fromkeys(exact)),
                plugin_config=canonical_json(config) if config is not None else None,
            )
        )
    return tuple(out)


def _selector(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    labels = _fields(spec).sub("selector").text_map("matchLabels")
    return tuple(sorted(labels.items()))


def _target_refs(spec: Mapping[str, Any], namespace: str) -> tuple[TargetRef, ...]:
    fields = _fields(spec)
    refs = fields.items("targetRefs")
    if fields.has("targetRef"):  # Istio's deprecated singular form
        if refs:
            raise errors.SpecError("only one of spec.targetRef (deprecated) or spec.targetRefs can be set")
        refs = [fields.sub("targetRef")]
    if len(refs) > limits.MAX_TARGET_REFS:
        raise errors.SpecError(f"spec.targetRefs has {len(refs)} entries; at most {limits.MAX_TARGET_REFS}")
    return tuple(
        TargetRef(
            group=r.text("group", "", empty=True),
            kind=r.text("kind", "", empty=True),
            name=r.text("name", "", empty=True),
            namespace=r.text("namespace", "", empty=True) or namespace,
        )
        for r in refs
    )


def _rollout(spec: Mapping[str, Any]) -> Rollout | None:
    """``spec.rollout`` -> Rollout (None: unset, every update goes to every pod at once)."""
    fields = _fields(spec)
    if not fields.has("rollout"):
        return None
    raw = fields.sub("rollout", "steps", "holdSeconds", "analysis")
    items = raw.items("steps", default=REQUIRED)
    if not 1 <= len(items) <= limits.ROLLOUT_MAX_STEPS:
        raise errors.SpecError(f"spec.rollout.steps must hold 1..{limits.ROLLOUT_MAX_STEPS} steps, got {len(items)}")
    steps = []
    for item in items:
        item.only("percent", "selector")
        percent = item.opt_integer("percent", lo=1, hi=100)
        labels = item.sub("selector", "matchLabels").text_map("matchLabels")
        if percent is None and not labels:
            raise errors.SpecError(f"{item.where}: set percent or selector.matchLabels (or both)")
        steps.append(RolloutStep(percent=percent, selector=tuple(sorted(labels.items()))))
    analysis = raw.sub(
        "analysis", "minRequests", "maxFailureRatioIncrease", "latencyPercentile", "maxLatencyRatio", "latencySlackMs"
    )
    increase = analysis.number("maxFailureRatioIncrease", limits.ROLLOUT_DEFAULT_MAX_FAILURE_RATIO_INCREASE)
    if not 0 <= increase <= 1:
        raise analysis.fail("maxFailureRatioIncrease", "a number in 0..1")
    percentile = analysis.number("latencyPercentile", limits.ROLLOUT_DEFAULT_LATENCY_PERCENTILE, positive=True)
    if percentile > 100:
        raise analysis.fail("latencyPercentile", "a number in (0, 100]")
    ratio = analysis.number("maxLatencyRatio", limits.ROLLOUT_DEFAULT_MAX_LATENCY_RATIO)
    if ratio < 1:
        raise analysis.fail("maxLatencyRatio", "a number >= 1")
    slack = analysis.number("latencySlackMs", limits.ROLLOUT_DEFAULT_LATENCY_SLACK_MS)
    if slack < 0:
        raise analysis.fail("latencySlackMs", "a number >= 0")
    return Rollout(
        steps=tuple(steps),
        hold_s=raw.integer("holdSeconds", limits.ROLLOUT_DEFAULT_HOLD_S, lo=1, hi=limits.ROLLOUT_MAX_HOLD_S),
        min_requests=analysis.integer("minRequests", limits.ROLLOUT_DEFAULT_MIN_REQUESTS, lo=0),
        max_failure_ratio_increase=increase,
        latency_percentile=percentile,
        max_latency_ratio=ratio,
        latency_slack_ms=slack,
    )


def _priority(spec: Mapping[str, Any]) -> int | None:
    return _fields(spec).opt_integer("priority", lo=-(2**31 - 1), hi=2**31 - 1)


def parse(body: Mapping[str, Any]) -> PluginSpec:
    """A WasmPlugin or TrafficExtension object (``metadata`` + ``spec``, by ``kind``; WasmPlugin when absent) ->
    PluginSpec. Raises SpecError naming the field."""
    if body.get("kind") == KIND_TRAFFIC_EXTENSION:
        return parse_traffic_extension(body)
    return _parse_wasm(body, body.get("spec"))


def _identity(body: Mapping[str, Any], spec: object) -> tuple[str, str, int]:
    meta = body.get("metadata") or {}
    if not isinstance(spec, Mapping):
        raise errors.SpecError("spec is missing")
    namespace = str(meta.get("namespace") or "")
    name = str(meta.get("name") or "")
    if not namespace or not name:
        raise errors.SpecError("metadata.name and metadata.namespace are required")
    return namespace, name, int(meta.get("generation") or 0)


def parse_traffic_extension(body: Mapping[str, Any]) -> PluginSpec:
    """A TrafficExtension -> PluginSpec: ``wasm`` parsed as a WasmPlugin's module fields (messages name
    ``spec.wasm.<field>``), or ``lua`` as an inline script."""
    raw = body.get("spec")
    namespace, name, generation = _identity(body, raw)
    assert isinstance(raw, Mapping)
    unknown = sorted(set(raw) - {*TOP_FIELDS, "wasm", "lua"})
    if unknown:
        raise errors.SpecError(f"spec: unknown field(s) {', '.join(unknown)}")
    wasm, lua = raw.get("wasm"), raw.get("lua")
    if (wasm is None) == (lua is None):
        raise errors.SpecError("exactly one of spec.wasm or spec.lua must be set")
    top = {k: raw[k] for k in TOP_FIELDS if k in raw}
    if top.get("phase") == "UNSPECIFIED":  # Istio's TrafficExtension spelling
        top["phase"] = Phase.UNSPECIFIED.value
    if wasm is not None:
        if not isinstance(wasm, Mapping):
            raise errors.SpecError("spec.wasm must be an object")
        extra = sorted(set(wasm) - set(WASM_FIELDS))
        if extra:
            raise errors.SpecError(f"spec.wasm: unknown field(s) {', '.join(extra)}")
        try:
            plugin = _parse_wasm(body, {**top, **wasm})
        except errors.SpecError as exc:
            message = exc.message
            for field in WASM_FIELDS:
                message = message.replace(f"spec.{field}", f"spec.wasm.{field}")
            raise errors.SpecError(message, reason=exc.reason) from None
        return dataclasses.replace(plugin, kind=KIND_TRAFFIC_EXTENSION)
    if not isinstance(lua, Mapping) or set(lua) != {"inlineCode"}:
        raise errors.SpecError("spec.lua must be an object with exactly inlineCode")
    code = lua["inlineCode"]
    if not isinstance(code, str) or not code:
        raise errors.SpecError("spec.lua.inlineCode must be a non-empty string")
    size = len(code.encode())
    if size > limits.MAX_LUA_CODE_BYTES:
        raise errors.SpecError(f"spec.lua.inlineCode is {size} bytes; at most {limits.MAX_LUA_CODE_BYTES}")
    data_plane, target_refs = _targeting(top, namespace)
    match_rules = _match_rules(top, None)
    if any(r.plugin_config is not None for r in match_rules):
        raise errors.SpecError("spec.matchRules[].pluginConfig configures a wasm plugin; a Lua filter has none")
    return PluginSpec(
        namespace=namespace,
        name=name,
        generation=generation,
        url="",
        scheme=Scheme.INLINE,
        sha256=hashlib.sha256(code.encode()).hexdigest(),
        pull_policy=PullPolicy.IF_NOT_PRESENT,
        pull_secret=None,
        plugin_config="",
        config_schema=None,
        root_id="",
        phase=_enum(top, "phase", Phase, Phase.UNSPECIFIED),
        priority=_priority(top),
        fail_strategy=FailStrategy.FAIL_CLOSE,
        env=(),
        match=_match(top),
        type=PluginType.HTTP,
        data_plane=data_plane,
        selector=_selector(top),
        target_refs=target_refs,
        match_rules=match_rules,
        kind=KIND_TRAFFIC_EXTENSION,
        lua=code,
        istio_delivery=_enum(top, "istioDelivery", IstioDelivery, None),  # type: ignore[arg-type]
        rollout=_rollout(top),
    )


def _targeting(spec: Mapping[str, Any], namespace: str) -> tuple[DataPlane, tuple[TargetRef, ...]]:
    """The data plane and targetRefs, with the rules that tie them to the selector."""
    if spec.get("selector") is not None and (spec.get("targetRefs") or spec.get("targetRef")):
        raise errors.SpecError("only one of spec.selector or spec.targetRefs can be set")
    data_plane: DataPlane = _enum(spec, "dataPlane", DataPlane, DataPlane.ISTIO)
    target_refs = _target_refs(spec, namespace)
    if data_plane is DataPlane.AGENT and target_refs:
        raise errors.SpecError("spec.targetRefs need the istio data plane; the agent data plane uses spec.selector")
    return data_plane, target_refs


def _parse_wasm(body: Mapping[str, Any], spec: Any) -> PluginSpec:
    """A WasmPlugin's spec (or a TrafficExtension's top-level fields with its wasm ones) -> PluginSpec."""
    namespace, name, generation = _identity(body, spec)
    url, scheme = normalise_url(_str(spec, "url"))
    sha256 = _sha256(spec, url)
    data_plane, target_refs = _targeting(spec, namespace)

    raw_config = spec.get("pluginConfig")
    if raw_config is not None and not isinstance(raw_config, Mapping):
        raise errors.SpecError("spec.pluginConfig must be an object")
    raw_schema = spec.get("pluginConfigSchema")
    if raw_schema is not None:
        if not isinstance(raw_schema, Mapping):
            raise errors.SpecError("spec.pluginConfigSchema must be an object (a JSON Schema)")
        check_plugin_config(raw_config, raw_schema)
    match_rules = _match_rules(spec, raw_schema)
    plugin_type = _enum(spec, "type", PluginType, PluginType.HTTP, unset="UNSPECIFIED_PLUGIN_TYPE")
    if match_rules and plugin_type is PluginType.NETWORK:
        raise errors.SpecError("spec.matchRules match hosts and paths: they need type HTTP")
    if data_plane is DataPlane.AGENT and any(r.plugin_config is not None for r in match_rules):
        raise errors.SpecError(
            "spec.matchRules[].pluginConfig needs the istio data plane (the agent runs one configuration per plugin)"
        )

    return PluginSpec(
        namespace=namespace,
        name=name,
        generation=generation,
        url=url,
        scheme=scheme,
        sha256=sha256,
        pull_policy=_pull_policy(spec, url, scheme, pinned=sha256 is not None),
        pull_secret=_str(spec, "imagePullSecret") or None,
        plugin_config=canonical_json(raw_config) if raw_config is not None else "",
        config_schema=canonical_json(raw_schema) if raw_schema is not None else None,
        root_id=_str(spec, "pluginName"),
        phase=_enum(spec, "phase", Phase, Phase.UNSPECIFIED),
        priority=_priority(spec),
        fail_strategy=_enum(spec, "failStrategy", FailStrategy, FailStrategy.FAIL_CLOSE),
        env=_env(spec),
        match=_match(spec),
        type=plugin_type,
        data_plane=data_plane,
        selector=_selector(spec),
        target_refs=target_refs,
        match_rules=match_rules,
        istio_delivery=_enum(spec, "istioDelivery", IstioDelivery, None),  # type: ignore[arg-type]
        verification_key=_str(spec, "verificationKey"),
        rollout=_rollout(spec),
    )
