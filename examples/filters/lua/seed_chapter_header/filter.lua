-- Seed 004 (chapter 9): the EnvoyFilter's inline Lua, as a TrafficExtension carries it.
function envoy_on_request(request_handle)
  request_handle:logInfo(" ========= XXXXX ==========");
  request_handle:headers():add("X-ChapterName", "ExtendingIstioDataPlane");
end
