#!/usr/bin/env python3
"""meshplug's agent vs Envoy 1.40, the same Lua filter adding a header (Envoy's own Lua filter on LuaJIT vs the
agent's on lupa's LuaJIT): CPU per request, RSS, latency.

Same method as bench/agent_vs_envoy.py (bench/_common.py): Debian nginx-light upstream and wrk -t1 -c16 pinned
to CPU 0, both proxies pinned to CPU 1, interleaved rounds, medians, per-round ratios. The script adds one
response header (`envoy_on_response`); `--both` adds a request header too (a coroutine per direction).
`--copies N` puts N copies of the filter in each chain (one copy's cost is a few microseconds, under the
proxies' round-to-round noise; more copies make it visible); `--bare` also runs both proxies without filters
and prints the added cost per filter. Loopback only; about rounds * systems * seconds + ~20 s.

Usage: bench/lua_vs_envoy.py [--rounds 5] [--seconds 4] [--copies 1] [--both] [--bare]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CAN_PIN, LOAD_CPU, interleaved, start_agent_with, start_envoy_with
from tests.corpus.bootstrap import lua_filter
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

RESPONSE = 'function envoy_on_response(handle)\n  handle:headers():add("x-bench", "1")\nend\n'
REQUEST = 'function envoy_on_request(handle)\n  handle:headers():add("x-bench-request", "1")\nend\n'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--both", action="store_true", help="also add a request header")
    ap.add_argument("--bare", action="store_true", help="also run both proxies without filters")
    args = ap.parse_args(argv)
    code = (REQUEST if args.both else "") + RESPONSE
    with tempfile.TemporaryDirectory(prefix="bench-lua-") as tmp:
        work = Path(tmp)
        started: list[procs.Proc] = []
        systems: dict[str, tuple[int, int]] = {}
        try:
            upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
            started.append(upstream)
            up = upstream.ports["http"]
            chains = {"": args.copies, "bare-": 0} if args.bare else {"": args.copies}
            for prefix, n in chains.items():
                agent, a_port = start_agent_with(
                    work, f"{prefix}agent", up, [{"name": f"lua-{i}", "lua": {"inline_code": code}} for i in range(n)]
                )
                started.append(agent)
                envoy, e_port = start_envoy_with(
                    work, f"{prefix}envoy", up, [lua_filter(f"lua-{i}", f"lua{i}", code) for i in range(n)]
                )
                started.append(envoy)
                systems[f"{prefix}agent"] = (agent.pid, a_port)
                systems[f"{prefix}envoy"] = (envoy.pid, e_port)
            runs = interleaved(systems, args.rounds, args.seconds)
        finally:
            for proc in reversed(started):
                proc.stop()

    what = "request + response header" if args.both else "one response header"
    print(f"agent vs Envoy 1.40, Lua filter adding {what}, {args.copies} cop{'y' if args.copies == 1 else 'ies'}")
    print(f"nginx upstream; wrk -t1 -c16 -d{args.seconds}s; {args.rounds} interleaved rounds, medians;"
          f" proxies pinned: {'CPU 1' if CAN_PIN else 'no'}")  # fmt: skip
    print(f"{'system':<12} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU/req us':>11} {'RSS MiB':>8}")
    for name, rs in runs.items():
        print(
            f"{name:<12} {statistics.median(r.rps for r in rs):>9.0f} {statistics.median(r.p50_ms for r in rs):>8.2f} "
            f"{statistics.median(r.p99_ms for r in rs):>8.2f} {statistics.median(r.cpu_us for r in rs):>11.1f} "
            f"{statistics.median(r.rss_mib for r in rs):>8.1f}"
        )

    def ratio(field: str, a: str = "agent", e: str = "envoy") -> float:
        return statistics.median(getattr(x, field) / getattr(y, field) for x, y in zip(runs[a], runs[e], strict=True))

    print(f"ratios agent/envoy: CPU/req {ratio('cpu_us'):.2f}x  req/s {ratio('rps'):.2f}x  RSS {ratio('rss_mib'):.2f}x")
    if args.bare:
        for system in ("agent", "envoy"):
            added = statistics.median(
                (x.cpu_us - y.cpu_us) / args.copies for x, y in zip(runs[system], runs[f"bare-{system}"], strict=True)
            )
            print(f"added CPU/req per Lua filter, {system}: {added:.1f} us")
    print(f"per-round CPU/req agent: {[round(r.cpu_us, 1) for r in runs['agent']]}")
    print(f"per-round CPU/req envoy: {[round(r.cpu_us, 1) for r in runs['envoy']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
