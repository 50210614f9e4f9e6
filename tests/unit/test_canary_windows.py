"""meshplug.controller.delivery.canary: the step windows' stats from the agents' answers, and the stable version."""

from __future__ import annotations

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
    windows = canary.Windows()
    key = ("shop", "hdr")
    first = {"p1": health("v9", NEW, 5), "p2": health("v8", OLD, 100), "p3": health("v8", OLD, 90)}
    state, c, s, unread = windows.measure(
        key, replace(STATE, step_started="2027-01-01T00:00:00Z"), NAME, EXPECTED, first
    )
    assert state.step_started == "" and (c, s, unread) == (rollout.Sample(), rollout.Sample(), [])
    started = replace(STATE, step_started="2027-01-01T00:00:00Z")
    later = {
        "p1": health("v9", NEW, 25, local_5xx=4),
        "p2": health("v8", OLD, 130, failures=1),
        "p3": health("v10", OLD, 12),  # its set changed since (another plugin): all of its counters are new
    }
    state, c, s, unread = windows.measure(key, started, NAME, EXPECTED, later)
    assert state == started and unread == []
    assert c == side(1, 20, 4) and s == side(2, 30 + 12, 1)


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        ({"p1": "127.0.0.9:15010: connection refused"}, "p1: 127.0.0.9:15010: connection refused"),
        ({"p1": health("v9", OLD, 5)}, f"p1: its agent does not report {NAME} running {NEW[:12]}"),
        ({"p1": protocol.Health("v9", (), ())}, "does not report"),
    ],
)
def test_pods_whose_stats_cannot_be_read_are_named(answers: dict[str, Any], says: str) -> None:
    _, _, _, unread = canary.Windows().measure(("shop", "hdr"), STATE, NAME, EXPECTED, answers)
    assert len(unread) == 1 and says in unread[0]


def test_another_step_or_a_forgotten_plugin_starts_a_new_window() -> None:
    windows, key = canary.Windows(), ("shop", "hdr")
    started = replace(STATE, step_started="2027-01-01T00:00:00Z")
    answers = {"p1": health("v9", NEW, 5)}
    windows.measure(key, started, NAME, EXPECTED, answers)
    assert windows.measure(key, started, NAME, EXPECTED, answers)[0].step_started  # same window
    assert windows.measure(key, replace(started, step=2), NAME, EXPECTED, answers)[0].step_started == ""
    windows.forget(key)
    assert windows.measure(key, replace(started, step=2), NAME, EXPECTED, answers)[0].step_started == ""


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
