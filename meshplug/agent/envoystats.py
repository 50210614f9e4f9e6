"""The agent's stats in Envoy's admin formats: `GET /stats` (text) and `GET /stats?format=json`.

Called by meshplug.agent.runtime for the admin routes, beside /stats/prometheus. Plugin-defined metrics
(proxy_define_metric) carry Envoy's names, `wasmcustom.<name>`, so plugins' dashboards and tools that read
Envoy's /stats read the agent's; the agent's own counters follow as `meshplug.<name>` (Envoy has no
equivalent of one process-wide set of them). As Envoy 1.40 writes them:

* text: one `name: value` line per counter and gauge, then one line per histogram --
  `name: P0(nan,v) P25(nan,v) ... P100(nan,v)` (interval values are "nan": the agent keeps no flush
  intervals), or `name: No recorded values`; names sorted within each part;
* json: `{"stats": [{"name": n, "value": v}, ..., {"histograms": {"supported_quantiles": [...],
  "computed_quantiles": [{"name": n, "values": [{"interval": null, "cumulative": q}, ...]}]}}]}`;
* `filter=<regex>` keeps the stats whose name the regex matches anywhere (Envoy's `filter`), `usedonly`
  drops counters and gauges that are 0 and histograms without values.
Quantiles are Envoy's: the nearest-rank recorded value, reported as the middle of its log-linear bin (two
significant digits), so the values are Envoy's for the same samples.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

#: Envoy's supported quantiles, in percent
QUANTILES: Final = (0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0)
#: plugin-defined metrics are under this prefix in Envoy's stats
CUSTOM_PREFIX: Final = "wasmcustom."


@dataclass(frozen=True)
class Stat:
    """One stat: a counter or gauge (`value`) or a histogram (`bins`: (bin floor, count) pairs in floor order, as
    `binned` makes them: a histogram's quantiles depend only on its values' bins, so it keeps no values)."""

    name: str
    value: int = 0
    bins: tuple[tuple[int, int], ...] | None = None


def bin_mid(value: int) -> float:
    """The middle of the bin Envoy's histograms (log-linear, two significant digits) count `value` in: 2 is in
    [2.0, 2.1) -> 2.05, 12 in [12, 13) -> 12.5, 150 in [150, 160) -> 155."""
    if value <= 0:
        return 0.0
    if value < 10:
        return value + 0.05
    scale: int = pow(10, len(str(value)) - 2)
    return (value // scale) * scale + scale / 2


def bin_floor(value: int) -> int:
    """The lowest integer of `value`'s bin (`bin_mid`): 2 -> 2, 12 -> 12, 157 -> 150. A histogram's quantiles
    depend only on the bins of its values, so it can travel as (bin floor, count) pairs and merge exactly (the
    workers of one agent: meshplug.agent.workers)."""
    if value <= 0:
        return 0
    if value < 10:
        return value
    scale: int = pow(10, len(str(value)) - 2)
    return (value // scale) * scale


def binned(counts: Mapping[int, int]) -> tuple[tuple[int, int], ...]:
    """A histogram's (bin floor, count) pairs in floor order from a floor -> count mapping (`Stat.bins`)."""
    return tuple(sorted((floor, count) for floor, count in counts.items() if count))


def quantile(bins: Sequence[tuple[int, int]], percent: float) -> float:
    """The `percent` quantile of a histogram's (bin floor, count) pairs in floor order as Envoy computes it: the
    nearest-rank value's bin middle."""
    total = sum(count for _, count in bins)
    rank = min(max(math.ceil(percent / 100.0 * total), 1), total)
    seen = 0
    for floor, count in bins:
        seen += count
        if seen >= rank:
            return bin_mid(floor)
    raise ValueError("quantile of an empty histogram")


def _selected(stats: Sequence[Stat], query: Mapping[str, str]) -> list[Stat]:
    pattern = query.get("filter")
    regex = re.compile(pattern) if pattern else None
    used_only = "usedonly" in query
    out: list[Stat] = []
    for stat in stats:
        if regex is not None and regex.search(stat.name) is None:
            continue
        if used_only and (not stat.bins if stat.bins is not None else stat.value == 0):
            continue
        out.append(stat)
    return out


def _number(value: float) -> str:
    return format(value, "g")


def text(stats: Sequence[Stat], query: Mapping[str, str]) -> bytes:
    """Envoy's /stats text format."""
    chosen = _selected(stats, query)
    lines = [f"{s.name}: {s.value}" for s in sorted(chosen, key=lambda s: s.name) if s.bins is None]
    for s in sorted((s for s in chosen if s.bins is not None), key=lambda s: s.name):
        ordered = s.bins or ()
        if not ordered:
            lines.append(f"{s.name}: No recorded values")
            continue
        parts = [f"P{_number(q)}(nan,{_number(quantile(ordered, q))})" for q in QUANTILES]
        lines.append(f"{s.name}: {' '.join(parts)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def to_json(stats: Sequence[Stat], query: Mapping[str, str]) -> bytes:
    """Envoy's /stats?format=json."""
    chosen = _selected(stats, query)
    entries: list[object] = [
        {"name": s.name, "value": s.value} for s in sorted(chosen, key=lambda s: s.name) if s.bins is None
    ]
    histograms = sorted((s for s in chosen if s.bins is not None), key=lambda s: s.name)
    if histograms:
        computed = []
        for s in histograms:
            ordered = s.bins or ()
            values = [{"interval": None, "cumulative": quantile(ordered, q) if ordered else None} for q in QUANTILES]
            computed.append({"name": s.name, "values": values})
        entries.append({"histograms": {"supported_quantiles": list(QUANTILES), "computed_quantiles": computed}})
    return json.dumps({"stats": entries}, indent=1).encode() + b"\n"
