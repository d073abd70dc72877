/*
 * _wirescan: scan and validate a Prometheus remote-write WriteRequest in one pass over its
 * bytes, without building a Python object per series or sample (docs/adr/0005).
 *
 *   scan(buffer) -> (keys: bytes, samples: int, histograms: int, metadata: int,
 *                    spans: bytes, other: bytes)
 *   gather(buffer, spans, tail) -> bytes
 *   labels(buffer, spans) -> list[tuple[tuple[str, str], ...]]
 *
 * `keys` holds one native-endian uint64 per TimeSeries: xxh64 (seed 0) of the series'
 * canonical label bytes (phoenixcp.core.series). `spans` holds four native uint32 per
 * TimeSeries, (start, end, points, histograms): buffer[start:end] is the whole top-level
 * field 1 entry (tag and length included), points counts its float samples plus native
 * histograms, histograms the latter alone. `other` is every top-level field that is not a
 * TimeSeries (metadata, unknown fields), verbatim and in order. A buffer over 4 GiB - 1 is
 * refused ("too_large"). On invalid input scan() raises ValueError(kind: str, series_index:
 * int, detail: bytes); the Python wrapper (remote_write.py) turns that into a message.
 *
 * gather() concatenates buffer[start:end] for each (start, end, ...) row of `spans` (uint32,
 * four per row, any order, repeats allowed) and then `tail`: MetricBatch.subset() uses it
 * to build a request from some of the series. It raises ValueError on a span outside the
 * buffer.
 *
 * labels() returns, for each row of `spans` (as for gather(); buffer[start:end] must be one
 * whole TimeSeries entry, as scan() found it), that series' labels as ((name, value), ...),
 * sorted by name bytes (stable: a series that arrives sorted keeps its order), labels with
 * an empty value left out. Pairs and names are interned in a bounded per-process cache
 * (label_cache_size() -> (pairs, names), label_cache_clear()). It holds the GIL (it builds
 * Python objects) and raises ValueError on a span outside the buffer or bytes that are not
 * one TimeSeries entry, UnicodeDecodeError on a string that is not UTF-8.
 *
 * The pure-Python fallback (_wirescan_py.py) implements the same contract and the tests run
 * both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- xxh64 (the reference algorithm by Yann Collet, BSD-2) ---- */
#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint64_t xround(uint64_t acc, uint64_t in) {
    acc += in * P2; acc = rotl64(acc, 31); return acc * P1;
}
static inline uint64_t xmerge(uint64_t acc, uint64_t v) {
    acc ^= xround(0, v); return acc * P1 + P4;
}

#define HOT static inline __attribute__((always_inline))

/* xxh64 of p[0:len] that also ORs every byte it reads into *seen (its high bits then tell
 * whether all bytes are ASCII): the scanner's fast path reads the label bytes once for
 * both. */
HOT uint64_t xxh64_seen(const uint8_t *p, size_t len, uint64_t *seen) {
    const uint8_t *end = p + len;
    uint64_t h, acc = 0;
    if (len >= 32) {
        const uint8_t *limit = end - 32;
        uint64_t v1 = P1 + P2, v2 = P2, v3 = 0, v4 = (uint64_t)0 - P1;
        do {
            uint64_t a = rd64(p), b = rd64(p + 8), c = rd64(p + 16), d = rd64(p + 24);
            acc |= a | b | c | d;
            v1 = xround(v1, a); v2 = xround(v2, b); v3 = xround(v3, c); v4 = xround(v4, d);
            p += 32;
        } while (p <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xmerge(h, v1); h = xmerge(h, v2); h = xmerge(h, v3); h = xmerge(h, v4);
    } else {
        h = P5;
    }
    h += (uint64_t)len;
    while (p + 8 <= end) {
        uint64_t a = rd64(p);
        acc |= a; h ^= xround(0, a); h = rotl64(h, 27) * P1 + P4; p += 8;
    }
    if (p + 4 <= end) {
        uint32_t a = rd32(p);
        acc |= a; h ^= (uint64_t)a * P1; h = rotl64(h, 23) * P2 + P3; p += 4;
    }
    while (p < end) { acc |= *p; h ^= (*p) * P5; h = rotl64(h, 11) * P1; p++; }
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    *seen = acc;
    return h;
}

static uint64_t xxh64(const uint8_t *p, size_t len) {
    uint64_t seen;
    return xxh64_seen(p, len, &seen);
}

/* ---- wire format ---- */
typedef struct { const uint8_t *p, *end; } cur_t;

typedef struct {
    const char *kind;
    Py_ssize_t series;
    const uint8_t *detail;
    Py_ssize_t detail_len;
} err_t;

static int fail(err_t *e, const char *kind, Py_ssize_t series, const void *d, Py_ssize_t n) {
    e->kind = kind; e->series = series; e->detail = (const uint8_t *)d; e->detail_len = n;
    return -1;
}
#define MALFORMED(e, s, msg) fail((e), "malformed", (s), (msg), (Py_ssize_t)strlen(msg))

HOT int varint(cur_t *c, uint64_t *out) {
    if (c->p < c->end && *c->p < 0x80) { *out = *c->p++; return 0; }
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (c->p >= c->end) return -1;
        uint8_t b = *c->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) { *out = v; return 0; }
    }
    return -1;
}

/* Read a tag and, for wire type 2, the payload bounds; skip other wire types' payloads. */
HOT int field(cur_t *c, uint32_t *num, uint32_t *wt, cur_t *sub) {
    uint64_t tag, n;
    if (varint(c, &tag) < 0 || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return -1;
    *num = (uint32_t)(tag >> 3); *wt = (uint32_t)(tag & 7);
    switch (*wt) {
    case 0: return varint(c, &n);
    case 1: if (c->end - c->p < 8) return -1; c->p += 8; return 0;
    case 5: if (c->end - c->p < 4) return -1; c->p += 4; return 0;
    case 2:
        if (varint(c, &n) < 0 || n > (uint64_t)(c->end - c->p)) return -1;
        sub->p = c->p; sub->end = c->p + n; c->p += n; return 0;
    default: return -1; /* groups (3, 4) and 6, 7 are not valid here */
    }
}

static int utf8_ok(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i + 8 <= n) { /* ASCII fast path, 8 bytes at a time */
        uint64_t w; memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL) break;
        i += 8;
    }
    while (i < n) {
        uint8_t b = s[i];
        if (b < 0x80) { i++; continue; }
        int len; uint32_t cp;
        if ((b & 0xE0) == 0xC0) { len = 2; cp = b & 0x1F; }
        else if ((b & 0xF0) == 0xE0) { len = 3; cp = b & 0x0F; }
        else if ((b & 0xF8) == 0xF0) { len = 4; cp = b & 0x07; }
        else return 0;
        if (i + len > n) return 0;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)
            || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += len;
    }
    return 1;
}

static unsigned char LABEL_FIRST[256], LABEL_REST[256], METRIC_FIRST[256], METRIC_REST[256];

static void init_tables(void) {
    for (int c = 0; c < 256; c++) {
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        int digit = c >= '0' && c <= '9';
        LABEL_FIRST[c] = alpha; LABEL_REST[c] = alpha || digit;
        METRIC_FIRST[c] = alpha || c == ':'; METRIC_REST[c] = alpha || digit || c == ':';
    }
}

HOT int name_ok(const uint8_t *s, Py_ssize_t n, const unsigned char *first,
                   const unsigned char *rest) {
    if (n == 0 || !first[s[0]]) return 0;
    for (Py_ssize_t i = 1; i < n; i++) if (!rest[s[i]]) return 0;
    return 1;
}

typedef struct { const uint8_t *name, *value; Py_ssize_t nlen, vlen; } label_t;

static size_t varint_len(uint64_t v) { size_t n = 1; while (v >= 0x80) { v >>= 7; n++; } return n; }

/* Byte order of two names, then the shorter first. */
HOT int name_cmp(const uint8_t *a, Py_ssize_t an, const uint8_t *b, Py_ssize_t bn) {
    Py_ssize_t n = an < bn ? an : bn;
    for (Py_ssize_t i = 0; i < n; i++)  /* names are short: no libc call */
        if (a[i] != b[i]) return (int)a[i] - (int)b[i];
    return (an > bn) - (an < bn);
}

HOT int label_cmp(const label_t *a, const label_t *b) {
    return name_cmp(a->name, a->nlen, b->name, b->nlen);
}

/* Parse one Label message; values (and, with check_name, names) must be UTF-8. Returns 1
 * when the Label is encoded exactly as its canonical form (name then non-empty value,
 * minimal lengths, nothing else), 0 when not, -1 on error. */
HOT int parse_label(cur_t c, label_t *l, err_t *e, Py_ssize_t si, int check_name) {
    uint32_t num, wt; cur_t sub;
    const uint8_t *start = c.p, *end = c.end;
    l->name = l->value = (const uint8_t *)""; l->nlen = l->vlen = 0;
    /* fast path: 0x0a len name 0x12 len value, one-byte lengths */
    if (end - start >= 4 && start[0] == 0x0a && start[1] < 0x80
        && start[1] + 4 <= end - start && start[2 + start[1]] == 0x12
        && start[3 + start[1]] < 0x80 && 4 + start[1] + start[3 + start[1]] == end - start) {
        l->name = start + 2; l->nlen = start[1];
        l->value = start + 4 + start[1]; l->vlen = start[3 + start[1]];
        if (check_name && !utf8_ok(l->name, l->nlen)) return fail(e, "utf8_name", si, NULL, 0);
        if (!utf8_ok(l->value, l->vlen)) return fail(e, "utf8_value", si, l->name, l->nlen);
        return l->vlen > 0;
    }
    while (c.p < c.end) {
        if (field(&c, &num, &wt, &sub) < 0) return MALFORMED(e, si, "bad field in a Label");
        if (num == 1 || num == 2) {
            if (wt != 2) return MALFORMED(e, si, "Label field with the wrong wire type");
            if (num == 1) { l->name = sub.p; l->nlen = sub.end - sub.p; }
            else { l->value = sub.p; l->vlen = sub.end - sub.p; }
        }
    }
    if (check_name && !utf8_ok(l->name, l->nlen)) return fail(e, "utf8_name", si, NULL, 0);
    if (!utf8_ok(l->value, l->vlen)) return fail(e, "utf8_value", si, l->name, l->nlen);
    return 0;
}

static int check_numbers(cur_t c, err_t *e, Py_ssize_t si, const char *what) {
    /* A Sample or similar: any fields, but well-formed. */
    uint32_t num, wt; cur_t sub;
    while (c.p < c.end) if (field(&c, &num, &wt, &sub) < 0) return MALFORMED(e, si, what);
    return 0;
}

typedef struct {
    label_t *labels; Py_ssize_t cap;
    uint8_t *canon; Py_ssize_t canon_cap;
} scratch_t;

static int grow(void **buf, Py_ssize_t *cap, Py_ssize_t need, size_t elem) {
    if (need <= *cap) return 0;
    Py_ssize_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *p = realloc(*buf, (size_t)n * elem);
    if (!p) return -1;
    *buf = p; *cap = n; return 0;
}

static size_t put_varint(uint8_t *o, uint64_t v) {
    size_t i = 0;
    while (v >= 0x80) { o[i++] = (uint8_t)(v | 0x80); v >>= 7; }
    o[i++] = (uint8_t)v; return i;
}

/* One TimeSeries: validate labels, count samples/histograms, compute its key. This is the
 * exact path: it handles every input and decides which error is reported (and in which
 * order). scan_series_fast() below only ever accepts what this function accepts. */
static int scan_series_exact(cur_t c, Py_ssize_t si, scratch_t *s, uint64_t *key,
                             uint64_t *samples, uint64_t *histograms, err_t *e) {
    uint32_t num, wt; cur_t sub;
    Py_ssize_t n = 0;
    int sorted = 1, canonical = 1, r;
    const uint8_t *region = NULL, *region_end = NULL; /* the label fields, when contiguous */
    while (c.p < c.end) {
        const uint8_t *field_start = c.p;
        if (field(&c, &num, &wt, &sub) < 0) return MALFORMED(e, si, "bad field in a TimeSeries");
        if (num >= 1 && num <= 4 && wt != 2)
            return MALFORMED(e, si, "TimeSeries field with the wrong wire type");
        if (num == 1) {
            if (grow((void **)&s->labels, &s->cap, n + 1, sizeof(label_t)) < 0) return -2;
            if ((r = parse_label(sub, &s->labels[n], e, si, 0)) < 0) return -1;
            if (!r || *field_start != 0x0a) canonical = 0;
            if (region == NULL) region = field_start;
            else if (region_end != field_start) canonical = 0;
            region_end = c.p;
            if (n && sorted && label_cmp(&s->labels[n - 1], &s->labels[n]) >= 0) sorted = 0;
            n++;
        } else if (num == 2) {
            if (check_numbers(sub, e, si, "bad field in a Sample") < 0) return -1;
            (*samples)++;
        } else if (num == 3) {
            while (sub.p < sub.end) {
                cur_t lab; uint32_t xn, xw; label_t l;
                if (field(&sub, &xn, &xw, &lab) < 0)
                    return MALFORMED(e, si, "bad field in an Exemplar");
                if (xn == 1) {
                    if (xw != 2) return MALFORMED(e, si, "Exemplar field with the wrong wire type");
                    if (parse_label(lab, &l, e, si, 1) < 0) return -1;
                }
            }
        } else if (num == 4) {
            if (check_numbers(sub, e, si, "bad field in a Histogram") < 0) return -1;
            (*histograms)++;
        }
    }
    if (n == 0) return fail(e, "no_labels", si, NULL, 0);
    label_t *L = s->labels;
    if (!sorted) { /* insertion sort: label sets are small */
        for (Py_ssize_t i = 1; i < n; i++) {
            label_t t = L[i]; Py_ssize_t j = i;
            while (j > 0 && label_cmp(&L[j - 1], &t) > 0) { L[j] = L[j - 1]; j--; }
            L[j] = t;
        }
    }
    Py_ssize_t total = 0;
    int have_name = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i && label_cmp(&L[i - 1], &L[i]) == 0)
            return fail(e, "duplicate_label", si, L[i].name, L[i].nlen);
        if (!name_ok(L[i].name, L[i].nlen, LABEL_FIRST, LABEL_REST)) {
            if (!utf8_ok(L[i].name, L[i].nlen)) return fail(e, "utf8_name", si, NULL, 0);
            return fail(e, "bad_label_name", si, L[i].name, L[i].nlen);
        }
        if (L[i].nlen == 8 && memcmp(L[i].name, "__name__", 8) == 0) {
            have_name = 1;
            if (L[i].vlen == 0) return fail(e, "empty_name", si, NULL, 0);
            if (!name_ok(L[i].value, L[i].vlen, METRIC_FIRST, METRIC_REST))
                return fail(e, "bad_metric_name", si, L[i].value, L[i].vlen);
        } else if (L[i].nlen >= 2 && L[i].name[0] == '_' && L[i].name[1] == '_') {
            return fail(e, "reserved_label_name", si, L[i].name, L[i].nlen);
        }
        if (L[i].vlen && !(canonical && sorted)) {
            Py_ssize_t entry = 2 + (Py_ssize_t)varint_len((uint64_t)L[i].nlen) + L[i].nlen
                + (Py_ssize_t)varint_len((uint64_t)L[i].vlen) + L[i].vlen;
            total += 1 + (Py_ssize_t)varint_len((uint64_t)entry) + entry;
        }
    }
    if (!have_name) return fail(e, "no_name", si, NULL, 0);
    if (canonical && sorted) { /* the bytes as sent are the canonical bytes: hash in place */
        *key = xxh64(region, (size_t)(region_end - region));
        return 0;
    }
    if (grow((void **)&s->canon, &s->canon_cap, total + 1, 1) < 0) return -2;
    uint8_t *o = s->canon;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!L[i].vlen) continue;
        Py_ssize_t entry = 2 + (Py_ssize_t)varint_len((uint64_t)L[i].nlen) + L[i].nlen
            + (Py_ssize_t)varint_len((uint64_t)L[i].vlen) + L[i].vlen;
        *o++ = 0x0a; o += put_varint(o, (uint64_t)entry);
        *o++ = 0x0a; o += put_varint(o, (uint64_t)L[i].nlen);
        memcpy(o, L[i].name, (size_t)L[i].nlen); o += L[i].nlen;
        *o++ = 0x12; o += put_varint(o, (uint64_t)L[i].vlen);
        memcpy(o, L[i].value, (size_t)L[i].vlen); o += L[i].vlen;
    }
    *key = xxh64(s->canon, (size_t)(o - s->canon));
    return 0;
}

/* ---- fast path for the common series shape ----
 *
 * Prometheus, vmagent and the Collector send every series the same way: the labels first,
 * sorted, each Label encoded canonically (0x0a len 0x0a nlen name 0x12 vlen value, one-byte
 * lengths, non-empty value), then the samples (0x12 len 0x09 value 0x10 timestamp); names
 * and values are almost always ASCII; consecutive series mostly have the same label names.
 * For that shape, scan_series_fast() does the same checks as scan_series_exact() with
 * cheaper means, in one walk over the labels that stores none of them:
 *   - a Label's four header bytes are checked as one word;
 *   - a name equal to the one at the same position in an earlier series of the request
 *     (names_t) is known to match the pattern; others are checked 8 bytes at a time
 *     (SWAR) instead of a table lookup per byte;
 *   - names are compared (sorted, no duplicates) by their first 8 bytes as one big-endian
 *     word, byte by byte only when those are equal: strictly increasing names imply no
 *     duplicates, so that pass is skipped;
 *   - the ASCII test rides on the hash's reads of the label bytes (UTF-8 is only validated
 *     per value when a byte >= 0x80 is present);
 *   - a Sample of the usual shape is checked without the generic field loop.
 * It reports no errors: on anything unusual or invalid it returns 1 and the series is
 * scanned again by scan_series_exact(), which therefore alone decides the error (kind,
 * detail and precedence are unchanged). Counters and *key are only written on success.
 * Words are read little-endian, as in xxh64. */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "_wirescan reads words as little-endian (xxh64, the SWAR checks)"
#endif

#define ONES 0x0101010101010101ULL
#define HIGH 0x8080808080808080ULL

/* High bit set in every byte lane of x that is not in [a-zA-Z0-9_] (plus ':' when
 * colon). Bytes >= 0x80 and zero bytes are always flagged. The range tests add to 7-bit
 * lanes, so no carry crosses into the next lane: (y + (0x80 - lo)) has bit 7 set iff
 * y >= lo, and (y + (0x7f - hi)) has it set iff y > hi. */
HOT uint64_t bad_name_lanes(uint64_t x, int colon) {
    uint64_t y = x & ~HIGH;
    uint64_t digit = (y + ONES * (0x80 - '0')) & ~(y + ONES * (0x7F - '9'));
    uint64_t z = y | ONES * 0x20; /* folds A-Z onto a-z; no other byte lands in a-z */
    uint64_t alpha = (z + ONES * (0x80 - 'a')) & ~(z + ONES * (0x7F - 'z'));
    uint64_t under = ~((y ^ ONES * '_') + ONES * 0x7F); /* bit 7 set iff the lane is 0 */
    uint64_t ok = digit | alpha | under;
    if (colon) ok |= ~((y ^ ONES * ':') + ONES * 0x7F);
    return (~ok | x) & HIGH;
}

/* The high bits of the first n byte lanes (all eight when n >= 8). */
HOT uint64_t lanes(Py_ssize_t n) { return n >= 8 ? HIGH : HIGH >> (8 * (8 - n)); }

/* The first min(n, 8) bytes at p as a word, the lanes past n zero; n <= end - p, and no
 * byte at or after end is read. */
HOT uint64_t head_word(const uint8_t *p, Py_ssize_t n, const uint8_t *end) {
    if (end - p >= 8) return n >= 8 ? rd64(p) : rd64(p) & ((1ULL << (8 * n)) - 1);
    uint64_t w = 0;
    memcpy(&w, p, (size_t)n); /* n < 8 here: near the end of the buffer */
    return w;
}

/* Whether the n >= 1 bytes at s match the label name pattern (with colon: the metric name
 * pattern); w is head_word(s, n, end). */
HOT int name_valid(const uint8_t *s, Py_ssize_t n, uint64_t w, const uint8_t *end,
                   int colon) {
    if (!(colon ? METRIC_FIRST : LABEL_FIRST)[s[0]]) return 0;
    if (bad_name_lanes(w, colon) & lanes(n)) return 0;
    for (Py_ssize_t k = 8; k < n; k += 8)
        if (bad_name_lanes(head_word(s + k, n - k, end), colon) & lanes(n - k)) return 0;
    return 1;
}

/* A Sample, Histogram or other message that only has to be well formed. */
HOT int well_formed(cur_t c) {
    uint32_t num, wt; cur_t sub;
    while (c.p < c.end) if (field(&c, &num, &wt, &sub) < 0) return 0;
    return 1;
}

/* well_formed() for a Sample, quicker for the usual encoding: 0x09, the 8-byte value,
 * 0x10, then a timestamp varint of k <= 8 bytes ending the Sample, which is well formed
 * iff its last byte alone has the high bit clear. Those k bytes are the top k lanes of the
 * word ending at end (it starts after q[0], inside the Sample). */
HOT int sample_ok(const uint8_t *q, const uint8_t *end) {
    Py_ssize_t k = end - q - 10;
    if (k >= 1 && k <= 8 && q[0] == 0x09 && q[9] == 0x10) {
        uint64_t top = HIGH << (8 * (8 - k)); /* the high bits of the top k lanes */
        if ((rd64(end - 8) & top) == (top & (HIGH >> 8))) return 1;
    }
    cur_t c = {q, end};
    return well_formed(c);
}

/* The label name last checked at each of the first NAME_MEMO positions of a request's
 * series (consecutive series mostly have the same names): a name equal to the one kept
 * for its position matches the pattern, as that one did. Pointers are into the request's
 * buffer, valid for the whole scan. */
#define NAME_MEMO 32
typedef struct {
    const uint8_t *name[NAME_MEMO];
    uint64_t head[NAME_MEMO]; /* head_word() of the name */
    Py_ssize_t len[NAME_MEMO]; /* 0: nothing remembered yet (names are not empty) */
} names_t;

/* Whether the names a and b, both n > 8 bytes long and their first 8 bytes equal, are
 * equal; both end before `end`. */
HOT int same_tail(const uint8_t *a, const uint8_t *b, Py_ssize_t n, const uint8_t *end) {
    for (Py_ssize_t k = 8; k < n; k += 8)
        if (head_word(a + k, n - k, end) != head_word(b + k, n - k, end)) return 0;
    return 1;
}

/* 0 and the results when the series is valid and has the common shape; 1 when it has to go
 * through scan_series_exact() (unusual shape, or invalid: that one finds the error). */
static int scan_series_fast(cur_t c, names_t *memo, uint64_t *key, uint64_t *samples,
                            uint64_t *histograms) {
    const uint8_t *p = c.p, *end = c.end, *region = c.p, *prev = NULL;
    Py_ssize_t prev_len = 0;
    uint64_t prev_key = 0; /* below any valid name's key: a name's first byte is not 0 */
    uint64_t ns = 0, nh = 0, seen;
    const uint64_t name_word = rd64((const uint8_t *)"__name__");
    int have_name = 0;
    Py_ssize_t i = 0;
    /* The labels, first and contiguous: 0x0a len 0x0a nlen name 0x12 vlen value, with
     * one-byte lengths, 1 <= nlen and 1 <= vlen (so at least 8 bytes). */
    while (end - p >= 8 && (rd32(p) & 0x80FF80FFu) == 0x000A000Au) {
        Py_ssize_t len = p[1], nlen = p[3];
        if (len > end - p - 2 || nlen == 0 || nlen + 5 > len) return 1;
        const uint8_t *name = p + 4, *vtag = name + nlen;
        unsigned vhead = rd16(vtag); /* 0x12, then vlen < 0x80 (vlen >= 1 as nlen + 5 <= len) */
        Py_ssize_t vlen = vhead >> 8;
        if ((vhead & 0x80FFu) != 0x0012u || nlen + 4 + vlen != len) return 1;
        uint64_t w = head_word(name, nlen, end);
        if (i < NAME_MEMO) {
            if (memo->len[i] != nlen || memo->head[i] != w
                || (nlen > 8 && !same_tail(memo->name[i], name, nlen, end))) {
                if (!name_valid(name, nlen, w, end, 0)) return 1;
                memo->name[i] = name; memo->head[i] = w; memo->len[i] = nlen;
            }
        } else if (!name_valid(name, nlen, w, end, 0)) {
            return 1;
        }
        uint64_t k = __builtin_bswap64(w); /* orders as the name's first 8 bytes do */
        if (k < prev_key || (k == prev_key && name_cmp(prev, prev_len, name, nlen) >= 0))
            return 1; /* unsorted or duplicate */
        prev = name; prev_len = nlen; prev_key = k;
        if ((w & 0xFFFF) == 0x5F5F) { /* "__": reserved, but for __name__ */
            if (w != name_word || nlen != 8) return 1;
            const uint8_t *v = vtag + 2;
            if (!name_valid(v, vlen, head_word(v, vlen, end), end, 1)) return 1;
            have_name = 1;
        }
        p += 2 + len;
        i++;
    }
    if (!have_name) return 1; /* also: no labels, or the first Label not canonical */
    const uint8_t *region_end = p;
    while (p < end) {
        if (p[0] == 0x12 && end - p >= 2 && p[1] < 0x80 && p[1] <= end - p - 2) {
            if (!sample_ok(p + 2, p + 2 + p[1])) return 1;
            ns++;
            p += 2 + p[1];
            continue;
        }
        uint32_t num, wt; cur_t f = {p, end}, sub;
        if (field(&f, &num, &wt, &sub) < 0) return 1;
        if (num >= 1 && num <= 4 && wt != 2) return 1;
        if (num == 1 || num == 3) return 1; /* a Label after other fields, or exemplars */
        if (num == 2) { if (!well_formed(sub)) return 1; ns++; }
        else if (num == 4) { if (!well_formed(sub)) return 1; nh++; }
        p = f.p;
    }
    uint64_t h = xxh64_seen(region, (size_t)(region_end - region), &seen);
    if (seen & HIGH) { /* rare: check each value in full (names are ASCII, checked above) */
        for (const uint8_t *l = region; l < region_end; l += 2 + l[1])
            if (!utf8_ok(l + 6 + l[3], l[5 + l[3]])) return 1;
    }
    *key = h;
    *samples += ns; *histograms += nh;
    return 0;
}

static int scan_series(cur_t c, Py_ssize_t si, scratch_t *s, names_t *memo, uint64_t *key,
                       uint64_t *samples, uint64_t *histograms, err_t *e) {
    if (scan_series_fast(c, memo, key, samples, histograms) == 0) return 0;
    return scan_series_exact(c, si, s, key, samples, histograms, e);
}

static int scan_metadata(cur_t c, Py_ssize_t mi, err_t *e) {
    uint32_t num, wt; cur_t sub;
    while (c.p < c.end) {
        if (field(&c, &num, &wt, &sub) < 0) return MALFORMED(e, mi, "bad field in MetricMetadata");
        if (num == 1 && wt != 0) return MALFORMED(e, mi, "MetricMetadata.type is not a varint");
        if (num == 2 || num == 4 || num == 5) {
            if (wt != 2) return MALFORMED(e, mi, "MetricMetadata field with the wrong wire type");
            if (!utf8_ok(sub.p, sub.end - sub.p)) return fail(e, "utf8_metadata", mi, NULL, 0);
        }
    }
    return 0;
}

typedef struct { uint32_t start, end, points, histograms; } span_t;

static PyObject *scan(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    if ((uint64_t)view.len > UINT32_MAX) { /* spans are uint32 offsets */
        PyBuffer_Release(&view);
        PyObject *args = Py_BuildValue("(sny#)", "too_large", (Py_ssize_t)0, "", (Py_ssize_t)0);
        if (args) { PyErr_SetObject(PyExc_ValueError, args); Py_DECREF(args); }
        return NULL;
    }
    const uint8_t *base = (const uint8_t *)view.buf;
    cur_t c = {base, base + view.len};
    scratch_t s = {NULL, 0, NULL, 0};
    names_t memo;
    memset(memo.len, 0, sizeof memo.len);
    uint64_t *keys = NULL; Py_ssize_t nkeys = 0, kcap = 0, nmeta = 0;
    span_t *spans = NULL; Py_ssize_t scap = 0;
    uint8_t *other = NULL; Py_ssize_t nother = 0, ocap = 0;
    uint64_t samples = 0, histograms = 0;
    err_t e = {NULL, -1, NULL, 0};
    int rc = 0;
    Py_BEGIN_ALLOW_THREADS
    while (c.p < c.end) {
        uint32_t num, wt; cur_t sub;
        const uint8_t *fs = c.p;
        if (field(&c, &num, &wt, &sub) < 0) { rc = MALFORMED(&e, nkeys, "bad field in WriteRequest"); break; }
        if ((num == 1 || num == 3) && wt != 2) { rc = MALFORMED(&e, nkeys, "WriteRequest field with the wrong wire type"); break; }
        if (num == 1) {
            if (grow((void **)&keys, &kcap, nkeys + 1, sizeof(uint64_t)) < 0
                || grow((void **)&spans, &scap, nkeys + 1, sizeof(span_t)) < 0) { rc = -2; break; }
            uint64_t s0 = samples, h0 = histograms;
            rc = scan_series(sub, nkeys, &s, &memo, &keys[nkeys], &samples, &histograms, &e);
            if (rc) break;
            span_t *sp = &spans[nkeys];
            sp->start = (uint32_t)(fs - base); sp->end = (uint32_t)(c.p - base);
            sp->histograms = (uint32_t)(histograms - h0);
            sp->points = (uint32_t)(samples - s0) + sp->histograms;
            nkeys++;
        } else {
            if (num == 3) {
                if ((rc = scan_metadata(sub, nmeta, &e))) break;
                nmeta++;
            }
            Py_ssize_t n = c.p - fs;
            if (grow((void **)&other, &ocap, nother + n, 1) < 0) { rc = -2; break; }
            memcpy(other + nother, fs, (size_t)n); nother += n;
        }
    }
    Py_END_ALLOW_THREADS
    free(s.labels); free(s.canon);
    if (rc == -2) {
        free(keys); free(spans); free(other); PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    if (rc) {
        free(keys); free(spans); free(other);
        /* detail points into the buffer: build the error before releasing it */
        PyObject *args = Py_BuildValue("(sny#)", e.kind, e.series,
                                       e.detail ? (const char *)e.detail : "", e.detail_len);
        PyBuffer_Release(&view);
        if (args) { PyErr_SetObject(PyExc_ValueError, args); Py_DECREF(args); }
        return NULL;
    }
    PyBuffer_Release(&view);
    PyObject *kb = PyBytes_FromStringAndSize((const char *)keys, nkeys * (Py_ssize_t)sizeof(uint64_t));
    PyObject *sb = PyBytes_FromStringAndSize((const char *)spans, nkeys * (Py_ssize_t)sizeof(span_t));
    PyObject *ob = PyBytes_FromStringAndSize((const char *)other, nother);
    free(keys); free(spans); free(other);
    if (!kb || !sb || !ob) { Py_XDECREF(kb); Py_XDECREF(sb); Py_XDECREF(ob); return NULL; }
    return Py_BuildValue("(NKKnNN)", kb, (unsigned long long)samples,
                         (unsigned long long)histograms, nmeta, sb, ob);
}

static PyObject *gather(PyObject *self, PyObject *args) {
    Py_buffer buf, sp, tail;
    if (!PyArg_ParseTuple(args, "y*y*y*", &buf, &sp, &tail)) return NULL;
    PyObject *out = NULL;
    if (sp.len % (Py_ssize_t)sizeof(span_t)) {
        PyErr_SetString(PyExc_ValueError, "spans must be rows of four uint32");
        goto done;
    }
    Py_ssize_t rows = sp.len / (Py_ssize_t)sizeof(span_t);
    const uint8_t *rowp = (const uint8_t *)sp.buf; /* read by memcpy: may be unaligned */
    uint64_t total = (uint64_t)tail.len;
    for (Py_ssize_t i = 0; i < rows; i++) {
        span_t r; memcpy(&r, rowp + i * (Py_ssize_t)sizeof(span_t), sizeof r);
        if (r.start > r.end || r.end > (uint64_t)buf.len) {
            PyErr_Format(PyExc_ValueError, "span %zd (%u, %u) is outside the %zd-byte buffer",
                         i, r.start, r.end, buf.len);
            goto done;
        }
        total += r.end - r.start;
    }
    if (total > (uint64_t)PY_SSIZE_T_MAX) { PyErr_NoMemory(); goto done; }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!out) goto done;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    const uint8_t *src = (const uint8_t *)buf.buf;
    for (Py_ssize_t i = 0; i < rows; i++) {
        span_t r; memcpy(&r, rowp + i * (Py_ssize_t)sizeof(span_t), sizeof r);
        memcpy(o, src + r.start, r.end - r.start); o += r.end - r.start;
    }
    memcpy(o, tail.buf, (size_t)tail.len);
done:
    PyBuffer_Release(&buf); PyBuffer_Release(&sp); PyBuffer_Release(&tail);
    return out;
}

/* ---- labels(): the label sets of some series, as interned Python tuples ----
 *
 * A bounded cache maps a label's (name, value) bytes to one ('name', 'value') tuple, and a
 * name's bytes to one str, so the many series sharing job="api" share one pair object and
 * every pair shares its name object. Both are open-addressing tables of (hash, object)
 * slots allocated with PyMem (tracemalloc sees them), cleared whole when they reach
 * LABEL_CACHE_MAX entries. Lookups compare the cached str's characters with the raw UTF-8
 * bytes and allocate nothing; entries are only added after the objects are built, by a
 * fresh probe, so a reentrant call (a finalizer run by the GC during an allocation) cannot
 * leave a stale slot pointer behind. The GIL is held throughout. */
#define LABEL_CACHE_MAX 262144

typedef struct { uint64_t h; PyObject *obj; } slot_t;
typedef struct { slot_t *slots; size_t mask, count; } table_t;

static table_t PAIRS = {NULL, 0, 0}, NAMES = {NULL, 0, 0};

static void table_clear(table_t *t) {
    slot_t *slots = t->slots; size_t n = slots ? t->mask + 1 : 0;
    t->slots = NULL; t->mask = 0; t->count = 0; /* detach before any DECREF */
    for (size_t i = 0; i < n; i++) Py_XDECREF(slots[i].obj);
    PyMem_Free(slots);
}

/* Add obj (a new reference is taken) under h; grows at 1/2 load, clears at the cap. */
static int table_add(table_t *t, uint64_t h, PyObject *obj) {
    if (t->count >= LABEL_CACHE_MAX) table_clear(t);
    if (!t->slots || (t->count + 1) * 2 > t->mask + 1) {
        size_t cap = t->slots ? (t->mask + 1) * 2 : 1024;
        slot_t *slots = PyMem_Calloc(cap, sizeof(slot_t));
        if (!slots) { PyErr_NoMemory(); return -1; }
        if (t->slots) {
            for (size_t i = 0; i <= t->mask; i++) {
                if (!t->slots[i].obj) continue;
                size_t j = (size_t)t->slots[i].h & (cap - 1);
                while (slots[j].obj) j = (j + 1) & (cap - 1);
                slots[j] = t->slots[i];
            }
            PyMem_Free(t->slots);
        }
        t->slots = slots; t->mask = cap - 1;
    }
    size_t j = (size_t)h & t->mask;
    while (t->slots[j].obj) j = (j + 1) & t->mask;
    Py_INCREF(obj);
    t->slots[j].h = h; t->slots[j].obj = obj; t->count++;
    return 0;
}

/* The last n < 8 bytes at p as one word, with no read outside p[0:n] and no call. */
HOT uint64_t tail_word(const uint8_t *p, Py_ssize_t n) {
    if (n >= 4) return rd32(p) | (uint64_t)rd32(p + n - 4) << 32;
    if (n > 0) return p[0] | (uint64_t)p[n >> 1] << 8 | (uint64_t)p[n - 1] << 16;
    return 0;
}

HOT int bytes_eq(const uint8_t *a, const uint8_t *b, Py_ssize_t n) {
    for (; n >= 8; a += 8, b += 8, n -= 8) if (rd64(a) != rd64(b)) return 0;
    return tail_word(a, n) == tail_word(b, n); /* same n: the same bytes are compared */
}

/* Whether str s is exactly the strict UTF-8 decoding of p[0:n]; allocates nothing. */
HOT int str_is(PyObject *s, const uint8_t *p, Py_ssize_t n) {
    if (PyUnicode_IS_ASCII(s))
        return PyUnicode_GET_LENGTH(s) == n && bytes_eq(PyUnicode_1BYTE_DATA(s), p, n);
    int kind = PyUnicode_KIND(s);
    const void *d = PyUnicode_DATA(s);
    Py_ssize_t len = PyUnicode_GET_LENGTH(s), i = 0, j = 0;
    while (j < n) {
        uint8_t b = p[j];
        uint32_t cp; int k;
        if (b < 0x80) { cp = b; k = 1; }
        else if ((b & 0xE0) == 0xC0) { cp = b & 0x1F; k = 2; }
        else if ((b & 0xF0) == 0xE0) { cp = b & 0x0F; k = 3; }
        else if ((b & 0xF8) == 0xF0) { cp = b & 0x07; k = 4; }
        else return 0;
        if (j + k > n) return 0;
        for (int m = 1; m < k; m++) {
            if ((p[j + m] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[j + m] & 0x3F);
        }
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000)
            || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        if (i >= len || PyUnicode_READ(kind, d, i) != cp) return 0;
        i++; j += k;
    }
    return i == len;
}

/* A cheap hash of short strings, 8 bytes a step (only the cache uses it: an equal hash is
 * always checked against the strings, so a collision costs time, never a wrong answer). */
HOT uint64_t mix(uint64_t h, uint64_t v) { h = (h ^ v) * P1; return h ^ (h >> 29); }
HOT uint64_t str_hash(uint64_t h, const uint8_t *p, Py_ssize_t n) {
    for (; n >= 8; p += 8, n -= 8) h = mix(h, rd64(p));
    return mix(h, tail_word(p, n) ^ ((uint64_t)n << 59)); /* n < 8 here */
}
HOT uint64_t finish(uint64_t h) { h ^= h >> 33; h *= P2; return h ^ (h >> 32); }

HOT uint64_t pair_hash(const label_t *l) {
    return finish(str_hash(str_hash(P5, l->name, l->nlen) + (uint64_t)l->nlen, l->value,
                           l->vlen));
}

/* A new reference to the name's interned str. */
static PyObject *name_str(const label_t *l) {
    uint64_t h = finish(str_hash(P4, l->name, l->nlen));
    if (NAMES.slots) {
        for (size_t j = (size_t)h & NAMES.mask; NAMES.slots[j].obj; j = (j + 1) & NAMES.mask) {
            PyObject *s = NAMES.slots[j].obj;
            if (NAMES.slots[j].h == h && str_is(s, l->name, l->nlen)) { Py_INCREF(s); return s; }
        }
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)l->name, l->nlen, "strict");
    if (!s) return NULL;
    if (table_add(&NAMES, h, s) < 0) { Py_DECREF(s); return NULL; }
    return s;
}

/* A new reference to the label's interned (name, value) tuple. */
static PyObject *pair_tuple(const label_t *l) {
    uint64_t h = pair_hash(l);
    if (PAIRS.slots) {
        for (size_t j = (size_t)h & PAIRS.mask; PAIRS.slots[j].obj; j = (j + 1) & PAIRS.mask) {
            PyObject *t = PAIRS.slots[j].obj;
            if (PAIRS.slots[j].h == h && str_is(PyTuple_GET_ITEM(t, 0), l->name, l->nlen)
                && str_is(PyTuple_GET_ITEM(t, 1), l->value, l->vlen)) {
                Py_INCREF(t); return t;
            }
        }
    }
    PyObject *name = name_str(l);
    if (!name) return NULL;
    PyObject *value = PyUnicode_DecodeUTF8((const char *)l->value, l->vlen, "strict");
    if (!value) { Py_DECREF(name); return NULL; }
    PyObject *t = PyTuple_New(2);
    if (!t) { Py_DECREF(name); Py_DECREF(value); return NULL; }
    PyTuple_SET_ITEM(t, 0, name); PyTuple_SET_ITEM(t, 1, value);
    if (table_add(&PAIRS, h, t) < 0) { Py_DECREF(t); return NULL; }
    return t;
}

/* The name and value of one Label message (last occurrence wins, other fields skipped). */
HOT int label_fields(cur_t c, label_t *l) {
    const uint8_t *s = c.p; Py_ssize_t n = c.end - c.p;
    if (n >= 4 && s[0] == 0x0a && s[1] < 0x80 && s[1] + 4 <= n && s[2 + s[1]] == 0x12
        && s[3 + s[1]] < 0x80 && 4 + s[1] + s[3 + s[1]] == n) { /* the canonical shape */
        l->name = s + 2; l->nlen = s[1]; l->value = s + 4 + s[1]; l->vlen = s[3 + s[1]];
        return 0;
    }
    uint32_t num, wt; cur_t sub;
    l->name = l->value = (const uint8_t *)""; l->nlen = l->vlen = 0;
    while (c.p < c.end) {
        if (field(&c, &num, &wt, &sub) < 0) return -1;
        if (num == 1 || num == 2) {
            if (wt != 2) return -1;
            if (num == 1) { l->name = sub.p; l->nlen = sub.end - sub.p; }
            else { l->value = sub.p; l->vlen = sub.end - sub.p; }
        }
    }
    return 0;
}

static int label_row(const uint8_t *base, Py_ssize_t blen, const uint8_t *rowp, Py_ssize_t i,
                     label_t **labels, Py_ssize_t *cap, PyObject **out) {
    span_t r; memcpy(&r, rowp, sizeof r);
    if (r.start > r.end || r.end > (uint64_t)blen) {
        PyErr_Format(PyExc_ValueError, "span %zd (%u, %u) is outside the %zd-byte buffer",
                     i, r.start, r.end, blen);
        return -1;
    }
    cur_t c = {base + r.start, base + r.end}, ts;
    uint32_t num, wt;
    Py_ssize_t n = 0;
    int sorted = 1;
    if (field(&c, &num, &wt, &ts) < 0 || num != 1 || wt != 2 || c.p != c.end) goto malformed;
    while (ts.p < ts.end) {
        cur_t sub;
        if (field(&ts, &num, &wt, &sub) < 0) goto malformed;
        if (num != 1) continue;
        if (wt != 2) goto malformed;
        if (grow((void **)labels, cap, n + 1, sizeof(label_t)) < 0) { PyErr_NoMemory(); return -1; }
        label_t *L = *labels + n;
        if (label_fields(sub, L) < 0) goto malformed;
        if (L->vlen == 0) continue; /* an empty value is no label */
        if (n && sorted && label_cmp(L - 1, L) > 0) sorted = 0;
        n++;
    }
    label_t *L = *labels;
    if (!sorted) { /* stable insertion sort by name bytes: label sets are small */
        for (Py_ssize_t a = 1; a < n; a++) {
            label_t t = L[a]; Py_ssize_t b = a;
            while (b > 0 && label_cmp(&L[b - 1], &t) > 0) { L[b] = L[b - 1]; b--; }
            L[b] = t;
        }
    }
    PyObject *tuple = PyTuple_New(n);
    if (!tuple) return -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *pair = pair_tuple(&L[k]);
        if (!pair) { Py_DECREF(tuple); return -1; }
        PyTuple_SET_ITEM(tuple, k, pair);
    }
    *out = tuple;
    return 0;
malformed:
    PyErr_Format(PyExc_ValueError, "span %zd is not one well-formed TimeSeries entry", i);
    return -1;
}

static PyObject *labels(PyObject *self, PyObject *args) {
    Py_buffer buf, sp;
    if (!PyArg_ParseTuple(args, "y*y*", &buf, &sp)) return NULL;
    PyObject *out = NULL;
    label_t *scratch = NULL; Py_ssize_t cap = 0;
    if (sp.len % (Py_ssize_t)sizeof(span_t)) {
        PyErr_SetString(PyExc_ValueError, "spans must be rows of four uint32");
        goto done;
    }
    Py_ssize_t rows = sp.len / (Py_ssize_t)sizeof(span_t);
    out = PyList_New(rows);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < rows; i++) {
        PyObject *one;
        if (label_row((const uint8_t *)buf.buf, buf.len,
                      (const uint8_t *)sp.buf + i * (Py_ssize_t)sizeof(span_t), i,
                      &scratch, &cap, &one) < 0) {
            Py_CLEAR(out); goto done;
        }
        PyList_SET_ITEM(out, i, one);
    }
done:
    free(scratch);
    PyBuffer_Release(&buf); PyBuffer_Release(&sp);
    return out;
}


/* ---- samples(): the float samples of some series, as three packed arrays ----
 *
 * For each row of spans (a TimeSeries entry scan() validated), every Sample in order:
 * returns (series_index: int32 per sample, the row's index; timestamps: int64; values:
 * float64) as bytes, so the policy engine reads the points it merges without building a
 * Python object per point. Native histograms are not samples and are skipped. */
static int sample_fields(cur_t s, double *v, int64_t *ts) {
    *v = 0; *ts = 0;
    while (s.p < s.end) {
        uint64_t tag, n;
        if (varint(&s, &tag) < 0) return -1;
        uint32_t num = (uint32_t)(tag >> 3), wt = (uint32_t)(tag & 7);
        if (wt == 1) {
            if (s.end - s.p < 8) return -1;
            if (num == 1) memcpy(v, s.p, 8);
            s.p += 8;
        } else if (wt == 0) {
            if (varint(&s, &n) < 0) return -1;
            if (num == 2) *ts = (int64_t)n;
        } else if (wt == 2) {
            if (varint(&s, &n) < 0 || n > (uint64_t)(s.end - s.p)) return -1;
            s.p += n;
        } else if (wt == 5) {
            if (s.end - s.p < 4) return -1;
            s.p += 4;
        } else return -1;
    }
    return 0;
}

static PyObject *samples(PyObject *self, PyObject *args) {
    Py_buffer buf, sp;
    if (!PyArg_ParseTuple(args, "y*y*", &buf, &sp)) return NULL;
    PyObject *idx = NULL, *tss = NULL, *vals = NULL, *out = NULL;
    if (sp.len % (Py_ssize_t)sizeof(span_t)) {
        PyErr_SetString(PyExc_ValueError, "spans must be rows of four uint32");
        goto done;
    }
    Py_ssize_t rows = sp.len / (Py_ssize_t)sizeof(span_t), total = 0, k = 0;
    const uint8_t *rowp = (const uint8_t *)sp.buf, *base = (const uint8_t *)buf.buf;
    for (Py_ssize_t i = 0; i < rows; i++) {
        span_t r; memcpy(&r, rowp + i * (Py_ssize_t)sizeof(span_t), sizeof r);
        if (r.start > r.end || r.end > (uint64_t)buf.len || r.histograms > r.points) {
            PyErr_Format(PyExc_ValueError, "span %zd (%u, %u) is outside the %zd-byte buffer",
                         i, r.start, r.end, buf.len);
            goto done;
        }
        total += (Py_ssize_t)(r.points - r.histograms);
    }
    idx = PyBytes_FromStringAndSize(NULL, total * 4);
    tss = PyBytes_FromStringAndSize(NULL, total * 8);
    vals = PyBytes_FromStringAndSize(NULL, total * 8);
    if (!idx || !tss || !vals) goto done;
    int32_t *oi = (int32_t *)PyBytes_AS_STRING(idx);
    int64_t *ot = (int64_t *)PyBytes_AS_STRING(tss);
    double *ov = (double *)PyBytes_AS_STRING(vals);
    for (Py_ssize_t i = 0; i < rows; i++) {
        span_t r; memcpy(&r, rowp + i * (Py_ssize_t)sizeof(span_t), sizeof r);
        cur_t c = {base + r.start, base + r.end}, ts, sub;
        uint32_t num, wt;
        if (field(&c, &num, &wt, &ts) < 0 || num != 1 || wt != 2 || c.p != c.end) goto malformed;
        while (ts.p < ts.end) {
            if (field(&ts, &num, &wt, &sub) < 0) goto malformed;
            if (num != 2) continue;
            if (wt != 2 || k >= total) goto malformed;
            double v; int64_t t;
            if (sample_fields(sub, &v, &t) < 0) goto malformed;
            oi[k] = (int32_t)i; ot[k] = t; ov[k] = v; k++;
        }
        continue;
    malformed:
        PyErr_Format(PyExc_ValueError, "span %zd is not one well-formed TimeSeries entry", i);
        goto done;
    }
    if (k != total) {
        PyErr_Format(PyExc_ValueError, "the spans announce %zd samples, the entries hold %zd",
                     total, k);
        goto done;
    }
    out = PyTuple_Pack(3, idx, tss, vals);
done:
    Py_XDECREF(idx); Py_XDECREF(tss); Py_XDECREF(vals);
    PyBuffer_Release(&buf); PyBuffer_Release(&sp);
    return out;
}

static PyObject *label_cache_size(PyObject *self, PyObject *unused) {
    return Py_BuildValue("(nn)", (Py_ssize_t)PAIRS.count, (Py_ssize_t)NAMES.count);
}

static PyObject *label_cache_clear(PyObject *self, PyObject *unused) {
    table_clear(&PAIRS); table_clear(&NAMES);
    Py_RETURN_NONE;
}

static PyObject *py_xxh64(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t h = xxh64((const uint8_t *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(h);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, "Scan and validate a WriteRequest; see the module source."},
    {"gather", gather, METH_VARARGS, "Concatenate spans of a buffer, then a tail; see the module source."},
    {"labels", labels, METH_VARARGS, "The sorted, interned label sets of some series; see the module source."},
    {"samples", samples, METH_VARARGS, "(series index, timestamps, values) of some series' samples; see the module source."},
    {"label_cache_size", label_cache_size, METH_NOARGS, "(pairs, names) held by labels()' cache."},
    {"label_cache_clear", label_cache_clear, METH_NOARGS, "Empty labels()' cache (tests, benchmarks)."},
    {"xxh64", py_xxh64, METH_O, "xxh64 (seed 0) of a buffer, for tests."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wirescan",
    "Scan and validate Prometheus remote-write requests in C (docs/adr/0005).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wirescan(void) {
    init_tables();
    return PyModule_Create(&module);
}
