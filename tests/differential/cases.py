"""The differential corpus: raw HTTP/1.1 requests (and scripted upstream responses) in families -- the agent's own
earlier framing bugs, the published request-smuggling families (TE/CL variants, obs-fold, whitespace before the colon,
chunk extensions, bare CR/LF, absolute and asterisk form, method/version oddities), header and line limits,
pipelining, upgrades, Host handling, and upstream-response oddities. `CASES` is what the suite runs; cases the
fuzzer found live in found.yaml (loaded here too).

A case marked `stricter` is one where the agent refuses by design what Envoy forwards (the reason is the
marking); the bed then allows that, never the reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from tests.differential.bed import Case

FOUND = Path(__file__).with_name("found.yaml")


def req(
    method: str = "GET",
    target: str = "/",
    version: str = "HTTP/1.1",
    headers: Sequence[tuple[str, str]] = (("Host", "a.test"),),
    body: bytes = b"",
) -> bytes:
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("utf-8") + body


def _get(*extra: tuple[str, str], target: str = "/") -> bytes:
    return req(target=target, headers=(("Host", "a.test"), *extra))


def _post(body: bytes, *headers: tuple[str, str], target: str = "/p") -> bytes:
    return req("POST", target, headers=(("Host", "a.test"), *headers), body=body)


FOLLOW = _get(target="/next")  # a second, well-formed request after the one under test


def _findings() -> Iterable[Case]:  # noqa: PLR0915 - the findings' cases, listed
    f = "finding"
    # 1 absolute form
    yield Case("f1-absolute-admin", f, req(target="http://x.test/admin/users", headers=(("Host", "x.test"),)))
    yield Case("f1-absolute-authority", f, req(target="http://admin.internal/a", headers=(("Host", "public"),)))
    yield Case("f1-absolute-no-path", f, req(target="http://x.test", headers=(("Host", "x.test"),)))
    yield Case("f1-absolute-query", f, req(target="http://x.test/admin?q=1", headers=(("Host", "x.test"),)))
    # 2 header growth (the slow, unbounded variant is an integration test of its own)
    yield Case("f2-header-70k", f, _get(("X-Big", "a" * 70_000)))
    yield Case("f2-name-70k", f, _get(("X" * 70_000, "a")))
    yield Case("f2-url-70k", f, _get(target="/" + "u" * 70_000))
    # 3/4 partial requests then silence: both time out the stream
    yield Case("f4-partial-head", f, b"GET / HTTP/1.1\r\nHost: a.test\r\n", deadline=STREAM_WAIT)
    yield Case("f4-one-byte", f, b"G", deadline=STREAM_WAIT)
    yield Case("f4-partial-body", f, _post(b"abc", ("Content-Length", "100")), deadline=STREAM_WAIT)
    yield Case("f4-partial-chunk", f, _post(b"5\r\nab", ("Transfer-Encoding", "chunked")), deadline=STREAM_WAIT)
    # 6 an upstream that sends more than its Content-Length / a body on 204/304: the next client must not get it
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
    yield Case("f6-extra-after-length", f, _get(), upstream=(extra,), then=_get(target="/second"))
    partial = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 403 Forbidden\r\ncontent-length: 40\r\n\r\nx"
    yield Case("f6-partial-extra", f, _get(), upstream=(partial,), then=_get(target="/second"))
    body204 = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
    yield Case("f6-204-with-body", f, _get(), upstream=(body204,), then=_get(target="/second"))
    cl204 = b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\nevil"
    yield Case("f6-204-with-length", f, _get(), upstream=(cl204,), then=_get(target="/second"))
    body304 = b"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"
    yield Case("f6-304-with-body", f, _get(), upstream=(body304,), then=_get(target="/second"))
    # 8 upgrades
    yield Case(
        "f8-h2c",
        f,
        _get(("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__")),
    )
    yield Case(
        "f8-h2c-then-get",
        f,
        _get(("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__"))
        + FOLLOW,
    )
    ws = (
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    )
    yield Case("f8-websocket", f, _get(*ws))
    yield Case("f8-websocket-then-bytes", f, _get(*ws) + b"\x81\x05hello")
    # more than 16 KiB after the head in the same read: the agent gives its parser the head alone
    yield Case("f8-websocket-then-many-bytes", f, _get(*ws) + b"\x82\x7f" + (20_000).to_bytes(8, "big") + b"w" * 20_000)
    yield Case(
        "f8-h2c-then-large-post",
        f,
        _get(("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__"))
        + _post(b"q" * 20_000, ("Content-Length", "20000"))
        + FOLLOW,
    )
    yield Case("f8-connect", f, req("CONNECT", "x.test:443", headers=(("Host", "x.test:443"),)))
    yield Case(
        "f8-connect-then-bytes", f, req("CONNECT", "x.test:443", headers=(("Host", "x.test:443"),)) + b"\x16\x03\x01"
    )
    # through the plugins (filtered): they see it, the router answers 404; a path under deny_path's /admin is none
    yield Case("f8-connect-then-get", f, req("CONNECT", "x.test:443", headers=(("Host", "x.test:443"),)) + FOLLOW)
    yield Case("f8-connect-no-host", f, req("CONNECT", "x.test:443", headers=()))
    # 9/10 chunked framing errors and codings
    for size in (b"3x", b"-3", b"0x3", b" 3", b"3 ", b"ffffffffffffffffff", b"", b"g"):
        yield Case(
            f"f9-chunk-size-{size.hex() or 'empty'}",
            f,
            _post(size + b"\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")),
        )
    yield Case("f9-chunk-no-crlf", f, _post(b"3\r\nabcX\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")))
    yield Case("f9-chunk-lf-only", f, _post(b"3\nabc\n0\n\n", ("Transfer-Encoding", "chunked")))
    yield Case("f9-chunk-ext-bare-cr", f, _post(b"3;a\rb\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")))
    for te in ("xchunked", "chunkedx", "identity, chunked", "gzip, chunked", "chunked, chunked", "deflate", "identity"):
        yield Case(f"f10-te-{te.replace(', ', '+')}", f, _post(b"3\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", te)))
    yield Case(
        "f10-te-twice",
        f,
        _post(b"3\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")),
    )
    yield Case(
        "f10-te-gzip-then-chunked",
        f,
        _post(b"3\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")),
    )
    # 11 header count
    yield Case("f11-100-headers", f, _get(*[(f"X-H{i}", "v") for i in range(99)]))
    yield Case("f11-101-headers", f, _get(*[(f"X-H{i}", "v") for i in range(100)]))
    yield Case("f11-200-headers", f, _get(*[(f"X-H{i}", "v") for i in range(199)]))
    # 12 a huge upstream response head
    big = b"HTTP/1.1 200 OK\r\nx-big: " + b"b" * 70_000 + b"\r\ncontent-length: 2\r\n\r\nok"
    yield Case("f12-response-header-70k", f, _get(), upstream=(big,))
    for size in (76_000, 80_000, 84_000, 100_000, 1_000_000):
        huge = b"HTTP/1.1 200 OK\r\nx-big: " + b"b" * size + b"\r\ncontent-length: 2\r\n\r\nok"
        yield Case(f"f12-response-header-{size}", f, _get(), upstream=(huge,))
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-r%d: v\r\n" % i for i in range(150)) + b"content-length: 2\r\n\r\nok"
    yield Case("f12-response-150-headers", f, _get(), upstream=(many,))
    # 13 Host
    yield Case("f13-no-host", f, req(headers=()))
    yield Case("f13-connection-host", f, _get(("Connection", "host")))
    yield Case(
        "f13-two-hosts",
        f,
        req(headers=(("Host", "a.test"), ("Host", "b.test"))),
        stricter="RFC 9112 3.2: more than one Host is a 400",
    )
    yield Case(
        "f13-two-hosts-same",
        f,
        req(headers=(("Host", "a.test"), ("Host", "a.test"))),
        stricter="RFC 9112 3.2: more than one Host is a 400",
    )
    # 14 targets and versions
    yield Case("f14-get-star", f, req(target="*"))
    yield Case("f14-fragment", f, req(target="/a#frag"))
    yield Case("f14-http-2-0", f, req(version="HTTP/2.0"))
    yield Case("f14-http-0-9", f, b"GET /\r\n\r\n")
    yield Case("f14-http-0-9-bare", f, b"GET /\r\n")
    # 15 Connection: close with more bytes in the same packet
    yield Case("f15-close-then-more", f, _get(("Connection", "close")) + FOLLOW)
    yield Case("f15-close-then-garbage", f, _get(("Connection", "close")) + b"garbage\r\n\r\n")
    # 16 upstream codings it cannot frame, then close
    for te in (b"chunked, gzip", b"xchunked", b"gzip", b"identity"):
        up = b"HTTP/1.1 200 OK\r\ntransfer-encoding: " + te + b"\r\n\r\nsome bytes"
        yield Case(f"f16-response-te-{te.decode().replace(', ', '+')}", f, _get(), upstream=(up,), upstream_close=True)


STREAM_WAIT = 4.0  # longer than bed.STREAM_IDLE_S: both proxies time the stream out within it


def _te_cl() -> Iterable[Case]:
    f = "te-cl"
    body = b"3\r\nabc\r\n0\r\n\r\n"
    yield Case("cl-te", f, _post(body, ("Content-Length", "4"), ("Transfer-Encoding", "chunked")))
    yield Case("te-cl", f, _post(body, ("Transfer-Encoding", "chunked"), ("Content-Length", "4")))
    yield Case("te-cl-zero", f, _post(body, ("Transfer-Encoding", "chunked"), ("Content-Length", "0")))
    for te in (
        "Chunked",
        "CHUNKED",
        " chunked",
        "chunked ",
        "chunked\t",
        "\tchunked",
        "chunked,",
        ",chunked",
        "chunk",
        "chunked;q=1",
        '"chunked"',
        "chunked\x0b",
        "\x0bchunked",
    ):
        name = te.encode().hex()
        yield Case(f"te-value-{name}", f, _post(body, ("Transfer-Encoding", te)))
        yield Case(f"te-value-cl-{name}", f, _post(body, ("Content-Length", "3"), ("Transfer-Encoding", te)))
    for header in (
        "Transfer-Encoding ",
        "Transfer_Encoding",
        "Transfer-Encodings",
        "transfer-encoding",
        "TRANSFER-ENCODING",
        "Transfer-\x00Encoding",
    ):
        yield Case(
            f"te-name-{header.encode().hex()}",
            f,
            req("POST", "/p", headers=(("Host", "a.test"), (header, "chunked")), body=body),
        )
    for cl in ("+3", "-1", "3 ", " 3", "03", "3,3", "3, 4", "0x3", "3a", "", "18446744073709551619", "1e1", "\uff13"):
        yield Case(f"cl-value-{cl.encode().hex() or 'empty'}", f, _post(b"abc", ("Content-Length", cl)))
    yield Case("cl-twice-same", f, _post(b"abc", ("Content-Length", "3"), ("Content-Length", "3")))
    yield Case("cl-twice-different", f, _post(b"abcd", ("Content-Length", "3"), ("Content-Length", "4")))
    yield Case(
        "cl-short-body-pipelined",
        f,
        _post(b"abcGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n", ("Content-Length", "3")),
    )
    yield Case("cl-zero-body-pipelined", f, _post(b"", ("Content-Length", "0")) + FOLLOW)
    # a body larger than one read (the agent reads 256 KiB at a time): its later reads go past the parser, and a
    # fresh parser takes the request in the same read as the body's end
    big = bytes(range(256)) * 2400
    yield Case("cl-large-body-pipelined", f, _post(big, ("Content-Length", str(len(big)))) + FOLLOW)
    # a body of one read with the next request after it (the head alone to the parser, the body past it)
    mid = b"m" * 40_000
    yield Case("cl-mid-body-pipelined", f, _post(mid, ("Content-Length", str(len(mid)))) + FOLLOW)
    yield Case("cl-mid-body-twice", f, _post(mid, ("Content-Length", str(len(mid)))) * 2 + FOLLOW)
    chunked = b"9c40\r\n" + mid + b"\r\n0\r\n\r\n"
    yield Case("chunked-mid-body-pipelined", f, _post(chunked, ("Transfer-Encoding", "chunked")) + FOLLOW)
    yield Case("cl-mid-body-get-pipelined", f, _get(target="/first") + _post(mid, ("Content-Length", "40000")) + FOLLOW)
    yield Case(
        "cl-large-body-close", f, _post(big, ("Content-Length", str(len(big))), ("Connection", "close")) + FOLLOW
    )
    yield Case(
        "cl-on-get", f, req("GET", "/", headers=(("Host", "a.test"), ("Content-Length", "3")), body=b"abc") + FOLLOW
    )
    yield Case(
        "te-on-get",
        f,
        req("GET", "/", headers=(("Host", "a.test"), ("Transfer-Encoding", "chunked")), body=body) + FOLLOW,
    )
    yield Case(
        "chunked-smuggle-zero",
        f,
        _post(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n", ("Transfer-Encoding", "chunked")),
    )
    yield Case("chunked-trailers", f, _post(b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", ("Transfer-Encoding", "chunked")))
    # a trailer section counts against the head's limit (60 KiB): 431 past it, however long it grows
    for size in (70_000, 1_000_000):
        trailer = b"0\r\nX-Trailer: " + b"t" * size + b"\r\n\r\n"
        yield Case(
            f"chunked-trailer-{size // 1000}k", f, _post(b"3\r\nabc\r\n" + trailer, ("Transfer-Encoding", "chunked"))
        )
    yield Case(
        "chunked-trailer-cl", f, _post(b"3\r\nabc\r\n0\r\nContent-Length: 50\r\n\r\n", ("Transfer-Encoding", "chunked"))
    )
    yield Case(
        "chunked-bad-trailer", f, _post(b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n", ("Transfer-Encoding", "chunked"))
    )
    yield Case(
        "chunked-many",
        f,
        _post(b"".join(b"1\r\nx\r\n" for _ in range(50)) + b"0\r\n\r\n", ("Transfer-Encoding", "chunked")),
    )
    yield Case("chunked-leading-zeros", f, _post(b"0003\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")))
    yield Case("chunked-upper-hex", f, _post(b"A\r\n0123456789\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")))


def _chunk_extensions() -> Iterable[Case]:
    f = "chunk-ext"
    for ext in (
        b";a=b",
        b";a",
        b';a="q"',
        b" ;a",
        b";a=b;c=d",
        b";",
        b';a="\\""',
        b";=b",
        b";a b",
        b";a\x00",
        b";" + b"e" * 4000,
    ):
        yield Case(
            f"chunk-ext-{ext[:12].hex()}-{len(ext)}",
            f,
            _post(b"3" + ext + b"\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")),
        )


def _whitespace_and_folding() -> Iterable[Case]:
    f = "obs-fold-ws"
    yield Case("obs-fold-value", f, req(headers=(("Host", "a.test"), ("X-A", "a\r\n b"))))
    yield Case("obs-fold-tab", f, req(headers=(("Host", "a.test"), ("X-A", "a\r\n\tb"))))
    yield Case("obs-fold-te", f, _post(b"3\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "\r\n chunked")))
    yield Case("obs-fold-first-line", f, b"GET / HTTP/1.1\r\n Host: a.test\r\n\r\n")
    yield Case("space-before-colon", f, req(headers=(("Host ", "a.test"),)))
    yield Case("tab-before-colon", f, req(headers=(("Host", "a.test"), ("X-A\t", "1"))))
    yield Case("space-before-colon-cl", f, _post(b"abc", ("Content-Length ", "3")))
    yield Case("space-in-name", f, req(headers=(("Host", "a.test"), ("X A", "1"))))
    yield Case("empty-name", f, b"GET / HTTP/1.1\r\nHost: a.test\r\n: v\r\n\r\n")
    yield Case("no-colon", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nnocolon\r\n\r\n")
    yield Case("value-leading-tabs", f, req(headers=(("Host", "a.test"), ("X-A", "\t\tv\t"))))
    yield Case("value-empty", f, req(headers=(("Host", "a.test"), ("X-A", ""))))
    yield Case("leading-crlf", f, b"\r\n" + _get())
    yield Case("leading-crlf-x3", f, b"\r\n\r\n\r\n" + _get())
    yield Case("leading-space", f, b" " + _get())
    yield Case("request-line-double-space", f, b"GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("request-line-tab", f, b"GET\t/\tHTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("request-line-trailing-space", f, b"GET / HTTP/1.1 \r\nHost: a.test\r\n\r\n")


def _bare_cr_lf_nul() -> Iterable[Case]:
    f = "cr-lf-nul"
    yield Case("lf-only-lines", f, b"GET / HTTP/1.1\nHost: a.test\n\n")
    yield Case("lf-only-headers", f, b"GET / HTTP/1.1\r\nHost: a.test\nX-A: 1\n\r\n")
    yield Case("cr-only-lines", f, b"GET / HTTP/1.1\rHost: a.test\r\r")
    yield Case("bare-cr-in-value", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\rb\r\n\r\n")
    yield Case("bare-lf-in-value", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\nb: c\r\n\r\n")
    yield Case("nul-in-value", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x00b\r\n\r\n")
    yield Case("nul-in-name", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX\x00A: 1\r\n\r\n")
    yield Case("nul-in-target", f, b"GET /a\x00b HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("ctl-in-target", f, b"GET /a\x01b HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("del-in-target", f, b"GET /a\x7fb HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("high-byte-in-target", f, b"GET /a\xffb HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("space-in-target", f, b"GET /a b HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("obs-text-in-value", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: caf\xe9\r\n\r\n")
    yield Case("high-byte-in-name", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-\xe9: 1\r\n\r\n")
    yield Case("del-in-value", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x7fb\r\n\r\n")
    yield Case("ctl-in-value", f, b"GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x01b\r\n\r\n")
    yield Case("cr-in-chunk-size", f, _post(b"3\r\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")))
    yield Case("lf-after-chunk-data", f, _post(b"3\r\nabc\n0\r\n\r\n", ("Transfer-Encoding", "chunked")))
    yield Case("cr-lf-in-host", f, b"GET / HTTP/1.1\r\nHost: a.test\rX: 1\r\n\r\n")


def _targets() -> Iterable[Case]:
    f = "target-form"
    for target in (
        "https://x.test/a",
        "HTTP://X.TEST/a",
        "http://x.test:8080/a",
        "http://user@x.test/a",
        "http://x.test/a?b#c",
        "ftp://x.test/a",
        "//x.test/a",
        "x.test/a",
        "a",
        "/a/../b",
        "/a/./b",
        "//a",
        "/%2e%2e/a",
        "/a%00b",
        "/a?b=c&d",
        "/" + "a" * 8000,
        "http://",
        "http:///a",
        "http://[::1]/a",
        "http://x.test:abc/a",
    ):
        yield Case(
            f"target-{target[:24].encode().hex()}-{len(target)}", f, req(target=target, headers=(("Host", "x.test"),))
        )
    yield Case("options-star", f, req("OPTIONS", "*"))
    yield Case("options-star-more", f, req("OPTIONS", "*a"))
    yield Case("get-star-more", f, req("GET", "*a"))
    yield from _absolute_authorities()
    yield Case("empty-target", f, b"GET  HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("connect-origin-form", f, req("CONNECT", "/a"))


#: authorities of absolute-form targets, as Envoy 1.40 reads them (its URL parser, then the IP literal): each is
#: forwarded (userinfo dropped) or refused with 400; found by probing Envoy, several first by the fuzzer
ABSOLUTE_AUTHORITIES = (
    # host names: letters, digits, "-" and "." only
    "x-.test", "1.2.3.4.5", "-", ".", "X.TEST", "x;.test", "x!.test", "x$.test", "x&.test", "x'.test", "x(.test",
    "x*.test", "x+.test", "x,.test", "x=.test", "x~.test", "x_y.test", "x%41.test", "x%.test", "x%2e", "x[.test",
    # ports: 1-5 digits up to 65535, never empty
    "x:80", "x:0", "x:00000080", "x:65535", "x:65536", "x:99999", "x:", "x:+80", "x:80:80", ":80", "Content-Length:",
    # userinfo: dropped; its own characters; one "@"
    "user@x", "user:pw@x", "@x", "a-_.!~*'()%;:&=+$,@x", "u[s]@x", "x@y@z", "@", "u@:80",
    # IP literals: what the C library parses (IPv4 dotted quad; IPv6 with a numeric scope, or a name on link-local)
    "[::1]", "[::1]:80", "[::]", "[1::]", "[1.2.3.4]", "[::ffff:1.2.3.4]", "[fe80::1%eth0]:8080", "[fe80::1%lo]",
    "[fe80::1%25]", "[::1%2]", "[::1%0]", "[::1%eth0]", "[::1%25eth0]", "[::1%]", "[::1%x]", "[%25]", "[]", "[:]",
    "[.]", "[a]", "[:::]", "[ffff]", "[1:2:3:4:5:6:7:8:9]", "[1]", "[1.2.3]", "[01.2.3.4]", "[1.2.3.256]",
    "[1.2.3.4%2]", "[::1%99999999999]", "[fe80::1%2x]", "[::1", "::1", "[::1]x", "[v1.x]", "[::1]:", "[::1]:80:80",
)  # fmt: skip


def _absolute_authorities() -> Iterable[Case]:
    f = "target-form"
    for authority in ABSOLUTE_AUTHORITIES:
        target = f"http://{authority}/p?q"
        yield Case(f"absolute-{authority.encode().hex()}", f, req(target=target, headers=(("Host", "h.test"),)))
    # what follows the authority is not a path: Envoy answers 404 (a relative path no route serves)
    for target in ("http://x.test?q=1", "http://x?y/p?q", "https://x.test?"):
        yield Case(f"absolute-query-only-{target.encode().hex()}", f, req(target=target))


def _methods_versions() -> Iterable[Case]:
    f = "method-version"
    # Envoy admits http-parser's methods (MSEARCH, not M-SEARCH; no QUERY), refuses the rest with 400
    methods = ("get", "FOO", "G@T", "GET\x00", "PROPFIND", "PATCH", "DELETE", "OPTIONS", "TRACE", "M" * 100, "PRI")
    more = ("M-SEARCH", "MSEARCH", "QUERY", "SOURCE", "PURGE", "MKCALENDAR", "UNLINK", "DESCRIBE", "SETUP", "FLUSH")
    for method in (*methods, *more):
        yield Case(f"method-{method[:12].encode().hex()}-{len(method)}", f, req(method=method))
    yield Case("head", f, req("HEAD"), head=True)
    yield Case("head-pipelined", f, req("HEAD") + req("HEAD", "/2"), head=True)
    # a HEAD refused while its head is read: the 400 has no body either
    yield Case("head-refused-bare-lf", f, b"HEAD /p HTTP/1.1\r\nHost: a.t\n\r\nHost: a.t\n\r\n\r\n", head=True)
    yield Case("head-refused-request-line", f, b"HEAD  / \r\n" + req("HEAD"), head=True)
    # a request line with blanks and no version is HTTP/0.9 to Envoy (426); with a version, blanks are let through
    yield Case("request-line-no-version", f, b"GET / \r\n\r\n")
    yield Case("request-line-no-version-head", f, b"HEAD / \r\n\r\n", head=True)
    yield Case("request-line-two-blanks-no-version", f, b"GET  /  \r\n\r\n")
    yield Case("request-line-two-blanks", f, b"GET  / HTTP/1.1\r\nHost: a.test\r\n\r\n")
    yield Case("request-line-two-blanks-head", f, b"HEAD  / HTTP/1.1\r\nHost: a.test\r\n\r\n", head=True)
    # QUERY (RFC 9110's safe method with a body): Envoy 1.40 refuses it, with or without a body
    yield Case("query-content-length-0", f, req("QUERY", headers=(("Host", "a.test"), ("Content-Length", "0"))))
    yield Case("query-body", f, req("QUERY", headers=(("Host", "a.test"), ("Content-Length", "3")), body=b"abc"))
    chunked = (("Host", "a.test"), ("Transfer-Encoding", "chunked"))
    yield Case("query-chunked", f, req("QUERY", headers=chunked, body=b"3\r\nabc\r\n0\r\n\r\n"))
    yield Case(
        "head-refused-method-list",
        f,
        req("HEAD", headers=(("Host", "a.test"), ("Connection", "x-forwarded-for"))),
        head=True,
    )
    for version in (
        "HTTP/1.0",
        "HTTP/1.2",
        "HTTP/1.10",
        "HTTP/2.0",
        "HTTP/3.0",
        "http/1.1",
        "HTTP/1.1x",
        "HTTP/1",
        "HTTP/01.1",
        "HTTPS/1.1",
        "HTTP/9.9",
    ):
        yield Case(f"version-{version.encode().hex()}", f, req(version=version))
    yield Case("http10-no-host", f, req(version="HTTP/1.0", headers=()))
    yield Case(
        "http10-keep-alive", f, req(version="HTTP/1.0", headers=(("Host", "a.test"), ("Connection", "keep-alive")))
    )
    yield Case("pri-preface", f, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")


def _limits() -> Iterable[Case]:
    f = "limits"
    for size in (8_000, 30_000, 50_000, 58_000):
        yield Case(f"header-value-{size}", f, _get(("X-Big", "a" * size)))
    for size in (61_500, 64_000, 80_000, 200_000):
        yield Case(f"header-value-{size}", f, _get(("X-Big", "a" * size)))
    yield Case("many-headers-50k-total", f, _get(*[(f"X-H{i}", "v" * 500) for i in range(90)]))
    yield Case("many-headers-70k-total", f, _get(*[(f"X-H{i}", "v" * 700) for i in range(99)]))
    yield Case("url-50k", f, _get(target="/" + "u" * 50_000))
    yield Case("url-65k", f, _get(target="/" + "u" * 65_000))
    yield Case("body-1m", f, _post(b"b" * (1 << 20), ("Content-Length", str(1 << 20))))
    yield Case(
        "chunked-body-256k",
        f,
        _post(b"40000\r\n" + b"c" * (1 << 18) + b"\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")),
    )


def _pipelining() -> Iterable[Case]:
    f = "pipelining"
    yield Case("pipe-2", f, _get(target="/1") + _get(target="/2"))
    yield Case("pipe-3", f, _get(target="/1") + _get(target="/2") + _get(target="/3"))
    yield Case("pipe-post-get", f, _post(b"abc", ("Content-Length", "3")) + FOLLOW)
    yield Case("pipe-chunked-get", f, _post(b"3\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked")) + FOLLOW)
    yield Case("pipe-get-bad", f, _get(target="/1") + b"BROKEN\r\n\r\n")
    yield Case(
        "pipe-get-bad-te", f, _get(target="/1") + _post(b"3\r\nabc\r\n0\r\n\r\n", ("Transfer-Encoding", "xchunked"))
    )
    yield Case("pipe-get-partial", f, _get(target="/1") + b"GET /2 HTTP/1.1\r\nHo", deadline=STREAM_WAIT)
    yield Case("pipe-admin-then-ok", f, _get(target="/admin/x") + _get(target="/ok"))
    yield Case("pipe-10", f, b"".join(_get(target=f"/{i}") for i in range(10)))
    # one read of pipelined requests past the head limit (60 KiB): each head is within it, so all are served
    yield Case(
        "pipe-burst-70k", f, b"".join(_get(("X-Pad", "p" * 5000), target=f"/{i}") for i in range(14)), deadline=5
    )
    yield Case(
        "pipe-http10", f, req(version="HTTP/1.0", headers=(("Host", "a.test"), ("Connection", "keep-alive"))) + FOLLOW
    )


def _connection_headers() -> Iterable[Case]:
    f = "connection"
    yield Case("conn-close", f, _get(("Connection", "close")))
    yield Case("conn-keep-alive", f, _get(("Connection", "keep-alive")))
    yield Case("conn-names-header", f, _get(("Connection", "x-hop"), ("X-Hop", "1"), ("X-End", "kept")))
    yield Case("conn-content-length", f, _post(b"abc", ("Connection", "content-length"), ("Content-Length", "3")))
    yield Case(
        "conn-transfer-encoding",
        f,
        _post(b"3\r\nabc\r\n0\r\n\r\n", ("Connection", "transfer-encoding"), ("Transfer-Encoding", "chunked")),
    )
    yield Case("conn-x-request-id", f, _get(("Connection", "x-request-id"), ("X-Request-Id", "given")))
    yield Case("conn-upgrade-no-upgrade", f, _get(("Connection", "upgrade")))
    yield Case("upgrade-no-connection", f, _get(("Upgrade", "websocket")))
    yield Case("conn-empty", f, _get(("Connection", "")))
    yield Case("conn-many-tokens", f, _get(("Connection", "a, b, , c,keep-alive"), ("A", "1"), ("C", "2")))
    # Envoy's Connection rules: at most 9 entries; never a pseudo-header, Host or X-Forwarded-For/-Host/-Proto
    for value in (
        "x-forwarded-for",
        "X-Forwarded-Host",
        "x-forwarded-proto",
        "x-forwarded-port",
        " :path",
        "a, :b",
        "a:b",
        "connection",
        "cookie",
        "h0, h1, h2, h3, h4, h5, h6, h7, h8",
        "h0, h1, h2, h3, h4, h5, h6, h7, h8, h9",
        "h0,h1,h2,h3,h4,h5,h6,h7,h8, ",
        "a,,,,,,,,,,,,,,b",
        "a, , , , , , , , , ,b",
        "close, close, close, close, close, close, close, close, close, close",
    ):
        yield Case(
            f"conn-nominates-{value.encode().hex()}", f, _get(("Connection", value), ("X-Forwarded-For", "1.2.3.4"))
        )
    yield Case(
        "conn-twice-10-entries", f, _get(("Connection", "a, b, , c,keep-alive"), ("Connection", "a, b, , c,keep-alive"))
    )
    yield Case("conn-te-trailers", f, _get(("TE", "trailers"), ("Connection", "te")))
    # TE goes on as "trailers" when an entry is exactly that, else not at all
    for value in ("trailers, gzip", "gzip, trailers", "Trailers", "trailers;q=1", " trailers ", "trailers,trailers"):
        yield Case(f"te-{value.encode().hex()}", f, _get(("TE", value)))
    yield Case("te-twice", f, _get(("TE", "trailers"), ("TE", "trailers")))
    yield Case("te-gzip-then-trailers", f, _get(("TE", "gzip"), ("TE", "trailers")))
    # HTTP2-Settings nominated in Connection goes on, unless the request is an h2c upgrade
    h2s = ("HTTP2-Settings", "AAMAAABkAAQAAP__")
    yield Case("conn-http2-settings", f, _get(("Connection", "HTTP2-Settings"), h2s))
    yield Case(
        "conn-http2-settings-h2c-no-upgrade", f, _get(("Connection", "x, HTTP2-Settings"), ("Upgrade", "h2c"), h2s)
    )
    yield Case(
        "conn-http2-settings-h2c-upper", f, _get(("Connection", "HTTP2-Settings, upgrade"), ("Upgrade", "H2C"), h2s)
    )
    # a Referer that is no URI reference is removed
    for value in REFERERS:
        yield Case(f"referer-{value.encode('latin-1').hex()}", f, req(headers=(("Host", "a.test"), ("Referer", value))))
    # a client's X-Forwarded-Client-Cert is not passed on (Envoy's default: SANITIZE)
    yield Case("xfcc-from-client", f, _get(("X-Forwarded-Client-Cert", "By=spiffe://x;Hash=1")))
    yield Case("te-trailers", f, _get(("TE", "trailers")))
    yield Case("te-gzip", f, _get(("TE", "gzip")))
    yield Case("keep-alive-header", f, _get(("Keep-Alive", "timeout=5")))
    yield Case("proxy-connection", f, _get(("Proxy-Connection", "keep-alive")))
    yield Case("expect-continue", f, _post(b"abc", ("Content-Length", "3"), ("Expect", "100-continue")))
    yield Case("expect-continue-no-body", f, _get(("Expect", "100-continue")))
    yield Case("expect-other", f, _post(b"abc", ("Content-Length", "3"), ("Expect", "201-whatever")))


def _hosts() -> Iterable[Case]:
    f = "host"
    for host in (
        "a.test:8080",
        "",
        "a.test:",
        "a b",
        "a.test:99999",
        "[::1]:80",
        "user@a.test",
        "a.test/x",
        "a_b.test",
        "A.TEST",
        "a.test.",
        "x;.test",
        "x%41.test",
        "x:abc",
        "x:",
        ":",
        "[",
        "[::1",
        "x@y@z",
        'x"y',
        "x{y",
        "x|y",
        "x#y",
        "x/y",
        "x?y",
        "x\\y",
        "x^y",
        "x`y",
        "x<y>",
        "x\x7fy",
    ):
        yield Case(f"host-{host.encode().hex() or 'empty'}", f, req(headers=(("Host", host),)))
    yield Case("host-absolute-mismatch-admin", f, req(target="http://x.test/admin", headers=(("Host", "a.test"),)))


#: Referer values: Envoy keeps an absolute URI without userinfo or fragment, or a relative reference of query
#: characters with no ":" in its first segment; it removes the others
REFERERS = (
    "v1", "/a:b", "a:b", "http://x/a", "http://u@x/a", "http://x/a#f", "/a#f", "/a b", "ftp://x/a", "http://x_y/a",
    "//x/a", "?q", "", "/a%zz", '/a"b', "/a[b]", "https://[::1]/a", "http://[::1%eth0]/", "HTTP://x/", "http:x",
    "mailto:x", "a/b:c", "/a\\b", "/a{b", "http://x:99999/", "/\xe9", "*", "http://x?q", "-._~!$&'()*+,;=:@/?%",
    "v-Length: 3, 4",
)  # fmt: skip
#: repeated header names: Envoy keeps its inline headers as one entry, values joined with "," (an empty one
#: adds nothing), and the others as separate lines
REPEATED = (
    "Accept", "Accept-Encoding", "Authorization", "Cache-Control", "Content-Type", "If-None-Match", "Origin",
    "Referer", "User-Agent", "Via", "X-Forwarded-For", "X-Forwarded-Host", "Grpc-Timeout", "Cookie", "Forwarded",
    "X-Custom", "Accept-Language", "Range", "Traceparent",
)  # fmt: skip


def _repeated_headers() -> Iterable[Case]:
    f = "repeated"
    for name in REPEATED:
        yield Case(f"repeated-{name.lower()}", f, _get((name, "v1"), (name, "v2")))
    yield Case(
        "repeated-empty-values", f, _get(("X-A", ""), ("X-A", "v2"), ("Accept", ""), ("Accept", "v2"), ("Accept", ""))
    )
    yield Case("repeated-three", f, _get(("User-Agent", "a"), ("X-B", "1"), ("user-agent", "b"), ("USER-AGENT", "c")))


def _plugin_paths() -> Iterable[Case]:
    f = "plugin"
    for target in (
        "/admin",
        "/admin/x",
        "/Admin",
        "/%61dmin",
        "//admin",
        "/./admin",
        "/x/../admin",
        "/admin?x=1",
        "/adminx",
        "/ad%6din",
    ):
        yield Case(f"deny-{target.encode().hex()}", f, req(target=target), pairs=("filtered",))


def _responses() -> Iterable[Case]:
    f = "response"
    table = {
        "cl-te": b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "dup-cl": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
        "dup-cl-same": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
        "neg-cl": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nok",
        "chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "chunked-trailers": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\n",
        # trailers past max_response_headers_kb (80): Envoy resets the upstream, the client's response is cut
        "chunked-trailer-1m": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: "
        + b"t" * 1_000_000
        + b"\r\n\r\n",
        "bad-chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        "continue-then-200": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "103-then-200": b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "no-reason": b"HTTP/1.1 200\r\ncontent-length: 2\r\n\r\nok",
        "status-999": b"HTTP/1.1 999 Odd\r\ncontent-length: 2\r\n\r\nok",
        "status-2-digits": b"HTTP/1.1 20 OK\r\ncontent-length: 2\r\n\r\nok",
        "http10-response": b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "lf-only": b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok",
        "obs-fold": b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 2\r\n\r\nok",
        "nul-in-value": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 2\r\n\r\nok",
        "space-before-colon": b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok",
        "101-unrequested": b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
        "garbage": b"NOT HTTP\r\n\r\n",
        "empty-close": b"",
        "304-with-length": b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
        "set-cookie-twice": b"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: 2\r\n\r\nok",
        "te": b"HTTP/1.1 200 OK\r\nte: trailers\r\ncontent-length: 2\r\n\r\nok",
        "trailer-header": b"HTTP/1.1 200 OK\r\ntrailer: x-t\r\ncontent-length: 2\r\n\r\nok",
        "upgrade-header": b"HTTP/1.1 200 OK\r\nupgrade: h2c\r\ncontent-length: 2\r\n\r\nok",
        "connection-close": b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        "hop-headers": b"HTTP/1.1 200 OK\r\nconnection: x-up\r\nx-up: 1\r\nkeep-alive: timeout=1\r\n"
        b"content-length: 2\r\n\r\nok",
        "500": b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\n\r\nno",
        "early-413": b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno",
        # 1xx and 204 have no body: a Content-Length other than "0", or any Transfer-Encoding, is Envoy's 502
        "204-cl0": b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
        "204-cl00": b"HTTP/1.1 204 No Content\r\ncontent-length: 00\r\n\r\n",
        "204-cl4-no-body": b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\n",
        "204-cl-bad": b"HTTP/1.1 204 No Content\r\ncontent-length: x\r\n\r\n",
        "204-chunked": b"HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "204-gzip": b"HTTP/1.1 204 No Content\r\ntransfer-encoding: gzip\r\n\r\n",
        "304-chunked": b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
        "205-cl4": b"HTTP/1.1 205 Reset Content\r\ncontent-length: 4\r\n\r\nevil",
        "100-cl": b"HTTP/1.1 100 Continue\r\ncontent-length: 4\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        "100-chunked": b"HTTP/1.1 100 Continue\r\ntransfer-encoding: chunked\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    }
    for name, raw in table.items():
        close = name in ("empty-close", "garbage", "connection-close", "early-413", "101-unrequested")
        yield Case(f"resp-{name}", f, _get(), upstream=(raw,), upstream_close=close)
    yield Case(
        "resp-close-delimited", f, _get(), upstream=(b"HTTP/1.1 200 OK\r\n\r\nuntil close",), upstream_close=True
    )
    yield Case(
        "resp-short-body-close",
        f,
        _get(),
        upstream=(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",),
        upstream_close=True,
    )
    yield Case(
        "resp-chunked-no-end-close",
        f,
        _get(),
        upstream=(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",),
        upstream_close=True,
    )
    # Envoy writes its own reason phrase (its code table; "Unknown" for a code it has no name for), never the
    # upstream's
    for status in (200, 299, 413, 414, 416, 418, 451, 599, 600, 999):
        raw = b"HTTP/1.1 %d Upstream Words\r\ncontent-length: 2\r\n\r\nok" % status
        yield Case(f"resp-reason-{status}", f, _get(), upstream=(raw,))
    yield Case(
        "resp-head-with-body",
        f,
        req("HEAD"),
        upstream=(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",),
        head=True,
        then=req("HEAD", "/2"),
    )


#: x-envoy-* request headers a client sends: Envoy 1.40 removes those that steer it from an external request (every
#: request, with the bed's use_remote_address false and no internal_address_config) and forwards the others
ENVOY_REQUEST_HEADERS = (
    "X-Envoy-Attempt-Count", "X-Envoy-Decorator-Operation", "X-Envoy-Downstream-Service-Cluster",
    "X-Envoy-Downstream-Service-Node", "X-Envoy-Expected-Rq-Timeout-Ms", "X-Envoy-External-Address",
    "X-Envoy-Force-Trace", "X-Envoy-Hedge-On-Per-Try-Timeout", "X-Envoy-Internal", "X-Envoy-Ip-Tags",
    "X-Envoy-Is-Timeout-Retry", "X-Envoy-Max-Retries", "X-Envoy-Original-Host", "X-Envoy-Original-Path",
    "X-Envoy-Original-Url", "X-Envoy-Retriable-Header-Names", "X-Envoy-Retriable-Status-Codes",
    "X-Envoy-Retry-Grpc-On", "X-Envoy-Retry-On", "X-Envoy-Upstream-Alt-Stat-Name",
    "X-Envoy-Upstream-Rq-Per-Try-Timeout-Ms", "X-Envoy-Upstream-Rq-Timeout-Alt-Response",
    "X-Envoy-Upstream-Rq-Timeout-Ms", "X-Envoy-Upstream-Stream-Duration-Ms", "X-Envoy-Peer-Metadata",
    "X-Envoy-Debug", "X-Envoy-Whatever",
)  # fmt: skip
#: X-Forwarded-For values: none makes a request internal without an internal_address_config
FORWARDED_FOR = ("10.1.2.3", "127.0.0.1", "1.2.3.4", "10.0.0.1, 10.0.0.2", "::1", "garbage")
#: upstream response heads with repeated headers: inline ones (Envoy's response map) merged with ",", others not
RESPONSE_HEADS = {
    "repeated-inline": b"cache-control: a\r\ncache-control: b\r\nvary: a\r\nvary: b\r\netag: e1\r\netag: e2\r\n"
    b"via: v1\r\nvia: v2\r\nage: 1\r\nage: 2\r\nlocation: /a\r\nlocation: /b\r\nexpires: 0\r\nexpires: 1\r\n",
    "repeated-other": b"set-cookie: a=1\r\nset-cookie: b=2\r\nx-dup: 1\r\nx-dup: 2\r\nlink: <a>\r\nlink: <b>\r\n",
    "repeated-content-type": b"content-type: a\r\ncontent-type: b\r\n",
    "repeated-empty": b"vary: \r\nvary: b\r\nx-e: \r\nx-e: f\r\n",
    "server": b"server: app/1.0\r\n",
    "server-twice": b"server: a\r\nserver: b\r\n",
    "date": b"date: Mon, 01 Jan 2024 00:00:00 GMT\r\n",
    "service-time": b"x-envoy-upstream-service-time: 99\r\nx-envoy-degraded: 1\r\nx-envoy-whatever: 1\r\n",
    "none": b"",
}


def _hcm_headers() -> Iterable[Case]:
    """The connection manager's and router's header mutations (meshplug/agent/hcm.py): requests, responses,
    and the connection after the router's own 404."""
    f = "hcm"
    envoy = tuple((name, "7") for name in ENVOY_REQUEST_HEADERS)
    yield Case("hcm-x-envoy-request", f, _get(*envoy))
    for xff in FORWARDED_FOR:
        yield Case(f"hcm-x-envoy-xff-{xff.encode().hex()}", f, _get(("X-Forwarded-For", xff), *envoy))
    yield Case("hcm-client-xfcc", f, _get(("X-Forwarded-Client-Cert", "By=spiffe://x;Hash=1"), ("X-A", "1")))
    yield Case("hcm-client-xfp", f, _get(("X-Forwarded-Proto", "https")))
    yield Case("hcm-x-envoy-post", f, _post(b"abc", ("Content-Length", "3"), ("X-Envoy-Retry-On", "5xx")))
    for name, lines in RESPONSE_HEADS.items():
        raw = b"HTTP/1.1 200 OK\r\n" + lines + b"content-length: 2\r\n\r\nok"
        yield Case(f"hcm-resp-{name}", f, _get(), upstream=(raw,))
    yield Case("hcm-resp-404-upstream", f, _get(), upstream=(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",))
    # the router's 404 keeps the connection (a target no route serves); with an unread body it closes
    yield Case("hcm-404-query-then", f, req(target="http://a.test?q") + FOLLOW)
    yield Case("hcm-404-options-star-then", f, req("OPTIONS", "*") + FOLLOW)
    # a HEAD the router answers 404: the reply's framing headers without its body, and the connection goes on
    yield Case("hcm-404-head-then", f, req("HEAD", "http://a.test?q") + req("HEAD", "/2"), head=True)
    yield Case("hcm-404-query-body-then", f, _post(b"ab", ("Content-Length", "2"), target="http://a.test?q") + FOLLOW)
    yield Case(
        "hcm-404-query-chunked-then",
        f,
        _post(b"2\r\nab\r\n0\r\n\r\n", ("Transfer-Encoding", "chunked"), target="http://a.test?q") + FOLLOW,
    )


def _found() -> Iterable[Case]:
    if not FOUND.exists():
        return
    for entry in yaml.safe_load(FOUND.read_text()) or []:
        yield Case(
            name=str(entry["name"]),
            family="found",
            request=str(entry["request"]).encode("latin-1"),
            upstream=tuple(str(r).encode("latin-1") for r in entry.get("upstream", ())),
            upstream_close=bool(entry.get("upstream_close", False)),
            stricter=str(entry.get("stricter", "")),
        )


#: where the agent refuses by design what Envoy 1.40 (its Balsa parser) lets through: llhttp in strict mode
_LENIENT = "Envoy's parser tolerates it; the agent's (llhttp, strict) refuses it with 400"
STRICTER: dict[str, str] = {
    **dict.fromkeys(
        (
            "f9-chunk-size-3320",  # "3 " before CRLF
            "f9-chunk-no-crlf",
            "chunk-ext-203b61-3",  # " ;a"
            "chunk-ext-3b-1",  # ";" alone
            "chunk-ext-3b612062-4",  # ";a b"
            "chunk-ext-3b6100-3",  # NUL in an extension
            "obs-fold-value",
            "obs-fold-tab",
            "obs-fold-te",
            "request-line-tab",
            "request-line-trailing-space",
            "lf-only-lines",
            "lf-only-headers",
            "cr-only-lines",
            "bare-cr-in-value",
            "bare-lf-in-value",
            "lf-after-chunk-data",
            "pri-preface",
            "te-value-6368756e6b656409",  # "chunked<TAB>"
            "chunked-trailer-cl",  # Content-Length in the trailers
            "head-refused-bare-lf",
        ),
        _LENIENT,
    ),
    "method-4d534541524348-7": "MSEARCH: Envoy's method list has it, the agent's parser (llhttp) does not (400)",
    "f13-two-hosts": "RFC 9112 3.2: more than one Host is a 400 (Envoy merges them)",
    "f13-two-hosts-same": "RFC 9112 3.2: more than one Host is a 400 (Envoy merges them)",
    "f14-http-0-9-bare": "an HTTP/0.9 line alone: the agent waits for the end of the head (then 408); Envoy 426",
    "resp-lf-only": "a response with bare-LF lines is not relayed (502); Envoy's parser tolerates it",
    "resp-obs-fold": "a folded response header is not relayed (502); Envoy's parser tolerates it",
    "resp-101-unrequested": "a 101 the client did not ask for is not relayed (503); Envoy passes it on",
}
#: documented differences in what the first client sees, the upstream and the second client's checks still hold
DIVERGENCE: dict[str, str] = {}
#: documented differences in the bytes of the first client's responses where both proxies answer the same statuses
#: (status lines, local replies byte for byte, response headers): each says why it is left
REPLY_DIFFERS: dict[str, str] = {
    "resp-bad-chunk": "Envoy sends the response head before the bad chunk, then resets; the agent sends nothing "
    "(the client sees no complete response from either)",
}


def _marked(case: Case) -> Case:
    return dataclasses.replace(
        case,
        stricter=STRICTER.get(case.name, case.stricter),
        divergence=DIVERGENCE.get(case.name, ""),
        reply_differs=REPLY_DIFFERS.get(case.name, ""),
    )


CASES: tuple[Case, ...] = tuple(
    map(
        _marked,
        (
            *_findings(),
            *_te_cl(),
            *_chunk_extensions(),
            *_whitespace_and_folding(),
            *_bare_cr_lf_nul(),
            *_targets(),
            *_methods_versions(),
            *_limits(),
            *_pipelining(),
            *_connection_headers(),
            *_hosts(),
            *_repeated_headers(),
            *_plugin_paths(),
            *_responses(),
            *_hcm_headers(),
            *_found(),
        ),
    )
)
