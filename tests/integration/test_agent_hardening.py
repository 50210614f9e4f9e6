"""Hardening findings that need more than one exchange of bytes to show, each against a real agent process:
a header that never ends (bounded while it is parsed), a client that leaves in the middle of a body (both sides
end at once), a request that stalls (408 at the stream idle timeout), a plugin writing CR/LF into a header
(refused as Envoy refuses it, same module and config, same run), and the push and admin ports (authenticated
before any body byte is read, every connection capped and timed, a deeply nested push NACKed, /logging POST-only
as Envoy's admin). The one-exchange findings are cases of tests/differential (test_differential_http1.py).
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshplug import limits, protocol
from tests.corpus import modules
from tests.differential import bed
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs
from tests.testbed.rawpeer import RawPeer

TOKEN = "hardening-token"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Upstream:
    """A raw upstream that reads whatever comes and says when each of its connections ended."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.got = b""
        self.peer = RawPeer(self._serve)

    def _serve(self, conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            self.got += chunk
        self.ended.set()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hardening")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.peer.close()


@pytest.fixture(scope="module")
def agent(work: Path, upstream: Upstream) -> Iterator[tb_agent.Agent]:
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    raw = tb_agent.base_config(
        port=procs.free_port(),
        admin_port=procs.free_port(),
        clusters={"upstream": upstream.peer.port},
        push={
            "address": "127.0.0.1",
            "port": procs.free_port(),
            "token_file": str(token_file),
            "allow_plaintext": True,
        },
    )
    raw["http"] = {"stream_idle_timeout_s": 1.5}
    a = tb_agent.start_agent(raw, work_dir=work / "agent", log_dir=work, log_level="info")
    yield a
    a.stop()


def _read_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


# --- finding 2: a header line that never ends ---------------------------------------------------------------


@pytest.mark.parametrize("what", ["value", "name"])
def test_a_header_that_never_ends_is_refused_at_the_limit_while_it_is_sent(agent: tb_agent.Agent, what: str) -> None:
    before = _rss_mib(agent.proc.pid)
    start = b"GET / HTTP/1.1\r\nHost: a.test\r\n" + (b"X-Big: " if what == "value" else b"")
    sent = 0
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(start)
        try:
            # 4 KiB at a time, far past the limit if nothing stops it, until the agent answers
            while sent < 8 * limits.MiB and not select.select([sock], [], [], 0.001)[0]:
                sock.sendall(b"a" * 4096)
                sent += 4096
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert sent < limits.MiB, f"{sent} bytes sent before the refusal"
    assert _rss_mib(agent.proc.pid) < before + 16


# --- finding 3: a client that closes in the middle of its body -----------------------------------------------


def test_a_client_leaving_mid_body_ends_its_upstream_connection_at_once(
    agent: tb_agent.Agent, upstream: Upstream
) -> None:
    upstream.ended.clear()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nabc")
        procs.wait_until(lambda: b"abc" in upstream.got, timeout=10, what="the head and 3 body bytes upstream")
        sock.shutdown(socket.SHUT_WR)
        assert _read_all(sock) == b""  # closed, no response (the request can never complete)
    assert upstream.ended.wait(5), "the upstream connection stayed open"
    procs.wait_until(
        lambda: b"meshplug_agent_downstream_cx_active 0" in agent.admin("/stats/prometheus")[1],
        timeout=5,
        what="no downstream connection left",
    )


# --- finding 4: a request that stalls --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "partial",
    [b"G", b"GET / HTTP/1.1\r\nHost: a.test\r\n", b"POST /p HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nab"],
    ids=["one-byte", "partial-head", "partial-body"],
)
def test_a_stalled_request_gets_408_at_the_stream_idle_timeout(agent: tb_agent.Agent, partial: bytes) -> None:
    with socket.create_connection(("127.0.0.1", agent.port), timeout=10) as sock:
        sock.sendall(partial)
        began = time.monotonic()
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408 ") and reply.endswith(b"stream timeout"), reply
    assert 1.0 < time.monotonic() - began < 6


# --- finding 7: CR/LF from a plugin's header value ----------------------------------------------------------


@pytest.mark.parametrize("direction", ["request", "response"])
def test_a_plugin_header_value_with_crlf_is_refused_as_envoy_refuses_it(
    work: Path, direction: str, envoy_runner: Callable[[dict[str, Any]], tb_envoy.Envoy]
) -> None:
    conf = {direction: {"add": {"x-inj": "a\r\nX-Smuggled: 1"}}}
    recorder = bed.Recorder(["envoy", "agent"])
    try:
        wasm = modules.module("rust/header_rules").path
        port = procs.free_port()
        raw = tb_agent.base_config(
            port=port,
            admin_port=procs.free_port(),
            clusters={"upstream": recorder.ports["agent"]},
            plugins=[{"name": "rules", "module": {"file": str(wasm)}, "configuration": conf}],
        )
        a = tb_agent.start_agent(raw, work_dir=work / f"crlf-{direction}", log_dir=work, log_level="info")
        e_port = procs.free_port()
        filters = [bed.wasm_filter("rules", "rust/header_rules", conf)]
        listener = tb_envoy.http_listener("crlf", e_port, cluster="up", http_filters=filters)
        cluster = tb_envoy.static_cluster("up", recorder.ports["envoy"])
        envoy = envoy_runner(tb_envoy.bootstrap(procs.free_port(), [listener], [cluster]))
        try:
            case = bed.Case("crlf", "finding", b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            got = {}
            for name, p in (("envoy", e_port), ("agent", port)):
                recorder.begin(name, case)
                client = bed.converse(p, case.request, head=False, deadline=3)
                got[name] = (client, recorder.end(name))
        finally:
            a.stop()
            envoy.stop()
    finally:
        recorder.close()
    (e_client, e_up), (a_client, a_up) = got["envoy"], got["agent"]
    for msg in a_up.messages:
        assert b"x-smuggled" not in dict(msg.headers), msg.headers
    assert b"X-Smuggled" not in a_client.raw
    seen = f"agent [{a_client.summary()}] {a_client.raw[:300]!r} envoy [{e_client.summary()}] {e_client.raw[:300]!r}"
    if direction == "request":  # Envoy refuses the stream (503), so does the agent; nothing goes upstream
        assert [r.status for r in a_client.responses] == [r.status for r in e_client.responses] == [503], seen
        assert len(a_up.messages) == len(e_up.messages) == 0
    else:
        # stricter by design: Envoy 1.40 writes the value raw into the client's response head (a second header
        # appears there); the agent answers 502 "invalid header value" instead
        assert [r.status for r in a_client.responses] == [502], seen


# --- finding 5 and the control ports -------------------------------------------------------------------------


def _push_head(token: str | None, length: int) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (
        f"PUT {protocol.PUSH_PATH} HTTP/1.1\r\nHost: agent\r\n{auth}"
        f"Content-Type: {protocol.CONTENT_TYPE}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("token", [None, "wrong"], ids=["no-token", "wrong-token"])
def test_push_is_refused_from_its_head_before_any_body_byte(agent: tb_agent.Agent, token: str | None) -> None:
    assert agent.push_port is not None
    with socket.create_connection(("127.0.0.1", agent.push_port), timeout=10) as sock:
        sock.sendall(_push_head(token, limits.MAX_PUSH_BYTES))  # the 4 MiB body never comes
        reply = _read_all(sock, timeout=5)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert json.loads(body)["error_detail"]["reason"] == "unauthorized"


def test_half_sent_pushes_hold_no_memory_and_time_out(agent: tb_agent.Agent) -> None:
    assert agent.push_port is not None
    before = _rss_mib(agent.proc.pid)
    socks = []
    try:
        for _ in range(60):  # authenticated, 4 MiB announced, 1 MiB sent, then silence
            s = socket.create_connection(("127.0.0.1", agent.push_port), timeout=20)
            socks.append(s)
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # past the cap: closed at accept
                s.sendall(_push_head(TOKEN, limits.MAX_PUSH_BYTES) + b"[" * limits.MiB)
        replies = [_read_all(s, timeout=limits.CONTROL_REQUEST_TIMEOUT_S + 10) for s in socks]
    finally:
        for s in socks:
            s.close()
    statuses = sorted({r[:12] for r in replies})
    # beyond the connection cap the extra ones were closed at accept (no reply); the others timed out
    assert statuses[-1] == b"HTTP/1.1 408" and set(statuses) <= {b"", b"HTTP/1.1 408"}, statuses
    assert sum(r.startswith(b"HTTP/1.1 408") for r in replies) <= limits.CONTROL_MAX_CONNECTIONS
    procs.wait_until(lambda: _rss_mib(agent.proc.pid) < before + 48, timeout=10, what="memory given back")


def test_a_push_nested_100000_deep_is_a_400_nack(agent: tb_agent.Agent) -> None:
    assert agent.push_port is not None
    body = b"[" * 100_000 + b"]" * 100_000
    with socket.create_connection(("127.0.0.1", agent.push_port), timeout=20) as sock:
        sock.sendall(_push_head(TOKEN, len(body)) + body)
        reply = _read_all(sock)
    head, _, text = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), head
    detail = json.loads(text)
    assert detail["ack"] is False and "nested" in detail["error_detail"]["message"]


def test_an_admin_connection_that_sends_nothing_is_closed_with_408(agent: tb_agent.Agent) -> None:
    with socket.create_connection(("127.0.0.1", agent.admin_port), timeout=30) as sock:
        sock.sendall(b"GET /rea")
        reply = _read_all(sock, timeout=limits.CONTROL_REQUEST_TIMEOUT_S + 10)
    assert reply.startswith(b"HTTP/1.1 408 ")


def test_logging_takes_post_only_as_envoys_admin(
    agent: tb_agent.Agent, envoy_runner: Callable[[dict[str, Any]], tb_envoy.Envoy]
) -> None:
    admin_port = procs.free_port()
    envoy = envoy_runner(tb_envoy.bootstrap(admin_port, [], []))
    envoy_get = tb_envoy.admin_get(envoy.admin_port, "/logging?level=debug")[0]
    assert (agent.admin("/logging?level=debug")[0], envoy_get) == (405, 405)
    assert agent.admin("/logging", method="POST") == (200, b"level: info\n")
