"""What module supply hands out: the `Artifact` value, the layouts it recognises and the outcome names.

Every source module (`http`, `oci`, `local`) and the `Fetcher` facade build Artifacts; the operator and
the agent only read them. Outcome names double as `FetchError.reason` values and metric labels.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

#: the four bytes every wasm binary starts with
WASM_MAGIC = b"\x00asm"


class Layout(enum.StrEnum):
    """Where the wasm bytes came from inside their container (also shown in status and metrics)."""

    HTTP = "http"  # a plain body (possibly gzip/tar wrapped) from an http(s) origin
    FILE = "file"  # a file below a configured root
    DOCKER_IMAGE = "docker-image"  # Docker schema2 manifest, last tar.gz layer holds plugin.wasm
    OCI_IMAGE = "oci-image"  # OCI image manifest, last tar(.gz) layer holds plugin.wasm
    WASM_TWO_LAYER = "wasm-content-two-layer"  # solo/Istio variant: 2 layers, one ...module.wasm.content...
    WASM_SINGLE_LAYER = "wasm-content-single-layer"  # one application/vnd.module.wasm.content.layer.v1+wasm
    CNCF_WASM = "cncf-wasm-artifact"  # config application/vnd.wasm.config.v0+json + layer application/wasm
    ORAS = "oras-artifact"  # oras push with an empty/unknown config; the layer is the module


class Reason:
    """Outcome names: `FetchError.reason` values and the `result` label of the fetch counter."""

    SUCCESS = "success"
    DOWNLOAD_FAILURE = "download_failure"
    MANIFEST_FAILURE = "manifest_failure"
    CHECKSUM_MISMATCHED = "checksum_mismatched"
    TOO_LARGE = "too_large"
    NOT_WASM = "not_wasm"
    BLOCKED = "blocked"
    NOT_FOUND = "not_found"
    UNAUTHORIZED = "unauthorized"
    TIMEOUT = "timeout"
    SIGNATURE_INVALID = "signature_invalid"

    ALL: tuple[str, ...] = (
        SUCCESS,
        DOWNLOAD_FAILURE,
        MANIFEST_FAILURE,
        CHECKSUM_MISMATCHED,
        TOO_LARGE,
        NOT_WASM,
        BLOCKED,
        NOT_FOUND,
        UNAUTHORIZED,
        TIMEOUT,
        SIGNATURE_INVALID,
    )


@dataclass(frozen=True)
class Evidence:
    """A verified cosign signature of a module's manifest and the way from it to the module's bytes, kept so that
    whoever receives the module from us (the agent) can check it all again offline (`meshplug.fetch.provenance`).
    """

    layout: str  # "tag" | "bundle"
    key_id: str
    manifest_digest: str
    payload: bytes  # the signed bytes (simple-signing JSON, the DSSE pre-authentication encoding, or b"": the
    #                 signature is over the manifest itself, a bundle's message signature)
    signature: bytes
    #: the verifying public key, PEM
    key_pem: str = field(default="", repr=False)
    #: the manifests' bytes as the registry served them: the signed one, then the one an index picks
    manifests: tuple[bytes, ...] = field(default=(), repr=False)
    #: the digest of the layer holding the module (the module's own sha256 unless the layer wraps it)
    layer: str = ""


@dataclass(frozen=True)
class Artifact:
    """A verified wasm module.

    ``sha256`` is the hex sha256 of ``data`` (the wasm bytes, whatever wrapped them); ``manifest_digest``
    is the ``sha256:<hex>`` of the OCI manifest the tag or digest resolved to (None for http/file);
    ``previous_manifest_digest`` is set when a re-resolved mutable tag moved to a new digest.
    """

    data: bytes
    sha256: str
    source_url: str
    manifest_digest: str | None
    layout: Layout
    from_cache: bool = False
    previous_manifest_digest: str | None = None
    #: the signature that was verified, when the fetch required one
    signature: Evidence | None = None

    @property
    def digest(self) -> str:
        """The module's identity as an OCI-style digest string (``sha256:<hex>``)."""
        return f"sha256:{self.sha256}"

    def __repr__(self) -> str:  # the bytes would drown every log line
        return (
            f"Artifact(sha256={self.sha256[:12]}…, size={len(self.data)}, source_url={self.source_url!r}, "
            f"manifest_digest={self.manifest_digest!r}, layout={self.layout.value}, from_cache={self.from_cache})"
        )


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
