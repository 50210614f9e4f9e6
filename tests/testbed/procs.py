"""Processes of the test bed: free ports, start with captured logs, wait with a deadline, stop by pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir(*parts: str) -> Path:
    """Directory for cached binaries and build outputs, outside the repo."""
    base = Path(os.environ.get("MESHPLUG_CACHE", Path.home() / ".cache" / "meshplug"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


#: ports this process has handed out: the kernel may give a port just closed to the next bind(0), so a bed asking for
#: several ports before it starts anything could get one twice (the fresh-clone run saw an agent and Envoy given the
#: same listener port). A port is handed out once per process; beds bind theirs soon after.
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not handed out before by this process."""
    with _HANDED_OUT_LOCK:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
    raise RuntimeError(f"no free port left that this process has not handed out ({len(_HANDED_OUT)} so far)")


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # a probe that fails is the same as "not yet"
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def tls_ready(port: int, ca: Path) -> bool:
    """A TLS handshake with 127.0.0.1:`port` verifies against `ca` (raises until it does: poll it)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        return True


@dataclass
class Proc:
    """A started process with its log file. `stop()` ends it (and its process group) by pid."""

    name: str
    argv: Sequence[str]
    popen: subprocess.Popen[bytes]
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as `kill -9` would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


def start(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    ready: Callable[[], bool] | None = None,
    timeout: float = 30.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ports: Mapping[str, int] | None = None,
) -> Proc:
    """Start `argv` in its own process group, logging to `log_dir/<name>.log`; wait for `ready`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
    proc = Proc(name=name, argv=argv, popen=popen, log_path=log_path, ports=dict(ports or {}))
    if ready is not None:

        def _ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{name} exited with {proc.popen.returncode}:\n{proc.log()[-4000:]}")
            return ready()

        try:
            wait_until(_ready, timeout=timeout, what=f"{name} to become ready")
        except BaseException:
            log_tail = proc.log()[-4000:]
            proc.stop()
            raise RuntimeError(f"{name} did not become ready; log tail:\n{log_tail}") from None
    return proc


@contextlib.contextmanager
def running(*args: object, **kwargs: object) -> Iterator[Proc]:
    """`start(...)` as a context manager that always stops the process."""
    proc = start(*args, **kwargs)  # type: ignore[arg-type]
    try:
        yield proc
    finally:
        proc.stop()


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[Callable[[], None]]:
    """The process ``pid`` stopped (SIGSTOP) inside the block and continued (SIGCONT) at its end, whatever happens,
    or earlier by the function the block gets: a test orders what real components see and do by holding one of
    them still, not by timing."""
    held = [True]

    def resume() -> None:
        if held[0]:
            held[0] = False
            os.kill(pid, signal.SIGCONT)

    os.kill(pid, signal.SIGSTOP)
    try:
        yield resume
    finally:
        resume()


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), from /proc."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def which_or_fail(binary: str, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} not found on PATH; {hint}")
    return path


@dataclass
class Peer:
    """A test-bed server run as its own Python process on a free port (tests/testbed/grpcpeer.py, wspeer.py)."""

    port: int
    proc: Proc

    def stop(self) -> None:
        self.proc.stop()


def start_peer(script: Path, *, name: str, log_dir: Path) -> Peer:
    """Run `python script PORT` on a free port; ready when the port accepts connections."""
    port = free_port()
    proc = start(
        name,
        [sys.executable, str(script), str(port)],
        log_dir=log_dir,
        ready=lambda: port_open(port),
        timeout=20.0,
        ports={"main": port},
    )
    return Peer(port=port, proc=proc)
