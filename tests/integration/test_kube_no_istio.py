"""A cluster without Istio (no EnvoyFilter kind): an istio-plane WasmPlugin says so in its Ready condition, and
deleting WasmPlugins does not hang: cleanup treats the missing kind as nothing to clean.

Its own control plane (etcd + kube-apiserver), because the shared one has the EnvoyFilter CRD installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guests import minimal
from tests.testbed import fixtures_kube, procs
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod

PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"
MODULE = minimal.passthrough()
NS = "no-istio"


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[kube_mod.Kube]:
    """etcd + kube-apiserver with only the WasmPlugin CRD; an operator process watching NS."""
    with kube_mod.control_plane(tmp_path_factory.mktemp("bare-kube"), logs_dir / "bare") as plane:
        fixtures_kube.install_crd(plane, fixtures_kube.crd_body())
        fixtures_kube.ensure_namespace(plane, NS)
        yield plane


@pytest.fixture
def operator(bare: kube_mod.Kube, tmp_path: Path) -> Iterator[Path]:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "m.wasm").write_bytes(MODULE)
    op = operator_mod.start_operator(bare.kubeconfig, tmp_path, namespaces=[NS], extra=[f"--file-root={modules}"])
    try:
        yield modules / "m.wasm"
    finally:
        op.stop()
        print(op.proc.log()[-6000:])


def _ready(kube: kube_mod.Kube, name: str) -> dict[str, Any]:
    _, obj = kube.request("GET", f"{PLUGINS.format(ns=NS)}/{name}")
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})


def _create(kube: kube_mod.Kube, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name}, "spec": spec}
    status, out = kube.request("POST", PLUGINS.format(ns=NS), body)
    assert status == 201, out


def _delete_and_wait(kube: kube_mod.Kube, name: str) -> None:
    status, out = kube.request("DELETE", f"{PLUGINS.format(ns=NS)}/{name}")
    assert status == 200, out
    procs.wait_until(
        lambda: kube.request("GET", f"{PLUGINS.format(ns=NS)}/{name}")[0] == 404,
        timeout=60,
        what=f"{name} deleted (finalizer released)",
    )


def test_istio_plane_without_envoyfilter_kind_reports_it_and_deletes(bare: kube_mod.Kube, operator: Path) -> None:
    status, out = bare.request(
        "POST",
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        {
            "metadata": {"name": "cart"},
            "spec": {
                "selector": {"matchLabels": {"app": "cart"}},
                "template": {
                    "metadata": {"labels": {"app": "cart"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
                },
            },
        },
    )
    assert status == 201, out
    spec = {
        "url": f"file://{operator}",
        "sha256": hashlib.sha256(MODULE).hexdigest(),
        "selector": {"matchLabels": {"app": "cart"}},
    }
    _create(bare, "istio-plane", spec)
    procs.wait_until(
        lambda: _ready(bare, "istio-plane").get("reason") == "EnvoyFilterKindMissing",
        timeout=90,
        interval=0.2,
        what="Ready=False (EnvoyFilterKindMissing)",
    )
    ready = _ready(bare, "istio-plane")
    assert ready["status"] == "False"
    assert "networking.istio.io/v1alpha3 EnvoyFilter" in ready["message"]
    _, events = bare.request("GET", f"/api/v1/namespaces/{NS}/events")
    assert any(e["reason"] == "EnvoyFilterKindMissing" for e in events["items"])

    _delete_and_wait(bare, "istio-plane")
    _, cms = bare.request("GET", f"/api/v1/namespaces/{NS}/configmaps?labelSelector=meshplug.io/plugin=istio-plane")
    assert cms["items"] == []
    _, cart = bare.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/cart")
    assert "sidecar.istio.io/userVolume" not in (cart["spec"]["template"]["metadata"].get("annotations") or {})


def test_agent_plane_plugin_deletes_without_envoyfilter_kind(bare: kube_mod.Kube, operator: Path) -> None:
    spec = {"url": f"file://{operator}", "dataPlane": "agent", "selector": {"matchLabels": {"app": "nothing"}}}
    _create(bare, "agent-plane", spec)
    procs.wait_until(
        lambda: _ready(bare, "agent-plane").get("reason") == "Confirmed", timeout=90, interval=0.2, what="Confirmed"
    )
    _delete_and_wait(bare, "agent-plane")
