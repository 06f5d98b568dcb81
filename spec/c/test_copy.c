/*
 * test_copy.c — tn_copy, tn_fill, tn_to_dtype, tn_arange: conversions (saturation, f16/bf16
 * rounding, exact i64), broadcasting, strided and overlapping operands, parallel sizes, the tiled
 * transposes (every element size and the conversions, against a gather + flat copy).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static void set_f32(tn_tensor *t, const float *v) { memcpy(t->data, v, (size_t)tn_tensor_numel(t) * 4); }

static void test_saturation(void) {
    int64_t sh[1] = {6};
    tn_tensor *f = mk(TN_F32, 1, sh), *u = mk(TN_U8, 1, sh), *i = mk(TN_I32, 1, sh);
    float v[6] = {300.7f, -5.0f, NAN, 3.9f, -3.9f, 3e9f};
    set_f32(f, v);
    CHECK_OK(tn_copy(u, f));
    CHECK(at(u, 0) == 255 && at(u, 1) == 0 && at(u, 2) == 0 && at(u, 3) == 3 && at(u, 4) == 0 && at(u, 5) == 255);
    CHECK_OK(tn_copy(i, f));
    CHECK(at(i, 0) == 300 && at(i, 2) == 0 && at(i, 3) == 3 && at(i, 4) == -3 && at(i, 5) == 2147483647.0);
    tn_tensor_free(f); tn_tensor_free(u); tn_tensor_free(i);
}

static void test_int_exact(void) {
    int64_t sh[2] = {2, 2};
    tn_tensor *a = mk(TN_I64, 2, sh), *b = mk(TN_I64, 2, sh), *c = mk(TN_I32, 2, sh), *u = mk(TN_U8, 2, sh);
    int64_t *p = (int64_t *)a->data;
    p[0] = ((int64_t)1 << 62) + 1; p[1] = -(((int64_t)1 << 53) + 1); p[2] = 300; p[3] = -7;
    tn_tensor *at_ = NULL;
    CHECK_OK(tn_transpose(&at_, a, 0, 1)); /* strided path */
    CHECK_OK(tn_copy(b, at_));
    int64_t *q = (int64_t *)b->data;
    CHECK(q[0] == p[0] && q[1] == p[2] && q[2] == p[1] && q[3] == p[3]);
    CHECK_OK(tn_copy(c, a));
    int32_t *r = (int32_t *)c->data;
    CHECK(r[0] == INT32_MAX && r[1] == INT32_MIN && r[2] == 300 && r[3] == -7);
    CHECK_OK(tn_copy(u, at_));
    CHECK(at(u, 0) == 255 && at(u, 1) == 255 && at(u, 2) == 0 && at(u, 3) == 0);
    tn_tensor_free(a); tn_tensor_free(b); tn_tensor_free(c); tn_tensor_free(u); tn_tensor_free(at_);
}

static void test_half_rounding(void) {
    int64_t sh[1] = {6};
    tn_tensor *f = mk(TN_F32, 1, sh), *h = mk(TN_F16, 1, sh), *bf = mk(TN_BF16, 1, sh), *back = mk(TN_F32, 1, sh);
    float v[6] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65520.0f, 65519.0f, 1e-8f, NAN};
    set_f32(f, v);
    CHECK_OK(tn_copy(h, f));
    CHECK_OK(tn_copy(back, h));
    CHECK(at(back, 0) == 1.0);                  /* tie to even: down */
    CHECK(at(back, 1) == 1.0 + 2 * 0x1p-10);    /* tie to even: up */
    CHECK(isinf(at(back, 2)) && at(back, 3) == 65504.0);
    CHECK(at(back, 4) == 0.0 && isnan(at(back, 5)));
    CHECK_OK(tn_copy(bf, f));
    CHECK(at(bf, 0) == 1.0 && isnan(at(bf, 5)));
    float w[6] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1, 2, 3, 4}; /* bf16 ties */
    set_f32(f, w);
    CHECK_OK(tn_copy(bf, f));
    CHECK(at(bf, 0) == 1.0 && at(bf, 1) == 1.0 + 0x1p-6);
    /* f64 -> f16, u8 -> f16 via the generic path */
    tn_tensor *d = NULL;
    CHECK_OK(tn_to_dtype(&d, f, TN_F64));
    CHECK(d->dtype == TN_F64 && at(d, 1) == 1.0 + 3 * 0x1p-8);
    CHECK_OK(tn_copy(h, d));
    CHECK(at(h, 5) == 4.0);
    tn_tensor_free(f); tn_tensor_free(h); tn_tensor_free(bf); tn_tensor_free(back); tn_tensor_free(d);
}

static void test_broadcast_strided_overlap(void) {
    int64_t s3[1] = {3}, s23[2] = {2, 3}, s32[2] = {3, 2};
    tn_tensor *r = mk(TN_F32, 1, s3), *m = mk(TN_F64, 2, s23), *t = mk(TN_F32, 2, s32), *tv = NULL;
    float v[3] = {1, 2, 3};
    set_f32(r, v);
    CHECK_OK(tn_copy(m, r));
    for (int i = 0; i < 6; i++) CHECK(at(m, i) == v[i % 3]);
    CHECK_OK(tn_transpose(&tv, t, 0, 1)); /* (2, 3) view of a (3, 2) tensor */
    CHECK_OK(tn_copy(tv, m));
    for (int i = 0; i < 6; i++) CHECK(at(tv, i) == v[i % 3]);
    CHECK(at(t, 0) == 1 && at(t, 1) == 1 && at(t, 2) == 2);
    /* bad broadcast */
    int64_t s4[1] = {4};
    tn_tensor *q = mk(TN_F32, 1, s4);
    CHECK(tn_copy(m, q) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "copy") && strstr(tn_last_error(), "[4]") && strstr(tn_last_error(), "[2, 3]"));
    /* overlapping views of one storage: x[1:] = x[:-1] */
    int64_t s10[1] = {10}, s9[1] = {9}, st1[1] = {1};
    tn_tensor *x = mk(TN_F32, 1, s10), *lo = NULL, *hi = NULL;
    for (int i = 0; i < 10; i++) ((float *)x->data)[i] = (float)i;
    CHECK_OK(tn_as_strided(&lo, x, 1, s9, st1, 0));
    CHECK_OK(tn_as_strided(&hi, x, 1, s9, st1, 1));
    CHECK_OK(tn_copy(hi, lo));
    for (int i = 1; i < 10; i++) CHECK(at(x, i) == i - 1);
    CHECK_OK(tn_copy(x, x)); /* self copy is a no-op */
    tn_tensor_free(r); tn_tensor_free(m); tn_tensor_free(t); tn_tensor_free(tv); tn_tensor_free(q);
    tn_tensor_free(x); tn_tensor_free(lo); tn_tensor_free(hi);
}

static void test_fill(void) {
    int64_t sh[2] = {3, 4};
    for (int32_t dt = 0; dt < TN_NUM_DTYPES; dt++) {
        tn_tensor *t = mk(dt, 2, sh);
        CHECK_OK(tn_fill(t, 7));
        int ok = 1;
        for (int i = 0; i < 12; i++) ok &= at(t, i) == 7;
        CHECK(ok);
        CHECK_OK(tn_fill(t, 0));
        CHECK(at(t, 11) == 0);
        tn_tensor_free(t);
    }
    tn_tensor *l = mk(TN_I64, 2, sh), *col = NULL;
    CHECK_OK(tn_fill(l, 9007199254740992.0)); /* 2^53 */
    CHECK(((int64_t *)l->data)[5] == ((int64_t)1 << 53));
    CHECK_OK(tn_fill(l, -3));
    int64_t s1[1] = {3}, st[1] = {4};
    CHECK_OK(tn_as_strided(&col, l, 1, s1, st, 1)); /* column 1 */
    CHECK_OK(tn_fill(col, 5));
    int64_t *p = (int64_t *)l->data;
    CHECK(p[1] == 5 && p[5] == 5 && p[9] == 5 && p[0] == -3 && p[2] == -3);
    tn_tensor *u = mk(TN_U8, 2, sh);
    CHECK_OK(tn_fill(u, 300.5));
    CHECK(at(u, 0) == 255);
    tn_tensor_free(l); tn_tensor_free(col); tn_tensor_free(u);
}

static void test_to_dtype(void) {
    int64_t sh[2] = {2, 3};
    tn_tensor *f = mk(TN_F32, 2, sh), *same = NULL, *i = NULL, *tr = NULL, *c = NULL;
    float v[6] = {1.5f, -2.5f, 3, 4, 5, 6};
    set_f32(f, v);
    CHECK_OK(tn_to_dtype(&same, f, TN_F32));
    CHECK(same == f && f->refcount == 2);
    CHECK_OK(tn_to_dtype(&i, f, TN_I32));
    CHECK(i->dtype == TN_I32 && at(i, 0) == 1 && at(i, 1) == -2);
    CHECK_OK(tn_transpose(&tr, f, 0, 1));
    CHECK_OK(tn_to_dtype(&c, tr, TN_F32)); /* non-contiguous: a contiguous copy */
    CHECK(c != tr && tn_tensor_is_contiguous(c) && at(c, 1) == 4 && at(c, 2) == -2.5);
    CHECK(tn_to_dtype(&c, f, 99) == TN_ERR_DTYPE);
    tn_tensor_free(same); tn_tensor_free(f); tn_tensor_free(i); tn_tensor_free(tr); tn_tensor_free(c);
}

static void test_arange(void) {
    tn_tensor *t = NULL;
    CHECK_OK(tn_arange(&t, 0, 5, 1, TN_I64, TN_CPU));
    CHECK(t->ndim == 1 && t->shape[0] == 5 && at(t, 4) == 4);
    tn_tensor_free(t); t = NULL;
    CHECK_OK(tn_arange(&t, 0, 1, 0.3, TN_F32, TN_CPU));
    CHECK(t->shape[0] == 4);
    CHECK_NEAR(at(t, 3), 0.9, 1e-6);
    tn_tensor_free(t); t = NULL;
    CHECK_OK(tn_arange(&t, 5, 0, -2, TN_I32, TN_CPU));
    CHECK(t->shape[0] == 3 && at(t, 0) == 5 && at(t, 1) == 3 && at(t, 2) == 1);
    tn_tensor_free(t); t = NULL;
    CHECK_OK(tn_arange(&t, 3, 3, 1, TN_F64, TN_CPU));
    CHECK(t->shape[0] == 0);
    tn_tensor_free(t); t = NULL;
    CHECK_OK(tn_arange(&t, 9007199254740992.0, 9007199254740992.0 + 4, 1, TN_I64, TN_CPU));
    CHECK(t->shape[0] == 4 && ((int64_t *)t->data)[1] == ((int64_t)1 << 53) + 1 &&
          ((int64_t *)t->data)[3] == ((int64_t)1 << 53) + 3);
    tn_tensor_free(t); t = NULL;
    CHECK(tn_arange(&t, 0, 5, 0, TN_F32, TN_CPU) == TN_ERR_ARG && t == NULL);
    CHECK(tn_arange(&t, 0, 5, -1, TN_F32, TN_CPU) == TN_ERR_ARG && strstr(tn_last_error(), "arange"));
    CHECK(tn_arange(&t, 0, 5, 1, 42, TN_CPU) == TN_ERR_DTYPE);
    /* large: parallel, index-exact */
    CHECK_OK(tn_arange(&t, 0, 1000003, 1, TN_F64, TN_CPU));
    int ok = 1;
    for (int64_t i = 0; i < 1000003; i++) ok &= ((double *)t->data)[i] == (double)i;
    CHECK(ok);
    tn_tensor_free(t);
}

static void test_large(void) {
    int64_t sh[2] = {1000, 1001};
    tn_tensor *f = mk(TN_F32, 2, sh), *h = mk(TN_F16, 2, sh), *f2 = mk(TN_F32, 2, sh), *tr = NULL, *t2 = NULL;
    float *p = (float *)f->data;
    for (int64_t i = 0; i < 1000 * 1001; i++) p[i] = (float)(i % 2000) * 0.5f;
    CHECK_OK(tn_copy(h, f));
    CHECK_OK(tn_copy(f2, h));
    CHECK(memcmp(f->data, f2->data, 4 * 1000 * 1001) == 0); /* x.5 up to 999.5 exact in f16 */
    CHECK_OK(tn_transpose(&tr, f, 0, 1));
    int64_t s2[2] = {1001, 1000};
    tn_tensor *d = mk(TN_F64, 2, s2);
    CHECK_OK(tn_copy(d, tr));
    int ok = 1;
    for (int64_t i = 0; i < 1001 && ok; i++)
        for (int64_t j = 0; j < 1000; j++) ok &= ((double *)d->data)[i * 1000 + j] == p[j * 1001 + i];
    CHECK(ok);
    CHECK_OK(tn_to_dtype(&t2, f, TN_F32));
    CHECK(t2 == f);
    tn_tensor_free(t2);
    tn_tensor_free(f); tn_tensor_free(h); tn_tensor_free(f2); tn_tensor_free(tr); tn_tensor_free(d);
}

/* ---- tiled transposes: every element size, conversions, tile edges, views, 1 and 2 threads ---- */

/* dst = copy of view (tiled when it is a transpose), compared byte for byte with a reference
 * built without it: view's elements gathered byte by byte into a contiguous tensor, then
 * converted by the flat contiguous path. */
static int tiled_matches(int32_t dst_dtype, const tn_tensor *view) {
    const size_t es = tn_dtype_size(view->dtype);
    const int64_t n = tn_tensor_numel(view);
    tn_tensor *dst = mk(dst_dtype, view->ndim, view->shape), *g = mk(view->dtype, view->ndim, view->shape),
              *ref = mk(dst_dtype, view->ndim, view->shape);
    for (int64_t i = 0; i < n; i++) memcpy(g->data + i * (int64_t)es, elem(view, i), es);
    CHECK_OK(tn_copy(dst, view));
    CHECK_OK(tn_copy(ref, g));
    int ok = memcmp(dst->data, ref->data, (size_t)n * tn_dtype_size(dst_dtype)) == 0;
    tn_tensor_free(dst); tn_tensor_free(g); tn_tensor_free(ref);
    return ok;
}

/* A contiguous tensor of random bytes (every bit pattern: NaNs, infinities, denormals). */
static tn_tensor *random_bytes(int32_t dtype, int32_t ndim, const int64_t *shape, uint64_t *seed) {
    tn_tensor *t = mk(dtype, ndim, shape);
    const size_t nb = (size_t)tn_tensor_numel(t) * tn_dtype_size(dtype);
    for (size_t i = 0; i < nb; i++) ((uint8_t *)t->data)[i] = (uint8_t)(xorshift64(seed) >> 24);
    return t;
}

/* The transposed views of one src dtype: 2-d at and around the tile sizes (64 x 256, 16 x 16
 * and 8 x 8 sub-blocks), a column slice, (B, T, C) -> (B, C, T) and (T, B, C) -> (B, C, T), a
 * broadcast row; each copied to dst_dtype. big adds a 1500 x 1450 transpose, where one dtype
 * splits across threads (2 MiB and up). Returns the number of mismatching views. */
static int tiled_cases(int32_t dst_dtype, int32_t src_dtype, int big, uint64_t *seed) {
    static const int64_t sizes[][2] = {{8, 8},     {9, 15},   {16, 17}, {63, 65},  {64, 256},  {65, 257},
                                       {129, 300}, {300, 40}, {7, 700}, {700, 7},  {255, 513}, {600, 700},
                                       {1500, 1450}};
    const size_t nsizes = sizeof sizes / sizeof sizes[0] - (big ? 0 : 1);
    int bad = 0;
    for (size_t k = 0; k < nsizes; k++) {
        const int64_t r = sizes[k][0], c = sizes[k][1];
        int64_t base_shape[2] = {c, r}, wide[2] = {c, r + 5};
        tn_tensor *t = transposed(random_bytes(src_dtype, 2, base_shape, seed), 0, 1); /* (r, c) */
        bad += !tiled_matches(dst_dtype, t);
        tn_tensor *w = random_bytes(src_dtype, 2, wide, seed), *nw = NULL;
        CHECK_OK(tn_narrow(&nw, w, 1, 3, r));
        tn_tensor_free(w);
        nw = transposed(nw, 0, 1); /* (r, c), rows r + 5 apart in the storage */
        bad += !tiled_matches(dst_dtype, nw);
        tn_tensor_free(t); tn_tensor_free(nw);
    }
    int64_t btc[3] = {3, 70, 40}, tbc[3] = {70, 3, 40}, row[2] = {1, 300}, rows[2] = {90, 300};
    tn_tensor *x = transposed(random_bytes(src_dtype, 3, btc, seed), 1, 2); /* (3, 40, 70) */
    bad += !tiled_matches(dst_dtype, x);
    tn_tensor *y = random_bytes(src_dtype, 3, tbc, seed), *py = NULL, *e = NULL;
    const int32_t perm[3] = {1, 2, 0};
    CHECK_OK(tn_permute(&py, y, perm)); /* (3, 40, 70), strides (40, 1, 120) */
    bad += !tiled_matches(dst_dtype, py);
    tn_tensor *z = random_bytes(src_dtype, 2, row, seed);
    CHECK_OK(tn_expand(&e, z, 2, rows));
    e = transposed(e, 0, 1); /* (300, 90), strides (1, 0) */
    bad += !tiled_matches(dst_dtype, e);
    tn_tensor_free(x); tn_tensor_free(y); tn_tensor_free(py); tn_tensor_free(z); tn_tensor_free(e);
    return bad;
}

static void test_tiled_transpose(void) {
    static const int32_t conv[][2] = {{TN_F32, TN_F16}, {TN_F16, TN_F32}, {TN_F32, TN_BF16}, {TN_BF16, TN_F32},
                                      {TN_F32, TN_F64}, {TN_F64, TN_F32}, {TN_F32, TN_I32}, {TN_F32, TN_U8},
                                      {TN_I64, TN_I32}, {TN_I32, TN_I64}, {TN_U8, TN_F64}, {TN_F16, TN_F64},
                                      {TN_I32, TN_F32}, {TN_I64, TN_U8}};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int threads = 1; threads <= 2; threads++) {
        tn_set_num_threads(threads);
        for (int32_t dt = 0; dt < TN_NUM_DTYPES; dt++) CHECK(tiled_cases(dt, dt, 1, &seed) == 0);
        for (size_t k = 0; k < sizeof conv / sizeof conv[0]; k++)
            CHECK(tiled_cases(conv[k][0], conv[k][1], 0, &seed) == 0);
    }
    tn_set_num_threads(0);
}

int main(void) {
    test_saturation();
    test_int_exact();
    test_half_rounding();
    test_broadcast_strided_overlap();
    test_fill();
    test_to_dtype();
    test_arange();
    test_large();
    test_tiled_transpose();
    return check_report("test_copy");
}
