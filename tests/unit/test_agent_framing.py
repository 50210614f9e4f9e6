"""meshplug.agent.framing: the request rules the agent enforces before anything goes upstream (the differential
suite holds each to Envoy; these pin the functions themselves), and the config's `http:` section."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshplug import errors
from meshplug.agent import config as agent_config
from meshplug.agent import framing


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        (b"GET", b"/a?b", (b"/a?b", b"")),
        (b"GET", b"//x/a", (b"//x/a", b"")),
        (b"GET", b"http://x.test/admin/users", (b"/admin/users", b"x.test")),
        (b"GET", b"HTTPS://X.TEST:8443/a", (b"/a", b"X.TEST:8443")),
        (b"GET", b"http://x.test", (b"/", b"x.test")),
        (b"GET", b"http://x:080/a", (b"/a", b"x:080")),
        (b"GET", b"http://@x/a", (b"/a", b"x")),
        (b"GET", b"http://[fe80::1%lo]/a", (b"/a", b"[fe80::1%lo]")),
        (b"GET", b"http://[1.2.3.4]/a", (b"/a", b"[1.2.3.4]")),
        (b"GET", b"http://user@x.test/a", (b"/a", b"x.test")),
        (b"GET", b"http://[::1]:80/a", (b"/a", b"[::1]:80")),
    ],
)
def test_request_target_forms(method: bytes, url: bytes, expected: tuple[bytes, bytes]) -> None:
    assert framing.request_target(method, url) == expected


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        (b"GET", b"*", 400),
        (b"OPTIONS", b"*", 404),
        (b"GET", b"/a#frag", 400),
        (b"GET", b"http://x.test/a#f", 400),
        (b"GET", b"ftp://x.test/a", 400),
        (b"GET", b"http://", 400),
        (b"GET", b"http:///a", 400),
        (b"GET", b"http://x.test:abc/a", 400),
        (b"GET", b"http://a b/", 400),
        (b"GET", b"x.test/a", 400),
        (b"GET", b"*a", 400),
        (b"OPTIONS", b"*a", 404),
        (b"GET", b"http://x.test?q=1", 404),  # the path "?q=1" does not start with "/"
        (b"GET", b"http://x;.test/a", 400),  # host names: letters, digits, "-", "."
        (b"GET", b"http://x_y/a", 400),
        (b"GET", b"http://Content-Length:/a", 400),  # an empty port
        (b"GET", b"http://x:65536/a", 400),
        (b"GET", b"http://x@y@z/a", 400),
        (b"GET", b"http://u[s]@x/a", 400),
        (b"GET", b"http://[::1%eth0]/a", 400),  # an interface name on a non-link-local address
        (b"GET", b"http://[ffff]/a", 400),
        (b"GET", b"http://[01.2.3.4]/a", 400),
        (b"GET", b"http://[::1]x/a", 400),
        (b"GET", b"http://x/a\xffb", 400),
    ],
)
def test_request_targets_refused(method: bytes, url: bytes, status: int) -> None:
    with pytest.raises(framing.Refusal) as info:
        framing.request_target(method, url)
    assert info.value.status == status


@pytest.mark.parametrize("values", [[b"chunked"], [b"Chunked"], [b" chunked\t"]])
def test_chunked_alone_frames(values: list[bytes]) -> None:
    assert framing.chunked(values)


@pytest.mark.parametrize(
    "values",
    [[b"xchunked"], [b"chunkedx"], [b"gzip, chunked"], [b"identity, chunked"], [b"chunked"] * 2, [b"identity"], [b""]],
)
def test_other_codings_are_501(values: list[bytes]) -> None:
    with pytest.raises(framing.Refusal) as info:
        framing.chunked(values)
    assert info.value.status == 501


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        (b"x-a", b"v", True),
        (b":path", b"/a", True),
        (b"x-a", b"a\r\nX-Smuggled: 1", False),
        (b"x-a", b"a\nb", False),
        (b"x-a", b"a\x00b", False),
        (b"x a", b"v", False),
        (b"x-a\r\n", b"v", False),
        (b"", b"v", False),
    ],
)
def test_plugin_fields(name: bytes, value: bytes, ok: bool) -> None:
    assert framing.field_ok(name, value) is ok


def _cfg(http: object) -> agent_config.AgentConfig:
    raw = {
        "listeners": [{"name": "m", "port": 1, "cluster": "u"}],
        "clusters": [{"name": "u", "port": 2}],
        "admin": {"port": 3},
        "http": http,
    }
    return agent_config.parse(raw, base=Path("/tmp"))


def test_http_section_defaults_are_envoys_and_admin_is_loopback() -> None:
    cfg = _cfg({})
    assert cfg.http == agent_config.HttpOptions()
    assert (cfg.http.max_request_headers_kb, cfg.http.max_headers_count, cfg.http.stream_idle_timeout_s) == (
        60,
        100,
        300,
    )
    assert (cfg.http.request_headers_timeout_s, cfg.http.max_connection_duration_s, cfg.http.accept_http_10) == (
        0,
        0,
        False,
    )
    assert cfg.admin.address == "127.0.0.1"


def test_http_section_is_read() -> None:
    cfg = _cfg(
        {"max_headers_count": 50, "stream_idle_timeout_s": 2, "accept_http_10": True, "max_stream_duration_s": 1.5}
    )
    assert (cfg.http.max_headers_count, cfg.http.stream_idle_timeout_s, cfg.http.accept_http_10) == (50, 2.0, True)
    assert (cfg.http.max_stream_duration_s, agent_config.HttpOptions().max_stream_duration_s) == (1.5, 0.0)


@pytest.mark.parametrize(
    ("http", "message"),
    [
        ({"max_headers_count": 0}, "http.max_headers_count must be an integer >= 1"),
        ({"stream_idle_timeout_s": -1}, "http.stream_idle_timeout_s must be a number of seconds >= 0"),
        ({"max_stream_duration_s": -0.5}, "http.max_stream_duration_s must be a number of seconds >= 0"),
        ({"accept_http_10": "yes"}, "http.accept_http_10 must be true or false"),
        ({"max_request_header_kb": 1}, "http: unknown key"),
    ],
)
def test_http_section_errors_name_the_key(http: object, message: str) -> None:
    with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(")):
        _cfg(http)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([(b"accept", b"a"), (b"x-b", b"1"), (b"accept", b"b")], [(b"accept", b"a,b"), (b"x-b", b"1")]),
        ([(b"accept", b""), (b"accept", b"b"), (b"accept", b"")], [(b"accept", b"b")]),
        ([(b"accept", b"a "), (b"accept", b"b\t")], [(b"accept", b"a ,b\t")]),  # (HTTP/2's blanks stay, as Envoy's)
        ([(b"cookie", b"a"), (b"cookie", b"b")], [(b"cookie", b"a"), (b"cookie", b"b")]),
    ],
)
def test_repeated_inline_headers_are_one_entry(
    lines: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]
) -> None:
    assert framing.merged(lines, frozenset({b"accept"})) == expected


@pytest.mark.parametrize(
    ("value", "names"),
    [(b"close", {b"close"}), (b"a, B,,", {b"a", b"b"}), (b"a:b", {b"a:b"}), (b",".join([b"h"] * 9), {b"h"})],
)
def test_connection_nominations(value: bytes, names: set[bytes]) -> None:
    assert framing.nominated(value) == names


@pytest.mark.parametrize(
    "value",
    [b",".join([b"h"] * 10), b"a, , , , , , , , , ,b", b" :path", b"X-Forwarded-For", b"x-forwarded-proto", b"host"],
)
def test_connection_nominations_refused(value: bytes) -> None:
    with pytest.raises(framing.Refusal) as info:
        framing.nominated(value)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([(b"te", b"gzip, trailers"), (b"x", b"1")], [(b"te", b"trailers"), (b"x", b"1")]),
        ([(b"te", b"Trailers")], []),
        ([(b"te", b"trailers;q=1")], []),
        ([(b"te", b"gzip"), (b"te", b"trailers")], [(b"te", b"trailers")]),
    ],
)
def test_te_goes_on_as_trailers_alone(lines: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]) -> None:
    assert framing.te_trailers(lines) == expected


def test_methods_are_envoys() -> None:
    assert {b"GET", b"MSEARCH", b"PURGE", b"SOURCE"} <= framing.METHODS
    assert not {b"M-SEARCH", b"QUERY", b"DESCRIBE", b"PRI", b"get"} & framing.METHODS


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (b"/a:b", True), (b"v-Lenst ", False), (b"http://x?q \t", False),
        (b"a/b:c", True), (b"http://x/a", True), (b"ftp://x/a", True), (b"?q", True), (b"", True),
        (b"a:b", False), (b"http://u@x/a", False), (b"http://x/a#f", False), (b"/a b", False), (b"/a[b]", False),
        (b"http://x_y/a", False), (b"mailto:x", False), (b"/\xe9", False),
    ],
)  # fmt: skip
def test_referer_kept_only_when_a_uri_reference(value: bytes, kept: bool) -> None:
    assert framing.referer_ok(value) is kept
