/*
 * meshplug.agent._wasmcall's shared declarations: what its two sources, _wasmcall.c (the guest/host call
 * boundary, the module) and _wasmstore.c (a store's State and guest memory, the epoch clock), both see.
 * Internal to the extension: nothing here is exported from the shared object.
 */
#ifndef MESHPLUG_WASMCALL_H
#define MESHPLUG_WASMCALL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

#define WC_INTERNAL __attribute__((visibility("hidden")))

/* the wasmtime C API functions the store side calls (addresses from wasmtime-py's library: _wasmcall.init) */
typedef uint8_t *(*memory_data_fn)(const void *ctx, const void *memory);
typedef size_t (*memory_data_size_fn)(const void *ctx, const void *memory);
typedef void *(*engine_clone_fn)(void *engine);
typedef void (*engine_increment_epoch_fn)(void *engine);
typedef void (*engine_delete_fn)(void *engine);

extern WC_INTERNAL memory_data_fn c_memory_data;
extern WC_INTERNAL memory_data_size_fn c_memory_data_size;
extern WC_INTERNAL engine_clone_fn c_engine_clone;
extern WC_INTERNAL engine_increment_epoch_fn c_engine_increment_epoch;
extern WC_INTERNAL engine_delete_fn c_engine_delete;
extern WC_INTERNAL PyObject *memory_fault; /* vm.MemoryFault */

typedef struct {
    PyObject_HEAD
    unsigned long long value;
} EpochObject;

typedef struct {
    PyObject_HEAD
    void *ctx;
    EpochObject *epoch;
    long long armed;
    unsigned long long deadline_ticks;
    int depth;
    int dirty;
    int release_gil; /* 1: guest calls release the GIL (a VM starting on a worker thread beside others) */
    unsigned long long caller;
    PyObject *exc;
    const void *memory; /* wasmtime_memory_t* (kept alive by the Python side); NULL until known */
    uint8_t *base;
    size_t size;
    int seq_index; /* call_each: the index of the call that failed */
    PyObject *find_memory; /* called (no arguments) when a span is read before `memory` is known; may be NULL */
} StateObject;

/* the guest bytes [ptr, ptr + size) as a new bytes object (ASCII-lowercased when `lower`), bounds-checked (NULL
 * with MemoryFault set); an empty span is b"" unchecked (as State.read) */
WC_INTERNAL PyObject *wc_span_bytes(StateObject *st, long long ptr, long long size, int lower);

extern WC_INTERNAL PyTypeObject EpochType;   /* _wasmstore.c */
extern WC_INTERNAL PyTypeObject StateType;   /* _wasmstore.c */
extern WC_INTERNAL PyTypeObject TickerType;  /* _wasmstore.c */

#endif /* MESHPLUG_WASMCALL_H */
