#!/usr/bin/env python3
"""meshplug's agent vs Envoy 1.40 + V8, same header-adding plugin, same nginx upstream: CPU per request.

Starts everything it compares: Debian nginx-light (the upstream, pinned to CPU 0), the agent (`meshplug agent`,
one plugin: corpus rust/header_rules adding one response header) and Envoy (--concurrency 1, the same module
and configuration on V8), both proxies pinned to CPU 1 with taskset (when the machine has 2+ CPUs), and
Debian wrk (-t1 -c16, pinned to CPU 0). Rounds are interleaved (agent, Envoy, agent, Envoy, ...). Per run:
req/s, p50/p99 latency (wrk --latency), proxy CPU per request (sum of /proc/PID/task/*/schedstat before and
after, divided by the requests wrk completed), and resident memory (VmRSS). Prints medians per system and
the median of the per-round agent/Envoy ratios. Loopback only; about rounds * 2 * seconds + ~20 s.

Usage: bench/agent_vs_envoy.py [--rounds 5] [--seconds 5] [--module rust/header_rules] [--no-plugin]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import cpu_ns
from tests.corpus import modules
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

CONFIG = {"response": {"add": {"x-bench": "1"}}}
PROXY_CPU, LOAD_CPU = 1, 0


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    rss_mib: float


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if m is None:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def measure(pid: int, port: int, seconds: int, pin: list[str]) -> Run:
    before = cpu_ns(pid)
    out = subprocess.run(
        [*pin, "wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_ns(pid) - before
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    if m is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors under load:\n{out}")
    n = int(m.group(1))
    return Run(n / float(m.group(2)), _ms(out, "50"), _ms(out, "99"), used / n / 1000, rss_mib(pid))


def pin_pid(pid: int, cpu: int) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--no-plugin", action="store_true", help="compare the bare proxies")
    args = ap.parse_args(argv)
    procs.which_or_fail("wrk", "install Debian wrk (scripts/install-system-deps.sh)")
    can_pin = (os.cpu_count() or 1) > 1
    load_pin = ["taskset", "-c", str(LOAD_CPU)] if can_pin else []
    wasm = modules.module(args.module).path
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        work = Path(tmp)
        started: list[procs.Proc] = []
        try:
            upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if can_pin else None)
            started.append(upstream)
            up_port = upstream.ports["http"]

            plugins = []
            if not args.no_plugin:
                plugins = [{"name": "bench", "module": {"file": str(wasm)}, "configuration": CONFIG}]
            a_port, a_admin = procs.free_port(), procs.free_port()
            raw = tb_agent.base_config(port=a_port, admin_port=a_admin, clusters={"upstream": up_port}, plugins=plugins)
            agent = tb_agent.start_agent(raw, work_dir=work / "agent", log_dir=work, log_level="warning")
            started.append(agent.proc)

            e_port, e_admin = procs.free_port(), procs.free_port()
            filters = []
            if not args.no_plugin:
                filters = [
                    {
                        "name": "envoy.filters.http.wasm",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                            "config": {
                                "name": "bench",
                                "configuration": {
                                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                                    "value": json.dumps(CONFIG),
                                },
                                "vm_config": {
                                    "runtime": "envoy.wasm.runtime.v8",
                                    "code": {"local": {"filename": str(wasm)}},
                                },
                            },
                        },
                    }
                ]
            listener = tb_envoy.http_listener("bench", e_port, cluster="upstream", http_filters=filters)
            cfg = tb_envoy.bootstrap(e_admin, [listener], [tb_envoy.static_cluster("upstream", up_port)])
            path = tb_envoy.write_config(cfg, work / "envoy.json")
            envoy = tb_envoy.start_envoy(path, admin_port=e_admin, log_dir=work, component_log_levels="wasm:warn")
            started.append(envoy.proc)

            systems = {"agent": (agent.proc.pid, a_port), "envoy": (envoy.proc.pid, e_port)}
            for pid, port in systems.values():
                if can_pin:
                    pin_pid(pid, PROXY_CPU)
                measure(pid, port, 1, load_pin)  # warm up: connections, JIT, caches
            runs: dict[str, list[Run]] = {name: [] for name in systems}
            for _ in range(args.rounds):
                for name, (pid, port) in systems.items():
                    runs[name].append(measure(pid, port, args.seconds, load_pin))
        finally:
            for proc in reversed(started):
                proc.stop()

    what = "no plugin" if args.no_plugin else f"{args.module} adding one response header"
    print(f"agent vs Envoy 1.40+V8, {what}; nginx upstream; wrk -t1 -c16 -d{args.seconds}s")
    print(f"{args.rounds} interleaved rounds, medians; proxies pinned: {'CPU 1' if can_pin else 'no'}")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
