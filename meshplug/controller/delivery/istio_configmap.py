"""The istio data plane's ConfigMap route: EnvoyFilter + ConfigMap (or the module server) + sidecar volume.

Called by `meshplug.controller.reconcile` through the `meshplug.controller.delivery.Delivery` interface.
Renders with `meshplug.render.istio` and applies the ConfigMap before the EnvoyFilter that names its file; large
modules are fetched by Envoy from the module server (``code.remote``) and need no ConfigMap. The sidecar mounts
the ConfigMap through the pod-template volume annotations on the selected Deployments, StatefulSets and
DaemonSets (removed from workloads that stop matching). Istio reports nothing per proxy, so Ready means
"applied" and the pod counts say which selected pods run the mounted volume.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from meshplug import errors, spec
from meshplug.controller import apply, delivery, status
from meshplug.render import istio, model, podtemplate

ISTIO_EF = ("networking.istio.io/v1alpha3", "EnvoyFilter")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def template_labels(workload: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = ((workload.get("spec") or {}).get("template", {}).get("metadata") or {}).get(
        "labels"
    ) or {}
    return labels


class IstioConfigMap:
    """EnvoyFilter + ConfigMap + pod-template volume annotations."""

    name = "istio ConfigMap"

    def __init__(self, writer: apply.Writer, server: model.ModuleServer) -> None:
        self.writer = writer
        self.server = server

    def deliver(self, request: delivery.Request) -> delivery.Report:
        plugin, module = request.plugin, request.module
        ready_pods, total, failing = self._deliver(plugin, module)
        ef_name, _, _ = istio.names(plugin.name)
        ready = status.Condition(
            status.READY,
            "True",
            "Applied",
            f"EnvoyFilter {ef_name} carries {module.digest}; {ready_pods}/{total} selected pods ready "
            "(Istio reports no per-proxy load status)",
        )
        return delivery.Report(ready=ready, pods=(ready_pods, total), failing=tuple(failing))

    def _previous_module(self, plugin: spec.PluginSpec, cm_name: str, new_sha: str) -> model.Module | None:
        """The module the plugin's ConfigMap currently delivers, when it differs from the new one."""
        current = self.writer.get("v1", "ConfigMap", plugin.namespace, cm_name) or {}
        digest = ((current.get("metadata") or {}).get("annotations") or {}).get(model.DIGEST_ANNOTATION, "")
        sha = digest.removeprefix("sha256:")
        raw = (current.get("binaryData") or {}).get(f"{sha}.wasm")
        if raw is None or sha == new_sha:
            return None
        return model.Module(sha256=sha, data=base64.b64decode(raw))

    def _deliver(self, plugin: spec.PluginSpec, module: model.Module) -> tuple[int, int, list[dict[str, str]]]:
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
            wanted = not plugin.target_refs and delivery.selects(plugin.selector_labels, template_labels(workload))
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

    def _pod_counts(self, plugin: spec.PluginSpec, code: model.Code | None) -> tuple[int, int, list[dict[str, str]]]:
        pods = delivery.selected_pods(self.writer, plugin)
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

    def remove(self, namespace: str, name: str, *, owned: bool) -> None:
        """Delete the plugin's EnvoyFilter and ConfigMap, remove its volume from every workload's template (always
        looked for: what this path wrote is found by label)."""
        del owned
        _, name = spec.split_key_name(name)  # what this path renders is labelled with the resource's name
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
