"""PluginSpec + Module -> the istio data plane's ConfigMap route: an EnvoyFilter and, for small modules, a ConfigMap.

Called by `meshplug.controller.delivery.istio_configmap` (which then applies the objects), by the admission webhook
(`meshplug.injection.istio_module_patch`, through `mount_label` and the ConfigMap's annotations) and by the render
tests. Pure: no I/O. (Istio's own resources, the default route, are rendered by `meshplug.render.istio_native`.)

Delivery: a module of at most `limits.CONFIGMAP_MAX_BYTES` travels in a ConfigMap (``binaryData``, key
``<sha256>.wasm``) that the sidecar mounts: meshplug's mutating webhook adds the volume to each selected pod at
admission (or the ``sidecar.istio.io/userVolume(Mount)`` annotations when Istio injects later) and labels the pod
with `mount_label`; the EnvoyFilter selects only pods carrying that label, so a pod without the file (created before
the plugin, or a gateway, whose injection template ignores userVolume) never gets a filter that names a missing
file (Envoy would reject the whole listener). Names depend only on the plugin, so a new module version changes the
ConfigMap and the EnvoyFilter, never a pod. A plugin in the mesh's root namespace (mesh-wide) gets a copy of its
ConfigMap in each namespace it reaches, under its own names (`names(..., mesh_wide=True)`). Larger modules are
served by the operator's module server and Envoy fetches them (``code.remote``, sha256); a ``file://`` url names a
file inside the proxy (`model.ProxyFile`). The ConfigMap says whom it is for: label `MOUNT_LABEL` and the
annotations `SELECTOR_ANNOTATION` (the plugin's selector as JSON), `VOLUME_ANNOTATION`, `MOUNT_PATH_ANNOTATION`
and `POD_LABEL_ANNOTATION`, which the webhook reads.

Placement, with the anchors Istio's own chain order gives (istiod puts, on every HTTP chain: metadata exchange,
ext_authz, AUTHN extensions, jwt_authn/istio_authn, AUTHZ extensions, rbac, STATS extensions, UNSPECIFIED
extensions, grpc_stats, fault, cors, istio.stats, router):
- HTTP AUTHN: ``INSERT_FIRST`` (before Istio's authn filters; also before metadata exchange and ext_authz).
- HTTP AUTHZ: ``INSERT_BEFORE envoy.filters.http.rbac``. A chain without rbac (no AuthorizationPolicy selects the
  proxy) has no anchor: an EnvoyFilter cannot say "before rbac, else here", so the plugin is not there, and the
  status says so for that proxy (`meshplug.controller.delivery.istio_configmap`); the native route has no such gap.
- HTTP STATS and UNSPECIFIED: ``INSERT_BEFORE envoy.filters.http.grpc_stats`` (every chain has it), STATS first:
  after rbac, before istio.stats, exactly where istiod puts its own extensions of these phases.
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
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplug import limits, spec
from meshplug.render import envoy, model

ENVOY_FILTER_API = "networking.istio.io/v1alpha3"
HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
RBAC = "envoy.filters.http.rbac"
GRPC_STATS = "envoy.filters.http.grpc_stats"
#: pods that mount a plugin's ConfigMap carry ``<MOUNT_LABEL_PREFIX><volume>: mounted`` (set at admission)
MOUNT_LABEL_PREFIX = "wasm.meshplug.io/"
MOUNTED = "mounted"
#: on the ConfigMaps the webhook mounts: the label it lists them by, the selector of the pods they are for
MOUNT_LABEL = "meshplug.io/mount"
SELECTOR_ANNOTATION = "meshplug.io/selector"
VOLUME_ANNOTATION = "meshplug.io/volume"
MOUNT_PATH_ANNOTATION = "meshplug.io/mount-path"
POD_LABEL_ANNOTATION = "meshplug.io/pod-label"
#: the namespace of the plugin a ConfigMap belongs to (root-namespace plugins copy theirs into other namespaces)
PLUGIN_NAMESPACE_LABEL = "meshplug.io/plugin-namespace"

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
    if plugin.phase is spec.Phase.AUTHZ:
        return Placement("INSERT_BEFORE", (RBAC,), prio)
    return Placement("INSERT_BEFORE", (GRPC_STATS,), prio)


def names(
    plugin_name: str, namespace: str = "", *, mesh_wide: bool = False, kind: str = spec.KIND
) -> tuple[str, str, str]:
    """(EnvoyFilter name, ConfigMap name, volume name) of the ``kind`` resource ``plugin_name``: stable per plugin,
    never per module. A WasmPlugin's are ``meshplug-<name>`` and ``meshplug-wasm-<name>``; a TrafficExtension's
    carry its kind (``meshplug-trafficextension-<name>``), so the two kinds of one name never share an object (the
    labels carry the kind too: `labels`). A mesh-wide plugin's ConfigMap and volume (in other namespaces, beside
    their own plugins') carry its namespace too."""
    base = f"{namespace}.{plugin_name}" if mesh_wide else plugin_name
    ef_prefix, cm_prefix = ("meshplug-", "meshplug-wasm-") if kind == spec.KIND else (f"meshplug-{kind.lower()}-",) * 2
    ef = model.dns_name(ef_prefix, plugin_name, 253)
    cm = model.dns_name(cm_prefix, base, 253)
    vol = model.dns_name(cm_prefix, base.replace(".", "-"), 63)
    return ef, cm, vol


def envoy_filter_name(plugin: spec.PluginSpec) -> str:
    return names(plugin.name, kind=plugin.kind)[0]


def mount_label(code: model.LocalCode) -> str:
    return f"{MOUNT_LABEL_PREFIX}{code.volume}"


def code_for(
    plugin: spec.PluginSpec, module: model.Module | None, server: model.ModuleServer, *, mesh_wide: bool = False
) -> model.Code:
    """ConfigMap-mounted file when the module fits, else the module server; a file inside the proxy (None)."""
    if module is None:
        return model.ProxyFile(filename=local_path(plugin.url), sha256=plugin.sha256 or "")
    if module.fits_config_map:
        _, cm, vol = names(plugin.name, plugin.namespace, mesh_wide=mesh_wide, kind=plugin.kind)
        base = f"{plugin.namespace}.{plugin.name}" if mesh_wide else plugin.name
        root = model.MODULE_MOUNT_ROOT if plugin.kind == spec.KIND else model.TE_MOUNT_ROOT
        mount_dir = f"{root}/{base}"
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


def local_path(url: str) -> str:
    """The path of a ``file://`` url (inside the proxy)."""
    return url.removeprefix("file://").removeprefix("localhost")


def labels(plugin: spec.PluginSpec) -> dict[str, str]:
    """What the route's objects are labelled with: meshplug's, and the resource's name, kind and namespace."""
    return {
        model.MANAGED_BY_LABEL: model.MANAGED_BY,
        model.PLUGIN_LABEL: plugin.name,
        model.KIND_LABEL: plugin.kind,
        PLUGIN_NAMESPACE_LABEL: plugin.namespace,
    }


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
    elif isinstance(code, model.LocalCode):  # only pods that mount the file
        body["workloadSelector"] = {"labels": {**plugin.selector_labels, mount_label(code): MOUNTED}}
    elif plugin.selector:
        body["workloadSelector"] = {"labels": plugin.selector_labels}
    digest = code.sha256 if code is not None else (plugin.sha256 or "")
    return {
        "apiVersion": ENVOY_FILTER_API,
        "kind": "EnvoyFilter",
        "metadata": {
            "name": envoy_filter_name(plugin),
            "namespace": plugin.namespace,
            "labels": labels(plugin),
            "annotations": {model.DIGEST_ANNOTATION: f"sha256:{digest}"} if digest else {},
        },
        "spec": body,
    }


def config_map(
    plugin: spec.PluginSpec,
    module: model.Module,
    code: model.LocalCode,
    previous: model.Module | None = None,
    namespace: str = "",
) -> dict[str, Any]:
    """The ConfigMap holding the module (in ``namespace``, default the plugin's); ``previous`` is kept beside it
    when both fit (sidecars that have not yet seen the new EnvoyFilter keep a readable file)."""
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
            "namespace": namespace or plugin.namespace,
            "labels": {**labels(plugin), MOUNT_LABEL: "true"},
            "annotations": {
                model.DIGEST_ANNOTATION: module.digest,
                SELECTOR_ANNOTATION: json.dumps(plugin.selector_labels, sort_keys=True, separators=(",", ":")),
                VOLUME_ANNOTATION: code.volume,
                MOUNT_PATH_ANNOTATION: code.mount_dir,
                POD_LABEL_ANNOTATION: mount_label(code),
            },
        },
        "binaryData": binary,
    }


def render(
    plugin: spec.PluginSpec,
    module: model.Module | None,
    server: model.ModuleServer,
    previous: model.Module | None = None,
    *,
    mesh_wide: bool = False,
) -> IstioObjects:
    """The EnvoyFilter and the plugin's own-namespace ConfigMap for one plugin and module (copies of a mesh-wide
    plugin's ConfigMap for other namespaces: `config_map` with their namespace; a Lua filter: the EnvoyFilter alone)."""
    if plugin.lua is not None:
        return IstioObjects(envoy_filter=envoy_filter(plugin, None), config_map=None, code=None)
    code = code_for(plugin, module, server, mesh_wide=mesh_wide)
    cm = None
    if isinstance(code, model.LocalCode) and module is not None:
        cm = config_map(plugin, module, code, previous)
    return IstioObjects(envoy_filter=envoy_filter(plugin, code), config_map=cm, code=code)
