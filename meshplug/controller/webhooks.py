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
              resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {memory: 256Mi}},
              requireSignatures: false}     # true: agents run --require-signatures (refuse unsigned modules)
    validation:                     # validating webhook on WasmPlugin CREATE/UPDATE
      enabled: true
      allowedUrlPrefixes: [oci://registry.example.com/]    # empty: any url
    istioModules:                   # mutating webhook on Pod CREATE: the istio plane's ConfigMap route
      enabled: true

Paths (kopf routes by handler id): ``/inject-agent`` (pods labelled for injection), ``/inject-agent-namespace``
(every pod of a namespace labelled for injection, unless the pod opts out), ``/mount-istio-modules`` and
``/validate-wasmplugin``. ``/mount-istio-modules`` lists meshplug's module ConfigMaps in the pod's namespace (label
``meshplug.io/mount``, written by `meshplug.controller.delivery.istio_configmap`) and mounts those whose selector
takes the pod (`meshplug.injection.istio_module_patch`); it never refuses a pod (a failure is logged; the plugin's
status then reports the pod as needing a restart). The Mutating/ValidatingWebhookConfiguration objects belong to
the chart (kopf does not manage them); with ``tls.issue`` the operator sets their caBundle and nothing else (RBAC:
get,patch on those names only). kopf re-reads the certificate files when they change.
A rejected WasmPlugin gets the reason of `meshplug.spec.parse` (pluginConfig vs pluginConfigSchema via
`spec.check_plugin_config`) or ``UrlNotAllowed``. Before it admits a pod, the injection webhook makes sure the
namespace's agent Secret exists (`meshplug.controller.identity`): the kubelet needs it to start the agent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf
import yaml

from meshplug import errors, injection, spec
from meshplug.controller import identity as identity_mod
from meshplug.controller import webhook_tls
from meshplug.fields import Fields
from meshplug.render import istio
from meshplug.validate import lua as validate_lua

log = logging.getLogger("meshplug.controller.webhooks")

CONFIG_ENV = "MESHPLUG_WEBHOOK_CONFIG"
INJECT_PATH = "inject-agent"
INJECT_NAMESPACE_PATH = "inject-agent-namespace"
VALIDATE_PATH = "validate-wasmplugin"
VALIDATE_TE_PATH = "validate-trafficextension"
ISTIO_MODULES_PATH = "mount-istio-modules"
#: lists objects: (apiVersion, kind, namespace, label_selector=...) -> items (the operator's API reader)
Lister = Callable[..., list[dict[str, Any]]]


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
    istio_modules: bool = False


def _webhook_error(message: str) -> errors.MeshplugError:
    return errors.ConfigError(f"webhook config: {message}")


def _quantity(fields: Fields, key: str) -> str:
    """A Kubernetes quantity as the chart writes it (``50m``, ``64Mi``, a number); "" when unset."""
    value = fields.value(key, "")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise fields.fail(key, "a quantity")
    return str(value)


_AGENT_KEYS = (
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
    "requireSignatures",
)


def _agent(agent: Fields) -> injection.InjectionSettings:
    agent.only(*_AGENT_KEYS)
    image = agent.text("image")
    res = agent.sub("resources", "requests", "limits")
    req, lim = res.sub("requests", "cpu", "memory"), res.sub("limits", "cpu", "memory")
    d = injection.InjectionSettings(image=image)
    return injection.InjectionSettings(
        image=image,
        image_pull_policy=agent.text("imagePullPolicy", d.image_pull_policy),
        listen_port=agent.integer("listenPort", d.listen_port, lo=1, hi=65535),
        admin_port=agent.integer("adminPort", d.admin_port, lo=1, hi=65535),
        push_port=agent.integer("pushPort", d.push_port, lo=1, hi=65535),
        secret_name=agent.text("secretName", d.secret_name),
        module_server_url=agent.text("moduleServerUrl", d.module_server_url, empty=True),
        token_audience=agent.text("tokenAudience", d.token_audience),
        token_expiration_s=agent.integer("tokenExpirationSeconds", d.token_expiration_s, lo=600),
        allow_loopback=agent.flag("allowLoopback", d.allow_loopback),
        block_cidrs=agent.cidrs("blockCIDRs"),
        run_as_user=agent.integer("runAsUser", d.run_as_user, lo=0),
        log_level=agent.text("logLevel", d.log_level),
        require_signatures=agent.flag("requireSignatures", d.require_signatures),
        resources=injection.Resources(
            cpu_request=_quantity(req, "cpu"),
            memory_request=_quantity(req, "memory"),
            cpu_limit=_quantity(lim, "cpu"),
            memory_limit=_quantity(lim, "memory"),
        ),
    )


def _issued(tls: Fields) -> IssuedTls | None:
    if not tls.has("issue"):
        if tls.has("caBundle"):
            raise errors.ConfigError("webhook config: tls.caBundle goes with tls.issue (the operator's CA)")
        return None
    if tls.has("certFile") or tls.has("keyFile"):
        raise errors.ConfigError("webhook config: tls.issue or tls.certFile/keyFile, not both")
    issue = tls.sub("issue", "dnsNames", "ipAddresses")
    bundle = tls.sub("caBundle", "mutatingWebhookConfigurations", "validatingWebhookConfigurations")
    issued = IssuedTls(
        dns_names=issue.strings("dnsNames"),
        ip_addresses=issue.strings("ipAddresses"),
        ca_bundle={key.lower(): bundle.strings(key) for key in bundle.raw},
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
    top = Fields(raw, "", error=_webhook_error, optional=True).only(
        "listen", "tls", "injection", "validation", "istioModules"
    )
    listen = top.sub("listen", "address", "port")
    tls = top.sub("tls", "certFile", "keyFile", "issue", "caBundle")
    inj = top.sub("injection", "enabled", "agent")
    val = top.sub("validation", "enabled", "allowedUrlPrefixes")
    modules = top.sub("istioModules", "enabled")
    issued = _issued(tls)
    if issued is None and (not tls.has("certFile") or not tls.has("keyFile")):
        raise errors.ConfigError("webhook config: tls needs certFile and keyFile, or issue (HTTPS only)")
    return WebhookConfig(
        address=listen.text("address", "0.0.0.0"),  # noqa: S104 - the apiserver connects from outside
        port=listen.integer("port", 9443, lo=1, hi=65535),
        cert_file=None if issued else base / tls.text("certFile"),
        key_file=None if issued else base / tls.text("keyFile"),
        issued=issued,
        injection=_agent(inj.sub("agent")) if inj.flag("enabled", True) else None,
        validation=val.flag("enabled", True),
        allowed_url_prefixes=val.strings("allowedUrlPrefixes"),
        istio_modules=modules.flag("enabled", False),
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


def module_mounts(pod: Mapping[str, Any], config_maps: Sequence[Mapping[str, Any]]) -> list[injection.ModuleMount]:
    """The module ConfigMaps (of the pod's namespace) whose plugin selects the pod, as mounts."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    out = []
    for cm in sorted(config_maps, key=lambda c: c["metadata"]["name"]):
        notes = cm["metadata"].get("annotations") or {}
        try:
            selector = json.loads(notes.get(istio.SELECTOR_ANNOTATION, "{}"))
            mount = injection.ModuleMount(
                config_map=cm["metadata"]["name"],
                volume=notes[istio.VOLUME_ANNOTATION],
                mount_dir=notes[istio.MOUNT_PATH_ANNOTATION],
                label=notes[istio.POD_LABEL_ANNOTATION],
            )
        except (ValueError, KeyError):
            continue  # not one this operator version wrote
        if isinstance(selector, dict) and all(labels.get(k) == v for k, v in selector.items()):
            out.append(mount)
    return out


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
    lister: Lister | None = None,
) -> WebhookConfig | None:
    """Register the admission server and handlers on ``registry`` when a webhook config is given; ``identity``
    makes the agent Secret of a namespace before its first pod is admitted; ``lister`` reads the module ConfigMaps
    for ``/mount-istio-modules``."""
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
    if agent is not None and identity is not None:
        # the agents check signers against the operator's keys (their Secret's copy: the keys, or "none")
        agent = dataclasses.replace(agent, trusted_keys=True)
    if agent is not None:
        for path, namespace_opt_in in ((INJECT_PATH, False), (INJECT_NAMESPACE_PATH, True)):
            kopf.on.mutate("", "v1", "pods", id=path, registry=registry, operations=["CREATE"])(
                _injector(agent, identity, namespace_opt_in=namespace_opt_in)
            )

    if config.istio_modules and lister is not None:
        list_objects = lister

        @kopf.on.mutate("", "v1", "pods", id=ISTIO_MODULES_PATH, registry=registry, operations=["CREATE"])
        def mount_istio_modules(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
            namespace = str((body.get("metadata") or {}).get("namespace") or "")
            if not namespace or injection.is_istio_gateway(body):
                return
            try:
                found = list_objects("v1", "ConfigMap", namespace, label_selector=f"{istio.MOUNT_LABEL}=true")
                ops = injection.istio_module_patch(body, module_mounts(body, found))
            except errors.MeshplugError as exc:  # never keep a pod from being created
                log.warning("mounting istio modules into a pod of %s: %s", namespace, exc.message)
                return
            if ops:

                def apply_ops(doc: Any) -> None:
                    doc.update(injection.apply_patch(doc, ops))

                patch.fns.append(apply_ops)

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
