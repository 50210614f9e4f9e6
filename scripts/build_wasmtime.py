#!/usr/bin/env python3
"""Build the opt-in libwasmtime with compiler inlining (meshplug/wasmlib.py) unless the one on disk matches the sources.

native/wasmtime is a Cargo crate over the registry's wasmtime C API (the release wasmtime-py loads) that adds one
function, the compiler-inlining setter. It is built with cargo (`--locked`, crates from the registry) into
`<dir>/<version>/target` and assembled, with a copy of the installed wasmtime-py package, into
`<dir>/<version>/python` (`wasmlib.overlay()`); `<dir>`: $MESHPLUG_WASMTIME_DIR or ~/.cache/meshplug/wasmtime.
The crate needs rustc >= RUST (wasmtime's MSRV); the first toolchain that has it of `cargo +nightly` and plain
`cargo` builds it. Without one, nothing is built and the stock library serves (exit 0, the reason printed):
everything works on either library (tests/integration/test_wasmlib.py runs both). MESHPLUG_WASMTIME=built selects it.

Usage: scripts/build_wasmtime.py [--force]. A cold build takes ~13 CPU-minutes (~25 min on 2 busy cores).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRATE = ROOT / "native" / "wasmtime"
os.environ["MESHPLUG_WASMTIME"] = "stock"  # this script reads wasmtime-py's own files, never the overlay
sys.path.insert(0, str(ROOT))

from meshplug import wasmlib  # noqa: E402 -- after the path insert

#: wasmtime 50's minimum Rust (its crates' rust-version)
RUST = (1, 97)
#: what the build key covers: the crate's sources, its lock, and this script
SOURCES = ("Cargo.toml", "Cargo.lock", "src/lib.rs")
KEY = "build-key"


def source_key() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (CRATE / name).read_bytes())
    return digest.hexdigest()[:16]


def cargo() -> str | None:
    found = shutil.which("cargo")
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo") / "bin" / "cargo"
    return str(home) if home.is_file() else None


def toolchain(cargo_bin: str) -> tuple[list[str], str]:
    """The cargo command line prefix of the first toolchain new enough (rustup's `+nightly`, then the default),
    or ([], why none is)."""
    rustc = str(Path(cargo_bin).with_name("rustc"))
    seen = []
    for pick in (["+nightly"], []):
        try:
            out = subprocess.run([rustc, *pick, "--version"], capture_output=True, text=True, check=False)
        except OSError as exc:
            seen.append(f"rustc {' '.join(pick)}: {exc}")
            continue
        m = re.match(r"rustc (\d+)\.(\d+)", out.stdout)
        if out.returncode == 0 and m and (int(m[1]), int(m[2])) >= RUST:
            return [cargo_bin, *pick], ""
        seen.append(f"rustc {' '.join(pick) or '(default)'}: {out.stdout.strip() or out.stderr.strip()[:80]}")
    return [], f"needs rustc >= {RUST[0]}.{RUST[1]} ({'; '.join(seen)})"


def assemble(lib: Path, dest: Path, version: str) -> None:
    """dest/python: a copy of the installed wasmtime-py package whose library is `lib`; the stamp written last."""
    package = Path(str(importlib.metadata.distribution("wasmtime").locate_file("wasmtime")))
    tmp = dest / "python.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(package, tmp / "wasmtime", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (tmp / "wasmtime" / "linux-x86_64").mkdir(exist_ok=True)
    shutil.copy2(lib, tmp / "wasmtime" / "linux-x86_64" / "_libwasmtime.so")
    (tmp / wasmlib.STAMP).write_text(version + "\n")
    final = dest / "python"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def build(dest: Path, prefix: list[str], installed: str) -> int:
    print(
        f"wasmtime: building {wasmlib.VERSION} with compiler inlining ({' '.join(prefix[1:]) or 'default'} "
        "toolchain; a cold build takes ~13 CPU-minutes)",
        flush=True,
    )
    env = {**os.environ, "CARGO_TARGET_DIR": str(dest / "target")}
    manifest = str(CRATE / "Cargo.toml")
    cmd = ["nice", "-n", "10", *prefix, "build", "--release", "--locked", "--manifest-path", manifest]
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        print(f"wasmtime: cargo failed (exit {proc.returncode}); the stock library serves", file=sys.stderr)
        return 1
    assemble(dest / "target" / "release" / "libwasmtime.so", dest, installed)
    reason = wasmlib.usable()
    if reason:
        print(f"wasmtime: built but unusable: {reason}", file=sys.stderr)
        return 1
    print(f"wasmtime: built -> {wasmlib.overlay()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even when the build key matches")
    args = ap.parse_args(argv)
    try:
        installed = importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        installed = ""
    if installed != wasmlib.VERSION or sys.platform != "linux" or os.uname().machine != "x86_64":
        print(f"wasmtime: the crate is for wasmtime-py {wasmlib.VERSION} on linux x86_64; the stock library serves")
        return 0
    dest = wasmlib.root() / wasmlib.VERSION
    dest.mkdir(parents=True, exist_ok=True)
    key = source_key()
    with open(dest / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel make waits for the first build instead of repeating it
        stored = (dest / KEY).read_text().strip() if (dest / KEY).is_file() else ""
        if not args.force and stored == key and not wasmlib.usable():
            print("wasmtime: up to date")
            return 0
        cargo_bin = cargo()
        prefix, why = toolchain(cargo_bin) if cargo_bin else ([], "no cargo here")
        if not prefix:
            print(f"wasmtime: not built, {why}; the stock library serves")
            return 0
        (dest / KEY).unlink(missing_ok=True)
        status = build(dest, prefix, installed)
        if status == 0:
            (dest / KEY).write_text(key + "\n")
        return status


if __name__ == "__main__":
    raise SystemExit(main())
