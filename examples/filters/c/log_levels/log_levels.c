/* log_levels: log one line at each proxy_log level for every request, plus lines at start and at the end.
 *
 * For a request to PATH it logs "<level> line for PATH" at trace, debug, info, warn, error and critical, and
 * "done with PATH" from proxy_on_log. The configuration string, if any, is logged at start.
 */
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

#define MAX_STREAMS 64
static struct { uint32_t id; char path[256]; } streams[MAX_STREAMS];

static const char *LEVEL_NAMES[] = {"trace", "debug", "info", "warn", "error", "critical"};

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) {
  if (parent != 0) streams[id % MAX_STREAMS].id = id;
}
PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, NULL);
  pw_logf(PW_INFO, "log_levels: started with configuration '%s'", config ? config : "");
  free(config);
  return 1;
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)n; (void)eos;
  char *path = pw_header_get(PW_REQUEST_HEADERS, ":path");
  const char *p = path ? path : "?";
  for (int level = PW_TRACE; level <= PW_CRITICAL; level++)
    pw_logf((pw_log_level)level, "%s line for %s", LEVEL_NAMES[level], p);
  if (streams[id % MAX_STREAMS].id == id) {
    strncpy(streams[id % MAX_STREAMS].path, p, sizeof streams[0].path - 1);
  }
  free(path);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_log) void on_log(uint32_t id) {
  if (streams[id % MAX_STREAMS].id == id) pw_logf(PW_INFO, "done with %s", streams[id % MAX_STREAMS].path);
}

PW_EXPORT(proxy_on_delete) void on_delete(uint32_t id) {
  if (streams[id % MAX_STREAMS].id == id) memset(&streams[id % MAX_STREAMS], 0, sizeof streams[0]);
}
