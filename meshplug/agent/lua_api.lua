-- Envoy's Lua filter API (the stream handle and its objects) over meshplug's sans-IO filter chain.
--
-- Loaded once into each Lua filter's own LuaJIT state by meshplug/agent/lua.py, which passes the Python
-- helpers (`py`), the hook interval and the timestamp resolutions, and gets back the driver table it calls
-- per stream event. This file runs with the full standard library; a user script never does: it runs in
-- `sandbox` (no os/io/require/debug/jit/ffi, no binary chunks, no getfenv/setfenv), under an instruction
-- budget enforced by a count hook (the interpreter checks hooks; the state runs with the JIT off).
--
-- The Python side knows which stream runs (one coroutine of this state runs at a time, always inside a driver
-- call), so the helpers it gives take no stream argument: header maps are named by kind (0 request headers,
-- 1 response headers, 2/3 their trailers), bodies by direction.
--
-- Per stream and direction a state table `st` (in `streams`, by the key Python chose) tracks what Envoy's StreamHandleWrapper tracks: the coroutine,
-- why it is suspended (`wait`), whether the end of stream / a body / trailers were seen, whether the headers
-- went on to the next filter. Objects handed to the script die when the coroutine suspends ("object used
-- outside of proper scope", as Envoy); the handle itself is usable only while its coroutine runs.

local py, HOOK_EVERY, RES_MS, RES_US, MEMORY_KIB = ...

local type, tostring, tonumber, select, error, pairs, ipairs, next = type, tostring, tonumber, select, error, pairs, ipairs, next
local setmetatable, rawget, pcall, unpack = setmetatable, rawget, pcall, unpack
local getmt = debug.getmetatable
local co_create, co_resume, co_yield, co_status = coroutine.create, coroutine.resume, coroutine.yield, coroutine.status
local sfmt, ssub, sbyte, srep, slower, sfind = string.format, string.sub, string.byte, string.rep, string.lower, string.find
local tconcat, tinsert = table.concat, table.insert
local floor, huge, mlog = math.floor, math.huge, math.log
local loadstring, setfenv = loadstring, setfenv
local collect = collectgarbage

-- Python helpers, as locals (one table lookup saved per call)
local p_log, p_error = py.log, py.error
local h_get, h_count, h_at, h_add, h_replace, h_remove, h_pairs =
  py.h_get, py.h_count, py.h_at, py.h_add, py.h_replace, py.h_remove, py.h_pairs
local b_len, b_get, b_set = py.b_len, py.b_get, py.b_set
local p_call, p_respond, p_info, p_dm_get, p_dm_set, p_dm_keys, p_b64, p_now =
  py.http_call, py.respond, py.info, py.dm_get, py.dm_set, py.dm_keys, py.b64, py.now

-- chain actions (meshplug.agent.lua._ACTIONS); DONE: continue, and this direction needs no more events
local CONTINUE, STOP, BUFFER, NO_BUFFER, DONE = 0, 1, 2, 3, 4

-- ---- instruction budget ------------------------------------------------------------------------------
-- The memory cap is checked here too, below lupa's hard cap: a state out of memory while Python pushes
-- values into it (not inside a protected call) would abort the process, so scripts stop well before.
local budget = huge
local BUDGET_MESSAGE = "instruction budget exceeded"
local MEMORY_MESSAGE = "memory limit exceeded"
debug.sethook(function()
  budget = budget - 1
  if budget < 0 then
    budget = huge  -- the driver that catches the error must not trip it again
    error(BUDGET_MESSAGE, 0)
  end
  if collect("count") > MEMORY_KIB then
    collect()
    if collect("count") > MEMORY_KIB then error(MEMORY_MESSAGE, 0) end
  end
end, "", HOOK_EVERY)
jit.off()  -- JIT-compiled traces do not check hooks: the budget needs the interpreter
string.dump = nil  -- reachable through the string metatable; bytecode could break the VM

-- ---- the sandbox -----------------------------------------------------------------------------------------
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- Envoy builds LuaJIT with its Lua 5.2 compatibility: honour __pairs / __ipairs, table.pack/unpack,
-- string.rep's separator, math.log's base (the `#` operator's __len cannot be added from Lua)
local function pairs52(t)
  local mt = getmt(t)
  local f = mt and rawget(mt, "__pairs")
  if f then return f(t) end
  return next, t, nil
end
local function ipairs52(t)
  local mt = getmt(t)
  local f = mt and rawget(mt, "__ipairs")
  if f then return f(t) end
  return ipairs(t)
end
local function rep52(s, n, sep)
  if sep == nil or n <= 1 then return srep(s, n) end
  return srep(s .. sep, n - 1) .. s
end
local function log52(x, base)
  if base == nil then return mlog(x) end
  return mlog(x) / mlog(base)
end
local function pack(...)
  return {n = select("#", ...), ...}
end

local sandbox = {}
for _, k in ipairs({"assert", "error", "next", "pcall", "xpcall", "select", "tonumber", "tostring", "type",
                    "unpack", "rawequal", "rawget", "rawset", "setmetatable", "getmetatable", "_VERSION"}) do
  sandbox[k] = _G[k]
end
sandbox.pairs, sandbox.ipairs = pairs52, ipairs52
sandbox.string = copy(string)
sandbox.string.rep = rep52
sandbox.table = copy(table)
sandbox.table.pack, sandbox.table.unpack = pack, unpack
sandbox.math = copy(math)
sandbox.math.log = log52
sandbox.coroutine = copy(coroutine)
sandbox.bit = copy(bit)
sandbox.os = {time = os.time, clock = os.clock, date = os.date, difftime = os.difftime}
sandbox.EnvoyTimestampResolution = {MILLISECOND = RES_MS, MICROSECOND = RES_US}
sandbox._G = sandbox
getmt("").__metatable = false  -- getmetatable("") must not hand out the real string table

local function text_chunk(chunk, name)
  if type(chunk) == "function" then  -- a reader function: collect the pieces first
    local parts = {}
    while true do
      local piece = chunk()
      if piece == nil or piece == "" then break end
      parts[#parts + 1] = piece
    end
    chunk = tconcat(parts)
  end
  if type(chunk) ~= "string" then
    return nil, "bad argument #1 to 'load' (string expected)"
  end
  if sbyte(chunk, 1) == 27 then
    return nil, "attempt to load a binary chunk (only text chunks are allowed)"
  end
  return loadstring(chunk, name)
end
sandbox.load = function(chunk, name, _, env)
  local f, err = text_chunk(chunk, name)
  if f then setfenv(f, env or sandbox) end
  return f, err
end
sandbox.loadstring = function(s, name)
  local f, err = text_chunk(s, name)
  if f then setfenv(f, sandbox) end
  return f, err
end

-- ---- objects -----------------------------------------------------------------------------------------
local SCOPE = "object used outside of proper scope"

-- raise `msg` at the script's line that called into this API, as LuaJIT words a C function's errors in
-- Envoy: the position of the Lua caller, none when the API was reached through a tail call
local getinfo = debug.getinfo
local API_SOURCE = getinfo(1, "S").source
local function fail(msg)
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if info == nil or info.what == "C" then error(msg, 0) end
    if info.source ~= API_SOURCE then error(msg, level) end
    level = level + 1
  end
end

local function str_arg(v, n, fname)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  fail(sfmt("bad argument #%d to '%s' (string expected, got %s)", n, fname, t))
end
local LEVELS = {logTrace = 0, logDebug = 1, logInfo = 2, logWarn = 3, logErr = 4, logCritical = 5}

local function class()
  local c = {}
  c.__index = c
  c.__metatable = false
  for name, level in pairs(LEVELS) do
    c[name] = function(self, msg)
      p_log(level, str_arg(msg, 1, name))
    end
  end
  return c
end

local Handle, Headers, Buffer, StreamInfo, DynMeta, Metadata, Connection, Ssl =
  class(), class(), class(), class(), class(), class(), class(), class()

-- a live object: its stream's coroutine runs and nothing suspended it since the object was made
local function live(self)
  local st = self.st
  if not st.running or self.e ~= st.epoch then fail(SCOPE) end
  return st
end
local function handle_live(self)
  local st = self.st
  if not st.running then fail(SCOPE) end
  return st
end
local function new(cls, st, fields)
  fields.st, fields.e = st, st.epoch
  return setmetatable(fields, cls)
end
local function suspend(st, why)
  st.wait = why
  st.running = false
  local a, b = co_yield()
  st.running = true
  st.epoch = st.epoch + 1
  return a, b
end


-- headers / trailers (Envoy's HeaderMapWrapper)
function Headers:get(key)
  live(self)
  local v = h_get(self.kind, str_arg(key, 1, "get"))
  if v ~= nil then return v end
end
function Headers:getAtIndex(key, index)
  live(self)
  local i = tonumber(index)
  if i == nil then fail(sfmt("bad argument #2 to 'getAtIndex' (number expected, got %s)", type(index))) end
  local v = h_at(self.kind, str_arg(key, 1, "getAtIndex"), floor(i))
  if v ~= nil then return v end
end
function Headers:getNumValues(key)
  live(self)
  return h_count(self.kind, str_arg(key, 1, "getNumValues"))
end
local function modifiable(self, fname)
  local st = live(self)
  if self.iterating then fail("header map cannot be modified while iterating") end
  if self.trailers then
    if st.trailers_continued then fail("header map can no longer be modified") end
  elseif st.headers_continued then
    fail("header map can no longer be modified")
  end
  return st
end
local function checked(key, value, fname)
  key, value = str_arg(key, 1, fname), str_arg(value, 2, fname)
  -- stricter than Envoy, whose HTTP/1 codec writes such values as they are (header injection): a name is
  -- an RFC 9110 token (or a pseudo-header), a value has no CR, LF or NUL
  if sfind(value, "[\r\n%z]") or not sfind(key, "^:?[%w!#$%%&'*+%-.^_`|~]+$") then
    fail(sfmt("invalid header name or value for %q (CR, LF or NUL, or a bad name)", key))
  end
  return key, value
end
function Headers:add(key, value)
  modifiable(self, "add")
  key, value = checked(key, value, "add")
  h_add(self.kind, key, value)
end
function Headers:replace(key, value)
  modifiable(self, "replace")
  key, value = checked(key, value, "replace")
  h_replace(self.kind, key, value)
end
function Headers:remove(key)
  modifiable(self, "remove")
  h_remove(self.kind, str_arg(key, 1, "remove"))
end
function Headers:setHttp1ReasonPhrase(phrase)
  local st = live(self)
  if st.dir ~= 1 then fail("setHttp1ReasonPhrase() is only valid in the response path") end
  st.reason = str_arg(phrase, 1, "setHttp1ReasonPhrase")
end
function Headers:__pairs()
  live(self)
  local flat = {h_pairs(self.kind)}
  local i, n = -1, #flat
  self.iterating = true
  return function()
    i = i + 2
    if i > n then
      self.iterating = false
      return nil
    end
    return flat[i], flat[i + 1]
  end, self, nil
end

-- bodies (Envoy's BufferWrapper): the chain's buffer of this filter and direction, read on demand
function Buffer:length()
  local st = live(self)
  return b_len(st.dir)
end
function Buffer:getBytes(index, length)
  local st = live(self)
  index, length = tonumber(index), tonumber(length)
  if index == nil or length == nil then fail("bad argument to 'getBytes' (number expected)") end
  local size = b_len(st.dir)
  if index < 0 or length < 0 or index + length > size then
    fail("index/length must be >= 0 and (index + length) must be <= buffer size")
  end
  return b_get(st.dir, floor(index), floor(length))
end
function Buffer:setBytes(data)
  local st = live(self)
  data = str_arg(data, 1, "setBytes")
  if self.added then  -- body(true) of a message that ended with its headers
    if data ~= "" then fail("setBytes() cannot add a body to a message that ended without one (meshplug)") end
    return
  end
  b_set(st.dir, data, not st.headers_continued)
end

-- stream info, dynamic metadata, route metadata, connection
function StreamInfo:protocol() live(self) return p_info("protocol") end
function StreamInfo:downstreamLocalAddress() live(self) return p_info("local") end
function StreamInfo:downstreamDirectLocalAddress() live(self) return p_info("local") end
function StreamInfo:downstreamRemoteAddress() live(self) return p_info("remote") end
function StreamInfo:downstreamDirectRemoteAddress() live(self) return p_info("remote") end
function StreamInfo:requestedServerName() live(self) return p_info("sni") end
function StreamInfo:routeName() live(self) return "" end
function StreamInfo:virtualClusterName() live(self) return "" end
function StreamInfo:dynamicMetadata()
  return new(DynMeta, live(self), {})
end
function StreamInfo:downstreamSslConnection()
  local st = live(self)
  if p_info("tls") ~= "" then return new(Ssl, st, {}) end
  return nil
end

function DynMeta:get(filter)
  local st = live(self)
  local t = p_dm_get(str_arg(filter, 1, "get"))
  if t ~= nil then return t end
end
function DynMeta:set(filter, key, value)
  local st = live(self)
  local ok, err = p_dm_set(str_arg(filter, 1, "set"), str_arg(key, 2, "set"), value)
  if not ok then fail(err) end
end
function DynMeta:__pairs()
  local st = live(self)
  local names = {p_dm_keys()}
  local i = 0
  return function()
    i = i + 1
    local name = names[i]
    if name == nil then return nil end
    return name, p_dm_get(name)
  end, self, nil
end

function Metadata:get(key) live(self) end  -- no route metadata in the agent: nothing, as Envoy without it
function Metadata:__pairs()
  live(self)
  return function() return nil end, self, nil
end

function Connection:ssl()
  local st = live(self)
  if p_info("tls") ~= "" then return new(Ssl, st, {}) end
  return nil
end
function Ssl:peerCertificatePresented() return p_info(live(self) and "mtls") == "1" end
function Ssl:peerCertificateValidated() return p_info(live(self) and "mtls") == "1" end
function Ssl:tlsVersion() return p_info(live(self) and "tls") end

-- ---- the stream handle ------------------------------------------------------------------------------------
function Handle:headers()
  local st = handle_live(self)
  return new(Headers, st, {kind = st.dir})
end

local function body_now(st, always_wrap)
  if st.end_stream then
    if not st.buffered and st.saw_body then
      fail("cannot call body() after body has been streamed")
    end
    if not st.saw_body then
      if always_wrap then return new(Buffer, st, {added = true}) end
      return nil
    end
    return new(Buffer, st, {})
  end
  return false
end

function Handle:body(always_wrap)
  local st = handle_live(self)
  local b = body_now(st, always_wrap)
  if b == nil then return end  -- nothing at all, not nil, as Envoy
  if b ~= false then return b end
  if st.saw_body then fail("cannot call body() after body streaming has started") end
  st.buffered = true
  suspend(st, "body")
  b = body_now(st, always_wrap)
  if b then return b end
end

function Handle:bodyChunks()
  local st = handle_live(self)
  return function()
    if not st.running then fail(SCOPE) end
    if st.end_stream then return nil end
    local chunk = suspend(st, "chunk")
    if chunk then return new(Buffer, st, {}) end
    return nil
  end
end

function Handle:trailers()
  local st = handle_live(self)
  if st.has_trailers then return new(Headers, st, {kind = st.dir + 2, trailers = true}) end
  if st.end_stream then return nil end
  suspend(st, "trailers")
  if st.has_trailers then return new(Headers, st, {kind = st.dir + 2, trailers = true}) end
end

-- a Lua table of headers (string or list-of-strings values) -> flat {k1, v1, k2, v2, ...}
local function flatten(t, into)
  for k, v in pairs(t) do
    if type(k) ~= "string" then fail("headers keys must be strings") end
    if type(v) == "table" then
      for _, item in ipairs(v) do
        into[#into + 1] = k
        into[#into + 1] = str_arg(item, 2, "header")
      end
    else
      into[#into + 1] = k
      into[#into + 1] = str_arg(v, 2, "header")
    end
  end
  return into
end

function Handle:respond(headers, body)
  local st = handle_live(self)
  if st.dir ~= 0 then fail("respond not currently supported in the response path") end
  if st.headers_continued then fail("respond() cannot be called if headers have been continued") end
  if type(headers) ~= "table" then
    fail(sfmt("bad argument #1 to 'respond' (table expected, got %s)", type(headers)))
  end
  local flat = flatten(headers, {})
  local status
  for i = 1, #flat, 2 do
    if flat[i] == ":status" then status = tonumber(flat[i + 1]) end
  end
  if status == nil or status < 200 or status >= 600 then fail(":status must be between 200-599") end
  if body ~= nil then body = str_arg(body, 2, "respond") end
  p_respond(status, body, unpack(flat))
  suspend(st, "responded")  -- never resumed: the script ends here, as in Envoy
end

function Handle:httpCall(cluster, headers, body, timeout_or_options, asynchronous)
  local st = handle_live(self)
  cluster = str_arg(cluster, 1, "httpCall")
  if type(headers) ~= "table" then
    fail(sfmt("bad argument #2 to 'httpCall' (table expected, got %s)", type(headers)))
  end
  local timeout_ms, async, dup = 0, false, false
  if type(timeout_or_options) == "table" then
    local o = timeout_or_options
    timeout_ms = tonumber(o.timeout_ms) or 0
    async = o.asynchronous == true
    dup = o.return_duplicate_headers == true
  else
    timeout_ms = tonumber(timeout_or_options)
    if timeout_ms == nil then fail("bad argument #4 to 'httpCall' (number expected)") end
    async = asynchronous == true
  end
  if timeout_ms < 0 then fail("http call timeout must be >= 0") end
  if body ~= nil then body = str_arg(body, 3, "httpCall") end
  local flat = flatten(headers, {})
  local have = {}
  for i = 1, #flat, 2 do have[flat[i]] = true end
  if not (have[":path"] and have[":method"] and have[":authority"]) then
    fail("http call headers must include ':path', ':method', and ':authority'")
  end
  local id, err = p_call(cluster, body or "", floor(timeout_ms), async, unpack(flat))
  if id == nil then fail(err) end
  if async then return end
  local result = suspend(st, "call")
  -- result: flat response headers and body, stored by the driver
  local out = {}
  local rh = result.headers
  for i = 1, #rh, 2 do
    local k, v = rh[i], rh[i + 1]
    local have_v = out[k]
    if dup and have_v ~= nil then
      if type(have_v) == "table" then have_v[#have_v + 1] = v else out[k] = {have_v, v} end
    else
      out[k] = v
    end
  end
  return out, result.body
end

function Handle:streamInfo() return new(StreamInfo, handle_live(self), {}) end
function Handle:connection() return new(Connection, handle_live(self), {}) end
function Handle:metadata() return new(Metadata, handle_live(self), {}) end
function Handle:filterContext() handle_live(self) return {} end
function Handle:clearRouteCache() handle_live(self) end
function Handle:base64Escape(s)
  handle_live(self)
  return p_b64(str_arg(s, 1, "base64Escape"))
end
function Handle:timestamp(resolution)
  handle_live(self)
  return p_now(RES_MS)
end
function Handle:timestampString(resolution)
  handle_live(self)
  return tostring(p_now(resolution == RES_US and RES_US or RES_MS))
end

-- ---- loading a script ---------------------------------------------------------------------------------
local drv = {}
local on = {}  -- [0] = envoy_on_request, [1] = envoy_on_response

-- Compile and run the script's chunk in the sandbox; returns (nil, error) or (has_request, has_response).
function drv.load(code, units)
  if sbyte(code, 1) == 27 then return nil, "precompiled bytecode is not accepted" end
  local chunk, err = loadstring(code)
  if not chunk then return nil, err end
  setfenv(chunk, sandbox)
  budget = units
  local ok, run_err = pcall(chunk)
  budget = huge
  if not ok then
    collect()
    return nil, tostring(run_err)
  end
  local req, resp = rawget(sandbox, "envoy_on_request"), rawget(sandbox, "envoy_on_response")
  on[0] = type(req) == "function" and req or nil
  on[1] = type(resp) == "function" and resp or nil
  return on[0] ~= nil, on[1] ~= nil
end

-- ---- the driver: one call per chain event, returns (action, budget left) --------------------------------
-- After the coroutine ran: what the chain does with the frame that triggered it. `frame` is "headers",
-- "data" or "trailers" (Envoy's decodeHeaders / decodeData / decodeTrailers outcome per state).
local function run(st, ...)
  st.running = true
  local ok, err = co_resume(st.co, ...)
  st.running = false
  if not ok then
    st.wait = "done"
    st.failed = true
    st.co = nil  -- a dead coroutine keeps its stack (and what the script allocated) until collected
    if err == BUDGET_MESSAGE or err == MEMORY_MESSAGE or err == "not enough memory" then collect() end
    p_error(type(err) == "string" and err or tostring(err))
  elseif co_status(st.co) == "dead" then
    st.wait = "done"
    st.co = nil
  end
  st.epoch = st.epoch + 1
end

local streams = {}  -- key -> st, while its coroutine may still run

local function after(st, frame)
  local w = st.wait
  if w == "done" then
    streams[st.key] = nil
    st.headers_continued = true
    st.trailers_continued = true
    return DONE
  end
  if frame == "headers" then
    if w == "body" or w == "call" or w == "responded" then return STOP end
    st.headers_continued = true
    return CONTINUE
  elseif frame == "data" then
    if w == "call" or w == "body" then return BUFFER end
    if w == "responded" then return NO_BUFFER end
    st.headers_continued = true
    return CONTINUE
  end
  if w == "call" or w == "responded" then return STOP end
  st.headers_continued = true
  st.trailers_continued = true
  return CONTINUE
end

function drv.headers(key, dir, end_stream, units)
  local st = {key = key, dir = dir, epoch = 0, end_stream = end_stream, saw_body = false, buffered = false,
              has_trailers = false, headers_continued = false, trailers_continued = false, running = false,
              wait = "done"}
  streams[key] = st
  st.co = co_create(on[dir])
  budget = units
  run(st, setmetatable({st = st}, Handle))
  local action = after(st, "headers")
  local left = budget
  budget = huge
  return action, left
end

function drv.data(key, end_stream, units)
  local st = streams[key]
  if st == nil then return DONE, units end
  st.end_stream = end_stream
  st.saw_body = true
  local w = st.wait
  budget = units
  if w == "chunk" then
    run(st, true)
  elseif (w == "body" or w == "trailers") and end_stream then
    run(st)
  end
  local action = after(st, "data")
  local left = budget
  budget = huge
  return action, left
end

function drv.trailers(key, units)
  local st = streams[key]
  if st == nil then return DONE, units end
  st.end_stream = true
  st.has_trailers = true
  budget = units
  local w = st.wait
  if w == "chunk" or w == "body" then run(st) end
  if st.wait == "trailers" then run(st) end
  local action = after(st, "trailers")
  local left = budget
  budget = huge
  return action, left
end

-- An http call of this stream finished: resume with its response. Returns (continue?, budget left):
-- true when the chain may go on (the script ended or waits for something that does not hold the stream).
function drv.call_done(key, units, body, ...)
  local st = streams[key]
  if st == nil or st.wait ~= "call" then return false, units end
  budget = units
  run(st, {headers = {...}, body = body})
  local left = budget
  budget = huge
  local w = st.wait
  if w == "done" then streams[key] = nil end
  if w == "call" or w == "body" or w == "responded" then return false, left end
  st.headers_continued = true
  return true, left
end

-- the stream is over: a script still suspended (waiting for a body that never came) is dropped
function drv.release(key)
  streams[key] = nil
end

return drv
