"""The operator's SSRF guard as the chart installs it: ``helm install`` of charts/meshplug with default values (plus
the README's ``operator.trustedCA`` for the origin's private CA), the operator run with the installed Deployment's
flags and nothing of the test bed's on top (tests/testbed/installed.py, ``allow_loopback=False``). A WasmPlugin whose
url is on 127.0.0.1 is refused by a default install (the module is never requested) and fetched once the chart's
switch is on (``ssrf.allowLoopback``, rendered as ``--allow-loopback``); ``ssrf.blockCIDRs`` (``--block-cidr``)
refuses a network on top. The real API server, chart, operator process and HTTPS origin."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed import helm as helm_mod
from tests.testbed import installed, procs
from tests.testbed import kube as kube_mod
from tests.testbed.origin import Origin, wasm_module

PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"


def _fetched(kube: kube_mod.Kube, ns: str, name: str) -> dict[str, Any]:
    """The plugin's Fetched condition once the operator has written one."""
    found: dict[str, Any] = {}

    def written() -> bool:
        _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
        found.update(next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Fetched"), {}))
        return bool(found)

    procs.wait_until(written, timeout=60, interval=0.2, what=f"{name}'s Fetched condition")
    return found


@dataclass(frozen=True)
class Case:
    ssrf: dict[str, Any]  # the chart's ssrf values (default values when empty)
    flags: list[str]  # the SSRF flags the chart renders into the operator's Deployment
    fetched: str  # the plugin's Fetched condition
    requests: int  # how often the module was requested from the origin


CASES = {
    "default-install-refuses-loopback": Case({}, [], "False", 0),
    "allow-loopback-fetches": Case({"allowLoopback": True}, ["--allow-loopback"], "True", 1),
    "block-cidr-refuses-more": Case(
        {"allowLoopback": True, "blockCIDRs": ["127.0.0.0/8"]},
        ["--allow-loopback", "--block-cidr=127.0.0.0/8"],
        "False",
        0,
    ),
}


@pytest.mark.usefixtures("wasmplugin_crd")
@pytest.mark.parametrize("release", list(CASES))
def test_the_charts_ssrf_values_decide(
    kube: kube_mod.Kube, kube_namespace: str, origin: Origin, tmp_path: Path, release: str
) -> None:
    case = CASES[release]
    release = release.split("-", 1)[0]
    ns, helm_home = kube_namespace, tmp_path / "helm"
    webhook = installed.Webhook.make(tmp_path / "webhook")
    values: dict[str, Any] = {
        **webhook.values(),
        "crds": {"enabled": False, "keep": True},  # the fixture's CRDs
        "watchNamespaces": [ns],  # the shared API server has other tests' namespaces
        "operator": {"trustedCA": origin.ca_file.read_text()},
    }
    if case.ssrf:
        values["ssrf"] = case.ssrf
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    args = ["install", release, str(helm_mod.CHART), "-n", ns, "-f", str(tmp_path / "values.yaml")]
    helm_mod.helm(args, kubeconfig=kube.kubeconfig, home=helm_home)
    try:
        op = installed.start_operator(
            kube, ns, f"{release}-meshplug", tmp_path / "operator", webhook=webhook, allow_loopback=False
        )
        try:
            argv = op.proc.argv
            assert [a for a in argv if a.startswith(("--allow-loopback", "--block-cidr"))] == case.flags, argv
            path = f"/{uuid.uuid4().hex}.wasm"
            url = origin.program(path, body=wasm_module(7))
            assert url.startswith("https://localhost:"), url  # 127.0.0.1
            body = {
                "apiVersion": "meshplug.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "plugin"},
                "spec": {"url": url, "dataPlane": "agent", "selector": {"matchLabels": {"app": "none"}}},
            }
            status, out = kube.request("POST", PLUGINS.format(ns=ns), body)
            assert status == 201, out
            condition = _fetched(kube, ns, "plugin")
        finally:
            op.stop()
    finally:
        # its webhooks (failurePolicy Fail) would refuse the next install's plugins once it is gone
        helm_mod.helm(["uninstall", release, "-n", ns], kubeconfig=kube.kubeconfig, home=helm_home)
    assert condition["status"] == case.fetched, condition
    if case.fetched == "False":
        assert condition["reason"] == "Blocked", condition
        assert "127.0.0.1" in condition["message"] and "blocked address" in condition["message"], condition
    assert origin.count(path) == case.requests, "fetched once" if case.requests else "refused before connecting"
