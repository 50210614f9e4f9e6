"""meshplug.controller.identity and pki: what the operator keeps in its Secrets and when it changes them.

The Secrets go through a small in-memory stand-in for the API writer (get/create/replace with resourceVersion
conflicts, as the API server answers them); the same code runs against the real API server in
tests/integration/test_operator_agent.py, test_webhook.py and test_chart_only.py."""

from __future__ import annotations

import base64
import copy
import datetime
import itertools
import logging
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshplug import errors, fetch, limits, protocol
from meshplug.controller import identity, pki

NS = "meshplug-system"
_rv = itertools.count(1)


class Writer:
    """Secrets and Deployments by (namespace, name), as the API server keeps them."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.review: dict[str, Any] = {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if key in self.objects:
            raise errors.ApplyError("exists", reason="AlreadyExists")
        stored = copy.deepcopy(obj)
        stored["metadata"].update(resourceVersion=str(next(_rv)), uid=f"uid-{next(_rv)}")
        self.objects[key] = stored
        self.writes.append(("create", *key[1:]))
        return copy.deepcopy(stored)

    def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        current = self.objects.get(key)
        if current is None:
            raise errors.ApplyError("gone", reason="NotFound")
        if current["metadata"]["resourceVersion"] != obj["metadata"].get("resourceVersion"):
            raise errors.ApplyError("conflict", reason="Conflict")
        stored = copy.deepcopy(obj)
        stored["metadata"].update(resourceVersion=str(next(_rv)), uid=current["metadata"]["uid"])
        self.objects[key] = stored
        self.writes.append(("replace", *key[1:]))
        return copy.deepcopy(stored)

    def token_review(self, token: str, audiences: tuple[str, ...]) -> dict[str, Any]:
        self.writes.append(("tokenreview", token, ",".join(audiences)))
        return copy.deepcopy(self.review)


def data(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def writer() -> Writer:
    w = Writer()
    w.objects[("Deployment", NS, "mp-operator")] = {"metadata": {"name": "mp-operator", "uid": "dep-uid"}}
    return w


def ident(writer: Writer, clock: Clock | None = None, trusted_keys: bytes = b"") -> identity.Identity:
    i = identity.Identity(
        writer,  # type: ignore[arg-type]
        namespace=NS,
        secret="mp-identity",
        owner_deployment="mp-operator",
        trusted_keys=trusted_keys,
        clock=clock or Clock(),
    )
    i.load()
    return i


def test_the_first_replica_creates_the_ca_the_others_and_restarts_reuse_it(writer: Writer) -> None:
    first = ident(writer)
    secret = writer.get("v1", "Secret", NS, "mp-identity")
    assert secret is not None
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mp-operator", "uid": "dep-uid"}
    ]
    assert secret["metadata"]["labels"][identity.IDENTITY_LABEL] == "operator"
    second, restarted = ident(writer), ident(writer)
    assert first.authority.fingerprint == second.authority.fingerprint == restarted.authority.fingerprint
    assert first.signing_key == second.signing_key and len(first.signing_key) == 64
    assert [w for w in writer.writes if w[0] == "create"] == [("create", NS, "mp-identity")]


def test_a_deleted_identity_secret_is_a_new_ca_and_every_agent_secret_follows(writer: Writer) -> None:
    i = ident(writer)
    old = i.authority.fingerprint
    agent = i.ensure_agent_secret("shop")
    del writer.objects[("Secret", NS, "mp-identity")]
    i.check(leader=True)
    assert i.authority.fingerprint != old
    renewed = writer.get("v1", "Secret", "shop", identity.DEFAULT_AGENT_SECRET)
    assert renewed is not None and data(renewed, identity.CA_CERT) == i.authority.cert_pem
    assert i.authority.issued_by_me(data(renewed, identity.AGENT_CERT))
    assert data(renewed, identity.AGENT_TOKEN) == data(agent, identity.AGENT_TOKEN), "the token is not tied to the CA"


def test_the_agent_secret_holds_a_serving_certificate_for_its_namespace_only(writer: Writer) -> None:
    i = ident(writer)
    secret = i.ensure_agent_secret("shop")
    assert sorted(secret["data"]) == ["ca.crt", "tls.crt", "tls.key", "token", "trusted-keys.pem"]
    cert = x509.load_pem_x509_certificate(data(secret, identity.AGENT_CERT))
    assert pki.dns_names(data(secret, identity.AGENT_CERT)) == ("meshplug-agent.shop",)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert i.authority.issued_by_me(data(secret, identity.AGENT_CERT))
    tokens = data(secret, identity.AGENT_TOKEN).decode().split()
    assert len(tokens) == 1 and len(tokens[0]) >= 32
    # a namespace name of 63 characters still fits (the common name stays short)
    long_ns = "n" * 63
    assert pki.dns_names(data(i.ensure_agent_secret(long_ns), identity.AGENT_CERT)) == (f"meshplug-agent.{long_ns}",)


def _pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_agent_secret_carries_the_operators_trusted_keys_and_follows_them(
    writer: Writer, caplog: pytest.LogCaptureFixture
) -> None:
    """What injected agents read with --trusted-keys: the operator's keys, in the Secret from the first pod on; an
    operator restarted with other keys brings every agent Secret to them (the webhook too, before a pod starts);
    one restarted with none writes "none" in so many words (never a missing file: that refuses every signed
    module) and says so in its log."""
    assert data(ident(writer).ensure_agent_secret("plain"), identity.AGENT_TRUSTED_KEYS) == protocol.TRUSTED_KEYS_NONE
    first = _pem()
    secret = ident(writer, trusted_keys=first).ensure_agent_secret("shop")
    assert data(secret, identity.AGENT_TRUSTED_KEYS) == first
    assert fetch.load_public_keys(data(secret, identity.AGENT_TRUSTED_KEYS))[0].pem().encode() == first
    both = first + _pem()
    restarted = ident(writer, trusted_keys=both)
    assert data(restarted.ensure_agent_secret("shop"), identity.AGENT_TRUSTED_KEYS) == both  # the webhook's call
    token = data(secret, identity.AGENT_TOKEN)
    stored = writer.get("v1", "Secret", "shop", identity.DEFAULT_AGENT_SECRET)
    assert stored is not None and data(stored, identity.AGENT_TOKEN) == token, "nothing else changed"
    writes = len(writer.writes)
    restarted.ensure_agent_secret("shop")
    assert len(writer.writes) == writes, "no write when the keys are there"
    with caplog.at_level(logging.INFO, logger="meshplug.controller.identity"):
        emptied = ident(writer).ensure_agent_secret("shop")
    assert data(emptied, identity.AGENT_TRUSTED_KEYS) == protocol.TRUSTED_KEYS_NONE
    assert data(emptied, identity.AGENT_TOKEN) == token, "nothing else changed"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "identity: agent Secret shop/meshplug-agent: the operator trusts no signing key now (--trusted-key none): "
        "its agents check a signed module under the key its push names, and those with --require-signatures "
        "refuse every module"
    ]


def test_a_webhook_racing_another_replica_reads_what_it_made(writer: Writer) -> None:
    a, b = ident(writer), ident(writer)
    made = a.ensure_agent_secret("shop")
    real_get = writer.get
    calls = iter([None])  # b's first read misses it (made meanwhile by a): its create finds it there

    def racing_get(*args: Any) -> dict[str, Any] | None:
        return next(calls, real_get(*args)) if args[1] == "Secret" and args[2] == "shop" else real_get(*args)

    writer.get = racing_get  # type: ignore[method-assign]
    assert b.ensure_agent_secret("shop")["data"] == made["data"]


def test_token_rotation_keeps_the_previous_token_for_the_overlap(writer: Writer) -> None:
    clock = Clock()
    i = ident(writer, clock)
    first = data(i.ensure_agent_secret("shop"), identity.AGENT_TOKEN).decode().split()
    # not due: nothing written, even when maintained
    writes = len(writer.writes)
    assert i.push_credentials("shop").tokens == tuple(first)
    assert len(writer.writes) == writes
    clock.now += limits.PUSH_TOKEN_ROTATION_S
    rotated = i.push_credentials("shop").tokens
    assert len(rotated) == 2 and rotated[1] == first[0] and rotated[0] != first[0]
    clock.now += limits.PUSH_TOKEN_OVERLAP_S
    assert i.push_credentials("shop").tokens == rotated[:1]
    # only a maintaining caller (the leader) rotates; the webhook just reads
    clock.now += limits.PUSH_TOKEN_ROTATION_S
    assert data(i.ensure_agent_secret("shop"), identity.AGENT_TOKEN).decode().split() == list(rotated[:1])


def test_a_certificate_near_its_end_is_reissued(writer: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    i = ident(writer)
    before = data(i.ensure_agent_secret("shop"), identity.AGENT_CERT)
    monkeypatch.setattr(identity.pki, "remaining", lambda pem, now=None: limits.CERT_RENEW_FRACTION / 2)
    after = data(i.ensure_agent_secret("shop", maintain=True), identity.AGENT_CERT)
    assert after != before and i.authority.issued_by_me(after)


def test_pods_controllers_own_the_agent_secret(writer: Writer) -> None:
    i = ident(writer)
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-uid", "controller": True}
    pod = {"metadata": {"name": "web-1-x", "namespace": "shop", "uid": "pod-1", "ownerReferences": [rs]}}
    bare = {"metadata": {"name": "lonely", "namespace": "shop", "uid": "pod-2"}}
    for p in (pod, pod, bare):
        i.adopt(p)
    secret = writer.get("v1", "Secret", "shop", identity.DEFAULT_AGENT_SECRET)
    assert secret is not None
    owners = [(o["kind"], o["name"], o["uid"]) for o in secret["metadata"]["ownerReferences"]]
    assert owners == [("ReplicaSet", "web-1", "rs-uid"), ("Pod", "lonely", "pod-2")]
    assert len([w for w in writer.writes if w[0] == "replace"]) == 2, "an owner already recorded is not written again"
    # the garbage collector took the Secret with its owners; a new pod of the same ReplicaSet is adopted again
    del writer.objects[("Secret", "shop", identity.DEFAULT_AGENT_SECRET)]
    i.ensure_agent_secret("shop")
    i.adopt({"metadata": {**pod["metadata"], "uid": "pod-3"}})
    again = writer.get("v1", "Secret", "shop", identity.DEFAULT_AGENT_SECRET)
    assert again is not None and [o["uid"] for o in again["metadata"]["ownerReferences"]] == ["rs-uid"]


@pytest.mark.parametrize(
    ("status", "caller", "refusal"),
    [
        (
            {
                "authenticated": True,
                "user": {
                    "username": "system:serviceaccount:shop:default",
                    "extra": {
                        "authentication.kubernetes.io/pod-name": ["web-1"],
                        "authentication.kubernetes.io/pod-uid": ["u1"],
                    },
                },
            },
            identity.Caller("shop", "default", "web-1", "u1"),
            "",
        ),
        ({"authenticated": False, "error": "token has expired"}, None, "token has expired"),
        (
            {"authenticated": True, "user": {"username": "system:serviceaccount:shop:default"}},
            None,
            "not a ServiceAccount token bound to a pod",
        ),
        (
            {"authenticated": True, "user": {"username": "alice", "extra": {}}},
            None,
            "not a ServiceAccount token bound to a pod",
        ),
    ],
    ids=["bound-token", "expired", "not-bound-to-a-pod", "a-person"],
)
def test_token_review_verdicts(status: dict[str, Any], caller: identity.Caller | None, refusal: str) -> None:
    writer = Writer()
    writer.review = status
    clock = Clock()
    reviewer = identity.Reviewer(writer, ("meshplug",), clock=clock)  # type: ignore[arg-type]
    if caller is None:
        with pytest.raises(errors.ProtocolError, match=refusal) as info:
            reviewer.review("tok")
        assert info.value.reason == "unauthorized"
        return
    assert reviewer.review("tok") == caller
    assert reviewer.review("tok") == caller
    assert [w for w in writer.writes if w[0] == "tokenreview"] == [("tokenreview", "tok", "meshplug")], "cached"
    clock.now += limits.TOKEN_REVIEW_CACHE_S
    reviewer.review("tok")
    assert len([w for w in writer.writes if w[0] == "tokenreview"]) == 2, "asked again once the cache expired"


def test_leaf_certificates_never_outlive_the_ca() -> None:
    ca = pki.Authority.generate("ca", days=1)
    leaf = pki.load_cert(ca.issue("x", client=True, validity=datetime.timedelta(days=30)).cert_pem)
    assert leaf.not_valid_after_utc <= ca.cert.not_valid_after_utc
    assert 0.9 < pki.remaining(ca.cert_pem) <= 1.0
    assert pki.remaining(b"not a certificate") == 0.0


def test_a_ca_key_that_does_not_match_its_certificate_is_refused() -> None:
    a, b = pki.Authority.generate("a", days=1), pki.Authority.generate("b", days=1)
    with pytest.raises(errors.ConfigError, match="does not match"):
        pki.Authority(a.cert_pem, b.key_pem)
