"""One pod as the test bed's kubelet runs it (tests/testbed/kubelet.py, whose docstring says what is and is not
Kubernetes-like): its network namespace and veth, its volumes kept in sync with the API, its containers (each in a
mount namespace of its own, started, probed and restarted) and the status the kubelet reports for it."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime
import json
import logging
import os
import shlex
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.testbed.kubelet import Kubelet

log = logging.getLogger("kubelet")

BRIDGE = "mpbr0"
NODE_IP = "10.244.0.1"
#: where each container's mount namespace sees its pod's directory before the volumes are bound into place
STAGE = Path("/run/meshplug-testbed")
#: under the pod's directory (so under STAGE): where the image's directories are bound before the volumes
IMAGE_STAGE = ".image"
TOKEN_REFRESH_FRACTION = 0.8
_PR_SET_PDEATHSIG = 1


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# --- files -----------------------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Atomically replace ``path`` with ``data`` when it differs; True when it changed."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


def _field(pod: Mapping[str, Any], path: str) -> str:
    meta = pod.get("metadata") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", "default"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "status.podIP": (pod.get("status") or {}).get("podIP", ""),
        "status.hostIP": NODE_IP,
    }
    if path in simple:
        return str(simple[path])
    for kind in ("annotations", "labels"):
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str((meta.get(kind) or {}).get(path[len(prefix) : -2], ""))
        if path == f"metadata.{kind}":
            return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(kind) or {}).items()))
    raise ValueError(f"fieldRef {path} is not supported by the test bed's kubelet")


# --- one pod -----------------------------------------------------------------------------------------------------


@dataclass
class Container:
    spec: dict[str, Any]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: str = ""
    ready: bool = False
    ready_fails: int = 0
    ready_ok: int = 0
    live_fails: int = 0
    next_probe: float = 0.0
    next_live: float = 0.0
    restart_at: float = 0.0
    last_exit: int | None = None
    started_mono: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Pod:
    kubelet: Kubelet
    body: dict[str, Any]
    ip: str
    dir: Path
    holder: subprocess.Popen[bytes] | None = None
    containers: list[Container] = field(default_factory=list)
    tokens: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # source key -> (token, t0, ttl)
    status_sent: str = ""
    start_time: str = field(default_factory=now)

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def ns(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def netns(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    # --- network ---

    def setup_network(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "infinity"], preexec_fn=_die_with_parent, start_new_session=True
        )
        deadline = time.monotonic() + 10
        while os.readlink(self.netns) == os.readlink("/proc/self/ns/net"):
            if time.monotonic() > deadline:
                raise RuntimeError("pod network namespace did not appear")
            time.sleep(0.01)
        host_if = f"vp{self.ip.rsplit('.', 1)[1]}"
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", str(self.holder.pid))
        _ip("link", "set", host_if, "master", BRIDGE, "up")
        inside = ["nsenter", f"--net={self.netns}", "--", "ip"]
        for args in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{self.ip}/24", "dev", "eth0"],
            ["link", "set", "eth0", "up"],
            ["route", "add", "default", "via", NODE_IP],
        ):
            subprocess.run([*inside, *args], check=True, capture_output=True)

    def teardown(self) -> None:
        for c in self.containers:
            _kill(c.proc, signal.SIGKILL)
        if self.holder is not None:
            _kill(self.holder, signal.SIGKILL)  # the pod's namespace and its veth go with it

    # --- volumes ---

    def volume_dir(self, name: str) -> Path:
        return self.dir / "volumes" / name

    def sync_volumes(self) -> None:
        for volume in (self.body.get("spec") or {}).get("volumes") or []:
            target = self.volume_dir(volume["name"])
            target.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                continue
            files: dict[str, tuple[bytes, int]] = {}
            if "projected" in volume:
                mode = volume["projected"].get("defaultMode", 0o644)
                for i, source in enumerate(volume["projected"].get("sources") or []):
                    files.update(self._source(source, f"{volume['name']}/{i}", mode))
            else:
                files.update(self._source(volume, volume["name"], 0o644))
            for rel, (data, mode) in files.items():
                write_file(target / rel, data, mode)

    def _source(self, source: Mapping[str, Any], key: str, mode: int) -> dict[str, tuple[bytes, int]]:
        if "secret" in source or "configMap" in source:
            kind = "secret" if "secret" in source else "configMap"
            spec = source[kind]
            name = spec.get("secretName") or spec.get("name")
            plural = "secrets" if kind == "secret" else "configmaps"
            status, obj = self.kubelet.api.call("GET", f"/api/v1/namespaces/{self.ns}/{plural}/{name}")
            if status != 200:
                if spec.get("optional"):
                    return {}
                raise MissingSource(f"{kind} {self.ns}/{name} not found")
            data = (
                {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                if kind == "secret"
                else {
                    **{k: v.encode() for k, v in (obj.get("data") or {}).items()},
                    **{k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()},
                }
            )
            items = spec.get("items")
            if items:
                return {i["path"]: (data[i["key"]], i.get("mode", spec.get("defaultMode", mode))) for i in items}
            return {k: (v, spec.get("defaultMode", mode)) for k, v in data.items()}
        if "downwardAPI" in source:
            out = {}
            for item in source["downwardAPI"].get("items") or []:
                out[item["path"]] = (_field(self.body, item["fieldRef"]["fieldPath"]).encode(), mode)
            return out
        if "serviceAccountToken" in source:
            spec = source["serviceAccountToken"]
            return {spec["path"]: (self._token(key, spec).encode(), 0o600)}
        if "emptyDir" in source:
            return {}
        raise MissingSource(f"volume source {sorted(source)} is not supported by the test bed's kubelet")

    def _token(self, key: str, spec: Mapping[str, Any]) -> str:
        now = time.monotonic()
        cached = self.tokens.get(key)
        if cached is not None and now - cached[1] < cached[2] * TOKEN_REFRESH_FRACTION:
            return cached[0]
        seconds = int(spec.get("expirationSeconds", 3600))
        request: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        if spec.get("audience"):
            request["spec"]["audiences"] = [spec["audience"]]
        sa = (self.body.get("spec") or {}).get("serviceAccountName") or "default"
        status, out = self.kubelet.api.call("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", request)
        if status != 201:
            raise MissingSource(f"TokenRequest for {self.ns}/{sa}: {status} {out}")
        token = str(out["status"]["token"])
        self.tokens[key] = (token, now, float(out["spec"].get("expirationSeconds", seconds)))
        return token

    # --- containers ---

    def hosts_file(self) -> Path:
        return self.dir / "etc-hosts"

    def env(self, spec: Mapping[str, Any]) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": self.name,
            "KUBERNETES_SERVICE_HOST": self.kubelet.kubernetes_ip,
            "KUBERNETES_SERVICE_PORT": "443",
            "KUBERNETES_PORT": f"tcp://{self.kubelet.kubernetes_ip}:443",
        }
        for item in spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = item.get("valueFrom") or {}
            if "fieldRef" in ref:
                env[item["name"]] = _field(self.body, ref["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in ref or "configMapKeyRef" in ref:
                kind = "secretKeyRef" if "secretKeyRef" in ref else "configMapKeyRef"
                plural = "secrets" if kind == "secretKeyRef" else "configmaps"
                key = ref[kind]
                status, obj = self.kubelet.api.call("GET", f"/api/v1/namespaces/{self.ns}/{plural}/{key['name']}")
                if status != 200:
                    raise MissingSource(f"{plural} {self.ns}/{key['name']} not found")
                raw = (obj.get("data") or {})[key["key"]]
                env[item["name"]] = base64.b64decode(raw).decode() if plural == "secrets" else raw
        return env

    def argv(self, spec: Mapping[str, Any]) -> list[str]:
        image = str(spec["image"]).split("@", 1)[0]
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        entry = self.kubelet.cfg.images.get(repo)
        if entry is None:
            raise MissingSource(f"image {spec['image']}: not on this node (it runs {sorted(self.kubelet.cfg.images)})")
        command = list(spec.get("command") or entry)
        return [*command, *[str(a) for a in spec.get("args") or []]]

    def start_container(self, c: Container) -> None:
        # the pod's directory is bound at STAGE first: a mountPath such as /tmp would hide it where it lies; so are
        # the image's directories, bound back in place over a volume mounted above them (a checkout under /tmp)
        mounts = [f"mount --bind {shlex.quote(str(self.dir))} {STAGE}"]
        images = self.dir / IMAGE_STAGE
        for i, image_dir in enumerate(self.kubelet.cfg.image_dirs):
            (images / str(i)).mkdir(parents=True, exist_ok=True)
            mounts.append(f"mount --bind {shlex.quote(str(image_dir))} {STAGE / IMAGE_STAGE / str(i)}")
        for m in c.spec.get("volumeMounts") or []:
            source = self.volume_dir(m["name"])
            if m.get("subPath"):
                source = source / m["subPath"]
            target = Path(m["mountPath"])
            if STAGE.is_relative_to(target):
                raise MissingSource(f"mountPath {target} would hide the test bed's staging directory {STAGE}")
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)  # the mount point (an empty directory on the host)
            staged = STAGE / source.relative_to(self.dir)
            mounts.append(f"mount --bind {shlex.quote(str(staged))} {shlex.quote(str(target))}")
            for i, image_dir in enumerate(self.kubelet.cfg.image_dirs):
                if image_dir != target and image_dir.is_relative_to(target):
                    where = shlex.quote(str(image_dir))
                    mounts.append(f"mkdir -p {where}; mount --bind {STAGE / IMAGE_STAGE / str(i)} {where}")
            if m.get("readOnly"):
                mounts.append(f"mount -o remount,bind,ro {shlex.quote(str(target))}")
        mounts.append(f"mount --bind {STAGE / self.hosts_file().name} /etc/hosts")
        script = "set -e; " + "; ".join(mounts) + '; exec "$@"'
        argv = [
            "nsenter",
            f"--net={self.netns}",
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            *self.argv(c.spec),
        ]
        env = self.env(c.spec)
        c.log.parent.mkdir(parents=True, exist_ok=True)
        with c.log.open("ab") as out:
            out.write(f"--- {now()} start (restart {c.restarts})\n".encode())
            out.flush()
            c.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=c.spec.get("workingDir") or "/",
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        c.started_at, c.started_mono = now(), time.monotonic()
        c.ready, c.ready_ok, c.ready_fails, c.live_fails = False, 0, 0, 0
        c.next_probe = c.next_live = 0.0

    def _port(self, spec: Mapping[str, Any], port: Any) -> int:
        if isinstance(port, int):
            return port
        for c in (self.body.get("spec") or {}).get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise ValueError(f"probe port {port!r} is not a named port of the pod")

    def _probe(self, spec: Mapping[str, Any], probe: Mapping[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "tcpSocket" in probe:
                port = self._port(spec, probe["tcpSocket"]["port"])
                with socket.create_connection((self.ip, port), timeout=timeout):
                    return True
            if "httpGet" in probe:
                get = probe["httpGet"]
                port = self._port(spec, get["port"])
                scheme = str(get.get("scheme", "HTTP")).lower()
                ctx = ssl._create_unverified_context() if scheme == "https" else None
                url = f"{scheme}://{self.ip}:{port}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
                    return bool(200 <= resp.status < 400)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return True

    def tick(self) -> None:
        now = time.monotonic()
        for c in self.containers:
            if not c.running():
                self._restart(c, now)
                continue
            self._readiness(c, now)
            self._liveness(c, now)
        self.report()

    def _restart(self, c: Container, now: float) -> None:
        """An exited container starts again after a backoff (restartPolicy Always), its restartCount counted."""
        if c.proc is not None and c.last_exit is None:
            c.last_exit = c.proc.returncode
            c.restart_at = now + min(10.0, 0.5 * 2 ** min(c.restarts, 5))
            c.ready = False
        if c.proc is None or now >= c.restart_at:
            if c.proc is not None:
                c.restarts += 1
            c.last_exit = None
            self.start_container(c)

    def _readiness(self, c: Container, now: float) -> None:
        probe = c.spec.get("readinessProbe")
        if probe is None:
            c.ready = True
            return
        if now < c.next_probe or now - c.started_mono < float(probe.get("initialDelaySeconds", 0)):
            return
        # a freshly started container is probed often until it is ready, then at the probe's period
        c.next_probe = now + (float(probe.get("periodSeconds", 10)) if c.ready else 0.2)
        if self._probe(c.spec, probe):
            c.ready_fails, c.ready_ok = 0, c.ready_ok + 1
            c.ready = c.ready or c.ready_ok >= int(probe.get("successThreshold", 1))
        else:
            c.ready_ok, c.ready_fails = 0, c.ready_fails + 1
            if not c.ready or c.ready_fails >= int(probe.get("failureThreshold", 3)):
                c.ready = False

    def _liveness(self, c: Container, now: float) -> None:
        probe = c.spec.get("livenessProbe")
        if probe is None or now < c.next_live:
            return
        c.next_live = now + float(probe.get("periodSeconds", 10))
        if now - c.started_mono < float(probe.get("initialDelaySeconds", 0)):
            return
        if self._probe(c.spec, probe):
            c.live_fails = 0
            return
        c.live_fails += 1
        if c.live_fails >= int(probe.get("failureThreshold", 3)):
            log.info("%s/%s: %s failed its liveness probe: restarting", self.ns, self.name, c.name)
            terminate(c.proc, float(self.grace()))

    def grace(self) -> int:
        meta = self.body.get("metadata") or {}
        spec = self.body.get("spec") or {}
        return int(meta.get("deletionGracePeriodSeconds") or spec.get("terminationGracePeriodSeconds") or 30)

    def report(self) -> None:
        ready = all(c.ready for c in self.containers)
        statuses = []
        for c in self.containers:
            state: dict[str, Any] = (
                {"running": {"startedAt": c.started_at}}
                if c.running()
                else {"waiting": {"reason": "CrashLoopBackOff" if c.restarts else "ContainerCreating"}}
            )
            statuses.append(
                {
                    "name": c.name,
                    "image": c.spec["image"],
                    "imageID": c.spec["image"],
                    "containerID": f"testbed://{self.uid}/{c.name}/{c.restarts}",
                    "ready": c.ready,
                    "started": c.running(),
                    "restartCount": c.restarts,
                    "state": state,
                }
            )
        conditions = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": str(ready)},
            {"type": "Ready", "status": str(ready)},
        ]
        status = {
            "phase": "Running",
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": statuses,
        }
        text = json.dumps(status, sort_keys=True)
        if text == self.status_sent:
            return
        stamped = dict(status)
        stamped["conditions"] = [{**c, "lastTransitionTime": now()} for c in conditions]
        code, out = self.kubelet.api.call(
            "PATCH",
            f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
            {"status": stamped},
            "application/merge-patch+json",
        )
        if code == 200:
            self.status_sent = text
        else:
            log.warning("status of %s/%s: %s %s", self.ns, self.name, code, out)


class MissingSource(Exception):
    """Something a pod needs is not there yet (a Secret, a ConfigMap): the kubelet retries, as Kubernetes does."""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _kill(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def terminate(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    _kill(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _kill(proc, signal.SIGKILL)
