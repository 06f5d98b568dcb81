/*
 * test_reduce.c — tn_reduce (every op, dims, keepdim, correction), tn_max_dim, tn_sum_to,
 * tn_softmax / tn_softmax_backward against naive double references; the row, column and
 * gather paths; strided inputs; accuracy of long f32 sums; the exact summation order of f32
 * rows and of f32 / f64 columns at 1 and 2 threads; errors.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

static double val(int64_t i) { return sin((double)i * 0.7) * 3 + (double)(i % 5); } /* test data */

/* Naive reference: reduce a over mask red into ref (output in kept row-major order). */
static void ref_reduce(double *ref, const tn_tensor *a, const int *red, int op, int corr) {
    int64_t M = 1, N = 1;
    for (int d = 0; d < a->ndim; d++) { if (red[d]) N *= a->shape[d]; else M *= a->shape[d]; }
    double *buf = malloc(sizeof(double) * (size_t)(N > 0 ? N : 1));
    for (int64_t m = 0; m < M; m++) {
        for (int64_t r = 0; r < N; r++) {
            /* coordinates: kept from m, reduced from r, both row-major */
            int64_t mi = m, ri = r, lin = 0;
            int64_t coord[TN_MAX_DIMS];
            for (int d = a->ndim - 1; d >= 0; d--) {
                if (red[d]) { coord[d] = ri % a->shape[d]; ri /= a->shape[d]; }
                else { coord[d] = mi % a->shape[d]; mi /= a->shape[d]; }
            }
            for (int d = 0; d < a->ndim; d++) lin = lin * a->shape[d] + coord[d];
            buf[r] = at(a, lin);
        }
        double v = 0;
        switch (op) {
        case TN_RED_SUM: case TN_RED_MEAN: for (int64_t r = 0; r < N; r++) v += buf[r]; if (op == TN_RED_MEAN) v /= (double)N; break;
        case TN_RED_PROD: v = 1; for (int64_t r = 0; r < N; r++) v *= buf[r]; break;
        case TN_RED_MAX: v = -INFINITY; for (int64_t r = 0; r < N; r++) v = isnan(buf[r]) || isnan(v) ? NAN : fmax(v, buf[r]); break;
        case TN_RED_MIN: v = INFINITY; for (int64_t r = 0; r < N; r++) v = isnan(buf[r]) || isnan(v) ? NAN : fmin(v, buf[r]); break;
        case TN_RED_LOGSUMEXP: { double mx = -INFINITY; for (int64_t r = 0; r < N; r++) mx = fmax(mx, buf[r]);
            for (int64_t r = 0; r < N; r++) v += exp(buf[r] - mx);
            v = mx + log(v); break; }
        case TN_RED_VAR: { double mu = 0; for (int64_t r = 0; r < N; r++) mu += buf[r]; mu /= (double)N;
            for (int64_t r = 0; r < N; r++) v += (buf[r] - mu) * (buf[r] - mu);
            v /= (double)(N - corr); break; }
        case TN_RED_ARGMAX: case TN_RED_ARGMIN: { int64_t b = 0;
            for (int64_t r = 1; r < N; r++) if (op == TN_RED_ARGMAX ? buf[r] > buf[b] : buf[r] < buf[b]) b = r;
            v = (double)b; break; }
        }
        ref[m] = v;
    }
    free(buf);
}

static int check_reduce(const tn_tensor *a, int ndims, const int32_t *dims, int op, int keepdim, int corr, double tol) {
    int red[TN_MAX_DIMS] = {0};
    for (int i = 0; i < ndims; i++) red[dims[i]] = 1;
    if (ndims == 0) for (int d = 0; d < a->ndim; d++) red[d] = 1;
    tn_tensor *o = NULL;
    if (tn_reduce(&o, a, ndims, dims, op, keepdim, corr) != TN_OK) { fprintf(stderr, "  %s\n", tn_last_error()); return 0; }
    int64_t M = tn_tensor_numel(o);
    double *ref = malloc(sizeof(double) * (size_t)M);
    ref_reduce(ref, a, red, op, corr);
    int ok = 1, nd = 0;
    for (int d = 0; d < a->ndim; d++) nd += keepdim || !red[d];
    ok &= o->ndim == nd;
    for (int64_t m = 0; m < M; m++) ok &= close_to(at(o, m), ref[m], tol);
    if (!ok) fprintf(stderr, "  reduce op %d dtype %s ndims %d keepdim %d: got %g want %g\n", op, tn_dtype_name(a->dtype), ndims, keepdim, at(o, 0), ref[0]);
    free(ref);
    tn_tensor_free(o);
    return ok;
}

static void test_all_ops(void) {
    int64_t sh[3] = {3, 4, 5};
    int32_t dts[3] = {TN_F64, TN_F32, TN_F16};
    double tol[3] = {1e-12, 2e-6, 4e-3};
    for (int k = 0; k < 3; k++) {
        tn_tensor *a = mk(dts[k], 3, sh), *tr = NULL;
        for (int i = 0; i < 60; i++) put(a, i, val(i) * (dts[k] == TN_F16 ? 0.25 : 1));
        CHECK_OK(tn_transpose(&tr, a, 0, 2)); /* (5, 4, 3) strided */
        int32_t dsets[][2] = {{0, 0}, {1, 0}, {2, 0}, {0, 2}, {2, 1}};
        int nds[] = {1, 1, 1, 2, 2};
        for (int op = 0; op < TN_NUM_REDOPS; op++) {
            double t = op == TN_RED_PROD ? tol[k] * 20 : tol[k];
            for (int s = 0; s < 5; s++) {
                if ((op == TN_RED_ARGMAX || op == TN_RED_ARGMIN) && nds[s] > 1) continue;
                for (int kd = 0; kd < 2; kd++) {
                    CHECK(check_reduce(a, nds[s], dsets[s], op, kd, 1, t));
                    CHECK(check_reduce(tr, nds[s], dsets[s], op, kd, 0, t));
                }
            }
            CHECK(check_reduce(a, 0, NULL, op, 0, 1, t)); /* all dims */
            CHECK(check_reduce(tr, 0, NULL, op, 1, 1, t));
        }
        tn_tensor_free(a); tn_tensor_free(tr);
    }
}

static void test_int_and_errors(void) {
    int64_t sh[2] = {3, 4};
    tn_tensor *a = mk(TN_I32, 2, sh), *o = NULL;
    for (int i = 0; i < 12; i++) put(a, i, i * 3 - 10);
    int32_t d1[1] = {1}, d0[1] = {0};
    CHECK_OK(tn_reduce(&o, a, 1, d1, TN_RED_SUM, 0, 0));
    CHECK(o->dtype == TN_I64 && o->ndim == 1 && at(o, 0) == -10 - 7 - 4 - 1 && at(o, 2) == 14 + 17 + 20 + 23);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_reduce(&o, a, 1, d0, TN_RED_MAX, 1, 0));
    CHECK(o->dtype == TN_I32 && o->ndim == 2 && o->shape[0] == 1 && at(o, 3) == 23);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_reduce(&o, a, 0, NULL, TN_RED_ARGMIN, 0, 0));
    CHECK(o->dtype == TN_I64 && o->ndim == 0 && at(o, 0) == 0);
    tn_tensor_free(o); o = NULL;
    CHECK(tn_reduce(&o, a, 1, d1, TN_RED_MEAN, 0, 0) == TN_ERR_DTYPE && o == NULL);
    CHECK(strstr(tn_last_error(), "mean") && strstr(tn_last_error(), "i32") && strstr(tn_last_error(), "[3, 4]"));
    int32_t bad[1] = {2}, dup[2] = {1, 1};
    CHECK(tn_reduce(&o, a, 1, bad, TN_RED_SUM, 0, 0) == TN_ERR_INDEX && o == NULL);
    CHECK(strstr(tn_last_error(), "sum") && strstr(tn_last_error(), "[3, 4]"));
    CHECK(tn_reduce(&o, a, 2, dup, TN_RED_SUM, 0, 0) == TN_ERR_ARG && o == NULL);
    CHECK(strstr(tn_last_error(), "sum: dim 1 listed twice (a [3, 4])"));
    tn_set_dim_base(1);
    CHECK(tn_reduce(&o, a, 1, bad, TN_RED_SUM, 0, 0) == TN_ERR_INDEX && strstr(tn_last_error(), "sum: dim 3 out of range for a [3, 4]"));
    CHECK(tn_reduce(&o, a, 2, dup, TN_RED_SUM, 0, 0) == TN_ERR_ARG && strstr(tn_last_error(), "sum: dim 2 listed twice (a [3, 4])"));
    tn_set_dim_base(0);
    CHECK(tn_reduce(&o, a, 2, (int32_t[]){0, 1}, TN_RED_ARGMAX, 0, 0) == TN_ERR_ARG);
    /* empty reductions */
    int64_t se[2] = {0, 3};
    tn_tensor *e = mk(TN_F32, 2, se);
    CHECK_OK(tn_reduce(&o, e, 1, d0, TN_RED_SUM, 0, 0));
    CHECK(o->shape[0] == 3 && at(o, 0) == 0);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_reduce(&o, e, 1, d0, TN_RED_MEAN, 0, 0));
    CHECK(isnan(at(o, 1)));
    tn_tensor_free(o); o = NULL;
    CHECK(tn_reduce(&o, e, 1, d0, TN_RED_MAX, 0, 0) == TN_ERR_SHAPE && o == NULL);
    CHECK(strstr(tn_last_error(), "max") && strstr(tn_last_error(), "[0, 3]"));
    tn_tensor *v = NULL, *ix = NULL;
    CHECK(tn_max_dim(&v, &ix, e, 0, 0, 0) == TN_ERR_SHAPE && v == NULL && ix == NULL);
    /* NaN */
    tn_tensor *f = mk(TN_F32, 2, sh);
    for (int i = 0; i < 12; i++) put(f, i, i);
    put(f, 5, NAN);
    CHECK_OK(tn_reduce(&o, f, 1, d1, TN_RED_MAX, 0, 0));
    CHECK(at(o, 0) == 3 && isnan(at(o, 1)) && at(o, 2) == 11);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_reduce(&o, f, 1, d0, TN_RED_MIN, 0, 0)); /* column path */
    CHECK(at(o, 0) == 0 && isnan(at(o, 1)) && at(o, 2) == 2);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_reduce(&o, f, 1, d1, TN_RED_ARGMAX, 0, 0));
    CHECK(at(o, 1) == 1 && at(o, 0) == 3);
    tn_tensor_free(o); o = NULL;
    /* max_dim */
    CHECK_OK(tn_max_dim(&v, &ix, a, 1, 1, 1));
    CHECK(v->dtype == TN_I32 && ix->dtype == TN_I64 && v->ndim == 2 && v->shape[1] == 1);
    CHECK(at(v, 0) == -10 && at(ix, 0) == 0 && at(v, 2) == 14);
    tn_tensor_free(v); tn_tensor_free(ix); v = ix = NULL;
    CHECK_OK(tn_max_dim(&v, &ix, f, 0, 0, 0));
    CHECK(at(v, 0) == 8 && at(ix, 0) == 2 && isnan(at(v, 1)) && at(ix, 1) == 1 && at(ix, 3) == 2);
    tn_tensor_free(v); tn_tensor_free(ix);
    tn_tensor_free(a); tn_tensor_free(e); tn_tensor_free(f);
}

static void test_big_paths(void) {
    /* long f32 row: pairwise accuracy, parallel split */
    int64_t n = 10000000;
    int64_t s1[1] = {n};
    tn_tensor *a = mk(TN_F32, 1, s1), *o = NULL;
    for (int64_t i = 0; i < n; i++) ((float *)a->data)[i] = 0.1f;
    CHECK_OK(tn_reduce(&o, a, 0, NULL, TN_RED_SUM, 0, 0));
    CHECK(fabs(at(o, 0) - n * (double)0.1f) / (n * 0.1) < 1e-6);
    tn_tensor_free(o); o = NULL;
    CHECK_OK(tn_reduce(&o, a, 0, NULL, TN_RED_MEAN, 0, 0));
    CHECK(fabs(at(o, 0) - 0.1) < 1e-7);
    tn_tensor_free(o); o = NULL;
    ((float *)a->data)[777777] = 5;
    CHECK_OK(tn_reduce(&o, a, 0, NULL, TN_RED_MAX, 0, 0));
    CHECK(at(o, 0) == 5);
    tn_tensor_free(o); o = NULL;
    tn_tensor_free(a);
    /* column sums: (R, I) dim 0, many rows few columns (row split) and many columns */
    int64_t shapes[3][3] = {{1, 20000, 37}, {1, 300, 1100}, {3, 500, 700}};
    for (int s = 0; s < 3; s++) {
        tn_tensor *m = mk(s == 1 ? TN_F64 : TN_F32, 3, shapes[s]);
        int64_t N = tn_tensor_numel(m);
        for (int64_t i = 0; i < N; i++) put(m, i, val(i));
        int32_t d1[1] = {1};
        CHECK(check_reduce(m, 1, d1, TN_RED_SUM, 0, 0, 1e-4)); /* some columns cancel to ~0 */
        CHECK(check_reduce(m, 1, d1, TN_RED_MEAN, 1, 0, 1e-5));
        CHECK(check_reduce(m, 1, d1, TN_RED_MAX, 0, 0, 0));
        CHECK(check_reduce(m, 1, d1, TN_RED_VAR, 0, 1, 1e-4));
        int32_t d2[1] = {2};
        CHECK(check_reduce(m, 1, d2, TN_RED_LOGSUMEXP, 0, 0, 1e-5));
        CHECK(check_reduce(m, 1, d2, TN_RED_ARGMIN, 0, 0, 0));
        tn_tensor_free(m);
    }
}

/* The documented f32 row order, written out again: 16 lanes per block of <= 256, blocks split
 * at ((n >> 1) + 15) & ~15 and added as a tree, lanes folded j + 8, + 4, + 2, + 1, tail in order.
 * The AVX2 row kernel must give these bits. */
static float ref_psum(const float *x, int64_t n) {
    if (n > 256) {
        int64_t h = ((n >> 1) + 15) & ~(int64_t)15;
        return ref_psum(x, h) + ref_psum(x + h, n - h);
    }
    float acc[16] = {0}, r = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] = acc[j] + x[i + j];
    for (; i < n; i++) r = r + x[i];
    for (int w = 8; w >= 1; w >>= 1)
        for (int j = 0; j < w; j++) acc[j] = acc[j] + acc[j + w];
    return acc[0] + r;
}

/* rows of f32 (contiguous and gathered from a transpose), odd lengths around the 16-lane and
 * 256-block edges, at 1 and 2 threads: exactly ref_psum (and its mean) */
static void test_row_sum_order(void) {
    int64_t lens[] = {1, 2, 7, 15, 16, 17, 31, 33, 255, 256, 257, 271, 511, 512, 513, 1000, 4095, 4097, 10001};
    uint32_t seed = 12345;
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        int64_t n = lens[k], O = 5;
        tn_tensor *a = mk(TN_F32, 2, (int64_t[]){O, n}), *t = mk(TN_F32, 2, (int64_t[]){n, O}), *tr = NULL;
        float *x = (float *)a->data;
        for (int64_t i = 0; i < O * n; i++) {
            seed = seed * 1664525u + 1013904223u;
            x[i] = (float)((double)(seed >> 8) / (1 << 24) * 2 - 0.9) * (float)(1 + i % 3);
        }
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < n; i++) ((float *)t->data)[i * O + o] = x[o * n + i];
        CHECK_OK(tn_transpose(&tr, t, 0, 1)); /* (O, n), strided: the gather path */
        int ok = 1;
        for (int th = 1; th <= 2; th++) {
            tn_set_num_threads(th);
            for (int src = 0; src < 2; src++)
                for (int op = TN_RED_SUM; op <= TN_RED_MEAN; op++) {
                    tn_tensor *o = NULL;
                    CHECK_OK(tn_reduce(&o, src ? tr : a, 1, (int32_t[]){1}, op, 0, 0));
                    for (int64_t r = 0; r < O; r++) {
                        float want = ref_psum(x + r * n, n);
                        if (op == TN_RED_MEAN) want = want / (float)n;
                        ok &= ((float *)o->data)[r] == want;
                    }
                    tn_tensor_free(o);
                }
        }
        tn_set_num_threads(0);
        if (!ok) fprintf(stderr, "  row sum order, length %lld\n", (long long)n);
        CHECK(ok);
        tn_tensor_free(a); tn_tensor_free(t); tn_tensor_free(tr);
    }
}

/* Column sums (O, R, I) over R: per column blocks of 64 rows in order, each block added into the
 * total, in f32 and f64; widths around the 16-lane, 256-column and 4096-column chunk edges,
 * row counts around the 4-row and 64-row steps, at 1 and 2 threads: exactly that order (the
 * row split, few columns and many rows at 2 threads, adds the halves: checked to 1e-6), and
 * MAX / MIN / PROD against a plain loop. */
static void test_col_order(void) {
    int64_t shapes[][3] = {{1, 1, 4097}, {1, 2, 300}, {1, 3, 17}, {1, 5, 4096}, {1, 9, 5000}, {1, 63, 513},
                           {1, 64, 257}, {1, 65, 256}, {1, 66, 4095}, {2, 67, 255}, {1, 130, 1111},
                           {3, 68, 16}, {1, 1000, 40}, {1, 131, 8200}, {2, 70, 4200}};
    uint32_t seed = 777;
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int64_t O = shapes[k][0], R = shapes[k][1], I = shapes[k][2], n = O * R * I;
        for (int dbl = 0; dbl < 2; dbl++) {
            tn_tensor *a = mk(dbl ? TN_F64 : TN_F32, 3, shapes[k]);
            for (int64_t i = 0; i < n; i++) {
                seed = seed * 1664525u + 1013904223u;
                double v = (double)(seed >> 8) / (1 << 24) * 2 - 0.9;
                if (dbl) ((double *)a->data)[i] = v; else ((float *)a->data)[i] = (float)(v * 1.7);
            }
            if (I > 3) put(a, (R / 2) * I + 3, NAN); /* a NaN in column 3 of the first o */
            int ok = 1;
            for (int th = 1; th <= 2; th++) {
                tn_set_num_threads(th);
                int ops[4] = {TN_RED_SUM, TN_RED_MAX, TN_RED_MIN, TN_RED_PROD};
                for (int q = 0; q < 4; q++) {
                    tn_tensor *o = NULL;
                    CHECK_OK(tn_reduce(&o, a, 1, (int32_t[]){1}, ops[q], 0, 0));
                    for (int64_t b = 0; b < O; b++)
                        for (int64_t j = 0; j < I; j++) {
                            const int64_t base = b * R * I + j;
                            double want, got = at(o, b * I + j);
                            if (ops[q] == TN_RED_SUM && dbl) {
                                double tot = 0;
                                for (int64_t r0 = 0; r0 < R; r0 += 64) {
                                    double blk = at(a, base + r0 * I);
                                    for (int64_t r = r0 + 1; r < r0 + 64 && r < R; r++) blk = blk + at(a, base + r * I);
                                    tot = tot + blk;
                                }
                                want = tot;
                            } else if (ops[q] == TN_RED_SUM) {
                                float tot = 0;
                                for (int64_t r0 = 0; r0 < R; r0 += 64) {
                                    float blk = (float)at(a, base + r0 * I);
                                    for (int64_t r = r0 + 1; r < r0 + 64 && r < R; r++) blk = blk + (float)at(a, base + r * I);
                                    tot = tot + blk;
                                }
                                want = tot;
                            } else if (ops[q] == TN_RED_PROD) {
                                double p = 1;
                                float pf = 1;
                                for (int64_t r = 0; r < R; r++) { p = p * at(a, base + r * I); pf = pf * (float)at(a, base + r * I); }
                                want = dbl ? p : pf;
                            } else {
                                want = at(a, base);
                                for (int64_t r = 1; r < R; r++) {
                                    double v = at(a, base + r * I);
                                    want = isnan(want) || isnan(v) ? NAN : ops[q] == TN_RED_MAX ? fmax(want, v) : fmin(want, v);
                                }
                            }
                            int split = th > 1 && ops[q] == TN_RED_SUM && O == 1 && I < 256 && n >= 32768;
                            int same = isnan(want) ? isnan(got) : split ? close_to(got, want, 1e-6) : got == want;
                            if (!same && ok)
                                fprintf(stderr, "  column op %d %s (%lld, %lld, %lld) at %lld, %lld threads %d: %.17g want %.17g\n",
                                        ops[q], dbl ? "f64" : "f32", (long long)O, (long long)R, (long long)I,
                                        (long long)b, (long long)j, th, got, want);
                            ok &= same;
                        }
                    tn_tensor_free(o);
                }
            }
            tn_set_num_threads(0);
            CHECK(ok);
            tn_tensor_free(a);
        }
    }
}

static void test_sum_to(void) {
    int64_t sa[3] = {2, 3, 4};
    tn_tensor *a = mk(TN_F32, 3, sa);
    for (int i = 0; i < 24; i++) put(a, i, i);
    struct { int nd; int64_t sh[3]; } cases[] = {{1, {4}}, {2, {3, 1}}, {3, {1, 3, 1}}, {3, {2, 1, 4}}, {0, {0}}, {3, {2, 3, 4}}, {2, {1, 1}}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        tn_tensor *o = mk(TN_F32, cases[c].nd, cases[c].sh);
        CHECK_OK(tn_sum_to(o, a));
        /* reference: add each a element into its broadcast target */
        double ref[24] = {0};
        int lead = 3 - cases[c].nd;
        for (int i = 0; i < 24; i++) {
            int64_t co[3] = {i / 12, (i / 4) % 3, i % 4}, lin = 0;
            for (int d = lead; d < 3; d++) lin = lin * cases[c].sh[d - lead] + (cases[c].sh[d - lead] == 1 ? 0 : co[d]);
            ref[lin] += i;
        }
        int ok = 1;
        for (int64_t i = 0; i < tn_tensor_numel(o); i++) ok &= at(o, i) == ref[i];
        CHECK(ok);
        tn_tensor_free(o);
    }
    int64_t bad[1] = {3};
    tn_tensor *ob = mk(TN_F32, 1, bad), *od = mk(TN_F64, 1, (int64_t[]){4});
    CHECK(tn_sum_to(ob, a) == TN_ERR_SHAPE && strstr(tn_last_error(), "sum_to") && strstr(tn_last_error(), "[2, 3, 4]"));
    CHECK(tn_sum_to(od, a) == TN_ERR_DTYPE);
    /* f16 and a strided out, bias-gradient size */
    int64_t sb[2] = {4096, 96};
    tn_tensor *h = mk(TN_F16, 2, sb), *hb = mk(TN_F16, 1, (int64_t[]){96}), *f = mk(TN_F32, 2, sb), *fb = mk(TN_F32, 1, (int64_t[]){96});
    for (int64_t i = 0; i < 4096 * 96; i++) { put(h, i, (double)(i % 7) * 0.25); put(f, i, (double)(i % 7) * 0.25); }
    CHECK_OK(tn_sum_to(hb, h));
    CHECK_OK(tn_sum_to(fb, f));
    int ok = 1;
    for (int j = 0; j < 96; j++) {
        double want = 0;
        for (int64_t i = 0; i < 4096; i++) want += (double)((i * 96 + j) % 7) * 0.25;
        ok &= close_to(at(fb, j), want, 1e-6) && close_to(at(hb, j), want, 1e-3);
    }
    CHECK(ok);
    tn_tensor *big = mk(TN_F32, 2, (int64_t[]){96, 2}), *col = NULL;
    CHECK_OK(tn_as_strided(&col, big, 2, (int64_t[]){1, 96}, (int64_t[]){1, 2}, 1)); /* strided (1, 96) out */
    CHECK_OK(tn_sum_to(col, f));
    ok = 1;
    for (int j = 0; j < 96; j++) ok &= at(col, j) == at(fb, j);
    CHECK(ok);
    tn_tensor *ts[] = {a, ob, od, h, hb, f, fb, big, col};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tn_tensor_free(ts[i]);
}

static void ref_softmax(double *y, const tn_tensor *a, int dim, int lg) {
    int64_t O = 1, D = a->shape[dim], I = 1;
    for (int d = 0; d < dim; d++) O *= a->shape[d];
    for (int d = dim + 1; d < a->ndim; d++) I *= a->shape[d];
    for (int64_t o = 0; o < O; o++)
        for (int64_t j = 0; j < I; j++) {
            double m = -INFINITY, s = 0;
            for (int64_t d = 0; d < D; d++) m = fmax(m, at(a, (o * D + d) * I + j));
            for (int64_t d = 0; d < D; d++) s += exp(at(a, (o * D + d) * I + j) - m);
            for (int64_t d = 0; d < D; d++) {
                double x = at(a, (o * D + d) * I + j);
                y[(o * D + d) * I + j] = lg ? x - m - log(s) : exp(x - m) / s;
            }
        }
}

static void test_softmax(void) {
    int64_t sh[3] = {3, 40, 7};
    int32_t dts[3] = {TN_F64, TN_F32, TN_BF16};
    double tol[3] = {1e-12, 1e-5, 2e-2};
    for (int k = 0; k < 3; k++) {
        tn_tensor *a = mk(dts[k], 3, sh), *tr = NULL;
        int64_t n = tn_tensor_numel(a);
        for (int64_t i = 0; i < n; i++) put(a, i, val(i) * 10);
        CHECK_OK(tn_transpose(&tr, a, 1, 2));
        double *ref = malloc(sizeof(double) * (size_t)n), *g = malloc(sizeof(double) * (size_t)n);
        for (int lg = 0; lg < 2; lg++)
            for (int dim = 0; dim < 3; dim++)
                for (int strided = 0; strided < 2; strided++) {
                    const tn_tensor *in = strided ? tr : a;
                    tn_tensor *y = NULL;
                    CHECK_OK(tn_softmax(&y, in, dim, lg));
                    ref_softmax(ref, in, dim, lg);
                    int ok = y->dtype == dts[k];
                    for (int64_t i = 0; i < n; i++) ok &= close_to(at(y, i), ref[i], tol[k]);
                    if (!ok) fprintf(stderr, "  softmax log %d dim %d strided %d %s\n", lg, dim, strided, tn_dtype_name(dts[k]));
                    CHECK(ok);
                    /* backward against the formula in double */
                    tn_tensor *go = mk(dts[k], in->ndim, in->shape), *gi = NULL;
                    for (int64_t i = 0; i < n; i++) put(go, i, cos((double)i));
                    CHECK_OK(tn_softmax_backward(&gi, go, y, dim, lg));
                    int64_t O = 1, D = in->shape[dim], I = 1;
                    for (int d = 0; d < dim; d++) O *= in->shape[d];
                    for (int d = dim + 1; d < 3; d++) I *= in->shape[d];
                    for (int64_t o = 0; o < O; o++)
                        for (int64_t j = 0; j < I; j++) {
                            double s = 0;
                            for (int64_t d = 0; d < D; d++) {
                                int64_t i = (o * D + d) * I + j;
                                s += lg ? at(go, i) : at(go, i) * at(y, i);
                            }
                            for (int64_t d = 0; d < D; d++) {
                                int64_t i = (o * D + d) * I + j;
                                g[i] = lg ? at(go, i) - exp(at(y, i)) * s : at(y, i) * (at(go, i) - s);
                            }
                        }
                    ok = 1;
                    for (int64_t i = 0; i < n; i++) ok &= close_to(at(gi, i), g[i], tol[k] * 10);
                    if (!ok) fprintf(stderr, "  softmax_backward log %d dim %d %s\n", lg, dim, tn_dtype_name(dts[k]));
                    CHECK(ok);
                    tn_tensor_free(go); tn_tensor_free(gi); tn_tensor_free(y);
                }
        free(ref); free(g);
        tn_tensor_free(a); tn_tensor_free(tr);
    }
    /* stability, in place, large rows in parallel, errors */
    int64_t s2[2] = {2, 3};
    tn_tensor *b = mk(TN_F32, 2, s2), *y = NULL;
    double bv[6] = {1000, 1001, 1002, -1000, -1000, -INFINITY};
    for (int i = 0; i < 6; i++) put(b, i, bv[i]);
    CHECK_OK(tn_softmax(&y, b, 1, 0));
    CHECK(close_to(at(y, 2), 1 / (1 + exp(-1) + exp(-2)), 1e-6) && close_to(at(y, 3), 0.5, 1e-6) && at(y, 5) == 0);
    tn_tensor *ip = b;
    CHECK_OK(tn_softmax(&ip, b, 1, 1));
    CHECK(ip == b && close_to(at(b, 3), log(0.5), 1e-6) && isinf(at(b, 5)));
    int64_t s3[2] = {1000, 300};
    tn_tensor *l = mk(TN_F32, 2, s3), *ly = NULL;
    for (int64_t i = 0; i < 300000; i++) put(l, i, val(i));
    CHECK_OK(tn_softmax(&ly, l, 1, 0));
    int ok = 1;
    for (int64_t r = 0; r < 1000; r += 37) {
        double s = 0;
        for (int j = 0; j < 300; j++) s += at(ly, r * 300 + j);
        ok &= fabs(s - 1) < 1e-5;
    }
    CHECK(ok);
    tn_tensor *iv = mk(TN_I32, 2, s2), *bad = NULL;
    CHECK(tn_softmax(&bad, iv, 1, 0) == TN_ERR_DTYPE && bad == NULL);
    CHECK(tn_softmax(&bad, l, 2, 0) == TN_ERR_INDEX && strstr(tn_last_error(), "[1000, 300]"));
    tn_set_dim_base(1);
    CHECK(tn_softmax(&bad, l, 2, 0) == TN_ERR_INDEX && strstr(tn_last_error(), "softmax: dim 3 out of range for a [1000, 300]"));
    tn_set_dim_base(0);
    CHECK(tn_softmax_backward(&bad, l, b, 1, 0) == TN_ERR_SHAPE && bad == NULL);
    tn_tensor_free(b); tn_tensor_free(y); tn_tensor_free(l); tn_tensor_free(ly); tn_tensor_free(iv);
}

int main(void) {
    test_all_ops();
    test_int_and_errors();
    test_big_paths();
    test_row_sum_order();
    test_col_order();
    test_sum_to();
    test_softmax();
    return check_report("test_reduce");
}
