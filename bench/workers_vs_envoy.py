#!/usr/bin/env python3
"""Two cores: the agent with --concurrency 1 and 2 vs Envoy 1.40 with --concurrency 1 and 2, same plugin, same cores.

Starts nginx (the upstream), the agent twice (one worker; two workers: `meshplug agent --concurrency 2`) and Envoy
twice (--concurrency 1 and 2), each with the same plugin (corpus rust/header_rules adding one response header,
on V8 for Envoy). Nothing is pinned: every proxy, nginx and wrk (-t2 -c32) share the machine's cores, as a busy
pod's sidecar does. Rounds are interleaved; per run: req/s, p50/p99, CPU per request (the proxy's whole process
tree: a multi-worker agent's parent and workers) and RSS. Prints medians and the two target ratios:
throughput of 2 agent workers / Envoy with 2 workers (target >= 1.0), and the agent's CPU per request with 2
workers / with 1 (target: unchanged, ~1.0).

Usage: bench/workers_vs_envoy.py [--rounds 5] [--seconds 4] [--module rust/header_rules] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Run, interleaved, start_agent, start_envoy
from tests.corpus import modules
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

CONFIG = {"response": {"add": {"x-bench": "1"}}}


def median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def parts(runs: list[Run]) -> list[tuple[str, float]]:
    """Each part's median CPU/req over the runs (parts under 0.05 us/req in every run left out)."""
    names = sorted({name for r in runs for name, _ in r.parts})
    out = [(n, statistics.median(dict(r.parts).get(n, 0.0) for r in runs)) for n in names]
    return [(n, v) for n, v in out if v >= 0.05]  # below the print's resolution


def ratio(a: list[Run], b: list[Run], field: str) -> float:
    return statistics.median(getattr(x, field) / getattr(y, field) for x, y in zip(a, b, strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument(
        "--baseline", type=Path, help="another checkout (built with `make native`): its agent x1 and xN run too"
    )
    args = ap.parse_args()
    n = args.workers
    wasm = modules.module(args.module).path
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        started: list[procs.Proc] = []
        try:
            upstream = tb_nginx.start_nginx(log_dir=work)
            started.append(upstream)
            up = upstream.ports["http"]
            systems: dict[str, tuple[int, int]] = {}
            compared: list[tuple[str, Path | None, int]] = [("agent x1", None, 1), (f"agent x{n}", None, n)]
            if args.baseline is not None:
                compared += [("before x1", args.baseline, 1), (f"before x{n}", args.baseline, n)]
            for name, source, workers in compared:
                proc, port = start_agent(
                    work, name.replace(" ", "-"), up, wasm, CONFIG, concurrency=workers, source=source
                )
                started.append(proc)
                systems[name] = (proc.pid, port)
            for name, workers in (("envoy x1", 1), (f"envoy x{n}", n)):
                proc, port = start_envoy(work, name.replace(" ", "-"), up, wasm, CONFIG, concurrency=workers)
                started.append(proc)
                systems[name] = (proc.pid, port)
            load = ("-t2", f"-c{args.connections}")
            runs = interleaved(systems, args.rounds, args.seconds, pin=False, load=load)
        finally:
            for proc in reversed(started):
                proc.stop()
    report(runs, args)
    return 0


def report(runs: dict[str, list[Run]], args: argparse.Namespace) -> None:
    n = args.workers
    print(f"{args.module} adding one response header; nginx upstream; ", end="")
    print(f"wrk -t2 -c{args.connections} -d{args.seconds}s")
    print(f"{args.rounds} interleaved rounds, medians; nothing pinned (proxies, nginx and wrk share every core)")
    print(f"{'system':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU/req us':>11} {'RSS MiB':>8} {'cs/req':>7}")
    for name, rs in runs.items():
        print(
            f"{name:<10} {median(rs, 'rps'):>9.0f} {median(rs, 'p50_ms'):>8.2f} {median(rs, 'p99_ms'):>8.2f} "
            f"{median(rs, 'cpu_us'):>11.1f} {median(rs, 'rss_mib'):>8.1f} {median(rs, 'switches'):>7.2f}"
        )
    print("CPU/req by process (agent: parent, workers) or thread (envoy: main, wrk:worker_N, others), us:")
    for name, rs in runs.items():
        print(f"  {name:<10} " + ", ".join(f"{part} {value:.1f}" for part, value in parts(rs)))
    a1, an, e1, en = runs["agent x1"], runs[f"agent x{n}"], runs["envoy x1"], runs[f"envoy x{n}"]
    throughput = ratio(an, en, "rps")
    verdict = "met" if throughput >= 1 else "NOT met"
    print(f"throughput agent x{n} / envoy x{n}: {throughput:.2f}x (target >= 1.00: {verdict})")
    print(f"CPU/req agent x{n} / agent x1: {ratio(an, a1, 'cpu_us'):.2f}x (target ~1.00: unchanged)")
    print(f"CPU/req agent x{n} / envoy x{n}: {ratio(an, en, 'cpu_us'):.2f}x", end="; ")
    print(f"envoy x{n} / envoy x1: {ratio(en, e1, 'cpu_us'):.2f}x")
    print(f"scaling x1 -> x{n}: agent {ratio(an, a1, 'rps'):.2f}x, envoy {ratio(en, e1, 'rps'):.2f}x")
    if args.baseline is not None:
        b1, bn = runs["before x1"], runs[f"before x{n}"]
        print(
            f"before ({args.baseline}): CPU/req x{n} / x1 {ratio(bn, b1, 'cpu_us'):.2f}x; "
            f"agent / before: x1 {ratio(a1, b1, 'cpu_us'):.2f}x, x{n} {ratio(an, bn, 'cpu_us'):.2f}x"
        )
    print(f"load average after the run: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    raise SystemExit(main())
