"""`meshplug push PLUGIN.wasm oci://REG/REPO:TAG`: publish a module where Istio, Envoy Gateway and meshplug pull it.

The module is validated first (the same proxy-wasm ABI check as `meshplug inspect`; a rejected module is not
pushed, exit 1). Layouts (`meshplug.fetch.publish`): ``wasm`` (default), the OCI wasm image Istio's and Envoy
Gateway's fetchers read (config ``application/vnd.module.wasm.config.v1+json``, one
``application/vnd.module.wasm.content.layer.v1+wasm`` layer), or ``cncf``, the CNCF wasm artifact. With
``--sign-key`` the pushed manifest is signed right away (as `meshplug sign` does). Prints the reference pinned
by digest, ready for a WasmPlugin's ``url``; ``-o json`` prints it with the digests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from meshplug import errors, validate
from meshplug.commands import _registry
from meshplug.commands import fetch as fetch_command
from meshplug.fetch import oci, publish, signatures

HELP = "push a wasm module to an OCI registry (the layout Istio and Envoy Gateway pull, or CNCF's), optionally signed"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", type=Path, metavar="PLUGIN.wasm", help="the module to push")
    parser.add_argument("url", metavar="oci://REGISTRY/REPO:TAG", help="where to push it")
    parser.add_argument("--layout", choices=publish.LAYOUTS, default="wasm", help="image layout (default wasm)")
    parser.add_argument("--sign-key", type=Path, help="also sign it with this cosign.key ($COSIGN_PASSWORD)")
    parser.add_argument("--signature-layout", choices=signatures.LAYOUTS, default="tag")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _registry.add_arguments(parser, files=False)


def run(args: argparse.Namespace) -> int:
    try:
        wasm = args.module.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read {str(args.module)!r}: {exc.strerror}") from None
    info = validate.describe(wasm)
    if not info.accepted:
        print(f"meshplug push: {args.module} is rejected: {'; '.join(str(p) for p in info.errors)}", file=sys.stderr)
        return errors.ValidationError.exit_code
    private = _registry.signing_key(args.sign_key) if args.sign_key is not None else None
    if oci.parse_reference(args.url).digest is not None:
        raise errors.ConfigError(f"{args.url!r}: push to a tag, not a digest")
    try:
        with _registry.registry(args, args.url) as (publisher, deadline):
            digest, layer = publish.push_module(publisher, wasm, layout=args.layout, deadline=deadline)
            signed = None
            if private is not None:
                signed = signatures.sign(publisher, private, digest, layout=args.signature_layout, deadline=deadline)
    except errors.FetchError as exc:
        return _registry.report("push", exc, fetch_command.LABELS)
    ref = publisher.ref
    pinned = f"oci://{ref.name}@{digest}"
    if args.output == "json":
        doc = {"url": pinned, "tag": str(ref), "manifest": digest, "sha256": layer.digest.removeprefix("sha256:")}
        if signed is not None:
            doc["signature"] = signed
        print(json.dumps(doc, sort_keys=True))
    else:
        print(f"pushed {args.module} ({len(wasm)} bytes, {args.layout} layout) to {ref}")
        if signed is not None:
            print(f"signed {digest}: {signed}")
        print(pinned)
    return 0
