"""One WasmPlugin's walk through the operator: spec -> fetch -> validate -> render -> deliver(plane) -> status.

Called by `meshplug.controller.handlers` through the work queue (`reconcile_key`, on worker threads) and by its
delete handler (`cleanup`); kopf-free so it can be driven directly. Every outcome ends in a status write
(conditions Fetched, Validated, Ready with a specific reason, observedGeneration, digest, pod counts, failing
pods) and, on failure, a Warning Event. `status.Retry` means run again later (fetch failures, API refusals,
agents that did not answer: the cause may heal without a spec change); `status.Permanent` means only a spec
change helps.

Rendering and delivery belong to the plugin's delivery path (`meshplug.controller.delivery`): this module picks
the path, hands it the validated module and writes the `delivery.Report` it returns. When a new generation moves
a plugin to another path, the other paths take back what they delivered. The paths: ``dataPlane: agent`` ->
`delivery.agent`; the istio data plane -> `delivery.istio_native` (Istio's own TrafficExtension/WasmPlugin) or
`delivery.istio_configmap` (EnvoyFilter + ConfigMap), by the plugin's ``istioDelivery``, else the operator's
``istio_delivery`` (``auto``: native where the cluster serves extensions.istio.io, else configmap).

Istio semantics kept here: a ``file://`` url of the istio plane names a file inside the proxy and is passed
through unread (Fetched/Validated ``Unknown``, reason ``InProxy``), unless it lies below one of the operator's
``--file-root`` directories (meshplug's own extension: the operator reads and verifies it). ``imagePullPolicy:
Always`` pulls again when the spec changes (a new generation), not on every reconcile.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshplug import errors, fetch, limits, spec, validate
from meshplug.controller import apply, delivery, identity, informer, precompile, rollout, signing, status
from meshplug.controller import events as events_mod
from meshplug.controller import metrics as metrics_mod
from meshplug.controller.delivery import agent as agent_delivery
from meshplug.controller.delivery import istio_configmap, istio_native, istio_pods, proxies
from meshplug.render import istio_native as native_render
from meshplug.render import model
from meshplug.validate import lua as validate_lua

log = logging.getLogger("meshplug.controller.reconcile")

PLUGIN_API = f"{spec.API_GROUP}/{spec.API_VERSION}"
DELIVERY_AUTO = "auto"
AGENT_PLANE_ONLY = "spec.rollout applies to dataPlane agent only: this plugin goes to every selected proxy at once"

Key = delivery.Key


class _Stages:
    """How long each stage of one reconcile took, logged as one JSON line (bench/ready.py reads it)."""

    def __init__(self, key: Key, generation: int) -> None:
        self.key = key
        self.generation = generation
        self.started = time.time()
        self.last = time.monotonic()
        self.ms: dict[str, float] = {}

    def done(self, stage: str) -> None:
        now = time.monotonic()
        self.ms[stage] = round((now - self.last) * 1000, 1)
        self.last = now

    def log(self, **facts: object) -> None:
        line = {
            "plugin": "/".join(self.key),
            "generation": self.generation,
            "started": round(self.started, 3),
            "ms": self.ms,
            **facts,
        }
        log.info("reconcile stages %s", json.dumps(line, sort_keys=True))


class Reconciler:
    """The operator's long-lived parts: API writer, fetcher, module server address, the delivery paths."""

    def __init__(
        self,
        writer: apply.Writer,
        fetcher: fetch.Fetcher,
        server: model.ModuleServer,
        *,
        identity: identity.Identity,
        metrics: metrics_mod.Metrics | None = None,
        enqueue: Callable[[Key, float], None] | None = None,
        signature_policy: signing.SignaturePolicy | None = None,
        precompiler: precompile.Precompiler | None = None,
        istio_delivery: str = DELIVERY_AUTO,
        istiod: proxies.Istiod | None = None,
        fetch_log: proxies.FetchLog | None = None,
        root_namespace: str = "istio-system",
        namespaces: tuple[str, ...] = (),
    ) -> None:
        """`precompiler`: where agent-plane modules are compiled for the agents (default: ``compiled/`` in the
        fetcher's cache, which `meshplug operator` serves at /compiled/)."""
        self.writer = writer
        self.events = events_mod.EventRecorder(writer)
        self.fetcher = fetcher
        self.server = server
        self.signature_policy = signature_policy or signing.SignaturePolicy()
        self.identity = identity
        self.metrics = metrics or metrics_mod.Metrics()
        self.precompiler = precompiler or precompile.Precompiler(fetcher.cache.root / "compiled")
        self.agent = agent_delivery.AgentDelivery(
            writer, server, self._load, metrics=self.metrics, identity=identity, load_pinned=self._load_pinned
        )
        self.agent.enqueue = enqueue
        # a module first served in the baseline tier: its optimized artifact is ready, push it
        self.precompiler.on_optimized = self._optimized
        self.istio_delivery = istio_delivery
        self.root_namespace = root_namespace
        self.fetch_log = fetch_log or proxies.FetchLog()
        istiod = istiod or proxies.Istiod(())
        selection = istio_pods.Selection(informer.ApiPods(writer), root_namespace, namespaces)
        self.istio_native = istio_native.IstioNative(writer, server, istiod, self.fetch_log, selection)
        self.istio_configmap = istio_configmap.IstioConfigMap(writer, server, istiod, self.fetch_log, selection)
        #: the newest version of each plugin seen (kopf's watch events, the status writes' answers): a reconcile
        #: starts from it instead of reading the plugin; None (driven without a watch): read from the API
        self.plugins: informer.Latest | None = None
        self._fetched: dict[Key, int] = {}  # the generation each plugin was last pulled for
        #: istio-plane modules that passed the ABI check, as (sha256, filter kind): not checked again per reconcile
        self._valid: set[tuple[str, str]] = set()
        #: per istio-plane plugin pinned by sha256: (generation, url) its module was last fetched for; a reconcile of
        #: the same generation (a pod change, a re-check) takes the bytes from the module cache instead of fetching
        self._pinned: dict[Key, tuple[int, str, fetch.Artifact]] = {}  # the artifact without its bytes
        self._lock = threading.Lock()
        self._retries: dict[Key, int] = {}
        self._forbidden: dict[Key, str] = {}

    @property
    def enqueue(self) -> Callable[[Key, float], None] | None:
        return self.agent.enqueue

    @enqueue.setter
    def enqueue(self, fn: Callable[[Key, float], None] | None) -> None:
        self.agent.enqueue = fn

    def _optimized(self, sha256: str) -> None:
        """Reconcile again the agent-plane plugins running module ``sha256`` (their validate stage now finds its
        optimized artifact; the changed set is pushed)."""
        if self.enqueue is None:
            return
        for key in self.agent.using(sha256):
            self.enqueue(key, 0.0)

    def read_pods_from(self, source: informer.PodSource) -> None:
        """Where the delivery paths read pods (the operator's pod cache; the API until set)."""
        self.agent.pods = source
        self.istio_native.selection.source = source  # one Selection, shared by both istio routes
        self.istio_configmap.selection.source = source

    def read_owned_from(
        self,
        config_maps: informer.ObjectSource,
        envoy_filters: informer.ObjectSource,
        extensions: Mapping[str, informer.ObjectSource] | None = None,
    ) -> None:
        """Where the istio routes read what they rendered (the operator's caches; the API until set): the ConfigMap
        route's ConfigMaps and EnvoyFilters, the native route's Istio extensions (by kind)."""
        self.istio_configmap.use_caches(config_maps, envoy_filters)
        self.istio_native.use_caches(extensions or {})

    def paths(self) -> tuple[delivery.Delivery, ...]:
        return (self.istio_native, self.istio_configmap, self.agent)

    def path_for(self, plugin: spec.PluginSpec) -> delivery.Delivery:
        """The delivery path of the plugin's data plane (and, for istio, its delivery mode)."""
        if plugin.data_plane is spec.DataPlane.AGENT:
            return self.agent
        mode = plugin.istio_delivery.value if plugin.istio_delivery is not None else self.istio_delivery
        if mode == DELIVERY_AUTO:
            served = self.writer.served(native_render.API_VERSION)
            native = any(plural in served for plural in native_render.KINDS.values())
            mode = spec.IstioDelivery.NATIVE.value if native else spec.IstioDelivery.CONFIGMAP.value
        return self.istio_native if mode == spec.IstioDelivery.NATIVE.value else self.istio_configmap

    def close(self) -> None:
        """Stop pushing: pushes still running are abandoned (their reconciles raise `workqueue.ShuttingDown`)."""
        self.agent.close()

    def forget_pod(self, namespace: str, name: str) -> None:
        self.agent.forget_pod(namespace, name)

    # --- the queue's entry point ------------------------------------------------------------------------------

    def reconcile_key(self, key: Key) -> float | None:
        """Reconcile the WasmPlugin ``key`` as the API has it now; the delay before a retry, or None."""
        namespace, key_name = key
        kind, name = spec.split_key_name(key_name)
        try:
            # the operator's watch has every plugin (one it lacks is gone); driven without one, the API answers
            body = (
                self.plugins.get(key)
                if self.plugins is not None
                else self.writer.get(PLUGIN_API, kind, namespace, name)
            )
        except errors.ApplyError as exc:
            self._note_forbidden(key, exc)
            self.metrics.reconciled("error")
            return self._next_retry(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self._retries.pop(key, None)
            return None  # gone, or the delete handler (finalizer) is cleaning up
        started = time.monotonic()
        try:
            self.reconcile(body, self._retries.get(key, 0))
        except status.Retry as exc:
            self.metrics.reconciled("retry", time.monotonic() - started)
            n = self._retries.get(key, 0)
            self._retries[key] = n + 1
            return exc.delay
        except status.Permanent:
            self.metrics.reconciled("permanent", time.monotonic() - started)
            self._retries.pop(key, None)
            return None
        self.metrics.reconciled("ok", time.monotonic() - started)
        self._retries.pop(key, None)
        with self._lock:
            self._forbidden.pop(key, None)
            self.metrics.unhealthy = next(iter(self._forbidden.values()), "")
        return None

    def _next_retry(self, key: Key) -> float:
        n = self._retries.get(key, 0)
        self._retries[key] = n + 1
        return status.backoff(n)

    def _note_forbidden(self, key: Key, exc: errors.ApplyError) -> None:
        if exc.reason != "Forbidden":
            return
        log.error("missing RBAC permission while reconciling %s/%s: %s", *key, exc.message)
        with self._lock:
            self._forbidden[key] = f"forbidden: {exc.message}"
            self.metrics.unhealthy = self._forbidden[key]

    # --- status ----------------------------------------------------------------------------------------------

    def _finish(
        self,
        body: Mapping[str, Any],
        conditions: Sequence[status.Condition],
        *,
        digest: str | None = None,
        pods: tuple[int, int] | None = None,
        failing: Sequence[Mapping[str, Any]] = (),
        event: tuple[bool, str, str] | None = None,
        loaded: tuple[str, ...] | None = None,
        events: Sequence[tuple[bool, str, str]] = (),
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        previous = (body.get("status") or {}).get("conditions") or []
        raw = body.get("spec") or {}
        if raw.get("rollout") is not None and raw.get("dataPlane") != spec.DataPlane.AGENT.value:
            conditions = [*conditions, status.Condition(rollout.CONDITION, "False", "AgentPlaneOnly", AGENT_PLANE_ONLY)]
            if (body.get("status") or {}).get("observedGeneration") != generation:  # once per generation
                events = [*events, (True, "AgentPlaneOnly", AGENT_PLANE_ONLY)]
        new: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": status.merge_conditions(previous, conditions, generation),
        }
        if digest is not None:
            new["digest"] = digest
        if pods is not None:
            ready, total = pods
            new["pods"] = status.pods_block(ready, total)
            new["failingPods"] = [dict(f) for f in failing][: limits.MAX_FAILING_PODS_REPORTED]
            self.metrics.pods((meta["namespace"], meta["name"]), ready, total)
        ready_condition = next((c for c in conditions if c.type == status.READY), None)
        if ready_condition is not None:
            self.metrics.ready((meta["namespace"], meta["name"]), ready_condition.status == "True")
        if loaded is not None:
            new["loadedPods"] = list(loaded)
        new.update(fields or {})
        current = body.get("status") or {}
        patch = status.delta(current, new)  # what the status does not hold yet (unchanged: no write)
        if patch:
            kind = str(body.get("kind") or spec.KIND)
            written = self.writer.patch_status(meta["namespace"], meta["name"], patch, kind=kind)
            if self.plugins is not None and written.get("metadata"):  # the next reconcile starts from this version
                self.plugins.put((meta["namespace"], spec.key_name(kind, meta["name"])), written)
        self._record(body, ([event] if event is not None else []) + list(events))

    def _record(self, body: Mapping[str, Any], events: Sequence[tuple[bool, str, str]]) -> None:
        """Write the Events (after the status, the user-visible truth). An Event the API refuses or does not answer
        neither undoes nor holds back the status: `events.EventRecorder` tries it again later (a hiccup, a 409,
        429 or 5xx, a denial lifted later), without counting an occurrence twice, and logs what it drops."""
        for warning, reason, message in events:
            self.events.record(body, warning=warning, reason=reason, message=message)

    # --- reconcile -------------------------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], retry: int = 0) -> None:
        key: Key = (body["metadata"]["namespace"], spec.key_name(str(body.get("kind")), body["metadata"]["name"]))
        try:
            self._reconcile(body, retry)
        except errors.ApplyError as exc:  # the status write itself was refused
            self._note_forbidden(key, exc)
            raise status.Retry(exc.message, status.backoff(retry)) from None

    def _reconcile(self, body: Mapping[str, Any], retry: int) -> None:
        key: Key = (body["metadata"]["namespace"], spec.key_name(str(body.get("kind")), body["metadata"]["name"]))
        try:
            plugin = spec.parse(body)
        except errors.SpecError as exc:
            cond = status.Condition(status.READY, "False", status.reason(exc.reason), exc.message)
            self._finish(body, [cond], event=(True, status.reason(exc.reason), exc.message))
            raise status.Permanent(exc.message) from None

        if plugin.lua is not None:
            self._reconcile_lua(body, plugin, key, retry)
            return
        clock = _Stages(key, plugin.generation)
        if self._in_proxy(plugin):
            in_proxy = f"{plugin.url} names a file inside the proxy; meshplug never reads it"
            fetched = status.Condition(status.FETCHED, "Unknown", "InProxy", in_proxy)
            validated = status.Condition(status.VALIDATED, "Unknown", "NotVerified", "the proxy's file is not checked")
            checked = (fetched, validated)
            self._deliver(body, plugin, None, key=key, retry=retry, checked=checked, digest=None, clock=clock)
            return
        try:
            artifact = self._fetched_before(key, plugin) or self._fetch(plugin, always=self._pull_again(plugin))
        except errors.MeshplugError as exc:
            if isinstance(exc, errors.ApplyError):
                self._note_forbidden(key, exc)
            why = status.reason(exc.reason)
            refused = "module refused" if isinstance(exc, errors.SignatureError) else "fetch failed"
            conds = [
                status.Condition(status.FETCHED, "False", why, exc.message),
                status.Condition(status.VALIDATED, "Unknown", "NotFetched", "the module was not fetched"),
                status.Condition(status.READY, "False", why, f"{refused}: {exc.message}"),
            ]
            self._finish(body, conds, event=(True, why, exc.message))
            raise status.Retry(exc.message, status.backoff(retry)) from None
        clock.done("fetch")
        fetched = status.Condition(status.FETCHED, "True", "Fetched", f"{artifact.digest} from {artifact.source_url}")
        moved: tuple[tuple[bool, str, str], ...] = ()  # recorded with the status (after it)
        if artifact.previous_manifest_digest is not None:
            why = f"{plugin.url} moved from {artifact.previous_manifest_digest} to {artifact.manifest_digest}"
            moved = ((False, "TagMoved", why),)

        try:
            module = self._validate(plugin, artifact)
        except errors.ValidationError as exc:
            reasons = "; ".join(exc.reasons) or exc.message
            why = status.reason(exc.reason)
            conds = [
                fetched,
                status.Condition(status.VALIDATED, "False", why, reasons),
                status.Condition(status.READY, "False", why, f"module rejected: {reasons}"),
            ]
            self._finish(body, conds, digest=artifact.digest, event=(True, why, reasons), events=moved)
            raise status.Retry(reasons, max(15.0, status.backoff(retry))) from None  # a mutable tag may be re-pushed
        validated = status.Condition(status.VALIDATED, "True", "Valid", "proxy-wasm ABI check passed")
        clock.done("validate")
        with self._lock:
            self._fetched[key] = plugin.generation
            if plugin.data_plane is spec.DataPlane.ISTIO and plugin.sha256 is not None:
                seen = dataclasses.replace(artifact, data=b"", from_cache=True, previous_manifest_digest=None)
                self._pinned[key] = (plugin.generation, plugin.url, seen)
        checked = (fetched, validated)
        self._deliver(
            body, plugin, module, key=key, retry=retry, checked=checked, digest=artifact.digest, clock=clock, told=moved
        )

    def _reconcile_lua(self, body: Mapping[str, Any], plugin: spec.PluginSpec, key: Key, retry: int) -> None:
        """A TrafficExtension's Lua: nothing to fetch (the script is the resource), compiled as Envoy would load it."""
        assert plugin.lua is not None and plugin.sha256 is not None
        digest = f"sha256:{plugin.sha256}"
        fetched = status.Condition(status.FETCHED, "True", "Inline", "the Lua script is part of the resource")
        try:
            validate_lua.check(plugin.lua, where="spec.lua.inlineCode")
        except errors.ValidationError as exc:
            conds = [
                fetched,
                status.Condition(status.VALIDATED, "False", "InvalidLua", exc.message),
                status.Condition(status.READY, "False", "InvalidLua", exc.message),
            ]
            self._finish(body, conds, digest=digest, event=(True, "InvalidLua", exc.message))
            raise status.Permanent(exc.message) from None
        validated = status.Condition(status.VALIDATED, "True", "Compiled", "the Lua script compiles (LuaJIT 2.1)")
        module = model.Module(sha256=plugin.sha256, data=plugin.lua.encode())
        self._deliver(body, plugin, module, key=key, retry=retry, checked=(fetched, validated), digest=digest)

    def _deliver(
        self,
        body: Mapping[str, Any],
        plugin: spec.PluginSpec,
        module: model.Module | None,
        *,
        key: Key,
        retry: int,
        checked: tuple[status.Condition, status.Condition],
        digest: str | None,
        clock: _Stages | None = None,
        told: Sequence[tuple[bool, str, str]] = (),
    ) -> None:
        """``told``: Events of the stages before (recorded with the status)."""
        fetched, validated = checked
        clock = clock or _Stages(key, plugin.generation)
        try:
            first_time = (body.get("status") or {}).get("observedGeneration") != plugin.generation
            if first_time:  # a new generation asks what the cluster serves now (Istio may have been upgraded)
                self._discover(key, plugin.generation)
            path = self.path_for(plugin)
            for other in self.paths():
                # this generation may have moved the plugin from another path (the agent path's check is in memory)
                if other is not path and (first_time or other is self.agent):
                    other.remove(plugin.namespace, key[1], owned=False)
            clock.done("other_paths")
            report = path.deliver(delivery.Request(body=body, plugin=plugin, module=module, retry=retry))
        except errors.ApplyError as exc:
            self._note_forbidden(key, exc)
            self.writer.forget_discovery()  # a kind may have gone (or come): the retry asks what the cluster serves
            why = status.reason(exc.reason)
            conds = [fetched, validated, status.Condition(status.READY, "False", why, exc.message)]
            self._finish(body, conds, digest=digest, event=(True, why, exc.message), events=told)
            raise status.Retry(exc.message, status.backoff(retry)) from None
        clock.done("deliver")
        self._finish(
            body,
            [fetched, validated, report.ready, *report.conditions],
            digest=digest,
            pods=report.pods,
            failing=report.failing,
            event=report.event,
            loaded=report.loaded,
            events=[*told, *report.events],
            fields=report.fields,
        )
        clock.done("status")
        tier = module.compiled.tier if module is not None and module.compiled is not None else None
        pushes = self.agent.push_ms.pop(key, None) if path is self.agent else None
        pushed = self.agent.pushed.pop(key, 0) if path is self.agent else None
        clock.log(
            ready=report.ready.status == "True", compiled=tier is not None, tier=tier, pushes_ms=pushes, pushed=pushed
        )
        if report.retry:
            raise status.Retry(report.retry, status.backoff(retry))
        if report.recheck_s is not None:
            raise status.Retry("waiting for the proxies", report.recheck_s)

    def _discover(self, key: Key, generation: int) -> None:
        """Ask what the cluster serves in extensions.istio.io (the istio plane's native kinds), with an answer no
        older than this generation's first sight: plugins changed at the same moment share one request, and the
        reconciles of a generation already handled use the answer remembered (`apply.Writer.served`)."""
        seen = self.plugins.since(key, generation) if self.plugins is not None else None
        self.writer.served(native_render.API_VERSION, since=seen if seen is not None else time.monotonic())

    def _in_proxy(self, plugin: spec.PluginSpec) -> bool:
        """A file:// url of the istio plane outside the operator's file roots: a file inside the proxy."""
        return (
            plugin.data_plane is spec.DataPlane.ISTIO
            and plugin.scheme is spec.Scheme.FILE
            and not self.fetcher.in_file_roots(plugin.url)
        )

    def _fetched_before(self, key: Key, plugin: spec.PluginSpec) -> fetch.Artifact | None:
        """The module of an istio-plane plugin pinned by sha256, when this generation fetched it already (the pin
        fixes the bytes): from the module cache, without reading its source again. None: fetch it."""
        with self._lock:
            known = self._pinned.get(key)
        if plugin.sha256 is None or known is None or known[:2] != (plugin.generation, plugin.url):
            return None
        data = self.fetcher.cache.get_blob(known[2].sha256)  # checked against its sha256 on reading
        return dataclasses.replace(known[2], data=data) if data is not None else None

    def _pull_again(self, plugin: spec.PluginSpec) -> bool:
        """Always pulls again once per new generation (Istio: when the resource changes), not per reconcile."""
        key = (plugin.namespace, spec.key_name(plugin.kind, plugin.name))
        with self._lock:
            last = self._fetched.get(key)
        return plugin.pull_policy is spec.PullPolicy.ALWAYS and last != plugin.generation

    def fetch_module(self, plugin: spec.PluginSpec) -> fetch.Artifact:
        """The plugin's module as its url gives it now (pull secret and pull policy applied): the module server
        fetches what another replica pushed."""
        return self._fetch(plugin, always=False)

    def _load(self, plugin: spec.PluginSpec) -> model.Module:
        """Fetch and validate (for paths that deliver other plugins' modules alongside, the agent's sets)."""
        if plugin.lua is not None:
            assert plugin.sha256 is not None
            validate_lua.check(plugin.lua, where="spec.lua.inlineCode")
            return model.Module(sha256=plugin.sha256, data=plugin.lua.encode())
        return self._validate(plugin, self._fetch(plugin, always=False))

    def _load_pinned(self, plugin: spec.PluginSpec, sha256: str) -> model.Module:
        """A version fetched before (a canary rollout's stable one), by its sha256: from the module cache when it
        holds it (its url may serve other bytes by now: a moved tag), else fetched again by its url. A plugin
        whose signature is checked is always fetched (and verified) again: the agents verify what it carries."""
        data = None
        if plugin.lua is None and not self.signature_policy.keys_for(plugin):
            data = self.fetcher.cache.get_blob(sha256)
        if data is None:
            return self._load(plugin)
        layout = fetch.Layout.FILE if plugin.scheme is spec.Scheme.FILE else fetch.Layout.HTTP
        return self._validate(plugin, fetch.Artifact(data, sha256, plugin.url, None, layout, from_cache=True))

    def _validate(self, plugin: spec.PluginSpec, artifact: fetch.Artifact) -> model.Module:
        kind = validate.FilterKind.NETWORK if plugin.type is spec.PluginType.NETWORK else validate.FilterKind.HTTP
        started = time.monotonic()
        try:
            if plugin.data_plane is spec.DataPlane.AGENT:
                # compiled with the agents' engine settings: the artifact they load instead of compiling
                signature = artifact.signature  # the agents verify it again (and compile it themselves)
                ready = self.precompiler.validate(artifact.data, artifact.sha256, kind, served=signature is None)
                return model.Module(sha256=artifact.sha256, data=artifact.data, compiled=ready, signature=signature)
            if (artifact.sha256, kind.value) not in self._valid:
                validate.validate(artifact.data, kind=kind)
                with self._lock:
                    if len(self._valid) >= limits.MAX_VALID_MODULES_REMEMBERED:
                        self._valid.clear()
                    self._valid.add((artifact.sha256, kind.value))
        finally:
            self.metrics.validated(time.monotonic() - started)
        return model.Module(sha256=artifact.sha256, data=artifact.data)

    def _fetch(self, plugin: spec.PluginSpec, *, always: bool) -> fetch.Artifact:
        secret: bytes | None = None
        if plugin.pull_secret:
            obj = self._pull_secret(plugin.namespace, plugin.pull_secret)
            raw = ((obj or {}).get("data") or {}).get(".dockerconfigjson")
            if raw is None:
                raise errors.FetchError(
                    f"imagePullSecret {plugin.pull_secret!r} missing or not kubernetes.io/dockerconfigjson",
                    reason="PullSecretNotFound",
                )
            secret = base64.b64decode(raw)
        return self.fetcher.fetch(
            plugin.url,
            sha256=plugin.sha256,
            pull_secret=secret,
            pull_policy=(spec.PullPolicy.ALWAYS if always else spec.PullPolicy.IF_NOT_PRESENT).value,
            keys=self.signature_policy.keys_for(plugin),
        )

    def _pull_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The plugin's imagePullSecret, read only where the namespace's owner granted it: the operator's RBAC
        names no Secret but its own (README "imagePullSecret")."""
        try:
            return self.writer.get("v1", "Secret", namespace, name)
        except errors.ApplyError as exc:
            if exc.reason != "Forbidden":
                raise
            raise errors.FetchError(
                f"imagePullSecret {name!r}: the operator may not read it; the namespace's owner grants"
                f" it with a Role allowing get on secrets named {name!r}, bound to the operator's"
                " ServiceAccount (README: imagePullSecret)",
                reason="PullSecretForbidden",
            ) from None

    # --- cleanup ---------------------------------------------------------------------------------------------

    def cleanup(self, body: Mapping[str, Any]) -> None:
        """Remove what this plugin generated on every path (the path it named looks even without memory of it)."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], spec.key_name(str(body.get("kind")), meta["name"])
        key: Key = (namespace, name)
        self.metrics.forget(key)
        self._retries.pop(key, None)
        with self._lock:
            self._fetched.pop(key, None)
            self._pinned.pop(key, None)
        named = (body.get("spec") or {}).get("dataPlane") or spec.DataPlane.ISTIO.value
        for path in self.paths():
            path.remove(namespace, name, owned=(path is self.agent) == (named == spec.DataPlane.AGENT.value))
