"""The HTTP/1.1 request rules the agent enforces before anything goes upstream, as Envoy 1.40 does: the
request target (origin form; absolute form normalised to origin form with the authority from the target;
`*` and fragments refused), the authority's characters, Transfer-Encoding (only `chunked`, once: 501 for
any other coding), and header values a plugin hands back (no CR, LF or NUL; names are tokens).

Pure functions over bytes, sans-IO; called by `meshplug.agent.downstream` while it reads a request head and by
`meshplug.agent.filtered` for headers a plugin changed. A refusal is a `Refusal` carrying the status and body
of the local reply. tests/differential holds every rule next to what Envoy does with the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final


class Refusal(Exception):
    """The request is answered locally with `status` and `body` (and the connection closed) instead."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


BAD_REQUEST: Final = b"Bad Request"
_ALNUM: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
#: an authority: RFC 3986 reg-name / IP-literal characters, userinfo, port (what Envoy's authority check admits)
_AUTHORITY_CHARS: Final = _ALNUM + b"-._~!$&'()*+,;=:@[]%"
#: a field name: an RFC 9110 token
_TOKEN_CHARS: Final = _ALNUM + b"!#$%&'*+-.^_`|~"
#: request targets: no whitespace, control characters or fragment (Envoy: 400)
_BAD_TARGET: Final = re.compile(rb"[\x00-\x20\x7f#]")

# (bytes.translate(None, allowed) leaves what is not allowed: one C pass, no regex). Hosts and header names
# repeat from request to request: their verdicts are remembered (a bounded table, emptied when full).
_MEMO_MAX: Final = 4096
_AUTHORITY_OK: Final[dict[bytes, bool]] = {}
_TOKEN_OK: Final[dict[bytes, bool]] = {}


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


def request_target(method: bytes, url: bytes) -> tuple[bytes, bytes]:  # noqa: PLR0912 - the request-target forms of RFC 9112 section 3.2, one branch each
    """(path, authority) of a request target: origin form as is (authority b""), absolute form (http or
    https, any case) normalised to its path (``/`` when empty) and authority. Raises Refusal. The parser has
    refused whitespace and control characters in the target already; the fragment is left to refuse here."""
    if url[:1] == b"/":
        if 35 in url:  # "#": a fragment
            raise Refusal(400, BAD_REQUEST)
        return url, b""
    if url == b"*":  # asterisk form: no route serves it (Envoy: OPTIONS * is 404, anything else 400)
        raise Refusal(404 if method == b"OPTIONS" else 400, b"" if method == b"OPTIONS" else BAD_REQUEST)
    lower = url[:8].lower()
    if lower.startswith(b"http://"):
        rest = url[7:]
    elif lower.startswith(b"https://"):
        rest = url[8:]
    else:
        raise Refusal(400, BAD_REQUEST)
    if _BAD_TARGET.search(rest) is not None:
        raise Refusal(400, BAD_REQUEST)
    end = len(rest)
    for sep in (b"/", b"?"):
        i = rest.find(sep)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    if not authority or not authority_ok(authority) or not _port_ok(authority):
        raise Refusal(400, BAD_REQUEST)
    authority = authority[authority.rfind(b"@") + 1 :]  # userinfo is not forwarded (Envoy sends the host alone)
    if not authority:
        raise Refusal(400, BAD_REQUEST)
    if not path:
        path = b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    return path, authority


def _port_ok(authority: bytes) -> bool:
    """A port, if any, is digits (an IPv6 literal's colons are inside its brackets)."""
    if authority[:1] == b"[":
        close = authority.find(b"]")
        rest = authority[close + 1 :]
        return close > 0 and (rest == b"" or (rest[:1] == b":" and (rest[1:] == b"" or rest[1:].isdigit())))
    host, sep, port = authority.rpartition(b":")
    return not sep or (b":" not in host and (port == b"" or port.isdigit()))


def chunked(values: Sequence[bytes]) -> bool:
    """Whether a request's Transfer-Encoding header lines frame it chunked; Envoy admits exactly one line
    that says `chunked` (any case, surrounding blanks): anything else is 501, never re-framed or passed on."""
    if len(values) != 1 or values[0].strip(b" \t").lower() != b"chunked":
        raise Refusal(501, b"Not Implemented")
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
