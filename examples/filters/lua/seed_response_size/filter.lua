-- Seed 004's first Lua example (the Envoy Lua filter snippet), with its two typos fixed
-- (`response_handle:headers:add` -> `response_handle:headers():add`); the verbatim text is
-- broken.lua, which Envoy and meshplug both refuse to load.
function envoy_on_request(request_handle)
  -- Do something on the request path.
  request_handle:headers():add("NewHeader", "XYZ")
end
function envoy_on_response(response_handle)
  -- Do something on the response path.
  response_handle:logInfo("Log something")
  response_handle:headers():add("response_size", response_handle:body():length())
  response_handle:headers():remove("proxy")
end
