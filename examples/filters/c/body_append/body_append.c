/* body_append: append text to request and response bodies when the body ends, and log every body callback.
 *
 * Configuration: two lines, the text appended to request bodies, then the text appended to response bodies
 * (either may be empty). Content-Length is removed from a message whose body grows. Each body callback
 * logs "body_append: request body <n> bytes, end_of_stream=<0|1>" (or "response body ...") at info and
 * continues; in the callback with end_of_stream=1 the text is appended to what that callback is shown,
 * so a host that hands the last chunk and the end of stream over together shows the append in the same
 * callback as the data, and one that ends with an empty call (Envoy) appends after it.
 */
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

PW_IMPORT(proxy_set_buffer_bytes)
int32_t proxy_set_buffer_bytes(int32_t type, size_t start, size_t size, const char *value, size_t value_size);

static char request_text[256];
static char response_text[256];

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }
PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

static void copy_line(char *dst, size_t cap, const char *src, size_t len) {
  if (len >= cap) len = cap - 1;
  memcpy(dst, src, len);
  dst[len] = '\0';
}

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, NULL);
  if (config == NULL) {
    pw_logf(PW_ERROR, "body_append: bad configuration: expected two lines (request text, response text)");
    return 0;
  }
  char *nl = strchr(config, '\n');
  if (nl == NULL) {
    pw_logf(PW_ERROR, "body_append: bad configuration: expected two lines (request text, response text)");
    free(config);
    return 0;
  }
  copy_line(request_text, sizeof request_text, config, (size_t)(nl - config));
  copy_line(response_text, sizeof response_text, nl + 1, strcspn(nl + 1, "\n"));
  pw_logf(PW_INFO, "body_append: request +%zu bytes, response +%zu bytes", strlen(request_text), strlen(response_text));
  free(config);
  return 1;
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  if (request_text[0]) proxy_remove_header_map_value(PW_REQUEST_HEADERS, "content-length", 14);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_response_headers) int32_t on_response_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  if (response_text[0]) proxy_remove_header_map_value(PW_RESPONSE_HEADERS, "content-length", 14);
  return PW_CONTINUE;
}

static int32_t body(const char *what, pw_buffer type, const char *text, size_t size, int eos) {
  pw_logf(PW_INFO, "body_append: %s body %zu bytes, end_of_stream=%d", what, size, eos ? 1 : 0);
  if (eos && text[0]) proxy_set_buffer_bytes(type, size, 0, text, strlen(text));
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_request_body) int32_t on_request_body(uint32_t id, size_t size, int eos) {
  (void)id;
  return body("request", PW_REQUEST_BODY, request_text, size, eos);
}

PW_EXPORT(proxy_on_response_body) int32_t on_response_body(uint32_t id, size_t size, int eos) {
  (void)id;
  return body("response", PW_RESPONSE_BODY, response_text, size, eos);
}
