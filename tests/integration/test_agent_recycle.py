"""A leaking plugin in a real agent process: its VM is recycled once its linear memory passes
`wasm.recycle_memory_mb`, the memory goes back to the OS and requests keep being served (no 5xx, same config).

Envoy has no such mechanism (its VM keeps the leak until a FAIL_RELOAD after a crash); bench/soak.py shows both in
one run. Here the agent alone: the recycle is the agent's own behaviour, not one Envoy's answer defines.
"""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest
import wasmtime

from tests.guests.leaker import LEAKER
from tests.testbed import agent as tb_agent
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

pytestmark = pytest.mark.integration


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_leaking_vm_is_recycled_and_its_memory_returned_while_requests_go_on(tmp_path: Path) -> None:
    module = tmp_path / "leaker.wasm"
    module.write_bytes(wasmtime.wat2wasm(LEAKER))
    upstream = tb_nginx.start_nginx(log_dir=tmp_path)
    try:
        port, admin = procs.free_port(), procs.free_port()
        plugins = [{"name": "leaker", "module": {"file": str(module)}, "fail_strategy": "FAIL_CLOSE"}]
        raw = tb_agent.base_config(
            port=port, admin_port=admin, clusters={"upstream": upstream.ports["http"]}, plugins=plugins
        )
        raw["wasm"] = {"recycle_memory_mb": 16}
        agent = tb_agent.start_agent(raw, work_dir=tmp_path / "agent", log_dir=tmp_path, log_level="warning")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

            def get() -> str | None:
                conn.request("GET", "/")
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
                return resp.getheader("x-vm-requests")

            get()
            baseline = _rss_mib(agent.proc.pid)
            for _ in range(249):  # 250 x 64 KiB: 15.6 MiB of leak, under the 16 MiB mark
                get()
            grown = _rss_mib(agent.proc.pid)
            assert grown > baseline + 12, (baseline, grown)
            for _ in range(10):  # past the mark: the next look at the VMs' memory recycles it
                get()
            procs.wait_until(
                lambda: "recycled its VM (recycle #1)" in agent.proc.log(), timeout=15, what="the VM recycled"
            )
            if "data path interpreted" not in agent.proc.log():  # (the fallback's wasmtime-py public API keeps
                # host functions, and through them the old store, alive: there the memory stays)
                procs.wait_until(
                    lambda: _rss_mib(agent.proc.pid) < baseline + 6, timeout=10, what="the old VM's memory given back"
                )
            assert get() == "0"  # a fresh VM (its count starts over), same configuration, no 5xx
            assert "recycle #2" not in agent.proc.log()
            conn.close()
        finally:
            agent.proc.stop()
    finally:
        upstream.stop()
