"""One wasm instance of the proxy-wasm host (`WasmVm`): start, the guest calls of its contexts, failure.

Made by meshplug.agent.host.Host (one per plugin, or one per shared vm_id); its contexts (meshplug.agent.contexts)
call into the guest through `call_n` / `call_each`. The imports (meshplug.agent.abi) reach it as a `hostapi.Vm`.
A trap, a budget overrun or `proc_exit` fails the VM: the call returns -1 and every other stream context on it
learns it (`hostapi.Context.on_vm_failed`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import wasmtime

from meshplug import abi_table, errors
from meshplug.agent import abi, hostapi, vm
from meshplug.agent.hostapi import (
    Context,
    RootContext,
)

if TYPE_CHECKING:
    from meshplug.agent.host import Host

log = logging.getLogger("meshplug.agent.host")

_HTTP_CALLBACKS: Final = (
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
)


# --- one VM -----------------------------------------------------------------------------------------
class _Callbacks:
    """A VM's stream callbacks, looked up once after start (None: not exported); per direction where
    there is one (index = Direction)."""

    __slots__ = ("body", "context_create", "delete", "done", "end", "headers", "headers_eos", "log", "trailers")

    def __init__(self) -> None:
        none: tuple[vm.GuestFunc | None, vm.GuestFunc | None] = (None, None)
        self.context_create: vm.GuestFunc | None = None
        self.headers = self.body = self.trailers = none
        self.headers_eos = (True, True)  # False: the 0.1.0 two-argument headers callbacks
        self.log: vm.GuestFunc | None = None
        self.done: vm.GuestFunc | None = None
        self.delete: vm.GuestFunc | None = None
        self.end: tuple[vm.GuestFunc, ...] = ()  # the exported ones of log, done, delete, in that order

    @classmethod
    def resolve(cls, wvm: WasmVm) -> _Callbacks:
        cb = cls()
        f = wvm.func
        cb.context_create = f("proxy_on_context_create")
        cb.headers = (f("proxy_on_request_headers"), f("proxy_on_response_headers"))
        cb.headers_eos = (
            wvm.arity("proxy_on_request_headers") != 2,
            wvm.arity("proxy_on_response_headers") != 2,
        )
        cb.body = (f("proxy_on_request_body"), f("proxy_on_response_body"))
        cb.trailers = (f("proxy_on_request_trailers"), f("proxy_on_response_trailers"))
        cb.log, cb.done, cb.delete = f("proxy_on_log"), f("proxy_on_done"), f("proxy_on_delete")
        cb.end = tuple(fn for fn in (cb.log, cb.done, cb.delete) if fn is not None)
        return cb


class WasmVm(hostapi.Vm):
    """One wasm instance and the contexts living in it."""

    def __init__(self, host: Host, module: wasmtime.Module, *, vm_id: str, key: tuple[Any, ...], label: str) -> None:
        self.host = host
        self.owner = host  # the same, as this module's own type
        self.vm_id = vm_id
        self.key = key
        self.label = label
        self.contexts: dict[int, Context] = {}
        self.roots: list[RootContext] = []
        self.current: Context | None = None
        self.effective: Context | None = None
        self.failed: errors.PluginRuntimeError | None = None
        self.after: list[Callable[[], None]] = []
        self.env: tuple[tuple[str, str], ...] = ()
        self._last_id = 0  # context ids: 1, 2, ... (a plain int: one per stream context, on the request path)
        self._tokens = itertools.count(1)
        self.calls = abi.HostCalls(self)
        decls = host.runtime.imports(module)
        self.guest = host.runtime.new_guest(module, self.calls.bind(decls), backend=host.backend)
        self.calls.use(self.guest)
        self._call_each = self.guest.call_each  # one attribute read per stream end, no method lookup
        #: the fast backend's C call state, whose `depth` is read after each guest call that deferred work
        #: (FastGuest.depth is a property of an interpreted module: a Python frame per read)
        self._cstate: Any = self.guest.state if isinstance(self.guest, vm.FastGuest) else None
        self._funcs: dict[str, vm.GuestFunc | None] = {}
        self._names: dict[vm.GuestFunc, str] = {}
        self._alloc: vm.GuestFunc | None = None
        self.http_capable = True
        self.cb = _Callbacks()
        #: the host replaces this VM once no stream uses it (its memory grew past the host's recycle_bytes)
        self.recycle = False

    def memory_size(self) -> int:
        """Bytes of linear memory (0 before instantiation)."""
        return self.guest.memory_size() if self.guest.instance is not None else 0

    def next_id(self) -> int:
        self._last_id += 1
        return self._last_id

    def next_token(self) -> int:
        return next(self._tokens) << 2  # cpp-host: low 2 bits = callout kind (0 = HTTP); first token 4

    def arity(self, name: str) -> int:
        sig = self.guest.exports.get(name)
        return len(sig.params) if sig is not None else 0

    def func(self, name: str) -> vm.GuestFunc | None:
        if name not in self._funcs:
            fn = self._funcs[name] = self.guest.func(name)
            if fn is not None:
                self._names[fn] = name
        return self._funcs[name]

    # -- start -------------------------------------------------------------------------------------
    def start(self, *, parallel: bool = False) -> None:
        """Instantiate and run the module's entry point; `parallel`: on a worker thread beside other VMs
        starting (their guest code runs at the same time; the host functions it calls take the GIL)."""
        guest = self.guest
        exports = guest.exports
        if not any(name in exports for name in abi_table.MARKERS):
            raise errors.PluginStartError(f"{self.label}: Missing or unknown Proxy-Wasm ABI version", reason="no_abi")
        if "memory" not in {e.name for e in self.guest.module.exports}:
            raise errors.PluginStartError(f"{self.label}: module exports no memory", reason="no_memory")
        if not any(exports.get(n) == vm.Signature(("i32",), ("i32",)) for n in ("proxy_on_memory_allocate", "malloc")):
            raise errors.PluginStartError(f"{self.label}: module exports no allocator", reason="no_allocator")
        self.http_capable = any(name in exports for name in _HTTP_CALLBACKS)
        guest.set_deadline_ms(self.owner.start_deadline_ms)
        guest.set_parallel(parallel)
        try:
            guest.instantiate()
            self.calls.use(guest)  # its memory is known now (the fast backend's C access)
            if "_initialize" in guest.exports:
                self._entry("_initialize")
                if "main" in guest.exports and guest.exports["main"].params == ("i32", "i32"):
                    self._entry("main", 0, 0)
                elif "__main_void" in guest.exports:
                    self._entry("__main_void")
            elif "_start" in guest.exports:
                self._entry("_start")
        except vm.GuestExit as exc:
            raise errors.PluginStartError(
                f"{self.label}: proc_exit({exc.code}) during start", reason="start_failed"
            ) from None
        except errors.PluginRuntimeError as exc:
            raise errors.PluginStartError(f"{self.label}: {exc.message}", reason=exc.reason) from exc
        finally:
            guest.set_parallel(False)
        for name in ("proxy_on_memory_allocate", "malloc"):  # spec order, not cpp-host's (see ABI ref. 1.2)
            fn = self.func(name)
            if fn is not None and guest.exports[name] == vm.Signature(("i32",), ("i32",)):
                self._alloc = fn
                break
        self.cb = _Callbacks.resolve(self)

    def _entry(self, name: str, *args: int) -> None:
        fn = self.func(name)
        if fn is None:
            return
        try:
            fn(*args)
        except vm.GuestExit as exc:
            if exc.code != 0 or name != "_start":
                raise

    def begin_plugin_start(self) -> None:
        self.guest.set_deadline_ms(self.owner.start_deadline_ms)

    def end_plugin_start(self) -> None:
        self.guest.set_deadline_ms(self.owner.deadline_ms)

    # -- memory ------------------------------------------------------------------------------------
    def allocate(self, size: int) -> int:
        """Allocate `size` (> 0) bytes in the guest; runs with no current context (cpp-host: context 0)."""
        if self._alloc is None:
            if self.guest.instance is None:
                return 0
            raise errors.PluginRuntimeError(f"{self.label}: module exports no allocator", reason="no_allocator")
        saved = (self.current, self.effective)
        self.current = self.effective = None
        try:
            return self._alloc(size)
        finally:
            self.current, self.effective = saved

    # -- calls -------------------------------------------------------------------------------------
    def call(self, ctx: Context, name: str, *args: int) -> tuple[bool, int | None]:
        """Call callback `name` for `ctx`. (False, None) if the VM failed; (True, None) if not exported."""
        if self.failed is not None:
            return False, None
        fn = self.func(name)
        if fn is None:
            return True, None
        r = self.call_n(ctx, fn, len(args), *args)
        return (False, None) if r < 0 else (True, r)

    def call_n(  # noqa: PLR0917 -- positional ints on the per-request path: no argument tuple
        self,
        ctx: Context,
        fn: vm.GuestFunc,
        n: int,
        a: object = 0,
        b: object = 0,
        c: object = 0,
        d: object = 0,
        e: object = 0,
    ) -> int:
        """`fn` (an export of this VM) called with the first `n` (0-5) of a..e (ints) for `ctx`: its unsigned
        result, or -1 if the VM failed (now or before). Side effects deferred during the call run after the
        outermost call returns. The arguments are not packed into a tuple: a stream's callbacks are most of the
        host's guest calls; they are objects, so a context passes its id boxed once (`HttpContext.cid`), not
        per call."""
        if self.failed is not None:
            return -1
        saved_current, saved_effective = self.current, self.effective
        self.current = self.effective = ctx
        try:
            if n == 1:
                result = fn(a)
            elif n == 2:
                result = fn(a, b)
            elif n == 3:
                result = fn(a, b, c)
            else:
                result = fn(*(a, b, c, d, e)[:n])
        except Exception as exc:
            return self._failed(exc, ctx, fn)
        finally:
            self.current, self.effective = saved_current, saved_effective
        # the guest's call depth is back to what it was before the call: 0 for an outermost call
        if self.after and (self.guest.depth if self._cstate is None else self._cstate.depth) == 0:
            self.run_after()
        return result

    def call_each(self, ctx: Context, fns: tuple[vm.GuestFunc, ...], a: object) -> int:
        """`call_n(ctx, fn, 1, a)` for each of `fns` in order, as one call (the end of a stream's callbacks:
        log, done, delete; the fast backend loops in C): the first failure fails the VM and skips the rest;
        deferred side effects run once, after the last. The number of calls that returned, -1 if the VM
        failed."""
        if self.failed is not None:
            return -1
        saved_current, saved_effective = self.current, self.effective
        self.current = self.effective = ctx
        try:
            done = self._call_each(fns, a)
        except Exception as exc:
            return self._failed(exc, ctx, fns[self.guest.failed_index()])
        finally:
            self.current, self.effective = saved_current, saved_effective
        if self.after and (self.guest.depth if self._cstate is None else self._cstate.depth) == 0:
            self.run_after()
        return done

    def _failed(self, exc: Exception, ctx: Context, fn: vm.GuestFunc) -> int:
        """A guest call raised: fail the VM with the matching reason; -1 (the callers' "VM failed")."""
        if isinstance(exc, errors.PluginRuntimeError):
            self.fail(exc, ctx)
        elif isinstance(exc, vm.GuestExit):
            self.fail(errors.PluginRuntimeError(f"proc_exit({exc.code})", reason="proc_exit"), ctx)
        else:
            name = self._names.get(fn, "?")
            log.error("%s: host error in %s", self.label, name, exc_info=exc)
            self.fail(errors.PluginRuntimeError(f"host error in {name}: {exc}", reason="host_error"), ctx)
        return -1

    def invoke(self, ctx: Context, name: str, *args: int) -> bool:
        ok, _ = self.call(ctx, name, *args)
        return ok

    def run_after(self) -> None:
        while self.after:
            pending, self.after = self.after, []
            for action in pending:
                action()

    def defer(self, action: Callable[[], None]) -> None:
        self.after.append(action)

    def fail(self, exc: errors.PluginRuntimeError, ctx: Context | None) -> None:
        if self.failed is not None:
            return
        self.failed = exc
        self.after.clear()
        log.error("%s: VM failed (%s): %s", self.label, exc.reason, exc.message)
        self.owner.vm_failed(self)
        # streams paused on this VM learn it through their control; the one in flight gets Action.FAIL
        for other in list(self.contexts.values()):
            if other is not ctx:
                other.on_vm_failed()

    def log(self, level: int, message: str) -> None:
        if level < self.owner.log_level:
            return
        effective = self.effective
        self.owner.record_wasm_log(None if effective is None else effective.plugin.config, self.label, level, message)
