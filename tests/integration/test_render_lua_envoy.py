"""A TrafficExtension's Lua rendered for the istio plane's EnvoyFilter route and run by real Envoy 1.40: placed by
phase in a sidecar-shaped chain (`envoy --mode validate` accepts it), and the rendered filter itself in front of the
echo service does what the script says -- seed 004's EnvoyFilter example and the Lua corpus's header spec, now
expressed as meshplug TrafficExtensions."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from meshplug import spec
from meshplug.render import istio, model
from tests.corpus import spec as corpus_spec
from tests.integration.test_render_envoy_validate import AUTHN, CORS, GRPC, MX, RBAC, ROUTER, SERVER, STATS
from tests.testbed import envoy, procs, sidecar, upstream

pytestmark = pytest.mark.integration

SEED = (corpus_spec.FILTERS_DIR / "lua" / "seed_chapter_header" / "filter.lua").read_text()
HEADERS = (corpus_spec.FILTERS_DIR / "lua" / "headers" / "filter.lua").read_text()
P = "shop.lua"


def extension(code: str, **fields: Any) -> spec.PluginSpec:
    return spec.parse(
        {"kind": "TrafficExtension", "metadata": {"name": "lua", "namespace": "shop"},
         "spec": {"lua": {"inlineCode": code}, **fields}}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "inbound"),
    [
        # the sidecar's chain and Istio's anchors as test_render_envoy_validate has them (seen on the real istiod by
        # test_istio_placement): unspecified after rbac, AUTHN first, AUTHZ before rbac
        ({}, [MX, AUTHN, RBAC, P, GRPC, CORS, STATS, ROUTER]),
        ({"phase": "AUTHN"}, [P, MX, AUTHN, RBAC, GRPC, CORS, STATS, ROUTER]),
        ({"phase": "AUTHZ", "match": [{"mode": "SERVER"}]}, [MX, AUTHN, P, RBAC, GRPC, CORS, STATS, ROUTER]),
    ],
    ids=["unspecified", "authn", "authz-server"],
)
def test_lua_is_placed_by_phase_and_valid_for_envoy(fields: dict[str, Any], inbound: list[str], tmp_path: Path) -> None:
    objects = istio.render(extension(SEED, **fields), model.Module.of(SEED.encode()), SERVER)
    assert objects.config_map is None and objects.code is None  # the script is inline: nothing to mount
    ef = objects.envoy_filter
    assert ef["metadata"]["annotations"][model.DIGEST_ANNOTATION] == f"sha256:{extension(SEED).sha256}"
    config = sidecar.bootstrap(extra_clusters=[])
    assert sidecar.apply_envoy_filter(config, ef) > 0
    assert sidecar.chain_names(config, "inbound_http_9080", network=False) == inbound
    envoy.validate_config(envoy.write_config(config, tmp_path / "sidecar"))


def test_a_script_that_does_not_compile_fails_envoys_validation_too(tmp_path: Path) -> None:
    """The oracle agrees with the webhook: the seed's snippet as printed is refused by Envoy itself."""
    broken = (corpus_spec.FILTERS_DIR / "lua" / "seed_response_size" / "broken.lua").read_text()
    objects = istio.render(extension(broken), model.Module.of(broken.encode()), SERVER)
    config = sidecar.bootstrap(extra_clusters=[])
    sidecar.apply_envoy_filter(config, objects.envoy_filter)
    with pytest.raises(envoy.EnvoyConfigError, match=r"script load error: .*:8: function arguments expected"):
        envoy.validate_config(envoy.write_config(config, tmp_path / "sidecar"))


def _request(port: int, path: str, headers: Mapping[str, str]) -> tuple[int, dict[str, str], dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers))
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, upstream.decode_record(body)
    finally:
        conn.close()


def test_the_rendered_filter_runs_the_script(
    envoy_runner: Callable[[Mapping[str, Any]], envoy.Envoy], upstream_service: Callable[[str], upstream.Service]
) -> None:
    echo = upstream_service("echo")
    filters = []
    for name, code, phase in (("seed", SEED, "AUTHN"), ("headers", HEADERS, "STATS")):
        plugin = spec.parse(
            {"kind": "TrafficExtension", "metadata": {"name": name, "namespace": "shop"},
             "spec": {"lua": {"inlineCode": code}, "phase": phase}}
        )  # fmt: skip
        ef = istio.render(plugin, model.Module.of(code.encode()), SERVER).envoy_filter
        filters.append(ef["spec"]["configPatches"][0]["patch"]["value"])  # what the sidecar would get
    port = procs.free_port()
    listener = envoy.http_listener("in", port, cluster="echo", http_filters=filters)
    proxy = envoy_runner(envoy.bootstrap(procs.free_port(), [listener], [envoy.static_cluster("echo", echo.port)]))
    status, headers, seen = _request(port, "/get", {"x-secret": "s", "x-mode": "a"})
    assert status == 200, proxy.proc.log()[-2000:]
    upstream_headers = {k.lower(): v for k, v in seen["headers"]}
    assert upstream_headers["x-chaptername"] == "ExtendingIstioDataPlane"
    assert upstream_headers["x-mode"] == "rewritten" and "x-secret" not in upstream_headers
    assert headers["x-lua-response"] == "status-200"
    logs = proxy.plugin_logs()
    assert ("info", " ========= XXXXX ==========") in logs, logs[-10:]
