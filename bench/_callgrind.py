"""Instructions per request of whole running proxies, counted by callgrind: the figure a noisy, shared machine
cannot move (wall-clock CPU time per request rises for every process when both cores are busy; instructions do
not). Hardware counters (`perf stat -e instructions`) are what one would use, but a VM guest often has none
(this machine's AMD EPYC guest reports `<not supported>`), so each proxy process runs under valgrind's callgrind.

How: the proxy starts under `valgrind --tool=callgrind --instr-atstart=no --trace-children=yes` (a multi-worker
agent's workers are started by its parent, so they run under valgrind too), counting nothing while it starts and
warms up; then, per measured run, `callgrind_control --instr=on` on every process of its tree, a fixed number of
requests from h2load (HTTP/1.1, -n requests over -c connections), `callgrind_control --dump` and `--instr=off`:
each dump's totals are that process's instructions over those requests, whatever the scheduler did meanwhile.
Per request = sum over the processes / requests; the per-process parts (parent, each worker; Envoy is one
process, its threads summed) are kept.

What stays machine-dependent: how many requests one event-loop wake-up finds. Under callgrind a proxy runs ~50x
slower than h2load feeds it, so every wake-up finds a full batch (the -c connections a worker holds): the counts
are the per-request work at saturation, the same regime for x1 and xN, with fewer connections per worker for xN.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import _common


def available() -> str | None:
    """Why instructions cannot be counted here, or None."""
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian valgrind, nghttp2-client)"
    return None


def valgrind_argv(out_dir: Path) -> list[str]:
    """The prefix that runs a proxy (and its children) under callgrind, counting nothing until told."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        "--smc-check=all-non-file",  # JIT code (V8, wasmtime) rewritten in place
        f"--callgrind-out-file={out_dir}/cg.%p",
        "--log-file=" + str(out_dir / "valgrind.%p.log"),
    ]


@dataclass(frozen=True)
class Request:
    """What h2load sends: a path, optional headers, a file POSTed as the body; the status class expected."""

    path: str = "/"
    headers: tuple[str, ...] = ()
    body_file: Path | None = None
    status: str = "2xx"


def load(port: int, requests: int, connections: int, request: Request = Request()) -> None:
    """Exactly `requests` HTTP/1.1 requests (GETs of / unless `request` says otherwise) over `connections`
    keep-alive connections; raises on any failure or any answer outside `request.status`."""
    argv = ["h2load", "--h1", "-n", str(requests), "-c", str(connections)]
    for header in request.headers:
        argv += ["-H", header]
    if request.body_file is not None:
        argv += ["-d", str(request.body_file)]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{request.path}"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    got = None if codes is None else int(codes.group("2345".index(request.status[0]) + 1))
    # (h2load counts a 4xx or 5xx answer as "failed": the status codes say whether each was the one expected)
    if m is None or int(m.group(1)) != requests or got != requests:
        raise RuntimeError(f"h2load did not get {requests} answers of {request.status}:\n{out}")


@dataclass(frozen=True)
class Count:
    """One measured run: instructions per request, in all and by process (in tree order: parent first)."""

    per_request: float
    parts: tuple[float, ...]


def _control(pids: Sequence[int], *args: str) -> None:
    for pid in pids:
        subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _totals(out_dir: Path, pid: int, seen: set[Path]) -> int:
    """The totals of `pid`'s newest dump (cg.<pid>.<n>) not read before."""
    dumps = [p for p in out_dir.glob(f"cg.{pid}.*") if p not in seen]
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for pid {pid} in {out_dir}")
    newest = max(dumps, key=lambda p: int(p.suffix[1:]))
    seen.update(dumps)
    for line in newest.read_text(errors="replace").splitlines():
        m = re.match(r"(?:summary|totals):\s+(\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no totals in {newest}")


def count(
    pid: int,
    port: int,
    out_dir: Path,
    *,
    requests: int,
    connections: int,
    seen: set[Path],
    request: Request = Request(),
) -> Count:
    """Instructions per request of the process tree of `pid` (running under `valgrind_argv(out_dir)`) over
    `requests` requests (`request`: what each is) on `connections` connections."""
    pids = _common.tree(pid)
    _control(pids, "--zero")
    _control(pids, "--instr=on")
    load(port, requests, connections, request)
    _control(pids, "--dump")
    _control(pids, "--instr=off")
    parts = tuple(_totals(out_dir, p, seen) / requests for p in pids)
    return Count(sum(parts), parts)
