"""meshplug.native: only a build matching the sources is loaded; the interpreted data path still works."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshplug import native
from meshplug.agent import chain, vm
from tests.testbed import procs

REQUIRED = os.environ.get("MESHPLUG_REQUIRE_NATIVE") == "1"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MESHPLUG_NATIVE", "MESHPLUG_REQUIRE_NATIVE")}
    env.update(extra)
    return env


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=procs.REPO_ROOT, env=_env(**env), capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "_native.json"
    monkeypatch.setattr(native, "STAMP", path)
    monkeypatch.setattr(native, "_built", lambda _module: True)
    monkeypatch.delenv("MESHPLUG_NATIVE", raising=False)
    return path


def _write(path: Path, changes: dict[str, str], abi: str | None = None) -> None:
    stamp = native.expected()
    sources = dict(stamp["sources"])  # type: ignore[call-overload]
    sources.update(changes)
    path.write_text(json.dumps({"abi": abi or stamp["abi"], "sources": sources}))


@pytest.mark.parametrize(
    ("changed", "abi", "extension", "compiled", "reason"),
    [
        ({}, None, True, True, ""),
        ({"meshplug.agent.chain": "0" * 64}, None, True, False, "sources changed since the build: chain"),
        ({native.EXTENSION: "0" * 64}, None, False, True, "sources changed since the build: _wasmcall"),
        ({native.GROUP: "0" * 64}, None, True, False, "sources changed since the build: the modules it folds"),
        ({}, ".cpython-39-x86_64-linux-gnu.so", False, False, "not built"),
    ],
    ids=["fresh", "py-source-changed", "c-source-changed", "folded-constants-changed", "other-python"],
)
def test_check_compares_the_stamp_with_the_sources(  # noqa: PLR0917 -- one table row per argument
    stamp: Path, changed: dict[str, str], abi: str | None, extension: bool, compiled: bool, reason: str
) -> None:
    _write(stamp, changed, abi)
    status = native.check()
    assert (status.extension, status.compiled) == (extension, compiled)
    assert status.reason.startswith(reason) if reason else status.reason == ""


@pytest.mark.parametrize("edited", native.EXTENSIONS[native.EXTENSION])
def test_each_file_of_a_c_extension_makes_its_build_stale(
    stamp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edited: str
) -> None:
    """An extension built from several files (C sources and the header they share): a change to any one of them
    is a stale build of that extension, the others untouched."""
    tree = tmp_path / "tree"
    for module in (*native.EXTENSIONS, native.GROUP, *native.COMPILED):
        for rel in native.built_from(module):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes((procs.REPO_ROOT / rel).read_bytes())
    monkeypatch.setattr(native, "ROOT", tree)
    _write(stamp, {})
    assert native.check().reason == ""
    with (tree / edited).open("a") as f:
        f.write("\n/* edited */\n")
    status = native.check()
    assert (status.extension, status.compiled) == (False, True)
    assert status.reason.startswith("sources changed since the build: _wasmcall ")


def _imported(module: str) -> set[str]:
    """The meshplug modules `module`'s source imports (anywhere in it: type-only and function-level too)."""
    tree = ast.parse((procs.REPO_ROOT / native.source_path(module)).read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meshplug"):
            if node.module in ("meshplug", "meshplug.agent"):  # from meshplug import limits: a module each
                out.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("meshplug"))
    return out


def test_every_interpreted_module_the_compiled_ones_import_is_folded() -> None:
    """mypyc folds an imported module's Final constants into the build: each interpreted meshplug module a
    compiled one imports is part of the stamp (native.FOLDED), so editing it (meshplug/limits.py above all) makes
    the build stale instead of leaving old constants in it."""
    native_modules = {*native.COMPILED, *native.EXTENSIONS}
    imported = set().union(*(_imported(m) for m in native.COMPILED)) - native_modules
    assert {native.source_path(m) for m in imported} == set(native.FOLDED)


def test_no_stamp_means_not_built(stamp: Path) -> None:
    assert native.check() == native.Status(False, False, "not built (run `make native`)")


def test_native_0_ignores_any_build(stamp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(stamp, {})
    monkeypatch.setenv("MESHPLUG_NATIVE", "0")
    assert native.check() == native.Status(False, False, "MESHPLUG_NATIVE=0")


PROBE = (
    "import json; from meshplug import native; import meshplug.agent.chain as c, meshplug.agent.vm as v; "
    "print(json.dumps([c.__file__, v.FAST_AVAILABLE, native.STATUS.reason]))"
)


def test_native_0_runs_the_sources_and_the_public_backend() -> None:
    out = _python(PROBE, MESHPLUG_NATIVE="0")
    assert out.returncode == 0, out.stderr
    file, fast, reason = json.loads(out.stdout)
    assert file.endswith("/meshplug/agent/chain.py") and fast is False and reason == "MESHPLUG_NATIVE=0"


def test_require_native_refuses_to_run_without_the_build() -> None:
    out = _python(PROBE, MESHPLUG_NATIVE="0", MESHPLUG_REQUIRE_NATIVE="1")
    assert out.returncode == 1
    assert "NativeBuildError: MESHPLUG_REQUIRE_NATIVE=1 but the compiled data path is unusable: MESHPLUG_NATIVE=0" in (
        out.stderr
    )


def test_the_suite_runs_the_compiled_data_path() -> None:
    """`make unit` / `make integration` build it first (`make native`) and set MESHPLUG_REQUIRE_NATIVE=1."""
    assert REQUIRED, "run the tests through make (it builds the data path and sets MESHPLUG_REQUIRE_NATIVE=1)"
    assert native.Status(True, True, "") == native.STATUS, native.STATUS.reason
    assert not chain.__file__.endswith(".py") and vm.FAST_AVAILABLE


def test_the_interpreted_data_path_passes_the_chain_and_host_tests() -> None:
    """The sources stay runnable as they are (no build): the chain, host and backend tests pass interpreted."""
    tests = ["tests/unit/test_chain.py", "tests/unit/test_host_lifecycle.py", "tests/unit/test_vm_backends.py"]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "unit", "-p", "no:cacheprovider", *tests],
        cwd=procs.REPO_ROOT,
        env=_env(MESHPLUG_NATIVE="0"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
