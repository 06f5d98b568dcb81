/*
 * rnnt.c — the mutual-information recursion and the "simple" (additive joiner) logprobs of the
 * RNN-T loss family, on the CPU, f32 and f64: tn_rnnt_mutual_information(_backward),
 * tn_rnnt_logprobs_simple(_backward). Semantics: k2 / fast_rnnt mutual_information.py and
 * rnnt_loss.py (get_rnnt_logprobs, get_rnnt_logprobs_smoothed, the delay penalty of
 * rnnt_loss_simple). The joint and pruned logprobs and the pruning helpers are in rnnt_prune.c;
 * the shared argument checks and the px post-processing (fix_for_boundary, constrained,
 * delay penalty) are defined here as tn_rnnt_internal_* and declared in rnnt_common.h.
 *
 * Gradient policy: every gradient here is an activation gradient and is written (=).
 *
 * Mutual information. Each utterance walks its boundary rectangle row by row (s outer, t
 * inner) with two rows of the table in double, whatever the dtype. A cell's log-add also gives
 * the normalised weights of its two predecessors (kernels/rnnt.h); with return_grad they are
 * stored where px_grad / py_grad will hold the gradient of the move they weight, and the
 * backward pass walks the rectangle in reverse, turning each stored weight into the
 * occupation g(successor) * weight in place: no exp or log in the backward, one pass over the
 * table each way. Utterances run on OpenMP threads (dynamic schedule; B=8, T=200, S=60: 4.7 ms
 * on one thread, 2.4 ms on two). Inside an utterance the recursion stays serial: an
 * anti-diagonal has at most min(S, T)+1 cells of ~20 ns, so a barrier per diagonal would cost
 * about what it saves at speech sizes (S <= 100); not implemented, not measured.
 *
 * Simple logprobs. Per utterance: exp(lm - max) (S+1, C) and exp(am - max) (T, C) once, the
 * normaliser sum_c as one GEMM (S+1, C) x (C, T), then px, py from O(S T) gathers. The
 * backward recomputes those and needs two more GEMMs: with Q = G / Z (G the gradient reaching
 * the normaliser), grad_lm = -exp(lm - max) * (Q exp(am - max)) and grad_am = -exp(am - max)
 * * (Q^T exp(lm - max)), plus the gathered entries. Nothing of size T x (S+1) x C is formed.
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

#ifdef TERN_HAVE_OPENBLAS /* defined by CMakeLists.txt when TERN_BLAS=ON */
#include <cblas.h>
#endif

static inline int64_t ldi(const tn_tensor *t, int64_t i, int64_t j) { /* 2-D index tensor */
    const char *p = t->data + (i * t->strides[0] + j * t->strides[1]) * (int64_t)tn_dtype_size(t->dtype);
    return tn_load_i64(p, t->dtype);
}

tn_status tn_rnnt_internal_float(const char *op, const char *name, const tn_tensor *t, int32_t ndim,
                                 const int64_t *shape, int32_t dtype) {
    if (!t) return tn_error(TN_ERR_ARG, "%s: argument '%s' is NULL", op, name);
    TN_TRY(tn_check_cpu(op, t));
    if (t->dtype == TN_F16 || t->dtype == TN_BF16)
        return tn_error(TN_ERR_DTYPE, "%s: '%s' is %s; the RNN-T kernels take f32 or f64 (convert first)", op,
                        name, tn_dtype_name(t->dtype));
    if (t->dtype != TN_F32 && t->dtype != TN_F64)
        return tn_error(TN_ERR_DTYPE, "%s: '%s' must be f32 or f64, got %s", op, name, tn_dtype_name(t->dtype));
    if (dtype >= 0 && t->dtype != dtype)
        return tn_error(TN_ERR_DTYPE, "%s: '%s' is %s but the other float arguments are %s", op, name,
                        tn_dtype_name(t->dtype), tn_dtype_name(dtype));
    if (shape) {
        int same = t->ndim == ndim;
        for (int32_t i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
        if (!same)
            return tn_error(TN_ERR_SHAPE, "%s: '%s' has shape %s, expected %s", op, name, TN_SHAPE(t),
                            TN_DIMS(ndim, shape));
    } else if (t->ndim != ndim) {
        return tn_error(TN_ERR_SHAPE, "%s: '%s' must have %d dims, got shape %s", op, name, (int)ndim, TN_SHAPE(t));
    }
    if (!tn_tensor_is_contiguous(t))
        return tn_error(TN_ERR_ARG, "%s: '%s' %s must be contiguous", op, name, TN_SHAPE(t));
    return TN_OK;
}

tn_status tn_rnnt_internal_boundary(const char *op, const tn_tensor *boundary, int64_t B, int64_t S,
                                    int64_t T, int need_t_ge_s, tn_rnnt_bnd **out) {
    *out = NULL;
    tn_rnnt_bnd *bd = (tn_rnnt_bnd *)malloc(sizeof(tn_rnnt_bnd) * (size_t)(B > 0 ? B : 1));
    if (!bd) return tn_error(TN_ERR_OOM, "%s: out of memory (boundary, B = %lld)", op, (long long)B);
    if (!boundary) {
        if (need_t_ge_s && T < S) {
            free(bd);
            return tn_error(TN_ERR_SHAPE,
                            "%s: modified / constrained RNN-T needs T >= S (at most one symbol per frame), "
                            "got T = %lld, S = %lld", op, (long long)T, (long long)S);
        }
        for (int64_t b = 0; b < B; b++) bd[b] = (tn_rnnt_bnd){0, 0, S, T};
        *out = bd;
        return TN_OK;
    }
    tn_status st_ = tn_check_cpu(op, boundary);
    if (st_ == TN_OK) st_ = tn_check_index_dtype(op, "boundary", boundary);
    if (st_ == TN_OK && (boundary->ndim != 2 || boundary->shape[0] != B || boundary->shape[1] != 4))
        st_ = tn_error(TN_ERR_SHAPE, "%s: boundary has shape %s, expected [%lld, 4]", op, TN_SHAPE(boundary),
                       (long long)B);
    if (st_ != TN_OK) {
        free(bd);
        return st_;
    }
    for (int64_t b = 0; b < B; b++) {
        tn_rnnt_bnd v = {ldi(boundary, b, 0), ldi(boundary, b, 1), ldi(boundary, b, 2), ldi(boundary, b, 3)};
        if (v.s0 < 0 || v.t0 < 0 || v.s1 < v.s0 || v.t1 < v.t0 || v.s1 > S || v.t1 > T) {
            free(bd);
            return tn_error(TN_ERR_INDEX,
                            "%s: boundary row %lld = [%lld, %lld, %lld, %lld] must satisfy 0 <= begin_symbol <= "
                            "end_symbol <= S = %lld and 0 <= begin_frame <= end_frame <= T = %lld",
                            op, TN_D(b), (long long)v.s0, (long long)v.t0, (long long)v.s1, (long long)v.t1,
                            (long long)S, (long long)T);
        }
        if (need_t_ge_s && v.t1 - v.t0 < v.s1 - v.s0) {
            free(bd);
            return tn_error(TN_ERR_SHAPE,
                            "%s: boundary row %lld = [%lld, %lld, %lld, %lld] has %lld frames for %lld symbols; "
                            "modified / constrained RNN-T needs frames >= symbols",
                            op, TN_D(b), (long long)v.s0, (long long)v.t0, (long long)v.s1, (long long)v.t1,
                            (long long)(v.t1 - v.t0), (long long)(v.s1 - v.s0));
        }
        bd[b] = v;
    }
    *out = bd;
    return TN_OK;
}

tn_status tn_rnnt_internal_symbols(const char *op, const tn_tensor *symbols, int64_t B, int64_t S, int64_t C) {
    TN_TRY(tn_check_tensor(op, "symbols", symbols));
    TN_TRY(tn_check_cpu(op, symbols));
    TN_TRY(tn_check_index_dtype(op, "symbols", symbols));
    if (symbols->ndim != 2 || symbols->shape[0] != B || symbols->shape[1] != S)
        return tn_error(TN_ERR_SHAPE, "%s: symbols has shape %s, expected [%lld, %lld] (B, S)", op,
                        TN_SHAPE(symbols), (long long)B, (long long)S);
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++) {
            int64_t v = ldi(symbols, b, s);
            if (v < 0 || v >= C)
                return tn_error(TN_ERR_INDEX, "%s: symbols at position [%lld, %lld] is %lld, outside [0, C = %lld)",
                                op, TN_D(b), TN_D(s), (long long)v, (long long)C);
        }
    return TN_OK;
}

tn_status tn_rnnt_internal_options(const char *op, int64_t termination_symbol, int64_t C,
                                   int32_t rnnt_type, double delay_penalty) {
    if (termination_symbol < 0 || termination_symbol >= C)
        return tn_error(TN_ERR_INDEX, "%s: termination_symbol %lld is outside [0, C = %lld)", op,
                        (long long)termination_symbol, (long long)C);
    if (rnnt_type != TN_RNNT_REGULAR && rnnt_type != TN_RNNT_MODIFIED && rnnt_type != TN_RNNT_CONSTRAINED)
        return tn_error(TN_ERR_ARG, "%s: rnnt_type %d is not TN_RNNT_REGULAR (0), MODIFIED (1) or CONSTRAINED (2)",
                        op, (int)rnnt_type);
    if (!(delay_penalty == delay_penalty) || delay_penalty == INFINITY || delay_penalty == -INFINITY)
        return tn_error(TN_ERR_ARG, "%s: delay_penalty must be finite, got %g", op, delay_penalty);
    return TN_OK;
}

/* What fast_rnnt does to px after gathering: regular with a boundary, px[b, :, end_frame] =
 * -inf (fix_for_boundary); constrained, px[b, s, t] += py[b, s+1, t]; then, for delay_penalty
 * > 0 (k2 applies it only then), px[b, s, t] += λ ((T_b - 1) / 2 - t) with T_b = end_frame
 * (boundary given) or T. px is (B, S, T0), T0 = T+1 regular, else T. */
void tn_rnnt_internal_post(void *px, void *py, const tn_rnnt_bnd *bnd, int boundary_given, int64_t B,
                           int64_t S, int64_t T, int32_t rnnt_type, double delay_penalty, int f64) {
    const int64_t T0 = rnnt_type == TN_RNNT_REGULAR ? T + 1 : T;
    for (int64_t b = 0; b < B; b++) {
        const int64_t pxo = b * S * T0, pyo = b * (S + 1) * T;
        if (rnnt_type == TN_RNNT_REGULAR && boundary_given)
            for (int64_t s = 0; s < S; s++) st(px, pxo + s * T0 + bnd[b].t1, f64, -INFINITY);
        if (rnnt_type == TN_RNNT_CONSTRAINED)
            for (int64_t s = 0; s < S; s++)
                for (int64_t t = 0; t < T; t++)
                    st(px, pxo + s * T0 + t, f64, ld(px, pxo + s * T0 + t, f64) + ld(py, pyo + (s + 1) * T + t, f64));
        if (delay_penalty > 0.0) {
            const int64_t tb = boundary_given ? bnd[b].t1 : T;
            for (int64_t s = 0; s < S; s++)
                for (int64_t t = 0; t < T0; t++)
                    st(px, pxo + s * T0 + t, f64,
                       ld(px, pxo + s * T0 + t, f64) + tn_rnnt_delay_penalty(delay_penalty, tb, t));
        }
    }
}

/* ---- mutual information ------------------------------------------------------------------------ */

typedef struct mi_ctx {
    int64_t B, S, T, T0;
    int o, f64;
    const tn_rnnt_bnd *bnd;
    const void *px, *py, *p_in, *grad_scores;
    void *pxg, *pyg, *p, *scores;
    int64_t *bad; /* (B, 3): which (0 ok, 1 px, 2 py), s, t */
} mi_ctx;

/* Forward (and with pxg, the in-place backward) of utterance b. rows: 2 (T+1) doubles. */
static void mi_one(const mi_ctx *c, int64_t b, double *rows) {
    const tn_rnnt_bnd bd = c->bnd[b];
    const int64_t S = c->S, T = c->T, T0 = c->T0, T1 = T + 1;
    const int o = c->o, f64 = c->f64;
    const int64_t pxo = b * S * T0, pyo = b * (S + 1) * T, po = b * (S + 1) * T1;
    const void *px = c->px, *py = c->py;
    void *pxg = c->pxg, *pyg = c->pyg, *p = c->p;
    double *prev = rows, *cur = rows + T1;
    if (pxg) {
        memset((char *)pxg + pxo * (f64 ? 8 : 4), 0, (size_t)(S * T0) * (f64 ? 8 : 4));
        memset((char *)pyg + pyo * (f64 ? 8 : 4), 0, (size_t)((S + 1) * T) * (f64 ? 8 : 4));
    }
    if (p)
        for (int64_t i = 0; i < (S + 1) * T1; i++) st(p, po + i, f64, -INFINITY);
    for (int64_t s = bd.s0; s <= bd.s1; s++) {
        for (int64_t t = bd.t0; t <= bd.t1; t++) {
            double v;
            if (s == bd.s0 && t == bd.t0) {
                v = 0.0;
            } else {
                double a = -INFINITY, y2 = -INFINITY, wa, wb;
                const int hx = s > bd.s0 && t - o >= bd.t0, hy = t > bd.t0;
                if (hx) {
                    const double x = ld(px, pxo + (s - 1) * T0 + t - o, f64);
                    if (TN_UNLIKELY(!(x < INFINITY))) {
                        c->bad[b * 3] = 1, c->bad[b * 3 + 1] = s - 1, c->bad[b * 3 + 2] = t - o;
                        return;
                    }
                    a = prev[t - o] + x;
                }
                if (hy) {
                    const double y = ld(py, pyo + s * T + t - 1, f64);
                    if (TN_UNLIKELY(!(y < INFINITY))) {
                        c->bad[b * 3] = 2, c->bad[b * 3 + 1] = s, c->bad[b * 3 + 2] = t - 1;
                        return;
                    }
                    y2 = cur[t - 1] + y;
                }
                v = tn_rnnt_logadd_w(a, y2, &wa, &wb);
                if (pxg) {
                    if (hx) st(pxg, pxo + (s - 1) * T0 + t - o, f64, wa);
                    if (hy) st(pyg, pyo + s * T + t - 1, f64, wb);
                }
            }
            cur[t] = v;
            if (p) st(p, po + s * T1 + t, f64, v);
        }
        double *tmp = prev;
        prev = cur;
        cur = tmp;
    }
    const double score = prev[bd.t1];
    st(c->scores, b, f64, score);
    if (!pxg) return;
    if (score == -INFINITY) { /* nothing reaches the end: no occupation anywhere */
        memset((char *)pxg + pxo * (f64 ? 8 : 4), 0, (size_t)(S * T0) * (f64 ? 8 : 4));
        memset((char *)pyg + pyo * (f64 ? 8 : 4), 0, (size_t)((S + 1) * T) * (f64 ? 8 : 4));
        return;
    }
    /* backward: g(s, t) = d score / d p(s, t); the weight of the move (s, t) -> successor sits
     * where the move's gradient goes and is replaced by g(successor) * weight */
    double *gn = rows, *gc = rows + T1;
    for (int64_t s = bd.s1; s >= bd.s0; s--) {
        for (int64_t t = bd.t1; t >= bd.t0; t--) {
            double g;
            if (s == bd.s1 && t == bd.t1) {
                g = 1.0;
            } else {
                g = 0.0;
                if (s < bd.s1 && t + o <= bd.t1) {
                    const int64_t i = pxo + s * T0 + t;
                    const double gx = gn[t + o] * ld(pxg, i, f64);
                    st(pxg, i, f64, gx);
                    g += gx;
                }
                if (t < bd.t1) {
                    const int64_t i = pyo + s * T + t;
                    const double gy = gc[t + 1] * ld(pyg, i, f64);
                    st(pyg, i, f64, gy);
                    g += gy;
                }
            }
            gc[t] = g;
        }
        double *tmp = gn;
        gn = gc;
        gc = tmp;
    }
}

/* Backward of utterance b from the saved table p_in. */
static void mi_back_one(const mi_ctx *c, int64_t b, double *rows) {
    const tn_rnnt_bnd bd = c->bnd[b];
    const int64_t S = c->S, T = c->T, T0 = c->T0, T1 = T + 1;
    const int o = c->o, f64 = c->f64;
    const int64_t pxo = b * S * T0, pyo = b * (S + 1) * T, po = b * (S + 1) * T1;
    const void *px = c->px, *py = c->py, *p = c->p_in;
    void *pxg = c->pxg, *pyg = c->pyg;
    memset((char *)pxg + pxo * (f64 ? 8 : 4), 0, (size_t)(S * T0) * (f64 ? 8 : 4));
    memset((char *)pyg + pyo * (f64 ? 8 : 4), 0, (size_t)((S + 1) * T) * (f64 ? 8 : 4));
    const double gs = c->grad_scores ? ld(c->grad_scores, b, f64) : 1.0;
    if (ld(p, po + bd.s1 * T1 + bd.t1, f64) == -INFINITY) return;
    double *gn = rows, *gc = rows + T1;
    for (int64_t s = bd.s1; s >= bd.s0; s--) {
        for (int64_t t = bd.t1; t >= bd.t0; t--) {
            double g;
            if (s == bd.s1 && t == bd.t1) {
                g = gs;
            } else {
                g = 0.0;
                const double pst = ld(p, po + s * T1 + t, f64);
                if (s < bd.s1 && t + o <= bd.t1) {
                    const int64_t i = pxo + s * T0 + t;
                    const double w = tn_rnnt_ratio(pst + ld(px, i, f64), ld(p, po + (s + 1) * T1 + t + o, f64));
                    const double gx = gn[t + o] * w;
                    st(pxg, i, f64, gx);
                    g += gx;
                }
                if (t < bd.t1) {
                    const int64_t i = pyo + s * T + t;
                    const double w = tn_rnnt_ratio(pst + ld(py, i, f64), ld(p, po + s * T1 + t + 1, f64));
                    const double gy = gc[t + 1] * w;
                    st(pyg, i, f64, gy);
                    g += gy;
                }
            }
            gc[t] = g;
        }
        double *tmp = gn;
        gn = gc;
        gc = tmp;
    }
}

/* Runs fn over the batch on OpenMP threads; returns TN_ERR_OOM when a row buffer failed. */
static tn_status mi_run(const char *op, const mi_ctx *c, void (*fn)(const mi_ctx *, int64_t, double *)) {
    const int64_t B = c->B, rowsz = 2 * (c->T + 1);
    int nt = tn_par_threads(B * (c->S + 1) * (c->T + 1), 2048);
    if (nt > B) nt = (int)(B > 0 ? B : 1);
    int oom = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : oom)
#endif
    {
        double *rows = (double *)malloc(sizeof(double) * (size_t)rowsz);
        if (!rows) oom = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t b = 0; b < B; b++)
            if (rows) fn(c, b, rows);
        free(rows);
    }
    if (oom) return tn_error(TN_ERR_OOM, "%s: out of memory (row buffers of %lld doubles)", op, (long long)rowsz);
    return TN_OK;
}

/* Checks px, py (and the optional outputs) and fills the shared part of the context. */
static tn_status mi_check(const char *op, mi_ctx *c, const tn_tensor *px, const tn_tensor *py,
                          const tn_tensor *boundary, tn_rnnt_bnd **bnd) {
    TN_TRY(tn_rnnt_internal_float(op, "py", py, 3, NULL, -1));
    const int64_t B = py->shape[0], S = py->shape[1] - 1, T = py->shape[2];
    TN_TRY(tn_rnnt_internal_float(op, "px", px, 3, NULL, py->dtype));
    if (S < 0 || px->shape[0] != B || px->shape[1] != S || (px->shape[2] != T + 1 && px->shape[2] != T))
        return tn_error(TN_ERR_SHAPE,
                        "%s: px must be (B, S, T+1) (regular) or (B, S, T) (modified) for py (B, S+1, T); got px %s, "
                        "py %s", op, TN_SHAPE(px), TN_SHAPE(py));
    c->B = B, c->S = S, c->T = T, c->T0 = px->shape[2];
    c->o = px->shape[2] == T ? 1 : 0;
    c->f64 = py->dtype == TN_F64;
    c->px = px->data, c->py = py->data;
    TN_TRY(tn_rnnt_internal_boundary(op, boundary, B, S, T, c->o, bnd));
    c->bnd = *bnd;
    return TN_OK;
}

tn_status tn_rnnt_mutual_information(tn_tensor *scores, tn_tensor *px_grad, tn_tensor *py_grad, tn_tensor *p,
                                     const tn_tensor *px, const tn_tensor *py, const tn_tensor *boundary) {
    static const char *op = "rnnt_mutual_information";
    mi_ctx c;
    memset(&c, 0, sizeof c);
    if (!px) return tn_error(TN_ERR_ARG, "%s: argument 'px' is NULL", op);
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(mi_check(op, &c, px, py, boundary, &bnd));
    tn_status rc = TN_OK;
    const int64_t B = c.B, S = c.S, T = c.T;
    const int64_t sb[1] = {B}, sp[3] = {B, S + 1, T + 1};
    if ((px_grad == NULL) != (py_grad == NULL))
        rc = tn_error(TN_ERR_ARG, "%s: give both px_grad and py_grad (return_grad) or neither", op);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "scores", scores, 1, sb, py->dtype);
    if (rc == TN_OK && px_grad) rc = tn_rnnt_internal_float(op, "px_grad", px_grad, 3, px->shape, py->dtype);
    if (rc == TN_OK && py_grad) rc = tn_rnnt_internal_float(op, "py_grad", py_grad, 3, py->shape, py->dtype);
    if (rc == TN_OK && p) rc = tn_rnnt_internal_float(op, "p", p, 3, sp, py->dtype);
    if (rc == TN_OK && (px_grad == px || px_grad == py || py_grad == px || py_grad == py))
        rc = tn_error(TN_ERR_ARG, "%s: px_grad / py_grad must not be px or py", op);
    int64_t *bad = NULL;
    if (rc == TN_OK) {
        bad = (int64_t *)calloc((size_t)(B > 0 ? B : 1) * 3, sizeof(int64_t));
        if (!bad) rc = tn_error(TN_ERR_OOM, "%s: out of memory", op);
    }
    if (rc == TN_OK) {
        c.bad = bad;
        c.scores = scores->data;
        c.pxg = px_grad ? px_grad->data : NULL;
        c.pyg = py_grad ? py_grad->data : NULL;
        c.p = p ? p->data : NULL;
        rc = mi_run(op, &c, mi_one);
    }
    for (int64_t b = 0; rc == TN_OK && b < B; b++)
        if (bad[b * 3]) {
            const int isx = bad[b * 3] == 1;
            const int64_t s = bad[b * 3 + 1], t = bad[b * 3 + 2];
            const double v = isx ? ld(px->data, (b * S + s) * c.T0 + t, c.f64) : ld(py->data, (b * (S + 1) + s) * T + t, c.f64);
            rc = tn_error(TN_ERR_ARG, "%s: %s at position [%lld, %lld, %lld] is %s (px %s, py %s); only finite "
                          "values and -inf are allowed", op, isx ? "px" : "py", TN_D(b), TN_D(s), TN_D(t),
                          v != v ? "NaN" : "+inf", TN_SHAPE(px), TN_SHAPE(py));
        }
    free(bad);
    free(bnd);
    return rc;
}

tn_status tn_rnnt_mutual_information_backward(tn_tensor *px_grad, tn_tensor *py_grad, const tn_tensor *grad_scores,
                                              const tn_tensor *px, const tn_tensor *py, const tn_tensor *boundary,
                                              const tn_tensor *p) {
    static const char *op = "rnnt_mutual_information_backward";
    mi_ctx c;
    memset(&c, 0, sizeof c);
    if (!px) return tn_error(TN_ERR_ARG, "%s: argument 'px' is NULL", op);
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(mi_check(op, &c, px, py, boundary, &bnd));
    const int64_t B = c.B, S = c.S, T = c.T;
    const int64_t sb[1] = {B}, sp[3] = {B, S + 1, T + 1};
    tn_status rc = tn_rnnt_internal_float(op, "px_grad", px_grad, 3, px->shape, py->dtype);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "py_grad", py_grad, 3, py->shape, py->dtype);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "p", p, 3, sp, py->dtype);
    if (rc == TN_OK && grad_scores) rc = tn_rnnt_internal_float(op, "grad_scores", grad_scores, 1, sb, py->dtype);
    if (rc == TN_OK) {
        c.pxg = px_grad->data, c.pyg = py_grad->data, c.p_in = p->data;
        c.grad_scores = grad_scores ? grad_scores->data : NULL;
        rc = mi_run(op, &c, mi_back_one);
    }
    free(bnd);
    return rc;
}

/* ---- simple logprobs --------------------------------------------------------------------------- */

/* C (M, N) = op(A) op(B), row-major, beta 0. */
static void rnnt_gemm(int f64, int ta, int tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                      const void *Bm, int64_t ldb, void *C, int64_t ldc) {
#ifdef TERN_HAVE_OPENBLAS
    if (f64)
        cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                    (int)K, 1.0, (const double *)A, (int)lda, (const double *)Bm, (int)ldb, 0.0, (double *)C, (int)ldc);
    else
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                    (int)K, 1.0f, (const float *)A, (int)lda, (const float *)Bm, (int)ldb, 0.0f, (float *)C, (int)ldc);
#else
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++)
                s += ld(A, ta ? k * lda + i : i * lda + k, f64) * ld(Bm, tb ? j * ldb + k : k * ldb + j, f64);
            st(C, i * ldc + j, f64, s);
        }
#endif
}

/* dst (rows, C) = exp(src - rowmax), mx[r] = rowmax. Returns the first row holding a value that
 * is not finite, or -1. */
static int64_t exp_rows(int f64, const void *src, void *dst, int64_t rows, int64_t C, double *mx) {
    int64_t bad = -1;
    for (int64_t r = 0; r < rows; r++) {
        if (f64) {
            const double *x = (const double *)src + r * C;
            double *y = (double *)dst + r * C;
            double m = -INFINITY;
            int ok = 1;
            for (int64_t c = 0; c < C; c++) {
                ok &= fabs(x[c]) <= DBL_MAX;
                m = x[c] > m ? x[c] : m;
            }
            if (!ok && bad < 0) bad = r;
            for (int64_t c = 0; c < C; c++) y[c] = exp(x[c] - m);
            mx[r] = m;
        } else {
            const float *x = (const float *)src + r * C;
            float *y = (float *)dst + r * C;
            float m = -INFINITY;
            int ok = 1;
#ifdef _OPENMP
#pragma omp simd reduction(max : m) reduction(& : ok)
#endif
            for (int64_t c = 0; c < C; c++) {
                ok &= fabsf(x[c]) <= FLT_MAX;
                m = x[c] > m ? x[c] : m;
            }
            if (!ok && bad < 0) bad = r;
#ifdef _OPENMP
#pragma omp simd
#endif
            for (int64_t c = 0; c < C; c++) y[c] = tn_exp_f(x[c] - m);
            mx[r] = m;
        }
    }
    return bad;
}

typedef struct simple_ctx {
    int64_t B, S, T, C, T0, term;
    int f64, smoothed, type, boundary_given;
    double cs, ls, as, tiny;
    const tn_rnnt_bnd *bnd;
    const tn_tensor *symbols;
    const void *lm, *am;
    double *U, *logU; /* (C) smoothed unigram and its log */
} simple_ctx;

/* Options shared by forward and backward: sizes, dtype, smoothing scales, unigram. */
static tn_status simple_setup(const char *op, simple_ctx *c, const tn_tensor *lm, const tn_tensor *am,
                              const tn_tensor *symbols, const tn_tensor *boundary, int64_t term,
                              int32_t rnnt_type, double lm_only_scale, double am_only_scale, double delay_penalty,
                              tn_rnnt_bnd **bnd) {
    TN_TRY(tn_rnnt_internal_float(op, "am", am, 3, NULL, -1));
    const int64_t B = am->shape[0], T = am->shape[1], C = am->shape[2];
    TN_TRY(tn_rnnt_internal_float(op, "lm", lm, 3, NULL, am->dtype));
    if (lm->shape[0] != B || lm->shape[2] != C || lm->shape[1] < 1)
        return tn_error(TN_ERR_SHAPE, "%s: lm must be (B, S+1, C) for am (B, T, C); got lm %s, am %s", op,
                        TN_SHAPE(lm), TN_SHAPE(am));
    const int64_t S = lm->shape[1] - 1;
    if (C < 1) return tn_error(TN_ERR_SHAPE, "%s: C = 0 classes (am %s)", op, TN_SHAPE(am));
    TN_TRY(tn_rnnt_internal_options(op, term, C, rnnt_type, delay_penalty));
    if (!(fabs(lm_only_scale) <= DBL_MAX) || !(fabs(am_only_scale) <= DBL_MAX))
        return tn_error(TN_ERR_ARG, "%s: lm_only_scale %g and am_only_scale %g must be finite", op, lm_only_scale,
                        am_only_scale);
    TN_TRY(tn_rnnt_internal_symbols(op, symbols, B, S, C));
    TN_TRY(tn_rnnt_internal_boundary(op, boundary, B, S, T, rnnt_type != TN_RNNT_REGULAR, bnd));
    c->B = B, c->S = S, c->T = T, c->C = C, c->term = term;
    c->T0 = rnnt_type == TN_RNNT_REGULAR ? T + 1 : T;
    c->f64 = am->dtype == TN_F64;
    c->type = rnnt_type;
    c->boundary_given = boundary != NULL;
    c->bnd = *bnd;
    c->symbols = symbols;
    c->lm = lm->data, c->am = am->data;
    c->tiny = c->f64 ? DBL_MIN : (double)FLT_MIN;
    c->smoothed = lm_only_scale != 0.0 || am_only_scale != 0.0;
    c->cs = 1.0 - lm_only_scale - am_only_scale;
    c->ls = lm_only_scale == 0.0 ? 1.0e-20 : lm_only_scale; /* fast_rnnt: avoid -inf * 0 */
    c->as = am_only_scale == 0.0 ? 1.0e-20 : am_only_scale;
    if (!c->smoothed) c->cs = 1.0, c->ls = 0.0, c->as = 0.0;
    return TN_OK;
}

/* The unigram of the smoothed loss: mean over the batch and all S+1 positions of softmax(lm),
 * plus tiny. rowbuf: C doubles of scratch. Returns the first (b, s) row that is not finite. */
static int64_t simple_unigram(simple_ctx *c, double *rowbuf) {
    const int64_t B = c->B, S1 = c->S + 1, C = c->C;
    for (int64_t k = 0; k < C; k++) c->U[k] = 0.0;
    for (int64_t r = 0; r < B * S1; r++) {
        double m = -INFINITY, sum = 0.0;
        for (int64_t k = 0; k < C; k++) {
            const double x = ld(c->lm, r * C + k, c->f64);
            if (!(fabs(x) <= DBL_MAX)) return r;
            m = x > m ? x : m;
        }
        for (int64_t k = 0; k < C; k++) sum += rowbuf[k] = exp(ld(c->lm, r * C + k, c->f64) - m);
        for (int64_t k = 0; k < C; k++) c->U[k] += rowbuf[k] / sum;
    }
    const double n = (double)(B * S1);
    for (int64_t k = 0; k < C; k++) {
        c->U[k] = c->f64 ? c->U[k] / n + DBL_MIN : (double)(float)((float)(c->U[k] / n) + FLT_MIN);
        c->logU[k] = log(c->U[k]);
    }
    return -1;
}

tn_status tn_rnnt_logprobs_simple(tn_tensor *px, tn_tensor *py, const tn_tensor *lm, const tn_tensor *am,
                                  const tn_tensor *symbols, const tn_tensor *boundary, int64_t termination_symbol,
                                  int32_t rnnt_type, double lm_only_scale, double am_only_scale,
                                  double delay_penalty) {
    static const char *op = "rnnt_logprobs_simple";
    simple_ctx c;
    memset(&c, 0, sizeof c);
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(simple_setup(op, &c, lm, am, symbols, boundary, termination_symbol, rnnt_type, lm_only_scale,
                        am_only_scale, delay_penalty, &bnd));
    const int64_t B = c.B, S = c.S, T = c.T, C = c.C, T0 = c.T0, S1 = S + 1, term = c.term;
    const int f64 = c.f64;
    const size_t es = f64 ? 8 : 4;
    const int64_t spx[3] = {B, S, T0}, spy[3] = {B, S1, T};
    tn_status rc = tn_rnnt_internal_float(op, "px", px, 3, spx, am->dtype);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "py", py, 3, spy, am->dtype);
    /* scratch: lp (S+1, C), ap (T, C), Z (S+1, T) in the dtype; lmax, amax, lonly, aonly, U, logU in double */
    char *buf = NULL;
    double *dbuf = NULL;
    if (rc == TN_OK) {
        buf = (char *)malloc(es * (size_t)(S1 * C + T * C + S1 * T) + 64);
        dbuf = (double *)malloc(sizeof(double) * (size_t)(2 * S1 + 2 * T + 3 * C + 4));
        if (!buf || !dbuf) rc = tn_error(TN_ERR_OOM, "%s: out of memory (scratch for B=%lld S=%lld T=%lld C=%lld)",
                                         op, (long long)B, (long long)S, (long long)T, (long long)C);
    }
    if (rc == TN_OK) {
        void *lp = buf, *ap = buf + es * (size_t)(S1 * C), *Z = buf + es * (size_t)(S1 * C + T * C);
        double *lmax = dbuf, *amax = lmax + S1, *lonly = amax + T, *aonly = lonly + S1;
        c.U = aonly + T, c.logU = c.U + C;
        double *rowbuf = c.logU + C;
        if (c.smoothed) {
            int64_t r = simple_unigram(&c, rowbuf);
            if (r >= 0)
                rc = tn_error(TN_ERR_ARG, "%s: lm row [%lld, %lld] holds NaN or inf (lm %s)", op, TN_D(r / S1),
                              TN_D(r % S1), TN_SHAPE(lm));
        }
        for (int64_t b = 0; rc == TN_OK && b < B; b++) {
            const void *lmb = (const char *)c.lm + es * (size_t)(b * S1 * C);
            const void *amb = (const char *)c.am + es * (size_t)(b * T * C);
            int64_t r = exp_rows(f64, lmb, lp, S1, C, lmax);
            if (r >= 0) {
                rc = tn_error(TN_ERR_ARG, "%s: lm row [%lld, %lld] holds NaN or inf (lm %s)", op, TN_D(b), TN_D(r),
                              TN_SHAPE(lm));
                break;
            }
            r = exp_rows(f64, amb, ap, T, C, amax);
            if (r >= 0) {
                rc = tn_error(TN_ERR_ARG, "%s: am row [%lld, %lld] holds NaN or inf (am %s)", op, TN_D(b), TN_D(r),
                              TN_SHAPE(am));
                break;
            }
            if (T > 0) rnnt_gemm(f64, 0, 1, S1, T, C, lp, C, ap, C, Z, T);
            if (c.smoothed) {
                for (int64_t s = 0; s < S1; s++) {
                    double sum = 0.0;
                    for (int64_t k = 0; k < C; k++) sum += ld(lp, s * C + k, f64);
                    lonly[s] = log(sum) + lmax[s];
                }
                for (int64_t t = 0; t < T; t++) {
                    double sum = 0.0;
                    for (int64_t k = 0; k < C; k++) sum += ld(ap, t * C + k, f64) * c.U[k];
                    aonly[t] = log(sum) + amax[t];
                }
            }
            const int64_t pxo = b * S * T0, pyo = b * S1 * T;
            for (int64_t s = 0; s < S1; s++) {
                const int64_t sym = s < S ? ldi(symbols, b, s) : 0;
                const double lm_sym = ld(lmb, s * C + sym, f64), lm_term = ld(lmb, s * C + term, f64);
                for (int64_t t = 0; t < T; t++) {
                    const double zt = f64 ? ld(Z, s * T + t, 1) + DBL_MIN : (double)((float)ld(Z, s * T + t, 0) + FLT_MIN);
                    const double norm = log(zt) + lmax[s] + amax[t];
                    const double am_term = ld(amb, t * C + term, f64);
                    double vy = am_term + lm_term - norm;
                    if (c.smoothed)
                        vy = c.cs * vy + c.ls * (lm_term - lonly[s]) + c.as * (am_term + c.logU[term] - aonly[t]);
                    st(py->data, pyo + s * T + t, f64, vy);
                    if (s < S) {
                        const double am_sym = ld(amb, t * C + sym, f64);
                        double vx = am_sym + lm_sym - norm;
                        if (c.smoothed)
                            vx = c.cs * vx + c.ls * (lm_sym - lonly[s]) + c.as * (am_sym + c.logU[sym] - aonly[t]);
                        st(px->data, pxo + s * T0 + t, f64, vx);
                    }
                }
                if (s < S && T0 > T) st(px->data, pxo + s * T0 + T, f64, -INFINITY);
            }
        }
        if (rc == TN_OK)
            tn_rnnt_internal_post(px->data, py->data, bnd, c.boundary_given, B, S, T, rnnt_type, delay_penalty, f64);
    }
    free(buf);
    free(dbuf);
    free(bnd);
    return rc;
}

tn_status tn_rnnt_logprobs_simple_backward(tn_tensor *grad_lm, tn_tensor *grad_am, const tn_tensor *grad_px,
                                           const tn_tensor *grad_py, const tn_tensor *lm, const tn_tensor *am,
                                           const tn_tensor *symbols, const tn_tensor *boundary,
                                           int64_t termination_symbol, int32_t rnnt_type, double lm_only_scale,
                                           double am_only_scale) {
    static const char *op = "rnnt_logprobs_simple_backward";
    simple_ctx c;
    memset(&c, 0, sizeof c);
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(simple_setup(op, &c, lm, am, symbols, boundary, termination_symbol, rnnt_type, lm_only_scale,
                        am_only_scale, 0.0, &bnd));
    const int64_t B = c.B, S = c.S, T = c.T, C = c.C, T0 = c.T0, S1 = S + 1, term = c.term;
    const int f64 = c.f64;
    const size_t es = f64 ? 8 : 4;
    const int64_t spx[3] = {B, S, T0}, spy[3] = {B, S1, T};
    tn_status rc = tn_rnnt_internal_float(op, "grad_px", grad_px, 3, spx, am->dtype);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "grad_py", grad_py, 3, spy, am->dtype);
    if (rc == TN_OK && grad_lm) rc = tn_rnnt_internal_float(op, "grad_lm", grad_lm, 3, lm->shape, am->dtype);
    if (rc == TN_OK && grad_am) rc = tn_rnnt_internal_float(op, "grad_am", grad_am, 3, am->shape, am->dtype);
    if (rc == TN_OK && ((grad_lm && (grad_lm == lm || grad_lm == am)) || (grad_am && (grad_am == lm || grad_am == am))))
        rc = tn_error(TN_ERR_ARG, "%s: grad_lm / grad_am must not be lm or am", op);
    char *buf = NULL;
    double *dbuf = NULL;
    if (rc == TN_OK && (grad_lm || grad_am)) {
        buf = (char *)malloc(es * (size_t)(S1 * C + T * C + 2 * S1 * T) + 64);
        dbuf = (double *)malloc(sizeof(double) * (size_t)(2 * S1 + 2 * T + 6 * C + 2 * S1 * T + 8));
        if (!buf || !dbuf) rc = tn_error(TN_ERR_OOM, "%s: out of memory (scratch for B=%lld S=%lld T=%lld C=%lld)",
                                         op, (long long)B, (long long)S, (long long)T, (long long)C);
    }
    if (rc != TN_OK || (!grad_lm && !grad_am)) {
        free(bnd);
        return rc;
    }
    void *lp = buf, *ap = buf + es * (size_t)(S1 * C), *Z = buf + es * (size_t)(S1 * C + T * C);
    void *Q = (char *)Z + es * (size_t)(S1 * T);
    double *lmax = dbuf, *amax = lmax + S1, *lsum = amax + T, *Aam = lsum + S1;
    c.U = Aam + T, c.logU = c.U + C;
    double *rowbuf = c.logU + C, *dU = rowbuf + C, *dLogU = dU + C, *Gt = dLogU + C;
    double *gx = Gt + C /* (S, T) effective grad of px's gathered part */, *gy = gx + S1 * T /* (S+1, T) */;
    (void)Gt;
    if (c.smoothed) {
        simple_unigram(&c, rowbuf);
        for (int64_t k = 0; k < C; k++) dU[k] = 0.0, dLogU[k] = 0.0;
    }
    const double cs = c.cs, ls = c.ls, as = c.as;
    for (int64_t b = 0; b < B; b++) {
        const void *lmb = (const char *)c.lm + es * (size_t)(b * S1 * C);
        const void *amb = (const char *)c.am + es * (size_t)(b * T * C);
        const int64_t pxo = b * S * T0, pyo = b * S1 * T;
        const tn_rnnt_bnd bd = bnd[b];
        exp_rows(f64, lmb, lp, S1, C, lmax);
        exp_rows(f64, amb, ap, T, C, amax);
        if (T > 0) rnnt_gemm(f64, 0, 1, S1, T, C, lp, C, ap, C, Z, T);
        /* effective gradients of the gathered px (forced -inf entries get none) and of py
         * (constrained: px[s] += py[s+1] passes grad_px on to py) */
        for (int64_t s = 0; s < S1; s++)
            for (int64_t t = 0; t < T; t++) {
                double vx = 0.0;
                if (s < S && !(rnnt_type == TN_RNNT_REGULAR && c.boundary_given && t == bd.t1))
                    vx = ld(grad_px->data, pxo + s * T0 + t, f64);
                double vy = ld(grad_py->data, pyo + s * T + t, f64);
                if (rnnt_type == TN_RNNT_CONSTRAINED && s >= 1) vy += ld(grad_px->data, pxo + (s - 1) * T0 + t, f64);
                gx[s * T + t] = vx;
                gy[s * T + t] = vy;
            }
        for (int64_t s = 0; s < S1; s++)
            for (int64_t t = 0; t < T; t++) {
                const double zt = f64 ? ld(Z, s * T + t, 1) + DBL_MIN : (double)((float)ld(Z, s * T + t, 0) + FLT_MIN);
                st(Q, s * T + t, f64, cs * (gx[s * T + t] + gy[s * T + t]) / zt);
            }
        if (c.smoothed) {
            for (int64_t s = 0; s < S1; s++) {
                double sum = 0.0;
                for (int64_t k = 0; k < C; k++) sum += ld(lp, s * C + k, f64);
                lsum[s] = sum;
            }
            for (int64_t t = 0; t < T; t++) {
                double sum = 0.0;
                for (int64_t k = 0; k < C; k++) sum += ld(ap, t * C + k, f64) * c.U[k];
                Aam[t] = sum;
            }
        }
        if (grad_lm) {
            void *glb = (char *)grad_lm->data + es * (size_t)(b * S1 * C);
            if (T > 0) rnnt_gemm(f64, 0, 0, S1, C, T, Q, T, ap, C, glb, C);
            else memset(glb, 0, es * (size_t)(S1 * C));
            for (int64_t s = 0; s < S1; s++) {
                for (int64_t k = 0; k < C; k++)
                    st(glb, s * C + k, f64, -ld(lp, s * C + k, f64) * ld(glb, s * C + k, f64));
                double sx = 0.0, sy = 0.0;
                for (int64_t t = 0; t < T; t++) sx += gx[s * T + t], sy += gy[s * T + t];
                if (s < S) {
                    const int64_t sym = ldi(symbols, b, s);
                    st(glb, s * C + sym, f64, ld(glb, s * C + sym, f64) + cs * sx);
                }
                st(glb, s * C + term, f64, ld(glb, s * C + term, f64) + cs * sy);
                if (c.smoothed) { /* LM-only part: (Lx + Ly) through log_softmax(lm[s]) */
                    const double Lx = ls * sx, Ly = ls * sy;
                    for (int64_t k = 0; k < C; k++)
                        st(glb, s * C + k, f64, ld(glb, s * C + k, f64) - (Lx + Ly) * ld(lp, s * C + k, f64) / lsum[s]);
                    if (s < S) {
                        const int64_t sym = ldi(symbols, b, s);
                        st(glb, s * C + sym, f64, ld(glb, s * C + sym, f64) + Lx);
                    }
                    st(glb, s * C + term, f64, ld(glb, s * C + term, f64) + Ly);
                }
            }
        }
        if (grad_am) {
            void *gab = (char *)grad_am->data + es * (size_t)(b * T * C);
            if (T > 0) rnnt_gemm(f64, 1, 0, T, C, S1, Q, T, lp, C, gab, C);
            for (int64_t t = 0; t < T; t++) {
                for (int64_t k = 0; k < C; k++)
                    st(gab, t * C + k, f64, -ld(ap, t * C + k, f64) * ld(gab, t * C + k, f64));
                double sy = 0.0;
                for (int64_t s = 0; s < S1; s++) {
                    sy += gy[s * T + t];
                    if (s < S) {
                        const int64_t sym = ldi(symbols, b, s);
                        st(gab, t * C + sym, f64, ld(gab, t * C + sym, f64) + cs * gx[s * T + t]);
                    }
                }
                st(gab, t * C + term, f64, ld(gab, t * C + term, f64) + cs * sy);
            }
        }
        if (c.smoothed) { /* AM-only part: am[t, sym] + log U[sym] - log sum_c exp(am[t, c]) U[c] */
            for (int64_t t = 0; t < T; t++) {
                double sx = 0.0, sy = 0.0;
                for (int64_t s = 0; s < S1; s++) {
                    sy += gy[s * T + t];
                    if (s < S) sx += gx[s * T + t];
                }
                const double Gtt = as * (sx + sy);
                if (grad_am) {
                    void *gab = (char *)grad_am->data + es * (size_t)(b * T * C);
                    for (int64_t k = 0; k < C; k++)
                        st(gab, t * C + k, f64, ld(gab, t * C + k, f64) - Gtt * ld(ap, t * C + k, f64) * c.U[k] / Aam[t]);
                    for (int64_t s = 0; s < S; s++) {
                        const int64_t sym = ldi(symbols, b, s);
                        st(gab, t * C + sym, f64, ld(gab, t * C + sym, f64) + as * gx[s * T + t]);
                    }
                    st(gab, t * C + term, f64, ld(gab, t * C + term, f64) + as * sy);
                }
                if (grad_lm) {
                    for (int64_t k = 0; k < C; k++) dU[k] -= Gtt * ld(ap, t * C + k, f64) / Aam[t];
                    for (int64_t s = 0; s < S; s++) dLogU[ldi(symbols, b, s)] += as * gx[s * T + t];
                    dLogU[term] += as * sy;
                }
            }
        }
    }
    if (c.smoothed && grad_lm) { /* through the unigram: mean over (b, s) of softmax(lm[b, s]) */
        for (int64_t k = 0; k < C; k++) dU[k] += dLogU[k] / c.U[k];
        const double inv_n = 1.0 / (double)(B * S1);
        for (int64_t r = 0; r < B * S1; r++) {
            double m = -INFINITY, sum = 0.0, dot = 0.0;
            for (int64_t k = 0; k < C; k++) {
                const double x = ld(c.lm, r * C + k, f64);
                m = x > m ? x : m;
            }
            for (int64_t k = 0; k < C; k++) sum += rowbuf[k] = exp(ld(c.lm, r * C + k, f64) - m);
            for (int64_t k = 0; k < C; k++) dot += dU[k] * (rowbuf[k] /= sum);
            for (int64_t k = 0; k < C; k++)
                st(grad_lm->data, r * C + k, f64, ld(grad_lm->data, r * C + k, f64) + inv_n * rowbuf[k] * (dU[k] - dot));
        }
    }
    free(buf);
    free(dbuf);
    free(bnd);
    return TN_OK;
}
