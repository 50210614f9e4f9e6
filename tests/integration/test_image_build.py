"""The container image, really built: the repository's Dockerfile, unchanged, built by buildah (Debian's daemonless
image builder, `--isolation chroot`) on a clean Debian root made by debootstrap (scripts/install-debian-root.sh;
no registry we reach serves debian:bookworm-slim and there is no Docker engine here), then run as the image's
own user: `meshplug version` (the data path compiled), `meshplug operator --help`, and `meshplug agent` serving
a request through a Rust plugin to an upstream on this machine.

Every step of the Dockerfile runs inside the image being built: apt-get from Debian's mirror, pip from PyPI,
the compile with the build stage's gcc. Nothing of this machine's Python or venvs is visible to it, so a step
that only works on the developer's venv fails here. The one thing added to the debootstrapped root is this
machine's network trust (its local CA certificates and /etc/pip.conf, when present): the registries are reached
through an intercepting proxy, as a site's base image would carry its proxy's CA.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.corpus import modules
from tests.testbed import procs, upstream
from tests.testbed.agent import http_request

SCRIPT = procs.REPO_ROOT / "scripts" / "install-debian-root.sh"
BUILD_TIMEOUT_S = 1500.0
#: the image fixture may take its build's whole time (a compile on 2 busy cores), beyond pytest's default timeout
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + 120)
LOCAL_TRUST = (Path("/usr/local/share/ca-certificates"), Path("/etc/pip.conf"))


@dataclass(frozen=True)
class Image:
    buildah: tuple[str, ...]  # buildah with this test's own storage
    name: str
    config: dict[str, object]  # the OCI image config (User, Entrypoint, Cmd, Env, WorkingDir)
    log_dir: Path

    def run(self, *argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`argv` in a fresh container of the image, as the image's user."""
        ctr = _out([*self.buildah, "from", "--quiet", self.name]).strip()
        try:
            return subprocess.run(
                [*self.buildah, "run", "--isolation", "chroot", "--user", str(self.config["User"]), ctr, "--", *argv],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            _out([*self.buildah, "rm", ctr])


def _out(argv: list[str], timeout: float = 300.0) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, f"{argv}: {out.stderr[-3000:]}"
    return out.stdout


def _base_image(buildah: tuple[str, ...], rootfs: Path) -> str:
    """The debootstrapped root as a one-layer image, plus this machine's network trust."""
    name = f"localhost/debootstrap-{rootfs.parent.name}:site"
    ctr = _out([*buildah, "from", "--quiet", "scratch"]).strip()
    _out([*buildah, "add", ctr, str(rootfs), "/"])
    for path in LOCAL_TRUST:
        if path.exists():
            _out([*buildah, "copy", ctr, str(path), str(path)])
    _out([*buildah, "config", "--cmd", "bash", ctr])
    _out([*buildah, "commit", "--quiet", "--rm", ctr, name])
    return name


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    binary = procs.which_or_fail("buildah", "install it with `make system` (Debian package buildah)")
    rootfs = Path(_out([str(SCRIPT)], timeout=900).strip().splitlines()[-1])
    assert rootfs.is_file(), rootfs
    work = tmp_path_factory.mktemp("image")
    buildah = (binary, "--root", str(work / "storage"), "--runroot", str(work / "run"), "--storage-driver", "vfs")
    log_dir = work / "logs"
    log_dir.mkdir()
    try:
        base = _base_image(buildah, rootfs)
        name = "localhost/meshplug:clean-room"
        log = log_dir / "build.log"
        with log.open("w") as fh:
            built = subprocess.run(
                [*buildah, "bud", "--isolation", "chroot", "--build-arg", f"BASE={base}", "-t", name, "."],
                cwd=procs.REPO_ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        assert built.returncode == 0, f"buildah bud failed:\n{log.read_text()[-6000:]}"
        inspected = json.loads(_out([*buildah, "inspect", "--type", "image", name]))
        yield Image(buildah, name, inspected["OCIv1"]["config"], log_dir)
    finally:
        subprocess.run([*buildah, "rm", "--all"], capture_output=True, timeout=120, check=False)
        subprocess.run([*buildah, "rmi", "--all", "--force"], capture_output=True, timeout=300, check=False)
        shutil.rmtree(work / "storage", ignore_errors=True)


def test_the_image_runs_as_its_non_root_user_with_the_compiled_data_path(image: Image) -> None:
    user = str(image.config["User"])
    assert user == "65532:65532"
    entrypoint, cmd = image.config["Entrypoint"], image.config["Cmd"]
    assert entrypoint == ["meshplug"] and cmd == ["version"]
    out = image.run(*entrypoint, *cmd, "--json")
    assert out.returncode == 0, out.stderr
    versions = json.loads(out.stdout)
    assert versions["meshplug"] == "0.1.0"
    assert versions["dataplane"] == "compiled", versions
    assert "not installed" not in versions.values(), versions
    codec = image.run("/opt/meshplug/bin/python", "-c", "from meshplug.agent import h2wire; print(h2wire.CODEC_NAME)")
    assert codec.stdout.startswith("nghttp2 "), codec.stdout + codec.stderr  # the HTTP/2 codec links in the image
    who = image.run("id", "-u")
    assert who.stdout.strip() == "65532", who.stderr


def test_the_image_carries_no_compiler_pip_or_sources(image: Image) -> None:
    probe = image.run(
        "sh", "-c", "command -v gcc cc pip pip3; ls /opt/meshplug/bin; ls -d /src /wheels /opt/build 2>/dev/null; true"
    )
    listed = probe.stdout.split()
    assert "meshplug" in listed, probe.stdout
    for absent in ("gcc", "cc", "pip", "pip3", "/src", "/wheels", "/opt/build"):
        assert not any(item == absent or item.endswith("/" + absent) for item in listed), probe.stdout


def test_operator_help_parses_in_the_image(image: Image) -> None:
    out = image.run("meshplug", "operator", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: meshplug operator"), out.stdout[:300]


def test_the_agent_serves_through_a_plugin_in_the_image(image: Image, tmp_path: Path) -> None:
    plugin = modules.module("rust/header_rules")
    echo = upstream.start_service("echo", log_dir=image.log_dir, name="image-echo")
    port, admin = procs.free_port(), procs.free_port()
    config = {
        "listeners": [{"name": "main", "address": "127.0.0.1", "port": port, "cluster": "upstream"}],
        "clusters": [{"name": "upstream", "address": "127.0.0.1", "port": echo.port}],
        "admin": {"address": "127.0.0.1", "port": admin},
        "plugins": [
            {
                "name": "header-rules",
                "module": {"file": "/tmp/plugin.wasm"},
                "configuration": {"request": {"add": {"x-added": "in-image"}}},
            }
        ],
    }
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump(config))
    shutil.copy(plugin.path, tmp_path / "plugin.wasm")
    ctr = _out([*image.buildah, "from", "--quiet", image.name]).strip()
    try:
        for name in ("agent.yaml", "plugin.wasm"):
            _out([*image.buildah, "copy", "--chown", str(image.config["User"]), ctr, str(tmp_path / name), "/tmp/"])
        agent = procs.start(
            "image-agent",
            [
                *image.buildah,
                "run",
                "--isolation",
                "chroot",
                "--user",
                str(image.config["User"]),
                ctr,
                "--",
                "meshplug",
                "agent",
                "--config",
                "/tmp/agent.yaml",
            ],
            log_dir=image.log_dir,
            ready=lambda: http_request(admin, "GET", "/ready", timeout=1.0)[0] == 200,
            timeout=60.0,
        )
        try:
            status, _, body = http_request(port, "GET", "/through", headers={"x-echo-case": "image"})
            assert status == 200, body[:300]
            seen = echo.seen("image")
            assert seen is not None and ("x-added", "in-image") in seen["headers"], seen
            # the agent runs as the image's user inside the container (its pid is a child of buildah's)
            served = _agent_pid(agent.pid)
            assert served is not None and os.stat(f"/proc/{served}").st_uid == 65532
        finally:
            _stop_tree(agent)
    finally:
        echo.stop()
        _out([*image.buildah, "rm", ctr])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _agent_pid(root: int) -> int | None:
    for pid in _descendants(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(cmdline) > 2 and cmdline[1] == b"/opt/meshplug/bin/meshplug" and cmdline[2] == b"agent":
            return pid
    return None


def _stop_tree(proc: procs.Proc) -> None:
    """SIGTERM the agent inside the container (by pid), then buildah itself."""
    served = _agent_pid(proc.pid)
    if served is not None:
        os.kill(served, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            procs.wait_until(lambda: not Path(f"/proc/{served}").exists(), timeout=15, what="the agent to exit")
    proc.stop()
