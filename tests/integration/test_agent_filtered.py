"""The agent's filtered data path over real sockets: chunked trailers both ways, the proxy's own 502/503/504
replies passing through the plugins' response callbacks (as Envoy's router sends its local replies through
the filter chain), and `/logging` level changes reaching the running plugins' host.

Two `meshplug agent` processes with the same listeners, one without plugins and one with corpus
rust/header_rules adding a response header (which therefore shows which responses went through the
plugin's response callback); raw TCP peers started here play the upstreams.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import modules
from tests.testbed import agent as tb_agent
from tests.testbed import procs
from tests.testbed import upstream as tb_upstream
from tests.testbed.rawpeer import CHUNKED_END, RESET_PREFIX, RawPeer, TrailerPeer, recv_until

PLUGIN_HEADER = b"x-plugin: seen"


def _silent(conn: socket.socket) -> None:
    recv_until(conn, lambda d: b"\r\n\r\n" in d)
    time.sleep(5)  # never answers within the agent's response timeout


def _garbage(conn: socket.socket) -> None:
    recv_until(conn, lambda d: b"\r\n\r\n" in d)
    conn.sendall(b"this is not HTTP at all\r\n\r\n")
    time.sleep(0.5)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("filtered")


@pytest.fixture(scope="module")
def trailer_peer() -> Iterator[TrailerPeer]:
    peer = TrailerPeer()
    yield peer
    peer.close()


@pytest.fixture(scope="module")
def other_peers() -> Iterator[dict[str, RawPeer]]:
    made = {"silent": RawPeer(_silent), "garbage": RawPeer(_garbage)}
    yield made
    for peer in made.values():
        peer.close()


def _config(clusters: dict[str, int], plugins: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, int]]:
    ports = {name: procs.free_port() for name in clusters}
    raw = {
        "listeners": [
            {"name": name, "address": "127.0.0.1", "port": ports[name], "cluster": name} for name in clusters
        ],
        "clusters": [
            {"name": name, "address": "127.0.0.1", "port": port, "connect_timeout_s": 2, "response_timeout_s": 1.0}
            | ({"enable_trailers": True} if name == "trailers" else {})
            for name, port in clusters.items()
        ],
        "admin": {"address": "127.0.0.1", "port": procs.free_port()},
        "plugins": plugins,
        "http": {"enable_trailers": True},  # trailers both ways (tests/integration/test_agent_http1_trailers.py)
    }
    return raw, ports


def _header_rules() -> dict[str, Any]:
    return {
        "name": "header-rules",
        "module": {"file": str(modules.module("rust/header_rules").path)},
        "configuration": {"response": {"add": {"x-plugin": "seen"}}},
    }


@pytest.fixture(scope="module", params=["plain", "plugin"])
def agent(
    request: pytest.FixtureRequest, work: Path, trailer_peer: TrailerPeer, other_peers: dict[str, RawPeer]
) -> Iterator[tuple[str, tb_agent.Agent, dict[str, int]]]:
    kind = str(request.param)
    clusters = {
        "trailers": trailer_peer.port,
        "refused": procs.free_port(),
        **{n: p.port for n, p in other_peers.items()},
    }
    raw, ports = _config(clusters, [_header_rules()] if kind == "plugin" else [])
    a = tb_agent.start_agent(raw, work_dir=work / kind, log_dir=work, name=f"agent-{kind}")
    yield kind, a, ports
    a.stop()


def _exchange(port: int, request: bytes, done: Callable[[bytes], bool]) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        return recv_until(conn, done)


def test_chunked_trailers_are_forwarded_both_ways(
    agent: tuple[str, tb_agent.Agent, dict[str, int]], trailer_peer: TrailerPeer
) -> None:
    kind, _, ports = agent
    before = len(trailer_peer.requests)
    request = (
        b"POST /t HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\ntrailer: x-req-trailer\r\n\r\n"
        b"3\r\nabc\r\n0\r\nx-req-trailer: one\r\n\r\n"
    )
    response = _exchange(ports["trailers"], request, lambda d: CHUNKED_END.search(d) is not None)

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), response
    assert b"transfer-encoding: chunked" in head
    assert (PLUGIN_HEADER in head) is (kind == "plugin")
    end = CHUNKED_END.search(body)
    assert end is not None and end.group(1) == b"x-resp-trailer: yes\r\n", body
    assert body.startswith(b"5\r\nhello\r\n"), body

    assert len(trailer_peer.requests) == before + 1
    sent = trailer_peer.requests[-1]
    sent_head, _, sent_body = sent.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in sent_head
    assert b"\r\ntrailer: x-req-trailer\r\n" in sent_head  # as Envoy 1.40 (found.yaml h2fuzz-request-trailer-*)
    sent_end = CHUNKED_END.search(sent_body)
    assert sent_end is not None and sent_end.group(1) == b"x-req-trailer: one\r\n", sent
    assert sent_body.startswith(b"3\r\nabc\r\n"), sent


@pytest.mark.parametrize(
    ("cluster", "status", "body"),
    [
        ("refused", 503, RESET_PREFIX + b"remote connection failure"),
        ("garbage", 502, RESET_PREFIX + b"protocol error"),
        ("silent", 504, b"upstream request timeout"),
    ],
)
def test_proxy_replies_pass_through_the_plugins_response_callbacks(
    agent: tuple[str, tb_agent.Agent, dict[str, int]], cluster: str, status: int, body: bytes
) -> None:
    kind, _, ports = agent
    got_status, headers, got_body = tb_agent.http_request(ports[cluster], "GET", "/x")
    assert (got_status, got_body) == (status, body)
    assert headers["content-type"] == "text/plain"
    assert headers["content-length"] == str(len(body))
    assert "date" in headers
    assert headers["server"] == "istio-envoy"  # the native config's server_name: Istio's sidecar inbound value
    # the plugin's on_http_response_headers ran for the proxy's own reply, as in Envoy
    assert headers.get("x-plugin") == ("seen" if kind == "plugin" else None)


def test_logging_level_change_reaches_running_plugins(work: Path) -> None:
    echo = tb_upstream.start_service("echo", log_dir=work, name="echo-logging")
    try:
        raw, ports = _config(
            {"echo": echo.port},
            [
                {
                    "name": "deny",
                    "module": {"file": str(modules.module("rust/deny_path").path)},
                    "configuration": {"prefixes": ["/denied"]},
                }
            ],
        )
        a = tb_agent.start_agent(raw, work_dir=work / "logging", log_dir=work, name="agent-logging", log_level="info")
        try:

            def allowed() -> list[str]:
                logs = json.loads(a.admin("/plugin_logs")[1])
                return [r["message"] for r in logs if "allowed" in r["message"]]

            assert tb_agent.http_request(ports["echo"], "GET", "/before")[0] == 200
            assert allowed() == []  # the plugin's debug record is below the host's level (info)

            assert a.admin("/logging?level=debug", method="POST") == (200, b"level: debug\n")
            assert tb_agent.http_request(ports["echo"], "GET", "/after")[0] == 200
            assert allowed() == ["deny_path: allowed /after"]

            assert a.admin("/logging?level=warning", method="POST")[0] == 200
            assert tb_agent.http_request(ports["echo"], "GET", "/quiet")[0] == 200
            assert allowed() == ["deny_path: allowed /after"]
        finally:
            a.stop()
    finally:
        echo.stop()
