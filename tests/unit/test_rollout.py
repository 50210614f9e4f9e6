"""meshplug.controller.rollout and spec.rollout: the canary rollout's settings, pod choice, verdicts and steps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplug import errors, limits, spec
from meshplug.controller import rollout

CRDS = Path(__file__).resolve().parents[2] / "crds"

# --- spec.rollout -------------------------------------------------------------------------------------------


def body(rollout_field: Any, *, kind: str = spec.KIND) -> dict[str, Any]:
    if kind == spec.KIND_TRAFFIC_EXTENSION:
        raw = {"wasm": {"url": "oci://r/hdr:v1"}, "dataPlane": "agent", "rollout": rollout_field}
    else:
        raw = {"url": "oci://r/hdr:v1", "dataPlane": "agent", "rollout": rollout_field}
    return {"kind": kind, "metadata": {"name": "hdr", "namespace": "shop", "generation": 1}, "spec": raw}


def test_rollout_defaults() -> None:
    got = spec.parse(body({"steps": [{"percent": 25}]})).rollout
    assert got == spec.Rollout(
        steps=(spec.RolloutStep(percent=25, selector=()),),
        hold_s=limits.ROLLOUT_DEFAULT_HOLD_S,
        min_requests=limits.ROLLOUT_DEFAULT_MIN_REQUESTS,
        max_failure_ratio_increase=limits.ROLLOUT_DEFAULT_MAX_FAILURE_RATIO_INCREASE,
        latency_percentile=limits.ROLLOUT_DEFAULT_LATENCY_PERCENTILE,
        max_latency_ratio=limits.ROLLOUT_DEFAULT_MAX_LATENCY_RATIO,
        latency_slack_ms=limits.ROLLOUT_DEFAULT_LATENCY_SLACK_MS,
    )
    assert spec.parse(body(None)).rollout is None


@pytest.mark.parametrize("kind", [spec.KIND, spec.KIND_TRAFFIC_EXTENSION])
def test_rollout_every_field(kind: str) -> None:
    raw = {
        "steps": [{"selector": {"matchLabels": {"track": "canary"}}}, {"percent": 50, "selector": {"matchLabels": {}}}],
        "holdSeconds": 30,
        "analysis": {
            "minRequests": 0,
            "maxFailureRatioIncrease": 0,
            "latencyPercentile": 90,
            "maxLatencyRatio": 2,
            "latencySlackMs": 1.5,
        },
    }
    got = spec.parse(body(raw, kind=kind)).rollout
    assert got is not None
    assert got.steps == (
        spec.RolloutStep(percent=None, selector=(("track", "canary"),)),
        spec.RolloutStep(percent=50, selector=()),
    )
    assert (got.hold_s, got.min_requests, got.max_failure_ratio_increase) == (30, 0, 0.0)
    assert (got.latency_percentile, got.max_latency_ratio, got.latency_slack_ms) == (90.0, 2.0, 1.5)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "spec.rollout.steps: required"),
        ({"steps": []}, "spec.rollout.steps must hold 1..10 steps, got 0"),
        ({"steps": [{"percent": 10}] * 11}, "spec.rollout.steps must hold 1..10 steps, got 11"),
        ({"steps": [{}]}, "spec.rollout.steps[0]: set percent or selector.matchLabels"),
        ({"steps": [{"percent": 0}]}, "spec.rollout.steps[0].percent must be an integer in 1..100"),
        ({"steps": [{"percent": 101}]}, "spec.rollout.steps[0].percent must be an integer in 1..100"),
        ({"steps": [{"percent": "10"}]}, "spec.rollout.steps[0].percent must be an integer in 1..100"),
        ({"steps": [{"weight": 10}]}, "spec.rollout.steps[0]: unknown key(s) weight"),
        ({"steps": [{"percent": 5}], "hold": "60s"}, "spec.rollout: unknown key(s) hold"),
        ({"steps": [{"percent": 5}], "holdSeconds": 0}, "spec.rollout.holdSeconds must be an integer in 1..86400"),
        (
            {"steps": [{"percent": 5}], "analysis": {"maxFailureRatioIncrease": 2}},
            "spec.rollout.analysis.maxFailureRatioIncrease must be a number in 0..1",
        ),
        (
            {"steps": [{"percent": 5}], "analysis": {"maxLatencyRatio": 0.5}},
            "spec.rollout.analysis.maxLatencyRatio must be a number >= 1",
        ),
        (
            {"steps": [{"percent": 5}], "analysis": {"latencyPercentile": 0}},
            "spec.rollout.analysis.latencyPercentile must be a positive number",
        ),
        (
            {"steps": [{"percent": 5}], "analysis": {"minRequests": -1}},
            "spec.rollout.analysis.minRequests must be an integer >= 0",
        ),
        ("25%", "spec.rollout must be a mapping"),
    ],
)
def test_rollout_refused(raw: Any, message: str) -> None:
    with pytest.raises(errors.SpecError) as caught:
        spec.parse(body(raw))
    assert message in caught.value.message


# --- which pods ------------------------------------------------------------------------------------------------


def settings(*steps: spec.RolloutStep, **over: Any) -> spec.Rollout:
    base = spec.Rollout(
        steps=steps or (spec.RolloutStep(25, ()),),
        hold_s=30,
        min_requests=20,
        max_failure_ratio_increase=0.01,
        latency_percentile=99,
        max_latency_ratio=1.5,
        latency_slack_ms=5,
    )
    return replace(base, **over)


def pods(n: int, **labels_of: dict[str, str]) -> tuple[tuple[str, dict[str, str]], ...]:
    return tuple((f"p{i}", labels_of.get(f"p{i}", {})) for i in range(n))


PCT = spec.RolloutStep
CANARY = {"track": "canary"}


@pytest.mark.parametrize(
    ("steps", "step", "selected", "count"),
    [
        ((PCT(25, ()),), 1, pods(4), 1),
        ((PCT(25, ()),), 1, pods(5), 2),  # rounded up
        ((PCT(1, ()),), 1, pods(3), 1),  # at least one
        ((PCT(100, ()),), 1, pods(4), 3),  # all but one while others exist
        ((PCT(100, ()),), 1, pods(1), 1),  # a single pod is the canary
        ((PCT(10, ()), PCT(50, ())), 2, pods(10), 5),
        ((PCT(None, (("track", "canary"),)),), 1, pods(4, p2=CANARY), 1),
        ((PCT(None, (("track", "canary"),)),), 1, pods(4), 0),  # nothing matches: no pod yet
        ((PCT(25, (("track", "canary"),)),), 1, pods(8, p7=CANARY), 3),  # percent and selector: both
    ],
)
def test_step_pods_counts(steps: tuple[spec.RolloutStep, ...], step: int, selected: Any, count: int) -> None:
    chosen = rollout.step_pods(settings(*steps), step, "shop.hdr", selected)
    assert len(chosen) == count
    assert list(chosen) == sorted(chosen)


def test_step_pods_grow_and_keep_earlier_ones() -> None:
    conf = settings(PCT(10, ()), PCT(30, ()), PCT(60, ()))
    selected = pods(20)
    first = rollout.step_pods(conf, 1, "shop.hdr", selected)
    second = rollout.step_pods(conf, 2, "shop.hdr", selected, first)
    third = rollout.step_pods(conf, 3, "shop.hdr", selected, second)
    assert set(first) < set(second) < set(third)
    assert (len(first), len(second), len(third)) == (2, 6, 12)
    # another plugin picks its canaries in another order (not always the same pods first)
    assert rollout.step_pods(conf, 3, "shop.other", selected) != third
    # a pod that joins keeps the stable version until a step takes it; earlier canaries stay while selected
    later = rollout.step_pods(conf, 1, "shop.hdr", (*selected[1:], ("p99", {})), first)
    assert set(first) - {"p0"} <= set(later)


# --- the verdict -------------------------------------------------------------------------------------------------


def hist(**ms: int) -> tuple[int, ...]:
    """A histogram with ``count`` samples in the bucket whose upper bound is the key (b1 = 1 ms, b5 = 5 ms...)."""
    counts = [0] * (len(limits.PLUGIN_RQ_TIME_BUCKETS_MS) + 1)
    for key, count in ms.items():
        bound = float(key[1:].replace("_", "."))
        counts[limits.PLUGIN_RQ_TIME_BUCKETS_MS.index(bound)] += count
    return tuple(counts)


def sample(requests: int, failures: int = 0, latency: tuple[int, ...] | None = None) -> rollout.Sample:
    return rollout.Sample(1, requests, failures, latency if latency is not None else hist(b1=requests))


@pytest.mark.parametrize(
    ("canary", "stable", "held", "over", "verdict", "says"),
    [
        (sample(5), sample(100), 60, {}, rollout.HOLDING, "waiting for traffic: 5/20"),
        (sample(0), sample(0), 60, {"min_requests": 0}, rollout.HOLDING, "waiting for traffic: 0/1"),
        (sample(100), sample(300), 10, {}, rollout.HOLDING, "within bounds for 10/30 s"),
        (sample(100), sample(300), 30, {}, rollout.PASSED, "held 30 s within bounds"),
        (sample(100, 100), sample(300), 1, {}, rollout.FAILED, "failure ratio 1.0000 (100/100) > stable 0.0000"),
        (sample(20, 1), sample(300), 1, {}, rollout.FAILED, "failure ratio 0.0500"),
        # the stable side fails as often: within the margin
        (sample(100, 10), sample(300, 30), 30, {}, rollout.PASSED, "failure ratio 0.1000 vs stable 0.1000"),
        (sample(100, 2), sample(300), 30, {"max_failure_ratio_increase": 0.05}, rollout.PASSED, "held"),
        # latency: p99 of 100 ms vs 1 ms (bound max(1.5, 1 + 5) = 6 ms)
        (sample(100, 0, hist(b100=100)), sample(300), 1, {}, rollout.FAILED, "p99 request time"),
        (sample(100, 0, hist(b5=100)), sample(300), 30, {}, rollout.PASSED, "p99 5.0 ms vs stable 1.0 ms"),
        (sample(100, 0, hist(b5=100)), sample(300), 30, {"latency_slack_ms": 0}, rollout.FAILED, "> 1.5 ms"),
        # too few stable requests: latency not compared, failures against an absolute margin
        (sample(100, 0, hist(b100=100)), sample(3), 30, {}, rollout.PASSED, "p99 not compared (3/100 requests"),
        # a p99 of 50 requests is their slowest one: not compared yet; a p90 of 50 is
        (sample(50, 0, hist(b100=50)), sample(300), 30, {}, rollout.PASSED, "p99 not compared (50/100 requests"),
        (sample(50, 0, hist(b100=50)), sample(300), 1, {"latency_percentile": 90}, rollout.FAILED, "p90 request"),
        (sample(100, 5), rollout.Sample(), 1, {}, rollout.FAILED, "> stable 0.0000 (0/0) + 0.01"),
    ],
)
def test_judge(  # noqa: PLR0917 -- one table row per argument
    canary: rollout.Sample, stable: rollout.Sample, held: float, over: dict[str, Any], verdict: str, says: str
) -> None:
    got = rollout.judge(settings(**over), canary, stable, held)
    assert got.result == verdict
    assert says in got.message


#: an agent reporting finer buckets around a second than this version's (its /v1/plugin_health bounds_ms)
FINE = (1.0, 10.0, 100.0, 1000.0, 1400.0, 1600.0, 2500.0)


@pytest.mark.parametrize(
    ("latency", "bounds", "percent", "expected"),
    [
        # Prometheus' histogram_quantile on the same buckets: the rank's bucket, linear from its lower bound
        (hist(b1=100), rollout.BOUNDS_MS, 99, 0.998),  # 99th of 100 in (0.8, 1]: 0.8 + 0.2 * 0.99
        (hist(b0_5=50, b10=50), rollout.BOUNDS_MS, 50, 0.5),
        (hist(b0_5=50, b10=50), rollout.BOUNDS_MS, 75, 9.0),  # 8 + (10 - 8) * (75 - 50) / 50
        (hist(b0_5=1), rollout.BOUNDS_MS, 50, 0.25),  # the first bucket starts at 0
        # 1.5 s requests on this version's buckets are in (1250, 1600]: p90 reads 1565, as Prometheus' would
        # (on Envoy's default buckets, (1000, 2500], 2350)
        (hist(b1600=100), rollout.BOUNDS_MS, 90, 1565.0),
        ((0, 100, 0), (1000.0, 2500.0), 90, 2350.0),  # the same requests on Envoy's default buckets there
        # ... and on the buckets an agent reports, whatever they are: (1400, 1600] -> 1580
        ((0, 0, 0, 0, 0, 100, 0, 0), FINE, 90, 1580.0),
        ((0, 0, 0, 0, 0, 0, 0, 4), FINE, 50, 2500.0),  # the overflow: the highest bound, as Prometheus
        ((0, 3, 1), (1.0, 10.0), 50, 7.0),  # rank 2 of 4, the 2nd of 3 in (1, 10]: 1 + 9 * 2 / 3
        ((), rollout.BOUNDS_MS, 99, None),
        ((5,), (), 50, None),  # no bounds: nothing known
    ],
)
def test_quantile(latency: tuple[int, ...], bounds: tuple[float, ...], percent: float, expected: float | None) -> None:
    got = rollout.Sample(1, sum(latency), 0, latency, bounds).quantile_ms(percent)
    assert got == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("latency", "bounds", "onto", "expected"),
    [
        ((1, 2, 3, 4), (1.0, 2.0, 5.0), (1.0, 2.0, 5.0), (1, 2, 3, 4)),  # the same buckets
        ((1, 2, 3, 4), (1.0, 2.0, 5.0), (2.0,), (3, 7)),  # (0,1] and (1,2] -> (0,2]; (2,5] and over -> over
        ((1, 2, 3, 4), (1.0, 2.0, 5.0), (1.0, 5.0), (1, 5, 4)),
        ((1, 2, 3, 4), (1.0, 2.0, 5.0), (), (10,)),  # no bound shared: one overflow
        ((0, 0, 0, 0, 0, 100, 0, 0), FINE, (1.0, 10.0, 100.0, 1000.0, 2500.0), (0, 0, 0, 0, 100, 0)),
    ],
)
def test_rebinned(
    latency: tuple[int, ...], bounds: tuple[float, ...], onto: tuple[float, ...], expected: tuple[int, ...]
) -> None:
    assert rollout.rebinned(latency, bounds, onto) == expected
    assert sum(expected) == sum(latency)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        # agents of one version: bucket by bucket
        (rollout.Sample(1, 3, 0, (1, 2, 0), (1.0, 5.0)), rollout.Sample(1, 2, 1, (0, 1, 1), (1.0, 5.0)),
         rollout.Sample(2, 5, 1, (1, 3, 1), (1.0, 5.0))),
        # an empty side takes the other's buckets
        (rollout.Sample(), rollout.Sample(1, 2, 0, (0, 2), (7.0,)), rollout.Sample(1, 2, 0, (0, 2), (7.0,))),
        # agents reporting different buckets: on the bounds both have
        (rollout.Sample(1, 3, 0, (1, 1, 1, 0), (1.0, 2.0, 5.0)), rollout.Sample(1, 2, 0, (2, 0, 0), (1.0, 5.0)),
         rollout.Sample(2, 5, 0, (3, 2, 0), (1.0, 5.0))),
    ],
)  # fmt: skip
def test_add_sums_on_the_buckets_both_sides_have(
    a: rollout.Sample, b: rollout.Sample, expected: rollout.Sample
) -> None:
    assert rollout.add(a, b) == expected
    assert rollout.add(b, a) == expected


def test_overflow_bucket_reads_as_the_last_bound() -> None:
    latency = (0,) * len(limits.PLUGIN_RQ_TIME_BUCKETS_MS) + (4,)
    assert rollout.Sample(1, 4, 0, latency).quantile_ms(50) == limits.PLUGIN_RQ_TIME_BUCKETS_MS[-1]


@pytest.mark.parametrize(
    ("now", "then", "expected"),
    [
        (sample(10, 1), None, sample(10, 1)),
        (sample(10, 1), sample(4, 1), rollout.Sample(1, 6, 0, hist(b1=6))),
        (sample(3), sample(10), sample(3)),  # the counters restarted (a new set): all of them count
        # the agent now reports other buckets (another version): its counters restarted with it
        (rollout.Sample(1, 9, 0, (0, 9), (7.0,)), sample(4), rollout.Sample(1, 9, 0, (0, 9), (7.0,))),
    ],
)
def test_since(now: rollout.Sample, then: rollout.Sample | None, expected: rollout.Sample) -> None:
    assert rollout.since(now, then) == expected


def test_add_sums_sides() -> None:
    got = rollout.add(sample(3, 1), rollout.add(rollout.Sample(), sample(2)))
    assert got == rollout.Sample(2, 5, 1, hist(b1=5))


# --- the steps ---------------------------------------------------------------------------------------------------

V1 = rollout.Version("sha256:" + "1" * 64, "k1")
V2 = rollout.Version("sha256:" + "2" * 64, "k2")
SPEC_V1 = {"url": "file:///m/v1.wasm", "dataPlane": "agent"}
SPEC_V2 = {"url": "file:///m/v2.wasm", "dataPlane": "agent"}
T0 = 1_800_000_000.0


def ctx(
    current: rollout.Version = V2, *, action: str = "", now: float = T0, n: int = 4, conf: spec.Rollout | None = None
) -> rollout.Context:
    raw = SPEC_V2 if current == V2 else SPEC_V1
    return rollout.Context(conf or settings(PCT(25, ()), PCT(50, ())), "shop.hdr", current, raw, pods(n), action, now)


STABLE_V1 = rollout.State(phase=rollout.PROMOTED, stable=V1, stable_spec=SPEC_V1, canary=V1, steps=2)


def progressing(**over: Any) -> rollout.State:
    started = rollout.plan(ctx(), STABLE_V1).state
    return replace(started, **over)


@pytest.mark.parametrize(
    ("name", "current", "prior", "action", "phase", "canary", "event"),
    [
        ("first version: every pod at once", V1, None, "", rollout.INITIALIZED, None, None),
        ("unchanged stable", V1, STABLE_V1, "", rollout.PROMOTED, None, None),
        ("an update starts step 1", V2, STABLE_V1, "", rollout.PROGRESSING, 1, "RolloutStarted"),
        ("a lingering annotation is ignored", V2, STABLE_V1, "abort", rollout.PROGRESSING, 1, "RolloutStarted"),
        ("progressing keeps its pods", V2, "progressing", "", rollout.PROGRESSING, 1, None),
        ("abort", V2, "progressing", "abort", rollout.ABORTED, 0, "RolloutAborted"),
        ("abort with a suffix", V2, "progressing", "ABORT:2", rollout.ABORTED, 0, "RolloutAborted"),
        ("promote", V2, "progressing", "promote", rollout.PROMOTED, None, "RolloutPromoted"),
        ("an unknown verb does nothing", V2, "progressing", "pause", rollout.PROGRESSING, 1, None),
        ("spec back at stable cancels", V1, "progressing", "", rollout.INITIALIZED, None, "RolloutCancelled"),
        ("rolled back stays rolled back", V2, "rolled-back", "", rollout.ROLLED_BACK, 0, None),
        ("promote after a rollback", V2, "rolled-back", "promote", rollout.PROMOTED, None, "RolloutPromoted"),
        (
            "a new version after a rollback",
            rollout.Version("sha256:" + "3" * 64, "k3"),
            "rolled-back",
            "",
            rollout.PROGRESSING,
            1,
            "RolloutStarted",
        ),
    ],
)
def test_plan(  # noqa: PLR0917 -- one table row per argument
    name: str,
    current: rollout.Version,
    prior: rollout.State | str | None,
    action: str,
    phase: str,
    canary: int | None,
    event: str | None,
) -> None:
    if prior == "progressing":
        prior = progressing()
    elif prior == "rolled-back":
        prior = replace(progressing(), phase=rollout.ROLLED_BACK, canary_pods=(), step=0)
    assert not isinstance(prior, str)
    got = rollout.plan(ctx(current, action=action), prior)
    assert got.state.phase == phase, name
    assert (None if got.canary_pods is None else len(got.canary_pods)) == canary, name
    assert [e[1] for e in got.events] == ([event] if event else []), name
    if phase == rollout.PROMOTED and prior is not None and prior != STABLE_V1:
        assert got.state.stable == current and got.state.stable_spec == SPEC_V2


def test_first_version_becomes_stable_and_an_oversized_spec_is_not_kept() -> None:
    got = rollout.plan(ctx(V1), None).state
    assert (got.stable, got.stable_spec) == (V1, {"url": "file:///m/v1.wasm", "dataPlane": "agent"})
    huge = {"url": "file:///m/v1.wasm", "pluginConfig": {"x": "y" * limits.ROLLOUT_MAX_STABLE_SPEC_BYTES}}
    big = rollout.plan(replace(ctx(V1), current_spec=huge), None).state
    assert big.stable is None and "updates go to every pod" in big.message
    # without a stable spec the next update goes to every pod at once too
    assert rollout.plan(ctx(V2), big).canary_pods is None


def test_status_round_trip() -> None:
    width = len(limits.PLUGIN_RQ_TIME_BUCKETS_MS) + 1
    base = rollout.Baseline("v7", rollout.Sample(1, 40, 2, (30, 10, *([0] * (width - 2)))))
    window = rollout.Window(V2.key, 1, {"p1": base})
    state = replace(progressing(), step_started="2027-01-15T08:00:00Z", analysis={"verdict": "Holding"}, window=window)
    written = rollout.to_status(state)
    assert rollout.from_status({"rollout": written}) == state
    assert rollout.from_status({}) is None
    assert rollout.from_status({"rollout": {"phase": 3}}) is None


def advance(state: rollout.State, canary: rollout.Sample, stable: rollout.Sample, now: float) -> rollout.Plan:
    return rollout.advance(ctx(now=now), state, canary, stable)


WINDOW = rollout.Window(V2.key, 1, {})


def test_a_good_version_goes_through_every_step() -> None:
    state = progressing(window=WINDOW)
    assert state.step_started == ""
    # the step's pods confirmed: the window starts, nothing is decided yet
    first = advance(state, rollout.Sample(), rollout.Sample(), T0)
    assert first.state.step_started == rollout.now_rfc3339(T0) and first.state.analysis is not None
    assert first.state.analysis["verdict"] == rollout.HOLDING and not first.events
    held = advance(first.state, sample(100), sample(300), T0 + 29)
    assert held.state.step == 1 and held.canary_pods == first.state.canary_pods
    step2 = advance(held.state, sample(100), sample(300), T0 + 31)
    assert step2.state.step == 2 and step2.state.step_started == "" and len(step2.canary_pods or ()) == 2
    assert held.state.window == WINDOW and step2.state.window is None  # the next step has a window of its own
    assert [e[1] for e in step2.events] == ["RolloutStep"]
    assert step2.state.history[-1]["result"] == rollout.PASSED
    window = advance(step2.state, rollout.Sample(), rollout.Sample(), T0 + 40)
    done = advance(window.state, sample(100), sample(300), T0 + 71)
    assert done.state.phase == rollout.PROMOTED and done.canary_pods is None
    assert (done.state.stable, done.state.stable_spec) == (V2, SPEC_V2)
    assert [e[1] for e in done.events] == ["RolloutPromoted"]
    assert [h["result"] for h in done.state.history] == [rollout.PASSED, rollout.PROMOTED]
    assert [h["canaryPods"] for h in done.state.history] == [
        list(first.state.canary_pods),
        list(step2.canary_pods or ()),
    ]


def test_a_bad_version_is_rolled_back() -> None:
    state = advance(progressing(window=WINDOW), rollout.Sample(), rollout.Sample(), T0).state
    got = advance(state, sample(40, 40), sample(120), T0 + 3)
    assert got.state.phase == rollout.ROLLED_BACK and got.canary_pods == () and got.state.window is None
    assert got.state.stable == V1 and got.state.canary == V2
    (warning, reason, message) = got.events[0]
    assert warning and reason == "RolloutRolledBack" and "failure ratio 1.0000" in message
    # and it stays so while the spec names that version
    assert rollout.plan(ctx(), got.state).canary_pods == ()


def test_a_step_whose_selector_matches_no_pod_waits() -> None:
    conf = settings(PCT(None, (("track", "canary"),)))
    c = replace(ctx(conf=conf), rollout=conf)
    started = rollout.plan(c, STABLE_V1)
    assert started.canary_pods == () and started.state.phase == rollout.PROGRESSING
    held = rollout.advance(c, started.state, sample(100), sample(100))
    assert held.canary_pods == () and "no selected pod matches" in held.state.message and not held.events


@pytest.mark.parametrize("crd", sorted(CRDS.glob("*.meshplug.io.yaml")), ids=lambda p: p.name)
def test_the_crds_keep_what_the_status_window_holds(crd: Path) -> None:
    """status.rollout.window as the CRD allows it: no field pruned, its limits the operator's."""
    schema = yaml.safe_load(crd.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    window = schema["properties"]["status"]["properties"]["rollout"]["properties"]["window"]
    width = len(limits.PLUGIN_RQ_TIME_BUCKETS_MS) + 1
    base = rollout.Baseline("v7", rollout.Sample(1, 4, 0, (0, 4, *([0] * (width - 2)))))  # skips one bucket
    written = rollout.window_to_status(rollout.Window(V2.key, 1, {"p1": base}), ("p1",))
    assert set(written) == set(window["properties"])
    pods = window["properties"]["pods"]
    assert set(written["pods"][0]) == set(pods["items"]["properties"])
    assert pods["maxItems"] == limits.ROLLOUT_MAX_WINDOW_PODS
    assert pods["items"]["properties"]["latency"]["maxItems"] == width
