"""The HTTP/2 differential bed: Envoy 1.40 and the agent, each with one HTTP listener (h2c with prior knowledge
beside HTTP/1.1, Istio's sidecar server_name) in front of the same HTTP/1.1 echo app. Used by the HTTP/2 halves of
the differential suite (tests/integration/test_differential_h2*.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs, upstream

#: both proxies' HCM server_name: Istio's sidecar inbound value, the agent's native default
SERVER_NAME = "istio-envoy"


@dataclass(frozen=True)
class Bed:
    envoy_port: int
    agent: tb_agent.Agent


@contextlib.contextmanager
def started(tmp: Path) -> Iterator[Bed]:
    """Start the echo app, Envoy and the agent under `tmp` (logs in tmp/logs); stopped on exit."""
    logs = tmp / "logs"
    running: list[Any] = []
    try:
        echo = upstream.start_service("echo", log_dir=logs)
        running.append(echo)
        port, admin = procs.free_port(), procs.free_port()
        listener = tb_envoy.http_listener("l", port, cluster="echo")
        listener["filter_chains"][0]["filters"][0]["typed_config"]["server_name"] = SERVER_NAME
        config = tb_envoy.bootstrap(admin, [listener], [tb_envoy.static_cluster("echo", echo.port)])
        path = tb_envoy.write_config(config, tmp / "envoy")
        tb_envoy.validate_config(path)
        running.append(tb_envoy.start_envoy(path, admin_port=admin, log_dir=logs))
        raw = tb_agent.base_config(
            port=procs.free_port(), admin_port=procs.free_port(), clusters={"echo": echo.port}, listener_cluster="echo"
        )
        agent = tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=logs, log_level="info")
        running.append(agent)
        yield Bed(port, agent)
    finally:
        for item in reversed(running):
            item.stop()
