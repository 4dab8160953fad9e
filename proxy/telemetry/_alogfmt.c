/* The access log's line formatter (proxy/telemetry/accesslog.py), in C.

   `AccessLog.format` turns a batch of entries (tuples of atoms the request path
   appended) into the text of their lines. In Python that loop cost ~7,000
   instructions a line (a join of ~27 pieces, a regex over the batch, the pieces'
   allocation); here it is a size pass and a copy pass over the same fields, with no
   object made per line. `accesslog.py` keeps the Python formatter as the reference:
   the two give the same bytes for every entry (tests/unit/telemetry/test_alogfmt.py
   checks it with generated entries), and the Python one runs where this extension is
   not built (DTABPROXY_PURE=1, no C compiler). Anything unexpected in an entry (a
   wrong type, a number out of range) raises TypeError/ValueError/OverflowError and
   the caller formats that batch in Python.

   entry(record, status, nbytes, service, client, end, failure) -> an entry
   combined(batch, offset) -> bytes
   json(batch, offset, router_json) -> bytes

   An entry: (start, peer, method, target, version, user agent, referer, status,
   body bytes, service, client, end, failure); start and end are perf_counter()
   times, `offset` turns them into wall-clock time. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define ENTRY_LEN 13
enum { T0, PEER, METHOD, TARGET, VERSION, UA, REF, STATUS, NBYTES, SERVICE, CLIENT, T1, FAILURE };

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

/* The length of `s` escaped by `table`: its own length when no byte needs escaping
   (checked 8 bytes at a time, the last word overlapping the one before it, so no byte
   is looked at alone), else counted byte by byte. */
static inline Py_ssize_t esc_len(const unsigned char *table, span s) {
    const unsigned char *p = (const unsigned char *)s.p;
    uint64_t x;
    if (s.n >= 8) {
        Py_ssize_t i = 0;
        for (; i + 8 < s.n; i += 8) {
            memcpy(&x, p + i, 8);
            if (word_special(x))
                goto count;
        }
        memcpy(&x, p + s.n - 8, 8);
        if (!word_special(x))
            return s.n;
    } else {
        for (Py_ssize_t i = 0; i < s.n; i++) /* shorter than a word (a method, "-") */
            if (table[p[i]] != 1)
                goto count;
        return s.n;
    }
count:;
    Py_ssize_t n = 0;
    for (Py_ssize_t j = 0; j < s.n; j++)
        n += table[p[j]];
    return n;
}

static char *put(char *o, const char *p, Py_ssize_t n) {
    memcpy(o, p, (size_t)n);
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

/* One entry's fields, checked. */
typedef struct {
    double t0, t1;
    span peer, method, target, version, ua, ref, service, client, failure;
    int has_failure;
    long long status, nbytes;
    /* lengths escaped (the size pass counts them; the write pass copies a field whose
       length did not change) */
    Py_ssize_t method_out, target_out, ua_out, ref_out, service_out, client_out, failure_out;
} fields;

static int read_entry(PyObject *e, fields *f) {
    if (!PyTuple_CheckExact(e) || PyTuple_GET_SIZE(e) != ENTRY_LEN) {
        PyErr_SetString(PyExc_TypeError, "access log entry: not a 13-tuple");
        return -1;
    }
    PyObject *fail = PyTuple_GET_ITEM(e, FAILURE);
    f->has_failure = fail != Py_None;
    if (get_double(PyTuple_GET_ITEM(e, T0), &f->t0) || get_double(PyTuple_GET_ITEM(e, T1), &f->t1) ||
        get_ascii(PyTuple_GET_ITEM(e, PEER), &f->peer) || get_bytes(PyTuple_GET_ITEM(e, METHOD), &f->method) ||
        get_bytes(PyTuple_GET_ITEM(e, TARGET), &f->target) || get_bytes(PyTuple_GET_ITEM(e, VERSION), &f->version) ||
        get_bytes(PyTuple_GET_ITEM(e, UA), &f->ua) || get_bytes(PyTuple_GET_ITEM(e, REF), &f->ref) ||
        get_int(PyTuple_GET_ITEM(e, STATUS), &f->status) || get_int(PyTuple_GET_ITEM(e, NBYTES), &f->nbytes) ||
        get_bytes(PyTuple_GET_ITEM(e, SERVICE), &f->service) || get_bytes(PyTuple_GET_ITEM(e, CLIENT), &f->client) ||
        (f->has_failure && get_ascii(fail, &f->failure)))
        return -1;
    return 0;
}

static int is_v2(span v) { return v.n == 1 && v.p[0] == '2'; }

static int is_dash(span v) { return v.n == 1 && v.p[0] == '-'; }

#define NUM_MAX 24 /* a long long's decimal text, sign included, with room */

/* The batch's entries read and checked once, with their escaped lengths (`table`);
   NULL with an exception set when one is not what `observe` appends. */
static fields *read_batch(PyObject *batch, const unsigned char *table, Py_ssize_t *count) {
    Py_ssize_t n = PyList_GET_SIZE(batch);
    fields *fs = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(fields));
    if (fs == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        fields *f = &fs[i];
        if (read_entry(PyList_GET_ITEM(batch, i), f)) {
            PyMem_Free(fs);
            return NULL;
        }
        f->method_out = esc_len(table, f->method);
        f->target_out = esc_len(table, f->target);
        f->ua_out = esc_len(table, f->ua);
        f->ref_out = esc_len(table, f->ref);
        f->service_out = esc_len(table, f->service);
        f->client_out = esc_len(table, f->client);
        f->failure_out = f->has_failure ? esc_len(table, f->failure) : 0;
    }
    *count = n;
    return fs;
}

static int out_of_range(void) {
    PyErr_SetString(PyExc_OverflowError, "access log entry: a time out of range");
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

/* The output of a batch: room for `size` bytes, then cut to what was written. Both free
   the batch's fields. */
static PyObject *new_out(Py_ssize_t size, fields *fs) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, size);
    if (out == NULL)
        PyMem_Free(fs);
    return out;
}

static PyObject *cut_out(PyObject *out, const char *end, fields *fs) {
    PyMem_Free(fs);
    if (_PyBytes_Resize(&out, end - PyBytes_AS_STRING(out)) < 0)
        return NULL;
    return out;
}

/* -- combined ---------------------------------------------------------------------------- */

static PyObject *combined(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *batch;
    double offset;
    if (!PyArg_ParseTuple(args, "O!d:combined", &PyList_Type, &batch, &offset))
        return NULL;
    Py_ssize_t count;
    fields *fs = read_batch(batch, APACHE_LEN, &count);
    if (fs == NULL)
        return NULL;
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        fields *f = &fs[i];
        /* the fixed text of a line is under 60 bytes; the stamp 26; three numbers */
        size += 64 + 26 + 3 * NUM_MAX + (f->peer.n ? f->peer.n : 1) + f->method.n + f->target_out +
                (is_v2(f->version) ? 3 : f->version.n) + f->ref_out + f->ua_out + f->service_out + f->client_out;
    }
    PyObject *out = new_out(size, fs);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) {
        fields *f = &fs[i];
        long long sec, us;
        if (trunc_ll(f->t0 + offset, &sec) || trunc_ll((f->t1 - f->t0) * 1000000 + 0.5, &us) ||
            utc_at(&STAMP, sec, 0))
            goto fail;
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
    }
    return cut_out(out, o, fs);
fail:
    PyMem_Free(fs);
    Py_DECREF(out);
    return NULL;
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

static PyObject *json_lines(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *batch;
    double offset;
    const char *router;
    Py_ssize_t router_n;
    if (!PyArg_ParseTuple(args, "O!dy#:json", &PyList_Type, &batch, &offset, &router, &router_n))
        return NULL;
    Py_ssize_t count;
    fields *fs = read_batch(batch, JSON_LEN, &count);
    if (fs == NULL)
        return NULL;
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        fields *f = &fs[i];
        /* the template's text is under 200 bytes, the time 24; every string's quotes; the
           duration's %.3f: 13 bytes below 1e9 ms (and snprintf's NUL), else DURATION_MAX */
        double ms = (f->t1 - f->t0) * 1000;
        size += 200 + 24 + 2 * NUM_MAX + (!signbit(ms) && ms < 1e9 ? 16 : DURATION_MAX) + 14 + router_n + f->peer.n +
                f->method_out + f->target_out + (is_v2(f->version) ? 3 : f->version.n) + f->ref_out + f->ua_out +
                f->service_out + f->client_out + f->failure_out;
    }
    PyObject *out = new_out(size, fs);
    if (out == NULL)
        return NULL;
    char *o = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) {
        fields *f = &fs[i];
        double t = f->t0 + offset;
        long long sec;
        if (trunc_ll(t, &sec) || utc_at(&ISO, sec, 1))
            goto fail;
        long long milli = (long long)((t - (double)sec) * 1000);
        double dur_ms = (f->t1 - f->t0) * 1000;
        if (!(dur_ms > -1e300 && dur_ms < 1e300) || milli < 0 || milli > 999)
            goto range;
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
        if (o == NULL)
            goto range;
        o = PUTS(o, ",\"failure\":");
        o = f->has_failure ? put_json_str(o, f->failure, f->failure_out) : PUTS(o, "null");
        o = PUTS(o, "}\n");
    }
    return cut_out(out, o, fs);
range:
    out_of_range();
fail:
    PyMem_Free(fs);
    Py_DECREF(out);
    return NULL;
}

/* -- the entry ---------------------------------------------------------------------------- */

static PyObject *DASH; /* b"-" */

/* Whether a header's name is `name` (the codecs give names in lowercase). */
static inline int name_is(PyObject *n, const char *name, Py_ssize_t len) {
    return PyBytes_CheckExact(n) && PyBytes_GET_SIZE(n) == len && memcmp(PyBytes_AS_STRING(n), name, (size_t)len) == 0;
}

/* entry(record, status, body bytes, service, client, end, failure) -> the 13-tuple
   `format` takes, with the User-Agent and Referer found in the record's header list: what
   `accesslog.entry_py` does (the last of each wins), called by the compiled request path
   (observe.log_request), where the loop over the header list cost ~75 instructions a
   header. A header list item that is not a 2-tuple is passed over (the codecs make none). */
static PyObject *entry(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "entry() takes 7 arguments");
        return NULL;
    }
    PyObject *rec = args[0];
    if (!PyTuple_CheckExact(rec) || PyTuple_GET_SIZE(rec) < 6 || !PyList_CheckExact(PyTuple_GET_ITEM(rec, 5))) {
        PyErr_SetString(PyExc_TypeError, "entry(): the record is not (start, peer, method, target, version, headers, ...)");
        return NULL;
    }
    PyObject *headers = PyTuple_GET_ITEM(rec, 5);
    PyObject *ua = DASH, *ref = DASH;
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
    PyObject *e = PyTuple_New(ENTRY_LEN);
    if (e == NULL)
        return NULL;
    PyObject *items[ENTRY_LEN] = {
        PyTuple_GET_ITEM(rec, 0), PyTuple_GET_ITEM(rec, 1), PyTuple_GET_ITEM(rec, 2), PyTuple_GET_ITEM(rec, 3),
        PyTuple_GET_ITEM(rec, 4), ua, ref, args[1], args[2], args[3], args[4], args[5], args[6],
    };
    for (int i = 0; i < ENTRY_LEN; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(e, i, items[i]);
    }
    return e;
}

static PyMethodDef methods[] = {
    {"entry", (PyCFunction)(void (*)(void))entry, METH_FASTCALL,
     "entry(record, status, nbytes, service, client, end, failure) -> a request's access log entry"},
    {"combined", combined, METH_VARARGS, "combined(batch, offset) -> the combined-format lines of a batch"},
    {"json", json_lines, METH_VARARGS, "json(batch, offset, router_json) -> the JSON lines of a batch"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_alogfmt", "The access log's line formatter.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__alogfmt(void) {
    init_tables();
    if (DASH == NULL && (DASH = PyBytes_FromStringAndSize("-", 1)) == NULL)
        return NULL;
    return PyModule_Create(&module);
}
