"""Which WasmPlugins to reconcile when something they depend on changes: an in-memory index fed by the watches.

Called by `meshplug.controller.handlers` for every watch event (WasmPlugins, Pods); each method returns the plugin
keys to queue. A WasmPlugin is queued when it is new to this process (start-up listing, so restarts re-reconcile
everything once) or its generation changed; a Pod when what the plugins selecting it (before or after the change)
depend on changed: labels, IP, phase, readiness, restarts, the agent push port, its containers (an Istio proxy).
Plugins of the mesh's root namespace (istio plane, without targetRefs) select pods of every namespace; plugins
with targetRefs to a Gateway select the pods labelled with its name. Thread-safe; kopf-free.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import spec
from meshplug.controller import agents

Key = tuple[str, str]


@dataclass(frozen=True)
class PluginRef:
    selector: tuple[tuple[str, str], ...]
    selects_pods: bool  # False with targetRefs
    gateways: frozenset[str]  # the Gateways its targetRefs name
    data_plane: str
    generation: int
    mutable: bool  # the url can move (a tag or an http url without a pinned sha256)


def _selects(selector: tuple[tuple[str, str], ...], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


def _pod_print(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    conds = tuple(sorted((c.get("type"), c.get("status")) for c in status.get("conditions") or []))
    restarts = sum(int(s.get("restartCount") or 0) for s in status.get("containerStatuses") or [])
    return (
        tuple(sorted((meta.get("labels") or {}).items())),
        status.get("podIP"),
        status.get("phase"),
        conds,
        restarts,
        annotations.get(agents.PUSH_PORT_ANNOTATION),
        tuple(c.get("name") for c in (pod.get("spec") or {}).get("containers") or []),
        bool(meta.get("deletionTimestamp")),
    )


def _mutable(plugin: spec.PluginSpec) -> bool:
    if plugin.scheme is spec.Scheme.OCI:
        return "@sha256:" not in plugin.url
    return plugin.scheme in (spec.Scheme.HTTP, spec.Scheme.HTTPS) and plugin.sha256 is None


GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


class Index:
    def __init__(self, root_namespace: str = "istio-system") -> None:
        self.root_namespace = root_namespace
        self._lock = threading.Lock()
        self._plugins: dict[str, dict[str, PluginRef]] = {}
        self._pods: dict[Key, tuple[Any, ...]] = {}

    def plugin(self, namespace: str, name: str) -> PluginRef | None:
        with self._lock:
            return self._plugins.get(namespace, {}).get(name)

    def plugin_event(self, event_type: str | None, body: Mapping[str, Any]) -> list[Key]:
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace"))
        name = spec.key_name(str(body.get("kind") or spec.KIND), str(meta.get("name")))
        if event_type == "DELETED":
            with self._lock:
                self._plugins.get(namespace, {}).pop(name, None)
            return []
        generation = int(meta.get("generation") or 0)
        try:
            plugin = spec.parse(body)
            gateways = frozenset(r.name for r in plugin.target_refs if r.kind == "Gateway")
            ref = PluginRef(
                plugin.selector, not plugin.target_refs, gateways, plugin.data_plane.value, generation, _mutable(plugin)
            )
        except Exception:  # an invalid spec is still reconciled (its status says why), but selects nothing
            ref = PluginRef((), False, frozenset(), "", generation, False)
        with self._lock:
            known = self._plugins.setdefault(namespace, {}).get(name)
            self._plugins[namespace][name] = ref
        if meta.get("deletionTimestamp"):
            return []
        return [(namespace, name)] if known is None or known.generation != generation else []

    def _selecting(self, namespace: str, labels: Sequence[Mapping[str, str]]) -> list[Key]:
        with self._lock:
            plugins = [(namespace, n, r) for n, r in self._plugins.get(namespace, {}).items()]
            if namespace != self.root_namespace:
                plugins += [
                    (self.root_namespace, n, r)
                    for n, r in self._plugins.get(self.root_namespace, {}).items()
                    if r.data_plane == spec.DataPlane.ISTIO.value
                ]
        out = []
        for ns, name, ref in sorted(plugins, key=lambda t: (t[0], t[1])):
            selected = ref.selects_pods and any(_selects(ref.selector, lab) for lab in labels)
            targeted = ns == namespace and any(lab.get(GATEWAY_NAME_LABEL) in ref.gateways for lab in labels)
            if selected or targeted:
                out.append((ns, name))
        return out

    def pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> list[Key]:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        new = None if event_type == "DELETED" else _pod_print(body)
        with self._lock:
            old = self._pods.pop(key, None)
            if new is not None:
                self._pods[key] = new
        if old == new:
            return []
        labels = [dict(p[0]) for p in (old, new) if p is not None]
        return self._selecting(key[0], labels)
