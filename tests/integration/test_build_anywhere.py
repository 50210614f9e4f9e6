"""meshplug builds outside the dev venv: `pip install .` and `python -m build` from a fresh venv that
holds nothing but pip (no setuptools, mypy or stubs: every build requirement must come from pyproject.toml), on a
copy of exactly the committed package sources, in an environment stripped of this repository's variables.

With a C compiler `pip install .` gives the compiled data path; without one (CC=false: every compile fails) the
sdist holds the native sources and the wheel built from it is pure Python, its data path running from the sources,
as the README says. `pip wheel .` (with a compiler) is the Dockerfile's build: tests/integration/test_image_build.py
builds the image from it in a clean Debian root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.testbed import procs

SOURCES = ("pyproject.toml", "setup.py", "README.md", "meshplug")
BUILD_TIMEOUT_S = 1200
#: a test may take its build's whole time (a compile on 2 busy cores), beyond pytest's default per-test timeout
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 120)


@dataclass(frozen=True)
class Venv:
    root: Path
    env: Mapping[str, str]

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def run(self, *argv: str, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )


def _clean_env(venv: Path) -> dict[str, str]:
    """This machine's environment without the dev venv, this repository's variables or a Python path."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("MESHPLUG_")}
    dev_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != dev_bin]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    return env


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """The committed package sources, as a fresh clone has them (no in-place build, no egg-info); a new copy
    per test, since pip builds in the source tree and setuptools would reuse the last build's extensions."""
    src = tmp_path / "src"
    listed = subprocess.run(
        ["git", "ls-files", "-z", *SOURCES], cwd=procs.REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((procs.REPO_ROOT / rel).read_bytes())
    return src


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A venv of the base interpreter holding pip only."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(root)], check=True, timeout=300, env=_clean_env(root))
    venv = Venv(root, _clean_env(root))
    venv.run(venv.python, "-m", "pip", "uninstall", "-q", "-y", "setuptools", cwd=root)
    listed = venv.run(venv.python, "-m", "pip", "list", "--format", "json", cwd=root)
    assert [p["name"] for p in json.loads(listed.stdout)] == ["pip"], listed.stdout
    return venv


def _interpreted_probe(venv: Venv, site: Path | None, cwd: Path) -> tuple[str, bool, dict[str, object]]:
    probe = (
        "import json; from meshplug import native; import meshplug.agent.chain as c, meshplug.agent.vm as v;"
        "print(json.dumps([c.__file__, v.FAST_AVAILABLE, native.STATUS.as_dict()]))"
    )
    # this interpreter has the runtime dependencies; PYTHONPATH puts the unpacked wheel before its own meshplug
    out = venv.run(sys.executable, "-c", probe, cwd=cwd, env={"PYTHONPATH": str(site)} if site else None)
    assert out.returncode == 0, out.stderr
    file, fast, status = json.loads(out.stdout)
    return str(file), bool(fast), dict(status)


NO_COMPILER = {"CC": "false"}
INTERPRETED = {
    "extension": False,
    "compiled": False,
    "reason": "built without the C extensions and the mypyc modules (no C compiler at build time?)",
}


def test_pip_install_in_a_fresh_venv_gives_the_compiled_data_path(fresh: Venv, source: Path, tmp_path: Path) -> None:
    out = fresh.run(fresh.python, "-m", "pip", "install", "-q", str(source), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    version = fresh.run(str(fresh.root / "bin" / "meshplug"), "version", "--json", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    versions = json.loads(version.stdout)
    assert versions["dataplane"] == "compiled", versions
    assert "not installed" not in versions.values(), versions
    for sub in ("operator", "agent"):
        helped = fresh.run(str(fresh.root / "bin" / "meshplug"), sub, "--help", cwd=tmp_path)
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: meshplug {sub}"), helped.stderr


def test_python_m_build_without_a_compiler_gives_an_sdist_and_a_pure_python_wheel(
    fresh: Venv, source: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([fresh.python, "-m", "venv", str(venv)], check=True, timeout=300, env=fresh.env)
    builder = Venv(venv, _clean_env(venv))
    installed = builder.run(builder.python, "-m", "pip", "install", "-q", "build==1.6.1", cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    dist = tmp_path / "dist"
    out = builder.run(builder.python, "-m", "build", "--outdir", str(dist), str(source), cwd=tmp_path, env=NO_COMPILER)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    (sdist,) = dist.glob("meshplug-*.tar.gz")
    (wheel,) = dist.glob("meshplug-*.whl")  # built from the sdist: the sdist alone suffices
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
    for needed in ("setup.py", "pyproject.toml", "meshplug/native.py", "meshplug/agent/_wasmcall.c"):
        assert needed in members, needed
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")], names
    assert "meshplug/_native.json" in names and "meshplug/agent/chain.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    file, fast, status = _interpreted_probe(fresh, site, tmp_path)
    assert file == str(site / "meshplug" / "agent" / "chain.py") and fast is False
    assert status == INTERPRETED
