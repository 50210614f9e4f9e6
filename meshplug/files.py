"""Crash-safe file writes, shared by every stage that persists bytes.

`write_atomic` writes to a temporary file in the target's directory (or a given scratch directory on the
same filesystem), fsyncs it, renames it over the target and fsyncs the directory, so a reader sees either
the old file or the new one, never a torn write. Callers: the module cache (meshplug.fetch.cache), the
precompiled-artifact cache (meshplug.compiled), the agent's last-good-config store and `meshplug fetch -o`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, tmp_dir: Path | None = None, sync_dir: bool = True) -> None:
    """Replace `path` with `data` atomically; the temporary file never outlives a failure."""
    scratch = tmp_dir if tmp_dir is not None else path.parent
    scratch.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=scratch, prefix=f".{path.name[:32]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
