"""Who is who between the operator and its agents, with no Secret made by hand: the operator's CA and the Secrets it
keeps, the TLS contexts built on them, and the check of the agents' ServiceAccount tokens.

Called by `meshplug.commands.operator` (load at start, `run` on a thread), the injection webhook
(`ensure_agent_secret` before a pod is admitted), the agent delivery (`push_credentials`), the pod watch
(`adopt`) and the module server (`Reviewer`, `server_context`).

Secrets, all created, owned, rotated and removed by the operator:

- the identity Secret (``--identity-secret`` in ``--identity-namespace``, the operator's own): ``ca.crt``,
  ``ca.key`` (the CA, ECDSA P-256, `limits.CA_VALIDITY_DAYS`) and ``signing.key`` (the HMAC key of the module
  server's signed URLs, which Envoy's ``code.remote`` fetches). Whichever replica starts first creates it; the
  others, and every restart, read it (a create that finds it there reads it), so all replicas share one CA and
  key. Owned by the operator's Deployment (``--owner-deployment``), so uninstalling removes it. Deleting it rotates
  the CA: the operator makes a new one and re-issues every agent Secret from it.
- the agent Secret (``--agent-secret``, in each namespace with injected pods): ``ca.crt`` (the agents check the
  operator's client certificate and the module server's certificate with it), ``tls.crt``/``tls.key`` (the push
  port's serving certificate, DNS name ``meshplug-agent.<namespace>``, serverAuth only) and ``token`` (push bearer
  tokens, newest first: the second factor beside mutual TLS) and ``trusted-keys.pem``: the operator's trusted signing
  keys (``--trusted-key``), for the agents' own check, or, with none, `protocol.TRUSTED_KEYS_NONE` (the agents then
  check a signed module under the key its push names; one with --require-signatures refuses every module). The
  injection webhook creates it before it admits a namespace's first pod and mounts it into every agent; the leader
  keeps it current (a new CA, a certificate with less than `limits.CERT_RENEW_FRACTION` of its validity left, the
  trusted keys) and rotates the token every `limits.PUSH_TOKEN_ROTATION_S` (the previous token stays accepted for
  `limits.PUSH_TOKEN_OVERLAP_S`: the kubelet refreshes mounted Secrets within about a minute, and the operator falls
  back to it on a 401). Owned by the
  controllers of the injected pods (their ReplicaSet, StatefulSet, ... or the pod itself): the garbage collector
  removes it with the last of them.

In memory only, per operator process, renewed at half their validity: the push client certificate (CN
``meshplug-operator``, clientAuth) and the module server's serving certificate.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import queue
import secrets
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshplug import errors, limits, protocol
from meshplug.controller import apply, pki

log = logging.getLogger("meshplug.controller.identity")

#: the push client certificate's common name: agents accept pushes only from it
OPERATOR_NAME = "meshplug-operator"
DEFAULT_IDENTITY_SECRET = "meshplug-identity"  # noqa: S105 - a Secret's name
DEFAULT_AGENT_SECRET = "meshplug-agent"  # noqa: S105 - a Secret's name
#: keys of the identity Secret and of the agent Secrets
CA_CERT, CA_KEY, SIGNING_KEY = "ca.crt", "ca.key", "signing.key"
AGENT_CERT, AGENT_KEY, AGENT_TOKEN = "tls.crt", "tls.key", "token"
#: the agent Secret's copy of the operator's trusted signing keys (PEM, one after the other): `meshplug agent
#: --trusted-keys` reads it (meshplug.agent.trust)
AGENT_TRUSTED_KEYS = "trusted-keys.pem"
#: when the newest push token of an agent Secret was made (epoch seconds)
TOKEN_ISSUED_ANNOTATION = "meshplug.io/token-issued"  # noqa: S105 - an annotation's name
#: what an operator-made Secret is: "operator" (the identity Secret) or "agent"
IDENTITY_LABEL = "meshplug.io/identity"
MANAGED_BY = {"app.kubernetes.io/managed-by": "meshplug"}
#: the audience of the agents' projected ServiceAccount tokens (the chart's agent.tokenAudience)
DEFAULT_AUDIENCE = "meshplug"


def agent_server_name(namespace: str) -> str:
    """The DNS name in the agents' push certificate of ``namespace`` (the operator checks it on every push)."""
    return f"meshplug-agent.{namespace}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _data(secret: Mapping[str, Any] | None, key: str) -> bytes:
    raw = ((secret or {}).get("data") or {}).get(key)
    return base64.b64decode(raw) if raw else b""


@dataclass(frozen=True)
class PushCredentials:
    """How the operator authenticates one push: TLS (None: plain HTTP, local runs only) and bearer tokens."""

    tokens: tuple[str, ...] = field(repr=False)  # newest first; the next is tried on a 401
    context: ssl.SSLContext | None
    server_name: str


class _RenewingContext:
    """An SSLContext whose own certificate is issued from the CA and re-issued in place at half its validity
    (existing sockets keep theirs, new handshakes get the new one)."""

    def __init__(self, context: ssl.SSLContext, issue: Callable[[], pki.Issued]) -> None:
        self.context = context
        self._issue = issue
        self._cert = b""
        self.renew(force=True)

    def renew(self, *, force: bool = False) -> None:
        if not force and pki.remaining(self._cert) > 0.5:
            return
        issued = self._issue()
        load_chain(self.context, issued)
        self._cert = issued.cert_pem


def load_chain(context: ssl.SSLContext, issued: pki.Issued) -> None:
    """Load an in-memory certificate and key into ``context`` (the ssl module reads only files: a private
    temporary directory, removed at once)."""
    with tempfile.TemporaryDirectory(prefix="meshplug-tls-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(issued.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(issued.key_pem)
        context.load_cert_chain(cert, key)


class Identity:
    """The operator's CA and the Secrets it keeps (see the module docstring). Thread-safe."""

    def __init__(
        self,
        writer: apply.Writer,
        *,
        namespace: str,
        secret: str = DEFAULT_IDENTITY_SECRET,
        agent_secret: str = DEFAULT_AGENT_SECRET,
        owner_deployment: str = "",
        plaintext_push: bool = False,
        trusted_keys: bytes = b"",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not namespace:
            raise errors.ConfigError("the operator's namespace is unknown: set --identity-namespace or $POD_NAMESPACE")
        self.writer = writer
        self.namespace = namespace
        self.secret = secret
        self.agent_secret_name = agent_secret
        self.owner_deployment = owner_deployment
        self.plaintext_push = plaintext_push
        #: the operator's trusted signing keys (a PEM bundle), copied into every agent Secret; with none, the Secret
        #: says so in so many words (`protocol.TRUSTED_KEYS_NONE`): agents injected while there were keys then
        #: follow the operator (no list: the push's key) rather than refuse every signed module, unless they
        #: require signatures (then they refuse every module, and say why)
        self.trusted_keys = trusted_keys or protocol.TRUSTED_KEYS_NONE
        self.clock = clock
        self._lock = threading.RLock()
        self._authority: pki.Authority | None = None
        self._signing_key = b""
        self._client: _RenewingContext | None = None
        self._servers: list[_RenewingContext] = []
        self._after_check: list[Callable[[], None]] = []
        self._namespaces: dict[str, str] = {}  # agent Secrets this process keeps: namespace -> the Secret's uid
        self._adopted: set[tuple[str, str]] = set()  # (namespace, owner uid) already in the Secret's owners
        self._pending: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    # --- the identity Secret ------------------------------------------------------------------------------------

    @property
    def authority(self) -> pki.Authority:
        with self._lock:
            if self._authority is None:
                raise errors.ConfigError("identity not loaded")
            return self._authority

    @property
    def signing_key(self) -> str:
        """The module server's URL signing key (hex), the same in every replica."""
        with self._lock:
            return self._signing_key.decode()

    def load(self) -> bool:
        """Read the identity Secret, creating it when missing; True when the CA changed (or was first loaded)."""
        secret = self.writer.get("v1", "Secret", self.namespace, self.secret)
        if secret is None or not _data(secret, CA_CERT) or not _data(secret, CA_KEY):
            secret = self._create_identity(secret)
        authority = pki.Authority(_data(secret, CA_CERT), _data(secret, CA_KEY))
        servers: list[_RenewingContext] = []
        with self._lock:
            changed = self._authority is None or self._authority.fingerprint != authority.fingerprint
            self._authority = authority
            self._signing_key = _data(secret, SIGNING_KEY) or hashlib.sha256(authority.key_pem).hexdigest().encode()
            if changed:
                log.info("identity: CA %s from Secret %s/%s", authority.fingerprint[:16], self.namespace, self.secret)
                self._client = None  # rebuilt with the new CA on next use
                servers = list(self._servers) if self._authority is not None else []
        for renewing in servers if changed else []:
            renewing.renew(force=True)  # re-issued from the new CA
        return changed

    def _create_identity(self, existing: Mapping[str, Any] | None) -> dict[str, Any]:
        authority = pki.Authority.generate("meshplug-operator-ca", days=limits.CA_VALIDITY_DAYS)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.secret,
                "namespace": self.namespace,
                "labels": {**MANAGED_BY, IDENTITY_LABEL: "operator"},
            },
            "type": "Opaque",
            "data": {
                CA_CERT: _b64(authority.cert_pem),
                CA_KEY: _b64(authority.key_pem),
                SIGNING_KEY: _b64(secrets.token_hex(32).encode()),
            },
        }
        owner = self._owner_reference()
        if owner is not None:
            body["metadata"]["ownerReferences"] = [owner]
        try:
            if existing is not None:  # there but incomplete (someone emptied it): fill it
                body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
                return self.writer.replace(body)
            created = self.writer.create(body)
            log.info("identity: created Secret %s/%s with a new CA", self.namespace, self.secret)
            return created
        except errors.ApplyError as exc:
            if exc.reason not in ("AlreadyExists", "Conflict"):
                raise
        # another replica was first: use what it wrote
        secret = self.writer.get("v1", "Secret", self.namespace, self.secret)
        if secret is None:
            raise errors.ApplyError(f"Secret {self.namespace}/{self.secret} vanished while creating it", reason="Gone")
        return secret

    def _owner_reference(self) -> dict[str, Any] | None:
        if not self.owner_deployment:
            return None
        try:
            owner = self.writer.get("apps/v1", "Deployment", self.namespace, self.owner_deployment)
        except errors.ApplyError as exc:
            log.warning("identity: cannot read Deployment %s for ownership: %s", self.owner_deployment, exc.message)
            return None
        if owner is None:
            log.warning("identity: owner Deployment %s/%s not found", self.namespace, self.owner_deployment)
            return None
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": self.owner_deployment,
            "uid": owner["metadata"]["uid"],
        }

    # --- TLS contexts (in memory) --------------------------------------------------------------------------------

    def client_context(self) -> ssl.SSLContext:
        """The push client's context: the operator's client certificate, agents verified against the CA."""
        with self._lock:
            if self._client is None:
                authority = self.authority
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=authority.cert_pem.decode())
                context.minimum_version = ssl.TLSVersion.TLSv1_2
                self._client = _RenewingContext(
                    context,
                    lambda: self.authority.issue(
                        OPERATOR_NAME,
                        client=True,
                        validity=datetime.timedelta(seconds=limits.OPERATOR_CERT_VALIDITY_S),
                    ),
                )
            self._client.renew()
            return self._client.context

    def server_context(self, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()) -> ssl.SSLContext:
        """A serving context (the module server's HTTPS port) for these names, renewed by `run`."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        renewing = _RenewingContext(
            context,
            lambda: self.authority.issue(
                "meshplug-modules",
                client=False,
                validity=datetime.timedelta(seconds=limits.OPERATOR_CERT_VALIDITY_S),
                dns_names=dns_names,
                ip_addresses=ip_addresses,
            ),
        )
        with self._lock:
            self._servers.append(renewing)
        return context

    def push_credentials(self, namespace: str) -> PushCredentials:
        """Tokens and TLS for pushing to the agents of ``namespace`` (their Secret is made when missing)."""
        secret = self.ensure_agent_secret(namespace, maintain=True)
        tokens = tuple(t for t in _data(secret, AGENT_TOKEN).decode().split() if t)
        context = None if self.plaintext_push else self.client_context()
        return PushCredentials(tokens=tokens, context=context, server_name=agent_server_name(namespace))

    # --- the agent Secrets ---------------------------------------------------------------------------------------

    def ensure_agent_secret(self, namespace: str, *, maintain: bool = False) -> dict[str, Any]:
        """The agent Secret of ``namespace``, created when missing. ``maintain`` (the leader): also bring it up to
        date (re-issued certificate, rotated token) when due."""
        for _ in range(3):
            secret = self.writer.get("v1", "Secret", namespace, self.agent_secret_name)
            if secret is None:
                try:
                    secret = self.writer.create(self._agent_body(namespace, None))
                except errors.ApplyError as exc:
                    if exc.reason != "AlreadyExists":
                        raise
                    continue  # made meanwhile (another replica's webhook): read it
                log.info("identity: created agent Secret %s/%s", namespace, self.agent_secret_name)
                self._known(namespace, secret)
                return secret
            self._known(namespace, secret)
            if not maintain and _data(secret, AGENT_TRUSTED_KEYS) == self.trusted_keys:
                return secret  # (an agent injected now reads the trusted keys at start: they must be there)
            wanted = self._agent_body(namespace, secret)
            if wanted["data"] == secret.get("data") and wanted["metadata"].get("annotations") == (
                secret["metadata"].get("annotations") or {}
            ):
                return secret
            try:
                updated = self.writer.replace(wanted)
            except errors.ApplyError as exc:
                if exc.reason != "Conflict":
                    raise
                continue
            log.info("identity: updated agent Secret %s/%s", namespace, self.agent_secret_name)
            self._say_trust_change(namespace, _data(secret, AGENT_TRUSTED_KEYS))
            return updated
        raise errors.ApplyError(
            f"Secret {namespace}/{self.agent_secret_name} kept changing while updating it", reason="Conflict"
        )

    def _say_trust_change(self, namespace: str, before: bytes) -> None:
        """Log a change of the agents' trusted keys: removing the last one is a policy change, never silent."""
        if before == self.trusted_keys:
            return
        where = f"{namespace}/{self.agent_secret_name}"
        if self.trusted_keys == protocol.TRUSTED_KEYS_NONE and before not in (b"", protocol.TRUSTED_KEYS_NONE):
            log.warning(
                "identity: agent Secret %s: the operator trusts no signing key now (--trusted-key none): its agents "
                "check a signed module under the key its push names, and those with --require-signatures refuse "
                "every module",
                where,
            )
        else:
            log.info("identity: agent Secret %s: trusted signing keys updated", where)

    def _known(self, namespace: str, secret: Mapping[str, Any]) -> None:
        """Remember the namespace's Secret; a new one (recreated after the garbage collector took the old one)
        has no owners yet: forget who was adopted into the old one."""
        uid = str(secret["metadata"].get("uid", ""))
        with self._lock:
            if self._namespaces.get(namespace) != uid:
                self._adopted = {a for a in self._adopted if a[0] != namespace}
                self._namespaces[namespace] = uid

    def _agent_body(self, namespace: str, current: Mapping[str, Any] | None) -> dict[str, Any]:
        """The agent Secret as it should be now, keeping what is still good in ``current``."""
        authority = self.authority
        now = self.clock()
        name = agent_server_name(namespace)
        cert, key = _data(current, AGENT_CERT), _data(current, AGENT_KEY)
        if (
            _data(current, CA_CERT) != authority.cert_pem
            or not authority.issued_by_me(cert)
            or pki.dns_names(cert) != (name,)
            or pki.remaining(cert) < limits.CERT_RENEW_FRACTION
            or not key
        ):
            issued = authority.issue(
                "meshplug-agent",  # a common name has at most 64 characters; the DNS name carries the namespace
                client=False,
                validity=datetime.timedelta(days=limits.AGENT_CERT_VALIDITY_DAYS),
                dns_names=[name],
            )
            cert, key = issued.cert_pem, issued.key_pem
        tokens = [t for t in _data(current, AGENT_TOKEN).decode().split() if t]
        annotations = dict((current or {}).get("metadata", {}).get("annotations") or {})
        try:
            issued_at = float(annotations.get(TOKEN_ISSUED_ANNOTATION, "0"))
        except ValueError:
            issued_at = 0.0
        if not tokens or now - issued_at >= limits.PUSH_TOKEN_ROTATION_S:
            tokens = [secrets.token_urlsafe(32), *tokens[:1]]
            issued_at = now
        elif len(tokens) > 1 and now - issued_at >= limits.PUSH_TOKEN_OVERLAP_S:
            tokens = tokens[:1]
        annotations[TOKEN_ISSUED_ANNOTATION] = str(int(issued_at))
        meta: dict[str, Any] = {
            "name": self.agent_secret_name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, IDENTITY_LABEL: "agent"},
            "annotations": annotations,
        }
        if current is not None:
            meta["resourceVersion"] = current["metadata"]["resourceVersion"]
            if current["metadata"].get("ownerReferences"):
                meta["ownerReferences"] = current["metadata"]["ownerReferences"]
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "data": {
                CA_CERT: _b64(authority.cert_pem),
                AGENT_CERT: _b64(cert),
                AGENT_KEY: _b64(key),
                AGENT_TOKEN: _b64(("\n".join(tokens) + "\n").encode()),
                AGENT_TRUSTED_KEYS: _b64(self.trusted_keys),
            },
        }

    @staticmethod
    def _owner_of(pod: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(namespace, owner reference) for an injected pod: its controller, else the pod itself."""
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if not namespace or meta.get("deletionTimestamp"):
            return None
        refs = meta.get("ownerReferences") or []
        ref = next((r for r in refs if r.get("controller")), None)
        if ref is None:
            if not meta.get("uid"):
                return None
            ref = {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name"), "uid": meta["uid"]}
        return namespace, {k: ref[k] for k in ("apiVersion", "kind", "name", "uid")}

    def adopt_later(self, pod: Mapping[str, Any]) -> None:
        """`adopt` on the identity's own thread (the pod watch must not wait for API calls); cheap when the
        pod's owner is known already."""
        found = self._owner_of(pod)
        if found is None:
            return
        with self._lock:
            if (found[0], found[1]["uid"]) in self._adopted:
                return
            if self._worker is None:
                self._worker = threading.Thread(target=self._adopt_loop, name="meshplug-identity", daemon=True)
                self._worker.start()
        self._pending.put(dict(pod))

    def _adopt_loop(self) -> None:
        while True:
            pod = self._pending.get()
            try:
                self.adopt(pod)
            except errors.MeshplugError as exc:
                log.warning("identity: cannot adopt the agent Secret for pod %s: %s", pod["metadata"].get("name"), exc)

    def adopt(self, pod: Mapping[str, Any]) -> None:
        """Make the controller of an injected pod (or the pod) an owner of its namespace's agent Secret, which
        is created when missing: the garbage collector removes the Secret with the last of its owners."""
        found = self._owner_of(pod)
        if found is None:
            return
        namespace, owner = found
        with self._lock:
            if (namespace, owner["uid"]) in self._adopted:
                return
        for _ in range(3):
            secret = self.ensure_agent_secret(namespace)
            owners = list(secret["metadata"].get("ownerReferences") or [])
            if any(o.get("uid") == owner["uid"] for o in owners):
                break
            body = dict(secret)
            body["metadata"] = {**secret["metadata"], "ownerReferences": [*owners, owner]}
            try:
                self.writer.replace(body)
            except errors.ApplyError as exc:
                if exc.reason not in ("Conflict", "NotFound"):
                    raise
                continue
            break
        with self._lock:
            self._adopted.add((namespace, owner["uid"]))

    # --- the periodic check --------------------------------------------------------------------------------------

    def check(self, *, leader: bool) -> None:
        """Re-read the identity Secret (another replica may have made a new CA); renew in-memory certificates;
        the leader brings every agent Secret it knows up to date."""
        self.load()
        with self._lock:
            contexts = list(self._servers)
            namespaces = sorted(self._namespaces)
        for renewing in contexts:
            renewing.renew()
        for after in self.after_checks():
            after()
        if leader:
            for namespace in namespaces:
                try:
                    self.ensure_agent_secret(namespace, maintain=True)
                except errors.ApplyError as exc:
                    log.warning("identity: agent Secret of %s: %s", namespace, exc.message)

    def on_check(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after each `check`'s renewals (e.g. what else is issued from the CA: the webhooks' TLS)."""
        with self._lock:
            self._after_check.append(fn)

    def after_checks(self) -> list[Callable[[], None]]:
        with self._lock:
            return list(self._after_check)

    def run(self, stop: threading.Event, leader: Callable[[], bool]) -> None:
        """`check` every `limits.IDENTITY_CHECK_S` until ``stop``."""
        while not stop.wait(limits.IDENTITY_CHECK_S):
            try:
                self.check(leader=leader())
            except errors.MeshplugError as exc:
                log.error("identity check failed: %s", exc.message)


# --- the agents' ServiceAccount tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who presented a ServiceAccount token, as the API server's TokenReview says (bound to a pod)."""

    namespace: str
    service_account: str
    pod: str
    pod_uid: str


class Reviewer:
    """Checks bearer tokens with TokenReview for ``audiences``; confirmed tokens are cached briefly."""

    def __init__(self, writer: apply.Writer, audiences: Sequence[str], clock: Callable[[], float] = time.monotonic):
        self.writer = writer
        self.audiences = tuple(audiences)
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[Caller, float]] = OrderedDict()

    def review(self, token: str) -> Caller:
        """The pod behind ``token``; ProtocolError (reason ``unauthorized``) when the API server does not confirm
        it for our audience or it is not bound to a pod."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[1] > now:
                self._cache.move_to_end(key)
                return hit[0]
        try:
            status = self.writer.token_review(token, self.audiences)
        except errors.ApplyError as exc:
            raise errors.ProtocolError(f"TokenReview failed: {exc.message}", reason="review_failed") from None
        if not status.get("authenticated"):
            raise errors.ProtocolError(
                f"token not accepted: {status.get('error') or 'not authenticated'}", reason="unauthorized"
            )
        user = status.get("user") or {}
        username = str(user.get("username") or "")
        extra = user.get("extra") or {}
        parts = username.split(":")
        pod = (extra.get("authentication.kubernetes.io/pod-name") or [""])[0]
        uid = (extra.get("authentication.kubernetes.io/pod-uid") or [""])[0]
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"] or not pod:
            raise errors.ProtocolError(
                f"token of {username or 'nobody'} is not a ServiceAccount token bound to a pod", reason="unauthorized"
            )
        caller = Caller(namespace=parts[2], service_account=parts[3], pod=str(pod), pod_uid=str(uid))
        with self._lock:
            self._cache[key] = (caller, now + limits.TOKEN_REVIEW_CACHE_S)
            while len(self._cache) > limits.TOKEN_REVIEW_CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return caller
