"""The wasm runtime the agent's VMs share (`Runtime`): engines, their epoch ticker, module loading; and the
guest interface it makes them with (meshplug.agent.guest), re-exported here.

meshplug.agent.host creates a `Guest` per VM through `Runtime.new_guest(...)` (backend ``fast`` when
`FAST_AVAILABLE`, else ``public``; see meshplug.agent.guest).

Sandbox: the `Runtime`'s engine has epoch interruption on; a ticker thread advances the epoch every
`limits.EPOCH_TICK_MS` and every top-level guest call runs under a deadline of `limits.CALLBACK_DEADLINE_MS`
(at least that minus one tick: the fast backend re-arms it only when the epoch moved since it last did, or
after a failed call -- one wasmtime call per tick instead of one per guest call), so a loop traps with reason
``cpu_budget``. Each store's linear memory is capped (`limits.VM_MAX_MEMORY_BYTES`).

Modules: `Runtime.load(data)` deserializes the module's precompiled artifact (meshplug.compiled, keyed by
its sha256 and ENGINE_FINGERPRINT), compiling and storing it only on a miss; never call it on the request
path. Two engines, one per compiler tier (meshplug.compiled.Tier): the optimized one (Cranelift) and, when
this wasmtime has Winch, the baseline one, whose artifacts only the operator's push brings (a new module's
first tier, replaced by its optimized artifact when the operator pushes that). A load takes the optimized
module when there is one (in memory or as an artifact), else the baseline one, else compiles optimized; every
guest's store and linker use its module's engine; the ticker advances both engines' epochs, so the sandbox
(epoch deadline, memory cap) is the same in both.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path

import wasmtime

from meshplug import compiled, errors, limits
from meshplug.agent.guest import (
    BACKENDS,
    FAST_AVAILABLE,
    PINNED_WASMTIME,
    WASMTIME_VERSION,
    FastGuest,
    Faulting,
    Guest,
    GuestExit,
    GuestFunc,
    HostFunc,
    HostImpl,
    ImportDecl,
    MemoryFault,
    PublicGuest,
    Signature,
    address_of,
    functype,
)

try:
    from meshplug.agent import _wasmcall
except ImportError:  # not built (`make native`): no native epoch ticker (the public backend serves)
    _wasmcall = None  # type: ignore[assignment]

__all__ = [
    "BACKENDS", "ENGINE_FINGERPRINT", "ENGINE_SETTINGS", "FAST_AVAILABLE", "PINNED_WASMTIME", "WASMTIME_VERSION",
    "FastGuest", "Faulting", "Guest", "GuestExit", "GuestFunc", "HostFunc", "HostImpl", "ImportDecl", "MemoryFault",
    "PublicGuest", "Runtime", "Signature", "default_runtime", "functype",
]  # fmt: skip

#: engine settings (meshplug.compiled: the operator compiles with the same); the fingerprint (settings, wasmtime
#: version, CPU) is part of every precompiled artifact's cache key
ENGINE_SETTINGS = compiled.ENGINE_SETTINGS
ENGINE_FINGERPRINT = compiled.ENGINE_FINGERPRINT


def _valtype_name(vt: wasmtime.ValType) -> str:
    return str(vt)


def _sig(ft: wasmtime.FuncType) -> Signature:
    return Signature(tuple(_valtype_name(p) for p in ft.params), tuple(_valtype_name(r) for r in ft.results))


class Runtime:
    """The engines (epoch interruption on; one per compiler tier), their epoch ticker, and module loading.
    Shared by all VMs."""

    def __init__(
        self, *, tick_ms: int = limits.EPOCH_TICK_MS, cache_root: Path | None = None, precompiled: bool = True
    ) -> None:
        """`cache_root`: where compiled artifacts live (default: meshplug.compiled.default_root());
        `precompiled=False` compiles every load (tests of the compiler path)."""
        self.engine = compiled.new_engine()
        self.tick_ms = tick_ms
        self.artifacts = (
            compiled.ArtifactCache(self.engine, settings=ENGINE_FINGERPRINT, root=cache_root) if precompiled else None
        )
        #: the baseline tier's engine and artifacts (None: this wasmtime has no Winch, or no artifact cache)
        self.baseline_engine: wasmtime.Engine | None = None
        self.baseline_artifacts: compiled.ArtifactCache | None = None
        if precompiled and compiled.baseline_available():
            self.baseline_engine = compiled.new_engine(compiled.Tier.BASELINE)
            self.baseline_artifacts = compiled.ArtifactCache(
                self.baseline_engine, settings=compiled.BASELINE_FINGERPRINT, root=cache_root
            )
        #: baseline modules still held (their guests' stores must be of the baseline engine)
        self._baseline_loaded: weakref.WeakValueDictionary[str, wasmtime.Module] = weakref.WeakValueDictionary()
        self._baseline_modules: weakref.WeakSet[wasmtime.Module] = weakref.WeakSet()
        #: how each load was served (meshplug.compiled.Outcome values, "compiled" without a cache, "memory" for
        #: a module still loaded): metrics
        self.load_outcomes: collections.Counter[str] = collections.Counter()
        #: modules by the sha256 of their bytes while something holds them (a VM, the loader between its
        #: validation and the VM start): loaded once per set, however many steps and plugins need it
        self._loaded: weakref.WeakValueDictionary[str, wasmtime.Module] = weakref.WeakValueDictionary()
        #: modules deserialized from an artifact in memory (`adopt`) whose first load is still to report it (hit)
        self._adopted: set[str] = set()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._lock = threading.Lock()
        #: the ticker's count, advanced just before the engine's (so it is never behind): the fast backend
        #: re-arms a store's epoch deadline only when this moved since it last armed it (or after a failed
        #: call), which keeps every top-level call's budget >= the configured ticks - 1 without a C call per
        #: guest call. With the extension the ticker is its native thread (`_wasmcall.Ticker`): the fast
        #: backend's guest calls hold the GIL, so a Python ticker could not interrupt a looping guest
        self.clock: _wasmcall.Epoch | None = _wasmcall.Epoch() if _wasmcall is not None else None
        #: one native thread for every engine (it advances `clock`, then each engine: never behind either), and
        #: how many of `engines()` it advances
        self._native_ticker: _wasmcall.Ticker | None = None
        self._ticked = 0

    # -- epoch ticker ---------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self.clock is not None:  # a native thread: guest calls keep the GIL, the ticker needs none
                # the baseline engine's only once a baseline module was loaded
                engines = self.engines() if self._baseline_modules else (self.engine,)
                assert _wasmcall is not None
                if self._native_ticker is None:
                    self._native_ticker = _wasmcall.Ticker(self.clock, address_of(self.engine.ptr()), self.tick_ms)
                    self._ticked = 1
                for engine in engines[self._ticked :]:
                    self._native_ticker.add_engine(address_of(engine.ptr()))
                    self._ticked += 1
                self._native_ticker.start()
            elif self._ticker is None:
                self._stop.clear()
                self._ticker = threading.Thread(target=self._tick, name="meshplug-epoch", daemon=True)
                self._ticker.start()

    def close(self) -> None:
        with self._lock:
            ticker, self._ticker = self._ticker, None
            if self._native_ticker is not None:
                self._native_ticker.stop()
        if ticker is not None:
            self._stop.set()
            ticker.join()

    def _tick(self) -> None:
        period = self.tick_ms / 1000.0
        while not self._stop.wait(period):
            for engine in self.engines():
                engine.increment_epoch()

    def engines(self) -> tuple[wasmtime.Engine, ...]:
        return (self.engine,) if self.baseline_engine is None else (self.engine, self.baseline_engine)

    def engine_of(self, module: wasmtime.Module) -> wasmtime.Engine:
        """The engine `module` was compiled or deserialized for (its guests' stores and linkers use it)."""
        if self.baseline_engine is not None and module in self._baseline_modules:
            return self.baseline_engine
        return self.engine

    def deadline_ticks(self, deadline_ms: int) -> int:
        return -(-deadline_ms // self.tick_ms) + 1

    # -- modules -----------------------------------------------------------------------------------
    def load(self, data: bytes) -> wasmtime.Module:
        """The compiled module for `data`: deserialized from its precompiled artifact (meshplug.compiled,
        keyed by the module's sha256 -- computed here, never taken from a caller -- and ENGINE_FINGERPRINT),
        else compiled and stored for the next load. Raises PluginStartError(reason="compile_failed")."""
        return self.load_with_outcome(data)[0]

    def load_with_outcome(self, data: bytes) -> tuple[wasmtime.Module, str]:
        """`load`, and how: a meshplug.compiled.Outcome value (``hit``: loaded from an artifact; ``miss``,
        ``stale``, ``corrupt``: compiled), ``compiled`` (no artifact cache) or ``memory`` (still loaded)."""
        module, outcome, _ = self.load_tiered(data)
        return module, outcome

    def load_tiered(self, data: bytes) -> tuple[wasmtime.Module, str, compiled.Tier]:
        """`load_with_outcome`, and which tier the module is: the optimized one if loaded or stored (an
        artifact), else a baseline one loaded or stored, else the optimized one compiled here."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            module = self._loaded.get(digest)
        if module is not None:  # loaded already and still in use (e.g. validated by the loader, now started)
            outcome = self._memory_outcome(digest)
        elif self.artifacts is not None:
            loaded = self.artifacts.get(digest)
            if loaded is None:
                baseline = self._load_baseline(digest)
                if baseline is not None:
                    return baseline
                loaded = self.artifacts.load(data, sha256=digest)
            module, outcome = loaded.module, loaded.outcome.value
        else:
            try:
                module = compiled.compile_module(self.engine, data, inline=True, digest=digest)
            except wasmtime.WasmtimeError as exc:
                raise errors.PluginStartError(f"module does not compile: {exc}", reason="compile_failed") from exc
            outcome = "compiled"
        with self._lock:
            self.load_outcomes[outcome] += 1
            self._loaded[digest] = module
        return module, outcome, compiled.Tier.OPTIMIZED

    def _load_baseline(self, digest: str) -> tuple[wasmtime.Module, str, compiled.Tier] | None:
        """The baseline module of `digest` if still loaded or stored as an artifact (never compiled here)."""
        if self.baseline_artifacts is None:
            return None
        with self._lock:
            module = self._baseline_loaded.get(digest)
        outcome = self._memory_outcome(digest) if module is not None else "memory"
        if module is None:
            loaded = self.baseline_artifacts.get(digest)
            if loaded is None:
                return None
            module, outcome = loaded.module, loaded.outcome.value
        with self._lock:
            self.load_outcomes[outcome] += 1
            self._baseline_loaded[digest] = module
            self._baseline_modules.add(module)
        return module, outcome, compiled.Tier.BASELINE

    def _memory_outcome(self, digest: str) -> str:
        """How a module found in memory is reported: ``hit`` the first time after `adopt` (an artifact's), else
        ``memory`` (loaded before, still in use)."""
        with self._lock:
            if digest in self._adopted:
                self._adopted.discard(digest)
                return compiled.Outcome.HIT.value
        return "memory"

    def adopt(self, digest: str, key: str, blob: bytes) -> wasmtime.Module | None:
        """Load the artifact file ``blob`` the operator made for module ``digest`` straight from memory with
        the engine of the tier whose artifact key (file name) ``key`` is (`checked`: the caller matched the
        blob's sha256 against the push's), so the next `load_tiered` of that module finds it loaded. None: no
        engine of ours has that key, or the blob is not sound for it (compiling stays the fallback). The
        caller holds the module (the runtime only keeps modules something holds) and may store the blob
        (`compiled.ArtifactCache.install`) for later loads."""
        tiers = ((self.artifacts, compiled.Tier.OPTIMIZED), (self.baseline_artifacts, compiled.Tier.BASELINE))
        for cache, tier in tiers:
            if cache is None or cache.key(digest).filename != key:
                continue
            module = cache.deserialize(digest, blob, checked=True)
            if module is None:
                return None
            with self._lock:
                if tier is compiled.Tier.OPTIMIZED:
                    self._loaded[digest] = module
                else:
                    self._baseline_loaded[digest] = module
                    self._baseline_modules.add(module)
                self._adopted.add(digest)
            return module
        return None

    def deserialize(self, blob: bytes) -> wasmtime.Module:
        return wasmtime.Module.deserialize(self.engine, blob)

    @staticmethod
    def imports(module: wasmtime.Module) -> list[ImportDecl]:
        out: list[ImportDecl] = []
        for imp in module.imports:
            ty = imp.type
            if not isinstance(ty, wasmtime.FuncType):
                raise errors.PluginStartError(
                    f"module imports non-function {imp.module}.{imp.name}", reason="unsupported_import"
                )
            out.append(ImportDecl(imp.module, imp.name or "", _sig(ty)))
        return out

    @staticmethod
    def exports(module: wasmtime.Module) -> dict[str, Signature]:
        return {e.name: _sig(e.type) for e in module.exports if isinstance(e.type, wasmtime.FuncType)}

    def new_guest(
        self,
        module: wasmtime.Module,
        imports: Sequence[tuple[ImportDecl, HostImpl]],
        *,
        backend: str = "fast",
        memory_cap: int = limits.VM_MAX_MEMORY_BYTES,
        deadline_ms: int = limits.CALLBACK_DEADLINE_MS,
    ) -> Guest:
        """A not-yet-instantiated guest; call `instantiate()` (host functions may run during it)."""
        self.start()
        if backend == "fast" and FAST_AVAILABLE:
            return FastGuest(self, module, imports, memory_cap=memory_cap, deadline_ms=deadline_ms)
        if backend in BACKENDS:
            return PublicGuest(self, module, imports, memory_cap=memory_cap, deadline_ms=deadline_ms)
        raise errors.HostError(f"unknown wasm backend {backend!r}; known: {', '.join(BACKENDS)}")


_default_runtime: Runtime | None = None
_default_lock = threading.Lock()


def default_runtime() -> Runtime:
    """The process-wide runtime (its engines, their ticker)."""
    global _default_runtime  # noqa: PLW0603 -- one engine per process is the point
    with _default_lock:
        if _default_runtime is None:
            _default_runtime = Runtime()
        return _default_runtime
