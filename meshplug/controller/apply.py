"""The operator's only Kubernetes API writer (and its reader): server-side apply, deletes, status, Events.

Called by `meshplug.controller.handlers` (and nothing else writes to the API). Every call is synchronous
(asyncio callers use ``asyncio.to_thread``), keyword-only where it matters, and maps API refusals to
`errors.ApplyError` with ``reason`` = the API's reason (``Forbidden``, ``Invalid``, ``Conflict``, ...), so a
missing RBAC permission surfaces as a condition and an Event instead of passing silently.
Objects are written with server-side apply, and every write names the field manager ``meshplug``: GitOps tools
that own other fields of the same objects keep them, and managedFields show what the operator owns.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kubernetes

from meshplug import errors, limits, spec

FIELD_MANAGER = "meshplug"
Objects = list[dict[str, Any]]
#: Event series remembered in memory (their counts); beyond it the memory is dropped and rebuilt from the API
_MAX_EVENT_SERIES = 10_000
#: the id of the last occurrence an Event counts (`Writer.event`): a write tried again is not counted twice
OCCURRENCE_ANNOTATION = "meshplug.io/occurrence"

# (apiVersion, kind) -> plural; the kinds the operator reads or writes
_PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("apps/v1", "DaemonSet"): "daemonsets",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("networking.istio.io/v1alpha3", "EnvoyFilter"): "envoyfilters",
    ("extensions.istio.io/v1alpha1", "TrafficExtension"): "trafficextensions",
    ("extensions.istio.io/v1alpha1", "WasmPlugin"): "wasmplugins",
    (f"{spec.API_GROUP}/{spec.API_VERSION}", spec.KIND): spec.PLURAL,
    (f"{spec.API_GROUP}/{spec.API_VERSION}", spec.KIND_TRAFFIC_EXTENSION): spec.PLURAL_TRAFFIC_EXTENSION,
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"): "mutatingwebhookconfigurations",
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration"): "validatingwebhookconfigurations",
}
#: every write names the operator as its field manager (managedFields show what it owns, e.g. to a GitOps tool)
_WRITE = {"fieldManager": FIELD_MANAGER}


def _resource_of(path: str) -> str:
    """The resource an API path names (``pods``, ``wasmplugins/status``; ``discovery`` for a group's index)."""
    parts = [p for p in path.split("?", maxsplit=1)[0].split("/") if p]
    parts = parts[2:] if parts[:1] == ["api"] else parts[3:]  # /api/v1/... or /apis/<group>/<version>/...
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    if not parts:
        return "discovery"
    return "/".join(parts[:1] + parts[2:3])


def holds(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether ``existing`` already is what applying ``desired`` would make it: the same content (every top-level
    field but metadata and status), and its labels, annotations and owner references include ``desired``'s
    (other field managers may add their own)."""
    for key, value in desired.items():
        if key not in ("apiVersion", "kind", "metadata", "status") and existing.get(key) != value:
            return False
    have, want = existing.get("metadata") or {}, desired.get("metadata") or {}
    for field_name in ("labels", "annotations"):
        present = have.get(field_name) or {}
        if any(present.get(k) != v for k, v in (want.get(field_name) or {}).items()):
            return False
    owners = have.get("ownerReferences") or []
    return all(ref in owners for ref in want.get("ownerReferences") or [])


def resource_path(api_version: str, kind: str, namespace: str, name: str = "") -> str:
    """The API path of a kind's collection (or of one object); ``namespace`` "" for cluster-scoped kinds."""
    plural = _PLURALS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_path: str | None
    insecure: bool
    scheme: str | None
    token: str | None = field(repr=False)
    certificate_path: str | None
    private_key_path: str | None


@dataclass
class _Asking:
    """One discovery request in flight, shared by the callers that wait for it."""

    sent: float  # time.monotonic() when it was sent
    done: threading.Event = field(default_factory=threading.Event)
    found: frozenset[str] = frozenset()
    error: errors.ApplyError | None = None


class Writer:
    """API access through one kubernetes-client ApiClient (kubeconfig or in-cluster credentials)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self._api = api
        self._count_lock = threading.Lock()
        self._events_lock = threading.Lock()
        self._events: dict[tuple[str, str], int] = {}  # (namespace, Event name) -> the count last written
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self._discovery: dict[str, tuple[float, frozenset[str]]] = {}  # api_version -> (when read, plurals)
        self._asking: dict[str, _Asking] = {}  # the discovery request in flight per api_version
        self._watches: set[Any] = set()  # the responses of watches in flight (urllib3)

    def requests(self) -> dict[tuple[str, str], int]:
        """API requests this writer sent, by (HTTP method, resource) (a metric; the scale bench reads it). The
        resource is the plural (with its subresource, ``wasmplugins/status``) or ``discovery``; a watch is
        ``WATCH``."""
        with self._count_lock:
            return dict(self._requests)

    def _count(self, method: str, path: str, query: Mapping[str, str] | None) -> None:
        if query is not None and query.get("watch"):
            method = "WATCH"
        with self._count_lock:
            self._requests[(method, _resource_of(path))] += 1

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> Any:
        config = self._api.configuration
        headers = {"Accept": "application/json", "Content-Type": content_type}
        for auth in config.auth_settings().values():
            if auth["in"] == "header" and auth["value"]:
                headers[auth["key"]] = auth["value"]
        url = config.host + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        self._count(method, path, query)
        try:
            resp = self._api.call_api(method, url, header_params=headers, body=body, _request_timeout=30)
            raw = resp.read()  # type: ignore[no-untyped-call]
            status = resp.status
        except kubernetes.client.ApiException as exc:
            raw, status = (exc.body or b""), exc.status
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw or "")
        try:
            decoded: Any = json.loads(text) if text else None
        except ValueError:
            decoded = text
        if status >= 300:
            reason = decoded.get("reason", "") if isinstance(decoded, dict) else ""
            message = decoded.get("message", text) if isinstance(decoded, dict) else text
            raise errors.ApplyError(f"{method} {path}: {status} {message}"[:500], reason=reason or f"HTTP{status}")
        return decoded

    def credentials(self) -> Credentials:
        """What the client authenticates with; kopf logs in with the same (re-read on every re-login)."""
        config = self._api.configuration
        auth = config.auth_settings().get("BearerToken", {})
        scheme, _, token = str(auth.get("value") or "").partition(" ")
        return Credentials(
            server=str(config.host),
            ca_path=config.ssl_ca_cert,
            insecure=not config.verify_ssl,
            scheme=scheme or None,
            token=token or None,
            certificate_path=config.cert_file,
            private_key_path=config.key_file,
        )

    # --- reads -----------------------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call("GET", resource_path(api_version, kind, namespace, name))
        except errors.ApplyError as exc:
            if exc.reason == "NotFound":
                return None
            raise
        return obj

    def served(self, api_version: str, *, since: float | None = None) -> frozenset[str]:
        """The resources (plurals) the API serves in ``api_version`` (a group/version); empty when not served.

        ``since`` (a `time.monotonic` time): the answer of a request sent at or after it, e.g. when a plugin's new
        generation was first seen (a change asks what the cluster serves now: Istio may have been upgraded);
        callers wanting that of the same moment share one request. Without ``since``: the last answer, asked once;
        once it is `limits.API_DISCOVERY_TTL_S` old a background request refreshes it while it is still given (a
        CRD installed or removed is seen within about that time). `forget_discovery` makes the next call ask."""
        with self._count_lock:
            known = self._discovery.get(api_version)
            if since is None and known is not None:
                if time.monotonic() - known[0] >= limits.API_DISCOVERY_TTL_S and api_version not in self._asking:
                    refresh = self._asking[api_version] = _Asking(time.monotonic())
                    name = "meshplug-discovery"
                    threading.Thread(target=self._ask, args=(api_version, refresh), name=name, daemon=True).start()
                return known[1]
            if known is not None and since is not None and known[0] >= since:
                return known[1]
            asking = self._asking.get(api_version)
            mine = asking is None or (since is not None and asking.sent < since)
            if mine:
                asking = self._asking[api_version] = _Asking(time.monotonic())
        assert asking is not None
        if mine:
            self._ask(api_version, asking)
        asking.done.wait()
        if asking.error is not None:
            raise asking.error
        return asking.found

    def _ask(self, api_version: str, asking: _Asking) -> None:
        """Send ``asking``'s request; its answer is remembered unless a later one is."""
        try:
            asking.found = self._served(api_version)
        except Exception as exc:  # an API refusal or the client's own (urllib3) errors: given to who waits
            asking.error = (
                exc if isinstance(exc, errors.ApplyError) else errors.ApplyError(str(exc), reason="Discovery")
            )
        with self._count_lock:
            if self._asking.get(api_version) is asking:
                del self._asking[api_version]
            if asking.error is None:
                known = self._discovery.get(api_version)
                if known is None or known[0] <= asking.sent:
                    self._discovery[api_version] = (asking.sent, asking.found)
        asking.done.set()

    def forget_discovery(self) -> None:
        """The next `served` asks the API server again."""
        with self._count_lock:
            self._discovery.clear()

    def _served(self, api_version: str) -> frozenset[str]:
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            out = self._call("GET", base)
        except errors.ApplyError as exc:
            if exc.reason in ("NotFound", "HTTP404"):
                return frozenset()
            raise
        return frozenset(str(r.get("name")) for r in (out or {}).get("resources") or [])

    def list(
        self, api_version: str, kind: str, namespace: str, *, label_selector: str = "", field_selector: str = ""
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` ("" = every namespace), optionally by label and field selector
        (``metadata.name=<name>``: one object, where the operator may list but not get)."""
        query = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v} or None
        out = self._call("GET", resource_path(api_version, kind, namespace), query=query)
        items: list[dict[str, Any]] = out.get("items", []) if isinstance(out, dict) else []
        return items

    def list_from(
        self, api_version: str, kind: str, namespace: str, *, page: int = 500, label_selector: str = ""
    ) -> tuple[Objects, str]:
        """Every object of ``kind`` in ``namespace`` ("" = every namespace; only those ``label_selector`` selects
        when given), read in pages of ``page``, and the list's resourceVersion (where a `watch` of the same
        collection starts)."""
        items: Objects = []
        cont = ""
        while True:
            query = {"limit": str(page), **({"continue": cont} if cont else {})}
            if label_selector:
                query["labelSelector"] = label_selector
            out = self._call("GET", resource_path(api_version, kind, namespace), query=query)
            out = out if isinstance(out, dict) else {}
            items += out.get("items") or []
            meta = out.get("metadata") or {}
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        resource_version: str,
        timeout_s: float,
        label_selector: str = "",
    ) -> Iterator[dict[str, Any]]:
        """The watch events of ``kind`` in ``namespace`` ("" = every namespace) after ``resource_version``
        (bookmarks asked for), until the server ends the watch after ``timeout_s``. An ``ERROR`` event (e.g. 410
        Gone: the version is too old) is yielded as it comes; a refused watch raises `errors.ApplyError`."""
        config = self._api.configuration
        headers = {"Accept": "application/json"}
        for auth in config.auth_settings().values():
            if auth["in"] == "header" and auth["value"]:
                headers[auth["key"]] = auth["value"]
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(timeout_s)),
            **({"labelSelector": label_selector} if label_selector else {}),
        }
        path = resource_path(api_version, kind, namespace)
        self._count("GET", path, query)
        url = f"{config.host}{path}?{urllib.parse.urlencode(query)}"
        try:
            resp = self._api.call_api("GET", url, header_params=headers, _request_timeout=(30, timeout_s + 30))
        except kubernetes.client.ApiException as exc:
            why = f"watch {path}: {exc.status} {exc.reason}"[:500]
            raise errors.ApplyError(why, reason=f"HTTP{exc.status}") from None
        raw = resp.response  # the urllib3 response, not read yet: the events arrive one JSON line each
        with self._count_lock:
            self._watches.add(raw)
        try:
            if resp.status >= 300:
                text = raw.read().decode(errors="replace")
                raise errors.ApplyError(f"watch {path}: {resp.status} {text}"[:500], reason=f"HTTP{resp.status}")
            pending = b""
            for chunk in raw.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            with self._count_lock:
                self._watches.discard(raw)
            raw.release_conn()

    def end_watches(self) -> None:
        """End every watch in flight (their readers see the stream end): the operator stops."""
        with self._count_lock:
            streams = list(self._watches)
        for raw in streams:
            with contextlib.suppress(Exception):  # closed meanwhile
                raw.shutdown()

    def access_review(
        self, verb: str, group: str, resource: str, namespace: str = "", name: str = ""
    ) -> tuple[bool, str]:
        """SelfSubjectAccessReview: may the operator's identity ``verb`` ``resource`` (``plural[/sub]``)?"""
        plural, _, sub = resource.partition("/")
        attrs = {"verb": verb, "group": group, "resource": plural, "subresource": sub, "namespace": namespace}
        attrs["name"] = name
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {k: v for k, v in attrs.items() if v}},
        }
        out = self._call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body)
        status = (out or {}).get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason") or "")

    def token_review(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        """TokenReview: the API server's verdict on a bearer token for ``audiences`` (its ``status``)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": list(audiences)},
        }
        out = self._call("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body=body)
        status: dict[str, Any] = (out or {}).get("status") or {}
        return status

    # --- writes ----------------------------------------------------------------------------------------------

    def apply_changed(self, obj: Mapping[str, Any], existing: Mapping[str, Any] | None) -> dict[str, Any] | None:
        """Server-side apply ``obj`` unless ``existing`` (the object as just read) already holds it (`holds`):
        a reconcile that changes nothing writes nothing. The object as the API answered the write (None: not
        written)."""
        if existing is not None and holds(existing, obj):
            return None
        return self.apply(obj)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (must carry apiVersion, kind, metadata.name/namespace)."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        out: dict[str, Any] = self._call(
            "PATCH",
            path,
            body=dict(obj),
            content_type="application/apply-patch+yaml",
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
        )
        return out

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``obj``; ApplyError reason ``AlreadyExists`` when it is there."""
        meta = obj["metadata"]
        out: dict[str, Any] = self._call(
            "POST", resource_path(obj["apiVersion"], obj["kind"], meta["namespace"]), body=dict(obj), query=_WRITE
        )
        return out

    def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT ``obj`` (optimistic concurrency: its metadata.resourceVersion must be current, else ``Conflict``)."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        out: dict[str, Any] = self._call("PUT", path, body=dict(obj), query=_WRITE)
        return out

    def merge_patch(self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        path = resource_path(api_version, kind, namespace, name)
        self._call("PATCH", path, body=dict(patch), content_type="application/merge-patch+json", query=_WRITE)

    def json_patch(
        self, api_version: str, kind: str, namespace: str, name: str, ops: Sequence[Mapping[str, Any]]
    ) -> None:
        """An RFC 6902 patch (``test`` operations guard it): the operator then owns only the fields it changed."""
        path = resource_path(api_version, kind, namespace, name)
        self._call(
            "PATCH", path, body=[dict(op) for op in ops], content_type="application/json-patch+json", query=_WRITE
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete; False when it was already gone."""
        try:
            self._call("DELETE", resource_path(api_version, kind, namespace, name))
        except errors.ApplyError as exc:
            if exc.reason == "NotFound":
                return False
            raise
        return True

    def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], *, kind: str = spec.KIND
    ) -> dict[str, Any]:
        """Merge-patch the WasmPlugin's (or TrafficExtension's) status subresource; the object as the API answered."""
        path = resource_path(f"{spec.API_GROUP}/{spec.API_VERSION}", kind, namespace, name) + "/status"
        out = self._call(
            "PATCH", path, body={"status": dict(status)}, content_type="application/merge-patch+json", query=_WRITE
        )
        return out if isinstance(out, dict) else {}

    def event(
        self, involved: Mapping[str, Any], *, warning: bool, reason: str, message: str, occurrence: str = ""
    ) -> None:
        """Record a core/v1 Event on ``involved`` (a WasmPlugin body, or any object with apiVersion/kind).

        One Event per (object, type, reason), as client-go's recorder aggregates them: a repeat raises its
        ``count`` and moves ``lastTimestamp`` (and takes the newest message) instead of adding an Event per
        retry. The Event's name is derived from that key, so a restarted operator finds its series again.
        ``occurrence`` (an id of this occurrence, kept in the Event's `OCCURRENCE_ANNOTATION`) makes a write tried
        again idempotent: when the API took an earlier try but its answer was lost, the Event already carries the
        id and is not counted again (`meshplug.controller.events`).
        """
        meta = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        kind = involved.get("kind", spec.KIND)
        kind_type = "Warning" if warning else "Normal"
        series = hashlib.sha256(f"{meta.get('uid', '')}\0{kind}\0{kind_type}\0{reason}".encode()).hexdigest()[:16]
        name = f"{meta['name'][:200]}.{series}"
        namespace = meta["namespace"]
        with self._events_lock:
            count = self._events.get((namespace, name))
        if count is not None and self._bump_event(namespace, name, count + 1, now, message, occurrence):
            return
        notes = {OCCURRENCE_ANNOTATION: occurrence} if occurrence else {}
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace, "annotations": notes},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", f"{spec.API_GROUP}/{spec.API_VERSION}"),
                "kind": kind,
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta.get("uid", ""),
            },
            "type": kind_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "meshplug-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call("POST", resource_path("v1", "Event", namespace), body=body, query=_WRITE)
        except errors.ApplyError as exc:
            if exc.reason != "AlreadyExists":
                raise
            existing = self.get("v1", "Event", namespace, name) or {}  # a series this process has not seen yet
            counted = int(existing.get("count") or 1)
            landed = ((existing.get("metadata") or {}).get("annotations") or {}).get(OCCURRENCE_ANNOTATION)
            if occurrence and landed == occurrence:  # an earlier try of this occurrence was taken
                with self._events_lock:
                    self._events[(namespace, name)] = counted
                return
            self._bump_event(namespace, name, counted + 1, now, message, occurrence)
            return
        with self._events_lock:
            self._events[(namespace, name)] = 1

    def _bump_event(  # noqa: PLR0917
        self, namespace: str, name: str, count: int, now: str, message: str, occurrence: str
    ) -> bool:
        """Count one more occurrence of an existing Event (``count`` as a value, not an increment: a patch tried
        again writes the same); False when it is gone (Events expire)."""
        patch: dict[str, Any] = {"count": count, "lastTimestamp": now, "message": message[:1024]}
        if occurrence:
            patch["metadata"] = {"annotations": {OCCURRENCE_ANNOTATION: occurrence}}
        try:
            self.merge_patch("v1", "Event", namespace, name, patch)
        except errors.ApplyError as exc:
            if exc.reason != "NotFound":
                raise
            with self._events_lock:
                self._events.pop((namespace, name), None)
            return False
        with self._events_lock:
            if len(self._events) >= _MAX_EVENT_SERIES:
                self._events.clear()  # a bound on memory; a forgotten series is found again by its name
            self._events[(namespace, name)] = count
        return True
