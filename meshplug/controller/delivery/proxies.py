"""What the istio data plane's proxies report: istiod's per-proxy xDS state, and which pod downloaded which module.

Called by the istio delivery paths (`meshplug.controller.delivery.istio_native`, `.istio_configmap`) to count each
selected pod loaded, failed (with the reason) or pending, instead of reporting "applied".

Sources, all real:
- istiod's debug endpoints (``--istiod-debug-url``, what a cluster reaches as ``istiod.istio-system:15014``):
  ``/debug/syncz`` (per connected proxy and xDS type: the nonce sent, the nonce ACKed, the last NACK's error),
  ``/debug/ecdsz?proxyID=`` (the extension configs istiod sends that proxy, url and sha256 included) and
  ``/debug/config_dump?proxyID=`` (its listeners and clusters as istiod builds them). A proxy connected to an
  istiod replica the operator does not read is reported pending (``ProxyNotConnected``).
- `FetchLog`: the module server's own record of each download (client address, sha256, HTTP status). istio-agent
  ACKs an extension whose module it could not download (it substitutes a deny-all RBAC filter, allow-all with
  FAIL_OPEN, and nothing reaches istiod), so a failed or missing download is only visible here. istio-agent caches
  modules per pod by sha256: a pod downloads a module once in its life. Confirmations therefore persist in the
  plugin's status (``loadedPods``) and survive an operator restart.
- `AgentStats`: Envoy's own stats as each pod's istio-agent serves them (``/stats/prometheus`` on its status port,
  what Prometheus scrapes; Istio always includes Envoy's ``wasm`` and ``listener_manager`` stats): the Wasm plugins
  Envoy built, and its remote code fetches given up (`RemoteFetches`: the ConfigMap route's remote code is fetched
  by Envoy itself, once per filter config, and a fetch given up leaves that filter failing closed however often the
  module server served the module).
- istiod keeps per proxy and xDS type only the last NACK's error (`meshplug.controller.delivery.nacks` keeps what
  was seen, and accounts for the rejections no reading showed).
Reads of istiod are shared (`meshplug.controller.delivery.shared_reads`): a reconcile that needs istiod's syncz, or
its view of one proxy, takes a reading started after the moment it names (meshplug's last change, or at most
`limits.ISTIOD_READING_REUSE_S` ago) when there is one, waits for the one in flight when that started then, and
only else reads: many plugins changing at once cost istiod one syncz per moment, not one per reconcile.
Pure judging (`judge`) is separate from the reading, so the rules are unit-tested on recorded inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import limits
from meshplug.controller.delivery import shared_reads

log = logging.getLogger("meshplug.controller.delivery.proxies")

ECDS_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
LDS_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
LOADED, FAILED, PENDING = "loaded", "failed", "pending"
#: how a ProxyNACK verdict's message starts (Envoy's message follows)
NACK_PREFIX = "the proxy rejected the config: "


@dataclass(frozen=True)
class TypeSync:
    """One xDS type of one proxy: the last nonce sent, the last ACKed, the last NACK's error."""

    sent: str
    acked: str
    error: str

    @property
    def synced(self) -> bool:
        return bool(self.sent) and self.sent == self.acked


@dataclass(frozen=True)
class ProxySync:
    proxy_id: str  # <pod>.<namespace>
    proxy_type: str  # sidecar | router
    types: Mapping[str, TypeSync]
    source: str  # the istiod debug url that knows this proxy

    def of(self, type_url: str) -> TypeSync:
        return self.types.get(type_url) or TypeSync("", "", "")


@dataclass(frozen=True)
class Reading:
    """istiod's syncz (every replica, every namespace): connected proxies by id, why some replica could not be read
    ("" when every one answered), and when the read started (monotonic)."""

    at: float
    syncs: Mapping[str, ProxySync]
    problem: str


@dataclass(frozen=True)
class Verdict:
    """One selected pod: loaded, failed or pending, and why."""

    pod: str  # name, or namespace/name outside the plugin's namespace
    state: str
    reason: str
    message: str

    def failing(self) -> dict[str, str]:
        return {"name": self.pod, "reason": self.reason, "message": self.message}


class FetchLog:
    """Module downloads the module server answered, by (client address, sha256): the last HTTP status."""

    def __init__(self, capacity: int = limits.FETCH_LOG_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[tuple[str, str], tuple[int, float]] = collections.OrderedDict()
        self._capacity = capacity

    def record(self, address: str, sha256: str, status: int) -> None:
        with self._lock:
            self._entries.pop((address, sha256), None)
            self._entries[(address, sha256)] = (status, time.time())
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def status(self, address: str, sha256: str) -> int | None:
        with self._lock:
            found = self._entries.get((address, sha256))
        return found[0] if found is not None else None


@dataclass(frozen=True)
class Change:
    """meshplug changed what istiod sends: when (once `written`), and the nonces istiod had last sent each proxy
    just before (istiod's debug views show what it would send now; a proxy has it once a later push reached it)."""

    at: float
    sent: Mapping[str, Mapping[str, str]]  # proxy id -> xDS type -> nonce sent before the change

    @classmethod
    def before(cls, istiod: Istiod) -> Change:
        """The nonces of a syncz read started now (shared with the reconciles asking at the same moment)."""
        syncs = istiod.reading().syncs  # every namespace: a root-namespace plugin reaches them all
        return cls(time.monotonic(), {p: {t: s.sent for t, s in sync.types.items()} for p, sync in syncs.items()})

    def written(self) -> Change:
        """The change once written: istiod's readings (and the grace) count from now."""
        return dataclasses.replace(self, at=time.monotonic())

    def sent_since(self, sync: ProxySync, type_url: str, *, grace: float = limits.PROXY_PUSH_GRACE_S) -> bool:
        """istiod sent the proxy ``type_url`` since the change (or had nothing new for it within ``grace``)."""
        before = self.sent.get(sync.proxy_id, {}).get(type_url)
        if before is None or sync.of(type_url).sent != before:
            return True
        return time.monotonic() - self.at > grace


def readings_after(change: Change | None) -> float:
    """From when a reading of istiod tells a reconcile about meshplug's last ``change`` (None: none known): started
    after the change was recorded, and at most `limits.ISTIOD_READING_REUSE_S` ago."""
    since = time.monotonic() - limits.ISTIOD_READING_REUSE_S
    return max(since, change.at) if change is not None else since


class ViewUnavailable(ValueError):
    """istiod cannot render its view of this proxy: its debug endpoints fail (HTTP 500 "proto: not found") for every
    proxy that has a Wasm extension without pluginConfig (istiod sends it an empty Any, which its JSON encoder
    refuses). Seen on istiod 1.31-dev; the proxy's xDS is not affected."""


class Istiod:
    """Reads istiod's debug endpoints at ``urls`` (one per istiod replica); no url: proxies are not tracked."""

    def __init__(self, urls: Sequence[str], *, timeout: float = limits.ISTIOD_DEBUG_TIMEOUT_S) -> None:
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.timeout = timeout
        self._syncz: shared_reads.SharedReads[str, tuple[dict[str, ProxySync], str]] = shared_reads.SharedReads()
        self._views: shared_reads.SharedReads[tuple[str, str, str], Any] = shared_reads.SharedReads()

    def reading(self, after: float | None = None) -> Reading:
        """`syncz` of every namespace, read at or after ``after`` (monotonic; None: now), shared with every caller
        asking for one then (`meshplug.controller.delivery.shared_reads`)."""
        out = self._syncz.outcome("", self.syncz, after=after)
        syncs, problem = out.result()
        return Reading(out.at, syncs, problem)

    @property
    def reads(self) -> int:
        """Reads of istiod's syncz and proxy views made so far (shared ones counted once)."""
        return self._syncz.reads + self._views.reads

    def _get(self, base: str, path: str) -> Any:
        try:
            with urllib.request.urlopen(base + path, timeout=self.timeout) as resp:  # noqa: S310 - configured url
                raw = resp.read(limits.ISTIOD_DEBUG_MAX_BYTES + 1)
        except urllib.error.HTTPError as exc:  # istiod says why in the body (e.g. a proxy state it cannot encode)
            with exc:
                why = exc.read(512).decode(errors="replace").strip()
            if exc.code == 500 and why.startswith("proto:"):
                raise ViewUnavailable(f"{base}{path}: HTTP 500: {why}") from None
            raise ValueError(f"{base}{path}: HTTP {exc.code}: {why}") from None
        if len(raw) > limits.ISTIOD_DEBUG_MAX_BYTES:
            raise ValueError(f"{base}{path}: answer larger than {limits.ISTIOD_DEBUG_MAX_BYTES} bytes")
        return json.loads(raw) if raw else None

    def syncz(self, namespaces: Sequence[str] = ()) -> tuple[dict[str, ProxySync], str]:
        """Connected proxies by id, and why some istiod could not be read ("" when every one answered)."""
        out: dict[str, ProxySync] = {}
        problems = []
        for base in self.urls:
            queries = [f"?namespace={urllib.parse.quote(ns)}" for ns in namespaces] or [""]
            for query in queries:
                try:
                    entries = self._get(base, f"/debug/syncz{query}") or []
                except (OSError, ValueError) as exc:
                    problems.append(f"{base}: {exc}")
                    break
                for entry in entries:
                    types = {
                        url: TypeSync(*(str(v.get(k) or "") for k in ("sent", "acked", "lastError")))
                        for url, v in (entry.get("resources") or {}).items()
                    }
                    proxy = str(entry.get("proxy") or "")
                    out[proxy] = ProxySync(proxy, str(entry.get("proxy_type") or ""), types, base)
        return out, "; ".join(problems)

    def rejects(self, xds: str = "ecds") -> int | None:
        """How many ``xds`` responses the proxies rejected, summed over the replicas (istiod's
        ``pilot_total_xds_rejects`` counter on its monitoring port); None when a replica cannot be read."""
        total = 0
        for base in self.urls:
            try:
                total += count_rejects(self._text(base, "/metrics"), xds)
            except (OSError, ValueError):
                return None
        return total

    def _text(self, base: str, path: str) -> str:
        with urllib.request.urlopen(base + path, timeout=self.timeout) as resp:  # noqa: S310 - configured url
            return str(resp.read(limits.ISTIOD_DEBUG_MAX_BYTES).decode(errors="replace"))

    def ecds(self, sync: ProxySync, *, after: float | None = None) -> list[Mapping[str, Any]]:
        """The extension configs istiod sends the proxy (a Wasm filter's, a Lua filter's; camelCase JSON), read at
        or after ``after`` (shared, as `reading`)."""
        path = f"/debug/ecdsz?proxyID={urllib.parse.quote(sync.proxy_id)}"
        dump = self._views.get((sync.source, sync.proxy_id, "ecds"), lambda: self._get(sync.source, path), after=after)
        return [c for c in (dump or {}).get("configs") or [] if isinstance(c, Mapping)]

    def config_dump(self, sync: ProxySync, types: str = "lds,cds", *, after: float | None = None) -> Mapping[str, Any]:
        """The proxy's listeners and clusters as istiod builds them (``types``: istiod's short names), read at or
        after ``after`` (shared, as `reading`). Asking for these types only keeps the answer small and keeps out the
        extension configs istiod cannot always encode."""
        path = f"/debug/config_dump?proxyID={urllib.parse.quote(sync.proxy_id)}&types={urllib.parse.quote(types)}"
        dump = self._views.get((sync.source, sync.proxy_id, types), lambda: self._get(sync.source, path), after=after)
        return dict(dump or {})


#: istio-agent's status port (Envoy's stats merged at /stats/prometheus), unless the pod's annotation says otherwise
ISTIO_AGENT_STATUS_PORT = 15020
STATUS_PORT_ANNOTATION = "status.sidecar.istio.io/port"


class AgentStats:
    """The Envoy stats each pod's istio-agent serves (``/stats/prometheus`` on its status port: what Prometheus
    scrapes; Istio always includes Envoy's ``wasm`` stats), read when a judgement needs them, shared as istiod's
    views are. Envoy gives every Wasm plugin it built ``wasm.<plugin name>.vm_reload*`` stats: a plugin name without
    them runs nowhere in that Envoy (with them, this version or an earlier one may be the one running)."""

    def __init__(self, *, timeout: float = limits.ISTIO_AGENT_STATS_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._reads: shared_reads.SharedReads[str, str] = shared_reads.SharedReads()

    def runs_wasm(self, pod: Mapping[str, Any], names: Sequence[str], *, after: float | None = None) -> bool | None:
        """Whether the pod's Envoy runs a Wasm plugin named one of ``names`` (None: its stats cannot be read)."""
        text = self._page(pod, after)
        if text is None:
            return None
        running = wasm_plugins(text)
        return any(stat_name(n) in running for n in names)

    def remote_fetches(self, pod: Mapping[str, Any], *, after: float | None = None) -> RemoteFetches | str:
        """The pod's Envoy's account of its remote code fetches, or why its stats could not be read."""
        url = agent_stats_url(pod)
        text = self._page(pod, after)
        found = remote_fetches(text) if text is not None else None
        if found is not None:
            return found
        if not url:
            return "the pod has no IP or istio-agent status port to read Envoy's stats from"
        if text is None:
            return f"Envoy's stats at {url} did not answer"
        return f"{url} has no Envoy listener stats"

    def _page(self, pod: Mapping[str, Any], after: float | None) -> str | None:
        url = agent_stats_url(pod)
        if not url:
            return None
        try:
            return self._reads.get(url, lambda: self._text(url), after=after)
        except (OSError, ValueError) as exc:
            log.info("%s: %s", url, exc)
            return None

    def _text(self, url: str) -> str:
        with urllib.request.urlopen(url, timeout=self.timeout) as resp:  # noqa: S310 - the pod's own status port
            raw = resp.read(limits.ISTIO_AGENT_STATS_MAX_BYTES + 1)
        if len(raw) > limits.ISTIO_AGENT_STATS_MAX_BYTES:
            raise ValueError(f"answer larger than {limits.ISTIO_AGENT_STATS_MAX_BYTES} bytes")
        return str(raw.decode(errors="replace"))


def agent_stats_url(pod: Mapping[str, Any]) -> str:
    """istio-agent's ``/stats/prometheus`` url of the pod ("" when it has no IP, or no status port)."""
    ip = str((pod.get("status") or {}).get("podIP") or "")
    notes = (pod.get("metadata") or {}).get("annotations") or {}
    port = str(notes.get(STATUS_PORT_ANNOTATION) or ISTIO_AGENT_STATUS_PORT)
    if not ip or not port.isdigit() or not 0 < int(port) < 65536:
        return ""
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{int(port)}/stats/prometheus"


@dataclass(frozen=True)
class RemoteFetches:
    """What an Envoy's stats say of its remote Wasm code (``code.remote``), every module of that Envoy together.
    Each Wasm filter config Envoy builds with remote code takes the module from Envoy's code cache (by sha256) or
    starts a fetch of its own, which ends once, after its retries, counted as ``wasm.remote_load_fetch_successes``
    or ``wasm.remote_load_fetch_failures``; a filter whose fetch failed has no VM and answers every request 503
    (fail closed) until its listener is built again, however many other listeners' fetches of the module succeed
    (and however often the module server served it). A listener waits for its fetches while it warms
    (``listener_manager.total_listeners_warming``). Envoy keeps the ``remote_load`` counters in the stats scope of
    the first listener that built remote code and still exists: when that listener goes (built anew), they start
    again from 0 with the next one that builds remote code (or are absent until then: read as 0)."""

    failures: int  # fetches given up (see above: since Envoy started, or since its counters started again)
    warming: int  # listeners warming now (a fetch may be in progress)


def remote_fetches(page: str) -> RemoteFetches | None:
    """`RemoteFetches` from a Prometheus stats page of Envoy (None: the page has no listener stats of Envoy's). An
    Envoy that never built remote code has no ``remote_load`` stats yet: none failed."""
    warming = _metric(page, "envoy_listener_manager_total_listeners_warming")
    if warming is None:
        return None
    return RemoteFetches(failures=_metric(page, "envoy_wasm_remote_load_fetch_failures") or 0, warming=warming)


def _metric(page: str, name: str) -> int | None:
    """The value of the unlabelled metric ``name`` in a Prometheus text page (None: absent)."""
    found = re.search(r"^" + re.escape(name) + r"(?:\{\})?\s+(\S+)", page, re.M)
    return int(float(found.group(1))) if found else None


def stat_name(name: str) -> str:
    """A name as Envoy's Prometheus stats spell it: every character but letters, digits and ``_`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def wasm_plugins(page: str) -> set[str]:
    """The Wasm plugins an Envoy runs (their `stat_name`) in its Prometheus stats page."""
    return set(re.findall(r"^envoy_wasm_(\w+?)_vm_reload[{\s]", page, re.M))


def count_rejects(metrics: str, xds: str) -> int:
    """istiod's ``pilot_total_xds_rejects`` for the xDS type ``xds`` (its short name: ecds, lds) in a Prometheus
    text page (0 before the first rejection: istiod exports a counter once it counted)."""
    pattern = re.compile(r'^pilot_total_xds_rejects\{(?:[^}]*,)?type="' + re.escape(xds) + r'"[^}]*\}\s+(\S+)', re.M)
    return sum(int(float(m.group(1))) for m in pattern.finditer(metrics))


def _resources(dump: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    """The ``kind`` (Listener, Cluster) resources of an istiod config_dump: typed (``types=``, the resources
    themselves) or full (Envoy's admin shape, ``<kind>sConfigDump``)."""
    out: list[Mapping[str, Any]] = []
    for config in dump.get("configs") or []:
        at = str(config.get("@type", ""))
        if at.endswith(f".{kind}"):
            out.append(config)
        elif at.endswith(f".{kind}sConfigDump"):
            for key in ("staticClusters", "dynamicActiveClusters", "dynamicListeners"):
                for entry in config.get(key) or []:
                    item = (entry.get("activeState") or {}).get("listener") or entry.get("cluster")
                    if isinstance(item, Mapping):
                        out.append(item)
    return out


def listener_filters(dump: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every HTTP and network filter of every listener in an istiod config_dump (camelCase JSON)."""
    out: list[Mapping[str, Any]] = []
    for listener in _resources(dump, "Listener"):
        for chain in listener.get("filterChains") or []:
            for flt in chain.get("filters") or []:
                out.append(flt)
                out += list((flt.get("typedConfig") or {}).get("httpFilters") or [])
    return out


def clusters(dump: Mapping[str, Any]) -> set[str]:
    return {str(c.get("name") or "") for c in _resources(dump, "Cluster")}


def is_ready(pod: Mapping[str, Any]) -> bool:
    conds = {c.get("type"): c.get("status") for c in (pod.get("status") or {}).get("conditions") or []}
    return (pod.get("status") or {}).get("phase") == "Running" and conds.get("Ready") == "True"


def is_gateway(pod: Mapping[str, Any]) -> bool:
    """A pod whose istio-proxy runs as a router (Istio's gateway injection template)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == "istio-proxy":
            return "router" in (container.get("args") or [])[:2]
    return False


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    containers = (pod.get("spec") or {}).get("containers") or []
    return "sidecar.istio.io/status" in (meta.get("annotations") or {}) or any(
        c.get("name") == "istio-proxy" for c in containers
    )


@dataclass(frozen=True)
class Evidence:
    """What was found about one pod, for `judge`."""

    pod: str
    ready: bool
    sync: ProxySync | None
    type_url: str  # the xDS type carrying the plugin: ECDS (native) or LDS (EnvoyFilter)
    pushed: bool  # istiod's view of the proxy carries this module
    envoy_name: str  # the plugin's name in Envoy (NACK messages name it)
    fetched: int | None  # the module server's last answer to this pod for this module; None: no download seen
    needs_download: bool  # the proxy downloads the module from the module server (False: a file it has)
    confirmed: bool  # the plugin's status already counted this pod loaded with this module
    blocked: str = ""  # "Reason: message" when the pod can never load it as delivered
    istiod_problem: str = ""
    nacked: str = ""  # a NACK of this version seen earlier (istiod may have forgotten it)
    unseen: bool = False  # istiod counted a rejection no reading showed while this proxy was sent this version
    running: bool | None = None  # the proxy's Envoy runs a Wasm plugin of this name (its stats); None: not known
    last_nack: str = ""  # the last NACK message seen from this proxy for this plugin (any version), not healed since
    #: remote code Envoy fetches itself: its fetches given up since this url was delivered to the pod, and whether a
    #: listener still warms (a fetch may be in progress); None: Envoy's stats not read
    envoy_fetches: RemoteFetches | None = None
    envoy_stats_unread: str = ""  # remote code: why Envoy's stats could not be read ("" when read, or not needed)


def mentions(error: str, name: str) -> bool:
    """Whether an xDS error message names the plugin ``name`` (not a longer name that starts with it: a
    TrafficExtension's ``ns.x`` beside a WasmPlugin's translated ``ns.x~istio-translated-wasmplugin``)."""
    return bool(name) and re.search(re.escape(name) + r"(?![\w.~-])", error) is not None


def judge(e: Evidence) -> Verdict:
    """Loaded, failed or pending, in the order a user would look: the pod, istiod, the proxy's ACK, the download."""
    if e.blocked:
        reason, _, message = e.blocked.partition(":")
        return Verdict(e.pod, FAILED, reason, message.strip())
    return _before_ack(e) or _unseen(e) or _after_ack(e)


def _before_ack(e: Evidence) -> Verdict | None:
    """The pod, istiod and the proxy's ACK or NACK; None once the proxy ACKed this version."""
    if not e.ready:
        return Verdict(e.pod, PENDING, "PodNotReady", "the pod is not Running and Ready")
    if e.sync is None:
        why = f" ({e.istiod_problem})" if e.istiod_problem else ""
        return Verdict(e.pod, PENDING, "ProxyNotConnected", f"istiod reports no proxy for this pod{why}")
    state = e.sync.of(e.type_url)
    nack = state.error if mentions(state.error, e.envoy_name) else e.nacked
    if nack:
        return Verdict(e.pod, FAILED, "ProxyNACK", NACK_PREFIX + nack)
    if not e.pushed:
        return Verdict(e.pod, PENDING, "NotPushed", "istiod has not built this module into the proxy's config yet")
    if not state.synced:
        what = f"; last error: {state.error}" if state.error else ""
        return Verdict(e.pod, PENDING, "AwaitingACK", f"the proxy has not ACKed istiod's last push{what}")
    return None


def _unseen(e: Evidence) -> Verdict | None:
    """ACKed, but istiod counted a rejection no reading showed that may be this version's refusal (None: none)."""
    if e.unseen and e.running is False:  # the refusal is sure: Envoy has no plugin of this name at all
        return Verdict(
            e.pod,
            FAILED,
            "ProxyNACK",
            f"{NACK_PREFIX}its Envoy runs no Wasm plugin {e.envoy_name} (istio-agent's Envoy stats "
            "have no wasm stats of that name); istiod counted the rejection, and a later ACK cleared Envoy's message "
            "before meshplug read it",
        )
    if e.unseen:  # waiting does not help: Envoy ACKs a refused config sent again
        last = f"; the last rejection this proxy gave the plugin (an earlier version): {e.last_nack}" * bool(
            e.last_nack
        )
        return Verdict(
            e.pod,
            FAILED,
            "RejectionUnseen",
            "istiod counted a rejected extension config that a later ACK cleared before meshplug read it, while this "
            "proxy was sent this version: whether Envoy runs it is not known (change the plugin to have it judged)"
            + last,
        )
    return None


def _after_ack(e: Evidence) -> Verdict:
    """ACKed, nothing unseen: loaded, unless the proxy had to download the module and meshplug's module server did
    not serve it."""
    if not e.needs_download:
        return Verdict(e.pod, LOADED, "Loaded", "ACKed")
    fetching = _envoy_fetching(e)
    if fetching is not None:
        return fetching
    if e.fetched == 200:
        return Verdict(e.pod, LOADED, "Loaded", "downloaded and ACKed")
    if e.fetched is not None:
        return Verdict(
            e.pod,
            FAILED,
            "DownloadFailed",
            f"the proxy's download of the module from meshplug's module server got HTTP {e.fetched}; "
            "istio-agent serves a deny-all filter in its place (allow-all with FAIL_OPEN)",
        )
    if e.confirmed:
        return Verdict(e.pod, LOADED, "Loaded", "downloaded and ACKed (confirmed earlier)")
    return Verdict(
        e.pod,
        PENDING,
        "NotDownloaded",
        "ACKed, but meshplug's module server has seen no download of this module from this pod",
    )


def _envoy_fetching(e: Evidence) -> Verdict | None:
    """Remote code Envoy fetches itself: pending while a fetch gave up since the url was delivered (a filter without
    its module: 503) or a listener still warms; None when Envoy's stats say neither (or were not read)."""
    gave_up = e.envoy_fetches
    if gave_up is not None and gave_up.failures > 0:
        return Verdict(
            e.pod,
            PENDING,
            "FetchGaveUp",
            f"Envoy gave up {gave_up.failures} fetch(es) of remote Wasm code since this module was delivered to it "
            "(its wasm.remote_load_fetch_failures); the listener whose filter made it answers 503 (fail closed) "
            "until it is built again, whatever other listeners fetched: meshplug delivers the module again (a new "
            "url: Envoy builds those listeners again and fetches the module or takes it from its code cache)",
        )
    if gave_up is not None and gave_up.warming > 0:
        return Verdict(
            e.pod,
            PENDING,
            "FetchInProgress",
            f"{gave_up.warming} of the proxy's listeners are warming (waiting for a fetch of remote Wasm code, "
            "Envoy's listener_manager.total_listeners_warming)",
        )
    if e.envoy_stats_unread:
        return Verdict(
            e.pod,
            PENDING,
            "EnvoyStatsUnread",
            f"{e.envoy_stats_unread}: whether every fetch Envoy made of the module succeeded is not known (Envoy "
            "fetches remote code itself, once per filter config, and a fetch given up fails that filter closed; its "
            "stats are the account of it)",
        )
    return None


def summary(verdicts: Sequence[Verdict]) -> tuple[int, list[Verdict]]:
    """(loaded count, the others: failed first)."""
    loaded = sum(1 for v in verdicts if v.state == LOADED)
    rest = sorted((v for v in verdicts if v.state != LOADED), key=lambda v: (v.state != FAILED, v.pod))
    return loaded, rest
