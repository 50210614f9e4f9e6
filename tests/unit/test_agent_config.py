"""meshplug.agent.config: the static file parses into frozen dataclasses; every mistake names its key."""

from __future__ import annotations

import json
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


def _plugin_match(match: Any) -> dict[str, Any]:
    return _cfg(plugins=[{"name": "a", "module": {"file": "a.wasm"}, "match": match}])


def test_full_config(tmp_path: Path) -> None:
    tls = {"cert_file": "tls.crt", "key_file": "tls.key", "client_ca_file": "ca.crt"}
    raw = _cfg(
        push={"address": "0.0.0.0", "port": 15010, "token_file": "token", "tls": tls},
        state_dir="state",
        plugins=[
            {"name": "a", "module": {"file": "a.wasm"}, "configuration": {"k": [1]}},
            {"name": "b", "module": {"url": "https://x/b.wasm", "sha256": "b" * 64}, "fail_strategy": "FAIL_OPEN"},
        ],
    )
    cfg = config.parse(raw, base=tmp_path)
    assert cfg.listeners == (config.Listener("in", "127.0.0.1", 15006, "app"),)
    assert cfg.cluster("app").port == 8080
    push_tls = config.PushTLS(tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt", "meshplug-operator")
    assert cfg.push == config.PushEndpoint("0.0.0.0", 15010, tmp_path / "token", push_tls)
    assert cfg.state_dir == tmp_path / "state"
    a, b = cfg.plugins
    assert a.url == (tmp_path / "a.wasm").as_uri() and a.configuration == '{"k":[1]}'
    assert b.fail_strategy is protocol.FailStrategy.FAIL_OPEN


def test_plugin_match_rules(tmp_path: Path) -> None:
    rules = [
        {"hosts": ["API.example.com", "*.example.org"], "path_prefixes": ["/v1/"]},
        {"exact_paths": ["/healthz"]},
    ]
    cfg = config.parse(
        _cfg(
            plugins=[
                {"name": "a", "module": {"file": "a.wasm"}, "match": rules},
                {"name": "b", "module": {"file": "b"}},
            ]
        ),
        base=tmp_path,
    )
    a, b = cfg.plugins
    assert a.match == (
        protocol.MatchRule(hosts=("api.example.com", "*.example.org"), path_prefixes=("/v1/",)),
        protocol.MatchRule(exact_paths=("/healthz",)),
    )
    assert b.match == ()  # no match: every request
    assert config.parse(_plugin_match([]), base=tmp_path).plugins[0].match == ()


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
        (_cfg(push={"port": 1, "allow_plaintext": True}), "token_file"),
        (_cfg(push={"port": 1, "token_file": "t"}), "push needs tls .* push.allow_plaintext: true"),
        (_cfg(push={"port": 1, "token_file": "t", "allow_plaintext": "yes"}), "allow_plaintext must be true or false"),
        (_cfg(push={"port": 1, "token_file": "t", "tls": {"cert_file": "c"}}), "push.tls.key_file"),
        (_cfg(listeners=[{"port": 1, "cluster": "app", "type": "udp"}]), r"listeners\[0\].type must be one of"),
        (_cfg(modules={"file_roots": "/m"}), "modules.file_roots must be a list"),
        (_cfg(modules={"server": {"url": "ftp://x", "token_file": "t"}}), "modules.server.url"),
        (_cfg(modules={"server": {"url": "http://x"}}), "modules.server.token_file"),
        (_cfg(modules={"cache": "x"}), "unknown key"),
        (_cfg(modules={"allow_loopback": "yes"}), "modules.allow_loopback must be true or false"),
        (_cfg(modules={"block_cidrs": ["10.0.0.0/33"]}), r"modules.block_cidrs must be a list of CIDRs, got \['10"),
        (_cfg(wasm={"recycle_memory_mb": -1}), "wasm.recycle_memory_mb must be an integer >= 0"),
        (_cfg(wasm={"memory_mb": 1}), "wasm: unknown key"),
        (_cfg(modules={"precompiled": "yes"}), "modules.precompiled must be true or false"),
        (_cfg(node={"id": 1}), "node.id must be a string"),
        (_cfg(node={"cluster": ["c"]}), "node.cluster must be a string"),
        (_cfg(node={"metadata": {"REGION": 1}}), "node.metadata must be a mapping of strings to strings"),
        (_cfg(node={"metadata": ["x"]}), "node.metadata must be a mapping"),
        (_cfg(node={"name": "x"}), "node: unknown key"),
        (_plugin_match(None), r"plugins\[0\].match must be a list of rules"),
        (_plugin_match({"hosts": ["a"]}), r"plugins\[0\].match must be a list, got \{'hosts'"),
        (_plugin_match(["a.com"]), r"plugins\[0\].match\[0\] must be a mapping"),
        (_plugin_match([{"paths": [{"prefix": "/"}]}]), r"match\[0\]: unknown key paths \(use path_prefixes"),
        (_plugin_match([{"hosts": "a.com"}]), r"match\[0\].hosts must be a list, got 'a.com'"),
        (_plugin_match([{"hosts": [""]}]), r"match\[0\].hosts must be a list of non-empty strings, got \[''\]"),
        (_plugin_match([{"hosts": ["a.com:8080"]}]), r"match\[0\].hosts: 'a.com:8080' is not a host name"),
        (_plugin_match([{"hosts": ["a.*.com"]}]), r"'a.\*.com' is not a host name or \*.domain"),
        (_plugin_match([{"path_prefixes": ["v1/"]}]), r"match\[0\].path_prefixes: 'v1/' does not start with /"),
        (_plugin_match([{"exact_paths": [3]}]), r"match\[0\].exact_paths must be a list of non-empty strings"),
        (_plugin_match([{}]), r"plugins\[0\].match\[0\] matches everything"),
        (_plugin_match([{"hosts": ["a"], "methods": ["GET"]}]), r"match\[0\]: unknown key\(s\) methods"),
    ],
)
def test_mistakes_are_config_errors(raw: Any, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match=fragment):
        config.parse(raw, base=tmp_path)


@pytest.mark.parametrize(
    ("content", "tokens"),
    [("tok\n", ("tok",)), ("new\n old \n\n", ("new", "old")), ("  \n", None), (None, None)],
)
def test_read_tokens(tmp_path: Path, content: str | None, tokens: tuple[str, ...] | None) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    if tokens is not None:
        assert config.read_tokens(path) == tokens
    else:
        with pytest.raises(errors.ConfigError):
            config.read_tokens(path)


def test_listener_types_decide_the_plugin_kind(tmp_path: Path) -> None:
    assert config.parse(BASE, base=tmp_path).plugin_kind == "http"
    tcp = {"name": "db", "port": 1, "cluster": "app", "type": "tcp"}
    cfg = config.parse(_cfg(listeners=[tcp]), base=tmp_path)
    assert cfg.listeners[0].type == "tcp" and cfg.plugin_kind == "network"
    assert config.parse(_cfg(listeners=[*BASE["listeners"], tcp]), base=tmp_path).plugin_kind is None


def test_modules_section(tmp_path: Path) -> None:
    raw = _cfg(
        state_dir="state",
        modules={
            "cache_dir": "cache",
            "file_roots": ["mods"],
            "server": {"url": "https://modules.ns:8443", "token_file": "sa-token", "ca_file": "ca.crt"},
            "allow_loopback": True,
            "block_cidrs": ["10.0.0.0/8"],
        },
        plugins=[{"name": "a", "module": {"file": "wasm/a.wasm"}}],
    )
    m = config.parse(raw, base=tmp_path).modules
    assert m.cache_dir == tmp_path / "cache"
    # the static plugins' own files are readable: their directories join the configured roots
    assert m.file_roots == (tmp_path / "mods", tmp_path / "wasm")
    assert m.server == config.ModuleServer("https://modules.ns:8443", tmp_path / "sa-token", tmp_path / "ca.crt")
    assert m.allow_loopback is True and m.block_cidrs == ("10.0.0.0/8",)
    assert config.Modules().allow_loopback is False, "loopback is refused unless allowed"
    assert config.parse(BASE, base=tmp_path).modules == config.Modules()


def test_wasm_section(tmp_path: Path) -> None:
    assert config.parse(BASE, base=tmp_path).wasm.recycle_memory_mb == 128
    assert config.parse(_cfg(wasm={"recycle_memory_mb": 0}), base=tmp_path).wasm.recycle_memory_mb == 0


def test_node(tmp_path: Path) -> None:
    assert config.parse(BASE, base=tmp_path).node == config.Node()
    raw = _cfg(node={"id": "n1", "cluster": "c1", "metadata": {"REGION": "eu", "NAME": "p"}})
    assert config.parse(raw, base=tmp_path).node == config.Node("n1", "c1", (("REGION", "eu"), ("NAME", "p")))


def test_load_takes_the_node_from_the_downward_api(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(BASE))
    env = {"POD_NAME": "web-1", "POD_NAMESPACE": "shop"}
    node = config.load(path, environ=env).node
    assert node == config.Node("web-1.shop", "", (("NAME", "web-1"), ("NAMESPACE", "shop")))
    assert config.load(path, environ={}).node == config.Node()
    # the file's node wins over the environment
    path.write_text(json.dumps(_cfg(node={"id": "mine", "metadata": {"NAME": "x"}})))
    node = config.load(path, environ=env).node
    assert node == config.Node("mine", "", (("NAME", "x"), ("NAMESPACE", "shop")))
