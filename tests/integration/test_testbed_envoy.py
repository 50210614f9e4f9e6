"""Envoy 1.40 of the test bed really proxies, through static configs, to the upstream services."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import runner
from tests.corpus import spec as S
from tests.testbed import envoy, procs, upstream

EnvoyRunner = Callable[[Mapping[str, Any]], envoy.Envoy]
ServiceStarter = Callable[[str], upstream.Service]


@pytest.mark.parametrize(
    ("chunks", "respond", "want"),
    [
        ((), None, (200, None)),
        ((b"hello",), (201, [("x-told", "yes")], [b"created"]), (201, b"created")),
        ((b"a" * 10, b"b" * 20, b"c"), (200, [], [b"part1-", b"part2-", b"part3"]), (200, b"part1-part2-part3")),
    ],
    ids=["echo-default", "told-plain", "chunked-both-ways"],
)
def test_envoy_proxies_http_to_echo(
    envoy_runner: EnvoyRunner,
    upstream_service: ServiceStarter,
    chunks: tuple[bytes, ...],
    respond: tuple[int, list[tuple[str, str]], list[bytes]] | None,
    want: tuple[int, bytes | None],
) -> None:
    want_status, want_body = want
    echo = upstream_service("echo")
    port, admin = procs.free_port(), procs.free_port()
    proxy = envoy_runner(
        envoy.bootstrap(
            admin, [envoy.http_listener("l", port, cluster="upstream")], [envoy.static_cluster("upstream", echo.port)]
        )
    )
    extra = [(upstream.CASE_HEADER, "case-1")]
    if respond is not None:
        extra.append((upstream.RESPOND_HEADER, upstream.encode_response(*respond)))
    result = runner.send_http(port, S.Request("POST", "/p?q=1", (("x-client", "c"),), chunks), extra)
    assert result.status == want_status
    assert ("server", "envoy") in result.headers
    if want_body is not None:
        assert result.body == want_body
    seen = echo.seen("case-1")
    assert seen is not None
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/p?q=1", b"".join(chunks))
    assert ("x-client", "c") in seen["headers"]
    assert echo.seen("never-sent") is None
    assert envoy.admin_get(proxy.admin_port, "/ready")[1].strip() == "LIVE"


def test_envoy_proxies_tcp_to_echo(envoy_runner: EnvoyRunner, upstream_service: ServiceStarter) -> None:
    echo = upstream_service("tcp_echo")
    port, admin = procs.free_port(), procs.free_port()
    envoy_runner(
        envoy.bootstrap(
            admin, [envoy.tcp_listener("t", port, cluster="upstream")], [envoy.static_cluster("upstream", echo.port)]
        )
    )
    assert runner.send_tcp(port, [b"ping ", b"pong"]) == b"ping pong"


@pytest.mark.parametrize(
    ("authorization", "status", "user"),
    [(None, 401, None), ("Bearer alice", 200, "alice"), ("Bearer deny-bob", 403, None)],
)
def test_auth_service_answers_by_header(
    upstream_service: ServiceStarter, authorization: str | None, status: int, user: str | None
) -> None:
    auth = upstream_service("auth")
    headers = (("authorization", authorization),) if authorization else ()
    result = runner.send_http(auth.port, S.Request("GET", "/check", headers, ()))
    assert result.status == status
    assert dict(result.headers).get("x-auth-user") == user


def test_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    bad = envoy.bootstrap(procs.free_port(), [envoy.http_listener("l", 1, cluster="nowhere")], [])
    bad["static_resources"]["listeners"][0]["no_such_field"] = True
    with pytest.raises(envoy.EnvoyConfigError, match="no_such_field"):
        envoy.validate_config(envoy.write_config(bad, tmp_path / "bad"))


def test_wasm_log_lines_are_parsed() -> None:
    text = "\n".join(
        [
            "info|wasm|wasm log my_plugin root vm: hello world",
            "warning|wasm|wasm log : no ids here",
            "info|main|not a plugin line",
            "debug|wasm|some other wasm message",
        ]
    )
    assert envoy.wasm_logs(text) == [("info", "hello world"), ("warn", "no ids here")]
