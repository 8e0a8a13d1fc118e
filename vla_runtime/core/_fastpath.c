/* _fastpath: the fast path's per-tick numerics in C, each the twin of a Python reference.
 *
 * - sample / window / prefix: the ChunkScheduler's trajectory sampling (core/chunk_scheduler.py).
 *   The 30 Hz loop samples the executing trajectory twice per tick: the RTC prefix before inference
 *   and the plan window after it. In numpy that is ~60 small ufunc calls per tick, and each costs
 *   microseconds when the loop wakes cold every 33 ms (measured: the same Python code runs 5-20x
 *   slower 33 ms after its last run than back to back). Here it is one call each.
 * - jointstate_positions_at: where a serialized sensor_msgs/JointState keeps its positions, if its
 *   names are the expected ones (nodes/cdr.py, JointStateDecoder._positions_at).
 *
 * Semantics are those of the Python implementations, which stay the reference (and the fallback
 * when this module is not built); test_chunk_scheduler.py and test_cdr.py check that both agree.
 *
 * A trajectory arrives as a "spec": a tuple of levels, outermost first.
 *   (0, points, t0, dt, cubic)                                  a chunk
 *   (1, value)                                                  a held command (defined forever)
 *   (2, points, t0, dt, cubic, t_start, t_end, shape)           a blend into this chunk; the level
 *                                                               after it is what it blends from
 * points: C-contiguous float64 (n, A); value: float64 (A,); cubic: 0/1; shape: 0 linear,
 * 1 smoothstep, 2 cosine.
 *
 * No Python object is created per sample, and the GIL is held throughout (the calls are µs).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>

#define MAX_LEVELS 64
#define EPS 1e-9
#define PI_D 3.14159265358979323846 /* np.pi */

typedef struct {
    int kind; /* 0 chunk, 1 const, 2 blend */
    const double *p;
    Py_ssize_t n;
    double t0, dt, end;
    int cubic;
    double t_start, t_end;
    int shape;
} Level;

/* Every buffer a call holds (the spec's arrays, then its inputs and outputs) lives in the Spec, so
 * one spec_release at the end of a call releases all of them, on success and on every error. */
#define MAX_CALL_BUFS 4

typedef struct {
    Level lv[MAX_LEVELS];
    Py_buffer bufs[MAX_LEVELS + MAX_CALL_BUFS];
    int nlev;
    int nbuf;
    Py_ssize_t a;
} Spec;

static void spec_release(Spec *s) {
    for (int i = 0; i < s->nbuf; i++) PyBuffer_Release(&s->bufs[i]);
    s->nbuf = 0;
}

/* A C-contiguous float64 buffer of `ndim` dims, held by the Spec; NULL (exception set) otherwise. */
static Py_buffer *get_f64(Spec *s, PyObject *obj, int ndim, int writable, const char *what) {
    Py_buffer *b = &s->bufs[s->nbuf];
    if (PyObject_GetBuffer(obj, b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return NULL;
    s->nbuf++;
    if (b->ndim != ndim || b->itemsize != 8 || b->format == NULL || strcmp(b->format, "d") != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous float64 array of %d dims", what, ndim);
        return NULL;
    }
    return b;
}

/* An output: as get_f64, writable, with at least `rows` rows (and `a` columns when 2-D). */
static double *get_out(Spec *s, PyObject *obj, int ndim, Py_ssize_t rows, Py_ssize_t a, const char *what) {
    int held = s->nbuf;
    Py_buffer *b = get_f64(s, obj, ndim, 1, what);
    if (b == NULL && s->nbuf == held) return NULL; /* no buffer at all: the buffer protocol's error */
    if (b == NULL || b->shape[0] < rows || (ndim == 2 && b->shape[1] != a)) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s must be a writable C-contiguous float64 array of shape (%zd%s)", what,
                     rows, ndim == 2 ? ", A" : "");
        return NULL;
    }
    return (double *)b->buf;
}

static int parse_spec(PyObject *spec, Spec *s) {
    s->nlev = 0;
    s->nbuf = 0;
    s->a = -1;
    if (!PyTuple_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "spec must be a tuple of levels");
        return -1;
    }
    Py_ssize_t nl = PyTuple_GET_SIZE(spec);
    if (nl < 1 || nl > MAX_LEVELS) {
        PyErr_Format(PyExc_ValueError, "spec must have 1..%d levels, got %zd", MAX_LEVELS, nl);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nl; i++) {
        PyObject *t = PyTuple_GET_ITEM(spec, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2) {
            PyErr_Format(PyExc_ValueError, "spec level %zd is not a tuple (kind, ...)", i);
            return -1;
        }
        Level *L = &s->lv[i];
        memset(L, 0, sizeof(*L));
        L->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
        Py_ssize_t need = L->kind == 0 ? 5 : L->kind == 1 ? 2 : L->kind == 2 ? 8 : -1;
        if (need < 0 || PyTuple_GET_SIZE(t) != need) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "spec level %zd: bad kind %d or length %zd", i, L->kind,
                             PyTuple_GET_SIZE(t));
            return -1;
        }
        if (L->kind != 2 && i != nl - 1) {
            PyErr_Format(PyExc_ValueError, "spec level %zd: only the last level may be a chunk or a constant", i);
            return -1;
        }
        if (L->kind == 2 && i == nl - 1) {
            PyErr_Format(PyExc_ValueError, "spec level %zd: a blend needs a level to blend from", i);
            return -1;
        }
        Py_ssize_t a;
        if (L->kind == 1) {
            Py_buffer *b = get_f64(s, PyTuple_GET_ITEM(t, 1), 1, 0, "a held value");
            if (b == NULL) return -1;
            L->p = (const double *)b->buf;
            L->n = 1;
            a = b->shape[0];
            L->end = INFINITY;
        } else {
            Py_buffer *b = get_f64(s, PyTuple_GET_ITEM(t, 1), 2, 0, "chunk points");
            if (b == NULL) return -1;
            L->p = (const double *)b->buf;
            L->n = b->shape[0];
            a = b->shape[1];
            if (L->n < 1) {
                PyErr_Format(PyExc_ValueError, "spec level %zd: a chunk needs at least one point", i);
                return -1;
            }
            L->t0 = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 2));
            L->dt = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 3));
            L->cubic = PyObject_IsTrue(PyTuple_GET_ITEM(t, 4));
            L->end = L->t0 + (double)(L->n - 1) * L->dt;
            if (L->kind == 2) {
                L->t_start = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 5));
                L->t_end = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 6));
                L->shape = (int)PyLong_AsLong(PyTuple_GET_ITEM(t, 7));
            }
            if (PyErr_Occurred()) return -1;
            if (!(L->dt > 0)) {
                PyErr_Format(PyExc_ValueError, "spec level %zd: dt must be > 0", i);
                return -1;
            }
        }
        if (s->a < 0) s->a = a;
        else if (a != s->a) {
            PyErr_Format(PyExc_ValueError, "spec level %zd has action dim %zd, level 0 has %zd", i, a, s->a);
            return -1;
        }
    }
    s->nlev = (int)nl;
    return 0;
}

/* A chunk at time t into out[a]; 0 (and NaN) where it is not defined. Mirrors _Chunk._interp. */
static int chunk_at(const Level *L, double t, double *out, Py_ssize_t A) {
    if (!(L->t0 - EPS <= t && t <= L->end + EPS)) {
        for (Py_ssize_t k = 0; k < A; k++) out[k] = NAN;
        return 0;
    }
    const double *p = L->p;
    Py_ssize_t n = L->n;
    if (n == 1) {
        memcpy(out, p, (size_t)A * sizeof(double));
        return 1;
    }
    double x = (t - L->t0) / L->dt;
    Py_ssize_t i = (Py_ssize_t)floor(x);
    if (i < 0) i = 0;
    if (i > n - 2) i = n - 2;
    double s = x - (double)i;
    s = s < 0.0 ? 0.0 : (s > 1.0 ? 1.0 : s);
    const double *p0 = p + i * A, *p1 = p0 + A;
    if (!L->cubic) {
        for (Py_ssize_t k = 0; k < A; k++) out[k] = p0[k] + s * (p1[k] - p0[k]);
        return 1;
    }
    const double *pm = i > 0 ? p0 - A : NULL, *p2 = i + 2 < n ? p1 + A : NULL;
    double s2 = s * s, s3 = s * s * s;
    double h00 = 2 * s3 - 3 * s2 + 1, h10 = s3 - 2 * s2 + s, h01 = -2 * s3 + 3 * s2, h11 = s3 - s2;
    for (Py_ssize_t k = 0; k < A; k++) {
        double d = p1[k] - p0[k];
        double m0 = pm ? (p1[k] - pm[k]) * 0.5 : d;
        double m1 = p2 ? (p2[k] - p0[k]) * 0.5 : d;
        out[k] = h00 * p0[k] + h10 * m0 + h01 * p1[k] + h11 * m1;
    }
    return 1;
}

static double blend_weight(const Level *L, double t) {
    double x = (t - L->t_start) / (L->t_end - L->t_start);
    x = x < 0.0 ? 0.0 : (x > 1.0 ? 1.0 : x);
    if (L->shape == 0) return x;
    if (L->shape == 1) return x * x * (3.0 - 2.0 * x);
    return 0.5 - 0.5 * cos(PI_D * x);
}

/* The trajectory from level j on at time t into out; scratch holds (nlev - j) * A doubles.
 * NaN entries where it is not defined (as sample_many). Mirrors _Blend.sample_many. */
static void eval_at(const Spec *s, int j, double t, double *out, double *scratch) {
    const Level *L = &s->lv[j];
    Py_ssize_t A = s->a;
    if (L->kind == 1) {
        memcpy(out, L->p, (size_t)A * sizeof(double));
        return;
    }
    if (!chunk_at(L, t, out, A) || L->kind == 0 || t >= L->t_end) return;
    double *old = scratch;
    eval_at(s, j + 1, t, old, scratch + A);
    double w = blend_weight(L, t);
    for (Py_ssize_t k = 0; k < A; k++)
        if (!isnan(old[k])) out[k] = old[k] + w * (out[k] - old[k]);
}

static int row_has_nan(const double *r, Py_ssize_t A) {
    for (Py_ssize_t k = 0; k < A; k++)
        if (isnan(r[k])) return 1;
    return 0;
}

static double *scratch_for(const Spec *s, double *stack_buf, size_t stack_len) {
    size_t need = (size_t)(s->nlev + 1) * (size_t)s->a;
    if (need <= stack_len) return stack_buf;
    double *m = PyMem_Malloc(need * sizeof(double));
    if (!m) PyErr_NoMemory();
    return m;
}

#define STACK_SCRATCH 1024

PyDoc_STRVAR(sample_doc,
             "sample(spec, ts, out) -> None\n\n"
             "The trajectory at every time of ts (float64 (m,)) into out (float64 (m, A)); NaN rows where "
             "it is not defined.");

static PyObject *k_sample(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec_o, *ts_o, *out_o, *ret = NULL;
    if (!PyArg_ParseTuple(args, "OOO", &spec_o, &ts_o, &out_o)) return NULL;
    Spec s;
    double stack_buf[STACK_SCRATCH], *scratch = NULL, *out;
    Py_buffer *tb;
    if (parse_spec(spec_o, &s) < 0 || (tb = get_f64(&s, ts_o, 1, 0, "ts")) == NULL) goto done;
    Py_ssize_t m = tb->shape[0];
    if ((out = get_out(&s, out_o, 2, m, s.a, "out")) == NULL) goto done;
    if ((scratch = scratch_for(&s, stack_buf, STACK_SCRATCH)) == NULL) goto done;
    const double *ts = (const double *)tb->buf;
    for (Py_ssize_t r = 0; r < m; r++) eval_at(&s, 0, ts[r], out + r * s.a, scratch);
    ret = Py_NewRef(Py_None);
done:
    if (scratch && scratch != stack_buf) PyMem_Free(scratch);
    spec_release(&s);
    return ret;
}

PyDoc_STRVAR(window_doc,
             "window(spec, now, dt, n, times, values) -> m\n\n"
             "Samples at now + k*dt, k = 0..n-1, into times (m,) and values (m, A), stopping at the "
             "trajectory's end and at the first undefined sample (never extrapolating). Returns m.");

static PyObject *k_window(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec_o, *times_o, *values_o, *ret = NULL;
    double now, dt;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OddnOO", &spec_o, &now, &dt, &n, &times_o, &values_o)) return NULL;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "n must be >= 0, got %zd", n);
        return NULL;
    }
    Spec s;
    double stack_buf[STACK_SCRATCH], *scratch = NULL, *times, *values;
    if (parse_spec(spec_o, &s) < 0 || (times = get_out(&s, times_o, 1, n, 0, "times")) == NULL ||
        (values = get_out(&s, values_o, 2, n, s.a, "values")) == NULL ||
        (scratch = scratch_for(&s, stack_buf, STACK_SCRATCH)) == NULL)
        goto done;
    double end = s.lv[0].end;
    Py_ssize_t m = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        double t = now + dt * (double)k;
        if (t > end + EPS) break;
        double *row = values + m * s.a;
        eval_at(&s, 0, t, row, scratch);
        if (row_has_nan(row, s.a)) break;
        times[m++] = t;
    }
    ret = PyLong_FromSsize_t(m);
done:
    if (scratch && scratch != stack_buf) PyMem_Free(scratch);
    spec_release(&s);
    return ret;
}

PyDoc_STRVAR(prefix_doc,
             "prefix(spec, now, dt, horizon, delay, fallback, out, mask) -> None\n\n"
             "ChunkScheduler.prefix for a running trajectory: out[i] = the plan at now + i*dt (its final "
             "point past its end; rows still undefined take the row before, fallback (float64 (A,) or "
             "None: zeros) at first); mask[i] = i*dt < delay - 1e-9 (mask: float64 (horizon,), 1.0/0.0).");

static PyObject *k_prefix(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *spec_o, *fb_o, *out_o, *mask_o, *ret = NULL;
    double now, dt, delay;
    Py_ssize_t h;
    if (!PyArg_ParseTuple(args, "OddndOOO", &spec_o, &now, &dt, &h, &delay, &fb_o, &out_o, &mask_o)) return NULL;
    if (h < 1) {
        PyErr_Format(PyExc_ValueError, "horizon must be >= 1, got %zd", h);
        return NULL;
    }
    Spec s;
    double stack_buf[STACK_SCRATCH], end_val_buf[256], *scratch = NULL, *end_val = NULL, *out, *mask;
    const double *last = NULL; /* the fallback, then the last defined row */
    if (parse_spec(spec_o, &s) < 0) goto done;
    if (fb_o != Py_None) {
        int held = s.nbuf;
        Py_buffer *fb = get_f64(&s, fb_o, 1, 0, "fallback");
        if (fb == NULL && s.nbuf == held) goto done; /* no buffer at all: the buffer protocol's error */
        if (fb == NULL || fb->shape[0] != s.a) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "fallback must be a float64 array of shape (A,)");
            goto done;
        }
        last = (const double *)fb->buf;
    }
    if ((out = get_out(&s, out_o, 2, h, s.a, "out")) == NULL || (mask = get_out(&s, mask_o, 1, h, 0, "mask")) == NULL ||
        (scratch = scratch_for(&s, stack_buf, STACK_SCRATCH)) == NULL)
        goto done;
    Py_ssize_t A = s.a;
    end_val = A <= 256 ? end_val_buf : PyMem_Malloc((size_t)A * sizeof(double));
    if (end_val == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    double end = s.lv[0].end;
    int have_end = 0, end_ok = 0;
    for (Py_ssize_t i = 0; i < h; i++) {
        mask[i] = (double)i * dt < delay - EPS ? 1.0 : 0.0;
        double t = now + dt * (double)i;
        double *row = out + i * A;
        eval_at(&s, 0, t, row, scratch);
        if (row_has_nan(row, A) && t > end) { /* past the plan's end: its final point */
            if (!have_end) {
                eval_at(&s, 0, end, end_val, scratch);
                end_ok = !row_has_nan(end_val, A);
                have_end = 1;
            }
            if (end_ok) memcpy(row, end_val, (size_t)A * sizeof(double));
        }
        if (row_has_nan(row, A)) { /* still unknown: the row before (the fallback at first) */
            if (last) memcpy(row, last, (size_t)A * sizeof(double));
            else memset(row, 0, (size_t)A * sizeof(double));
        } else {
            last = row;
        }
    }
    ret = Py_NewRef(Py_None);
done:
    if (end_val && end_val != end_val_buf) PyMem_Free(end_val);
    if (scratch && scratch != stack_buf) PyMem_Free(scratch);
    spec_release(&s);
    return ret;
}

/* ---------------------------------------------------------------- sensor_msgs/JointState CDR */
#define ENCAPS 4 /* CDR encapsulation header */

static Py_ssize_t cdr_align(Py_ssize_t o, Py_ssize_t k) { return ENCAPS + ((o - ENCAPS + k - 1) / k) * k; }

static int read_u32(const unsigned char *b, Py_ssize_t size, Py_ssize_t o, Py_ssize_t *v) {
    if (o < 0 || o + 4 > size) return 0;
    *v = (Py_ssize_t)((unsigned long)b[o] | ((unsigned long)b[o + 1] << 8) | ((unsigned long)b[o + 2] << 16) |
                      ((unsigned long)b[o + 3] << 24));
    return 1;
}

PyDoc_STRVAR(js_doc,
             "jointstate_positions_at(raw, names) -> offset\n\n"
             "Offset of the positions in a serialized JointState (little-endian CDR) whose names are "
             "exactly `names` (a tuple of NUL-terminated bytes) and whose position count matches; -1 "
             "otherwise. Padding bytes are never compared.");

static PyObject *k_js_positions_at(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer rb;
    PyObject *names;
    if (!PyArg_ParseTuple(args, "y*O!", &rb, &PyTuple_Type, &names)) return NULL;
    const unsigned char *b = (const unsigned char *)rb.buf;
    Py_ssize_t size = rb.len, n = PyTuple_GET_SIZE(names), v, o = ENCAPS + 8; /* after the stamp */
    Py_ssize_t result = -1;
    if (!read_u32(b, size, o, &v)) goto done;
    o = cdr_align(o + 4 + v, 4); /* frame_id */
    if (!read_u32(b, size, o, &v) || v != n) goto done;
    o += 4;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *nb = PyTuple_GET_ITEM(names, i);
        if (!PyBytes_Check(nb)) {
            PyBuffer_Release(&rb);
            PyErr_Format(PyExc_TypeError, "names[%zd] must be bytes", i);
            return NULL;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(nb);
        o = cdr_align(o, 4);
        if (!read_u32(b, size, o, &v) || v != len || o + 4 + len > size ||
            memcmp(b + o + 4, PyBytes_AS_STRING(nb), (size_t)len) != 0)
            goto done;
        o += 4 + len;
    }
    o = cdr_align(o, 4);
    if (!read_u32(b, size, o, &v) || v != n) goto done;
    o = cdr_align(o + 4, 8);
    if (o + 8 * n <= size) result = o;
done:
    PyBuffer_Release(&rb);
    return PyLong_FromSsize_t(result);
}

static PyMethodDef methods[] = {
    {"jointstate_positions_at", k_js_positions_at, METH_VARARGS, js_doc},
    {"sample", k_sample, METH_VARARGS, sample_doc},
    {"window", k_window, METH_VARARGS, window_doc},
    {"prefix", k_prefix, METH_VARARGS, prefix_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The fast path's per-tick numerics in C (see _fastpath.c; the Python twins are the reference).", -1,
    methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void) { return PyModule_Create(&module); }
