"""bytes -> ModuleInfo: what a proxy-wasm module is, and whether meshplug's host can run it.

Called through `meshplug.validate` by the operator flow (spec -> fetch -> **validate** -> render) and by
`meshplug inspect`. wasmtime compiles the module (the same compiler the agent runs it with) and gives the
import/export types; `meshplug.validate.binary` reads what wasmtime does not expose (start section, export
order, custom sections); `meshplug.abi_table` says what the host provides and with which types.

Every finding is a `Problem` with a stable ``code`` (a metric/condition label), a one-line message naming the
offending export/import and what to do, and a severity: errors reject the module, warnings are reported.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

import wasmtime

from meshplug import abi_table, errors, limits
from meshplug.validate import binary


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Code(enum.StrEnum):
    """Stable problem codes. Errors first, then warnings."""

    TOO_LARGE = "too_large"
    NOT_WASM = "not_wasm"
    COMPILE_FAILED = "compile_failed"
    NO_MEMORY = "no_memory"
    NO_ABI_MARKER = "no_abi_marker"
    UNKNOWN_ABI_MARKER = "unknown_abi_marker"
    NO_ALLOCATOR = "no_allocator"
    MISSING_IMPORT = "missing_import"
    IMPORT_TYPE_MISMATCH = "import_type_mismatch"
    # warnings
    ROOT_ONLY_AS_HTTP = "root_only_as_http"
    NOT_A_NETWORK_FILTER = "not_a_network_filter"
    CALLBACK_TYPE_MISMATCH = "callback_type_mismatch"
    IMPORT_OUTSIDE_ABI_VERSION = "import_outside_abi_version"
    SEVERAL_ABI_MARKERS = "several_abi_markers"
    HEADER_ARITY_UNLIKE_MARKER = "header_arity_unlike_marker"
    MALFORMED_PRODUCERS = "malformed_producers"


_WARNINGS = frozenset(
    {
        Code.ROOT_ONLY_AS_HTTP,
        Code.NOT_A_NETWORK_FILTER,
        Code.CALLBACK_TYPE_MISMATCH,
        Code.IMPORT_OUTSIDE_ABI_VERSION,
        Code.SEVERAL_ABI_MARKERS,
        Code.HEADER_ARITY_UNLIKE_MARKER,
        Code.MALFORMED_PRODUCERS,
    }
)


@dataclass(frozen=True)
class Problem:
    code: Code
    message: str

    @property
    def severity(self) -> Severity:
        return Severity.WARNING if self.code in _WARNINGS else Severity.ERROR

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class EntryPoint(enum.StrEnum):
    """How the module initialises itself (docs/proxy-wasm-abi.md §4.3): the host calls one of these first."""

    INITIALIZE = "_initialize"
    START = "_start"
    START_SECTION = "start-section"
    NONE = "none"


class FilterKind(enum.StrEnum):
    """How a plugin is configured: as an HTTP filter or a network (L4) filter."""

    HTTP = "http"
    NETWORK = "network"


class PluginKind(enum.StrEnum):
    """What the exported callbacks make the plugin."""

    HTTP = "http"
    NETWORK = "network"
    HTTP_AND_NETWORK = "http+network"
    ROOT_ONLY = "root-only"


class ImportGroup(enum.StrEnum):
    ENV = abi_table.ENV
    WASI_PREVIEW1 = abi_table.WASI_PREVIEW1
    WASI_UNSTABLE = abi_table.WASI_UNSTABLE
    OTHER = "other"


@dataclass(frozen=True)
class ImportInfo:
    """One import of the module, checked against the host's table."""

    group: ImportGroup
    module: str
    name: str
    #: declared type: a function signature ("(i32) -> (i32)") or the extern kind ("memory", "table", "global")
    declared: str
    #: meshplug's host defines this module.name
    provided: bool
    #: the type the host defines it with (None when not provided)
    expected: str | None
    #: provided and declared with the host's type: the linker will accept it
    type_matches: bool

    def to_json(self) -> dict[str, object]:
        return {
            "module": self.module,
            "name": self.name,
            "declared": self.declared,
            "provided": self.provided,
            "expected": self.expected,
            "type_matches": self.type_matches,
        }


@dataclass(frozen=True)
class Producers:
    """The `producers` custom section, as "name version" strings per field."""

    language: tuple[str, ...] = ()
    processed_by: tuple[str, ...] = ()
    sdk: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleInfo:
    """Everything the validator learnt about one module. ``problems`` holds the verdict's reasons."""

    size: int
    sha256: str
    #: wasmtime compiled the module (False: not wasm or a compile error; most fields below are then empty)
    compiled: bool = False
    memory_exported: bool = False
    #: ABI versions of the known marker exports, in export order; the first decides (as in cpp-host)
    abi_versions: tuple[abi_table.AbiVersion, ...] = ()
    #: every marker export name found, known or not, in export order
    markers: tuple[str, ...] = ()
    #: parameter count of the exported header callbacks (2 = 0.1.0 style, 3 = eos flag), None if none exported
    header_arity: int | None = None
    entry_point: EntryPoint = EntryPoint.NONE
    has_start_section: bool = False
    #: the allocator export the host will use (spec order: proxy_on_memory_allocate, then malloc)
    allocator: str | None = None
    #: every exported host-called callback (names from abi_table.CALLBACKS) with a type the host accepts
    callbacks: tuple[str, ...] = ()
    plugin_kind: PluginKind = PluginKind.ROOT_ONLY
    imports: tuple[ImportInfo, ...] = ()
    producers: Producers = field(default_factory=Producers)
    custom_sections: tuple[str, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def abi_version(self) -> abi_table.AbiVersion | None:
        """The ABI version the host runs the module with (first known marker), or None."""
        if self.markers and self.markers[0] in abi_table.MARKERS:
            return abi_table.MARKERS[self.markers[0]]
        return None

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.severity is Severity.WARNING)

    @property
    def accepted(self) -> bool:
        return not self.errors

    def codes(self) -> tuple[Code, ...]:
        return tuple(p.code for p in self.problems)

    def imports_by_group(self) -> dict[ImportGroup, tuple[ImportInfo, ...]]:
        return {g: tuple(i for i in self.imports if i.group is g) for g in ImportGroup}

    def to_json(self) -> dict[str, object]:
        return {
            "size": self.size,
            "sha256": self.sha256,
            "compiled": self.compiled,
            "accepted": self.accepted,
            "abi_version": self.abi_version,
            "abi_versions": list(self.abi_versions),
            "markers": list(self.markers),
            "header_arity": self.header_arity,
            "memory_exported": self.memory_exported,
            "entry_point": self.entry_point,
            "has_start_section": self.has_start_section,
            "allocator": self.allocator,
            "plugin_kind": self.plugin_kind,
            "callbacks": list(self.callbacks),
            "imports": {g.value: [i.to_json() for i in group] for g, group in self.imports_by_group().items() if group},
            "producers": {
                "language": list(self.producers.language),
                "processed-by": list(self.producers.processed_by),
                "sdk": list(self.producers.sdk),
            },
            "custom_sections": list(self.custom_sections),
            "errors": [{"code": p.code, "message": p.message} for p in self.errors],
            "warnings": [{"code": p.code, "message": p.message} for p in self.warnings],
        }


_ENGINE: wasmtime.Engine | None = None


def _default_engine() -> wasmtime.Engine:
    global _ENGINE  # noqa: PLW0603 - one lazily created Engine per process, as wasmtime intends
    if _ENGINE is None:
        _ENGINE = wasmtime.Engine()
    return _ENGINE


def _group(module: str) -> ImportGroup:
    try:
        return ImportGroup(module)
    except ValueError:
        return ImportGroup.OTHER


def _extern_kind(t: object) -> str:
    if isinstance(t, wasmtime.FuncType):
        return str(abi_table.FuncSig.of(t))
    if isinstance(t, wasmtime.MemoryType):
        return "memory"
    if isinstance(t, wasmtime.TableType):
        return "table"
    if isinstance(t, wasmtime.GlobalType):
        return "global"
    return type(t).__name__


def _check_imports(module: wasmtime.Module) -> tuple[tuple[ImportInfo, ...], list[Problem]]:
    infos: list[ImportInfo] = []
    problems: list[Problem] = []
    for imp in module.imports:
        mod_name, name = imp.module, imp.name or ""
        declared = _extern_kind(imp.type)
        known = abi_table.lookup(mod_name, name)
        itype = imp.type
        is_func = isinstance(itype, wasmtime.FuncType)
        expected = str(known.sig) if known is not None else None
        matches = (
            known is not None and isinstance(itype, wasmtime.FuncType) and abi_table.FuncSig.of(itype) == known.sig
        )
        infos.append(ImportInfo(_group(mod_name), mod_name, name, declared, known is not None, expected, matches))
        if known is None:
            what = "function" if is_func else declared
            problems.append(
                Problem(
                    Code.MISSING_IMPORT,
                    f"imports {what} {mod_name}.{name} {declared if is_func else ''}".rstrip()
                    + ", which meshplug's host does not provide; rebuild without it (or file a request for it)",
                )
            )
        elif not matches:
            problems.append(
                Problem(
                    Code.IMPORT_TYPE_MISMATCH,
                    f"imports {mod_name}.{name} declared as {declared}, but the ABI defines {expected};"
                    " the SDK or its declarations do not match the proxy-wasm ABI",
                )
            )
    return tuple(infos), problems


def _markers(module: wasmtime.Module, data: bytes) -> tuple[str, ...]:
    exported = {e.name for e in module.exports if isinstance(e.type, wasmtime.FuncType)}
    return tuple(
        n for n in binary.function_export_names(data) if n.startswith(abi_table.MARKER_PREFIX) and n in exported
    )


def _producers(data: bytes, customs: tuple[binary.CustomSection, ...]) -> tuple[Producers, list[Problem]]:
    for cs in customs:
        if cs.name != "producers":
            continue
        try:
            p = binary.parse_producers(cs.payload)
        except binary.BinaryFormatError as exc:
            return Producers(), [Problem(Code.MALFORMED_PRODUCERS, f"the producers custom section is malformed: {exc}")]

        def fmt(values: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
            return tuple(f"{n} {v}".strip() for n, v in values)

        return Producers(fmt(p.language), fmt(p.processed_by), fmt(p.sdk)), []
    return Producers(), []


def describe(  # noqa: PLR0912, PLR0915 - one pass over the module, each finding recorded where it is seen
    data: bytes,
    *,
    kind: FilterKind | None = None,
    engine: wasmtime.Engine | None = None,
    module: wasmtime.Module | None = None,
) -> ModuleInfo:
    """Inspect ``data``; never raises for a bad module (the reasons are in ``ModuleInfo.problems``).

    ``kind`` is how the plugin will be configured (None: unknown, no kind warnings). ``engine``: the wasmtime
    Engine to compile with (default: one shared default Engine). ``module``: ``data`` already compiled (e.g.
    loaded from its precompiled artifact): nothing is compiled again.
    """
    size = len(data)
    sha = hashlib.sha256(data).hexdigest()
    if size > limits.MAX_MODULE_BYTES:
        return ModuleInfo(
            size,
            sha,
            problems=(
                Problem(Code.TOO_LARGE, f"module is {size} bytes, over the {limits.MAX_MODULE_BYTES}-byte limit"),
            ),
        )
    header = binary.header_problem(data)
    if header is not None:
        return ModuleInfo(size, sha, problems=(Problem(Code.NOT_WASM, f"input {header}"),))
    try:
        if module is None:
            module = wasmtime.Module(engine or _default_engine(), data)
    except wasmtime.WasmtimeError as exc:
        text = " ".join(str(exc).split())
        return ModuleInfo(size, sha, problems=(Problem(Code.COMPILE_FAILED, f"wasmtime cannot compile it: {text}"),))

    problems: list[Problem] = []
    exports = {e.name: e.type for e in module.exports}
    funcs = {n: abi_table.FuncSig.of(t) for n, t in exports.items() if isinstance(t, wasmtime.FuncType)}

    memory_exported = isinstance(exports.get(abi_table.MEMORY_EXPORT), wasmtime.MemoryType)
    if not memory_exported:
        problems.append(
            Problem(
                Code.NO_MEMORY,
                "exports no linear memory named 'memory'; the host exchanges every buffer through it",
            )
        )

    markers = _markers(module, data)
    known = tuple(abi_table.MARKERS[m] for m in markers if m in abi_table.MARKERS)
    if not markers:
        problems.append(
            Problem(
                Code.NO_ABI_MARKER,
                "exports no proxy_abi_version_* marker; build with a proxy-wasm SDK (expected one of "
                + ", ".join(abi_table.MARKERS)
                + ")",
            )
        )
    elif markers[0] not in abi_table.MARKERS:
        problems.append(
            Problem(
                Code.UNKNOWN_ABI_MARKER,
                f"exports {markers[0]}, an ABI version no host supports; supported: " + ", ".join(abi_table.MARKERS),
            )
        )
    if len(markers) > 1:
        problems.append(
            Problem(
                Code.SEVERAL_ABI_MARKERS,
                f"exports several ABI markers ({', '.join(markers)}); hosts use the first, {markers[0]}",
            )
        )
    for m in markers:
        if funcs.get(m) != abi_table.MARKER_SIG:
            problems.append(
                Problem(Code.CALLBACK_TYPE_MISMATCH, f"marker {m} has type {funcs.get(m)}, expected () -> ()")
            )

    allocator = next((a for a in abi_table.ALLOCATORS if funcs.get(a) in abi_table.CALLBACKS[a].sigs), None)
    if allocator is None:
        found = [f"{a} {funcs[a]}" for a in abi_table.ALLOCATORS if a in funcs]
        problems.append(
            Problem(
                Code.NO_ALLOCATOR,
                "exports no allocator the host can call (proxy_on_memory_allocate or malloc, type (i32) -> (i32))"
                + (f"; found {', '.join(found)} with the wrong type" if found else ""),
            )
        )

    callbacks: list[str] = []
    for name, sig in funcs.items():
        cb = abi_table.CALLBACKS.get(name)
        if cb is None:
            continue
        if sig in cb.sigs:
            callbacks.append(name)
        else:
            want = " or ".join(str(s) for s in cb.sigs)
            problems.append(
                Problem(
                    Code.CALLBACK_TYPE_MISMATCH,
                    f"export {name} has type {sig}, expected {want}; hosts treat it as absent",
                )
            )
    arities = {len(funcs[n].params) for n in abi_table.HEADER_CALLBACKS if n in callbacks}
    header_arity = max(arities) if arities else None

    version = abi_table.MARKERS.get(markers[0]) if markers else None
    if version is not None and header_arity is not None:
        marker_arity = 2 if version is abi_table.AbiVersion.V0_1_0 else 3
        if header_arity != marker_arity:
            problems.append(
                Problem(
                    Code.HEADER_ARITY_UNLIKE_MARKER,
                    f"ABI {version} header callbacks take {marker_arity} args but this module's take {header_arity};"
                    " meshplug's host follows the export's type, Envoy refuses to load it ('Bad function signature')",
                )
            )

    kinds = {abi_table.CALLBACKS[n].kind for n in callbacks}
    is_http, is_net = abi_table.Kind.HTTP in kinds, abi_table.Kind.NETWORK in kinds
    plugin_kind = (
        PluginKind.HTTP_AND_NETWORK
        if is_http and is_net
        else PluginKind.HTTP
        if is_http
        else PluginKind.NETWORK
        if is_net
        else PluginKind.ROOT_ONLY
    )
    if kind is FilterKind.HTTP and not is_http:
        problems.append(
            Problem(
                Code.ROOT_ONLY_AS_HTTP,
                f"configured as an HTTP filter but exports no HTTP callback (it is {plugin_kind}); Envoy answers"
                " 503 on the first request: configure it as a network filter or a singleton",
            )
        )
    if kind is FilterKind.NETWORK and not is_net:
        problems.append(
            Problem(
                Code.NOT_A_NETWORK_FILTER,
                f"configured as a network filter but exports no network callback (it is {plugin_kind})",
            )
        )

    start_index = binary.start_function(data)
    if "_initialize" in callbacks:
        entry = EntryPoint.INITIALIZE
    elif "_start" in callbacks:
        entry = EntryPoint.START
    elif start_index is not None:
        entry = EntryPoint.START_SECTION
    else:
        entry = EntryPoint.NONE

    imports, import_problems = _check_imports(module)
    problems.extend(import_problems)
    if version is not None:
        for imp in imports:
            spec = abi_table.lookup(imp.module, imp.name)
            if spec is not None and spec.family == "proxy" and version not in spec.versions:
                problems.append(
                    Problem(
                        Code.IMPORT_OUTSIDE_ABI_VERSION,
                        f"imports {imp.module}.{imp.name}, which ABI {version} does not define (it belongs to "
                        + ", ".join(sorted(spec.versions))
                        + "); meshplug provides it, Envoy refuses to link it",
                    )
                )

    customs = binary.custom_sections(data)
    producers, producer_problems = _producers(data, customs)
    problems.extend(producer_problems)
    problems.sort(key=lambda p: p.severity is Severity.WARNING)

    return ModuleInfo(
        size=size,
        sha256=sha,
        compiled=True,
        memory_exported=memory_exported,
        abi_versions=known,
        markers=markers,
        header_arity=header_arity,
        entry_point=entry,
        has_start_section=start_index is not None,
        allocator=allocator,
        callbacks=tuple(callbacks),
        plugin_kind=plugin_kind,
        imports=imports,
        producers=producers,
        custom_sections=tuple(c.name for c in customs),
        problems=tuple(problems),
    )


def validate(
    data: bytes,
    *,
    kind: FilterKind | None = None,
    engine: wasmtime.Engine | None = None,
    module: wasmtime.Module | None = None,
) -> ModuleInfo:
    """`describe`, then raise errors.ValidationError(reasons=...) if any problem is an error."""
    info = describe(data, kind=kind, engine=engine, module=module)
    if not info.accepted:
        reasons = tuple(str(p) for p in info.errors)
        raise errors.ValidationError(
            f"module sha256:{info.sha256[:12]} rejected: " + "; ".join(reasons),
            reasons=reasons,
            reason=info.errors[0].code.value,
        )
    return info
