"""Which pod may fetch which module from the operator's module server (`meshplug.fetch.serve.Access`).

Called by the module server's HTTPS port for every bearer request. The token must be a ServiceAccount token
the API server confirms for the operator's audience and binds to a pod (`identity.Reviewer`, TokenReview);
that pod may fetch a module when an agent-plane WasmPlugin selecting it delivers exactly that module (or, for a
signed module whose layer wraps it, that layer's blob: the agent checks the signature against it):

1. this replica pushed the pod a set holding the module (``granted``, in memory) and has it cached; else
2. from the API, as any replica can: the pod (its uid must be the token's), the agent-plane WasmPlugins of
   its namespace that select its labels, and for each the module its url gives now (through this replica's
   fetcher, so a standby replica the Service picked fetches what the leader pushed and then serves it).

Refusals: 401 (no valid token), 403 (a valid pod that runs no such module). Nothing secret is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from meshplug import errors, fetch, spec
from meshplug.controller import apply, identity

log = logging.getLogger("meshplug.controller.access")

PLUGIN_API = f"{spec.API_GROUP}/{spec.API_VERSION}"


def selects(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


class ModuleAccess:
    """The operator's `serve.Access`: a confirmed pod identity and a plugin of that pod delivering the module."""

    def __init__(
        self,
        reviewer: identity.Reviewer,
        writer: apply.Writer,
        cache_has: Callable[[str], bool],
        fetch_module: Callable[[spec.PluginSpec], fetch.Artifact],
        granted: Callable[[str, str, str], bool] = lambda namespace, pod, sha256: False,
    ) -> None:
        self.reviewer = reviewer
        self.writer = writer
        self.cache_has = cache_has
        self.fetch_module = fetch_module
        self.granted = granted

    def check(self, token: str, sha256: str) -> None:
        caller = self.reviewer.review(token)
        if self.granted(caller.namespace, caller.pod, sha256) and self.cache_has(sha256):
            return
        try:
            pod = self.writer.get("v1", "Pod", caller.namespace, caller.pod)
            plugins = self.writer.list(PLUGIN_API, spec.KIND, caller.namespace) if pod is not None else []
        except errors.ApplyError as exc:
            raise errors.ProtocolError(f"cannot check access: {exc.message}", reason="review_failed") from None
        who = f"pod {caller.namespace}/{caller.pod}"
        if pod is None or (caller.pod_uid and pod["metadata"].get("uid") != caller.pod_uid):
            raise errors.ProtocolError(f"{who} does not exist (any more)", reason="forbidden")
        labels = pod["metadata"].get("labels") or {}
        for body in plugins:
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            try:
                plugin = spec.parse(body)
            except errors.SpecError:
                continue
            if plugin.data_plane is not spec.DataPlane.AGENT or plugin.target_refs:
                continue
            if not selects(plugin.selector_labels, labels):
                continue
            try:
                artifact = self.fetch_module(plugin)
            except errors.MeshplugError as exc:
                log.info("module access: %s's plugin %s cannot be fetched here: %s", who, plugin.name, exc.message)
                continue
            signed_layer = artifact.signature.layer if artifact.signature is not None else ""
            if sha256 in (artifact.sha256, signed_layer.removeprefix("sha256:")):  # the module, or its signed layer
                return
        raise errors.ProtocolError(f"{who} runs no plugin with module sha256:{sha256[:12]}…", reason="forbidden")
