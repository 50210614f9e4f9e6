#!/usr/bin/env python3
"""meshplug's agent vs Envoy 1.40 + V8, same header-adding plugin, same nginx upstream: CPU per request.

Starts everything it compares: Debian nginx-light (the upstream, pinned to CPU 0), the agent (`meshplug agent`,
one plugin: corpus rust/header_rules adding one response header) and Envoy (--concurrency 1, the same module
and configuration on V8), both proxies pinned to CPU 1 with taskset (when the machine has 2+ CPUs), and
Debian wrk (-t1 -c16, pinned to CPU 0). Rounds are interleaved (agent, Envoy, agent, Envoy, ...). Per run:
req/s, p50/p99 latency (wrk --latency), proxy CPU per request (sum of /proc/PID/task/*/schedstat before and
after, divided by the requests wrk completed), and resident memory (VmRSS). Prints medians per system and
the median of the per-round agent/Envoy ratios. Loopback only; about rounds * 2 * seconds + ~20 s.

`--baseline DIR` adds a third system, "baseline": the agent of another checkout (its `make native` build),
interleaved with the others, to measure a change before/after in one run (the ratio is printed too).

Usage: bench/agent_vs_envoy.py [--rounds 5] [--seconds 5] [--module rust/header_rules] [--no-plugin]
       [--baseline DIR] [--source DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CAN_PIN, LOAD_CPU, interleaved, start_agent, start_envoy
from tests.corpus import modules
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

CONFIG = {"response": {"add": {"x-bench": "1"}}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--no-plugin", action="store_true", help="compare the bare proxies")
    ap.add_argument("--baseline", type=Path, help="also run the agent of this checkout (e.g. before a change)")
    ap.add_argument("--source", type=Path, help="run the agent of this checkout instead of this one")
    args = ap.parse_args(argv)
    wasm = None if args.no_plugin else modules.module(args.module).path
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        started: list[procs.Proc] = []
        try:
            upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
            started.append(upstream)
            up_port = upstream.ports["http"]
            source = args.source.resolve() if args.source is not None else None
            agent, a_port = start_agent(work, "agent", up_port, wasm, CONFIG, source=source)
            started.append(agent)
            envoy, e_port = start_envoy(work, "envoy", up_port, wasm, CONFIG)
            started.append(envoy)

            systems = {"agent": (agent.pid, a_port), "envoy": (envoy.pid, e_port)}
            if args.baseline is not None:
                base, b_port = start_agent(work, "baseline", up_port, wasm, CONFIG, source=args.baseline.resolve())
                started.append(base)
                systems["baseline"] = (base.pid, b_port)
            runs = interleaved(systems, args.rounds, args.seconds)
        finally:
            for proc in reversed(started):
                proc.stop()

    what = "no plugin" if args.no_plugin else f"{args.module} adding one response header"
    print(f"agent vs Envoy 1.40+V8, {what}; nginx upstream; wrk -t1 -c16 -d{args.seconds}s")
    print(f"{args.rounds} interleaved rounds, medians; proxies pinned: {'CPU 1' if CAN_PIN else 'no'}")
    print(f"{'system':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU/req us':>11} {'RSS MiB':>8}")
    for name, rs in runs.items():
        print(
            f"{name:<8} {statistics.median(r.rps for r in rs):>9.0f} {statistics.median(r.p50_ms for r in rs):>8.2f} "
            f"{statistics.median(r.p99_ms for r in rs):>8.2f} {statistics.median(r.cpu_us for r in rs):>11.1f} "
            f"{statistics.median(r.rss_mib for r in rs):>8.1f}"
        )
    cpu_ratio = statistics.median(a.cpu_us / e.cpu_us for a, e in zip(runs["agent"], runs["envoy"], strict=True))
    rps_ratio = statistics.median(a.rps / e.rps for a, e in zip(runs["agent"], runs["envoy"], strict=True))
    rss_ratio = statistics.median(a.rss_mib / e.rss_mib for a, e in zip(runs["agent"], runs["envoy"], strict=True))
    print(f"ratios agent/envoy: CPU/req {cpu_ratio:.2f}x  req/s {rps_ratio:.2f}x  RSS {rss_ratio:.2f}x")
    print(f"per-round CPU/req agent: {[round(r.cpu_us, 1) for r in runs['agent']]}")
    print(f"per-round CPU/req envoy: {[round(r.cpu_us, 1) for r in runs['envoy']]}")
    if "baseline" in runs:
        pairs = zip(runs["agent"], runs["baseline"], strict=True)
        print(f"per-round CPU/req baseline: {[round(r.cpu_us, 1) for r in runs['baseline']]}")
        print(f"ratio agent/baseline: CPU/req {statistics.median(a.cpu_us / b.cpu_us for a, b in pairs):.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
