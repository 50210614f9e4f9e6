"""PluginSpec + Code -> the Envoy wasm filter (``{name, typed_config}``) for an HTTP or network filter chain; a
TrafficExtension's Lua -> Envoy's Lua filter (``envoy.filters.http.lua``, the script inline as
``default_source_code``, stats under ``<namespace>.<name>``).

Called by `meshplug.render.istio` (the EnvoyFilter patch value) and by tests that embed the filter in a
bootstrap for ``envoy --mode validate``. Pure: no I/O.

Mapping (Istio's WasmPlugin -> envoy.extensions.wasm.v3.PluginConfig):
- name ``<namespace>.<name>``, root_id ``pluginName``, configuration = pluginConfig JSON as a StringValue;
- failStrategy FAIL_CLOSE / FAIL_OPEN / FAIL_RELOAD -> failure_policy FAIL_CLOSED / FAIL_OPEN / FAIL_RELOAD;
- vmConfig.env INLINE -> environment_variables.key_values, HOST -> host_env_keys;
- code: ``local.filename`` (ConfigMap-mounted) or ``remote`` (http_uri + cluster + sha256 + retries).

matchRules (`plugin_filter`): the filter becomes an ``envoy.filters.http.composite`` wrapped in an ExtensionWithMatcher
whose matcher list has one entry per rule, in order (first match wins): a predicate on the request's
``:authority`` and ``:path`` headers, and as action an ExecuteFilterAction running the wasm filter with the
rule's configuration. A request matching no rule runs no plugin (composite without an action passes it on).
A rule with its own pluginConfig gets its own VM (vm_id ``<name>.rule<i>``): modules that keep their
configuration in globals (one VM = one configuration) stay correct; rules with the plugin's own configuration
share the plugin's VM. String matchers only (no regex: RE2's program-size limit would reject long lists):
host ``h`` = ``:authority`` equal to ``h`` or starting with ``h:`` (a port), ignoring case; ``*.d`` = ending
in ``.d`` or containing ``.d:``; path prefix = ``:path`` prefix (as Envoy's route ``prefix``); exact path =
``:path`` equal to it or starting with ``<path>?`` (a query string). Checked and run by real Envoy 1.40 in
tests/integration/test_render_envoy_validate.py.
"""

from __future__ import annotations

from typing import Any

from meshplug import limits, spec
from meshplug.render import model

HTTP_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
HTTP_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
NETWORK_WASM = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
EXTENSION_WITH_MATCHER = "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
COMPOSITE = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite"
EXECUTE_FILTER = "type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
RUNTIME = "envoy.wasm.runtime.v8"

FAILURE_POLICY = {
    spec.FailStrategy.FAIL_CLOSE: "FAIL_CLOSED",
    spec.FailStrategy.FAIL_OPEN: "FAIL_OPEN",
    spec.FailStrategy.FAIL_RELOAD: "FAIL_RELOAD",
}


def code_source(code: model.Code) -> dict[str, Any]:
    """vm_config.code for a local file (mounted, or the proxy's own) or a remote fetch."""
    if isinstance(code, model.LocalCode | model.ProxyFile):
        return {"local": {"filename": code.filename}}
    return {
        "remote": {
            "http_uri": {"uri": code.uri, "cluster": code.cluster, "timeout": f"{limits.REMOTE_CODE_TIMEOUT_S}s"},
            "sha256": code.sha256,
            "retry_policy": {"num_retries": limits.REMOTE_CODE_RETRIES},
        }
    }


def plugin_config(plugin: spec.PluginSpec, code: model.Code) -> dict[str, Any]:
    """envoy.extensions.wasm.v3.PluginConfig."""
    vm: dict[str, Any] = {
        # one VM per plugin (Envoy also keys VMs by the code's hash, so a new module gets a new VM)
        "vm_id": plugin.envoy_name,
        "runtime": RUNTIME,
        "code": code_source(code),
    }
    inline = {e.name: e.value for e in plugin.env if e.source is spec.EnvSource.INLINE}
    host = [e.name for e in plugin.env if e.source is spec.EnvSource.HOST]
    if inline or host:
        env: dict[str, Any] = {}
        if host:
            env["host_env_keys"] = host
        if inline:
            env["key_values"] = inline
        vm["environment_variables"] = env
    config: dict[str, Any] = {
        "name": plugin.envoy_name,
        "root_id": plugin.root_id,
        "vm_config": vm,
        "failure_policy": FAILURE_POLICY[plugin.fail_strategy],
    }
    if plugin.plugin_config:
        config["configuration"] = {"@type": STRING_VALUE, "value": plugin.plugin_config}
    return config


def lua_filter(plugin: spec.PluginSpec) -> dict[str, Any]:
    """A TrafficExtension's Lua as Envoy's Lua filter (what istiod renders for it, plus a stat prefix)."""
    assert plugin.lua is not None
    return {
        "name": plugin.envoy_name,
        "typed_config": {
            "@type": HTTP_LUA,
            "default_source_code": {"inline_string": plugin.lua},
            "stat_prefix": plugin.envoy_name,
        },
    }


def wasm_filter(plugin: spec.PluginSpec, code: model.Code) -> dict[str, Any]:
    """The filter entry (``name`` + ``typed_config``) of an http_filters or filters list."""
    type_url = NETWORK_WASM if plugin.type is spec.PluginType.NETWORK else HTTP_WASM
    return {"name": plugin.envoy_name, "typed_config": {"@type": type_url, "config": plugin_config(plugin, code)}}


def plugin_filter(plugin: spec.PluginSpec, code: model.Code | None) -> dict[str, Any]:
    """The plugin's HTTP/network filter entry: `wasm_filter` (or `lua_filter`; `code` None), or with matchRules
    the composite filter that runs it only for matching requests."""
    if not plugin.match_rules:
        return lua_filter(plugin) if plugin.lua is not None else wasm_filter(plugin, _code(code))
    matchers = []
    for i, rule in enumerate(plugin.match_rules):
        if plugin.lua is not None:
            action = lua_filter(plugin)
        else:
            config = plugin_config(plugin, _code(code))
            if rule.plugin_config is not None:
                config["vm_config"]["vm_id"] = f"{plugin.envoy_name}.rule{i}"
                config["configuration"] = {"@type": STRING_VALUE, "value": rule.plugin_config}
            action = {"name": plugin.envoy_name, "typed_config": {"@type": HTTP_WASM, "config": config}}
        matchers.append(
            {
                "predicate": _rule_predicate(rule),
                "on_match": {
                    "action": {
                        "name": f"{plugin.envoy_name}.rule{i}",
                        "typed_config": {"@type": EXECUTE_FILTER, "typed_config": action},
                    }
                },
            }
        )
    return {
        "name": plugin.envoy_name,
        "typed_config": {
            "@type": EXTENSION_WITH_MATCHER,
            "extension_config": {"name": "envoy.filters.http.composite", "typed_config": {"@type": COMPOSITE}},
            "xds_matcher": {"matcher_list": {"matchers": matchers}},
        },
    }


def _code(code: model.Code | None) -> model.Code:
    if code is None:
        raise ValueError("a wasm plugin's filter needs its code")
    return code


def _header(name: str, match: dict[str, Any]) -> dict[str, Any]:
    return {
        "single_predicate": {
            "input": {"name": f"request-header{name}", "typed_config": {"@type": HEADER_INPUT, "header_name": name}},
            "value_match": match,
        }
    }


def _any(predicates: list[dict[str, Any]]) -> dict[str, Any]:
    return predicates[0] if len(predicates) == 1 else {"or_matcher": {"predicate": predicates}}


def _rule_predicate(rule: spec.MatchRule) -> dict[str, Any]:
    parts = []
    if rule.hosts:
        hosts = []
        for host in rule.hosts:
            if host.startswith("*."):
                domain = host[1:]  # ".example.com"
                hosts += [_header(":authority", {"suffix": domain, "ignore_case": True})]
                hosts += [_header(":authority", {"contains": f"{domain}:", "ignore_case": True})]
            else:
                hosts += [_header(":authority", {"exact": host, "ignore_case": True})]
                hosts += [_header(":authority", {"prefix": f"{host}:", "ignore_case": True})]
        parts.append(_any(hosts))
    if rule.path_prefixes or rule.exact_paths:
        paths = [_header(":path", {"prefix": p}) for p in rule.path_prefixes]
        for path in rule.exact_paths:
            paths += [_header(":path", {"exact": path}), _header(":path", {"prefix": f"{path}?"})]
        parts.append(_any(paths))
    return parts[0] if len(parts) == 1 else {"and_matcher": {"predicate": parts}}
