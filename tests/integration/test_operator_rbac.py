"""Least privilege: the operator runs under a ServiceAccount whose Roles hold exactly the rules listed in
`meshplug.controller`'s docstring (`rbac_rules()`), delivers a plugin with them, and fails loudly when one is
taken away: the plugin's Ready condition and a Warning Event name the refusal, the log names the permission,
/healthz turns 503 and the `meshplug_operator_healthy` gauge drops to 0; at start it lists what is missing."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from meshplug import controller
from tests.testbed import fixtures_kube, procs
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod

PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"
MODULE = wasmtime.wat2wasm(
    """(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
 (func (export "malloc") (param i32) (result i32) i32.const 1024)
 (func (export "proxy_on_context_create") (param i32 i32))
 (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0))"""
)
SA = "meshplug-operator"


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.M)


def _refused(log: str) -> bool:
    """Whether the operator's log shows an API request refused (403 / Forbidden); the log lines' timestamps are
    dropped first (their milliseconds may read 403)."""
    text = _TIMESTAMP.sub("", log)
    return bool(re.search(r"\b403\b", text)) or "Forbidden" in text


def role(rules: tuple[controller.Rule, ...], scope: str, drop: tuple[str, str] | None) -> list[dict[str, Any]]:
    out = []
    for r in rules:
        if r.scope != scope:
            continue
        verbs = [v for v in r.verbs if drop is None or (r.resource, v) != drop]
        if verbs:
            out.append({"apiGroups": [r.api_group], "resources": [r.resource], "verbs": verbs})
    return out


def put_roles(kube: kube_mod.Kube, ns: str, drop: tuple[str, str] | None = None) -> None:
    rules = controller.rbac_rules()
    for name, scope in (("meshplug-operator", "cluster"), ("meshplug-operator-own", "own")):
        body = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": ns},
            "rules": role(rules, scope, drop),
        }
        status, out = kube.request("PUT", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}", body)
        if status == 404:
            status, out = kube.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", body)
        assert status in (200, 201), out
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": ns}],
        }
        status, out = kube.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", binding)
        assert status in (201, 409), out


@pytest.fixture
def sa_kubeconfig(kube: kube_mod.Kube, kube_namespace: str, tmp_path: Path) -> Path:
    status, out = kube.request(
        "POST", f"/api/v1/namespaces/{kube_namespace}/serviceaccounts", {"metadata": {"name": SA}}
    )
    assert status == 201, out
    put_roles(kube, kube_namespace)
    token = kube.service_account_token(kube_namespace, SA)
    return kube.kubeconfig_for(token, f"system:serviceaccount:{kube_namespace}:{SA}", tmp_path / "sa.kubeconfig")


@pytest.fixture
def started(  # noqa: PLR0917 (pytest fixtures)
    kube: kube_mod.Kube,
    wasmplugin_crd: str,
    envoyfilter_crd: str,
    kube_namespace: str,
    sa_kubeconfig: Path,
    tmp_path: Path,
) -> Iterator[tuple[operator_mod.Operator, Path]]:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "m.wasm").write_bytes(MODULE)
    ops: list[operator_mod.Operator] = []

    def start(name: str, wait_healthy: bool = True) -> operator_mod.Operator:
        op = operator_mod.start_operator(
            sa_kubeconfig,
            tmp_path,
            namespaces=[kube_namespace],
            name=name,
            extra=[f"--file-root={modules}", f"--lease-namespace={kube_namespace}"],
            wait_healthy=wait_healthy,
        )
        ops.append(op)
        return op

    first = start("operator")
    try:
        yield first, modules
        # restarted without the permission: it names what is missing at start and reports unhealthy
        first.stop()
        put_roles(kube, kube_namespace, drop=("deployments", "patch"))
        again = start("operator-restarted", wait_healthy=False)
        procs.wait_until(
            lambda: (
                f"missing RBAC permission: patch deployments.apps in namespace {kube_namespace}" in again.proc.log()
            ),
            timeout=60,
            what="the start-up check to name the missing permission",
        )
        assert not again.healthy()
        assert again.metrics()["meshplug_operator_healthy"] == 0
    finally:
        for op in ops:
            op.stop()
        print(ops[0].proc.log()[-6000:])


def _deployment(kube: kube_mod.Kube, ns: str, name: str) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": "cart"}},
            "template": {
                "metadata": {"labels": {"app": "cart"}},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
            },
        },
    }
    status, out = kube.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body)
    assert status == 201, out


def _ready(kube: kube_mod.Kube, ns: str, name: str) -> dict[str, Any]:
    _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})


def test_exact_rules_suffice_and_a_missing_one_fails_loudly(
    kube: kube_mod.Kube, kube_namespace: str, started: tuple[operator_mod.Operator, Path]
) -> None:
    op, modules = started
    ns = kube_namespace
    _deployment(kube, ns, "cart")
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "hdr"},
        "spec": {
            "url": f"file://{modules / 'm.wasm'}",
            "sha256": hashlib.sha256(MODULE).hexdigest(),
            "selector": {"matchLabels": {"app": "cart"}},
        },
    }
    assert kube.request("POST", PLUGINS.format(ns=ns), body)[0] == 201
    procs.wait_until(
        lambda: _ready(kube, ns, "hdr").get("reason") == "Applied", timeout=90, interval=0.2, what="hdr applied"
    )
    _, cart = kube.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/cart")
    assert "sidecar.istio.io/userVolume" in cart["spec"]["template"]["metadata"]["annotations"]
    assert op.healthy()
    assert not _refused(op.proc.log()), op.proc.log()[-3000:]

    # take one permission away: the next workload cannot be patched
    put_roles(kube, ns, drop=("deployments", "patch"))
    _deployment(kube, ns, "cart-2")
    procs.wait_until(
        lambda: _ready(kube, ns, "hdr").get("reason") == "Forbidden", timeout=90, interval=0.2, what="Forbidden"
    )
    assert 'cannot patch resource "deployments"' in _ready(kube, ns, "hdr")["message"]
    _, events = kube.request("GET", f"/api/v1/namespaces/{ns}/events")
    assert any(e["reason"] == "Forbidden" and e["type"] == "Warning" for e in events["items"])
    procs.wait_until(lambda: not op.healthy(), timeout=30, what="/healthz to turn 503")
    assert "missing RBAC permission while reconciling" in op.proc.log()
    assert op.metrics()["meshplug_operator_healthy"] == 0


# --- cluster-wide install: a ClusterRole (+ the Lease Role in the operator's own namespace) ------------------

OWN_NS = "meshplug-system"


def _put(kube: kube_mod.Kube, collection: str, body: dict[str, Any]) -> None:
    status, out = kube.request("PUT", f"{collection}/{body['metadata']['name']}", body)
    if status == 404:
        status, out = kube.request("POST", collection, body)
    assert status in (200, 201), out


def put_cluster_roles(kube: kube_mod.Kube, drop: tuple[str, str] | None = None) -> None:
    """ClusterRole + ClusterRoleBinding with the ``cluster`` rules, Role + RoleBinding in OWN_NS with ``own``."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    subject = [{"kind": "ServiceAccount", "name": SA, "namespace": OWN_NS}]
    rules = controller.rbac_rules()
    _put(
        kube,
        f"{rbac}/clusterroles",
        {"metadata": {"name": "meshplug-operator"}, "rules": role(rules, "cluster", drop)},
    )
    _put(
        kube,
        f"{rbac}/clusterrolebindings",
        {
            "metadata": {"name": "meshplug-operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "meshplug-operator"},
            "subjects": subject,
        },
    )
    _put(
        kube,
        f"{rbac}/namespaces/{OWN_NS}/roles",
        {"metadata": {"name": "meshplug-operator", "namespace": OWN_NS}, "rules": role(rules, "own", drop)},
    )
    _put(
        kube,
        f"{rbac}/namespaces/{OWN_NS}/rolebindings",
        {
            "metadata": {"name": "meshplug-operator", "namespace": OWN_NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "meshplug-operator"},
            "subjects": subject,
        },
    )


@pytest.fixture(scope="module")
def cluster_plane(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[kube_mod.Kube]:
    """Its own apiserver: a cluster-wide operator must not see the other tests' namespaces."""
    with kube_mod.control_plane(tmp_path_factory.mktemp("rbac-cluster"), logs_dir / "rbac-cluster") as plane:
        fixtures_kube.install_crd(plane, fixtures_kube.crd_body())
        fixtures_kube.install_crd(plane, fixtures_kube.ENVOYFILTER_CRD)
        for ns in (OWN_NS, "shop-a", "shop-b"):
            fixtures_kube.ensure_namespace(plane, ns)
        yield plane


def test_cluster_role_suffices_cluster_wide_and_a_missing_rule_fails_loudly(
    cluster_plane: kube_mod.Kube, tmp_path: Path
) -> None:
    kube = cluster_plane
    status, out = kube.request("POST", f"/api/v1/namespaces/{OWN_NS}/serviceaccounts", {"metadata": {"name": SA}})
    assert status == 201, out
    put_cluster_roles(kube)
    token = kube.service_account_token(OWN_NS, SA)
    kubeconfig = kube.kubeconfig_for(token, f"system:serviceaccount:{OWN_NS}:{SA}", tmp_path / "sa.kubeconfig")
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "m.wasm").write_bytes(MODULE)
    ops: list[operator_mod.Operator] = []

    def start(name: str, wait_healthy: bool = True) -> operator_mod.Operator:
        extra = [f"--file-root={modules}", f"--lease-namespace={OWN_NS}"]
        ops.append(operator_mod.start_operator(kubeconfig, tmp_path, name=name, extra=extra, wait_healthy=wait_healthy))
        return ops[-1]

    try:
        op = start("operator-clusterwide")  # no --namespace: every namespace
        for ns in ("shop-a", "shop-b"):
            _deployment(kube, ns, "cart")
            body = {
                "apiVersion": "meshplug.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "hdr"},
                "spec": {"url": f"file://{modules / 'm.wasm'}", "selector": {"matchLabels": {"app": "cart"}}},
            }
            assert kube.request("POST", PLUGINS.format(ns=ns), body)[0] == 201
        for ns in ("shop-a", "shop-b"):
            procs.wait_until(
                lambda ns=ns: _ready(kube, ns, "hdr").get("reason") == "Applied",  # type: ignore[misc]
                timeout=90,
                interval=0.2,
                what=f"{ns}/hdr applied",
            )
            _, cart = kube.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/cart")
            assert "sidecar.istio.io/userVolume" in cart["spec"]["template"]["metadata"]["annotations"]
        _, lease = kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{OWN_NS}/leases/meshplug-operator")
        assert lease["spec"]["holderIdentity"]
        assert op.healthy()
        assert not _refused(op.proc.log()), op.proc.log()[-3000:]

        # one verb fewer in the ClusterRole: the next workload cannot be patched, loudly
        put_cluster_roles(kube, drop=("deployments", "patch"))
        _deployment(kube, "shop-b", "cart-2")
        procs.wait_until(
            lambda: _ready(kube, "shop-b", "hdr").get("reason") == "Forbidden", timeout=90, interval=0.2, what="403"
        )
        assert 'cannot patch resource "deployments"' in _ready(kube, "shop-b", "hdr")["message"]
        procs.wait_until(lambda: not op.healthy(), timeout=30, what="/healthz to turn 503")

        # restarted without it: the start-up check names the cluster-wide permission
        op.stop()
        again = start("operator-clusterwide-restarted", wait_healthy=False)
        procs.wait_until(
            lambda: "missing RBAC permission: patch deployments.apps cluster-wide" in again.proc.log(),
            timeout=60,
            what="the start-up check to name the missing permission",
        )
        assert not again.healthy()
    finally:
        for started_op in ops:
            started_op.stop()
        print(ops[0].proc.log()[-6000:] if ops else "")
