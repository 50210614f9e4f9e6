"""Reads of istiod shared by the reconciles asking at the same moment (meshplug.controller.delivery.shared_reads, and
`proxies.Istiod` on top of it): a reading started at or after the moment a caller names serves it; one in flight
that started then is waited for; one that started earlier is not. The order of the threads is forced with events
(a read held until released), never with sleeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from meshplug import limits
from meshplug.controller.delivery import proxies, shared_reads

#: readings kept long enough for any test's pace (the default window is 0.2 s)
KEEP = 600.0


class Held:
    """A read that answers its call number once released, telling when it started."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail: BaseException | None = None

    def __call__(self) -> int:
        self.calls += 1
        self.started.set()
        assert self.release.wait(timeout=30)
        if self.fail is not None:
            raise self.fail
        return self.calls


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # the test looks at it
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


@pytest.mark.parametrize(
    ("second_after", "reads", "same"),
    [
        ("before_first", 1, True),  # the first read started after the moment the second caller names: shared
        ("now", 2, False),  # the second caller wants a reading started after its call: the first one is too early
    ],
)
def test_a_read_in_flight_serves_the_callers_it_started_for(second_after: str, reads: int, same: bool) -> None:
    shared: shared_reads.SharedReads[str, int] = shared_reads.SharedReads(keep_s=KEEP)
    read = Held()
    t0 = time.monotonic()
    first, first_out = in_thread(lambda: shared.outcome("syncz", read, after=t0))
    assert read.started.wait(timeout=30)
    after = t0 if second_after == "before_first" else time.monotonic()
    second, second_out = in_thread(lambda: shared.outcome("syncz", read, after=after))
    read.release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert shared.reads == read.calls == reads
    assert (first_out[0] is second_out[0]) is same
    assert second_out[0].at >= after and second_out[0].result() == reads


def test_a_reading_serves_later_callers_until_they_ask_for_a_newer_one() -> None:
    shared: shared_reads.SharedReads[str, int] = shared_reads.SharedReads(keep_s=KEEP)
    read = Held()
    read.release.set()
    first = shared.outcome("syncz", read)
    assert shared.get("syncz", read, after=first.at) == 1  # the same reading
    assert shared.get("other", read, after=first.at) == 2  # another key is another read
    assert shared.get("syncz", read) == 3  # a reading started now
    assert shared.reads == 3


def test_a_failed_read_is_shared_and_not_kept_past_its_moment() -> None:
    shared: shared_reads.SharedReads[str, int] = shared_reads.SharedReads(keep_s=KEEP)
    read = Held()
    read.fail = OSError("istiod away")
    t0 = time.monotonic()
    first, first_out = in_thread(lambda: shared.get("syncz", read, after=t0))
    assert read.started.wait(timeout=30)
    second, second_out = in_thread(lambda: shared.get("syncz", read, after=t0))
    read.release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert [type(o) for o in first_out + second_out] == [OSError, OSError] and read.calls == 1
    read.fail = None
    assert shared.get("syncz", read) == 2  # asked after the failure: read again


def test_the_least_recently_used_readings_go_beyond_the_capacity() -> None:
    shared: shared_reads.SharedReads[str, str] = shared_reads.SharedReads(capacity=2, keep_s=KEEP)
    t0 = time.monotonic()
    for key in ("a", "b", "c"):
        shared.get(key, lambda k=key: k)  # type: ignore[misc]
    assert shared.get("b", lambda: "again", after=t0) == "b"
    assert shared.get("a", lambda: "again", after=t0) == "again"  # evicted


def test_readings_too_old_to_serve_anyone_go_when_another_is_stored() -> None:
    shared: shared_reads.SharedReads[str, str] = shared_reads.SharedReads(keep_s=0.0)
    t0 = time.monotonic()
    shared.get("a", lambda: "a")
    shared.get("b", lambda: "b")  # stored after "a" was read: "a" is older than keep_s (0) now
    assert shared.get("b", lambda: "again", after=t0) == "b"  # the one just stored stays
    assert shared.get("a", lambda: "again", after=t0) == "again"


def test_a_read_that_ends_without_an_outcome_lets_its_waiters_go_on() -> None:
    shared: shared_reads.SharedReads[str, int] = shared_reads.SharedReads(keep_s=KEEP)

    def interrupted() -> int:
        raise KeyboardInterrupt  # not an Exception: not shared, but the read in flight ends

    with pytest.raises(KeyboardInterrupt):
        shared.get("syncz", interrupted)
    assert shared.get("syncz", lambda: 7) == 7  # no read left in flight to wait for


class CountingIstiod(proxies.Istiod):
    """istiod's recorded answers, counting the requests."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(["http://istiod"])
        self.answers = answers
        self.requests: list[str] = []

    def _get(self, base: str, path: str) -> Any:
        self.requests.append(path)
        return self.answers[path.partition("?")[0]]


SYNCZ = [{"proxy": "cart-0.shop", "resources": {proxies.ECDS_TYPE: {"sent": "n2", "acked": "n2"}}}]
ECDSZ = {"configs": [{"name": "shop.hdr"}]}


def test_reconciles_of_one_moment_share_istiods_syncz_and_views() -> None:
    istiod = CountingIstiod({"/debug/syncz": SYNCZ, "/debug/ecdsz": ECDSZ})
    change = proxies.Change.before(istiod).written()  # one syncz, before the write
    readings = [istiod.reading(change.at) for _ in range(5)]  # five reconciles after it
    assert len({r.at for r in readings}) == 1 and readings[0].at >= change.at
    sync = readings[0].syncs["cart-0.shop"]
    views = [istiod.ecds(sync, after=change.at) for _ in range(5)]
    assert views[0] == [{"name": "shop.hdr"}] and all(v == views[0] for v in views)
    assert [p.partition("?")[0] for p in istiod.requests] == ["/debug/syncz", "/debug/syncz", "/debug/ecdsz"]
    assert istiod.reads == 3
    later = proxies.Change.before(istiod)  # a new change reads again: nonces from before it, never older
    assert later.sent == {"cart-0.shop": {proxies.ECDS_TYPE: "n2"}} and len(istiod.requests) == 4


def test_readings_serve_a_reconcile_from_the_change_or_the_reuse_window_whichever_is_later() -> None:
    before = time.monotonic()
    since = proxies.readings_after(None)
    assert before - limits.ISTIOD_READING_REUSE_S <= since <= time.monotonic() - limits.ISTIOD_READING_REUSE_S
    change = proxies.Change(at=time.monotonic() + 60, sent={})  # a change newer than the window's start
    assert proxies.readings_after(change) == change.at
