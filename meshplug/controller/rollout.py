"""Canary rollouts on the agent plane: which pods run the new version, and whether it may go further. Pure.

Called by `meshplug.controller.delivery.agent` for an agent-plane plugin with ``spec.rollout``
(`meshplug.spec.Rollout`): `plan` decides, from the rollout as the status records it (`State`, kept in
``status.rollout`` so it survives an operator restart, and never in the spec, so a GitOps tool sees no drift),
which selected pods run the spec's version now and which keep the stable one; `judge` compares the new version's
per-plugin stats with the stable version's over the step's window (`Sample`, summed over each side's pods, read from
the agents by the delivery path; each pod's counters when the window started are a `Window`, kept in the status too,
so that a restarted operator goes on with the same window); `advance` turns the verdict (or the
``meshplug.io/rollout`` annotation) into the next state: hold, next step, promoted, rolled back, aborted. Each
transition carries its Event.

Phases (``status.rollout.phase``): ``Initialized`` (no stable version known yet, or the spec went back to the
stable one: every pod runs the spec's version at once), ``Progressing`` (a step's pods run the new version),
``Promoted`` (every pod runs it; it is the new stable), ``RolledBack`` (out of bounds: every pod runs the stable
version again, until the spec changes or ``promote``), ``Aborted`` (the same, by the annotation's ``abort``).

A version is the module digest plus every spec field but ``rollout`` (`version_key`): a changed ``pluginConfig``
is rolled out like a new module. A step's pods: those matching its selector and its percent of the selected pods
(rounded up, at least one, and while other pods exist at most all but one, so there is a stable side to compare
with), taken in an order fixed per plugin and pod name so that later steps add pods and never swap them, plus
every earlier step's pods.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from meshplug import limits, spec

INITIALIZED: Final = "Initialized"
PROGRESSING: Final = "Progressing"
PROMOTED: Final = "Promoted"
ROLLED_BACK: Final = "RolledBack"
ABORTED: Final = "Aborted"

#: the status condition that says where the rollout stands: True when every pod runs the spec's version
#: (reason Initialized or Promoted), else False with the phase as its reason (or AgentPlaneOnly on the istio plane)
CONDITION: Final = "RolledOut"

#: the annotation that acts on a rollout in progress: ``promote`` or ``abort``, optionally ``:<anything>``
ACTION_ANNOTATION: Final = "meshplug.io/rollout"
PROMOTE: Final = "promote"
ABORT: Final = "abort"

#: verdicts of `judge`
PASSED: Final = "Passed"
FAILED: Final = "Failed"
HOLDING: Final = "Holding"

Event = tuple[bool, str, str]  # (warning, reason, message)


def version_key(digest: str, raw_spec: Mapping[str, Any]) -> str:
    """What identifies a delivered version: the module digest and every spec field but ``rollout``."""
    fields = {k: v for k, v in raw_spec.items() if k != "rollout"}
    text = digest + "\n" + spec.canonical_json(fields)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stable_spec(raw_spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The spec kept in the status as the stable version's (without ``rollout``); None when too large to keep."""
    fields = {k: v for k, v in raw_spec.items() if k != "rollout"}
    if len(spec.canonical_json(fields).encode()) > limits.ROLLOUT_MAX_STABLE_SPEC_BYTES:
        return None
    copied: dict[str, Any] = json.loads(json.dumps(fields))
    return copied


@dataclass(frozen=True)
class Version:
    digest: str  # sha256:<hex> of the module
    key: str  # version_key


@dataclass(frozen=True)
class State:
    """``status.rollout``: everything a rollout needs to go on after an operator restart."""

    phase: str
    stable: Version | None = None
    stable_spec: Mapping[str, Any] | None = None
    canary: Version | None = None
    step: int = 0  # 1-based step in progress; 0 when none is
    steps: int = 0
    step_started: str = ""  # RFC 3339; "" while the step's pods are still being pushed
    canary_pods: tuple[str, ...] = ()
    ignored_action: str = ""
    message: str = ""
    analysis: Mapping[str, Any] | None = None
    history: tuple[Mapping[str, Any], ...] = ()
    window: Window | None = None  # the step's window of stats: each pod's counters when it started

    @property
    def active(self) -> bool:
        """Whether the canary pods run another version than the rest."""
        return self.phase == PROGRESSING

    @property
    def holds_stable(self) -> bool:
        """Whether every pod runs the stable version rather than the spec's (rolled back or aborted)."""
        return self.phase in (ROLLED_BACK, ABORTED)


def _version(raw: Any) -> Version | None:
    if not isinstance(raw, Mapping) or not raw.get("digest") or not raw.get("version"):
        return None
    return Version(str(raw["digest"]), str(raw["version"]))


def from_status(status: Mapping[str, Any] | None) -> State | None:
    """The rollout as ``status.rollout`` records it (None: never recorded, or unreadable)."""
    raw = (status or {}).get("rollout")
    if not isinstance(raw, Mapping) or not isinstance(raw.get("phase"), str):
        return None
    stable: Mapping[str, Any] = raw["stable"] if isinstance(raw.get("stable"), Mapping) else {}
    kept = stable["spec"] if isinstance(stable.get("spec"), Mapping) else None
    pods: list[Any] = raw["canaryPods"] if isinstance(raw.get("canaryPods"), list) else []
    history: list[Any] = raw["history"] if isinstance(raw.get("history"), list) else []
    analysis = raw.get("analysis")
    return State(
        phase=raw["phase"],
        stable=_version(stable),
        stable_spec=kept,
        canary=_version(raw.get("canary")),
        step=int(raw.get("step") or 0),
        steps=int(raw.get("steps") or 0),
        step_started=str(raw.get("stepStarted") or ""),
        canary_pods=tuple(str(p) for p in pods),
        ignored_action=str(raw.get("ignoredAction") or ""),
        message=str(raw.get("message") or ""),
        analysis=analysis if isinstance(analysis, Mapping) else None,
        history=tuple(h for h in history if isinstance(h, Mapping)),
        window=window_from_status(raw.get("window")),
    )


def to_status(state: State) -> dict[str, Any]:
    """`State` -> ``status.rollout`` (every key always present, so a merge patch replaces the old values)."""
    stable: dict[str, Any] = {}
    if state.stable is not None:
        stable = {"digest": state.stable.digest, "version": state.stable.key}
        if state.stable_spec is not None:
            stable["spec"] = dict(state.stable_spec)
    canary = {"digest": state.canary.digest, "version": state.canary.key} if state.canary is not None else None
    return {
        "phase": state.phase,
        "message": state.message,
        "step": state.step,
        "steps": state.steps,
        "stepStarted": state.step_started or None,
        "canaryPods": list(state.canary_pods)[: limits.MAX_ROLLOUT_PODS_REPORTED],
        "stable": stable or None,
        "canary": canary,
        "ignoredAction": state.ignored_action or None,
        "analysis": dict(state.analysis) if state.analysis is not None else None,
        "history": [dict(h) for h in state.history][-limits.ROLLOUT_MAX_HISTORY :],
        "window": window_to_status(state.window, state.canary_pods) if state.window is not None else None,
    }


def action_of(annotations: Mapping[str, str] | None) -> str:
    """The annotation's raw value ("" when unset)."""
    return str((annotations or {}).get(ACTION_ANNOTATION) or "")


def _verb(action: str) -> str:
    verb = action.split(":", 1)[0].strip().lower()
    return verb if verb in (PROMOTE, ABORT) else ""


def _order(plugin: str, pod: str) -> str:
    return hashlib.sha256(f"{plugin}/{pod}".encode()).hexdigest()


def step_pods(
    rollout: spec.Rollout,
    step: int,
    plugin: str,
    pods: Sequence[tuple[str, Mapping[str, str]]],
    earlier: Sequence[str] = (),
) -> tuple[str, ...]:
    """The pods that run the new version at ``step`` (1-based): the earlier steps' pods still selected, plus each
    step's selector matches and percent of ``pods`` (name, labels), sorted by name."""
    names = {name for name, _ in pods}
    chosen = {p for p in earlier if p in names}
    ordered = sorted(names, key=lambda name: _order(plugin, name))
    for s in rollout.steps[:step]:
        if s.selector:
            chosen |= {name for name, labels in pods if all(labels.get(k) == v for k, v in s.selector)}
        if s.percent is not None and ordered:
            count = max(1, math.ceil(len(ordered) * s.percent / 100))
            chosen |= set(ordered[:count])
    if len(names) > 1 and chosen >= names:  # keep a stable side to compare with: the last pod in order
        kept = set(earlier)
        for name in reversed(ordered):
            if name not in kept:
                chosen.discard(name)
                break
    return tuple(sorted(chosen))


def now_rfc3339(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float | None:
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def _history(state: State, result: str, message: str, now: float) -> tuple[Mapping[str, Any], ...]:
    entry: dict[str, Any] = {"step": state.step, "pods": len(state.canary_pods), "result": result}
    entry["canaryPods"] = list(state.canary_pods[: limits.MAX_FAILING_PODS_REPORTED])
    entry["message"], entry["at"] = message[:512], now_rfc3339(now)
    return (*state.history, entry)[-limits.ROLLOUT_MAX_HISTORY :]


@dataclass(frozen=True)
class Plan:
    """What to deliver now: the state to record, the pods that run the spec's version (None: every pod; an empty
    tuple: none, every pod keeps the stable version), and the Events of the transition."""

    state: State
    canary_pods: tuple[str, ...] | None
    events: tuple[Event, ...] = ()


@dataclass(frozen=True)
class Context:
    """One look at a rollout: the plugin's rollout settings and name, the spec's version and raw spec, the selected
    pods (name, labels), the ``meshplug.io/rollout`` annotation's value, and the time."""

    rollout: spec.Rollout
    plugin: str
    current: Version
    current_spec: Mapping[str, Any]
    pods: tuple[tuple[str, Mapping[str, str]], ...]
    action: str
    now: float


def plan(ctx: Context, prior: State | None) -> Plan:
    """Where the rollout of ``ctx.current`` (the spec's version) stands before any stats are read."""
    steps, current = len(ctx.rollout.steps), ctx.current
    if prior is None or prior.stable is None or prior.stable_spec is None or prior.stable == current:
        return _settled(prior, current, ctx.current_spec, steps)
    if prior.canary != current:  # a new version: its first step
        pods_now = step_pods(ctx.rollout, 1, ctx.plugin, ctx.pods)
        state = State(
            phase=PROGRESSING,
            stable=prior.stable,
            stable_spec=prior.stable_spec,
            canary=current,
            step=1,
            steps=steps,
            canary_pods=pods_now,
            ignored_action=ctx.action,
            message=f"step 1/{steps}: {len(pods_now)} of {len(ctx.pods)} pods get {current.digest}",
            history=prior.history,
        )
        event = (False, "RolloutStarted", f"{current.digest}: step 1/{steps} on {_names(pods_now)}")
        return Plan(state, pods_now, (event,))
    verb = _verb(ctx.action) if ctx.action != prior.ignored_action else ""
    if verb == PROMOTE and (prior.holds_stable or prior.active):
        return _promote(prior, current, ctx.current_spec, ctx.now, "promoted by the meshplug.io/rollout annotation")
    if prior.holds_stable or not prior.active:
        return Plan(replace(prior, steps=steps), () if prior.holds_stable else None)
    if verb == ABORT:
        return _roll_back(prior, ABORTED, "aborted by the meshplug.io/rollout annotation", ctx.now)
    pods_now = step_pods(ctx.rollout, prior.step, ctx.plugin, ctx.pods, prior.canary_pods)
    return Plan(replace(prior, steps=steps, canary_pods=pods_now), pods_now)


def _settled(prior: State | None, current: Version, current_spec: Mapping[str, Any], steps: int) -> Plan:
    """No rollout to run: every pod runs the spec's version (the first one, or the stable one again)."""
    if prior is not None and prior.stable == current and prior.phase == PROMOTED:
        return Plan(replace(prior, steps=steps), None)
    kept = stable_spec(current_spec)
    if kept is None:
        message = f"the spec is larger than {limits.ROLLOUT_MAX_STABLE_SPEC_BYTES} bytes: updates go to every pod"
    elif prior is None or prior.stable is None:
        message = "every pod runs this version (no earlier version to compare with)"
    else:
        message = "every pod runs the stable version"
    state = State(
        phase=INITIALIZED,
        stable=current if kept is not None else None,
        stable_spec=kept,
        steps=steps,
        message=message,
        history=prior.history if prior is not None else (),
    )
    events: tuple[Event, ...] = ()
    if prior is not None and prior.active and prior.stable == current:
        events = ((False, "RolloutCancelled", f"the spec is back at the stable version {current.digest}"),)
    return Plan(state, None, events)


def _names(pods: Sequence[str]) -> str:
    shown = ", ".join(pods[:5])
    return f"{shown} (+{len(pods) - 5})" if len(pods) > 5 else shown or "no pods"


def _promote(prior: State, current: Version, current_spec: Mapping[str, Any], now: float, why: str) -> Plan:
    kept = stable_spec(current_spec)
    message = f"{why}: every pod runs {current.digest}"
    state = State(
        phase=PROMOTED,
        stable=current if kept is not None else prior.stable,
        stable_spec=kept if kept is not None else prior.stable_spec,
        canary=current,
        steps=prior.steps,
        ignored_action=prior.ignored_action,
        message=message,
        analysis=prior.analysis,
        history=_history(prior, PROMOTED, why, now),
    )
    return Plan(state, None, ((False, "RolloutPromoted", message),))


def _roll_back(prior: State, phase: str, why: str, now: float) -> Plan:
    assert prior.stable is not None and prior.canary is not None
    message = f"{why}: every pod runs the stable version {prior.stable.digest} again"
    state = replace(
        prior,
        phase=phase,
        step=0,
        step_started="",
        canary_pods=(),
        message=message,
        history=_history(prior, phase, why, now),
        window=None,
    )
    reason = "RolloutRolledBack" if phase == ROLLED_BACK else "RolloutAborted"
    return Plan(state, (), ((True, reason, f"{prior.canary.digest}: {message}"),))


# --- the comparison -------------------------------------------------------------------------------------------


#: the request time buckets' upper bounds (ms) of this version's agents: a sample read from a status (which keeps
#: no bounds) has these; one read from an agent has the bounds that agent reported (`protocol.Health.bounds_ms`)
BOUNDS_MS: Final = tuple(float(b) for b in limits.PLUGIN_RQ_TIME_BUCKETS_MS)


@dataclass(frozen=True)
class Sample:
    """One side's per-plugin stats over the step's window, summed over its pods: requests through the plugin, its
    failures (traps, budget, memory cap: `meshplug.agent.chain`) and its own 5xx local replies, and the request
    time histogram (counts per bucket of ``bounds``, the upper bounds in ms its agents reported, then the
    overflow)."""

    pods: int = 0
    requests: int = 0
    failures: int = 0
    latency: tuple[int, ...] = ()
    bounds: tuple[float, ...] = BOUNDS_MS

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def quantile_ms(self, percent: float) -> float | None:
        """The quantile of the request time as Prometheus' histogram_quantile computes it from these buckets: the
        bucket holding the rank, linearly interpolated between its lower bound (0 for the first) and its upper
        bound; in the overflow bucket, the highest bound (all that is known). Envoy's own quantiles interpolate
        the same way, within the much narrower bins of its log-linear histograms; with the agent's buckets
        (`limits.PLUGIN_RQ_TIME_BUCKETS_MS`: (1250, 1600] ms) 1.5 s requests read ~1565 ms at p90 (with
        Envoy's default buckets, (1000, 2500], 2350 ms), as Prometheus would read them. None without samples
        or bounds."""
        total = sum(self.latency)
        if total == 0 or not self.bounds:
            return None
        bounds = self.bounds
        rank = percent / 100.0 * total
        seen = 0
        for i, count in enumerate(self.latency):
            if count and seen + count >= rank:
                if i >= len(bounds):  # the overflow bucket: its lower bound is all that is known
                    return bounds[-1]
                lower = bounds[i - 1] if i else 0.0
                return lower + (bounds[i] - lower) * max(0.0, rank - seen) / count
            seen += count
        return bounds[-1]

    def as_status(self) -> dict[str, Any]:
        return {
            "pods": self.pods,
            "requests": self.requests,
            "failures": self.failures,
            "failureRatio": round(self.failure_ratio, 6),
        }


def rebinned(latency: Sequence[int], bounds: Sequence[float], onto: Sequence[float]) -> tuple[int, ...]:
    """``latency`` (counts per bucket of ``bounds``, then the overflow) as counts per bucket of ``onto``, a subset
    of ``bounds``: each bucket falls wholly in the ``onto`` bucket of the first bound at or above its own upper
    bound (no ``onto`` bound lies inside it), the overflow and everything above ``onto``'s last bound in the
    overflow -- exact, integer counts, only coarser."""
    out = [0] * (len(onto) + 1)
    j = 0
    for i, count in enumerate(latency):
        upper = bounds[i] if i < len(bounds) else math.inf
        while j < len(onto) and onto[j] < upper:
            j += 1
        out[j] += count
    return tuple(out)


def add(a: Sample, b: Sample) -> Sample:
    """Both sides' stats summed; histograms of different buckets (agents of different versions) on the buckets
    they share (`rebinned`)."""
    if not a.latency or not b.latency or a.bounds == b.bounds:
        bounds = b.bounds if not a.latency else a.bounds
        width = max(len(a.latency), len(b.latency))
        la, lb = (*a.latency, *([0] * (width - len(a.latency)))), (*b.latency, *([0] * (width - len(b.latency))))
    else:
        bounds = tuple(sorted(set(a.bounds) & set(b.bounds)))
        la, lb = rebinned(a.latency, a.bounds, bounds), rebinned(b.latency, b.bounds, bounds)
    return Sample(
        a.pods + b.pods,
        a.requests + b.requests,
        a.failures + b.failures,
        tuple(x + y for x, y in zip(la, lb, strict=True)),
        bounds,
    )


def since(now: Sample, then: Sample | None) -> Sample:
    """``now`` minus a baseline of the same counters (None, counters that went back, or other buckets: the
    counters restarted)."""
    if then is None or now.requests < then.requests or now.failures < then.failures or now.bounds != then.bounds:
        return now
    if len(then.latency) != len(now.latency) or any(b > a for a, b in zip(now.latency, then.latency, strict=True)):
        return now
    latency = tuple(a - b for a, b in zip(now.latency, then.latency, strict=True))
    return Sample(now.pods, now.requests - then.requests, now.failures - then.failures, latency, now.bounds)


@dataclass(frozen=True)
class Baseline:
    """One pod's counters of the plugin when the step's window started (or when the pod first answered in it),
    with its agent's set version: the agent's counters start again with each set it applies."""

    set_version: str
    sample: Sample


@dataclass(frozen=True)
class Window:
    """The step's window of stats (``status.rollout.window``: an operator restart goes on with the same window):
    the version and step it measures, and each pod's baseline."""

    version: str  # the canary's version key
    step: int
    pods: Mapping[str, Baseline]

    def measures(self, state: State) -> bool:
        return state.canary is not None and (self.version, self.step) == (state.canary.key, state.step)


def window_to_status(window: Window, canary_pods: Sequence[str]) -> dict[str, Any]:
    """`Window` -> ``status.rollout.window``: the bucket bounds its histograms are on, then the canary pods'
    baselines first, at most `limits.ROLLOUT_MAX_WINDOW_PODS` (a pod left out counts from what it says at the next
    operator's first look), each latency histogram from its first non-empty bucket (``skip`` empty ones before it)
    to its last. A histogram on other buckets than this operator's (an agent of another version) is left out as
    well: a wider one would have the CRD refuse the whole status."""
    width = len(BOUNDS_MS) + 1
    kept = {n for n, b in window.pods.items() if b.sample.bounds == BOUNDS_MS and len(b.sample.latency) <= width}
    first = [p for p in canary_pods if p in kept]
    order = first + sorted(kept - set(first))
    pods = []
    for name in order[: limits.ROLLOUT_MAX_WINDOW_PODS]:
        base = window.pods[name]
        latency = list(base.sample.latency)
        while latency and latency[-1] == 0:
            latency.pop()
        skip = next((i for i, c in enumerate(latency) if c), 0)
        sample: dict[str, Any] = {"requests": base.sample.requests, "failures": base.sample.failures}
        if skip:
            sample["skip"] = skip
        pods.append({"name": name, "set": base.set_version, **sample, "latency": latency[skip:]})
    return {"version": window.version, "step": window.step, "boundsMs": list(BOUNDS_MS), "pods": pods}


def _counts(raw: Any, skip: Any) -> tuple[int, ...] | None:
    if not isinstance(raw, list) or not all(type(c) is int and c >= 0 for c in raw):
        return None
    if type(skip) is not int or skip < 0:
        return None
    width = len(BOUNDS_MS) + 1
    if skip + len(raw) > width:
        return None
    return (*([0] * skip), *raw, *([0] * (width - skip - len(raw))))


def window_from_status(raw: Any) -> Window | None:
    """``status.rollout.window`` -> `Window` (None: unset or unreadable; a pod entry that is not readable is left
    out, so that pod counts from what it says next, as every pod does when the window's histograms are on other
    bucket bounds than this operator's: an operator of another version wrote it)."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("version"), str) or type(raw.get("step")) is not int:
        return None
    pods: dict[str, Baseline] = {}
    bounds = raw.get("boundsMs")
    same = isinstance(bounds, list) and [float(b) for b in bounds if isinstance(b, int | float)] == list(BOUNDS_MS)
    for p in raw["pods"] if isinstance(raw.get("pods"), list) and same else []:
        if not isinstance(p, Mapping) or not isinstance(p.get("name"), str) or not isinstance(p.get("set"), str):
            continue
        requests, failures = p.get("requests"), p.get("failures")
        latency = _counts(p.get("latency"), p.get("skip", 0))
        if type(requests) is int and type(failures) is int and latency is not None and min(requests, failures) >= 0:
            pods[p["name"]] = Baseline(p["set"], Sample(1, requests, failures, latency))
    return Window(raw["version"], raw["step"], pods)


@dataclass(frozen=True)
class Verdict:
    result: str  # PASSED | FAILED | HOLDING
    message: str


def judge(rollout: spec.Rollout, canary: Sample, stable: Sample, held_s: float) -> Verdict:
    """The step's verdict over its window: FAILED as soon as the new version has ``minRequests`` and is out of bounds;
    PASSED once it also held ``holdSeconds``; HOLDING otherwise (too little traffic, or not held long enough)."""
    need = rollout.min_requests
    if canary.requests < max(need, 1):
        return Verdict(
            HOLDING, f"waiting for traffic: {canary.requests}/{max(need, 1)} requests through the new version"
        )
    c_ratio, s_ratio = canary.failure_ratio, stable.failure_ratio
    limit = s_ratio + rollout.max_failure_ratio_increase
    if c_ratio > limit:
        return Verdict(
            FAILED,
            f"failure ratio {c_ratio:.4f} ({canary.failures}/{canary.requests}) > stable {s_ratio:.4f}"
            f" ({stable.failures}/{stable.requests}) + {rollout.max_failure_ratio_increase:g}",
        )
    latency = ""
    c_q = canary.quantile_ms(rollout.latency_percentile)
    s_q = stable.quantile_ms(rollout.latency_percentile)
    p = f"p{rollout.latency_percentile:g}"
    # a quantile from fewer samples than it takes to exceed one (p99: 100) is the slowest request, not a p99
    samples = max(need, 1, math.ceil(100.0 / max(100.0 - rollout.latency_percentile, 1e-9) - 1e-9))
    if c_q is not None and s_q is not None and min(canary.requests, stable.requests) >= samples:
        bound = max(s_q * rollout.max_latency_ratio, s_q + rollout.latency_slack_ms)
        if c_q > bound:
            return Verdict(FAILED, f"{p} request time {c_q:.1f} ms > {bound:.1f} ms (stable {s_q:.1f} ms)")
        latency = f"; {p} {c_q:.1f} ms vs stable {s_q:.1f} ms"
    else:
        latency = f"; {p} not compared ({min(canary.requests, stable.requests)}/{samples} requests on a side)"
    within = f"failure ratio {c_ratio:.4f} vs stable {s_ratio:.4f}{latency}"
    if held_s < rollout.hold_s:
        return Verdict(HOLDING, f"within bounds for {held_s:.0f}/{rollout.hold_s} s: {within}")
    return Verdict(PASSED, f"held {rollout.hold_s} s within bounds: {within}")


def analysis(
    verdict: Verdict, canary: Sample, stable: Sample, rollout: spec.Rollout, window_s: float
) -> dict[str, Any]:
    """``status.rollout.analysis``."""
    c, s = canary.as_status(), stable.as_status()
    for side, sample in ((c, canary), (s, stable)):
        q = sample.quantile_ms(rollout.latency_percentile)
        side["latencyMs"] = round(q, 3) if q is not None else None
    return {"canary": c, "stable": s, "verdict": verdict.result, "message": verdict.message[:1024],
            "windowSeconds": round(window_s, 1)}  # fmt: skip


def advance(ctx: Context, state: State, canary: Sample, stable: Sample) -> Plan:
    """A progressing step after its stats were read (its pods all confirmed the new version): hold, the next
    step, promoted after the last, or rolled back."""
    canary_version = state.canary
    assert state.active and canary_version is not None
    rollout, now, pods = ctx.rollout, ctx.now, ctx.pods
    if not state.canary_pods:  # a step by selector that matches no selected pod (yet): nothing to judge
        message = f"step {state.step}/{state.steps}: no selected pod matches this step's selector yet"
        return Plan(replace(state, step_started="", message=message), state.canary_pods)
    started = parse_time(state.step_started)
    if started is None:  # the step's pods just confirmed: its window starts now
        state = replace(state, step_started=now_rfc3339(now))
        started = now
    held = max(0.0, now - started)
    verdict = judge(rollout, canary, stable, held)
    state = replace(state, analysis=analysis(verdict, canary, stable, rollout, held))
    if verdict.result == FAILED:
        return _roll_back(state, ROLLED_BACK, verdict.message, now)
    if verdict.result == HOLDING:
        message = f"step {state.step}/{state.steps} on {len(state.canary_pods)} of {len(pods)} pods: {verdict.message}"
        return Plan(replace(state, message=message), state.canary_pods)
    passed = f"step {state.step}/{state.steps} passed: {verdict.message}"
    if state.step >= len(rollout.steps):
        return _promote(state, canary_version, ctx.current_spec, now, passed)
    history = _history(state, PASSED, passed, now)
    step = state.step + 1
    pods_now = step_pods(rollout, step, ctx.plugin, pods, state.canary_pods)
    message = f"step {step}/{state.steps}: {len(pods_now)} of {len(pods)} pods get {canary_version.digest}"
    new = replace(
        state, step=step, step_started="", canary_pods=pods_now, message=message, history=history, window=None
    )
    return Plan(new, pods_now, ((False, "RolloutStep", f"{passed}; step {step} on {_names(pods_now)}"),))
