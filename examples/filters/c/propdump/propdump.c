/* propdump: log the raw bytes of a list of properties in every callback, for comparing hosts path by path.
 *
 * Configuration: one property path per line, segments separated by dots ("request.path"); a segment in
 * brackets keeps its dots ("xds.route_metadata.filter_metadata.[envoy.lb]"). Empty lines and lines starting
 * with '#' are skipped. In each callback (HTTP: rh rb sh sb lg; network: nc dd ud; root: tick) every path is
 * read with proxy_get_property and logged at info as "prop <phase> <path> = <hex>" or
 * "prop <phase> <path> ! <status>" (1 = NotFound). Works as an HTTP filter, a network filter or a singleton.
 * The VM configuration and the plugin configuration are logged as they were handed over, in hex
 * ("propdump: vm configuration <hex>", "propdump: configuration <hex>"). A line "@ticks N" makes the root
 * context dump on its first N ticks (phase "tick", every 50 ms). A line "@headers" also logs the header map
 * as proxy_get_header_map_pairs returns it (its order) in on_request_headers and on_response_headers, as
 * "headers <phase> <hex of the pairs>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

#define MAX_PATHS 128

PW_IMPORT(proxy_set_tick_period_milliseconds) int32_t proxy_set_tick_period_milliseconds(uint32_t period);
PW_IMPORT(proxy_get_header_map_pairs) int32_t proxy_get_header_map_pairs(int32_t map, char **data, size_t *size);

static char *paths[MAX_PATHS];   /* as written in the configuration */
static char *encoded[MAX_PATHS]; /* NUL-separated */
static size_t encoded_len[MAX_PATHS];
static size_t n_paths;
static int ticks_left;
static int dump_headers;

static void encode(const char *text, char **out, size_t *out_len) {
  size_t n = strlen(text);
  char *buf = malloc(n + 1);
  size_t o = 0;
  int bracket = 0;
  for (size_t i = 0; i < n; i++) {
    char c = text[i];
    if (c == '[' && !bracket) { bracket = 1; continue; }
    if (c == ']' && bracket) { bracket = 0; continue; }
    buf[o++] = (c == '.' && !bracket) ? '\0' : c;
  }
  *out = buf;
  *out_len = o;
}

static void dump(const char *phase) {
  static const char hexdigits[] = "0123456789abcdef";
  for (size_t i = 0; i < n_paths; i++) {
    char *data = NULL;
    size_t len = 0;
    int32_t rc = proxy_get_property(encoded[i], encoded_len[i], &data, &len);
    size_t cap = strlen(phase) + strlen(paths[i]) + 2 * len + 32;
    char *line = malloc(cap);
    int head = snprintf(line, cap, "prop %s %s ", phase, paths[i]);
    size_t o = (size_t)head;
    if (rc != PW_OK) {
      o += (size_t)snprintf(line + o, cap - o, "! %d", (int)rc);
    } else {
      line[o++] = '=';
      line[o++] = ' ';
      for (size_t k = 0; k < len; k++) {
        unsigned char b = (unsigned char)data[k];
        line[o++] = hexdigits[b >> 4];
        line[o++] = hexdigits[b & 15];
      }
    }
    proxy_log(PW_INFO, line, o);
    free(line);
    free(data);
  }
}

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }
static void log_hex(const char *what, const char *data, size_t len) {
  static const char hexdigits[] = "0123456789abcdef";
  size_t cap = strlen(what) + 2 * len + 32;
  char *line = malloc(cap);
  size_t o = (size_t)snprintf(line, cap, "propdump: %s ", what);
  for (size_t k = 0; k < len; k++) {
    line[o++] = hexdigits[(unsigned char)data[k] >> 4];
    line[o++] = hexdigits[(unsigned char)data[k] & 15];
  }
  proxy_log(PW_INFO, line, o);
  free(line);
}

PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  size_t len = 0;
  char *vm = pw_buffer_get(PW_VM_CONFIGURATION, &len);
  log_hex("vm configuration", vm ? vm : "", len);
  free(vm);
  return 1;
}

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  size_t config_len = 0;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, &config_len);
  if (config == NULL) {
    pw_logf(PW_ERROR, "propdump: no configuration (expected property paths, one per line)");
    return 0;
  }
  log_hex("configuration", config, config_len);
  for (char *line = strtok(config, "\n"); line != NULL && n_paths < MAX_PATHS; line = strtok(NULL, "\n")) {
    while (*line == ' ') line++;
    if (*line == '\0' || *line == '#') continue;
    if (strcmp(line, "@headers") == 0) {
      dump_headers = 1;
      continue;
    }
    if (strncmp(line, "@ticks ", 7) == 0) { /* dump from the root context on that many ticks */
      ticks_left = atoi(line + 7);
      continue;
    }
    paths[n_paths] = strdup(line);
    encode(line, &encoded[n_paths], &encoded_len[n_paths]);
    n_paths++;
  }
  free(config);
  if (ticks_left > 0) proxy_set_tick_period_milliseconds(50);
  pw_logf(PW_INFO, "propdump: %zu paths", n_paths);
  return 1;
}

PW_EXPORT(proxy_on_tick) void on_tick(uint32_t id) {
  (void)id;
  if (ticks_left <= 0) return;
  ticks_left--;
  dump("tick");
  if (ticks_left == 0) proxy_set_tick_period_milliseconds(0);
}

static void dump_map(const char *phase, int32_t map) {
  char *data = NULL;
  size_t len = 0;
  if (!dump_headers || proxy_get_header_map_pairs(map, &data, &len) != PW_OK) return;
  size_t label = strlen("headers ") + strlen(phase) + 1;
  size_t cap = label + 2 * len + 1;
  char *line = malloc(cap);
  size_t o = (size_t)snprintf(line, cap, "headers %s ", phase);
  static const char hexdigits[] = "0123456789abcdef";
  for (size_t k = 0; k < len; k++) {
    line[o++] = hexdigits[(unsigned char)data[k] >> 4];
    line[o++] = hexdigits[(unsigned char)data[k] & 15];
  }
  proxy_log(PW_INFO, line, o);
  free(line);
  free(data);
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  dump("rh");
  dump_map("rh", 0);
  return PW_CONTINUE;
}
PW_EXPORT(proxy_on_request_body) int32_t on_request_body(uint32_t id, size_t n, int eos) {
  (void)id; (void)n;
  if (eos) dump("rb");
  return PW_CONTINUE;
}
PW_EXPORT(proxy_on_response_headers) int32_t on_response_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  dump("sh");
  dump_map("sh", 2);
  return PW_CONTINUE;
}
PW_EXPORT(proxy_on_response_body) int32_t on_response_body(uint32_t id, size_t n, int eos) {
  (void)id; (void)n;
  if (eos) dump("sb");
  return PW_CONTINUE;
}
PW_EXPORT(proxy_on_log) void on_log(uint32_t id) { (void)id; dump("lg"); }

PW_EXPORT(proxy_on_new_connection) int32_t on_new_connection(uint32_t id) { (void)id; dump("nc"); return 0; }
PW_EXPORT(proxy_on_downstream_data) int32_t on_downstream_data(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  dump("dd");
  return 0;
}
PW_EXPORT(proxy_on_upstream_data) int32_t on_upstream_data(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  dump("ud");
  return 0;
}
