"""A real Helm for the test bed, and TLS material for admission webhooks the API server calls on 127.0.0.1.

Used by tests/integration/test_helm*.py, test_manifests*.py and test_webhook*.py. The binary is built by
scripts/install-helm.sh into $MESHPLUG_CACHE/helm/<version>/helm (`make integration` runs it first). Each call
gets its own HELM_*_HOME under the caller's directory, so no user configuration leaks in.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.testbed import procs

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
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshplug-webhook-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshplug-webhook")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls = WebhookTls(ca_cert=directory / "ca.crt", cert=directory / "tls.crt", key=directory / "tls.key")
    tls.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    tls.key.chmod(0o600)
    return tls
