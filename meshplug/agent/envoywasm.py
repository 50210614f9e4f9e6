"""Envoy's wasm and Lua configurations as the agent's plugins (`meshplug.protocol.ExtensionConfig`).

Called by `meshplug.agent.bootstrap` for a listener's wasm and Lua filters and the bootstrap's wasm services.
A wasm filter's whole PluginConfig is read: `name`, `root_id`, `vm_config` (`vm_id`, `runtime` -- v8,
wasmtime, wamr, wavm or null, all run on wasmtime --, `code.local` filename / inline_bytes / inline_string,
`code.remote` http_uri + sha256, `configuration`, `allow_precompiled`, `environment_variables` key_values and
host_env_keys), `configuration`, `fail_open` / `failure_policy`. A configuration (or VM configuration) reaches
the plugin as Envoy hands it over: a StringValue's string, a BytesValue's bytes, any other message (a Struct)
as its serialized protobuf. A plugin `configuration` given as a plain string (envoy-wasm's v2 form, in
wasme's path_rewrite example) is accepted with a warning, though Envoy 1.40 refuses it.

Inline module code (inline_bytes / inline_string) is written once to a content-addressed file under the
read's inline-module directory.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from pathlib import Path
from typing import Any

from meshplug import files, protocol
from meshplug.agent import envoyjson, metadata

#: wasm runtimes Envoy names; the agent runs every module on wasmtime
RUNTIMES = frozenset(
    {
        "",
        "envoy.wasm.runtime.v8",
        "envoy.wasm.runtime.wasmtime",
        "envoy.wasm.runtime.wamr",
        "envoy.wasm.runtime.wavm",
        "envoy.wasm.runtime.null",
    }
)
_FAILURE_POLICIES = {
    "FAIL_UNSPECIFIED": protocol.FailStrategy.FAIL_CLOSE,
    "FAIL_CLOSED": protocol.FailStrategy.FAIL_CLOSE,
    "FAIL_OPEN": protocol.FailStrategy.FAIL_OPEN,
    "FAIL_RELOAD": protocol.FailStrategy.FAIL_RELOAD,
}


def _any_bytes(obj: envoyjson.Message, name: str) -> bytes:
    """A plugin/VM configuration as Envoy hands it to the plugin: a StringValue's string, a BytesValue's
    bytes, a Struct serialized; a plain string is envoy-wasm's v2 form (accepted, Envoy 1.40 refuses it)."""
    raw = obj.raw(name)
    path = obj.at(name)
    if raw is None or raw == {}:
        return b""
    if isinstance(raw, str):
        return raw.encode()
    any_ = envoyjson.Message(raw, path)
    url = any_.need_text("@type", "is required (google.protobuf.StringValue, BytesValue or Struct)")
    kind = envoyjson.type_url(url, any_.at("@type"))
    value = any_.raw("value")
    any_.done()
    if kind == envoyjson.STRING_VALUE:
        if not isinstance(value, str | None):
            raise envoyjson.error(any_.at("value"), f"must be a string, got {envoyjson.type_name(value)}")
        return (value or "").encode()
    if kind == envoyjson.BYTES_VALUE:
        if not isinstance(value, str | None):
            raise envoyjson.error(any_.at("value"), f"must be base64 text, got {envoyjson.type_name(value)}")
        return envoyjson.base64_bytes(value or "", any_.at("value"))
    if kind == envoyjson.STRUCT:
        return metadata.struct_from_json(value if value is not None else {}, any_.at("value")).proto()
    raise envoyjson.error(any_.at("@type"), f"{kind}: configurations are StringValue, BytesValue or Struct")


def _as_text(data: bytes) -> str:
    """Bytes in the str form ExtensionConfig carries (lossless for any bytes: surrogateescape)."""
    return data.decode("utf-8", "surrogateescape")


def _plugin_config(obj: envoyjson.Message, ctx: envoyjson.Read) -> dict[str, Any]:
    """An envoy.extensions.wasm.v3.PluginConfig as ExtensionConfig fields."""
    name = obj.text("name")
    root_id = obj.text("root_id")
    if isinstance(obj.fields.get("configuration"), str):
        ctx.warnings.append(
            f"{obj.at('configuration')}: a plain string (envoy-wasm's v2 form; Envoy 1.40 refuses it: "
            '"invalid JSON ... configuration: message google.protobuf.Any"); handed to the plugin as is'
        )
    configuration = _any_bytes(obj, "configuration")
    strategy = _FAILURE_POLICIES[obj.enum("failure_policy", {k: k for k in _FAILURE_POLICIES}, "FAIL_UNSPECIFIED")]
    if obj.flag("fail_open", False):
        if obj.has("failure_policy"):
            raise envoyjson.error(obj.at("fail_open"), "give fail_open or failure_policy, not both")
        strategy = protocol.FailStrategy.FAIL_OPEN
    vm = obj.obj("vm_config")
    if vm is None:
        raise envoyjson.error(obj.at("vm_config"), "is required")
    vm_id = vm.text("vm_id")
    runtime = vm.text("runtime")
    if runtime not in RUNTIMES:
        raise envoyjson.error(
            vm.at("runtime"), f"{runtime!r} is not a wasm runtime Envoy names ({', '.join(sorted(RUNTIMES))})"
        )
    url, sha256 = _code(vm.need("code"), ctx, runtime)
    vm_configuration = _any_bytes(vm, "configuration")
    vm.flag("allow_precompiled", False)  # wasmtime modules carry no precompiled section the agent could use
    env: dict[str, str] = {}
    host_keys: list[str] = []
    ev = vm.obj("environment_variables")
    if ev is not None:
        for key, kpath in ev.items("host_env_keys"):
            if not isinstance(key, str) or not key:
                raise envoyjson.error(kpath, "must be a variable name")
            host_keys.append(key)
        kv = ev.raw("key_values") or {}
        if not isinstance(kv, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in kv.items()):
            raise envoyjson.error(ev.at("key_values"), "must be a mapping of strings")
        env.update(kv)
        ev.done()
        both = sorted(set(env) & set(host_keys))
        if both:
            raise envoyjson.error(ev.path, f"{both[0]} is in both key_values and host_env_keys")
    vm.done()
    obj.done()
    return {
        "name": name,
        "root_id": root_id,
        "url": url,
        "sha256": sha256,
        "configuration": _as_text(configuration),
        "vm_env": tuple(sorted(env.items())),
        "fail_strategy": strategy,
        "vm_id": vm_id,
        "vm_configuration": _as_text(vm_configuration),
        "host_env_keys": tuple(host_keys),
    }


def _code(obj: envoyjson.Message, ctx: envoyjson.Read, runtime: str) -> tuple[str, str]:
    """code (AsyncDataSource) -> (url, sha256) for the loader."""
    local, remote = obj.obj("local"), obj.obj("remote")
    obj.done()
    if (local is None) == (remote is None):
        raise envoyjson.error(obj.path, "needs exactly one of local, remote")
    if remote is not None:
        uri = remote.need("http_uri")
        url = uri.text("uri")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https") or not urllib.parse.urlsplit(url).hostname:
            raise envoyjson.error(uri.at("uri"), f"{url!r} is not an http(s) URL")
        uri.text("cluster")  # the agent fetches the URL itself (meshplug.fetch: SSRF guard, cache, sha256)
        uri.duration("timeout", 0)
        uri.done()
        sha256 = remote.text("sha256").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise envoyjson.error(remote.at("sha256"), "is required: 64 hex digits")
        remote.done()
        return url, sha256
    assert local is not None
    if local.has("filename"):
        path = Path(local.text("filename")).expanduser().absolute()
        local.done()
        if not path.is_file():
            raise envoyjson.error(local.at("filename"), f"{path}: no such file")
        return path.as_uri(), ""
    if runtime == "envoy.wasm.runtime.null" and local.has("inline_string"):
        name = local.text("inline_string")
        raise envoyjson.error(
            local.at("inline_string"), f"{name!r}: the agent has no NullVM plugins (give a wasm module)"
        )
    data = envoyjson.data_source(local, allow_file=False)
    digest = hashlib.sha256(data).hexdigest()
    path = ctx.inline_dir / f"{digest}.wasm"
    if not path.exists():
        try:
            files.write_atomic(path, data)
        except OSError as exc:
            raise envoyjson.error(
                local.path, f"cannot keep the inline module in {ctx.inline_dir}: {exc.strerror}"
            ) from None
    return path.as_uri(), digest


def wasm_filter(
    body: envoyjson.Message, ctx: envoyjson.Read, listener: str, kind: protocol.PluginType
) -> protocol.ExtensionConfig:
    """An envoy.filters.http.wasm or envoy.filters.network.wasm filter on `listener`."""
    fields = _plugin_config(body.need("config"), ctx)
    body.done()
    return protocol.ExtensionConfig(type=kind, listeners=(listener,), **fields)


def lua_filter(body: envoyjson.Message, name: str, listener: str) -> protocol.ExtensionConfig:
    """An envoy.filters.http.lua filter: its stats (`lua.<stat_prefix>.errors`) are named by its stat_prefix."""
    name = body.text("stat_prefix") or name
    code = body.text("inline_code")
    source = body.obj("default_source_code")
    if source is not None:
        if code:
            raise envoyjson.error(body.path, "give inline_code or default_source_code, not both")
        code = envoyjson.data_source(source, allow_file=True).decode(errors="replace")
    body.done()
    if not code:
        raise envoyjson.error(body.path, "needs inline_code or default_source_code")
    return protocol.ExtensionConfig(
        name=name, root_id="", url="", sha256=protocol.lua_sha256(code), lua=code, listeners=(listener,)
    )


def wasm_service(raw: Any, path: str, ctx: envoyjson.Read) -> protocol.ExtensionConfig:
    """A bootstrap_extensions[] entry: envoy.bootstrap.wasm (WasmService), a singleton plugin."""
    obj = envoyjson.Message(raw, path)
    obj.text("name")
    kind, body = envoyjson.typed(obj, "typed_config")
    obj.done()
    if kind != envoyjson.WASM_SERVICE:
        raise envoyjson.error(f"{path}.typed_config", f"{kind}: only envoy.bootstrap.wasm (WasmService) is supported")
    fields = _plugin_config(body.need("config"), ctx)
    body.flag("singleton", False)  # one VM either way: the agent runs one worker
    body.text("stat_prefix")
    body.done()
    return protocol.ExtensionConfig(**fields)
