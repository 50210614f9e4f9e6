"""The istio data plane's ConfigMap route (the seed's): EnvoyFilter + ConfigMap (or the module server), made safe.

Called by `meshplug.controller.reconcile` through the `meshplug.controller.delivery.Delivery` interface when a
plugin asks for ``istioDelivery: configmap`` (or the operator defaults to it). Renders with `meshplug.render.istio`
and server-side applies the ConfigMap before the EnvoyFilter that names its file. No workload is ever written:
meshplug's mutating webhook mounts the ConfigMap into each selected pod at admission and labels the pod
(`meshplug.injection.istio_module_patch`), and the EnvoyFilter selects only pods with that label, so a pod without
the file never gets a filter naming it. What the route cannot do is reported per pod, never hidden:
- pods created before the plugin (or before its ConfigMap reached their namespace): ``RestartNeeded``;
- gateways (Istio's gateway injection template ignores userVolume): ``GatewayCannotMount``; with ``targetRefs``
  (gateways and waypoints only) a ConfigMap-sized module is refused outright (``ConfigMapNeedsSidecars``);
- phase AUTHZ on a proxy whose chain has no ``envoy.filters.http.rbac`` to anchor on: ``NoAnchor``;
- a module too large for a ConfigMap goes by ``code.remote`` through the module server's Istio cluster; a proxy
  that lacks that cluster (its Sidecar resource's egress hides meshplug-system) would answer 503 to every
  request: ``ModuleServerHidden``. Envoy gives up a remote fetch after its retries and tries again only for a
  changed data source, so a module a proxy has not downloaded is delivered again with a new url
  (`istio_pods.Redelivery`); the url's redelivery number is read back from the EnvoyFilter, so an operator restart
  keeps the url the proxies have (a new url would be an LDS push to every selected proxy).
A plugin in the mesh's root namespace applies mesh-wide: its ConfigMap is copied into every namespace that has a
pod it selects, and removed from namespaces that no longer have one. A TrafficExtension's Lua travels inline in the
EnvoyFilter (no ConfigMap, nothing to mount or download).
Status: the per-pod verdicts of `meshplug.controller.delivery.proxies` (istiod's listeners for the proxy carry the
filter with this module, LDS ACKed, and for remote code the module server saw the download and Envoy's own stats
show no fetch given up since the url was delivered and no listener warming). Envoy fetches remote code once per
filter config it builds (each listener, each filter chain); one that gives up after its retries leaves its filter
answering 503 until the listener is built again, whatever the other fetches (and the module server) did:
``FetchGaveUp`` (`FetchMarks` counts them from the url's push), and the module is delivered again (a new url:
Envoy builds every listener of it again and takes the module from its code cache).
Reads: the ConfigMaps and EnvoyFilters it rendered come from the operator's caches (`informer.OwnedCache`, set by
`use_caches`; the API until then), which keep a ConfigMap's module as its digest (`trimmed`): a reconcile reads
nothing from the API, and a new plugin costs the writes alone (ConfigMap, EnvoyFilter).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from meshplug import errors, limits, spec
from meshplug.controller import apply, delivery, informer, status
from meshplug.controller.delivery import istio_pods, proxies
from meshplug.render import istio, model

log = logging.getLogger("meshplug.controller.delivery.istio_configmap")

ISTIO_EF = ("networking.istio.io/v1alpha3", "EnvoyFilter")
CONFIG_MAP = ("v1", "ConfigMap")
#: what the operator's caches of rendered objects hold: everything meshplug renders carries it
MANAGED = f"{model.MANAGED_BY_LABEL}={model.MANAGED_BY}"
#: a cached ConfigMap's modules, as the sha256 of each binaryData value (`trimmed`)
DIGESTS = "binaryDataSha256"


def trimmed(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A ConfigMap as the operator's cache keeps it: no managedFields, and its binaryData (the modules) as the
    sha256 of each value: enough to tell whether it holds what a reconcile renders (`same`), not the bytes."""
    out = {k: v for k, v in obj.items() if k != "binaryData"}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    if "binaryData" in obj:
        out[DIGESTS] = {k: hashlib.sha256(str(v).encode()).hexdigest() for k, v in obj["binaryData"].items()}
    return out


def same(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """`apply.holds` for ConfigMaps as read from the API or from the cache (`trimmed`)."""
    return apply.holds(trimmed(existing) if "binaryData" in existing else existing, trimmed(desired))


class IstioConfigMap(istio_pods.Route):
    """EnvoyFilter + ConfigMap(s); pods mount at admission; status from istiod and the module server."""

    name = "istio ConfigMap"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """`istio_pods.Route`'s arguments; the rendered objects are read from the API until `use_caches`."""
        super().__init__(*args, **kwargs)
        self.config_maps: informer.ObjectSource = informer.ApiObjects(self.writer, *CONFIG_MAP)
        self.envoy_filters: informer.ObjectSource = informer.ApiObjects(self.writer, *ISTIO_EF)
        self.repush = istio_pods.Redelivery(
            UNMOUNTED, after_s=limits.REPUSH_AFTER_S, max_s=limits.REPUSH_MAX_S, most=limits.REPUSH_MAX
        )
        self.fetch_marks = FetchMarks()

    def use_caches(self, config_maps: informer.ObjectSource, envoy_filters: informer.ObjectSource) -> None:
        """Read the rendered ConfigMaps and EnvoyFilters from these (the operator's caches)."""
        self.config_maps, self.envoy_filters = config_maps, envoy_filters

    def _write(self, source: informer.ObjectSource, obj: Mapping[str, Any], existing: Mapping[str, Any] | None) -> None:
        """Server-side apply ``obj`` unless ``existing`` already holds it; the cache learns the result at once."""
        if existing is not None and (same(existing, obj) if obj["kind"] == "ConfigMap" else apply.holds(existing, obj)):
            return
        source.note(self.writer.apply(obj))

    def mesh_wide(self, plugin: spec.PluginSpec) -> bool:
        return plugin.namespace == self.selection.root_namespace and not plugin.target_refs

    def deliver(self, request: delivery.Request) -> delivery.Report:
        plugin, module = request.plugin, request.module
        mesh_wide = self.mesh_wide(plugin)
        code = None if plugin.lua is not None else istio.code_for(plugin, module, self.server, mesh_wide=mesh_wide)
        if plugin.target_refs and isinstance(code, model.LocalCode):
            self.remove(plugin.namespace, request.key[1], owned=True)
            return delivery.Report(
                ready=status.Condition(
                    status.READY,
                    "False",
                    "ConfigMapNeedsSidecars",
                    "targetRefs select gateways or waypoints, whose injection template ignores "
                    "sidecar.istio.io/userVolume: a module in a ConfigMap cannot reach them; use istioDelivery: native",
                )
            )
        pods = self.selection.pods(plugin)
        digest = module.digest if module is not None else ""
        if isinstance(code, model.LocalCode) and module is not None:
            self._config_maps(plugin, module, code, pods, mesh_wide)
        else:
            self._delete_config_maps(plugin.namespace, plugin.name, plugin.kind, keep=set())
        if isinstance(code, model.RemoteCode):
            current = self._current_envoy_filter(plugin)
            code = _redelivered(code, self.redelivery.attempt(request.key, digest, _delivered_attempt(current, code)))
            if not _carries_uri(current, code.uri):  # Envoy's fetches given up count from before this url's push
                self.fetch_marks.delivering(request.key, code.uri, self._envoy_fetches(plugin, pods))
        version = _version(plugin, digest)
        self.repush.attempt(request.key, digest)  # counts the pushes again of this module's listener
        if self._apply_envoy_filter(request.key, istio.envoy_filter(plugin, code)):
            self._watch(plugin, code, version)
        what = f"EnvoyFilter {plugin.namespace}/{istio.envoy_filter_name(plugin)} carries {digest or plugin.url}"
        confirmed = istio_pods.confirmed_before(request.body, digest)
        verdicts = self._verdicts(request.key, plugin, code, pods, (confirmed, version), self.changes.get(request.key))
        again = self.redelivery.due(request.key, digest, verdicts) if isinstance(code, model.RemoteCode) else None
        if again is not None and isinstance(code, model.RemoteCode):  # a new url makes Envoy fetch once more
            log.info("%s/%s: delivering %s again (attempt %d)", plugin.namespace, plugin.name, digest, again)
            code = _redelivered(code, again)
            self.fetch_marks.delivering(request.key, code.uri, self._envoy_fetches(plugin, pods))
            self._apply_envoy_filter(request.key, istio.envoy_filter(plugin, code))
            self._watch(plugin, code, version)
        push = self.repush.due(request.key, digest, verdicts) if isinstance(code, model.LocalCode) else None
        if push is not None:  # the kubelet may have put the file in the pod by now: Envoy takes the listener pushed
            log.info(
                "%s/%s: having istiod push the listener for %s again (%d)", plugin.namespace, plugin.name, digest, push
            )
            self._apply_envoy_filter(request.key, istio.envoy_filter(plugin, code), repush=True)
            self._watch(plugin, code, version)
        elif isinstance(code, model.LocalCode) and self.repush.settled(verdicts):
            self._unmark(istio.envoy_filter(plugin, code))  # the push mark did its work: it goes
        out = istio_pods.report(verdicts, request, tracked=self.selection.tracked(plugin), what=what)
        return istio_pods.recheck_while_fresh(out, self.changes.get(request.key))

    def _envoy_fetches(
        self, plugin: spec.PluginSpec, pods: list[dict[str, Any]]
    ) -> dict[str, proxies.RemoteFetches | None]:
        """Each pod's Envoy's account of its remote code fetches now (a fresh read of its stats; None: not read), by
        pod label."""
        now, out = time.monotonic(), {}
        for pod in pods:
            found = self.agent_stats.remote_fetches(pod, after=now)
            out[self.selection.label(plugin, pod)] = found if isinstance(found, proxies.RemoteFetches) else None
        return out

    def _fetched_by_envoy(
        self,
        key: tuple[str, str],
        pod: tuple[str, Mapping[str, Any]],
        code: model.Code | None,
        *,
        confirmed: bool,
        after: float,
    ) -> tuple[proxies.RemoteFetches | None, str]:
        """For remote code, what the pod's Envoy's own fetches came to since this url was delivered, or why its
        stats could not be read; (None, "") for code Envoy does not fetch."""
        if not isinstance(code, model.RemoteCode):
            return None, ""
        now = self.agent_stats.remote_fetches(pod[1], after=after)
        if isinstance(now, str):
            return None, now
        return self.fetch_marks.since(key, pod[0], code.uri, now, confirmed=confirmed), ""

    def _watch(self, plugin: spec.PluginSpec, code: model.Code | None, version: str) -> None:
        """Have `nacks.NackWatch` note this version's listener NACKs for `limits.PROXY_PUSH_GRACE_S` from now."""
        self.nack_watch.watch(_named(plugin, code), version, time.monotonic() + limits.PROXY_PUSH_GRACE_S)

    # --- objects ---------------------------------------------------------------------------------------------

    def _apply_envoy_filter(self, key: tuple[str, str], obj: dict[str, Any], *, repush: bool = False) -> bool:
        """Write the EnvoyFilter unless the cache holds it as it is; whether what istiod sends changed. Its push mark
        (`REPUSH`) is kept while the spec stays, and with ``repush`` counted on (istiod pushes the listener again)."""
        meta = obj["metadata"]
        try:
            # read by name from the cache (or listed: the operator may list EnvoyFilters, not get them): one of another
            # meshplug resource by this name is never taken over; a changed one of ours is a change proxies must be
            # pushed before they count
            managed = {model.MANAGED_BY_LABEL: model.MANAGED_BY}
            found = self.envoy_filters.objects(meta["namespace"], managed, name=meta["name"])
            for other in found:
                owner = _owner(other["metadata"])
                if owner != _owner(meta):
                    raise errors.ApplyError(
                        f"EnvoyFilter {meta['namespace']}/{meta['name']} belongs to {owner[1]} {owner[0]}; "
                        "rename one of them",
                        reason="NameConflict",
                    )
            existing = found[0] if found else None
            obj = REPUSH.kept(obj, existing)
            obj = REPUSH.bumped(obj) if repush else obj
            pushed_as = (existing.get("spec"), REPUSH.of(existing)) if existing is not None else None
            changed = pushed_as != (obj["spec"], REPUSH.of(obj))
            if changed:
                self.changes[key] = proxies.Change.before(self.istiod)
            if existing is None or REPUSH.of(existing) != REPUSH.of(obj) or not apply.holds(existing, obj):
                self.envoy_filters.note(self.writer.apply(obj))  # unchanged: nothing written
            if changed:
                self.changes[key] = self.changes[key].written()
            return changed
        except errors.ApplyError as exc:
            if exc.reason not in ("NotFound", "HTTP404"):
                raise
            raise errors.ApplyError(
                f"the cluster has no {ISTIO_EF[0]} {ISTIO_EF[1]} kind (is Istio installed?); "
                "install Istio or use dataPlane: agent",
                reason="EnvoyFilterKindMissing",
            ) from None

    def _current_envoy_filter(self, plugin: spec.PluginSpec) -> dict[str, Any] | None:
        """The plugin's EnvoyFilter as the cache (or the API) holds it (None: none, or no EnvoyFilter kind)."""
        managed = {model.MANAGED_BY_LABEL: model.MANAGED_BY}
        try:
            found = self.envoy_filters.objects(plugin.namespace, managed, name=istio.envoy_filter_name(plugin))
        except errors.ApplyError as exc:
            if exc.reason not in ("NotFound", "HTTP404"):
                raise
            return None  # `_apply_envoy_filter` says what is missing
        return found[0] if found else None

    def _unmark(self, obj: dict[str, Any]) -> None:
        """Drop the push mark of the plugin's EnvoyFilter when it carries one and the spec of ``obj`` (just applied):
        a write, not a change of what the proxies get (while an istio.io key stays, istiod pushes every later
        metadata-only update of the EnvoyFilter to the proxies it reaches)."""
        meta = obj["metadata"]
        managed = {model.MANAGED_BY_LABEL: model.MANAGED_BY}
        found = self.envoy_filters.objects(meta["namespace"], managed, name=meta["name"])
        if found and REPUSH.of(found[0]) is not None and found[0].get("spec") == obj["spec"]:
            self.envoy_filters.note(self.writer.apply(REPUSH.put(obj, None)))

    def _ours(self, namespace: str, name: str, kind: str) -> dict[str, str]:
        return {
            model.PLUGIN_LABEL: name,
            model.KIND_LABEL: kind,
            istio.PLUGIN_NAMESPACE_LABEL: namespace,
            istio.MOUNT_LABEL: "true",
            model.MANAGED_BY_LABEL: model.MANAGED_BY,
        }

    def _existing(self, namespace: str, name: str, kind: str) -> list[dict[str, Any]]:
        """The plugin's ConfigMaps wherever they are (copies of a root-namespace plugin's in other namespaces)."""
        found = []
        for scope in self.selection.scopes_of(namespace):
            found += self.config_maps.objects(scope, self._ours(namespace, name, kind))
        return found

    def _previous_module(self, existing: list[dict[str, Any]], new_sha: str) -> model.Module | None:
        """The module a ConfigMap of the plugin delivers now, when it differs from the new one (kept beside it);
        read from the API (a cached ConfigMap holds the modules' digests only), once per module change."""
        for current in existing:
            meta = current.get("metadata") or {}
            sha = ((meta.get("annotations") or {}).get(model.DIGEST_ANNOTATION) or "").removeprefix("sha256:")
            if not sha or sha == new_sha:
                continue
            full = (
                [current]
                if "binaryData" in current
                else self.writer.list(*CONFIG_MAP, meta["namespace"], field_selector=f"metadata.name={meta['name']}")
            )
            raw = next((c.get("binaryData") or {} for c in full), {}).get(f"{sha}.wasm")
            if raw is not None:
                return model.Module(sha256=sha, data=base64.b64decode(raw))
        return None

    def _config_maps(
        self,
        plugin: spec.PluginSpec,
        module: model.Module,
        code: model.LocalCode,
        pods: list[dict[str, Any]],
        mesh_wide: bool,
    ) -> None:
        """The module's ConfigMap in every namespace it reaches (before any EnvoyFilter names the file)."""
        if mesh_wide:
            wanted = {p["metadata"]["namespace"] for p in pods if not proxies.is_gateway(p)}
        else:
            wanted = {plugin.namespace}
        existing = self._existing(plugin.namespace, plugin.name, plugin.kind)
        previous = self._previous_module(existing, module.sha256)
        there = {(cm["metadata"]["namespace"], cm["metadata"]["name"]): cm for cm in existing}
        for namespace in sorted(wanted):
            obj = istio.config_map(plugin, module, code, previous, namespace)
            self._write(self.config_maps, obj, there.get((namespace, obj["metadata"]["name"])))
        self._delete_config_maps(plugin.namespace, plugin.name, plugin.kind, keep=wanted, existing=existing)

    def _delete_config_maps(
        self,
        namespace: str,
        name: str,
        kind: str,
        *,
        keep: set[str],
        existing: list[dict[str, Any]] | None = None,
    ) -> None:
        for cm in existing if existing is not None else self._existing(namespace, name, kind):
            meta = cm["metadata"]
            if meta["namespace"] not in keep:
                self.writer.delete(*CONFIG_MAP, meta["namespace"], meta["name"])
                self.config_maps.forget(meta["namespace"], meta["name"])

    def remove(self, namespace: str, name: str, *, owned: bool) -> None:
        """Delete the plugin's EnvoyFilter and every ConfigMap of it (always looked for: found by label)."""
        del owned
        self.redelivery.forget((namespace, name))
        self.fetch_marks.forget((namespace, name))
        self.repush.forget((namespace, name))
        self.changes.pop((namespace, name), None)
        kind, name = spec.split_key_name(name)  # what this path renders is labelled with the resource's name and kind
        self.nacks.forget(f"{namespace}.{name}", _version_tag(kind))  # a plugin made again starts afresh
        labels = {model.PLUGIN_LABEL: name, model.KIND_LABEL: kind, model.MANAGED_BY_LABEL: model.MANAGED_BY}
        try:
            found = self.envoy_filters.objects(namespace, labels)
        except errors.ApplyError as exc:
            if exc.reason not in ("NotFound", "HTTP404"):  # no EnvoyFilter kind: a cluster without Istio
                raise
            found = []
        for obj in found:
            self.writer.delete(*ISTIO_EF, namespace, obj["metadata"]["name"])
            self.envoy_filters.forget(namespace, obj["metadata"]["name"])
        self._delete_config_maps(namespace, name, kind, keep=set())

    # --- status ----------------------------------------------------------------------------------------------

    def _verdicts(  # noqa: PLR0917
        self,
        key: tuple[str, str],
        plugin: spec.PluginSpec,
        code: model.Code | None,
        pods: list[dict[str, Any]],
        before: tuple[frozenset[str], str],
        change: proxies.Change | None,
    ) -> list[proxies.Verdict]:
        """Each selected pod's verdict; ``before``: the pods the status counted loaded with this module, and the
        plugin's version as its NACKs are kept (`_version`)."""
        if not pods:
            return []
        confirmed, version = before
        type_url = proxies.LDS_TYPE
        after = proxies.readings_after(change)
        reading = self.istiod.reading(after)  # shared with the other reconciles of this moment
        syncs, problem = reading.syncs, reading.problem
        out = []
        for pod in pods:
            label = self.selection.label(plugin, pod)
            meta = pod["metadata"]
            blocked = _blocked(pod, code)
            sync = syncs.get(f"{meta['name']}.{meta['namespace']}")
            pushed = False
            if sync is not None and not blocked:
                try:
                    dump = self.istiod.config_dump(sync, after=after)
                except proxies.ViewUnavailable:
                    # no view of the proxy's listeners (another plugin's extension breaks istiod's dump): the
                    # EnvoyFilter is taken as built in once the proxy ACKed a listener push (NACKs still count)
                    pushed = sync.of(proxies.LDS_TYPE).synced
                except (OSError, ValueError) as exc:
                    problem, sync = f"{sync.source}: {exc}", None
                else:
                    pushed = any(_carries(f, plugin.envoy_name, code) for f in proxies.listener_filters(dump))
                    blocked = _unreachable(plugin, code, dump, pushed, self.server)
                # istiod's view is what it would send now: the proxy has it once istiod pushed since the change
                pushed = pushed and (change is None or sync is None or change.sent_since(sync, type_url))
            ip = str((pod.get("status") or {}).get("podIP") or "")
            proxy = f"{meta['name']}.{meta['namespace']}"
            remembered = (proxy, plugin.envoy_name, version)
            state = sync.of(type_url) if sync is not None else proxies.TypeSync("", "", "")
            if any(proxies.mentions(state.error, name) for name in _named(plugin, code)):
                self.nacks.note(remembered, state.error, type_url=type_url, acked=state.acked)
            elif sync is not None:  # a listener refused for a reason that went is taken by a later push
                self.nacks.heal(remembered, sync)
            remote = isinstance(code, model.RemoteCode)
            envoy_fetches, unread = (
                self._fetched_by_envoy(key, (label, pod), code, confirmed=label in confirmed, after=after)
                if pushed
                else (None, "")
            )
            evidence = proxies.Evidence(
                pod=label,
                ready=proxies.is_ready(pod),
                sync=sync,
                type_url=proxies.LDS_TYPE,
                pushed=pushed,
                envoy_name=plugin.envoy_name,
                fetched=self.fetch_log.status(ip, code.sha256) if isinstance(code, model.RemoteCode) and ip else None,
                needs_download=remote,
                confirmed=label in confirmed,
                blocked=blocked,
                istiod_problem=problem,
                nacked=self.nacks.get(remembered),
                envoy_fetches=envoy_fetches,
                envoy_stats_unread=unread,
            )
            verdict = _unmounted(proxies.judge(evidence), code)
            if verdict.state == proxies.LOADED:
                self.nacks.loaded(proxy, plugin.envoy_name)
            out.append(verdict)
        if any(v.reason in ("NotPushed", "AwaitingACK") for v in out):  # answers to come: keep reading istiod
            self._watch(plugin, code, version)
        return out


def _named(plugin: spec.PluginSpec, code: model.Code | None) -> tuple[str, ...]:
    """What a listener NACK of the plugin names: its Envoy name ("Unable to create Wasm plugin <name>"), or for a
    mounted module its file ("Invalid path: <file>" while the kubelet has not put it in the pod yet)."""
    return (plugin.envoy_name, code.filename) if isinstance(code, model.LocalCode) else (plugin.envoy_name,)


#: the verdict a new push of the same listener heals (`_unmounted`)
UNMOUNTED = frozenset({"ModuleNotMounted"})
#: marks the EnvoyFilter's n-th push again of its listener (`istio_pods.PushMark`): its value changing makes istiod
#: push the same listener, which Envoy takes once the file is in the pod; it goes once no pod is ModuleNotMounted
REPUSH_ANNOTATION = "meshplug.io/istio.io-repush"
REPUSH = istio_pods.PushMark(REPUSH_ANNOTATION)


def _unmounted(verdict: proxies.Verdict, code: model.Code | None) -> proxies.Verdict:
    """A listener NACK for the module's file missing in the pod (Envoy: "Invalid path: <file>") is the kubelet not
    having updated the mounted ConfigMap yet (within about a minute of the change): pending, not failed. The proxy
    keeps its last good listener, and takes this one at istiod's next listener push once the file is there: `deliver`
    has istiod push it again (`REPUSH_ANNOTATION`, bounded by `limits.REPUSH_MAX`) while the verdict lasts."""
    if verdict.reason != "ProxyNACK" or not isinstance(code, model.LocalCode):
        return verdict
    if f"Invalid path: {code.filename}" not in verdict.message:
        return verdict
    return proxies.Verdict(
        verdict.pod,
        proxies.PENDING,
        "ModuleNotMounted",
        "the pod does not have the module's file yet (the kubelet updates a mounted ConfigMap about a minute after "
        "it changed); the proxy keeps its last good listener and takes this one at istiod's next listener push "
        f"after the file is there (meshplug has istiod push it again, up to {limits.REPUSH_MAX} times, at most every "
        f"{limits.REPUSH_MAX_S:g} s); {verdict.message.removeprefix(proxies.NACK_PREFIX).strip()}",
    )


def _version_tag(kind: str) -> str:
    """How this route's plugin versions start in `nacks.NackMemory` (the native route's never do): a WasmPlugin
    and a TrafficExtension of one name share an Envoy name, and a plugin moved between routes its digest."""
    return f"{kind}/EnvoyFilter:"


def _version(plugin: spec.PluginSpec, digest: str) -> str:
    """The plugin's version as this route's NACKs are kept (by proxy and Envoy name, `nacks.NackMemory`)."""
    return f"{_version_tag(plugin.kind)}{digest or plugin.url}/{plugin.generation}"


def _owner(meta: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace/name, kind) of the meshplug resource an object was rendered for, from its labels."""
    labels = meta.get("labels") or {}
    where = f"{labels.get(istio.PLUGIN_NAMESPACE_LABEL, '')}/{labels.get(model.PLUGIN_LABEL, '')}"
    return where, str(labels.get(model.KIND_LABEL, spec.KIND))


def _redelivered(code: model.RemoteCode, attempt: int) -> model.RemoteCode:
    """The remote code with its ``attempt``-th redelivery in the url (the module server ignores the parameter;
    Envoy fetches a changed data source again)."""
    if not attempt:
        return code
    return dataclasses.replace(code, uri=f"{code.uri}{'&' if '?' in code.uri else '?'}redelivery={attempt}")


def _carries_uri(existing: Mapping[str, Any] | None, uri: str) -> bool:
    """Whether the plugin's EnvoyFilter (as cached) names remote code by exactly this url."""
    return existing is not None and json.dumps(uri) in json.dumps(existing.get("spec"))


class FetchMarks:
    """Per plugin and pod: how many remote code fetches the pod's Envoy had given up (`proxies.RemoteFetches`) when
    the url it has was delivered, so that the ones given up since are told apart. Envoy counts every module's
    fetches together: one of another remote module given up since holds this plugin too (its redelivery costs a
    listener build, the module taken from Envoy's code cache). A pod without a mark (created after the delivery, or
    the operator restarted) counts from 0 (every fetch of its Envoy's life), unless the status counted it loaded
    with this module already (then from now); a count lower than the mark (an Envoy that restarted, or counters
    that started again: `proxies.RemoteFetches`) counts from 0 again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: dict[tuple[tuple[str, str], str], tuple[str, int | None]] = {}  # (key, pod) -> (url, count)

    def delivering(
        self, key: tuple[str, str], uri: str, readings: Mapping[str, proxies.RemoteFetches | None]
    ) -> None:
        """``uri`` is about to be delivered to these pods (their readings taken just before; None: not read)."""
        with self._lock:
            for pod, reading in readings.items():
                self._marks[(key, pod)] = (uri, reading.failures if reading is not None else None)

    def since(
        self, key: tuple[str, str], pod: str, uri: str, now: proxies.RemoteFetches, *, confirmed: bool
    ) -> proxies.RemoteFetches:
        """``now`` with the fetches given up since ``uri`` was delivered to ``pod``."""
        with self._lock:
            uri_then, count = self._marks.get((key, pod), ("", None))
            if uri_then != uri or count is None or now.failures < count:
                count = now.failures if confirmed and uri_then != uri else 0
                self._marks[(key, pod)] = (uri, count)
        return dataclasses.replace(now, failures=now.failures - count)

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            for mark in [m for m in self._marks if m[0] == key]:
                del self._marks[mark]


def _delivered_attempt(existing: Mapping[str, Any] | None, code: model.RemoteCode) -> int:
    """The redelivery of this module (``code``, as first delivered) that the plugin's EnvoyFilter carries in its url
    (0: none, or another module's url). The url of a module is its sha256 with the module server's signature and
    this number alone, so a restarted operator that counts on from it renders the url every proxy already has:
    nothing is pushed, nothing downloaded again."""
    if existing is None:
        return 0
    text = json.dumps(existing.get("spec"))
    found = re.search(f'"{re.escape(code.uri)}[?&]redelivery=([0-9]+)"', text)
    return int(found.group(1)) if found else 0


def _blocked(pod: Mapping[str, Any], code: model.Code | None) -> str:
    """Why this pod can never load a ConfigMap-mounted module as delivered ("" when it can)."""
    if not isinstance(code, model.LocalCode):
        return ""
    if proxies.is_gateway(pod):
        return (
            "GatewayCannotMount: Istio's gateway injection template ignores sidecar.istio.io/userVolume: the module's "
            "ConfigMap is never mounted here; use istioDelivery: native"
        )
    labels = pod["metadata"].get("labels") or {}
    if labels.get(istio.mount_label(code)) != istio.MOUNTED:
        return (
            "RestartNeeded: the pod was created before the plugin (or before its ConfigMap reached this namespace) "
            "and does not mount the module; restart it"
        )
    return ""


def _unreachable(
    plugin: spec.PluginSpec,
    code: model.Code | None,
    dump: Mapping[str, Any],
    pushed: bool,
    server: model.ModuleServer,
) -> str:
    """What istiod's view of the proxy shows the filter cannot work there ("" when nothing)."""
    if isinstance(code, model.RemoteCode) and pushed and server.istio_cluster not in proxies.clusters(dump):
        return (
            f"ModuleServerHidden: the proxy has no cluster {server.istio_cluster} (its Sidecar egress hides meshplug's "
            "module server): Envoy cannot fetch the module and answers 503; add the module server's namespace to "
            "the Sidecar's egress hosts or use istioDelivery: native"
        )
    if (
        not pushed
        and plugin.type is spec.PluginType.HTTP
        and plugin.phase is spec.Phase.AUTHZ
        and not any(f.get("name") == istio.RBAC for f in proxies.listener_filters(dump))
    ):
        return (
            f"NoAnchor: phase AUTHZ is placed before {istio.RBAC}, and this proxy's chain has none (no "
            "AuthorizationPolicy selects it): an EnvoyFilter cannot place the plugin; use istioDelivery: native"
        )
    return ""


def _carries(flt: Mapping[str, Any], envoy_name: str, code: model.Code | None) -> bool:
    """Whether a filter of istiod's listener dump is the plugin's with this code (camelCase JSON; None: Lua)."""
    if flt.get("name") != envoy_name:
        return False
    text = str(flt)
    if code is None:
        return True
    if isinstance(code, model.RemoteCode):
        return code.sha256 in text
    return code.filename in text
