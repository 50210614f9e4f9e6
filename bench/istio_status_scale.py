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
seconds (utime + stime of the process, threads that ended included), apply→all-Loaded time. The machine's load
average is printed: compare runs of one machine state, as ratios.

    .venv/bin/python bench/istio_status_scale.py [--pods 3] [--plugins 30]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.server
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
        self.last = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)


class _Forward(http.server.BaseHTTPRequestHandler):
    server: Counter

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.counts[self.path.split("?", 1)[0]] += 1
            self.server.last = time.monotonic()
        try:
            with urllib.request.urlopen(self.server.upstream + self.path, timeout=10) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                status, body = exc.code, exc.read()
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
    print(
        f"{name:7s} all Loaded after {shown}; istiod requests {total} in {wall:.1f} s "
        f"({total / max(wall, 0.001):.1f}/s; {by}); operator CPU {cpu:.2f} s",
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
                print(f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
