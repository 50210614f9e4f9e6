/* env_vars: read VM environment variables (WASI environ) and expose them.
 *
 * At VM start it reads GREETING and TARGET (logging "GREETING=<value>" or "GREETING unset"); each response
 * carries `x-env-greeting` and `x-env-target` (value, or "-" when unset). A plugin configuration
 * "require NAME[,NAME...]" refuses to start (proxy_on_configure returns 0) unless every NAME is set.
 */
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

static const char *greeting;
static const char *target;

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }

PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) {
  (void)id; (void)size;
  greeting = getenv("GREETING");
  target = getenv("TARGET");
  if (greeting) pw_logf(PW_INFO, "env_vars: GREETING=%s", greeting);
  else pw_logf(PW_INFO, "env_vars: GREETING unset");
  return 1;
}

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id; (void)size;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, NULL);
  int ok = 1;
  if (config && strncmp(config, "require ", 8) == 0) {
    for (char *name = strtok(config + 8, ","); name != NULL; name = strtok(NULL, ",")) {
      if (getenv(name) == NULL) {
        pw_logf(PW_ERROR, "env_vars: %s is required but unset", name);
        ok = 0;
      }
    }
  }
  free(config);
  return ok;
}

PW_EXPORT(proxy_on_response_headers) int32_t on_response_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  pw_header_set(PW_RESPONSE_HEADERS, "x-env-greeting", greeting ? greeting : "-");
  pw_header_set(PW_RESPONSE_HEADERS, "x-env-target", target ? target : "-");
  return PW_CONTINUE;
}
