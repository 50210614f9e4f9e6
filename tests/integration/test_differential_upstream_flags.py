"""The agent as the client of an HTTP/2 upstream that misbehaves, against Envoy 1.40 on the same bootstrap in the
same run: what the HTTP/1.1 client gets (status line, headers, body bytes, cut short or closed) and what a plugin
reads of response.flags and response.code_details in each callback (the corpus module c/propdump:
tests/differential/propdump.py).

A scripted h2c upstream (tests/testbed/h2raw.RawServer: header blocks sent as given, RST_STREAM, GOAWAY, a close)
answers each case's path; the proxies' http2 cluster points at it. Beside it a cluster whose port refuses connects,
over HTTP/2 and HTTP/1.1. test_differential_h2.py compares the client's view of more response header blocks; this
file adds the plugin's view (flags, details) and the connection-level endings (GOAWAY, close).
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.differential import propdump
from tests.testbed import envoy as tb_envoy
from tests.testbed import h2raw, planes, procs, rawpeer
from tests.testbed.h2raw import Part

pytestmark = pytest.mark.integration

_S200 = (b":status", b"200")
_OK = (Part(data=b"ok", end=True),)
_NO_ERROR, _PROTOCOL_ERROR, _INTERNAL_ERROR, _REFUSED_STREAM, _CANCEL = 0, 1, 2, 7, 8


def _raw(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as given (no library builds these)."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _answer(*headers: tuple[bytes, bytes], body: tuple[Part, ...] = _OK) -> tuple[Part, ...]:
    """One header block as given (no END_STREAM), then `body` (default: DATA "ok" with END_STREAM)."""
    return (Part(headers=headers), *body)


# name, what the HTTP/2 upstream answers a GET with (frames), or the bytes an HTTP/1.1 upstream answers with before
# it closes the connection, or the name of a cluster (and route) whose connect fails: "refused-*" to a port nothing
# listens on, "timeout-*" to one whose accept queue is full (the SYN is dropped: the cluster's connect_timeout ends
# the attempt), over HTTP/2 ("*-h2") or HTTP/1.1 ("*-h1")
Script = tuple[Part, ...] | bytes | str
CASES: list[tuple[str, Script]] = [
    ("answered", _answer(_S200, (b"x-a", b"1"))),
    ("upper-case header name", _answer(_S200, (b"X-Upper", b"1"))),
    ("connection header", _answer(_S200, (b"connection", b"close"))),
    ("transfer-encoding header", _answer(_S200, (b"transfer-encoding", b"chunked"))),
    ("pseudo-header after a regular one", _answer((b"x-a", b"1"), _S200)),
    ("no :status", _answer((b"x-a", b"1"))),
    (":status not a number", _answer((b":status", b"abc"))),
    (":status 600", _answer((b":status", b"600"))),
    ("two :status", _answer(_S200, (b":status", b"201"))),
    ("content-length larger than the body", _answer(_S200, (b"content-length", b"10"))),
    ("content-length smaller than the body", _answer(_S200, (b"content-length", b"1"))),
    ("upper-case trailer name", _answer(_S200, body=(Part(data=b"ok"), Part(headers=((b"X-T", b"1"),), end=True)))),
    ("RST_STREAM before the head", (Part(reset=_INTERNAL_ERROR),)),
    ("RST_STREAM REFUSED_STREAM before the head", (Part(reset=_REFUSED_STREAM),)),
    ("RST_STREAM CANCEL before the head", (Part(reset=_CANCEL),)),
    ("RST_STREAM after the head", _answer(_S200, body=(Part(reset=_INTERNAL_ERROR),))),
    ("RST_STREAM mid-body", _answer(_S200, body=(Part(data=b"ok"), Part(reset=_INTERNAL_ERROR)))),
    ("RST_STREAM NO_ERROR after the whole response", _answer(_S200, body=(Part(data=b"ok", end=True),
                                                                        Part(reset=_NO_ERROR)))),
    ("GOAWAY below the stream, before the head", (Part(goaway=_NO_ERROR, last_stream=0),)),
    ("GOAWAY PROTOCOL_ERROR below the stream", (Part(goaway=_PROTOCOL_ERROR, last_stream=0), Part(close=True))),
    ("GOAWAY at the stream, then the response", (Part(goaway=_NO_ERROR), *_answer(_S200))),
    ("GOAWAY at the stream, then the close", (Part(goaway=_NO_ERROR), Part(close=True))),
    ("GOAWAY mid-body, then the close", _answer(_S200, body=(Part(data=b"ok"), Part(goaway=_INTERNAL_ERROR),
                                                             Part(close=True)))),
    ("DATA on stream 0", (Part(raw=_raw(0, 0, 0, b"x")),)),
    ("HEADERS on an even stream", (Part(raw=_raw(1, 5, 2, b"\x88")),)),
    ("DATA over the frame size", _answer(_S200, body=(Part(raw=_raw(0, 1, 1, b"x" * 16385)),))),
    ("PING of a bad length", (Part(raw=_raw(6, 0, 0, b"\x00" * 7)),)),
    ("zero WINDOW_UPDATE on the connection", (Part(raw=_raw(8, 0, 0, b"\x00" * 4)),)),
    ("HPACK bomb", _answer(_S200, *[(b"x-bomb", b"b" * 4000)] * 30)),
    # PRIORITY frames the nghttp2 Envoy 1.40 is built with (1.65+) ignores; Debian's 1.52 ends the connection
    ("PRIORITY on its own stream before the head", (Part(raw=_raw(2, 0, 1, b"\x00\x00\x00\x01\x0f")), *_answer(_S200))),
    ("PRIORITY on stream 0 mid-body", _answer(_S200, body=(Part(data=b"o"), Part(raw=_raw(2, 0, 0, b"\0\0\0\0\x0f")),
                                                           Part(data=b"k", end=True)))),
    ("close before the head", (Part(close=True),)),
    ("close after the head", _answer(_S200, body=(Part(close=True),))),
    ("close mid-body", _answer(_S200, body=(Part(data=b"ok"), Part(close=True)))),
    ("HTTP/1.1: close before the head", b""),
    ("HTTP/1.1: close mid-head", b"HTTP/1.1 200 OK\r\ncontent-le"),
    ("HTTP/1.1: close after the head", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"),
    ("HTTP/1.1: bad status line", b"HTTP/1.1 2x0 OK\r\ncontent-length: 2\r\n\r\nok"),
    ("HTTP/1.1: body to the close", b"HTTP/1.1 200 OK\r\n\r\nok"),
    ("HTTP/1.1: close mid-body", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok"),
    ("HTTP/1.1: close mid-chunked-body", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n"),
    ("HTTP/1.1: bad chunk mid-body", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"),
    ("connect refused (HTTP/2 cluster)", "refused-h2"),
    ("connect refused (HTTP/1.1 cluster)", "refused-h1"),
    ("connect timeout (HTTP/2 cluster)", "timeout-h2"),
    ("connect timeout (HTTP/1.1 cluster)", "timeout-h1"),
]  # fmt: skip

#: cases where the agent still differs from Envoy (strict xfails: each fails the run once it passes): why
DIFFERS: dict[str, str] = {}


@pytest.fixture(scope="module")
def server() -> Iterator[h2raw.RawServer]:
    """The scripted HTTP/2 upstream: /c/<i> answered as CASES[i] says."""
    scripted = {b"/c/%d" % i: parts for i, (_, parts) in enumerate(CASES) if isinstance(parts, tuple)}
    raw = h2raw.RawServer(lambda path: scripted.get(path, _answer(_S200)))
    yield raw
    raw.close()


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory, server: h2raw.RawServer) -> Iterator[dict[str, propdump.Proxy]]:
    """Envoy and the agent on one bootstrap: propdump, then the router; /c/<i> to the scripted HTTP/2 upstream,
    /refused-* to a port nothing listens on, /timeout-* to one that takes no connection."""
    tmp: Path = tmp_path_factory.mktemp("upflags")
    logs = tmp / "logs"
    h1 = rawpeer.RawPeer(functools.partial(_h1_upstream, {b"/h1/%d" % i: p for i, (_, p) in enumerate(CASES)}))
    dead = procs.free_port()
    full = socket.create_server(("127.0.0.1", 0), backlog=0)  # never accepts: one connect fills its queue
    filler = socket.create_connection(full.getsockname()[:2])
    routes = [
        {"match": {"prefix": "/c/"}, "route": {"cluster": "h2", "timeout": "3s"}},
        {"match": {"prefix": "/h1/"}, "route": {"cluster": "h1", "timeout": "3s"}},
    ]
    clusters = [tb_envoy.static_cluster("h2", server.port, http2=True), tb_envoy.static_cluster("h1", h1.port)]
    for name in ("refused-h2", "refused-h1", "timeout-h2", "timeout-h1"):
        port = dead if name.startswith("refused") else full.getsockname()[1]
        routes.append({"match": {"prefix": f"/{name}"}, "route": {"cluster": name}})
        clusters.append(tb_envoy.static_cluster(name, port, http2=name.endswith("h2"), connect_timeout="0.25s"))

    def config(plane: str, port: int, admin: int) -> Path:
        listener = tb_envoy.http_listener("l", port, cluster="h2", http_filters=[propdump.wasm_filter()], routes=routes)
        return tb_envoy.write_config(tb_envoy.bootstrap(admin, [listener], clusters), tmp / plane)

    try:
        with planes.each(config, log_dir=logs) as running:
            yield {plane: propdump.Proxy(p.port, p.logs) for plane, p in running.items()}
    finally:
        h1.close()
        filler.close()
        full.close()


def _h1_upstream(scripts: dict[bytes, Script], conn: socket.socket) -> None:
    """The HTTP/1.1 upstream: read one request head, send its path's bytes, close."""
    head = rawpeer.recv_until(conn, lambda got: b"\r\n\r\n" in got)
    path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
    script = scripts.get(path)
    conn.sendall(script if isinstance(script, bytes) else b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")


def _request(index: int, script: Script) -> bytes:
    path = f"/{script}" if isinstance(script, str) else f"/h1/{index}" if isinstance(script, bytes) else f"/c/{index}"
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("index", "script"),
    [
        pytest.param(i, p, id=n, marks=[pytest.mark.xfail(strict=True, reason=DIFFERS[n])] if n in DIFFERS else [])
        for i, (n, p) in enumerate(CASES)
    ],
)
def test_client_and_plugin_see_what_envoy_gives(proxies: dict[str, propdump.Proxy], index: int, script: Script) -> None:
    request = _request(index, script)
    envoy = propdump.read(proxies["envoy"], request)
    agent = propdump.read(proxies["agent"], request)
    assert "lg" in envoy.props, envoy  # Envoy ran the log callback: there is something to compare
    assert agent == envoy


#: the cases whose upstream breaks the protocol: what each proxy sends it after the bad frame is compared too
BAD_FRAMES = ("DATA on stream 0", "HEADERS on an even stream", "DATA over the frame size", "PING of a bad length",
              "zero WINDOW_UPDATE on the connection", "HPACK bomb", "upper-case header name", "no :status")  # fmt: skip


def _ends(sent: bytes, ended: bool) -> bool:
    return ended or any(f[0] == 3 for f in h2raw.frames(sent))


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_the_upstream_reads_what_envoy_sends_it(
    proxies: dict[str, propdump.Proxy], server: h2raw.RawServer, name: str
) -> None:
    """An upstream that breaks the protocol gets from the agent what it gets from Envoy 1.40: nghttp2's GOAWAY
    for what nghttp2 ends the connection for itself (DATA on stream 0, a bad frame size), nothing for a frame it
    reports as invalid (Envoy's codec client closes the connection without a flush), RST_STREAM INTERNAL_ERROR
    for a response head past max_response_headers_kb (the connection goes on)."""
    index = next(i for i, (n, _) in enumerate(CASES) if n == name)
    path = b"/c/%d" % index
    got = {}
    for plane, proxy in proxies.items():
        propdump.read(proxy, _request(index, CASES[index][1]))
        sent, ended = server.after_answer(path, _ends)
        got[plane] = ([f for f in h2raw.frames(sent) if f[0] in (3, 7)], ended)
    assert got["agent"] == got["envoy"]


def test_every_marked_case_exists() -> None:
    assert set(DIFFERS) <= {name for name, _ in CASES}


#: the HTTP/2 upstream's cases a client speaking HTTP/2 sends too (the agent's HTTP/2 downstream, h2down)
H2_CLIENT_CASES = [(i, n, s) for i, (n, s) in enumerate(CASES) if isinstance(s, tuple) or str(s).endswith("-h2")]


def _h2_outcome(port: int, index: int, script: Script) -> tuple[object, ...]:
    """What an HTTP/2 client gets on stream 1: status, body, reset code; whether the connection ended."""
    path = (f"/{script}" if isinstance(script, str) else f"/c/{index}").encode()
    headers = [(n, path if n == b":path" else v) for n, v in h2raw.BASE]

    def ended(o: h2raw.H2Outcome) -> bool:
        return 1 in o.resets or 1 in o.ended or o.closed

    out = h2raw.run(port, lambda c: c.request(1, headers), until=ended, timeout=3.0)
    return out.statuses.get(1), out.bodies.get(1), out.resets.get(1), out.goaway, out.closed


@pytest.mark.parametrize(("index", "script"), [pytest.param(i, s, id=n) for i, n, s in H2_CLIENT_CASES])
def test_an_http2_client_and_plugin_see_what_envoy_gives(
    proxies: dict[str, propdump.Proxy], index: int, script: Script
) -> None:
    """The same upstream behaviour through each proxy's HTTP/2 downstream: the client's stream and the plugin's
    view."""
    got = {
        plane: propdump.props_after(proxy, functools.partial(_h2_outcome, proxy.port, index, script))
        for plane, proxy in proxies.items()
    }
    assert "lg" in got["envoy"][1], got
    assert got["agent"] == got["envoy"]
