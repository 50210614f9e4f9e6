/* auth_call: pause each request while an auth service is asked by HTTP call, then resume or reject it.
 *
 * Configuration: one line, the cluster of the auth service (up to 127 bytes). Each request's headers are
 * held while "GET /check" goes to that cluster (authority "auth", the request's authorization header when it
 * has one, its path in x-original-path; timeout 5 s). A 2xx answer resumes the request, copying the answer's
 * x-auth-user header onto it; any other status rejects the request with that status, the body
 * "denied by auth_call\n" and x-auth-by: auth_call; a failed dispatch or no answer rejects it with 503.
 */
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

PW_IMPORT(proxy_http_call)
int32_t proxy_http_call(const char *upstream, size_t upstream_size, const char *headers, size_t headers_size,
                        const char *body, size_t body_size, const char *trailers, size_t trailers_size,
                        uint32_t timeout_ms, uint32_t *token);
PW_IMPORT(proxy_set_effective_context) int32_t proxy_set_effective_context(uint32_t id);
PW_IMPORT(proxy_continue_stream) int32_t proxy_continue_stream(int32_t stream);

#define PENDING 1024

static char cluster[128];
static struct { uint32_t token, context; } pending[PENDING];  /* slot = token % PENDING; context 0 = free */

static void reject(int32_t status) {
  static const char *const headers[] = {"x-auth-by", "auth_call", "content-type", "text/plain"};
  char map[128];
  size_t map_size = pw_headers_serialize(headers, 2, map, sizeof map);
  static const char body[] = "denied by auth_call\n";
  proxy_send_local_response(status, "auth_call", 9, body, sizeof body - 1, map, map_size, -1);
}

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }
PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, NULL);
  size_t len = config ? strcspn(config, "\n") : 0;
  if (len == 0 || len >= sizeof cluster) {
    pw_logf(PW_ERROR, "auth_call: bad configuration: expected the auth cluster's name");
    free(config);
    return 0;
  }
  memcpy(cluster, config, len);
  cluster[len] = '\0';
  free(config);
  pw_logf(PW_INFO, "auth_call: checking requests with cluster %s", cluster);
  return 1;
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)n; (void)eos;
  char *path = pw_header_get(PW_REQUEST_HEADERS, ":path");
  char *auth = pw_header_get(PW_REQUEST_HEADERS, "authorization");
  const char *kv[] = {":method", "GET", ":path", "/check", ":authority", "auth",
                      "x-original-path", path ? path : "", "authorization", auth ? auth : ""};
  char map[2048];
  size_t map_size = pw_headers_serialize(kv, auth ? 5 : 4, map, sizeof map);
  free(path);
  free(auth);
  uint32_t token = 0;
  if (map_size == 0 ||
      proxy_http_call(cluster, strlen(cluster), map, map_size, NULL, 0, NULL, 0, 5000, &token) != PW_OK) {
    pw_logf(PW_ERROR, "auth_call: dispatch to %s failed", cluster);
    reject(503);
    return PW_PAUSE;
  }
  pending[token % PENDING].token = token;
  pending[token % PENDING].context = id;
  return PW_PAUSE;
}

PW_EXPORT(proxy_on_http_call_response)
void on_http_call_response(uint32_t root, uint32_t token, uint32_t headers, uint32_t body, uint32_t trailers) {
  (void)root; (void)body; (void)trailers;
  uint32_t context = pending[token % PENDING].token == token ? pending[token % PENDING].context : 0;
  if (context == 0) return;
  pending[token % PENDING].context = 0;
  proxy_set_effective_context(context);
  char *status = headers ? pw_header_get(PW_HTTP_CALL_RESPONSE_HEADERS, ":status") : NULL;
  int code = status ? atoi(status) : 0;
  free(status);
  if (code == 0) {
    pw_logf(PW_WARN, "auth_call: no answer from %s", cluster);
    reject(503);
    return;
  }
  if (code < 200 || code > 299) {
    pw_logf(PW_INFO, "auth_call: rejected with %d", code);
    reject(code);
    return;
  }
  char *user = pw_header_get(PW_HTTP_CALL_RESPONSE_HEADERS, "x-auth-user");
  if (user != NULL) pw_header_set(PW_REQUEST_HEADERS, "x-auth-user", user);
  pw_logf(PW_INFO, "auth_call: allowed %s", user ? user : "(no user)");
  free(user);
  proxy_continue_stream(0);
}
