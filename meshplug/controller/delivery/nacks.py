"""What the istio plane's proxies refused: the NACKs seen, and the rejections istiod counted that no reading showed.

Used by the istio delivery paths (`meshplug.controller.delivery.istio_native`, `.istio_configmap`) beside the
per-pod judging of `meshplug.controller.delivery.proxies`. istiod keeps per proxy and xDS type only the last NACK's
error, and clears it on the next ACK of that type: the ACK of another extension's push, and the ACK of the very same
extension sent again. Envoy (1.40, `FilterConfigSubscription::onConfigUpdate`) stores an extension config as its last
one before it builds the filter, so a wasm plugin that fails to start is NACKed once, and every later push of the
same config is ACKed unchanged (its hash matches) while the filter still has no config (500s). A NACK seen is
therefore a refusal for good: `NackMemory` remembers it until the plugin's version changes, never forgets it on an
ACK (a listener NACK is the exception: Envoy tries a refused listener again at every listener push, `NackMemory.heal`).

`NackWatch` is the one poller of istiod (per `proxies.Istiod`, `watch_of`: shared by both istio routes, whatever
the number of plugins or proxies): while any plugin version is fresh, or any selected pod is pending, it reads
istiod's reject counter and then its syncz every `limits.NACK_WATCH_INTERVAL_S`, or less often when a reading is slow
(it reads at most `limits.NACK_WATCH_MAX_DUTY` of the time: `pause`), one ``/metrics`` and one ``/debug/syncz`` per
istiod replica per reading, shared with the reconciles through `proxies.Istiod.reading`; it notes each extension
config or listener NACK naming a watched plugin (a listener update that names a refused extension fails too; the
ConfigMap route's listeners also by the module's file), and counts the rejections istiod counts
(``pilot_total_xds_rejects{type="ecds"}``): a rejection istiod counted but no reading showed was cleared between two
readings; the proxies with extension config traffic around it cannot be counted loaded with a version they had not
ACKed before it (`RejectAccounts`): ``RejectionUnseen``, or ``ProxyNACK`` when the proxy's Envoy runs no Wasm plugin
of that name (`proxies.AgentStats`). Envoy's message is then kept nowhere: istiod kept only the last one, Envoy's
config_dump shows the refused config as its current one with no error state, istio-agent serves no xDS state.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from meshplug import limits
from meshplug.controller.delivery import proxies

log = logging.getLogger("meshplug.controller.delivery.nacks")


class NackMemory:
    """NACKs seen, by (proxy id, plugin's Envoy name, the plugin's version): istiod keeps per proxy and xDS type only
    the last NACK's error, and a later ACK of another push (delta xDS sends changed resources only) clears it while
    Envoy still lacks the refused extension; what was seen stays failed until the plugin (or the proxy) changes.

    A listener NACK is different (`heal`): istiod sends a proxy all its listeners on every listener push and Envoy
    tries again each one that differs from the listener it runs, so a listener refused for a reason that went (a
    module file not mounted yet) is taken by the next push, and its ACK heals it. Beside each version's NACKs, the
    last message per (proxy, Envoy name) whatever the version (`last`): a refusal no reading showed is reported with
    the message Envoy gave that proxy for the plugin before, until the proxy is judged to run the plugin (`loaded`)."""

    def __init__(self, capacity: int = limits.FETCH_LOG_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[tuple[str, str, str], Nack] = collections.OrderedDict()
        self._last: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        self._capacity = capacity

    def note(
        self, key: tuple[str, str, str], message: str, *, type_url: str = proxies.ECDS_TYPE, acked: str = ""
    ) -> None:
        """(proxy, Envoy name, version) was refused with ``message`` in ``type_url``, while istiod's last ACKed
        nonce of that type was ``acked``."""
        with self._lock:
            self._seen[key] = Nack(message, type_url, acked)
            self._seen.move_to_end(key)
            self._last[key[:2]] = message
            self._last.move_to_end(key[:2])
            for kept in (self._seen, self._last):
                while len(kept) > self._capacity:
                    kept.popitem(last=False)

    def get(self, key: tuple[str, str, str]) -> str:
        with self._lock:
            found = self._seen.get(key)
        return found.message if found is not None else ""

    def last(self, proxy: str, name: str) -> str:
        """The last message a NACK of the plugin ``name`` (any version) at ``proxy`` gave ("" when none)."""
        with self._lock:
            return self._last.get((proxy, name), "")

    def loaded(self, proxy: str, name: str) -> None:
        """``proxy`` was judged to run a version of ``name``: an earlier refusal's message is no news any more."""
        with self._lock:
            self._last.pop((proxy, name), None)

    def heal(self, key: tuple[str, str, str], sync: proxies.ProxySync) -> bool:
        """Forget a listener NACK of ``key`` the proxy no longer gives: istiod's listener state of the proxy is ACKed
        at a later nonce than when it was noted, with no error (see the class docstring). An extension config NACK
        never heals (Envoy ACKs the refused config sent again without building it)."""
        with self._lock:
            found = self._seen.get(key)
            if found is None or found.type_url != proxies.LDS_TYPE:
                return False
            state = sync.of(proxies.LDS_TYPE)
            if not state.synced or state.error or state.acked == found.acked:
                return False
            del self._seen[key]
            self._last.pop(key[:2], None)
        log.info("proxy %s: %s healed (listeners ACKed at %s)", key[0], key[1], state.acked)
        return True

    def forget(self, name: str, versions: str = "") -> None:
        """Forget every NACK of the plugin ``name`` (its Envoy name; only its versions starting with ``versions``:
        one route's): it was removed, a new one starts afresh."""
        with self._lock:
            for key in [k for k in self._seen if k[1] == name and k[2].startswith(versions)]:
                del self._seen[key]
            for last in [k for k in self._last if k[1] == name]:
                del self._last[last]


@dataclass(frozen=True)
class Nack:
    """One NACK seen: Envoy's message, the xDS type, and the nonce istiod had last seen ACKed of that type then."""

    message: str
    type_url: str
    acked: str


_SHARED: weakref.WeakKeyDictionary[proxies.Istiod, NackWatch] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def watch_of(istiod: proxies.Istiod) -> NackWatch:
    """The one `NackWatch` (with its `NackMemory`) of ``istiod``, shared by both istio routes: one poller of istiod
    whatever the number of routes, plugins or proxies."""
    with _SHARED_LOCK:
        found = _SHARED.get(istiod)
        if found is None:
            found = _SHARED[istiod] = NackWatch(istiod, NackMemory())
        return found


class NackWatch:
    """Reads istiod's syncz every `limits.NACK_WATCH_INTERVAL_S` while a plugin version is watched, notes in
    `NackMemory` each extension config or listener NACK that names it, and accounts for every extension config
    rejection istiod counts (see the module docstring). One daemon thread, started on demand, gone when nothing
    is watched."""

    def __init__(
        self, istiod: proxies.Istiod, nacks: NackMemory, *, interval: float = limits.NACK_WATCH_INTERVAL_S
    ) -> None:
        self._istiod = istiod
        self._nacks = nacks
        self.memory = nacks
        self._interval = interval
        self._lock = threading.Lock()
        self._watched: dict[tuple[tuple[str, ...], str], float] = {}  # (Envoy names, version) -> until (monotonic)
        self._started: dict[tuple[str, str], float] = {}  # (first Envoy name, version) -> first watched
        self._thread: threading.Thread | None = None
        self._accounts = RejectAccounts()

    def watch(self, names: Sequence[str], version: str, until: float) -> None:
        """Note NACKs naming one of ``names`` (the first is the key in `NackMemory`) for ``version`` until ``until``
        (later watches of the same version extend it)."""
        if not names or not self._istiod.urls:
            return
        with self._lock:
            key = (tuple(names), version)
            started = self._started.setdefault((names[0], version), time.monotonic())
            until = min(until, started + limits.NACK_WATCH_MAX_S)
            self._watched[key] = max(until, self._watched.get(key, 0.0))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nack-watch", daemon=True)
                self._thread.start()

    def unseen(self, proxy: str, name: str, version: str) -> bool:
        """istiod counted an extension config rejection that no reading showed, at ``proxy``, since ``name`` at
        ``version`` was first watched, and ``proxy`` had not ACKed that version before it (`RejectAccounts`)."""
        with self._lock:
            since = self._started.get((name, version))
        return since is not None and self._accounts.unseen((proxy, name, version), since)

    def accepted(self, proxy: str, name: str, version: str) -> None:
        """``proxy`` was judged to run ``name`` at ``version`` (ACKed, nothing unseen): a rejection counted later,
        after the count read next, is not its refusal."""
        self._accounts.accept((proxy, name, version))

    def forget(self, name: str) -> None:
        with self._lock:
            self._watched = {k: v for k, v in self._watched.items() if k[0][0] != name}
            self._started = {k: v for k, v in self._started.items() if k[0] != name}
        self._accounts.forget(name)

    def look(self) -> bool:
        """One reading (the reject counter first, then syncz); False when nothing is watched any more."""
        with self._lock:
            now = time.monotonic()
            self._watched = {k: until for k, until in self._watched.items() if until > now}
            watched = list(self._watched)
        if not watched:
            self._accounts.reset()
            return False
        counted = time.monotonic()
        rejects = self._istiod.rejects()
        reading = self._istiod.reading()  # started after the count was read; the reconciles share it
        syncs = reading.syncs
        for proxy, sync in syncs.items():
            for names, version in watched:
                for type_url in (proxies.ECDS_TYPE, proxies.LDS_TYPE):
                    state = sync.of(type_url)
                    if state.error and any(proxies.mentions(state.error, name) for name in names):
                        self._nacks.note((proxy, names[0], version), state.error, type_url=type_url, acked=state.acked)
        self._accounts.account(rejects if not reading.problem else None, syncs, counted)
        return True

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                busy = self.look()
            except (OSError, ValueError) as exc:  # istiod away for a moment: the next reading tells
                log.debug("nack watch: %s", exc)
                busy = True
            if not busy:
                with self._lock:
                    if not self._watched:
                        self._thread = None
                        return
            time.sleep(pause(time.monotonic() - started, self._interval))


def pause(spent: float, interval: float, duty: float = limits.NACK_WATCH_MAX_DUTY) -> float:
    """How long the watch waits after a reading that took ``spent`` s: ``interval``, or longer when the reading
    was slow (a large mesh's syncz, a busy istiod), so that reading takes at most ``duty`` of the watch's time."""
    return max(interval, spent * (1.0 - duty) / duty)


@dataclass(frozen=True)
class Mark:
    """istiod counted an extension config rejection at a proxy that no reading showed: it came after ``since`` (the
    reject count read before the one that first counted it) and was counted by the reading of ``at``."""

    since: float
    at: float


class RejectAccounts:
    """Extension config rejections istiod counted against those the readings showed (a NACK in syncz, by proxy,
    nonce and error). When istiod counted more, the rejection came after the count read before (``since``): the
    proxies with extension config traffic over the readings around it (their sent nonce changed, or a push was not
    answered yet: a NACK and the ACK that clears it both fall there, even when istiod sent the refused config before)
    are marked. A plugin version a proxy had ACKed before a mark's ``since`` is not the one refused (istiod does send
    a proxy its unchanged extension configs again when another plugin changes, but Envoy does not take an unchanged
    one again: seen in tests/integration/test_istio_native.py), so `unseen` passes it; one ACKed later is not
    cleared (Envoy ACKs a refused config sent again)."""

    def __init__(self, capacity: int = limits.FETCH_LOG_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._marks: dict[str, collections.deque[Mark]] = {}  # kept across accountings: versions judged later see them
        self._accepted: collections.OrderedDict[tuple[str, str, str], float] = collections.OrderedDict()
        self._capacity = capacity
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._base: int | None = None  # istiod's count when the accounting started
            self._known: set[tuple[str, str, str]] = set()  # NACKs shown (proxy, nonce, error)
            self._shown = 0  # ... of them, since the accounting started
            self._missed = 0
            # the last readings: when their count was read, and each proxy's extension configs (sent, ACKed)
            self._readings: collections.deque[tuple[float, dict[str, tuple[str, str]]]] = collections.deque(maxlen=2)

    def account(self, rejects: int | None, syncs: Mapping[str, proxies.ProxySync], counted: float) -> None:
        """One reading: ``rejects`` (istiod's count, read at ``counted``, before ``syncs``; None: unknown, the
        accounting starts over)."""
        ecds = {p: s.of(proxies.ECDS_TYPE) for p, s in syncs.items()}
        state = {p: (t.sent, t.acked) for p, t in ecds.items()}
        shown = {(p, t.sent, t.error) for p, t in ecds.items() if t.error}
        with self._lock:
            if rejects is None or self._base is None or rejects < self._base:  # unknown, first, istiod restarted
                self._base, self._known, self._shown, self._missed = rejects, shown, 0, 0  # shown: counted before
                self._readings.clear()
                self._readings.append((counted, state))
                return
            self._shown += len(shown - self._known)
            self._known |= shown
            missed = rejects - self._base - self._shown
            if missed > self._missed:
                mark = Mark(since=self._readings[-1][0], at=time.monotonic())
                for proxy in sorted(active([s for _, s in self._readings] + [state])):
                    marks = self._marks.setdefault(proxy, collections.deque(maxlen=limits.REJECTION_MARKS_KEPT))
                    marks.append(mark)
                    log.info("proxy %s: istiod counted an extension config rejection no reading showed", proxy)
            self._missed = max(self._missed, missed)
            self._readings.append((counted, state))

    def accept(self, key: tuple[str, str, str]) -> None:
        """(proxy, Envoy name, version): judged loaded now (the first time counts)."""
        with self._lock:
            if key not in self._accepted:
                self._accepted[key] = time.monotonic()
                while len(self._accepted) > self._capacity:
                    self._accepted.popitem(last=False)

    def unseen(self, key: tuple[str, str, str], since: float) -> bool:
        """Whether a rejection no reading showed may be the refusal of (proxy, Envoy name, version), first sent
        at ``since``."""
        with self._lock:
            marks = list(self._marks.get(key[0], ()))
            accepted = self._accepted.get(key)
        return any(m.at >= since and (accepted is None or accepted >= m.since) for m in marks)

    def forget(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self._accepted if k[1] == name]:
                del self._accepted[key]


def active(states: Sequence[Mapping[str, tuple[str, str]]]) -> set[str]:
    """Proxies with extension config traffic over these readings (each: proxy -> (sent, ACKed)): the nonce sent
    changed, a push was not answered in one of them, or the proxy (re)connected or went."""
    out = set()
    for proxy in set().union(*states):
        seen = [s.get(proxy) for s in states]
        present = [x for x in seen if x is not None]
        if len(present) < len(seen) or len({sent for sent, _ in present}) > 1 or any(a != b for a, b in present):
            out.add(proxy)
    return out
