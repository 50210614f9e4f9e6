"""The agent path's side of canary rollouts: the stable version to deliver beside the new one, and the step's stats.

Called by `meshplug.controller.delivery.agent` for agent-plane plugins with ``spec.rollout``; the decisions are
`meshplug.controller.rollout`'s (pure), the pushes the agent path's. Here: the `rollout.Context` of one look at a
rollout (the spec's version: module digest + spec), the stable version as the status keeps it, parsed and fetched
again (`stable_of`: the module server and the agents need its module), and the step's window of per-plugin stats
(`measure`): each selected pod's agent answers its stats since its set was applied
(`meshplug.controller.agents.read_health`); the window's baseline is what they said when the window started
(`rollout.Window`, part of the rollout's state and so of ``status.rollout``): after an operator restart the step
goes on with the same window and the same start.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from meshplug import errors, protocol, spec
from meshplug.controller import rollout
from meshplug.render import model

#: fetch and validate a plugin's module of a known sha256 (hex), e.g. from the operator's module cache
PinnedLoader = Callable[[spec.PluginSpec, str], model.Module]


def context(
    body: Mapping[str, Any], plugin: spec.PluginSpec, module: model.Module, pods: Sequence[Mapping[str, Any]]
) -> rollout.Context:
    """One look at the plugin's rollout: its settings, the spec's version, the selected pods, the annotation."""
    assert plugin.rollout is not None
    digest = f"sha256:{module.sha256}"
    raw = body.get("spec") or {}
    meta = body.get("metadata") or {}
    return rollout.Context(
        rollout=plugin.rollout,
        plugin=plugin.envoy_name,
        current=rollout.Version(digest, rollout.version_key(digest, raw)),
        current_spec=raw,
        pods=tuple(
            (str(p["metadata"]["name"]), dict(p["metadata"].get("labels") or {}))
            for p in sorted(pods, key=lambda p: str(p["metadata"]["name"]))
        ),
        action=rollout.action_of(meta.get("annotations")),
        now=time.time(),
    )


def stable_of(
    body: Mapping[str, Any], state: rollout.State, load: PinnedLoader
) -> tuple[spec.PluginSpec, model.Module] | None:
    """The stable version as the status keeps it, parsed and fetched (None: no stable version is kept). Raises
    ApplyError (reason StableUnavailable) when it can no longer be read or fetched: the rollout then waits."""
    if state.stable is None or state.stable_spec is None:
        return None
    kept = {"kind": body.get("kind"), "metadata": body.get("metadata") or {}, "spec": dict(state.stable_spec)}
    try:
        plugin = spec.parse(kept)
        module = load(plugin, state.stable.digest.removeprefix("sha256:"))
    except errors.MeshplugError as exc:
        raise errors.ApplyError(
            f"the stable version {state.stable.digest} cannot be delivered again: {exc.message}",
            reason="StableUnavailable",
        ) from None
    if f"sha256:{module.sha256}" != state.stable.digest:
        raise errors.ApplyError(
            f"the stable version's url now gives sha256:{module.sha256}, not {state.stable.digest}",
            reason="StableUnavailable",
        )
    return plugin, module


def sample_of(health: protocol.Health, name: str, sha256: str) -> rollout.Sample | None:
    """One pod's stats of plugin ``name`` running module ``sha256`` (None: it does not run that), its request
    time histogram on the buckets its agent reported."""
    for p in health.plugins:
        if p.name == name and p.sha256 == sha256:
            return rollout.Sample(1, p.requests, p.failures + p.local_5xx, p.latency, health.bounds_ms)
    return None


def measure(
    state: rollout.State,
    name: str,
    expected: Mapping[str, str],
    healths: Mapping[str, protocol.Health | str],
) -> tuple[rollout.State, rollout.Sample, rollout.Sample, list[str]]:
    """The canary and stable sides' stats over the step's window (``expected``: pod -> the sha256 it should run;
    ``healths``: pod -> its agent's answer or why there is none), the state with its window (started now when it
    has none for this step: then both sides are empty; or with the pods that answered for the first time in it,
    which count from what they say now), and the pods whose stats could not be read."""
    assert state.canary is not None
    now: dict[str, rollout.Baseline] = {}
    unread: list[str] = []
    for pod, health in healths.items():
        if isinstance(health, str):
            unread.append(f"{pod}: {health}")
            continue
        got = sample_of(health, name, expected.get(pod, ""))
        if got is None:
            unread.append(f"{pod}: its agent does not report {name} running {expected.get(pod, '?')[:12]}")
            continue
        now[pod] = rollout.Baseline(health.version_info, got)
    window = state.window
    if window is None or not window.measures(state) or not state.step_started:
        fresh = rollout.Window(state.canary.key, state.step, now)
        return replace(state, step_started="", window=fresh), rollout.Sample(), rollout.Sample(), unread
    if any(pod not in window.pods for pod in now):
        window = replace(window, pods={**now, **window.pods})
        state = replace(state, window=window)
    canary, stable = rollout.Sample(), rollout.Sample()
    canaries = set(state.canary_pods)
    for pod, current in now.items():
        then = window.pods[pod]
        delta = rollout.since(current.sample, then.sample if then.set_version == current.set_version else None)
        if pod in canaries:
            canary = rollout.add(canary, delta)
        else:
            stable = rollout.add(stable, delta)
    return state, canary, stable, unread
