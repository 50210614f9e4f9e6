"""Several operator replicas against the real apiserver: one holds the Lease and reconciles, the other stands by;
when the leader stops (SIGTERM: it releases the Lease) or dies (kill -9: the Lease expires) the standby takes
over, reconciles what changed meanwhile, and re-reconciling what was already applied changes nothing (the
generated EnvoyFilter keeps its resourceVersion: restarts are idempotent)."""

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

PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"
MODULE = minimal.passthrough()


@pytest.fixture
def replicas(
    kube: kube_mod.Kube, wasmplugin_crd: str, envoyfilter_crd: str, kube_namespace: str, tmp_path: Path
) -> Iterator[tuple[list[operator_mod.Operator], Path]]:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "m.wasm").write_bytes(MODULE)
    ops = [
        operator_mod.start_operator(
            kube.kubeconfig,
            tmp_path / name,
            namespaces=[kube_namespace],
            name=name,
            extra=[f"--file-root={modules}", f"--lease-namespace={kube_namespace}", "--lease-duration=4"],
        )
        for name in ("replica-a", "replica-b")
    ]
    try:
        yield ops, modules
    finally:
        for op in ops:
            op.stop()
            print(op.proc.log()[-3000:])


def _leader(ops: list[operator_mod.Operator]) -> operator_mod.Operator | None:
    leaders = [op for op in ops if op.proc.alive() and op.metrics().get("meshplug_operator_leader") == 1]
    assert len(leaders) <= 1, "two replicas lead at once"
    return leaders[0] if leaders else None


def _plugin(kube: kube_mod.Kube, ns: str, name: str, modules: Path) -> None:
    body = {
        "apiVersion": "meshplug.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": name},
        "spec": {"url": f"file://{modules / 'm.wasm'}", "sha256": hashlib.sha256(MODULE).hexdigest()},
    }
    assert kube.request("POST", PLUGINS.format(ns=ns), body)[0] == 201


def _applied(kube: kube_mod.Kube, ns: str, name: str) -> bool:
    _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
    conds: list[dict[str, Any]] = (obj.get("status") or {}).get("conditions") or []
    # delivered: the istio plane's objects are written; no pod here has an Istio proxy, so Ready says NoProxies
    return any(c["type"] == "Ready" and c["reason"] == "NoProxies" for c in conds)


def _ef_version(kube: kube_mod.Kube, ns: str, name: str) -> str:
    status, ef = kube.request("GET", f"/apis/networking.istio.io/v1alpha3/namespaces/{ns}/envoyfilters/meshplug-{name}")
    assert status == 200
    return str(ef["metadata"]["resourceVersion"])


@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_one_replica_leads_and_the_other_takes_over(
    kube: kube_mod.Kube,
    kube_namespace: str,
    replicas: tuple[list[operator_mod.Operator], Path],
    how: str,
) -> None:
    ops, modules = replicas
    ns = kube_namespace
    procs.wait_until(lambda: _leader(ops) is not None, timeout=30, what="a leader")
    leader = _leader(ops)
    assert leader is not None
    standby = next(op for op in ops if op is not leader)
    assert standby.metrics()["meshplug_operator_leader"] == 0 and standby.healthy()
    # a standby answers the livenessProbe's endpoint too (from when it starts standing by)
    procs.wait_until(lambda: standby.alive() and leader.alive(), timeout=10, what="both replicas' liveness")

    _plugin(kube, ns, "one", modules)
    procs.wait_until(lambda: _applied(kube, ns, "one"), timeout=60, interval=0.2, what="one applied")
    before = _ef_version(kube, ns, "one")
    assert standby.metrics()['meshplug_operator_reconciles_total{result="ok"}'] == 0  # the standby did nothing

    if how == "sigterm":
        leader.stop()
    else:
        leader.proc.kill()
    _plugin(kube, ns, "two", modules)  # created while no replica (or only the old one) leads
    procs.wait_until(lambda: _leader(ops) is standby, timeout=30, interval=0.2, what="the standby to take over")
    procs.wait_until(lambda: _applied(kube, ns, "two"), timeout=60, interval=0.2, what="two applied by the new leader")
    procs.wait_until(
        lambda: standby.metrics()['meshplug_operator_reconciles_total{result="ok"}'] >= 2,
        timeout=60,
        what="the new leader re-reconciled both plugins",
    )
    assert _ef_version(kube, ns, "one") == before  # re-reconciling an applied plugin wrote nothing new
    procs.wait_until(standby.alive, timeout=10, what="the new leader's liveness endpoint (kopf's now)")
