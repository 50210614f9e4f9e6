"""meshplug.agent.vm loads modules through meshplug.compiled: the first load compiles and stores the artifact
keyed by the module's sha256 and vm.ENGINE_FINGERPRINT; a later load (new runtime, same cache) deserializes
it without compiling, and the module runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wasmtime

from meshplug import compiled, errors
from meshplug.agent import chain as C
from meshplug.agent import host as H
from meshplug.agent import vm
from tests.corpus import modules


def corpus_module() -> bytes:
    return modules.module("rust/header_rules").path.read_bytes()


def refuse_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compile(self: wasmtime.Module, *_args: object) -> None:
        raise AssertionError("the module was compiled although a precompiled artifact exists")

    monkeypatch.setattr(wasmtime.Module, "__init__", no_compile)


def serve_one(runtime: vm.Runtime, data: bytes) -> dict[bytes, bytes]:
    config = {"response": {"add": {"x-cached": "yes"}, "set": {}, "remove": []}}
    host = H.Host(runtime=runtime)
    plugin = host.load(H.PluginConfig(name="cached", configuration=json.dumps(config).encode()), data)
    s = C.Chain([plugin]).new_stream()
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"svc")]), True)
    out = s.recv_response_headers(C.http1_response_headers(200, []), True)
    s.complete()
    host.close()
    return dict(next(o for o in out if isinstance(o, C.SendHeaders)).headers)


def test_second_load_deserializes_instead_of_compiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = corpus_module()
    first = vm.Runtime(cache_root=tmp_path)
    assert serve_one(first, data)[b"x-cached"] == b"yes"
    assert dict(first.load_outcomes) == {"miss": 1}
    first.close()
    artifacts = list(tmp_path.rglob("*.cwasm"))
    assert len(artifacts) == 1 and vm.WASMTIME_VERSION in artifacts[0].name

    refuse_compiling(monkeypatch)
    second = vm.Runtime(cache_root=tmp_path)
    assert serve_one(second, data)[b"x-cached"] == b"yes"
    assert dict(second.load_outcomes) == {"hit": 1}
    second.close()


def test_artifacts_are_keyed_by_the_engine_fingerprint(tmp_path: Path) -> None:
    runtime = vm.Runtime(cache_root=tmp_path)
    assert runtime.artifacts is not None
    key = runtime.artifacts.key("ab" * 32)
    assert key == compiled.ArtifactKey.make("ab" * 32, vm.ENGINE_FINGERPRINT)
    runtime.close()


def test_an_artifact_of_other_engine_settings_is_rebuilt_not_loaded(tmp_path: Path) -> None:
    data = corpus_module()
    other = compiled.ArtifactCache(wasmtime.Engine(), settings="no-epochs", root=tmp_path)
    stale = other.load(data)
    # put the other engine's artifact where this runtime's key points
    runtime = vm.Runtime(cache_root=tmp_path)
    assert runtime.artifacts is not None
    ours = runtime.artifacts.path(runtime.artifacts.key(stale.key.module_sha256))
    ours.parent.mkdir(parents=True, exist_ok=True)
    ours.write_bytes(stale.path.read_bytes())
    assert serve_one(runtime, data)[b"x-cached"] == b"yes"
    assert dict(runtime.load_outcomes) == {"stale": 1}
    runtime.close()


def test_a_module_that_does_not_compile_is_a_start_error(tmp_path: Path) -> None:
    runtime = vm.Runtime(cache_root=tmp_path)
    with pytest.raises(errors.PluginStartError) as info:
        runtime.load(b"\0asm\x01\0\0\0\x01garbage")
    assert info.value.reason == "compile_failed"
    runtime.close()
