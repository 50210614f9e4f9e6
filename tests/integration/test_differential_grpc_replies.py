"""The proxy's own replies to a gRPC request -- no route, an upstream that cannot be reached, the route's timeout --
on Envoy 1.40 and on the agent (`meshplug run --envoy-config`), the same bootstrap and bytes, compared in the same
run, over HTTP/1.1 and HTTP/2, on a listener without HTTP filters (the agent's HTTP/1.1 fast path) and one with a
plugin (c/propdump: the filtered path).

What Envoy does (sendLocalReply, Grpc::Common::isGrpcRequestHeaders): a request whose content-type is
application/grpc, or starts application/grpc+, is answered in gRPC's form on either protocol -- :status 200,
content-type application/grpc, grpc-status from the HTTP status (404 -> 12 UNIMPLEMENTED, 503 and 504 -> 14
UNAVAILABLE), grpc-message the reply's text, no body (on HTTP/2 no content-length either; HTTP/1.1's codec writes
content-length 0); gRPC-Web (application/grpc-web), a gRPC type with parameters (application/grpc;x=1) and other
types get the plain reply. Compared: the whole reply the client reads (status line,
every header in order with the date as "*", the body); on HTTP/2 the status, headers and trailers.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.differential import bed as diff_bed
from tests.differential import messages, propdump
from tests.testbed import envoy as tb_envoy
from tests.testbed import h2raw, planes, procs, upstream
from tests.testbed.rawpeer import recv_until

pytestmark = pytest.mark.integration

LISTENERS = ("bare", "plugin")
#: content-types: three gRPC forms, and two that are not gRPC (the plain reply)
TYPES = ("application/grpc", "application/grpc+proto", "application/grpc;x=1", "application/grpc-web", "text/plain")
#: what makes the proxy answer itself, by the request's path
PATHS = {
    "no route": "/nowhere/x",  # no route matches: the router's 404
    "unreachable": "/down/x",  # the cluster's endpoint refuses connections: 503
    "timeout": "/slow/__slow/1500",  # the route's 0.3 s timeout passes first: 504
}
#: a gRPC frame holding an empty message
FRAME = b"\x00\x00\x00\x00\x00"
#: headers whose values differ by time or by run: compared by name only
_TIMED = frozenset({b"date", b"x-request-id"})


def _bootstrap(ports: dict[str, int], admin: int, echo: int, down: int) -> dict[str, Any]:
    routes = [
        {"match": {"prefix": "/down/"}, "route": {"cluster": "down", "timeout": "5s"}},
        {"match": {"prefix": "/slow/"}, "route": {"cluster": "echo", "timeout": "0.3s", "prefix_rewrite": "/"}},
    ]
    listeners = [
        tb_envoy.http_listener(
            name,
            port,
            cluster="echo",
            http_filters=[propdump.wasm_filter()] if name == "plugin" else [],
            routes=routes,
        )
        for name, port in ports.items()
    ]
    clusters = [tb_envoy.static_cluster("echo", echo), tb_envoy.static_cluster("down", down)]
    return tb_envoy.bootstrap(admin, listeners, clusters)


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, int]]]:
    """plane -> listener -> port."""
    tmp: Path = tmp_path_factory.mktemp("grpcreplies")
    started: list[Any] = []
    try:
        echo = upstream.start_service("echo", log_dir=tmp / "logs")
        started.append(echo)
        down = procs.free_port()  # nothing listens there
        out: dict[str, dict[str, int]] = {}
        for plane in planes.PLANES:
            listeners = {name: procs.free_port() for name in LISTENERS}
            admin = procs.free_port()
            path = tb_envoy.write_config(_bootstrap(listeners, admin, echo.port, down), tmp / plane)
            started.append(
                planes.start(plane, path, port=listeners["plugin"], admin_port=admin, log_dir=tmp / "logs", name=plane)
            )
            out[plane] = listeners
        yield out
    finally:
        for item in reversed(started):
            item.stop()


def _h1(port: int, path: str, ctype: str) -> object:
    request = (
        f"POST {path} HTTP/1.1\r\nhost: a.test\r\ncontent-type: {ctype}\r\nte: trailers\r\n"
        f"content-length: {len(FRAME)}\r\n\r\n"
    ).encode() + FRAME
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        raw = recv_until(sock, _whole_response)
    msg, _ = messages.read_response(raw)
    assert not msg.header(b"x-envoy-upstream-service-time"), f"not a local reply: {msg}"
    return diff_bed.local_reply(msg)


def _whole_response(data: bytes) -> bool:
    try:
        messages.read_response(data)
    except messages.Incomplete:
        return False
    return True


def _h2(port: int, path: str, ctype: str) -> object:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", b"a.test"),
        (b"content-type", ctype.encode()),
        (b"te", b"trailers"),
    ]

    def send(c: h2raw.RawClient) -> None:
        c.request(1, headers, FRAME)

    out = h2raw.run(port, send, timeout=5.0, until=lambda o: 1 in o.ended or 1 in o.resets)
    assert 1 in out.statuses, f"no response: {out.kind()}"

    def shown(block: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [(n, b"*" if n in _TIMED else v) for n, v in block]

    return out.statuses[1], shown(out.headers.get(1, [])), shown(out.trailers.get(1, [])), out.bodies.get(1, b"")


@pytest.mark.parametrize("ctype", TYPES)
@pytest.mark.parametrize("why", list(PATHS))
@pytest.mark.parametrize("listener", LISTENERS)
@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_grpc_local_replies_match_envoy(
    ports: dict[str, dict[str, int]], protocol: str, listener: str, why: str, ctype: str
) -> None:
    ask = _h1 if protocol == "http1" else _h2
    seen = {plane: ask(ports[plane][listener], PATHS[why], ctype) for plane in planes.PLANES}
    assert seen["agent"] == seen["envoy"], f"agent {seen['agent']!r}\nenvoy {seen['envoy']!r}"
