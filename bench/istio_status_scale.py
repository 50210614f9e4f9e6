"""What the istio plane's status costs istiod and the operator when many plugins change at once: the real istiod,
istio-agent and Envoy of the test bed (tests/testbed/istio.py), meshplug's operator as a process.

Starts the mesh, ``--pods`` sidecar pods (istio-agent + Envoy each) labelled ``app=scale``, and the operator, whose
``--istiod-debug-url`` is a counting proxy in front of istiod's debug port (every request the operator sends istiod
passes it: counted by endpoint, forwarded unchanged). Then, in phases:
- ``create``: ``--plugins`` WasmPlugins (native route, header_rules, each adding its own response header), applied
  one after the other as fast as the API takes them, every one selecting every pod;
- ``update``: each plugin's configuration changed at once;
- ``idle``: ``--idle`` s with nothing changing.
A phase lasts from its first apply until every plugin reports Ready=True (Loaded) for its generation, and then until
the operator has sent istiod nothing for ``--quiet`` s (its NACK watch stops once the versions are no longer fresh;
bounded by ``--deadline``). Per phase: istiod requests by endpoint, requests per second, the operator's CPU
seconds (utime + stime of the process, threads that ended included), apply→all-Loaded time, syncz's size and
istiod's answer time. Then what one NACK watch reading costs at this many proxies (syncz read straight from istiod
and parsed by the operator's own code, 50 times: size, wall time, this process's CPU; per proxy), and, scaled
linearly to 10x, 100x and 1000x the proxies, the watch's share of the time and of a core every
`limits.NACK_WATCH_INTERVAL_S` unbounded and under `limits.NACK_WATCH_MAX_DUTY`. The machine's load average is
printed: compare runs of one machine state, as ratios.

    .venv/bin/python bench/istio_status_scale.py [--pods 3] [--plugins 30]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.server
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MESHPLUG_REQUIRE_NATIVE", "1")

from meshplug import limits
from meshplug.controller.delivery import nacks, proxies
from tests.corpus import modules as corpus
from tests.testbed import istio, procs
from tests.testbed import mesh_operator as mesh_operator_mod

NS = "scale"
PLUGINS = f"/apis/meshplug.io/v1alpha1/namespaces/{NS}/wasmplugins"


class Counter(http.server.ThreadingHTTPServer):
    """A proxy in front of istiod's debug port: forwards each GET, counts it by path (query left out)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", procs.free_port()), _Forward)
        self.upstream = upstream
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.bytes: collections.Counter[str] = collections.Counter()  # answer bytes by path
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)  # istiod's answer time
        self.last = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)

    def costs(self) -> tuple[collections.Counter[str], dict[str, float]]:
        """(answer bytes, istiod's answer seconds) by path so far."""
        with self.lock:
            return collections.Counter(self.bytes), dict(self.seconds)


class _Forward(http.server.BaseHTTPRequestHandler):
    server: Counter

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.counts[path] += 1
            self.server.last = time.monotonic()
        started = time.monotonic()
        try:
            with urllib.request.urlopen(self.server.upstream + self.path, timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, body = exc.code, exc.read()
        with self.server.lock:
            self.server.bytes[path] += len(body)
            self.server.seconds[path] += time.monotonic() - started
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@contextlib.contextmanager
def counting(upstream: str) -> Iterator[Counter]:
    server = Counter(upstream)
    thread = threading.Thread(target=server.serve_forever, name="istiod-counter", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def cpu_s(pid: int) -> float:
    """utime + stime of process ``pid`` (its ended threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def all_loaded(op: mesh_operator_mod.MeshOperator, expected: int) -> bool:
    status, body = op.mesh.kube.request("GET", PLUGINS)
    if status != 200:
        return False
    done = 0
    for obj in body.get("items") or []:
        current = obj.get("status") or {}
        if current.get("observedGeneration") != obj["metadata"]["generation"]:
            continue
        ready = next((c for c in current.get("conditions") or [] if c["type"] == "Ready"), {})
        done += ready.get("reason") == "Loaded"
    return done == expected


def phase(
    name: str,
    op: mesh_operator_mod.MeshOperator,
    counter: Counter,
    apply: Any,
    *,
    plugins: int,
    args: argparse.Namespace,
) -> None:
    before, cpu0, t0 = counter.snapshot(), cpu_s(op.op.proc.pid), time.monotonic()
    bytes0, seconds0 = counter.costs()
    apply()
    loaded = None
    if plugins:
        procs.wait_until(lambda: all_loaded(op, plugins), timeout=args.deadline, interval=0.2, what=f"{name}: Loaded")
        loaded = time.monotonic() - t0
    else:
        time.sleep(args.idle)  # the idle phase is a span of time, not a wait for a state
    procs.wait_until(
        lambda: time.monotonic() - max(counter.last, t0) > args.quiet,
        timeout=args.deadline,
        interval=0.2,
        what=f"{name}: the operator's istiod reads ending",
    )
    # a change's phase ends with its last istiod request; the idle phase is its whole span
    wall = (counter.last if plugins and counter.last > t0 else time.monotonic()) - t0
    cpu = cpu_s(op.op.proc.pid) - cpu0
    spent = counter.snapshot() - before
    total = sum(spent.values())
    by = ", ".join(f"{path} {n}" for path, n in sorted(spent.items()))
    shown = f"{loaded:.2f} s" if loaded is not None else "-"
    bytes1, seconds1 = counter.costs()
    syncz = spent.get("/debug/syncz", 0)
    size = (bytes1["/debug/syncz"] - bytes0["/debug/syncz"]) / max(syncz, 1)
    answer = (seconds1.get("/debug/syncz", 0.0) - seconds0.get("/debug/syncz", 0.0)) / max(syncz, 1) * 1000
    print(
        f"{name:7s} all Loaded after {shown}; istiod requests {total} in {wall:.1f} s "
        f"({total / max(wall, 0.001):.1f}/s; {by}); operator CPU {cpu:.2f} s; "
        f"syncz {size / 1024:.1f} KiB, answered in {answer:.1f} ms on average",
        flush=True,
    )


def reading_cost(url: str, pods: int, rounds: int = 50) -> None:
    """What one NACK watch reading costs at this many proxies: istiod's syncz read and parsed by the operator's own
    code (`proxies.Istiod.syncz`, as `nacks.NackWatch.look` reads it), ``rounds`` times: the answer's size, istiod's
    answer time, the parse's CPU (this process, apart from the wait); per proxy, and what reading every
    `limits.NACK_WATCH_INTERVAL_S` would cost at 10x and 100x the proxies, against the watch's bound."""
    istiod = proxies.Istiod([url])
    raw = istiod._get(istiod.urls[0], "/debug/syncz")
    size = len(json.dumps(raw))
    wall = cpu = 0.0
    for _ in range(rounds):
        w0, c0 = time.monotonic(), time.process_time()
        syncs, problem = istiod.syncz()
        wall, cpu = wall + time.monotonic() - w0, cpu + time.process_time() - c0
        assert not problem, problem
    wall, cpu = wall / rounds, cpu / rounds
    print(
        f"reading {len(syncs)} proxies: syncz {size / 1024:.1f} KiB ({size / max(len(syncs), 1):.0f} B per proxy), "
        f"one reading {wall * 1000:.1f} ms wall, {cpu * 1000:.2f} ms operator CPU "
        f"({cpu / max(len(syncs), 1) * 1e6:.0f} us per proxy)",
        flush=True,
    )
    for scale in (10, 100, 1000):
        n = len(syncs) * scale
        spent, parse = wall * scale, cpu * scale  # istiod's answer and the parse grow with the proxies
        loose = spent + limits.NACK_WATCH_INTERVAL_S  # one reading's period unbounded
        bound = spent + nacks.pause(spent, limits.NACK_WATCH_INTERVAL_S)
        print(
            f"  at {n} proxies (linear): a reading ~{spent * 1000:.0f} ms, {parse * 1000:.0f} ms operator CPU; "
            f"unbounded one every {loose:.2f} s ({spent / loose:.0%} of the time, {parse / loose:.0%} of a core); "
            f"bounded (NACK_WATCH_MAX_DUTY {limits.NACK_WATCH_MAX_DUTY}) one every {bound:.2f} s "
            f"({spent / bound:.0%} of the time, {parse / bound:.0%} of a core)",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--plugins", type=int, default=30)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--quiet", type=float, default=2.0)
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    module = corpus.module("rust/header_rules").path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="istio-status-scale-") as tmp:
        work = Path(tmp)
        with istio.mesh(work / "mesh", work / "logs") as mesh:
            mesh.namespace(NS)
            for i in range(args.pods):
                mesh.sidecar(NS, f"scale-{i}", {"app": "scale"})
            with (
                counting(mesh.istiod.debug_url) as counter,
                mesh_operator_mod.running(mesh, work / "operator", istiod_url=counter.url) as op,
            ):
                url, sha = op.module_url(module, "header_rules.wasm")

                def apply_all(value: str) -> None:
                    for i in range(args.plugins):
                        spec = {
                            "url": url,
                            "sha256": sha,
                            "selector": {"matchLabels": {"app": "scale"}},
                            "pluginConfig": {"response": {"add": {f"x-p{i}": value}}},
                        }
                        op.plugin(NS, f"p{i}", spec)

                print(f"pods {args.pods}, plugins {args.plugins}; load average {os.getloadavg()[0]:.1f}", flush=True)
                phase("create", op, counter, lambda: apply_all("1"), plugins=args.plugins, args=args)
                phase("update", op, counter, lambda: apply_all("2"), plugins=args.plugins, args=args)
                phase("idle", op, counter, lambda: None, plugins=0, args=args)
                reading_cost(mesh.istiod.debug_url, args.pods)
                print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
