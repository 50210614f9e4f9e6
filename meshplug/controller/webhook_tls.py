"""The admission webhooks' TLS when the operator keeps it (``webhook.tls.mode=operator``, the chart's default).

The chart then renders nothing per install (no generated CA, no Secret, no caBundle), so ``helm template`` gives
the same bytes every time and a GitOps tool sees no change to sync. Instead the operator

- serves the webhooks with a certificate issued from its own CA, the one it keeps in its identity Secret
  (`meshplug.controller.identity`), for the names the chart lists (the webhook Service's DNS names, or the host
  of ``webhook.url``): `ServingFiles`, a private file kopf's admission server reads (and restarts on when it
  changes), re-issued at half its validity and whenever the CA changes;
- sets that CA as ``webhooks[*].clientConfig.caBundle`` of the chart's webhook configurations, named in its
  webhook config: `CaBundle`, a JSON patch guarded by ``test`` operations under the field manager ``meshplug``,
  so the operator owns those caBundle fields and nothing else of the objects (a GitOps tool applying the
  chart's manifests, which carry no caBundle, keeps every other field and meets no conflict).

Called by `meshplug.controller.webhooks.register`: both at start and after each identity check
(`Identity.on_check`, every `limits.IDENTITY_CHECK_S`), so a new CA, or a caBundle someone removed, is put right
within that time. RBAC: ``get,patch`` on those configurations only (resourceNames; ``names=ca-bundle`` in
`meshplug.controller`'s list).
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meshplug import errors, limits
from meshplug.controller import apply, identity, pki

log = logging.getLogger("meshplug.controller.webhook_tls")

API_VERSION = "admissionregistration.k8s.io/v1"
#: plural (as RBAC names it) -> kind, of the configurations whose caBundle the operator keeps
KINDS = {
    "mutatingwebhookconfigurations": "MutatingWebhookConfiguration",
    "validatingwebhookconfigurations": "ValidatingWebhookConfiguration",
}
COMMON_NAME = "meshplug-webhook"
#: attempts of one caBundle update whose guarded patch found the list changed meanwhile
_PATCH_ATTEMPTS = 3


class ServingFiles:
    """The webhooks' serving key and certificate in one PEM file of a private directory, issued from the CA."""

    def __init__(
        self,
        ident: identity.Identity,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        directory: Path | None = None,
    ) -> None:
        if not dns_names and not ip_addresses:
            raise errors.ConfigError("webhook config: tls.issue names no dnsNames or ipAddresses")
        self.identity = ident
        self.dns_names = tuple(dns_names)
        self.ip_addresses = tuple(ip_addresses)
        self.path = (directory or Path(tempfile.mkdtemp(prefix="meshplug-webhook-tls-"))) / "tls.pem"
        self._ca = ""  # fingerprint of the CA that issued the current certificate
        self._cert = b""
        self.refresh()

    def refresh(self) -> bool:
        """Issue a new certificate when the CA changed or half the current one's validity is gone; True if so."""
        authority = self.identity.authority
        if authority.fingerprint == self._ca and pki.remaining(self._cert) > 0.5:
            return False
        issued = authority.issue(
            COMMON_NAME,
            client=False,
            validity=datetime.timedelta(seconds=limits.OPERATOR_CERT_VALIDITY_S),
            dns_names=self.dns_names,
            ip_addresses=self.ip_addresses,
        )
        # one file, replaced at once: kopf never reads a key beside another key's certificate
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tls-")
        with os.fdopen(fd, "wb") as out:
            out.write(issued.key_pem + issued.cert_pem)
        os.replace(tmp, self.path)
        self._ca, self._cert = authority.fingerprint, issued.cert_pem
        log.info("webhook TLS: serving certificate issued for %s", ", ".join(self.dns_names + self.ip_addresses))
        return True


class CaBundle:
    """Keeps ``webhooks[*].clientConfig.caBundle`` of the named webhook configurations equal to the CA."""

    def __init__(self, writer: apply.Writer, targets: Mapping[str, Sequence[str]]) -> None:
        unknown = sorted(set(targets) - set(KINDS))
        if unknown:
            raise errors.ConfigError(f"webhook config: tls.caBundle: unknown kinds {unknown}")
        self.writer = writer
        self.targets = {plural: tuple(names) for plural, names in targets.items()}

    def ensure(self, ca_pem: bytes) -> list[str]:
        """Update each configuration whose caBundle differs; the names of those updated. A configuration not
        there yet is left for the next call (the chart's objects may be applied after the operator starts)."""
        want = base64.b64encode(ca_pem).decode()
        updated = []
        for plural, names in sorted(self.targets.items()):
            for name in names:
                if self._ensure_one(KINDS[plural], name, want):
                    updated.append(f"{KINDS[plural]}/{name}")
        if updated:
            log.info("webhook TLS: caBundle set on %s", ", ".join(updated))
        return updated

    def _ensure_one(self, kind: str, name: str, want: str) -> bool:
        for _ in range(_PATCH_ATTEMPTS):
            obj = self.writer.get(API_VERSION, kind, "", name)
            if obj is None:
                log.warning("webhook TLS: %s %s not found (yet): its caBundle is set once it exists", kind, name)
                return False
            ops = _patch(obj.get("webhooks") or [], want)
            if not ops:
                return False
            try:
                self.writer.json_patch(API_VERSION, kind, "", name, ops)
            except errors.ApplyError as exc:
                if exc.reason != "Invalid":  # a failed test: the list changed between our read and our patch
                    raise
                continue
            return True
        raise errors.ApplyError(f"{kind} {name} kept changing while setting its caBundle", reason="Conflict")


def _patch(webhooks: Sequence[Mapping[str, Any]], want: str) -> list[dict[str, Any]]:
    """JSON patch operations setting ``want`` on each webhook whose caBundle differs, each guarded by a test of
    the webhook's name at that index."""
    ops: list[dict[str, Any]] = []
    for i, hook in enumerate(webhooks):
        if (hook.get("clientConfig") or {}).get("caBundle") == want:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.get("name")})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": want})
    return ops
