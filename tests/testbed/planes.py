"""Envoy 1.40 or meshplug's agent on one Envoy bootstrap: the start a differential fixture makes for each plane.

`start("envoy", ...)` runs Envoy (tests/testbed/envoy.py), `start("agent", ...)` runs `meshplug run --envoy-config`
(tests/testbed/agent.py) on the same file; the fixture writes a bootstrap per plane (its own ports), starts it, and
stops what it started (`each`: every plane in turn, stopped in reverse order when the fixture ends). Both planes'
plugin log lines read alike (`Started.logs`: (level, text), as Envoy's `plugin_logs` gives them), so a test
compares them without asking which plane it has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs

#: the planes a differential test runs, the oracle first
PLANES = ("envoy", "agent")


@dataclass(frozen=True)
class Started:
    """A running plane: its process handle, a reader of its plugin log lines (level, text) and its listener port."""

    handle: tb_envoy.Envoy | tb_agent.Agent
    logs: Callable[[], list[tuple[str, str]]]
    port: int

    def stop(self) -> None:
        self.handle.stop()


def start(plane: str, config: Path, *, port: int, admin_port: int, log_dir: Path, name: str = "") -> Started:
    """Start ``plane`` ("envoy" or "agent") on the bootstrap ``config`` whose listener port (the agent waits on it)
    and admin port are ``port`` / ``admin_port``; its log below ``log_dir`` (``name``: default the plane's)."""
    if plane == "envoy":
        envoy = tb_envoy.start_envoy(config, admin_port=admin_port, log_dir=log_dir, name=name or plane)
        return Started(envoy, envoy.plugin_logs, port)
    if plane != "agent":
        raise ValueError(f"no plane {plane!r}: one of {PLANES}")
    agent = tb_agent.start_envoy_config(config, port=port, admin_port=admin_port, log_dir=log_dir, name=name or plane)
    return Started(
        agent, lambda: [(str(r["level"]), str(r["message"])) for r in agent.admin_json("/plugin_logs")], port
    )


@contextlib.contextmanager
def each(config: Callable[[str, int, int], Path], *, log_dir: Path) -> Iterator[dict[str, Started]]:
    """Every plane of `PLANES` in turn, the oracle first, on the bootstrap ``config(plane, port, admin_port)``
    writes for it (two ports free now), its log below ``log_dir / plane``; yields plane -> `Started`. When the
    block ends, or a start fails, the planes started are stopped, the last first."""
    started: dict[str, Started] = {}
    try:
        for plane in PLANES:
            port, admin = procs.free_port(), procs.free_port()
            path = config(plane, port, admin)
            started[plane] = start(plane, path, port=port, admin_port=admin, log_dir=log_dir / plane)
        yield started
    finally:
        for plane in reversed(started):
            started[plane].stop()


@contextlib.contextmanager
def each_routed(upstream_ports: Sequence[int], *, work: Path, timeout: str = "5s") -> Iterator[dict[str, Started]]:
    """`each` plane on one bootstrap with an HTTP listener whose route ``/<i>/`` goes to a cluster of its own
    on ``upstream_ports[i]`` (a test's table of raw upstreams, one per case); bootstraps and logs below ``work``."""

    def config(plane: str, port: int, admin: int) -> Path:
        routes = [
            {"match": {"prefix": f"/{i}/"}, "route": {"cluster": f"c{i}", "timeout": timeout}}
            for i in range(len(upstream_ports))
        ]
        clusters = [tb_envoy.static_cluster(f"c{i}", p) for i, p in enumerate(upstream_ports)]
        listener = tb_envoy.http_listener("routed", port, cluster="c0", routes=routes)
        return tb_envoy.write_config(tb_envoy.bootstrap(admin, [listener], clusters), work / plane)

    with each(config, log_dir=work) as started:
        yield started
