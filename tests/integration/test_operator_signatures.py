"""`verificationKey` enforced by the operator (a real process on the real kube-apiserver), with modules signed by
the real cosign in the test bed's registry: a signed module (tag or bundle layout) becomes Ready; an unsigned
module and one signed by another key are refused before anything rolls out (Ready=False SignatureInvalid, a
Warning Event SignatureInvalid, no EnvoyFilter); when a Ready plugin's new module is unsigned, its last good
module keeps being delivered. `--require-signatures` refuses plugins without a key of their own; the chart's
``signatures`` values set that policy with trusted keys."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.guests import minimal
from tests.integration.test_kube_operator import PLUGINS, _events, _plugin, _wait_condition
from tests.testbed import helm as helm_mod
from tests.testbed import installed, procs, promtext
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed.fixtures_cosign import CosignKit
from tests.testbed.registry import Registry

SIGNED = minimal.passthrough('(data (i32.const 2048) "signed v1")')
UNSIGNED = minimal.passthrough('(data (i32.const 2048) "unsigned v2")')


@pytest.fixture
def signed_operator(
    kube: kube_mod.Kube, kube_namespace: str, registries: dict[str, Registry], tmp_path: Path
) -> Iterator[tuple[str, Registry, operator_mod.Operator]]:
    """The operator (CRDs applied by the test's usefixtures) with --require-signatures and no trusted key."""
    registry = registries["plain"]
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[kube_namespace],
        extra=[f"--insecure-registry={registry.host}", "--require-signatures"],
    )
    try:
        yield kube_namespace, registry, op
    finally:
        op.stop()
        print(op.proc.log()[-6000:])


def _configmap_digest(kube: kube_mod.Kube, ns: str, plugin: str) -> str:
    _, cm = kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/meshplug-wasm-{plugin}")
    return str(((cm.get("metadata") or {}).get("annotations") or {}).get("meshplug.io/digest", ""))


def _refused(kube: kube_mod.Kube, ns: str, name: str, message: str) -> dict[str, Any]:
    obj = _wait_condition(kube, ns, name, "Ready", status="False", reason="SignatureInvalid")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert message in ready["message"], ready
    assert "Error" not in ready["message"]  # no internal class names
    procs.wait_until(
        lambda: ("Warning", "SignatureInvalid") in _events(kube, ns, name), timeout=30, what="a SignatureInvalid Event"
    )
    return obj


def _event_counts(kube: kube_mod.Kube, ns: str, name: str) -> list[tuple[str, int]]:
    _, out = kube.request("GET", f"/api/v1/namespaces/{ns}/events")
    return [(e["reason"], int(e.get("count") or 1)) for e in out["items"] if e["involvedObject"]["name"] == name]


@pytest.mark.usefixtures("wasmplugin_crd", "envoyfilter_crd")
def test_verification_key_gates_rollout(  # noqa: PLR0915 - one story, read top to bottom
    kube: kube_mod.Kube, signed_operator: tuple[str, Registry, operator_mod.Operator], cosign: CosignKit
) -> None:
    ns, registry, op = signed_operator
    key = cosign.signer.pub.read_text()
    tag_digest = registry.push_layout("wasm-content-single-layer", "gate/app", "v1", SIGNED)
    cosign.cosign.sign(registry, f"gate/app@{tag_digest}", cosign.signer)
    bundle_module = minimal.passthrough('(data (i32.const 2048) "bundle")')
    bundle_digest = registry.push_layout("cncf-wasm-artifact", "gate/bundle", "v1", bundle_module)
    cosign.cosign.sign(registry, f"gate/bundle@{bundle_digest}", cosign.signer, bundle=True)
    registry.push_layout("wasm-content-single-layer", "gate/unsigned", "v1", UNSIGNED)
    other_digest = registry.push_layout("wasm-content-single-layer", "gate/other", "v1", UNSIGNED)
    cosign.cosign.sign(registry, f"gate/other@{other_digest}", cosign.other)

    url = f"oci://{registry.host}/gate"
    _plugin(kube, ns, "tagged", {"url": f"{url}/app:v1", "verificationKey": key})
    _plugin(kube, ns, "bundled", {"url": f"{url}/bundle:v1", "verificationKey": key})
    _plugin(kube, ns, "unsigned", {"url": f"{url}/unsigned:v1", "verificationKey": key})
    _plugin(kube, ns, "otherkey", {"url": f"{url}/other:v1", "verificationKey": key})
    _plugin(kube, ns, "nokey", {"url": f"{url}/app:v1"})  # signed, but the plugin names no key: policy refuses

    for name, module in (("tagged", SIGNED), ("bundled", bundle_module)):
        # through the gate: fetched and validated; no pod here has an Istio proxy, so Ready says NoProxies
        obj = _wait_condition(kube, ns, name, "Ready", status="False", reason="NoProxies")
        fetched = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert fetched["Fetched"] == fetched["Validated"] == "True", obj["status"]
        assert obj["status"]["digest"] == "sha256:" + hashlib.sha256(module).hexdigest()
    _refused(kube, ns, "unsigned", "has no cosign signature")
    # the retries add no Events: one series for (plugin, SignatureInvalid), its count rising
    procs.wait_until(
        lambda: next(c for r, c in _event_counts(kube, ns, "unsigned") if r == "SignatureInvalid") >= 2,
        timeout=60,
        what="the SignatureInvalid Event counted again",
    )
    assert [r for r, _ in _event_counts(kube, ns, "unsigned")].count("SignatureInvalid") == 1
    _refused(kube, ns, "otherkey", "none verifies under key")
    _refused(kube, ns, "nokey", "--require-signatures")
    for name in ("unsigned", "otherkey", "nokey"):  # nothing rolled out for them
        ef = f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-{name}"
        assert kube.request("GET", ef)[0] == 404
        assert kube.request("GET", f"/api/v1/namespaces/{ns}/configmaps/meshplug-wasm-{name}")[0] == 404

    # the Ready plugin moves to an unsigned module: refused, and the signed one keeps being delivered
    good = "sha256:" + hashlib.sha256(SIGNED).hexdigest()
    assert _configmap_digest(kube, ns, "tagged") == good
    status, out = kube.request(
        "PATCH",
        f"{PLUGINS.format(ns=ns)}/tagged",
        {"spec": {"url": f"{url}/unsigned:v1"}},
        content_type="application/merge-patch+json",
    )
    assert status == 200, out
    _refused(kube, ns, "tagged", "has no cosign signature")
    assert _configmap_digest(kube, ns, "tagged") == good
    ef = f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-tagged"
    assert kube.request("GET", ef)[0] == 200

    # the operator's metrics say the same, by plugin label, in Prometheus' conventions
    status, text = op.get("/metrics")
    assert status == 200
    families = promtext.check(text)
    # bundled passed the gate but, with no Istio proxy here, is not Ready (NoProxies): the gauge follows Ready
    assert promtext.value(families, "meshplug_operator_plugin_ready", namespace=ns, plugin="bundled") == 0
    assert promtext.value(families, "meshplug_operator_plugin_ready", namespace=ns, plugin="unsigned") == 0
    assert (promtext.value(families, "meshplug_wasm_remote_fetch_total", result="success") or 0) >= 2
    assert (promtext.value(families, "meshplug_wasm_remote_fetch_total", result="signature_invalid") or 0) >= 3
    assert (promtext.value(families, "meshplug_operator_reconcile_duration_seconds_count", result="ok") or 0) >= 2
    assert promtext.value(families, "meshplug_operator_workqueue_depth") is not None

    # meshplug status, as a kubectl user runs it
    def status(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "meshplug", "status", "--kubeconfig", str(kube.kubeconfig), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    listing = status("-n", ns)
    assert listing.returncode == 0, listing.stderr
    lines = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert lines["bundled"][3:5] == ["False", "NoProxies"], listing.stdout
    assert lines["unsigned"][3:5] == ["False", "SignatureInvalid"], listing.stdout
    everywhere = status("-A")
    assert everywhere.returncode == 0 and everywhere.stdout.startswith("NAMESPACE"), everywhere.stderr
    one = status("bundled", "-n", ns, "-o", "json")
    assert one.returncode == 1, one.stderr  # not Ready (NoProxies); a Ready plugin's 0 is test_author_workflow's
    doc = json.loads(one.stdout)
    assert doc["reason"] == "NoProxies" and doc["digest"] == "sha256:" + hashlib.sha256(bundle_module).hexdigest()
    refused = status("tagged", "-n", ns)
    assert refused.returncode == 1 and "SignatureInvalid" in refused.stdout, refused.stdout
    assert status("no-such-plugin", "-n", ns).returncode == 3
    dead = kube.kubeconfig.parent / "dead-kubeconfig"
    dead.write_text(kube.kubeconfig.read_text().replace(kube.url, f"https://127.0.0.1:{procs.free_port()}"))
    unreachable = subprocess.run(
        [sys.executable, "-m", "meshplug", "status", "--kubeconfig", str(dead), "-n", ns],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unreachable.returncode == 4 and "cannot reach the Kubernetes API" in unreachable.stderr, unreachable.stderr


@pytest.mark.usefixtures("wasmplugin_crd", "envoyfilter_crd")
def test_the_charts_signature_values_decide(
    kube: kube_mod.Kube, kube_namespace: str, registries: dict[str, Registry], cosign: CosignKit, tmp_path: Path
) -> None:
    """``helm install`` with ``signatures.require`` and ``signatures.trustedKeys`` (rendered as --require-signatures
    and one --trusted-key file each, from a ConfigMap the pod mounts), the operator run with the installed
    Deployment's flags: a plugin without verificationKey is Ready when its module is signed under a trusted key;
    unsigned or signed under another key, it is refused (SignatureInvalid) and nothing rolls out."""
    registry = registries["tls"]  # the chart has no insecure-registry switch: its CA goes in operator.trustedCA
    assert registry.ca_file is not None
    signed = minimal.passthrough('(data (i32.const 2048) "chart signed")')
    digest = registry.push_layout("wasm-content-single-layer", "chart/signed", "v1", signed)
    cosign.cosign.sign(registry, f"chart/signed@{digest}", cosign.signer)
    registry.push_layout("wasm-content-single-layer", "chart/unsigned", "v1", UNSIGNED)
    other = registry.push_layout("wasm-content-single-layer", "chart/other", "v1", UNSIGNED)
    cosign.cosign.sign(registry, f"chart/other@{other}", cosign.other)

    ns, helm_home = kube_namespace, tmp_path / "helm"
    webhook = installed.Webhook.make(tmp_path / "webhook")
    values: dict[str, Any] = {
        **webhook.values(),
        "crds": {"enabled": False, "keep": True},  # the fixture's CRDs
        "watchNamespaces": [ns],
        "operator": {"trustedCA": registry.ca_file.read_text()},
        "signatures": {"require": True, "trustedKeys": [cosign.signer.pub.read_text()]},
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    helm_mod.helm(
        ["install", "sig", str(helm_mod.CHART), "-n", ns, "-f", str(tmp_path / "values.yaml")],
        kubeconfig=kube.kubeconfig,
        home=helm_home,
    )
    try:
        op = installed.start_operator(kube, ns, "sig-meshplug", tmp_path / "operator", webhook=webhook)
        try:
            flags = [a for a in op.proc.argv if a.startswith(("--require-signatures", "--trusted-key"))]
            assert flags[0] == "--require-signatures" and len(flags) == 2, op.proc.argv
            url = f"oci://{registry.host}/chart"
            _plugin(kube, ns, "trusted", {"url": f"{url}/signed:v1"})
            _plugin(kube, ns, "unsigned", {"url": f"{url}/unsigned:v1"})
            _plugin(kube, ns, "otherkey", {"url": f"{url}/other:v1"})
            obj = _wait_condition(kube, ns, "trusted", "Ready", status="False", reason="NoProxies")
            assert obj["status"]["digest"] == "sha256:" + hashlib.sha256(signed).hexdigest()
            _refused(kube, ns, "unsigned", "has no cosign signature")
            _refused(kube, ns, "otherkey", "none verifies under key")
            for name in ("unsigned", "otherkey"):
                ef = f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-{name}"
                assert kube.request("GET", ef)[0] == 404
        finally:
            op.stop()
            print(op.proc.log()[-4000:])
    finally:
        helm_mod.helm(["uninstall", "sig", "-n", ns], kubeconfig=kube.kubeconfig, home=helm_home)
