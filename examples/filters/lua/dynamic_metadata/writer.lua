-- First filter: records what it learnt about the request as dynamic metadata for the filters after it.
function envoy_on_request(handle)
  local h = handle:headers()
  handle:streamInfo():dynamicMetadata():set("meshplug.lua.auth", "request.info", {
    tenant = h:get("x-tenant") or "none",
    weight = 2.5,
    trusted = h:get("x-tenant") == "acme",
    scopes = {"read", "write"},
  })
  handle:streamInfo():dynamicMetadata():set("meshplug.lua.auth", "count", 7)
end
