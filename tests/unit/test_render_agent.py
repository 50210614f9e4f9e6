"""meshplug.render.agent: the agent data plane's desired set, in chain order, versioned."""

from __future__ import annotations

from typing import Any

from meshplug import protocol, spec
from meshplug.render import agent, model

SERVER = model.ModuleServer(host="meshplug-modules.meshplug-system.svc.cluster.local", port=8080)
SMALL = model.Module.of(b"\x00asm\x01\x00\x00\x00" + b"\x00" * 100)


def plugin(name: str = "hdr", **fields: Any) -> spec.PluginSpec:
    return spec.parse({"metadata": {"name": name, "namespace": "shop"}, "spec": {"url": "oci://r/hdr:v1", **fields}})


def test_agent_desired_set_in_chain_order() -> None:
    entries = [
        (plugin(name="last", dataPlane="agent"), SMALL, "1"),
        (plugin(name="first", dataPlane="agent", phase="AUTHN"), SMALL, "3"),
        (plugin(name="mid-hi", dataPlane="agent", priority=5, pluginConfig={"k": 1}), SMALL, "2"),
        (plugin(name="mid-lo", dataPlane="agent", priority=-5, failStrategy="FAIL_OPEN"), SMALL, "0"),
    ]
    resources = agent.desired_set(entries, SERVER)
    assert [r.name for r in resources] == ["shop.first", "shop.mid-hi", "shop.mid-lo", "shop.last"]
    assert resources[1].configuration == '{"k":1}'
    assert resources[2].fail_strategy is protocol.FailStrategy.FAIL_OPEN
    assert resources[0].url == SERVER.url(SMALL.sha256, signed=True) and resources[0].sha256 == SMALL.sha256
    assert agent.version_of(resources) == agent.version_of(agent.desired_set(list(reversed(entries)), SERVER))
    assert agent.version_of(resources) != agent.version_of(resources[:3])


def test_match_rules_become_the_resource_match() -> None:
    rules = [
        {"hosts": ["api.example.com", "*.example.org"]},
        {"paths": [{"prefix": "/v1/"}, {"exact": "/healthz"}], "hosts": ["web"]},
    ]
    (res,) = agent.desired_set([(plugin(dataPlane="agent", matchRules=rules), SMALL, "0")], SERVER)
    assert res.match == (
        protocol.MatchRule(hosts=("api.example.com", "*.example.org")),
        protocol.MatchRule(hosts=("web",), path_prefixes=("/v1/",), exact_paths=("/healthz",)),
    )
    (plain,) = agent.desired_set([(plugin(dataPlane="agent"), SMALL, "0")], SERVER)
    assert plain.match == () and "match" not in plain.to_json()
