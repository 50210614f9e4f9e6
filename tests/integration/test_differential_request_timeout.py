"""The HTTP connection manager's request-level timeouts read from an Envoy bootstrap -- request_timeout,
request_headers_timeout, stream_idle_timeout -- on Envoy 1.40 and on the agent (`meshplug run --envoy-config`),
the same bootstrap and the same bytes, compared in the same run: what the client reads (status line, headers,
body of a reply the proxy made; whether the connection closed), what a plugin reads of response.flags and
response.code_details per callback (the corpus module c/propdump), and the counter each timeout moves (Envoy's
http.<stat_prefix>.downstream_rq_timeout / _header_timeout / _idle_timeout, the agent's meshplug.<same name>).

Probed on Envoy 1.40 (and held here): request_timeout runs from a request's first byte until the client's request
ended (or its response started): 408 "request timeout", details request_overall_timeout, no response flag, on
HTTP/1.1 with `connection: close`, on HTTP/2 for that stream alone; a head that never ends reaches only the
plugins' log; a plugin buffering the body changes nothing; a whole request waiting for a slow upstream is not
ended by it. request_headers_timeout ends an HTTP/1.1 head only. The stream idle timeout is moved by what the
codec hands the stream (a whole head, body bytes), not by a head's lines trickling in; a stream whose request
ended gets 504 "stream timeout" (SI) instead of 408.

Each setting is one bootstrap with two listeners (the plain chain, and one whose first plugin buffers the request
body: the corpus module rust/body_rewrite), 0.5 s for the timeout it sets. A trickling client sends its next piece
when a read of 0.1 s got nothing: it waits on the proxy's answer, never sleeps.
"""

from __future__ import annotations

import functools
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import modules as corpus_modules
from tests.differential import bed as diff_bed
from tests.differential import messages, propdump, settingcases
from tests.differential.propdump import Proxy
from tests.testbed import envoy as tb_envoy
from tests.testbed import h2raw, planes, procs, upstream

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5
#: a trickling client's pace: its next piece once a read this long got nothing
GAP_S = 0.1
#: how long a client waits for an answer that may never come
DEADLINE_S = 2.5
#: per setting: the HCM fields it sets, the counter its timeout moves
SETTINGS: dict[str, tuple[dict[str, Any], str]] = {
    "request": ({"request_timeout": f"{TIMEOUT_S}s"}, "downstream_rq_timeout"),
    "headers": ({"request_headers_timeout": f"{TIMEOUT_S}s"}, "downstream_rq_header_timeout"),
    "idle": ({"stream_idle_timeout": f"{TIMEOUT_S}s"}, "downstream_rq_idle_timeout"),
}
LISTENERS = ("plain", "buffer")
_WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def _buffering_filter() -> dict[str, Any]:
    """rust/body_rewrite appending to request bodies: it holds the body until its end (StopIterationAndBuffer)."""
    config = {
        "name": "bodyrw",
        "root_id": "",
        "vm_config": {
            "vm_id": "bodyrw",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(corpus_modules.module("rust/body_rewrite").path)}},
        },
        "configuration": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps({"request_append": "+req"}),
        },
    }
    return {"name": "bodyrw", "typed_config": {"@type": _WASM, "config": config}}


#: a route without timeout (Istio's) to a slow path, then the rest with Envoy's default 15 s
_ROUTES = [
    {"match": {"prefix": "/__slow/1300"}, "route": {"cluster": "echo", "timeout": "0s"}},
    {"match": {"prefix": "/"}, "route": {"cluster": "echo", "timeout": "15s"}},
]


def _bootstrap(setting: str, ports: dict[str, int], admin: int, echo: int) -> dict[str, Any]:
    hcm_fields, _ = SETTINGS[setting]
    listeners = []
    for name in LISTENERS:
        chain = [_buffering_filter()] if name == "buffer" else []
        lst = tb_envoy.http_listener(
            name, ports[name], cluster="echo", http_filters=[*chain, propdump.wasm_filter()], routes=_ROUTES
        )
        lst["filter_chains"][0]["filters"][0]["typed_config"].update(hcm_fields)
        listeners.append(lst)
    return tb_envoy.bootstrap(admin, listeners, [tb_envoy.static_cluster("echo", echo)])


@functools.cache
def _counter_reader(admin: int, name: str) -> Callable[[], int]:
    """A reader of one counter of a plane (both serve Envoy's /stats?format=json): Envoy's per-HCM counters
    (http.<prefix>.<name>, summed over the listeners) or the agent's process-wide meshplug.<name>."""

    def read() -> int:
        status, body = tb_envoy.admin_get(admin, "/stats?format=json")
        assert status == 200, body
        total = 0
        for entry in json.loads(body).get("stats", []):
            stat = str(entry.get("name", ""))
            if stat == f"meshplug.{name}" or (stat.startswith("http.") and stat.endswith(f".{name}")):
                total += int(entry.get("value") or 0)
        return total

    return read


@pytest.fixture(scope="module")
def proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Proxy, Callable[[], int]]]]:
    """Per "<plane>/<setting>/<listener>": the proxy with propdump, a reader of the setting's counter."""
    tmp: Path = tmp_path_factory.mktemp("reqtimeout")
    logs = tmp / "logs"
    started: list[Any] = []
    try:
        echo = upstream.start_service("echo", log_dir=logs)
        started.append(echo)
        out: dict[str, tuple[Proxy, Callable[[], int]]] = {}
        for setting, (_, counter) in SETTINGS.items():
            for plane in planes.PLANES:
                ports = {name: procs.free_port() for name in LISTENERS}
                admin = procs.free_port()
                path = tb_envoy.write_config(_bootstrap(setting, ports, admin, echo.port), tmp / f"{plane}-{setting}")
                name = f"{plane}-{setting}"
                proxy = planes.start(plane, path, port=ports["plain"], admin_port=admin, log_dir=logs, name=name)
                started.append(proxy)
                for listener, port in ports.items():
                    out[f"{plane}/{setting}/{listener}"] = (Proxy(port, proxy.logs), _counter_reader(admin, counter))
        yield out
    finally:
        for item in reversed(started):
            item.stop()


def _reply(msg: messages.Message) -> tuple[Any, ...]:
    """A response for comparison: a reply of the proxy's own whole (status line, headers, body), an upstream's
    200 by its status line (its body carries the request id)."""
    return (msg.start,) if msg.status == 200 else diff_bed.local_reply(msg)


def _h1(first: bytes, pieces: tuple[bytes, ...] = ()) -> Callable[[int], object]:
    """Send `first`, then each of `pieces` once a read of GAP_S got nothing; read the responses until the proxy
    closes, an upstream's 200 is whole, or DEADLINE_S passed: (responses, closed)."""

    def run(port: int) -> object:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(first)
            raw, closed, left = b"", False, list(pieces)
            end_at = time.monotonic() + DEADLINE_S
            while not closed and time.monotonic() < end_at:
                sock.settimeout(GAP_S if left else max(0.01, end_at - time.monotonic()))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    if left:
                        sock.sendall(left.pop(0))
                    continue
                except OSError:
                    chunk = b""
                closed = not chunk
                raw += chunk
                left = []  # answered: the client stops sending
                responses = _parsed(raw, closed)
                if responses and responses[-1].status == 200:
                    break
        return tuple(_reply(m) for m in _parsed(raw, closed)), closed

    return run


def _parsed(raw: bytes, closed: bool) -> list[messages.Message]:
    out: list[messages.Message] = []
    while raw:
        try:
            msg, end = messages.read_response(raw, closed=closed)
        except (messages.Incomplete, messages.Unreadable):
            break
        out.append(msg)
        raw = raw[end:]
    return out


def _h2(
    headers: tuple[h2raw.Header, ...], pieces: tuple[bytes, ...] = (), *, end: bool = False
) -> Callable[[int], object]:
    """An HTTP/2 request (prior knowledge): HEADERS (ending the stream when `end`), then each of `pieces` as DATA
    once a read of GAP_S got nothing; its outcome ("status 408", "reset ...") and the body of a reply the proxy
    made."""

    def answered(o: h2raw.H2Outcome) -> bool:
        return 1 in o.ended or 1 in o.resets or o.closed or o.goaway is not None

    def run(port: int) -> object:
        client = h2raw.RawClient(port)
        try:
            client.h2.send_headers(1, list(headers), end_stream=end)
            client.flush()
            for piece in pieces:
                if answered(client.read(until=answered, timeout=GAP_S)):
                    break
                client.h2.send_data(1, piece, end_stream=False)
                client.flush()
            out = client.read(until=answered, timeout=DEADLINE_S)
        finally:
            client.close()
        return out.kind(1), b"" if out.statuses.get(1) == 200 else out.bodies.get(1, b"")

    return run


_HEAD = b"GET /ok HTTP/1.1\r\n"
_LINES = tuple(b"x-line-%d: v\r\n" % i for i in range(12))
_POST = b"POST /ok HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n"
_BYTES = tuple(b"a" for _ in range(10))
_SLOW = b"/__slow/1200"
_H2_POST = ((b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/ok"), (b":authority", b"x"))
_H2_SLOW = ((b":method", b"GET"), (b":scheme", b"http"), (b":path", _SLOW), (b":authority", b"x"))

# name, setting, listener, the client
CASES: list[tuple[str, str, str, Callable[[int], object]]] = [
    ("h1 head never ends", "request", "plain", _h1(_HEAD + b"host: x\r\n")),
    ("h1 head trickles", "request", "plain", _h1(_HEAD, _LINES)),
    ("h1 body never ends", "request", "plain", _h1(_POST + b"ab")),
    ("h1 body trickles", "request", "plain", _h1(_POST, _BYTES)),
    ("h1 body trickles, plugin buffers", "request", "buffer", _h1(_POST, _BYTES)),
    ("h1 chunked body never ends, plugin buffers", "request", "buffer",
     _h1(b"POST /ok HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n")),
    ("h1 whole request, slow upstream", "request", "plain", _h1(b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n" % _SLOW)),
    ("h1 whole body, slow upstream, plugin buffers", "request", "buffer",
     _h1(b"POST %b HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nab" % _SLOW)),
    ("h2 request never ends", "request", "plain", _h2(_H2_POST)),
    ("h2 body trickles", "request", "plain", _h2(_H2_POST, _BYTES)),
    ("h2 body trickles, plugin buffers", "request", "buffer", _h2(_H2_POST, _BYTES)),
    ("h2 whole request, slow upstream", "request", "plain", _h2(_H2_SLOW, end=True)),
    ("h1 head trickles", "headers", "plain", _h1(_HEAD, _LINES)),
    ("h1 body never ends", "headers", "plain", _h1(_POST + b"ab")),
    ("h1 head trickles", "idle", "plain", _h1(_HEAD, _LINES)),
    ("h1 body trickles", "idle", "buffer", _h1(_POST, _BYTES)),
    ("h2 whole request, slow upstream", "idle", "plain", _h2(_H2_SLOW, end=True)),
    ("h1 whole request, slow upstream", "idle", "plain", _h1(b"GET %b HTTP/1.1\r\nhost: x\r\n\r\n" % _SLOW)),
    ("h1 whole request, slow upstream, route without timeout", "idle", "buffer",
     _h1(b"GET /__slow/1300 HTTP/1.1\r\nhost: x\r\n\r\n")),
    ("h2 whole request, slow upstream, route without timeout", "idle", "plain",
     _h2(((b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/__slow/1300"), (b":authority", b"x")), end=True)),
]  # fmt: skip

#: cases where the agent still differs (strict xfails: each fails the run once it passes): why
DIFFERS: dict[str, str] = {}


def _param(case: settingcases.Case) -> Any:
    return settingcases.param(case, f"{case[1]}: {case[0]}", DIFFERS)


@pytest.mark.parametrize(("name", "setting", "listener", "run"), [_param(c) for c in CASES])
def test_request_timeouts_as_envoy(
    proxies: dict[str, tuple[Proxy, Callable[[], int]]],
    name: str,
    setting: str,
    listener: str,
    run: Callable[[int], object],
) -> None:
    got = settingcases.seen_by_planes(proxies, setting, listener, run)
    assert "lg" in got["envoy"][1], got  # Envoy's plugin logged the stream: there is something to compare
    assert got["agent"] == got["envoy"]
