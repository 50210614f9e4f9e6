"""A plugin's reads of a body held as several chunks (proxy_get_buffer_bytes / proxy_get_buffer_status): the host
copies the pieces it holds straight into guest memory, without joining them first; what the guest gets is the same
bytes as from one joined buffer, for every window (start, max_size) across the chunk boundaries."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest

from meshplug.agent import chain as C
from meshplug.agent import host as H
from tests.unit.test_host_lifecycle import _guest, new_host

BACKENDS = ("fast", "public")
_IMPORTS = """(import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_buffer_status" (func $status (param i32 i32 i32) (result i32)))
      (import "env" "proxy_set_buffer_bytes" (func $set (param i32 i32 i32 i32 i32) (result i32)))"""


@functools.cache
def window_guest(start: int, max_size: int) -> bytes:
    """Buffers the request body to its end, then replaces all of it with: its length from get_buffer_status (4
    bytes, little endian), get_buffer_bytes' status (1 byte), then the window [start, start + max_size) it read."""
    body = f"""(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
      (func (export "proxy_on_request_body") (param $id i32) (param $size i32) (param $eos i32) (result i32)
        (local $ptr i32) (local $n i32)
        (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
        (drop (call $status (i32.const 0) (i32.const 100) (i32.const 104)))
        (i32.store8 (i32.const 108) (call $get (i32.const 0) (i32.const {start}) (i32.const {max_size})
                                             (i32.const 112) (i32.const 116)))
        (local.set $ptr (i32.load (i32.const 112)))
        (local.set $n (i32.load (i32.const 116)))
        (memory.copy (i32.const 109) (local.get $ptr) (local.get $n))
        (drop (call $set (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 100) (i32.add (local.get $n)
                                                                                              (i32.const 9))))
        (i32.const 0))"""
    return _guest(body, _IMPORTS)


@dataclass(frozen=True)
class Case:
    name: str
    chunks: tuple[bytes, ...]
    start: int
    max_size: int


CASES = [
    Case("whole, one chunk", (b"abcdef",), 0, 6),
    Case("whole, three chunks", (b"ab", b"cd", b"ef"), 0, 6),
    Case("more than there is, three chunks", (b"ab", b"cd", b"ef"), 0, 100),
    Case("across two boundaries", (b"ab", b"cd", b"ef"), 1, 4),
    Case("inside one chunk", (b"ab", b"cdxy", b"ef"), 3, 2),
    Case("a whole middle chunk", (b"ab", b"cd", b"ef"), 2, 2),
    Case("the tail from a boundary", (b"ab", b"cd", b"ef"), 4, 10),
    Case("nothing asked", (b"ab", b"cd"), 1, 0),
    Case("past the end", (b"ab", b"cd"), 4, 3),
    Case("an empty chunk between", (b"ab", b"", b"cd"), 1, 2),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_window_of_a_body_held_in_chunks_reads_as_of_the_joined_body(case: Case, backend: str) -> None:
    host = new_host(backend)
    plugin = host.load(H.PluginConfig(name="w"), window_guest(case.start, case.max_size))
    s = C.Chain([plugin]).new_stream()
    out = s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), False)
    for i, chunk in enumerate(case.chunks):
        out += s.recv_request_data(chunk, i == len(case.chunks) - 1)
    sent = b"".join(o.data for o in out if isinstance(o, C.SendData) and o.target == C.Target.UPSTREAM)
    whole = b"".join(case.chunks)
    window = whole[case.start : case.start + case.max_size]
    assert sent == len(whole).to_bytes(4, "little") + bytes(4) + bytes([0]) + window  # length, flags, OK, window
