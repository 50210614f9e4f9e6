"""meshplug.compiled: miss -> hit, stale and corrupt artifacts are rebuilt (never loaded), writes are atomic."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from meshplug import compiled, errors

WAT = '(module (func (export "answer") (param i32) (result i32) (i32.add (local.get 0) (i32.const 41))))'
DATA = bytes(wasmtime.wat2wasm(WAT))
SHA = hashlib.sha256(DATA).hexdigest()


def engine(epoch: bool = False) -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.epoch_interruption = epoch
    return wasmtime.Engine(cfg)


def call_answer(eng: wasmtime.Engine, module: wasmtime.Module) -> int:
    store = wasmtime.Store(eng)
    inst = wasmtime.Instance(store, module, [])
    func = inst.exports(store)["answer"]
    assert isinstance(func, wasmtime.Func)
    result = func(store, 1)
    assert isinstance(result, int)
    return result


def test_miss_then_hit_and_the_module_runs(tmp_path: Path) -> None:
    eng = engine()
    cache = compiled.ArtifactCache(eng, settings="plain", root=tmp_path)
    first = cache.load(DATA)
    second = cache.load(DATA, sha256=SHA)
    assert (first.outcome, second.outcome) == (compiled.Outcome.MISS, compiled.Outcome.HIT)
    assert first.path == second.path and first.path.is_file() and first.stored
    assert first.key.module_sha256 == SHA
    assert call_answer(eng, second.module) == 42
    assert list(first.path.parent.glob("*.tmp")) == []


def test_settings_and_version_are_part_of_the_key(tmp_path: Path) -> None:
    a = compiled.ArtifactCache(engine(), settings="a", root=tmp_path)
    b = compiled.ArtifactCache(engine(), settings="b", root=tmp_path)
    assert a.path(a.key(SHA)) != b.path(b.key(SHA))
    assert a.key(SHA).wasmtime_version == compiled.wasmtime_version() != ""
    assert a.load(DATA).outcome is compiled.Outcome.MISS
    assert b.load(DATA).outcome is compiled.Outcome.MISS


def _truncate(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


def _flip_payload_byte(blob: bytes) -> bytes:
    return blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:]


def _bad_magic(blob: bytes) -> bytes:
    return b"XXXXXXX\n" + blob[8:]


def _garbage_header(blob: bytes) -> bytes:
    return compiled.MAGIC + (5).to_bytes(4, "little") + b"{nope" + blob[-100:]


def _huge_header_len(blob: bytes) -> bytes:
    return compiled.MAGIC + (1 << 30).to_bytes(4, "little") + blob[12:]


def _empty(blob: bytes) -> bytes:
    return b""


def _raw_serialized(blob: bytes) -> bytes:
    # what a naive cache would store: wasmtime's bytes without our header
    return blob[blob.index(b"}") + 1 :]


@pytest.mark.parametrize(
    "damage", [_truncate, _flip_payload_byte, _bad_magic, _garbage_header, _huge_header_len, _raw_serialized, _empty]
)
def test_corrupt_artifact_is_rebuilt_not_loaded(tmp_path: Path, damage: Callable[[bytes], bytes]) -> None:
    eng = engine()
    cache = compiled.ArtifactCache(eng, settings="s", root=tmp_path)
    path = cache.load(DATA).path
    good = path.read_bytes()
    path.write_bytes(damage(good))
    loaded = cache.load(DATA)
    assert loaded.outcome is compiled.Outcome.CORRUPT
    assert call_answer(eng, loaded.module) == 42
    assert compiled.decode(loaded.key, path.read_bytes()) == compiled.decode(loaded.key, good)
    assert cache.load(DATA).outcome is compiled.Outcome.HIT


def test_artifact_for_another_key_is_stale(tmp_path: Path) -> None:
    old = compiled.ArtifactCache(engine(), settings="old", root=tmp_path)
    new = compiled.ArtifactCache(engine(), settings="new", root=tmp_path)
    old_path = old.load(DATA).path
    new_path = new.path(new.key(SHA))
    new_path.write_bytes(old_path.read_bytes())  # a mislabelled file: header names the old settings
    assert new.load(DATA).outcome is compiled.Outcome.STALE
    assert new.load(DATA).outcome is compiled.Outcome.HIT


def test_engine_that_refuses_the_artifact_counts_as_stale(tmp_path: Path) -> None:
    # same settings string, different real Config: wasmtime itself refuses, we rebuild with the caller's engine
    epoch = compiled.ArtifactCache(engine(epoch=True), settings="same", root=tmp_path)
    plain = compiled.ArtifactCache(engine(epoch=False), settings="same", root=tmp_path)
    epoch.load(DATA)
    loaded = plain.load(DATA)
    assert loaded.outcome is compiled.Outcome.STALE
    assert call_answer(plain.engine, loaded.module) == 42


def test_compile_failure_is_a_start_error(tmp_path: Path) -> None:
    cache = compiled.ArtifactCache(engine(), settings="s", root=tmp_path)
    with pytest.raises(errors.PluginStartError, match="does not compile") as exc:
        cache.load(b"\0asm\x01\0\0\0\x05\x09")
    assert exc.value.reason == "compile_failed"


def test_unwritable_cache_still_returns_the_module(tmp_path: Path) -> None:
    root = tmp_path / "file-not-dir"
    root.write_text("x")
    eng = engine()
    loaded = compiled.ArtifactCache(eng, settings="s", root=root).load(DATA)
    assert (loaded.outcome, loaded.stored) == (compiled.Outcome.MISS, False)
    assert call_answer(eng, loaded.module) == 42


def test_encode_decode_round_trip_and_key_check() -> None:
    key = compiled.ArtifactKey.make(SHA, "s")
    blob = compiled.encode(key, b"payload")
    assert compiled.decode(key, blob) == b"payload"
    other = compiled.ArtifactKey.make(SHA, "t")
    with pytest.raises(Exception, match="wanted"):
        compiled.decode(other, blob)


def test_load_module_one_call_form(tmp_path: Path) -> None:
    eng = engine()
    module = compiled.load_module(eng, DATA, "s", root=tmp_path)
    assert call_answer(eng, module) == 42
    assert compiled.ArtifactCache(eng, settings="s", root=tmp_path).load(DATA).outcome is compiled.Outcome.HIT


def test_install_takes_only_a_sound_artifact_for_its_own_key(tmp_path: Path) -> None:
    # the operator's cache and an agent's, same engine settings: the operator's file loads as a hit there
    eng = compiled.new_engine()
    made = compiled.ArtifactCache(eng, settings=compiled.ENGINE_FINGERPRINT, root=tmp_path / "op").load(DATA)
    blob = made.path.read_bytes()
    agent = compiled.ArtifactCache(eng, settings=compiled.ENGINE_FINGERPRINT, root=tmp_path / "agent")
    assert not agent.install("ee" * 32, blob)  # made for another module
    assert not agent.install(SHA, blob[:-1])  # truncated
    assert not compiled.ArtifactCache(eng, settings="other", root=tmp_path / "x").install(SHA, blob)  # other key
    assert not list((tmp_path / "agent").rglob("*.cwasm"))
    assert agent.install(SHA, blob)
    loaded = agent.load(DATA)
    assert loaded.outcome is compiled.Outcome.HIT


def test_engine_fingerprint_covers_settings_version_and_cpu() -> None:
    assert compiled.cpu_fingerprint() == compiled.cpu_fingerprint() and len(compiled.cpu_fingerprint()) == 16
    assert dict(compiled.ENGINE_SETTINGS)["epoch_interruption"] == "1"
    assert len(compiled.ENGINE_FINGERPRINT) == 16
