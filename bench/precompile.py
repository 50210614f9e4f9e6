"""Precompiled artifacts vs compiling: load time of the largest corpus module, interleaved rounds.

Run by `make bench` (after `make plugins`). Each round compiles the module with wasmtime, then loads it through
meshplug.compiled.ArtifactCache (header check + payload sha256 + Module.deserialize), then through a bare
Module.deserialize of the same bytes (to show what the integrity check costs). Prints per-round times, the
medians and the ratio; exits 1 if loading is not at least 50x faster than compiling (the bar a
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
    cfg = wasmtime.Config()
    cfg.epoch_interruption = True  # as the agent's host runs
    engine = wasmtime.Engine(cfg)
    settings = "epoch_interruption=1"
    print(f"module {largest.key}: {largest.size} bytes, wasmtime {compiled.wasmtime_version()}, {args.rounds} rounds")

    with tempfile.TemporaryDirectory(prefix="meshplug-bench-") as tmp:
        cache = compiled.ArtifactCache(engine, settings=settings, root=Path(tmp))
        first = cache.load(data, sha256=largest.sha256)
        assert first.outcome is compiled.Outcome.MISS, first.outcome
        serialized = bytes(first.module.serialize())
        artifact_bytes = first.path.stat().st_size
        compile_s: list[float] = []
        load_s: list[float] = []
        raw_s: list[float] = []
        for i in range(args.rounds):
            t0 = time.perf_counter()
            wasmtime.Module(engine, data)
            t1 = time.perf_counter()
            loaded = cache.load(data, sha256=largest.sha256)
            t2 = time.perf_counter()
            wasmtime.Module.deserialize(engine, serialized)
            t3 = time.perf_counter()
            assert loaded.outcome is compiled.Outcome.HIT, loaded.outcome
            compile_s.append(t1 - t0)
            load_s.append(t2 - t1)
            raw_s.append(t3 - t2)
            print(
                f"round {i + 1}: compile {compile_s[-1] * 1e3:8.1f} ms   cache load {load_s[-1] * 1e3:6.2f} ms"
                f"   bare deserialize {raw_s[-1] * 1e3:6.2f} ms"
            )

    c, lo, r = statistics.median(compile_s), statistics.median(load_s), statistics.median(raw_s)
    ratios = [a / b for a, b in zip(compile_s, load_s, strict=True)]
    print(f"artifact {artifact_bytes} bytes")
    print(f"median compile {c * 1e3:.1f} ms | cache load {lo * 1e3:.2f} ms | bare deserialize {r * 1e3:.2f} ms")
    ratio = statistics.median(ratios)
    print(f"ratio compile/load: median {ratio:.1f}x (min {min(ratios):.1f}x); need >= {REQUIRED_RATIO}x")
    return 0 if ratio >= REQUIRED_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
