"""Every rendered EnvoyFilter, applied to a sidecar-shaped bootstrap as istiod would (tests/testbed/sidecar.py, an
imitation for speed: where the filters land in a real proxy is tests/integration/test_istio_*.py), passes real Envoy's
`--mode validate` with the real module bytes mounted from the rendered ConfigMap (V8 loads the module).
matchRules also run for real: the rendered filter in a running Envoy in front of the echo service, with a
header-setting corpus module, sets each rule's header only on the requests that rule matches."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from meshplug import limits, spec
from meshplug.render import istio, model
from tests.corpus import modules as corpus_modules
from tests.guests import minimal
from tests.testbed import envoy, procs, sidecar, upstream

SERVER = model.ModuleServer(host="meshplug-modules.meshplug-system.svc.cluster.local", port=8080)

# a minimal proxy-wasm module: starts, configures, passes every request and connection on
SMALL = model.Module.of(minimal.passthrough(network=True))
# over the ConfigMap limit: a data segment makes it large, so it is served remotely
LARGE = model.Module.of(
    minimal.passthrough(f'(data (i32.const 4096) "{"x" * (limits.CONFIGMAP_MAX_BYTES + 1)}")', network=True)
)

P = "shop.hdr"  # Envoy's name of the plugin under test
MX, AUTHN, RBAC, GRPC, CORS, STATS, ROUTER = (
    "istio.metadata_exchange",
    "istio_authn",
    "envoy.filters.http.rbac",
    "envoy.filters.http.grpc_stats",
    "envoy.filters.http.cors",
    "istio.stats",
    ("envoy.filters.http.router"),
)
HTTP = [MX, AUTHN, RBAC, GRPC, CORS, STATS, ROUTER]  # the sidecar's HTTP chain before any plugin
HCM, TCP = "envoy.filters.network.http_connection_manager", "envoy.filters.network.tcp_proxy"

# (id, spec fields, module, {listener: its whole chain afterwards}); HTTP filters for HTTP plugins, network
# filters for NETWORK plugins; listeners not named must be unchanged
CASES: list[tuple[str, dict[str, Any], model.Module, dict[str, list[str]]]] = [
    (
        "default-http",
        {},
        SMALL,
        {
            "inbound_http_9080": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER],
            "outbound_http_80": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER],
            "outbound_http_8080": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER],
        },
    ),
    (
        "authn-first",
        {"phase": "AUTHN", "priority": 10},
        SMALL,
        {"inbound_http_9080": [P, *HTTP], "outbound_http_80": [P, *HTTP], "outbound_http_8080": [P, *HTTP]},
    ),
    (
        "server-only-port",
        {"match": [{"mode": "SERVER", "ports": [{"number": 9080}]}], "failStrategy": "FAIL_OPEN"},
        SMALL,
        {"inbound_http_9080": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER]},
    ),
    (
        "client-port",
        {"match": [{"mode": "CLIENT", "ports": [{"number": 8080}]}], "failStrategy": "FAIL_RELOAD"},
        SMALL,
        {"outbound_http_8080": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER]},
    ),
    (
        "config-env-rootid",
        {
            "pluginName": "my_root",
            "pluginConfig": {"header": "x-meshplug", "values": [1, "two", {"three": True}]},
            "vmConfig": {"env": [{"name": "MODE", "value": "strict"}, {"name": "HOSTNAME", "valueFrom": "HOST"}]},
            "phase": "STATS",
            "match": [{"mode": "CLIENT", "ports": [{"number": 80}]}],
        },
        SMALL,
        {"outbound_http_80": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER]},
    ),
    (
        "network",
        {"type": "NETWORK"},
        SMALL,
        {
            "inbound_tcp_9090": [P, TCP],
            "inbound_http_9080": [P, HCM],
            "outbound_http_80": [P, HCM],
            "outbound_http_8080": [P, HCM],
        },
    ),
    (
        "network-authn-server",
        {"type": "NETWORK", "phase": "AUTHN", "match": [{"mode": "SERVER"}]},
        SMALL,
        {"inbound_tcp_9090": [P, TCP], "inbound_http_9080": [P, HCM]},
    ),
    (
        "match-rules",
        {
            "pluginConfig": {"who": "default"},
            "matchRules": [
                {"hosts": ["api.example.com", "*.example.org"], "pluginConfig": {"who": "api"}},
                {"paths": [{"prefix": "/v1/"}, {"exact": "/healthz"}]},
                {"hosts": ["web"], "paths": [{"exact": "/"}], "pluginConfig": {"who": "web-root"}},
            ],
            "failStrategy": "FAIL_OPEN",
        },
        SMALL,
        {
            "inbound_http_9080": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER],
            "outbound_http_80": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER],
            "outbound_http_8080": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER],
        },
    ),
    (
        "match-rules-remote-large-module",
        {"matchRules": [{"paths": [{"prefix": "/a"}]}], "match": [{"mode": "CLIENT", "ports": [{"number": 80}]}]},
        LARGE,
        {"outbound_http_80": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER]},
    ),
    (
        "remote-large-module",
        {"failStrategy": "FAIL_OPEN", "match": [{"mode": "CLIENT", "ports": [{"number": 80}]}]},
        LARGE,
        {"outbound_http_80": [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER]},
    ),
]


def _plugin(fields: dict[str, Any]) -> spec.PluginSpec:
    return spec.parse({"metadata": {"name": "hdr", "namespace": "shop"}, "spec": {"url": "oci://r/hdr:v1", **fields}})


def _sidecar_config(
    plugin: spec.PluginSpec, module: model.Module, tmp_path: Path
) -> tuple[dict[str, Any], istio.IstioObjects]:
    objects = istio.render(plugin, module, SERVER)
    ef = objects.envoy_filter
    if objects.config_map is not None:
        # the kubelet mounts the ConfigMap at the rendered mount dir; here that dir is a temp dir
        assert isinstance(objects.code, model.LocalCode)
        mounted = sidecar.mount_config_map(objects.config_map, tmp_path / "mnt")
        raw = repr(ef)  # every filename in the patch lives under the mount dir
        assert objects.code.mount_dir in raw
        ef = _replace_prefix(ef, objects.code.mount_dir, str(mounted))
    config = sidecar.bootstrap(extra_clusters=[SERVER.istio_cluster])
    assert sidecar.apply_envoy_filter(config, ef) > 0
    return config, objects


def _replace_prefix(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _replace_prefix(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_prefix(v, old, new) for v in value]
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    return value


@pytest.mark.parametrize(("fields", "module", "chains"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rendered_filter_is_valid_envoy_config(
    fields: dict[str, Any], module: model.Module, chains: dict[str, list[str]], tmp_path: Path
) -> None:
    plugin = _plugin(fields)
    config, objects = _sidecar_config(plugin, module, tmp_path)
    network = plugin.type is spec.PluginType.NETWORK
    pristine = sidecar.bootstrap(extra_clusters=[])
    for lst in sidecar.LISTENERS:
        got = sidecar.chain_names(config, lst.name, network=network)
        assert got == chains.get(lst.name, sidecar.chain_names(pristine, lst.name, network=network)), lst.name
    assert (objects.config_map is None) == (not module.fits_config_map)
    envoy.validate_config(envoy.write_config(config, tmp_path / "sidecar"))


def test_validation_catches_a_broken_module(tmp_path: Path) -> None:
    """The check has teeth: a ConfigMap whose bytes are not the module fails Envoy's validation."""
    plugin = _plugin({})
    config, _ = _sidecar_config(plugin, SMALL, tmp_path)
    (tmp_path / "mnt" / f"{SMALL.sha256}.wasm").write_bytes(b"\x00asm-not-really")
    with pytest.raises(envoy.EnvoyConfigError, match=r"Unable to create Wasm plugin shop\.hdr"):
        envoy.validate_config(envoy.write_config(config, tmp_path / "sidecar"))


def test_validation_catches_an_unknown_failure_policy(tmp_path: Path) -> None:
    plugin = _plugin({})
    config, _ = _sidecar_config(plugin, SMALL, tmp_path)
    hcm = config["static_resources"]["listeners"][2]["filter_chains"][0]["filters"][0]
    wasm = next(f for f in hcm["typed_config"]["http_filters"] if f["name"] == P)
    wasm["typed_config"]["config"]["failure_policy"] = "FAIL_SOMETIMES"
    with pytest.raises(envoy.EnvoyConfigError, match="FAIL_SOMETIMES"):
        envoy.validate_config(envoy.write_config(config, tmp_path / "sidecar"))


def test_match_rules_run_only_where_they_match(
    tmp_path: Path,
    envoy_runner: Callable[[Mapping[str, Any]], envoy.Envoy],
    upstream_service: Callable[[str], upstream.Service],
) -> None:
    built = corpus_modules.module("rust/header_rules")  # {"request": {"set": {name: value}}}: sets request headers
    module = model.Module.of(built.path.read_bytes())

    def sets(value: str) -> dict[str, Any]:
        return {"request": {"set": {"x-rule": value}}}

    plugin = _plugin(
        {
            "pluginConfig": sets("default"),
            "matchRules": [
                {"hosts": ["api.example.com"], "pluginConfig": sets("api")},
                {"hosts": ["*.example.org"], "paths": [{"prefix": "/v1/"}], "pluginConfig": sets("org-v1")},
                {"paths": [{"exact": "/healthz"}]},  # the plugin's own configuration
            ],
        }
    )
    objects = istio.render(plugin, module, SERVER)
    assert objects.config_map is not None and isinstance(objects.code, model.LocalCode)
    mounted = sidecar.mount_config_map(objects.config_map, tmp_path / "mnt")
    ef = _replace_prefix(objects.envoy_filter, objects.code.mount_dir, str(mounted))
    rendered = ef["spec"]["configPatches"][0]["patch"]["value"]  # the filter the sidecar would get
    echo = upstream_service("echo")
    port = procs.free_port()
    listener = envoy.http_listener("in", port, cluster="echo", http_filters=[rendered])
    proxy = envoy_runner(envoy.bootstrap(procs.free_port(), [listener], [envoy.static_cluster("echo", echo.port)]))
    cases = [
        ("api.example.com", "/anything", "api"),
        ("API.example.com:8080", "/", "api"),  # case and port of :authority ignored
        ("a.example.org", "/v1/x", "org-v1"),
        ("a.b.example.org:443", "/v1/", "org-v1"),
        ("a.example.org", "/v2/x", None),  # host matches, path does not
        ("example.org", "/v1/x", None),  # *.example.org needs a subdomain
        ("other", "/healthz", "default"),
        ("other", "/healthz?probe=1", "default"),  # exact path ignores the query
        ("other", "/healthz/x", None),
        ("other", "/", None),
        ("api.example.com.evil", "/", None),
    ]
    got = []
    for host, path, _ in cases:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (host, path, resp.status, body[:200])
        finally:
            conn.close()
        record = upstream.decode_record(body)
        values = [v for k, v in record["headers"] if k.lower() == "x-rule"]
        got.append((host, path, values[0] if values else None))
    assert got == cases, proxy.proc.log()[-3000:]
