/* path_rewrite: rewrite the request path with a POSIX extended regex from the configuration.
 *
 * Configuration: two lines: the pattern (matched against the whole :path, query included), then the
 * replacement, where \0..\9 stand for the match and its groups. A matching request goes upstream with the new
 * path and `x-original-path`; others pass unchanged. A pattern that does not compile is refused at start.
 */
#include <regex.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

static regex_t pattern;
static int compiled;
static char replacement[512];

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }
PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, NULL);
  char *nl = config ? strchr(config, '\n') : NULL;
  if (nl == NULL) {
    pw_logf(PW_ERROR, "path_rewrite: bad configuration: expected two lines (pattern, replacement)");
    free(config);
    return 0;
  }
  *nl = '\0';
  char *repl = nl + 1;
  size_t repl_len = strcspn(repl, "\n");
  if (repl_len >= sizeof replacement) repl_len = sizeof replacement - 1;
  memcpy(replacement, repl, repl_len);
  replacement[repl_len] = '\0';
  if (compiled) regfree(&pattern);
  int rc = regcomp(&pattern, config, REG_EXTENDED);
  if (rc != 0) {
    char why[128];
    regerror(rc, &pattern, why, sizeof why);
    pw_logf(PW_ERROR, "path_rewrite: bad configuration: pattern %s: %s", config, why);
    compiled = 0;
    free(config);
    return 0;
  }
  compiled = 1;
  pw_logf(PW_INFO, "path_rewrite: %s -> %s", config, replacement);
  free(config);
  return 1;
}

/* expand the replacement with the groups of `m` over `subject` into out (size cap) */
static void expand(const char *subject, const regmatch_t *m, char *out, size_t cap) {
  size_t o = 0;
  for (const char *r = replacement; *r && o + 1 < cap; r++) {
    if (r[0] == '\\' && r[1] >= '0' && r[1] <= '9') {
      const regmatch_t *g = &m[r[1] - '0'];
      r++;
      if (g->rm_so < 0) continue;
      for (regoff_t i = g->rm_so; i < g->rm_eo && o + 1 < cap; i++) out[o++] = subject[i];
    } else {
      out[o++] = *r;
    }
  }
  out[o] = '\0';
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  char *path = pw_header_get(PW_REQUEST_HEADERS, ":path");
  if (path == NULL || !compiled) {
    free(path);
    return PW_CONTINUE;
  }
  regmatch_t m[10];
  if (regexec(&pattern, path, 10, m, 0) == 0) {
    char rewritten[1024];
    expand(path, m, rewritten, sizeof rewritten);
    pw_header_set(PW_REQUEST_HEADERS, ":path", rewritten);
    pw_header_set(PW_REQUEST_HEADERS, "x-original-path", path);
    pw_logf(PW_INFO, "path_rewrite: %s -> %s", path, rewritten);
  } else {
    pw_logf(PW_DEBUG, "path_rewrite: %s unchanged", path);
  }
  free(path);
  return PW_CONTINUE;
}
