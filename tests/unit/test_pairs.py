"""The header-pairs codec: the Rust SDK's vector, strict rejection of malformed buffers, and a seeded
property test (decode(encode(x)) == x) plus a mutation fuzz (decode never raises anything but PairsError)."""

from __future__ import annotations

import random
import struct

import pytest

from meshplug.agent import pairs

RUST_VECTOR = (
    bytes.fromhex("04000000070000000300000005000000080000000a0000000b0000000a0000000a000000")
    + b":method\0GET\0:path\0/bytes/1\0:authority\0httpbin.org\0Powered-By\0proxy-wasm\0"
)
RUST_PAIRS = [
    (b":method", b"GET"),
    (b":path", b"/bytes/1"),
    (b":authority", b"httpbin.org"),
    (b"Powered-By", b"proxy-wasm"),
]


def test_rust_sdk_vector_round_trips() -> None:
    assert pairs.encode(RUST_PAIRS) == RUST_VECTOR
    assert pairs.decode(RUST_VECTOR) == RUST_PAIRS
    assert pairs.encoded_size(RUST_PAIRS) == len(RUST_VECTOR)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\0\0\0\0", []),
        (pairs.encode([(b"", b"")]), [(b"", b"")]),
        (pairs.encode([(b"k", b"\xff\0v")]), [(b"k", b"\xff\0v")]),
    ],
    ids=["empty", "zero-count", "empty-strings", "binary-value"],
)
def test_decode_accepts(data: bytes, expected: list[tuple[bytes, bytes]]) -> None:
    assert pairs.decode(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\0",  # the spec's 1-byte empty form: too short for a count
        b"\x01\0\0\0",  # one pair, no sizes
        struct.pack("<III", 1, 5, 0) + b"ab\0\0",  # key runs past the end
        struct.pack("<III", 1, 1, 1) + b"aXb\0",  # key not NUL-terminated
        struct.pack("<III", 1, 1, 1) + b"a\0bX",  # value not NUL-terminated
        pairs.encode([(b"a", b"b")]) + b"\0",  # trailing byte
        struct.pack("<I", 2000),  # too many pairs
        struct.pack("<III", 1, 0xFFFFFFFF, 0) + b"\0\0",  # huge length
    ],
    ids=["one-byte", "no-sizes", "key-overrun", "key-nul", "value-nul", "trailing", "count-limit", "huge-length"],
)
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(pairs.PairsError):
        pairs.decode(data)


def test_decode_enforces_byte_limit() -> None:
    big = pairs.encode([(b"k", b"v" * 100)])
    with pytest.raises(pairs.PairsError):
        pairs.decode(big, max_bytes=50)


@pytest.mark.parametrize("seed", range(8))
def test_property_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        items = [
            (rng.randbytes(rng.randrange(0, 20)), rng.randbytes(rng.randrange(0, 40)))
            for _ in range(rng.randrange(0, 30))
        ]
        data = pairs.encode(items)
        assert len(data) == pairs.encoded_size(items)
        assert pairs.decode(data) == items


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_mutations_only_raise_pairs_error(seed: int) -> None:
    rng = random.Random(1000 + seed)
    base = pairs.encode(RUST_PAIRS)
    for _ in range(500):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1 and data:
                del data[rng.randrange(len(data)) :]
            else:
                data += rng.randbytes(rng.randrange(1, 4))
        try:
            out = pairs.decode(bytes(data))
        except pairs.PairsError:
            continue
        assert pairs.encode(out) == bytes(data) or (not out and bytes(data) in (b"", b"\0\0\0\0"))
