"""The content-addressed module cache on disk, and single-flight for concurrent fetches.

Used by the `Fetcher` facade (lookups before any download, stores after verification) and by `serve`
(reads by digest). Layout under the cache directory::

    blobs/sha256/<hex>            the wasm bytes, named by their sha256 (verified again on every read)
    manifests/<sha256(name@digest)>.json   an image manifest (per repository) -> module sha256 and layout
    refs/<sha256(key)>.json       a source (url + credential fingerprint) -> what it resolved to, and when
    tmp/                          temp files; every write is temp + fsync + os.replace + fsync(dir)

A blob's mtime is its last use; `expire()` removes blobs unused for longer than the given age, with the
refs and manifest entries that point at them. Nothing else is ever modified in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from meshplug import files
from meshplug.fetch.artifact import Layout, sha256_hex

_HEX = re.compile(r"^[0-9a-f]{64}$")
T = TypeVar("T")


@dataclass(frozen=True)
class RefEntry:
    """What a source resolved to the last time it was fetched."""

    url: str
    sha256: str
    manifest_digest: str | None
    layout: Layout
    resolved_at: float


@dataclass(frozen=True)
class ManifestEntry:
    sha256: str
    layout: Layout


def is_hex_digest(value: str) -> bool:
    return bool(_HEX.match(value))


class Cache:
    """A content-addressed store of wasm modules under ``root``. Safe for concurrent threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("blobs/sha256", "manifests", "refs", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    # --- paths ---------------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        if not is_hex_digest(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "blobs" / "sha256" / sha256

    def _manifest_path(self, name: str, digest: str) -> Path:
        """Keyed by repository too: a registry cannot claim another repository's cached module."""
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or not is_hex_digest(hexpart):
            raise ValueError(f"not a sha256 manifest digest: {digest!r}")
        return self.root / "manifests" / f"{hashlib.sha256(f'{name}@{digest}'.encode()).hexdigest()}.json"

    def _ref_path(self, key: str) -> Path:
        return self.root / "refs" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    # --- writes --------------------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        digest = sha256_hex(data)
        path = self.blob_path(digest)
        if path.exists():
            os.utime(path)
        else:
            _write(self.root, path, data)
        return digest

    def put_manifest(self, name: str, digest: str, entry: ManifestEntry) -> None:
        _write(self.root, self._manifest_path(name, digest), json.dumps(asdict(entry)).encode())

    def put_ref(self, key: str, entry: RefEntry) -> None:
        _write(self.root, self._ref_path(key), json.dumps(asdict(entry)).encode())

    # --- reads ---------------------------------------------------------------------------------------
    def get_blob(self, sha256: str) -> bytes | None:
        """The module with this sha256, or None; a corrupt file is removed and reported as missing."""
        path = self.blob_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if sha256_hex(data) != sha256:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
        return data

    def has_blob(self, sha256: str) -> bool:
        return is_hex_digest(sha256) and self.blob_path(sha256).is_file()

    def get_manifest(self, name: str, digest: str) -> ManifestEntry | None:
        raw = _read_json(self._manifest_path(name, digest))
        if raw is None:
            return None
        try:
            return ManifestEntry(sha256=str(raw["sha256"]), layout=Layout(raw["layout"]))
        except (KeyError, ValueError):
            return None

    def get_ref(self, key: str) -> RefEntry | None:
        raw = _read_json(self._ref_path(key))
        if raw is None:
            return None
        try:
            return RefEntry(
                url=str(raw["url"]),
                sha256=str(raw["sha256"]),
                manifest_digest=None if raw["manifest_digest"] is None else str(raw["manifest_digest"]),
                layout=Layout(raw["layout"]),
                resolved_at=float(raw["resolved_at"]),
            )
        except (KeyError, ValueError, TypeError):
            return None

    def entries(self) -> int:
        return sum(1 for p in (self.root / "blobs" / "sha256").iterdir() if _HEX.match(p.name))

    def listing(self) -> dict[str, int]:
        """sha256 -> size of every cached module (for tests and `meshplug fetch --list`)."""
        base = self.root / "blobs" / "sha256"
        return {p.name: p.stat().st_size for p in base.iterdir() if _HEX.match(p.name)}

    # --- expiry --------------------------------------------------------------------------------------
    def expire(self, max_idle_s: float, *, now: float | None = None) -> list[str]:
        """Remove modules unused for more than ``max_idle_s`` and what points at them; return their digests."""
        now = time.time() if now is None else now
        removed = []
        for path in (self.root / "blobs" / "sha256").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if _HEX.match(path.name) and now - path.stat().st_mtime > max_idle_s:
                    path.unlink()
                    removed.append(path.name)
        gone = set(removed)
        for sub in ("manifests", "refs"):
            for path in (self.root / sub).iterdir():
                raw = _read_json(path)
                if raw is None or raw.get("sha256") in gone:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
        for path in (self.root / "tmp").iterdir():  # leftovers of writers that died mid-write
            with contextlib.suppress(FileNotFoundError):
                if now - path.stat().st_mtime > max_idle_s:
                    path.unlink()
        return removed


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


class _Call(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.waiters = 0


class SingleFlight(Generic[T]):
    """Run one call per key at a time; concurrent callers with the same key share its outcome.

    Thread-based. asyncio callers run the blocking call in a thread (``await asyncio.to_thread(...)``);
    threads of every event loop and pool then share the same flight.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call[T]] = {}

    def waiters(self, key: str) -> int:
        """Callers waiting on the flight for ``key`` now (0 when none is in the air)."""
        with self._lock:
            call = self._calls.get(key)
            return 0 if call is None else call.waiters

    def do(self, key: str, fn: Callable[[], T]) -> tuple[T, bool]:
        """``(result, shared)``: ``shared`` is True when another caller's flight produced the result."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
            else:
                call.waiters += 1
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result, True  # type: ignore[return-value]
        try:
            call.result = fn()
            return call.result, False
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


def _write(root: Path, path: Path, data: bytes) -> None:
    files.write_atomic(path, data, tmp_dir=root / "tmp")
