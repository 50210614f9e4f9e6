"""meshplug.controller.status and delivery's pure parts: condition bookkeeping, label selection, retry backoff."""

from __future__ import annotations

from typing import Any

import pytest

from meshplug.controller import delivery, status

C = status.Condition
OLD = [{"type": "Ready", "status": "False", "reason": "x", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}]


@pytest.mark.parametrize(
    ("previous", "new", "keeps_time"),
    [
        (OLD, C("Ready", "False", "other", "m"), True),  # same status: the transition time stays
        (OLD, C("Ready", "True", "Applied", "m"), False),  # status changed: new transition time
        ([], C("Ready", "True", "Applied", "m"), False),
    ],
)
def test_transition_time_moves_only_on_status_change(
    previous: list[dict[str, Any]], new: status.Condition, keeps_time: bool
) -> None:
    (out,) = status.merge_conditions(previous, [new], generation=4)
    assert (out["lastTransitionTime"] == "2020-01-01T00:00:00Z") is keeps_time
    assert out["observedGeneration"] == 4 and out["reason"] == new.reason


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, None, True),
        ({}, {"app": "x"}, True),
        ({"app": "x"}, {"app": "x", "v": "1"}, True),
        ({"app": "x"}, {"app": "y"}, False),
        ({"app": "x", "v": "1"}, {"app": "x"}, False),
    ],
)
def test_selects(selector: dict[str, str], labels: dict[str, str] | None, selected: bool) -> None:
    assert delivery.selects(selector, labels) is selected


@pytest.mark.parametrize(("retry", "delay"), [(0, 5.0), (1, 10.0), (3, 40.0), (6, 300.0), (60, 300.0)])
def test_backoff(retry: int, delay: float) -> None:
    assert status.backoff(retry) == delay


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": None, "b": {"c": None, "d": 1}}, {"b": {"d": 1}}),
        ([{"x": None}], [{}]),
        (None, None),
        ("s", "s"),
    ],
)
def test_pruned_is_what_a_merge_patch_leaves(value: object, expected: object) -> None:
    assert status.pruned(value) == expected


WINDOW = {"version": "k", "step": 1, "pods": [{"name": "p1", "latency": [3]}]}


@pytest.mark.parametrize(
    ("current", "new", "patch"),
    [
        ({}, {"observedGeneration": 2}, {"observedGeneration": 2}),
        ({"observedGeneration": 2}, {"observedGeneration": 2}, {}),  # nothing new: no write
        ({"digest": "a"}, {"digest": None}, {"digest": None}),  # a removal is sent
        ({}, {"digest": None}, {}),  # ... unless it is not there
        # a rollout's window that did not change stays out of the write; the analysis that did goes
        (
            {"rollout": {"phase": "Progressing", "analysis": {"v": 1}, "window": WINDOW}},
            {"rollout": {"phase": "Progressing", "analysis": {"v": 2}, "window": WINDOW}},
            {"rollout": {"analysis": {"v": 2}}},
        ),
        ({"rollout": {"window": WINDOW}}, {"rollout": {"window": None}}, {"rollout": {"window": None}}),
        ({"failingPods": [{"name": "a"}]}, {"failingPods": []}, {"failingPods": []}),  # lists whole
        ({"rollout": "x"}, {"rollout": {"phase": "Idle"}}, {"rollout": {"phase": "Idle"}}),
    ],
)
def test_a_status_write_carries_only_what_the_status_does_not_hold(
    current: dict[str, Any], new: dict[str, Any], patch: dict[str, Any]
) -> None:
    """`status.delta`: merged onto the status as a merge patch, it gives what ``new`` itself would."""
    assert status.delta(current, new) == patch
    assert merged(current, patch) == merged(current, new)


def merged(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch, as the API server applies one to the status."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merged(out.get(key), value)
    return out
