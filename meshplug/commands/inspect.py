"""`meshplug inspect FILE_OR_URL`: describe a proxy-wasm module and give the validator's verdict.

Called by `meshplug.cli`. Reads a local file directly (``.wat`` text is assembled first), or supplies a URL
(https://, oci://, a bare OCI reference) through `meshplug.fetch`, then runs `meshplug.validate.describe`.
Prints a summary (or ``--json``); exit 0 when the module is accepted, 1 when it is rejected, 2 for input errors,
and `meshplug fetch`'s codes when the module could not be had (10-18 by kind: 12 for a ``--sha256`` that does
not match, for local files too; 20 for a refused signature), so an unreachable registry never reads as a
rejected module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from meshplug import errors, fetch, validate
from meshplug.commands import fetch as fetch_command

HELP = "describe a proxy-wasm module (ABI, entry point, allocator, kind, imports) and validate it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="FILE_OR_URL", help="a .wasm file, an https:// url or an OCI reference")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--kind",
        choices=[k.value for k in validate.FilterKind],
        help="how the plugin will be configured (warns when its callbacks do not fit)",
    )
    parser.add_argument("--sha256", help="expected sha256 of the module (checked for files and URLs alike)")
    parser.add_argument("--file-root", type=Path, action="append", default=[], help="allow file:// below DIR")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every import and callback")


def _is_url(source: str) -> bool:
    return "://" in source or (not Path(source).exists() and ":" in source and "/" in source)


def _check_sha256(source: str, data: bytes, sha256: str | None) -> bytes:
    if sha256 is None:
        return data
    want = sha256.lower().removeprefix("sha256:")
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise errors.ConfigError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise errors.FetchError(f"{source}: sha256 is {got}, expected {want}", reason=fetch.Reason.CHECKSUM_MISMATCHED)
    return data


def _read(source: str, sha256: str | None, file_roots: list[Path]) -> bytes:
    if not _is_url(source):
        path = Path(source)
        try:
            data = _check_sha256(source, path.read_bytes(), sha256)
        except OSError as exc:
            raise errors.ConfigError(f"cannot read {source}: {exc.strerror or exc}") from None
        if path.suffix == ".wat":
            import wasmtime  # noqa: PLC0415 - text guests only

            try:
                return bytes(wasmtime.wat2wasm(data.decode("utf-8", errors="replace")))
            except wasmtime.WasmtimeError as exc:
                raise errors.ConfigError(f"{source} is not valid WAT: {str(exc).splitlines()[0]}") from None
        return data
    # the user's own URL, from a terminal: loopback allowed
    options = fetch.FetchOptions(file_roots=tuple(p.absolute() for p in file_roots), allow_loopback=True)
    fetcher = fetch.Fetcher(options)
    try:
        return fetcher.fetch(source, sha256=sha256).data
    finally:
        fetcher.close()


def _summary(source: str, info: validate.ModuleInfo, verbose: bool) -> list[str]:
    verdict = "ACCEPTED" if info.accepted else "REJECTED"
    if info.warnings:
        verdict += f" ({len(info.warnings)} warning{'s' if len(info.warnings) > 1 else ''})"
    lines = [
        f"module      {source}",
        f"size        {info.size} bytes",
        f"sha256      {info.sha256}",
        f"verdict     {verdict}",
    ]
    if info.compiled:
        abi = str(info.abi_version) if info.abi_version else "none"
        if info.markers:
            abi += f" (marker {', '.join(info.markers)})"
        if info.header_arity is not None:
            abi += f"; header callbacks take {info.header_arity} args"
        lines += [
            f"abi         {abi}",
            f"entry       {info.entry_point}" + (" (+ start section)" if info.has_start_section else ""),
            f"allocator   {info.allocator or 'none'}",
            f"memory      {'exported' if info.memory_exported else 'not exported'}",
            f"kind        {info.plugin_kind}",
        ]
        produced = "; ".join(
            f"{label}: {', '.join(values)}"
            for label, values in (
                ("language", info.producers.language),
                ("processed-by", info.producers.processed_by),
                ("sdk", info.producers.sdk),
            )
            if values
        )
        lines.append(f"producers   {produced or '(no producers section)'}")
        for group, imports in info.imports_by_group().items():
            if not imports:
                continue
            bad = [i for i in imports if not i.type_matches]
            state = "all provided" if not bad else f"{len(bad)} not usable"
            lines.append(f"imports     {group}: {len(imports)} ({state})")
            for imp in imports if verbose else bad:
                mark = "ok" if imp.type_matches else ("TYPE" if imp.provided else "MISSING")
                lines.append(f"  {mark:8}  {imp.module}.{imp.name} {imp.declared}")
        if verbose:
            lines.append(f"callbacks   {', '.join(info.callbacks) or 'none'}")
    for p in info.errors:
        lines.append(f"error       {p}")
    for p in info.warnings:
        lines.append(f"warning     {p}")
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        data = _read(args.source, args.sha256, args.file_root)
    except errors.FetchError as exc:
        print(f"meshplug inspect: {fetch_command.LABELS.get(exc.reason, exc.reason)}: {exc}", file=sys.stderr)
        return fetch_command.exit_code(exc)
    kind = validate.FilterKind(args.kind) if args.kind else None
    info = validate.describe(data, kind=kind)
    if args.json:
        print(json.dumps({"source": args.source, **info.to_json()}, indent=2, sort_keys=True))
    else:
        print("\n".join(_summary(args.source, info, args.verbose)))
    return 0 if info.accepted else errors.ValidationError.exit_code
