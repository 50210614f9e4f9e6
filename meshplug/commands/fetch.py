"""`meshplug fetch URL -o OUT`: supply one module as the operator would (verify, cache), write it to OUT.

Prints a progress bar on a terminal, one line per failure kind, and exits with a code per kind
(EXIT_CODES). Uses `meshplug.fetch.Fetcher` with the cache under $MESHPLUG_CACHE/modules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meshplug import errors, files
from meshplug.fetch import Fetcher, FetchOptions, PullPolicy, Reason

HELP = "fetch a wasm module (https, oci, file), verify it, cache it and write it out"

#: one exit code per failure kind (2 is a usage/config error, as everywhere in meshplug)
EXIT_CODES: dict[str, int] = {
    Reason.DOWNLOAD_FAILURE: 10,
    Reason.MANIFEST_FAILURE: 11,
    Reason.CHECKSUM_MISMATCHED: 12,
    Reason.TOO_LARGE: 13,
    Reason.NOT_WASM: 14,
    Reason.BLOCKED: 15,
    Reason.NOT_FOUND: 16,
    Reason.UNAUTHORIZED: 17,
    Reason.TIMEOUT: 18,
}
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
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="https://..., http://..., oci://registry/repo[:tag][@sha256:...], file:///...")
    parser.add_argument("-o", "--output", required=True, help="where to write the module ('-' for stdout)")
    parser.add_argument("--sha256", help="expected sha256 of the wasm bytes (64 hex)")
    parser.add_argument(
        "--pull-secret", type=Path, help="a dockerconfigjson file or kubernetes.io/dockerconfigjson Secret"
    )
    parser.add_argument("--ca", type=Path, help="CA bundle to verify the source's TLS certificate with")
    parser.add_argument("--insecure-registry", action="store_true", help="allow this url's registry over plain HTTP")
    parser.add_argument("--file-root", type=Path, action="append", default=[], help="allow file:// below DIR")
    parser.add_argument("--pull-policy", choices=[p.value for p in PullPolicy], help="default: IfNotPresent")
    parser.add_argument("--cache-dir", type=Path, help="module cache (default: $MESHPLUG_CACHE/modules)")
    parser.add_argument("--timeout", type=float, help="overall deadline in seconds")
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


def _registry_of(url: str) -> str:
    return url.removeprefix("oci://").split("/", 1)[0]


def _write(output: str, data: bytes) -> None:
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    target = Path(output)
    files.write_atomic(target, data, sync_dir=False)


def run(args: argparse.Namespace) -> int:
    options: dict[str, object] = {"file_roots": tuple(p.absolute() for p in args.file_root)}
    if args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    if args.ca is not None:
        options["ca_bundles"] = {"*": args.ca}
    if args.insecure_registry:
        options["allow_insecure_registries"] = (_registry_of(args.url),)
    if args.timeout is not None:
        options["overall_timeout_s"] = args.timeout
    secret = None
    if args.pull_secret is not None:
        try:
            secret = args.pull_secret.read_bytes()
        except OSError as exc:
            raise errors.ConfigError(f"cannot read pull secret {str(args.pull_secret)!r}: {exc.strerror}") from None
    fetcher = Fetcher(FetchOptions(**options))  # type: ignore[arg-type]
    bar = _Bar(enabled=not args.quiet and sys.stderr.isatty())
    try:
        artifact = fetcher.fetch(
            args.url, sha256=args.sha256, pull_secret=secret, pull_policy=args.pull_policy, progress=bar
        )
    except errors.FetchError as exc:
        bar.finish()
        print(f"meshplug fetch: {LABELS.get(exc.reason, exc.reason)}: {exc}", file=sys.stderr)
        return EXIT_CODES.get(exc.reason, 1)
    finally:
        fetcher.close()
    bar.finish()
    _write(args.output, artifact.data)
    if args.output != "-":
        origin = "cache" if artifact.from_cache else artifact.layout.value
        manifest = f" manifest={artifact.manifest_digest}" if artifact.manifest_digest else ""
        print(f"{args.output}: sha256={artifact.sha256} size={len(artifact.data)} from={origin}{manifest}")
    return 0
