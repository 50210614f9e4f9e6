"""Validation for the agent plane compiles once per tier, with the agents' engine settings, and keeps the artifacts.

Called by `meshplug.controller.reconcile` in its validate stage for agent-plane plugins. wasmtime compiles the
module as the agents' engines would (`meshplug.compiled.new_engine`: same settings, this machine's CPU; the key
says so) into the operator's artifact cache (`meshplug.compiled.ArtifactCache` under the module cache, one
compile per module digest and tier, later reconciles and operator restarts deserialize it);
`meshplug.validate` checks the ABI on that compiled module instead of compiling again; the module server serves
the file at ``/compiled/<key>`` and the push names it with its sha256 (`meshplug.render.model.Compiled`), so
agents on a CPU like the operator's load it instead of compiling (meshplug.agent.loader). A module wasmtime
cannot compile is reported by `validate` as before.

Tiers (meshplug.compiled.Tier), like V8's Liftoff then TurboFan in Envoy: a module with an optimized artifact
already is served with it. A new one is compiled with the baseline compiler (Winch, several times faster) and
served with that artifact at once -- the agents run it within the rollout -- while one background thread
compiles the optimized artifact (single-threaded, at `limits.BACKGROUND_COMPILE_NICE`); when it is stored,
``on_optimized(sha256)`` tells the reconciler, whose next reconcile of the plugins using that module finds it
and pushes it (the agents swap their VMs to it like any new set: exchanges in flight finish on the old ones).
A module the baseline compiler cannot compile (a feature Winch lacks) is compiled optimized at once, as
without tiers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from meshplug import compiled, errors, limits, validate
from meshplug.render import model

log = logging.getLogger("meshplug.controller.precompile")


class Precompiler:
    """The operator's artifact cache for agent-plane modules. Thread-safe (reconciles run on worker threads)."""

    def __init__(self, root: Path, *, tiered: bool = True) -> None:
        """``tiered``: serve a new module's baseline artifact first (when this wasmtime has the baseline
        compiler); False: compile the optimized artifact before the first push."""
        self.root = root
        self.cache = compiled.ArtifactCache(compiled.new_engine(), settings=compiled.ENGINE_FINGERPRINT, root=root)
        self.baseline: compiled.ArtifactCache | None = None
        if tiered and compiled.baseline_available():
            engine = compiled.new_engine(compiled.Tier.BASELINE)
            self.baseline = compiled.ArtifactCache(engine, settings=compiled.BASELINE_FINGERPRINT, root=root)
        #: called (on the background thread) with a module's sha256 once its optimized artifact is stored
        self.on_optimized: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._sums: dict[str, str] = {}  # artifact key -> sha256 of its file
        self._pending: set[str] = set()  # modules queued for (or in) the background compile
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None

    def validate(
        self, data: bytes, sha256: str, kind: validate.FilterKind, *, served: bool = True
    ) -> model.Compiled | None:
        """`validate.validate(data, kind)` on the module compiled for the agents; the artifact to hand them
        (None when it could not be stored). Raises errors.ValidationError as `validate.validate` does.
        ``served=False``: no agent gets the artifact (a signed module: they compile it themselves), only the
        check counts: no optimized compile follows the baseline one."""
        t0, cpu0 = time.monotonic(), time.process_time()
        tier = compiled.Tier.OPTIMIZED
        loaded = self.cache.get(sha256)
        if loaded is None and self.baseline is not None:
            try:
                loaded, tier = self.baseline.load(data, sha256=sha256), compiled.Tier.BASELINE
            except errors.PluginStartError as exc:  # the optimized compile below has the last word
                log.info("baseline compile of sha256:%s failed, compiling optimized: %s", sha256, exc.message)
        if loaded is None:
            try:
                loaded, tier = self.cache.load(data, sha256=sha256), compiled.Tier.OPTIMIZED
            except errors.PluginStartError:  # does not compile: validate reports it with the compiler's message
                validate.validate(data, kind=kind)
                return None
        if loaded.outcome is not compiled.Outcome.HIT:
            ms = (time.monotonic() - t0) * 1000
            cpu = (time.process_time() - cpu0) * 1000  # the whole process's meanwhile: the compile's threads and more
            log.info(
                "compiled sha256:%s for the agents in %.0f ms (%s, %s), process CPU %.0f ms",
                sha256,
                ms,
                tier,
                loaded.outcome.value,
                cpu,
            )
        validate.validate(data, kind=kind, module=loaded.module)
        if tier is compiled.Tier.BASELINE and served:
            self._optimize_later(sha256, data)
        if not loaded.stored:
            return None
        key = loaded.key.filename
        with self._lock:
            if loaded.file_sha256:  # this compile wrote the file: its bytes were hashed then
                self._sums[key] = loaded.file_sha256
            known = self._sums.get(key)
        if known is None:
            try:
                known = hashlib.sha256(loaded.path.read_bytes()).hexdigest()
            except OSError:
                return None
            with self._lock:
                self._sums[key] = known
        return model.Compiled(key=key, sha256=known, tier=tier.value)

    def _optimize_later(self, sha256: str, data: bytes) -> None:
        with self._lock:
            if sha256 in self._pending:
                return
            self._pending.add(sha256)
            if self._worker is None:
                self._worker = threading.Thread(target=self._optimize, name="meshplug-optimize", daemon=True)
                self._worker.start()
        self._queue.put((sha256, data))

    def _optimize(self) -> None:
        """The background thread: optimized artifacts of the queued modules, one at a time, at low priority."""
        with contextlib.suppress(OSError, AttributeError):  # a per-thread nice value: Linux
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), limits.BACKGROUND_COMPILE_NICE)
        # single-threaded (the nice value holds for this thread only); the same settings, so the same key and code
        cache = compiled.ArtifactCache(
            compiled.new_engine(parallel=False), settings=compiled.ENGINE_FINGERPRINT, root=self.root
        )
        while (item := self._queue.get()) is not None:
            sha256, data = item
            t0 = time.monotonic()
            try:
                loaded = cache.load(data, sha256=sha256)
            except errors.PluginStartError as exc:  # the baseline artifact keeps serving
                log.warning("optimized compile of sha256:%s failed, the baseline tier stays: %s", sha256, exc.message)
                loaded = None
            finally:
                with self._lock:
                    self._pending.discard(sha256)
            if loaded is None or not loaded.stored:
                continue
            if loaded.file_sha256:  # the push that follows names the file by it: not read and hashed again
                with self._lock:
                    self._sums[loaded.key.filename] = loaded.file_sha256
            ms = (time.monotonic() - t0) * 1000
            log.info("optimized sha256:%s for the agents in %.0f ms (%s)", sha256, ms, loaded.outcome.value)
            del loaded
            if self.on_optimized is not None:
                try:
                    self.on_optimized(sha256)
                except Exception:  # a failing callback must not end the thread: later modules still tier up
                    log.exception("after the optimized compile of sha256:%s", sha256)

    def idle(self) -> bool:
        """No background compile queued or running (tests)."""
        with self._lock:
            return not self._pending

    def close(self) -> None:
        """Stop the background thread after its current compile (a compile cannot be interrupted)."""
        self._queue.put(None)
