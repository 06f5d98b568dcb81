/*
 * softmax.c — tn_softmax and tn_softmax_backward (softmax and log_softmax): CPU; CUDA tensors go
 * to cuda/softmax.cu.
 *
 * Gradient policy: tn_softmax_backward writes (=) grad_in, an activation gradient:
 *   softmax:      grad_in = y * (grad_out - sum(grad_out * y))
 *   log_softmax:  grad_in = grad_out - exp(y) * sum(grad_out)
 * with sums along dim. Ownership: `tn_tensor **out` per tern.h.
 *
 * Stable: the max along dim is subtracted before exp (a NaN in a row gives a NaN row).
 * f32/f64 compute natively; f16/bf16 are converted to f32, computed, and rounded back.
 * Inputs are viewed as contiguous (O, D, I) with D the softmax dim: I == 1 (the last dim,
 * the common case) runs row by row, rows in parallel; I > 1 runs on column chunks
 * vectorised along I. Non-contiguous inputs are copied to contiguous first. The per-element
 * steps are kernels/reduce.h; on AVX2+FMA CPUs the f32 max and exp passes (rows), the exp
 * pass (columns) and the log_softmax backward's exp(y) (rows and columns) use vmath.h's vector
 * expf instead of tn_exp_f.
 *
 * CUDA tensors (builds with TERN_HAVE_CUDA): the same checks and output, then cuda/softmax.cu
 * (tn_cuda_softmax / _backward) reads and writes the tensors in place with their strides (no
 * contiguous or f32 copies).
 */
#include <stdlib.h>

#include "internal.h"
#include "iter.h"
#include "kernels/elementwise.h"
#include "kernels/reduce.h"
#include "vmath.h"

#ifdef TERN_HAVE_CUDA
/* cuda/softmax.cu, on the current device and stream (asynchronous). rows: the finished
 * iterator over every dim but the softmax dim (one entry per row, numel >= 1), operands of one
 * float dtype and of the same shape; dstride: each operand's stride along the softmax dim of
 * D >= 1 elements. tn_cuda_softmax: operands 0 = out, 1 = a; out = softmax / log_softmax (log)
 * of a along the dim. tn_cuda_softmax_backward: operands 0 = grad_in, 1 = grad_out, 2 = y (the
 * forward output); grad_in (=) per the formulas above. f16 / bf16 compute in f32. out / grad_in
 * may be the same tensor as an input (each element is read before it is written, by the same
 * thread). */
tn_status tn_cuda_softmax(const tn_iter *rows, const int64_t *dstride, int64_t D, int32_t dtype, int32_t log);
tn_status tn_cuda_softmax_backward(const tn_iter *rows, const int64_t *dstride, int64_t D, int32_t dtype,
                                   int32_t log);
#endif

enum { SM_COLW = 256 };

/* The exp pass of fwd_cols: e = exp(x[j] - m[j]), s[j] += e, and y[j] = e when y is not NULL,
 * for j < n. f32 runs vmath.h's AVX2 version where the CPU has it. */
#define COL_EXP_ACC(name, T, S)                                                                \
    static void name(T *y, const T *x, const T *m, T *s, int64_t n) {                          \
        if (y) {                                                                               \
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) {                              \
                T e = tn_exp_##S(x[j] - m[j]);                                                 \
                y[j] = e;                                                                      \
                s[j] += e;                                                                     \
            }                                                                                  \
        } else {                                                                               \
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) s[j] += tn_exp_##S(x[j] - m[j]); \
        }                                                                                      \
    }
COL_EXP_ACC(col_exp_acc_plain_f, float, f)
COL_EXP_ACC(col_exp_acc_d, double, d)

static void col_exp_acc_f(float *y, const float *x, const float *m, float *s, int64_t n) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) {
        tn_vexp_sub_acc_f32(y, x, m, s, n);
        return;
    }
#endif
    col_exp_acc_plain_f(y, x, m, s, n);
}

/* The log_softmax backward of one line: gi[j] = g[j] - exp(y[j]) s with s = sv[0], or sv[j]
 * when s_vec, for j < n. f32 runs vmath.h's AVX2 version where the CPU has it. */
#define LSM_BWD_LINE(name, T, S)                                                               \
    static void name(T *gi, const T *g, const T *y, const T *sv, int s_vec, int64_t n) {       \
        if (s_vec) {                                                                           \
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) gi[j] = tn_log_softmax_bwd_##S(g[j], y[j], sv[j]); \
        } else {                                                                               \
            const T s = sv[0];                                                                 \
            _Pragma("omp simd") for (int64_t j = 0; j < n; j++) gi[j] = tn_log_softmax_bwd_##S(g[j], y[j], s); \
        }                                                                                      \
    }
LSM_BWD_LINE(lsm_bwd_line_plain_f, float, f)
LSM_BWD_LINE(lsm_bwd_line_d, double, d)

static void lsm_bwd_line_f(float *gi, const float *g, const float *y, const float *sv, int s_vec, int64_t n) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) {
        tn_vlog_softmax_bwd_f32(gi, g, y, sv, s_vec, n);
        return;
    }
#endif
    lsm_bwd_line_plain_f(gi, g, y, sv, s_vec, n);
}

#define SOFTMAX_IMPL(T, S)                                                                     \
    /* y (O, D) = softmax/log_softmax of x (O, D) along D */                                   \
    static void fwd_rows_##S(T *y, const T *x, int64_t O, int64_t D, int log_, int nt) {       \
        TN_PARALLEL_FOR(nt, o, O, {                                                            \
            const T *xr = x + o * D;                                                           \
            T *yr = y + o * D;                                                                 \
            T m = -INFINITY;                                                                   \
            for (int64_t i = 0; i < D; i++) m = tn_red_max_##S(m, xr[i]);                      \
            T s = 0;                                                                           \
            if (log_) {                                                                        \
                _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < D; i++) s +=      \
                    tn_exp_##S(xr[i] - m);                                                     \
                const T ls = tn_softmax_lognorm_##S(s); /* y = (x - m) - log(s): x - m first */ \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) yr[i] =                    \
                    tn_log_softmax_##S(xr[i], m, ls);                                          \
            } else {                                                                           \
                _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < D; i++) {         \
                    T e = tn_exp_##S(xr[i] - m);                                               \
                    yr[i] = e;                                                                 \
                    s += e;                                                                    \
                }                                                                              \
                const T inv = (T)1 / s;                                                        \
                _Pragma("omp simd") for (int64_t i = 0; i < D; i++) yr[i] *= inv;              \
            }                                                                                  \
        });                                                                                    \
    }                                                                                          \
    /* y (O, D, I) along D, on chunks of SM_COLW columns */                                    \
    static void fwd_cols_##S(T *y, const T *x, int64_t O, int64_t D, int64_t I, int log_, int nt) { \
        const int64_t nch = (I + SM_COLW - 1) / SM_COLW;                                       \
        TN_PARALLEL_FOR(nt, it, O * nch, {                                                     \
            const int64_t o = it / nch, j0 = (it % nch) * SM_COLW;                             \
            const int64_t cw = I - j0 < SM_COLW ? I - j0 : SM_COLW;                            \
            const T *xb = x + o * D * I + j0;                                                  \
            T *yb = y + o * D * I + j0;                                                        \
            T m[SM_COLW], s[SM_COLW];                                                          \
            for (int64_t j = 0; j < cw; j++) { m[j] = -INFINITY; s[j] = 0; }                   \
            for (int64_t d = 0; d < D; d++) {                                                  \
                const T *xr = xb + d * I;                                                      \
                _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) m[j] =                    \
                    tn_red_max_##S(m[j], xr[j]);                                               \
            }                                                                                  \
            for (int64_t d = 0; d < D; d++)                                                    \
                col_exp_acc_##S(log_ ? NULL : yb + d * I, xb + d * I, m, s, cw);               \
            for (int64_t j = 0; j < cw; j++) s[j] = log_ ? tn_softmax_lognorm_##S(s[j]) : (T)1 / s[j]; \
            for (int64_t d = 0; d < D; d++) {                                                  \
                const T *xr = xb + d * I;                                                      \
                T *yr = yb + d * I;                                                            \
                if (log_) {                                                                    \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) yr[j] =               \
                        tn_log_softmax_##S(xr[j], m[j], s[j]);                                 \
                } else {                                                                       \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) yr[j] *= s[j];        \
                }                                                                              \
            }                                                                                  \
        });                                                                                    \
    }                                                                                          \
    /* gi (O, D, I) from g and y (O, D, I); I == 1 is the row case */                          \
    static void bwd_##S(T *gi, const T *g, const T *y, int64_t O, int64_t D, int64_t I, int log_, int nt) { \
        if (I == 1) {                                                                          \
            TN_PARALLEL_FOR(nt, o, O, {                                                        \
                const T *gr = g + o * D, *yr = y + o * D;                                      \
                T *ir = gi + o * D;                                                            \
                T s = 0;                                                                       \
                if (log_) {                                                                    \
                    _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < D; i++) s += gr[i]; \
                    lsm_bwd_line_##S(ir, gr, yr, &s, 0, D);                                    \
                } else {                                                                       \
                    _Pragma("omp simd reduction(+ : s)") for (int64_t i = 0; i < D; i++) s += gr[i] * yr[i]; \
                    _Pragma("omp simd") for (int64_t i = 0; i < D; i++) ir[i] =                \
                        tn_softmax_bwd_##S(gr[i], yr[i], s);                                   \
                }                                                                              \
            });                                                                                \
            return;                                                                            \
        }                                                                                      \
        const int64_t nch = (I + SM_COLW - 1) / SM_COLW;                                       \
        TN_PARALLEL_FOR(nt, it, O * nch, {                                                     \
            const int64_t o = it / nch, j0 = (it % nch) * SM_COLW;                             \
            const int64_t cw = I - j0 < SM_COLW ? I - j0 : SM_COLW;                            \
            const int64_t base = o * D * I + j0;                                               \
            T s[SM_COLW];                                                                      \
            for (int64_t j = 0; j < cw; j++) s[j] = 0;                                         \
            for (int64_t d = 0; d < D; d++) {                                                  \
                const T *gr = g + base + d * I, *yr = y + base + d * I;                        \
                if (log_) {                                                                    \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) s[j] += gr[j];        \
                } else {                                                                       \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) s[j] += gr[j] * yr[j]; \
                }                                                                              \
            }                                                                                  \
            for (int64_t d = 0; d < D; d++) {                                                  \
                const T *gr = g + base + d * I, *yr = y + base + d * I;                        \
                T *ir = gi + base + d * I;                                                     \
                if (log_) {                                                                    \
                    lsm_bwd_line_##S(ir, gr, yr, s, 1, cw);                                    \
                } else {                                                                       \
                    _Pragma("omp simd") for (int64_t j = 0; j < cw; j++) ir[j] =               \
                        tn_softmax_bwd_##S(gr[j], yr[j], s[j]);                                \
                }                                                                              \
            }                                                                                  \
        });                                                                                    \
    }

SOFTMAX_IMPL(float, f)
SOFTMAX_IMPL(double, d)

#ifdef TN_AVX2_BUILD
/* One f32 row of fwd_rows_f with vmath.h's vector max and exp (AVX2+FMA CPUs). */
TN_VMATH_AVX2 static void fwd_row_f_avx2(float *yr, const float *xr, int64_t D, int log_) {
    const float m = tn_vmax_f32(xr, D);
    if (log_) {
        const float ls = tn_softmax_lognorm_f(tn_vexp_sub_sum_f32(NULL, xr, m, D));
        _Pragma("omp simd") for (int64_t i = 0; i < D; i++) yr[i] = tn_log_softmax_f(xr[i], m, ls);
    } else {
        const float inv = 1.0f / tn_vexp_sub_sum_f32(yr, xr, m, D);
        _Pragma("omp simd") for (int64_t i = 0; i < D; i++) yr[i] *= inv;
    }
}
#endif

/* fwd_rows_f, through fwd_row_f_avx2 where the CPU has AVX2+FMA. */
static void fwd_rows_f32(float *y, const float *x, int64_t O, int64_t D, int log_, int nt) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) {
        TN_PARALLEL_FOR(nt, o, O, { fwd_row_f_avx2(y + o * D, x + o * D, D, log_); });
        return;
    }
#endif
    fwd_rows_f(y, x, O, D, log_, nt);
}

static void split_dim(const tn_tensor *a, int32_t dim, int64_t *O, int64_t *D, int64_t *I) {
    *O = *D = *I = 1;
    for (int32_t d = 0; d < a->ndim; d++) {
        if (d < dim) *O *= a->shape[d];
        else if (d == dim) *D = a->shape[d];
        else *I *= a->shape[d];
    }
}

static tn_status check_sm(const char *name, const tn_tensor *a, int32_t dim) {
    TN_TRY(tn_check_tensor(name, "a", a));
    TN_TRY(tn_check_backend(name, a));
    TN_TRY(tn_check_float(name, "a", a));
    if (dim < 0 || dim >= (a->ndim > 0 ? a->ndim : 1))
        return tn_error(TN_ERR_INDEX, "%s: dim %lld out of range for a %s (%s)", name, TN_D(dim), TN_SHAPE(a),
                        tn_dtype_name(a->dtype));
    return TN_OK;
}

/* Runs fn-like computation into a contiguous destination of (ndim, shape, dtype): *out itself
 * when it is (or will be) contiguous, else a temporary copied into *out afterwards. */
static tn_status prepare_dst(const char *name, tn_tensor **out, tn_tensor **dst, const tn_tensor *like, int32_t dtype) {
    TN_TRY(tn_prepare_out(name, out, like->ndim, like->shape, dtype, like->device));
    if (tn_tensor_is_contiguous(*out) && dtype == (*out)->dtype) {
        *dst = tn_tensor_retain(*out);
        return TN_OK;
    }
    return tn_tensor_empty(dst, like->ndim, like->shape, dtype, like->device);
}

static tn_status finish_dst(tn_tensor *out, tn_tensor *dst) {
    tn_status st = dst == out ? TN_OK : tn_copy(out, dst);
    tn_tensor_free(dst);
    return st;
}

/* Contiguous compute-type (f32 for f16/bf16) version of t: a new reference. */
static tn_status compute_copy(tn_tensor **c, const tn_tensor *t) {
    if (t->dtype == TN_F16 || t->dtype == TN_BF16) return tn_to_dtype(c, t, TN_F32);
    return tn_contiguous(c, t);
}

#ifdef TERN_HAVE_CUDA
/* The CUDA path: ops (nops, all of ops[0]'s shape and dtype) = {out, a} (forward, nops 2) or
 * {grad_in, grad_out, y} (backward, nops 3); rows over every dim but dim, strides along dim. */
static tn_status run_cuda(const tn_tensor *const *ops, int nops, int32_t dim, int32_t log) {
    const tn_tensor *t = ops[0];
    int64_t O, D, I;
    split_dim(t, dim, &O, &D, &I);
    if (O * D * I == 0) return TN_OK;
    int64_t kshape[TN_MAX_DIMS], ds[TN_ITER_MAX_OPS] = {0};
    for (int32_t d = 0; d < t->ndim; d++) kshape[d] = d == dim ? 1 : t->shape[d];
    tn_iter rows;
    tn_iter_init(&rows, t->ndim, kshape);
    for (int k = 0; k < nops; k++) {
        tn_iter_add(&rows, ops[k]->data, tn_dtype_size(ops[k]->dtype), t->ndim, kshape, ops[k]->strides);
        ds[k] = t->ndim > 0 ? ops[k]->strides[dim] : 0;
    }
    tn_iter_finish(&rows);
    return nops == 2 ? tn_cuda_softmax(&rows, ds, D, t->dtype, log) : tn_cuda_softmax_backward(&rows, ds, D, t->dtype, log);
}
#endif

tn_status tn_softmax(tn_tensor **out, const tn_tensor *a, int32_t dim, int32_t log) {
    const char *name = log ? "log_softmax" : "softmax";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", name);
    TN_TRY(check_sm(name, a, dim));
    int allocated = *out == NULL;
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) {
        TN_TRY(tn_prepare_out(name, out, a->ndim, a->shape, a->dtype, a->device));
        tn_status st = tn_check_same_device(name, *out, a);
        if (st == TN_OK) {
            const tn_tensor *ops[2] = {*out, a};
            st = run_cuda(ops, 2, dim, log);
        }
        if (st != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
        return st;
    }
#endif
    tn_tensor *x = NULL, *dst = NULL;
    TN_TRY(compute_copy(&x, a));
    int32_t ct = x->dtype;
    tn_status st = TN_OK;
    if (ct == a->dtype) {
        st = prepare_dst(name, out, &dst, a, ct);
    } else { /* f16/bf16: compute in an f32 temporary */
        st = tn_prepare_out(name, out, a->ndim, a->shape, a->dtype, a->device);
        if (st == TN_OK) st = tn_tensor_empty(&dst, a->ndim, a->shape, ct, a->device);
    }
    if (st == TN_OK) {
        int64_t O, D, I;
        split_dim(a, dim, &O, &D, &I);
        int nt = tn_par_threads(O * D * I, TN_PAR_MIN);
        if (O * D * I > 0) {
            if (ct == TN_F64) {
                if (I == 1) fwd_rows_d((double *)dst->data, (const double *)x->data, O, D, log, nt);
                else fwd_cols_d((double *)dst->data, (const double *)x->data, O, D, I, log, nt);
            } else {
                if (I == 1) fwd_rows_f32((float *)dst->data, (const float *)x->data, O, D, log, nt);
                else fwd_cols_f((float *)dst->data, (const float *)x->data, O, D, I, log, nt);
            }
        }
        st = finish_dst(*out, dst);
    }
    tn_tensor_free(x);
    if (st != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
    return st;
}

tn_status tn_softmax_backward(tn_tensor **grad_in, const tn_tensor *grad_out, const tn_tensor *y, int32_t dim,
                              int32_t log) {
    const char *name = log ? "log_softmax_backward" : "softmax_backward";
    if (!grad_in) return tn_error(TN_ERR_ARG, "%s: grad_in is NULL", name);
    TN_TRY(check_sm(name, grad_out, dim));
    TN_TRY(tn_check_tensor(name, "y", y));
    TN_TRY(tn_check_backend(name, y));
    TN_TRY(tn_check_same_device(name, grad_out, y));
    int same = grad_out->ndim == y->ndim && grad_out->dtype == y->dtype;
    for (int32_t d = 0; same && d < y->ndim; d++) same = grad_out->shape[d] == y->shape[d];
    if (!same)
        return tn_error(TN_ERR_SHAPE, "%s: grad_out %s (%s) and y %s (%s) must match", name, TN_SHAPE(grad_out),
                        tn_dtype_name(grad_out->dtype), TN_SHAPE(y), tn_dtype_name(y->dtype));
    int allocated = *grad_in == NULL;
#ifdef TERN_HAVE_CUDA
    if (y->device == TN_CUDA) {
        TN_TRY(tn_prepare_out(name, grad_in, y->ndim, y->shape, y->dtype, y->device));
        tn_status st = tn_check_same_device(name, *grad_in, y);
        if (st == TN_OK) {
            const tn_tensor *ops[3] = {*grad_in, grad_out, y};
            st = run_cuda(ops, 3, dim, log);
        }
        if (st != TN_OK && allocated) { tn_tensor_free(*grad_in); *grad_in = NULL; }
        return st;
    }
#endif
    tn_tensor *g = NULL, *yc = NULL, *dst = NULL;
    tn_status st = compute_copy(&g, grad_out);
    if (st == TN_OK) st = compute_copy(&yc, y);
    int32_t ct = g ? g->dtype : TN_F32;
    if (st == TN_OK) {
        if (ct == y->dtype) {
            st = prepare_dst(name, grad_in, &dst, y, ct);
        } else {
            st = tn_prepare_out(name, grad_in, y->ndim, y->shape, y->dtype, y->device);
            if (st == TN_OK) st = tn_tensor_empty(&dst, y->ndim, y->shape, ct, y->device);
        }
    }
    if (st == TN_OK) {
        int64_t O, D, I;
        split_dim(y, dim, &O, &D, &I);
        int nt = tn_par_threads(O * D * I, TN_PAR_MIN);
        if (O * D * I > 0) {
            if (ct == TN_F64) bwd_d((double *)dst->data, (const double *)g->data, (const double *)yc->data, O, D, I, log, nt);
            else bwd_f((float *)dst->data, (const float *)g->data, (const float *)yc->data, O, D, I, log, nt);
        }
        st = finish_dst(*grad_in, dst);
    }
    tn_tensor_free(g);
    tn_tensor_free(yc);
    if (st != TN_OK && allocated) { tn_tensor_free(*grad_in); *grad_in = NULL; }
    return st;
}
