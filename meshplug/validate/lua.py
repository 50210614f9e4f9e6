"""Inline Lua validation: does a TrafficExtension's `lua.inlineCode` load as Envoy's Lua filter would load it.

Called by the admission webhook and the operator's validate stage (meshplug.controller) before anything rolls
out, and by the agent's Lua filter (meshplug.agent.lua) when it starts a script. Compiles with LuaJIT 2.1 (PyPI
lupa's `luajit21`, Envoy's runtime): the error text is LuaJIT's, the one Envoy prints after "script load error:",
e.g. `[string "function envoy_on_response(r)..."]:2: function arguments expected near ':'`. Compiling runs no
code of the script.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

import lupa.luajit21 as luajit

from meshplug import errors, limits

#: the line a LuaJIT message points at: `[string "..."]:LINE: ...`
_LINE: Final = re.compile(r'^\[string ".*?"\]:(\d+): ')


@dataclass(frozen=True)
class LuaInfo:
    sha256: str  # of the script's UTF-8 bytes
    size: int


def compile_error(code: str) -> str | None:
    """LuaJIT's compile error for `code` (Envoy's "script load error" text), else None; never runs the code."""
    data = code.encode()
    if data[:1] == b"\x1b":
        return "precompiled bytecode is not accepted"
    rt = luajit.LuaRuntime(encoding=None, register_eval=False, register_builtins=False, max_memory=16 * limits.MiB)
    check = rt.eval("function(code) local f, err = loadstring(code) return err end")
    err = check(data)
    return None if err is None else bytes(err).decode(errors="replace")


def error_line(message: str) -> int | None:
    """The script line a LuaJIT error message names, if any."""
    m = _LINE.match(message)
    return int(m.group(1)) if m else None


def check(code: str, *, where: str = "lua.inlineCode") -> LuaInfo:
    """Raise errors.ValidationError (reason invalid_lua, the Lua error and line) unless `code` compiles."""
    data = code.encode()
    if not data:
        raise errors.ValidationError(f"{where} is empty", reason="invalid_lua")
    if len(data) > limits.MAX_LUA_CODE_BYTES:
        raise errors.ValidationError(
            f"{where} is {len(data)} bytes, more than {limits.MAX_LUA_CODE_BYTES}", reason="invalid_lua"
        )
    err = compile_error(code)
    if err is not None:
        line = error_line(err)
        at = f" (line {line})" if line is not None else ""
        raise errors.ValidationError(f"{where} does not compile{at}: {err}", reasons=(err,), reason="invalid_lua")
    return LuaInfo(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
