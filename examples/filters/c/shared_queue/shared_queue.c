/* shared_queue: stream contexts enqueue, the root context dequeues when the host says the queue is ready.
 *
 * The root registers queue "c_requests" at start. Each request enqueues "<method> <path>" (the response gets
 * `x-queued: yes`); the root's proxy_on_queue_ready drains the queue, logging "dequeued <item> (total N)".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_wasm.h"

static const char QUEUE[] = "c_requests";
static uint32_t queue_id;
static int total;

PW_EXPORT(proxy_on_context_create) void on_context_create(uint32_t id, uint32_t parent) { (void)id; (void)parent; }

PW_EXPORT(proxy_on_vm_start) int32_t on_vm_start(uint32_t id, size_t size) { (void)id; (void)size; return 1; }

PW_EXPORT(proxy_on_configure) int32_t on_configure(uint32_t id, size_t size) {
  (void)id; (void)size;
  if (proxy_register_shared_queue(QUEUE, sizeof QUEUE - 1, &queue_id) != PW_OK) {
    pw_logf(PW_ERROR, "shared_queue: cannot register %s", QUEUE);
    return 0;
  }
  pw_logf(PW_INFO, "shared_queue: registered %s", QUEUE);
  return 1;
}

PW_EXPORT(proxy_on_queue_ready) void on_queue_ready(uint32_t root_id, uint32_t id) {
  (void)root_id;
  for (;;) {
    char *item = NULL;
    size_t size = 0;
    int32_t rc = proxy_dequeue_shared_queue(id, &item, &size);
    if (rc != PW_OK) {
      free(item);
      if (rc != PW_EMPTY) pw_logf(PW_WARN, "shared_queue: dequeue failed: %d", (int)rc);
      return;
    }
    total++;
    pw_logf(PW_INFO, "shared_queue: dequeued %.*s (total %d)", (int)size, item ? item : "", total);
    free(item);
  }
}

PW_EXPORT(proxy_on_request_headers) int32_t on_request_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  uint32_t q = 0;
  if (proxy_resolve_shared_queue("", 0, QUEUE, sizeof QUEUE - 1, &q) != PW_OK) {
    pw_logf(PW_ERROR, "shared_queue: %s not found", QUEUE);
    return PW_CONTINUE;
  }
  char *method = pw_header_get(PW_REQUEST_HEADERS, ":method");
  char *path = pw_header_get(PW_REQUEST_HEADERS, ":path");
  char item[512];
  int len = snprintf(item, sizeof item, "%s %s", method ? method : "?", path ? path : "?");
  free(method);
  free(path);
  if (len < 0) return PW_CONTINUE;
  if ((size_t)len >= sizeof item) len = sizeof item - 1;
  int32_t rc = proxy_enqueue_shared_queue(q, item, (size_t)len);
  pw_logf(PW_DEBUG, "shared_queue: enqueued %s (%d)", item, (int)rc);
  return PW_CONTINUE;
}

PW_EXPORT(proxy_on_response_headers) int32_t on_response_headers(uint32_t id, size_t n, int eos) {
  (void)id; (void)n; (void)eos;
  pw_header_set(PW_RESPONSE_HEADERS, "x-queued", "yes");
  return PW_CONTINUE;
}
