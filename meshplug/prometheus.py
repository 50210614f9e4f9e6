"""Prometheus text exposition (format 0.0.4) without a client library: label escaping, metric families with
HELP and TYPE, and a thread-safe `Histogram` with cumulative buckets, ``_sum`` and ``_count``.

Used by the operator's metrics (`meshplug.controller.metrics`), module supply (`meshplug.fetch.metrics`) and the
agent's /stats/prometheus. Conventions kept here so every exporter follows them: counters end in ``_total``,
durations are histograms in seconds (``_seconds``), per-plugin series carry ``namespace`` and ``plugin`` labels.
Bottom layer: imports only the standard library.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Mapping, Sequence

#: seconds; covers a cache hit (ms) to a slow registry or a stuck agent push (a minute)
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

Labels = tuple[tuple[str, str], ...]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape(str(v))}"' for k, v in pairs)
    return f"{{{inner}}}" if inner else ""


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[Labels, float]]) -> list[str]:
    """HELP, TYPE and one line per (labels, value) of a counter or gauge."""
    if kind == "counter" and not name.endswith("_total"):
        raise ValueError(f"counter {name} must end in _total")
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels(lbls)} {_number(value)}" for lbls, value in samples]
    return lines


class Histogram:
    """Observations per label set; `lines()` renders the family (buckets are cumulative, ``le`` last)."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        self.name = name
        self.help = help_text
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._series: dict[Labels, tuple[list[int], float, int]] = {}

    def observe(self, value: float, **label_values: str) -> None:
        key: Labels = tuple(sorted(label_values.items()))
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts, total, n = self._series.get(key) or ([0] * len(self.buckets), 0.0, 0)
            if index < len(counts):
                counts[index] += 1
            self._series[key] = (counts, total + value, n + 1)

    def count(self, **label_values: str) -> int:
        with self._lock:
            entry = self._series.get(tuple(sorted(label_values.items())))
        return entry[2] if entry else 0

    def forget(self, match: Mapping[str, str]) -> None:
        """Drop the series whose labels include ``match`` (a deleted plugin's)."""
        with self._lock:
            for key in [k for k in self._series if all((lk, lv) in k for lk, lv in match.items())]:
                del self._series[key]

    def lines(self) -> list[str]:
        with self._lock:
            series = {k: (list(c), s, n) for k, (c, s, n) in self._series.items()}
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key in sorted(series):
            counts, total, n = series[key]
            running = 0
            for bound, c in zip(self.buckets, counts, strict=True):
                running += c
                out.append(f"{self.name}_bucket{labels((*key, ('le', _number(bound))))} {running}")
            out.append(f"{self.name}_bucket{labels((*key, ('le', '+Inf')))} {n}")
            out.append(f"{self.name}_sum{labels(key)} {_number(total)}")
            out.append(f"{self.name}_count{labels(key)} {n}")
        return out
