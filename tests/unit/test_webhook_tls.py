"""meshplug.controller.webhook_tls without a server: the serving file issued from the operator's CA (names, chain,
private, re-issued only when due or when the CA changes) and the guarded JSON patch of the caBundle."""

from __future__ import annotations

import base64
import stat
import types
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshplug import errors
from meshplug.controller import pki, webhook_tls


def _identity(authority: pki.Authority) -> Any:
    return types.SimpleNamespace(authority=authority)


def test_serving_file_is_issued_from_the_ca_for_the_names(tmp_path: Path) -> None:
    ca = pki.Authority.generate("test-ca", days=1)
    ident = _identity(ca)
    files = webhook_tls.ServingFiles(ident, ["hooks.ns.svc"], ["127.0.0.1"], directory=tmp_path)
    pem = files.path.read_bytes()
    assert pem.startswith(b"-----BEGIN") and b"PRIVATE KEY" in pem
    assert stat.S_IMODE(files.path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE") :])
    cert.verify_directly_issued_by(pki.load_cert(ca.cert_pem))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hooks.ns.svc"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    assert files.refresh() is False and files.path.read_bytes() == pem  # not due: the same certificate
    ident.authority = pki.Authority.generate("rotated-ca", days=1)  # a new CA: a new certificate at once
    assert files.refresh() is True and files.path.read_bytes() != pem


def test_serving_file_needs_a_name(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError):
        webhook_tls.ServingFiles(_identity(pki.Authority.generate("ca", days=1)), [], [], directory=tmp_path)


@pytest.mark.parametrize(
    ("case", "bundles", "ops"),
    [
        ("none set", [None, None], [0, 1]),
        ("one stale", ["b2xk", "bmV3"], [0]),
        ("all current", ["bmV3", "bmV3"], []),
    ],
)
def test_patch_sets_only_what_differs_guarded_by_name(case: str, bundles: list[str | None], ops: list[int]) -> None:
    want = base64.b64encode(b"new").decode()
    hooks = [
        {"name": f"h{i}.meshplug.io", "clientConfig": {"url": "https://x"} | ({"caBundle": b} if b else {})}
        for i, b in enumerate(bundles)
    ]
    expected: list[dict[str, Any]] = []
    for i in ops:
        expected += [
            {"op": "test", "path": f"/webhooks/{i}/name", "value": f"h{i}.meshplug.io"},
            {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": want},
        ]
    assert webhook_tls._patch(hooks, want) == expected, case


def test_ca_bundle_refuses_unknown_kinds() -> None:
    with pytest.raises(errors.ConfigError):
        webhook_tls.CaBundle(None, {"apiservices": ("x",)})  # type: ignore[arg-type]
