"""The operator's certificate authority, pure: generate a CA, issue leaf certificates, read their validity.

Used by `meshplug.controller.identity` (which keeps the CA in a Secret and decides what to issue when). No I/O:
certificates and keys go in and out as PEM bytes. ECDSA P-256 throughout; every leaf names its one use in the
extended key usage (``serverAuth`` or ``clientAuth``), so a certificate issued to an agent's push port cannot
authenticate as the operator, and the operator's client certificate cannot serve.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshplug import errors

_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate of ours has: a random serial, valid from `now` (less the clock skew), basic
    constraints and the key usage (a CA signs certificates and CRLs; a leaf only signs handshakes)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=ca,
                crl_sign=ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    encoding, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(encoding, pkcs8, serialization.NoEncryption())


def load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise errors.ConfigError(f"not a PEM certificate: {exc}") from None


class Authority:
    """A CA certificate and its key; `issue` signs leaf certificates."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.cert_pem = cert_pem
        self.cert = load_cert(cert_pem)
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise errors.ConfigError(f"CA key is not a PEM private key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise errors.ConfigError("CA key must be an ECDSA key")
        if key.public_key().public_numbers() != self.cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise errors.ConfigError("CA key does not match the CA certificate")
        self._key = key
        self.key_pem = key_pem

    @classmethod
    def generate(cls, common_name: str, *, days: int) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            _builder(name, name, key.public_key(), now, now + datetime.timedelta(days=days), ca=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @property
    def fingerprint(self) -> str:
        """sha256 of the CA certificate's DER (what an issued certificate's issuer is compared by)."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def issued_by_me(self, cert_pem: bytes) -> bool:
        """Whether ``cert_pem`` was signed by this CA (issuer name and signature)."""
        try:
            cert = load_cert(cert_pem)
            cert.verify_directly_issued_by(self.cert)
        except Exception:  # unreadable, another issuer, a bad signature: not ours
            return False
        return True

    def issue(
        self,
        common_name: str,
        *,
        client: bool,
        validity: datetime.timedelta,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> Issued:
        """A leaf certificate for ``common_name`` (at most 64 characters) with these subject alternative names,
        and a new key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        end = min(now + validity, self.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in dict.fromkeys(ip_addresses)]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            _builder(subject, self.cert.subject, key.public_key(), now, end, ca=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def remaining(cert_pem: bytes, now: datetime.datetime | None = None) -> float:
    """The fraction of the certificate's validity still ahead (0 when expired or unreadable)."""
    try:
        cert = load_cert(cert_pem)
    except errors.ConfigError:
        return 0.0
    now = now or _now()
    total = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    left = (cert.not_valid_after_utc - now).total_seconds()
    return max(0.0, left / total) if total > 0 else 0.0


def dns_names(cert_pem: bytes) -> tuple[str, ...]:
    """The certificate's DNS subject alternative names (empty when it has none or is unreadable)."""
    try:
        ext = load_cert(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (errors.ConfigError, x509.ExtensionNotFound):
        return ()
    return tuple(ext.value.get_values_for_type(x509.DNSName))
