"""The oci:// module source: the registry API spoken with the guarded `Transport`, every layout in use.

Called by the `Fetcher` facade, which asks `RegistryClient.resolve()` for the manifest digest first,
consults the cache with it, and only then calls `RegistryClient.pull()`. Layouts (`select_layer`):
Docker and OCI images whose last tar(.gz) layer holds `plugin.wasm`, the solo/Istio wasm content
layer (one or two layers), the CNCF wasm artifact, and oras pushes with an empty config. Auth: anonymous,
Basic, or the registry's Bearer token challenge, with credentials from a `kubernetes.io/dockerconfigjson`
pull secret; the token realm must be https (unless the registry is allowed insecure) and passes the
SSRF guard. Manifests and blobs are verified against their digests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
import yaml

from meshplug import errors, limits
from meshplug.fetch.artifact import Layout, Reason
from meshplug.fetch.http import Deadline, Progress, Transport, status_error
from meshplug.fetch.unbox import unbox

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_OCI_LAYERS = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar")
MT_WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"
MT_CNCF_CONFIG = "application/vnd.wasm.config.v0+json"
MT_WASM = "application/wasm"
EMPTY_CONFIGS = frozenset({"application/vnd.oci.empty.v1+json", "application/vnd.unknown.config.v1+json"})
ACCEPT = ", ".join((MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_DOCKER_LIST))

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Reference:
    """``registry/repository[:tag][@digest]``; ``registry`` is ``host`` or ``host:port``."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def mutable(self) -> bool:
        """A tag without a pinned digest: it may point elsewhere tomorrow."""
        return self.digest is None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(url: str) -> Reference:
    """An ``oci://`` url (or a schemeless image reference) as a Reference; Docker Hub names expanded."""
    text = url.removeprefix("oci://")
    if "://" in text or text.lower().startswith("oci:") or not text or any(c.isspace() for c in text):
        raise errors.FetchError(f"not an image reference: {url!r}", reason=Reason.MANIFEST_FAILURE)
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST.match(digest):
            raise errors.FetchError(f"{url}: digest must be sha256:<64 hex>", reason=Reason.MANIFEST_FAILURE)
    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first.lower(), rest
    else:
        registry, path = "docker.io", text
    try:
        _host_port(registry)
    except ValueError as exc:
        raise errors.FetchError(
            f"{url}: invalid registry {registry!r}: {exc}", reason=Reason.MANIFEST_FAILURE
        ) from None
    tag = None
    last_slash = path.rfind("/")
    if ":" in path[last_slash + 1 :]:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise errors.FetchError(f"{url}: invalid tag {tag!r}", reason=Reason.MANIFEST_FAILURE)
    if registry == "docker.io":
        registry = "registry-1.docker.io"
        if "/" not in path:
            path = f"library/{path}"
    if not _REPO.match(path):
        raise errors.FetchError(f"{url}: invalid repository {path!r}", reason=Reason.MANIFEST_FAILURE)
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository=path, tag=tag, digest=digest)


# --- pull secrets ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def fingerprint(self) -> str:
        """Identifies these credentials in cache keys without revealing them."""
        return hashlib.sha256(f"{self.username}\0{self.password}".encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"


def _registry_key(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port`` (the keys of dockerconfigjson ``auths``)."""
    if "://" in key:
        key = urllib.parse.urlsplit(key).netloc
    return key.split("/", 1)[0].lower()


def _dockerconfigjson(doc: Any) -> Any:
    """The dockerconfigjson document itself: unwrapped from a kubernetes.io/dockerconfigjson Secret if it is one."""
    if not isinstance(doc, dict) or "auths" in doc or not isinstance(doc.get("data") or doc.get("stringData"), dict):
        return doc
    if doc.get("type") not in (None, "kubernetes.io/dockerconfigjson"):
        raise errors.ConfigError(f"pull secret has type {doc.get('type')!r}, not kubernetes.io/dockerconfigjson")
    if isinstance(doc.get("stringData"), dict) and ".dockerconfigjson" in doc["stringData"]:
        return yaml.safe_load(str(doc["stringData"][".dockerconfigjson"]))
    try:
        return json.loads(base64.b64decode(str(doc["data"].get(".dockerconfigjson", "")), validate=True))
    except ValueError:
        raise errors.ConfigError("pull secret .dockerconfigjson is not base64 JSON") from None


def credentials_for(secret: bytes, registry: str) -> Credentials | None:
    """Credentials for ``registry`` from a dockerconfigjson document or a Secret holding one."""
    try:
        doc = _dockerconfigjson(yaml.safe_load(secret))
    except yaml.YAMLError:
        raise errors.ConfigError("pull secret is neither JSON nor YAML") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths"), dict):
        raise errors.ConfigError("pull secret has no 'auths' map (expected a dockerconfigjson)")
    wanted = {registry.lower()}
    if registry == "registry-1.docker.io":
        wanted |= {"docker.io", "index.docker.io"}
    for key, entry in doc["auths"].items():
        if _registry_key(str(key)) not in wanted or not isinstance(entry, dict):
            continue
        if entry.get("username") is not None and entry.get("password") is not None:
            return Credentials(str(entry["username"]), str(entry["password"]))
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except ValueError:
                raise errors.ConfigError(f"pull secret entry for {key!r}: 'auth' is not base64") from None
            return Credentials(user, password)
    return None


# --- layouts -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerChoice:
    layout: Layout
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Located:
    """The way from a manifest digest to its module: the manifests' bytes as served (the one the digest names
    first; the one picked from it when it is an image index) and the layer chosen in the last one."""

    manifests: tuple[bytes, ...]
    layer: LayerChoice


@dataclass(frozen=True)
class Pulled:
    """A pulled module: the wasm bytes, their layout, where they were found, and the layer blob as stored."""

    data: bytes
    layout: Layout
    located: Located
    blob: bytes


def _descriptor(raw: Any) -> tuple[str, str, int]:
    if not isinstance(raw, dict):
        raise errors.FetchError("manifest descriptor is not an object", reason=Reason.MANIFEST_FAILURE)
    media_type, digest, size = raw.get("mediaType"), raw.get("digest"), raw.get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest) or not isinstance(size, int) or size < 0:
        raise errors.FetchError(f"bad descriptor digest/size: {digest!r}", reason=Reason.MANIFEST_FAILURE)
    return str(media_type or ""), digest, size


def select_layer(manifest: Mapping[str, Any], manifest_media_type: str) -> LayerChoice:
    """Which layer holds the module, and in which layout; FetchError(manifest_failure) if none does."""
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise errors.FetchError("manifest has no layers", reason=Reason.MANIFEST_FAILURE)
    described = [_descriptor(layer) for layer in layers]
    config_type = _descriptor(manifest.get("config"))[0] if manifest.get("config") is not None else ""
    types = [d[0] for d in described]
    if config_type == MT_CNCF_CONFIG:
        wasm = [d for d in described if d[0] == MT_WASM]
        if len(wasm) != 1:
            raise errors.FetchError(
                f"CNCF wasm artifact needs exactly one {MT_WASM} layer, has {types}", reason=Reason.MANIFEST_FAILURE
            )
        return LayerChoice(Layout.CNCF_WASM, wasm[0][1], wasm[0][2], wasm[0][0])
    content = [d for d in described if d[0] == MT_WASM_CONTENT]
    if len(content) > 1:
        raise errors.FetchError(f"{len(content)} wasm content layers: ambiguous", reason=Reason.MANIFEST_FAILURE)
    if content:
        layout = Layout.WASM_SINGLE_LAYER if len(described) == 1 else Layout.WASM_TWO_LAYER
        return LayerChoice(layout, content[0][1], content[0][2], content[0][0])
    if config_type in EMPTY_CONFIGS:
        titled = [
            d
            for d, layer in zip(described, layers, strict=True)
            if str((layer.get("annotations") or {}).get("org.opencontainers.image.title", "")).endswith(".wasm")
        ]
        candidates = titled or (described if len(described) == 1 else [])
        if len(candidates) != 1:
            raise errors.FetchError(f"oras artifact: which of {len(described)} layers?", reason=Reason.MANIFEST_FAILURE)
        return LayerChoice(Layout.ORAS, candidates[0][1], candidates[0][2], candidates[0][0])
    last = described[-1]
    media = str(manifest.get("mediaType") or manifest_media_type)
    if last[0] == MT_DOCKER_LAYER and media == MT_DOCKER_MANIFEST:
        return LayerChoice(Layout.DOCKER_IMAGE, last[1], last[2], last[0])
    if last[0] in MT_OCI_LAYERS and media == MT_OCI_MANIFEST:
        return LayerChoice(Layout.OCI_IMAGE, last[1], last[2], last[0])
    wasm = [d for d in described if d[0] == MT_WASM]
    if len(wasm) == 1:  # an application/wasm layer under some other config
        return LayerChoice(Layout.ORAS, wasm[0][1], wasm[0][2], wasm[0][0])
    raise errors.FetchError(
        f"no wasm module in manifest (config {config_type or 'none'}, layers {types})", reason=Reason.MANIFEST_FAILURE
    )


def pick_from_index(index: Mapping[str, Any]) -> str:
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise errors.FetchError("image index lists no manifests", reason=Reason.MANIFEST_FAILURE)
    for entry in entries:
        platform = entry.get("platform") or {} if isinstance(entry, dict) else {}
        if platform.get("os") in ("wasip1", "wasi") or platform.get("architecture") == "wasm":
            return _descriptor(entry)[1]
    return _descriptor(entries[0])[1]


def _host_port(registry: str) -> tuple[str, int | None]:
    parts = urllib.parse.urlsplit(f"//{registry}")
    return parts.hostname or registry, parts.port


# --- registry client ---------------------------------------------------------------------------------
class RegistryClient:
    """The distribution API for one repository, with one set of credentials, over a guarded Transport."""

    def __init__(self, transport: Transport, ref: Reference, credentials: Credentials | None) -> None:
        self.transport = transport
        self.ref = ref
        self.credentials = credentials
        self.insecure = transport.options.insecure_allowed(ref.registry)
        scheme = "http" if self.insecure else "https"
        self.base = f"{scheme}://{ref.registry}/v2/{ref.repository}"
        self._authorization: str | None = None

    # requests with the registry's auth dance ------------------------------------------------------
    def _open(
        self,
        method: str,
        url: str,
        accept: str | None,
        deadline: Deadline,
        *,
        data: bytes | None = None,
        content_type: str | None = None,
    ) -> requests.Response:
        headers = {"Accept": accept} if accept else {}
        if content_type:
            headers["Content-Type"] = content_type
        if self._authorization:
            headers["Authorization"] = self._authorization
        resp = self.transport.open(method, url, deadline=deadline, headers=headers, data=data)
        if resp.status_code != 401 or (self._authorization is not None and "Bearer" not in self._authorization):
            return resp
        challenge = resp.headers.get("www-authenticate", "")
        resp.close()
        self._authorization = self._answer(challenge, deadline)
        headers["Authorization"] = self._authorization
        return self.transport.open(method, url, deadline=deadline, headers=headers, data=data)

    def _answer(self, challenge: str, deadline: Deadline) -> str:
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.credentials is None:
                raise errors.FetchError(
                    f"{self.ref.registry}: needs credentials (no pull secret)", reason=Reason.UNAUTHORIZED
                )
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        if scheme == "bearer":
            return "Bearer " + self._token(dict(_CHALLENGE_PARAM.findall(challenge)), deadline)
        raise errors.FetchError(
            f"{self.ref.registry}: unsupported auth challenge {scheme!r}", reason=Reason.UNAUTHORIZED
        )

    def _token(self, params: dict[str, str], deadline: Deadline) -> str:
        realm = params.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme != "https" and not (parts.scheme == "http" and self.insecure):
            raise errors.FetchError(f"{self.ref.registry}: token realm {realm!r} is not https", reason=Reason.BLOCKED)
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.ref.repository}:pull")
        url = realm + ("&" if parts.query else "?") + urllib.parse.urlencode(query)
        headers = {}
        if self.credentials is not None:
            pair = f"{self.credentials.username}:{self.credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        options = self.transport.options
        bundle = options.ca_bundle_for(parts.hostname or "", parts.port) or options.ca_bundle_for(
            *_host_port(self.ref.registry)
        )
        verify = None if bundle is None else str(bundle)
        resp = self.transport.open("GET", url, deadline=deadline, headers=headers, verify=verify)
        if resp.status_code != 200:
            resp.close()
            status_error(resp, f"token from {parts.netloc}")
        body = self.transport.read_body(resp, cap=limits.MAX_MANIFEST_BYTES, deadline=deadline, progress=None)
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise errors.FetchError(f"token endpoint {parts.netloc} returned no token", reason=Reason.UNAUTHORIZED)
        return token

    def _get_ok(self, method: str, url: str, accept: str | None, deadline: Deadline, what: str) -> requests.Response:
        resp = self._open(method, url, accept, deadline)
        if resp.status_code != 200:
            resp.close()
            try:
                status_error(resp, what)
            except errors.FetchError as exc:
                if exc.reason == Reason.DOWNLOAD_FAILURE and "manifest" in what:
                    exc.reason = Reason.MANIFEST_FAILURE
                raise
        return resp

    # the three calls the Fetcher makes ---------------------------------------------------------------
    def resolve(self, deadline: Deadline) -> str:
        """The manifest digest the reference points at now (HEAD; pinned digests are checked to exist)."""
        target = self.ref.digest or self.ref.tag or "latest"
        what = f"manifest {self.ref}"

        def attempt() -> str:
            resp = self._get_ok("HEAD", f"{self.base}/manifests/{target}", ACCEPT, deadline, what)
            resp.close()
            header = resp.headers.get("docker-content-digest", "")
            if _DIGEST.match(header):
                return header
            return self.manifest(None, deadline)[0]  # registry without the header: hash the manifest

        digest = self.transport.with_retries(what, deadline, attempt)
        if self.ref.digest is not None and digest != self.ref.digest:
            raise errors.FetchError(
                f"{self.ref}: registry answered manifest {digest}", reason=Reason.CHECKSUM_MISMATCHED
            )
        return digest

    def manifest(self, digest: str | None, deadline: Deadline) -> tuple[str, dict[str, Any], str]:
        """``(digest, parsed manifest, media type)`` of ``digest`` (or of the tag), verified."""
        actual, _, parsed, media_type = self.raw_manifest(digest, deadline)
        return actual, parsed, media_type

    def raw_manifest(self, digest: str | None, deadline: Deadline) -> tuple[str, bytes, dict[str, Any], str]:
        """``(digest, bytes as served, parsed, media type)`` of ``digest`` (or of the tag), verified."""
        target = digest or self.ref.digest or self.ref.tag or "latest"
        what = f"manifest {self.ref.name}@{target}" if target.startswith("sha256:") else f"manifest {self.ref}"

        def attempt() -> tuple[bytes, str]:
            resp = self._get_ok("GET", f"{self.base}/manifests/{target}", ACCEPT, deadline, what)
            body = self.transport.read_body(resp, cap=limits.MAX_MANIFEST_BYTES, deadline=deadline, progress=None)
            return body, resp.headers.get("content-type", "").split(";")[0].strip()

        body, media_type = self.transport.with_retries(what, deadline, attempt)
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if target.startswith("sha256:") and actual != target:
            raise errors.FetchError(f"{what}: content hashes to {actual}", reason=Reason.CHECKSUM_MISMATCHED)
        parsed = parse_manifest(body, what)
        return actual, body, parsed, str(parsed.get("mediaType") or media_type)

    def locate(self, digest: str, deadline: Deadline) -> Located:
        """Where the module of manifest ``digest`` is: the manifests on the way (an image index is followed to
        one manifest) and the layer that holds it."""
        _, body, manifest, media_type = self.raw_manifest(digest, deadline)
        chain = [body]
        if is_index(manifest, media_type):
            _, body, manifest, media_type = self.raw_manifest(pick_from_index(manifest), deadline)
            chain.append(body)
        return Located(tuple(chain), select_layer(manifest, media_type))

    def blob(self, digest: str, deadline: Deadline, *, cap: int, progress: Progress | None = None) -> bytes:
        """The blob ``digest`` of this repository, at most ``cap`` bytes, verified against its digest."""
        what = f"blob {self.ref.name}@{digest}"

        def attempt() -> bytes:
            resp = self._get_ok("GET", f"{self.base}/blobs/{digest}", None, deadline, what)
            return self.transport.read_body(resp, cap=cap, deadline=deadline, progress=progress)

        data = self.transport.with_retries(what, deadline, attempt)
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise errors.FetchError(f"{what}: content does not match its digest", reason=Reason.DOWNLOAD_FAILURE)
        return data

    def pull(self, digest: str, deadline: Deadline, progress: Progress | None = None) -> Pulled:
        """The wasm bytes of manifest ``digest``, with the layer blob they came from."""
        located = self.locate(digest, deadline)
        choice = located.layer
        options = self.transport.options
        if choice.size > options.max_module_bytes:
            raise errors.FetchError(
                f"layer {choice.digest} is {choice.size} bytes (cap {options.max_module_bytes})",
                reason=Reason.TOO_LARGE,
            )
        blob = self.blob(choice.digest, deadline, cap=options.max_module_bytes, progress=progress)
        return Pulled(unbox(blob, cap=options.max_decompressed_bytes), choice.layout, located, blob)


def parse_manifest(body: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise errors.FetchError(f"{what}: not JSON", reason=Reason.MANIFEST_FAILURE) from None
    if not isinstance(parsed, dict):
        raise errors.FetchError(f"{what}: not a JSON object", reason=Reason.MANIFEST_FAILURE)
    return parsed


def is_index(manifest: Mapping[str, Any], media_type: str) -> bool:
    return media_type in (MT_OCI_INDEX, MT_DOCKER_LIST) or ("manifests" in manifest and "layers" not in manifest)
