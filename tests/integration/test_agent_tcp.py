"""The agent's TCP listeners (type: tcp): bytes proxied to a cluster through the plugins' network callbacks.

A real `meshplug agent` process, the test bed's tcp_echo service as the upstream, the corpus module
rust/tcp_upper as the network plugin (it upper-cases what the upstream sends and counts connections).
The behaviour specs of network plugins also run through the agent (tests/integration/test_corpus_agent.py).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import modules as corpus_modules
from tests.corpus import runner
from tests.testbed import agent as tb_agent
from tests.testbed import procs, upstream


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[upstream.Service]:
    svc = upstream.start_service("tcp_echo", log_dir=tmp_path_factory.mktemp("tcp-echo"))
    yield svc
    svc.stop()


def _config(cluster_port: int, plugins: list[dict[str, Any]]) -> dict[str, Any]:
    raw = tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": cluster_port},
        plugins=plugins,
        listener_type="tcp",
    )
    return raw


def _tcp_upper() -> dict[str, Any]:
    path = corpus_modules.module("rust/tcp_upper").path
    return {"name": "upper", "module": {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}}


@pytest.fixture
def plain(echo: upstream.Service, tmp_path: Path) -> Iterator[tb_agent.Agent]:
    agent = tb_agent.start_agent(_config(echo.port, []), work_dir=tmp_path / "cfg", log_dir=tmp_path)
    yield agent
    agent.stop()


@pytest.fixture
def upper(echo: upstream.Service, tmp_path: Path) -> Iterator[tb_agent.Agent]:
    agent = tb_agent.start_agent(_config(echo.port, [_tcp_upper()]), work_dir=tmp_path / "cfg", log_dir=tmp_path)
    yield agent
    agent.stop()


def test_bytes_pass_unchanged_without_plugins(plain: tb_agent.Agent) -> None:
    assert runner.send_tcp(plain.port, [b"hello ", b"world"]) == b"hello world"


def test_large_transfer_both_ways_through_a_plugin(upper: tb_agent.Agent) -> None:
    """4 MiB each way: flow control must not lose, reorder or duplicate bytes, and the plugin sees them all."""
    data = os.urandom(2 * 1024 * 1024).hex().encode()  # 4 MiB of lower-case hex
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    got = runner.send_tcp(upper.port, chunks, timeout=60)
    assert len(got) == len(data)
    assert got == data.upper()
    stats = upper.admin_json("/plugin_stats")
    assert stats["rust_tcp_connections"] == 1


def test_close_callbacks_and_counters(upper: tb_agent.Agent) -> None:
    for _ in range(3):
        assert runner.send_tcp(upper.port, [b"abc"]) == b"ABC"
    procs.wait_until(
        lambda: sum("closed by" in r["message"] for r in upper.admin_json("/plugin_logs")) >= 3,
        timeout=10,
        what="the plugin's close callbacks",
    )
    _, text = upper.admin("/stats/prometheus")
    assert b"meshplug_agent_downstream_cx_total 3" in text
    assert b"meshplug_agent_downstream_cx_active 0" in text


def test_upstream_down_closes_the_client(tmp_path: Path) -> None:
    dead = procs.free_port()  # nothing listens here
    agent = tb_agent.start_agent(_config(dead, [_tcp_upper()]), work_dir=tmp_path / "cfg", log_dir=tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
            sock.sendall(b"lost")
            assert sock.recv(100) == b""  # closed without a byte
        _, text = agent.admin("/stats/prometheus")
        assert b"meshplug_agent_upstream_cx_connect_fail_total 1" in text
    finally:
        agent.stop()
