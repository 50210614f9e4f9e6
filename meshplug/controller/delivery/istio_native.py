"""The istio data plane's native route: Istio's own TrafficExtension (or WasmPlugin), delivered by istio-agent.

Called by `meshplug.controller.reconcile` through the `meshplug.controller.delivery.Delivery` interface.
Renders with `meshplug.render.istio_native` and server-side applies the result, owned by the meshplug resource
(garbage-collected with it) and labelled as meshplug's: a resource of the same kind and name that meshplug does not
own is never overwritten (Ready=False, ``NameConflict``). The kind is the meshplug resource's own when the cluster
serves it: a WasmPlugin becomes Istio's WasmPlugin (which Istio >= 1.30 itself translates into a TrafficExtension,
so Envoy's names stay Istio's), a TrafficExtension Istio's TrafficExtension (Istio >= 1.30); else the other kind;
a WasmPlugin and a TrafficExtension of one name therefore never render the same object. When the cluster serves
neither, ``Ready=False`` with ``IstioExtensionsMissing``. The extensions are read from the operator's caches of each
kind (`informer.OwnedCache`, every one in the watched namespaces, set by `use_caches`; the API until then, and for a
kind the cluster did not serve when the operator started); the operator's own writes go into them at once. istiod
turns it into an ECDS resource; each pod's istio-agent downloads the module from meshplug's module server (a signed
url, sha256-checked) and Envoy loads it: no pod, template or rollout is touched, and sidecars, gateways (selector or
targetRefs) and the root namespace (mesh-wide) all work with Istio's own placement, match and failStrategy
semantics.

Status comes from the proxies (`meshplug.controller.delivery.proxies`): each selected pod is loaded, failed or
pending; Ready=True only when every selected pod loaded this module (and at least one is selected). Which pods are
selected follows Istio: ``selector`` (every pod with a sidecar when empty) in the plugin's namespace, in every
namespace from the root namespace; ``targetRefs`` to a Gateway: the pods labelled with its
``gateway.networking.k8s.io/gateway-name`` in the plugin's namespace. Waypoint targets (Service, ServiceEntry,
GatewayClass) are delivered but their proxies are not counted (Ready=Unknown, ``ProxiesNotTracked``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshplug import errors, limits, spec
from meshplug.controller import apply, delivery, informer, status
from meshplug.controller.delivery import istio_pods, proxies
from meshplug.render import istio_native, model

log = logging.getLogger("meshplug.controller.delivery.istio_native")


class IstioNative(istio_pods.Route):
    """TrafficExtension / WasmPlugin in ``extensions.istio.io``, status from istiod and the module server."""

    name = "istio native"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """`istio_pods.Route`'s arguments (istiod's one `nacks.NackWatch` reads it for every plugin of both
        routes). The rendered objects are read from the API until `use_caches`."""
        super().__init__(*args, **kwargs)
        self.extensions: dict[str, informer.ObjectSource] = {
            kind: informer.ApiObjects(self.writer, istio_native.API_VERSION, kind) for kind in istio_native.KINDS
        }

    def use_caches(self, extensions: Mapping[str, informer.ObjectSource]) -> None:
        """Read Istio's extensions of these kinds from these (the operator's caches of every one in the watched
        namespaces, meshplug's or not: a name taken by another owner is seen without a read)."""
        self.extensions.update(extensions)

    def _existing(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.extensions[kind].objects(namespace, {}, name=name)
        return found[0] if found else None

    def kind(self, plugin: spec.PluginSpec) -> str:
        """The extensions.istio.io kind rendered for ``plugin``: its own kind when the cluster serves it, else the
        other one."""
        served = self.writer.served(istio_native.API_VERSION)
        for kind in istio_native.kinds_for(plugin.kind):
            if istio_native.KINDS[kind] in served:
                return kind
        raise errors.ApplyError(
            f"the cluster serves neither TrafficExtension nor WasmPlugin in {istio_native.API_VERSION} "
            "(is Istio >= 1.12 installed?); use istioDelivery: configmap or dataPlane: agent",
            reason="IstioExtensionsMissing",
        )

    def deliver(self, request: delivery.Request) -> delivery.Report:
        plugin, module = request.plugin, request.module
        kind = self.kind(plugin)
        why = istio_native.unsupported(plugin, kind)
        if why:
            return delivery.Report(ready=status.Condition(status.READY, "False", "NotCarriedByIstio", why))
        meta = request.body["metadata"]
        owner = istio_native.Owner(
            request.body.get("apiVersion", f"{spec.API_GROUP}/{spec.API_VERSION}"),
            request.body.get("kind", spec.KIND),
            meta["name"],
            meta.get("uid", ""),
        )
        digest = module.digest if module is not None else ""
        self.redelivery.attempt(request.key, digest)  # a new module's redeliveries are counted afresh
        existing = self._existing(kind, plugin.namespace, plugin.name)
        if existing is not None and not _ours(existing, owner.kind, owner.uid):
            return delivery.Report(
                ready=status.Condition(
                    status.READY,
                    "False",
                    "NameConflict",
                    f"{kind} {plugin.namespace}/{plugin.name} exists and is not meshplug's; rename one of them",
                )
            )
        # the redelivery mark stays while the spec does (until the proxies settle: below)
        obj = REDELIVERY.kept(istio_native.render(plugin, module, self.server, kind, owner), existing)
        changed = existing is None or not apply.holds(existing, obj)
        if changed:  # unchanged: nothing written
            self.changes[request.key] = proxies.Change.before(self.istiod)
            self._watch(plugin, kind, f"{digest or plugin.url}/{plugin.generation}", time.monotonic())
            self.extensions[kind].note(self.writer.apply(obj))
            self.changes[request.key] = self.changes[request.key].written()
        for other in istio_native.KINDS:
            if other != kind:  # the cluster moved on (Istio upgraded): the older kind goes
                self._delete(other, plugin.namespace, plugin.name, owner.kind)
        what = f"{kind} {plugin.namespace}/{plugin.name} carries {digest or plugin.url}"
        confirmed = istio_pods.confirmed_before(request.body, digest)
        refused = istio_pods.refused_before(request.body, digest, plugin.generation)
        verdicts = self._verdicts(plugin, kind, module, (confirmed, refused), self.changes.get(request.key))
        again = self.redelivery.due(request.key, digest, verdicts) if module is not None else None
        if again is not None:  # a changed resource makes istio-agent download the module once more
            log.info(
                "%s/%s: delivering %s again (attempt %d): %s",
                plugin.namespace,
                plugin.name,
                digest,
                again,
                "; ".join(f"{v.pod}: {v.reason}" for v in verdicts if v.reason in istio_pods.STUCK),
            )
            self.changes[request.key] = proxies.Change.before(self.istiod)
            self.extensions[kind].note(self.writer.apply(REDELIVERY.bumped(obj)))
            self.changes[request.key] = self.changes[request.key].written()
        elif REDELIVERY.of(obj) is not None and self.redelivery.settled(verdicts):
            # the proxies run it (or fail for another reason): the mark goes, not a change of what they get
            log.info("%s/%s: the proxies settled: the redelivery mark goes", plugin.namespace, plugin.name)
            self.extensions[kind].note(self.writer.apply(REDELIVERY.put(obj, None)))
        out = istio_pods.report(verdicts, request, tracked=self.selection.tracked(plugin), what=what)
        return istio_pods.recheck_while_fresh(out, self.changes.get(request.key))

    def _watch(self, plugin: spec.PluginSpec, kind: str, version: str, since: float) -> None:
        """Have `nacks.NackWatch` note this version's NACKs for `limits.PROXY_PUSH_GRACE_S` from ``since``."""
        names = istio_native.plugin_names(kind, plugin.namespace, plugin.name)
        self.nack_watch.watch(names, version, since + limits.PROXY_PUSH_GRACE_S)

    def _verdicts(
        self,
        plugin: spec.PluginSpec,
        kind: str,
        module: model.Module | None,
        before: tuple[frozenset[str], Mapping[str, tuple[str, str]]],
        change: proxies.Change | None,
    ) -> list[proxies.Verdict]:
        """Each selected pod's verdict; ``before``: the pods the status counted loaded with this module, and those
        it reported refusing this version (`istio_pods.refused_before`)."""
        confirmed, refused = before
        pods = self.selection.pods(plugin)
        if not pods:
            return []
        digest = module.digest if module is not None else plugin.url
        # istiod sends wasm over ECDS; an inline Lua script goes in the listener itself (LDS)
        type_url = proxies.LDS_TYPE if plugin.lua is not None else proxies.ECDS_TYPE
        after = proxies.readings_after(change)
        reading = self.istiod.reading(after)  # shared with the NACK watch and the other reconciles of this moment
        syncs, problem = reading.syncs, reading.problem
        url, sha256 = ("", "") if plugin.lua is not None else istio_native.module_url(plugin, module, self.server)
        names = _Names(
            istio_native.plugin_names(kind, plugin.namespace, plugin.name),
            istio_native.filter_names(kind, plugin.namespace, plugin.name),
        )
        version = f"{digest}/{plugin.generation}"
        out = []
        for pod in pods:
            label = self.selection.label(plugin, pod)
            meta = pod["metadata"]
            sync = syncs.get(f"{meta['name']}.{meta['namespace']}")
            pushed = False
            ip = str((pod.get("status") or {}).get("podIP") or "")
            fetched = self.fetch_log.status(ip, module.sha256) if module is not None and ip else None
            if sync is not None:
                try:
                    pushed = self._pushed(
                        sync, plugin, names, (url, sha256), change=change, fetched=fetched, after=after
                    )
                except (OSError, ValueError) as exc:
                    problem = f"{sync.source}: {exc}"
                    sync = None
            proxy = f"{meta['name']}.{meta['namespace']}"
            remembered = (proxy, names.plugin[0], version)
            error = sync.of(type_url).error if sync is not None else ""
            for seen in (sync.of(t).error for t in (type_url, proxies.LDS_TYPE)) if sync is not None else ():
                if seen and names.named_in(seen):  # a listener naming a refused extension is refused too
                    self.nacks.note(remembered, seen)
            reason, message = refused.get(label, ("", ""))
            unseen = plugin.lua is None and (
                self.nack_watch.unseen(proxy, names.plugin[0], version) or reason == "RejectionUnseen"
            )
            running = self.agent_stats.runs_wasm(pod, names.plugin, after=after) if unseen else None
            evidence = proxies.Evidence(
                pod=label,
                ready=proxies.is_ready(pod),
                sync=sync,
                type_url=type_url,
                pushed=pushed,
                envoy_name=names.named_in(error) or names.plugin[0],
                fetched=fetched,
                needs_download=module is not None and plugin.lua is None,
                confirmed=label in confirmed,
                istiod_problem=problem,
                nacked=self.nacks.get(remembered) or (message if reason == "ProxyNACK" else ""),
                unseen=unseen,
                running=running,
                last_nack=self.nacks.last(proxy, names.plugin[0]) if unseen else "",
            )
            verdict = proxies.judge(evidence)
            if verdict.state == proxies.LOADED:
                self.nacks.loaded(proxy, names.plugin[0])
                if plugin.lua is None:
                    self.nack_watch.accepted(proxy, names.plugin[0], version)
            out.append(verdict)
        if any(v.reason in ("NotPushed", "AwaitingACK") for v in out):  # answers to come: keep reading istiod
            self._watch(plugin, kind, version, time.monotonic())
        return out

    def _pushed(
        self,
        sync: proxies.ProxySync,
        plugin: spec.PluginSpec,
        names: _Names,
        module: tuple[str, str],
        *,
        change: proxies.Change | None,
        fetched: int | None,
        after: float,
    ) -> bool:
        """istiod sent the proxy this version of the plugin: its view of the proxy (read at or after ``after``)
        carries it, and it pushed the proxy something since meshplug's last change (its view is what it would send
        now)."""
        if plugin.lua is not None:  # an inline Lua script goes in the listener itself (LDS)
            filters = proxies.listener_filters(self.istiod.config_dump(sync, "lds", after=after))
            pushed, type_url = any(_carries_lua(f, names, plugin.lua) for f in filters), proxies.LDS_TYPE
        else:  # wasm goes over ECDS
            type_url = proxies.ECDS_TYPE
            try:
                pushed = any(_carries(c, names, *module) for c in self.istiod.ecds(sync, after=after))
            except proxies.ViewUnavailable:
                pushed = self._pushed_unseen(sync, names, change, fetched, after)
        return pushed and (change is None or change.sent_since(sync, type_url))

    def _pushed_unseen(
        self,
        sync: proxies.ProxySync,
        names: _Names,
        change: proxies.Change | None,
        fetched: int | None,
        after: float,
    ) -> bool:
        """istiod cannot show the extension configs it sends this proxy (`proxies.ViewUnavailable`): the proxy's
        listener names the extension (and, checked by the caller, istiod sent extension configs since meshplug
        changed it: their ACK or NACK tells). The change not known (the operator restarted since): a download of
        the module by this pod."""
        filters = proxies.listener_filters(self.istiod.config_dump(sync, "lds", after=after))
        if not any(str(f.get("name", "")) in names.filters for f in filters):
            return False
        return change is not None or fetched is not None

    def _delete(self, kind: str, namespace: str, name: str, owner_kind: str) -> None:
        if istio_native.KINDS[kind] not in self.writer.served(istio_native.API_VERSION):
            return  # the cluster does not serve the kind: nothing of it to delete
        try:
            existing = self._existing(kind, namespace, name)
        except errors.ApplyError as exc:
            if exc.reason in ("NotFound", "HTTP404"):  # the kind is not served
                return
            raise
        if existing is not None and _ours(existing, owner_kind):
            self.writer.delete(istio_native.API_VERSION, kind, namespace, name)
            self.extensions[kind].forget(namespace, name)

    def remove(self, namespace: str, name: str, *, owned: bool) -> None:
        """Delete the rendered TrafficExtension/WasmPlugin (garbage collection would too, after the owner goes)."""
        del owned
        self.redelivery.forget((namespace, name))
        self.changes.pop((namespace, name), None)
        owner_kind, name = spec.split_key_name(name)
        for kind in istio_native.KINDS:  # a plugin made again later is a new extension config to every Envoy
            for envoy_name in istio_native.plugin_names(kind, namespace, name):
                self.nacks.forget(envoy_name)
                self.nack_watch.forget(envoy_name)
        for kind in istio_native.KINDS:
            self._delete(kind, namespace, name, owner_kind)


#: marks Istio's resource delivered again (`istio_pods.PushMark`): istiod pushes a metadata-only update of Istio's
#: TrafficExtension only for an istio.io key (a WasmPlugin, which istiod translates into a TrafficExtension carrying
#: its resourceVersion, on any update); "meshplug.io/redelivery" healed no TrafficExtension (test_istio_native)
REDELIVERY_ANNOTATION = "meshplug.io/istio.io-redelivery"
REDELIVERY = istio_pods.PushMark(REDELIVERY_ANNOTATION)


def _ours(obj: Mapping[str, Any], owner_kind: str, owner_uid: str = "") -> bool:
    """Rendered by meshplug for a resource of ``owner_kind`` (and ``owner_uid`` when given)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(model.MANAGED_BY_LABEL) != model.MANAGED_BY:
        return False
    return any(
        ref.get("kind") == owner_kind and (not owner_uid or ref.get("uid") == owner_uid)
        for ref in meta.get("ownerReferences") or []
    )


@dataclass(frozen=True)
class _Names:
    """How istiod names the rendered resource: Envoy's plugin names, the listeners' HTTP filter names."""

    plugin: tuple[str, ...]
    filters: tuple[str, ...]

    def named_in(self, error: str) -> str:
        """The plugin name an xDS error message names ("" when none)."""
        return next((name for name in self.plugin if proxies.mentions(error, name)), "")


def _carries_lua(flt: Mapping[str, Any], names: _Names, lua: str) -> bool:
    """Whether a listener's HTTP filter (istiod's config_dump) is the plugin's Lua filter with this script."""
    if str(flt.get("name", "")) not in names.filters:
        return False
    return json.dumps(lua)[1:-1] in json.dumps(flt)


def _carries(ecds: Mapping[str, Any], names: _Names, url: str, sha256: str) -> bool:
    """Whether an ECDS extension config (istiod's camelCase JSON) is the plugin's, with this module."""
    config = ecds.get("config") or {}
    if config.get("name") not in names.plugin:
        return False
    code = ((config.get("vmConfig") or {}).get("code")) or {}
    remote = code.get("remote") or {}
    if remote:
        return ((remote.get("httpUri") or {}).get("uri") == url) and (not sha256 or remote.get("sha256") == sha256)
    return ((code.get("local") or {}).get("filename") or "") == url.removeprefix("file://")
