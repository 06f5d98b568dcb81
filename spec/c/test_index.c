/*
 * test_index.c — tn_cat, tn_gather, tn_scatter_add, tn_index_select, tn_index_add against
 * naive loops: every dim, i64 and i32 indices, duplicates, f16/bf16 accumulation (same order
 * as a serial loop, so exact), integer dtypes, non-contiguous inputs, zero-size inputs, sizes
 * large enough for the threaded paths, and the error messages.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common.h"
#include "internal.h"

#define SH(...) ((const int64_t[]){__VA_ARGS__})

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd_u(void) { return xorshift64(&rng_state); }
static double rnd(void) { return (double)((int64_t)(rnd_u() % 256) - 128) / 16.0; }

static double get(const tn_tensor *t, int64_t li) { return tn_load_f64(elem(t, li), t->dtype); }
static int64_t geti(const tn_tensor *t, int64_t li) { return tn_load_i64(elem(t, li), t->dtype); }
static void set(tn_tensor *t, int64_t li, double v) { tn_store_f64(elem(t, li), t->dtype, v); }
static void seti(tn_tensor *t, int64_t li, int64_t v) {
    if (t->dtype == TN_I64) *(int64_t *)elem(t, li) = v;
    else if (t->dtype == TN_I32) *(int32_t *)elem(t, li) = (int32_t)(uint32_t)(uint64_t)v; /* wraps */
    else if (t->dtype == TN_U8) *(uint8_t *)elem(t, li) = (uint8_t)(uint64_t)v;
    else tn_store_f64(elem(t, li), t->dtype, (double)v);
}
/* linear index <-> coordinates over t's shape */
static void coords(const tn_tensor *t, int64_t li, int64_t *c) {
    for (int i = t->ndim - 1; i >= 0; i--) { c[i] = li % t->shape[i]; li /= t->shape[i]; }
}
static int64_t linear(const tn_tensor *t, const int64_t *c) {
    int64_t li = 0;
    for (int i = 0; i < t->ndim; i++) li = li * t->shape[i] + c[i];
    return li;
}

static tn_tensor *mk(int nd, const int64_t *shape, int32_t dtype) {
    tn_tensor *t = NULL;
    CHECK_OK(tn_tensor_empty(&t, nd, shape, dtype, TN_CPU));
    int64_t n = tn_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) set(t, i, dtype == TN_U8 ? (double)(rnd_u() % 200) : rnd());
    return t;
}
static tn_tensor *mk_index(int nd, const int64_t *shape, int32_t dtype, int64_t limit) {
    tn_tensor *t = NULL;
    CHECK_OK(tn_tensor_empty(&t, nd, shape, dtype, TN_CPU));
    int64_t n = tn_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) seti(t, i, limit > 0 ? (int64_t)(rnd_u() % (uint64_t)limit) : 0);
    return t;
}
static tn_tensor *copy_of(const tn_tensor *t) {
    tn_tensor *c = NULL;
    CHECK_OK(tn_tensor_empty(&c, t->ndim, t->shape, t->dtype, TN_CPU));
    CHECK_OK(tn_copy(c, t));
    return c;
}
/* A view of shape `shape` with the same values as a fresh tensor, laid out transposed in its
 * first and last dims (non-contiguous), values assigned after the view is made. */
static tn_tensor *mk_strided(int nd, const int64_t *shape, int32_t dtype) {
    int64_t ts[TN_MAX_DIMS];
    for (int i = 0; i < nd; i++) ts[i] = shape[i];
    ts[0] = shape[nd - 1];
    ts[nd - 1] = shape[0];
    tn_tensor *v = transposed(mk(nd, ts, dtype), 0, nd - 1);
    int64_t n = tn_tensor_numel(v);
    for (int64_t i = 0; i < n; i++) set(v, i, rnd());
    return v;
}
static int same_values(const tn_tensor *x, const tn_tensor *y) {
    if (x->ndim != y->ndim || x->dtype != y->dtype) return 0;
    for (int i = 0; i < x->ndim; i++) if (x->shape[i] != y->shape[i]) return 0;
    int64_t n = tn_tensor_numel(x);
    for (int64_t i = 0; i < n; i++)
        if (tn_is_int_dtype(x->dtype) ? geti(x, i) != geti(y, i) : !(get(x, i) == get(y, i))) {
            fprintf(stderr, "  differs at %lld: %g vs %g\n", (long long)i, get(x, i), get(y, i));
            return 0;
        }
    return 1;
}

/* ---- cat ---------------------------------------------------------------------------------- */

/* Expected cat by coordinates. */
static int cat_matches(const tn_tensor *out, const tn_tensor *const *ts, int n, int dim) {
    int64_t nel = tn_tensor_numel(out), c[TN_MAX_DIMS];
    for (int64_t li = 0; li < nel; li++) {
        coords(out, li, c);
        int64_t p = c[dim];
        int i = 0;
        while (i < n && (ts[i]->ndim != out->ndim || p >= ts[i]->shape[dim])) {
            if (ts[i]->ndim == out->ndim) p -= ts[i]->shape[dim];
            i++;
        }
        if (i == n) return 0;
        c[dim] = p;
        int64_t lj = linear(ts[i], c);
        if (tn_is_int_dtype(out->dtype) ? geti(out, li) != geti(ts[i], lj) : !(get(out, li) == get(ts[i], lj))) return 0;
    }
    return 1;
}

static void expect_cat(const tn_tensor *const *ts, int n, int dim) {
    tn_tensor *out = NULL;
    CHECK_OK(tn_cat(&out, ts, n, dim));
    CHECK(out != NULL && cat_matches(out, ts, n, dim));
    tn_tensor_free(out);
}

static void test_cat(void) {
    static const int32_t dts[] = {TN_F32, TN_F64, TN_F16, TN_BF16, TN_I32, TN_I64, TN_U8};
    for (int d = 0; d < 7; d++)
        for (int dim = 0; dim < 3; dim++) {
            int64_t s1[3] = {2, 3, 4}, s2[3] = {2, 3, 4}, s3[3] = {2, 3, 4};
            s1[dim] = 1; s2[dim] = 5; s3[dim] = 0;
            tn_tensor *a = mk(3, s1, dts[d]), *b = mk(3, s2, dts[d]), *z = mk(3, s3, dts[d]);
            const tn_tensor *ts[] = {a, z, b, a};
            expect_cat(ts, 4, dim);
            expect_cat(ts, 1, dim);
            tn_tensor_free(a);
            tn_tensor_free(b);
            tn_tensor_free(z);
        }
    /* non-contiguous inputs and a non-contiguous preallocated out */
    tn_tensor *a = transposed(mk(3, SH(4, 3, 2), TN_F32), 0, 2), *b = mk(3, SH(2, 3, 6), TN_F32);
    const tn_tensor *ts[] = {a, b};
    expect_cat(ts, 2, 2);
    tn_tensor *pre = transposed(mk(3, SH(10, 3, 2), TN_F32), 0, 2), *o = pre;
    CHECK_OK(tn_cat(&o, ts, 2, 2));
    CHECK(o == pre && cat_matches(pre, ts, 2, 2));
    tn_tensor_free(pre);
    /* legacy: 1-D empty tensors are skipped */
    tn_tensor *e = mk(1, SH(0), TN_F32), *out = NULL;
    const tn_tensor *te[] = {e, b, e};
    CHECK_OK(tn_cat(&out, te, 3, 1));
    CHECK(out && out->ndim == 3 && out->shape[1] == 3 && same_values(out, b));
    tn_tensor_free(out);
    out = NULL;
    const tn_tensor *tee[] = {e, e};
    CHECK_OK(tn_cat(&out, tee, 2, 0));
    CHECK(out && out->ndim == 1 && out->shape[0] == 0);
    tn_tensor_free(out);
    out = NULL;
    /* large: the threaded block copies (dim 0: few big blocks; dim 1: many blocks) */
    tn_tensor *big1 = mk(2, SH(700, 500), TN_F32), *big2 = mk(2, SH(700, 300), TN_F32);
    tn_tensor *big3 = mk(2, SH(300, 500), TN_F32);
    const tn_tensor *tb1[] = {big1, big2}, *tb0[] = {big1, big3};
    expect_cat(tb1, 2, 1);
    expect_cat(tb0, 2, 0);
    /* errors */
    tn_tensor *c = mk(3, SH(2, 4, 6), TN_F32), *f = mk(3, SH(2, 3, 6), TN_F64), *s0 = mk(0, SH(0), TN_F32);
    const tn_tensor *bad1[] = {b, c}, *bad2[] = {b, f}, *bad3[] = {s0, s0}, *bad4[] = {b, NULL};
    CHECK(tn_cat(&out, bad1, 2, 2) == TN_ERR_SHAPE);
    CHECK(strcmp(tn_last_error(),
                 "cat: tensor 1 has shape [2, 4, 6] but tensor 0 has [2, 3, 6]; sizes must match except in dim 2, f32") == 0);
    tn_set_dim_base(1); /* list positions and dims 1-based */
    CHECK(tn_cat(&out, bad1, 2, 2) == TN_ERR_SHAPE);
    CHECK(strcmp(tn_last_error(),
                 "cat: tensor 2 has shape [2, 4, 6] but tensor 1 has [2, 3, 6]; sizes must match except in dim 3, f32") == 0);
    CHECK(tn_cat(&out, bad4, 2, 0) == TN_ERR_ARG && strstr(tn_last_error(), "'tensor 2' is NULL"));
    tn_set_dim_base(0);
    CHECK(tn_cat(&out, bad4, 2, 0) == TN_ERR_ARG && strstr(tn_last_error(), "'tensor 1' is NULL"));
    CHECK(tn_cat(&out, bad1, 2, 1) == TN_OK); /* fine along dim 1 */
    tn_tensor_free(out);
    out = NULL;
    CHECK(tn_cat(&out, bad2, 2, 0) == TN_ERR_DTYPE);
    CHECK(strstr(tn_last_error(), "f64") && strstr(tn_last_error(), "f32"));
    CHECK(tn_cat(&out, bad3, 2, 0) == TN_ERR_SHAPE);
    CHECK(tn_cat(&out, bad4, 2, 0) != TN_OK);
    CHECK(tn_cat(&out, ts, 0, 0) == TN_ERR_ARG);
    CHECK(tn_cat(&out, ts, 2, 3) == TN_ERR_ARG);
    CHECK(out == NULL);
    tn_tensor *objs[] = {a, b, e, big1, big2, big3, c, f, s0};
    for (int i = 0; i < 9; i++) tn_tensor_free(objs[i]);
}

/* ---- gather / scatter_add ------------------------------------------------------------------ */

static void expect_gather(tn_tensor *a, int dim, tn_tensor *index) { /* consumes both */
    tn_tensor *out = NULL;
    CHECK_OK(tn_gather(&out, a, dim, index));
    int ok = out != NULL && out->ndim == index->ndim;
    int64_t n = tn_tensor_numel(index), c[TN_MAX_DIMS];
    for (int64_t li = 0; ok && li < n; li++) {
        coords(index, li, c);
        c[dim] = geti(index, li);
        ok = get(out, li) == get(a, linear(a, c));
    }
    CHECK(ok);
    tn_tensor_free(out);
    tn_tensor_free(a);
    tn_tensor_free(index);
}

static void test_gather(void) {
    for (int dim = 0; dim < 3; dim++)
        for (int it = 0; it < 2; it++) {
            int32_t idt = it ? TN_I32 : TN_I64;
            int64_t as[3] = {4, 5, 6}, is[3] = {3, 4, 5};
            is[dim] = 7; /* may exceed a's size along dim; others must not */
            expect_gather(mk(3, as, TN_F32), dim, mk_index(3, is, idt, as[dim]));
            expect_gather(mk_strided(3, as, TN_F64), dim, mk_index(3, is, idt, as[dim]));
            tn_tensor *ix = mk_index(3, SH(is[2], is[1], is[0]), idt, as[dim]);
            expect_gather(mk(3, as, TN_BF16), dim, transposed(ix, 0, 2)); /* ix values stay in range */
        }
    expect_gather(mk(2, SH(3, 4), TN_I64), 1, mk_index(2, SH(3, 0), TN_I64, 4));
    expect_gather(mk(0, SH(0), TN_F32), 0, mk_index(0, SH(0), TN_I64, 1));
    /* large (threaded) along both dims, RNN-T style: logits (B*T*U, V) gathered at symbols */
    expect_gather(mk(2, SH(20000, 50), TN_F32), 1, mk_index(2, SH(20000, 2), TN_I64, 50));
    expect_gather(mk(2, SH(300, 200), TN_F16), 0, mk_index(2, SH(400, 200), TN_I32, 300));
    /* errors */
    tn_tensor *a = mk(2, SH(2, 5), TN_F32), *ix = mk_index(2, SH(1, 3), TN_I64, 5), *out = NULL;
    seti(ix, 2, 7);
    CHECK(tn_gather(&out, a, 1, ix) == TN_ERR_INDEX);
    CHECK(strcmp(tn_last_error(), "gather: index 7 is out of range for dim 1 of size 5 (at position [0, 2])") == 0);
    /* dim base 1 (as set by the Lua layer): dims and positions shift, the index value does not */
    tn_set_dim_base(1);
    CHECK(tn_gather(&out, a, 1, ix) == TN_ERR_INDEX);
    CHECK(strcmp(tn_last_error(), "gather: index 7 is out of range for dim 2 of size 5 (at position [1, 3])") == 0);
    CHECK(tn_gather(&out, a, 2, ix) == TN_ERR_ARG && strstr(tn_last_error(), "gather: dim 3 is out of range"));
    tn_set_dim_base(0);
    CHECK(tn_gather(&out, a, 2, ix) == TN_ERR_ARG && strstr(tn_last_error(), "gather: dim 2 is out of range"));
    seti(ix, 2, 0);
    seti(ix, 1, -1);
    CHECK(tn_gather(&out, a, 1, ix) == TN_ERR_INDEX);
    CHECK(strstr(tn_last_error(), "index -1") && strstr(tn_last_error(), "[0, 1]"));
    seti(ix, 1, 0);
    tn_tensor *fx = mk(2, SH(1, 3), TN_F32), *ix1 = mk_index(1, SH(3), TN_I64, 2), *ixw = mk_index(2, SH(3, 2), TN_I64, 2);
    CHECK(tn_gather(&out, a, 1, fx) == TN_ERR_DTYPE);
    CHECK(tn_gather(&out, a, 1, ix1) == TN_ERR_SHAPE);
    CHECK(tn_gather(&out, a, 1, ixw) == TN_ERR_SHAPE); /* index larger than a in dim 0 */
    CHECK(tn_gather(&out, a, 2, ix) == TN_ERR_ARG);
    CHECK(out == NULL);
    /* preallocated out of the wrong shape leaves out alone */
    tn_tensor *pre = mk(2, SH(1, 4), TN_F32), *o = pre;
    CHECK(tn_gather(&o, a, 1, ix) == TN_ERR_SHAPE);
    CHECK(o == pre);
    tn_tensor *objs[] = {a, ix, fx, ix1, ixw, pre};
    for (int i = 0; i < 6; i++) tn_tensor_free(objs[i]);
}

/* Reference scatter_add in the serial (row-major over index) order, rounding after each add. */
static tn_tensor *ref_scatter_add(const tn_tensor *out0, int dim, const tn_tensor *index, const tn_tensor *src) {
    tn_tensor *r = copy_of(out0);
    int64_t n = tn_tensor_numel(index), c[TN_MAX_DIMS];
    for (int64_t li = 0; li < n; li++) {
        coords(index, li, c);
        double v = get(src, linear(src, c));
        c[dim] = geti(index, li);
        int64_t lo = linear(r, c);
        if (tn_is_int_dtype(r->dtype)) seti(r, lo, geti(r, lo) + (int64_t)v);
        else if (r->dtype == TN_F32 || r->dtype == TN_F16 || r->dtype == TN_BF16) set(r, lo, (double)((float)get(r, lo) + (float)v));
        else set(r, lo, get(r, lo) + v);
    }
    return r;
}

static void expect_scatter_add(tn_tensor *out, int dim, tn_tensor *index, tn_tensor *src) { /* consumes all */
    tn_tensor *r = ref_scatter_add(out, dim, index, src);
    CHECK_OK(tn_scatter_add(out, dim, index, src));
    CHECK(same_values(out, r));
    tn_tensor *objs[] = {out, index, src, r};
    for (int i = 0; i < 4; i++) tn_tensor_free(objs[i]);
}

static void test_scatter_add(void) {
    static const int32_t dts[] = {TN_F32, TN_F64, TN_F16, TN_BF16, TN_I32, TN_I64};
    for (int d = 0; d < 6; d++)
        for (int dim = 0; dim < 3; dim++) {
            int64_t os[3] = {4, 5, 6}, is[3] = {3, 4, 5}, ss[3] = {3, 5, 5};
            is[dim] = 9; ss[dim] = 10; /* many duplicates along dim */
            expect_scatter_add(mk(3, os, dts[d]), dim, mk_index(3, is, dts[d] == TN_I32 ? TN_I32 : TN_I64, os[dim]),
                               mk(3, ss, dts[d]));
            expect_scatter_add(mk_strided(3, os, dts[d]), dim, mk_index(3, is, TN_I64, os[dim]), mk_strided(3, ss, dts[d]));
        }
    /* f16 accumulation is load -> f32 add -> store, per add: 2048 + 1 + 1 stays 2048 in f16 */
    tn_tensor *o = mk(1, SH(1), TN_F16), *ix = mk_index(1, SH(3), TN_I64, 1), *s = mk(1, SH(3), TN_F16);
    set(o, 0, 2048.0);
    set(s, 0, 1.0); set(s, 1, 1.0); set(s, 2, 4.0);
    CHECK_OK(tn_scatter_add(o, 0, ix, s));
    CHECK(get(o, 0) == 2052.0);
    tn_tensor_free(o); tn_tensor_free(ix); tn_tensor_free(s);
    /* large, threaded over dims other than dim: embedding-like gradient rows */
    expect_scatter_add(mk(2, SH(50, 300), TN_F32), 0, mk_index(2, SH(2000, 300), TN_I64, 50), mk(2, SH(2000, 300), TN_F32));
    expect_scatter_add(mk(2, SH(300, 50), TN_BF16), 1, mk_index(2, SH(300, 400), TN_I32, 50), mk(2, SH(300, 400), TN_BF16));
    expect_scatter_add(mk(2, SH(3, 4), TN_F32), 0, mk_index(2, SH(0, 4), TN_I64, 3), mk(2, SH(2, 4), TN_F32));
    /* errors: nothing is written */
    tn_tensor *out = mk(2, SH(3, 4), TN_F32), *keep = copy_of(out), *src = mk(2, SH(3, 4), TN_F32);
    tn_tensor *idx = mk_index(2, SH(3, 4), TN_I64, 3);
    seti(idx, 11, 3);
    CHECK(tn_scatter_add(out, 0, idx, src) == TN_ERR_INDEX);
    CHECK(strcmp(tn_last_error(), "scatter_add: index 3 is out of range for dim 0 of size 3 (at position [2, 3])") == 0);
    CHECK(same_values(out, keep));
    seti(idx, 11, 0);
    tn_tensor *srcd = mk(2, SH(3, 4), TN_F64), *small = mk(2, SH(2, 4), TN_F32), *row = mk(1, SH(4), TN_F32), *exp_ = NULL;
    CHECK(tn_scatter_add(out, 0, idx, srcd) == TN_ERR_DTYPE);
    CHECK(tn_scatter_add(out, 0, idx, small) == TN_ERR_SHAPE); /* index larger than src */
    CHECK_OK(tn_expand(&exp_, row, 2, SH(3, 4)));
    CHECK(tn_scatter_add(exp_, 0, idx, src) == TN_ERR_ARG);     /* expanded out */
    CHECK(strstr(tn_last_error(), "overlapping") != NULL);
    CHECK(tn_scatter_add(out, 2, idx, src) == TN_ERR_ARG);
    tn_tensor *objs[] = {out, keep, src, idx, srcd, small, row, exp_};
    for (int i = 0; i < 8; i++) tn_tensor_free(objs[i]);
}

/* ---- index_select / index_add -------------------------------------------------------------- */

static void expect_index_select(tn_tensor *a, int dim, tn_tensor *index) { /* consumes both */
    tn_tensor *out = NULL;
    CHECK_OK(tn_index_select(&out, a, dim, index));
    int ok = out != NULL && out->ndim == a->ndim && out->shape[dim] == tn_tensor_numel(index);
    int64_t n = ok ? tn_tensor_numel(out) : 0, c[TN_MAX_DIMS];
    for (int64_t li = 0; ok && li < n; li++) {
        coords(out, li, c);
        c[dim] = geti(index, c[dim]);
        ok = get(out, li) == get(a, linear(a, c));
    }
    CHECK(ok);
    tn_tensor_free(out);
    tn_tensor_free(a);
    tn_tensor_free(index);
}

static tn_tensor *gapped_index(int64_t n, int32_t dtype, int64_t limit) { /* stride-2 1-D index */
    tn_tensor *big = mk_index(1, SH(2 * n), dtype, limit), *v = NULL;
    CHECK_OK(tn_as_strided(&v, big, 1, SH(n), SH(2), big->offset));
    tn_tensor_free(big);
    return v;
}

static void test_index_select(void) {
    for (int dim = 0; dim < 3; dim++) {
        int64_t as[3] = {4, 5, 6};
        expect_index_select(mk(3, as, TN_F32), dim, mk_index(1, SH(9), TN_I64, as[dim]));
        expect_index_select(mk_strided(3, as, TN_F16), dim, mk_index(1, SH(3), TN_I32, as[dim]));
        expect_index_select(mk(3, as, TN_I64), dim, gapped_index(7, TN_I64, as[dim]));
        expect_index_select(mk(3, as, TN_U8), dim, mk_index(1, SH(0), TN_I64, as[dim]));
    }
    expect_index_select(mk(1, SH(5), TN_F32), 0, mk_index(0, SH(0), TN_I64, 5)); /* 0-d index */
    /* embedding lookup, large: contiguous rows copied whole, threaded */
    expect_index_select(mk(2, SH(1000, 64), TN_F32), 0, mk_index(1, SH(3000), TN_I64, 1000));
    expect_index_select(mk(2, SH(64, 1000), TN_BF16), 1, mk_index(1, SH(700), TN_I32, 1000));
    /* errors */
    tn_tensor *a = mk(2, SH(4, 5), TN_F32), *ix = mk_index(1, SH(6), TN_I64, 5), *out = NULL;
    seti(ix, 3, 7);
    CHECK(tn_index_select(&out, a, 1, ix) == TN_ERR_INDEX);
    CHECK(strcmp(tn_last_error(), "index_select: index 7 is out of range for dim 1 of size 5 (at position [3])") == 0);
    tn_set_dim_base(1);
    CHECK(tn_index_select(&out, a, 1, ix) == TN_ERR_INDEX);
    CHECK(strcmp(tn_last_error(), "index_select: index 7 is out of range for dim 2 of size 5 (at position [4])") == 0);
    tn_set_dim_base(0);
    CHECK(out == NULL);
    tn_tensor *ix2 = mk_index(2, SH(2, 2), TN_I64, 4), *s0 = mk(0, SH(0), TN_F32), *fx = mk(1, SH(2), TN_F32);
    CHECK(tn_index_select(&out, a, 0, ix2) == TN_ERR_SHAPE);
    CHECK(tn_index_select(&out, a, 0, fx) == TN_ERR_DTYPE);
    CHECK(tn_index_select(&out, s0, 0, fx) != TN_OK);
    CHECK(tn_index_select(&out, a, 2, ix) == TN_ERR_ARG);
    tn_tensor *objs[] = {a, ix, ix2, s0, fx};
    for (int i = 0; i < 5; i++) tn_tensor_free(objs[i]);
}

static tn_tensor *ref_index_add(const tn_tensor *out0, int dim, const tn_tensor *index, const tn_tensor *src) {
    tn_tensor *r = copy_of(out0);
    int64_t n = tn_tensor_numel(src), c[TN_MAX_DIMS];
    for (int64_t li = 0; li < n; li++) { /* row-major over src: per element, index order */
        coords(src, li, c);
        double v = get(src, li);
        c[dim] = geti(index, c[dim]);
        int64_t lo = linear(r, c);
        if (tn_is_int_dtype(r->dtype)) seti(r, lo, geti(r, lo) + (int64_t)v);
        else if (r->dtype == TN_F64) set(r, lo, get(r, lo) + v);
        else set(r, lo, (double)((float)get(r, lo) + (float)v));
    }
    return r;
}

static void expect_index_add(tn_tensor *out, int dim, tn_tensor *index, tn_tensor *src) { /* consumes all */
    tn_tensor *r = ref_index_add(out, dim, index, src);
    CHECK_OK(tn_index_add(out, dim, index, src));
    CHECK(same_values(out, r));
    tn_tensor *objs[] = {out, index, src, r};
    for (int i = 0; i < 4; i++) tn_tensor_free(objs[i]);
}

static void test_index_add(void) {
    static const int32_t dts[] = {TN_F32, TN_F64, TN_F16, TN_BF16, TN_I32, TN_I64, TN_U8};
    for (int d = 0; d < 7; d++)
        for (int dim = 0; dim < 3; dim++) {
            int64_t os[3] = {4, 5, 6}, ss[3] = {4, 5, 6};
            ss[dim] = 11; /* duplicates */
            expect_index_add(mk(3, os, dts[d]), dim, mk_index(1, SH(11), TN_I64, os[dim]), mk(3, ss, dts[d]));
            expect_index_add(mk_strided(3, os, dts[d]), dim, gapped_index(11, TN_I32, os[dim]), mk_strided(3, ss, dts[d]));
        }
    /* embedding gradient, large: threaded over columns, deterministic */
    expect_index_add(mk(2, SH(100, 256), TN_F32), 0, mk_index(1, SH(3000), TN_I64, 100), mk(2, SH(3000, 256), TN_F32));
    expect_index_add(mk(2, SH(100, 256), TN_F16), 0, mk_index(1, SH(3000), TN_I32, 100), mk(2, SH(3000, 256), TN_F16));
    expect_index_add(mk(1, SH(10), TN_F32), 0, mk_index(1, SH(50000), TN_I64, 10), mk(1, SH(50000), TN_F32));
    expect_index_add(mk(2, SH(3, 4), TN_F32), 1, mk_index(1, SH(0), TN_I64, 4), mk(2, SH(3, 0), TN_F32));
    /* errors: nothing is written */
    tn_tensor *out = mk(2, SH(3, 4), TN_F32), *keep = copy_of(out), *src = mk(2, SH(3, 2), TN_F32);
    tn_tensor *ix = mk_index(1, SH(2), TN_I64, 4);
    seti(ix, 1, -2);
    CHECK(tn_index_add(out, 1, ix, src) == TN_ERR_INDEX);
    CHECK(strcmp(tn_last_error(), "index_add: index -2 is out of range for dim 1 of size 4 (at position [1])") == 0);
    CHECK(same_values(out, keep));
    seti(ix, 1, 3);
    tn_tensor *src_bad = mk(2, SH(2, 2), TN_F32), *srcd = mk(2, SH(3, 2), TN_F64), *ix3 = mk_index(1, SH(3), TN_I64, 4);
    CHECK(tn_index_add(out, 1, ix, src_bad) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "[2, 2]") && strstr(tn_last_error(), "[3, 4]"));
    CHECK(tn_index_add(out, 1, ix, srcd) == TN_ERR_DTYPE);
    CHECK(tn_index_add(out, 1, ix3, src) == TN_ERR_SHAPE);
    CHECK(same_values(out, keep));
    /* in place with src a view of out: src is read before out changes */
    tn_tensor *o2 = mk(2, SH(4, 3), TN_F64), *view = NULL, *i0 = mk_index(1, SH(2), TN_I64, 1);
    seti(i0, 0, 0); seti(i0, 1, 1);
    CHECK_OK(tn_narrow(&view, o2, 0, 2, 2));
    tn_tensor *r = ref_index_add(o2, 0, i0, view);
    CHECK_OK(tn_index_add(o2, 0, i0, view));
    CHECK(same_values(o2, r));
    tn_tensor *objs[] = {out, keep, src, ix, src_bad, srcd, ix3, o2, view, i0, r};
    for (int i = 0; i < 11; i++) tn_tensor_free(objs[i]);
}

int main(void) {
    test_cat();
    test_gather();
    test_scatter_add();
    test_index_select();
    test_index_add();
    return check_report("test_index");
}
