"""Every examples/*.yaml applied as a user would: each WasmPlugin yields the expected objects and status, and
deleting it removes everything it generated. Real apiserver, real operator process, real
sources (test-bed registries and TLS origin), the example's real module (built by `make plugins`), and for the
agent data plane a real agent in a selected pod.

How the examples' urls resolve in the test bed (the examples stay as users write them): the test rewrites only
the host of each url to a test-bed source serving the same path, and pushes there the module the example's
``# Module: examples/filters/<sdk>/<name>`` line names:
- ``oci://registry.example.com/<repo>:<tag>`` -> the plain registry (``--insecure-registry``), same repo and tag;
- ``oci://registry.internal.example.com/...`` (private, with ``imagePullSecret``) -> the TLS registry with Basic
  auth; the pull Secret of that name is created with the registry's credentials;
- ``https://plugins.example.com/<path>`` -> the TLS origin serving the module at ``<path>``;
- a pinned digest (``sha256`` or ``@sha256:``) is a placeholder in the examples: it becomes the real one (the
  module's sha256, or the pushed manifest's digest).
The operator trusts the test CA through SSL_CERT_FILE (its system roots). Objects are created in the test's
namespace instead of the example's. Workloads: an example's own objects are created as they are; an istio-plane
example with a selector gets a Deployment whose pod template matches; an agent-plane example gets a Pod (annotated
as the injection webhook does) whose agent runs at its own loopback address (as the pod IP) with what the kubelet
would mount: the agent Secret the operator makes, and a ServiceAccount token bound to the pod. No example creates a
Secret for the agent plane.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.corpus import modules as corpus_modules
from tests.testbed import agent as agent_mod
from tests.testbed import fixtures_origin, procs
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed.origin import Origin
from tests.testbed.registry import Registry

EXAMPLES = sorted((procs.REPO_ROOT / "examples").glob("*.yaml"))
PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"
CONFIGMAP_MAX = 1024 * 1024
ALL_TRUE = {"Fetched": "True", "Validated": "True", "Ready": "True"}
_MODULE_LINE = re.compile(r"^# Module: examples/filters/(\S+)", re.MULTILINE)
_PATHS = {
    ("v1", "Secret"): "/api/v1/namespaces/{ns}/secrets",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{ns}/deployments",
    ("meshplug.io/v1alpha1", "WasmPlugin"): PLUGINS,
}
_OCI_EXAMPLE = re.compile(
    r"oci://(registry(?:\.internal)?\.example\.com)/([^:@]+)(?::([^@]+))?(?:@sha256:[a-f0-9]{64})?"
)
_hosts = iter(range(200, 255))


@dataclass
class Example:
    path: Path
    docs: list[dict[str, Any]]
    module: bytes

    @property
    def plugin(self) -> dict[str, Any]:
        return next(d for d in self.docs if d["kind"] == "WasmPlugin")


def load(path: Path) -> Example:
    text = path.read_text()
    found = _MODULE_LINE.search(text)
    assert found, f"{path.name}: no '# Module: examples/filters/<sdk>/<name>' line"
    built = corpus_modules.module(found.group(1))  # KeyError naming `make plugins` when not built
    return Example(path, [d for d in yaml.safe_load_all(text) if d], built.path.read_bytes())


@dataclass
class Sources:
    plain: Registry
    private: Registry
    origin: Origin


def resolve(plugin_spec: dict[str, Any], module: bytes, src: Sources, kube: kube_mod.Kube, ns: str) -> None:
    """Point the url at a test-bed source holding ``module`` (same path and tag), real digests for placeholders."""
    url = plugin_spec["url"]
    sha = hashlib.sha256(module).hexdigest()
    if url.startswith("https://plugins.example.com/"):
        path = urllib.parse.urlsplit(url).path
        plugin_spec["url"] = src.origin.program(path, body=module)
        if "sha256" in plugin_spec:
            plugin_spec["sha256"] = sha
        return
    m = re.fullmatch(
        r"oci://(registry(?:\.internal)?\.example\.com)/([^:@]+)(?::([^@]+))?(?:@sha256:[a-f0-9]{64})?", url
    )
    assert m, f"no test-bed source for {url}"
    registry = src.private if m.group(1) == "registry.internal.example.com" else src.plain
    repo, tag = m.group(2), m.group(3) or "pinned"
    digest = registry.push_layout("oci-image", repo, tag, module)
    plugin_spec["url"] = registry.url(repo, digest if "@sha256:" in url else tag)
    if "sha256" in plugin_spec:
        plugin_spec["sha256"] = digest.removeprefix("sha256:")
    if secret_name := plugin_spec.get("imagePullSecret"):
        secret = json.loads(registry.pull_secret())
        secret["metadata"] = {"name": secret_name}
        status, out = kube.request("POST", f"/api/v1/namespaces/{ns}/secrets", secret)
        assert status == 201, out


@pytest.fixture
def sources(registries: dict[str, Registry], origin: Origin) -> Sources:
    return Sources(plain=registries["plain"], private=registries["basic"], origin=origin)


@pytest.fixture
def operator(  # noqa: PLR0917 (pytest fixtures)
    kube: kube_mod.Kube,
    wasmplugin_crd: str,
    envoyfilter_crd: str,
    kube_namespace: str,
    sources: Sources,
    test_ca: fixtures_origin.TestCA,
    tmp_path: Path,
) -> Iterator[operator_mod.Operator]:
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[kube_namespace],
        extra=[f"--insecure-registry={sources.plain.host}", "--istio-delivery=configmap"],
        env={"SSL_CERT_FILE": str(test_ca.ca_file)},
    )
    try:
        yield op
    finally:
        op.stop()
        print(op.proc.log()[-6000:])


def _create(kube: kube_mod.Kube, ns: str, doc: dict[str, Any]) -> None:
    collection = _PATHS[(doc["apiVersion"], doc["kind"])].format(ns=ns)
    status, out = kube.request("POST", collection, doc)
    assert status == 201, out


def _plugin_status(kube: kube_mod.Kube, ns: str, name: str) -> dict[str, Any]:
    status, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
    return dict(obj.get("status") or {}) if status == 200 else {}


def _ready(st: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == "Ready"), {})


def _start_agent_pod(
    kube: kube_mod.Kube, ns: str, labels: dict[str, str], work: Path, module_tls_port: int
) -> agent_mod.Agent:
    ip, port = f"127.0.0.{next(_hosts)}", procs.free_port()
    annotations = {"meshplug.io/agent-push-port": str(port), agent_mod.INJECTED_ANNOTATION: "test"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "selected", "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
    }
    status, out = kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    assert status == 201, out
    return agent_mod.run_pod(
        kube, ns, "selected", work, ip=ip, module_server_url=f"https://127.0.0.1:{module_tls_port}"
    )


def _generated(kube: kube_mod.Kube, ns: str, name: str) -> dict[str, list[str]]:
    selector = urllib.parse.quote(f"meshplug.io/plugin={name}")
    out = {}
    for kind, path in (
        ("EnvoyFilter", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters"),
        ("ConfigMap", f"/api/v1/namespaces/{ns}/configmaps"),
    ):
        _, found = kube.request("GET", f"{path}?labelSelector={selector}")
        out[kind] = [o["metadata"]["name"] for o in found["items"]]
    return out


def _wasm_configs(typed_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The wasm filter configs of a rendered HTTP filter: one, or one per matchRule in the composite filter."""
    if "config" in typed_config:
        return [typed_config["config"]]
    matchers = typed_config["xds_matcher"]["matcher_list"]["matchers"]
    return [m["on_match"]["action"]["typed_config"]["typed_config"]["typed_config"]["config"] for m in matchers]


def _template_annotations(kube: kube_mod.Kube, ns: str) -> dict[str, dict[str, str]]:
    _, found = kube.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments")
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"].get("annotations") or {} for d in found["items"]}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_yields_expected_objects_status_and_cleans_up(  # noqa: PLR0912, PLR0915, PLR0917 - fixtures; every example's whole life, read top to bottom
    kube: kube_mod.Kube,
    kube_namespace: str,
    sources: Sources,
    operator: operator_mod.Operator,
    tmp_path: Path,
    path: Path,
) -> None:
    ns = kube_namespace
    example = load(path)
    docs = copy.deepcopy(example.docs)
    plugin = next(d for d in docs if d["kind"] == "WasmPlugin")
    spec, name = plugin["spec"], plugin["metadata"]["name"]
    agent_plane = spec.get("dataPlane") == "agent"
    sha = hashlib.sha256(example.module).hexdigest()
    resolve(spec, example.module, sources, kube, ns)
    for doc in docs:
        doc["metadata"]["namespace"] = ns
    for doc in docs:
        if doc["kind"] != "WasmPlugin":
            _create(kube, ns, doc)

    labels = (spec.get("selector") or {}).get("matchLabels")
    agent = None
    if agent_plane:
        assert not any(d["kind"] == "Secret" for d in docs), "the agent plane needs no Secret from the user"
        agent = _start_agent_pod(kube, ns, labels, tmp_path, operator.module_tls_port)
    elif labels and not any(d["kind"] == "Deployment" for d in docs):
        _create(
            kube,
            ns,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "selected"},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
                    },
                },
            },
        )
    try:
        _create(kube, ns, plugin)
        print(f"{path.name}: {json.dumps(spec)}")
        # the istio plane has no istiod here (its real run: tests/integration/test_istio_examples.py): the ConfigMap
        # route's objects are checked, and with no proxy to confirm, Ready stays False; a module in a ConfigMap
        # cannot reach gateways (targetRefs)
        gateway_cm = bool(spec.get("targetRefs")) and len(example.module) <= CONFIGMAP_MAX
        want = ("Confirmed", "1/1") if agent_plane else ("ConfigMapNeedsSidecars" if gateway_cm else "NoProxies", None)
        procs.wait_until(
            lambda: (
                _ready(st := _plugin_status(kube, ns, name)).get("reason") == want[0]
                and (want[1] is None or (st.get("pods") or {}).get("summary") == want[1])
            ),
            timeout=120,
            interval=0.2,
            what=f"{path.name}: Ready ({want[0]})",
        )
        st = _plugin_status(kube, ns, name)
        assert st["digest"] == f"sha256:{sha}"
        assert {c["type"]: c["status"] for c in st["conditions"]} == {
            "Fetched": "True",
            "Validated": "True",
            "Ready": "True" if agent_plane else "False",
        }
        generated = _generated(kube, ns, name)
        if gateway_cm:
            assert generated == {"EnvoyFilter": [], "ConfigMap": []}
        elif agent_plane:
            assert agent is not None
            assert generated == {"EnvoyFilter": [], "ConfigMap": []}
            plugins = [(p["name"], p["sha256"]) for p in agent.config_dump()["plugins"]]
            assert plugins == [(f"{ns}.{name}", sha)]
        else:
            assert generated["EnvoyFilter"] == [f"meshplug-{name}"]
            _, ef = kube.request(
                "GET", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-{name}"
            )
            if spec.get("targetRefs"):
                assert ef["spec"]["targetRefs"] == spec["targetRefs"]
                assert {p["match"]["context"] for p in ef["spec"]["configPatches"]} == {"GATEWAY"}
            elif len(example.module) <= CONFIGMAP_MAX:  # only pods that mount the module (labelled at admission)
                assert ef["spec"]["workloadSelector"] == {
                    "labels": {**labels, f"wasm.meshplug.io/meshplug-wasm-{name}": "mounted"}
                }
            else:
                assert ef["spec"]["workloadSelector"] == {"labels": labels}
            patch = ef["spec"]["configPatches"][0]
            assert patch["applyTo"] == ("NETWORK_FILTER" if spec.get("type") == "NETWORK" else "HTTP_FILTER")
            configs = _wasm_configs(patch["patch"]["value"]["typed_config"])
            for wasm in configs:
                assert wasm["name"] == f"{ns}.{name}" and wasm.get("root_id", "") == spec.get("pluginName", "")
            expected_configs = [r.get("pluginConfig", spec.get("pluginConfig")) for r in spec.get("matchRules", [])]
            if not spec.get("matchRules"):
                expected_configs = [spec["pluginConfig"]] if "pluginConfig" in spec else [None]
            assert [
                json.loads(w["configuration"]["value"]) if "configuration" in w else None for w in configs
            ] == expected_configs
            wasm = configs[0]
            code = wasm["vm_config"]["code"]
            annotations = _template_annotations(kube, ns)
            assert all("sidecar.istio.io/userVolume" not in a for a in annotations.values())  # workloads untouched
            if len(example.module) <= CONFIGMAP_MAX:
                assert generated["ConfigMap"] == [f"meshplug-wasm-{name}"]
                assert code["local"]["filename"].endswith(f"/{name}/{sha}.wasm")
                _, cm = kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/meshplug-wasm-{name}")
                assert base64.b64decode(cm["binaryData"][f"{sha}.wasm"]) == example.module
            else:  # too large for a ConfigMap: Envoy fetches it from the operator's module server
                assert generated["ConfigMap"] == []
                assert code["remote"]["sha256"] == sha
                assert code["remote"]["http_uri"]["uri"].startswith(
                    f"http://127.0.0.1:{operator.module_port}/modules/sha256/{sha}"
                )

        # delete: the finalizer removes every generated object and annotation, agents run nothing
        status, out = kube.request("DELETE", f"{PLUGINS.format(ns=ns)}/{name}")
        assert status == 200, out
        procs.wait_until(
            lambda: kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")[0] == 404, timeout=60, what="deleted"
        )
        assert _generated(kube, ns, name) == {"EnvoyFilter": [], "ConfigMap": []}
        assert all("sidecar.istio.io/userVolume" not in a for a in _template_annotations(kube, ns).values())
        if agent is not None:
            assert agent.config_dump()["plugins"] == []
    finally:
        print("status:", json.dumps(_plugin_status(kube, ns, name)))
        if agent is not None:
            agent.stop()
