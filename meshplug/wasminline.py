"""Inline small functions into their callers, wasm to wasm, before the optimized tier compiles a module.

Called by meshplug.compiled (`prepare`) on the bytes of a module about to be compiled by the agents' optimized
engine (the agent's compile and the operator's precompile alike, so their artifacts match; the pass and its
`VERSION` are part of the engine settings and so of the artifact key). Why: wasmtime's stock library (no Cranelift
inlining through its C API) pays a function entry (frame, epoch check) per call, and the AssemblyScript runtime
calls tiny functions (`__retain`, `__release`, ...) several times per string compare: V8 in Envoy does not inline
them either, so inlining them here makes the agent cheaper than Envoy on the same module.

What it does, semantics-preserving: a direct ``call f`` of a defined function whose body (itself with its small
callees inlined first, depth-first over the call graph, never recursively) is at most
`limits.INLINE_MAX_CALLEE_INSTRUCTIONS` instructions becomes, in place::

    local.set $pN-1 ... local.set $p0      ;; the arguments, into fresh locals of the caller
    <zero> local.set $l0 ...               ;; the callee's declared locals, zeroed (they read 0 on each entry)
    block (type of f's results)            ;; f's implicit function label: branch depths inside are unchanged
      <f's body, locals renumbered, `return` -> `br <depth>`>
    end

One set of fresh locals per (caller, callee) pair. Imports, exports, tables, element and data segments, the start
function, custom sections and every function itself are kept as they are: only the code section changes, and
only bodies that call something inlined. Callees that hold tail calls or exception handling are not inlined.

Anything the decoder does not know (an opcode outside its table: MVP, sign extension, saturating truncation,
bulk memory, reference types, typed function references, SIMD and relaxed SIMD, threads, tail calls, exception
handling; GC types; a malformed body) gives up on the whole module: `inline` returns the original bytes, and so
does a module over `limits.INLINE_MAX_MODULE_BYTES` or one that would grow past the growth limits. wasmtime
validates the result when it compiles it; the caller compiles the original if it refuses (meshplug.compiled).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshplug import leb128, limits

#: the pass's version and the limits that shape its output: part of the optimized tier's engine settings
#: (meshplug.compiled), so artifacts made by another version of the pass, or with other limits, have another key
VERSION = "1"
SETTINGS = ",".join(
    str(v)
    for v in (
        VERSION,
        limits.INLINE_MAX_CALLEE_INSTRUCTIONS,
        limits.INLINE_MAX_EXPANDED_INSTRUCTIONS,
        limits.INLINE_MAX_DEPTH,
        limits.INLINE_MAX_NEW_LOCALS,
        limits.INLINE_MAX_LOCALS,
        limits.INLINE_MAX_FUNCTION_GROWTH,
        limits.INLINE_MAX_MODULE_BYTES,
        limits.INLINE_MAX_MODULE_GROWTH_PCT,
        limits.INLINE_MIN_MODULE_GROWTH,
    )
)

_SECTION_TYPE = 1
_SECTION_IMPORT = 2
_SECTION_FUNCTION = 3
_SECTION_CODE = 10

#: value types of the core spec and reference types (GC's typed references are not decoded: give up)
_VALTYPES = frozenset((0x7F, 0x7E, 0x7D, 0x7C, 0x7B, 0x70, 0x6F))
#: the instruction that pushes each value type's zero (a declared local's initial value)
_ZERO: dict[int, bytes] = {
    0x7F: b"\x41\x00",
    0x7E: b"\x42\x00",
    0x7D: b"\x43" + bytes(4),
    0x7C: b"\x44" + bytes(8),
    0x7B: b"\xfd\x0c" + bytes(16),
    0x70: b"\xd0\x70",
    0x6F: b"\xd0\x6f",
}

# immediates of the one-byte opcodes (the ones that need more than a table entry are handled in `_scan`)
_NONE, _U32, _U32x2, _MEMARG, _BLOCK, _I32, _I64, _F32, _F64, _BYTE, _HEAP = range(11)
_IMMEDIATES: dict[int, int] = {
    0x00: _NONE, 0x01: _NONE, 0x02: _BLOCK, 0x03: _BLOCK, 0x04: _BLOCK, 0x05: _NONE,
    0x0B: _NONE, 0x0C: _U32, 0x0D: _U32, 0x0F: _NONE, 0x10: _U32, 0x11: _U32x2,
    0x14: _U32, 0x1A: _NONE, 0x1B: _NONE,
    0x20: _U32, 0x21: _U32, 0x22: _U32, 0x23: _U32, 0x24: _U32, 0x25: _U32, 0x26: _U32,
    0x41: _I32, 0x42: _I64, 0x43: _F32, 0x44: _F64,
    0xD0: _HEAP, 0xD1: _NONE, 0xD2: _U32, 0xD3: _NONE, 0xD4: _NONE, 0xD5: _U32, 0xD6: _U32,
    # legacy and new exception handling, tail calls: decoded, but a callee holding one is not inlined
    0x06: _BLOCK, 0x07: _U32, 0x08: _U32, 0x09: _U32, 0x0A: _NONE, 0x18: _U32, 0x19: _NONE,
    0x12: _U32, 0x13: _U32x2, 0x15: _U32,
}  # fmt: skip
_IMMEDIATES.update(dict.fromkeys(range(0x28, 0x3F), _MEMARG))  # loads and stores
_IMMEDIATES.update(dict.fromkeys((0x3F, 0x40), _U32))  # memory.size/grow (a memory index since multi-memory)
_IMMEDIATES.update(dict.fromkeys(range(0x45, 0xC5), _NONE))  # numeric, sign extension
#: opcodes that keep a function from being inlined (exception handling, tail calls: control leaves it in ways
#: a block cannot express)
_NOT_INLINABLE = frozenset((0x06, 0x07, 0x08, 0x09, 0x0A, 0x18, 0x19, 0x1F, 0x12, 0x13, 0x15))
#: 0xFC sub-opcodes -> number of u32 immediates (saturating truncation, bulk memory, tables)
_FC_U32S: dict[int, int] = {
    0: 0, 1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0,
    8: 2, 9: 1, 10: 2, 11: 1, 12: 2, 13: 1, 14: 2, 15: 1, 16: 1, 17: 1,
}  # fmt: skip
#: 0xFE sub-opcodes (threads): 0x03 atomic.fence has one zero byte; 0x00-0x02 and 0x10-0x4E a memarg
_FE_MEMARG = frozenset((0x00, 0x01, 0x02, *range(0x10, 0x4F)))


class _GiveUp(Exception):
    """The module is outside what the pass decodes (or would grow too much): keep the original bytes."""


@dataclass(frozen=True)
class Stats:
    """What one run of the pass did (tests, benchmarks)."""

    #: call sites replaced by a callee's body
    inlined: int
    #: functions whose bodies changed
    functions: int
    #: code section size before and after
    code_before: int
    code_after: int
    #: why the module was left as it was ("" when it was not)
    skipped: str = ""


def _uleb(data: bytes, pos: int, end: int) -> tuple[int, int]:
    try:
        return leb128.decode(data, pos, end)
    except ValueError as exc:
        raise _GiveUp(str(exc)) from None


def _skip_sleb(data: bytes, pos: int, end: int, max_bytes: int) -> int:
    stop = pos + max_bytes
    while True:
        if pos >= end or pos >= stop:
            raise _GiveUp("bad signed LEB128")
        b = data[pos]
        pos += 1
        if not b & 0x80:
            return pos


def _sleb(value: int) -> bytes:
    """Signed LEB128 of a non-negative ``value`` (a block type's type index is an s33)."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value == 0 and not b & 0x40:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def _blocktype(data: bytes, pos: int, end: int) -> int:
    if pos >= end:
        raise _GiveUp("truncated block type")
    b = data[pos]
    if b == 0x40 or b in _VALTYPES:
        return pos + 1
    if b & 0xC0 == 0x40:  # a one-byte negative s33 that is no value type we know (GC reference types)
        raise _GiveUp(f"unknown block type 0x{b:02x}")
    return _skip_sleb(data, pos, end, 5)  # a type index (a non-negative s33)


def _memarg(data: bytes, pos: int, end: int) -> int:
    align, pos = _uleb(data, pos, end)
    if align & 0x40:  # multi-memory: a memory index follows
        _, pos = _uleb(data, pos, end)
    _, pos = _uleb(data, pos, end)  # offset (u64 for memory64)
    return pos


@dataclass(frozen=True)
class _Body:
    """One function's code: its declared locals, its instructions (through the final ``end``), and what the
    pass needs from them."""

    #: declared locals (after the parameters), one value type each
    locals: tuple[int, ...]
    code: bytes
    instructions: int
    #: (start, end, callee) of each direct call
    calls: tuple[tuple[int, int, int], ...]
    #: (start, end, opcode, index) of each local.get/set/tee
    local_ops: tuple[tuple[int, int, int, int], ...]
    #: (start, depth) of each `return`: depth = blocks open around it inside the body
    returns: tuple[tuple[int, int], ...]
    inlinable: bool


_Scanned = tuple[int, list[tuple[int, int, int]], list[tuple[int, int, int, int]], list[tuple[int, int]], bool]


def _scan(data: bytes, pos: int, end: int) -> _Scanned:  # noqa: PLR0912, PLR0915 - one opcode table walk
    """Decode the expression data[pos:end] (ending with the function's ``end``)."""
    calls: list[tuple[int, int, int]] = []
    local_ops: list[tuple[int, int, int, int]] = []
    returns: list[tuple[int, int]] = []
    inlinable = True
    depth = 0
    count = 0
    while pos < end:
        start = pos
        op = data[pos]
        pos += 1
        count += 1
        kind = _IMMEDIATES.get(op, -1)
        if op in _NOT_INLINABLE:
            inlinable = False
        if kind == _NONE:
            if op == 0x0B:
                if depth == 0:
                    if pos != end:
                        raise _GiveUp("code after the function's end")
                    return count, calls, local_ops, returns, inlinable
                depth -= 1
            elif op == 0x0F:
                returns.append((start, depth))

        elif kind == _U32:
            value, pos = _uleb(data, pos, end)
            if op == 0x10:
                calls.append((start, pos, value))
            elif op == 0x18:  # delegate ends its try block
                if depth == 0:
                    raise _GiveUp("delegate outside a try block")
                depth -= 1
            elif 0x20 <= op <= 0x22:
                local_ops.append((start, pos, op, value))
        elif kind == _BLOCK:
            pos = _blocktype(data, pos, end)
            depth += 1
        elif kind == _MEMARG:
            pos = _memarg(data, pos, end)
        elif kind == _U32x2:
            _, pos = _uleb(data, pos, end)
            _, pos = _uleb(data, pos, end)
        elif kind == _I32:
            pos = _skip_sleb(data, pos, end, 5)
        elif kind == _I64:
            pos = _skip_sleb(data, pos, end, 10)
        elif kind == _F32:
            pos += 4
        elif kind == _F64:
            pos += 8
        elif kind == _HEAP:
            if pos >= end or data[pos] not in (0x70, 0x6F):
                raise _GiveUp("unknown heap type")
            pos += 1
        elif op == 0x0E:  # br_table
            n, pos = _uleb(data, pos, end)
            for _ in range(n + 1):
                _, pos = _uleb(data, pos, end)
        elif op == 0x1C:  # select with types
            n, pos = _uleb(data, pos, end)
            for _ in range(n):
                if pos >= end or data[pos] not in _VALTYPES:
                    raise _GiveUp("unknown value type in select")
                pos += 1
        elif op == 0x1F:  # try_table: block type, then catch clauses
            pos = _blocktype(data, pos, end)
            n, pos = _uleb(data, pos, end)
            for _ in range(n):
                if pos >= end or data[pos] > 3:
                    raise _GiveUp("unknown catch clause")
                clause = data[pos]
                pos += 1
                if clause < 2:
                    _, pos = _uleb(data, pos, end)  # tag
                _, pos = _uleb(data, pos, end)  # label
            depth += 1
        elif op == 0xFC:
            sub, pos = _uleb(data, pos, end)
            if sub not in _FC_U32S:
                raise _GiveUp(f"unknown opcode 0xfc {sub}")
            for _ in range(_FC_U32S[sub]):
                _, pos = _uleb(data, pos, end)
        elif op == 0xFD:
            pos = _simd(data, pos, end)
        elif op == 0xFE:
            sub, pos = _uleb(data, pos, end)
            if sub == 0x03:
                pos += 1
            elif sub in _FE_MEMARG:
                pos = _memarg(data, pos, end)
            else:
                raise _GiveUp(f"unknown opcode 0xfe {sub}")
        else:
            raise _GiveUp(f"unknown opcode 0x{op:02x}")
    raise _GiveUp("function body without its end")


def _simd(data: bytes, pos: int, end: int) -> int:
    """Skip a 0xFD instruction's sub-opcode and immediates (SIMD, relaxed SIMD)."""
    sub, pos = _uleb(data, pos, end)
    if sub <= 11 or sub in (92, 93):  # loads and stores
        return _memarg(data, pos, end)
    if sub in (12, 13):  # v128.const, i8x16.shuffle
        return pos + 16
    if 21 <= sub <= 34:  # extract/replace lane
        return pos + 1
    if 84 <= sub <= 91:  # load/store lane
        return _memarg(data, pos, end) + 1
    if sub <= 0xFF or 0x100 <= sub <= 0x113:  # the rest of SIMD and relaxed SIMD take no immediate
        return pos
    raise _GiveUp(f"unknown opcode 0xfd {sub}")


def _body(data: bytes, pos: int, end: int) -> _Body:
    """Decode one code-section entry's payload data[pos:end]."""
    runs, pos = _uleb(data, pos, end)
    declared: list[int] = []
    for _ in range(runs):
        n, pos = _uleb(data, pos, end)
        if pos >= end or data[pos] not in _VALTYPES:
            raise _GiveUp("unknown local type")
        if len(declared) + n > limits.INLINE_MAX_LOCALS:
            raise _GiveUp("too many locals")
        declared.extend([data[pos]] * n)
        pos += 1
    code = data[pos:end]
    count, calls, local_ops, returns, inlinable = _scan(code, 0, len(code))
    return _Body(tuple(declared), code, count, tuple(calls), tuple(local_ops), tuple(returns), inlinable)


def _sections(data: bytes) -> list[tuple[int, int, int, int]]:
    """(id, header start, payload start, payload end) of each section."""
    if data[:8] != b"\0asm\x01\0\0\0":
        raise _GiveUp("not a core wasm module")
    out: list[tuple[int, int, int, int]] = []
    pos = 8
    while pos < len(data):
        sid = data[pos]
        size, start = _uleb(data, pos + 1, len(data))
        if start + size > len(data):
            raise _GiveUp("section runs past the end")
        out.append((sid, pos, start, start + size))
        pos = start + size
    return out


def _types(data: bytes, pos: int, end: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    n, pos = _uleb(data, pos, end)
    out: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for _ in range(n):
        if pos >= end or data[pos] != 0x60:
            raise _GiveUp("a type that is not a plain function type")
        pos += 1
        sig: list[tuple[int, ...]] = []
        for _ in range(2):
            k, pos = _uleb(data, pos, end)
            vals = data[pos : pos + k]
            if len(vals) != k or any(v not in _VALTYPES for v in vals):
                raise _GiveUp("unknown value type in a function type")
            sig.append(tuple(vals))
            pos += k
        out.append((sig[0], sig[1]))
    return out


def _skip_limits(data: bytes, pos: int, end: int) -> int:
    flags, pos = _uleb(data, pos, end)
    if flags > 7:
        raise _GiveUp("unknown limits")
    _, pos = _uleb(data, pos, end)
    if flags & 1:
        _, pos = _uleb(data, pos, end)
    return pos


def _imported_functions(data: bytes, pos: int, end: int) -> int:
    n, pos = _uleb(data, pos, end)
    funcs = 0
    for _ in range(n):
        for _ in range(2):  # module, name
            k, pos = _uleb(data, pos, end)
            pos += k
        if pos >= end:
            raise _GiveUp("truncated import")
        kind = data[pos]
        pos += 1
        if kind == 0x00:
            _, pos = _uleb(data, pos, end)
            funcs += 1
        elif kind == 0x01:  # table: reference type, limits
            if pos >= end or data[pos] not in (0x70, 0x6F):
                raise _GiveUp("unknown table type")
            pos = _skip_limits(data, pos + 1, end)
        elif kind == 0x02:
            pos = _skip_limits(data, pos, end)
        elif kind == 0x03:  # global: value type, mutability
            if pos + 1 >= end or data[pos] not in _VALTYPES:
                raise _GiveUp("unknown global type")
            pos += 2
        elif kind == 0x04:  # tag
            _, pos = _uleb(data, pos + 1, end)
        else:
            raise _GiveUp(f"unknown import kind {kind}")
    return funcs


class _Module:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sections = _sections(data)
        ids = {sid for sid, _, _, _ in self.sections}
        if _SECTION_CODE not in ids:
            raise _GiveUp("no code section")
        self.types: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        self.imported = 0
        self.func_types: list[int] = []
        self.bodies: list[_Body] = []
        for sid, _, start, end in self.sections:
            if sid == _SECTION_TYPE:
                self.types = _types(data, start, end)
            elif sid == _SECTION_IMPORT:
                self.imported = _imported_functions(data, start, end)
            elif sid == _SECTION_FUNCTION:
                n, pos = _uleb(data, start, end)
                for _ in range(n):
                    t, pos = _uleb(data, pos, end)
                    self.func_types.append(t)
            elif sid == _SECTION_CODE:
                n, pos = _uleb(data, start, end)
                for _ in range(n):
                    size, pos = _uleb(data, pos, end)
                    if pos + size > end:
                        raise _GiveUp("function body runs past the code section")
                    self.bodies.append(_body(data, pos, pos + size))
                    pos += size
        if len(self.bodies) != len(self.func_types):
            raise _GiveUp("function and code sections disagree")
        if any(t >= len(self.types) for t in self.func_types):
            raise _GiveUp("function type index out of range")

    def signature(self, func: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return self.types[self.func_types[func - self.imported]]

    def blocktype(self, results: tuple[int, ...]) -> bytes | None:
        if not results:
            return b"\x40"
        if len(results) == 1:
            return bytes(results)
        for i, (params, res) in enumerate(self.types):  # multi-value: an existing type [] -> results
            if not params and res == results:
                return _sleb(i)
        return None


class _Inliner:
    def __init__(self, module: _Module) -> None:
        self.m = module
        self.done: dict[int, _Body] = {}
        self.busy: set[int] = set()
        self.inlined = 0

    def candidate(self, callee: int, caller: int, depth: int) -> _Body | None:
        """The body to inline for a call of ``callee`` (itself with its small callees inlined), or None."""
        m = self.m
        index = callee - m.imported
        if index < 0 or index >= len(m.bodies) or callee == caller or callee in self.busy:
            return None
        original = m.bodies[index]
        if not original.inlinable or original.instructions > limits.INLINE_MAX_CALLEE_INSTRUCTIONS:
            return None
        if m.blocktype(m.signature(callee)[1]) is None:
            return None
        body = self.processed(callee, depth + 1)
        if not body.inlinable or body.instructions > limits.INLINE_MAX_EXPANDED_INSTRUCTIONS:
            return None
        return body

    def processed(self, func: int, depth: int = 0) -> _Body:
        """``func``'s body with its small callees inlined (memoized; the first complete computation is kept)."""
        done = self.done.get(func)
        if done is not None:
            return done
        body = self.m.bodies[func - self.m.imported]
        if not body.calls:
            self.done[func] = body
            return body
        if depth >= limits.INLINE_MAX_DEPTH:  # as it is here, not memoized: processed at a lesser depth later
            return body
        self.busy.add(func)
        try:
            result = self._inline_into(func, body, depth)
        finally:
            self.busy.discard(func)
        self.done[func] = result
        return result

    def _inline_into(self, func: int, body: _Body, depth: int) -> _Body:
        m = self.m
        params = len(m.signature(func)[0])
        new_locals = list(body.locals)
        fresh: dict[int, int] = {}  # callee -> first fresh local (params + declared)
        out = bytearray()
        last = 0
        inlined = 0
        for start, end, callee in body.calls:
            inner = self.candidate(callee, func, depth)
            if inner is None:
                continue
            c_params, c_results = m.signature(callee)
            need = len(c_params) + len(inner.locals)
            if callee not in fresh:
                if len(new_locals) + need - len(body.locals) > limits.INLINE_MAX_NEW_LOCALS:
                    continue
                fresh[callee] = params + len(new_locals)
                new_locals.extend(c_params)
                new_locals.extend(inner.locals)
            base = fresh[callee]
            blocktype = m.blocktype(c_results)
            assert blocktype is not None  # candidate() checked
            out += body.code[last:start]
            out += _expand(inner, base, c_params, blocktype)
            last = end
            inlined += 1
        if not inlined:
            return body
        out += body.code[last:]
        code = bytes(out)
        if len(code) > len(body.code) + limits.INLINE_MAX_FUNCTION_GROWTH:
            return body
        count, calls, local_ops, returns, inlinable = _scan(code, 0, len(code))
        self.inlined += inlined
        return _Body(tuple(new_locals), code, count, tuple(calls), tuple(local_ops), tuple(returns), inlinable)


def _expand(inner: _Body, base: int, params: tuple[int, ...], blocktype: bytes) -> bytes:
    """``inner``'s code as a block in place of a call: arguments and locals in the caller's locals from ``base``."""
    out = bytearray()
    for i in range(len(params) - 1, -1, -1):
        out += b"\x21" + leb128.encode(base + i)
    for j, vt in enumerate(inner.locals):
        out += _ZERO[vt] + b"\x21" + leb128.encode(base + len(params) + j)
    out += b"\x02" + blocktype
    edits: list[tuple[int, int, bytes]] = [
        (s, e, bytes((op,)) + leb128.encode(base + idx)) for s, e, op, idx in inner.local_ops
    ]
    edits += [(s, s + 1, b"\x0c" + leb128.encode(depth)) for s, depth in inner.returns]
    edits.sort()
    last = 0
    code = inner.code
    for s, e, replacement in edits:
        out += code[last:s]
        out += replacement
        last = e
    out += code[last:]  # ends with the body's `end`: the block's
    return bytes(out)


def _encode_body(body: _Body) -> bytes:
    runs: list[tuple[int, int]] = []
    for vt in body.locals:
        if runs and runs[-1][1] == vt:
            runs[-1] = (runs[-1][0] + 1, vt)
        else:
            runs.append((1, vt))
    payload = bytearray(leb128.encode(len(runs)))
    for n, vt in runs:
        payload += leb128.encode(n) + bytes((vt,))
    payload += body.code
    return leb128.encode(len(payload)) + bytes(payload)


def inline_with_stats(data: bytes) -> tuple[bytes, Stats]:
    """`inline`, and what it did."""
    if len(data) > limits.INLINE_MAX_MODULE_BYTES:
        return data, Stats(0, 0, 0, 0, f"module over {limits.INLINE_MAX_MODULE_BYTES} bytes")
    try:
        module = _Module(data)
        inliner = _Inliner(module)
        changed: dict[int, _Body] = {}
        for i, body in enumerate(module.bodies):
            result = inliner.processed(module.imported + i)
            if result is not body:
                changed[i] = result
        header_at, code_start, code_end = next((h, s, e) for sid, h, s, e in module.sections if sid == _SECTION_CODE)
        if not changed:
            size = code_end - code_start
            return data, Stats(0, 0, size, size, "nothing to inline")
        n, pos = _uleb(data, code_start, code_end)
        section = bytearray(leb128.encode(n))
        for i in range(n):
            size, start = _uleb(data, pos, code_end)
            section += _encode_body(changed[i]) if i in changed else data[pos : start + size]
            pos = start + size
        before = code_end - code_start
        allowed = max(limits.INLINE_MIN_MODULE_GROWTH, before * limits.INLINE_MAX_MODULE_GROWTH_PCT // 100)
        if len(section) > before + allowed:
            return data, Stats(0, 0, before, before, "would grow past the module growth limit")
    except _GiveUp as exc:
        return data, Stats(0, 0, 0, 0, str(exc))
    # the code section's header (id, size) and payload replaced; everything else byte for byte
    out = data[:header_at] + bytes((_SECTION_CODE,)) + leb128.encode(len(section)) + bytes(section) + data[code_end:]
    return out, Stats(inliner.inlined, len(changed), before, len(section))


def inline(data: bytes) -> bytes:
    """``data`` with small callees inlined (see the module docstring); the original bytes when the pass gives up."""
    return inline_with_stats(data)[0]
