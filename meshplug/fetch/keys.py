"""Signing keys as cosign writes them: `cosign.pub` (a PEM public key) and `cosign.key` (a PEM private key
encrypted with scrypt + NaCl secretbox, password from $COSIGN_PASSWORD, as `cosign generate-key-pair` makes it).

Used by `meshplug.fetch.signatures` (verify) and `meshplug sign` (sign). Schemes: ECDSA P-256/P-384 with SHA-256
(cosign's default and the scheme its signature spec requires), Ed25519 and RSA (PKCS#1 v1.5, SHA-256). Problems
are `errors.ConfigError` naming the key, never its bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from meshplug import errors

#: PEM labels of encrypted private keys (cosign >= 2.0, and cosign 1.x)
ENCRYPTED_LABELS = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
_SCRYPT_MAXMEM = 256 * 1024 * 1024

PublicKeyTypes = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
PrivateKeyTypes = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class PublicKey:
    """A verification key; ``key_id`` (sha256 of its DER SubjectPublicKeyInfo, 12 hex) names it in messages."""

    key: PublicKeyTypes
    key_id: str
    #: sha256 of the DER SubjectPublicKeyInfo (a Sigstore bundle's ``publicKey.hint``, base64)
    hint: bytes

    def verify(self, payload: bytes, signature: bytes) -> bool:
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, payload)
            else:
                self.key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def pem(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


@dataclass(frozen=True)
class PrivateKey:
    key: PrivateKeyTypes

    def sign(self, payload: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(payload, ec.ECDSA(hashes.SHA256()))
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(payload)
        return self.key.sign(payload, padding.PKCS1v15(), hashes.SHA256())

    def public(self) -> PublicKey:
        return _public(self.key.public_key())


def _public(key: object) -> PublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise errors.ConfigError(f"unsupported key type {type(key).__name__.removeprefix('_')}")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(der).digest()
    return PublicKey(key, digest.hex()[:12], digest)


def load_public_key(pem: str | bytes, *, what: str = "verification key") -> PublicKey:
    """A PEM ``PUBLIC KEY`` (what `cosign generate-key-pair` writes to cosign.pub, and Istio's verificationKey)."""
    data = pem.encode() if isinstance(pem, str) else pem
    if b"-----BEGIN" not in data:
        raise errors.ConfigError(f"{what} is not PEM (expected -----BEGIN PUBLIC KEY-----)")
    try:
        return _public(serialization.load_pem_public_key(data))
    except ValueError:
        raise errors.ConfigError(f"{what} is not a readable PEM public key") from None


def load_public_keys(pem: bytes, *, what: str = "verification keys") -> tuple[PublicKey, ...]:
    """Every PEM ``PUBLIC KEY`` of a bundle (cosign.pub files one after the other, like a CA bundle), in order;
    ConfigError when one is not readable or there are none."""
    begin = b"-----BEGIN PUBLIC KEY-----"
    blocks = [begin + part for part in pem.split(begin)[1:]]
    if not blocks or pem.split(begin)[0].strip():
        raise errors.ConfigError(f"{what} is not a bundle of PEM public keys (-----BEGIN PUBLIC KEY----- ...)")
    return tuple(load_public_key(block, what=f"{what}, key {i + 1}") for i, block in enumerate(blocks))


def _pem_body(data: bytes, label: str) -> bytes:
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    body = data.split(begin, 1)[1].split(end, 1)[0]
    return base64.b64decode(b"".join(body.split()))


def _decrypt(blob: bytes, password: bytes, what: str) -> bytes:
    """The secure-systems-lab "encrypted" envelope: scrypt KDF, then NaCl secretbox (XSalsa20-Poly1305)."""
    import nacl.exceptions  # noqa: PLC0415 - only signing with an encrypted key needs NaCl
    import nacl.secret  # noqa: PLC0415

    try:
        doc = json.loads(blob)
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise errors.ConfigError(f"{what}: unsupported encryption {kdf['name']}/{cipher['name']}")
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(doc["ciphertext"])
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
    except (ValueError, KeyError, TypeError):
        raise errors.ConfigError(f"{what}: not an encrypted sigstore key") from None
    secret = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    try:
        return bytes(nacl.secret.SecretBox(secret).decrypt(ciphertext, nonce))
    except nacl.exceptions.CryptoError:
        raise errors.ConfigError(f"{what}: wrong password (set COSIGN_PASSWORD)") from None


def load_private_key(pem: bytes, password: bytes | None, *, what: str = "signing key") -> PrivateKey:
    """cosign.key (encrypted; ``password`` as for cosign, may be empty) or an unencrypted PKCS#8/SEC1 PEM key."""
    label = next((lbl for lbl in ENCRYPTED_LABELS if f"-----BEGIN {lbl}-----".encode() in pem), None)
    try:
        if label is not None:
            der = _decrypt(_pem_body(pem, label), password or b"", what)
            key = serialization.load_der_private_key(der, password=None)
        else:
            key = serialization.load_pem_private_key(pem, password=password or None)
    except (ValueError, TypeError):
        raise errors.ConfigError(f"{what} is not a readable private key (cosign.key or PEM)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise errors.ConfigError(f"{what}: unsupported key type {type(key).__name__.removeprefix('_')}")
    return PrivateKey(key)
