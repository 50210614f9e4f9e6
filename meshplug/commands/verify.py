"""`meshplug verify --key cosign.pub oci://REG/REPO[:TAG|@sha256:...]`: check a module image's cosign signature.

Looks in both layouts cosign writes (the ``sha256-<hex>.sig`` tag and Sigstore bundle referrers) for a signature
that one of the keys verifies over exactly the image's manifest digest: what the operator does for a WasmPlugin
with ``verificationKey``. Exit 0 when one does, 20 when none does (the message says whether there was no
signature, none under these keys, or one for another digest), 10-18 when the registry could not be read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from meshplug import errors
from meshplug.commands import _registry
from meshplug.commands import fetch as fetch_command
from meshplug.fetch import signatures

HELP = "verify a module image's cosign signature (tag or bundle layout) against public keys"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="oci://REGISTRY/REPO[:TAG][@sha256:...]", help="the image to check")
    parser.add_argument("--key", type=Path, action="append", required=True, help="cosign.pub (repeatable)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    _registry.add_arguments(parser, files=False)


def run(args: argparse.Namespace) -> int:
    public = fetch_command.public_keys(args.key)
    try:
        with _registry.registry(args, args.url) as (client, deadline):
            evidence = signatures.verify(client, client.resolve(deadline), public, deadline)
    except errors.FetchError as exc:
        return _registry.report("verify", exc, fetch_command.LABELS)
    ref = client.ref
    if args.output == "json":
        doc = {
            "reference": str(ref),
            "layout": evidence.layout,
            "key_id": evidence.key_id,
            "manifest_digest": evidence.manifest_digest,
        }
        print(json.dumps(doc, sort_keys=True))
    else:
        print(f"{ref.name}@{evidence.manifest_digest}: signed by key {evidence.key_id} ({evidence.layout} layout)")
    return 0
