"""PluginSpec + Code -> the Envoy wasm filter (``{name, typed_config}``) for an HTTP or network filter chain.

Called by `meshplug.render.istio` (the EnvoyFilter patch value) and by tests that embed the filter in a
bootstrap for ``envoy --mode validate``. Pure: no I/O.

Mapping (Istio's WasmPlugin -> envoy.extensions.wasm.v3.PluginConfig):
- name ``<namespace>.<name>``, root_id ``pluginName``, configuration = pluginConfig JSON as a StringValue;
- failStrategy FAIL_CLOSE / FAIL_OPEN / FAIL_RELOAD -> failure_policy FAIL_CLOSED / FAIL_OPEN / FAIL_RELOAD;
- vmConfig.env INLINE -> environment_variables.key_values, HOST -> host_env_keys;
- code: ``local.filename`` (ConfigMap-mounted) or ``remote`` (http_uri + cluster + sha256 + retries).
"""

from __future__ import annotations

from typing import Any

from meshplug import limits, spec
from meshplug.render import model

HTTP_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
RUNTIME = "envoy.wasm.runtime.v8"

FAILURE_POLICY = {
    spec.FailStrategy.FAIL_CLOSE: "FAIL_CLOSED",
    spec.FailStrategy.FAIL_OPEN: "FAIL_OPEN",
    spec.FailStrategy.FAIL_RELOAD: "FAIL_RELOAD",
}


def code_source(code: model.Code) -> dict[str, Any]:
    """vm_config.code for a local file or a remote fetch."""
    if isinstance(code, model.LocalCode):
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


def wasm_filter(plugin: spec.PluginSpec, code: model.Code) -> dict[str, Any]:
    """The filter entry (``name`` + ``typed_config``) of an http_filters or filters list."""
    type_url = NETWORK_WASM if plugin.type is spec.PluginType.NETWORK else HTTP_WASM
    return {"name": plugin.envoy_name, "typed_config": {"@type": type_url, "config": plugin_config(plugin, code)}}
