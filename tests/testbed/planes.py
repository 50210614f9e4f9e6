"""Envoy 1.40 or meshplug's agent on one Envoy bootstrap: the start a differential fixture makes for each plane.

`start("envoy", ...)` runs Envoy (tests/testbed/envoy.py), `start("agent", ...)` runs `meshplug run --envoy-config`
(tests/testbed/agent.py) on the same file; the fixture writes a bootstrap per plane (its own ports), starts it, and
stops what it started. Both planes' plugin log lines read alike (`Started.logs`: (level, text), as Envoy's
`plugin_logs` gives them), so a test compares them without asking which plane it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy

#: the planes a differential test runs, the oracle first
PLANES = ("envoy", "agent")


@dataclass(frozen=True)
class Started:
    """A running plane: its process handle and a reader of its plugin log lines (level, text)."""

    handle: tb_envoy.Envoy | tb_agent.Agent
    logs: Callable[[], list[tuple[str, str]]]

    def stop(self) -> None:
        self.handle.stop()


def start(plane: str, config: Path, *, port: int, admin_port: int, log_dir: Path, name: str = "") -> Started:
    """Start ``plane`` ("envoy" or "agent") on the bootstrap ``config`` whose listener port (the agent waits on it)
    and admin port are ``port`` / ``admin_port``; its log below ``log_dir`` (``name``: default the plane's)."""
    if plane == "envoy":
        envoy = tb_envoy.start_envoy(config, admin_port=admin_port, log_dir=log_dir, name=name or plane)
        return Started(envoy, envoy.plugin_logs)
    if plane != "agent":
        raise ValueError(f"no plane {plane!r}: one of {PLANES}")
    agent = tb_agent.start_envoy_config(config, port=port, admin_port=admin_port, log_dir=log_dir, name=name or plane)
    return Started(agent, lambda: [(str(r["level"]), str(r["message"])) for r in agent.admin_json("/plugin_logs")])
