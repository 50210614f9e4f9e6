"""`meshplug build [DIR]`: build a project made by `meshplug init` with its SDK's toolchain, then check the module.

Reads DIR/meshplug.yaml (default: the current directory), runs the SDK's build (`meshplug.scaffold.commands`),
then the proxy-wasm ABI check `meshplug inspect` runs. Exit 0 when the module is accepted, 1 when the check
rejects it, 2 when the build itself fails (the toolchain's last lines are printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshplug import errors, scaffold, validate

HELP = "build a plugin project (meshplug init) with its SDK's toolchain, then validate the module"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", type=Path, default=Path("."), help="the project (default: .)")
    parser.add_argument("--dry-run", action="store_true", help="print the build commands, run nothing")


def run(args: argparse.Namespace) -> int:
    project = scaffold.load(args.dir)
    if args.dry_run:
        for argv, env in scaffold.commands(project):
            prefix = " ".join(f"{k}={v}" for k, v in env.items())
            print(f"{prefix} {' '.join(argv)}".strip())
        return 0
    module = scaffold.build(project)
    info = validate.describe(module.read_bytes())
    verdict = "accepted" if info.accepted else "REJECTED"
    print(f"{module}: {info.size} bytes, sha256 {info.sha256}, ABI {info.abi_version or 'none'}: {verdict}")
    for problem in info.errors:
        print(f"  error: {problem}", file=sys.stderr)
    return 0 if info.accepted else errors.ValidationError.exit_code
