"""Lua filters in the agent: Envoy's HTTP Lua filter (envoy.filters.http.lua) on LuaJIT, in the sans-IO chain.

Called by the chain builder (meshplug.agent.filters) for every pushed resource that carries inline Lua (a
TrafficExtension `lua.inlineCode`). Usage::

    rt = Runtime(clusters={"auth"}, on_wakeup=wake)        # shared by the Lua filters of one chain
    f = rt.load(LuaConfig(name="ns.add-header", code=src))  # a chain.Filter; ValidationError / PluginStartError
    chain = meshplug.agent.chain.Chain([f, wasm_plugin, ...])
    for call in rt.take_http_calls(): ... rt.complete_http_call(call.id, (status, headers, body) or None)

The script API is Envoy's stream handle (meshplug/agent/lua_api.lua implements it in Lua; this module holds
the Python side: header maps, bodies, http calls, local replies, stream info, dynamic metadata, logs).
Semantics follow what Envoy 1.40 does, checked against it by the Lua corpus (examples/filters/lua/):
`envoy_on_request` / `envoy_on_response` run as coroutines per stream; `body()` holds the headers
(StopIteration) and buffers until the end of stream; `bodyChunks()` lets each chunk through after the
script saw it; `httpCall()` suspends the script until the response (asynchronous calls do not); a script
error is logged at error level, counted per filter (`errors`) and ends the script for that stream only --
the stream goes on with what the script did so far, as in Envoy (which answers no 500 for it).

Sandbox, each filter its own LuaJIT state (lupa's LuaJIT 2.1: Envoy's runtime): scripts run in an
environment without os (but time/clock/date/difftime), io, require, package, debug, jit, ffi, getfenv,
setfenv, string.dump, or binary chunks; the state runs with the JIT off so that a count hook can enforce an
instruction budget per stream (`limits.LUA_STREAM_INSTRUCTIONS`), and lupa caps its memory
(`limits.LUA_MAX_MEMORY_BYTES`). A script over either is stopped like a script error: only the stream that
ran it is affected (one state runs one coroutine at a time), the state is collected afterwards.
"""

from __future__ import annotations

import base64
import collections
import importlib.resources
import itertools
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import lupa.luajit21 as luajit

from meshplug import errors, limits
from meshplug.agent import chain, wire
from meshplug.agent.chain import Action, Direction, FailStrategy, Phase
from meshplug.validate import lua as validate_lua

log = logging.getLogger("meshplug.agent.lua")
script_log = logging.getLogger("meshplug.agent.plugin")

# proxy-wasm / Envoy log levels: trace .. critical
TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL = range(6)
_PY_LEVEL: Final = (logging.DEBUG, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
#: the driver's action codes (lua_api.lua) -> what the chain does with the frame; _DONE: continue, and the
#: script of that direction is over (no more calls for it)
_ACTIONS: Final = (Action.CONTINUE, Action.HOLD, Action.BUFFER, Action.NO_BUFFER, Action.CONTINUE)
_HOLD: Final = 1
_DONE: Final = 4
_DIRECTIONS: Final = (Direction.REQUEST, Direction.RESPONSE)
#: header map kinds the script names: request headers, response headers, their trailers
_INLINE: Final = (
    chain.REQUEST_INLINE_HEADERS,
    chain.RESPONSE_INLINE_HEADERS,
    chain.REQUEST_TRAILER_INLINE_HEADERS,
    chain.RESPONSE_TRAILER_INLINE_HEADERS,
)
#: EnvoyTimestampResolution values
_RES_MS: Final = 0
_RES_US: Final = 1
#: Envoy's router answer to an http call whose connection failed (what the script sees)
_CALL_FAILURE_BODY: Final = wire.reset_body(wire.RESET_CONNECT_FAILURE)
_API_SOURCE: Final = importlib.resources.files("meshplug.agent").joinpath("lua_api.lua").read_bytes()


@dataclass(frozen=True)
class LuaConfig:
    """One Lua filter as the agent was told to run it."""

    name: str
    code: str
    phase: Phase = Phase.UNSPECIFIED
    priority: int | None = None


@dataclass(frozen=True)
class Callout:
    """An http call a script made (handle:httpCall); the shell performs it against cluster `cluster`."""

    id: int
    cluster: str
    headers: tuple[chain.Header, ...]
    body: bytes
    timeout_ms: int  # 0: no timeout of the script's own (the shell's limit applies)


@dataclass(frozen=True)
class LogRecord:
    plugin: str
    level: int
    message: str
    #: when it was logged (CLOCK_MONOTONIC: see meshplug.agent.callouts.LogRecord)
    at: int = field(default_factory=time.monotonic_ns)


CallResult = tuple[int, Sequence[chain.Header], bytes]


class Runtime:
    """What the Lua filters of one chain share: their http-call outbox, logs and the clusters they may call."""

    def __init__(
        self,
        *,
        clusters: Collection[str] | None = None,
        on_wakeup: Callable[[], None] | None = None,
        record_log: Callable[[str, int, str], None] | None = None,
        log_level: int = INFO,
        instructions: int = limits.LUA_STREAM_INSTRUCTIONS,
        max_memory: int = limits.LUA_MAX_MEMORY_BYTES,
    ) -> None:
        self.clusters = None if clusters is None else frozenset(clusters)
        self.on_wakeup = on_wakeup
        self.log_level = log_level
        self.logs: collections.deque[LogRecord] = collections.deque(maxlen=10_000)
        self._record = record_log
        self.units = max(1, instructions // limits.LUA_HOOK_INSTRUCTIONS)
        self.max_memory = max_memory
        self.filters: list[LuaFilter] = []
        self._outbox: list[Callout] = []
        self._pending: dict[int, tuple[_Stream, Direction]] = {}
        self._ids = itertools.count(1)

    def load(self, config: LuaConfig) -> LuaFilter:
        """Compile and run the script's top-level code in a new state. Raises errors.ValidationError (does not
        compile) or errors.PluginStartError (its top-level code failed), both with the Lua error."""
        f = LuaFilter(self, config)
        self.filters.append(f)
        return f

    def record_log(self, plugin: str, level: int, message: str) -> None:
        if self._record is not None:
            self._record(plugin, level, message)
            return
        if level < self.log_level:
            return
        self.logs.append(LogRecord(plugin, level, message))
        script_log.log(_PY_LEVEL[level] if 0 <= level < len(_PY_LEVEL) else logging.INFO, "[%s] %s", plugin, message)

    # -- http calls ---------------------------------------------------------------------------------
    def _dispatch(self, stream: _Stream, direction: Direction, call: Callout, asynchronous: bool) -> None:
        if not asynchronous:
            self._pending[call.id] = (stream, direction)
        self._outbox.append(call)
        if self.on_wakeup is not None:
            self.on_wakeup()

    def next_call_id(self) -> int:
        return next(self._ids)

    def take_http_calls(self) -> list[Callout]:
        out, self._outbox = self._outbox, []
        return out

    def complete_http_call(self, call_id: int, result: CallResult | None) -> None:
        """Deliver a call's outcome (None: connect failure / reset) to the script waiting for it."""
        entry = self._pending.pop(call_id, None)
        if entry is None:
            return
        stream, direction = entry
        headers: Sequence[chain.Header]
        if result is None:
            status, body = 503, _CALL_FAILURE_BODY
            headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"text/plain")]
        else:
            status, headers, body = result
        stream.call_done(direction, status, headers, body)

    def error_counts(self) -> dict[str, int]:
        return {f.name: f.errors for f in self.filters}

    def close(self) -> None:
        self._pending.clear()
        self._outbox.clear()
        for f in self.filters:
            f.close()
        self.filters.clear()


class LuaFilter:
    """One Lua script in its own LuaJIT state: a chain.Filter."""

    fail_strategy = FailStrategy.FAIL_OPEN  # a failing script never fails the stream (Envoy)

    def __init__(self, runtime: Runtime, config: LuaConfig) -> None:
        self.runtime = runtime
        self.config = config
        self.errors = 0  # script errors while serving (Envoy's <stat_prefix>.errors)
        self.executions = 0  # coroutines started (Envoy's <stat_prefix>.executions)
        code = config.code.encode()
        validate_lua.check(config.code, where=f"lua {config.name}")  # ValidationError with the Lua error
        self.lua = luajit.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            max_memory=runtime.max_memory + limits.LUA_MEMORY_HEADROOM_BYTES,
        )
        api = self.lua.execute(
            _API_SOURCE, self._helpers(), limits.LUA_HOOK_INSTRUCTIONS, _RES_MS, _RES_US, runtime.max_memory // 1024
        )
        self._headers = api[b"headers"]
        self._data = api[b"data"]
        self._trailers = api[b"trailers"]
        self._call_done = api[b"call_done"]
        self._release = api[b"release"]
        self.active: _Stream | None = None  # the stream whose script runs (set before every driver call)
        try:
            has_request, detail = api[b"load"](code, runtime.units)
        except luajit.LuaError as exc:  # e.g. out of memory outside the script's own pcall
            raise errors.PluginStartError(f"lua {config.name}: {exc}") from None
        if has_request is None:  # it compiled (checked above): its top-level code failed
            message = bytes(detail).decode(errors="replace")
            raise errors.PluginStartError(f"lua {config.name} failed to load: {message}")
        self.on = (bool(has_request), bool(detail))

    def _helpers(self) -> Any:
        names = (
            "log", "error", "h_get", "h_count", "h_at", "h_add", "h_replace", "h_remove", "h_pairs",
            "b_len", "b_get", "b_set", "http_call", "respond", "info", "dm_get", "dm_set", "dm_keys", "b64", "now",
        )  # fmt: skip
        return self.lua.table_from({name.encode(): getattr(self, "_" + name) for name in names})

    # -- chain.Filter -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def phase(self) -> Phase:
        return self.config.phase

    @property
    def priority(self) -> int | None:
        return self.config.priority

    def new_stream(self, control: chain.StreamControl) -> chain.FilterStream | None:
        if not (self.on[0] or self.on[1]):
            return None
        return _Stream(self, control)

    def close(self) -> None:
        self.on = (False, False)

    # -- Python side of the script API (called from Lua, for the stream in `active`) ------------------
    def _map(self, kind: int) -> chain.Headers:
        c = self.active.control  # type: ignore[union-attr]
        return c.headers(_DIRECTIONS[kind & 1]) if kind < 2 else c.trailers(_DIRECTIONS[kind & 1])

    def _log(self, level: int, message: bytes) -> None:
        self.runtime.record_log(self.config.name, level, message.decode(errors="replace"))

    def _error(self, message: bytes) -> None:
        self.errors += 1
        self.runtime.record_log(self.config.name, ERROR, message.decode(errors="replace"))

    def _h_get(self, kind: int, key: bytes) -> bytes | None:
        key = key.lower()
        values = [v for k, v in self._map(kind) if k == key]
        return b",".join(values) if values else None

    def _h_count(self, kind: int, key: bytes) -> int:
        key = key.lower()
        return sum(1 for k, _ in self._map(kind) if k == key)

    def _h_at(self, kind: int, key: bytes, index: int) -> bytes | None:
        key = key.lower()
        values = [v for k, v in self._map(kind) if k == key]
        return values[index] if 0 <= index < len(values) else None

    def _h_add(self, kind: int, key: bytes, value: bytes) -> None:
        chain.add_header(self._map(kind), key.lower(), value, _INLINE[kind])

    def _h_replace(self, kind: int, key: bytes, value: bytes) -> None:
        # Envoy's setCopy: every entry of the name goes, the new one is added (at the end, or coalesced)
        headers = self._map(kind)
        key = key.lower()
        headers[:] = [(k, v) for k, v in headers if k != key]
        chain.add_header(headers, key, value, _INLINE[kind])

    def _h_remove(self, kind: int, key: bytes) -> None:
        headers = self._map(kind)
        key = key.lower()
        headers[:] = [(k, v) for k, v in headers if k != key]

    def _h_pairs(self, kind: int) -> tuple[bytes, ...]:
        return tuple(x for pair in self._map(kind) for x in pair)

    def _b_len(self, direction: int) -> int:
        return len(self.active.control.body(_DIRECTIONS[direction]))  # type: ignore[union-attr]

    def _b_get(self, direction: int, index: int, length: int) -> bytes:
        return bytes(self.active.control.body(_DIRECTIONS[direction])[index : index + length])  # type: ignore[union-attr]

    def _b_set(self, direction: int, data: bytes, content_length: bool) -> None:
        control = self.active.control  # type: ignore[union-attr]
        d = _DIRECTIONS[direction]
        control.body(d)[:] = data
        if content_length:  # Envoy's setContentLength on headers that have not gone on yet
            headers = control.headers(d)
            value = b"%d" % len(data)
            for i, (k, _) in enumerate(headers):
                if k == b"content-length":
                    headers[i] = (k, value)
                    break
            else:
                headers.append((b"content-length", value))

    def _http_call(
        self, cluster: bytes, body: bytes, timeout_ms: int, asynchronous: bool, *flat: bytes
    ) -> tuple[int | None, bytes | None]:
        stream = self.active
        assert stream is not None
        name = cluster.decode(errors="replace")
        clusters = self.runtime.clusters
        if clusters is not None and name not in clusters:
            return None, b"http call cluster invalid. Must be configured"
        headers = tuple((flat[i].lower(), flat[i + 1]) for i in range(0, len(flat) - 1, 2))
        call = Callout(self.runtime.next_call_id(), name, headers, bytes(body), int(timeout_ms))
        self.runtime._dispatch(stream, stream.current, call, asynchronous)
        return call.id, None

    def _respond(self, status: int, body: bytes | None, *flat: bytes) -> None:
        headers = tuple(
            (flat[i].lower(), flat[i + 1]) for i in range(0, len(flat) - 1, 2) if flat[i] != b":status"
        )  # fmt: skip
        reply = chain.LocalReply(int(status), headers=headers, body=bytes(body or b""), details="lua_response")
        self.active.control.send_local_reply(reply)  # type: ignore[union-attr]

    def _info(self, what: bytes) -> bytes:  # noqa: PLR0911 - one return per streamInfo field: a table
        info = self.active.control.info  # type: ignore[union-attr]
        if what == b"protocol":
            return info.protocol.encode()
        if what == b"local":
            return f"{info.local_address}:{info.local_port}".encode()
        if what == b"remote":
            return f"{info.remote_address}:{info.remote_port}".encode()
        if what == b"sni":
            return info.requested_server_name.encode()
        if what == b"tls":
            return info.tls_version.encode()
        if what == b"mtls":
            return b"1" if info.mtls else b""
        return b""

    def _dm_get(self, namespace: bytes) -> Any:
        metadata = self.active.control.dynamic_metadata  # type: ignore[union-attr]
        space = metadata.get(namespace.decode(errors="replace"))
        if space is None:
            return None
        return self.lua.table_from(_to_lua(space), recursive=True)

    def _dm_set(self, namespace: bytes, key: bytes, value: Any) -> tuple[bool, bytes | None]:
        try:
            converted = _from_lua(value)
        except ValueError as exc:
            return False, str(exc).encode()
        metadata = self.active.control.dynamic_metadata  # type: ignore[union-attr]
        metadata.setdefault(namespace.decode(errors="replace"), {})[key.decode(errors="replace")] = converted
        return True, None

    def _dm_keys(self) -> tuple[bytes, ...]:
        return tuple(k.encode() for k in self.active.control.dynamic_metadata)  # type: ignore[union-attr]

    @staticmethod
    def _b64(data: bytes) -> bytes:
        return base64.b64encode(data)

    @staticmethod
    def _now(resolution: int) -> int:
        ns = time.time_ns()
        return ns // 1000 if resolution == _RES_US else ns // 1_000_000


class _Stream:
    """One stream through one Lua filter (chain.FilterStream): the script's two coroutines, kept in the Lua
    state under the keys `2 * id` (request) and `2 * id + 1` (response) while they may still run."""

    __slots__ = ("budget", "control", "current", "filter", "id", "live")

    _ids: ClassVar[Iterator[int]] = itertools.count(1)

    def __init__(self, f: LuaFilter, control: chain.StreamControl) -> None:
        self.filter = f
        self.control = control
        self.budget = f.runtime.units
        self.id = next(_Stream._ids)
        self.live = [False, False]  # a coroutine of that direction is suspended in the state
        self.current = Direction.REQUEST  # the direction whose script runs (its http calls answer there)

    def _act(self, direction: Direction, code: int) -> Action:
        if code == _DONE:
            self.live[direction] = False
            return Action.CONTINUE
        return _ACTIONS[code]

    def _failed(self, direction: Direction, exc: luajit.LuaError) -> None:
        # the driver itself failed (the state ran out of memory between script steps): the script is over
        self.filter._error(str(exc).encode())
        self.live[direction] = False
        self.filter._release(2 * self.id + direction)

    def _drive(self, direction: Direction, step: Any, *args: object) -> int | None:
        """Run one driver step for `direction` (the key first, the budget last); its code, None if it failed."""
        f = self.filter
        f.active = self
        self.current = direction
        try:
            code, self.budget = step(2 * self.id + direction, *args, self.budget)
        except luajit.LuaError as exc:
            self._failed(direction, exc)
            return None
        return int(code)

    def on_headers(self, direction: Direction, end_stream: bool) -> Action:
        f = self.filter
        if not f.on[direction]:
            return Action.CONTINUE
        f.executions += 1
        self.live[direction] = True
        code = self._drive(direction, f._headers, direction, end_stream)
        return Action.CONTINUE if code is None else self._act(direction, code)

    def on_body(self, direction: Direction, size: int, end_stream: bool) -> Action:
        if not self.live[direction]:
            return Action.CONTINUE
        code = self._drive(direction, self.filter._data, end_stream)
        return Action.CONTINUE if code is None else self._act(direction, code)

    def on_trailers(self, direction: Direction) -> Action:
        if not self.live[direction]:
            return Action.CONTINUE
        code = self._drive(direction, self.filter._trailers)
        if code is None:
            return Action.CONTINUE
        return Action.STOP if code == _HOLD else self._act(direction, code)

    def call_done(self, direction: Direction, status: int, headers: Sequence[chain.Header], body: bytes) -> None:
        if not self.live[direction]:
            return
        flat: list[bytes] = [b":status", b"%d" % status]
        for k, v in headers:
            flat.append(k)
            flat.append(v)
        f = self.filter
        f.active = self
        self.current = direction
        try:
            go_on, self.budget = f._call_done(2 * self.id + direction, self.budget, body or None, *flat)
        except luajit.LuaError as exc:
            self._failed(direction, exc)
            go_on = True
        if go_on:
            self.control.resume(direction)

    def on_complete(self) -> None:
        for direction in _DIRECTIONS:
            if self.live[direction]:  # still suspended (a body or call that never came): drop it
                self.live[direction] = False
                self.filter._release(2 * self.id + direction)


# --- dynamic metadata values: Lua <-> Python (Envoy keeps them as a protobuf Struct) ------------------
def _from_lua(value: Any, depth: int = 0) -> object:
    """A Lua value for dynamic metadata (Envoy's Struct): tables with keys 1..n become lists."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if luajit.lua_type(value) == "table":
        if depth > limits.LUA_METADATA_DEPTH:
            raise ValueError("dynamicMetadata value nests too deep")
        items = list(value.items())
        if (
            items
            and all(isinstance(k, int) for k, _ in items)
            and sorted(k for k, _ in items) == list(range(1, len(items) + 1))
        ):
            return [_from_lua(v, depth + 1) for _, v in sorted(items, key=lambda kv: kv[0])]
        out: dict[str, object] = {}
        for k, v in items:
            if not isinstance(k, bytes | int | float):
                raise ValueError("dynamicMetadata table keys must be strings or numbers")
            out[k.decode(errors="replace") if isinstance(k, bytes) else _number_key(k)] = _from_lua(v, depth + 1)
        return out
    raise ValueError(f"unexpected type '{luajit.lua_type(value)}' in dynamicMetadata")


def _number_key(k: float) -> str:
    return str(int(k)) if float(k).is_integer() else repr(k)


def _to_lua(value: object) -> object:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_to_lua(v) for v in value]
    if isinstance(value, dict):
        return {k.encode(): _to_lua(v) for k, v in value.items()}
    return value


def logs_of(runtime: Runtime) -> list[tuple[str, int, str]]:
    return [(r.plugin, r.level, r.message) for r in runtime.logs]


def metric_values(runtime: Runtime) -> Mapping[str, int]:
    """Per-filter counters by Envoy's stat names under the filter's stat prefix (`lua.<name>.errors`)."""
    out: dict[str, int] = {}
    for f in runtime.filters:
        out[f"lua.{f.name}.errors"] = f.errors
        out[f"lua.{f.name}.executions"] = f.executions
    return out
