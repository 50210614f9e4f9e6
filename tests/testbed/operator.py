"""`meshplug operator` as a real process of the test bed: start it against a test-bed apiserver, read its metrics.

Used by tests/integration/test_kube_operator.py, test_operator_*.py and bench/operator_scale.py. The operator
listens on free 127.0.0.1 ports (module server over HTTP and HTTPS, metrics, kopf liveness); its own namespace
(where it keeps its identity Secret) is the lease namespace, else the first watched one, else ``default``;
readiness is /healthz of the metrics server (standby replicas and replicas missing permissions answer 503 there,
so `ready` can be turned off).
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import procs


@dataclass
class Operator:
    proc: procs.Proc
    metrics_port: int
    module_port: int  # plain HTTP: signed URLs
    module_tls_port: int = 0  # HTTPS: agents with their ServiceAccount token
    liveness_port: int = 0  # kopf's liveness endpoint (/healthz); a standby answers it itself

    def alive(self) -> bool:
        """What a Deployment's livenessProbe sees: /healthz on the liveness port answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=5) as resp:
                return int(resp.status) == 200
        except OSError:  # refused, or an HTTP error status
            return False

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics: 'name{labels}' -> value."""
        status, text = self.get("/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def healthy(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.stop()


def start_operator(
    kubeconfig: Path,
    work_dir: Path,
    *,
    namespaces: Sequence[str] = (),
    name: str = "operator",
    extra: Sequence[str] = (),
    wait_healthy: bool = True,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    allow_loopback: bool = True,
    module_ports: tuple[int, int] | None = None,
) -> Operator:
    """The operator on 127.0.0.1; ``allow_loopback``: the test bed's sources and module server are on loopback, so
    it opts in explicitly (`--allow-loopback`; a cluster install refuses loopback); ``module_ports``: the module
    server's (plain, TLS) ports, e.g. an earlier operator's (as behind a Service, the agents keep its address)."""
    metrics_port = procs.free_port()
    module_port, module_tls_port = module_ports or (procs.free_port(), procs.free_port())
    liveness_port = procs.free_port()
    # the operator's own namespace (its identity Secret): the lease namespace, else the first watched one
    lease = next((a.split("=", 1)[1] for a in extra if a.startswith("--lease-namespace=")), "")
    own = lease or (namespaces[0] if namespaces else "default")
    argv = [
        sys.executable,
        "-m",
        "meshplug",
        "operator",
        f"--kubeconfig={kubeconfig}",
        *(f"--namespace={ns}" for ns in namespaces),
        f"--module-listen=127.0.0.1:{module_port}",
        "--module-host=127.0.0.1",
        f"--module-port={module_port}",
        f"--module-tls-listen=127.0.0.1:{module_tls_port}",
        f"--module-tls-port={module_tls_port}",
        f"--identity-namespace={own}",
        f"--cache-dir={work_dir / 'cache'}",
        f"--metrics-listen=127.0.0.1:{metrics_port}",
        f"--liveness=http://127.0.0.1:{liveness_port}/healthz",
        *(["--allow-loopback"] if allow_loopback else []),
        *extra,
    ]
    op = Operator(
        proc=None,  # type: ignore[arg-type]
        metrics_port=metrics_port,
        module_port=module_port,
        module_tls_port=module_tls_port,
        liveness_port=liveness_port,
    )
    op.proc = procs.start(
        name,
        argv,
        log_dir=work_dir / "logs",
        ready=(op.healthy if wait_healthy else (lambda: procs.port_open(metrics_port))),
        timeout=timeout,
        env=env,
        ports={"metrics": metrics_port, "modules": module_port, "modules-tls": module_tls_port},
    )
    return op
