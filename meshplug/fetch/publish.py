"""Writing to an OCI registry: blobs (monolithic upload), manifests by tag or digest, and the wasm module layouts
`meshplug push` publishes. The read side, auth and transport are `meshplug.fetch.oci`'s `RegistryClient`.

Called by `meshplug push` (modules) and `meshplug.fetch.signatures` (signature manifests). Layouts:

* ``wasm`` (default): what Istio's and Envoy Gateway's fetchers pull, the OCI manifest of the wasm image
  spec's compat variant: config ``application/vnd.module.wasm.config.v1+json``, one layer
  ``application/vnd.module.wasm.content.layer.v1+wasm`` holding the module bytes;
* ``cncf``: the CNCF wasm artifact (config ``application/vnd.wasm.config.v0+json``, layer ``application/wasm``),
  which Istio does not read.

In both the layer is the module itself, so the layer digest is the module's sha256.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshplug import errors, limits
from meshplug.fetch import oci
from meshplug.fetch.artifact import Reason
from meshplug.fetch.http import Deadline, Transport, status_error

MT_WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
LAYOUTS = ("wasm", "cncf")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(doc: Mapping[str, Any]) -> bytes:
    """JSON as registries store it here: compact, keys in insertion order."""
    return json.dumps(doc, separators=(",", ":")).encode()


class Publisher(oci.RegistryClient):
    """`RegistryClient` plus uploads; the registry's auth challenge for push is answered like the one for pull."""

    def __init__(self, transport: Transport, ref: oci.Reference, credentials: oci.Credentials | None) -> None:
        super().__init__(transport, ref, credentials)

    @staticmethod
    def _checked(resp: Any, what: str, ok: Sequence[int]) -> Any:
        if resp.status_code not in ok:
            resp.close()
            status_error(resp, what)  # 5xx raise Retryable: `with_retries` runs the attempt again
        return resp

    def has_blob(self, digest: str, deadline: Deadline) -> bool:
        def attempt() -> bool:
            resp = self._open("HEAD", f"{self.base}/blobs/{digest}", None, deadline)
            resp.close()
            if resp.status_code >= 500:
                self._checked(resp, f"blob {self.ref.name}@{digest}", (200,))
            return bool(resp.status_code == 200)

        return self.transport.with_retries(f"blob {self.ref.name}@{digest}", deadline, attempt)

    def put_blob(self, data: bytes, deadline: Deadline) -> Descriptor:
        """Upload ``data`` (skipped when the registry has it); its descriptor with an empty media type."""
        digest = digest_of(data)
        what = f"upload of {digest} to {self.ref.name}"

        def attempt() -> None:  # a new upload session per attempt: retrying is safe
            start = self._checked(self._open("POST", f"{self.base}/blobs/uploads/", None, deadline), what, (202,))
            start.close()
            location = urllib.parse.urljoin(self.base + "/", start.headers.get("location", ""))
            sep = "&" if urllib.parse.urlsplit(location).query else "?"
            url = f"{location}{sep}digest={urllib.parse.quote(digest)}"
            resp = self._open("PUT", url, None, deadline, data=data, content_type="application/octet-stream")
            self._checked(resp, what, (201, 204)).close()

        if not self.has_blob(digest, deadline):
            self.transport.with_retries(what, deadline, attempt)
        return Descriptor("", digest, len(data))

    def put_manifest(self, reference: str, body: bytes, media_type: str, deadline: Deadline) -> str:
        """PUT the manifest under ``reference`` (a tag or its digest); its digest."""
        what = f"manifest {self.ref.name}:{reference}"

        def attempt() -> None:
            url = f"{self.base}/manifests/{reference}"
            resp = self._open("PUT", url, None, deadline, data=body, content_type=media_type)
            self._checked(resp, what, (201, 204)).close()

        self.transport.with_retries(what, deadline, attempt)
        return digest_of(body)

    def manifest_descriptor(self, reference: str, deadline: Deadline) -> tuple[str, int]:
        """(media type, size in bytes) of a manifest, as a descriptor of it needs them."""
        what = f"manifest {self.ref.name}@{reference}"

        def attempt() -> tuple[str, int]:
            resp = self._get_ok("GET", f"{self.base}/manifests/{reference}", oci.ACCEPT, deadline, what)
            body = self.transport.read_body(resp, cap=limits.MAX_MANIFEST_BYTES, deadline=deadline, progress=None)
            return resp.headers.get("content-type", "").split(";")[0].strip(), len(body)

        return self.transport.with_retries(what, deadline, attempt)

    def manifest_or_none(self, reference: str, deadline: Deadline) -> tuple[str, dict[str, Any], str] | None:
        try:
            return self.manifest(reference, deadline)
        except errors.FetchError as exc:
            if exc.reason == Reason.NOT_FOUND:
                return None
            raise


def image_manifest(config: Descriptor, layers: Sequence[Descriptor], **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": oci.MT_OCI_MANIFEST}
    if extra.get("artifactType"):
        doc["artifactType"] = extra.pop("artifactType")
    doc["config"] = config.to_json()
    doc["layers"] = [layer.to_json() for layer in layers]
    doc.update({k: v for k, v in extra.items() if v is not None})
    return doc


def push_module(publisher: Publisher, wasm: bytes, *, layout: str, deadline: Deadline) -> tuple[str, Descriptor]:
    """Publish ``wasm`` under the publisher's reference tag; (manifest digest, the module layer)."""
    if layout not in LAYOUTS:
        raise errors.ConfigError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if layout == "cncf":
        config_doc: dict[str, Any] = {"created": "1970-01-01T00:00:00Z", "layerDigests": [digest_of(wasm)]}
        config_type, layer_type = oci.MT_CNCF_CONFIG, oci.MT_WASM
    else:
        config_doc = {}
        config_type, layer_type = MT_WASM_CONFIG, oci.MT_WASM_CONTENT
    config_blob = canonical(config_doc)
    config = publisher.put_blob(config_blob, deadline)
    layer = publisher.put_blob(wasm, deadline)
    config = Descriptor(config_type, config.digest, config.size)
    layer = Descriptor(layer_type, layer.digest, layer.size, {"org.opencontainers.image.title": "plugin.wasm"})
    body = canonical(image_manifest(config, [layer]))
    tag = publisher.ref.tag or "latest"
    return publisher.put_manifest(tag, body, oci.MT_OCI_MANIFEST, deadline), layer
