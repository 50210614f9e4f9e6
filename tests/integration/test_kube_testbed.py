"""The Kubernetes test bed itself: TLS + token auth, RBAC enforced for ServiceAccounts, TokenRequest, and the
controller manager turning a Deployment into Pods (which stay Pending: no kubelet or scheduler)."""

from __future__ import annotations

import pytest

from tests.testbed import kube as kube_mod
from tests.testbed import procs


def test_anonymous_and_wrong_tokens_are_refused(kube: kube_mod.Kube) -> None:
    assert kube.request("GET", "/api/v1/namespaces")[0] == 200
    assert kube.request("GET", "/api/v1/namespaces", token="not-a-token")[0] == 401


@pytest.mark.parametrize(
    ("verb", "path", "allowed"),
    [
        ("GET", "/api/v1/namespaces/{ns}/configmaps", True),
        ("GET", "/api/v1/namespaces/{ns}/secrets", False),
        ("GET", "/api/v1/namespaces/kube-system/configmaps", False),
    ],
)
def test_rbac_applies_to_service_accounts(
    kube: kube_mod.Kube, kube_namespace: str, verb: str, path: str, allowed: bool
) -> None:
    ns = kube_namespace
    role = {
        "metadata": {"name": "cm-reader"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    }
    binding = {
        "metadata": {"name": "cm-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    }
    assert kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "reader"}})[0] == 201
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    assert kube.request("POST", f"{rbac}/roles", role)[0] == 201
    assert kube.request("POST", f"{rbac}/rolebindings", binding)[0] == 201
    token = kube.service_account_token(ns, "reader")
    status, body = kube.request(verb, path.format(ns=ns), token=token)
    assert (status == 200) is allowed, body
    if not allowed:
        assert status == 403 and body["reason"] == "Forbidden"


def test_controller_manager_makes_pods_of_a_deployment(
    kube: kube_mod.Kube, kube_controller_manager: procs.Proc, kube_namespace: str
) -> None:
    ns = kube_namespace
    labels = {"app": "web"}
    deployment = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "registry.example/web:v1"}]},
            },
        },
    }
    assert kube.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment)[0] == 201

    def pods() -> list[dict[str, object]]:
        _, out = kube.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector=app%3Dweb")
        return list(out["items"])

    procs.wait_until(lambda: len(pods()) == 2, timeout=90, interval=0.2, what="2 pods of Deployment web")
    owners = {p["metadata"]["ownerReferences"][0]["kind"] for p in pods()}  # type: ignore[index]
    assert owners == {"ReplicaSet"}
    assert {p["status"]["phase"] for p in pods()} == {"Pending"}  # type: ignore[index]
