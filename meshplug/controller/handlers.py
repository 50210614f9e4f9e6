"""kopf wiring for WasmPlugin: handlers, settings and the operator's run loop (the only kopf importer).

Called by `meshplug.commands.operator` (`run_operator`). Handlers turn the body into work for
`meshplug.controller.reconcile.Reconciler` on a worker thread and map its signals to kopf's:
`Retry` -> `kopf.TemporaryError(delay=...)` (kopf re-runs the handler; a fixed cause heals on its own),
`Permanent` -> `kopf.PermanentError` (wait for the next spec change). A finalizer (kopf adds it because a
delete handler is registered) keeps the resource until `Reconciler.cleanup` removed what was generated.
kopf's own bookkeeping goes to annotations under ``meshplug.io/`` (the status schema is structural and would
prune kopf's status fields).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import kopf

from meshplug import spec
from meshplug.controller import reconcile

_RESOURCE = (spec.API_GROUP, spec.API_VERSION, spec.PLURAL)


def build_registry(reconciler: reconcile.Reconciler) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # the same credentials as the API writer (kubeconfig or in-cluster; re-read on every re-login)
        creds = reconciler.writer.credentials()
        return kopf.ConnectionInfo(
            server=creds.server,
            ca_path=creds.ca_path,
            insecure=creds.insecure,
            scheme=creds.scheme,
            token=creds.token,
            certificate_path=creds.certificate_path,
            private_key_path=creds.private_key_path,
        )

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="meshplug.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="meshplug.io", key="last-handled-configuration"
        )
        settings.persistence.finalizer = "meshplug.io/cleanup"
        settings.posting.level = 100  # Events are written by the reconciler itself, with specific reasons
        settings.watching.server_timeout = 300

    async def _reconcile(body: kopf.Body, retry: int) -> None:
        try:
            await asyncio.to_thread(reconciler.reconcile, dict(body), retry)
        except reconcile.Retry as exc:
            raise kopf.TemporaryError(str(exc), delay=exc.delay) from None
        except reconcile.Permanent as exc:
            raise kopf.PermanentError(str(exc)) from None

    @kopf.on.resume(*_RESOURCE, registry=registry, retries=None, id="reconcile")
    @kopf.on.create(*_RESOURCE, registry=registry, retries=None, id="reconcile")
    @kopf.on.update(*_RESOURCE, registry=registry, retries=None, field="spec", id="reconcile")
    async def reconcile_plugin(body: kopf.Body, retry: int, **_: Any) -> None:
        await _reconcile(body, retry)

    @kopf.on.delete(*_RESOURCE, registry=registry, retries=None, id="cleanup")
    async def cleanup_plugin(body: kopf.Body, **_: Any) -> None:
        await asyncio.to_thread(reconciler.cleanup, dict(body))

    return registry


def run_operator(
    reconciler: reconcile.Reconciler,
    *,
    namespaces: Sequence[str],
    liveness_endpoint: str | None,
    stop_flag: threading.Event | None = None,
) -> None:
    """Run until stopped (SIGINT/SIGTERM or ``stop_flag``); one namespace list or cluster-wide when empty."""
    registry = build_registry(reconciler)
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
        )
    )
