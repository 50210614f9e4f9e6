"""Which failed Event writes the operator tries again (meshplug.controller.events.EventRecorder), and how many
times: the classification of the API's answers and the bound on tries. Against a writer that answers as scripted;
what the real API server does is tests/integration/test_kube_operator.py (a refused Event that lands once allowed,
an occurrence tried again counted once)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import urllib3

from meshplug import errors
from meshplug.controller import events

PLUGIN = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "p", "namespace": "shop"}}


class ScriptedWriter:
    """Answers each Event write with the next of ``answers`` (an exception to raise, or None: taken)."""

    def __init__(self, answers: list[BaseException | None]) -> None:
        self.answers = answers
        self.tries: list[str] = []

    def event(self, involved: Mapping[str, Any], *, warning: bool, reason: str, message: str, occurrence: str) -> None:
        del involved, warning, reason, message
        self.tries.append(occurrence)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


def refused(reason: str) -> errors.ApplyError:
    return errors.ApplyError(f"POST events: {reason}", reason=reason)


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (None, 0),  # taken
        (refused("Forbidden"), 1),  # RBAC or an admission policy: may be lifted
        (refused("Conflict"), 1),
        (refused("TooManyRequests"), 1),
        (refused("InternalError"), 1),
        (refused("HTTP503"), 1),
        (refused("Timeout"), 1),
        (ConnectionResetError("reset"), 1),  # no answer
        (urllib3.exceptions.MaxRetryError(None, "/api/v1/namespaces/shop/events"), 1),  # type: ignore[arg-type]
        (refused("Invalid"), 0),  # the Event itself is refused: the same Event would be
        (refused("BadRequest"), 0),
        (refused("NotFound"), 0),  # the namespace is gone
    ],
)
def test_which_failed_event_writes_are_tried_again(answer: BaseException | None, kept: int) -> None:
    writer = ScriptedWriter([answer])
    recorder = events.EventRecorder(writer, first_s=3600.0)  # type: ignore[arg-type]
    recorder.record(PLUGIN, warning=True, reason="FetchFailed", message="m")
    assert recorder.pending() == kept


def test_every_try_of_an_occurrence_carries_its_id_and_tries_are_bounded() -> None:
    writer = ScriptedWriter([refused("Forbidden")] * 10)
    recorder = events.EventRecorder(writer, first_s=3600.0, tries=3)  # type: ignore[arg-type]
    recorder.record(PLUGIN, warning=True, reason="FetchFailed", message="m")
    recorder.record(PLUGIN, warning=True, reason="FetchFailed", message="m")
    assert recorder.pending() == 2 and len(set(writer.tries)) == 2  # two occurrences, two ids
    for _ in range(2):
        for item in list(recorder._pending):
            recorder._pending.remove(item)
            recorder._try(item)
    assert recorder.pending() == 0  # the third try of each was the last
    assert sorted(writer.tries) == sorted(writer.tries[:2] * 3)  # each occurrence tried 3 times under its id
