"""Precompiled modules: compile once per module digest, keep wasmtime's serialized artifact on disk, load it fast.

Called by the agent's host when it loads a plugin, by the operator's validation (which compiles with the
agent's engine settings, `new_engine()` / `ENGINE_FINGERPRINT`, so that the artifact it produces is what the
agents load: the module server hands it to them, meshplug.agent.loader checks and `install`s it) and by
bench/precompile.py. The caller owns its ``wasmtime.Engine`` (its Config: epoch interruption, fuel, ...) and
describes that configuration in a ``settings`` string; an artifact is only reused by an engine with the same
wasmtime version and settings. `ENGINE_FINGERPRINT` covers the agent's engine settings and this machine's
CPU (wasmtime compiles for the host's CPU features): an artifact made on another CPU has another key and is
never fetched; wasmtime refusing one anyway (``stale``) falls back to compiling.

Two tiers (`Tier`), each its own engine settings and so its own artifact key: ``optimized`` (Cranelift, opt
level speed: what VMs run in the steady state) and ``baseline`` (Winch, wasmtime's single-pass compiler:
compiles a 3-4 MB Go SDK module ~6x faster, its code costs a Go plugin ~15% more per request;
`baseline_available()` says whether this wasmtime build has it). The operator compiles a new module with the
baseline first so the agents start it at once, then the optimized artifact in the background
(meshplug.controller.precompile); an artifact of one tier is never loaded by the other's engine (other key;
wasmtime refuses it as well).

File layout (one file per key, under ``<root>/<sha256[:2]>/``)::

    MAGIC (8 bytes)  u32le header length  header (JSON: module sha256, wasmtime version, settings fingerprint,
                                                  payload length, payload sha256)  payload (Module.serialize())

`wasmtime.Module.deserialize` trusts its input completely (it maps machine code), so a file is used only when
the header names exactly this key and the payload's sha256 matches the header. Anything else (other
version/settings: ``stale``; truncated, bad magic, bad checksum, wasmtime refusing it: ``corrupt``) is rebuilt
and replaced, never loaded. Writes go to a temp file in the same directory, are fsynced, then `os.replace`d;
a per-key ``flock`` makes a second process wait for the first compile instead of repeating it, and readers
never see a partial file. Outcome names double as metric labels.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import _ffi as ffi

from meshplug import errors, files, wasminline, wasmlib

log = logging.getLogger(__name__)

MAGIC = b"MPWASM1\n"
_LEN = struct.Struct("<I")
#: the longest header we accept when reading (real ones are ~250 bytes)
_MAX_HEADER = 4096


class Tier(enum.StrEnum):
    """Which compiler made a module's machine code (the agent runs both; meshplug.agent.vm)."""

    OPTIMIZED = "optimized"  # Cranelift: slower to compile, faster code
    BASELINE = "baseline"  # Winch: one quick pass per function, no optimisation


#: whether this process runs the libwasmtime built here (meshplug.wasmlib): its engines inline small callees
BUILT_LIBRARY = wasmlib.loaded()
#: what the built library adds to both tiers' settings: its own key (it is another build of wasmtime, whose
#: artifacts the stock library refuses and vice versa), and for the optimized tier Cranelift's inlining within
#: a module (`Config::compiler_inlining`, not in wasmtime's C API)
_LIBRARY: tuple[tuple[str, str], ...] = (("library", f"meshplug-{wasmlib.VERSION}"),) if BUILT_LIBRARY else ()
_INLINING: tuple[tuple[str, str], ...] = (("inlining", "yes"),) if BUILT_LIBRARY else ()
#: the agent's engine settings (meshplug.agent.vm builds its engine from them; the operator compiles with them).
#: ``inline``: modules are compiled after meshplug.wasminline's pass (its version and limits: another pass,
#: another key)
ENGINE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("epoch_interruption", "1"),
    ("cranelift_opt_level", "speed"),
    ("inline", wasminline.SETTINGS),
    *_INLINING,
    *_LIBRARY,
)
#: the baseline tier's: the same sandbox (epoch interruption), Winch instead of Cranelift. Winch compiles the
#: function bodies; wasmtime still compiles the host-to-guest trampolines (one per function a table or an export
#: lets escape: nearly every function of a Go module) with Cranelift, unoptimized here (~13% less CPU for the
#: tier's compile of go/headers; the optimized tier replaces them within seconds)
BASELINE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("epoch_interruption", "1"),
    ("strategy", "winch"),
    ("cranelift_opt_level", "none"),
    *_LIBRARY,
)
SETTINGS: dict[Tier, tuple[tuple[str, str], ...]] = {Tier.OPTIMIZED: ENGINE_SETTINGS, Tier.BASELINE: BASELINE_SETTINGS}
#: wasmtime's C API value of WASMTIME_STRATEGY_WINCH (wasmtime-py 50's `Config.strategy` names only auto and
#: cranelift; the pinned version's C API has the third)
_STRATEGY_WINCH = 2


def cpu_fingerprint() -> str:
    """This machine's architecture and CPU feature flags (what wasmtime's native compilation depends on)."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                flags = " ".join(sorted(value.split()))
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()};{flags}".encode()).hexdigest()[:16]


def wasmtime_version() -> str:
    return importlib.metadata.version("wasmtime")


def _fingerprint(settings: tuple[tuple[str, str], ...]) -> str:
    parts = (("wasmtime", wasmtime_version()), *settings, ("cpu", cpu_fingerprint()))
    return hashlib.sha256(";".join(f"{k}={v}" for k, v in parts).encode()).hexdigest()[:16]


#: the settings string of the agent's engine on this machine: wasmtime version, ENGINE_SETTINGS, CPU
ENGINE_FINGERPRINT = _fingerprint(ENGINE_SETTINGS)
#: the same for the baseline tier's engine (BASELINE_SETTINGS)
BASELINE_FINGERPRINT = _fingerprint(BASELINE_SETTINGS)
FINGERPRINTS: dict[Tier, str] = {Tier.OPTIMIZED: ENGINE_FINGERPRINT, Tier.BASELINE: BASELINE_FINGERPRINT}


def new_engine(tier: Tier = Tier.OPTIMIZED, *, parallel: bool = True) -> wasmtime.Engine:
    """An engine with the agent's settings of ``tier`` (SETTINGS); ``parallel=False``: compiles on the calling
    thread only (the operator's background compile; the machine code is the same)."""
    cfg = wasmtime.Config()
    settings = dict(SETTINGS[tier])
    cfg.epoch_interruption = settings["epoch_interruption"] == "1"
    if settings.get("strategy") == "winch":
        ffi.wasmtime_config_strategy_set(cfg.ptr(), _STRATEGY_WINCH)
    cfg.cranelift_opt_level = settings["cranelift_opt_level"]
    if "inlining" in settings:
        wasmlib.set_inlining(cfg, settings["inlining"])
    cfg.parallel_compilation = parallel
    return wasmtime.Engine(cfg)


#: digests of modules whose inlined form wasmtime refused (logged once each; their original is compiled)
_REFUSED: set[str] = set()


def compile_module(engine: wasmtime.Engine, data: bytes, *, inline: bool, digest: str = "") -> wasmtime.Module:
    """``data`` compiled by ``engine``; ``inline``: after meshplug.wasminline's pass (the optimized tier's
    settings, `ENGINE_SETTINGS`), falling back to the original bytes if wasmtime refuses the pass's output
    (logged once per module). Raises wasmtime.WasmtimeError when the original does not compile."""
    prepared = wasminline.inline(data) if inline else data
    if prepared is not data:
        try:
            return wasmtime.Module(engine, prepared)
        except wasmtime.WasmtimeError as exc:
            digest = digest or hashlib.sha256(data).hexdigest()
            if digest not in _REFUSED:
                _REFUSED.add(digest)
                text = " ".join(str(exc).split())[:300]
                log.warning("module sha256:%s: wasmtime refused the inlined form, compiling the original: %s",
                            digest[:12], text)  # fmt: skip
    return wasmtime.Module(engine, data)


@functools.cache
def baseline_available() -> bool:
    """Whether this wasmtime build compiles with Winch on this machine (an engine with it is made and compiles
    an empty module); False: everything uses the optimized tier."""
    try:
        wasmtime.Module(new_engine(Tier.BASELINE), b"\0asm\x01\0\0\0")
    except wasmtime.WasmtimeError:
        return False
    return True


class Outcome(enum.StrEnum):
    HIT = "hit"  # a valid artifact was loaded
    MISS = "miss"  # none on disk: compiled and stored
    STALE = "stale"  # one for another wasmtime version / engine settings: compiled and replaced
    CORRUPT = "corrupt"  # unreadable, truncated, wrong checksum or refused by wasmtime: compiled and replaced


def default_root() -> Path:
    base = os.environ.get("MESHPLUG_CACHE") or str(Path.home() / ".cache" / "meshplug")
    return Path(base) / "compiled"


@dataclass(frozen=True)
class ArtifactKey:
    """What an artifact was compiled from and for."""

    module_sha256: str
    wasmtime_version: str
    #: sha256 (first 16 hex) of the caller's engine-settings string
    settings_fingerprint: str

    @classmethod
    def make(cls, module_sha256: str, settings: str) -> ArtifactKey:
        return cls(module_sha256, wasmtime_version(), hashlib.sha256(settings.encode()).hexdigest()[:16])

    @property
    def filename(self) -> str:
        return f"{self.module_sha256}.{self.wasmtime_version}.{self.settings_fingerprint}.cwasm"


@dataclass(frozen=True)
class Loaded:
    module: wasmtime.Module
    outcome: Outcome
    path: Path
    key: ArtifactKey
    #: False when the artifact could not be written (read-only or full disk): the module still works
    stored: bool = True
    #: sha256 of the artifact file's bytes when this load wrote them ("": not computed; read the file)
    file_sha256: str = ""


def encode(key: ArtifactKey, payload: bytes) -> bytes:
    """Header + payload, as written to disk."""
    header = json.dumps(
        {
            "module_sha256": key.module_sha256,
            "wasmtime_version": key.wasmtime_version,
            "settings_fingerprint": key.settings_fingerprint,
            "payload_len": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        },
        sort_keys=True,
    ).encode()
    return MAGIC + _LEN.pack(len(header)) + header + payload


class _Stale(Exception):
    pass


class _Corrupt(Exception):
    pass


def decode(key: ArtifactKey, blob: bytes, *, checked: bool = False) -> bytes:
    """The payload if ``blob`` is a sound artifact for ``key``; raises _Stale or _Corrupt otherwise. ``checked``:
    the caller matched the whole blob's sha256 against the digest its producer announced for that file (the
    operator's push), so the payload's own checksum -- part of those bytes -- is not computed again."""
    return blob[_payload_at(key, blob, checked=checked) :]


def _payload_at(key: ArtifactKey, blob: bytes, *, checked: bool) -> int:
    """Where the payload of a sound artifact ``blob`` for ``key`` starts (`decode`; no copy of the payload)."""
    if len(blob) < len(MAGIC) + _LEN.size or not blob.startswith(MAGIC):
        raise _Corrupt("bad magic or truncated header")
    (hlen,) = _LEN.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if hlen > _MAX_HEADER or start + hlen > len(blob):
        raise _Corrupt("header length out of range")
    try:
        header = json.loads(blob[start : start + hlen])
        theirs = ArtifactKey(
            str(header["module_sha256"]), str(header["wasmtime_version"]), str(header["settings_fingerprint"])
        )
        payload_len = int(header["payload_len"])
        payload_sha = str(header["payload_sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise _Corrupt(f"unreadable header: {exc}") from None
    if theirs != key:
        raise _Stale(f"artifact is for {theirs}, wanted {key}")
    at: int = start + hlen
    if len(blob) - at != payload_len:
        raise _Corrupt(f"payload is {len(blob) - at} bytes, header says {payload_len}")
    if not checked and hashlib.sha256(memoryview(blob)[at:]).hexdigest() != payload_sha:
        raise _Corrupt("payload checksum mismatch")
    return at


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[bool]:
    """Hold an exclusive flock on ``path``'s lock file; yields False (no lock) if it cannot be created."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


class ArtifactCache:
    """Compiled-module cache for one Engine configuration. A cache whose settings are `ENGINE_FINGERPRINT` (the
    agents' optimized tier) compiles modules after the inlining pass its settings name (`compile_module`)."""

    def __init__(self, engine: wasmtime.Engine, *, settings: str, root: Path | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.root = root if root is not None else default_root()
        self.inline = settings == ENGINE_FINGERPRINT

    def key(self, module_sha256: str) -> ArtifactKey:
        return ArtifactKey.make(module_sha256, self.settings)

    def path(self, key: ArtifactKey) -> Path:
        return self.root / key.module_sha256[:2] / key.filename

    def _try_load(self, key: ArtifactKey, path: Path) -> tuple[wasmtime.Module | None, Outcome]:
        try:
            blob = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None, Outcome.MISS
        except OSError:
            return None, Outcome.CORRUPT
        try:
            payload = decode(key, blob)
        except _Stale:
            return None, Outcome.STALE
        except _Corrupt:
            return None, Outcome.CORRUPT
        try:
            return wasmtime.Module.deserialize(self.engine, payload), Outcome.HIT
        except wasmtime.WasmtimeError:
            # sound file, but this engine refuses it (e.g. a Config difference the settings string missed)
            return None, Outcome.STALE

    def get(self, module_sha256: str) -> Loaded | None:
        """The module from a sound artifact for ``module_sha256`` if there is one (HIT); never compiles."""
        key = self.key(module_sha256)
        path = self.path(key)
        module, outcome = self._try_load(key, path)
        return Loaded(module, outcome, path, key) if module is not None else None

    def install(self, module_sha256: str, blob: bytes, *, checked: bool = False) -> bool:
        """Put an artifact made elsewhere (the operator's) in place for ``module_sha256``: only a sound one for
        this cache's key (magic, header naming exactly the key, payload checksum unless ``checked``: `decode`),
        written atomically. False (nothing written) when it is not; `load` still checks it again and wasmtime
        may refuse it (stale)."""
        key = self.key(module_sha256)
        try:
            _payload_at(key, blob, checked=checked)
        except (_Stale, _Corrupt):
            return False
        path = self.path(key)
        with _locked(path):
            if not path.exists():
                try:
                    files.write_atomic(path, blob)
                except OSError:
                    return False
        return True

    def deserialize(self, module_sha256: str, blob: bytes, *, checked: bool = False) -> wasmtime.Module | None:
        """The module from an artifact made elsewhere, in memory (nothing read or written): only from a sound one
        for this cache's key (`decode`, ``checked`` as there); None when it is not or wasmtime refuses it."""
        try:
            payload = decode(self.key(module_sha256), blob, checked=checked)
            return wasmtime.Module.deserialize(self.engine, payload)
        except (_Stale, _Corrupt, wasmtime.WasmtimeError):
            return None

    def load(self, data: bytes, *, sha256: str | None = None) -> Loaded:
        """The compiled module for ``data``, from the cache when a sound artifact exists.

        ``sha256``: the module's digest when the caller already verified it (e.g. a fetched artifact); else
        computed here. Raises errors.PluginStartError(reason="compile_failed") if wasmtime cannot compile it.
        """
        digest = sha256 if sha256 is not None else hashlib.sha256(data).hexdigest()
        key = self.key(digest)
        path = self.path(key)
        module, outcome = self._try_load(key, path)
        if module is not None:
            return Loaded(module, outcome, path, key)
        with _locked(path):
            # another process may have compiled it while we waited for the lock
            module, again = self._try_load(key, path)
            if module is not None:
                return Loaded(module, Outcome.HIT, path, key)
            try:
                module = compile_module(self.engine, data, inline=self.inline, digest=digest)
            except wasmtime.WasmtimeError as exc:
                text = " ".join(str(exc).split())
                raise errors.PluginStartError(
                    f"module sha256:{digest[:12]} does not compile: {text}", reason="compile_failed"
                ) from None
            blob = encode(key, bytes(module.serialize()))
            stored = True
            try:
                files.write_atomic(path, blob)
            except OSError:
                stored = False
            file_sha256 = hashlib.sha256(blob).hexdigest() if stored else ""
            return Loaded(module, outcome if outcome is not Outcome.MISS else again, path, key, stored, file_sha256)


def load_module(
    engine: wasmtime.Engine, data: bytes, settings: str, *, root: Path | None = None, sha256: str | None = None
) -> wasmtime.Module:
    """One-call form of `ArtifactCache(engine, settings=settings, root=root).load(data, sha256=sha256).module`."""
    return ArtifactCache(engine, settings=settings, root=root).load(data, sha256=sha256).module
