"""`make demo`: meshplug's main job end to end on the embedded local test bed, in eight numbered steps.

A real etcd + kube-apiserver, the real Helm chart (webhooks pointed at 127.0.0.1 with a test CA), `meshplug
operator` as a local process (the chart's ServiceAccount and webhook config), an echo app, a Pod the mutating
webhook injects the agent into (its agent runs as a local process at the pod's IP, a 127.0.0.x address, with
the config the webhook wrote; no kubelet, so the script sets the pod's status), a WasmPlugin with a corpus
module served over file://, a request showing the plugin's effect, an update to another module under steady
traffic with no failed request, and the cleanup. Every process is started here and stopped by pid at the end,
also on errors and Ctrl-C. On failure: exit 1 with a one-line reason and the log tail of the failing component.

    python scripts/demo.py [--keep] [--timeout SECONDS]

Needs what `make demo` installs first: the plugin corpus (`make plugins`), kube-apiserver (`make kube`), helm
(`make helm`), etcd (`make system`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `meshplug` and `tests.testbed` importable
    sys.path.insert(0, str(REPO))

from meshplug import injection  # noqa: E402
from tests.testbed import agent as agent_mod  # noqa: E402
from tests.testbed import helm as helm_mod  # noqa: E402
from tests.testbed import kube as kube_mod  # noqa: E402
from tests.testbed import operator as operator_mod  # noqa: E402
from tests.testbed import procs, upstream  # noqa: E402

STEPS = 8
RELEASE, SYSTEM_NS, NS = "mp", "meshplug-system", "demo"
POD, PLUGIN, SECRET = "demo-app", "demo-headers", "meshplug-agent-token"
HEADER = "x-meshplug-demo"
PLUGINS_PATH = f"/apis/meshplug.io/v1alpha1/namespaces/{NS}/wasmplugins"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"
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
    started: float = field(default_factory=time.monotonic)
    components: dict[str, procs.Proc] = field(default_factory=dict)
    current: str = ""  # the component the running step depends on most
    step_no: int = 0
    kube: kube_mod.Kube | None = None
    stop_times: dict[str, float] = field(default_factory=dict)

    def step(self, title: str, component: str) -> None:
        self.step_no += 1
        self.current = component
        print(f"[{self.step_no}/{STEPS}] {title} ...", flush=True)

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
            time.sleep(0.1)
        raise DemoError(
            f"timed out after {timeout or self.timeout:.0f}s waiting for {what}" + (f" ({last})" if last else "")
        )

    def api(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        assert self.kube is not None
        status, out = self.kube.request(method, path, body, **kw)
        if status not in ok:
            message = out.get("message", out) if isinstance(out, dict) else out
            raise DemoError(f"{method} {path}: HTTP {status}: {message}", "kube-apiserver")
        return out


# --- helpers -------------------------------------------------------------------------------------------------


def corpus_module(key: str) -> tuple[Path, str]:
    """(wasm path, sha256) of a built corpus plugin from ~/.cache/meshplug/plugins/index.json."""
    index_path = procs.cache_dir("plugins") / "index.json"
    if not index_path.exists():
        raise DemoError(f"{index_path} missing: run `make plugins` (make demo does)", "corpus")
    entry = json.loads(index_path.read_text()).get(key)
    if not entry or not Path(entry["path"]).exists():
        raise DemoError(f"corpus plugin {key} is not built: run `make plugins`", "corpus")
    return Path(entry["path"]), str(entry["sha256"])


def bindable(ip: str, *ports: int) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def pod_ip(ports: tuple[int, ...]) -> str:
    """A loopback address (the pod's IP) where the injected agent's ports are free."""
    for last in range(200, 254):
        ip = f"127.0.0.{last}"
        if bindable(ip, *ports):
            return ip
    raise DemoError(f"no 127.0.0.x address with ports {ports} free")


def request(
    ip: str, port: int, path: str = "/", conn: http.client.HTTPConnection | None = None
) -> tuple[int, dict[str, str], bytes]:
    own = conn is None
    c = conn or http.client.HTTPConnection(ip, port, timeout=10)
    try:
        c.request("GET", path, headers={"user-agent": "meshplug-demo"})
        resp = c.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        if own:
            c.close()


def ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})


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
    conds = ", ".join(f"{c['type']}={c['status']} ({c.get('reason', '')})" for c in st.get("conditions") or [])
    demo.say(f"conditions: {conds}")


def plugin_status(demo: Demo) -> dict[str, Any]:
    obj = demo.api("GET", f"{PLUGINS_PATH}/{PLUGIN}")
    return dict(obj.get("status") or {})


def wait_plugin_ready(demo: Demo, sha256: str) -> dict[str, Any]:
    def ok() -> bool:
        st = plugin_status(demo)
        ready = ready_condition(st)
        return (
            ready.get("status") == "True"
            and st.get("digest") == f"sha256:{sha256}"
            and (st.get("pods") or {}).get("summary") == "1/1"
        )

    try:
        demo.wait(ok, f"WasmPlugin {PLUGIN} Ready with digest sha256:{sha256[:12]}... on 1/1 pods")
    except DemoError as exc:
        ready = ready_condition(plugin_status(demo))
        last = f" (last Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message')})" if ready else ""
        raise DemoError(f"{exc}{last}", exc.component) from None
    obj: dict[str, Any] = demo.api("GET", f"{PLUGINS_PATH}/{PLUGIN}")
    return obj


def plugin_spec(module_url: str, sha256: str, label: str) -> dict[str, Any]:
    return {
        "dataPlane": "agent",
        "selector": {"matchLabels": {"app": POD}},
        "url": module_url,
        "sha256": sha256,
        "phase": "STATS",
        "pluginConfig": {"request": {"add": {"x-meshplug-plugin": label}}, "response": {"add": {HEADER: label}}},
    }


# --- the load loop -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """Requests sent back to back on keep-alive connections until stopped (bounded by ``limit_s``)."""

    ip: str
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
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=10)
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                self.sent += 1
                try:
                    status, headers, _ = request(self.ip, self.port, "/load", conn)
                except (OSError, http.client.HTTPException) as exc:
                    self._fail(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection(self.ip, self.port, timeout=10)
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


# --- the story -----------------------------------------------------------------------------------------------


def run(demo: Demo, stack: contextlib.ExitStack) -> None:
    v1_path, v1_sha = corpus_module(V1[0])
    v2_path, v2_sha = corpus_module(V2[0])
    modules = demo.work / "modules"
    modules.mkdir()
    v1_file, v2_file = modules / "header_rules-v1.wasm", modules / "headers-v2.wasm"
    shutil.copyfile(v1_path, v1_file)
    shutil.copyfile(v2_path, v2_file)

    # 1 ---------------------------------------------------------------------------------------------------------
    demo.step("Starting etcd + kube-apiserver (test-bed build) on 127.0.0.1", "kube-apiserver")
    kube = stack.enter_context(kube_mod.control_plane(demo.work / "kube", demo.logs))
    stack.callback(demo.stopper("kube-apiserver + etcd", kube.stop))
    demo.kube = kube
    for proc in kube.procs:
        demo.track(proc.name, proc)
    version = demo.api("GET", "/version")
    demo.say(f"kube-apiserver {version.get('gitVersion')} at {kube.url} (etcd pid {kube.procs[0].pid})")

    # 2 ---------------------------------------------------------------------------------------------------------
    demo.step("Installing meshplug with Helm (charts/meshplug; webhooks at 127.0.0.1, TLS mode provided)", "helm")
    tls = helm_mod.webhook_tls(demo.work / "webhook-tls")
    webhook_port = procs.free_port()
    values = {
        "webhook": {"url": f"https://127.0.0.1:{webhook_port}", "tls": {"mode": "provided", "caBundle": tls.ca_bundle}},
        "validation": {"allowedUrlPrefixes": [f"file://{modules}/"]},
    }
    (demo.work / "values.yaml").write_text(yaml.safe_dump(values))
    try:
        out = helm_mod.helm(
            [
                "install",
                RELEASE,
                str(helm_mod.CHART),
                "-n",
                SYSTEM_NS,
                "--create-namespace",
                "-f",
                str(demo.work / "values.yaml"),
            ],
            kubeconfig=kube.kubeconfig,
            home=demo.work / "helm",
        )
    except (AssertionError, RuntimeError) as exc:
        raise DemoError(str(exc).splitlines()[0], "helm") from None
    status_line = next((ln for ln in out.stdout.splitlines() if ln.startswith("STATUS:")), "STATUS: ?")
    demo.say(f"helm install {RELEASE} charts/meshplug -n {SYSTEM_NS}: {status_line}")
    cm = demo.api("GET", f"/api/v1/namespaces/{SYSTEM_NS}/configmaps/{RELEASE}-meshplug-webhook")
    config = yaml.safe_load(cm["data"]["webhook.yaml"])
    config["listen"] = {"address": "127.0.0.1", "port": webhook_port}  # only where it listens and its files differ
    config["tls"] = {"certFile": str(tls.cert), "keyFile": str(tls.key)}
    (demo.work / "webhook.yaml").write_text(yaml.safe_dump(config))
    # the operator runs as the chart's ServiceAccount: exactly the RBAC the chart grants
    sa = f"{RELEASE}-meshplug-operator"
    identity = f"system:serviceaccount:{SYSTEM_NS}:{sa}"
    operator_kubeconfig = kube.kubeconfig_for(
        kube.service_account_token(SYSTEM_NS, sa), identity, demo.work / "operator.kubeconfig"
    )
    module_token = base64.b16encode(os.urandom(16)).decode().lower()
    os.environ["MESHPLUG_WEBHOOK_CONFIG"] = str(demo.work / "webhook.yaml")
    os.environ["MESHPLUG_MODULE_TOKEN"] = module_token
    demo.current = "operator"
    try:
        op = operator_mod.start_operator(
            operator_kubeconfig,
            demo.work,  # its logs go to demo.logs, its module cache to work/cache
            name="operator",
            extra=[f"--file-root={modules}", f"--lease-namespace={SYSTEM_NS}"],
        )
    except RuntimeError as exc:
        raise DemoError(f"operator did not become healthy: {str(exc).splitlines()[0]}", "operator") from None
    stack.callback(demo.stopper("operator", op.stop))
    demo.track("operator", op.proc)
    demo.wait(lambda: procs.tls_ready(webhook_port, tls.ca_cert), "the operator's webhook server", timeout=60)
    demo.say(
        f"meshplug operator pid {op.proc.pid} as ServiceAccount {SYSTEM_NS}/{sa} (the chart's RBAC):\n"
        f"webhooks https://127.0.0.1:{webhook_port}, modules http://127.0.0.1:{op.module_port}, metrics http://127.0.0.1:{op.metrics_port}/metrics"
    )

    # 3 ---------------------------------------------------------------------------------------------------------
    demo.step("Starting the demo app (echo service) on 127.0.0.1", "echo-app")
    app = upstream.start_service("echo", log_dir=demo.logs, name="echo-app")
    stack.callback(demo.stopper("echo-app", app.stop))
    demo.track("echo-app", app.proc)
    demo.say(f"echo app pid {app.proc.pid} on 127.0.0.1:{app.port} (answers with the request it saw, as JSON)")

    # 4 ---------------------------------------------------------------------------------------------------------
    demo.step(f"Creating pod {POD} (label {injection.INJECT_KEY}=enabled)", "operator")
    demo.api("POST", "/api/v1/namespaces", {"metadata": {"name": NS}}, ok=(201, 409))
    demo.api("POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "default"}}, ok=(201, 409))
    push_token = base64.b16encode(os.urandom(24)).decode().lower()
    secret_data = {injection.PUSH_TOKEN_KEY: push_token, injection.MODULE_TOKEN_KEY: module_token}
    demo.api(
        "POST",
        f"/api/v1/namespaces/{NS}/secrets",
        {"metadata": {"name": SECRET}, "type": "Opaque", "stringData": secret_data},
    )
    pod_body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "labels": {"app": POD, injection.INJECT_KEY: "enabled"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/demo/echo:1",
                    "ports": [{"name": "http", "containerPort": app.port}],
                }
            ]
        },
    }
    pod = demo.api("POST", PODS_PATH, pod_body)
    containers = [c["name"] for c in pod["spec"]["containers"]]
    if injection.CONTAINER_NAME not in containers:
        raise DemoError(f"the webhook did not inject the agent: containers {containers}", "operator")
    agent_c = next(c for c in pod["spec"]["containers"] if c["name"] == injection.CONTAINER_NAME)
    ports = ", ".join(f"{p.get('name')}:{p['containerPort']}" for p in agent_c["ports"])
    demo.say(f"injected containers: {', '.join(containers)} (agent ports {ports}; port name http moved to the agent)")

    # what the kubelet would do: mount the projected config volume, run the agent container, report the pod IP
    demo.current = "agent"
    annotations = pod["metadata"]["annotations"]
    raw = json.loads(annotations[injection.CONFIG_ANNOTATION])
    push_port = int(annotations[injection.PUSH_PORT_ANNOTATION])
    listen_port = int(raw["listeners"][0]["port"])
    ip = pod_ip((listen_port, push_port))
    volume = demo.work / "pod" / "etc-meshplug-agent"
    volume.mkdir(parents=True)
    (volume / injection.CONFIG_FILE).write_text(annotations[injection.CONFIG_ANNOTATION])
    for key, value in secret_data.items():
        (volume / key).write_text(value)
    # the pod's network namespace is 127.0.0.x here; file paths point into the emulated volumes
    raw["listeners"][0]["address"] = ip
    raw["push"]["address"] = ip
    raw["push"]["token_file"] = str(volume / injection.PUSH_TOKEN_KEY)
    raw["admin"]["port"] = procs.free_port()  # 127.0.0.1 is every local pod's loopback: a free port there
    raw["state_dir"] = str(demo.work / "pod" / "state")
    server = raw.get("modules", {}).get("server")
    if server:  # the module server's Service name does not resolve here: the operator's local port
        server["url"] = f"http://127.0.0.1:{op.module_port}"
        server["token_file"] = str(volume / injection.MODULE_TOKEN_KEY)
    try:
        agent = agent_mod.start_agent(
            raw, work_dir=demo.work / "pod", log_dir=demo.logs, name="agent", log_level="info", timeout=demo.timeout
        )
    except RuntimeError as exc:
        raise DemoError(str(exc).splitlines()[0], "agent") from None
    stack.callback(demo.stopper("agent", agent.stop))
    demo.track("agent", agent.proc)
    status_patch = {
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    }
    demo.api("PATCH", f"{PODS_PATH}/{POD}/status", status_patch, content_type="application/merge-patch+json")
    demo.say(
        f"agent pid {agent.proc.pid} with the injected config: proxy {ip}:{listen_port} -> app 127.0.0.1:{app.port}, "
        f"push {ip}:{push_port}; pod status set: podIP {ip}, Ready"
    )

    # 5 ---------------------------------------------------------------------------------------------------------
    demo.step(f"Applying WasmPlugin {PLUGIN} (dataPlane: agent, module {V1[0]}, file:// under --file-root)", "operator")
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": PLUGIN},
        "spec": plugin_spec(f"file://{v1_file}", v1_sha, V1[1]),
    }
    demo.api("POST", PLUGINS_PATH, body, ok=(201,))
    t0 = time.monotonic()
    obj = wait_plugin_ready(demo, v1_sha)
    demo.say(f"Ready after {time.monotonic() - t0:.1f}s:")
    show_plugin(demo, obj)

    # 6 ---------------------------------------------------------------------------------------------------------
    demo.step(f"Sending a request through the agent at {ip}:{listen_port}", "agent")
    status, headers, raw_body = request(ip, listen_port, "/hello")
    seen = {k.lower(): v for k, v in json.loads(raw_body).get("headers", [])} if status == 200 else {}
    demo.say(f"GET /hello -> {status}; response header {HEADER}: {headers.get(HEADER, '(missing)')}")
    demo.say(f"the app saw request header x-meshplug-plugin: {seen.get('x-meshplug-plugin', '(missing)')}")
    if status != 200 or headers.get(HEADER) != V1[1]:
        raise DemoError(f"expected 200 with {HEADER}: {V1[1]}, got {status} {headers}", "agent")

    # 7 ---------------------------------------------------------------------------------------------------------
    demo.step(f"Updating {PLUGIN} to module {V2[0]} under steady traffic", "operator")
    load = Load(ip, listen_port, limit_s=demo.timeout + 60)
    load.start()
    try:
        demo.wait(lambda: load.sent >= 50, "the request loop to get going", timeout=30)
        update = [
            {"op": "replace", "path": "/spec/url", "value": f"file://{v2_file}"},
            {"op": "replace", "path": "/spec/sha256", "value": v2_sha},
            {"op": "replace", "path": "/spec/pluginConfig", "value": plugin_spec("", "", V2[1])["pluginConfig"]},
        ]
        t0 = time.monotonic()
        demo.api("PATCH", f"{PLUGINS_PATH}/{PLUGIN}", update, content_type="application/json-patch+json")
        obj = wait_plugin_ready(demo, v2_sha)
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

    # 8 ---------------------------------------------------------------------------------------------------------
    demo.step(f"Deleting WasmPlugin {PLUGIN} and stopping everything", "operator")
    demo.api("DELETE", f"{PLUGINS_PATH}/{PLUGIN}")
    demo.wait(
        lambda: demo.kube is not None and demo.kube.request("GET", f"{PLUGINS_PATH}/{PLUGIN}")[0] == 404,
        "the finalizer to release the WasmPlugin",
    )
    demo.wait(lambda: not agent.config_dump()["plugins"], "the agent to drop the plugin")
    status, headers, _ = request(ip, listen_port, "/bye")
    demo.say(
        f"finalizer pushed the agent an empty set; GET /bye -> {status}, {HEADER}: {headers.get(HEADER, '(none)')}"
    )
    if HEADER in headers:
        raise DemoError(f"the plugin still answers after deletion: {headers[HEADER]}", "agent")
    pushes = op.metrics()
    acks = int(pushes.get('meshplug_operator_pushes_total{result="ack"}', 0))
    demo.say(f"operator pushes acknowledged by the agent: {acks}")


class Failed(Exception):
    """The demo failed: why (one line) and the log tail of the failing component."""

    def __init__(self, cause: BaseException, reason: str, tail: str) -> None:
        super().__init__(reason)
        self.cause, self.reason, self.tail = cause, reason, tail


def diagnose(demo: Demo, exc: BaseException) -> tuple[str, str]:
    """(one-line reason, log tail of the failing component): a component that died, else the one named."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return f"interrupted ({reason if text else 'Ctrl-C'})", ""
    if not isinstance(exc, DemoError):
        reason = f"{type(exc).__name__}: {reason}"
    dead = [n for n, p in demo.components.items() if not p.alive()]
    component = dead[0] if dead else (getattr(exc, "component", "") or demo.current)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) after a success")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of each wait, seconds")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="meshplug-demo-"))
    demo = Demo(work=work, logs=work / "logs", timeout=args.timeout)
    print(f"meshplug demo: a WasmPlugin on an injected pod's agent, end to end (work dir {work})", flush=True)
    code = 0
    with _signals_as_interrupts():
        try:
            with contextlib.ExitStack() as stack:
                try:
                    run(demo, stack)
                except BaseException as exc:
                    # diagnose before the cleanup stops the processes: which one failed, its log tail
                    raise Failed(exc, *diagnose(demo, exc)) from exc
        except Failed as failed:
            code = 130 if isinstance(failed.cause, KeyboardInterrupt) else 1
            where = f"at step {demo.step_no}/{STEPS}" if demo.step_no else "before step 1"
            print(f"FAILED {where}: {failed.reason}", flush=True)
            if failed.tail:
                print(failed.tail, flush=True)
            print(f"logs kept in {demo.logs}", flush=True)
    elapsed = time.monotonic() - demo.started
    stopped = ", ".join(f"{n} {t:.1f}s" for n, t in demo.stop_times.items())
    running = [f"{n} (pid {p.pid})" for n, p in demo.components.items() if p.alive()]
    if running:  # the cleanup stops every process it started; say so loudly if one survived
        print(f"still running after the cleanup: {', '.join(running)}", flush=True)
        code = code or 1
    print(f"stopped by pid: {stopped or 'nothing was started'}", flush=True)
    killed = [n for n, t in demo.stop_times.items() if t >= 9.5]
    if killed:  # procs.Proc.stop: SIGTERM, then SIGKILL after 10 s
        print(f"note: {', '.join(killed)} did not exit within 10s of SIGTERM and got SIGKILL", flush=True)
    if code == 0:
        print(f"demo OK in {elapsed:.1f}s: agent injected, plugin applied, updated with 0 failed requests, cleaned up")
        if args.keep:
            print(f"logs in {demo.logs}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"demo FAILED after {elapsed:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
