"""The agent's compiled data path: which modules are compiled, and a guard that never runs a stale build.

Two kinds of native code, built in place by `make native` (scripts/build_native.py -> setup.py build_ext)
and into wheels by `pip wheel .`:

* `EXTENSIONS`: meshplug/agent/_wasmcall.c + _wasmstore.c (`EXTENSION`), the fast wasm backend's guest/host call
  boundary and a store's memory and epoch clock (plain C against the Python API; wasmtime's functions are handed
  over as addresses at import), and
  meshplug/agent/_shared.c, shared data and queues across the workers of an agent (--concurrency), and
  meshplug/agent/_h2codec.c, the HTTP/2 codec over libnghttp2 (`LIBRARIES`).
* `COMPILED`: the per-request modules, compiled by mypyc from their (mypy --strict) sources into one shared
  library (`GROUP`). The .py files stay the source of truth; the interpreter runs them when no build is
  present.

The build writes `STAMP` (sha256 of every source it compiled from, one per module: an extension's several
files hashed together). `guard()` runs when meshplug.agent is
imported: a build whose stamp does not match the sources on disk is never loaded -- the mypyc modules are
all imported from source (they call each other natively, so it is all or none) and the C extension is
refused (meshplug.agent.vm then serves with the ``public`` backend). Environment:

* ``MESHPLUG_NATIVE=0``: ignore any build (interpreted data path; the fallback tests use this).
* ``MESHPLUG_REQUIRE_NATIVE=1``: a missing or stale build is an error at import (`make test` and CI set it,
  so the suite always runs the compiled code it ships).

This module imports nothing from meshplug: setup.py loads it by path.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
EXTENSION = "meshplug.agent._wasmcall"
#: the agent's HTTP/2 codec over libnghttp2 (meshplug.agent.h2wire; Debian: libnghttp2-dev at build time)
H2CODEC = "meshplug.agent._h2codec"
#: every C extension and the files it is built from (its C sources, then the headers they include), built and
#: loaded together (`Status.extension`): the fast backend's call boundary and the workers' shared data and queues
#: (meshplug/agent/_shared.c, for --concurrency)
EXTENSIONS: dict[str, tuple[str, ...]] = {
    EXTENSION: ("meshplug/agent/_wasmcall.c", "meshplug/agent/_wasmstore.c", "meshplug/agent/_wasmcall.h"),
    "meshplug.agent._shared": ("meshplug/agent/_shared.c",),
    H2CODEC: ("meshplug/agent/_h2codec.c", "meshplug/agent/_h2inbound.c", "meshplug/agent/_h2codec.h"),
}
#: the C extensions' system libraries (Debian: libnghttp2-dev to build, libnghttp2-14 to run); absent at build
#: time, the extension is left out and its pure-Python counterpart runs (meshplug.agent.h2wire: the h2 library)
LIBRARIES: dict[str, list[str]] = {H2CODEC: ["nghttp2"]}
#: compiled by mypyc, in one group (calls between them are native)
COMPILED: tuple[str, ...] = (
    "meshplug.agent.abi",
    "meshplug.agent.bridge",
    "meshplug.agent.callouts",
    "meshplug.agent.chain",
    "meshplug.agent.contexts",
    "meshplug.agent.downstream",
    "meshplug.agent.exchange",
    "meshplug.agent.filtered",
    "meshplug.agent.filters",
    "meshplug.agent.framing",
    "meshplug.agent.h1peer",
    "meshplug.agent.h1request",
    "meshplug.agent.h1timers",
    "meshplug.agent.h2down",
    "meshplug.agent.h2exchange",
    "meshplug.agent.h2peer",
    "meshplug.agent.h2up",
    "meshplug.agent.h2wire",
    "meshplug.agent.hcm",
    "meshplug.agent.headermap",
    "meshplug.agent.host",
    "meshplug.agent.hostapi",
    "meshplug.agent.lane",
    "meshplug.agent.pairs",
    "meshplug.agent.plugin",
    "meshplug.agent.properties",
    "meshplug.agent.relay",
    "meshplug.agent.routing",
    "meshplug.agent.rules",
    "meshplug.agent.server",
    "meshplug.agent.stats",
    "meshplug.agent.stream",
    "meshplug.agent.streamapi",
    "meshplug.agent.streamtimeouts",
    "meshplug.agent.tcp",
    "meshplug.agent.tunnel",
    "meshplug.agent.upstream",
    "meshplug.agent.wasmvm",
    "meshplug.agent.wire",
)
GROUP = "meshplug.agent._dataplane"
#: the interpreted modules the compiled ones import: mypyc folds their Final constants (meshplug.limits' above
#: all) into the build, so a change to one makes the build stale too (tests/unit/test_native.py keeps this
#: list whole)
FOLDED: tuple[str, ...] = (
    "meshplug/abi_table.py",
    "meshplug/agent/config.py",
    "meshplug/agent/envoystats.py",
    "meshplug/agent/grpccall.py",
    "meshplug/agent/grpcwire.py",
    "meshplug/agent/h2conn.py",
    "meshplug/agent/hpackcache.py",
    "meshplug/agent/loader.py",
    "meshplug/agent/lua.py",
    "meshplug/agent/metadata.py",
    "meshplug/agent/sharing.py",
    "meshplug/agent/vm.py",
    "meshplug/agent/wasi.py",
    "meshplug/errors.py",
    "meshplug/limits.py",
    "meshplug/prometheus.py",
    "meshplug/protocol.py",
)
STAMP = PACKAGE_DIR / "_native.json"


def source_path(module: str) -> str:
    """Repository-relative path of a mypyc-compiled module's source."""
    return module.replace(".", "/") + ".py"


def built_from(module: str) -> tuple[str, ...]:
    """Repository-relative paths of what a native module is built from: a C extension's files, the interpreted
    modules the compiled group folds constants from (GROUP), else its .py."""
    if module == GROUP:
        return FOLDED
    return EXTENSIONS.get(module) or (source_path(module),)


def _digest(paths: Sequence[str]) -> str:
    """sha256 of one file; of several, of their names and digests in order."""
    digests = [hashlib.sha256((ROOT / p).read_bytes()).hexdigest() for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(f"{p}\0{d}\n" for p, d in zip(paths, digests, strict=True)).encode()).hexdigest()


def build_tag() -> str:
    """What a build is only valid for: this interpreter's extension ABI."""
    return str(importlib.machinery.EXTENSION_SUFFIXES[0])


def expected() -> dict[str, object]:
    """The stamp a build of the sources on disk writes."""
    sources = {m: _digest(built_from(m)) for m in (*EXTENSIONS, GROUP, *COMPILED)}
    return {"abi": build_tag(), "sources": sources}


def write_stamp(target_dir: Path, built_from: dict[str, object] | None = None) -> Path:
    """Record, next to a fresh build in `target_dir` (a package root), what it was built from: `built_from`
    as `expected()` answered when the build read its sources (a source edited while the C compiles must
    leave the build stale), else the sources now."""
    path = target_dir / "meshplug" / STAMP.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(expected() if built_from is None else built_from, indent=1, sort_keys=True) + "\n")
    return path


def _built(module: str) -> bool:
    parent, _, leaf = module.rpartition(".")
    folder = ROOT / parent.replace(".", "/")
    return any((folder / f"{leaf}{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


@dataclass(frozen=True)
class Status:
    """Which native parts this process may load, and why not."""

    extension: bool
    compiled: bool
    reason: str  # "" when both are in use

    def as_dict(self) -> dict[str, object]:
        return {"extension": self.extension, "compiled": self.compiled, "reason": self.reason}


def check() -> Status:
    """Compare what is built with the sources on disk (cheap: hashes ~10 files)."""
    if os.environ.get("MESHPLUG_NATIVE") == "0":
        return Status(False, False, "MESHPLUG_NATIVE=0")
    want = expected()
    try:
        have = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        have = {}
    if not isinstance(have, dict) or have.get("abi") != want["abi"]:
        return Status(False, False, "not built (run `make native`)")
    want_src = want["sources"]
    have_src = have.get("sources") or {}
    assert isinstance(want_src, dict)
    stale = sorted(m for m in want_src if have_src.get(m) != want_src[m])
    # `extension`: the wasm call boundary and the workers' shared data (the HTTP/2 codec falls back on its own)
    ext = all(e not in stale and _built(e) for e in EXTENSIONS if e != H2CODEC)
    compiled = (
        GROUP not in stale and _built(GROUP + "__mypyc") and not any(m in stale or not _built(m) for m in COMPILED)
    )
    h2codec = H2CODEC not in stale and _built(H2CODEC)
    if ext and compiled and h2codec:
        return Status(True, True, "")
    if stale:
        names = ", ".join("the modules it folds constants from" if m == GROUP else m.rsplit(".", 1)[1] for m in stale)
        return Status(ext, compiled, f"sources changed since the build: {names} (run `make native`)")
    if ext and compiled:
        return Status(ext, compiled, "built without the HTTP/2 codec (libnghttp2-dev missing at build time?)")
    missing = [] if ext else ["the C extensions"]
    missing += [] if compiled else ["the mypyc modules"]
    return Status(ext, compiled, f"built without {' and '.join(missing)} (no C compiler at build time?)")


def unusable_extensions() -> tuple[str, ...]:
    """The C extensions that may not be loaded: stale or not built (each falls back on its own)."""
    if os.environ.get("MESHPLUG_NATIVE") == "0":
        return tuple(EXTENSIONS)
    want = expected()["sources"]
    try:
        have = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        have = {}
    have_src = (have.get("sources") if isinstance(have, dict) and have.get("abi") == build_tag() else None) or {}
    assert isinstance(want, dict)
    return tuple(e for e in EXTENSIONS if have_src.get(e) != want[e] or not _built(e))


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports `sources` from their .py files and refuses `blocked`, ahead of the extension-first default."""

    def __init__(self, sources: Sequence[str], blocked: Sequence[str]) -> None:
        self.sources = frozenset(sources)
        self.blocked = frozenset(blocked)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in self.blocked:
            raise ImportError(f"{fullname}: its build is stale or disabled ({STATUS.reason})", name=fullname)
        if fullname in self.sources:
            return importlib.util.spec_from_file_location(fullname, ROOT / source_path(fullname))
        return None


class NativeBuildError(ImportError):
    """MESHPLUG_REQUIRE_NATIVE=1 and the native build is missing or stale."""


STATUS = Status(False, False, "guard() not run")


def guard() -> Status:
    """Route imports so that only a build matching the sources is loaded; returns what is in use."""
    global STATUS  # noqa: PLW0603 -- decided once per process, before the data path is imported
    if any(isinstance(f, _FromSource) for f in sys.meta_path):
        return STATUS
    STATUS = check()
    if os.environ.get("MESHPLUG_REQUIRE_NATIVE") == "1" and STATUS.reason:
        raise NativeBuildError(f"MESHPLUG_REQUIRE_NATIVE=1 but the compiled data path is unusable: {STATUS.reason}")
    blocked = unusable_extensions() if STATUS.reason else ()
    sys.meta_path.insert(0, _FromSource(() if STATUS.compiled else COMPILED, blocked))
    return STATUS
