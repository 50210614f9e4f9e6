"""Admission webhooks served by the operator over HTTPS (kopf's admission server): agent injection, plugin checks.

Called by `meshplug.controller.handlers.build_registry` through `register(registry)`. Nothing is registered
unless ``$MESHPLUG_WEBHOOK_CONFIG`` names a webhook config file (the chart mounts one from its values):

    listen: {address: 0.0.0.0, port: 9443}
    tls: {certFile: /etc/meshplug/webhook-tls/tls.crt, keyFile: /etc/meshplug/webhook-tls/tls.key}
    # or, with the operator's own CA (the chart's default, `meshplug.controller.webhook_tls`):
    # tls: {issue: {dnsNames: [meshplug-webhook.meshplug-system.svc], ipAddresses: []},
    #       caBundle: {mutatingWebhookConfigurations: [meshplug-inject], validatingWebhookConfigurations: [...]}}
    injection:                      # mutating webhook on Pod CREATE (meshplug.injection makes the patch)
      enabled: true
      agent: {image: ..., imagePullPolicy: IfNotPresent, listenPort: 15006, adminPort: 15000, pushPort: 15010,
              secretName: meshplug-agent, moduleServerUrl: "https://...:8443", tokenAudience: meshplug,
              tokenExpirationSeconds: 3600, allowLoopback: false, blockCIDRs: [], runAsUser: 65532, logLevel: info,
              resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}}}
    validation:                     # validating webhook on WasmPlugin CREATE/UPDATE
      enabled: true
      allowedUrlPrefixes: [oci://registry.example.com/]    # empty: any url

Paths (kopf routes by handler id): ``/inject-agent`` (pods labelled for injection), ``/inject-agent-namespace``
(every pod of a namespace labelled for injection, unless the pod opts out) and ``/validate-wasmplugin``. The Mutating/
ValidatingWebhookConfiguration objects belong to the chart (kopf does not manage them); with ``tls.issue`` the
operator sets their caBundle and nothing else (RBAC: get,patch on those names only). kopf re-reads the
certificate files when they change.
A rejected WasmPlugin gets the reason of `meshplug.spec.parse` (pluginConfig vs pluginConfigSchema via
`spec.check_plugin_config`) or ``UrlNotAllowed``. Before it admits a pod, the injection webhook makes sure the
namespace's agent Secret exists (`meshplug.controller.identity`): the kubelet needs it to start the agent.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import yaml

from meshplug import errors, injection, spec
from meshplug.controller import identity as identity_mod
from meshplug.controller import webhook_tls
from meshplug.validate import lua as validate_lua

log = logging.getLogger("meshplug.controller.webhooks")

CONFIG_ENV = "MESHPLUG_WEBHOOK_CONFIG"
INJECT_PATH = "inject-agent"
INJECT_NAMESPACE_PATH = "inject-agent-namespace"
VALIDATE_PATH = "validate-wasmplugin"
VALIDATE_TE_PATH = "validate-trafficextension"


@dataclass(frozen=True)
class IssuedTls:
    """``tls.issue`` (+ ``tls.caBundle``): a serving certificate from the operator's own CA, and the webhook
    configurations whose caBundle the operator keeps (`meshplug.controller.webhook_tls`)."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    ca_bundle: Mapping[str, tuple[str, ...]]  # plural (mutatingwebhookconfigurations, ...) -> names


@dataclass(frozen=True)
class WebhookConfig:
    address: str
    port: int
    cert_file: Path | None  # tls.certFile/keyFile (a mounted Secret), or
    key_file: Path | None
    issued: IssuedTls | None  # tls.issue (the operator's CA)
    injection: injection.InjectionSettings | None  # None: injection off
    validation: bool
    allowed_url_prefixes: tuple[str, ...]


def _obj(raw: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise errors.ConfigError(f"webhook config: {where} must be a mapping")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise errors.ConfigError(f"webhook config: {where}: unknown keys {unknown}")
    return raw


def _int(obj: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.ConfigError(f"webhook config: {where}.{key} must be an integer")
    return value


def _bool(obj: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise errors.ConfigError(f"webhook config: {where}.{key} must be true or false")
    return value


def _cidrs(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key) or []
    if not isinstance(value, list):
        raise errors.ConfigError(f"webhook config: {where}.{key} must be a list of CIDRs")
    for cidr in value:
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            raise errors.ConfigError(f"webhook config: {where}.{key}: not a CIDR: {cidr!r}") from None
    return tuple(str(c) for c in value)


def _str(obj: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise errors.ConfigError(f"webhook config: {where}.{key} must be a string")
    return value


def _agent(raw: Any) -> injection.InjectionSettings:
    where = "injection.agent"
    agent = _obj(
        raw,
        where,
        {
            "image",
            "imagePullPolicy",
            "listenPort",
            "adminPort",
            "pushPort",
            "secretName",
            "moduleServerUrl",
            "tokenAudience",
            "tokenExpirationSeconds",
            "allowLoopback",
            "blockCIDRs",
            "runAsUser",
            "logLevel",
            "resources",
        },
    )
    image = _str(agent, "image", where, "")
    if not image:
        raise errors.ConfigError("webhook config: injection.agent.image is required")
    res = _obj(agent.get("resources"), f"{where}.resources", {"requests", "limits"})
    req = _obj(res.get("requests"), f"{where}.resources.requests", {"cpu", "memory"})
    lim = _obj(res.get("limits"), f"{where}.resources.limits", {"cpu", "memory"})
    d = injection.InjectionSettings(image=image)
    return injection.InjectionSettings(
        image=image,
        image_pull_policy=_str(agent, "imagePullPolicy", where, d.image_pull_policy),
        listen_port=_int(agent, "listenPort", where, d.listen_port),
        admin_port=_int(agent, "adminPort", where, d.admin_port),
        push_port=_int(agent, "pushPort", where, d.push_port),
        secret_name=_str(agent, "secretName", where, d.secret_name),
        module_server_url=_str(agent, "moduleServerUrl", where, d.module_server_url),
        token_audience=_str(agent, "tokenAudience", where, d.token_audience),
        token_expiration_s=_int(agent, "tokenExpirationSeconds", where, d.token_expiration_s),
        allow_loopback=_bool(agent, "allowLoopback", where, d.allow_loopback),
        block_cidrs=_cidrs(agent, "blockCIDRs", where),
        run_as_user=_int(agent, "runAsUser", where, d.run_as_user),
        log_level=_str(agent, "logLevel", where, d.log_level),
        resources=injection.Resources(
            cpu_request=str(req.get("cpu", "")),
            memory_request=str(req.get("memory", "")),
            cpu_limit=str(lim.get("cpu", "")),
            memory_limit=str(lim.get("memory", "")),
        ),
    )


def _names(obj: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    raw = obj.get(key) or []
    if not isinstance(raw, list) or not all(isinstance(n, str) and n for n in raw):
        raise errors.ConfigError(f"webhook config: {where}.{key} must be a list of names")
    return tuple(raw)


def _issued(tls: Mapping[str, Any]) -> IssuedTls | None:
    if tls.get("issue") is None:
        if tls.get("caBundle") is not None:
            raise errors.ConfigError("webhook config: tls.caBundle goes with tls.issue (the operator's CA)")
        return None
    if tls.get("certFile") or tls.get("keyFile"):
        raise errors.ConfigError("webhook config: tls.issue or tls.certFile/keyFile, not both")
    issue = _obj(tls.get("issue"), "tls.issue", {"dnsNames", "ipAddresses"})
    kinds = {"mutatingWebhookConfigurations", "validatingWebhookConfigurations"}
    bundle = _obj(tls.get("caBundle"), "tls.caBundle", kinds)
    issued = IssuedTls(
        dns_names=_names(issue, "dnsNames", "tls.issue"),
        ip_addresses=_names(issue, "ipAddresses", "tls.issue"),
        ca_bundle={key.lower(): _names(bundle, key, "tls.caBundle") for key in bundle},
    )
    if not issued.dns_names and not issued.ip_addresses:
        raise errors.ConfigError("webhook config: tls.issue names no dnsNames or ipAddresses")
    return issued


def ca_bundle_targets() -> Mapping[str, tuple[str, ...]]:
    """The webhook configurations whose caBundle this operator keeps (plural -> names): none unless
    ``$MESHPLUG_WEBHOOK_CONFIG`` asks for the operator's CA (tls.issue)."""
    path = os.environ.get(CONFIG_ENV, "")
    issued = load_config(Path(path)).issued if path else None
    return issued.ca_bundle if issued is not None else {}


def parse_config(raw: Any, base: Path) -> WebhookConfig:
    """A loaded webhook config document -> WebhookConfig; ConfigError names the offending key."""
    top = _obj(raw, "config", {"listen", "tls", "injection", "validation"})
    listen = _obj(top.get("listen"), "listen", {"address", "port"})
    tls = _obj(top.get("tls"), "tls", {"certFile", "keyFile", "issue", "caBundle"})
    inj = _obj(top.get("injection"), "injection", {"enabled", "agent"})
    val = _obj(top.get("validation"), "validation", {"enabled", "allowedUrlPrefixes"})
    issued = _issued(tls)
    if issued is None and (not tls.get("certFile") or not tls.get("keyFile")):
        raise errors.ConfigError("webhook config: tls needs certFile and keyFile, or issue (HTTPS only)")
    prefixes = val.get("allowedUrlPrefixes") or []
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
        raise errors.ConfigError("webhook config: validation.allowedUrlPrefixes must be a list of strings")
    port = _int(listen, "port", "listen", 9443)
    if not 0 < port < 65536:
        raise errors.ConfigError(f"webhook config: listen.port {port} out of range")
    return WebhookConfig(
        address=_str(listen, "address", "listen", "0.0.0.0"),  # noqa: S104 - the apiserver connects from outside
        port=port,
        cert_file=None if issued else base / _str(tls, "certFile", "tls", ""),
        key_file=None if issued else base / _str(tls, "keyFile", "tls", ""),
        issued=issued,
        injection=_agent(inj.get("agent")) if inj.get("enabled", True) else None,
        validation=bool(val.get("enabled", True)),
        allowed_url_prefixes=tuple(prefixes),
    )


def load_config(path: Path) -> WebhookConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise errors.ConfigError(f"cannot read webhook config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"webhook config {path}: not valid YAML: {exc}") from None
    return parse_config(raw, path.resolve().parent)


# --- the checks (pure) -----------------------------------------------------------------------------------------


def check_plugin(body: Mapping[str, Any], allowed_url_prefixes: Sequence[str]) -> None:
    """Raise SpecError unless the WasmPlugin / TrafficExtension parses (pluginConfig satisfies its schema) and its
    url is allowed, or its Lua compiles (the message carries LuaJIT's error and the line, as Envoy reports it)."""
    plugin = spec.parse(body)
    if plugin.lua is not None:
        try:
            validate_lua.check(plugin.lua, where="spec.lua.inlineCode")
        except errors.ValidationError as exc:
            raise errors.SpecError(exc.message, reason="InvalidLua") from None
        return
    if allowed_url_prefixes and not any(plugin.url.startswith(p) for p in allowed_url_prefixes):
        raise errors.SpecError(
            f"spec.url {plugin.url!r} is not allowed; allowed prefixes: {', '.join(allowed_url_prefixes)}",
            reason="UrlNotAllowed",
        )


def needs_check(body: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Check creations and spec changes; never block deletion (finalizer removal) or metadata-only updates."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return old is None or old.get("spec") != body.get("spec")


# --- kopf wiring -----------------------------------------------------------------------------------------------


def _injector(
    agent: injection.InjectionSettings, identity: identity_mod.Identity | None, *, namespace_opt_in: bool
) -> Any:
    """The mutating handler: the patch, and (not on dry runs) the namespace's agent Secret made beforehand."""

    def inject_agent(body: kopf.Body, patch: kopf.Patch, dryrun: bool = False, **_: Any) -> None:
        try:
            ops = injection.patch(body, agent, namespace_opt_in=namespace_opt_in)
        except errors.ConfigError as exc:
            raise kopf.AdmissionError(f"meshplug agent injection: {exc.message}", code=400) from None
        if not ops:
            return
        namespace = str(body.get("metadata", {}).get("namespace") or "")
        if identity is not None and namespace and not dryrun:
            try:
                identity.ensure_agent_secret(namespace)
            except errors.MeshplugError as exc:
                raise kopf.AdmissionError(
                    f"meshplug agent injection: cannot make Secret {namespace}/{agent.secret_name}: {exc.message}",
                    code=500,
                ) from None

        def apply_ops(doc: Any) -> None:
            doc.update(injection.apply_patch(doc, ops))

        patch.fns.append(apply_ops)

    return inject_agent


def _operator_tls(issued: IssuedTls, ident: identity_mod.Identity) -> tuple[str, str, bytes]:
    """The serving certificate from the operator's CA (key and certificate in one file) and the caBundle of the
    chart's webhook configurations, kept current after each identity check (`meshplug.controller.webhook_tls`)."""
    files = webhook_tls.ServingFiles(ident, issued.dns_names, issued.ip_addresses)
    bundle = webhook_tls.CaBundle(ident.writer, issued.ca_bundle)

    def keep() -> None:
        files.refresh()
        bundle.ensure(ident.authority.cert_pem)

    try:
        bundle.ensure(ident.authority.cert_pem)
    except errors.ApplyError as exc:  # retried after the next identity check
        log.error("webhook TLS: cannot set the caBundle: %s", exc.message)
    ident.on_check(keep)
    return str(files.path), str(files.path), ident.authority.cert_pem


def register(
    registry: kopf.OperatorRegistry,
    config_path: Path | None = None,
    *,
    identity: identity_mod.Identity | None = None,
) -> WebhookConfig | None:
    """Register the admission server and handlers on ``registry`` when a webhook config is given; ``identity``
    makes the agent Secret of a namespace before its first pod is admitted."""
    if config_path is None:
        env = os.environ.get(CONFIG_ENV, "")
        if not env:
            return None
        config_path = Path(env)
    config = load_config(config_path)

    certfile, pkeyfile, cadata = str(config.cert_file), str(config.key_file), None
    if config.issued is not None:
        if identity is None:
            raise errors.ConfigError("webhook config: tls.issue needs the operator's identity (its CA)")
        certfile, pkeyfile, cadata = _operator_tls(config.issued, identity)

    @kopf.on.startup(registry=registry)
    def admission_server(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.admission.server = kopf.WebhookServer(
            addr=config.address, port=config.port, certfile=certfile, pkeyfile=pkeyfile, cadata=cadata
        )
        settings.admission.managed = None  # the chart owns the webhook configurations

    agent = config.injection
    if agent is not None:
        for path, namespace_opt_in in ((INJECT_PATH, False), (INJECT_NAMESPACE_PATH, True)):
            kopf.on.mutate("", "v1", "pods", id=path, registry=registry, operations=["CREATE"])(
                _injector(agent, identity, namespace_opt_in=namespace_opt_in)
            )

    if config.validation:
        prefixes = config.allowed_url_prefixes

        def validate_plugin(body: kopf.Body, **kwargs: Any) -> None:
            if not needs_check(body, kwargs.get("old")):
                return
            try:
                check_plugin(body, prefixes)
            except errors.SpecError as exc:
                raise kopf.AdmissionError(f"{exc.reason}: {exc.message}", code=422) from None

        for plural, path in ((spec.PLURAL, VALIDATE_PATH), (spec.PLURAL_TRAFFIC_EXTENSION, VALIDATE_TE_PATH)):
            kopf.on.validate(
                spec.API_GROUP, spec.API_VERSION, plural, id=path, registry=registry, operations=["CREATE", "UPDATE"]
            )(validate_plugin)

    return config
