"""Where corpus modules are built and found: the one layout `make plugins` (scripts/build_plugins.py) writes and
the tests, the demo and scripts/plugin_table.py read.

examples/filters/<sdk>/<name>/ holds a plugin's sources (directories starting with `_` are shared SDK files, an
SDK without build.sh -- lua -- has no modules). A plugin's output is
$MESHPLUG_CACHE/plugins/<sdk>/<name>/<source hash>.wasm, the hash over its directory, its SDK's top-level files
and the SDK's `_*` directories. Readers resolve a module by the hash of the sources in their own tree, never by a
shared "last built" index: the cache is shared by every worktree and clone of the machine, each at its own
commit, and a build in one tree must not change which module another tree's tests load.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

FILTERS = Path(__file__).resolve().parents[2] / "examples" / "filters"
SKIP_DIRS = frozenset({"target", "node_modules", "build", "__pycache__", ".cargo-home", "vendor-cache"})


@dataclass(frozen=True)
class BuiltModule:
    key: str
    sdk: str
    path: Path
    sha256: str
    size: int


def cache_root() -> Path:
    return Path(os.environ.get("MESHPLUG_CACHE", Path.home() / ".cache" / "meshplug")) / "plugins"


def _files(directory: Path) -> list[Path]:
    out: list[Path] = []
    for path in sorted(directory.rglob("*")):
        if any(part in SKIP_DIRS for part in path.relative_to(directory).parts):
            continue
        if path.is_file():
            out.append(path)
    return out


def plugin_dirs() -> list[tuple[str, Path]]:
    """("<sdk>/<name>", directory) of every plugin of this tree that builds into a module."""
    found: list[tuple[str, Path]] = []
    for sdk_dir in sorted(p for p in FILTERS.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if not (sdk_dir / "build.sh").exists():
            continue
        for plugin in sorted(p for p in sdk_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            if plugin.name not in SKIP_DIRS:
                found.append((f"{sdk_dir.name}/{plugin.name}", plugin))
    return found


def source_hash(plugin: Path) -> str:
    sdk_dir = plugin.parent
    h = hashlib.sha256()
    inputs = [p for p in sdk_dir.iterdir() if p.is_file()]
    for shared in sorted(p for p in sdk_dir.iterdir() if p.is_dir() and p.name.startswith("_")):
        inputs.extend(_files(shared))
    inputs.extend(_files(plugin))
    for path in sorted(inputs):
        h.update(str(path.relative_to(FILTERS)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def output_path(key: str, plugin: Path) -> Path:
    """Where the module of `plugin`'s current sources is (or will be) built."""
    return cache_root() / key / f"{source_hash(plugin)}.wasm"


@functools.cache
def _built(path: Path) -> BuiltModule:
    data = path.read_bytes()
    key = str(path.parent.relative_to(cache_root()))
    return BuiltModule(key, key.split("/", 1)[0], path, hashlib.sha256(data).hexdigest(), len(data))


def all_modules() -> dict[str, BuiltModule]:
    """Every module of this tree's corpus, as built from its sources; FileNotFoundError naming any not built."""
    paths = {key: output_path(key, plugin) for key, plugin in plugin_dirs()}
    missing = sorted(key for key, path in paths.items() if not path.is_file())
    if missing:
        raise FileNotFoundError(f"corpus modules not built from this tree's sources: {missing}; run `make plugins`")
    return {key: _built(path) for key, path in paths.items()}


def built_or_none() -> list[BuiltModule]:
    """Every module of the corpus in key order, or none when any is not built (the tests over it then have no
    cases; their collection-time checks say what to build)."""
    try:
        return sorted(all_modules().values(), key=lambda m: m.key)
    except FileNotFoundError:
        return []


def module(key: str) -> BuiltModule:
    plugins = dict(plugin_dirs())
    if key not in plugins:
        raise KeyError(f"no corpus plugin {key!r}; known: {sorted(plugins)}")
    path = output_path(key, plugins[key])
    if not path.is_file():
        raise KeyError(f"corpus module {key!r} not built from this tree's sources ({path}); run `make plugins`")
    return _built(path)


def with_custom_section(wasm: bytes, note: bytes) -> bytes:
    """The same module with one more custom section carrying ``note``: the same code under another sha256 (a module
    no proxy or cache of the test bed has seen yet, a version 2 of the same plugin)."""
    name = b"meshplug-test"
    payload = bytes([len(name)]) + name + note
    if len(payload) >= 128:  # one LEB128 byte
        raise ValueError(f"note too long for a one-byte section size: {len(note)} bytes")
    return wasm + b"\x00" + bytes([len(payload)]) + payload
