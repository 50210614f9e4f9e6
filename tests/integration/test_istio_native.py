"""Istio-native delivery on the real istiod + istio-agent + Envoy: meshplug renders Istio's own resource of the same
kind (a WasmPlugin becomes Istio's WasmPlugin, which istiod itself translates into a TrafficExtension; a
TrafficExtension Istio's TrafficExtension), owned by the meshplug resource, pointing at its module server;
istio-agent downloads the module over ECDS. Every case is
proven by a request through the proxy, and the status comes from the proxies (istiod's syncz/ecdsz, the module
server's downloads)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator

import pytest

from meshplug import limits
from meshplug.controller.delivery.istio_native import REDELIVERY_ANNOTATION as REDELIVERY
from tests.corpus import modules as corpus
from tests.testbed import istio, istiod, istiopod, procs
from tests.testbed.mesh_operator import MeshOperator

HEADER_RULES = corpus.module("rust/header_rules").path.read_bytes()
TE = "/apis/extensions.istio.io/v1alpha1/namespaces/{ns}/trafficextensions"
WP = "/apis/extensions.istio.io/v1alpha1/namespaces/{ns}/wasmplugins"


@pytest.fixture(scope="module")
def shop(istio_mesh: istio.Mesh) -> Iterator[tuple[str, istiopod.Pod]]:
    ns = istio_mesh.namespace("native-shop")
    pod = istio_mesh.sidecar(ns, "cart-0", {"app": "cart"})
    yield ns, pod
    pod.stop()
    istio_mesh.pods.remove(pod)


def response_header(pod: istiopod.Pod, name: str, value: str | None) -> istiopod.Response:
    return istio.poll(
        lambda: pod.request("/", headers={"x-secret": "s"}),
        lambda r: r.status == 200 and r.headers.get(name) == value,
        f"{name}: {value} in the response of {pod.proxy_id}",
    )


def test_plugin_reaches_a_sidecar_as_istios_own_wasm_plugin(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]
) -> None:
    ns, pod = shop
    gets = operator_gets(mesh_operator)
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    config = {"response": {"add": {"x-filtered-by": "meshplug-native"}}, "request": {"remove": ["x-secret"]}}
    mesh_operator.plugin(
        ns, "hdr", {"url": url, "sha256": sha, "selector": {"matchLabels": {"app": "cart"}}, "pluginConfig": config}
    )
    obj = mesh_operator.wait(ns, "hdr", reason="Loaded")
    assert obj["status"]["pods"] == {"total": 1, "ready": 1, "failing": 0, "summary": "1/1"}
    assert obj["status"]["loadedPods"] == ["cart-0"]
    r = response_header(pod, "x-filtered-by", "meshplug-native")
    assert "x-secret" not in r.echoed()
    # Istio's own resource, owned by the meshplug one, pointing at the module server with the verified digest
    status, wp = istio_mesh_get(mesh_operator, f"{WP.format(ns=ns)}/hdr")
    assert status == 200
    assert wp["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    assert wp["spec"]["sha256"] == sha
    assert wp["spec"]["url"].startswith(f"http://{istio.MODULES_HOST}:")
    assert istio_mesh_get(mesh_operator, f"{TE.format(ns=ns)}/hdr")[0] == 404
    # the filter istiod sends this proxy, by Istio's ECDS name
    chains = mesh_operator.mesh.istiod.http_filters(pod.proxy_id, istiopod.INBOUND_PORT)
    assert chains and all(WASM_PLUGIN_FILTER.format(ns=ns, name="hdr") in c for c in chains), chains

    # a new configuration reaches the proxy (same module: no new download)
    config["response"]["add"]["x-filtered-by"] = "v2"
    mesh_operator.plugin(
        ns, "hdr", {"url": url, "sha256": sha, "selector": {"matchLabels": {"app": "cart"}}, "pluginConfig": config}
    )
    response_header(pod, "x-filtered-by", "v2")
    mesh_operator.wait(ns, "hdr", reason="Loaded")
    # every reconcile found Istio's resource in the operator's watch cache: none was read by name from the API
    assert operator_gets(mesh_operator) == gets

    # deleting the plugin removes it from the proxy
    mesh_operator.delete(ns, "hdr")
    response_header(pod, "x-filtered-by", None)
    assert istio_mesh_get(mesh_operator, f"{WP.format(ns=ns)}/hdr")[0] == 404


def operator_gets(op: MeshOperator) -> dict[str, float]:
    """The GETs of wasmplugins and trafficextensions the operator's writer sent so far (its /metrics)."""
    metrics = op.op.metrics()
    return {
        r: metrics.get(f'meshplug_operator_api_requests_total{{method="GET",resource="{r}"}}', 0.0) for r in PLURALS
    }


PLURALS = ("wasmplugins", "trafficextensions")

#: what istiod (1.31-dev) names a WasmPlugin's filter: translated into a TrafficExtension, with a suffix
WASM_PLUGIN_SUFFIX = "~istio-translated-wasmplugin"
WASM_PLUGIN_FILTER = "extensions.istio.io/trafficextension/{ns}.{name}" + WASM_PLUGIN_SUFFIX


def istio_mesh_get(op: MeshOperator, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    status, body = op.mesh.kube.request("GET", path)
    return status, body


def test_a_module_envoy_refuses_shows_the_proxys_reason(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]
) -> None:
    ns, pod = shop
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    bad = {"request": {"add": {"x-a": 1}}}  # header_rules refuses it in on_configure: Envoy NACKs the extension
    mesh_operator.plugin(ns, "bad", {"url": url, "sha256": sha, "pluginConfig": bad})
    try:
        obj = mesh_operator.wait(ns, "bad", status="False", reason="ProxyNACK")
    except BaseException:
        mesh_operator.delete(ns, "bad")
        raise
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert "native-shop.bad" in ready["message"]
    assert obj["status"]["failingPods"][0]["name"] == "cart-0"
    # what Istio does with an extension its proxy refused: the listener names it, Envoy has no config for it and
    # answers 500 until the extension goes (the status is what tells the user why)
    assert pod.request("/").status == 500
    mesh_operator.delete(ns, "bad")
    istio.poll(lambda: pod.request("/"), lambda r: r.status == 200, "the proxy serving again")


def test_a_name_taken_by_an_istio_resource_meshplug_does_not_own_is_never_overwritten(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]
) -> None:
    """Istio's WasmPlugin "taken" exists, made by someone else (selecting no pod here): meshplug's WasmPlugin of the
    same name reports NameConflict and leaves it as it was (the operator sees it in its watch cache of Istio's
    extensions, every one in the namespace, not only its own)."""
    ns, _ = shop
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    theirs = {
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "taken", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "nobody"}}, "url": "http://elsewhere.example/x.wasm"},
    }
    before = mesh_operator.mesh.apply(theirs)
    try:
        mesh_operator.plugin(ns, "taken", {"url": url, "sha256": sha, "selector": {"matchLabels": {"app": "cart"}}})
        obj = mesh_operator.wait(ns, "taken", status="False", reason="NameConflict")
        assert "is not meshplug's" in next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")["message"]
        status, now = istio_mesh_get(mesh_operator, f"{WP.format(ns=ns)}/taken")
        assert status == 200 and now["spec"] == before["spec"], now
        assert now["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert not now["metadata"].get("ownerReferences")
    finally:
        mesh_operator.delete(ns, "taken")
        mesh_operator.mesh.kube.request("DELETE", f"{WP.format(ns=ns)}/taken")


ECDS = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


def ecds_state(mesh: istio.Mesh, proxy_id: str) -> dict[str, str]:
    """istiod's record of the proxy's extension configs: the nonce sent, the nonce ACKed, the last NACK's error."""
    return mesh.istiod.xds_state(proxy_id, ECDS)


def istiod_nacks(mesh: istio.Mesh, extension: str) -> int:
    """How often istiod logged a NACK naming ``extension`` (its warning on every xDS rejection)."""
    return sum(1 for line in mesh.istiod.proc.log().splitlines() if "ACK ERROR" in line and extension in line)


def clear_istiods_record(mesh: istio.Mesh, pod: istiopod.Pod, name: str) -> None:
    """Have the proxy ACK an extension config push, which clears istiod's record of its NACK: a TrafficExtension
    "elsewhere" beside Istio's resource ``name`` (of the same module, selecting no pod) makes istiod send the
    namespace's proxies their extension configs again, the refused one too, and Envoy ACKs it unchanged."""
    status, istios = mesh.kube.request("GET", f"{WP.format(ns=pod.namespace)}/{name}")
    assert status == 200, istios
    mesh.apply(
        {
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "TrafficExtension",
            "metadata": {"name": "elsewhere", "namespace": pod.namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "no-such-app"}},
                "wasm": {k: istios["spec"][k] for k in ("url", "sha256")},
            },
        }
    )
    istio.poll(
        lambda: ecds_state(mesh, pod.proxy_id),
        lambda r: r.get("sent") and r.get("acked") == r.get("sent") and not r.get("lastError"),
        "an ACK clearing istiod's record of the NACK",
    )


def test_a_refusal_that_a_later_ack_hides_is_not_reported_loaded(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]
) -> None:
    """istiod keeps one last error per proxy and xDS type and clears it on the proxy's next ACK of that type. Here
    that ACK is Envoy's answer to the refused extension sent again (a TrafficExtension change in the namespace makes
    istiod send its proxies all their extension configs): Envoy keeps a config it failed to start as its last one and
    ACKs the same config unchanged, while the filter still has no config (500s). The order is forced on the real
    istiod, istio-agent and Envoy: Envoy is held still until the operator has looked once; the operator is held
    still while Envoy refuses the plugin (istiod logs the NACK) and ACKs the next push (istiod shows no error).
    What the operator can know then is that istiod counted a rejection it did not see: never Loaded. Envoy's message
    is gone (istiod kept only the last one; Envoy's config_dump shows the refused config as its current one, with no
    error state; istio-agent serves no xDS state), but Envoy's stats, which istio-agent serves on the pod's status
    port, show that no plugin of that name runs there: the status says the proxy refused it."""
    ns, pod = shop
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    refused = {"request": {"add": {"x-a": 1}}}  # header_rules refuses it in on_configure: Envoy NACKs it
    mesh = mesh_operator.mesh
    # the pod's istio-agent gets the module now (it downloads it once, from the operator's module server, which
    # cannot answer while the operator is held still)
    mesh_operator.plugin(ns, "warm", {"url": url, "sha256": sha, "pluginConfig": adds("x-warm")})
    mesh_operator.wait(ns, "warm", reason="Loaded")
    assert f"wasm.{ns}.warm" in pod.admin("/stats?filter=wasm")  # a plugin Envoy built has its wasm stats
    mesh_operator.delete(ns, "warm")
    istio.poll(lambda: pod.request("/"), lambda r: r.status == 200 and "x-warm" not in r.headers, "warm gone")
    try:
        with procs.frozen(pod.envoy_pid()) as resume_envoy:
            mesh_operator.plugin(ns, "masked", {"url": url, "sha256": sha, "pluginConfig": refused})
            mesh_operator.wait(ns, "masked", status="False", reason="ProxiesPending")  # the operator looked
            with procs.frozen(mesh_operator.op.proc.pid):
                resume_envoy()
                istio.poll(lambda: istiod_nacks(mesh, f"{ns}.masked"), bool, "Envoy's NACK in istiod's log")
                clear_istiods_record(mesh, pod, "masked")
                assert pod.request("/").status == 500  # Envoy still has no running filter for it
        obj = mesh_operator.wait(ns, "masked", status="False", reason="ProxyNACK")
        failing = obj["status"]["failingPods"][0]
        assert failing["name"] == "cart-0" and failing["reason"] == "ProxyNACK", failing
        assert f"runs no Wasm plugin {ns}.masked" in failing["message"], failing
        # Envoy itself, in the same run: no wasm stats of the plugin (one it built has them), no running filter
        wasm_stats = pod.admin("/stats?filter=wasm")
        assert f"{ns}.masked" not in wasm_stats, wasm_stats
        assert pod.request("/").status == 500
    finally:
        mesh_operator.delete(ns, "masked")
        mesh.kube.request("DELETE", f"{TE.format(ns=ns)}/elsewhere")
    istio.poll(lambda: pod.request("/"), lambda r: r.status == 200, "the proxy serving again")


@pytest.fixture(scope="module")
def ingress(istio_mesh: istio.Mesh) -> Iterator[tuple[str, istiopod.Pod, istiopod.Pod]]:
    """Two ingress gateways in one namespace: a classic one (selected by labels) and one a Gateway API Gateway
    names (targetRefs)."""
    ns = istio_mesh.namespace("native-edge")
    classic = istio_mesh.ingress(ns, "public")
    api = istio_mesh.ingress(ns, "api", gateway_api=True)
    yield ns, classic, api
    for pod in (classic, api):
        pod.stop()
        istio_mesh.pods.remove(pod)


@pytest.mark.parametrize("target", ["selector", "targetRefs", "targetRef"])
def test_plugin_reaches_an_ingress_gateway(
    mesh_operator: MeshOperator, ingress: tuple[str, istiopod.Pod, istiopod.Pod], target: str
) -> None:
    ns, classic, api = ingress
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    spec: dict[str, object] = {"url": url, "sha256": sha, "pluginConfig": {"response": {"add": {"x-edge": target}}}}
    ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "api"}
    if target == "selector":
        spec["selector"] = {"matchLabels": {"app": "public"}}
        reached, other = classic, api
    else:
        spec["targetRefs" if target == "targetRefs" else "targetRef"] = [ref] if target == "targetRefs" else ref
        reached, other = api, classic
    mesh_operator.plugin(ns, f"edge-{target.lower()}", spec)
    obj = mesh_operator.wait(ns, f"edge-{target.lower()}", reason="Loaded")
    assert obj["status"]["loadedPods"] == [reached.name]
    # a request through the gateway to the backend carries the plugin's header; the other gateway's does not
    r = response_header(reached, "x-edge", target)
    assert r.json()["path"] == "/"
    assert other.request("/").headers.get("x-edge") is None
    mesh_operator.delete(ns, f"edge-{target.lower()}")
    response_header(reached, "x-edge", None)


def test_a_root_namespace_plugin_applies_mesh_wide(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod], istio_mesh: istio.Mesh
) -> None:
    ns, pod = shop
    other_ns = istio_mesh.namespace("native-other")
    other = istio_mesh.sidecar(other_ns, "cart-1", {"app": "cart"})
    try:
        url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
        spec = {
            "url": url,
            "sha256": sha,
            "selector": {"matchLabels": {"app": "cart"}},
            "pluginConfig": {"response": {"add": {"x-mesh": "wide"}}},
        }
        mesh_operator.plugin(istiod.ROOT_NS, "mesh-hdr", spec)
        obj = mesh_operator.wait(istiod.ROOT_NS, "mesh-hdr", reason="Loaded")
        assert sorted(obj["status"]["loadedPods"]) == sorted([f"{ns}/{pod.name}", f"{other_ns}/{other.name}"])
        for p in (pod, other):
            response_header(p, "x-mesh", "wide")
        mesh_operator.delete(istiod.ROOT_NS, "mesh-hdr")
        for p in (pod, other):
            response_header(p, "x-mesh", None)
    finally:
        other.stop()
        istio_mesh.pods.remove(other)


def test_a_lua_traffic_extension_goes_native(mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]) -> None:
    """meshplug's TrafficExtension with inline Lua becomes Istio's TrafficExtension with the same script."""
    ns, pod = shop
    lua = 'function envoy_on_response(h)\n  h:headers():add("x-lua-native", "yes")\nend\n'
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": {"name": "lua-hdr", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "cart"}}, "phase": "AUTHN", "lua": {"inlineCode": lua}},
    }
    mesh_operator.mesh.apply(body)
    path = f"/apis/meshplug.io/v1alpha1/namespaces/{ns}/trafficextensions/lua-hdr"
    obj = istio.poll(
        lambda: mesh_operator.mesh.kube.request("GET", path)[1],
        lambda o: any(
            c["type"] == "Ready" and c["reason"] == "Loaded" for c in o.get("status", {}).get("conditions", [])
        ),
        "lua-hdr Loaded",
        timeout=90,
        show=lambda o: o.get("status"),
    )
    assert obj["status"]["loadedPods"] == [pod.name]
    response_header(pod, "x-lua-native", "yes")
    status, te = istio_mesh_get(mesh_operator, f"{TE.format(ns=ns)}/lua-hdr")
    assert status == 200 and te["spec"]["lua"]["inlineCode"] == lua and te["spec"]["phase"] == "AUTHN"
    mesh_operator.mesh.kube.request("DELETE", path)
    response_header(pod, "x-lua-native", None)


def test_a_wasm_plugin_and_a_traffic_extension_of_one_name_do_not_collide(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]
) -> None:
    """A WasmPlugin and a TrafficExtension both named "twin" in one namespace: each renders Istio's resource of its
    own kind (each owned by its own), both reach the proxy, and deleting one leaves the other serving."""
    ns, pod = shop
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    selector = {"matchLabels": {"app": "cart"}}
    wasm = {"url": url, "sha256": sha}
    mesh_operator.plugin(ns, "twin", {**wasm, "selector": selector, "pluginConfig": adds("x-twin-wp")})
    te = {"selector": selector, "wasm": {**wasm, "pluginConfig": adds("x-twin-te")}}
    mesh_operator.plugin(ns, "twin", te, kind="TrafficExtension")
    plugin = mesh_operator.wait(ns, "twin", reason="Loaded")
    extension = mesh_operator.wait(ns, "twin", reason="Loaded", kind="TrafficExtension")
    for path, owner in ((WP, plugin), (TE, extension)):
        status, rendered = istio_mesh_get(mesh_operator, f"{path.format(ns=ns)}/twin")
        assert status == 200 and rendered["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    istio.poll(
        lambda: pod.request("/"),
        lambda r: r.headers.get("x-twin-wp") == "1" and r.headers.get("x-twin-te") == "1",
        "both twins in the response",
    )
    mesh_operator.delete(ns, "twin", kind="TrafficExtension")
    istio.poll(
        lambda: pod.request("/"),
        lambda r: r.headers.get("x-twin-wp") == "1" and "x-twin-te" not in r.headers,
        "the WasmPlugin twin alone in the response",
    )
    assert istio_mesh_get(mesh_operator, f"{WP.format(ns=ns)}/twin")[0] == 200
    assert mesh_operator.condition(ns, "twin")["reason"] == "Loaded"
    mesh_operator.delete(ns, "twin")
    response_header(pod, "x-twin-wp", None)


def adds(header: str) -> dict[str, object]:
    return {"response": {"add": {header: "1"}}}


def ecds_updates(pod: istiopod.Pod) -> dict[str, str]:
    """When Envoy last took each extension config it has (its admin config_dump): name -> last_updated."""
    dump = json.loads(pod.admin("/config_dump?resource=ecds_filters"))
    return {str((c.get("ecds_filter") or {}).get("name", "")): str(c.get("last_updated", "")) for c in dump["configs"]}


def ecds_pushes(mesh: istio.Mesh, proxy_id: str) -> list[int]:
    """The size in bytes of each extension config push istiod logged for ``proxy_id`` (its info line per push)."""
    pattern = re.compile(r"ECDS: PUSH (?:request )?for node:" + re.escape(proxy_id) + r" resources:\d+ .*?size:(\d+)B")
    return [int(m.group(1)) for m in pattern.finditer(mesh.istiod.proc.log())]


def test_istiod_sends_an_unchanged_extension_config_again_and_envoy_does_not_take_it_again(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]
) -> None:
    """What the narrowing of rejections no reading showed (`nacks.RejectAccounts`: a version the proxy ACKed before
    a missed rejection is not the refused one) rests on, on the real istiod and Envoy: another plugin's change makes
    istiod push the proxy the unchanged plugin's extension config again (a new ECDS nonce; a push of the very size of
    that config's first one, before Envoy asks for the new plugin's), and Envoy does not take it again (its
    config_dump keeps the unchanged config's last update time; the new one's is new). istiod re-sends, Envoy keeps."""
    ns, pod = shop
    mesh = mesh_operator.mesh
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    before = len(ecds_pushes(mesh, pod.proxy_id))
    mesh_operator.plugin(ns, "steady", {"url": url, "sha256": sha, "pluginConfig": adds("x-steady")})
    try:
        mesh_operator.wait(ns, "steady", reason="Loaded")
        response_header(pod, "x-steady", "1")
        steady, churn = (WASM_PLUGIN_FILTER.format(ns=ns, name=n) for n in ("steady", "churn"))
        taken, sent, pushes = ecds_updates(pod), ecds_state(mesh, pod.proxy_id)["sent"], ecds_pushes(mesh, pod.proxy_id)
        mesh_operator.plugin(ns, "churn", {"url": url, "sha256": sha, "pluginConfig": adds("x-churn")})
        mesh_operator.wait(ns, "churn", reason="Loaded")
        response_header(pod, "x-churn", "1")
        state = ecds_state(mesh, pod.proxy_id)
        assert state["sent"] != sent and state["acked"] == state["sent"], state  # istiod pushed ECDS again, ACKed
        sizes = {size for size in pushes[before:] if size}  # the pushes of steady's config alone
        assert sizes & set(ecds_pushes(mesh, pod.proxy_id)[len(pushes) :]), sizes  # ... that size again
        now = ecds_updates(pod)
        assert now[steady] == taken[steady], (taken, now)  # Envoy did not take the unchanged config again
        assert churn in now and churn not in taken
    finally:
        mesh_operator.delete(ns, "churn")
        mesh_operator.delete(ns, "steady")


def test_a_refusal_istiod_no_longer_shows_stays_reported_after_an_operator_restart(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod]
) -> None:
    """istiod forgets a NACK at the proxy's next ACK of the type, and Envoy ACKs the refused extension sent again
    (without building it): an operator started after that sees nothing of the refusal in istiod, and the module server
    it runs has seen no download yet. The status the operator before it wrote has: the refusal of this version (the
    pod, Envoy's message) stays reported, as confirmed pods stay confirmed, and Envoy still answers 500."""
    ns, pod = shop
    mesh = mesh_operator.mesh
    url, sha = mesh_operator.module_url(HEADER_RULES, "header_rules.wasm")
    refused = {"request": {"add": {"x-a": 1}}}  # header_rules refuses it in on_configure: Envoy NACKs it
    mesh_operator.plugin(ns, "kept", {"url": url, "sha256": sha, "pluginConfig": refused})
    try:
        obj = mesh_operator.wait(ns, "kept", status="False", reason="ProxyNACK")
        failing = obj["status"]["failingPods"]
        assert failing[0]["name"] == "cart-0" and f"Unable to create Wasm plugin {ns}.kept" in failing[0]["message"]
        clear_istiods_record(mesh, pod, "kept")
        mesh_operator.restart()
        reconciled = f'"plugin": "{ns}/kept"'
        istio.poll(lambda: mesh_operator.log().count(reconciled), lambda n: n >= 2, "two reconciles of the plugin")
        obj = mesh_operator.wait(ns, "kept", status="False", reason="ProxyNACK")
        assert obj["status"]["failingPods"] == failing, obj["status"]
        assert pod.request("/").status == 500  # Envoy, in the same run: still no running filter for it
    finally:
        mesh_operator.delete(ns, "kept")
        mesh.kube.request("DELETE", f"{TE.format(ns=ns)}/elsewhere")
    istio.poll(lambda: pod.request("/"), lambda r: r.status == 200, "the proxy serving again")


def ecds_filter(pod: istiopod.Pod, name: str) -> str:
    """The type of the extension config Envoy runs under the ECDS name of the plugin ``name`` (ns.name; "" when
    none)."""
    dump = json.loads(pod.admin("/config_dump?resource=ecds_filters"))
    for config in dump["configs"]:
        flt = config.get("ecds_filter") or {}
        if re.search(re.escape(name) + r"($|~)", str(flt.get("name", ""))):
            return str((flt.get("typed_config") or {}).get("@type", ""))
    return ""


RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


@pytest.mark.parametrize("kind", ["WasmPlugin", "TrafficExtension"])
def test_a_module_istio_agent_could_not_download_is_delivered_again_and_heals(
    mesh_operator: MeshOperator, shop: tuple[str, istiopod.Pod], kind: str
) -> None:
    """istio-agent downloads a remote module once per extension config istiod sends: when the download fails it
    hands Envoy a deny-all RBAC filter in the module's place (failStrategy FAIL_CLOSE; allow-all with FAIL_OPEN),
    Envoy ACKs that, and nothing downloads the module again until istiod pushes the extension config again. Here the
    pod cannot reach meshplug's module server when the plugin arrives; then it can, and nothing here changes
    anything: the operator delivers the module again with a changed push mark on Istio's resource (its only change),
    istiod pushes the extension config, istio-agent downloads the module and Envoy runs it. istiod pushes a
    metadata-only update of an Istio resource only when a label or annotation key contains "istio.io"
    (pilot/pkg/model/config_compare.go NeedsPush; Istio's own TrafficExtension); a WasmPlugin, which istiod
    translates into a TrafficExtension that carries its resourceVersion, is pushed again on any update (pinned
    revision, pilot/pkg/config/kube/extensions/translate.go): with the mark's key without "istio.io"
    (meshplug.io/redelivery) the WasmPlugin case heals, the TrafficExtension one stays denied. Once the proxy runs
    the module the mark goes: while an istio.io key stays on a TrafficExtension, istiod pushes every later
    metadata-only update of it (shown here with istiod's count of the config updates it takes in to push)."""
    ns, pod = shop
    mesh = mesh_operator.mesh
    module = corpus.with_custom_section(HEADER_RULES, f"heal-{kind}".encode())
    url, sha = mesh_operator.module_url(module, f"heal-{kind.lower()}.wasm")
    name = f"heal-{kind.lower()}"
    wasm = {"url": url, "sha256": sha, "pluginConfig": adds("x-healed")}
    selector = {"matchLabels": {"app": "cart"}}
    spec = {**wasm, "selector": selector} if kind == "WasmPlugin" else {"selector": selector, "wasm": wasm}
    converting = "error in converting the wasm config to local"  # istio-agent's words for a failed download
    failed_before = pod.agent_log().count(converting)
    try:
        with mesh_operator.unreachable_from(pod):
            mesh_operator.plugin(ns, name, spec, kind=kind)
            # Envoy runs istio-agent's stand-in: every request denied, the extension config ACKed
            denied = istio.poll(lambda: pod.request("/"), lambda r: r.status == 403, "istio-agent's deny-all stand-in")
            assert b"RBAC: access denied" in denied.body, denied.body
            assert ecds_filter(pod, f"{ns}.{name}") == RBAC
            assert pod.agent_log().count(converting) > failed_before
            # the operator: istiod sent the proxy the module, the proxy ACKed, the module server saw no download
            istio.poll(
                lambda: mesh_operator.get(ns, name, kind=kind) or {},
                lambda o: (
                    [(f["name"], f["reason"]) for f in o.get("status", {}).get("failingPods") or []]
                    == [("cart-0", "NotDownloaded")]
                ),
                "NotDownloaded in the status",
                show=lambda o: o.get("status"),
            )
            assert mesh_operator.condition(ns, name, kind=kind)["reason"] == "ProxiesPending"
            sent = ecds_state(mesh, pod.proxy_id)["sent"]
        # the module server is reachable again; the operator alone has istiod push the extension config again
        istio.poll(
            lambda: pod.request("/"),
            lambda r: r.status == 200 and r.headers.get("x-healed") == "1",
            "the module downloaded and run",
            timeout=4 * limits.REDELIVERY_AFTER_S,  # the first redelivery comes REDELIVERY_AFTER_S after the first
        )
        assert ecds_filter(pod, f"{ns}.{name}") == WASM
        assert ecds_state(mesh, pod.proxy_id)["sent"] != sent  # istiod pushed the extension config again
        assert f"{ns}/{name}: delivering sha256:{sha} again (attempt 1)" in mesh_operator.log()
        obj = mesh_operator.wait(ns, name, reason="Loaded", kind=kind)
        assert obj["status"]["loadedPods"] == ["cart-0"]
        # the proxies run it: the mark goes
        istios = f"{(WP if kind == 'WasmPlugin' else TE).format(ns=ns)}/{name}"
        istio.poll(lambda: annotations_of(mesh, istios), lambda a: REDELIVERY not in a, "the redelivery mark gone")
        if kind == "TrafficExtension":
            a_while_marked_update_is_pushed_and_now_is_not(mesh, pod, istios)
    finally:
        mesh_operator.delete(ns, name, kind=kind)
        mesh.kube.request("DELETE", f"{TE.format(ns=ns)}/barrier")
    response_header(pod, "x-healed", None)


def annotations_of(mesh: istio.Mesh, path: str) -> dict[str, str]:
    status, obj = mesh.kube.request("GET", path)
    assert status == 200, obj
    return dict(obj["metadata"].get("annotations") or {})


def inbound_config_updates(mesh: istio.Mesh) -> int:
    """The config updates istiod took in to push (its pilot_inbound_updates{type="config"}): counted when NeedsPush
    let an update through, before the debounce merges pushes."""
    with urllib.request.urlopen(f"{mesh.istiod.debug_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found = re.search(r'^pilot_inbound_updates\{type="config"\} (\S+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def updates_pushed(mesh: istio.Mesh, pod: istiopod.Pod, path: str, notes: dict[str, str], wasm: dict[str, str]) -> int:
    """How many config updates istiod took in to push for a metadata-only update of the TrafficExtension at ``path``
    (its annotations ``notes``; none: no update) and then a barrier: a TrafficExtension "barrier" whose new
    pluginConfig the proxy runs once istiod handled it, so every TrafficExtension update before it too (istiod handles
    a kind's events in order)."""
    before = inbound_config_updates(mesh)
    if notes:
        status, out = mesh.kube.request(
            "PATCH", path, {"metadata": {"annotations": notes}}, content_type="application/merge-patch+json"
        )
        assert status == 200, out
    ns = pod.namespace
    status, current = mesh.kube.request("GET", f"{TE.format(ns=ns)}/barrier")
    n = str(int(((current.get("metadata") or {}).get("generation") or 0) if status == 200 else 0) + 1)
    mesh.apply(
        {
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "TrafficExtension",
            "metadata": {"name": "barrier", "namespace": ns},
            "spec": {
                "selector": {"matchLabels": {"app": "cart"}},
                "wasm": {**wasm, "pluginConfig": {"response": {"add": {"x-barrier": n}}}},
            },
        }
    )
    response_header(pod, "x-barrier", n)
    return inbound_config_updates(mesh) - before


def a_while_marked_update_is_pushed_and_now_is_not(mesh: istio.Mesh, pod: istiopod.Pod, path: str) -> None:
    """On the real istiod: a metadata-only update of the healed TrafficExtension (anyone's annotation) is not
    pushed now that the mark is gone; while an istio.io key stays on it (a mark left there), the same update is."""
    status, healed = mesh.kube.request("GET", path)
    assert status == 200, healed
    wasm = {k: healed["spec"]["wasm"][k] for k in ("url", "sha256", "imagePullPolicy")}
    barrier = updates_pushed(mesh, pod, path, {}, wasm)
    assert barrier >= 1
    assert updates_pushed(mesh, pod, path, {"example.com/team": "shop"}, wasm) == barrier  # not pushed
    updates_pushed(mesh, pod, path, {"example.istio.io/left": "1"}, wasm)  # an istio.io key stays on it
    assert updates_pushed(mesh, pod, path, {"example.com/team": "cart"}, wasm) == barrier + 1  # pushed
