/*
 * meshplug.agent._wasmcall: the guest-call and host-call boundary of the fast wasm backend, in C.
 *
 * meshplug.agent.vm hands this module the addresses of three functions of the wasmtime C library that
 * wasmtime-py already loaded (pinned wasmtime==50.0.1: vm.PINNED_WASMTIME), so nothing here links against
 * wasmtime or needs its headers; the few types used are declared below and in _wasmcall.h with the layout of
 * that C API.
 *
 *   GuestCall  calls one export: packs Python ints into a ValRaw array (max(params, results) long), arms the store's epoch deadline for
 *              top-level calls, calls wasmtime_func_call_unchecked holding the GIL (the ticker, _wasmstore.c, needs no
 *              GIL, so a looping guest is still interrupted; releasing and taking the GIL twice per call
 *              cost more than the call itself; a State may ask for it while its VM starts on a worker thread
 *              beside other VMs starting), and returns the result as a Python int. On a trap or
 *              error it calls `fail(error_ptr, trap_ptr)` (Python), which raises.
 *   call_each  several GuestCalls with one argument in one call from Python (a stream's log, done, delete);
 *              the first that raises stops the rest and leaves its index in its State's seq_index.
 *   HostFunc   one host import: `TRAMPOLINE` is a wasmtime_func_unchecked_callback_t whose env is a HostFunc;
 *              it takes the GIL, calls the Python function with unsigned ints -- and with bytes for the
 *              (ptr, size) pairs its kinds mark as spans, read from guest memory here (a header name
 *              lowercased as it is copied) -- maps the listed exceptions to results (a span outside memory:
 *              MemoryFault), and turns any other exception into a trap (the exception is kept on the State
 *              and raised again by vm.FastGuest once the guest call unwinds). A guard answers a first argument
 *              above its bound with a fixed result before any span is read (the ABI's enum checks come first).
 *   (State, Epoch, Ticker: _wasmstore.c, declared in _wasmcall.h)
 */
#include "_wasmcall.h"

#include <string.h>

typedef union {
    int32_t i32;
    int64_t i64;
    uint32_t u32;
    uint64_t u64;
    float f32;
    double f64;
    uint8_t v128[16];
} val_raw_t; /* wasmtime_val_raw_t: 16 bytes */

typedef void *(*call_unchecked_fn)(void *ctx, const void *func, val_raw_t *vals, size_t n, void **trap);
typedef void (*set_deadline_fn)(void *ctx, uint64_t ticks);
typedef void *(*trap_new_fn)(const char *msg, size_t len);

static call_unchecked_fn c_call_unchecked = NULL;
static set_deadline_fn c_set_deadline = NULL;
static trap_new_fn c_trap_new = NULL;

static const char HOST_TRAP_MSG[] = "meshplug host function failed";

enum { K_NONE = 0, K_I32 = 1, K_I64 = 2, K_F32 = 3, K_F64 = 4 };
/* HostFunc parameters only: this i32 and the next are a guest (ptr, size), passed as one bytes argument */
enum { K_SPAN = 5, K_SPAN_LOWER = 6 };
#define MAX_VALS 32

/* ---------------------------------------------------------------------------------------------- */
static int parse_kinds(PyObject *kinds, unsigned char *out, Py_ssize_t *n) {
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(kinds, &buf, &len) < 0) {
        return -1;
    }
    if (len > MAX_VALS) {
        PyErr_Format(PyExc_ValueError, "at most %d parameters", MAX_VALS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char k = (unsigned char)buf[i];
        if (k < K_I32 || k > K_F64) {
            PyErr_Format(PyExc_ValueError, "unknown value kind %d", (int)k);
            return -1;
        }
        out[i] = k;
    }
    *n = len;
    return 0;
}

/* a non-negative int below 2**30 read straight from its one digit (most arguments: ids, sizes, flags); 0: use
 * the general conversion */
static inline int small_uint(PyObject *v, uint32_t *out) {
#if PY_VERSION_HEX < 0x030C0000
    if (PyLong_CheckExact(v)) {
        Py_ssize_t size = Py_SIZE(v);
        if (size == 0) {
            *out = 0;
            return 1;
        }
        if (size == 1) {
            *out = (uint32_t)((PyLongObject *)v)->ob_digit[0];
            return 1;
        }
    }
#endif
    (void)v;
    (void)out;
    return 0;
}

static int store_val(val_raw_t *slot, unsigned char kind, PyObject *v) {
    uint32_t small;
    if ((kind == K_I32 || kind == K_I64) && small_uint(v, &small)) {
        slot->u64 = small; /* the upper 8 bytes of the slot are never read for i32/i64 */
        return 0;
    }
    memset(slot, 0, sizeof(*slot));
    switch (kind) {
    case K_I32: {
        unsigned long long x = PyLong_AsUnsignedLongLongMask(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        slot->u32 = (uint32_t)x;
        return 0;
    }
    case K_I64: {
        unsigned long long x = PyLong_AsUnsignedLongLongMask(v);
        if (x == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        slot->u64 = (uint64_t)x;
        return 0;
    }
    case K_F32: {
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return -1;
        slot->f32 = (float)d;
        return 0;
    }
    case K_F64: {
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return -1;
        slot->f64 = d;
        return 0;
    }
    }
    return 0;
}

static PyObject *load_val(const val_raw_t *slot, unsigned char kind) {
    switch (kind) {
    case K_I32:
        return PyLong_FromUnsignedLong(slot->u32);
    case K_I64:
        return PyLong_FromUnsignedLongLong(slot->u64);
    case K_F32:
        return PyFloat_FromDouble((double)slot->f32);
    case K_F64:
        return PyFloat_FromDouble(slot->f64);
    }
    return PyLong_FromLong(0);
}

/* ---------------------------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    StateObject *state;
    const void *func; /* wasmtime_func_t* (kept alive by the Python side) */
    PyObject *fail;
    Py_ssize_t nparams;
    Py_ssize_t nvals;
    unsigned char kinds[MAX_VALS];
    unsigned char result;
} GuestCallObject;

static PyObject *guest_call(GuestCallObject *self, PyObject *const *args, Py_ssize_t nargs);

static PyObject *GuestCall_vectorcall(GuestCallObject *self, PyObject *const *args, size_t nargsf, PyObject *kw) {
    if (kw != NULL && PyTuple_GET_SIZE(kw) != 0) {
        PyErr_SetString(PyExc_TypeError, "guest functions take positional arguments only");
        return NULL;
    }
    return guest_call(self, args, PyVectorcall_NARGS(nargsf));
}

static PyObject *guest_call(GuestCallObject *self, PyObject *const *args, Py_ssize_t nargs) {
    val_raw_t vals[MAX_VALS];
    if (nargs != self->nparams) {
        PyErr_Format(PyExc_TypeError, "guest function takes %zd arguments (%zd given)", self->nparams, nargs);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        if (store_val(&vals[i], self->kinds[i], args[i]) < 0) return NULL;
    }
    for (Py_ssize_t i = nargs; i < self->nvals; i++) memset(&vals[i], 0, sizeof(vals[i]));
    StateObject *st = self->state;
    int depth = st->depth;
    if (depth == 0) {
        long long now = (long long)__atomic_load_n(&st->epoch->value, __ATOMIC_RELAXED);
        if (st->armed != now) {
            st->armed = now;
            c_set_deadline(st->ctx, st->deadline_ticks);
        }
    }
    st->depth = depth + 1;
    void *trap = NULL;
    void *err;
    if (st->release_gil) {
        Py_BEGIN_ALLOW_THREADS
        err = c_call_unchecked(st->ctx, self->func, vals, (size_t)self->nvals, &trap);
        Py_END_ALLOW_THREADS
    } else {
        err = c_call_unchecked(st->ctx, self->func, vals, (size_t)self->nvals, &trap);
    }
    st->depth = depth;
    st->dirty = 1;
    if (err != NULL || trap != NULL) {
        PyObject *r = PyObject_CallFunction(self->fail, "KK", (unsigned long long)(uintptr_t)err,
                                            (unsigned long long)(uintptr_t)trap);
        if (r == NULL) return NULL;
        Py_DECREF(r);
        PyErr_SetString(PyExc_RuntimeError, "guest call failed and fail() did not raise");
        return NULL;
    }
    if (self->result == K_NONE) return PyLong_FromLong(0);
    if (self->result == K_F32) return PyLong_FromDouble((double)vals[0].f32);
    if (self->result == K_F64) return PyLong_FromDouble(vals[0].f64);
    return load_val(&vals[0], self->result);
}

static int GuestCall_init(GuestCallObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"state", "func", "params", "results", "fail", NULL};
    PyObject *state, *params, *results, *fail;
    unsigned long long func;
    unsigned char result_kinds[MAX_VALS];
    Py_ssize_t nresults;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!KSSO", kwlist, &StateType, &state, &func, &params, &results,
                                     &fail)) {
        return -1;
    }
    if (parse_kinds(params, self->kinds, &self->nparams) < 0) return -1;
    if (parse_kinds(results, result_kinds, &nresults) < 0) return -1;
    Py_INCREF(state);
    Py_XSETREF(self->state, (StateObject *)state);
    Py_INCREF(fail);
    Py_XSETREF(self->fail, fail);
    self->func = (const void *)(uintptr_t)func;
    self->result = nresults ? result_kinds[0] : K_NONE; /* the first result is returned */
    self->nvals = self->nparams > nresults ? self->nparams : nresults; /* wasmtime: max(params, results) */
    if (self->nvals == 0) self->nvals = 1;
    self->vectorcall = (vectorcallfunc)GuestCall_vectorcall;
    return 0;
}

static int GuestCall_traverse(GuestCallObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->state);
    Py_VISIT(self->fail);
    return 0;
}

static int GuestCall_clear(GuestCallObject *self) {
    Py_CLEAR(self->state);
    Py_CLEAR(self->fail);
    return 0;
}

static void GuestCall_dealloc(GuestCallObject *self) {
    PyObject_GC_UnTrack(self);
    GuestCall_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject GuestCallType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshplug.agent._wasmcall.GuestCall",
    .tp_basicsize = sizeof(GuestCallObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)GuestCall_init,
    .tp_traverse = (traverseproc)GuestCall_traverse,
    .tp_clear = (inquiry)GuestCall_clear,
    .tp_dealloc = (destructor)GuestCall_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(GuestCallObject, vectorcall),
    .tp_doc = "GuestCall(state, func, params, results, fail): call one export with unsigned ints.",
};

/* call_each(fns, arg): fns[0](arg), fns[1](arg), ... (GuestCalls, the end of a stream's callbacks: log, done,
 * delete) in one call from Python; the first that raises stops the rest: its exception propagates and its index
 * is left in its State's seq_index. Returns len(fns). */
static PyObject *wc_call_each(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "call_each(fns: tuple[GuestCall, ...], arg)");
        return NULL;
    }
    PyObject *fns = args[0];
    Py_ssize_t n = PyTuple_GET_SIZE(fns);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(fns, i), &GuestCallType)) {
            PyErr_SetString(PyExc_TypeError, "call_each: fns must be GuestCalls");
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        GuestCallObject *fn = (GuestCallObject *)PyTuple_GET_ITEM(fns, i);
        PyObject *r = guest_call(fn, &args[1], 1);
        if (r == NULL) {
            fn->state->seq_index = (int)i;
            return NULL;
        }
        Py_DECREF(r);
    }
    return PyLong_FromSsize_t(n);
}

/* ---------------------------------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    StateObject *state;
    PyObject *fn;
    PyObject *faults; /* tuple of (exception type, int result) */
    Py_ssize_t nparams;
    unsigned char kinds[MAX_VALS];
    unsigned char result;
    long long guard_bound; /* -1: no guard; else a first argument above it returns guard_result at once */
    uint32_t guard_result;
} HostFuncObject;

/* the kinds of a host function's parameters: value kinds, K_SPAN / K_SPAN_LOWER on the pointer of an i32
 * (ptr, size) pair */
static int parse_host_kinds(PyObject *params, unsigned char *out, Py_ssize_t *n) {
    char *buf;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(params, &buf, &len) < 0) return -1;
    if (len > MAX_VALS) {
        PyErr_Format(PyExc_ValueError, "at most %d parameters", MAX_VALS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < len; i++) {
        unsigned char k = (unsigned char)buf[i];
        if (k < K_I32 || k > K_SPAN_LOWER) {
            PyErr_Format(PyExc_ValueError, "unknown value kind %d", (int)k);
            return -1;
        }
        if (k >= K_SPAN && (i + 1 >= len || buf[i + 1] != K_I32)) {
            PyErr_SetString(PyExc_ValueError, "a span is an i32 pointer followed by an i32 size");
            return -1;
        }
        out[i] = k;
        if (k >= K_SPAN) out[++i] = K_I32;
    }
    *n = len;
    return 0;
}

static int HostFunc_init(HostFuncObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"state", "fn", "params", "result", "faults", "guard_bound", "guard_result", NULL};
    PyObject *state, *fn, *params, *faults;
    int result;
    long long guard_bound = -1;
    unsigned int guard_result = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OSiO!|LI", kwlist, &StateType, &state, &fn, &params, &result,
                                     &PyTuple_Type, &faults, &guard_bound, &guard_result)) {
        return -1;
    }
    if (result < K_NONE || result > K_F64) {
        PyErr_Format(PyExc_ValueError, "unknown result kind %d", result);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(faults); i++) {
        PyObject *pair = PyTuple_GET_ITEM(faults, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyLong_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_SetString(PyExc_TypeError, "faults: a tuple of (exception type, int)");
            return -1;
        }
    }
    if (parse_host_kinds(params, self->kinds, &self->nparams) < 0) return -1;
    if (guard_bound >= 0 && (self->nparams == 0 || self->kinds[0] != K_I32 || result != K_I32)) {
        PyErr_SetString(PyExc_ValueError, "a guard needs an i32 first parameter and an i32 result");
        return -1;
    }
    self->guard_bound = guard_bound;
    self->guard_result = (uint32_t)guard_result;
    Py_INCREF(state);
    Py_XSETREF(self->state, (StateObject *)state);
    Py_INCREF(fn);
    Py_XSETREF(self->fn, fn);
    Py_INCREF(faults);
    Py_XSETREF(self->faults, faults);
    self->result = (unsigned char)result;
    return 0;
}

static int HostFunc_traverse(HostFuncObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->state);
    Py_VISIT(self->fn);
    Py_VISIT(self->faults);
    return 0;
}

static int HostFunc_clear(HostFuncObject *self) {
    Py_CLEAR(self->state);
    Py_CLEAR(self->fn);
    Py_CLEAR(self->faults);
    return 0;
}

static void HostFunc_dealloc(HostFuncObject *self) {
    PyObject_GC_UnTrack(self);
    HostFunc_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *HostFunc_get_env(HostFuncObject *self, void *closure) {
    return PyLong_FromVoidPtr((void *)self);
}

static PyGetSetDef HostFunc_getset[] = {
    {"env", (getter)HostFunc_get_env, NULL, "the env pointer to register with TRAMPOLINE", NULL},
    {NULL},
};

static PyTypeObject HostFuncType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshplug.agent._wasmcall.HostFunc",
    .tp_basicsize = sizeof(HostFuncObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)HostFunc_init,
    .tp_traverse = (traverseproc)HostFunc_traverse,
    .tp_clear = (inquiry)HostFunc_clear,
    .tp_dealloc = (destructor)HostFunc_dealloc,
    .tp_getset = HostFunc_getset,
    .tp_doc = "HostFunc(state, fn, params, result, faults, guard_bound=-1, guard_result=0): one host import "
              "behind TRAMPOLINE.",
};

/* the result of a listed fault, or -1 with the exception left set when none matches */
static int fault_result(HostFuncObject *hf, long long *out) {
    Py_ssize_t n = PyTuple_GET_SIZE(hf->faults);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(hf->faults, i);
        if (PyErr_ExceptionMatches(PyTuple_GET_ITEM(pair, 0))) {
            long long r = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
            PyErr_Clear();
            *out = r;
            return 0;
        }
    }
    return -1;
}

static int store_result(val_raw_t *slot, unsigned char kind, PyObject *res) {
    if (kind == K_NONE) return 0;
    if (res == Py_None) {
        memset(slot, 0, sizeof(*slot));
        return 0;
    }
    if (kind == K_I32 || kind == K_I64) {
        PyObject *as_int = PyNumber_Index(res);
        int rc;
        if (as_int == NULL) {
            PyErr_Clear();
            as_int = PyNumber_Long(res);
            if (as_int == NULL) return -1;
        }
        rc = store_val(slot, kind, as_int);
        Py_DECREF(as_int);
        return rc;
    }
    return store_val(slot, kind, res);
}

static void *host_trampoline(void *env, void *caller, val_raw_t *vals, size_t nvals) {
    HostFuncObject *hf = (HostFuncObject *)env;
    void *trap = NULL;
    PyGILState_STATE gil = PyGILState_Ensure();
    StateObject *st = hf->state;
    unsigned long long outer = st->caller;
    PyObject *argv[MAX_VALS + 1];
    PyObject *res = NULL;
    Py_ssize_t made = 0, i = 0;
    if (hf->guard_bound >= 0 && (long long)vals[0].u32 > hf->guard_bound) {
        vals[0].u64 = hf->guard_result;
        PyGILState_Release(gil);
        return NULL;
    }
    st->caller = (unsigned long long)(uintptr_t)caller;
    st->dirty = 1; /* the guest ran since the last look: memory may have grown */
    for (; i < hf->nparams; i++) {
        unsigned char k = hf->kinds[i];
        PyObject *arg;
        if (k >= K_SPAN) {
            arg = wc_span_bytes(st, (long long)vals[i].u32, (long long)vals[i + 1].u32, k == K_SPAN_LOWER);
            i++;
        } else {
            arg = load_val(&vals[i], k);
        }
        if (arg == NULL) break;
        argv[1 + made++] = arg;
    }
    if (i == hf->nparams) {
        res = PyObject_Vectorcall(hf->fn, argv + 1, (size_t)made | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    for (Py_ssize_t j = 0; j < made; j++) Py_DECREF(argv[j + 1]);
    if (res == NULL) {
        long long r;
        if (fault_result(hf, &r) == 0) {
            res = PyLong_FromLongLong(r);
        }
    }
    if (res != NULL) {
        if (store_result(&vals[0], hf->result, res) < 0) {
            Py_CLEAR(res);
        } else {
            Py_DECREF(res);
        }
    }
    if (res == NULL && PyErr_Occurred()) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        Py_XSETREF(st->exc, value); /* raised again by the guest call once the trap unwinds */
        trap = c_trap_new(HOST_TRAP_MSG, sizeof(HOST_TRAP_MSG) - 1);
    }
    (void)nvals;
    st->caller = outer;
    PyGILState_Release(gil);
    return trap;
}

/* ---------------------------------------------------------------------------------------------- */
static PyObject *wc_init(PyObject *mod, PyObject *args) {
    unsigned long long call, deadline, trap_new, data, data_size, eclone, eincr, edelete;
    PyObject *fault;
    if (!PyArg_ParseTuple(args, "KKKKKKKKO", &call, &deadline, &trap_new, &data, &data_size, &eclone, &eincr,
                          &edelete, &fault)) {
        return NULL;
    }
    if (!call || !deadline || !trap_new || !data || !data_size || !eclone || !eincr || !edelete) {
        PyErr_SetString(PyExc_ValueError, "null function address");
        return NULL;
    }
    if (!PyExceptionClass_Check(fault)) {
        PyErr_SetString(PyExc_TypeError, "memory_fault: an exception class");
        return NULL;
    }
    c_call_unchecked = (call_unchecked_fn)(uintptr_t)call;
    c_set_deadline = (set_deadline_fn)(uintptr_t)deadline;
    c_trap_new = (trap_new_fn)(uintptr_t)trap_new;
    c_memory_data = (memory_data_fn)(uintptr_t)data;
    c_memory_data_size = (memory_data_size_fn)(uintptr_t)data_size;
    c_engine_clone = (engine_clone_fn)(uintptr_t)eclone;
    c_engine_increment_epoch = (engine_increment_epoch_fn)(uintptr_t)eincr;
    c_engine_delete = (engine_delete_fn)(uintptr_t)edelete;
    Py_INCREF(fault);
    Py_XSETREF(memory_fault, fault);
    Py_RETURN_NONE;
}

static PyMethodDef wc_methods[] = {
    {"call_each", (PyCFunction)(void (*)(void))wc_call_each, METH_FASTCALL,
     "call_each(fns, arg) -> len(fns): each GuestCall with arg, in order; the first that raises stops the rest "
     "(its index: its State's seq_index)"},
    {"init", wc_init, METH_VARARGS,
     "init(wasmtime_func_call_unchecked, wasmtime_context_set_epoch_deadline, wasmtime_trap_new, "
     "wasmtime_memory_data, wasmtime_memory_data_size, wasmtime_engine_clone, wasmtime_engine_increment_epoch, "
     "wasm_engine_delete, MemoryFault): the functions' addresses and the fault class."},
    {NULL},
};

static struct PyModuleDef wc_module = {
    PyModuleDef_HEAD_INIT, "meshplug.agent._wasmcall", "The fast backend's guest/host call boundary.", -1, wc_methods,
};

PyMODINIT_FUNC PyInit__wasmcall(void) {
    PyObject *m;
    if (PyType_Ready(&EpochType) < 0 || PyType_Ready(&StateType) < 0 || PyType_Ready(&GuestCallType) < 0 ||
        PyType_Ready(&HostFuncType) < 0 || PyType_Ready(&TickerType) < 0) {
        return NULL;
    }
    m = PyModule_Create(&wc_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Epoch", (PyObject *)&EpochType) < 0 ||
        PyModule_AddObjectRef(m, "State", (PyObject *)&StateType) < 0 ||
        PyModule_AddObjectRef(m, "GuestCall", (PyObject *)&GuestCallType) < 0 ||
        PyModule_AddObjectRef(m, "HostFunc", (PyObject *)&HostFuncType) < 0 ||
        PyModule_AddObjectRef(m, "Ticker", (PyObject *)&TickerType) < 0 ||
        PyModule_AddObject(m, "TRAMPOLINE", PyLong_FromVoidPtr((void *)host_trampoline)) < 0 ||
        PyModule_AddIntConstant(m, "MAX_VALS", MAX_VALS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
