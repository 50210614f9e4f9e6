"""The operator's stdlib HTTP servers (module server, metrics) bound what one client can hold (`meshplug.serving`):
a request head's bytes (431; the stdlib alone reads 100 header lines of 64 KiB, ~6.5 MB per connection), the time
to deliver it however slowly bytes trickle in (the stdlib's timeout is per read) and the connections served at
once. Real servers on 127.0.0.1, raw sockets."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshplug import limits, serving
from meshplug.controller.metrics import Metrics, MetricsServer
from meshplug.fetch import serve
from meshplug.fetch.cache import Cache
from meshplug.fetch.serve import ModuleServer

SERVERS: dict[str, Callable[[Path], serving.ServerThread]] = {
    "modules": lambda tmp: ModuleServer(Cache(tmp / "cache"), signing_key="k" * 32),
    "metrics": lambda tmp: MetricsServer(Metrics(), lambda: "", host="127.0.0.1", port=0),
}


@pytest.fixture(params=sorted(SERVERS))
def port(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setattr(limits, "CONTROL_REQUEST_TIMEOUT_S", 0.5)
    monkeypatch.setattr(serving.BoundedServer, "max_connections", 2)
    monkeypatch.setattr(serve._Server, "max_connections", 2)
    with SERVERS[request.param](tmp_path) as server:
        yield server.port


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, then read until the server closes (the test's timeout fails a server that never does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        with contextlib.suppress(ConnectionError):  # refused mid-send: what it answered is still readable
            sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


HEAD_CASES = {
    # 40 headers (the stdlib counts to 100) of 1 KiB (its lines go to 64 KiB): 40 KiB
    "40 headers of 1 KiB": b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + (b"X-A: " + b"a" * 1024 + b"\r\n") * 40,
    "a 20 KiB request line": b"GET /healthz?" + b"q" * 20 * 1024 + b" HTTP/1.1\r\nHost: a\r\n",
}


@pytest.mark.parametrize("case", sorted(HEAD_CASES))
def test_a_head_over_the_limit_is_431_and_closed(port: int, case: str) -> None:
    answer = exchange(port, HEAD_CASES[case] + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]


def test_a_head_within_the_limit_is_served(port: int) -> None:
    head = (
        b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + (b"X-A: " + b"a" * 1024 + b"\r\n") * 10 + b"Connection: close\r\n\r\n"
    )
    assert exchange(port, head).startswith(b"HTTP/1.1 200 ")


def test_a_trickled_head_is_closed_at_its_deadline(port: int) -> None:
    """One byte at a time, never a whole head: the connection ends (the stdlib's per-read timeout never would)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
        sock.settimeout(0.1)
        for _ in range(1000):  # 100 s of trickling at most
            try:
                sock.sendall(b"x")
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                break
        else:
            pytest.fail("the server kept a trickling head open")


def test_connections_past_the_cap_are_closed_at_accept(port: int) -> None:
    held = [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(2)]
    try:
        for sock in held:  # both served: each has its handler (a byte of a head, nothing answered yet)
            sock.sendall(b"G")
        assert exchange(port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") == b""
    finally:
        for sock in held:
            sock.close()
    # a slot is free again once a held connection's handler saw it end: retried until then (a fixed count of
    # tries ran out in ~0.1 s on a loaded machine before the handler thread got the CPU), within 20 s
    deadline = time.monotonic() + 20
    answer = b""
    while not answer.startswith(b"HTTP/1.1 200 ") and time.monotonic() < deadline:
        answer = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
