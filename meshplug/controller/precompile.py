"""Validation for the agent plane compiles once, with the agents' engine settings, and keeps the artifact.

Called by `meshplug.controller.reconcile` in its validate stage for agent-plane plugins. wasmtime compiles the
module as the agents' engine would (`meshplug.compiled.new_engine`: same settings, this machine's CPU; the key
says so) into the operator's artifact cache (`meshplug.compiled.ArtifactCache` under the module cache, one
compile per module digest, later reconciles deserialize it); `meshplug.validate` checks the ABI on that compiled
module instead of compiling again; the module server serves the file at ``/compiled/<key>`` and the push names
it with its sha256 (`meshplug.render.model.Compiled`), so agents on a CPU like the operator's load it instead of
compiling (meshplug.agent.loader). A module wasmtime cannot compile is reported by `validate` as before.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

from meshplug import compiled, errors, validate
from meshplug.render import model

log = logging.getLogger("meshplug.controller.precompile")


class Precompiler:
    """The operator's artifact cache for agent-plane modules. Thread-safe (reconciles run on worker threads)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._engine = compiled.new_engine()
        self.cache = compiled.ArtifactCache(self._engine, settings=compiled.ENGINE_FINGERPRINT, root=root)
        self._lock = threading.Lock()
        self._sums: dict[str, str] = {}  # artifact key -> sha256 of its file

    def validate(self, data: bytes, sha256: str, kind: validate.FilterKind) -> model.Compiled | None:
        """`validate.validate(data, kind)` on the module compiled for the agents; the artifact to hand them
        (None when it could not be stored). Raises errors.ValidationError as `validate.validate` does."""
        t0 = time.monotonic()
        try:
            loaded = self.cache.load(data, sha256=sha256)
        except errors.PluginStartError:  # does not compile: validate reports it with the compiler's message
            validate.validate(data, kind=kind)
            return None
        if loaded.outcome is not compiled.Outcome.HIT:
            ms = (time.monotonic() - t0) * 1000
            log.info("compiled sha256:%s for the agents in %.0f ms (%s)", sha256, ms, loaded.outcome.value)
        validate.validate(data, kind=kind, module=loaded.module)
        if not loaded.stored:
            return None
        key = loaded.key.filename
        with self._lock:
            known = self._sums.get(key)
        if known is None:
            try:
                known = hashlib.sha256(loaded.path.read_bytes()).hexdigest()
            except OSError:
                return None
            with self._lock:
                self._sums[key] = known
        return model.Compiled(key=key, sha256=known)
