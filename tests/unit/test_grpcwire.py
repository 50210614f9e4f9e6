"""gRPC wire helpers of the agent's gRPC calls: framing, the status in trailers, a plugin's upstream."""

from __future__ import annotations

import pytest

from meshplug.agent import grpcwire

pytestmark = pytest.mark.unit


def test_frame_and_deframe_across_reads() -> None:
    data = grpcwire.frame(b"one") + grpcwire.frame(b"") + grpcwire.frame(b"three")
    d = grpcwire.Deframer()
    got = [m for i in range(0, len(data), 4) for m in d.feed(data[i : i + 4])]
    assert got == [b"one", b"", b"three"]
    assert not d.partial and not d.error


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x01\x00\x00\x00\x01x", "compressed"),
        (b"\x00" + (grpcwire.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big"), "larger than"),
    ],
    ids=["compressed", "oversized"],
)
def test_deframe_refuses(data: bytes, error: str) -> None:
    d = grpcwire.Deframer()
    assert d.feed(data) == []
    assert error in d.error


def test_truncated_message_is_partial() -> None:
    d = grpcwire.Deframer()
    assert d.feed(grpcwire.frame(b"hello")[:-1]) == []
    assert d.partial


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"grpc-status", b"0")], (0, b"")),
        ([(b"grpc-status", b"5"), (b"grpc-message", b"not%20found%")], (5, b"not found%")),
        ([(b"grpc-status", b"x")], (2, b"")),
        ([(b"x-other", b"1")], None),
    ],
)
def test_status_of(headers: list[tuple[bytes, bytes]], status: tuple[int, bytes] | None) -> None:
    assert grpcwire.status_of(headers) == status


def _envoy_grpc(cluster: bytes, authority: bytes = b"") -> bytes:
    inner = b"\x0a" + bytes([len(cluster)]) + cluster
    if authority:
        inner += b"\x12" + bytes([len(authority)]) + authority
    return b"\x0a" + bytes([len(inner)]) + inner


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        (b"checker", ("checker", "")),
        (_envoy_grpc(b"checker"), ("checker", "")),
        (_envoy_grpc(b"checker", b"svc.local"), ("checker", "svc.local")),
        (b"", None),
        (b"bad name", None),
        (b"\xff\xfe", None),
    ],
    ids=["plain name", "GrpcService", "GrpcService with authority", "empty", "space", "not utf-8"],
)
def test_upstream_cluster(upstream: bytes, expected: tuple[str, str] | None) -> None:
    assert grpcwire.upstream_cluster(upstream) == expected


@pytest.mark.parametrize(("http", "grpc"), [(400, 13), (401, 16), (403, 7), (404, 12), (503, 14), (500, 2)])
def test_http_to_grpc(http: int, grpc: int) -> None:
    assert grpcwire.http_to_grpc(http) == grpc
