"""istiod for the Istio test bed (tests/testbed/istio.py): the pinned build, its process and its debug views.

- `istio_root()`: pilot-discovery and pilot-agent built by scripts/install-istio.sh into
  $MESHPLUG_CACHE/istio/<revision>/bin, Istio's CRDs (`crds()`, with the Gateway API's) and sidecar bootstrap
  template beside them.
- `start_istiod()`: istiod against a test-bed kube-apiserver, xDS and its CA on the bridge's host address, HTTP
  (``/ready``, ``/debug/...``) on 127.0.0.1, all on free ports (or the ports of an istiod it replaces); the mesh
  config comes from the `mesh_config()` ConfigMap in the root namespace.
- `Istiod`: the running process and its views (``/debug/syncz``, per-proxy ``config_dump``, the HTTP filters it
  gives a proxy); `http_filter_chains()` reads the same out of Envoy's own config_dump.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import kube as kube_mod
from tests.testbed import podns, procs

ISTIO_VERSION = os.environ.get("ISTIO_VERSION", "v0.0.0-20260827124520-eed52ebb66ad")
ROOT_NS = "istio-system"
ISTIOD_HOST = f"istiod.{ROOT_NS}.svc"  # pods resolve it to the bridge's host address (their /etc/hosts)
TRUST_DOMAIN = "cluster.local"
GATEWAY_API_CRDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")


def istio_root() -> Path:
    root = procs.cache_dir("istio", ISTIO_VERSION)
    for needed in ("bin/pilot-discovery", "bin/pilot-agent", "crd-all.gen.yaml", "envoy_bootstrap.json"):
        if not (root / needed).exists():
            raise RuntimeError(
                f"{root / needed} missing: run scripts/install-istio.sh (`make istio`; `make integration` does) "
                f"to build istiod and istio-agent {ISTIO_VERSION} from the Go module proxy"
            )
    return root


def _gateway_api_crds() -> list[dict[str, Any]]:
    """The Gateway API's standard CRDs, from the sigs.k8s.io/gateway-api module Istio was built with."""
    mods = procs.cache_dir("go", "mod", "sigs.k8s.io")
    found = sorted(mods.glob("gateway-api@v*/config/crd/standard"))
    if not found:
        raise RuntimeError(f"no sigs.k8s.io/gateway-api module under {mods}: run scripts/install-istio.sh")
    docs = []
    for plural in GATEWAY_API_CRDS:
        path = found[-1] / f"gateway.networking.k8s.io_{plural}.yaml"
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def crds(root: Path) -> list[dict[str, Any]]:
    """Every CRD the bed installs: Istio's (``crd-all.gen.yaml`` beside the binaries) and the Gateway API's."""
    istio = [d for d in yaml.safe_load_all((root / "crd-all.gen.yaml").read_text()) if d]
    return [*istio, *_gateway_api_crds()]


def mesh_config(extra: str = "") -> dict[str, Any]:
    """The ``istio`` ConfigMap in the root namespace (istiod's mesh config); ``extra``: more mesh config YAML."""
    mesh = f"rootNamespace: {ROOT_NS}\ntrustDomain: {TRUST_DOMAIN}\n{extra}"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": ROOT_NS},
        "data": {"mesh": mesh, "meshNetworks": "networks: {}"},
    }


@dataclass
class Istiod:
    proc: procs.Proc
    grpc: str  # istiod's Service name:port as pods reach it, plaintext xDS
    secure_grpc: str  # name:port, xDS over TLS and the CA (its certificate names the Service, not the address)
    http_port: int  # /ready and /debug on 127.0.0.1
    monitoring_port: int  # /metrics and /debug on 127.0.0.1 (what a cluster reaches as istiod:15014)

    @property
    def debug_url(self) -> str:
        return f"http://127.0.0.1:{self.monitoring_port}"

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            with exc:  # istiod's reason is the body
                raise ValueError(f"istiod {path}: HTTP {exc.code}: {exc.read(512).decode(errors='replace')}") from None
        return json.loads(raw) if raw else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            exc.close()
            return False
        except OSError:
            return False

    def syncz(self) -> list[dict[str, Any]]:
        return list(self.get("/debug/syncz") or [])

    def xds_state(self, proxy_id: str, type_url: str) -> dict[str, str]:
        """istiod's record of one xDS type of the proxy (its syncz): the nonce sent, the nonce ACKed, the last
        NACK's error."""
        entry = next((e for e in self.syncz() if e.get("proxy") == proxy_id), {})
        return dict((entry.get("resources") or {}).get(type_url) or {})

    def config_dump(self, proxy_id: str, types: str = "lds") -> dict[str, Any]:
        """What istiod sends the proxy ``<pod>.<namespace>``, its own view, of the xDS ``types`` (istiod's short
        names; the full dump fails for a proxy with a Wasm extension without pluginConfig: istiod cannot encode it)."""
        query = f"proxyID={urllib.parse.quote(proxy_id)}&types={urllib.parse.quote(types)}"
        return dict(self.get(f"/debug/config_dump?{query}"))

    def http_filters(self, proxy_id: str, port: int) -> list[list[str]]:
        """The HTTP filter names of each HCM on the proxy's listeners for ``port``, as istiod builds them."""
        return http_filter_chains(self.config_dump(proxy_id), port)

    def stop(self) -> None:
        self.proc.stop()


def http_filter_chains(dump: Mapping[str, Any], port: int) -> list[list[str]]:
    """HTTP filter names per HCM of the listeners on ``port`` in a config_dump (istiod's or Envoy's)."""
    out: list[list[str]] = []
    entries: list[Mapping[str, Any]] = []
    for config in dump.get("configs") or []:
        kind = str(config.get("@type", ""))
        if kind.endswith("ListenersConfigDump.DynamicListener"):  # Envoy's ?resource=dynamic_listeners
            entries.append(config)
        elif kind.endswith("listener.v3.Listener"):  # istiod's typed dump (types=lds): the listeners themselves
            entries.append({"activeState": {"listener": config}})
        elif kind.endswith("ListenersConfigDump"):  # istiod's dump (and Envoy's full one)
            entries += config.get("dynamicListeners") or config.get("dynamic_listeners") or []
    for entry in entries:
        state = entry.get("activeState") or entry.get("active_state") or {}
        listener = state.get("listener") or {}
        at = listener.get("address") or {}
        address = at.get("socketAddress") or at.get("socket_address")
        if not address or int(address.get("portValue") or address.get("port_value") or 0) != port:
            continue
        for chain in listener.get("filterChains") or listener.get("filter_chains") or []:
            for flt in chain.get("filters") or []:
                typed = flt.get("typedConfig") or flt.get("typed_config") or {}
                filters = typed.get("httpFilters") or typed.get("http_filters")
                if filters is not None:
                    out.append([f["name"] for f in filters])
    return out


def start_istiod(
    kube: kube_mod.Kube,
    bridge: podns.Bridge,
    workdir: Path,
    log_dir: Path,
    *,
    ports: Mapping[str, int] | None = None,
    production: bool = False,
) -> Istiod:
    """istiod on free ports (or ``ports``, those of an istiod it replaces). ``production``: metadata exchange and
    the ALPN filter on, as a real istio-proxy gets them (PyPI Envoy refuses those listeners and keeps its last good
    ones: read istiod's config_dump then, not Envoy's)."""
    root = istio_root()
    workdir.mkdir(parents=True, exist_ok=True)
    if ports is None:
        ports = {"grpc": bridge.free_port(), "secure": bridge.free_port()}
        ports |= {name: procs.free_port() for name in ("http", "https", "monitoring", "ctrlz")}
    grpc, secure = ports["grpc"], ports["secure"]
    http_port, https_port, monitoring, ctrlz = (ports[n] for n in ("http", "https", "monitoring", "ctrlz"))
    argv = [
        str(root / "bin" / "pilot-discovery"),
        "discovery",
        f"--kubeconfig={kube.kubeconfig}",
        f"--grpcAddr={bridge.host_ip}:{grpc}",
        f"--secureGRPCAddr={bridge.host_ip}:{secure}",
        f"--httpAddr=127.0.0.1:{http_port}",
        f"--httpsAddr=127.0.0.1:{https_port}",
        f"--monitoringAddr=127.0.0.1:{monitoring}",
        f"--ctrlz_port={ctrlz}",
        f"--meshConfig={workdir / 'no-such-file'}",  # the mesh config comes from the `istio` ConfigMap
        f"--networksConfig={workdir / 'no-such-file'}",
        "--log_output_level=default:info",
    ]
    env = {
        "POD_NAMESPACE": ROOT_NS,
        "POD_NAME": "istiod-testbed",
        "PILOT_ENABLE_METADATA_EXCHANGE": str(production).lower(),  # PyPI Envoy has no istio.metadata_exchange
        "PILOT_ENABLE_ALPN_FILTER": str(production).lower(),
        "PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER": "false",  # the test bed starts gateway pods itself
        "KUBECONFIG": str(kube.kubeconfig),
    }
    istiod = Istiod(
        proc=None,  # type: ignore[arg-type]
        grpc=f"{ISTIOD_HOST}:{grpc}",
        secure_grpc=f"{ISTIOD_HOST}:{secure}",
        http_port=http_port,
        monitoring_port=monitoring,
    )
    istiod.proc = procs.start(
        "istiod",
        ["nice", "-n", "5", *argv],
        log_dir=log_dir,
        ready=istiod.ready,
        timeout=120,
        env=env,
        cwd=workdir,
        ports=dict(ports),
    )
    return istiod
