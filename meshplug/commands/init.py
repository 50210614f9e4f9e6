"""`meshplug init --sdk rust|go|assemblyscript|cpp NAME`: a new plugin project in ./NAME (or ``--dir``).

The project (`meshplug.scaffold`) builds with the SDK's usual toolchain (`meshplug build`), has a behaviour test
through `meshplug run` (``python plugin_test.py``), a README with the author's workflow (build, test, push and
sign, render, apply and status) and a starting wasmplugin.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meshplug import scaffold

HELP = "create a plugin project (rust, go, assemblyscript or cpp) with a behaviour test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the plugin's name (a Kubernetes name: a-z, 0-9, '-')")
    parser.add_argument("--sdk", required=True, choices=scaffold.SDKS, help="the proxy-wasm SDK")
    parser.add_argument("--dir", type=Path, help="where to create it (default ./NAME; must be empty)")


def run(args: argparse.Namespace) -> int:
    directory = args.dir or Path(args.name)
    project = scaffold.create(args.sdk, args.name, directory)
    print(f"created {project.sdk} plugin {project.name} in {directory}")
    print(f"  cd {directory} && meshplug build && python plugin_test.py")
    return 0
