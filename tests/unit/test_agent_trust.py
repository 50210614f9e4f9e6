"""meshplug.agent.trust and fetch.load_public_keys: the agent's own list of signing keys, read from a PEM bundle at
start and again when the file changes; a key outside it (or a list that cannot be read) is ``signature_untrusted``;
the operator's explicit "none"; --require-signatures (``signature_required``, and no key trusted under "none").
The same list against the real cosign, through pushes: tests/integration/test_agent_signatures.py."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshplug import errors, fetch, protocol
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
    policy = trust.Policy(trust.TrustedKeys(path))
    policy.check(A)
    policy.check(B)
    with pytest.raises(errors.SignatureError) as refused:
        policy.check(C)
    assert refused.value.reason == trust.UNTRUSTED == "signature_untrusted"
    assert f"key {C.key_id} is not one of the agent's trusted keys ({A.key_id}, {B.key_id}; {path})" in str(
        refused.value
    )
    _write(path, C.pem().encode())  # a rotation through the Secret
    policy.check(C)
    with pytest.raises(errors.SignatureError, match=f"key {A.key_id} is not one of"):
        policy.check(A)
    assert policy.trusted is not None and policy.trusted.describe() == f"1 trusted key(s) from {path}: {C.key_id}"


@pytest.mark.parametrize(
    ("case", "later", "message"),
    [
        ("the file is gone", None, "cannot read trusted keys file"),
        ("the file holds no keys", b"", "is not a bundle of PEM public keys"),
        ("the file holds blanks", b"\n\n", "is not a bundle of PEM public keys"),
        ("the 'none' line with a key after it", protocol.TRUSTED_KEYS_NONE + A.pem().encode(),
         "is not a bundle of PEM public keys"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("required", [False, True])
def test_a_list_that_cannot_be_read_later_refuses_every_key(
    case: str, later: bytes | None, message: str, required: bool, tmp_path: Path
) -> None:
    """Missing, empty or not keys: never "no list" (only the operator's explicit "none" line says that)."""
    path = tmp_path / "trusted-keys.pem"
    _write(path, A.pem().encode())
    policy = trust.Policy(trust.TrustedKeys(path), required=required)
    if later is None:
        path.unlink()
    else:
        _write(path, later)
    with pytest.raises(errors.SignatureError, match=message) as refused:
        policy.check(A)
    assert refused.value.reason == "signature_untrusted", case
    assert "every pushed signed module is refused" in policy.describe(), case


# what each policy does with: an unsigned module, a module signed under A (listed), under C (not listed)
OK, REQUIRED, UNTRUSTED, NO_KEY = "loaded", "signature_required", "signature_untrusted", "signature_untrusted: none"


@pytest.mark.parametrize(
    ("case", "bundle", "required", "unsigned", "under_a", "under_c"),
    [
        ("no list", None, False, OK, OK, OK),
        ("a list", A.pem().encode(), False, OK, OK, UNTRUSTED),
        ("a list, required", A.pem().encode(), True, REQUIRED, OK, UNTRUSTED),
        ("the file says none", protocol.TRUSTED_KEYS_NONE, False, OK, OK, OK),
        ("the file says none, required", protocol.TRUSTED_KEYS_NONE, True, REQUIRED, NO_KEY, NO_KEY),
        ("the file says none (CRLF, no newline)", b"# meshplug: no trusted keys\r", False, OK, OK, OK),
    ],
)  # fmt: skip
def test_the_policy_table(  # noqa: PLR0917 (pytest parameters)
    case: str, bundle: bytes | None, required: bool, unsigned: str, under_a: str, under_c: str, tmp_path: Path
) -> None:
    """The table of meshplug.agent.trust's docstring, row by row."""
    path = tmp_path / "trusted-keys.pem"
    if bundle is not None:
        _write(path, bundle)
    policy = trust.Policy(trust.TrustedKeys(path) if bundle is not None else None, required=required)

    def outcome(run: Callable[[], None]) -> str:
        try:
            run()
        except errors.SignatureError as exc:
            if "trusts no key" in exc.message:
                assert f"({path} says the operator trusts none)" in exc.message
                return f"{exc.reason}: none"
            return exc.reason
        return OK

    assert outcome(lambda: policy.unsigned("module sha256:ab")) == unsigned, case
    assert outcome(lambda: policy.check(A)) == under_a, case
    assert outcome(lambda: policy.check(C)) == under_c, case
    if unsigned == REQUIRED:
        with pytest.raises(errors.SignatureError, match=r"^module sha256:ab has no signature, and this agent requires"):
            policy.unsigned("module sha256:ab")


def test_signatures_required_without_a_list_stop_the_start() -> None:
    with pytest.raises(errors.ConfigError, match=r"^--require-signatures needs --trusted-keys FILE"):
        trust.Policy(None, required=True)


def test_each_change_of_the_list_is_logged_and_emptying_it_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "trusted-keys.pem"
    _write(path, A.pem().encode())
    policy = trust.Policy(trust.TrustedKeys(path))
    caplog.set_level(logging.INFO, logger="meshplug.agent.trust")
    _write(path, (A.pem() + B.pem()).encode())
    policy.check(B)
    _write(path, protocol.TRUSTED_KEYS_NONE)
    policy.check(C)
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert said == [
        (logging.INFO, f"signatures: trusted keys file {path} changed: now 2 trusted key(s) from {path}: "
                       f"{A.key_id}, {B.key_id}"),
        (logging.WARNING, f"signatures: trusted keys file {path} now says the operator trusts no key "
                          f"(was: {A.key_id}, {B.key_id})"),
    ]  # fmt: skip


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


NOT_PEM = b"ssh-ed25519 AAAA"
BROKEN_SECOND = (A.pem() + "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").encode()
REQUIRED_SAID = "every pushed module must be signed (--require-signatures)"


@pytest.mark.parametrize(
    ("case", "bundle", "required", "said", "code"),
    [
        ("no list", None, False, "signatures: no trusted keys (--trusted-keys, $MESHPLUG_TRUSTED_KEYS)", 0),
        ("two keys", (A.pem() + B.pem()).encode(), False,
         f"signatures: pushed signed modules must verify under one of 2 trusted key(s) from {{path}}: {A.key_id}, "
         f"{B.key_id}; unsigned pushed modules are loaded", 0),
        ("none", protocol.TRUSTED_KEYS_NONE, False,
         "signatures: no trusted keys ({path} says none): a pushed signed module is checked under the key its push "
         "names; unsigned pushed modules are loaded", 0),
        ("not PEM", NOT_PEM, False, "--trusted-keys: trusted keys file {path} is not a bundle of PEM", 2),
        ("a broken second key", BROKEN_SECOND, False,
         "--trusted-keys: trusted keys file {path}, key 2 is not a readable PEM public key", 2),
        ("missing", b"", False, "--trusted-keys: cannot read trusted keys file {path}: No such file or directory", 2),
        ("required, no list", None, True,
         "--require-signatures needs --trusted-keys FILE (or $MESHPLUG_TRUSTED_KEYS)", 2),
        ("required, a key", A.pem().encode(), True,
         f"must verify under one of 1 trusted key(s) from {{path}}: {A.key_id}; {REQUIRED_SAID}", 0),
        ("required, none", protocol.TRUSTED_KEYS_NONE, True,
         f"signatures: no trusted keys ({{path}} says none): every pushed module is refused; {REQUIRED_SAID}", 0),
    ],
)  # fmt: skip
@pytest.mark.parametrize("given", ["flags", "environment"])
def test_agent_check_says_what_the_signature_policy_is_or_why_not(  # noqa: PLR0917 (pytest parameters)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
    bundle: bytes | None,
    required: bool,
    said: str,
    code: int,
    given: str,
) -> None:
    """`meshplug agent --check` loads the signature policy as the start would: the trusted keys' count and ids (or the
    operator's "none"), whether every pushed module must be signed, or the start's error (exit 2) for a file that
    is not a PEM bundle or cannot be read, and for --require-signatures without a list. Given as flags
    (--trusted-keys, --require-signatures) or in the environment ($MESHPLUG_TRUSTED_KEYS,
    $MESHPLUG_REQUIRE_SIGNATURES=1)."""
    from meshplug import cli

    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps(CONFIG))
    path = tmp_path / "trusted-keys.pem"
    if bundle and case != "missing":
        path.write_bytes(bundle)
    argv = ["agent", "--config", str(cfg), "--check"]
    monkeypatch.delenv("MESHPLUG_TRUSTED_KEYS", raising=False)
    monkeypatch.delenv("MESHPLUG_REQUIRE_SIGNATURES", raising=False)
    if given == "flags":
        argv += ["--trusted-keys", str(path)] if bundle is not None else []
        argv += ["--require-signatures"] if required else []
    else:
        if bundle is not None:
            monkeypatch.setenv("MESHPLUG_TRUSTED_KEYS", str(path))
        if required:
            monkeypatch.setenv("MESHPLUG_REQUIRE_SIGNATURES", "1")
    assert cli.main(argv) == code, case
    out = capsys.readouterr()
    assert said.format(path=path) in (out.out if code == 0 else out.err), out
