"""meshplug.agent.trust and fetch.load_public_keys: the agent's own list of signing keys, read from a PEM bundle at
start and again when the file changes; a key outside it (or a list that cannot be read) is ``signature_untrusted``.
The same list against the real cosign, through pushes: tests/integration/test_agent_signatures.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshplug import errors, fetch
from meshplug.agent import trust
from meshplug.fetch import keys as keys_mod


def _key() -> fetch.PublicKey:
    return keys_mod.PrivateKey(ec.generate_private_key(ec.SECP256R1())).public()


def _write(path: Path, data: bytes) -> None:
    """As the kubelet updates a mounted Secret: a new file put in place."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


A, B, C = _key(), _key(), _key()


@pytest.mark.parametrize(
    ("case", "bundle", "error"),
    [
        ("empty", b"", "is not a bundle of PEM public keys"),
        ("not PEM", b"ssh-ed25519 AAAA", "is not a bundle of PEM public keys"),
        ("text before the first key", b"junk\n" + A.pem().encode(), "is not a bundle of PEM public keys"),
        ("a broken second key", (A.pem() + "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").encode(),
         "keys, key 2 is not a readable PEM public key"),
    ],
)  # fmt: skip
def test_a_bundle_that_is_not_public_keys_is_refused(case: str, bundle: bytes, error: str) -> None:
    with pytest.raises(errors.ConfigError, match=error):
        fetch.load_public_keys(bundle, what="keys")


def test_a_bundle_holds_its_keys_in_order() -> None:
    got = fetch.load_public_keys((A.pem() + "\n" + B.pem()).encode())
    assert [k.hint for k in got] == [A.hint, B.hint]


def test_only_the_listed_keys_are_trusted_and_a_new_file_is_read_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "trusted-keys.pem"
    _write(path, (A.pem() + B.pem()).encode())
    trusted = trust.TrustedKeys(path)
    trusted.check(A)
    trusted.check(B)
    with pytest.raises(errors.SignatureError) as refused:
        trusted.check(C)
    assert refused.value.reason == trust.UNTRUSTED == "signature_untrusted"
    assert f"key {C.key_id} is not one of the agent's trusted keys ({A.key_id}, {B.key_id}; {path})" in str(
        refused.value
    )
    _write(path, C.pem().encode())  # a rotation through the Secret
    trusted.check(C)
    with pytest.raises(errors.SignatureError, match=f"key {A.key_id} is not one of"):
        trusted.check(A)
    assert trusted.describe() == f"1 trusted key(s) from {path}: {C.key_id}"


@pytest.mark.parametrize(
    ("case", "later", "message"),
    [
        ("the file is gone", None, "cannot read trusted keys file"),
        ("the file holds no keys", b"", "is not a bundle of PEM public keys"),
    ],
)
def test_a_list_that_cannot_be_read_later_refuses_every_key(
    case: str, later: bytes | None, message: str, tmp_path: Path
) -> None:
    path = tmp_path / "trusted-keys.pem"
    _write(path, A.pem().encode())
    trusted = trust.TrustedKeys(path)
    if later is None:
        path.unlink()
    else:
        _write(path, later)
    with pytest.raises(errors.SignatureError, match=message) as refused:
        trusted.check(A)
    assert refused.value.reason == "signature_untrusted", case


@pytest.mark.parametrize(("case", "content"), [("missing", None), ("empty", b""), ("not keys", b"hello")])
def test_a_list_that_cannot_be_read_at_start_stops_the_start(case: str, content: bytes | None, tmp_path: Path) -> None:
    path = tmp_path / "trusted-keys.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(errors.ConfigError, match=r"^--trusted-keys: ") as refused:
        trust.TrustedKeys(path)
    assert str(path) in str(refused.value), case
