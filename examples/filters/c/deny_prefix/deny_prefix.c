/* deny_prefix: answer requests under denied path prefixes with a local 403 that never reaches the upstream.
 *
 * Configuration: one path prefix per line (up to 16, each under 256 bytes); empty lines are skipped and no
 * prefix at all is refused at start. A request whose :path starts with a prefix gets 403 with the body
 * "denied by deny_prefix\n" and the headers x-denied-by: deny_prefix, content-type: text/plain.
 */
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

#define MAX_PREFIXES 16

static char prefixes[MAX_PREFIXES][256];
static int count;

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }
PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, NULL);
  count = 0;
  for (char *line = config; line != NULL && *line && count < MAX_PREFIXES;) {
    size_t len = strcspn(line, "\n");
    if (len > 0 && len < sizeof prefixes[0]) {
      memcpy(prefixes[count], line, len);
      prefixes[count++][len] = '\0';
    }
    line += len;
    if (*line == '\n') line++;
  }
  free(config);
  if (count == 0) {
    pw_logf(PW_ERROR, "deny_prefix: bad configuration: no prefix");
    return 0;
  }
  pw_logf(PW_INFO, "deny_prefix: %d prefix(es) denied", count);
  return 1;
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  char *path = pw_header_get(PW_REQUEST_HEADERS, ":path");
  if (path == NULL) return PW_CONTINUE;
  for (int i = 0; i < count; i++) {
    if (strncmp(path, prefixes[i], strlen(prefixes[i])) == 0) {
      static const char *const headers[] = {"x-denied-by", "deny_prefix", "content-type", "text/plain"};
      char map[128];
      size_t map_size = pw_headers_serialize(headers, 2, map, sizeof map);
      static const char body[] = "denied by deny_prefix\n";
      proxy_send_local_response(403, "deny_prefix", 11, body, sizeof body - 1, map, map_size, -1);
      pw_logf(PW_INFO, "deny_prefix: denied %s (prefix %s)", path, prefixes[i]);
      free(path);
      return PW_PAUSE;
    }
  }
  free(path);
  return PW_CONTINUE;
}
