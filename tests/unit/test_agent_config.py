"""meshplug.agent.config: the static file parses into frozen dataclasses; every mistake names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshplug import errors, protocol
from meshplug.agent import config

BASE: dict[str, Any] = {
    "listeners": [{"name": "in", "port": 15006, "cluster": "app"}],
    "clusters": [{"name": "app", "port": 8080}],
    "admin": {"port": 15000},
}


def _cfg(**extra: Any) -> dict[str, Any]:
    return {**BASE, **extra}


def test_full_config(tmp_path: Path) -> None:
    raw = _cfg(
        push={"address": "0.0.0.0", "port": 15010, "token_file": "token"},
        state_dir="state",
        plugins=[
            {"name": "a", "module": {"file": "a.wasm"}, "configuration": {"k": [1]}},
            {"name": "b", "module": {"url": "https://x/b.wasm", "sha256": "b" * 64}, "fail_strategy": "FAIL_OPEN"},
        ],
    )
    cfg = config.parse(raw, base=tmp_path)
    assert cfg.listeners == (config.Listener("in", "127.0.0.1", 15006, "app"),)
    assert cfg.cluster("app").port == 8080
    assert cfg.push == config.PushEndpoint("0.0.0.0", 15010, tmp_path / "token")
    assert cfg.state_dir == tmp_path / "state"
    a, b = cfg.plugins
    assert a.url == (tmp_path / "a.wasm").as_uri() and a.configuration == '{"k":[1]}'
    assert b.fail_strategy is protocol.FailStrategy.FAIL_OPEN


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ([], "config must be a mapping"),
        (_cfg(listeners=[]), "listeners must be a non-empty list"),
        (_cfg(listeners=[{"port": 1, "cluster": "nope"}]), "not a defined cluster"),
        (_cfg(clusters=[{"name": "app", "port": 70000}]), r"clusters\[0\].port"),
        (_cfg(clusters=[{"name": "app", "port": 1, "response_timeout_s": 0}]), "response_timeout_s"),
        (_cfg(admin={"port": "x"}), "admin.port"),
        (_cfg(typo=1), "unknown key"),
        (_cfg(plugins=[{"name": "a", "module": {}}]), "exactly one of file, url"),
        (_cfg(plugins=[{"name": "a", "module": {"url": "https://x/a.wasm"}}]), "sha256 is required"),
        (_cfg(plugins=[{"name": "a", "module": {"file": "a"}}, {"name": "a", "module": {"file": "b"}}]), "duplicate"),
        (_cfg(push={"port": 1}), "token_file"),
    ],
)
def test_mistakes_are_config_errors(raw: Any, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match=fragment):
        config.parse(raw, base=tmp_path)


@pytest.mark.parametrize(("content", "ok"), [("tok\n", True), ("  \n", False), (None, False)])
def test_read_token(tmp_path: Path, content: str | None, ok: bool) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    if ok:
        assert config.read_token(path) == "tok"
    else:
        with pytest.raises(errors.ConfigError):
            config.read_token(path)
