"""The CLI dispatches subcommands and maps meshplug errors to exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from meshplug import cli, errors


def test_version_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meshplug"]
    assert out["wasmtime"] == "50.0.1"


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "meshplug", "version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("meshplug ")


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (errors.MeshplugError("x"), 1),
        (errors.ConfigError("bad flag"), 2),
        (errors.SpecError("bad spec"), 2),
        (errors.FetchError("boom", reason="checksum_mismatched"), 1),
    ],
)
def test_errors_map_to_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: errors.MeshplugError, exit_code: int
) -> None:
    from meshplug.commands import version

    def fail(_args: object) -> int:
        raise error

    monkeypatch.setattr(version, "run", fail)
    assert cli.main(["version"]) == exit_code
    assert str(error) in capsys.readouterr().err


def test_fetch_error_keeps_reason() -> None:
    err = errors.FetchError("sha256 differs", reason="checksum_mismatched")
    assert err.reason == "checksum_mismatched"
    assert isinstance(err, errors.MeshplugError)
