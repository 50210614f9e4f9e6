"""Proxy-wasm ABI validation: bytes -> ModuleInfo (ABI version, entry point, allocator, kind, imports, verdict).

The operator's third stage (spec -> fetch -> **validate** -> render) and `meshplug inspect` call it:

    info = meshplug.validate.describe(data, kind=FilterKind.HTTP)   # never raises for a bad module
    info = meshplug.validate.validate(data, kind=FilterKind.HTTP)   # raises errors.ValidationError(reasons=...)

`info` (the info.ModuleInfo dataclass) lists every finding as a Problem with a stable code; errors reject,
warnings are reported. Modules: `info` (the checks), `binary` (start/custom/export sections read by hand).
Independent of `meshplug.fetch` (an import-linter contract): it takes bytes, not sources.
"""

from __future__ import annotations

from meshplug.validate.info import (
    Code,
    EntryPoint,
    FilterKind,
    ImportGroup,
    ImportInfo,
    ModuleInfo,
    PluginKind,
    Problem,
    Producers,
    Severity,
    describe,
    validate,
)

__all__ = [
    "Code",
    "EntryPoint",
    "FilterKind",
    "ImportGroup",
    "ImportInfo",
    "ModuleInfo",
    "PluginKind",
    "Problem",
    "Producers",
    "Severity",
    "describe",
    "validate",
]
