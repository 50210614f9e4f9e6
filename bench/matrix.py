#!/usr/bin/env python3
"""The benchmark matrix: agent vs Envoy 1.40 + V8, one plugin per SDK x request shape, at a fixed request rate.

Shapes (each plugin from the corpus, its corpus configuration; Envoy runs the same module and configuration):

    header    GET /; the plugin edits headers                          (rust/header_rules, go/headers,
                                                                          assemblyscript/respheaders, c/add_header)
    body      POST / with a 1 MiB body the plugin buffers and rewrites (rust/body_rewrite, go/bodyrewrite,
                                                                          assemblyscript/body; c/body_append
                                                                          appends at end of stream, unbuffered)
    local     GET /admin/x answered by the plugin's local reply (403)  (rust/deny_path, go/denypath,
                                                                          assemblyscript/denyprefix, c/deny_prefix)
    httpcall  GET / paused for one HTTP call per request to an auth    (rust/auth_call, go/authcall,
                                                                          assemblyscript/authcall, c/auth_call)
              cluster (nginx answering 200), then resumed

The body is 1023 KiB: Envoy answers 413 to a held body of 1 MiB (its default buffer limit). A cell whose SDK has
no such plugin in the corpus is printed as "no module". Load: bench/openloop.py (a C client), open loop at `--rate`
requests/s (`--body-rate` for the body shape), latency from each request's due time (no coordinated omission),
pinned to CPU 0 with the nginx upstream; both proxies pinned to CPU 1 (Envoy --concurrency 1). Per cell both
proxies start and are warmed up, then ONE client run serves them in alternating `--block-seconds` blocks (agent,
Envoy, [before,] nginx straight, agent, ...) for `--seconds` per system (`--body-seconds` for bodies): the systems
see the same machine, never loaded at once, and "nginx" is the client's own floor measured beside them.
`--realtime` runs the client, nginx and both proxies under SCHED_FIFO (chrt): other processes' load then no longer
sets the tail (at load 9-14 the client-to-nginx p99 fell from 1.5-5 ms to 0.15 ms). Per system:
CPU per request (schedstat over its process tree, read around its own blocks / answered requests), RSS after the
run, p50 and p99 over all its requests (~10,000 at 500 req/s x 20 s: p99 is the 100th slowest) but those due in
the first `--warm-ms` of a block (at least one: the first answer after the system sat idle through the others'
blocks; without this ~40% of the requests over p99 were a block's first five, for both proxies). The CPU ratio is the
median of per-round ratios (`--rounds` consecutive groups of blocks); the p99 ratio is given twice: of the pooled
p99s, and as the median of the rounds' own p99 ratios (as the CPU ratio), with their spread beside it -- the pooled
one follows the worst round (a few noise bursts landing in one system's blocks: one quiet run's rounds ranged
0.80-1.88x in one cell). Prints the worst CPU ratio and how many cells have the agent's p99 at or under Envoy's,
both ways (targets: worst CPU <= 1.0x, p99 <= Envoy's). Failed requests (wrong status, reset, no answer) are
counted per system and printed with their kinds; more than 1% aborts the cell (a ratio over failing requests would
mean nothing). Under the table, per cell and system, the client's own share of the latency: the p99 of how late
it began sending a request after its due time (its timer's wake-up; bench/openloop.py), the same for every system
when the client is not what sets the tail. The load average is printed as it was before and after the run: figures
from a loaded machine are noisy.

`--instructions`: instead of the timed open-loop run, each cell's agent and Envoy run under callgrind
(bench/_callgrind.py: no hardware counters in this VM guest) and a fixed number of the cell's requests from h2load
(`--requests`, `--body-requests` for bodies of `--count-body-bytes`, over `--count-connections`) is counted per
round: instructions per request (user space, whole process tree), the figure a loaded machine cannot move. Under
callgrind every event-loop wake-up finds a full batch of requests, so these are per-request costs at saturation,
not at the open loop's rate (where each request is about one wake-up of its own). `--dumps DIR` keeps the callgrind
dumps (cg.<pid>.<n>) for callgrind_annotate.

Usage: bench/matrix.py [--rounds 5] [--seconds 20] [--rate 500] [--body-rate 20] [--body-seconds 50]
       [--block-seconds 0.5] [--cells rust/header,go/httpcall]
       [--baseline CHECKOUT]  (another checkout's agent in the same rounds: agent/before ratios)
       [--baseline-wasmtime stock]  (this checkout's agent on wasmtime-py's own library as the before agent)
       bench/matrix.py --instructions [--requests 2000] [--body-requests 20] [--count-body-bytes 131072]
       [--count-connections 16] [--rounds 2] [--cells ...] [--baseline CHECKOUT] [--dumps DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _callgrind, openloop
from bench._common import CAN_PIN, LOAD_CPU, PROXY_CPU, pin_pid, rss_mib, start_agent_with, start_envoy_with, tree
from meshplug import compiled
from tests.corpus import modules
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

SDKS = ("rust", "go", "assemblyscript", "c")
SHAPES = ("header", "body", "local", "httpcall")
#: the "1 MiB" body: 1023 KiB, under both proxies' buffer limit for a body a filter holds (Envoy's default
#: per_connection_buffer_limit_bytes answers 413 from 1 MiB on, the agent's MAX_BUFFERED_BODY_BYTES above it)
BODY_BYTES = 1023 * 1024
#: the body under callgrind (--instructions): a guest callback's wall-clock budget (limits.CALLBACK_DEADLINE_MS,
#: 1 s) is the same there while the guest runs ~50x slower, and the AssemblyScript plugin scans 1 MiB in ~25 ms
COUNT_BODY_BYTES = 128 * 1024


@dataclass(frozen=True)
class Cell:
    module: str
    configuration: Any  # a str is passed as is, anything else JSON-encoded
    root_id: str = ""
    note: str = ""


CELLS: dict[tuple[str, str], Cell] = {
    ("rust", "header"): Cell(
        "rust/header_rules",
        {"request": {"add": {"x-added": "yes"}, "remove": ["x-secret"]}, "response": {"add": {"x-by": "rust"}}},
    ),
    ("go", "header"): Cell(
        "go/headers",
        {"request": {"add": {"x-added": "1"}, "remove": ["x-secret"]}, "response": {"add": {"x-by": "go"}}},
    ),
    ("assemblyscript", "header"): Cell(
        "assemblyscript/respheaders", "X-Served-By: meshplug\ncache-control: no-store\n", root_id="respheaders"
    ),
    ("c", "header"): Cell("c/add_header", "request x-c-added from c\nresponse x-c-plugin add_header\n"),
    ("rust", "body"): Cell("rust/body_rewrite", {"request_append": "+req"}),
    ("assemblyscript", "body"): Cell(
        "assemblyscript/body", "request.replace=secret|[redacted]\nrequest.append=|req-tail\n", root_id="body"
    ),
    ("c", "body"): Cell("c/body_append", "+req\n", note="appends at end of stream, does not buffer"),
    ("go", "body"): Cell("go/bodyrewrite", {"replace": {"from": "secret", "to": "[redacted]"}, "append": "+go"}),
    ("rust", "local"): Cell("rust/deny_path", {"prefixes": ["/admin"], "status": 403, "body": "no entry\n"}),
    ("go", "local"): Cell("go/denypath", {"prefixes": ["/admin"], "status": 403, "body": "denied\n"}),
    ("assemblyscript", "local"): Cell("assemblyscript/denyprefix", "/admin\n", root_id="denyprefix"),
    ("c", "local"): Cell("c/deny_prefix", "/admin\n"),
    ("rust", "httpcall"): Cell("rust/auth_call", {"cluster": "authz", "path": "/check", "timeout_ms": 3000}),
    ("go", "httpcall"): Cell(
        "go/authcall", {"cluster": "authz", "authority": "auth.local", "path": "/check", "timeout_ms": 5000}
    ),
    ("assemblyscript", "httpcall"): Cell("assemblyscript/authcall", "authz", root_id="authcall"),
    ("c", "httpcall"): Cell("c/auth_call", "authz"),
}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (printed before and after a run: figures from a loaded machine are
    noisy)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def config_text(cell: Cell) -> str:
    return cell.configuration if isinstance(cell.configuration, str) else json.dumps(cell.configuration)


def start_agent(
    work: Path,
    name: str,
    upstream: int,
    cell: Cell,
    *,
    source: Path | None = None,
    wrapper: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> tuple[procs.Proc, int]:
    plugin: dict[str, Any] = {
        "name": "bench",
        "module": {"file": str(modules.module(cell.module).path)},
        "configuration": config_text(cell),
    }
    if cell.root_id:
        plugin["root_id"] = cell.root_id
    return start_agent_with(work, name, upstream, [plugin], source=source, wrapper=wrapper, aliases=["authz"], env=env)


def has_before(args: argparse.Namespace) -> bool:
    return args.baseline is not None or args.baseline_wasmtime is not None


def before_label(args: argparse.Namespace) -> str:
    return str(args.baseline) if args.baseline is not None else f"MESHPLUG_WASMTIME={args.baseline_wasmtime}"


def start_before(
    work: Path, name: str, upstream: int, cell: Cell, args: argparse.Namespace, *, wrapper: Sequence[str] = ()
) -> tuple[procs.Proc, int]:
    """The "before" agent: `--baseline`'s checkout, or this one on the libwasmtime `--baseline-wasmtime` names."""
    if args.baseline is not None:
        return start_agent(work, name, upstream, cell, source=args.baseline, wrapper=wrapper)
    return start_agent(work, name, upstream, cell, wrapper=wrapper, env={"MESHPLUG_WASMTIME": args.baseline_wasmtime})


def start_envoy(
    work: Path, name: str, upstream: int, cell: Cell, wrapper: Sequence[str] = ()
) -> tuple[procs.Proc, int]:
    wasm = {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "bench",
                "root_id": cell.root_id,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": config_text(cell),
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(modules.module(cell.module).path)}},
                },
            },
        },
    }
    return start_envoy_with(work, name, upstream, [wasm], wrapper=wrapper, aliases=["authz"])


def shape_request(shape: str) -> tuple[bytes, int]:
    """The request the open-loop client sends for `shape`, and the status that counts as answered."""
    if shape == "body":
        return openloop.request_bytes("POST", body_bytes=BODY_BYTES), 200
    if shape == "local":
        return openloop.request_bytes(path="/admin/x"), 403
    if shape == "httpcall":
        return openloop.request_bytes(headers=["authorization: Bearer alice"]), 200
    return openloop.request_bytes(), 200


@dataclass(frozen=True)
class CellRun:
    results: dict[str, openloop.Result]  # by system, and "nginx": the client straight at the upstream (its floor)
    rss_mib: dict[str, float]  # by system, after the run


def bench_cell(work: Path, upstream: int, sdk: str, shape: str, args: argparse.Namespace) -> CellRun:
    cell = CELLS[(sdk, shape)]
    started: list[procs.Proc] = []
    request, expect = shape_request(shape)
    rate, seconds = (args.body_rate, args.body_seconds) if shape == "body" else (args.rate, args.seconds)
    client_cpu = LOAD_CPU if CAN_PIN else None
    try:
        systems = {"agent": start_agent(work, f"agent-{sdk}-{shape}", upstream, cell)}
        started.append(systems["agent"][0])  # (stopped even when Envoy does not start)
        systems["envoy"] = start_envoy(work, f"envoy-{sdk}-{shape}", upstream, cell)
        started.append(systems["envoy"][0])
        if has_before(args):
            systems["before"] = start_before(work, f"before-{sdk}-{shape}", upstream, cell, args)
            started.append(systems["before"][0])
        targets: dict[str, openloop.Target] = {}
        for name, (proc, port) in systems.items():
            if CAN_PIN:
                pin_pid(proc.pid, PROXY_CPU)
            targets[name] = openloop.Target(port, request, expect, tuple(tree(proc.pid)))
            if args.realtime:
                for pid in tree(proc.pid):
                    subprocess.run(["chrt", "--all-tasks", "--fifo", "--pid", "1", str(pid)], check=True)
        # warm up (connections, JIT, the VMs' heaps), then one client serves every system in alternating blocks
        openloop.run(
            list(targets.values()),
            rate=rate,
            seconds=1.0,
            block_seconds=args.block_seconds,
            cpu=client_cpu,
            realtime=args.realtime,
        )
        targets["nginx"] = openloop.Target(upstream, request, 200)  # nginx answers 200 to every request
        ran = openloop.run(
            list(targets.values()),
            rate=rate,
            seconds=seconds,
            block_seconds=args.block_seconds,
            cpu=client_cpu,
            realtime=args.realtime,
            warm=max(1, round(rate * args.warm_ms / 1000)),
        )
        results = dict(zip(targets, ran, strict=True))
        for name, res in results.items():
            if res.bad > 0.01 * res.due:
                raise RuntimeError(f"{name}: failed requests under load ({shape}): {res.summary()}")
        return CellRun(results, {name: rss_mib(proc.pid) for name, (proc, _) in systems.items()})
    finally:
        for proc in started:
            proc.stop()


def counted_request(shape: str, work: Path, args: argparse.Namespace) -> _callgrind.Request:
    """The cell's request for h2load (the open loop's, see load_args; bodies of `--count-body-bytes`)."""
    if shape == "body":
        body = work / "body.bin"
        if not body.exists():
            body.write_bytes(b"x" * args.count_body_bytes)
        return _callgrind.Request(body_file=body)
    if shape == "local":
        return _callgrind.Request(path="/admin/x", status="4xx")
    if shape == "httpcall":
        return _callgrind.Request(headers=("authorization: Bearer alice",))
    return _callgrind.Request()


def count_cell(
    work: Path, dumps: Path, upstream: int, cell_key: tuple[str, str], args: argparse.Namespace
) -> dict[str, list[_callgrind.Count]]:
    """Instructions per request of the cell's agent and Envoy (and `--baseline`'s agent), each under callgrind,
    `args.rounds` counted runs each, interleaved."""
    sdk, shape = cell_key
    cell = CELLS[cell_key]
    request = counted_request(shape, work, args)
    n = args.body_requests if shape == "body" else args.requests
    connections = min(n, args.count_connections)
    wrapper = _callgrind.valgrind_argv(dumps)
    seen: set[Path] = set()
    started: list[procs.Proc] = []
    try:
        systems = {"agent": start_agent(work, f"cg-agent-{sdk}-{shape}", upstream, cell, wrapper=wrapper)}
        started.append(systems["agent"][0])
        systems["envoy"] = start_envoy(work, f"cg-envoy-{sdk}-{shape}", upstream, cell, wrapper=wrapper)
        started.append(systems["envoy"][0])
        if has_before(args):
            systems["before"] = start_before(work, f"cg-before-{sdk}-{shape}", upstream, cell, args, wrapper=wrapper)
            started.append(systems["before"][0])
        for _, port in systems.values():
            warm = max(connections, n // 4)
            _callgrind.load(port, warm, connections, request)  # warm-up, uncounted
        counts: dict[str, list[_callgrind.Count]] = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, (proc, port) in systems.items():
                counts[name].append(
                    _callgrind.count(
                        proc.pid, port, dumps, requests=n, connections=connections, seen=seen, request=request
                    )
                )
    finally:
        for proc in started:
            proc.stop()
    return counts


def engine_line() -> str:
    """The agent's optimized-tier engine settings (meshplug.compiled: Cranelift, the inlining pass and its
    limits, the library), as this checkout runs them: which code the agent's figures are of."""
    return "agent's optimized tier: " + ", ".join(f"{k}={v}" for k, v in compiled.ENGINE_SETTINGS)


def instructions_report(
    results: dict[tuple[str, str], dict[str, list[_callgrind.Count]]], args: argparse.Namespace
) -> None:
    print(
        f"matrix, instructions per request (callgrind, user space, process tree; h2load --h1 -n {args.requests} "
        f"(bodies {args.body_requests} of {args.count_body_bytes // 1024} KiB) -c {args.count_connections}), "
        f"{args.rounds} interleaved rounds, medians"
    )
    print(engine_line())
    print(f"{'cell':<26}{'agent':>14}{'envoy':>14}{'ratio':>8}")
    worst = 0.0
    for (sdk, shape), counts in results.items():
        a, e = counts["agent"], counts["envoy"]
        r = statistics.median(x.per_request / y.per_request for x, y in zip(a, e, strict=True))
        worst = max(worst, r)
        line = (
            f"{sdk + '/' + shape:<26}{statistics.median(x.per_request for x in a):>14,.0f}"
            f"{statistics.median(x.per_request for x in e):>14,.0f}{r:>7.2f}x"
        )
        if "before" in counts:
            b = statistics.median(x.per_request / y.per_request for x, y in zip(a, counts["before"], strict=True))
            line += f"  agent/before {b:.3f}x"
        print(line)
    print(f"worst instruction ratio {worst:.2f}x")
    print(f"load average before the run: {args.load_before}; after: {load_average()}")


def rounds(res: openloop.Result, n: int) -> list[slice]:
    """`res`'s blocks in `n` consecutive groups (each a round: every system ran its blocks of it in turn)."""
    k = len(res.blocks)
    n = max(1, min(n, k))
    return [slice(i * k // n, (i + 1) * k // n) for i in range(n)]


def cpu_ratio(run: CellRun, n: int, base: str = "envoy") -> float:
    """Median over rounds of agent/`base` CPU per answered request."""
    a, e = run.results["agent"], run.results[base]
    return statistics.median(a.cpu_per_request_us(r) / e.cpu_per_request_us(r) for r in rounds(a, n))


def p99_rounds(run: CellRun, n: int, base: str = "envoy") -> list[float]:
    """Per round, agent p99 / `base` p99 (the spread of the pooled ratio)."""
    a, e = run.results["agent"], run.results[base]
    return [openloop.percentile(a.latencies(r), 99) / openloop.percentile(e.latencies(r), 99) for r in rounds(a, n)]


def pct(res: openloop.Result, p: float) -> float:
    return openloop.percentile(res.latencies(), p)


def pct_late(res: openloop.Result, p: float) -> float:
    return openloop.percentile(res.client_late(), p)


def report(results: dict[tuple[str, str], CellRun], args: argparse.Namespace) -> None:
    print(
        f"matrix: agent vs Envoy 1.40 + V8, open loop (bench/openloop.c) at {args.rate:g} req/s for {args.seconds:g}s "
        f"per system ({args.body_rate:g} req/s for {args.body_seconds:g}s with 1 MiB bodies), one client serving "
        f"the systems in alternating {args.block_seconds:g}s blocks (the first {args.warm_ms:g} ms of each not "
        f"counted, "
        f"at least one request); CPU ratio: median over {args.rounds} rounds; "
        f"latency: all of a system's requests (p99 ratio), and the median of the rounds' own p99 ratios (median); "
        f"proxies pinned: {CAN_PIN}; SCHED_FIFO: {args.realtime}"
    )
    print(engine_line())
    head = f"{'cell':<26}{'CPU/req agent':>14}{'envoy':>9}{'ratio':>7}{'RSS agent':>10}{'envoy':>7}{'ratio':>7}"
    print(
        head + f"{'p50 agent':>10}{'envoy':>7}{'p99 agent':>10}{'envoy':>7}{'p99 ratio':>10}{'(rounds)':>13}"
        f"{'nginx p50':>10}{'p99':>7}"
    )
    worst = 0.0
    p99_ok = p99_median_ok = 0
    for (sdk, shape), run in results.items():
        a, e, floor = run.results["agent"], run.results["envoy"], run.results["nginx"]
        cpu_r = cpu_ratio(run, args.rounds)
        rss_r = run.rss_mib["agent"] / run.rss_mib["envoy"]
        p99_a, p99_e = pct(a, 99), pct(e, 99)
        spread = p99_rounds(run, args.rounds)
        worst = max(worst, cpu_r)
        p99_ok += p99_a <= p99_e
        p99_median_ok += statistics.median(spread) <= 1.0
        print(
            f"{sdk + '/' + shape:<26}{a.cpu_per_request_us():>12.1f}us{e.cpu_per_request_us():>7.1f}us{cpu_r:>6.2f}x"
            f"{run.rss_mib['agent']:>8.0f}Mi{run.rss_mib['envoy']:>5.0f}Mi{rss_r:>6.2f}x"
            f"{pct(a, 50):>8.2f}ms{pct(e, 50):>5.2f}ms{p99_a:>8.2f}ms{p99_e:>5.2f}ms{p99_a / p99_e:>9.2f}x"
            f"{statistics.median(spread):>6.2f}x  {min(spread):>4.2f}-{max(spread):<4.2f}x"
            f"{pct(floor, 50):>8.2f}ms{pct(floor, 99):>5.2f}ms"
            f"  {CELLS[(sdk, shape)].module}"
        )
    for sdk in SDKS:
        for shape in SHAPES:
            if (sdk, shape) not in CELLS:
                print(f"{sdk + '/' + shape:<26}no module of this shape in the corpus for this SDK")
    for (sdk, shape), run in results.items():
        for name, res in run.results.items():
            if res.bad:
                print(f"{sdk}/{shape} {name}: {res.bad} of {res.due} requests failed {res.errors}")
    print("the client's own share: how late it began sending (its wake-up after the due time), p99 per system")
    for (sdk, shape), run in results.items():
        late = "".join(f"{name:>8} {pct_late(res, 99):.3f}ms" for name, res in run.results.items())
        print(f"  {sdk + '/' + shape:<24}{late}")
    print(
        f"worst CPU ratio {worst:.2f}x (target <= 1.0x); p99 <= Envoy's in {p99_ok} of {len(results)} cells "
        f"(all requests pooled), in {p99_median_ok} of {len(results)} by the median over rounds"
    )
    if has_before(args):
        print(f"agent / before ({before_label(args)}), same rounds: CPU/req, p99")
        for (sdk, shape), run in results.items():
            before = run.results["before"]
            cpu, p99 = cpu_ratio(run, args.rounds, "before"), pct(run.results["agent"], 99) / pct(before, 99)
            print(
                f"  {sdk + '/' + shape:<24}{cpu:>6.2f}x{p99:>7.2f}x"
                f"  (before: {before.cpu_per_request_us():.1f}us, p99 {pct(before, 99):.2f}ms)"
            )
    print(f"load average before the run: {args.load_before}; after: {load_average()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="groups of blocks the CPU ratio is the median over")
    ap.add_argument("--seconds", type=float, default=20.0, help="per system and cell")
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--body-rate", type=float, default=20.0)
    ap.add_argument("--body-seconds", type=float, default=50.0, help="per system, body cells")
    ap.add_argument("--block-seconds", type=float, default=0.5, help="the client's turn at one system")
    ap.add_argument(
        "--warm-ms",
        type=float,
        default=4.0,
        help="requests due in a block's first ms are not counted (at least one): a system idle for the others' blocks",
    )
    ap.add_argument(
        "--realtime",
        action="store_true",
        help="client, nginx and both proxies under SCHED_FIFO (chrt): the systems' own latency, not other load's",
    )
    ap.add_argument("--cells", default="", help="comma-separated sdk/shape cells (default: all)")
    ap.add_argument(
        "--baseline", type=Path, help="another checkout (built with `make native`): its agent runs in the same rounds"
    )
    ap.add_argument(
        "--baseline-wasmtime",
        choices=("stock", "built"),
        help="the before agent: this checkout's on that libwasmtime (MESHPLUG_WASMTIME; meshplug.wasmlib)",
    )
    ap.add_argument("--instructions", action="store_true", help="count instructions per request (callgrind) instead")
    ap.add_argument("--requests", type=int, default=2000, help="requests per counted run (--instructions)")
    ap.add_argument("--body-requests", type=int, default=20, help="bodies per counted run (--instructions)")
    ap.add_argument(
        "--count-body-bytes",
        type=int,
        default=COUNT_BODY_BYTES,
        help="body size under callgrind (--instructions; a guest callback has 1 s of wall clock, ~50x slower there)",
    )
    ap.add_argument("--count-connections", type=int, default=16, help="h2load connections (--instructions)")
    ap.add_argument("--dumps", type=Path, help="keep callgrind's dumps in this directory (--instructions)")
    args = ap.parse_args()
    args.load_before = load_average()
    chosen = [tuple(c.split("/", 1)) for c in args.cells.split(",") if c] or list(CELLS)
    unknown = [c for c in chosen if c not in CELLS]
    if unknown:
        ap.error(f"unknown cells {unknown}; known: {[f'{s}/{h}' for s, h in CELLS]}")
    if args.instructions:
        return main_instructions(chosen, args)
    results: dict[tuple[str, str], CellRun] = {}
    aborted: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        work = Path(tmp)
        upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
        if args.realtime:
            subprocess.run(["chrt", "--all-tasks", "--fifo", "--pid", "1", str(upstream.pid)], check=True)
        try:
            for sdk, shape in chosen:
                try:
                    results[(sdk, shape)] = bench_cell(work, upstream.ports["http"], sdk, shape, args)
                except RuntimeError as exc:  # one cell's failure is reported; the others still run
                    aborted[(sdk, shape)] = str(exc)
        finally:
            upstream.stop()
    report(results, args)
    for (sdk, shape), why in aborted.items():
        print(f"{sdk}/{shape}: ABORTED: {why}")
    return 0


def main_instructions(chosen: list[tuple[str, ...]], args: argparse.Namespace) -> int:
    why = _callgrind.available()
    if why is not None:
        print(f"--instructions: {why}", file=sys.stderr)
        return 2
    results: dict[tuple[str, str], dict[str, list[_callgrind.Count]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-matrix-cg-") as tmp:
        work = Path(tmp)
        dumps = args.dumps or work / "dumps"
        dumps.mkdir(parents=True, exist_ok=True)
        upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
        try:
            for sdk, shape in chosen:
                results[(sdk, shape)] = count_cell(work, dumps, upstream.ports["http"], (sdk, shape), args)
        finally:
            upstream.stop()
    instructions_report(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
