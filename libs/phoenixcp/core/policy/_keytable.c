/* A hash table from 64-bit series keys to dense slots, for the policy engine's series index.
 *
 * The index keeps its per-series state (route, points in the window, last window seen, shadow
 * columns) in numpy arrays indexed by slot; this table only answers "which slot holds this
 * key" for a whole batch of keys in one call. Keys are xxhash64 values already, so a
 * multiplicative mix is enough to spread them. Open addressing with linear probing and
 * backward-shift deletion (no tombstones), grown at load 1/2. Freed slots are reused, lowest
 * last, so the arrays stay dense.
 *
 * Arrays cross the boundary through the buffer protocol (numpy arrays, bytes): keys are
 * uint64, slots int64, both C-contiguous. docs/adr/0008-policies-on-the-data-path.md.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PREFETCH 8

typedef struct {
    uint64_t key;
    int64_t slot; /* -1: empty */
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *entries;
    size_t mask;     /* capacity - 1, capacity a power of two */
    Py_ssize_t used; /* keys held */
    int64_t high;    /* slots handed out so far: every slot is < high */
    int64_t *free_slots;
    Py_ssize_t free_count, free_cap;
} KeyTable;

static inline size_t home(const KeyTable *t, uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 17) & t->mask;
}

static int alloc_entries(KeyTable *t, size_t capacity) {
    Entry *entries = PyMem_Malloc(capacity * sizeof(Entry));
    if (entries == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < capacity; i++) entries[i].slot = -1;
    t->entries = entries;
    t->mask = capacity - 1;
    return 0;
}

static int grow(KeyTable *t) {
    Entry *old = t->entries;
    size_t old_cap = t->mask + 1;
    if (alloc_entries(t, old_cap * 2) < 0) {
        t->entries = old;
        return -1;
    }
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i].slot < 0) continue;
        size_t j = home(t, old[i].key);
        while (t->entries[j].slot >= 0) j = (j + 1) & t->mask;
        t->entries[j] = old[i];
    }
    PyMem_Free(old);
    return 0;
}

static inline int64_t lookup(const KeyTable *t, uint64_t key) {
    size_t j = home(t, key);
    for (;;) {
        const Entry *e = &t->entries[j];
        if (e->slot < 0) return -1;
        if (e->key == key) return e->slot;
        j = (j + 1) & t->mask;
    }
}

static void delete_at(KeyTable *t, size_t hole) {
    /* Backward-shift deletion: move later entries of the probe run into the hole. */
    size_t j = hole;
    for (;;) {
        j = (j + 1) & t->mask;
        Entry *e = &t->entries[j];
        if (e->slot < 0) break;
        size_t want = home(t, e->key);
        /* e may move to the hole when its home is not cyclically in (hole, j]. */
        int stays = (hole <= j) ? (hole < want && want <= j) : (hole < want || want <= j);
        if (!stays) {
            t->entries[hole] = *e;
            hole = j;
        }
    }
    t->entries[hole].slot = -1;
}

static int take_slot(KeyTable *t, int64_t *slot) {
    if (t->free_count > 0) {
        *slot = t->free_slots[--t->free_count];
    } else {
        *slot = t->high++;
    }
    return 0;
}

static int give_slot(KeyTable *t, int64_t slot) {
    if (t->free_count == t->free_cap) {
        Py_ssize_t cap = t->free_cap ? t->free_cap * 2 : 1024;
        int64_t *grown = PyMem_Realloc(t->free_slots, (size_t)cap * sizeof(int64_t));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        t->free_slots = grown;
        t->free_cap = cap;
    }
    t->free_slots[t->free_count++] = slot;
    return 0;
}

/* ---- buffers ------------------------------------------------------------------------------ */

static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, int writable,
                      const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s: a buffer of %zd bytes is not a whole number of "
                     "%zd-byte items", what, view->len, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    if (view->itemsize != 1 && view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s: expected %zd-byte items, got %zd-byte items",
                     what, itemsize, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int keys_and_out(PyObject *args, Py_buffer *keys, Py_buffer *out) {
    PyObject *k, *o;
    if (!PyArg_ParseTuple(args, "OO", &k, &o)) return -1;
    if (get_buffer(k, keys, 8, 0, "keys (uint64)") < 0) return -1;
    if (get_buffer(o, out, 8, 1, "out (int64)") < 0) {
        PyBuffer_Release(keys);
        return -1;
    }
    if (out->len != keys->len) {
        PyErr_SetString(PyExc_ValueError, "out must have one int64 per key");
        PyBuffer_Release(keys);
        PyBuffer_Release(out);
        return -1;
    }
    return 0;
}

/* ---- methods ------------------------------------------------------------------------------ */

static PyObject *KeyTable_find(KeyTable *self, PyObject *args) {
    Py_buffer keys, out;
    if (keys_and_out(args, &keys, &out) < 0) return NULL;
    const uint64_t *k = keys.buf;
    int64_t *o = out.buf;
    Py_ssize_t n = keys.len / 8, missing = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* The table outgrows the CPU caches at ~100k series: fetch ahead of the probe. */
        if (i + PREFETCH < n) __builtin_prefetch(&self->entries[home(self, k[i + PREFETCH])]);
        o[i] = lookup(self, k[i]);
        missing += o[i] < 0;
    }
    PyBuffer_Release(&keys);
    PyBuffer_Release(&out);
    return PyLong_FromSsize_t(missing);
}

static PyObject *KeyTable_insert(KeyTable *self, PyObject *args) {
    Py_buffer keys, out;
    if (keys_and_out(args, &keys, &out) < 0) return NULL;
    const uint64_t *k = keys.buf;
    int64_t *o = out.buf;
    Py_ssize_t n = keys.len / 8, added = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((size_t)(self->used + 1) * 2 > self->mask + 1 && grow(self) < 0) goto fail;
        size_t j = home(self, k[i]);
        for (;;) {
            Entry *e = &self->entries[j];
            if (e->slot < 0) {
                e->key = k[i];
                take_slot(self, &e->slot);
                self->used++;
                added++;
                o[i] = e->slot;
                break;
            }
            if (e->key == k[i]) {
                o[i] = e->slot;
                break;
            }
            j = (j + 1) & self->mask;
        }
    }
    PyBuffer_Release(&keys);
    PyBuffer_Release(&out);
    return PyLong_FromSsize_t(added);
fail:
    PyBuffer_Release(&keys);
    PyBuffer_Release(&out);
    return NULL;
}

static PyObject *KeyTable_remove(KeyTable *self, PyObject *arg) {
    Py_buffer keys;
    if (get_buffer(arg, &keys, 8, 0, "keys (uint64)") < 0) return NULL;
    const uint64_t *k = keys.buf;
    Py_ssize_t n = keys.len / 8, removed = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        size_t j = home(self, k[i]);
        for (;;) {
            Entry *e = &self->entries[j];
            if (e->slot < 0) break;
            if (e->key == k[i]) {
                if (give_slot(self, e->slot) < 0) {
                    PyBuffer_Release(&keys);
                    return NULL;
                }
                delete_at(self, j);
                self->used--;
                removed++;
                break;
            }
            j = (j + 1) & self->mask;
        }
    }
    PyBuffer_Release(&keys);
    return PyLong_FromSsize_t(removed);
}

static PyObject *KeyTable_clear(KeyTable *self, PyObject *Py_UNUSED(ignored)) {
    for (size_t i = 0; i <= self->mask; i++) self->entries[i].slot = -1;
    self->used = 0;
    self->high = 0;
    self->free_count = 0;
    Py_RETURN_NONE;
}

static PyObject *KeyTable_get_high(KeyTable *self, void *Py_UNUSED(closure)) {
    return PyLong_FromLongLong(self->high);
}

static Py_ssize_t KeyTable_len(KeyTable *self) { return self->used; }

static int KeyTable_init(KeyTable *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    PyMem_Free(self->entries);
    self->entries = NULL;
    if (alloc_entries(self, 1024) < 0) return -1;
    self->used = 0;
    self->high = 0;
    self->free_count = 0;
    return 0;
}

static void KeyTable_dealloc(KeyTable *self) {
    PyMem_Free(self->entries);
    PyMem_Free(self->free_slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef KeyTable_methods[] = {
    {"find", (PyCFunction)KeyTable_find, METH_VARARGS,
     "find(keys, out) -> missing: out[i] = the slot of keys[i], or -1; returns how many "
     "were not found."},
    {"insert", (PyCFunction)KeyTable_insert, METH_VARARGS,
     "insert(keys, out) -> added: out[i] = the slot of keys[i], taking a free slot for a "
     "new key; returns how many keys were new."},
    {"remove", (PyCFunction)KeyTable_remove, METH_O,
     "remove(keys) -> removed: forget keys (absent ones are ignored); their slots are free "
     "for new keys."},
    {"clear", (PyCFunction)KeyTable_clear, METH_NOARGS, "Forget every key and slot."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef KeyTable_getset[] = {
    {"high", (getter)KeyTable_get_high, NULL,
     "One more than the highest slot ever handed out (size the slot arrays to it).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods KeyTable_as_sequence = {
    .sq_length = (lenfunc)KeyTable_len,
};

static PyTypeObject KeyTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phoenixcp.core.policy._keytable.KeyTable",
    .tp_doc = "uint64 series keys -> dense int64 slots (see the module docstring).",
    .tp_basicsize = sizeof(KeyTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)KeyTable_init,
    .tp_dealloc = (destructor)KeyTable_dealloc,
    .tp_methods = KeyTable_methods,
    .tp_getset = KeyTable_getset,
    .tp_as_sequence = &KeyTable_as_sequence,
};

/* ---- the engine's per-batch steps over slots ----------------------------------------------
 *
 * Two loops the engine ran as a dozen numpy calls per batch (each ~3 us of fixed cost, more
 * than the work on 1,000 series). ``spans`` are a batch's series_spans rows:
 * (start, end, points, histograms) as uint32. */

#define CODE_OBSERVE 1
#define CODE_DROP 2
#define CODE_MERGE 3
#define CODE_WATCH 4

/* Five array arguments: each taken with get_buffer() (item size, writable, name for errors);
 * on a failure the ones taken are released. release_args() releases all five. */
#define NARGS 5
typedef struct { Py_ssize_t itemsize; int writable; const char *what; } ArgSpec;

static int take_args(PyObject *args, const ArgSpec *spec, Py_buffer *view) {
    PyObject *obj[NARGS];
    if (!PyArg_ParseTuple(args, "OOOOO", &obj[0], &obj[1], &obj[2], &obj[3], &obj[4]))
        return -1;
    for (int i = 0; i < NARGS; i++) {
        if (get_buffer(obj[i], &view[i], spec[i].itemsize, spec[i].writable, spec[i].what) < 0) {
            while (i-- > 0) PyBuffer_Release(&view[i]);
            return -1;
        }
    }
    return 0;
}

static void release_args(Py_buffer *view) {
    for (int i = 0; i < NARGS; i++) PyBuffer_Release(&view[i]);
}

static const ArgSpec COUNT_ARGS[NARGS] = {
    {8, 0, "slots (int64)"}, {4, 0, "spans (uint32)"}, {8, 1, "points (int64)"},
    {4, 0, "route (int32)"}, {4, 1, "ids (int32)"},
};

static PyObject *count_points(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer v[NARGS];
    if (take_args(args, COUNT_ARGS, v) < 0) return NULL;
    Py_buffer *slots = &v[0], *spans = &v[1], *points = &v[2], *route = &v[3], *ids = &v[4];
    PyObject *result = NULL;
    Py_ssize_t n = slots->len / 8, held = points->len / 8;
    if (spans->len != n * 16 || ids->len != n * 4 || route->len / 4 != held) {
        PyErr_SetString(PyExc_ValueError, "count_points: spans must have 4 uint32 and ids one "
                        "int32 per slot, and route one int32 per points entry");
        goto done;
    }
    const int64_t *sl = slots->buf;
    const uint32_t *span = spans->buf;
    int64_t *pts = points->buf;
    const int32_t *rt = route->buf;
    int32_t *out = ids->buf;
    Py_ssize_t unrouted = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t slot = sl[i];
        if (slot < 0 || slot >= held) {
            PyErr_Format(PyExc_IndexError, "count_points: slot %lld is outside the %zd held",
                         (long long)slot, held);
            goto done;
        }
        pts[slot] += span[4 * i + 2];
        out[i] = rt[slot];
        unrouted += rt[slot] < 0;
    }
    result = PyLong_FromSsize_t(unrouted);
done:
    release_args(v);
    return result;
}

static const ArgSpec SPLIT_ARGS[NARGS] = {
    {4, 0, "ids (int32)"}, {4, 0, "spans (uint32)"}, {1, 0, "codes (int8)"},
    {8, 1, "passing (int64)"}, {8, 1, "merging (int64)"},
};

static PyObject *split_codes(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer v[NARGS];
    if (take_args(args, SPLIT_ARGS, v) < 0) return NULL;
    Py_buffer *ids = &v[0], *spans = &v[1], *codes = &v[2], *passing = &v[3], *merging = &v[4];
    PyObject *result = NULL;
    Py_ssize_t n = ids->len / 4, routes = codes->len;
    if (spans->len != n * 16 || passing->len != n * 8 || merging->len != n * 8) {
        PyErr_SetString(PyExc_ValueError, "split_codes: spans must have 4 uint32, passing and "
                        "merging one int64 per id");
        goto done;
    }
    const int32_t *id = ids->buf;
    const uint32_t *span = spans->buf;
    const int8_t *code = codes->buf;
    int64_t *pass_out = passing->buf, *merge_out = merging->buf;
    Py_ssize_t n_pass = 0, n_merge = 0, changed = 0;
    long long dropped = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (id[i] < 0 || id[i] >= routes) {
            PyErr_Format(PyExc_IndexError, "split_codes: route id %d is outside the %zd "
                         "routes", id[i], routes);
            goto done;
        }
        int c = code[id[i]];
        /* Native histograms are not merged (ADR 0007): such series pass unchanged. */
        if (c >= CODE_MERGE && span[4 * i + 3] > 0) c = CODE_OBSERVE;
        changed += c != 0;
        if (c <= CODE_OBSERVE || c == CODE_WATCH) pass_out[n_pass++] = i;
        if (c >= CODE_MERGE) merge_out[n_merge++] = i;
        if (c == CODE_DROP) dropped += span[4 * i + 2];
    }
    result = Py_BuildValue("nnLn", n_pass, n_merge, dropped, changed);
done:
    release_args(v);
    return result;
}

static PyMethodDef module_methods[] = {
    {"count_points", count_points, METH_VARARGS,
     "count_points(slots, spans, points, route, ids) -> unrouted: points[slots[i]] += the "
     "points of series i (spans[i, 2]), ids[i] = route[slots[i]]; returns how many ids are "
     "-1 (not routed yet)."},
    {"split_codes", split_codes, METH_VARARGS,
     "split_codes(ids, spans, codes, passing, merging) -> (n_pass, n_merge, dropped_points, "
     "changed): the code of series i is codes[ids[i]] (MERGE or WATCH of a series with "
     "native histograms reads OBSERVE); passing[:n_pass] gets the positions of PASS, OBSERVE "
     "and WATCH series, merging[:n_merge] those of MERGE and WATCH ones; dropped_points sums "
     "the points of DROP series; changed counts series whose code is not PASS."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_keytable",
    "Series key -> slot hash table for the policy engine's index, and the engine's per-batch "
    "loops over slots.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__keytable(void) {
    if (PyType_Ready(&KeyTableType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&KeyTableType);
    if (PyModule_AddObject(m, "KeyTable", (PyObject *)&KeyTableType) < 0) {
        Py_DECREF(&KeyTableType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
