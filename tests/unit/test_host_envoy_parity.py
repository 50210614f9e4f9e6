"""Host behaviours pinned against Envoy 1.40 (each checked with a probe guest or a corpus module run through
Envoy): inline-header coalescing, local replies for gRPC and other requests, local replies sent from an
http-call response, upstream / response properties, response headers detached after they continued, the
context-bound foreign functions."""

from __future__ import annotations

import functools

import pytest

from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.corpus import modules as corpus_modules
from tests.unit.test_host_lifecycle import _guest, new_host, trace

BACKENDS = ("fast", "public")


# ---- 1. inline headers ------------------------------------------------------------------------------
def test_add_header_appends_to_inline_headers_only() -> None:
    h: C.Headers = [(b":status", b"200"), (b"cache-control", b"max-age=60"), (b"x-a", b"1")]
    C.add_header(h, b"cache-control", b"no-store", C.RESPONSE_INLINE_HEADERS)
    C.add_header(h, b"x-a", b"2", C.RESPONSE_INLINE_HEADERS)
    C.add_header(h, b"vary", b"a", C.RESPONSE_INLINE_HEADERS)
    C.add_header(h, b"vary", b"", C.RESPONSE_INLINE_HEADERS)  # an empty value adds nothing
    assert h == [
        (b":status", b"200"),
        (b"cache-control", b"max-age=60,no-store"),
        (b"x-a", b"1"),
        (b"x-a", b"2"),
        (b"vary", b"a"),
    ]
    # request map: its own list (user-agent inline there, not in responses)
    r: C.Headers = [(b"user-agent", b"a")]
    C.add_header(r, b"user-agent", b"b", C.REQUEST_INLINE_HEADERS)
    assert r == [(b"user-agent", b"a,b")]
    assert b"user-agent" not in C.RESPONSE_INLINE_HEADERS and b"etag" in C.RESPONSE_INLINE_HEADERS


@pytest.mark.parametrize("backend", BACKENDS)
def test_respheaders_appends_to_the_upstreams_cache_control(backend: str) -> None:
    """examples/filters/assemblyscript/respheaders: Envoy answers `cache-control: max-age=60,no-store`."""
    host = new_host(backend)
    module = corpus_modules.module("assemblyscript/respheaders").path.read_bytes()
    config = b"X-Served-By: meshplug corpus\ncache-control: no-store\n"
    plugin = host.load(H.PluginConfig(name="rh", root_id="respheaders", configuration=config), module)
    s = C.Chain([plugin]).new_stream()
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    resp = C.http1_response_headers(404, [(b"cache-control", b"max-age=60"), (b"content-type", b"text/plain")])
    out = s.recv_response_headers(resp, False)
    (head,) = [o for o in out if isinstance(o, C.SendHeaders)]
    assert [v for k, v in head.headers if k == b"cache-control"] == [b"max-age=60,no-store"]
    assert (b"x-served-by", b"meshplug corpus") in head.headers


# ---- 2. local replies: gRPC or not ------------------------------------------------------------------
GRPC_REQ = [(b":method", b"POST"), (b":path", b"/svc/M"), (b"content-type", b"application/grpc")]


@pytest.mark.parametrize(
    ("grpc_status", "body", "expect_status", "expect_message"),
    [
        (None, b"denied", b"7", b"denied"),  # -1: derived from 403 (PermissionDenied)
        (0, b"denied", b"0", b"denied"),
        (16, b"", b"16", None),
        (17, b"50% off\n", b"7", b"50%25 off%0A"),  # out of range: derived; grpc-message percent-encoded
    ],
)
def test_grpc_local_reply_is_trailers_only(
    grpc_status: int | None, body: bytes, expect_status: bytes, expect_message: bytes | None
) -> None:
    reply = C.LocalReply(403, ((b"x-probe", b"1"), (b"content-type", b"text/x")), body, "d", grpc_status)
    assert C.is_grpc_request(GRPC_REQ)
    headers, out_body = C.local_reply_headers(reply, grpc=True)
    d = dict(headers)
    assert out_body == b""
    assert d[b":status"] == b"200" and d[b"content-type"] == b"application/grpc"
    assert d[b"grpc-status"] == expect_status and d.get(b"grpc-message") == expect_message
    assert b"content-length" not in d and headers[1] == (b"x-probe", b"1")  # (Envoy's HTTP/2 sends none)


@pytest.mark.parametrize("grpc_status", [None, 0, 7, 16, 17])
def test_other_requests_ignore_grpc_status(grpc_status: int | None) -> None:
    hdrs = ((b"x-probe", b"1"),)
    headers, body = C.local_reply_headers(C.LocalReply(403, hdrs, b"denied", "d", grpc_status), grpc=False)
    assert body == b"denied"
    assert headers == [
        (b":status", b"403"),
        (b"x-probe", b"1"),
        (b"content-length", b"6"),
        (b"content-type", b"text/plain"),
    ]
    headers, body = C.local_reply_headers(C.LocalReply(403, hdrs, b"", "d", grpc_status), grpc=False)
    # no body, no content-length (HTTP/1.1's writer adds the codec's 0; HTTP/2 sends none, as Envoy)
    assert (headers, body) == ([(b":status", b"403"), (b"x-probe", b"1")], b"")


def test_local_reply_headers_keep_the_plugins_content_type_and_coalesce() -> None:
    hdrs = ((b"Content-Type", b"application/json"), (b"cache-control", b"a"), (b"cache-control", b"b"))
    reply = C.LocalReply(401, (*hdrs, (b"x-m", b"1"), (b"x-m", b"2")), b"denied")
    headers, _ = C.local_reply_headers(reply, grpc=False)
    assert headers == [
        (b":status", b"401"),
        (b"content-type", b"application/json"),
        (b"cache-control", b"a,b"),
        (b"x-m", b"1"),
        (b"x-m", b"2"),
        (b"content-length", b"6"),
    ]
    assert not C.is_grpc_request([(b":path", b"/"), (b"content-type", b"application/grpc-web")])
    assert C.is_grpc_request([(b":path", b"/"), (b"content-type", b"application/grpc+proto")])


# ---- 6. a local reply from an http-call response reaches the client ---------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_local_reply_from_http_call_response_reaches_the_client(backend: str) -> None:
    host = H.Host(backend=backend)
    module = corpus_modules.module("rust/auth_call").path.read_bytes()
    config = b'{"cluster":"authz","path":"/check","timeout_ms":3000}'
    plugin = host.load(H.PluginConfig(name="auth_call", configuration=config), module)
    stream = C.Chain([plugin]).new_stream(C.StreamInfo())
    assert stream.recv_request_headers(C.http1_request_headers(b"GET", b"/o", [(b"host", b"x")]), True) == []
    (call,) = host.take_http_calls()
    host.complete_http_call(call.id, H.HttpCalloutResult(((b":status", b"401"),)))
    out = stream.take_outputs()
    assert isinstance(out[0], C.AbortUpstream)
    head = next(o for o in out if isinstance(o, C.SendHeaders))
    assert (b":status", b"401") in head.headers and (b"x-auth-by", b"auth_call") in head.headers
    assert stream.code_details is not None
    host.close()


# ---- 4/5. properties ----------------------------------------------------------------------------------
PROPS = (
    "upstream\0address",
    "upstream\0port",
    "upstream\0local_address",
    "response\0code_details",
    "response\0flags",
    "response\0headers\0content-type",
    "response\0trailers",
    "connection\0requested_server_name",
    "connection\0tls_version",
)


@functools.cache
def phase_property_guest() -> bytes:
    """Logs `<phase><status digit>` then the value (if OK) for each of PROPS in response headers (H),
    response body (B) and on_log (G)."""
    data, reads, offset = [], [], 2048
    for path in PROPS:
        data.append(f'(data (i32.const {offset}) "{path.replace(chr(0), chr(92) + "00")}")')
        reads.append(f"""
          (local.set $st (call $prop (i32.const {offset}) (i32.const {len(path)}) (i32.const 4000) (i32.const 4004)))
          (i32.store8 (i32.const 4100) (local.get $phase))
          (i32.store8 (i32.const 4101) (i32.add (local.get $st) (i32.const 48)))
          (drop (call $log (i32.const 2) (i32.const 4100) (i32.const 2)))
          (if (i32.eqz (local.get $st))
            (then (drop (call $log (i32.const 2) (i32.load (i32.const 4000)) (i32.load (i32.const 4004))))))""")
        offset += 64
    return _guest(
        f"""
      (func $read_all (param $phase i32) (local $st i32) {"".join(reads)})
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (call $read_all (i32.const 72))
        (i32.const 0))
      (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) (call $read_all (i32.const 66))
        (i32.const 0))
      (func (export "proxy_on_log") (param i32) (call $read_all (i32.const 71)))""",
        imports='(import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))',
        data=" ".join(data),
    )


def by_phase(messages: list[str], phase: str) -> list[str | bytes]:
    """For one phase: each property's status digit, followed by its value when the status is 0."""
    out: list[str | bytes] = []
    take = False
    for m in messages:
        if len(m) == 2 and m[0] in "HBG" and m[1].isdigit():
            take = m[0] == phase
            if take:
                out.append(m[1])
        elif take:
            out.append(m.encode())
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_upstream_and_response_properties_as_envoy(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="p"), phase_property_guest())
    s = C.Chain([plugin]).new_stream(C.StreamInfo())
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    s.set_upstream("127.0.0.1", 8080, "127.0.0.1", 40000)
    s.recv_response_headers(C.http1_response_headers(200, [(b"content-type", b"text/plain")]), False)
    s.recv_response_data(b"hi", True)
    s.complete()
    logs = trace(host, "p")
    zero8, empty_map = b"\0" * 8, b"\0\0\0\0"
    port = (8080).to_bytes(8, "little").decode(errors="replace").encode()  # as the log record carries it
    common = ["0", b"127.0.0.1:8080", "0", port, "0", b"127.0.0.1:40000", "0", b"via_upstream", "0", zero8]
    # as Envoy 1.40: response.headers.* NotFound once on_response_headers continued, back in on_log;
    # response.trailers an empty map; requested_server_name "" and tls_version NotFound on plaintext
    assert by_phase(logs, "H") == [*common, "0", b"text/plain", "0", empty_map, "0", b"", "1"]
    assert by_phase(logs, "B") == [*common, "1", "0", empty_map, "0", b"", "1"]
    assert by_phase(logs, "G") == [*common, "0", b"text/plain", "0", empty_map, "0", b"", "1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_upstream_no_upstream_properties_and_local_reply_details(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="p"), phase_property_guest())
    s = C.Chain([plugin]).new_stream(C.StreamInfo())
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    s._send_local_reply(C.LocalReply(403, body=b"no", details="denied_here"), 0)
    s.take_outputs()
    s.complete()
    log = by_phase(trace(host, "p"), "G")
    assert log[:4] == ["1", "1", "1", "0"] and log[4] == b"denied_here"


# ---- 3. foreign functions -------------------------------------------------------------------------------
@functools.cache
def foreign_guest() -> bytes:
    """on_request_headers: declare_property(name="my.prop", readonly=true) twice, set_envoy_filter_state,
    then set_property twice on the declared path; logs each status digit."""
    decl = "\\0a\\07my.prop\\10\\01"  # DeclarePropertyArguments{name: "my.prop", readonly: true}
    calls = [
        "(call $ff (i32.const 2048) (i32.const 16) (i32.const 2100) (i32.const 11) (i32.const 0) (i32.const 0))",
        "(call $ff (i32.const 2048) (i32.const 16) (i32.const 2100) (i32.const 11) (i32.const 0) (i32.const 0))",
        "(call $ff (i32.const 2070) (i32.const 22) (i32.const 2200) (i32.const 6) (i32.const 0) (i32.const 0))",
        "(call $ff (i32.const 2048) (i32.const 16) (i32.const 2300) (i32.const 2) (i32.const 0) (i32.const 0))",
        "(call $set (i32.const 2102) (i32.const 7) (i32.const 2400) (i32.const 1))",
        "(call $set (i32.const 2102) (i32.const 7) (i32.const 2400) (i32.const 1))",
    ]
    body = "".join(
        f"(i32.store8 (i32.const 3000) (i32.add {c} (i32.const 48)))"
        "(drop (call $log (i32.const 2) (i32.const 3000) (i32.const 1)))"
        for c in calls
    )
    return _guest(
        f"""(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) {body} (i32.const 0))""",
        imports=(
            '(import "env" "proxy_call_foreign_function" (func $ff (param i32 i32 i32 i32 i32 i32) (result i32)))'
            '(import "env" "proxy_set_property" (func $set (param i32 i32 i32 i32) (result i32)))'
        ),
        data=(
            '(data (i32.const 2048) "declare_property") (data (i32.const 2070) "set_envoy_filter_state")'
            f'(data (i32.const 2100) "{decl}") (data (i32.const 2200) "\\0a\\01k\\12\\01v")'
            '(data (i32.const 2300) "\\0a\\ff") (data (i32.const 2400) "x")'
        ),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_declare_property_and_set_envoy_filter_state(backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="ff"), foreign_guest())
    s = C.Chain([plugin]).new_stream()
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    s.complete()
    # declare OK, again BAD_ARGUMENT, filter state NOT_FOUND, malformed args BAD_ARGUMENT,
    # read-only property: first set OK, second BAD_ARGUMENT
    assert trace(host, "ff") == ["0", "2", "1", "2", "0", "2"]
