"""One WasmPlugin's reconcile and cleanup: spec -> fetch -> validate -> render -> apply, then status and Events.

Called by `meshplug.controller.handlers` through the work queue (`reconcile_key`, on worker threads) and by its
delete handler (`cleanup`); kopf-free so it can be driven directly. Every outcome ends in a status write
(conditions Fetched, Validated, Ready with a specific reason, observedGeneration, digest, pod counts, failing
pods) and, on failure, a Warning Event. `Retry` means run again later (fetch failures, API refusals, agents
that did not answer: the cause may heal without a spec change); `Permanent` means only a spec change helps.

Data planes:
- istio: EnvoyFilter + ConfigMap (or the module server) + pod-template volume annotations on the selected
  Deployments, StatefulSets and DaemonSets (removed from workloads that stop matching). Istio reports nothing
  per proxy, so Ready means "applied" and the pod counts say which selected pods run the mounted volume.
- agent: each selected pod's agent gets its pod's FULL desired set (every agent-plane WasmPlugin selecting the
  pod, in chain order: `render.agent.desired_set`), modules served by the operator's module server under
  signed URLs. Ready only when every selected pod's agent ACKed a set in which this plugin runs with this
  digest. A NACKed set is not pushed again until something changes (the set, the pod's address or its
  restarts); unreachable agents are retried with backoff. Pods that stop being selected get their new set.
"""

from __future__ import annotations

import base64
import datetime
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import errors, fetch, limits, spec, validate
from meshplug.controller import agents, apply, workqueue
from meshplug.controller import metrics as metrics_mod
from meshplug.render import agent as agent_render
from meshplug.render import istio, model, podtemplate

log = logging.getLogger("meshplug.controller.reconcile")

FETCHED, VALIDATED, READY = "Fetched", "Validated", "Ready"
ISTIO_EF = ("networking.istio.io/v1alpha3", "EnvoyFilter")
PLUGIN_API = f"{spec.API_GROUP}/{spec.API_VERSION}"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
#: the Secret (in each plugin's namespace) whose key ``token`` authenticates pushes to that namespace's agents
DEFAULT_AGENT_TOKEN_SECRET = "meshplug-agent-token"  # noqa: S105 (a Secret's name)

Key = tuple[str, str]


class Retry(Exception):
    """Run the reconcile again after `delay` seconds (the cause may heal without a spec change)."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Permanent(Exception):
    """Only a spec change can help; do not retry."""


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


@dataclass(frozen=True)
class PluginEntry:
    """An agent-plane plugin as it is delivered: its spec, its validated module, its chain tie-break."""

    plugin: spec.PluginSpec
    module: model.Module
    tie_break: str  # creationTimestamp + namespace/name (Istio's tie-break within a phase and priority)


@dataclass(frozen=True)
class PodState:
    """The last push to one pod's agent: to which address, which set, what came back."""

    target: agents.Target
    restarts: int
    outcome: agents.Outcome


@dataclass(frozen=True)
class PodReport:
    ready: int
    total: int
    failing: tuple[dict[str, str], ...]
    retry: str  # non-empty: a cause that heals by retrying (unreachable agent, missing token)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]], new: Sequence[Condition], generation: int
) -> list[dict[str, Any]]:
    """Conditions for the status; lastTransitionTime moves only when a condition's status changes."""
    old = {c.get("type"): c for c in previous}
    out = []
    for c in new:
        prior = old.get(c.type)
        since = prior.get("lastTransitionTime") if prior and prior.get("status") == c.status else None
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message[:1024],
                "observedGeneration": generation,
                "lastTransitionTime": since or _now(),
            }
        )
    return out


def selects(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def backoff(retry: int) -> float:
    first, cap = limits.RECONCILE_BACKOFF_FIRST_S, limits.RECONCILE_BACKOFF_MAX_S
    return float(min(cap, first * 2 ** min(retry, 6)))


def template_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = ((workload.get("spec") or {}).get("template", {}).get("metadata") or {}).get(
        "labels"
    ) or {}
    return labels


def restarts_of(pod: Mapping[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def tie_break(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('creationTimestamp', '')}/{meta.get('namespace', '')}/{meta.get('name', '')}"


class Reconciler:
    """The operator's long-lived parts: API writer, fetcher, module server address, agent-plane state."""

    def __init__(
        self,
        writer: apply.Writer,
        fetcher: fetch.Fetcher,
        server: model.ModuleServer,
        *,
        metrics: metrics_mod.Metrics | None = None,
        agent_token_secret: str = DEFAULT_AGENT_TOKEN_SECRET,
        enqueue: Callable[[Key, float], None] | None = None,
    ) -> None:
        self.writer = writer
        self.fetcher = fetcher
        self.server = server
        self.metrics = metrics or metrics_mod.Metrics()
        self.agent_token_secret = agent_token_secret
        self.enqueue = enqueue
        self._lock = threading.Lock()
        self._entries: dict[Key, PluginEntry] = {}  # agent-plane plugins, last good module
        self._pods: dict[Key, PodState] = {}  # (namespace, pod) -> last push
        self._pushed: dict[Key, frozenset[str]] = {}  # plugin -> pods it was pushed to
        self._pod_locks: dict[Key, threading.Lock] = {}
        self._retries: dict[Key, int] = {}
        self._forbidden: dict[Key, str] = {}
        self._pool = workqueue.Pool(limits.AGENT_PUSH_CONCURRENCY, "meshplug-push")

    def close(self) -> None:
        """Stop pushing: pushes still running are abandoned (their reconciles raise `workqueue.ShuttingDown`)."""
        self._pool.close()

    # --- the queue's entry point ------------------------------------------------------------------------------

    def reconcile_key(self, key: Key) -> float | None:
        """Reconcile the WasmPlugin ``key`` as the API has it now; the delay before a retry, or None."""
        namespace, name = key
        try:
            body = self.writer.get(PLUGIN_API, spec.KIND, namespace, name)
        except errors.ApplyError as exc:
            self._note_forbidden(key, exc)
            self.metrics.reconciled("error")
            return self._next_retry(key)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self._retries.pop(key, None)
            return None  # gone, or the delete handler (finalizer) is cleaning up
        try:
            self.reconcile(body, self._retries.get(key, 0))
        except Retry as exc:
            self.metrics.reconciled("retry")
            n = self._retries.get(key, 0)
            self._retries[key] = n + 1
            return exc.delay
        except Permanent:
            self.metrics.reconciled("permanent")
            self._retries.pop(key, None)
            return None
        self.metrics.reconciled("ok")
        self._retries.pop(key, None)
        with self._lock:
            self._forbidden.pop(key, None)
            self.metrics.unhealthy = next(iter(self._forbidden.values()), "")
        return None

    def _next_retry(self, key: Key) -> float:
        n = self._retries.get(key, 0)
        self._retries[key] = n + 1
        return backoff(n)

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
        conditions: Sequence[Condition],
        *,
        digest: str | None = None,
        pods: tuple[int, int] | None = None,
        failing: Sequence[Mapping[str, str]] = (),
        event: tuple[bool, str, str] | None = None,
        url: str | None = None,
    ) -> None:
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        previous = (body.get("status") or {}).get("conditions") or []
        status: dict[str, Any] = {
            "observedGeneration": generation,
            "conditions": merge_conditions(previous, conditions, generation),
        }
        if digest is not None:
            status["digest"] = digest
        if url is not None:
            status["url"] = url
        if pods is not None:
            ready, total = pods
            status["pods"] = {"total": total, "ready": ready, "failing": total - ready, "summary": f"{ready}/{total}"}
            status["failingPods"] = list(failing)[: limits.MAX_FAILING_PODS_REPORTED]
            self.metrics.pods((meta["namespace"], meta["name"]), ready, total)
        if event is not None:
            warning, reason, message = event
            self.writer.event(body, warning=warning, reason=reason, message=message)
        current = body.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):  # an unchanged status is not written again
            self.writer.patch_status(meta["namespace"], meta["name"], status)

    # --- reconcile -------------------------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], retry: int = 0) -> None:
        key: Key = (body["metadata"]["namespace"], body["metadata"]["name"])
        try:
            self._reconcile(body, retry)
        except errors.ApplyError as exc:  # the status or Event write itself was refused
            self._note_forbidden(key, exc)
            raise Retry(exc.message, backoff(retry)) from None

    def _reconcile(self, body: Mapping[str, Any], retry: int) -> None:
        key: Key = (body["metadata"]["namespace"], body["metadata"]["name"])
        try:
            plugin = spec.parse(body)
        except errors.SpecError as exc:
            cond = Condition(READY, "False", exc.reason, exc.message)
            self._finish(body, [cond], event=(True, exc.reason, exc.message))
            raise Permanent(exc.message) from None

        try:
            artifact = self._fetch(plugin)
        except errors.MeshplugError as exc:
            if isinstance(exc, errors.ApplyError):
                self._note_forbidden(key, exc)
            conds = [
                Condition(FETCHED, "False", exc.reason, exc.message),
                Condition(VALIDATED, "Unknown", "NotFetched", "the module was not fetched"),
                Condition(READY, "False", exc.reason, f"fetch failed: {exc.message}"),
            ]
            self._finish(body, conds, event=(True, f"Fetch:{exc.reason}", exc.message))
            raise Retry(exc.message, backoff(retry)) from None
        fetched = Condition(FETCHED, "True", "Fetched", f"{artifact.digest} from {artifact.source_url}")
        if artifact.previous_manifest_digest is not None:
            self.writer.event(
                body,
                warning=False,
                reason="TagMoved",
                message=f"{plugin.url} moved from {artifact.previous_manifest_digest} to {artifact.manifest_digest}",
            )

        try:
            module = self._validate(plugin, artifact)
        except errors.ValidationError as exc:
            reasons = "; ".join(exc.reasons) or exc.message
            conds = [
                fetched,
                Condition(VALIDATED, "False", exc.reason, reasons),
                Condition(READY, "False", exc.reason, f"module rejected: {reasons}"),
            ]
            self._finish(body, conds, digest=artifact.digest, event=(True, f"Validate:{exc.reason}", reasons))
            raise Retry(reasons, max(15.0, backoff(retry))) from None  # a mutable tag may be re-pushed
        validated = Condition(VALIDATED, "True", "Valid", "proxy-wasm ABI check passed")

        first_time = (body.get("status") or {}).get("observedGeneration") != plugin.generation
        if plugin.data_plane is spec.DataPlane.AGENT:
            if first_time:  # this generation may have moved the plugin from the istio plane
                self._remove_istio(plugin.namespace, plugin.name)
            self._reconcile_agent(
                body=body, plugin=plugin, module=module, conds=[fetched, validated], digest=artifact.digest, retry=retry
            )
            return
        try:
            self._remove_agent(key, force=False)  # in case this generation moved it from the agent plane
            ready_pods, total, failing = self._deliver_istio(plugin, module)
        except errors.ApplyError as exc:
            self._note_forbidden(key, exc)
            conds = [fetched, validated, Condition(READY, "False", exc.reason, exc.message)]
            self._finish(body, conds, digest=artifact.digest, event=(True, f"Apply:{exc.reason}", exc.message))
            raise Retry(exc.message, backoff(retry)) from None
        ef_name, _, _ = istio.names(plugin.name)
        ready = Condition(
            READY,
            "True",
            "Applied",
            f"EnvoyFilter {ef_name} carries {artifact.digest}; {ready_pods}/{total} selected pods ready "
            "(Istio reports no per-proxy load status)",
        )
        self._finish(
            body, [fetched, validated, ready], digest=artifact.digest, pods=(ready_pods, total), failing=failing
        )

    def _validate(self, plugin: spec.PluginSpec, artifact: fetch.Artifact) -> model.Module:
        kind = validate.FilterKind.NETWORK if plugin.type is spec.PluginType.NETWORK else validate.FilterKind.HTTP
        validate.validate(artifact.data, kind=kind)
        return model.Module(sha256=artifact.sha256, data=artifact.data)

    def _fetch(self, plugin: spec.PluginSpec) -> fetch.Artifact:
        secret: bytes | None = None
        if plugin.pull_secret:
            obj = self.writer.get("v1", "Secret", plugin.namespace, plugin.pull_secret)
            raw = ((obj or {}).get("data") or {}).get(".dockerconfigjson")
            if raw is None:
                raise errors.FetchError(
                    f"imagePullSecret {plugin.pull_secret!r} missing or not kubernetes.io/dockerconfigjson",
                    reason="PullSecretNotFound",
                )
            secret = base64.b64decode(raw)
        return self.fetcher.fetch(
            plugin.url, sha256=plugin.sha256, pull_secret=secret, pull_policy=plugin.pull_policy.value
        )

    # --- istio data plane ------------------------------------------------------------------------------------

    def _previous_module(self, plugin: spec.PluginSpec, cm_name: str, new_sha: str) -> model.Module | None:
        """The module the plugin's ConfigMap currently delivers, when it differs from the new one."""
        current = self.writer.get("v1", "ConfigMap", plugin.namespace, cm_name) or {}
        digest = ((current.get("metadata") or {}).get("annotations") or {}).get(model.DIGEST_ANNOTATION, "")
        sha = digest.removeprefix("sha256:")
        raw = (current.get("binaryData") or {}).get(f"{sha}.wasm")
        if raw is None or sha == new_sha:
            return None
        return model.Module(sha256=sha, data=base64.b64decode(raw))

    def _deliver_istio(self, plugin: spec.PluginSpec, module: model.Module) -> tuple[int, int, list[dict[str, str]]]:
        _, cm_name, vol_name = istio.names(plugin.name)
        previous = self._previous_module(plugin, cm_name, module.sha256) if module.fits_config_map else None
        objects = istio.render(plugin, module, self.server, previous)
        if objects.config_map is not None:
            self.writer.apply(objects.config_map)  # the file exists before any EnvoyFilter names it
        try:
            self.writer.apply(objects.envoy_filter)
        except errors.ApplyError as exc:
            if exc.reason not in ("NotFound", "HTTP404"):
                raise
            raise errors.ApplyError(
                f"the cluster has no {ISTIO_EF[0]} {ISTIO_EF[1]} kind (is Istio installed?); "
                "install Istio or use dataPlane: agent",
                reason="EnvoyFilterKindMissing",
            ) from None
        if objects.config_map is None:
            self.writer.delete("v1", "ConfigMap", plugin.namespace, cm_name)
        code = objects.code
        for kind, workload in self._workloads(plugin.namespace):
            annotations = (workload["spec"]["template"].get("metadata") or {}).get("annotations") or {}
            wanted = not plugin.target_refs and selects(plugin.selector_labels, template_labels(workload))
            if wanted and isinstance(code, model.LocalCode):
                patch = podtemplate.with_module_volume(annotations, code)
            else:  # remote code, or a workload that does not (or no longer) match
                patch = podtemplate.without_module_volume(annotations, vol_name)
            if patch is not None:
                self._patch_template(kind, plugin.namespace, workload["metadata"]["name"], patch)
        return self._pod_counts(plugin, code)

    def _workloads(self, namespace: str) -> list[tuple[str, dict[str, Any]]]:
        return [(kind, w) for kind in WORKLOAD_KINDS for w in self.writer.list("apps/v1", kind, namespace)]

    def _patch_template(self, kind: str, namespace: str, name: str, patch: podtemplate.Patch) -> None:
        body = {"spec": {"template": {"metadata": {"annotations": patch}}}}
        self.writer.merge_patch("apps/v1", kind, namespace, name, body)

    def _selected_pods(self, plugin: spec.PluginSpec) -> list[dict[str, Any]]:
        if plugin.target_refs:
            return []
        selector = ",".join(f"{k}={v}" for k, v in plugin.selector)  # the API filters: no list of every pod
        return [
            p
            for p in self.writer.list("v1", "Pod", plugin.namespace, label_selector=selector)
            if selects(plugin.selector_labels, p["metadata"].get("labels"))
            and not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def _pod_counts(self, plugin: spec.PluginSpec, code: model.Code) -> tuple[int, int, list[dict[str, str]]]:
        pods = self._selected_pods(plugin)
        ready, failing = 0, []
        for pod in pods:
            conds = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
            annotations = pod["metadata"].get("annotations") or {}
            mounted = not isinstance(code, model.LocalCode) or code.volume in annotations.get(
                podtemplate.USER_VOLUME, ""
            )
            if conds.get("Ready") == "True" and mounted:
                ready += 1
            else:
                reason = "ModuleNotMounted" if not mounted else "PodNotReady"
                message = (
                    "pod predates the module volume; it is mounted after the next rollout"
                    if not mounted
                    else f"phase {(pod.get('status') or {}).get('phase', 'Unknown')}"
                )
                failing.append({"name": pod["metadata"]["name"], "reason": reason, "message": message})
        return ready, len(pods), failing

    # --- agent data plane ------------------------------------------------------------------------------------

    def _reconcile_agent(
        self,
        *,
        body: Mapping[str, Any],
        plugin: spec.PluginSpec,
        module: model.Module,
        conds: list[Condition],
        digest: str,
        retry: int,
    ) -> None:
        key: Key = (plugin.namespace, plugin.name)
        with self._lock:
            self._entries[key] = PluginEntry(plugin, module, tie_break(body))
        try:
            report, nacks = self._deliver_agent(plugin, module)
        except errors.ApplyError as exc:
            self._note_forbidden(key, exc)
            ready = Condition(READY, "False", exc.reason, exc.message)
            self._finish(body, [*conds, ready], digest=digest, event=(True, f"Apply:{exc.reason}", exc.message))
            raise Retry(exc.message, backoff(retry)) from None
        if report.ready == report.total:
            ready = Condition(
                READY, "True", "Confirmed", f"{report.ready}/{report.total} selected pods' agents run {digest}"
            )
        else:
            reasons = {f["reason"] for f in report.failing}
            reason = next(
                (
                    r
                    for r in ("AgentNACK", "AgentUnauthorized", "AgentUnreachable", "AgentTokenMissing")
                    if r in reasons
                ),
                "AgentsPending",
            )
            first = report.failing[0]
            ready = Condition(
                READY,
                "False",
                reason,
                f"{report.ready}/{report.total} selected pods' agents confirmed {digest}; "
                f"{first['name']}: {first['reason']}: {first['message']}",
            )
        event = None
        if nacks:
            pod, outcome = nacks[0]
            more = f" (and {len(nacks) - 1} more pods)" if len(nacks) > 1 else ""
            event = (True, "AgentNACK", f"pod {pod}: {outcome.reason}: {outcome.message}{more}")
        self._finish(
            body,
            [*conds, ready],
            digest=digest,
            pods=(report.ready, report.total),
            failing=report.failing,
            event=event,
        )
        if report.retry:
            raise Retry(report.retry, backoff(retry))

    def _token(self, namespace: str) -> str | None:
        secret = self.writer.get("v1", "Secret", namespace, self.agent_token_secret)
        raw = ((secret or {}).get("data") or {}).get("token")
        return base64.b64decode(raw).decode().strip() if raw else None

    def _refresh_entries(self, namespace: str) -> None:
        """Make the registry of agent-plane plugins of ``namespace`` match the API (after a restart the
        operator must not push a set that lacks plugins it has not reconciled yet)."""
        present: set[str] = set()
        for body in self.writer.list(PLUGIN_API, spec.KIND, namespace):
            meta = body["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            try:
                plugin = spec.parse(body)
            except errors.SpecError:
                continue
            if plugin.data_plane is not spec.DataPlane.AGENT:
                continue
            present.add(plugin.name)
            key = (namespace, plugin.name)
            with self._lock:
                known = self._entries.get(key)
            if known is not None and known.plugin == plugin:
                continue
            try:
                module = self._validate(plugin, self._fetch(plugin))
            except errors.MeshplugError as exc:  # its own reconcile reports it; keep its last good module
                log.info("agent set of %s: %s/%s not deliverable yet: %s", namespace, namespace, plugin.name, exc)
                continue
            with self._lock:
                self._entries[key] = PluginEntry(plugin, module, tie_break(body))
        with self._lock:
            for key in [k for k in self._entries if k[0] == namespace and k[1] not in present]:
                del self._entries[key]

    def _desired(self, namespace: str, labels: Mapping[str, str]) -> tuple[str, tuple[Any, ...]]:
        with self._lock:
            entries = [
                (e.plugin, e.module, e.tie_break)
                for (ns, _), e in self._entries.items()
                if ns == namespace and selects(e.plugin.selector_labels, labels)
            ]
        resources = agent_render.desired_set(entries, self.server)
        return agent_render.version_of(resources), resources

    def _deliver_agent(
        self, plugin: spec.PluginSpec, module: model.Module
    ) -> tuple[PodReport, list[tuple[str, agents.Outcome]]]:
        key: Key = (plugin.namespace, plugin.name)
        self._refresh_entries(plugin.namespace)
        pods = self._selected_pods(plugin)
        names = frozenset(p["metadata"]["name"] for p in pods)
        with self._lock:
            gone = self._pushed.get(key, frozenset()) - names
            self._pushed[key] = names
        others = [p for p in self.writer.list("v1", "Pod", plugin.namespace) if p["metadata"]["name"] in gone]
        token = self._token(plugin.namespace)
        results = self._pool.map(lambda p: self._sync_pod(p, token), [*pods, *others])
        ready, failing, retry, nacks = 0, [], "", []
        for pod, (state, pushed_now) in zip(pods, results, strict=False):
            name = pod["metadata"]["name"]
            if isinstance(state, str):  # no push possible: why
                reason, message = state.split(":", 1)
                failing.append({"name": name, "reason": reason, "message": message.strip()})
                retry = retry or (message if reason in ("AgentTokenMissing", "BadPushPort") else "")
                continue
            out = state.outcome
            if (
                out.result in (agents.Result.ACK, agents.Result.NACK)
                and (plugin.envoy_name, module.sha256) in out.running
            ):
                ready += 1  # confirmed; after a NACK the agent still runs it (the set was refused for another plugin)
                if out.result is agents.Result.NACK and pushed_now:
                    nacks.append((name, out))
                continue
            if out.result is agents.Result.ACK:
                failing.append({"name": name, "reason": "NotRunning", "message": "the agent reports it not running"})
            elif out.result is agents.Result.NACK:
                failing.append({"name": name, "reason": "AgentNACK", "message": f"{out.reason}: {out.message}"})
                if pushed_now:
                    nacks.append((name, out))
            else:
                reason = "AgentUnauthorized" if out.result is agents.Result.UNAUTHORIZED else "AgentUnreachable"
                failing.append({"name": name, "reason": reason, "message": out.message})
                retry = retry or out.message
        return PodReport(ready, len(pods), tuple(failing), retry), nacks

    def _sync_pod(self, pod: Mapping[str, Any], token: str | None) -> tuple[PodState | str, bool]:
        """Push the pod's desired set unless its agent already confirmed (or refused) exactly that set at this
        address; (its state, whether a push happened) or "Reason: why no push was possible"."""
        meta = pod["metadata"]
        pod_key: Key = (meta["namespace"], meta["name"])
        try:
            target = agents.target_of(dict(pod))
        except errors.ConfigError as exc:
            return f"{exc.reason}: {exc.message}", False
        if target is None:
            return "PodHasNoIP: the pod has no IP yet (not running)", False
        if token is None:
            return (
                f"AgentTokenMissing: Secret {meta['namespace']}/{self.agent_token_secret} (key token) is missing",
                False,
            )
        version, resources = self._desired(meta["namespace"], meta.get("labels") or {})
        restarts = restarts_of(pod)
        with self._lock:
            lock = self._pod_locks.setdefault(pod_key, threading.Lock())
        with lock:
            with self._lock:
                state = self._pods.get(pod_key)
            if (
                state is not None
                and state.target == target
                and state.restarts == restarts
                and state.outcome.version_info == version
                and state.outcome.result in (agents.Result.ACK, agents.Result.NACK)
            ):
                return state, False
            outcome = agents.push(target, version, resources, token)
            self.metrics.pushed(outcome.result.value)
            new = PodState(target, restarts, outcome)
            with self._lock:
                self._pods[pod_key] = new
        if state is None or state.outcome != outcome:
            self._kick_others(pod_key, meta.get("labels") or {})
        return new, True

    def _kick_others(self, pod_key: Key, labels: Mapping[str, str]) -> None:
        """The pod's agent state changed: the other plugins selecting it re-read it for their status."""
        if self.enqueue is None:
            return
        with self._lock:
            keys = [
                k for k, e in self._entries.items() if k[0] == pod_key[0] and selects(e.plugin.selector_labels, labels)
            ]
        for key in keys:
            self.enqueue(key, 0.0)

    def forget_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)
            self._pod_locks.pop((namespace, name), None)

    # --- cleanup ---------------------------------------------------------------------------------------------

    def cleanup(self, body: Mapping[str, Any]) -> None:
        """Remove what this plugin generated: EnvoyFilter, ConfigMap, pod-template volume annotations; agents
        that ran it get their set without it."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key: Key = (namespace, name)
        self._remove_istio(namespace, name)
        self.metrics.forget(key)
        self._retries.pop(key, None)
        self._remove_agent(key, force=(body.get("spec") or {}).get("dataPlane") == spec.DataPlane.AGENT.value)

    def _remove_istio(self, namespace: str, name: str) -> None:
        """Delete the plugin's EnvoyFilter and ConfigMap, remove its volume from every workload's template."""
        label = f"{model.PLUGIN_LABEL}={name},{model.MANAGED_BY_LABEL}={model.MANAGED_BY}"
        for api_version, kind in (ISTIO_EF, ("v1", "ConfigMap")):
            try:
                found = self.writer.list(api_version, kind, namespace, label_selector=label)
            except errors.ApplyError as exc:
                if exc.reason in ("NotFound", "HTTP404"):  # no EnvoyFilter kind: a cluster without Istio
                    continue
                raise
            for obj in found:
                self.writer.delete(api_version, kind, namespace, obj["metadata"]["name"])
        _, _, vol_name = istio.names(name)
        for kind, workload in self._workloads(namespace):
            annotations = (workload["spec"]["template"].get("metadata") or {}).get("annotations") or {}
            patch = podtemplate.without_module_volume(annotations, vol_name)
            if patch is not None:
                self._patch_template(kind, namespace, workload["metadata"]["name"], patch)

    def _remove_agent(self, key: Key, *, force: bool) -> None:
        """Push every pod that ran the plugin its set without it (deleted, or moved to the istio plane)."""
        namespace, name = key
        with self._lock:
            entry = self._entries.pop(key, None)
            pushed = self._pushed.pop(key, frozenset())
        if entry is None and not pushed and not force:
            return
        self._refresh_entries(namespace)  # a deleted plugin is not listed any more (deletionTimestamp)
        with self._lock:
            self._entries.pop(key, None)
        selector = entry.plugin.selector_labels if entry is not None else None
        pods = [
            p
            for p in self.writer.list("v1", "Pod", namespace)
            if p["metadata"]["name"] in pushed
            or (selector is not None and selects(selector, p["metadata"].get("labels")))
        ]
        token = self._token(namespace)
        for pod, (state, _) in zip(pods, self._pool.map(lambda p: self._sync_pod(p, token), pods), strict=False):
            if isinstance(state, str) or state.outcome.result is not agents.Result.ACK:
                why = state if isinstance(state, str) else f"{state.outcome.reason}: {state.outcome.message}"
                log.warning("removing %s/%s from pod %s's agent: %s", namespace, name, pod["metadata"]["name"], why)
