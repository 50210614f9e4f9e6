-- Local replies with handle:respond(): status, headers (a list value gives a header twice), body; the
-- reply goes back through this filter's own envoy_on_response; :status must be 200-599.
function envoy_on_request(handle)
  local path = handle:headers():get(":path")
  if path == "/deny" then
    handle:respond({[":status"] = "403", ["x-denied-by"] = "lua", ["x-reason"] = {"one", "two"}}, "denied by lua")
    handle:logErr("not reached: respond() ends the script")
  elseif path == "/html" then
    handle:respond({[":status"] = "418", ["content-type"] = "text/html"}, "<p>teapot</p>")
  elseif path == "/empty" then
    handle:respond({[":status"] = "204", ["x-empty"] = "1"})
  elseif path == "/after-body" then
    local body = handle:body()
    handle:respond({[":status"] = "200", ["x-echoed"] = "1"}, "you sent: " .. body:getBytes(0, body:length()))
  elseif path == "/bad-status" then
    local ok, err = pcall(function() handle:respond({[":status"] = "99"}, "x") end)
    handle:logWarn("respond 99: " .. tostring(ok) .. " " .. tostring(err))
  end
end

function envoy_on_response(handle)
  handle:headers():add("x-seen-by-response", handle:headers():get(":status"))
end
