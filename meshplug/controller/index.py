"""Which WasmPlugins to reconcile when something they depend on changes: an in-memory index fed by the watches.

Called by `meshplug.controller.handlers` for every watch event (WasmPlugins, Pods); each method returns the plugin
keys to queue. A WasmPlugin is queued when it is new to this process (start-up listing, so restarts re-reconcile
everything once), its generation changed or its ``meshplug.io/rollout`` annotation did (a rollout's promote or
abort; its status writes queue nothing); a Pod when what the plugins selecting it (before or after the change)
depend on changed: labels, IP, phase, readiness, restarts, the agent push port, its containers (an Istio proxy).
Plugins of the mesh's root namespace (istio plane, without targetRefs) select pods of every namespace; plugins
with targetRefs to a Gateway select the pods labelled with its name. Thread-safe; kopf-free.

A pod event looks only at the plugins that could select it: per namespace, the plugins are indexed by one label
of their selector (``key=value``: a pod is a candidate of the plugins indexed under one of its labels), those
without a selector (every pod) and the Gateways their targetRefs name; each candidate's whole selector is then
checked. A pod change costs O(its labels + the plugins of its namespace that could match), not O(plugins).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from meshplug import spec
from meshplug.controller import agents, rollout

Key = tuple[str, str]
T = TypeVar("T")


@dataclass(frozen=True)
class PluginRef:
    selector: tuple[tuple[str, str], ...]
    selects_pods: bool  # False with targetRefs
    gateways: frozenset[str]  # the Gateways its targetRefs name
    data_plane: str
    generation: int
    mutable: bool  # the url can move (a tag or an http url without a pinned sha256)
    action: str = ""  # the meshplug.io/rollout annotation's value


_ANY = ("", "")  # the slot of the plugins without a selector: every pod of the namespace is a candidate


@dataclass
class _Slots:
    """One namespace's plugins by what a pod must carry to be a candidate: a label (``(key, value)``; ``_ANY``:
    nothing) or, for targetRefs, the Gateway's name."""

    labels: dict[tuple[str, str], set[str]]
    gateways: dict[str, set[str]]

    def add(self, name: str, ref: PluginRef) -> None:
        if ref.selects_pods:
            self.labels.setdefault(min(ref.selector, default=_ANY), set()).add(name)
        for gateway in ref.gateways:
            self.gateways.setdefault(gateway, set()).add(name)

    def drop(self, name: str, ref: PluginRef) -> None:
        if ref.selects_pods:
            _discard(self.labels, min(ref.selector, default=_ANY), name)
        for gateway in ref.gateways:
            _discard(self.gateways, gateway, name)

    def selecting(self, labels: Mapping[str, str]) -> set[str]:
        """The plugins that could select a pod with ``labels`` (by selector; each still to be checked whole)."""
        out = set(self.labels.get(_ANY, ()))
        for pair in labels.items():
            out.update(self.labels.get(pair, ()))
        return out

    def targeting(self, labels: Mapping[str, str]) -> set[str]:
        """The plugins whose targetRefs name the Gateway the pod is labelled with."""
        gateway = labels.get(GATEWAY_NAME_LABEL)
        return set(self.gateways.get(gateway, ())) if gateway is not None else set()


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


def _discard(table: dict[T, set[str]], slot: T, name: str) -> None:
    names = table.get(slot)
    if names is not None:
        names.discard(name)
        if not names:
            del table[slot]


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
        self._slots: dict[str, _Slots] = {}  # per namespace: its plugins by what selects a pod
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
                gone = self._plugins.get(namespace, {}).pop(name, None)
                if gone is not None:
                    self._slots[namespace].drop(name, gone)
            return []
        generation = int(meta.get("generation") or 0)
        action = rollout.action_of(meta.get("annotations"))
        try:
            plugin = spec.parse(body)
            gateways = frozenset(r.name for r in plugin.target_refs if r.kind == "Gateway")
            ref = PluginRef(
                plugin.selector,
                not plugin.target_refs,
                gateways,
                plugin.data_plane.value,
                generation,
                _mutable(plugin),
                action,
            )
        except Exception:  # an invalid spec is still reconciled (its status says why), but selects nothing
            ref = PluginRef((), False, frozenset(), "", generation, False, action)
        with self._lock:
            known = self._plugins.setdefault(namespace, {}).get(name)
            self._plugins[namespace][name] = ref
            slots = self._slots.setdefault(namespace, _Slots({}, {}))
            if known is not None:
                slots.drop(name, known)
            slots.add(name, ref)
        if meta.get("deletionTimestamp"):
            return []
        changed = known is None or known.generation != generation or known.action != action
        return [(namespace, name)] if changed else []

    def _selecting(self, namespace: str, labels: Sequence[Mapping[str, str]]) -> list[Key]:
        """The plugins selecting a pod of ``namespace`` with any of ``labels`` (its labels before and after)."""
        out: set[Key] = set()
        with self._lock:
            for ns in (namespace, self.root_namespace) if namespace != self.root_namespace else (namespace,):
                slots, plugins = self._slots.get(ns), self._plugins.get(ns, {})
                if slots is None:
                    continue
                for lab in labels:
                    for name in slots.selecting(lab):
                        ref = plugins[name]
                        # the root namespace's istio-plane plugins select pods of every namespace
                        mesh_wide = ns == namespace or ref.data_plane == spec.DataPlane.ISTIO.value
                        if mesh_wide and _selects(ref.selector, lab):
                            out.add((ns, name))
                    if ns == namespace:  # a Gateway named by targetRefs is the plugin's own namespace's
                        out.update((ns, name) for name in slots.targeting(lab))
        return sorted(out)

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
