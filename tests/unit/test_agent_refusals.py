"""The agent path's record of a pod's refused set (meshplug.controller.delivery.agent.Refusal): when a push of the
same set to the same agent waits, and how the record travels through the plugin's status (so that an operator
restart goes on with the backoff instead of pushing again)."""

from __future__ import annotations

from typing import Any

import pytest

from meshplug import limits
from meshplug.controller import agents
from meshplug.controller.delivery import agent

AT = 1_800_000_000.0
SET = "set-v1"
WHO = "0d7c/10.0.0.7:15099#0"


def refusal(reason: str = "start_failed", pushes: int = 1) -> agent.Refusal:
    return agent.Refusal(SET, WHO, pushes, AT, reason, "the VM did not start", "shop.bad", (("shop.good", "aa"),))


@pytest.mark.parametrize(
    ("record", "version", "who", "after_s", "holds"),
    [
        # a refusal that heals only with a change: the same set to the same agent is not pushed again
        (refusal(), SET, WHO, 10_000.0, True),
        (refusal(), "set-v2", WHO, 0.0, False),  # another set: pushed
        (refusal(), SET, "0d7c/10.0.0.7:15099#1", 0.0, False),  # the pod restarted: its agent lost its set
        (refusal(), SET, "9f21/10.0.0.7:15099#0", 0.0, False),  # another pod of the name
        (refusal(), SET, "0d7c/10.0.0.8:15099#0", 0.0, False),  # another address
        # one that can heal by itself: pushed again once its backoff ran out, the backoff doubling per push
        (refusal("signature_untrusted"), SET, WHO, limits.RECONCILE_BACKOFF_FIRST_S - 1, True),
        (refusal("signature_untrusted"), SET, WHO, limits.RECONCILE_BACKOFF_FIRST_S, False),
        (refusal("signature_untrusted", pushes=3), SET, WHO, 4 * limits.RECONCILE_BACKOFF_FIRST_S - 1, True),
        (refusal("signature_untrusted", pushes=3), SET, WHO, 4 * limits.RECONCILE_BACKOFF_FIRST_S, False),
        (refusal("signature_untrusted", pushes=40), SET, WHO, limits.RECONCILE_BACKOFF_MAX_S - 1, True),
        (refusal("signature_untrusted", pushes=40), SET, WHO, limits.RECONCILE_BACKOFF_MAX_S, False),
    ],
)
def test_a_push_of_a_refused_set_waits(
    record: agent.Refusal, version: str, who: str, after_s: float, holds: bool
) -> None:
    assert record.holds(version, who, AT + after_s) is holds


@pytest.mark.parametrize("record", [refusal(), refusal("signature_untrusted", pushes=5)])
def test_a_refusal_survives_the_status(record: agent.Refusal) -> None:
    entry = {"name": "a", "reason": "AgentNACK", "message": f"{record.reason}: {record.message}", **record.to_status()}
    assert agent.Refusal.from_status(entry) == record
    # what the agent kept running rides along: the other plugins of the set stay confirmed without a push
    assert record.outcome() == agents.Outcome(
        agents.Result.NACK, SET, "", record.reason, record.message, "shop.bad", (("shop.good", "aa"),)
    )


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "a", "reason": "AgentUnreachable", "message": "x", "set": SET, "lastPushTime": "2026-12-06T08:00:00Z"},
        {"name": "a", "reason": "AgentNACK", "message": "start_failed: x"},  # written before the record existed
        {"name": "a", "reason": "AgentNACK", "message": "x: y", "set": SET, "lastPushTime": "yesterday"},
    ],
)
def test_entries_without_a_usable_record_give_none(entry: dict[str, Any]) -> None:
    assert agent.Refusal.from_status(entry) is None
