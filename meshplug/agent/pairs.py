"""The proxy-wasm header-pairs codec (docs/proxy-wasm-abi.md §3.1).

Layout, every integer a little-endian u32::

    N, then N x (key_len, value_len), then N x (key bytes, NUL, value bytes, NUL)

`encode` serializes host maps for the guest (an empty map encodes to b"", which the host hands over as
ptr=0,size=0 -- never the 1-byte form the Rust and Go SDKs cannot parse). `decode` parses guest-supplied
buffers (set_header_map_pairs, send_local_response, http_call, grpc metadata) strictly, the way
proxy-wasm-cpp-host does: bounded total size and pair count, every length inside the buffer, every
terminator NUL, no trailing bytes. Called by meshplug.agent.abi and meshplug.agent.properties.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from meshplug import limits

Pair = tuple[bytes, bytes]

_U32: Final = struct.Struct("<I")
#: the sizes' layout for N pairs, N up to `_SIZES_KEPT` (a guest's maps are small): one Struct made once, not
#: a format string built and looked up in struct's cache per map
_SIZES: Final[dict[int, struct.Struct]] = {}
_SIZES_KEPT: Final = 64


class PairsError(ValueError):
    """A guest-supplied pairs buffer is malformed or exceeds the named limits."""


def encode(pairs: Sequence[Pair]) -> bytes:
    """Serialize `pairs`; an empty sequence gives b"" (the host writes ptr=0, size=0)."""
    if not pairs:
        return b""
    n = len(pairs)
    sizes = struct.pack(f"<{2 * n + 1}I", n, *(length for k, v in pairs for length in (len(k), len(v))))
    parts = [sizes]
    for k, v in pairs:
        parts.append(k)
        parts.append(b"\0")
        parts.append(v)
        parts.append(b"\0")
    return b"".join(parts)


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = limits.MAX_PAIRS_BYTES,
    max_count: int = limits.MAX_PAIRS_COUNT,
) -> list[Pair]:
    """Parse a guest pairs buffer. b"" and a lone zero count are the empty map. Raises PairsError."""
    total = len(data)
    if total == 0:
        return []
    if total > max_bytes:
        raise PairsError(f"pairs buffer of {total} bytes exceeds {max_bytes}")
    if total < 4:
        raise PairsError(f"pairs buffer of {total} bytes is shorter than its count")
    # (typed: compiled, the sizes, offsets and bytes indexing are native, no generic number or slice objects)
    buf: bytes = data if isinstance(data, bytes) else bytes(data)
    n: int = _U32.unpack_from(buf, 0)[0]
    if n > max_count:
        raise PairsError(f"{n} pairs exceed the limit of {max_count}")
    header_end = 4 + 8 * n
    if header_end > total:
        raise PairsError(f"{n} pairs need {header_end} bytes of sizes, buffer has {total}")
    layout = _SIZES.get(n)
    if layout is None:
        layout = struct.Struct(f"<{2 * n}I")
        if n <= _SIZES_KEPT:
            _SIZES[n] = layout
    sizes: tuple[int, ...] = layout.unpack_from(buf, 4)
    pos = header_end
    out: list[Pair] = []
    for i in range(n):
        klen: int = sizes[2 * i]
        vlen: int = sizes[2 * i + 1]
        kend = pos + klen
        vstart = kend + 1
        vend = vstart + vlen
        if vend + 1 > total:
            raise PairsError(f"pair {i} runs past the end of the buffer")
        if buf[kend] != 0 or buf[vend] != 0:
            raise PairsError(f"pair {i} is not NUL-terminated")
        out.append((buf[pos:kend], buf[vstart:vend]))
        pos = vend + 1
    if pos != total:
        raise PairsError(f"{total - pos} trailing bytes after {n} pairs")
    return out


def encoded_size(pairs: Sequence[Pair]) -> int:
    """Byte size `encode(pairs)` would have (0 for an empty map)."""
    if not pairs:
        return 0
    return 4 + sum(10 + len(k) + len(v) for k, v in pairs)
