"""Building meshplug where there is no C compiler: the native parts are optional, the wheel is pure Python and
the agent's data path runs from the sources (meshplug.native says why)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.testbed import procs


def test_a_wheel_built_without_a_compiler_runs_interpreted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive = subprocess.run(
        ["git", "ls-files", "-z", "pyproject.toml", "setup.py", "README.md", "meshplug"],
        cwd=procs.REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for rel in filter(None, archive.decode().split("\0")):
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((procs.REPO_ROOT / rel).read_bytes())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHPLUG_")}
    env["CC"] = "false"  # every compile fails
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "wheels"), "."],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    (wheel,) = (tmp_path / "wheels").glob("meshplug-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")], names
    assert "meshplug/_native.json" in names and "meshplug/agent/chain.py" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import json; from meshplug import native; import meshplug.agent.chain as c, meshplug.agent.vm as v;"
        "print(json.dumps([c.__file__, v.FAST_AVAILABLE, native.STATUS.as_dict()]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    file, fast, status = json.loads(run.stdout)
    assert file == str(site / "meshplug" / "agent" / "chain.py") and fast is False
    assert status == {
        "extension": False,
        "compiled": False,
        "reason": "built without the C extension and the mypyc modules (no C compiler at build time?)",
    }
