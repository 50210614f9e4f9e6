"""The HCM's server header and the router's x-envoy-* headers from one Envoy bootstrap, on Envoy 1.40 and the agent.

One bootstrap, four HTTP listeners: the defaults (server_header_transformation OVERWRITE, server_name "envoy"),
OVERWRITE with a server_name of its own, APPEND_IF_ABSENT, and PASS_THROUGH with the router's
suppress_envoy_headers. Envoy runs it; the agent runs the same file (`meshplug agent --envoy-config`, its
listener and admin ports moved). A raw upstream answers with a server header, without one, or with two, and
echoes the request head it received as the body. For every listener and answer: what the client sees (server,
date, x-envoy-upstream-service-time), what the upstream received (x-envoy-expected-rq-timeout-ms), and the
router's own 404 (a local reply: it gets the server header too) must be the same on both.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs, rawpeer

pytestmark = pytest.mark.integration

#: listener name -> the HCM fields it sets, and its router's
LISTENERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "named": ({"server_header_transformation": "OVERWRITE", "server_name": "edge-7"}, {}),
    "append": ({"server_header_transformation": "APPEND_IF_ABSENT", "server_name": "edge-7"}, {}),
    "pass": ({"server_header_transformation": "PASS_THROUGH"}, {"suppress_envoy_headers": True}),
}
#: upstream answers by path: the server lines it sends
ANSWERS = {"/r/with": b"server: app/1.0\r\n", "/r/none": b"", "/r/twice": b"server: a\r\nserver: b\r\n"}


def _answer(conn: socket.socket) -> None:
    """Serve requests on one connection: 200 with the path's server lines, the request head as the body."""
    while True:  # one request at a time: the proxies do not pipeline upstream
        head, sep, _ = rawpeer.recv_until(conn, lambda d: b"\r\n\r\n" in d).partition(b"\r\n\r\n")
        if not sep:
            return
        path = head.split(b" ", 2)[1].decode()
        lines = ANSWERS.get(path, b"")
        if b"\r\nupgrade: websocket" in head.lower():  # the tunnel's first bytes: the request head received
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n" + lines)
            conn.sendall(b"\r\n" + head)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: %d\r\n\r\n" % len(head) + head)


def _bootstrap(admin: int, ports: dict[str, int], upstream_port: int) -> dict[str, Any]:
    listeners = []
    for name, (hcm_fields, router_fields) in LISTENERS.items():
        lst = tb_envoy.http_listener(name, ports[name], cluster="up")
        hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["route_config"]["virtual_hosts"][0]["routes"][0]["match"] = {"prefix": "/r/"}
        hcm.update(hcm_fields)
        hcm["upgrade_configs"] = [{"upgrade_type": "websocket"}]
        hcm["http_filters"][-1]["typed_config"].update(router_fields)
        listeners.append(lst)
    return tb_envoy.bootstrap(admin, listeners, [tb_envoy.static_cluster("up", upstream_port)])


@dataclass
class Planes:
    ports: dict[str, dict[str, int]]  # plane -> listener -> port


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Planes]:
    work = tmp_path_factory.mktemp("server-header")
    peer = rawpeer.RawPeer(_answer)
    started: list[Any] = []
    try:
        ports = {plane: {name: procs.free_port() for name in LISTENERS} for plane in ("envoy", "agent")}
        admins = {plane: procs.free_port() for plane in ports}
        envoy_cfg = _bootstrap(admins["envoy"], ports["envoy"], peer.port)
        agent_cfg = _bootstrap(admins["agent"], ports["agent"], peer.port)  # the same, on the agent's ports
        path = tb_envoy.write_config(envoy_cfg, work / "envoy")
        started.append(tb_envoy.start_envoy(path, admin_port=admins["envoy"], log_dir=work, name="envoy"))
        (work / "agent").mkdir()
        agent_path = tb_envoy.write_config(agent_cfg, work / "agent" / "bootstrap")
        started.append(
            tb_agent.start_envoy_config(
                agent_path,
                port=ports["agent"]["default"],
                admin_port=admins["agent"],
                log_dir=work,
                command="agent",
                log_level="warning",
            )
        )
        yield Planes(ports)
    finally:
        for item in reversed(started):
            item.stop()
        peer.close()


def _get(port: int, path: str) -> tuple[int, dict[str, list[str]], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        data = rawpeer.recv_until(sock, lambda d: b"\r\n\r\n" in d and _complete(d))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(lines[0].split(" ")[1]), headers, body


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def _view(port: int, path: str) -> tuple[object, ...]:
    status, headers, body = _get(port, path)
    expected = [line for line in body.split(b"\r\n") if line.lower().startswith(b"x-envoy-expected-rq-timeout-ms")]
    return (
        status,
        headers.get("server"),
        "date" in headers,
        "x-envoy-upstream-service-time" in headers,
        expected,
    )


#: what Envoy 1.40 answers (listener, path) -> (server values, service time added); the test holds both to it
EXPECTED: dict[tuple[str, str], tuple[list[str] | None, bool]] = {
    ("default", "/r/with"): (["envoy"], True),
    ("default", "/r/none"): (["envoy"], True),
    ("default", "/r/twice"): (["envoy"], True),
    ("default", "/other"): (["envoy"], False),
    ("named", "/r/with"): (["edge-7"], True),
    ("named", "/r/none"): (["edge-7"], True),
    ("named", "/other"): (["edge-7"], False),
    ("append", "/r/with"): (["app/1.0"], True),
    ("append", "/r/none"): (["edge-7"], True),
    ("append", "/r/twice"): (["a,b"], True),
    ("append", "/other"): (["edge-7"], False),
    ("pass", "/r/with"): (["app/1.0"], False),
    ("pass", "/r/none"): (None, False),
    ("pass", "/r/twice"): (["a,b"], False),
    ("pass", "/other"): (None, False),
}


@pytest.mark.parametrize(("listener", "path"), list(EXPECTED), ids=[f"{k[0]}{k[1]}" for k in EXPECTED])
def test_server_and_envoy_headers_as_envoy(planes: Planes, listener: str, path: str) -> None:
    envoy = _view(planes.ports["envoy"][listener], path)
    agent = _view(planes.ports["agent"][listener], path)
    server, service_time = EXPECTED[(listener, path)]
    routed = path.startswith("/r/")
    assert envoy == (
        200 if routed else 404,
        server,
        True,
        service_time,
        [b"x-envoy-expected-rq-timeout-ms: 15000"] if routed and listener != "pass" else [],
    )
    assert agent == envoy


#: a WebSocket upgrade with what the connection manager changes on a request
UPGRADE = (
    "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nte: trailers, gzip\r\n"
    "x-forwarded-client-cert: By=x\r\nx-envoy-retry-on: 5xx\r\nx-envoy-original-path: /o\r\naccept: a\r\n"
    "accept: b\r\nreferer: not a uri\r\n\r\n"
)


def _upgrade(port: int, path: str) -> tuple[list[str], list[str]]:
    """The 101's header lines (date's value aside) and the request head the upstream received (x-request-id's
    value aside), read through the tunnel until the upstream closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(UPGRADE.format(path=path).encode())
        data = rawpeer.recv_until(sock, lambda _: False)
    response, _, tunnelled = data.partition(b"\r\n\r\n")
    return _masked(response), _masked(tunnelled)


def _masked(raw: bytes) -> list[str]:
    """Header lines with the values of date and x-request-id left out."""
    mask = ("date:", "x-request-id:")
    return [line.split(":")[0] if line.lower().startswith(mask) else line for line in raw.decode().split("\r\n")]


@pytest.mark.parametrize(("listener", "path"), [("default", "/r/with"), ("pass", "/r/none"), ("append", "/r/twice")])
def test_websocket_upgrade_headers_as_envoy(planes: Planes, listener: str, path: str) -> None:
    """An upgrade: x-forwarded-proto and x-request-id added, XFCC / steering x-envoy-* / a bad Referer removed,
    inline headers merged, TE passed as sent; the 101 gets date and the server header."""
    envoy = _upgrade(planes.ports["envoy"][listener], path)
    agent = _upgrade(planes.ports["agent"][listener], path)
    assert envoy[0][0] == "HTTP/1.1 101 Switching Protocols"
    assert "x-forwarded-proto: http" in envoy[1] and "te: trailers, gzip" in envoy[1]
    assert agent == envoy
