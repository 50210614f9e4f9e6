"""The operator's Prometheus metrics and the small HTTP server that serves them (``/metrics``, ``/healthz``).

Recorded by `meshplug.controller.reconcile` (reconciles, validation, per-plugin Ready and pod counts), the agent
delivery path (pushes) and `handlers` (leader, work queue); read from `apply.Writer` (API requests) and
`fetch.FetchMetrics` (module supply, appended as is); served by `meshplug operator --metrics-listen`. Text
exposition (`meshplug.prometheus`), no client library::

    meshplug_operator_reconciles_total{result}                    ok | retry | permanent | error
    meshplug_operator_reconcile_duration_seconds{result}          histogram of one reconcile
    meshplug_operator_validate_duration_seconds                   histogram of the proxy-wasm ABI check
    meshplug_operator_pushes_total{result}                        ack | nack | unreachable | unauthorized
    meshplug_operator_push_duration_seconds{result}               histogram of one push to one agent
    meshplug_operator_workqueue_depth                             keys queued or being reconciled
    meshplug_operator_workqueue_wait_seconds                      histogram of how long a due key waited for a worker
    meshplug_operator_plugin_ready{namespace,plugin}              1 while the plugin's Ready condition is True
    meshplug_operator_pods_ready{namespace,plugin}                selected pods whose data plane confirmed the digest
    meshplug_operator_pods_selected{namespace,plugin}             selected pods
    meshplug_operator_api_requests_total{method,resource}         Kubernetes API requests sent by the operator
    meshplug_operator_leader                                      1 while this replica holds the Lease
    meshplug_operator_healthy                                     0 when the last reconcile was refused by the API
    meshplug_wasm_*                                               module supply (meshplug.fetch.metrics)

``/healthz`` answers 200 while healthy, 503 with the reason otherwise (e.g. a missing RBAC permission).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from meshplug import prometheus
from meshplug.serving import BoundedHandler, BoundedServer, ServerThread

Key = tuple[str, str]


class Metrics:
    """Counters, gauges and histograms; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reconciles: dict[str, int] = {r: 0 for r in ("ok", "retry", "permanent", "error")}
        self._pushes: dict[str, int] = {r: 0 for r in ("ack", "nack", "unreachable", "unauthorized")}
        self._pods: dict[Key, tuple[int, int]] = {}
        self._ready: dict[Key, bool] = {}
        self.reconcile_seconds = prometheus.Histogram(
            "meshplug_operator_reconcile_duration_seconds", "Duration of one WasmPlugin reconcile, by result."
        )
        self.validate_seconds = prometheus.Histogram(
            "meshplug_operator_validate_duration_seconds", "Duration of the proxy-wasm ABI check of one module."
        )
        self.push_seconds = prometheus.Histogram(
            "meshplug_operator_push_duration_seconds", "Duration of one config push to one agent, by result."
        )
        self.queue_wait_seconds = prometheus.Histogram(
            "meshplug_operator_workqueue_wait_seconds", "How long a due WasmPlugin key waited for a worker."
        )
        #: the work queue's depth (set by the handlers once the queue exists)
        self.queue_depth: Callable[[], int] = lambda: 0
        self.leader = False
        self.unhealthy: str = ""  # why the operator is unhealthy ("" when healthy)

    def reconciled(self, result: str, seconds: float | None = None) -> None:
        with self._lock:
            self._reconciles[result] = self._reconciles.get(result, 0) + 1
        if seconds is not None:
            self.reconcile_seconds.observe(seconds, result=result)

    def validated(self, seconds: float) -> None:
        self.validate_seconds.observe(seconds)

    def pushed(self, result: str, seconds: float | None = None) -> None:
        with self._lock:
            self._pushes[result] = self._pushes.get(result, 0) + 1
        if seconds is not None:
            self.push_seconds.observe(seconds, result=result)

    def pods(self, key: Key, ready: int, total: int) -> None:
        with self._lock:
            self._pods[key] = (ready, total)

    def ready(self, key: Key, ready: bool) -> None:
        with self._lock:
            self._ready[key] = ready

    def forget(self, key: Key) -> None:
        with self._lock:
            self._pods.pop(key, None)
            self._ready.pop(key, None)

    def reconciles(self, result: str) -> int:
        with self._lock:
            return self._reconciles.get(result, 0)

    def exposition(self, requests: dict[tuple[str, str], int]) -> str:
        with self._lock:
            reconciles, pushes = dict(self._reconciles), dict(self._pushes)
            pods, ready = dict(self._pods), dict(self._ready)

        def per_plugin(values: dict[Key, float]) -> list[tuple[prometheus.Labels, float]]:
            return [((("namespace", ns), ("plugin", name)), v) for (ns, name), v in sorted(values.items())]

        lines = [
            *prometheus.family(
                "meshplug_operator_reconciles_total",
                "counter",
                "WasmPlugin reconciles by result.",
                [((("result", r),), n) for r, n in sorted(reconciles.items())],
            ),
            *self.reconcile_seconds.lines(),
            *self.validate_seconds.lines(),
            *prometheus.family(
                "meshplug_operator_pushes_total",
                "counter",
                "Config pushes to agents by result.",
                [((("result", r),), n) for r, n in sorted(pushes.items())],
            ),
            *self.push_seconds.lines(),
            *self.queue_wait_seconds.lines(),
            *prometheus.family(
                "meshplug_operator_workqueue_depth",
                "gauge",
                "WasmPlugin keys queued or being reconciled.",
                [((), self.queue_depth())],
            ),
            *prometheus.family(
                "meshplug_operator_plugin_ready",
                "gauge",
                "1 while the WasmPlugin's Ready condition is True, else 0.",
                per_plugin({k: float(v) for k, v in ready.items()}),
            ),
            *prometheus.family(
                "meshplug_operator_pods_ready",
                "gauge",
                "Selected pods whose data plane confirmed the plugin's digest.",
                per_plugin({k: r for k, (r, _) in pods.items()}),
            ),
            *prometheus.family(
                "meshplug_operator_pods_selected",
                "gauge",
                "Pods a WasmPlugin selects.",
                per_plugin({k: t for k, (_, t) in pods.items()}),
            ),
            *prometheus.family(
                "meshplug_operator_api_requests_total",
                "counter",
                "Kubernetes API requests sent by the operator's writer, by method (WATCH: a watch) and resource.",
                [((("method", m), ("resource", r)), n) for (m, r), n in sorted(requests.items())],
            ),
            *prometheus.family(
                "meshplug_operator_leader", "gauge", "1 while this replica holds the leader Lease.", [((), self.leader)]
            ),
            *prometheus.family(
                "meshplug_operator_healthy",
                "gauge",
                "0 while the API refuses the operator something it needs.",
                [((), not self.unhealthy)],
            ),
        ]
        return "\n".join(lines) + "\n"


class _Handler(BoundedHandler):
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


class _Server(BoundedServer):
    def __init__(self, address: tuple[str, int], metrics: Metrics, render: Callable[[], str]) -> None:
        super().__init__(address, _Handler)
        self.metrics = metrics
        self.render = render


class MetricsServer(ServerThread):
    """Serves ``render()`` at /metrics and the health of ``metrics`` at /healthz on ``host:port`` until `stop`."""

    def __init__(self, metrics: Metrics, render: Callable[[], str], *, host: str, port: int) -> None:
        super().__init__(_Server((host, port), metrics, render), name="meshplug-metrics", poll_interval=0.1)
