"""The push port's mutual TLS: a server context that follows its mounted files, and the client name check.

Called by `meshplug.agent.runtime` when the config's ``push.tls`` is set. The certificate, key and client CA come
from files the kubelet refreshes when the operator rotates its Secret; `ReloadingContext.refresh` (run before each
new connection's handshake) reloads them into the same context when any of them changed, so a rotation needs no
restart, and keeps the previous material when the new files do not load (a half-written update). Client
certificates must chain to the CA (with the clientAuth usage: a certificate issued to another agent's push port
does not qualify) and carry ``client_name`` as their common name.
"""

from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from meshplug.agent import config

log = logging.getLogger("meshplug.agent.tls")


def _stamp(tls: config.PushTLS) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in (tls.cert_file, tls.key_file, tls.client_ca_file):
        try:
            st = os.stat(path)
        except OSError:
            out.append((0, 0, 0))
            continue
        out.append((st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class ReloadingContext:
    """A server SSLContext requiring client certificates; reloads the files behind it when they change."""

    def __init__(self, tls: config.PushTLS) -> None:
        self.tls = tls
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.verify_mode = ssl.CERT_REQUIRED
        self._stamp = _stamp(tls)
        self._load()  # a first load that fails is a start-up error (ssl.SSLError / OSError)

    def _load(self) -> None:
        self.context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        self.context.load_verify_locations(cafile=self.tls.client_ca_file)

    def refresh(self) -> None:
        stamp = _stamp(self.tls)
        if stamp == self._stamp:
            return
        try:
            self._load()
        except (OSError, ssl.SSLError) as exc:
            log.warning("push TLS files changed but do not load (keeping the previous ones): %s", exc)
            return
        self._stamp = stamp
        log.info("push TLS certificate reloaded from %s", self.tls.cert_file)

    def peer_allowed(self, peercert: Any) -> bool:
        """Whether a verified client certificate (``getpeercert()``) names the expected client."""
        if not isinstance(peercert, dict):
            return False
        names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
        if names == [self.tls.client_name]:
            return True
        log.warning("push connection refused: client certificate names %s, not %s", names, self.tls.client_name)
        return False
