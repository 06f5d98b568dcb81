/*
 * rnnt_prune.c — the joiner-output side of the RNN-T loss family on the CPU, f32 and f64:
 * tn_rnnt_logprobs_joint(_backward) (the full loss on (B, T, S+1, C) logits),
 * tn_rnnt_logprobs_pruned(_backward) (the pruned loss on (B, T, R, C) logits),
 * tn_rnnt_prune_s_range, tn_rnnt_prune_ranges and tn_rnnt_do_pruning(_backward).
 * Semantics: k2 / fast_rnnt rnnt_loss.py (get_rnnt_logprobs_joint, get_rnnt_logprobs_pruned,
 * get_rnnt_prune_ranges with _adjust_pruning_lower_bound, do_rnnt_pruning).
 *
 * Gradient policy: every gradient here is an activation gradient and is written (=).
 *
 * Joint and pruned logprobs are one "band" kernel: row (b, t, k) of the logits scores symbol
 * position s = s_begin[b, t] + k (s_begin = 0, R = S+1 for the joint case). Forward, each row
 * is read once: max, sum of exp, lse; px[b, s, t] = x[symbol s] - lse, py[b, s, t] = x[term] -
 * lse; everything outside the band is -inf. Backward writes each row once: -(gx + gy) e^(x -
 * lse) plus gx at the symbol and gy at the termination symbol; the gradient may overwrite the
 * logits in place (the caller passes the logits tensor as grad_logits), so a full-loss step
 * needs no second (B, T, S+1, C) tensor. Rows run on OpenMP threads (static schedule); the f32
 * row loops are `omp simd` with the libm-free tn_exp_f.
 */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"
#include "iter.h"
#include "kernels/rnnt.h"
#include "rnnt_common.h"

static inline int64_t ldi3(const tn_tensor *t, int64_t i, int64_t j, int64_t k) {
    const char *p = t->data + (i * t->strides[0] + j * t->strides[1] + k * t->strides[2]) *
                                  (int64_t)tn_dtype_size(t->dtype);
    return tn_load_i64(p, t->dtype);
}

/* Rows of logits per OpenMP chunk decision: a row of C classes costs ~C exp. */
#define RNNT_ROW_PAR_MIN ((int64_t)65536)

/* ---- band kernel (joint and pruned logprobs) -------------------------------------------------- */

typedef struct band_ctx {
    int64_t B, T, R, S, C, T0, term;
    int f64, type, boundary_given;
    int32_t ldt;   /* the logits' dtype: f32, f64, or f16 / bf16 (read as f32, outputs f32) */
    float *xbuf;   /* f16 / bf16: 2 C floats per thread (the row as f32, its gradient) */
    const tn_rnnt_bnd *bnd;
    int64_t *sb;   /* (B, T) s_begin of each frame's band */
    int64_t *sym;  /* (B, S) */
    const void *logits;
    void *lse;     /* (B, T, R) or NULL */
    int lse_in;    /* lse holds the forward's values (backward) */
} band_ctx;

#if defined(__GNUC__)
#define RNNT_INLINE static inline __attribute__((always_inline)) /* into each target build below */
#else
#define RNNT_INLINE static inline
#endif

/* Log-sum-exp of a row of C; NaN when the row holds NaN or +inf or is all -inf (NaN - m and
 * inf - inf propagate through the exp and the sum, so no separate scan is needed). */
RNNT_INLINE float row_lse_f_body(const float *restrict x, int64_t C) {
    float m = -INFINITY;
#ifdef _OPENMP
#pragma omp simd reduction(max : m)
#endif
    for (int64_t c = 0; c < C; c++) m = x[c] > m ? x[c] : m;
    float sum = 0.0f;
#ifdef _OPENMP
#pragma omp simd reduction(+ : sum)
#endif
    for (int64_t c = 0; c < C; c++) sum += tn_exp_f(x[c] - m);
    return (float)((double)m + log((double)sum));
}
/* g (C) = -gs e^(x - lse); g may be x (in place) */
RNNT_INLINE void row_grad_f_body(const float *x, float *g, int64_t C, float lse, float gs) {
#ifdef _OPENMP
#pragma omp simd
#endif
    for (int64_t j = 0; j < C; j++) g[j] = tn_rnnt_lsm_grad_f(x[j], lse, gs);
}
typedef float (*row_lse_fn)(const float *, int64_t);
typedef void (*row_grad_fn)(const float *, float *, int64_t, float, float);
static float row_lse_f_base(const float *x, int64_t C) { return row_lse_f_body(x, C); }
static void row_grad_f_base(const float *x, float *g, int64_t C, float lse, float gs) {
    row_grad_f_body(x, g, C, lse, gs);
}
/* The library is built for baseline x86-64 (SSE2), where tn_exp_f's rintf is a call and the
 * row loops do not vectorise; an AVX2+FMA build of them is picked at run time. */
#ifdef TN_AVX2_BUILD
__attribute__((target("avx2,fma"))) static float row_lse_f_avx2(const float *x, int64_t C) {
    return row_lse_f_body(x, C);
}
__attribute__((target("avx2,fma"))) static void row_grad_f_avx2(const float *x, float *g, int64_t C, float lse,
                                                                float gs) {
    row_grad_f_body(x, g, C, lse, gs);
}
#endif
static row_lse_fn row_lse_pick(void) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) return row_lse_f_avx2;
#endif
    return row_lse_f_base;
}
static row_grad_fn row_grad_pick(void) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) return row_grad_f_avx2;
#endif
    return row_grad_f_base;
}
static inline double row_lse_d(const double *x, int64_t C) {
    double m = -INFINITY;
    for (int64_t c = 0; c < C; c++) m = x[c] > m ? x[c] : m;
    double sum = 0.0;
    for (int64_t c = 0; c < C; c++) sum += exp(x[c] - m);
    return m + log(sum);
}

/* This thread's 2 C floats of c->xbuf. */
static inline float *band_thread_buf(const band_ctx *c) {
#ifdef _OPENMP
    return c->xbuf + (size_t)omp_get_thread_num() * 2 * (size_t)c->C;
#else
    return c->xbuf;
#endif
}

/* Row r of the logits as f32: in place for f32 logits, converted into this thread's buffer for
 * f16 / bf16 (the same floats the f32 path would see after a conversion, so the same bits). */
static inline const float *band_row_f(const band_ctx *c, int64_t r) {
    if (c->ldt == TN_F32) return (const float *)c->logits + r * c->C;
    float *xb = band_thread_buf(c);
    const uint16_t *h = (const uint16_t *)c->logits + r * c->C;
    if (c->ldt == TN_F16)
        for (int64_t j = 0; j < c->C; j++) xb[j] = tn_half_to_float(h[j]);
    else
        for (int64_t j = 0; j < c->C; j++) xb[j] = tn_bf16_to_float(h[j]);
    return xb;
}

/* g (C floats) into row r of an f16 / bf16 gradient (round to nearest even, as tn_copy) */
static inline void band_row_store(const band_ctx *c, void *grad, int64_t r, const float *g) {
    uint16_t *o = (uint16_t *)grad + r * c->C;
    if (c->ldt == TN_F16)
        for (int64_t j = 0; j < c->C; j++) o[j] = tn_float_to_half(g[j]);
    else
        for (int64_t j = 0; j < c->C; j++) o[j] = tn_float_to_bf16(g[j]);
}

/* f16 / bf16 logits: the per-thread row buffers for nt threads */
static tn_status band_bufs(const char *op, band_ctx *c, int nt) {
    if (c->ldt == TN_F32 || c->ldt == TN_F64) return TN_OK;
#ifdef _OPENMP
    const int n = nt > omp_get_max_threads() ? nt : omp_get_max_threads();
#else
    const int n = 1;
    (void)nt;
#endif
    c->xbuf = (float *)malloc(sizeof(float) * 2 * (size_t)(c->C > 0 ? c->C : 1) * (size_t)(n > 0 ? n : 1));
    if (!c->xbuf) return tn_error(TN_ERR_OOM, "%s: out of memory (row buffers, C = %lld)", op, (long long)c->C);
    return TN_OK;
}

/* Forward over all rows; returns the first row index whose lse is not finite, or -1. */
static int64_t band_forward(const band_ctx *c, void *px, void *py) {
    const int64_t B = c->B, T = c->T, R = c->R, S = c->S, C = c->C, T0 = c->T0, nrows = B * T * R;
    const int f64 = c->f64;
    int64_t bad = INT64_MAX;
    const row_lse_fn row_lse_f = row_lse_pick();
    int nt = tn_par_threads(nrows * C, RNNT_ROW_PAR_MIN);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : bad) if (nt > 1)
#endif
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t b = r / (T * R), t = (r / R) % T, k = r % R, s = c->sb[b * T + t] + k;
        double l, xs = 0.0, xt;
        if (f64) {
            const double *x = (const double *)c->logits + r * C;
            l = row_lse_d(x, C);
            xt = x[c->term];
            if (s < S) xs = x[c->sym[b * S + s]];
        } else {
            const float *x = band_row_f(c, r);
            l = row_lse_f(x, C);
            xt = x[c->term];
            if (s < S) xs = x[c->sym[b * S + s]];
        }
        if (!(fabs(l) <= DBL_MAX)) {
            if (r < bad) bad = r;
            continue;
        }
        if (c->lse) st(c->lse, r, f64, l);
        if (f64) {
            st(py, (b * (S + 1) + s) * T + t, 1, xt - l);
            if (s < S) st(px, (b * S + s) * T0 + t, 1, xs - l);
        } else {
            const float lf = (float)l;
            st(py, (b * (S + 1) + s) * T + t, 0, (float)xt - lf);
            if (s < S) st(px, (b * S + s) * T0 + t, 0, (float)xs - lf);
        }
    }
    return bad == INT64_MAX ? -1 : bad;
}

static void band_backward(const band_ctx *c, void *grad, const void *gpx, const void *gpy) {
    const int64_t B = c->B, T = c->T, R = c->R, S = c->S, C = c->C, T0 = c->T0, nrows = B * T * R;
    const int f64 = c->f64;
    const row_lse_fn row_lse_f = row_lse_pick();
    const row_grad_fn row_grad_f = row_grad_pick();
    int nt = tn_par_threads(nrows * C, RNNT_ROW_PAR_MIN);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t r = 0; r < nrows; r++) {
        const int64_t b = r / (T * R), t = (r / R) % T, k = r % R, s = c->sb[b * T + t] + k;
        double gx = 0.0, gy = ld(gpy, (b * (S + 1) + s) * T + t, f64);
        if (s < S && !(c->type == TN_RNNT_REGULAR && c->boundary_given && t == c->bnd[b].t1))
            gx = ld(gpx, (b * S + s) * T0 + t, f64);
        if (c->type == TN_RNNT_CONSTRAINED && s >= 1) gy += ld(gpx, (b * S + s - 1) * T0 + t, f64);
        const int64_t sym = s < S ? c->sym[b * S + s] : -1;
        if (f64) {
            const double *x = (const double *)c->logits + r * C;
            double *g = (double *)grad + r * C;
            const double l = c->lse_in ? ((const double *)c->lse)[r] : row_lse_d(x, C), gs = gx + gy;
            for (int64_t j = 0; j < C; j++) g[j] = tn_rnnt_lsm_grad_d(x[j], l, gs);
            if (sym >= 0) g[sym] += gx;
            g[c->term] += gy;
        } else {
            const float *x = band_row_f(c, r);
            const int half = c->ldt != TN_F32;
            float *g = half ? band_thread_buf(c) + C : (float *)grad + r * C;
            const float l = c->lse_in ? ((const float *)c->lse)[r] : row_lse_f(x, C), gs = (float)(gx + gy);
            row_grad_f(x, g, C, l, gs);
            if (sym >= 0) g[sym] += (float)gx;
            g[c->term] += (float)gy;
            if (half) band_row_store(c, grad, r, g);
        }
    }
}

/* Checks and context shared by the four band entry points. ranges NULL = joint (R = S+1). */
static tn_status band_setup(const char *op, band_ctx *c, const tn_tensor *logits, const tn_tensor *symbols,
                            const tn_tensor *ranges, const tn_tensor *boundary, int64_t term, int32_t rnnt_type,
                            double delay_penalty, tn_rnnt_bnd **bnd) {
    if (logits && (logits->dtype == TN_F16 || logits->dtype == TN_BF16)) {
        /* f16 / bf16 logits are read as f32 by the kernels; every other float argument is f32 */
        TN_TRY(tn_check_backend(op, logits));
        if (logits->ndim != 4)
            return tn_error(TN_ERR_SHAPE, "%s: 'logits' must have 4 dims, got shape %s", op, TN_SHAPE(logits));
        if (!tn_tensor_is_contiguous(logits))
            return tn_error(TN_ERR_ARG, "%s: 'logits' %s must be contiguous", op, TN_SHAPE(logits));
    } else {
        TN_TRY(tn_rnnt_internal_float(op, "logits", logits, 4, NULL, -1));
    }
    const int64_t B = logits->shape[0], T = logits->shape[1], R = logits->shape[2], C = logits->shape[3];
    TN_TRY(tn_check_tensor(op, "symbols", symbols));
    if (symbols->ndim != 2 || symbols->shape[0] != B)
        return tn_error(TN_ERR_SHAPE, "%s: symbols has shape %s, expected [%lld, S] for logits %s", op,
                        TN_SHAPE(symbols), (long long)B, TN_SHAPE(logits));
    const int64_t S = symbols->shape[1];
    if (!ranges && R != S + 1)
        return tn_error(TN_ERR_SHAPE, "%s: logits %s must be (B, T, S+1, C) for symbols %s (S = %lld)", op,
                        TN_SHAPE(logits), TN_SHAPE(symbols), (long long)S);
    if (C < 1) return tn_error(TN_ERR_SHAPE, "%s: logits %s has no classes", op, TN_SHAPE(logits));
    TN_TRY(tn_rnnt_internal_options(op, term, C, rnnt_type, delay_penalty));
    TN_TRY(tn_rnnt_internal_device(op, "logits", logits, "symbols", symbols, "ranges", ranges, "boundary", boundary,
                                   (const char *)NULL));
    TN_TRY(tn_rnnt_internal_symbols(op, symbols, B, S, C));
    if (ranges) {
        TN_TRY(tn_check_backend(op, ranges));
        TN_TRY(tn_check_index_dtype(op, "ranges", ranges));
        if (ranges->ndim != 3 || ranges->shape[0] != B || ranges->shape[1] != T || ranges->shape[2] != R)
            return tn_error(TN_ERR_SHAPE, "%s: ranges has shape %s, expected [%lld, %lld, %lld] for logits %s", op,
                            TN_SHAPE(ranges), (long long)B, (long long)T, (long long)R, TN_SHAPE(logits));
        if (R < 1 || R > S + 1)
            return tn_error(TN_ERR_SHAPE, "%s: s_range R = %lld (logits %s) must be in [1, S+1 = %lld]", op,
                            (long long)R, TN_SHAPE(logits), (long long)(S + 1));
    }
    TN_TRY(tn_rnnt_internal_boundary(op, boundary, B, S, T, rnnt_type != TN_RNNT_REGULAR, bnd));
    c->B = B, c->T = T, c->R = R, c->S = S, c->C = C, c->term = term;
    c->ldt = logits->dtype;
    c->T0 = rnnt_type == TN_RNNT_REGULAR ? T + 1 : T; /* the shape checks of px / grad_px need it on either device */
    if (logits->device != TN_CPU) return TN_OK; /* CUDA: symbols, ranges and boundary are read on the device */
    c->sb = (int64_t *)malloc(sizeof(int64_t) * (size_t)(B * T + B * S + 1));
    if (!c->sb) {
        free(*bnd);
        *bnd = NULL;
        return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    }
    c->sym = c->sb + B * T;
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++) c->sym[b * S + s] = tn_load_i64(symbols->data + (b * symbols->strides[0] + s * symbols->strides[1]) * (int64_t)tn_dtype_size(symbols->dtype), symbols->dtype);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            int64_t s0 = 0;
            if (ranges) {
                s0 = ldi3(ranges, b, t, 0);
                int ok = s0 >= 0 && s0 + R <= S + 1;
                for (int64_t k = 1; ok && k < R; k++) ok = ldi3(ranges, b, t, k) == s0 + k;
                if (!ok) {
                    free(c->sb);
                    free(*bnd);
                    *bnd = NULL;
                    return tn_error(TN_ERR_INDEX,
                                    "%s: ranges at [%lld, %lld] must be s_begin, s_begin+1, ..., s_begin+%lld with "
                                    "0 <= s_begin <= S+1-R = %lld (got first value %lld)",
                                    op, TN_D(b), TN_D(t), (long long)(R - 1), (long long)(S + 1 - R), (long long)s0);
                }
            }
            c->sb[b * T + t] = s0;
        }
    c->B = B, c->T = T, c->R = R, c->S = S, c->C = C, c->term = term;
    c->T0 = rnnt_type == TN_RNNT_REGULAR ? T + 1 : T;
    c->f64 = logits->dtype == TN_F64;
    c->type = rnnt_type;
    c->boundary_given = boundary != NULL;
    c->bnd = *bnd;
    c->logits = logits->data;
    return TN_OK;
}

static tn_status band_logprobs(const char *op, tn_tensor *px, tn_tensor *py, tn_tensor *lse, const tn_tensor *logits,
                               const tn_tensor *symbols, const tn_tensor *ranges, const tn_tensor *boundary,
                               int64_t term, int32_t rnnt_type, double delay_penalty) {
    band_ctx c;
    memset(&c, 0, sizeof c);
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(band_setup(op, &c, logits, symbols, ranges, boundary, term, rnnt_type, delay_penalty, &bnd));
    const int64_t spx[3] = {c.B, c.S, c.T0}, spy[3] = {c.B, c.S + 1, c.T}, sl[3] = {c.B, c.T, c.R};
    const int32_t fdt = c.ldt == TN_F64 ? TN_F64 : TN_F32; /* px, py, lse: f32 for f16 / bf16 logits */
    tn_status rc = tn_rnnt_internal_float(op, "px", px, 3, spx, fdt);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "py", py, 3, spy, fdt);
    if (rc == TN_OK && lse) rc = tn_rnnt_internal_float(op, "lse", lse, 3, sl, fdt);
    if (rc == TN_OK)
        rc = tn_rnnt_internal_device(op, "logits", logits, "px", px, "py", py, "lse", lse, (const char *)NULL);
#ifdef TERN_HAVE_CUDA
    if (rc == TN_OK && logits->device == TN_CUDA) { /* nothing below may run on device pointers */
        free(bnd);
        return tn_cuda_rnnt_band(op, px, py, lse, logits, symbols, ranges, boundary, term, rnnt_type, delay_penalty);
    }
#endif
    if (rc == TN_OK) rc = band_bufs(op, &c, tn_par_threads(c.B * c.T * c.R * c.C, RNNT_ROW_PAR_MIN));
    if (rc == TN_OK) {
        for (int64_t i = 0; i < c.B * c.S * c.T0; i++) st(px->data, i, c.f64, -INFINITY);
        for (int64_t i = 0; i < c.B * (c.S + 1) * c.T; i++) st(py->data, i, c.f64, -INFINITY);
        c.lse = lse ? lse->data : NULL;
        int64_t r = band_forward(&c, px->data, py->data);
        if (r >= 0)
            rc = tn_error(TN_ERR_ARG,
                          "%s: logits row [%lld, %lld, %lld] holds NaN or +inf or only -inf (logits %s): its "
                          "log-sum-exp is not finite", op, TN_D(r / (c.T * c.R)), TN_D((r / c.R) % c.T),
                          TN_D(r % c.R), TN_SHAPE(logits));
        else
            tn_rnnt_internal_post(px->data, py->data, bnd, c.boundary_given, c.B, c.S, c.T, rnnt_type,
                                  delay_penalty, c.f64);
    }
    free(c.xbuf);
    free(c.sb);
    free(bnd);
    return rc;
}

static tn_status band_logprobs_backward(const char *op, tn_tensor *grad_logits, const tn_tensor *grad_px,
                                        const tn_tensor *grad_py, const tn_tensor *logits, const tn_tensor *lse,
                                        const tn_tensor *symbols, const tn_tensor *ranges,
                                        const tn_tensor *boundary, int64_t term, int32_t rnnt_type) {
    band_ctx c;
    memset(&c, 0, sizeof c);
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(band_setup(op, &c, logits, symbols, ranges, boundary, term, rnnt_type, 0.0, &bnd));
    const int64_t spx[3] = {c.B, c.S, c.T0}, spy[3] = {c.B, c.S + 1, c.T}, sl[3] = {c.B, c.T, c.R};
    const int32_t fdt = c.ldt == TN_F64 ? TN_F64 : TN_F32; /* grad_px, grad_py, lse: f32 for f16 / bf16 logits */
    tn_status rc = TN_OK;
    if (fdt == logits->dtype) {
        rc = tn_rnnt_internal_float(op, "grad_logits", grad_logits, 4, logits->shape, logits->dtype);
    } else { /* f16 / bf16: the gradient in the logits' dtype */
        rc = tn_check_tensor(op, "grad_logits", grad_logits);
        if (rc == TN_OK) rc = tn_check_backend(op, grad_logits);
        if (rc == TN_OK && grad_logits->dtype != logits->dtype)
            rc = tn_error(TN_ERR_DTYPE, "%s: 'grad_logits' is %s but the logits are %s", op,
                          tn_dtype_name(grad_logits->dtype), tn_dtype_name(logits->dtype));
        int same = rc == TN_OK && grad_logits->ndim == 4;
        for (int i = 0; same && i < 4; i++) same = grad_logits->shape[i] == logits->shape[i];
        if (rc == TN_OK && (!same || !tn_tensor_is_contiguous(grad_logits)))
            rc = tn_error(TN_ERR_SHAPE, "%s: 'grad_logits' has shape %s, expected a contiguous %s", op,
                          TN_SHAPE(grad_logits), TN_SHAPE(logits));
    }
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "grad_px", grad_px, 3, spx, fdt);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "grad_py", grad_py, 3, spy, fdt);
    if (rc == TN_OK && lse) rc = tn_rnnt_internal_float(op, "lse", lse, 3, sl, fdt);
    if (rc == TN_OK && grad_logits != logits && grad_logits->data == logits->data)
        rc = tn_error(TN_ERR_ARG, "%s: grad_logits shares memory with logits; pass the logits tensor itself for the "
                      "in-place gradient", op);
    if (rc == TN_OK)
        rc = tn_rnnt_internal_device(op, "logits", logits, "grad_logits", grad_logits, "grad_px", grad_px, "grad_py",
                                     grad_py, "lse", lse, (const char *)NULL);
#ifdef TERN_HAVE_CUDA
    if (rc == TN_OK && logits->device == TN_CUDA) { /* nothing below may run on device pointers */
        free(bnd);
        return tn_cuda_rnnt_band_backward(op, grad_logits, grad_px, grad_py, logits, lse, symbols, ranges, boundary,
                                          term, rnnt_type);
    }
#endif
    if (rc == TN_OK) rc = band_bufs(op, &c, tn_par_threads(c.B * c.T * c.R * c.C, RNNT_ROW_PAR_MIN));
    if (rc == TN_OK) {
        c.lse = lse ? lse->data : NULL;
        c.lse_in = lse != NULL;
        band_backward(&c, grad_logits->data, grad_px->data, grad_py->data);
    }
    free(c.xbuf);
    free(c.sb);
    free(bnd);
    return rc;
}

tn_status tn_rnnt_logprobs_joint(tn_tensor *px, tn_tensor *py, tn_tensor *lse, const tn_tensor *logits,
                                 const tn_tensor *symbols, const tn_tensor *boundary, int64_t termination_symbol,
                                 int32_t rnnt_type, double delay_penalty) {
    return band_logprobs("rnnt_logprobs_joint", px, py, lse, logits, symbols, NULL, boundary, termination_symbol,
                         rnnt_type, delay_penalty);
}

tn_status tn_rnnt_logprobs_joint_backward(tn_tensor *grad_logits, const tn_tensor *grad_px, const tn_tensor *grad_py,
                                          const tn_tensor *logits, const tn_tensor *lse, const tn_tensor *symbols,
                                          const tn_tensor *boundary, int64_t termination_symbol, int32_t rnnt_type) {
    return band_logprobs_backward("rnnt_logprobs_joint_backward", grad_logits, grad_px, grad_py, logits, lse, symbols,
                                  NULL, boundary, termination_symbol, rnnt_type);
}

tn_status tn_rnnt_logprobs_pruned(tn_tensor *px, tn_tensor *py, tn_tensor *lse, const tn_tensor *logits,
                                  const tn_tensor *symbols, const tn_tensor *ranges, const tn_tensor *boundary,
                                  int64_t termination_symbol, int32_t rnnt_type, double delay_penalty) {
    if (!ranges) return tn_error(TN_ERR_ARG, "rnnt_logprobs_pruned: argument 'ranges' is NULL");
    return band_logprobs("rnnt_logprobs_pruned", px, py, lse, logits, symbols, ranges, boundary, termination_symbol,
                         rnnt_type, delay_penalty);
}

tn_status tn_rnnt_logprobs_pruned_backward(tn_tensor *grad_logits, const tn_tensor *grad_px, const tn_tensor *grad_py,
                                           const tn_tensor *logits, const tn_tensor *lse, const tn_tensor *symbols,
                                           const tn_tensor *ranges, const tn_tensor *boundary,
                                           int64_t termination_symbol, int32_t rnnt_type) {
    if (!ranges) return tn_error(TN_ERR_ARG, "rnnt_logprobs_pruned_backward: argument 'ranges' is NULL");
    return band_logprobs_backward("rnnt_logprobs_pruned_backward", grad_logits, grad_px, grad_py, logits, lse, symbols,
                                  ranges, boundary, termination_symbol, rnnt_type);
}

/* ---- prune ranges ------------------------------------------------------------------------------ */

static tn_status prune_check(const char *op, const tn_tensor *px_grad, const tn_tensor *py_grad,
                             const tn_tensor *boundary, int64_t *B, int64_t *S, int64_t *T, int *regular,
                             tn_rnnt_bnd **bnd) {
    TN_TRY(tn_rnnt_internal_float(op, "py_grad", py_grad, 3, NULL, -1));
    *B = py_grad->shape[0], *S = py_grad->shape[1] - 1, *T = py_grad->shape[2];
    TN_TRY(tn_rnnt_internal_float(op, "px_grad", px_grad, 3, NULL, py_grad->dtype));
    if (*S < 0 || px_grad->shape[0] != *B || px_grad->shape[1] != *S ||
        (px_grad->shape[2] != *T + 1 && px_grad->shape[2] != *T))
        return tn_error(TN_ERR_SHAPE,
                        "%s: px_grad must be (B, S, T+1) or (B, S, T) for py_grad (B, S+1, T); got px_grad %s, "
                        "py_grad %s", op, TN_SHAPE(px_grad), TN_SHAPE(py_grad));
    *regular = px_grad->shape[2] == *T + 1;
    TN_TRY(tn_rnnt_internal_device(op, "px_grad", px_grad, "py_grad", py_grad, "boundary", boundary,
                                   (const char *)NULL));
    return tn_rnnt_internal_boundary(op, boundary, *B, *S, *T, !*regular, bnd);
}

static int64_t prune_s_range_of(const tn_rnnt_bnd *bnd, int64_t B, int64_t S, int regular, int64_t s_range) {
    if (S == 0) return 1;
    if (regular) { /* (s_range - 1) t + 1 >= s + 1: the band must be able to climb S_b symbols in T_b frames */
        int64_t mn = 2;
        for (int64_t b = 0; b < B; b++)
            if (bnd[b].t1 > 0) {
                const int64_t v = (bnd[b].s1 - 1) / bnd[b].t1 + 2; /* C division truncates, as torch's "trunc" */
                if (v > mn) mn = v;
            }
        if (s_range < mn) s_range = mn;
    } else if (s_range < 1) {
        s_range = 1;
    }
    if (s_range > S) s_range = S + 1;
    return s_range;
}

tn_status tn_rnnt_prune_s_range(int64_t *s_range_out, const tn_tensor *px_grad, const tn_tensor *py_grad,
                                const tn_tensor *boundary, int64_t s_range) {
    static const char *op = "rnnt_prune_s_range";
    if (!s_range_out) return tn_error(TN_ERR_ARG, "%s: argument 's_range_out' is NULL", op);
    int64_t B, S, T;
    int regular;
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(prune_check(op, px_grad, py_grad, boundary, &B, &S, &T, &regular, &bnd));
    if (boundary && boundary->device != TN_CPU) {
        /* s_range is a size the caller allocates ranges with, and a CUDA boundary's rows decide it:
         * the one read back of this family (a (B, 4) copy; the caller can avoid it by giving the
         * boundary as host values, see lua/tern/rnnt.lua get_prune_ranges) */
        tn_tensor *hb = NULL;
        tn_status rc = tn_tensor_empty(&hb, 2, boundary->shape, boundary->dtype, TN_CPU);
        if (rc == TN_OK) rc = tn_copy(hb, boundary);
        if (rc == TN_OK) rc = tn_rnnt_internal_boundary(op, hb, B, S, T, !regular, &bnd);
        tn_tensor_free(hb);
        TN_TRY(rc);
    }
    *s_range_out = prune_s_range_of(bnd, B, S, regular, s_range);
    free(bnd);
    return TN_OK;
}

/* _monotonic_lower_bound: x[i] = min(x[i:]) */
static void monotonic_lower_bound(int64_t *x, int64_t n) {
    for (int64_t i = n - 2; i >= 0; i--)
        if (x[i + 1] < x[i]) x[i] = x[i + 1];
}

tn_status tn_rnnt_prune_ranges(tn_tensor *ranges, const tn_tensor *px_grad, const tn_tensor *py_grad,
                               const tn_tensor *boundary) {
    static const char *op = "rnnt_prune_ranges";
    int64_t B, S, T;
    int regular;
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(prune_check(op, px_grad, py_grad, boundary, &B, &S, &T, &regular, &bnd));
    tn_status rc = tn_check_tensor(op, "ranges", ranges);
    if (rc == TN_OK) rc = tn_check_backend(op, ranges);
    if (rc == TN_OK) rc = tn_rnnt_internal_device(op, "px_grad", px_grad, "ranges", ranges, (const char *)NULL);
    if (rc == TN_OK && ranges->dtype != TN_I64)
        rc = tn_error(TN_ERR_DTYPE, "%s: ranges must be i64, got %s", op, tn_dtype_name(ranges->dtype));
    if (rc == TN_OK && (ranges->ndim != 3 || ranges->shape[0] != B || ranges->shape[1] != T || ranges->shape[2] < 1 ||
                        !tn_tensor_is_contiguous(ranges)))
        rc = tn_error(TN_ERR_SHAPE, "%s: ranges has shape %s, expected a contiguous [%lld, %lld, s_range]", op,
                      TN_SHAPE(ranges), (long long)B, (long long)T);
    const int64_t R = rc == TN_OK ? ranges->shape[2] : 0;
#ifdef TERN_HAVE_CUDA
    if (rc == TN_OK && px_grad->device == TN_CUDA) { /* the s_range check runs on the device */
        free(bnd);
        return tn_cuda_rnnt_prune_ranges(op, ranges, px_grad, py_grad, boundary);
    }
#endif
    if (rc == TN_OK && prune_s_range_of(bnd, B, S, regular, R) != R)
        rc = tn_error(TN_ERR_SHAPE,
                      "%s: s_range %lld (ranges %s) cannot be used for S = %lld, %s RNN-T with these boundaries: "
                      "tn_rnnt_prune_s_range gives %lld", op, (long long)R, TN_SHAPE(ranges), (long long)S,
                      regular ? "regular" : "modified/constrained",
                      (long long)prune_s_range_of(bnd, B, S, regular, R));
    int64_t *sbeg = NULL;
    if (rc == TN_OK) {
        sbeg = (int64_t *)malloc(sizeof(int64_t) * (size_t)(T > 0 ? T : 1));
        if (!sbeg) rc = tn_error(TN_ERR_OOM, "%s: out of memory", op);
    }
    if (rc == TN_OK) {
        const int f64 = py_grad->dtype == TN_F64;
        const int64_t T0 = px_grad->shape[2], S1 = S + 1, step = regular ? R : 2;
        int64_t *out = (int64_t *)ranges->data;
        for (int64_t b = 0; b < B; b++) {
            const void *pxg = px_grad->data + (size_t)(b * S * T0) * (f64 ? 8 : 4);
            const void *pyg = py_grad->data + (size_t)(b * S1 * T) * (f64 ? 8 : 4);
            int64_t pad = bnd[b].s1 - R + 1;
            if (pad < 0) pad = 0;
            for (int64_t t = 0; t < T; t++) {
                if (S == 0 || t >= bnd[b].t1 - 1) {
                    sbeg[t] = S == 0 ? 0 : pad;
                    continue;
                }
                /* argmax over j of sum_{k<R} py_grad[j+k, t] - px_grad[j-1, t] (first maximum),
                 * summed in the dtype like fast_rnnt */
                int64_t best_j = 0;
                double best = 0.0;
                for (int64_t j = 0; j + R <= S1; j++) {
                    double v;
                    if (f64) {
                        double sum = 0.0;
                        for (int64_t k = 0; k < R; k++) sum += ((const double *)pyg)[(j + k) * T + t];
                        v = sum - (j > 0 ? ((const double *)pxg)[(j - 1) * T0 + t] : 0.0);
                    } else {
                        float sum = 0.0f;
                        for (int64_t k = 0; k < R; k++) sum += ((const float *)pyg)[(j + k) * T + t];
                        v = (double)(sum - (j > 0 ? ((const float *)pxg)[(j - 1) * T0 + t] : 0.0f));
                    }
                    if (j == 0 || v > best) best = v, best_j = j;
                }
                sbeg[t] = best_j;
            }
            /* _adjust_pruning_lower_bound(s_begin, step) */
            monotonic_lower_bound(sbeg, T);
            for (int64_t t = 0; t < T; t++) sbeg[t] = -(sbeg[t] - (step - 1) * t);
            monotonic_lower_bound(sbeg, T);
            for (int64_t t = 0; t < T; t++) {
                int64_t v = sbeg[t] < 0 ? 0 : sbeg[t];
                sbeg[t] = -(v - (step - 1) * t);
            }
            for (int64_t t = 0; t < T; t++)
                for (int64_t k = 0; k < R; k++) out[(b * T + t) * R + k] = sbeg[t] + k;
        }
    }
    free(sbeg);
    free(bnd);
    return rc;
}

/* ---- do_pruning ----------------------------------------------------------------------------- */

static tn_status pruning_check(const char *op, const tn_tensor *lm, const tn_tensor *ranges, int64_t *B, int64_t *T,
                               int64_t *R, int64_t *S1) {
    TN_TRY(tn_check_tensor(op, "lm", lm));
    TN_TRY(tn_check_tensor(op, "ranges", ranges));
    TN_TRY(tn_check_backend(op, lm));
    TN_TRY(tn_check_backend(op, ranges));
    TN_TRY(tn_rnnt_internal_device(op, "lm", lm, "ranges", ranges, (const char *)NULL));
    TN_TRY(tn_check_index_dtype(op, "ranges", ranges));
    if (ranges->ndim != 3) return tn_error(TN_ERR_SHAPE, "%s: ranges has shape %s, expected (B, T, R)", op, TN_SHAPE(ranges));
    *B = ranges->shape[0], *T = ranges->shape[1], *R = ranges->shape[2];
    if (lm->ndim != 3 || lm->shape[0] != *B)
        return tn_error(TN_ERR_SHAPE, "%s: lm has shape %s, expected (B = %lld, S+1, D) for ranges %s", op,
                        TN_SHAPE(lm), (long long)*B, TN_SHAPE(ranges));
    if (!tn_tensor_is_contiguous(lm)) return tn_error(TN_ERR_ARG, "%s: lm %s must be contiguous", op, TN_SHAPE(lm));
    *S1 = lm->shape[1];
    if (ranges->device != TN_CPU) return TN_OK; /* CUDA: the values are checked on the device */
    for (int64_t b = 0; b < *B; b++)
        for (int64_t t = 0; t < *T; t++)
            for (int64_t k = 0; k < *R; k++) {
                const int64_t v = ldi3(ranges, b, t, k);
                if (v < 0 || v >= *S1)
                    return tn_error(TN_ERR_INDEX, "%s: ranges at [%lld, %lld, %lld] is %lld, outside [0, S+1 = %lld)",
                                    op, TN_D(b), TN_D(t), TN_D(k), (long long)v, (long long)*S1);
            }
    return TN_OK;
}

tn_status tn_rnnt_do_pruning(tn_tensor *lm_pruned, const tn_tensor *lm, const tn_tensor *ranges) {
    static const char *op = "rnnt_do_pruning";
    int64_t B, T, R, S1;
    TN_TRY(pruning_check(op, lm, ranges, &B, &T, &R, &S1));
    const int64_t D = lm->shape[2], shape[4] = {B, T, R, D};
    TN_TRY(tn_check_tensor(op, "lm_pruned", lm_pruned));
    if (lm_pruned->dtype != lm->dtype)
        return tn_error(TN_ERR_DTYPE, "%s: lm_pruned is %s, lm is %s", op, tn_dtype_name(lm_pruned->dtype),
                        tn_dtype_name(lm->dtype));
    int same = lm_pruned->ndim == 4;
    for (int i = 0; same && i < 4; i++) same = lm_pruned->shape[i] == shape[i];
    if (!same || !tn_tensor_is_contiguous(lm_pruned))
        return tn_error(TN_ERR_SHAPE, "%s: lm_pruned has shape %s, expected a contiguous %s", op, TN_SHAPE(lm_pruned),
                        TN_DIMS(4, shape));
    TN_TRY(tn_check_backend(op, lm_pruned));
    TN_TRY(tn_rnnt_internal_device(op, "lm", lm, "lm_pruned", lm_pruned, (const char *)NULL));
#ifdef TERN_HAVE_CUDA
    if (lm->device == TN_CUDA) return tn_cuda_rnnt_do_pruning(op, lm_pruned, lm, ranges);
#endif
    const size_t row = (size_t)D * tn_dtype_size(lm->dtype);
    const int64_t n = B * T * R;
    int nt = tn_par_threads(n * D, 1 << 16);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t i = 0; i < n; i++) {
        const int64_t b = i / (T * R), t = (i / R) % T, k = i % R;
        memcpy(lm_pruned->data + (size_t)i * row, lm->data + (size_t)(b * S1 + ldi3(ranges, b, t, k)) * row, row);
    }
    return TN_OK;
}

/* Utterance b of do_pruning's backward: grad_lm[b] = 0, then each pruned row's gradient added to
 * the row of lm it was copied from, in (t, k) order. Inlined with a constant f64, so each dtype
 * gets its own loops. */
static inline __attribute__((always_inline)) void pruning_scatter(void *grad_lm, const void *grad_lm_pruned,
                                                                  const tn_tensor *ranges, int64_t b, int64_t T,
                                                                  int64_t R, int64_t S1, int64_t D, int f64) {
    const size_t es = f64 ? sizeof(double) : sizeof(float);
    const int64_t go = b * S1 * D, so = b * T * R * D;
    memset((char *)grad_lm + (size_t)go * es, 0, es * (size_t)(S1 * D));
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < R; k++) {
            const int64_t gi = go + ldi3(ranges, b, t, k) * D, si = so + (t * R + k) * D;
            if (f64) {
                double *gr = (double *)grad_lm + gi;
                const double *sr = (const double *)grad_lm_pruned + si;
                for (int64_t d = 0; d < D; d++) gr[d] += sr[d];
            } else {
                float *gr = (float *)grad_lm + gi;
                const float *sr = (const float *)grad_lm_pruned + si;
#ifdef _OPENMP
#pragma omp simd
#endif
                for (int64_t d = 0; d < D; d++) gr[d] += sr[d];
            }
        }
}

tn_status tn_rnnt_do_pruning_backward(tn_tensor *grad_lm, const tn_tensor *grad_lm_pruned, const tn_tensor *ranges) {
    static const char *op = "rnnt_do_pruning_backward";
    int64_t B, T, R, S1;
    TN_TRY(tn_rnnt_internal_float(op, "grad_lm", grad_lm, 3, NULL, -1));
    TN_TRY(pruning_check(op, grad_lm, ranges, &B, &T, &R, &S1));
    const int64_t D = grad_lm->shape[2], shape[4] = {B, T, R, D};
    TN_TRY(tn_rnnt_internal_float(op, "grad_lm_pruned", grad_lm_pruned, 4, shape, grad_lm->dtype));
    TN_TRY(tn_rnnt_internal_device(op, "grad_lm", grad_lm, "grad_lm_pruned", grad_lm_pruned, (const char *)NULL));
#ifdef TERN_HAVE_CUDA
    if (grad_lm->device == TN_CUDA) return tn_cuda_rnnt_do_pruning_backward(op, grad_lm, grad_lm_pruned, ranges);
#endif
    const int f64 = grad_lm->dtype == TN_F64;
    int nt = tn_par_threads(B * T * R * D, 1 << 16);
    if (nt > B) nt = (int)(B > 0 ? B : 1);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t b = 0; b < B; b++) { /* each utterance owns its rows of grad_lm: no atomics, fixed order */
        if (f64) pruning_scatter(grad_lm->data, grad_lm_pruned->data, ranges, b, T, R, S1, D, 1);
        else pruning_scatter(grad_lm->data, grad_lm_pruned->data, ranges, b, T, R, S1, D, 0);
    }
    return TN_OK;
}

/* ---- fused pruned joiner hidden unit: h = tanh(am[b, t] + lm[b, ranges[b, t, k]]) --------------- */
/* One pass replaces do_pruning's (B, T, R, D) copy of lm, the broadcast add and the tanh (three
 * tensors of that size, and three passes over them). The backward reads grad_h and h once and
 * writes only grad_am (B, T, D) and grad_lm (B, S+1, D): the (B, T, R, D) gradients of the tanh
 * input and of lm_pruned are never formed. Work is split over (b, slice of D): each task owns
 * its columns of grad_am[b] and grad_lm[b], so there are no atomics and the summation order is
 * fixed (results do not depend on the thread count). */

#define JOINER_DSLICE ((int64_t)64)

typedef struct joiner_args {
    const int64_t *rng; /* ranges, contiguous i64 (B, T, R) */
    int64_t B, T, R, S1, D;
    const void *am, *lm, *gh, *h;
    void *out, *gam, *glm;
} joiner_args;

RNNT_INLINE void joiner_fwd_f_body(const joiner_args *a, int64_t row) { /* row = (b, t, k) */
    const int64_t b = row / (a->T * a->R), t = (row / a->R) % a->T;
    const float *am = (const float *)a->am + (b * a->T + t) * a->D;
    const float *lm = (const float *)a->lm + (b * a->S1 + a->rng[row]) * a->D;
    float *h = (float *)a->out + row * a->D;
#ifdef _OPENMP
#pragma omp simd
#endif
    for (int64_t d = 0; d < a->D; d++) h[d] = tn_rnnt_joiner_h_f(am[d], lm[d]);
}
RNNT_INLINE void joiner_bwd_f_body(const joiner_args *a, int64_t task) { /* task = (b, slice) */
    const int64_t ns = (a->D + JOINER_DSLICE - 1) / JOINER_DSLICE, b = task / ns;
    const int64_t d0 = (task % ns) * JOINER_DSLICE, n = a->D - d0 < JOINER_DSLICE ? a->D - d0 : JOINER_DSLICE;
    float *glm = a->glm ? (float *)a->glm + b * a->S1 * a->D + d0 : NULL;
    if (glm)
        for (int64_t s = 0; s < a->S1; s++) memset(glm + s * a->D, 0, sizeof(float) * (size_t)n);
    for (int64_t t = 0; t < a->T; t++) {
        float acc[JOINER_DSLICE];
        memset(acc, 0, sizeof acc);
        for (int64_t k = 0; k < a->R; k++) {
            const int64_t row = (b * a->T + t) * a->R + k;
            const float *g = (const float *)a->gh + row * a->D + d0, *h = (const float *)a->h + row * a->D + d0;
            float *gl = glm ? glm + a->rng[row] * a->D : NULL;
            if (gl) {
#ifdef _OPENMP
#pragma omp simd
#endif
                for (int64_t d = 0; d < n; d++) {
                    const float z = tn_rnnt_joiner_dz_f(g[d], h[d]);
                    acc[d] += z;
                    gl[d] += z;
                }
            } else {
#ifdef _OPENMP
#pragma omp simd
#endif
                for (int64_t d = 0; d < n; d++) acc[d] += tn_rnnt_joiner_dz_f(g[d], h[d]);
            }
        }
        if (a->gam) memcpy((float *)a->gam + (b * a->T + t) * a->D + d0, acc, sizeof(float) * (size_t)n);
    }
}
static void joiner_fwd_d(const joiner_args *a, int64_t row) {
    const int64_t b = row / (a->T * a->R), t = (row / a->R) % a->T;
    const double *am = (const double *)a->am + (b * a->T + t) * a->D;
    const double *lm = (const double *)a->lm + (b * a->S1 + a->rng[row]) * a->D;
    double *h = (double *)a->out + row * a->D;
    for (int64_t d = 0; d < a->D; d++) h[d] = tn_rnnt_joiner_h_d(am[d], lm[d]);
}
static void joiner_bwd_d(const joiner_args *a, int64_t task) {
    const int64_t ns = (a->D + JOINER_DSLICE - 1) / JOINER_DSLICE, b = task / ns;
    const int64_t d0 = (task % ns) * JOINER_DSLICE, n = a->D - d0 < JOINER_DSLICE ? a->D - d0 : JOINER_DSLICE;
    double *glm = a->glm ? (double *)a->glm + b * a->S1 * a->D + d0 : NULL;
    if (glm)
        for (int64_t s = 0; s < a->S1; s++) memset(glm + s * a->D, 0, sizeof(double) * (size_t)n);
    for (int64_t t = 0; t < a->T; t++) {
        double acc[JOINER_DSLICE] = {0};
        for (int64_t k = 0; k < a->R; k++) {
            const int64_t row = (b * a->T + t) * a->R + k;
            const double *g = (const double *)a->gh + row * a->D + d0, *h = (const double *)a->h + row * a->D + d0;
            double *gl = glm ? glm + a->rng[row] * a->D : NULL;
            for (int64_t d = 0; d < n; d++) {
                const double z = tn_rnnt_joiner_dz_d(g[d], h[d]);
                acc[d] += z;
                if (gl) gl[d] += z;
            }
        }
        if (a->gam) memcpy((double *)a->gam + (b * a->T + t) * a->D + d0, acc, sizeof(double) * (size_t)n);
    }
}
typedef void (*joiner_fn)(const joiner_args *, int64_t);
static void joiner_fwd_f_base(const joiner_args *a, int64_t i) { joiner_fwd_f_body(a, i); }
static void joiner_bwd_f_base(const joiner_args *a, int64_t i) { joiner_bwd_f_body(a, i); }
#ifdef TN_AVX2_BUILD
__attribute__((target("avx2,fma"))) static void joiner_fwd_f_avx2(const joiner_args *a, int64_t i) {
    joiner_fwd_f_body(a, i);
}
__attribute__((target("avx2,fma"))) static void joiner_bwd_f_avx2(const joiner_args *a, int64_t i) {
    joiner_bwd_f_body(a, i);
}
#endif

/* shapes, dtypes and index range shared by forward and backward; *rng_out: ranges as contiguous
 * i64 (a malloc'd copy when ranges is not already that, else NULL with *rng pointing into it) */
static tn_status joiner_check(const char *op, const tn_tensor *am, const tn_tensor *lm, const tn_tensor *ranges,
                              joiner_args *a, int64_t **rng_copy) {
    *rng_copy = NULL;
    TN_TRY(tn_check_tensor(op, "am", am));
    TN_TRY(tn_rnnt_internal_float(op, "am", am, 3, NULL, -1));
    TN_TRY(pruning_check(op, lm, ranges, &a->B, &a->T, &a->R, &a->S1));
    if (lm->dtype != am->dtype)
        return tn_error(TN_ERR_DTYPE, "%s: am is %s but lm is %s", op, tn_dtype_name(am->dtype), tn_dtype_name(lm->dtype));
    if (am->shape[0] != a->B || am->shape[1] != a->T || am->shape[2] != lm->shape[2])
        return tn_error(TN_ERR_SHAPE, "%s: am has shape %s, expected (B = %lld, T = %lld, D = %lld) for lm %s and ranges %s",
                        op, TN_SHAPE(am), (long long)a->B, (long long)a->T, (long long)lm->shape[2], TN_SHAPE(lm),
                        TN_SHAPE(ranges));
    if (!tn_tensor_is_contiguous(am)) return tn_error(TN_ERR_ARG, "%s: am %s must be contiguous", op, TN_SHAPE(am));
    a->D = lm->shape[2];
    TN_TRY(tn_rnnt_internal_device(op, "am", am, "lm", lm, (const char *)NULL));
    const int64_t n = a->B * a->T * a->R;
    if (am->device != TN_CPU) return TN_OK; /* CUDA: ranges read on the device */
    if (ranges->dtype == TN_I64 && tn_tensor_is_contiguous(ranges)) {
        a->rng = (const int64_t *)ranges->data;
    } else {
        int64_t *c = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
        if (!c) return tn_error(TN_ERR_OOM, "%s: out of memory copying ranges %s", op, TN_SHAPE(ranges));
        for (int64_t i = 0; i < n; i++) c[i] = ldi3(ranges, i / (a->T * a->R), (i / a->R) % a->T, i % a->R);
        a->rng = c;
        *rng_copy = c;
    }
    return TN_OK;
}

tn_status tn_rnnt_pruned_tanh(tn_tensor *h, const tn_tensor *am, const tn_tensor *lm, const tn_tensor *ranges) {
    static const char *op = "rnnt_pruned_tanh";
    joiner_args a = {0};
    int64_t *copy;
    TN_TRY(tn_check_tensor(op, "h", h));
    TN_TRY(joiner_check(op, am, lm, ranges, &a, &copy));
    const int64_t shape[4] = {a.B, a.T, a.R, a.D};
    tn_status st = tn_rnnt_internal_float(op, "h", h, 4, shape, am->dtype);
    if (st == TN_OK && !tn_tensor_is_contiguous(h))
        st = tn_error(TN_ERR_ARG, "%s: h %s must be contiguous", op, TN_SHAPE(h));
    if (st == TN_OK) st = tn_rnnt_internal_device(op, "am", am, "h", h, (const char *)NULL);
    if (st != TN_OK) {
        free(copy);
        return st;
    }
#ifdef TERN_HAVE_CUDA
    if (am->device == TN_CUDA) return tn_cuda_rnnt_pruned_tanh(op, h, am, lm, ranges);
#endif
    a.am = am->data, a.lm = lm->data, a.out = h->data;
    joiner_fn fn = joiner_fwd_d;
    if (am->dtype == TN_F32) {
        fn = joiner_fwd_f_base;
#ifdef TN_AVX2_BUILD
        if (tn_cpu_has_avx2_fma()) fn = joiner_fwd_f_avx2;
#endif
    }
    const int64_t rows = a.B * a.T * a.R;
    int nt = tn_par_threads(rows * a.D, 1 << 15);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t i = 0; i < rows; i++) fn(&a, i);
    free(copy);
    return TN_OK;
}

tn_status tn_rnnt_pruned_tanh_backward(tn_tensor *grad_am, tn_tensor *grad_lm, const tn_tensor *grad_h,
                                       const tn_tensor *h, const tn_tensor *am, const tn_tensor *lm,
                                       const tn_tensor *ranges) {
    static const char *op = "rnnt_pruned_tanh_backward";
    joiner_args a = {0};
    int64_t *copy;
    TN_TRY(joiner_check(op, am, lm, ranges, &a, &copy));
    const int64_t shape[4] = {a.B, a.T, a.R, a.D};
    tn_status st = tn_rnnt_internal_float(op, "grad_h", grad_h, 4, shape, am->dtype);
    if (st == TN_OK) st = tn_rnnt_internal_float(op, "h", h, 4, shape, am->dtype);
    if (st == TN_OK && (!tn_tensor_is_contiguous(grad_h) || !tn_tensor_is_contiguous(h)))
        st = tn_error(TN_ERR_ARG, "%s: grad_h %s and h %s must be contiguous", op, TN_SHAPE(grad_h), TN_SHAPE(h));
    if (st == TN_OK && grad_am) {
        st = tn_rnnt_internal_float(op, "grad_am", grad_am, 3, am->shape, am->dtype);
        if (st == TN_OK && !tn_tensor_is_contiguous(grad_am))
            st = tn_error(TN_ERR_ARG, "%s: grad_am %s must be contiguous", op, TN_SHAPE(grad_am));
    }
    if (st == TN_OK && grad_lm) {
        st = tn_rnnt_internal_float(op, "grad_lm", grad_lm, 3, lm->shape, am->dtype);
        if (st == TN_OK && !tn_tensor_is_contiguous(grad_lm))
            st = tn_error(TN_ERR_ARG, "%s: grad_lm %s must be contiguous", op, TN_SHAPE(grad_lm));
    }
    if (st == TN_OK)
        st = tn_rnnt_internal_device(op, "am", am, "grad_h", grad_h, "h", h, "grad_am", grad_am, "grad_lm", grad_lm,
                                     (const char *)NULL);
    if (st != TN_OK) {
        free(copy);
        return st;
    }
#ifdef TERN_HAVE_CUDA
    if (am->device == TN_CUDA) return tn_cuda_rnnt_pruned_tanh_backward(op, grad_am, grad_lm, grad_h, h, am, lm, ranges);
#endif
    a.gh = grad_h->data, a.h = h->data;
    a.gam = grad_am ? grad_am->data : NULL, a.glm = grad_lm ? grad_lm->data : NULL;
    joiner_fn fn = joiner_bwd_d;
    if (am->dtype == TN_F32) {
        fn = joiner_bwd_f_base;
#ifdef TN_AVX2_BUILD
        if (tn_cpu_has_avx2_fma()) fn = joiner_bwd_f_avx2;
#endif
    }
    const int64_t tasks = a.B * ((a.D + JOINER_DSLICE - 1) / JOINER_DSLICE);
    int nt = tn_par_threads(a.B * a.T * a.R * a.D, 1 << 15);
    if (nt > tasks) nt = (int)(tasks > 0 ? tasks : 1);
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t i = 0; i < tasks; i++) fn(&a, i);
    free(copy);
    return TN_OK;
}
