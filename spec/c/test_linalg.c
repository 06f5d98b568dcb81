/*
 * test_linalg.c — tn_matmul, tn_bmm, tn_gemm against a naive triple loop in double: every
 * torch.matmul shape case (1-D dot, 1-D promoted on either side, 2-D, broadcast batches),
 * transposed and strided views, f32/f64/f16/bf16, zero-size dims, preallocated and aliased
 * outputs, alpha/beta, and the error messages.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common.h"
#include "internal.h"

#define SH(...) ((const int64_t[]){__VA_ARGS__})

static uint64_t rng_state = 88172645463325252ull;
static double rnd(void) { /* values k/64 in [-1, 1): exact in f16 and bf16 */
    return (double)((int64_t)(xorshift64(&rng_state) % 128) - 64) / 64.0;
}

/* Element li in row-major logical order (any strides). */
static double get(const tn_tensor *t, int64_t li) { return tn_load_f64(elem(t, li), t->dtype); }
static void set(tn_tensor *t, int64_t li, double v) { tn_store_f64(elem(t, li), t->dtype, v); }

static tn_tensor *mk(int nd, const int64_t *shape, int32_t dtype) {
    tn_tensor *t = NULL;
    CHECK_OK(tn_tensor_empty(&t, nd, shape, dtype, TN_CPU));
    int64_t n = tn_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) set(t, i, rnd());
    return t;
}
/* A (rows, cols) matrix stored in a wider buffer: rows padded to ld (a narrow view). */
static tn_tensor *padded(int64_t rows, int64_t cols, int64_t ld, int32_t dtype) {
    tn_tensor *big = mk(2, SH(rows, ld), dtype), *v = NULL;
    CHECK_OK(tn_narrow(&v, big, 1, 1, cols));
    tn_tensor_free(big);
    return v;
}
/* Every other column of a (rows, 2*cols) buffer: neither row- nor column-major. */
static tn_tensor *gapped(int nd, const int64_t *shape, int32_t dtype) {
    int64_t bs[TN_MAX_DIMS], st[TN_MAX_DIMS];
    for (int i = 0; i < nd; i++) bs[i] = shape[i];
    bs[nd - 1] *= 2;
    tn_tensor *big = mk(nd, bs, dtype), *v = NULL;
    for (int i = 0; i < nd; i++) st[i] = big->strides[i];
    st[nd - 1] = 2;
    CHECK_OK(tn_as_strided(&v, big, nd, shape, st, big->offset));
    tn_tensor_free(big);
    return v;
}

/* Reference torch.matmul in double; returns the expected values in out's row-major order
 * (out shape given); checks the shape. */
static double *ref_matmul(const tn_tensor *a, const tn_tensor *b, int32_t *ond, int64_t *oshape) {
    int na = a->ndim, nbd = b->ndim;
    int64_t n = na == 1 ? 1 : a->shape[na - 2], k = a->shape[na - 1];
    int64_t m = nbd == 1 ? 1 : b->shape[nbd - 1];
    int ba = na > 2 ? na - 2 : 0, bb = nbd > 2 ? nbd - 2 : 0, nb = ba > bb ? ba : bb;
    int64_t bsh[TN_MAX_DIMS], nbatch = 1;
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - ba), ib = i - (nb - bb);
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        bsh[i] = sa == 1 ? sb : sa;
        nbatch *= bsh[i];
    }
    *ond = 0;
    for (int i = 0; i < nb; i++) oshape[(*ond)++] = bsh[i];
    if (na > 1) oshape[(*ond)++] = n;
    if (nbd > 1) oshape[(*ond)++] = m;
    double *r = calloc((size_t)(nbatch * n * m) + 1, sizeof(double));
    size_t es_a = tn_dtype_size(a->dtype), es_b = tn_dtype_size(b->dtype);
    for (int64_t bi = 0; bi < nbatch; bi++) {
        int64_t ao = 0, bo = 0, rem = bi;
        for (int d = nb - 1; d >= 0; d--) {
            int64_t c = rem % bsh[d];
            rem /= bsh[d];
            int ia = d - (nb - ba), ib = d - (nb - bb);
            if (ia >= 0 && a->shape[ia] != 1) ao += c * a->strides[ia];
            if (ib >= 0 && b->shape[ib] != 1) bo += c * b->strides[ib];
        }
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < m; j++) {
                double s = 0;
                for (int64_t p = 0; p < k; p++) {
                    int64_t ai = ao + (na == 1 ? p * a->strides[0] : i * a->strides[na - 2] + p * a->strides[na - 1]);
                    int64_t bj = bo + (nbd == 1 ? p * b->strides[0] : p * b->strides[nbd - 2] + j * b->strides[nbd - 1]);
                    s += tn_load_f64(a->data + ai * (int64_t)es_a, a->dtype) *
                         tn_load_f64(b->data + bj * (int64_t)es_b, b->dtype);
                }
                r[(bi * n + i) * m + j] = s;
            }
    }
    return r;
}

static double tol_of(int32_t dtype, int64_t k) {
    switch (dtype) {
    case TN_F64: return 1e-12 * (double)(k + 1);
    case TN_F32: return 1e-5 * (double)(k + 1);
    case TN_F16: return 2e-3 * (double)(k + 1);
    default: return 1.6e-2 * (double)(k + 1);
    }
}

/* matmul(a, b) (out allocated, or *pre when given) vs the reference; consumes a and b. */
static void expect_matmul_pre(tn_tensor *a, tn_tensor *b, tn_tensor *pre) {
    int32_t ond;
    int64_t oshape[TN_MAX_DIMS];
    double *r = ref_matmul(a, b, &ond, oshape);
    tn_tensor *out = pre;
    tn_status s = tn_matmul(&out, a, b);
    CHECK(s == TN_OK);
    if (s == TN_OK) {
        CHECK(out->ndim == ond);
        int same = out->ndim == ond;
        for (int i = 0; same && i < ond; i++) same = out->shape[i] == oshape[i];
        CHECK(same);
        CHECK(out->dtype == a->dtype);
        int64_t k = a->shape[a->ndim - 1], nel = tn_tensor_numel(out), bad = 0;
        double tol = tol_of(a->dtype, k);
        for (int64_t i = 0; i < nel; i++)
            if (!(fabs(get(out, i) - r[i]) <= tol * (1 + fabs(r[i])))) {
                if (!bad) fprintf(stderr, "  mismatch at %lld: got %g expected %g\n", (long long)i, get(out, i), r[i]);
                bad++;
            }
        CHECK(bad == 0);
    }
    if (!pre) tn_tensor_free(out);
    free(r);
    tn_tensor_free(a);
    tn_tensor_free(b);
}
static void expect_matmul(tn_tensor *a, tn_tensor *b) { expect_matmul_pre(a, b, NULL); }

static const int32_t float_dtypes[] = {TN_F32, TN_F64, TN_F16, TN_BF16};

static void test_matmul_2d(void) {
    static const int64_t sizes[][3] = {{1, 1, 1}, {2, 3, 4}, {5, 1, 7}, {7, 5, 1}, {1, 6, 3},
                                       {3, 6, 1}, {17, 33, 9}, {64, 65, 66}, {130, 70, 90}};
    for (int d = 0; d < 4; d++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            int32_t dt = float_dtypes[d];
            int64_t n = sizes[s][0], k = sizes[s][1], m = sizes[s][2];
            expect_matmul(mk(2, SH(n, k), dt), mk(2, SH(k, m), dt));
            /* transposed views on either side and both: go to BLAS as Trans */
            expect_matmul(transposed(mk(2, SH(k, n), dt), 0, 1), mk(2, SH(k, m), dt));
            expect_matmul(mk(2, SH(n, k), dt), transposed(mk(2, SH(m, k), dt), 0, 1));
            expect_matmul(transposed(mk(2, SH(k, n), dt), 0, 1), transposed(mk(2, SH(m, k), dt), 0, 1));
            /* rows padded (ld > cols) and layouts that need a copy */
            expect_matmul(padded(n, k, k + 3, dt), padded(k, m, m + 5, dt));
            expect_matmul(gapped(2, SH(n, k), dt), gapped(2, SH(k, m), dt));
        }
}

static void test_matmul_vectors(void) {
    for (int d = 0; d < 4; d++) {
        int32_t dt = float_dtypes[d];
        /* 1-D . 1-D -> 0-d */
        tn_tensor *a = mk(1, SH(37), dt), *b = mk(1, SH(37), dt), *out = NULL;
        CHECK_OK(tn_matmul(&out, a, b));
        CHECK(out && out->ndim == 0);
        tn_tensor_free(out);
        expect_matmul(a, b);
        expect_matmul(gapped(1, SH(9), dt), gapped(1, SH(9), dt));
        expect_matmul(mk(1, SH(1), dt), mk(1, SH(1), dt));
        /* 1-D promoted on the left / right, then removed */
        expect_matmul(mk(1, SH(5), dt), mk(2, SH(5, 7), dt));
        expect_matmul(mk(1, SH(5), dt), transposed(mk(2, SH(7, 5), dt), 0, 1));
        expect_matmul(gapped(1, SH(5), dt), transposed(mk(2, SH(7, 5), dt), 0, 1));
        expect_matmul(mk(2, SH(6, 5), dt), mk(1, SH(5), dt));
        expect_matmul(transposed(mk(2, SH(5, 6), dt), 0, 1), gapped(1, SH(5), dt));
        expect_matmul(mk(1, SH(4), dt), mk(3, SH(3, 4, 2), dt));
        expect_matmul(mk(4, SH(2, 3, 2, 4), dt), mk(1, SH(4), dt));
        expect_matmul(mk(1, SH(1), dt), mk(2, SH(1, 3), dt));
    }
}

static void test_matmul_batched(void) {
    for (int d = 0; d < 4; d++) {
        int32_t dt = float_dtypes[d];
        /* broadcast batch dims, like torch: (2,1,3,4) x (5,4,2) -> (2,5,3,2) */
        expect_matmul(mk(4, SH(2, 1, 3, 4), dt), mk(3, SH(5, 4, 2), dt));
        expect_matmul(mk(2, SH(3, 4), dt), mk(3, SH(2, 4, 5), dt));
        expect_matmul(mk(3, SH(2, 3, 4), dt), mk(2, SH(4, 5), dt));     /* folded into one gemm */
        expect_matmul(mk(3, SH(6, 1, 4), dt), mk(2, SH(4, 5), dt));     /* folded, n = 1 */
        expect_matmul(transposed(mk(3, SH(3, 2, 4), dt), 0, 1), mk(2, SH(4, 5), dt)); /* not foldable */
        expect_matmul(transposed(mk(3, SH(2, 4, 3), dt), 1, 2), mk(2, SH(4, 5), dt)); /* Trans per batch */
        expect_matmul(mk(3, SH(2, 3, 4), dt), transposed(mk(3, SH(2, 5, 4), dt), 1, 2));
        expect_matmul(mk(3, SH(1, 3, 4), dt), mk(3, SH(4, 4, 2), dt));
        expect_matmul(gapped(3, SH(3, 3, 4), dt), mk(4, SH(2, 1, 4, 5), dt));
        /* b expanded over the batch with stride 0 */
        tn_tensor *b0 = mk(2, SH(4, 5), dt), *be = NULL;
        CHECK_OK(tn_expand(&be, b0, 3, SH(3, 4, 5)));
        tn_tensor_free(b0);
        expect_matmul(mk(3, SH(3, 2, 4), dt), be);
        /* many small products: the OpenMP batch loop */
        expect_matmul(mk(3, SH(64, 8, 9), dt), mk(3, SH(64, 9, 7), dt));
        expect_matmul(mk(4, SH(4, 16, 3, 5), dt), mk(2, SH(5, 1), dt));
    }
    /* large batched products (OpenBLAS threads) */
    expect_matmul(mk(3, SH(3, 100, 120), TN_F32), transposed(mk(3, SH(3, 90, 120), TN_F32), 1, 2));
    expect_matmul(mk(3, SH(2, 200, 150), TN_F64), mk(3, SH(2, 150, 110), TN_F64));
}

static void test_matmul_zero_size(void) {
    /* k = 0 gives zeros, also into a preallocated out full of NaN */
    tn_tensor *a = mk(2, SH(3, 0), TN_F32), *b = mk(2, SH(0, 4), TN_F32), *out = NULL;
    CHECK_OK(tn_tensor_empty(&out, 2, SH(3, 4), TN_F32, TN_CPU));
    for (int i = 0; i < 12; i++) set(out, i, NAN);
    CHECK_OK(tn_matmul(&out, a, b));
    int zeros = 1;
    for (int i = 0; i < 12; i++) zeros &= get(out, i) == 0.0;
    CHECK(zeros);
    tn_tensor_free(out);
    tn_tensor_free(a);
    tn_tensor_free(b);
    for (int d = 0; d < 4; d++) {
        int32_t dt = float_dtypes[d];
        expect_matmul(mk(2, SH(3, 0), dt), mk(2, SH(0, 4), dt));
        expect_matmul(mk(1, SH(0), dt), mk(1, SH(0), dt));
        expect_matmul(mk(2, SH(0, 3), dt), mk(2, SH(3, 4), dt));
        expect_matmul(mk(2, SH(2, 3), dt), mk(2, SH(3, 0), dt));
        expect_matmul(mk(3, SH(0, 2, 3), dt), mk(2, SH(3, 4), dt));
        expect_matmul(mk(3, SH(2, 2, 0), dt), mk(3, SH(2, 0, 4), dt));
    }
}

static void test_matmul_out(void) {
    /* preallocated contiguous out, and preallocated out filled with NaN (beta = 0 ignores it) */
    tn_tensor *pre = NULL;
    CHECK_OK(tn_tensor_empty(&pre, 2, SH(9, 11), TN_F32, TN_CPU));
    for (int i = 0; i < 99; i++) set(pre, i, NAN);
    expect_matmul_pre(mk(2, SH(9, 10), TN_F32), mk(2, SH(10, 11), TN_F32), pre);
    tn_tensor_free(pre);
    pre = NULL;
    CHECK_OK(tn_tensor_empty(&pre, 1, SH(9), TN_F32, TN_CPU));
    for (int i = 0; i < 9; i++) set(pre, i, NAN);
    expect_matmul_pre(mk(2, SH(9, 10), TN_F32), mk(1, SH(10), TN_F32), pre);
    tn_tensor_free(pre);
    /* preallocated out that is a transposed view */
    pre = transposed(mk(2, SH(11, 9), TN_F64), 0, 1);
    expect_matmul_pre(mk(2, SH(9, 10), TN_F64), mk(2, SH(10, 11), TN_F64), pre);
    tn_tensor_free(pre);
    pre = transposed(mk(2, SH(11, 9), TN_F16), 0, 1);
    expect_matmul_pre(mk(2, SH(9, 10), TN_F16), mk(2, SH(10, 11), TN_F16), pre);
    tn_tensor_free(pre);
    /* wrong preallocated shape */
    pre = mk(2, SH(9, 12), TN_F32);
    tn_tensor *a = mk(2, SH(9, 10), TN_F32), *b = mk(2, SH(10, 11), TN_F32), *o = pre;
    CHECK(tn_matmul(&o, a, b) == TN_ERR_SHAPE);
    CHECK(o == pre);
    tn_tensor_free(pre);
    /* out aliasing an input: a = a @ b */
    tn_tensor *sq = mk(2, SH(8, 8), TN_F32), *sb = mk(2, SH(8, 8), TN_F32), *r = NULL;
    CHECK_OK(tn_matmul(&r, sq, sb));
    o = sq;
    CHECK_OK(tn_matmul(&o, sq, sb));
    int same = 1;
    for (int i = 0; i < 64; i++) same &= get(sq, i) == get(r, i);
    CHECK(same);
    tn_tensor_free(sq);
    tn_tensor_free(sb);
    tn_tensor_free(r);
    tn_tensor_free(a);
    tn_tensor_free(b);
}

static void test_matmul_errors(void) {
    tn_tensor *a = mk(2, SH(2, 3), TN_F32), *b = mk(2, SH(4, 5), TN_F32), *out = NULL;
    CHECK(tn_matmul(&out, a, b) == TN_ERR_SHAPE);
    CHECK(strcmp(tn_last_error(), "matmul: shapes [2, 3] and [4, 5] cannot be multiplied (3 != 4), f32") == 0);
    CHECK(out == NULL);
    tn_tensor *bd = mk(2, SH(3, 5), TN_F64);
    CHECK(tn_matmul(&out, a, bd) == TN_ERR_DTYPE);
    CHECK(strstr(tn_last_error(), "f32") && strstr(tn_last_error(), "f64"));
    tn_tensor *ia = mk(2, SH(2, 3), TN_I32), *ib = mk(2, SH(3, 2), TN_I32);
    CHECK(tn_matmul(&out, ia, ib) == TN_ERR_DTYPE);
    CHECK(strstr(tn_last_error(), "i32") != NULL);
    tn_tensor *s = mk(0, SH(0), TN_F32);
    CHECK(tn_matmul(&out, s, a) == TN_ERR_SHAPE);
    tn_tensor *x = mk(3, SH(2, 2, 3), TN_F32), *y = mk(3, SH(3, 3, 4), TN_F32);
    CHECK(tn_matmul(&out, x, y) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "[2, 2, 3]") && strstr(tn_last_error(), "[3, 3, 4]") &&
          strstr(tn_last_error(), "broadcast"));
    CHECK(tn_matmul(NULL, a, a) == TN_ERR_ARG);
    CHECK(tn_matmul(&out, NULL, a) != TN_OK);
    /* devices */
    tn_tensor fake = *a;
    fake.device = TN_CUDA;
    CHECK(tn_matmul(&out, a, &fake) == TN_ERR_DEVICE);
    CHECK(out == NULL);
    tn_tensor *objs[] = {a, b, bd, ia, ib, s, x, y};
    for (int i = 0; i < 8; i++) tn_tensor_free(objs[i]);
}

static void test_bmm(void) {
    for (int d = 0; d < 4; d++) {
        int32_t dt = float_dtypes[d];
        tn_tensor *a = mk(3, SH(4, 3, 5), dt), *b = transposed(mk(3, SH(4, 6, 5), dt), 1, 2), *out = NULL;
        int32_t ond;
        int64_t osh[TN_MAX_DIMS];
        double *r = ref_matmul(a, b, &ond, osh);
        CHECK_OK(tn_bmm(&out, a, b));
        CHECK(out && out->ndim == 3 && out->shape[0] == 4 && out->shape[1] == 3 && out->shape[2] == 6);
        int bad = 0;
        for (int64_t i = 0; out && i < 72; i++) bad += !(fabs(get(out, i) - r[i]) <= tol_of(dt, 5) * (1 + fabs(r[i])));
        CHECK(bad == 0);
        free(r);
        tn_tensor_free(out);
        tn_tensor_free(a);
        tn_tensor_free(b);
    }
    /* batch transposed to the middle (non-foldable batch strides) */
    tn_tensor *a = transposed(mk(3, SH(3, 4, 5), TN_F32), 0, 1), *b = mk(3, SH(4, 5, 2), TN_F32), *out = NULL;
    int32_t ond;
    int64_t osh[TN_MAX_DIMS];
    double *r = ref_matmul(a, b, &ond, osh);
    CHECK_OK(tn_bmm(&out, a, b));
    int bad = 0;
    for (int64_t i = 0; out && i < 24; i++) bad += !(fabs(get(out, i) - r[i]) <= 1e-5);
    CHECK(bad == 0);
    free(r);
    tn_tensor_free(out);
    out = NULL;
    /* errors: not 3-D, batch differs (no broadcasting), inner differs */
    tn_tensor *c = mk(3, SH(1, 5, 2), TN_F32), *d2 = mk(2, SH(5, 2), TN_F32), *e = mk(3, SH(4, 6, 2), TN_F32);
    CHECK(tn_bmm(&out, a, c) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "bmm") && strstr(tn_last_error(), "[1, 5, 2]"));
    CHECK(tn_bmm(&out, a, d2) == TN_ERR_SHAPE);
    CHECK(tn_bmm(&out, a, e) == TN_ERR_SHAPE);
    CHECK(out == NULL);
    tn_tensor *z1 = mk(3, SH(0, 5, 3), TN_F32), *z2 = mk(3, SH(0, 3, 2), TN_F32);
    CHECK_OK(tn_bmm(&out, z1, z2));
    CHECK(out && out->shape[0] == 0 && out->shape[2] == 2);
    tn_tensor_free(out);
    tn_tensor *objs[] = {a, b, c, d2, e, z1, z2};
    for (int i = 0; i < 7; i++) tn_tensor_free(objs[i]);
}

/* gemm vs reference: out = alpha op(a) op(b) + beta out0. */
static void check_gemm(int32_t dt, int64_t n, int64_t k, int64_t m, int ta, int tb, double alpha,
                       double beta, int a_layout) {
    /* a holds op(a)^T when ta; layouts: 0 contiguous, 1 a transposed view, 2 gapped columns */
    const int64_t ar = ta ? k : n, ac = ta ? n : k;
    tn_tensor *a = a_layout == 0 ? mk(2, SH(ar, ac), dt)
                 : a_layout == 1 ? transposed(mk(2, SH(ac, ar), dt), 0, 1) : gapped(2, SH(ar, ac), dt);
    tn_tensor *b = tb ? mk(2, SH(m, k), dt) : mk(2, SH(k, m), dt);
    tn_tensor *out = mk(2, SH(n, m), dt);
    double *c0 = malloc(sizeof(double) * (size_t)(n * m + 1));
    for (int64_t i = 0; i < n * m; i++) c0[i] = get(out, i);
    if (beta == 0.0) for (int64_t i = 0; i < n * m; i++) set(out, i, NAN);
    CHECK_OK(tn_gemm(out, a, b, ta, tb, alpha, beta));
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < m; j++) {
            double s = 0;
            for (int64_t p = 0; p < k; p++)
                s += get(a, ta ? p * n + i : i * k + p) * get(b, tb ? j * k + p : p * m + j);
            double e = alpha * s + (beta == 0.0 ? 0.0 : beta * c0[i * m + j]);
            if (!(fabs(get(out, i * m + j) - e) <= tol_of(dt, k) * (1 + fabs(e)))) bad++;
        }
    CHECK(bad == 0);
    free(c0);
    tn_tensor_free(a);
    tn_tensor_free(b);
    tn_tensor_free(out);
}

static void test_gemm(void) {
    for (int d = 0; d < 4; d++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int lay = 0; lay < 3; lay++) {
                    check_gemm(float_dtypes[d], 7, 5, 6, ta, tb, 1.0, 0.0, lay);
                    check_gemm(float_dtypes[d], 7, 5, 6, ta, tb, 0.5, 2.0, lay);
                    check_gemm(float_dtypes[d], 1, 5, 6, ta, tb, -1.5, 1.0, lay);
                    check_gemm(float_dtypes[d], 7, 5, 1, ta, tb, 2.0, -0.5, lay);
                    check_gemm(float_dtypes[d], 1, 9, 1, ta, tb, 2.0, 0.25, lay);
                    check_gemm(float_dtypes[d], 4, 0, 3, ta, tb, 1.0, 0.5, lay); /* k = 0: out *= beta */
                    check_gemm(float_dtypes[d], 4, 0, 3, ta, tb, 1.0, 0.0, lay);
                }
    check_gemm(TN_F32, 150, 130, 170, 1, 0, 1.0, 1.0, 0);
    /* out aliasing a: out = out @ b + out */
    tn_tensor *o = mk(2, SH(6, 6), TN_F64), *b = mk(2, SH(6, 6), TN_F64), *ref = NULL, *oc = NULL;
    CHECK_OK(tn_matmul(&ref, o, b));
    CHECK_OK(tn_contiguous(&oc, o));
    double o0[36];
    for (int i = 0; i < 36; i++) o0[i] = get(o, i);
    CHECK_OK(tn_gemm(o, o, b, 0, 0, 1.0, 1.0));
    int bad = 0;
    for (int i = 0; i < 36; i++) bad += fabs(get(o, i) - (get(ref, i) + o0[i])) > 1e-12;
    CHECK(bad == 0);
    /* errors */
    tn_tensor *a = mk(2, SH(6, 5), TN_F64), *of = mk(2, SH(6, 6), TN_F32), *ot = transposed(mk(2, SH(6, 6), TN_F64), 0, 1);
    CHECK(tn_gemm(o, a, b, 0, 0, 1.0, 0.0) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "gemm") && strstr(tn_last_error(), "[6, 5]"));
    CHECK(tn_gemm(of, o, b, 0, 0, 1.0, 0.0) == TN_ERR_DTYPE);
    CHECK(tn_gemm(ot, o, b, 0, 0, 1.0, 0.0) == TN_ERR_ARG);
    CHECK(tn_gemm(o, a, b, 1, 0, 1.0, 0.0) == TN_ERR_SHAPE);
    tn_tensor *objs[] = {o, b, ref, oc, a, of, ot};
    for (int i = 0; i < 7; i++) tn_tensor_free(objs[i]);
}

int main(void) {
    test_matmul_2d();
    test_matmul_vectors();
    test_matmul_batched();
    test_matmul_zero_size();
    test_matmul_out();
    test_matmul_errors();
    test_bmm();
    test_gemm();
    return check_report("test_linalg");
}
