"""A private network for the test bed's node: one network namespace with a bridge, and port forwards into it.

Used by tests/testbed/node.py (pods get their own namespaces on the bridge) and the chart-only end-to-end run.
The host's network is never touched: everything lives in a namespace created with ``unshare --net`` by a holder
process (stopped by pid). Inside, ``BRIDGE`` carries ``NODE_IP`` (the node's address: the pods' gateway, and
where "external" servers of a test listen), the whole ``SERVICE_CIDR`` is routed locally (kube-proxy's listeners
bind any ClusterIP), and 127.0.0.1 is the node's own loopback. The test process stays on the host and reaches
addresses inside through `Forward` (like ``kubectl port-forward``): a small process that listens on the host's
127.0.0.1 and connects from inside the namespace. Root is needed (unshare, ip); the test bed runs as root.

    python -m tests.testbed.netns forward --netns /proc/PID/ns/net --to HOST:PORT   # prints the local port
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed import procs

BRIDGE = "mpbr0"
NODE_IP = "10.244.0.1"
POD_PREFIX = "10.244.0."
POD_CIDR_BITS = 24
SERVICE_CIDR = "10.0.0.0/24"
_CLONE_NEWNET = 0x40000000


def ip_cmd(netns: str, *args: str) -> None:
    """Run ``ip ARGS`` inside the network namespace ``netns`` (a /proc/PID/ns/net path)."""
    out = subprocess.run(["nsenter", f"--net={netns}", "--", "ip", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} in {netns}: {out.stderr.strip()}")


def holder(name: str, log_dir: Path, *, wrap: Sequence[str] = ()) -> procs.Proc:
    """A process that only holds a new network namespace (``sleep infinity`` under ``unshare --net``).
    ``wrap`` runs the unshare itself inside another namespace (a pod's holder is started inside the node's)."""
    return procs.start(name, [*wrap, "unshare", "--net", "--", "sleep", "infinity"], log_dir=log_dir)


def netns_of(proc: procs.Proc) -> str:
    """The network namespace path of a holder: its pid is unshare's, which execs sleep in the new namespace."""
    path = f"/proc/{proc.pid}/ns/net"
    deadline = time.monotonic() + 10
    while os.readlink(path) == os.readlink("/proc/self/ns/net"):  # unshare has not switched yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not enter a new network namespace")
        time.sleep(0.01)
    return path


def enter(netns: str) -> list[str]:
    """The argv prefix that runs a command inside ``netns``."""
    return ["nsenter", f"--net={netns}", "--"]


@dataclass
class NodeNet:
    """The node's network namespace (bridge, node IP, service range) and the forwards the test opened into it."""

    holder: procs.Proc
    netns: str
    log_dir: Path
    forwards: list[procs.Proc] = field(default_factory=list)

    def forward(self, host: str, port: int, *, local_port: int = 0) -> int:
        """A port on the host's 127.0.0.1 (``local_port``, else a free one) that reaches ``host:port`` inside."""
        argv = [sys.executable, "-m", "tests.testbed.netns", "forward", "--netns", self.netns, "--to", f"{host}:{port}"]
        proc = procs.start(
            f"forward-{host}-{port}",
            [*argv, "--listen-port", str(local_port)],
            log_dir=self.log_dir,
            cwd=procs.REPO_ROOT,
            ready=lambda: _forward_port(self.log_dir / f"forward-{host}-{port}.log") > 0,
            timeout=30,
        )
        self.forwards.append(proc)
        local = _forward_port(proc.log_path)
        proc.ports["local"] = local
        return local

    def stop(self) -> None:
        for proc in self.forwards:
            proc.stop()
        self.forwards.clear()
        self.holder.stop()


def _forward_port(log: Path) -> int:
    try:
        first = log.read_text().splitlines()[0]
    except (FileNotFoundError, IndexError):
        return 0
    return int(first.split()[-1]) if first.startswith("forwarding from 127.0.0.1:") else 0


def start_node_net(log_dir: Path) -> NodeNet:
    """The node's namespace: loopback up, the bridge with the node IP, the service range local, forwarding on."""
    proc = holder("node-netns", log_dir)
    try:
        netns = netns_of(proc)
        ip_cmd(netns, "link", "set", "lo", "up")
        ip_cmd(netns, "link", "add", BRIDGE, "type", "bridge")
        ip_cmd(netns, "addr", "add", f"{NODE_IP}/{POD_CIDR_BITS}", "dev", BRIDGE)
        ip_cmd(netns, "link", "set", BRIDGE, "up")
        ip_cmd(netns, "route", "add", "local", SERVICE_CIDR, "dev", "lo")  # any ClusterIP is a local address
        subprocess.run(
            [*enter(netns), "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True, capture_output=True, text=True
        )
    except BaseException:
        proc.stop()
        raise
    return NodeNet(holder=proc, netns=netns, log_dir=log_dir)


@contextlib.contextmanager
def node_net(log_dir: Path) -> Iterator[NodeNet]:
    net = start_node_net(log_dir)
    try:
        yield net
    finally:
        net.stop()


# --- the forward process ---------------------------------------------------------------------------------------


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Relay a connection and its upstream both ways (half-closes passed on) until both ends finish; close both.
    The port forwards here and the test bed's kube-proxy (tests/testbed/kubelet_proxy.py) relay with it."""
    await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    for w in (writer, up_writer):
        w.close()


async def _serve_forward(listener: socket.socket, host: str, port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        await splice(reader, writer, up_reader, up_writer)

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.netns")
    sub = parser.add_subparsers(dest="command", required=True)
    fwd = sub.add_parser("forward", help="listen on the host's 127.0.0.1, connect inside a network namespace")
    fwd.add_argument("--netns", required=True)
    fwd.add_argument("--to", required=True, help="HOST:PORT inside the namespace")
    fwd.add_argument("--listen-port", type=int, default=0, help="the host port (0: any free one)")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    listener = socket.create_server(("127.0.0.1", args.listen_port))  # created on the host, before switching
    _setns(args.netns)  # one thread: every socket made from here on is inside the namespace
    print(f"forwarding from 127.0.0.1: {listener.getsockname()[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forward(listener, host, int(port)))


if __name__ == "__main__":
    main()
