"""The plugin author's day on the test bed, end to end, as the README's five commands: `meshplug init` → `meshplug
build` → `meshplug push` → `meshplug sign` (verified by the real cosign) → a WasmPlugin with ``verificationKey``
applied to the real kube-apiserver on the agent plane, Ready under the operator (a pod's real agent confirms it) →
`meshplug status`. The same module pushed unsigned,
or signed with another key, is refused (SignatureInvalid). For the Rust and the Go SDK."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_kube_operator import _plugin, _wait_condition
from tests.integration.test_scaffold import init_and_build, toolchain_env
from tests.testbed import kube as kube_mod
from tests.testbed import operator as operator_mod
from tests.testbed.agentplane import AgentPlane as Bed
from tests.testbed.cosign import PASSWORD
from tests.testbed.fixtures_cosign import CosignKit
from tests.testbed.registry import Registry


@pytest.fixture
def plane(
    kube: kube_mod.Kube, kube_namespace: str, registries: dict[str, Registry], tmp_path: Path
) -> Iterator[tuple[Bed, Registry]]:
    registry = registries["plain"]
    op = operator_mod.start_operator(
        kube.kubeconfig, tmp_path, namespaces=[kube_namespace], extra=[f"--insecure-registry={registry.host}"]
    )
    bed = Bed(kube, kube_namespace, tmp_path, tmp_path, op, itertools.count(200))
    try:
        yield bed, registry
    finally:
        bed.stop()


def _meshplug(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplug", *args],
        cwd=cwd,
        env={**toolchain_env(), "COSIGN_PASSWORD": PASSWORD},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.usefixtures("wasmplugin_crd", "envoyfilter_crd")
@pytest.mark.parametrize("sdk", ["rust", "go"])
def test_scaffold_build_push_sign_apply_status(
    sdk: str, kube: kube_mod.Kube, plane: tuple[Bed, Registry], cosign: CosignKit, tmp_path: Path
) -> None:
    bed, registry = plane
    ns = bed.ns
    name = f"hello-{sdk}"
    project = init_and_build(sdk, name, tmp_path)  # 1. meshplug init, 2. meshplug build

    flags = ["--insecure-registry"]
    pushed = _meshplug(
        "push", "plugin.wasm", f"oci://{registry.host}/authors/{name}:v1", *flags, "-o", "json", cwd=project
    )
    assert pushed.returncode == 0, pushed.stderr  # 3. meshplug push
    doc = json.loads(pushed.stdout)
    signed = _meshplug("sign", "--key", str(cosign.signer.key), doc["url"], *flags, cwd=project)
    assert signed.returncode == 0, signed.stderr  # 4. meshplug sign ...
    image = f"authors/{name}@{doc['manifest']}"
    assert cosign.cosign.verify(registry, image, cosign.signer.pub).returncode == 0  # ... what cosign accepts

    # the same bytes unsigned (another tag, same digest would share the signature: change the tag's manifest by
    # pushing the CNCF layout) and signed by another key
    unsigned = _meshplug(
        "push", "plugin.wasm", f"oci://{registry.host}/authors/{name}:cncf", "--layout", "cncf", *flags, "-o", "json",
        cwd=project,
    )  # fmt: skip
    assert unsigned.returncode == 0, unsigned.stderr
    other = _meshplug(
        "push", "plugin.wasm", f"oci://{registry.host}/authors/{name}-other:v1", *flags, "--sign-key",
        str(cosign.other.key), "-o", "json", cwd=project,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr

    key = cosign.signer.pub.read_text()
    assert bed.pod("app", {"app": name}) is not None  # a workload pod with meshplug's agent
    where = {"selector": {"matchLabels": {"app": name}}, "dataPlane": "agent", "verificationKey": key}
    _plugin(kube, ns, name, {**where, "url": doc["url"], "pluginName": name})  # 5. apply ...
    _plugin(kube, ns, f"{name}-unsigned", {**where, "url": json.loads(unsigned.stdout)["url"]})
    _plugin(kube, ns, f"{name}-otherkey", {**where, "url": json.loads(other.stdout)["url"]})
    st = bed.wait_ready(name, "True", "Confirmed", "1/1")  # the pod's agent verified, loaded and ACKed it
    assert st["digest"] == "sha256:" + doc["sha256"]
    _wait_condition(kube, ns, f"{name}-unsigned", "Ready", status="False", reason="SignatureInvalid")
    _wait_condition(kube, ns, f"{name}-otherkey", "Ready", status="False", reason="SignatureInvalid")

    status = subprocess.run(  # ... and meshplug status
        [sys.executable, "-m", "meshplug", "status", "--kubeconfig", str(kube.kubeconfig), "-n", ns],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ),
    )
    assert status.returncode == 0, status.stderr
    rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
    assert rows[name][2] == doc["sha256"][:12] and rows[name][3:5] == ["True", "Confirmed"], status.stdout
    assert rows[f"{name}-unsigned"][3:5] == ["False", "SignatureInvalid"], status.stdout
    assert rows[f"{name}-otherkey"][3:5] == ["False", "SignatureInvalid"], status.stdout
