"""The agent data plane: each selected pod's in-pod agent gets its pod's full desired set, ACKed or NACKed.

Called by `meshplug.controller.reconcile` through the `meshplug.controller.delivery.Delivery` interface (and
`forget_pod` by the pod watch). Each selected pod's agent gets its pod's FULL desired set (every agent-plane
WasmPlugin selecting the pod, in chain order: `meshplug.render.agent.desired_set`), modules served by the
operator's module server over HTTPS (each pod may fetch the modules of the sets pushed to it: `granted`). Ready
only when every selected pod's agent ACKed a set in which this plugin runs with this digest. A NACKed set is not
pushed again until something changes (the set, the pod's address or its restarts), except a refusal that can heal
by itself (`HEALING_NACKS`: a signing key the pod's Secret mount does not hold yet), pushed again with backoff as
unreachable agents are. Each refusal (`Refusal`) is recorded in the refused plugin's status, and a restarted
operator takes it back from there: it neither pushes the refused set again nor starts its backoff afresh. Pods
that stop being selected get their new set. Pushes are authenticated by mutual TLS and the push tokens of the
namespace's agent Secret (`meshplug.controller.identity.Identity.push_credentials`).

With ``spec.rollout`` an update is a canary rollout (`meshplug.controller.rollout` decides, from the status, which
pods run it; `meshplug.controller.delivery.canary` keeps the stable version beside it and measures each step): the
other pods' sets keep the stable version, and while a step is in progress every look reads each selected pod's
per-plugin stats from its agent (the push port's GET `protocol.HEALTH_PATH`), compares the sides and pushes the
next step, every pod (promoted) or the stable version back (rolled back). Ready is False (RollingOut) until then.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshplug import errors, limits, protocol, spec
from meshplug.controller import agents, apply, delivery, identity, informer, rollout, status, workqueue
from meshplug.controller import metrics as metrics_mod
from meshplug.controller.delivery import canary
from meshplug.render import agent as agent_render
from meshplug.render import model

log = logging.getLogger("meshplug.controller.delivery.agent")

PLUGIN_API = f"{spec.API_GROUP}/{spec.API_VERSION}"

Key = delivery.Key
#: fetch and validate another plugin of the namespace (its module belongs in the pods' sets too)
Loader = Callable[[spec.PluginSpec], model.Module]


@dataclass(frozen=True)
class PluginEntry:
    """An agent-plane plugin as it is delivered: its spec, its validated module, its chain tie-break; during a
    canary rollout (`meshplug.controller.rollout`) also the stable version, which every pod but ``canary_pods``
    runs (None: every pod runs ``module``)."""

    plugin: spec.PluginSpec
    module: model.Module
    tie_break: str  # creationTimestamp + namespace/name (Istio's tie-break within a phase and priority)
    stable: tuple[spec.PluginSpec, model.Module] | None = None
    canary_pods: frozenset[str] | None = None

    def for_pod(self, pod: str) -> tuple[spec.PluginSpec, model.Module]:
        """The version ``pod`` runs."""
        if self.stable is not None and self.canary_pods is not None and pod not in self.canary_pods:
            return self.stable
        return self.plugin, self.module


#: NACK reasons that can heal with nothing the operator sees changing: the agent reads its trusted signing keys
#: from its Secret, which the kubelet refreshes some time (about a minute) after the operator updated it, so a key
#: just added (a rotation) may not be there yet. Such a refusal is pushed again on the reconcile's backoff, not
#: kept until the plugin changes as other NACKs are.
HEALING_NACKS = frozenset({"signature_untrusted"})


@dataclass(frozen=True)
class PodState:
    """The last push to one pod's agent: to which address, which set, what came back. ``held``: no push was made,
    the outcome is a refusal of the same set to the same agent recorded earlier (`Refusal`), whose backoff holds."""

    target: agents.Target
    restarts: int
    outcome: agents.Outcome
    held: bool = False


@dataclass(frozen=True)
class Refusal:
    """One pod's agent refusing its set: which set, which agent (address and the pod's restarts), how many pushes of
    that set it refused in a row and when the last one was (wall clock), and why. Kept in the refused plugins'
    status (``failingPods``: `to_status`), so an operator that restarts goes on with it instead of pushing the set
    again: a refusal that heals only with a change is not pushed again until one, one that can heal by itself
    (`HEALING_NACKS`) is pushed again after `limits.RECONCILE_BACKOFF_FIRST_S` doubling with each refused push up
    to `limits.RECONCILE_BACKOFF_MAX_S`."""

    set: str
    agent: str
    pushes: int
    at: float
    reason: str
    message: str
    resource: str = ""  # the plugin the agent named
    running: tuple[tuple[str, str], ...] = ()  # (plugin name, sha256) the agent kept running

    def holds(self, version: str, agent: str, now: float) -> bool:
        """Whether a push of set ``version`` to ``agent`` waits: the same set refused by the same agent, and it
        cannot heal by itself or its backoff has not run out."""
        if (self.set, self.agent) != (version, agent):
            return False
        return self.reason not in HEALING_NACKS or now < self.at + status.backoff(self.pushes - 1)

    def outcome(self) -> agents.Outcome:
        """The refusal as a push's outcome (what the agent answered; what it runs is not known here)."""
        return agents.Outcome(
            agents.Result.NACK, self.set, "", self.reason, self.message, self.resource, self.running
        )

    def to_status(self) -> dict[str, Any]:
        """The fields a failingPods entry carries for it."""
        at = datetime.datetime.fromtimestamp(self.at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        running = [f"{name}@{sha}" for name, sha in self.running]
        return {
            "set": self.set,
            "agent": self.agent,
            "pushes": self.pushes,
            "lastPushTime": at,
            "refused": self.resource,
            "running": running,  # as many as plugins select the pod
        }

    @classmethod
    def from_status(cls, entry: Mapping[str, Any]) -> Refusal | None:
        """A refusal a failingPods entry recorded (None: none, or not one of this path's)."""
        if entry.get("reason") != "AgentNACK" or not entry.get("set") or not entry.get("lastPushTime"):
            return None
        try:
            at = datetime.datetime.strptime(str(entry["lastPushTime"]), "%Y-%m-%dT%H:%M:%SZ")
            pushes = int(entry.get("pushes") or 1)
        except ValueError:
            return None
        reason, _, message = str(entry.get("message") or "").partition(": ")
        when = at.replace(tzinfo=datetime.UTC).timestamp()
        running = tuple(tuple(str(r).rsplit("@", 1)) for r in entry.get("running") or [] if "@" in str(r))
        return cls(
            str(entry["set"]),
            str(entry.get("agent") or ""),
            max(1, pushes),
            when,
            reason,
            message,
            str(entry.get("refused") or ""),
            tuple((name, sha) for name, sha in running),
        )


def agent_key(target: agents.Target, restarts: int, uid: str = "") -> str:
    """Which agent a push went to: the pod (its uid: a pod made again under its name is another), its address, and
    its container restarts (a restarted agent lost its set)."""
    return f"{uid}/{target.ip}:{target.port}#{restarts}"


@dataclass(frozen=True)
class PodReport:
    ready: int
    total: int
    failing: tuple[dict[str, Any], ...]
    retry: str  # non-empty: a cause that heals by retrying (unreachable agent, a pod without IP yet)


def served(module: model.Module) -> tuple[str, ...]:
    """The blobs (sha256) an agent fetches from the module server for ``module``: the module, and the signed layer
    blob it checks the module against when that layer wraps it (a tar.gz)."""
    layer = module.signature.layer.removeprefix("sha256:") if module.signature is not None else module.sha256
    return (module.sha256,) if layer == module.sha256 else (module.sha256, layer)


def _baseline(module: model.Module) -> bool:
    return module.compiled is not None and module.compiled.tier == "baseline" and module.signature is None


def restarts_of(pod: Mapping[str, Any]) -> int:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


class AgentDelivery:
    """Pushes to meshplug's agents, with the per-pod state of what each agent confirmed."""

    name = "agent"

    def __init__(
        self,
        writer: apply.Writer,
        server: model.ModuleServer,
        load: Loader,
        *,
        metrics: metrics_mod.Metrics,
        identity: identity.Identity,
        load_pinned: canary.PinnedLoader | None = None,
        pods: informer.PodSource | None = None,
    ) -> None:
        """``load_pinned``: how a canary rollout's stable version is loaded again by its digest (default: as any
        other plugin, by its url)."""
        self.writer = writer
        self.pods: informer.PodSource = pods or informer.ApiPods(writer)  # the operator's pod cache
        self.server = server
        self.load = load
        self.load_pinned: canary.PinnedLoader = load_pinned or (lambda plugin, _: load(plugin))
        self.metrics = metrics
        self.identity = identity
        self.enqueue: Callable[[Key, float], None] | None = None
        self._lock = threading.Lock()
        self._entries: dict[Key, PluginEntry] = {}  # agent-plane plugins, last good module
        self._pods: dict[Key, PodState] = {}  # (namespace, pod) -> last push
        self._pushed: dict[Key, frozenset[str]] = {}  # plugin -> pods it was pushed to
        self._pod_locks: dict[Key, threading.Lock] = {}
        self._grants: dict[Key, frozenset[str]] = {}  # (namespace, pod) -> modules (sha256) of the sets pushed to it
        #: (namespace, pod) -> its agent's refusal of its set (from a push, or from a plugin's status: `Refusal`)
        self._refusals: dict[Key, Refusal] = {}
        self._seeded: set[tuple[str, str, str]] = set()  # (namespace, pod, set) taken from a status once
        #: (plugin, pod) -> the refusal last reported in an Event for that plugin (once per refusal, whoever
        #: pushed): the module it was to run there, the NACK's reason and message
        self._told: dict[tuple[Key, str], tuple[str, str, str]] = {}
        self._pool = workqueue.Pool(limits.AGENT_PUSH_CONCURRENCY, "meshplug-push")
        #: canary rollouts: the state last decided here (the status has it too, maybe not yet in a cached read)
        self._rollouts: dict[Key, rollout.State] = {}
        self._stables: dict[Key, tuple[str, tuple[spec.PluginSpec, model.Module]]] = {}  # version key -> stable
        #: per plugin, its last delivery's wall time in ms spent pushing (the rest: API reads, building sets)
        self.push_ms: dict[Key, float] = {}
        #: per plugin, the pods its deliveries pushed since the reconciler last read it (the stage log's figure)
        self.pushed: dict[Key, int] = {}

    def close(self) -> None:
        """Stop pushing: pushes still running are abandoned (their reconciles raise `workqueue.ShuttingDown`)."""
        self._pool.close()
        agents.abort_pushes()

    def deliver(self, request: delivery.Request) -> delivery.Report:
        plugin, module = request.plugin, request.module
        if module is None:  # the reconciler reads every agent-plane module (file:// below the operator's roots)
            raise errors.ApplyError("the agent data plane needs a module meshplug fetched", reason="ModuleMissing")
        if plugin.rollout is not None:
            return self._deliver_rollout(request, plugin, module)
        with self._lock:
            self._rollouts.pop(request.key, None)
            self._stables.pop(request.key, None)
            self._entries[request.key] = PluginEntry(plugin, module, delivery.tie_break(request.body))
        report, nacks = self._deliver(plugin, module)
        return self._report(report, nacks, module.digest, baseline=_baseline(module))

    def _report(
        self,
        report: PodReport,
        nacks: list[tuple[str, agents.Outcome]],
        digest: str,
        state: rollout.State | None = None,
        *,
        baseline: bool = False,
    ) -> delivery.Report:
        """Ready from the pods' confirmations (and, with a rollout, where it stands); ``baseline``: the pods run
        the module's baseline code (meshplug.controller.precompile) until its optimized artifact is pushed."""
        if report.ready == report.total and state is not None and (state.active or state.holds_stable):
            ready = status.Condition(
                status.READY, "False", "RollingOut" if state.active else state.phase, state.message
            )
        elif report.ready == report.total:
            tier = " (baseline code; the optimized code follows)" if baseline else ""
            ready = status.Condition(
                status.READY,
                "True",
                "Confirmed",
                f"{report.ready}/{report.total} selected pods' agents run {digest}{tier}",
            )
        else:
            reasons = {f["reason"] for f in report.failing}
            reason = next(
                (r for r in ("AgentNACK", "AgentUnauthorized", "AgentUnreachable") if r in reasons),
                "AgentsPending",
            )
            first = report.failing[0]
            what = "their version" if state is not None and (state.active or state.holds_stable) else digest
            ready = status.Condition(
                status.READY,
                "False",
                reason,
                f"{report.ready}/{report.total} selected pods' agents confirmed {what}; "
                f"{first['name']}: {first['reason']}: {first['message']}",
            )
        event = None
        if nacks:
            pod, outcome = nacks[0]
            more = f" (and {len(nacks) - 1} more pods)" if len(nacks) > 1 else ""
            event = (True, "AgentNACK", f"pod {pod}: {outcome.reason}: {outcome.message}{more}")
        return delivery.Report(
            ready=ready, pods=(report.ready, report.total), failing=report.failing, event=event, retry=report.retry
        )

    def _deliver_rollout(
        self, request: delivery.Request, plugin: spec.PluginSpec, module: model.Module
    ) -> delivery.Report:
        """A plugin with ``spec.rollout``: its pods get the version the rollout gives them; while a step is in
        progress and its pods confirmed, their stats are compared and the rollout goes on (or back)."""
        assert plugin.rollout is not None
        pods = delivery.selected_pods(self.pods, plugin)
        ctx = canary.context(request.body, plugin, module, pods)
        with self._lock:  # what this process last decided, else the status (after a restart or a new leader)
            prior = self._rollouts.get(request.key) or rollout.from_status(request.body.get("status"))
        planned = rollout.plan(ctx, prior)
        events = list(planned.events)
        stable = self._stable(request.key, request.body, planned.state) if planned.canary_pods is not None else None
        self._set_entry(request, stable, planned.canary_pods)
        report, nacks = self._deliver(plugin, module)
        state, unread = planned.state, ""
        if state.active and report.total and report.ready == report.total:
            healths = self._healths(plugin.namespace, pods)
            expected = {name: self._expected(request.key, name, module) for name, _ in ctx.pods}
            state, c_side, s_side, missing = canary.measure(state, plugin.envoy_name, expected, healths)
            if missing:  # no verdict on part of the pods: hold (the step's window keeps running)
                unread = f"stats not read from {len(missing)} pods ({missing[0]})"
                state = replace(state, message=f"step {state.step}/{state.steps}: {unread}")
            else:
                after = rollout.advance(ctx, state, c_side, s_side)
                events += after.events
                state = after.state
                if after.canary_pods != planned.canary_pods:
                    stable = stable or self._stable(request.key, request.body, state)
                    self._set_entry(request, stable if after.canary_pods is not None else None, after.canary_pods)
                    report, more = self._deliver(plugin, module)
                    nacks += more
        with self._lock:
            self._rollouts[request.key] = state
        out = self._report(report, nacks, module.digest, state, baseline=_baseline(module))
        phase_ok = state.phase in (rollout.INITIALIZED, rollout.PROMOTED)
        rolled = status.Condition(rollout.CONDITION, "True" if phase_ok else "False", state.phase, state.message)
        if out.event is not None:
            events.insert(0, out.event)
        recheck = None
        if state.active:
            recheck = min(limits.ROLLOUT_CHECK_INTERVAL_S, max(0.5, plugin.rollout.hold_s / 4))
        return replace(
            out,
            event=None,
            events=tuple(events),
            conditions=(rolled,),
            fields={"rollout": rollout.to_status(state)},
            recheck_s=recheck if not out.retry else None,
        )

    def _stable(
        self, key: Key, body: Mapping[str, Any], state: rollout.State
    ) -> tuple[spec.PluginSpec, model.Module] | None:
        """The rollout's stable version, fetched and validated once per stable version (not at every look)."""
        with self._lock:
            cached = self._stables.get(key)
        if cached is not None and state.stable is not None and cached[0] == state.stable.key:
            return cached[1]
        got = canary.stable_of(body, state, self.load_pinned)
        if got is not None and state.stable is not None:
            with self._lock:
                self._stables[key] = (state.stable.key, got)
        return got

    def _set_entry(
        self,
        request: delivery.Request,
        stable: tuple[spec.PluginSpec, model.Module] | None,
        canary_pods: tuple[str, ...] | None,
    ) -> None:
        assert request.module is not None
        entry = PluginEntry(
            request.plugin,
            request.module,
            delivery.tie_break(request.body),
            stable=stable if canary_pods is not None else None,
            canary_pods=frozenset(canary_pods) if canary_pods is not None and stable is not None else None,
        )
        with self._lock:
            self._entries[request.key] = entry

    def _expected(self, key: Key, pod: str, module: model.Module) -> str:
        """The module (sha256) ``pod`` should run for plugin ``key``."""
        with self._lock:
            entry = self._entries.get(key)
        return entry.for_pod(pod)[1].sha256 if entry is not None else module.sha256

    def _healths(self, namespace: str, pods: list[dict[str, Any]]) -> dict[str, protocol.Health | str]:
        """Each pod's agent's per-plugin stats (or why they could not be read)."""
        creds = self.identity.push_credentials(namespace)

        def one(pod: Mapping[str, Any]) -> protocol.Health | str:
            try:
                target = agents.target_of(dict(pod))
            except errors.ConfigError as exc:
                return exc.message
            return "the pod has no IP" if target is None else agents.read_health(target, creds)

        answers = self._pool.map(one, pods)
        return {str(p["metadata"]["name"]): a for p, a in zip(pods, answers, strict=True)}

    def _refresh_entries(self, namespace: str, own: Key | None = None) -> None:
        """Make the registry of agent-plane plugins of ``namespace`` match the API (after a restart the
        operator must not push a set that lacks plugins it has not reconciled yet). ``own``: the plugin being
        delivered keeps the entry its reconcile just set, even when the API has a newer generation already
        (that generation's own reconcile follows: fetching and compiling it here would do its work in a
        reconcile that judges and reports the older one)."""
        present: set[str] = set()
        bodies: list[dict[str, Any]] = []
        for kind in spec.PLURALS:
            try:
                bodies += [{"kind": kind, **body} for body in self.writer.list(PLUGIN_API, kind, namespace)]
            except errors.ApplyError as exc:
                if exc.reason not in ("NotFound", "HTTP404") or kind == spec.KIND:
                    raise  # a cluster without the TrafficExtension CRD (an older install) has none of them
        for body in bodies:
            meta = body["metadata"]
            self._seed_refusals(namespace, body.get("status") or {})
            if meta.get("deletionTimestamp"):
                continue
            try:
                plugin = spec.parse(body)
            except errors.SpecError:
                continue
            if plugin.data_plane is not spec.DataPlane.AGENT:
                continue
            key = (namespace, spec.key_name(plugin.kind, plugin.name))
            present.add(key[1])
            if key == own:
                continue
            with self._lock:
                known = self._entries.get(key)
            # a known entry stays as it is when unchanged, or when a rollout is involved: that plugin's own
            # reconcile decides which pods get a new version (a newer spec read here must not reach every pod)
            if known is not None and (known.plugin == plugin or plugin.rollout or known.plugin.rollout):
                continue
            try:
                entry = self._entry_from_api(body, plugin)
            except errors.MeshplugError as exc:  # its own reconcile reports it; keep its last good module
                log.info("agent set of %s: %s/%s not deliverable yet: %s", namespace, namespace, plugin.name, exc)
                continue
            with self._lock:
                self._entries[key] = entry
        with self._lock:
            for key in [k for k in self._entries if k[0] == namespace and k[1] not in present]:
                del self._entries[key]

    def _seed_refusals(self, namespace: str, current: Mapping[str, Any]) -> None:
        """Take the refusals a plugin's status records for pods this process knows none of (once per pod and set:
        after a restart, the pushes of those sets wait for their backoff as they would have)."""
        for entry in current.get("failingPods") or []:
            refusal = Refusal.from_status(entry)
            if refusal is None:
                continue
            seen = (namespace, str(entry.get("name")), refusal.set)
            with self._lock:
                if seen not in self._seeded and (namespace, seen[1]) not in self._refusals:
                    self._refusals[(namespace, seen[1])] = refusal
                self._seeded.add(seen)

    def _entry_from_api(self, body: Mapping[str, Any], plugin: spec.PluginSpec) -> PluginEntry:
        """Another plugin's entry as the API has it: its module, and where its rollout stands (its status)."""
        module = self.load(plugin)
        state = rollout.from_status(body.get("status")) if plugin.rollout is not None else None
        if state is None or state.stable is None or state.stable_spec is None:
            return PluginEntry(plugin, module, delivery.tie_break(body))
        key = rollout.version_key(f"sha256:{module.sha256}", body.get("spec") or {})
        if key == state.stable.key:
            return PluginEntry(plugin, module, delivery.tie_break(body))
        stable = self._stable((plugin.namespace, spec.key_name(plugin.kind, plugin.name)), body, state)
        # the step's pods as the status has them; a spec the status does not describe yet (a newer version, its
        # reconcile still to come) goes nowhere before that reconcile decides: every pod keeps the stable version
        pods = (
            frozenset(state.canary_pods)
            if state.active and state.canary is not None and key == state.canary.key
            else frozenset()
        )
        return PluginEntry(plugin, module, delivery.tie_break(body), stable=stable, canary_pods=pods)

    def _desired(
        self, namespace: str, labels: Mapping[str, str], pod: str
    ) -> tuple[str, tuple[Any, ...], frozenset[str]]:
        """The pod's set: its version, its resources, and the blobs (sha256) its agent fetches for it."""
        with self._lock:
            entries = [
                (*e.for_pod(pod), e.tie_break)
                for (ns, _), e in self._entries.items()
                if ns == namespace and delivery.selects(e.plugin.selector_labels, labels)
            ]
        resources = agent_render.desired_set(entries, self.server)
        return agent_render.version_of(resources), resources, frozenset(d for _, m, _ in entries for d in served(m))

    def _deliver(
        self, plugin: spec.PluginSpec, module: model.Module
    ) -> tuple[PodReport, list[tuple[str, agents.Outcome]]]:
        key: Key = (plugin.namespace, spec.key_name(plugin.kind, plugin.name))
        self._refresh_entries(plugin.namespace, own=key)
        pods = delivery.selected_pods(self.pods, plugin)
        names = frozenset(p["metadata"]["name"] for p in pods)
        with self._lock:
            gone = self._pushed.get(key, frozenset()) - names
            self._pushed[key] = names
        others = [p for p in self.pods.pods(plugin.namespace, {}) if p["metadata"]["name"] in gone] if gone else []
        if not pods and not others:  # no agent here: no push credentials (nor an agent Secret) needed
            return PodReport(0, 0, (), ""), []
        creds = self.identity.push_credentials(plugin.namespace)
        started = time.monotonic()
        results = self._pool.map(lambda p: self._sync_pod(p, creds, key), [*pods, *others])
        with self._lock:
            self.push_ms[key] = round((time.monotonic() - started) * 1000, 1)
        ready, failing, retry, nacks = 0, [], "", []
        for pod, state in zip(pods, results, strict=False):
            name = pod["metadata"]["name"]
            if isinstance(state, str):  # no push possible: why
                reason, message = state.split(":", 1)
                failing.append({"name": name, "reason": reason, "message": message.strip()})
                retry = retry or (message if reason == "BadPushPort" else "")
                continue
            out = state.outcome
            if (
                out.result in (agents.Result.ACK, agents.Result.NACK)
                and (plugin.envoy_name, self._expected(key, name, module)) in out.running
                # a NACK naming this plugin refused its change (a config, a signature): what runs is the old one
                and not (out.result is agents.Result.NACK and out.resource == plugin.envoy_name)
            ):
                # confirmed; after a NACK the agent still runs it: the set was refused for another plugin, whose
                # own reconcile (kicked by the changed outcome) reports it on that plugin; nothing to tell here
                ready += 1
                with self._lock:
                    self._told.pop((key, name), None)
                continue
            if out.result is agents.Result.ACK:
                failing.append({"name": name, "reason": "NotRunning", "message": "the agent reports it not running"})
            elif out.result is agents.Result.NACK:
                with self._lock:
                    kept = self._refusals.get((plugin.namespace, name))
                failing.append(
                    {
                        "name": name,
                        "reason": "AgentNACK",
                        "message": f"{out.reason}: {out.message}",
                        **(kept.to_status() if kept is not None and kept.set == out.version_info else {}),
                    }
                )
                # the push may have been another plugin's (the pod's set holds both): reported once per refusal
                # either way (a set pushed again for another change and refused for the same cause is no new one),
                # and not again for a refusal recorded before this process started (no push made: `held`)
                refusal = (self._expected(key, name, module), out.reason, out.message)
                if not state.held:
                    with self._lock:
                        told, self._told[(key, name)] = self._told.get((key, name)), refusal
                    if told != refusal:
                        nacks.append((name, out))
                if out.reason in HEALING_NACKS:  # pushed again on the backoff: the pod's Secret mount may catch up
                    retry = retry or f"pod {name}: {out.reason}: {out.message}"
            else:
                reason = "AgentUnauthorized" if out.result is agents.Result.UNAUTHORIZED else "AgentUnreachable"
                failing.append({"name": name, "reason": reason, "message": out.message})
                retry = retry or out.message
        return PodReport(ready, len(pods), tuple(failing), retry), nacks

    def _sync_pod(self, pod: Mapping[str, Any], creds: identity.PushCredentials, own: Key) -> PodState | str:
        """Push the pod's desired set unless its agent already confirmed (or refused) exactly that set at this
        address; its state, or "Reason: why no push was possible". ``own``: the plugin whose reconcile (or
        removal) pushes, which reads the outcome itself."""
        meta = pod["metadata"]
        pod_key: Key = (meta["namespace"], meta["name"])
        try:
            target = agents.target_of(dict(pod))
        except errors.ConfigError as exc:
            return f"{exc.reason}: {exc.message}"
        if target is None:
            return "PodHasNoIP: the pod has no IP yet (not running)"
        version, resources, blobs = self._desired(meta["namespace"], meta.get("labels") or {}, meta["name"])
        restarts = restarts_of(pod)
        with self._lock:
            lock = self._pod_locks.setdefault(pod_key, threading.Lock())
        with lock:
            with self._lock:
                state = self._pods.get(pod_key)
            if (
                state is not None
                and state.target == target
                and state.restarts == restarts
                and state.outcome.version_info == version
                and state.outcome.result in (agents.Result.ACK, agents.Result.NACK)
                and not (state.outcome.result is agents.Result.NACK and state.outcome.reason in HEALING_NACKS)
            ):
                return state
            who = agent_key(target, restarts, str(meta.get("uid") or ""))
            with self._lock:
                refused = self._refusals.get(pod_key)
            if (state is None or state.outcome.result is agents.Result.NACK) and (
                refused is not None and refused.holds(version, who, time.time())
            ):  # refused before (by this process, or recorded in a status): its backoff holds the push
                return PodState(target, restarts, refused.outcome(), held=True)
            with self._lock:  # the module server lets this pod fetch these modules (before the push asks it to)
                self._grants[pod_key] = blobs | self._grants.get(pod_key, frozenset())
            started = time.monotonic()
            outcome = agents.push(target, version, resources, creds)
            self.metrics.pushed(outcome.result.value, time.monotonic() - started)
            with self._lock:
                self.pushed[own] = self.pushed.get(own, 0) + 1
            if outcome.result is agents.Result.ACK:
                with self._lock:
                    self._grants[pod_key] = blobs
            new = PodState(target, restarts, outcome)
            with self._lock:
                self._pods[pod_key] = new
                if outcome.result is agents.Result.NACK:
                    again = refused is not None and (refused.set, refused.agent) == (version, who)
                    pushes = refused.pushes + 1 if again and refused is not None else 1
                    why = (outcome.reason, outcome.message, outcome.resource, outcome.running)
                    self._refusals[pod_key] = Refusal(version, who, pushes, time.time(), *why)
                elif outcome.result is agents.Result.ACK:
                    self._refusals.pop(pod_key, None)
        if state is None or state.outcome != outcome:
            self._kick_others(pod_key, meta.get("labels") or {}, own)
        return new

    def _kick_others(self, pod_key: Key, labels: Mapping[str, str], own: Key) -> None:
        """The pod's agent state changed: the other plugins selecting it re-read it for their status (not
        ``own``, whose reconcile pushed and reports this outcome: queued again it would only find it again)."""
        if self.enqueue is None:
            return
        with self._lock:
            keys = [
                k
                for k, e in self._entries.items()
                if k != own and k[0] == pod_key[0] and delivery.selects(e.plugin.selector_labels, labels)
            ]
        for key in keys:
            self.enqueue(key, 0.0)

    def using(self, sha256: str) -> list[Key]:
        """The agent-plane plugins whose delivered module is ``sha256``."""
        with self._lock:
            return [key for key, entry in self._entries.items() if entry.module.sha256 == sha256]

    def forget_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pods.pop((namespace, name), None)
            self._pod_locks.pop((namespace, name), None)
            self._grants.pop((namespace, name), None)
            self._refusals.pop((namespace, name), None)
            for told in [t for t in self._told if t[0][0] == namespace and t[1] == name]:
                del self._told[told]

    def granted(self, namespace: str, pod: str, sha256: str) -> bool:
        """Whether this operator pushed ``pod`` a set with module ``sha256`` (the module server's fast path)."""
        with self._lock:
            return sha256 in self._grants.get((namespace, pod), frozenset())

    def remove(self, namespace: str, name: str, *, owned: bool) -> None:
        """Push every pod that ran the plugin its set without it (deleted, or moved to another path)."""
        key: Key = (namespace, name)
        with self._lock:
            self._rollouts.pop(key, None)
            self._stables.pop(key, None)
            entry = self._entries.pop(key, None)
            pushed = self._pushed.pop(key, frozenset())
            for told in [t for t in self._told if t[0] == key]:
                del self._told[told]
        if entry is None and not pushed and not owned:
            return
        self._refresh_entries(namespace)  # a deleted plugin is not listed any more (deletionTimestamp)
        with self._lock:
            self._entries.pop(key, None)
        selector = entry.plugin.selector_labels if entry is not None else None
        pods = [
            p
            for p in self.pods.pods(namespace, {})
            if p["metadata"]["name"] in pushed
            or (selector is not None and delivery.selects(selector, p["metadata"].get("labels")))
        ]
        creds = self.identity.push_credentials(namespace)
        for pod, state in zip(pods, self._pool.map(lambda p: self._sync_pod(p, creds, key), pods), strict=False):
            if isinstance(state, str) or state.outcome.result is not agents.Result.ACK:
                why = state if isinstance(state, str) else f"{state.outcome.reason}: {state.outcome.message}"
                log.warning("removing %s/%s from pod %s's agent: %s", namespace, name, pod["metadata"]["name"], why)
        with self._lock:
            self.pushed.pop(key, None)
