"""The Dockerfile's two pip steps, run on this machine (no Docker engine here): the build stage's `pip wheel` over
a copy of exactly what the build stage COPYs (compiling the agent's data path with this machine's gcc, which the
build stage installs with apt-get), then the final stage's offline install into a venv without pip, then
`meshplug version` from that venv (the image's ENTRYPOINT + CMD): the installed data path is the compiled one."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.testbed import procs
from tests.unit import test_dockerfile as dockerfile


def _substitute(command: str, paths: dict[str, str]) -> list[str]:
    argv = shlex.split(command)
    out = []
    for arg in argv:
        for old, new in paths.items():
            if arg == old or arg.startswith(old + "/"):
                arg = new + arg[len(old) :]
        out.append(arg)
    if out[0] == "python":
        out[0] = sys.executable
    return out


def test_wheel_build_and_offline_install_give_a_working_meshplug(tmp_path: Path) -> None:
    build, final = dockerfile.STAGES
    context = tmp_path / "src"
    context.mkdir()
    for arg in build.all("COPY"):
        *sources, dest = arg.split()
        for source in sources:
            src = procs.REPO_ROOT / source
            target = context / (src.name if dest.endswith("/") or dest == "./" else dest)
            if src.is_dir():
                shutil.copytree(
                    src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "_native.json")
                )
            else:
                shutil.copy2(src, target)
    paths = {"/wheels": str(tmp_path / "wheels"), "/opt/meshplug": str(tmp_path / "venv")}

    apt_step, wheel_step = build.all("RUN")
    # the build stage's compiler, which this machine has (scripts/install-system-deps.sh) instead of apt-get here
    assert "gcc" in apt_step.split() and shutil.which("gcc"), apt_step
    out = subprocess.run(
        _substitute(wheel_step, paths), cwd=context, capture_output=True, text=True, timeout=900, check=False
    )
    assert out.returncode == 0, out.stderr[-4000:]
    wheels = sorted(p.name for p in (tmp_path / "wheels").glob("*.whl"))
    assert any(w.startswith("meshplug-0.1.0-") for w in wheels), wheels

    (install_step,) = final.all("RUN")
    assert install_step.startswith("--mount=type=bind,from=build,source=/wheels,target=/wheels ")
    commands = [c.strip() for c in install_step.split(" ", 1)[1].split("&&")]
    python_steps = [c for c in commands if c.startswith("python ")]
    assert len(python_steps) == 2, commands  # venv, then the offline install (mkdir/chown need the image's root)
    for step in python_steps:
        out = subprocess.run(_substitute(step, paths), capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, f"{step}\n{out.stderr[-4000:]}"
    venv_bin = tmp_path / "venv" / "bin"
    assert not (venv_bin / "pip").exists(), "the runtime venv must carry no pip"

    entrypoint = json.loads(final.all("ENTRYPOINT")[0])
    cmd = json.loads(final.all("CMD")[-1])
    out = subprocess.run(
        [str(venv_bin / entrypoint[0]), *cmd, "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    versions = json.loads(out.stdout)
    assert versions["meshplug"] == "0.1.0"
    assert versions["dataplane"] == "compiled", versions  # the wheel carries the built data path
    assert "not installed" not in versions.values(), versions
    # both entrypoints the chart uses parse their arguments in the installed image
    for sub in ("operator", "agent"):
        out = subprocess.run([str(venv_bin / "meshplug"), sub, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage: meshplug" in out.stdout, out.stderr
