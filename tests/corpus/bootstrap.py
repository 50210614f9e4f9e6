"""The one Envoy bootstrap both data planes run for a spec: generated from its chain, or its own template.

Generated (spec without `bootstrap`): HTTP specs: listener -> http_connection_manager -> one
envoy.filters.http.wasm per plugin (chain order) -> router -> cluster `upstream` (a Lua filter of the spec is
the envoy.filters.http.lua that meshplug's istio-plane renderer makes of it as a TrafficExtension --
`meshplug.render.envoy.lua_filter` -- so every Lua spec also runs the rendered filter; its
`lua.<stat_prefix>.errors` counter is a metric of the run). Network specs: listener -> one
envoy.filters.network.wasm per plugin -> tcp_proxy -> cluster `upstream`. Every spec cluster becomes a
static cluster of the same name (for dispatch_http_call). A spec `node` becomes the bootstrap's `node`
(plugins read it as `xds.node.*`). Plugins run on V8 (Envoy) from local files.

Hand-written (spec `bootstrap: <file>`): the file with its placeholders expanded (`${PORT}` the listener the
runner sends to, `${ADMIN_PORT}`, `${CLUSTER_PORT:<name>}` a test-bed service's port, `${MODULE}` /
`${MODULE:<sdk>/<name>}` a built module's path). Pure: no files, no processes. Used by both planes
(tests/corpus/planes/envoy.py, tests/corpus/planes/agent.py): the agent runs the same file with
`meshplug run --envoy-config`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshplug import spec as mp_spec
from meshplug.render import envoy as mp_envoy
from tests.corpus import runner
from tests.corpus import spec as S
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs

RUNTIME = "envoy.wasm.runtime.v8"
HTTP_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
HTTP_LUA = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"


def plugin_config(plugin: S.PluginSpec, module_path: Path) -> dict[str, Any]:
    """envoy.extensions.wasm.v3.PluginConfig for one plugin."""
    vm_config: dict[str, Any] = {
        "vm_id": plugin.vm_id,
        "runtime": RUNTIME,
        "code": {"local": {"filename": str(module_path)}},
    }
    if plugin.vm_configuration:
        vm_config["configuration"] = {"@type": STRING_VALUE, "value": plugin.vm_configuration}
    if plugin.env:
        vm_config["environment_variables"] = {"key_values": dict(plugin.env)}
    config: dict[str, Any] = {"name": plugin.name, "root_id": plugin.root_id, "vm_config": vm_config}
    if plugin.configuration:
        config["configuration"] = {"@type": STRING_VALUE, "value": plugin.configuration}
    if plugin.fail_open:
        config["failure_policy"] = "FAIL_OPEN"
    return config


def lua_filter(name: str, stat_prefix: str, code: str) -> dict[str, Any]:
    """An envoy.filters.http.lua HTTP filter running `code` (its stats under `lua.<stat_prefix>.`)."""
    return {
        "name": name,
        "typed_config": {"@type": HTTP_LUA, "default_source_code": {"inline_string": code}, "stat_prefix": stat_prefix},
    }


#: the namespace the corpus's Lua filters are rendered in (their Envoy stat prefix is `<this>.<name>`)
RENDER_NAMESPACE = "corpus"


def rendered_lua_filter(plugin: S.PluginSpec) -> dict[str, Any]:
    """The spec's Lua filter as meshplug renders a TrafficExtension carrying it for the istio plane (what the
    EnvoyFilter route patches into sidecars), so every Lua spec also runs the rendered filter."""
    te = {
        "kind": mp_spec.KIND_TRAFFIC_EXTENSION,
        "metadata": {"name": plugin.name, "namespace": RENDER_NAMESPACE},
        "spec": {"lua": {"inlineCode": plugin.lua}},
    }
    return mp_envoy.lua_filter(mp_spec.parse(te))


def node_config(node: S.NodeSpec) -> dict[str, Any]:
    """config.core.v3.Node: id, cluster and metadata (a google.protobuf.Struct of string values)."""
    out: dict[str, Any] = {"id": node.id, "cluster": node.cluster}
    if node.metadata:
        out["metadata"] = dict(node.metadata)
    return out


def generated(
    spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], *, port: int, admin_port: int
) -> dict[str, Any]:
    """The bootstrap for a spec's `plugins`."""
    wasm_type = HTTP_WASM if spec.type == "http" else NETWORK_WASM
    filters = [
        rendered_lua_filter(p)
        if p.lua is not None
        else {
            "name": f"wasm.{i}.{p.name}",
            "typed_config": {"@type": wasm_type, "config": plugin_config(p, modules[p.module])},
        }
        for i, p in enumerate(spec.plugins)
    ]
    if spec.type == "http":
        listener = tb_envoy.http_listener("corpus", port, cluster=S.UPSTREAM_CLUSTER, http_filters=filters)
    else:
        listener = tb_envoy.tcp_listener("corpus", port, cluster=S.UPSTREAM_CLUSTER, network_filters=filters)
    clusters = [
        tb_envoy.static_cluster(name, ep.port, http2=ep.kind in S.HTTP2_SERVICES)
        for name, ep in sorted(services.items())
    ]
    config = tb_envoy.bootstrap(admin_port, [listener], clusters)
    if spec.node is not None:
        config["node"] = node_config(spec.node)
    return config


def expand(
    template: str, key: str, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], *, port: int,
    admin_port: int,
) -> dict[str, Any]:  # fmt: skip
    """A hand-written bootstrap with its placeholders expanded."""

    def value(m: re.Match[str]) -> str:
        name, _, arg = m.group(1).partition(":")
        if name == "PORT":
            return str(port)
        if name == "ADMIN_PORT":
            return str(admin_port)
        if name == "CLUSTER_PORT":
            if arg not in services:
                raise S.SpecFormatError(f"{key}: bootstrap names service {arg!r}; spec clusters: {sorted(services)}")
            return str(services[arg].port)
        return str(modules[arg or key])

    doc = yaml.safe_load(S.PLACEHOLDER.sub(value, template))
    if not isinstance(doc, dict):
        raise S.SpecFormatError(f"{key}: the bootstrap is not a YAML mapping")
    return doc


def render(
    spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], *, port: int, admin_port: int
) -> dict[str, Any]:
    """The bootstrap both planes run for `spec`."""
    if spec.bootstrap is not None:
        return expand(spec.bootstrap, spec.key, modules, services, port=port, admin_port=admin_port)
    return generated(spec, modules, services, port=port, admin_port=admin_port)


@dataclass(frozen=True)
class Written:
    """A rendered bootstrap on disk and the ports it listens on."""

    path: Path
    port: int
    admin_port: int


def write(
    spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], log_dir: Path, name: str
) -> Written:
    """`render` on two free ports, written as ``log_dir/<name>.json``: what a plane starts its proxy on."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port, admin_port = procs.free_port(), procs.free_port()
    config = render(spec, modules, services, port=port, admin_port=admin_port)
    return Written(tb_envoy.write_config(config, log_dir / name), port, admin_port)
