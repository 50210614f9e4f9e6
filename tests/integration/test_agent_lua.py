"""Lua filters pushed to a running agent process: ACK and effect, a bad push NACKed with the Lua error while the
last good chain keeps serving (and survives a restart), error counters, a Lua filter beside a wasm plugin.

The upstream is Debian nginx-light. Behaviour of the Lua API itself is the corpus's job (examples/filters/lua,
on Envoy and on the agent); this is about delivery.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshplug import protocol
from tests.integration.test_agent_push import TOKEN, Module, _module, push, resource
from tests.testbed import agent as tb_agent
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

pytestmark = pytest.mark.integration


def lua(name: str, code: str) -> protocol.ExtensionConfig:
    return protocol.ExtensionConfig(name=name, root_id="", url="", sha256=protocol.lua_sha256(code), lua=code)


def adds(header: str, value: str) -> str:
    return f"function envoy_on_response(h) h:headers():add({header!r}, {value!r}) end\n"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    proc = tb_nginx.start_nginx(log_dir=tmp_path_factory.mktemp("nginx"))
    yield proc
    proc.stop()


def _config(tmp: Path, upstream: procs.Proc) -> dict[str, object]:
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    raw = tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": upstream.ports["http"]},
        plugins=[{"name": "ns.static", "lua": {"inline_code": adds("x-lua", "static")}}],
        push={
            "address": "127.0.0.1",
            "port": procs.free_port(),
            "token_file": str(token_file),
            "allow_plaintext": True,  # a local run: plain HTTP pushes allowed explicitly
        },
        state_dir=tmp / "state",
    )
    raw["modules"] = {"file_roots": [str(tmp)]}  # pushed file:// modules are read below it
    return raw


@pytest.fixture
def agent(upstream: procs.Proc, tmp_path: Path) -> Iterator[tb_agent.Agent]:
    a = tb_agent.start_agent(_config(tmp_path, upstream), work_dir=tmp_path / "cfg", log_dir=tmp_path)
    yield a
    a.stop()


def header(agent: tb_agent.Agent, name: str) -> str | None:
    status, headers, _ = tb_agent.http_request(agent.port, "GET", "/")
    assert status == 200
    return headers.get(name)


def test_a_pushed_lua_filter_is_acked_and_serves(agent: tb_agent.Agent) -> None:
    assert header(agent, "x-lua") == "static"
    code = adds("x-lua", "pushed")
    status, reply = push(agent, "v2", [lua("ns.te-lua", code)])
    assert status == 200 and reply.ack, reply
    assert [(p.name, p.sha256) for p in reply.plugins] == [("ns.te-lua", protocol.lua_sha256(code))]
    assert header(agent, "x-lua") == "pushed"
    dump = agent.config_dump()
    assert dump["digests"] == {"ns.te-lua": protocol.lua_sha256(code)}
    assert dump["resources"][0]["lua"] == {"inline_code": code}


BAD_PUSHES = {
    "does-not-compile": (
        "function envoy_on_response(h)\n  h:headers:add('x', 'y')\nend\n",
        "invalid_lua",
        "]:2: function arguments expected near ':'",
    ),
    "top-level-error": ("error('refusing to start')\n", "start_failed", "]:1: refusing to start"),
}


@pytest.mark.parametrize("case", sorted(BAD_PUSHES))
def test_a_bad_lua_push_is_nacked_with_the_lua_error_and_the_last_good_chain_serves(
    agent: tb_agent.Agent, upstream: procs.Proc, tmp_path: Path, case: str
) -> None:
    code, reason, words = BAD_PUSHES[case]
    good = adds("x-lua", "good")
    assert push(agent, "v2", [lua("ns.good", good)])[1].ack
    status, reply = push(agent, "v3", [lua("ns.good", good), lua("ns.bad", code)])
    assert status == 200 and not reply.ack
    assert reply.error_detail is not None
    assert reply.error_detail.resource == "ns.bad" and reply.error_detail.reason == reason
    assert words in reply.error_detail.message
    assert reply.version_info == "v2"
    assert header(agent, "x-lua") == "good"
    # the last good set was persisted: a restarted agent serves it before any push
    agent.stop()
    raw = _config(tmp_path, upstream) | {"push": None}
    again = tb_agent.start_agent(raw, work_dir=tmp_path / "cfg2", log_dir=tmp_path / "restarted")
    try:
        assert header(again, "x-lua") == "good"
    finally:
        again.stop()


def test_script_errors_are_counted_per_filter_and_fail_nothing(agent: tb_agent.Agent) -> None:
    failing = "function envoy_on_request(h) h:headers():add('x-before', '1') error('boom') end\n"
    resources = [lua("ns.failing", failing), lua("ns.fine", adds("x-lua", "fine"))]
    assert push(agent, "v2", resources)[1].ack
    for _ in range(3):
        assert header(agent, "x-lua") == "fine"
    _, body = agent.admin("/stats/prometheus")
    text = body.decode()
    assert re.search(r'^meshplug_lua_errors_total\{filter="ns.failing"\} 3$', text, re.M), text
    assert re.search(r'^meshplug_lua_errors_total\{filter="ns.fine"\} 0$', text, re.M), text
    logs = agent.admin_json("/plugin_logs")
    assert any(
        r["plugin"] == "ns.failing" and r["level"] == "error" and r["message"].endswith(":1: boom") for r in logs
    )


def test_a_lua_filter_and_a_wasm_plugin_in_one_chain(agent: tb_agent.Agent, tmp_path: Path) -> None:
    """abi_0_2_1 adds x-guest to responses; the Lua filter sees the wasm plugin's header (it runs after it on
    the response path, being first in the push's order) and copies it."""
    mod: Module = _module(tmp_path, "abi_0_2_1")
    copy = "function envoy_on_response(h) h:headers():add('x-lua-saw', tostring(h:headers():get('x-guest'))) end"
    status, reply = push(agent, "v2", [lua("ns.lua", copy), resource(mod, name="ns.wasm")])
    assert status == 200 and reply.ack, reply
    _, headers, _ = tb_agent.http_request(agent.port, "GET", "/")
    assert headers["x-guest"] == "abi_0_2_1" and headers["x-lua-saw"] == "abi_0_2_1"
