/*
 * meshplug.agent._wasmcall, its store side (the module and the calls are in _wasmcall.c; what both see in
 * _wasmcall.h):
 *
 *   State      per store: call depth, the epoch the deadline was last armed at, the deadline in ticks, the
 *              current caller (for host functions running before `memory` is known), the pending host
 *              exception, and the linear memory: bounds-checked read/write (read_lower: a header name
 *              lowercased as it is copied) against its base and size,
 *              looked up again only after the guest ran (`dirty`: it may have grown). wc_span_bytes: the
 *              same read for the host trampoline (a host function's (ptr, size) arguments read in C); before
 *              the memory is known it asks `find_memory` (the Python side finds it through the caller).
 *   Epoch      a counter the runtime's ticker advances just before the engine's epoch.
 *   Ticker     the runtime's epoch ticker: a native thread (no GIL, no Python) that every period advances
 *              the Epoch counter, then each engine's epoch (wasmtime_engine_increment_epoch, on its own
 *              clone of the engine, wasmtime_engine_clone, so the engine outlives the thread): one thread
 *              for the runtime's engines (its compiler tiers; `add_engine` adds the baseline one).
 */
#include "_wasmcall.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

memory_data_fn c_memory_data = NULL;
memory_data_size_fn c_memory_data_size = NULL;
engine_clone_fn c_engine_clone = NULL;
engine_increment_epoch_fn c_engine_increment_epoch = NULL;
engine_delete_fn c_engine_delete = NULL;
PyObject *memory_fault = NULL;

/* ---------------------------------------------------------------------------------------------- */
static PyMemberDef Epoch_members[] = {
    {"value", T_ULONGLONG, offsetof(EpochObject, value), 0, "ticks so far"},
    {NULL},
};

PyTypeObject EpochType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshplug.agent._wasmcall.Epoch",
    .tp_basicsize = sizeof(EpochObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_members = Epoch_members,
    .tp_doc = "The runtime's epoch count, advanced by its ticker.",
};

/* ---------------------------------------------------------------------------------------------- */
static int State_init(StateObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ctx", "epoch", "deadline_ticks", NULL};
    unsigned long long ctx, ticks;
    PyObject *epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "KO!K", kwlist, &ctx, &EpochType, &epoch, &ticks)) {
        return -1;
    }
    self->ctx = (void *)(uintptr_t)ctx;
    Py_INCREF(epoch);
    Py_XSETREF(self->epoch, (EpochObject *)epoch);
    self->deadline_ticks = ticks;
    self->armed = -1;
    self->depth = 0;
    self->dirty = 1;
    self->release_gil = 0;
    self->caller = 0;
    self->memory = NULL;
    self->base = NULL;
    self->size = 0;
    self->seq_index = 0;
    Py_CLEAR(self->find_memory);
    return 0;
}

static int State_traverse(StateObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->epoch);
    Py_VISIT(self->exc);
    Py_VISIT(self->find_memory);
    return 0;
}

static int State_clear(StateObject *self) {
    Py_CLEAR(self->epoch);
    Py_CLEAR(self->exc);
    Py_CLEAR(self->find_memory);
    return 0;
}

static void State_dealloc(StateObject *self) {
    PyObject_GC_UnTrack(self);
    State_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *State_take_exc(StateObject *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *exc = self->exc;
    self->exc = NULL;
    if (exc == NULL) {
        Py_RETURN_NONE;
    }
    return exc;
}

/* the memory's current base and size (0 without a memory handle) */
static int State_mem(StateObject *self) {
    if (self->memory == NULL) {
        PyErr_SetString(memory_fault, "module exports no memory");
        return -1;
    }
    if (self->dirty) {
        self->size = c_memory_data_size(self->ctx, self->memory);
        self->base = c_memory_data(self->ctx, self->memory);
        self->dirty = 0;
    }
    return 0;
}

static int State_span(StateObject *self, const char *what, long long ptr, long long size) {
    if (State_mem(self) < 0) return -1;
    if (ptr < 0 || size < 0 || (unsigned long long)ptr + (unsigned long long)size > self->size) {
        PyErr_Format(memory_fault, "%s [%lld, %lld) outside memory of %zu bytes", what, ptr, ptr + size, self->size);
        return -1;
    }
    return 0;
}

static PyObject *State_set_memory(StateObject *self, PyObject *arg) {
    unsigned long long handle = PyLong_AsUnsignedLongLong(arg);
    if (handle == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    self->memory = (const void *)(uintptr_t)handle;
    self->dirty = 1;
    Py_RETURN_NONE;
}

static PyObject *State_memory_size(StateObject *self, PyObject *Py_UNUSED(ignored)) {
    if (State_mem(self) < 0) return NULL;
    return PyLong_FromSize_t(self->size);
}

static int as_offset(PyObject *v, long long *out) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = overflow > 0 ? LLONG_MAX / 2 : overflow < 0 ? -1 : x; /* out of range either way */
    return 0;
}

/* the (ptr, size) replace_into takes (args[0], args[1]) and its span checked against the memory: -1 with the error
 * set */
static int read_args(StateObject *self, PyObject *const *args, long long *ptr, long long *size) {
    if (as_offset(args[0], ptr) < 0 || as_offset(args[1], size) < 0) return -1;
    return State_span(self, "read", *ptr, *size);
}

PyObject *wc_span_bytes(StateObject *st, long long ptr, long long size, int lower) {
    if (size == 0) return PyBytes_FromStringAndSize(NULL, 0);
    if (st->memory == NULL && st->find_memory != NULL && st->find_memory != Py_None) {
        /* a host call of the module's start function: the memory is not known yet */
        PyObject *r = PyObject_CallNoArgs(st->find_memory);
        if (r == NULL) return NULL;
        Py_DECREF(r);
    }
    if (State_span(st, "read", ptr, size) < 0) return NULL;
    if (!lower) return PyBytes_FromStringAndSize((const char *)st->base + ptr, (Py_ssize_t)size);
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out == NULL) return NULL;
    const uint8_t *src = st->base + ptr;
    char *dst = PyBytes_AS_STRING(out);
    for (long long i = 0; i < size; i++) {
        uint8_t c = src[i];
        dst[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
    return out;
}

static PyObject *state_read(StateObject *self, PyObject *const *args, Py_ssize_t nargs, int lower) {
    long long ptr, size;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, lower ? "read_lower(ptr, size)" : "read(ptr, size)");
        return NULL;
    }
    if (as_offset(args[0], &ptr) < 0 || as_offset(args[1], &size) < 0) return NULL;
    return wc_span_bytes(self, ptr, size, lower);
}

static PyObject *State_read(StateObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return state_read(self, args, nargs, 0);
}

/* read_lower(ptr, size): read(ptr, size).lower() in one copy (ASCII only, as bytes.lower: a header name) */
static PyObject *State_read_lower(StateObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return state_read(self, args, nargs, 1);
}

static PyObject *State_write(StateObject *self, PyObject *const *args, Py_ssize_t nargs) {
    long long ptr;
    Py_buffer view;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write(ptr, data)");
        return NULL;
    }
    if (as_offset(args[0], &ptr) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_CONTIG_RO) < 0) return NULL;
    if (view.len > 0) {
        if (State_span(self, "write", ptr, view.len) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        memcpy(self->base + ptr, view.buf, (size_t)view.len);
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* replace_into(ptr, size, target, stop): target[0:stop] = guest bytes [ptr, ptr + size), copied once (no bytes
 * object in between: a body a plugin rewrites goes from its memory straight into the host's buffer). The view
 * over guest memory lives only during the assignment (nothing can keep it: the guest does not run meanwhile). */
static PyObject *State_replace_into(StateObject *self, PyObject *const *args, Py_ssize_t nargs) {
    long long ptr, size, stop;
    if (nargs != 4 || !PyByteArray_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "replace_into(ptr, size, target: bytearray, stop)");
        return NULL;
    }
    if (read_args(self, args, &ptr, &size) < 0 || as_offset(args[3], &stop) < 0) return NULL;
    PyObject *target = args[2];
    Py_ssize_t old = PyByteArray_GET_SIZE(target);
    Py_ssize_t cut = stop >= 0 && stop < (long long)old ? (Py_ssize_t)stop : old, n = (Py_ssize_t)size;
    Py_ssize_t tail = old - cut, grown = n + tail;
    if (stop >= 0 && (grown == old || ((PyByteArrayObject *)target)->ob_exports == 0)) {
        /* in place: a slice assignment from a view would first copy the view into a temporary bytearray
         * (CPython's bytearray_setslice does for any other object), a second copy of a whole body; a
         * bytearray that cannot be resized (exported) takes the assignment below, which refuses it */
        if (grown > old && PyByteArray_Resize(target, grown) < 0) return NULL;
        char *buf = PyByteArray_AS_STRING(target);
        if (tail && n != cut) memmove(buf + n, buf + cut, (size_t)tail);
        if (n) memcpy(buf, (char *)self->base + ptr, (size_t)n);
        if (grown < old && PyByteArray_Resize(target, grown) < 0) return NULL;
        Py_RETURN_NONE;
    }
    PyObject *view = PyMemoryView_FromMemory((char *)self->base + ptr, (Py_ssize_t)size, PyBUF_READ);
    if (view == NULL) return NULL;
    int rc = PySequence_SetSlice(args[2], 0, (Py_ssize_t)stop, view);
    Py_DECREF(view);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *State_read_u32(StateObject *self, PyObject *arg) {
    long long ptr;
    uint32_t v;
    if (as_offset(arg, &ptr) < 0 || State_span(self, "read", ptr, 4) < 0) return NULL;
    memcpy(&v, self->base + ptr, 4); /* wasm memory is little-endian, as is every host meshplug runs on */
    return PyLong_FromUnsignedLong(v);
}

static PyObject *State_write_int(StateObject *self, PyObject *const *args, Py_ssize_t nargs, int width) {
    long long ptr;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "write_u32/write_u64(ptr, value)");
        return NULL;
    }
    if (as_offset(args[0], &ptr) < 0) return NULL;
    unsigned long long value = PyLong_AsUnsignedLongLongMask(args[1]);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (State_span(self, "write", ptr, width) < 0) return NULL;
    if (width == 4) {
        uint32_t v = (uint32_t)value;
        memcpy(self->base + ptr, &v, 4);
    } else {
        uint64_t v = (uint64_t)value;
        memcpy(self->base + ptr, &v, 8);
    }
    Py_RETURN_NONE;
}

static PyObject *State_write_u32(StateObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return State_write_int(self, args, nargs, 4);
}

static PyObject *State_write_u64(StateObject *self, PyObject *const *args, Py_ssize_t nargs) {
    return State_write_int(self, args, nargs, 8);
}

static PyMethodDef State_methods[] = {
    {"take_exc", (PyCFunction)State_take_exc, METH_NOARGS,
     "The exception a host function raised during the last guest call (None if none); clears it."},
    {"set_memory", (PyCFunction)State_set_memory, METH_O, "set_memory(wasmtime_memory_t address)"},
    {"memory_size", (PyCFunction)State_memory_size, METH_NOARGS, "the linear memory's size in bytes"},
    {"read", (PyCFunction)(void (*)(void))State_read, METH_FASTCALL, "read(ptr, size) -> bytes"},
    {"read_lower", (PyCFunction)(void (*)(void))State_read_lower, METH_FASTCALL,
     "read_lower(ptr, size) -> bytes: read(ptr, size).lower() (ASCII)"},
    {"write", (PyCFunction)(void (*)(void))State_write, METH_FASTCALL, "write(ptr, data)"},
    {"replace_into", (PyCFunction)(void (*)(void))State_replace_into, METH_FASTCALL,
     "replace_into(ptr, size, target: bytearray, stop): target[:stop] = guest bytes [ptr, ptr + size)"},
    {"read_u32", (PyCFunction)State_read_u32, METH_O, "read_u32(ptr) -> int (little-endian)"},
    {"write_u32", (PyCFunction)(void (*)(void))State_write_u32, METH_FASTCALL, "write_u32(ptr, value)"},
    {"write_u64", (PyCFunction)(void (*)(void))State_write_u64, METH_FASTCALL, "write_u64(ptr, value)"},
    {NULL},
};

static PyMemberDef State_members[] = {
    {"armed", T_LONGLONG, offsetof(StateObject, armed), 0, "epoch the deadline was armed at (-1: re-arm)"},
    {"deadline_ticks", T_ULONGLONG, offsetof(StateObject, deadline_ticks), 0, "budget of a top-level call"},
    {"depth", T_INT, offsetof(StateObject, depth), 0, "guest calls in progress"},
    {"dirty", T_INT, offsetof(StateObject, dirty), 0, "1: the guest ran since Python looked at memory"},
    {"release_gil", T_INT, offsetof(StateObject, release_gil), 0, "1: guest calls release the GIL"},
    {"caller", T_ULONGLONG, offsetof(StateObject, caller), 0, "wasmtime_caller_t* of the running host call"},
    {"seq_index", T_INT, offsetof(StateObject, seq_index), 0, "call_each: index of the call that raised"},
    {"find_memory", T_OBJECT, offsetof(StateObject, find_memory), 0,
     "called when a host function's span is read before the memory is known (sets it or raises)"},
    {NULL},
};

PyTypeObject StateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshplug.agent._wasmcall.State",
    .tp_basicsize = sizeof(StateObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)State_init,
    .tp_traverse = (traverseproc)State_traverse,
    .tp_clear = (inquiry)State_clear,
    .tp_dealloc = (destructor)State_dealloc,
    .tp_members = State_members,
    .tp_methods = State_methods,
    .tp_doc = "State(ctx, epoch, deadline_ticks): one store's call state.",
};

/* ---------------------------------------------------------------------------------------------- */
/* the engines one ticker advances: the runtime's compiler tiers (optimized, baseline) */
#define TICKER_MAX_ENGINES 4

typedef struct {
    PyObject_HEAD
    EpochObject *epoch;
    /* our clones of the runtime's engines (deleted with the ticker); [0] given at init, more by add_engine */
    void *engines[TICKER_MAX_ENGINES];
    int n_engines;
    long period_ns;
    int running;
    int stop;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} TickerObject;

static void *ticker_main(void *arg) {
    TickerObject *t = (TickerObject *)arg;
    struct timespec due;
    clock_gettime(CLOCK_MONOTONIC, &due);
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        due.tv_nsec += t->period_ns;
        while (due.tv_nsec >= 1000000000L) {
            due.tv_nsec -= 1000000000L;
            due.tv_sec += 1;
        }
        int rc = 0;
        while (!t->stop && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&t->wake, &t->lock, &due);
        if (t->stop) break;
        /* the counter first: it is never behind an engine (GuestCall re-arms when it moved) */
        __atomic_add_fetch(&t->epoch->value, 1, __ATOMIC_RELAXED);
        for (int i = 0; i < t->n_engines; i++) c_engine_increment_epoch(t->engines[i]);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static int Ticker_init(TickerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"epoch", "engine", "period_ms", NULL};
    PyObject *epoch;
    unsigned long long engine;
    long period_ms;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!Kl", kwlist, &EpochType, &epoch, &engine, &period_ms)) return -1;
    if (self->running || self->n_engines) {
        PyErr_SetString(PyExc_RuntimeError, "Ticker already initialised");
        return -1;
    }
    if (!engine || period_ms <= 0) {
        PyErr_SetString(PyExc_ValueError, "Ticker needs an engine and a positive period");
        return -1;
    }
    if (c_engine_clone == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_wasmcall.init() was not called");
        return -1;
    }
    Py_INCREF(epoch);
    Py_XSETREF(self->epoch, (EpochObject *)epoch);
    self->engines[0] = c_engine_clone((void *)(uintptr_t)engine);
    self->n_engines = 1;
    self->period_ns = period_ms * 1000000L;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&self->lock, NULL);
    return 0;
}

static PyObject *Ticker_add_engine(TickerObject *self, PyObject *arg) {
    unsigned long long engine = PyLong_AsUnsignedLongLong(arg);
    if (engine == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (!self->n_engines || !engine) {
        PyErr_SetString(PyExc_ValueError, "add_engine needs an initialised Ticker and an engine");
        return NULL;
    }
    if (self->n_engines == TICKER_MAX_ENGINES) {
        PyErr_SetString(PyExc_RuntimeError, "Ticker has no room for another engine");
        return NULL;
    }
    void *clone = c_engine_clone((void *)(uintptr_t)engine);
    pthread_mutex_lock(&self->lock); /* the thread advances the engines holding it */
    self->engines[self->n_engines++] = clone;
    pthread_mutex_unlock(&self->lock);
    Py_RETURN_NONE;
}

static PyObject *Ticker_start(TickerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!self->n_engines) {
        PyErr_SetString(PyExc_RuntimeError, "Ticker not initialised");
        return NULL;
    }
    if (!self->running) {
        self->stop = 0;
        if (pthread_create(&self->thread, NULL, ticker_main, self) != 0) {
            PyErr_SetString(PyExc_OSError, "cannot start the epoch ticker thread");
            return NULL;
        }
        self->running = 1;
        Py_INCREF(self); /* the thread uses it: alive until stop() joined it */
    }
    Py_RETURN_NONE;
}

static PyObject *Ticker_stop(TickerObject *self, PyObject *Py_UNUSED(ignored)) {
    if (self->running) {
        pthread_mutex_lock(&self->lock);
        self->stop = 1;
        pthread_cond_signal(&self->wake);
        pthread_mutex_unlock(&self->lock);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
        self->running = 0;
        Py_DECREF(self);
    }
    Py_RETURN_NONE;
}

static PyObject *Ticker_get_running(TickerObject *self, void *closure) {
    return PyBool_FromLong(self->running);
}

static void Ticker_dealloc(TickerObject *self) {
    /* never running here: a running ticker holds a reference to itself */
    if (self->n_engines) {
        for (int i = 0; i < self->n_engines; i++) c_engine_delete(self->engines[i]);
        pthread_mutex_destroy(&self->lock);
        pthread_cond_destroy(&self->wake);
    }
    Py_XDECREF(self->epoch);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Ticker_methods[] = {
    {"add_engine", (PyCFunction)Ticker_add_engine, METH_O, "add_engine(engine_address): advance it too"},
    {"start", (PyCFunction)Ticker_start, METH_NOARGS, "start the thread (no-op when running)"},
    {"stop", (PyCFunction)Ticker_stop, METH_NOARGS, "stop the thread and wait for it (no-op when stopped)"},
    {NULL},
};

static PyGetSetDef Ticker_getset[] = {
    {"running", (getter)Ticker_get_running, NULL, "the thread runs", NULL},
    {NULL},
};

PyTypeObject TickerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshplug.agent._wasmcall.Ticker",
    .tp_basicsize = sizeof(TickerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ticker_init,
    .tp_dealloc = (destructor)Ticker_dealloc,
    .tp_methods = Ticker_methods,
    .tp_getset = Ticker_getset,
    .tp_doc = "Ticker(epoch, engine_address, period_ms): advances `epoch`, then each engine's epoch, every period.",
};
