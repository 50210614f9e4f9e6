"""The property table: every attribute path, read by a plugin in every callback, on Envoy 1.40 and the agent.

The corpus module c/propdump reads each configured path with proxy_get_property in every callback and logs
the raw bytes in hex (or the status: 1 = NotFound, 3 = SerializationFailure), and the header maps as
proxy_get_header_map_pairs gives them. Both proxies run the same Envoy bootstrap (one after the other, on the
same ports): an HTTP listener (metadata, direction, filter chain name; a named route with metadata in a named
virtual host with metadata; a cluster with metadata; a node with metadata) and a TCP listener (propdump as a
network filter before tcp_proxy). The same requests go through both; for each (callback, path) the agent must
answer what Envoy answered: the same bytes, or the same status. Maps are compared without their order (Envoy
builds them from hash maps: the order changes from one call to the next), the header maps with it.

A few values differ from run to run by nature (the client's port, times, durations, ids, the upstream
connection's local port): for those only found / NotFound is compared (and an int's size). The router's
x-envoy-* headers (their values are times) are set off in the bootstrap (suppress_envoy_headers: true) and so
is the server header (server_header_transformation: PASS_THROUGH), on both proxies alike, so that the header
maps compare byte for byte; test_agent_server_header.py compares those two settings themselves.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator

import pytest

from tests.corpus import modules as corpus_modules
from tests.corpus import runner
from tests.corpus import spec as S
from tests.testbed import agent as tb_agent
from tests.testbed import envoy as tb_envoy
from tests.testbed import procs, upstream

pytestmark = pytest.mark.integration

HTTP_PATHS = """
@headers
plugin_name
plugin_root_id
plugin_vm_id
request.path
request.url_path
request.host
request.scheme
request.method
request.headers
request.headers.x-probe
request.headers_bytes
request.referer
request.useragent
request.id
request.protocol
request.query
request.time
request.duration
request.size
request.total_size
response.code
response.code_details
response.flags
response.grpc_status
response.headers.content-type
response.headers.x-echo-extra
response.headers
response.headers_bytes
response.trailers
response.size
response.total_size
response.backend_latency
source.address
source.port
destination.address
destination.port
connection.id
connection_id
connection.mtls
connection.requested_server_name
connection.tls_version
connection.subject_local_certificate
connection.subject_peer_certificate
connection.dns_san_local_certificate
connection.dns_san_peer_certificate
connection.uri_san_local_certificate
connection.uri_san_peer_certificate
connection.sha256_peer_certificate_digest
connection.transport_failure_reason
connection.termination_details
upstream.address
upstream.port
upstream.local_address
upstream.tls_version
upstream.transport_failure_reason
upstream.num_endpoints
upstream.request_attempt_count
upstream.locality
metadata
filter_state
xds.node.id
xds.node.cluster
xds.node.metadata
xds.node.metadata.ROLE
xds.cluster_name
xds.cluster_metadata
xds.cluster_metadata.filter_metadata.[probe.ns]
xds.cluster_metadata.filter_metadata.[probe.ns].tier
xds.route_name
xds.route_metadata
xds.route_metadata.filter_metadata.[probe.ns].team
xds.route_metadata.filter_metadata
xds.route_metadata.filter_metadata.[probe.ns]
xds.virtual_host_name
xds.virtual_host_metadata
xds.listener_metadata
xds.listener_metadata.filter_metadata.[probe.ns].side
xds.listener_direction
xds.filter_chain_name
xds.upstream_host_locality_metadata
node
node.id
cluster_name
route_name
listener_direction
"""

TCP_PATHS = """
plugin_name
source.address
destination.address
destination.port
connection.mtls
upstream.address
upstream.port
upstream.local_address
xds.cluster_name
xds.cluster_metadata.filter_metadata.[probe.ns].tier
xds.listener_direction
xds.listener_metadata
xds.filter_chain_name
xds.route_name
request.path
"""

#: paths whose value differs from run to run: compared as found / NotFound (and the size of an int)
VARYING = frozenset(
    {
        "request.time",
        "request.duration",
        "response.backend_latency",
        "source.address",
        "source.port",
        "connection.id",
        "connection_id",
        "upstream.local_address",
        "request.id",
    }
)

BOOTSTRAP = """
node:
  id: probe-node
  cluster: probe-cluster
  metadata: {ROLE: gateway, LABELS: {app: probe, tier: edge}, ZONE: a, APP_ID: "7", MESH: m1}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: ${ADMIN_PORT}}}}
static_resources:
  listeners:
  - name: http-in
    address: {socket_address: {address: 127.0.0.1, port_value: ${PORT}}}
    traffic_direction: OUTBOUND
    metadata: {filter_metadata: {probe.ns: {side: http-listener}}}
    filter_chains:
    - name: http-chain
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probe
          server_header_transformation: PASS_THROUGH
          route_config:
            name: probe-routes
            virtual_hosts:
            - name: probe-vh
              domains: ["*"]
              metadata: {filter_metadata: {probe.ns: {vh: yes-vh}}}
              routes:
              - name: probe-route
                match: {prefix: /}
                route: {cluster: backend}
                metadata: {filter_metadata: {probe.ns: {team: probe-team, weight: 3, alpha: first}, other.ns: {k: v}}}
          http_filters:
          - name: propdump
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: propdump
                root_id: propdump-root
                vm_config: {vm_id: propdump-vm, runtime: envoy.wasm.runtime.v8, code: {local: {filename: "${MODULE}"}}}
                configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: "${HTTP_PATHS}"}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
              suppress_envoy_headers: true
  - name: tcp-in
    address: {socket_address: {address: 127.0.0.1, port_value: ${TCP_PORT}}}
    traffic_direction: INBOUND
    metadata: {filter_metadata: {probe.ns: {side: tcp-listener}}}
    filter_chains:
    - name: tcp-chain
      filters:
      - name: propdump
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: propdump-tcp
            root_id: propdump-root
            vm_config: {vm_id: propdump-tcp-vm, runtime: envoy.wasm.runtime.v8, code: {local: {filename: "${MODULE}"}}}
            configuration: {"@type": type.googleapis.com/google.protobuf.StringValue, value: "${TCP_PATHS}"}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: probe-tcp
          cluster: echo-tcp
  clusters:
  - name: backend
    type: STATIC
    metadata: {filter_metadata: {probe.ns: {tier: gold}}}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${ECHO_PORT}}}}}]
  - name: echo-tcp
    type: STATIC
    metadata: {filter_metadata: {probe.ns: {tier: tcp}}}
    load_assignment:
      cluster_name: echo-tcp
      endpoints:
      - lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: ${TCP_ECHO_PORT}}}}}]
"""

#: header values that differ between the runs (masked)
_MASKED = {b"x-request-id", b"date"}

#: (phase, path) -> "= <hex>" or "! <status>"
Dump = dict[tuple[str, str], str]


def _tcp_spelling(paths: str) -> str:
    """The TCP filter's paths with a bracketed first segment (the same path: brackets only keep dots), so its
    log lines are told apart from the HTTP filter's (both log an on_log phase)."""
    return "\n".join(f"[{p.split('.', 1)[0]}]" + (f".{p.split('.', 1)[1]}" if "." in p else "") for p in paths.split())


def _paths_value(paths: str) -> str:
    """A YAML double-quoted scalar's content: one path per line."""
    return "\\n".join(p for p in paths.strip().splitlines())


def _dump(records: list[tuple[str, str]]) -> Dump:
    """(phase, path) -> answer; the header maps' pairs under (phase, "@headers")."""
    out: Dump = {}
    for _, message in records:
        parts = message.split(" ", 3)
        if len(parts) == 4 and parts[0] == "prop":
            out[(parts[1], parts[2])] = parts[3]
        elif len(parts) == 3 and parts[0] == "headers":
            out[(parts[1], "@headers")] = parts[2]
    return out


def _until(read: Callable[[], Dump], phases: set[str]) -> Dump:
    """The dump once every phase in `phases` has been logged (the last callbacks log after the response)."""
    deadline = time.monotonic() + 15.0
    while True:
        dump = read()
        if phases <= {phase for phase, _ in dump}:
            return dump
        assert time.monotonic() < deadline, (
            f"phases {sorted(phases)} never all logged; got {sorted({p for p, _ in dump})}"
        )
        time.sleep(0.05)


HTTP_PHASES = {"rh", "rb", "sh", "sb", "lg"}
TCP_PHASES = {"nc", "dd", "ud"}


def _traffic(http_port: int, tcp_port: int) -> None:
    request = S.Request(
        "POST",
        "/probe/path?q=1&r=two",
        (
            ("host", "probe.example"),
            ("x-probe", "one"),
            ("referer", "http://ref.example/"),
            ("user-agent", "probe-agent/1"),
            ("content-type", "text/plain"),
        ),
        (b"hello body",),
    )
    result = runner.send_http(http_port, request)
    assert result.status == 200, result
    assert runner.send_tcp(tcp_port, [b"ping"]) == b"ping"


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Dump]]:
    tmp = tmp_path_factory.mktemp("proptable")
    echo = upstream.start_service("echo", log_dir=tmp)
    tcp_echo = upstream.start_service("tcp_echo", log_dir=tmp)
    try:
        port, tcp_port, admin = procs.free_port(), procs.free_port(), procs.free_port()
        text = BOOTSTRAP
        for name, value in (
            ("ADMIN_PORT", str(admin)),
            ("TCP_PORT", str(tcp_port)),
            ("PORT", str(port)),
            ("MODULE", str(corpus_modules.module("c/propdump").path)),
            ("HTTP_PATHS", _paths_value(HTTP_PATHS)),
            ("TCP_PATHS", _paths_value(_tcp_spelling(TCP_PATHS))),
            ("ECHO_PORT", str(echo.port)),
            ("TCP_ECHO_PORT", str(tcp_echo.port)),
        ):
            text = text.replace("${" + name + "}", value)
        path = tmp / "bootstrap.yaml"
        path.write_text(text)
        out: dict[str, Dump] = {}
        envoy = tb_envoy.start_envoy(path, admin_port=admin, log_dir=tmp / "envoy")
        try:
            _traffic(port, tcp_port)
            out["envoy"] = _until(lambda: _dump(envoy.plugin_logs()), HTTP_PHASES | TCP_PHASES)
        finally:
            envoy.stop()
        agent = tb_agent.start_envoy_config(path, port=port, admin_port=admin, log_dir=tmp / "agent")
        try:
            _traffic(port, tcp_port)

            def read() -> Dump:
                return _dump([(str(r["level"]), str(r["message"])) for r in agent.admin_json("/plugin_logs")])

            out["agent"] = _until(read, HTTP_PHASES | TCP_PHASES)
        finally:
            agent.stop()
        yield out
    finally:
        echo.stop()
        tcp_echo.stop()


def _pairs(raw: bytes) -> list[tuple[bytes, bytes]] | None:
    """A map value (proxy-wasm header pairs) decoded, or None when `raw` is not exactly one."""
    if len(raw) < 4:
        return None
    (count,) = struct.unpack_from("<I", raw)
    if 4 + 8 * count > len(raw):
        return None
    sizes = struct.unpack_from(f"<{2 * count}I", raw, 4)
    pos, out = 4 + 8 * count, []
    for i in range(count):
        key_end = pos + sizes[2 * i]
        value_end = key_end + 1 + sizes[2 * i + 1]
        if value_end >= len(raw) or raw[key_end] != 0 or raw[value_end] != 0:
            return None
        out.append((raw[pos:key_end], raw[key_end + 1 : value_end]))
        pos = value_end + 1
    return out if pos == len(raw) else None


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise ValueError("truncated varint")
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def _proto(raw: bytes) -> object:
    """A protobuf message as its fields, sorted (map entries come in hash order in Envoy), sub-messages
    likewise; raises ValueError when `raw` is not a message."""
    fields: list[tuple[int, object]] = []
    pos = 0
    while pos < len(raw):
        tag, pos = _varint(raw, pos)
        number, kind = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field 0")
        if kind == 0:
            value, pos = _varint(raw, pos)
            fields.append((number, value))
        elif kind in (1, 5):
            size = 8 if kind == 1 else 4
            fields.append((number, raw[pos : pos + size]))
            pos += size
        elif kind == 2:
            size, pos = _varint(raw, pos)
            body = raw[pos : pos + size]
            if len(body) != size:
                raise ValueError("truncated")
            try:
                fields.append((number, _proto(body)))
            except ValueError:
                fields.append((number, body))
            pos += size
        else:
            raise ValueError(f"wire type {kind}")
    return sorted(fields, key=repr)


def _normal(value: bytes, path: str) -> object:
    """A value with map order left out: maps (header pairs; Envoy builds them from hash maps) as sorted
    entries, values normalized in turn; date and x-request-id values masked (they differ between runs)."""
    entries = _pairs(value)
    if entries is not None:
        return sorted((k, b"<masked>" if k in _MASKED else _normal(v, path)) for k, v in entries)
    if path == "metadata" or path.endswith("_metadata"):
        try:
            return _proto(value)
        except ValueError:
            return value
    return value


def _comparable(path: str, answer: str) -> object:
    if answer.startswith("!"):
        return answer
    value = bytes.fromhex(answer.removeprefix("= ").strip())
    if path not in VARYING:
        return _normal(value, path)
    return "<int>" if len(value) == 8 and path.endswith(("port", "id", "time", "duration", "latency")) else "<found>"


@pytest.mark.parametrize(("paths", "phases"), [(HTTP_PATHS, HTTP_PHASES), (TCP_PATHS, TCP_PHASES)], ids=["http", "tcp"])
def test_every_path_answers_as_envoy(dumps: dict[str, Dump], paths: str, phases: set[str]) -> None:
    envoy, agent = dumps["envoy"], dumps["agent"]
    differ = []
    for phase in sorted(phases):
        for plain in paths.split():
            if plain.startswith("@"):
                continue
            path = plain if paths is HTTP_PATHS else _tcp_spelling(plain)
            e, a = envoy.get((phase, path)), agent.get((phase, path))
            assert e is not None, f"Envoy logged no {phase} {path}"
            if a is None or _comparable(plain, a) != _comparable(plain, e):
                differ.append(f"{phase} {path}: envoy {e} agent {a}")
    assert not differ, "\n".join(differ)


@pytest.mark.parametrize("phase", ["rh", "sh"])
def test_header_maps_in_envoys_order(dumps: dict[str, Dump], phase: str) -> None:
    """proxy_get_header_map_pairs lists the request map as Envoy builds it (:authority, :path, :method,
    :scheme, the client's headers in wire order, x-forwarded-proto, x-request-id) and the response map as
    the upstream sent it after :status."""
    seen = {}
    for name in ("envoy", "agent"):
        entries = _pairs(bytes.fromhex(dumps[name][(phase, "@headers")]))
        assert entries is not None
        seen[name] = [(k, b"<masked>" if k in _MASKED else v) for k, v in entries]
    assert seen["agent"] == seen["envoy"]
    names = [k for k, _ in seen["envoy"]]
    if phase == "rh":
        assert names[:4] == [b":authority", b":path", b":method", b":scheme"]
        assert names[-2:] == [b"x-forwarded-proto", b"x-request-id"]


def test_the_table_is_not_empty(dumps: dict[str, Dump]) -> None:
    """The probe read real values: a few answers Envoy gives, spelled out."""
    envoy = dumps["envoy"]
    assert envoy[("rh", "request.path")] == "= " + b"/probe/path?q=1&r=two".hex()
    assert envoy[("rh", "xds.route_name")] == "= " + b"probe-route".hex()
    assert envoy[("ud", "[upstream].port")].startswith("= ")
    assert envoy[("rh", "node.id")] == "! 1"
