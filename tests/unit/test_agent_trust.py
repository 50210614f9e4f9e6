"""meshplug.agent.trust and fetch.load_public_keys: the agent's own list of signing keys, read from a PEM bundle at
start and again when the file changes; a key outside it (or a list that cannot be read) is ``signature_untrusted``.
The same list against the real cosign, through pushes: tests/integration/test_agent_signatures.py."""

from __future__ import annotations

import json
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


CONFIG = {
    "listeners": [{"name": "in", "port": 15006, "cluster": "app"}],
    "clusters": [{"name": "app", "port": 8080}],
    "admin": {"port": 15000},
}


@pytest.mark.parametrize(
    ("case", "bundle", "said", "code"),
    [
        ("no list", None, "trusted keys: none (--trusted-keys, $MESHPLUG_TRUSTED_KEYS)", 0),
        ("two keys", (A.pem() + B.pem()).encode(), f"2 trusted key(s) from {{path}}: {A.key_id}, {B.key_id}", 0),
        ("not PEM", b"ssh-ed25519 AAAA", "--trusted-keys: trusted keys file {path} is not a bundle of PEM", 2),
        ("a broken second key", (A.pem() + "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").encode(),
         "--trusted-keys: trusted keys file {path}, key 2 is not a readable PEM public key", 2),
        ("missing", b"", "--trusted-keys: cannot read trusted keys file {path}: No such file or directory", 2),
    ],
)  # fmt: skip
@pytest.mark.parametrize("given", ["--trusted-keys", "$MESHPLUG_TRUSTED_KEYS"])
def test_agent_check_says_how_many_trusted_keys_load_or_why_not(  # noqa: PLR0917 (pytest parameters)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    bundle: bytes | None,
    said: str,
    code: int,
    given: str,
) -> None:
    """`meshplug agent --check` loads the trusted keys as the start would: their count and ids, or the start's error
    (exit 2) for a file that is not a PEM bundle or cannot be read."""
    from meshplug import cli

    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps(CONFIG))
    path = tmp_path / "trusted-keys.pem"
    if bundle and case != "missing":
        path.write_bytes(bundle)
    argv = ["agent", "--config", str(cfg), "--check"]
    monkeypatch.delenv("MESHPLUG_TRUSTED_KEYS", raising=False)
    if bundle is not None:
        if given == "--trusted-keys":
            argv += ["--trusted-keys", str(path)]
        else:
            monkeypatch.setenv("MESHPLUG_TRUSTED_KEYS", str(path))
    assert cli.main(argv) == code, case
    out = capsys.readouterr()
    assert said.format(path=path) in (out.out if code == 0 else out.err), out
