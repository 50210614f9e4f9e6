"""Prometheus metrics of module supply, in the text exposition format, from a tiny registry.

The `Fetcher` records into a `FetchMetrics`; the operator's (or agent's) /metrics handler appends
`exposition()` to its own output. Names follow Istio's agent with a `meshplug_` prefix:

    meshplug_wasm_remote_fetch_total{result=...}   remote fetches by outcome (success or a FetchError reason)
    meshplug_wasm_fetch_duration_seconds{result}   histogram of remote fetches (signature checks included)
    meshplug_wasm_cache_lookup_total{hit=...}      fetch calls answered from the cache (true) or not (false)
    meshplug_wasm_cache_entries                    modules in the cache
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from meshplug import prometheus
from meshplug.fetch.artifact import Reason


class FetchMetrics:
    """Counters and one gauge; thread-safe."""

    def __init__(self, entries: Callable[[], int] | None = None) -> None:
        self._lock = threading.Lock()
        self._fetches: dict[str, int] = dict.fromkeys(Reason.ALL, 0)
        self._lookups = {"true": 0, "false": 0}
        self._entries = entries
        self.fetch_seconds = prometheus.Histogram(
            "meshplug_wasm_fetch_duration_seconds", "Duration of remote wasm module fetches, by result."
        )

    def record_fetch(self, result: str, seconds: float | None = None) -> None:
        with self._lock:
            self._fetches[result] = self._fetches.get(result, 0) + 1
        if seconds is not None:
            self.fetch_seconds.observe(seconds, result=result)

    def record_lookup(self, *, hit: bool) -> None:
        with self._lock:
            self._lookups["true" if hit else "false"] += 1

    def fetches(self, result: str) -> int:
        with self._lock:
            return self._fetches.get(result, 0)

    def lookups(self, *, hit: bool) -> int:
        with self._lock:
            return self._lookups["true" if hit else "false"]

    def exposition(self) -> str:
        with self._lock:
            fetches = dict(self._fetches)
            lookups = dict(self._lookups)
        lines = [
            "# HELP meshplug_wasm_remote_fetch_total Remote wasm module fetches by result.",
            "# TYPE meshplug_wasm_remote_fetch_total counter",
            *(f'meshplug_wasm_remote_fetch_total{{result="{r}"}} {n}' for r, n in sorted(fetches.items())),
            "# HELP meshplug_wasm_cache_lookup_total Wasm module requests answered from the cache (hit) or not.",
            "# TYPE meshplug_wasm_cache_lookup_total counter",
            *(f'meshplug_wasm_cache_lookup_total{{hit="{h}"}} {n}' for h, n in sorted(lookups.items())),
            *self.fetch_seconds.lines(),
        ]
        if self._entries is not None:
            lines += [
                "# HELP meshplug_wasm_cache_entries Wasm modules in the cache.",
                "# TYPE meshplug_wasm_cache_entries gauge",
                f"meshplug_wasm_cache_entries {self._entries()}",
            ]
        return "\n".join(lines) + "\n"
