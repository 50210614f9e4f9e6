"""PluginSpec + Module -> what the istio data plane needs: an EnvoyFilter and, for small modules, a ConfigMap.

Called by the controller (which then applies the objects) and by the render tests. Pure: no I/O.

Delivery: a module of at most `limits.CONFIGMAP_MAX_BYTES` travels in a ConfigMap (``binaryData``, key
``<sha256>.wasm``) that the workload's sidecar mounts through the ``sidecar.istio.io/userVolume(Mount)``
annotations (`meshplug.render.podtemplate`); the ConfigMap's and volume's names depend only on the plugin,
so a new module version changes the ConfigMap and the EnvoyFilter but never the pod template (no rollout).
Larger modules are served by the operator's module server and Envoy fetches them (``code.remote``, sha256).

Placement (an EnvoyFilter patch needs an anchor filter that exists in every chain):
- HTTP, phase AUTHN: ``INSERT_FIRST`` in the HTTP connection manager, i.e. before Istio's authn filters.
- HTTP, phases AUTHZ, STATS, UNSPECIFIED: ``INSERT_BEFORE envoy.filters.http.router`` (the one filter every
  chain has). Anchoring on ``envoy.filters.http.rbac`` or ``istio.stats`` would silently drop the plugin from
  chains without them, so these plugins run after Istio's own authz/stats filters; among meshplug plugins the
  order is Istio's: phase, then priority (higher first, unset last), then creation time and name.
- NETWORK: AUTHN ``INSERT_FIRST``; others ``INSERT_BEFORE`` the chain's terminal filter (one patch for
  ``tcp_proxy`` chains, one for ``http_connection_manager`` chains; each applies where its anchor exists).
The order between plugins comes from the EnvoyFilter ``priority``: one band of 2**30 per phase, the plugin's
priority clamped to ±(2**29 - 2) inside it. Istio applies EnvoyFilters by ascending priority; INSERT_BEFORE
keeps application order, INSERT_FIRST reverses it, hence the sign flip for AUTHN.

Match: mode CLIENT -> SIDECAR_OUTBOUND, SERVER -> SIDECAR_INBOUND, CLIENT_AND_SERVER -> ANY, one patch per
port (``listener.portNumber``); with targetRefs to a Gateway/GatewayClass the context is GATEWAY.
matchRules: the patched filter is `meshplug.render.envoy.plugin_filter`'s composite, run per request only where a
rule matches (same placement, same name).

A TrafficExtension's Lua is placed the same way, as ``envoy.filters.http.lua`` with the script inline: no
module, so no ConfigMap and no volume; the EnvoyFilter's digest annotation is the script's sha256.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplug import limits, spec
from meshplug.render import envoy, model

ENVOY_FILTER_API = "networking.istio.io/v1alpha3"
HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"

_BAND = 2**30
_SPAN = 2**29 - 2
_UNSET = 2**29 - 1
_PHASE_RANK = {spec.Phase.AUTHN: 0, spec.Phase.AUTHZ: 1, spec.Phase.STATS: 2, spec.Phase.UNSPECIFIED: 3}

CONTEXT = {
    spec.MatchMode.CLIENT: "SIDECAR_OUTBOUND",
    spec.MatchMode.SERVER: "SIDECAR_INBOUND",
    spec.MatchMode.CLIENT_AND_SERVER: "ANY",
}
_GATEWAY_KINDS = frozenset({"Gateway", "GatewayClass"})


@dataclass(frozen=True)
class Placement:
    operation: str  # INSERT_FIRST | INSERT_BEFORE
    anchors: tuple[str, ...]  # subFilter (HTTP) or filter (NETWORK) names; () for INSERT_FIRST on HTTP
    priority: int  # EnvoyFilter.spec.priority


@dataclass(frozen=True)
class IstioObjects:
    """Everything the istio data plane needs for one plugin; ``config_map`` is None for remote code."""

    envoy_filter: Mapping[str, Any]
    config_map: Mapping[str, Any] | None
    code: model.Code | None  # None: a Lua filter (the script is inline)


def envoy_filter_priority(phase: spec.Phase, priority: int | None) -> int:
    first = phase is spec.Phase.AUTHN  # INSERT_FIRST: applied later = earlier in the chain
    if priority is None:
        offset = -_UNSET if first else _UNSET
    else:
        clamped = max(-_SPAN, min(_SPAN, priority))
        offset = clamped if first else -clamped
    return -(2**31) + _BAND // 2 + _PHASE_RANK[phase] * _BAND + offset


def placement(plugin: spec.PluginSpec) -> Placement:
    prio = envoy_filter_priority(plugin.phase, plugin.priority)
    if plugin.phase is spec.Phase.AUTHN:
        return Placement("INSERT_FIRST", (), prio)
    if plugin.type is spec.PluginType.NETWORK:
        return Placement("INSERT_BEFORE", (TCP_PROXY, HCM), prio)
    return Placement("INSERT_BEFORE", (ROUTER,), prio)


def names(plugin_name: str) -> tuple[str, str, str]:
    """(EnvoyFilter name, ConfigMap name, volume name) of the WasmPlugin named ``plugin_name``: stable per
    plugin, never per module (the namespace is the plugin's own)."""
    ef = model.dns_name("meshplug-", plugin_name, 253)
    cm = model.dns_name("meshplug-wasm-", plugin_name, 253)
    vol = model.dns_name("meshplug-wasm-", plugin_name, 63)
    return ef, cm, vol


def code_for(plugin: spec.PluginSpec, module: model.Module, server: model.ModuleServer) -> model.Code:
    """ConfigMap-mounted file when the module fits, else the module server."""
    if module.fits_config_map:
        _, cm, vol = names(plugin.name)
        mount_dir = f"{model.MODULE_MOUNT_ROOT}/{plugin.name}"
        return model.LocalCode(
            config_map=cm,
            volume=vol,
            mount_dir=mount_dir,
            filename=f"{mount_dir}/{module.sha256}.wasm",
            sha256=module.sha256,
        )
    return model.RemoteCode(
        uri=server.url(module.sha256, signed=True), cluster=server.istio_cluster, sha256=module.sha256
    )


def _labels(plugin: spec.PluginSpec) -> dict[str, str]:
    return {model.MANAGED_BY_LABEL: model.MANAGED_BY, model.PLUGIN_LABEL: plugin.name}


def _contexts(plugin: spec.PluginSpec) -> list[tuple[str, int | None]]:
    gateway = any(r.kind in _GATEWAY_KINDS for r in plugin.target_refs)
    out: list[tuple[str, int | None]] = []
    for m in plugin.match:
        context = "GATEWAY" if gateway else CONTEXT[m.mode]
        for port in m.ports or (None,):
            if (context, port) not in out:
                out.append((context, port))
    return out


def _patch(plugin: spec.PluginSpec, code: model.Code | None, context: str, port: int | None, anchor: str | None) -> Any:
    place = placement(plugin)
    listener: dict[str, Any] = {}
    if port is not None:
        listener["portNumber"] = port
    if plugin.type is spec.PluginType.NETWORK:
        apply_to = "NETWORK_FILTER"
        if anchor is not None:
            listener["filterChain"] = {"filter": {"name": anchor}}
    else:
        apply_to = "HTTP_FILTER"
        chain_filter: dict[str, Any] = {"name": HCM}
        if anchor is not None:
            chain_filter["subFilter"] = {"name": anchor}
        listener["filterChain"] = {"filter": chain_filter}
    return {
        "applyTo": apply_to,
        "match": {"context": context, "listener": listener},
        "patch": {"operation": place.operation, "value": envoy.plugin_filter(plugin, code)},
    }


def envoy_filter(plugin: spec.PluginSpec, code: model.Code | None) -> dict[str, Any]:
    """The EnvoyFilter (networking.istio.io/v1alpha3) that places the plugin's filter (`code` None: Lua)."""
    place = placement(plugin)
    anchors: tuple[str | None, ...] = place.anchors or (None,)
    if plugin.type is spec.PluginType.HTTP and place.operation == "INSERT_FIRST":
        anchors = (None,)
    patches = [_patch(plugin, code, context, port, anchor) for context, port in _contexts(plugin) for anchor in anchors]
    body: dict[str, Any] = {"priority": place.priority, "configPatches": patches}
    if plugin.target_refs:
        body["targetRefs"] = [
            {k: v for k, v in (("group", r.group), ("kind", r.kind), ("name", r.name)) if v} for r in plugin.target_refs
        ]
    elif plugin.selector:
        body["workloadSelector"] = {"labels": plugin.selector_labels}
    ef_name, _, _ = names(plugin.name)
    return {
        "apiVersion": ENVOY_FILTER_API,
        "kind": "EnvoyFilter",
        "metadata": {
            "name": ef_name,
            "namespace": plugin.namespace,
            "labels": _labels(plugin),
            "annotations": {model.DIGEST_ANNOTATION: f"sha256:{code.sha256 if code is not None else plugin.sha256}"},
        },
        "spec": body,
    }


def config_map(
    plugin: spec.PluginSpec, module: model.Module, code: model.LocalCode, previous: model.Module | None = None
) -> dict[str, Any]:
    """The ConfigMap holding the module; ``previous`` is kept beside it when both fit (sidecars that have
    not yet seen the new EnvoyFilter keep a readable file)."""
    binary = {f"{module.sha256}.wasm": base64.b64encode(module.data).decode()}
    if (
        previous is not None
        and previous.sha256 != module.sha256
        and len(previous.data) + len(module.data) <= limits.CONFIGMAP_MAX_BYTES
    ):
        binary[f"{previous.sha256}.wasm"] = base64.b64encode(previous.data).decode()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": code.config_map,
            "namespace": plugin.namespace,
            "labels": _labels(plugin),
            "annotations": {model.DIGEST_ANNOTATION: module.digest},
        },
        "binaryData": binary,
    }


def render(
    plugin: spec.PluginSpec,
    module: model.Module,
    server: model.ModuleServer,
    previous: model.Module | None = None,
) -> IstioObjects:
    """All istio data-plane objects for one plugin and module (a Lua filter: the EnvoyFilter alone)."""
    if plugin.lua is not None:
        return IstioObjects(envoy_filter=envoy_filter(plugin, None), config_map=None, code=None)
    code = code_for(plugin, module, server)
    cm = config_map(plugin, module, code, previous) if isinstance(code, model.LocalCode) else None
    return IstioObjects(envoy_filter=envoy_filter(plugin, code), config_map=cm, code=code)
