"""What an HTTP/2 upstream reads from the proxy on its connection, not per request: Envoy 1.40 and the agent, each
with an http2 cluster, the same HTTP/1.1 request sent through each.

* The connection's start: the preface, SETTINGS (compared setting by setting) and the connection window.
* After the upstream's GOAWAY: the proxy's own frames on the way out (Envoy's codec client closes the connection
  without a GOAWAY of its own).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.differential import bed as diff_bed
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import h2raw, procs
from tests.testbed.h2raw import Part
from tests.testbed.rawpeer import RawPeer

pytestmark = pytest.mark.integration

#: an answer, then the upstream's GOAWAY NO_ERROR (the request's stream is at or below its last-stream-id)
_ANSWER_THEN_GOAWAY = (
    Part(headers=((b":status", b"200"), (b"content-length", b"2"))),
    Part(data=b"ok", end=True),
    Part(goaway=0),
)
_SETTINGS, _WINDOW_UPDATE, _GOAWAY = 4, 8, 7
#: SETTINGS_INITIAL_WINDOW_SIZE: Envoy sends its stream window (16 MiB) in SETTINGS; the agent opens each stream's
#: window by a WINDOW_UPDATE after its HEADERS instead (grpc-core stalls otherwise: see h2up.client_settings)
_INITIAL_WINDOW_SIZE = 4
_MAGIC = h2raw.CLIENT_PREFACE[:24]


class Recorder(RawPeer):
    """An upstream on 127.0.0.1 that answers nothing and keeps the bytes each connection brought (until it closed
    or `READ_S` passed)."""

    READ_S = 1.0

    def __init__(self) -> None:
        self._read_one = threading.Condition()
        self.connections: list[bytes] = []
        super().__init__(self._read)

    def _read(self, conn: socket.socket) -> None:
        got = b""
        deadline = time.monotonic() + self.READ_S
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        with self._read_one:
            self.connections.append(got)
            self._read_one.notify_all()

    def first(self, timeout: float = 5.0) -> bytes:
        """The first connection's bytes, once it was read; the list is emptied."""
        with self._read_one:
            if not self._read_one.wait_for(lambda: self.connections, timeout):
                raise AssertionError("no connection reached the upstream")
            got, self.connections = self.connections[0], []
            return got


@dataclass(frozen=True)
class Planes:
    #: listener ports by plane ("envoy", "agent"), to the recording upstream and to the answering one
    recorded: dict[str, int]
    answered: dict[str, int]
    recorder: Recorder
    server: h2raw.RawServer


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Planes]:
    tmp: Path = tmp_path_factory.mktemp("h2upconn")
    logs = tmp / "logs"
    recorder = Recorder()
    server = h2raw.RawServer(lambda _path: _ANSWER_THEN_GOAWAY)
    clusters = {"rec": recorder.port, "ans": server.port}
    started: list[Any] = []
    try:
        ports = {name: procs.free_port() for name in clusters}
        admin = procs.free_port()
        listeners = [tb_envoy.http_listener(name, ports[name], cluster=name) for name in clusters]
        config = tb_envoy.bootstrap(
            admin, listeners, [tb_envoy.static_cluster(n, p, http2=True) for n, p in clusters.items()]
        )
        path = tb_envoy.write_config(config, tmp / "envoy")
        started.append(tb_envoy.start_envoy(path, admin_port=admin, log_dir=logs))
        agents = {}
        for name, port in clusters.items():
            raw = tb_agent.base_config(
                port=procs.free_port(),
                admin_port=procs.free_port(),
                clusters={name: port},
                listener_cluster=name,
                http2_clusters=frozenset({name}),
            )
            agent = tb_agent.start_agent(raw, work_dir=tmp / f"agent-{name}", log_dir=logs, log_level="info")
            started.append(agent)
            agents[name] = agent.port
        yield Planes(
            {"envoy": ports["rec"], "agent": agents["rec"]},
            {"envoy": ports["ans"], "agent": agents["ans"]},
            recorder,
            server,
        )
    finally:
        for item in reversed(started):
            item.stop()
        recorder.close()
        server.close()


def _settings(payload: bytes) -> list[tuple[int, int]]:
    return [(int.from_bytes(payload[i : i + 2], "big"), int.from_bytes(payload[i + 2 : i + 6], "big"))
            for i in range(0, len(payload), 6)]  # fmt: skip


def test_the_connection_starts_as_envoys(planes: Planes) -> None:
    """The preface, then SETTINGS with the same settings in the same order as Envoy's (no header list size: a
    response head's bound is the listener's max_response_headers_kb), then the same connection window. The one
    setting apart: SETTINGS_INITIAL_WINDOW_SIZE (`_INITIAL_WINDOW_SIZE`)."""
    got = {}
    for plane, port in planes.recorded.items():
        diff_bed.converse(port, b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n", head=False, deadline=0.5)
        data = planes.recorder.first()
        assert data[:24] == _MAGIC, (plane, data[:40])
        frames = h2raw.frames(data[24:])
        assert frames[0][0] == _SETTINGS and not frames[0][1] & 1, (plane, frames)
        settings = _settings(frames[0][3])
        window = next((int.from_bytes(f[3], "big") for f in frames if f[0] == _WINDOW_UPDATE and f[2] == 0), None)
        got[plane] = (settings, window)
    envoy_settings, envoy_window = got["envoy"]
    assert (_INITIAL_WINDOW_SIZE, 16 * 1024 * 1024) in envoy_settings, envoy_settings
    assert got["agent"] == ([s for s in envoy_settings if s[0] != _INITIAL_WINDOW_SIZE], envoy_window)


def test_no_goaway_back_after_the_upstreams(planes: Planes) -> None:
    """The upstream answers, then sends GOAWAY NO_ERROR: both proxies give the client the answer and close the
    connection to the upstream without a GOAWAY of their own."""
    got = {}
    for plane, port in planes.answered.items():
        path = f"/g-{plane}".encode()
        client = diff_bed.converse(port, b"GET %s HTTP/1.1\r\nhost: x\r\n\r\n" % path, head=False, deadline=2.0)
        sent, ended = planes.server.after_answer(path, lambda _sent, ended: ended)
        goaways = [f for f in h2raw.frames(sent) if f[0] == _GOAWAY]  # (a SETTINGS ACK may come after the answer)
        got[plane] = ([r.status for r in client.responses], goaways, ended)
    assert got["envoy"] == ([200], [], True), got
    assert got["agent"] == got["envoy"]
