"""`meshplug version`: print meshplug's version and the pinned runtimes it was built against."""

from __future__ import annotations

import argparse
import importlib.metadata
import json

import meshplug
from meshplug import native

HELP = "print the meshplug version, its runtime pins and whether the agent's data path is compiled"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    versions = {"meshplug": meshplug.__version__}
    for dist in ("wasmtime", "kopf", "httptools", "uvloop"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    status = native.check()
    versions["dataplane"] = "compiled" if not status.reason else f"interpreted: {status.reason}"
    if args.json:
        print(json.dumps(versions, sort_keys=True))
    else:
        for name, version in versions.items():
            print(f"{name} {version}")
    return 0
