"""One WasmPlugin's reconcile and cleanup: spec -> fetch -> validate -> render -> apply, then status and Events.

Called by `meshplug.controller.handlers` (kopf) through ``asyncio.to_thread``; kopf-free so it can be driven
directly. Every outcome ends in a status write (conditions Fetched, Validated, Ready with a specific reason,
observedGeneration, digest, pod counts) and, on failure, a Warning Event. `Retry` tells the caller to run
again later (fetch failures, API refusals: the cause may heal without a spec change); `Permanent` means only
a spec change can help (invalid spec, bad pluginConfig).

Data planes: istio is delivered (EnvoyFilter + ConfigMap/module server + pod-template annotations on the
selected Deployments). The agent plane is not delivered by this version: its plugins get Ready=False with
reason ``AgentPlaneNotImplemented`` after fetch and validation.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import errors, fetch, limits, spec, validate
from meshplug.controller import apply
from meshplug.render import istio, model, podtemplate

FETCHED, VALIDATED, READY = "Fetched", "Validated", "Ready"
ISTIO_EF = ("networking.istio.io/v1alpha3", "EnvoyFilter")


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
    return float(min(300, 5 * 2 ** min(retry, 6)))


class Reconciler:
    """Holds the operator's long-lived parts: the API writer, the module fetcher and the module server's address."""

    def __init__(self, writer: apply.Writer, fetcher: fetch.Fetcher, server: model.ModuleServer) -> None:
        self.writer = writer
        self.fetcher = fetcher
        self.server = server

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
        if pods is not None:
            ready, total = pods
            status["pods"] = {"total": total, "ready": ready, "failing": total - ready, "summary": f"{ready}/{total}"}
            status["failingPods"] = list(failing)[: limits.MAX_FAILING_PODS_REPORTED]
        if event is not None:
            warning, reason, message = event
            self.writer.event(body, warning=warning, reason=reason, message=message)
        self.writer.patch_status(meta["namespace"], meta["name"], status)

    # --- reconcile -------------------------------------------------------------------------------------------

    def reconcile(self, body: Mapping[str, Any], retry: int = 0) -> None:
        try:
            plugin = spec.parse(body)
        except errors.SpecError as exc:
            cond = Condition(READY, "False", exc.reason, exc.message)
            self._finish(body, [cond], event=(True, exc.reason, exc.message))
            raise Permanent(exc.message) from None

        try:
            artifact = self._fetch(plugin)
        except errors.MeshplugError as exc:
            conds = [
                Condition(FETCHED, "False", exc.reason, exc.message),
                Condition(VALIDATED, "Unknown", "NotFetched", "the module was not fetched"),
                Condition(READY, "False", exc.reason, f"fetch failed: {exc.message}"),
            ]
            self._finish(body, conds, event=(True, f"Fetch:{exc.reason}", exc.message))
            raise Retry(exc.message, backoff(retry)) from None
        fetched = Condition(FETCHED, "True", "Fetched", f"{artifact.digest} from {artifact.source_url}")

        kind = validate.FilterKind.NETWORK if plugin.type is spec.PluginType.NETWORK else validate.FilterKind.HTTP
        try:
            info = validate.validate(artifact.data, kind=kind)
        except errors.ValidationError as exc:
            reasons = "; ".join(exc.reasons) or exc.message
            conds = [
                fetched,
                Condition(VALIDATED, "False", exc.reason, reasons),
                Condition(READY, "False", exc.reason, f"module rejected: {reasons}"),
            ]
            self._finish(body, conds, digest=artifact.digest, event=(True, f"Validate:{exc.reason}", reasons))
            raise Retry(reasons, max(15.0, backoff(retry))) from None  # a mutable tag may be re-pushed
        warnings = [p for p in info.problems if p.severity is validate.Severity.WARNING]
        validated = Condition(
            VALIDATED,
            "True",
            "Valid",
            "proxy-wasm ABI check passed" + (f" with {len(warnings)} warning(s)" if warnings else ""),
        )

        module = model.Module(sha256=artifact.sha256, data=artifact.data)
        if plugin.data_plane is spec.DataPlane.AGENT:
            ready = Condition(READY, "False", "AgentPlaneNotImplemented", "agent delivery is not implemented yet")
            self._finish(body, [fetched, validated, ready], digest=artifact.digest)
            return
        try:
            ready_pods, total, failing = self._deliver_istio(plugin, module)
        except errors.ApplyError as exc:
            conds = [fetched, validated, Condition(READY, "False", exc.reason, exc.message)]
            self._finish(body, conds, digest=artifact.digest, event=(True, f"Apply:{exc.reason}", exc.message))
            raise Retry(exc.message, backoff(retry)) from None
        ef_name, _, _ = istio.names(plugin)
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
        _, cm_name, vol_name = istio.names(plugin)
        previous = self._previous_module(plugin, cm_name, module.sha256) if module.fits_config_map else None
        objects = istio.render(plugin, module, self.server, previous)
        if objects.config_map is not None:
            self.writer.apply(objects.config_map)  # the file exists before any EnvoyFilter names it
        self.writer.apply(objects.envoy_filter)
        if objects.config_map is None:
            self.writer.delete("v1", "ConfigMap", plugin.namespace, cm_name)
        code = objects.code
        for deployment in self._selected_deployments(plugin):
            template_meta = deployment["spec"]["template"].get("metadata") or {}
            annotations = template_meta.get("annotations") or {}
            if isinstance(code, model.LocalCode):
                patch = podtemplate.with_module_volume(annotations, code)
            else:
                patch = podtemplate.without_module_volume(annotations, vol_name)
            if patch is not None:
                self.writer.merge_patch(
                    "apps/v1",
                    "Deployment",
                    plugin.namespace,
                    deployment["metadata"]["name"],
                    {"spec": {"template": {"metadata": {"annotations": patch}}}},
                )
        return self._pod_counts(plugin, code)

    def _selected_deployments(self, plugin: spec.PluginSpec) -> list[dict[str, Any]]:
        if plugin.target_refs:
            return []
        return [
            d
            for d in self.writer.list("apps/v1", "Deployment", plugin.namespace)
            if selects(plugin.selector_labels, ((d["spec"]["template"].get("metadata") or {}).get("labels")))
        ]

    def _pod_counts(self, plugin: spec.PluginSpec, code: model.Code) -> tuple[int, int, list[dict[str, str]]]:
        if plugin.target_refs:
            return 0, 0, []
        pods = [
            p
            for p in self.writer.list("v1", "Pod", plugin.namespace)
            if selects(plugin.selector_labels, p["metadata"].get("labels"))
        ]
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

    # --- cleanup ---------------------------------------------------------------------------------------------

    def cleanup(self, body: Mapping[str, Any]) -> None:
        """Remove what this plugin generated: EnvoyFilter, ConfigMap, pod-template volume annotations."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        label = f"{model.PLUGIN_LABEL}={name},{model.MANAGED_BY_LABEL}={model.MANAGED_BY}"
        for api_version, kind in (ISTIO_EF, ("v1", "ConfigMap")):
            for obj in self.writer.list(api_version, kind, namespace, label_selector=label):
                self.writer.delete(api_version, kind, namespace, obj["metadata"]["name"])
        _, _, vol_name = istio.names(_stub(namespace, name))
        for deployment in self.writer.list("apps/v1", "Deployment", namespace):
            annotations = (deployment["spec"]["template"].get("metadata") or {}).get("annotations") or {}
            patch = podtemplate.without_module_volume(annotations, vol_name)
            if patch is not None:
                self.writer.merge_patch(
                    "apps/v1",
                    "Deployment",
                    namespace,
                    deployment["metadata"]["name"],
                    {"spec": {"template": {"metadata": {"annotations": patch}}}},
                )


def _stub(namespace: str, name: str) -> spec.PluginSpec:
    """A PluginSpec carrying only the identity (names of generated objects depend on nothing else)."""
    return spec.parse({"metadata": {"namespace": namespace, "name": name}, "spec": {"url": "oci://unused/x:v"}})
