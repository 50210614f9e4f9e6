"""`meshplug render FILE [--module PLUGIN.wasm]`: what the operator would create for WasmPlugin/TrafficExtension
manifests, offline, for GitOps review (nothing is sent anywhere).

For each manifest in FILE (YAML, several documents allowed; ``-`` reads stdin) the spec is parsed and the module
checked exactly as the operator does (`meshplug.spec`, `meshplug.validate`), then rendered by `meshplug.render`:

* ``dataPlane: istio``: on the native route (the operator's default wherever the cluster serves
  extensions.istio.io, i.e. Istio >= 1.12) Istio's own resource of the plugin's kind, its url the module
  server's; on the ConfigMap route (``istioDelivery: configmap``, or ``--istio-delivery configmap`` for manifests
  that set none) the EnvoyFilter and the ConfigMap carrying the module (or, for modules too large for a
  ConfigMap, the EnvoyFilter's remote code on the operator's module server); a plugin the route cannot carry
  (matchRules on the native route) is refused with the operator's reason;
* ``dataPlane: agent``: the push the plugin's selected agents would receive (this plugin's ExtensionConfig;
  the real push to a pod carries every plugin selecting it, in chain order).

The module's bytes come from ``--module`` (what `meshplug build` wrote), or from the manifest's ``file://`` url;
the operator fetches https/oci modules itself, which render does not. ``--module-host``/``--module-port`` name the
operator's module server as in `meshplug operator`; URLs are shown unsigned (the signing key is the operator's).
Exit 0, 1 when a module is rejected, 2 for a manifest the operator would refuse.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from meshplug import errors, protocol, spec, validate
from meshplug.render import agent as agent_render
from meshplug.render import istio, istio_native, model

HELP = "print what the operator would create for WasmPlugin manifests (EnvoyFilter, ConfigMap, agent push), offline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="WasmPlugin/TrafficExtension manifests (YAML; '-' for stdin)")
    parser.add_argument("--module", type=Path, help="the module's bytes (default: the manifest's file:// url)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace of manifests that name none")
    parser.add_argument(
        "--module-host", default="meshplug-modules.meshplug-system.svc.cluster.local", help="the module server"
    )
    parser.add_argument("--module-port", type=int, default=8080, help="the module server's Service port")
    parser.add_argument(
        "--istio-delivery",
        choices=[d.value for d in spec.IstioDelivery],
        default=spec.IstioDelivery.NATIVE.value,
        help="the istio plane's route for manifests that set no istioDelivery (default native: what the operator's "
        "--istio-delivery auto picks where the cluster serves extensions.istio.io)",
    )
    parser.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    parser.add_argument(
        "--elide-data", action="store_true", help="show a ConfigMap's module as '<N bytes, sha256 ...>' (for review)"
    )


def _documents(source: str) -> list[dict[str, Any]]:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {source}: {exc.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{source}: not YAML: {str(exc).splitlines()[0]}") from None
    kinds = (spec.KIND, spec.KIND_TRAFFIC_EXTENSION)
    found = [d for d in docs if isinstance(d, dict) and d.get("kind") in kinds]
    if not found:
        raise errors.ConfigError(f"{source}: no {' or '.join(kinds)} manifest")
    return found


def _module(plugin: spec.PluginSpec, given: Path | None) -> model.Module:
    if plugin.lua is not None:
        return model.Module.of(plugin.lua.encode())  # not used: Lua travels in the filter itself
    path = given
    if path is None and plugin.url.startswith("file://"):
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(plugin.url).path))
    if path is None:
        raise errors.ConfigError(
            f"{plugin.namespace}/{plugin.name}: render works offline: pass --module PLUGIN.wasm for {plugin.url}"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read module {path}: {exc.strerror}") from None
    module = model.Module.of(data)
    if plugin.sha256 is not None and plugin.sha256 != module.sha256:
        raise errors.FetchError(
            f"{path}: sha256 is {module.sha256}, the manifest expects {plugin.sha256}", reason="checksum_mismatched"
        )
    kind = validate.FilterKind.NETWORK if plugin.type is spec.PluginType.NETWORK else validate.FilterKind.HTTP
    validate.validate(data, kind=kind)
    return module


def render_one(
    body: dict[str, Any],
    module_path: Path | None,
    server: model.ModuleServer,
    route: spec.IstioDelivery = spec.IstioDelivery.NATIVE,
) -> list[dict[str, Any]]:
    """What the operator makes of one manifest; ``route``: the istio plane's when the manifest names none."""
    plugin = spec.parse(body)
    module = _module(plugin, module_path)
    if plugin.data_plane is spec.DataPlane.AGENT:
        resource = agent_render.extension_config(plugin, module, server)
        push = protocol.Push(agent_render.version_of((resource,)), "render", (resource,))
        return [{"kind": "AgentPush", "plugin": f"{plugin.namespace}/{plugin.name}", "push": push.to_json()}]
    if (plugin.istio_delivery or route) is spec.IstioDelivery.NATIVE:
        kind = istio_native.kinds_for(plugin.kind)[0]  # its own kind: what a cluster serving both gets
        why = istio_native.unsupported(plugin, kind)
        if why:
            raise errors.SpecError(f"{plugin.namespace}/{plugin.name}: NotCarriedByIstio: {why}")
        return [istio_native.render(plugin, module, server, kind)]
    objects = istio.render(plugin, module, server)
    return [dict(o) for o in (objects.config_map, objects.envoy_filter) if o is not None]


def run(args: argparse.Namespace) -> int:
    server = model.ModuleServer(host=args.module_host, port=args.module_port)
    rendered: list[dict[str, Any]] = []
    for body in _documents(args.file):
        meta = dict(body.get("metadata") or {})
        meta.setdefault("namespace", args.namespace)
        meta.setdefault("generation", 1)
        try:
            rendered += render_one(
                {**body, "metadata": meta}, args.module, server, spec.IstioDelivery(args.istio_delivery)
            )
        except errors.ValidationError as exc:
            print(
                f"meshplug render: {meta.get('name')}: module rejected: {'; '.join(exc.reasons) or exc}",
                file=sys.stderr,
            )
            return exc.exit_code
    if args.elide_data:
        for obj in rendered:
            data = obj.get("binaryData") or {}
            for key, value in data.items():
                raw = base64.b64decode(value)
                data[key] = f"<{len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}>"
    if args.output == "json":
        print(json.dumps(rendered, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump_all(rendered, sort_keys=False).rstrip())
    return 0
