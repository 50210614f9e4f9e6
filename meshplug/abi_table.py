"""The proxy-wasm ABI as data: every host import and every guest export meshplug knows, with wasm types.

One table, read like the spec, used by two callers:

- `meshplug.validate` checks a module's declared imports/exports against it (is the import provided, does its
  declared type match);
- `meshplug.agent` builds its wasmtime `Linker` from it (one loop over `IMPORTS`, one shim per entry).

Types are plain strings (``"i32"``, ``"i64"``), exactly as wasmtime-py's ``str(ValType)`` renders them, so
``FuncSig.of(wasmtime_func_type) == entry.sig`` is the type check. This module imports nothing beyond the
standard library (no wasmtime): it is pure data.

Versions: an import is "provided" for every ABI version listed in ``Import.versions``; meshplug's host offers
the union of all versions (an unused import costs nothing), so `provided()` ignores the module's marker and
`Import.versions` is informational (what the spec ties the import to). Sources: proxy-wasm spec 0.1.0/0.2.0/0.2.1,
proxy-wasm-cpp-host exports, WASI preview1 as wasmtime defines it (checked by tests/unit/test_validate_abi_table.py
against wasmtime's own linker).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol


class AbiVersion(enum.StrEnum):
    V0_1_0 = "0.1.0"
    V0_2_0 = "0.2.0"
    V0_2_1 = "0.2.1"


ALL_VERSIONS: frozenset[AbiVersion] = frozenset(AbiVersion)
V01: frozenset[AbiVersion] = frozenset({AbiVersion.V0_1_0})
V02: frozenset[AbiVersion] = frozenset({AbiVersion.V0_2_0, AbiVersion.V0_2_1})
V021: frozenset[AbiVersion] = frozenset({AbiVersion.V0_2_1})

#: marker export name -> ABI version (the host takes the first marker in export order)
MARKERS: Mapping[str, AbiVersion] = MappingProxyType(
    {
        "proxy_abi_version_0_1_0": AbiVersion.V0_1_0,
        "proxy_abi_version_0_2_0": AbiVersion.V0_2_0,
        "proxy_abi_version_0_2_1": AbiVersion.V0_2_1,
    }
)
#: every export whose name starts with this is a marker; those not in MARKERS are unknown versions (0_x_x)
MARKER_PREFIX = "proxy_abi_version_"

ENV = "env"
WASI_PREVIEW1 = "wasi_snapshot_preview1"
WASI_UNSTABLE = "wasi_unstable"
WASI_MODULES = (WASI_PREVIEW1, WASI_UNSTABLE)


class _HasValTypes(Protocol):
    """What `FuncSig.of` needs from a wasmtime ``FuncType`` (duck-typed: no wasmtime import here)."""

    @property
    def params(self) -> Iterable[object]: ...

    @property
    def results(self) -> Iterable[object]: ...


@dataclass(frozen=True)
class FuncSig:
    """A wasm function type: parameter and result value types as strings ("i32", "i64", "f32", "f64")."""

    params: tuple[str, ...]
    results: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> FuncSig:
        """Compact form: ``"I I L -> I"`` (I = i32, L = i64); ``"-> I"``, ``"I ->"``, ``"->"``."""
        short = {"I": "i32", "L": "i64"}
        left, _, right = text.partition("->")
        return cls(tuple(short[t] for t in left.split()), tuple(short[t] for t in right.split()))

    @classmethod
    def of(cls, functype: _HasValTypes) -> FuncSig:
        """From a wasmtime-py ``FuncType`` (import or export type)."""
        return cls(tuple(str(p) for p in functype.params), tuple(str(r) for r in functype.results))

    def __str__(self) -> str:
        res = ", ".join(self.results)
        return f"({', '.join(self.params)}) -> ({res})"


@dataclass(frozen=True)
class Import:
    """One host function a guest may import: where, its exact type, and which ABI versions define it."""

    module: str
    name: str
    sig: FuncSig
    versions: frozenset[AbiVersion]
    #: "proxy" (the proxy-wasm ABI), "wasi" (WASI preview1 / unstable), "compat" (toolchain extras seen in
    #: real binaries: Emscripten, AssemblyScript)
    family: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.module, self.name)


class Kind(enum.StrEnum):
    """What a guest export makes the plugin: the callbacks decide whether it can be an HTTP or network filter."""

    INTEGRATION = "integration"  # markers, entry points, allocator
    ROOT = "root"  # context lifecycle, timers, queues, config
    HTTP = "http"
    NETWORK = "network"
    CALLOUT = "callout"  # http/grpc callout results (delivered on the root)


@dataclass(frozen=True)
class Callback:
    """One guest export the host may call, with the accepted types (header callbacks: 2- or 3-arg)."""

    name: str
    sigs: tuple[FuncSig, ...]
    kind: Kind
    versions: frozenset[AbiVersion]


# --- env: the proxy-wasm imports (Appendix A of docs/proxy-wasm-abi.md) ----------------------------------
# name: (compact signature, versions)
_ENV: dict[str, tuple[str, frozenset[AbiVersion]]] = {
    "proxy_log": ("I I I -> I", ALL_VERSIONS),
    "proxy_get_log_level": ("I -> I", V021),
    "proxy_get_current_time_nanoseconds": ("I -> I", ALL_VERSIONS),
    "proxy_set_tick_period_milliseconds": ("I -> I", ALL_VERSIONS),
    "proxy_get_configuration": ("I I -> I", V01),
    "proxy_get_buffer_bytes": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_set_buffer_bytes": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_get_buffer_status": ("I I I -> I", ALL_VERSIONS),
    "proxy_get_header_map_pairs": ("I I I -> I", ALL_VERSIONS),
    "proxy_set_header_map_pairs": ("I I I -> I", ALL_VERSIONS),
    "proxy_get_header_map_value": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_add_header_map_value": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_replace_header_map_value": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_remove_header_map_value": ("I I I -> I", ALL_VERSIONS),
    "proxy_get_header_map_size": ("I I -> I", ALL_VERSIONS),
    "proxy_get_property": ("I I I I -> I", ALL_VERSIONS),
    "proxy_set_property": ("I I I I -> I", ALL_VERSIONS),
    "proxy_continue_stream": ("I -> I", V02),
    "proxy_close_stream": ("I -> I", V02),
    "proxy_continue_request": ("-> I", V01),
    "proxy_continue_response": ("-> I", V01),
    "proxy_clear_route_cache": ("-> I", V01),
    "proxy_send_local_response": ("I I I I I I I I -> I", ALL_VERSIONS),
    "proxy_get_status": ("I I I -> I", ALL_VERSIONS),
    "proxy_http_call": ("I I I I I I I I I I -> I", ALL_VERSIONS),
    "proxy_grpc_call": ("I I I I I I I I I I I I -> I", ALL_VERSIONS),
    "proxy_grpc_stream": ("I I I I I I I I I -> I", ALL_VERSIONS),
    "proxy_grpc_send": ("I I I I -> I", ALL_VERSIONS),
    "proxy_grpc_cancel": ("I -> I", ALL_VERSIONS),
    "proxy_grpc_close": ("I -> I", ALL_VERSIONS),
    "proxy_get_shared_data": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_set_shared_data": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_register_shared_queue": ("I I I -> I", ALL_VERSIONS),
    "proxy_resolve_shared_queue": ("I I I I I -> I", ALL_VERSIONS),
    "proxy_enqueue_shared_queue": ("I I I -> I", ALL_VERSIONS),
    "proxy_dequeue_shared_queue": ("I I I -> I", ALL_VERSIONS),
    "proxy_define_metric": ("I I I I -> I", ALL_VERSIONS),
    "proxy_increment_metric": ("I L -> I", ALL_VERSIONS),
    "proxy_record_metric": ("I L -> I", ALL_VERSIONS),
    "proxy_get_metric": ("I I -> I", ALL_VERSIONS),
    "proxy_set_effective_context": ("I -> I", ALL_VERSIONS),
    "proxy_done": ("-> I", ALL_VERSIONS),
    "proxy_call_foreign_function": ("I I I I I I -> I", ALL_VERSIONS),
}

# toolchain extras under `env` seen in real binaries (docs/proxy-wasm-abi.md §2.9)
_ENV_COMPAT: dict[str, str] = {
    "emscripten_notify_memory_growth": "I ->",
    "pthread_equal": "I I -> I",
    "abort": "I I I I ->",  # AssemblyScript built without --use abort=abort_proc_exit: traps
}

# --- WASI preview1, exactly as wasmtime's preview1 linker defines each function --------------------------
_WASI: dict[str, str] = {
    "args_get": "I I -> I",
    "args_sizes_get": "I I -> I",
    "environ_get": "I I -> I",
    "environ_sizes_get": "I I -> I",
    "clock_res_get": "I I -> I",
    "clock_time_get": "I L I -> I",
    "fd_advise": "I L L I -> I",
    "fd_allocate": "I L L -> I",
    "fd_close": "I -> I",
    "fd_datasync": "I -> I",
    "fd_fdstat_get": "I I -> I",
    "fd_fdstat_set_flags": "I I -> I",
    "fd_fdstat_set_rights": "I L L -> I",
    "fd_filestat_get": "I I -> I",
    "fd_filestat_set_size": "I L -> I",
    "fd_filestat_set_times": "I L L I -> I",
    "fd_pread": "I I I L I -> I",
    "fd_prestat_get": "I I -> I",
    "fd_prestat_dir_name": "I I I -> I",
    "fd_pwrite": "I I I L I -> I",
    "fd_read": "I I I I -> I",
    "fd_readdir": "I I I L I -> I",
    "fd_renumber": "I I -> I",
    "fd_seek": "I L I I -> I",
    "fd_sync": "I -> I",
    "fd_tell": "I I -> I",
    "fd_write": "I I I I -> I",
    "path_create_directory": "I I I -> I",
    "path_filestat_get": "I I I I I -> I",
    "path_filestat_set_times": "I I I I L L I -> I",
    "path_link": "I I I I I I I -> I",
    "path_open": "I I I I I L L I I -> I",
    "path_readlink": "I I I I I I -> I",
    "path_remove_directory": "I I I -> I",
    "path_rename": "I I I I I I -> I",
    "path_symlink": "I I I I I -> I",
    "path_unlink_file": "I I I -> I",
    "poll_oneoff": "I I I I -> I",
    "proc_exit": "I ->",
    "proc_raise": "I -> I",
    "sched_yield": "-> I",
    "random_get": "I I -> I",
    "sock_accept": "I I I -> I",
    "sock_recv": "I I I I I I -> I",
    "sock_send": "I I I I I -> I",
    "sock_shutdown": "I I -> I",
}
#: functions wasi_unstable (snapshot 0) lacks; every other preview1 name has the same wasm type there
_WASI_UNSTABLE_MISSING = frozenset({"sock_accept"})


def _build_imports() -> dict[tuple[str, str], Import]:
    table: dict[tuple[str, str], Import] = {}
    for name, (sig, versions) in _ENV.items():
        table[(ENV, name)] = Import(ENV, name, FuncSig.parse(sig), versions, "proxy")
    for name, sig in _ENV_COMPAT.items():
        table[(ENV, name)] = Import(ENV, name, FuncSig.parse(sig), ALL_VERSIONS, "compat")
    for module in WASI_MODULES:
        for name, sig in _WASI.items():
            if module == WASI_UNSTABLE and name in _WASI_UNSTABLE_MISSING:
                continue
            table[(module, name)] = Import(module, name, FuncSig.parse(sig), ALL_VERSIONS, "wasi")
    return table


#: (module, name) -> Import: everything meshplug's host provides
IMPORTS: Mapping[tuple[str, str], Import] = MappingProxyType(_build_imports())


def lookup(module: str, name: str) -> Import | None:
    """The host's definition of ``module.name``, or None if meshplug's host does not provide it."""
    return IMPORTS.get((module, name))


def imports_for(version: AbiVersion) -> tuple[Import, ...]:
    """The imports the spec ties to ``version`` (plus WASI and compat extras), in table order."""
    return tuple(i for i in IMPORTS.values() if version in i.versions)


# --- guest exports the host calls ------------------------------------------------------------------------
_CB: list[tuple[str, tuple[str, ...], Kind, frozenset[AbiVersion]]] = [
    ("_initialize", ("->",), Kind.INTEGRATION, ALL_VERSIONS),
    ("_start", ("->",), Kind.INTEGRATION, ALL_VERSIONS),
    ("main", ("I I -> I",), Kind.INTEGRATION, ALL_VERSIONS),
    ("__main_void", ("-> I",), Kind.INTEGRATION, ALL_VERSIONS),
    ("proxy_on_memory_allocate", ("I -> I",), Kind.INTEGRATION, ALL_VERSIONS),
    ("malloc", ("I -> I",), Kind.INTEGRATION, ALL_VERSIONS),
    ("proxy_on_context_create", ("I I ->",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_vm_start", ("I I -> I",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_configure", ("I I -> I",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_validate_configuration", ("I I -> I",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_done", ("I -> I",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_log", ("I ->",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_delete", ("I ->",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_tick", ("I ->",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_queue_ready", ("I I ->",), Kind.ROOT, ALL_VERSIONS),
    ("proxy_on_foreign_function", ("I I I ->",), Kind.ROOT, V02),
    ("proxy_on_new_connection", ("I -> I",), Kind.NETWORK, ALL_VERSIONS),
    ("proxy_on_downstream_data", ("I I I -> I",), Kind.NETWORK, ALL_VERSIONS),
    ("proxy_on_upstream_data", ("I I I -> I",), Kind.NETWORK, ALL_VERSIONS),
    ("proxy_on_downstream_connection_close", ("I I ->",), Kind.NETWORK, ALL_VERSIONS),
    ("proxy_on_upstream_connection_close", ("I I ->",), Kind.NETWORK, ALL_VERSIONS),
    # header callbacks: 0.2.x is (ctx, n, eos); 0.1.0 modules exist with both (ctx, n) and the 3-arg form
    ("proxy_on_request_headers", ("I I I -> I", "I I -> I"), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_request_body", ("I I I -> I",), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_request_trailers", ("I I -> I",), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_request_metadata", ("I I -> I",), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_response_headers", ("I I I -> I", "I I -> I"), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_response_body", ("I I I -> I",), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_response_trailers", ("I I -> I",), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_response_metadata", ("I I -> I",), Kind.HTTP, ALL_VERSIONS),
    ("proxy_on_http_call_response", ("I I I I I ->",), Kind.CALLOUT, ALL_VERSIONS),
    ("proxy_on_grpc_receive_initial_metadata", ("I I I ->",), Kind.CALLOUT, ALL_VERSIONS),
    ("proxy_on_grpc_receive", ("I I I ->",), Kind.CALLOUT, ALL_VERSIONS),
    ("proxy_on_grpc_receive_trailing_metadata", ("I I I ->",), Kind.CALLOUT, ALL_VERSIONS),
    ("proxy_on_grpc_close", ("I I I ->",), Kind.CALLOUT, ALL_VERSIONS),
]

#: export name -> Callback (host-called guest functions; markers are in MARKERS)
CALLBACKS: Mapping[str, Callback] = MappingProxyType(
    {name: Callback(name, tuple(FuncSig.parse(s) for s in sigs), kind, v) for name, sigs, kind, v in _CB}
)
#: the type every marker export has
MARKER_SIG = FuncSig((), ())
#: allocator exports in the order meshplug's host prefers them (spec order, docs/proxy-wasm-abi.md §1.2)
ALLOCATORS: tuple[str, ...] = ("proxy_on_memory_allocate", "malloc")
#: header callbacks whose arity (2 or 3 params) the host must read from the export's type
HEADER_CALLBACKS: tuple[str, ...] = ("proxy_on_request_headers", "proxy_on_response_headers")
#: the exported linear memory every proxy-wasm guest must have
MEMORY_EXPORT = "memory"
