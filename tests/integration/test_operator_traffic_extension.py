"""TrafficExtension end to end on the agent data plane: Istio 1.30's TrafficExtension examples (wasm and Lua, the
istio-testbed's, run there on a real istiod) applied to the real kube-apiserver with apiVersion meshplug.io/v1alpha1
(plus dataPlane: agent; the wasm one's module url pointing at this bed's build of the same corpus plugin), reconciled
by `meshplug operator` (a process) into real agents (processes at 127.0.0.x, the pods' IPs): Ready when the agent
confirmed each, one chain order with the WasmPlugins of the namespace, and the request through the agent shows the
effect. A script that does not compile (admission off here) gets Ready=False InvalidLua with the line.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplug import protocol
from tests.corpus import modules as corpus_modules
from tests.testbed import agent as agent_mod
from tests.testbed import fixtures_kube, procs, upstream
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod

pytestmark = pytest.mark.integration

API = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/{plural}"
EXAMPLES = procs.REPO_ROOT / "examples" / "istio" / "trafficextensions.yaml"
TE_CRD = procs.REPO_ROOT / "crds" / "trafficextensions.meshplug.io.yaml"
_hosts = itertools.count(60)


@pytest.fixture
def bed(kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    fixtures_kube.install_crd(kube, yaml.safe_load(TE_CRD.read_text()))
    built = corpus_modules.module("rust/header_rules")
    echo = upstream.start_service("echo", log_dir=tmp_path, name="echo")
    op = operator_mod.start_operator(
        kube.kubeconfig, tmp_path, namespaces=[kube_namespace], extra=[f"--file-root={built.path.parent}"]
    )
    ip, push_port = f"127.0.0.{next(_hosts)}", procs.free_port()
    pod = {
        "metadata": {"name": "echo-0", "labels": {"app": "echo"},
                     "annotations": {"meshplug.io/agent-push-port": str(push_port),
                                     agent_mod.INJECTED_ANNOTATION: "test"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/echo:v1"}]},
    }  # fmt: skip
    assert kube.request("POST", f"/api/v1/namespaces/{kube_namespace}/pods", pod)[0] == 201
    # the agent as injected: what the kubelet mounts is what the operator made
    files = agent_mod.mount_identity(kube, kube_namespace, "echo-0", tmp_path / "etc")
    raw = agent_mod.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": echo.port},
        push=agent_mod.injected_push(files, address=ip, port=push_port),
    )
    raw["modules"] = agent_mod.injected_modules(files, f"https://127.0.0.1:{op.module_tls_port}")
    agent = agent_mod.start_agent(raw, work_dir=tmp_path / "agent", log_dir=tmp_path / "logs", name="agent")
    ready = {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }
    status, out = kube.request(
        "PATCH", f"/api/v1/namespaces/{kube_namespace}/pods/echo-0/status", {"status": ready},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    assert status == 200, out
    try:
        yield {"kube": kube, "ns": kube_namespace, "agent": agent, "echo": echo, "module": built}
    finally:
        op.stop()
        agent.stop()
        echo.stop()
        print(op.proc.log()[-6000:])


def create(bed: dict[str, Any], body: dict[str, Any]) -> None:
    plural = "trafficextensions" if body["kind"] == "TrafficExtension" else "wasmplugins"
    status, out = bed["kube"].request("POST", API.format(ns=bed["ns"], plural=plural), body)
    assert status == 201, out


def ready(bed: dict[str, Any], plural: str, name: str) -> dict[str, Any]:
    _, obj = bed["kube"].request("GET", API.format(ns=bed["ns"], plural=plural) + f"/{name}")
    st = dict(obj.get("status") or {})
    return next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {}) | {"_status": st}


def wait_ready(bed: dict[str, Any], plural: str, name: str, status: str, reason: str) -> dict[str, Any]:
    def ok() -> bool:
        cond = ready(bed, plural, name)
        return cond.get("status") == status and cond.get("reason") == reason

    procs.wait_until(ok, timeout=90, interval=0.2, what=f"{plural}/{name}: Ready={status} ({reason})")
    return ready(bed, plural, name)


def test_istios_trafficextension_examples_run_on_the_agent(bed: dict[str, Any]) -> None:
    ns, agent, module = bed["ns"], bed["agent"], bed["module"]
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all(EXAMPLES.read_text()) if d}
    for name, doc in docs.items():
        body = copy.deepcopy(doc) | {"apiVersion": "meshplug.io/v1alpha1", "metadata": {"name": name}}
        body["spec"]["dataPlane"] = "agent"
        if "wasm" in body["spec"]:  # the same corpus plugin, as this bed builds it
            body["spec"]["wasm"] |= {"url": module.path.as_uri(), "sha256": module.sha256}
        create(bed, body)
    lua_code = docs["te-lua"]["spec"]["lua"]["inlineCode"]
    lua_digest = f"sha256:{hashlib.sha256(lua_code.encode()).hexdigest()}"
    assert wait_ready(bed, "trafficextensions", "te-lua", "True", "Confirmed")["_status"]["digest"] == lua_digest
    wasm = wait_ready(bed, "trafficextensions", "te-wasm", "True", "Confirmed")
    assert wasm["_status"]["digest"] == f"sha256:{module.sha256}"

    # one chain order for the workload: the Lua (AUTHN) before the wasm plugin (AUTHZ)
    running = [(p["name"], p["sha256"]) for p in agent.config_dump()["plugins"]]
    assert running == [(f"{ns}.te-lua", protocol.lua_sha256(lua_code)), (f"{ns}.te-wasm", module.sha256)]

    # the request through the agent shows both
    status, headers, body = agent_mod.http_request(agent.port, "GET", "/hello", headers={"x-echo-case": "te-1"})
    assert status == 200, body
    assert headers["x-lua"] == "hello-from-lua"
    assert headers["x-te-wasm"] == "header_rules-via-trafficextension"
    seen = bed["echo"].seen("te-1")
    assert seen is not None
    upstream_headers = dict(seen["headers"])
    assert upstream_headers["x-lua-req"] == "1" and upstream_headers["x-te-wasm"] == "yes"

    # a WasmPlugin of the same namespace joins the same order (phase STATS: after both)
    wp = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": "stats-hdr"},
          "spec": {"url": module.path.as_uri(), "sha256": module.sha256, "phase": "STATS", "dataPlane": "agent",
                   "selector": {"matchLabels": {"app": "echo"}},
                   "pluginConfig": {"response": {"add": {"x-wasmplugin": "after"}}}}}  # fmt: skip
    create(bed, wp)
    wait_ready(bed, "wasmplugins", "stats-hdr", "True", "Confirmed")
    assert [p["name"] for p in agent.config_dump()["plugins"]] == [f"{ns}.te-lua", f"{ns}.te-wasm", f"{ns}.stats-hdr"]

    # deleting the Lua extension takes it out of the agent's set
    assert bed["kube"].request("DELETE", API.format(ns=ns, plural="trafficextensions") + "/te-lua")[0] in (200, 202)
    procs.wait_until(
        lambda: [p["name"] for p in agent.config_dump()["plugins"]] == [f"{ns}.te-wasm", f"{ns}.stats-hdr"],
        timeout=60, what="the agent's set without te-lua",
    )  # fmt: skip
    _, headers, _ = agent_mod.http_request(agent.port, "GET", "/hello")
    assert "x-lua" not in headers and headers["x-wasmplugin"] == "after"


def test_a_script_that_does_not_compile_is_not_delivered(bed: dict[str, Any]) -> None:
    broken = "function envoy_on_response(h)\n  h:headers:add('x-lua', '1')\nend\n"
    body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "TrafficExtension", "metadata": {"name": "broken"},
            "spec": {"dataPlane": "agent", "selector": {"matchLabels": {"app": "echo"}},
                     "lua": {"inlineCode": broken}}}  # fmt: skip
    create(bed, body)
    cond = wait_ready(bed, "trafficextensions", "broken", "False", "InvalidLua")
    assert (
        "does not compile (line 2)" in cond["message"] and ":2: function arguments expected near ':'" in cond["message"]
    )
    assert bed["agent"].config_dump()["plugins"] == []
