"""Operator at scale against the real kube-apiserver (+ etcd) of the test bed: 5,000 pods, 200 WasmPlugins.

Starts etcd + kube-apiserver (free ports), the WasmPlugin and EnvoyFilter CRDs, ``--workloads`` Deployments with
``--pods`` Pods spread over them (status set through the status subresource: no kubelet; each carries Istio's
injection annotation, so the istio plane selects it), then `meshplug operator` as a process, waited for until its
caches listed and watch (an operator runs before plugins are applied). Applies ``--plugins`` WasmPlugins (istio data
plane, ConfigMap route; each selects one workload's pods) as fast as it can and prints, from apply to the operator's
status for that generation with every selected pod counted (``status.pods.total``, seen through a watch of the
plugins): per-plugin p50/p95/p99/max, the time until all are counted and the operator's RSS. These pods have no
proxies (5,000 Envoys do not fit this machine) and were created before the plugins: each plugin ends Ready=False
``RestartNeeded`` (the module's ConfigMap mounts at admission), the state in which the operator has rendered,
applied and judged every selected pod; a proxy's own part of Ready is bench/ready.py's. API requests: counted in the
operator's client by method and resource (its writer, read from its /metrics) and, for everything it sends including
kopf's watches and finalizer patches, at the apiserver (``apiserver_request_total`` minus this script's own
requests); per reconcile, the time keys waited for a worker and a reconcile took (the operator's histograms). Then
the same after a pod churn (``--churn`` pods deleted and re-created), with the operator's requests and CPU time per
pod changed (O(1): flat as --pods grows), a churn of pod updates that change no plugin's selection (``--churn``
status patches), and the requests of an idle ``--idle`` s. Bounded: every wait has a deadline (``--deadline`` s
overall).

    .venv/bin/python bench/operator_scale.py [--pods 500] [--plugins 50]
    .venv/bin/python bench/operator_scale.py --pods 5000 --plugins 200 --workloads 50 --churn 500   (issue's size)
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import wasmtime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import rss_mib
from meshplug.controller import index as index_mod
from tests.testbed import fixtures_kube, procs
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod

NS = "scale"
PLUGINS = f"/apis/meshplug.io/v1alpha1/namespaces/{NS}/wasmplugins"
MODULE = wasmtime.wat2wasm(
    """(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1"))
 (func (export "malloc") (param i32) (result i32) i32.const 1024)
 (func (export "proxy_on_context_create") (param i32 i32))
 (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0))"""
)


class Client:
    """The bench's own API calls, counted (subtracted from the apiserver's totals)."""

    def __init__(self, kube: kube_mod.Kube) -> None:
        self.kube = kube
        self.requests = 0

    def __call__(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        self.requests += 1
        status, out = self.kube.request(method, path, body, content_type=content_type)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {out}")
        return out


def apiserver_requests(client: Client) -> float:
    """Sum of apiserver_request_total (every request the apiserver served; the scrape itself counts)."""
    text = client("GET", "/metrics")
    return sum(
        float(line.rpartition(" ")[2]) for line in str(text).splitlines() if line.startswith("apiserver_request_total{")
    )


def cpu_s(pid: int) -> float:
    """The CPU time (user + system, s) process ``pid`` used so far, its ended threads included (/proc stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values`` (nearest rank below)."""
    return values[int(q * (len(values) - 1))]


def counted(obj: dict[str, Any], want: int) -> bool:
    """The operator's status for this generation, with every selected pod counted."""
    st = obj.get("status") or {}
    ready = [c for c in st.get("conditions") or [] if c["type"] == "Ready"]
    return (
        st.get("observedGeneration") == obj["metadata"].get("generation")
        and (st.get("pods") or {}).get("total") == want
        and bool(ready)
    )


class PluginWatch:
    """The plugins as the apiserver streams them (one watch instead of polling lists, which would load the
    apiserver the operator is measured against): when each first had its status counted, and the latest of each."""

    def __init__(self, kube: kube_mod.Kube, client: Client, want: int) -> None:
        self.kube, self.want = kube, want
        self.counted_at: dict[str, float] = {}
        self.latest: dict[str, dict[str, Any]] = {}
        self.changed = threading.Condition()
        listing = client("GET", PLUGINS)
        client.requests += 1  # the watch itself
        for obj in listing["items"]:
            self._see(obj)
        url = urllib.parse.urlsplit(kube.url)
        self.conn = http.client.HTTPSConnection(url.hostname or "", url.port, context=kube.ssl_context())
        version = listing["metadata"]["resourceVersion"]
        self.conn.request(
            "GET",
            f"{PLUGINS}?watch=1&resourceVersion={version}&timeoutSeconds=3600",
            headers={"Authorization": f"Bearer {kube.admin_token}"},
        )
        self.resp = self.conn.getresponse()
        threading.Thread(target=self._run, name="plugin-watch", daemon=True).start()

    def _see(self, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self.changed:
            self.latest[name] = obj
            if name not in self.counted_at and counted(obj, self.want):
                self.counted_at[name] = time.monotonic()
            self.changed.notify_all()

    def _run(self) -> None:
        for line in self.resp:
            event = json.loads(line)
            if event.get("type") in ("ADDED", "MODIFIED"):
                self._see(event["object"])

    def wait(self, done: Any, deadline: float, what: str) -> None:
        with self.changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} before the deadline")
                self.changed.wait(min(left, 1.0))

    def all_counted(self) -> bool:
        return all(counted(o, self.want) for o in self.latest.values())


def pod_body(i: int, workloads: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"pod-{i}",
            "labels": {"app": f"app-{i % workloads}"},
            "annotations": {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
    }


def plugin_spec(i: int, workloads: int, module: Path) -> dict[str, Any]:
    return {
        "url": f"file://{module}",
        "sha256": hashlib.sha256(MODULE).hexdigest(),
        "selector": {"matchLabels": {"app": f"app-{i % workloads}"}},
        "priority": i,
        "pluginConfig": {"n": i},
    }


def index_cost(pods: int, plugins: int, workloads: int) -> str:
    """The operator's watch index (`meshplug.controller.index`) in this process, fed this run's plugins and pods:
    CPU time per pod event (each pod added, then given another IP; both ask which plugins select it)."""
    idx = index_mod.Index()
    for i in range(plugins):
        meta = {"namespace": NS, "name": f"plugin-{i}", "generation": 1}
        idx.plugin_event(None, {"kind": "WasmPlugin", "metadata": meta, "spec": plugin_spec(i, workloads, Path("/m"))})
    queued = 0
    started = time.process_time()
    for i in range(pods):
        body = {**pod_body(i, workloads), "status": {"podIP": f"10.1.{i // 250}.{i % 250 + 1}"}}
        body["metadata"]["namespace"] = NS
        queued += len(idx.pod_event("ADDED", body))
        body["status"] = {"podIP": f"10.2.{i // 250}.{i % 250 + 1}"}
        queued += len(idx.pod_event("MODIFIED", body))
    spent = time.process_time() - started
    return f"{1e6 * spent / (2 * pods):.1f} us CPU per pod event ({queued / (2 * pods):.1f} plugins queued per event)"


def make_pod(client: Client, i: int, workloads: int) -> None:
    client("POST", f"/api/v1/namespaces/{NS}/pods", pod_body(i, workloads))
    status = {
        "status": {
            "phase": "Running",
            "podIP": f"10.1.{i // 250}.{i % 250 + 1}",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    client("PATCH", f"/api/v1/namespaces/{NS}/pods/pod-{i}/status", status, "application/merge-patch+json")


def synced(op: operator_mod.Operator) -> bool:
    """The operator is as a running one is when plugins are applied: its caches listed (pods, the ConfigMaps and
    EnvoyFilters it renders) and watching, and nothing queued."""
    m = op.metrics()
    watching = all(
        m.get(f'meshplug_operator_api_requests_total{{method="WATCH",resource="{r}"}}', 0) >= 1
        for r in ("pods", "configmaps", "envoyfilters")
    )
    return watching and m.get("meshplug_operator_workqueue_depth") == 0


def operator_counts(op: operator_mod.Operator) -> tuple[float, float]:
    m = op.metrics()
    writes = sum(v for k, v in m.items() if k.startswith("meshplug_operator_api_requests_total"))
    reconciles = sum(v for k, v in m.items() if k.startswith("meshplug_operator_reconciles_total"))
    return writes, reconciles


def stages(log_path: Path, since: int) -> str:
    """Mean time per reconcile stage (the operator's ``reconcile stages`` log lines after byte ``since``)."""
    sums: dict[str, float] = {}
    n = 0
    with log_path.open("rb") as f:
        f.seek(since)
        for line in f:
            text = line.decode(errors="replace")
            if "reconcile stages " not in text:
                continue
            n += 1
            for stage, ms in json.loads(text.partition("reconcile stages ")[2])["ms"].items():
                sums[stage] = sums.get(stage, 0.0) + ms
    return ", ".join(f"{k} {v / n:.0f} ms" for k, v in sums.items()) if n else "none logged"


def breakdown(before: dict[str, float], after: dict[str, float], reconciles: float) -> str:
    """The operator's side between two /metrics reads: its API requests by method and resource, per reconcile,
    and the mean time a due key waited for a worker and a reconcile took."""

    def delta(prefix: str) -> dict[str, float]:
        return {k: after[k] - before.get(k, 0.0) for k in after if k.startswith(prefix)}

    requests = {
        k.partition("{")[2].rstrip("}").replace('"', "").replace("method=", "").replace(",resource=", " "): v
        for k, v in delta("meshplug_operator_api_requests_total{").items()
        if v
    }
    per = ", ".join(f"{k} {v / max(reconciles, 1):.2f}" for k, v in sorted(requests.items(), key=lambda kv: -kv[1]))

    def mean(family: str) -> str:
        total = sum(delta(f"{family}_sum").values())
        n = sum(delta(f"{family}_count").values())
        return f"{1000 * total / n:.0f} ms" if n else "-"

    return (
        f"  operator requests per reconcile by method and resource: {per or 'none'}\n"
        f"  mean queue wait {mean('meshplug_operator_workqueue_wait_seconds')}, "
        f"mean reconcile {mean('meshplug_operator_reconcile_duration_seconds')}"
    )


def main() -> int:  # noqa: PLR0915 - the benchmark's one run, read top to bottom
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--plugins", type=int, default=50)
    ap.add_argument("--workloads", type=int, default=10)
    ap.add_argument("--churn", type=int, default=50)
    ap.add_argument("--idle", type=float, default=10.0)
    ap.add_argument("--deadline", type=float, default=600.0)
    ap.add_argument("--workers", type=int, default=0, help="the operator's --workers (0: its default)")
    ap.add_argument("--index-only", action="store_true", help="only the in-process index figure (no apiserver)")
    args = ap.parse_args()
    cost = index_cost(args.pods, args.plugins, args.workloads)
    print(f"operator index, {args.plugins} plugins over {args.pods} pods: {cost}")
    if args.index_only:
        return 0
    deadline = time.monotonic() + args.deadline
    with tempfile.TemporaryDirectory(prefix="meshplug-scale-") as tmp:
        work = Path(tmp)
        with kube_mod.control_plane(work / "kube", work / "logs") as kube:
            client = Client(kube)
            fixtures_kube.install_crd(kube, fixtures_kube.crd_body())
            fixtures_kube.install_crd(kube, fixtures_kube.ENVOYFILTER_CRD)
            fixtures_kube.ensure_namespace(kube, NS)
            t = time.monotonic()
            for w in range(args.workloads):
                labels = {"app": f"app-{w}"}
                client(
                    "POST",
                    f"/apis/apps/v1/namespaces/{NS}/deployments",
                    {
                        "metadata": {"name": f"app-{w}"},
                        "spec": {
                            "selector": {"matchLabels": labels},
                            "template": {
                                "metadata": {"labels": labels},
                                "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
                            },
                        },
                    },
                )
            for i in range(args.pods):
                make_pod(client, i, args.workloads)
            print(
                f"setup: {args.workloads} Deployments, {args.pods} Pods in {time.monotonic() - t:.1f}s; "
                f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
            )
            modules = work / "modules"
            modules.mkdir()
            (modules / "m.wasm").write_bytes(MODULE)
            op = operator_mod.start_operator(
                kube.kubeconfig,
                work / "op",
                namespaces=[NS],
                extra=[f"--file-root={modules}", *([f"--workers={args.workers}"] if args.workers else [])],
            )
            want = args.pods // args.workloads
            try:
                t = time.monotonic()
                procs.wait_until(lambda: synced(op), timeout=max(1.0, deadline - t), what="the operator's caches")
                print(f"operator: caches listed and watching {time.monotonic() - t:.1f}s after it was healthy")
                watch = PluginWatch(kube, client, want)
                m0 = op.metrics()
                log0 = op.proc.log_path.stat().st_size
                writes0, rec0 = operator_counts(op)
                server0, own0 = apiserver_requests(client), client.requests
                cpu0 = cpu_s(op.proc.pid)
                started: dict[str, float] = {}
                returned: dict[str, float] = {}  # when each POST was answered (the object exists from then on)
                names = [f"plugin-{i}" for i in range(args.plugins)]
                t0 = time.monotonic()
                for i, name in enumerate(names):
                    spec = plugin_spec(i, args.workloads, modules / "m.wasm")
                    body = {
                        "apiVersion": "meshplug.io/v1alpha1",
                        "kind": "WasmPlugin",
                        "metadata": {"name": name},
                        "spec": spec,
                    }
                    started[name] = time.monotonic()
                    client("POST", PLUGINS, body)
                    returned[name] = time.monotonic()
                applied = time.monotonic() - t0
                watch.wait(lambda: len(watch.counted_at) == len(names), deadline, "not every plugin counted its pods")
                times = {n: watch.counted_at[n] - started[n] for n in names}
                after_post = sorted(watch.counted_at[n] - returned[n] for n in names)
                posts = sorted(returned[n] - started[n] for n in names)
                total = max(watch.counted_at.values()) - t0
                writes1, rec1 = operator_counts(op)
                server1, own1 = apiserver_requests(client), client.requests
                cpu1 = cpu_s(op.proc.pid)
                m1 = op.metrics()
                lat = sorted(times.values())
                reconciles = rec1 - rec0
                print(
                    f"apply -> status with all {want} selected pods counted, {args.plugins} plugins over {args.pods} "
                    f"pods: p50 {statistics.median(lat):.2f}s p95 {lat[int(0.95 * (len(lat) - 1))]:.2f}s "
                    f"p99 {lat[int(0.99 * (len(lat) - 1))]:.2f}s max {lat[-1]:.2f}s; all applied in {applied:.2f}s, "
                    f"all counted after {total:.2f}s; operator RSS {rss_mib(op.proc.pid):.0f} MiB, "
                    f"CPU {cpu1 - cpu0:.2f}s"
                )
                print(
                    f"  from each POST's answer: p50 {statistics.median(after_post):.2f}s "
                    f"p95 {pct(after_post, 0.95):.2f}s p99 {pct(after_post, 0.99):.2f}s max {after_post[-1]:.2f}s; "
                    f"a POST took p50 {1000 * statistics.median(posts):.0f} ms, max {1000 * posts[-1]:.0f} ms; "
                    f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
                )
                op_requests = (server1 - server0) - (own1 - own0)  # minus ours (the scrapes cancel out)
                print(
                    f"reconciles: {reconciles:.0f}; API requests per reconcile: {(writes1 - writes0) / reconciles:.1f} "
                    f"(operator's writer), {op_requests / reconciles:.1f} (all operator requests at the apiserver)"
                )
                print(breakdown(m0, m1, reconciles))
                print(f"  mean per reconcile stage: {stages(op.proc.log_path, log0)}")
                sample = client("GET", f"{PLUGINS}/plugin-0")["status"]
                ready = next(c for c in sample["conditions"] if c["type"] == "Ready")
                print(f"  plugin-0: Ready={ready['status']} {ready['reason']}: {ready['message'][:160]}")

                def quiet() -> bool:
                    a = operator_counts(op)[1]
                    time.sleep(1.0)  # a second without reconciles: the operator settled
                    return operator_counts(op)[1] == a and op.metrics().get("meshplug_operator_healthy") == 1

                def churn(what: str, change: Any, pods_changed: int) -> None:
                    m1 = op.metrics()
                    writes1, rec1 = operator_counts(op)
                    server1, own1 = apiserver_requests(client), client.requests
                    cpu1 = cpu_s(op.proc.pid)
                    t1 = time.monotonic()
                    change()

                    watch.wait(watch.all_counted, deadline, "the pod counts did not settle")
                    procs.wait_until(quiet, timeout=max(1.0, deadline - time.monotonic()), what="reconciles to stop")
                    m2 = op.metrics()
                    writes2, rec2 = operator_counts(op)
                    server2, own2 = apiserver_requests(client), client.requests
                    cpu2 = cpu_s(op.proc.pid) - cpu1  # with the idle second quiet() saw last
                    churn_rec = rec2 - rec1
                    ops = (server2 - server1) - (own2 - own1)
                    print(
                        f"{what}: settled in {time.monotonic() - t1 - 1.0:.1f}s, {churn_rec:.0f} reconciles; "
                        f"per pod changed: {ops / max(pods_changed, 1):.2f} operator requests at the apiserver, "
                        f"{(writes2 - writes1) / max(pods_changed, 1):.2f} from its writer "
                        f"({want} pods per workload, {args.plugins // args.workloads} plugins each); "
                        f"operator CPU {1000 * cpu2 / max(pods_changed, 1):.2f} ms per pod changed"
                    )
                    print(breakdown(m1, m2, churn_rec))

                def recreate() -> None:
                    for i in range(args.churn):
                        client("DELETE", f"/api/v1/namespaces/{NS}/pods/pod-{i}?gracePeriodSeconds=0")
                    for i in range(args.churn):
                        make_pod(client, i, args.workloads)

                def touch() -> None:  # a status change no plugin's selection or verdict depends on
                    for i in range(args.churn):
                        patch = {"status": {"message": f"touched {time.monotonic()}"}}
                        path = f"/api/v1/namespaces/{NS}/pods/pod-{i}/status"
                        client("PATCH", path, patch, "application/merge-patch+json")

                churn(f"churn of {args.churn} pods (delete + re-create + status)", recreate, 3 * args.churn)
                churn(f"{args.churn} pod updates that change no selection", touch, args.churn)
                idle0, own_idle0 = apiserver_requests(client), client.requests
                time.sleep(args.idle)  # measuring an idle period, not synchronising
                idle1, own_idle1 = apiserver_requests(client), client.requests
                print(f"idle {args.idle:.0f}s: {(idle1 - idle0) - (own_idle1 - own_idle0):.0f} operator requests")
                print(
                    f"operator RSS at the end: {rss_mib(op.proc.pid):.0f} MiB; "
                    f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
                )
            finally:
                op.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
