"""A plugin's counters and gauges under `--concurrency N`: one stat for every worker, as in Envoy's one stats store
(each worker's VM defines the metric; the definitions meet in one stat). Each worker's `hostapi.Metrics` keeps its
counters and gauges in the workers' shared store (meshplug/agent/_shared.c): an add from any worker adds to the
one value, a set from any worker replaces it (the last set wins), get_metric reads it; histograms stay per worker
(the admin view merges their bins). Two workers here are two handles on one store file, as two processes map it;
tests/integration/test_agent_workers.py checks the same against Envoy --concurrency 2."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from meshplug import native
from meshplug.agent import hostapi, sharing

_NATIVE = native.check()
pytestmark = pytest.mark.skipif(not _NATIVE.extension, reason=f"the workers' store is native: {_NATIVE.reason}")

C, G, H = hostapi.Metrics.COUNTER, hostapi.Metrics.GAUGE, hostapi.Metrics.HISTOGRAM


def stores(tmp: Path, n: int = 2) -> list[sharing.Store]:
    shared = importlib.import_module("meshplug.agent._shared")
    path = str(tmp / "store")
    first = shared.Store(path, 1 << 20, True)
    return [first, *(shared.Store(path, 1 << 20, False) for _ in range(n - 1))]


def workers(tmp: Path, n: int = 2) -> list[hostapi.Metrics]:
    out = []
    for store in stores(tmp, n):
        m = hostapi.Metrics()
        m.share(store)
        out.append(m)
    return out


# (worker, operation, kind, name, value): add / set / record as proxy_increment_metric / proxy_record_metric do
Step = tuple[int, str, int, bytes, int]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([(0, "add", C, b"requests", 1), (1, "add", C, b"requests", 1), (1, "add", C, b"requests", 3)], 5),
        ([(0, "set", G, b"status", 200), (1, "set", G, b"status", 503)], 503),  # the last set, not 703
        ([(1, "set", G, b"status", 503), (0, "set", G, b"status", 200)], 200),
        ([(0, "add", G, b"inflight", 1), (1, "add", G, b"inflight", 1), (0, "add", G, b"inflight", -1)], 1),
        ([(0, "add", G, b"level", 5), (1, "set", G, b"level", 2), (0, "add", G, b"level", 1)], 3),
        ([(0, "set", G, b"level", 7), (1, "add", G, b"level", -2)], 5),
    ],
)
def test_every_worker_updates_and_reads_one_value(steps: list[Step], expected: int, tmp_path: Path) -> None:
    ms = workers(tmp_path)
    mids = set()
    for worker, op, kind, name, value in steps:
        m = ms[worker]
        mid = m.define(kind, name)
        mids.add((kind, name))
        if op == "add":
            m.add(mid, value)
        else:
            m.set(mid, value)
    (kind, name) = mids.pop()
    for m in ms:  # get_metric in either worker: the one value
        assert m.get(m.define(kind, name)) == expected
    assert ms[0].store is not None
    assert hostapi.Metrics.of_store(ms[0].store).snapshot() == {name.decode(): expected}
    for m in ms:  # a worker's own view leaves the store's out (the admin view takes it from the store once)
        assert m.value == {}


def test_histograms_stay_with_their_worker(tmp_path: Path) -> None:
    ms = workers(tmp_path)
    for i, m in enumerate(ms):
        mid = m.define(H, b"latency")
        for v in range(i + 1):
            m.record(mid, v)
    assert [m.value for m in ms] == [{m.define(H, b"latency"): i + 1} for i, m in enumerate(ms)]
    store = ms[0].store
    assert store is not None and store.metrics() == []


def test_metrics_defined_before_the_store_move_into_it(tmp_path: Path) -> None:
    store = stores(tmp_path, 1)[0]
    m = hostapi.Metrics()
    requests = m.define(C, b"requests")
    m.add(requests, 4)
    m.share(store)
    m.share(store)  # again: nothing moves twice
    other = hostapi.Metrics()
    other.share(store)
    other.add(other.define(C, b"requests"), 1)
    assert m.get(requests) == 5 and store.metrics() == [(C, b"requests", 5)]


def test_one_name_two_kinds_are_two_stats(tmp_path: Path) -> None:
    a, b = workers(tmp_path)
    a.add(a.define(C, b"x"), 2)
    b.set(b.define(G, b"x"), 9)
    assert b.store is not None and sorted(b.store.metrics()) == [(C, b"x", 2), (G, b"x", 9)]


def test_a_gauge_below_zero_wraps_as_envoys_uint64(tmp_path: Path) -> None:
    a, b = workers(tmp_path)
    mid = a.define(G, b"g")
    b.add(b.define(G, b"g"), -1)
    assert a.get(mid) == (1 << 64) - 1


def test_no_cap_on_how_many_metrics_but_the_stores_bytes(tmp_path: Path) -> None:
    """Past 4096 metrics (the old fixed table) every one is still one stat for both workers: a gauge set in one
    worker reads back in the other and the store lists each once, the last value set."""
    a, b = workers(tmp_path)
    n = 5000
    for i in range(n):
        a.set(a.define(G, b"g%d" % i), i)
        b.set(b.define(G, b"g%d" % i), i + 1)
    assert [a.get(a.define(G, b"g%d" % i)) for i in (0, 4095, 4096, n - 1)] == [1, 4096, 4097, n]
    assert a.value == {} and b.value == {}
    assert b.store is not None and len(b.store.metrics()) == n


def test_a_full_store_keeps_the_metric_in_the_worker_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = workers(tmp_path)
    store = a.store
    assert store is not None
    filler = 0
    while store.set(b"vm", b"k%d" % filler, b"x" * 4000, 0) == 0:  # shared data fills the store
        filler += 1
    while store.set(b"vm", b"s%d" % filler, b"x", 0) == 0:
        filler += 1
    mid = a.define(C, b"late")
    a.add(mid, 2)
    b.add(b.define(C, b"late"), 3)
    # each worker's own: the admin view sums them (right for a counter), get_metric reads the worker's
    assert a.get(mid) == 2 and a.value == {mid: 2} and b.value == {mid: 3} and store.metrics() == []
    assert "plugin metric 'late' is kept per worker" in caplog.text


@pytest.mark.parametrize("slot", [-1, 0, 8, 1 << 40, 3])
def test_a_slot_metric_define_did_not_hand_out_is_refused(slot: int, tmp_path: Path) -> None:
    store = stores(tmp_path, 1)[0]
    store.metric_define(C, b"one")
    with pytest.raises(IndexError):
        store.metric_get(slot)
    with pytest.raises(IndexError):
        store.metric_add(slot, 1)
