"""cosign signatures of OCI modules: verify them before a module is used, and make them (`meshplug sign`).

Called by the `Fetcher` (when a fetch names verification keys: the WasmPlugin's ``verificationKey`` or the
operator's policy) after the manifest digest is resolved and before any blob is pulled, and by `meshplug sign`.
Both layouts the real cosign writes are read and written:

* **tag** (cosign's classic layout): an OCI image manifest at tag ``sha256-<hex>.sig`` in the module's
  repository; each layer is a simple-signing payload (``application/vnd.dev.cosign.simplesigning.v1+json``)
  naming the signed manifest digest in ``critical.image.docker-manifest-digest``, its signature (base64, over
  the payload bytes) in the layer annotation ``dev.cosignproject.cosign/signature``;
* **bundle** (cosign's newer layout, ``--new-bundle-format``): an OCI 1.1 referrer of the module's manifest
  (``subject``), ``artifactType`` ``application/vnd.dev.sigstore.bundle.v0.3+json``, whose one layer is a
  Sigstore bundle: a DSSE envelope of an in-toto statement whose subject is the manifest digest (or a message
  signature over the manifest digest). Found through the referrers API, else the referrers tag schema
  (tag ``sha256-<hex>``, an image index), as cosign itself looks.

A module verifies when one signature, under one of the given keys, signs exactly its manifest digest. Nothing
here talks to a transparency log (there is none offline): keys are trusted as given, like `cosign verify
--key K --insecure-ignore-tlog`. Failures are `errors.SignatureError` with a message that says which case it is:
no signature at all, signatures none of which verifies under the key (another key, or altered), or a valid
signature for another digest.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import errors, limits
from meshplug.fetch import oci, publish
from meshplug.fetch.artifact import Evidence, Reason
from meshplug.fetch.http import Deadline
from meshplug.fetch.keys import PrivateKey, PublicKey

MT_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
MT_BUNDLE = "application/vnd.dev.sigstore.bundle.v0.3+json"
MT_EMPTY = "application/vnd.oci.empty.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_INTOTO = "application/vnd.in-toto+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
LAYOUTS = ("tag", "bundle")


def sig_tag(manifest_digest: str) -> str:
    return manifest_digest.replace(":", "-") + ".sig"


def referrers_tag(manifest_digest: str) -> str:
    return manifest_digest.replace(":", "-")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature signs."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


# --- what a signature says it signs ------------------------------------------------------------------------------


def simple_signing_digest(payload: bytes) -> str:
    try:
        doc = json.loads(payload)
        critical = doc["critical"]
        kind = critical["type"]
        image = critical["image"]
        digest = image.get("docker-manifest-digest") or image.get("Docker-manifest-digest")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _invalid("a simple-signing payload is not cosign's JSON") from None
    if kind != COSIGN_TYPE:
        raise _invalid(f"a simple-signing payload has type {kind!r}, not {COSIGN_TYPE!r}")
    return str(digest or "")


def statement_digests(payload: bytes) -> list[str]:
    try:
        doc = json.loads(payload)
        return [f"sha256:{s['digest']['sha256']}" for s in doc["subject"] if "sha256" in s.get("digest", {})]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _invalid("a bundle's in-toto statement is malformed") from None


def _invalid(message: str) -> errors.SignatureError:
    return errors.SignatureError(message)


# --- collecting candidate signatures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    layout: str
    payload: bytes
    signature: bytes
    signed_digest: str  # the manifest digest the signed content names ("" if none)


def _blob(client: oci.RegistryClient, digest: str, deadline: Deadline) -> bytes:
    return client.blob(digest, deadline, cap=limits.MAX_MANIFEST_BYTES)


def _optional_manifest(client: oci.RegistryClient, ref: str, deadline: Deadline) -> dict[str, Any] | None:
    try:
        return client.manifest(ref, deadline)[1]
    except errors.FetchError as exc:
        if exc.reason == Reason.NOT_FOUND:
            return None
        raise


def _tag_candidates(client: oci.RegistryClient, manifest_digest: str, deadline: Deadline) -> list[_Candidate]:
    manifest = _optional_manifest(client, sig_tag(manifest_digest), deadline)
    out: list[_Candidate] = []
    for layer in (manifest or {}).get("layers") or []:
        if not isinstance(layer, dict) or layer.get("mediaType") != MT_SIMPLESIGNING:
            continue
        encoded = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if not isinstance(encoded, str):
            continue
        payload = _blob(client, str(layer.get("digest")), deadline)
        try:
            signature = base64.b64decode(encoded, validate=True)
        except ValueError:
            signature = b""
        out.append(_Candidate("tag", payload, signature, simple_signing_digest(payload)))
    return out


def _referrers(client: oci.RegistryClient, manifest_digest: str, deadline: Deadline) -> list[dict[str, Any]]:
    """The referrers index of ``manifest_digest``: the referrers API, else the referrers tag schema."""
    url = f"{client.base}/referrers/{manifest_digest}?artifactType={MT_BUNDLE}"
    resp = client._open("GET", url, oci.MT_OCI_INDEX, deadline)
    index: dict[str, Any] | None = None
    if resp.status_code == 200 and resp.headers.get("content-type", "").startswith(oci.MT_OCI_INDEX):
        body = client.transport.read_body(resp, cap=limits.MAX_MANIFEST_BYTES, deadline=deadline, progress=None)
        try:
            index = json.loads(body)
        except ValueError:
            index = None
    else:
        resp.close()
    if index is None:
        index = _optional_manifest(client, referrers_tag(manifest_digest), deadline)
    entries = (index or {}).get("manifests") or []
    # cosign's own fallback index names the referrer's config type (the empty one) as artifactType, not the
    # bundle's: every referrer is opened and its layers' media types decide
    return [e for e in entries if isinstance(e, dict) and e.get("artifactType") in (MT_BUNDLE, MT_EMPTY, None)]


def _bundle_candidate(bundle: bytes) -> _Candidate:
    try:
        doc = json.loads(bundle)
    except ValueError:
        raise _invalid("a Sigstore bundle is not JSON") from None
    if not isinstance(doc, dict):
        raise _invalid("a Sigstore bundle is not a JSON object")
    envelope = doc.get("dsseEnvelope")
    if isinstance(envelope, dict):
        try:
            payload = base64.b64decode(envelope["payload"])
            payload_type = str(envelope["payloadType"])
            signature = base64.b64decode(envelope["signatures"][0]["sig"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise _invalid("a Sigstore bundle's DSSE envelope is malformed") from None
        if payload_type != MT_INTOTO:
            raise _invalid(f"a Sigstore bundle's DSSE payload type is {payload_type!r}")
        digests = statement_digests(payload)
        return _Candidate("bundle", pae(payload_type, payload), signature, digests[0] if len(digests) == 1 else "")
    message = doc.get("messageSignature")
    if isinstance(message, dict):
        try:
            digest = base64.b64decode(message["messageDigest"]["digest"])
            signature = base64.b64decode(message["signature"])
        except (KeyError, TypeError, ValueError):
            raise _invalid("a Sigstore bundle's message signature is malformed") from None
        # a message signature signs the message itself; cosign signs the manifest bytes' digest as the message
        return _Candidate("bundle", b"", signature, f"sha256:{digest.hex()}")
    raise _invalid("a Sigstore bundle holds neither a DSSE envelope nor a message signature")


def _bundle_candidates(client: oci.RegistryClient, manifest_digest: str, deadline: Deadline) -> list[_Candidate]:
    out: list[_Candidate] = []
    for entry in _referrers(client, manifest_digest, deadline):
        manifest = _optional_manifest(client, str(entry.get("digest")), deadline)
        if manifest is None:
            continue
        subject = (manifest.get("subject") or {}).get("digest")
        for layer in manifest.get("layers") or []:
            if isinstance(layer, dict) and layer.get("mediaType") == MT_BUNDLE:
                candidate = _bundle_candidate(_blob(client, str(layer.get("digest")), deadline))
                if subject != manifest_digest:
                    candidate = _Candidate(candidate.layout, candidate.payload, candidate.signature, str(subject))
                out.append(candidate)
    return out


# --- verification ------------------------------------------------------------------------------------------------


def _verifies(candidate: _Candidate, key: PublicKey, manifest: bytes) -> bool:
    if candidate.payload:
        return key.verify(candidate.payload, candidate.signature)
    # a message signature: over the manifest bytes (their sha256 is the signed digest)
    return key.verify(manifest, candidate.signature)


def verify(client: oci.RegistryClient, manifest_digest: str, keys: Sequence[PublicKey], deadline: Deadline) -> Evidence:
    """The first signature in either layout that one of ``keys`` verifies over exactly ``manifest_digest``, with
    the manifests and the layer that lead from it to the module (`oci.RegistryClient.locate`)."""
    if not keys:
        raise errors.ConfigError("signature verification needs at least one key")
    candidates = _tag_candidates(client, manifest_digest, deadline) + _bundle_candidates(
        client, manifest_digest, deadline
    )
    ids = ", ".join(k.key_id for k in keys)
    where = f"{client.ref.name}@{manifest_digest}"
    if not candidates:
        raise _invalid(
            f"{where} has no cosign signature (looked for tag {sig_tag(manifest_digest)} and Sigstore bundle referrers)"
        )
    located = client.locate(manifest_digest, deadline)
    other_digest = ""
    for candidate in candidates:
        for key in keys:
            if not _verifies(candidate, key, located.manifests[0]):
                continue
            if candidate.signed_digest == manifest_digest:
                return Evidence(
                    candidate.layout,
                    key.key_id,
                    manifest_digest,
                    candidate.payload,
                    candidate.signature,
                    key_pem=key.pem(),
                    manifests=located.manifests,
                    layer=located.layer.digest,
                )
            other_digest = other_digest or candidate.signed_digest or "nothing"
    if other_digest:
        raise _invalid(f"{where}: the signature by key {ids} is for {other_digest}, not this manifest")
    raise _invalid(
        f"{where}: {len(candidates)} signature(s) found, none verifies under key {ids} "
        "(signed with another key, or altered)"
    )


# --- signing -----------------------------------------------------------------------------------------------------


def simple_signing_payload(ref: oci.Reference, manifest_digest: str) -> bytes:
    doc = {
        "critical": {
            "identity": {"docker-reference": ref.name},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": COSIGN_TYPE,
        },
        "optional": None,
    }
    return publish.canonical(doc)


def _sign_tag(publisher: publish.Publisher, key: PrivateKey, manifest_digest: str, deadline: Deadline) -> str:
    payload = simple_signing_payload(publisher.ref, manifest_digest)
    signature = base64.b64encode(key.sign(payload)).decode()
    blob = publisher.put_blob(payload, deadline)
    layer = publish.Descriptor(MT_SIMPLESIGNING, blob.digest, blob.size, {SIGNATURE_ANNOTATION: signature})
    existing = _optional_manifest(publisher, sig_tag(manifest_digest), deadline)
    layers = [
        publish.Descriptor(
            str(old.get("mediaType")), str(old.get("digest")), int(old.get("size") or 0), old.get("annotations")
        )
        for old in (existing or {}).get("layers") or []
        if isinstance(old, dict) and old.get("mediaType") == MT_SIMPLESIGNING
    ]
    layers.append(layer)
    config_doc = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
        "config": {},
    }
    config_blob = publisher.put_blob(publish.canonical(config_doc), deadline)
    config = publish.Descriptor(MT_OCI_CONFIG, config_blob.digest, config_blob.size)
    body = publish.canonical(publish.image_manifest(config, layers))
    publisher.put_manifest(sig_tag(manifest_digest), body, oci.MT_OCI_MANIFEST, deadline)
    return sig_tag(manifest_digest)


def intoto_statement(manifest_digest: str) -> bytes:
    """The statement cosign signs for an image in a bundle: its manifest digest, predicate type sign/v1."""
    doc = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"digest": {"sha256": manifest_digest.removeprefix("sha256:")}}],
        "predicateType": SIGN_PREDICATE,
    }
    return publish.canonical(doc)


def _sign_bundle(publisher: publish.Publisher, key: PrivateKey, manifest_digest: str, deadline: Deadline) -> str:
    statement = intoto_statement(manifest_digest)
    signature = key.sign(pae(MT_INTOTO, statement))
    bundle = {
        "mediaType": MT_BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": base64.b64encode(key.public().hint).decode()}},
        "dsseEnvelope": {
            "payload": base64.b64encode(statement).decode(),
            "payloadType": MT_INTOTO,
            "signatures": [{"sig": base64.b64encode(signature).decode()}],
        },
    }
    blob = publisher.put_blob(publish.canonical(bundle), deadline)
    empty = publisher.put_blob(b"{}", deadline)
    title = blob.digest.replace(":", "-") + ".sigstore.json"
    layer = publish.Descriptor(MT_BUNDLE, blob.digest, blob.size, {"org.opencontainers.image.title": title})
    subject_type, subject_size = publisher.manifest_descriptor(manifest_digest, deadline)
    body = publish.canonical(
        publish.image_manifest(
            publish.Descriptor(MT_EMPTY, empty.digest, empty.size),
            [layer],
            artifactType=MT_BUNDLE,
            subject={"mediaType": subject_type, "digest": manifest_digest, "size": subject_size},
            annotations={
                "dev.sigstore.bundle.content": "dsse-envelope",
                "dev.sigstore.bundle.predicateType": SIGN_PREDICATE,
            },
        )
    )
    referrer = publisher.put_manifest(publish.digest_of(body), body, oci.MT_OCI_MANIFEST, deadline)
    # registries without the referrers API: the referrers tag schema (an index under tag sha256-<hex>)
    index = _optional_manifest(publisher, referrers_tag(manifest_digest), deadline) or {
        "schemaVersion": 2,
        "mediaType": oci.MT_OCI_INDEX,
        "manifests": [],
    }
    entries = [e for e in index.get("manifests") or [] if isinstance(e, dict) and e.get("digest") != referrer]
    entries.append(publish.Descriptor(oci.MT_OCI_MANIFEST, referrer, len(body), artifact_type=MT_BUNDLE).to_json())
    index["manifests"] = entries
    publisher.put_manifest(referrers_tag(manifest_digest), publish.canonical(index), oci.MT_OCI_INDEX, deadline)
    return referrer


def sign(
    publisher: publish.Publisher, key: PrivateKey, manifest_digest: str, *, layout: str, deadline: Deadline
) -> str:
    """Sign ``manifest_digest`` in ``layout``; where the signature went (a tag, or the referrer's digest)."""
    if layout not in LAYOUTS:
        raise errors.ConfigError(f"signature layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if layout == "tag":
        return _sign_tag(publisher, key, manifest_digest, deadline)
    return _sign_bundle(publisher, key, manifest_digest, deadline)
