/*
 * meshplug.agent._shared: proxy-wasm shared data and shared queues for the workers of one agent (--concurrency),
 * in a shared memory file every worker maps: Envoy keeps both process-wide, across its worker threads; the
 * agent's workers are processes, so the same state lives here, under one process-shared robust mutex.
 *
 *   Store(path, size, create)   maps `path` (created and laid out when `create`, else opened as the creator
 *                               laid it out); `size` bytes, a sparse file: pages cost memory only once used.
 *   get(vm_id, key)             -> (value, cas) or None
 *   set(vm_id, key, value, cas) -> 0 stored, 1 CAS mismatch (cas != 0 and the key holds another cas), 2 full
 *                                  (CAS numbers are 32-bit, 1..0xffffffff then 1 again, as Envoy's)
 *   queue_register(vm_id, name, worker, context_id) -> token (>0; the same for the same vm_id and name in every
 *                               worker); the queue's owner becomes (worker, context_id): the last registration
 *                               wins, as Envoy's SharedQueue::registerQueue keeps the last registrant
 *   queue_resolve(vm_id, name)  -> token, 0 when no worker registered it
 *   queue_owner(token)          -> (worker, context_id) or None
 *   enqueue(token, value)       -> the owner's worker (to notify), -1 unknown token, -2 full
 *   dequeue(token)              -> the oldest item, None when empty, False for an unknown token
 *   metric_define(kind, name)   -> the slot (> 0) of the plugin metric (kind, name), the same in every worker
 *                                  (the offset of its record in the heap: no cap on how many but the store's
 *                                  bytes); -1 when the store is full
 *   metric_add(slot, delta)     adds (64-bit wrapping, lock-free); metric_set(slot, value); metric_get(slot)
 *   metrics()                   -> [(kind, name, value), ...] in definition order
 *
 * Plugin metrics: Envoy's workers define a plugin's counter or gauge in one stats store, so every worker's VM
 * adds to, sets and reads the same stat (a gauge holds the last value set by any worker; get_metric reads the
 * sum of every worker's increments); here a counter or gauge is one 64-bit slot every worker updates atomically,
 * a record of the heap (never freed) on a list in definition order that metrics() walks without the lock.
 *
 * CAS numbers come from one counter for the whole store (Envoy: one per process). Memory is a bump heap with
 * power-of-two free lists (no coalescing): entries are rewritten in place while they fit. A worker that dies
 * holding the lock leaves it to the next taker (EOWNERDEAD -> pthread_mutex_consistent).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC 0x4d5053484d330a00ULL /* "MPSHM3\n" */
#define NBUCKETS 4096
#define MAX_QUEUES 1024
#define NCLASSES 40
#define MIN_BLOCK 32
#define METRIC_TAG 0x4d455452u /* "METR": a metric record's first word, checked on every slot handed back */

typedef struct {
    uint64_t magic;
    uint64_t size;
    pthread_mutex_t lock;
    uint64_t cas;
    uint64_t heap_top; /* next free offset of the bump heap */
    uint64_t free_lists[NCLASSES];
    uint32_t next_token;
    uint32_t nqueues;
    uint64_t buckets[NBUCKETS];
    struct {
        uint32_t token;
        int32_t owner_worker;
        uint32_t owner_context;
        uint32_t pad;
        uint64_t name; /* offset of a block: u32 vm_len, u32 name_len, vm_id, name */
        uint64_t head, tail; /* item blocks: u64 next, u32 len, data */
    } queues[MAX_QUEUES];
    uint64_t metrics_head, metrics_tail; /* metric records in definition order (0: none) */
} header_t;

/* a plugin metric: a block of the heap, its offset the slot every worker uses; never freed */
typedef struct {
    uint32_t tag; /* METRIC_TAG */
    uint32_t kind;
    uint64_t value; /* updated with atomics, outside the lock */
    uint64_t next;  /* the next record defined (published with release: readers walk without the lock) */
    uint32_t name_len;
    uint32_t pad;
    /* the name's bytes follow */
} metric_t;

typedef struct {
    uint64_t next;
    uint64_t cas;
    uint32_t vm_len, key_len, val_len, cap; /* cap: bytes of the block after this struct */
} entry_t;

typedef struct {
    uint64_t next;
    uint32_t len;
    uint32_t pad;
} item_t;

/* every block starts with its size class, 8 bytes before the offset handed out */
#define BLOCK_HDR 8

typedef struct {
    PyObject_HEAD
    uint8_t *base;
    size_t size;
} StoreObject;

static header_t *H(StoreObject *s) { return (header_t *)s->base; }

static int lock(StoreObject *s) {
    int rc = pthread_mutex_lock(&H(s)->lock);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(&H(s)->lock); /* a worker died holding it: carry on */
        rc = 0;
    }
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static void unlock(StoreObject *s) { pthread_mutex_unlock(&H(s)->lock); }

static int size_class(uint64_t n) {
    int c = 0;
    uint64_t b = MIN_BLOCK;
    while (b < n + BLOCK_HDR) {
        b <<= 1;
        c++;
    }
    return c;
}

/* an offset to `n` usable bytes, 0 when the store is full */
static uint64_t alloc(StoreObject *s, uint64_t n) {
    header_t *h = H(s);
    int c = size_class(n);
    if (c >= NCLASSES) return 0;
    uint64_t off = h->free_lists[c];
    if (off) {
        h->free_lists[c] = *(uint64_t *)(s->base + off);
        return off;
    }
    uint64_t block = (uint64_t)MIN_BLOCK << c;
    if (h->heap_top + block > s->size) return 0;
    uint64_t at = h->heap_top;
    h->heap_top += block;
    *(uint64_t *)(s->base + at) = (uint64_t)c;
    return at + BLOCK_HDR;
}

static void release(StoreObject *s, uint64_t off) {
    if (!off) return;
    int c = (int)*(uint64_t *)(s->base + off - BLOCK_HDR);
    *(uint64_t *)(s->base + off) = H(s)->free_lists[c];
    H(s)->free_lists[c] = off;
}

static uint64_t usable(StoreObject *s, uint64_t off) {
    int c = (int)*(uint64_t *)(s->base + off - BLOCK_HDR);
    return ((uint64_t)MIN_BLOCK << c) - BLOCK_HDR;
}

static uint32_t hash(const char *a, Py_ssize_t alen, const char *b, Py_ssize_t blen) {
    uint32_t x = 2166136261u; /* FNV-1a over vm_id, a separator, key */
    for (Py_ssize_t i = 0; i < alen; i++) x = (x ^ (uint8_t)a[i]) * 16777619u;
    x = (x ^ 0xffu) * 16777619u;
    for (Py_ssize_t i = 0; i < blen; i++) x = (x ^ (uint8_t)b[i]) * 16777619u;
    return x;
}

static entry_t *E(StoreObject *s, uint64_t off) { return (entry_t *)(s->base + off); }

static uint64_t find(StoreObject *s, uint32_t hv, const char *vm, Py_ssize_t vlen, const char *key, Py_ssize_t klen,
                     uint64_t **link) {
    uint64_t *at = &H(s)->buckets[hv % NBUCKETS];
    while (*at) {
        entry_t *e = E(s, *at);
        const char *data = (const char *)(e + 1);
        if (e->vm_len == (uint32_t)vlen && e->key_len == (uint32_t)klen && memcmp(data, vm, vlen) == 0 &&
            memcmp(data + vlen, key, klen) == 0) {
            if (link) *link = at;
            return *at;
        }
        at = &e->next;
    }
    if (link) *link = at;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The next CAS number, as proxy-wasm-cpp-host's SharedData::nextCas: 32 bits (what the ABI hands a guest),
 * wrapping past 0xffffffff to 1 (0 means "no CAS" to proxy_set_shared_data). Called with the lock held. */
static uint64_t next_cas(header_t *h) {
    h->cas = h->cas >= 0xffffffffULL ? 1 : h->cas + 1;
    return h->cas;
}

static int Store_init(StoreObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"path", "size", "create", NULL};
    const char *path;
    unsigned long long size;
    int create;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "sKp", kwlist, &path, &size, &create)) return -1;
    if (self->base != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Store already open");
        return -1;
    }
    if (size < sizeof(header_t) + 4096) {
        PyErr_SetString(PyExc_ValueError, "Store size too small");
        return -1;
    }
    int fd = open(path, create ? (O_RDWR | O_CREAT | O_EXCL) : O_RDWR, 0600);
    if (fd < 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        return -1;
    }
    if (create && ftruncate(fd, (off_t)size) != 0) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        close(fd);
        return -1;
    }
    if (!create) {
        struct stat st;
        if (fstat(fd, &st) != 0 || (unsigned long long)st.st_size != size) {
            PyErr_Format(PyExc_ValueError, "%s is not a store of %llu bytes", path, size);
            close(fd);
            return -1;
        }
    }
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
        return -1;
    }
    self->base = (uint8_t *)base;
    self->size = (size_t)size;
    header_t *h = H(self);
    if (create) {
        memset(h, 0, sizeof(*h));
        pthread_mutexattr_t attr;
        pthread_mutexattr_init(&attr);
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&h->lock, &attr);
        pthread_mutexattr_destroy(&attr);
        h->size = size;
        h->heap_top = (sizeof(header_t) + 63) & ~(uint64_t)63;
        h->next_token = 1;
        __atomic_store_n(&h->magic, MAGIC, __ATOMIC_RELEASE);
    } else if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != MAGIC || h->size != size) {
        munmap(base, size);
        self->base = NULL;
        PyErr_Format(PyExc_ValueError, "%s is not a meshplug shared store", path);
        return -1;
    }
    return 0;
}

static void Store_dealloc(StoreObject *self) {
    if (self->base != NULL) munmap(self->base, self->size);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int opened(StoreObject *self) {
    if (self->base == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Store not open");
        return -1;
    }
    return 0;
}

static PyObject *Store_get(StoreObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *vm, *key;
    Py_ssize_t vlen, klen;
    if (nargs != 2 || opened(self) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "get(vm_id, key)");
        return NULL;
    }
    if (PyBytes_AsStringAndSize(args[0], &vm, &vlen) < 0 || PyBytes_AsStringAndSize(args[1], &key, &klen) < 0) {
        return NULL;
    }
    if (lock(self) < 0) return NULL;
    uint64_t off = find(self, hash(vm, vlen, key, klen), vm, vlen, key, klen, NULL);
    PyObject *out;
    if (!off) {
        unlock(self);
        Py_RETURN_NONE;
    }
    entry_t *e = E(self, off);
    out = Py_BuildValue("(y#K)", (const char *)(e + 1) + vlen + klen, (Py_ssize_t)e->val_len,
                        (unsigned long long)e->cas);
    unlock(self);
    return out;
}

static PyObject *Store_set(StoreObject *self, PyObject *const *args, Py_ssize_t nargs) {
    char *vm, *key;
    Py_buffer value;
    Py_ssize_t vlen, klen;
    unsigned long long cas;
    if (nargs != 4 || opened(self) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "set(vm_id, key, value, cas)");
        return NULL;
    }
    if (PyBytes_AsStringAndSize(args[0], &vm, &vlen) < 0 || PyBytes_AsStringAndSize(args[1], &key, &klen) < 0) {
        return NULL;
    }
    cas = PyLong_AsUnsignedLongLongMask(args[3]);
    if (cas == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (PyObject_GetBuffer(args[2], &value, PyBUF_CONTIG_RO) < 0) return NULL;
    if (lock(self) < 0) {
        PyBuffer_Release(&value);
        return NULL;
    }
    int rc = 0;
    uint64_t *link;
    uint64_t off = find(self, hash(vm, vlen, key, klen), vm, vlen, key, klen, &link);
    if (off && cas && E(self, off)->cas != cas) {
        rc = 1;
    } else if (off && (uint64_t)vlen + klen + value.len <= E(self, off)->cap) {
        entry_t *e = E(self, off);
        memcpy((char *)(e + 1) + vlen + klen, value.buf, (size_t)value.len);
        e->val_len = (uint32_t)value.len;
        e->cas = next_cas(H(self));
    } else {
        uint64_t need = sizeof(entry_t) + (uint64_t)vlen + klen + value.len;
        uint64_t fresh = alloc(self, need);
        if (!fresh) {
            rc = 2;
        } else {
            entry_t *e = E(self, fresh);
            e->next = off ? E(self, off)->next : 0;
            e->cas = next_cas(H(self));
            e->vm_len = (uint32_t)vlen;
            e->key_len = (uint32_t)klen;
            e->val_len = (uint32_t)value.len;
            e->cap = (uint32_t)(usable(self, fresh) - sizeof(entry_t));
            char *data = (char *)(e + 1);
            memcpy(data, vm, vlen);
            memcpy(data + vlen, key, klen);
            memcpy(data + vlen + klen, value.buf, (size_t)value.len);
            *link = fresh;
            release(self, off);
        }
    }
    unlock(self);
    PyBuffer_Release(&value);
    return PyLong_FromLong(rc);
}

/* ---- queues ---------------------------------------------------------------------------------- */
static int queue_index(StoreObject *s, uint32_t token) {
    header_t *h = H(s);
    for (uint32_t i = 0; i < h->nqueues; i++) {
        if (h->queues[i].token == token) return (int)i;
    }
    return -1;
}

static int queue_named(StoreObject *s, const char *vm, Py_ssize_t vlen, const char *name, Py_ssize_t nlen) {
    header_t *h = H(s);
    for (uint32_t i = 0; i < h->nqueues; i++) {
        const uint8_t *n = s->base + h->queues[i].name;
        uint32_t qv, qn;
        memcpy(&qv, n, 4);
        memcpy(&qn, n + 4, 4);
        if (qv == (uint32_t)vlen && qn == (uint32_t)nlen && memcmp(n + 8, vm, vlen) == 0 &&
            memcmp(n + 8 + vlen, name, nlen) == 0) {
            return (int)i;
        }
    }
    return -1;
}

static PyObject *Store_queue_register(StoreObject *self, PyObject *args) {
    const char *vm, *name;
    Py_ssize_t vlen, nlen;
    int worker;
    unsigned int context;
    if (opened(self) < 0 || !PyArg_ParseTuple(args, "y#y#iI", &vm, &vlen, &name, &nlen, &worker, &context)) {
        return NULL;
    }
    if (lock(self) < 0) return NULL;
    header_t *h = H(self);
    int i = queue_named(self, vm, vlen, name, nlen);
    if (i < 0) {
        uint64_t label = h->nqueues < MAX_QUEUES ? alloc(self, 8 + (uint64_t)vlen + nlen) : 0;
        if (!label) {
            unlock(self);
            PyErr_SetString(PyExc_MemoryError, "shared store: no room for another queue");
            return NULL;
        }
        uint32_t v32 = (uint32_t)vlen, n32 = (uint32_t)nlen;
        memcpy(self->base + label, &v32, 4);
        memcpy(self->base + label + 4, &n32, 4);
        memcpy(self->base + label + 8, vm, vlen);
        memcpy(self->base + label + 8 + vlen, name, nlen);
        i = (int)h->nqueues++;
        memset(&h->queues[i], 0, sizeof(h->queues[i]));
        h->queues[i].token = h->next_token++;
        h->queues[i].name = label;
    }
    h->queues[i].owner_worker = worker;
    h->queues[i].owner_context = context;
    uint32_t token = h->queues[i].token;
    unlock(self);
    return PyLong_FromUnsignedLong(token);
}

static PyObject *Store_queue_resolve(StoreObject *self, PyObject *args) {
    const char *vm, *name;
    Py_ssize_t vlen, nlen;
    if (opened(self) < 0 || !PyArg_ParseTuple(args, "y#y#", &vm, &vlen, &name, &nlen)) return NULL;
    if (lock(self) < 0) return NULL;
    int i = queue_named(self, vm, vlen, name, nlen);
    uint32_t token = i < 0 ? 0 : H(self)->queues[i].token;
    unlock(self);
    return PyLong_FromUnsignedLong(token);
}

static PyObject *Store_queue_owner(StoreObject *self, PyObject *arg) {
    unsigned long token = PyLong_AsUnsignedLong(arg);
    if ((token == (unsigned long)-1 && PyErr_Occurred()) || opened(self) < 0) return NULL;
    if (lock(self) < 0) return NULL;
    int i = queue_index(self, (uint32_t)token);
    PyObject *out;
    if (i < 0) {
        unlock(self);
        Py_RETURN_NONE;
    }
    out = Py_BuildValue("(iI)", H(self)->queues[i].owner_worker, H(self)->queues[i].owner_context);
    unlock(self);
    return out;
}

static PyObject *Store_enqueue(StoreObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer value;
    if (nargs != 2 || opened(self) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "enqueue(token, value)");
        return NULL;
    }
    unsigned long token = PyLong_AsUnsignedLong(args[0]);
    if (token == (unsigned long)-1 && PyErr_Occurred()) return NULL;
    if (PyObject_GetBuffer(args[1], &value, PyBUF_CONTIG_RO) < 0) return NULL;
    if (lock(self) < 0) {
        PyBuffer_Release(&value);
        return NULL;
    }
    long rc;
    int i = queue_index(self, (uint32_t)token);
    uint64_t at = i < 0 ? 0 : alloc(self, sizeof(item_t) + (uint64_t)value.len);
    if (i < 0) {
        rc = -1;
    } else if (!at) {
        rc = -2;
    } else {
        item_t *it = (item_t *)(self->base + at);
        it->next = 0;
        it->len = (uint32_t)value.len;
        memcpy(it + 1, value.buf, (size_t)value.len);
        header_t *h = H(self);
        if (h->queues[i].tail) {
            ((item_t *)(self->base + h->queues[i].tail))->next = at;
        } else {
            h->queues[i].head = at;
        }
        h->queues[i].tail = at;
        rc = h->queues[i].owner_worker;
    }
    unlock(self);
    PyBuffer_Release(&value);
    return PyLong_FromLong(rc);
}

static PyObject *Store_dequeue(StoreObject *self, PyObject *arg) {
    unsigned long token = PyLong_AsUnsignedLong(arg);
    if ((token == (unsigned long)-1 && PyErr_Occurred()) || opened(self) < 0) return NULL;
    if (lock(self) < 0) return NULL;
    int i = queue_index(self, (uint32_t)token);
    if (i < 0) {
        unlock(self);
        Py_RETURN_FALSE;
    }
    header_t *h = H(self);
    uint64_t at = h->queues[i].head;
    if (!at) {
        unlock(self);
        Py_RETURN_NONE;
    }
    item_t *it = (item_t *)(self->base + at);
    PyObject *out = PyBytes_FromStringAndSize((const char *)(it + 1), (Py_ssize_t)it->len);
    h->queues[i].head = it->next;
    if (!it->next) h->queues[i].tail = 0;
    release(self, at);
    unlock(self);
    return out;
}

/* ---- plugin metrics ------------------------------------------------------------------------- */
static metric_t *M(StoreObject *s, uint64_t off) { return (metric_t *)(s->base + off); }

static PyObject *Store_metric_define(StoreObject *self, PyObject *args) {
    unsigned int kind;
    const char *name;
    Py_ssize_t nlen;
    if (opened(self) < 0 || !PyArg_ParseTuple(args, "Iy#", &kind, &name, &nlen)) return NULL;
    if (lock(self) < 0) return NULL;
    header_t *h = H(self);
    long long slot = -1;
    for (uint64_t at = h->metrics_head; at; at = M(self, at)->next) {
        metric_t *m = M(self, at);
        if (m->kind == kind && m->name_len == (uint32_t)nlen && memcmp(m + 1, name, (size_t)nlen) == 0) {
            slot = (long long)at;
            break;
        }
    }
    if (slot < 0) {
        uint64_t at = alloc(self, sizeof(metric_t) + (uint64_t)nlen);
        if (at) { /* else the store is full: -1, the caller keeps the metric itself */
            metric_t *m = M(self, at);
            m->tag = METRIC_TAG;
            m->kind = kind;
            m->value = 0;
            m->next = 0;
            m->name_len = (uint32_t)nlen;
            memcpy(m + 1, name, (size_t)nlen);
            /* readers of metrics() walk the list without the lock: they see the record whole */
            if (h->metrics_tail) {
                __atomic_store_n(&M(self, h->metrics_tail)->next, at, __ATOMIC_RELEASE);
            } else {
                __atomic_store_n(&h->metrics_head, at, __ATOMIC_RELEASE);
            }
            h->metrics_tail = at;
            slot = (long long)at;
        }
    }
    unlock(self);
    return PyLong_FromLongLong(slot);
}

/* the slot argument of metric_add/set/get: a record metric_define handed out, else NULL with an exception set */
static metric_t *metric_slot(StoreObject *self, PyObject *arg) {
    long long slot = PyLong_AsLongLong(arg);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    if (opened(self) < 0) return NULL;
    uint64_t top = __atomic_load_n(&H(self)->heap_top, __ATOMIC_ACQUIRE);
    if (slot < (long long)sizeof(header_t) || slot % 8 != 0 || (uint64_t)slot + sizeof(metric_t) > top ||
        __atomic_load_n(&M(self, (uint64_t)slot)->tag, __ATOMIC_ACQUIRE) != METRIC_TAG) {
        PyErr_Format(PyExc_IndexError, "no metric slot %lld", slot);
        return NULL;
    }
    return M(self, (uint64_t)slot);
}

/* metric_add / metric_set's (slot, number): the slot's value word, the number as 64 bits (a negative number
 * wraps, so adding it subtracts); NULL with an exception set */
static uint64_t *metric_operands(StoreObject *self, PyObject *const *args, Py_ssize_t nargs, const char *usage,
                                 uint64_t *number) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    metric_t *m = metric_slot(self, args[0]);
    if (m == NULL) return NULL;
    unsigned long long n = PyLong_AsUnsignedLongLongMask(args[1]);
    if (n == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    *number = (uint64_t)n;
    return &m->value;
}

static PyObject *Store_metric_add(StoreObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t delta;
    uint64_t *value = metric_operands(self, args, nargs, "metric_add(slot, delta)", &delta);
    if (value == NULL) return NULL;
    __atomic_fetch_add(value, delta, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *Store_metric_set(StoreObject *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t number;
    uint64_t *value = metric_operands(self, args, nargs, "metric_set(slot, value)", &number);
    if (value == NULL) return NULL;
    __atomic_store_n(value, number, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *Store_metric_get(StoreObject *self, PyObject *arg) {
    metric_t *m = metric_slot(self, arg);
    if (m == NULL) return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&m->value, __ATOMIC_RELAXED));
}

static PyObject *Store_metrics(StoreObject *self, PyObject *Py_UNUSED(ignored)) {
    if (opened(self) < 0) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (uint64_t at = __atomic_load_n(&H(self)->metrics_head, __ATOMIC_ACQUIRE); at;
         at = __atomic_load_n(&M(self, at)->next, __ATOMIC_ACQUIRE)) {
        metric_t *m = M(self, at);
        PyObject *row = Py_BuildValue("(Iy#K)", m->kind, (const char *)(m + 1), (Py_ssize_t)m->name_len,
                                      (unsigned long long)__atomic_load_n(&m->value, __ATOMIC_RELAXED));
        if (row == NULL || PyList_Append(out, row) < 0) {
            Py_XDECREF(row);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(row);
    }
    return out;
}

static PyObject *Store_used(StoreObject *self, PyObject *Py_UNUSED(ignored)) {
    if (opened(self) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&H(self)->heap_top, __ATOMIC_RELAXED));
}

static PyMethodDef Store_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Store_get, METH_FASTCALL, "get(vm_id, key) -> (value, cas) | None"},
    {"set", (PyCFunction)(void (*)(void))Store_set, METH_FASTCALL,
     "set(vm_id, key, value, cas) -> 0 stored, 1 CAS mismatch, 2 full"},
    {"queue_register", (PyCFunction)Store_queue_register, METH_VARARGS,
     "queue_register(vm_id, name, worker, context_id) -> token"},
    {"queue_resolve", (PyCFunction)Store_queue_resolve, METH_VARARGS, "queue_resolve(vm_id, name) -> token | 0"},
    {"queue_owner", (PyCFunction)Store_queue_owner, METH_O, "queue_owner(token) -> (worker, context_id) | None"},
    {"enqueue", (PyCFunction)(void (*)(void))Store_enqueue, METH_FASTCALL,
     "enqueue(token, value) -> owner worker | -1 unknown | -2 full"},
    {"dequeue", (PyCFunction)Store_dequeue, METH_O, "dequeue(token) -> bytes | None (empty) | False (unknown)"},
    {"metric_define", (PyCFunction)Store_metric_define, METH_VARARGS, "metric_define(kind, name) -> slot | -1"},
    {"metric_add", (PyCFunction)(void (*)(void))Store_metric_add, METH_FASTCALL, "metric_add(slot, delta)"},
    {"metric_set", (PyCFunction)(void (*)(void))Store_metric_set, METH_FASTCALL, "metric_set(slot, value)"},
    {"metric_get", (PyCFunction)Store_metric_get, METH_O, "metric_get(slot) -> value"},
    {"metrics", (PyCFunction)Store_metrics, METH_NOARGS, "metrics() -> [(kind, name, value), ...]"},
    {"used", (PyCFunction)Store_used, METH_NOARGS, "bytes of the file laid out so far"},
    {NULL},
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "meshplug.agent._shared.Store",
    .tp_basicsize = sizeof(StoreObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Store_init,
    .tp_dealloc = (destructor)Store_dealloc,
    .tp_methods = Store_methods,
    .tp_doc = "Store(path, size, create): shared data and queues of an agent's workers, in shared memory.",
};

static struct PyModuleDef shared_module = {
    PyModuleDef_HEAD_INIT, "meshplug.agent._shared", "Shared data and queues across an agent's workers.", -1, NULL,
};

PyMODINIT_FUNC PyInit__shared(void) {
    if (PyType_Ready(&StoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&shared_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
