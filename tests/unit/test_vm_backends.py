"""meshplug.agent.vm: the fast (C) backend agrees with the public wasmtime-py API on the same guest --
argument/result encodings, host functions, guest memory, traps, CPU budget, host exceptions -- and so does the
same module compiled by the baseline tier (Winch, loaded from its artifact as the operator's push brings it)."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from meshplug import compiled, errors, native
from meshplug.agent import vm

TIERS = tuple(compiled.Tier) if compiled.baseline_available() else (compiled.Tier.OPTIMIZED,)

WAT = """
(module
  (import "env" "mix" (func $mix (param i32 i64) (result i64)))
  (import "env" "boom" (func $boom))
  (import "env" "poke" (func $poke (param i32)))
  (memory (export "memory") 1 4)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "wide") (param i64) (result i64) (i64.mul (local.get 0) (i64.const 3)))
  (func (export "two") (result i32 i64) (i32.const 7) (i64.const 8))
  (func (export "many") (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 7)))
  (func (export "via_host") (param i32 i64) (result i64) (call $mix (local.get 0) (local.get 1)))
  (func (export "store") (param i32 i32) (i32.store (local.get 0) (local.get 1)))
  (func (export "load") (param i32) (result i32) (i32.load (local.get 0)))
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0)))
  (func (export "poke_after_grow") (param i32)
    (drop (memory.grow (i32.const 1)))
    (i32.store (local.get 0) (i32.const 0x64636261))
    (call $poke (local.get 0)))
  (func (export "trap") unreachable)
  (func (export "spin") (loop $l (br $l)))
  (func (export "raise") (call $boom))
  (func (export "mark_a") (param i32) (i32.store (i32.const 500) (local.get 0)))
  (func (export "mark_b") (param i32) (i32.store (i32.const 504) (i32.add (local.get 0) (i32.const 1))))
  (func (export "trap1") (param i32) unreachable)
  (func (export "raise1") (param i32) (call $boom))
)
"""


@functools.cache
def module_bytes() -> bytes:
    return bytes(wasmtime.wat2wasm(WAT))


def baseline_runtime() -> tuple[vm.Runtime, Path]:
    """A runtime whose artifact cache holds the module's baseline artifact (as the operator's push leaves it)."""
    root = Path(tempfile.mkdtemp(prefix="meshplug-tier-"))
    engine = compiled.new_engine(compiled.Tier.BASELINE)
    compiled.ArtifactCache(engine, settings=compiled.BASELINE_FINGERPRINT, root=root).load(module_bytes())
    return vm.Runtime(cache_root=root), root


class Harness:
    def __init__(
        self,
        backend: str,
        *,
        deadline_ms: int = 1000,
        tier: compiled.Tier = compiled.Tier.OPTIMIZED,
        memory_cap: int = 3 * 65_536,
    ) -> None:
        self.root: Path | None = None
        if tier is compiled.Tier.BASELINE:
            self.runtime, self.root = baseline_runtime()
        else:
            self.runtime = vm.Runtime(precompiled=False)
        module, _, loaded_tier = self.runtime.load_tiered(module_bytes())
        assert loaded_tier is tier
        self.seen: list[tuple[int, ...]] = []
        self.poked: list[bytes] = []
        host: dict[str, Callable[..., int | None]] = {"mix": self.mix, "boom": self.boom, "poke": self.poke}
        imports = [(d, host[d.name]) for d in self.runtime.imports(module)]
        self.guest = self.runtime.new_guest(
            module, imports, backend=backend, deadline_ms=deadline_ms, memory_cap=memory_cap
        )
        self.guest.instantiate()
        self.guest.set_deadline_ms(deadline_ms)

    def mix(self, a: int, b: int) -> int:
        self.seen.append((a, b))
        return a + b  # wraps to u64 on the way back

    def boom(self) -> None:
        raise LookupError("host function failed on purpose")

    def poke(self, ptr: int) -> None:
        # reads memory the guest just grew: the host's view must follow the growth
        self.poked.append(self.guest.read(ptr, 4))

    def call(self, name: str, *args: int) -> int:
        fn = self.guest.func(name)
        assert fn is not None, name
        return fn(*args)

    def close(self) -> None:
        self.runtime.close()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def replaced(guest: vm.Guest) -> list[object]:
    """replace_into: target[:stop] = guest bytes (shorter, longer, past the end, empty; a fault changes nothing)."""
    out: list[object] = []
    cases = ((300, 4, 2), (300, 2, 6), (300, 16, 99), (300, 0, 3), (65_535, 2, 1), (300, 10, 10), (300, 3, 10))
    cases += ((300, 0, 0), (300, 5, 0), (300, 0, 10), (300, 12, 10))
    for ptr, size, stop in cases:
        target = bytearray(b"0123456789")
        try:
            guest.replace_into(ptr, size, target, stop)
        except vm.MemoryFault:
            out.append("fault")
        out.append(bytes(target))
    for size in (4, 10, 16):  # a buffer someone holds a view of: resized, it is refused; same size, written
        target = bytearray(b"0123456789")
        view = memoryview(target)
        try:
            guest.replace_into(300, size, target, 10)
        except BufferError:
            out.append("exported")
        view.release()
        out.append(bytes(target))
    return out


def lowered(guest: vm.Guest) -> list[object]:
    """read_lower: ASCII letters lowered, every other byte (incl. non-ASCII) as it is; empty; out of bounds."""
    guest.write(600, b"X-Hd\xc4Z@[`{")
    out: list[object] = [guest.read_lower(600, 10), guest.read_lower(600, 0)]
    try:
        guest.read_lower(65_535, 2)
        out.append("read_lower ok")
    except vm.MemoryFault:
        out.append("read_lower fault")
    return out


def run_script(backend: str, tier: compiled.Tier = compiled.Tier.OPTIMIZED) -> list[object]:
    """One fixed sequence of operations; every observable outcome, in order."""
    h = Harness(backend, tier=tier)
    out: list[object] = []
    try:
        out.append(h.guest.func("absent"))
        out.append(h.call("add", 0xFFFF_FFFF, 1))
        out.append(h.call("add", 1 << 31, 5))
        out.append(h.call("wide", (1 << 63) + 7))
        out.append(h.call("two"))  # more results than parameters: the first result
        out.append(h.call("many", 1, 0, 0, 0, 0, 0, 0, 0xFFFF_FFFF))
        out.append(h.call("via_host", 0xFFFF_FFFE, (1 << 64) - 1))
        out.append(list(h.seen))
        h.guest.write(100, b"\x01\x02\x03\x04")
        out.append(h.call("load", 100))
        h.call("store", 200, 0xDEADBEEF)
        out.append(h.guest.read(200, 4))
        out.append(h.guest.read_u32(200))
        h.guest.write_u32(300, 0x1_0000_0005)
        h.guest.write_u64(308, (1 << 64) + 9)
        out.append(h.guest.read(300, 16))
        out += replaced(h.guest)
        out += lowered(h.guest)
        out.append(h.guest.memory_size())
        for ptr, size in ((65_535, 2), (-1, 1), (1 << 32, 1)):
            try:
                h.guest.read(ptr, size)
                out.append("read ok")
            except vm.MemoryFault:
                out.append("fault")
        out.append(h.call("grow", 1))
        out.append(h.guest.memory_size())
        h.guest.write(65_536 + 10, b"late")
        out.append(h.guest.read(65_536 + 10, 4))
        h.call("poke_after_grow", 3 * 65_536 - 4)  # grows to 3 pages, stores there, calls the host
        out.append(list(h.poked))
        out.append(h.call("grow", 1))  # a 4th page: within the module's maximum, past the store's cap: refused
        for name in ("trap", "raise"):
            try:
                h.call(name)
                out.append(f"{name}: returned")
            except errors.PluginRuntimeError as exc:
                out.append(f"{name}: {exc.reason}")
            except LookupError as exc:
                out.append(f"{name}: host {exc}")
            out.append(h.call("add", 2, 3))  # the instance keeps working after a trap
        out.append(h.guest.depth)
    finally:
        h.close()
    return out


def test_backends_agree_on_every_observable_outcome() -> None:
    fast, public = run_script("fast"), run_script("public")
    assert fast == public
    for tier in TIERS[1:]:  # the baseline tier's code behaves the same, on both backends
        assert run_script("fast", tier) == run_script("public", tier) == fast
    assert 0xFFFF_FFFF in fast  # memory.grow past the cap
    wide = (((1 << 63) + 7) * 3) % (1 << 64)
    assert fast[:8] == [None, 0, (1 << 31) + 5, wide, 7, 0, 0xFFFF_FFFD, [(0xFFFF_FFFE, (1 << 64) - 1)]]
    assert "trap: trap" in fast and "raise: host host function failed on purpose" in fast
    assert [b"abcd"] in fast
    assert b"x-hd\xc4z@[`{" in fast and "read_lower fault" in fast
    assert b"\x05\x00\x00\x0023456789" in fast and b"\x05\x006789" in fast  # replace_into, both ways


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("backend", vm.BACKENDS)
def test_a_loop_exhausts_the_budget_and_the_next_call_gets_a_fresh_one(backend: str, tier: compiled.Tier) -> None:
    h = Harness(backend, deadline_ms=60, tier=tier)
    try:
        for _ in range(2):
            with pytest.raises(errors.PluginRuntimeError) as info:
                h.call("spin")
            assert info.value.reason == "cpu_budget"
            assert h.call("add", 20, 22) == 42
    finally:
        h.close()


def test_the_fast_backend_is_the_pinned_one() -> None:
    """Fast = the pinned wasmtime and the built _wasmcall extension (meshplug.native); without them the host
    serves with the public backend."""
    assert vm.WASMTIME_VERSION == vm.PINNED_WASMTIME, f"wasmtime {vm.WASMTIME_VERSION} is not the pinned one"
    assert native.STATUS.extension == vm.FAST_AVAILABLE
    h = Harness("fast")
    try:
        assert h.guest.backend == ("fast" if native.STATUS.extension else "public")
    finally:
        h.close()


def test_an_import_declared_twice_links_once() -> None:
    wat = """(module
      (import "env" "twice" (func $a (param i32) (result i32)))
      (import "env" "twice" (func $b (param i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "both") (param i32) (result i32) (i32.add (call $a (local.get 0)) (call $b (local.get 0)))))"""
    for backend in vm.BACKENDS:
        runtime = vm.Runtime(precompiled=False)
        module = runtime.load(bytes(wasmtime.wat2wasm(wat)))
        guest = runtime.new_guest(module, [(d, lambda x: x + 1) for d in runtime.imports(module)], backend=backend)
        guest.instantiate()
        fn = guest.func("both")
        assert fn is not None and fn(10) == 22
        runtime.close()


# call_each: (exports in order, argument, what it returns or raises, index that failed, words at 500 and 504)
CALL_EACH = [
    (("mark_a", "mark_b"), 7, 2, None, (7, 8)),
    (("mark_a", "mark_b"), 0xFFFF_FFFF, 2, None, (0xFFFF_FFFF, 0)),  # wraps as an i32 (the general conversion)
    (("mark_b", "mark_a"), (1 << 30) - 1, 2, None, ((1 << 30) - 1, 1 << 30)),  # the one-digit fast path's edge
    (("mark_a", "trap1", "mark_b"), 9, errors.PluginRuntimeError, 1, (9, 0)),  # the rest is skipped
    (("raise1", "mark_a"), 5, LookupError, 0, (0, 0)),  # a host function's exception, unchanged
    ((), 3, 0, None, (0, 0)),
]


@pytest.mark.parametrize("backend", vm.BACKENDS)
@pytest.mark.parametrize(("names", "arg", "outcome", "failed_at", "words"), CALL_EACH)
def test_call_each_calls_in_order_and_stops_at_the_first_failure(  # noqa: PLR0917 -- one row of the table
    backend: str, names: tuple[str, ...], arg: int, outcome: object, failed_at: int | None, words: tuple[int, int]
) -> None:
    h = Harness(backend)
    try:
        fns = tuple(h.guest.func(n) for n in names)
        assert all(fn is not None for fn in fns)
        if isinstance(outcome, type):
            with pytest.raises(outcome):
                h.guest.call_each(fns, arg)  # type: ignore[arg-type]
            assert h.guest.failed_index() == failed_at
        else:
            assert h.guest.call_each(fns, arg) == outcome  # type: ignore[arg-type]
        assert (h.guest.read_u32(500), h.guest.read_u32(504)) == words
        assert h.guest.depth == 0
        assert h.call("add", 2, 3) == 5  # the instance keeps working after a failure
    finally:
        h.close()


SPANS_WAT = """(module
  (import "env" "spans" (func $spans (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "X-HdAb")
  (global $early (mut i32) (i32.const 0))
  (func $start
    (global.set $early (call $spans (i32.const 3) (i32.const 16) (i32.const 2) (i32.const 18) (i32.const 2))))
  (start $start)
  (func (export "early") (result i32) (global.get $early))
  (func (export "call") (param i32 i32 i32 i32 i32) (result i32)
    (call $spans (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4))))"""

# a host function taking (enum, header name, value) as the ABI's header shims do: (args, result, what it was given)
SPANS = [
    ((1, 16, 4, 20, 2), 42, (1, b"x-hd", b"Ab")),  # the name lowercased as it is read, the value as it is
    ((5, 16, 0, 70_000, 0), 42, (5, b"", b"")),  # empty spans: b"", never bounds-checked
    ((1, 65_534, 4, 16, 1), 99, None),  # outside memory: MemoryFault -> its listed result, the function not called
    ((2, 16, 1, 65_535, 2), 99, None),  # the second span outside: the same
    ((6, 65_534, 4, 16, 1), 7, None),  # the guard answers first, nothing read (Envoy checks the enum first)
    ((0xFFFF_FFFF, 16, 1, 16, 1), 7, None),  # the guard compares unsigned
]


@pytest.mark.parametrize("backend", vm.BACKENDS)
@pytest.mark.parametrize(("args", "result", "given"), SPANS)
def test_a_host_functions_spans_are_read_by_the_backend(
    backend: str, args: tuple[int, ...], result: int, given: tuple[object, ...] | None
) -> None:
    runtime = vm.Runtime(precompiled=False)
    seen: list[tuple[object, ...]] = []

    def spans(mtype: int, key: bytes, value: bytes) -> int:
        seen.append((mtype, key, value))
        return 42

    impl = vm.Faulting(spans, ((vm.MemoryFault, 99),), ((1, True), (3, False)), (5, 7))
    try:
        module = runtime.load(bytes(wasmtime.wat2wasm(SPANS_WAT)))
        guest = runtime.new_guest(module, [(d, impl) for d in runtime.imports(module)], backend=backend)
        guest.instantiate()  # the start function's call reads before the instance's memory export is known
        early, call = guest.func("early"), guest.func("call")
        assert early is not None and call is not None
        assert (early(), seen) == (42, [(3, b"x-", b"Hd")])
        seen.clear()
        assert call(*args) == result
        assert seen == ([given] if given is not None else [])
    finally:
        runtime.close()
