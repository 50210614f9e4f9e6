"""Admin /stats in Envoy's formats: the same plugin and bootstrap on Envoy 1.40 and the agent, the same stats.

The corpus module rust/metrics (a counter, gauges and a histogram the plugin defines) runs on both planes from
one Envoy bootstrap (stats_flush_on_admin, so Envoy's histograms show what was recorded); after the same
requests, /stats (text, with filter and usedonly) and /stats?format=json list the plugin's metrics under
Envoy's names (wasmcustom.<name>): the same bytes (text) and the same document (json), quantiles included.
/stats/prometheus answers on both. Each plane is started by the corpus runner's planes (real processes).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator

import pytest

from tests.corpus import runner
from tests.corpus import spec as S
from tests.corpus.planes.agent import AgentPlane
from tests.corpus.planes.envoy import EnvoyPlane
from tests.testbed import envoy as tb_envoy
from tests.testbed import upstream

SPEC = S.FILTERS_DIR / "rust" / "metrics" / "spec.yaml"
_LINE = re.compile(r"^([^:]+): (.*)$")
#: the spec's plugin in a hand-written bootstrap with stats_flush_on_admin (Envoy merges histograms into what
#: /stats shows only at a flush: every 5 s by default, or on each admin request with this)
BOOTSTRAP = """
stats_flush_on_admin: true
admin: {address: {socket_address: {address: 127.0.0.1, port_value: ${ADMIN_PORT}}}}
static_resources:
  listeners:
  - name: stats
    address: {socket_address: {address: 127.0.0.1, port_value: ${PORT}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: stats
          route_config:
            virtual_hosts:
            - {name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: upstream}}]}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: metrics
                vm_config: {runtime: envoy.wasm.runtime.v8, code: {local: {filename: "${MODULE}"}}}
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${CLUSTER_PORT:upstream}}}}
"""


def _admin_port(running: object) -> int:
    inner = getattr(running, "envoy", None) or getattr(running, "agent")  # noqa: B009 -- either plane
    return int(inner.admin_port)


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Both planes running rust/metrics, each after the same two requests: plane name -> admin port."""
    spec = dataclasses.replace(S.load(SPEC), bootstrap=BOOTSTRAP)
    tmp = tmp_path_factory.mktemp("stats")
    modules = runner.resolve_modules(spec)
    echo = upstream.start_service("echo", log_dir=tmp)
    started: list[object] = []
    ports: dict[str, int] = {}
    try:
        services = {S.UPSTREAM_CLUSTER: runner.Endpoint(S.UPSTREAM_CLUSTER, "echo", echo.port)}
        for plane in (EnvoyPlane(), AgentPlane()):
            running = plane.start(spec, modules, services, tmp / plane.name)
            started.append(running)
            for path, status in _REQUESTS:
                told = upstream.encode_response(status, [], [b"x"])
                result = runner.send_http(
                    running.port, S.Request("GET", path, (), ()), [(upstream.RESPOND_HEADER, told)]
                )
                assert result.status == status
            ports[plane.name] = _admin_port(running)
        _until_histograms_merged(ports["envoy"])
        yield ports
    finally:
        for running in started:
            running.stop()  # type: ignore[attr-defined]
        echo.stop()


#: path lengths 2, 150, 4, 12, 7, 12 (the histogram's samples), the last answered 404 (the status gauge)
_REQUESTS = (
    ("/a", 200),
    ("/" + "x" * 149, 200),
    ("/abc", 200),
    ("/a/b/c/d/ef", 200),
    ("/a/b/c", 200),
    ("/longer/path", 404),
)


def _until_histograms_merged(port: int) -> None:
    """Envoy merges the workers' histograms after the admin request that starts the flush has been answered:
    ask until the merged values show (each request starts another flush)."""
    deadline = time.monotonic() + 10.0
    while "No recorded values" in _get(port, "/stats?filter=wasmcustom"):
        assert time.monotonic() < deadline, "Envoy's histograms were never merged"


def _get(port: int, path: str) -> str:
    status, body = tb_envoy.admin_get(port, path)
    assert status == 200, (path, status, body[:200])
    return body


def _text_stats(body: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body.splitlines():
        m = _LINE.match(line)
        assert m, f"not a `name: value` line: {line!r}"
        out[m.group(1)] = m.group(2)
    return out


@pytest.mark.parametrize(
    "query",
    ["filter=%5Ewasmcustom%5C.", "filter=wasmcustom&usedonly", "filter=rust_metrics_(status%7Cpath)"],
)
def test_text_stats_are_envoys_bytes(planes: dict[str, int], query: str) -> None:
    """The plugin's counters, gauges and histogram quantiles, line for line as Envoy writes them."""
    envoy, agent = (_get(planes[name], f"/stats?{query}") for name in ("envoy", "agent"))
    assert agent == envoy
    stats = _text_stats(envoy)
    assert stats["wasmcustom.rust_metrics_path_len"].startswith("P0(nan,2.05) P25(nan,4.05)"), stats


def test_json_stats_are_envoys_document(planes: dict[str, int]) -> None:
    envoy, agent = (
        json.loads(_get(planes[name], "/stats?format=json&filter=wasmcustom")) for name in ("envoy", "agent")
    )
    assert agent == envoy
    assert {"name": "wasmcustom.rust_metrics_requests", "value": len(_REQUESTS)} in envoy["stats"]
    assert {"name": "wasmcustom.rust_metrics_status", "value": 404} in envoy["stats"]


def test_prometheus_answers_beside_them(planes: dict[str, int]) -> None:
    for port in planes.values():
        body = _get(port, "/stats/prometheus")
        assert "rust_metrics_requests" in body
