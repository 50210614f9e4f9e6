"""manifests/ is what scripts/render-manifests.sh makes from the chart today, and a real kube-apiserver accepts it
(`kubectl apply --dry-run=server`): every object is checked against the real API schemas and admission. The
manifests carry no secret material: the webhook certificate comes from the operator's own CA, which also sets
the webhook configurations' caBundle (none in the manifests)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.testbed import fixtures_kube, procs
from tests.testbed import helm as helm_mod
from tests.testbed import kube as kube_mod

MANIFESTS = procs.REPO_ROOT / "manifests"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Iterator[kube_mod.Kube]:
    with kube_mod.control_plane(tmp_path_factory.mktemp("manifests-kube"), logs_dir / "manifests") as kube:
        yield kube


def test_manifests_are_up_to_date() -> None:
    helm_mod.helm_bin()  # the script would build it; `make integration` already did
    out = subprocess.run(
        [str(procs.REPO_ROOT / "scripts" / "render-manifests.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HELM": str(helm_mod.helm_bin())},
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"


def test_manifests_carry_no_secret_material() -> None:
    docs = [d for f in sorted(MANIFESTS.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert {d["kind"] for d in docs} >= {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "Deployment",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    }
    assert not [d for d in docs if d["kind"] in ("Secret", "Certificate")], "static manifests ship no private key"
    for d in docs:
        if d["kind"].endswith("WebhookConfiguration"):
            assert all("caBundle" not in hook["clientConfig"] for hook in d["webhooks"])


def test_kubectl_server_dry_run_accepts_the_manifests(plane: kube_mod.Kube) -> None:
    version = subprocess.run([KUBECTL, "version", "--client", "-o", "yaml"], capture_output=True, text=True, check=True)
    minor = int(yaml.safe_load(version.stdout)["clientVersion"]["minor"].rstrip("+"))
    assert minor >= 18, "kubectl too old for --dry-run=server"
    # what the manifests need to exist for real before a server-side dry run: their namespace
    fixtures_kube.ensure_namespace(plane, "meshplug-system")
    out = subprocess.run(
        [KUBECTL, f"--kubeconfig={plane.kubeconfig}", "apply", "--dry-run=server", "-f", str(MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    docs = [d for f in sorted(MANIFESTS.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    lines = out.stdout.splitlines()
    assert len(lines) == len(docs), out.stdout
    assert all(line.endswith("(server dry run)") for line in lines), out.stdout
    # a dry run persists nothing
    status, _ = plane.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/wasmplugins.meshplug.io")
    assert status == 404
    status, _ = plane.request("GET", "/apis/apps/v1/namespaces/meshplug-system/deployments/meshplug-operator")
    assert status == 404
