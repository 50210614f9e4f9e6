"""meshplug.wasminline: each construct a callee can hold, inlined, computes what the original computes (both
compiled by wasmtime and called here); what the pass does not decode leaves the module's bytes as they were."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import wasmtime

from meshplug import compiled, limits, wasminline


@dataclass(frozen=True)
class Case:
    name: str
    wat: str
    #: (export, arguments, expected result) called on the original and on the inlined module
    calls: Sequence[tuple[str, tuple[int, ...], object]]
    #: call sites the pass is expected to inline (0: the module must come back unchanged)
    inlined: int


CASES = [
    Case(
        "branch to the callee's outer label with a value",
        """(module
          (func $clamp (param i32) (result i32)
            (drop (br_if 0 (i32.const 100) (i32.gt_s (local.get 0) (i32.const 100))))
            (if (i32.lt_s (local.get 0) (i32.const 0)) (then (br 1 (i32.const 0))))
            (local.get 0))
          (func (export "f") (param i32) (result i32) (i32.add (call $clamp (local.get 0)) (i32.const 1))))""",
        [("f", (5,), 6), ("f", (500,), 101), ("f", (-4,), 1)],
        1,
    ),
    Case(
        "return inside nested blocks and a loop",
        """(module
          (func $first_over (param $n i32) (param $limit i32) (result i32) (local $i i32)
            (block $out
              (loop $next
                (block $inner
                  (if (i32.gt_u (i32.mul (local.get $i) (local.get $i)) (local.get $limit))
                    (then (return (local.get $i)))))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $next (i32.lt_u (local.get $i) (local.get $n)))))
            (i32.const -1))
          (func (export "f") (param i32 i32) (result i32)
            (i32.add (call $first_over (local.get 0) (local.get 1)) (i32.const 1000))))""",
        [("f", (10, 20), 1005), ("f", (3, 20), 999)],
        1,
    ),
    Case(
        "br_table with the function label among its targets",
        """(module
          (func $pick (param i32) (result i32)
            block $b (result i32)
              block $a (result i32)
                i32.const 5
                local.get 0
                br_table $a $b 2
              end
              i32.const 10
              i32.add
              return
            end
            i32.const 20
            i32.add)
          (func (export "f") (param i32) (result i32)
            (block (result i32) (call $pick (local.get 0)))
            (i32.const 7) (i32.add)))""",
        [("f", (0,), 22), ("f", (1,), 32), ("f", (2,), 12), ("f", (9,), 12)],
        1,
    ),
    Case(
        "declared locals read 0 on each inlined call in a loop",
        """(module
          (func $once (param i32) (result i32) (local $acc i32) (local $wide i64) (local $x f64)
            (local.set $acc (i32.add (local.get $acc) (local.get 0)))
            (local.set $wide (i64.add (local.get $wide) (i64.const 1)))
            (local.set $x (f64.add (local.get $x) (f64.const 0.5)))
            (i32.add (local.get $acc)
              (i32.add (i32.wrap_i64 (local.get $wide)) (i32.trunc_f64_s (f64.mul (local.get $x) (f64.const 2))))))
          (func (export "f") (param $n i32) (result i32) (local $sum i32)
            (loop $l
              (local.set $sum (i32.add (local.get $sum) (call $once (i32.const 3))))
              (local.set $sum (i32.add (local.get $sum) (call $once (i32.const 4))))
              (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
            (local.get $sum)))""",
        [("f", (3,), 3 * (5 + 6))],
        2,
    ),
    Case(
        "a trap inside an inlined callee traps the same way",
        """(module
          (func $div (param i32 i32) (result i32) (i32.div_u (local.get 0) (local.get 1)))
          (func $boom (unreachable))
          (func (export "div") (param i32 i32) (result i32) (call $div (local.get 0) (local.get 1)))
          (func (export "boom") (param i32) (result i32) (if (local.get 0) (then (call $boom))) (i32.const 1)))""",
        [("div", (7, 2), 3), ("div", (7, 0), wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO), ("boom", (0,), 1),
         ("boom", (1,), wasmtime.TrapCode.UNREACHABLE)],
        2,
    ),
    Case(
        "multi-value results with a type [] -> [i32 i32] in the module",
        """(module
          (type $pair (func (result i32 i32)))
          (func $swap (param i32 i32) (result i32 i32) (local.get 1) (local.get 0))
          (func $unused (type $pair) (i32.const 0) (i32.const 0))
          (func (export "f") (param i32 i32) (result i32)
            (call $swap (local.get 0) (local.get 1)) (i32.sub)))""",
        [("f", (10, 3), 3 - 10)],
        1,
    ),
    Case(
        "multi-value results without such a type: the call stays",
        """(module
          (func $swap (param i32 i32) (result i32 i32) (local.get 1) (local.get 0))
          (func (export "f") (param i32 i32) (result i32)
            (call $swap (local.get 0) (local.get 1)) (i32.sub)))""",
        [("f", (10, 3), 3 - 10)],
        0,
    ),
    Case(
        "a chain of small callees, recursion left alone",
        """(module
          (func $inc (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
          (func $inc2 (param i32) (result i32) (call $inc (call $inc (local.get 0))))
          (func $fact (param i32) (result i32)
            (if (result i32) (i32.le_u (local.get 0) (i32.const 1))
              (then (i32.const 1))
              (else (i32.mul (local.get 0) (call $fact (i32.sub (local.get 0) (i32.const 1)))))))
          (func (export "f") (param i32) (result i32)
            (i32.add (call $inc2 (local.get 0)) (call $fact (i32.const 5)))))""",
        [("f", (1,), 3 + 120)],
        # inc twice into inc2, inc2 (with them) once into f, fact into f once (its own call of itself stays)
        4,
    ),
    Case(
        "memory64 and multi-memory memargs, bulk memory, SIMD",
        """(module
          (memory $a 1)
          (memory $b i64 1)
          (func $put (param i64 i32) (i32.store $b offset=8 (local.get 0) (local.get 1)))
          (func $get (param i64) (result i32) (i32.load $b offset=8 (local.get 0)))
          (func $lanes (param i32) (result i32)
            (i32x4.extract_lane 2 (i32x4.add (i32x4.splat (local.get 0)) (v128.const i32x4 1 2 3 4))))
          (func (export "f") (param i32) (result i32)
            (call $put (i64.const 16) (local.get 0))
            (memory.fill $a (i32.const 0) (i32.const 7) (i32.const 4))
            (i32.add (call $get (i64.const 16))
              (i32.add (i32.load8_u $a (i32.const 3)) (call $lanes (local.get 0))))))""",
        [("f", (5,), 5 + 7 + 8)],
        3,
    ),
    Case(
        "block types naming a type index past 63 (a two-byte s33)",
        "(module "
        + " ".join(f"(type (func (param {' '.join(['i32'] * (i % 5 + 1))}) (result f{32 + 32 * (i % 2)})))"
                   for i in range(70))
        + """ (type $pair (func (result i32 i32)))
          (type $take (func (param i32) (result i32)))
          (func $swap (param i32 i32) (result i32 i32) (local.get 1) (local.get 0))
          (func $unused (type $pair) (i32.const 0) (i32.const 0))
          (func $twice (param i32) (result i32) (local.get 0) (block (type $take) (i32.add (i32.const 1))))
          (func (export "f") (param i32 i32) (result i32)
            (call $swap (local.get 0) (local.get 1)) (i32.sub) (call $twice)))""",
        [("f", (10, 3), 3 - 10 + 1)],
        2,
    ),
    Case(
        "exception handling in the caller is decoded; a callee that throws stays called",
        """(module
          (tag $oops (param i32))
          (func $thrower (param i32) (result i32) (if (local.get 0) (then (throw $oops (local.get 0)))) (i32.const 0))
          (func $add1 (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
          (func (export "f") (param i32) (result i32)
            (block $caught (result i32)
              (try_table (result i32) (catch $oops $caught)
                (call $add1 (call $thrower (local.get 0)))))))""",
        [("f", (0,), 1), ("f", (5,), 5)],
        1,
    ),
]  # fmt: skip


def _engine() -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.wasm_memory64 = True
    cfg.wasm_multi_memory = True
    cfg.wasm_exceptions = True
    return wasmtime.Engine(cfg)


def _call(engine: wasmtime.Engine, data: bytes, name: str, args: tuple[int, ...]) -> object:
    store = wasmtime.Store(engine)
    instance = wasmtime.Instance(store, wasmtime.Module(engine, data), [])
    func = instance.exports(store)[name]
    assert isinstance(func, wasmtime.Func)
    try:
        return func(store, *args)
    except wasmtime.Trap as trap:
        return trap.trap_code


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_inlined_module_computes_the_same(case: Case) -> None:
    original = bytes(wasmtime.wat2wasm(case.wat))
    out, stats = wasminline.inline_with_stats(original)
    assert stats.inlined == case.inlined, stats
    if case.inlined == 0:
        assert out is original
    engine = _engine()
    for name, args, expected in case.calls:
        assert _call(engine, original, name, args) == expected
        assert _call(engine, out, name, args) == expected


def _with_opcode(opcode: bytes) -> bytes:
    """A module whose callee holds ``opcode`` (patched over a nop): the pass must not decode past it."""
    wat = """(module
      (func $small (result i32) (nop) (i32.const 1))
      (func (export "f") (result i32) (call $small)))"""
    data = bytes(wasmtime.wat2wasm(wat))
    at = data.index(b"\x01\x41\x01\x0b")  # nop, i32.const 1, end
    return data[:at] + opcode + data[at + 1 :]


@pytest.mark.parametrize(
    ("opcode", "reason"),
    [
        (b"\xc5", "unknown opcode 0xc5"),
        (b"\xfb\x00", "unknown opcode 0xfb"),
        (b"\xfc\x20", "unknown opcode 0xfc 32"),
        (b"\xfe\x7f", "unknown opcode 0xfe 127"),
    ],
)
def test_an_unknown_opcode_leaves_the_module_as_it_was(opcode: bytes, reason: str) -> None:
    data = _with_opcode(opcode)
    out, stats = wasminline.inline_with_stats(data)
    assert out is data
    assert stats.skipped == reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\0asm\x01\0\0\0", "no code section"),
        (b"\0asm\x0d\0\x01\0", "not a core wasm module"),
        (bytes(wasmtime.wat2wasm("(module (func))"))[:-3], "section runs past the end"),
    ],
)
def test_what_is_not_a_sound_module_is_left_alone(data: bytes, reason: str) -> None:
    out, stats = wasminline.inline_with_stats(data)
    assert out is data
    assert stats.skipped == reason


def test_a_module_over_the_size_limit_is_not_decoded() -> None:
    data = bytes(wasmtime.wat2wasm(CASES[0].wat))
    big = data + b"\0" * limits.INLINE_MAX_MODULE_BYTES  # a custom section's worth of padding is enough
    out, stats = wasminline.inline_with_stats(big)
    assert out is big
    assert stats.skipped.startswith("module over")


def test_tail_calls_and_exception_handling_keep_a_callee_out() -> None:
    wat = """(module
      (func $inner (param i32) (result i32) (local.get 0))
      (func $tail (param i32) (result i32) (return_call $inner (local.get 0)))
      (func (export "f") (param i32) (result i32) (call $tail (local.get 0))))"""
    cfg = wasmtime.Config()
    cfg.wasm_tail_call = True
    engine = wasmtime.Engine(cfg)
    data = bytes(wasmtime.wat2wasm(wat))
    out, stats = wasminline.inline_with_stats(data)
    assert stats.inlined == 0  # $tail holds a tail call; $inner is called only by it, as a tail call
    assert _call(engine, out, "f", (4,)) == 4


def test_the_optimized_cache_compiles_the_inlined_form_and_the_fingerprint_names_the_pass(tmp_path: object) -> None:
    assert ("inline", wasminline.SETTINGS) in compiled.ENGINE_SETTINGS
    assert all(k != "inline" for k, _ in compiled.BASELINE_SETTINGS)
    data = bytes(wasmtime.wat2wasm(CASES[0].wat))
    engine = compiled.new_engine()
    module = compiled.compile_module(engine, data, inline=True)
    # the inlined form's code section is larger than the original's: its machine code is the transformed one
    plain = compiled.compile_module(engine, data, inline=False)
    assert module.serialize() != plain.serialize()


def test_wasmtime_refusing_the_inlined_form_falls_back_to_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(wasmtime.wat2wasm(CASES[0].wat))
    monkeypatch.setattr(wasminline, "inline", lambda _data: b"\0asm\x01\0\0\0\x0a\x01\x00\xff")
    engine = compiled.new_engine()
    module = compiled.compile_module(engine, data, inline=True)
    assert [e.name for e in module.exports] == ["f"]
