#!/usr/bin/env python3
"""Two cores: the agent with --concurrency 1 and 2 vs Envoy 1.40 with --concurrency 1 and 2, same plugin, same cores.

Starts nginx (the upstream), the agent twice (one worker; two workers: `meshplug agent --concurrency 2`) and Envoy
twice (--concurrency 1 and 2), each with the same plugin (corpus rust/header_rules adding one response header,
on V8 for Envoy). Nothing is pinned: every proxy, nginx and wrk (-t2 -c32) share the machine's cores, as a busy
pod's sidecar does. Rounds are interleaved; per run: req/s, p50/p99, CPU per request (the proxy's whole process
tree: a multi-worker agent's parent and workers) and RSS. Prints medians and the two target ratios:
throughput of 2 agent workers / Envoy with 2 workers (target >= 1.0), and the agent's CPU per request with 2
workers / with 1 (target: unchanged, ~1.0).

The control ("pair"): N separate one-worker proxies side by side, each loaded by a wrk of its own (-t1, its
share of the connections), CPU/req over all of them. It does what N workers do to the machine (N busy proxy
processes beside wrk and nginx on the same cores) without anything of the workers' design (no shared port,
store or parent): what N workers cost beyond the pair is theirs; what the pair costs beyond x1 is the machine's.
Each proxy the testbed starts is a session of its own and so, with the kernel's autogroup scheduling on
(/proc/sys/kernel/sched_autogroup_enabled), a CPU-share group of its own: on a busy machine N separate proxies
would get N groups' CPU where N workers, or Envoy's N threads, share one. The pair's sessions are therefore
weighted down (their autogroup nice) to one group's weight between them (`one_group`).

`--perf`: one more round per system under perf (software events only: a VM guest may have no hardware
counters): per request, the proxy's system calls, event-loop waits (epoll_wait/epoll_pwait: how few requests each
wake-up finds), context switches, wake-ups it caused and CPU migrations, and cpu-clock samples (999 Hz) per 1,000
requests by shared object (where a slowdown sits: kernel, interpreter, data path, wasm).

`--instructions`: then the same four systems (agent and Envoy, x1 and xN) once more, each under callgrind
(bench/_callgrind.py: no hardware counters in this VM guest), instructions per request over a fixed number of
requests (h2load -n, the same for every system): the machine-independent answer to "CPU per request unchanged",
printed beside the wall-clock table of the same run. By process (agent: parent, workers; Envoy: one process).

Usage: bench/workers_vs_envoy.py [--rounds 5] [--seconds 4] [--module rust/header_rules] [--workers 2] [--no-pair]
                                 [--perf] [--instructions [--requests 4000] [--count-connections 32]]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _callgrind, _common
from bench._common import Run, start_agent, start_envoy
from tests.corpus import modules
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

CONFIG = {"response": {"add": {"x-bench": "1"}}}


#: one system: the (pid, port) of each proxy it is made of (a pair: several side by side)
Targets = Sequence[tuple[int, int]]
Samples = dict[str, float]


def measure_side_by_side(targets: Targets, seconds: int, connections: int) -> Run:
    """One wrk (-t1, an equal share of `connections`) per proxy, all at once; CPU/req over every proxy's process
    tree, requests summed, latency: the median of their p50s and the worst p99, RSS summed."""
    pids = [pid for pid, _ in targets]
    cpu_before = [_common.cpu_ns(pid) for pid in pids]
    switches_before = [_common.switches(pid) for pid in pids]
    share = max(connections // len(targets), 1)
    argv = ["wrk", "-t1", f"-c{share}", f"-d{seconds}s", "--latency"]
    loads = [
        subprocess.Popen([*argv, f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True) for _, port in targets
    ]
    outs = [load.communicate()[0] for load in loads]
    used = [_common.cpu_ns(pid) - before for pid, before in zip(pids, cpu_before, strict=True)]
    switched = sum(_common.switches(pid) - before for pid, before in zip(pids, switches_before, strict=True))
    counts, elapsed = [], []
    for out in outs:
        m = re.search(r"(\d+) requests in ([\d.]+)s", out)
        if m is None or "Non-2xx" in out or "Socket errors" in out:
            raise RuntimeError(f"wrk failed or saw errors:\n{out}")
        counts.append(int(m.group(1)))
        elapsed.append(float(m.group(2)))
    n = sum(counts)
    return Run(
        sum(c / e for c, e in zip(counts, elapsed, strict=True)),
        statistics.median(_common.wrk_ms(o, "50") for o in outs),
        max(_common.wrk_ms(o, "99") for o in outs),
        sum(used) / n / 1000,
        sum(_common.rss_mib(pid) for pid in pids),
        parts=tuple((f"proxy {i}", u / n / 1000) for i, u in enumerate(used)),
        switches=switched / n,
    )


def interleaved(systems: dict[str, Targets], rounds: int, seconds: int, connections: int) -> dict[str, list[Run]]:
    """`_common.interleave`'s order (a 1 s warm-up each, then rounds of system after system), nothing pinned; a
    system of one proxy gets wrk -t2 -c`connections`, a pair one wrk per proxy."""
    load = ("-t2", f"-c{connections}")

    def runner(targets: Targets) -> Callable[[int], Run]:
        if len(targets) == 1:
            pid, port = targets[0]
            return lambda s: _common.measure(pid, port, s, [], load)
        return lambda s: measure_side_by_side(targets, s, connections)

    runners = {name: runner(t) for name, t in systems.items()}
    for run in runners.values():
        run(1)
    out: dict[str, list[Run]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, run in runners.items():
            out[name].append(run(seconds))
    return out


#: CFS's weight of nice 0..19 (the kernel's sched_prio_to_weight)
WEIGHTS = (1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15)


def one_group(pids: Sequence[int]) -> str:
    """Give each of these sessions (autogroups) the nice whose weight, times their number, is nearest one
    group's (nice 0); what was done, for the report."""
    if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
        return "autogroup scheduling off: nothing to weigh"
    nice = min(range(len(WEIGHTS)), key=lambda k: abs(WEIGHTS[k] * len(pids) - WEIGHTS[0]))
    try:
        for pid in pids:
            Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError as exc:
        return f"could not weigh the pair's autogroups ({exc}): the pair has {len(pids)} groups' CPU share"
    return f"the pair's {len(pids)} autogroups at nice {nice} ({len(pids)} x {WEIGHTS[nice]} ~ one group's 1024)"


#: perf's software events counted per request (`--perf`), with their short names
EVENTS = {
    "raw_syscalls:sys_enter": "syscalls",
    "syscalls:sys_enter_epoll_wait": "epoll_wait",
    "syscalls:sys_enter_epoll_pwait": "epoll_pwait",
    "sched:sched_switch": "switches",
    "sched:sched_wakeup": "wakeups",
    "cpu-migrations": "migrations",
}


def under_perf(targets: Targets, seconds: int, connections: int, work: Path) -> tuple[dict[str, float], Samples]:
    """One measured run with perf stat (EVENTS) and perf record (cpu-clock) on every process of `targets`:
    events per request, samples per 1,000 requests by shared object."""
    pids = ",".join(str(p) for pid, _ in targets for p in _common.tree(pid))
    data = work / "perf.data"
    stat = subprocess.Popen(
        ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", pids], stderr=subprocess.PIPE, text=True
    )
    record = subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-o", str(data), "-p", pids],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if len(targets) == 1:
        pid, port = targets[0]
        run = _common.measure(pid, port, seconds, [], ("-t2", f"-c{connections}"))
    else:
        run = measure_side_by_side(targets, seconds, connections)
    for proc in (stat, record):
        proc.send_signal(2)  # SIGINT: perf writes what it counted
    counted = stat.communicate()[1]
    record.wait()
    n = run.rps * seconds
    events: dict[str, float] = {}
    for line in counted.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] in EVENTS and fields[0].replace(".", "", 1).isdigit():
            events[EVENTS[fields[2]]] = float(fields[0]) / n
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "-F", "sample,dso"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    samples: Samples = {}
    for line in report.splitlines():
        m = re.match(r"\s+(\d+)\s+(\S+)", line)
        if m:
            dso = m.group(2).rsplit("/", 1)[-1]
            samples[dso] = samples.get(dso, 0.0) + int(m.group(1)) * 1000 / n
    return events, samples


def perf_report(systems: dict[str, Targets], seconds: int, connections: int, work: Path) -> None:
    procs.which_or_fail("perf", "install Debian linux-perf")
    measured = {name: under_perf(t, seconds, connections, work) for name, t in systems.items()}
    names = list(measured)
    print("under perf, one round each: per request")
    print(f"  {'':<16}" + "".join(f"{name:>12}" for name in names))
    for event in EVENTS.values():
        print(f"  {event:<16}" + "".join(f"{measured[name][0].get(event, 0.0):>12.3f}" for name in names))
    total: Samples = {}
    for _, samples in measured.values():
        for dso, value in samples.items():
            total[dso] = total.get(dso, 0.0) + value
    print("cpu-clock samples (999 Hz) per 1,000 requests, by shared object")
    for dso in sorted(total, key=lambda d: -total[d])[:8]:
        print(f"  {dso[:16]:<16}" + "".join(f"{measured[name][1].get(dso, 0.0):>12.2f}" for name in names))
    print(f"  {'all':<16}" + "".join(f"{sum(measured[name][1].values()):>12.2f}" for name in names))
    print(f"load average after perf: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


Counted = dict[int, dict[str, list[_callgrind.Count]]]


def count_instructions(work: Path, up: int, args: argparse.Namespace) -> Counted:
    """Each of agent x1, agent xN, Envoy x1, Envoy xN under callgrind in turn (started, warmed up uncounted,
    `--count-rounds` counted runs of `--requests` requests per `--count-connections` value, stopped):
    instructions per request, by connections, by system."""
    n, wasm = args.workers, modules.module(args.module).path
    out: Counted = {c: {} for c in args.count_connections}
    for name, workers in (("agent x1", 1), (f"agent x{n}", n), ("envoy x1", 1), (f"envoy x{n}", n)):
        label = "cg-" + name.replace(" ", "-")
        dumps = work / label
        dumps.mkdir()
        wrapper = _callgrind.valgrind_argv(dumps)
        start = start_envoy if name.startswith("envoy") else start_agent
        proc, port = start(work, label, up, wasm, CONFIG, concurrency=workers, wrapper=wrapper)
        try:
            widest = max(args.count_connections)
            _callgrind.load(port, max(args.requests // 4, widest), widest)  # warm-up, uncounted
            seen: set[Path] = set()
            for _ in range(args.count_rounds):
                for c in args.count_connections:
                    count = _callgrind.count(proc.pid, port, dumps, requests=args.requests, connections=c, seen=seen)
                    out[c].setdefault(name, []).append(count)
        finally:
            proc.stop()
    return out


def instructions_report(everything: Counted, args: argparse.Namespace) -> None:
    for connections, counted in everything.items():
        _instructions_table(counted, args, connections)


def _instructions_table(counted: dict[str, list[_callgrind.Count]], args: argparse.Namespace, c: int) -> None:
    n = args.workers
    print(
        f"instructions per request (callgrind, user space; h2load --h1 -n {args.requests} -c {c}, "
        f"{args.count_rounds} counted runs after a warm-up, median):"
    )
    med = {name: statistics.median(c.per_request for c in cs) for name, cs in counted.items()}
    for name, cs in counted.items():
        width = max(len(c.parts) for c in cs)
        parts = [statistics.median(c.parts[i] for c in cs if i < len(c.parts)) for i in range(width)]
        shown = ", ".join(f"{p:,.0f}" for p in parts) if len(parts) > 1 else "one process"
        print(f"  {name:<11} {med[name]:>10,.0f}   by process: {shown}")
    a1, an, e1, en = med["agent x1"], med[f"agent x{n}"], med["envoy x1"], med[f"envoy x{n}"]
    print(
        f"instructions/req x{n} / x1: agent {an / a1:.3f}x, envoy {en / e1:.3f}x; "
        f"agent / envoy: x1 {a1 / e1:.2f}x, x{n} {an / en:.2f}x"
    )


def median(runs: list[Run], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def parts(runs: list[Run]) -> list[tuple[str, float]]:
    """Each part's median CPU/req over the runs (parts under 0.05 us/req in every run left out)."""
    names = sorted({name for r in runs for name, _ in r.parts})
    out = [(n, statistics.median(dict(r.parts).get(n, 0.0) for r in runs)) for n in names]
    return [(n, v) for n, v in out if v >= 0.05]  # below the print's resolution


def ratio(a: list[Run], b: list[Run], field: str) -> float:
    return statistics.median(getattr(x, field) / getattr(y, field) for x, y in zip(a, b, strict=True))


def start_systems(
    work: Path, up: int, args: argparse.Namespace, started: list[procs.Proc]
) -> tuple[dict[str, Targets], list[str]]:
    """Every compared system, by name: agent and Envoy x1 and xN, the pairs (unless --no-pair), the baseline's
    agent; each proxy appended to `started` as it starts. Also what `one_group` did to each pair."""
    n = args.workers
    wasm = modules.module(args.module).path
    copies = 1 if args.no_pair else n  # the pair: n one-worker proxies
    # (name, agent checkout or None for Envoy, workers, proxies)
    here = Path(__file__).resolve().parents[1]
    compared: list[tuple[str, Path | None, int, int]] = [("agent x1", here, 1, 1), (f"agent x{n}", here, n, 1)]
    if args.baseline is not None:
        compared += [("before x1", args.baseline, 1, 1), (f"before x{n}", args.baseline, n, 1)]
    compared += [("envoy x1", None, 1, 1), (f"envoy x{n}", None, n, 1)]
    if copies > 1:
        compared += [(f"agent {n}*x1", here, 1, copies), (f"envoy {n}*x1", None, 1, copies)]
    systems: dict[str, Targets] = {}
    weighed: list[str] = []
    for name, checkout, workers, count in compared:
        targets = []
        for i in range(count):
            label = f"{name.replace(' ', '-').replace('*', '-')}-{i}"
            if checkout is None:
                proc, port = start_envoy(work, label, up, wasm, CONFIG, concurrency=workers)
            else:
                source = None if checkout == here else checkout
                proc, port = start_agent(work, label, up, wasm, CONFIG, concurrency=workers, source=source)
            started.append(proc)
            targets.append((proc.pid, port))
        systems[name] = targets
        if count > 1:
            weighed.append(one_group([pid for pid, _ in targets]))
    return systems, weighed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--no-pair", action="store_true", help="leave out the control (N one-worker proxies side by side)")
    ap.add_argument("--perf", action="store_true", help="one more round per system under perf (events, profile)")
    ap.add_argument(
        "--baseline", type=Path, help="another checkout (built with `make native`): its agent x1 and xN run too"
    )
    ap.add_argument("--instructions", action="store_true", help="then count instructions per request (callgrind)")
    ap.add_argument("--requests", type=int, default=4000, help="requests per counted run (--instructions)")
    ap.add_argument(
        "--count-connections", type=int, nargs="+", default=[32, 2], help="h2load -c of the counted runs (each)"
    )
    ap.add_argument("--count-rounds", type=int, default=2, help="counted runs per system (--instructions)")
    ap.add_argument("--no-timed", action="store_true", help="only the counted runs (with --instructions)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        started: list[procs.Proc] = []
        try:
            upstream = tb_nginx.start_nginx(log_dir=work)
            started.append(upstream)
            up = upstream.ports["http"]
            if args.instructions and (why := _callgrind.available()) is not None:
                raise SystemExit(why)
            if not args.no_timed:
                systems, weighed = start_systems(work, up, args, started)
                procs.which_or_fail("wrk", "install Debian wrk (scripts/install-system-deps.sh)")
                runs = interleaved(systems, args.rounds, args.seconds, args.connections)
                report(runs, args, weighed)
                if args.perf:
                    perf_report(systems, args.seconds, args.connections, work)
                for proc in reversed(started[1:]):  # the timed proxies leave the cores to the counted ones
                    proc.stop()
                del started[1:]
            if args.instructions:
                instructions_report(count_instructions(work, up, args), args)
                print(f"load average after counting: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        finally:
            for proc in reversed(started):
                proc.stop()
    return 0


def report(runs: dict[str, list[Run]], args: argparse.Namespace, weighed: Sequence[str]) -> None:
    n = args.workers
    print(f"{args.module} adding one response header; nginx upstream; ", end="")
    print(f"wrk -t2 -c{args.connections} -d{args.seconds}s")
    print(f"{args.rounds} interleaved rounds, medians; nothing pinned (proxies, nginx and wrk share every core)")
    print(f"{'system':<11} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU/req us':>11} {'RSS MiB':>8} {'cs/req':>7}")
    for name, rs in runs.items():
        print(
            f"{name:<11} {median(rs, 'rps'):>9.0f} {median(rs, 'p50_ms'):>8.2f} {median(rs, 'p99_ms'):>8.2f} "
            f"{median(rs, 'cpu_us'):>11.1f} {median(rs, 'rss_mib'):>8.1f} {median(rs, 'switches'):>7.2f}"
        )
    print("CPU/req by process (agent: parent, workers) or thread (envoy: main, wrk:worker_N, others), us:")
    for name, rs in runs.items():
        print(f"  {name:<11} " + ", ".join(f"{part} {value:.1f}" for part, value in parts(rs)))
    a1, an, e1, en = runs["agent x1"], runs[f"agent x{n}"], runs["envoy x1"], runs[f"envoy x{n}"]
    throughput = ratio(an, en, "rps")
    verdict = "met" if throughput >= 1 else "NOT met"
    print(f"throughput agent x{n} / envoy x{n}: {throughput:.2f}x (target >= 1.00: {verdict})")
    print(f"CPU/req agent x{n} / agent x1: {ratio(an, a1, 'cpu_us'):.2f}x (target ~1.00: unchanged)")
    print(f"CPU/req agent x{n} / envoy x{n}: {ratio(an, en, 'cpu_us'):.2f}x", end="; ")
    print(f"envoy x{n} / envoy x1: {ratio(en, e1, 'cpu_us'):.2f}x")
    print(f"scaling x1 -> x{n}: agent {ratio(an, a1, 'rps'):.2f}x, envoy {ratio(en, e1, 'rps'):.2f}x")
    if f"agent {n}*x1" in runs:
        print(f"control: {'; '.join(sorted(set(weighed)))}")
        ap, ep = runs[f"agent {n}*x1"], runs[f"envoy {n}*x1"]
        print(
            f"control, {n} one-worker proxies side by side / x1 (CPU/req): agent {ratio(ap, a1, 'cpu_us'):.2f}x, "
            f"envoy {ratio(ep, e1, 'cpu_us'):.2f}x; x{n} / the pair: agent {ratio(an, ap, 'cpu_us'):.2f}x, "
            f"envoy {ratio(en, ep, 'cpu_us'):.2f}x (1.00x: the workers cost nothing beyond {n} busy processes)"
        )
    if args.baseline is not None:
        b1, bn = runs["before x1"], runs[f"before x{n}"]
        print(
            f"before ({args.baseline}): CPU/req x{n} / x1 {ratio(bn, b1, 'cpu_us'):.2f}x; "
            f"agent / before: x1 {ratio(a1, b1, 'cpu_us'):.2f}x, x{n} {ratio(an, bn, 'cpu_us'):.2f}x"
        )
    print(f"load average after the run: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    raise SystemExit(main())
