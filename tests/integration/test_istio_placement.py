"""Phase placement on the real istiod: AUTHN before jwt_authn, AUTHZ before envoy.filters.http.rbac, STATS (and
unset) after rbac and before istio.stats, in both istio routes (native TrafficExtension, ConfigMap EnvoyFilter), on
a proxy with a RequestAuthentication and an AuthorizationPolicy. Proven three ways in one run: a request the rbac
filter refuses carries the response headers of exactly the plugins before rbac; Envoy's own listener shows the
order; and istiod's config_dump for the proxy with metadata exchange, ALPN and telemetry on (what a real
istio-proxy gets; istio.stats included) shows it too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.corpus import modules as corpus
from tests.testbed import istio, istiopod, procs
from tests.testbed.mesh_operator import MeshOperator

HEADER_RULES = corpus.module("rust/header_rules").path.read_bytes()
NS = "order"
PHASES = {"authn": "AUTHN", "authz": "AUTHZ", "stats": "STATS", "unset": None}
JWKS = (
    '{"keys":[{"kty":"RSA","e":"AQAB","n":"kpPLQD7aTBrLygYmEirfnqQxXo7N5IETT9AD-5OvjPRfsOmWSEC-GB4rZApNAuUCDiuivY04'
    "akaD1-4UeqnWgreD1ryDkuN8nOg-X8IxbHdWAURDDNNoD32l4C08uUd1xL-BiTT-C2RlGdQMmxho8YVn03d6WAFG5yOGBnQamH8aF4opzW72Y"
    "ZOAkd6oagUjaCLQveJ1yYQW0sg93l9wkmOPEhZ3UM5HKEr2X7VnZdd-6dukGzvkYh_IIvNKhx0j2vNmGeyGGVsuE9A10a-vBTppXG-lntjUIRogd"
    'TyWvbsiY-iK8XhNVGLJmWEHxfxOvzXBkUIuWlynWAKS0oXOaw"}]}'
)
JWT, RBAC, GRPC_STATS, ISTIO_STATS = (
    "envoy.filters.http.jwt_authn",
    "envoy.filters.http.rbac",
    "envoy.filters.http.grpc_stats",
    "istio.stats",
)


def names(mode: str) -> dict[str, str]:
    """plugin name -> the filter name it has in Envoy (native: Istio's ECDS name of its WasmPlugin, which istiod
    translates into a TrafficExtension with a suffix; configmap: <ns>.<name>)."""
    out = {}
    for short in PHASES:
        name = f"{mode}-{short}"
        native = f"extensions.istio.io/trafficextension/{NS}.{name}~istio-translated-wasmplugin"
        out[name] = native if mode == "n" else f"{NS}.{name}"
    return out


@pytest.fixture(scope="module")
def pod(mesh_operator: MeshOperator, istio_mesh: istio.Mesh) -> Iterator[istiopod.Pod]:
    istio_mesh.namespace(NS)
    selector = {"matchLabels": {"app": "order"}}
    istio_mesh.apply(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": {"name": "jwt", "namespace": NS},
            "spec": {"selector": selector, "jwtRules": [{"issuer": "https://issuer.example", "jwks": JWKS}]},
        }
    )
    istio_mesh.apply(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "get-only", "namespace": NS},
            "spec": {"selector": selector, "action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        }
    )
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    for mode, delivery in (("n", "native"), ("c", "configmap")):
        for short, phase in PHASES.items():
            spec = {
                "url": url,
                "sha256": sha,
                "istioDelivery": delivery,
                "selector": selector,
                "match": [{"mode": "SERVER"}],
                "pluginConfig": {"response": {"add": {f"x-{mode}-{short}": "1"}}},
            }
            if phase:
                spec["phase"] = phase
            mesh_operator.plugin(NS, f"{mode}-{short}", spec)
    # created once the ConfigMap route's modules are there: admitted with them mounted
    for short in PHASES:
        procs.wait_until(
            lambda short=short: (
                istio_mesh.kube.request(  # type: ignore[misc]
                    "GET", f"/api/v1/namespaces/{NS}/configmaps/meshplug-wasm-c-{short}"
                )[0]
                == 200
            ),
            timeout=60,
            what=f"ConfigMap meshplug-wasm-c-{short}",
        )
    p = istio_mesh.sidecar(NS, "order-0", {"app": "order"})
    for name in [*names("n"), *names("c")]:
        mesh_operator.wait(NS, name, reason="Loaded")
    yield p
    p.stop()
    istio_mesh.pods.remove(p)


def test_a_request_refused_by_rbac_passed_exactly_the_plugins_before_it(pod: istiopod.Pod) -> None:
    allowed = pod.request("/")
    assert allowed.status == 200
    assert {f"x-{m}-{s}" for m in "nc" for s in PHASES} <= set(allowed.headers)
    refused = pod.request("/", method="POST", body=b"x")
    assert refused.status == 403 and refused.body == b"RBAC: access denied"
    before_rbac = {f"x-{m}-{s}" for m in "nc" for s in ("authn", "authz")}
    after_rbac = {f"x-{m}-{s}" for m in "nc" for s in ("stats", "unset")}
    assert before_rbac <= set(refused.headers)
    assert not after_rbac & set(refused.headers)


def _check_order(chain: list[str], *, production: bool) -> None:
    where = {name: chain.index(name) for name in chain}
    for mode in "nc":
        f = names(mode)
        authn, authz, stats, unset = (where[f[f"{mode}-{s}"]] for s in PHASES)
        assert authn < where[JWT] < authz < where[RBAC] < stats < unset < where[GRPC_STATS], chain
    if production:
        # Istio puts its own AUTHN extensions after metadata exchange; an EnvoyFilter can only anchor AUTHN first
        # in the chain (an anchor that may be missing would drop the plugin), so the ConfigMap route's is before it
        mx = where["istio.metadata_exchange"]
        assert where[names("c")["c-authn"]] < mx < where[names("n")["n-authn"]], chain
        assert where[GRPC_STATS] < where[ISTIO_STATS], chain


def test_envoy_and_istiod_show_istios_phase_order(pod: istiopod.Pod, istio_mesh: istio.Mesh) -> None:
    envoy_chains = pod.envoy_http_filters()  # one HCM per filter chain of the inbound listener (TLS, plaintext)
    assert envoy_chains
    for chain in envoy_chains:
        _check_order(chain, production=False)
    assert istio_mesh.istiod.http_filters(pod.proxy_id, istiopod.INBOUND_PORT) == envoy_chains
    # what a real istio-proxy gets: metadata exchange, ALPN and telemetry on (PyPI Envoy would refuse it)
    istio_mesh.restart_istiod(production=True)
    try:
        chains = istio.poll(
            lambda: istio_mesh.istiod.http_filters(pod.proxy_id, istiopod.INBOUND_PORT),
            lambda c: bool(c) and ISTIO_STATS in c[0],
            "istiod's production chain for the proxy",
        )
        for chain in chains:
            _check_order(chain, production=True)
        print("production chain:", " -> ".join(chains[0]))
    finally:
        istio_mesh.restart_istiod(production=False)
    istio.poll(lambda: pod.request("/"), lambda r: r.status == 200 and "x-n-unset" in r.headers, "the proxy back")
