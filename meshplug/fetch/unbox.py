"""Unwrap gzip and tar containers until the wasm magic appears, never expanding past a cap.

Called by `http`, `local` and `oci` on every downloaded body or layer. A gzip stream is inflated in
bounded steps (a gzip bomb stops at the cap with `too_large`); a tar archive yields its `plugin.wasm`
member, else the first regular file that is (or wraps) a wasm module. Anything else is `not_wasm`.
"""

from __future__ import annotations

import io
import tarfile
import zlib

from meshplug import errors, limits
from meshplug.fetch.artifact import WASM_MAGIC, Reason

GZIP_MAGIC = b"\x1f\x8b"
_STEP = 64 * limits.KiB


def is_tar(data: bytes) -> bool:
    return len(data) >= 262 and data[257:262] == b"ustar"


def gunzip(data: bytes, cap: int) -> bytes:
    """Inflate a gzip stream (concatenated members too); FetchError(too_large) beyond ``cap`` bytes."""
    out = bytearray()
    rest = data
    while rest.startswith(GZIP_MAGIC):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        try:
            while pending:
                out += inflater.decompress(pending, _STEP)
                if len(out) > cap:
                    raise errors.FetchError(f"gzip content expands past {cap} bytes", reason=Reason.TOO_LARGE)
                pending = inflater.unconsumed_tail
            if not inflater.eof:
                raise errors.FetchError("gzip stream is truncated", reason=Reason.DOWNLOAD_FAILURE)
        except zlib.error as exc:
            raise errors.FetchError(f"corrupt gzip stream: {exc}", reason=Reason.DOWNLOAD_FAILURE) from None
        rest = inflater.unused_data
    return bytes(out)


def untar(data: bytes, cap: int, wanted: str = "plugin.wasm") -> bytes:
    """The ``wanted`` member (by base name) of a tar archive, else the first wasm-looking regular file."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = [m for m in tar.getmembers() if m.isreg()]
            named = [m for m in members if m.name.rsplit("/", 1)[-1] == wanted]
            for member in named + [m for m in members if m not in named]:
                if member.size > cap:
                    raise errors.FetchError(
                        f"tar member {member.name!r} is {member.size} bytes (cap {cap})", reason=Reason.TOO_LARGE
                    )
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                content = handle.read()
                if member in named or content.startswith((WASM_MAGIC, GZIP_MAGIC)):
                    return content
    except tarfile.TarError as exc:
        raise errors.FetchError(f"corrupt tar archive: {exc}", reason=Reason.DOWNLOAD_FAILURE) from None
    raise errors.FetchError(f"tar archive holds no {wanted} and no wasm module", reason=Reason.NOT_WASM)


def unbox(data: bytes, *, cap: int, max_depth: int = limits.MAX_UNBOX_DEPTH) -> bytes:
    """The wasm module inside ``data`` (itself, or inside gzip/tar wrappers up to ``max_depth`` deep)."""
    for _ in range(max_depth + 1):
        if data.startswith(WASM_MAGIC):
            return data
        if data.startswith(GZIP_MAGIC):
            data = gunzip(data, cap)
        elif is_tar(data):
            data = untar(data, cap)
        else:
            break
    else:
        raise errors.FetchError(f"more than {max_depth} nested gzip/tar wrappers", reason=Reason.NOT_WASM)
    head = data[:8].hex()
    raise errors.FetchError(f"not a wasm module (starts with 0x{head or '<empty>'})", reason=Reason.NOT_WASM)
