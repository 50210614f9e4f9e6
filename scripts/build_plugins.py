#!/usr/bin/env python3
"""Build every plugin of the corpus into a cache outside git, rebuilding only what changed.

Layout: examples/filters/<sdk>/<name>/ holds a plugin's sources; examples/filters/<sdk>/build.sh
builds one plugin: `build.sh <plugin_dir> <out.wasm>` (it installs its own toolchain pieces from the
registries, cached). Directories whose name starts with `_` are shared SDK files, not plugins.

A plugin is rebuilt when the hash of its directory, its SDK's top-level files and the SDK's `_*`
directories changes. Output: $MESHPLUG_CACHE/plugins/<sdk>/<name>/<hash>.wasm and an index
($MESHPLUG_CACHE/plugins/index.json) mapping "<sdk>/<name>" to path, sha256 and size.

Usage: build_plugins.py [--only SDK[/NAME] ...] [--force] [--list]
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILTERS = REPO / "examples" / "filters"
SKIP_DIRS = {"target", "node_modules", "build", "__pycache__", ".cargo-home", "vendor-cache"}


def cache_root() -> Path:
    base = Path(os.environ.get("MESHPLUG_CACHE", Path.home() / ".cache" / "meshplug"))
    root = base / "plugins"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _files(directory: Path) -> list[Path]:
    out: list[Path] = []
    for path in sorted(directory.rglob("*")):
        if any(part in SKIP_DIRS for part in path.relative_to(directory).parts):
            continue
        if path.is_file():
            out.append(path)
    return out


def plugin_dirs() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for sdk_dir in sorted(p for p in FILTERS.iterdir() if p.is_dir() and not p.name.startswith("_")):
        if not (sdk_dir / "build.sh").exists():
            continue
        for plugin in sorted(p for p in sdk_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
            if plugin.name in SKIP_DIRS:
                continue
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


def build(key: str, plugin: Path, *, force: bool) -> dict[str, object]:
    digest = source_hash(plugin)
    out_dir = cache_root() / key
    out = out_dir / f"{digest}.wasm"
    if out.exists() and not force:
        return _entry(key, out, built=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".wasm.tmp")
    tmp.unlink(missing_ok=True)
    started = time.monotonic()
    print(f"building {key} ...", flush=True)
    result = subprocess.run(
        ["bash", str(plugin.parent / "build.sh"), str(plugin), str(tmp)],
        cwd=plugin,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not tmp.exists():
        sys.stderr.write(result.stdout[-6000:] + result.stderr[-6000:])
        raise SystemExit(f"build of {key} failed (exit {result.returncode})")
    if tmp.read_bytes()[:4] != b"\0asm":
        raise SystemExit(f"build of {key} did not produce a wasm module")
    os.replace(tmp, out)
    for stale in out_dir.glob("*.wasm"):
        if stale != out:
            stale.unlink()
    print(f"built {key} in {time.monotonic() - started:.1f}s", flush=True)
    return _entry(key, out, built=True)


def _entry(key: str, path: Path, *, built: bool) -> dict[str, object]:
    data = path.read_bytes()
    return {
        "key": key,
        "sdk": key.split("/", 1)[0],
        "path": str(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "built": built,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="SDK or SDK/NAME (repeatable)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--list", action="store_true", help="list plugins and exit")
    args = parser.parse_args(argv)
    plugins = plugin_dirs()
    if args.only:
        plugins = [(k, p) for k, p in plugins if any(k == o or k.startswith(o.rstrip("/") + "/") for o in args.only)]
    if args.list:
        for key, _ in plugins:
            print(key)
        return 0
    index_path = cache_root() / "index.json"
    results = {key: build(key, plugin, force=args.force) for key, plugin in plugins}
    known = {k for k, _ in plugin_dirs()}
    # merge under an exclusive lock: concurrent `--only` runs must not drop each other's entries
    with (cache_root() / "index.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index: dict[str, dict[str, object]] = {}
        if index_path.exists():
            index = json.loads(index_path.read_text())
        index.update(results)
        index = {k: v for k, v in sorted(index.items()) if k in known and Path(str(v["path"])).exists()}
        tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        os.replace(tmp, index_path)
    built = sum(1 for r in results.values() if r["built"])
    print(f"plugins: {len(plugins)} ({built} built, {len(plugins) - built} cached) -> {index_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
