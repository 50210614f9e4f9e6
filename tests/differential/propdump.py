"""What a plugin reads of response.flags and response.code_details, per callback, through Envoy 1.40 or the agent:
the corpus module c/propdump in a listener's filter chain, and a client that reads one whole response and then the
plugin's log lines.

propdump reads the properties named in its configuration in every callback it gets (request headers "rh", response
headers "sh", response body "sb", the log "lg") and logs "prop <callback> <name> = <hex of the bytes>" (or
"! <status>" when the read failed). `read` decodes them: flags as the integer (Envoy's legacy bit field,
StreamInfo::legacyResponseFlags: UT 0x4, UR 0x10, UF 0x20, UC 0x40, NR 0x100, DPE 0x40000, UPE 0x800000 ...),
details as text, so a difference reads plainly. Used by tests/integration/test_differential_upstream_flags.py and
test_differential_flags.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tests.corpus import modules as corpus_modules
from tests.differential import bed as diff_bed

T = TypeVar("T")
#: per callback ("rh", "sh", "sb", "lg"), what the plugin read of each property
Props = dict[str, tuple[object, ...]]

#: the properties propdump reads
PROPERTIES = ("response.flags", "response.code_details")


def wasm_filter() -> dict[str, Any]:
    """The propdump HTTP filter (Envoy's Wasm filter config; the agent reads the same bootstrap)."""
    config = {
        "name": "propdump",
        "root_id": "propdump-root",
        "vm_config": {
            "vm_id": "propdump-vm",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": str(corpus_modules.module("c/propdump").path)}},
        },
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "\n".join(PROPERTIES)},
    }
    return {
        "name": "propdump",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
    }


@dataclass(frozen=True)
class Proxy:
    """A proxy with propdump in its chain: its listener port and a reader of its plugin log lines (level, text)."""

    port: int
    logs: Callable[[], list[tuple[str, str]]]


def _value(name: str, logged: str) -> object:
    """A logged property as comparable text: flags "0x.." , details as text, a failed read as logged."""
    if not logged.startswith("= "):
        return logged
    raw = bytes.fromhex(logged[2:])
    if name == "response.flags":
        return hex(int.from_bytes(raw, "little"))
    return raw.decode(errors="backslashreplace")


@dataclass(frozen=True)
class Seen:
    """One request through a proxy: the responses the client read (status line, headers with times as "*", body),
    whether it could not read all of it, whether the proxy closed; and per callback what the plugin read."""

    responses: tuple[tuple[Any, ...], ...]
    unreadable: bool
    closed: bool
    props: Props


def props_after(
    proxy: Proxy, act: Callable[[], T], *, deadline: float = 3.0
) -> tuple[T, dict[str, tuple[object, ...]]]:
    """Run `act` (a client's request through the proxy), then wait up to `deadline` for the plugin's log callback
    lines (the last a stream gets): what `act` gave and, per callback, what the plugin read."""
    before = len(proxy.logs())
    got = act()
    until = time.monotonic() + deadline
    while True:
        seen: dict[str, dict[str, str]] = {}
        for _, message in proxy.logs()[before:]:
            parts = message.split(" ", 3)
            if len(parts) == 4 and parts[0] == "prop":
                seen.setdefault(parts[1], {})[parts[2]] = parts[3]
        done = "lg" in seen and all(p in seen["lg"] for p in PROPERTIES)
        if done or time.monotonic() > until:
            break
        time.sleep(0.05)  # polls for the log lines (no event to wait on): the loop ends when they are there
    return got, {cb: tuple(_value(p, v.get(p, "")) for p in PROPERTIES) for cb, v in seen.items()}


def read(proxy: Proxy, request: bytes, *, deadline: float = 3.0) -> Seen:
    """Send the HTTP/1.1 `request`, read the response (until the proxy closes, or a short quiet after a whole one),
    then the plugin's lines (`props_after`)."""
    client, props = props_after(
        proxy, lambda: diff_bed.converse(proxy.port, request, head=False, deadline=deadline), deadline=deadline
    )
    responses = tuple(diff_bed.local_reply(r) for r in client.responses)
    return Seen(responses, bool(client.unreadable), client.closed, props)
