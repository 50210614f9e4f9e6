/* add_header: add request/response headers listed in the plugin configuration.
 *
 * Configuration: text, one rule per line: "request <name> <value>" or "response <name> <value>" (the value is
 * the rest of the line). Blank lines and lines starting with '#' are skipped. Any other line, or no rule at all,
 * is refused at start (proxy_on_configure returns 0).
 */
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

#define MAX_RULES 16

typedef struct {
  int response;
  char name[64];
  char value[192];
} rule;

static rule rules[MAX_RULES];
static int n_rules;

static int parse_line(const char *line, size_t len, rule *out) {
  const char *sp = memchr(line, ' ', len);
  if (sp == NULL) return 0;
  size_t word = (size_t)(sp - line);
  if (word == 7 && memcmp(line, "request", 7) == 0) out->response = 0;
  else if (word == 8 && memcmp(line, "response", 8) == 0) out->response = 1;
  else return 0;
  const char *name = sp + 1;
  const char *end = line + len;
  const char *sp2 = memchr(name, ' ', (size_t)(end - name));
  if (sp2 == NULL || sp2 == name || sp2 + 1 >= end) return 0;
  size_t name_len = (size_t)(sp2 - name), value_len = (size_t)(end - sp2 - 1);
  if (name_len >= sizeof out->name || value_len >= sizeof out->value) return 0;
  memcpy(out->name, name, name_len);
  out->name[name_len] = '\0';
  memcpy(out->value, sp2 + 1, value_len);
  out->value[value_len] = '\0';
  return 1;
}

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }
PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id;
  (void)size;
  size_t len = 0;
  char *config = pw_buffer_get(PW_PLUGIN_CONFIGURATION, &len);
  n_rules = 0;
  int line_no = 0, ok = 1;
  for (char *p = config; p != NULL && *p != '\0' && ok;) {
    char *nl = strchr(p, '\n');
    size_t line_len = nl ? (size_t)(nl - p) : strlen(p);
    line_no++;
    if (line_len > 0 && p[0] != '#') {
      if (n_rules == MAX_RULES || !parse_line(p, line_len, &rules[n_rules])) {
        pw_logf(PW_ERROR, "add_header: bad configuration line %d: %.*s", line_no, (int)line_len, p);
        ok = 0;
      } else {
        n_rules++;
      }
    }
    p = nl ? nl + 1 : p + line_len;
  }
  free(config);
  if (ok && n_rules == 0) {
    pw_logf(PW_ERROR, "add_header: bad configuration: no rules");
    ok = 0;
  }
  if (ok) pw_logf(PW_INFO, "add_header: %d rule(s)", n_rules);
  return ok;
}

static void apply(int response) {
  for (int i = 0; i < n_rules; i++)
    if (rules[i].response == response)
      pw_header_add(response ? PW_RESPONSE_HEADERS : PW_REQUEST_HEADERS, rules[i].name, rules[i].value);
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  apply(0);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_response_headers) int32_t on_response_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  apply(1);
  return PW_CONTINUE;
}
