"""`make demo`: meshplug installed from its Helm chart alone, used as a user would, on a one-node test-bed cluster.

The same run is the chart-only end-to-end test (tests/integration/test_chart_only.py runs this script): nothing
here writes a Secret, an environment variable or a file that the chart or the operator did not. The steps:

 1. a one-node cluster (tests/testbed/node.py): etcd, kube-apiserver, kube-controller-manager, and the test bed's
    node agent (scheduler + kubelet + kube-proxy), with pods in their own network and mount namespaces;
 2. module sources outside the cluster, on the node's address: an HTTPS origin and an OCI registry, both with a
    private test CA, holding two corpus modules;
 3. ``helm install`` of charts/meshplug with default values plus ``operator.trustedCA`` (the README's one setting
    for sources behind a private CA); the chart's operator Deployment runs on the node;
 4. a namespace labelled ``meshplug.io/inject=enabled`` with an echo Deployment and its Service: the webhook injects
    the agent, the operator made the namespace's agent Secret;
 5. a WasmPlugin (``dataPlane: agent``) from the HTTPS origin, until Ready;
 6. a request through the Service shows the plugin's header;
 7. the operator restarted (rollout) and scaled to 2 replicas; the plugin stays Ready, the CA stays the same;
 8. an update to the second module, from the registry, under steady traffic: no request fails;
 9. the WasmPlugin deleted: the finalizer empties the agent;
10. every Secret write of the run, from the API server's audit log: only Helm and the operator wrote any;
11. the app deleted and ``helm uninstall``: the garbage collector removes every Secret the operator made with its
    owner (the agents' Secret with the app's ReplicaSet, the identity Secret with the operator's Deployment).

    python scripts/demo.py [--keep] [--timeout SECONDS]

Needs what `make demo` installs first: the plugin corpus (`make plugins`), kube-apiserver and the controller manager
(`make kube`), helm (`make helm`), etcd and docker-registry (`make system`); root (network namespaces).
On failure: exit 1 with a one-line reason and the failing component's log tail. Every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `meshplug` and `tests.testbed` importable
    sys.path.insert(0, str(REPO))

from meshplug import injection  # noqa: E402
from tests.corpus import modules as corpus_modules  # noqa: E402
from tests.testbed import helm as helm_mod  # noqa: E402
from tests.testbed import node as node_mod  # noqa: E402
from tests.testbed import origin as origin_mod  # noqa: E402
from tests.testbed import pki, procs  # noqa: E402
from tests.testbed import registry as registry_mod  # noqa: E402

RELEASE, SYSTEM_NS, NS = "mp", "meshplug-system", "demo"
APP, PLUGIN, HEADER = "echo", "demo-headers", "x-meshplug-demo"
OPERATOR = f"{RELEASE}-meshplug-operator"
#: what the operator labels the Secrets it makes (meshplug.controller.identity)
MADE_BY_OPERATOR = "app.kubernetes.io/managed-by=meshplug"
PLUGINS_PATH = f"/apis/meshplug.io/v1alpha1/namespaces/{NS}/wasmplugins"
DEPLOYMENTS = "/apis/apps/v1/namespaces"
APP_PORT = 8080
# the two module versions: corpus plugins that add headers from their JSON configuration
V1 = ("rust/header_rules", "v1 rust/header_rules")
V2 = ("go/headers", "v2 go/headers")


class DemoError(Exception):
    """A failed step: ``component`` names the process whose log explains it ("" = the current step's)."""

    def __init__(self, reason: str, component: str = "") -> None:
        super().__init__(reason)
        self.component = component


@dataclass
class Demo:
    work: Path
    logs: Path
    timeout: float
    stack: contextlib.ExitStack
    started: float = field(default_factory=time.monotonic)
    components: dict[str, procs.Proc] = field(default_factory=dict)
    current: str = ""  # the component the running step depends on most
    step_no: int = 0
    cluster: node_mod.Cluster | None = None
    stop_times: dict[str, float] = field(default_factory=dict)
    # what the steps hand on
    ca_file: Path | None = None
    modules: dict[str, tuple[str, str]] = field(default_factory=dict)  # version -> (url as pods see it, sha256)
    service_port: int = 0  # a host port reaching the app's Service
    ca: str = ""  # the operator's CA certificate, as its identity Secret holds it
    helm_kubeconfig: Path | None = None

    # --- narration and waiting ---

    def step(self, title: str, component: str) -> None:
        self.step_no += 1
        self.current = component
        print(f"[{self.step_no}/{len(STEPS)}] {title} ...", flush=True)

    def say(self, text: str) -> None:
        for line in text.splitlines():
            print(f"      {line}", flush=True)

    def stopper(self, name: str, stop: Callable[[], None]) -> Callable[[], None]:
        """``stop`` as a cleanup callback that records how long stopping ``name`` took."""

        def timed() -> None:
            t0 = time.monotonic()
            try:
                stop()
            finally:
                self.stop_times[name] = time.monotonic() - t0

        return timed

    def track(self, name: str, proc: procs.Proc) -> None:
        self.components[name] = proc

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float | None = None) -> None:
        """Poll with a deadline; a tracked process that exits ends the wait at once with its name."""

        def check() -> bool:
            for name, proc in self.components.items():
                if not proc.alive():
                    raise DemoError(f"{name} exited with {proc.popen.returncode} while waiting for {what}", name)
            return predicate()

        deadline = time.monotonic() + (timeout or self.timeout)
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except DemoError:
                raise
            except Exception as exc:  # a probe that fails is "not yet"
                last = exc
            time.sleep(0.2)
        raise DemoError(
            f"timed out after {timeout or self.timeout:.0f}s waiting for {what}" + (f" ({last})" if last else "")
        )

    @property
    def kube_cluster(self) -> node_mod.Cluster:
        assert self.cluster is not None
        return self.cluster

    def api(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        status, out = self.kube_cluster.kube.request(method, path, body, **kw)
        if status not in ok:
            message = out.get("message", out) if isinstance(out, dict) else out
            raise DemoError(f"{method} {path}: HTTP {status}: {message}", "kube-apiserver")
        return out


# --- helpers -------------------------------------------------------------------------------------------------


def corpus_module(key: str) -> tuple[Path, str]:
    """(wasm path, sha256) of a corpus plugin as `make plugins` built it from this tree's sources."""
    try:
        built = corpus_modules.module(key)
    except KeyError as exc:
        raise DemoError(str(exc.args[0]), "corpus") from None
    return built.path, built.sha256


def request(port: int, path: str = "/", conn: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, str]]:
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers={"user-agent": "meshplug-demo"})
        resp = c.getresponse()
        resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        if own:
            c.close()


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def show_plugin(demo: Demo, obj: dict[str, Any]) -> None:
    """Like `kubectl get mwp -o wide` plus the conditions."""
    st = obj.get("status") or {}
    ready = ready_condition(st)
    rows = [
        ("NAME", "READY", "REASON", "DIGEST", "PODS"),
        (
            obj["metadata"]["name"],
            str(ready.get("status", "")),
            str(ready.get("reason", "")),
            str(st.get("digest", ""))[:19] + "...",
            str((st.get("pods") or {}).get("summary", "")),
        ),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        demo.say("   ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def wait_plugin_ready(demo: Demo, sha256: str) -> dict[str, Any]:
    def ok() -> bool:
        st = dict(demo.api("GET", f"{PLUGINS_PATH}/{PLUGIN}").get("status") or {})
        ready = ready_condition(st)
        return (
            ready.get("status") == "True"
            and st.get("digest") == f"sha256:{sha256}"
            and (st.get("pods") or {}).get("summary") == "1/1"
        )

    try:
        demo.wait(ok, f"WasmPlugin {PLUGIN} Ready with digest sha256:{sha256[:12]}... on 1/1 pods")
    except DemoError as exc:
        st = dict(demo.api("GET", f"{PLUGINS_PATH}/{PLUGIN}").get("status") or {})
        ready = ready_condition(st)
        last = f" (last Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')})" if ready else ""
        raise DemoError(f"{exc}{last}", "operator") from None
    obj: dict[str, Any] = demo.api("GET", f"{PLUGINS_PATH}/{PLUGIN}")
    return obj


def plugin_config(label: str) -> dict[str, Any]:
    return {"request": {"add": {"x-meshplug-plugin": label}}, "response": {"add": {HEADER: label}}}


def operator_secrets(demo: Demo, namespace: str) -> list[dict[str, Any]]:
    """The Secrets of ``namespace`` the operator made (by its label)."""
    out = demo.api("GET", f"/api/v1/namespaces/{namespace}/secrets?labelSelector={MADE_BY_OPERATOR}")
    return list(out.get("items") or [])


def describe(secret: dict[str, Any]) -> str:
    meta = secret["metadata"]
    owners = ", ".join(f"{o['kind']}/{o['name']}" for o in meta.get("ownerReferences") or []) or "nobody"
    return f"{meta['namespace']}/{meta['name']} ({', '.join(sorted(secret.get('data') or {}))}; owned by {owners})"


def operator_pods(demo: Demo) -> list[dict[str, Any]]:
    return demo.kube_cluster.pods(SYSTEM_NS, "app.kubernetes.io/component=operator")


def wait_operators(demo: Demo, replicas: int, what: str) -> list[dict[str, Any]]:
    """The operator Deployment rolled out: ``replicas`` pods of its newest ReplicaSet, one of them Ready (the
    leader; standby replicas stay not-Ready so the Services reach only the leader)."""

    def ok() -> bool:
        dep = demo.api("GET", f"{DEPLOYMENTS}/{SYSTEM_NS}/deployments/{OPERATOR}")
        st = dep.get("status") or {}
        pods = [p for p in operator_pods(demo) if not p["metadata"].get("deletionTimestamp")]
        return (
            st.get("observedGeneration") == dep["metadata"]["generation"]
            and st.get("updatedReplicas") == replicas
            and len(pods) == replicas
            and sum(pod_ready(p) for p in pods) == 1
        )

    demo.wait(ok, what)
    return operator_pods(demo)


# --- the load loop -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Requests sent back to back on keep-alive connections until stopped (bounded by ``limit_s``)."""

    port: int
    limit_s: float
    sent: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    values: list[tuple[float, str]] = field(default_factory=list)  # (time, header value) when it changes
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                self.sent += 1
                try:
                    status, headers = request(self.port, "/load", conn)
                except (OSError, http.client.HTTPException) as exc:
                    self._fail(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    continue
                if status != 200:
                    self._fail(f"HTTP {status}")
                value = headers.get(HEADER, "(none)")
                if not self.values or self.values[-1][1] != value:
                    self.values.append((time.monotonic(), value))
        finally:
            conn.close()

    def _fail(self, why: str) -> None:
        self.failed += 1
        if len(self.failures) < 5:
            self.failures.append(why)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="demo-load", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


# --- the steps -----------------------------------------------------------------------------------------------


def start_cluster(demo: Demo) -> None:
    demo.step("Starting a one-node cluster (etcd, kube-apiserver, controller manager, node agent)", "kube-apiserver")
    cluster = demo.stack.enter_context(node_mod.cluster(demo.work / "cluster", demo.logs))
    demo.cluster = cluster
    for proc in [*cluster.kube.procs, cluster.kubelet]:
        demo.track(proc.name, proc)
    version = demo.api("GET", "/version")
    demo.say(
        f"kube-apiserver {version.get('gitVersion')} at {cluster.kube.url}; node {node_mod.NODE_NAME} at "
        f"{node_mod.NODE_IP} (pods get 10.244.0.x in their own network namespaces)"
    )


def start_sources(demo: Demo) -> None:
    demo.step("Starting module sources outside the cluster: an HTTPS origin and an OCI registry", "origin")
    cluster = demo.kube_cluster
    tls = pki.serving_pki(
        demo.work / "sources-tls",
        ca_cn="demo-private-ca",
        server_cn="modules.demo",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1", node_mod.NODE_IP],
    )
    demo.ca_file = tls.ca_cert
    # the origin: pods reach it at the node's address; this script through a forward on the same port number
    port = procs.free_port()
    cluster.net.forward("127.0.0.1", port, local_port=port)
    origin_argv = [sys.executable, str(REPO / "tests" / "testbed" / "origin.py"), "--port", str(port)]
    origin_argv += ["--cert", str(tls.cert), "--key", str(tls.key), "--host", "0.0.0.0"]
    origin = origin_mod.Origin(proc=None, port=port, ca_file=tls.ca_cert)
    origin.proc = cluster.run_inside("origin", origin_argv, log_dir=demo.logs, ready=origin.healthy, timeout=30)
    demo.track("origin", origin.proc)
    v1_path, v1_sha = corpus_module(V1[0])
    origin.program("/plugins/header_rules.wasm", body=v1_path.read_bytes())
    demo.modules["v1"] = (f"https://{node_mod.NODE_IP}:{port}/plugins/header_rules.wasm", v1_sha)
    # the registry
    reg_port = procs.free_port()
    cluster.net.forward("127.0.0.1", reg_port, local_port=reg_port)
    registry = registry_mod.start_registry(
        "registry",
        demo.work / "registry",
        demo.logs,
        tls=(tls.cert, tls.key),
        ca_file=tls.ca_cert,
        bind="0.0.0.0",
        port=reg_port,
        argv_prefix=node_mod.netns.enter(cluster.net.netns),
    )
    assert registry.proc is not None
    demo.stack.callback(demo.stopper("registry", registry.proc.stop))
    demo.track("registry", registry.proc)
    v2_path, v2_sha = corpus_module(V2[0])
    registry.push_layout("oci-image", "plugins/headers", "v2", v2_path.read_bytes())
    demo.modules["v2"] = (f"oci://{node_mod.NODE_IP}:{reg_port}/plugins/headers:v2", v2_sha)
    demo.say(f"origin https://{node_mod.NODE_IP}:{port}/plugins/header_rules.wasm ({V1[0]}, sha256 {v1_sha[:12]}...)")
    demo.say(f"registry {demo.modules['v2'][0]} ({V2[0]}, sha256 {v2_sha[:12]}...); both signed by a private test CA")


def helm_as_admin(demo: Demo) -> Path:
    """A kubeconfig for helm: a ServiceAccount bound to cluster-admin (so the audit log tells helm's writes apart)."""
    kube = demo.kube_cluster.kube
    demo.api("POST", "/api/v1/namespaces/kube-system/serviceaccounts", {"metadata": {"name": "helm"}}, ok=(201, 409))
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "helm-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "helm", "namespace": "kube-system"}],
    }
    demo.api("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", binding, ok=(201, 409))
    token = kube.service_account_token("kube-system", "helm")
    return kube.kubeconfig_for(token, "system:serviceaccount:kube-system:helm", demo.work / "helm.kubeconfig")


def install_chart(demo: Demo) -> None:
    demo.step("helm install charts/meshplug (default values + operator.trustedCA for the private CA)", "helm")
    assert demo.ca_file is not None
    args = ["install", RELEASE, str(helm_mod.CHART), "-n", SYSTEM_NS, "--create-namespace"]
    args += ["--set-file", f"operator.trustedCA={demo.ca_file}", "--wait", "--timeout", f"{int(demo.timeout)}s"]
    t0 = time.monotonic()
    demo.helm_kubeconfig = helm_as_admin(demo)
    try:
        out = helm_mod.helm(args, kubeconfig=demo.helm_kubeconfig, home=demo.work / "helm", timeout=demo.timeout + 30)
    except (AssertionError, RuntimeError) as exc:
        raise DemoError(str(exc).splitlines()[0], "operator") from None
    status_line = next((ln for ln in out.stdout.splitlines() if ln.startswith("STATUS:")), "STATUS: ?")
    pods = wait_operators(demo, 1, "the operator Deployment to be Available")
    made = operator_secrets(demo, SYSTEM_NS)
    demo.ca = next((s["data"].get("ca.crt", "") for s in made), "")
    demo.say(f"helm install {RELEASE} -n {SYSTEM_NS} --wait: {status_line} after {time.monotonic() - t0:.1f}s")
    demo.say(
        f"operator pod {pods[0]['metadata']['name']} Ready at {pods[0]['status']['podIP']} (run by the node agent)"
    )
    demo.say(f"Secrets the operator made here: {'; '.join(describe(s) for s in made) or 'none'}")


def deploy_app(demo: Demo) -> None:
    demo.step(f"Namespace {NS} labelled {injection.INJECT_KEY}=enabled, Deployment {APP} + Service", "operator")
    demo.api("POST", "/api/v1/namespaces", {"metadata": {"name": NS, "labels": {injection.INJECT_KEY: "enabled"}}})
    labels = {"app": APP}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": f"{node_mod.ECHO_IMAGE}:1",
                            "args": [str(APP_PORT), "0.0.0.0"],
                            "ports": [{"name": "http", "containerPort": APP_PORT}],
                            "readinessProbe": {"tcpSocket": {"port": APP_PORT}, "periodSeconds": 5},
                        }
                    ]
                },
            },
        },
    }
    demo.api("POST", f"{DEPLOYMENTS}/{NS}/deployments", deployment)
    service = {"metadata": {"name": APP}, "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]}}
    svc = demo.api("POST", f"/api/v1/namespaces/{NS}/services", service)
    demo.wait(lambda: any(pod_ready(p) for p in demo.kube_cluster.pods(NS, f"app={APP}")), f"a Ready {APP} pod")
    pod = demo.kube_cluster.pods(NS, f"app={APP}")[0]
    containers = [c["name"] for c in pod["spec"]["containers"]]
    if injection.CONTAINER_NAME not in containers:
        raise DemoError(f"the webhook did not inject the agent: containers {containers}", "operator")
    demo.service_port = demo.kube_cluster.forward(svc["spec"]["clusterIP"], 80)
    demo.say(f"pod {pod['metadata']['name']} Ready at {pod['status']['podIP']}: containers {', '.join(containers)}")
    demo.say(f"Service {APP} at {svc['spec']['clusterIP']}:80 -> the agent's port")
    made = "; ".join(describe(s) for s in operator_secrets(demo, NS)) or "none"
    demo.say(f"Secrets the operator made for the agents: {made}")


def apply_plugin(demo: Demo) -> None:
    url, sha = demo.modules["v1"]
    demo.step(f"Applying WasmPlugin {PLUGIN} (dataPlane: agent, {V1[0]} from the HTTPS origin)", "operator")
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": PLUGIN},
        "spec": {
            "dataPlane": "agent",
            "selector": {"matchLabels": {"app": APP}},
            "url": url,
            "sha256": sha,
            "phase": "STATS",
            "pluginConfig": plugin_config(V1[1]),
        },
    }
    demo.api("POST", PLUGINS_PATH, body, ok=(201,))
    t0 = time.monotonic()
    obj = wait_plugin_ready(demo, sha)
    demo.say(f"Ready after {time.monotonic() - t0:.1f}s (pushed over mutual TLS; the agent fetched over HTTPS):")
    show_plugin(demo, obj)


def send_request(demo: Demo) -> None:
    demo.step(f"Sending a request through Service {APP}", "agent")
    status, headers = request(demo.service_port, "/hello")
    demo.say(f"GET /hello -> {status}; response header {HEADER}: {headers.get(HEADER, '(missing)')}")
    if status != 200 or headers.get(HEADER) != V1[1]:
        raise DemoError(f"expected 200 with {HEADER}: {V1[1]}, got {status} {headers}", "agent")


def restart_and_scale(demo: Demo) -> None:
    demo.step("Restarting the operator (rollout) and scaling it to 2 replicas", "operator")
    path = f"{DEPLOYMENTS}/{SYSTEM_NS}/deployments/{OPERATOR}"
    restart = {"spec": {"template": {"metadata": {"annotations": {"demo.meshplug.io/restartedAt": str(time.time())}}}}}
    before = {p["metadata"]["name"] for p in operator_pods(demo)}
    demo.api("PATCH", path, restart, content_type="application/merge-patch+json")
    pods = wait_operators(demo, 1, "the restarted operator")
    demo.say(f"rollout: {', '.join(sorted(before))} -> {pods[0]['metadata']['name']}")
    demo.api("PATCH", path, {"spec": {"replicas": 2}}, content_type="application/merge-patch+json")
    pods = wait_operators(demo, 2, "2 operator replicas (one leader)")
    roles = ", ".join(f"{p['metadata']['name']} ({'leader' if pod_ready(p) else 'standby'})" for p in pods)
    demo.say(f"replicas: {roles}")
    if next((s["data"].get("ca.crt", "") for s in operator_secrets(demo, SYSTEM_NS)), "") != demo.ca:
        raise DemoError("the operator's CA changed across the restart", "operator")
    wait_plugin_ready(demo, demo.modules["v1"][1])
    status, headers = request(demo.service_port, "/after-restart")
    demo.say(
        f"the operator's CA unchanged; plugin still Ready; GET /after-restart -> {status}, {HEADER}: "
        f"{headers.get(HEADER, '(missing)')}"
    )
    if headers.get(HEADER) != V1[1]:
        raise DemoError(f"the plugin stopped answering after the restart: {headers}", "agent")


def update_plugin(demo: Demo) -> None:
    url, sha = demo.modules["v2"]
    demo.step(f"Updating {PLUGIN} to {V2[0]} from the registry under steady traffic", "operator")
    load = Load(demo.service_port, limit_s=demo.timeout + 60)
    load.start()
    try:
        demo.wait(lambda: load.sent >= 50, "the request loop to get going", timeout=30)
        update = [
            {"op": "replace", "path": "/spec/url", "value": url},
            {"op": "replace", "path": "/spec/sha256", "value": sha},
            {"op": "replace", "path": "/spec/pluginConfig", "value": plugin_config(V2[1])},
        ]
        t0 = time.monotonic()
        demo.api("PATCH", f"{PLUGINS_PATH}/{PLUGIN}", update, content_type="application/json-patch+json")
        obj = wait_plugin_ready(demo, sha)
        took = time.monotonic() - t0
        demo.wait(lambda: load.values[-1][1] == V2[1], f"responses with {HEADER}: {V2[1]}", timeout=30)
        sent_at_ready = load.sent
        demo.wait(lambda: load.sent >= sent_at_ready + 50, "more requests after the switch", timeout=30)
    finally:
        load.finish()
    demo.say(f"Ready with the new digest after {took:.1f}s:")
    show_plugin(demo, obj)
    switches = " -> ".join(v for _, v in load.values)
    demo.say(f"requests sent: {load.sent}, failed: {load.failed}; {HEADER} over time: {switches}")
    if load.failed:
        raise DemoError(f"{load.failed} of {load.sent} requests failed during the update: {load.failures}", "agent")
    if [v for _, v in load.values] != [V1[1], V2[1]]:
        raise DemoError(f"responses did not switch once from v1 to v2: {switches}", "agent")


def delete_plugin(demo: Demo) -> None:
    demo.step(f"Deleting WasmPlugin {PLUGIN}", "operator")
    demo.api("DELETE", f"{PLUGINS_PATH}/{PLUGIN}")
    demo.wait(
        lambda: demo.kube_cluster.kube.request("GET", f"{PLUGINS_PATH}/{PLUGIN}")[0] == 404,
        "the finalizer to release the WasmPlugin",
    )
    demo.wait(lambda: HEADER not in request(demo.service_port, "/bye")[1], "the agent to drop the plugin", timeout=30)
    status, headers = request(demo.service_port, "/bye")
    demo.say(
        f"finalizer pushed the agent an empty set; GET /bye -> {status}, {HEADER}: {headers.get(HEADER, '(none)')}"
    )


def check_secret_writers(demo: Demo) -> None:
    demo.step("Who wrote Secrets (the API server's audit log)", "kube-apiserver")
    operator = f"system:serviceaccount:{SYSTEM_NS}:{OPERATOR}"
    helm = "system:serviceaccount:kube-system:helm"
    writes: dict[str, list[str]] = {}
    for event in node_mod.audit_events(demo.kube_cluster.audit_log):
        if event.get("responseStatus", {}).get("code", 0) >= 300:
            continue
        ref = event.get("objectRef") or {}
        user = event.get("user", {}).get("username", "?")
        writes.setdefault(user, []).append(f"{event['verb']} {ref.get('namespace')}/{ref.get('name', '')}")
    for user, what in sorted(writes.items()):
        label = {operator: "the operator", helm: "helm"}.get(user, user)
        demo.say(f"{label}: {', '.join(sorted(set(what)))}")
    others = {u: w for u, w in writes.items() if u not in (operator, helm)}
    if others:
        raise DemoError(f"Secrets written by someone other than Helm and the operator: {others}")
    if operator not in writes:
        raise DemoError("the audit log shows no Secret written by the operator")


def uninstall(demo: Demo) -> None:
    demo.step(f"Deleting Deployment {APP} and uninstalling the chart", "kube-controller-manager")
    agents, identity = operator_secrets(demo, NS), operator_secrets(demo, SYSTEM_NS)
    demo.api("DELETE", f"{DEPLOYMENTS}/{NS}/deployments/{APP}")
    demo.wait(lambda: not operator_secrets(demo, NS), "the garbage collector to remove the agents' Secret")
    demo.say(f"Deployment {APP} deleted; gone with its ReplicaSet: {'; '.join(describe(s) for s in agents)}")
    args = ["uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout", f"{int(demo.timeout)}s"]
    try:
        helm_mod.helm(args, kubeconfig=demo.helm_kubeconfig, home=demo.work / "helm", timeout=demo.timeout + 30)
    except (AssertionError, RuntimeError) as exc:
        raise DemoError(str(exc).splitlines()[0], "operator") from None
    demo.wait(lambda: not operator_secrets(demo, SYSTEM_NS), "the garbage collector to remove the identity Secret")
    demo.say(
        f"helm uninstall {RELEASE}; gone with the operator's Deployment: {'; '.join(describe(s) for s in identity)}"
    )
    left = [describe(s) for s in demo.api("GET", f"/api/v1/secrets?labelSelector={MADE_BY_OPERATOR}")["items"]]
    demo.say(f"Secrets the operator made, left in the cluster: {'; '.join(left) or 'none'}")
    if left:
        raise DemoError(f"Secrets the operator made outlived their owners: {left}")


STEPS: tuple[Callable[[Demo], None], ...] = (
    start_cluster,
    start_sources,
    install_chart,
    deploy_app,
    apply_plugin,
    send_request,
    restart_and_scale,
    update_plugin,
    delete_plugin,
    check_secret_writers,
    uninstall,
)


# --- failure and cleanup -------------------------------------------------------------------------------------


class Failed(Exception):
    """The demo failed: why (one line) and the log tail of the failing component."""

    def __init__(self, cause: BaseException, reason: str, tail: str) -> None:
        super().__init__(reason)
        self.cause, self.reason, self.tail = cause, reason, tail


def diagnose(demo: Demo, exc: BaseException) -> tuple[str, str]:
    """(one-line reason, log tail of the failing component): a process that died, else the one named; the
    operator and the agent are containers: their logs come from the node agent."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted ({reason if text else 'Ctrl-C'})", ""
    if not isinstance(exc, DemoError):
        reason = f"{type(exc).__name__}: {reason}"
    dead = [n for n, p in demo.components.items() if not p.alive()]
    component = dead[0] if dead else (getattr(exc, "component", "") or demo.current)
    if component in ("operator", "agent") and demo.cluster is not None:
        namespace, selector, container = (
            (SYSTEM_NS, "app.kubernetes.io/component=operator", "operator")
            if component == "operator"
            else (NS, f"app={APP}", injection.CONTAINER_NAME)
        )
        try:
            return reason, demo.cluster.logs(namespace, selector, container, tail=25)
        except RuntimeError:
            return reason, ""
    proc = demo.components.get(component)
    log = proc.log_path if proc is not None else demo.logs / f"{component}.log"
    try:
        lines = log.read_text(errors="replace").splitlines()[-25:]
    except FileNotFoundError:
        return reason, ""  # nothing of that component ran (e.g. a missing prerequisite)
    return reason, f"--- {component}: last lines of {log}\n" + "\n".join(lines)


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP end the demo through the cleanup."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT too: a shell that starts the demo in the background may have set it to ignored
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(demo: Demo) -> None:
    for step in STEPS:
        step(demo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) after a success")
    parser.add_argument("--timeout", type=float, default=180.0, help="deadline of each wait, seconds")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="meshplug-demo-"))
    print(f"meshplug demo: installed from the Helm chart alone, used as a user would (work dir {work})", flush=True)
    code = 0
    demo: Demo | None = None
    with _signals_as_interrupts():
        try:
            with contextlib.ExitStack() as stack:
                demo = Demo(work=work, logs=work / "logs", timeout=args.timeout, stack=stack)
                try:
                    run(demo)
                except BaseException as exc:
                    # diagnose before the cleanup stops the processes: which one failed, its log tail
                    raise Failed(exc, *diagnose(demo, exc)) from exc
        except Failed as failed:
            code = 130 if isinstance(failed.cause, KeyboardInterrupt) else 1
            assert demo is not None
            where = f"at step {demo.step_no}/{len(STEPS)}" if demo.step_no else "before step 1"
            print(f"FAILED {where}: {failed.reason}", flush=True)
            if failed.tail:
                print(failed.tail, flush=True)
            print(f"logs kept in {work}", flush=True)
    assert demo is not None
    elapsed = time.monotonic() - demo.started
    leftovers = [f"{n} (pid {p.pid})" for n, p in demo.components.items() if p.alive()]
    if leftovers:  # the cleanup stops every process it started; say so loudly if one survived
        print(f"still running after the cleanup: {', '.join(leftovers)}", flush=True)
        code = code or 1
    if code == 0:
        print(
            f"demo OK in {elapsed:.1f}s: chart installed, agent injected, plugin applied, operator restarted and "
            "scaled, updated with 0 failed requests, cleaned up; Secrets written only by Helm and the operator"
        )
        if args.keep:
            print(f"logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"demo FAILED after {elapsed:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
