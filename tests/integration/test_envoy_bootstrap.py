"""Envoy's own bootstrap as the agent's input (`meshplug run --envoy-config`), beside Envoy 1.40 itself.

* The seeds' Envoy configs: the Go/TinyGo filter tutorial's envoy.yaml (seed 001) as written there -- only
  addresses, ports and the module's file name changed -- and wasme's path_rewrite filter config (seed 003, the
  filter config its `wasme deploy envoy` log shows: camelCase JSON, the plugin configuration a plain string).
  Each uses a form Envoy 1.40 refuses (the router's empty typed_config; a plain-string configuration): the
  test shows Envoy refusing it, the agent running it (with a warning), and both answering the same request
  the same way once the form is written as Envoy 1.40 wants it.
* Fields outside the agent's subset: each case is a bootstrap `envoy --mode validate` accepts; the agent
  refuses it with the field's path and a reason (the CLI exits 2 naming the path).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplug import errors
from meshplug.agent import bootstrap
from tests.corpus import modules as corpus_modules
from tests.corpus import runner
from tests.corpus import spec as S
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs, upstream

pytestmark = pytest.mark.integration

#: seed 001's envoy.yaml; ${...}: the addresses, ports and file names this machine gives
SEED_GO_TUTORIAL = """
admin:
  access_log_path: ${DIR}/admin_access.log
  address:
    socket_address:
      protocol: TCP
      address: 127.0.0.1
      port_value: ${ADMIN_PORT}
static_resources:
  listeners:
  - name: listener_0
    address:
      socket_address:
        protocol: TCP
        address: 127.0.0.1
        port_value: ${PORT}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            name: local_route
            virtual_hosts:
            - name: local_service
              domains: ["*"]
              routes:
              - match:
                  prefix: "/"
                route:
                  cluster: my_custom_svc
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              value:
                config:
                  name: "my_plugin"
                  root_id: "my_root_id"
                  configuration:
                    "@type": "type.googleapis.com/google.protobuf.StringValue"
                    value: |
                      {}
                  vm_config:
                    runtime: "envoy.wasm.runtime.v8"
                    vm_id: "my_vm_id"
                    code:
                      local:
                        filename: "${MODULE}"
                    configuration: { }
          - name: envoy.filters.http.router
            typed_config: { }
  clusters:
  - name: my_custom_svc
    connect_timeout: 30s
    type: static
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: service1
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address:
                address: 127.0.0.1
                port_value: ${UPSTREAM_PORT}
"""
#: the router as Envoy 1.40 wants it
ROUTER_TYPED = '"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router'

#: c/path_rewrite's configuration (a pattern line and a replacement line)
REWRITE = "^/api/v1/([a-z]+)(/.*)?$\n/v2/\\1\\2"


def _wasme_filter(module: Path, *, as_string_value: bool, rewrite: str = REWRITE) -> dict[str, Any]:
    """seed 003's filter config (as `wasme deploy envoy` logs it) for c/path_rewrite."""
    configuration: Any = rewrite
    if as_string_value:
        configuration = {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": rewrite}
    config = {
        "rootId": "add_header_root_id",
        "vmConfig": {"code": {"local": {"filename": str(module)}}, "runtime": "envoy.wasm.runtime.v8"},
        "configuration": configuration,
        "name": "add_header_root_id",
    }
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
    }


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[upstream.Service]:
    service = upstream.start_service("echo", log_dir=tmp_path_factory.mktemp("echo"))
    yield service
    service.stop()


def _module(key: str) -> Path:
    return corpus_modules.module(key).path


def _write(tmp: Path, name: str, doc: dict[str, Any] | str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def _upstream_path(port: int, path: str) -> tuple[int, str]:
    """(status, the path the echo service saw) for GET `path`."""
    result = runner.send_http(port, S.Request("GET", path, (), ()))
    seen = json.loads(result.body) if result.status == 200 else {}
    return result.status, str(seen.get("path", ""))


def _serve_both(tmp: Path, agent_file: Path, envoy_file: Path, *, port: int, admin: int, path: str) -> dict[str, Any]:
    """The same request through the agent on `agent_file` and Envoy on `envoy_file` (one after the other)."""
    seen: dict[str, Any] = {}
    agent = tb_agent.start_envoy_config(agent_file, port=port, admin_port=admin, log_dir=tmp)
    try:
        seen["agent"] = _upstream_path(port, path)
        log = agent.proc.log()
    finally:
        agent.stop()
    envoy = tb_envoy.start_envoy(envoy_file, admin_port=admin, log_dir=tmp)
    try:
        seen["envoy"] = _upstream_path(port, path)
    finally:
        envoy.stop()
    seen["agent_log"] = log
    return seen


def test_go_tutorial_envoy_yaml_runs_unchanged(tmp_path: Path, echo: upstream.Service) -> None:
    port, admin = procs.free_port(), procs.free_port()
    text = SEED_GO_TUTORIAL
    for name, value in (
        ("DIR", str(tmp_path)),
        ("ADMIN_PORT", str(admin)),
        ("PORT", str(port)),
        ("MODULE", str(_module("go/headers"))),
        ("UPSTREAM_PORT", str(echo.port)),
    ):
        text = text.replace("${" + name + "}", value)
    seed = _write(tmp_path, "seed", text)
    with pytest.raises(tb_envoy.EnvoyConfigError) as refused:
        tb_envoy.validate_config(seed)
    assert "Didn't find a registered implementation" in refused.value.output, refused.value.output[-2000:]
    fixed = _write(tmp_path, "fixed", text.replace("typed_config: { }", "typed_config: {" + ROUTER_TYPED + "}"))
    tb_envoy.validate_config(fixed)
    seen = _serve_both(tmp_path, seed, fixed, port=port, admin=admin, path="/tutorial")
    assert seen["agent"] == seen["envoy"] == (200, "/tutorial"), seen
    assert "an empty typed_config for the router" in seen["agent_log"]
    # the sidecar command takes it too (`meshplug agent --envoy-config`; the above ran `meshplug run`)
    sidecar = tb_agent.start_envoy_config(seed, port=port, admin_port=admin, log_dir=tmp_path, command="agent")
    try:
        assert _upstream_path(port, "/tutorial") == (200, "/tutorial")
    finally:
        sidecar.stop()


def test_wasme_path_rewrite_filter_config_runs_unchanged(tmp_path: Path, echo: upstream.Service) -> None:
    port, admin = procs.free_port(), procs.free_port()
    module = _module("c/path_rewrite")

    def doc(*, as_string_value: bool) -> dict[str, Any]:
        listener = tb_envoy.http_listener(
            "wasme", port, cluster="upstream", http_filters=[_wasme_filter(module, as_string_value=as_string_value)]
        )
        return tb_envoy.bootstrap(admin, [listener], [tb_envoy.static_cluster("upstream", echo.port)])

    seed = _write(tmp_path, "seed", doc(as_string_value=False))
    with pytest.raises(tb_envoy.EnvoyConfigError) as refused:
        tb_envoy.validate_config(seed)
    assert "configuration" in refused.value.output, refused.value.output[-2000:]
    fixed = _write(tmp_path, "fixed", doc(as_string_value=True))
    tb_envoy.validate_config(fixed)
    seen = _serve_both(tmp_path, seed, fixed, port=port, admin=admin, path="/api/v1/users/42")
    assert seen["agent"] == seen["envoy"] == (200, "/v2/users/42"), seen
    assert "configuration: a plain string (envoy-wasm's v2 form" in seen["agent_log"]


#: c/path_rewrite configurations on a listener with one route (prefix "/"): the request's path, what the echo
#: service sees (status, path). The plugin's new :path clears the route cache; one without a leading "/" matches
#: no route (Envoy 1.40: 404 without reaching the upstream)
REROUTED = [
    ("^/s/(.*)$\n\\1", "/s/abc", (404, "")),
    ("^/s/(.*)$\n?\\1", "/s/abc", (404, "")),
    ("^/s/(.*)$\n/\\1", "/s/abc", (200, "/abc")),
]


@pytest.mark.parametrize(("rewrite", "path", "want"), REROUTED, ids=[r[0].replace("\n", " -> ") for r in REROUTED])
def test_a_path_rewritten_without_a_slash_is_routed_again(
    tmp_path: Path, echo: upstream.Service, rewrite: str, path: str, want: tuple[int, str]
) -> None:
    port, admin = procs.free_port(), procs.free_port()
    filters = [_wasme_filter(_module("c/path_rewrite"), as_string_value=True, rewrite=rewrite)]
    listener = tb_envoy.http_listener("rerouted", port, cluster="upstream", http_filters=filters)
    bootstrap = _write(
        tmp_path, "rerouted", tb_envoy.bootstrap(admin, [listener], [tb_envoy.static_cluster("upstream", echo.port)])
    )
    tb_envoy.validate_config(bootstrap)
    seen = _serve_both(tmp_path, bootstrap, bootstrap, port=port, admin=admin, path=path)
    assert seen["envoy"] == want, seen
    assert seen["agent"] == seen["envoy"], seen


# --- fields outside the subset: Envoy accepts each bootstrap, the agent names the field --------------------------
_HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
_ROUTE = f"{_HCM}.route_config.virtual_hosts[0].routes[0]"


def _hcm(doc: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _route(doc: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = _hcm(doc)["route_config"]["virtual_hosts"][0]["routes"][0]
    return route


def _set_retry(doc: dict[str, Any]) -> None:
    _route(doc)["route"]["retry_policy"] = {"retry_on": "5xx"}


def _set_redirect(doc: dict[str, Any]) -> None:
    route = _route(doc)
    del route["route"]
    route["redirect"] = {"path_redirect": "/elsewhere"}


def _set_access_log(doc: dict[str, Any]) -> None:
    _hcm(doc)["access_log"] = [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"},
        }
    ]


def _set_rds(doc: dict[str, Any]) -> None:
    hcm = _hcm(doc)
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "r", "config_source": {"ads": {}}}
    doc["node"] = {"id": "node-1", "cluster": "mesh"}
    doc["dynamic_resources"] = {
        "ads_config": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "upstream"}}]}
    }


def _set_listener_filters(doc: dict[str, Any]) -> None:
    doc["static_resources"]["listeners"][0]["listener_filters"] = [
        {
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            },
        }
    ]


def _set_lb_policy(doc: dict[str, Any]) -> None:
    doc["static_resources"]["clusters"][0]["lb_policy"] = "LEAST_REQUEST"


def _set_cors(doc: dict[str, Any]) -> None:
    _hcm(doc)["http_filters"].insert(
        0,
        {
            "name": "envoy.filters.http.cors",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
        },
    )


def _set_trailers_differ(doc: dict[str, Any]) -> None:
    second = json.loads(json.dumps(doc["static_resources"]["listeners"][0]))
    second["name"] = "second"
    second["address"]["socket_address"]["port_value"] = procs.free_port()
    second["filter_chains"][0]["filters"][0]["typed_config"]["http_protocol_options"] = {"enable_trailers": True}
    doc["static_resources"]["listeners"].append(second)


#: (case, edit, the path the agent names, words of its reason)
REFUSED = [
    ("retry_policy", _set_retry, f"{_ROUTE}.route.retry_policy", "retries are not supported"),
    ("redirect", _set_redirect, f"{_ROUTE}.redirect", "redirect routes are not supported"),
    ("access_log", _set_access_log, f"{_HCM}.access_log", "access logs are not written"),
    ("rds", _set_rds, f"{_HCM}.rds", "need a management server"),
    ("listener_filters", _set_listener_filters, "static_resources.listeners[0].listener_filters", "not supported"),
    ("lb_policy", _set_lb_policy, "static_resources.clusters[0].lb_policy", "'LEAST_REQUEST' is not supported"),
    ("cors filter", _set_cors, f"{_HCM}.http_filters[0].typed_config", "only wasm, lua and router"),
    (
        "listeners' HTTP/1 options differ",
        _set_trailers_differ,
        "static_resources.listeners[1].filter_chains[0].filters[0].typed_config.http_protocol_options",
        "one set of HTTP/1 options",
    ),
]


def _plain_bootstrap() -> dict[str, Any]:
    """One HTTP listener routing to one static cluster (nothing listens: the bootstrap is only read)."""
    return tb_envoy.bootstrap(
        procs.free_port(),
        [tb_envoy.http_listener("l", procs.free_port(), cluster="upstream")],
        [tb_envoy.static_cluster("upstream", procs.free_port())],
    )


@pytest.mark.parametrize(("edit", "path", "reason"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_fields_outside_the_subset_are_refused_with_their_path(
    tmp_path: Path, edit: Any, path: str, reason: str
) -> None:
    doc = _plain_bootstrap()
    edit(doc)
    written = _write(tmp_path, "bootstrap", doc)
    tb_envoy.validate_config(written)  # a bootstrap Envoy 1.40 takes
    with pytest.raises(errors.ConfigError) as refused:
        bootstrap.load(written)
    assert str(refused.value).startswith(f"envoy bootstrap: {path}: "), str(refused.value)
    assert reason in str(refused.value)


def test_the_cli_exits_naming_the_field(tmp_path: Path) -> None:
    doc = _plain_bootstrap()
    _set_retry(doc)
    written = _write(tmp_path, "bootstrap", doc)
    result = subprocess.run(
        [sys.executable, "-m", "meshplug", "run", "--envoy-config", str(written)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert f"{_ROUTE}.route.retry_policy: retries are not supported" in result.stderr
