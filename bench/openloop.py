#!/usr/bin/env python3
"""An open-loop HTTP/1.1 load generator: requests at a fixed rate, whatever the server's speed (wrk2-style).

wrk is closed loop (a connection sends its next request when the previous answer arrived), so a slow server
slows the load and hides its queueing; Debian has no wrk2, and h2load's rate mode paces connections, not requests.
Here request i of a block is due at the block's start + i / rate; it goes out on an idle keep-alive connection of
its target, or a new one when all are busy (up to `--max-conns`), and its latency is measured from the time it was
due, not from when it was sent: a server that falls behind shows its whole queueing delay (no coordinated omission).

The client is C (bench/openloop.c, built with cc on first use into the user's cache): one thread, epoll, an
absolute timerfd per due time with 1 ns timer slack, TCP_NODELAY, nothing allocated per request, so its own tail is
the kernel's scheduling alone. (The earlier Python + uvloop client woke on libuv's millisecond timers and ran its
own GC: against nginx alone its p99 was 4-6 ms at load 7.)

Several targets (the proxies compared, and nginx straight as the client's own floor) are served by the one client
in alternating blocks of `--block-seconds`: each block goes to the next target, starts when the previous block's
last answer came, and no two targets are ever loaded at once, so every target sees the same machine, interleaved
finely. Each target's CPU time (its processes' threads' /proc schedstat) is read around its own blocks.

Usage: bench/openloop.py PORT [PORT...] --rate 500 --seconds 5 [--method POST --body-bytes 1048576] [--path /]
       [--header 'name: value'] [--expect 200] [--block-seconds 0.5] [--warm 0] [--realtime]
Prints one JSON line per port: due, ok (answered with the expected status), bad, errors by kind, p50/p90/p99/
p99.9/max latency in ms, the connections opened, and the client's own lateness (client_late_p99_ms): how long
after each due time it began sending, its timer's wake-up under this machine's load, a part of every latency
that is the client's and not the server's. Loaded, it shows whether the client sets the tail: at --realtime on
this 2-vCPU VM its p99 was 0.08-0.15 ms (p50 0.03-0.06 ms) for every target alike, against p99 latencies of
0.4-3 ms; its p99.9 reached 0.5-1 ms (the host's timer interrupts arriving late).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "openloop.c"
#: the client (and, in bench/matrix.py --realtime, the servers) under SCHED_FIFO: other processes' load no longer
#: delays them (the kernel's RT throttling still leaves others 5% of each CPU)
REALTIME = ("chrt", "--fifo", "1")
ERRORS = {-1: "connect", -2: "reset or EOF", -3: "bad response", -4: "no connection free", -5: "no answer"}


def binary() -> Path:
    """The C client, built from SOURCE when its cached build (keyed by the source's hash) is missing."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "meshplug" / "bench"
    out = cache / f"openloop-{digest}"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}")
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp), str(SOURCE)], check=True)
        tmp.replace(out)
    return out


def request_bytes(
    method: str = "GET", path: str = "/", headers: Sequence[str] = (), body_bytes: int = 0, host: str = "bench.local"
) -> bytes:
    body = b"x" * body_bytes
    head = [f"{method} {path} HTTP/1.1", f"host: {host}", *headers]
    if body or method in ("POST", "PUT"):
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Target:
    port: int
    request: bytes
    expect: int = 200
    pids: tuple[int, ...] = ()  # processes whose CPU time is read around this target's blocks


@dataclass(frozen=True)
class Block:
    latencies_ms: tuple[float, ...]  # of the block's requests answered with the expected status
    cpu_us: float  # CPU time of the target's processes during the block
    due_s: tuple[float, ...] = ()  # those requests' due times, from the run's start
    late_ms: tuple[float, ...] = ()  # how late the client began sending each of them (its own wake-up)


@dataclass(frozen=True)
class Result:
    blocks: tuple[Block, ...]  # the target's blocks in the order they ran
    due: int
    errors: dict[str, int]  # failed requests by kind (wrong status, reset, ...)
    conns: int

    def latencies(self, blocks: slice = slice(None)) -> list[float]:
        return [x for b in self.blocks[blocks] for x in b.latencies_ms]

    def client_late(self, blocks: slice = slice(None)) -> list[float]:
        """How late (ms) the client began sending each answered request: the client's share of its latency."""
        return [x for b in self.blocks[blocks] for x in b.late_ms]

    @property
    def ok(self) -> int:
        return sum(len(b.latencies_ms) for b in self.blocks)

    @property
    def bad(self) -> int:
        return self.due - self.ok

    def cpu_per_request_us(self, blocks: slice = slice(None)) -> float:
        chosen = self.blocks[blocks]
        return sum(b.cpu_us for b in chosen) / max(1, sum(len(b.latencies_ms) for b in chosen))

    def summary(self) -> dict[str, object]:
        lat = self.latencies()
        return {
            "due": self.due,
            "ok": self.ok,
            "bad": self.bad,
            "errors": self.errors,
            **{f"p{p:g}_ms": percentile(lat, p) for p in (50, 90, 99, 99.9)},
            "max_ms": max(lat, default=float("nan")),
            "conns": self.conns,
            "client_late_p99_ms": percentile(self.client_late(), 99),
        }


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(
    targets: Sequence[Target],
    *,
    rate: float,
    seconds: float,
    block_seconds: float = 0.5,
    max_conns: int = 256,
    drain: float = 10.0,
    cpu: int | None = None,
    realtime: bool = False,
    warm: int = 0,
) -> list[Result]:
    """Load each target with `rate` requests/s for `seconds` in all, in alternating blocks; one Result per target.
    `warm`: the first requests of each block are sent but not counted (the target was idle for the other targets'
    blocks: its first answers after that pause are a proxy waking, not one under a steady rate)."""
    per_block = max(1, round(rate * block_seconds))
    blocks_each = max(1, round(rate * seconds / per_block))
    with tempfile.TemporaryDirectory(prefix="openloop-") as tmp:
        argv = [str(binary()), repr(rate), str(per_block), str(blocks_each), str(max_conns), repr(drain)]
        for i, t in enumerate(targets):
            req = Path(tmp) / f"request-{i}"
            req.write_bytes(t.request)
            argv += [str(t.port), str(t.expect), str(req), ",".join(map(str, t.pids)) or "-"]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        if realtime:
            argv = [*REALTIME, *argv]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    pending: list[list[float]] = [[] for _ in targets]
    dues: list[list[float]] = [[] for _ in targets]
    lates: list[list[float]] = [[] for _ in targets]
    block_start = [0] * len(targets)  # (ns) the due time of each target's current block's first request
    blocks: list[list[Block]] = [[] for _ in targets]
    errors: list[dict[str, int]] = [{} for _ in targets]
    conns = [0] * len(targets)
    for line in out.splitlines():
        kind, t_, *rest = line.split()
        t = int(t_)
        if kind == "r":
            ns, status, due, late = int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3])
            if round((due - block_start[t]) * rate / 1e9) < warm:
                continue
            if status == targets[t].expect:
                pending[t].append(ns / 1e6)
                dues[t].append(due / 1e9)
                lates[t].append(late / 1e6)
            else:
                what = ERRORS.get(status, f"status {status}")
                errors[t][what] = errors[t].get(what, 0) + 1
        elif kind == "b":
            blocks[t].append(Block(tuple(pending[t]), int(rest[0]) / 1000, tuple(dues[t]), tuple(lates[t])))
            pending[t], dues[t], lates[t] = [], [], []
        elif kind == "s":
            block_start[t] = int(rest[0])
        elif kind == "c":
            conns[t] = int(rest[0])
    counted = (per_block - min(warm, per_block)) * blocks_each
    return [Result(tuple(blocks[t]), counted, errors[t], conns[t]) for t in range(len(targets))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ports", type=int, nargs="+")
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=5.0, help="per target")
    ap.add_argument("--block-seconds", type=float, default=0.5)
    ap.add_argument("--method", default="GET")
    ap.add_argument("--path", default="/")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--body-bytes", type=int, default=0)
    ap.add_argument("--expect", type=int, default=200)
    ap.add_argument("--max-conns", type=int, default=256)
    ap.add_argument("--warm", type=int, default=0, help="requests at each block's start not counted")
    ap.add_argument("--realtime", action="store_true", help="the client under SCHED_FIFO (chrt)")
    ap.add_argument("--drain", type=float, default=10.0, help="seconds to wait for a block's last answers")
    args = ap.parse_args()
    req = request_bytes(args.method, args.path, args.header, args.body_bytes)
    targets = [Target(port, req, args.expect) for port in args.ports]
    results = run(
        targets,
        rate=args.rate,
        seconds=args.seconds,
        block_seconds=args.block_seconds,
        max_conns=args.max_conns,
        drain=args.drain,
        realtime=args.realtime,
        warm=args.warm,
    )
    for port, res in zip(args.ports, results, strict=True):
        print(json.dumps({"port": port, **res.summary()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
