"""Network and mount namespaces for the test bed's pods: one bridge on the host, one namespace pair per pod.

Used by tests/testbed/istio*.py: each sidecar or gateway pod runs pilot-agent + Envoy (which bind the fixed
ports 15000, 15020, 15021, 15090 and cache modules under the hard-coded /var/lib/istio) in its own network and
mount namespace, reachable from the host at its pod IP on a bridge that only the test session uses.

- `Bridge`: a Linux bridge in the host's network namespace with a private /24 chosen free at creation; the host
  side is ``.1`` (istiod and the operator's module server listen there), pods get ``.2`` and up. Deleted by
  `delete()`; every veth on it goes with its pod's namespace.
- `PodNetns`: a holder process (``unshare --net --mount --propagation private``) whose namespaces the pod's
  processes join through ``nsenter``. Inside: ``lo`` up, a veth on the bridge with the pod IP and a default route
  via the host; ``/var/lib/istio``, ``/var/local`` and ``/etc/hosts`` are bind mounts of the pod's own files
  (``varlib``, ``varlocal``, ``hosts``: cluster names such as istiod's resolve there), so a ConfigMap volume
  mounted below /var/local is written from the host side. Stopping the holder (by pid) removes the namespaces and
  the veth.

Needs root (the test bed runs as root); nothing here touches the host beyond the bridge and an empty
/var/lib/istio mount point.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed import procs

#: private ranges the bridge's /24 is picked from (never one an interface of the host already uses)
_CANDIDATES = [f"10.{a}.{b}.0/24" for a in range(200, 250) for b in range(0, 256, 7)]
ISTIO_DATA_MOUNT = Path("/var/lib/istio")
VAR_LOCAL = Path("/var/local")


def _run(argv: Sequence[str]) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    for line in _run(["ip", "-4", "-o", "addr", "show"]).splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    for line in _run(["ip", "-4", "route", "show"]).splitlines():
        dest = line.split()[0]
        if dest != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dest, strict=False))
    return nets


@dataclass
class Bridge:
    name: str
    network: ipaddress.IPv4Network
    _next: int = 2
    _veths: int = 0

    @property
    def host_ip(self) -> str:
        return str(self.network.network_address + 1)

    @classmethod
    def create(cls) -> Bridge:
        used = _used_networks()
        rng = random.Random(os.getpid())  # picking a subnet, not a secret
        candidates = _CANDIDATES[:]
        rng.shuffle(candidates)
        for cidr in candidates:
            net = ipaddress.IPv4Network(cidr)
            if any(net.overlaps(u) for u in used):
                continue
            name = f"mpbr{os.getpid() % 100000}"
            _run(["ip", "link", "add", name, "type", "bridge"])
            bridge = cls(name=name, network=net)
            try:
                _run(["ip", "addr", "add", f"{bridge.host_ip}/24", "dev", name])
                _run(["ip", "link", "set", name, "up"])
            except BaseException:
                bridge.delete()
                raise
            return bridge
        raise RuntimeError("no free private /24 for the test bed's bridge")

    def next_ip(self) -> str:
        ip = str(self.network.network_address + self._next)
        self._next += 1
        return ip

    def veth_name(self) -> str:
        self._veths += 1
        return f"{self.name[:8]}v{self._veths}"

    def free_port(self) -> int:
        """A TCP port free on the host side of the bridge right now."""
        import socket  # only here

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((self.host_ip, 0))
            return int(s.getsockname()[1])

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.name], capture_output=True, check=False)


@dataclass
class PodNetns:
    """A pod's network + mount namespaces, held by one process; join with `enter()`."""

    ip: str
    root: Path  # the pod's directory on the host: varlib/ (-> /var/lib/istio), varlocal/ (-> /var/local)
    holder: procs.Proc
    pid: int  # the process inside the namespaces (the holder's child)
    veth: str
    _extra: list[procs.Proc] = field(default_factory=list)

    @property
    def varlocal(self) -> Path:
        return self.root / "varlocal"

    def enter(self, *argv: str) -> list[str]:
        """argv prefixed to run inside the pod's network and mount namespaces."""
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "--", *argv]

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.enter(*argv), capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        self.holder.stop()  # its namespaces go with it, and the veth with the network namespace


def start_pod_netns(
    bridge: Bridge, root: Path, log_dir: Path, name: str, hosts: Mapping[str, str] | None = None
) -> PodNetns:
    """A fresh namespace pair on ``bridge`` with the next free pod IP; its directories under ``root``; ``hosts``
    (name -> address) is the pod's /etc/hosts beside localhost (what cluster DNS would answer)."""
    ISTIO_DATA_MOUNT.mkdir(parents=True, exist_ok=True)  # an empty mount point on the host
    for sub in ("varlib/data", "varlocal"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = ["127.0.0.1 localhost", *(f"{addr} {host}" for host, addr in sorted((hosts or {}).items()))]
    (root / "hosts").write_text("\n".join(lines) + "\n")
    pidfile = root / "netns.pid"
    pidfile.unlink(missing_ok=True)
    script = (
        f"echo $$ > {pidfile}; ip link set lo up; "
        f"mount --bind {root / 'varlib'} {ISTIO_DATA_MOUNT}; mount --bind {root / 'varlocal'} {VAR_LOCAL}; "
        f"mount --bind {root / 'hosts'} /etc/hosts; "
        "exec sleep infinity"
    )
    holder = procs.start(
        f"netns-{name}",
        ["unshare", "--net", "--mount", "--propagation", "private", "--fork", "--kill-child", "sh", "-c", script],
        log_dir=log_dir,
        ready=lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(),
        timeout=10,
    )
    pid = int(pidfile.read_text().strip())
    ip = bridge.next_ip()
    veth = bridge.veth_name()
    peer = f"{veth}p"
    try:
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer])
        _run(["ip", "link", "set", peer, "netns", str(pid)])
        _run(["ip", "link", "set", veth, "master", bridge.name, "up"])
        inside = ["nsenter", "-t", str(pid), "-n", "--"]
        _run([*inside, "ip", "addr", "add", f"{ip}/24", "dev", peer])
        _run([*inside, "ip", "link", "set", peer, "up"])
        _run([*inside, "ip", "route", "add", "default", "via", bridge.host_ip])
    except BaseException:
        holder.stop()
        raise
    return PodNetns(ip=ip, root=root, holder=holder, pid=pid, veth=veth)
