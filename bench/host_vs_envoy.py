#!/usr/bin/env python3
"""Added CPU per request of one header-adding plugin: meshplug's host vs Envoy 1.40 + V8.

meshplug side (in-process, the host's whole per-request lifecycle through the sans-IO chain: context
create, request headers, response headers, log/done/delete): process CPU (time.process_time) per request
with the plugin minus the same loop with an empty chain, for the fast and the public wasm backend.
Proxies, side by side: nginx upstream; meshplug's agent and Envoy (V8), each without and with the plugin
(same module and configuration), pinned to one CPU, `wrk -t1 -c16` against each in interleaved rounds; CPU
per request from /proc/PID/task/*/schedstat, RSS from /proc/PID/status. Prints every system's CPU/req and
RSS, the added cost of the plugin for the host in process, the agent end to end and Envoy (medians of
per-round differences), and the host/Envoy ratio (target <= 2).

Each chain carries the plugin `--plugins` times (default 5; each copy adds the header) and every added cost
is divided by that count: one plugin's few microseconds are otherwise within the proxies' round-to-round noise
here (Envoy's bare CPU/req varies by +-10% between rounds). Each proxy also runs a chain of twice as many
copies: (with 2k - with k) / k is the marginal cost of one more plugin once a chain exists (without what
engaging any filter chain costs once per request), and agent / Envoy with 2k copies (default 10) is the
long-chain ratio (the targets: marginal <= 1.0x Envoy's, 10-plugin chain <= 0.8x).

With `--instructions` the same six proxies run under callgrind (bench/_callgrind.py) instead and the same figures
are printed in instructions per request (user space, h2load --h1 -n `--requests` -c 16 per counted run), the
signal a loaded machine cannot move; nothing is timed then.

Usage: bench/host_vs_envoy.py [--module rust/header_rules] [--rounds 5] [--seconds 3] [--plugins 5]
       bench/host_vs_envoy.py --instructions [--rounds 1] [--requests 1000] [--plugins 5] [--dumps DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _callgrind
from bench._common import CAN_PIN, LOAD_CPU, PROXY_CPU, Run, interleaved, start_agent, start_envoy
from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.corpus import modules
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

CONFIG = {
    "request": {"add": {}, "set": {}, "remove": []},
    "response": {"add": {"x-bench": "1"}, "set": {}, "remove": []},
}
REQ_HEADERS = [(b"host", b"svc"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
RESP_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"2"), (b"server", b"nginx")]


# --- meshplug ---------------------------------------------------------------------------------------
def _loop(ch: C.Chain, n: int) -> float:
    t0 = time.process_time()
    for _ in range(n):
        s = ch.new_stream()
        s.recv_request_headers(C.http1_request_headers(b"GET", b"/", REQ_HEADERS), True)
        s.recv_response_headers(C.http1_response_headers(200, RESP_HEADERS), False)
        s.recv_response_data(b"ok", True)
        s.complete()
    return (time.process_time() - t0) / n


def host_added_us(data: bytes, backend: str, rounds: int, n: int, count: int) -> tuple[float, float]:
    """(median added CPU per request per plugin with `count` of them, median CPU per request of the empty
    chain), in us."""
    host = H.Host(backend=backend)
    config = json.dumps(CONFIG).encode()
    plugins = [host.load(H.PluginConfig(name=f"bench-{i}", configuration=config), data) for i in range(count)]
    with_p, without = C.Chain(plugins), C.Chain([])
    _loop(with_p, n // 10)
    diffs, bases = [], []
    for _ in range(rounds):
        a = _loop(without, n)
        b = _loop(with_p, n)
        diffs.append((b - a) * 1e6 / count)
        bases.append(a * 1e6)
    return statistics.median(diffs), statistics.median(bases)


# --- the proxies -------------------------------------------------------------------------------------
#: (name, start, with the module, copies per `--plugins`)
SYSTEMS = (
    ("agent", start_agent, False, 1),
    ("agent+plugin", start_agent, True, 1),
    ("agent+2x", start_agent, True, 2),
    ("envoy", start_envoy, False, 1),
    ("envoy+plugin", start_envoy, True, 1),
    ("envoy+2x", start_envoy, True, 2),
)


@contextlib.contextmanager
def _systems(
    wasm: Path, work: Path, count: int, *, prefix: str = "", wrapper: Sequence[str] = ()
) -> Iterator[dict[str, tuple[int, int]]]:
    """The six `SYSTEMS` (agent and Envoy, each without, with `count` and with 2 * `count` copies of the plugin)
    on one nginx upstream, each under `wrapper` (callgrind) when given: name -> (pid, port); stopped after."""
    started: list[procs.Proc] = []
    try:
        upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
        started.append(upstream)
        up = upstream.ports["http"]
        systems: dict[str, tuple[int, int]] = {}
        for name, start, module, copies in SYSTEMS:
            module_path = wasm if module else None
            label = prefix + name.replace("+", "-")
            proc, port = start(work, label, up, module_path, CONFIG, count=copies * count, wrapper=wrapper)
            started.append(proc)
            systems[name] = (proc.pid, port)
        yield systems
    finally:
        for proc in reversed(started):
            proc.stop()


def proxies_added(wasm: Path, rounds: int, seconds: int, work: Path, count: int) -> dict[str, list[Run]]:
    """The six systems, same nginx upstream, interleaved."""
    with _systems(wasm, work, count) as systems:
        return interleaved(systems, rounds, seconds)


def proxies_counted(
    wasm: Path, work: Path, *, rounds: int, requests: int, count: int, dumps: Path
) -> dict[str, list[float]]:
    """`proxies_added` under callgrind: instructions per request of each system, `rounds` counted runs of
    `requests` each, interleaved (the first, uncounted, warms up); callgrind's dumps go to `dumps`
    (cg.<pid>.<n>, for callgrind_annotate)."""
    dumps.mkdir(parents=True, exist_ok=True)
    seen: set[Path] = set()
    with _systems(wasm, work, count, prefix="cg-", wrapper=_callgrind.valgrind_argv(dumps)) as systems:
        for name, (pid, _port) in systems.items():
            print(f"{name}: callgrind dumps {dumps}/cg.{pid}.*", file=sys.stderr)
        for _pid, port in systems.values():
            _callgrind.load(port, min(requests, 200), 16)
        counts: dict[str, list[float]] = {name: [] for name in systems}
        for _ in range(rounds):
            for name, (pid, port) in systems.items():
                counted = _callgrind.count(pid, port, dumps, requests=requests, connections=16, seen=seen)
                counts[name].append(counted.per_request)
        return counts


def instructions_report(counts: dict[str, list[float]], k: int, requests: int) -> None:
    """The figures of `main` in instructions per request (medians of per-round values)."""

    def med(name: str) -> float:
        return statistics.median(counts[name])

    def per_plugin(system: str, more: str, base: str) -> float:
        pairs = zip(counts[f"{system}{more}"], counts[f"{system}{base}"], strict=True)
        return statistics.median((w - b) / k for w, b in pairs)

    def ratio(chain: str) -> float:
        pairs = zip(counts[f"agent{chain}"], counts[f"envoy{chain}"], strict=True)
        return statistics.median(a / e for a, e in pairs)

    rounds = len(counts["agent"])
    print(f"instructions per request (callgrind, user space; h2load --h1 -n {requests} -c 16; {rounds} rounds)")
    for name in counts:
        print(f"  {name:<14}{med(name):>12,.0f}")
    added_a, added_e = per_plugin("agent", "+plugin", ""), per_plugin("envoy", "+plugin", "")
    slope_a, slope_e = per_plugin("agent", "+2x", "+plugin"), per_plugin("envoy", "+2x", "+plugin")
    print(f"added per plugin with {k}: agent {added_a:,.0f}, Envoy {added_e:,.0f} ({added_a / added_e:.2f}x)")
    print(f"marginal ({2 * k} vs {k}): agent {slope_a:,.0f}, Envoy {slope_e:,.0f} ({slope_a / slope_e:.2f}x)")
    entry_a, entry_e = k * (added_a - slope_a), k * (added_e - slope_e)
    print(f"chain entry (with {k} - {k} x marginal): agent {entry_a:,.0f}, Envoy {entry_e:,.0f}")
    print(f"agent / envoy with {k} plugins {ratio('+plugin'):.2f}x, with {2 * k} {ratio('+2x'):.2f}x")


def _added(runs: dict[str, list[Run]], system: str, count: int, *, more: str = "+plugin", base: str = "") -> float:
    """Median over rounds of (with plugins - without) / plugins: the added CPU per request of one plugin;
    `more`/`base`: which two chains of the system to compare (default: `count` copies and none)."""
    pairs = zip(runs[f"{system}{more}"], runs[f"{system}{base}"], strict=True)
    return statistics.median((w.cpu_us - b.cpu_us) / count for w, b in pairs)


def _ratio(runs: dict[str, list[Run]], chain: str) -> float:
    """Median over rounds of agent / Envoy CPU per request for the same chain."""
    pairs = zip(runs[f"agent{chain}"], runs[f"envoy{chain}"], strict=True)
    return statistics.median(a.cpu_us / e.cpu_us for a, e in pairs)


def _met(value: float, target: float) -> str:
    return "met" if value <= target else "NOT met"


def instructions_main(args: argparse.Namespace, wasm: Path) -> int:
    """`--instructions`: the proxies under callgrind, the figures in instructions per request."""
    why = _callgrind.available()
    if why is not None:
        raise SystemExit(f"--instructions: {why}")
    k = args.plugins
    with tempfile.TemporaryDirectory(prefix="mp-bench-cg-") as tmp:
        dumps = args.dumps or Path(tmp) / "dumps"
        counts = proxies_counted(wasm, Path(tmp), rounds=args.rounds, requests=args.requests, count=k, dumps=dumps)
    print(f"module {args.module} x{k} per chain")
    instructions_report(counts, k, args.requests)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument(
        "--plugins",
        type=int,
        default=5,
        help="copies of the plugin in each chain; the added cost is divided by it (lifts one plugin's few us "
        "above the proxies' round-to-round noise)",
    )
    ap.add_argument("--instructions", action="store_true", help="count instructions (callgrind) instead of timing")
    ap.add_argument("--dumps", type=Path, help="--instructions: keep callgrind's dumps here (cg.<pid>.<n>)")
    args = ap.parse_args()
    built = modules.module(args.module)
    data = built.path.read_bytes()
    k = args.plugins
    if args.instructions:
        return instructions_main(args, built.path)
    if CAN_PIN:  # the in-process loop on the proxies' CPU, as the proxies run
        os.sched_setaffinity(0, {PROXY_CPU})
    fast, chain_base = host_added_us(data, "fast", args.rounds, args.requests, k)
    public, _ = host_added_us(data, "public", max(2, args.rounds // 2), max(300, args.requests // 10), k)
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        runs = proxies_added(built.path, args.rounds, args.seconds, Path(tmp), k)
    envoy, agent = _added(runs, "envoy", k), _added(runs, "agent", k)
    print(f"module {args.module} x{k} per chain, {args.rounds} interleaved rounds, wrk -t1 -c16 -d{args.seconds}s")
    print(f"{'system':<14}{'CPU/req us':>12}{'RSS MiB':>10}{'req/s':>10}")
    for name, rs in runs.items():
        cpu, rss = statistics.median(r.cpu_us for r in rs), statistics.median(r.rss_mib for r in rs)
        print(f"{name:<14}{cpu:>12.1f}{rss:>10.1f}{statistics.median(r.rps for r in rs):>10.0f}")
    print(f"added CPU per request of one plugin (us; medians of per-round (with {k} - without) / {k})")
    print(f"  {'meshplug host in process, fast backend':<44}{fast:>8.1f}")
    print(f"  {'meshplug host in process, public backend':<44}{public:>8.1f}")
    print(f"  {'(meshplug empty chain in process, per request)':<44}{chain_base:>8.1f}")
    print(f"  {'agent end to end (agent+plugins - agent)':<44}{agent:>8.1f}")
    print(f"  {'Envoy 1.40 + V8 (envoy+plugins - envoy)':<44}{envoy:>8.1f}")
    ratio = fast / envoy if envoy > 0 else float("inf")
    print(f"ratio host(fast)/Envoy = {ratio:.2f}  (target <= 2.00: {'met' if ratio <= 2 else 'NOT met'})")
    print(f"agent+plugins / envoy+plugins CPU per request = {_ratio(runs, '+plugin'):.2f}x")
    slope_a = _added(runs, "agent", k, more="+2x", base="+plugin")
    slope_e = _added(runs, "envoy", k, more="+2x", base="+plugin")
    print(f"marginal CPU of one more plugin (us; medians of per-round (with {2 * k} - with {k}) / {k})")
    print(f"  {'agent':<44}{slope_a:>8.1f}")
    print(f"  {'Envoy 1.40 + V8':<44}{slope_e:>8.1f}")
    marginal = agent / envoy if envoy > 0 else float("inf")
    print(
        f"ratio agent/Envoy, added per plugin with {k}: {marginal:.2f}x (target <= 1.00: {_met(marginal, 1.0)}); "
        f"marginal ({2 * k} vs {k}): {slope_a / slope_e if slope_e > 0 else float('inf'):.2f}x"
    )
    long_chain = _ratio(runs, "+2x")
    verdict = _met(long_chain, 0.8)
    print(f"agent / envoy CPU per request with {2 * k} plugins = {long_chain:.2f}x (target <= 0.80: {verdict})")
    print(f"per-round CPU/req envoy: {[round(r.cpu_us, 1) for r in runs['envoy']]}")
    print(f"per-round CPU/req envoy+plugins: {[round(r.cpu_us, 1) for r in runs['envoy+plugin']]}")
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"load average after the run: {' '.join(load)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
