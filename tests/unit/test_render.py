"""meshplug.render: EnvoyFilter, ConfigMap, pod-template annotations and agent sets from PluginSpecs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest

from meshplug import errors, limits, spec
from meshplug.render import envoy, istio, model, podtemplate

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
        ({}, "INSERT_BEFORE", [istio.ROUTER], "HTTP_FILTER"),
        ({"phase": "AUTHZ"}, "INSERT_BEFORE", [istio.ROUTER], "HTTP_FILTER"),
        ({"phase": "STATS"}, "INSERT_BEFORE", [istio.ROUTER], "HTTP_FILTER"),
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
    """Simulate Istio: apply EnvoyFilters by ascending priority (stable: creation order) to one HCM chain."""
    filters = ["istio.metadata_exchange", "istio_authn", "envoy.filters.http.rbac", "istio.stats", istio.ROUTER]
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


@pytest.mark.parametrize(
    ("fields", "key", "expected"),
    [
        ({}, "workloadSelector", None),
        ({"selector": {"matchLabels": {"app": "cart"}}}, "workloadSelector", {"labels": {"app": "cart"}}),
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
    assert ef["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "meshplug", "meshplug.io/plugin": "hdr"}
    assert ef["metadata"]["annotations"] == {"meshplug.io/digest": SMALL.digest}


CODE = istio.code_for(plugin(), SMALL, SERVER)
assert isinstance(CODE, model.LocalCode)
OURS_V = {"name": "meshplug-wasm-hdr", "configMap": {"name": "meshplug-wasm-hdr"}}
OURS_M = {"name": "meshplug-wasm-hdr", "mountPath": "/var/local/meshplug/wasm/hdr", "readOnly": True}
OTHER_V = {"name": "certs", "secret": {"secretName": "c"}}
OTHER_M = {"name": "certs", "mountPath": "/etc/certs"}


def ann(volumes: object, mounts: object) -> dict[str, str]:
    return {podtemplate.USER_VOLUME: json.dumps(volumes), podtemplate.USER_VOLUME_MOUNT: json.dumps(mounts)}


@pytest.mark.parametrize(
    ("annotations", "volumes", "mounts"),
    [
        ({}, [OURS_V], [OURS_M]),
        ({"unrelated": "x"}, [OURS_V], [OURS_M]),
        (ann([OTHER_V], [OTHER_M]), [OTHER_V, OURS_V], [OTHER_M, OURS_M]),
        (ann({"certs": {"secret": {"secretName": "c"}}}, [OTHER_M]), [OTHER_V, OURS_V], [OTHER_M, OURS_M]),
        (
            ann([{"name": "meshplug-wasm-hdr", "emptyDir": {}}, OTHER_V], [OTHER_M]),
            [OURS_V, OTHER_V],
            [OTHER_M, OURS_M],
        ),
    ],
)
def test_add_module_volume(annotations: dict[str, str], volumes: list[Any], mounts: list[Any]) -> None:
    patch = podtemplate.with_module_volume(annotations, CODE)
    assert patch is not None
    merged = {**annotations, **patch}
    assert json.loads(merged[podtemplate.USER_VOLUME]) == volumes
    assert json.loads(merged[podtemplate.USER_VOLUME_MOUNT]) == mounts
    assert podtemplate.with_module_volume(merged, CODE) is None  # idempotent: no second template change


def test_new_module_version_does_not_change_the_template() -> None:
    first = podtemplate.with_module_volume({}, CODE)
    assert first is not None
    v2 = istio.code_for(plugin(), model.Module.of(b"\x00asm\x01\x00\x00\x00v2"), SERVER)
    assert isinstance(v2, model.LocalCode)
    assert podtemplate.with_module_volume({k: v for k, v in first.items() if v}, v2) is None


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, None),
        (ann([OURS_V], [OURS_M]), {podtemplate.USER_VOLUME: None, podtemplate.USER_VOLUME_MOUNT: None}),
        (
            ann([OTHER_V, OURS_V], [OURS_M, OTHER_M]),
            {
                podtemplate.USER_VOLUME: json.dumps([OTHER_V], separators=(",", ":"), sort_keys=True),
                podtemplate.USER_VOLUME_MOUNT: json.dumps([OTHER_M], separators=(",", ":"), sort_keys=True),
            },
        ),
        (ann([OTHER_V], [OTHER_M]), None),
    ],
)
def test_remove_module_volume(annotations: dict[str, str], expected: dict[str, str | None] | None) -> None:
    assert podtemplate.without_module_volume(annotations, CODE.volume) == expected


@pytest.mark.parametrize("bad", ["not json", '"a string"', '[{"noname": 1}]'])
def test_foreign_garbage_in_annotations_is_an_apply_error(bad: str) -> None:
    with pytest.raises(errors.ApplyError):
        podtemplate.with_module_volume({podtemplate.USER_VOLUME: bad}, CODE)


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
