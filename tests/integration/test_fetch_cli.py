"""`meshplug fetch` as a user runs it: a real subprocess against the TLS origin, the registry and files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from meshplug.errors import FETCH_EXIT_CODES as EXIT_CODES
from tests.testbed.origin import Origin, wasm_module
from tests.testbed.registry import Registry

WASM = wasm_module(51)
SHA = hashlib.sha256(WASM).hexdigest()


def meshplug(*argv: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplug", "fetch", *argv, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_fetch_https_writes_the_module(origin: Origin, tmp_path: Path) -> None:
    url = origin.program(f"/{uuid.uuid4().hex}", body=WASM)
    out = tmp_path / "m.wasm"
    done = meshplug(url, "--ca", str(origin.ca_file), "--sha256", SHA, "-o", str(out), cache=tmp_path / "c")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == WASM
    assert f"sha256={SHA}" in done.stdout
    assert done.stderr == ""  # not a terminal: no progress bar


def test_fetch_oci_with_a_pull_secret_file(registries: dict[str, Registry], tmp_path: Path) -> None:
    registry = registries["basic"]
    digest = registry.push_layout("docker-image", "cli/filter", "v1", WASM)
    secret = tmp_path / "secret.json"
    secret.write_bytes(registry.pull_secret())
    out = tmp_path / "m.wasm"
    argv = [registry.url("cli/filter", "v1"), "--pull-secret", str(secret), "--ca", str(registry.ca_file)]
    done = meshplug(*argv, "-o", str(out), cache=tmp_path / "c")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == WASM and f"manifest={digest}" in done.stdout


CLI_FAILURES: list[tuple[dict[str, object], list[str], str, str]] = [
    ({"status": 404}, [], "not_found", "not found"),
    ({"body": WASM}, ["--sha256", "0" * 64], "checksum_mismatched", "checksum mismatch"),
    ({"body": b"hello"}, [], "not_wasm", "not a wasm module"),
    ({"redirect": "http://169.254.169.254/"}, [], "blocked", "blocked"),
]


@pytest.mark.parametrize("case", CLI_FAILURES, ids=[c[2] for c in CLI_FAILURES])
def test_fetch_failures_print_one_line_and_exit_with_their_code(
    origin: Origin, tmp_path: Path, case: tuple[dict[str, object], list[str], str, str]
) -> None:
    behaviour, extra, reason, label = case
    url = origin.program(f"/{uuid.uuid4().hex}", **behaviour)  # type: ignore[arg-type]
    out = tmp_path / "m.wasm"
    done = meshplug(url, "--ca", str(origin.ca_file), *extra, "-o", str(out), cache=tmp_path / "c")
    assert done.returncode == EXIT_CODES[reason]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"meshplug fetch: {label}: ")
    assert not out.exists()


def test_file_escape_and_bad_sha_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.wasm").write_bytes(WASM)
    out = tmp_path / "m.wasm"
    done = meshplug(f"file://{root}/../outside.wasm", "--file-root", str(root), "-o", str(out), cache=tmp_path / "c")
    assert done.returncode == EXIT_CODES["blocked"]
    bad = meshplug(f"file://{root}/x.wasm", "--sha256", "xyz", "-o", str(out), cache=tmp_path / "c")
    assert bad.returncode == 2 and "sha256 must be 64 hex digits" in bad.stderr
