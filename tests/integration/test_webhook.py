"""The admission webhooks end to end: the chart installed into a real kube-apiserver with webhook.url pointing at
127.0.0.1 (tls.mode=provided, the test CA as caBundle), `meshplug operator` as a real process serving them with
the webhook config the chart rendered; Pods created in the API server get the agent (labelled pods, or every pod of
a labelled namespace), the operator makes the namespace's agent Secret before it admits the first (with the
operator's trusted signing key, which the injected agent is told to read with --trusted-keys), bad WasmPlugins
are refused. The whole chart running in a cluster is tests/integration/test_chart_only.py."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshplug import injection
from meshplug.agent import config as agent_config
from tests.testbed import fixtures_kube, procs
from tests.testbed import helm as helm_mod
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod

NS = "meshplug-system"
APPS = "apps"
PLUGINS = f"/apis/meshplug.io/v1alpha1/namespaces/{APPS}/wasmplugins"
PODS = f"/api/v1/namespaces/{APPS}/pods"
ALLOWED = ["oci://registry.example.com/", "https://modules.example.com/"]
TRUSTED_KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[kube_mod.Kube]:
    with kube_mod.control_plane(tmp_path_factory.mktemp("webhook-kube"), logs_dir / "webhook") as kube:
        yield kube


@pytest.fixture(scope="module")
def webhooks(plane: kube_mod.Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[operator_mod.Operator]:
    work = tmp_path_factory.mktemp("webhook")
    tls = helm_mod.webhook_tls(work / "tls")
    port = procs.free_port()
    values = {
        "webhook": {"url": f"https://127.0.0.1:{port}", "tls": {"mode": "provided", "caBundle": tls.ca_bundle}},
        "validation": {"allowedUrlPrefixes": ALLOWED},
        "agent": {"requireSignatures": True},  # injected agents refuse modules not signed under the operator's keys
    }
    (work / "values.yaml").write_text(yaml.safe_dump(values))
    helm_mod.helm(
        ["install", "mp", str(helm_mod.CHART), "-n", NS, "--create-namespace", "-f", str(work / "values.yaml")],
        kubeconfig=plane.kubeconfig,
        home=work / "helm",
    )
    # the operator reads the webhook config the chart rendered; only where it listens and its files differ here
    _, cm = plane.request("GET", f"/api/v1/namespaces/{NS}/configmaps/mp-meshplug-webhook")
    config = yaml.safe_load(cm["data"]["webhook.yaml"])
    config["listen"] = {"address": "127.0.0.1", "port": port}
    config["tls"] = {"certFile": str(tls.cert), "keyFile": str(tls.key)}
    (work / "webhook.yaml").write_text(yaml.safe_dump(config))
    fixtures_kube.ensure_namespace(plane, APPS)
    # the operator's cleanup lists EnvoyFilters (istio plane) before it releases a deleted plugin's finalizer
    fixtures_kube.install_crd(plane, fixtures_kube.ENVOYFILTER_CRD)
    (work / "cosign.pub").write_bytes(TRUSTED_KEY)  # chart signatures.trustedKeys -> the operator's --trusted-key
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MESHPLUG_WEBHOOK_CONFIG", str(work / "webhook.yaml"))
        op = operator_mod.start_operator(
            plane.kubeconfig, work, name="operator-webhooks", extra=[f"--trusted-key={work / 'cosign.pub'}"]
        )
    try:
        procs.wait_until(lambda: procs.tls_ready(port, tls.ca_cert), timeout=60, what="the operator's webhook server")
        yield op
    finally:
        op.stop()
        print(op.proc.log()[-4000:])


def _pod(
    name: str,
    *,
    labels: dict[str, str],
    containers: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    app = {
        "name": "app",
        "image": "registry.example.com/shop/web:1",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
    }
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {"containers": containers or [app]}}


def test_opted_in_pod_gets_the_agent(plane: kube_mod.Kube, webhooks: operator_mod.Operator) -> None:
    status, created = plane.request("POST", PODS, _pod("web", labels={"app": "web", injection.INJECT_KEY: "enabled"}))
    assert status == 201, created
    status, stored = plane.request("GET", f"{PODS}/web")
    assert status == 200
    containers = {c["name"]: c for c in stored["spec"]["containers"]}
    assert set(containers) == {"app", injection.CONTAINER_NAME}
    agent = containers[injection.CONTAINER_NAME]
    assert agent["image"] == "ghcr.io/meshplug/meshplug:0.1.0"
    assert agent["args"][:3] == ["agent", "--config", "/etc/meshplug/agent/config.json"]
    # the operator's keys from the Secret, and the chart's agent.requireSignatures
    assert agent["args"][-3:] == ["--trusted-keys", "/etc/meshplug/agent/trusted-keys.pem", "--require-signatures"]
    assert agent["securityContext"]["runAsNonRoot"] is True
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # port takeover: Services targeting the name "http" now reach the agent; the kubelet still probes the app
    assert {"name": "http", "containerPort": 15006, "protocol": "TCP"} in agent["ports"]
    assert "name" not in containers["app"]["ports"][0]
    assert containers["app"]["readinessProbe"]["httpGet"]["port"] == 8080
    volumes = {v["name"]: v for v in stored["spec"]["volumes"]}
    sources = volumes[injection.CONFIG_VOLUME]["projected"]["sources"]
    assert {"secret": {"name": "meshplug-agent"}} in sources
    token = {"path": "sa-token", "audience": "meshplug", "expirationSeconds": 3600}
    assert {"serviceAccountToken": token} in sources
    annotations = stored["metadata"]["annotations"]
    assert annotations[injection.PUSH_PORT_ANNOTATION] == "15010"
    cfg = agent_config.parse(json.loads(annotations[injection.CONFIG_ANNOTATION]), base=Path("/"))
    assert cfg.cluster("app").port == 8080 and cfg.listeners[0].port == 15006
    assert cfg.push is not None and cfg.push.tls is not None
    assert cfg.modules.server is not None
    assert cfg.modules.server.url == f"https://mp-meshplug-modules.{NS}.svc:8443"
    # the Secret the agent mounts was made by the operator before the pod was admitted
    status, secret = plane.request("GET", f"/api/v1/namespaces/{APPS}/secrets/meshplug-agent")
    assert status == 200, secret
    assert sorted(secret["data"]) == ["ca.crt", "tls.crt", "tls.key", "token", "trusted-keys.pem"]
    assert base64.b64decode(secret["data"]["trusted-keys.pem"]) == TRUSTED_KEY  # what --trusted-keys reads
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "meshplug"


def test_every_pod_of_a_labelled_namespace_gets_the_agent_unless_it_opts_out(
    plane: kube_mod.Kube, webhooks: operator_mod.Operator
) -> None:
    ns = "labelled"
    body = {"metadata": {"name": ns, "labels": {injection.INJECT_KEY: "enabled"}}}
    assert plane.request("POST", "/api/v1/namespaces", body)[0] in (201, 409)
    assert plane.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "default"}})[0] in (
        201,
        409,
    )
    pods = f"/api/v1/namespaces/{ns}/pods"
    status, created = plane.request("POST", pods, _pod("any", labels={"app": "any"}))
    assert status == 201, created
    assert [c["name"] for c in created["spec"]["containers"]] == ["app", injection.CONTAINER_NAME]
    status, created = plane.request("POST", pods, _pod("out", labels={injection.INJECT_KEY: "disabled"}))
    assert status == 201, created
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"]
    assert plane.request("GET", f"/api/v1/namespaces/{ns}/secrets/meshplug-agent")[0] == 200


@pytest.mark.parametrize(
    ("case", "labels", "annotations"),
    [
        ("no label: the API server does not call the webhook", {"app": "plain"}, None),
        ("label, but the annotation opts out", {injection.INJECT_KEY: "enabled"}, {injection.INJECT_KEY: "disabled"}),
    ],
)
def test_other_pods_are_left_alone(
    plane: kube_mod.Kube,
    webhooks: operator_mod.Operator,
    case: str,
    labels: dict[str, str],
    annotations: dict[str, str] | None,
) -> None:
    name = f"plain-{len(case)}"
    status, created = plane.request("POST", PODS, _pod(name, labels=labels, annotations=annotations))
    assert status == 201, created
    assert [c["name"] for c in created["spec"]["containers"]] == ["app"], case
    assert created["spec"]["containers"][0]["ports"][0]["name"] == "http"


def test_opted_in_pod_without_a_port_is_refused(plane: kube_mod.Kube, webhooks: operator_mod.Operator) -> None:
    body = _pod("noport", labels={injection.INJECT_KEY: "enabled"}, containers=[{"name": "app", "image": "x:1"}])
    status, out = plane.request("POST", PODS, body)
    assert status == 400, out
    assert "inject.agent.meshplug.io" in out["message"] and injection.APP_PORT_ANNOTATION in out["message"]
    assert plane.request("GET", f"{PODS}/noport")[0] == 404


def _plugin(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name}, "spec": spec}


SCHEMA = {
    "type": "object",
    "required": ["header"],
    "properties": {"header": {"type": "string", "pattern": "^x-"}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("case", "spec", "reason"),
    [
        (
            "pluginConfig fails its schema",
            {"url": "oci://registry.example.com/p:v1", "pluginConfig": {"header": "bad"}, "pluginConfigSchema": SCHEMA},
            "InvalidPluginConfig",
        ),
        (
            "pluginConfig misses a required key",
            {"url": "oci://registry.example.com/p:v1", "pluginConfig": {}, "pluginConfigSchema": SCHEMA},
            "InvalidPluginConfig",
        ),
        (
            "schema is not a JSON Schema",
            {"url": "oci://registry.example.com/p:v1", "pluginConfigSchema": {"type": "no-such-type"}},
            "InvalidPluginConfigSchema",
        ),
        ("url outside the allowlist", {"url": "oci://evil.example.net/p:v1"}, "UrlNotAllowed"),
        ("no scheme means oci://, also checked", {"url": "docker.io/library/p:v1"}, "UrlNotAllowed"),
        ("http where https is allowed", {"url": "http://modules.example.com/p.wasm"}, "UrlNotAllowed"),
    ],
)
def test_bad_wasmplugins_are_refused(
    plane: kube_mod.Kube, webhooks: operator_mod.Operator, case: str, spec: dict[str, Any], reason: str
) -> None:
    status, out = plane.request("POST", PLUGINS, _plugin("bad", spec))
    assert status >= 400, f"{case}: {status} {out}"
    assert "validate.wasmplugin.meshplug.io" in out["message"] and reason in out["message"], out["message"]
    assert plane.request("GET", f"{PLUGINS}/bad")[0] == 404


def test_good_wasmplugin_is_admitted_and_a_bad_update_refused(
    plane: kube_mod.Kube, webhooks: operator_mod.Operator
) -> None:
    spec = {"url": "oci://registry.example.com/p:v1", "pluginConfig": {"header": "x-a"}, "pluginConfigSchema": SCHEMA}
    status, out = plane.request("POST", PLUGINS, _plugin("good", spec))
    assert status == 201, out
    update = [{"op": "replace", "path": "/spec/pluginConfig", "value": {"header": "nope"}}]
    status, out = plane.request("PATCH", f"{PLUGINS}/good", update, content_type="application/json-patch+json")
    assert status >= 400 and "InvalidPluginConfig" in out["message"], out
    update = [{"op": "replace", "path": "/spec/pluginConfig", "value": {"header": "x-b"}}]
    status, out = plane.request("PATCH", f"{PLUGINS}/good", update, content_type="application/json-patch+json")
    assert status == 200, out
    status, out = plane.request("DELETE", f"{PLUGINS}/good")
    assert status in (200, 202), out
    procs.wait_until(lambda: plane.request("GET", f"{PLUGINS}/good")[0] == 404, timeout=60, what="plugin deleted")


EXTENSIONS = f"/apis/meshplug.io/v1alpha1/namespaces/{APPS}/trafficextensions"


def test_trafficextensions_istios_examples_are_admitted_and_lua_that_does_not_compile_is_refused(
    plane: kube_mod.Kube, webhooks: operator_mod.Operator
) -> None:
    """Istio's TrafficExtension examples (wasm + Lua, apiVersion changed) pass the webhook; a Lua script that does
    not compile (seed 004's snippet as printed) is refused with LuaJIT's error and its line, as Envoy words it."""
    examples = procs.REPO_ROOT / "examples" / "istio" / "trafficextensions.yaml"
    for doc in (d for d in yaml.safe_load_all(examples.read_text()) if d):
        body = doc | {"apiVersion": "meshplug.io/v1alpha1", "metadata": {"name": doc["metadata"]["name"]}}
        if "wasm" in body["spec"]:  # this install allows only its own registries
            body["spec"] = body["spec"] | {"wasm": body["spec"]["wasm"] | {"url": ALLOWED[1] + "header_rules.wasm"}}
        status, out = plane.request("POST", EXTENSIONS, body)
        assert status == 201, out
    broken = "function envoy_on_response(r)\n  r:logInfo('x')\n  r:headers:add('a', 'b')\nend\n"
    bad = {"apiVersion": "meshplug.io/v1alpha1", "kind": "TrafficExtension", "metadata": {"name": "broken"},
           "spec": {"lua": {"inlineCode": broken}}}  # fmt: skip
    status, out = plane.request("POST", EXTENSIONS, bad)
    assert status >= 400, out
    message = out["message"]
    assert "validate.trafficextension.meshplug.io" in message and "InvalidLua" in message, message
    assert "does not compile (line 3)" in message and ":3: function arguments expected near ':'" in message, message
    assert plane.request("GET", f"{EXTENSIONS}/broken")[0] == 404


EXAMPLE_TEMPLATES = [
    (path, doc)
    for path in sorted((procs.REPO_ROOT / "examples").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
    and doc.get("kind") == "Deployment"
    and (doc["spec"]["template"]["metadata"].get("labels") or {}).get(injection.INJECT_KEY) == "enabled"
]


@pytest.mark.parametrize(("path", "deployment"), EXAMPLE_TEMPLATES, ids=[p.name for p, _ in EXAMPLE_TEMPLATES])
def test_example_pod_templates_are_injected_and_their_services_reach_the_agent(
    plane: kube_mod.Kube, webhooks: operator_mod.Operator, path: Path, deployment: dict[str, Any]
) -> None:
    template = deployment["spec"]["template"]
    name = f"ex-{deployment['metadata']['name']}"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": name},
        "spec": template["spec"],
    }
    status, created = plane.request("POST", PODS, body)
    assert status == 201, created
    containers = created["spec"]["containers"]
    assert containers[-1]["name"] == injection.CONTAINER_NAME
    by_name = {
        p["name"]: (c["name"], p["containerPort"]) for c in containers for p in c.get("ports", []) if "name" in p
    }
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "Service"]
    for svc in docs:
        for port in svc["spec"]["ports"]:
            assert by_name[port["targetPort"]] == (injection.CONTAINER_NAME, 15006), (svc["metadata"]["name"], port)
