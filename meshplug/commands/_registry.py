"""What every command that talks to a module source shares: its flags (CA, insecure registry, credentials, file
roots, cache, timeout) and turning them into `fetch.FetchOptions` and registry credentials.

Used by `meshplug fetch`, `pull`, `push`, `sign` and `verify`. Registry credentials come from ``--pull-secret``
(a dockerconfigjson file or a kubernetes.io/dockerconfigjson Secret), else from Docker's own config
($DOCKER_CONFIG/config.json, ~/.docker/config.json) as `docker login` writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from meshplug import errors
from meshplug.fetch import FetchOptions, http, keys, oci, publish


def add_arguments(parser: argparse.ArgumentParser, *, files: bool = True) -> None:
    parser.add_argument(
        "--pull-secret",
        type=Path,
        help="registry credentials: a dockerconfigjson file or kubernetes.io/dockerconfigjson Secret "
        "(default: $DOCKER_CONFIG/config.json or ~/.docker/config.json when present)",
    )
    parser.add_argument("--ca", type=Path, help="CA bundle to verify the source's TLS certificate with")
    parser.add_argument("--insecure-registry", action="store_true", help="allow this url's registry over plain HTTP")
    if files:
        parser.add_argument("--file-root", type=Path, action="append", default=[], help="allow file:// below DIR")
    parser.add_argument("--cache-dir", type=Path, help="module cache (default: $MESHPLUG_CACHE/modules)")
    parser.add_argument("--timeout", type=float, help="overall deadline in seconds")


def registry_of(url: str) -> str:
    return url.removeprefix("oci://").split("/", 1)[0]


def options(args: argparse.Namespace, url: str) -> FetchOptions:
    # a terminal fetches the URL its user typed: nothing to forge, and a registry on localhost is common
    values: dict[str, object] = {
        "file_roots": tuple(p.absolute() for p in getattr(args, "file_root", [])),
        "allow_loopback": True,
    }
    if args.cache_dir is not None:
        values["cache_dir"] = args.cache_dir
    if args.ca is not None:
        values["ca_bundles"] = {"*": args.ca}
    if args.insecure_registry:
        values["allow_insecure_registries"] = (registry_of(url),)
    if args.timeout is not None:
        values["overall_timeout_s"] = args.timeout
    return FetchOptions(**values).sanitized()  # type: ignore[arg-type]


def _docker_config() -> Path | None:
    base = os.environ.get("DOCKER_CONFIG")
    path = Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"
    return path if path.is_file() else None


def secret(args: argparse.Namespace) -> bytes | None:
    """The credentials document: ``--pull-secret``, else Docker's config when it holds an ``auths`` map."""
    path = args.pull_secret or _docker_config()
    if path is None:
        return None
    try:
        data = bytes(path.read_bytes())
    except OSError as exc:
        raise errors.ConfigError(f"cannot read registry credentials {str(path)!r}: {exc.strerror}") from None
    if args.pull_secret is None:  # Docker's config may keep everything in a credential helper: then none here
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return data if isinstance(doc, dict) and isinstance(doc.get("auths"), dict) else None
    return data


def credentials(args: argparse.Namespace, ref: oci.Reference) -> oci.Credentials | None:
    doc = secret(args)
    return oci.credentials_for(doc, ref.registry) if doc else None


def signing_key(path: Path) -> keys.PrivateKey:
    """cosign.key (password from $COSIGN_PASSWORD, as cosign reads it) or an unencrypted PEM private key."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read key {str(path)!r}: {exc.strerror}") from None
    return keys.load_private_key(pem, os.environ.get("COSIGN_PASSWORD", "").encode(), what=str(path))


@contextlib.contextmanager
def registry(args: argparse.Namespace, url: str) -> Iterator[tuple[publish.Publisher, http.Deadline]]:
    """A client for ``url``'s repository (reads and writes) with these flags' credentials, and the deadline."""
    ref = oci.parse_reference(url)
    opts = options(args, url)
    transport = http.Transport(opts)
    try:
        yield publish.Publisher(transport, ref, credentials(args, ref)), http.Deadline.after(opts.overall_timeout_s)
    finally:
        transport.close()


def report(command: str, exc: errors.FetchError, labels: dict[str, str]) -> int:
    """Print a supply failure the way `meshplug fetch` does; its exit code."""
    print(f"meshplug {command}: {labels.get(exc.reason, exc.reason)}: {exc}", file=sys.stderr)
    return errors.exit_code_of(exc)
