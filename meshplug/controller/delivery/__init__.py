"""Delivery paths: how a validated module reaches the proxies of one data plane, behind one small interface.

Called by `meshplug.controller.reconcile`, which walks each WasmPlugin through
spec -> fetch -> validate -> render -> ``deliver(plane)`` -> status: it picks the plugin's `Delivery`, hands it
a `Request` (the parsed spec and the validated module) and writes the `Report` it returns as the status
(``Ready`` condition, pod counts, failing pods, an Event). A path renders with `meshplug.render` and writes only
through `meshplug.controller.apply`. `remove` takes back everything a path delivered for a plugin (deleted, or
moved to another path). An `errors.ApplyError` raised by a path becomes ``Ready=False`` with the API's reason
and a retry.

The paths, one module each:
- `meshplug.controller.delivery.istio_configmap`: EnvoyFilter + ConfigMap (or the module server) + the
  sidecar's volume annotations (the seed's route);
- `meshplug.controller.delivery.agent`: pushes to meshplug's in-pod agents, ACKed or NACKed per pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meshplug import spec
from meshplug.controller import informer, status
from meshplug.render import model

Key = tuple[str, str]


@dataclass(frozen=True)
class Request:
    """One plugin to deliver: the resource as read, its parsed spec, its fetched and validated module (None: a
    ``file://`` url of the istio plane, a file inside the proxy that meshplug never reads), and how many times in a
    row it was reconciled again without success (for the re-check delay)."""

    body: Mapping[str, Any]
    plugin: spec.PluginSpec
    module: model.Module | None
    retry: int = 0

    @property
    def key(self) -> Key:
        return (self.plugin.namespace, spec.key_name(self.plugin.kind, self.plugin.name))

    def previous_ready(self) -> tuple[str, str]:
        """(status, reason) of the Ready condition the resource's status holds now."""
        for c in (self.body.get("status") or {}).get("conditions") or []:
            if c.get("type") == status.READY:
                return str(c.get("status")), str(c.get("reason"))
        return "", ""


@dataclass(frozen=True)
class Report:
    """What a path tells the status: Ready, and per pod (None: the path does not count pods)."""

    ready: status.Condition
    pods: tuple[int, int] | None = None  # (ready, total)
    failing: tuple[Mapping[str, Any], ...] = ()  # name, reason, message (the agent path: its `Refusal` too)
    event: tuple[bool, str, str] | None = None  # (warning, reason, message)
    retry: str = ""  # non-empty: reconcile again with backoff (a cause that heals by itself)
    recheck_s: float | None = None  # look again after this delay (proxies still loading)
    loaded: tuple[str, ...] | None = None  # pods confirmed loaded, kept in the status (None: not recorded)
    events: tuple[tuple[bool, str, str], ...] = ()  # more Events, after `event`
    conditions: tuple[status.Condition, ...] = ()  # more conditions beside Ready (a rollout's RolledOut)
    fields: Mapping[str, Any] | None = None  # more status fields (a rollout's ``rollout``)


class Delivery(Protocol):
    """One delivery path."""

    #: the name status messages and logs use for the path
    name: str

    def deliver(self, request: Request) -> Report:
        """Bring the plugin to every proxy it selects; what they run now."""

    def remove(self, namespace: str, name: str, *, owned: bool) -> None:
        """Take back everything delivered for the plugin ``namespace/name``; ``owned``: the resource (deleted now)
        named this path, so look even when this process delivered nothing for it."""


def selects(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def tie_break(body: Mapping[str, Any]) -> str:
    """Istio's tie-break within a phase and priority: creation time, then namespace/name."""
    meta = body.get("metadata") or {}
    return f"{meta.get('creationTimestamp', '')}/{meta.get('namespace', '')}/{meta.get('name', '')}"


def live(pod: Mapping[str, Any]) -> bool:
    """Not being deleted, not finished."""
    return not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in (
        "Succeeded",
        "Failed",
    )


def selected_pods(pods: informer.PodSource, plugin: spec.PluginSpec) -> list[dict[str, Any]]:
    """The live pods of the plugin's namespace its selector picks (none with targetRefs)."""
    if plugin.target_refs:
        return []
    return [p for p in pods.pods(plugin.namespace, plugin.selector_labels) if live(p)]
