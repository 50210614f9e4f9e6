"""meshplug.render: EnvoyFilter and ConfigMap (istio ConfigMap route), Istio's own TrafficExtension/WasmPlugin
(native route) and the pod admission patch that mounts ConfigMap modules, from PluginSpecs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from meshplug import errors, injection, limits, spec
from meshplug.render import envoy, istio, istio_native, model

SERVER = model.ModuleServer(host="meshplug-modules.meshplug-system.svc.cluster.local", port=8080, token="t" * 32)
SMALL = model.Module.of(b"\x00asm\x01\x00\x00\x00" + b"\x00" * 100)
LARGE = model.Module.of(b"\x00asm\x01\x00\x00\x00" + b"\x01" * limits.CONFIGMAP_MAX_BYTES)


def plugin(name: str = "hdr", **fields: Any) -> spec.PluginSpec:
    return spec.parse({"metadata": {"name": name, "namespace": "shop"}, "spec": {"url": "oci://r/hdr:v1", **fields}})


def wasm_config(ef: dict[str, Any], i: int = 0) -> dict[str, Any]:
    config: dict[str, Any] = ef["spec"]["configPatches"][i]["patch"]["value"]["typed_config"]["config"]
    return config


@pytest.mark.parametrize(
    ("fields", "path", "expected"),
    [
        ({}, ("name",), "shop.hdr"),
        ({}, ("root_id",), ""),
        ({"pluginName": "add_header"}, ("root_id",), "add_header"),
        ({}, ("failure_policy",), "FAIL_CLOSED"),
        ({"failStrategy": "FAIL_OPEN"}, ("failure_policy",), "FAIL_OPEN"),
        ({"failStrategy": "FAIL_RELOAD"}, ("failure_policy",), "FAIL_RELOAD"),
        ({"pluginConfig": {"h": "v"}}, ("configuration", "value"), '{"h":"v"}'),
        ({"pluginConfig": {"h": "v"}}, ("configuration", "@type"), envoy.STRING_VALUE),
        ({}, ("vm_config", "runtime"), "envoy.wasm.runtime.v8"),
        ({}, ("vm_config", "vm_id"), "shop.hdr"),
        (
            {"vmConfig": {"env": [{"name": "A", "value": "1"}, {"name": "H", "valueFrom": "HOST"}]}},
            ("vm_config", "environment_variables"),
            {"host_env_keys": ["H"], "key_values": {"A": "1"}},
        ),
    ],
)
def test_plugin_config_fields(fields: dict[str, Any], path: tuple[str, ...], expected: object) -> None:
    value: Any = wasm_config(istio.render(plugin(**fields), SMALL, SERVER).envoy_filter)  # type: ignore[arg-type]
    for key in path:
        value = value[key]
    assert value == expected


@pytest.mark.parametrize(
    ("fields", "absent"),
    [({}, "configuration"), ({}, "environment_variables")],
)
def test_unset_fields_are_absent(fields: dict[str, Any], absent: str) -> None:
    config = wasm_config(istio.render(plugin(**fields), SMALL, SERVER).envoy_filter)  # type: ignore[arg-type]
    assert absent not in config and absent not in config["vm_config"]


def test_small_module_goes_in_a_config_map() -> None:
    out = istio.render(plugin(), SMALL, SERVER)
    assert isinstance(out.code, model.LocalCode)
    assert out.config_map is not None
    data = out.config_map["binaryData"]
    assert list(data) == [f"{SMALL.sha256}.wasm"]
    assert base64.b64decode(data[f"{SMALL.sha256}.wasm"]) == SMALL.data
    assert out.config_map["metadata"]["name"] == "meshplug-wasm-hdr"
    code = wasm_config(out.envoy_filter)["vm_config"]["code"]  # type: ignore[arg-type]
    assert code == {"local": {"filename": f"/var/local/meshplug/wasm/hdr/{SMALL.sha256}.wasm"}}


def test_large_module_is_fetched_remotely_with_sha256() -> None:
    # the module server's per-module capability: hex hmac-sha256(token, sha256)
    sig = hmac.new(b"t" * 32, LARGE.sha256.encode(), hashlib.sha256).hexdigest()
    out = istio.render(plugin(), LARGE, SERVER)
    assert out.config_map is None
    code = wasm_config(out.envoy_filter)["vm_config"]["code"]  # type: ignore[arg-type]
    assert code["remote"]["sha256"] == LARGE.sha256
    assert code["remote"]["http_uri"] == {
        "uri": f"http://meshplug-modules.meshplug-system.svc.cluster.local:8080/modules/sha256/{LARGE.sha256}?sig={sig}",
        "cluster": "outbound|8080||meshplug-modules.meshplug-system.svc.cluster.local",
        "timeout": "30s",
    }


def test_module_exactly_at_the_limit_still_fits() -> None:
    edge = model.Module.of(b"\x00" * limits.CONFIGMAP_MAX_BYTES)
    assert isinstance(istio.code_for(plugin(), edge, SERVER), model.LocalCode)


@pytest.mark.parametrize(
    ("previous", "keys"),
    [
        (None, 1),
        (SMALL, 1),  # same module: one key
        (model.Module.of(b"\x00asm\x01\x00\x00\x00old"), 2),  # both fit: the old one stays for lagging sidecars
        (model.Module.of(b"\x00" * (limits.CONFIGMAP_MAX_BYTES - 50)), 1),  # together too big: new only
    ],
)
def test_config_map_keeps_previous_module_when_it_fits(previous: model.Module | None, keys: int) -> None:
    out = istio.render(plugin(), SMALL, SERVER, previous=previous)
    assert out.config_map is not None
    assert len(out.config_map["binaryData"]) == keys
    assert f"{SMALL.sha256}.wasm" in out.config_map["binaryData"]


def test_names_do_not_depend_on_the_module() -> None:
    a = istio.render(plugin(), SMALL, SERVER)
    b = istio.render(plugin(), model.Module.of(b"\x00asm\x01\x00\x00\x00v2"), SERVER)
    assert isinstance(a.code, model.LocalCode) and isinstance(b.code, model.LocalCode)
    assert (a.code.config_map, a.code.volume, a.code.mount_dir) == (b.code.config_map, b.code.volume, b.code.mount_dir)
    assert a.envoy_filter["metadata"]["name"] == b.envoy_filter["metadata"]["name"] == "meshplug-hdr"


def test_long_names_stay_within_kubernetes_limits() -> None:
    long = "p" * 250
    code = istio.code_for(plugin(name=long), SMALL, SERVER)
    assert isinstance(code, model.LocalCode)
    assert len(code.volume) <= 63 and len(code.config_map) <= 253
    assert code.volume != istio.code_for(plugin(name=long[:-1] + "q"), SMALL, SERVER).volume  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, [("ANY", None)]),
        ({"match": [{"mode": "SERVER"}]}, [("SIDECAR_INBOUND", None)]),
        (
            {"match": [{"mode": "CLIENT", "ports": [{"number": 80}, {"number": 443}]}]},
            [("SIDECAR_OUTBOUND", 80), ("SIDECAR_OUTBOUND", 443)],
        ),
        (
            {"match": [{"mode": "SERVER"}, {"mode": "CLIENT", "ports": [{"number": 8080}]}]},
            [("SIDECAR_INBOUND", None), ("SIDECAR_OUTBOUND", 8080)],
        ),
        ({"targetRefs": [{"kind": "Gateway", "name": "gw"}], "match": [{"mode": "SERVER"}]}, [("GATEWAY", None)]),
    ],
)
def test_match_to_context_and_port(fields: dict[str, Any], expected: list[tuple[str, int | None]]) -> None:
    ef = istio.render(plugin(**fields), SMALL, SERVER).envoy_filter
    got = [(p["match"]["context"], p["match"]["listener"].get("portNumber")) for p in ef["spec"]["configPatches"]]
    assert got == expected


@pytest.mark.parametrize(
    ("fields", "operation", "anchors", "apply_to"),
    [
        ({}, "INSERT_BEFORE", [istio.GRPC_STATS], "HTTP_FILTER"),
        ({"phase": "AUTHZ"}, "INSERT_BEFORE", [istio.RBAC], "HTTP_FILTER"),
        ({"phase": "STATS"}, "INSERT_BEFORE", [istio.GRPC_STATS], "HTTP_FILTER"),
        ({"phase": "AUTHN"}, "INSERT_FIRST", [None], "HTTP_FILTER"),
        ({"type": "NETWORK"}, "INSERT_BEFORE", [istio.TCP_PROXY, istio.HCM], "NETWORK_FILTER"),
        ({"type": "NETWORK", "phase": "AUTHN"}, "INSERT_FIRST", [None], "NETWORK_FILTER"),
    ],
)
def test_phase_to_operation(fields: dict[str, Any], operation: str, anchors: list[str | None], apply_to: str) -> None:
    ef = istio.render(plugin(**fields), SMALL, SERVER).envoy_filter
    patches = ef["spec"]["configPatches"]
    assert [p["patch"]["operation"] for p in patches] == [operation] * len(anchors)
    assert {p["applyTo"] for p in patches} == {apply_to}
    if apply_to == "HTTP_FILTER":
        assert all(p["match"]["listener"]["filterChain"]["filter"]["name"] == istio.HCM for p in patches)
        got = [p["match"]["listener"]["filterChain"]["filter"].get("subFilter", {}).get("name") for p in patches]
    else:
        got = [p["match"]["listener"].get("filterChain", {}).get("filter", {}).get("name") for p in patches]
    assert got == anchors
    expected_type = envoy.NETWORK_WASM if apply_to == "NETWORK_FILTER" else envoy.HTTP_WASM
    assert all(p["patch"]["value"]["typed_config"]["@type"] == expected_type for p in patches)


# chain order a sidecar ends up with, for plugins given as (name, phase, priority) in creation order
@pytest.mark.parametrize(
    ("plugins", "chain"),
    [
        ([("a", "UNSPECIFIED_PHASE", None), ("b", "UNSPECIFIED_PHASE", 10)], ["b", "a"]),
        ([("a", "UNSPECIFIED_PHASE", 1), ("b", "UNSPECIFIED_PHASE", 10)], ["b", "a"]),
        ([("a", "UNSPECIFIED_PHASE", -5), ("b", "UNSPECIFIED_PHASE", None)], ["a", "b"]),
        ([("a", "STATS", 100), ("b", "AUTHZ", -100)], ["b", "a"]),
        ([("u", "UNSPECIFIED_PHASE", 2**31 - 1), ("s", "STATS", -(2**31 - 1))], ["s", "u"]),
        ([("a", "AUTHN", None), ("b", "AUTHN", 3), ("c", "AUTHN", 7)], ["c", "b", "a"]),
        ([("z", "UNSPECIFIED_PHASE", 9), ("n", "AUTHN", -9), ("t", "AUTHZ", None)], ["n", "t", "z"]),
    ],
)
def test_envoy_filter_priorities_order_the_chain(plugins: list[tuple[str, str, int | None]], chain: list[str]) -> None:
    """Simulate Istio: apply EnvoyFilters by ascending priority (stable: creation order) to one HCM chain (istiod's
    chain with policies and telemetry on; the real one is checked on istiod in tests/integration/test_istio_*)."""
    filters = [
        "istio.metadata_exchange",
        "envoy.filters.http.jwt_authn",
        "istio_authn",
        istio.RBAC,
        istio.GRPC_STATS,
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "istio.stats",
        istio.ROUTER,
    ]
    efs = []
    for name, phase, prio in plugins:
        fields: dict[str, Any] = {"phase": phase}
        if prio is not None:
            fields["priority"] = prio
        efs.append(istio.render(plugin(name=name, **fields), SMALL, SERVER).envoy_filter)
    for ef in sorted(efs, key=lambda e: e["spec"]["priority"]):
        assert -(2**31) <= ef["spec"]["priority"] < 2**31
        for p in ef["spec"]["configPatches"]:
            value = p["patch"]["value"]["name"]
            if p["patch"]["operation"] == "INSERT_FIRST":
                filters.insert(0, value)
            else:
                filters.insert(
                    filters.index(p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]), value
                )
    assert [f.removeprefix("shop.") for f in filters if f.startswith("shop.")] == chain
    # and each phase sits where istiod puts its own extensions of that phase
    where = {f.removeprefix("shop."): i for i, f in enumerate(filters)}
    for name, phase, _ in plugins:
        if phase == "AUTHN":
            assert where[name] < filters.index("envoy.filters.http.jwt_authn")
        elif phase == "AUTHZ":
            assert filters.index("istio_authn") < where[name] < filters.index(istio.RBAC)
        else:
            assert filters.index(istio.RBAC) < where[name] < filters.index(istio.GRPC_STATS)


MOUNTED = {"wasm.meshplug.io/meshplug-wasm-hdr": "mounted"}


@pytest.mark.parametrize(
    ("fields", "key", "expected"),
    [
        # a ConfigMap module: only pods that mount it (the webhook labels them at admission)
        ({}, "workloadSelector", {"labels": MOUNTED}),
        ({"selector": {"matchLabels": {"app": "cart"}}}, "workloadSelector", {"labels": {"app": "cart", **MOUNTED}}),
        (
            {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]},
            "targetRefs",
            [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}],
        ),
    ],
)
def test_envoy_filter_targets(fields: dict[str, Any], key: str, expected: object) -> None:
    ef = istio.render(plugin(**fields), SMALL, SERVER).envoy_filter
    assert ef["spec"].get(key) == expected
    assert ef["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "meshplug",
        "meshplug.io/plugin": "hdr",
        "meshplug.io/kind": "WasmPlugin",
        "meshplug.io/plugin-namespace": "shop",
    }
    assert ef["metadata"]["annotations"] == {"meshplug.io/digest": SMALL.digest}


def te_plugin(name: str = "hdr", namespace: str = "shop") -> spec.PluginSpec:
    body = {"url": "oci://r/hdr:v1"}
    return spec.parse(
        {"kind": "TrafficExtension", "metadata": {"name": name, "namespace": namespace}, "spec": {"wasm": body}}
    )


def test_a_wasm_plugin_and_a_traffic_extension_of_one_name_share_no_object() -> None:
    """Every object, name, label, volume and mount directory of the ConfigMap route carries the resource's kind."""
    wp, te = istio.render(plugin(), SMALL, SERVER), istio.render(te_plugin(), SMALL, SERVER)
    assert wp.config_map is not None and te.config_map is not None
    assert isinstance(wp.code, model.LocalCode) and isinstance(te.code, model.LocalCode)
    assert (wp.envoy_filter["metadata"]["name"], wp.config_map["metadata"]["name"]) == (
        "meshplug-hdr",
        "meshplug-wasm-hdr",
    )
    assert (te.envoy_filter["metadata"]["name"], te.config_map["metadata"]["name"]) == (
        "meshplug-trafficextension-hdr",
        "meshplug-trafficextension-hdr",
    )
    assert (te.code.volume, te.code.mount_dir) == (
        "meshplug-trafficextension-hdr",
        "/var/local/meshplug/trafficextension/hdr",
    )
    assert te.envoy_filter["metadata"]["labels"]["meshplug.io/kind"] == "TrafficExtension"
    assert te.config_map["metadata"]["labels"]["meshplug.io/kind"] == "TrafficExtension"
    assert wp.code.mount_dir != te.code.mount_dir and istio.mount_label(wp.code) != istio.mount_label(te.code)
    # no WasmPlugin name reaches a TrafficExtension's ConfigMap, volume or directory
    odd = istio.code_for(plugin_named("trafficextension-hdr"), SMALL, SERVER)
    assert isinstance(odd, model.LocalCode)
    assert {odd.config_map, odd.volume, odd.mount_dir}.isdisjoint(
        {te.code.config_map, te.code.volume, te.code.mount_dir}
    )


def plugin_named(name: str) -> spec.PluginSpec:
    return spec.parse({"metadata": {"name": name, "namespace": "shop"}, "spec": {"url": "oci://r/hdr:v1"}})


def test_native_renders_the_resources_own_kind_first() -> None:
    assert istio_native.kinds_for("WasmPlugin") == (istio_native.WASM_PLUGIN, istio_native.TRAFFIC_EXTENSION)
    assert istio_native.kinds_for("TrafficExtension") == (istio_native.TRAFFIC_EXTENSION, istio_native.WASM_PLUGIN)
    owner = istio_native.Owner("meshplug.io/v1alpha1", "TrafficExtension", "hdr", "uid-2")
    te = istio_native.render(te_plugin(), SMALL, SERVER, istio_native.TRAFFIC_EXTENSION, owner)
    assert te["metadata"]["labels"]["meshplug.io/kind"] == "TrafficExtension"


def test_remote_and_proxy_local_code_select_by_the_plugin_selector_alone() -> None:
    p = plugin(selector={"matchLabels": {"app": "cart"}})
    assert istio.render(p, LARGE, SERVER).envoy_filter["spec"]["workloadSelector"] == {"labels": {"app": "cart"}}
    local = plugin(url="file:///opt/filters/hdr.wasm", selector={"matchLabels": {"app": "cart"}})
    out = istio.render(local, None, SERVER)
    assert out.config_map is None and isinstance(out.code, model.ProxyFile)
    assert wasm_config(out.envoy_filter)["vm_config"]["code"] == {"local": {"filename": "/opt/filters/hdr.wasm"}}
    assert out.envoy_filter["spec"]["workloadSelector"] == {"labels": {"app": "cart"}}


def test_mesh_wide_plugins_get_their_own_config_map_and_volume_names() -> None:
    root = spec.parse({"metadata": {"name": "hdr", "namespace": "istio-system"}, "spec": {"url": "oci://r/h:v1"}})
    code = istio.code_for(root, SMALL, SERVER, mesh_wide=True)
    assert isinstance(code, model.LocalCode)
    assert (code.config_map, code.volume, code.mount_dir) == (
        "meshplug-wasm-istio-system.hdr",
        "meshplug-wasm-istio-system-hdr",
        "/var/local/meshplug/wasm/istio-system.hdr",
    )
    cm = istio.config_map(root, SMALL, code, namespace="shop")
    assert cm["metadata"]["namespace"] == "shop"
    assert cm["metadata"]["labels"]["meshplug.io/plugin-namespace"] == "istio-system"
    notes = cm["metadata"]["annotations"]
    assert notes[istio.POD_LABEL_ANNOTATION] == "wasm.meshplug.io/meshplug-wasm-istio-system-hdr"
    assert json.loads(notes[istio.SELECTOR_ANNOTATION]) == {}


CODE = istio.code_for(plugin(), SMALL, SERVER)
assert isinstance(CODE, model.LocalCode)
MOUNT = injection.ModuleMount(CODE.config_map, CODE.volume, CODE.mount_dir, istio.mount_label(CODE))
OURS_V = {"name": "meshplug-wasm-hdr", "configMap": {"name": "meshplug-wasm-hdr", "optional": True}}
OURS_M = {"name": "meshplug-wasm-hdr", "mountPath": "/var/local/meshplug/wasm/hdr", "readOnly": True}
OTHER_V = {"name": "certs", "secret": {"secretName": "c"}}
OTHER_M = {"name": "certs", "mountPath": "/etc/certs"}


def pod(*, proxy: bool, router: bool = False, **meta: Any) -> dict[str, Any]:
    containers: list[dict[str, Any]] = [{"name": "app", "image": "app"}]
    if proxy:
        containers.append({"name": "istio-proxy", "args": ["proxy", "router" if router else "sidecar"]})
    return {"metadata": {"labels": {"app": "cart"}, **meta}, "spec": {"containers": containers}}


def admitted(p: dict[str, Any], mounts: list[injection.ModuleMount]) -> dict[str, Any]:
    return injection.apply_patch(p, injection.istio_module_patch(p, mounts))


def test_admission_mounts_into_an_injected_proxy_and_labels_the_pod() -> None:
    out = admitted(pod(proxy=True), [MOUNT])
    assert out["spec"]["volumes"] == [OURS_V]
    assert out["spec"]["containers"][1]["volumeMounts"] == [OURS_M]
    assert out["metadata"]["labels"] == {"app": "cart", "wasm.meshplug.io/meshplug-wasm-hdr": "mounted"}
    assert "annotations" not in out["metadata"]
    assert injection.istio_module_patch(out, [MOUNT]) == ()  # reinvocation: nothing more


@pytest.mark.parametrize(
    ("annotations", "volumes", "mounts"),
    [
        ({}, [OURS_V], [OURS_M]),
        (
            {injection.USER_VOLUME: json.dumps([OTHER_V]), injection.USER_VOLUME_MOUNT: json.dumps([OTHER_M])},
            [OTHER_V, OURS_V],
            [OTHER_M, OURS_M],
        ),
        (
            {
                injection.USER_VOLUME: json.dumps({"certs": {"secret": {"secretName": "c"}}}),
                injection.USER_VOLUME_MOUNT: json.dumps([OTHER_M]),
            },
            [OTHER_V, OURS_V],
            [OTHER_M, OURS_M],
        ),
    ],
)
def test_admission_before_istio_injection_sets_user_volume_annotations(
    annotations: dict[str, str], volumes: list[Any], mounts: list[Any]
) -> None:
    out = admitted(pod(proxy=False, annotations=annotations), [MOUNT])
    assert json.loads(out["metadata"]["annotations"][injection.USER_VOLUME]) == volumes
    assert json.loads(out["metadata"]["annotations"][injection.USER_VOLUME_MOUNT]) == mounts
    assert out["metadata"]["labels"]["wasm.meshplug.io/meshplug-wasm-hdr"] == "mounted"


@pytest.mark.parametrize(
    "gateway",
    [
        pod(proxy=True, router=True),
        pod(proxy=False, annotations={"inject.istio.io/templates": "gateway"}),
        pod(proxy=False, labels={"gateway.networking.k8s.io/gateway-name": "gw"}),
    ],
)
def test_admission_leaves_gateways_alone(gateway: dict[str, Any]) -> None:
    assert injection.istio_module_patch(gateway, [MOUNT]) == ()


@pytest.mark.parametrize("bad", ["not json", '"a string"', '[{"noname": 1}]'])
def test_foreign_garbage_in_user_volume_annotations_is_a_config_error(bad: str) -> None:
    with pytest.raises(errors.ConfigError):
        injection.istio_module_patch(pod(proxy=False, annotations={injection.USER_VOLUME: bad}), [MOUNT])


NATIVE_SERVER = SERVER


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {}),
        ({"selector": {"matchLabels": {"app": "cart"}}}, {"selector": {"matchLabels": {"app": "cart"}}}),
        ({"phase": "AUTHZ", "priority": 7}, {"phase": "AUTHZ", "priority": 7}),
        (
            {"match": [{"mode": "SERVER", "ports": [{"number": 9080}]}]},
            {"match": [{"mode": "SERVER", "ports": [{"number": 9080}]}]},
        ),
        (
            {"targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}},
            {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}]},
        ),
    ],
)
def test_native_targeting(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    te = istio_native.render(plugin(**fields), SMALL, SERVER, istio_native.TRAFFIC_EXTENSION)
    assert {k: v for k, v in te["spec"].items() if k != "wasm"} == expected


def test_native_traffic_extension_points_at_the_module_server() -> None:
    p = plugin(
        pluginName="hdr_root",
        pluginConfig={"h": "v"},
        failStrategy="FAIL_OPEN",
        vmConfig={"env": [{"name": "A", "value": "1"}, {"name": "H", "valueFrom": "HOST"}]},
    )
    owner = istio_native.Owner("meshplug.io/v1alpha1", "WasmPlugin", "hdr", "uid-1")
    te = istio_native.render(p, SMALL, SERVER, istio_native.TRAFFIC_EXTENSION, owner)
    assert (te["apiVersion"], te["kind"]) == ("extensions.istio.io/v1alpha1", "TrafficExtension")
    assert te["metadata"]["name"] == "hdr" and te["metadata"]["namespace"] == "shop"
    assert te["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert te["spec"]["wasm"] == {
        "url": SERVER.url(SMALL.sha256, signed=True),
        "sha256": SMALL.sha256,
        "imagePullPolicy": "IfNotPresent",
        "pluginName": "hdr_root",
        "pluginConfig": {"h": "v"},
        "failStrategy": "FAIL_OPEN",
        "vmConfig": {"env": [{"name": "A", "valueFrom": "INLINE", "value": "1"}, {"name": "H", "valueFrom": "HOST"}]},
    }
    wp = istio_native.render(p, SMALL, SERVER, istio_native.WASM_PLUGIN, owner)
    assert wp["kind"] == "WasmPlugin" and wp["spec"]["url"] == te["spec"]["wasm"]["url"]
    assert "wasm" not in wp["spec"]


def test_native_file_url_is_passed_through_and_lua_bodies_share_the_targeting() -> None:
    p = plugin(url="file:///opt/filters/x.wasm", phase="STATS")
    te = istio_native.render(p, None, SERVER, istio_native.TRAFFIC_EXTENSION)
    assert te["spec"]["wasm"]["url"] == "file:///opt/filters/x.wasm" and "sha256" not in te["spec"]["wasm"]
    lua = istio_native.traffic_extension(
        "l", "shop", istio_native.Targeting.of(p), {"lua": {"inlineCode": "function envoy_on_request(h) end"}}
    )
    assert lua["spec"]["phase"] == "STATS" and lua["spec"]["lua"]["inlineCode"].startswith("function")
    with pytest.raises(ValueError, match="exactly one"):
        istio_native.traffic_extension("x", "shop", istio_native.Targeting.of(p), {"wasm": {}, "lua": {}})
    assert "matchRules" in istio_native.unsupported(plugin(matchRules=[{"paths": [{"prefix": "/v1/"}]}]))


def test_match_rules_render_a_composite_with_one_action_per_rule() -> None:
    rules = [
        {"hosts": ["api.example.com"], "pluginConfig": {"who": "api"}},
        {"paths": [{"prefix": "/v1/"}]},
    ]
    p = plugin(pluginConfig={"who": "default"}, matchRules=rules)
    code = istio.code_for(p, SMALL, SERVER)
    value = istio.envoy_filter(p, code)["spec"]["configPatches"][0]["patch"]["value"]
    assert value["name"] == "shop.hdr"  # same name, same placement as without rules
    assert value["typed_config"]["@type"] == envoy.EXTENSION_WITH_MATCHER
    assert value["typed_config"]["extension_config"]["typed_config"]["@type"] == envoy.COMPOSITE
    matchers = value["typed_config"]["xds_matcher"]["matcher_list"]["matchers"]
    configs = [m["on_match"]["action"]["typed_config"]["typed_config"]["typed_config"]["config"] for m in matchers]
    # a rule with its own configuration gets its own VM; one with the plugin's shares the plugin's VM
    assert [c["vm_config"]["vm_id"] for c in configs] == ["shop.hdr.rule0", "shop.hdr"]
    assert [c["configuration"]["value"] for c in configs] == ['{"who":"api"}', '{"who":"default"}']
    assert "xds_matcher" not in json.dumps(envoy.plugin_filter(plugin(), code))  # no rules: the plain filter
