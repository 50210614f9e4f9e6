"""cosign signatures against the real cosign (tests/testbed/cosign.py) on the test bed's registry.

meshplug accepts what cosign signs, in both of cosign's layouts (the ``sha256-<hex>.sig`` tag and the Sigstore
bundle referrer), and refuses, each with its own message, an unsigned module, one signed by another key, one
whose signature was altered, and one whose signature is for another digest. What `meshplug sign` writes, in
both layouts, `cosign verify` accepts. A refused module is never downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshplug import errors
from meshplug.fetch import load_public_key, signatures
from tests.guests.minimal import passthrough
from tests.integration.test_fetch_oci import fetcher_for
from tests.testbed.cosign import PASSWORD
from tests.testbed.fixtures_cosign import CosignKit
from tests.testbed.registry import Registry


def _module(tag: str) -> bytes:
    """A distinct valid module per case (its own digest)."""
    return passthrough(f'(data (i32.const 2048) "{tag}")')


def _push(registry: Registry, repo: str, tag: str) -> str:
    return registry.push_layout("wasm-content-single-layer", repo, tag, _module(f"{repo}:{tag}"))


def _sig_manifest(registry: Registry, repo: str, digest: str) -> dict[str, object]:
    resp = registry.api(
        "GET",
        f"/v2/{repo}/manifests/{signatures.sig_tag(digest)}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert resp.status_code == 200, resp.text
    doc: dict[str, object] = resp.json()
    return doc


def _alter_signature(registry: Registry, repo: str, digest: str) -> None:
    """Keep cosign's payload, replace its signature by cosign's signature of another image."""
    other = _push(registry, repo, "other-image")
    manifest = _sig_manifest(registry, repo, digest)
    layers = manifest["layers"]
    assert isinstance(layers, list)
    foreign = _sig_manifest(registry, repo, other)["layers"]
    assert isinstance(foreign, list)
    layers[0]["annotations"] = dict(foreign[0]["annotations"])
    registry.push_manifest(repo, signatures.sig_tag(digest), manifest)


@dataclass(frozen=True)
class Case:
    name: str
    prepare: Callable[[CosignKit, Registry, str, str], None]  # (kit, registry, repo, digest)
    accepted: bool
    message: str = ""  # a regex the refusal matches
    layout: str = ""


def _cosign_tag(kit: CosignKit, reg: Registry, repo: str, digest: str) -> None:
    kit.cosign.sign(reg, f"{repo}@{digest}", kit.signer)


def _cosign_bundle(kit: CosignKit, reg: Registry, repo: str, digest: str) -> None:
    kit.cosign.sign(reg, f"{repo}@{digest}", kit.signer, bundle=True)


def _other_key(kit: CosignKit, reg: Registry, repo: str, digest: str) -> None:
    kit.cosign.sign(reg, f"{repo}@{digest}", kit.other)


def _other_key_bundle(kit: CosignKit, reg: Registry, repo: str, digest: str) -> None:
    kit.cosign.sign(reg, f"{repo}@{digest}", kit.other, bundle=True)


def _altered(kit: CosignKit, reg: Registry, repo: str, digest: str) -> None:
    kit.cosign.sign(reg, f"{repo}@{digest}", kit.signer)
    other = _push(reg, repo, "other-image")
    kit.cosign.sign(reg, f"{repo}@{other}", kit.signer)
    _alter_signature(reg, repo, digest)


def _for_another_digest(kit: CosignKit, reg: Registry, repo: str, digest: str) -> None:
    other = _push(reg, repo, "signed-image")
    kit.cosign.sign(reg, f"{repo}@{other}", kit.signer)
    reg.push_manifest(repo, signatures.sig_tag(digest), _sig_manifest(reg, repo, other))


def _unsigned(kit: CosignKit, reg: Registry, repo: str, digest: str) -> None:
    return


CASES = [
    Case("cosign tag layout", _cosign_tag, True, layout="tag"),
    Case("cosign bundle layout", _cosign_bundle, True, layout="bundle"),
    Case("missing signature", _unsigned, False, r"has no cosign signature"),
    Case("wrong key", _other_key, False, r"1 signature\(s\) found, none verifies under key"),
    Case("wrong key, bundle", _other_key_bundle, False, r"none verifies under key"),
    Case("bad signature", _altered, False, r"none verifies under key .*altered"),
    Case("signature for another digest", _for_another_digest, False, r"is for sha256:[0-9a-f]{64}, not this"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cosign_signatures_are_checked_before_the_module_is_pulled(
    case: Case, cosign: CosignKit, registries: dict[str, Registry], tmp_path: Path
) -> None:
    registry = registries["plain"]
    repo = "signed/" + re.sub(r"[^a-z]+", "-", case.name).strip("-")
    digest = _push(registry, repo, "v1")
    case.prepare(cosign, registry, repo, digest)
    key = load_public_key(cosign.signer.pub.read_bytes())
    fetcher = fetcher_for(registry, tmp_path)
    try:
        if case.accepted:
            artifact = fetcher.fetch(registry.url(repo, "v1"), keys=[key])
            assert artifact.signature is not None and artifact.signature.layout == case.layout
            assert artifact.signature.manifest_digest == digest and artifact.data == _module(f"{repo}:v1")
            return
        assert registry.proc is not None
        before = registry.proc.log().count(f"GET /v2/{repo}/blobs/")
        with pytest.raises(errors.SignatureError, match=case.message) as caught:
            fetcher.fetch(registry.url(repo, "v1"), keys=[key])
        assert caught.value.reason == "signature_invalid" and caught.value.exit_code == 20
        layers = [m for m in registry.proc.log().split("\n") if f"GET /v2/{repo}/blobs/" in m]
        module_layer = "sha256:" + hashlib.sha256(_module(f"{repo}:v1")).hexdigest()
        assert not [line for line in layers[before:] if module_layer in line], "the refused module was pulled"
        assert fetcher.metrics.fetches("signature_invalid") == 1
    finally:
        fetcher.close()


def _meshplug(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshplug", *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("layout", ["tag", "bundle"])
def test_cosign_verifies_what_meshplug_signs(
    layout: str, cosign: CosignKit, registries: dict[str, Registry], tmp_path: Path
) -> None:
    registry = registries["basic"]  # TLS + Basic auth: meshplug and cosign both log in
    secret = tmp_path / "secret.json"
    secret.write_bytes(registry.pull_secret())
    module = tmp_path / "plugin.wasm"
    module.write_bytes(_module(f"meshplug-{layout}"))
    flags = ["--pull-secret", str(secret), "--ca", str(registry.ca_file)]
    url = f"oci://{registry.host}/by-meshplug/{layout}:v1"
    pushed = _meshplug("push", str(module), url, *flags, "-o", "json")
    assert pushed.returncode == 0, pushed.stderr
    digest = json.loads(pushed.stdout)["manifest"]
    image = f"by-meshplug/{layout}@{digest}"
    unsigned = cosign.cosign.verify(registry, image, cosign.signer.pub, bundle=layout == "bundle")
    assert unsigned.returncode != 0  # cosign itself sees no signature yet
    env_sign = ["sign", "--key", str(cosign.signer.key), "--layout", layout, url, *flags]
    signed = subprocess.run(
        [sys.executable, "-m", "meshplug", *env_sign],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COSIGN_PASSWORD": PASSWORD},
    )
    assert signed.returncode == 0, signed.stderr
    verified = cosign.cosign.verify(registry, image, cosign.signer.pub, bundle=layout == "bundle")
    assert verified.returncode == 0, verified.stderr
    assert digest in verified.stdout
    wrong = cosign.cosign.verify(registry, image, cosign.other.pub, bundle=layout == "bundle")
    assert wrong.returncode != 0
    # and meshplug's own verify agrees, with its exit codes
    ok = _meshplug("verify", "--key", str(cosign.signer.pub), url, *flags)
    assert ok.returncode == 0 and f"({layout} layout)" in ok.stdout, ok.stderr
    refused = _meshplug("verify", "--key", str(cosign.other.pub), url, *flags)
    assert refused.returncode == 20 and "none verifies under key" in refused.stderr, refused.stderr


def test_pull_with_a_key_writes_nothing_for_an_unsigned_module(
    cosign: CosignKit, registries: dict[str, Registry], tmp_path: Path
) -> None:
    registry = registries["plain"]
    _push(registry, "unsigned/pull", "v1")
    out = tmp_path / "plugin.wasm"
    url = f"oci://{registry.host}/unsigned/pull:v1"
    pulled = _meshplug(
        "pull",
        url,
        "--key",
        str(cosign.signer.pub),
        "--insecure-registry",
        "-o",
        str(out),
        "--cache-dir",
        str(tmp_path),
    )
    assert pulled.returncode == 20, pulled.stderr
    assert "signature invalid" in pulled.stderr and "has no cosign signature" in pulled.stderr
    assert not out.exists()
    encoded = base64.b64encode(b"x").decode()  # a key that is not PEM is a usage error (2), not a refusal
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text(encoded)
    usage = _meshplug("pull", url, "--key", str(bad_key), "--insecure-registry", "-o", str(out))
    assert usage.returncode == 2 and "is not PEM" in usage.stderr, usage.stderr
