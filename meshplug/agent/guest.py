"""One wasm instance behind a small interface (`Guest`), in two backends: the only module that touches
wasmtime's low-level bindings.

meshplug.agent.vm's `Runtime.new_guest(...)` makes a `Guest` per VM; meshplug.agent.wasmvm drives it with plain
Python ints: `guest.func("proxy_on_request_headers")(ctx, n, eos)`; host functions (built by
meshplug.agent.abi and meshplug.agent.wasi) receive unsigned ints (i32 masked to u32, i64 to u64) -- and bytes
for the guest strings a `Faulting` host function names as spans -- and return an int (or None for `() -> ()`).
Guest memory is read and written through bounds-checked `read`/`write`/`read_u32`/`write_u32`/`write_u64`, which
raise `MemoryFault` when out of range.

* ``fast`` -- wasmtime's C API: guest calls and host imports cross in C (meshplug/agent/_wasmcall.c, _wasmstore.c:
  `wasmtime_func_call_unchecked` on a stack ValRaw array, holding the GIL (the epoch ticker is a native
  thread there); one `wasmtime_linker_define_func_unchecked` trampoline that reads a host function's guest
  strings, calls the Python host function and maps listed exceptions to results (`Faulting`); bounds-checked
  linear-memory access on the memory's base pointer, looked up again only after the guest ran). It relies on
  the C ABI of the pinned wasmtime==50.0.1 and on the built extension (`FAST_AVAILABLE`; meshplug.native);
  tests/unit/test_vm_backends.py checks it agrees with ``public``.
* ``public`` -- wasmtime-py's public API (`Func.__call__`, `Linker.define_func`, `Memory.read`), ~30x
  slower per call; kept as the reference the fast path is tested against.

Every top-level guest call runs under the epoch deadline its `Runtime` arms (the fast backend re-arms it only
when the epoch moved since it last did, or after a failed call). A trap surfaces as `PluginRuntimeError`; an
exception raised by a host function propagates unchanged.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import wasmtime
from wasmtime import _ffi as ffi

from meshplug import errors, limits

if TYPE_CHECKING:
    from meshplug.agent.vm import Runtime

try:
    from meshplug.agent import _wasmcall
except ImportError:  # not built (`make native`): the fast backend is unavailable, `public` serves
    _wasmcall = None  # type: ignore[assignment]

#: the exact wasmtime-py version whose C ABI the fast backend is written against
PINNED_WASMTIME = "50.0.1"
WASMTIME_VERSION = importlib.metadata.version("wasmtime")
FAST_AVAILABLE = WASMTIME_VERSION == PINNED_WASMTIME and _wasmcall is not None

BACKENDS = ("fast", "public")

HostFunc = Callable[..., int | None]
GuestFunc = Callable[..., int]


@dataclass(frozen=True)
class Faulting:
    """A host function whose listed exceptions become its result (e.g. MemoryFault -> a status code),
    mapped by the backend's own trampoline: no wrapper frame per call.

    `spans`: (index, lower) per guest (ptr, size) pair among the import's parameters (parameters index and
    index + 1): the backend reads those bytes (ASCII-lowercased when `lower`: a header name) and passes them
    to `fn` as one argument, in order -- bounds-checked (MemoryFault), an empty span b"" unchecked. `guard`:
    (bound, result): a first argument above bound returns result at once, before any span is read (the ABI's
    enum checks come before its memory reads)."""

    fn: HostFunc
    faults: tuple[tuple[type[BaseException], int], ...]
    spans: tuple[tuple[int, bool], ...] = ()
    guard: tuple[int, int] | None = None

    def __call__(self, *args: int | bytes) -> int | None:
        try:
            return self.fn(*args)
        except BaseException as exc:
            for kind, result in self.faults:
                if isinstance(exc, kind):
                    return result
            raise

    def reading(self, read: Callable[[int, int], bytes], read_lower: Callable[[int, int], bytes]) -> Faulting:
        """This function taking ints only, its spans read with `read` / `read_lower` inside its fault mapping (a
        backend that does not read them itself)."""
        if not self.spans and self.guard is None:
            return self
        fn, spans, guard = self.fn, {i: lower for i, lower in self.spans}, self.guard

        def unpacked(*args: int) -> int | None:
            if guard is not None and args[0] > guard[0]:
                return guard[1]
            out: list[int | bytes] = []
            i = 0
            while i < len(args):
                lower = spans.get(i)
                if lower is None:
                    out.append(args[i])
                    i += 1
                else:
                    out.append((read_lower if lower else read)(args[i], args[i + 1]) if args[i + 1] else b"")
                    i += 2
            return fn(*out)

        return Faulting(unpacked, self.faults)


HostImpl = HostFunc | Faulting

_MASK = {"i32": 0xFFFF_FFFF, "i64": 0xFFFF_FFFF_FFFF_FFFF}


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]
    results: tuple[str, ...]


@dataclass(frozen=True)
class ImportDecl:
    module: str
    name: str
    sig: Signature


class MemoryFault(Exception):
    """A guest pointer/length pair outside the linear memory."""


class GuestExit(Exception):
    """Raised by the proc_exit shim; the host decides whether it is success (code 0 in _start)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"proc_exit({code})")
        self.code = code


_VALTYPES: dict[str, Callable[[], wasmtime.ValType]] = {
    "i32": wasmtime.ValType.i32,
    "i64": wasmtime.ValType.i64,
    "f32": wasmtime.ValType.f32,
    "f64": wasmtime.ValType.f64,
}


def functype(sig: Signature) -> wasmtime.FuncType:
    return wasmtime.FuncType([_VALTYPES[p]() for p in sig.params], [_VALTYPES[r]() for r in sig.results])


def _trap_error(trap: wasmtime.Trap | wasmtime.WasmtimeError) -> errors.PluginRuntimeError:
    code = trap.trap_code if isinstance(trap, wasmtime.Trap) else None
    if code == wasmtime.TrapCode.INTERRUPT:
        return errors.PluginRuntimeError("guest exceeded its CPU budget (epoch deadline)", reason="cpu_budget")
    text = str(trap).splitlines()[0] if str(trap) else "trap"
    return errors.PluginRuntimeError(f"guest trapped: {text}", reason="trap")


class Guest(ABC):
    """One wasm instance in its own store. Not thread-safe; one VM call at a time (re-entrant for allocs)."""

    backend: ClassVar[str]

    def __init__(
        self,
        runtime: Runtime,
        module: wasmtime.Module,
        imports: Sequence[tuple[ImportDecl, HostImpl]],
        *,
        memory_cap: int,
        deadline_ms: int,
    ) -> None:
        self.runtime = runtime
        self.module = module
        self.exports = runtime.exports(module)
        self.store = wasmtime.Store(runtime.engine_of(module))
        self.store.set_limits(memory_size=memory_cap)
        self.memory_cap = memory_cap
        self.deadline_ticks = runtime.deadline_ticks(deadline_ms)
        self.store.set_epoch_deadline(runtime.deadline_ticks(limits.START_DEADLINE_MS))
        self.instance: wasmtime.Instance | None = None
        self._seq_index = 0
        # a module may import one name twice (TinyGo: wasi fd_write); the linker takes one definition, and
        # instantiation reports a type clash if the two declarations differ
        seen: set[tuple[str, str]] = set()
        self._imports: list[tuple[ImportDecl, HostImpl]] = []
        for decl, fn in imports:
            if (decl.module, decl.name) not in seen:
                seen.add((decl.module, decl.name))
                self._imports.append((decl, fn))

    @abstractmethod
    def instantiate(self) -> None:
        """Instantiate (runs the start section). Traps raise PluginStartError."""

    @abstractmethod
    def func(self, name: str) -> GuestFunc | None:
        """A callable for export `name` taking/returning unsigned ints, or None if not exported."""

    @property
    @abstractmethod
    def depth(self) -> int:
        """Guest calls in progress (0: none; host functions may call the guest again)."""

    @abstractmethod
    def memory_size(self) -> int: ...

    @abstractmethod
    def read(self, ptr: int, size: int) -> bytes: ...

    @abstractmethod
    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None: ...

    def read_lower(self, ptr: int, size: int) -> bytes:
        """``read(ptr, size).lower()`` (ASCII, as bytes.lower; the fast backend lowers as it copies)."""
        return self.read(ptr, size).lower()

    def replace_into(self, ptr: int, size: int, target: bytearray, stop: int) -> None:
        """``target[:stop] = read(ptr, size)`` (the fast backend copies once, with no bytes object between)."""
        target[:stop] = self.read(ptr, size)

    def read_u32(self, ptr: int) -> int:
        return int.from_bytes(self.read(ptr, 4), "little")

    def write_u32(self, ptr: int, value: int) -> None:
        self.write(ptr, (value & 0xFFFF_FFFF).to_bytes(4, "little"))

    def write_u64(self, ptr: int, value: int) -> None:
        self.write(ptr, (value & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little"))

    def call_each(self, fns: tuple[GuestFunc, ...], arg: object) -> int:
        """Each of `fns` (this guest's exports, from `func`) called with `arg`, in order, as one call (the fast
        backend loops in C); the first that raises stops the rest, its exception propagates and `failed_index()`
        tells which it was. Returns len(fns)."""
        for i, fn in enumerate(fns):
            try:
                fn(arg)
            except BaseException:
                self._seq_index = i
                raise
        return len(fns)

    def failed_index(self) -> int:
        """The index into `fns` of the call that raised in the last failed `call_each`."""
        return self._seq_index

    def set_deadline_ms(self, deadline_ms: int) -> None:
        """Budget for the next top-level calls (the host widens it during VM start)."""
        self.deadline_ticks = self.runtime.deadline_ticks(deadline_ms)

    def set_parallel(self, parallel: bool) -> None:  # noqa: B027 -- a no-op unless the backend holds the GIL
        """True while the VM starts on a worker thread beside others: guest calls let other threads run
        (the public backend's always do)."""

    def _check_start(self, exc: BaseException) -> None:
        if isinstance(exc, wasmtime.Trap | wasmtime.WasmtimeError):
            err = _trap_error(exc)
            raise errors.PluginStartError(f"instantiation failed: {err.message}", reason=err.reason) from exc


# ------------------------------------------------------------------------------------------------
# public-API backend (reference)
# ------------------------------------------------------------------------------------------------
class PublicGuest(Guest):
    backend = "public"

    def __init__(
        self,
        runtime: Runtime,
        module: wasmtime.Module,
        imports: Sequence[tuple[ImportDecl, HostImpl]],
        *,
        memory_cap: int,
        deadline_ms: int,
    ) -> None:
        super().__init__(runtime, module, imports, memory_cap=memory_cap, deadline_ms=deadline_ms)
        self._depth = 0
        self._caller: wasmtime.Caller | None = None
        self._memory: wasmtime.Memory | None = None
        self._funcs: dict[str, GuestFunc | None] = {}
        self.linker = wasmtime.Linker(runtime.engine_of(module))
        for decl, fn in self._imports:
            self.linker.define_func(decl.module, decl.name, functype(decl.sig), self._wrap(decl, fn), True)

    def _wrap(self, decl: ImportDecl, fn: HostImpl) -> Callable[..., Any]:
        masks = tuple(_MASK.get(p, 0) for p in decl.sig.params)
        if isinstance(fn, Faulting):
            fn = fn.reading(self.read, self.read_lower)
        has_result = bool(decl.sig.results)
        signed_result = decl.sig.results[:1] == ("i32",)

        def host(caller: wasmtime.Caller, *args: Any) -> Any:
            outer = self._caller
            self._caller = caller
            try:
                vals = [a & m if m else a for a, m in zip(args, masks, strict=True)]
                result = fn(*vals)
            finally:
                self._caller = outer
            if not has_result:
                return None
            value = int(result or 0)
            if signed_result:
                value &= 0xFFFF_FFFF
                return value - (1 << 32) if value >= 1 << 31 else value
            value &= 0xFFFF_FFFF_FFFF_FFFF
            return value - (1 << 64) if value >= 1 << 63 else value

        return host

    @property
    def depth(self) -> int:
        return self._depth

    def instantiate(self) -> None:
        try:
            self.instance = self.linker.instantiate(self.store, self.module)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            self._check_start(exc)
            raise
        mem = self.instance.exports(self.store).get("memory")
        if isinstance(mem, wasmtime.Memory):
            self._memory = mem

    def func(self, name: str) -> GuestFunc | None:
        if name in self._funcs:
            return self._funcs[name]
        sig = self.exports.get(name)
        fn: GuestFunc | None = None
        target: Any = None
        if self.instance is not None:
            target = self.instance.exports(self.store).get(name)
        elif self._caller is not None:
            target = self._caller.get(name)
        if sig is not None and isinstance(target, wasmtime.Func):
            fn = self._make_call(target, sig)
        if self.instance is not None:
            self._funcs[name] = fn
        return fn

    def _make_call(self, target: wasmtime.Func, sig: Signature) -> GuestFunc:
        mask = _MASK.get(sig.results[0], 0) if sig.results else 0
        bits = tuple(32 if p == "i32" else 64 if p == "i64" else 0 for p in sig.params)

        def call(*args: int) -> int:
            # unsigned ints in, the signed values wasmtime-py's Val conversion expects out (floats as given)
            signed = [a - (1 << b) if b and a >= 1 << (b - 1) else a for a, b in zip(args, bits, strict=True)]
            top = self._depth == 0
            if top:
                self.store.set_epoch_deadline(self.deadline_ticks)
            self._depth += 1
            try:
                store: Any = self._caller if self._caller is not None else self.store
                result = target(store, *signed)
            except wasmtime.Trap as exc:
                raise _trap_error(exc) from None
            except wasmtime.WasmtimeError as exc:
                raise _trap_error(exc) from None
            finally:
                self._depth -= 1
            if isinstance(result, list):  # several results: the first (proxy-wasm exports have one at most)
                result = result[0]
            if result is None or not mask:
                return 0
            return int(result) & mask

        return call

    def _mem(self) -> tuple[wasmtime.Memory, Any]:
        if self._caller is not None:
            mem = self._caller.get("memory")
            if isinstance(mem, wasmtime.Memory):
                return mem, self._caller
        if self._memory is None:
            raise MemoryFault("module exports no memory")
        return self._memory, self.store

    def memory_size(self) -> int:
        mem, store = self._mem()
        return int(mem.data_len(store))

    def read(self, ptr: int, size: int) -> bytes:
        if size == 0:
            return b""
        mem, store = self._mem()
        if ptr < 0 or size < 0 or ptr + size > mem.data_len(store):
            raise MemoryFault(f"read [{ptr}, {ptr + size}) outside memory")
        return bytes(mem.read(store, ptr, ptr + size))

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        if len(data) == 0:
            return
        mem, store = self._mem()
        if ptr < 0 or ptr + len(data) > mem.data_len(store):
            raise MemoryFault(f"write [{ptr}, {ptr + len(data)}) outside memory")
        mem.write(store, bytes(data), ptr)


# ------------------------------------------------------------------------------------------------
# fast backend: wasmtime C API (pinned wasmtime==50.0.1) through meshplug.agent._wasmcall
# ------------------------------------------------------------------------------------------------
_c_void_p = ctypes.c_void_p
_c_size_t = ctypes.c_size_t

_dll = ffi.dll
# our own prototypes on the same library, so wasmtime-py's own argtypes stay untouched
_define_unchecked = ctypes.CFUNCTYPE(
    _c_void_p,
    _c_void_p,
    ctypes.c_char_p,
    _c_size_t,
    ctypes.c_char_p,
    _c_size_t,
    _c_void_p,
    _c_void_p,  # wasmtime_func_unchecked_callback_t: _wasmcall.TRAMPOLINE
    _c_void_p,
    _c_void_p,
)(("wasmtime_linker_define_func_unchecked", _dll))
_caller_export_get = ctypes.CFUNCTYPE(ctypes.c_bool, _c_void_p, ctypes.c_char_p, _c_size_t, _c_void_p)(
    ("wasmtime_caller_export_get", _dll)
)

#: value kinds as _wasmcall numbers them (0: no result), and its marks of a host function's (ptr, size) pair
_KIND = {"i32": 1, "i64": 2, "f32": 3, "f64": 4}
_SPAN, _SPAN_LOWER = 5, 6


def address_of(obj: Any) -> int:
    """The address a ctypes pointer or function points at."""
    return int(ctypes.cast(obj, _c_void_p).value or 0)


if _wasmcall is not None:
    _wasmcall.init(
        address_of(_dll.wasmtime_func_call_unchecked),
        address_of(_dll.wasmtime_context_set_epoch_deadline),
        address_of(_dll.wasmtime_trap_new),
        address_of(_dll.wasmtime_memory_data),
        address_of(_dll.wasmtime_memory_data_size),
        address_of(_dll.wasmtime_engine_clone),
        address_of(_dll.wasmtime_engine_increment_epoch),
        address_of(_dll.wasm_engine_delete),
        MemoryFault,
    )


def _kinds(types: Sequence[str]) -> bytes:
    return bytes(_KIND[t] for t in types)


class FastGuest(Guest):
    backend = "fast"

    def __init__(
        self,
        runtime: Runtime,
        module: wasmtime.Module,
        imports: Sequence[tuple[ImportDecl, HostImpl]],
        *,
        memory_cap: int,
        deadline_ms: int,
    ) -> None:
        super().__init__(runtime, module, imports, memory_cap=memory_cap, deadline_ms=deadline_ms)
        assert _wasmcall is not None, "FastGuest needs meshplug.agent._wasmcall (FAST_AVAILABLE)"
        assert runtime.clock is not None
        self._ctx = address_of(self.store._context())
        #: depth, epoch arming, the running host call's caller and the pending host exception, kept in C
        self.state = _wasmcall.State(self._ctx, runtime.clock, self.deadline_ticks)
        self.call_each = _wasmcall.call_each  # type: ignore[method-assign,assignment]  # the loop in C
        self._mem_addr = 0
        self._mem_keep: Any = None  # owns the wasmtime_memory_t `state` reads through
        self._funcs: dict[str, GuestFunc | None] = {}
        self._keep: list[Any] = []
        self.linker = wasmtime.Linker(runtime.engine_of(module))
        linker_ptr = address_of(self.linker.ptr())
        #: a host function's spans read before the memory is known (a start function's host calls) find it first
        self.state.find_memory = self._memory
        for decl, given in self._imports:
            ft = functype(decl.sig)
            impl = given if isinstance(given, Faulting) else Faulting(given, ())
            params = bytearray(_kinds(decl.sig.params))
            for index, lower in impl.spans:  # read by the trampoline: one bytes argument each
                params[index] = _SPAN_LOWER if lower else _SPAN
            guard = impl.guard or (-1, 0)
            result = _KIND[decl.sig.results[0]] if decl.sig.results else 0
            host = _wasmcall.HostFunc(self.state, impl.fn, bytes(params), result, impl.faults, guard[0], guard[1])
            self._keep.append((ft, host))
            mod, name = decl.module.encode(), decl.name.encode()
            err = _define_unchecked(
                linker_ptr, mod, len(mod), name, len(name), address_of(ft.ptr()), _wasmcall.TRAMPOLINE, host.env, None
            )
            if err:
                raise errors.PluginStartError(f"cannot define {decl.module}.{decl.name}", reason="link_failed")

    @property
    def depth(self) -> int:
        return int(self.state.depth)

    def failed_index(self) -> int:
        return int(self.state.seq_index)

    def set_deadline_ms(self, deadline_ms: int) -> None:
        super().set_deadline_ms(deadline_ms)
        self.state.deadline_ticks = self.deadline_ticks
        self.state.armed = -1

    def set_parallel(self, parallel: bool) -> None:
        self.state.release_gil = int(parallel)

    def _raise_pending(self, trap_or_err: wasmtime.Trap | wasmtime.WasmtimeError | None) -> None:
        exc = self.state.take_exc()
        if exc is not None:
            raise exc
        if trap_or_err is not None:
            raise _trap_error(trap_or_err)

    def instantiate(self) -> None:
        try:
            self.instance = self.linker.instantiate(self.store, self.module)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            pending = self.state.take_exc()
            if pending is not None:
                raise pending from None
            self._check_start(exc)
            raise
        mem = self.instance.exports(self.store).get("memory")
        if isinstance(mem, wasmtime.Memory):
            self._mem_keep = mem
            self._mem_addr = ctypes.addressof(mem._memory)
            self.state.set_memory(self._mem_addr)
            # the memory is known for good: guest memory access goes straight to C (no Python frame)
            self.read = self.state.read  # type: ignore[method-assign,assignment]
            self.read_lower = self.state.read_lower  # type: ignore[method-assign,assignment]
            self.write = self.state.write  # type: ignore[method-assign,assignment]
            self.replace_into = self.state.replace_into  # type: ignore[method-assign,assignment]
            self.read_u32 = self.state.read_u32  # type: ignore[method-assign,assignment]
            self.write_u32 = self.state.write_u32  # type: ignore[method-assign,assignment]
            self.write_u64 = self.state.write_u64  # type: ignore[method-assign,assignment]
            self.memory_size = self.state.memory_size  # type: ignore[method-assign]

    def func(self, name: str) -> GuestFunc | None:
        if name in self._funcs:
            return self._funcs[name]
        sig = self.exports.get(name)
        target = self.instance.exports(self.store).get(name) if self.instance is not None else None
        fn = self._make_call(target, sig) if sig is not None and isinstance(target, wasmtime.Func) else None
        if self.instance is not None:
            self._funcs[name] = fn
        return fn

    def _make_call(self, target: wasmtime.Func, sig: Signature) -> GuestFunc:
        assert _wasmcall is not None
        self._keep.append(target)  # owns the wasmtime_func_t the call points at
        call: GuestFunc = _wasmcall.GuestCall(
            self.state, ctypes.addressof(target._func), _kinds(sig.params), _kinds(sig.results), self._fail
        )
        return call

    def _fail(self, err: int, trap_ptr: int) -> None:
        self.state.armed = -1  # the deadline may be what trapped: the next call gets a fresh one
        decoded: wasmtime.Trap | wasmtime.WasmtimeError | None = None
        if trap_ptr:
            decoded = wasmtime.Trap._from_ptr(ctypes.cast(trap_ptr, ctypes.POINTER(ffi.wasm_trap_t)))
        elif err:
            decoded = wasmtime.WasmtimeError._from_ptr(ctypes.cast(err, ctypes.POINTER(ffi.wasmtime_error_t)))
        self._raise_pending(decoded)
        raise errors.PluginRuntimeError("guest call failed without a trap", reason="trap")

    def _memory(self) -> _wasmcall.State:
        """The state, once it knows the memory: found through the running host call's caller when the
        instance did not export one at instantiation (a start function's host calls)."""
        if not self._mem_addr:
            caller = self.state.caller
            ext = ffi.wasmtime_extern_t()
            if not (
                caller
                and _caller_export_get(caller, b"memory", 6, ctypes.addressof(ext))
                and int(cast(Any, ext.kind)) == ffi.WASMTIME_EXTERN_MEMORY.value
            ):
                raise MemoryFault("module exports no memory")
            self._mem_keep = ext
            self._mem_addr = ctypes.addressof(ext.of.memory)
            self.state.set_memory(self._mem_addr)
        return self.state

    # until instantiate() finds the exported memory (then the State's C methods replace these)
    def memory_size(self) -> int:
        return self._memory().memory_size()

    def read(self, ptr: int, size: int) -> bytes:
        return self._memory().read(ptr, size) if size else b""

    def read_lower(self, ptr: int, size: int) -> bytes:
        return self._memory().read_lower(ptr, size) if size else b""

    def write(self, ptr: int, data: bytes | bytearray | memoryview) -> None:
        if len(data):
            self._memory().write(ptr, data)

    def read_u32(self, ptr: int) -> int:
        return self._memory().read_u32(ptr)

    def write_u32(self, ptr: int, value: int) -> None:
        self._memory().write_u32(ptr, value)

    def write_u64(self, ptr: int, value: int) -> None:
        self._memory().write_u64(ptr, value)
