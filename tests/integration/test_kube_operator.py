"""`meshplug operator` as a process against the real kube-apiserver (no istiod here: the EnvoyFilter kind is a
stand-in CRD; what the proxies do is tests/integration/test_istio_*.py): a WasmPlugin of the ConfigMap route
becomes an EnvoyFilter and a ConfigMap, never a write to a workload; with no proxy to confirm it Ready stays False
(NoProxies); failures show a specific reason and Event and heal when fixed; deleting the plugin removes everything
it generated (finalizer)."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from meshplug import limits
from meshplug.controller import apply
from tests.guests import minimal
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed import procs

MODULE = minimal.passthrough()
MODULE_V2 = minimal.passthrough('(data (i32.const 2048) "v2")')
NOT_PROXY_WASM = wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "hello")))')
PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"


@pytest.fixture
def operator(
    kube: kube_mod.Kube, wasmplugin_crd: str, envoyfilter_crd: str, kube_namespace: str, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """The operator watching `kube_namespace`, with file:// allowed below a temp dir; yields (ns, module dir)."""
    modules = tmp_path / "modules"
    modules.mkdir()
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[kube_namespace],
        extra=[f"--file-root={modules}", "--istio-delivery=configmap"],
    )
    try:
        yield kube_namespace, modules
    finally:
        op.stop()
        print(op.proc.log()[-6000:])


def _deployment(kube: kube_mod.Kube, ns: str, name: str, labels: dict[str, str]) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {"keep": "me"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
            },
        },
    }
    status, out = kube.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body)
    assert status == 201, out


def _plugin(kube: kube_mod.Kube, ns: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name}, "spec": spec}
    status, out = kube.request("POST", PLUGINS.format(ns=ns), body)
    assert status == 201, out


def _condition(kube: kube_mod.Kube, ns: str, name: str, ctype: str) -> dict[str, Any]:
    _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return dict(c)
    return {}


def _wait_condition(kube: kube_mod.Kube, ns: str, name: str, ctype: str, *, status: str, reason: str) -> dict[str, Any]:
    procs.wait_until(
        lambda: (c := _condition(kube, ns, name, ctype)).get("status") == status and c.get("reason") == reason,
        timeout=120,
        interval=0.2,
        what=f"{name}: {ctype}={status} ({reason})",
    )
    _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
    return dict(obj)


def _events(kube: kube_mod.Kube, ns: str, name: str) -> list[tuple[str, str]]:
    _, out = kube.request("GET", f"/api/v1/namespaces/{ns}/events")
    return [(e["type"], e["reason"]) for e in out["items"] if e["involvedObject"]["name"] == name]


def _event_counts(kube: kube_mod.Kube, ns: str, name: str) -> list[tuple[str, str, int]]:
    _, out = kube.request("GET", f"/api/v1/namespaces/{ns}/events")
    return [
        (e["type"], e["reason"], int(e.get("count") or 1)) for e in out["items"] if e["involvedObject"]["name"] == name
    ]


def test_an_event_written_again_after_a_lost_answer_is_counted_once(
    kube: kube_mod.Kube, kube_api: Any, kube_namespace: str
) -> None:
    """A try of an Event whose answer was lost after the API server took it (the next try finds the Event there) is
    not counted again: each occurrence carries its id (the operator's Writer.event, against the real API server).
    Another occurrence of the series is counted."""
    ns = kube_namespace
    involved = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "evt", "namespace": ns, "uid": "u-1"}}
    for occurrence, counted in [("a", 1), ("a", 1), ("b", 2), ("b", 2), ("b", 2), ("c", 3)]:
        writer = apply.Writer(kube_api)  # a try that has not seen the answer to the one before (no cached count)
        writer.event(involved, warning=True, reason="Tried", message=f"occurrence {occurrence}", occurrence=occurrence)
        assert _event_counts(kube, ns, "evt") == [("Warning", "Tried", counted)]


def test_plugin_is_delivered_with_status_and_cleaned_up(kube: kube_mod.Kube, operator: tuple[str, Path]) -> None:
    ns, modules = operator
    (modules / "hdr.wasm").write_bytes(MODULE)
    digest = hashlib.sha256(MODULE).hexdigest()
    _deployment(kube, ns, "cart", {"app": "cart"})
    _deployment(kube, ns, "other", {"app": "other"})
    _plugin(
        kube,
        ns,
        "hdr",
        {
            "url": f"file://{modules / 'hdr.wasm'}",
            "sha256": digest,
            "selector": {"matchLabels": {"app": "cart"}},
            "pluginConfig": {"header": "x-a"},
        },
    )
    obj = _wait_condition(kube, ns, "hdr", "Ready", status="False", reason="NoProxies")
    assert obj["status"]["digest"] == f"sha256:{digest}"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]} == {
        "Fetched": "True",
        "Validated": "True",
        "Ready": "False",
    }
    assert obj["status"]["pods"]["summary"] == "0/0"
    assert "meshplug.io/cleanup" in obj["metadata"]["finalizers"]

    status, ef = kube.request("GET", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-hdr")
    assert status == 200
    # only pods that mount the module (labelled so by the webhook at admission) get the filter
    assert ef["spec"]["workloadSelector"] == {
        "labels": {"app": "cart", "wasm.meshplug.io/meshplug-wasm-hdr": "mounted"}
    }
    config = ef["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"]
    assert config["configuration"]["value"] == '{"header":"x-a"}'
    assert config["vm_config"]["code"]["local"]["filename"].endswith(f"/hdr/{digest}.wasm")
    status, cm = kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/meshplug-wasm-hdr")
    assert status == 200 and base64.b64decode(cm["binaryData"][f"{digest}.wasm"]) == MODULE
    assert json.loads(cm["metadata"]["annotations"]["meshplug.io/selector"]) == {"app": "cart"}

    # no workload is written: the pod templates are as they were
    _, cart = kube.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/cart")
    assert cart["spec"]["template"]["metadata"]["annotations"] == {"keep": "me"}
    assert cart["metadata"]["generation"] == 1

    # delete: the finalizer removes everything generated, then the resource goes
    kube.request("DELETE", f"{PLUGINS.format(ns=ns)}/hdr")
    procs.wait_until(
        lambda: kube.request("GET", f"{PLUGINS.format(ns=ns)}/hdr")[0] == 404, timeout=60, what="plugin deleted"
    )
    assert (
        kube.request("GET", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-hdr")[0] == 404
    )
    assert kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/meshplug-wasm-hdr")[0] == 404
    _, cart = kube.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/cart")
    assert cart["spec"]["template"]["metadata"]["annotations"] == {"keep": "me"}
    assert cart["metadata"]["generation"] == 1


@pytest.mark.parametrize(
    ("case", "condition", "reason"),
    [
        ("wrong-sha256", "Fetched", "ChecksumMismatch"),
        ("missing-file", "Fetched", "NotFound"),
        ("unreachable-url", "Fetched", "DownloadFailure"),
        ("not-proxy-wasm", "Validated", "NoAbiMarker"),
        ("bad-plugin-config", "Ready", "InvalidPluginConfig"),
    ],
)
def test_failures_have_specific_reasons_and_heal(
    kube: kube_mod.Kube, operator: tuple[str, Path], case: str, condition: str, reason: str
) -> None:
    ns, modules = operator
    path = modules / "m.wasm"
    spec: dict[str, Any] = {"url": f"file://{path}"}
    origin_port = procs.free_port()  # nothing listens there until the cause is fixed
    if case == "unreachable-url":
        path.write_bytes(MODULE)
        spec = {"url": f"http://127.0.0.1:{origin_port}/m.wasm", "sha256": hashlib.sha256(MODULE).hexdigest()}
    elif case == "wrong-sha256":
        path.write_bytes(MODULE)
        spec["sha256"] = hashlib.sha256(MODULE_V2).hexdigest()
    elif case == "not-proxy-wasm":
        path.write_bytes(NOT_PROXY_WASM)
    elif case == "bad-plugin-config":
        path.write_bytes(MODULE)
        spec["pluginConfigSchema"] = {"type": "object", "required": ["header"]}
        spec["pluginConfig"] = {"other": 1}
    _plugin(kube, ns, "p", spec)
    _wait_condition(kube, ns, "p", condition, status="False", reason=reason)
    procs.wait_until(lambda: any(t == "Warning" for t, _ in _events(kube, ns, "p")), timeout=30, what="a Warning Event")

    # fix the cause; the operator notices without a manual kick
    if case == "unreachable-url":
        origin = procs.start(
            "origin",
            [sys.executable, "-m", "http.server", str(origin_port), "--bind", "127.0.0.1", "--directory", str(modules)],
            log_dir=modules / "logs",
            ready=lambda: procs.port_open(origin_port),
        )
        try:
            _wait_condition(kube, ns, "p", "Ready", status="False", reason="NoProxies")
        finally:
            origin.stop()
        return
    if case == "wrong-sha256":
        path.write_bytes(MODULE_V2)
    elif case in ("missing-file", "not-proxy-wasm"):
        path.write_bytes(MODULE)
    else:
        status, out = kube.request(
            "PATCH",
            f"{PLUGINS.format(ns=ns)}/p",
            {"spec": {"pluginConfig": {"header": "x"}}},
            content_type="application/merge-patch+json",
        )
        assert status == 200, out
    obj = _wait_condition(kube, ns, "p", "Ready", status="False", reason="NoProxies")
    assert {c["type"]: c["status"] for c in obj["status"]["conditions"]}["Validated"] == "True"


def _workload(kube: kube_mod.Kube, ns: str, kind: str, name: str, labels: dict[str, str]) -> str:
    """Create a StatefulSet/DaemonSet/Deployment whose pod template carries ``labels``; returns its API path."""
    plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}[kind]
    body = {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"w": name}},
            "template": {
                "metadata": {"labels": {"w": name, **labels}, "annotations": {"keep": "me"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
            },
        },
    }
    if kind == "StatefulSet":
        body["spec"]["serviceName"] = name  # type: ignore[index]
    status, out = kube.request("POST", f"/apis/apps/v1/namespaces/{ns}/{plural}", body)
    assert status == 201, out
    return f"/apis/apps/v1/namespaces/{ns}/{plural}/{name}"


def test_no_workload_is_written(kube: kube_mod.Kube, operator: tuple[str, Path]) -> None:
    """Deployments, StatefulSets and DaemonSets whose pods the plugin selects are never written (no rollout, no
    conflict with a GitOps copy); the module reaches pods at admission instead (tests/integration/test_istio_*)."""
    ns, modules = operator
    (modules / "hdr.wasm").write_bytes(MODULE)
    paths = {kind: _workload(kube, ns, kind, kind.lower(), {"app": "cart"}) for kind in ("StatefulSet", "DaemonSet")}
    paths["Deployment"] = _workload(kube, ns, "Deployment", "deployment", {"app": "cart"})
    before = {kind: kube.request("GET", path)[1]["metadata"]["resourceVersion"] for kind, path in paths.items()}
    _plugin(kube, ns, "hdr", {"url": f"file://{modules / 'hdr.wasm'}", "selector": {"matchLabels": {"app": "cart"}}})
    _wait_condition(kube, ns, "hdr", "Ready", status="False", reason="NoProxies")
    kube.request("DELETE", f"{PLUGINS.format(ns=ns)}/hdr")
    procs.wait_until(
        lambda: kube.request("GET", f"{PLUGINS.format(ns=ns)}/hdr")[0] == 404, timeout=60, what="plugin deleted"
    )
    after = {kind: kube.request("GET", path)[1]["metadata"]["resourceVersion"] for kind, path in paths.items()}
    assert after == before


def test_a_refused_event_neither_holds_back_nor_fails_the_status_and_lands_once_allowed(
    kube: kube_mod.Kube, wasmplugin_crd: str, envoyfilter_crd: str, kube_namespace: str, tmp_path: Path
) -> None:
    """Events are written after the status and never hold it back: with every Event write in the namespace refused
    (a ValidatingAdmissionPolicy standing in for a quota, a missing permission or an API server hiccup), a failing
    plugin still gets its status, and the refusal is logged. The Event is kept and tried again (a reconcile records
    it once, when the status changes): once the policy goes, it lands, once (count 1), with nothing here changing
    the plugin; and the plugin heals as it would."""
    ns = kube_namespace
    policy = f"meshplug-test-no-events-{ns}"[:253]
    admission = "/apis/admissionregistration.k8s.io/v1"
    refused = "Events are refused in this namespace (the test's stand-in for a quota or a missing permission)"
    body = {
        "metadata": {"name": policy},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["events"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": refused, "reason": "Forbidden"}],
        },
    }
    binding = {
        "metadata": {"name": policy},
        "spec": {
            "policyName": policy,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    }
    assert kube.request("POST", f"{admission}/validatingadmissionpolicies", body)[0] == 201
    assert kube.request("POST", f"{admission}/validatingadmissionpolicybindings", binding)[0] == 201
    modules = tmp_path / "modules"
    modules.mkdir()
    op = operator_mod.start_operator(
        kube.kubeconfig, tmp_path, namespaces=[ns], extra=[f"--file-root={modules}", "--istio-delivery=configmap"]
    )
    try:
        probe = {
            "metadata": {"generateName": "probe-"},
            "involvedObject": {"kind": "Pod", "name": "x", "namespace": ns},
            "reason": "Probe",
            "message": "probe",
            "type": "Normal",
            "source": {"component": "test"},
        }
        procs.wait_until(
            lambda: (
                (answer := kube.request("POST", f"/api/v1/namespaces/{ns}/events", probe))[0] == 403
                and refused in str(answer[1])
            ),
            timeout=30,
            what="the policy refusing Events",
        )
        _plugin(kube, ns, "p", {"url": f"file://{modules / 'm.wasm'}"})  # no such file yet
        obj = _wait_condition(kube, ns, "p", "Fetched", status="False", reason="NotFound")
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
        procs.wait_until(
            lambda: "Event NotFound on " in op.proc.log() and refused in op.proc.log(),
            timeout=30,
            what="the refused Event logged",
        )
        procs.wait_until(
            lambda: op.proc.log().count(f"Event NotFound on {ns}/p not recorded (trying again") >= 2,
            timeout=30,
            what="a second try refused too",
        )
        assert _events(kube, ns, "p") == []
        assert kube.request("DELETE", f"{admission}/validatingadmissionpolicybindings/{policy}")[0] == 200
        procs.wait_until(
            lambda: _event_counts(kube, ns, "p") == [("Warning", "NotFound", 1)],
            timeout=2 * limits.EVENT_RETRY_MAX_S + 30,  # the policy's removal seen, and the next try
            what="the Event recorded once the policy went",
        )
        (modules / "m.wasm").write_bytes(MODULE)  # the retry (its backoff) heals it as without the policy
        _wait_condition(kube, ns, "p", "Ready", status="False", reason="NoProxies")
        assert _event_counts(kube, ns, "p")[0] == ("Warning", "NotFound", 1)  # not written twice
        assert op.healthy()
    finally:
        op.stop()
        kube.request("DELETE", f"{admission}/validatingadmissionpolicybindings/{policy}")
        kube.request("DELETE", f"{admission}/validatingadmissionpolicies/{policy}")
        print(op.proc.log()[-6000:])
