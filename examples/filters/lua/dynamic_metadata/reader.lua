-- Second filter: reads the first one's metadata on the request and again on the response.
function envoy_on_request(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("meshplug.lua.auth")
  if meta == nil then
    handle:logWarn("no metadata")
    return
  end
  local info = meta["request.info"]
  local h = handle:headers()
  h:add("x-tenant-seen", info.tenant)
  h:add("x-trusted", tostring(info.trusted))
  h:add("x-scopes", table.concat(info.scopes, "+") .. " (" .. #info.scopes .. ")")
  h:add("x-weight", tostring(info.weight * 2))
  h:add("x-count", tostring(meta.count))
  local names = {}
  for name, value in pairs(handle:streamInfo():dynamicMetadata()) do names[#names + 1] = name .. ":" .. type(value) end
  handle:logInfo("namespaces " .. table.concat(names, ","))
  handle:logInfo("absent namespace gives " .. select("#", handle:streamInfo():dynamicMetadata():get("nobody")) .. " value(s)")
end

function envoy_on_response(handle)
  local meta = handle:streamInfo():dynamicMetadata():get("meshplug.lua.auth")
  handle:headers():add("x-tenant", meta["request.info"].tenant)
end
