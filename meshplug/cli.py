"""argv -> subcommand, nothing else.

Subcommands live in `meshplug.commands.<name>`; this table names them and they are imported
only when chosen, so one subcommand's heavy imports (kopf, wasmtime) never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from meshplug import errors

# name -> (module under meshplug.commands, one-line help); add one line per subcommand
COMMANDS: dict[str, tuple[str, str]] = {
    "version": ("version", "print the meshplug version and its runtime pins"),
    "fetch": ("fetch", "fetch a wasm module (https, oci, file), verify its sha256, cache it and write it out"),
    "inspect": ("inspect", "describe a proxy-wasm module and validate it against the ABI (exit 1 on reject)"),
    "agent": ("agent", "run the in-pod agent: proxy with proxy-wasm plugins, admin and push endpoints"),
    "run": ("run", "run one plugin locally in front of an upstream URL (the agent, no containers)"),
    "operator": ("operator", "run the WasmPlugin operator: fetch, validate, render, apply; serve modules"),
    "init": ("init", "create a plugin project (rust, go, assemblyscript or cpp) with a behaviour test"),
    "build": ("build", "build a plugin project with its SDK's toolchain, then validate the module"),
    "push": ("push", "push a wasm module to an OCI registry (Istio/Envoy Gateway layout or CNCF), optionally signed"),
    "pull": ("pull", "pull a wasm module from an OCI registry (any layout meshplug reads) and verify it"),
    "sign": ("sign", "sign a module image with a cosign key (cosign's tag or Sigstore bundle layout)"),
    "verify": ("verify", "verify a module image's cosign signature against public keys"),
    "render": ("render", "print what the operator would create for WasmPlugin manifests, offline (GitOps review)"),
    "status": ("status", "show WasmPlugins' status: Ready, digest, and per pod what runs and why not"),
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"meshplug.commands.{COMMANDS[name][0]}")


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshplug",
        description="proxy-wasm plugins on Kubernetes: operator, module supply, validation, agent",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            # only the chosen command's module is imported
            _load(name).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in args_list if not a.startswith("-")), None)
    if selected not in COMMANDS:
        selected = None
    parser = build_parser(selected)
    args = parser.parse_args(args_list)
    module = _load(args.command)
    try:
        result: int = module.run(args)
    except errors.MeshplugError as exc:
        print(f"meshplug {args.command}: error: {exc}", file=sys.stderr)
        return errors.exit_code_of(exc)
    except KeyboardInterrupt:
        return 130
    return result
