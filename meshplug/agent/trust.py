"""The agent's own signature policy: which keys may sign the modules pushed to it, and whether every pushed module
must be signed.

Called by `meshplug.agent.loader` (`Sources.signatures`): `Policy.unsigned` for a pushed resource without a
signature, `Policy.check` before a signed module's signature is checked. The list is a file of PEM public keys one
after the other (cosign.pub files concatenated), given by `meshplug agent --trusted-keys FILE` (or
$MESHPLUG_TRUSTED_KEYS); injected agents read it from their Secret (the chart's ``signatures.trustedKeys``, copied
there by the operator). It is read at start (a missing or unreadable file stops the start: exit 2) and again
whenever it changes, so a key rotation through the Secret needs no restart; each change is logged with the keys it
leaves. The file may instead say, in so many words, that there is no list (`protocol.TRUSTED_KEYS_NONE`: the
operator trusts no key); an empty, missing or unreadable file never means that.

    a pushed ...        no --trusted-keys      a list of keys              the file says "none"
    unsigned module     loaded                 loaded                      loaded
      (required)        (the start refuses)    NACK signature_required     NACK signature_required
    signed module       under the push's key   under a key of the list,    under the push's key
                        (said at start)        else NACK                   (said when the file
                                               signature_untrusted         changes)
      (required)        (the start refuses)    the same                    NACK signature_untrusted
                                                                           ("trusts no key")

(required: `meshplug agent --require-signatures`, $MESHPLUG_REQUIRE_SIGNATURES=1; inline Lua counts as unsigned.)

A list that cannot be read at that moment refuses every signed module (``signature_untrusted``; never "no list, so
trust anything"). `--require-signatures` without `--trusted-keys` stops the start: without a list of its own the
agent would trust whatever key a push names, so requiring a signature would prove nothing. The static config's
own plugins (files the agent's config names) are not pushed: the policy is for pushes.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from meshplug import errors, fetch, protocol

log = logging.getLogger("meshplug.agent.trust")

#: the NACK reason of a module signed by a key outside the agent's list (or when the agent trusts no key)
UNTRUSTED = "signature_untrusted"
#: the NACK reason of a pushed module without a signature, to an agent with --require-signatures
REQUIRED = "signature_required"


class TrustedKeys:
    """The keys of the file at `path`, re-read when it changes (size, mtime or inode). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: tuple[fetch.PublicKey, ...] = ()
        self._seen: tuple[str, ...] | None = None  # the key ids last logged (None: nothing read yet)
        try:
            self.keys()
        except errors.SignatureError as exc:
            raise errors.ConfigError(f"--trusted-keys: {exc.message}") from None

    def keys(self) -> tuple[fetch.PublicKey, ...]:
        """The keys as the file holds them now (``()``: the file says there is no list); SignatureError
        (``signature_untrusted``) when it cannot be read."""
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                if stamp != self._stamp:
                    data = self.path.read_bytes()
                    if data.strip() == protocol.TRUSTED_KEYS_NONE.strip():
                        self._keys = ()
                    else:
                        self._keys = fetch.load_public_keys(data, what=f"trusted keys file {self.path}")
                    self._stamp = stamp
                    self._changed()
            except OSError as exc:
                self._stamp = None
                raise errors.SignatureError(
                    f"cannot read trusted keys file {self.path}: {exc.strerror}", reason=UNTRUSTED
                ) from None
            except errors.ConfigError as exc:
                self._stamp = None
                raise errors.SignatureError(exc.message, reason=UNTRUSTED) from None
            return self._keys

    def _changed(self) -> None:
        ids = tuple(k.key_id for k in self._keys)
        if self._seen is not None and ids != self._seen:
            if ids:
                log.info("signatures: trusted keys file %s changed: now %s", self.path, self._summary())
            else:
                log.warning(
                    "signatures: trusted keys file %s now says the operator trusts no key (was: %s)",
                    self.path,
                    ", ".join(self._seen) or "none",
                )
        self._seen = ids

    def _summary(self) -> str:
        if not self._keys:
            return f"no trusted keys ({self.path} says none)"
        return f"{len(self._keys)} trusted key(s) from {self.path}: {', '.join(k.key_id for k in self._keys)}"

    def describe(self) -> str:
        self.keys()
        with self._lock:
            return self._summary()


class Policy:
    """What the agent demands of pushed modules: `required` (every one signed), `trusted` (None: no list)."""

    def __init__(self, trusted: TrustedKeys | None, *, required: bool = False) -> None:
        if required and trusted is None:
            raise errors.ConfigError(
                "--require-signatures needs --trusted-keys FILE (or $MESHPLUG_TRUSTED_KEYS): without a list of its "
                "own the agent would trust whatever key a push names"
            )
        self.trusted = trusted
        self.required = required

    def unsigned(self, what: str) -> None:
        """A pushed ``what`` (a module, or inline Lua) carries no signature: refused when signatures are required."""
        if self.required:
            raise errors.SignatureError(
                f"{what} has no signature, and this agent requires signed modules (--require-signatures)",
                reason=REQUIRED,
            )

    def check(self, key: fetch.PublicKey) -> None:
        """Refuse `key` (SignatureError ``signature_untrusted``) unless the agent trusts it: it is in the list, or
        there is no list and signatures are not required."""
        if self.trusted is None:
            return
        trusted = self.trusted.keys()
        if not trusted:
            if self.required:
                raise errors.SignatureError(
                    f"the push's signature key {key.key_id} cannot be trusted: this agent requires signed modules "
                    f"(--require-signatures) and trusts no key ({self.trusted.path} says the operator trusts none)",
                    reason=UNTRUSTED,
                )
            return
        if not any(k.hint == key.hint for k in trusted):
            ids = ", ".join(k.key_id for k in trusted)
            raise errors.SignatureError(
                f"the push's signature key {key.key_id} is not one of the agent's trusted keys ({ids}; "
                f"{self.trusted.path})",
                reason=UNTRUSTED,
            )

    def others(self, key: fetch.PublicKey) -> tuple[fetch.PublicKey, ...]:
        """The trusted keys other than ``key`` (to say which one made a signature the push's key does not
        verify); () when there is no list or it cannot be read."""
        if self.trusted is None:
            return ()
        try:
            trusted = self.trusted.keys()
        except errors.SignatureError:
            return ()
        return tuple(k for k in trusted if k.hint != key.hint)

    def describe(self) -> str:
        """One line for the start-up log, `meshplug agent --check` and /config_dump."""
        unsigned = (
            "every pushed module must be signed (--require-signatures)"
            if self.required
            else "unsigned pushed modules are loaded"
        )
        if self.trusted is None:
            return (
                "no trusted keys (--trusted-keys, $MESHPLUG_TRUSTED_KEYS): a pushed signed module is checked under "
                f"the key its push names, so whoever can push can sign; {unsigned}"
            )
        try:
            keys = self.trusted.describe()
        except errors.SignatureError as exc:
            return f"{exc.message}: every pushed signed module is refused; {unsigned}"
        if self.trusted.keys():
            return f"pushed signed modules must verify under one of {keys}; {unsigned}"
        if self.required:
            return f"{keys}: every pushed module is refused; {unsigned}"
        return f"{keys}: a pushed signed module is checked under the key its push names; {unsigned}"
