-- Header edits both ways with Envoy's header object: get (values joined with ","), getAtIndex (0-based),
-- getNumValues, add (a second value; an inline header such as accept coalesces into one "a,b" entry),
-- replace (every value goes, one new value), remove; names are case-insensitive, numbers become strings.
local function shown(...)  -- get() and getAtIndex() return nothing at all (not nil) for a missing value
  if select("#", ...) == 0 then return "nothing" end
  return tostring((...))
end

function envoy_on_request(handle)
  local h = handle:headers()
  handle:logInfo("x-tag=" .. shown(h:get("x-tag")) .. " n=" .. h:getNumValues("x-tag")
    .. " first=" .. shown(h:getAtIndex("x-tag", 0)) .. " absent=" .. shown(h:get("x-none"))
    .. " past-end=" .. shown(h:getAtIndex("x-tag", 9)) .. " upper=" .. shown(h:get("X-TAG")))
  h:add("x-lua-added", "yes")
  h:add("X-Lua-Number", 42)
  h:add("accept", "text/lua")
  h:replace("x-mode", "rewritten")
  h:remove("x-secret")
  if h:get(":path") == "/rewrite" then
    h:replace(":path", "/rewritten?by=lua")
  end
end

function envoy_on_response(handle)
  local h = handle:headers()
  h:add("x-lua-response", "status-" .. h:get(":status"))
  h:replace("cache-control", "no-store")
  h:remove("x-internal")
  h:add("vary", "x-lua")
end
