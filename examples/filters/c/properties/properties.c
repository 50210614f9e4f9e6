/* properties: read host properties and echo them into headers.
 *
 * On request headers every property below goes upstream as request header x-prop-<name> (dots and
 * underscores become dashes); on response headers the same properties, read again, go to the client as
 * response headers. Strings are copied as is, 8-byte integers (ports) printed in decimal, missing ones as "-".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

static const struct { const char *path; int integer; } PROPS[] = {
    {"request.path", 0},   {"request.method", 0},   {"request.protocol", 0},  {"source.address", 0},
    {"source.port", 1},    {"destination.port", 1}, {"plugin_name", 0},       {"plugin_root_id", 0},
    {"plugin_vm_id", 0},   {"xds.cluster_name", 0}, {"xds.route_name", 0},    {"xds.listener_direction", 1},
};

static void header_name(const char *path, char *out, size_t cap) {
  size_t o = (size_t)snprintf(out, cap, "x-prop-");
  for (const char *p = path; *p && o + 1 < cap; p++) out[o++] = (*p == '.' || *p == '_') ? '-' : *p;
  out[o] = '\0';
}

static void echo(pw_map map) {
  for (size_t i = 0; i < sizeof PROPS / sizeof PROPS[0]; i++) {
    size_t size = 0;
    char *value = pw_property_get(PROPS[i].path, &size);
    char text[256], name[64];
    if (value == NULL) {
      snprintf(text, sizeof text, "-");
    } else if (PROPS[i].integer && size == 8) {
      int64_t v;
      memcpy(&v, value, 8);
      snprintf(text, sizeof text, "%" PRId64, v);
    } else {
      snprintf(text, sizeof text, "%s", value);
    }
    free(value);
    header_name(PROPS[i].path, name, sizeof name);
    pw_header_set(map, name, text);
  }
}

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }
PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id; (void)size;
  char *name = pw_property_get("plugin_name", NULL);
  char *root = pw_property_get("plugin_root_id", NULL);
  pw_logf(PW_INFO, "properties: plugin_name=%s plugin_root_id=%s", name ? name : "-", root ? root : "-");
  free(name);
  free(root);
  return 1;
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  echo(PW_REQUEST_HEADERS);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_response_headers) int32_t on_response_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  echo(PW_RESPONSE_HEADERS);
  return PW_CONTINUE;
}
