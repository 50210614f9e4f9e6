"""Every built corpus module (`make plugins`, found from this tree's sources) is accepted by the validator
and described as its SDK builds it: ABI marker, entry point, allocator, imports, kind (from its spec.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from meshplug import validate
from tests.corpus import modules
from tests.testbed.procs import REPO_ROOT


@dataclass(frozen=True)
class SdkFacts:
    """How an SDK's modules look, checked on the real builds (docs/testbed.md, docs/proxy-wasm-abi.md §1.1)."""

    abi_version: str
    entry_point: validate.EntryPoint
    allocator: str
    #: import groups the modules may use (others would mean a toolchain change worth noticing)
    import_groups: frozenset[validate.ImportGroup]
    #: the group every module imports (WASI flavour of the toolchain), if any
    required_group: validate.ImportGroup | None
    #: the SDK's dispatcher exports every callback, so HTTP and network plugins look alike
    exports_everything: bool
    language: str | None


ENV, P1, UNSTABLE = validate.ImportGroup.ENV, validate.ImportGroup.WASI_PREVIEW1, validate.ImportGroup.WASI_UNSTABLE

SDKS: dict[str, SdkFacts] = {
    # proxy-wasm-go-sdk, GOOS=wasip1 -buildmode=c-shared
    "go": SdkFacts("0.2.0", validate.EntryPoint.INITIALIZE, "proxy_on_memory_allocate", frozenset({ENV, P1}), P1,
                   True, "Go"),
    # proxy-wasm 0.2.2 on wasm32-unknown-unknown: the allocator is exported as malloc only, no WASI at all
    "rust": SdkFacts("0.2.1", validate.EntryPoint.INITIALIZE, "malloc", frozenset({ENV}), None, True, "Rust"),
    # @solo-io/proxy-runtime 0.1.8 marks 0_2_0 (the abi doc's 0_2_1 is for HEAD); setup in the start section
    "assemblyscript": SdkFacts("0.2.0", validate.EntryPoint.START_SECTION, "malloc", frozenset({ENV, UNSTABLE}),
                               UNSTABLE, False, None),
    # clang --target=wasm32-wasi against our own declarations (examples/filters/c/_common)
    "c": SdkFacts("0.2.1", validate.EntryPoint.INITIALIZE, "proxy_on_memory_allocate", frozenset({ENV, P1}), None,
                  False, None),
}  # fmt: skip


BUILT = modules.built_or_none()


def _spec_type(key: str) -> validate.FilterKind:
    spec = REPO_ROOT / "examples" / "filters" / key / "spec.yaml"
    raw = yaml.safe_load(spec.read_text()) if spec.exists() else {}
    return validate.FilterKind(str((raw or {}).get("type", "http")))


def test_corpus_is_built_and_every_sdk_is_known() -> None:
    assert BUILT, "no corpus modules: run `make plugins`"
    assert {m.sdk for m in BUILT} <= set(SDKS), "a new SDK in the corpus needs its facts here"


@pytest.mark.parametrize("built", BUILT, ids=[m.key for m in BUILT])
def test_module_is_accepted_and_described(built: modules.BuiltModule) -> None:
    facts = SDKS[built.sdk]
    kind = _spec_type(built.key)
    data = built.path.read_bytes()
    info = validate.validate(data, kind=kind)

    assert (info.sha256, info.size) == (built.sha256, built.size)
    assert info.warnings == (), [str(w) for w in info.warnings]
    assert str(info.abi_version) == facts.abi_version
    assert info.header_arity in (3, None)
    assert info.entry_point is facts.entry_point
    assert info.allocator == facts.allocator
    assert info.memory_exported
    assert all(i.provided and i.type_matches for i in info.imports)
    groups = {g for g, imports in info.imports_by_group().items() if imports}
    assert groups <= facts.import_groups
    if facts.required_group is not None:
        assert facts.required_group in groups
    if facts.language is not None:
        assert any(lang.startswith(facts.language) for lang in info.producers.language)

    if facts.exports_everything:
        assert info.plugin_kind is validate.PluginKind.HTTP_AND_NETWORK
    elif kind is validate.FilterKind.NETWORK:
        assert info.plugin_kind in (validate.PluginKind.NETWORK, validate.PluginKind.HTTP_AND_NETWORK)
    else:
        # AssemblyScript's runtime exports the network callbacks too once a plugin uses its TCP classes
        assert info.plugin_kind in (validate.PluginKind.HTTP, validate.PluginKind.HTTP_AND_NETWORK)
