"""Blanks around HTTP/1.1 header values, the agent against Envoy 1.40 in the same run, on the raw bytes.

llhttp (the agent's HTTP/1.1 parser, both directions) hands a value over with the spaces and tabs before the line's
end still in it; Envoy's codec trims them (and the leading ones), so its upstream, its client and its plugins never
see them. The comparison parsers of tests/differential strip values, so this file reads what each side wrote on the
wire: the request lines a raw upstream received, the response lines a raw client received.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.testbed import planes, rawpeer

pytestmark = pytest.mark.integration

# name, the value as sent (after "X-V:"), in a request header and in a response header
CASES = [
    ("trailing space", b"1 "),
    ("trailing tab", b"1\t"),
    ("trailing blanks mixed", b"1 \t \t"),
    ("leading and trailing", b" \t1 2\t "),
    ("inner blanks kept", b"a  \t b"),
    ("only blanks", b" \t "),
]


def _lines(head: bytes, name: bytes) -> list[bytes]:
    """The header lines of `head` whose name is `name` (lower case), as sent."""
    return [line for line in head.split(b"\r\n")[1:] if line.lower().startswith(name + b":")]


def _upstream(value: bytes, heads: list[bytes]) -> rawpeer.RawPeer:
    """Answers every request with an X-V response header carrying `value` as given; appends each request head
    it read to `heads`."""

    def behave(conn: socket.socket) -> None:
        heads.append(rawpeer.recv_until(conn, lambda d: b"\r\n\r\n" in d))
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-V:" + value + b"\r\ncontent-length: 2\r\n\r\nok")

    return rawpeer.RawPeer(behave)


#: the running bed: per case the request heads its upstream read, per plane the running proxy
Bed = tuple[list[list[bytes]], dict[str, planes.Started]]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    work = tmp_path_factory.mktemp("header-blanks")
    heads: list[list[bytes]] = [[] for _ in CASES]
    peers = [_upstream(value, heads[i]) for i, (_, value) in enumerate(CASES)]
    try:
        with planes.each_routed([peer.port for peer in peers], work=work) as started:
            yield heads, started
    finally:
        for peer in peers:
            peer.close()


def _exchange(port: int, index: int, value: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /%d/ HTTP/1.1\r\nHost: a.test\r\nX-V:%b\r\nConnection: close\r\n\r\n" % (index, value))
        return rawpeer.recv_until(conn, lambda _: False)


@pytest.mark.parametrize(("index", "value"), [(i, v) for i, (_, v) in enumerate(CASES)], ids=[n for n, _ in CASES])
def test_values_reach_upstream_and_client_as_envoy_trims_them(bed: Bed, index: int, value: bytes) -> None:
    heads, started = bed
    seen: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for plane, running in started.items():
        response = _exchange(running.port, index, value)
        request = heads[index][-1]
        seen[plane] = (_lines(request, b"x-v"), _lines(response.partition(b"\r\n\r\n")[0], b"x-v"))
    envoy, agent = seen["envoy"], seen["agent"]
    assert envoy[1], envoy  # Envoy answered with the upstream's header: there is something to compare
    assert agent == envoy
