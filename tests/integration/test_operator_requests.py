"""What the operator asks of the real kube-apiserver per change, counted by its writer (`apply.Writer.requests`, read
from /metrics), not timed: a new WasmPlugin of the ConfigMap route costs its writes alone (ConfigMap, EnvoyFilter,
status, the Event for its failing pods) whatever the number of pods it selects; a pod that joins a plugin's
selection costs that plugin's status write; a pod change no plugin depends on costs nothing. Reads come from the
operator's watch caches (pods, the ConfigMaps and EnvoyFilters it rendered, the plugins themselves); kopf's own
requests (its watches, the finalizer) are its client's, not counted here.

The pods are the scale bench's (bench/operator_scale.py): Istio's injection annotation, no proxy, created before
the plugins, so each plugin ends Ready=False RestartNeeded with every selected pod judged."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guests import minimal
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed import procs

MODULE = minimal.passthrough()
PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"
REQUESTS = "meshplug_operator_api_requests_total{"
#: a new plugin of the ConfigMap route whose selected pods cannot load it: the writes, nothing read
NEW_PLUGIN = {
    ("PATCH", "configmaps"): 1,
    ("PATCH", "envoyfilters"): 1,
    ("POST", "events"): 1,
    ("PATCH", "wasmplugins/status"): 1,
}


def _requests(op: operator_mod.Operator) -> dict[tuple[str, str], float]:
    """The operator writer's requests by (method, resource)."""
    out = {}
    for name, value in op.metrics().items():
        if name.startswith(REQUESTS):
            labels = dict(p.split("=", 1) for p in name[len(REQUESTS) : -1].replace('"', "").split(","))
            out[(labels["method"], labels["resource"])] = value
    return out


def _delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[tuple[str, str], int]:
    """The requests between two reads, but for API discovery: a new generation asks what the cluster serves (shared
    by the plugins changed at the same moment), else a background refresh once the answer is
    `limits.API_DISCOVERY_TTL_S` old: at most one here."""
    out = {k: int(v - before.get(k, 0)) for k, v in after.items() if v != before.get(k, 0)}
    assert out.pop(("GET", "discovery"), 0) <= 1
    return out


def _pod(kube: kube_mod.Kube, ns: str, name: str, app: str) -> None:
    body = {
        "metadata": {
            "name": name,
            "labels": {"app": app},
            "annotations": {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1"}]},
    }
    status, out = kube.request("POST", f"/api/v1/namespaces/{ns}/pods", body)
    assert status == 201, out
    running = {"status": {"phase": "Running", "podIP": "10.1.0.1", "conditions": [{"type": "Ready", "status": "True"}]}}
    path = f"/api/v1/namespaces/{ns}/pods/{name}/status"
    status, out = kube.request("PATCH", path, running, content_type="application/merge-patch+json")
    assert status == 200, out


def _wait_counted(kube: kube_mod.Kube, ns: str, name: str, total: int) -> None:
    """Until the plugin's status, for its first generation, counts ``total`` selected pods."""

    def counted() -> bool:
        _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
        st = obj.get("status") or {}
        return st.get("observedGeneration") == 1 and (st.get("pods") or {}).get("total") == total

    procs.wait_until(counted, timeout=60, interval=0.2, what=f"{name} counting {total} pods")


@pytest.fixture
def bed(
    kube: kube_mod.Kube, wasmplugin_crd: str, envoyfilter_crd: str, kube_namespace: str, tmp_path: Path
) -> Iterator[tuple[str, Path, operator_mod.Operator]]:
    """12 pods of app ``many``, 1 of app ``one``, then the operator (ConfigMap route), its caches listed."""
    ns = kube_namespace
    for i in range(12):
        _pod(kube, ns, f"many-{i}", "many")
    _pod(kube, ns, "one-0", "one")
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "m.wasm").write_bytes(MODULE)
    op = operator_mod.start_operator(
        kube.kubeconfig,
        tmp_path,
        namespaces=[ns],
        extra=[f"--file-root={modules}", "--istio-delivery=configmap"],
    )

    def watching() -> bool:  # every cache listed and watching: reconciles read nothing from the API from now on
        seen = _requests(op)
        return all(seen.get(("WATCH", r), 0) >= 1 for r in ("pods", "configmaps", "envoyfilters"))

    try:
        procs.wait_until(watching, timeout=60, interval=0.2, what="the operator's caches watching")
        yield ns, modules, op
    finally:
        op.stop()
        print(op.proc.log()[-6000:])


def _plugin(kube: kube_mod.Kube, ns: str, modules: Path, name: str, app: str) -> None:
    spec: dict[str, Any] = {
        "url": f"file://{modules / 'm.wasm'}",
        "sha256": hashlib.sha256(MODULE).hexdigest(),
        "selector": {"matchLabels": {"app": app}},
    }
    body = {"apiVersion": "meshplug.io/v1alpha1", "kind": "WasmPlugin", "metadata": {"name": name}, "spec": spec}
    status, out = kube.request("POST", PLUGINS.format(ns=ns), body)
    assert status == 201, out


def test_requests_per_new_plugin_and_per_pod_change_are_the_writes_alone(
    kube: kube_mod.Kube, bed: tuple[str, Path, operator_mod.Operator]
) -> None:
    ns, modules, op = bed
    # a new plugin: the same writes for 1 selected pod as for 12, and no read
    for name, app, pods in (("p-one", "one", 1), ("p-many", "many", 12)):
        before = _requests(op)
        _plugin(kube, ns, modules, name, app)
        _wait_counted(kube, ns, name, pods)
        assert _delta(before, _requests(op)) == NEW_PLUGIN, name
        _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
        ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "RestartNeeded")

    # a pod joins p-many's selection: its status write alone (the Ready reason stays: no new Event)
    before = _requests(op)
    _pod(kube, ns, "many-12", "many")
    _wait_counted(kube, ns, "p-many", 13)
    assert _delta(before, _requests(op)) == {("PATCH", "wasmplugins/status"): 1}

    # a pod change no plugin depends on (a status message; a pod no plugin selects): nothing at all. Seen settled
    # through a later change that is counted: the operator handles a namespace's pod changes in order
    before = _requests(op)
    path = f"/api/v1/namespaces/{ns}/pods/many-0/status"
    status, _ = kube.request(
        "PATCH", path, {"status": {"message": "touched"}}, content_type="application/merge-patch+json"
    )
    assert status == 200
    _pod(kube, ns, "lonely-0", "lonely")
    _pod(kube, ns, "one-1", "one")
    _wait_counted(kube, ns, "p-one", 2)
    assert _delta(before, _requests(op)) == {("PATCH", "wasmplugins/status"): 1}
