"""The operator's caches: objects listed once and then kept current from a watch (informers), so a reconcile
never reads pods, nor the ConfigMaps and EnvoyFilters it rendered, from the API.

Called by `meshplug.controller.handlers` (which starts it and routes each change to the watch index, the agent
delivery and the identity) and read by the delivery paths through `PodSource` (`delivery.selected_pods`,
`delivery.istio_pods.Selection`). One reflector thread per scope (every namespace, or each watched one): list in
pages, then watch from the list's resourceVersion with bookmarks; a watch the server ends is resumed from the
last version seen; an expired version (410 Gone) or a failed request lists again, and the new list replaces the
cache, with a ``DELETED`` change for every pod that went while the watch was down (client-go's Replace). Reads
answer from memory, by namespace and label (an index of label pairs), once every scope listed (`wait_synced`);
before that, and for callers without a cache (`ApiPods`), the API answers. The RBAC it needs is the operator's
``list,watch`` on pods (`meshplug.controller`).

`OwnedCache` is the same reflector for the objects the operator renders (``app.kubernetes.io/managed-by=meshplug``:
the ConfigMap route's ConfigMaps and EnvoyFilters), read by namespace, labels and name (`ObjectSource`). The
operator's own writes go into it at once (`OwnedCache.note`: the API's answer, when newer than what the watch has
brought so far, as client-go's mutation cache), so the reconcile after a write never sees the object as it was.
`Latest` keeps the newest version of each object seen (the WasmPlugins from kopf's watch, and the status writes'
answers), so a reconcile starts from the object without reading it. kopf-free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, Self, TypeVar

from meshplug import errors, limits
from meshplug.controller import apply

log = logging.getLogger("meshplug.controller.informer")

K = TypeVar("K")
Pod = dict[str, Any]
#: one change: (type ADDED | MODIFIED | DELETED, the pod as it was (None: new), the pod now (None: deleted))
OnChange = Callable[[str, Pod | None, Pod | None], None]


Obj = dict[str, Any]
Trim = Callable[[Mapping[str, Any]], Obj]


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


class ObjectSource(Protocol):
    """Where a delivery path reads the objects it rendered: those of ``namespace`` ("" = every namespace) whose
    labels include ``selector`` (and named ``name`` when given); ``note``/``forget`` tell it of the path's own writes
    and deletes."""

    def objects(self, namespace: str, selector: Mapping[str, str], *, name: str = "") -> list[Obj]: ...

    def note(self, obj: Mapping[str, Any]) -> None: ...

    def forget(self, namespace: str, name: str) -> None: ...


class ApiObjects:
    """`ObjectSource` answered by the API (a label-selected list per call; by name with a field selector, which
    needs only ``list``)."""

    def __init__(self, writer: apply.Writer, api_version: str, kind: str) -> None:
        self.writer, self.api_version, self.kind = writer, api_version, kind

    def objects(self, namespace: str, selector: Mapping[str, str], *, name: str = "") -> list[Obj]:
        by_name = f"metadata.name={name}" if name else ""
        found = self.writer.list(
            self.api_version,
            self.kind,
            namespace,
            label_selector=_label_selector(selector, ""),
            field_selector=by_name,
        )
        return [o for o in found if _matches(o, selector, "") and (not name or o["metadata"]["name"] == name)]

    def note(self, obj: Mapping[str, Any]) -> None:
        pass

    def forget(self, namespace: str, name: str) -> None:
        pass


def _matches(pod: Mapping[str, Any], selector: Mapping[str, str], has_label: str) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items()) and (not has_label or has_label in labels)


def _discard(index: dict[K, set[str]], key: K, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]


def _trimmed(obj: Mapping[str, Any]) -> Obj:
    """The object as a cache keeps it: without managedFields (the largest part of a pod, read by nobody here)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def _version(obj: Mapping[str, Any] | None) -> int | None:
    """The object's resourceVersion as a number (etcd's revision), None when it is not one."""
    raw = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    return int(raw) if raw.isdigit() else None


def older(obj: Mapping[str, Any], than: Mapping[str, Any] | None) -> bool:
    """Whether ``obj`` is an older version than ``than`` (resourceVersions compared as etcd revisions, as
    client-go's mutation cache does; never when either is not a number)."""
    mine, theirs = _version(obj), _version(than)
    return mine is not None and theirs is not None and mine < theirs


class Reflector:
    """The objects of one kind in ``namespaces`` (() = every namespace), optionally those matching
    ``label_selector``, kept by list + watch. ``on_change`` is called on the reflector's thread for every change
    (also the listing's), after the cache holds it. Subclasses read the store and index it (`_indexed`,
    `_unindexed`, called under the lock)."""

    def __init__(
        self,
        writer: apply.Writer,
        api_version: str,
        kind: str,
        namespaces: Iterable[str],
        on_change: OnChange | None = None,
        *,
        label_selector: str = "",
        trim: Trim = _trimmed,
    ) -> None:
        self.writer = writer
        self.api_version, self.kind = api_version, kind
        self.scopes = tuple(namespaces) or ("",)
        self.on_change = on_change
        self.label_selector = label_selector
        self.trim = trim
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Obj]] = {}  # namespace -> name -> object
        self._listed: set[str] = set()
        self._synced = threading.Event()
        self.relists = 0  # lists after the first (a watch that could not resume)

    def _indexed(self, namespace: str, name: str, obj: Obj) -> None:
        """``obj`` entered the store (under the lock)."""

    def _unindexed(self, namespace: str, name: str, obj: Obj) -> None:
        """``obj`` left the store (under the lock)."""

    # --- reads -----------------------------------------------------------------------------------------------

    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, stop: threading.Event) -> bool:
        """Block until every scope listed (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            if self._synced.wait(timeout=0.2):
                return True
        return self._synced.is_set()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(p) for p in self._objects.values())

    # --- the store -------------------------------------------------------------------------------------------

    def _put(self, obj: Obj, *, only_newer: bool = False) -> tuple[bool, Obj | None]:
        """Store ``obj``: (whether it was stored, the version it replaced). ``only_newer``: not over a newer
        version (a watch event behind a write of ours already noted)."""
        meta = obj["metadata"]
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name"))
        with self._lock:
            held = self._objects.get(namespace, {}).get(name)
            if only_newer and held is not None and older(obj, held):
                return False, held
            old = self._unindex(namespace, name)
            self._objects.setdefault(namespace, {})[name] = obj
            self._indexed(namespace, name, obj)
        return True, old

    def _drop(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._unindex(namespace, name)

    def _unindex(self, namespace: str, name: str) -> Obj | None:
        old = self._objects.get(namespace, {}).pop(name, None)
        if old is None:
            return None
        self._unindexed(namespace, name, old)
        if not self._objects[namespace]:
            del self._objects[namespace]
        return old

    def _changed(self, kind: str, old: Obj | None, new: Obj | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, old, new)
        except Exception:  # a consumer's bug must not stop the cache
            log.exception("%s change handler failed (%s)", self.kind, kind)

    def apply_event(self, event: Mapping[str, Any]) -> str:
        """Bring one watch event into the cache; the resourceVersion it carries ("" when none)."""
        kind = str(event.get("type") or "")
        raw = event.get("object") or {}
        version = str((raw.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            return version
        obj = self.trim(raw)
        meta = obj["metadata"]
        if kind == "DELETED":
            old = self._drop(str(meta.get("namespace") or ""), str(meta.get("name")))
            self._changed("DELETED", old if old is not None else obj, None)
        elif kind in ("ADDED", "MODIFIED"):
            stored, old = self._put(obj, only_newer=True)
            if stored:
                self._changed("ADDED" if old is None else "MODIFIED", old, obj)
        return version

    def replace(self, scope: str, objects: list[Obj]) -> None:
        """The listing of ``scope`` ("" = every namespace) replaces what the cache holds there; reads answer from
        memory once every scope was listed."""
        fresh = {(str(o["metadata"].get("namespace") or ""), str(o["metadata"].get("name"))): o for o in objects}
        with self._lock:
            held = [(ns, n) for ns, names in self._objects.items() if not scope or ns == scope for n in names]
        for namespace, name in held:
            gone = self._drop(namespace, name) if (namespace, name) not in fresh else None
            if gone is not None:
                self._changed("DELETED", gone, None)
        for raw in fresh.values():
            obj = self.trim(raw)
            _, old = self._put(obj)
            if old is None or old.get("metadata", {}).get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._changed("ADDED" if old is None else "MODIFIED", old, obj)
        self._listed_scope(scope)

    # --- the reflectors --------------------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> Self:
        for scope in self.scopes:
            name = f"meshplug-{self.kind.lower()}s-{scope or 'all'}"
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
        where = f"{self.kind}s of {scope or 'every namespace'}"
        while not stop.is_set():
            try:
                objects, version = self.writer.list_from(
                    self.api_version, self.kind, scope, page=limits.POD_LIST_PAGE, label_selector=self.label_selector
                )
                self.replace(scope, objects)
                failures = 0
                self._watch(scope, version, stop)
            except (errors.ApplyError, OSError, ValueError) as exc:
                if stop.is_set():
                    return  # the operator ended the watch
                failures += 1
                delay = min(limits.POD_WATCH_BACKOFF_MAX_S, 0.5 * 2 ** min(failures, 8))
                log.warning("%s: %s; listing again in %.1fs", where, exc, delay)
                stop.wait(delay)
            except Exception:  # the kubernetes client's own errors (urllib3): same handling, logged in full
                if stop.is_set():
                    return
                failures += 1
                log.exception("%s: watch failed", where)
                stop.wait(min(limits.POD_WATCH_BACKOFF_MAX_S, 0.5 * 2 ** min(failures, 8)))

    def _watch(self, scope: str, version: str, stop: threading.Event) -> None:
        """Watch from ``version`` until stopped; returns when the version expired (the caller lists again)."""
        while not stop.is_set():
            for event in self.writer.watch(
                self.api_version,
                self.kind,
                scope,
                resource_version=version,
                timeout_s=limits.POD_WATCH_TIMEOUT_S,
                label_selector=self.label_selector,
            ):
                if stop.is_set():
                    return
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    where = f"{self.kind}s of {scope or 'every namespace'}"
                    log.info("%s: watch ended: %s", where, status.get("message"))
                    return  # 410 Gone (expired version) or another error status: list again
                version = self.apply_event(event) or version


class PodCache(Reflector):
    """The pods of ``namespaces`` (() = every namespace), kept by list + watch, indexed by label; a `PodSource`."""

    def __init__(self, writer: apply.Writer, namespaces: Iterable[str], on_change: OnChange | None = None) -> None:
        super().__init__(writer, "v1", "Pod", namespaces, on_change)
        self.fallback = ApiPods(writer)
        self._by_label: dict[tuple[str, str, str], set[str]] = {}  # (namespace, key, value) -> pod names
        self._by_key: dict[tuple[str, str], set[str]] = {}  # (namespace, label key) -> pod names

    def _indexed(self, namespace: str, name: str, obj: Obj) -> None:
        for k, v in (obj["metadata"].get("labels") or {}).items():
            self._by_label.setdefault((namespace, k, str(v)), set()).add(name)
            self._by_key.setdefault((namespace, k), set()).add(name)

    def _unindexed(self, namespace: str, name: str, obj: Obj) -> None:
        for k, v in ((obj.get("metadata") or {}).get("labels") or {}).items():
            _discard(self._by_label, (namespace, k, str(v)), name)
            _discard(self._by_key, (namespace, k), name)

    def pods(self, namespace: str, selector: Mapping[str, str], *, has_label: str = "") -> list[Pod]:
        if not self._synced.is_set():
            return self.fallback.pods(namespace, selector, has_label=has_label)
        with self._lock:
            namespaces = [namespace] if namespace else list(self._objects)
            out: list[Pod] = []
            for ns in namespaces:
                names = self._select(ns, selector, has_label)
                pods = self._objects.get(ns, {})
                out += [pods[n] for n in sorted(names)]
        return out

    def _select(self, namespace: str, selector: Mapping[str, str], has_label: str) -> set[str]:
        sets = [self._by_label.get((namespace, k, v), set()) for k, v in selector.items()]
        if has_label:
            sets.append(self._by_key.get((namespace, has_label), set()))
        if not sets:
            return set(self._objects.get(namespace, {}))
        sets.sort(key=len)
        return set(sets[0]).intersection(*sets[1:])


class OwnedCache(Reflector):
    """The objects of one kind the operator rendered (``label_selector``, e.g. managed-by=meshplug), kept by list +
    watch and by the operator's own writes; an `ObjectSource` (the API answers until every scope listed)."""

    def objects(self, namespace: str, selector: Mapping[str, str], *, name: str = "") -> list[Obj]:
        if not self._synced.is_set():
            return ApiObjects(self.writer, self.api_version, self.kind).objects(namespace, selector, name=name)
        with self._lock:
            held = [self._objects.get(namespace, {})] if namespace else list(self._objects.values())
            found = [o for objs in held for n, o in sorted(objs.items()) if not name or n == name]
        return [o for o in found if _matches(o, selector, "")]

    def note(self, obj: Mapping[str, Any]) -> None:
        """An object as the API answered a write of ours (stored unless the watch brought a newer one)."""
        if (obj.get("metadata") or {}).get("name"):
            self._put(self.trim(obj), only_newer=True)

    def forget(self, namespace: str, name: str) -> None:
        """An object we deleted (its watch event may come later)."""
        self._drop(namespace, name)


class Latest:
    """The newest version of each object seen, by key (e.g. the WasmPlugins from kopf's watch events and the
    answers to the operator's status writes), and when its generation was first seen. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], Obj] = {}
        self._since: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (generation, first seen)

    def put(self, key: tuple[str, str], obj: Mapping[str, Any]) -> None:
        """Keep ``obj`` unless a newer version of it is held."""
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        with self._lock:
            if not older(obj, self._objects.get(key)):
                self._objects[key] = dict(obj)
            if self._since.get(key, (None,))[0] != generation:
                self._since[key] = (generation, self._clock())

    def get(self, key: tuple[str, str]) -> Obj | None:
        with self._lock:
            return self._objects.get(key)

    def since(self, key: tuple[str, str], generation: int) -> float | None:
        """When ``generation`` of the object was first seen (None: not seen here)."""
        with self._lock:
            known = self._since.get(key)
        return known[1] if known is not None and known[0] == generation else None

    def drop(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._objects.pop(key, None)
            self._since.pop(key, None)
