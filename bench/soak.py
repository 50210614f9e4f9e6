#!/usr/bin/env python3
"""Soak: memory over a million requests through a Go SDK plugin, and a leaking plugin recycled; agent vs Envoy.

Part 1 -- `--requests` (default 1,000,000) requests each through the agent and Envoy 1.40 (V8), same Go SDK plugin
(corpus go/headers, which allocates per request: the SDK's header maps and strings, garbage its GC collects inside
linear memory), same nginx upstream, wrk -t1 -c16 in chunks of `--chunk` seconds alternating between the two.
RSS (VmRSS) after the warm-up (the first `--warmup` requests) and after every chunk; growth after warm-up =
(last - warm-up) / warm-up. Target: agent < 5%.

Part 2 -- a guest that leaks one 64 KiB page per request (memory.grow, written so the pages are resident),
`--leak-requests` requests each: the agent recycles its VM whenever its linear memory passes
`wasm.recycle_memory_mb` (`--recycle-mb`, a fresh VM with the same configuration once no stream uses the old one)
and the memory goes back to the OS, so its RSS stays bounded; Envoy has no such mechanism (its RSS is printed
beside). CPU pinned as in the other benchmarks (proxies on CPU 1, wrk and nginx on CPU 0).

Usage: bench/soak.py [--requests 1000000] [--warmup 100000] [--chunk 10] [--leak-requests 3000]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CAN_PIN, LOAD_CPU, PROXY_CPU, measure, pin_pid, rss_mib, start_envoy
from tests.corpus import modules
from tests.guests.leaker import LEAKER
from tests.testbed import agent as tb_agent
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

GO_CONFIG = {"response": {"add": {"x-soak": "1"}}}


def start_agent(
    work: Path, name: str, upstream: int, wasm: Path, config: Any, *, recycle_mb: int
) -> tuple[procs.Proc, int]:
    port, admin = procs.free_port(), procs.free_port()
    plugins = [{"name": name, "module": {"file": str(wasm)}, "configuration": config}]
    raw = tb_agent.base_config(port=port, admin_port=admin, clusters={"upstream": upstream}, plugins=plugins)
    raw["wasm"] = {"recycle_memory_mb": recycle_mb}
    agent = tb_agent.start_agent(raw, work_dir=work / name, log_dir=work, name=name, log_level="warning")
    return agent.proc, port


def pinned(systems: dict[str, tuple[procs.Proc, int]]) -> list[str]:
    if not CAN_PIN:
        return []
    for proc, _ in systems.values():
        pin_pid(proc.pid, PROXY_CPU)
    return ["taskset", "-c", str(LOAD_CPU)]


def soak(systems: dict[str, tuple[procs.Proc, int]], total: int, warmup: int, chunk: int) -> dict[str, list[Any]]:
    """Chunks of wrk alternating between the systems until each served `total`; RSS after warm-up and chunks."""
    load = pinned(systems)
    served = dict.fromkeys(systems, 0)
    samples: dict[str, list[Any]] = {name: [] for name in systems}
    while any(n < total for n in served.values()):
        for name, (proc, port) in systems.items():
            if served[name] >= total:
                continue
            run = measure(proc.pid, port, chunk, load)
            before = served[name]
            served[name] += round(run.rps * chunk)
            if before < warmup <= served[name] or (not samples[name] and served[name] >= warmup):
                samples[name].append(("warm", served[name], rss_mib(proc.pid), run))
            elif served[name] >= warmup:
                samples[name].append(("run", served[name], rss_mib(proc.pid), run))
    return samples


def leak(systems: dict[str, tuple[procs.Proc, int]], requests: int) -> dict[str, list[tuple[int, float]]]:
    """`requests` to each system on one keep-alive connection, in steps of a tenth; RSS after each step."""
    out: dict[str, list[tuple[int, float]]] = {name: [(0, rss_mib(p.pid))] for name, (p, _) in systems.items()}
    step = max(1, requests // 10)
    for done in range(step, requests + 1, step):
        for name, (proc, port) in systems.items():
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for _ in range(step):
                conn.request("GET", "/")
                conn.getresponse().read()
            conn.close()
            time.sleep(1.2)  # the agent looks at its VMs' memory every second (not a synchronisation)
            out[name].append((done, rss_mib(proc.pid)))
    return out


def report_soak(args: argparse.Namespace, samples: dict[str, list[Any]], seconds: float) -> None:
    print(f"part 1: {args.module} (Go SDK), {args.requests} requests per proxy after a {args.warmup}-request warm-up")
    print(f"wrk -t1 -c16, {args.chunk}s chunks alternating agent/Envoy, {seconds:.0f}s; proxies pinned: {CAN_PIN}")
    print(f"{'system':<7}{'requests':>10}{'RSS warm MiB':>14}{'RSS max':>9}{'RSS last':>10}{'growth':>9}{'CPU/req':>9}")
    growth: dict[str, float] = {}
    for name, rows in samples.items():
        warm, last = rows[0][2], rows[-1][2]
        growth[name] = (last - warm) / warm * 100
        cpu = statistics.median(r[3].cpu_us for r in rows)
        print(
            f"{name:<7}{rows[-1][1]:>10}{warm:>14.1f}{max(r[2] for r in rows):>9.1f}{last:>10.1f}"
            f"{growth[name]:>8.1f}%{cpu:>9.1f}"
        )
    verdict = "met" if growth["agent"] < 5 else "NOT met"
    print(
        f"agent RSS growth after warm-up {growth['agent']:.1f}% (target < 5%: {verdict}); Envoy {growth['envoy']:.1f}%"
    )
    for name, rows in samples.items():
        print(f"RSS samples (MiB) {name}: {[round(r[2], 1) for r in rows]}")


def report_leak(args: argparse.Namespace, leaks: dict[str, list[tuple[int, float]]], recycles: int) -> None:
    print(f"part 2: a guest leaking 64 KiB per request, {args.leak_requests} requests on one connection;")
    print(f"agent wasm.recycle_memory_mb {args.recycle_mb}; VM recycles in the agent's log: {recycles}")
    for name, rows in leaks.items():
        print(f"  {name:<6} RSS MiB by requests: {', '.join(f'{n}: {r:.0f}' for n, r in rows)}")
    grew = {name: rows[-1][1] - rows[0][1] for name, rows in leaks.items()}
    print(f"  growth over the run: agent {grew['agent']:.0f} MiB (bounded: recycle mark + one VM), ", end="")
    print(f"Envoy {grew['envoy']:.0f} MiB (the leak itself: {args.leak_requests * 64 / 1024:.0f} MiB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--warmup", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--module", default="go/headers")
    ap.add_argument("--leak-requests", type=int, default=3000)
    ap.add_argument("--recycle-mb", type=int, default=32)
    args = ap.parse_args()
    wasm = modules.module(args.module).path
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        leaker = work / "leaker.wasm"
        leaker.write_bytes(wasmtime.wat2wasm(LEAKER))
        started: list[procs.Proc] = []
        try:
            upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
            started.append(upstream)
            up = upstream.ports["http"]
            systems = {
                "agent": start_agent(work, "agent", up, wasm, GO_CONFIG, recycle_mb=args.recycle_mb),
                "envoy": start_envoy(work, "envoy", up, wasm, GO_CONFIG),
            }
            started += [p for p, _ in systems.values()]
            t0 = time.monotonic()
            samples = soak(systems, args.requests, args.warmup, args.chunk)
            seconds = time.monotonic() - t0
            for proc, _ in systems.values():
                proc.stop()
            leaky = {
                "agent": start_agent(work, "agent-leak", up, leaker, {}, recycle_mb=args.recycle_mb),
                "envoy": start_envoy(work, "envoy-leak", up, leaker, {}),
            }
            started += [p for p, _ in leaky.values()]
            pinned(leaky)
            leaks = leak(leaky, args.leak_requests)
            recycles = leaky["agent"][0].log().count("recycled its VM")
        finally:
            for proc in reversed(started):
                proc.stop()
    report_soak(args, samples, seconds)
    report_leak(args, leaks, recycles)
    print(f"load average after the run: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
