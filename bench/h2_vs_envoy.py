#!/usr/bin/env python3
"""HTTP/2 through meshplug's agent vs Envoy 1.40 + V8, one header-adding plugin: CPU per request and RSS.

Two loads, each run interleaved (agent, Envoy, agent, Envoy, ...) with Debian's h2load (nghttp2-client):

* grpc: gRPC unary calls (POST /meshplug.test.Echo/Unary, a 5-byte-framed message, te: trailers) over h2c
  to a real grpcio server (tests/testbed/grpcpeer.py) that both proxies reach as an HTTP/2 cluster;
* h2: plain HTTP/2 GETs (h2c prior knowledge) to Debian nginx-light over HTTP/1.1.

Both proxies run the corpus module rust/header_rules adding one response header (--no-plugin: bare), pinned
to CPU 1 (--concurrency 1 for Envoy); h2load and the upstreams on CPU 0. Per run: requests/s, the proxy's CPU
per request (schedstat before/after over the requests h2load completed) and RSS. Prints medians per system and
the median of the per-round agent/Envoy ratios. Loopback only; about 2 loads * rounds * 2 * seconds + ~30 s.
`--baseline DIR` adds a third system, "baseline": the agent of another checkout (its `make native` build),
interleaved with the others, to measure a change before/after in one run (the ratio is printed too).

Usage: bench/h2_vs_envoy.py [--rounds 5] [--seconds 5] [--load grpc|h2|both] [--no-plugin] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import CAN_PIN, LOAD_CPU, Run, cpu_ns, interleave, pin_pid, rss_mib, start_agent, start_envoy
from tests.corpus import modules
from tests.testbed import grpcpeer, procs
from tests.testbed import nginx as tb_nginx

CONFIG = {"response": {"add": {"x-bench": "1"}}}
#: h2load: 4 connections x 16 concurrent streams
CLIENTS, STREAMS = 4, 16


def h2load(port: int, seconds: int, *, grpc_body: Path | None, pin: list[str]) -> tuple[int, float]:
    """(requests that got a 2xx, seconds they took) for an h2load run of `seconds` against 127.0.0.1:`port`."""
    argv = [*pin, "h2load", "-c", str(CLIENTS), "-m", str(STREAMS), "-D", str(seconds)]
    if grpc_body is not None:
        argv += ["-d", str(grpc_body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        url = f"http://127.0.0.1:{port}/{grpcpeer.SERVICE}/Unary"
    else:
        url = f"http://127.0.0.1:{port}/"
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"finished in ([\d.]+)s", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    if m is None or codes is None or done is None:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    if int(codes.group(4)) or int(codes.group(3)) or int(done.group(3)):
        raise RuntimeError(f"errors under load:\n{out}")
    return int(codes.group(1)), float(m.group(1))


def measure(pid: int, port: int, seconds: int, grpc_body: Path | None, pin: list[str]) -> Run:
    before = cpu_ns(pid)
    n, took = h2load(port, seconds, grpc_body=grpc_body, pin=pin)
    used = cpu_ns(pid) - before
    return Run(n / took, float("nan"), float("nan"), used / n / 1000, rss_mib(pid))


def interleaved(
    systems: Mapping[str, tuple[int, int]], rounds: int, seconds: int, grpc_body: Path | None
) -> dict[str, list[Run]]:
    procs.which_or_fail("h2load", "install Debian nghttp2-client (scripts/install-system-deps.sh)")
    return interleave(systems, rounds, seconds, lambda pid, port, s, pin: measure(pid, port, s, grpc_body, pin))


def report(title: str, runs: dict[str, list[Run]]) -> None:
    print(title)
    print(f"{'system':<8} {'req/s':>9} {'CPU/req us':>11} {'RSS MiB':>8}")
    for name, rs in runs.items():
        print(
            f"{name:<8} {statistics.median(r.rps for r in rs):>9.0f} {statistics.median(r.cpu_us for r in rs):>11.1f} "
            f"{statistics.median(r.rss_mib for r in rs):>8.1f}"
        )
    pairs = list(zip(runs["agent"], runs["envoy"], strict=True))
    cpu = statistics.median(a.cpu_us / e.cpu_us for a, e in pairs)
    rps = statistics.median(a.rps / e.rps for a, e in pairs)
    rss = statistics.median(a.rss_mib / e.rss_mib for a, e in pairs)
    print(f"ratios agent/envoy: CPU/req {cpu:.2f}x  req/s {rps:.2f}x  RSS {rss:.2f}x")
    for name, rs in runs.items():
        print(f"per-round CPU/req {name}: {[round(r.cpu_us, 1) for r in rs]}")
    if "baseline" in runs:
        base = zip(runs["agent"], runs["baseline"], strict=True)
        print(f"ratio agent/baseline: CPU/req {statistics.median(a.cpu_us / b.cpu_us for a, b in base):.3f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--load", choices=["grpc", "h2", "both"], default="both")
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--no-plugin", action="store_true", help="compare the bare proxies")
    ap.add_argument("--baseline", type=Path, help="also run the agent of this checkout (e.g. before a change)")
    args = ap.parse_args(argv)
    wasm = None if args.no_plugin else modules.module(args.module).path
    what = "no plugin" if args.no_plugin else f"{args.module} adding one response header"
    loads = ["grpc", "h2"] if args.load == "both" else [args.load]
    with tempfile.TemporaryDirectory(prefix="bench-h2-") as tmp:
        work = Path(tmp)
        body = work / "unary.bin"
        body.write_bytes(b"\0" + (11).to_bytes(4, "big") + b"hello bench")
        for load in loads:
            started: list[procs.Proc] = []
            try:
                if load == "grpc":
                    server = grpcpeer.start_server(log_dir=work, name="grpc")
                    started.append(server.proc)
                    if CAN_PIN:
                        pin_pid(server.proc.pid, LOAD_CPU)
                    up_port = server.port
                else:
                    upstream = tb_nginx.start_nginx(log_dir=work, cpu=LOAD_CPU if CAN_PIN else None)
                    started.append(upstream)
                    up_port = upstream.ports["http"]
                http2 = load == "grpc"
                agent, a_port = start_agent(work, f"agent-{load}", up_port, wasm, CONFIG, http2=http2)
                started.append(agent)
                envoy, e_port = start_envoy(work, f"envoy-{load}", up_port, wasm, CONFIG, http2=http2)
                started.append(envoy)
                systems = {"agent": (agent.pid, a_port), "envoy": (envoy.pid, e_port)}
                if args.baseline is not None:
                    base, b_port = start_agent(
                        work, f"baseline-{load}", up_port, wasm, CONFIG, http2=http2, source=args.baseline.resolve()
                    )
                    started.append(base)
                    systems["baseline"] = (base.pid, b_port)
                runs = interleaved(systems, args.rounds, args.seconds, body if load == "grpc" else None)
            finally:
                for proc in reversed(started):
                    proc.stop()
            kind = "gRPC unary to a grpcio server" if load == "grpc" else "HTTP/2 GET to nginx (HTTP/1.1)"
            report(
                f"\n{kind}; agent vs Envoy 1.40+V8, {what}; h2load -c{CLIENTS} -m{STREAMS} -D{args.seconds}s; "
                f"{args.rounds} interleaved rounds, medians; proxies pinned: {'CPU 1' if CAN_PIN else 'no'}",
                runs,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
