"""The operator's Prometheus metrics and the small HTTP server that serves them (``/metrics``, ``/healthz``).

Recorded by `meshplug.controller.reconcile` (reconciles, pushes, pods ready) and read from `apply.Writer`
(API requests) and `fetch.FetchMetrics` (module supply, appended as is); served by `meshplug operator
--metrics-listen`. Text exposition format, no client library::

    meshplug_operator_reconciles_total{result}            ok | retry | permanent | error
    meshplug_operator_pushes_total{result}                ack | nack | unreachable | unauthorized
    meshplug_operator_pods_ready{namespace,plugin}        selected pods whose data plane confirmed the digest
    meshplug_operator_pods_selected{namespace,plugin}     selected pods
    meshplug_operator_api_requests_total{method}          Kubernetes API requests sent by the operator's writer
    meshplug_operator_leader                              1 while this replica holds the Lease
    meshplug_operator_healthy                             0 when the last reconcile was refused by the API (RBAC)
    meshplug_wasm_*                                       module supply (meshplug.fetch)

``/healthz`` answers 200 while healthy, 503 with the reason otherwise (e.g. a missing RBAC permission).
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any

from meshplug.serving import ServerThread

Key = tuple[str, str]


class Metrics:
    """Counters and gauges; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reconciles: dict[str, int] = {r: 0 for r in ("ok", "retry", "permanent", "error")}
        self._pushes: dict[str, int] = {r: 0 for r in ("ack", "nack", "unreachable", "unauthorized")}
        self._pods: dict[Key, tuple[int, int]] = {}
        self.leader = False
        self.unhealthy: str = ""  # why the operator is unhealthy ("" when healthy)

    def reconciled(self, result: str) -> None:
        with self._lock:
            self._reconciles[result] = self._reconciles.get(result, 0) + 1

    def pushed(self, result: str) -> None:
        with self._lock:
            self._pushes[result] = self._pushes.get(result, 0) + 1

    def pods(self, key: Key, ready: int, total: int) -> None:
        with self._lock:
            self._pods[key] = (ready, total)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._pods.pop(key, None)

    def reconciles(self, result: str) -> int:
        with self._lock:
            return self._reconciles.get(result, 0)

    def exposition(self, requests: dict[str, int]) -> str:
        with self._lock:
            reconciles, pushes, pods = dict(self._reconciles), dict(self._pushes), dict(self._pods)
        lines = [
            "# HELP meshplug_operator_reconciles_total WasmPlugin reconciles by result.",
            "# TYPE meshplug_operator_reconciles_total counter",
            *(f'meshplug_operator_reconciles_total{{result="{r}"}} {n}' for r, n in sorted(reconciles.items())),
            "# HELP meshplug_operator_pushes_total Config pushes to agents by result.",
            "# TYPE meshplug_operator_pushes_total counter",
            *(f'meshplug_operator_pushes_total{{result="{r}"}} {n}' for r, n in sorted(pushes.items())),
            "# HELP meshplug_operator_pods_ready Selected pods whose data plane confirmed the plugin's digest.",
            "# TYPE meshplug_operator_pods_ready gauge",
            *(
                f'meshplug_operator_pods_ready{{namespace="{ns}",plugin="{n}"}} {r}'
                for (ns, n), (r, _) in sorted(pods.items())
            ),
            "# HELP meshplug_operator_pods_selected Pods a WasmPlugin selects.",
            "# TYPE meshplug_operator_pods_selected gauge",
            *(
                f'meshplug_operator_pods_selected{{namespace="{ns}",plugin="{n}"}} {t}'
                for (ns, n), (_, t) in sorted(pods.items())
            ),
            "# HELP meshplug_operator_api_requests_total Kubernetes API requests sent by the operator's writer.",
            "# TYPE meshplug_operator_api_requests_total counter",
            *(f'meshplug_operator_api_requests_total{{method="{m}"}} {n}' for m, n in sorted(requests.items())),
            "# HELP meshplug_operator_leader 1 while this replica holds the leader Lease.",
            "# TYPE meshplug_operator_leader gauge",
            f"meshplug_operator_leader {int(self.leader)}",
            "# HELP meshplug_operator_healthy 0 while the API refuses the operator something it needs.",
            "# TYPE meshplug_operator_healthy gauge",
            f"meshplug_operator_healthy {int(not self.unhealthy)}",
        ]
        return "\n".join(lines) + "\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._send(200, self.server.render(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/healthz":
            reason = self.server.metrics.unhealthy
            self._send(503 if reason else 200, reason or "ok")
        else:
            self._send(404, "not found")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics, render: Callable[[], str]) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.render = render


class MetricsServer(ServerThread):
    """Serves ``render()`` at /metrics and the health of ``metrics`` at /healthz on ``host:port`` until `stop`."""

    def __init__(self, metrics: Metrics, render: Callable[[], str], *, host: str, port: int) -> None:
        super().__init__(_Server((host, port), metrics, render), name="meshplug-metrics", poll_interval=0.1)
