"""PluginSpec + Module -> Istio's own extension resource: ``TrafficExtension`` (Istio >= 1.30) or ``WasmPlugin``.

Called by `meshplug.controller.delivery.istio_native` (which applies the result, owned by the meshplug resource)
and by the render tests. Pure: no I/O.

A meshplug TrafficExtension's inline Lua becomes Istio's TrafficExtension with the same ``lua.inlineCode``.
The rendered resource keeps the meshplug resource's name and namespace (and its kind, when the cluster serves it:
`kinds_for`), so Envoy's plugin name is Istio's ``<namespace>.<name>`` and a manifest ported from
``extensions.istio.io`` behaves as before; the module comes
from meshplug's module server under a signed url (istio-agent sends no headers) with the sha256 of the bytes
meshplug fetched, verified and validated, so istio-agent downloads exactly those bytes over ECDS. A ``file://``
url names a file inside the proxy and is passed through (meshplug never saw its bytes: ``module`` is None).
Targeting (selector or targetRefs), phase, priority, match, failStrategy, pluginName, pluginConfig, vmConfig
and type are Istio's own fields and carry over as they are.

Split for other extension kinds: `targeting` renders the fields every TrafficExtension has (selector or
targetRefs, phase, priority, match) from a `Targeting`; `wasm_config` renders the ``wasm`` block; and
`traffic_extension` puts a targeting and one extension body (``wasm`` or ``lua``) together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplug import spec
from meshplug.render import model

GROUP = "extensions.istio.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
TRAFFIC_EXTENSION = "TrafficExtension"
WASM_PLUGIN = "WasmPlugin"
KINDS = {TRAFFIC_EXTENSION: "trafficextensions", WASM_PLUGIN: "wasmplugins"}
#: ECDS resource name prefixes istiod gives each kind (a WasmPlugin is translated into a TrafficExtension)
ECDS_PREFIX = {
    TRAFFIC_EXTENSION: "extensions.istio.io/trafficextension/",
    WASM_PLUGIN: "extensions.istio.io/wasmplugin/",
}


@dataclass(frozen=True)
class Targeting:
    """Where an extension applies and in which order: the fields TrafficExtension shares across bodies."""

    selector: tuple[tuple[str, str], ...]
    target_refs: tuple[spec.TargetRef, ...]
    phase: spec.Phase
    priority: int | None
    match: tuple[spec.TrafficMatch, ...]

    @classmethod
    def of(cls, plugin: spec.PluginSpec) -> Targeting:
        return cls(plugin.selector, plugin.target_refs, plugin.phase, plugin.priority, plugin.match)


@dataclass(frozen=True)
class Owner:
    """The meshplug resource the rendered one belongs to (ownerReference: deleted with it)."""

    api_version: str
    kind: str
    name: str
    uid: str


def targeting(target: Targeting) -> dict[str, Any]:
    """selector or targetRefs, phase, priority, match; what is unset stays unset (the kinds spell an unset phase
    differently: UNSPECIFIED in TrafficExtension, UNSPECIFIED_PHASE in WasmPlugin)."""
    out: dict[str, Any] = {}
    if target.target_refs:
        out["targetRefs"] = [
            {k: v for k, v in (("group", r.group), ("kind", r.kind), ("name", r.name)) if v} for r in target.target_refs
        ]
    elif target.selector:
        out["selector"] = {"matchLabels": dict(target.selector)}
    if target.phase is not spec.Phase.UNSPECIFIED:
        out["phase"] = target.phase.value
    if target.priority is not None:
        out["priority"] = target.priority
    default = (spec.TrafficMatch(mode=spec.MatchMode.CLIENT_AND_SERVER, ports=()),)
    if target.match != default:
        out["match"] = [
            {"mode": m.mode.value, **({"ports": [{"number": p} for p in m.ports]} if m.ports else {})}
            for m in target.match
        ]
    return out


def module_url(plugin: spec.PluginSpec, module: model.Module | None, server: model.ModuleServer) -> tuple[str, str]:
    """(url, sha256) istio-agent fetches: the module server's signed url, or the proxy-local file:// as is."""
    if module is None:
        return plugin.url, plugin.sha256 or ""
    return server.url(module.sha256, signed=True), module.sha256


def wasm_config(plugin: spec.PluginSpec, module: model.Module | None, server: model.ModuleServer) -> dict[str, Any]:
    """The ``wasm`` block of a TrafficExtension (also the body of an extensions.istio.io WasmPlugin's spec)."""
    url, sha256 = module_url(plugin, module, server)
    out: dict[str, Any] = {"url": url}
    if sha256:
        out["sha256"] = sha256
    # the url names one immutable module by its digest: nothing to pull again
    out["imagePullPolicy"] = spec.PullPolicy.IF_NOT_PRESENT.value
    if plugin.root_id:
        out["pluginName"] = plugin.root_id
    if plugin.plugin_config:
        out["pluginConfig"] = plugin.plugin_config_value
    if plugin.fail_strategy is not spec.FailStrategy.FAIL_CLOSE:
        out["failStrategy"] = plugin.fail_strategy.value
    if plugin.env:
        out["vmConfig"] = {
            "env": [
                {"name": e.name, "valueFrom": e.source.value, **({"value": e.value} if e.value else {})}
                for e in plugin.env
            ]
        }
    if plugin.type is not spec.PluginType.HTTP:
        out["type"] = plugin.type.value
    return out


def _metadata(name: str, namespace: str, owner: Owner | None, digest: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {model.MANAGED_BY_LABEL: model.MANAGED_BY, model.PLUGIN_LABEL: name},
        "annotations": {model.DIGEST_ANNOTATION: digest} if digest else {},
    }
    if owner is not None:
        meta["labels"][model.KIND_LABEL] = owner.kind
        meta["ownerReferences"] = [
            {
                "apiVersion": owner.api_version,
                "kind": owner.kind,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def traffic_extension(
    name: str,
    namespace: str,
    target: Targeting,
    body: Mapping[str, Any],
    *,
    owner: Owner | None = None,
    digest: str = "",
) -> dict[str, Any]:
    """A TrafficExtension: ``target`` plus one body, ``{"wasm": {...}}`` or ``{"lua": {"inlineCode": ...}}``."""
    if len(body) != 1 or next(iter(body)) not in ("wasm", "lua"):
        raise ValueError(f"a TrafficExtension carries exactly one of wasm or lua, got {sorted(body)}")
    return {
        "apiVersion": API_VERSION,
        "kind": TRAFFIC_EXTENSION,
        "metadata": _metadata(name, namespace, owner, digest),
        "spec": {**targeting(target), **body},
    }


def render(
    plugin: spec.PluginSpec,
    module: model.Module | None,
    server: model.ModuleServer,
    kind: str,
    owner: Owner | None = None,
) -> dict[str, Any]:
    """The Istio resource of ``kind`` (TrafficExtension or WasmPlugin) delivering the plugin."""
    digest = module.digest if module is not None else ""
    target = Targeting.of(plugin)
    if plugin.lua is not None:  # a meshplug TrafficExtension's inline Lua
        if kind != TRAFFIC_EXTENSION:
            raise ValueError("inline Lua needs Istio's TrafficExtension")
        body = {"lua": {"inlineCode": plugin.lua}}
        return traffic_extension(plugin.name, plugin.namespace, target, body, owner=owner, digest=digest)
    wasm = wasm_config(plugin, module, server)
    if kind == TRAFFIC_EXTENSION:
        return traffic_extension(plugin.name, plugin.namespace, target, {"wasm": wasm}, owner=owner, digest=digest)
    if kind != WASM_PLUGIN:
        raise ValueError(f"no Istio extension kind {kind!r}")
    body = {**targeting(target), **wasm}
    return {
        "apiVersion": API_VERSION,
        "kind": WASM_PLUGIN,
        "metadata": _metadata(plugin.name, plugin.namespace, owner, digest),
        "spec": body,
    }


def kinds_for(owner_kind: str) -> tuple[str, str]:
    """Istio's kinds in the order a meshplug resource of ``owner_kind`` takes them: its own, then the other."""
    if owner_kind == spec.KIND_TRAFFIC_EXTENSION:
        return (TRAFFIC_EXTENSION, WASM_PLUGIN)
    return (WASM_PLUGIN, TRAFFIC_EXTENSION)


def ecds_name(kind: str, namespace: str, name: str) -> str:
    """The ECDS resource name istiod gives the rendered resource (what istiod's debug endpoints show)."""
    return f"{ECDS_PREFIX[kind]}{namespace}.{name}"


#: istiod >= 1.30 translates a WasmPlugin ``<name>`` into a TrafficExtension ``<name>~istio-translated-wasmplugin``:
#: its ECDS resource and Envoy's plugin name carry the suffix (seen on istiod 1.31-dev)
TRANSLATED_SUFFIX = "~istio-translated-wasmplugin"


def plugin_names(kind: str, namespace: str, name: str) -> tuple[str, ...]:
    """The Envoy plugin names (``Wasm.config.name``) istiod may give the rendered resource of ``kind``: a
    TrafficExtension's ``<namespace>.<name>``; a WasmPlugin's translated one (Istio >= 1.30), or that (older)."""
    base = f"{namespace}.{name}"
    return (base,) if kind == TRAFFIC_EXTENSION else (base + TRANSLATED_SUFFIX, base)


def filter_names(kind: str, namespace: str, name: str) -> tuple[str, ...]:
    """The HTTP filter names istiod gives the rendered resource of ``kind`` in a proxy's listeners."""
    if kind == TRAFFIC_EXTENSION:
        return (ecds_name(TRAFFIC_EXTENSION, namespace, name),)
    return (ecds_name(TRAFFIC_EXTENSION, namespace, name) + TRANSLATED_SUFFIX, ecds_name(WASM_PLUGIN, namespace, name))


def unsupported(plugin: spec.PluginSpec, kind: str = TRAFFIC_EXTENSION) -> str:
    """Why Istio's resource ``kind`` cannot carry the plugin as written ("" when it can)."""
    if plugin.lua is not None and kind != TRAFFIC_EXTENSION:
        return (
            "inline Lua needs Istio's TrafficExtension (Istio >= 1.30); this cluster serves only WasmPlugin: "
            "use istioDelivery: configmap (an EnvoyFilter with envoy.filters.http.lua)"
        )
    if plugin.match_rules:
        return (
            "spec.matchRules cannot be carried by Istio's TrafficExtension/WasmPlugin (no per-request rule); "
            "use istioDelivery: configmap or dataPlane: agent"
        )
    return ""
