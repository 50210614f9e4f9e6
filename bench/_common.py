"""Helpers the benchmarks share: CPU and memory of a process, one wrk run, and the two proxies under test
(meshplug's agent and Envoy 1.40 + V8) started with the same module, configuration and upstream."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# a figure of the interpreted fallback is not the agent's: every agent a bench starts (and this process, should it
# import the data path) fails on a missing or stale `make native` build; MESHPLUG_REQUIRE_NATIVE=0 to measure it anyway
os.environ.setdefault("MESHPLUG_REQUIRE_NATIVE", "1")

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs

PROXY_CPU, LOAD_CPU = 1, 0
#: proxies on PROXY_CPU, wrk and the upstream on LOAD_CPU (a 1-CPU machine runs everything unpinned)
CAN_PIN = (os.cpu_count() or 1) > 1


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a multi-worker agent's workers)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            out += tree(int(child))
    return out


def cpu_ns(pid: int) -> int:
    """CPU time (ns) process `pid` and its descendants have used so far: the sum over their threads' /proc
    schedstat run times."""
    total = 0
    for proc in tree(pid):
        try:
            tasks = list(Path(f"/proc/{proc}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total


def _threads(proc: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{proc}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return []


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def cpu_parts(pid: int) -> dict[str, int]:
    """CPU time (ns) so far by part of the proxy: for a process tree (a multi-worker agent) by process, the root
    as "parent" and its children as "worker 0", "worker 1", ... (in pid order); for one process (Envoy) by
    thread name ("envoy" is its main thread, "wrk:worker_N" its workers; other threads under their names)."""
    procs_ = tree(pid)
    out: dict[str, int] = {}
    if len(procs_) > 1:
        for i, proc in enumerate([procs_[0], *sorted(procs_[1:])]):
            name = "parent" if i == 0 else f"worker {i - 1}"
            out[name] = sum(int((_read(t / "schedstat").split() or ["0"])[0]) for t in _threads(proc))
        return out
    for task in _threads(pid):
        name = _read(task / "comm").strip() or "?"
        out[name] = out.get(name, 0) + int((_read(task / "schedstat").split() or ["0"])[0])
    return out


def switches(pid: int) -> int:
    """Context switches (voluntary + involuntary) of `pid`, its threads and its descendants so far: how often
    the proxy went to sleep (one epoll wait per loop iteration that found nothing) or was preempted."""
    total = 0
    for proc in tree(pid):
        for task in _threads(proc):
            for line in _read(task / "status").splitlines():
                if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                    total += int(line.split()[1])
    return total


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants."""
    total = 0.0
    for proc in tree(pid):
        try:
            lines = Path(f"/proc/{proc}/status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in lines:
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def pin_pid(pid: int, cpu: int) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    rss_mib: float
    #: CPU/req (µs) by part of the proxy (`cpu_parts`), and context switches per request
    parts: tuple[tuple[str, float], ...] = ()
    switches: float = float("nan")


def wrk_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if m is None:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def measure(pid: int, port: int, seconds: int, pin: list[str], load: Sequence[str] = ("-t1", "-c16")) -> Run:
    """wrk (`load`: its threads and connections, default -t1 -c16) against `port` for `seconds`; the proxy's
    CPU per request from schedstat, its RSS after (both over the proxy's process tree)."""
    before, parts_before, switches_before = cpu_ns(pid), cpu_parts(pid), switches(pid)
    out = subprocess.run(
        [*pin, "wrk", *load, f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_ns(pid) - before
    parts_after, switched = cpu_parts(pid), switches(pid) - switches_before
    m = re.search(r"(\d+) requests in ([\d.]+)s", out)
    if m is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"errors under load:\n{out}")
    n = int(m.group(1))
    parts = tuple((name, (ns - parts_before.get(name, 0)) / n / 1000) for name, ns in sorted(parts_after.items()))
    return Run(
        n / float(m.group(2)),
        wrk_ms(out, "50"),
        wrk_ms(out, "99"),
        used / n / 1000,
        rss_mib(pid),
        parts=parts,
        switches=switched / n,
    )


def interleaved(
    systems: Mapping[str, tuple[int, int]],
    rounds: int,
    seconds: int,
    *,
    pin: bool = True,
    load: Sequence[str] = ("-t1", "-c16"),
) -> dict[str, list[Run]]:
    """`systems`: name -> (proxy pid, port). Pins each proxy (unless not `pin`: every process on every CPU),
    warms each up for 1 s, then runs `rounds` rounds of `seconds` per system, system after system, so noise
    falls on all of them alike; `load`: wrk's threads and connections."""
    procs.which_or_fail("wrk", "install Debian wrk (scripts/install-system-deps.sh)")
    return interleave(systems, rounds, seconds, lambda pid, port, s, p: measure(pid, port, s, p, load), pin=pin)


def interleave(
    systems: Mapping[str, tuple[int, int]],
    rounds: int,
    seconds: int,
    run: Callable[[int, int, int, list[str]], Run],
    *,
    pin: bool = True,
) -> dict[str, list[Run]]:
    """The interleaving every comparison shares, whatever the load tool: `run(pid, port, seconds, load_pin)`
    measures one system once. Pins each proxy (unless not `pin`), warms each up for 1 s, then `rounds` rounds of
    `seconds` per system, system after system."""
    load_pin = ["taskset", "-c", str(LOAD_CPU)] if CAN_PIN and pin else []
    for pid, port in systems.values():
        if CAN_PIN and pin:
            pin_pid(pid, PROXY_CPU)
        run(pid, port, 1, load_pin)  # warm up: connections, JIT, caches
    runs: dict[str, list[Run]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, (pid, port) in systems.items():
            runs[name].append(run(pid, port, seconds, load_pin))
    return runs


def start_agent(
    work: Path,
    name: str,
    upstream_port: int,
    wasm: Path | None,
    config: Mapping[str, Any],
    *,
    count: int = 1,
    source: Path | None = None,
    http2: bool = False,
    concurrency: int = 1,
    wrapper: Sequence[str] = (),
) -> tuple[procs.Proc, int]:
    """`meshplug agent` with `count` plugins (`wasm` configured with `config`) or none, in front of the upstream;
    `source`: run the meshplug package of that checkout instead (built with `make native`), to compare two
    versions of the agent in one interleaved run; `http2`: the upstream cluster speaks HTTP/2; `concurrency`:
    that many workers; `wrapper`: a command it runs under (valgrind, bench/_callgrind.py)."""
    plugins = [
        {"name": f"bench-{i}", "module": {"file": str(wasm)}, "configuration": config}
        for i in range(count if wasm is not None else 0)
    ]
    return start_agent_with(
        work, name, upstream_port, plugins, source=source, http2=http2, concurrency=concurrency, wrapper=wrapper
    )


def start_agent_with(
    work: Path,
    name: str,
    upstream_port: int,
    plugins: list[dict[str, Any]],
    *,
    source: Path | None = None,
    http2: bool = False,
    concurrency: int = 1,
    wrapper: Sequence[str] = (),
    aliases: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[procs.Proc, int]:
    """`meshplug agent` with these config `plugins` entries (wasm modules or Lua filters) in front of the upstream
    (`source`, `http2`, `wrapper`: as in `start_agent`; `aliases`: more cluster names for the same upstream;
    `env`: added to the agent's environment)."""
    port, admin = procs.free_port(), procs.free_port()
    raw = tb_agent.base_config(
        port=port,
        admin_port=admin,
        clusters={"upstream": upstream_port, **{alias: upstream_port for alias in aliases}},
        plugins=plugins,
        http2_clusters=frozenset({"upstream"}) if http2 else frozenset(),
    )
    if source is not None:
        env = {"PYTHONPATH": str(source), "MESHPLUG_REQUIRE_NATIVE": "1", **(env or {})}
    agent = tb_agent.start_agent(
        raw,
        work_dir=work / name,
        log_dir=work,
        name=name,
        log_level="warning",
        env=dict(env) if env is not None else None,
        cwd=source,
        concurrency=concurrency,
        wrapper=wrapper,
        timeout=300.0 if wrapper else 60.0,  # valgrind: the imports and module loads run ~10x slower
    )  # (`python -m` puts the working directory first on the path: it must be the checkout run)
    return agent.proc, port


def start_envoy(
    work: Path,
    name: str,
    upstream_port: int,
    wasm: Path | None,
    config: Mapping[str, Any],
    *,
    count: int = 1,
    http2: bool = False,
    concurrency: int = 1,
    wrapper: Sequence[str] = (),
) -> tuple[procs.Proc, int]:
    """Envoy (--concurrency `concurrency`, default 1) with the same plugin on V8 `count` times (or none), in front
    of the same upstream; `wrapper`: a command it runs under (valgrind, bench/_callgrind.py)."""
    filters = []
    if wasm is not None:
        filters = [
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": f"bench-{i}",
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": json.dumps(config),
                        },
                        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}},
                    },
                },
            }
            for i in range(count)
        ]
    return start_envoy_with(work, name, upstream_port, filters, http2=http2, concurrency=concurrency, wrapper=wrapper)


def start_envoy_with(
    work: Path,
    name: str,
    upstream_port: int,
    http_filters: list[dict[str, Any]],
    *,
    http2: bool = False,
    concurrency: int = 1,
    wrapper: Sequence[str] = (),
    aliases: Sequence[str] = (),
) -> tuple[procs.Proc, int]:
    """Envoy (--concurrency `concurrency`) with these HTTP filters (before the router) in front of the upstream
    (`wrapper`: as in `start_envoy`; `aliases`: more cluster names for the same upstream)."""
    port, admin = procs.free_port(), procs.free_port()
    listener = tb_envoy.http_listener("bench", port, cluster="upstream", http_filters=http_filters)
    clusters = [tb_envoy.static_cluster(c, upstream_port, http2=http2) for c in ("upstream", *aliases)]
    cfg = tb_envoy.bootstrap(admin, [listener], clusters)
    path = tb_envoy.write_config(cfg, work / f"{name}.json")
    envoy = tb_envoy.start_envoy(
        path,
        admin_port=admin,
        log_dir=work,
        name=name,
        component_log_levels="wasm:warn,lua:warn",
        concurrency=concurrency,
        wrapper=wrapper,
        timeout=300.0 if wrapper else 120.0,
    )
    return envoy.proc, port
