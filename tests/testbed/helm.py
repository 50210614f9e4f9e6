"""A real Helm for the test bed, and TLS material for admission webhooks the API server calls on 127.0.0.1.

Used by tests/integration/test_helm*.py, test_manifests*.py and test_webhook*.py. The binary is built by
scripts/install-helm.sh into $MESHPLUG_CACHE/helm/<version>/helm (`make integration` runs it first). Each call
gets its own HELM_*_HOME under the caller's directory, so no user configuration leaks in.
"""

from __future__ import annotations

import base64
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.testbed import pki, procs

HELM_VERSION = os.environ.get("HELM_VERSION", "v3.16.2")
CHART = procs.REPO_ROOT / "charts" / "meshplug"


def helm_bin() -> Path:
    path = procs.cache_dir("helm", HELM_VERSION) / "helm"
    if not path.exists():
        raise RuntimeError(f"{path} missing: run scripts/install-helm.sh (`make integration` does)")
    return path


def helm(
    args: Sequence[str], *, kubeconfig: Path | None, home: Path, check: bool = True, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    """Run helm with an isolated home; ``check`` raises with helm's output when it fails."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    out = subprocess.run(
        [str(helm_bin()), *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


@dataclass(frozen=True)
class WebhookTls:
    ca_cert: Path
    cert: Path
    key: Path

    @property
    def ca_bundle(self) -> str:
        """base64 of the CA PEM, as a webhook configuration's caBundle."""
        return base64.b64encode(self.ca_cert.read_bytes()).decode()


def webhook_tls(directory: Path) -> WebhookTls:
    """A CA and a serving certificate for 127.0.0.1/localhost (the API server calls the webhook there)."""
    files = pki.serving_pki(
        directory,
        ca_cn="meshplug-webhook-test-ca",
        server_cn="meshplug-webhook",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
        days=1,
    )
    return WebhookTls(ca_cert=files.ca_cert, cert=files.cert, key=files.key)
