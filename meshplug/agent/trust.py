"""The agent's own list of trusted cosign public keys: which keys may sign the modules pushed to it.

Called by `meshplug.agent.loader` (`Sources.trusted`) before a signed module's signature is checked. The list
is a file of PEM public keys one after the other (cosign.pub files concatenated), given by `meshplug agent
--trusted-keys FILE` (or $MESHPLUG_TRUSTED_KEYS); injected agents read it from their Secret (the chart's
``signatures.trustedKeys``, copied there by the operator). It is read at start (a missing or unreadable file
stops the start: exit 2) and again whenever it changes, so a key rotation through the Secret needs no restart.

A push names the key its module's signature verifies under; without a list the agent trusts that key (whoever
can push can sign). With a list, a key that is not in it is refused before anything else: NACK
``signature_untrusted`` naming the key, the last good set keeps serving. A list that cannot be read at that
moment refuses too (never "no list, so trust anything").
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from meshplug import errors, fetch

#: the NACK reason of a module signed by a key outside the agent's list
UNTRUSTED = "signature_untrusted"


class TrustedKeys:
    """The keys of the file at `path`, re-read when it changes (size, mtime or inode). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: tuple[fetch.PublicKey, ...] = ()
        try:
            self.keys()
        except errors.SignatureError as exc:
            raise errors.ConfigError(f"--trusted-keys: {exc.message}") from None

    def keys(self) -> tuple[fetch.PublicKey, ...]:
        """The keys as the file holds them now; SignatureError (``signature_untrusted``) when it cannot be read."""
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp != self._stamp:
                    self._keys = fetch.load_public_keys(self.path.read_bytes(), what=f"trusted keys file {self.path}")
                    self._stamp = stamp
            except OSError as exc:
                self._stamp = None
                raise errors.SignatureError(
                    f"cannot read trusted keys file {self.path}: {exc.strerror}", reason=UNTRUSTED
                ) from None
            except errors.ConfigError as exc:
                self._stamp = None
                raise errors.SignatureError(exc.message, reason=UNTRUSTED) from None
            return self._keys

    def check(self, key: fetch.PublicKey) -> None:
        """Refuse `key` (SignatureError ``signature_untrusted``) unless it is one of the trusted keys."""
        trusted = self.keys()
        if not any(k.hint == key.hint for k in trusted):
            ids = ", ".join(k.key_id for k in trusted)
            raise errors.SignatureError(
                f"the push's signature key {key.key_id} is not one of the agent's trusted keys ({ids}; {self.path})",
                reason=UNTRUSTED,
            )

    def describe(self) -> str:
        keys = self.keys()
        return f"{len(keys)} trusted key(s) from {self.path}: {', '.join(k.key_id for k in keys)}"
