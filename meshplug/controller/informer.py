"""The operator's pod cache: Pods listed once and then kept current from a watch (an informer), so a reconcile
never lists pods from the API.

Called by `meshplug.controller.handlers` (which starts it and routes each change to the watch index, the agent
delivery and the identity) and read by the delivery paths through `PodSource` (`delivery.selected_pods`,
`delivery.istio_pods.Selection`). One reflector thread per scope (every namespace, or each watched one): list in
pages, then watch from the list's resourceVersion with bookmarks; a watch the server ends is resumed from the
last version seen; an expired version (410 Gone) or a failed request lists again, and the new list replaces the
cache, with a ``DELETED`` change for every pod that went while the watch was down (client-go's Replace). Reads
answer from memory, by namespace and label (an index of label pairs), once every scope listed (`wait_synced`);
before that, and for callers without a cache (`ApiPods`), the API answers. The RBAC it needs is the operator's
``list,watch`` on pods (`meshplug.controller`). kopf-free.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar

from meshplug import errors, limits
from meshplug.controller import apply

log = logging.getLogger("meshplug.controller.informer")

K = TypeVar("K")
Pod = dict[str, Any]
#: one change: (type ADDED | MODIFIED | DELETED, the pod as it was (None: new), the pod now (None: deleted))
OnChange = Callable[[str, Pod | None, Pod | None], None]


class PodSource(Protocol):
    """Where the delivery paths read pods: the live ones of ``namespace`` ("" = every namespace) whose labels
    include ``selector`` and, when ``has_label`` is set, carry that label."""

    def pods(self, namespace: str, selector: Mapping[str, str], *, has_label: str = "") -> list[Pod]: ...


def _label_selector(selector: Mapping[str, str], has_label: str) -> str:
    parts = [f"{k}={v}" for k, v in sorted(selector.items())]
    return ",".join(parts + ([has_label] if has_label else []))


class ApiPods:
    """`PodSource` answered by the API (a label-selected list per call)."""

    def __init__(self, writer: apply.Writer) -> None:
        self.writer = writer

    def pods(self, namespace: str, selector: Mapping[str, str], *, has_label: str = "") -> list[Pod]:
        found = self.writer.list("v1", "Pod", namespace, label_selector=_label_selector(selector, has_label))
        return [p for p in found if _matches(p, selector, has_label)]


def _matches(pod: Mapping[str, Any], selector: Mapping[str, str], has_label: str) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items()) and (not has_label or has_label in labels)


def _discard(index: dict[K, set[str]], key: K, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]


def _trimmed(pod: Mapping[str, Any]) -> Pod:
    """The pod as the cache keeps it: without managedFields (the largest part, read by nobody here)."""
    meta = {k: v for k, v in (pod.get("metadata") or {}).items() if k != "managedFields"}
    return {**pod, "metadata": meta}


class PodCache:
    """The pods of ``namespaces`` (() = every namespace), kept by list + watch; a `PodSource`. ``on_change`` is
    called on the reflector's thread for every change (also the listing's), after the cache holds it."""

    def __init__(self, writer: apply.Writer, namespaces: Iterable[str], on_change: OnChange | None = None) -> None:
        self.writer = writer
        self.scopes = tuple(namespaces) or ("",)
        self.on_change = on_change
        self.fallback = ApiPods(writer)
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Pod]] = {}  # namespace -> name -> pod
        self._by_label: dict[tuple[str, str, str], set[str]] = {}  # (namespace, key, value) -> pod names
        self._by_key: dict[tuple[str, str], set[str]] = {}  # (namespace, label key) -> pod names
        self._listed: set[str] = set()
        self._synced = threading.Event()
        self.relists = 0  # lists after the first (a watch that could not resume)

    # --- reads -----------------------------------------------------------------------------------------------

    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, stop: threading.Event) -> bool:
        """Block until every scope listed (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if self._synced.wait(timeout=0.2):
                return True
        return self._synced.is_set()

    def pods(self, namespace: str, selector: Mapping[str, str], *, has_label: str = "") -> list[Pod]:
        if not self._synced.is_set():
            return self.fallback.pods(namespace, selector, has_label=has_label)
        with self._lock:
            namespaces = [namespace] if namespace else list(self._pods)
            out: list[Pod] = []
            for ns in namespaces:
                names = self._select(ns, selector, has_label)
                pods = self._pods.get(ns, {})
                out += [pods[n] for n in sorted(names)]
        return out

    def _select(self, namespace: str, selector: Mapping[str, str], has_label: str) -> set[str]:
        sets = [self._by_label.get((namespace, k, v), set()) for k, v in selector.items()]
        if has_label:
            sets.append(self._by_key.get((namespace, has_label), set()))
        if not sets:
            return set(self._pods.get(namespace, {}))
        sets.sort(key=len)
        return set(sets[0]).intersection(*sets[1:])

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._pods.values())

    # --- the store -------------------------------------------------------------------------------------------

    def _put(self, pod: Pod) -> Pod | None:
        meta = pod["metadata"]
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        with self._lock:
            old = self._unindex(namespace, name)
            self._pods.setdefault(namespace, {})[name] = pod
            for k, v in (meta.get("labels") or {}).items():
                self._by_label.setdefault((namespace, k, str(v)), set()).add(name)
                self._by_key.setdefault((namespace, k), set()).add(name)
        return old

    def _drop(self, namespace: str, name: str) -> Pod | None:
        with self._lock:
            return self._unindex(namespace, name)

    def _unindex(self, namespace: str, name: str) -> Pod | None:
        old = self._pods.get(namespace, {}).pop(name, None)
        if old is None:
            return None
        for k, v in ((old.get("metadata") or {}).get("labels") or {}).items():
            _discard(self._by_label, (namespace, k, str(v)), name)
            _discard(self._by_key, (namespace, k), name)
        if not self._pods[namespace]:
            del self._pods[namespace]
        return old

    def _changed(self, kind: str, old: Pod | None, new: Pod | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, old, new)
        except Exception:  # a consumer's bug must not stop the cache
            log.exception("pod change handler failed (%s)", kind)

    def apply_event(self, event: Mapping[str, Any]) -> str:
        """Bring one watch event into the cache; the resourceVersion it carries ("" when none)."""
        kind = str(event.get("type") or "")
        obj = event.get("object") or {}
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            return version
        pod = _trimmed(obj)
        meta = pod["metadata"]
        if kind == "DELETED":
            old = self._drop(str(meta.get("namespace")), str(meta.get("name")))
            self._changed("DELETED", old if old is not None else pod, None)
        elif kind in ("ADDED", "MODIFIED"):
            old = self._put(pod)
            self._changed("ADDED" if old is None else "MODIFIED", old, pod)
        return version

    def replace(self, scope: str, pods: list[Pod]) -> None:
        """The listing of ``scope`` ("" = every namespace) replaces what the cache holds there; reads answer from
        memory once every scope was listed."""
        fresh = {(str(p["metadata"].get("namespace")), str(p["metadata"].get("name"))): _trimmed(p) for p in pods}
        with self._lock:
            held = [(ns, n) for ns, names in self._pods.items() if not scope or ns == scope for n in names]
        for namespace, name in held:
            gone = self._drop(namespace, name) if (namespace, name) not in fresh else None
            if gone is not None:
                self._changed("DELETED", gone, None)
        for pod in fresh.values():
            old = self._put(pod)
            if old is None or old.get("metadata", {}).get("resourceVersion") != pod["metadata"].get("resourceVersion"):
                self._changed("ADDED" if old is None else "MODIFIED", old, pod)
        self._listed_scope(scope)

    # --- the reflectors --------------------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> PodCache:
        for scope in self.scopes:
            name = f"meshplug-pods-{scope or 'all'}"
            threading.Thread(target=self._reflect, args=(scope, stop), name=name, daemon=True).start()
        return self

    def _listed_scope(self, scope: str) -> None:
        with self._lock:
            first = scope not in self._listed
            self._listed.add(scope)
            done = len(self._listed) == len(self.scopes)
        if not first:
            self.relists += 1
        if done:
            self._synced.set()

    def _reflect(self, scope: str, stop: threading.Event) -> None:
        """List, then watch until stopped; list again when the watch cannot resume. Daemon thread: a watch
        blocked in a read when the operator stops is abandoned."""
        failures = 0
        while not stop.is_set():
            try:
                pods, version = self.writer.list_from("v1", "Pod", scope, page=limits.POD_LIST_PAGE)
                self.replace(scope, pods)
                failures = 0
                self._watch(scope, version, stop)
            except (errors.ApplyError, OSError, ValueError) as exc:
                if stop.is_set():
                    return  # the operator ended the watch
                failures += 1
                delay = min(limits.POD_WATCH_BACKOFF_MAX_S, 0.5 * 2 ** min(failures, 8))
                log.warning("pods of %s: %s; listing again in %.1fs", scope or "every namespace", exc, delay)
                stop.wait(delay)
            except Exception:  # the kubernetes client's own errors (urllib3): same handling, logged in full
                if stop.is_set():
                    return
                failures += 1
                log.exception("pods of %s: watch failed", scope or "every namespace")
                stop.wait(min(limits.POD_WATCH_BACKOFF_MAX_S, 0.5 * 2 ** min(failures, 8)))

    def _watch(self, scope: str, version: str, stop: threading.Event) -> None:
        """Watch from ``version`` until stopped; returns when the version expired (the caller lists again)."""
        while not stop.is_set():
            for event in self.writer.watch(
                "v1", "Pod", scope, resource_version=version, timeout_s=limits.POD_WATCH_TIMEOUT_S
            ):
                if stop.is_set():
                    return
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    log.info("pods of %s: watch ended: %s", scope or "every namespace", status.get("message"))
                    return  # 410 Gone (expired version) or another error status: list again
                version = self.apply_event(event) or version
