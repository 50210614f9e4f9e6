"""How a multi-worker agent's admin view (meshplug.agent.workers) sums its workers' plugin metrics for /stats:
each worker sends its histograms as (bin floor, count) pairs, the parent merges them; the /stats text and JSON
over the merged stats must be what one process holding every worker's values writes (Envoy's one stats store),
quantiles included. The integration test (test_agent_workers) checks the whole path against Envoy
--concurrency 2; this one covers the bins with values of many magnitudes."""

from __future__ import annotations

import json
import random

import pytest

from meshplug.agent import envoystats, workers
from meshplug.agent.envoystats import Stat


@pytest.mark.parametrize(
    ("value", "floor"),
    [
        (0, 0),
        (1, 1),
        (9, 9),
        (10, 10),
        (12, 12),
        (99, 99),
        (100, 100),
        (157, 150),
        (999, 990),
        (1234, 1200),
        (10**12 + 5, 10**12),
        (2**64 - 1, 18000000000000000000),
    ],
)
def test_a_value_stands_as_its_bins_floor(value: int, floor: int) -> None:
    assert envoystats.bin_floor(value) == floor
    assert envoystats.bin_mid(floor) == envoystats.bin_mid(value)  # the same bin: the same quantile


def test_every_value_up_to_100k_has_the_bin_of_its_floor() -> None:
    for value in range(100_000):
        assert envoystats.bin_mid(envoystats.bin_floor(value)) == envoystats.bin_mid(value), value


def _worker_stats(seed: int, n: int, spread: int) -> list[Stat]:
    rng = random.Random(seed)
    return [
        Stat("wasmcustom.requests", n),
        Stat("wasmcustom.inflight", seed % 3),
        Stat("wasmcustom.latency", samples=tuple(rng.randrange(spread) for _ in range(n))),
        Stat("wasmcustom.unused", samples=()),
    ]


@pytest.mark.parametrize(
    ("workers_n", "requests", "spread"),
    [(2, 48, 50), (2, 1000, 10**6), (3, 500, 10**9), (2, 0, 10), (4, 7, 2**63)],
)
def test_the_summed_stats_are_one_stores(workers_n: int, requests: int, spread: int) -> None:
    per_worker = [_worker_stats(i, requests + i, spread) for i in range(workers_n)]
    snapshots = [{"plugin_stats": [workers.stat_json(s) for s in stats]} for stats in per_worker]
    # the message is JSON: what the parent sums has been through it
    summed = workers.sum_plugin_stats(json.loads(json.dumps(snapshots)))

    one_store: dict[str, Stat] = {}
    for stats in per_worker:
        for s in stats:
            prev = one_store.get(s.name)
            if s.samples is None:
                one_store[s.name] = Stat(s.name, (prev.value if prev else 0) + s.value)
            else:
                one_store[s.name] = Stat(s.name, samples=(prev.samples or () if prev else ()) + s.samples)
    expected = list(one_store.values())
    for query in ({}, {"usedonly": ""}, {"filter": "latency"}):
        assert envoystats.text(summed, query) == envoystats.text(expected, query)
        assert envoystats.to_json(summed, query) == envoystats.to_json(expected, query)
    histogram = next(s for s in summed if s.name == "wasmcustom.latency")
    assert len(histogram.samples or ()) == sum(requests + i for i in range(workers_n))
