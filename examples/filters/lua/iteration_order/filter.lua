-- pairs(headers) walks the map in order: as received, then what was added. Adding a value to a header
-- that Envoy keeps inline (accept) joins the existing entry; replace and remove+add move a header last.
-- (Pseudo-headers and the proxy's own x-forwarded-proto / x-request-id are left out of the listing.)
local function names(handle, h)
  local out = {}
  for k, v in pairs(h) do
    if k:sub(1, 1) ~= ":" and k ~= "x-forwarded-proto" and k ~= "x-request-id" and k ~= "x-echo-case" then
      out[#out + 1] = k .. "=" .. v
    end
  end
  return table.concat(out, " ")
end

function envoy_on_request(handle)
  local h = handle:headers()
  handle:logInfo("before: " .. names(handle, h))
  h:add("x-b", "2")
  h:add("x-a", "again")
  h:add("accept", "text/lua")
  h:replace("x-c", "replaced")
  h:remove("x-d")
  h:add("x-d", "back")
  h:add("x-e", "new")
  handle:logInfo("after: " .. names(handle, h))
  local ok, err = pcall(function() for k in pairs(h) do h:add("x-in-loop", k) end end)
  handle:logWarn("add while iterating: " .. tostring(ok) .. " " .. tostring(err))
end
