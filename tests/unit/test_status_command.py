"""meshplug status: which digest each confirmed pod runs, also during and after a canary rollout."""

from __future__ import annotations

from typing import Any

import pytest

from meshplug.commands import status

NEW, OLD = "sha256:" + "b" * 64, "sha256:" + "a" * 64


def st(phase: str | None, canaries: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"digest": NEW}
    if phase is not None:
        out["rollout"] = {"phase": phase, "canaryPods": canaries, "stable": {"digest": OLD}}
    return out


@pytest.mark.parametrize(
    ("phase", "pod", "expected"),
    [
        (None, "a", NEW),
        ("Initialized", "a", NEW),
        ("Promoted", "a", NEW),
        ("Progressing", "a", NEW),  # a canary
        ("Progressing", "b", OLD),  # still on the stable version
        ("RolledBack", "a", OLD),
        ("Aborted", "b", OLD),
    ],
)
def test_pod_digest(phase: str | None, pod: str, expected: str) -> None:
    assert status.pod_digest(st(phase, ["a"] if phase == "Progressing" else []), pod) == expected
