"""`meshplug fetch URL -o OUT`: supply one module as the operator would (verify, cache), write it to OUT.

Prints a progress bar on a terminal, one line per failure kind, and exits with a code per kind
(`errors.exit_code_of`). Uses `meshplug.fetch.Fetcher` with the cache under $MESHPLUG_CACHE/modules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshplug import errors, files
from meshplug.commands import _registry
from meshplug.fetch import Artifact, Fetcher, PublicKey, PullPolicy, Reason, load_public_key

HELP = "fetch a wasm module (https, oci, file), verify it, cache it and write it out"

LABELS: dict[str, str] = {
    Reason.DOWNLOAD_FAILURE: "download failed",
    Reason.MANIFEST_FAILURE: "unusable image manifest",
    Reason.CHECKSUM_MISMATCHED: "checksum mismatch",
    Reason.TOO_LARGE: "too large",
    Reason.NOT_WASM: "not a wasm module",
    Reason.BLOCKED: "blocked",
    Reason.NOT_FOUND: "not found",
    Reason.UNAUTHORIZED: "unauthorized",
    Reason.TIMEOUT: "timed out",
    Reason.SIGNATURE_INVALID: "signature invalid",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="https://..., http://..., oci://registry/repo[:tag][@sha256:...], file:///...")
    parser.add_argument("-o", "--output", required=True, help="where to write the module ('-' for stdout)")
    parser.add_argument("--sha256", help="expected sha256 of the wasm bytes (64 hex)")
    parser.add_argument(
        "--key", type=Path, action="append", default=[], help="require a cosign signature under this public key"
    )
    _registry.add_arguments(parser)
    parser.add_argument("--pull-policy", choices=[p.value for p in PullPolicy], help="default: IfNotPresent")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class _Bar:
    """A one-line progress bar on stderr, drawn only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if total:
            filled = int(30 * done / total)
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {done / 1e6:6.1f}/{total / 1e6:.1f} MB"
        else:
            line = f"\r{done / 1e6:6.1f} MB"
        sys.stderr.write(line)
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")


def _write(output: str, data: bytes) -> None:
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(output)
    files.write_atomic(target, data, sync_dir=False)


def public_keys(paths: list[Path]) -> list[PublicKey]:
    keys = []
    for path in paths:
        try:
            keys.append(load_public_key(path.read_bytes(), what=str(path)))
        except OSError as exc:
            raise errors.ConfigError(f"cannot read key {str(path)!r}: {exc.strerror}") from None
    return keys


def fetch_once(args: argparse.Namespace, keys: list[PublicKey], progress: _Bar | None = None) -> Artifact:
    """The module at ``args.url`` as the operator would supply it (FetchError on any failure)."""
    fetcher = Fetcher(_registry.options(args, args.url))
    try:
        return fetcher.fetch(
            args.url,
            sha256=args.sha256,
            pull_secret=_registry.secret(args),
            pull_policy=getattr(args, "pull_policy", None),
            progress=progress,
            keys=keys,
        )
    finally:
        fetcher.close()


def run(args: argparse.Namespace) -> int:
    keys = public_keys(args.key)
    bar = _Bar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        artifact = fetch_once(args, keys, bar)
    except errors.FetchError as exc:
        bar.finish()
        print(f"meshplug {args.command}: {LABELS.get(exc.reason, exc.reason)}: {exc}", file=sys.stderr)
        return exit_code(exc)
    bar.finish()
    _write(args.output, artifact.data)
    if args.output != "-":
        origin = "cache" if artifact.from_cache else artifact.layout.value
        manifest = f" manifest={artifact.manifest_digest}" if artifact.manifest_digest else ""
        signed = f" signed-by={artifact.signature.key_id} ({artifact.signature.layout})" if artifact.signature else ""
        print(f"{args.output}: sha256={artifact.sha256} size={len(artifact.data)} from={origin}{manifest}{signed}")
    return 0


def exit_code(exc: errors.FetchError) -> int:
    return errors.exit_code_of(exc)
