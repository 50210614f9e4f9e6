"""meshplug.validate on hand-made inputs: non-wasm, compile errors, markers, imports, callbacks, kind warnings."""

from __future__ import annotations

import json
import struct

import pytest
import wasmtime

from meshplug import errors, validate
from meshplug.validate import binary

GOOD_EXPORTS = """
  (memory (export "memory") 1)
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
"""


def wasm(body: str) -> bytes:
    return bytes(wasmtime.wat2wasm(f"(module {body})"))


def plugin(extra: str = "", marker: str = "proxy_abi_version_0_2_1") -> bytes:
    marker_export = f'(func (export "{marker}"))' if marker else ""
    return wasm(f"{extra} {marker_export} {GOOD_EXPORTS}")


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        (b"", validate.Code.NOT_WASM, "empty input"),
        (b"hello world, not wasm", validate.Code.NOT_WASM, "68656c6c"),
        (b"\0asm\x0d\0\x01\0", validate.Code.NOT_WASM, "component"),
        (b"\0asm\x02\0\0\0", validate.Code.NOT_WASM, "02000000"),
        (b"\0asm\x01\0\0\0\x05\x09", validate.Code.COMPILE_FAILED, "end-of-file"),
        (wasm("(func (result i32))"), validate.Code.COMPILE_FAILED, "type mismatch"),
    ],
    ids=["empty", "text", "component", "bad-version", "truncated", "invalid-body"],
)
def test_unusable_input_is_rejected_with_one_reason(data: bytes, code: validate.Code, fragment: str) -> None:
    info = validate.describe(data)
    assert info.codes() == (code,)
    assert fragment in info.problems[0].message
    assert not info.compiled and not info.accepted
    with pytest.raises(errors.ValidationError) as exc:
        validate.validate(data)
    assert exc.value.reason == code.value
    assert exc.value.reasons == (str(info.problems[0]),)


@pytest.mark.parametrize(
    ("data", "codes"),
    [
        (plugin(), ()),
        (plugin(marker=""), (validate.Code.NO_ABI_MARKER,)),
        (plugin(marker="proxy_abi_version_0_x_x"), (validate.Code.UNKNOWN_ABI_MARKER,)),
        (plugin(marker="proxy_abi_version_9_9_9"), (validate.Code.UNKNOWN_ABI_MARKER,)),
        # a marker that is not a function does not count (cpp-host scans function exports only)
        (plugin('(global (export "proxy_abi_version_0_2_1") i32 (i32.const 0))', marker=""), (
            validate.Code.NO_ABI_MARKER,)),
        # unknown first marker decides, as in cpp-host; the second is reported
        (plugin('(func (export "proxy_abi_version_0_x_x"))'), (
            validate.Code.UNKNOWN_ABI_MARKER, validate.Code.SEVERAL_ABI_MARKERS)),
        (plugin('(func (export "proxy_abi_version_0_2_0"))'), (validate.Code.SEVERAL_ABI_MARKERS,)),
        (plugin(marker="proxy_abi_version_0_1_0"), (validate.Code.HEADER_ARITY_UNLIKE_MARKER,)),
        (plugin('(import "env" "proxy_nope" (func))'), (validate.Code.MISSING_IMPORT,)),
        (plugin('(import "wasi_unstable" "sock_accept" (func (param i32 i32 i32) (result i32)))'), (
            validate.Code.MISSING_IMPORT,)),
        (plugin('(import "env" "memory" (memory 1))'), (validate.Code.MISSING_IMPORT,)),
        (plugin('(import "env" "proxy_log" (func (param i32 i32 i32)))'), (validate.Code.IMPORT_TYPE_MISMATCH,)),
        (plugin('(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32) (result i32)))'), (
            validate.Code.IMPORT_TYPE_MISMATCH,)),
        (plugin('(import "env" "proxy_continue_request" (func (result i32)))'), (
            validate.Code.IMPORT_OUTSIDE_ABI_VERSION,)),
        (plugin('(func (export "proxy_on_tick") (param i32 i32))'), (validate.Code.CALLBACK_TYPE_MISMATCH,)),
    ],
    ids=["good", "no-marker", "0_x_x", "9_9_9", "global-marker", "unknown-first", "two-known", "arity-vs-marker",
         "missing-env", "missing-wasi-unstable", "memory-import", "env-type", "wasi-type", "outside-version",
         "callback-type"],
)  # fmt: skip
def test_codes(data: bytes, codes: tuple[validate.Code, ...]) -> None:
    assert validate.describe(data).codes() == codes


def test_type_mismatch_names_both_types() -> None:
    info = validate.describe(plugin('(import "env" "proxy_log" (func (param i32 i32 i32)))'))
    (problem,) = info.errors
    assert "env.proxy_log" in problem.message
    assert "(i32, i32, i32) -> ()" in problem.message
    assert "(i32, i32, i32) -> (i32)" in problem.message
    (imp,) = info.imports
    assert (imp.provided, imp.type_matches, imp.group) == (True, False, validate.ImportGroup.ENV)


def test_missing_import_is_named_and_grouped() -> None:
    info = validate.describe(plugin('(import "my_host" "do_thing" (func (param i32)))'))
    assert "my_host.do_thing" in info.errors[0].message
    assert info.imports_by_group()[validate.ImportGroup.OTHER][0].provided is False


@pytest.mark.parametrize(
    ("exports", "arity", "kind"),
    [
        ('(func (export "proxy_on_request_headers") (param i32 i32) (result i32) (i32.const 0))', 2,
         validate.PluginKind.HTTP),
        ('(func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))', 3,
         validate.PluginKind.HTTP),
        ('(func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))', None,
         validate.PluginKind.NETWORK),
        ('(func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))'
         '(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))', None,
         validate.PluginKind.HTTP_AND_NETWORK),
        ('(func (export "proxy_on_tick") (param i32))', None, validate.PluginKind.ROOT_ONLY),
    ],
)  # fmt: skip
def test_kind_and_header_arity(exports: str, arity: int | None, kind: validate.PluginKind) -> None:
    data = wasm(
        f'(memory (export "memory") 1) (func (export "proxy_abi_version_0_1_0"))'
        f' (func (export "malloc") (param i32) (result i32) (i32.const 0)) {exports}'
    )
    info = validate.describe(data)
    assert (info.header_arity, info.plugin_kind, info.allocator) == (arity, kind, "malloc")


@pytest.mark.parametrize(
    ("kind", "plugin_exports", "warning"),
    [
        (validate.FilterKind.HTTP, '(func (export "proxy_on_tick") (param i32))', validate.Code.ROOT_ONLY_AS_HTTP),
        (validate.FilterKind.NETWORK, "", validate.Code.NOT_A_NETWORK_FILTER),
        (validate.FilterKind.HTTP, '(func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))',
         validate.Code.ROOT_ONLY_AS_HTTP),
    ],
)  # fmt: skip
def test_kind_mismatch_is_a_warning_not_a_rejection(
    kind: validate.FilterKind, plugin_exports: str, warning: validate.Code
) -> None:
    data = wasm(
        '(memory (export "memory") 1) (func (export "proxy_abi_version_0_2_0"))'
        f' (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0)) {plugin_exports}'
    )
    info = validate.validate(data, kind=kind)
    assert info.accepted
    assert [p.code for p in info.warnings] == [warning]
    assert validate.describe(data).warnings == ()


def test_allocator_with_wrong_type_is_no_allocator_and_says_so() -> None:
    data = wasm('(memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")) (func (export "malloc"))')
    info = validate.describe(data)
    assert validate.Code.NO_ALLOCATOR in info.codes()
    assert "malloc () -> () with the wrong type" in str(info.errors[0])


def test_errors_come_before_warnings_and_validation_error_lists_all_errors() -> None:
    data = wasm(
        '(import "env" "x" (func)) (func (export "proxy_abi_version_0_x_x")) (func (export "proxy_abi_version_0_2_1"))'
    )
    info = validate.describe(data)
    assert info.codes() == (
        validate.Code.NO_MEMORY,
        validate.Code.UNKNOWN_ABI_MARKER,
        validate.Code.NO_ALLOCATOR,
        validate.Code.MISSING_IMPORT,
        validate.Code.SEVERAL_ABI_MARKERS,
    )
    with pytest.raises(errors.ValidationError) as exc:
        validate.validate(data)
    assert len(exc.value.reasons) == 4
    assert exc.value.reason == "no_memory"
    assert exc.value.exit_code == 1


def test_entry_point_precedence_and_start_section() -> None:
    both = plugin('(func $s) (start $s) (func (export "_start")) (func (export "_initialize"))')
    info = validate.describe(both)
    assert (info.entry_point, info.has_start_section) == (validate.EntryPoint.INITIALIZE, True)
    assert binary.start_function(both) is not None
    assert binary.start_function(plugin()) is None


def test_producers_section_is_parsed_by_hand() -> None:
    data = plugin(
        '(@producers (language "Rust" "") (processed-by "rustc" "1.63.0") (processed-by "clang" "14") (sdk "x" "1"))'
    )
    info = validate.describe(data)
    assert info.producers == validate.Producers(("Rust",), ("rustc 1.63.0", "clang 14"), ("x 1",))
    assert info.custom_sections == ("producers",)


def test_malformed_producers_is_a_warning() -> None:
    data = plugin('(@custom "producers" "\\05garbage")')
    info = validate.describe(data)
    assert info.accepted
    assert info.codes() == (validate.Code.MALFORMED_PRODUCERS,)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x01\x08language", "unexpected end"),
        (b"\x01\xff\xff\xff\xff\xff\x01", "longer than 5 bytes"),
        (b"\x01\xff\xff\xff\xff\x7f", "out of range"),
        (b"\x01\x08language\x01\x02\xff\xfe\x00", "not UTF-8"),
        (b"\x00extra", "trailing bytes"),
        (b"\x01\x40ab", "runs past the end"),
    ],
)
def test_binary_reader_errors_carry_offsets(payload: bytes, fragment: str) -> None:
    with pytest.raises(binary.BinaryFormatError, match=fragment):
        binary.parse_producers(payload)


def test_sections_reject_a_section_running_past_the_end() -> None:
    data = b"\0asm\x01\0\0\0" + bytes([binary.SECTION_CUSTOM]) + struct.pack("B", 100) + b"\x01x"
    with pytest.raises(binary.BinaryFormatError, match="runs past the end"):
        binary.sections(data)


def test_function_export_names_keep_file_order() -> None:
    data = wasm('(func (export "b")) (memory (export "m") 1) (func (export "a"))')
    assert binary.function_export_names(data) == ("b", "a")


def test_to_json_is_plain_data() -> None:
    info = validate.describe(
        plugin('(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))')
    )
    doc = json.loads(json.dumps(info.to_json()))
    assert doc["abi_version"] == "0.2.1"
    assert doc["imports"]["wasi_snapshot_preview1"][0]["type_matches"] is True
    assert doc["accepted"] is True
