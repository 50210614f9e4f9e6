"""A strict reader of the Prometheus text format (0.0.4) for tests: every sample belongs to a family announced by
HELP and TYPE, counters end in ``_total``, histograms have cumulative buckets ending in ``le="+Inf"`` equal to
``_count``, no per-plugin metric names (plugins are labels). `check(text)` returns the families or raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.eE+-]+|\+Inf|NaN)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Family:
    name: str
    kind: str = ""
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def check(text: str) -> dict[str, Family]:
    families: dict[str, Family] = {}
    current: Family | None = None
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} announced twice"
            current = families[name] = Family(name, help=help_text)
            assert help_text, f"{name}: empty HELP"
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is not None and current.name == name, f"TYPE {name} without its HELP first"
            assert kind in ("counter", "gauge", "histogram", "untyped"), line
            current.kind = kind
            if kind == "counter":
                assert name.endswith("_total"), f"counter {name} must end in _total"
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels = m.group(1), dict(_LABEL.findall(m.group(3) or ""))
        assert current is not None and current.kind, f"sample {name} outside a family"
        base = current.name
        allowed = {base} if current.kind != "histogram" else {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
        assert name in allowed, f"sample {name} inside family {base}"
        current.samples.append((name, labels, float(m.group(4).replace("+Inf", "inf"))))
    for fam in families.values():
        assert fam.kind, f"{fam.name}: no TYPE"
        if fam.kind == "histogram":
            _check_histogram(fam)
    return families


def _check_histogram(fam: Family) -> None:
    series: dict[tuple[tuple[str, str], ...], list[tuple[str, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for name, sample_labels, value in fam.samples:
        labels = dict(sample_labels)
        if name.endswith("_bucket"):
            le = labels.pop("le")
            series.setdefault(tuple(sorted(labels.items())), []).append((le, value))
        elif name.endswith("_count"):
            counts[tuple(sorted(labels.items()))] = value
    for key, buckets in series.items():
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{fam.name}{key}: buckets not cumulative"
        assert buckets[-1][0] == "+Inf" and buckets[-1][1] == counts.get(key), f"{fam.name}{key}: +Inf != _count"


def value(families: dict[str, Family], sample: str, **labels: str) -> float | None:
    """The value of ``sample`` with exactly ``labels`` (None when absent)."""
    for fam in families.values():
        for name, lbls, v in fam.samples:
            if name == sample and lbls == labels:
                return v
    return None
