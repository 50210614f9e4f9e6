-- Bodies: body() waits for the whole body (headers held until then, content-length follows setBytes);
-- bodyChunks() sees each chunk as it streams by and may change it; body(true) wraps an absent body.
function envoy_on_request(handle)
  local path = handle:headers():get(":path")
  if path == "/upper" then
    local body = handle:body()
    local text = body:getBytes(0, body:length())
    body:setBytes(string.upper(text))
    handle:headers():add("x-original-length", #text)  -- headers made after the wait are live
  elseif path == "/size" then
    local size = handle:body():length()  -- the seed's intent, done in this order
    handle:headers():add("x-request-size", size)
  elseif path == "/chunks" then
    local seen = 0
    for chunk in handle:bodyChunks() do  -- however the bytes are split, each chunk is changed as it passes
      seen = seen + chunk:length()
      chunk:setBytes(string.upper(chunk:getBytes(0, chunk:length())))
    end
    handle:logInfo("streamed " .. seen .. " bytes")
  elseif path == "/none" then
    handle:logInfo("body(): " .. select("#", handle:body()) .. " value(s); body(true) length " .. handle:body(true):length())
  end
end

function envoy_on_response(handle)
  local mode = handle:headers():get("x-mode")
  if mode == "html" then
    local body = handle:body()
    body:setBytes("<html>" .. body:getBytes(0, body:length()) .. "</html>")
    handle:headers():replace("content-type", "text/html")
  elseif mode == "slice" then
    local body = handle:body()
    handle:headers():add("x-slice", body:getBytes(2, 3))
    local ok, err = pcall(function() return body:getBytes(4, 100) end)
    handle:logWarn("past the end: " .. tostring(ok) .. " " .. tostring(err))
  end
end
