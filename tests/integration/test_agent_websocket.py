"""WebSocket through the agent, against Envoy 1.40 in the same run: a listener that allows the upgrade
(agent `upgrade_types: [websocket]`, Envoy `upgrade_configs: [{upgrade_type: websocket}]`) passes it through
to a real WebSocket echo server (PyPI websockets) and messages flow both ways; a listener that does not
answers 403 in both. An h2c Upgrade header is ignored and the request served as HTTP/1.1, as Envoy does.
With plugins (rust/header_rules adding a request and a response header, rust/deny_path answering /denied),
both run the plugins' header callbacks on the upgrade: the app sees the request header, the 101 carries the
response header, and a plugin's local reply refuses the upgrade. An upgrade whose route is a direct response, or
that no route matches, gets the router's own reply (the direct response; 404), with and without plugins.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import modules as corpus_modules
from tests.corpus.bootstrap import HTTP_WASM, plugin_config
from tests.corpus.planes.agent import plugin_entry
from tests.corpus.spec import PluginSpec
from tests.differential import bed as diff_bed
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import planes, procs, upstream, wspeer

pytestmark = pytest.mark.integration


@dataclass
class Bed:
    envoy: dict[str, int]  # allowed, refused, echo, plugins
    agent: dict[str, int]  # the same; "plugins" is a second agent's


#: (corpus module, configuration) of the plugins both planes run on the upgrade
PLUGINS = [
    ("rust/header_rules", {"request": {"add": {"x-ws-req": "added"}}, "response": {"add": {"x-ws-resp": "added"}}}),
    ("rust/deny_path", {"prefixes": ["/denied"], "status": 401, "body": "no tunnel for you\n"}),
]


def _plugins() -> list[tuple[PluginSpec, Path]]:
    return [
        (
            PluginSpec(
                module=module,
                name=module.split("/")[1],
                root_id="",
                vm_id="",
                configuration=json.dumps(config),
                vm_configuration="",
                env=(),
                fail_open=False,
            ),
            corpus_modules.module(module).path,
        )
        for module, config in PLUGINS
    ]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp: Path = tmp_path_factory.mktemp("ws")
    logs = tmp / "logs"
    started: list[Any] = []
    try:
        ws = wspeer.start_server(log_dir=logs)
        started.append(ws)
        echo = upstream.start_service("echo", log_dir=logs)
        started.append(echo)
        e_ports = {n: procs.free_port() for n in ("allowed", "refused", "echo", "plugins")}
        admin = procs.free_port()
        wasm = [
            {"name": f"wasm.{spec.name}", "typed_config": {"@type": HTTP_WASM, "config": plugin_config(spec, path)}}
            for spec, path in _plugins()
        ]
        config = tb_envoy.bootstrap(
            admin,
            [
                tb_envoy.http_listener("allowed", e_ports["allowed"], cluster="ws", upgrade_types=["websocket"]),
                tb_envoy.http_listener("refused", e_ports["refused"], cluster="ws"),
                tb_envoy.http_listener("echo", e_ports["echo"], cluster="echo"),
                tb_envoy.http_listener(
                    "plugins", e_ports["plugins"], cluster="ws", upgrade_types=["websocket"], http_filters=wasm
                ),
            ],
            [tb_envoy.static_cluster("ws", ws.port), tb_envoy.static_cluster("echo", echo.port)],
        )
        path = tb_envoy.write_config(config, tmp / "envoy")
        tb_envoy.validate_config(path)
        started.append(tb_envoy.start_envoy(path, admin_port=admin, log_dir=logs))
        a_ports = {n: procs.free_port() for n in ("allowed", "refused", "echo")}
        raw = tb_agent.base_config(
            port=a_ports["allowed"], admin_port=procs.free_port(), clusters={"ws": ws.port, "echo": echo.port},
            listener_cluster="ws", upgrade_types=("websocket",),
        )  # fmt: skip
        for name, cluster in (("refused", "ws"), ("echo", "echo")):
            raw["listeners"].append({"name": name, "address": "127.0.0.1", "port": a_ports[name], "cluster": cluster})
        started.append(tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=logs, log_level="info"))
        a_ports["plugins"] = procs.free_port()
        raw_p = tb_agent.base_config(
            port=a_ports["plugins"], admin_port=procs.free_port(), clusters={"ws": ws.port}, listener_cluster="ws",
            upgrade_types=("websocket",), plugins=[plugin_entry(spec, path) for spec, path in _plugins()],
        )  # fmt: skip
        started.append(tb_agent.start_agent(raw_p, work_dir=tmp / "agent-plugins", log_dir=logs, name="agent-plugins"))
        yield Bed(e_ports, a_ports)
    finally:
        for item in reversed(started):
            item.stop()


MESSAGES: list[str | bytes] = ["hello", b"\x00\x01binary", "x" * 70_000]


def test_websocket_passes_through_when_allowed(bed: Bed) -> None:
    via_envoy = wspeer.exchange(bed.envoy["allowed"], MESSAGES)
    via_agent = wspeer.exchange(bed.agent["allowed"], MESSAGES)
    assert via_envoy.status == 101
    assert via_envoy.replies == ["echo: hello", b"echo: \x00\x01binary", "echo: " + "x" * 70_000]
    assert (via_agent.status, via_agent.replies) == (via_envoy.status, via_envoy.replies)


def test_websocket_handshake_headers_reach_the_app(bed: Bed) -> None:
    seen = {}
    for plane, port in (("envoy", bed.envoy["allowed"]), ("agent", bed.agent["allowed"])):
        out = wspeer.exchange(port, [], path="/headers")
        assert out.status == 101
        headers = json.loads(out.replies[0])
        seen[plane] = {k: headers.get(k) for k in ("upgrade", "connection", "sec-websocket-version")}
        assert headers.get("x-request-id")
    assert seen["agent"] == seen["envoy"]


def test_websocket_refused_when_not_allowed(bed: Bed) -> None:
    assert wspeer.exchange(bed.envoy["refused"], ["hello"]).status == 403
    assert wspeer.exchange(bed.agent["refused"], ["hello"]).status == 403


def _raw(port: int, request: bytes) -> bytes:
    """Send `request`, read until the proxy closes the connection (10 s at most: a proxy that keeps it fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_h2c_upgrade_is_served_as_http1(bed: Bed) -> None:
    request = (
        b"GET /h2c HTTP/1.1\r\nhost: x\r\nconnection: upgrade, http2-settings, close\r\nupgrade: h2c\r\n"
        b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
    )
    for port in (bed.envoy["echo"], bed.agent["echo"]):
        reply = _raw(port, request)
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n"), reply[:200]
        seen = json.loads(reply.partition(b"\r\n\r\n")[2])
        names = {k.lower() for k, _ in seen["headers"]}
        assert "upgrade" not in names and "http2-settings" not in names, seen["headers"]


def test_plugins_see_the_upgrade_and_its_101(bed: Bed) -> None:
    """Envoy runs the HTTP filters' header callbacks on an upgrade: the request header a plugin adds reaches the
    app, the response header it adds is on the 101; messages still flow."""
    seen = {}
    for plane, port in (("envoy", bed.envoy["plugins"]), ("agent", bed.agent["plugins"])):
        out = wspeer.exchange(port, ["through"], path="/headers")
        assert out.status == 101, out
        app_saw = json.loads(out.replies[0])
        seen[plane] = (
            app_saw.get("x-ws-req"),
            out.headers.get("x-ws-resp"),
            out.headers.get("upgrade", "").lower(),
            out.replies[1:],
        )
    assert seen["agent"] == seen["envoy"] == ("added", "added", "websocket", ["echo: through"]), seen


def test_a_plugins_local_reply_refuses_the_upgrade(bed: Bed) -> None:
    seen = {}
    for plane, port in (("envoy", bed.envoy["plugins"]), ("agent", bed.agent["plugins"])):
        out = wspeer.exchange(port, ["never"], path="/denied")
        seen[plane] = (out.status, out.headers.get("x-denied-by"), out.headers.get("x-ws-resp"), out.body)
    assert seen["agent"] == seen["envoy"], seen
    assert seen["agent"][:2] == (401, "deny_path"), seen


#: /ws -> the ws cluster, /echo -> the HTTP echo app, /direct... -> direct responses, nothing else
ROUTES = [
    {"match": {"prefix": "/ws"}, "route": {"cluster": "ws"}},
    {"match": {"prefix": "/echo"}, "route": {"cluster": "echo"}},
    {"match": {"prefix": "/direct-empty"}, "direct_response": {"status": 503}},
    {"match": {"prefix": "/direct-200"}, "direct_response": {"status": 200, "body": {"inline_string": "fine\n"}}},
    {"match": {"prefix": "/direct"}, "direct_response": {"status": 418, "body": {"inline_string": "teapot\n"}}},
]


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """Envoy and the agent (`--envoy-config`) on one bootstrap with routes: listener "bare" without plugins,
    "plugins" with rust/header_rules ("admin": each one's admin port)."""
    tmp: Path = tmp_path_factory.mktemp("ws-routed")
    logs = tmp / "logs"
    started: list[Any] = []
    try:
        ws = wspeer.start_server(log_dir=logs, name="websocket-routed")
        started.append(ws)
        echo = upstream.start_service("echo", log_dir=logs, name="echo-routed")
        started.append(echo)
        spec, module = _plugins()[0]
        wasm = [
            {"name": "wasm.header_rules", "typed_config": {"@type": HTTP_WASM, "config": plugin_config(spec, module)}}
        ]
        by_plane: dict[str, dict[str, int]] = {}
        for plane in planes.PLANES:
            ports = {"bare": procs.free_port(), "plugins": procs.free_port()}
            admin = ports["admin"] = procs.free_port()
            listeners = [
                tb_envoy.http_listener(
                    name, ports[name], cluster="ws", upgrade_types=["websocket"], routes=ROUTES, http_filters=filters
                )
                for name, filters in (("bare", []), ("plugins", wasm))
            ]
            clusters = [tb_envoy.static_cluster("ws", ws.port), tb_envoy.static_cluster("echo", echo.port)]
            config = tb_envoy.bootstrap(admin, listeners, clusters)
            path = tb_envoy.write_config(config, tmp / plane)
            started.append(
                planes.start(plane, path, port=ports["bare"], admin_port=admin, log_dir=logs, name=f"{plane}-routed")
            )
            by_plane[plane] = ports
        yield Bed(by_plane["envoy"], by_plane["agent"])
    finally:
        for item in reversed(started):
            item.stop()


@pytest.mark.parametrize("listener", ["bare", "plugins"])
@pytest.mark.parametrize(
    ("path", "status", "body"),
    [("/direct", 418, b"teapot\n"), ("/nowhere", 404, b""), ("/ws", 101, b"")],
    ids=["direct_response", "no_route", "routed"],
)
def test_an_upgrade_gets_the_routers_reply(routed: Bed, listener: str, path: str, status: int, body: bytes) -> None:
    seen = {}
    for plane, ports in (("envoy", routed.envoy), ("agent", routed.agent)):
        out = wspeer.exchange(ports[listener], ["hi"] if status == 101 else [], path=path)
        seen[plane] = (out.status, out.body, out.replies, out.headers.get("x-ws-resp"))
    assert seen["agent"] == seen["envoy"], seen
    assert seen["agent"][:2] == (status, body), seen


def _upgrade(path: str, *extra: bytes, body: bytes = b"") -> bytes:
    head = b"GET %b HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n" % path.encode()
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


_WS_KEY = (b"sec-websocket-version: 13", b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==")
#: name, an upgrade request's bytes: answered by the router itself, or by an app that does not switch
UPGRADE_REPLIES: list[tuple[str, bytes]] = [
    ("direct response 418", _upgrade("/direct", *_WS_KEY)),
    ("direct response 200", _upgrade("/direct-200", *_WS_KEY)),
    ("direct response without a body", _upgrade("/direct-empty", *_WS_KEY)),
    ("no route", _upgrade("/nowhere", *_WS_KEY)),
    ("HEAD to a direct response", _upgrade("/direct", *_WS_KEY).replace(b"GET", b"HEAD", 1)),
    ("app answers 200", _upgrade("/echo", *_WS_KEY)),
    ("app answers 200, chunked body", _upgrade("/echo", b"transfer-encoding: chunked", body=b"3\r\nabc\r\n0\r\n\r\n")),
    ("app answers 200, content-length body", _upgrade("/echo", b"content-length: 3", body=b"abc")),
]  # fmt: skip


def _body(body: bytes) -> object:
    """A response body for comparison: the body itself, or when the echo app answered, what it recorded of the
    request (its headers, x-request-id's value aside, and its body)."""
    if not body.startswith(b"{"):
        return body
    record = upstream.decode_record(body)
    return sorted((k, "*" if k == "x-request-id" else v) for k, v in record["headers"]), record["body"]


#: the app waits for the body, which Envoy holds until the app switches protocols: neither proxy answers
UNANSWERED = frozenset({"app answers 200, content-length body"})


@pytest.mark.parametrize("listener", ["bare", "plugins"])
@pytest.mark.parametrize(("name", "request_bytes"), UPGRADE_REPLIES, ids=[n for n, _ in UPGRADE_REPLIES])
def test_an_upgrades_reply_is_envoys_bytes(routed: Bed, listener: str, name: str, request_bytes: bytes) -> None:
    """An upgrade request the router answers itself (a direct response, no route) or an app answers without
    switching: the client gets Envoy's bytes (status line and reason phrase, headers in order, framing, body),
    and the app what Envoy forwards (Transfer-Encoding and body included), with and without plugins. An app
    that does not switch gets Envoy's own reply with its status and headers (content-length 0, connection:
    close), not its body; one that waits for the request's body gets nothing (Envoy holds it until a 101)."""
    head = request_bytes.startswith(b"HEAD")
    seen = {}
    for plane, ports in (("envoy", routed.envoy), ("agent", routed.agent)):
        got = diff_bed.converse(ports[listener], request_bytes, head=head, deadline=3.0)
        seen[plane] = (
            [diff_bed.local_reply(r)[:2] for r in got.responses],
            [_body(r.body) for r in got.responses],
            got.unreadable,
        )
    assert seen["agent"] == seen["envoy"], seen
    assert bool(seen["envoy"][0]) is (name not in UNANSWERED), seen


@dataclass
class Scripted:
    recorder: diff_bed.Recorder
    ports: dict[str, int]  # "<plane>-<listener>" -> listener port


#: the scripted bed's routes: /slow to a cluster that never answers (a route timeout of 1 s), the rest to the
#: recorder (`{up}`: the listener's own recorder cluster)
def _scripted_routes(up: str) -> list[dict[str, Any]]:
    return [
        {"match": {"prefix": "/slow"}, "route": {"cluster": "silent", "timeout": "1s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": up}},
    ]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scripted]:
    """Envoy and the agent (`--envoy-config`) on one bootstrap, listeners "bare" and "plugins" (rust/header_rules)
    allowing websocket and "foo" upgrades, each to a port of its own on a scripted upstream that records what
    it reads (tests/differential/bed.py's Recorder); /slow goes to a port that accepts and never answers."""
    tmp: Path = tmp_path_factory.mktemp("ws-scripted")
    keys = [f"{plane}-{name}" for plane in ("envoy", "agent") for name in ("bare", "plugins")]
    recorder = diff_bed.Recorder(keys)
    silent = socket.create_server(("127.0.0.1", 0))  # connections wait in its backlog, never read
    started: list[Any] = []
    try:
        spec, module = _plugins()[0]
        wasm = [
            {"name": "wasm.header_rules", "typed_config": {"@type": HTTP_WASM, "config": plugin_config(spec, module)}}
        ]
        ports: dict[str, int] = {}
        for plane in planes.PLANES:
            mine = {name: procs.free_port() for name in ("bare", "plugins")}
            admin = procs.free_port()
            listeners = [
                tb_envoy.http_listener(
                    name,
                    mine[name],
                    cluster=f"up-{name}",
                    upgrade_types=["websocket", "foo"],
                    routes=_scripted_routes(f"up-{name}"),
                    http_filters=filters,
                )
                for name, filters in (("bare", []), ("plugins", wasm))
            ]
            clusters = [tb_envoy.static_cluster("silent", int(silent.getsockname()[1]))]
            clusters += [tb_envoy.static_cluster(f"up-{n}", recorder.ports[f"{plane}-{n}"]) for n in mine]
            path = tb_envoy.write_config(tb_envoy.bootstrap(admin, listeners, clusters), tmp / plane)
            started.append(
                planes.start(plane, path, port=mine["bare"], admin_port=admin, log_dir=tmp, name=f"{plane}-scripted")
            )
            ports.update({f"{plane}-{n}": port for n, port in mine.items()})
        yield Scripted(recorder, ports)
    finally:
        for item in reversed(started):
            item.stop()
        recorder.close()
        silent.close()


_WS = (b"connection: upgrade", b"upgrade: websocket", *_WS_KEY)
_FOO = (b"connection: upgrade", b"upgrade: foo")
_CHUNKED = (b"transfer-encoding: chunked",)
_101 = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"


def _head(method: bytes, path: bytes, *lines: bytes, body: bytes = b"") -> bytes:
    return b"%b %b HTTP/1.1\r\nhost: x\r\n%b\r\n%b" % (method, path, b"".join(h + b"\r\n" for h in lines), body)


#: name, the client's bytes, the app's answer: an upgrade the app does not switch, or switches after a body
SCRIPTED: list[tuple[str, bytes, bytes]] = [
    ("200 with headers and a body", _head(b"GET", b"/ws", *_WS),
     b"HTTP/1.1 200 Fine\r\nx-app: 1\r\nset-cookie: a=b\r\ncontent-type: text/html\r\nconnection: keep-alive\r\n"
     b"upgrade: websocket\r\nx-app: 2\r\ncontent-length: 5\r\n\r\nhello"),
    ("200 with its date, server, repeated and hop-by-hop headers", _head(b"GET", b"/ws", *_WS),
     b"HTTP/1.1 200 OK\r\nserver: app\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\ncache-control: a\r\n"
     b"cache-control: b\r\nkeep-alive: timeout=5\r\nproxy-connection: x\r\nx-envoy-upstream-service-time: 5\r\n"
     b"te: trailers\r\ntrailer: x\r\ncontent-length: 0\r\n\r\n"),
    ("302", _head(b"GET", b"/ws", *_WS), b"HTTP/1.1 302 Found\r\nlocation: /else\r\ncontent-length: 3\r\n\r\nbye"),
    ("204", _head(b"GET", b"/ws", *_WS), b"HTTP/1.1 204 No Content\r\nx-app: 1\r\n\r\n"),
    ("304", _head(b"GET", b"/ws", *_WS), b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n"),
    ("100 then 200", _head(b"GET", b"/ws", *_WS),
     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ("HEAD, 200", _head(b"HEAD", b"/ws", *_WS), b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
    ("HEAD, 404", _head(b"HEAD", b"/ws", *_WS), b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\n"),
    ("404 chunked, keep-alive", _head(b"GET", b"/ws", *_WS),
     b"HTTP/1.1 404 Not Found\r\nkeep-alive: timeout=5\r\ntransfer-encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n"),
    ("500 up to the close", _head(b"GET", b"/ws", *_WS), b"HTTP/1.1 500 Oops\r\nconnection: close\r\n\r\nbroken"),
    ("403 saying connection: upgrade, then more bytes", _head(b"GET", b"/ws", *_WS),
     b"HTTP/1.1 403 Forbidden\r\nx-app: 1\r\nconnection: upgrade\r\nupgrade: websocket\r\ncontent-length: 4\r\n\r\n"
     b"nopeupstream-more"),
    ("101 without upgrade", _head(b"GET", b"/ws", *_WS), b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
    ("chunked body, 101", _head(b"GET", b"/ws", *_WS, *_CHUNKED, body=b"3\r\nabc\r\n0\r\n\r\n"), _101),
    ("chunked body, 200", _head(b"GET", b"/ws", *_WS, *_CHUNKED, body=b"3\r\nabc\r\n0\r\n\r\n"),
     b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ("frames after the head, 101", _head(b"GET", b"/ws", *_WS, body=b"\x81\x05hello"), _101),
    ("expect: 100-continue, 101", _head(b"GET", b"/ws", *_WS, b"expect: 100-continue"), _101),
    ("no answer within the route's timeout", _head(b"GET", b"/slow", *_WS), b""),
    ("foo: never answered (no route timeout on other upgrades)", _head(b"GET", b"/slow", *_FOO), b""),
    ("403 saying connection: upgrade, chunked", _head(b"GET", b"/ws", *_WS),
     b"HTTP/1.1 403 Forbidden\r\nconnection: upgrade\r\nupgrade: websocket\r\ntransfer-encoding: chunked\r\n\r\n"
     b"4\r\nnope\r\n0\r\n\r\n"),
    ("foo: 200 with a body", _head(b"GET", b"/foo", *_FOO), b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
    ("foo: 101, bytes after the head", _head(b"GET", b"/foo", *_FOO, body=b"xyz"),
     b"HTTP/1.1 101 Switching Protocols\r\nupgrade: foo\r\nconnection: upgrade\r\n\r\n"),
]  # fmt: skip


def _request(msg: Any) -> tuple[Any, ...]:
    """A request as the upstream read it: x-request-id's value aside."""
    return msg.start, tuple((n, b"*" if n == b"x-request-id" else v) for n, v in msg.headers), msg.body


@pytest.mark.parametrize("listener", ["bare", "plugins"])
@pytest.mark.parametrize(("name", "request_bytes", "answer"), SCRIPTED, ids=[c[0] for c in SCRIPTED])
def test_an_upgrade_the_app_does_not_switch_is_envoys(
    scripted: Scripted, listener: str, name: str, request_bytes: bytes, answer: bytes
) -> None:
    """Envoy 1.40 and the agent side by side on an app that answers an upgrade without switching (or switches
    after the client sent more): the client gets the same responses (status line, headers in order, framing,
    body; an interim 100 Continue of the proxy's own), the app the same requests (no Transfer-Encoding, no
    Expect; the body or frames only after its 101), with and without plugins."""
    # (an answer without a length ends when the app closes)
    case = diff_bed.Case(name, "upgrade", request_bytes, upstream=(answer,), upstream_close="close" in name)
    head = request_bytes.startswith(b"HEAD")

    def one(plane: str) -> tuple[Any, ...]:
        key = f"{plane}-{listener}"
        scripted.recorder.begin(key, case)
        got = diff_bed.converse(scripted.ports[key], request_bytes, head=head, deadline=3.0)
        up = scripted.recorder.end(key)
        first = got.raw.partition(b"\r\n\r\n")[0]  # (a 1xx head: the responses leave interim ones out)
        return (
            re.sub(rb"\r\ndate: [^\r]*", b"\r\ndate: *", first),
            [(*diff_bed.local_reply(r), r.chunked) for r in got.responses],
            got.unreadable,
            [_request(m) for m in up.messages],
            up.unreadable,
        )

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        seen = dict(zip(("envoy", "agent"), pool.map(one, ("envoy", "agent")), strict=True))
    assert seen["agent"] == seen["envoy"], seen
    assert seen["envoy"][0].startswith(b"HTTP/1.1 ") is ("never answered" not in name), seen  # answered


#: the count of open client connections on listener "bare": Envoy's (stat_prefix bare) and the agent's
_ACTIVE = {"envoy": "http.bare.downstream_cx_active: ", "agent": "meshplug.downstream_cx_active: "}


def test_a_closed_websocket_leaves_no_connection_open(routed: Bed) -> None:
    """After the client's and the app's close frames each end sends its FIN: the proxy closes both connections,
    as Envoy does, and counts none active. (A tunnel half-closed both ways once stayed open: two descriptors
    per WebSocket leaked, and a SIGTERM drain waited out its whole timeout for it.)"""
    for plane, ports in (("envoy", routed.envoy), ("agent", routed.agent)):
        out = wspeer.exchange(ports["bare"], ["hi"], path="/ws")
        assert (out.status, out.replies) == (101, ["echo: hi"]), plane
        procs.wait_until(
            lambda: _ACTIVE[plane] + "0\n" in tb_envoy.admin_get(ports["admin"], "/stats")[1],  # noqa: B023
            timeout=10,
            what=f"{plane}: no client connection left open",
        )


@pytest.mark.parametrize("listener", ["bare", "plugins"])
def test_a_refused_handshake_closes_both_connections(routed: Bed, listener: str) -> None:
    """The app answers the handshake 200: the client gets the proxy's answer and then its connection closes (Envoy's
    delayed close), and the proxy counts no connection of that listener active afterwards, as Envoy."""
    request = _upgrade("/echo", *_WS_KEY)
    for plane, ports in (("envoy", routed.envoy), ("agent", routed.agent)):
        reply = _raw(ports[listener], request)  # (a socket timeout fails: the proxy kept it open)
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"content-length: 0\r\n\r\n"), reply
        if listener == "bare":
            procs.wait_until(
                lambda: _ACTIVE[plane] + "0\n" in tb_envoy.admin_get(ports["admin"], "/stats")[1],  # noqa: B023
                timeout=10,
                what=f"{plane}: no client connection left open",
            )
