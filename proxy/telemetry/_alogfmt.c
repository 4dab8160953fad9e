/* The access log's line writer (proxy/telemetry/accesslog.py), in C.

   A `Lines` is one log's buffer of formatted text. The request path hands it what it has
   when a request ends (its record, status, body bytes, service, client, end time and
   failure class) and `add` writes the line into the buffer there and then: no entry
   object is made, nothing of the request is kept alive, and the buffer is reused from
   one hand-off to the next. The log's timer takes the text every 100 ms (`take`) for its
   writer thread. In Python the same line cost ~7,000 instructions (a join of ~27
   pieces); `accesslog.LinesPy` is the Python twin, and `AccessLog.format_py` the
   formatter the tests hold this one to: the two give the same bytes for every request
   (tests/unit/telemetry/test_alogfmt.py checks it with generated ones). Anything
   unexpected (a field of another type, a number out of range) raises
   TypeError/ValueError/OverflowError with nothing written, and the caller formats that
   line in Python (`extend`).

   Lines(json, router_json)
     .add(record, status, nbytes, service, client, end, failure)  one line (or dropped)
     .extend(text)          one line formatted elsewhere
     .take() -> bytes       the text so far; the buffer starts again
     .count .limit .dropped .offset   lines held, most held, dropped, perf_counter -> wall

   A record is (start, peer, method, target, version, header list, ...) (`observe.RECORD`);
   the User-Agent and Referer are the last of each in its header list. Times are
   perf_counter() times; `offset` turns them into wall-clock time. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const char HEX[] = "0123456789abcdef";
static const char *MONTHS[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Output length of each byte, escaped. Apache (combined): `"` and `\` backslashed,
   other bytes outside printable ASCII as \xhh. JSON (as json.encoder's ASCII encoder
   on the bytes read as Latin-1): `"` `\` and \b \f \n \r \t short, other controls and
   everything past `~` (DEL included) as \u00hh. */
static unsigned char APACHE_LEN[256];
static unsigned char JSON_LEN[256];

static void init_tables(void) {
    for (int c = 0; c < 256; c++) {
        APACHE_LEN[c] = (c < 0x20 || c >= 0x7f) ? 4 : (c == '"' || c == '\\') ? 2 : 1;
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            JSON_LEN[c] = 2;
        else if (c < 0x20 || c > 0x7e)
            JSON_LEN[c] = 6;
        else
            JSON_LEN[c] = 1;
    }
}

typedef struct {
    const char *p;
    Py_ssize_t n;
} span;

static int get_bytes(PyObject *o, span *s) {
    if (!PyBytes_CheckExact(o)) {
        PyErr_SetString(PyExc_TypeError, "access log entry: a field is not bytes");
        return -1;
    }
    s->p = PyBytes_AS_STRING(o);
    s->n = PyBytes_GET_SIZE(o);
    return 0;
}

/* A str field that is ASCII (a peer address, a failure class); anything else goes
   back to the Python formatter, which encodes it as Latin-1. */
static int get_ascii(PyObject *o, span *s) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_READY(o) || !PyUnicode_IS_ASCII(o)) {
        PyErr_SetString(PyExc_TypeError, "access log entry: a text field is not ASCII str");
        return -1;
    }
    s->p = (const char *)PyUnicode_DATA(o);
    s->n = PyUnicode_GET_LENGTH(o);
    return 0;
}

static int get_double(PyObject *o, double *d) {
    if (!PyFloat_CheckExact(o)) {
        PyErr_SetString(PyExc_TypeError, "access log entry: a time is not a float");
        return -1;
    }
    *d = PyFloat_AS_DOUBLE(o);
    return 0;
}

static int get_int(PyObject *o, long long *v) {
    if (!PyLong_CheckExact(o)) {
        PyErr_SetString(PyExc_TypeError, "access log entry: a number is not an int");
        return -1;
    }
    *v = PyLong_AsLongLong(o);
    return (*v == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* int(x) of a float as Python does it (toward zero), refusing what a long long cannot hold. */
static int trunc_ll(double x, long long *v) {
    if (!(x > -9.0e15 && x < 9.0e15)) {
        PyErr_SetString(PyExc_OverflowError, "access log entry: a time out of range");
        return -1;
    }
    *v = (long long)x;
    return 0;
}

/* Whether any of the 8 bytes in `x` needs escaping: below 0x20, DEL, 0x80 and up, `"`
   or `\` (the same bytes for both formats). A byte b < 0x20 sets its high bit in
   `x - 0x20..` while its own is clear (no borrow reaches a byte unless a lower one is
   below 0x20, which already answers yes); a byte equal to c is a zero byte of `x ^ c..`,
   found the same way; 0x80 and up have the high bit set. Exact: no false negative
   (tests/unit/telemetry/test_alogfmt.py tries every byte at every offset). */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline int word_special(uint64_t x) {
    uint64_t below = (x - ONES * 0x20) & ~x;                /* some byte < 0x20 (or >= 0x80) */
    uint64_t high = x;                                      /* some byte >= 0x80 */
    uint64_t del = ((x ^ (ONES * 0x7f)) - ONES) & ~(x ^ (ONES * 0x7f)); /* some byte == 0x7f */
    uint64_t quote = ((x ^ (ONES * 0x22)) - ONES) & ~(x ^ (ONES * 0x22));
    uint64_t bslash = ((x ^ (ONES * 0x5c)) - ONES) & ~(x ^ (ONES * 0x5c));
    return ((below | high | del | quote | bslash) & HIGHS) != 0;
}

#if defined(__SSE2__)
/* The same question of 16 bytes at once: a signed compare below 0x20 also takes every
   byte of 0x80 and up (negative), and three compares for equality the rest. */
static inline int block_special(__m128i x) {
    __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmplt_epi8(x, _mm_set1_epi8(0x20)), _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f))),
                               _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')), _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))));
    return _mm_movemask_epi8(hit) != 0;
}
#endif

/* Whether any byte of p[0..n) needs escaping, reading whole blocks (the last one
   overlapping the one before it, so no byte is looked at alone): 16 bytes a step with
   SSE2 (every x86-64), else 8. */
static inline int any_special(const unsigned char *table, const unsigned char *p, Py_ssize_t n) {
    uint64_t a;
#if defined(__SSE2__)
    if (n >= 16) {
        for (Py_ssize_t i = 0; i + 16 < n; i += 16)
            if (block_special(_mm_loadu_si128((const __m128i *)(p + i))))
                return 1;
        return block_special(_mm_loadu_si128((const __m128i *)(p + n - 16)));
    }
    if (n >= 8) {
        uint64_t b;
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        return block_special(_mm_set_epi64x((long long)b, (long long)a));
    }
#else
    if (n >= 8) {
        for (Py_ssize_t i = 0; i + 8 < n; i += 8) {
            memcpy(&a, p + i, 8);
            if (word_special(a))
                return 1;
        }
        memcpy(&a, p + n - 8, 8);
        return word_special(a);
    }
#endif
    if (n >= 4) { /* two 4-byte reads, overlapping when n < 8 */
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + n - 4, 4);
        return word_special((uint64_t)lo | (uint64_t)hi << 32);
    }
    for (Py_ssize_t i = 0; i < n; i++) /* shorter than 4 bytes (a method, "-") */
        if (table[p[i]] != 1)
            return 1;
    return 0;
}

/* The length of `s` escaped by `table`: its own length when no byte needs escaping (the
   common case), else counted byte by byte. */
static inline Py_ssize_t esc_len(const unsigned char *table, span s) {
    const unsigned char *p = (const unsigned char *)s.p;
    if (!any_special(table, p, s.n))
        return s.n;
    Py_ssize_t n = 0;
    for (Py_ssize_t j = 0; j < s.n; j++)
        n += table[p[j]];
    return n;
}

/* n bytes from p to o: up to 32 (most fields, the time stamp) as two overlapping loads
   and stores, not a call to memcpy; nothing is read or written outside the two ranges. */
static inline char *put(char *o, const char *p, Py_ssize_t n) {
    if (n > 16) {
        memcpy(o, p, (size_t)n);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
        memcpy(o, &a, 8);
        memcpy(o + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, p, 4);
        memcpy(&b, p + n - 4, 4);
        memcpy(o, &a, 4);
        memcpy(o + n - 4, &b, 4);
    } else if (n > 0) {
        o[0] = p[0];
        o[n / 2] = p[n / 2];
        o[n - 1] = p[n - 1];
    }
    return o + n;
}

#define PUTS(o, lit) put((o), (lit), (Py_ssize_t)(sizeof(lit) - 1))

static char *put_apache(char *o, span s, Py_ssize_t out_len) {
    if (out_len == s.n) /* nothing to escape: the common case */
        return put(o, s.p, s.n);
    const unsigned char *p = (const unsigned char *)s.p;
    for (Py_ssize_t i = 0; i < s.n; i++) {
        unsigned char c = p[i];
        switch (APACHE_LEN[c]) {
        case 1: *o++ = (char)c; break;
        case 2: *o++ = '\\'; *o++ = (char)c; break;
        default: *o++ = '\\'; *o++ = 'x'; *o++ = HEX[c >> 4]; *o++ = HEX[c & 15];
        }
    }
    return o;
}

static char *put_json(char *o, span s, Py_ssize_t out_len) {
    if (out_len == s.n)
        return put(o, s.p, s.n);
    const unsigned char *p = (const unsigned char *)s.p;
    for (Py_ssize_t i = 0; i < s.n; i++) {
        unsigned char c = p[i];
        switch (JSON_LEN[c]) {
        case 1: *o++ = (char)c; break;
        case 2:
            *o++ = '\\';
            *o++ = c == '\b' ? 'b' : c == '\f' ? 'f' : c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : (char)c;
            break;
        default:
            o = PUTS(o, "\\u00");
            *o++ = HEX[c >> 4];
            *o++ = HEX[c & 15];
        }
    }
    return o;
}

/* "00" "01" .. "99": two digits a step. */
static const char PAIRS[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

/* Decimal text of v into o (at most 20 bytes plus a sign). Status codes and small
   sizes, the usual numbers, take one branch. */
static inline char *put_ll(char *o, long long v) {
    unsigned long long u = (unsigned long long)v;
    if (v < 0) {
        *o++ = '-';
        u = 0ULL - u;
    }
    if (u < 100) {
        if (u < 10) {
            *o++ = (char)('0' + u);
            return o;
        }
        memcpy(o, PAIRS + 2 * u, 2);
        return o + 2;
    }
    if (u < 1000) {
        *o++ = (char)('0' + u / 100);
        memcpy(o, PAIRS + 2 * (u % 100), 2);
        return o + 2;
    }
    char tmp[24];
    char *t = tmp + sizeof tmp;
    while (u >= 100) {
        t -= 2;
        memcpy(t, PAIRS + 2 * (u % 100), 2);
        u /= 100;
    }
    if (u >= 10) {
        t -= 2;
        memcpy(t, PAIRS + 2 * u, 2);
    } else {
        *--t = (char)('0' + u);
    }
    size_t n = (size_t)(tmp + sizeof tmp - t);
    memcpy(o, t, n);
    return o + n;
}

static long long floordiv(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* One line's fields, checked, with their escaped lengths (the size is counted from them;
   a field whose length did not change is copied as it is). */
typedef struct {
    double t0, t1;
    span peer, method, target, version, ua, ref, service, client, failure;
    int has_failure;
    long long status, nbytes;
    Py_ssize_t method_out, target_out, ua_out, ref_out, service_out, client_out, failure_out;
} fields;

static const span DASH_SPAN = {"-", 1};

/* Whether a header's name is `name` (the codecs give names in lowercase). */
static inline int name_is(PyObject *n, const char *name, Py_ssize_t len) {
    return PyBytes_CheckExact(n) && PyBytes_GET_SIZE(n) == len && memcmp(PyBytes_AS_STRING(n), name, (size_t)len) == 0;
}

/* add()'s arguments read into `f`: the record's fields, the last User-Agent and Referer
   of its header list (an item that is not a 2-tuple is passed over; the codecs make
   none), then what the request ended with. -1 with TypeError/OverflowError set when one
   is not what the request path passes. */
static int read_args(PyObject *const *args, fields *f) {
    PyObject *rec = args[0];
    if (!PyTuple_CheckExact(rec) || PyTuple_GET_SIZE(rec) < 6 || !PyList_CheckExact(PyTuple_GET_ITEM(rec, 5))) {
        PyErr_SetString(PyExc_TypeError, "access log: the record is not (start, peer, method, target, version, headers, ...)");
        return -1;
    }
    PyObject *headers = PyTuple_GET_ITEM(rec, 5);
    PyObject *ua = NULL, *ref = NULL;
    Py_ssize_t n = PyList_GET_SIZE(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyList_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(h) || PyTuple_GET_SIZE(h) != 2)
            continue;
        PyObject *name = PyTuple_GET_ITEM(h, 0);
        if (name_is(name, "user-agent", 10))
            ua = PyTuple_GET_ITEM(h, 1);
        else if (name_is(name, "referer", 7))
            ref = PyTuple_GET_ITEM(h, 1);
    }
    PyObject *fail = args[6];
    f->has_failure = fail != Py_None;
    if (get_double(PyTuple_GET_ITEM(rec, 0), &f->t0) || get_ascii(PyTuple_GET_ITEM(rec, 1), &f->peer) ||
        get_bytes(PyTuple_GET_ITEM(rec, 2), &f->method) || get_bytes(PyTuple_GET_ITEM(rec, 3), &f->target) ||
        get_bytes(PyTuple_GET_ITEM(rec, 4), &f->version) || get_int(args[1], &f->status) ||
        get_int(args[2], &f->nbytes) || get_bytes(args[3], &f->service) || get_bytes(args[4], &f->client) ||
        get_double(args[5], &f->t1) || (f->has_failure && get_ascii(fail, &f->failure)))
        return -1;
    if (ua == NULL)
        f->ua = DASH_SPAN;
    else if (get_bytes(ua, &f->ua))
        return -1;
    if (ref == NULL)
        f->ref = DASH_SPAN;
    else if (get_bytes(ref, &f->ref))
        return -1;
    return 0;
}

static void escaped_lengths(fields *f, const unsigned char *table) {
    f->method_out = esc_len(table, f->method);
    f->target_out = esc_len(table, f->target);
    f->ua_out = esc_len(table, f->ua);
    f->ref_out = esc_len(table, f->ref);
    f->service_out = esc_len(table, f->service);
    f->client_out = esc_len(table, f->client);
    f->failure_out = f->has_failure ? esc_len(table, f->failure) : 0;
}

static int is_v2(span v) { return v.n == 1 && v.p[0] == '2'; }

static int is_dash(span v) { return v.n == 1 && v.p[0] == '-'; }

#define NUM_MAX 24 /* a long long's decimal text, sign included, with room */

static int out_of_range(void) {
    PyErr_SetString(PyExc_OverflowError, "access log: a time out of range");
    return -1;
}

/* The text of one UTC second, made once a second: the combined log's `%d/%b/%Y:%H:%M:%S
   +0000` (26 bytes) or ISO 8601's `%Y-%m-%dT%H:%M:%S` (19). */
typedef struct {
    long long sec;
    int n;
    char text[64];
} utc_text;

/* The last second of each format, kept across calls (the GIL is held throughout). */
static utc_text STAMP = {LLONG_MIN, 0, {0}};
static utc_text ISO = {LLONG_MIN, 0, {0}};

static int utc_at(utc_text *c, long long sec, int iso) {
    if (sec == c->sec)
        return 0;
    time_t tt = (time_t)sec;
    struct tm g;
    if (gmtime_r(&tt, &g) == NULL)
        return out_of_range();
    int n = iso ? snprintf(c->text, sizeof c->text, "%04d-%02d-%02dT%02d:%02d:%02d", g.tm_year + 1900,
                           g.tm_mon + 1, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec)
                : snprintf(c->text, sizeof c->text, "%02d/%s/%04d:%02d:%02d:%02d +0000", g.tm_mday,
                           MONTHS[g.tm_mon], g.tm_year + 1900, g.tm_hour, g.tm_min, g.tm_sec);
    if (n < 0 || n > (iso ? 19 : 26))
        return out_of_range();
    c->sec = sec;
    c->n = n;
    return 0;
}

/* -- combined ---------------------------------------------------------------------------- */

static Py_ssize_t combined_size(const fields *f) {
    /* the fixed text of a line is under 60 bytes; the stamp 26; three numbers */
    return 64 + 26 + 3 * NUM_MAX + (f->peer.n ? f->peer.n : 1) + f->method.n + f->target_out +
           (is_v2(f->version) ? 3 : f->version.n) + f->ref_out + f->ua_out + f->service_out + f->client_out;
}

/* One combined line at `o` (room for combined_size); NULL with an exception set, and
   nothing written, when a time is out of range. */
static char *combined_line(char *o, const fields *f, double offset) {
    long long sec, us;
    if (trunc_ll(f->t0 + offset, &sec) || trunc_ll((f->t1 - f->t0) * 1000000 + 0.5, &us) || utc_at(&STAMP, sec, 0))
        return NULL;
    long long ms = floordiv(us, 1000), frac = us - ms * 1000;
    if (f->peer.n)
        o = put(o, f->peer.p, f->peer.n);
    else
        *o++ = '-';
    o = PUTS(o, " - - [");
    o = put(o, STAMP.text, STAMP.n);
    o = PUTS(o, "] \"");
    o = put(o, f->method.p, f->method.n);
    *o++ = ' ';
    o = put_apache(o, f->target, f->target_out);
    o = PUTS(o, " HTTP/");
    o = is_v2(f->version) ? PUTS(o, "2.0") : put(o, f->version.p, f->version.n);
    o = PUTS(o, "\" ");
    o = put_ll(o, f->status);
    *o++ = ' ';
    o = put_ll(o, f->nbytes);
    o = PUTS(o, " \"");
    o = put_apache(o, f->ref, f->ref_out);
    o = PUTS(o, "\" \"");
    o = put_apache(o, f->ua, f->ua_out);
    o = PUTS(o, "\" \"");
    o = put_apache(o, f->service, f->service_out);
    o = PUTS(o, "\" \"");
    o = put_apache(o, f->client, f->client_out);
    o = PUTS(o, "\" ");
    o = put_ll(o, ms);
    *o++ = '.';
    *o++ = (char)('0' + frac / 100);
    *o++ = (char)('0' + frac / 10 % 10);
    *o++ = (char)('0' + frac % 10);
    *o++ = '\n';
    return o;
}

/* -- JSON lines ---------------------------------------------------------------------------- */

static char *put_json_str(char *o, span s, Py_ssize_t out_len) {
    *o++ = '"';
    o = put_json(o, s, out_len);
    *o++ = '"';
    return o;
}

/* A field that is "-" when absent: null, else a JSON string. */
static char *put_json_opt(char *o, span s, Py_ssize_t out_len) {
    return is_dash(s) ? PUTS(o, "null") : put_json_str(o, s, out_len);
}

/* %.3f of a double below 1e300 (checked) is at most 301 digits, the point and three decimals */
#define DURATION_MAX 310

/* `%.3f` of v, as Python prints it (the exact binary value, correctly rounded). The
   common case in integers: v * 1000 rounded, when v is non-negative and small enough that
   the product is within 2^-10 of exact and its fraction is not near a tie (where that
   error could round the other way); anything else through snprintf, which glibc rounds
   exactly too. NULL if the text would not fit. */
static char *put_fixed3(char *o, double v) {
    if (!signbit(v) && v < 1e9) { /* -0.0 prints "-0.000": snprintf */
        double x = v * 1000.0;
        double fl = floor(x);
        double frac = x - fl;
        if (frac < 0.49 || frac > 0.51) {
            long long r = (long long)fl + (frac > 0.5);
            long long whole = r / 1000, part = r % 1000;
            o = put_ll(o, whole);
            *o++ = '.';
            *o++ = (char)('0' + part / 100);
            *o++ = (char)('0' + part / 10 % 10);
            *o++ = (char)('0' + part % 10);
            return o;
        }
    }
    int n = snprintf(o, DURATION_MAX, "%.3f", v);
    return (n < 0 || n >= DURATION_MAX) ? NULL : o + n;
}

static Py_ssize_t json_size(const fields *f, Py_ssize_t router_n) {
    /* the template's text is under 200 bytes, the time 24; every string's quotes; the
       duration's %.3f: 13 bytes below 1e9 ms (and snprintf's NUL), else DURATION_MAX */
    double ms = (f->t1 - f->t0) * 1000;
    return 200 + 24 + 2 * NUM_MAX + (!signbit(ms) && ms < 1e9 ? 16 : DURATION_MAX) + 14 + router_n + f->peer.n +
           f->method_out + f->target_out + (is_v2(f->version) ? 3 : f->version.n) + f->ref_out + f->ua_out +
           f->service_out + f->client_out + f->failure_out;
}

/* One JSON line at `o` (room for json_size); NULL with an exception set when a time is
   out of range (what was written is not counted). */
static char *json_line(char *o, const fields *f, double offset, const char *router, Py_ssize_t router_n) {
    double t = f->t0 + offset;
    long long sec;
    if (trunc_ll(t, &sec) || utc_at(&ISO, sec, 1))
        return NULL;
    long long milli = (long long)((t - (double)sec) * 1000);
    double dur_ms = (f->t1 - f->t0) * 1000;
    if (!(dur_ms > -1e300 && dur_ms < 1e300) || milli < 0 || milli > 999) {
        out_of_range();
        return NULL;
    }
    o = PUTS(o, "{\"time\":\"");
    o = put(o, ISO.text, ISO.n);
    *o++ = '.';
    *o++ = (char)('0' + milli / 100);
    *o++ = (char)('0' + milli / 10 % 10);
    *o++ = (char)('0' + milli % 10);
    o = PUTS(o, "Z\",\"router\":");
    o = put(o, router, router_n);
    o = PUTS(o, ",\"remote\":\"");
    o = put(o, f->peer.p, f->peer.n);
    o = PUTS(o, "\",\"method\":");
    o = put_json_str(o, f->method, f->method_out);
    o = PUTS(o, ",\"uri\":");
    o = put_json_str(o, f->target, f->target_out);
    o = PUTS(o, ",\"protocol\":\"HTTP/");
    o = is_v2(f->version) ? PUTS(o, "2.0") : put(o, f->version.p, f->version.n);
    o = PUTS(o, "\",\"status\":");
    o = put_ll(o, f->status);
    o = PUTS(o, ",\"bytes\":");
    o = put_ll(o, f->nbytes);
    o = PUTS(o, ",\"referer\":");
    o = put_json_opt(o, f->ref, f->ref_out);
    o = PUTS(o, ",\"user_agent\":");
    o = put_json_opt(o, f->ua, f->ua_out);
    o = PUTS(o, ",\"service\":");
    o = put_json_opt(o, f->service, f->service_out);
    o = PUTS(o, ",\"client\":");
    o = put_json_opt(o, f->client, f->client_out);
    o = PUTS(o, ",\"duration_ms\":");
    o = put_fixed3(o, dur_ms);
    if (o == NULL) {
        out_of_range();
        return NULL;
    }
    o = PUTS(o, ",\"failure\":");
    o = f->has_failure ? put_json_str(o, f->failure, f->failure_out) : PUTS(o, "null");
    o = PUTS(o, "}\n");
    return o;
}

/* -- Lines --------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    char *buf;
    Py_ssize_t len, cap;
    Py_ssize_t count;   /* lines in buf */
    Py_ssize_t limit;   /* lines buf may hold: past it a line is dropped and counted */
    Py_ssize_t dropped;
    double offset;      /* perf_counter() time + offset = wall-clock time */
    int json;
    PyObject *router;   /* bytes: the router's name as a JSON string (JSON lines) */
} Lines;

/* A buffer this big is given back at `take` rather than kept for the next interval (a
   burst's, or a run of very long lines). */
#define KEEP_MAX (4 << 20)

static int reserve(Lines *self, Py_ssize_t need) {
    if (self->cap - self->len >= need)
        return 0;
    Py_ssize_t cap = self->cap ? self->cap : 1 << 16;
    while (cap - self->len < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *buf = PyMem_Realloc(self->buf, (size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->buf = buf;
    self->cap = cap;
    return 0;
}

static PyObject *lines_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"json", "router_json", NULL};
    int json = 0;
    PyObject *router = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pS:Lines", kw, &json, &router))
        return NULL;
    Lines *self = (Lines *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->limit = PY_SSIZE_T_MAX;
    self->json = json;
    if (router == NULL)
        router = PyBytes_FromStringAndSize("\"\"", 2);
    else
        Py_INCREF(router);
    self->router = router;
    if (router == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void lines_dealloc(Lines *self) {
    PyMem_Free(self->buf);
    Py_XDECREF(self->router);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *lines_add(Lines *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "add() takes 7 arguments (record, status, nbytes, service, client, end, failure)");
        return NULL;
    }
    if (self->count >= self->limit) {
        self->dropped++;
        Py_RETURN_NONE;
    }
    fields f;
    if (read_args(args, &f))
        return NULL;
    char *o;
    if (self->json) {
        escaped_lengths(&f, JSON_LEN);
        Py_ssize_t router_n = PyBytes_GET_SIZE(self->router);
        if (reserve(self, json_size(&f, router_n)))
            return NULL;
        o = json_line(self->buf + self->len, &f, self->offset, PyBytes_AS_STRING(self->router), router_n);
    } else {
        escaped_lengths(&f, APACHE_LEN);
        if (reserve(self, combined_size(&f)))
            return NULL;
        o = combined_line(self->buf + self->len, &f, self->offset);
    }
    if (o == NULL)
        return NULL;
    self->len = o - self->buf;
    self->count++;
    Py_RETURN_NONE;
}

static PyObject *lines_extend(Lines *self, PyObject *text) {
    if (!PyBytes_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "extend(): the line is not bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(text);
    if (reserve(self, n))
        return NULL;
    memcpy(self->buf + self->len, PyBytes_AS_STRING(text), (size_t)n);
    self->len += n;
    self->count++;
    Py_RETURN_NONE;
}

static PyObject *lines_take(Lines *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyBytes_FromStringAndSize(self->buf, self->len);
    if (out == NULL)
        return NULL;
    self->len = 0;
    self->count = 0;
    if (self->cap > KEEP_MAX) {
        PyMem_Free(self->buf);
        self->buf = NULL;
        self->cap = 0;
    }
    return out;
}

static PyMethodDef lines_methods[] = {
    {"add", (PyCFunction)(void (*)(void))lines_add, METH_FASTCALL,
     "add(record, status, nbytes, service, client, end, failure): a request's line (dropped and counted past limit)"},
    {"extend", (PyCFunction)lines_extend, METH_O, "extend(text): a line formatted elsewhere"},
    {"take", (PyCFunction)lines_take, METH_NOARGS, "take() -> the text written since the last take"},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef lines_members[] = {
    {"count", T_PYSSIZET, offsetof(Lines, count), READONLY, "lines held"},
    {"limit", T_PYSSIZET, offsetof(Lines, limit), 0, "lines that may be held; past it a line is dropped"},
    {"dropped", T_PYSSIZET, offsetof(Lines, dropped), 0, "lines dropped at the limit"},
    {"offset", T_DOUBLE, offsetof(Lines, offset), 0, "perf_counter() time + offset = wall-clock time"},
    {"json", T_INT, offsetof(Lines, json), READONLY, "JSON lines (else combined)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject LinesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy.telemetry._alogfmt.Lines",
    .tp_basicsize = sizeof(Lines),
    .tp_dealloc = (destructor)lines_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lines(json=False, router_json=b'\"\"'): an access log's formatted text, written line by line",
    .tp_methods = lines_methods,
    .tp_members = lines_members,
    .tp_new = lines_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_alogfmt", "The access log's line writer.", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__alogfmt(void) {
    init_tables();
    if (PyType_Ready(&LinesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LinesType);
    if (PyModule_AddObject(m, "Lines", (PyObject *)&LinesType) < 0) {
        Py_DECREF(&LinesType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
