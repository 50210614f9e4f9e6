"""The istio plane's ConfigMap route (istioDelivery: configmap) on the real istiod + istio-agent + Envoy: the module
in a ConfigMap that meshplug's webhook mounts into each pod at admission (never a workload write), an EnvoyFilter
that selects only pods with the file, root-namespace plugins copying their ConfigMap where they reach, and what the
route cannot do (pods created before the plugin, gateways, hidden module server) reported per pod, never a pointer
to a missing file. Each case is proven by a request through the proxy; the test bed's kubelet stand-in mounts the
ConfigMap volumes the admitted pod spec names (tests/testbed/istio.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshplug import limits
from meshplug.controller.delivery.istio_configmap import REPUSH_ANNOTATION as REPUSH
from tests.corpus import modules as corpus
from tests.testbed import istio, istiod, istiopod, procs
from tests.testbed.mesh_operator import MeshOperator

HEADER_RULES = corpus.module("rust/header_rules").path.read_bytes()
GO_HEADERS = corpus.module("go/headers").path.read_bytes()  # ~3 MB: over the ConfigMap limit
CONFIGMAPS = "/api/v1/namespaces/{ns}/configmaps"
MOUNT_LABEL = "wasm.meshplug.io/meshplug-wasm-{name}"


def header(pod: istiopod.Pod, name: str, value: str | None, **kwargs: Any) -> istiopod.Response:
    return istio.poll(
        lambda: pod.request("/", **kwargs),
        lambda r: r.status == 200 and r.headers.get(name) == value,
        f"{name}: {value} in the response of {pod.proxy_id}",
    )


def spec(op: MeshOperator, selector: dict[str, str] | None, add: dict[str, str], **more: Any) -> dict[str, Any]:
    url, sha = op.module_url(HEADER_RULES, "header_rules.wasm")
    out: dict[str, Any] = {
        "url": url,
        "sha256": sha,
        "istioDelivery": "configmap",
        "pluginConfig": {"response": {"add": add}},
        **more,
    }
    if selector is not None:
        out["selector"] = {"matchLabels": selector}
    return out


@pytest.fixture(scope="module")
def ns(istio_mesh: istio.Mesh) -> Iterator[str]:
    name = istio_mesh.namespace("cm-shop")
    yield name
    for pod in [p for p in istio_mesh.pods if p.namespace == name]:
        pod.stop()
        istio_mesh.pods.remove(pod)


def stop(mesh: istio.Mesh, pod: istiopod.Pod) -> None:
    pod.stop()
    mesh.pods.remove(pod)
    mesh.kube.request("DELETE", f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}?gracePeriodSeconds=0")


def test_pods_mount_the_module_at_admission_and_older_pods_are_reported(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str
) -> None:
    early = istio_mesh.sidecar(ns, "web-early", {"app": "web"})  # exists before the plugin
    mesh_operator.plugin(ns, "hdr", spec(mesh_operator, {"app": "web"}, {"x-cm": "mounted"}))
    # the ConfigMap is there before any pod may name it; the older pod cannot have it: reported, never broken
    procs.wait_until(
        lambda: istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=ns)}/meshplug-wasm-hdr")[0] == 200,
        timeout=60,
        what="the module's ConfigMap",
    )
    obj = mesh_operator.wait(ns, "hdr", status="False", reason="RestartNeeded")
    assert obj["status"]["failingPods"][0]["name"] == "web-early"
    r = early.request("/")
    assert r.status == 200 and "x-cm" not in r.headers  # its listener is intact: the filter never selects it
    ef = istio_mesh.kube.request("GET", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-hdr")
    assert ef[1]["spec"]["workloadSelector"]["labels"] == {"app": "web", MOUNT_LABEL.format(name="hdr"): "mounted"}

    # a pod created now is admitted with the volume and the label, and serves through the plugin
    late = istio_mesh.sidecar(ns, "web-late", {"app": "web"})
    stored = istio_mesh.kube.request("GET", f"/api/v1/namespaces/{ns}/pods/web-late")[1]
    assert stored["metadata"]["labels"][MOUNT_LABEL.format(name="hdr")] == "mounted"
    volume = next(v for v in stored["spec"]["volumes"] if v["name"] == "meshplug-wasm-hdr")
    assert volume["configMap"]["name"] == "meshplug-wasm-hdr" and volume["configMap"]["optional"] is True
    proxy = next(c for c in stored["spec"]["containers"] if c["name"] == "istio-proxy")
    assert {"name": "meshplug-wasm-hdr", "mountPath": "/var/local/meshplug/wasm/hdr", "readOnly": True} in proxy[
        "volumeMounts"
    ]
    header(late, "x-cm", "mounted")

    # "restart" the older pod: it comes back with the module, and the plugin is Ready
    stop(istio_mesh, early)
    early = istio_mesh.sidecar(ns, "web-early", {"app": "web"})
    header(early, "x-cm", "mounted")
    obj = mesh_operator.wait(ns, "hdr", reason="Loaded")
    assert sorted(obj["status"]["loadedPods"]) == ["web-early", "web-late"]

    # deleting the plugin removes the filter and the ConfigMap
    mesh_operator.delete(ns, "hdr")
    header(late, "x-cm", None)
    assert istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=ns)}/meshplug-wasm-hdr")[0] == 404
    for pod in (early, late):
        stop(istio_mesh, pod)


def test_gateways_cannot_mount_and_are_reported(mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str) -> None:
    gateway = istio_mesh.ingress(ns, "cm-edge", gateway_api=True)
    try:
        mesh_operator.plugin(ns, "edge", spec(mesh_operator, {"app": "cm-edge"}, {"x-cm-edge": "1"}))
        obj = mesh_operator.wait(ns, "edge", status="False", reason="GatewayCannotMount")
        assert obj["status"]["failingPods"][0]["name"] == gateway.name
        assert gateway.request("/").status == 200  # the gateway keeps serving, without the plugin
        # with targetRefs (gateways and waypoints only) a ConfigMap-sized module is refused outright
        ref = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "cm-edge"}
        mesh_operator.plugin(ns, "edge-ref", spec(mesh_operator, None, {"x-cm-edge": "2"}, targetRefs=[ref]))
        mesh_operator.wait(ns, "edge-ref", status="False", reason="ConfigMapNeedsSidecars")
        for name in ("edge", "edge-ref"):
            mesh_operator.delete(ns, name)
    finally:
        stop(istio_mesh, gateway)


def test_root_namespace_plugins_copy_their_config_map_where_they_reach(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh
) -> None:
    a, b = istio_mesh.namespace("cm-mesh-a"), istio_mesh.namespace("cm-mesh-b")
    mesh_operator.plugin(istiod.ROOT_NS, "mesh-hdr", spec(mesh_operator, {"app": "meshy"}, {"x-cm-mesh": "yes"}))
    mesh_operator.wait(istiod.ROOT_NS, "mesh-hdr", status="False", reason="NoProxies")
    name = "meshplug-wasm-istio-system.mesh-hdr"
    # a namespace gets the ConfigMap once it has a pod the plugin selects (that first pod predates it: restart)
    first = istio_mesh.sidecar(a, "meshy-0", {"app": "meshy"})
    procs.wait_until(
        lambda: istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=a)}/{name}")[0] == 200,
        timeout=60,
        what=f"the ConfigMap copied into {a}",
    )
    stop(istio_mesh, first)
    pods = [istio_mesh.sidecar(a, "meshy-0", {"app": "meshy"})]
    assert istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=b)}/{name}")[0] == 404
    second = istio_mesh.sidecar(b, "meshy-1", {"app": "meshy"})
    procs.wait_until(
        lambda: istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=b)}/{name}")[0] == 200,
        timeout=60,
        what=f"the ConfigMap copied into {b}",
    )
    stop(istio_mesh, second)
    pods.append(istio_mesh.sidecar(b, "meshy-1", {"app": "meshy"}))
    for pod in pods:
        header(pod, "x-cm-mesh", "yes")
    obj = mesh_operator.wait(istiod.ROOT_NS, "mesh-hdr", reason="Loaded")
    assert sorted(obj["status"]["loadedPods"]) == [f"{a}/meshy-0", f"{b}/meshy-1"]
    # the namespace that stops being reached loses its copy
    stop(istio_mesh, pods.pop())
    procs.wait_until(
        lambda: istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=b)}/{name}")[0] == 404,
        timeout=90,
        what=f"the ConfigMap removed from {b}",
    )
    mesh_operator.delete(istiod.ROOT_NS, "mesh-hdr")
    header(pods[0], "x-cm-mesh", None)
    assert istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=a)}/{name}")[0] == 404
    stop(istio_mesh, pods[0])


def test_a_module_too_large_for_a_config_map_goes_remote_and_a_hidden_module_server_is_reported(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str
) -> None:
    pod = istio_mesh.sidecar(ns, "big-0", {"app": "big"})
    try:
        url, sha = mesh_operator.module_url(GO_HEADERS, "go_headers.wasm")
        big = {
            "url": url,
            "sha256": sha,
            "istioDelivery": "configmap",
            "selector": {"matchLabels": {"app": "big"}},
            "match": [{"mode": "SERVER"}],
            "pluginConfig": {"response": {"add": {"x-resp-added": "remote"}}},
        }
        mesh_operator.plugin(ns, "big", big)
        # the test bed's Sidecar egress ("./*", "istio-system/*") hides meshplug-system, where the module server is
        obj = mesh_operator.wait(ns, "big", status="False", reason="ModuleServerHidden")
        assert "outbound|" in obj["status"]["failingPods"][0]["message"]
        assert istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=ns)}/meshplug-wasm-big")[0] == 404
        sidecar = pod.sidecar_resource()
        sidecar["spec"]["egress"][0]["hosts"].append(f"{istio.MODULES_NS}/*")
        istio_mesh.apply(sidecar)
        t0 = time.monotonic()
        istio.poll(
            lambda: pod.request("/"),
            lambda r: r.status == 200 and r.headers.get("x-resp-added") == "remote",
            "the remote module loaded",
            timeout=300,  # Envoy retries, then meshplug redelivers (REDELIVERY_AFTER_S, doubling): slow on a busy host
        )
        print(f"remote module loaded {time.monotonic() - t0:.1f}s after the Sidecar's egress changed")
        mesh_operator.wait(ns, "big", reason="Loaded", timeout=120)
        mesh_operator.delete(ns, "big")
    finally:
        stop(istio_mesh, pod)


def test_a_wasm_plugin_and_a_traffic_extension_of_one_name_do_not_collide(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str
) -> None:
    """A WasmPlugin and a TrafficExtension both named "twin", both by ConfigMap: each has its own EnvoyFilter,
    ConfigMap, volume and mount (their names and labels carry the kind), a pod admitted after both mounts both and
    serves both, and deleting one leaves the other's objects and effect."""
    base = spec(mesh_operator, {"app": "twin"}, {"x-twin-wp": "1"})
    mesh_operator.plugin(ns, "twin", base)
    wasm = {k: base[k] for k in ("url", "sha256")} | {"pluginConfig": {"response": {"add": {"x-twin-te": "1"}}}}
    te = {"selector": {"matchLabels": {"app": "twin"}}, "istioDelivery": "configmap", "wasm": wasm}
    mesh_operator.plugin(ns, "twin", te, kind="TrafficExtension")
    names = {"WasmPlugin": "meshplug-wasm-twin", "TrafficExtension": "meshplug-trafficextension-twin"}
    for name in names.values():
        procs.wait_until(
            lambda name=name: istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=ns)}/{name}")[0] == 200,
            timeout=60,
            what=f"ConfigMap {name}",
        )
    pod = istio_mesh.sidecar(ns, "twin-0", {"app": "twin"})
    try:
        stored = istio_mesh.kube.request("GET", f"/api/v1/namespaces/{ns}/pods/twin-0")[1]
        assert {v["name"] for v in stored["spec"]["volumes"]} >= set(names.values())
        istio.poll(
            lambda: pod.request("/"),
            lambda r: r.headers.get("x-twin-wp") == "1" and r.headers.get("x-twin-te") == "1",
            "both twins in the response",
        )
        mesh_operator.wait(ns, "twin", reason="Loaded")
        mesh_operator.wait(ns, "twin", reason="Loaded", kind="TrafficExtension")
        efs = istio_mesh.kube.request("GET", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters")[1]
        kinds = {e["metadata"]["name"]: e["metadata"]["labels"]["meshplug.io/kind"] for e in efs["items"]}
        assert {k: v for k, v in kinds.items() if "twin" in k} == {
            "meshplug-twin": "WasmPlugin",
            "meshplug-trafficextension-twin": "TrafficExtension",
        }
        mesh_operator.delete(ns, "twin", kind="TrafficExtension")
        istio.poll(
            lambda: pod.request("/"),
            lambda r: r.headers.get("x-twin-wp") == "1" and "x-twin-te" not in r.headers,
            "the WasmPlugin twin alone in the response",
        )
        assert istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=ns)}/{names['TrafficExtension']}")[0] == 404
        assert istio_mesh.kube.request("GET", f"{CONFIGMAPS.format(ns=ns)}/{names['WasmPlugin']}")[0] == 200
        assert mesh_operator.condition(ns, "twin")["reason"] == "Loaded"
        mesh_operator.delete(ns, "twin")
        header(pod, "x-twin-wp", None)
    finally:
        stop(istio_mesh, pod)


def test_a_module_envoy_refuses_shows_the_proxys_reason_and_the_listener_keeps_serving(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str
) -> None:
    """A configuration header_rules refuses in on_configure: Envoy NACKs the listener update the EnvoyFilter makes;
    the status carries Envoy's message for the pod, and the proxy keeps its last good listener (and plugin)."""
    good = spec(mesh_operator, {"app": "nack"}, {"x-good": "1"})
    mesh_operator.plugin(ns, "nack", good)
    mesh_operator.wait(ns, "nack", status="False", reason="NoProxies")  # its ConfigMap is there
    pod = istio_mesh.sidecar(ns, "nack-0", {"app": "nack"})  # admitted with the module mounted
    try:
        header(pod, "x-good", "1")
        mesh_operator.wait(ns, "nack", reason="Loaded")
        mesh_operator.plugin(ns, "nack", {**good, "pluginConfig": {"request": {"add": {"x-a": 1}}}})
        obj = mesh_operator.wait(ns, "nack", status="False", reason="ProxyNACK")
        assert obj["status"]["failingPods"][0]["name"] == "nack-0"
        assert f"{ns}.nack" in obj["status"]["failingPods"][0]["message"]
        assert pod.request("/").headers.get("x-good") == "1"  # the last good listener serves
        mesh_operator.delete(ns, "nack")
        header(pod, "x-good", None)
    finally:
        stop(istio_mesh, pod)


LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"


def lds_state(mesh: istio.Mesh, proxy_id: str) -> dict[str, str]:
    """istiod's record of the proxy's listeners: the nonce sent, the nonce ACKed, the last NACK's error."""
    return mesh.istiod.xds_state(proxy_id, LDS)


def istiod_nacks(mesh: istio.Mesh, name: str) -> int:
    """How often istiod logged a NACK naming ``name`` (its warning on every xDS rejection)."""
    return sum(1 for line in mesh.istiod.proc.log().splitlines() if "ACK ERROR" in line and name in line)


def service_entry(ns: str, host: str) -> dict[str, Any]:
    """A ServiceEntry the pods of ``ns`` see: istiod pushes them their listeners again (an outbound one more)."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": host.split(".", maxsplit=1)[0], "namespace": ns},
        "spec": {
            "hosts": [host],
            "location": "MESH_EXTERNAL",
            "resolution": "STATIC",
            "ports": [{"name": "http", "number": 8089, "protocol": "HTTP"}],
            "endpoints": [{"address": "10.9.9.9"}],
        },
    }


def ef_annotations(mesh: istio.Mesh, ns: str, name: str) -> dict[str, str]:
    """The annotations of the EnvoyFilter ``ns/name`` as the apiserver has it."""
    code, obj = mesh.kube.request("GET", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/{name}")
    assert code == 200, obj
    return dict(obj["metadata"].get("annotations") or {})


def test_a_listener_refused_until_the_module_is_mounted_is_reported_and_heals(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str
) -> None:
    """A real kubelet updates a mounted ConfigMap about a minute after it changed: a module update's EnvoyFilter names
    a file the pod does not have yet, and Envoy refuses the listener (istiod: a listener NACK naming the file) while
    it keeps serving the last good one. The status says so for the pod with Envoy's message (pending: it heals), and
    keeps saying so through istiod's later listener pushes (istiod sends every listener each time; Envoy tries the
    refused one again and refuses it again). Once the file is there, the next listener push is taken (ACKed, no
    error); nothing else makes istiod push the proxy, so the operator has it push the listener again while the pod
    is ModuleNotMounted (its EnvoyFilter's push mark): the refusal heals by itself, the plugin is Loaded and serves
    the new module, with nothing done here after the file arrives; then the mark goes."""
    first = spec(mesh_operator, {"app": "lag"}, {"x-v": "1"})
    mesh_operator.plugin(ns, "lag", first)
    mesh_operator.wait(ns, "lag", status="False", reason="NoProxies")  # its ConfigMap is there
    pod = istio_mesh.sidecar(ns, "lag-0", {"app": "lag"})
    entry = service_entry(ns, "lag-one.example")
    try:
        header(pod, "x-v", "1")
        mesh_operator.wait(ns, "lag", reason="Loaded")
        url, sha = mesh_operator.module_url(corpus.with_custom_section(HEADER_RULES, b"v2"), "header_rules_v2.wasm")
        second = {**first, "url": url, "sha256": sha, "pluginConfig": {"response": {"add": {"x-v": "2"}}}}
        with pod.volumes_held():
            mesh_operator.plugin(ns, "lag", second)
            missing = f"Invalid path: /var/local/meshplug/wasm/lag/{sha}.wasm"  # Envoy's words for the missing file
            obj = istio.poll(
                lambda: mesh_operator.get(ns, "lag"),
                lambda o: missing in str((o or {}).get("status", {}).get("failingPods")),
                "the refusal in the status",
            )
            failing = obj["status"]["failingPods"][0]
            assert (failing["name"], failing["reason"]) == ("lag-0", "ModuleNotMounted"), failing
            assert mesh_operator.condition(ns, "lag")["reason"] == "ProxiesPending"
            assert missing in lds_state(istio_mesh, pod.proxy_id)["lastError"]  # istiod's own record
            refused = istiod_nacks(istio_mesh, missing)
            istio_mesh.apply(entry)  # a later listener push: the refused listener again, refused again
            istio.poll(lambda: istiod_nacks(istio_mesh, missing), lambda n: n > refused, "Envoy's next NACK")
            assert pod.request("/").headers.get("x-v") == "1"  # the last good listener serves
            assert mesh_operator.get(ns, "lag")["status"]["failingPods"] == obj["status"]["failingPods"]
            # the operator has istiod push the refused listener again (its EnvoyFilter's push mark): refused again
            wait = 4 * limits.REPUSH_MAX_S  # a mark per reconcile of the plugin, rechecked on a backoff up to 30 s
            istio.poll(
                lambda: ef_annotations(istio_mesh, ns, "meshplug-lag"), lambda a: REPUSH in a, "a push mark", wait
            )
            refused = istiod_nacks(istio_mesh, missing)
            istio.poll(
                lambda: istiod_nacks(istio_mesh, missing), lambda n: n > refused, "a NACK of the next mark", wait
            )
            assert pod.request("/").headers.get("x-v") == "1"
        # the file is there now; the operator's next push of the listener (nothing here pushes) is taken
        istio.poll(lambda: pod.request("/"), lambda r: r.status == 200 and r.headers.get("x-v") == "2", "v2", wait)
        state = lds_state(istio_mesh, pod.proxy_id)
        assert state["acked"] == state["sent"] and not state.get("lastError"), state
        obj = mesh_operator.wait(ns, "lag", reason="Loaded")
        assert obj["status"]["failingPods"] == [] and obj["status"]["loadedPods"] == ["lag-0"], obj["status"]
        # the proxy took it: the push mark goes (while an istio.io key stays, istiod pushes every update of it)
        istio.poll(lambda: ef_annotations(istio_mesh, ns, "meshplug-lag"), lambda a: REPUSH not in a, "no push mark")
    finally:
        istio_mesh.delete(entry)
        mesh_operator.delete(ns, "lag")
        stop(istio_mesh, pod)


def listeners_carrying(pod: istiopod.Pod, sha: str) -> dict[str, tuple[str, list[str]]]:
    """Envoy's own active listeners whose config names the module ``sha``: name -> (last updated, the remote urls of
    the module in it)."""
    dump = json.loads(pod.admin("/config_dump?resource=dynamic_listeners"))
    out = {}
    for config in dump.get("configs") or []:
        active = config.get("active_state") or {}
        text = json.dumps(active.get("listener") or {})
        if sha in text:
            urls = re.findall(r'"uri": "([^"]*' + sha + r'[^"]*)"', text)
            out[str(config.get("name"))] = (str(active.get("last_updated")), urls)
    return out


#: Envoy's warning on each Wasm filter config it builds with remote code (createWasm: the one place that fetches
#: a module, or finds it in Envoy's code cache), and its counter of fetches that failed after their retries
REMOTE_FETCH = "Wasm remote code fetch is unstable"
FETCH_FAILURES = "wasm.remote_load_fetch_failures"


def wasm_fetch_failures(pod: istiopod.Pod) -> int:
    for line in pod.admin("/stats?filter=remote_load_fetch_failures").splitlines():
        name, _, value = line.partition(": ")
        if name.strip() == FETCH_FAILURES:
            return int(value)
    return 0


def lds_pushed(mesh: istio.Mesh, pod: istiopod.Pod, entry: dict[str, Any]) -> None:
    """Apply ``entry`` (a ServiceEntry the pod sees) and wait until the proxy ACKed the listener push it makes: every
    update istiod took in before it has reached the proxy by then (a push builds from istiod's whole current state)."""
    sent = lds_state(mesh, pod.proxy_id).get("sent")
    mesh.apply(entry)
    istio.poll(
        lambda: lds_state(mesh, pod.proxy_id),
        lambda s: s.get("sent") != sent and s.get("acked") == s.get("sent"),
        "istiod's listener push for the ServiceEntry, ACKed",
    )


def test_a_module_delivered_again_keeps_its_url_across_an_operator_restart(
    mesh_operator: MeshOperator, istio_mesh: istio.Mesh, ns: str
) -> None:
    """A remote module the proxy could not download is delivered again under a new url (Envoy fetches a remote
    source once, and again only for a changed one): here the pod cannot reach the module server when the plugin
    arrives, then it can, and the operator's redelivery (``&redelivery=1``) is what makes Envoy fetch and run it.
    The operator restarted then renders the url the EnvoyFilter carries (its redelivery number read back from it, not
    counted from 0 in memory): it writes nothing, istiod has nothing new for the proxy, and Envoy neither rebuilds
    the listener nor downloads the module again (the listener's last update stays, and Envoy logs no new Wasm filter
    with remote code: the only place it fetches one)."""
    pod = istio_mesh.sidecar(ns, "far-0", {"app": "far"})
    sidecar = pod.sidecar_resource()
    sidecar["spec"]["egress"][0]["hosts"].append(f"{istio.MODULES_NS}/*")  # the module server's Istio cluster
    istio_mesh.apply(sidecar)
    entry = service_entry(ns, "far-barrier.example")
    url, sha = mesh_operator.module_url(corpus.with_custom_section(GO_HEADERS, b"far"), "go_headers_far.wasm")
    far = {
        "url": url,
        "sha256": sha,
        "istioDelivery": "configmap",
        "selector": {"matchLabels": {"app": "far"}},
        "match": [{"mode": "SERVER"}],
        "pluginConfig": {"response": {"add": {"x-far": "1"}}},
    }
    try:
        with mesh_operator.unreachable_from(pod):
            mesh_operator.plugin(ns, "far", far)
            istio.poll(
                lambda: mesh_operator.get(ns, "far") or {},
                lambda o: (
                    [(f["name"], f["reason"]) for f in o.get("status", {}).get("failingPods") or []]
                    in ([("far-0", "NotDownloaded")], [("far-0", "FetchGaveUp")])  # Envoy's fetches given up
                ),
                "NotDownloaded (or FetchGaveUp) in the status",
                show=lambda o: o.get("status"),
            )
            # Envoy gave up every fetch it started (each after its retries): nothing but a changed url has it fetch
            # again. Each listener's filter started one (Envoy's createWasm: a cache miss, or a config built while
            # the first fetch was in progress); one still retrying when the module server is back fills Envoy's
            # cache but leaves the filter that gave up failed (503)
            istio.poll(
                lambda: (pod.agent_log().count(REMOTE_FETCH), wasm_fetch_failures(pod)),
                lambda started_failed: 0 < started_failed[0] <= started_failed[1],
                "Envoy's failed fetches of the module",
                timeout=120,
            )
        # reachable again: nothing here changes anything; the operator's redelivery has Envoy fetch the module
        istio.poll(
            lambda: pod.request("/"),
            lambda r: r.status == 200 and r.headers.get("x-far") == "1",
            "the module downloaded and run",
            timeout=4 * limits.REDELIVERY_AFTER_S,  # the first redelivery comes REDELIVERY_AFTER_S after the first
        )
        mesh_operator.wait(ns, "far", reason="Loaded")
        path = f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-far"
        written = istio_mesh.kube.request("GET", path)[1]
        carried = listeners_carrying(pod, sha)
        assert carried and all(
            urls and all(u.endswith("&redelivery=1") for u in urls) for _, urls in carried.values()
        ), carried
        builds = pod.agent_log().count(REMOTE_FETCH)

        mesh_operator.restart()
        reconciled = f'"plugin": "{ns}/far"'
        istio.poll(lambda: mesh_operator.log().count(reconciled), lambda n: n >= 1, "a reconcile of the plugin")
        mesh_operator.wait(ns, "far", reason="Loaded")
        lds_pushed(istio_mesh, pod, entry)  # whatever the restarted operator wrote has reached Envoy by now
        now = istio_mesh.kube.request("GET", path)[1]
        assert now["metadata"]["resourceVersion"] == written["metadata"]["resourceVersion"], (written, now)
        assert listeners_carrying(pod, sha) == carried  # Envoy's listeners as they were: not rebuilt
        assert pod.agent_log().count(REMOTE_FETCH) == builds  # no filter built again: nothing fetched
        assert pod.request("/").headers.get("x-far") == "1"
    finally:
        istio_mesh.delete(entry)
        mesh_operator.delete(ns, "far")
        stop(istio_mesh, pod)
        istio_mesh.delete(sidecar)
