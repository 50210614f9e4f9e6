"""The agent's /stats/prometheus counts per plugin: the local replies a plugin sends (a Rust plugin's 403, by status
class, and in downstream_rq_local_reply too), failures, and the FAIL_OPEN bypasses after them; every plugin family
with HELP and TYPE, counters ending in _total, the plugin a label."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from tests.corpus import modules
from tests.testbed import procs, promtext
from tests.testbed import upstream as tb_upstream
from tests.testbed.agent import Agent, base_config, http_request, start_agent

GUESTS = Path(__file__).resolve().parents[1] / "guests"


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tb_upstream.Service]:
    svc = tb_upstream.start_service("echo", log_dir=tmp_path)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def agent(echo: tb_upstream.Service, tmp_path: Path) -> Iterator[Agent]:
    trap = tmp_path / "trap.wasm"
    trap.write_bytes(wasmtime.wat2wasm((GUESTS / "trap_request_headers.wat").read_text()))
    deny = modules.module("rust/deny_path")
    plugins = [
        {
            "name": "deny",
            "module": {"file": str(deny.path)},
            "configuration": {"prefixes": ["/admin"], "status": 403},
        },
        {"name": "trap", "module": {"file": str(trap)}, "fail_strategy": "FAIL_OPEN"},
    ]
    raw = base_config(
        port=procs.free_port(), admin_port=procs.free_port(), clusters={"upstream": echo.port}, plugins=plugins
    )
    started = start_agent(raw, work_dir=tmp_path / "agent", log_dir=tmp_path)
    try:
        yield started
    finally:
        started.stop()


def test_plugins_local_replies_failures_and_bypasses_are_counted(agent: Agent) -> None:
    assert http_request(agent.port, "GET", "/admin/x")[0] == 403  # deny's local reply (before trap runs)
    assert http_request(agent.port, "GET", "/admin/y")[0] == 403
    assert http_request(agent.port, "GET", "/public")[0] == 200  # trap fails, FAIL_OPEN: the upstream answers
    status, text = agent.admin("/stats/prometheus")
    assert status == 200
    families = promtext.check(text.decode())

    def value(name: str, **labels: str) -> float | None:
        return promtext.value(families, name, **labels)

    assert value("meshplug_agent_plugin_local_replies_total", plugin="deny", code_class="4xx") == 2
    assert value("meshplug_agent_plugin_failures_total", plugin="trap") == 1
    assert value("meshplug_agent_plugin_fail_open_bypasses_total", plugin="trap") == 1
    assert value("meshplug_agent_plugin_failures_total", plugin="deny") == 0
    assert value("meshplug_agent_downstream_rq_local_reply_total") == 2
    assert value("meshplug_agent_downstream_rq_xx_total", code_class="4xx") == 2
    assert value("meshplug_agent_downstream_rq_xx_total", code_class="2xx") == 1
