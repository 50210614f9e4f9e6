"""One way to read a field: typed access to a decoded YAML/JSON mapping, with one set of rules for every reader.

Used by every place that turns user- or peer-written documents into values: the agent's config file
(`meshplug.agent.config`), the push protocol (`meshplug.protocol`), the webhook config
(`meshplug.controller.webhooks`), WasmPlugin/TrafficExtension specs (`meshplug.spec`) and the corpus specs of the
tests. Each caller passes its own error class (ConfigError, ProtocolError, SpecError, ...), so what differs between
them is what they raise, never what they accept:

- a key that is absent or null is unset: the default applies, or "required" when there is none;
- a string must be a string, and is refused when empty unless the field says ``empty=True``;
- an integer is an int and never a bool; a number is an int or a float (not a bool); ranges are inclusive;
- a boolean is true or false (not "yes", not 1);
- a list of strings holds non-empty strings (of CIDRs: each an IP network); a map of strings has string keys and
  string values;
- `only` refuses keys it was not told about, naming them all;
- every message is ``<where>.<key> must be <what>, got <value>`` (``<where>.<key>: required`` when missing).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from meshplug import errors

#: marks a field without a default: it is required
REQUIRED: Final[Any] = object()
Error = Callable[[str], Exception]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Fields:
    """The fields of one mapping at ``where`` (a dotted path used in every message)."""

    def __init__(self, raw: Any, where: str, *, error: Error = errors.ConfigError, optional: bool = False) -> None:
        """``optional``: None (an absent section) reads as an empty mapping."""
        if raw is None and optional:
            raw = {}
        if not isinstance(raw, Mapping):
            raise error(f"{where or 'the document'} must be a mapping, got {type(raw).__name__}")
        for key in raw:
            if not isinstance(key, str):
                raise error(f"{where or 'the document'}: keys must be strings, got {key!r}")
        self.raw: Mapping[str, Any] = raw
        self.where = where
        self.error = error

    def at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, what: str) -> Exception:
        """The error for field ``key``: ``<where>.<key> must be <what>, got <value>``."""
        return self.error(f"{self.at(key)} must be {what}, got {_shown(self.raw.get(key))}")

    def only(self, *allowed: str) -> Fields:
        unknown = sorted(set(self.raw) - set(allowed))
        if unknown:
            raise self.error(f"{self.where + ': ' if self.where else ''}unknown key(s) {', '.join(unknown)}")
        return self

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def value(self, key: str, default: Any = None) -> Any:
        """The raw value (None: ``default``), for fields a caller checks in its own way."""
        value = self.raw.get(key)
        return default if value is None else value

    def _get(self, key: str, default: Any) -> Any:
        value = self.raw.get(key)
        if value is None:
            if default is REQUIRED:
                raise self.error(f"{self.at(key)}: required")
            return default
        return value

    def text(self, key: str, default: Any = REQUIRED, *, empty: bool = False) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or (not value and not empty):
            raise self.fail(key, "a string" if empty else "a non-empty string")
        return value

    def opt_text(self, key: str, *, empty: bool = False) -> str | None:
        return self.text(key, empty=empty) if self.has(key) else None

    def integer(self, key: str, default: Any = REQUIRED, *, lo: int | None = None, hi: int | None = None) -> int:
        value = self._get(key, default)
        bounds = f" in {lo}..{hi}" if lo is not None and hi is not None else (f" >= {lo}" if lo is not None else "")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"an integer{bounds}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise self.fail(key, f"an integer{bounds}")
        return value

    def opt_integer(self, key: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        return self.integer(key, lo=lo, hi=hi) if self.has(key) else None

    def number(self, key: str, default: Any = REQUIRED, *, positive: bool = False) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or (positive and value <= 0):
            raise self.fail(key, "a positive number" if positive else "a number")
        return float(value)

    def flag(self, key: str, default: Any = REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def array(self, key: str, default: Any = (), *, max_items: int | None = None) -> list[Any]:
        value = self._get(key, list(default) if default is not REQUIRED else REQUIRED)
        if not isinstance(value, list) or (max_items is not None and len(value) > max_items):
            raise self.fail(key, "a list" if max_items is None else f"a list of at most {max_items} items")
        return value

    def strings(self, key: str, default: Any = (), *, max_items: int | None = None) -> tuple[str, ...]:
        values = self.array(key, default, max_items=max_items)
        if not all(isinstance(v, str) and v for v in values):
            raise self.fail(key, "a list of non-empty strings")
        return tuple(values)

    def cidrs(self, key: str) -> tuple[str, ...]:
        """A list of IP networks in CIDR notation (host bits allowed, as written)."""
        values = self.strings(key)
        for cidr in values:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise self.fail(key, "a list of CIDRs") from None
        return values

    def text_map(self, key: str) -> dict[str, str]:
        value = self._get(key, {})
        pairs = value.items() if isinstance(value, Mapping) else None
        if pairs is None or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            raise self.fail(key, "a mapping of strings to strings")
        return dict(value)

    def sub(self, key: str, *allowed: str) -> Fields:
        """The mapping at ``key`` (absent: empty), limited to ``allowed`` keys when any are given."""
        child = Fields(self.raw.get(key), self.at(key), error=self.error, optional=True)
        return child.only(*allowed) if allowed else child

    def items(self, key: str, default: Any = ()) -> list[Fields]:
        """The mappings of the list at ``key``, each read at ``<where>.<key>[i]``."""
        return [Fields(v, f"{self.at(key)}[{i}]", error=self.error) for i, v in enumerate(self.array(key, default))]

    def choice(self, key: str, options: Iterable[str], default: Any = REQUIRED) -> str:
        allowed = tuple(options)
        value = self.text(key, default)
        if value not in allowed:
            raise self.fail(key, f"one of {', '.join(allowed)}")
        return value
