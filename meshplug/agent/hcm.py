"""Envoy's HTTP connection manager and router header mutations, in one place for every downstream: the
HTTP/1.1 connection (downstream.py and its exchanges), the HTTP/2 one (h2down.py), upgrades (tunnel.py).

Each rule was probed on Envoy 1.40 with the test bed's HCM (use_remote_address false, xff_num_trusted_hops 0,
no internal_address_config) and is held to it by the differential suite (tests/differential):

Request, before the plugins (ConnectionManagerUtility::mutateRequestHeaders and the codecs' header map):
* repeated inline headers (`headermap.REQUEST_INLINE_HEADERS`) are one entry, the values joined with ",";
* a client's X-Forwarded-Client-Cert is removed (forward_client_cert_details SANITIZE);
* the request is external -- no request is internal without an internal_address_config, whatever its
  X-Forwarded-For says (Envoy 1.40 reads no address as internal by default) -- so the x-envoy-* headers that
  steer Envoy (`EXTERNAL_STRIPPED`: retries, timeouts, tracing, x-envoy-internal ...) are removed; the
  others (x-envoy-original-path, x-envoy-decorator-operation, x-envoy-downstream-service-*, unknown
  x-envoy-* names) go through, as in Envoy (those three are removed at the edge only: use_remote_address);
* TE is forwarded as ``trailers`` alone when it asks for them, else removed -- except on an upgrade, whose TE
  goes on as received;
* a Referer that is not a valid URI reference is removed;
* x-forwarded-proto is added (the connection's scheme) when absent, then x-request-id (generate_request_id),
  on HTTP/1.1, HTTP/2 and upgrades alike.

Router, on the way to the upstream (after the plugins): x-envoy-expected-rq-timeout-ms = the route's timeout
in ms (none when the route has no timeout), unless the router's suppress_envoy_headers.

Response: the upstream's repeated inline headers (`headermap.RESPONSE_INLINE_HEADERS`) are merged by the codec and
the router sets x-envoy-upstream-service-time (in place if the upstream sent one) before the plugins see
them; after them the HCM adds `date` when absent and applies server_header_transformation: OVERWRITE (the
default) sets `server` to server_name, APPEND_IF_ABSENT only when there is none, PASS_THROUGH leaves it. Local
replies get the same date and server.
"""

from __future__ import annotations

from typing import Final

from meshplug.agent import config, framing, headermap, wire

Header = tuple[bytes, bytes]

#: the request headers Envoy 1.40 removes from an external request (cleanInternalHeaders, x-envoy-internal)
EXTERNAL_STRIPPED: Final = frozenset(
    {
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-force-trace",
        b"x-envoy-hedge-on-per-try-timeout",
        b"x-envoy-internal",
        b"x-envoy-ip-tags",
        b"x-envoy-max-retries",
        b"x-envoy-original-url",
        b"x-envoy-retriable-header-names",
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-retry-on",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-upstream-rq-timeout-ms",
        b"x-envoy-upstream-stream-duration-ms",
    }
)
#: request headers a client never gets through: its X-Forwarded-Client-Cert and EXTERNAL_STRIPPED
REQUEST_STRIPPED: Final = EXTERNAL_STRIPPED | {b"x-forwarded-client-cert"}
#: the names `sanitize_request` may change
_SANITIZED: Final = REQUEST_STRIPPED | {b"te", b"referer"}

XFP: Final = b"x-forwarded-proto"
REQUEST_ID: Final = b"x-request-id"
EXPECTED_TIMEOUT: Final = b"x-envoy-expected-rq-timeout-ms"
SERVICE_TIME: Final = b"x-envoy-upstream-service-time"


def repeated(headers: list[Header]) -> bool:
    """Some name occurs twice."""
    return len(headers) > 1 and len({n for n, _ in headers}) < len(headers)


def sanitize_request(headers: list[Header], *, upgrade: bool) -> list[Header]:
    """A request's headers (lower-case names; pseudo-headers may be there) after Envoy's header map and
    mutateRequestHeaders: inline headers merged, stripped ones removed, TE reduced (not on an upgrade), an
    invalid Referer removed. `headers` itself when none of it applies (the common case)."""
    out = framing.merged(headers, headermap.REQUEST_INLINE_HEADERS) if repeated(headers) else headers
    for name, _ in out:
        if name in _SANITIZED:
            break
    else:
        return out
    kept: list[Header] = []
    te = False
    for h in out:
        name = h[0]
        if name in REQUEST_STRIPPED or (name == b"referer" and not framing.referer_ok(h[1])):
            continue
        te = te or name == b"te"
        kept.append(h)
    return reduce_te(kept) if te and not upgrade else kept


def reduce_te(headers: list[Header]) -> list[Header]:
    """TE as Envoy forwards a request that is not an upgrade: ``trailers`` alone, or none."""
    return framing.te_trailers(headers)


def add_forwarded(headers: list[Header], scheme: bytes, *, request_id: bool) -> None:
    """x-forwarded-proto (`scheme`) when absent, then an x-request-id when `request_id` and absent."""
    has_xfp = has_rid = False
    for name, _ in headers:
        if name == XFP:
            has_xfp = True
        elif name == REQUEST_ID:
            has_rid = True
    if not has_xfp:
        headers.append((XFP, scheme))
    if request_id and not has_rid:
        headers.append((REQUEST_ID, wire.REQUEST_IDS.new()))


def expected_timeout(timeout_s: float, *, suppressed: bool) -> Header | None:
    """The router's x-envoy-expected-rq-timeout-ms for a route timeout (0: none)."""
    if suppressed or timeout_s <= 0:
        return None
    return (EXPECTED_TIMEOUT, b"%d" % (round(timeout_s * 1000),))  # (a tuple literal: compiled, not generic)


def upstream_response(headers: list[Header], service_ms: int) -> list[Header]:
    """An upstream's response headers as the router passes them on: inline headers merged, then
    x-envoy-upstream-service-time = `service_ms` (in place when present; < 0: suppress_envoy_headers)."""
    out = framing.merged(headers, headermap.RESPONSE_INLINE_HEADERS) if repeated(headers) else headers
    if service_ms < 0:
        return out
    value = b"%d" % (service_ms,)  # (a tuple literal: compiled, no generic formatting)
    for i, (name, _) in enumerate(out):
        if name == SERVICE_TIME:
            out[i] = (SERVICE_TIME, value)
            return out
    out.append((SERVICE_TIME, value))
    return out


class ServerHeader:
    """A listener's date/server step on every response it sends (server_header_transformation, server_name)."""

    __slots__ = ("mode", "name")

    def __init__(self, listener: config.Listener) -> None:
        #: 0 OVERWRITE, 1 APPEND_IF_ABSENT, 2 PASS_THROUGH
        self.mode = config.SERVER_HEADER_TRANSFORMATIONS.index(listener.server_header_transformation)
        self.name = listener.server_name.encode()

    def finish(self, headers: list[Header]) -> None:
        """Add date when absent; set, keep or add server as configured (in place: headers after the plugins)."""
        has_date = False
        at = -1
        for i, (name, _) in enumerate(headers):
            if name == b"date":
                has_date = True
            elif name == b"server" and at < 0:
                at = i
        if not has_date:
            headers.append((b"date", wire.DATE.get()))
        mode = self.mode
        if mode == 2:  # PASS_THROUGH
            return
        if at < 0:
            headers.append((b"server", self.name))
        elif mode == 0:  # OVERWRITE: the first entry (a repeated server was merged by the codec)
            headers[at] = (b"server", self.name)
            headers[at + 1 :] = [h for h in headers[at + 1 :] if h[0] != b"server"]

    def finish_lines(self, out: list[bytes], server_at: int, *, dated: bool) -> None:
        """`finish` on a head already written as lines: `server_at` is the index of its first server line (-1:
        none; a repeated server was merged by the codec, one the plugins added after it is left out), `dated`
        whether it has a date."""
        # (bytes built with a tuple literal and a first-byte test before lower(): compiled, generic formatting and
        # a method call per line cost more than the rest of this step; `in` a tuple literal is two compares, `in`
        # a bytes object would first try the operand as an int and format a TypeError)
        if not dated:
            out.append(b"date: %b\r\n" % (wire.DATE.get(),))
        mode = self.mode
        if mode == 2:  # PASS_THROUGH
            return
        if server_at < 0:
            out.append(b"server: %b\r\n" % (self.name,))
        elif mode == 0:  # OVERWRITE
            out[server_at] = b"server: %b\r\n" % (self.name,)
            out[server_at + 1 :] = [
                line for line in out[server_at + 1 :] if line[:1] not in (b"s", b"S") or line[:7].lower() != b"server:"
            ]

    def lines(self, headers: list[Header]) -> list[bytes]:
        """`finish`, as HTTP/1.1 header lines."""
        self.finish(headers)
        return [b"%b: %b\r\n" % h for h in headers]
