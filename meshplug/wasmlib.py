"""Which libwasmtime this process runs: wasmtime-py's own (``stock``) or the one scripts/build_wasmtime.py builds
here (``built``): the same wasmtime release from the registry's C API crate, plus one exported function that sets
`Config::compiler_inlining` (wasmtime's C API, hence wasmtime-py, has no setter for it).

Why: with epoch interruption on (the agent's sandbox against a looping plugin), every function entry and loop
head checks the epoch and its slow path is a call, so the tiny functions an AssemblyScript module calls millions
of times per body (the runtime's __retain/__release, String#indexOf's compare) keep a frame and spill
callee-saved registers; Cranelift's inliner (intra-module, "yes") folds them into their callers. Measured on the
AssemblyScript body plugin (1023 KiB): 26% fewer instructions per request (README, the matrix rows).

How it is loaded, without touching wasmtime-py's files: the build leaves a copy of the installed wasmtime-py
package (its Python files, same version) whose ``linux-x86_64/_libwasmtime.so`` is the built library under
``<dir>/<version>/python`` (`overlay`); `select()`, run by ``meshplug/__init__.py`` before anything imports
wasmtime, puts that directory first on ``sys.path``. wasmtime-py finds its library next to its own files, so the
rest of the process (the native call path included: it takes wasmtime's function addresses from that library)
uses the built one. ``MESHPLUG_WASMTIME``: ``stock`` (default), ``built`` (required: an ImportError when absent),
``auto`` (the built library when present and made for the installed wasmtime-py). Opt-in because inlining holds
the whole module's IR while it compiles: a 3.4 MB Go SDK module peaks at ~1.4 GB RSS (stock: ~120 MiB), which an
agent compiling a module itself (no precompiled artifact) would then keep until malloc trims it. ``<dir>`` is
``$MESHPLUG_WASMTIME_DIR`` or ``~/.cache/meshplug/wasmtime`` (not ``$MESHPLUG_CACHE``, which tests point at
per-pod state: every process of one installation must pick the same library, or the operator's precompiled
artifacts would not match the agents' engines; meshplug.compiled keys artifacts by the library as well).
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

#: the wasmtime-py release whose library the build reproduces (meshplug.agent.guest pins the same)
VERSION = "50.0.1"
ENV = "MESHPLUG_WASMTIME"
MODES = ("stock", "built", "auto")
#: the function the built library adds (wasm_config_t*, const char* mode) -> bool
INLINING_SYMBOL = "meshplug_config_compiler_inlining_set"
#: written last by the build: the wasmtime-py version the overlay was copied from
STAMP = "meshplug-wasmtime.stamp"


def root() -> Path:
    return Path(os.environ.get("MESHPLUG_WASMTIME_DIR") or Path.home() / ".cache" / "meshplug" / "wasmtime")


def overlay(version: str = VERSION) -> Path:
    """The directory put on sys.path: it holds one package, ``wasmtime``, with the built library."""
    return root() / version / "python"


def usable(version: str = VERSION) -> str:
    """Why the built library cannot be used here ("" when it can)."""
    try:
        installed = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        return "wasmtime-py is not installed"
    if installed != version:
        return f"wasmtime-py {installed} is installed, the built library is for {version}"
    base = overlay(version)
    try:
        stamp = (base / STAMP).read_text().strip()
    except OSError:
        return f"no built library under {base} (scripts/build_wasmtime.py)"
    if stamp != installed:
        return f"{base} was made for wasmtime-py {stamp}"
    if not (base / "wasmtime" / "linux-x86_64" / "_libwasmtime.so").is_file():
        return f"{base} has no library"
    return ""


def select() -> str:
    """Put the built library's overlay first on sys.path when MESHPLUG_WASMTIME asks for it (or allows it and it
    is there). Returns "built", "stock" or, when wasmtime was imported before this ran, "imported"."""
    mode = os.environ.get(ENV, "stock") or "stock"
    if mode not in MODES:
        raise ImportError(f"{ENV}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "stock":
        return "stock"
    if "wasmtime" in sys.modules:
        return "imported"
    reason = usable()
    if reason:
        if mode == "built":
            raise ImportError(f"{ENV}=built: {reason}")
        return "stock"
    path = str(overlay())
    if path not in sys.path:
        sys.path.insert(0, path)
    return "built"


def loaded() -> bool:
    """Whether the wasmtime this process imported runs the built library (it has the inlining setter)."""
    from wasmtime import _ffi  # noqa: PLC0415 -- only once wasmtime is wanted

    return hasattr(_ffi.dll, INLINING_SYMBOL)


def set_inlining(config: object, mode: str) -> None:
    """`Config::compiler_inlining(mode)` on a wasmtime.Config (the built library only)."""
    import ctypes  # noqa: PLC0415

    from wasmtime import _ffi  # noqa: PLC0415

    setter = getattr(_ffi.dll, INLINING_SYMBOL)
    setter.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    setter.restype = ctypes.c_bool
    ptr = config.ptr()  # type: ignore[attr-defined]
    if not setter(ctypes.cast(ptr, ctypes.c_void_p), mode.encode()):
        raise ValueError(f"wasmtime refused compiler inlining {mode!r}")
