-- Script errors: each is logged with its line and counted (lua.<name>.errors); the script stops for that
-- stream only, and the stream goes on with what the script did before the error (Envoy answers no 500).
saved = nil

function envoy_on_request(handle)
  local h = handle:headers()
  local path = h:get(":path")
  h:add("x-before-error", "1")
  if path == "/error" then
    error("boom on " .. path)
  elseif path == "/nil" then
    local t = nil
    h:add("x-never", t.field)
  elseif path == "/after-call" then
    handle:httpCall("upstream", {[":method"] = "GET", [":path"] = "/ping", [":authority"] = "upstream"}, nil, 2000)
    handle:headers():add("x-after-call", "1")
    error("failed after the call")
  elseif path == "/stale" then
    local body = handle:body()  -- suspends: `h`, made before, is dead afterwards
    h:add("x-stale", "1")
  elseif path == "/save" then
    saved = handle
  elseif path == "/use-saved" then
    saved:headers():add("x-from-saved", "1")
  elseif path == "/late" then
    for chunk in handle:bodyChunks() do
      handle:headers():add("x-late", "1")  -- the headers went on when the script waited for a chunk
    end
  elseif path == "/bad-value" then
    h:add("x-bad", nil)
  end
end

function envoy_on_response(handle)
  if handle:headers():get(":status") == "500" then
    error("response error")
  end
  handle:headers():add("x-response-ran", "1")
end
