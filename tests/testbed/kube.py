"""A real Kubernetes control plane for tests: etcd + a secure kube-apiserver (+ kube-controller-manager).

Used by tests/testbed/fixtures_kube.py (and by `make demo`/bench code that wants a local API server).
Binaries: etcd from Debian `etcd-server` (scripts/install-system-deps.sh); kube-apiserver and
kube-controller-manager built by scripts/install-kube.sh into $MESHPLUG_CACHE/kube/<version>/bin
(`make integration` runs it first). Everything listens on 127.0.0.1 on free ports, is polled for
readiness with a deadline (/health for etcd, /readyz for the apiserver, /healthz for the controller
manager) and stopped by pid.

With ``node`` (tests/testbed/netns.py), every component runs inside the node's network namespace, where pods
reach it; each port is forwarded to the same port number on the host's 127.0.0.1, so one URL serves both sides.

Security as in a real cluster: TLS with a test CA, token authentication (an admin token in
`system:masters`; `add_user_token` is not offered: use ServiceAccounts and `service_account_token` for
least-privilege callers), RBAC authorization, service-account signing keys so TokenRequest works.
Without kubelet and scheduler Pods stay Pending; tests set pod status themselves.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.testbed import netns as netns_mod
from tests.testbed import pki as pki_mod
from tests.testbed import procs

KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.36.2")
SERVICE_CIDR = "10.0.0.0/24"
ADMIN_USER = "meshplug-test-admin"


def kube_bin(component: str) -> Path:
    path = procs.cache_dir("kube", KUBE_VERSION, "bin") / component
    if not path.exists():
        raise RuntimeError(
            f"{path} missing: run scripts/install-kube.sh (`make integration` does) to build {component} "
            f"v{KUBE_VERSION} from the Go module proxy"
        )
    return path


def etcd_bin() -> str:
    return procs.which_or_fail("etcd", "install Debian etcd-server (scripts/install-system-deps.sh)")


# --- certificates ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a serving certificate for the apiserver's names, and a service-account signing key pair."""
    serving = pki_mod.serving_pki(
        directory,
        ca_cn="meshplug-test-ca",
        server_cn="kube-apiserver",
        dns_names=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        ip_addresses=["127.0.0.1", "10.0.0.1"],
        names=("ca.crt", "apiserver.crt", "apiserver.key"),
    )
    pki = Pki(
        dir=directory,
        ca_cert=serving.ca_cert,
        serving_cert=serving.cert,
        serving_key=serving.key,
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pki_mod.write_key(sa, pki.sa_key)
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


# --- the control plane -------------------------------------------------------------------------------------


def write_kubeconfig(path: Path, server: str, ca_cert: Path, token: str, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_cert)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user, "namespace": "default"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def api_call(
    base_url: str,
    token: str,
    context: ssl.SSLContext,
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    """One API server request with a bearer token (JSON in; JSON out, or the text of a body that is not JSON);
    returns (status, decoded body). Used by `Kube.request` and the test bed's kubelet (tests/testbed/kubelet.py)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, context=context, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Kube:
    """A running control plane. ``url`` is https://127.0.0.1:<port>; ``kubeconfig`` authenticates as admin."""

    url: str
    pki: Pki
    admin_token: str
    kubeconfig: Path
    workdir: Path
    procs: list[procs.Proc] = field(default_factory=list)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca_cert))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """A raw API call (JSON in/out) as admin or with ``token``; returns (status, decoded body)."""
        return api_call(
            self.url, token or self.admin_token, self.ssl_context(), method, path, body=body, content_type=content_type
        )

    def ready(self) -> bool:
        status, body = self.request("GET", "/readyz")
        return status == 200 and str(body).strip() == "ok"

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A bound token for an existing ServiceAccount (TokenRequest API)."""
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}},
        )
        if status != 201:
            raise RuntimeError(f"TokenRequest for {namespace}/{name} failed: {status} {body}")
        return str(body["status"]["token"])

    def kubeconfig_for(self, token: str, user: str, path: Path) -> Path:
        return write_kubeconfig(path, self.url, self.pki.ca_cert, token, user)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def _inside(node: netns_mod.NodeNet | None, *ports: int) -> list[str]:
    """The argv prefix that runs a component in ``node`` (ports forwarded from the host), or nothing."""
    if node is None:
        return []
    for port in ports:
        node.forward("127.0.0.1", port, local_port=port)
    return netns_mod.enter(node.netns)


def start_etcd(workdir: Path, log_dir: Path, *, node: netns_mod.NodeNet | None = None) -> procs.Proc:
    client, peer = procs.free_port(), procs.free_port()
    data = workdir / "etcd-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        *_inside(node, client),
        etcd_bin(),
        "--name=test",
        f"--data-dir={data}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=test=http://127.0.0.1:{peer}",
        "--quota-backend-bytes=2147483648",
        "--log-level=warn" if _etcd_minor() >= 5 else "--debug=false",
    ]

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")

    return procs.start("etcd", argv, log_dir=log_dir, ready=ready, timeout=60, ports={"client": client, "peer": peer})


def _etcd_minor() -> int:
    import subprocess  # only here: the version probe

    out = subprocess.run([etcd_bin(), "--version"], capture_output=True, text=True, check=False).stdout
    try:
        return int(out.split("Version:")[1].split(".")[1])
    except (IndexError, ValueError):
        return 4


def start_apiserver(
    workdir: Path,
    log_dir: Path,
    etcd_port: int,
    *,
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
    node: netns_mod.NodeNet | None = None,
) -> Kube:
    pki = make_pki(workdir / "pki")
    token = secrets.token_urlsafe(32)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    tokens.chmod(0o600)
    port = procs.free_port()
    url = f"https://127.0.0.1:{port}"
    argv = [
        *_inside(node, port),
        str(kube_bin("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        f"--token-auth-file={tokens}",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--endpoint-reconciler-type=none",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--api-audiences=https://kubernetes.default.svc.cluster.local",
        "--profiling=false",
        "--enable-priority-and-fairness=false",
        *extra_args,
    ]
    kube = Kube(
        url=url,
        pki=pki,
        admin_token=token,
        kubeconfig=write_kubeconfig(workdir / "admin.kubeconfig", url, pki.ca_cert, token, ADMIN_USER),
        workdir=workdir,
    )
    proc = procs.start(
        "kube-apiserver", argv, log_dir=log_dir, ready=kube.ready, timeout=timeout, ports={"https": port}
    )
    kube.procs.append(proc)
    return kube


def start_controller_manager(
    kube: Kube, log_dir: Path, *, timeout: float = 90.0, node: netns_mod.NodeNet | None = None
) -> procs.Proc:
    """kube-controller-manager against ``kube``: Deployments -> ReplicaSets -> Pods, GC, namespaces, SAs."""
    port = procs.free_port()
    argv = [
        *_inside(node, port),
        str(kube_bin("kube-controller-manager")),
        f"--kubeconfig={kube.kubeconfig}",
        f"--authentication-kubeconfig={kube.kubeconfig}",
        f"--authorization-kubeconfig={kube.kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={kube.workdir / 'kcm-certs'}",
        "--leader-elect=false",
        f"--service-account-private-key-file={kube.pki.sa_key}",
        f"--root-ca-file={kube.pki.ca_cert}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--use-service-account-credentials=false",
        "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service-lb-controller,-route,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ttl",
    ]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert of the controller manager; health only

    def ready() -> bool:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)

    proc = procs.start(
        "kube-controller-manager", argv, log_dir=log_dir, ready=ready, timeout=timeout, ports={"https": port}
    )
    kube.procs.append(proc)
    return proc


@contextmanager
def control_plane(
    workdir: Path,
    log_dir: Path,
    *,
    controller_manager: bool = False,
    node: netns_mod.NodeNet | None = None,
    apiserver_args: Sequence[str] = (),
) -> Iterator[Kube]:
    """etcd + apiserver (+ controller manager), stopped in reverse order on exit; inside ``node`` when given."""
    etcd = start_etcd(workdir, log_dir, node=node)
    try:
        kube = start_apiserver(workdir, log_dir, etcd.ports["client"], node=node, extra_args=apiserver_args)
    except BaseException:
        etcd.stop()
        raise
    kube.procs.insert(0, etcd)
    try:
        if controller_manager:
            start_controller_manager(kube, log_dir, node=node)
        yield kube
    finally:
        kube.stop()
