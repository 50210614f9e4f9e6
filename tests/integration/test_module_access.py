"""Which pod may fetch which module, decided as a replica that pushed nothing decides it (a standby, a restarted
operator): the real API server's TokenReview for the pod's bound ServiceAccount token, then the agent-plane
WasmPlugins selecting that pod and the module each delivers (fetched through the replica's own fetcher).

Allowed: a token bound to a selected pod, for the module of a plugin selecting it. Refused: another module (403),
a pod no agent plugin selects (403), a token for another audience or none at all (401), the token of a deleted pod
(403 once confirmed: the pod is gone; 401 once the API server no longer confirms it). A signed image's layer blob,
which its pods' agents check the signature against, is admitted for those pods."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from meshplug import errors, fetch, spec
from meshplug.controller import access, apply, identity, signing
from tests.guests import minimal
from tests.integration.test_fetch_oci import fetcher_for
from tests.testbed import kube as kube_mod
from tests.testbed.fixtures_cosign import CosignKit
from tests.testbed.registry import Registry

MODULE = minimal.passthrough('(data (i32.const 2048) "access")')
OTHER = minimal.passthrough('(data (i32.const 2048) "other")')


def _token(kube: kube_mod.Kube, ns: str, pod: dict[str, Any], audience: str = "meshplug") -> str:
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience],
            "expirationSeconds": 600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
            },
        },
    }
    status, out = kube.request("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/default/token", request)
    assert status == 201, out
    return str(out["status"]["token"])


def _pod(kube: kube_mod.Kube, ns: str, name: str, labels: dict[str, str]) -> dict[str, Any]:
    body = {"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}}
    status, out = kube.request("POST", f"/api/v1/namespaces/{ns}/pods", body)
    assert status == 201, out
    return dict(out)


@pytest.fixture
def check(kube: kube_mod.Kube, kube_api: Any, wasmplugin_crd: str, kube_namespace: str, tmp_path: Path) -> Any:
    (tmp_path / "m.wasm").write_bytes(MODULE)
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "p"},
        "spec": {
            "url": f"file://{tmp_path / 'm.wasm'}",
            "dataPlane": "agent",
            "selector": {"matchLabels": {"app": "web"}},
        },
    }
    status, out = kube.request("POST", f"/apis/meshplug.io/v1alpha1/namespaces/{kube_namespace}/wasmplugins", body)
    assert status == 201, out
    writer = apply.Writer(kube_api)
    fetcher = fetch.Fetcher(fetch.FetchOptions(file_roots=(tmp_path,), cache_dir=tmp_path / "cache"))

    def fetch_module(plugin: spec.PluginSpec) -> fetch.Artifact:
        return fetcher.fetch(plugin.url, sha256=plugin.sha256)

    checker = access.ModuleAccess(
        identity.Reviewer(writer, ("meshplug",)),
        writer,
        cache_has=lambda sha256: fetcher.cache.blob_path(sha256).exists(),
        fetch_module=fetch_module,
    )
    yield checker
    fetcher.close()


def _refused(checker: access.ModuleAccess, token: str, sha256: str, reason: str) -> str:
    with pytest.raises(errors.ProtocolError) as info:
        checker.check(token, sha256)
    assert info.value.reason == reason, info.value.message
    return info.value.message


def test_who_may_fetch_what(kube: kube_mod.Kube, kube_namespace: str, check: access.ModuleAccess) -> None:
    ns, sha = kube_namespace, hashlib.sha256(MODULE).hexdigest()
    web = _pod(kube, ns, "web-1", {"app": "web"})
    token = _token(kube, ns, web)
    check.check(token, sha)  # fetched through this replica's fetcher: now in its cache, ready to serve
    assert "runs no plugin" in _refused(check, token, hashlib.sha256(OTHER).hexdigest(), "forbidden")
    db = _pod(kube, ns, "db-1", {"app": "db"})
    _refused(check, _token(kube, ns, db), sha, "forbidden")
    _refused(check, _token(kube, ns, web, audience="someone-else"), sha, "unauthorized")
    _refused(check, "not-a-token", sha, "unauthorized")


def test_a_deleted_pods_token_is_refused(kube: kube_mod.Kube, kube_namespace: str, check: access.ModuleAccess) -> None:
    ns, sha = kube_namespace, hashlib.sha256(MODULE).hexdigest()
    pod = _pod(kube, ns, "web-2", {"app": "web"})
    token = _token(kube, ns, pod)
    check.check(token, sha)  # confirmed by the API server: the replica's reviewer caches the pod identity
    assert kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/web-2?gracePeriodSeconds=0")[0] == 200
    assert "does not exist (any more)" in _refused(check, token, sha, "forbidden")


def test_a_never_confirmed_token_of_a_deleted_pod_is_refused(
    kube: kube_mod.Kube, kube_namespace: str, check: access.ModuleAccess
) -> None:
    """The API server checks a bound token's pod in its own pod cache first (its informer), which learns of a
    deletion a moment after the DELETE returns: until then it still confirms the token and the replica's own
    lookup of the pod refuses it (403); afterwards the API server does (401). Either way it is refused."""
    ns, sha = kube_namespace, hashlib.sha256(MODULE).hexdigest()
    pod = _pod(kube, ns, "web-3", {"app": "web"})
    token = _token(kube, ns, pod)
    assert kube.request("DELETE", f"/api/v1/namespaces/{ns}/pods/web-3?gracePeriodSeconds=0")[0] == 200
    with pytest.raises(errors.ProtocolError) as info:
        check.check(token, sha)
    reason, message = info.value.reason, info.value.message
    assert (reason, message) == ("forbidden", f"pod {ns}/web-3 does not exist (any more)") or (
        reason == "unauthorized" and message.startswith("token not accepted")
    ), (reason, message)


@pytest.mark.usefixtures("wasmplugin_crd")
def test_a_signed_images_layer_blob_is_served_to_its_pods_only(  # noqa: PLR0917 - pytest fixtures
    kube: kube_mod.Kube,
    kube_api: Any,
    kube_namespace: str,
    registries: dict[str, Registry],
    cosign: CosignKit,
    tmp_path: Path,
) -> None:
    """A plugin with verificationKey whose module is in an OCI image's tar.gz layer: its pods' agents fetch that
    layer blob too (they check it against the signature), so a replica that pushed nothing admits it -- and only
    it: the image's other layer is refused like any other blob."""
    registry, ns = registries["plain"], kube_namespace
    signed = minimal.passthrough('(data (i32.const 2048) "signed layer")')
    digest = registry.push_layout("oci-image", "access/signed", "v1", signed)
    cosign.cosign.sign(registry, f"access/signed@{digest}", cosign.signer)
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "signed"},
        "spec": {
            "url": registry.url("access/signed", "v1"),
            "dataPlane": "agent",
            "selector": {"matchLabels": {"app": "signed"}},
            "verificationKey": cosign.signer.pub.read_text(),
        },
    }
    status, out = kube.request("POST", f"/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins", body)
    assert status == 201, out
    writer = apply.Writer(kube_api)
    fetcher = fetcher_for(registry, tmp_path)
    policy = signing.SignaturePolicy()

    def fetch_module(plugin: spec.PluginSpec) -> fetch.Artifact:
        return fetcher.fetch(plugin.url, sha256=plugin.sha256, keys=policy.keys_for(plugin))

    checker = access.ModuleAccess(
        identity.Reviewer(writer, ("meshplug",)),
        writer,
        cache_has=lambda sha256: fetcher.cache.blob_path(sha256).exists(),
        fetch_module=fetch_module,
    )
    try:
        token = _token(kube, ns, _pod(kube, ns, "signed-1", {"app": "signed"}))
        evidence = fetch_module(spec.parse({**body, "metadata": {"name": "signed", "namespace": ns}})).signature
        assert evidence is not None
        layers = [layer["digest"] for layer in json.loads(evidence.manifests[0])["layers"]]
        assert layers[-1] == evidence.layer  # the module's layer, a tar.gz: not the module's own sha256
        checker.check(token, hashlib.sha256(signed).hexdigest())
        checker.check(token, evidence.layer.removeprefix("sha256:"))
        assert fetcher.cache.blob_path(evidence.layer.removeprefix("sha256:")).exists()  # what the server serves
        assert "runs no plugin" in _refused(checker, token, layers[0].removeprefix("sha256:"), "forbidden")
    finally:
        fetcher.close()
