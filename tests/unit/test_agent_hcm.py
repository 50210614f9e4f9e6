"""meshplug.agent.hcm: the header rules both downstreams apply (each rule is held to Envoy 1.40 by the
differential suite, tests/integration/test_differential_http1.py and test_differential_h2.py)."""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import Any

import pytest

from meshplug import errors
from meshplug.agent import bootstrap, config, envoyjson, hcm

pytestmark = pytest.mark.unit

H = list[tuple[bytes, bytes]]


@pytest.mark.parametrize(
    ("headers", "upgrade", "expected"),
    [
        ([(b"host", b"a"), (b"x-a", b"1")], False, [(b"host", b"a"), (b"x-a", b"1")]),
        ([(b"accept", b"a"), (b"x-a", b"1"), (b"accept", b"b")], False, [(b"accept", b"a,b"), (b"x-a", b"1")]),
        ([(b"x-a", b"1"), (b"x-a", b"2")], False, [(b"x-a", b"1"), (b"x-a", b"2")]),
        ([(b"x-forwarded-client-cert", b"By=x"), (b"x-a", b"1")], False, [(b"x-a", b"1")]),
        ([(b"x-envoy-retry-on", b"5xx"), (b"x-envoy-original-path", b"/p")], False,
         [(b"x-envoy-original-path", b"/p")]),
        ([(b"x-envoy-internal", b"true"), (b"x-envoy-upstream-rq-timeout-ms", b"1")], False, []),
        ([(b"x-envoy-decorator-operation", b"op"), (b"x-envoy-foo", b"1")], False,
         [(b"x-envoy-decorator-operation", b"op"), (b"x-envoy-foo", b"1")]),
        ([(b"referer", b"http://a b/")], False, []),
        ([(b"referer", b"http://a/b")], False, [(b"referer", b"http://a/b")]),
        ([(b"te", b"gzip, trailers")], False, [(b"te", b"trailers")]),
        ([(b"te", b"gzip")], False, []),
        ([(b"te", b"gzip, trailers")], True, [(b"te", b"gzip, trailers")]),
        ([(b":path", b"/"), (b"cookie", b"a"), (b"te", b"trailers")], False,
         [(b":path", b"/"), (b"cookie", b"a"), (b"te", b"trailers")]),
    ],
)  # fmt: skip
def test_sanitize_request(headers: H, upgrade: bool, expected: H) -> None:
    assert hcm.sanitize_request(list(headers), upgrade=upgrade) == expected


def test_sanitize_request_returns_the_same_list_when_nothing_applies() -> None:
    headers = [(b"host", b"a"), (b"x-a", b"1")]
    assert hcm.sanitize_request(headers, upgrade=False) is headers


@pytest.mark.parametrize(
    ("headers", "request_id", "added"),
    [
        ([], True, [b"x-forwarded-proto", b"x-request-id"]),
        ([], False, [b"x-forwarded-proto"]),
        ([(b"x-forwarded-proto", b"https")], True, [b"x-request-id"]),
        ([(b"x-request-id", b"given")], True, [b"x-forwarded-proto"]),
    ],
)
def test_add_forwarded(headers: H, request_id: bool, added: list[bytes]) -> None:
    out = list(headers)
    hcm.add_forwarded(out, b"http", request_id=request_id)
    assert out[: len(headers)] == headers
    assert [n for n, _ in out[len(headers) :]] == added


@pytest.mark.parametrize(
    ("timeout_s", "suppressed", "expected"),
    [
        (15.0, False, (b"x-envoy-expected-rq-timeout-ms", b"15000")),
        (0.25, False, (b"x-envoy-expected-rq-timeout-ms", b"250")),
        (0.0, False, None),
        (15.0, True, None),
    ],
)
def test_expected_timeout(timeout_s: float, suppressed: bool, expected: tuple[bytes, bytes] | None) -> None:
    assert hcm.expected_timeout(timeout_s, suppressed=suppressed) == expected


@pytest.mark.parametrize(
    ("headers", "service_ms", "expected"),
    [
        ([(b"a", b"1")], 3, [(b"a", b"1"), (b"x-envoy-upstream-service-time", b"3")]),
        ([(b"x-envoy-upstream-service-time", b"99"), (b"a", b"1")], 0,
         [(b"x-envoy-upstream-service-time", b"0"), (b"a", b"1")]),
        ([(b"a", b"1")], -1, [(b"a", b"1")]),
        ([(b"vary", b"a"), (b"set-cookie", b"x"), (b"vary", b"b"), (b"set-cookie", b"y")], -1,
         [(b"vary", b"a,b"), (b"set-cookie", b"x"), (b"set-cookie", b"y")]),
        ([(b"server", b"a"), (b"server", b"b")], -1, [(b"server", b"a,b")]),
    ],
)  # fmt: skip
def test_upstream_response(headers: H, service_ms: int, expected: H) -> None:
    assert hcm.upstream_response(list(headers), service_ms) == expected


_LISTENER = config.Listener(name="l", address="127.0.0.1", port=1, cluster="c")


@pytest.mark.parametrize(
    ("transformation", "headers", "server"),
    [
        ("OVERWRITE", [], [b"istio-envoy"]),
        ("OVERWRITE", [(b"server", b"app")], [b"istio-envoy"]),
        ("OVERWRITE", [(b"server", b"app"), (b"server", b"app2")], [b"istio-envoy"]),
        ("APPEND_IF_ABSENT", [], [b"istio-envoy"]),
        ("APPEND_IF_ABSENT", [(b"server", b"app")], [b"app"]),
        ("PASS_THROUGH", [], []),
        ("PASS_THROUGH", [(b"server", b"app")], [b"app"]),
    ],
)
def test_server_header(transformation: str, headers: H, server: list[bytes]) -> None:
    step = hcm.ServerHeader(dataclasses.replace(_LISTENER, server_header_transformation=transformation))
    out = [(b"x-a", b"1"), *headers]
    step.finish(out)
    assert [v for n, v in out if n == b"server"] == server
    assert [n for n, _ in out].count(b"date") == 1
    assert out[0] == (b"x-a", b"1")


def test_server_header_keeps_a_date_and_the_place_of_server() -> None:
    step = hcm.ServerHeader(dataclasses.replace(_LISTENER, server_name="edge"))
    out = [(b"server", b"app"), (b"date", b"then"), (b"x-a", b"1")]
    step.finish(out)
    assert out == [(b"server", b"edge"), (b"date", b"then"), (b"x-a", b"1")]
    assert step.lines([])[-1] == b"server: edge\r\n"


def _bootstrap(hcm_fields: dict[str, object], router: dict[str, object]) -> dict[str, object]:
    hcm_config = {
        "@type": f"type.googleapis.com/{envoyjson.HCM}",
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", **router}}],
        **hcm_fields,
    }  # fmt: skip
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                    "filter_chains": [{"filters": [{"name": "hcm", "typed_config": hcm_config}]}],
                }
            ],
            "clusters": [
                {
                    "name": "up",
                    "type": "STATIC",
                    "load_assignment": {
                        "cluster_name": "up",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                            "address": "127.0.0.1", "port_value": 2}}}}]}],
                    },
                }
            ],
        }
    }  # fmt: skip


@pytest.mark.parametrize(
    ("hcm_fields", "router", "expected"),
    [
        ({}, {}, ("OVERWRITE", "envoy", False)),
        ({"server_name": "edge"}, {}, ("OVERWRITE", "edge", False)),
        ({"server_header_transformation": "append_if_absent"}, {}, ("APPEND_IF_ABSENT", "envoy", False)),
        ({"serverHeaderTransformation": "PASS_THROUGH"}, {"suppress_envoy_headers": True},
         ("PASS_THROUGH", "envoy", True)),
    ],
)  # fmt: skip
def test_bootstrap_server_header_fields(
    hcm_fields: dict[str, object], router: dict[str, object], expected: tuple[str, str, bool]
) -> None:
    listener = bootstrap.parse(_bootstrap(hcm_fields, router)).listeners[0]
    assert (listener.server_header_transformation, listener.server_name, listener.suppress_envoy_headers) == expected


def test_bootstrap_refuses_an_unknown_server_header_transformation() -> None:
    with pytest.raises(errors.ConfigError, match="server_header_transformation"):
        bootstrap.parse(_bootstrap({"server_header_transformation": "REPLACE"}, {}))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ("OVERWRITE", "istio-envoy", False)),
        ({"server_header_transformation": "PASS_THROUGH", "server_name": "app-proxy", "suppress_envoy_headers": True},
         ("PASS_THROUGH", "app-proxy", True)),
    ],
)  # fmt: skip
def test_native_listener_server_header_fields(
    tmp_path: pathlib.Path, fields: dict[str, object], expected: tuple[str, str, bool]
) -> None:
    raw = {
        "listeners": [{"name": "in", "port": 15006, "cluster": "app", **fields}],
        "clusters": [{"name": "app", "port": 8080}],
        "admin": {"port": 15000},
    }
    listener = config.parse(raw, base=tmp_path).listeners[0]
    assert (listener.server_header_transformation, listener.server_name, listener.suppress_envoy_headers) == expected


def test_native_listener_refuses_an_unknown_server_header_transformation(tmp_path: pathlib.Path) -> None:
    raw = {
        "listeners": [{"name": "in", "port": 15006, "cluster": "app", "server_header_transformation": "X"}],
        "clusters": [{"name": "app", "port": 8080}],
        "admin": {"port": 15000},
    }
    with pytest.raises(errors.ConfigError, match="server_header_transformation"):
        config.parse(raw, base=tmp_path)


@pytest.mark.parametrize("transformation", config.SERVER_HEADER_TRANSFORMATIONS)
@pytest.mark.parametrize(
    "headers",
    [[(b"x-a", b"1")], [(b"server", b"app"), (b"x-a", b"1")], [(b"date", b"then"), (b"x-a", b"1"), (b"server", b"s")]],
)
def test_finish_lines_is_finish_on_written_lines(transformation: str, headers: H) -> None:
    """The filtered exchange's shortcut (a head already written as lines) ends as `finish` does."""
    step = hcm.ServerHeader(dataclasses.replace(_LISTENER, server_header_transformation=transformation))
    expected = list(headers)
    step.finish(expected)
    out = [b"HTTP/1.1 200 OK\r\n", *(b"%b: %b\r\n" % h for h in headers)]
    server_at = next((i + 1 for i, h in enumerate(headers) if h[0] == b"server"), -1)
    step.finish_lines(out, server_at, dated=any(h[0] == b"date" for h in headers))
    assert out[1:] == [b"%b: %b\r\n" % h for h in expected]


@pytest.mark.parametrize(
    ("hcm_fields", "expected"),
    [
        ({}, (0.0, 0.0, 300.0, 3600.0, 0.0, 0.0)),  # Envoy's defaults (idle_timeout 1 h for an HCM)
        ({"request_timeout": "0.5s", "request_headers_timeout": "2s", "stream_idle_timeout": "0s"},
         (0.5, 2.0, 0.0, 3600.0, 0.0, 0.0)),
        ({"requestTimeout": {"seconds": 3, "nanos": 500_000_000}}, (3.5, 0.0, 300.0, 3600.0, 0.0, 0.0)),
        ({"common_http_protocol_options": {"idle_timeout": "10s", "max_connection_duration": "60s"}},
         (0.0, 0.0, 300.0, 10.0, 60.0, 0.0)),
        ({"common_http_protocol_options": {"max_stream_duration": "0.75s"}}, (0.0, 0.0, 300.0, 3600.0, 0.0, 0.75)),
        ({"common_http_protocol_options": {"maxStreamDuration": {"seconds": 2}}},
         (0.0, 0.0, 300.0, 3600.0, 0.0, 2.0)),
        ({"common_http_protocol_options": {"max_stream_duration": "0s"}}, (0.0, 0.0, 300.0, 3600.0, 0.0, 0.0)),
    ],
)  # fmt: skip
def test_bootstrap_hcm_timeouts(hcm_fields: dict[str, object], expected: tuple[float, ...]) -> None:
    http = bootstrap.parse(_bootstrap(hcm_fields, {})).http
    got = (http.request_timeout_s, http.request_headers_timeout_s, http.stream_idle_timeout_s, http.idle_timeout_s,
           http.max_connection_duration_s, http.max_stream_duration_s)  # fmt: skip
    assert got == expected


@pytest.mark.parametrize(
    ("hcm_fields", "message"),
    [
        ({"request_timeout": "-1s"}, r"typed_config\.request_timeout: must not be negative"),
        ({"request_timeout": "soon"}, r"request_timeout: 'soon' is not a duration"),
        ({"common_http_protocol_options": {"max_stream_duration": "-1s"}},
         r"common_http_protocol_options\.max_stream_duration: must not be negative"),
        ({"common_http_protocol_options": {"max_stream_duration": "later"}},
         r"common_http_protocol_options\.max_stream_duration: 'later' is not a duration"),
        ({"common_http_protocol_options": {"max_requests_per_connection": 5}},
         r"common_http_protocol_options\.max_requests_per_connection: not supported"),
    ],
)  # fmt: skip
def test_bootstrap_refuses_hcm_timeouts_it_cannot_honour(hcm_fields: dict[str, object], message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        bootstrap.parse(_bootstrap(hcm_fields, {}))


def test_bootstrap_refuses_listeners_whose_timeouts_differ() -> None:
    doc = _bootstrap({"request_timeout": "1s"}, {})
    listeners: list[Any] = doc["static_resources"]["listeners"]  # type: ignore[index]
    second = copy.deepcopy(listeners[0])
    second["name"] = "in2"
    second["filter_chains"][0]["filters"][0]["typed_config"]["request_timeout"] = "2s"
    listeners.append(second)
    with pytest.raises(errors.ConfigError, match=r"listeners\[1\].*\.request_timeout: differs from .*listeners\[0\]"):
        bootstrap.parse(doc)


def _route_doc(route_fields: dict[str, object]) -> Any:
    doc: Any = _bootstrap({}, {})
    hcm_config = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm_config["route_config"]["virtual_hosts"][0]["routes"][0]["route"].update(route_fields)
    return doc


MSD = config.MaxStreamDuration


@pytest.mark.parametrize(
    ("route_fields", "idle", "limit"),
    [
        ({}, None, None),
        ({"idle_timeout": "1.5s"}, 1.5, None),
        ({"idle_timeout": "0s"}, 0.0, None),  # set to 0: the route's streams have no idle timeout
        ({"max_stream_duration": {}}, None, MSD()),  # present but empty: the HCM's limit no longer applies as is
        ({"max_stream_duration": {"max_stream_duration": "0.5s"}}, None, MSD(max_stream_duration_s=0.5)),
        ({"max_stream_duration": {"grpc_timeout_header_max": "0s", "grpc_timeout_header_offset": "0.2s"}}, None,
         MSD(grpc_timeout_header_max_s=0.0, grpc_timeout_header_offset_s=0.2)),
        ({"maxStreamDuration": {"maxStreamDuration": {"seconds": 1}, "grpcTimeoutHeaderMax": "3s"},
          "idleTimeout": "2s"}, 2.0, MSD(max_stream_duration_s=1.0, grpc_timeout_header_max_s=3.0)),
    ],
)  # fmt: skip
def test_bootstrap_route_stream_limits(route_fields: dict[str, object], idle: float | None, limit: Any) -> None:
    listener = bootstrap.parse(_route_doc(route_fields)).listeners[0]
    assert listener.routes is not None
    route = listener.routes.virtual_hosts[0].routes[0]
    assert (route.idle_timeout_s, route.max_stream_duration) == (idle, limit)


@pytest.mark.parametrize(
    ("route_fields", "message"),
    [
        ({"idle_timeout": "-1s"}, r"route\.idle_timeout: must not be negative"),
        ({"max_stream_duration": {"max_stream_duration": "x"}},
         r"route\.max_stream_duration\.max_stream_duration: 'x' is not a duration"),
        ({"max_stream_duration": {"grpc_timeout_header_max": "1s", "grpc_timeout_max": "1s"}},
         r"route\.max_stream_duration\.grpc_timeout_max: not supported"),
        ({"max_grpc_timeout": "1s"}, r"route\.max_grpc_timeout: not supported"),
    ],
)  # fmt: skip
def test_bootstrap_refuses_route_limits_it_cannot_read(route_fields: dict[str, object], message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        bootstrap.parse(_route_doc(route_fields))
