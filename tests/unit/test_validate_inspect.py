"""`meshplug inspect`: summary and --json output, exit codes, on WAT guests and files written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wasmtime

from meshplug import cli
from tests.guests import catalog


@pytest.mark.parametrize(
    ("guest", "args", "rc", "facts"),
    [
        ("abi_0_2_1", [], 0, {"abi_version": "0.2.1", "entry_point": "_initialize", "plugin_kind": "http"}),
        ("abi_0_1_0_two_arg", [], 0, {"abi_version": "0.1.0", "header_arity": 2}),
        ("entry_start_section", [], 0, {"entry_point": "start-section", "allocator": "proxy_on_memory_allocate"}),
        ("root_only", ["--kind", "http"], 0, {"plugin_kind": "root-only"}),
        ("no_marker", [], 1, {"abi_version": None}),
        ("import_missing", [], 1, {"accepted": False}),
    ],
)
def test_json(
    guest: str, args: list[str], rc: int, facts: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    path = catalog.HERE / f"{guest}.wat"
    assert cli.main(["inspect", str(path), "--json", *args]) == rc
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == str(path)
    for key, value in facts.items():
        assert doc[key] == value, key
    assert doc["accepted"] is (rc == 0)
    assert [e["code"] for e in doc["errors"]] == list(catalog.BY_NAME[guest].reasons)


def test_summary_names_the_reason_and_the_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wasm = tmp_path / "bad.wasm"
    wasm.write_bytes(bytes(wasmtime.wat2wasm((catalog.HERE / "import_wrong_type.wat").read_text())))
    assert cli.main(["inspect", str(wasm)]) == 1
    out = capsys.readouterr().out
    assert "verdict     REJECTED" in out
    assert "TYPE      env.proxy_get_header_map_value (i32, i32, i32, i32) -> (i32)" in out
    assert "error       import_type_mismatch:" in out


def test_warning_is_shown_but_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["inspect", str(catalog.HERE / "network_filter.wat"), "--kind", "http"]) == 0
    out = capsys.readouterr().out
    assert "verdict     ACCEPTED (1 warning)" in out
    assert "warning     root_only_as_http:" in out


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"not wasm at all", "x.wasm", (1, "out", "not_wasm")),
        (b"(module (func", "x.wat", (2, "err", "not valid WAT")),
        (None, "missing.wasm", (2, "err", "cannot read")),
    ],
)
def test_bad_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, name: str, expected: tuple[int, str, str]
) -> None:
    rc, stream, text = expected
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["inspect", str(path)]) == rc
    captured = capsys.readouterr()
    assert text in (captured.out if stream == "out" else captured.err)
