/*
 * test_elementwise.c — tn_binary, tn_binary_scalar, tn_unary, tn_clamp, tn_where,
 * tn_masked_fill: every op and dtype against a double reference, broadcasting, strided
 * inputs equal to contiguous ones, in-place, NaN propagation, errors, parallel sizes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "kernels/elementwise.h"

static tn_tensor *from(int32_t dtype, int32_t ndim, const int64_t *shape, const double *v) {
    tn_tensor *t = mk(dtype, ndim, shape);
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) put(t, i, v[i]);
    return t;
}

static double ref_bin(int op, double x, double y) {
    switch (op) {
    case TN_ADD: return x + y;
    case TN_SUB: return x - y;
    case TN_MUL: return x * y;
    case TN_DIV: return x / y;
    case TN_POW: return pow(x, y);
    case TN_MAXIMUM: return isnan(x) || isnan(y) ? NAN : fmax(x, y);
    case TN_MINIMUM: return isnan(x) || isnan(y) ? NAN : fmin(x, y);
    case TN_ATAN2: return atan2(x, y);
    case TN_EQ: return x == y;
    case TN_NE: return x != y;
    case TN_LT: return x < y;
    case TN_LE: return x <= y;
    case TN_GT: return x > y;
    default: return x >= y;
    }
}
static double ref_un(int op, double x) {
    switch (op) {
    case TN_NEG: return -x;
    case TN_ABS: return fabs(x);
    case TN_EXP: return exp(x);
    case TN_LOG: return log(x);
    case TN_SQRT: return sqrt(x);
    case TN_RSQRT: return 1 / sqrt(x);
    case TN_TANH: return tanh(x);
    case TN_SIGMOID: return 1 / (1 + exp(-x));
    case TN_RELU: return x < 0 ? 0 : x;
    case TN_SIGN: return x > 0 ? 1 : x < 0 ? -1 : x;
    case TN_LOG1P: return log1p(x);
    case TN_EXPM1: return expm1(x);
    case TN_SIN: return sin(x);
    case TN_COS: return cos(x);
    case TN_RECIPROCAL: return 1 / x;
    case TN_SQUARE: return x * x;
    case TN_FLOOR: return floor(x);
    case TN_CEIL: return ceil(x);
    case TN_ROUND: return nearbyint(x);
    default: return x == 0;
    }
}

static const double X[8] = {0.5, -1.25, 2.5, 3.0, -0.5, 1.5, 7.0, 0.25};
static const double Y[8] = {2.0, 0.5, -1.5, 3.0, 4.0, -2.5, 0.125, 1.0};

static void test_binary_float(void) {
    int64_t sh[2] = {2, 4};
    int32_t dts[4] = {TN_F32, TN_F64, TN_F16, TN_BF16};
    double tol[4] = {1e-6, 1e-14, 2e-3, 1.6e-2};
    for (int k = 0; k < 4; k++) {
        tn_tensor *a = from(dts[k], 2, sh, X), *b = from(dts[k], 2, sh, Y);
        for (int op = 0; op < TN_NUM_BINOPS; op++) {
            tn_tensor *o = NULL;
            CHECK_OK(tn_binary(&o, a, b, op));
            int cmp = op >= TN_EQ;
            CHECK(o->dtype == (cmp ? TN_U8 : dts[k]) && o->ndim == 2 && o->shape[1] == 4);
            int ok = 1;
            for (int i = 0; i < 8; i++) ok &= close_to(at(o, i), ref_bin(op, at(a, i), at(b, i)), tol[k]);
            if (!ok) fprintf(stderr, "  binary op %d dtype %s\n", op, tn_dtype_name(dts[k]));
            CHECK(ok);
            tn_tensor_free(o);
        }
        tn_tensor_free(a);
        tn_tensor_free(b);
    }
}

static void test_binary_int(void) {
    int64_t sh[1] = {6};
    double xa[6] = {7, -7, 100, 0, 5, -3}, xb[6] = {2, 2, -7, 3, 5, 1};
    int32_t dts[3] = {TN_I32, TN_I64, TN_U8};
    for (int k = 0; k < 3; k++) {
        double xu[6] = {7, 200, 100, 0, 5, 3}, yu[6] = {2, 100, 7, 3, 5, 1};
        const double *va = dts[k] == TN_U8 ? xu : xa, *vb = dts[k] == TN_U8 ? yu : xb;
        tn_tensor *a = from(dts[k], 1, sh, va), *b = from(dts[k], 1, sh, vb);
        int ops[] = {TN_ADD, TN_SUB, TN_MUL, TN_DIV, TN_MAXIMUM, TN_MINIMUM, TN_EQ, TN_NE, TN_LT, TN_LE, TN_GT, TN_GE};
        for (size_t j = 0; j < sizeof ops / sizeof ops[0]; j++) {
            int op = ops[j];
            tn_tensor *o = NULL;
            CHECK_OK(tn_binary(&o, a, b, op));
            int ok = 1;
            for (int i = 0; i < 6; i++) {
                double want = ref_bin(op, va[i], vb[i]);
                if (op == TN_DIV) want = trunc(want);
                if (dts[k] == TN_U8 && op < TN_EQ) want = (double)(uint8_t)(int)want;
                ok &= at(o, i) == want;
            }
            if (!ok) fprintf(stderr, "  int op %d dtype %s\n", op, tn_dtype_name(dts[k]));
            CHECK(ok);
            tn_tensor_free(o);
        }
        tn_tensor *o = NULL;
        CHECK(tn_binary(&o, a, b, TN_POW) == TN_ERR_DTYPE && o == NULL);
        CHECK(strstr(tn_last_error(), "pow") != NULL);
        put(b, 3, 0);
        CHECK(tn_binary(&o, a, b, TN_DIV) == TN_ERR_ARG && o == NULL);
        CHECK(strstr(tn_last_error(), "div") && strstr(tn_last_error(), "[6]") && strstr(tn_last_error(), tn_dtype_name(dts[k])));
        tn_tensor_free(a);
        tn_tensor_free(b);
    }
    /* wrap-around and INT_MIN / -1 without UB */
    int64_t s2[1] = {2};
    double w[2] = {2147483647.0, -2147483648.0}, m1[2] = {1, -1};
    tn_tensor *a = from(TN_I32, 1, s2, w), *b = from(TN_I32, 1, s2, m1), *o = NULL, *o2 = NULL;
    CHECK_OK(tn_binary(&o, a, b, TN_ADD));
    CHECK(at(o, 0) == -2147483648.0);
    CHECK_OK(tn_binary(&o2, a, b, TN_DIV));
    CHECK(at(o2, 1) == -2147483648.0);
    tn_tensor_free(a); tn_tensor_free(b); tn_tensor_free(o); tn_tensor_free(o2);
}

static void test_broadcast_strided_inplace(void) {
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s21[2] = {2, 1}, s13[2] = {1, 3}, s32[2] = {3, 2};
    double v[6] = {1, 2, 3, 4, 5, 6}, r[3] = {10, 20, 30}, c[2] = {100, 200};
    tn_tensor *a = from(TN_F32, 2, s23, v), *row = from(TN_F32, 1, s3, r), *col = from(TN_F32, 2, s21, c);
    tn_tensor *o = NULL, *o2 = NULL;
    CHECK_OK(tn_binary(&o, a, row, TN_ADD));
    for (int i = 0; i < 6; i++) CHECK(at(o, i) == v[i] + r[i % 3]);
    CHECK_OK(tn_binary(&o2, col, row, TN_MUL)); /* (2,1) x (3) -> (2,3) */
    CHECK(o2->ndim == 2 && o2->shape[0] == 2 && o2->shape[1] == 3);
    for (int i = 0; i < 6; i++) CHECK(at(o2, i) == c[i / 3] * r[i % 3]);
    tn_tensor *rr = from(TN_F32, 2, s13, r), *o3 = NULL;
    CHECK_OK(tn_binary(&o3, rr, col, TN_SUB)); /* (1,3) - (2,1) */
    for (int i = 0; i < 6; i++) CHECK(at(o3, i) == r[i % 3] - c[i / 3]);
    /* transposed input equals its contiguous copy */
    tn_tensor *t = from(TN_F64, 2, s32, v), *tt = NULL, *tc = NULL, *ra = NULL, *rb = NULL, *row64 = from(TN_F64, 1, s3, r);
    CHECK_OK(tn_transpose(&tt, t, 0, 1));
    CHECK_OK(tn_contiguous(&tc, tt));
    CHECK_OK(tn_binary(&ra, tt, row64, TN_DIV));
    CHECK_OK(tn_binary(&rb, tc, row64, TN_DIV));
    CHECK(memcmp(ra->data, rb->data, 48) == 0);
    tn_tensor *ua = NULL, *ub = NULL;
    CHECK_OK(tn_unary(&ua, tt, TN_EXP));
    CHECK_OK(tn_unary(&ub, tc, TN_EXP));
    CHECK(memcmp(ua->data, ub->data, 48) == 0);
    /* writing into a transposed out */
    tn_tensor *dst = mk(TN_F64, 2, s32), *dstT = NULL;
    CHECK_OK(tn_transpose(&dstT, dst, 0, 1));
    CHECK_OK(tn_binary(&dstT, tc, row64, TN_DIV));
    for (int i = 0; i < 6; i++) CHECK(at(dstT, i) == at(rb, i));
    /* in place */
    tn_tensor *ip = a;
    CHECK_OK(tn_binary(&ip, a, row, TN_ADD));
    CHECK(ip == a && at(a, 4) == 25);
    CHECK_OK(tn_binary_scalar(&ip, a, 2, TN_MUL, 0));
    CHECK(at(a, 4) == 50);
    CHECK_OK(tn_unary(&ip, a, TN_NEG));
    CHECK(at(a, 0) == -22);
    /* errors */
    tn_tensor *bad = NULL, *f64 = from(TN_F64, 2, s23, v);
    CHECK(tn_binary(&bad, a, f64, TN_ADD) == TN_ERR_DTYPE && bad == NULL);
    CHECK(strstr(tn_last_error(), "add: dtypes f32 and f64 differ") != NULL);
    tn_tensor *q = from(TN_F32, 2, s32, v);
    CHECK(tn_binary(&bad, a, q, TN_MUL) == TN_ERR_SHAPE && bad == NULL);
    CHECK(strstr(tn_last_error(), "[2, 3]") && strstr(tn_last_error(), "[3, 2]"));
    tn_tensor *wrong = q;
    CHECK(tn_binary(&wrong, a, row, TN_ADD) != TN_OK); /* preallocated out of the wrong shape */
    CHECK(tn_binary(&bad, a, row, 99) == TN_ERR_ARG);
    tn_tensor *tensors[] = {a, row, col, o, o2, rr, o3, t, tt, tc, ra, rb, row64, ua, ub, dst, dstT, f64, q};
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0]; i++) tn_tensor_free(tensors[i]);
}

static void test_nan(void) {
    int64_t sh[1] = {4};
    double x[4] = {NAN, 1, NAN, -1}, y[4] = {1, NAN, NAN, 2};
    for (int32_t dt = TN_F32; dt <= TN_BF16; dt++) {
        tn_tensor *a = from(dt, 1, sh, x), *b = from(dt, 1, sh, y), *mx = NULL, *mn = NULL, *eq = NULL, *r = NULL;
        CHECK_OK(tn_binary(&mx, a, b, TN_MAXIMUM));
        CHECK_OK(tn_binary(&mn, a, b, TN_MINIMUM));
        CHECK(isnan(at(mx, 0)) && isnan(at(mx, 1)) && isnan(at(mx, 2)) && at(mx, 3) == 2);
        CHECK(isnan(at(mn, 0)) && isnan(at(mn, 1)) && isnan(at(mn, 2)) && at(mn, 3) == -1);
        CHECK_OK(tn_binary(&eq, a, a, TN_NE));
        CHECK(at(eq, 0) == 1 && at(eq, 1) == 0);
        CHECK_OK(tn_unary(&r, a, TN_RELU));
        CHECK(isnan(at(r, 0)) && at(r, 3) == 0);
        tn_tensor_free(a); tn_tensor_free(b); tn_tensor_free(mx); tn_tensor_free(mn); tn_tensor_free(eq); tn_tensor_free(r);
    }
}

static void test_unary(void) {
    int64_t sh[1] = {8};
    double pos[8] = {0.5, 1.25, 2.5, 3.0, 0.1, 1.5, 7.0, 0.25};
    int32_t dts[4] = {TN_F32, TN_F64, TN_F16, TN_BF16};
    double tol[4] = {2e-6, 1e-14, 2e-3, 1.6e-2};
    for (int k = 0; k < 4; k++) {
        tn_tensor *a = from(dts[k], 1, sh, X), *p = from(dts[k], 1, sh, pos);
        for (int op = 0; op < TN_NUM_UNOPS; op++) {
            tn_tensor *in = (op == TN_LOG || op == TN_SQRT || op == TN_RSQRT) ? p : a, *o = NULL;
            CHECK_OK(tn_unary(&o, in, op));
            CHECK(o->dtype == (op == TN_LOGICAL_NOT ? TN_U8 : dts[k]));
            int ok = 1;
            for (int i = 0; i < 8; i++) {
                double want = ref_un(op, at(in, i));
                if (dts[k] == TN_F16) want = tn_half_to_float(tn_float_to_half((float)want));
                if (dts[k] == TN_BF16) want = tn_bf16_to_float(tn_float_to_bf16((float)want));
                ok &= close_to(at(o, i), want, tol[k]);
            }
            if (!ok) fprintf(stderr, "  unary op %d dtype %s\n", op, tn_dtype_name(dts[k]));
            CHECK(ok);
            tn_tensor_free(o);
        }
        tn_tensor_free(a); tn_tensor_free(p);
    }
    /* sigmoid stable at large |x|, round half to even, sign */
    double e[8] = {-1000, 1000, -100, 100, 0.5, 1.5, 2.5, -0.5};
    for (int32_t dt = TN_F32; dt <= TN_F64; dt++) {
        tn_tensor *a = from(dt, 1, sh, e), *s = NULL, *r = NULL, *g = NULL;
        CHECK_OK(tn_unary(&s, a, TN_SIGMOID));
        CHECK(at(s, 0) == 0 && at(s, 1) == 1 && at(s, 2) >= 0 && at(s, 2) < 1e-40 && at(s, 3) == 1);
        CHECK_OK(tn_unary(&r, a, TN_ROUND));
        CHECK(at(r, 4) == 0 && at(r, 5) == 2 && at(r, 6) == 2 && at(r, 7) == 0 && signbit(at(r, 7)));
        CHECK_OK(tn_unary(&g, a, TN_SIGN));
        CHECK(at(g, 0) == -1 && at(g, 1) == 1);
        tn_tensor_free(a); tn_tensor_free(s); tn_tensor_free(r); tn_tensor_free(g);
    }
    /* integers */
    double iv[8] = {-3, 0, 5, -2147483648.0, 7, 1, -1, 2};
    int32_t ints[3] = {TN_I32, TN_I64, TN_U8};
    for (int k = 0; k < 3; k++) {
        double uv[8] = {3, 0, 5, 255, 7, 1, 200, 2};
        const double *v = ints[k] == TN_U8 ? uv : iv;
        tn_tensor *a = from(ints[k], 1, sh, v), *o = NULL;
        int ops[] = {TN_NEG, TN_ABS, TN_SIGN, TN_SQUARE, TN_RELU, TN_FLOOR, TN_CEIL, TN_ROUND, TN_LOGICAL_NOT};
        for (size_t j = 0; j < sizeof ops / sizeof ops[0]; j++) {
            CHECK_OK(tn_unary(&o, a, ops[j]));
            int ok = 1;
            for (int i = 0; i < 8; i++) {
                double want = ref_un(ops[j], v[i]);
                if (ints[k] == TN_U8 && ops[j] != TN_LOGICAL_NOT) want = (double)(uint8_t)(int64_t)want;
                if (ints[k] == TN_I32 && v[i] == -2147483648.0 && (ops[j] == TN_NEG || ops[j] == TN_ABS)) want = v[i];
                if (ints[k] == TN_I32 && v[i] == -2147483648.0 && ops[j] == TN_SQUARE) want = 0;
                ok &= at(o, i) == want;
            }
            if (!ok) fprintf(stderr, "  int unary op %d dtype %s\n", ops[j], tn_dtype_name(ints[k]));
            CHECK(ok);
            tn_tensor_free(o);
            o = NULL;
        }
        CHECK(tn_unary(&o, a, TN_EXP) == TN_ERR_DTYPE && o == NULL);
        CHECK(strstr(tn_last_error(), "exp") && strstr(tn_last_error(), tn_dtype_name(ints[k])));
        CHECK(tn_unary(&o, a, TN_TANH) == TN_ERR_DTYPE);
        tn_tensor_free(a);
    }
}

static void test_scalar(void) {
    int64_t sh[1] = {4};
    double v[4] = {1, -2, 3.5, 8};
    for (int32_t dt = TN_F32; dt <= TN_BF16; dt++) {
        tn_tensor *a = from(dt, 1, sh, v), *o = NULL, *r = NULL, *c = NULL;
        CHECK_OK(tn_binary_scalar(&o, a, 2, TN_SUB, 0));
        CHECK_OK(tn_binary_scalar(&r, a, 2, TN_SUB, 1));
        CHECK_OK(tn_binary_scalar(&c, a, 3, TN_GT, 1)); /* 3 > a */
        for (int i = 0; i < 4; i++) {
            CHECK(at(o, i) == v[i] - 2 && at(r, i) == 2 - v[i]);
            CHECK(at(c, i) == (3 > v[i]));
        }
        tn_tensor_free(o); o = NULL;
        CHECK_OK(tn_binary_scalar(&o, a, 0.1, TN_MUL, 0)); /* scalar kept in f32 for f16/bf16 */
        CHECK(close_to(at(o, 3), 0.8, dt == TN_BF16 ? 8e-3 : 1e-3));
        tn_tensor_free(o); o = NULL;
        CHECK_OK(tn_binary_scalar(&o, a, 2, TN_POW, 1)); /* 2^a */
        CHECK(close_to(at(o, 1), 0.25, 1e-6) && close_to(at(o, 3), 256, 1e-6));
        tn_tensor_free(a); tn_tensor_free(o); tn_tensor_free(r); tn_tensor_free(c);
    }
    double iv[4] = {7, -7, 3, 0};
    tn_tensor *a = from(TN_I64, 1, sh, iv), *o = NULL, *c = NULL;
    CHECK_OK(tn_binary_scalar(&o, a, 2, TN_DIV, 0));
    CHECK(at(o, 0) == 3 && at(o, 1) == -3 && at(o, 3) == 0);
    tn_tensor_free(o); o = NULL;
    CHECK(tn_binary_scalar(&o, a, 0, TN_DIV, 0) == TN_ERR_ARG && strstr(tn_last_error(), "div"));
    CHECK(tn_binary_scalar(&o, a, 6, TN_DIV, 1) == TN_ERR_ARG); /* 6 / a, a has a zero */
    CHECK(tn_binary_scalar(&o, a, 0.5, TN_MUL, 0) == TN_ERR_DTYPE && strstr(tn_last_error(), "i64"));
    CHECK_OK(tn_binary_scalar(&c, a, 2.5, TN_LT, 0)); /* integer vs fractional scalar */
    CHECK(at(c, 0) == 0 && at(c, 1) == 1 && at(c, 2) == 0 && at(c, 3) == 1);
    tn_tensor_free(c); c = NULL;
    CHECK_OK(tn_binary_scalar(&c, a, 3, TN_LE, 1)); /* 3 <= a */
    CHECK(at(c, 0) == 1 && at(c, 1) == 0 && at(c, 2) == 1 && at(c, 3) == 0);
    tn_tensor_free(c); c = NULL;
    double uv[4] = {0, 100, 200, 255};
    tn_tensor *u = from(TN_U8, 1, sh, uv);
    CHECK_OK(tn_binary_scalar(&c, u, 300, TN_LT, 0)); /* out-of-range scalar compares exactly */
    CHECK(at(c, 0) == 1 && at(c, 3) == 1);
    tn_tensor_free(c); c = NULL;
    CHECK_OK(tn_binary_scalar(&c, u, 100, TN_ADD, 0));
    CHECK(at(c, 3) == 99); /* wraps like torch uint8 */
    tn_tensor_free(a); tn_tensor_free(c); tn_tensor_free(u);
}

static void test_clamp_where_fill(void) {
    int64_t sh[1] = {5};
    double v[5] = {-5, -0.5, 0.5, 5, NAN};
    tn_tensor *a = from(TN_F32, 1, sh, v), *o = NULL;
    CHECK_OK(tn_clamp(&o, a, -1, 1));
    CHECK(at(o, 0) == -1 && at(o, 1) == -0.5 && at(o, 3) == 1 && isnan(at(o, 4)));
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_clamp(&o, a, 0, INFINITY));
    CHECK(at(o, 0) == 0 && at(o, 3) == 5);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_clamp(&o, a, 2, 1)); /* lo > hi: hi */
    CHECK(at(o, 0) == 1 && at(o, 3) == 1);
    tn_tensor_free(o); o = NULL;
    double iv[5] = {-5, 0, 3, 250, 7};
    tn_tensor *ia = from(TN_I32, 1, sh, iv), *ua = from(TN_U8, 1, sh, iv), *h = from(TN_F16, 1, sh, v);
    CHECK_OK(tn_clamp(&o, ia, -1.5, 6.5));
    CHECK(at(o, 0) == -1 && at(o, 2) == 3 && at(o, 3) == 6);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_clamp(&o, ua, 10, INFINITY));
    CHECK(at(o, 1) == 10 && at(o, 3) == 250);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_clamp(&o, h, -1, 1));
    CHECK(at(o, 0) == -1 && at(o, 2) == 0.5 && isnan(at(o, 4)));
    tn_tensor_free(o); o = NULL;

    int64_t s23[2] = {2, 3}, s3[1] = {3}, s21[2] = {2, 1};
    double cv[3] = {1, 0, 1}, av[2] = {10, 20}, bv[6] = {1, 2, 3, 4, 5, 6};
    for (int32_t dt = 0; dt < TN_NUM_DTYPES; dt++) {
        tn_tensor *c = from(TN_U8, 1, s3, cv), *x = from(dt, 2, s21, av), *y = from(dt, 2, s23, bv), *w = NULL;
        CHECK_OK(tn_where(&w, c, x, y));
        CHECK(w->dtype == dt && w->ndim == 2);
        for (int i = 0; i < 6; i++) CHECK(at(w, i) == (cv[i % 3] ? av[i / 3] : bv[i]));
        tn_tensor *m = NULL;
        CHECK_OK(tn_masked_fill(&m, y, c, 9));
        for (int i = 0; i < 6; i++) CHECK(at(m, i) == (cv[i % 3] ? 9 : bv[i]));
        tn_tensor_free(m); m = y;
        CHECK_OK(tn_masked_fill(&m, y, c, -1)); /* in place */
        CHECK(at(y, 0) == (dt == TN_U8 ? 0 : -1) && at(y, 1) == 2);
        tn_tensor *bad = NULL;
        CHECK(tn_where(&bad, x, x, y) == (dt == TN_U8 ? TN_OK : TN_ERR_DTYPE));
        tn_tensor_free(bad); bad = NULL;
        CHECK(tn_masked_fill(&bad, x, y, 1) != TN_OK && bad == NULL); /* mask (2,3) does not fit a (2,1) */
        tn_tensor_free(c); tn_tensor_free(x); tn_tensor_free(y); tn_tensor_free(w);
    }
    tn_tensor_free(a); tn_tensor_free(ia); tn_tensor_free(ua); tn_tensor_free(h);
}

static void test_large(void) {
    /* parallel paths: contiguous, broadcast row, strided, f16 */
    int64_t sh[2] = {513, 300}, s1[1] = {300};
    tn_tensor *a = mk(TN_F32, 2, sh), *b = mk(TN_F32, 2, sh), *r = mk(TN_F32, 1, s1);
    int64_t n = 513 * 300;
    for (int64_t i = 0; i < n; i++) { ((float *)a->data)[i] = (float)(i % 97) - 40; ((float *)b->data)[i] = (float)(i % 13) + 1; }
    for (int i = 0; i < 300; i++) ((float *)r->data)[i] = (float)i;
    tn_tensor *o = NULL, *o2 = NULL, *o3 = NULL, *h = NULL, *ho = NULL, *tr = NULL, *o4 = NULL;
    CHECK_OK(tn_binary(&o, a, b, TN_MUL));
    CHECK_OK(tn_binary(&o2, a, r, TN_ADD));
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        ok &= at(o, i) == at(a, i) * at(b, i);
        ok &= at(o2, i) == at(a, i) + (double)(i % 300);
    }
    CHECK(ok);
    CHECK_OK(tn_unary(&o3, a, TN_SIGMOID));
    ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= close_to(at(o3, i), ref_un(TN_SIGMOID, at(a, i)), 1e-6);
    CHECK(ok);
    CHECK_OK(tn_to_dtype(&h, a, TN_F16));
    CHECK_OK(tn_binary_scalar(&ho, h, 1, TN_ADD, 0));
    ok = 1;
    for (int64_t i = 0; i < n; i++) ok &= at(ho, i) == at(a, i) + 1;
    CHECK(ok);
    CHECK_OK(tn_transpose(&tr, a, 0, 1));
    CHECK_OK(tn_unary(&o4, tr, TN_ABS));
    ok = 1;
    for (int64_t i = 0; i < 300 && ok; i++)
        for (int64_t j = 0; j < 513; j++) ok &= at(o4, i * 513 + j) == fabs(at(a, j * 300 + i));
    CHECK(ok);
    tn_tensor *ts[] = {a, b, r, o, o2, o3, h, ho, tr, o4};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tn_tensor_free(ts[i]);
}

/* ---- f32 exp (vmath.h's AVX2 expf where the CPU has it, else the plain loop) ---------------- */

/* Distance in ulps of two floats of the same sign class (ordered integer mapping); NaN pairs 0. */
static int64_t ulp_dist(float a, float b) {
    if (a != a || b != b) return (a != a && b != b) ? 0 : INT64_MAX;
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    int64_t oa = ia < 0 ? (int64_t)INT32_MIN - ia : ia, ob = ib < 0 ? (int64_t)INT32_MIN - ib : ib;
    return oa > ob ? oa - ob : ob - oa;
}

static float ref_exp(float x) { return expf(x); }
static float ref_sigmoid(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }
static float ref_tanh(float x) { return (float)tanh((double)x); }

/* f32 unary op against ref on every k-th f32 in [neg_end, pos_end] (bit patterns, both signs;
 * k = 1 with TN_EXP_EXHAUSTIVE=1, else >= 1e8 inputs), through tn_unary with a preallocated out:
 * at most maxulp ulp everywhere. */
static void check_unary_ulp(int32_t op, const char *name, uint32_t neg_end, uint32_t pos_end, float (*ref)(float),
                            int64_t maxulp) {
    const int64_t total = (int64_t)(neg_end - 0x80000000u) + 1 + (int64_t)pos_end + 1;
    const char *ex = getenv("TN_EXP_EXHAUSTIVE");
    const int64_t step = ex && ex[0] == '1' ? 1 : total / 100000000 - (total / 100000000 + 1) % 2; /* odd: mantissa low bits vary */
    enum { CH = 1 << 20 };
    int64_t shape[1] = {CH};
    tn_tensor *in = mk(TN_F32, 1, shape), *out = mk(TN_F32, 1, shape);
    float *x = (float *)in->data, *y = (float *)out->data;
    int64_t worst = 0, count = 0;
    float worst_x = 0;
    for (int64_t k0 = 0; k0 < total; k0 += step * CH) {
        int64_t m = 0;
        for (int64_t k = k0; k < total && m < CH; k += step, m++) {
            uint32_t b = k <= (int64_t)pos_end ? (uint32_t)k : 0x80000000u + (uint32_t)(k - pos_end - 1);
            memcpy(&x[m], &b, 4);
        }
        for (int64_t i = m; i < CH; i++) x[i] = 0;
        CHECK_OK(tn_unary(&out, in, op));
        for (int64_t i = 0; i < m; i++) {
            int64_t d = ulp_dist(y[i], ref(x[i]));
            if (d > worst) { worst = d; worst_x = x[i]; }
        }
        count += m;
    }
    printf("%s f32: %lld inputs, max %lld ulp vs the reference (at x = %.9g)\n", name, (long long)count,
           (long long)worst, (double)worst_x);
    CHECK(count >= (step == 1 ? total : 100000000));
    CHECK(worst <= maxulp);
    tn_tensor_free(in);
    tn_tensor_free(out);
}

/* exp on [-104, 89] against libm expf; sigmoid and tanh on every finite f32 against the double
 * evaluation rounded (1 / (1 + exp(-x)), tanh). */
static void test_exp_ulp(void) {
    check_unary_ulp(TN_EXP, "exp", 0xc2d00000u, 0x42b20000u, ref_exp, 2);
    check_unary_ulp(TN_SIGMOID, "sigmoid", 0xff7fffffu, 0x7f7fffffu, ref_sigmoid, 2);
    check_unary_ulp(TN_TANH, "tanh", 0xff7fffffu, 0x7f7fffffu, ref_tanh, 2);
}

/* A new (O, N) f32 tensor of uniform values in [-w, w). */
static tn_tensor *rand_f32(int64_t O, int64_t N, uint64_t *seed, double w) {
    int64_t sh[2] = {O, N};
    tn_tensor *a = mk(TN_F32, 2, sh);
    for (int64_t i = 0; i < O * N; i++) ((float *)a->data)[i] = (float)((double)(xorshift64(seed) >> 11) * 0x1p-53 * 2 * w - w);
    return a;
}
/* A row's max m (NaN ignored, -inf when none) and s = sum exp(x - m), in double. */
static void ref_row_exp(const float *xr, int64_t n, double *m, double *s) {
    *m = -INFINITY;
    *s = 0;
    for (int64_t i = 0; i < n; i++) *m = xr[i] > *m ? xr[i] : *m;
    for (int64_t i = 0; i < n; i++) *s += exp((double)xr[i] - *m);
}

/* f16 and bf16 op over all their bit patterns, against ref of the widened value rounded back
 * (1 ulp of the half type at most: the f32 result is within 2 ulp of ref; inf and 0 exact). */
static void check_half_all(int32_t op, float (*ref)(float)) {
    for (int k = 0; k < 2; k++) {
        const int32_t dt = k ? TN_BF16 : TN_F16;
        int64_t sh16[1] = {65536};
        tn_tensor *h = mk(dt, 1, sh16), *ho = NULL;
        uint16_t *hb = (uint16_t *)h->data;
        for (int64_t i = 0; i < 65536; i++) hb[i] = (uint16_t)i;
        CHECK_OK(tn_unary(&ho, h, op));
        int64_t bad = 0;
        for (int64_t i = 0; i < 65536; i++) {
            float x = k ? tn_bf16_to_float(hb[i]) : tn_half_to_float(hb[i]);
            uint16_t want = k ? tn_float_to_bf16(ref(x)) : tn_float_to_half(ref(x));
            uint16_t got = ((const uint16_t *)ho->data)[i];
            float gf = k ? tn_bf16_to_float(got) : tn_half_to_float(got), wf = k ? tn_bf16_to_float(want) : tn_half_to_float(want);
            if (isnan(x)) bad += !isnan(gf);
            else if (isinf(wf) || wf == 0) bad += gf != wf;
            else bad += abs((int)got - (int)want) > 1;
        }
        CHECK(bad == 0);
        tn_tensor_free(h);
        tn_tensor_free(ho);
    }
}

/* Special values, overflow / underflow edges, every tail length (contiguous, strided, in place),
 * and f16 / bf16 (staged through the f32 kernel) over all their bit patterns. */
static void test_exp_special(void) {
    const float big = 88.7228394f; /* largest x with a finite expf */
    const float xs[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, big, nextafterf(big, 200), 88.0f, 88.5f,
                        89.0f, 1e30f, -1e30f, -87.0f, -87.5f, -87.34f, -100.0f, -103.27893f, -103.972f, -104.0f,
                        -150.0f, 1e-30f, -1e-30f, 1.0f, -1.0f, 0.5f, 20.0f};
    const int64_t nx = (int64_t)(sizeof xs / sizeof xs[0]);
    for (int64_t n = 1; n <= nx; n++) { /* every tail length: the specials shifted through the lanes */
        int64_t sh[1] = {n};
        tn_tensor *a = mk(TN_F32, 1, sh), *o = NULL;
        for (int64_t i = 0; i < n; i++) ((float *)a->data)[i] = xs[(i + n) % nx];
        CHECK_OK(tn_unary(&o, a, TN_EXP));
        int ok = 1;
        for (int64_t i = 0; i < n; i++) {
            float x = xs[(i + n) % nx], v = ((float *)o->data)[i], r = expf(x);
            if (isnan(x)) ok &= isnan(v);
            else if (isinf(r) || r == 0 || x == 0) ok &= v == r; /* inf, 0 and exp(+-0) = 1 exactly */
            else ok &= ulp_dist(v, r) <= 2;
        }
        CHECK(ok);
        tn_tensor_free(a);
        tn_tensor_free(o);
    }
    /* random (5, 37) in [-90, 90]: transposed input and transposed out equal the contiguous run,
     * and in place too */
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    int64_t sh[2] = {5, 37};
    tn_tensor *a = rand_f32(5, 37, &seed, 90), *c = NULL, *t = NULL, *tc = NULL, *ot = NULL;
    CHECK_OK(tn_transpose(&t, a, 0, 1));
    CHECK_OK(tn_contiguous(&tc, t));
    CHECK_OK(tn_unary(&c, tc, TN_EXP));
    CHECK_OK(tn_unary(&ot, t, TN_EXP)); /* strided input, contiguous out (37, 5) */
    CHECK(memcmp(ot->data, c->data, 5 * 37 * 4) == 0);
    tn_tensor *dst = mk(TN_F32, 2, sh), *dstT = NULL;
    CHECK_OK(tn_transpose(&dstT, dst, 0, 1));
    CHECK_OK(tn_unary(&dstT, tc, TN_EXP)); /* contiguous input, strided out */
    int ok = 1;
    for (int64_t i = 0; i < 5 * 37; i++) ok &= at(dstT, i) == at(c, i) && ulp_dist((float)at(c, i), expf((float)at(tc, i))) <= 2;
    CHECK(ok);
    tn_tensor *ip = tc;
    CHECK_OK(tn_unary(&ip, tc, TN_EXP));
    CHECK(ip == tc && memcmp(tc->data, c->data, 5 * 37 * 4) == 0);
    tn_tensor *objs[] = {a, c, t, tc, ot, dst, dstT};
    for (int i = 0; i < 7; i++) tn_tensor_free(objs[i]);
    check_half_all(TN_EXP, ref_exp);
}

/* sigmoid and tanh f32 (vmath.h's vector versions where the CPU has them): specials and edges
 * in every lane position and tail length (exact 0, +-1, x for tiny x, -0 kept), a strided
 * input and output equal to the contiguous run, and f16 / bf16 over all their bit patterns
 * (within 1 ulp of the half type of the double reference). */
/* The plain tanh (CPUs without AVX2 and the CUDA kernels; the vector path is checked below)
 * keeps the sign of zero and is odd on its small-|x| polynomial. */
static void test_tanh_plain_signs(void) {
    CHECK(tn_tanh_f(-0.0f) == 0.0f && signbit(tn_tanh_f(-0.0f)));
    CHECK(tn_tanh_f(0.0f) == 0.0f && !signbit(tn_tanh_f(0.0f)));
    const float xs[] = {1e-30f, 1e-6f, 0.1f, 0.5f, 0.62f, 0.625f, 1.0f, 5.0f, 20.0f};
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        CHECK(tn_tanh_f(-xs[i]) == -tn_tanh_f(xs[i]));
        CHECK(fabs((double)tn_tanh_f(xs[i]) - tanh((double)xs[i])) <= 2e-7 * tanh((double)xs[i]) + 1e-45);
    }
}

static void test_sigmoid_tanh_special(void) {
    const float xs[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 1e-30f, -1e-30f, 1e-40f, -1e-40f, 1e-4f,
                        -3e-3f, 0.625f, -0.625f, nextafterf(0.625f, 0), nextafterf(-0.625f, 0), 0.5f, -1.0f,
                        2.0f, 8.9f, -9.1f, 10.0f, -20.0f, 16.6f, 17.0f, -17.0f, 87.0f, -87.5f, -88.8f, -100.0f,
                        -103.5f, -104.0f, -150.0f, 1e30f, -1e30f};
    const int64_t nx = (int64_t)(sizeof xs / sizeof xs[0]);
    const int32_t ops[2] = {TN_SIGMOID, TN_TANH};
    float (*refs[2])(float) = {ref_sigmoid, ref_tanh};
    for (int q = 0; q < 2; q++) {
        for (int64_t n = 1; n <= nx; n++) {
            int64_t sh[1] = {n};
            tn_tensor *a = mk(TN_F32, 1, sh), *o = NULL;
            for (int64_t i = 0; i < n; i++) ((float *)a->data)[i] = xs[(i + n) % nx];
            CHECK_OK(tn_unary(&o, a, ops[q]));
            int ok = 1;
            for (int64_t i = 0; i < n; i++) {
                float x = xs[(i + n) % nx], v = ((float *)o->data)[i], r = refs[q](x);
                if (isnan(x)) ok &= isnan(v);
                else if (r == 0 || fabsf(r) == 1 || r == x) ok &= memcmp(&v, &r, 4) == 0; /* bit-exact */
                else ok &= ulp_dist(v, r) <= 2;
            }
            CHECK(ok);
            tn_tensor_free(a);
            tn_tensor_free(o);
        }
        uint64_t seed = 0x1234567ull + (uint64_t)q;
        int64_t sh[2] = {5, 37};
        tn_tensor *a = rand_f32(5, 37, &seed, 12), *c = NULL, *t = NULL, *tc = NULL, *ot = NULL;
        CHECK_OK(tn_transpose(&t, a, 0, 1));
        CHECK_OK(tn_contiguous(&tc, t));
        CHECK_OK(tn_unary(&c, tc, ops[q]));
        CHECK_OK(tn_unary(&ot, t, ops[q])); /* strided input */
        CHECK(memcmp(ot->data, c->data, 5 * 37 * 4) == 0);
        tn_tensor *dst = mk(TN_F32, 2, sh), *dstT = NULL;
        CHECK_OK(tn_transpose(&dstT, dst, 0, 1));
        CHECK_OK(tn_unary(&dstT, tc, ops[q])); /* strided out */
        int ok = 1;
        for (int64_t i = 0; i < 5 * 37; i++) ok &= at(dstT, i) == at(c, i) && ulp_dist((float)at(c, i), refs[q]((float)at(tc, i))) <= 2;
        CHECK(ok);
        tn_tensor *objs[] = {a, c, t, tc, ot, dst, dstT};
        for (int i = 0; i < 7; i++) tn_tensor_free(objs[i]);
        check_half_all(ops[q], refs[q]);
    }
}

/* softmax (lg 0) or log_softmax (lg 1) y of the n values x, both with element strides ys, xs,
 * against a double reference: 1 when every element is close (a NaN or all -inf line all NaN). */
static int softmax_line_ok(const float *y, int64_t ys, const float *x, int64_t xs, int64_t n, int lg) {
    float v[64];
    const float *xr = x;
    if (xs != 1) { /* n <= 64 here */
        for (int64_t i = 0; i < n; i++) v[i] = x[i * xs];
        xr = v;
    }
    double m, s;
    ref_row_exp(xr, n, &m, &s);
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        const float yi = y[i * ys];
        if (s != s || isinf(m)) { ok &= isnan(yi); continue; }
        double want = lg ? ((double)xr[i] - m) - log(s) : exp((double)xr[i] - m) / s;
        ok &= lg ? (isinf(want) ? yi == want : fabs(yi - want) <= 1e-5 * (1 + fabs(want)))
                 : fabs(yi - want) <= 2e-5 * want + 1e-37;
    }
    return ok;
}

/* f32 softmax / log_softmax of (5, D) along the last dim (the vector row pass) and along dim 0
 * (the column pass: D columns, in chunks of 256) against a double reference: D around the 8-
 * and 16-lane boundaries and a long row, random values, -inf entries, a NaN row and an all
 * -inf row (NaN like torch). */
static void test_softmax_rows(void) {
    const int64_t Ds[] = {1, 2, 7, 8, 9, 15, 16, 17, 23, 31, 32, 33, 40, 4093};
    uint64_t seed = 12345;
    for (size_t q = 0; q < sizeof Ds / sizeof Ds[0]; q++) {
        const int64_t D = Ds[q], O = 5;
        tn_tensor *a = rand_f32(O, D, &seed, 30);
        float *x = (float *)a->data;
        x[1 * D + D / 2] = -INFINITY; /* row 1: one -inf entry */
        x[2 * D] = NAN;               /* row 2: NaN row */
        for (int64_t i = 0; i < D; i++) x[3 * D + i] = -INFINITY; /* row 3: all -inf */
        for (int lg = 0; lg < 2; lg++) {
            tn_tensor *y = NULL, *yc = NULL;
            CHECK_OK(tn_softmax(&y, a, 1, lg));
            CHECK_OK(tn_softmax(&yc, a, 0, lg));
            int ok = 1;
            for (int64_t o = 0; o < O; o++) ok &= softmax_line_ok((const float *)y->data + o * D, 1, x + o * D, 1, D, lg);
            CHECK(ok);
            ok = 1;
            for (int64_t j = 0; j < D; j++) ok &= softmax_line_ok((const float *)yc->data + j, D, x + j, D, O, lg);
            CHECK(ok);
            tn_tensor_free(y);
            tn_tensor_free(yc);
        }
        tn_tensor_free(a);
    }
}

/* f32 logsumexp over the last dim (row pass) and over dim 0 of a transposed view (gathered
 * rows) against a double reference: lengths around the 16-lane blocks and the 256-element
 * pairwise split, -inf entries, an all -inf row (-inf) and a NaN row. */
static void test_logsumexp_rows(void) {
    const int64_t Ns[] = {1, 7, 8, 15, 16, 17, 33, 255, 256, 257, 1000, 4093};
    uint64_t seed = 777;
    for (size_t q = 0; q < sizeof Ns / sizeof Ns[0]; q++) {
        const int64_t N = Ns[q], O = 4;
        tn_tensor *a = rand_f32(O, N, &seed, 40);
        float *x = (float *)a->data;
        x[N - 1] = -INFINITY;                                     /* row 0: one -inf entry */
        x[N + N / 3] = NAN;                                       /* row 1: NaN */
        for (int64_t i = 0; i < N; i++) x[2 * N + i] = -INFINITY; /* row 2: all -inf */
        int32_t d1 = 1, d0 = 0;
        tn_tensor *r = NULL, *t = NULL, *rt = NULL;
        CHECK_OK(tn_reduce(&r, a, 1, &d1, TN_RED_LOGSUMEXP, 0, 0));
        CHECK_OK(tn_transpose(&t, a, 0, 1));
        CHECK_OK(tn_reduce(&rt, t, 1, &d0, TN_RED_LOGSUMEXP, 0, 0));
        int ok = 1;
        for (int64_t o = 0; o < O; o++) {
            const float *xr = x + o * N;
            double m, sum;
            ref_row_exp(xr, N, &m, &sum);
            const double want = o == 1 ? NAN : o == 2 || (o == 0 && N == 1) ? -INFINITY : m + log(sum);
            for (int k = 0; k < 2; k++) {
                const double got = at(k ? rt : r, o);
                ok &= isnan(want) ? isnan(got) : isinf(want) ? got == want : fabs(got - want) <= 1e-5 * (1 + fabs(want));
            }
        }
        CHECK(ok);
        tn_tensor_free(a);
        tn_tensor_free(r);
        tn_tensor_free(t);
        tn_tensor_free(rt);
    }
}

/* f32 log_softmax backward (grad_in = g - exp(y) sum(g), vmath.h's exp on AVX2 CPUs) along the
 * last dim (rows) and along dim 0 (the column pass: D columns, in chunks of 256) against a double
 * evaluation from the same f32 y and g: lengths around the 8-lane and 256-column boundaries, a
 * -inf input entry (exp(y) = 0 there: grad_in = g; for D = 1 an all -inf row: NaN). */
static void test_log_softmax_backward(void) {
    const int64_t Ds[] = {1, 2, 7, 8, 9, 15, 16, 17, 255, 256, 257, 4093};
    uint64_t seed = 4242;
    for (size_t q = 0; q < sizeof Ds / sizeof Ds[0]; q++) {
        const int64_t D = Ds[q], O = 5;
        tn_tensor *a = rand_f32(O, D, &seed, 10), *g = rand_f32(O, D, &seed, 3);
        ((float *)a->data)[2 * D + D / 2] = -INFINITY;
        const float *gv = (const float *)g->data;
        for (int dim = 1; dim >= 0; dim--) {
            tn_tensor *y = NULL, *gi = NULL;
            CHECK_OK(tn_softmax(&y, a, dim, 1));
            CHECK_OK(tn_softmax_backward(&gi, g, y, dim, 1));
            const float *yv = (const float *)y->data, *iv = (const float *)gi->data;
            const int64_t nl = dim ? O : D, len = dim ? D : O, st = dim ? 1 : D, ls = dim ? D : 1;
            int ok = 1;
            for (int64_t l = 0; l < nl; l++) {
                double s = 0, sa = 0;
                for (int64_t i = 0; i < len; i++) {
                    s += gv[l * ls + i * st];
                    sa += fabs(gv[l * ls + i * st]);
                }
                for (int64_t i = 0; i < len; i++) {
                    const int64_t k = l * ls + i * st;
                    const double e = exp((double)yv[k]), want = gv[k] - e * s;
                    ok &= isnan(want) ? isnan(iv[k]) : fabs(iv[k] - want) <= 1e-6 * (fabs(gv[k]) + e * sa) + 1e-30;
                }
            }
            CHECK(ok);
            tn_tensor_free(y);
            tn_tensor_free(gi);
        }
        tn_tensor_free(a);
        tn_tensor_free(g);
    }
}

int main(void) {
    test_binary_float();
    test_binary_int();
    test_broadcast_strided_inplace();
    test_nan();
    test_unary();
    test_scalar();
    test_clamp_where_fill();
    test_large();
    test_exp_ulp();
    test_exp_special();
    test_tanh_plain_signs();
    test_sigmoid_tanh_special();
    test_softmax_rows();
    test_logsumexp_rows();
    test_log_softmax_backward();
    return check_report("test_elementwise");
}
