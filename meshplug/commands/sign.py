"""`meshplug sign --key cosign.key oci://REG/REPO[:TAG|@sha256:...]`: sign a module image as cosign does.

The reference is resolved to its manifest digest first; the signature is over that digest, in cosign's tag
layout (``sha256-<hex>.sig``, the default) or its Sigstore bundle layout (``--layout bundle``: an OCI 1.1
referrer, plus the referrers tag index for registries without the referrers API). ``cosign verify --key
cosign.pub`` accepts both, and so do `meshplug verify`, `meshplug pull --key` and the operator's
``verificationKey``. The key is cosign.key as `cosign generate-key-pair` writes it (password from
$COSIGN_PASSWORD, empty when unset) or an unencrypted PEM private key. Nothing goes to a transparency log.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from meshplug import errors
from meshplug.commands import _registry
from meshplug.commands import fetch as fetch_command
from meshplug.fetch import signatures

HELP = "sign a module image with a cosign key (cosign's tag or Sigstore bundle layout)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="oci://REGISTRY/REPO[:TAG][@sha256:...]", help="the image to sign")
    parser.add_argument("--key", type=Path, required=True, help="cosign.key (password: $COSIGN_PASSWORD) or PEM")
    parser.add_argument("--layout", choices=signatures.LAYOUTS, default="tag", help="where the signature goes")
    _registry.add_arguments(parser, files=False)


def run(args: argparse.Namespace) -> int:
    private = _registry.signing_key(args.key)
    try:
        with _registry.registry(args, args.url) as (publisher, deadline):
            digest = publisher.resolve(deadline)
            where = signatures.sign(publisher, private, digest, layout=args.layout, deadline=deadline)
    except errors.FetchError as exc:
        return _registry.report("sign", exc, fetch_command.LABELS)
    ref = publisher.ref
    place = f"{ref.name}:{where}" if args.layout == "tag" else f"{ref.name}@{where} (referrer)"
    print(f"signed {ref.name}@{digest} with key {private.public().key_id}: {place}")
    return 0
