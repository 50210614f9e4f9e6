"""Fixtures: real `docker-registry` processes, one per variant (session-scoped), and a signing key for tokens.

Variants: ``plain`` (HTTP, anonymous), ``basic`` (TLS + htpasswd bcrypt Basic auth), ``tls`` (TLS with a
test-CA certificate, anonymous), ``token`` (TLS + Bearer token auth; the realm is the TLS origin's
token endpoint, which signs RS256 tokens with an x5c certificate the registry trusts).
"""

from __future__ import annotations

import base64
import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.testbed.fixtures_origin import TestCA
from tests.testbed.origin import Origin
from tests.testbed.registry import Registry, start_registry

REGISTRY_VARIANTS = ("plain", "basic", "tls", "token")
USER, PASSWORD = "puller", "s3cret-pull"


def _signing_pair(directory: Path) -> tuple[str, str, Path]:
    """(private key PEM, certificate DER base64, certificate PEM file) of a self-signed RSA token signer."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshplug test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_file = directory / "token-signer.pem"
    pem_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key_pem, base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(), pem_file


def _start(
    variant: str, base: Path, logs: Path, ca: TestCA, origin: Origin, *, realm_host: str | None = None
) -> Registry:
    workdir = base / variant
    workdir.mkdir(parents=True, exist_ok=True)
    if variant == "plain":
        return start_registry("registry-plain", workdir, logs)
    tls = ca.issue(f"registry-{variant}", "localhost", "127.0.0.1")
    if variant == "tls":
        return start_registry("registry-tls", workdir, logs, tls=tls, ca_file=ca.ca_file)
    if variant == "basic":
        return start_registry("registry-basic", workdir, logs, tls=tls, ca_file=ca.ca_file, htpasswd=(USER, PASSWORD))
    key_pem, cert_der_b64, cert_file = _signing_pair(workdir)
    issuer, service = "meshplug-test-issuer", "meshplug-test-registry"
    path = f"/token/{uuid.uuid4().hex}"
    spec = {"users": {USER: PASSWORD}, "key_pem": key_pem, "cert_der_b64": cert_der_b64, "issuer": issuer}
    realm = origin.program(path, token=spec)
    if realm_host is not None:
        realm = f"https://{realm_host}{path}"
    token = {"realm": realm, "service": service, "issuer": issuer, "rootcertbundle": str(cert_file)}
    return start_registry(
        f"registry-{variant}", workdir, logs, tls=tls, ca_file=ca.ca_file, htpasswd=(USER, PASSWORD), token=token
    )


@pytest.fixture(scope="session")
def registries(
    tmp_path_factory: pytest.TempPathFactory, logs_dir: Path, test_ca: TestCA, origin: Origin
) -> Iterator[dict[str, Registry]]:
    """Every registry variant, started once per session, keyed by variant name."""
    base = tmp_path_factory.mktemp("registries")
    started: dict[str, Registry] = {}
    try:
        for variant in REGISTRY_VARIANTS:
            started[variant] = _start(variant, base, logs_dir, test_ca, origin)
        yield started
    finally:
        for registry in started.values():
            if registry.proc is not None:
                registry.proc.stop()


@pytest.fixture
def metadata_realm_registry(tmp_path: Path, logs_dir: Path, test_ca: TestCA, origin: Origin) -> Iterator[Registry]:
    """A token-auth registry whose realm points at the cloud metadata address (for the SSRF test)."""
    registry = _start("token", tmp_path, logs_dir, test_ca, origin, realm_host="169.254.169.254")
    try:
        yield registry
    finally:
        if registry.proc is not None:
            registry.proc.stop()
