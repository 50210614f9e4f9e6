"""The TrafficExtension CRD in the real kube-apiserver: Istio 1.30's TrafficExtension examples (the istio-testbed's
wasm and Lua ones, run there against a real istiod) are accepted with only their apiVersion changed; the CEL
one-ofs (wasm | lua, selector | targetRefs) and the 64 KiB Lua bound refuse with their messages; what is stored
parses into the PluginSpec the operator uses."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from meshplug import spec
from tests.testbed import fixtures_kube, procs
from tests.testbed import kube as kube_mod

pytestmark = pytest.mark.integration

CRD_FILE = procs.REPO_ROOT / "crds" / "trafficextensions.meshplug.io.yaml"
#: Istio's own examples, as run against a real istiod (docs/testbed.md); copied into the repo below
ISTIO_EXAMPLES = procs.REPO_ROOT / "examples" / "istio" / "trafficextensions.yaml"


def path(namespace: str, name: str = "") -> str:
    return f"/apis/meshplug.io/v1alpha1/namespaces/{namespace}/trafficextensions" + (f"/{name}" if name else "")


@pytest.fixture(scope="module")
def te_crd(kube: kube_mod.Kube) -> str:
    body: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    fixtures_kube.install_crd(kube, body)
    return str(body["metadata"]["name"])


def istio_examples() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(ISTIO_EXAMPLES.read_text()) if d]


def test_istio_examples_port_by_changing_the_api_version(kube: kube_mod.Kube, te_crd: str, kube_namespace: str) -> None:
    docs = istio_examples()
    assert {d["apiVersion"] for d in docs} == {"extensions.istio.io/v1alpha1"}
    assert {"wasm", "lua"} <= {k for d in docs for k in d["spec"]}
    for doc in docs:
        body = copy.deepcopy(doc) | {"apiVersion": "meshplug.io/v1alpha1"}
        body["metadata"] = {"name": doc["metadata"]["name"]}
        status, out = kube.request("POST", path(kube_namespace), body)
        assert status == 201, out
        stored = kube.request("GET", path(kube_namespace, body["metadata"]["name"]))[1]
        plugin = spec.parse(stored)
        assert plugin.kind == spec.KIND_TRAFFIC_EXTENSION and plugin.namespace == kube_namespace
        if "lua" in doc["spec"]:
            assert plugin.lua == doc["spec"]["lua"]["inlineCode"] and plugin.scheme is spec.Scheme.INLINE
            assert plugin.phase is spec.Phase.AUTHN
        else:
            assert plugin.url == doc["spec"]["wasm"]["url"] and plugin.phase is spec.Phase.AUTHZ
            assert plugin.plugin_config_value == doc["spec"]["wasm"]["pluginConfig"]
        assert plugin.match == (spec.TrafficMatch(spec.MatchMode.SERVER, ()),)


LUA = {"inlineCode": "function envoy_on_request(h) end"}
WASM = {"url": "oci://registry.example/f:v1"}

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("neither", {"phase": "AUTHN"}, "exactly one of wasm or lua must be set"),
    ("both", {"wasm": WASM, "lua": LUA}, "exactly one of wasm or lua must be set"),
    ("selector-and-refs", {"lua": LUA, "selector": {"matchLabels": {"a": "b"}},
                           "targetRefs": [{"kind": "Gateway", "name": "gw"}]}, "only one of targetRefs or selector"),
    ("empty-lua", {"lua": {"inlineCode": ""}}, "spec.lua.inlineCode"),
    ("lua-too-large", {"lua": {"inlineCode": "-" * 65537}}, "spec.lua.inlineCode"),
    ("wasm-without-url", {"wasm": {"sha256": ""}}, "spec.wasm.url"),
    ("bad-phase", {"lua": LUA, "phase": "LATE"}, "spec.phase"),
    ("agent-target-refs", {"lua": LUA, "dataPlane": "agent", "targetRefs": [{"kind": "Gateway", "name": "gw"}]},
     "the agent data plane selects pods with selector"),
]  # fmt: skip


@pytest.mark.parametrize("invalid", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_trafficextensions_are_refused(
    kube: kube_mod.Kube, te_crd: str, kube_namespace: str, invalid: tuple[str, dict[str, Any], str]
) -> None:
    case, fields, message = invalid
    body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "TrafficExtension", "metadata": {"name": case},
            "spec": fields}  # fmt: skip
    status, out = kube.request("POST", path(kube_namespace), body)
    assert status == 422, out
    assert message in out["message"], out["message"]


def test_rollout_is_accepted_strictly_and_parsed(kube: kube_mod.Kube, te_crd: str, kube_namespace: str) -> None:
    """meshplug's canary rollout on a TrafficExtension (agent plane), through strict server-side apply."""
    rollout = {
        "steps": [{"selector": {"matchLabels": {"track": "canary"}}}, {"percent": 50}],
        "holdSeconds": 30,
        "analysis": {"minRequests": 10, "maxFailureRatioIncrease": 0.05, "latencyPercentile": 95},
    }
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": {"name": "canaried"},
        "spec": {"dataPlane": "agent", "lua": LUA, "rollout": rollout},
    }
    query = "?fieldManager=kubectl&fieldValidation=Strict"
    status, out = kube.request(
        "PATCH", path(kube_namespace, "canaried") + query, body, content_type="application/apply-patch+yaml"
    )
    assert status == 201, out
    plugin = spec.parse(out)
    assert plugin.rollout is not None and plugin.lua == LUA["inlineCode"]
    assert [s.percent for s in plugin.rollout.steps] == [None, 50] and plugin.rollout.hold_s == 30
    assert plugin.rollout.latency_percentile == 95 and plugin.rollout.max_latency_ratio == 1.5  # defaulted
    # a misspelled field is an error under strict validation
    body["spec"]["rollout"] = {**rollout, "holdSecond": 5}
    status, out = kube.request(
        "PATCH", path(kube_namespace, "canaried") + query, body, content_type="application/apply-patch+yaml"
    )
    # (kube-apiserver answers a server-side apply with a field its schema does not declare with a 500)
    assert status == 500 and ".spec.rollout.holdSecond: field not declared in schema" in out["message"], out
