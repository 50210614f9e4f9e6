"""The Dockerfile, parsed: Debian's slim base, stages, non-root numeric USER, exec-form ENTRYPOINT, no build tools,
pip or wheels in the final stage, and a .dockerignore that sends only the package. The image is really built and
run by tests/integration/test_image_build.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = "debian:bookworm-slim"


@dataclass
class Stage:
    base: str
    name: str
    args: dict[str, str] = field(default_factory=dict)  # global ARGs in scope (their defaults)
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(text: str) -> list[Stage]:
    """Dockerfile -> stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for entry in logical:
        keyword, _, args = entry.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\S+))?", args, re.IGNORECASE)
            assert m, args
            base = re.sub(r"\$\{(\w+)\}", lambda v: global_args[v.group(1)], m.group(1))
            stages.append(Stage(base=base, name=m.group(2) or "", args=dict(global_args)))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


STAGES = parse((REPO / "Dockerfile").read_text())
FINAL = STAGES[-1]


def test_two_stages_on_the_pinned_base() -> None:
    assert len(STAGES) == 2
    assert [s.base for s in STAGES] == [BASE, BASE]
    assert STAGES[0].name == "build"


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    users = FINAL.all("USER")
    assert len(users) == 1
    user, _, group = users[0].partition(":")
    assert user.isdigit() and int(user) > 0
    assert not group or (group.isdigit() and int(group) > 0)
    # USER comes after the last RUN (nothing of the image is built as that user by accident, nothing after as root)
    kinds = [kw for kw, _ in FINAL.instructions]
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")


def test_entrypoint_is_meshplug_in_exec_form() -> None:
    entry = FINAL.all("ENTRYPOINT")
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["meshplug"]
    cmd = FINAL.all("CMD")
    assert cmd and json.loads(cmd[-1])[0] in ("version", "--help")


@pytest.mark.parametrize("tool", ["gcc", "build-essential", "-dev", "python3-venv", "git", "make", "cargo", "go "])
def test_no_build_tools_in_the_final_stage(tool: str) -> None:
    assert all(tool not in arg for _, arg in FINAL.instructions)


def test_the_final_stage_installs_only_the_runtime_from_debian() -> None:
    (apt,) = [r for r in FINAL.all("RUN") if "apt-get" in r]
    installed = apt.split("--no-install-recommends", 1)[1].split("&&")[0].split()
    assert installed == ["python3", "ca-certificates", "libnghttp2-14"], installed  # the HTTP/2 codec's library
    assert "rm -rf /var/lib/apt/lists/*" in apt


def test_wheels_reach_the_final_stage_only_through_a_bind_mount() -> None:
    assert FINAL.all("COPY") == [] and FINAL.all("ADD") == []
    runs = FINAL.all("RUN")
    assert any("--mount=type=bind,from=build,source=/wheels,target=/wheels" in r for r in runs)
    install = next(r for r in runs if "--find-links" in r)
    assert "--no-index" in install and "--find-links /wheels" in install
    assert "--without-pip" in install, "the runtime venv carries no pip"
    assert '/wheels/pip-${PIP_VERSION}-py3-none-any.whl/pip" install' in install, "pip runs from its wheel"
    build_runs = STAGES[0].all("RUN")
    assert any('pip wheel --wheel-dir /wheels . "pip==${PIP_VERSION}"' in r for r in build_runs)


def test_dockerignore_sends_only_the_package() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for arg in STAGES[0].all("COPY"):
        *sources, _dest = arg.split()
        copied |= {s.rstrip("/") for s in sources}
    assert copied == allowed == {"pyproject.toml", "setup.py", "README.md", "meshplug"}
