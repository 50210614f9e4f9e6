"""Pytest fixtures for the Kubernetes test bed (helpers: tests/testbed/kube.py). Auto-loaded by tests/conftest.py.

- `kube` (session): etcd + secure kube-apiserver on free ports; `.url`, `.kubeconfig` (admin), `.request()`.
- `kube_controller_manager` (session): adds kube-controller-manager to `kube` (Deployments -> Pods, GC,
  namespace deletion, default ServiceAccounts); request it only when a test needs those controllers.
- `kube_api` (session): a kubernetes-client ApiClient authenticated as admin.
- `kube_namespace` (function): a fresh namespace with its `default` ServiceAccount, deleted afterwards.
- `wasmplugin_crd` (session): crds/wasmplugins.meshplug.io.yaml installed and Established.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from tests.testbed import kube as kube_mod
from tests.testbed import procs

CRD_FILE = procs.REPO_ROOT / "crds" / "wasmplugins.meshplug.io.yaml"
_ns_counter = itertools.count()


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[kube_mod.Kube]:
    workdir = tmp_path_factory.mktemp("kube")
    with kube_mod.control_plane(workdir, logs_dir) as plane:
        yield plane


@pytest.fixture(scope="session")
def kube_controller_manager(kube: kube_mod.Kube, logs_dir: Path) -> procs.Proc:
    return kube_mod.start_controller_manager(kube, logs_dir)


@pytest.fixture(scope="session")
def kube_api(kube: kube_mod.Kube) -> Iterator[kubernetes.client.ApiClient]:
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kube.kubeconfig)
    )
    try:
        yield client
    finally:
        client.close()  # type: ignore[no-untyped-call]


def ensure_namespace(kube: kube_mod.Kube, name: str) -> None:
    """Create namespace ``name`` and its default ServiceAccount (the controller manager may not run)."""
    status, body = kube.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    if status not in (201, 409):
        raise RuntimeError(f"creating namespace {name}: {status} {body}")
    status, body = kube.request("POST", f"/api/v1/namespaces/{name}/serviceaccounts", {"metadata": {"name": "default"}})
    if status not in (201, 409):
        raise RuntimeError(f"creating {name}/default ServiceAccount: {status} {body}")


@pytest.fixture
def kube_namespace(kube: kube_mod.Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    base = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"t{next(_ns_counter)}-{base}".rstrip("-")
    ensure_namespace(kube, name)
    yield name
    kube.request("DELETE", f"/api/v1/namespaces/{name}")


def crd_body() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return body


def install_crd(kube: kube_mod.Kube, body: dict[str, Any], timeout: float = 60.0) -> None:
    """Create (or replace) a CRD and wait until it is Established and served."""
    name = body["metadata"]["name"]
    status, current = kube.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
    if status == 200:
        body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        status, out = kube.request("PUT", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}", body)
    else:
        status, out = kube.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body)
    if status not in (200, 201):
        raise RuntimeError(f"CRD {name} not accepted: {status} {out}")

    def established() -> bool:
        _, crd = kube.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
        if conds.get("Established") != "True":
            return False
        group, version, plural = (
            body["spec"]["group"],
            body["spec"]["versions"][0]["name"],
            body["spec"]["names"]["plural"],
        )
        served, _ = kube.request("GET", f"/apis/{group}/{version}/{plural}")
        return served == 200

    procs.wait_until(established, timeout=timeout, what=f"CRD {name} to be Established and served")


@pytest.fixture(scope="session")
def wasmplugin_crd(kube: kube_mod.Kube) -> str:
    body = crd_body()
    install_crd(kube, body)
    return str(body["metadata"]["name"])


def stand_in_crd(group: str, version: str, kind: str, plural: str) -> dict[str, Any]:
    """A namespaced CRD that stores any `spec` (for kinds whose controllers the test bed does not run)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }


# Istio's EnvoyFilter kind, as a permissive CRD: the test bed has no istiod, and the operator only needs the
# API server to store EnvoyFilters (their Envoy side is checked by tests/integration/test_render_envoy_validate.py)
ENVOYFILTER_CRD = stand_in_crd("networking.istio.io", "v1alpha3", "EnvoyFilter", "envoyfilters")


@pytest.fixture(scope="session")
def envoyfilter_crd(kube: kube_mod.Kube) -> str:
    install_crd(kube, ENVOYFILTER_CRD)
    return str(ENVOYFILTER_CRD["metadata"]["name"])
