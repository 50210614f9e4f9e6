"""The HTTP/1.1 request rules the agent enforces before anything goes upstream, as Envoy 1.40 does: the
request target (origin form; absolute form normalised to origin form with the authority from the target;
`*` and fragments refused), the authority's characters, Transfer-Encoding (only `chunked`, once: 501 for
any other coding), and header values a plugin hands back (no CR, LF or NUL; names are tokens).

Pure functions over bytes, sans-IO; called by `meshplug.agent.downstream` while it reads a request head and by
`meshplug.agent.filtered` for headers a plugin changed. A refusal is a `Refusal` carrying the status and body
of the local reply. tests/differential holds every rule next to what Envoy does with the same bytes.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import Final

#: a Refusal's details when the request is malformed (Envoy's codec errors: their body goes even to a HEAD)
CODEC_ERROR: Final = "http1.codec_error"  # response.code_details, as Envoy 1.40 reads it
# the details of the other refusals, as Envoy 1.40 gives them for the same bytes (test_differential_flags.py)
#: a head (or trailers) past max_request_headers_kb, or max_headers_count
HEADERS_TOO_LARGE: Final = "http1.headers_too_large"
TOO_MANY_HEADERS: Final = "http1.too_many_headers"
#: a version other than 1.1 (or 1.0 where accepted): 426
LOW_VERSION: Final = "low_version"
BOTH_FRAMINGS: Final = "http1.content_length_and_chunked_not_allowed"
BAD_TRANSFER_ENCODING: Final = "http1.invalid_transfer_encoding"
BAD_CONNECTION: Final = "http1.connection_header_rejected"
BAD_AUTHORITY: Final = "http.invalid_authority"
BAD_URL: Final = "http1.invalid_url"
BAD_SCHEME: Final = "http1.invalid_scheme"
# refusals of Envoy's HCM (codec=False): no body, no DPE flag
#: no Host (nor an absolute-form authority)
MISSING_HOST: Final = "missing_host_header"
#: a fragment in the target
PATH_NORMALIZATION: Final = "path_normalization_failed"
#: an upgrade the listener does not pass (403)
UPGRADE_FAILED: Final = "upgrade_failed"


class Refusal(Exception):
    """The request is answered locally with `status` and `body` (and the connection closed) instead; `details`:
    what plugins read as response.code_details (Envoy's, for the same bytes); `codec`: one of Envoy's codec
    errors (its body goes even to a HEAD; the stream is flagged DPE for the log), not a refusal of its HCM's
    after the codec took the head (no Host, a fragment, an upgrade not enabled, a timeout); `flags`: the
    response.flags the refusal sets before its reply (SI for the stream idle timeout)."""

    def __init__(
        self, status: int, body: bytes, details: str = CODEC_ERROR, *, codec: bool = True, flags: int = 0
    ) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.details = details
        self.codec = codec
        self.flags = flags


class Unroutable(Refusal):
    """The target is well formed but no route can serve it: the router's 404, and the connection goes on."""


BAD_REQUEST: Final = b"Bad Request"
_ALNUM: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#: an authority: RFC 3986 reg-name / IP-literal characters, userinfo, port (what Envoy's authority check admits)
_AUTHORITY_CHARS: Final = _ALNUM + b"-._~!$&'()*+,;=:@[]%"
#: a field name: an RFC 9110 token
_TOKEN_CHARS: Final = _ALNUM + b"!#$%&'*+-.^_`|~"
#: what Envoy's URL parser (http-parser, strict) admits in an absolute-form target: printable ASCII
_URL_CHARS: Final = bytes(range(0x21, 0x7F))
#: absolute form: a host name's characters, userinfo's, an IPv6 literal's and its zone's (http-parser, strict)
_HOST_CHARS: Final = _ALNUM + b"-."
_USERINFO_CHARS: Final = _ALNUM + b"-_.!~*'()%;:&=+$,"
_V6_CHARS: Final = b"0123456789abcdefABCDEF:."
_ZONE_CHARS: Final = _ALNUM + b"%.-_~"

# (bytes.translate(None, allowed) leaves what is not allowed: one C pass, no regex). Hosts and header names
# repeat from request to request: their verdicts are remembered (a bounded table, emptied when full).
_MEMO_MAX: Final = 4096
_AUTHORITY_OK: Final[dict[bytes, bool]] = {}
_TOKEN_OK: Final[dict[bytes, bool]] = {}
_LITERAL_OK: Final[dict[bytes, bool]] = {}


def authority_ok(value: bytes) -> bool:
    ok = _AUTHORITY_OK.get(value)
    if ok is None:
        if len(_AUTHORITY_OK) >= _MEMO_MAX:
            _AUTHORITY_OK.clear()
        ok = _AUTHORITY_OK[value] = not value.translate(None, _AUTHORITY_CHARS)
    return ok


def _token_ok(name: bytes) -> bool:
    ok = _TOKEN_OK.get(name)
    if ok is None:
        if len(_TOKEN_OK) >= _MEMO_MAX:
            _TOKEN_OK.clear()
        token = name[1:] if name[:1] == b":" else name
        ok = _TOKEN_OK[name] = bool(token) and not token.translate(None, _TOKEN_CHARS)
    return ok


def request_target(method: bytes, url: bytes) -> tuple[bytes, bytes]:
    """(path, authority) of a request target: origin form as is (authority b""), absolute form (http or
    https, any case) normalised to its path (``/`` when empty) and authority (`absolute_authority`). Raises
    Refusal. The parser has refused whitespace and control characters in the target already; the fragment is
    left to refuse here. What follows the authority must be a path: a query right after it (``http://x?q``)
    leaves a path not starting with ``/``, which Envoy answers 404 (no route serves a relative path)."""
    if url[:1] == b"/":
        if 35 in url:  # "#": a fragment (Envoy's HCM refuses it, after its codec: 400 without a body)
            raise Refusal(400, b"", PATH_NORMALIZATION, codec=False)
        return url, b""
    if url[:1] == b"*":  # asterisk form: no route serves it (Envoy: OPTIONS * is 404, anything else 400)
        if method == b"OPTIONS":
            raise Unroutable(404, b"")
        raise Refusal(400, BAD_REQUEST, BAD_URL)
    lower = url[:8].lower()
    if lower.startswith(b"http://"):
        rest = url[7:]
    elif lower.startswith(b"https://"):
        rest = url[8:]
    else:
        raise Refusal(400, BAD_REQUEST, BAD_SCHEME)
    if rest.translate(None, _URL_CHARS):  # whitespace, controls, DEL, non-ASCII
        raise Refusal(400, BAD_REQUEST, BAD_URL)
    end = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    authority, path = absolute_authority(rest[:end]), rest[end:] or b"/"
    if path[:1] != b"/":
        raise Unroutable(404, b"")
    if 35 in path:  # a fragment, as in origin form
        raise Refusal(400, b"", PATH_NORMALIZATION, codec=False)
    return path, authority


def absolute_authority(server: bytes) -> bytes:
    """The authority an absolute-form target forwards: ``[userinfo@]host[:port]`` checked as Envoy's URL
    parser does (http-parser, strict), userinfo dropped. host: a name of letters, digits, ``-`` and ``.``
    or a bracketed IPv6 literal (hex digits, ``:``, ``.``, an optional ``%zone``); port: digits up to 65535,
    not empty. Anything else raises Refusal (400)."""
    userinfo, at, host = server.rpartition(b"@")
    if at and (b"@" in userinfo or userinfo.translate(None, _USERINFO_CHARS)):
        raise Refusal(400, BAD_REQUEST, BAD_URL)
    if host[:1] == b"[":
        close = host.find(b"]")
        literal, port = host[1:close], host[close + 1 :]
        address, pct, zone = literal.partition(b"%")
        ok = (
            close > 1
            and bool(address)
            and not address.translate(None, _V6_CHARS)
            and (not pct or (bool(zone) and not zone.translate(None, _ZONE_CHARS)))
            and _ip_literal_ok(literal)
        )
    else:
        name, colon, digits = host.partition(b":")
        port = colon + digits
        ok = bool(name) and not name.translate(None, _HOST_CHARS)
    if not ok or not _port_ok(port):
        raise Refusal(400, BAD_REQUEST, BAD_URL)
    return host


def _ip_literal_ok(literal: bytes) -> bool:
    """A bracketed literal is an address Envoy can parse: IPv4 in strict dotted-quad form, or IPv6 as the C
    library reads a numeric host (a scope after ``%``: a number, or an interface name on a link-local
    address only). Remembered per literal, as hosts are."""
    ok = _LITERAL_OK.get(literal)
    if ok is None:
        if len(_LITERAL_OK) >= _MEMO_MAX:
            _LITERAL_OK.clear()
        ok = _LITERAL_OK[literal] = _parses(literal)
    return ok


def _parses(literal: bytes) -> bool:
    text = literal.decode("ascii")
    with contextlib.suppress(OSError):
        socket.inet_pton(socket.AF_INET, text)
        return True
    try:
        socket.getaddrinfo(literal, None, family=socket.AF_INET6, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return False
    return True


def _port_ok(port: bytes) -> bool:
    """Nothing, or ``:`` and 1-5 digits up to 65535 (leading zeros allowed, as Envoy's URL parser does)."""
    if not port:
        return True
    digits = port[1:]
    return port[:1] == b":" and digits.isdigit() and int(digits) <= 65535


#: the request methods Envoy 1.40's HTTP/1 codec (Balsa) admits (400 for any other): http-parser's list with
#: MSEARCH for M-SEARCH and without QUERY; the agent's parser (llhttp) knows both, and the RTSP ones it refuses
METHODS: Final = frozenset(
    b"ACL BIND CHECKOUT CONNECT COPY DELETE GET HEAD LINK LOCK MERGE MKACTIVITY MKCALENDAR MKCOL MOVE MSEARCH "
    b"NOTIFY OPTIONS PATCH POST PROPFIND PROPPATCH PURGE PUT REBIND REPORT SEARCH SOURCE SUBSCRIBE TRACE UNBIND "
    b"UNLINK UNLOCK UNSUBSCRIBE".split()
)
#: Connection may nominate at most this many headers (Envoy: 400 from 10 comma-separated entries on)
MAX_NOMINATED: Final = 10
#: headers a client may not nominate in Connection (their removal would hide where the request came from;
#: Envoy: 400), besides pseudo-headers and Host
_UNNOMINABLE: Final = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-proto", b"host"})


#: nominated in Connection but not removed for it: handled by the proxy itself (HTTP2-Settings goes only with
#: an h2c upgrade request)
NOT_REMOVED_BY_CONNECTION: Final = frozenset({b"close", b"keep-alive", b"http2-settings", b""})
#: a relative Referer's characters: RFC 3986 query characters (and "%")
_REFERER_CHARS: Final = _ALNUM + b"-._~!$&'()*+,;=:@/?%"


def referer_ok(value: bytes) -> bool:
    """Whether Envoy keeps a Referer (it removes any other): an absolute URI as its URL parser reads it without
    userinfo or fragment, or a relative reference of query characters whose first segment has no ":". A blank
    in it makes it neither (HTTP/1.1's parser trims the value's ends before this: on HTTP/2 a Referer with blanks
    at an end is removed, as Envoy does; tests/differential/found_h2.yaml)."""
    scheme, sep, rest = value.partition(b"://")
    if sep and scheme.isalpha() and scheme.isascii():
        end = len(rest)
        for mark in (b"/", b"?", b"#"):
            i = rest.find(mark)
            if 0 <= i < end:
                end = i
        try:
            absolute_authority(rest[:end])
        except Refusal:
            pass
        else:
            if not rest.translate(None, _URL_CHARS):
                return b"@" not in rest[:end] and b"#" not in rest
    colon, slash = value.find(b":"), value.find(b"/")
    return not value.translate(None, _REFERER_CHARS) and (colon < 0 or 0 <= slash < colon)


def merged(headers: list[tuple[bytes, bytes]], inline: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    """Header lines as Envoy's header map holds them: a repeated name that is one of its `inline` headers is
    one entry at its first place, the values as they came joined with "," (an empty value adds nothing); others
    stay apart. (HTTP/1.1's values come trimmed from its parser, as Envoy's codec trims them; HTTP/2's keep their
    blanks, as through Envoy.)"""
    out: list[tuple[bytes, bytes]] = []
    first: dict[bytes, int] = {}
    for name, value in headers:
        at = first.get(name, -1) if name in inline else -1
        if at < 0:
            if name in inline:
                first[name] = len(out)
            out.append((name, value))
        elif value:
            old = out[at][1]
            out[at] = (name, old + b"," + value if old else value)
    return out


def nominated(value: bytes) -> set[bytes]:
    """The lower-case header names a Connection value nominates (close and keep-alive included). Raises
    Refusal (400) as Envoy does: 10 or more entries (empty ones aside), a pseudo-header, Host, X-Forwarded-For,
    -Host or -Proto."""
    entries = [e for e in value.strip(b" \t").split(b",") if e]
    if len(entries) >= MAX_NOMINATED:
        raise Refusal(400, BAD_REQUEST, BAD_CONNECTION)
    names = {e.strip(b" \t").lower() for e in entries}
    unnominable = names & _UNNOMINABLE
    if any(n[:1] == b":" for n in names) or unnominable - {b"host"}:
        raise Refusal(400, BAD_REQUEST, BAD_CONNECTION)
    if unnominable:  # Host: Envoy's codec removes it, then its HCM refuses a request without Host (no body)
        raise Refusal(400, b"", MISSING_HOST, codec=False)
    return names


def te_trailers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """TE as Envoy forwards it: ``te: trailers`` in the first TE's place when a comma-separated entry is
    exactly ``trailers`` (case-sensitive: no parameters), any other TE removed."""
    keep = any(e.strip(b" \t") == b"trailers" for n, v in headers if n == b"te" for e in v.split(b","))
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name != b"te":
            out.append((name, value))
        elif keep:
            out.append((b"te", b"trailers"))
            keep = False
    return out


def chunked(values: Sequence[bytes]) -> bool:
    """Whether a request's Transfer-Encoding header lines frame it chunked; Envoy admits exactly one line
    that says `chunked` (any case, surrounding blanks): anything else is 501, never re-framed or passed on."""
    if len(values) != 1 or values[0].strip(b" \t").lower() != b"chunked":
        raise Refusal(501, b"Not Implemented", BAD_TRANSFER_ENCODING)
    return True


def field_ok(name: bytes, value: bytes) -> bool:
    """A header a plugin set is writable on the wire: token name (pseudo-headers aside), no CR/LF/NUL in the
    value (Envoy refuses the stream otherwise: "invalid header value")."""
    if 13 in value or 10 in value or 0 in value:  # CR, LF, NUL (int lookups: memchr, no buffer protocol)
        return False
    return _token_ok(name)


def request_head_lines(
    headers: Sequence[tuple[bytes, bytes]], default_method: bytes, hop_by_hop: frozenset[bytes]
) -> tuple[bytes, list[bytes]] | None:
    """An HTTP/1.1 request head from a header list in the chain's form (pseudo-headers first): (method, [request
    line + host, one line per header]) without the blank line, hop-by-hop headers dropped but TE: trailers;
    None when a field cannot be written (CR, LF, NUL, a bad name, a space in :path)."""
    method = path = authority = host = None
    out = [b""]  # the request line and host go first, once the pseudo-headers are known
    for name, value in headers:
        if not field_ok(name, value):
            return None
        if name[:1] == b":":
            if name == b":method":
                method = method or value
            elif name == b":path":
                path = path or value
            elif name == b":authority":
                authority = authority or value
            continue
        if name in hop_by_hop and not (name == b"te" and value.strip().lower() == b"trailers"):
            continue
        if name == b"host":
            host = value if host is None else host
            continue
        out.append(b"%b: %b\r\n" % (name, value))
    method = method or default_method
    if not field_ok(method, b"") or (path is not None and b" " in path):
        return None
    authority = authority if authority is not None else host
    if authority is not None:
        out[0] = b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (method, path or b"/", authority)
    else:
        out[0] = b"%b %b HTTP/1.1\r\n" % (method, path or b"/")
    return method, out
