"""Shared data CAS numbers as Envoy's (proxy-wasm-cpp-host SharedData::nextCas): 32 bits, 1..0xffffffff, then 1
again -- never 0 (which proxy_set_shared_data reads as "no CAS") and never past what the ABI gives a guest (a u32).
Both stores: one process's (hostapi.SharedData) and the workers' shared memory (meshplug/agent/_shared.c), each
started just before the wrap (the counter set in the object, or in the store's header word that counts sets)."""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from meshplug import native
from meshplug.agent import hostapi

NEAR_WRAP = 0xFFFF_FFFE
_NATIVE = native.check()
_U64 = struct.Struct("<Q")


def in_process(_: Path) -> hostapi.SharedData:
    data = hostapi.SharedData()
    data.last_cas = NEAR_WRAP
    return data


def _counter_offset(path: Path, data: hostapi.SharedData) -> int:
    """The header word of the store that counts its sets: the one that reads 1 after the first, 2 after the
    second (its offset depends on the size of the platform's pthread mutex before it)."""
    candidates: set[int] | None = None
    for n in (1, 2):
        assert data.set("probe", f"k{n}".encode(), b"v", 0)
        head = path.read_bytes()[:4096]
        found = {off for off in range(0, len(head) - 8, 8) if _U64.unpack_from(head, off)[0] == n}
        candidates = found if candidates is None else candidates & found
    assert candidates is not None and len(candidates) == 1, candidates
    return candidates.pop()


def across_workers(tmp: Path) -> hostapi.SharedData:
    if not _NATIVE.extension:
        pytest.skip(f"the workers' store is the native build's: {_NATIVE.reason}")
    shared = importlib.import_module("meshplug.agent._shared")
    path = tmp / "store"
    data = hostapi.SharedData(shared.Store(str(path), 1 << 20, True))
    offset = _counter_offset(path, data)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, _U64.pack(NEAR_WRAP), offset)  # the store is a MAP_SHARED file: the map sees it
    finally:
        os.close(fd)
    return data


@pytest.mark.parametrize("make", [in_process, across_workers], ids=["one process", "workers"])
def test_cas_wraps_past_32_bits_to_1_as_envoys(make: Callable[[Path], hostapi.SharedData], tmp_path: Path) -> None:
    data = make(tmp_path)

    def cas(key: bytes) -> int:
        found = data.get("vm", key)
        assert found is not None
        return found[1]

    assert data.set("vm", b"a", b"1", 0)
    assert cas(b"a") == 0xFFFF_FFFF
    assert data.set("vm", b"a", b"2", 0xFFFF_FFFF)  # the guest's u32 matches: stored
    assert cas(b"a") == 1  # wrapped past 0
    assert not data.set("vm", b"a", b"3", 0xFFFF_FFFF)  # a stale CAS is a mismatch
    assert data.set("vm", b"a", b"3", 1)
    assert cas(b"a") == 2 and data.get("vm", b"a") == (b"3", 2)
