"""The WAT guests: generated files are fresh, and the validator's verdict on each matches tests/guests/guests.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import wasmtime
import yaml

from meshplug import errors, validate
from tests.guests import catalog

INDEX: dict[str, Any] = yaml.safe_load(catalog.INDEX.read_text())


def test_generated_files_are_fresh() -> None:
    assert catalog.stale_files() == [], "run `python -m tests.guests.catalog`"


def test_index_lists_every_wat_file() -> None:
    assert sorted(INDEX) == sorted(p.stem for p in catalog.HERE.glob("*.wat"))


def _bytes(name: str) -> bytes:
    return bytes(wasmtime.wat2wasm((catalog.HERE / INDEX[name]["file"]).read_text()))


@pytest.mark.parametrize("name", sorted(INDEX))
def test_verdict_matches_index(name: str) -> None:
    expected = INDEX[name]["validator"]
    data = _bytes(name)
    info = validate.describe(data, kind=validate.FilterKind.HTTP)
    assert [p.code.value for p in info.errors] == expected["errors"]
    assert [p.code.value for p in info.warnings] == expected["warnings_as_http_filter"]
    assert info.accepted is (expected["verdict"] == "accept")
    for field, value in expected.get("reports", {}).items():
        assert getattr(info, field) == value, field
    if expected["verdict"] == "reject":
        with pytest.raises(errors.ValidationError) as exc:
            validate.validate(data)
        assert exc.value.reason == expected["errors"][0]
    else:
        assert validate.validate(data).sha256 == info.sha256


@pytest.mark.parametrize("name", sorted(INDEX))
def test_every_guest_says_who_made_it(name: str) -> None:
    info = validate.describe(_bytes(name))
    assert info.producers.processed_by == ("meshplug-guests 1",)
    assert info.producers.language == ("WAT 1",)


def test_index_covers_the_required_edge_cases() -> None:
    required = {
        "abi_0_1_0_two_arg", "abi_0_1_0_three_arg", "abi_0_2_0", "abi_0_2_1", "no_marker", "unknown_marker_0_x_x",
        "no_memory_export", "no_allocator", "entry_start", "entry_start_section", "trap_vm_start", "trap_configure",
        "trap_context_create_stream", "trap_request_headers", "trap_request_body", "trap_response_headers",
        "trap_tick", "trap_http_call_response", "trap_log", "trap_done", "loop_vm_start", "loop_request_headers",
        "memory_growth_unbounded", "oob_pointers", "malformed_pairs_set_header_map",
        "malformed_pairs_local_response", "import_missing", "import_wrong_type",
    }  # fmt: skip
    assert required <= set(INDEX)
    outcomes = {v["runtime"]["outcome"] for v in INDEX.values()}
    assert outcomes == {"ok", "start_fails", "request_fails", "vm_fails_later", "refused"}


def test_malformed_pair_buffers_are_each_malformed() -> None:
    # each buffer must fail a strict parse (docs/proxy-wasm-abi.md §3.1); the well-formed helper must pass one
    def strict_ok(buf: bytes) -> bool:
        if len(buf) < 4:
            return False
        n = int.from_bytes(buf[:4], "little")
        pos = 4 + 8 * n
        if pos > len(buf):
            return False
        sizes = [int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "little") for i in range(2 * n)]
        for size in sizes:
            if pos + size + 1 > len(buf) or buf[pos + size] != 0:
                return False
            pos += size + 1
        return pos == len(buf)

    assert strict_ok(catalog.pairs([(b":path", b"/"), (b"a", b"")]))
    for name, buf in catalog.MALFORMED_PAIRS.items():
        assert not strict_ok(buf), name


def test_guest_files_are_in_this_directory() -> None:
    assert all(Path(catalog.HERE / v["file"]).is_file() for v in INDEX.values())
