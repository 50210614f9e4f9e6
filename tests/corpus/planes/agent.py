"""meshplug's agent as a data plane for the corpus runner: the same Envoy bootstrap Envoy runs, through real sockets.

The spec's bootstrap (tests/corpus/bootstrap.py: generated from the spec's chain, or the spec's own file) is
written once and run with `meshplug run --envoy-config` as its own process (meshplug.agent.bootstrap reads
it: listeners, routes, clusters, wasm and Lua filters, singletons). Plugin logs and metrics come from the
agent's admin endpoints (/plugin_logs, /plugin_stats). Used by tests/integration/test_corpus_agent.py through
`AgentPlane`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.corpus import bootstrap, runner
from tests.corpus import spec as S
from tests.testbed import agent as tb_agent

# the lines the agent writes for each proxy_log record in Envoy's format (used when the agent refuses to start):
# "[2026-12-05 11:00:00.123][42][warning][wasm] wasm log <plugin> <root_id> <vm_id>: message"
_PLUGIN_LINE = re.compile(r"^\[[^\]]*\]\[\d+\]\[([a-z]+)\]\[wasm\] wasm log[^:]*: (.*)$")
_LEVELS = {"warning": "warn"}


def plugin_log_lines(text: str) -> list[runner.LogRecord]:
    out: list[runner.LogRecord] = []
    for line in text.splitlines():
        m = _PLUGIN_LINE.search(line)
        if m:
            out.append((_LEVELS.get(m.group(1), m.group(1)), m.group(2)))
    return out


def plugin_entry(plugin: S.PluginSpec, module_path: Path | None) -> dict[str, Any]:
    """A spec's plugin in the agent's native config format (for tests that run the agent that way)."""
    if plugin.lua is not None:
        return {"name": plugin.name, "lua": {"inline_code": plugin.lua}}
    assert module_path is not None
    return {
        "name": plugin.name,
        "root_id": plugin.root_id,
        "module": {"file": str(module_path), "sha256": hashlib.sha256(module_path.read_bytes()).hexdigest()},
        "configuration": plugin.configuration,
        "vm_env": dict(plugin.env),
        "fail_strategy": "FAIL_OPEN" if plugin.fail_open else "FAIL_CLOSE",
        "vm_id": plugin.vm_id,
        "vm_configuration": plugin.vm_configuration,
    }


@dataclass
class RunningAgent:
    agent: tb_agent.Agent

    @property
    def port(self) -> int:
        return self.agent.port

    def logs(self) -> list[runner.LogRecord]:
        return [(str(r["level"]), str(r["message"])) for r in self.agent.admin_json("/plugin_logs")]

    def metrics(self) -> dict[str, int | None]:
        """By the name the plugin defined; a Lua filter's counters without the rendering namespace (as the
        Envoy plane reads them)."""
        raw = self.agent.admin_json("/plugin_stats")
        lua_prefix = f"lua.{bootstrap.RENDER_NAMESPACE}."
        return {
            "lua." + k[len(lua_prefix) :] if k.startswith(lua_prefix) else str(k): None if v is None else int(v)
            for k, v in raw.items()
        }

    def stop(self) -> None:
        self.agent.stop()


class AgentPlane:
    """Runs a spec's bootstrap in meshplug's agent (a real `meshplug run --envoy-config` process)."""

    name = "agent"

    def __init__(self, concurrency: int = 1) -> None:
        self.concurrency = concurrency  # > 1: `meshplug agent --concurrency` (workers on the shared store)

    def start(
        self, spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], log_dir: Path
    ) -> RunningAgent:
        written = bootstrap.write(spec, modules, services, log_dir, "bootstrap")
        try:
            agent = tb_agent.start_envoy_config(
                written.path,
                port=written.port,
                admin_port=written.admin_port,
                log_dir=log_dir,
                concurrency=self.concurrency,
            )
        except RuntimeError as exc:
            text = (log_dir / "agent.log").read_text(errors="replace")
            raise runner.PlaneStartError(str(exc)[-2000:], plugin_log_lines(text)) from None
        return RunningAgent(agent)
