/*
 * _mergecore: the state of CumulativeMerger and GaugeMerger in C (docs/adr/0009).
 *
 * CumulativeCore and GaugeCore hold what the reference mergers (_PyCumulativeMerger in
 * _counters.py, _PyGaugeMerger in _gauges.py) hold in dicts, with the same semantics:
 *
 *   per (group, series) input   last value and timestamp (gauges: also an arrival number,
 *                               for LAST ties)
 *   per group                   running total and dirty (cumulative); dirty and emitted
 *                               (gauges)
 *
 * Inputs live in one open-addressing table keyed by (group id, uint64 series key): linear
 * probing from a 64-bit mix of the key, growth at load 0.6, deletion by backward shift (no
 * tombstones), shrinking after a flush that left it under 1/16 full. Slots are 32 bytes in
 * a 64-byte aligned table (big tables on transparent huge pages), and observe_many
 * prefetches the slot of the point PREFETCH places ahead: the cost is one cache miss per
 * point, mostly overlapped. Groups are small ints
 * handed out by group_id(group); a dict maps group objects to them and a list keeps the
 * order in which groups came to hold state, so flush() emits in the reference's order (its
 * dict order). An id stays valid while its group holds state; flush() and close() free the
 * ids of groups they forget and of groups that never came to hold state, and reuse them.
 *
 *   group_id(group) -> int
 *   observe_many(gids: int32[n], series: uint64[n], timestamps_ms: int64[n],
 *                values: float64[n]) -> numpy bool[n]
 *   _observe_one(group, series: int, timestamp_ms: int, value: float) -> bool
 *   flush(now_ms) -> list[point_type]      close(now_ms) -> list[point_type]
 *   len(core)                               the number of inputs held
 *   CumulativeCore: _seed(group, series, timestamp_ms, value), total(group) -> float | None
 *   GaugeCore: _set_function(code)  (1 SUM, 2 AVG, 3 MIN, 4 MAX, 5 LAST); _arrivals, the
 *              last arrival number (a test hook: renumbering happens every 2**32 points)
 *
 * Arrays come in through the buffer protocol; one of another dtype or layout is converted
 * with numpy.ascontiguousarray (numpy is imported on first use, its headers are not needed).
 * Every id is checked before the first point is applied. Points are applied in order, each
 * exactly as _observe_one would. A gauge SUM/AVG is math.fsum's algorithm (exact, correctly
 * rounded), made total as the reference's _exact_sum is: infinities give their sum (NaN
 * for both signs), sums that could overflow are computed scaled by 2**-64. Nothing here is
 * thread-safe: the GIL is held throughout and one owner calls a merger (as for the dicts).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#define STALE_BITS 0x7FF0000000000002ULL /* Prometheus' staleness marker */
#define QNAN_BITS 0x7FF8000000000000ULL  /* float("nan") */
#define MIN_CAP 16
/* fsum's partials are non-overlapping: at most one per bit of the exponent range. */
#define MAX_PARTIALS 2112
#ifndef PREFETCH
#define PREFETCH 16
#endif

enum { KIND_CUMULATIVE = 0, KIND_GAUGE = 1 };
enum { F_SUM = 1, F_AVG = 2, F_MIN = 3, F_MAX = 4, F_LAST = 5 };

/* 32 bytes, and tables are 64-byte aligned: a lookup touches one cache line. */
typedef struct {
    uint64_t series;
    uint32_t gid1;  /* group id + 1; 0 marks an empty slot */
    uint32_t seq;   /* gauge: arrival number, renumbered before it would wrap */
    double value;   /* cumulative: last raw value; gauge: latest value */
    int64_t ts;
} Slot;

typedef struct {
    PyObject *key;  /* the group object; NULL while the id is free */
    double total;   /* cumulative running total */
    double acc;     /* gauge flush scratch: MIN/MAX/LAST so far */
    int64_t acc_ts;
    uint32_t acc_seq;
    size_t off;     /* gauge flush scratch: where its values start in the buffer */
    uint32_t fill, ninputs;
    int32_t prev, next; /* the order groups came to hold state */
    uint8_t live;   /* holds state (exists in the reference's dict) */
    uint8_t dirty, emitted, dropped, seen;
} Group;

typedef struct {
    PyObject_HEAD
    int ready, kind, function;
    int64_t idle_ms;
    PyObject *ids;        /* dict: group -> id */
    PyObject *point_type; /* a tuple subclass: (group, timestamp_ms, value) */
    Slot *slots;
    void *slots_raw; /* what to free: slots, before alignment */
    size_t cap, mask, count;
    Group *groups;
    int32_t ngroups, gcap, nfree, head, tail;
    int32_t *free_ids;
    uint32_t seq;
    double *scratch;
    size_t scratch_cap;
    double *partials;
} Core;

static PyTypeObject CumulativeCoreType;
static PyTypeObject GaugeCoreType;

static double from_bits(uint64_t b) { double d; memcpy(&d, &b, 8); return d; }

static inline uint64_t key_mix(uint64_t series, uint32_t gid1) {
    uint64_t h = series ^ ((uint64_t)gid1 * 0x9E3779B97F4A7C15ULL);
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

/* The slot holding the key (h = key_mix(series, gid1)), or the empty slot where it would go
 * (then s->gid1 == 0). */
static inline Slot *probe(const Core *c, uint64_t h, uint64_t series, uint32_t gid1) {
    size_t i = h & c->mask;
    for (;;) {
        Slot *s = &c->slots[i];
        if (s->gid1 == 0 || (s->series == series && s->gid1 == gid1))
            return s;
        i = (i + 1) & c->mask;
    }
}

static inline size_t home_of(const Slot *s, size_t mask) {
    return key_mix(s->series, s->gid1) & mask;
}

/* Big tables are mapped on their own and asked for transparent huge pages: a lookup is one
 * random access into megabytes, and with 4 KiB pages most of them would also miss the TLB. */
#if defined(MADV_HUGEPAGE) && defined(MAP_ANONYMOUS)
#define HUGE_TABLE ((size_t)2 << 20)
#endif

/* A zeroed, 64-byte aligned table of cap slots; *raw is what slots_free takes. */
static Slot *slots_alloc(size_t cap, void **raw) {
    size_t bytes = cap * sizeof(Slot);
#ifdef HUGE_TABLE
    if (bytes >= HUGE_TABLE) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
        *raw = p;
        return p;
    }
#endif
    char *p = PyMem_RawCalloc(bytes + 64, 1);
    if (p == NULL)
        return NULL;
    *raw = p;
    return (Slot *)(p + (64 - (uintptr_t)p % 64) % 64);
}

static void slots_free(void *raw, size_t cap) {
#ifdef HUGE_TABLE
    if (cap * sizeof(Slot) >= HUGE_TABLE) {
        munmap(raw, cap * sizeof(Slot));
        return;
    }
#endif
    PyMem_RawFree(raw);
}

static int resize(Core *c, size_t cap) {
    void *raw = NULL;
    Slot *fresh = slots_alloc(cap, &raw);
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t mask = cap - 1;
    for (size_t k = 0; k < c->cap; k++) {
        const Slot *s = &c->slots[k];
        if (s->gid1 == 0)
            continue;
        size_t i = home_of(s, mask);
        while (fresh[i].gid1)
            i = (i + 1) & mask;
        fresh[i] = *s;
    }
    if (c->slots_raw != NULL)
        slots_free(c->slots_raw, c->cap);
    c->slots = fresh;
    c->slots_raw = raw;
    c->cap = cap;
    c->mask = mask;
    return 0;
}

static inline int reserve_one(Core *c) {
    if ((c->count + 1) * 10 > c->cap * 6)
        return resize(c, c->cap * 2);
    return 0;
}

static void maybe_shrink(Core *c) {
    if (c->cap <= MIN_CAP || c->count * 16 >= c->cap)
        return;
    size_t cap = MIN_CAP;
    while (c->count * 10 > cap * 3)
        cap *= 2;
    if (resize(c, cap) < 0)
        PyErr_Clear(); /* keep the bigger table */
}

/* Backward-shift deletion: later members of the cluster move up unless that would put them
 * before their home slot. Only slots after i (up to the next empty one) change. */
static void delete_at(Core *c, size_t i) {
    Slot *t = c->slots;
    size_t mask = c->mask, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (t[j].gid1 == 0)
            break;
        size_t home = home_of(&t[j], mask);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t[i] = t[j];
            i = j;
        }
    }
    t[i].gid1 = 0;
    c->count--;
}

/* Deletes the inputs last seen before `horizon` of groups without a point since the last
 * flush, in one pass. The pass starts after an empty slot, so a backward shift only ever
 * moves an entry the pass has not reached yet. */
static void sweep_idle(Core *c, int64_t horizon) {
    if (c->count == 0)
        return;
    Slot *t = c->slots;
    size_t e = 0;
    while (t[e].gid1)
        e++;
    for (size_t k = 1; k < c->cap; k++) {
        size_t i = (e + k) & c->mask;
        while (t[i].gid1 && t[i].ts < horizon) {
            Group *g = &c->groups[t[i].gid1 - 1];
            if (g->dirty)
                break;
            g->ninputs--;
            g->dropped = 1;
            delete_at(c, i);
        }
    }
}

/* ---- groups ---- */

static void link_live(Core *c, int32_t id) {
    Group *g = &c->groups[id];
    g->live = 1;
    g->prev = c->tail;
    g->next = -1;
    if (c->tail >= 0)
        c->groups[c->tail].next = id;
    else
        c->head = id;
    c->tail = id;
}

static void unlink_live(Core *c, int32_t id) {
    Group *g = &c->groups[id];
    if (g->prev >= 0)
        c->groups[g->prev].next = g->next;
    else
        c->head = g->next;
    if (g->next >= 0)
        c->groups[g->next].prev = g->prev;
    else
        c->tail = g->prev;
    g->live = 0;
    g->prev = g->next = -1;
}

static void reset_group(Group *g) {
    memset(g, 0, sizeof *g);
    g->prev = g->next = -1;
}

/* Forgets a group: its id becomes free (its inputs must be gone already). */
static void forget_group(Core *c, int32_t id) {
    Group *g = &c->groups[id];
    if (g->live)
        unlink_live(c, id);
    PyObject *key = g->key;
    reset_group(g);
    c->free_ids[c->nfree++] = id;
    if (PyDict_DelItem(c->ids, key) < 0)
        PyErr_WriteUnraisable(key);
    Py_DECREF(key);
}

/* Ids handed out by group_id() whose group never came to hold state. */
static void forget_unused(Core *c) {
    for (int32_t id = 0; id < c->ngroups; id++)
        if (c->groups[id].key != NULL && !c->groups[id].live)
            forget_group(c, id);
}

static int grow_groups(Core *c) {
    int32_t gcap = c->gcap * 2;
    Group *groups = PyMem_Realloc(c->groups, (size_t)gcap * sizeof(Group));
    if (groups == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->groups = groups;
    int32_t *free_ids = PyMem_Realloc(c->free_ids, (size_t)gcap * sizeof(int32_t));
    if (free_ids == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    c->free_ids = free_ids;
    c->gcap = gcap;
    return 0;
}

/* The group's id; -1 when it has none and `create` is 0; -2 on error. */
static int32_t group_lookup(Core *c, PyObject *key, int create) {
    PyObject *found = PyDict_GetItemWithError(c->ids, key);
    if (found != NULL)
        return (int32_t)PyLong_AsLong(found);
    if (PyErr_Occurred())
        return -2;
    if (!create)
        return -1;
    int32_t id;
    if (c->nfree > 0) {
        id = c->free_ids[--c->nfree];
    } else {
        if (c->ngroups == c->gcap && grow_groups(c) < 0)
            return -2;
        id = c->ngroups++;
        reset_group(&c->groups[id]);
    }
    PyObject *pid = PyLong_FromLong(id);
    if (pid == NULL || PyDict_SetItem(c->ids, key, pid) < 0) {
        Py_XDECREF(pid);
        c->free_ids[c->nfree++] = id;
        return -2;
    }
    Py_DECREF(pid);
    Py_INCREF(key);
    c->groups[id].key = key;
    return id;
}

/* ---- one point (1 accepted, 0 refused, -1 error) ---- */

static inline int cumulative_point(Core *c, int32_t gid, uint64_t series, uint64_t h,
                                   int64_t ts, double v) {
    if (isnan(v) || v < 0)
        return 0;
    if (reserve_one(c) < 0)
        return -1;
    uint32_t gid1 = (uint32_t)gid + 1;
    Slot *s = probe(c, h, series, gid1);
    Group *g = &c->groups[gid];
    double increase;
    if (s->gid1 == 0) {
        s->series = series;
        s->gid1 = gid1;
        s->value = v;
        s->ts = ts;
        s->seq = 0;
        c->count++;
        g->ninputs++;
        if (!g->live)
            link_live(c, gid);
        increase = v;
    } else if (ts < s->ts) {
        return 0;
    } else {
        increase = v >= s->value ? v - s->value : v;
        s->value = v;
        s->ts = ts;
    }
    g->total += increase;
    g->dirty = 1;
    return 1;
}

static int by_arrival(const void *a, const void *b) {
    uint32_t x = (*(Slot *const *)a)->seq, y = (*(Slot *const *)b)->seq;
    return (x > y) - (x < y);
}

/* Arrival numbers are 32 bits: before they would wrap, number the inputs held 1..count in
 * the same order (only their order within a group is ever compared). */
static int renumber_arrivals(Core *c) {
    Slot **order = PyMem_RawMalloc((c->count ? c->count : 1) * sizeof(Slot *));
    if (order == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    size_t n = 0;
    for (size_t k = 0; k < c->cap; k++)
        if (c->slots[k].gid1)
            order[n++] = &c->slots[k];
    qsort(order, n, sizeof(Slot *), by_arrival);
    for (size_t k = 0; k < n; k++)
        order[k]->seq = (uint32_t)(k + 1);
    c->seq = (uint32_t)n;
    PyMem_RawFree(order);
    return 0;
}

static inline int gauge_point(Core *c, int32_t gid, uint64_t series, uint64_t h, int64_t ts,
                              double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    uint32_t gid1 = (uint32_t)gid + 1;
    Group *g = &c->groups[gid];
    if (bits == STALE_BITS) {
        if (!g->live)
            return 0;
        Slot *s = probe(c, h, series, gid1);
        if (s->gid1 == 0)
            return 0;
        delete_at(c, (size_t)(s - c->slots));
        g->ninputs--;
        g->dirty = 1;
        return 1;
    }
    if (isnan(v))
        return 0;
    if (reserve_one(c) < 0 || (c->seq == UINT32_MAX && renumber_arrivals(c) < 0))
        return -1;
    Slot *s = probe(c, h, series, gid1);
    if (s->gid1 != 0) {
        if (ts < s->ts)
            return 0;
    } else {
        s->series = series;
        s->gid1 = gid1;
        c->count++;
        g->ninputs++;
        if (!g->live)
            link_live(c, gid);
    }
    s->value = v;
    s->ts = ts;
    s->seq = ++c->seq;
    g->dirty = 1;
    return 1;
}

/* ---- gauge functions ---- */

/* math.fsum's algorithm (Shewchuk's partials, CPython's final rounding) over v * scale, for
 * values whose partial sums cannot overflow. Bit for bit what math.fsum returns. */
static double fsum_finite(const double *v, size_t n, double scale, double *p) {
    size_t np = 0;
    for (size_t k = 0; k < n; k++) {
        double x = v[k] * scale;
        size_t i = 0;
        for (size_t j = 0; j < np; j++) {
            double y = p[j];
            if (fabs(x) < fabs(y)) {
                double t = x;
                x = y;
                y = t;
            }
            double hi = x + y;
            double lo = y - (hi - x);
            if (lo != 0.0)
                p[i++] = lo;
            x = hi;
        }
        np = i;
        if (x != 0.0)
            p[np++] = x;
    }
    double hi = 0.0, lo = 0.0;
    if (np > 0) {
        hi = p[--np];
        while (np > 0) {
            double x = hi, y = p[--np];
            hi = x + y;
            lo = y - (hi - x);
            if (lo != 0.0)
                break;
        }
        if (np > 0 && ((lo < 0.0 && p[np - 1] < 0.0) || (lo > 0.0 && p[np - 1] > 0.0))) {
            double y = lo * 2.0;
            double x = hi + y;
            if (y == x - hi)
                hi = x;
        }
    }
    return hi;
}

/* The reference's _exact_sum: math.fsum where it is defined; infinities give their sum;
 * when n * max|v| >= 2**1000 (partial sums could overflow) the sum of v * 2**-64, times
 * 2**64. Never raises. */
static double exact_sum(const double *v, size_t n, double *partials) {
    int pos = 0, neg = 0;
    double most = 0.0;
    for (size_t k = 0; k < n; k++) {
        if (isinf(v[k])) {
            if (v[k] > 0)
                pos = 1;
            else
                neg = 1;
        } else if (fabs(v[k]) > most) {
            most = fabs(v[k]);
        }
    }
    if (pos || neg)
        return pos && neg ? from_bits(QNAN_BITS) : (pos ? INFINITY : -INFINITY);
    if (most * (double)n >= 0x1p1000)
        return fsum_finite(v, n, 0x1p-64, partials) * 0x1p64;
    return fsum_finite(v, n, 1.0, partials);
}

static inline void accumulate(Group *g, int function, const Slot *s, double *scratch) {
    double v = s->value;
    switch (function) {
    case F_SUM:
    case F_AVG:
        scratch[g->off + g->fill++] = v;
        return;
    case F_MIN: /* ties of 0.0 and -0.0 go to -0.0, whatever the order */
        if (!g->seen || v < g->acc || (v == g->acc && signbit(v)))
            g->acc = v;
        break;
    case F_MAX:
        if (!g->seen || v > g->acc || (v == g->acc && !signbit(v)))
            g->acc = v;
        break;
    default: /* LAST: the greatest (timestamp, arrival) */
        if (!g->seen || s->ts > g->acc_ts || (s->ts == g->acc_ts && s->seq > g->acc_seq)) {
            g->acc = v;
            g->acc_ts = s->ts;
            g->acc_seq = s->seq;
        }
    }
    g->seen = 1;
}

static double combine(Core *c, const Group *g) {
    switch (c->function) {
    case F_SUM:
        return exact_sum(c->scratch + g->off, g->fill, c->partials);
    case F_AVG:
        return exact_sum(c->scratch + g->off, g->fill, c->partials) / (double)g->fill;
    default:
        return g->acc;
    }
}

/* ---- flush ---- */

static int64_t horizon_of(const Core *c, int64_t now) {
    return now < INT64_MIN + c->idle_ms ? INT64_MIN : now - c->idle_ms;
}

static int emit(PyObject *out, const Core *c, PyObject *key, PyObject *ts, double value) {
    PyTypeObject *tp = (PyTypeObject *)c->point_type;
    PyObject *v = PyFloat_FromDouble(value);
    if (v == NULL)
        return -1;
    /* what tuple.__new__(point_type, (key, ts, v)) does */
    PyObject *p = tp->tp_alloc(tp, 3);
    if (p == NULL) {
        Py_DECREF(v);
        return -1;
    }
    Py_INCREF(key);
    Py_INCREF(ts);
    PyTuple_SET_ITEM(p, 0, key);
    PyTuple_SET_ITEM(p, 1, ts);
    PyTuple_SET_ITEM(p, 2, v);
    int rc = PyList_Append(out, p);
    Py_DECREF(p);
    return rc;
}

static int cumulative_flush(Core *c, int64_t now, PyObject *out, PyObject *ts) {
    int any_clean = 0;
    for (int32_t id = c->head; id >= 0; id = c->groups[id].next)
        any_clean |= !c->groups[id].dirty;
    if (any_clean)
        sweep_idle(c, horizon_of(c, now));
    int rc = 0;
    int32_t next;
    for (int32_t id = c->head; id >= 0; id = next) {
        Group *g = &c->groups[id];
        next = g->next;
        g->dropped = 0;
        if (g->dirty) {
            g->dirty = 0;
            if (rc == 0)
                rc = emit(out, c, g->key, ts, g->total);
        } else if (g->ninputs == 0) {
            PyObject *key = g->key;
            Py_INCREF(key);
            forget_group(c, id);
            if (rc == 0)
                rc = emit(out, c, key, ts, from_bits(STALE_BITS));
            Py_DECREF(key);
        }
    }
    return rc;
}

/* One pass over the table: forgets the inputs last seen before `horizon` and gathers the
 * others' values per group (each group's slice of the scratch buffer was reserved for all
 * its inputs). Starts after an empty slot, as sweep_idle does. */
static void gauge_sweep_gather(Core *c, int64_t horizon) {
    if (c->count == 0)
        return;
    Slot *t = c->slots;
    size_t e = 0;
    while (t[e].gid1)
        e++;
    for (size_t k = 1; k < c->cap; k++) {
        size_t i = (e + k) & c->mask;
        while (t[i].gid1) {
            Group *g = &c->groups[t[i].gid1 - 1];
            if (t[i].ts >= horizon) {
                accumulate(g, c->function, &t[i], c->scratch);
                break;
            }
            g->ninputs--;
            g->dropped = 1;
            delete_at(c, i);
        }
    }
}

static int gauge_flush(Core *c, int64_t now, PyObject *out, PyObject *ts) {
    size_t total = 0;
    for (int32_t id = c->head; id >= 0; id = c->groups[id].next) {
        Group *g = &c->groups[id];
        g->off = total;
        g->fill = 0;
        g->seen = 0;
        total += g->ninputs;
    }
    if ((c->function == F_SUM || c->function == F_AVG) && total > c->scratch_cap) {
        double *scratch = PyMem_RawRealloc(c->scratch, total * sizeof(double));
        if (scratch == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        c->scratch = scratch;
        c->scratch_cap = total;
    }
    gauge_sweep_gather(c, horizon_of(c, now));
    int rc = 0;
    int32_t next;
    for (int32_t id = c->head; id >= 0; id = next) {
        Group *g = &c->groups[id];
        next = g->next;
        if (g->ninputs == 0) {
            int emitted = g->emitted;
            PyObject *key = g->key;
            Py_INCREF(key);
            forget_group(c, id);
            if (emitted && rc == 0)
                rc = emit(out, c, key, ts, from_bits(STALE_BITS));
            Py_DECREF(key);
            continue;
        }
        if (g->dirty || g->dropped) {
            g->emitted = 1;
            if (rc == 0)
                rc = emit(out, c, g->key, ts, combine(c, g));
        }
        g->dirty = g->dropped = 0;
    }
    return rc;
}

/* ---- the Python types ---- */

static int check_ready(Core *c) {
    if (!c->ready) {
        PyErr_SetString(PyExc_RuntimeError, "merge state not initialised");
        return 0;
    }
    return 1;
}

static void release_state(Core *c) {
    for (int32_t id = 0; id < c->ngroups; id++)
        Py_CLEAR(c->groups[id].key);
    if (c->slots_raw != NULL)
        slots_free(c->slots_raw, c->cap);
    PyMem_Free(c->groups);
    PyMem_Free(c->free_ids);
    PyMem_RawFree(c->scratch);
    PyMem_Free(c->partials);
    c->slots = NULL;
    c->slots_raw = NULL;
    c->groups = NULL;
    c->free_ids = NULL;
    c->scratch = NULL;
    c->partials = NULL;
    c->cap = c->mask = c->count = c->scratch_cap = 0;
    c->ngroups = c->gcap = c->nfree = 0;
    c->ready = 0;
}

static int core_setup(Core *c, int kind, long long idle_ms, PyObject *point_type,
                      int function) {
    if (c->ready) {
        PyErr_SetString(PyExc_RuntimeError, "merge state already initialised");
        return -1;
    }
    if (idle_ms <= 0) {
        PyErr_Format(PyExc_ValueError, "idle_timeout_ms must be positive, got %lld", idle_ms);
        return -1;
    }
    if (!PyType_Check(point_type) ||
        !PyType_IsSubtype((PyTypeObject *)point_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "point_type must be a tuple subclass");
        return -1;
    }
    if (function < F_SUM || function > F_LAST) {
        PyErr_Format(PyExc_ValueError, "unknown gauge function %d", function);
        return -1;
    }
    c->kind = kind;
    c->function = function;
    c->idle_ms = idle_ms;
    c->head = c->tail = -1;
    c->slots = slots_alloc(MIN_CAP, &c->slots_raw);
    c->groups = PyMem_Malloc(MIN_CAP * sizeof(Group));
    c->free_ids = PyMem_Malloc(MIN_CAP * sizeof(int32_t));
    c->partials = PyMem_Malloc(MAX_PARTIALS * sizeof(double));
    c->ids = PyDict_New();
    if (!c->slots || !c->groups || !c->free_ids || !c->partials || !c->ids) {
        release_state(c);
        Py_CLEAR(c->ids);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    c->cap = MIN_CAP;
    c->mask = MIN_CAP - 1;
    c->gcap = MIN_CAP;
    Py_INCREF(point_type);
    Py_XSETREF(c->point_type, point_type);
    c->ready = 1;
    return 0;
}

static int cumulative_init(Core *c, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"idle_timeout_ms", "point_type", NULL};
    long long idle_ms;
    PyObject *point_type;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LO:CumulativeCore", kwlist, &idle_ms,
                                     &point_type))
        return -1;
    return core_setup(c, KIND_CUMULATIVE, idle_ms, point_type, F_SUM);
}

static int gauge_init(Core *c, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"idle_timeout_ms", "point_type", "function", NULL};
    long long idle_ms;
    PyObject *point_type;
    int function;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LOi:GaugeCore", kwlist, &idle_ms,
                                     &point_type, &function))
        return -1;
    return core_setup(c, KIND_GAUGE, idle_ms, point_type, function);
}

static int core_traverse(Core *c, visitproc visit, void *arg) {
    Py_VISIT(c->ids);
    Py_VISIT(c->point_type);
    for (int32_t id = 0; id < c->ngroups; id++)
        Py_VISIT(c->groups[id].key);
    return 0;
}

static int core_clear(Core *c) {
    Py_CLEAR(c->ids);
    Py_CLEAR(c->point_type);
    for (int32_t id = 0; id < c->ngroups; id++)
        Py_CLEAR(c->groups[id].key);
    c->ready = 0;
    return 0;
}

static void core_dealloc(Core *c) {
    PyObject_GC_UnTrack(c);
    core_clear(c);
    release_state(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *core_group_id(Core *c, PyObject *group) {
    if (!check_ready(c))
        return NULL;
    int32_t id = group_lookup(c, group, 1);
    return id < 0 ? NULL : PyLong_FromLong(id);
}

static PyObject *core_observe_one(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (!check_ready(c))
        return NULL;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "_observe_one(group, series, timestamp_ms, value) takes 4 arguments");
        return NULL;
    }
    uint64_t series = PyLong_AsUnsignedLongLong(args[1]);
    if (series == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    int64_t ts = PyLong_AsLongLong(args[2]);
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    double v = PyFloat_AsDouble(args[3]);
    if (v == -1.0 && PyErr_Occurred())
        return NULL;
    uint64_t bits;
    memcpy(&bits, &v, 8);
    int32_t id;
    if (c->kind == KIND_CUMULATIVE ? (isnan(v) || v < 0) : (isnan(v) && bits != STALE_BITS))
        Py_RETURN_FALSE;
    id = group_lookup(c, args[0], bits != STALE_BITS);
    if (id == -2)
        return NULL;
    if (id == -1)
        Py_RETURN_FALSE; /* a staleness marker for a group without state */
    uint64_t h = key_mix(series, (uint32_t)id + 1);
    int r = c->kind == KIND_CUMULATIVE ? cumulative_point(c, id, series, h, ts, v)
                                       : gauge_point(c, id, series, h, ts, v);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* numpy, imported on first use of an array that is not already right */
static PyObject *np_ascontiguousarray, *np_bool, *np_empty;

static int numpy_ready(void) {
    if (np_empty != NULL)
        return 0;
    PyObject *np = PyImport_ImportModule("numpy");
    if (np == NULL)
        return -1;
    PyObject *asc = PyObject_GetAttrString(np, "ascontiguousarray");
    PyObject *boolean = PyObject_GetAttrString(np, "bool_");
    PyObject *empty = PyObject_GetAttrString(np, "empty");
    Py_DECREF(np);
    if (!asc || !boolean || !empty) {
        Py_XDECREF(asc);
        Py_XDECREF(boolean);
        Py_XDECREF(empty);
        return -1;
    }
    np_ascontiguousarray = asc;
    np_bool = boolean;
    np_empty = empty;
    return 0;
}

typedef struct {
    Py_buffer view;
    PyObject *owner; /* the converted array, if one was needed */
    int held;
} Array;

static int little_endian(void) {
    const uint16_t one = 1;
    uint8_t first;
    memcpy(&first, &one, 1);
    return first == 1;
}

/* kind: 'i' signed, 'u' unsigned integer, 'f' IEEE double, '?' bool */
static int format_is(const Py_buffer *v, char kind, Py_ssize_t size) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || (*f == '<' && little_endian()) ||
        ((*f == '>' || *f == '!') && !little_endian()))
        f++;
    if (f[0] == '\0' || f[1] != '\0' || v->itemsize != size || v->ndim != 1)
        return 0;
    switch (kind) {
    case 'i':
        return strchr("bhilq", f[0]) != NULL;
    case 'u':
        return strchr("BHILQ", f[0]) != NULL;
    case 'f':
        return f[0] == 'd';
    default:
        return f[0] == '?';
    }
}

static int array_get(PyObject *obj, char kind, Py_ssize_t size, const char *dtype,
                     const char *name, Array *a) {
    if (PyObject_GetBuffer(obj, &a->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) == 0) {
        if (format_is(&a->view, kind, size)) {
            a->held = 1;
            return 0;
        }
        PyBuffer_Release(&a->view);
    } else {
        PyErr_Clear(); /* not a contiguous buffer: numpy may make one */
    }
    if (numpy_ready() < 0)
        return -1;
    a->owner = PyObject_CallFunction(np_ascontiguousarray, "Os", obj, dtype);
    if (a->owner == NULL)
        return -1;
    if (PyObject_GetBuffer(a->owner, &a->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    a->held = 1;
    if (!format_is(&a->view, kind, size)) {
        PyErr_Format(PyExc_ValueError, "%s must be a one-dimensional %s array", name, dtype);
        return -1;
    }
    return 0;
}

static void array_release(Array *a) {
    if (a->held)
        PyBuffer_Release(&a->view);
    a->held = 0;
    Py_CLEAR(a->owner);
}

static PyObject *core_observe_many(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (!check_ready(c))
        return NULL;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "observe_many(gids, series, timestamps_ms, values) takes 4 arguments");
        return NULL;
    }
    Array a[4];
    memset(a, 0, sizeof a);
    PyObject *out = NULL;
    Py_buffer ob;
    int ob_held = 0;
    if (array_get(args[0], 'i', 4, "int32", "gids", &a[0]) < 0 ||
        array_get(args[1], 'u', 8, "uint64", "series", &a[1]) < 0 ||
        array_get(args[2], 'i', 8, "int64", "timestamps_ms", &a[2]) < 0 ||
        array_get(args[3], 'f', 8, "float64", "values", &a[3]) < 0)
        goto done;
    Py_ssize_t n = a[0].view.shape[0];
    if (a[1].view.shape[0] != n || a[2].view.shape[0] != n || a[3].view.shape[0] != n) {
        PyErr_Format(PyExc_ValueError,
                     "observe_many: arrays of different lengths (%zd, %zd, %zd, %zd)", n,
                     a[1].view.shape[0], a[2].view.shape[0], a[3].view.shape[0]);
        goto done;
    }
    const int32_t *gids = a[0].view.buf;
    const uint64_t *series = a[1].view.buf;
    const int64_t *ts = a[2].view.buf;
    const double *values = a[3].view.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        int32_t id = gids[i];
        if (id < 0 || id >= c->ngroups || c->groups[id].key == NULL) {
            PyErr_Format(PyExc_ValueError,
                         "unknown group id %d (ids from group_id() are valid until the next "
                         "flush or close)", (int)id);
            goto done;
        }
    }
    if (numpy_ready() < 0)
        goto done;
    out = PyObject_CallFunction(np_empty, "nO", n, np_bool);
    if (out == NULL || PyObject_GetBuffer(out, &ob, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_CLEAR(out);
        goto done;
    }
    ob_held = 1;
    uint8_t *accepted = ob.buf;
    int cumulative = c->kind == KIND_CUMULATIVE;
    /* the keys' mixes, PREFETCH points ahead of the one applied, their slots prefetched */
    uint64_t ahead[PREFETCH];
    for (Py_ssize_t i = 0; i < n && i < PREFETCH; i++) {
        ahead[i] = key_mix(series[i], (uint32_t)gids[i] + 1);
#if defined(__GNUC__)
        __builtin_prefetch(&c->slots[ahead[i] & c->mask], 1);
#endif
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t h = ahead[i % PREFETCH];
        if (i + PREFETCH < n) {
            uint64_t next = key_mix(series[i + PREFETCH], (uint32_t)gids[i + PREFETCH] + 1);
            ahead[i % PREFETCH] = next;
#if defined(__GNUC__)
            __builtin_prefetch(&c->slots[next & c->mask], 1);
#endif
        }
        int r = cumulative ? cumulative_point(c, gids[i], series[i], h, ts[i], values[i])
                           : gauge_point(c, gids[i], series[i], h, ts[i], values[i]);
        if (r < 0) {
            Py_CLEAR(out);
            goto done;
        }
        accepted[i] = (uint8_t)r;
    }
done:
    if (ob_held)
        PyBuffer_Release(&ob);
    for (int k = 0; k < 4; k++)
        array_release(&a[k]);
    return out;
}

static int flush_into(Core *c, int64_t now, PyObject **out, PyObject **ts) {
    *out = PyList_New(0);
    *ts = PyLong_FromLongLong(now);
    if (*out == NULL || *ts == NULL)
        return -1;
    int rc = c->kind == KIND_CUMULATIVE ? cumulative_flush(c, now, *out, *ts)
                                        : gauge_flush(c, now, *out, *ts);
    forget_unused(c);
    maybe_shrink(c);
    return rc;
}

static PyObject *core_flush(Core *c, PyObject *now_obj) {
    if (!check_ready(c))
        return NULL;
    int64_t now = PyLong_AsLongLong(now_obj);
    if (now == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = NULL, *ts = NULL;
    if (flush_into(c, now, &out, &ts) < 0)
        Py_CLEAR(out);
    Py_XDECREF(ts);
    return out;
}

static PyObject *core_close(Core *c, PyObject *now_obj) {
    if (!check_ready(c))
        return NULL;
    int64_t now = PyLong_AsLongLong(now_obj);
    if (now == -1 && PyErr_Occurred())
        return NULL;
    PyObject *out = NULL, *ts = NULL;
    int rc = flush_into(c, now, &out, &ts);
    for (int32_t id = c->head; id >= 0 && rc == 0; id = c->groups[id].next)
        rc = emit(out, c, c->groups[id].key, ts, from_bits(STALE_BITS));
    Py_XDECREF(ts);
    /* forget everything, whatever happened above */
    while (c->head >= 0)
        unlink_live(c, c->head);
    for (int32_t id = 0; id < c->ngroups; id++) {
        Py_CLEAR(c->groups[id].key);
        reset_group(&c->groups[id]);
    }
    c->ngroups = c->nfree = 0;
    PyDict_Clear(c->ids);
    memset(c->slots, 0, c->cap * sizeof(Slot));
    c->count = 0;
    maybe_shrink(c);
    if (rc < 0)
        Py_CLEAR(out);
    return out;
}

static PyObject *cumulative_seed(Core *c, PyObject *const *args, Py_ssize_t nargs) {
    if (!check_ready(c))
        return NULL;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "_seed(group, series, timestamp_ms, value) takes 4 arguments");
        return NULL;
    }
    uint64_t series = PyLong_AsUnsignedLongLong(args[1]);
    if (series == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    int64_t ts = PyLong_AsLongLong(args[2]);
    if (ts == -1 && PyErr_Occurred())
        return NULL;
    double v = PyFloat_AsDouble(args[3]);
    if (v == -1.0 && PyErr_Occurred())
        return NULL;
    int32_t id = group_lookup(c, args[0], 1);
    if (id < 0 || reserve_one(c) < 0)
        return NULL;
    uint32_t gid1 = (uint32_t)id + 1;
    uint64_t h = key_mix(series, gid1);
    Slot *s = probe(c, h, series, gid1);
    if (s->gid1 == 0) {
        s->series = series;
        s->gid1 = gid1;
        s->seq = 0;
        c->count++;
        c->groups[id].ninputs++;
    }
    s->value = v;
    s->ts = ts;
    if (!c->groups[id].live)
        link_live(c, id);
    Py_RETURN_NONE;
}

static PyObject *cumulative_total(Core *c, PyObject *group) {
    if (!check_ready(c))
        return NULL;
    int32_t id = group_lookup(c, group, 0);
    if (id == -2)
        return NULL;
    if (id < 0 || !c->groups[id].live)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(c->groups[id].total);
}

static PyObject *gauge_set_function(Core *c, PyObject *arg) {
    if (!check_ready(c))
        return NULL;
    long f = PyLong_AsLong(arg);
    if (f == -1 && PyErr_Occurred())
        return NULL;
    if (f < F_SUM || f > F_LAST) {
        PyErr_Format(PyExc_ValueError, "unknown gauge function %ld", f);
        return NULL;
    }
    c->function = (int)f;
    Py_RETURN_NONE;
}

/* The last arrival number handed out; settable so tests can reach the renumbering. */
static PyObject *gauge_get_arrivals(Core *c, void *closure) {
    return PyLong_FromUnsignedLong(c->seq);
}

static int gauge_set_arrivals(Core *c, PyObject *value, void *closure) {
    if (!check_ready(c))
        return -1;
    unsigned long seq = value == NULL ? (unsigned long)-1 : PyLong_AsUnsignedLong(value);
    if (seq == (unsigned long)-1 && (value == NULL || PyErr_Occurred())) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "_arrivals cannot be deleted");
        return -1;
    }
    if (seq > UINT32_MAX || seq < c->seq) {
        PyErr_SetString(PyExc_ValueError, "_arrivals only moves forward, up to 2**32 - 1");
        return -1;
    }
    c->seq = (uint32_t)seq;
    return 0;
}

static PyGetSetDef gauge_getset[] = {
    {"_arrivals", (getter)gauge_get_arrivals, (setter)gauge_set_arrivals,
     "the last arrival number (32 bits; renumbered before it wraps)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static Py_ssize_t core_len(Core *c) {
    return (Py_ssize_t)c->count;
}

#define COMMON_METHODS                                                                       \
    {"group_id", (PyCFunction)core_group_id, METH_O,                                         \
     "group_id(group) -> int: a small id for group, valid until the next flush or close."},  \
        {"observe_many", (PyCFunction)(void (*)(void))core_observe_many, METH_FASTCALL,      \
         "observe_many(gids, series, timestamps_ms, values) -> numpy bool array."},          \
        {"_observe_one", (PyCFunction)(void (*)(void))core_observe_one, METH_FASTCALL,       \
         "_observe_one(group, series: int, timestamp_ms, value) -> bool."},                  \
        {"flush", (PyCFunction)core_flush, METH_O, "flush(now_ms) -> list of points."},      \
        {"close", (PyCFunction)core_close, METH_O, "close(now_ms) -> list of points."}

static PyMethodDef cumulative_methods[] = {
    COMMON_METHODS,
    {"_seed", (PyCFunction)(void (*)(void))cumulative_seed, METH_FASTCALL,
     "_seed(group, series: int, timestamp_ms, value)."},
    {"total", (PyCFunction)cumulative_total, METH_O, "total(group) -> float | None."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef gauge_methods[] = {
    COMMON_METHODS,
    {"_set_function", (PyCFunction)gauge_set_function, METH_O,
     "_set_function(code): 1 SUM, 2 AVG, 3 MIN, 4 MAX, 5 LAST."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods core_as_sequence = {.sq_length = (lenfunc)core_len};

static PyTypeObject CumulativeCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phoenixcp.core.aggregation._mergecore.CumulativeCore",
    .tp_doc = "CumulativeCore(idle_timeout_ms, point_type): CumulativeMerger's state in C.",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)cumulative_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = cumulative_methods,
    .tp_as_sequence = &core_as_sequence,
};

static PyTypeObject GaugeCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phoenixcp.core.aggregation._mergecore.GaugeCore",
    .tp_doc = "GaugeCore(idle_timeout_ms, point_type, function): GaugeMerger's state in C.",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)gauge_init,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = gauge_methods,
    .tp_getset = gauge_getset,
    .tp_as_sequence = &core_as_sequence,
};

static struct PyModuleDef mergecore_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_mergecore",
    .m_doc = "CumulativeMerger's and GaugeMerger's state in C hash tables (ADR 0009).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__mergecore(void) {
    if (PyType_Ready(&CumulativeCoreType) < 0 || PyType_Ready(&GaugeCoreType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&mergecore_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CumulativeCoreType);
    if (PyModule_AddObject(m, "CumulativeCore", (PyObject *)&CumulativeCoreType) < 0) {
        Py_DECREF(&CumulativeCoreType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&GaugeCoreType);
    if (PyModule_AddObject(m, "GaugeCore", (PyObject *)&GaugeCoreType) < 0) {
        Py_DECREF(&GaugeCoreType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
