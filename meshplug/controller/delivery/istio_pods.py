"""The istio data plane's pods: which ones a plugin reaches (as istiod decides), and the status their proxies give.

Shared by both istio delivery paths (`meshplug.controller.delivery.istio_native`, `.istio_configmap`). Which pods
are selected follows Istio: ``selector`` (every pod with a sidecar when empty) in the plugin's namespace, in every
namespace from the mesh's root namespace (Gateway API gateways' pods included, as Istio does by default);
``targetRefs`` to a Gateway reach the pods labelled ``gateway.networking.k8s.io/gateway-name`` with its name in the
plugin's namespace. A gateway's listeners count as CLIENT for ``match`` (as in Istio): a plugin that matches
SERVER traffic only does not select gateways. Waypoint targets (Service, ServiceEntry, GatewayClass) are
delivered, but their proxies are not counted (``Ready=Unknown``, ``ProxiesNotTracked``). With ``watchNamespaces``
the operator sees, and counts, pods of those namespaces only.

`report` turns the pods' `proxies.Verdict`s into the Ready condition: True only when every selected pod loaded the
module and at least one is selected (``NoProxies`` otherwise), the pod counts, the failing pods, and the pods
confirmed loaded (kept in ``status.loadedPods``, see `meshplug.controller.delivery.proxies`). `Redelivery` decides
when a module that proxies were sent but did not download is delivered again (a changed resource makes istio-agent
and Envoy download once more; nothing else does), and `PushMark` is how a route has istiod push a resource whose spec
did not change.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meshplug import limits, spec
from meshplug.controller import apply, delivery, informer, status
from meshplug.controller.delivery import nacks, proxies
from meshplug.render import model

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"


class Route:
    """What both istio routes keep: the API writer, the module server, istiod's views, the module server's download
    log, the pod selection, per plugin the redeliveries and meshplug's last change, and istiod's one NACK watch with
    the NACKs seen (`nacks.watch_of`: shared by both routes)."""

    def __init__(
        self,
        writer: apply.Writer,
        server: model.ModuleServer,
        istiod: proxies.Istiod,
        fetch_log: proxies.FetchLog,
        selection: Selection,
    ) -> None:
        self.writer = writer
        self.server = server
        self.istiod = istiod
        self.fetch_log = fetch_log
        self.selection = selection
        self.redelivery = Redelivery()
        self.agent_stats = proxies.AgentStats()  # Envoy's stats, from each pod's istio-agent
        self.nack_watch = nacks.watch_of(istiod)
        self.nacks = self.nack_watch.memory
        self.changes: dict[tuple[str, str], proxies.Change] = {}  # meshplug's last change of each rendered object


def recheck_delay(retry: int) -> float:
    return float(min(limits.PROXY_RECHECK_MAX_S, limits.PROXY_RECHECK_FIRST_S * 2 ** min(retry, 6)))


class Selection:
    """The pods an istio-plane plugin reaches, the way istiod decides it (see the module docstring)."""

    def __init__(self, source: informer.PodSource, root_namespace: str, namespaces: Sequence[str]) -> None:
        self.source = source  # the operator's pod cache (or the API)
        self.root_namespace = root_namespace
        self.namespaces = tuple(namespaces)  # the operator's watched namespaces; () = all

    def tracked(self, plugin: spec.PluginSpec) -> bool:
        """Whether the pods of the plugin's targets are known (waypoints are not counted)."""
        return all(r.kind == "Gateway" and r.group in ("", GATEWAY_API_GROUP) for r in plugin.target_refs)

    def pods(self, plugin: spec.PluginSpec) -> list[dict[str, Any]]:
        if plugin.target_refs:
            names = {r.name for r in plugin.target_refs if r.kind == "Gateway"}
            found = self.source.pods(plugin.namespace, {}, has_label=GATEWAY_NAME_LABEL)
            return [
                p
                for p in found
                if (p["metadata"].get("labels") or {}).get(GATEWAY_NAME_LABEL) in names and delivery.live(p)
            ]
        out = []
        for namespace in self.scopes(plugin):
            for pod in self.source.pods(namespace, plugin.selector_labels):
                if not (delivery.live(pod) and proxies.has_sidecar(pod)):
                    continue
                if proxies.is_gateway(pod) and all(m.mode is spec.MatchMode.SERVER for m in plugin.match):
                    continue  # a gateway's listeners are CLIENT for match: a SERVER-only plugin never applies there
                out.append(pod)  # Gateway API gateways too (Istio's ENABLE_SELECTOR_BASED_K8S_GATEWAY_POLICY)
        return out

    def scopes(self, plugin: spec.PluginSpec) -> list[str]:
        """The namespaces to look in for the plugin's pods ("" = every namespace)."""
        return self.scopes_of(plugin.namespace, mesh_wide=not plugin.target_refs)

    def scopes_of(self, namespace: str, *, mesh_wide: bool = True) -> list[str]:
        """The namespaces a plugin of ``namespace`` reaches (mesh-wide from the root namespace; "" = every one)."""
        if namespace == self.root_namespace and mesh_wide:
            return list(self.namespaces) or [""]
        return [namespace]

    def label(self, plugin: spec.PluginSpec, pod: Mapping[str, Any]) -> str:
        meta = pod["metadata"]
        return meta["name"] if meta["namespace"] == plugin.namespace else f"{meta['namespace']}/{meta['name']}"


def confirmed_before(body: Mapping[str, Any], digest: str) -> frozenset[str]:
    """Pods the plugin's status already counted loaded with ``digest``."""
    current = body.get("status") or {}
    if current.get("digest") != digest:
        return frozenset()
    return frozenset(str(p) for p in current.get("loadedPods") or [])


#: the reasons of a pod's refusal the status keeps for a version (`refused_before`)
REFUSALS = ("ProxyNACK", "RejectionUnseen")


def refused_before(body: Mapping[str, Any], digest: str, generation: int) -> dict[str, tuple[str, str]]:
    """Pods the plugin's status already reported refusing this version (``digest`` at ``generation``): label ->
    (reason, Envoy's message or the status's). istiod forgets a NACK on the proxy's next ACK, and Envoy ACKs a
    refused extension config sent again, so a refusal read once must survive an operator restart as confirmations
    do (`confirmed_before`). Pods beyond the status's failingPods limit are not kept."""
    current = body.get("status") or {}
    if current.get("digest") != digest or current.get("observedGeneration") != generation:
        return {}
    out = {}
    for failing in current.get("failingPods") or []:
        reason, message = str(failing.get("reason") or ""), str(failing.get("message") or "")
        if reason in REFUSALS and failing.get("name"):
            out[str(failing["name"])] = (reason, message.removeprefix(proxies.NACK_PREFIX))
    return out


def recheck_while_fresh(out: delivery.Report, change: proxies.Change | None) -> delivery.Report:
    """A Ready=True report while meshplug's last change is within `limits.PROXY_PUSH_GRACE_S`: look again after the
    grace (a NACK the watch notes later, of a push that had not reached the proxy yet, turns it)."""
    fresh = change.at + limits.PROXY_PUSH_GRACE_S - time.monotonic() if change is not None else 0.0
    if out.ready.status == "True" and fresh > 0:
        return dataclasses.replace(out, recheck_s=fresh)
    return out


def report(
    verdicts: Sequence[proxies.Verdict], request: delivery.Request, *, tracked: bool, what: str
) -> delivery.Report:
    """The Ready condition and pod counts of an istio-plane plugin from its pods' verdicts. Pending proxies are
    looked at again soon; failed ones on the reconcile backoff (or when something changes); a Warning Event only
    when Ready changes to a failure."""
    loaded, rest = proxies.summary(verdicts)
    total = len(verdicts)
    names = tuple(sorted(v.pod for v in verdicts if v.state == proxies.LOADED))[: limits.MAX_LOADED_PODS_RECORDED]
    failing = tuple(v.failing() for v in rest)
    if not tracked:
        ready = status.Condition(
            status.READY, "Unknown", "ProxiesNotTracked", f"{what}; the proxies of waypoint targets are not counted"
        )
        return delivery.Report(ready=ready, pods=(loaded, total), failing=failing, loaded=names)
    if total == 0:
        ready = status.Condition(status.READY, "False", "NoProxies", f"{what}; no selected pod with an Istio proxy")
        return delivery.Report(ready=ready, pods=(0, 0), loaded=names)
    if loaded == total:
        ready = status.Condition(status.READY, "True", "Loaded", f"{what}; {loaded}/{total} selected proxies loaded it")
        return delivery.Report(ready=ready, pods=(loaded, total), loaded=names)
    first = rest[0]
    failed = [v for v in rest if v.state == proxies.FAILED]
    reason = first.reason if failed else "ProxiesPending"
    ready = status.Condition(
        status.READY,
        "False",
        reason,
        f"{what}; {loaded}/{total} selected proxies loaded it; {first.pod}: {first.reason}: {first.message}",
    )
    event = None
    if failed and request.previous_ready() != ("False", reason):
        event = (True, reason, f"pod {failed[0].pod}: {failed[0].message}")
    return delivery.Report(
        ready=ready,
        pods=(loaded, total),
        failing=failing,
        event=event,
        recheck_s=None if failed else recheck_delay(request.retry),
        retry=f"{len(failed)} selected proxies failed to load the module" if failed else "",
        loaded=names,
    )


#: verdicts that mean the proxy was sent the module but has not downloaded it, or (FetchGaveUp) a filter of it has no
#: module (istio-agent and Envoy download only when their config changes, so waiting does not help)
STUCK = frozenset({"DownloadFailed", "NotDownloaded", "FetchGaveUp"})


class Redelivery:
    """Per plugin and module: how often it was delivered again to get proxies to download it once more. The first
    redelivery comes `limits.REDELIVERY_AFTER_S` after the module was first delivered, each further one after twice
    the previous wait (capped at `limits.REDELIVERY_MAX_S`); the ConfigMap route's push of a listener refused for its
    missing file (`meshplug.controller.delivery.istio_configmap`) counts with its own limits."""

    def __init__(
        self,
        stuck: frozenset[str] = STUCK,
        *,
        after_s: float = limits.REDELIVERY_AFTER_S,
        max_s: float = limits.REDELIVERY_MAX_S,
        most: int | None = None,
    ) -> None:
        """``stuck``: the verdict reasons a new delivery helps; waits ``after_s`` doubling up to ``max_s``; at most
        ``most`` attempts per module (None: no limit)."""
        self._lock = threading.Lock()
        self._state: dict[tuple[str, str], tuple[str, int, float]] = {}  # key -> (digest, attempt, since)
        self.stuck, self.after_s, self.max_s, self.most = stuck, after_s, max_s, most

    def attempt(self, key: tuple[str, str], digest: str, delivered: int = 0) -> int:
        """The attempt the plugin's module is delivered as now. A module not counted yet (a new one, or the operator
        restarted) counts on from ``delivered``: the attempt the object the route wrote carries for this module
        (persisted: a restarted operator renders what the proxies already have, and its next redelivery is new)."""
        with self._lock:
            known = self._state.get(key)
            if known is None or known[0] != digest:
                self._state[key] = (digest, delivered, time.monotonic())
                return delivered
            return known[1]

    def due(self, key: tuple[str, str], digest: str, verdicts: Sequence[proxies.Verdict]) -> int | None:
        """The next attempt's number when one is due for these verdicts, else None."""
        if not any(v.reason in self.stuck for v in verdicts):
            return None
        with self._lock:
            _, attempt, since = self._state.get(key) or (digest, 0, time.monotonic())
            wait = min(self.max_s, self.after_s * 2**attempt)
            if time.monotonic() - since < wait or (self.most is not None and attempt >= self.most):
                return None
            self._state[key] = (digest, attempt + 1, time.monotonic())
            return attempt + 1

    def settled(self, verdicts: Sequence[proxies.Verdict]) -> bool:
        """No selected proxy is pending or in a state a new delivery helps: a push mark has done its work."""
        return not any(v.state == proxies.PENDING or v.reason in self.stuck for v in verdicts)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._state.pop(key, None)


@dataclasses.dataclass(frozen=True)
class PushMark:
    """An annotation on an Istio resource meshplug renders, there only to have istiod push the resource again when
    its spec did not change. istiod (pilot/pkg/model/config_compare.go NeedsPush) skips an update of an Istio
    resource whose spec is the same unless a label or annotation key, before or after the update, contains
    "istio.io": the key must contain it, and each new value is a push. The count is kept in the object, so the next
    value is new after an operator restart too. While such a key stays on the resource, istiod pushes every later
    metadata-only update of it (anyone's label or annotation) to every proxy it reaches: a route drops the mark once
    the proxies settled (`Redelivery.settled`); dropping it is one more push (the key was there before), adding it
    again later is new."""

    key: str

    def __post_init__(self) -> None:
        if "istio.io" not in self.key:
            raise ValueError(f"push mark {self.key!r}: istiod pushes a metadata-only update only for an istio.io key")

    def of(self, obj: Mapping[str, Any] | None) -> str | None:
        """The mark ``obj`` carries (None: none)."""
        value = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(self.key)
        return None if value is None else str(value)

    def put(self, obj: Mapping[str, Any], mark: str | None) -> dict[str, Any]:
        """A copy of ``obj`` carrying ``mark`` (None: without one)."""
        meta = dict(obj["metadata"])
        notes = {k: v for k, v in (meta.get("annotations") or {}).items() if k != self.key}
        if mark is not None:
            notes[self.key] = mark
        if notes or "annotations" in meta:
            meta["annotations"] = notes
        return {**obj, "metadata": meta}

    def kept(self, obj: Mapping[str, Any], existing: Mapping[str, Any] | None) -> dict[str, Any]:
        """The rendered ``obj`` with the mark of ``existing`` when its spec is the same (a reconcile neither drops nor
        repeats it); a new spec goes unmarked (istiod pushes it anyway)."""
        same = existing is not None and existing.get("spec") == obj.get("spec")
        return self.put(obj, self.of(existing) if same else None)

    def bumped(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """``obj`` with its mark counted on: a new value, which istiod pushes (an edited value counts afresh)."""
        mark = self.of(obj)
        return self.put(obj, str(int(mark) + 1) if mark is not None and mark.isdigit() else "1")
