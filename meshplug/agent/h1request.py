"""One HTTP/1.1 request head, as the downstream connection's parser completes it (`headers_complete`): Envoy
1.40's checks in its order (version, method, target, Connection, Host, framing, upgrades), each refusal kept on
the connection for the parse error it raises; then the exchange it starts -- a plain `Exchange` with the upstream
head built here (hop-by-hop headers dropped, x-request-id and Host added), or a `FilteredExchange` /
`H2UpExchange` with the chain's header list (pseudo-headers first, Host folded into :authority) -- or, for an
allowed upgrade, the tunnel's head (`meshplug.agent.downstream.Downstream` hands the connection over).

The connection (`Downstream`) owns the bytes, the parser, the queue and the timers; this module owns what a head
means. Functions over the connection rather than methods: compiled by mypyc in the same group, the calls are native.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

from meshplug.agent import chain as agent_chain
from meshplug.agent import framing, h1timers, hcm, headermap, routing, wire
from meshplug.agent.bridge import EMPTY_CHAIN, H2UpExchange
from meshplug.agent.exchange import Exchange, log_refusal
from meshplug.agent.filtered import FilteredExchange

if TYPE_CHECKING:
    from meshplug.agent.downstream import Downstream

_In = TypeVar("_In")
_Out = TypeVar("_Out")


def headers_complete(conn: Downstream) -> None:  # noqa: PLR0912, PLR0915 - the request head's checks in Envoy's order, once per request on the data path (mypyc); split, each refusal would cost a call
    conn.in_head = False
    conn.line_bytes = 0
    conn.headers_at = 0.0
    parser = conn.parser
    method: bytes = parser.get_method()
    version: str = parser.get_http_version()
    if version != "1.1" and (version != "1.0" or not conn.opts.accept_http_10):
        refuse(conn, 426, b"Upgrade Required", framing.LOW_VERSION)
    conn.http11 = version == "1.1"
    keep_alive: bool = parser.should_keep_alive()
    headers = conn.headers
    conn.headers = []  # header lines after the body are trailers
    if method not in framing.METHODS:
        # (QUERY: probed, Envoy 1.40 refuses it after its codec, before the filters: 400 without a body)
        refuse(conn, 400, b"" if method == b"QUERY" else framing.BAD_REQUEST)
    # Envoy's header map and request mutations (TE is reduced below, once an upgrade is ruled out)
    headers = hcm.sanitize_request(headers, upgrade=True)
    path = conn.url
    authority = b""
    unroutable = False  # no route can serve the target: the router's 404, the connection goes on (as Envoy)
    connect = method == b"CONNECT"
    if connect:
        # no route serves CONNECT (no connect_matcher): Envoy's router answers 404 after its filters saw the request
        # (as Envoy's codec maps it: :authority and :method alone), and the connection closes; its codec's 400 for
        # an origin-form target
        if path[:1] == b"/":
            refuse(conn, 400, framing.BAD_REQUEST)
        if conn.state.filters is None:
            refuse(conn, 404, b"")
        path, authority, keep_alive = b"", path, False
    elif path[:1] != b"/" or 35 in path:  # not plain origin form (35: "#"): the rules decide
        try:
            path, authority = framing.request_target(method, path)
        except framing.Unroutable:
            unroutable = True
        except framing.Refusal as refusal:
            conn.refusal = refusal
            raise

    # which headers name more hop-by-hop headers; Host, framing, upgrade
    drop = wire.REQUEST_HOP_BY_HOP
    expect_continue = upgrade = has_te = False
    hosts = 0
    host = b""
    te: list[bytes] | None = None
    content_length = -1
    ctype: bytes | None = None  # the first content-type (gRPC's tells the filtered path to answer in its form)
    for name, value in headers:
        if name == b"connection":
            extra = _check(conn, framing.nominated, value) - framing.NOT_REMOVED_BY_CONNECTION
            if extra:
                upgrade = upgrade or b"upgrade" in extra
                drop = drop | extra
        elif name == b"host":
            hosts += 1
            host = value
        elif name == b"transfer-encoding":
            te = [value] if te is None else [*te, value]
        elif name == b"content-length":
            with contextlib.suppress(ValueError):
                content_length = int(value)
        elif name == b"expect" and value.lower() == b"100-continue":
            expect_continue = True
        elif name == b"te":
            has_te = True
        elif name == b"content-type" and ctype is None:
            ctype = value
    if te is not None and any(n == b"content-length" for n, _ in headers):
        refuse(
            conn, 400, framing.BAD_REQUEST, framing.BOTH_FRAMINGS
        )  # both framings (RFC 9112 6.1: a smuggling vector), as Envoy
    chunked = te is not None and _check(conn, framing.chunked, te)
    if hosts > 1 or (hosts and not framing.authority_ok(host)):
        refuse(
            conn, 400, framing.BAD_REQUEST, framing.BAD_AUTHORITY
        )  # RFC 9112 3.2 (stricter than Envoy, which merges them)
    if upgrade and conn.upgrade_types and _tunnel(conn, method, path, headers):
        return
    if has_te:  # TE goes on as "trailers" alone, when it asks for them (as Envoy forwards it)
        headers = hcm.reduce_te(headers)
        drop = drop - {b"te"}
    if upgrade and _upgrade(conn, headers):
        drop = drop | {b"http2-settings"}
    else:
        upgrade = False
    has_body = chunked or content_length > 0
    #: the body is read past the parser (`_direct_body`); not when the connection ends after it (the parser
    #: then refuses what follows, as Envoy ignores it)
    direct = content_length if content_length > 0 and te is None and keep_alive else 0
    if upgrade and has_body:  # an h2c upgrade with a body: the parser took it for upgraded bytes
        refuse(conn, 400, framing.BAD_REQUEST)
    if authority:
        hosts = 1
    elif hosts:
        authority = host
    elif conn.http11:
        refuse(conn, 400, b"", framing.MISSING_HOST, codec=False)  # RFC 9112 3.2, as Envoy (its HCM's refusal: no body)
    elif conn.pool is not None:  # HTTP/1.0 (accept_http_10) without Host: the cluster's address
        c = conn.pool.cluster
        authority = f"{c.address}:{c.port}".encode()
    else:  # ... or, when routes pick the cluster, the listener's
        local = conn.local or ("", 0)
        authority = f"{local[0]}:{local[1]}".encode()
    state = conn.state
    if b"x-request-id" in drop:  # nominated by Connection: gone before the HCM generates its own
        headers = [h for h in headers if h[0] != b"x-request-id"]
        drop = drop - {b"x-request-id"}
    hcm.add_forwarded(headers, wire.SCHEME_HTTP[1], request_id=state.config.generate_request_id)
    proxy = conn.proxy
    proxy.stats.downstream_rq_total += 1
    proxy.stats.downstream_rq_active += 1

    routes = conn.routes
    # the route on the request as received: it picks the cluster's protocol (plugins may re-route the request
    # later, within clusters of that protocol); without plugins it is the route
    decision = routes.constant or routes.resolve(authority, path, headers, method)
    if unroutable:
        decision = routing.NO_VHOST
    if conn.state.route_limits and decision.route is not None:  # some route sets its own duration limit or
        h1timers.route_limits(conn, decision.route, headers)  # stream idle timeout (meshplug.agent.streamtimeouts)
    http2 = decision.cluster in proxy.h2pools
    filters = None if unroutable else state.filters
    grpc = ctype is not None and headermap.is_grpc_content_type(ctype)  # as headermap.is_grpc_request reads it
    if filters is None and (http2 or (grpc and not unroutable)):
        # an HTTP/2 cluster: the request goes as a header list (bridge.H2UpExchange); a gRPC request: the replies
        # the proxy makes (no route, connect failure, timeout) are gRPC's, as Envoy's sendLocalReply makes them
        filters = EMPTY_CHAIN
    if filters is not None:
        # the chain's form in one pass (names are lower-case already): pseudo-headers first, Host folded
        # into :authority as Envoy's HTTP/1 codec does, hop-by-hop headers dropped; the exchange writes the
        # upstream head of the same headers when they go upstream unchanged (a local reply writes none)
        chain_headers: wire.Headers = (  # in Envoy's order (its HTTP/1 codec's request map)
            [(b":authority", authority), (b":path", path), (b":method", method), wire.SCHEME_HTTP]
            if not connect
            else [(b":authority", authority), (b":method", method)]
        )
        received_at = len(chain_headers)
        framed = False
        for h in headers:
            name = h[0]
            if name in drop or name == b"host" or (name == b"expect" and expect_continue):
                continue
            if name == b"content-length":
                framed = True
            chain_headers.append(h)
        if http2:
            fx: FilteredExchange = H2UpExchange(
                conn, method, keep_alive, has_body, filters, headers=chain_headers, framed=framed
            )
        else:  # a direct constructor call: mypyc makes it a native one
            fx = FilteredExchange(conn, method, keep_alive, has_body, filters, headers=chain_headers, framed=framed)
        # the upstream head's request line, written when the headers go upstream unchanged (`_send_up_headers`)
        fx.req_path = path
        fx.req_authority = authority
        fx.req_at = received_at
        if connect:
            fx.stream.route_resolver = _no_route
            fx.stream.route_constant = None
        conn.current = fx
        conn.body_left = direct
        conn.queue.append(fx)
        if expect_continue:  # as Envoy, whether a body follows or not
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if len(conn.queue) == 1:
            fx.start()
        return

    ex = Exchange(conn, method, b"", keep_alive, has_body)
    ex.chunked_in = chunked
    route = decision.route
    reply = routing.router_reply(decision)
    if reply is not None:
        ex.reply = reply
    else:
        assert route is not None
        ex.pool = state.pools[decision.cluster]
        ex.timeout_s = route.timeout_s
        if route.prefix_rewrite is not None:
            headers.append((b"x-envoy-original-path", path))
            path = routing.rewrite_prefix(path, route)
        expected = hcm.expected_timeout(route.timeout_s, suppressed=state.suppress_envoy_headers)
        if expected is not None:
            headers.append(expected)
    out = [b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (method, path, authority)]
    for name, value in headers:
        if name in drop or name in (b"content-length", b"host") or (name == b"expect" and expect_continue):
            continue
        out.append(b"%b: %b\r\n" % (name, value))
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    elif content_length >= 0:
        out.append(b"content-length: %d\r\n" % content_length)
    elif method not in wire.BODILESS_METHODS:
        out.append(b"content-length: 0\r\n")
    out.append(b"\r\n")
    ex.head = b"".join(out)

    conn.current = ex
    conn.body_left = direct
    conn.queue.append(ex)
    if expect_continue:
        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if len(conn.queue) == 1:
        ex.start()


def _tunnel(conn: Downstream, method: bytes, path: bytes, headers: wire.Headers) -> bool:
    """`Connection: upgrade` with Upgrade tokens this listener allows (Envoy's upgrade_configs): the request
    is the head of a tunnel, started when the parser stops at the head's end (True: no exchange)."""
    offered = [v.strip().lower().decode("latin-1") for n, v in headers if n == b"upgrade"]
    if not offered or offered == ["h2c"] or conn.queue or not all(t in conn.upgrade_types for t in offered):
        return False
    if any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers):
        # answered here and not forwarded, as Envoy's HCM does before its filters (the payload then waits for the
        # cluster's 101)
        headers = [h for h in headers if h[0] != b"expect"]
        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    else:
        headers = list(headers)
    hcm.add_forwarded(headers, wire.SCHEME_HTTP[1], request_id=conn.state.config.generate_request_id)
    authority = next((v for n, v in headers if n == b"host"), b"")
    if conn.state.filters is not None:  # the plugins see it as Envoy's filters do: Host as :authority
        chain_headers = [(b":method", method), (b":path", path), (b":authority", authority), wire.SCHEME_HTTP]
        chain_headers += [h for h in headers if h[0] != b"host"]
        conn.tunnel_headers = chain_headers
        conn.proxy.stats.downstream_rq_total += 1
        return True
    decision = conn.routes.constant or conn.routes.resolve(authority, path, headers, method)
    reply = routing.router_reply(decision)
    if reply is not None:  # the router's own reply instead of a tunnel (404, a direct response), as Envoy
        refuse(conn, reply[0], reply[1], reply[2], codec=False)
    route = decision.route
    assert route is not None  # (router_reply answers a request without one)
    conn.tunnel_pool = conn.state.pools[decision.cluster]
    conn.tunnel_timeout = route.timeout_s
    conn.proxy.stats.downstream_rq_total += 1
    expected = hcm.expected_timeout(route.timeout_s, suppressed=conn.state.suppress_envoy_headers)
    if expected is not None:
        headers.append(expected)
    lines = [b"%b %b HTTP/1.1\r\n" % (method, path)]
    # (a chunked body goes as it came, after the cluster's 101: Envoy forwards no Transfer-Encoding)
    lines += [b"%b: %b\r\n" % h for h in headers if h[0] != b"transfer-encoding"]
    lines.append(b"\r\n")
    conn.tunnel_head = b"".join(lines)
    return True


def refuse(
    conn: Downstream, status: int, body: bytes, details: str = framing.CODEC_ERROR, *, codec: bool = True
) -> NoReturn:
    """Stop parsing this request (from a parser callback): it is answered `status` instead."""
    conn.refusal = framing.Refusal(status, body, details, codec=codec)
    raise conn.refusal


def _check(conn: Downstream, rule: Callable[[_In], _Out], arg: _In) -> _Out:
    """`rule(arg)`, its Refusal kept for the parse error it raises (from a parser callback)."""
    try:
        return rule(arg)
    except framing.Refusal as refusal:
        conn.refusal = refusal
        raise


def _upgrade(conn: Downstream, headers: wire.Headers) -> bool:
    """`Connection: upgrade`: h2c is served as HTTP/1.1 (True: its Upgrade and HTTP2-Settings are dropped,
    as Envoy does); any other upgrade (WebSocket, ...) is not enabled: 403, as Envoy without upgrade_configs."""
    offered = [v.strip().lower() for n, v in headers if n == b"upgrade"]
    if offered and offered != [b"h2c"]:
        refuse(conn, 403, b"", framing.UPGRADE_FAILED, codec=False)
    return bool(offered)


def parser_refusal(message: str, url: bytes = b"", data: bytes = b"") -> framing.Refusal:
    """The parser's (llhttp's) own refusal, by its message, as Envoy answers it: an unknown transfer coding 501, a
    version other than 0.9, 1.x and 2.0 (HTTP/1.2, 3.0, 9.9) 426, any other malformed framing or syntax 400. A
    request line with nothing but blanks after its target (``HEAD / ``; llhttp expects a version there, as after
    ``GET / http/1.1``) is HTTP/0.9 to Envoy: 426 (`url`: the target read, `data`: the read it came in)."""
    if "`Transfer-Encoding`" in message:
        return framing.Refusal(501, b"Not Implemented", framing.BAD_TRANSFER_ENCODING)
    if message == "Transfer-Encoding can't be present with Content-Length":
        return framing.Refusal(400, framing.BAD_REQUEST, framing.BOTH_FRAMINGS)
    if message == "Invalid HTTP version" or (message.startswith("Expected HTTP/") and _no_version(url, data)):
        return framing.Refusal(426, b"Upgrade Required", framing.LOW_VERSION)
    return framing.Refusal(400, framing.BAD_REQUEST)


def _no_version(url: bytes, data: bytes) -> bool:
    """A line of `data` is a request line of target `url` ending in blanks: a method, the target, no version."""
    if not url:
        return False
    for raw in data.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if line.endswith(b" ") and url in line and [p for p in line.split(b" ") if p][1:] == [url]:
            return True
    return False


def _no_route(_headers: wire.Headers) -> routing.Decision:
    """The router's decision for CONNECT: no route (none has a connect_matcher)."""
    return routing.NO_VHOST


class RefusedExchange(Exchange):
    """A request refused before its head reached the plugins (a codec error, no Host, a request timeout, ...):
    answered by the proxy alone, and, as Envoy 1.40 does, logged by each plugin of the listener's chain once it
    is over (Envoy creates the filter chain for the local reply; a wasm filter's context is made for its log
    callback): response.code_details are the refusal's, response.flags DPE for a codec error, response.code the
    reply's status. No other callback runs."""

    __slots__ = ("log", "refused")

    def __init__(self, conn: Downstream, method: bytes, refusal: framing.Refusal, filters: agent_chain.Chain) -> None:
        super().__init__(conn, method, b"", False, False)
        self.req_done = True
        self.refused = refusal
        self.log: agent_chain.Stream | None = filters.new_stream(conn.stream_info(), start_time_ns=time.time_ns())

    def _ended(self) -> None:
        stream, self.log = self.log, None
        if stream is not None:
            log_refusal(stream, self.refused, self.status)
