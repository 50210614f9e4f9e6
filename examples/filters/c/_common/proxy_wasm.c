/* Shared part of every C plugin: the ABI version marker, the allocator export and the helpers declared in
 * proxy_wasm.h. Linked into each plugin by build.sh. */
#include "proxy_wasm.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

PW_EXPORT(proxy_abi_version_0_2_1) void proxy_abi_version_0_2_1(void) {}

/* the host writes returned data into memory it gets from here; helpers free it */
PW_EXPORT(proxy_on_memory_allocate) void *proxy_on_memory_allocate(size_t size) { return malloc(size); }

void pw_logf(pw_log_level level, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t len = (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
  proxy_log(level, buf, len);
}

/* copy host-returned bytes into a NUL-terminated block and release the host's block */
static char *terminated(char *data, size_t size) {
  char *out = malloc(size + 1);
  if (out == NULL) {
    free(data);
    return NULL;
  }
  if (size) memcpy(out, data, size);
  out[size] = '\0';
  free(data);
  return out;
}

char *pw_buffer_get(pw_buffer type, size_t *size) {
  char *data = NULL;
  size_t len = 0;
  if (proxy_get_buffer_bytes(type, 0, 0x7fffffff, &data, &len) != PW_OK || data == NULL || len == 0) {
    free(data);
    if (size) *size = 0;
    return NULL;
  }
  if (size) *size = len;
  return terminated(data, len);
}

char *pw_header_get(pw_map map, const char *name) {
  char *data = NULL;
  size_t len = 0;
  if (proxy_get_header_map_value(map, name, strlen(name), &data, &len) != PW_OK) {
    free(data);
    return NULL;
  }
  return terminated(data, len);
}

int32_t pw_header_add(pw_map map, const char *name, const char *value) {
  return proxy_add_header_map_value(map, name, strlen(name), value, strlen(value));
}

int32_t pw_header_set(pw_map map, const char *name, const char *value) {
  return proxy_replace_header_map_value(map, name, strlen(name), value, strlen(value));
}

size_t pw_headers_serialize(const char *const *kv, int n, char *out, size_t cap) {
  size_t need = 4 + (size_t)n * 8;
  for (int i = 0; i < 2 * n; i++) need += strlen(kv[i]) + 1;
  if (need > cap) return 0;
  uint32_t *sizes = (uint32_t *)out;
  sizes[0] = (uint32_t)n;
  char *p = out + 4 + (size_t)n * 8;
  for (int i = 0; i < 2 * n; i++) {
    size_t len = strlen(kv[i]);
    sizes[1 + i] = (uint32_t)len;
    memcpy(p, kv[i], len + 1);
    p += len + 1;
  }
  return need;
}

char *pw_property_get(const char *dotted, size_t *size) {
  size_t n = strlen(dotted);
  char *path = malloc(n + 1);
  if (path == NULL) return NULL;
  for (size_t i = 0; i <= n; i++) path[i] = dotted[i] == '.' ? '\0' : dotted[i];
  char *data = NULL;
  size_t len = 0;
  int32_t rc = proxy_get_property(path, n, &data, &len);
  free(path);
  if (rc != PW_OK) {
    free(data);
    return NULL;
  }
  if (size) *size = len;
  return terminated(data, len);
}
