"""Real Istio WasmPlugin (and TrafficExtension) manifests, ported by changing the apiVersion, on the real istiod +
istio-agent + Envoy.

Each case below has the shape (the fields, their combination and meaning) of a manifest Istio itself publishes:
the examples of the WasmPlugin API reference (istio/api extensions/v1alpha1/wasm.proto), the istio.io Wasm tasks,
Istio's own integration and validation test data (tests/integration/telemetry/api/testdata,
pkg/config/validation/testdata/crds, pkg/test/datasets/validation). The values are the test bed's: a module the
test bed builds (header_rules, env_vars) whose effect a request shows, sources the test bed runs (TLS registries
with and without Basic auth, an HTTPS origin, a file inside the proxy), and each case's own header. What is kept is
what a user ports: every field and how it combines. Each manifest is

1. applied as a ``meshplug.io/v1alpha1`` WasmPlugin with strict field validation (``kubectl apply --validate=strict``:
   an unknown or misspelled field is an error), so the CRD takes Istio's whole field set (the deprecated singular
   ``targetRef`` and ``verificationKey`` included);
2. delivered on the real istiod (the default, native route), and proven by a request through the proxy it selects,
   with Istio's semantics: ``file://`` is a path inside the proxy (passed through, reported unverified), the pull
   secret is the plugin namespace's, ``vmConfig.env`` HOST copies the proxy's own variable, ``priority`` orders a
   phase, a gateway is a CLIENT for ``match``, ``:latest`` means Always and Always pulls again when the resource
   changes (only then).
Istio 1.30's TrafficExtension examples (examples/istio/trafficextensions.yaml: wasm and inline Lua) go the same way.
Where meshplug does better than Istio the test says so: a module that cannot be fetched is never sent to a proxy
(Istio's agent would serve a deny-all filter instead), the status names the cause and traffic is untouched.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.corpus import modules as corpus
from tests.testbed import istio, istiopod, procs
from tests.testbed.mesh_operator import MeshOperator
from tests.testbed.origin import Origin
from tests.testbed.registry import Registry

NS = "ported"
HEADER_RULES = corpus.module("rust/header_rules").path.read_bytes()
ENV_VARS = corpus.module("c/env_vars").path.read_bytes()
SHA = hashlib.sha256(HEADER_RULES).hexdigest()
PROXY_FILE = "/var/local/filters/openid.wasm"  # the test bed's proxies see only /var/local of their pod's own
PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"
TE_EXAMPLES = procs.REPO_ROOT / "examples" / "istio" / "trafficextensions.yaml"


def adds(header: str) -> dict[str, Any]:
    """header_rules' configuration adding a response header (stands in for each manifest's own plugin config)."""
    return {"response": {"add": {header: "1"}}}


@dataclass
class Bed:
    op: MeshOperator
    sidecar: istiopod.Pod  # labels app: b; its proxy's environment has TARGET
    gateway: istiopod.Pod  # labels istio: ingressgateway; also a Gateway API Gateway "gw"'s pod
    sources: dict[str, str]  # placeholder -> value in the manifests
    registry: Registry  # the public (TLS) one


@pytest.fixture(scope="module")
def bed(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, registries: dict[str, Registry], origin: Origin
) -> Iterator[Bed]:
    istio_mesh.namespace(NS)
    private, public = registries["basic"], registries["tls"]
    for registry in (private, public):
        registry.push_layout("oci-image", "openid-connect/openid", "latest", HEADER_RULES)
        registry.push_layout("oci-image", "acl-check/acl", "latest", HEADER_RULES)
        registry.push_layout("oci-image", "check-header", "latest", HEADER_RULES)
        registry.push_layout("oci-image", "env/env", "1.0", ENV_VARS)
    for name in ("private-registry-pull-secret", "reg-cred"):
        secret = json.loads(private.pull_secret())
        secret["metadata"] = {"name": name, "namespace": NS}
        istio_mesh.apply(secret)
    origin.program("/filters/openid.wasm", body=HEADER_RULES)
    origin.program("/filters/env.wasm", body=ENV_VARS)
    sidecar = istio_mesh.sidecar(NS, "b-0", {"app": "b"}, env={"TARGET": "from-the-proxy"})
    gateway = istio_mesh.ingress(NS, "gw", gateway_api=True, selector={"istio": "ingressgateway"})
    (gateway.net.varlocal / "filters").mkdir(parents=True, exist_ok=True)
    (gateway.net.varlocal / "filters" / "openid.wasm").write_bytes(HEADER_RULES)
    sources = {
        "private": private.host,
        "public": public.host,
        "origin": origin.url("/filters").rstrip("/"),
    }
    yield Bed(mesh_operator, sidecar, gateway, sources, public)
    for pod in (sidecar, gateway):
        pod.stop()
        istio_mesh.pods.remove(pod)


def strict_apply(bed: Bed, name: str, spec: dict[str, Any], kind: str = "WasmPlugin") -> None:
    """Server-side apply with strict field validation (what ``kubectl apply --validate=strict`` sends)."""
    body = {"apiVersion": "meshplug.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": NS}}
    plural = "wasmplugins" if kind == "WasmPlugin" else "trafficextensions"
    path = f"/apis/meshplug.io/v1alpha1/namespaces/{NS}/{plural}/{name}?fieldManager=kubectl&fieldValidation=Strict"
    status, out = bed.op.mesh.kube.request(
        "PATCH", path, {**body, "spec": spec}, content_type="application/apply-patch+yaml"
    )
    assert status in (200, 201), f"{name}: {status} {out}"


def fill(value: Any, sources: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: fill(v, sources) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, sources) for v in value]
    if isinstance(value, str):
        for key, sub in sources.items():
            value = value.replace("{" + key + "}", sub)
    return value


INGRESS = {"matchLabels": {"istio": "ingressgateway"}}
APP_B = {"matchLabels": {"app": "b"}}
GATEWAY_REF = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}

# (name, where its shape comes from, spec, the pod it reaches, response headers the request shows)
CASES: list[tuple[str, str, dict[str, Any], str, dict[str, str]]] = [
    (
        "openid-file",
        "wasm.proto example 1; validation testdata wasm-valid 'full': file:// inside the proxy, sha256, AUTHN",
        {
            "selector": INGRESS,
            "url": f"file://{PROXY_FILE}",
            "sha256": SHA,
            "phase": "AUTHN",
            "pluginConfig": adds("x-openid-file"),
        },
        "gateway",
        {"x-openid-file": "1"},
    ),
    (
        "openid-oci",
        "wasm.proto example 2; datasets extensions-v1alpha1-WasmPlugin: private OCI :latest, IfNotPresent, pull secret",
        {
            "selector": INGRESS,
            "url": "oci://{private}/openid-connect/openid:latest",
            "imagePullPolicy": "IfNotPresent",
            "imagePullSecret": "private-registry-pull-secret",
            "phase": "AUTHN",
            "pluginConfig": adds("x-openid-oci"),
        },
        "gateway",
        {"x-openid-oci": "1"},
    ),
    (
        "env-oci",
        "wasm.proto example 3: vmConfig.env, one HOST (the proxy's own variable) and one INLINE",
        {
            "selector": APP_B,
            "url": "oci://{private}/env/env:1.0",
            "imagePullSecret": "private-registry-pull-secret",
            "phase": "AUTHN",
            "vmConfig": {
                "env": [{"name": "TARGET", "valueFrom": "HOST"}, {"name": "GREETING", "value": "cluster.local"}]
            },
        },
        "sidecar",
        {"x-env-target": "from-the-proxy", "x-env-greeting": "cluster.local"},
    ),
    (
        "openid-https",
        "wasm.proto example 4: an https url, imagePullPolicy Always, HOST env",
        {
            "selector": APP_B,
            "url": "{origin}/openid.wasm",
            "imagePullPolicy": "Always",
            "phase": "AUTHN",
            "pluginConfig": adds("x-openid-https"),
            "vmConfig": {"env": [{"name": "POD_NAME", "valueFrom": "HOST"}]},
        },
        "sidecar",
        {"x-openid-https": "1"},
    ),
    (
        "acl-check",
        "wasm.proto AUTHZ example: priority 1000, Always, pull secret",
        {
            "selector": INGRESS,
            "url": "oci://{private}/acl-check/acl:latest",
            "imagePullPolicy": "Always",
            "imagePullSecret": "private-registry-pull-secret",
            "phase": "AUTHZ",
            "priority": 1000,
            "pluginConfig": adds("x-acl-check"),
        },
        "gateway",
        {"x-acl-check": "1"},
    ),
    (
        "check-header",
        "wasm.proto AUTHZ example: priority 10 (after acl-check in the same phase)",
        {
            "selector": INGRESS,
            "url": "oci://{private}/check-header:latest",
            "imagePullPolicy": "IfNotPresent",
            "imagePullSecret": "private-registry-pull-secret",
            "phase": "AUTHZ",
            "priority": 10,
            "pluginConfig": adds("x-check-header"),
        },
        "gateway",
        {"x-check-header": "1"},
    ),
    (
        "wasm-filter",
        "integration testdata wasm-filter.yaml: STATS, selector by app, pull secret reg-cred, Always",
        {
            "phase": "STATS",
            "selector": APP_B,
            "url": "oci://{private}/openid-connect/openid:latest",
            "imagePullSecret": "reg-cred",
            "imagePullPolicy": "Always",
            "pluginConfig": adds("x-wasm-filter"),
        },
        "sidecar",
        {"x-wasm-filter": "1"},
    ),
    (
        "gateway-wasm-filter",
        "integration testdata gateway-wasm-filter.yaml: STATS, the deprecated singular targetRef to a Gateway",
        {
            "phase": "STATS",
            "targetRef": GATEWAY_REF,
            "url": "oci://{private}/openid-connect/openid:latest",
            "imagePullSecret": "reg-cred",
            "pluginConfig": adds("x-gateway-wasm-filter"),
        },
        "gateway",
        {"x-gateway-wasm-filter": "1"},
    ),
    (
        "attributegen",
        "integration testdata attributegen.yaml: STATS, nested pluginConfig, anonymous registry",
        {
            "phase": "STATS",
            "selector": APP_B,
            "url": "oci://{public}/openid-connect/openid:latest",
            "pluginConfig": {"response": {"add": {"x-attributegen": "1"}}, "request": {"remove": ["x-a", "x-b"]}},
        },
        "sidecar",
        {"x-attributegen": "1"},
    ),
    (
        "env-forms",
        "validation testdata wasm-valid 'env' and 'sha256-empty': http(s) url, HOST, INLINE and default valueFrom",
        {
            "selector": APP_B,
            "url": "{origin}/env.wasm",
            "vmConfig": {
                "env": [
                    {"name": "TARGET", "valueFrom": "HOST"},
                    {"name": "GREETING", "valueFrom": "INLINE", "value": "g2"},
                    {"name": "OTHER", "value": "o3"},
                ]
            },
        },
        "sidecar",
        {"x-env-target": "from-the-proxy", "x-env-greeting": "g2"},
    ),
    (
        "client-on-gateway",
        "istio.io match example (mode + ports): a gateway's listeners are CLIENT for match",
        {
            "selector": INGRESS,
            "url": "oci://{public}/openid-connect/openid:latest",
            "match": [{"mode": "CLIENT", "ports": [{"number": istiopod.GATEWAY_PORT}]}],
            "pluginConfig": adds("x-client-on-gateway"),
        },
        "gateway",
        {"x-client-on-gateway": "1"},
    ),
]


@pytest.mark.parametrize(("name", "source", "spec", "target", "headers"), CASES, ids=[c[0] for c in CASES])
def test_ported_manifest_behaves_as_in_istio(  # noqa: PLR0917 (pytest parameters)
    bed: Bed, name: str, source: str, spec: dict[str, Any], target: str, headers: dict[str, str]
) -> None:
    del source
    strict_apply(bed, name, fill(spec, bed.sources))
    obj = bed.op.wait(NS, name, reason="Loaded", timeout=120)
    pod = bed.sidecar if target == "sidecar" else bed.gateway
    assert obj["status"]["loadedPods"] == [pod.name]
    response = istio.poll(
        lambda: pod.request("/"),
        lambda r: r.status == 200 and all(r.headers.get(k) == v for k, v in headers.items()),
        f"{name}: {headers} in the response of {pod.proxy_id}",
    )
    assert response.status == 200
    if spec["url"].startswith("file://"):  # Istio's meaning: the proxy's own file, passed through unread
        conds = {c["type"]: (c["status"], c["reason"]) for c in obj["status"]["conditions"]}
        assert conds["Fetched"] == ("Unknown", "InProxy") and conds["Validated"] == ("Unknown", "NotVerified")
    bed.op.delete(NS, name)  # each manifest on its own (env-oci and env-forms set the same headers)


def test_priority_orders_a_phase_on_istiod(bed: Bed) -> None:
    """acl-check (priority 1000) runs before check-header (10), both AUTHZ, in what istiod sends the gateway."""
    for name, _, spec, _, _ in CASES:
        if name in ("acl-check", "check-header"):
            strict_apply(bed, name, fill(spec, bed.sources))
            bed.op.wait(NS, name, reason="Loaded", timeout=120)
    (chain, *_) = bed.op.mesh.istiod.http_filters(bed.gateway.proxy_id, istiopod.GATEWAY_PORT)
    prefix = f"extensions.istio.io/trafficextension/{NS}."
    # Istio's WasmPlugins as istiod >= 1.30 names them: translated into TrafficExtensions, with a suffix
    ours = [f.removeprefix(prefix).removesuffix("~istio-translated-wasmplugin") for f in chain if f.startswith(prefix)]
    assert ours.index("acl-check") < ours.index("check-header"), chain


def test_priority_ties_go_by_creation_time_then_name_on_istiod(bed: Bed) -> None:
    """Istio's order for one phase and no priority: the older resource first, whatever the names (tie-z is made a
    second before tie-a: creation times have a one-second grain). Both meshplug kinds share that order."""
    url, sha = bed.op.module_url(HEADER_RULES, "header_rules.wasm")
    wasm = {"url": url, "sha256": sha, "pluginConfig": adds("x-tie")}
    strict_apply(bed, "tie-z", {"selector": APP_B, "phase": "STATS", **wasm})
    first = bed.op.wait(NS, "tie-z", reason="Loaded")
    procs.wait_until(  # the next one is made in a later second
        lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > first["metadata"]["creationTimestamp"],
        timeout=5,
        what="a later second",
    )
    strict_apply(bed, "tie-a", {"selector": APP_B, "phase": "STATS", "wasm": wasm}, kind="TrafficExtension")
    bed.op.wait(NS, "tie-a", reason="Loaded", kind="TrafficExtension")
    (chain, *_) = bed.op.mesh.istiod.http_filters(bed.sidecar.proxy_id, istiopod.INBOUND_PORT)
    prefix = f"extensions.istio.io/trafficextension/{NS}."
    ours = [f.removeprefix(prefix).removesuffix("~istio-translated-wasmplugin") for f in chain if f.startswith(prefix)]
    assert ours.index("tie-z") < ours.index("tie-a"), chain
    bed.op.delete(NS, "tie-z")
    bed.op.delete(NS, "tie-a", kind="TrafficExtension")


def test_server_match_does_not_reach_a_gateway(bed: Bed) -> None:
    """Istio: a gateway's listeners count as CLIENT, so mode SERVER never applies there; nothing to wait for."""
    spec = {
        "selector": INGRESS,
        "url": f"oci://{bed.sources['public']}/openid-connect/openid:latest",
        "match": [{"mode": "SERVER"}],
        "pluginConfig": adds("x-server-on-gateway"),
    }
    strict_apply(bed, "server-on-gateway", spec)
    obj = bed.op.wait(NS, "server-on-gateway", status="False", reason="NoProxies")
    assert obj["status"]["pods"]["total"] == 0
    chain = bed.op.mesh.istiod.http_filters(bed.gateway.proxy_id, istiopod.GATEWAY_PORT)
    assert not [f for c in chain for f in c if f.endswith(".server-on-gateway")]
    assert "x-server-on-gateway" not in bed.gateway.request("/").headers


@pytest.mark.parametrize(
    ("name", "spec", "reason"),
    [
        # integration testdata bad-filter.yaml: no selector, an unreachable https url with a sha256. Istio's agent
        # would serve every workload of the namespace a deny-all filter; meshplug never sends it and says why
        ("bad-filter-config", {"url": "https://bad-url.wasm", "sha256": SHA}, "DownloadFailure"),
        # validation testdata wasm-valid 'url-without-schema': "test" is oci://test (a registry that is not there)
        ("url-without-schema", {"url": "test"}, None),
    ],
)
def test_a_module_that_cannot_be_fetched_is_never_sent(
    bed: Bed, name: str, spec: dict[str, Any], reason: str | None
) -> None:
    strict_apply(bed, name, spec)
    obj = istio.poll(
        lambda: bed.op.get(NS, name),
        lambda o: any(
            c["type"] == "Fetched" and c["status"] == "False" for c in (o or {}).get("status", {}).get("conditions", [])
        ),
        f"{name}: Fetched=False",
        timeout=90,
    )
    fetched = next(c for c in obj["status"]["conditions"] if c["type"] == "Fetched")
    if reason is not None:
        assert fetched["reason"] == reason
    for plural in ("wasmplugins", "trafficextensions"):  # nothing of Istio's rendered
        path = f"/apis/extensions.istio.io/v1alpha1/namespaces/{NS}/{plural}/{name}"
        assert bed.op.mesh.kube.request("GET", path)[0] == 404
    assert bed.sidecar.request("/").status == 200  # traffic untouched
    bed.op.delete(NS, name)


def test_verification_key_is_accepted_and_stored(bed: Bed) -> None:
    """The field Istio's manifests carry (refused by the CRD before); the signature check is meshplug's own."""
    key = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
    spec = {
        "selector": APP_B,
        "url": f"oci://{bed.sources['public']}/openid-connect/openid:latest",
        "verificationKey": key,
    }
    strict_apply(bed, "signed", spec)
    stored = bed.op.get(NS, "signed")
    assert stored is not None and stored["spec"]["verificationKey"] == key
    obj = istio.poll(
        lambda: bed.op.get(NS, "signed"),
        lambda o: any(
            c["type"] == "Ready" and c["status"] == "False" for c in (o or {}).get("status", {}).get("conditions", [])
        ),
        "signed: Ready=False (the module carries no signature under that key)",
        timeout=90,
    )
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] in ("SignatureInvalid", "SignatureMissing", "InvalidKey"), ready
    bed.op.delete(NS, "signed")


def test_istios_traffic_extension_examples_behave_as_in_istio(bed: Bed) -> None:
    """Istio 1.30's TrafficExtension examples (wasm and inline Lua; examples/istio/trafficextensions.yaml, as they ran
    on a real istiod), ported by changing the apiVersion: strictly accepted, rendered as Istio's own
    TrafficExtension, and a request through the sidecar shows both (request and response headers)."""
    docs = [d for d in yaml.safe_load_all(TE_EXAMPLES.read_text()) if d]
    assert [d["kind"] for d in docs] == ["TrafficExtension", "TrafficExtension"]
    url, sha = bed.op.module_url(HEADER_RULES, "header_rules.wasm")  # the example's module, built by this bed
    for doc in docs:
        spec = {**doc["spec"], "selector": APP_B}
        if "wasm" in spec:
            spec["wasm"] = {**spec["wasm"], "url": url, "sha256": sha}
        strict_apply(bed, doc["metadata"]["name"], spec, kind="TrafficExtension")
    for doc in docs:
        obj = bed.op.wait(NS, doc["metadata"]["name"], reason="Loaded", kind="TrafficExtension")
        assert obj["status"]["loadedPods"] == [bed.sidecar.name]
        _, rendered = bed.op.mesh.kube.request(
            "GET", f"/apis/extensions.istio.io/v1alpha1/namespaces/{NS}/trafficextensions/{doc['metadata']['name']}"
        )
        assert {k: rendered["spec"][k] for k in ("phase", "match")} == {k: doc["spec"][k] for k in ("phase", "match")}
    response = istio.poll(
        lambda: bed.sidecar.request("/"),
        lambda r: (
            r.status == 200
            and r.headers.get("x-te-wasm") == "header_rules-via-trafficextension"
            and r.headers.get("x-lua") == "hello-from-lua"
        ),
        "both TrafficExtensions in the response of the sidecar",
    )
    assert {"x-te-wasm": "yes", "x-lua-req": "1"}.items() <= response.echoed().items()
    for doc in docs:
        bed.op.delete(NS, doc["metadata"]["name"], kind="TrafficExtension")


def test_always_pulls_again_when_the_resource_changes_and_only_then(bed: Bed) -> None:
    """Istio's pull policy: a ``:latest`` tag defaults to Always, and Always pulls again when the resource changes,
    not on every look at it: a new image under the tag is picked up at the next spec change only."""
    v2 = HEADER_RULES + b"\x00\x05\x04note"  # the same module with one more (custom) section: other bytes
    pushed = {"v1": HEADER_RULES, "v2": v2}
    bed.registry.push_layout("oci-image", "pull/again", "latest", pushed["v1"])
    spec = {"selector": APP_B, "url": f"oci://{bed.registry.host}/pull/again:latest", "pluginConfig": adds("x-pull")}
    strict_apply(bed, "pull-again", spec)
    obj = bed.op.wait(NS, "pull-again", reason="Loaded", timeout=120)
    assert obj["status"]["digest"] == f"sha256:{hashlib.sha256(pushed['v1']).hexdigest()}"
    bed.registry.push_layout("oci-image", "pull/again", "latest", pushed["v2"])
    # a reconcile that is no change of the plugin's (its pod's labels changed): not pulled again
    seen = bed.op.log().count('"plugin": "ported/pull-again"')
    bed.op.mesh.kube.request(
        "PATCH",
        f"/api/v1/namespaces/{NS}/pods/{bed.sidecar.name}",
        {"metadata": {"labels": {"touched": "1"}}},
        content_type="application/merge-patch+json",
    )
    procs.wait_until(
        lambda: bed.op.log().count('"plugin": "ported/pull-again"') > seen, timeout=60, what="a reconcile of it"
    )
    assert (bed.op.get(NS, "pull-again") or {})["status"]["digest"] == obj["status"]["digest"]
    # a spec change: pulled again, the new image delivered
    strict_apply(bed, "pull-again", {**spec, "pluginConfig": adds("x-pull-2")})
    obj = bed.op.wait(NS, "pull-again", reason="Loaded", timeout=120)
    assert obj["status"]["digest"] == f"sha256:{hashlib.sha256(pushed['v2']).hexdigest()}"
    istio.poll(
        lambda: bed.sidecar.request("/"),
        lambda r: r.headers.get("x-pull-2") == "1",
        "the new image's plugin in the response",
    )
    bed.op.delete(NS, "pull-again")
