"""meshplug.controller.delivery.canary: the step windows' stats from the agents' answers, and the stable version."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from meshplug import errors, limits, protocol
from meshplug.controller import rollout
from meshplug.controller.delivery import canary
from meshplug.render import model

NAME = "shop.hdr"
OLD, NEW = "a" * 64, "b" * 64
WIDTH = len(limits.PLUGIN_RQ_TIME_BUCKETS_MS) + 1
STATE = rollout.State(
    phase=rollout.PROGRESSING,
    stable=rollout.Version(f"sha256:{OLD}", "k-old"),
    stable_spec={"url": "file:///m/old.wasm"},
    canary=rollout.Version(f"sha256:{NEW}", "k-new"),
    step=1,
    steps=2,
    canary_pods=("p1",),
)
EXPECTED = {"p1": NEW, "p2": OLD, "p3": OLD}


def health(version: str, sha: str, requests: int, failures: int = 0, local_5xx: int = 0) -> protocol.Health:
    latency = (requests, *([0] * (WIDTH - 1)))
    bounds = tuple(float(b) for b in limits.PLUGIN_RQ_TIME_BUCKETS_MS)
    return protocol.Health(version, bounds, (protocol.PluginHealth(NAME, sha, requests, failures, local_5xx, latency),))


def side(pods: int, requests: int, failures: int = 0) -> rollout.Sample:
    return rollout.Sample(pods, requests, failures, (requests, *([0] * (WIDTH - 1))))


def test_the_first_look_starts_the_window_and_later_looks_count_from_it() -> None:
    first = {"p1": health("v9", NEW, 5), "p2": health("v8", OLD, 100), "p3": health("v8", OLD, 90)}
    state, c, s, unread = canary.measure(replace(STATE, step_started="2027-01-01T00:00:00Z"), NAME, EXPECTED, first)
    assert state.step_started == "" and (c, s, unread) == (rollout.Sample(), rollout.Sample(), [])
    assert state.window is not None and state.window.measures(STATE) and set(state.window.pods) == {"p1", "p2", "p3"}
    started = replace(state, step_started="2027-01-01T00:00:00Z")
    later = {
        "p1": health("v9", NEW, 25, local_5xx=4),
        "p2": health("v8", OLD, 130, failures=1),
        "p3": health("v10", OLD, 12),  # its set changed since (another plugin): all of its counters are new
    }
    state, c, s, unread = canary.measure(started, NAME, EXPECTED, later)
    assert state == started and unread == []
    assert c == side(1, 20, 4) and s == side(2, 30 + 12, 1)


def test_the_window_goes_on_from_the_status_after_an_operator_restart() -> None:
    first = {"p1": health("v9", NEW, 5), "p2": health("v8", OLD, 100)}
    state = canary.measure(STATE, NAME, EXPECTED, first)[0]
    state = replace(state, step_started="2027-01-01T00:00:00Z")
    kept = rollout.from_status({"rollout": json.loads(json.dumps(rollout.to_status(state)))})
    assert kept == state
    later = {"p1": health("v9", NEW, 25), "p2": health("v8", OLD, 160), "p3": health("v8", OLD, 7)}
    again, c, s, _ = canary.measure(kept, NAME, EXPECTED, later)
    # the same window and start; p3 answered for the first time in it: it counts from now
    assert again.step_started == state.step_started and c == side(1, 20) and s == side(2, 60)
    assert again.window is not None and again.window.pods["p3"].sample.requests == 7


def test_the_status_keeps_the_canary_pods_baselines_first_and_at_most_the_limit() -> None:
    many = {f"s{i:04}": health("v8", OLD, i) for i in range(limits.ROLLOUT_MAX_WINDOW_PODS + 5)}
    state = canary.measure(replace(STATE, canary_pods=("p1",)), NAME, {**EXPECTED, **dict.fromkeys(many, OLD)},
                           {**many, "p1": health("v9", NEW, 3)})[0]  # fmt: skip
    assert state.window is not None
    written = rollout.to_status(state)["window"]
    names = [p["name"] for p in written["pods"]]
    assert len(names) == limits.ROLLOUT_MAX_WINDOW_PODS and names[0] == "p1"
    assert written["pods"][0]["latency"] == [3]  # without its trailing empty buckets
    assert written["boundsMs"] == list(rollout.BOUNDS_MS)
    kept = rollout.window_from_status(written)
    assert kept is not None and kept.pods["p1"] == state.window.pods["p1"]
    # an agent with more latency buckets than the CRD allows: left out rather than the whole status refused
    wide = rollout.Baseline("v9", rollout.Sample(1, 3, 0, (3,) * (WIDTH + 1)))
    window = replace(state.window, pods={"p1": wide, "s0000": state.window.pods["s0000"]})
    assert [p["name"] for p in rollout.window_to_status(window, ("p1",))["pods"]] == ["s0000"]
    # one on buckets of other bounds (as wide): left out too -- the status keeps no bounds, they would be misread
    other = rollout.Baseline("v9", rollout.Sample(1, 3, 0, (3,) * WIDTH, tuple(b * 2 for b in rollout.BOUNDS_MS)))
    window = replace(state.window, pods={"p1": other, "s0000": state.window.pods["s0000"]})
    assert [p["name"] for p in rollout.window_to_status(window, ("p1",))["pods"]] == ["s0000"]


def entry(bounds: Any = rollout.BOUNDS_MS, **over: Any) -> dict[str, Any]:
    pod = {"name": "p1", "set": "v9", "requests": 1, "failures": 0} | over
    return {"version": "k-new", "step": 1, "boundsMs": list(bounds), "pods": [pod]}


@pytest.mark.parametrize(
    ("raw", "pods"),
    [
        (None, None),
        ({"version": "k-new"}, None),
        ({"version": "k-new", "step": 1, "pods": "p1"}, set()),
        (entry(), set()),  # no latency
        (entry(requests=-1, latency=[]), set()),
        (entry(latency=[1] * (WIDTH + 1)), set()),
        (entry(latency=[1]), {"p1"}),
        (entry(latency=[1], skip=WIDTH - 1), {"p1"}),  # the overflow alone
        (entry(latency=[1], skip=WIDTH), set()),  # past the overflow
        (entry(latency=[1], skip=-1), set()),
        (entry(latency=[-1]), set()),
        # written on other buckets (an operator of another version): every pod counts from its next answer
        (
            entry(
                bounds=[0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000], latency=[1]
            ),
            set(),
        ),
        ({**entry(latency=[1]), "boundsMs": None}, set()),  # a window from before the bounds were kept
    ],
)
def test_an_unreadable_window_or_pod_in_the_status_is_left_out(raw: Any, pods: set[str] | None) -> None:
    got = rollout.window_from_status(raw)
    assert (None if got is None else set(got.pods)) == pods


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        ({"p1": "127.0.0.9:15010: connection refused"}, "p1: 127.0.0.9:15010: connection refused"),
        ({"p1": health("v9", OLD, 5)}, f"p1: its agent does not report {NAME} running {NEW[:12]}"),
        ({"p1": protocol.Health("v9", (), ())}, "does not report"),
    ],
)
def test_pods_whose_stats_cannot_be_read_are_named(answers: dict[str, Any], says: str) -> None:
    _, _, _, unread = canary.measure(STATE, NAME, EXPECTED, answers)
    assert len(unread) == 1 and says in unread[0]


def test_another_step_or_version_starts_a_new_window() -> None:
    answers = {"p1": health("v9", NEW, 5)}
    started = replace(canary.measure(STATE, NAME, EXPECTED, answers)[0], step_started="2027-01-01T00:00:00Z")
    assert canary.measure(started, NAME, EXPECTED, answers)[0].step_started  # same window
    assert canary.measure(replace(started, step=2), NAME, EXPECTED, answers)[0].step_started == ""
    other = replace(started, canary=rollout.Version(f"sha256:{NEW}", "k-newer"))
    assert canary.measure(other, NAME, EXPECTED, answers)[0].step_started == ""


def body(spec_fields: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "WasmPlugin", "metadata": {"name": "hdr", "namespace": "shop"}, "spec": spec_fields}


@pytest.mark.parametrize(
    ("module_sha", "kept", "error"),
    [
        (OLD, {"url": "file:///m/old.wasm", "dataPlane": "agent"}, None),
        (NEW, {"url": "file:///m/old.wasm", "dataPlane": "agent"}, f"now gives sha256:{NEW}, not sha256:{OLD}"),
        (OLD, {"dataPlane": "agent"}, "spec.url is required"),
    ],
)
def test_the_stable_version_is_parsed_and_fetched_again(
    module_sha: str, kept: dict[str, Any], error: str | None
) -> None:
    state = replace(STATE, stable_spec=kept)
    loaded: list[str] = []

    def load(plugin: Any, pinned: str) -> model.Module:
        assert pinned == OLD  # the stable version is asked for by its digest
        loaded.append(plugin.url)
        return model.Module(sha256=module_sha, data=b"\0asm")

    if error is None:
        got = canary.stable_of(body({"url": "file:///m/new.wasm"}), state, load)
        assert got is not None and got[0].url == "file:///m/old.wasm" and got[1].sha256 == OLD
        assert loaded == ["file:///m/old.wasm"]
        return
    with pytest.raises(errors.ApplyError) as caught:
        canary.stable_of(body({"url": "file:///m/new.wasm"}), state, load)
    assert caught.value.reason == "StableUnavailable" and error in caught.value.message
    assert canary.stable_of(body({}), replace(state, stable_spec=None), load) is None


def test_a_pods_histogram_is_read_on_the_buckets_its_agent_reports() -> None:
    """An agent reporting other bounds_ms than this operator's list: its counts are read on its own bounds (a p90
    of 1.5 s requests in its (1400, 1600] bucket reads 1580 ms, not somewhere in this version's (1000, 2500])."""
    bounds = (1.0, 1000.0, 1400.0, 1600.0, 2500.0)
    answer = protocol.Health("v9", bounds, (protocol.PluginHealth(NAME, NEW, 10, 0, 0, (0, 0, 0, 10, 0, 0)),))
    got = canary.sample_of(answer, NAME, NEW)
    assert got == rollout.Sample(1, 10, 0, (0, 0, 0, 10, 0, 0), bounds)
    assert got.quantile_ms(90) == pytest.approx(1580.0)
