#!/usr/bin/env python3
"""Build every plugin of the corpus into a cache outside git, rebuilding only what changed.

Layout (tests/corpus/modules.py owns it): examples/filters/<sdk>/<name>/ holds a plugin's sources;
examples/filters/<sdk>/build.sh builds one plugin: `build.sh <plugin_dir> <out.wasm>` (it installs its own
toolchain pieces from the registries, cached). The output is $MESHPLUG_CACHE/plugins/<sdk>/<name>/<hash>.wasm,
the hash over the plugin's sources: a plugin is rebuilt when they change, and a run with nothing changed builds
nothing.

The cache is shared by every worktree and clone on the machine, each at its own commit, and readers find a
module by the hash of their own tree's sources. So a build never removes another hash's module that a tree may
still use: a module is kept while any tree's `make plugins` has found it current within KEEP_DAYS (each run
touches the modules it finds), older ones of the same plugin are removed. Concurrent builds of one plugin in two
trees take turns on a lock per plugin.

Usage: build_plugins.py [--only SDK[/NAME] ...] [--force] [--list]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `tests.corpus` importable
    sys.path.insert(0, str(REPO))

from tests.corpus.modules import cache_root, output_path, plugin_dirs  # noqa: E402

#: a module no tree has found current for this long is removed by the next build of its plugin
KEEP_DAYS = 14


def build(key: str, plugin: Path, *, force: bool) -> bool:
    """Make sure the module of `plugin`'s current sources is in the cache; True if it was built now."""
    out = output_path(key, plugin)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not force:
        _keep(out)
        return False
    # one build of a plugin at a time across trees: the second finds the first's output
    with (out.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists() and not force:
            _keep(out)
            return False
        tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp")
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
            tmp.unlink(missing_ok=True)
            sys.stderr.write(result.stdout[-6000:] + result.stderr[-6000:])
            raise SystemExit(f"build of {key} failed (exit {result.returncode})")
        if tmp.read_bytes()[:4] != b"\0asm":
            tmp.unlink()
            raise SystemExit(f"build of {key} did not produce a wasm module")
        os.replace(tmp, out)
        _keep(out)
    print(f"built {key} in {time.monotonic() - started:.1f}s", flush=True)
    return True


def _keep(out: Path) -> None:
    """Mark `out` as current for a tree (now) and remove the plugin's modules no tree has used for KEEP_DAYS."""
    os.utime(out)
    cutoff = time.time() - KEEP_DAYS * 86400
    for other in out.parent.glob("*.wasm"):
        try:
            if other != out and other.stat().st_mtime < cutoff:
                other.unlink()
        except FileNotFoundError:  # another tree's build removed it first
            pass


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
    built = sum(build(key, plugin, force=args.force) for key, plugin in plugins)
    print(f"plugins: {len(plugins)} ({built} built, {len(plugins) - built} cached) -> {cache_root()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
