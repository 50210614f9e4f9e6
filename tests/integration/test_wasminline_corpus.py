"""Every built corpus module (`make plugins`) through meshplug.wasminline: the agents' optimized engine compiles
the result (no fallback to the original), its imports and exports are the original's, and the modules the pass
decodes get calls inlined (the Go SDK's, over limits.INLINE_MAX_MODULE_BYTES, come back as they were). That they
behave the same is shown by the corpus tests that run every module on the agent (test_corpus_agent,
test_host_corpus): they compile through the pass."""

from __future__ import annotations

import pytest
import wasmtime

from meshplug import compiled, limits, wasminline
from tests.corpus import modules

BUILT = modules.built_or_none()
ENGINE = compiled.new_engine(parallel=False)


def _kind(ty: object) -> str:
    if isinstance(ty, wasmtime.FuncType):
        return f"{[str(p) for p in ty.params]} -> {[str(r) for r in ty.results]}"
    return type(ty).__name__


def _surface(module: wasmtime.Module) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    imports = [(i.module, i.name or "", _kind(i.type)) for i in module.imports]
    exports = [(e.name, _kind(e.type)) for e in module.exports]
    return imports, exports


def test_corpus_is_built() -> None:
    assert BUILT, "no corpus modules: run `make plugins`"


@pytest.mark.parametrize("built", BUILT, ids=[m.key for m in BUILT])
def test_corpus_module_through_the_pass(built: modules.BuiltModule) -> None:
    data = built.path.read_bytes()
    out, stats = wasminline.inline_with_stats(data)
    if built.size > limits.INLINE_MAX_MODULE_BYTES:
        assert out is data
        return
    assert stats.skipped == "", stats
    assert stats.inlined > 0 and out != data
    inlined = wasmtime.Module(ENGINE, out)  # raises if wasmtime refuses the pass's output
    assert _surface(inlined) == _surface(wasmtime.Module(ENGINE, data))
