/* OTLP ExportMetricsServiceRequest bytes -> Prometheus WriteRequest TimeSeries bytes (ADR 0013).
 *
 * convert(data, hooks) -> bytes. The contract, and the pure-Python twin, are in
 * _otlpconvert_py.py: this walks the request's wire format once, asks `hooks` each naming
 * question once per call (answers are cached here by their question's bytes), merges labels
 * (attributes, then the resource's, then the slot labels override by name), sorts them by
 * name, merges samples of equal label sets and writes the series in order of first sample.
 *
 * The input is what upb's SerializeToString wrote, but every read is bounds-checked and a
 * malformed request raises ValueError, as does a metric name, description or unit that is not
 * UTF-8 (naming it, in the twin's words). Holds the GIL throughout (it calls the hooks).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { K_NONE, K_GAUGE, K_SUM, K_HISTOGRAM, K_EXPONENTIAL, K_SUMMARY };

static const uint64_t STALE_BITS = 0x7FF0000000000002ULL;

/* ---------------------------------------------------------------- wire reading */

typedef struct {
    const uint8_t *p, *end;
} Cur;

typedef struct {
    uint32_t field;
    uint32_t wire;
    uint64_t num;            /* varint / fixed value */
    const uint8_t *data;     /* LEN payload */
    Py_ssize_t len;
} Field;

static int malformed(const char *what) {
    PyErr_Format(PyExc_ValueError, "malformed OTLP request: %s", what);
    return -1;
}

static int read_varint(Cur *c, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (c->p >= c->end) return malformed("truncated varint");
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return malformed("varint too long");
}

/* 1 when a field was read, 0 at the end, -1 on error. */
static int next_field(Cur *c, Field *f) {
    if (c->p >= c->end) return 0;
    uint64_t key;
    if (read_varint(c, &key) < 0) return -1;
    f->field = (uint32_t)(key >> 3);
    f->wire = (uint32_t)(key & 7);
    switch (f->wire) {
    case 0:
        return read_varint(c, &f->num) < 0 ? -1 : 1;
    case 1:
        if (c->end - c->p < 8) return malformed("truncated fixed64");
        memcpy(&f->num, c->p, 8);  /* little-endian hosts only (checked at import) */
        c->p += 8;
        return 1;
    case 5:
        if (c->end - c->p < 4) return malformed("truncated fixed32");
        {
            uint32_t v;
            memcpy(&v, c->p, 4);
            f->num = v;
        }
        c->p += 4;
        return 1;
    case 2: {
        uint64_t n;
        if (read_varint(c, &n) < 0) return -1;
        if (n > (uint64_t)(c->end - c->p)) return malformed("length past the end");
        f->data = c->p;
        f->len = (Py_ssize_t)n;
        c->p += n;
        return 1;
    }
    default:
        return malformed("unsupported wire type");
    }
}

static double as_double(uint64_t bits) {
    double d;
    memcpy(&d, &bits, 8);
    return d;
}

/* ---------------------------------------------------------------- growable buffers */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + more) cap *= 2;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const void *data, Py_ssize_t n) {
    if (n <= 0) return 0;
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, data, (size_t)n);
    b->len += n;
    return 0;
}

static int put_varint(uint8_t *out, uint64_t v) {
    int n = 0;
    while (v > 0x7F) {
        out[n++] = (uint8_t)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

/* ---------------------------------------------------------------- state of one call */

typedef struct {
    const char *name;  /* UTF-8, borrowed from a bytes object the caches keep alive */
    Py_ssize_t name_len;
    PyObject *enc;     /* borrowed: the encoded TimeSeries.labels entry */
} Label;

typedef struct {
    PyObject *labels;  /* owned bytes: the sorted labels, encoded */
    Buf samples;
} Series;

typedef struct {
    PyObject *hooks;
    PyObject *keep;        /* list: every hook answer, alive until the end */
    PyObject *attributes;  /* dict: KeyValue bytes -> (name, enc) or None */
    PyObject *bounds;      /* dict: packed bounds bytes -> tuple of le encs */
    PyObject *quantiles;   /* dict: int (bits) -> enc */
    PyObject *index;       /* dict: label bytes -> int */
    Series *series;
    Py_ssize_t n_series, cap_series;
    Label *labels;         /* scratch: one point's labels */
    Py_ssize_t cap_labels;
    Label *work;           /* scratch: one series' labels */
    Py_ssize_t cap_work;
    Buf key;
} State;

static int grow_labels(Label **arr, Py_ssize_t *cap, Py_ssize_t need) {
    if (need <= *cap) return 0;
    Py_ssize_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    Label *p = PyMem_Realloc(*arr, (size_t)c * sizeof(Label));
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    *arr = p;
    *cap = c;
    return 0;
}

/* A (name bytes, enc bytes) answer as a Label; the answer must be kept alive by the caller. */
static int label_of(PyObject *pair, Label *out) {
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
        !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
        PyErr_SetString(PyExc_TypeError, "a label must be a (bytes, bytes) tuple");
        return -1;
    }
    PyObject *name = PyTuple_GET_ITEM(pair, 0);
    out->name = PyBytes_AS_STRING(name);
    out->name_len = PyBytes_GET_SIZE(name);
    out->enc = PyTuple_GET_ITEM(pair, 1);
    return 0;
}

static int same_name(const Label *a, const char *name, Py_ssize_t len) {
    return a->name_len == len && memcmp(a->name, name, (size_t)len) == 0;
}

static int name_cmp(const Label *a, const Label *b) {
    Py_ssize_t n = a->name_len < b->name_len ? a->name_len : b->name_len;
    int c = memcmp(a->name, b->name, (size_t)n);
    if (c) return c;
    return (a->name_len > b->name_len) - (a->name_len < b->name_len);
}

/* Set `name` to `enc` in labels[0..*n): replaces a label of that name, else appends. */
static void set_label(Label *labels, Py_ssize_t *n, const char *name, Py_ssize_t len,
                      PyObject *enc) {
    for (Py_ssize_t i = 0; i < *n; i++) {
        if (same_name(&labels[i], name, len)) {
            labels[i].enc = enc;
            return;
        }
    }
    labels[*n].name = name;
    labels[*n].name_len = len;
    labels[*n].enc = enc;
    (*n)++;
}

/* One sample of the series whose labels are work[0..n) (sorted here). */
static int add_sample(State *s, Py_ssize_t n, double value, uint64_t time_ns) {
    Label *w = s->work;
    for (Py_ssize_t i = 1; i < n; i++) {  /* insertion sort: a few labels */
        Label x = w[i];
        Py_ssize_t j = i;
        while (j > 0 && name_cmp(&w[j - 1], &x) > 0) {
            w[j] = w[j - 1];
            j--;
        }
        w[j] = x;
    }
    s->key.len = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (buf_put(&s->key, PyBytes_AS_STRING(w[i].enc), PyBytes_GET_SIZE(w[i].enc)) < 0)
            return -1;
    }
    PyObject *key = PyBytes_FromStringAndSize(s->key.p, s->key.len);
    if (!key) return -1;
    Py_ssize_t at;
    PyObject *found = PyDict_GetItemWithError(s->index, key);
    if (found) {
        at = PyLong_AsSsize_t(found);
        Py_DECREF(key);
    } else {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        if (s->n_series == s->cap_series) {
            Py_ssize_t cap = s->cap_series ? s->cap_series * 2 : 256;
            Series *p = PyMem_Realloc(s->series, (size_t)cap * sizeof(Series));
            if (!p) {
                Py_DECREF(key);
                PyErr_NoMemory();
                return -1;
            }
            s->series = p;
            s->cap_series = cap;
        }
        at = s->n_series;
        PyObject *number = PyLong_FromSsize_t(at);
        if (!number || PyDict_SetItem(s->index, key, number) < 0) {
            Py_XDECREF(number);
            Py_DECREF(key);
            return -1;
        }
        Py_DECREF(number);
        s->series[at].labels = key;  /* owns the reference */
        memset(&s->series[at].samples, 0, sizeof(Buf));
        s->n_series++;
    }
    /* TimeSeries.samples: value (left out when +0.0, as proto3 does), timestamp in ms */
    uint8_t sample[2 + 9 + 11];
    int len = 0;
    uint64_t bits;
    memcpy(&bits, &value, 8);
    if (bits != 0) {
        sample[2 + len++] = 0x09;
        memcpy(sample + 2 + len, &value, 8);
        len += 8;
    }
    uint64_t ms = time_ns / 1000000u;
    if (ms) {
        sample[2 + len++] = 0x10;
        len += put_varint(sample + 2 + len, ms);
    }
    sample[0] = 0x12;
    sample[1] = (uint8_t)len;  /* at most 20 */
    return buf_put(&s->series[at].samples, sample, len + 2);
}

/* work = point labels, then slot labels a and b (name NULL: none). */
static int emit(State *s, Py_ssize_t n, const char *a, Py_ssize_t a_len, PyObject *a_enc,
                const char *b, Py_ssize_t b_len, PyObject *b_enc, double value,
                uint64_t time_ns) {
    if (grow_labels(&s->work, &s->cap_work, n + 2) < 0) return -1;
    if (n) memcpy(s->work, s->labels, (size_t)n * sizeof(Label));
    if (a) set_label(s->work, &n, a, a_len, a_enc);
    if (b) set_label(s->work, &n, b, b_len, b_enc);
    return add_sample(s, n, value, time_ns);
}

/* ---------------------------------------------------------------- attributes */

/* s->labels[0..*n) = the labels of a point's attributes; `first` is where the point's
 * fields start, `tag` the attributes' field number. */
static int point_attributes(State *s, const uint8_t *p, const uint8_t *end, uint32_t tag,
                            Py_ssize_t *n) {
    Cur c = {p, end};
    Field f;
    int r;
    Py_ssize_t count = 0;
    int collide = 0;
    *n = 0;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.field != tag || f.wire != 2) continue;
        PyObject *kv = PyBytes_FromStringAndSize((const char *)f.data, f.len);
        if (!kv) return -1;
        PyObject *answer = PyDict_GetItemWithError(s->attributes, kv);
        if (!answer) {
            if (PyErr_Occurred()) {
                Py_DECREF(kv);
                return -1;
            }
            answer = PyObject_CallMethod(s->hooks, "attribute", "O", kv);
            if (!answer || PyDict_SetItem(s->attributes, kv, answer) < 0) {
                Py_XDECREF(answer);
                Py_DECREF(kv);
                return -1;
            }
            Py_DECREF(answer);  /* the dict keeps it */
        }
        Py_DECREF(kv);
        count++;
        if (answer == Py_None || collide) continue;
        if (grow_labels(&s->labels, &s->cap_labels, *n + 1) < 0) return -1;
        Label l;
        if (label_of(answer, &l) < 0) return -1;
        for (Py_ssize_t i = 0; i < *n; i++) {
            if (same_name(&s->labels[i], l.name, l.name_len)) collide = 1;
        }
        s->labels[(*n)++] = l;
    }
    if (r < 0) return -1;
    if (!collide) return 0;
    /* names collide after sanitising: the hook joins them */
    PyObject *all = PyList_New(0);
    if (!all) return -1;
    c.p = p;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.field != tag || f.wire != 2) continue;
        PyObject *kv = PyBytes_FromStringAndSize((const char *)f.data, f.len);
        if (!kv || PyList_Append(all, kv) < 0) {
            Py_XDECREF(kv);
            Py_DECREF(all);
            return -1;
        }
        Py_DECREF(kv);
    }
    if (r < 0) {
        Py_DECREF(all);
        return -1;
    }
    PyObject *answer = PyObject_CallMethod(s->hooks, "colliding", "O", all);
    Py_DECREF(all);
    if (!answer) return -1;
    if (PyList_Append(s->keep, answer) < 0) {
        Py_DECREF(answer);
        return -1;
    }
    Py_DECREF(answer);
    PyObject *seq = PySequence_Fast(answer, "colliding() must return a list");
    if (!seq) return -1;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    if (grow_labels(&s->labels, &s->cap_labels, m) < 0 ||
        PyList_Append(s->keep, seq) < 0) {
        Py_DECREF(seq);
        return -1;
    }
    *n = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (label_of(PySequence_Fast_GET_ITEM(seq, i), &s->labels[(*n)++]) < 0) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* labels += base (override by name) */
static int add_base(State *s, Label *base, Py_ssize_t n_base, Py_ssize_t *n) {
    if (grow_labels(&s->labels, &s->cap_labels, *n + n_base) < 0) return -1;
    for (Py_ssize_t i = 0; i < n_base; i++)
        set_label(s->labels, n, base[i].name, base[i].name_len, base[i].enc);
    return 0;
}

/* ---------------------------------------------------------------- data points */

/* Why a histogram point was refused: its bounds (the bounds() answer was ()), or bucket
   counts that do not fit its bounds. Reported in this order (refused()). */
enum { BAD_BOUNDS, BAD_COUNTS };

typedef struct {
    PyObject *names[3];  /* borrowed from the metric() answer */
    Label *base;
    Py_ssize_t n_base;
    /* per reason: points refused; the last one's bucket counts and bounds (owned bytes) */
    Py_ssize_t refused[2], last_counts[2];
    PyObject *last_bounds[2];
} Metric;

static int number_point(State *s, Metric *m, const uint8_t *p, const uint8_t *end) {
    Cur c = {p, end};
    Field f;
    int r;
    uint64_t time_ns = 0, flags = 0, value_bits = 0;
    int is_int = 0;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.field == 3 && f.wire == 1) time_ns = f.num;
        else if (f.field == 4 && f.wire == 1) value_bits = f.num, is_int = 0;
        else if (f.field == 6 && f.wire == 1) value_bits = f.num, is_int = 1;
        else if (f.field == 8 && f.wire == 0) flags = f.num;
    }
    if (r < 0) return -1;
    Py_ssize_t n;
    if (point_attributes(s, p, end, 7, &n) < 0 || add_base(s, m->base, m->n_base, &n) < 0)
        return -1;
    double value;
    if (flags & 1) value = as_double(STALE_BITS);
    else if (is_int) value = (double)(int64_t)value_bits;
    else value = as_double(value_bits);
    return emit(s, n, "__name__", 8, m->names[0], NULL, 0, NULL, value, time_ns);
}

static int histogram_point(State *s, Metric *m, const uint8_t *p, const uint8_t *end,
                           Buf *bounds, Buf *counts) {
    Cur c = {p, end};
    Field f;
    int r;
    uint64_t time_ns = 0, flags = 0, count = 0, sum_bits = 0;
    int has_sum = 0;
    bounds->len = counts->len = 0;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.field == 3 && f.wire == 1) time_ns = f.num;
        else if (f.field == 4 && f.wire == 1) count = f.num;
        else if (f.field == 5 && f.wire == 1) sum_bits = f.num, has_sum = 1;
        else if (f.field == 10 && f.wire == 0) flags = f.num;
        else if ((f.field == 6 || f.field == 7) && (f.wire == 1 || f.wire == 2)) {
            Buf *into = f.field == 6 ? counts : bounds;
            if (f.wire == 1) {
                if (buf_put(into, &f.num, 8) < 0) return -1;
            } else {
                if (f.len % 8) return malformed("packed fixed64 length");
                if (buf_put(into, f.data, f.len) < 0) return -1;
            }
        }
    }
    if (r < 0) return -1;
    Py_ssize_t n_bounds = bounds->len / 8, n_counts = counts->len / 8;
    PyObject *key = PyBytes_FromStringAndSize(bounds->p ? bounds->p : "", bounds->len);
    if (!key) return -1;
    PyObject *les = PyDict_GetItemWithError(s->bounds, key);
    if (!les) {
        if (PyErr_Occurred()) {
            Py_DECREF(key);
            return -1;
        }
        les = PyObject_CallMethod(s->hooks, "bounds", "O", key);
        if (!les || PyDict_SetItem(s->bounds, key, les) < 0) {
            Py_XDECREF(les);
            Py_DECREF(key);
            return -1;
        }
        Py_DECREF(les);
    }
    if (!PyTuple_Check(les)) {
        Py_DECREF(key);
        PyErr_SetString(PyExc_TypeError, "bounds() must return a tuple");
        return -1;
    }
    Py_ssize_t n_les = PyTuple_GET_SIZE(les);
    /* OTLP allows bounds and counts together (counts = bounds + 1) or neither (count and sum
       only); bounds without counts, or counts that do not fit, refuse the point. */
    if (n_les == 0 || ((n_counts || n_bounds) && n_counts != n_bounds + 1)) {
        int why = n_les == 0 ? BAD_BOUNDS : BAD_COUNTS;
        PyObject *old = m->last_bounds[why];
        m->refused[why]++;
        m->last_counts[why] = n_counts;
        m->last_bounds[why] = key;  /* takes the reference */
        Py_XDECREF(old);
        return 0;
    }
    Py_DECREF(key);
    /* One le label per bound and +Inf; or one fewer when the last bound is +Inf itself, and
       then the +Inf bucket also takes the count past that bound. */
    if (n_les != n_bounds + 1 && !(n_bounds && n_les == n_bounds)) {
        PyErr_SetString(PyExc_ValueError, "bounds() returned the wrong number of labels");
        return -1;
    }
    for (Py_ssize_t i = 0; i < n_les; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(les, i))) {
            PyErr_SetString(PyExc_TypeError, "bounds() must return bytes");
            return -1;
        }
    }
    Py_ssize_t n;
    if (point_attributes(s, p, end, 9, &n) < 0 || add_base(s, m->base, m->n_base, &n) < 0)
        return -1;
    int stale = (int)(flags & 1);
    double stale_value = as_double(STALE_BITS);
    unsigned __int128 running = 0;
    for (Py_ssize_t i = 0; i < n_counts; i++) {
        uint64_t bucket;
        memcpy(&bucket, counts->p + 8 * i, 8);
        running += bucket;
        if (i < n_les - 1 && emit(s, n, "__name__", 8, m->names[0], "le", 2,
                                  PyTuple_GET_ITEM(les, i),
                                  stale ? stale_value : (double)running, time_ns) < 0)
            return -1;
    }
    if (!n_counts) running = count;
    if (emit(s, n, "__name__", 8, m->names[0], "le", 2, PyTuple_GET_ITEM(les, n_les - 1),
             stale ? stale_value : (double)running, time_ns) < 0)
        return -1;
    if (has_sum && emit(s, n, "__name__", 8, m->names[1], NULL, 0, NULL,
                        stale ? stale_value : as_double(sum_bits), time_ns) < 0)
        return -1;
    return emit(s, n, "__name__", 8, m->names[2], NULL, 0, NULL,
                stale ? stale_value : (double)count, time_ns);
}

static int summary_point(State *s, Metric *m, const uint8_t *p, const uint8_t *end) {
    Cur c = {p, end};
    Field f;
    int r;
    uint64_t time_ns = 0, flags = 0, count = 0, sum_bits = 0;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.field == 3 && f.wire == 1) time_ns = f.num;
        else if (f.field == 4 && f.wire == 1) count = f.num;
        else if (f.field == 5 && f.wire == 1) sum_bits = f.num;
        else if (f.field == 8 && f.wire == 0) flags = f.num;
    }
    if (r < 0) return -1;
    Py_ssize_t n;
    if (point_attributes(s, p, end, 7, &n) < 0 || add_base(s, m->base, m->n_base, &n) < 0 ||
        grow_labels(&s->labels, &s->cap_labels, n + 1) < 0)
        return -1;
    set_label(s->labels, &n, "__name__", 8, m->names[0]);
    int stale = (int)(flags & 1);
    double stale_value = as_double(STALE_BITS);
    c.p = p;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.field != 6 || f.wire != 2) continue;
        Cur q = {f.data, f.data + f.len};
        Field g;
        int rq;
        uint64_t quantile = 0, value = 0;
        while ((rq = next_field(&q, &g)) > 0) {
            if (g.field == 1 && g.wire == 1) quantile = g.num;
            else if (g.field == 2 && g.wire == 1) value = g.num;
        }
        if (rq < 0) return -1;
        PyObject *bits = PyLong_FromUnsignedLongLong(quantile);
        if (!bits) return -1;
        PyObject *enc = PyDict_GetItemWithError(s->quantiles, bits);
        if (!enc) {
            if (PyErr_Occurred()) {
                Py_DECREF(bits);
                return -1;
            }
            enc = PyObject_CallMethod(s->hooks, "quantile", "d", as_double(quantile));
            if (!enc || PyDict_SetItem(s->quantiles, bits, enc) < 0) {
                Py_XDECREF(enc);
                Py_DECREF(bits);
                return -1;
            }
            Py_DECREF(enc);
        }
        Py_DECREF(bits);
        if (!PyBytes_Check(enc)) {
            PyErr_SetString(PyExc_TypeError, "quantile() must return bytes");
            return -1;
        }
        if (emit(s, n, "quantile", 8, enc, NULL, 0, NULL,
                 stale ? stale_value : as_double(value), time_ns) < 0)
            return -1;
    }
    if (r < 0) return -1;
    if (emit(s, n, "__name__", 8, m->names[1], NULL, 0, NULL,
             stale ? stale_value : as_double(sum_bits), time_ns) < 0)
        return -1;
    return emit(s, n, "__name__", 8, m->names[2], NULL, 0, NULL,
                stale ? stale_value : (double)count, time_ns);
}

/* ---------------------------------------------------------------- metrics and resources */

/* At most this many bytes of valid text before a bad byte are quoted (as _otlpconvert_py). */
#define BEFORE_BYTES 32

/* The refusal of a string that is not UTF-8, in _otlpconvert_py.not_utf8's words: `what`,
   the first bad byte and its offset, and the text before it. Returns NULL. */
static PyObject *not_utf8(PyObject *what, const uint8_t *data, Py_ssize_t at) {
    Py_ssize_t from = at > BEFORE_BYTES ? at - BEFORE_BYTES : 0;
    char byte[8];
    snprintf(byte, sizeof byte, "0x%02x", data[at]);
    if (!at) {
        PyErr_Format(PyExc_ValueError, "%U is not valid UTF-8 (byte %s at offset 0); OTLP "
                     "strings must be UTF-8", what, byte);
        return NULL;
    }
    /* "ignore": the cut may fall inside a character; all before `at` is valid */
    PyObject *text = PyUnicode_DecodeUTF8((const char *)data + from, at - from, "ignore");
    PyObject *before = text ? PyUnicode_FromFormat("%s%U", from ? "..." : "", text) : NULL;
    Py_XDECREF(text);
    if (before) {
        PyErr_Format(PyExc_ValueError, "%U is not valid UTF-8 (byte %s at offset %zd, after "
                     "%R); OTLP strings must be UTF-8", what, byte, at, before);
        Py_DECREF(before);
    }
    return NULL;
}

/* A string field as str ("" when absent); ValueError naming it (`what`, then `metric`'s
   repr when given, e.g. "the unit of metric %R") when it is not UTF-8. */
static PyObject *utf8(const Field *f, int present, const char *what, PyObject *metric) {
    if (!present) return PyUnicode_FromStringAndSize("", 0);
    PyObject *text = PyUnicode_DecodeUTF8((const char *)f->data, f->len, "strict");
    if (text || !PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) return text;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_ssize_t at;
    int found = value && PyUnicodeDecodeError_GetStart(value, &at) == 0;
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    if (!found) return NULL;
    if (at < 0 || at >= f->len) {
        PyErr_SetString(PyExc_SystemError, "UnicodeDecodeError start out of range");
        return NULL;
    }
    PyObject *named = metric ? PyUnicode_FromFormat(what, metric) : PyUnicode_FromString(what);
    if (!named) return NULL;
    not_utf8(named, f->data, at);
    Py_DECREF(named);
    return NULL;
}

static int metric(State *s, const uint8_t *p, const uint8_t *end, Label *base,
                  Py_ssize_t n_base) {
    Cur c = {p, end};
    Field f, name = {0}, description = {0}, unit = {0}, data = {0};
    int r, has_name = 0, has_description = 0, has_unit = 0, kind = K_NONE;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.wire != 2) continue;
        switch (f.field) {
        case 1: name = f, has_name = 1; break;
        case 2: description = f, has_description = 1; break;
        case 3: unit = f, has_unit = 1; break;
        case 5: data = f, kind = K_GAUGE; break;
        case 7: data = f, kind = K_SUM; break;
        case 9: data = f, kind = K_HISTOGRAM; break;
        case 10: data = f, kind = K_EXPONENTIAL; break;
        case 11: data = f, kind = K_SUMMARY; break;
        default: break;
        }
    }
    if (r < 0) return -1;
    uint64_t temporality = 0, monotonic = 0;
    Py_ssize_t points = 0;
    if (kind != K_NONE) {
        Cur d = {data.data, data.data + data.len};
        while ((r = next_field(&d, &f)) > 0) {
            if (f.field == 1 && f.wire == 2) points++;
            else if (f.field == 2 && f.wire == 0) temporality = f.num;
            else if (f.field == 3 && f.wire == 0) monotonic = f.num;
        }
        if (r < 0) return -1;
    }
    PyObject *py_name = utf8(&name, has_name, "metric name", NULL);
    PyObject *py_description = py_name ? utf8(&description, has_description,
                                              "the description of metric %R", py_name) : NULL;
    PyObject *py_unit = py_description ? utf8(&unit, has_unit, "the unit of metric %R",
                                              py_name) : NULL;
    PyObject *answer = NULL;
    if (py_unit) {
        answer = PyObject_CallMethod(
            s->hooks, "metric", "OOOiOLn", py_name, py_description, py_unit, kind,
            (kind == K_SUM && monotonic) ? Py_True : Py_False,
            (long long)(int32_t)temporality, points);
    }
    Py_XDECREF(py_name);
    Py_XDECREF(py_description);
    Py_XDECREF(py_unit);
    if (!answer) return -1;
    if (answer == Py_None || kind == K_NONE) {
        Py_DECREF(answer);
        return 0;
    }
    int rc = PyList_Append(s->keep, answer);
    Py_DECREF(answer);
    if (rc < 0) return -1;
    Py_ssize_t want = kind == K_HISTOGRAM || kind == K_SUMMARY ? 3 : 1;
    if (!PyTuple_Check(answer) || PyTuple_GET_SIZE(answer) != want) {
        PyErr_SetString(PyExc_TypeError, "metric() must return None or a tuple of names");
        return -1;
    }
    Metric m = {{NULL, NULL, NULL}, base, n_base, {0, 0}, {0, 0}, {NULL, NULL}};
    for (Py_ssize_t i = 0; i < want; i++) {
        m.names[i] = PyTuple_GET_ITEM(answer, i);
        if (!PyBytes_Check(m.names[i])) {
            PyErr_SetString(PyExc_TypeError, "metric() names must be bytes");
            return -1;
        }
    }
    Buf bounds = {0}, counts = {0};
    Cur d = {data.data, data.data + data.len};
    rc = 0;
    while (rc == 0 && (r = next_field(&d, &f)) > 0) {
        if (f.field != 1 || f.wire != 2) continue;
        const uint8_t *pp = f.data, *pe = f.data + f.len;
        if (kind == K_GAUGE || kind == K_SUM) rc = number_point(s, &m, pp, pe);
        else if (kind == K_HISTOGRAM) rc = histogram_point(s, &m, pp, pe, &bounds, &counts);
        else if (kind == K_SUMMARY) rc = summary_point(s, &m, pp, pe);
    }
    PyMem_Free(bounds.p);
    PyMem_Free(counts.p);
    if (rc == 0 && r < 0) rc = -1;
    for (int why = BAD_BOUNDS; rc == 0 && why <= BAD_COUNTS; why++) {
        if (!m.refused[why]) continue;
        PyObject *done = PyObject_CallMethod(s->hooks, "refused", "nnO", m.refused[why],
                                             m.last_counts[why], m.last_bounds[why]);
        if (!done) rc = -1;
        Py_XDECREF(done);
    }
    Py_XDECREF(m.last_bounds[BAD_BOUNDS]);
    Py_XDECREF(m.last_bounds[BAD_COUNTS]);
    return rc;
}

static int resource_metrics(State *s, const uint8_t *p, const uint8_t *end) {
    Cur c = {p, end};
    Field f, resource = {0};
    int r;
    while ((r = next_field(&c, &f)) > 0) {
        if (f.field == 1 && f.wire == 2) resource = f;
    }
    if (r < 0) return -1;
    PyObject *bytes = PyBytes_FromStringAndSize(resource.data ? (const char *)resource.data : "",
                                                resource.len);
    if (!bytes) return -1;
    PyObject *answer = PyObject_CallMethod(s->hooks, "resource", "O", bytes);
    Py_DECREF(bytes);
    if (!answer) return -1;
    PyObject *seq = PySequence_Fast(answer, "resource() must return a list");
    Py_DECREF(answer);
    if (!seq) return -1;
    if (PyList_Append(s->keep, seq) < 0) {
        Py_DECREF(seq);
        return -1;
    }
    Py_DECREF(seq);  /* s->keep holds it */
    Py_ssize_t n_base = PySequence_Fast_GET_SIZE(seq);
    Label *base = PyMem_Malloc((size_t)(n_base ? n_base : 1) * sizeof(Label));
    if (!base) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n_base; i++) {
        if (label_of(PySequence_Fast_GET_ITEM(seq, i), &base[i]) < 0) {
            PyMem_Free(base);
            return -1;
        }
    }
    int rc = 0;
    c.p = p;
    while (rc == 0 && (r = next_field(&c, &f)) > 0) {
        if (f.field != 2 || f.wire != 2) continue;
        Cur sc = {f.data, f.data + f.len};
        Field g;
        int rs;
        while (rc == 0 && (rs = next_field(&sc, &g)) > 0) {
            if (g.field == 2 && g.wire == 2) rc = metric(s, g.data, g.data + g.len, base, n_base);
        }
        if (rs < 0) rc = -1;
    }
    PyMem_Free(base);
    return rc < 0 || r < 0 ? -1 : 0;
}

/* ---------------------------------------------------------------- entry point */

static PyObject *series_bytes(State *s) {
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < s->n_series; i++) {
        Py_ssize_t body = PyBytes_GET_SIZE(s->series[i].labels) + s->series[i].samples.len;
        uint8_t tmp[10];
        total += 1 + put_varint(tmp, (uint64_t)body) + body;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    uint8_t *w = (uint8_t *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < s->n_series; i++) {
        Series *x = &s->series[i];
        Py_ssize_t nl = PyBytes_GET_SIZE(x->labels);
        *w++ = 0x0A;
        w += put_varint(w, (uint64_t)(nl + x->samples.len));
        memcpy(w, PyBytes_AS_STRING(x->labels), (size_t)nl);
        w += nl;
        if (x->samples.len) memcpy(w, x->samples.p, (size_t)x->samples.len);
        w += x->samples.len;
    }
    return out;
}

static PyObject *convert(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    PyObject *hooks;
    if (!PyArg_ParseTuple(args, "y*O:convert", &view, &hooks)) return NULL;
    State s;
    memset(&s, 0, sizeof s);
    s.hooks = hooks;
    PyObject *out = NULL;
    s.keep = PyList_New(0);
    s.attributes = PyDict_New();
    s.bounds = PyDict_New();
    s.quantiles = PyDict_New();
    s.index = PyDict_New();
    if (s.keep && s.attributes && s.bounds && s.quantiles && s.index) {
        const uint8_t *p = view.buf;
        Cur c = {p, p + view.len};
        Field f;
        int r, rc = 0;
        while (rc == 0 && (r = next_field(&c, &f)) > 0) {
            if (f.field == 1 && f.wire == 2) rc = resource_metrics(&s, f.data, f.data + f.len);
        }
        if (rc == 0 && r == 0) out = series_bytes(&s);
    }
    for (Py_ssize_t i = 0; i < s.n_series; i++) {
        Py_DECREF(s.series[i].labels);
        PyMem_Free(s.series[i].samples.p);
    }
    PyMem_Free(s.series);
    PyMem_Free(s.labels);
    PyMem_Free(s.work);
    PyMem_Free(s.key.p);
    Py_XDECREF(s.keep);
    Py_XDECREF(s.attributes);
    Py_XDECREF(s.bounds);
    Py_XDECREF(s.quantiles);
    Py_XDECREF(s.index);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"convert", convert, METH_VARARGS,
     "convert(data, hooks) -> bytes: the WriteRequest TimeSeries entries of a serialized "
     "ExportMetricsServiceRequest (contract: _otlpconvert_py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_otlpconvert", NULL, -1, methods};

PyMODINIT_FUNC PyInit__otlpconvert(void) {
    const uint16_t one = 1;
    if (*(const uint8_t *)&one != 1) {
        PyErr_SetString(PyExc_ImportError, "_otlpconvert needs a little-endian host");
        return NULL;
    }
    return PyModule_Create(&module);
}
