"""meshplug.controller.webhooks without a server: the config file, the WasmPlugin check, when it applies, and the
names the injector shares with the operator (push port annotation, token Secret) and the chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplug import errors, injection
from meshplug.controller import agents, identity, webhooks

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "listen": {"address": "127.0.0.1", "port": 9443},
    "tls": {"certFile": "tls.crt", "keyFile": "tls.key"},
    "injection": {"enabled": True, "agent": {"image": "img:1"}},
    "validation": {"enabled": True, "allowedUrlPrefixes": ["oci://registry.example.com/"]},
}


def test_the_agents_ssrf_settings_reach_their_config(tmp_path: Path) -> None:
    agent = {"image": "i", "allowLoopback": True, "blockCIDRs": ["10.0.0.0/8"]}
    cfg = webhooks.parse_config({**BASE, "injection": {"agent": agent}}, tmp_path)
    assert cfg.injection is not None
    assert cfg.injection.allow_loopback is True and cfg.injection.block_cidrs == ("10.0.0.0/8",)
    modules = injection.agent_config(injection.AppPort(0, 0, 8080, "http"), cfg.injection)["modules"]
    assert modules["allow_loopback"] is True and modules["block_cidrs"] == ["10.0.0.0/8"]


@pytest.mark.parametrize(
    ("case", "value", "args"), [("default", None, False), ("on", True, True), ("off", False, False)]
)
def test_the_agents_signature_requirement_reaches_their_args(
    case: str, value: bool | None, args: bool, tmp_path: Path
) -> None:
    """chart agent.requireSignatures -> the webhook config's injection.agent.requireSignatures -> the agent's flag."""
    agent: dict[str, Any] = {"image": "i", **({"requireSignatures": value} if value is not None else {})}
    cfg = webhooks.parse_config({**BASE, "injection": {"agent": agent}}, tmp_path)
    assert cfg.injection is not None and cfg.injection.require_signatures is args, case
    app = injection.AppPort(0, 0, 8080, "http")
    assert ("--require-signatures" in injection._container(app, cfg.injection)["args"]) is args, case


def test_config_parses_with_defaults(tmp_path: Path) -> None:
    cfg = webhooks.parse_config(BASE, tmp_path)
    assert (cfg.address, cfg.port) == ("127.0.0.1", 9443)
    assert cfg.cert_file == tmp_path / "tls.crt"
    assert cfg.injection == injection.InjectionSettings(image="img:1", resources=injection.Resources("", "", "", ""))
    assert cfg.validation and cfg.allowed_url_prefixes == ("oci://registry.example.com/",)


@pytest.mark.parametrize(
    ("case", "change", "message"),
    [
        ("unknown top-level key", {"lisen": {}}, "unknown key(s) lisen"),
        ("no certificate", {"tls": {"certFile": "a"}}, "tls needs certFile and keyFile, or issue"),
        ("files and issue", {"tls": {"certFile": "a", "keyFile": "b", "issue": {"dnsNames": ["w"]}}}, "not both"),
        ("issue without names", {"tls": {"issue": {}}}, "tls.issue names no dnsNames or ipAddresses"),
        ("caBundle without issue", {"tls": {"certFile": "a", "keyFile": "b", "caBundle": {}}}, "goes with tls.issue"),
        ("caBundle kind typo", {"tls": {"issue": {"dnsNames": ["w"]}, "caBundle": {"mutating": ["x"]}}}, "unknown"),
        ("names not a list", {"tls": {"issue": {"dnsNames": "w"}}}, "tls.issue.dnsNames must be a list, got 'w'"),
        ("agent without image", {"injection": {"agent": {}}}, "injection.agent.image: required"),
        ("empty image", {"injection": {"agent": {"image": ""}}}, "injection.agent.image must be a non-empty string"),
        (
            "agent typo",
            {"injection": {"agent": {"image": "i", "pushport": 1}}},
            "injection.agent: unknown key(s) pushport",
        ),
        ("port not a number", {"listen": {"port": "9443"}}, "listen.port must be an integer in 1..65535, got '9443'"),
        ("port out of range", {"listen": {"port": 70000}}, "listen.port must be an integer in 1..65535, got 70000"),
        ("prefixes not a list", {"validation": {"allowedUrlPrefixes": "oci://"}}, "must be a list"),
        ("empty prefix", {"validation": {"allowedUrlPrefixes": [""]}}, "a list of non-empty strings"),
        ("loopback not a bool", {"injection": {"agent": {"image": "i", "allowLoopback": "no"}}}, "true or false"),
        ("requirement not a bool", {"injection": {"agent": {"image": "i", "requireSignatures": "yes"}}},
         "injection.agent.requireSignatures must be true or false"),
        ("not a CIDR", {"injection": {"agent": {"image": "i", "blockCIDRs": ["10.0.0.0/99"]}}}, "a list of CIDRs"),
    ],
)
def test_bad_config_is_refused(case: str, change: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError) as info:
        webhooks.parse_config({**BASE, **change}, tmp_path)
    assert message in info.value.message, case


def test_operator_issued_tls_parses(tmp_path: Path) -> None:
    tls = {
        "issue": {"dnsNames": ["hooks.ns.svc"], "ipAddresses": ["127.0.0.1"]},
        "caBundle": {"mutatingWebhookConfigurations": ["mp-inject"], "validatingWebhookConfigurations": ["mp-v"]},
    }
    cfg = webhooks.parse_config({**BASE, "tls": tls}, tmp_path)
    assert cfg.cert_file is None and cfg.key_file is None
    assert cfg.issued == webhooks.IssuedTls(
        dns_names=("hooks.ns.svc",),
        ip_addresses=("127.0.0.1",),
        ca_bundle={"mutatingwebhookconfigurations": ("mp-inject",), "validatingwebhookconfigurations": ("mp-v",)},
    )


def test_injection_can_be_off(tmp_path: Path) -> None:
    cfg = webhooks.parse_config({**BASE, "injection": {"enabled": False}}, tmp_path)
    assert cfg.injection is None


def test_chart_default_config_parses(tmp_path: Path) -> None:
    """The chart's values, rendered as the webhook config template does, are what the operator accepts."""
    values = yaml.safe_load((REPO / "charts" / "meshplug" / "values.yaml").read_text())
    agent = values["agent"]
    raw = {
        **BASE,
        "injection": {
            "enabled": True,
            "agent": {
                "image": "img:1",
                "secretName": agent["secretName"],
                "tokenAudience": agent["tokenAudience"],
                "tokenExpirationSeconds": agent["tokenExpirationSeconds"],
                "listenPort": agent["listenPort"],
                "pushPort": agent["pushPort"],
                "resources": agent["resources"],
            },
        },
    }
    cfg = webhooks.parse_config(raw, tmp_path)
    assert cfg.injection is not None and cfg.injection.secret_name == identity.DEFAULT_AGENT_SECRET
    assert cfg.injection.token_audience == identity.DEFAULT_AUDIENCE


def test_names_shared_with_the_operator() -> None:
    assert injection.PUSH_PORT_ANNOTATION == agents.PUSH_PORT_ANNOTATION
    assert injection.InjectionSettings(image="i").push_port == agents.DEFAULT_PUSH_PORT
    assert injection.InjectionSettings(image="i").secret_name == identity.DEFAULT_AGENT_SECRET
    assert injection.InjectionSettings(image="i").token_audience == identity.DEFAULT_AUDIENCE
    assert injection.CA_KEY == identity.CA_CERT and injection.PUSH_TOKEN_KEY == identity.AGENT_TOKEN
    assert (injection.CERT_KEY, injection.KEY_KEY) == (identity.AGENT_CERT, identity.AGENT_KEY)
    assert injection.TRUSTED_KEYS_KEY == identity.AGENT_TRUSTED_KEYS


def _plugin(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", **meta}, "spec": spec}


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize(
    ("case", "spec", "prefixes", "reason"),
    [
        ("ok", {"url": "oci://registry.example.com/a:v1"}, ["oci://registry.example.com/"], None),
        ("any url when no allowlist", {"url": "https://elsewhere.example/a.wasm"}, [], None),
        (
            "config satisfies schema",
            {"url": "oci://r/a:v1", "pluginConfig": {"n": 1}, "pluginConfigSchema": SCHEMA},
            [],
            None,
        ),
        (
            "config fails schema",
            {"url": "oci://r/a:v1", "pluginConfig": {"n": "1"}, "pluginConfigSchema": SCHEMA},
            [],
            "InvalidPluginConfig",
        ),
        ("missing config", {"url": "oci://r/a:v1", "pluginConfigSchema": SCHEMA}, [], "InvalidPluginConfig"),
        ("url not allowed", {"url": "oci://other.example.com/a:v1"}, ["oci://registry.example.com/"], "UrlNotAllowed"),
        (
            "scheme defaulted before the check",
            {"url": "registry.example.com/a:v1"},
            ["oci://registry.example.com/"],
            None,
        ),
        (
            "prefix is not a host match",
            {"url": "oci://registry.example.com.evil/a:v1"},
            ["oci://registry.example.com/"],
            "UrlNotAllowed",
        ),
    ],
)
def test_check_plugin(case: str, spec: dict[str, Any], prefixes: list[str], reason: str | None) -> None:
    if reason is None:
        webhooks.check_plugin(_plugin(spec), prefixes)
        return
    with pytest.raises(errors.SpecError) as info:
        webhooks.check_plugin(_plugin(spec), prefixes)
    assert info.value.reason == reason, case


@pytest.mark.parametrize(
    ("case", "body", "old", "checked"),
    [
        ("create", _plugin({"url": "a"}), None, True),
        ("spec change", _plugin({"url": "b"}), _plugin({"url": "a"}), True),
        (
            "metadata only (finalizers, kopf annotations)",
            _plugin({"url": "a"}, labels={"x": "1"}),
            _plugin({"url": "a"}),
            False,
        ),
        (
            "being deleted",
            _plugin({"url": "b"}, deletionTimestamp="2026-01-01T00:00:00Z"),
            _plugin({"url": "a"}),
            False,
        ),
    ],
)
def test_needs_check(case: str, body: dict[str, Any], old: dict[str, Any] | None, checked: bool) -> None:
    assert webhooks.needs_check(body, old) is checked, case


def test_register_without_config_registers_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf

    monkeypatch.delenv(webhooks.CONFIG_ENV, raising=False)
    registry = kopf.OperatorRegistry()
    assert webhooks.register(registry) is None
    assert list(registry._webhooks.get_all_handlers()) == []


def test_register_with_config_adds_every_webhook(tmp_path: Path) -> None:
    import kopf

    path = tmp_path / "webhook.yaml"
    path.write_text(yaml.safe_dump(BASE))
    registry = kopf.OperatorRegistry()
    assert webhooks.register(registry, path) is not None
    ids = sorted(h.id for h in registry._webhooks.get_all_handlers())
    assert ids == sorted(
        [webhooks.INJECT_PATH, webhooks.INJECT_NAMESPACE_PATH, webhooks.VALIDATE_PATH, webhooks.VALIDATE_TE_PATH]
    )
