"""`meshplug init` projects build with their SDK's toolchain (`meshplug build`) and pass their own behaviour test
(``python plugin_test.py``: the module in `meshplug run` in front of an upstream), for all four SDKs. Caches: the
crates and Go modules the corpus build downloaded ($MESHPLUG_CACHE/rust, /go), npm's own cache."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from meshplug import scaffold, validate
from tests.testbed import procs


def toolchain_env() -> dict[str, str]:
    """The build caches of the test bed, so the scaffold's builds reuse what `make plugins` downloaded."""
    cache = procs.cache_dir()
    return {
        **os.environ,
        "CARGO_HOME": str(cache / "rust" / "cargo-home"),
        "CARGO_TARGET_DIR": str(cache / "rust" / "scaffold-target"),
        "GOMODCACHE": str(cache / "go" / "mod"),
        "GOCACHE": str(cache / "go" / "build"),
        "MESHPLUG": shlex.join([sys.executable, "-m", "meshplug"]),
    }


def meshplug(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplug", *args],
        cwd=cwd,
        env=toolchain_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def init_and_build(sdk: str, name: str, where: Path) -> Path:
    made = meshplug("init", "--sdk", sdk, name, cwd=where)
    assert made.returncode == 0, made.stderr
    project = where / name
    built = meshplug("build", cwd=project)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "accepted" in built.stdout
    return project


@pytest.mark.parametrize("sdk", scaffold.SDKS)
def test_a_new_project_builds_and_passes_its_behaviour_test(sdk: str, tmp_path: Path) -> None:
    project = init_and_build(sdk, f"hello-{sdk}", tmp_path)
    assert {"meshplug.yaml", "README.md", "plugin_test.py", "wasmplugin.yaml", ".gitignore"} <= {
        p.name for p in project.iterdir()
    }
    info = validate.describe((project / "plugin.wasm").read_bytes())
    assert info.accepted and info.plugin_kind in ("http", "http+network"), info.errors
    test = subprocess.run(
        [sys.executable, "plugin_test.py"],
        cwd=project,
        env=toolchain_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert test.returncode == 0 and "1 passed, 0 failed" in test.stdout, test.stdout + test.stderr


def test_init_refuses_bad_names_and_non_empty_directories(tmp_path: Path) -> None:
    bad = meshplug("init", "--sdk", "go", "Bad_Name", cwd=tmp_path)
    assert bad.returncode == 2 and "plugin name" in bad.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    taken = meshplug("init", "--sdk", "go", "taken", cwd=tmp_path)
    assert taken.returncode == 2 and "not empty" in taken.stderr
    nothing = meshplug("build", cwd=tmp_path)
    assert nothing.returncode == 2 and "meshplug init" in nothing.stderr
