"""Unsigned LEB128: the variable-length integers of the WebAssembly binary format, and protobuf's varints.

Used by meshplug.wasminline (a module's code section) and meshplug.agent.metadata / grpcwire (protobuf messages).
meshplug.validate.binary reads its own (u32 with the spec's 5-byte bound and its error positions).
"""

from __future__ import annotations

#: a value needs at most 64 bits (10 bytes); a longer encoding is refused
MAX_SHIFT = 63


def encode(value: int) -> bytes:
    """The shortest encoding of the non-negative ``value``."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if not value:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def decode(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """(the value that starts at ``data[pos]``, the position after it); ValueError when it runs to ``end`` or past
    64 bits."""
    result = shift = 0
    while True:
        if pos >= end or shift > MAX_SHIFT:
            raise ValueError("truncated or over-long LEB128")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
