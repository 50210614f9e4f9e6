"""Match rules through a running agent process: a plugin with rules runs only for the requests they match.

Mirrors the istio plane's `test_match_rules_run_only_where_they_match` (test_render_envoy_validate.py) on
the agent plane: corpus rust/header_rules (``{"request": {"set": {name: value}}}``) sets a request header,
the testbed's echo upstream shows which request headers arrived. The static config's plugin carries
`match` too (the config file path), the push the istio test's rules (the resource path), followed by a
plugin without rules that must keep running on every request.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshplug import protocol
from tests.corpus import modules
from tests.testbed import agent as tb_agent
from tests.testbed import procs
from tests.testbed import upstream as tb_upstream

TOKEN = "match-push-token"
RULES = (
    protocol.MatchRule(hosts=("api.example.com",)),
    protocol.MatchRule(hosts=("*.example.org",), path_prefixes=("/v1/",)),
    protocol.MatchRule(exact_paths=("/healthz",)),
)
# (Host, path, the rules match): the istio plane test's cases
CASES = [
    ("api.example.com", "/anything", True),
    ("API.example.com:8080", "/", True),  # case and port of :authority ignored
    ("a.example.org", "/v1/x", True),
    ("a.b.example.org:443", "/v1/", True),
    ("a.example.org", "/v2/x", False),  # host matches, path does not
    ("example.org", "/v1/x", False),  # *.example.org needs a subdomain
    ("other", "/healthz", True),
    ("other", "/healthz?probe=1", True),  # exact path ignores the query
    ("other", "/healthz/x", False),
    ("other", "/", False),
    ("api.example.com.evil", "/", False),
]


def _sets(name: str, value: str) -> str:
    return f'{{"request": {{"set": {{"{name}": "{value}"}}}}}}'


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[tb_agent.Agent, tb_upstream.Service, modules.BuiltModule]]:
    built = modules.module("rust/header_rules")
    echo = tb_upstream.start_service("echo", log_dir=tmp_path / "logs")
    try:
        token = tmp_path / "token"
        token.write_text(TOKEN)
        raw = tb_agent.base_config(
            port=procs.free_port(),
            admin_port=procs.free_port(),
            clusters={"upstream": echo.port},
            plugins=[
                {
                    "name": "static",
                    "module": {"file": str(built.path), "sha256": built.sha256},
                    "configuration": _sets("x-rule", "static"),
                    "match": [{"hosts": ["*.example.org"], "exact_paths": ["/static"]}],
                }
            ],
            push={"address": "127.0.0.1", "port": procs.free_port(), "token_file": str(token), "allow_plaintext": True},
        )
        a = tb_agent.start_agent(raw, work_dir=tmp_path / "cfg", log_dir=tmp_path / "logs")
        try:
            yield a, echo, built
        finally:
            a.stop()
    finally:
        echo.stop()


def _seen(agent: tb_agent.Agent, host: str, path: str) -> dict[str, list[str]]:
    """The request headers the upstream received for GET `path` with Host `host`."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (host, path, resp.status, body[:300])
    finally:
        conn.close()
    out: dict[str, list[str]] = {}
    for k, v in tb_upstream.decode_record(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_match_rules_run_only_where_they_match(
    agent: tuple[tb_agent.Agent, tb_upstream.Service, modules.BuiltModule],
) -> None:
    a, _, built = agent
    # the static config's plugin: only *.example.org + exactly /static (query ignored)
    static: list[tuple[str, str, Any]] = [
        ("a.example.org", "/static", ["static"]),
        ("A.Example.Org:80", "/static?x=1", ["static"]),
        ("example.org", "/static", None),
        ("a.example.org", "/static/x", None),
        ("other", "/static", None),
    ]
    got: list[tuple[str, str, Any]] = [(h, p, _seen(a, h, p).get("x-rule")) for h, p, _ in static]
    assert got == static, a.proc.log()[-3000:]

    url = built.path.as_uri()  # below the static plugin's directory: a readable file root
    ruled = protocol.ExtensionConfig(
        name="ruled", root_id="", url=url, sha256=built.sha256, configuration=_sets("x-rule", "on"), match=RULES
    )
    always = protocol.ExtensionConfig(
        name="always", root_id="", url=url, sha256=built.sha256, configuration=_sets("x-always", "on")
    )
    reply = a.push("v1", [ruled, always], token=TOKEN)
    assert reply.ack, reply
    assert [p.name for p in reply.plugins] == ["ruled", "always"]
    dump = a.config_dump()
    assert dump["version_info"] == "v1"

    got = []
    for host, path, _ in CASES:
        headers = _seen(a, host, path)
        assert headers.get("x-always") == ["on"], (host, path, headers)  # the plugin after it always runs
        got.append((host, path, headers.get("x-rule") == ["on"]))
    assert got == CASES, a.proc.log()[-3000:]
