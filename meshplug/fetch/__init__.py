"""Module supply: https/http, oci and file sources, sha256 verification, SSRF guard, content cache.

Called by the operator (controller), the agent's loader and `meshplug fetch`; imports nothing from
the rest of meshplug except `errors` and `limits`. The whole API::

    fetcher = Fetcher(FetchOptions(file_roots=(Path("/modules"),)))
    artifact = fetcher.fetch(url, sha256=None, pull_secret=None, pull_policy=None)   # -> Artifact
    fetcher.metrics.exposition()        # Prometheus text
    fetcher.expire()                    # drop modules unused for options.unused_expiry_s

`fetch` blocks; asyncio callers use ``await asyncio.to_thread(fetcher.fetch, url, ...)`` and still
share single-flight with every other thread. Failures are `errors.FetchError` with ``reason`` one of
`Reason.ALL`. The flow for each call, in this order:

1. the source's cache key is the url plus a fingerprint of the pull secret's credentials;
2. under IfNotPresent a cached result for that key is returned (unless its re-resolve interval passed);
3. one flight per key: http/file are downloaded/read; for OCI the manifest digest is resolved first and
   the cache consulted with it before any blob is pulled;
4. ``sha256`` is checked before anything is written to the cache: it is the sha256 of the wasm bytes; for an
   OCI source a value equal to the image manifest digest (Istio's meaning of the field) is accepted too, since
   the manifest pins its layers. A url pinned ``@sha256:`` is always checked against the manifest.
5. with ``keys`` (a WasmPlugin's ``verificationKey``, the operator's signature policy) the module must be an
   OCI image with a cosign signature under one of them for exactly its manifest digest (`signatures`):
   checked after the digest is resolved and before its blob is pulled, and again for a cached module (the
   result is remembered per manifest digest and key set). A module without one fails with
   `errors.SignatureError`; http and file modules carry no cosign signature and fail the same way. The module
   bytes, pulled or cached, must then be what the signed manifest's layer holds (`provenance`; a cache entry
   that maps the manifest to other bytes is pulled again); the artifact's ``signature`` (`Evidence`) carries
   all of it, so the agent can check it again, and a layer that wraps the module (a tar.gz) stays in the cache.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from meshplug import errors
from meshplug.fetch import cache as cache_mod
from meshplug.fetch import http, local, oci, provenance, signatures
from meshplug.fetch.artifact import WASM_MAGIC, Artifact, Evidence, Layout, Reason, sha256_hex
from meshplug.fetch.keys import PublicKey, load_public_key, load_public_keys
from meshplug.fetch.metrics import FetchMetrics
from meshplug.fetch.options import FetchOptions, PullPolicy

__all__ = [
    "WASM_MAGIC",
    "Artifact",
    "Evidence",
    "FetchMetrics",
    "FetchOptions",
    "Fetcher",
    "Layout",
    "PublicKey",
    "PullPolicy",
    "Reason",
    "load_public_key",
    "load_public_keys",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
log = logging.getLogger("meshplug.fetch")


def _pinned_by(pin: str | None, wasm_sha256: str, manifest_digest: str | None) -> bool:
    """Whether ``pin`` (hex) admits this module: no pin, the wasm bytes' sha256, or the OCI manifest digest."""
    return pin is None or pin == wasm_sha256 or (manifest_digest is not None and manifest_digest == f"sha256:{pin}")


def _pin(sha256: str | None) -> str | None:
    if sha256 is None or sha256 == "":
        return None
    value = sha256.lower().removeprefix("sha256:")
    if not _HEX64.match(value):
        raise errors.ConfigError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return value


def scheme_of(url: str) -> str:
    """``http``, ``file`` or ``oci`` (no scheme means oci); anything else is refused."""
    try:
        parts = urllib.parse.urlsplit(url)
        if "://" in url:
            _ = parts.port  # raises for a port that is no number or out of range
    except ValueError as exc:  # also a bracketed IPv6 host left open
        raise errors.ConfigError(f"invalid url {url[:200]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if "://" not in url and scheme not in ("file", "http", "https", "oci"):
        return "oci"  # registry/repo:tag (a "host:port/..." reference parses as scheme "host")
    if scheme == "https":
        return "http"
    if scheme in ("http", "file", "oci"):
        return scheme
    raise errors.FetchError(f"unsupported url scheme {scheme!r} in {url!r}", reason=Reason.BLOCKED)


@dataclass(frozen=True)
class _Request:
    """One fetch call, as decided before the flight starts."""

    url: str
    scheme: str
    ref: oci.Reference | None
    creds: oci.Credentials | None
    key: str
    pin: str | None
    always: bool
    progress: http.Progress | None
    keys: tuple[PublicKey, ...] = ()


class Fetcher:
    """Supplies verified wasm modules through the content-addressed cache. Thread-safe."""

    def __init__(self, options: FetchOptions | None = None, *, metrics: FetchMetrics | None = None) -> None:
        self.options = (options or FetchOptions()).sanitized()
        self.cache = cache_mod.Cache(self.options.cache_dir)
        self.transport = http.Transport(self.options)
        self.metrics = metrics or FetchMetrics(entries=self.cache.entries)
        self._flights: cache_mod.SingleFlight[Artifact] = cache_mod.SingleFlight()
        self._verified: dict[tuple[str, str, frozenset[str]], Evidence] = {}  # (repo, digest, key ids) -> proof

    def close(self) -> None:
        self.transport.close()

    def expire(self) -> list[str]:
        """Remove modules unused for ``options.unused_expiry_s``; their sha256s."""
        return self.cache.expire(self.options.unused_expiry_s)

    def in_file_roots(self, url: str) -> bool:
        """Whether a file:// url lies below one of the configured file roots (the operator may read it)."""
        return local.in_roots(url, self.options)

    def fetch(
        self,
        url: str,
        *,
        sha256: str | None = None,
        pull_secret: bytes | None = None,
        pull_policy: PullPolicy | str | None = None,
        progress: http.Progress | None = None,
        keys: Sequence[PublicKey] = (),
    ) -> Artifact:
        """The verified module at ``url``; see the module docstring for the order of things."""
        pin = _pin(sha256)
        policy = None if pull_policy in (None, "") else PullPolicy(pull_policy)
        scheme = scheme_of(url)
        ref = oci.parse_reference(url) if scheme == "oci" else None
        creds = oci.credentials_for(pull_secret, ref.registry) if ref is not None and pull_secret else None
        key = f"{url}\0{creds.fingerprint() if creds else ''}"
        always = policy is PullPolicy.ALWAYS or (
            policy is None and ref is not None and ref.digest is None and ref.tag == "latest"
        )
        if keys and ref is None:
            raise errors.SignatureError(
                f"{url}: a signature is required (verificationKey or the operator's policy), but only oci:// "
                "modules carry cosign signatures"
            )
        request = _Request(url, scheme, ref, creds, key, pin, always, progress, tuple(keys))
        key_ids = ",".join(sorted(k.key_id for k in keys))
        flight = f"{key}\0{pin or ''}\0{'always' if always else 'ifnotpresent'}\0{key_ids}"
        started = time.monotonic()
        try:
            artifact, shared = self._flights.do(flight, lambda: self._fetch(request))
        except errors.FetchError as exc:
            self.metrics.record_fetch(exc.reason, time.monotonic() - started)
            raise
        self.metrics.record_lookup(hit=artifact.from_cache or shared)
        if not artifact.from_cache and not shared:
            self.metrics.record_fetch(Reason.SUCCESS, time.monotonic() - started)
        return artifact

    def _fetch(self, req: _Request) -> Artifact:
        deadline = http.Deadline.after(self.options.overall_timeout_s)
        known = None if req.always or req.scheme == "file" else self.cache.get_ref(req.key)
        if known is not None and _pinned_by(req.pin, known.sha256, known.manifest_digest):
            interval = self.options.reresolve_interval_s
            mutable = req.ref is None or req.ref.mutable
            stale = interval is not None and mutable and time.time() - known.resolved_at >= interval
            data = None if stale else self.cache.get_blob(known.sha256)
            evidence = None
            if data is not None and req.keys and req.ref is not None and known.manifest_digest is not None:
                client = oci.RegistryClient(self.transport, req.ref, req.creds)
                evidence = self._signature(client, known.manifest_digest, req.keys, deadline)
                if not self._bound(client, evidence, data, deadline):
                    data = None  # the cache maps the signed manifest to other bytes: pull it again
            if data is not None:
                return Artifact(
                    data,
                    known.sha256,
                    req.url,
                    known.manifest_digest,
                    known.layout,
                    from_cache=True,
                    signature=evidence,
                )
        if req.ref is not None:
            return self._fetch_oci(req, req.ref, known, deadline)
        if req.scheme == "file":
            data, layout = local.read_file(req.url, self.options), Layout.FILE
        else:
            data = http.fetch_http(self.transport, req.url, deadline=deadline, progress=req.progress)
            layout = Layout.HTTP
        digest = self._verify(req.url, data, req.pin, None)
        self._store(req, data, digest, None, layout)
        return Artifact(data, digest, req.url, None, layout)

    def _fetch_oci(
        self, req: _Request, ref: oci.Reference, known: cache_mod.RefEntry | None, deadline: http.Deadline
    ) -> Artifact:
        client = oci.RegistryClient(self.transport, ref, req.creds)
        manifest_digest = client.resolve(deadline)
        evidence = self._signature(client, manifest_digest, req.keys, deadline) if req.keys else None
        moved = known.manifest_digest if known is not None and known.manifest_digest != manifest_digest else None
        entry = self.cache.get_manifest(ref.name, manifest_digest)
        data = self.cache.get_blob(entry.sha256) if entry is not None else None
        if data is not None and evidence is not None and not self._bound(client, evidence, data, deadline):
            data = None  # the cache maps the signed manifest to other bytes: pull it again
        if entry is not None and data is not None:
            layout, from_cache = entry.layout, True
        else:
            pulled = client.pull(manifest_digest, deadline, req.progress)
            data, layout, from_cache = pulled.data, pulled.layout, False
            if evidence is not None and not self._bound(client, evidence, data, deadline, blob=pulled.blob):
                raise errors.SignatureError(
                    f"{req.url}: the module pulled for {manifest_digest} is not the one its signed manifest names"
                )
        digest = self._verify(req.url, data, req.pin, manifest_digest)
        self._store(req, data, digest, manifest_digest, layout)
        return Artifact(
            data,
            digest,
            req.url,
            manifest_digest,
            layout,
            from_cache=from_cache,
            previous_manifest_digest=moved,
            signature=evidence,
        )

    def _signature(
        self, client: oci.RegistryClient, manifest_digest: str, keys: Sequence[PublicKey], deadline: http.Deadline
    ) -> Evidence:
        """The signature of ``manifest_digest`` under ``keys``, from memory or the registry."""
        memo = (client.ref.name, manifest_digest, frozenset(k.key_id for k in keys))
        known = self._verified.get(memo)
        if known is not None:
            return known
        evidence = signatures.verify(client, manifest_digest, keys, deadline)
        self._verified[memo] = evidence
        return evidence

    def _bound(
        self,
        client: oci.RegistryClient,
        evidence: Evidence,
        data: bytes,
        deadline: http.Deadline,
        *,
        blob: bytes | None = None,
    ) -> bool:
        """Whether ``data`` is the module the signed manifest's layer holds (`provenance`). A layer that wraps the
        module (a Docker/OCI image's tar.gz) is kept in the cache beside it: the module server serves it to the
        agents, which check the same link again."""
        digest = sha256_hex(data)
        if provenance.bound_directly(evidence.layer, digest):
            return True
        blob = blob or self.cache.get_blob(evidence.layer.removeprefix("sha256:"))
        if blob is None:
            blob = client.blob(evidence.layer, deadline, cap=self.options.max_module_bytes)
        try:
            provenance.unpack(evidence.layer, blob, digest, cap=self.options.max_decompressed_bytes)
        except errors.SignatureError as exc:
            log.warning("%s: %s", client.ref, exc.message)
            return False
        self.cache.put_blob(blob)
        return True

    @staticmethod
    def _verify(url: str, data: bytes, pin: str | None, manifest_digest: str | None) -> str:
        digest = sha256_hex(data)
        if not _pinned_by(pin, digest, manifest_digest):
            which = "module bytes or image manifest" if manifest_digest is not None else "module"
            raise errors.FetchError(
                f"{url}: sha256 of the {which} is {digest}"
                + (f" / {manifest_digest.removeprefix('sha256:')}" if manifest_digest is not None else "")
                + f", expected {pin}",
                reason=Reason.CHECKSUM_MISMATCHED,
            )
        return digest

    def _store(self, req: _Request, data: bytes, digest: str, manifest_digest: str | None, layout: Layout) -> None:
        self.cache.put_blob(data)
        if req.ref is not None and manifest_digest is not None:
            self.cache.put_manifest(req.ref.name, manifest_digest, cache_mod.ManifestEntry(digest, layout))
        self.cache.put_ref(req.key, cache_mod.RefEntry(req.url, digest, manifest_digest, layout, time.time()))
