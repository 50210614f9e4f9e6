"""A one-node cluster for the test bed, where what a Helm chart installs really runs.

Used by the chart-only end-to-end run (scripts/demo.py and tests/integration/test_chart_only.py). `cluster()` starts,
inside a private network namespace (tests/testbed/netns.py): etcd, kube-apiserver and kube-controller-manager
(tests/testbed/kube.py), then the node agent (tests/testbed/kubelet.py: scheduler, kubelet and kube-proxy of the
test bed). Deployments become ReplicaSets and Pods (controller manager), Pods run as processes in their own network
and mount namespaces (node agent), Services route to ready endpoints. The test process talks to the API server at
``kube.url`` and reaches pods or node addresses through `Cluster.forward`. Images are commands (`IMAGES`): the
meshplug image runs this checkout's ``python -m meshplug``. Everything is stopped by pid on exit, in reverse order.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.testbed import kube as kube_mod
from tests.testbed import netns, procs

NODE_NAME = "meshplug-node"
NODE_IP = netns.NODE_IP
#: the container images the node can run: repository -> entrypoint
MESHPLUG_IMAGE = "ghcr.io/meshplug/meshplug"
ECHO_IMAGE = "registry.test/meshplug/echo"
IMAGES: dict[str, list[str]] = {
    # the Dockerfile's ENTRYPOINT ["meshplug"], from this checkout (whatever the virtualenv was installed from)
    MESHPLUG_IMAGE: ["env", f"PYTHONPATH={procs.REPO_ROOT}", sys.executable, "-m", "meshplug"],
    ECHO_IMAGE: [sys.executable, str(procs.REPO_ROOT / "tests" / "testbed" / "upstream.py"), "echo"],
}


def image_dirs() -> list[Path]:
    """Where the files of `IMAGES` are: this checkout, its virtualenv and the interpreter it was made from (the
    outermost of nested ones)."""
    dirs = sorted({procs.REPO_ROOT.resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()})
    return [d for d in dirs if not any(d != o and d.is_relative_to(o) for o in dirs)]


@dataclass
class Cluster:
    kube: kube_mod.Kube
    net: netns.NodeNet
    kubelet: procs.Proc
    workdir: Path
    extra: list[procs.Proc] = field(default_factory=list)

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def forward(self, host: str, port: int) -> int:
        """A host port (127.0.0.1) reaching ``host:port`` inside the cluster's network (a pod IP, the node IP)."""
        return self.net.forward(host, port)

    def run_inside(self, name: str, argv: Sequence[str], **kwargs: Any) -> procs.Proc:
        """A process on the node's network (a server "outside" the cluster that pods reach at the node IP)."""
        proc = procs.start(name, [*netns.enter(self.net.netns), *argv], **kwargs)
        self.extra.append(proc)
        return proc

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        query = f"?labelSelector={selector}" if selector else ""
        status, body = self.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods{query}")
        if status != 200:
            raise RuntimeError(f"listing pods in {namespace}: {status} {body}")
        return list(body.get("items") or [])

    def container_log(self, pod: Mapping[str, Any], container: str) -> str:
        meta = pod["metadata"]
        path = (
            self.workdir
            / "node"
            / "pods"
            / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
            / "logs"
            / f"{container}.log"
        )
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self, namespace: str, selector: str, container: str, tail: int = 40) -> str:
        """The last lines of ``container`` in every pod of ``namespace`` matching ``selector`` (kubectl logs)."""
        out = []
        for pod in self.pods(namespace, selector):
            lines = self.container_log(pod, container).splitlines()[-tail:]
            out.append(f"--- {pod['metadata']['name']}/{container}\n" + "\n".join(lines))
        return "\n".join(out)


def _kubelet_ready(kube: kube_mod.Kube) -> bool:
    status, body = kube.request("GET", f"/api/v1/nodes/{NODE_NAME}")
    conditions = ((body or {}).get("status") or {}).get("conditions") or [] if status == 200 else []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def start_kubelet(kube: kube_mod.Kube, net: netns.NodeNet, workdir: Path, log_dir: Path) -> procs.Proc:
    config = {
        "api": kube.url,
        "ca": str(kube.pki.ca_cert),
        "token": kube.admin_token,
        "workdir": str(workdir / "node"),
        "node": NODE_NAME,
        "images": IMAGES,
        "image_dirs": [str(d) for d in image_dirs()],
    }
    path = workdir / "kubelet.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return procs.start(
        "kubelet",
        [*netns.enter(net.netns), sys.executable, "-m", "tests.testbed.kubelet", str(path)],
        log_dir=log_dir,
        cwd=procs.REPO_ROOT,
        ready=lambda: _kubelet_ready(kube),
        timeout=60,
    )


#: the API server's audit log records who wrote which Secret (the chart-only run checks nobody but Helm and the
#: operator did)
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "Metadata",
            "resources": [{"group": "", "resources": ["secrets"]}],
            "verbs": ["create", "update", "patch", "delete"],
        },
        {"level": "None"},
    ],
}


def audit_events(path: Path) -> list[dict[str, Any]]:
    """The completed requests of the audit log (one JSON event per line)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    events = [json.loads(line) for line in lines if line.strip()]
    return [e for e in events if e.get("stage") == "ResponseComplete"]


@contextlib.contextmanager
def cluster(workdir: Path, log_dir: Path) -> Iterator[Cluster]:
    """The one-node cluster, stopped (pods, node agent, control plane, network) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "audit-policy.json"
    policy.write_text(json.dumps(AUDIT_POLICY))
    audit = [f"--audit-policy-file={policy}", f"--audit-log-path={workdir / 'audit.log'}"]
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(netns.node_net(log_dir))
        kube = stack.enter_context(
            kube_mod.control_plane(workdir / "kube", log_dir, controller_manager=True, node=net, apiserver_args=audit)
        )
        kubelet = start_kubelet(kube, net, workdir, log_dir)
        stack.callback(kubelet.stop, 30)
        # the controller manager publishes kube-root-ca.crt and the default ServiceAccounts: pods need both
        procs.wait_until(
            lambda: kube.request("GET", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt")[0] == 200,
            timeout=60,
            what="kube-root-ca.crt",
        )
        c = Cluster(kube=kube, net=net, kubelet=kubelet, workdir=workdir)
        try:
            yield c
        finally:
            for proc in reversed(c.extra):
                proc.stop()
