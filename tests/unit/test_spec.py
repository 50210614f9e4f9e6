"""meshplug.spec: CR body -> PluginSpec, Istio defaults, and the SpecErrors for bad bodies."""

from __future__ import annotations

from typing import Any

import pytest

from meshplug import errors, spec

DIGEST = "a" * 64


def body(**fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "hdr", "namespace": "shop", "generation": 3},
        "spec": {"url": "oci://reg.example/filters/hdr:v1", **fields},
    }


@pytest.mark.parametrize(
    ("fields", "attr", "expected"),
    [
        ({}, "url", "oci://reg.example/filters/hdr:v1"),
        ({"url": "reg.example/hdr:v1"}, "url", "oci://reg.example/hdr:v1"),
        ({"url": "reg.example/hdr:v1"}, "scheme", spec.Scheme.OCI),
        ({"url": "https://h.example/x.wasm"}, "scheme", spec.Scheme.HTTPS),
        ({"url": "file:///opt/x.wasm"}, "scheme", spec.Scheme.FILE),
        ({}, "pull_policy", spec.PullPolicy.IF_NOT_PRESENT),
        ({"url": "oci://reg.example/hdr:latest"}, "pull_policy", spec.PullPolicy.ALWAYS),
        # Istio: only a written `:latest` tag defaults to Always; an untagged reference is IfNotPresent
        ({"url": "oci://reg.example/hdr"}, "pull_policy", spec.PullPolicy.IF_NOT_PRESENT),
        ({"url": "oci://reg.example:5000/hdr"}, "pull_policy", spec.PullPolicy.IF_NOT_PRESENT),
        ({"url": f"oci://reg.example/hdr@sha256:{DIGEST}"}, "pull_policy", spec.PullPolicy.IF_NOT_PRESENT),
        (
            {"url": "oci://r/hdr:latest", "imagePullPolicy": "IfNotPresent"},
            "pull_policy",
            spec.PullPolicy.IF_NOT_PRESENT,
        ),
        ({"url": "oci://r/hdr:latest", "imagePullPolicy": "UNSPECIFIED_POLICY"}, "pull_policy", spec.PullPolicy.ALWAYS),
        ({"url": "https://h/x.wasm"}, "pull_policy", spec.PullPolicy.IF_NOT_PRESENT),
        ({"imagePullPolicy": "Always"}, "pull_policy", spec.PullPolicy.ALWAYS),
        ({}, "sha256", None),
        ({"url": "https://h/x.wasm", "sha256": DIGEST}, "sha256", DIGEST),
        ({"url": "file:///opt/x.wasm", "sha256": DIGEST}, "sha256", DIGEST),
        ({"sha256": ""}, "sha256", None),
        # oci: sha256 is passed to the fetcher as given (bytes digest, or Istio's manifest digest); the url is kept
        ({"sha256": DIGEST}, "sha256", DIGEST),
        ({"sha256": DIGEST}, "url", "oci://reg.example/filters/hdr:v1"),
        ({"url": f"oci://r/hdr@sha256:{DIGEST}"}, "sha256", None),
        ({"url": "oci://r/hdr:latest", "sha256": DIGEST}, "pull_policy", spec.PullPolicy.IF_NOT_PRESENT),
        ({"url": "oci://r/hdr:latest"}, "pull_policy", spec.PullPolicy.ALWAYS),
        ({"url": f"oci://r/hdr@sha256:{DIGEST}"}, "url", f"oci://r/hdr@sha256:{DIGEST}"),
        ({"url": f"oci://r/hdr@sha256:{DIGEST}", "sha256": DIGEST}, "url", f"oci://r/hdr@sha256:{DIGEST}"),
        ({"sha256": DIGEST}, "pull_policy", spec.PullPolicy.IF_NOT_PRESENT),
        ({}, "fail_strategy", spec.FailStrategy.FAIL_CLOSE),
        ({"failStrategy": "FAIL_OPEN"}, "fail_strategy", spec.FailStrategy.FAIL_OPEN),
        ({"failStrategy": "FAIL_RELOAD"}, "fail_strategy", spec.FailStrategy.FAIL_RELOAD),
        ({}, "phase", spec.Phase.UNSPECIFIED),
        ({"phase": "UNSPECIFIED_PHASE"}, "phase", spec.Phase.UNSPECIFIED),
        ({"phase": "AUTHZ"}, "phase", spec.Phase.AUTHZ),
        ({}, "priority", None),
        ({"priority": -7}, "priority", -7),
        ({}, "type", spec.PluginType.HTTP),
        ({"type": "UNSPECIFIED_PLUGIN_TYPE"}, "type", spec.PluginType.HTTP),
        ({"type": "NETWORK"}, "type", spec.PluginType.NETWORK),
        ({}, "data_plane", spec.DataPlane.ISTIO),
        ({}, "istio_delivery", None),
        ({"istioDelivery": "configmap"}, "istio_delivery", spec.IstioDelivery.CONFIGMAP),
        ({"istioDelivery": "native"}, "istio_delivery", spec.IstioDelivery.NATIVE),
        ({}, "verification_key", ""),
        ({"verificationKey": "-----BEGIN PUBLIC KEY-----"}, "verification_key", "-----BEGIN PUBLIC KEY-----"),
        (
            {"targetRef": {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}},
            "target_refs",
            (spec.TargetRef("gateway.networking.k8s.io", "Gateway", "gw", "shop"),),
        ),
        ({"dataPlane": "agent"}, "data_plane", spec.DataPlane.AGENT),
        ({}, "root_id", ""),
        ({"pluginName": "add_header"}, "root_id", "add_header"),
        ({}, "plugin_config", ""),
        ({"pluginConfig": {"b": 1, "a": [True, None]}}, "plugin_config", '{"a":[true,null],"b":1}'),
        ({"pluginConfig": {}}, "plugin_config", "{}"),
        ({}, "selector", ()),
        ({"selector": {"matchLabels": {"b": "2", "a": "1"}}}, "selector", (("a", "1"), ("b", "2"))),
        ({"selector": {}}, "selector", ()),
        ({}, "pull_secret", None),
        ({"imagePullSecret": "regcred"}, "pull_secret", "regcred"),
        ({}, "match", (spec.TrafficMatch(spec.MatchMode.CLIENT_AND_SERVER, ()),)),
        ({"match": []}, "match", (spec.TrafficMatch(spec.MatchMode.CLIENT_AND_SERVER, ()),)),
        (
            {"match": [{"mode": "SERVER", "ports": [{"number": 9080}, {"number": 80}, {"number": 80}]}, {}]},
            "match",
            (
                spec.TrafficMatch(spec.MatchMode.SERVER, (80, 9080)),
                spec.TrafficMatch(spec.MatchMode.CLIENT_AND_SERVER, ()),
            ),
        ),
        ({"match": [{"mode": "UNDEFINED"}]}, "match", (spec.TrafficMatch(spec.MatchMode.CLIENT_AND_SERVER, ()),)),
        (
            {"vmConfig": {"env": [{"name": "A", "value": "1"}, {"name": "POD_NAME", "valueFrom": "HOST"}]}},
            "env",
            (spec.EnvVar("A", spec.EnvSource.INLINE, "1"), spec.EnvVar("POD_NAME", spec.EnvSource.HOST, "")),
        ),
        (
            {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}]},
            "target_refs",
            (spec.TargetRef("gateway.networking.k8s.io", "Gateway", "gw", "shop"),),
        ),
    ],
)
def test_defaults_and_values(fields: dict[str, Any], attr: str, expected: object) -> None:
    assert getattr(spec.parse(body(**fields)), attr) == expected


def test_identity_fields() -> None:
    parsed = spec.parse(body())
    assert (parsed.namespace, parsed.name, parsed.generation, parsed.envoy_name) == ("shop", "hdr", 3, "shop.hdr")
    assert hash(parsed) == hash(spec.parse(body()))  # frozen and hashable: usable as a cache key


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"metadata": {"name": "x", "namespace": "n"}}, "spec is missing"),
        ({"metadata": {"name": "x"}, "spec": {"url": "oci://r/x"}}, "metadata.name and metadata.namespace"),
        (body(url=""), "spec.url is required"),
        (body(url="ftp://h/x.wasm"), "scheme 'ftp' is not oci, http, https or file"),
        (body(url="https://h/x y.wasm"), "contains whitespace"),
        (body(url=1), "spec.url must be a string"),
        (body(sha256="ABC"), "spec.sha256 'ABC' is not 64 lowercase hex digits"),
        (body(url="oci://r/x@sha256:abc"), "@sha256: must be followed by 64 lowercase hex digits"),
        (body(selector={"matchLabels": {"a": "b"}}, targetRefs=[{"kind": "Gateway", "name": "g"}]), "only one of"),
        (body(dataPlane="agent", targetRefs=[{"kind": "Gateway", "name": "g"}]), "need the istio data plane"),
        (body(dataPlane="linkerd"), "spec.dataPlane: 'linkerd' is not one of istio, agent"),
        (body(phase="LATE"), "spec.phase: 'LATE' is not one of"),
        (body(failStrategy="FAIL_SOMETIMES"), "spec.failStrategy"),
        (body(priority="high"), "spec.priority must be an integer in -2147483647..2147483647, got 'high'"),
        (body(priority=2**31), "spec.priority must be an integer in -2147483647..2147483647, got 2147483648"),
        (
            body(match=[{"ports": [{"number": 0}]}]),
            "spec.match[0].ports[0].number must be an integer in 1..65535, got 0",
        ),
        (body(vmConfig={"env": [{"value": "x"}]}), "spec.vmConfig.env[0].name: required"),
        (body(vmConfig={"env": [{"name": "A"}, {"name": "A"}]}), "duplicate name 'A'"),
        (body(vmConfig={"env": [{"name": "A", "valueFrom": "HOST", "value": "x"}]}), "only be set when valueFrom"),
        (body(vmConfig={"env": [{"name": f"E{i}"} for i in range(257)]}), "257 entries; at most 256"),
        (body(targetRefs=[{"kind": "Service", "name": f"s{i}"} for i in range(17)]), "17 entries; at most 16"),
        (body(selector={"matchLabels": {"a": 1}}), "spec.selector.matchLabels must be a mapping of strings to strings"),
        (body(pluginConfig=[1, 2]), "spec.pluginConfig must be an object"),
    ],
)
def test_rejected(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.SpecError, match=None) as info:
        spec.parse(doc)
    assert message in str(info.value)
    assert info.value.exit_code == 2


SCHEMA = {
    "type": "object",
    "required": ["header"],
    "properties": {"header": {"type": "string", "minLength": 1}, "ttl": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("config", "reason", "message"),
    [
        ({"header": "x-a"}, None, None),
        ({"header": "x-a", "ttl": 5}, None, None),
        (None, "InvalidPluginConfig", "pluginConfig: 'header' is a required property"),
        ({"header": ""}, "InvalidPluginConfig", "pluginConfig.header: '' should be non-empty"),
        ({"header": "x", "ttl": -1}, "InvalidPluginConfig", "pluginConfig.ttl: -1 is less than the minimum of 0"),
        ({"header": 1, "ttl": "x"}, "InvalidPluginConfig", "(and 1 more)"),
        ({"header": "x", "extra": 1}, "InvalidPluginConfig", "Additional properties are not allowed"),
    ],
)
def test_plugin_config_schema(config: dict[str, Any] | None, reason: str | None, message: str | None) -> None:
    fields: dict[str, Any] = {"pluginConfigSchema": SCHEMA}
    if config is not None:
        fields["pluginConfig"] = config
    if reason is None:
        assert spec.parse(body(**fields)).config_schema == spec.canonical_json(SCHEMA)
        return
    with pytest.raises(errors.SpecError) as info:
        spec.parse(body(**fields))
    assert info.value.reason == reason
    assert message is not None and message in str(info.value)


def test_invalid_schema_is_its_own_reason() -> None:
    with pytest.raises(errors.SpecError) as info:
        spec.parse(body(pluginConfigSchema={"type": "no-such-type"}, pluginConfig={}))
    assert info.value.reason == "InvalidPluginConfigSchema"


@pytest.mark.parametrize(
    ("url", "tag"),
    [
        ("oci://r/x:v1", "v1"),
        ("oci://r:5000/x", "latest"),
        ("oci://r:5000/x:v2", "v2"),
        (f"oci://r/x@sha256:{DIGEST}", None),
        (f"oci://r/x:v1@sha256:{DIGEST}", None),
    ],
)
def test_oci_tag(url: str, tag: str | None) -> None:
    assert spec.oci_tag(url) == tag


def test_match_rules() -> None:
    rules = [
        {"hosts": ["api.example.com", "*.example.org", "api.example.com"], "pluginConfig": {"k": 2}},
        {"paths": [{"prefix": "/v1/"}, {"exact": "/"}]},
    ]
    got = spec.parse(body(matchRules=rules, pluginConfig={"k": 1})).match_rules
    assert got == (
        spec.MatchRule(
            hosts=("api.example.com", "*.example.org"), path_prefixes=(), exact_paths=(), plugin_config='{"k":2}'
        ),
        spec.MatchRule(hosts=(), path_prefixes=("/v1/",), exact_paths=("/",), plugin_config=None),
    )
    assert spec.parse(body()).match_rules == ()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"matchRules": [{}]}, "needs hosts or paths"),
        ({"matchRules": [{"hosts": ["API.example.com"]}]}, "lower-case host"),
        ({"matchRules": [{"hosts": ["a.*.com"]}]}, "lower-case host"),
        ({"matchRules": [{"paths": [{"prefix": "v1"}]}]}, "must start with /"),
        ({"matchRules": [{"paths": [{"exact": "/a?b=1"}]}]}, "must start with /"),
        ({"matchRules": [{"paths": [{"prefix": "/", "exact": "/"}]}]}, "exactly one of prefix or exact"),
        ({"matchRules": [{"hosts": ["a"]}] * 17}, "at most 16"),
        ({"matchRules": [{"hosts": ["a"]}], "type": "NETWORK"}, "need type HTTP"),
        ({"matchRules": [{"hosts": ["a"], "pluginConfig": {}}], "dataPlane": "agent"}, "needs the istio data plane"),
        (
            {
                "matchRules": [{"hosts": ["a"], "pluginConfig": {"k": "x"}}],
                "pluginConfigSchema": {"properties": {"k": {"type": "integer"}}},
            },
            r"matchRules\[0\]\.pluginConfig\.k",
        ),
    ],
)
def test_match_rules_rejected(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.SpecError, match=message):
        spec.parse(body(**fields))
