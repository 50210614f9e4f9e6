"""meshplug's agent as a data plane for the corpus runner: the same specs Envoy runs, through real sockets.

A spec's chain becomes an agent config file (listener -> cluster `upstream`, one cluster per spec service
for plugins' http calls, plugins from the built module files with their sha256), and `meshplug agent`
runs as its own process. Plugin logs and metrics come from the agent's admin endpoints (/plugin_logs,
/plugin_stats). Used by tests/integration/test_corpus_agent.py through `AgentPlane`.

Network (L4) specs get a listener of type `tcp`: the agent proxies the bytes to cluster `upstream`
(tcp_echo) through the plugins' network callbacks, as Envoy's tcp_proxy with wasm network filters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.corpus import runner
from tests.corpus import spec as S
from tests.testbed import agent as tb_agent
from tests.testbed import procs

# "[plugin] message" lines the agent logs for each proxy_log record (used when the agent refuses to start)
_PLUGIN_LINE = re.compile(r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) meshplug\.agent\.plugin: \[[^\]]*\] (.*)$")
_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warn", "ERROR": "error", "CRITICAL": "critical"}


def plugin_entry(plugin: S.PluginSpec, module_path: Path | None) -> dict[str, Any]:
    if plugin.lua is not None:
        return {"name": plugin.name, "lua": {"inline_code": plugin.lua}}
    assert module_path is not None
    entry: dict[str, Any] = {
        "name": plugin.name,
        "root_id": plugin.root_id,
        "module": {"file": str(module_path), "sha256": hashlib.sha256(module_path.read_bytes()).hexdigest()},
        "configuration": plugin.configuration,
        "vm_env": dict(plugin.env),
        "fail_strategy": "FAIL_OPEN" if plugin.fail_open else "FAIL_CLOSE",
        "vm_id": plugin.vm_id,
        "vm_configuration": plugin.vm_configuration,
    }
    return entry


def render(
    spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], *, port: int, admin_port: int
) -> dict[str, Any]:
    """The agent config for `spec` (pure)."""
    raw = tb_agent.base_config(
        port=port,
        admin_port=admin_port,
        clusters={name: ep.port for name, ep in services.items()},
        listener_cluster=S.UPSTREAM_CLUSTER,
        plugins=[plugin_entry(p, modules.get(p.module)) for p in spec.plugins],
        listener_type="http" if spec.type == "http" else "tcp",
        http2_clusters=frozenset(name for name, ep in services.items() if ep.kind in S.HTTP2_SERVICES),
    )
    if spec.node is not None:
        raw["node"] = {"id": spec.node.id, "cluster": spec.node.cluster, "metadata": dict(spec.node.metadata)}
    return raw


def plugin_log_lines(text: str) -> list[runner.LogRecord]:
    out: list[runner.LogRecord] = []
    for line in text.splitlines():
        m = _PLUGIN_LINE.search(line)
        if m:
            out.append((_LEVELS[m.group(1)], m.group(2)))
    return out


@dataclass
class RunningAgent:
    agent: tb_agent.Agent

    @property
    def port(self) -> int:
        return self.agent.port

    def logs(self) -> list[runner.LogRecord]:
        return [(str(r["level"]), str(r["message"])) for r in self.agent.admin_json("/plugin_logs")]

    def metrics(self) -> dict[str, int | None]:
        raw = self.agent.admin_json("/plugin_stats")
        return {str(k): None if v is None else int(v) for k, v in raw.items()}

    def stop(self) -> None:
        self.agent.stop()


class AgentPlane:
    """Runs a spec's chain in meshplug's agent (a real `meshplug agent` process)."""

    name = "agent"

    def start(
        self, spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], log_dir: Path
    ) -> RunningAgent:
        log_dir.mkdir(parents=True, exist_ok=True)
        port, admin_port = procs.free_port(), procs.free_port()
        raw = render(spec, modules, services, port=port, admin_port=admin_port)
        try:
            agent = tb_agent.start_agent(raw, work_dir=log_dir / "agent-config", log_dir=log_dir)
        except RuntimeError as exc:
            text = (log_dir / "agent.log").read_text(errors="replace")
            raise runner.PlaneStartError(str(exc)[-2000:], plugin_log_lines(text)) from None
        return RunningAgent(agent)
