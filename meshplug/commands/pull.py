"""`meshplug pull oci://REG/REPO:TAG [-o FILE]`: the module of an OCI image, as the operator would get it.

`meshplug fetch` for registries: every layout meshplug reads (Docker/OCI images, the wasm content layer
variants, the CNCF wasm artifact, oras pushes), sha256 and ``--key`` signature checks, the same exit codes.
Writes ``<repository name>.wasm`` in the current directory unless ``-o`` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meshplug import errors
from meshplug.commands import _registry
from meshplug.commands import fetch as fetch_command
from meshplug.fetch import PullPolicy, oci

HELP = "pull a wasm module from an OCI registry (any layout meshplug reads), verify it, write it out"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="oci://REGISTRY/REPO[:TAG][@sha256:...]", help="the image reference")
    parser.add_argument("-o", "--output", help="where to write the module ('-' for stdout; default REPO.wasm)")
    parser.add_argument("--sha256", help="expected sha256 of the wasm bytes or of the image manifest (64 hex)")
    parser.add_argument(
        "--key", type=Path, action="append", default=[], help="require a cosign signature under this key"
    )
    _registry.add_arguments(parser, files=False)
    parser.add_argument("--pull-policy", choices=[p.value for p in PullPolicy], help="default: IfNotPresent")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if "://" in args.url and not args.url.startswith("oci://"):
        raise errors.ConfigError(f"{args.url!r}: pull takes oci:// references (use `meshplug fetch` for others)")
    ref = oci.parse_reference(args.url)
    if args.output is None:
        args.output = ref.repository.rsplit("/", 1)[-1] + ".wasm"
    return fetch_command.run(args)
