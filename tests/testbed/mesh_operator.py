"""meshplug's operator on the real Istio test bed: CRD, admission webhook, module server where the pods reach it.

Used by tests/testbed/fixtures_istio.py (`mesh_operator`). The operator runs as a process against the mesh's own
kube-apiserver (`tests.testbed.istio.Mesh`), watching every namespace (root-namespace plugins are mesh-wide), with:
- its module server on the bridge's host address, named `istio.MODULES_HOST` (pods resolve it there; a STATIC
  ServiceEntry gives sidecars the Istio cluster `code.remote` goes through);
- istiod's debug endpoints as ``--istiod-debug-url`` (status from the proxies);
- its mutating webhook ``/mount-istio-modules`` registered with the API server (TLS from a test CA;
  failurePolicy Ignore, as the chart installs it), so pods created through the API get ConfigMap modules mounted;
- ``--file-root`` = `MeshOperator.modules`: tests drop modules there and name them ``file://`` (read by the
  operator: meshplug's extension; any other ``file://`` path is the proxy's own);
- the test bed's CA trusted for module sources (``--extra-ca-file``: the TLS registries and origin).
`MeshOperator` also reads and writes WasmPlugins (and TrafficExtensions: ``kind=``) for the tests and waits for
their conditions.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.testbed import helm, istio, istiopod, procs
from tests.testbed import operator as operator_mod

CRDS = sorted((procs.REPO_ROOT / "crds").glob("*.yaml"))  # WasmPlugin, TrafficExtension
PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/{plural}"
PLURALS = {"WasmPlugin": "wasmplugins", "TrafficExtension": "trafficextensions"}
WEBHOOK = "meshplug-istio-modules"


@dataclass
class MeshOperator:
    mesh: istio.Mesh
    op: operator_mod.Operator
    modules: Path
    module_port: int
    start: Callable[[], operator_mod.Operator] | None = None  # starts the operator process as `running` does

    def restart(self) -> None:
        """Stop the operator (by pid) and start it again with the same arguments and ports: what it kept only in
        memory is gone, what it wrote stays."""
        assert self.start is not None
        self.op.stop()
        self.op = self.start()

    @contextlib.contextmanager
    def unreachable_from(self, pod: istiopod.Pod) -> Iterator[None]:
        """Inside the block the pod's connections to the operator's module server are refused (a reset, from a rule
        in the pod's own network namespace: what a NetworkPolicy or a module Service without endpoints does);
        nothing else of the pod's network changes (istiod, the app)."""
        rule = ["OUTPUT", "-p", "tcp", "-d", self.mesh.bridge.host_ip, "--dport", str(self.module_port)]
        rule += ["-j", "REJECT", "--reject-with", "tcp-reset"]

        def iptables(*args: str) -> None:
            argv = ["nsenter", "-t", str(pod.net.pid), "-n", "--", "iptables", *args]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            assert out.returncode == 0, out.stderr

        iptables("-I", *rule)
        try:
            yield
        finally:
            iptables("-D", *rule)

    # --- modules ---------------------------------------------------------------------------------------------

    def module_url(self, data: bytes, name: str = "") -> tuple[str, str]:
        """Put ``data`` below the operator's file root; (file:// url, sha256)."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.modules / (name or f"{sha[:16]}.wasm")
        path.write_bytes(data)
        return f"file://{path}", sha

    # --- plugins ---------------------------------------------------------------------------------------------

    def plugin(
        self, namespace: str, name: str, spec: Mapping[str, Any], *, kind: str = "WasmPlugin", **meta: Any
    ) -> dict[str, Any]:
        body = {
            "apiVersion": "meshplug.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, **meta},
            "spec": dict(spec),
        }
        return self.mesh.apply(body)

    def get(self, namespace: str, name: str, *, kind: str = "WasmPlugin") -> dict[str, Any] | None:
        status, obj = self.mesh.kube.request("GET", f"{_path(namespace, kind)}/{name}")
        return dict(obj) if status == 200 else None

    def condition(self, namespace: str, name: str, ctype: str = "Ready", *, kind: str = "WasmPlugin") -> dict[str, Any]:
        obj = self.get(namespace, name, kind=kind) or {}
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c["type"] == ctype:
                return dict(c)
        return {}

    def wait(
        self,
        namespace: str,
        name: str,
        *,
        status: str = "True",
        reason: str | None = None,
        timeout: float = 90,
        kind: str = "WasmPlugin",
    ) -> dict[str, Any]:
        """Wait until Ready (for this generation) has ``status`` (and ``reason``); the resource then."""

        def done(obj: dict[str, Any] | None) -> bool:
            if obj is None or (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
                return False
            ready: dict[str, Any] = next((c for c in obj["status"].get("conditions") or [] if c["type"] == "Ready"), {})
            return ready.get("status") == status and (reason is None or ready.get("reason") == reason)

        return dict(
            istio.poll(
                lambda: self.get(namespace, name, kind=kind),
                done,
                f"{kind} {namespace}/{name} Ready={status}" + (f" ({reason})" if reason else ""),
                timeout=timeout,
                show=_ready_and_failing,
            )
        )

    def delete(self, namespace: str, name: str, *, timeout: float = 60, kind: str = "WasmPlugin") -> None:
        self.mesh.kube.request("DELETE", f"{_path(namespace, kind)}/{name}")
        procs.wait_until(
            lambda: self.get(namespace, name, kind=kind) is None,
            timeout=timeout,
            what=f"{kind} {namespace}/{name} gone",
        )

    def log(self) -> str:
        return self.op.proc.log()


def _path(namespace: str, kind: str) -> str:
    return PLUGINS.format(ns=namespace, plural=PLURALS[kind])


def _ready_and_failing(obj: dict[str, Any] | None) -> Any:
    current = (obj or {}).get("status") or {}
    ready = [c for c in current.get("conditions") or [] if c["type"] in ("Ready", "Fetched")]
    return {"conditions": ready, "failingPods": current.get("failingPods"), "pods": current.get("pods")}


def _webhook_configuration(port: int, ca_bundle: str) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [
            {
                "name": "istio-modules.meshplug.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "reinvocationPolicy": "IfNeeded",
                "clientConfig": {"url": f"https://127.0.0.1:{port}/mount-istio-modules", "caBundle": ca_bundle},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {
                    "matchExpressions": [
                        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}
                    ]
                },
            }
        ],
    }


@contextlib.contextmanager
def running(
    mesh: istio.Mesh,
    work: Path,
    *,
    extra: tuple[str, ...] = (),
    trusted_ca: Path | None = None,
    istiod_url: str = "",
) -> Iterator[MeshOperator]:
    """The operator on ``mesh`` (see the module docstring); stopped by pid on exit. ``istiod_url``: where it reads
    istiod's debug endpoints (a bench's counting proxy in front of them; istiod's own by default)."""
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        mesh.apply(crd)
        mesh._wait_crd(crd["metadata"]["name"])
    mesh.namespace(istio.MODULES_NS)
    module_port = mesh.bridge.free_port()
    mesh.apply(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "meshplug-modules", "namespace": istio.MODULES_NS},
            "spec": {
                "hosts": [istio.MODULES_HOST],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{"name": "http", "number": module_port, "protocol": "HTTP"}],
                "endpoints": [{"address": mesh.bridge.host_ip}],
            },
        }
    )
    tls = helm.webhook_tls(work / "tls")
    port = procs.free_port()
    config = {
        "listen": {"address": "127.0.0.1", "port": port},
        "tls": {"certFile": str(tls.cert), "keyFile": str(tls.key)},
        "injection": {"enabled": False},
        "validation": {"enabled": False},
        "istioModules": {"enabled": True},
    }
    (work / "webhook.yaml").write_text(yaml.safe_dump(config))
    modules = work / "modules"
    modules.mkdir(parents=True, exist_ok=True)

    def start() -> operator_mod.Operator:
        op = _start_operator(mesh, work, module_port, istiod_url, modules, trusted_ca, extra)
        procs.wait_until(lambda: procs.tls_ready(port, tls.ca_cert), timeout=60, what="the operator's webhook server")
        return op

    handle = MeshOperator(mesh=mesh, op=start(), modules=modules, module_port=module_port, start=start)
    try:
        mesh.apply(_webhook_configuration(port, tls.ca_bundle))
        yield handle
    finally:
        with contextlib.suppress(Exception):
            mesh.delete(_webhook_configuration(port, tls.ca_bundle))
        handle.op.stop()


def _start_operator(  # noqa: PLR0917
    mesh: istio.Mesh,
    work: Path,
    module_port: int,
    istiod_url: str,
    modules: Path,
    trusted_ca: Path | None,
    extra: tuple[str, ...],
) -> operator_mod.Operator:
    return operator_mod.start_operator(
        mesh.kube.kubeconfig,
        work,
        name="operator-mesh",
        extra=(
            f"--module-listen={mesh.bridge.host_ip}:{module_port}",
            f"--module-host={istio.MODULES_HOST}",
            f"--module-port={module_port}",
            f"--istiod-debug-url={istiod_url or mesh.istiod.debug_url}",
            f"--file-root={modules}",
            "--reresolve-interval=0",
            *([f"--extra-ca-file={trusted_ca}"] if trusted_ca is not None else []),
            *extra,
        ),
        env={"MESHPLUG_WEBHOOK_CONFIG": str(work / "webhook.yaml")},
    )
