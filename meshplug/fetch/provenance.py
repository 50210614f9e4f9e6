"""From a cosign signature to the module's bytes, checked offline: by the `Fetcher` on what it pulled or found in
its cache, and by the agent again on what a push names and it fetched (`meshplug.agent.loader`).

No step trusts the one who hands the pieces over (a module server, a cache, the push itself for anything but the
key); each piece is bound to the next by a signature or a sha256::

    signature  --verifies under the key-->   the signed bytes (cosign's simple-signing payload, the DSSE
                                             pre-authentication encoding of a bundle's in-toto statement, or
                                             the manifest itself for a bundle's message signature)
    signed bytes  --name-->                  the manifest digest
    manifests[0]  --sha256 = that digest-->  the signed manifest; if it is an image index, manifests[1] is the
                                             entry a pull picks from it (`oci.pick_from_index`)
    last manifest --`oci.select_layer`-->    the layer digest
    module bytes  --sha256 = layer digest    when the layer is the wasm itself (wasm content layer, CNCF wasm
                                             artifact, oras), or
                  <--unpacked from--          the layer blob (sha256 = layer digest) when it wraps the wasm (Docker
                                             and OCI images: a tar.gz holding plugin.wasm), with the same
                                             unpacking (`unbox`) and caps as a pull.

Failures are `errors.SignatureError` (reason ``signature_invalid``) saying which link broke.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from meshplug import errors
from meshplug.fetch import oci, signatures
from meshplug.fetch.artifact import sha256_hex
from meshplug.fetch.keys import PublicKey
from meshplug.fetch.unbox import unbox

LAYOUTS = signatures.LAYOUTS
#: an image index leads to one manifest: at most two manifests on the way
MAX_MANIFESTS = 2
_PAE = re.compile(rb"^DSSEv1 (\d{1,10}) ")


def _invalid(message: str) -> errors.SignatureError:
    return errors.SignatureError(message)


def _dsse_statement(pae: bytes) -> bytes:
    """The in-toto statement inside a DSSE pre-authentication encoding (``DSSEv1 <len> <type> <len> <body>``)."""
    head = _PAE.match(pae)
    if head is None:
        raise _invalid("the signed bytes are not a DSSE pre-authentication encoding")
    start = head.end()
    kind = pae[start : start + int(head.group(1))]
    rest = pae[start + len(kind) :]
    body = re.match(rb"^ (\d{1,10}) ", rest)
    if kind != signatures.MT_INTOTO.encode() or body is None:
        raise _invalid(f"the signed DSSE payload is not an in-toto statement ({kind[:60]!r})")
    statement = rest[body.end() :]
    if len(statement) != int(body.group(1)):
        raise _invalid("the signed DSSE payload's length does not match its encoding")
    return statement


def signed_digest(key: PublicKey, layout: str, payload: bytes, signature: bytes, manifest: bytes) -> str:
    """The manifest digest a signature under ``key`` signs; ``manifest`` is the signed manifest's bytes (what a
    bundle's message signature signs, ``payload`` empty)."""
    if layout not in LAYOUTS:
        raise _invalid(f"signature layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    signed = payload or manifest
    if layout == "tag" and not payload:
        raise _invalid("a tag-layout signature without its simple-signing payload")
    if not key.verify(signed, signature):
        raise _invalid(
            f"the signature does not verify under key {key.key_id} (another key signed it, or it was altered)"
        )
    if layout == "tag":
        return signatures.simple_signing_digest(payload)
    if not payload:
        return "sha256:" + hashlib.sha256(manifest).hexdigest()
    digests = signatures.statement_digests(_dsse_statement(payload))
    if len(digests) != 1:
        raise _invalid(f"the signed in-toto statement names {len(digests)} subjects, not one manifest")
    return digests[0]


def signed_layer(manifests: Sequence[bytes], digest: str) -> oci.LayerChoice:
    """The layer the signed manifest ``digest`` leads to through ``manifests``."""
    if not 1 <= len(manifests) <= MAX_MANIFESTS:
        raise _invalid(f"{len(manifests)} manifests on the way to the module (expected 1 or {MAX_MANIFESTS})")
    first = "sha256:" + hashlib.sha256(manifests[0]).hexdigest()
    if first != digest:
        raise _invalid(f"the manifest given has digest {first}, the signature is for {digest}")
    manifest = _parsed(manifests[0])
    if oci.is_index(manifest, media_type_of(manifest)):
        if len(manifests) != MAX_MANIFESTS:
            raise _invalid(f"the signed manifest {digest} is an image index, and the manifest it leads to is missing")
        wanted = oci.pick_from_index(manifest)
        second = "sha256:" + hashlib.sha256(manifests[1]).hexdigest()
        if second != wanted:
            raise _invalid(f"the signed image index leads to manifest {wanted}, the manifest given is {second}")
        manifest = _parsed(manifests[1])
    elif len(manifests) != 1:
        raise _invalid(f"the signed manifest {digest} is not an image index, yet another manifest follows it")
    try:
        return oci.select_layer(manifest, media_type_of(manifest))
    except errors.FetchError as exc:
        raise _invalid(f"the signed manifest names no module layer: {exc.message}") from None


def media_type_of(manifest: dict[str, object]) -> str:
    """A manifest's media type from its own bytes: its ``mediaType``, else OCI's (Docker's schema 2 requires the
    field; only OCI manifests and indexes may leave it out)."""
    declared = manifest.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    return oci.MT_OCI_INDEX if "manifests" in manifest and "layers" not in manifest else oci.MT_OCI_MANIFEST


def _parsed(body: bytes) -> dict[str, object]:
    try:
        return oci.parse_manifest(body, "the signed manifest")
    except errors.FetchError as exc:
        raise _invalid(exc.message) from None


def bound_directly(layer: str, sha256: str) -> bool:
    """Whether the layer (its digest) is the module itself (the module's sha256, hex)."""
    return layer == f"sha256:{sha256}"


def unpack(layer: str, blob: bytes, sha256: str, *, cap: int) -> bytes:
    """The module the blob of ``layer`` (its digest) holds, which must be the one with ``sha256``."""
    actual = "sha256:" + sha256_hex(blob)
    if actual != layer:
        raise _invalid(f"the layer blob given has digest {actual}, the signed manifest names {layer}")
    try:
        data = unbox(blob, cap=cap)
    except errors.FetchError as exc:
        raise _invalid(f"the signed layer {layer} holds no module: {exc.message}") from None
    if sha256_hex(data) != sha256:
        raise _invalid(f"the signed layer {layer} holds module sha256:{sha256_hex(data)}, not sha256:{sha256}")
    return data
