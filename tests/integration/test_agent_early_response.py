"""An upstream that answers a request before its body was read to the end (a server that does not read bodies,
or refuses one early), held to Envoy 1.40 in the same run: the answer reaches the client whole, with
``Connection: close`` (Envoy's HCM closes an HTTP/1.1 connection whose response started before its request
completed), and the proxy ends the connection without resetting it under the client's feet while the client is
still sending the body (Envoy's delayed close: a reset could destroy the answer before the client reads it).
The agent is checked without plugins and with one that buffers the request body (the overloaded
assemblyscript/body cell of bench/matrix.py met this: its upstream answered before the agent read the body).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.corpus import modules
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs
from tests.testbed.rawpeer import RawPeer, recv_until

pytestmark = pytest.mark.integration

#: the request's announced body: far more than the client ever sends, so the request never completes
ANNOUNCED = 64 * 1024 * 1024
#: what the client sends of it before it reads the answer, then once more after
SENT = 512 * 1024
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly"


def _answer_after_head(conn: socket.socket) -> None:
    """Answers as soon as the head is in, then reads (and drops) whatever comes until the proxy closes."""
    recv_until(conn, lambda data: b"\r\n\r\n" in data)
    conn.sendall(ANSWER)
    while conn.recv(65536):
        pass


BUFFERING = {  # a plugin that holds the request body until its end (which never comes)
    "module": "assemblyscript/body",
    "root_id": "body",
    "configuration": "request.append=|tail\n",
}


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    work = tmp_path_factory.mktemp("early")
    peer = RawPeer(_answer_after_head)
    started: list[Any] = []
    ports: dict[str, int] = {}
    try:
        for name, plugins in (("agent", None), ("agent-plugin", [BUFFERING])):
            port, admin = procs.free_port(), procs.free_port()
            raw = tb_agent.base_config(
                port=port,
                admin_port=admin,
                clusters={"upstream": peer.port},
                plugins=None
                if plugins is None
                else [
                    {
                        "name": "body",
                        "module": {"file": str(modules.module(p["module"]).path)},
                        "root_id": p["root_id"],
                        "configuration": p["configuration"],
                    }
                    for p in plugins
                ],
            )
            started.append(tb_agent.start_agent(raw, work_dir=work / name, log_dir=work, name=name).proc)
            ports[name] = port
        for name, filters in (("envoy", []), ("envoy-plugin", [_envoy_wasm(BUFFERING)])):
            port, admin = procs.free_port(), procs.free_port()
            listener = tb_envoy.http_listener(name, port, cluster="upstream", http_filters=filters)
            config = tb_envoy.bootstrap(admin, [listener], [tb_envoy.static_cluster("upstream", peer.port)])
            path = tb_envoy.write_config(config, work / name)
            started.append(tb_envoy.start_envoy(path, admin_port=admin, log_dir=work, name=name).proc)
            ports[name] = port
        yield ports
    finally:
        for proc in started:
            proc.stop()
        peer.close()


def _envoy_wasm(plugin: dict[str, str]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "body",
                "root_id": plugin["root_id"],
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin["configuration"],
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(modules.module(plugin["module"]).path)}},
                },
            },
        },
    }


def _exchange(port: int) -> tuple[bytes, bytes, str]:
    """Send a head announcing ANNOUNCED body bytes and SENT of them; read the answer; send SENT more; then how the
    connection ended: "closed" (the proxy's FIN), "reset" or "sending refused" (the proxy was gone)."""
    head = b"POST /upload HTTP/1.1\r\nhost: early.test\r\ncontent-length: %d\r\n\r\n" % ANNOUNCED
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"b" * SENT)
        got = recv_until(sock, lambda data: b"\r\n\r\n" in data and data.endswith(b"early"))
        answer_head, _, body = got.partition(b"\r\n\r\n")
        try:
            sock.sendall(b"b" * SENT)
            end = "closed" if recv_until(sock, lambda data: False) == b"" else "more bytes"
        except ConnectionResetError:
            end = "reset"
        except BrokenPipeError:
            end = "sending refused"
    return answer_head, body, end


@pytest.mark.parametrize("plugin", ["", "-plugin"], ids=["no-plugin", "body-plugin"])
def test_an_answer_before_the_request_body_ends_closes_like_envoy(proxies: dict[str, int], plugin: str) -> None:
    seen = {name: _exchange(proxies[name + plugin]) for name in ("envoy", "agent")}
    for name, (head, body, _) in seen.items():
        lines = head.lower().split(b"\r\n")
        assert lines[0] == b"http/1.1 200 ok", (name, head)
        assert b"connection: close" in lines, (name, head)
        assert body == b"early", name
    # Envoy's delayed close ends the connection (FIN, or a reset once its timer ran); the agent drains, then FINs
    assert seen["envoy"][2] in ("closed", "reset", "sending refused")
    assert seen["agent"][2] == "closed"
