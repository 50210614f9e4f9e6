"""HTTP/2 clients that make the proxy queue frames they do not read: Envoy 1.40's outbound flood limits
(max_outbound_control_frames 1,000: PING and SETTINGS ACKs, RST_STREAM; max_outbound_frames 10,000) against the
agent's, in the same run, on the compiled codec (nghttp2) and the fallback (MESHPLUG_NATIVE=0).

Envoy counts the frames its codec wrote into the connection's buffer and the socket has not taken yet, and checks
them after each read: ACKs for a read's PINGs and SETTINGS are all queued before anything is written, so a read
with 1,000 PINGs (1,001 control frames with the ACK of the client's first SETTINGS) passes the limit whether the
client reads or not. Envoy then writes what it queued and closes (no GOAWAY; http2.outbound_control_flood). A client
that keeps sending PINGs and never reads fills the socket buffers, then the queue: both close that connection.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hpack
import pytest

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import h2raw, procs

pytestmark = pytest.mark.integration


@dataclass
class Bed:
    envoy: tb_envoy.Envoy
    envoy_port: int
    agent: tb_agent.Agent


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """Envoy and the agent on HTTP listeners; no request reaches their cluster (a port nobody listens on)."""
    tmp: Path = tmp_path_factory.mktemp("h2out")
    logs = tmp / "logs"
    nobody = procs.free_port()
    started: list[Any] = []
    try:
        port, admin = procs.free_port(), procs.free_port()
        listener = tb_envoy.http_listener("l", port, cluster="app")
        config = tb_envoy.bootstrap(admin, [listener], [tb_envoy.static_cluster("app", nobody)])
        envoy = tb_envoy.start_envoy(tb_envoy.write_config(config, tmp / "envoy"), admin_port=admin, log_dir=logs)
        started.append(envoy)
        raw = tb_agent.base_config(
            port=procs.free_port(), admin_port=procs.free_port(), clusters={"app": nobody}, listener_cluster="app"
        )
        agent = tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=logs, log_level="info")
        started.append(agent)
        yield Bed(envoy, port, agent)
    finally:
        for item in reversed(started):
            item.stop()


def _pings(n: int, first: int = 0) -> bytes:
    return b"".join(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + (first + i).to_bytes(8, "big") for i in range(n))


def _settings(n: int) -> bytes:
    return b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" * n


def _get(stream_id: int) -> bytes:
    """A GET's HEADERS frame (END_STREAM, END_HEADERS)."""
    block = hpack.Encoder().encode(list(h2raw.BASE))
    return len(block).to_bytes(3, "big") + bytes((1, 5)) + stream_id.to_bytes(4, "big") + block


def _acks(data: bytes) -> int:
    return sum(1 for kind, flags, _, _ in h2raw.frames(data) if kind in (4, 6) and flags & 1)


def _converse(port: int, payload: bytes, acks: int, timeout: float = 4.0) -> tuple[tuple[h2raw.RawFrame, ...], str]:
    """The preface (an empty SETTINGS) and `payload` in one write; what the proxy writes until it closed the
    connection ("closed": its FIN, or a reset once it had closed and the probe below came) or, still open, gave
    `acks` ACKs and answered one PING more ("open")."""
    got = bytearray()
    end = "timeout"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(h2raw.CLIENT_PREFACE + payload)
        deadline = time.monotonic() + timeout
        probed = False
        while time.monotonic() < deadline:
            if _acks(bytes(got)) >= acks + probed:
                if probed:
                    end = "open"
                    break
                sock.sendall(_pings(1, first=1 << 40))  # still served?
                probed = True
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                break
            except ConnectionResetError:
                end = "closed"
                break
            if not chunk:
                end = "closed"
                break
            got += chunk
    return tuple(h2raw.frames(bytes(got))), end


def _counter(bed: Bed, plane: str, name: str) -> int:
    if plane == "envoy":
        return int(bed.envoy.stats().get(f"http2.{name}") or 0)
    text = tb_agent.http_request(bed.agent.admin_port, "GET", "/stats/prometheus")[2].decode()
    m = re.search(rf"http2_{name}_total\S* (\d+)", text)
    assert m, text
    return int(m.group(1))


# name, what the client sends after its preface in the same write, the control frames that make Envoy queue (the
# ACK of the preface's SETTINGS included), "open" (answered, still served) or "flood" (answered, then closed)
CASES: list[tuple[str, bytes, int, str]] = [
    ("999 PINGs", _pings(999), 1000, "open"),
    ("1000 PINGs", _pings(1000), 1001, "flood"),
    ("999 SETTINGS", _settings(999), 1000, "open"),
    ("1000 SETTINGS", _settings(1000), 1001, "flood"),
    ("500 PINGs and 500 SETTINGS", _pings(500) + _settings(500), 1001, "flood"),
    ("1000 PINGs, then a request", _pings(1000) + _get(1), 1001, "flood"),
]


@pytest.mark.parametrize(("name", "payload", "acks", "expect"), CASES, ids=[c[0] for c in CASES])
def test_control_frames_queued_by_one_read_as_envoy(
    bed: Bed, name: str, payload: bytes, acks: int, expect: str
) -> None:
    """One read's ACKs: at Envoy's limit both answer and serve on; one past it both write every ACK and close the
    connection (no GOAWAY, the request after them unanswered), counting http2.outbound_control_flood."""
    got = {}
    for plane, port in (("envoy", bed.envoy_port), ("agent", bed.agent.port)):
        before = _counter(bed, plane, "outbound_control_flood")
        frames, end = _converse(port, payload, acks)
        counted = _counter(bed, plane, "outbound_control_flood") - before
        got[plane] = (_acks(b"".join(_raw(f) for f in frames)), [f for f in frames if f[0] in (1, 7)], end, counted)
    want = (acks + 1, [], "open", 0) if expect == "open" else (acks, [], "closed", 1)  # open: the probe PING too
    assert got == {"envoy": want, "agent": want}


def _raw(frame: h2raw.RawFrame) -> bytes:
    kind, flags, sid, payload = frame
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def _never_reads(port: int, limit: int = 96 << 20) -> tuple[str, int]:
    """PINGs, 500 a write, never reading: how the connection ended and how many were sent."""
    chunk = _pings(500)
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as sock:
        sock.sendall(h2raw.CLIENT_PREFACE)
        try:
            while sent < limit:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError as exc:
            return type(exc).__name__, sent // 17
    return "open", sent // 17


def test_a_client_that_never_reads_is_closed_as_by_envoy(bed: Bed) -> None:
    """A PING flood from a client that never reads: the ACKs fill the socket buffers, then the proxy's queue; Envoy
    closes the connection (past its control-frame limit after a read, or nghttp2's own cap of 10,000 ACKs queued
    within one read when a read is that large: http2.outbound_control_flood counts only the first), so does the
    agent."""
    ends = {plane: _never_reads(port)[0] for plane, port in (("envoy", bed.envoy_port), ("agent", bed.agent.port))}
    assert "open" not in ends.values(), ends
