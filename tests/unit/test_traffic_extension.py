"""TrafficExtension (Istio 1.30's kind, meshplug.io here) -> PluginSpec, and its admission check: wasm parsed with
WasmPlugin's meaning and defaults (messages name spec.wasm.*), lua as an inline script compiled at admission with
LuaJIT's error and line (the seed's broken snippet included)."""

from __future__ import annotations

from typing import Any

import pytest

from meshplug import errors, spec
from meshplug.controller import webhooks

pytestmark = pytest.mark.unit

LUA = "function envoy_on_request(h) h:headers():add('x', '1') end\n"


def te(**fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": {"name": "te", "namespace": "ns", "generation": 3},
        "spec": fields,
    }


def test_a_lua_extension() -> None:
    p = spec.parse(te(lua={"inlineCode": LUA}, phase="AUTHN", priority=5, selector={"matchLabels": {"app": "a"}}))
    assert (p.kind, p.lua, p.url, p.scheme) == (spec.KIND_TRAFFIC_EXTENSION, LUA, "", spec.Scheme.INLINE)
    assert p.phase is spec.Phase.AUTHN and p.priority == 5 and p.selector == (("app", "a"),)
    assert p.envoy_name == "ns.te" and p.generation == 3 and p.data_plane is spec.DataPlane.ISTIO
    assert p.sha256 is not None and len(p.sha256) == 64


def test_a_wasm_extension_means_what_a_wasmplugin_means() -> None:
    wasm = {"url": "registry.example/f:latest", "pluginConfig": {"a": 1}, "pluginName": "root"}
    p = spec.parse(te(wasm=wasm, phase="UNSPECIFIED", match=[{"mode": "SERVER"}], dataPlane="agent"))
    wp = spec.parse(
        {"metadata": {"name": "te", "namespace": "ns", "generation": 3},
         "spec": {**wasm, "match": [{"mode": "SERVER"}], "dataPlane": "agent"}}
    )  # fmt: skip
    assert p.kind == spec.KIND_TRAFFIC_EXTENSION and wp.kind == spec.KIND
    assert {**vars(p), "kind": None} == {**vars(wp), "kind": None}
    assert p.url == "oci://registry.example/f:latest" and p.pull_policy is spec.PullPolicy.ALWAYS
    assert p.phase is spec.Phase.UNSPECIFIED


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({}, "exactly one of spec.wasm or spec.lua"),
        ({"lua": {"inlineCode": LUA}, "wasm": {"url": "oci://r/x"}}, "exactly one of spec.wasm or spec.lua"),
        ({"wasm": {"url": "gopher://r/x"}}, "spec.wasm.url"),
        ({"wasm": {"url": "oci://r/x", "sha256": "XYZ"}}, "spec.wasm.sha256"),
        ({"wasm": {"url": "oci://r/x", "bogus": 1}}, "spec.wasm: unknown field(s) bogus"),
        ({"lua": {"inlineCode": ""}}, "spec.lua.inlineCode must be a non-empty string"),
        ({"lua": {"inlineCode": "-" * 65537}}, "at most 65536"),
        ({"lua": {"inlineCode": LUA}, "matchRules": [{"hosts": ["a.example"], "pluginConfig": {}}]},
         "a Lua filter has none"),
        ({"lua": {"inlineCode": LUA}, "url": "oci://r/x"}, "spec: unknown field(s) url"),
    ],
    ids=["neither", "both", "scheme", "sha256", "unknown-wasm-field", "empty-lua", "lua-too-large", "rule-config",
         "wasmplugin-field-at-top"],
)  # fmt: skip
def test_bad_extensions_name_the_field(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(errors.SpecError) as exc:
        spec.parse(te(**fields))
    assert words in exc.value.message


SEED_BROKEN = """function envoy_on_request(request_handle)
   request_handle:headers():add("NewHeader", "XYZ")
 end
 function envoy_on_response(response_handle)
  response_handle:logInfo("Log something")
 response_handle:headers:add("response_size",response_handle:body():length())
end
"""


def test_admission_refuses_lua_that_does_not_compile_with_the_error_and_line() -> None:
    webhooks.check_plugin(te(lua={"inlineCode": LUA}), ())
    with pytest.raises(errors.SpecError) as exc:
        webhooks.check_plugin(te(lua={"inlineCode": SEED_BROKEN}), ())
    assert exc.value.reason == "InvalidLua"
    assert exc.value.message == (
        "spec.lua.inlineCode does not compile (line 6): "
        """[string "function envoy_on_request(request_handle)..."]:6: function arguments expected near ':'"""
    )


def test_url_prefixes_do_not_apply_to_lua_but_do_to_wasm() -> None:
    webhooks.check_plugin(te(lua={"inlineCode": LUA}), ("https://allowed/",))
    with pytest.raises(errors.SpecError, match="is not allowed"):
        webhooks.check_plugin(te(wasm={"url": "oci://r/x"}), ("https://allowed/",))
