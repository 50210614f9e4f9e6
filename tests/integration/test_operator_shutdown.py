"""`meshplug operator` exits cleanly on SIGTERM: a real process against the real kube-apiserver, with a plugin
reconciled (workers, pusher pool, module and metrics servers all started), alone, under leader election (the
Lease is released on the way out: a standby takes over at once), and with its admission webhooks served.
The exit is polled against a deadline (generous for slow machines), never slept for."""

from __future__ import annotations

import hashlib
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.guests import minimal
from tests.testbed import helm as helm_mod
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed import procs

PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/meshplug-operator"
MODULE = minimal.passthrough()
EXIT_DEADLINE_S = 8.0  # the bug: the process never exited (the test bed SIGKILLs after 10 s)


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    path = tmp_path / "modules"
    path.mkdir()
    (path / "m.wasm").write_bytes(MODULE)
    return path


def _applied(kube: kube_mod.Kube, ns: str, name: str) -> bool:
    _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
    conds: list[dict[str, Any]] = (obj.get("status") or {}).get("conditions") or []
    # delivered: the istio plane's objects are written; no pod here has an Istio proxy, so Ready says NoProxies
    return any(c["type"] == "Ready" and c["reason"] == "NoProxies" for c in conds)


def _reconcile_one(kube: kube_mod.Kube, ns: str, modules: Path) -> None:
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "one"},
        "spec": {"url": f"file://{modules / 'm.wasm'}", "sha256": hashlib.sha256(MODULE).hexdigest()},
    }
    assert kube.request("POST", PLUGINS.format(ns=ns), body)[0] == 201
    procs.wait_until(lambda: _applied(kube, ns, "one"), timeout=60, interval=0.1, what="the plugin applied")


def _sigterm_and_wait_for_exit(op: operator_mod.Operator) -> tuple[int | None, float]:
    popen = op.proc.popen
    started = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    try:
        procs.wait_until(lambda: popen.poll() is not None, timeout=EXIT_DEADLINE_S, what="the operator to exit")
    except TimeoutError:
        return None, time.monotonic() - started
    return popen.returncode, time.monotonic() - started


def _assert_exits_zero(op: operator_mod.Operator) -> None:
    try:
        code, took = _sigterm_and_wait_for_exit(op)
        log = op.proc.log()
        assert code is not None, f"still running {EXIT_DEADLINE_S}s after SIGTERM; log tail:\n{log[-4000:]}"
        assert code == 0, f"exit code {code} after {took:.1f}s; log tail:\n{log[-4000:]}"
        assert "Traceback" not in log, log[-4000:]
    finally:
        op.stop()


@pytest.mark.usefixtures("wasmplugin_crd", "envoyfilter_crd")
@pytest.mark.parametrize("reconciled", [False, True], ids=["idle", "after-a-reconcile"])
def test_sigterm_exits_zero(
    kube: kube_mod.Kube,
    kube_namespace: str,
    tmp_path: Path,
    modules: Path,
    reconciled: bool,
) -> None:
    op = operator_mod.start_operator(
        kube.kubeconfig, tmp_path, namespaces=[kube_namespace], extra=[f"--file-root={modules}"]
    )
    try:
        if reconciled:
            _reconcile_one(kube, kube_namespace, modules)
    finally:
        _assert_exits_zero(op)


@pytest.mark.usefixtures("wasmplugin_crd", "envoyfilter_crd")
def test_sigterm_exits_zero_while_a_push_blocks(
    kube: kube_mod.Kube, kube_namespace: str, tmp_path: Path, modules: Path
) -> None:
    """An agent-plane plugin whose pod's agent accepts the push connection and never answers: the push (30 s
    timeout) is in flight when SIGTERM arrives, and is abandoned."""
    ns = kube_namespace
    with socket.socket() as silent:  # takes the connection, never answers (not even the TLS handshake)
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        pod = {
            "metadata": {
                "name": "web",
                "labels": {"app": "web"},
                "annotations": {"meshplug.io/agent-push-port": str(silent.getsockname()[1])},
            },
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
        }
        assert kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod)[0] == 201
        pod_status = {"status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
        path = f"/api/v1/namespaces/{ns}/pods/web/status"
        assert kube.request("PATCH", path, pod_status, content_type="application/merge-patch+json")[0] == 200
        op = operator_mod.start_operator(kube.kubeconfig, tmp_path, namespaces=[ns], extra=[f"--file-root={modules}"])
        try:
            body = {
                "apiVersion": "meshplug.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "one"},
                "spec": {
                    "url": f"file://{modules / 'm.wasm'}",
                    "dataPlane": "agent",
                    "selector": {"matchLabels": {"app": "web"}},
                },
            }
            assert kube.request("POST", PLUGINS.format(ns=ns), body)[0] == 201
            silent.settimeout(60)
            conn, _ = silent.accept()  # the operator's push is in flight, waiting for an answer that never comes
        finally:
            _assert_exits_zero(op)
        conn.close()


@pytest.mark.usefixtures("wasmplugin_crd", "envoyfilter_crd")
def test_sigterm_releases_the_lease(
    kube: kube_mod.Kube,
    kube_namespace: str,
    tmp_path: Path,
    modules: Path,
) -> None:
    ns = kube_namespace
    extra = [f"--file-root={modules}", f"--lease-namespace={ns}", "--lease-duration=30"]
    leader = operator_mod.start_operator(kube.kubeconfig, tmp_path / "a", namespaces=[ns], name="a", extra=extra)
    standby = None
    try:
        _reconcile_one(kube, ns, modules)
        standby = operator_mod.start_operator(
            kube.kubeconfig, tmp_path / "b", namespaces=[ns], name="b", extra=extra, wait_healthy=False
        )
        procs.wait_until(standby.healthy, timeout=30, what="the standby's /healthz")
        assert standby.metrics()["meshplug_operator_leader"] == 0
        _assert_exits_zero(leader)
        _, lease = kube.request("GET", LEASE.format(ns=ns))
        assert lease["spec"].get("holderIdentity") != f"{socket.gethostname()}-{leader.proc.pid}"
        # released: the standby leads long before the 30 s lease would have expired
        procs.wait_until(
            lambda: standby is not None and standby.metrics()["meshplug_operator_leader"] == 1,
            timeout=10,
            what="the standby to take the released Lease",
        )
        _assert_exits_zero(standby)  # a leader that never saw a plugin stops as cleanly
    finally:
        leader.stop()
        if standby is not None:
            standby.stop()


def test_sigterm_exits_zero_while_standing_by(
    kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, tmp_path: Path
) -> None:
    """A standby blocked in `wait_until_leader` stops at once (no kopf running yet)."""
    ns = kube_namespace
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "meshplug-operator"},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600},
    }
    assert kube.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases", lease)[0] == 201
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[ns],
        extra=[f"--lease-namespace={ns}"],
        wait_healthy=False,
    )
    try:
        procs.wait_until(op.healthy, timeout=30, what="the standby's /healthz")
    finally:
        _assert_exits_zero(op)


def test_sigterm_exits_zero_with_webhooks(
    kube: kube_mod.Kube, wasmplugin_crd: str, envoyfilter_crd: str, kube_namespace: str, tmp_path: Path
) -> None:
    tls = helm_mod.webhook_tls(tmp_path / "tls")
    port = procs.free_port()
    config = {
        "listen": {"address": "127.0.0.1", "port": port},
        "tls": {"certFile": str(tls.cert), "keyFile": str(tls.key)},
        "injection": {"enabled": True, "agent": {"image": "ghcr.io/meshplug/meshplug:test"}},
        "validation": {"enabled": True},
    }
    (tmp_path / "webhook.yaml").write_text(yaml.safe_dump(config))
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[kube_namespace],
        env={"MESHPLUG_WEBHOOK_CONFIG": str(tmp_path / "webhook.yaml")},
    )
    try:
        procs.wait_until(lambda: procs.port_open(port), timeout=60, what="the webhook server")
    finally:
        _assert_exits_zero(op)
