"""The agent plane honours the WasmPlugin fields it takes from Istio: `type`, `match` (mode, ports) and
`vmConfig.env` with `valueFrom: HOST` -- beside Envoy 1.40 running what the istio plane renders for the same
WasmPlugins, placed where Istio places them.

Two WasmPlugins are parsed (meshplug.spec) and rendered both ways: for the agent plane
(meshplug.render.agent.extension_config: the pushed resource) and for Envoy (meshplug.render.envoy.wasm_filter:
the filter the EnvoyFilter patches in). Listeners: inbound HTTP on two ports (A, B), an outbound HTTP one (C)
and an inbound TCP one (T).

* c/env_vars, `match: [{mode: SERVER, ports: [A]}]`, GREETING from the HOST environment: it answers on A with
  the proxy process's GREETING, and runs on neither B (another port) nor C (outbound). In Envoy, Istio patches
  it into the inbound listener on A only; the agent gets all four listeners and the one resource.
* rust/tcp_upper, `type: NETWORK`: TCP bytes come back upper-cased on T; the HTTP listeners never run it (the
  agent would otherwise fail those requests: the module has no HTTP callbacks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshplug import spec
from meshplug.render import agent as render_agent
from meshplug.render import envoy as render_envoy
from meshplug.render import model
from tests.corpus import modules as corpus_modules
from tests.corpus import runner
from tests.corpus import spec as S
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs, upstream

pytestmark = pytest.mark.integration

GREETING = "hello-from-the-host"


def _plugin(name: str, body: dict[str, Any]) -> spec.PluginSpec:
    return spec.parse({"metadata": {"namespace": "shop", "name": name}, "spec": body})


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {name: procs.free_port() for name in ("A", "B", "C", "T", "admin")}


@pytest.fixture(scope="module")
def plugins(ports: dict[str, int]) -> dict[str, tuple[spec.PluginSpec, Path]]:
    env_module = corpus_modules.module("c/env_vars").path
    tcp_module = corpus_modules.module("rust/tcp_upper").path
    env_plugin = _plugin(
        "greeting",
        {
            "url": f"file://{env_module}",
            "pluginConfig": {"value": "require GREETING"},
            "match": [{"mode": "SERVER", "ports": [{"number": ports["A"]}]}],
            "vmConfig": {"env": [{"name": "GREETING", "valueFrom": "HOST"}]},
        },
    )
    tcp_plugin = _plugin("upper", {"url": f"file://{tcp_module}", "type": "NETWORK"})
    return {"env": (env_plugin, env_module), "tcp": (tcp_plugin, tcp_module)}


def _agent_entry(plugin: spec.PluginSpec, module: Path) -> dict[str, Any]:
    """The resource the operator pushes for `plugin` (render.agent), its module a local file for this test."""
    data = module.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    server = model.ModuleServer(host="modules.invalid", port=1)
    pushed = render_agent.extension_config(plugin, model.Module(sha256=sha, data=data), server).to_json()
    entry = {k: v for k, v in pushed.items() if k in ("name", "root_id", "configuration", "fail_strategy")}
    entry["vm_env"] = dict(pushed.get("vm_env") or {})
    entry.update({k: pushed[k] for k in ("type", "traffic", "host_env_keys") if k in pushed})
    entry["module"] = {"file": str(module), "sha256": sha}
    return entry


def _envoy_filter(plugin: spec.PluginSpec, module: Path) -> dict[str, Any]:
    sha = hashlib.sha256(module.read_bytes()).hexdigest()
    code = model.LocalCode(config_map="cm", volume="v", mount_dir=str(module.parent), filename=str(module), sha256=sha)
    return render_envoy.wasm_filter(plugin, code)


def _envoy_bootstrap(
    ports: dict[str, int], plugins: dict[str, tuple[spec.PluginSpec, Path]], echo: int, tcp: int
) -> dict[str, Any]:
    """What Istio's placement gives: the env plugin in the inbound listener on A, the network plugin on T."""
    listeners = [
        tb_envoy.http_listener("A", ports["A"], cluster="upstream", http_filters=[_envoy_filter(*plugins["env"])]),
        tb_envoy.http_listener("B", ports["B"], cluster="upstream"),
        tb_envoy.http_listener("C", ports["C"], cluster="upstream"),
        tb_envoy.tcp_listener("T", ports["T"], cluster="echo-tcp", network_filters=[_envoy_filter(*plugins["tcp"])]),
    ]
    for listener, direction in zip(listeners, ("INBOUND", "INBOUND", "OUTBOUND", "INBOUND"), strict=True):
        listener["traffic_direction"] = direction
    clusters = [tb_envoy.static_cluster("upstream", echo), tb_envoy.static_cluster("echo-tcp", tcp)]
    return tb_envoy.bootstrap(ports["admin"], listeners, clusters)


def _agent_config(
    ports: dict[str, int], plugins: dict[str, tuple[spec.PluginSpec, Path]], echo: int, tcp: int
) -> dict[str, Any]:
    """Every listener, every resource: the agent decides where each runs."""
    listeners = [
        {"name": "A", "address": "127.0.0.1", "port": ports["A"], "cluster": "upstream", "direction": "inbound"},
        {"name": "B", "address": "127.0.0.1", "port": ports["B"], "cluster": "upstream", "direction": "inbound"},
        {"name": "C", "address": "127.0.0.1", "port": ports["C"], "cluster": "upstream", "direction": "outbound"},
        {
            "name": "T",
            "address": "127.0.0.1",
            "port": ports["T"],
            "cluster": "echo-tcp",
            "type": "tcp",
            "direction": "inbound",
        },
    ]
    return {
        "listeners": listeners,
        "clusters": [
            {"name": "upstream", "address": "127.0.0.1", "port": echo},
            {"name": "echo-tcp", "address": "127.0.0.1", "port": tcp},
        ],
        "admin": {"address": "127.0.0.1", "port": ports["admin"]},
        "plugins": [_agent_entry(*plugins["env"]), _agent_entry(*plugins["tcp"])],
    }


def _observe(ports: dict[str, int]) -> dict[str, object]:
    seen: dict[str, object] = {}
    for name in ("A", "B", "C"):
        result = runner.send_http(ports[name], S.Request("GET", "/env", (), ()))
        seen[name] = (result.status, dict(result.headers).get("x-env-greeting"))
    seen["T"] = runner.send_tcp(ports["T"], [b"hello ", b"tcp"])
    return seen


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int], plugins: dict[str, tuple[spec.PluginSpec, Path]]
) -> Iterator[dict[str, dict[str, object]]]:
    tmp = tmp_path_factory.mktemp("istio-fields")
    echo = upstream.start_service("echo", log_dir=tmp)
    tcp = upstream.start_service("tcp_echo", log_dir=tmp)
    env = {"GREETING": GREETING}
    out: dict[str, dict[str, object]] = {}
    try:
        path = tb_envoy.write_config(_envoy_bootstrap(ports, plugins, echo.port, tcp.port), tmp / "envoy")
        envoy = tb_envoy.start_envoy(path, admin_port=ports["admin"], log_dir=tmp, env=env)
        try:
            out["envoy"] = _observe(ports)
        finally:
            envoy.stop()
        raw = _agent_config(ports, plugins, echo.port, tcp.port)
        agent = tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=tmp, env=env)
        try:
            out["agent"] = _observe(ports)
        finally:
            agent.stop()
        yield out
    finally:
        echo.stop()
        tcp.stop()


def test_the_rendered_resource_carries_the_fields(
    plugins: dict[str, tuple[spec.PluginSpec, Path]], ports: dict[str, int]
) -> None:
    env_entry, tcp_entry = _agent_entry(*plugins["env"]), _agent_entry(*plugins["tcp"])
    assert env_entry["host_env_keys"] == ["GREETING"]
    assert env_entry["traffic"] == [{"mode": "SERVER", "ports": [ports["A"]]}]
    assert tcp_entry["type"] == "NETWORK" and "traffic" not in tcp_entry


def test_match_mode_ports_and_host_env_as_envoy(observed: dict[str, dict[str, object]]) -> None:
    envoy, agent = observed["envoy"], observed["agent"]
    assert envoy["A"] == (200, GREETING)  # the plugin ran, with the proxy's own GREETING
    assert envoy["B"] == envoy["C"] == (200, None)  # another port, an outbound listener: not there
    assert {k: agent[k] for k in "ABC"} == {k: envoy[k] for k in "ABC"}


def test_a_network_plugin_runs_only_on_tcp(observed: dict[str, dict[str, object]]) -> None:
    assert observed["envoy"]["T"] == observed["agent"]["T"] == b"HELLO TCP"
