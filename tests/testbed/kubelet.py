"""The test bed's node agent: a kubelet and a kube-proxy of our own, so that what a chart installs actually runs.

Started by tests/testbed/node.py inside the node's network namespace (tests/testbed/netns.py), as
``python -m tests.testbed.kubelet CONFIG.json``; talks to the API server like a kubelet (admin credentials).
What it does, as Kubernetes would, and what it does not:

- scheduler: binds every pending pod to its one Node (``pods/binding``); the Node object is registered Ready.
- kubelet: each pod gets a network namespace of its own (a holder process), a veth on the node's bridge and an
  address ``10.244.0.N``; each container runs in its own mount namespace, where the pod's volumes are bind-mounted
  at their ``mountPath`` (``subPath`` and ``readOnly`` honoured) and ``/etc/hosts`` answers every Service name the
  way cluster DNS would. Volumes: emptyDir, configMap, secret, downwardAPI, projected (with serviceAccountToken:
  a TokenRequest bound to the pod, for the source's audience and expiry, refreshed at 80% of its life), kept in
  sync with the API like the kubelet's periodic sync. Env: value, fieldRef, secretKeyRef, configMapKeyRef, plus
  KUBERNETES_SERVICE_HOST/PORT. Probes: readiness and liveness (tcpSocket, httpGet), with periods and thresholds;
  a failed liveness probe or an exited container restarts the container (restartCount). Pod status: phase,
  podIP, conditions, containerStatuses. A deleted pod's containers get SIGTERM, then SIGKILL after the grace
  period, and the pod is then removed (delete with grace 0), as a kubelet confirms a graceful deletion.
- container runtime: an image is a command from the ``images`` table of the config (repository, tag ignored:
  ``ghcr.io/meshplug/meshplug`` runs ``python -m meshplug`` from the checkout); its ``command``/``args`` as
  given. Containers run as root: runAsUser, readOnlyRootFilesystem and capabilities are not enforced.
- kube-proxy: every Service's ClusterIP:port listens in the node's namespace (the service range is local there)
  and forwards each connection to a ready endpoint of its EndpointSlices, round robin; ``default/kubernetes``
  goes to the API server.
One module a part: this one (the node loop, scheduler, API client), tests/testbed/kubelet_pod.py (one pod),
tests/testbed/kubelet_proxy.py (kube-proxy). Mount points are created as empty directories on the host's filesystem
(the bind mounts themselves are private to each container). Every process it starts dies with it
(PR_SET_PDEATHSIG) and is stopped by pid on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import ssl
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.testbed import kube
from tests.testbed.kubelet_pod import NODE_IP, STAGE, Container, MissingSource, Pod, terminate, write_file
from tests.testbed.kubelet_proxy import Proxy

log = logging.getLogger("kubelet")

POD_PREFIX = "10.244.0."
SYNC_S = 0.25


@dataclass(frozen=True)
class Config:
    api: str  # https://127.0.0.1:PORT as seen inside the node
    ca: str
    token: str
    workdir: Path
    node: str
    images: dict[str, list[str]]  # repository -> argv of its entrypoint
    #: the directories the images' files are in (the checkout, its virtualenv, the interpreter): a container sees
    #: them wherever a volume is mounted, as an image's own files are never under a volume
    image_dirs: tuple[Path, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Config:
        raw = json.loads(path.read_text())
        return cls(
            api=raw["api"],
            ca=raw["ca"],
            token=raw["token"],
            workdir=Path(raw["workdir"]),
            node=raw["node"],
            images={k: list(v) for k, v in raw["images"].items()},
            image_dirs=tuple(Path(d) for d in raw.get("image_dirs") or ()),
        )


class Api:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.ctx = ssl.create_default_context(cafile=cfg.ca)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
        return kube.api_call(self.cfg.api, self.cfg.token, self.ctx, method, path, body=body, content_type=content_type)

    def items(self, path: str) -> list[dict[str, Any]]:
        status, body = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return list(body.get("items") or [])


# --- the node ---------------------------------------------------------------------------------------------------


class Kubelet:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.api = Api(cfg)
        self.pods: dict[str, Pod] = {}
        self.proxy = Proxy()
        self.stop = threading.Event()
        self.kubernetes_ip = "10.0.0.1"
        self.hosts = ""
        self.failed: dict[str, str] = {}  # pod uid -> why it could not start (logged once)
        self.terminating: set[str] = set()
        self.lock = threading.Lock()

    def register(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.cfg.node, "labels": {"kubernetes.io/hostname": self.cfg.node}},
        }
        status, out = self.api.call("POST", "/api/v1/nodes", node)
        if status not in (201, 409):
            raise RuntimeError(f"registering node: {status} {out}")
        ready = {
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test bed"}],
                "addresses": [
                    {"type": "InternalIP", "address": NODE_IP},
                    {"type": "Hostname", "address": self.cfg.node},
                ],
            }
        }
        self.api.call("PATCH", f"/api/v1/nodes/{self.cfg.node}/status", ready, "application/merge-patch+json")

    def services(self) -> None:
        """kube-proxy and cluster DNS: listeners for every ClusterIP, /etc/hosts lines for every Service."""
        services = self.api.items("/api/v1/services")
        slices = self.api.items("/apis/discovery.k8s.io/v1/endpointslices")
        routes: dict[tuple[str, int], list[tuple[str, int]]] = {}
        lines = ["127.0.0.1 localhost"]
        for svc in services:
            meta, spec = svc["metadata"], svc.get("spec") or {}
            ip = spec.get("clusterIP")
            if not ip or ip == "None":
                continue
            ns, name = meta["namespace"], meta["name"]
            lines.append(f"{ip} {name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}")
            if (ns, name) == ("default", "kubernetes"):
                self.kubernetes_ip = ip
                api_port = int(self.cfg.api.rsplit(":", 1)[1].rstrip("/"))
                routes[(ip, 443)] = [("127.0.0.1", api_port)]
                continue
            mine = [
                s
                for s in slices
                if s["metadata"].get("labels", {}).get("kubernetes.io/service-name") == name
                and s["metadata"]["namespace"] == ns
            ]
            for port in spec.get("ports") or []:
                if str(port.get("protocol", "TCP")) != "TCP":
                    continue
                backends = []
                for sl in mine:
                    target = next(
                        (p["port"] for p in sl.get("ports") or [] if p.get("name", "") == port.get("name", "")), None
                    )
                    if target is None:
                        continue
                    for ep in sl.get("endpoints") or []:
                        if (ep.get("conditions") or {}).get("ready"):
                            backends += [(a, int(target)) for a in ep.get("addresses") or []]
                routes[(ip, int(port["port"]))] = backends
        self.proxy.update(routes)
        self.hosts = "\n".join(lines) + "\n"

    def sync(self) -> None:
        self.services()
        pods = self.api.items("/api/v1/pods")
        seen = set()
        for body in pods:
            meta, spec = body["metadata"], body.get("spec") or {}
            uid = meta["uid"]
            seen.add(uid)
            if not spec.get("nodeName"):
                if not meta.get("deletionTimestamp"):
                    self.bind(body)
                continue
            if spec["nodeName"] != self.cfg.node:
                continue
            pod = self.pods.get(uid)
            if uid in self.terminating:
                continue
            if meta.get("deletionTimestamp"):
                self.delete(body, pod)
                continue
            if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            try:
                if pod is None:
                    pod = self.start(body)
                else:
                    pod.body = body
                    pod.sync_volumes()
                write_file(pod.hosts_file(), (self.hosts + f"{pod.ip} {pod.name}\n").encode())
                pod.tick()
                self.failed.pop(uid, None)
            except MissingSource as exc:
                if self.failed.get(uid) != str(exc):
                    log.info("pod %s/%s waits: %s", meta["namespace"], meta["name"], exc)
                    self.failed[uid] = str(exc)
        with self.lock:
            gone = [u for u in self.pods if u not in seen and u not in self.terminating]
        for uid in gone:  # removed without us (force delete)
            log.info("pod %s/%s is gone: stopping it", self.pods[uid].ns, self.pods[uid].name)
            self.pods.pop(uid).teardown()

    def bind(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.cfg.node},
        }
        status, out = self.api.call(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding
        )
        if status not in (201, 409):
            log.warning("binding %s/%s: %s %s", meta["namespace"], meta["name"], status, out)

    def _free_ip(self) -> str:
        with self.lock:
            used = {p.ip for p in self.pods.values()}
        for last in range(2, 254):
            ip = f"{POD_PREFIX}{last}"
            if ip not in used:
                return ip
        raise RuntimeError("no pod address left")

    def start(self, body: dict[str, Any]) -> Pod:
        meta = body["metadata"]
        pod = Pod(
            kubelet=self,
            body=body,
            ip=self._free_ip(),
            dir=self.cfg.workdir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}",
        )
        pod.sync_volumes()  # MissingSource: not started yet, retried next sync
        pod.setup_network()
        pod.containers = [
            Container(spec=c, log=pod.dir / "logs" / f"{c['name']}.log") for c in body["spec"].get("containers") or []
        ]
        with self.lock:
            self.pods[meta["uid"]] = pod
        log.info("pod %s/%s started at %s", meta["namespace"], meta["name"], pod.ip)
        return pod

    def delete(self, body: Mapping[str, Any], pod: Pod | None) -> None:
        """A graceful deletion: stop the containers (SIGTERM, SIGKILL after the grace period) on a thread of its
        own (the other pods keep being probed), then confirm it to the API server."""
        meta = body["metadata"]
        uid = meta["uid"]
        if uid in self.terminating:
            return
        self.terminating.add(uid)

        def finish() -> None:
            if pod is not None:
                grace = float(pod.grace())
                log.info("pod %s/%s deleted: stopping it (grace %.0fs)", meta["namespace"], meta["name"], grace)
                threads = [threading.Thread(target=terminate, args=(c.proc, grace)) for c in pod.containers]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                pod.teardown()
            options = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid},
            }
            self.api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", options)
            with self.lock:
                self.pods.pop(uid, None)
                self.terminating.discard(uid)

        threading.Thread(target=finish, name=f"delete-{meta['name']}", daemon=True).start()

    def run(self) -> None:
        STAGE.mkdir(parents=True, exist_ok=True)
        self.register()
        while not self.stop.is_set():
            try:
                self.sync()
            except (OSError, RuntimeError, ValueError, KeyError) as exc:
                log.warning("sync failed: %s", exc)
            self.stop.wait(SYNC_S)
        for pod in list(self.pods.values()):
            for c in pod.containers:
                terminate(c.proc, 5.0)
            pod.teardown()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    cfg = Config.load(Path(sys.argv[1]))
    kubelet = Kubelet(cfg)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: kubelet.stop.set())
    kubelet.run()


if __name__ == "__main__":
    main()
