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
no such plugin in the corpus is printed as "no module". Load: bench/openloop.py, open loop
at `--rate` requests/s (`--body-rate` for the body shape), latency from each request's due time (no coordinated
omission), pinned to CPU 0 with the nginx upstream; both proxies pinned to CPU 1 (Envoy --concurrency 1). For
each cell both proxies run, then `--rounds` rounds of `--seconds` interleaved (agent, Envoy, agent, ...). Per run:
the proxy's CPU per request (schedstat over its process tree / answered requests), RSS after the run, p50 and p99
latency. Prints per cell the medians and the median of the per-round agent/Envoy ratios, then the worst CPU ratio
and how many cells have the agent's p99 at or under Envoy's (targets: worst CPU <= 1.0x, p99 <= Envoy's).
Failed requests (wrong status, reset, no answer) are counted per system and printed with their kinds; more than 1%
in a run aborts it (a ratio over failing requests would mean nothing).

Usage: bench/matrix.py [--rounds 3] [--seconds 5] [--rate 500] [--body-rate 20] [--cells rust/header,go/httpcall]
       [--baseline CHECKOUT]  (another checkout's agent in the same rounds: agent/before ratios)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CAN_PIN, LOAD_CPU, PROXY_CPU, cpu_ns, pin_pid, rss_mib
from tests.corpus import modules
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

OPENLOOP = Path(__file__).resolve().parent / "openloop.py"
SDKS = ("rust", "go", "assemblyscript", "c")
SHAPES = ("header", "body", "local", "httpcall")
#: the "1 MiB" body: 1023 KiB, under both proxies' buffer limit for a body a filter holds (Envoy's default
#: per_connection_buffer_limit_bytes answers 413 from 1 MiB on, the agent's MAX_BUFFERED_BODY_BYTES above it)
BODY_BYTES = 1023 * 1024


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


def config_text(cell: Cell) -> str:
    return cell.configuration if isinstance(cell.configuration, str) else json.dumps(cell.configuration)


def start_agent(work: Path, name: str, upstream: int, cell: Cell, source: Path | None = None) -> tuple[procs.Proc, int]:
    port, admin = procs.free_port(), procs.free_port()
    plugin: dict[str, Any] = {
        "name": "bench",
        "module": {"file": str(modules.module(cell.module).path)},
        "configuration": config_text(cell),
    }
    if cell.root_id:
        plugin["root_id"] = cell.root_id
    raw = tb_agent.base_config(
        port=port, admin_port=admin, clusters={"upstream": upstream, "authz": upstream}, plugins=[plugin]
    )
    env = None if source is None else {"PYTHONPATH": str(source), "MESHPLUG_REQUIRE_NATIVE": "1"}
    agent = tb_agent.start_agent(
        raw, work_dir=work / name, log_dir=work, name=name, log_level="warning", env=env, cwd=source
    )  # (`source`: another checkout's agent; `python -m` puts the working directory first on the path)
    return agent.proc, port


def start_envoy(work: Path, name: str, upstream: int, cell: Cell) -> tuple[procs.Proc, int]:
    port, admin = procs.free_port(), procs.free_port()
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
    listener = tb_envoy.http_listener("bench", port, cluster="upstream", http_filters=[wasm])
    clusters = [tb_envoy.static_cluster("upstream", upstream), tb_envoy.static_cluster("authz", upstream)]
    path = tb_envoy.write_config(tb_envoy.bootstrap(admin, [listener], clusters), work / f"{name}.json")
    envoy = tb_envoy.start_envoy(path, admin_port=admin, log_dir=work, name=name, component_log_levels="wasm:warn")
    return envoy.proc, port


def load_args(shape: str, args: argparse.Namespace) -> list[str]:
    if shape == "body":
        return ["--rate", str(args.body_rate), "--method", "POST", "--body-bytes", str(BODY_BYTES)]
    if shape == "local":
        return ["--rate", str(args.rate), "--path", "/admin/x", "--expect", "403"]
    if shape == "httpcall":
        return ["--rate", str(args.rate), "--header", "authorization: Bearer alice"]
    return ["--rate", str(args.rate)]


def run_load(
    pid: int, port: int, shape: str, seconds: float, args: argparse.Namespace, *, warmup: bool = False
) -> dict[str, Any]:
    pin = ["taskset", "-c", str(LOAD_CPU)] if CAN_PIN else []
    argv = [*pin, sys.executable, str(OPENLOOP), str(port), "--seconds", str(seconds), *load_args(shape, args)]
    before = cpu_ns(pid)
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    used = cpu_ns(pid) - before
    if out["bad"] > 0.01 * out["due"] and not warmup:
        raise RuntimeError(f"failed requests under load ({shape}, port {port}): {out}")
    out["cpu_us"] = used / max(1, out["ok"]) / 1000
    out["rss_mib"] = rss_mib(pid)
    return out


def bench_cell(work: Path, upstream: int, sdk: str, shape: str, args: argparse.Namespace) -> dict[str, Any]:
    cell = CELLS[(sdk, shape)]
    started: list[procs.Proc] = []
    try:
        systems = {"agent": start_agent(work, f"agent-{sdk}-{shape}", upstream, cell)}
        started.append(systems["agent"][0])  # (stopped even when Envoy does not start)
        systems["envoy"] = start_envoy(work, f"envoy-{sdk}-{shape}", upstream, cell)
        started.append(systems["envoy"][0])
        if args.baseline is not None:
            systems["before"] = start_agent(work, f"before-{sdk}-{shape}", upstream, cell, args.baseline)
            started.append(systems["before"][0])
        for proc, port in systems.values():
            if CAN_PIN:
                pin_pid(proc.pid, PROXY_CPU)
            run_load(proc.pid, port, shape, 1.0, args, warmup=True)  # warm up: connections, JIT, the VMs' heaps
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, (proc, port) in systems.items():
                try:
                    runs[name].append(run_load(proc.pid, port, shape, args.seconds, args))
                except RuntimeError as exc:
                    raise RuntimeError(f"{name}: {exc}") from None
    finally:
        for proc in started:
            proc.stop()
    return runs


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def ratio(runs: dict[str, list[dict[str, Any]]], key: str, base: str = "envoy") -> float:
    return statistics.median(a[key] / e[key] for a, e in zip(runs["agent"], runs[base], strict=True))


def report(results: dict[tuple[str, str], dict[str, list[dict[str, Any]]]], args: argparse.Namespace) -> None:
    print(
        f"matrix: agent vs Envoy 1.40 + V8, open loop at {args.rate:g} req/s ({args.body_rate:g} for 1 MiB bodies), "
        f"{args.rounds} interleaved rounds x {args.seconds:g}s, medians; proxies pinned: {CAN_PIN}"
    )
    head = f"{'cell':<26}{'CPU/req agent':>14}{'envoy':>9}{'ratio':>7}{'RSS agent':>10}{'envoy':>7}{'ratio':>7}"
    print(head + f"{'p50 agent':>10}{'envoy':>7}{'p99 agent':>10}{'envoy':>7}{'p99 ratio':>10}")
    worst = 0.0
    p99_ok = 0
    for (sdk, shape), runs in results.items():
        a, e = runs["agent"], runs["envoy"]
        cpu_r, rss_r, p99_r = ratio(runs, "cpu_us"), ratio(runs, "rss_mib"), ratio(runs, "p99_ms")
        worst = max(worst, cpu_r)
        p99_ok += p99_r <= 1.0
        print(
            f"{sdk + '/' + shape:<26}{med(a, 'cpu_us'):>12.1f}us{med(e, 'cpu_us'):>7.1f}us{cpu_r:>6.2f}x"
            f"{med(a, 'rss_mib'):>8.0f}Mi{med(e, 'rss_mib'):>5.0f}Mi{rss_r:>6.2f}x"
            f"{med(a, 'p50_ms'):>8.2f}ms{med(e, 'p50_ms'):>5.2f}ms{med(a, 'p99_ms'):>8.2f}ms{med(e, 'p99_ms'):>5.2f}ms"
            f"{p99_r:>9.2f}x  {CELLS[(sdk, shape)].module}"
        )
    for sdk in SDKS:
        for shape in SHAPES:
            if (sdk, shape) not in CELLS:
                print(f"{sdk + '/' + shape:<26}no module of this shape in the corpus for this SDK")
    for (sdk, shape), runs in results.items():
        for name, rs in runs.items():
            failed = sum(r["bad"] for r in rs)
            if failed:
                kinds: dict[str, int] = {}
                for r in rs:
                    for kind, n in r["errors"].items():
                        kinds[kind] = kinds.get(kind, 0) + n
                print(f"{sdk}/{shape} {name}: {failed} of {sum(r['due'] for r in rs)} requests failed {kinds}")
    print(f"worst CPU ratio {worst:.2f}x (target <= 1.0x); p99 <= Envoy's in {p99_ok} of {len(results)} cells")
    if args.baseline is not None:
        print(f"agent / before ({args.baseline}), same rounds: CPU/req, p99")
        for (sdk, shape), runs in results.items():
            before = runs["before"]
            cpu, p99 = ratio(runs, "cpu_us", "before"), ratio(runs, "p99_ms", "before")
            print(
                f"  {sdk + '/' + shape:<24}{cpu:>6.2f}x{p99:>7.2f}x"
                f"  (before: {med(before, 'cpu_us'):.1f}us, p99 {med(before, 'p99_ms'):.2f}ms)"
            )
    print(f"load average after the run: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--body-rate", type=float, default=20.0)
    ap.add_argument("--cells", default="", help="comma-separated sdk/shape cells (default: all)")
    ap.add_argument(
        "--baseline", type=Path, help="another checkout (built with `make native`): its agent runs in the same rounds"
    )
    args = ap.parse_args()
    chosen = [tuple(c.split("/", 1)) for c in args.cells.split(",") if c] or list(CELLS)
    unknown = [c for c in chosen if c not in CELLS]
    if unknown:
        ap.error(f"unknown cells {unknown}; known: {[f'{s}/{h}' for s, h in CELLS]}")
    results: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    aborted: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        work = Path(tmp)
        upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
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


if __name__ == "__main__":
    raise SystemExit(main())
