"""Turn a desired plugin set into a ready filter chain, off the request path; persist the last good set.

Called by `meshplug.agent.push` (pushes) and `meshplug.agent.runtime` (static config, restart) inside a
worker thread: fetching, sha256 checks, validation, compilation and VM start all block, none of it runs on
the event loop. The result, a `LoadedSet`, is swapped into the proxy in one assignment by the caller.

Module bytes come from, in order: the state directory (modules of the last good set, by sha256), then the
resource's URL (file:// or http(s)). Every byte string is checked against the resource's sha256 and then
by `meshplug.validate` (the proxy-wasm ABI check, HTTP filter kind) before the host sees it.

Persistence (`StateStore`): `<state_dir>/modules/<sha256>.wasm` and `<state_dir>/last_good.json` (the
`protocol.Push` of the applied set), each written to a temp file, fsynced and renamed, modules first, so a
`kill -9` at any point leaves either the old or the new complete set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from meshplug import errors, limits, protocol, validate
from meshplug.agent import chain

log = logging.getLogger("meshplug.agent.loader")

#: (resource, module bytes) in chain order -> the chain; raises HostError subclasses
ChainBuilder = Callable[[Sequence[tuple[protocol.ExtensionConfig, bytes]]], "Chain"]


@dataclass(frozen=True)
class PluginView:
    """What admin and replies report about one loaded plugin."""

    name: str
    root_id: str
    sha256: str
    size: int
    state: protocol.PluginState
    detail: str = ""


@dataclass
class Chain:
    """A built chain: the proxy's `Filters` (None when there are no plugins) and its introspection hooks."""

    filters: chain.Chain | None
    views: Callable[[], list[PluginView]] = field(default=list)
    metrics: Callable[[], str] = field(default=lambda: "")
    metric_values: Callable[[], dict[str, int | None]] = field(default=dict)
    logs: Callable[[], list[tuple[str, str, str]]] = field(default=list)  # (plugin, level, message)
    close: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class LoadedSet:
    """One applied plugin set. `chain` is shared by every exchange started while this set is active."""

    version_info: str
    nonce: str
    resources: tuple[protocol.ExtensionConfig, ...]
    digests: Mapping[str, str]  # plugin name -> sha256 of the module actually loaded
    chain: Chain

    def push(self) -> protocol.Push:
        return protocol.Push(version_info=self.version_info, nonce=self.nonce, resources=self.resources)

    def same_as(self, push: protocol.Push) -> bool:
        return push.version_info == self.version_info and push.resources == self.resources


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateStore:
    """The last good pushed set and its modules, under one directory (absent: nothing persists)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def module(self, sha256: str) -> bytes | None:
        if self.root is None or not sha256:
            return None
        path = self.root / "modules" / f"{sha256}.wasm"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if sha256_hex(data) != sha256:  # a torn or tampered file: ignore it, fetch again
            log.warning("state module %s does not match its digest; ignoring it", path)
            return None
        return data

    def save(self, loaded: LoadedSet, modules: Mapping[str, bytes]) -> None:
        if self.root is None:
            return
        for digest, data in modules.items():
            path = self.root / "modules" / f"{digest}.wasm"
            if not path.exists():
                _write_atomic(path, data)
        _write_atomic(self.root / "last_good.json", protocol.encode(loaded.push()))
        keep = set(modules)
        for stale in (self.root / "modules").glob("*.wasm"):
            if stale.stem not in keep:
                stale.unlink(missing_ok=True)

    def last_good(self) -> protocol.Push | None:
        if self.root is None:
            return None
        path = self.root / "last_good.json"
        try:
            return protocol.decode_push(path.read_bytes())
        except FileNotFoundError:
            return None
        except errors.ProtocolError as exc:
            log.error("ignoring unreadable %s: %s", path, exc.message)
            return None


def fetch_module(resource: protocol.ExtensionConfig) -> bytes:
    """The module bytes at the resource's URL (file:// or http(s)), size-capped; not yet digest-checked."""
    url = resource.url
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        try:
            size = path.stat().st_size
            if size > limits.MAX_MODULE_BYTES:
                raise errors.FetchError(f"{path}: {size} bytes exceeds the module size limit", reason="too_large")
            return path.read_bytes()
        except OSError as exc:
            raise errors.FetchError(f"cannot read module {path}: {exc.strerror}", reason="not_found") from None
    try:
        with requests.get(url, timeout=limits.HTTP_REQUEST_TIMEOUT_S, stream=True) as resp:
            if resp.status_code != 200:
                reason = "not_found" if resp.status_code == 404 else "download_failure"
                raise errors.FetchError(f"GET {url}: HTTP {resp.status_code}", reason=reason)
            chunks: list[bytes] = []
            total = 0
            for chunk in resp.iter_content(64 * 1024):
                total += len(chunk)
                if total > limits.MAX_MODULE_BYTES:
                    raise errors.FetchError(f"GET {url}: body exceeds the module size limit", reason="too_large")
                chunks.append(chunk)
            return b"".join(chunks)
    except requests.RequestException as exc:
        raise errors.FetchError(f"GET {url}: {type(exc).__name__}", reason="download_failure") from None


def module_bytes(resource: protocol.ExtensionConfig, store: StateStore) -> bytes:
    """Bytes for `resource`, from the state store or its URL, checked against its sha256 (if any)."""
    data = store.module(resource.sha256)
    if data is None:
        data = fetch_module(resource)
    digest = sha256_hex(data)
    if resource.sha256 and digest != resource.sha256:
        raise errors.FetchError(
            f"module of {resource.name} has sha256 {digest}, expected {resource.sha256}", reason="checksum_mismatched"
        )
    validate.validate(data, kind=validate.FilterKind.HTTP)  # ValidationError names every ABI problem
    return data


class ResourceError(Exception):
    """A MeshplugError tied to the resource that caused it (for the NACK's error_detail)."""

    def __init__(self, resource: str, error: errors.MeshplugError) -> None:
        super().__init__(f"{resource}: {error.message}")
        self.resource = resource
        self.error = error


def load(push: protocol.Push, *, store: StateStore, build: ChainBuilder) -> tuple[LoadedSet, dict[str, bytes]]:
    """Fetch, check and start every plugin of `push`; blocking, run it in a worker thread.

    Raises `ResourceError` (fetch/validation of one resource) or `errors.HostError` (starting the chain).
    """
    pairs: list[tuple[protocol.ExtensionConfig, bytes]] = []
    modules: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    for resource in push.resources:
        try:
            data = module_bytes(resource, store)
        except errors.MeshplugError as exc:
            raise ResourceError(resource.name, exc) from None
        digest = sha256_hex(data)
        modules[digest] = data
        digests[resource.name] = digest
        pairs.append((resource, data))
    chain = build(pairs)
    loaded = LoadedSet(
        version_info=push.version_info,
        nonce=push.nonce,
        resources=push.resources,
        digests=digests,
        chain=chain,
    )
    return loaded, modules


def empty_chain() -> Chain:
    return Chain(filters=None)


def json_views(views: Sequence[PluginView]) -> list[dict[str, object]]:
    return [
        {"name": v.name, "root_id": v.root_id, "sha256": v.sha256, "size": v.size, "state": v.state.value}
        | ({"detail": v.detail} if v.detail else {})
        for v in views
    ]


def dumps(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"
