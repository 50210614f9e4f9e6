"""HTTP/1.1 trailers as Envoy 1.40 treats them: its HTTP/1 codec drops trailers both ways (a chunked request's
trailer lines are read and thrown away, a response's last chunk goes out bare) unless the codec on that side
has http_protocol_options.enable_trailers -- the listener's for the client, the cluster's for the upstream.

The same chunked request with a trailer goes through Envoy and the agent, each configured the same way (off,
listener only, cluster only, both; the agent once from its native config, once from Envoy's bootstrap), to a
raw peer answering a chunked body with a trailer; what the peer got and what the client got are compared byte
for byte at the chunked end.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs
from tests.testbed.rawpeer import CHUNKED_END, TrailerPeer, recv_until

pytestmark = pytest.mark.integration

REQUEST = (
    b"POST /t HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\ntrailer: x-req-trailer\r\n\r\n"
    b"3\r\nabc\r\n0\r\nx-req-trailer: one\r\n\r\n"
)
#: (listener enable_trailers, cluster enable_trailers)
SETTINGS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.fixture(scope="module")
def peer() -> Iterator[TrailerPeer]:
    p = TrailerPeer()
    yield p
    p.close()


def _bootstrap(tmp: Path, peer: TrailerPeer, listener_on: bool, cluster_on: bool) -> tuple[Path, int, int]:
    """Envoy's bootstrap for the setting: (its file, listener port, admin port)."""
    port, admin = procs.free_port(), procs.free_port()
    listener = tb_envoy.http_listener("l", port, cluster="t")
    if listener_on:
        listener["filter_chains"][0]["filters"][0]["typed_config"]["http_protocol_options"] = {"enable_trailers": True}
    cluster = tb_envoy.static_cluster("t", peer.port)
    if cluster_on:
        cluster["typed_extension_protocol_options"] = {
            tb_envoy.HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{tb_envoy.HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}},
            }
        }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tb_envoy.write_config(tb_envoy.bootstrap(admin, [listener], [cluster]), tmp / "envoy")
    tb_envoy.validate_config(path)
    return path, port, admin


def _envoy(tmp: Path, peer: TrailerPeer, listener_on: bool, cluster_on: bool) -> tuple[Any, int]:
    path, port, admin = _bootstrap(tmp, peer, listener_on, cluster_on)
    return tb_envoy.start_envoy(path, admin_port=admin, log_dir=tmp), port


def _agent_bootstrap(tmp: Path, peer: TrailerPeer, listener_on: bool, cluster_on: bool) -> tuple[Any, int]:
    """The agent on Envoy's own bootstrap (meshplug run --envoy-config): the options map from Envoy's fields."""
    path, port, admin = _bootstrap(tmp, peer, listener_on, cluster_on)
    return tb_agent.start_envoy_config(path, port=port, admin_port=admin, log_dir=tmp), port


def _agent(tmp: Path, peer: TrailerPeer, listener_on: bool, cluster_on: bool) -> tuple[Any, int]:
    port = procs.free_port()
    raw = tb_agent.base_config(port=port, admin_port=procs.free_port(), clusters={"t": peer.port}, listener_cluster="t")
    raw["http"] = {"enable_trailers": listener_on}
    raw["clusters"][0]["enable_trailers"] = cluster_on
    return tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=tmp), port


def _through(port: int, peer: TrailerPeer) -> tuple[bytes, bytes]:
    """(the trailer lines the peer got, the trailer lines the client got)"""
    before = len(peer.requests)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(REQUEST)
        response = recv_until(conn, lambda d: CHUNKED_END.search(d) is not None)
    assert response.startswith(b"HTTP/1.1 200 "), response
    assert len(peer.requests) == before + 1
    sent, got = CHUNKED_END.search(peer.requests[-1]), CHUNKED_END.search(response)
    assert sent is not None and got is not None, (peer.requests[-1], response)
    return sent.group(1), got.group(1)


@pytest.mark.parametrize(
    ("listener_on", "cluster_on"), SETTINGS, ids=[f"listener={a}-cluster={b}" for a, b in SETTINGS]
)
def test_trailers_as_envoy(tmp_path: Path, peer: TrailerPeer, listener_on: bool, cluster_on: bool) -> None:
    seen = {}
    for plane, start in (("envoy", _envoy), ("agent", _agent), ("agent-envoy-config", _agent_bootstrap)):
        proc, port = start(tmp_path / plane, peer, listener_on, cluster_on)
        try:
            seen[plane] = _through(port, peer)
        finally:
            proc.stop()
    both = listener_on and cluster_on
    expect = (b"x-req-trailer: one\r\n", b"x-resp-trailer: yes\r\n") if both else (b"", b"")
    assert seen["agent"] == seen["agent-envoy-config"] == seen["envoy"] == expect, seen
