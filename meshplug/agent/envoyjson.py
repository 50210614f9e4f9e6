"""Envoy's protobuf messages in their YAML/JSON form, read field by field: the reader under the agent's Envoy
bootstrap (`meshplug.agent.bootstrap`, with `envoyroutes` and `envoywasm`).

A `Message` is one message at a field path: fields are taken one by one, in either spelling (snake_case or
the lowerCamelCase JSON name), as the types Envoy's JSON mapping gives them (wrapper types, Durations, enum
names case-insensitive, Any and TypedStruct, DataSource); `done()` refuses every field that was not taken,
with its path and a one-line reason. Every problem is a `ConfigError` ("envoy bootstrap: <path>: <reason>").
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from meshplug import errors
from meshplug.agent import config

# the message types the bootstrap reader knows by name (an Any's type URL ends in one of them)
HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
HTTP_WASM = "envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM = "envoy.extensions.filters.network.wasm.v3.Wasm"
ROUTER = "envoy.extensions.filters.http.router.v3.Router"
LUA = "envoy.extensions.filters.http.lua.v3.Lua"
WASM_SERVICE = "envoy.extensions.wasm.v3.WasmService"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DOWNSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TYPED_STRUCTS = ("udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct")
STRING_VALUE = "google.protobuf.StringValue"
BYTES_VALUE = "google.protobuf.BytesValue"
STRUCT = "google.protobuf.Struct"
#: filters Envoy once found by name alone (an empty typed_config); Envoy 1.40 refuses that
_LEGACY_NAMES = {"envoy.filters.http.router": ROUTER, "envoy.router": ROUTER}
_DURATION = re.compile(r"^(-?\d+)(\.\d{1,9})?s$")
_CAMEL = re.compile(r"(?<!^)([A-Z])")

#: why notable fields outside the subset are refused (anything else: "not supported")
REASONS = {
    "dynamic_resources": "dynamic resources (xDS) need a management server; the agent reads static resources",
    "rds": "routes from RDS need a management server; give an inline route_config",
    "access_log": "access logs are not written by the agent",
    "listener_filters": "listener filters are not supported",
    "filter_chain_match": "filter chain matching is not supported (one filter chain per listener)",
    "transport_socket": "only a listener's DownstreamTlsContext with one certificate (files) is supported",
    "typed_per_filter_config": "per-route filter configuration is not supported",
    "request_headers_to_add": "header manipulation in routes is not supported",
    "response_headers_to_add": "header manipulation in routes is not supported",
    "request_headers_to_remove": "header manipulation in routes is not supported",
    "response_headers_to_remove": "header manipulation in routes is not supported",
    "redirect": "redirect routes are not supported (route or direct_response only)",
    "retry_policy": "retries are not supported",
    "health_checks": "active health checks are not supported",
    "circuit_breakers": "circuit breakers are not supported",
    "layered_runtime": "the runtime is not supported",
    "stats_sinks": "stats sinks are not supported (read the admin /stats endpoints)",
    "tracing": "tracing is not supported",
    "config": "the v2 `config` Struct was removed in Envoy v3: use typed_config",
    "capability_restriction_config": "capability restrictions are not supported",
    "max_stream_duration": "not supported here: the agent reads max_stream_duration in an HCM's "
    "common_http_protocol_options and in a route",
    "idle_timeout": "not supported here: the agent reads idle_timeout in an HCM's common_http_protocol_options "
    "(connections) and in a route (its streams' idle timeout)",
}

T = TypeVar("T")


@dataclass
class Read:
    """State of one bootstrap read: the inline-module directory and what needs a warning."""

    inline_dir: Path
    warnings: list[str]
    #: the first HTTP listener's hcm http_protocol_options (the agent has one set for every listener) and where
    http1: tuple[config.HttpOptions, str] | None = None


def error(path: str, reason: str) -> errors.ConfigError:
    """The ConfigError for the field at `path`."""
    return errors.ConfigError(f"envoy bootstrap: {path or '(top level)'}: {reason}", reason="unsupported_config")


def type_name(value: Any) -> str:
    """How a refused value's JSON type is named in errors."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a bool", int: "a number"}.get(
        type(value), type(value).__name__
    )


def _unwrapped(value: Any) -> Any:
    """A google.protobuf wrapper's value ({"value": x} -> x: BoolValue, UInt32Value, ...); anything else as is."""
    return value["value"] if isinstance(value, dict) and set(value) == {"value"} else value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise error(path, f"must be a string, got {type_name(value)}")
    return value


def _bool(value: Any, path: str) -> bool:
    value = _unwrapped(value)
    if not isinstance(value, bool):
        raise error(path, f"must be a bool, got {type_name(value)}")
    return value


def _uint(low: int, high: int) -> Callable[[Any, str], int]:
    def convert(value: Any, path: str) -> int:
        value = _unwrapped(value)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise error(path, f"must be an integer {low}..{high}, got {value!r}")
        return value

    return convert


def _duration(value: Any, path: str) -> float:
    """A google.protobuf.Duration ("1.5s" or {seconds, nanos}) in seconds."""
    if isinstance(value, str):
        m = _DURATION.match(value.strip())
        if not m:
            raise error(path, f'{value!r} is not a duration such as "5s" or "0.25s"')
        seconds = float(m.group(1) + (m.group(2) or ""))
    elif isinstance(value, dict):
        d = Message(value, path)
        seconds = d.uint("seconds", 0, high=315_576_000_000) + d.uint("nanos", 0, high=999_999_999) / 1e9
        d.done()
    else:
        raise error(path, f"must be a duration, got {type_name(value)}")
    if seconds < 0:
        raise error(path, "must not be negative")
    return seconds


def _enum(values: Mapping[str, str]) -> Callable[[Any, str], str]:
    def convert(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise error(path, f"must be an enum name, got {type_name(value)}")
        if value.upper() not in values:
            raise error(path, f"{value!r} is not supported (one of {', '.join(sorted(values))})")
        return values[value.upper()]

    return convert


class Message:
    """A message being read at `path`: fields are taken one by one (either spelling); `done()` refuses what
    was not taken."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise error(path, f"must be a mapping, got {type_name(raw)}")
        self.path = path
        self.fields: dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str):
                raise error(path, f"field {key!r} is not a string")
            name = key if key.startswith("@") else _CAMEL.sub(r"_\1", key).lower()
            if name in self.fields:
                raise error(f"{path}.{name}", "given twice (snake_case and camelCase)")
            self.fields[name] = value
        self.taken: set[str] = set()

    def at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return self.fields.get(name) is not None

    def raw(self, name: str) -> Any:
        self.taken.add(name)
        return self.fields.get(name)

    def _take(self, name: str, default: T, convert: Callable[[Any, str], T]) -> T:
        """Field `name` through `convert` (which names the path in its errors), `default` when absent."""
        value = self.raw(name)
        return default if value is None else convert(value, self.at(name))

    def text(self, name: str, default: str = "") -> str:
        return self._take(name, default, _string)

    def need_text(self, name: str, reason: str = "is required") -> str:
        """A string field that must be given and not empty (else `reason`)."""
        value = self.text(name)
        if not value:
            raise error(self.at(name), reason)
        return value

    def flag(self, name: str, default: bool) -> bool:
        return self._take(name, default, _bool)

    def uint(self, name: str, default: int, *, low: int = 0, high: int = 2**32 - 1) -> int:
        return self._take(name, default, _uint(low, high))

    def duration(self, name: str, default: float) -> float:
        """A google.protobuf.Duration ("1.5s" or {seconds, nanos}) in seconds."""
        return self._take(name, default, _duration)

    def enum(self, name: str, values: Mapping[str, str], default: str) -> str:
        """An enum by name (case-insensitive, as Envoy parses them): `values` maps the accepted upper-case
        names to what the agent keeps."""
        return self._take(name, default, _enum(values))

    def obj(self, name: str) -> Message | None:
        value = self.raw(name)
        return None if value is None else Message(value, self.at(name))

    def need(self, name: str) -> Message:
        found = self.obj(name)
        if found is None:
            raise error(self.at(name), "is required")
        return found

    def items(self, name: str) -> list[tuple[Any, str]]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise error(self.at(name), f"must be a list, got {type_name(value)}")
        return [(item, f"{self.at(name)}[{i}]") for i, item in enumerate(value)]

    def done(self) -> None:
        for name in sorted(set(self.fields) - self.taken):
            if name == "@type":
                continue
            reason = REASONS.get(name, "not supported by the agent (outside the Envoy bootstrap subset it reads)")
            raise error(self.at(name), reason)


def type_url(value: str, path: str) -> str:
    """The message name of an Any's type URL ("type.googleapis.com/x.y.Z" -> "x.y.Z")."""
    if "/" not in value:
        raise error(path, f"{value!r} is not a type URL (type.googleapis.com/<message>)")
    return value.rsplit("/", 1)[1]


def typed(obj: Message, name: str, *, legacy_name: str = "") -> tuple[str, Message]:
    """A typed_config (google.protobuf.Any, maybe a TypedStruct): (message name, its fields)."""
    raw = obj.raw(name)
    path = obj.at(name)
    if raw is None or raw == {}:
        legacy = _LEGACY_NAMES.get(legacy_name)
        if legacy is not None:
            return legacy, Message({}, path)
        raise error(path, "is required (an Any with @type)")
    body = Message(raw, path)
    url = body.need_text("@type")
    kind = type_url(url, body.at("@type"))
    if kind in TYPED_STRUCTS:
        inner_url = body.need_text("type_url", "is required in a TypedStruct")
        value = body.raw("value")
        body.done()
        return type_url(inner_url, body.at("type_url")), Message(value if value is not None else {}, body.at("value"))
    return kind, body


def data_source(obj: Message, *, allow_file: bool) -> bytes:
    """An envoy.config.core.v3.DataSource: filename, inline_bytes (base64) or inline_string."""
    given = [k for k in ("filename", "inline_bytes", "inline_string") if obj.has(k)]
    if len(given) != 1:
        raise error(obj.path, "needs exactly one of filename, inline_bytes, inline_string")
    if given[0] == "inline_string":
        data = obj.text("inline_string").encode()
    elif given[0] == "inline_bytes":
        data = base64_bytes(obj.text("inline_bytes"), obj.at("inline_bytes"))
    else:
        if not allow_file:
            raise error(obj.at("filename"), "not supported here")
        name = obj.text("filename")
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            raise error(obj.at("filename"), f"cannot read {name}: {exc.strerror}") from None
    obj.done()
    return data


def base64_bytes(text: str, path: str) -> bytes:
    """A bytes field (base64 in Envoy's YAML/JSON)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(path, "is not base64 (bytes fields are base64 in Envoy's YAML/JSON)") from None
