-- httpCall() to the proxy's clusters: synchronous (the script waits; the request is held meanwhile, then
-- changed with the answer or refused), asynchronous (fire and forget), and a cluster that does not exist.
function envoy_on_request(handle)
  local path = handle:headers():get(":path")
  if path == "/unknown-cluster" then
    local ok, err = pcall(function()
      return handle:httpCall("nope", {[":method"] = "GET", [":path"] = "/", [":authority"] = "nope"}, nil, 1000)
    end)
    handle:logWarn("unknown cluster: " .. tostring(ok) .. " " .. tostring(err))
    local ok2, err2 = pcall(function()
      return handle:httpCall("authz", {[":method"] = "GET", [":authority"] = "authz"}, nil, 1000)
    end)
    handle:logWarn("no path: " .. tostring(ok2) .. " " .. tostring(err2))
    return
  end
  if path == "/async" then
    local r = {handle:httpCall("tally", {[":method"] = "POST", [":path"] = "/hit", [":authority"] = "tally"},
                               "fire", {asynchronous = true, timeout_ms = 2000})}
    handle:logInfo("async call returned " .. #r .. " value(s)")
    return
  end
  if path == "/tally" then
    local headers, body = handle:httpCall("tally", {[":method"] = "GET", [":path"] = "/count", [":authority"] = "tally"},
                                          nil, 2000)
    handle:headers():add("x-tally", body)
    return
  end
  local token = handle:headers():get("authorization")
  local auth = {[":method"] = "GET", [":path"] = "/check", [":authority"] = "authz"}
  if token then auth["authorization"] = token end
  local headers, body = handle:httpCall("authz", auth, nil, 2000)
  handle:logInfo("authz answered " .. headers[":status"] .. " body=" .. tostring(body))
  if headers[":status"] ~= "200" then
    handle:respond({[":status"] = headers[":status"], ["x-auth"] = "lua"}, "auth said " .. headers[":status"])
  end
  handle:headers():add("x-user", headers["x-auth-user"])
end
