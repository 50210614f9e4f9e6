"""How a multi-worker agent's admin view (meshplug.agent.workers) sums its workers' plugin metrics for /stats:
each worker sends its histograms as (bin floor, count) pairs, the parent merges them; the /stats text and JSON
over the merged stats must be what one process holding every worker's values writes (Envoy's one stats store),
quantiles included. The integration test (test_agent_workers) checks the whole path against Envoy
--concurrency 2; this one covers the bins with values of many magnitudes."""

from __future__ import annotations

import json
import math
import random

import pytest

from meshplug.agent import envoystats, hostapi, workers
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


def _bins(values: list[int]) -> tuple[tuple[int, int], ...]:
    counts: dict[int, int] = {}
    for value in values:
        counts[envoystats.bin_floor(value)] = counts.get(envoystats.bin_floor(value), 0) + 1
    return envoystats.binned(counts)


def _raw_quantile(values: list[int], percent: float) -> float:
    """Envoy's quantile from every recorded value (the reference the bins must give): nearest rank, bin middle."""
    ordered = sorted(values)
    rank = max(math.ceil(percent / 100.0 * len(ordered)), 1)
    return envoystats.bin_mid(ordered[min(rank, len(ordered)) - 1])


def _worker_values(seed: int, n: int, spread: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(spread) for _ in range(n)]


def _worker_stats(seed: int, n: int, spread: int) -> list[Stat]:
    return [
        Stat("wasmcustom.requests", n),
        Stat("wasmcustom.inflight", seed % 3),
        Stat("wasmcustom.latency", bins=_bins(_worker_values(seed, n, spread))),
        Stat("wasmcustom.unused", bins=()),
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

    values = [v for i in range(workers_n) for v in _worker_values(i, requests + i, spread)]
    expected = [
        Stat("wasmcustom.requests", sum(requests + i for i in range(workers_n))),
        Stat("wasmcustom.inflight", sum(i % 3 for i in range(workers_n))),
        Stat("wasmcustom.latency", bins=_bins(values)),
        Stat("wasmcustom.unused", bins=()),
    ]
    for query in ({}, {"usedonly": ""}, {"filter": "latency"}):
        assert envoystats.text(summed, query) == envoystats.text(expected, query)
        assert envoystats.to_json(summed, query) == envoystats.to_json(expected, query)
    histogram = next(s for s in summed if s.name == "wasmcustom.latency")
    assert sum(count for _, count in histogram.bins or ()) == len(values)
    if values:  # the bins' quantiles are those of every recorded value
        assert [envoystats.quantile(histogram.bins or (), q) for q in envoystats.QUANTILES] == [
            _raw_quantile(values, q) for q in envoystats.QUANTILES
        ]


@pytest.mark.parametrize("records", [1, 10_000, 200_000])
def test_a_histogram_keeps_bins_not_values(records: int) -> None:
    """A plugin recording a value per request: the host's memory is its bins (a few hundred at most), not a list
    growing with the traffic, and its quantiles are those of every value recorded."""
    m = hostapi.Metrics()
    mid = m.define(hostapi.Metrics.HISTOGRAM, b"latency")
    rng = random.Random(records)
    values = [rng.randrange(10**rng.randrange(1, 7)) for _ in range(records)]
    for v in values:
        m.record(mid, v)
    assert m.value[mid] == records
    assert len(m.bins[mid]) <= 600
    bins = envoystats.binned(m.bins[mid])
    assert [envoystats.quantile(bins, q) for q in envoystats.QUANTILES] == [
        _raw_quantile(values, q) for q in envoystats.QUANTILES
    ]
