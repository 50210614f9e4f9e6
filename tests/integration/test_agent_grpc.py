"""gRPC and HTTP/2 through the agent, case by case against Envoy 1.40 in the same run.

One real grpcio server (tests/testbed/grpcpeer.py, h2c) behind Envoy and behind two agents, as clusters that
speak HTTP/2 (Envoy: typed_extension_protocol_options http2; the agent: `http2: true`); a grpcio client calls
unary, server-streaming, client-streaming and bidirectional methods, with errors and deadlines, without and
with a plugin (rust/header_rules adding a request and a response header). Every case must give the client
the same status, details, x-* metadata both ways and messages through both proxies. HTTP/1.1 clients reach
the gRPC cluster too (the bridge), and Debian's nghttp / h2load check plain HTTP/2 against an HTTP/1.1 app.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import modules as corpus_modules
from tests.corpus.bootstrap import HTTP_WASM, plugin_config
from tests.corpus.spec import PluginSpec
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import grpcpeer, procs, upstream
from tests.testbed.nginx import start_nginx

pytestmark = pytest.mark.integration

HEADER_RULES = {"request": {"add": {"x-added": "yes"}}, "response": {"add": {"x-filtered-by": "header_rules"}}}


@dataclass
class Bed:
    grpc: procs.Peer
    echo: upstream.Service
    envoy: tb_envoy.Envoy
    envoy_ports: dict[str, int]  # listener -> port: plain, plugin, echo, fast
    agent: tb_agent.Agent  # no plugins: listeners main (grpc), echo, fast (nginx)
    agent_echo_port: int
    agent_fast_port: int
    agent_plugin: tb_agent.Agent  # header_rules


def _plugin_spec() -> tuple[PluginSpec, Path]:
    mod = corpus_modules.module("rust/header_rules")
    spec = PluginSpec(
        module="rust/header_rules", name="header_rules", root_id="", vm_id="",
        configuration=json.dumps(HEADER_RULES), vm_configuration="", env=(), fail_open=False,
    )  # fmt: skip
    return spec, mod.path


def _agent_plugin_entry(spec: PluginSpec, path: Path) -> dict[str, Any]:
    from tests.corpus.planes.agent import plugin_entry

    return plugin_entry(spec, path)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp = tmp_path_factory.mktemp("grpc")
    logs = tmp / "logs"
    started: list[Any] = []
    try:
        grpc_server = grpcpeer.start_server(log_dir=logs)
        started.append(grpc_server)
        echo = upstream.start_service("echo", log_dir=logs)
        started.append(echo)
        nginx = start_nginx(log_dir=logs)
        started.append(nginx)
        spec, module_path = _plugin_spec()
        wasm = {
            "name": "wasm.header_rules",
            "typed_config": {"@type": HTTP_WASM, "config": plugin_config(spec, module_path)},
        }
        ports = {name: procs.free_port() for name in ("plain", "plugin", "echo", "fast")}
        admin = procs.free_port()
        config = tb_envoy.bootstrap(
            admin,
            [
                tb_envoy.http_listener("plain", ports["plain"], cluster="g"),
                tb_envoy.http_listener("plugin", ports["plugin"], cluster="g", http_filters=[wasm]),
                tb_envoy.http_listener("echo", ports["echo"], cluster="echo"),
                tb_envoy.http_listener("fast", ports["fast"], cluster="fast"),
            ],
            [
                tb_envoy.static_cluster("g", grpc_server.port, http2=True),
                tb_envoy.static_cluster("echo", echo.port),
                tb_envoy.static_cluster("fast", nginx.ports["http"]),
            ],
        )
        path = tb_envoy.write_config(config, tmp / "envoy")
        tb_envoy.validate_config(path)
        envoy = tb_envoy.start_envoy(path, admin_port=admin, log_dir=logs)
        started.append(envoy)

        port, echo_port, fast_port = procs.free_port(), procs.free_port(), procs.free_port()
        raw = tb_agent.base_config(
            port=port, admin_port=procs.free_port(),
            clusters={"g": grpc_server.port, "echo": echo.port, "fast": nginx.ports["http"]},
            listener_cluster="g", http2_clusters=frozenset({"g"}),
        )  # fmt: skip
        raw["listeners"].append({"name": "echo", "address": "127.0.0.1", "port": echo_port, "cluster": "echo"})
        raw["listeners"].append({"name": "fast", "address": "127.0.0.1", "port": fast_port, "cluster": "fast"})
        agent = tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=logs, log_level="info")
        started.append(agent)
        raw_p = tb_agent.base_config(
            port=procs.free_port(), admin_port=procs.free_port(), clusters={"g": grpc_server.port},
            listener_cluster="g", http2_clusters=frozenset({"g"}), plugins=[_agent_plugin_entry(spec, module_path)],
        )  # fmt: skip
        agent_plugin = tb_agent.start_agent(raw_p, work_dir=tmp / "agent-plugin", log_dir=logs, name="agent-plugin")
        started.append(agent_plugin)
        yield Bed(grpc_server, echo, envoy, ports, agent, echo_port, fast_port, agent_plugin)
    finally:
        for item in reversed(started):
            item.stop()


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    messages: tuple[bytes, ...]
    code: str
    expected: tuple[bytes, ...] = ()
    timeout: float = 10.0


CASES = [
    Case("unary", "Unary", (b"hello",), "OK", (b"hello",)),
    Case("unary not found", "Unary", (b"fail:5:no such thing",), "NOT_FOUND"),
    Case("unary internal", "Unary", (b"fail:13:it broke",), "INTERNAL"),
    Case("unary deadline", "Unary", (b"sleep:3",), "DEADLINE_EXCEEDED", timeout=0.5),
    Case("server streaming", "ServerStream", (b"5",), "OK", tuple(b"msg-%d" % i for i in range(5))),
    Case("server streaming empty", "ServerStream", (b"0",), "OK"),
    Case("client streaming", "ClientStream", (b"a", b"b", b"c"), "OK", (b"a,b,c",)),
    Case("bidi", "Bidi", (b"x", b"y", b"z"), "OK", (b"X", b"Y", b"Z")),
    Case("bidi aborted", "Bidi", (b"ok", b"fail:9:stop here"), "FAILED_PRECONDITION", (b"OK",)),
    Case("large message", "Unary", (b"z" * 300_000,), "OK", (b"z" * 300_000,)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("plugin", [False, True], ids=["no-plugin", "header-plugin"])
def test_grpc_through_agent_matches_envoy(bed: Bed, plugin: bool, case: Case) -> None:
    envoy_port = bed.envoy_ports["plugin" if plugin else "plain"]
    agent_port = bed.agent_plugin.port if plugin else bed.agent.port
    md = [("x-case", case.name)]
    via_envoy = grpcpeer.call(envoy_port, case.method, case.messages, metadata=md, timeout=case.timeout).summary()
    via_agent = grpcpeer.call(agent_port, case.method, case.messages, metadata=md, timeout=case.timeout).summary()
    assert via_envoy["code"] == case.code, via_envoy
    assert via_envoy["messages"] == list(case.expected)
    if plugin and case.code != "DEADLINE_EXCEEDED":  # the plugin header: as metadata (trailing if trailers-only)
        assert ("x-filtered-by", "header_rules") in via_envoy["initial"] + via_envoy["trailing"]
    if case.code == "DEADLINE_EXCEEDED":  # the client gave up: nothing the proxy sent matters
        via_envoy.update(initial=[], trailing=[], details="")
        via_agent.update(initial=[], trailing=[], details="")
    assert via_agent == via_envoy


@pytest.mark.parametrize("plugin", [False, True], ids=["no-plugin", "header-plugin"])
def test_grpc_request_metadata_reaches_the_server(bed: Bed, plugin: bool) -> None:
    envoy_port = bed.envoy_ports["plugin" if plugin else "plain"]
    agent_port = bed.agent_plugin.port if plugin else bed.agent.port
    seen = {}
    for plane, port in (("envoy", envoy_port), ("agent", agent_port)):
        out = grpcpeer.call(port, "Unary", [b"metadata"], metadata=[("x-md", "v")])
        assert out.code.name == "OK", out
        md = dict(json.loads(out.messages[0]))
        seen[plane] = {k: md.get(k) for k in ("x-md", "x-added", "te", "content-type")}
        assert re.fullmatch(r"[0-9a-f-]{36}", md.get("x-request-id", "")), md  # both add one
    assert seen["agent"] == seen["envoy"]
    assert seen["agent"]["x-added"] == ("yes" if plugin else None)


def _http1_grpc(port: int, message: bytes) -> tuple[str, dict[str, str], bytes, dict[str, str]]:
    """A gRPC unary call sent as HTTP/1.1 (chunked response, trailers in its last chunk if any): status line,
    headers, de-chunked body, trailers."""
    frame = b"\0" + len(message).to_bytes(4, "big") + message
    request = (
        b"POST /meshplug.test.Echo/Unary HTTP/1.1\r\nhost: g\r\ncontent-type: application/grpc\r\nte: trailers\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%b" % (len(frame), frame)
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    body = b""
    trailers: dict[str, str] = {}
    if headers.get("transfer-encoding") == "chunked":
        while True:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                for line in rest.split(b"\r\n"):
                    if line:
                        k, _, v = line.decode().partition(":")
                        trailers[k.lower()] = v.strip()
                break
            body, rest = body + rest[:size], rest[size + 2 :]
    else:
        body = rest
    return lines[0], headers, body, trailers


def test_http1_client_to_http2_cluster_matches_envoy(bed: Bed) -> None:
    got = {plane: _http1_grpc(port, b"over http/1.1") for plane, port in
           (("envoy", bed.envoy_ports["plain"]), ("agent", bed.agent.port))}  # fmt: skip
    status, headers, body, trailers = got["agent"]
    assert status == got["envoy"][0] == "HTTP/1.1 200 OK"
    assert body == got["envoy"][2] == b"\0\0\0\0\x0dover http/1.1"
    # both HTTP/1.1 codecs drop the response trailers (no http_protocol_options.enable_trailers on the listener:
    # tests/integration/test_agent_http1_trailers.py)
    assert trailers == got["envoy"][3] == {}
    for name in ("content-type", "x-initial", "transfer-encoding"):
        assert headers.get(name) == got["envoy"][1].get(name), name


def _nghttp(port: int, *args: str) -> str:
    nghttp = shutil.which("nghttp")
    assert nghttp is not None, "nghttp missing: scripts/install-system-deps.sh installs nghttp2-client"
    result = subprocess.run([nghttp, "-nv", *args, f"http://127.0.0.1:{port}/path?q=1"], capture_output=True,
                            text=True, timeout=30, check=False)  # fmt: skip
    return result.stdout


def _nghttp_status(out: str) -> list[str]:
    return re.findall(r"recv \(stream_id=\d+\) :status: (\d+)", out)


@pytest.mark.parametrize("args", [(), ("-d", "/dev/null"), ("-H", "x-echo-case: nghttp")], ids=["get", "post", "hdr"])
def test_nghttp_to_http1_app_matches_envoy(bed: Bed, args: tuple[str, ...]) -> None:
    via_envoy = _nghttp(bed.envoy_ports["echo"], *args)
    via_agent = _nghttp(bed.agent_echo_port, *args)
    assert _nghttp_status(via_envoy) == ["200"], via_envoy
    assert _nghttp_status(via_agent) == ["200"], via_agent
    for out in (via_envoy, via_agent):  # the echo app answers the request it saw as JSON: the same request
        assert "END_STREAM" in out


def _h2load(port: int) -> dict[str, int]:
    h2load = shutil.which("h2load")
    assert h2load is not None
    result = subprocess.run([h2load, "-n", "400", "-c", "4", "-m", "16", f"http://127.0.0.1:{port}/"],
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    m = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", result.stdout)
    assert m, result.stdout + result.stderr
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", result.stdout)
    assert status, result.stdout
    return {"done": int(m.group(2)), "succeeded": int(m.group(3)), "2xx": int(status.group(1))}


def test_h2load_many_streams_per_connection(bed: Bed) -> None:
    """4 connections x 16 concurrent streams, 400 requests: every one answered 2xx by both proxies."""
    assert _h2load(bed.envoy_ports["fast"]) == {"done": 400, "succeeded": 400, "2xx": 400}
    assert _h2load(bed.agent_fast_port) == {"done": 400, "succeeded": 400, "2xx": 400}


def test_agent_counts_http2_connections(bed: Bed) -> None:
    grpcpeer.call(bed.agent.port, "Unary", [b"count me"])
    text = tb_agent.http_request(bed.agent.admin_port, "GET", "/stats/prometheus")[2].decode()
    m = re.search(r"downstream_cx_http2_total\S* (\d+)", text)
    assert m and int(m.group(1)) >= 1, text
