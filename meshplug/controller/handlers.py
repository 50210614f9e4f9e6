"""kopf wiring for WasmPlugin: watches, the work queue, leader election and the operator's run loop.

Called by `meshplug.commands.operator` (`run_operator`). kopf watches WasmPlugins, the pod cache
(`meshplug.controller.informer`, the reconciles' only source of pods) watches Pods; their events only feed
`meshplug.controller.index.Index`, which names the plugins to queue, and
`meshplug.controller.workqueue.WorkQueue` hands each key to one worker thread at a time that runs
`Reconciler.reconcile_key` (the API's current object: restarts are idempotent). A failed reconcile is queued
again after its backoff (a fetch that would now succeed, an agent that answers again, a permission granted);
a plugin whose url can move (tag, unpinned http) is re-checked every ``reresolve_s``. The finalizer (kopf adds it
because a delete handler is registered) keeps the resource until `Reconciler.cleanup` removed what was
generated and pushed the agents their set without it.

Several replicas: only the holder of the ``meshplug-operator`` Lease (`meshplug.controller.lease`) runs kopf;
the others stand by; a standby answers kopf's liveness endpoint itself (`standby_liveness`: kopf, which serves
it, runs only in the leader), so a Deployment's livenessProbe does not restart a healthy standby. At start the
operator checks every permission listed in `meshplug.controller` with SelfSubjectAccessReviews and logs each
missing one by name (and /healthz turns 503).
The plugins belong to their authors (often a GitOps tool): the operator writes their status and its finalizer, and
nothing else. kopf keeps no diff-base on them (`_NoDiffBase`: only the delete handler detects changes, and it needs
none); its progress goes to annotations under ``meshplug.io/`` only while a deletion's cleanup is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import kopf

from meshplug import controller, injection, limits, serving, spec
from meshplug.controller import apply, index, informer, lease, reconcile, webhooks, workqueue
from meshplug.controller.delivery import istio_configmap
from meshplug.render import istio_native as native_render

log = logging.getLogger("meshplug.controller.handlers")
_RESOURCE = (spec.API_GROUP, spec.API_VERSION, spec.PLURAL)
_TE_RESOURCE = (spec.API_GROUP, spec.API_VERSION, spec.PLURAL_TRAFFIC_EXTENSION)
T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...]  # empty: cluster-wide
    liveness_endpoint: str | None
    reresolve_s: float | None  # re-check mutable urls this often (None: only on spec changes and retries)
    lease_namespace: str | None  # None: no leader election (a single replica)
    identity: str
    lease_duration_s: float = limits.LEASE_DURATION_S
    workers: int = limits.RECONCILE_WORKERS


class _NoDiffBase(kopf.DiffBaseStorage):
    """No copy of the last handled spec on the object (kopf's default annotation): the one change-detecting
    handler is the delete one, and every other event only feeds the index and the queue."""

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def check_permissions(reconciler: reconcile.Reconciler, opts: Options) -> list[str]:
    """Every rule of `controller.rbac_rules()` the operator's identity lacks, as 'verb resource.group in ns'."""
    missing: list[str] = []
    where = {"watched": list(opts.namespaces) or [""], "cluster": [""], "own": [opts.lease_namespace or ""]}
    ca_bundle = webhooks.ca_bundle_targets()  # the objects of the names=ca-bundle rules (none: not needed)
    ident = reconciler.identity
    secrets = {"agent-secret": (ident.agent_secret_name,), "identity-secret": (ident.secret,)}
    for rule in controller.rbac_rules():
        if rule.scope == "own" and opts.lease_namespace is None:
            continue
        if not rule.names:
            names: tuple[str, ...] = ("",)
        else:
            names = secrets.get(rule.names) or tuple(ca_bundle.get(rule.resource, ()))
        for namespace in where[rule.scope]:
            for verb, name in itertools.product(rule.verbs, names):
                allowed, _ = reconciler.writer.access_review(verb, rule.api_group, rule.resource, namespace, name)
                if not allowed:
                    what = f"{rule.resource}.{rule.api_group}" if rule.api_group else rule.resource
                    what += f" {name}" if name else ""
                    missing.append(f"{verb} {what}" + (f" in namespace {namespace}" if namespace else " cluster-wide"))
    return missing


def build_registry(
    reconciler: reconcile.Reconciler, queue: workqueue.WorkQueue, idx: index.Index
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    plugins = reconciler.plugins

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
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.persistence.finalizer = "meshplug.io/cleanup"
        settings.posting.level = 100  # Events are written by the reconciler itself, with specific reasons
        settings.watching.server_timeout = 300
        settings.scanning.disabled = True  # no CRD/namespace scanning: no RBAC beyond the listed rules

    def add(keys: Sequence[index.Key]) -> None:
        for key in keys:
            queue.add(key)

    @kopf.on.event(*_RESOURCE, registry=registry)
    def plugin_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if plugins is not None:  # the reconcile starts from the newest version seen, without reading it
            meta = body.get("metadata") or {}
            key = (str(meta.get("namespace")), spec.key_name(str(body.get("kind") or spec.KIND), str(meta.get("name"))))
            if type == "DELETED":
                plugins.drop(key)
            else:
                plugins.put(key, dict(body))
        add(idx.plugin_event(type, body))

    kopf.on.event(*_TE_RESOURCE, registry=registry, id="trafficextensions-event")(plugin_event)

    @kopf.on.delete(*_RESOURCE, registry=registry, retries=None, id="cleanup")
    async def cleanup_plugin(body: kopf.Body, **_: Any) -> None:
        key = (body["metadata"]["namespace"], spec.key_name(str(body.get("kind")), body["metadata"]["name"]))
        held = await _off_loop(queue.hold, key)
        try:
            await _off_loop(reconciler.cleanup, dict(body))
        finally:
            if held:
                queue.done(key)

    kopf.on.delete(*_TE_RESOURCE, registry=registry, retries=None, id="cleanup-trafficextension")(cleanup_plugin)
    # admission webhooks (agent injection, istio module mounts, WasmPlugin checks) when configured
    webhooks.register(registry, identity=reconciler.identity, lister=_lister(reconciler))
    return registry


def _lister(reconciler: reconcile.Reconciler) -> webhooks.Lister:
    """What the admission webhooks list with: the module ConfigMaps from the operator's cache (a pod's admission
    reads nothing from the API), anything else from the API."""
    writer = reconciler.writer

    def list_objects(
        api_version: str, kind: str, namespace: str, *, label_selector: str = "", field_selector: str = ""
    ) -> list[dict[str, Any]]:
        if (api_version, kind) == istio_configmap.CONFIG_MAP and not field_selector and "!" not in label_selector:
            wanted = dict(part.split("=", 1) for part in label_selector.split(",") if "=" in part)
            if len(wanted) == len([p for p in label_selector.split(",") if p]):  # equality terms only
                return reconciler.istio_configmap.config_maps.objects(namespace, wanted)
        return writer.list(api_version, kind, namespace, label_selector=label_selector, field_selector=field_selector)

    return list_objects


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on a daemon thread. Not `asyncio.to_thread`: the loop's executor is joined when kopf stops,
    so a cleanup blocked on an agent that does not answer would hold the stopping operator (the finalizer stays
    and the next leader cleans up)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if future.done():
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # handed to the awaiting handler
            result, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop is closed: the operator stopped meanwhile
            loop.call_soon_threadsafe(settle, result, exc)

    threading.Thread(target=run, name="meshplug-cleanup", daemon=True).start()
    return await future


def pod_changes(reconciler: reconcile.Reconciler, queue: workqueue.WorkQueue, idx: index.Index) -> informer.OnChange:
    """What a pod change (from the pod cache's watch) sets off: the plugins it matters to are queued."""

    def changed(kind: str, old: informer.Pod | None, new: informer.Pod | None) -> None:
        body = new if new is not None else old
        if body is None:
            return
        meta = body["metadata"]
        if kind == "DELETED":
            reconciler.forget_pod(meta["namespace"], meta["name"])
        elif injection.STATUS_ANNOTATION in (meta.get("annotations") or {}):
            reconciler.identity.adopt_later(body)  # its agent Secret lives as long as injected pods do
        for key in idx.pod_event(kind, body):
            queue.add(key, after=limits.POD_CHANGE_BATCH_S)  # the pod's neighbours in a rollout come along

    return changed


def owned_caches(
    writer: apply.Writer, namespaces: Sequence[str], stop: threading.Event
) -> tuple[informer.OwnedCache, informer.OwnedCache, dict[str, informer.OwnedCache]]:
    """The caches of what the istio routes render, started: the ConfigMap route's (ConfigMaps, as digests of their
    modules; EnvoyFilters) and the native route's (Istio's extensions of each kind the cluster serves now, every one
    in the watched namespaces: one of the plugin's name that meshplug does not own is seen, and never overwritten).
    A reconcile reads none of them from the API (a kind Istio starts serving later is read from the API)."""
    config_maps = informer.OwnedCache(
        writer,
        *istio_configmap.CONFIG_MAP,
        namespaces,
        label_selector=istio_configmap.MANAGED,
        trim=istio_configmap.trimmed,
    )
    envoy_filters = informer.OwnedCache(
        writer, *istio_configmap.ISTIO_EF, namespaces, label_selector=istio_configmap.MANAGED
    )
    served = writer.served(native_render.API_VERSION)
    extensions = {
        kind: informer.OwnedCache(writer, native_render.API_VERSION, kind, namespaces).start(stop)
        for kind, plural in native_render.KINDS.items()
        if plural in served
    }
    return config_maps.start(stop), envoy_filters.start(stop), extensions


def _work(reconciler: reconcile.Reconciler, queue: workqueue.WorkQueue, idx: index.Index, opts: Options) -> Any:
    def work(key: workqueue.Key) -> None:
        delay = reconciler.reconcile_key(key)
        if delay is not None:
            queue.add(key, after=delay)
            return
        ref = idx.plugin(*key)
        if opts.reresolve_s is not None and ref is not None and ref.mutable:
            queue.add(key, after=opts.reresolve_s)

    return work


def run_operator(
    reconciler: reconcile.Reconciler,
    opts: Options,
    *,
    stop_flag: threading.Event | None = None,
) -> int:
    """Run until stopped (SIGINT/SIGTERM or ``stop_flag``) or the Lease is lost (exit code 1)."""
    stop = stop_flag or threading.Event()
    on_signals(stop)  # a SIGTERM while checking permissions or standing by stops at once, and cleanly
    missing = check_permissions(reconciler, opts)
    for what in missing:
        log.error("missing RBAC permission: %s (see meshplug.controller's docstring for the rules)", what)
    if missing:
        reconciler.metrics.unhealthy = f"missing RBAC permission(s): {'; '.join(missing)}"

    elector: lease.Elector | None = None
    if opts.lease_namespace is not None:
        elector = lease.Elector(
            reconciler.writer,
            namespace=opts.lease_namespace,
            name="meshplug-operator",
            identity=opts.identity,
            duration_s=opts.lease_duration_s,
            renew_s=max(0.5, opts.lease_duration_s / 3),
        )
        with standby_liveness(opts.liveness_endpoint):
            if not elector.wait_until_leader(stop):
                return 0
    reconciler.metrics.leader = True
    lost = threading.Event()

    def on_lost() -> None:
        lost.set()
        stop.set()

    renewer = None
    if elector is not None:
        renewer = threading.Thread(target=elector.run, args=(stop, on_lost), name="meshplug-lease", daemon=True)
        renewer.start()

    queue = workqueue.WorkQueue(on_wait=reconciler.metrics.queue_wait_seconds.observe)
    reconciler.metrics.queue_depth = queue.pending
    idx = index.Index(reconciler.root_namespace)
    reconciler.enqueue = lambda key, after: queue.add(key, after=after)
    pods = informer.PodCache(reconciler.writer, opts.namespaces, pod_changes(reconciler, queue, idx)).start(stop)
    reconciler.read_pods_from(pods)
    reconciler.read_owned_from(*owned_caches(reconciler.writer, opts.namespaces, stop))
    reconciler.plugins = informer.Latest()
    workers = workqueue.Workers(queue, _work(reconciler, queue, idx, opts), opts.workers).start()
    registry = build_registry(reconciler, queue, idx)
    try:
        asyncio.run(_kopf(registry, opts, stop))
    finally:
        stop.set()
        on_signals(stop)  # asyncio's loop restored the default handlers on closing: a 2nd SIGTERM must not kill
        workers.stop(timeout=limits.SHUTDOWN_DRAIN_S)  # daemon threads: a reconcile still running is abandoned
        reconciler.writer.end_watches()  # the pod cache's watch
        reconciler.metrics.leader = False
        if renewer is not None:
            renewer.join(timeout=limits.SHUTDOWN_DRAIN_S)
        if elector is not None and not lost.is_set():
            elector.release()
    return 1 if lost.is_set() else 0


class _Liveness(serving.BoundedHandler):
    path_ok = "/healthz"

    def do_GET(self) -> None:
        ok = urllib.parse.urlsplit(self.path).path == self.path_ok
        body = b"standing by" if ok else b"not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def standby_liveness(endpoint: str | None) -> Iterator[None]:
    """While this replica stands by, answer 200 at kopf's liveness ``endpoint`` (e.g. ``http://0.0.0.0:8081/healthz``):
    the port is closed until kopf starts in the leader, and a livenessProbe on it would restart the standby every
    minute. Closed again before kopf binds it."""
    if not endpoint:
        yield
        return
    url = urllib.parse.urlsplit(endpoint)
    handler = type("Liveness", (_Liveness,), {"path_ok": url.path or "/"})
    server = serving.BoundedServer((url.hostname or "0.0.0.0", url.port or 80), handler)  # noqa: S104 - kopf's own default
    with serving.ServerThread(server, name="meshplug-standby-liveness", poll_interval=0.1):
        yield


async def _kopf(registry: kopf.OperatorRegistry, opts: Options, stop: threading.Event) -> None:
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not opts.namespaces,
            namespaces=list(opts.namespaces),
            liveness_endpoint=opts.liveness_endpoint,
            stop_flag=stop,
        )
    finally:
        # kopf waits for a threading.Event stop flag in a thread of the loop's default executor; when kopf stops
        # for a signal that thread still blocks in stop.wait(), and asyncio.run's executor shutdown would wait
        # for it forever (the operator logged "Operator is stopping." and never exited)
        stop.set()


def on_signals(stop: threading.Event) -> None:
    """SIGTERM/SIGINT set ``stop`` (outside kopf's run, which installs its own handlers on its loop)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
