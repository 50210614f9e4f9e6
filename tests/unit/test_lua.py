"""The agent's Lua filter in process (meshplug.agent.lua on the sans-IO chain): the parts the corpus cannot
show on Envoy -- the sandbox, the instruction budget and memory cap (Envoy has neither), load failures, the
chain's HOLD semantics, trailers (the corpus client sends none) -- and the wire/config forms of a Lua filter.

Behaviour shared with Envoy is checked against Envoy itself by the Lua corpus (examples/filters/lua/).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from meshplug import errors, limits, protocol
from meshplug.agent import chain as C
from meshplug.agent import config
from meshplug.agent import lua as L
from meshplug.validate import lua as validate_lua

pytestmark = pytest.mark.unit


def _filter(code: str, *, clusters: set[str] | None = None, **runtime: int) -> tuple[L.Runtime, L.LuaFilter]:
    rt = L.Runtime(clusters=clusters, **runtime)
    return rt, rt.load(L.LuaConfig(name="t", code=code))


def _request(
    ch: C.Chain, path: str = "/", body: Sequence[bytes] = (), trailers: C.Headers | None = None
) -> tuple[C.Stream, list[C.Output]]:
    s = ch.new_stream(C.StreamInfo(remote_address="10.0.0.7", remote_port=5555, local_port=8080))
    later: list[C.Output] = []
    s.on_progress = lambda st: later.extend(st.take_outputs())
    headers = C.http1_request_headers(b"POST" if body else b"GET", path.encode(), [(b"host", b"svc")])
    out = s.recv_request_headers(headers, not body and trailers is None)
    for i, chunk in enumerate(body):
        out += s.recv_request_data(chunk, i == len(body) - 1 and trailers is None)
    if trailers is not None:
        out += s.recv_request_trailers(trailers)
    return s, out + later


def _upstream_headers(out: Sequence[C.Output]) -> dict[bytes, bytes]:
    sent = [o for o in out if isinstance(o, C.SendHeaders) and o.target is C.Target.UPSTREAM]
    assert sent, f"nothing went upstream: {out}"
    return dict(sent[0].headers)


def _logs(rt: L.Runtime) -> list[str]:
    return [r.message for r in rt.logs]


SANDBOX = r"""
local function try(what, f)
  local ok, res = pcall(f)
  log[#log + 1] = what .. "=" .. (ok and tostring(res) or "error")
end
log = {}
try("os", function() return os.execute end)
try("os.getenv", function() return os.getenv end)
try("os.time", function() return type(os.time()) end)
try("io", function() return io end)
try("require", function() return require end)
try("package", function() return package end)
try("debug", function() return debug end)
try("jit", function() return jit end)
try("ffi", function() return ffi end)
try("dofile", function() return dofile end)
try("loadfile", function() return loadfile end)
try("getfenv", function() return getfenv end)
try("setfenv", function() return setfenv end)
try("collectgarbage", function() return collectgarbage end)
try("string.dump", function() return string.dump end)
try("dump via metatable", function() return ("x").dump end)
try("string metatable", function() return getmetatable("") end)
try("binary chunk", function() return select(2, loadstring("\27LJ\2")) end)
try("binary load", function() return select(2, load("\27LJ\2")) end)
try("text load", function() return load("return 1 + 1")() end)
try("_G is the sandbox", function() return _G.io == nil and _G == getfenv end)
try("pairs __pairs", function()
  local t = setmetatable({}, {__pairs = function() return function(_, k) if not k then return "k", "v" end end end})
  for k, v in pairs(t) do return k .. v end
end)
try("table.pack", function() return table.pack(1, 2).n end)
try("rep sep", function() return string.rep("a", 3, ",") end)
try("log base", function() return math.log(8, 2) end)
function envoy_on_request(h)
  h:logInfo(table.concat(log, " "))
end
"""


def test_scripts_run_in_a_sandbox() -> None:
    rt, f = _filter(SANDBOX)
    _request(C.Chain([f]))
    line = _logs(rt)[-1]
    for absent in (
        "os=nil", "os.getenv=nil", "io=nil", "require=nil", "package=nil", "debug=nil", "jit=nil", "ffi=nil",
        "dofile=nil", "loadfile=nil", "getfenv=nil", "setfenv=nil", "collectgarbage=nil", "string.dump=nil",
        "dump via metatable=nil", "string metatable=false",
    ):  # fmt: skip
        assert absent in line, (absent, line)
    assert "binary chunk=attempt to load a binary chunk" in line
    assert "binary load=attempt to load a binary chunk" in line
    assert "os.time=number" in line and "text load=2" in line
    # Envoy's LuaJIT has the 5.2 compatibility these need
    assert "pairs __pairs=kv" in line and "table.pack=2" in line and "rep sep=a,a,a" in line and "log base=3" in line


LOOP = """
function envoy_on_request(h)
  h:headers():add("x-before", "1")
  if h:headers():get(":path") == "/loop" then while true do end end
  h:headers():add("x-fine", "1")
end
"""

MEMORY = """
function envoy_on_request(h)
  h:headers():add("x-before", "1")
  if h:headers():get(":path") == "/bomb" then
    local t = {}
    for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end
  elseif h:headers():get(":path") == "/huge" then
    local s = string.rep("x", 1e9)
  end
  h:headers():add("x-fine", "1")
end
"""


@pytest.mark.parametrize(
    ("code", "path", "message"),
    [
        (LOOP, "/loop", "instruction budget exceeded"),
        (MEMORY, "/bomb", "memory limit exceeded"),
        (MEMORY, "/huge", "not enough memory"),
    ],
    ids=["endless-loop", "allocation-loop", "one-huge-string"],
)
def test_a_runaway_script_is_stopped_for_its_stream_only(code: str, path: str, message: str) -> None:
    rt, f = _filter(code, instructions=2_000_000, max_memory=16 * limits.MiB)
    ch = C.Chain([f])
    _, out = _request(ch, path)
    sent = _upstream_headers(out)  # stopped like any script error: the stream goes on (Envoy's way)
    assert sent[b"x-before"] == b"1" and b"x-fine" not in sent
    assert _logs(rt)[-1] == message and f.errors == 1
    for _ in range(3):  # the next streams run the script in full, in the same state
        _, out = _request(ch, "/")
        assert _upstream_headers(out)[b"x-fine"] == b"1"
    assert f.errors == 1
    assert f.lua.get_memory_used() < 8 * limits.MiB  # what the stopped script allocated was collected


def test_the_budget_counts_the_whole_stream() -> None:
    code = """
    function envoy_on_request(h)
      for i = 1, 100000 do end
      local b = h:body()
      for i = 1, 100000 do end
      h:headers():add("x-done", "1")
    end
    """
    _, f = _filter(code, instructions=150_000)
    _, out = _request(C.Chain([f]), "/", body=[b"a"])
    assert b"x-done" not in _upstream_headers(out) and f.errors == 1  # each half fits, both do not
    _, f2 = _filter(code, instructions=400_000)
    _, out = _request(C.Chain([f2]), "/", body=[b"a"])
    assert _upstream_headers(out)[b"x-done"] == b"1"


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        ("function envoy_on_request(h)\n  h:headers:add('a', 'b')\nend\n", errors.ValidationError,
         "]:2: function arguments expected near ':'"),
        ("function envoy_on_request(h) end\nerror('top level fails')\n", errors.PluginStartError,
         "]:2: top level fails"),
        ("while true do end", errors.PluginStartError, "instruction budget exceeded"),
        ("\x1bLJ\x02\x00", errors.ValidationError, "precompiled bytecode is not accepted"),
        ("x" * (limits.MAX_LUA_CODE_BYTES + 1), errors.ValidationError, "more than 65536"),
        ("function envoy_on_request(h)\n  local x = = 1\nend", errors.ValidationError, "does not compile (line 2)"),
    ],
    ids=["syntax", "top-level-error", "top-level-loop", "bytecode", "too-large", "line"],
)  # fmt: skip
def test_a_script_that_does_not_load_is_refused_with_the_lua_error(
    code: str, kind: type[errors.MeshplugError], words: str
) -> None:
    with pytest.raises(kind) as exc:
        _filter(code)
    assert words in exc.value.message


def test_compile_error_reads_as_envoys() -> None:
    seed = "function envoy_on_response(r)\n r:headers:add('a', 1)\nend\n"
    assert (
        validate_lua.compile_error(seed)
        == """[string "function envoy_on_response(r)..."]:2: function arguments expected near ':'"""
    )
    assert validate_lua.compile_error("function envoy_on_request(h) end") is None


def test_body_holds_the_headers_until_the_whole_body_is_in() -> None:
    code = """
    function envoy_on_request(h)
      local b = h:body()
      h:headers():add("x-size", b:length())
      b:setBytes("<" .. b:getBytes(0, b:length()) .. ">")
    end
    """
    _, f = _filter(code)
    s = C.Chain([f]).new_stream()
    assert s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), False) == []
    assert s.recv_request_data(b"abc", False) == []
    out = s.recv_request_data(b"de", True)
    assert [type(o) for o in out] == [C.SendHeaders, C.SendData]
    assert dict(out[0].headers)[b"x-size"] == b"5" and dict(out[0].headers)[b"content-length"] == b"7"  # type: ignore[union-attr]
    assert out[1].data == b"<abcde>" and out[1].end_stream  # type: ignore[union-attr]


def test_an_http_call_holds_the_stream_and_buffers_its_body() -> None:
    code = """
    function envoy_on_request(h)
      local headers, body = h:httpCall("auth", {[":method"] = "GET", [":path"] = "/", [":authority"] = "a"}, "q", 0)
      h:headers():add("x-call", headers[":status"] .. " " .. tostring(body) .. " " .. tostring(headers["x-k"]))
    end
    """
    rt, f = _filter(code, clusters={"auth"})
    s = C.Chain([f]).new_stream()
    later: list[C.Output] = []
    s.on_progress = lambda st: later.extend(st.take_outputs())
    assert s.recv_request_headers(C.http1_request_headers(b"POST", b"/", [(b"host", b"h")]), False) == []
    assert s.recv_request_data(b"body while calling", True) == []
    (call,) = rt.take_http_calls()
    assert (call.cluster, call.body, call.timeout_ms) == ("auth", b"q", 0)
    rt.complete_http_call(call.id, (200, [(b"x-k", b"v")], b""))
    assert [type(o) for o in later] == [C.SendHeaders, C.SendData]
    assert dict(later[0].headers)[b"x-call"] == b"200 nil v"  # type: ignore[union-attr]
    assert later[1].data == b"body while calling"  # type: ignore[union-attr]


def test_a_failed_call_reads_as_envoys_503() -> None:
    code = """
    function envoy_on_request(h)
      local headers, body = h:httpCall("auth", {[":method"] = "GET", [":path"] = "/", [":authority"] = "a"}, nil, 10)
      h:headers():add("x-call", headers[":status"] .. " " .. body)
    end
    """
    rt, f = _filter(code, clusters={"auth"})
    s = C.Chain([f]).new_stream()
    later: list[C.Output] = []
    s.on_progress = lambda st: later.extend(st.take_outputs())
    s.recv_request_headers(C.http1_request_headers(b"GET", b"/", [(b"host", b"h")]), True)
    (call,) = rt.take_http_calls()
    rt.complete_http_call(call.id, None)
    assert dict(later[0].headers)[b"x-call"].startswith(b"503 upstream connect error")  # type: ignore[union-attr]


def test_trailers_are_read_and_changed() -> None:
    code = """
    function envoy_on_request(h)
      local b = h:body()
      local t = h:trailers()
      h:logInfo("trailer " .. tostring(t:get("x-checksum")) .. " body " .. b:length())
      t:add("x-lua-trailer", "1")
    end
    """
    rt, f = _filter(code)
    _, out = _request(C.Chain([f]), "/", body=[b"abc"], trailers=[(b"x-checksum", b"42")])
    assert _logs(rt)[-1] == "trailer 42 body 3"
    trailers = [o for o in out if isinstance(o, C.SendTrailers)]
    assert trailers and (b"x-lua-trailer", b"1") in trailers[0].trailers
    assert [type(o) for o in out] == [C.SendHeaders, C.SendData, C.SendTrailers]


def test_no_trailers_is_nothing() -> None:
    code = """
    function envoy_on_request(h)
      for c in h:bodyChunks() do end
      h:logInfo("trailers " .. select("#", h:trailers()) .. " " .. tostring(h:trailers()))
    end
    """
    rt, f = _filter(code)
    _request(C.Chain([f]), "/", body=[b"abc"])
    assert _logs(rt)[-1] == "trailers 1 nil"


@pytest.mark.parametrize(
    ("value", "ok"),
    [("a\r\nx-injected: 1", False), ("a\nb", False), ("a\x00b", False), ("plain value", True)],
    ids=["crlf", "lf", "nul", "plain"],
)
def test_header_values_that_would_break_the_message_are_refused(value: str, ok: bool) -> None:
    literal = '"' + "".join(f"\\{ord(c)}" for c in value) + '"'  # every byte as a Lua decimal escape
    rt, f = _filter(f'function envoy_on_request(h) h:headers():add("x-v", {literal}) end')
    _, out = _request(C.Chain([f]))
    assert (b"x-v" in _upstream_headers(out)) is ok
    if not ok:
        assert "invalid header name or value" in _logs(rt)[-1]


def test_two_lua_filters_and_phase_order() -> None:
    writer = """function envoy_on_request(h) h:streamInfo():dynamicMetadata():set("ns", "k", {n = 1}) end"""
    reader = """function envoy_on_request(h)
      local m = h:streamInfo():dynamicMetadata():get("ns")
      h:headers():add("x-seen", tostring(m and m.k.n))
    end"""
    rt = L.Runtime()
    r = rt.load(L.LuaConfig(name="reader", code=reader, phase=C.Phase.STATS))
    w = rt.load(L.LuaConfig(name="writer", code=writer, phase=C.Phase.AUTHN))
    _, out = _request(C.Chain([r, w]))  # phase order puts the writer first
    assert _upstream_headers(out)[b"x-seen"] == b"1"
    assert L.metric_values(rt) == {
        "lua.reader.errors": 0, "lua.reader.executions": 1, "lua.writer.errors": 0, "lua.writer.executions": 1,
    }  # fmt: skip


# --- wire and config forms ----------------------------------------------------------------------------
CODE = "function envoy_on_request(h) h:headers():add('x', '1') end"


def test_a_lua_resource_round_trips_on_the_wire() -> None:
    res = protocol.ExtensionConfig(name="ns.te", root_id="", url="", sha256=protocol.lua_sha256(CODE), lua=CODE)
    wire = res.to_json()
    assert "url" not in wire and wire["lua"] == {"inline_code": CODE}
    assert protocol.decode_extension_config(wire, "r") == res
    unsigned = {k: v for k, v in wire.items() if k != "sha256"}
    assert protocol.decode_extension_config(unsigned, "r").sha256 == protocol.lua_sha256(CODE)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sha256": "0" * 64}, "is not the sha256 of lua.inline_code"),
        ({"url": "file:///m.wasm"}, "not both"),
        ({"root_id": "x"}, "root_id does not apply"),
        ({"lua": {"inline_code": ""}}, "must be a non-empty string"),
        ({"lua": {"inline_code": CODE, "file": "x"}}, "unknown key(s) file"),
    ],
    ids=["wrong-sha256", "url-and-lua", "root-id", "empty", "unknown-key"],
)
def test_bad_lua_resources_are_protocol_errors(change: dict[str, object], words: str) -> None:
    wire = {"name": "ns.te", "lua": {"inline_code": CODE}} | change
    with pytest.raises(errors.ProtocolError) as exc:
        protocol.decode_extension_config(wire, "r")
    assert words in exc.value.message


def test_the_static_config_takes_lua_filters() -> None:
    raw = {
        "listeners": [{"name": "in", "port": 0, "cluster": "app"}],
        "clusters": [{"name": "app", "port": 8080}],
        "admin": {"port": 0},
        "plugins": [{"name": "lua-header", "lua": {"inline_code": CODE}, "match": [{"path_prefixes": ["/v1/"]}]}],
    }
    cfg = config.parse(raw, base=Path("/"))
    (p,) = cfg.plugins
    assert p.lua == CODE and p.url == "" and p.sha256 == protocol.lua_sha256(CODE)
    assert p.match[0].path_prefixes == ("/v1/",)
    raw["plugins"] = [{"name": "x", "lua": {"inline_code": CODE}, "module": {"file": "m.wasm"}}]
    with pytest.raises(errors.ConfigError, match="exactly one of module, lua"):
        config.parse(raw, base=Path("/"))
