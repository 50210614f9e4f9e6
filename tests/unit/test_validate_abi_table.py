"""meshplug.abi_table: the WASI rows match wasmtime's own preview1 linker, the env rows match the ABI doc."""

from __future__ import annotations

import pytest
import wasmtime

from meshplug import abi_table

_WASI_ROWS = sorted(k for k in abi_table.IMPORTS if k[0] == abi_table.WASI_PREVIEW1)


def _instantiate_with_wasi(module: str, name: str, sig: abi_table.FuncSig) -> None:
    params = " ".join(sig.params)
    results = " ".join(sig.results)
    wat = f'(module (import "{module}" "{name}" (func (param {params}) (result {results}))))'
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    store.set_wasi(wasmtime.WasiConfig())
    linker.instantiate(store, wasmtime.Module(engine, wat))


@pytest.mark.parametrize(("module", "name"), _WASI_ROWS)
def test_wasi_row_matches_wasmtime_definition(module: str, name: str) -> None:
    _instantiate_with_wasi(module, name, abi_table.IMPORTS[(module, name)].sig)


def test_wasmtime_linker_rejects_a_wrong_wasi_type() -> None:
    # the check above can fail: a deliberately wrong fd_write type is refused by wasmtime's linker
    wrong = abi_table.FuncSig(("i32", "i32", "i32"), ("i32",))
    with pytest.raises(wasmtime.WasmtimeError, match="fd_write"):
        _instantiate_with_wasi(abi_table.WASI_PREVIEW1, "fd_write", wrong)


def test_wasi_preview1_has_46_functions_and_unstable_lacks_sock_accept() -> None:
    assert len(_WASI_ROWS) == 46
    assert abi_table.lookup(abi_table.WASI_UNSTABLE, "sock_accept") is None
    assert abi_table.lookup(abi_table.WASI_UNSTABLE, "proc_exit") == abi_table.Import(
        abi_table.WASI_UNSTABLE, "proc_exit", abi_table.FuncSig(("i32",), ()), abi_table.ALL_VERSIONS, "wasi"
    )


@pytest.mark.parametrize(
    ("name", "text", "versions"),
    [
        ("proxy_log", "(i32, i32, i32) -> (i32)", abi_table.ALL_VERSIONS),
        ("proxy_increment_metric", "(i32, i64) -> (i32)", abi_table.ALL_VERSIONS),
        ("proxy_record_metric", "(i32, i64) -> (i32)", abi_table.ALL_VERSIONS),
        ("proxy_continue_request", "() -> (i32)", abi_table.V01),
        ("proxy_get_configuration", "(i32, i32) -> (i32)", abi_table.V01),
        ("proxy_continue_stream", "(i32) -> (i32)", abi_table.V02),
        ("proxy_get_log_level", "(i32) -> (i32)", abi_table.V021),
        ("proxy_send_local_response", "(i32, i32, i32, i32, i32, i32, i32, i32) -> (i32)", abi_table.ALL_VERSIONS),
        ("proxy_grpc_call", "(" + ", ".join(["i32"] * 12) + ") -> (i32)", abi_table.ALL_VERSIONS),
        ("emscripten_notify_memory_growth", "(i32) -> ()", abi_table.ALL_VERSIONS),
    ],
)
def test_env_rows(name: str, text: str, versions: frozenset[abi_table.AbiVersion]) -> None:
    imp = abi_table.lookup(abi_table.ENV, name)
    assert imp is not None
    assert str(imp.sig) == text
    assert imp.versions == versions


def test_funcsig_of_reads_a_wasmtime_functype() -> None:
    ft = wasmtime.FuncType([wasmtime.ValType.i32(), wasmtime.ValType.i64()], [wasmtime.ValType.i32()])
    assert abi_table.FuncSig.of(ft) == abi_table.FuncSig.parse("I L -> I")


@pytest.mark.parametrize(
    ("name", "arities"),
    [("proxy_on_request_headers", {2, 3}), ("proxy_on_response_headers", {2, 3}), ("proxy_on_request_body", {3})],
)
def test_header_callbacks_accept_both_arities(name: str, arities: set[int]) -> None:
    assert {len(s.params) for s in abi_table.CALLBACKS[name].sigs} == arities
