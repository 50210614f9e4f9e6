"""The WasmPlugin CRD in the real kube-apiserver: Established, served with its short name and printer columns;
valid resources accepted (every examples/*.yaml too); invalid ones rejected by the schema and CEL rules with
their messages; the status subresource separate from spec."""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplug import spec
from tests.testbed import kube as kube_mod
from tests.testbed import procs

GROUP_PATH = "/apis/meshplug.io/v1alpha1"
DIGEST = "0123456789abcdef" * 4
EXAMPLES = sorted((procs.REPO_ROOT / "examples").glob("*.yaml"))


def plugins_path(namespace: str, name: str = "") -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/wasmplugins" + (f"/{name}" if name else "")


def wasmplugin(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name},
        "spec": {"url": "oci://registry.example/filters/hdr:v1", **fields},
    }


def test_crd_is_served_with_short_name_and_categories(kube: kube_mod.Kube, wasmplugin_crd: str) -> None:
    status, resources = kube.request("GET", GROUP_PATH)
    assert status == 200
    entry = next(r for r in resources["resources"] if r["name"] == "wasmplugins")
    assert entry["kind"] == "WasmPlugin" and entry["namespaced"] is True
    assert entry["shortNames"] == ["mwp"] and entry["categories"] == ["meshplug"]
    assert any(r["name"] == "wasmplugins/status" for r in resources["resources"])


VALID: list[tuple[str, dict[str, Any]]] = [
    ("minimal", {}),
    ("no-scheme", {"url": "registry.example/hdr:v1"}),
    ("https-sha", {"url": "https://h.example/x.wasm", "sha256": DIGEST}),
    ("file", {"url": "file:///opt/plugins/x.wasm"}),
    ("digest-url", {"url": f"oci://r.example/x@sha256:{DIGEST}"}),
    ("digest-url-and-sha", {"url": f"oci://r.example/x@sha256:{DIGEST}", "sha256": DIGEST}),
    # one pins the manifest, the other the wasm bytes: both are kept and checked
    ("digest-url-and-bytes-sha", {"url": f"oci://r.example/x@sha256:{DIGEST}", "sha256": "f" * 64}),
    ("empty-sha", {"sha256": ""}),
    ("selector", {"selector": {"matchLabels": {"app": "cart", "version": "v1"}}}),
    ("target-refs", {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]}),
    (
        "everything",
        {
            "imagePullPolicy": "Always",
            "imagePullSecret": "regcred",
            "pluginConfig": {"header": "x-a", "nested": {"list": [1, 2, {"k": None}]}},
            "pluginConfigSchema": {"type": "object", "required": ["header"]},
            "pluginName": "add_header",
            "phase": "AUTHZ",
            "priority": -10,
            "failStrategy": "FAIL_RELOAD",
            "vmConfig": {"env": [{"name": "A", "value": "1"}, {"name": "POD_NAME", "valueFrom": "HOST"}]},
            "match": [{"mode": "SERVER", "ports": [{"number": 8080}]}, {"mode": "CLIENT"}],
            "type": "HTTP",
            "dataPlane": "agent",
        },
    ),
    (
        "match-rules",
        {
            "pluginConfig": {"k": 1},
            "matchRules": [
                {"hosts": ["api.example.com", "*.example.org"], "pluginConfig": {"k": 2}},
                {"paths": [{"prefix": "/v1/"}, {"exact": "/"}]},
                {"hosts": ["web"], "paths": [{"exact": "/healthz"}]},
            ],
        },
    ),
    ("match-rules-agent", {"dataPlane": "agent", "matchRules": [{"paths": [{"prefix": "/api"}]}]}),
    (
        "rollout",
        {
            "dataPlane": "agent",
            "rollout": {
                "steps": [{"selector": {"matchLabels": {"track": "canary"}}}, {"percent": 25}, {"percent": 50}],
                "holdSeconds": 120,
                "analysis": {
                    "minRequests": 50,
                    "maxFailureRatioIncrease": 0.005,
                    "latencyPercentile": 99.9,
                    "maxLatencyRatio": 1.2,
                    "latencySlackMs": 2,
                },
            },
        },
    ),
]


@pytest.mark.parametrize(("fields"), [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_plugins_are_accepted(
    kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, fields: dict[str, Any]
) -> None:
    status, created = kube.request("POST", plugins_path(kube_namespace), wasmplugin("p", **fields))
    assert status == 201, created
    assert created["spec"].get("dataPlane") == fields.get("dataPlane", "istio")  # defaulted by the schema
    assert created["metadata"]["generation"] == 1
    # what the API server stored is what meshplug can parse
    parsed = spec.parse(created)
    assert parsed.namespace == kube_namespace and parsed.name == "p"
    if "pluginConfig" in fields:
        assert parsed.plugin_config_value == fields["pluginConfig"]  # preserved unknown fields, nulls included


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_accepted(kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "WasmPlugin"]
    assert docs, f"{path.name} holds no WasmPlugin"
    for doc in docs:
        doc = copy.deepcopy(doc)
        doc["metadata"].pop("namespace", None)
        status, created = kube.request("POST", plugins_path(kube_namespace), doc)
        assert status == 201, (path.name, created)
        spec.parse(created)


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-url", {"url": None}, "spec.url: Required value"),
    ("empty-url", {"url": ""}, "spec.url: Invalid value"),
    ("ftp", {"url": "ftp://h.example/x.wasm"}, "url must have one of the schemes oci, http, https, file"),
    ("space", {"url": "https://h.example/x y.wasm"}, "url must"),
    ("short-sha", {"sha256": "abc"}, "should match '^([a-f0-9]{64})?$'"),
    ("upper-sha", {"sha256": DIGEST.upper()}, "spec.sha256"),
    ("bad-url-digest", {"url": "oci://r.example/x@sha256:abc"}, "a digest in url must be @sha256: followed by"),
    (
        "selector-and-targetrefs",
        {"selector": {"matchLabels": {"a": "b"}}, "targetRefs": [{"kind": "Gateway", "name": "gw"}]},
        "only one of selector or targetRefs can be set",
    ),
    (
        "agent-targetrefs",
        {"dataPlane": "agent", "targetRefs": [{"kind": "Gateway", "name": "gw"}]},
        "the agent data plane selects pods with selector",
    ),
    (
        "too-many-refs",
        {"targetRefs": [{"kind": "Service", "name": f"s{i}"} for i in range(17)]},
        "must have at most 16 items",
    ),
    ("bad-kind", {"targetRefs": [{"kind": "Pod", "name": "p"}]}, 'Unsupported value: "Pod"'),
    ("phase", {"phase": "LATE"}, 'spec.phase: Unsupported value: "LATE"'),
    ("fail-strategy", {"failStrategy": "FAIL_MAYBE"}, "spec.failStrategy: Unsupported value"),
    ("plane", {"dataPlane": "linkerd"}, 'spec.dataPlane: Unsupported value: "linkerd"'),
    ("type", {"type": "UDP"}, "spec.type: Unsupported value"),
    ("pull-policy", {"imagePullPolicy": "Never"}, "spec.imagePullPolicy: Unsupported value"),
    ("port-0", {"match": [{"ports": [{"number": 0}]}]}, "should be greater than or equal to 1"),
    ("port-big", {"match": [{"ports": [{"number": 70000}]}]}, "should be less than or equal to 65535"),
    ("mode", {"match": [{"mode": "BOTH"}]}, 'Unsupported value: "BOTH"'),
    ("priority-type", {"priority": "high"}, 'spec.priority: Invalid value: "string"'),
    (
        "host-env-with-value",
        {"vmConfig": {"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}},
        "value may only be set when valueFrom is INLINE",
    ),
    ("env-no-name", {"vmConfig": {"env": [{"value": "x"}]}}, "spec.vmConfig.env[0].name: Required value"),
    (
        "env-duplicate",
        {"vmConfig": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}},
        "Duplicate value",
    ),
    ("plugin-config-not-object", {"pluginConfig": "x=1"}, 'spec.pluginConfig: Invalid value: "string"'),
    ("wildcard-label", {"selector": {"matchLabels": {"*": "x"}}}, "wildcard and empty label keys are not supported"),
    ("match-rule-empty", {"matchRules": [{}]}, "a match rule needs hosts or paths"),
    ("match-rule-host", {"matchRules": [{"hosts": ["API.example.com"]}]}, "spec.matchRules[0].hosts[0]"),
    ("match-rule-path", {"matchRules": [{"paths": [{"prefix": "api"}]}]}, "spec.matchRules[0].paths[0].prefix"),
    ("match-rule-both", {"matchRules": [{"paths": [{"prefix": "/", "exact": "/"}]}]}, "exactly one of prefix or exact"),
    ("match-rules-many", {"matchRules": [{"hosts": ["a"]}] * 17}, "must have at most 16 items"),
    ("match-rules-network", {"type": "NETWORK", "matchRules": [{"hosts": ["a"]}]}, "they need type HTTP"),
    ("rollout-no-steps", {"dataPlane": "agent", "rollout": {"holdSeconds": 5}}, "spec.rollout.steps: Required value"),
    ("rollout-empty-step", {"dataPlane": "agent", "rollout": {"steps": [{}]}}, "needs percent or selector.matchLabels"),
    ("rollout-percent", {"rollout": {"steps": [{"percent": 0}]}}, "spec.rollout.steps[0].percent"),
    (
        "rollout-ratio",
        {"rollout": {"steps": [{"percent": 5}], "analysis": {"maxLatencyRatio": 0.5}}},
        "maxLatencyRatio",
    ),
    ("rollout-hold", {"rollout": {"steps": [{"percent": 5}], "holdSeconds": 0}}, "spec.rollout.holdSeconds"),
    (
        "match-rule-config-agent",
        {"dataPlane": "agent", "matchRules": [{"hosts": ["a"], "pluginConfig": {"k": 1}}]},
        "matchRules[].pluginConfig needs the istio data plane",
    ),
]


@pytest.mark.parametrize(("fields", "message"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid_plugins_are_rejected(
    kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, fields: dict[str, Any], message: str
) -> None:
    body = wasmplugin("bad", **fields)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    status, out = kube.request("POST", plugins_path(kube_namespace), body)
    assert status == 422, out
    assert out["reason"] == "Invalid"
    assert message in out["message"], out["message"]


def test_status_subresource_and_printer_columns(kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str) -> None:
    status, created = kube.request("POST", plugins_path(kube_namespace), wasmplugin("st"))
    assert status == 201
    # status written through /status; a status in the main resource is ignored
    created["status"] = {
        "observedGeneration": 1,
        "digest": f"sha256:{DIGEST}",
        "pods": {"total": 3, "ready": 2, "failing": 1, "summary": "2/3"},
        "failingPods": [{"name": "cart-1", "reason": "NACK", "message": "checksum_mismatched"}],
        "conditions": [
            {"type": "Fetched", "status": "True", "reason": "Fetched", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {
                "type": "Ready",
                "status": "False",
                "reason": "PodsNotReady",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
        ],
    }
    status, updated = kube.request("PUT", plugins_path(kube_namespace, "st") + "/status", created)
    assert status == 200, updated
    assert updated["metadata"]["generation"] == 1  # status writes never bump the generation
    status, stored = kube.request("GET", plugins_path(kube_namespace, "st"))
    assert stored["status"]["pods"]["summary"] == "2/3"
    columns, row = _table(kube, kube_namespace, "st")
    assert columns[:5] == ["Name", "Ready", "Reason", "Digest", "Pods"]
    assert row[:5] == ["st", "False", "PodsNotReady", f"sha256:{DIGEST}", "2/3"]
    # a spec change through the main resource bumps the generation and leaves status alone
    updated["spec"]["phase"] = "STATS"
    status, changed = kube.request("PUT", plugins_path(kube_namespace, "st"), updated)
    assert status == 200, changed
    assert changed["metadata"]["generation"] == 2
    assert changed["status"]["digest"] == f"sha256:{DIGEST}"


def _table(kube: kube_mod.Kube, namespace: str, name: str) -> tuple[list[str], list[Any]]:
    req = urllib.request.Request(kube.url + plugins_path(namespace, name))
    req.add_header("Authorization", f"Bearer {kube.admin_token}")
    req.add_header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    with urllib.request.urlopen(req, context=kube.ssl_context(), timeout=30) as resp:
        table = json.loads(resp.read())
    return [c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"]
