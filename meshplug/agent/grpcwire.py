"""gRPC's wire details the agent needs: length-prefixed message framing, the status codes, and the
`envoy.config.core.v3.GrpcService` a plugin may name its upstream with.

Used by the host's gRPC calls (`meshplug.agent.abi` parses the upstream, `meshplug.agent.grpccall` frames
messages and reads the response). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from meshplug import leb128

OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
DEADLINE_EXCEEDED: Final = 4
INTERNAL: Final = 13
UNAVAILABLE: Final = 14

#: HTTP status of a gRPC response that is not 200 -> grpc-status (Envoy's Grpc::Utility::httpToGrpcStatus)
_HTTP_TO_GRPC: Final = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
#: messages larger than this are refused (grpc's default max receive size, 4 MiB)
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024


def http_to_grpc(status: int) -> int:
    return _HTTP_TO_GRPC.get(status, UNKNOWN)


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC message: flag 0, 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


class Deframer:
    """Splits a response body into messages as DATA arrives; `error` is set on a compressed or oversized one."""

    __slots__ = ("buf", "error")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.error = ""

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        buf = self.buf
        while len(buf) >= 5 and not self.error:
            if buf[0] != 0:
                self.error = "compressed gRPC message (no grpc-encoding was offered)"
                break
            n = int.from_bytes(buf[1:5], "big")
            if n > MAX_MESSAGE_BYTES:
                self.error = f"gRPC message of {n} bytes is larger than {MAX_MESSAGE_BYTES}"
                break
            if len(buf) < 5 + n:
                break
            out.append(bytes(buf[5 : 5 + n]))
            del buf[: 5 + n]
        return out

    @property
    def partial(self) -> bool:
        """Bytes of an unfinished message are left (a truncated response)."""
        return bool(self.buf)


def status_of(headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, bytes] | None:
    """(grpc-status, grpc-message percent-decoded) from a trailers (or trailers-only) block, None if absent."""
    code: int | None = None
    message = b""
    for name, value in headers:
        if name == b"grpc-status" and code is None:
            try:
                code = int(value)
            except ValueError:
                code = UNKNOWN
        elif name == b"grpc-message":
            message = _percent_decode(value)
    return None if code is None else (code, message)


def _percent_decode(value: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == 0x25 and i + 2 < len(value) and _hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


# --- GrpcService (a plugin's upstream may be a serialized envoy.config.core.v3.GrpcService) -------------


def proto_fields(data: bytes) -> dict[int, int | bytes]:
    """The last value of each field of a protobuf message (varint and length-delimited values; fixed 32/64-bit
    fields are skipped): enough for GrpcService and Envoy's foreign-function argument messages. Raises
    ValueError on malformed input."""
    out: dict[int, int | bytes] = {}
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        value, i = leb128.decode(data, i, n)
        return value

    while i < n:
        key = varint()
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise ValueError("field 0")
        if wire_type == 0:
            out[field] = varint()
        elif wire_type == 2:
            size = varint()
            if i + size > n:
                raise ValueError("truncated field")
            out[field] = data[i : i + size]
            i += size
        elif wire_type in (1, 5):
            i += 8 if wire_type == 1 else 4
            if i > n:
                raise ValueError("truncated field")
        else:
            raise ValueError(f"wire type {wire_type}")
    return out


def upstream_cluster(upstream: bytes) -> tuple[str, str] | None:
    """The (cluster, authority) a plugin's gRPC upstream names: a serialized GrpcService with envoy_grpc
    {cluster_name, authority} (tried first, as Envoy does), else the bytes as a plain cluster name; None
    when it is neither (Envoy: ParseFailure)."""
    try:
        envoy_grpc = proto_fields(upstream).get(1)
        inner = proto_fields(envoy_grpc) if isinstance(envoy_grpc, bytes) else None
    except ValueError:
        inner = None
    if inner is not None:  # envoy_grpc {cluster_name = 1, authority = 2}
        cluster, authority = inner.get(1), inner.get(2, b"")
        if not isinstance(cluster, bytes) or not cluster or not isinstance(authority, bytes):
            return None
        try:
            return cluster.decode(), authority.decode()
        except UnicodeDecodeError:
            return None
    try:
        name = upstream.decode()
    except UnicodeDecodeError:
        return None
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        return None
    return name, ""
