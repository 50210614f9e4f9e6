"""A plugin holding the response head (StopIteration on its headers, its body buffered) when the upstream then
fails: Envoy 1.40 and the agent on the same bootstrap, the same upstream behaviour, compared in the same run.

Envoy's router has passed the head on (to the filter chain) once it came: an upstream reset after it is a reset
after the response started, whatever a filter still holds -- the client's stream is reset (HTTP/1.1: the
connection closed, no response), the plugins log upstream_reset_after_response_started{...}; no 503 is made.
The holding plugin is a WAT module written here (`HOLDER`); beside it the corpus module c/propdump reads
response.flags and response.code_details in each callback (tests/differential/propdump.py): the chain is holder,
propdump, router, so propdump sees the response before the holder stops it.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.differential import propdump
from tests.testbed import envoy as tb_envoy
from tests.testbed import h2raw, planes, rawpeer
from tests.testbed.h2raw import Part

pytestmark = pytest.mark.integration

#: proxy-wasm ABI 0.2.1: every response head stopped (1: StopIteration), every response body buffered
#: (1: StopIterationAndBuffer); nothing else done
HOLDER = """
(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32) (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7)) (i32.const -8)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
)
"""

_S200 = (b":status", b"200")
_INTERNAL_ERROR = 2

# name, what the upstream answers: frames of the HTTP/2 upstream, or the bytes an HTTP/1.1 upstream sends before it
# closes the connection -- each a response head, then a failure
CASES: list[tuple[str, tuple[Part, ...] | bytes]] = [
    ("HTTP/2: RST_STREAM after the head", (Part(headers=(_S200,)), Part(reset=_INTERNAL_ERROR))),
    ("HTTP/2: RST_STREAM mid-body", (Part(headers=(_S200,)), Part(data=b"ok"), Part(reset=_INTERNAL_ERROR))),
    ("HTTP/2: close mid-body", (Part(headers=(_S200,)), Part(data=b"ok"), Part(close=True))),
    ("HTTP/1.1: close after the head", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"),
    ("HTTP/1.1: close mid-body", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok"),
    ("HTTP/1.1: bad chunk mid-body", b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n"),
]


def _holder_filter(path: Path) -> dict[str, Any]:
    config = {
        "name": "holder",
        "root_id": "holder",
        "vm_config": {
            "vm_id": "holder-vm",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(path)}},
        },
    }
    return {
        "name": "holder",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
    }


def _h1_upstream(scripts: dict[bytes, bytes], conn: socket.socket) -> None:
    """Read one request head, send its path's bytes, close."""
    head = rawpeer.recv_until(conn, lambda got: b"\r\n\r\n" in got)
    path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
    conn.sendall(scripts.get(path, b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"))


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, propdump.Proxy]]:
    """Envoy and the agent on one bootstrap: holder, propdump, router; /h2/<i> to the scripted HTTP/2 upstream,
    /h1/<i> to the HTTP/1.1 one."""
    tmp: Path = tmp_path_factory.mktemp("held")
    holder = tmp / "holder.wasm"
    holder.write_bytes(wasmtime.wat2wasm(HOLDER))
    h2_scripts = {b"/h2/%d" % i: s for i, (_, s) in enumerate(CASES) if isinstance(s, tuple)}
    server = h2raw.RawServer(lambda path: h2_scripts.get(path, (Part(headers=((b":status", b"404"),), end=True),)))
    h1 = rawpeer.RawPeer(
        functools.partial(_h1_upstream, {b"/h1/%d" % i: s for i, (_, s) in enumerate(CASES) if isinstance(s, bytes)})
    )
    routes = [
        {"match": {"prefix": "/h2/"}, "route": {"cluster": "h2", "timeout": "3s"}},
        {"match": {"prefix": "/h1/"}, "route": {"cluster": "h1", "timeout": "3s"}},
    ]
    clusters = [tb_envoy.static_cluster("h2", server.port, http2=True), tb_envoy.static_cluster("h1", h1.port)]

    def config(plane: str, port: int, admin: int) -> Path:
        filters = [_holder_filter(holder), propdump.wasm_filter()]
        listener = tb_envoy.http_listener("l", port, cluster="h2", http_filters=filters, routes=routes)
        return tb_envoy.write_config(tb_envoy.bootstrap(admin, [listener], clusters), tmp / plane)

    try:
        with planes.each(config, log_dir=tmp / "logs") as running:
            yield {plane: propdump.Proxy(p.port, p.logs) for plane, p in running.items()}
    finally:
        server.close()
        h1.close()


def _path(index: int) -> bytes:
    return b"/h2/%d" % index if isinstance(CASES[index][1], tuple) else b"/h1/%d" % index


def _h2_outcome(port: int, index: int) -> tuple[object, ...]:
    """What an HTTP/2 client gets on stream 1: status, body, reset code; whether the connection ended."""
    headers = [(n, _path(index) if n == b":path" else v) for n, v in h2raw.BASE]

    def ended(o: h2raw.H2Outcome) -> bool:
        return 1 in o.resets or 1 in o.ended or o.closed

    out = h2raw.run(port, lambda c: c.request(1, headers), until=ended, timeout=3.0)
    return out.statuses.get(1), out.bodies.get(1), out.resets.get(1), out.goaway, out.closed


@pytest.mark.parametrize("index", range(len(CASES)), ids=[n for n, _ in CASES])
def test_an_http1_client_and_plugin_see_what_envoy_gives(proxies: dict[str, propdump.Proxy], index: int) -> None:
    request = b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n" % _path(index)
    envoy = propdump.read(proxies["envoy"], request)
    agent = propdump.read(proxies["agent"], request)
    assert "lg" in envoy.props, envoy  # Envoy ran the log callback: there is something to compare
    assert agent == envoy


@pytest.mark.parametrize("index", range(len(CASES)), ids=[n for n, _ in CASES])
def test_an_http2_client_and_plugin_see_what_envoy_gives(proxies: dict[str, propdump.Proxy], index: int) -> None:
    got = {
        plane: propdump.props_after(proxy, functools.partial(_h2_outcome, proxy.port, index))
        for plane, proxy in proxies.items()
    }
    assert "lg" in got["envoy"][1], got
    assert got["agent"] == got["envoy"]
