"""meshplug.controller.precompile's tiers: a new module is served with its baseline (Winch) artifact at once and
its optimized (Cranelift) artifact follows from the background compile; a module compiled optimized already is
served optimized; the agent's runtime prefers the optimized module and never loads one tier's artifact with the
other's engine."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from meshplug import compiled, validate
from meshplug.agent import vm
from meshplug.controller import precompile
from tests.corpus import modules

pytestmark = pytest.mark.skipif(not compiled.baseline_available(), reason="this wasmtime build has no Winch")

HTTP = validate.FilterKind.HTTP


def corpus_module() -> tuple[bytes, str]:
    built = modules.module("c/add_header")
    return built.path.read_bytes(), built.sha256


def stored(root: Path, sha: str) -> set[compiled.Tier]:
    """The tiers whose artifact of `sha` is on disk under `root`."""
    names = {p.name for p in root.rglob("*.cwasm")}
    return {t for t in compiled.Tier if compiled.ArtifactKey.make(sha, compiled.FINGERPRINTS[t]).filename in names}


def test_a_new_module_is_served_baseline_then_optimized(tmp_path: Path) -> None:
    data, sha = corpus_module()
    pre = precompile.Precompiler(tmp_path)
    optimized = threading.Event()
    seen: list[str] = []
    pre.on_optimized = lambda digest: (seen.append(digest), optimized.set())
    try:
        first = pre.validate(data, sha, HTTP)
        assert first is not None and first.tier == "baseline"
        assert first.key == compiled.ArtifactKey.make(sha, compiled.BASELINE_FINGERPRINT).filename
        assert optimized.wait(120), "the background compile did not finish"
        assert seen == [sha] and pre.idle()
        assert stored(tmp_path, sha) == set(compiled.Tier)
        second = pre.validate(data, sha, HTTP)
        assert second is not None and second.tier == "optimized"
        assert second.key == compiled.ArtifactKey.make(sha, compiled.ENGINE_FINGERPRINT).filename
        assert pre.validate(data, sha, HTTP) == second  # no third compile: both artifacts are kept
    finally:
        pre.close()
    # a restarted operator (same cache) serves the optimized artifact and compiles nothing
    again = precompile.Precompiler(tmp_path)
    assert again.validate(data, sha, HTTP) == second and again.idle()
    again.close()


def test_untiered_compiles_optimized_before_the_first_push(tmp_path: Path) -> None:
    data, sha = corpus_module()
    pre = precompile.Precompiler(tmp_path, tiered=False)
    ready = pre.validate(data, sha, HTTP)
    assert ready is not None and ready.tier == "optimized" and pre.idle()
    assert stored(tmp_path, sha) == {compiled.Tier.OPTIMIZED}
    pre.close()


def test_the_runtime_prefers_the_optimized_module(tmp_path: Path) -> None:
    data, sha = corpus_module()
    baseline = compiled.ArtifactCache(
        compiled.new_engine(compiled.Tier.BASELINE), settings=compiled.BASELINE_FINGERPRINT, root=tmp_path
    )
    stored = baseline.load(data, sha256=sha)
    runtime = vm.Runtime(cache_root=tmp_path)
    try:
        held, outcome, tier = runtime.load_tiered(data)  # only the baseline artifact: baseline, from it
        assert (outcome, tier) == ("hit", compiled.Tier.BASELINE)
        assert runtime.engine_of(held) is runtime.baseline_engine
        assert runtime.load_tiered(data)[1:] == ("memory", compiled.Tier.BASELINE)
        # the baseline artifact's bytes never pass for the optimized key
        assert runtime.artifacts is not None
        assert not runtime.artifacts.install(sha, stored.path.read_bytes())
        optimized = compiled.ArtifactCache(compiled.new_engine(), settings=compiled.ENGINE_FINGERPRINT, root=tmp_path)
        optimized.load(data, sha256=sha)
        # the optimized artifact arrived: taken although the baseline module is still loaded
        module, outcome, tier = runtime.load_tiered(data)
        assert (outcome, tier) == ("hit", compiled.Tier.OPTIMIZED)
        assert runtime.engine_of(module) is runtime.engine
        del held
    finally:
        runtime.close()


def test_a_module_no_agent_loads_precompiled_gets_no_optimized_compile(tmp_path: Path) -> None:
    # a signed module: the agents compile it themselves, the operator's compile only checks it
    data, sha = corpus_module()
    pre = precompile.Precompiler(tmp_path)
    checked = pre.validate(data, sha, HTTP, served=False)
    assert checked is not None and checked.tier == "baseline" and pre.idle()
    assert stored(tmp_path, sha) == {compiled.Tier.BASELINE}
    pre.close()


def test_the_operator_records_the_sha256_of_the_artifact_file_it_wrote(tmp_path: Path) -> None:
    data, sha = corpus_module()
    pre = precompile.Precompiler(tmp_path, tiered=False)
    try:
        made = pre.validate(data, sha, HTTP)
        assert made is not None
        on_disk = next(tmp_path.rglob(made.key))
        assert made.sha256 == hashlib.sha256(on_disk.read_bytes()).hexdigest()
    finally:
        pre.close()


@pytest.mark.parametrize(
    ("tier", "damage", "adopted"),
    [
        (compiled.Tier.BASELINE, None, True),
        (compiled.Tier.OPTIMIZED, None, True),
        (compiled.Tier.BASELINE, "other-key", False),  # the file names another engine's key than the push
        (compiled.Tier.OPTIMIZED, "truncated", False),
        (compiled.Tier.OPTIMIZED, "bad-magic", False),
    ],
)
def test_an_operators_artifact_loads_from_memory(
    tmp_path: Path, tier: compiled.Tier, damage: str | None, adopted: bool
) -> None:
    # the agent's path for an artifact the push named (its sha256 checked by the caller): deserialized in memory,
    # reported as loaded from an artifact (hit) of its tier by the next load; anything unsound is refused
    data, sha = corpus_module()
    made = compiled.ArtifactCache(compiled.new_engine(tier), settings=compiled.FINGERPRINTS[tier], root=tmp_path / "op")
    blob = made.load(data, sha256=sha).path.read_bytes()
    key = compiled.ArtifactKey.make(sha, compiled.FINGERPRINTS[tier]).filename
    other = compiled.Tier.OPTIMIZED if tier is compiled.Tier.BASELINE else compiled.Tier.BASELINE
    if damage == "other-key":
        key = compiled.ArtifactKey.make(sha, compiled.FINGERPRINTS[other]).filename
    elif damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "bad-magic":
        blob = b"X" + blob[1:]
    runtime = vm.Runtime(cache_root=tmp_path / "agent")
    try:
        module = runtime.adopt(sha, key, blob)
        assert (module is not None) is adopted
        if module is None:
            assert runtime.load_tiered(data)[1:] == ("miss", compiled.Tier.OPTIMIZED)  # compiled here instead
            return
        held, outcome, loaded_tier = runtime.load_tiered(data)
        assert (held, outcome, loaded_tier) == (module, "hit", tier)
        assert runtime.load_tiered(data)[1] == "memory"  # still held: the next load reports it so
        assert not list((tmp_path / "agent").rglob("*.cwasm"))  # nothing read or written on the way
        engine = runtime.baseline_engine if tier is compiled.Tier.BASELINE else runtime.engine
        assert runtime.engine_of(held) is engine
    finally:
        runtime.close()
