"""Agent injection, pure: a Pod (as the API server hands it to a mutating webhook) -> a JSON patch (RFC 6902).

Called by `meshplug.controller.webhooks` (the mutating admission webhook on Pod CREATE) and by the tests.
No I/O, no Kubernetes client: the same pod and settings always give the same patch.

Opt-in: label or annotation ``meshplug.io/inject: enabled`` (``true`` too) on the pod, or the same label on its
namespace (the webhook's second entry selects those namespaces and calls with ``namespace_opt_in``); the pod's
annotation or label ``disabled`` (``false``) wins over both. A pod that already has the ``meshplug-agent``
container is left alone (reinvocation-safe).

Traffic, without NET_ADMIN or iptables (port takeover): the agent listens on ``listen_port`` in the pod's
network namespace and forwards to the application on ``127.0.0.1:<app port>``. Services reach the agent by
targeting the app port's *name*: the patch moves that name from the application's port to the agent's port
(the application's port keeps its number, loses its name; its probes that used the name get the number, so
the kubelet still probes the application directly). A Service whose ``targetPort`` is a number keeps reaching
the application directly; point it at the agent's port name (``meshplug-http`` when the app port has no
name) to route through the agent. The app port is the annotation ``meshplug.io/app-port`` (number or name),
else the first TCP port of the first container that declares one.

The agent's config file is the pod annotation ``meshplug.io/agent-config`` (JSON, written by this patch),
projected into the agent's config volume by the downward API together with
- the agent Secret ``secret_name`` of the pod's namespace, which the operator creates and rotates
  (`meshplug.controller.identity`): ``ca.crt``, ``tls.crt``/``tls.key`` (the push port's mutual TLS),
  ``token`` (the pushes' bearer tokens) and ``trusted-keys.pem`` (the operator's trusted signing keys, or "none":
  the agent runs with ``--trusted-keys`` on it; modules signed under other keys are refused; with the chart's
  ``agent.requireSignatures`` also ``--require-signatures``: unsigned modules are refused too);
- the pod's ServiceAccount token for the audience ``token_audience`` (``sa-token``, refreshed by the kubelet),
  which the agent presents to the operator's module server.
The operator pushes plugins to ``<pod IP>:<push port>`` (annotation ``meshplug.io/agent-push-port``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import errors

INJECT_KEY = "meshplug.io/inject"
APP_PORT_ANNOTATION = "meshplug.io/app-port"
CONFIG_ANNOTATION = "meshplug.io/agent-config"
PUSH_PORT_ANNOTATION = "meshplug.io/agent-push-port"
STATUS_ANNOTATION = "meshplug.io/injected"
CONTAINER_NAME = "meshplug-agent"
CONFIG_VOLUME = "meshplug-agent-config"
STATE_VOLUME = "meshplug-agent-state"
CONFIG_DIR = "/etc/meshplug/agent"
STATE_DIR = "/var/lib/meshplug"
CONFIG_FILE = "config.json"
PUSH_TOKEN_KEY = "token"  # noqa: S105 - a Secret key's name, not a secret
CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"
SA_TOKEN_PATH = "sa-token"  # noqa: S105 - a file name, not a secret
#: the agent Secret's trusted signing keys (the operator's --trusted-key files): `meshplug agent --trusted-keys`
TRUSTED_KEYS_KEY = "trusted-keys.pem"
#: the agent's proxy and push listeners accept connections from other pods (the Service, the operator)
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
#: the agent port's name when the application's port has none
DEFAULT_PORT_NAME = "meshplug-http"
_ENABLED = ("enabled", "true")
_DISABLED = ("disabled", "false")

JsonPatch = tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Resources:
    """Container resources as Kubernetes quantities ("" = not set)."""

    cpu_request: str = "50m"
    memory_request: str = "64Mi"
    cpu_limit: str = ""
    memory_limit: str = "256Mi"

    def as_k8s(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for section, cpu, memory in (
            ("requests", self.cpu_request, self.memory_request),
            ("limits", self.cpu_limit, self.memory_limit),
        ):
            values = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
            if values:
                out[section] = values
        return out


@dataclass(frozen=True)
class InjectionSettings:
    """What the webhook injects; the chart's ``agent`` values, passed through the webhook config file."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    listen_port: int = 15006
    admin_port: int = 15000
    push_port: int = 15010
    secret_name: str = "meshplug-agent"  # noqa: S105 - the Secret's name (the operator's --agent-secret)
    module_server_url: str = ""  # the operator's module server (HTTPS) as pods reach it; "" = none
    token_audience: str = "meshplug"  # noqa: S105 - the audience of the pod's ServiceAccount token
    token_expiration_s: int = 3600
    #: the agent's SSRF guard for module fetches (loopback refused unless allowed; these networks too)
    allow_loopback: bool = False
    block_cidrs: tuple[str, ...] = ()
    run_as_user: int = 65532
    log_level: str = "info"
    resources: Resources = Resources()
    #: the agent reads the operator's trusted signing keys (chart signatures.trustedKeys) from its Secret
    #: (`TRUSTED_KEYS_KEY`: the keys, or `protocol.TRUSTED_KEYS_NONE`) and refuses modules signed under any other
    #: key; set by the webhook whenever the operator keeps the agent Secrets
    trusted_keys: bool = False
    #: the agent refuses every pushed module not signed under one of those keys (chart agent.requireSignatures:
    #: `meshplug agent --require-signatures`), whatever the operator pushes
    require_signatures: bool = False


def wants_injection(pod: Mapping[str, Any], *, namespace_opt_in: bool = False) -> bool:
    """True when the pod opted in (or its namespace did and the pod did not opt out) and has no agent yet."""
    meta = pod.get("metadata") or {}
    annotation = str((meta.get("annotations") or {}).get(INJECT_KEY, "")).lower()
    label = str((meta.get("labels") or {}).get(INJECT_KEY, "")).lower()
    if annotation in _DISABLED or (label in _DISABLED and annotation not in _ENABLED):
        return False
    if annotation not in _ENABLED and label not in _ENABLED and not namespace_opt_in:
        return False
    containers = (pod.get("spec") or {}).get("containers") or []
    return not any(c.get("name") == CONTAINER_NAME for c in containers)


@dataclass(frozen=True)
class AppPort:
    container: int  # index in spec.containers
    port: int  # index in that container's ports, -1 when the annotation names a port not declared
    number: int
    name: str  # "" when unnamed


def find_app_port(pod: Mapping[str, Any]) -> AppPort:
    """The application port the agent fronts (see the module docstring); ConfigError when there is none."""
    meta = pod.get("metadata") or {}
    containers = (pod.get("spec") or {}).get("containers") or []
    wanted = str((meta.get("annotations") or {}).get(APP_PORT_ANNOTATION, "")).strip()
    declared = [
        (ci, pi, p)
        for ci, c in enumerate(containers)
        for pi, p in enumerate(c.get("ports") or [])
        if str(p.get("protocol", "TCP")).upper() == "TCP"
    ]
    if wanted:
        for ci, pi, p in declared:
            if wanted in (str(p.get("containerPort")), str(p.get("name", ""))):
                return AppPort(ci, pi, int(p["containerPort"]), str(p.get("name", "")))
        if wanted.isdigit() and 0 < int(wanted) < 65536:
            return AppPort(0, -1, int(wanted), "")
        raise errors.ConfigError(
            f"annotation {APP_PORT_ANNOTATION}={wanted!r} names no TCP containerPort of the pod",
            reason="NoAppPort",
        )
    if not declared:
        raise errors.ConfigError(
            f"the pod declares no TCP containerPort; set annotation {APP_PORT_ANNOTATION}", reason="NoAppPort"
        )
    ci, pi, p = declared[0]
    return AppPort(ci, pi, int(p["containerPort"]), str(p.get("name", "")))


def agent_config(app: AppPort, settings: InjectionSettings) -> dict[str, Any]:
    """The agent's config file (meshplug.agent.config format) for one pod."""
    config: dict[str, Any] = {
        "listeners": [{"name": "inbound", "address": ALL_INTERFACES, "port": settings.listen_port, "cluster": "app"}],
        "clusters": [{"name": "app", "address": "127.0.0.1", "port": app.number}],
        "admin": {"address": "127.0.0.1", "port": settings.admin_port},
        "push": {
            "address": ALL_INTERFACES,
            "port": settings.push_port,
            "token_file": f"{CONFIG_DIR}/{PUSH_TOKEN_KEY}",
            "tls": {
                "cert_file": f"{CONFIG_DIR}/{CERT_KEY}",
                "key_file": f"{CONFIG_DIR}/{KEY_KEY}",
                "client_ca_file": f"{CONFIG_DIR}/{CA_KEY}",
            },
        },
        "state_dir": STATE_DIR,
    }
    modules: dict[str, Any] = {"allow_loopback": settings.allow_loopback, "block_cidrs": list(settings.block_cidrs)}
    if settings.module_server_url:
        modules["server"] = {
            "url": settings.module_server_url,
            "token_file": f"{CONFIG_DIR}/{SA_TOKEN_PATH}",
            "ca_file": f"{CONFIG_DIR}/{CA_KEY}",
        }
    config["modules"] = modules
    return config


def _pointer(*parts: str | int) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _security_context(settings: InjectionSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container(app: AppPort, settings: InjectionSettings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "agent",
            "--config",
            f"{CONFIG_DIR}/{CONFIG_FILE}",
            "--log-level",
            settings.log_level,
            *(["--trusted-keys", f"{CONFIG_DIR}/{TRUSTED_KEYS_KEY}"] if settings.trusted_keys else []),
            *(["--require-signatures"] if settings.require_signatures else []),
        ],
        "ports": [
            {"name": app.name or DEFAULT_PORT_NAME, "containerPort": settings.listen_port, "protocol": "TCP"},
            {"name": "meshplug-push", "containerPort": settings.push_port, "protocol": "TCP"},
        ],
        # the admin endpoint stays on 127.0.0.1; the kubelet checks that the proxy listener accepts connections
        "readinessProbe": {"tcpSocket": {"port": settings.listen_port}, "periodSeconds": 5},
        "securityContext": _security_context(settings),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": STATE_VOLUME, "mountPath": STATE_DIR},
        ],
    }
    resources = settings.resources.as_k8s()
    if resources:
        container["resources"] = resources
    return container


def _volumes(settings: InjectionSettings) -> list[dict[str, Any]]:
    return [
        {
            "name": CONFIG_VOLUME,
            "projected": {
                "sources": [
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": CONFIG_FILE,
                                    "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"},
                                }
                            ]
                        }
                    },
                    {"secret": {"name": settings.secret_name}},
                    {
                        "serviceAccountToken": {
                            "path": SA_TOKEN_PATH,
                            "audience": settings.token_audience,
                            "expirationSeconds": settings.token_expiration_s,
                        }
                    },
                ]
            },
        },
        {"name": STATE_VOLUME, "emptyDir": {}},
    ]


def _probe_ops(container: Mapping[str, Any], ci: int, name: str, number: int) -> list[dict[str, Any]]:
    """Probes and lifecycle hooks of the app container that name the moved port get its number."""
    ops: list[dict[str, Any]] = []
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        for action in ("httpGet", "tcpSocket"):
            if ((container.get(probe) or {}).get(action) or {}).get("port") == name:
                path = _pointer("spec", "containers", ci, probe, action, "port")
                ops.append({"op": "replace", "path": path, "value": number})
    for hook in ("postStart", "preStop"):
        for action in ("httpGet", "tcpSocket"):
            if (((container.get("lifecycle") or {}).get(hook) or {}).get(action) or {}).get("port") == name:
                path = _pointer("spec", "containers", ci, "lifecycle", hook, action, "port")
                ops.append({"op": "replace", "path": path, "value": number})
    return ops


def patch(pod: Mapping[str, Any], settings: InjectionSettings, *, namespace_opt_in: bool = False) -> JsonPatch:
    """The JSON patch that injects the agent; empty when the pod did not opt in (or has an agent already)."""
    if not wants_injection(pod, namespace_opt_in=namespace_opt_in):
        return ()
    app = find_app_port(pod)
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    if not meta.get("annotations"):
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
    for key, value in (
        (CONFIG_ANNOTATION, json.dumps(agent_config(app, settings), sort_keys=True, separators=(",", ":"))),
        (PUSH_PORT_ANNOTATION, str(settings.push_port)),
        (STATUS_ANNOTATION, settings.image),
    ):
        ops.append({"op": "add", "path": _pointer("metadata", "annotations", key), "value": value})
    if app.name and app.port >= 0:
        # port takeover: the name (what Services target) moves to the agent's port
        ops.append({"op": "remove", "path": _pointer("spec", "containers", app.container, "ports", app.port, "name")})
        ops += _probe_ops(spec["containers"][app.container], app.container, app.name, app.number)
    ops.append({"op": "add", "path": "/spec/containers/-", "value": _container(app, settings)})
    if not spec.get("volumes"):
        ops.append({"op": "add", "path": "/spec/volumes", "value": []})
    ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in _volumes(settings)]
    return tuple(ops)


def _walk(doc: Any, parts: Sequence[str]) -> Any:
    for part in parts:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def apply_patch(document: Mapping[str, Any], ops: JsonPatch) -> dict[str, Any]:
    """Apply add/replace/remove ops (what `patch` emits) to a copy of ``document``; ConfigError on a bad path."""
    doc: dict[str, Any] = copy.deepcopy(dict(document))
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        try:
            parent = _walk(doc, parts[:-1])
            last = parts[-1]
            if op["op"] == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op["op"] == "add":
                    parent.insert(index, copy.deepcopy(op["value"]))
                else:
                    parent[index] = copy.deepcopy(op["value"])
            else:
                if op["op"] == "replace" and last not in parent:
                    raise KeyError(last)
                parent[last] = copy.deepcopy(op["value"])
        except (KeyError, IndexError, ValueError, TypeError):
            raise errors.ConfigError(f"JSON patch op {op['op']} {op['path']}: no such location") from None
    return doc


# --- the istio data plane's ConfigMap route: module volumes at pod admission -------------------------------------
#
# Called by `meshplug.controller.webhooks` (mutating webhook on Pod CREATE) with the module mounts whose ConfigMap
# (in the pod's namespace) selects the pod. The pod gets, per module, the label ``mount.label: mounted`` (the
# EnvoyFilter selects only pods with it) and the volume: added to the ``istio-proxy`` container when Istio's
# injection ran already (a webhook named after istio-sidecar-injector runs after it), else as Istio's
# ``sidecar.istio.io/userVolume(Mount)`` annotations for its injector to add. Gateways are left alone: Istio's
# gateway injection template ignores userVolume (the plugin's status reports them). The volume is ``optional`` so
# a ConfigMap removed meanwhile never keeps a pod from starting. Deployments and other workloads are never
# touched: only the pod being admitted.

ISTIO_PROXY = "istio-proxy"
USER_VOLUME = "sidecar.istio.io/userVolume"
USER_VOLUME_MOUNT = "sidecar.istio.io/userVolumeMount"
ISTIO_STATUS_ANNOTATION = "sidecar.istio.io/status"
ISTIO_TEMPLATES_ANNOTATION = "inject.istio.io/templates"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


@dataclass(frozen=True)
class ModuleMount:
    """One ConfigMap-delivered module a pod mounts into its Istio proxy."""

    config_map: str
    volume: str
    mount_dir: str
    label: str  # the pod label that tells the plugin's EnvoyFilter the file is there
    label_value: str = "mounted"


def is_istio_gateway(pod: Mapping[str, Any]) -> bool:
    """Istio's gateway injection (template ``gateway``, a Gateway API gateway, or a proxy run as ``router``)."""
    meta = pod.get("metadata") or {}
    templates = str((meta.get("annotations") or {}).get(ISTIO_TEMPLATES_ANNOTATION, ""))
    if "gateway" in [t.strip() for t in templates.split(",")] or GATEWAY_NAME_LABEL in (meta.get("labels") or {}):
        return True
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == ISTIO_PROXY and "router" in (container.get("args") or [])[:2]:
            return True
    return False


def _user_volumes(annotations: Mapping[str, str], key: str) -> list[dict[str, Any]]:
    raw = annotations.get(key)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        raise errors.ConfigError(f"annotation {key} is not JSON: {raw[:80]!r}", reason="InvalidAnnotation") from None
    if isinstance(value, dict):  # Istio's older form: {"<name>": {<volume without name>}}
        value = [{"name": name, **item} for name, item in value.items() if isinstance(item, dict)]
    if not isinstance(value, list) or not all(isinstance(v, dict) and "name" in v for v in value):
        raise errors.ConfigError(f"annotation {key} is not a JSON array of named entries", reason="InvalidAnnotation")
    return value


def istio_module_patch(pod: Mapping[str, Any], mounts: Sequence[ModuleMount]) -> JsonPatch:
    """The JSON patch that mounts ``mounts`` into the pod's Istio proxy; empty for gateways or nothing to mount."""
    if not mounts or is_istio_gateway(pod):
        return ()
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ops: list[dict[str, Any]] = []
    labels = meta.get("labels") or {}
    if not meta.get("labels"):
        ops.append({"op": "add", "path": "/metadata/labels", "value": {}})
    containers = spec.get("containers") or []
    proxy = next((i for i, c in enumerate(containers) if c.get("name") == ISTIO_PROXY), None)
    volumes = [{"name": m.volume, "configMap": {"name": m.config_map, "optional": True}} for m in mounts]
    volume_mounts = [{"name": m.volume, "mountPath": m.mount_dir, "readOnly": True} for m in mounts]
    if proxy is not None:
        present = {v.get("name") for v in spec.get("volumes") or []}
        mounted = {v.get("name") for v in containers[proxy].get("volumeMounts") or []}
        if not spec.get("volumes"):
            ops.append({"op": "add", "path": "/spec/volumes", "value": []})
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes if v["name"] not in present]
        if not containers[proxy].get("volumeMounts"):
            ops.append({"op": "add", "path": _pointer("spec", "containers", proxy, "volumeMounts"), "value": []})
        ops += [
            {"op": "add", "path": _pointer("spec", "containers", proxy, "volumeMounts", "-"), "value": m}
            for m in volume_mounts
            if m["name"] not in mounted
        ]
    else:  # Istio's injector runs later: it turns these annotations into the volume and the mount
        annotations = meta.get("annotations") or {}
        if not annotations:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": {}})
        for key, entries in ((USER_VOLUME, volumes), (USER_VOLUME_MOUNT, volume_mounts)):
            current = _user_volumes(annotations, key)
            names = {e.get("name") for e in current}
            merged = current + [e for e in entries if e["name"] not in names]
            value = json.dumps(merged, separators=(",", ":"), sort_keys=True)
            ops.append({"op": "add", "path": _pointer("metadata", "annotations", key), "value": value})
    for m in mounts:
        if labels.get(m.label) != m.label_value:
            ops.append({"op": "add", "path": _pointer("metadata", "labels", m.label), "value": m.label_value})
    return tuple(ops)
