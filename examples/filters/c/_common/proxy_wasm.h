/* The proxy-wasm ABI 0.2.1 as seen from a C plugin: host imports (module "env"), enums, small helpers.
 *
 * Written for this corpus from the ABI reference (no SDK). Plugins export callbacks with PW_EXPORT(name);
 * _common/proxy_wasm.c exports the ABI marker and the allocator the host uses to hand data back. Every helper
 * returning a buffer returns malloc'd memory (NUL-terminated for convenience) that the caller frees.
 */
#ifndef MESHPLUG_PROXY_WASM_H
#define MESHPLUG_PROXY_WASM_H

#include <stddef.h>
#include <stdint.h>

#define PW_EXPORT(name) __attribute__((export_name(#name))) 
#define PW_IMPORT(name) __attribute__((import_module("env"), import_name(#name)))

typedef enum { PW_OK = 0, PW_NOT_FOUND = 1, PW_BAD_ARGUMENT = 2, PW_EMPTY = 7 } pw_status;
typedef enum { PW_TRACE = 0, PW_DEBUG = 1, PW_INFO = 2, PW_WARN = 3, PW_ERROR = 4, PW_CRITICAL = 5 } pw_log_level;
typedef enum { PW_CONTINUE = 0, PW_PAUSE = 1 } pw_action;
typedef enum {
  PW_REQUEST_HEADERS = 0, PW_REQUEST_TRAILERS = 1, PW_RESPONSE_HEADERS = 2, PW_RESPONSE_TRAILERS = 3,
  PW_HTTP_CALL_RESPONSE_HEADERS = 6
} pw_map;
typedef enum {
  PW_REQUEST_BODY = 0, PW_RESPONSE_BODY = 1, PW_DOWNSTREAM_DATA = 2, PW_UPSTREAM_DATA = 3,
  PW_HTTP_CALL_RESPONSE_BODY = 4, PW_VM_CONFIGURATION = 6, PW_PLUGIN_CONFIGURATION = 7
} pw_buffer;

/* --- host imports ---------------------------------------------------------------------------------- */
PW_IMPORT(proxy_log) int32_t proxy_log(int32_t level, const char *msg, size_t size);
PW_IMPORT(proxy_get_buffer_bytes)
int32_t proxy_get_buffer_bytes(int32_t type, size_t start, size_t max, char **ret_ptr, size_t *ret_size);
PW_IMPORT(proxy_get_header_map_value)
int32_t proxy_get_header_map_value(int32_t map, const char *key, size_t key_size, char **ret_ptr, size_t *ret_size);
PW_IMPORT(proxy_add_header_map_value)
int32_t proxy_add_header_map_value(int32_t map, const char *key, size_t key_size, const char *val, size_t val_size);
PW_IMPORT(proxy_replace_header_map_value)
int32_t proxy_replace_header_map_value(int32_t map, const char *key, size_t key_size, const char *val,
                                       size_t val_size);
PW_IMPORT(proxy_remove_header_map_value)
int32_t proxy_remove_header_map_value(int32_t map, const char *key, size_t key_size);
PW_IMPORT(proxy_get_property)
int32_t proxy_get_property(const char *path, size_t path_size, char **ret_ptr, size_t *ret_size);
PW_IMPORT(proxy_register_shared_queue)
int32_t proxy_register_shared_queue(const char *name, size_t name_size, uint32_t *ret_id);
PW_IMPORT(proxy_resolve_shared_queue)
int32_t proxy_resolve_shared_queue(const char *vm_id, size_t vm_id_size, const char *name, size_t name_size,
                                   uint32_t *ret_id);
PW_IMPORT(proxy_enqueue_shared_queue)
int32_t proxy_enqueue_shared_queue(uint32_t id, const char *value, size_t value_size);
PW_IMPORT(proxy_dequeue_shared_queue)
int32_t proxy_dequeue_shared_queue(uint32_t id, char **ret_ptr, size_t *ret_size);
PW_IMPORT(proxy_send_local_response)
int32_t proxy_send_local_response(int32_t status, const char *details, size_t details_size, const char *body,
                                  size_t body_size, const char *headers, size_t headers_size, int32_t grpc_status);

/* --- helpers (proxy_wasm.c) ------------------------------------------------------------------------ */
/* printf-style proxy_log */
void pw_logf(pw_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* a whole host buffer (configuration, body), NUL-terminated; NULL when absent or empty */
char *pw_buffer_get(pw_buffer type, size_t *size);
/* first value of a header, NUL-terminated; NULL when absent */
char *pw_header_get(pw_map map, const char *name);
int32_t pw_header_add(pw_map map, const char *name, const char *value);
int32_t pw_header_set(pw_map map, const char *name, const char *value);
/* `n` (name, value) pairs `kv` in the ABI's serialized header-map form (count, sizes, then each name\0value\0) into
 * `out`; returns the bytes written, 0 when they do not fit in `cap` */
size_t pw_headers_serialize(const char *const *kv, int n, char *out, size_t cap);
/* a property by dotted path ("request.path" -> "request\0path"); NULL when missing; *size gets its length */
char *pw_property_get(const char *dotted, size_t *size);

#endif
