"""Pushes to a running agent process: authentication, NACK with the last good set kept, a swap under load,
and persistence across `kill -9`.

Modules are the test guests (tests/guests/*.wat, compiled to binary here): abi_0_2_1 and abi_0_2_0 both add
`x-guest: <name>` to responses, so which one serves is visible on every response; trap_vm_start traps in
proxy_on_vm_start. The upstream is Debian nginx-light; load comes from Debian wrk.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import wasmtime

from meshplug import protocol
from tests.testbed import agent as tb_agent
from tests.testbed import nginx as tb_nginx
from tests.testbed import procs

GUESTS = Path(__file__).resolve().parents[1] / "guests"
TOKEN = "s3cret-push-token"


@dataclass(frozen=True)
class Module:
    path: Path
    sha256: str


def _module(tmp: Path, guest: str) -> Module:
    data = wasmtime.wat2wasm((GUESTS / f"{guest}.wat").read_text())
    path = tmp / f"{guest}.wasm"
    path.write_bytes(data)
    return Module(path, hashlib.sha256(data).hexdigest())


def resource(mod: Module, *, name: str = "guest", sha256: str | None = None) -> protocol.ExtensionConfig:
    return protocol.ExtensionConfig(
        name=name, root_id="", url=mod.path.as_uri(), sha256=mod.sha256 if sha256 is None else sha256
    )


def push(
    agent: tb_agent.Agent, version: str, resources: list[protocol.ExtensionConfig], *, token: str | None = TOKEN
) -> tuple[int, protocol.Reply]:
    body = protocol.encode(protocol.Push(version_info=version, nonce=f"n-{version}", resources=tuple(resources)))
    return agent.push_body(body, token=token)


def served_by(agent: tb_agent.Agent) -> str | None:
    _, headers, _ = tb_agent.http_request(agent.port, "GET", "/")
    return headers.get("x-guest")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("push")


@pytest.fixture(scope="module")
def upstream(work: Path) -> Iterator[procs.Proc]:
    proc = tb_nginx.start_nginx(log_dir=work / "logs")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def modules(work: Path) -> dict[str, Module]:
    return {g: _module(work, g) for g in ("abi_0_2_1", "abi_0_2_0", "trap_vm_start")}


def _config(work: Path, upstream: procs.Proc, modules: dict[str, Module], state_dir: Path) -> dict[str, object]:
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    v1 = modules["abi_0_2_1"]
    return tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": upstream.ports["http"]},
        plugins=[{"name": "guest", "module": {"file": str(v1.path), "sha256": v1.sha256}}],
        push={
            "address": "127.0.0.1",
            "port": procs.free_port(),
            "token_file": str(token_file),
            "allow_plaintext": True,
        },
        state_dir=state_dir,
    )


@pytest.fixture
def agent(work: Path, upstream: procs.Proc, modules: dict[str, Module], tmp_path: Path) -> Iterator[tb_agent.Agent]:
    raw = _config(work, upstream, modules, tmp_path / "state")
    raw["modules"] = {"file_roots": [str(tmp_path / "pushed")]}  # pushed file:// URLs are read only below it
    (tmp_path / "pushed").mkdir()
    a = tb_agent.start_agent(raw, work_dir=tmp_path / "cfg", log_dir=tmp_path)
    yield a
    a.stop()


@pytest.mark.parametrize(
    "token",
    [None, "wrong-token", ""],
    ids=["no-authorization", "wrong-token", "empty-bearer"],
)
def test_unauthenticated_push_is_refused_and_changes_nothing(
    agent: tb_agent.Agent, modules: dict[str, Module], token: str | None
) -> None:
    status, reply = push(agent, "v2", [resource(modules["abi_0_2_0"])], token=token)
    assert status == 401
    assert not reply.ack
    assert reply.error_detail is not None and reply.error_detail.reason == "unauthorized"
    assert agent.config_dump()["version_info"] == protocol.STATIC_VERSION
    assert served_by(agent) == "abi_0_2_1"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-sha256", "checksum_mismatched"),
        ("not-wasm", None),
        ("traps-at-start", "start_failed"),
        ("missing-file", "not_found"),
        ("outside-file-roots", "blocked"),
    ],
)
def test_bad_push_is_nacked_and_the_old_plugins_keep_serving(
    agent: tb_agent.Agent, modules: dict[str, Module], tmp_path: Path, case: str, reason: str | None
) -> None:
    good = resource(modules["abi_0_2_0"], name="second")
    if case == "wrong-sha256":
        bad = resource(modules["abi_0_2_0"], sha256="0" * 64)
    elif case == "not-wasm":
        junk = tmp_path / "pushed" / "junk.wasm"
        junk.write_bytes(b"\0asm\x01\0\0\0this is not a module")
        bad = resource(Module(junk, hashlib.sha256(junk.read_bytes()).hexdigest()))
    elif case == "traps-at-start":
        bad = resource(modules["trap_vm_start"])
    elif case == "missing-file":
        bad = resource(Module(tmp_path / "pushed" / "absent.wasm", "1" * 64))
    else:  # the static config's module directory is readable, any other place is not
        outside = tmp_path / "elsewhere.wasm"
        outside.write_bytes(modules["abi_0_2_0"].path.read_bytes())
        bad = resource(Module(outside, modules["abi_0_2_0"].sha256))
    status, reply = push(agent, "v-bad", [good, bad])
    assert status == 200
    assert not reply.ack, reply
    assert reply.nonce == "n-v-bad"
    assert reply.version_info == protocol.STATIC_VERSION  # still applied
    detail = reply.error_detail
    assert detail is not None and detail.resource == "guest" and detail.message
    if reason is not None:
        assert detail.reason == reason, detail
    assert [p.name for p in reply.plugins] == ["guest"]
    dump = agent.config_dump()
    assert dump["version_info"] == protocol.STATIC_VERSION
    assert dump["last_push"]["ack"] is False and dump["last_push"]["nonce"] == "n-v-bad"
    assert served_by(agent) == "abi_0_2_1"


def test_good_push_is_acked_and_swaps_the_chain(agent: tb_agent.Agent, modules: dict[str, Module]) -> None:
    status, reply = push(agent, "v2", [resource(modules["abi_0_2_0"])])
    assert status == 200 and reply.ack, reply
    assert reply.version_info == "v2"
    assert [(p.name, p.sha256, p.state) for p in reply.plugins] == [
        ("guest", modules["abi_0_2_0"].sha256, protocol.PluginState.RUNNING)
    ]
    assert served_by(agent) == "abi_0_2_0"
    # the same set again: ACKed, nothing reloaded
    status, again = push(agent, "v2", [resource(modules["abi_0_2_0"])])
    assert again.ack and again.version_info == "v2"
    # an empty set removes every plugin
    status, empty = push(agent, "v3", [])
    assert empty.ack and empty.plugins == ()
    assert served_by(agent) is None
    metrics = agent.admin("/stats/prometheus")[1].decode()
    assert re.search(r"^meshplug_agent_push_ack_total 3$", metrics, re.M), metrics


def test_good_push_under_load_fails_no_request(
    agent: tb_agent.Agent, modules: dict[str, Module], tmp_path: Path
) -> None:
    wrk = procs.which_or_fail("wrk", "install Debian wrk (scripts/install-system-deps.sh)")
    script = tmp_path / "count.lua"
    # count responses by the plugin that served them, and every non-2xx
    script.write_text(
        "local seen = {}\n"
        "response = function(status, headers, body)\n"
        "  local g = headers['x-guest'] or 'none'\n"
        "  seen[g] = (seen[g] or 0) + 1\n"
        "end\n"
    )
    load = subprocess.Popen(
        [wrk, "-t1", "-c8", "-d6s", "-s", str(script), f"http://127.0.0.1:{agent.port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # push while wrk is running: wait until it has really sent traffic through the v1 chain
        procs.wait_until(lambda: _downstream_total(agent) > 500, timeout=30, what="wrk traffic through the agent")
        _, reply = push(agent, "v2", [resource(modules["abi_0_2_0"])])
        assert reply.ack, reply
        before = _downstream_total(agent)
        procs.wait_until(lambda: _downstream_total(agent) > before + 500, timeout=30, what="traffic after push")
        out, _ = load.communicate(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, out
    assert "Non-2xx" not in out, out
    assert "Socket errors" not in out, out
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    assert requests > 1000, out
    assert served_by(agent) == "abi_0_2_0"
    stats = agent.admin("/stats/prometheus")[1].decode()
    assert re.search(r'^meshplug_agent_downstream_rq_xx_total\{code_class="5xx"\} 0$', stats, re.M), stats


def _downstream_total(agent: tb_agent.Agent) -> int:
    text = agent.admin("/stats/prometheus")[1].decode()
    m = re.search(r"^meshplug_agent_downstream_rq_total (\d+)$", text, re.M)
    return int(m.group(1)) if m else 0


def test_kill_9_and_restart_serves_the_last_good_push_before_any_push(
    work: Path, upstream: procs.Proc, modules: dict[str, Module], tmp_path: Path
) -> None:
    raw = _config(work, upstream, modules, tmp_path / "state")
    first = tb_agent.start_agent(raw, work_dir=tmp_path / "cfg", log_dir=tmp_path, name="agent-1")
    try:
        assert served_by(first) == "abi_0_2_1"
        _, reply = push(first, "v7", [resource(modules["abi_0_2_0"])])
        assert reply.ack, reply
        # a NACKed push afterwards must not replace what is persisted
        _, nack = push(first, "v8", [resource(modules["trap_vm_start"])])
        assert not nack.ack
    finally:
        first.kill()
    second = tb_agent.start_agent(raw, work_dir=tmp_path / "cfg", log_dir=tmp_path, name="agent-2")
    try:
        dump = second.config_dump()
        assert dump["version_info"] == "v7"
        assert dump["digests"] == {"guest": modules["abi_0_2_0"].sha256}
        assert served_by(second) == "abi_0_2_0"
        state = json.loads((tmp_path / "state" / "last_good.json").read_text())
        assert state["version_info"] == "v7"
    finally:
        second.stop()
