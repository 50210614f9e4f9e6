"""PluginSpecs + Modules -> the agent data plane's desired set: `protocol.ExtensionConfig`s in chain order.

Called by the controller when it builds the full push for one pod's agent (every agent-plane plugin that
selects the pod). Pure: no I/O. The agent fetches each module from the operator's module server by sha256.
A module the plugin demands be signed carries the verified signature and what binds it to the module
(`protocol.ModuleSignature`, built from `fetch.Evidence`) and no precompiled artifact: the agent verifies the
signature again and compiles the verified bytes itself. Chain order is Istio's: phase (AUTHN, AUTHZ, STATS,
UNSPECIFIED), then priority (higher first, unset last), then the caller's tie-break key (creation time, then
namespace/name). ``matchRules`` become the resource's ``match`` (the agent skips the plugin for requests no rule
matches); per-rule pluginConfig is istio-only (`meshplug.spec` refuses it for the agent plane). ``type`` (HTTP
or NETWORK chain), ``match`` (mode and ports: the resource's ``traffic``) and ``vmConfig.env`` valueFrom HOST
(``host_env_keys``, read from the agent's environment) travel too; the agent honours each
(meshplug.agent.filters.applies / vm_env).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from meshplug import protocol, spec
from meshplug.render import model

_PHASE_ORDER = (spec.Phase.AUTHN, spec.Phase.AUTHZ, spec.Phase.STATS, spec.Phase.UNSPECIFIED)


def extension_config(
    plugin: spec.PluginSpec, module: model.Module, server: model.ModuleServer
) -> protocol.ExtensionConfig:
    if plugin.lua is not None:  # a TrafficExtension's Lua: the script travels in the push
        return protocol.ExtensionConfig(
            name=plugin.envoy_name,
            root_id="",
            url="",
            sha256=protocol.lua_sha256(plugin.lua),
            match=match_of(plugin),
            lua=plugin.lua,
        )
    # HOST variables are read from the agent's own environment when it loads the plugin (host_env_keys)
    return protocol.ExtensionConfig(
        name=plugin.envoy_name,
        root_id=plugin.root_id,
        url=server.agent_url(module.sha256),
        sha256=module.sha256,
        configuration=plugin.plugin_config,
        vm_env=tuple((e.name, e.value) for e in plugin.env if e.source is spec.EnvSource.INLINE),
        host_env_keys=tuple(e.name for e in plugin.env if e.source is spec.EnvSource.HOST),
        type=protocol.PluginType(plugin.type.value),
        traffic=traffic_of(plugin),
        fail_strategy=protocol.FailStrategy(plugin.fail_strategy.value),
        match=match_of(plugin),
        compiled=None
        if module.compiled is None or module.signature is not None  # the signature does not cover machine code
        else protocol.CompiledArtifact(
            key=module.compiled.key, url=server.compiled_url(module.compiled.key), sha256=module.compiled.sha256
        ),
        signature=None if module.signature is None else signature_of(module, server),
    )


def signature_of(module: model.Module, server: model.ModuleServer) -> protocol.ModuleSignature:
    """What the operator verified, for the agent to verify again; a layer that wraps the module (a tar.gz) is
    served beside it, by its own digest."""
    evidence = module.signature
    assert evidence is not None
    layer = evidence.layer.removeprefix("sha256:")
    return protocol.ModuleSignature(
        key=evidence.key_pem,
        layout=evidence.layout,
        payload=evidence.payload,
        signature=evidence.signature,
        manifests=evidence.manifests,
        layer_url="" if layer == module.sha256 else server.agent_url(layer),
    )


def traffic_of(plugin: spec.PluginSpec) -> tuple[protocol.TrafficSelector, ...]:
    """Istio's `match` (mode, ports) as the listeners the agent runs the plugin on; () for every listener."""
    every = all(m.mode is spec.MatchMode.CLIENT_AND_SERVER and not m.ports for m in plugin.match)
    if every:
        return ()
    return tuple(protocol.TrafficSelector(mode=protocol.TrafficMode(m.mode.value), ports=m.ports) for m in plugin.match)


def match_of(plugin: spec.PluginSpec) -> tuple[protocol.MatchRule, ...]:
    return tuple(
        protocol.MatchRule(hosts=r.hosts, path_prefixes=r.path_prefixes, exact_paths=r.exact_paths)
        for r in plugin.match_rules
    )


def chain_key(plugin: spec.PluginSpec, tie_break: str) -> tuple[int, int, int, str]:
    """Sort key: phase, explicit priority before unset, higher priority first, then ``tie_break``."""
    unset = 1 if plugin.priority is None else 0
    return (_PHASE_ORDER.index(plugin.phase), unset, -(plugin.priority or 0), tie_break)


def desired_set(
    entries: Sequence[tuple[spec.PluginSpec, model.Module, str]], server: model.ModuleServer
) -> tuple[protocol.ExtensionConfig, ...]:
    """(plugin, module, tie_break) for every agent-plane plugin selecting a pod -> resources in chain order."""
    ordered = sorted(entries, key=lambda e: chain_key(e[0], e[2]))
    return tuple(extension_config(p, m, server) for p, m, _ in ordered)


def version_of(resources: Sequence[protocol.ExtensionConfig]) -> str:
    """A version_info that changes exactly when the desired set changes."""
    h = hashlib.sha256()
    for r in resources:
        h.update(repr(r).encode())
    return h.hexdigest()[:16]
