"""A pod of the Istio test bed (tests/testbed/istio.py) as Istio's injection would have made it.

The ``istio-proxy`` container's pilot-agent + Envoy (``proxy sidecar`` or ``proxy router``) run in the pod's own
network + mount namespace (`tests.testbed.podns.PodNetns`), and for sidecars the app (the test bed's echo service
on 127.0.0.1:`APP_PORT`) behind a `Sidecar` resource whose ingress listener binds the pod IP on `INBOUND_PORT`
(interception mode NONE instead of iptables). The pod's secrets are what the kubelet would mount: a bound
ServiceAccount token for audience ``istio-ca``, istiod's root certificate from the ``istio-ca-root-cert``
ConfigMap, the pod's labels and annotations. ConfigMap volumes that the admitted pod spec mounts into
``istio-proxy`` below /var/local are kept in sync from the API by a thread of the pod (the kubelet's job);
nothing else of the pod spec is interpreted.
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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed import envoy as envoy_mod
from tests.testbed import istiod as istiod_mod
from tests.testbed import kube as kube_mod
from tests.testbed import podns, procs

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
#: the test bed's services (tests/testbed/upstream.py), run as a script: the sidecars' app, the gateways' backend
UPSTREAM = procs.REPO_ROOT / "tests" / "testbed" / "upstream.py"


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

    kube: kube_mod.Kube
    namespace: str
    name: str
    kind: str  # sidecar | gateway
    net: podns.PodNetns
    obj: dict[str, Any]
    log_dir: Path
    agent: procs.Proc | None = None
    app: procs.Proc | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _sync: threading.Thread | None = None
    _volumes: threading.Lock = field(default_factory=threading.Lock)  # held: the kubelet has not synced volumes yet

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

    def envoy_pid(self) -> int:
        """The pid of the pod's Envoy (pilot-agent's child)."""
        if self.agent is None:
            raise RuntimeError(f"{self.proxy_id} has no istio-agent running")
        binary = os.path.basename(envoy_mod.envoy_binary())
        for pid in procs.descendants(self.agent.pid):
            with contextlib.suppress(OSError):
                if os.path.basename(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()) == binary:
                    return pid
        raise RuntimeError(f"no {binary} process below the istio-agent of {self.proxy_id}")

    def envoy_http_filters(self) -> list[list[str]]:
        """The HTTP filter names per HCM of Envoy's own (active) listeners on the pod's port."""
        dump = json.loads(self.admin("/config_dump?resource=dynamic_listeners"))
        return istiod_mod.http_filter_chains(dump, self.port)

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
        proxy: dict[str, Any] = next((c for c in spec.get("containers") or [] if c["name"] == "istio-proxy"), {})
        return [(volumes[m["name"]], m["mountPath"]) for m in proxy.get("volumeMounts") or [] if m["name"] in volumes]

    def sync_volumes(self) -> None:
        for cm_name, mount_path in self.config_map_mounts():
            if not mount_path.startswith(str(podns.VAR_LOCAL) + "/"):
                continue  # the test bed mounts only below /var/local
            target = self.net.varlocal / Path(mount_path).relative_to(podns.VAR_LOCAL)
            status, cm = self.kube.request("GET", f"/api/v1/namespaces/{self.namespace}/configmaps/{cm_name}")
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
            with self._volumes, contextlib.suppress(Exception):  # the API may be going away at teardown
                self.sync_volumes()

    @contextlib.contextmanager
    def volumes_held(self) -> Iterator[None]:
        """No ConfigMap volume update reaches the pod inside the block: a real kubelet updates a mounted ConfigMap
        within its sync period plus its cache's TTL (about a minute by default), this stand-in every 0.3 s; at the
        end of the block the volumes are brought up to date at once."""
        with self._volumes:
            yield
        self.sync_volumes()

    def start_app(self) -> None:
        """The app: the test bed's echo service on the pod's 127.0.0.1:`APP_PORT`; ready when it answers."""
        health = f"import urllib.request;urllib.request.urlopen('http://127.0.0.1:{APP_PORT}/__health')"
        self.app = procs.start(
            f"app-{self.namespace}.{self.name}",
            self.net.enter(sys.executable, str(UPSTREAM), "echo", str(APP_PORT)),
            log_dir=self.log_dir,
            ready=lambda: self.net.run(sys.executable, "-c", health).returncode == 0,
            timeout=20,
        )

    def start_volume_sync(self) -> None:
        """The kubelet's part: the ConfigMap volumes kept in sync from the API by a thread of the pod."""
        self.sync_volumes()
        self._sync = threading.Thread(target=self._sync_loop, name=f"kubelet-{self.name}", daemon=True)
        self._sync.start()

    # --- starting it -----------------------------------------------------------------------------------------

    def set_running(self, host_ip: str) -> None:
        """Status Running at the pod IP, Ready (there is no kubelet to set it)."""
        conds = [{"type": t, "status": "True"} for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        status = {
            "status": {
                "phase": "Running",
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": host_ip,
                "conditions": conds,
            }
        }
        code, out = self.kube.request(
            "PATCH",
            f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
            status,
            content_type="application/merge-patch+json",
        )
        if code != 200:
            raise RuntimeError(f"pod {self.proxy_id} status: {code} {out}")
        self.obj = dict(out)

    def sidecar_resource(self) -> dict[str, Any]:
        """The `Sidecar` whose ingress listener binds the pod IP on `INBOUND_PORT` in front of the app."""
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "workloadSelector": {"labels": {"istio-testbed/pod": self.name}},
                "ingress": [
                    {
                        "port": {"number": INBOUND_PORT, "protocol": "HTTP", "name": "http"},
                        "bind": self.ip,
                        "defaultEndpoint": f"127.0.0.1:{APP_PORT}",
                    }
                ],
                "egress": [{"hosts": ["./*", f"{istiod_mod.ROOT_NS}/*"]}],
            },
        }

    def _root_cert(self) -> str:
        found: list[str] = []

        def present() -> bool:
            status, cm = self.kube.request("GET", f"/api/v1/namespaces/{self.namespace}/configmaps/istio-ca-root-cert")
            if status == 200:
                found.append(cm["data"]["root-cert.pem"])
            return bool(found)

        procs.wait_until(present, timeout=60, what=f"istiod's root cert in namespace {self.namespace}")
        return found[0]

    def start_agent(
        self, istiod: istiod_mod.Istiod, root: Path, host_ip: str, work: Path, extra_env: Mapping[str, str]
    ) -> None:
        """pilot-agent (``root``'s, with the args of the pod's istio-proxy) + Envoy in the pod's namespaces, with what
        the kubelet would mount (a bound token for audience ``istio-ca``, istiod's root certificate, the pod's
        labels and annotations) and the injected container's environment (``extra_env`` on top); ready when
        Envoy is."""
        for sub in ("var/run/secrets/tokens", "var/run/secrets/istio", "etc/istio/proxy", "etc/istio/pod"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        meta = self.obj["metadata"]
        status, token = self.kube.request(
            "POST",
            f"/api/v1/namespaces/{self.namespace}/serviceaccounts/default/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": ["istio-ca"],
                    "expirationSeconds": 86400,
                    "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": meta["uid"]},
                },
            },
        )
        if status != 201:
            raise RuntimeError(f"istio-ca token for {self.proxy_id}: {status} {token}")
        (work / "var/run/secrets/tokens/istio-token").write_text(token["status"]["token"])
        (work / "var/run/secrets/istio/root-cert.pem").write_text(self._root_cert())
        (work / "etc/istio/pod/labels").write_text(_downward(meta.get("labels") or {}))
        (work / "etc/istio/pod/annotations").write_text(_downward(meta.get("annotations") or {}))
        template = work / "envoy_bootstrap_tmpl.json"
        shutil.copyfile(root / "envoy_bootstrap.json", template)
        proxy_config = {
            "discoveryAddress": istiod.grpc,
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
            "POD_NAME": self.name,
            "POD_NAMESPACE": self.namespace,
            "INSTANCE_IP": self.ip,
            "HOST_IP": host_ip,
            "SERVICE_ACCOUNT": "default",
            "PROXY_CONFIG": json.dumps(proxy_config),
            "CA_ADDR": istiod.secure_grpc,
            "PILOT_CERT_PROVIDER": "istiod",
            "ISTIO_META_INTERCEPTION_MODE": "NONE",
            "ISTIO_META_CLUSTER_ID": "Kubernetes",
            "ISTIO_META_MESH_ID": istiod_mod.TRUST_DOMAIN,
            "ISTIO_META_WORKLOAD_NAME": labels.get("app", self.name),
            "ISTIO_META_OWNER": f"kubernetes://apis/v1/namespaces/{self.namespace}/pods/{self.name}",
            "ISTIO_META_NODE_NAME": "testbed",
            "TRUST_DOMAIN": istiod_mod.TRUST_DOMAIN,
            **extra_env,
        }
        if self.kind == "sidecar":
            env["ISTIO_META_APP_CONTAINERS"] = "app"
            env["ISTIO_META_POD_PORTS"] = json.dumps(
                [{"name": "http", "containerPort": INBOUND_PORT, "protocol": "TCP"}]
            )
        argv = [
            str(root / "bin" / "pilot-agent"),
            *next(c for c in self.obj["spec"]["containers"] if c["name"] == "istio-proxy")["args"],
            f"--domain={self.namespace}.svc.cluster.local",
            "--proxyLogLevel=warning,wasm:info,lua:info",
        ]
        self.agent = procs.start(
            f"agent-{self.proxy_id}",
            self.net.enter("env", f"--chdir={work}", *argv),
            log_dir=self.log_dir,
            ready=self.ready,
            timeout=90,
            env=env,
        )

    def stop(self) -> None:
        self._stop.set()
        for proc in (self.agent, self.app):
            if proc is not None:
                proc.stop()
        self.net.stop()


def pod_body(
    namespace: str, name: str, labels: Mapping[str, str], kind: str, annotations: Mapping[str, str]
) -> dict[str, Any]:
    """The pod as Istio's injection leaves it (``istio-proxy`` with ``proxy sidecar`` or ``proxy router``, the
    injection status annotation, interception mode NONE); sidecars also have the app container."""
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
