/*
 * reduce.c — tn_reduce, tn_max_dim, tn_sum_to (CPU; CUDA tensors go to cuda/reduce.cu).
 *
 * Gradient policy: forward only (the autograd builds reduction gradients in Lua; tn_sum_to
 * is itself the gradient of broadcasting and writes = into its preallocated out).
 * Ownership: `tn_tensor **out` per tern.h.
 *
 * Accumulation: f64 in double; f32 (and f16/bf16, converted to f32) in float, pairwise:
 * rows are summed in 256-element blocks of 16 lanes combined as a binary tree, so the error
 * grows with log(n), not n; column sums add blocks of 64 rows before adding into the total.
 * Integers: SUM/PROD in i64 (wrapping), MAX/MIN/ARG exact.
 *
 * Layout: a reduction is described by the flags red[d] (dim d reduced). When a is f32/f64
 * and contiguous, the output is contiguous, and the reduced dims (ignoring size-1 dims) are
 * one block, a is viewed as (O, R, I): I == 1 is a row reduction (each output reduces a
 * contiguous row; rows in parallel, or one big row split across threads for
 * SUM/MEAN/MAX/MIN), I > 1 a column reduction (SUM/MEAN/MAX/MIN/PROD vectorised along I;
 * parallel over (o, column chunk) or, for O == 1 with few columns, over row ranges).
 * Everything else gathers each output's reduced elements (strided, any dtype) into a
 * per-thread buffer of the compute type and runs the row kernel. The per-element steps and
 * row results (NaN-propagating max/min, ARG ties, mean, var, logsumexp) are kernels/reduce.h;
 * f32 LOGSUMEXP's exp sum uses vmath.h's vector expf on AVX2+FMA CPUs (same pairwise order).
 *
 * CUDA tensors (builds with TERN_HAVE_CUDA): the same checks and outputs, then the kept and
 * reduced iterators of the generic path go to cuda/reduce.cu (tn_cuda_reduce).
 */
#include <stdlib.h>

#include "internal.h"
#include "iter.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"
#include "vmath.h"

#ifdef TERN_HAVE_CUDA
/* cuda/reduce.cu: every output of a reduction whose operands are CUDA tensors, on the current
 * device and stream (asynchronous). kept: the finished iterator over the kept dims, one entry
 * per output (numel M >= 1), operands 0 = out (odtype: i64 indices for ARGMAX / ARGMIN), 1 = a
 * (adtype), 2 = values (vdtype, tn_max_dim; vdtype -1 and nops 2 without); reduced: the
 * finished iterator over a's reduced dims (numel N >= 0, operand 0 = a's strides, data unused),
 * N >= 1 for MAX / MIN / ARG*. op a tn_redop, correction VAR's. Accumulates as the CPU does
 * (f32 for f32 / f16 / bf16, f64 for f64, wrapping i64 for integers); integer results are
 * truncated into an integer out dtype. */
tn_status tn_cuda_reduce(const tn_iter *kept, const tn_iter *reduced, int32_t op, int32_t correction,
                         int32_t adtype, int32_t odtype, int32_t vdtype);
#endif

static const char *const redop_names[TN_NUM_REDOPS] = {"sum", "mean", "max", "min", "prod",
                                                       "logsumexp", "var", "argmax", "argmin"};

static int is_arg(int32_t op) { return op == TN_RED_ARGMAX || op == TN_RED_ARGMIN; }

typedef struct red_val {
    double f;    /* float result */
    int64_t i;   /* integer result */
    int64_t arg; /* ARGMAX/ARGMIN index */
} red_val;

/* ---- row kernels on contiguous compute-type arrays ------------------------------------------ */

#define E_ID(v, c) (v)
#define E_SQF(v, c) tn_red_sqdev_f((v), (c))
#define E_SQD(v, c) tn_red_sqdev_d((v), (c))
#define E_EXPF(v, c) tn_red_expdev_f((v), (c))
#define E_EXPD(v, c) tn_red_expdev_d((v), (c))

/* Pairwise sum of EXPR(x[i], c): 16 lanes per block of <= 256, blocks combined as a tree. */
#define PAIRWISE(name, T, EXPR)                                                                \
    static T name(const T *x, int64_t n, T c) {                                                \
        if (n > 256) {                                                                         \
            int64_t h = ((n >> 1) + 15) & ~(int64_t)15;                                        \
            return name(x, h, c) + name(x + h, n - h, c);                                      \
        }                                                                                      \
        T acc[16] = {0};                                                                       \
        int64_t i = 0;                                                                         \
        for (; i + 16 <= n; i += 16)                                                           \
            for (int j = 0; j < 16; j++) acc[j] += EXPR(x[i + j], c);                          \
        T r = 0;                                                                               \
        for (; i < n; i++) r += EXPR(x[i], c);                                                 \
        for (int w = 8; w >= 1; w >>= 1)                                                       \
            for (int j = 0; j < w; j++) acc[j] += acc[j + w];                                  \
        return acc[0] + r;                                                                     \
    }

/* NaN-propagating max (is_min = 0) or min of x[0..n), n >= 1. A NaN lane stays NaN. */
#define MAXMIN(name, T, S)                                                                     \
    static T name(const T *x, int64_t n, int is_min) {                                         \
        T m[16];                                                                               \
        for (int j = 0; j < 16; j++) m[j] = x[0];                                              \
        int64_t i = 0;                                                                         \
        if (is_min) {                                                                          \
            for (; i + 16 <= n; i += 16)                                                       \
                for (int j = 0; j < 16; j++) m[j] = tn_red_min_##S(m[j], x[i + j]);            \
            for (; i < n; i++) m[0] = tn_red_min_##S(m[0], x[i]);                              \
            for (int j = 1; j < 16; j++) m[0] = tn_red_min_##S(m[0], m[j]);                    \
        } else {                                                                               \
            for (; i + 16 <= n; i += 16)                                                       \
                for (int j = 0; j < 16; j++) m[j] = tn_red_max_##S(m[j], x[i + j]);            \
            for (; i < n; i++) m[0] = tn_red_max_##S(m[0], x[i]);                              \
            for (int j = 1; j < 16; j++) m[0] = tn_red_max_##S(m[0], m[j]);                    \
        }                                                                                      \
        return m[0];                                                                           \
    }

/* sum of exp(x[i] - c), i < n (LOGSUMEXP's second pass): pexp_f / pexp_d, or for f32 on
 * AVX2+FMA CPUs pexp_f_avx2 (defined after ROW_REDUCE) */
static float lse_sum_f(const float *x, int64_t n, float c);
static double lse_sum_d(const double *x, int64_t n, double c);
/* pairwise sum of x[i], i < n (SUM, MEAN, VAR's mean): psum_f / psum_d, or for f32 on AVX2+FMA
 * CPUs psum_f_avx2 (the same order, bit for bit) */
static float sum_f(const float *x, int64_t n);
static double sum_d(const double *x, int64_t n);

#define ROW_REDUCE(name, T, S, SQF, EXPF)                                                      \
    PAIRWISE(psum_##S, T, E_ID)                                                                \
    PAIRWISE(psq_##S, T, SQF)                                                                  \
    PAIRWISE(pexp_##S, T, EXPF)                                                                \
    MAXMIN(maxmin_##S, T, S)                                                                   \
    static red_val name(const T *x, int64_t n, int32_t op, int32_t corr) {                     \
        red_val r = {0, 0, 0};                                                                 \
        switch (op) {                                                                          \
        case TN_RED_SUM: r.f = sum_##S(x, n); break;                                           \
        case TN_RED_MEAN: r.f = tn_red_mean_##S(sum_##S(x, n), n); break; /* n == 0: NaN */     \
        case TN_RED_PROD: {                                                                    \
            T p = 1;                                                                           \
            for (int64_t i = 0; i < n; i++) p *= x[i];                                         \
            r.f = p;                                                                           \
            break;                                                                             \
        }                                                                                      \
        case TN_RED_MAX:                                                                       \
        case TN_RED_MIN: r.f = maxmin_##S(x, n, op == TN_RED_MIN); break;                      \
        case TN_RED_LOGSUMEXP: {                                                               \
            if (n == 0) { r.f = -INFINITY; break; }                                            \
            T m = maxmin_##S(x, n, 0);                                                         \
            r.f = tn_red_lse_##S(m, tn_red_lse_direct_##S(m) ? 0 : lse_sum_##S(x, n, m));      \
            break;                                                                             \
        }                                                                                      \
        case TN_RED_VAR: {                                                                     \
            T mean = tn_red_mean_##S(sum_##S(x, n), n);                                        \
            r.f = tn_red_var_##S(psq_##S(x, n, mean), n, corr);                                \
            break;                                                                             \
        }                                                                                      \
        default: { /* ARGMAX / ARGMIN: first extreme; the first NaN wins, like torch */        \
            int64_t b = 0;                                                                     \
            int is_min = op == TN_RED_ARGMIN;                                                  \
            for (int64_t i = 1; i < n && x[b] == x[b]; i++)                                    \
                if (tn_red_arg_later_##S(x[i], x[b], is_min)) b = i;                            \
            r.arg = b;                                                                         \
            r.f = n > 0 ? x[b] : 0;                                                            \
            break;                                                                             \
        }                                                                                      \
        }                                                                                      \
        return r;                                                                              \
    }

ROW_REDUCE(row_f32, float, f, E_SQF, E_EXPF)
ROW_REDUCE(row_f64, double, d, E_SQD, E_EXPD)

#ifdef TN_AVX2_BUILD
/* pexp_f with vmath.h's exp: the same blocks, 16 lanes (two vectors) and tree, the tail summed
 * in order. */
TN_VMATH_AVX2 static float pexp_f_avx2(const float *x, int64_t n, float c) {
    if (n > 256) {
        int64_t h = ((n >> 1) + 15) & ~(int64_t)15;
        return pexp_f_avx2(x, h, c) + pexp_f_avx2(x + h, n - h, c);
    }
    const __m256 vc = _mm256_set1_ps(c);
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_ps(a0, tn_vexp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vc)));
        a1 = _mm256_add_ps(a1, tn_vexp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vc)));
    }
    float t[16], r = 0;
    for (int64_t j = 0; j < n - i; j++) t[j] = x[i + j] - c;
    tn_vexp_f32_contig(t, t, n - i);
    for (int64_t j = 0; j < n - i; j++) r += t[j];
    return tn_vhsum8(_mm256_add_ps(a0, a1)) + r;
}

/* psum_f with AVX2: the same blocks, 16 lanes as two vectors, the same tree (tn_vhsum8 of
 * a0 + a1 adds lane j + 8, then j + 4, j + 2, j + 1, as PAIRWISE does), the tail in order;
 * so the same bits as psum_f, about twice as fast on rows in cache. */
TN_VMATH_AVX2 static float psum_f_avx2(const float *x, int64_t n) {
    if (n > 256) {
        int64_t h = ((n >> 1) + 15) & ~(int64_t)15;
        return psum_f_avx2(x, h) + psum_f_avx2(x + h, n - h);
    }
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
    }
    float r = 0;
    for (; i < n; i++) r += x[i];
    return tn_vhsum8(_mm256_add_ps(a0, a1)) + r;
}
#endif

static float sum_f(const float *x, int64_t n) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) return psum_f_avx2(x, n);
#endif
    return psum_f(x, n, 0);
}
static double sum_d(const double *x, int64_t n) { return psum_d(x, n, 0); }

static float lse_sum_f(const float *x, int64_t n, float c) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) return pexp_f_avx2(x, n, c);
#endif
    return pexp_f(x, n, c);
}
static double lse_sum_d(const double *x, int64_t n, double c) { return pexp_d(x, n, c); }

static red_val row_i64(const int64_t *x, int64_t n, int32_t op) {
    red_val r = {0, 0, 0};
    switch (op) {
    case TN_RED_SUM: {
        int64_t s = 0;
        for (int64_t i = 0; i < n; i++) s = tn_add_i64(s, x[i]);
        r.i = s;
        break;
    }
    case TN_RED_PROD: {
        int64_t p = 1;
        for (int64_t i = 0; i < n; i++) p = tn_mul_i64(p, x[i]);
        r.i = p;
        break;
    }
    case TN_RED_MAX:
    case TN_RED_MIN: {
        int64_t m = x[0];
        for (int64_t i = 1; i < n; i++) m = op == TN_RED_MIN ? tn_red_min_i64(m, x[i]) : tn_red_max_i64(m, x[i]);
        r.i = m;
        break;
    }
    default: { /* ARG */
        int64_t b = 0;
        for (int64_t i = 1; i < n; i++)
            if (tn_red_arg_later_i64(x[i], x[b], op == TN_RED_ARGMIN)) b = i;
        r.arg = b;
        r.i = n > 0 ? x[b] : 0;
        break;
    }
    }
    return r;
}

/* ---- column kernels: dst[j] = reduce_r a[r*ld + j], j < cw (SUM MEAN(as sum) MAX MIN PROD) -- */

/* COLW: the widest column chunk (blk is COLW of T on the stack); a chunk this wide reads whole
 * rows of up to COLW elements as one sequential stream (narrower chunks of many rows jump a row
 * stride every few cache lines: a TLB miss and a cold prefetch per row). COLMIN: the narrowest
 * chunk run_cols cuts to give each thread its own columns; below that it splits rows instead.
 * A column's order (blocks of COLBLK rows, in order) does not depend on the chunk. */
enum { COLW = 4096, COLMIN = 256, COLBLK = 64 };

/* ATTR: empty, or TN_VMATH_AVX2 for an AVX2 build of the same loops (the same order). Rows are
 * added four at a time, ((((blk + r) + r1) + r2) + r3) per column: the order of one at a time,
 * with a quarter of the loads and stores of blk. */
#define COL_REDUCE(name, T, S, ATTR)                                                           \
    ATTR static void name(T *dst, const T *a, int64_t R, int64_t ld, int64_t cw, int32_t op) { \
        if (op == TN_RED_SUM || op == TN_RED_MEAN) {                                           \
            T blk[COLW];                                                                       \
            for (int64_t j = 0; j < cw; j++) dst[j] = 0;                                       \
            for (int64_t r0 = 0; r0 < R; r0 += COLBLK) {                                       \
                int64_t r1 = r0 + COLBLK < R ? r0 + COLBLK : R, r = r0 + 1;                    \
                const T *row = a + r0 * ld;                                                    \
                _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) blk[j] = row[j];          \
                for (; r + 4 <= r1; r += 4) {                                                  \
                    const T *q0 = a + r * ld, *q1 = q0 + ld, *q2 = q1 + ld, *q3 = q2 + ld;     \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++)                       \
                        blk[j] = (((blk[j] + q0[j]) + q1[j]) + q2[j]) + q3[j];                 \
                }                                                                              \
                for (; r < r1; r++) {                                                          \
                    row = a + r * ld;                                                          \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) blk[j] += row[j];     \
                }                                                                              \
                _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) dst[j] += blk[j];         \
            }                                                                                  \
        } else if (op == TN_RED_PROD) {                                                        \
            for (int64_t j = 0; j < cw; j++) dst[j] = 1;                                       \
            for (int64_t r = 0; r < R; r++) {                                                  \
                const T *row = a + r * ld;                                                     \
                _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) dst[j] *= row[j];         \
            }                                                                                  \
        } else { /* MAX / MIN, R >= 1, NaN sticks */                                           \
            for (int64_t j = 0; j < cw; j++) dst[j] = a[j];                                    \
            const int is_min = op == TN_RED_MIN;                                               \
            for (int64_t r = 1; r < R; r++) {                                                  \
                const T *row = a + r * ld;                                                     \
                if (is_min) {                                                                  \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) dst[j] =              \
                        tn_red_min_##S(dst[j], row[j]);                                        \
                } else {                                                                       \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) dst[j] =              \
                        tn_red_max_##S(dst[j], row[j]);                                        \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

COL_REDUCE(col_f32_plain, float, f, )
COL_REDUCE(col_f64, double, d, )
#ifdef TN_AVX2_BUILD
COL_REDUCE(col_f32_avx2, float, f, TN_VMATH_AVX2)
#endif

static void col_f32(float *dst, const float *a, int64_t R, int64_t ld, int64_t cw, int32_t op) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) { col_f32_avx2(dst, a, R, ld, cw, op); return; }
#endif
    col_f32_plain(dst, a, R, ld, cw, op);
}

static double combine(double x, double y, int32_t op) {
    switch (op) {
    case TN_RED_PROD: return x * y;
    case TN_RED_MAX: return tn_red_max_d(x, y);
    case TN_RED_MIN: return tn_red_min_d(x, y);
    default: return x + y;
    }
}

/* ---- the plan and its executors ------------------------------------------------------------- */

typedef struct red_plan {
    const tn_tensor *a;
    const uint8_t *red;  /* (a->ndim) 1 = reduced */
    int32_t op, corr;
    char *odata;         /* output: index for ARG ops, else the value */
    int32_t odt;
    const int64_t *ostr; /* (a->ndim) output strides per a dim, 0 for reduced dims */
    char *vdata;         /* optional values of ARG ops (tn_max_dim) */
    int32_t vdt;
    const int64_t *vstr;
    int64_t N, M;        /* reduced count, output count */
} red_plan;

static void store_val(const red_plan *P, char *o, char *v, red_val r, int intc) {
    if (is_arg(P->op)) {
        *(int64_t *)o = r.arg;
        o = v; /* the value goes to vdata, when there is one */
        if (!o) return;
    }
    int32_t dt = is_arg(P->op) ? P->vdt : P->odt;
    if (!intc) tn_store_f64(o, dt, r.f);
    else if (dt == TN_I64) *(int64_t *)o = r.i;
    else if (dt == TN_I32) *(int32_t *)o = (int32_t)r.i;
    else if (dt == TN_U8) *(uint8_t *)o = (uint8_t)r.i;
    else tn_store_f64(o, dt, (double)r.i);
}

static int contiguous_kept(const tn_tensor *a, const uint8_t *red, const int64_t *str) {
    int64_t e = 1;
    for (int32_t d = a->ndim - 1; d >= 0; d--) {
        if (red[d] || a->shape[d] == 1) continue;
        if (str[d] != e) return 0;
        e *= a->shape[d];
    }
    return 1;
}

/* (O, R, I) when the reduced dims (size-1 dims ignored) form one block; 0 if not. */
static int block_shape(const tn_tensor *a, const uint8_t *red, int64_t *O, int64_t *R, int64_t *I) {
    int phase = 0; /* 0 before the block, 1 inside, 2 after */
    *O = *R = *I = 1;
    for (int32_t d = 0; d < a->ndim; d++) {
        int64_t n = a->shape[d];
        if (n == 1) continue;
        if (red[d]) {
            if (phase == 2) return 0;
            phase = 1;
            *R *= n;
        } else {
            if (phase == 1) phase = 2;
            if (phase == 0) *O *= n; else *I *= n;
        }
    }
    return 1;
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}
static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Row path: contiguous f32/f64 a viewed as (O, R), one output per row. */
static void run_rows(const red_plan *P, int64_t O, int64_t R) {
    const int dbl = P->a->dtype == TN_F64;
    const int64_t es = dbl ? 8 : 4, oes = (int64_t)tn_dtype_size(P->odt);
    const int64_t ves = P->vdata ? (int64_t)tn_dtype_size(P->vdt) : 0;
    const char *a = P->a->data;
    int nt = tn_par_threads(O * R, TN_PAR_MIN);
    int32_t op = P->op;
    if (O == 1 && nt > 1 && (op == TN_RED_SUM || op == TN_RED_MEAN || op == TN_RED_MAX || op == TN_RED_MIN)) {
        /* one long row split across threads; partials combined in thread order */
        double part[256];
        if (nt > 256) nt = 256;
        int64_t chunk = ((R + nt - 1) / nt + 255) & ~(int64_t)255;
        int32_t pop = op == TN_RED_MEAN ? TN_RED_SUM : op;
        int used = (int)((R + chunk - 1) / chunk);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int t = 0; t < used; t++) {
            int64_t r0 = t * chunk, r1 = r0 + chunk < R ? r0 + chunk : R;
            red_val v = dbl ? row_f64((const double *)a + r0, r1 - r0, pop, 0)
                            : row_f32((const float *)a + r0, r1 - r0, pop, 0);
            part[t] = v.f;
        }
        double acc = part[0];
        for (int t = 1; t < used; t++) acc = dbl ? combine(acc, part[t], pop) : (double)(float)combine(acc, part[t], pop);
        red_val r = {op == TN_RED_MEAN ? (dbl ? tn_red_mean_d(acc, R) : (double)tn_red_mean_f((float)acc, R)) : acc, 0, 0};
        store_val(P, P->odata, NULL, r, 0);
        return;
    }
    TN_PARALLEL_FOR(nt, o, O, {
        const char *row = a + o * R * es;
        red_val v = dbl ? row_f64((const double *)row, R, op, P->corr) : row_f32((const float *)row, R, op, P->corr);
        store_val(P, P->odata + o * oes, P->vdata ? P->vdata + o * ves : NULL, v, 0);
    });
}

/* Column path: contiguous f32/f64 a viewed as (O, R, I), output (O, I) contiguous. */
static tn_status run_cols(const red_plan *P, int64_t O, int64_t R, int64_t I) {
    const int dbl = P->a->dtype == TN_F64;
    const int32_t op = P->op;
    int nt = tn_par_threads(O * R * I, TN_PAR_MIN);
    /* chunks of cwid columns (a multiple of 16, <= COLW); narrower, down to COLMIN, when that
     * gives every thread a chunk: threads then own columns and the result does not depend on
     * the thread count */
    int64_t cwid = COLW;
    if (nt > 1 && O < nt) {
        int64_t per = (nt + O - 1) / O, w = ((I + per - 1) / per + 15) & ~(int64_t)15;
        if (w < cwid) cwid = w > COLMIN ? w : COLMIN;
    }
    const int64_t nchunk = (I + cwid - 1) / cwid, items = O * nchunk;
    if (O == 1 && items < nt && R >= 2 * nt) {
        /* few columns, many rows: each thread reduces a range of rows into its own partial */
        size_t es = dbl ? 8 : 4;
        char *part = malloc((size_t)nt * (size_t)I * es); /* (nt, I) */
        if (!part) return tn_error(TN_ERR_OOM, "%s: out of memory for %d partial rows of %lld", redop_names[op], nt, (long long)I);
        int64_t rch = (R + nt - 1) / nt;
        int used = (int)((R + rch - 1) / rch);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int t = 0; t < used; t++) {
            int64_t r0 = t * rch, r1 = r0 + rch < R ? r0 + rch : R;
            for (int64_t j0 = 0; j0 < I; j0 += cwid) {
                int64_t cw = I - j0 < cwid ? I - j0 : cwid;
                if (dbl) col_f64((double *)part + t * I + j0, (const double *)P->a->data + r0 * I + j0, r1 - r0, I, cw, op);
                else col_f32((float *)part + t * I + j0, (const float *)P->a->data + r0 * I + j0, r1 - r0, I, cw, op);
            }
        }
        for (int64_t j = 0; j < I; j++) {
            if (dbl) {
                double *q = (double *)part, acc = q[j];
                for (int t = 1; t < used; t++) acc = combine(acc, q[t * I + j], op);
                ((double *)P->odata)[j] = op == TN_RED_MEAN ? tn_red_mean_d(acc, R) : acc;
            } else {
                float *q = (float *)part, acc = q[j];
                for (int t = 1; t < used; t++) acc = (float)combine(acc, q[t * I + j], op);
                ((float *)P->odata)[j] = op == TN_RED_MEAN ? tn_red_mean_f(acc, R) : acc;
            }
        }
        free(part);
        return TN_OK;
    }
    TN_PARALLEL_FOR(nt, it, items, {
        int64_t o = it / nchunk, j0 = (it % nchunk) * cwid;
        int64_t cw = I - j0 < cwid ? I - j0 : cwid;
        if (dbl) {
            double *dst = (double *)P->odata + o * I + j0;
            col_f64(dst, (const double *)P->a->data + o * R * I + j0, R, I, cw, op);
            if (op == TN_RED_MEAN) for (int64_t j = 0; j < cw; j++) dst[j] = tn_red_mean_d(dst[j], R);
        } else {
            float *dst = (float *)P->odata + o * I + j0;
            col_f32(dst, (const float *)P->a->data + o * R * I + j0, R, I, cw, op);
            if (op == TN_RED_MEAN) for (int64_t j = 0; j < cw; j++) dst[j] = tn_red_mean_f(dst[j], R);
        }
    });
    return TN_OK;
}

/* Generic path: gather each output's reduced elements into a compute-type buffer. */
typedef struct gather_ctx {
    char *buf;
    int64_t pos;
    int32_t dt, ctype; /* ctype: TN_F32, TN_F64 or TN_I64 */
} gather_ctx;

static void gather_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    gather_ctx *g = (gather_ctx *)ctx;
    const int64_t es = (int64_t)tn_dtype_size(g->dt), st = s[0] * es;
    const char *x = p[0];
    if (g->ctype == TN_F32) {
        float *b = (float *)g->buf + g->pos;
        if (g->dt == TN_F32) for (int64_t i = 0; i < n; i++) b[i] = *(const float *)(x + i * st);
        else if (g->dt == TN_F16) for (int64_t i = 0; i < n; i++) b[i] = tn_half_to_float(*(const uint16_t *)(x + i * st));
        else for (int64_t i = 0; i < n; i++) b[i] = tn_bf16_to_float(*(const uint16_t *)(x + i * st));
    } else if (g->ctype == TN_F64) {
        double *b = (double *)g->buf + g->pos;
        for (int64_t i = 0; i < n; i++) b[i] = *(const double *)(x + i * st);
    } else {
        int64_t *b = (int64_t *)g->buf + g->pos;
        for (int64_t i = 0; i < n; i++) b[i] = tn_load_i64(x + i * st, g->dt);
    }
    g->pos += n;
}

typedef struct gen_ctx {
    const red_plan *P;
    const tn_iter *rit; /* the reduced dims of a (operand 0 = a, data replaced per output) */
    int32_t ctype;
    char *bufs;         /* (threads, N) compute-type buffers */
    size_t bufbytes;
} gen_ctx;

static void gen_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    const gen_ctx *G = (const gen_ctx *)ctx;
    const red_plan *P = G->P;
    const int64_t oes = (int64_t)tn_dtype_size(P->odt), aes = (int64_t)tn_dtype_size(P->a->dtype);
    const int64_t ves = P->vdata ? (int64_t)tn_dtype_size(P->vdt) : 0;
    tn_iter rit = *G->rit;
    char *buf = G->bufs + (size_t)thread_id() * G->bufbytes;
    const int direct = rit.ndim == 1 && rit.stride[0][0] == 1 && P->a->dtype == G->ctype; /* rows as they are */
    for (int64_t i = 0; i < n; i++) {
        char *abase = p[1] + i * s[1] * aes;
        const char *x = abase;
        if (!direct) {
            gather_ctx g = {buf, 0, P->a->dtype, G->ctype};
            rit.data[0] = abase;
            if (P->N > 0) tn_iter_range(&rit, 0, P->N, gather_kernel, &g);
            x = buf;
        }
        red_val r;
        if (G->ctype == TN_F32) r = row_f32((const float *)x, P->N, P->op, P->corr);
        else if (G->ctype == TN_F64) r = row_f64((const double *)x, P->N, P->op, P->corr);
        else r = row_i64((const int64_t *)x, P->N, P->op);
        store_val(P, p[0] + i * s[0] * oes, P->vdata ? p[2] + i * s[2] * ves : NULL, r, G->ctype == TN_I64);
    }
}

/* The two iterators of a reduction: kit over the kept dims (one entry per output; operands
 * 0 = output, 1 = a, 2 = values when P->vdata) and rit over the reduced dims of a (operand 0 =
 * a; linear element r is the row-major position among the reduced dims, the ARG index). */
static void build_iters(const red_plan *P, tn_iter *kit, tn_iter *rit) {
    const tn_tensor *a = P->a;
    int64_t kshape[TN_MAX_DIMS], rshape[TN_MAX_DIMS];
    for (int32_t d = 0; d < a->ndim; d++) {
        kshape[d] = P->red[d] ? 1 : a->shape[d];
        rshape[d] = P->red[d] ? a->shape[d] : 1;
    }
    tn_iter_init(kit, a->ndim, kshape);
    tn_iter_add(kit, P->odata, tn_dtype_size(P->odt), a->ndim, kshape, P->ostr);
    tn_iter_add(kit, a->data, tn_dtype_size(a->dtype), a->ndim, kshape, a->strides);
    if (P->vdata) tn_iter_add(kit, P->vdata, tn_dtype_size(P->vdt), a->ndim, kshape, P->vstr);
    tn_iter_finish(kit);
    tn_iter_init(rit, a->ndim, rshape);
    tn_iter_add(rit, a->data, tn_dtype_size(a->dtype), a->ndim, rshape, a->strides);
    tn_iter_finish(rit);
}

static tn_status run_generic(const red_plan *P) {
    const tn_tensor *a = P->a;
    tn_iter kit, rit;
    build_iters(P, &kit, &rit);

    int32_t ctype = tn_is_int_dtype(a->dtype) ? TN_I64 : a->dtype == TN_F64 ? TN_F64 : TN_F32;
    size_t bufbytes = ((size_t)(P->N > 0 ? P->N : 1) * tn_dtype_size(ctype) + 63) & ~(size_t)63;
    int nt = tn_par_threads(P->M * (P->N > 0 ? P->N : 1), TN_PAR_MIN);
    if (nt > P->M) nt = (int)P->M;
    if (nt > 1 && (size_t)nt * bufbytes > ((size_t)64 << 20)) nt = 1; /* keep buffers bounded */
    if (nt < 1) nt = 1;
    int all = max_threads(); /* thread ids index buffers: size for the team */
    size_t nbuf = nt > 1 ? (size_t)all : 1;
    char *bufs = malloc(nbuf * bufbytes);
    if (!bufs)
        return tn_error(TN_ERR_OOM, "%s: out of memory for a %lld-element gather buffer (a %s)", redop_names[P->op],
                        (long long)P->N, TN_SHAPE(a));
    gen_ctx G = {P, &rit, ctype, bufs, bufbytes};
    if (nt > 1) tn_iter_run(&kit, gen_kernel, &G, 1);
    else tn_iter_range(&kit, 0, kit.numel, gen_kernel, &G);
    free(bufs);
    return TN_OK;
}

static tn_status reduce_run(red_plan *P) {
    const tn_tensor *a = P->a;
    P->N = 1;
    P->M = 1;
    for (int32_t d = 0; d < a->ndim; d++) {
        if (P->red[d]) P->N *= a->shape[d];
        else P->M *= a->shape[d];
    }
    if ((P->op == TN_RED_MAX || P->op == TN_RED_MIN || is_arg(P->op)) && P->N == 0)
        return tn_error(TN_ERR_SHAPE, "%s: cannot reduce over an empty dim (a %s %s)", redop_names[P->op], TN_SHAPE(a),
                        tn_dtype_name(a->dtype));
    if (P->M == 0) return TN_OK;
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) {
        tn_iter kit, rit;
        build_iters(P, &kit, &rit);
        return tn_cuda_reduce(&kit, &rit, P->op, P->corr, a->dtype, P->odt, P->vdata ? P->vdt : -1);
    }
#endif
    int64_t O, R, I;
    if ((a->dtype == TN_F32 || a->dtype == TN_F64) && P->N > 0 && tn_tensor_is_contiguous(a) &&
        contiguous_kept(a, P->red, P->ostr) && (!P->vdata || contiguous_kept(a, P->red, P->vstr)) &&
        block_shape(a, P->red, &O, &R, &I)) {
        if (I == 1) { run_rows(P, O, R); return TN_OK; }
        if (P->op == TN_RED_SUM || P->op == TN_RED_MEAN || P->op == TN_RED_MAX || P->op == TN_RED_MIN ||
            P->op == TN_RED_PROD)
            return run_cols(P, O, R, I);
    }
    return run_generic(P);
}

/* ---- entry points ------------------------------------------------------------------------------ */

static tn_status check_a(const char *op, const tn_tensor *a) {
    TN_TRY(tn_check_tensor(op, "a", a));
    TN_TRY(tn_check_backend(op, a));
    if (a->dtype < 0 || a->dtype >= TN_NUM_DTYPES) return tn_error(TN_ERR_DTYPE, "%s: invalid dtype %d", op, (int)a->dtype);
    return TN_OK;
}

/* Output strides per a dim (0 for reduced dims) for an out of keepdim or squeezed shape. */
static void map_strides(int64_t *str, const tn_tensor *a, const uint8_t *red, const tn_tensor *out, int keepdim) {
    int32_t od = 0;
    for (int32_t d = 0; d < a->ndim; d++) {
        if (red[d]) { str[d] = 0; if (keepdim) od++; }
        else str[d] = out->strides[od++];
    }
}

tn_status tn_reduce(tn_tensor **out, const tn_tensor *a, int32_t ndims, const int32_t *dims, int32_t op,
                    int32_t keepdim, int32_t correction) {
    if (op < 0 || op >= TN_NUM_REDOPS) return tn_error(TN_ERR_ARG, "reduce: invalid op %d", (int)op);
    const char *name = redop_names[op];
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", name);
    TN_TRY(check_a(name, a));
    if (ndims < 0 || ndims > a->ndim || (ndims > 0 && !dims))
        return tn_error(TN_ERR_ARG, "%s: %d dims for a %s", name, (int)ndims, TN_SHAPE(a));
    if (is_arg(op) && ndims > 1)
        return tn_error(TN_ERR_ARG, "%s: takes one dim or all, got %d dims (a %s)", name, (int)ndims, TN_SHAPE(a));
    uint8_t red[TN_MAX_DIMS] = {0};
    for (int32_t i = 0; i < ndims; i++) {
        if (dims[i] < 0 || dims[i] >= a->ndim)
            return tn_error(TN_ERR_INDEX, "%s: dim %lld out of range for a %s (%s)", name, TN_D(dims[i]), TN_SHAPE(a),
                            tn_dtype_name(a->dtype));
        if (red[dims[i]]) return tn_error(TN_ERR_ARG, "%s: dim %lld listed twice (a %s)", name, TN_D(dims[i]), TN_SHAPE(a));
        red[dims[i]] = 1;
    }
    if (ndims == 0) for (int32_t d = 0; d < a->ndim; d++) red[d] = 1;
    int32_t dt = a->dtype;
    if ((op == TN_RED_MEAN || op == TN_RED_LOGSUMEXP || op == TN_RED_VAR) && !tn_is_float_dtype(dt))
        return tn_error(TN_ERR_DTYPE, "%s: needs a float dtype, got %s (a %s)", name, tn_dtype_name(dt), TN_SHAPE(a));
    int32_t odt = is_arg(op) ? TN_I64 : (tn_is_int_dtype(dt) && (op == TN_RED_SUM || op == TN_RED_PROD)) ? TN_I64 : dt;
    int64_t oshape[TN_MAX_DIMS];
    int32_t ondim = 0;
    for (int32_t d = 0; d < a->ndim; d++) {
        if (!red[d]) oshape[ondim++] = a->shape[d];
        else if (keepdim) oshape[ondim++] = 1;
    }
    int allocated = *out == NULL;
    TN_TRY(tn_prepare_out(name, out, ondim, oshape, odt, a->device));
#ifdef TERN_HAVE_CUDA
    if (!allocated && a->device == TN_CUDA) TN_TRY(tn_check_same_device(name, *out, a)); /* the same GPU */
#endif
    int64_t ostr[TN_MAX_DIMS];
    map_strides(ostr, a, red, *out, keepdim);
    red_plan P = {a, red, op, correction, (*out)->data, odt, ostr, NULL, 0, NULL, 0, 0};
    tn_status st = reduce_run(&P);
    if (st != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
    return st;
}

tn_status tn_max_dim(tn_tensor **values, tn_tensor **indices, const tn_tensor *a, int32_t dim, int32_t keepdim,
                     int32_t is_min) {
    const char *name = is_min ? "min" : "max";
    if (!values || !indices) return tn_error(TN_ERR_ARG, "%s: values or indices is NULL", name);
    TN_TRY(check_a(name, a));
    if (dim < 0 || dim >= (a->ndim > 0 ? a->ndim : 1))
        return tn_error(TN_ERR_INDEX, "%s: dim %lld out of range for a %s (%s)", name, TN_D(dim), TN_SHAPE(a),
                        tn_dtype_name(a->dtype));
    uint8_t red[TN_MAX_DIMS] = {0};
    if (a->ndim > 0) red[dim] = 1;
    int64_t oshape[TN_MAX_DIMS];
    int32_t ondim = 0;
    for (int32_t d = 0; d < a->ndim; d++) {
        if (!red[d]) oshape[ondim++] = a->shape[d];
        else if (keepdim) oshape[ondim++] = 1;
    }
    int av = *values == NULL, ai = *indices == NULL;
    TN_TRY(tn_prepare_out(name, values, ondim, oshape, a->dtype, a->device));
    tn_status st = tn_prepare_out(name, indices, ondim, oshape, TN_I64, a->device);
#ifdef TERN_HAVE_CUDA
    if (st == TN_OK && a->device == TN_CUDA) { /* preallocated outputs on the same GPU */
        st = tn_check_same_device(name, *values, a);
        if (st == TN_OK) st = tn_check_same_device(name, *indices, a);
    }
#endif
    if (st == TN_OK) {
        int64_t vstr[TN_MAX_DIMS], istr[TN_MAX_DIMS];
        map_strides(vstr, a, red, *values, keepdim);
        map_strides(istr, a, red, *indices, keepdim);
        red_plan P = {a, red, is_min ? TN_RED_ARGMIN : TN_RED_ARGMAX, 0, (*indices)->data, TN_I64, istr,
                      (*values)->data, a->dtype, vstr, 0, 0};
        st = reduce_run(&P);
    }
    if (st != TN_OK) {
        if (av) { tn_tensor_free(*values); *values = NULL; }
        if (ai) { tn_tensor_free(*indices); *indices = NULL; }
    }
    return st;
}

tn_status tn_sum_to(tn_tensor *out, const tn_tensor *a) {
    TN_TRY(tn_check_tensor("sum_to", "out", out));
    TN_TRY(check_a("sum_to", a));
    TN_TRY(tn_check_backend("sum_to", out));
    TN_TRY(tn_check_same_device("sum_to", out, a));
    if (out->dtype != a->dtype)
        return tn_error(TN_ERR_DTYPE, "sum_to: out dtype %s differs from a dtype %s (out %s, a %s)",
                        tn_dtype_name(out->dtype), tn_dtype_name(a->dtype), TN_SHAPE(out), TN_SHAPE(a));
    int32_t lead = a->ndim - out->ndim;
    int ok = lead >= 0;
    uint8_t red[TN_MAX_DIMS] = {0};
    int any = 0;
    for (int32_t d = 0; ok && d < a->ndim; d++) {
        if (d < lead) { red[d] = 1; any = 1; continue; }
        int64_t os = out->shape[d - lead];
        if (os == a->shape[d]) continue;
        if (os != 1) ok = 0;
        else { red[d] = 1; any = 1; }
    }
    if (!ok)
        return tn_error(TN_ERR_SHAPE, "sum_to: out %s does not broadcast to a %s (%s)", TN_SHAPE(out), TN_SHAPE(a),
                        tn_dtype_name(a->dtype));
    if (!any) return tn_copy(out, a);
    int64_t ostr[TN_MAX_DIMS];
    for (int32_t d = 0; d < a->ndim; d++) ostr[d] = red[d] ? 0 : out->strides[d - lead];
    /* integers sum in i64 and are stored (truncated) into out's dtype */
    red_plan P = {a, red, TN_RED_SUM, 0, out->data, out->dtype, ostr, NULL, 0, NULL, 0, 0};
    return reduce_run(&P);
}
