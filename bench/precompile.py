"""Precompiled artifacts vs compiling, per compiler tier: the largest corpus module, interleaved rounds.

Run by `make bench` (after `make plugins`). Each round compiles the module with the agents' optimized engine
(Cranelift) and with the baseline one (Winch, meshplug.compiled.Tier), then loads the optimized artifact through
meshplug.compiled.ArtifactCache (header check + payload sha256 + Module.deserialize), the baseline artifact the
same way, and the optimized payload through a bare Module.deserialize (what the integrity check costs). Prints
per-round times, the medians and the ratios (baseline compile vs optimized compile: what the tiered rollout
saves before the first push); exits 1 if loading is not at least 50x faster than compiling optimized (the bar a
precompiled module must clear).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshplug import compiled
from tests.corpus import modules

REQUIRED_RATIO = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    largest = max(modules.all_modules().values(), key=lambda m: m.size)
    data = largest.path.read_bytes()
    tiers = [compiled.Tier.OPTIMIZED] + ([compiled.Tier.BASELINE] if compiled.baseline_available() else [])
    engines = {t: compiled.new_engine(t) for t in tiers}
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"module {largest.key}: {largest.size} bytes, wasmtime {compiled.wasmtime_version()}, {args.rounds} rounds, "
        f"load average {' '.join(load)}"
    )

    with tempfile.TemporaryDirectory(prefix="meshplug-bench-") as tmp:
        caches = {
            t: compiled.ArtifactCache(engines[t], settings=compiled.FINGERPRINTS[t], root=Path(tmp)) for t in tiers
        }
        for t in tiers:
            assert caches[t].load(data, sha256=largest.sha256).outcome is compiled.Outcome.MISS
        first = caches[compiled.Tier.OPTIMIZED].load(data, sha256=largest.sha256)
        serialized = bytes(first.module.serialize())
        sizes = {t: caches[t].path(caches[t].key(largest.sha256)).stat().st_size for t in tiers}
        compile_s: dict[compiled.Tier, list[float]] = {t: [] for t in tiers}
        load_s: dict[compiled.Tier, list[float]] = {t: [] for t in tiers}
        raw_s: list[float] = []
        for i in range(args.rounds):
            for t in tiers:
                t0 = time.perf_counter()
                wasmtime.Module(engines[t], data)
                compile_s[t].append(time.perf_counter() - t0)
            for t in tiers:
                t0 = time.perf_counter()
                loaded = caches[t].load(data, sha256=largest.sha256)
                load_s[t].append(time.perf_counter() - t0)
                assert loaded.outcome is compiled.Outcome.HIT, loaded.outcome
            t0 = time.perf_counter()
            wasmtime.Module.deserialize(engines[compiled.Tier.OPTIMIZED], serialized)
            raw_s.append(time.perf_counter() - t0)
            print(
                f"round {i + 1}: "
                + "   ".join(
                    f"{t} compile {compile_s[t][-1] * 1e3:8.1f} ms, load {load_s[t][-1] * 1e3:6.2f} ms" for t in tiers
                )
                + f"   bare deserialize {raw_s[-1] * 1e3:6.2f} ms"
            )

    for t in tiers:
        print(
            f"{t}: artifact {sizes[t]} bytes, median compile {statistics.median(compile_s[t]) * 1e3:.1f} ms, "
            f"cache load {statistics.median(load_s[t]) * 1e3:.2f} ms"
        )
    print(f"bare deserialize (optimized) {statistics.median(raw_s) * 1e3:.2f} ms")
    opt = compiled.Tier.OPTIMIZED
    if compiled.Tier.BASELINE in compile_s:
        speedup = [a / b for a, b in zip(compile_s[opt], compile_s[compiled.Tier.BASELINE], strict=True)]
        print(f"baseline compile is {statistics.median(speedup):.1f}x faster than optimized (median of rounds)")
    ratios = [a / b for a, b in zip(compile_s[opt], load_s[opt], strict=True)]
    ratio = statistics.median(ratios)
    print(f"ratio compile/load (optimized): median {ratio:.1f}x (min {min(ratios):.1f}x); need >= {REQUIRED_RATIO}x")
    return 0 if ratio >= REQUIRED_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
