"""An Istio-sidecar-shaped Envoy bootstrap, and Istio's EnvoyFilter patching applied to it, for fast render tests.

Not evidence of Istio's behaviour: that is tests/integration/test_istio_*.py on the real istiod, istio-agent and
Envoy (tests/testbed/istio.py). This imitation only gets rendered filters in front of `envoy --mode validate`.

Used by tests/integration/test_render_envoy_validate.py: the operator renders EnvoyFilters and ConfigMaps;
this module does what istiod and the kubelet would do with them (insert the patch values into the matching
listeners' filter chains; mount the ConfigMap's files where the pod-template annotations say), so that
`envoy --mode validate` checks the exact filter the sidecar would receive, with the real module bytes.

Only the patch forms meshplug renders are implemented (HTTP_FILTER / NETWORK_FILTER with INSERT_FIRST or
INSERT_BEFORE, matched by context, listener port, filter and subFilter name); anything else fails loudly.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed import envoy

HCM_NAME = "envoy.filters.network.http_connection_manager"
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
ROUTER_NAME = "envoy.filters.http.router"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"


@dataclass(frozen=True)
class SidecarListener:
    name: str
    context: str  # SIDECAR_INBOUND | SIDECAR_OUTBOUND | GATEWAY
    port: int
    kind: str  # http | tcp


# what a sidecar has: inbound HTTP and TCP, outbound HTTP on two ports
LISTENERS = (
    SidecarListener("inbound_http_9080", "SIDECAR_INBOUND", 9080, "http"),
    SidecarListener("inbound_tcp_9090", "SIDECAR_INBOUND", 9090, "tcp"),
    SidecarListener("outbound_http_80", "SIDECAR_OUTBOUND", 80, "http"),
    SidecarListener("outbound_http_8080", "SIDECAR_OUTBOUND", 8080, "http"),
)


def _http_filters() -> list[dict[str, Any]]:
    """Istio's HTTP chain for a proxy with policies and telemetry on (the order istiod builds, see
    tests/integration/test_istio_placement.py), with stand-ins (same names) for Istio-only extensions."""
    return [
        {"name": "istio.metadata_exchange", "typed_config": {"@type": CORS}},
        {"name": "istio_authn", "typed_config": {"@type": CORS}},
        {"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC}},
        {"name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": CORS}},
        {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
        {"name": "istio.stats", "typed_config": {"@type": CORS}},
        {"name": ROUTER_NAME, "typed_config": {"@type": envoy.ROUTER}},
    ]


def bootstrap(extra_clusters: list[str]) -> dict[str, Any]:
    listeners: list[dict[str, Any]] = []
    for lst in LISTENERS:
        if lst.kind == "http":
            listener = envoy.http_listener(lst.name, lst.port, cluster="upstream", http_filters=[])
            hcm = listener["filter_chains"][0]["filters"][0]
            hcm["name"] = HCM_NAME
            hcm["typed_config"]["http_filters"] = _http_filters()
        else:
            listener = envoy.tcp_listener(lst.name, lst.port, cluster="upstream")
            listener["filter_chains"][0]["filters"][0]["name"] = TCP_PROXY_NAME
        listener["metadata"] = {"filter_metadata": {"test": {"context": lst.context}}}
        listeners.append(listener)
    clusters = [envoy.static_cluster(name, 1) for name in ["upstream", *extra_clusters]]
    return envoy.bootstrap(listeners=listeners, clusters=clusters, admin_port=0)


def _listener_info(listener: Mapping[str, Any]) -> SidecarListener:
    return next(lst for lst in LISTENERS if lst.name == listener["name"])


def _matches(lst: SidecarListener, match: Mapping[str, Any]) -> bool:
    context = match.get("context", "ANY")
    if context not in ("ANY", lst.context):
        return False
    port = match.get("listener", {}).get("portNumber")
    return port is None or port == lst.port


def apply_envoy_filter(config: dict[str, Any], envoy_filter: Mapping[str, Any]) -> int:
    """Apply the EnvoyFilter's patches to `config` in place, as istiod would; returns patches applied."""
    applied = 0
    for patch in envoy_filter["spec"]["configPatches"]:
        op = patch["patch"]["operation"]
        value = copy.deepcopy(patch["patch"]["value"])
        listener_match = patch["match"].get("listener", {})
        chain_filter = listener_match.get("filterChain", {}).get("filter", {})
        if op not in ("INSERT_FIRST", "INSERT_BEFORE") or patch["applyTo"] not in ("HTTP_FILTER", "NETWORK_FILTER"):
            raise NotImplementedError(f"patch form not simulated: {patch['applyTo']} {op}")
        for listener in config["static_resources"]["listeners"]:
            if not _matches(_listener_info(listener), patch["match"]):
                continue
            filters: list[dict[str, Any]] = listener["filter_chains"][0]["filters"]
            if patch["applyTo"] == "NETWORK_FILTER":
                target = filters
                anchor = chain_filter.get("name")
            else:
                hcm = next((f for f in filters if f["name"] == HCM_NAME), None)
                if hcm is None or chain_filter.get("name", HCM_NAME) != HCM_NAME:
                    continue
                target = hcm["typed_config"]["http_filters"]
                anchor = chain_filter.get("subFilter", {}).get("name")
            if op == "INSERT_FIRST":
                if anchor is not None and not any(f["name"] == anchor for f in target):
                    continue
                target.insert(0, copy.deepcopy(value))
                applied += 1
                continue
            index = next((i for i, f in enumerate(target) if f["name"] == anchor), None)
            if index is None:  # Istio: the anchor is not in this chain, the patch does not apply
                continue
            target.insert(index, copy.deepcopy(value))
            applied += 1
    return applied


def mount_config_map(config_map: Mapping[str, Any], directory: Path) -> Path:
    """Write the ConfigMap's files into `directory` as the kubelet's volume would; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in config_map.get("binaryData", {}).items():
        (directory / key).write_bytes(base64.b64decode(value))
    for key, value in config_map.get("data", {}).items():
        (directory / key).write_text(value)
    return directory


def chain_names(config: Mapping[str, Any], listener_name: str, *, network: bool = False) -> list[str]:
    """Filter names of a listener's chain: its HTTP filters (HCM listeners, unless `network`) or network filters."""
    listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == listener_name)
    filters = listener["filter_chains"][0]["filters"]
    hcm = next((f for f in filters if f["name"] == HCM_NAME), None)
    if hcm is not None and not network:
        return [f["name"] for f in hcm["typed_config"]["http_filters"]]
    return [f["name"] for f in filters]
