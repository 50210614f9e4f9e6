"""The operator's and module supply's Prometheus expositions follow the conventions: HELP and TYPE on every family,
counters ending in _total, duration histograms with cumulative buckets, plugins as labels."""

from __future__ import annotations

from meshplug.controller import metrics as metrics_mod
from meshplug.fetch.metrics import FetchMetrics
from meshplug.prometheus import Histogram
from tests.testbed import promtext


def _operator_text() -> str:
    m = metrics_mod.Metrics()
    m.queue_depth = lambda: 3
    m.reconciled("ok", 0.02)
    m.reconciled("retry", 1.7)
    m.validated(0.004)
    m.pushed("ack", 0.03)
    m.ready(("shop", "hdr"), True)
    m.ready(("shop", "auth"), False)
    m.pods(("shop", "hdr"), 2, 3)
    return m.exposition({("GET", "pods"): 4, ("PATCH", "wasmplugins/status"): 1})


def test_operator_exposition_follows_the_conventions() -> None:
    families = promtext.check(_operator_text())
    assert families["meshplug_operator_reconcile_duration_seconds"].kind == "histogram"
    assert families["meshplug_operator_push_duration_seconds"].kind == "histogram"
    assert families["meshplug_operator_validate_duration_seconds"].kind == "histogram"
    assert promtext.value(families, "meshplug_operator_workqueue_depth") == 3
    assert promtext.value(families, "meshplug_operator_plugin_ready", namespace="shop", plugin="hdr") == 1
    assert promtext.value(families, "meshplug_operator_plugin_ready", namespace="shop", plugin="auth") == 0
    assert promtext.value(families, "meshplug_operator_reconcile_duration_seconds_count", result="retry") == 1
    assert promtext.value(families, "meshplug_operator_reconcile_duration_seconds_bucket", result="retry", le="1") == 0
    assert (
        promtext.value(families, "meshplug_operator_reconcile_duration_seconds_bucket", result="retry", le="2.5") == 1
    )


def test_forgetting_a_plugin_drops_its_series() -> None:
    m = metrics_mod.Metrics()
    m.ready(("shop", "hdr"), True)
    m.pods(("shop", "hdr"), 1, 1)
    m.forget(("shop", "hdr"))
    families = promtext.check(m.exposition({}))
    assert families["meshplug_operator_plugin_ready"].samples == []
    assert families["meshplug_operator_pods_ready"].samples == []


def test_fetch_exposition_follows_the_conventions() -> None:
    m = FetchMetrics(entries=lambda: 2)
    m.record_fetch("success", 0.3)
    m.record_fetch("signature_invalid", 0.05)
    families = promtext.check(m.exposition())
    assert promtext.value(families, "meshplug_wasm_remote_fetch_total", result="signature_invalid") == 1
    assert promtext.value(families, "meshplug_wasm_fetch_duration_seconds_count", result="success") == 1


def test_a_counter_without_total_is_refused_and_labels_are_escaped() -> None:
    import pytest

    from meshplug import prometheus

    with pytest.raises(ValueError, match="_total"):
        prometheus.family("meshplug_things", "counter", "x", [])
    line = prometheus.family("m", "gauge", "h", [((("plugin", 'a"b\\c'),), 1)])[-1]
    assert line == 'm{plugin="a\\"b\\\\c"} 1'
    h = Histogram("d_seconds", "h", buckets=(1.0,))
    h.observe(5.0, k="v")
    assert h.lines()[-3:] == [
        'd_seconds_bucket{k="v",le="+Inf"} 1',
        'd_seconds_sum{k="v"} 5',
        'd_seconds_count{k="v"} 1',
    ]
