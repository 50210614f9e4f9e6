"""response.flags and response.code_details as a plugin reads them, for the replies the proxy makes itself: Envoy
1.40 and the agent, the same bootstrap and the same requests, compared in the same run.

The corpus module c/propdump reads the two properties in every callback it gets (request headers "rh", response
headers "sh", response body "sb", the log "lg") and logs their bytes. Each case sends one raw HTTP/1.1 request
that ends in a reply of the proxy's own (no route, an upstream timeout, a connection the upstream closes, a
refused connect, codec errors) or a plain answer, and compares per callback what the plugin read (and the status
line). Envoy's flags are its legacy bit field (StreamInfo::legacyResponseFlags: NR 0x100, UT 0x4, UC 0x40, UF 0x20,
DPE 0x40000). A request refused before its head reached the plugins (a codec error, no Host, a fragment, an upgrade
not enabled) reaches only their log callback, in both: Envoy makes each wasm filter's context there.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import modules as corpus_modules
from tests.differential import propdump
from tests.differential.propdump import Proxy
from tests.testbed import h2raw, planes, procs, upstream

pytestmark = pytest.mark.integration

BOOTSTRAP = """
admin: {address: {socket_address: {address: 127.0.0.1, port_value: ${ADMIN_PORT}}}}
static_resources:
  listeners:
  - name: http-in
    address: {socket_address: {address: 127.0.0.1, port_value: ${PORT}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: flags
          route_config:
            virtual_hosts:
            - name: vh
              domains: ["*"]
              routes:
              - {match: {prefix: /ok}, route: {cluster: backend}}
              - {match: {prefix: /slow}, route: {cluster: silent, timeout: 0.3s}}
              - {match: {prefix: /gone}, route: {cluster: closer}}
              - {match: {prefix: /hold}, route: {cluster: holder, timeout: 0s}}
              - {match: {prefix: /down}, route: {cluster: dead}}
          http_filters:
          - name: propdump
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: propdump
                root_id: propdump-root
                vm_config: {vm_id: propdump-vm, runtime: envoy.wasm.runtime.v8, code: {local: {filename: "${MODULE}"}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "response.flags\\nresponse.code_details"
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
  clusters:
"""

CLUSTER = """  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]
"""

_GET = b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n"

# name, the raw request
CASES: list[tuple[str, bytes]] = [
    ("answered", _GET % b"/ok"),
    ("no route", _GET % b"/nope"),
    ("upstream timeout", _GET % b"/slow"),
    ("upstream closes the connection", _GET % b"/gone"),
    ("bad chunk after the head", b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"),
    ("connect refused", _GET % b"/down"),
    ("bad header name", b"GET /ok HTTP/1.1\r\nhost: x\r\nx y: z\r\n\r\n"),
    ("content-length not a number", b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n"),
    ("no host", b"GET /ok HTTP/1.1\r\n\r\n"),
    ("headers too large", b"GET /ok HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"),
    (
        "too many headers",
        b"GET /ok HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-%d: y\r\n" % i for i in range(101)) + b"\r\n",
    ),
    (
        "trailers too large",
        b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        + b"x-big: "
        + b"a" * 70_000
        + b"\r\n\r\n",
    ),
    (
        "both framings",
        b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ),
    ("unknown transfer coding", b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n"),
    ("unknown version", b"GET /ok HTTP/1.2\r\nhost: x\r\n\r\n"),
    ("unknown method", b"FOO /ok HTTP/1.1\r\nhost: x\r\n\r\n"),
    ("fragment", b"GET /ok#f HTTP/1.1\r\nhost: x\r\n\r\n"),
    ("connection nominates host", b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: host\r\n\r\n"),
    ("upgrade not enabled", b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"),
    ("bad host", b"GET /ok HTTP/1.1\r\nhost: a b\r\n\r\n"),
    ("absolute form of another scheme", b"GET ftp://x/ok HTTP/1.1\r\nhost: x\r\n\r\n"),
    ("connection nominates ten", b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: a,b,c,d,e,f,g,h,i,j\r\n\r\n"),
    ("connect", b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n"),
    ("asterisk form", b"GET * HTTP/1.1\r\nhost: x\r\n\r\n"),
    ("absolute form with a bad host", b"GET http://a_b/ok HTTP/1.1\r\nhost: x\r\n\r\n"),
    ("connection nominates a pseudo-header", b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: :path\r\n\r\n"),
]

#: cases where the agent still differs (strict xfails: each fails the run once it passes): why
DIFFERS: dict[str, str] = {}


def _closer(server: socket.socket) -> None:
    """Accept, read the request, close without answering."""
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)


class _Holder:
    """An upstream that reads requests and never answers (a route without timeout, as Istio's: only the client
    leaving ends such a request); `open` counts the connections it has not seen end."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.lock = threading.Lock()
        self.open = 0
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
        with conn, contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                if b"\r\n\r\n" in chunk:
                    with self.lock:
                        self.requests += 1
        with self.lock:
            self.open -= 1


@pytest.fixture(scope="module")
def holder() -> Iterator[_Holder]:
    h = _Holder()
    yield h
    h.server.close()


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory, holder: _Holder) -> Iterator[dict[str, Proxy]]:
    tmp: Path = tmp_path_factory.mktemp("flags")
    logs = tmp / "logs"
    started: list[Any] = []
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never answers
    closer = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_closer, args=(closer,), daemon=True).start()
    try:
        echo = upstream.start_service("echo", log_dir=logs)
        started.append(echo)
        clusters = "".join(
            CLUSTER.format(name=name, port=port)
            for name, port in (
                ("backend", echo.port),
                ("silent", silent.getsockname()[1]),
                ("closer", closer.getsockname()[1]),
                ("holder", holder.server.getsockname()[1]),
                ("dead", procs.free_port()),
            )
        )
        out: dict[str, Proxy] = {}
        for plane in planes.PLANES:
            port, admin = procs.free_port(), procs.free_port()
            text = BOOTSTRAP + clusters
            for key, value in (
                ("ADMIN_PORT", admin),
                ("PORT", port),
                ("MODULE", corpus_modules.module("c/propdump").path),
            ):
                text = text.replace("${" + key + "}", str(value))
            path = tmp / f"{plane}.yaml"
            path.write_text(text)
            proxy = planes.start(plane, path, port=port, admin_port=admin, log_dir=logs / plane)
            started.append(proxy)
            out[plane] = Proxy(port, proxy.logs)
        yield out
    finally:
        for item in reversed(started):
            item.stop()
        silent.close()
        closer.close()


def _status_line(port: int, request: bytes) -> bytes:
    """Send the request and read the whole response (head, then its content-length or chunked body, or up to the
    proxy's close) before closing: a client that closed after the status line would race the proxy's own body
    handling (Envoy then flags the stream DC, downstream_remote_disconnect)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        got = b""
        with contextlib.suppress(OSError):
            while not _complete(got) and (chunk := sock.recv(65536)):
                got += chunk
    return got.split(b"\r\n", 1)[0]


def _complete(response: bytes) -> bool:
    """Whether `response` holds a whole HTTP/1.1 response (a body without length runs to the close)."""
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    fields = {
        name.strip().lower(): value.strip().lower()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
    }
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        return body.endswith(b"0\r\n\r\n")
    if (length := fields.get(b"content-length")) is not None:
        return len(body) >= int(length)
    status = head.split(b" ", 2)[1:2]
    return status in ([b"204"], [b"304"])


def _read(proxy: Proxy, request: bytes) -> tuple[bytes, propdump.Props]:
    """The status line and, per callback, what the plugin read: (response.flags, response.code_details)."""
    return propdump.props_after(proxy, lambda: _status_line(proxy.port, request))


def _read_h2(proxy: Proxy, headers: tuple[h2raw.Header, ...]) -> tuple[str, propdump.Props]:
    """As `_read`, for one HTTP/2 request (prior knowledge): its outcome ("status 400", "reset ...", "closed")
    once the proxy answered it whole or `H2_READ_S` passed (a client leaving early would be flagged DC). Longer
    than Envoy's 1 s delayed close: a connection it ends is seen closed, not read as "nothing" by a race."""
    return propdump.props_after(
        proxy, lambda: h2raw.run(proxy.port, lambda client: client.request(1, headers), timeout=H2_READ_S).kind(1)
    )


#: how long `_read_h2` reads (past Envoy's delayed_close_timeout, 1 s)
H2_READ_S = 2.0


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        pytest.param(n, r, id=n, marks=[pytest.mark.xfail(strict=True, reason=DIFFERS[n])] if n in DIFFERS else [])
        for n, r in CASES
    ],
)
def test_plugins_read_the_flags_and_details_envoy_gives(
    proxies: dict[str, Proxy], name: str, request_bytes: bytes
) -> None:
    envoy = _read(proxies["envoy"], request_bytes)
    agent = _read(proxies["agent"], request_bytes)
    assert "lg" in envoy[1], envoy  # Envoy ran the log callback: the comparison has something to compare
    assert agent == envoy


def _leave(sock: socket.socket, how: str) -> None:
    if how == "half-close":
        sock.shutdown(socket.SHUT_WR)
    elif how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["close", "half-close", "reset"])
def test_a_client_leaving_while_the_upstream_is_silent(proxies: dict[str, Proxy], holder: _Holder, how: str) -> None:
    """The request reached an upstream that does not answer (the route has no timeout); the client closes,
    half-closes or resets its connection. Envoy notices at once (it watches for the close while it reads nothing
    more of the connection), closes the upstream connection and logs the stream as the client's disconnect;
    the agent must too -- else every client that gives up leaves an upstream connection open for good."""
    got = {}
    for plane in ("envoy", "agent"):
        proxy = proxies[plane]

        def act(port: int = proxy.port) -> int:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            seen = holder.requests
            sock.sendall(_GET % b"/hold")
            procs.wait_until(lambda: holder.requests > seen, timeout=10, what="the request at the upstream")
            _leave(sock, how)
            procs.wait_until(lambda: holder.open == 0, timeout=10, what="the upstream connection closed")
            return holder.open

        got[plane] = propdump.props_after(proxy, act)
    assert "lg" in got["envoy"][1], got
    assert got["agent"] == got["envoy"]


@pytest.mark.parametrize("how", ["close", "stream reset"])
def test_an_http2_client_leaving_while_the_upstream_is_silent(
    proxies: dict[str, Proxy], holder: _Holder, how: str
) -> None:
    """As above over HTTP/2 (prior knowledge): the client closes the connection or resets the stream
    (RST_STREAM CANCEL)."""
    got = {}
    for plane in ("envoy", "agent"):
        proxy = proxies[plane]

        def act(port: int = proxy.port) -> int:
            client = h2raw.RawClient(port)
            try:
                seen = holder.requests
                client.request(1, (*_H2_GET[:2], (b":path", b"/hold"), _H2_GET[3]))
                procs.wait_until(lambda: holder.requests > seen, timeout=10, what="the request at the upstream")
                if how == "stream reset":  # the connection stays open until the upstream's is gone
                    client.h2.reset_stream(1, 8)
                    client.flush()
                    procs.wait_until(lambda: holder.open == 0, timeout=10, what="the upstream connection closed")
            finally:
                client.close()
            procs.wait_until(lambda: holder.open == 0, timeout=10, what="the upstream connection closed")
            return holder.open

        got[plane] = propdump.props_after(proxy, act)
    assert "lg" in got["envoy"][1], got
    assert got["agent"] == got["envoy"]


def test_every_marked_case_exists() -> None:
    assert set(DIFFERS) <= {name for name, _ in CASES}


_H2_GET = ((b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/ok"), (b":authority", b"x"))
# name, the HTTP/2 request's header block
H2_CASES: list[tuple[str, tuple[h2raw.Header, ...]]] = [
    ("answered", _H2_GET),
    ("headers too large", (*_H2_GET, (b"x-big", b"a" * 70_000))),
    ("too many headers", (*_H2_GET, *((b"x-%d" % i, b"y") for i in range(101)))),
    ("no authority", _H2_GET[:3]),
    ("fragment", ((b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/ok#f"), (b":authority", b"x"))),
]
#: (headers too large / too many: both reset the stream before any plugin callback, the same; no authority: both
#: close the connection without a word, tests/integration/test_differential_h2.py compares the bytes)
H2_DIFFERS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("name", "headers"),
    [
        pytest.param(
            n, h, id=n, marks=[pytest.mark.xfail(strict=True, reason=H2_DIFFERS[n])] if n in H2_DIFFERS else []
        )
        for n, h in H2_CASES
    ],
)
def test_over_http2_plugins_read_what_envoy_gives(
    proxies: dict[str, Proxy], name: str, headers: tuple[h2raw.Header, ...]
) -> None:
    envoy = _read_h2(proxies["envoy"], headers)
    agent = _read_h2(proxies["agent"], headers)
    assert agent == envoy
