"""The WAT edge-case guests: one table, rendered into tests/guests/<name>.wat and tests/guests/guests.yaml.

Every guest is a small but genuine proxy-wasm plugin (marker, `_initialize`, bump allocator, root and stream
context callbacks, adds an `x-guest: <name>` header to requests and responses) with exactly one thing changed:
a marker, the entry point, a missing export, a trap or endless loop in one callback, a hostile hostcall.
Users: the validator tests (tests/unit/test_guests*.py, tests/integration/test_validate_*.py) read the
expected verdict; the host's tests read the expected runtime behaviour and load the .wat files
(wasmtime compiles WAT directly; `wasmtime.wat2wasm` gives the binary for Envoy).

    python -m tests.guests.catalog          # rewrite the .wat files and guests.yaml from this table
    python -m tests.guests.catalog --check  # exit 1 if they are stale (a unit test runs this)

Conventions every guest keeps unless its row says otherwise: memory of 2 pages exported as `memory`, heap from
64 KiB, root context id checks nothing, `proxy_on_vm_start` returns the `$initialized` global (so a host that
skips the entry point sees vm_start fail), HTTP-call guests call the cluster named `upstream`.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
INDEX = HERE / "guests.yaml"
DATA_BASE = 1024  # strings and blobs live from here; 0..1023 is scratch (out-pointers, digits)
SCRATCH_TOKEN = 16
SCRATCH_DIGITS = 64
SCRATCH_PAIRS = 128  # ret_ptr, ret_size for get_header_map_pairs


class Data:
    """Assigns data-segment offsets to strings/blobs while a guest renders; `ref` gives "(ptr) (len)"."""

    def __init__(self) -> None:
        self.next = DATA_BASE
        self.segments: list[tuple[int, bytes]] = []
        self._seen: dict[bytes, int] = {}

    def ref(self, value: str | bytes) -> str:
        raw = value.encode() if isinstance(value, str) else value
        if raw not in self._seen:
            self._seen[raw] = self.next
            self.segments.append((self.next, raw))
            self.next += (len(raw) + 8) & ~7
        return f"(i32.const {self._seen[raw]}) (i32.const {len(raw)})"

    def render(self) -> str:
        def esc(b: bytes) -> str:
            return "".join(chr(c) if 0x20 <= c < 0x7F and chr(c) not in '"\\' else f"\\{c:02x}" for c in b)

        return "\n".join(f'  (data (i32.const {off}) "{esc(raw)}")' for off, raw in self.segments)


def pairs(items: list[tuple[bytes, bytes]]) -> bytes:
    """A well-formed header-pairs buffer (docs/proxy-wasm-abi.md §3.1)."""
    out = struct.pack("<I", len(items))
    out += b"".join(struct.pack("<II", len(k), len(v)) for k, v in items)
    return out + b"".join(k + b"\0" + v + b"\0" for k, v in items)


#: malformed pair buffers, each broken in one way (cpp-host rejects all four)
MALFORMED_PAIRS: dict[str, bytes] = {
    "count_exceeds_sizes": struct.pack("<III", 2, 1, 1) + b"a\0b\0",
    "missing_terminator": struct.pack("<III", 1, 1, 1) + b"aXb\0",
    "length_past_end": struct.pack("<III", 1, 1, 1000) + b"a\0b\0",
    "trailing_bytes": pairs([(b"a", b"b")]) + b"junk",
}

Body = Callable[[Data, "Guest"], str]
NL = "\n    "  # between statements of a function body


@dataclass(frozen=True)
class Guest:
    name: str
    exercises: str
    #: validator: "accept" or "reject", with the error codes (reject) and warning codes per configured kind
    verdict: str
    reasons: tuple[str, ...] = ()
    warnings_as_http: tuple[str, ...] = ()
    #: what a correct host does when running it as an HTTP filter in front of an upstream
    runtime: str = "starts; each request reaches the upstream with `x-guest: <name>` added to request and response"
    #: runtime outcome in one word for tables: ok | start_fails | request_fails | vm_fails_later | refused
    outcome: str = "ok"
    # ---- what is changed from the base plugin
    marker: str | None = "proxy_abi_version_0_2_1"
    header_arity: int = 3
    entry: str = "_initialize"  # _initialize | _start | start-section | none
    export_memory: bool = True
    allocator: str | None = "proxy_on_memory_allocate"
    plugin: str = "http"  # http | network | root
    bodies: Mapping[str, Body] = field(default_factory=dict)
    extra_imports: tuple[str, ...] = ()
    expect: Mapping[str, object] = field(default_factory=dict)  # extra facts the validator must report


def _log(d: Data, g: Guest, text: str) -> str:
    return f"(drop (call $proxy_log (i32.const 2) {d.ref(f'guest {g.name}: {text}')}))"


def _add(map_type: int, d: Data, key: str, value: str | bytes) -> str:
    return f"(drop (call $proxy_add_header_map_value (i32.const {map_type}) {d.ref(key)} {d.ref(value)}))"


# ---- default callback bodies (the base plugin) --------------------------------------------------------------
def _vm_start(d: Data, g: Guest) -> str:
    return f"{_log(d, g, 'vm started')}{NL}(global.get $initialized)"


def _req_headers(d: Data, g: Guest) -> str:
    return f"{_add(0, d, 'x-guest', g.name)}{NL}(i32.const 0)"


def _resp_headers(d: Data, g: Guest) -> str:
    return f"{_add(2, d, 'x-guest', g.name)}{NL}(i32.const 0)"


TRAP: Body = lambda d, g: "unreachable"  # noqa: E731
LOOP_FOREVER = "(loop $forever (br $forever))"

# name -> (wasm params, result, default body, which plugins export it)
CALLBACKS: dict[str, tuple[str, str, Body, frozenset[str]]] = {
    "proxy_on_context_create": ("(param $id i32) (param $parent i32)", "", lambda d, g: "", frozenset({"*"})),
    "proxy_on_vm_start": ("(param $root i32) (param $size i32)", "(result i32)", _vm_start, frozenset({"*"})),
    "proxy_on_configure": ("(param $root i32) (param $size i32)", "(result i32)", lambda d, g: "(i32.const 1)",
                           frozenset({"*"})),
    "proxy_on_request_headers": ("", "(result i32)", _req_headers, frozenset({"http"})),
    "proxy_on_request_body": ("(param $id i32) (param $size i32) (param $eos i32)", "(result i32)",
                              lambda d, g: "(i32.const 0)", frozenset({"http"})),
    "proxy_on_response_headers": ("", "(result i32)", _resp_headers, frozenset({"http"})),
    "proxy_on_new_connection": ("(param $id i32)", "(result i32)", lambda d, g: "(i32.const 0)",
                                frozenset({"network"})),
    "proxy_on_downstream_data": ("(param $id i32) (param $size i32) (param $eos i32)", "(result i32)",
                                 lambda d, g: "(i32.const 0)", frozenset({"network"})),
    "proxy_on_upstream_data": ("(param $id i32) (param $size i32) (param $eos i32)", "(result i32)",
                               lambda d, g: "(i32.const 0)", frozenset({"network"})),
    "proxy_on_downstream_connection_close": ("(param $id i32) (param $peer i32)", "", lambda d, g: "",
                                             frozenset({"network"})),
    "proxy_on_upstream_connection_close": ("(param $id i32) (param $peer i32)", "", lambda d, g: "",
                                           frozenset({"network"})),
    "proxy_on_tick": ("(param $root i32)", "", lambda d, g: "", frozenset({"*"})),
    "proxy_on_http_call_response": (
        "(param $root i32) (param $token i32) (param $headers i32) (param $body i32) (param $trailers i32)", "",
        lambda d, g: "", frozenset({"*"})),
    "proxy_on_log": ("(param $id i32)", "", lambda d, g: "", frozenset({"http", "network"})),
    "proxy_on_done": ("(param $id i32)", "(result i32)", lambda d, g: "(i32.const 1)", frozenset({"*"})),
    "proxy_on_delete": ("(param $id i32)", "", lambda d, g: "", frozenset({"*"})),
}  # fmt: skip

BASE_IMPORTS = (
    '(import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))',
    '(import "env" "proxy_add_header_map_value" (func $proxy_add_header_map_value'
    " (param i32 i32 i32 i32 i32) (result i32)))",
    '(import "env" "proxy_set_tick_period_milliseconds" (func $proxy_set_tick_period_milliseconds'
    " (param i32) (result i32)))",
)
IMPORT_HTTP_CALL = (
    '(import "env" "proxy_http_call" (func $proxy_http_call'
    " (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"
)
IMPORT_SET_PAIRS = (
    '(import "env" "proxy_set_header_map_pairs" (func $proxy_set_header_map_pairs (param i32 i32 i32) (result i32)))'
)
IMPORT_GET_PAIRS = (
    '(import "env" "proxy_get_header_map_pairs" (func $proxy_get_header_map_pairs (param i32 i32 i32) (result i32)))'
)
IMPORT_LOCAL_RESPONSE = (
    '(import "env" "proxy_send_local_response" (func $proxy_send_local_response'
    " (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"
)


def _digit(slot: int, expr: str) -> str:
    """Store status `expr` as one ASCII digit ('X' if >= 10) at scratch slot `slot`."""
    return f"(call $digit (i32.const {SCRATCH_DIGITS + slot}) {expr})"


def _digits_header(d: Data, key: str, n: int) -> str:
    return (
        f"(drop (call $proxy_add_header_map_value (i32.const 0) {d.ref(key)}"
        f" (i32.const {SCRATCH_DIGITS}) (i32.const {n})))"
    )


def _oob(d: Data, g: Guest) -> str:
    key = d.ref("x-oob")
    calls = [
        "(call $proxy_log (i32.const 2) (i32.const 0x7ffffff0) (i32.const 16))",  # far past the end
        "(call $proxy_log (i32.const 2) (i32.const 0xfffffff0) (i32.const 0x20))",  # wraps to 0x10 in u32
        "(call $proxy_get_header_map_pairs (i32.const 0) (i32.const 0xfffffffc) (i32.const 0xfffffff8))",
        f"(call $proxy_add_header_map_value (i32.const 0) (i32.const 0x7ffffff0) (i32.const 4) {key})",
    ]
    stores = NL.join(_digit(i, c) for i, c in enumerate(calls))
    return NL.join((stores, _digits_header(d, "x-oob-status", len(calls)), _req_headers(d, g)))


def _malformed_set_pairs(d: Data, g: Guest) -> str:
    stores = NL.join(
        _digit(i, f"(call $proxy_set_header_map_pairs (i32.const 0) {d.ref(buf)})")
        for i, buf in enumerate(MALFORMED_PAIRS.values())
    )
    return NL.join((stores, _digits_header(d, "x-pairs-status", len(MALFORMED_PAIRS)), _req_headers(d, g)))


def _malformed_local_response(d: Data, g: Guest) -> str:
    call = (
        f"(call $proxy_send_local_response (i32.const 403) {d.ref('guest_denied')} {d.ref('denied by guest')}"
        f" {d.ref(MALFORMED_PAIRS['length_past_end'])} (i32.const -1))"
    )
    # status 0 (host accepted the garbage and will reply 403) => stop; else record the status and continue
    return NL.join(
        (
            f"(local.set $st {call})",
            "(if (i32.eqz (local.get $st)) (then (return (i32.const 1))))",
            _digit(0, "(local.get $st)"),
            _digits_header(d, "x-local-reply-status", 1),
            _req_headers(d, g),
        )
    )


def _http_call(d: Data, g: Guest) -> str:
    headers = pairs([(b":method", b"GET"), (b":path", b"/"), (b":authority", b"upstream")])
    call = (
        f"(call $proxy_http_call {d.ref('upstream')} {d.ref(headers)} (i32.const 0) (i32.const 0)"
        f" (i32.const 0) (i32.const 0) (i32.const 5000) (i32.const {SCRATCH_TOKEN}))"
    )
    # dispatched => pause until the response callback (which traps); refused => unreachable (the host is wrong)
    return f"(if (i32.ne {call} (i32.const 0)) (then unreachable)){NL}(i32.const 1)"


def _tick_configure(d: Data, g: Guest) -> str:
    return f"(drop (call $proxy_set_tick_period_milliseconds (i32.const 20))){NL}(i32.const 1)"


def _grow(d: Data, g: Guest) -> str:
    return (
        "(block $refused (loop $more"
        " (br_if $refused (i32.eq (memory.grow (i32.const 256)) (i32.const -1))) (br $more)))"
        " unreachable"
    )


_REQ = "proxy_on_request_headers"
_ACCEPT_HTTP = "accept"

GUESTS: tuple[Guest, ...] = (
    # ---- ABI markers and header-callback arity
    Guest("abi_0_2_1", "marker 0_2_1, 3-arg header callbacks, _initialize, proxy_on_memory_allocate (the base)",
          _ACCEPT_HTTP, expect={"abi_version": "0.2.1", "header_arity": 3, "entry_point": "_initialize",
                                "allocator": "proxy_on_memory_allocate", "plugin_kind": "http"}),
    Guest("abi_0_2_0", "marker 0_2_0", _ACCEPT_HTTP, marker="proxy_abi_version_0_2_0",
          expect={"abi_version": "0.2.0", "header_arity": 3}),
    Guest("abi_0_1_0_two_arg", "marker 0_1_0 with 2-arg header callbacks (ctx, n), as Rust SDK 0.1.x",
          _ACCEPT_HTTP, marker="proxy_abi_version_0_1_0", header_arity=2,
          expect={"abi_version": "0.1.0", "header_arity": 2}),
    Guest("abi_0_1_0_three_arg", "marker 0_1_0 with 3-arg header callbacks, as old TinyGo / MOSN C++ builds",
          _ACCEPT_HTTP, marker="proxy_abi_version_0_1_0", header_arity=3,
          warnings_as_http=("header_arity_unlike_marker",), expect={"abi_version": "0.1.0", "header_arity": 3},
          runtime="starts (meshplug calls the header callbacks with 3 args); Envoy 1.40 refuses to load it: 'Bad"
          " function signature for: proxy_on_request_headers'"),
    Guest("no_marker", "no proxy_abi_version_* export", "reject", reasons=("no_abi_marker",), marker=None,
          runtime="refused before start (Envoy: 'Missing or unknown Proxy-Wasm ABI version')", outcome="refused"),
    Guest("unknown_marker_0_x_x", "the vNEXT placeholder marker proxy_abi_version_0_x_x", "reject",
          reasons=("unknown_abi_marker",), marker="proxy_abi_version_0_x_x",
          runtime="refused before start (Envoy: 'Missing or unknown Proxy-Wasm ABI version')", outcome="refused"),
    # ---- structure
    Guest("no_memory_export", "linear memory defined but not exported", "reject", reasons=("no_memory",),
          export_memory=False, outcome="refused",
          runtime="refused: the host cannot exchange buffers (Envoy 1.40 segfaults at the first proxy_log)"),
    Guest("no_allocator", "no proxy_on_memory_allocate and no malloc export", "reject", reasons=("no_allocator",),
          allocator=None, outcome="refused",
          runtime="refused: the host cannot return data to the guest (Envoy: 'missing malloc function')"),
    Guest("allocator_malloc", "allocator exported only as malloc (AssemblyScript / Emscripten style)",
          _ACCEPT_HTTP, allocator="malloc", expect={"allocator": "malloc"}),
    Guest("entry_start", "_start (WASI command) instead of _initialize", _ACCEPT_HTTP, entry="_start",
          expect={"entry_point": "_start"}),
    Guest("entry_start_section", "a wasm start section sets up the plugin during instantiation (AssemblyScript)",
          _ACCEPT_HTTP, entry="start-section", expect={"entry_point": "start-section", "has_start_section": True}),
    Guest("entry_none", "no entry point at all (C built with -nostartfiles --no-entry)", _ACCEPT_HTTP,
          entry="none", expect={"entry_point": "none"}),
    Guest("root_only", "root context callbacks only (a singleton/background plugin)", _ACCEPT_HTTP,
          warnings_as_http=("root_only_as_http",), plugin="root", expect={"plugin_kind": "root-only"},
          runtime="starts; as an HTTP filter it has no stream callbacks (Envoy answers 503 on the first request)",
          outcome="request_fails"),
    Guest("network_filter", "L4 callbacks only (on_new_connection, on_downstream_data, ...)", _ACCEPT_HTTP,
          warnings_as_http=("root_only_as_http",), plugin="network", expect={"plugin_kind": "network"},
          runtime="starts; as a network filter passes bytes through unchanged"),
    # ---- imports
    Guest("import_missing", "imports env.proxy_open_shared_kvstore (a draft-ABI call no host provides)", "reject",
          reasons=("missing_import",),
          extra_imports=('(import "env" "proxy_open_shared_kvstore" (func (param i32 i32 i32) (result i32)))',),
          runtime="refused: the linker has no definition for env.proxy_open_shared_kvstore", outcome="refused"),
    Guest("import_wrong_type", "imports env.proxy_get_header_map_value with 4 params instead of 5", "reject",
          reasons=("import_type_mismatch",),
          extra_imports=('(import "env" "proxy_get_header_map_value" (func (param i32 i32 i32 i32) (result i32)))',),
          runtime="refused: the declared type differs from the ABI's", outcome="refused"),
    # ---- traps, one per kind of callback
    Guest("trap_vm_start", "unreachable in proxy_on_vm_start", _ACCEPT_HTTP,
          bodies={"proxy_on_vm_start": TRAP}, runtime="start fails (PluginStartError)", outcome="start_fails"),
    Guest("trap_configure", "unreachable in proxy_on_configure", _ACCEPT_HTTP,
          bodies={"proxy_on_configure": TRAP}, runtime="start fails (PluginStartError)", outcome="start_fails"),
    Guest("trap_context_create_root", "unreachable in proxy_on_context_create for the root (parent 0)",
          _ACCEPT_HTTP,
          bodies={"proxy_on_context_create": lambda d, g: "(if (i32.eqz (local.get $parent)) (then unreachable))"},
          runtime="start fails (PluginStartError)", outcome="start_fails"),
    Guest("trap_context_create_stream", "unreachable in proxy_on_context_create for stream contexts", _ACCEPT_HTTP,
          bodies={"proxy_on_context_create": lambda d, g: "(if (local.get $parent) (then unreachable))"},
          runtime="starts; every request fails per the fail strategy (closed: 5xx, open: passes unfiltered)",
          outcome="request_fails"),
    Guest("trap_request_headers", "unreachable in proxy_on_request_headers", _ACCEPT_HTTP,
          bodies={_REQ: TRAP}, runtime="starts; the request fails per the fail strategy", outcome="request_fails"),
    Guest("trap_request_body", "unreachable in proxy_on_request_body (send a body to trigger it)", _ACCEPT_HTTP,
          bodies={"proxy_on_request_body": TRAP},
          runtime="starts; bodyless requests pass; a request with a body fails per the fail strategy",
          outcome="request_fails"),
    Guest("trap_response_headers", "unreachable in proxy_on_response_headers", _ACCEPT_HTTP,
          bodies={"proxy_on_response_headers": TRAP},
          runtime="starts; the upstream is called, then the response fails per the fail strategy",
          outcome="request_fails"),
    Guest("trap_tick", "tick period 20 ms set in proxy_on_configure; unreachable in proxy_on_tick", _ACCEPT_HTTP,
          bodies={"proxy_on_configure": _tick_configure, "proxy_on_tick": TRAP},
          runtime="starts; the first tick traps and the VM is failed; later requests follow the fail strategy",
          outcome="vm_fails_later"),
    Guest("trap_http_call_response",
          "request headers call cluster `upstream` (GET /) and pause; unreachable in proxy_on_http_call_response",
          _ACCEPT_HTTP, extra_imports=(IMPORT_HTTP_CALL,),
          bodies={_REQ: _http_call, "proxy_on_http_call_response": TRAP},
          runtime="starts; the paused request fails per the fail strategy once the callout answers",
          outcome="request_fails"),
    Guest("trap_log", "unreachable in proxy_on_log", _ACCEPT_HTTP, bodies={"proxy_on_log": TRAP},
          runtime="starts; the first response is delivered, then the VM is failed (later requests: fail strategy)",
          outcome="vm_fails_later"),
    Guest("trap_done", "unreachable in proxy_on_done", _ACCEPT_HTTP, bodies={"proxy_on_done": TRAP},
          runtime="starts; the first response is delivered, then the VM is failed (later requests: fail strategy)",
          outcome="vm_fails_later"),
    # ---- runaway guests
    Guest("loop_vm_start", "endless loop in proxy_on_vm_start", _ACCEPT_HTTP,
          bodies={"proxy_on_vm_start": lambda d, g: f"{LOOP_FOREVER} (i32.const 1)"},
          runtime="start is interrupted at the start deadline (PluginStartError)", outcome="start_fails"),
    Guest("loop_request_headers", "endless loop in proxy_on_request_headers", _ACCEPT_HTTP,
          bodies={_REQ: lambda d, g: f"{LOOP_FOREVER} (i32.const 0)"},
          runtime="starts; the request is interrupted at the callback deadline and fails per the fail strategy",
          outcome="request_fails"),
    Guest("memory_growth_unbounded",
          "proxy_on_request_headers grows memory by 16 MiB until memory.grow fails, then traps", _ACCEPT_HTTP,
          bodies={_REQ: _grow},
          runtime="starts; the host's memory cap refuses growth, the guest traps, the request fails per the"
          " fail strategy; the host process stays within its cap", outcome="request_fails"),
    # ---- hostile hostcalls
    Guest("oob_pointers",
          "hands the host out-of-bounds pointers: proxy_log past the end and wrapping 2^32, get_header_map_pairs"
          " with out-pointers past the end, add_header_map_value with the key past the end", _ACCEPT_HTTP,
          extra_imports=(IMPORT_GET_PAIRS,), bodies={_REQ: _oob},
          runtime="starts; each hostcall returns INVALID_MEMORY_ACCESS (6) without touching memory; the request"
          " reaches the upstream with `x-oob-status: 6666` and `x-guest`"),
    Guest("malformed_pairs_set_header_map",
          "proxy_set_header_map_pairs(request headers) with four malformed buffers: "
          + ", ".join(MALFORMED_PAIRS), _ACCEPT_HTTP, extra_imports=(IMPORT_SET_PAIRS,),
          bodies={_REQ: _malformed_set_pairs},
          runtime="starts; each call is refused with a non-zero status (meshplug: BAD_ARGUMENT, `x-pairs-status:"
          " 2222`) and leaves the request headers unchanged; the request reaches the upstream"),
    Guest("malformed_pairs_local_response",
          "proxy_send_local_response(403) whose headers buffer declares a value running past its end",
          _ACCEPT_HTTP, extra_imports=(IMPORT_LOCAL_RESPONSE,), bodies={_REQ: _malformed_local_response},
          runtime="starts; meshplug refuses the call with BAD_ARGUMENT: no local reply, the request reaches the"
          " upstream with `x-local-reply-status: 2` (cpp-host instead sends the 403 without the bad headers)"),
)  # fmt: skip

BY_NAME: dict[str, Guest] = {g.name: g for g in GUESTS}


def render(g: Guest) -> str:
    d = Data()
    funcs: list[str] = []
    for name, (params, result, default, plugins) in CALLBACKS.items():
        if "*" not in plugins and g.plugin not in plugins:
            continue
        if name in ("proxy_on_request_headers", "proxy_on_response_headers"):
            params = "(param $id i32) (param $n i32)" + (" (param $eos i32)" if g.header_arity == 3 else "")
        body = g.bodies.get(name, default)(d, g)
        local = " (local $st i32)" if "$st" in body else ""
        head = " ".join(x for x in (f'(func (export "{name}")', params, result, local.strip()) if x)
        funcs.append(f"  {head}\n    {body})" if body else f"  {head})")
    if g.marker:
        funcs.insert(0, f'  (func (export "{g.marker}"))')
    init = "(global.set $initialized (i32.const 1))"
    entry = {
        "_initialize": f'  (func (export "_initialize") {init})',
        "_start": f'  (func (export "_start") {init})',
        "start-section": f"  (func $init {init})\n  (start $init)",
        "none": "",
    }[g.entry]
    alloc_export = f'(export "{g.allocator}")' if g.allocator else ""
    memory = '(memory (export "memory") 2)' if g.export_memory else "(memory 2)"
    imports = "\n".join(f"  {i}" for i in (*BASE_IMPORTS, *g.extra_imports))
    lines = [
        f";; guest {g.name}: {g.exercises}",
        f";; validator: {g.verdict}" + (f" ({', '.join(g.reasons)})" if g.reasons else ""),
        f";; runtime: {g.runtime}",
        ";; generated by tests/guests/catalog.py: edit the table there, then `python -m tests.guests.catalog`",
        "(module",
        '  (@producers (language "WAT" "1") (processed-by "meshplug-guests" "1"))',
        imports,
        f"  {memory}",
        "  (global $heap (mut i32) (i32.const 65536))",
        f"  (global $initialized (mut i32) (i32.const {1 if g.entry == 'none' else 0}))",
        "",
        "  ;; bump allocator: never frees, grows memory when needed, 0 when growth is refused",
        f"  (func $alloc {alloc_export} (param $size i32) (result i32) (local $p i32) (local $need i32)",
        "    (local.set $p (global.get $heap))",
        "    (local.set $need (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))"
        " (i32.const -8)))",
        "    (block $fits",
        "      (br_if $fits (i32.le_u (local.get $need) (i32.shl (memory.size) (i32.const 16))))",
        "      (br_if $fits (i32.ne (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $need)"
        " (i32.shl (memory.size) (i32.const 16))) (i32.const 16)) (i32.const 1))) (i32.const -1)))",
        "      (return (i32.const 0)))",
        "    (global.set $heap (local.get $need))",
        "    (local.get $p))",
        "",
        "  ;; store a status as one ASCII digit ('X' when >= 10)",
        "  (func $digit (param $addr i32) (param $v i32)",
        "    (i32.store8 (local.get $addr) (select (i32.add (local.get $v) (i32.const 48)) (i32.const 88)"
        " (i32.lt_u (local.get $v) (i32.const 10)))))",
        "",
    ]
    if entry:
        lines.append(entry)
    lines.extend(funcs)
    data = d.render()
    if data:
        lines.append(data)
    lines.append(")")
    return "\n".join(lines) + "\n"


def index() -> dict[str, object]:
    out: dict[str, object] = {}
    for g in GUESTS:
        entry: dict[str, object] = {
            "file": f"{g.name}.wat",
            "exercises": g.exercises,
            "validator": {
                "verdict": g.verdict,
                "errors": list(g.reasons),
                "warnings_as_http_filter": list(g.warnings_as_http),
                **({"reports": dict(g.expect)} if g.expect else {}),
            },
            "runtime": {"outcome": g.outcome, "behaviour": g.runtime},
        }
        out[g.name] = entry
    return out


INDEX_HEADER = (
    "# The WAT edge-case guests: what each exercises, the validator's verdict, a correct host's behaviour.\n"
    "# Generated by tests/guests/catalog.py (python -m tests.guests.catalog); do not edit by hand.\n"
    "# runtime.outcome: ok | start_fails | request_fails | vm_fails_later | refused (validator rejects it)\n"
)


def expected_files() -> dict[Path, str]:
    files = {HERE / f"{g.name}.wat": render(g) for g in GUESTS}
    files[INDEX] = INDEX_HEADER + yaml.safe_dump(index(), sort_keys=False, width=120)
    return files


def stale_files() -> list[Path]:
    """Generated files whose content differs from the table (or that are missing), plus orphan .wat files."""
    want = expected_files()
    stale = [p for p, text in want.items() if not p.exists() or p.read_text() != text]
    stale.extend(p for p in HERE.glob("*.wat") if p not in want)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the generated files are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for p in stale:
            print(f"stale: {p.relative_to(HERE.parents[1])}", file=sys.stderr)
        return 1 if stale else 0
    for path, text in expected_files().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parents[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
