"""Envoy's structured values -- google.protobuf.Struct / Value / ListValue and envoy.config.core.v3.Metadata --
in a frozen form, with the two encodings plugins see them in.

Called by meshplug.agent.config and meshplug.agent.bootstrap (which build them from YAML/JSON: route, cluster,
listener, virtual host and node metadata, a plugin configuration given as a Struct) and by
meshplug.agent.properties (which hands them to plugins). Encodings, as Envoy 1.40 produces them (checked with
a probe plugin, examples/filters/c/propdump):

* protobuf binary (`Struct.proto()`, `Metadata.proto()`): what a message-typed property (`xds.route_metadata`,
  `xds.node`) and a Struct plugin configuration (an Any's value) are; map entries in the order given (Envoy's
  own map order differs from process to process, so nothing may rely on it);
* proxy-wasm property values (`property_value`): strings raw, numbers as 8-byte little-endian doubles, bools
  one byte, a Struct (and `filter_metadata`) as header pairs whose values are encoded the same way.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Union

from meshplug import errors, leb128
from meshplug.agent import pairs

_DOUBLE: Final = struct.Struct("<d")


@dataclass(frozen=True)
class Struct:
    """google.protobuf.Struct: fields in the order given."""

    fields: tuple[tuple[str, Value], ...] = ()

    def get(self, key: str) -> Value | Missing:
        for k, v in self.fields:
            if k == key:
                return v
        return MISSING

    def proto(self) -> bytes:
        out = bytearray()
        for key, value in self.fields:
            entry = _field_bytes(1, key.encode()) + _field_bytes(2, _value_proto(value))
            out += _field_bytes(1, entry)
        return bytes(out)

    def to_json(self) -> dict[str, object]:
        return {k: _to_json(v) for k, v in self.fields}


@dataclass(frozen=True)
class ListValue:
    """google.protobuf.ListValue."""

    values: tuple[Value, ...] = ()


class Missing:
    """No such field (distinct from a null value)."""


MISSING: Final = Missing()

#: google.protobuf.Value: null, number (a double), string, bool, struct or list
Value = Union[None, float, str, bool, Struct, ListValue]  # noqa: UP007 -- a runtime alias mypyc accepts


@dataclass(frozen=True)
class Metadata:
    """envoy.config.core.v3.Metadata: `filter_metadata` (namespace -> Struct), in the order given."""

    filter_metadata: tuple[tuple[str, Struct], ...] = ()

    def proto(self) -> bytes:
        out = bytearray()
        for namespace, value in self.filter_metadata:
            entry = _field_bytes(1, namespace.encode()) + _field_bytes(2, value.proto())
            out += _field_bytes(1, entry)
        return bytes(out)

    def namespace(self, name: str) -> Struct | None:
        for k, v in self.filter_metadata:
            if k == name:
                return v
        return None

    def to_json(self) -> dict[str, object]:
        return {"filter_metadata": {k: v.to_json() for k, v in self.filter_metadata}} if self.filter_metadata else {}


EMPTY_METADATA: Final = Metadata()


# --- from YAML/JSON (errors are ConfigErrors naming the field) ---------------------------------------
def value_from_json(raw: object, where: str) -> Value:
    """A google.protobuf.Value from a YAML/JSON value (ints become doubles, as protobuf's JSON parser does)."""
    if raw is None or isinstance(raw, bool | str):
        return raw
    if isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            raise errors.ConfigError(f"{where}: {raw} is not a finite number")
        return float(raw)
    if isinstance(raw, Mapping):
        return struct_from_json(raw, where)
    if isinstance(raw, list | tuple):
        return ListValue(tuple(value_from_json(v, f"{where}[{i}]") for i, v in enumerate(raw)))
    raise errors.ConfigError(f"{where}: {type(raw).__name__} is not a JSON value")


def struct_from_json(raw: object, where: str) -> Struct:
    if not isinstance(raw, Mapping):
        raise errors.ConfigError(f"{where} must be a mapping (google.protobuf.Struct), got {type(raw).__name__}")
    fields: list[tuple[str, Value]] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise errors.ConfigError(f"{where}: key {key!r} is not a string")
        fields.append((key, value_from_json(value, f"{where}.{key}")))
    return Struct(tuple(fields))


def metadata_from_json(raw: object, where: str) -> Metadata:
    """envoy.config.core.v3.Metadata from `{filter_metadata: {namespace: {...}}}`."""
    if raw is None:
        return EMPTY_METADATA
    if not isinstance(raw, Mapping):
        raise errors.ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - {"filter_metadata", "filterMetadata"})
    if unknown:
        reason = (
            "typed_filter_metadata is not supported (only filter_metadata)"
            if "typed_filter_metadata" in unknown or "typedFilterMetadata" in unknown
            else f"unknown field {unknown[0]}"
        )
        raise errors.ConfigError(f"{where}: {reason}")
    fm = raw.get("filter_metadata", raw.get("filterMetadata")) or {}
    if not isinstance(fm, Mapping):
        raise errors.ConfigError(f"{where}.filter_metadata must be a mapping")
    return Metadata(tuple((str(ns), struct_from_json(v, f"{where}.filter_metadata.{ns}")) for ns, v in fm.items()))


def _to_json(value: Value) -> object:
    if isinstance(value, Struct):
        return value.to_json()
    if isinstance(value, ListValue):
        return [_to_json(v) for v in value.values]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --- protobuf binary -------------------------------------------------------------------------------
def _field_bytes(number: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return leb128.encode(number << 3 | 2) + leb128.encode(len(data)) + data


def _value_proto(value: Value) -> bytes:
    if value is None:
        return b"\x08\x00"  # null_value: NULL_VALUE
    if isinstance(value, bool):
        return b"\x20\x01" if value else b"\x20\x00"
    if isinstance(value, float):
        return b"\x11" + _DOUBLE.pack(value)
    if isinstance(value, str):
        return _field_bytes(3, value.encode())
    if isinstance(value, Struct):
        return _field_bytes(5, value.proto())
    return _field_bytes(6, b"".join(_field_bytes(1, _value_proto(v)) for v in value.values))


def node_proto(node_id: str, cluster: str, metadata: Struct, user_agent_name: str) -> bytes:
    """envoy.config.core.v3.Node with the fields the agent knows (id 1, cluster 2, metadata 3,
    user_agent_name 6; empty strings and an empty Struct are left out, as protobuf does)."""
    out = bytearray()
    if node_id:
        out += _field_bytes(1, node_id.encode())
    if cluster:
        out += _field_bytes(2, cluster.encode())
    if metadata.fields:
        out += _field_bytes(3, metadata.proto())
    if user_agent_name:
        out += _field_bytes(6, user_agent_name.encode())
    return bytes(out)


# --- proxy-wasm property values --------------------------------------------------------------------
def property_value(value: Value) -> bytes | None:
    """A Value as a proxy-wasm property: None for what Envoy cannot serialize (a list)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, float):
        return _DOUBLE.pack(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Struct):
        return struct_pairs(value)
    return None


def struct_pairs(value: Struct) -> bytes | None:
    """A Struct as a map property: header pairs (an empty map is the 4-byte zero count)."""
    items: list[tuple[bytes, bytes]] = []
    for key, v in value.fields:
        encoded = property_value(v)
        if encoded is None:
            return None
        items.append((key.encode(), encoded))
    return _pairs(items)


def metadata_pairs(metadata: Metadata) -> bytes | None:
    """`filter_metadata` as a map property: namespace -> the namespace's Struct as pairs."""
    items: list[tuple[bytes, bytes]] = []
    for namespace, value in metadata.filter_metadata:
        encoded = struct_pairs(value)
        if encoded is None:
            return None
        items.append((namespace.encode(), encoded))
    return _pairs(items)


def _pairs(items: Sequence[tuple[bytes, bytes]]) -> bytes:
    return pairs.encode(items) or b"\0\0\0\0"


def lookup(value: Value, path: Sequence[bytes]) -> Value | Missing:
    """Follow `path` (field names) into nested Structs."""
    for seg in path:
        if not isinstance(value, Struct):
            return MISSING
        found = value.get(seg.decode(errors="replace"))
        if isinstance(found, Missing):
            return MISSING
        value = found
    return value
