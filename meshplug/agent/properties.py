"""`proxy_get_property`: Envoy 1.40's attribute names and binary encodings (docs/proxy-wasm-abi.md §3.2, §6).

Called by meshplug.agent.abi with the effective context and the raw NUL-separated path. Encodings: strings
raw, ints/durations/timestamps 8-byte little-endian, bools 1 byte, maps as header pairs. Sizes follow
Envoy's attributes: request.size (content-length, else body bytes received), request.total_size (body +
header bytes), response.size / total_size (body bytes sent, + headers + trailers), request.duration (ns,
once the stream is complete, i.e. in on_log). Values written
with `proxy_set_property` are read back for the same path (Envoy: filter state "wasm.<name>"). Istio node
metadata (`node.metadata.<KEY>`, also under `xds.node`) comes from the host's `node` mapping; xds.cluster_name
from `StreamInfo.cluster_name`. As Envoy 1.40: header-derived request.* (path, method, headers, ...) are
NotFound outside the context's request-header callbacks (until it continues) except in on_log;
source/destination.address are "ip:port". The same for the response side: response.headers(.*)
NotFound after on_response_headers continued (found again in on_log); response.trailers an (empty) map;
response.code_details ("via_upstream", a local reply's details, ...) and response.flags (RESPONSE_FLAG_*
bits) from the chain's Stream; upstream.address / port / local_address ("ip:port") from
StreamInfo.upstream_* once the shell called Stream.set_upstream (NotFound before), with
upstream.transport_failure_reason "" and upstream.request_attempt_count 1 then; connection.requested_server_name
("" on plaintext) and connection.tls_version (NotFound on plaintext). Also as Envoy: request.headers /
response.headers an empty map (not NotFound) where the map is not readable, *.headers_bytes the map's byte
size (0 then), response.grpc_status from grpc-status or the HTTP status (200 -> UNKNOWN),
response.backend_latency, upstream.num_endpoints, upstream.* from the host the router picked (before it
connects), `metadata` the dynamic metadata message, `filter_state` a SerializationFailure. Each checked
against Envoy 1.40 path by path (tests/integration/test_property_table.py).
"""

from __future__ import annotations

import struct
from typing import Final
from urllib.parse import urlsplit

from meshplug.agent import config, hostapi, metadata, pairs, routing
from meshplug.agent.hostapi import Context
from meshplug.agent.streamapi import Direction, StreamControl, StreamInfo

_I64: Final = struct.Struct("<q")


def enc_int(value: int) -> bytes:
    return _I64.pack(value)


def enc_bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def _map(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A map attribute's value: header pairs; an empty map is the 4-byte zero count (Envoy's serializer),
    not the empty buffer the host hands over for an empty header map."""
    return pairs.encode(headers) or b"\0\0\0\0"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _byte_size(headers: list[tuple[bytes, bytes]]) -> int:
    """Envoy's HeaderMap::byteSize: key and value lengths of every entry (pseudo-headers included)."""
    return sum(len(k) + len(v) for k, v in headers)


def _joined(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Envoy's header map attribute: one entry per name, values comma-joined."""
    out: dict[bytes, list[bytes]] = {}
    for k, v in headers:
        out.setdefault(k, []).append(v)
    return [(k, b",".join(vs)) for k, vs in out.items()]


#: request.* attributes that are one request header's value, by attribute key
_REQUEST_HEADER_ATTRS: Final = {
    b"host": b":authority",
    b"scheme": b":scheme",
    b"method": b":method",
    b"referer": b"referer",
    b"useragent": b"user-agent",
    b"id": b"x-request-id",
}
#: request.* attributes Envoy derives from the request header map
_REQUEST_HEADER_KEYS: Final = frozenset({b"path", b"url_path", b"query", b"headers", *_REQUEST_HEADER_ATTRS})


def _address(host: str, port: int) -> bytes:
    """Envoy's Address::asString: ip:port, IPv6 in brackets."""
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()


def _stream_value(ctx: Context, segs: list[bytes]) -> bytes | None:  # noqa: PLR0911, PLR0912, PLR0915 - Envoy's attribute table, one branch per attribute
    info = ctx.stream_info()
    if info is None:
        return None
    control = ctx.stream_control()
    if control is not None:
        req = control.headers(Direction.REQUEST)
        resp = control.headers(Direction.RESPONSE)
    else:
        req, resp = [], []
    head = segs[0]
    if head == b"request" and len(segs) >= 2:
        key = segs[1]
        attached = control is None or ctx.request_headers_attached
        if not attached:
            if key == b"headers" and len(segs) == 2:
                return _map([])  # Envoy: an empty map outside the request-header callbacks
            if key == b"headers_bytes":
                return enc_int(0)
            if key in _REQUEST_HEADER_KEYS:
                return None  # Envoy: no request header map outside the request-header callbacks
            req = []
        path = _header(req, b":path")
        if key == b"path":
            return path
        if key == b"url_path":
            return urlsplit(path or b"").path if path is not None else None
        if key == b"query":
            return urlsplit(path or b"").query if path is not None else None
        name = _REQUEST_HEADER_ATTRS.get(key)
        if name is not None:
            return _header(req, name)
        if key == b"headers":
            if len(segs) >= 3:
                return _header(_joined(req), segs[2].lower())
            return _map(_joined(req))
        if key == b"headers_bytes":
            return enc_int(_byte_size(req))
        if key == b"protocol":
            return info.protocol.encode()
        if key == b"time":
            return enc_int(info.start_time_ns) if info.start_time_ns else None
        if control is not None:
            received = control.bytes_received
            if key == b"size":  # Envoy: content-length when present, else the body bytes received
                length = _header(req, b"content-length")
                if length is None or not attached:
                    return enc_int(received)
                return enc_int(int(length)) if length.strip().isdigit() else None
            if key == b"total_size":
                return enc_int(received + _byte_size(req))
            if key == b"duration":  # Envoy: requestComplete(), set once the stream is over (on_log)
                if ctx.completed_ns and info.start_time_ns:
                    return enc_int(max(0, ctx.completed_ns - info.start_time_ns))
                return None
        return None
    if head == b"response" and len(segs) >= 2:
        key = segs[1]
        if key == b"code":
            status = _header(resp, b":status")
            return enc_int(int(status)) if status and status.isdigit() else None
        if key == b"grpc_status":
            trailers = control.trailers(Direction.RESPONSE) if control is not None else []
            return _grpc_status(trailers, resp)
        if control is None:
            return None
        attached = ctx.response_headers_attached
        if key == b"headers_bytes":
            return enc_int(_byte_size(resp) if attached else 0)
        if key == b"headers":
            if not attached:  # Envoy: no response header map after on_response_headers continued
                return _map([]) if len(segs) == 2 else None
            if len(segs) >= 3:
                return _header(_joined(resp), segs[2].lower())
            return _map(_joined(resp))
        if key == b"trailers":
            return _map(_joined(control.trailers(Direction.RESPONSE)))
        if key == b"code_details":
            details = control.code_details
            return details.encode() if details is not None else None
        if key == b"flags":
            return enc_int(control.response_flags)
        if key == b"backend_latency":
            latency = control.backend_latency_ns
            return enc_int(latency) if latency is not None else None
        sent = control.bytes_sent
        if key == b"size":
            return enc_int(sent)
        if key == b"total_size":
            head_bytes = _byte_size(resp) if attached else 0
            return enc_int(sent + head_bytes + _byte_size(control.trailers(Direction.RESPONSE)))
        return None
    if head == b"upstream" and len(segs) >= 2:
        key = segs[1]
        if key == b"num_endpoints":
            cluster = _serving_cluster(ctx, info)
            return enc_int(len(cluster.endpoints) or 1) if cluster is not None else None
        if key == b"request_attempt_count" and ctx.stream_control() is not None:
            return enc_int(1 if info.upstream_address else 0)  # Envoy: 0 until the router picked a host
        if not info.upstream_address:
            return None  # no upstream host (yet)
        if key == b"locality":
            return b""  # an empty envoy.config.core.v3.Locality (endpoints carry none)
        if key == b"address":
            return _address(info.upstream_address, info.upstream_port)
        if key == b"port":
            return enc_int(info.upstream_port)
        if key == b"local_address":
            if not info.upstream_local_address:
                return None
            return _address(info.upstream_local_address, info.upstream_local_port)
        if key == b"transport_failure_reason":
            return b""
        if key == b"request_attempt_count":
            return enc_int(1)
        return None
    if head == b"metadata":  # the stream's dynamic metadata (envoy.config.core.v3.Metadata)
        return _metadata_value(_dynamic_metadata(control), segs[1:])
    if head == b"filter_state" and len(segs) == 1:
        raise Unserializable("filter state objects have no serialized form (Envoy: SerializationFailure)")
    if head in (b"source", b"destination", b"connection", b"connection_id") and len(segs) >= 1:
        key = segs[1] if len(segs) >= 2 else b""
        if head in (b"source", b"destination"):
            if head == b"source":
                host, port = info.remote_address, info.remote_port
            else:
                host, port = info.local_address, info.local_port
            return _address(host, port) if key == b"address" else enc_int(port) if key == b"port" else None
        if head == b"connection_id" or key == b"id":
            return enc_int(info.connection_id)
        if key == b"mtls":
            return enc_bool(info.mtls)
        if key == b"requested_server_name":
            return info.requested_server_name.encode()  # Envoy: "" on a plaintext connection
        if key == b"tls_version":
            return info.tls_version.encode() if info.tls_version else None
    return None


#: Envoy's Grpc::Utility::httpToGrpcStatus: the gRPC status a non-gRPC response's HTTP status stands for
_HTTP_TO_GRPC: Final = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_GRPC_UNKNOWN: Final = 2


def _grpc_status(trailers: list[tuple[bytes, bytes]], headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """response.grpc_status as Envoy infers it: the trailers' grpc-status, the headers', else the HTTP status
    mapped (200 -> UNKNOWN); NotFound before a response."""
    for source in (trailers, headers):
        value = _header(source, b"grpc-status")
        if value is not None and value.strip().isdigit():
            return enc_int(int(value))
    status = _header(headers, b":status")
    if status is None or not status.isdigit():
        return None
    return enc_int(_HTTP_TO_GRPC.get(int(status), _GRPC_UNKNOWN))


def _serving_cluster(ctx: Context, info: StreamInfo) -> config.Cluster | None:
    """The cluster serving the stream: the route decision's (HTTP) or the connection's (TCP)."""
    control = ctx.stream_control()
    decision = control.route_info() if control is not None else None
    name = decision.cluster if isinstance(decision, routing.Decision) else info.cluster_name
    return ctx.vm.host.clusters.get(name) if name else None


def _dynamic_metadata(control: StreamControl | None) -> metadata.Metadata:
    """The stream's dynamic metadata as a Metadata message (namespaces in the order they were first set)."""
    if control is None:
        return metadata.EMPTY_METADATA
    return metadata.Metadata(
        tuple(
            (ns, metadata.struct_from_json(values, f"dynamic metadata {ns}"))
            for ns, values in control.dynamic_metadata.items()
        )
    )


class Unserializable(Exception):
    """Envoy has the attribute but cannot serialize it (e.g. xds.upstream_host_metadata of an endpoint
    without metadata: a null message)."""


#: what Envoy 1.40's node says its user agent is (the agent's own name here)
USER_AGENT: Final = "meshplug"

_DIRECTIONS: Final = {"UNSPECIFIED": 0, "INBOUND": 1, "OUTBOUND": 2}


def _node_value(ctx: Context, segs: list[bytes]) -> bytes | None:
    """`xds.node[...]`: the whole Node message, or id / cluster / metadata (a map) / metadata.KEY..."""
    host = ctx.vm.host
    node_meta = metadata.Struct(tuple(host.node.items()))
    if not segs:
        return metadata.node_proto(host.node_id, host.cluster, node_meta, USER_AGENT)
    key = segs[0]
    if key == b"id" and len(segs) == 1:
        return host.node_id.encode()
    if key == b"cluster" and len(segs) == 1:
        return host.cluster.encode()
    if key == b"user_agent_name" and len(segs) == 1:
        return USER_AGENT.encode()
    if key == b"metadata":
        value = metadata.lookup(node_meta, segs[1:])
        return None if isinstance(value, metadata.Missing) else metadata.property_value(value)
    return None


def _metadata_value(meta: metadata.Metadata, segs: list[bytes]) -> bytes | None:
    """A Metadata attribute: the message itself, `filter_metadata` (a map), a namespace, a key within."""
    if not segs:
        return meta.proto()
    if segs[0] != b"filter_metadata":
        return None
    if len(segs) == 1:
        return metadata.metadata_pairs(meta)
    ns = meta.namespace(segs[1].decode(errors="replace"))
    if ns is None:
        return None
    value = metadata.lookup(ns, segs[2:])
    return None if isinstance(value, metadata.Missing) else metadata.property_value(value)


def _xds_value(ctx: Context, segs: list[bytes]) -> bytes | None:  # noqa: PLR0911, PLR0912 -- one attribute table
    """xds.* attributes: node, the route / virtual host / cluster serving the stream (HTTP: the stream's
    route decision, resolved now if nothing asked yet; TCP: the tcp_proxy cluster), the listener."""
    key = segs[0]
    rest = segs[1:]
    if key == b"node":
        return _node_value(ctx, rest)
    info = ctx.stream_info()
    if info is None:
        return None
    listener = info.listener
    if key.startswith(b"listener_") or key == b"filter_chain_name":
        if not isinstance(listener, config.Listener) or (rest and key != b"listener_metadata"):
            return None
        if key == b"listener_direction":
            return enc_int(_DIRECTIONS.get(listener.direction, 0))
        if key == b"listener_metadata":
            return _metadata_value(listener.metadata, rest)
        return listener.filter_chain_name.encode() if key == b"filter_chain_name" else None
    control = ctx.stream_control()
    decision = control.route_info() if control is not None else None
    cluster_name = info.cluster_name  # a TCP connection's (tcp_proxy), or a stream the shell routes itself
    if isinstance(decision, routing.Decision):
        vhost, route, cluster_name = decision.vhost, decision.route, decision.cluster
        if key == b"virtual_host_name" and not rest:
            return vhost.name.encode() if vhost is not None else None
        if key == b"virtual_host_metadata":
            return _metadata_value(vhost.metadata, rest) if vhost is not None else None
        if key == b"route_name" and not rest:
            return route.name.encode() if route is not None else None
        if key == b"route_metadata":
            return _metadata_value(route.metadata, rest) if route is not None else None
    if key == b"cluster_name" and not rest:
        return cluster_name.encode() if cluster_name else None
    if key == b"cluster_metadata" and cluster_name:
        cluster = ctx.vm.host.clusters.get(cluster_name)
        return _metadata_value(cluster.metadata, rest) if cluster is not None else None
    if key in (b"upstream_host_metadata", b"upstream_host_locality_metadata") and not rest and info.upstream_address:
        raise Unserializable("the upstream endpoint has no metadata")
    return None


def _plugin_value(ctx: Context, name: bytes) -> bytes | None:
    config: hostapi.PluginConfig = ctx.plugin.config
    if name == b"plugin_name":
        return config.name.encode()
    if name == b"plugin_root_id":
        return config.root_id.encode()
    if name == b"plugin_vm_id":
        return config.vm_id.encode()
    return None


def lookup(ctx: Context, raw_path: bytes) -> bytes | None:
    """The encoded value of property `raw_path` for `ctx`, or None (NOT_FOUND)."""
    segs = raw_path.split(b"\0")
    while segs and segs[-1] == b"":
        segs.pop()
    if not segs:
        return None
    props = ctx.properties
    if props is not None and raw_path in props:
        return props[raw_path]
    props = ctx.root.properties
    if props is not None and raw_path in props:
        return props[raw_path]
    head = segs[0]
    if len(segs) == 1 and head.startswith(b"plugin_"):
        return _plugin_value(ctx, head)
    if head == b"xds":
        return _xds_value(ctx, segs[1:]) if len(segs) >= 2 else None
    return _stream_value(ctx, segs)
