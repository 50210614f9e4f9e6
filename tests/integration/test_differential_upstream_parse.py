"""How the agent reads an HTTP/1.1 upstream's response, held to Envoy 1.40 in the same run: the status line the
client gets (and the body of a passed-on 200) for responses at the edges of the grammar.

Each case is one raw upstream (tests/testbed/rawpeer) answering one GET with the case's bytes, behind a route of
its own on one bootstrap that Envoy and the agent both run. Where Envoy refuses (502), the agent must refuse; where
Envoy passes the answer on, the agent must too, unless the case is in `STRICTER` (the agent refuses, by design).
The mutation fuzzer over upstream answers (tests/differential/fuzz.response_mutants, run by
test_differential_http1.py) found the first of these.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.testbed import planes, rawpeer

pytestmark = pytest.mark.integration

_CL2 = b"\r\ncontent-length: 2\r\n\r\nok"
_OK = b"HTTP/1.1 200 OK" + _CL2

CASES: list[tuple[str, bytes]] = [
    ("plain", _OK),
    *((f"reason with {name}", b"HTTP/1.1 200 O" + bytes([byte]) + b"K" + _CL2) for name, byte in (
        ("NUL", 0x00), ("SOH", 0x01), ("TAB", 0x09), ("VT", 0x0B), ("FF", 0x0C), ("ESC", 0x1B), ("DEL", 0x7F),
        ("obs-text 0x80", 0x80), ("obs-text 0xff", 0xFF), ("CR", 0x0D),
    )),
    ("reason empty", b"HTTP/1.1 200 " + _CL2),
    ("no reason", b"HTTP/1.1 200" + _CL2),
    ("1xx reason with VT", b"HTTP/1.1 100 Continue\x0b\r\n\r\n" + _OK),
    ("100 then 200", b"HTTP/1.1 100 Continue\r\n\r\n" + _OK),
    ("103 then 100 then 200", b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + _OK),
    ("CRLF before the status line", b"\r\n" + _OK),
    ("two CRLF before the status line", b"\r\n\r\n" + _OK),
    ("LF before the status line", b"\n" + _OK),
    ("CRLF after a 100", b"HTTP/1.1 100 Continue\r\n\r\n\r\n" + _OK),
    ("LF after a 100", b"HTTP/1.1 100 Continue\r\n\r\n\n" + _OK),
    ("CRLF after the second 1xx", b"HTTP/1.1 103 Early\r\nlink: x\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n\r\n" + _OK),
    ("body that starts with CRLF", b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n\r\nok"),
    ("LF line ends", b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok"),
    ("LF line ends, chunked", b"HTTP/1.1 200 OK\ntransfer-encoding: chunked\n\n2\nok\n0\n\n"),
    ("LF after chunk data", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\n0\r\n\r\n"),
    ("LF ends the status line", b"HTTP/1.1 200 OK\ncontent-length: 2\r\n\r\nok"),
    ("LF ends the head", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\nok"),
    ("LF line ends after a 100", b"HTTP/1.1 100 Continue\n\n" + _OK),
    ("LF line ends, then LF after a 100", b"HTTP/1.1 100 Continue\n\n\n" + _OK),
    *((f"version {v}", v.encode() + b" 200 OK" + _CL2) for v in ("HTTP/1.0", "HTTP/1.2", "HTTP/1.9", "HTTP/2.0",
                                                                   "HTTP/3.0", "HTTP/0.9")),
    ("status 099", b"HTTP/1.1 099 X" + _CL2),
    ("header value with NUL", b"HTTP/1.1 200 OK\r\nx-a: 1\x002" + _CL2),
    ("header value with DEL", b"HTTP/1.1 200 OK\r\nx-a: 1\x7f2" + _CL2),
    ("header value with VT", b"HTTP/1.1 200 OK\r\nx-a: 1\x0b2" + _CL2),
    ("header name with a space", b"HTTP/1.1 200 OK\r\nx a: 1" + _CL2),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nx-a: 1\r\n 2" + _CL2),
    ("obs-fold in content-length", b"HTTP/1.1 200 OK\r\ncontent-length:\r\n 2\r\n\r\nok"),
    ("CR CR LF", b"HTTP/1.1 200 OK\r\r\ncontent-length: 2\r\n\r\nok"),
    ("CR alone ends a line", b"HTTP/1.1 200 OK\rcontent-length: 2\r\n\r\nok"),
    ("two spaces before the status", b"HTTP/1.1  200 OK" + _CL2),
]  # fmt: skip

#: Envoy passes these on; the agent answers 502, by design (its parser, llhttp, refuses them; both are
#: deprecated or outright invalid in RFC 9112, which lets a recipient reject them)
STRICTER = {
    "reason with CR": "a CR alone in the reason phrase",
    "obs-fold": "obs-fold (RFC 9112 5.2: a proxy may reject it)",
    "obs-fold in content-length": "obs-fold",
    "CR CR LF": "a CR alone before the line's CRLF",
    "CR alone ends a line": "a CR alone as a line end (RFC 9112 2.2: invalid)",
    "two spaces before the status": "the status line's single SP (RFC 9112 4)",
}


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, planes.Started]]:
    work = tmp_path_factory.mktemp("upstream-parse")

    def answer(response: bytes) -> rawpeer.RawPeer:
        def behave(conn: socket.socket) -> None:
            rawpeer.recv_until(conn, lambda d: b"\r\n\r\n" in d)
            conn.sendall(response)

        return rawpeer.RawPeer(behave)

    peers = [answer(response) for _, response in CASES]
    try:
        with planes.each_routed([peer.port for peer in peers], work=work) as started:
            yield started
    finally:
        for peer in peers:
            peer.close()


def _get(port: int, index: int) -> tuple[bytes, bytes]:
    """(status line, body) the client gets for GET /<index>/ (the proxy closes after it: Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /%d/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n" % index)
        head, _, body = rawpeer.recv_until(conn, lambda _: False).partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


@pytest.mark.parametrize("index", range(len(CASES)), ids=[name for name, _ in CASES])
def test_agent_reads_the_upstream_answer_as_envoy_does(proxies: dict[str, planes.Started], index: int) -> None:
    name = CASES[index][0]
    envoy = _get(proxies["envoy"].port, index)
    agent = _get(proxies["agent"].port, index)
    if name in STRICTER:
        assert not envoy[0].startswith(b"HTTP/1.1 502"), f"Envoy refuses this too now: drop it from STRICTER ({envoy})"
        assert agent[0].startswith(b"HTTP/1.1 502"), agent
        return
    assert agent[0] == envoy[0]
    if envoy[0] == b"HTTP/1.1 200 OK":
        assert agent[1] == envoy[1]


def test_every_stricter_case_exists() -> None:
    assert set(STRICTER) <= {name for name, _ in CASES}
