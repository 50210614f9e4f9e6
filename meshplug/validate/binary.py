"""Read the parts of a wasm binary that wasmtime-py does not expose: section layout, start section, custom sections.

Called by `meshplug.validate.info` after (or instead of, for non-wasm input) compiling with wasmtime. Pure
functions over bytes; every read is bounds-checked and a malformed binary raises `BinaryFormatError` with the
offset, never IndexError. Format: WebAssembly core spec, binary format (magic, version, then
``id:u8 size:u32leb payload`` sections); the `producers` custom section follows the tool-conventions document
(vec of fields, each a name and a vec of (name, version) strings).
"""

from __future__ import annotations

from dataclasses import dataclass

MAGIC = b"\0asm"
CORE_VERSION = b"\x01\x00\x00\x00"
#: layer 1 of the component model: 0x0d 0x00 version, 0x01 0x00 layer
COMPONENT_VERSION = b"\x0d\x00\x01\x00"

SECTION_CUSTOM = 0
SECTION_EXPORT = 7
SECTION_START = 8


class BinaryFormatError(ValueError):
    """The bytes are not a well-formed core wasm module at ``offset``."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


@dataclass(frozen=True)
class Section:
    id: int
    #: offset of the payload (after the id and the size)
    offset: int
    size: int


@dataclass(frozen=True)
class CustomSection:
    name: str
    payload: bytes


class _Reader:
    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise BinaryFormatError("unexpected end", self.pos)
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self) -> int:
        """Unsigned LEB128, at most 5 bytes, value < 2**32."""
        start = self.pos
        result = 0
        for shift in range(0, 35, 7):
            b = self.byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                if result >= 1 << 32:
                    raise BinaryFormatError("LEB128 u32 out of range", start)
                return result
        raise BinaryFormatError("LEB128 u32 longer than 5 bytes", start)

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise BinaryFormatError(f"length {n} runs past the end", self.pos)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def name(self) -> str:
        at = self.pos
        raw = self.take(self.u32())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BinaryFormatError("name is not UTF-8", at) from None

    def done(self) -> bool:
        return self.pos >= self.end


def header_problem(data: bytes) -> str | None:
    """Why ``data`` is not a core wasm module by its 8-byte header, or None if the header is right."""
    if len(data) < 8 or data[:4] != MAGIC:
        shown = data[:4].hex() if data else "empty input"
        return f"does not start with the wasm magic bytes 00 61 73 6d (got {shown})"
    version = data[4:8]
    if version == COMPONENT_VERSION:
        return "is a WebAssembly component (component model); proxy-wasm needs a core module"
    if version != CORE_VERSION:
        return f"has wasm binary version {version.hex()}, expected 01000000 (core wasm 1)"
    return None


def sections(data: bytes) -> tuple[Section, ...]:
    """Every section in file order. Raises BinaryFormatError if the header or the layout is wrong."""
    problem = header_problem(data)
    if problem is not None:
        raise BinaryFormatError(problem, 0)
    r = _Reader(data, 8)
    out: list[Section] = []
    while not r.done():
        sid = r.byte()
        size = r.u32()
        if size > r.end - r.pos:
            raise BinaryFormatError(f"section {sid} of {size} bytes runs past the end", r.pos)
        out.append(Section(sid, r.pos, size))
        r.pos += size
    return tuple(out)


def start_function(data: bytes) -> int | None:
    """The function index named by the start section, or None if the module has no start section."""
    for s in sections(data):
        if s.id == SECTION_START:
            r = _Reader(data, s.offset, s.offset + s.size)
            return r.u32()
    return None


def custom_sections(data: bytes) -> tuple[CustomSection, ...]:
    """Every custom section (name + payload) in file order."""
    out: list[CustomSection] = []
    for s in sections(data):
        if s.id != SECTION_CUSTOM:
            continue
        r = _Reader(data, s.offset, s.offset + s.size)
        name = r.name()
        out.append(CustomSection(name, data[r.pos : s.offset + s.size]))
    return tuple(out)


def function_export_names(data: bytes) -> tuple[str, ...]:
    """Names of the function exports (kind 0x00) in export-section order (the order cpp-host scans markers in)."""
    names: list[str] = []
    for s in sections(data):
        if s.id != SECTION_EXPORT:
            continue
        r = _Reader(data, s.offset, s.offset + s.size)
        for _ in range(r.u32()):
            name = r.name()
            kind = r.byte()
            r.u32()
            if kind == 0x00:
                names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class Producers:
    """The `producers` custom section: each field's (name, version) pairs, e.g. language: (("Rust", ""),)."""

    language: tuple[tuple[str, str], ...] = ()
    processed_by: tuple[tuple[str, str], ...] = ()
    sdk: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        parts = []
        for label, values in (("language", self.language), ("processed-by", self.processed_by), ("sdk", self.sdk)):
            if values:
                parts.append(f"{label}: " + ", ".join(f"{n} {v}".strip() for n, v in values))
        return "; ".join(parts)


def parse_producers(payload: bytes) -> Producers:
    """Decode a `producers` payload. Unknown field names are skipped; malformed bytes raise BinaryFormatError."""
    r = _Reader(payload)
    fields: dict[str, tuple[tuple[str, str], ...]] = {}
    for _ in range(r.u32()):
        field = r.name()
        values = tuple((r.name(), r.name()) for _ in range(r.u32()))
        fields[field] = fields.get(field, ()) + values
    if not r.done():
        raise BinaryFormatError("trailing bytes after the producers fields", r.pos)
    return Producers(
        language=fields.get("language", ()), processed_by=fields.get("processed-by", ()), sdk=fields.get("sdk", ())
    )
