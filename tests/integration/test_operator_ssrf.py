"""The operator's SSRF guard as installed: a WasmPlugin whose url is on 127.0.0.1 is refused by default (the module is
never requested) and fetched once the switch is on (``--allow-loopback``, the chart's ``ssrf.allowLoopback``);
``--block-cidr`` refuses a network on top. The real operator process, API server and HTTPS origin."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed import procs
from tests.testbed.origin import Origin, wasm_module

PLUGINS = "/apis/meshplug.io/v1alpha1/namespaces/{ns}/wasmplugins"


def _fetched(kube: kube_mod.Kube, ns: str, name: str) -> dict[str, Any]:
    """The plugin's Fetched condition once the operator has written one."""
    found: dict[str, Any] = {}

    def written() -> bool:
        _, obj = kube.request("GET", f"{PLUGINS.format(ns=ns)}/{name}")
        found.update(next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Fetched"), {}))
        return bool(found)

    procs.wait_until(written, timeout=60, interval=0.2, what=f"{name}'s Fetched condition")
    return found


def _run(
    kube: kube_mod.Kube,
    ns: str,
    origin: Origin,
    work: Path,
    name: str,
    *,
    allow_loopback: bool = True,
    extra: tuple[str, ...] = (),
) -> tuple[dict[str, Any], int]:
    """A WasmPlugin on the origin (https://localhost:PORT, i.e. 127.0.0.1) under an operator started so."""
    path = f"/{uuid.uuid4().hex}.wasm"
    url = origin.program(path, body=wasm_module(7))
    op = operator_mod.start_operator(
        kube.kubeconfig,
        work / name,
        namespaces=[ns],
        extra=[f"--extra-ca-file={origin.ca_file}", *extra],
        allow_loopback=allow_loopback,
    )
    try:
        body = {
            "apiVersion": "meshplug.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": name},
            "spec": {"url": url, "dataPlane": "agent", "selector": {"matchLabels": {"app": "none"}}},
        }
        status, out = kube.request("POST", PLUGINS.format(ns=ns), body)
        assert status == 201, out
        return _fetched(kube, ns, name), origin.count(path)
    finally:
        op.stop()


def test_loopback_is_refused_by_default_and_allowed_by_the_switch(
    kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, origin: Origin, tmp_path: Path
) -> None:
    fetched, requests = _run(kube, kube_namespace, origin, tmp_path, "default-install", allow_loopback=False)
    assert fetched["status"] == "False" and fetched["reason"] == "Blocked", fetched
    assert "127.0.0.1" in fetched["message"] and "blocked address" in fetched["message"], fetched
    assert requests == 0, "refused before connecting"

    fetched, requests = _run(kube, kube_namespace, origin, tmp_path, "allowed")  # the test bed's opt-in
    assert fetched["status"] == "True", fetched
    assert requests == 1


def test_block_cidr_refuses_more(
    kube: kube_mod.Kube, wasmplugin_crd: str, kube_namespace: str, origin: Origin, tmp_path: Path
) -> None:
    fetched, requests = _run(
        kube, kube_namespace, origin, tmp_path, "blocked-cidr", extra=("--block-cidr=127.0.0.0/8",)
    )
    assert fetched["status"] == "False" and fetched["reason"] == "Blocked", fetched
    assert requests == 0
