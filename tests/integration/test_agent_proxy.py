"""The agent's HTTP/1.1 proxying over real sockets: keep-alive, bodies, pipelining, HTTP/1.0, hop-by-hop
headers, x-request-id, upstream failures mapped to Envoy's status codes and bodies, and drain on SIGTERM.

One `meshplug agent` process (no plugins) with one listener per upstream behaviour: the test bed's echo
service, and raw TCP peers started here that misbehave on purpose (never answer, reset, answer garbage,
answer slowly); one closed port for "connection refused".
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import agent as tb_agent
from tests.testbed import procs
from tests.testbed import upstream as tb_upstream
from tests.testbed.rawpeer import RESET_PREFIX, RawPeer


def _read_head(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def _silent(conn: socket.socket) -> None:
    _read_head(conn)
    time.sleep(5)


def _reset(conn: socket.socket) -> None:
    _read_head(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _garbage(conn: socket.socket) -> None:
    _read_head(conn)
    conn.sendall(b"this is not HTTP at all\r\n\r\n")
    time.sleep(0.5)


def _head_keep_alive(conn: socket.socket) -> None:
    for _ in range(10):  # answers HEAD correctly (a length, no body) on one keep-alive connection
        _read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nx-head: yes\r\n\r\n")


def _slow(conn: socket.socket) -> None:
    _read_head(conn)
    time.sleep(1.5)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy")


@pytest.fixture(scope="module")
def echo(work: Path) -> Iterator[tb_upstream.Service]:
    svc = tb_upstream.start_service("echo", log_dir=work)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def peers() -> Iterator[dict[str, RawPeer]]:
    made = {
        "silent": RawPeer(_silent),
        "reset": RawPeer(_reset),
        "garbage": RawPeer(_garbage),
        "head": RawPeer(_head_keep_alive),
    }
    yield made
    for peer in made.values():
        peer.close()


def _config(clusters: dict[str, int], *, response_timeout_s: float = 15.0) -> tuple[dict[str, Any], dict[str, int]]:
    ports = {name: procs.free_port() for name in clusters}
    raw = {
        "listeners": [
            {"name": name, "address": "127.0.0.1", "port": ports[name], "cluster": name} for name in clusters
        ],
        "clusters": [
            {
                "name": name,
                "address": "127.0.0.1",
                "port": port,
                "connect_timeout_s": 2,
                "response_timeout_s": response_timeout_s,
            }
            for name, port in clusters.items()
        ],
        "admin": {"address": "127.0.0.1", "port": procs.free_port()},
        "drain_timeout_s": 10,
        "http": {"accept_http_10": True},  # Envoy's default refuses HTTP/1.0 (426); these tests serve it
    }
    return raw, ports


@pytest.fixture(scope="module")
def proxy(
    work: Path, echo: tb_upstream.Service, peers: dict[str, RawPeer]
) -> Iterator[tuple[tb_agent.Agent, dict[str, int]]]:
    clusters = {"echo": echo.port, "refused": procs.free_port(), **{n: p.port for n, p in peers.items()}}
    raw, ports = _config(clusters, response_timeout_s=1.0)
    agent = tb_agent.start_agent(raw, work_dir=work / "cfg", log_dir=work)
    yield agent, ports
    agent.stop()


def _record(body: bytes) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(body)
    record["body"] = base64.b64decode(record["body_b64"])
    record["hdrs"] = {k: v for k, v in record["headers"]}
    return record


def test_keep_alive_reuses_both_connections(proxy: tuple[tb_agent.Agent, dict[str, int]]) -> None:
    agent, ports = proxy
    conn = http.client.HTTPConnection("127.0.0.1", ports["echo"], timeout=10)
    try:
        for i in range(5):
            conn.request("GET", f"/ka/{i}")
            resp = conn.getresponse()
            assert resp.status == 200
            assert _record(resp.read())["path"] == f"/ka/{i}"
    finally:
        conn.close()
    stats = agent.admin("/stats/prometheus")[1].decode()
    m = re.search(r"^meshplug_agent_upstream_cx_total (\d+)$", stats, re.M)
    assert m is not None and int(m.group(1)) < 5, stats


@pytest.mark.parametrize("size", [0, 1, 100_000, 5 * 1024 * 1024], ids=["empty", "1B", "100kB", "5MiB"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_request_bodies_arrive_whole(proxy: tuple[tb_agent.Agent, dict[str, int]], size: int, chunked: bool) -> None:
    _, ports = proxy
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    conn = http.client.HTTPConnection("127.0.0.1", ports["echo"], timeout=30)
    try:
        if chunked:
            pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
            conn.request("POST", "/up", body=iter(pieces), encode_chunked=True)
        else:
            conn.request("POST", "/up", body=body)
        resp = conn.getresponse()
        assert resp.status == 200
        record = _record(resp.read())
    finally:
        conn.close()
    assert record["body"] == body
    assert ("chunked" in record["hdrs"].get("transfer-encoding", "")) == (chunked and size > 0) or chunked


@pytest.mark.parametrize("chunks", [[b"one"], [b"first ", b"second ", b"third"], [b"z" * 30_000, b"end"]])
def test_response_bodies_stream_back(proxy: tuple[tb_agent.Agent, dict[str, int]], chunks: list[bytes]) -> None:
    _, ports = proxy
    told = tb_upstream.encode_response(200, [("x-told", "yes")], chunks)
    status, headers, body = tb_agent.http_request(ports["echo"], "GET", "/down", headers={"x-echo-respond": told})
    assert status == 200
    assert headers["x-told"] == "yes"
    assert body == b"".join(chunks)


def test_pipelined_requests_are_answered_in_order(proxy: tuple[tb_agent.Agent, dict[str, int]]) -> None:
    _, ports = proxy
    requests = b"".join(
        f"GET /pipe/{i} HTTP/1.1\r\nhost: x\r\n{'connection: close' if i == 2 else 'x-n: 1'}\r\n\r\n".encode()
        for i in range(3)
    )
    with socket.create_connection(("127.0.0.1", ports["echo"]), timeout=10) as sock:
        sock.sendall(requests)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert [data.index(f'"/pipe/{i}"'.encode()) for i in range(3)] == sorted(
        data.index(f'"/pipe/{i}"'.encode()) for i in range(3)
    )


BODY = bytes(range(256)) * 1200  # 300 KiB: more than one of the agent's reads


@pytest.mark.parametrize(
    "cuts",
    [
        pytest.param((), id="one-write"),
        pytest.param((100,), id="head-cut"),
        pytest.param((200, 200 + 70_000), id="body-in-pieces"),
        pytest.param((-1,), id="body-end-with-next-request"),
        pytest.param((-1 - 20,), id="next-request-cut"),
    ],
)
def test_a_content_length_body_in_pieces_then_a_pipelined_request(
    proxy: tuple[tb_agent.Agent, dict[str, int]], cuts: tuple[int, ...]
) -> None:
    """A Content-Length body however its bytes arrive (reads inside it skip the parser), and the request sent
    after it in the same connection: both reach the upstream whole, answered in order."""
    _, ports = proxy
    first = b"POST /big HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%b" % (len(BODY), BODY)
    data = first + b"GET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    points = [c if c >= 0 else len(first) + c + 1 for c in cuts]  # -1: at the body's end, -21: 20 bytes later
    with socket.create_connection(("127.0.0.1", ports["echo"]), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start, end in zip([0, *points], [*points, len(data)], strict=True):
            sock.sendall(data[start:end])
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    answers: list[tuple[bytes, bytes]] = []  # (status line, body) of each response, framed by content-length
    while got:
        head, _, got = got.partition(b"\r\n\r\n")
        length = int(
            next(
                v
                for n, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                if n.lower() == b"content-length"
            )
        )
        answers.append((head.split(b"\r\n")[0], got[:length]))
        got = got[length:]
    assert [status[:12] for status, _ in answers] == [b"HTTP/1.1 200", b"HTTP/1.1 200"]
    records = [_record(body) for _, body in answers]
    assert [r["path"] for r in records] == ["/big", "/after"]
    assert records[0]["body"] == BODY and records[1]["body"] == b""


def test_http_1_0_without_host_is_served_and_closed(proxy: tuple[tb_agent.Agent, dict[str, int]]) -> None:
    _, ports = proxy
    with socket.create_connection(("127.0.0.1", ports["echo"]), timeout=10) as sock:
        sock.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # the proxy closes: HTTP/1.0 without keep-alive
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in head.lower()
    record = _record(body)
    assert record["path"] == "/old" and record["hdrs"]["host"]


def test_hop_by_hop_headers_are_dropped_and_request_id_added(proxy: tuple[tb_agent.Agent, dict[str, int]]) -> None:
    _, ports = proxy
    headers = {"connection": "x-hop", "x-hop": "1", "keep-alive": "timeout=5", "x-end": "kept"}
    _, _, body = tb_agent.http_request(ports["echo"], "GET", "/hop", headers=headers)
    hdrs = _record(body)["hdrs"]
    assert "x-hop" not in hdrs and "keep-alive" not in hdrs
    assert hdrs["x-end"] == "kept"
    assert len(hdrs["x-request-id"]) == 36
    _, _, body = tb_agent.http_request(ports["echo"], "GET", "/rid", headers={"x-request-id": "given-id"})
    assert _record(body)["hdrs"]["x-request-id"] == "given-id"


def test_head_gets_headers_without_body(proxy: tuple[tb_agent.Agent, dict[str, int]]) -> None:
    _, ports = proxy
    for _ in range(3):  # later HEADs reuse the pooled upstream connection
        status, headers, body = tb_agent.http_request(ports["head"], "HEAD", "/head")
        assert (status, body, headers["content-length"], headers["x-head"]) == (200, b"", "10", "yes")


@pytest.mark.parametrize(
    ("listener", "status", "body"),
    [
        ("refused", 503, RESET_PREFIX + b"remote connection failure"),
        ("reset", 503, RESET_PREFIX + b"connection termination"),
        ("garbage", 502, RESET_PREFIX + b"protocol error"),
        ("silent", 504, b"upstream request timeout"),
    ],
)
def test_upstream_failures_get_envoy_like_local_replies(
    proxy: tuple[tb_agent.Agent, dict[str, int]], listener: str, status: int, body: bytes
) -> None:
    _, ports = proxy
    got_status, headers, got_body = tb_agent.http_request(ports[listener], "GET", "/fail")
    assert (got_status, got_body) == (status, body)
    assert headers["content-type"] == "text/plain"
    # the proxy keeps serving on other listeners
    assert tb_agent.http_request(ports["echo"], "GET", "/after")[0] == 200


def test_sigterm_drains_in_flight_requests_and_stops_accepting(work: Path) -> None:
    slow = RawPeer(_slow)
    try:
        raw, ports = _config({"slow": slow.port})
        agent = tb_agent.start_agent(raw, work_dir=work / "drain", log_dir=work, name="agent-drain")
        result: dict[str, Any] = {}

        def in_flight() -> None:
            result["response"] = tb_agent.http_request(ports["slow"], "GET", "/slow", timeout=20)

        t = threading.Thread(target=in_flight)
        t.start()
        procs.wait_until(
            lambda: b"downstream_rq_active 1" in agent.admin("/stats/prometheus")[1],
            timeout=10,
            what="the slow request to be in flight",
        )
        agent.proc.popen.send_signal(signal.SIGTERM)
        procs.wait_until(lambda: not procs.port_open(ports["slow"]), timeout=10, what="the listener to close")
        t.join(timeout=20)
        assert result["response"][0] == 200 and result["response"][2] == b"slow"
        assert agent.proc.popen.wait(timeout=20) == 0, agent.proc.log()[-2000:]
        assert "stopped (drained)" in agent.proc.log()
    finally:
        slow.close()
