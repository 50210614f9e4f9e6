"""HTTP/2 over TLS (ALPN) and HTTP/2's timeouts, against Envoy 1.40 in the same run.

A TLS listener (agent `tls: {cert_file, key_file}`, Envoy DownstreamTlsContext with ALPN h2,http/1.1) serves
HTTP/2 to a client that offers h2 and HTTP/1.1 to one that offers only http/1.1; gRPC works over it. With short
timeouts on both proxies (agent `http: {stream_idle_timeout_s, idle_timeout_s}`, Envoy's HCM
stream_idle_timeout / common_http_protocol_options.idle_timeout), a stream that goes silent is answered 408 and
an idle HTTP/2 connection is ended with GOAWAY, by both.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import grpcpeer, h2raw, pki, procs, upstream

pytestmark = pytest.mark.integration

TLS_CONTEXT = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@dataclass
class Bed:
    ca: Path
    envoy: dict[str, int]  # tls (echo), tls_grpc, timeouts (echo)
    agent: dict[str, int]


def _tls(listener: dict[str, Any], certs: pki.ServingPki) -> dict[str, Any]:
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(certs.cert)}, "private_key": {"filename": str(certs.key)}}
                ],
            },
        },
    }
    return listener


def _short_timeouts(listener: dict[str, Any]) -> dict[str, Any]:
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["stream_idle_timeout"] = "1s"
    hcm["common_http_protocol_options"] = {"idle_timeout": "2s"}
    return listener


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    tmp: Path = tmp_path_factory.mktemp("h2tls")
    logs = tmp / "logs"
    certs = pki.serving_pki(tmp / "pki", ca_cn="test-ca", server_cn="localhost", dns_names=["localhost"],
                            ip_addresses=["127.0.0.1"])  # fmt: skip
    started: list[Any] = []
    try:
        echo = upstream.start_service("echo", log_dir=logs)
        started.append(echo)
        g = grpcpeer.start_server(log_dir=logs)
        started.append(g)
        e = {n: procs.free_port() for n in ("tls", "tls_grpc", "timeouts")}
        admin = procs.free_port()
        config = tb_envoy.bootstrap(
            admin,
            [
                _tls(tb_envoy.http_listener("tls", e["tls"], cluster="echo"), certs),
                _tls(tb_envoy.http_listener("tls_grpc", e["tls_grpc"], cluster="g"), certs),
                _short_timeouts(tb_envoy.http_listener("timeouts", e["timeouts"], cluster="echo")),
            ],
            [tb_envoy.static_cluster("echo", echo.port), tb_envoy.static_cluster("g", g.port, http2=True)],
        )
        path = tb_envoy.write_config(config, tmp / "envoy")
        tb_envoy.validate_config(path)
        started.append(tb_envoy.start_envoy(path, admin_port=admin, log_dir=logs))
        a = {n: procs.free_port() for n in ("tls", "tls_grpc")}
        tls = {"cert_file": str(certs.cert), "key_file": str(certs.key)}
        raw = tb_agent.base_config(
            port=a["tls"], admin_port=procs.free_port(), clusters={"echo": echo.port, "g": g.port},
            listener_cluster="echo", http2_clusters=frozenset({"g"}),
        )  # fmt: skip
        raw["listeners"][0]["tls"] = tls
        raw["listeners"].append(
            {"name": "tls_grpc", "address": "127.0.0.1", "port": a["tls_grpc"], "cluster": "g", "tls": tls}
        )
        started.append(tb_agent.start_agent(raw, work_dir=tmp / "agent", log_dir=logs, log_level="info"))
        a["timeouts"] = procs.free_port()
        raw_t = tb_agent.base_config(
            port=a["timeouts"], admin_port=procs.free_port(), clusters={"echo": echo.port}, listener_cluster="echo"
        )
        raw_t["http"] = {"stream_idle_timeout_s": 1, "idle_timeout_s": 2}
        started.append(tb_agent.start_agent(raw_t, work_dir=tmp / "agent-t", log_dir=logs, name="agent-t"))
        yield Bed(certs.ca_cert, e, a)
    finally:
        for item in reversed(started):
            item.stop()


def _https(port: int, ca: Path, alpn: list[str]) -> tuple[str | None, int]:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(alpn)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/over-tls")
        resp = conn.getresponse()
        resp.read()
        sock = conn.sock
        negotiated = sock.selected_alpn_protocol() if isinstance(sock, ssl.SSLSocket) else None
        return negotiated, resp.status
    finally:
        conn.close()


def test_alpn_http11_over_tls(bed: Bed) -> None:
    for port in (bed.envoy["tls"], bed.agent["tls"]):
        assert _https(port, bed.ca, ["http/1.1"]) == ("http/1.1", 200)


def test_alpn_h2_over_tls_grpc(bed: Bed) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=bed.ca.read_bytes())
    outcomes = []
    for port in (bed.envoy["tls_grpc"], bed.agent["tls_grpc"]):
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            reply = channel.unary_unary(f"/{grpcpeer.SERVICE}/Unary")(b"over h2 and tls", timeout=10)
            outcomes.append(reply)
    assert outcomes == [b"over h2 and tls", b"over h2 and tls"]


def _silent_stream(c: h2raw.RawClient) -> None:
    c.h2.send_headers(1, [(b":method", b"POST"), *h2raw.BASE[1:]], end_stream=False)  # a body that never comes
    c.flush()


def test_stream_idle_timeout_answers_408(bed: Bed) -> None:
    for port in (bed.envoy["timeouts"], bed.agent["timeouts"]):
        started = time.monotonic()
        out = h2raw.run(port, _silent_stream, until=lambda o: 1 in o.statuses, timeout=6.0)
        assert out.statuses.get(1) == 408, out
        assert 0.8 < time.monotonic() - started < 5.0


def test_idle_connection_gets_goaway(bed: Bed) -> None:
    for port in (bed.envoy["timeouts"], bed.agent["timeouts"]):
        out = h2raw.run(port, lambda c: None, until=lambda o: o.goaway is not None, timeout=6.0)
        assert out.goaway == "NO_ERROR", out
