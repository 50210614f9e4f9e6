"""The file:// module source: read a module from below a configured root directory, never elsewhere.

Called by the `Fetcher` facade. The path is resolved (symlinks and `..` followed) before the
containment check, and the opened file descriptor is checked again through /proc/self/fd, so a
symlink swapped in between cannot lead outside the roots. No roots configured: file:// is refused.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from pathlib import Path

from meshplug import errors
from meshplug.fetch.artifact import Reason
from meshplug.fetch.options import FetchOptions
from meshplug.fetch.unbox import unbox


def path_of(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file":
        raise errors.FetchError(f"not a file url: {url!r}", reason=Reason.DOWNLOAD_FAILURE)
    if parts.netloc not in ("", "localhost"):
        raise errors.FetchError(f"file url names a remote host: {url!r}", reason=Reason.BLOCKED)
    if parts.query or parts.fragment:
        raise errors.FetchError(f"file url with query or fragment: {url!r}", reason=Reason.DOWNLOAD_FAILURE)
    raw = urllib.parse.unquote(parts.path)
    if "\x00" in raw or not raw.startswith("/"):
        raise errors.FetchError(f"file url needs an absolute path: {url!r}", reason=Reason.DOWNLOAD_FAILURE)
    return Path(raw)


#: how a user allows a directory, wherever the fetch runs
ALLOW_HINT = (
    "to allow a directory, pass --file-root DIR (meshplug fetch, inspect, operator), set operator.fileRoots "
    "in the Helm chart, or modules.file_roots in an agent's config"
)


def _roots(roots: tuple[Path, ...]) -> str:
    return ", ".join(str(r) for r in roots)


def _inside(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def in_roots(url: str, options: FetchOptions) -> bool:
    """Whether a file:// url names a path below one of the roots, as written (before symlinks are followed)."""
    try:
        path = path_of(url)
    except errors.FetchError:
        return False
    return _inside(Path(os.path.normpath(path)), options.file_roots)


def read_file(url: str, options: FetchOptions) -> bytes:
    """The wasm module at a file:// url below one of ``options.file_roots``."""
    requested = path_of(url)
    if not options.file_roots:
        raise errors.FetchError(
            f"{url}: file:// sources are disabled (no file roots); {ALLOW_HINT}", reason=Reason.BLOCKED
        )
    try:
        resolved = requested.resolve(strict=True)
    except FileNotFoundError:
        # report an escape as an escape even when its target does not exist
        if not _inside(requested.resolve(strict=False), options.file_roots):
            raise errors.FetchError(
                f"{url}: outside the allowed file roots ({_roots(options.file_roots)}); {ALLOW_HINT}",
                reason=Reason.BLOCKED,
            ) from None
        raise errors.FetchError(f"{url}: no such file", reason=Reason.NOT_FOUND) from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop
        raise errors.FetchError(f"{url}: cannot resolve: {exc}", reason=Reason.DOWNLOAD_FAILURE) from None
    if not _inside(resolved, options.file_roots):
        raise errors.FetchError(
            f"{url}: resolves outside the allowed file roots ({_roots(options.file_roots)}); {ALLOW_HINT}",
            reason=Reason.BLOCKED,
        )
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise errors.FetchError(f"{url}: cannot open: {exc.strerror}", reason=Reason.DOWNLOAD_FAILURE) from None
    try:
        info = os.fstat(fd)
        opened = Path(f"/proc/self/fd/{fd}")
        if opened.exists() and not _inside(Path(os.readlink(opened)), options.file_roots):
            raise errors.FetchError(f"{url}: opened file lies outside the allowed roots", reason=Reason.BLOCKED)
        if not stat.S_ISREG(info.st_mode):
            raise errors.FetchError(f"{url}: not a regular file", reason=Reason.DOWNLOAD_FAILURE)
        if info.st_size > options.max_module_bytes:
            raise errors.FetchError(
                f"{url}: {info.st_size} bytes exceeds the cap of {options.max_module_bytes}", reason=Reason.TOO_LARGE
            )
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(options.max_module_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > options.max_module_bytes:
        raise errors.FetchError(f"{url}: exceeds the cap of {options.max_module_bytes} bytes", reason=Reason.TOO_LARGE)
    return unbox(data, cap=options.max_decompressed_bytes)
