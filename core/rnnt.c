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
 * The element-wise phases (exp, gathers, gradient post-processing) run over utterances on
 * OpenMP threads into whole-batch buffers; the GEMMs between them run one utterance at a time
 * on BLAS's threads (calling BLAS from inside an OpenMP region would oversubscribe the
 * pthread OpenBLAS). Sums over the batch (the smoothed unigram and its gradient) add
 * per-utterance partials in batch order, so any thread count gives the same bits.
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

/* Utterances in parallel (OpenMP) when the batch has work enough; the GEMMs between the phases run
 * one utterance at a time with BLAS's own threads. Every reduction over the batch is made from
 * per-utterance partials added in batch order, so results do not depend on the thread count. */
#define SIMPLE_PAR_MIN ((int64_t)65536)

typedef struct simple_ctx {
    int64_t B, S, T, C, T0, term;
    int f64, smoothed, type, boundary_given, nt;
    double cs, ls, as, tiny;
    const tn_rnnt_bnd *bnd;
    const tn_tensor *symbols;
    const void *lm, *am;
    /* whole-batch scratch, from simple_alloc */
    void *lp, *ap, *Z;    /* (B, S+1, C), (B, T, C) exp(x - rowmax) and (B, S+1, T) normalisers, in the dtype */
    double *lmax, *amax;  /* (B, S+1), (B, T) row maxima */
    double *lsum, *asum;  /* smoothed only: (B, S+1) row sums of lp; (B, T) sum_c ap[t, c] U[c] */
    double *part, *part2; /* (B, C) per-utterance partial sums */
    double *U, *logU;     /* (C) smoothed unigram and its log */
    double *gx, *gy;      /* backward: (B, S+1, T) effective gradients of px's gathered part and py */
    char *mem;
} simple_ctx;

/* Options shared by forward and backward: sizes, dtype, smoothing scales. */
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
    int nt = tn_par_threads(B * (S + 1 + T) * C, SIMPLE_PAR_MIN);
    c->nt = nt > B ? (int)(B > 0 ? B : 1) : nt;
    return TN_OK;
}

/* The whole-batch scratch; `backward` adds gx, gy. */
static tn_status simple_alloc(const char *op, simple_ctx *c, int backward) {
    const int64_t B = c->B, S1 = c->S + 1, T = c->T, C = c->C;
    const size_t es = c->f64 ? 8 : 4;
    const size_t nd = (size_t)(2 * B * S1 + 2 * B * T + 2 * B * C + 2 * C) + (backward ? (size_t)(2 * B * S1 * T) : 0);
    const size_t bytes = sizeof(double) * nd + es * (size_t)(B * S1 * C + B * T * C + B * S1 * T) + 64;
    c->mem = (char *)malloc(bytes);
    if (!c->mem)
        return tn_error(TN_ERR_OOM, "%s: out of memory (%.1f MiB of scratch for B=%lld S=%lld T=%lld C=%lld)", op,
                        (double)bytes / 1048576.0, (long long)B, (long long)c->S, (long long)T, (long long)C);
    double *d = (double *)c->mem;
    c->lmax = d, d += B * S1;
    c->lsum = d, d += B * S1;
    c->amax = d, d += B * T;
    c->asum = d, d += B * T;
    c->part = d, d += B * C;
    c->part2 = d, d += B * C;
    c->U = d, d += C;
    c->logU = d, d += C;
    if (backward) c->gx = d, d += B * S1 * T, c->gy = d, d += B * S1 * T;
    char *p = (char *)d;
    c->lp = p, p += es * (size_t)(B * S1 * C);
    c->ap = p, p += es * (size_t)(B * T * C);
    c->Z = p;
    return TN_OK;
}

static inline void *at_(void *base, int64_t i, int f64) { return (char *)base + (f64 ? 8 : 4) * (size_t)i; }

static double row_sum(const void *x, int64_t n, int f64) {
    double s = 0.0;
    if (f64) {
        const double *p = (const double *)x;
        for (int64_t i = 0; i < n; i++) s += p[i];
    } else {
        const float *p = (const float *)x;
#ifdef _OPENMP
#pragma omp simd reduction(+ : s)
#endif
        for (int64_t i = 0; i < n; i++) s += (double)p[i];
    }
    return s;
}

static double row_dot_u(const void *x, const double *u, int64_t n, int f64) {
    double s = 0.0;
    if (f64) {
        const double *p = (const double *)x;
        for (int64_t i = 0; i < n; i++) s += p[i] * u[i];
    } else {
        const float *p = (const float *)x;
#ifdef _OPENMP
#pragma omp simd reduction(+ : s)
#endif
        for (int64_t i = 0; i < n; i++) s += (double)p[i] * u[i];
    }
    return s;
}

/* Phase 1, utterances in parallel: lp, ap with their row maxima, and with smoothing lp's row
 * sums and the unigram U = mean over (b, s) of softmax(lm[b, s]) + tiny (fast_rnnt's). Returns
 * the first lm row (b * (S+1) + s) holding NaN or inf in *bad_lm, the first am row (b * T + t) in
 * *bad_am, or -1. */
static void simple_exp(simple_ctx *c, int64_t *bad_lm, int64_t *bad_am) {
    const int64_t B = c->B, S1 = c->S + 1, T = c->T, C = c->C;
    const int f64 = c->f64, nt = c->nt;
    int64_t bl = INT64_MAX, ba = INT64_MAX;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) reduction(min : bl, ba) if (nt > 1)
#endif
    for (int64_t b = 0; b < B; b++) {
        void *lpb = at_(c->lp, b * S1 * C, f64);
        int64_t r = exp_rows(f64, (const char *)c->lm + (f64 ? 8 : 4) * (size_t)(b * S1 * C), lpb, S1, C,
                             c->lmax + b * S1);
        if (r >= 0 && b * S1 + r < bl) bl = b * S1 + r;
        r = exp_rows(f64, (const char *)c->am + (f64 ? 8 : 4) * (size_t)(b * T * C), at_(c->ap, b * T * C, f64), T, C,
                     c->amax + b * T);
        if (r >= 0 && b * T + r < ba) ba = b * T + r;
        if (c->smoothed) {
            for (int64_t s = 0; s < S1; s++) c->lsum[b * S1 + s] = row_sum(at_(lpb, s * C, f64), C, f64);
            double *pb = c->part + b * C;
            for (int64_t k = 0; k < C; k++) pb[k] = 0.0;
            for (int64_t s = 0; s < S1; s++) {
                const double inv = 1.0 / c->lsum[b * S1 + s];
                for (int64_t k = 0; k < C; k++) pb[k] += ld(lpb, s * C + k, f64) * inv;
            }
        }
    }
    *bad_lm = bl == INT64_MAX ? -1 : bl;
    *bad_am = ba == INT64_MAX ? -1 : ba;
    if (c->smoothed) {
        for (int64_t k = 0; k < C; k++) c->U[k] = 0.0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t k = 0; k < C; k++) c->U[k] += c->part[b * C + k];
        const double n = (double)(B * S1);
        for (int64_t k = 0; k < C; k++) {
            c->U[k] = f64 ? c->U[k] / n + DBL_MIN : (double)(float)((float)(c->U[k] / n) + FLT_MIN);
            c->logU[k] = log(c->U[k]);
        }
    }
}

/* Phase 2, one utterance at a time (BLAS threads): Z[b] = lp[b] ap[b]^T, the normaliser
 * sum_c exp(lm[s, c] + am[t, c] - lmax[s] - amax[t]). */
static void simple_norm(simple_ctx *c) {
    const int64_t S1 = c->S + 1, T = c->T, C = c->C;
    if (T == 0) return;
    for (int64_t b = 0; b < c->B; b++)
        rnnt_gemm(c->f64, 0, 1, S1, T, C, at_(c->lp, b * S1 * C, c->f64), C, at_(c->ap, b * T * C, c->f64), C,
                  at_(c->Z, b * S1 * T, c->f64), T);
}

/* Z[b, s, t] + tiny as double (fast_rnnt adds the tiny in the dtype) */
static inline double z_at(const simple_ctx *c, int64_t i) {
    return c->f64 ? ((const double *)c->Z)[i] + DBL_MIN : (double)(((const float *)c->Z)[i] + FLT_MIN);
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
    const int f64 = c.f64, nt = c.nt;
    const int64_t spx[3] = {B, S, T0}, spy[3] = {B, S1, T};
    tn_status rc = tn_rnnt_internal_float(op, "px", px, 3, spx, am->dtype);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "py", py, 3, spy, am->dtype);
    if (rc == TN_OK) rc = simple_alloc(op, &c, 0);
    if (rc == TN_OK) {
        int64_t bl, ba;
        simple_exp(&c, &bl, &ba);
        if (bl >= 0)
            rc = tn_error(TN_ERR_ARG, "%s: lm row [%lld, %lld] holds NaN or inf (lm %s)", op, TN_D(bl / S1),
                          TN_D(bl % S1), TN_SHAPE(lm));
        else if (ba >= 0)
            rc = tn_error(TN_ERR_ARG, "%s: am row [%lld, %lld] holds NaN or inf (am %s)", op, TN_D(ba / (T ? T : 1)),
                          TN_D(ba % (T ? T : 1)), TN_SHAPE(am));
    }
    if (rc == TN_OK) {
        simple_norm(&c);
        (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
        for (int64_t b = 0; b < B; b++) {
            const void *lmb = (const char *)c.lm + (f64 ? 8 : 4) * (size_t)(b * S1 * C);
            const void *amb = (const char *)c.am + (f64 ? 8 : 4) * (size_t)(b * T * C);
            const double *lmax = c.lmax + b * S1, *amax = c.amax + b * T, *lsum = c.lsum + b * S1;
            double *asum = c.asum + b * T;
            if (c.smoothed)
                for (int64_t t = 0; t < T; t++) asum[t] = row_dot_u(at_(c.ap, (b * T + t) * C, f64), c.U, C, f64);
            const int64_t pxo = b * S * T0, pyo = b * S1 * T;
            for (int64_t s = 0; s < S1; s++) {
                const int64_t sym = s < S ? ldi(symbols, b, s) : 0;
                const double lm_sym = ld(lmb, s * C + sym, f64), lm_term = ld(lmb, s * C + term, f64);
                const double lonly = c.smoothed ? log(lsum[s]) + lmax[s] : 0.0;
                for (int64_t t = 0; t < T; t++) {
                    const double norm = log(z_at(&c, (b * S1 + s) * T + t)) + lmax[s] + amax[t];
                    const double am_term = ld(amb, t * C + term, f64);
                    const double aonly = c.smoothed ? log(asum[t]) + amax[t] : 0.0;
                    double vy = am_term + lm_term - norm;
                    if (c.smoothed)
                        vy = c.cs * vy + c.ls * (lm_term - lonly) + c.as * (am_term + c.logU[term] - aonly);
                    st(py->data, pyo + s * T + t, f64, vy);
                    if (s < S) {
                        const double am_sym = ld(amb, t * C + sym, f64);
                        double vx = am_sym + lm_sym - norm;
                        if (c.smoothed)
                            vx = c.cs * vx + c.ls * (lm_sym - lonly) + c.as * (am_sym + c.logU[sym] - aonly);
                        st(px->data, pxo + s * T0 + t, f64, vx);
                    }
                }
                if (s < S && T0 > T) st(px->data, pxo + s * T0 + T, f64, -INFINITY);
            }
        }
        tn_rnnt_internal_post(px->data, py->data, bnd, c.boundary_given, B, S, T, rnnt_type, delay_penalty, f64);
    }
    free(c.mem);
    free(bnd);
    return rc;
}

/* Backward phase E for one utterance: the gradient GEMM results in glb / gab (when given) turned
 * into grad_lm[b] / grad_am[b]; with smoothing, the AM-only part, and this utterance's
 * contributions to dL/dU and dL/dlogU in part[b] and part2[b]. */
static void simple_back_one(const simple_ctx *c, int64_t b, void *glb, void *gab) {
    const int64_t S = c->S, S1 = S + 1, T = c->T, C = c->C, term = c->term;
    const int f64 = c->f64;
    const double cs = c->cs, ls = c->ls, as = c->as;
    const void *lp = at_(c->lp, b * S1 * C, f64), *ap = at_(c->ap, b * T * C, f64);
    const double *gx = c->gx + b * S1 * T, *gy = c->gy + b * S1 * T;
    const double *lsum = c->lsum + b * S1, *asum = c->asum + b * T;
    const tn_tensor *symbols = c->symbols;
    if (glb) {
        for (int64_t s = 0; s < S1; s++) {
            for (int64_t k = 0; k < C; k++) st(glb, s * C + k, f64, -ld(lp, s * C + k, f64) * ld(glb, s * C + k, f64));
            double sx = 0.0, sy = 0.0;
            for (int64_t t = 0; t < T; t++) sx += gx[s * T + t], sy += gy[s * T + t];
            if (s < S) {
                const int64_t sym = ldi(symbols, b, s);
                st(glb, s * C + sym, f64, ld(glb, s * C + sym, f64) + cs * sx);
            }
            st(glb, s * C + term, f64, ld(glb, s * C + term, f64) + cs * sy);
            if (c->smoothed) { /* LM-only part: (Lx + Ly) through log_softmax(lm[s]) */
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
    if (gab) {
        for (int64_t t = 0; t < T; t++) {
            for (int64_t k = 0; k < C; k++) st(gab, t * C + k, f64, -ld(ap, t * C + k, f64) * ld(gab, t * C + k, f64));
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
    if (!c->smoothed) return;
    /* AM-only part: am[t, sym] + log U[sym] - log sum_c exp(am[t, c]) U[c] */
    double *dU = c->part + b * C, *dLogU = c->part2 + b * C;
    for (int64_t k = 0; k < C; k++) dU[k] = 0.0, dLogU[k] = 0.0;
    for (int64_t t = 0; t < T; t++) {
        double sx = 0.0, sy = 0.0;
        for (int64_t s = 0; s < S1; s++) {
            sy += gy[s * T + t];
            if (s < S) sx += gx[s * T + t];
        }
        const double Gtt = as * (sx + sy);
        if (gab) {
            for (int64_t k = 0; k < C; k++)
                st(gab, t * C + k, f64, ld(gab, t * C + k, f64) - Gtt * ld(ap, t * C + k, f64) * c->U[k] / asum[t]);
            for (int64_t s = 0; s < S; s++) {
                const int64_t sym = ldi(symbols, b, s);
                st(gab, t * C + sym, f64, ld(gab, t * C + sym, f64) + as * gx[s * T + t]);
            }
            st(gab, t * C + term, f64, ld(gab, t * C + term, f64) + as * sy);
        }
        if (glb) {
            for (int64_t k = 0; k < C; k++) dU[k] -= Gtt * ld(ap, t * C + k, f64) / asum[t];
            for (int64_t s = 0; s < S; s++) dLogU[ldi(symbols, b, s)] += as * gx[s * T + t];
            dLogU[term] += as * sy;
        }
    }
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
    const int64_t B = c.B, S = c.S, T = c.T, C = c.C, T0 = c.T0, S1 = S + 1;
    const int f64 = c.f64, nt = c.nt;
    const int64_t spx[3] = {B, S, T0}, spy[3] = {B, S1, T};
    tn_status rc = tn_rnnt_internal_float(op, "grad_px", grad_px, 3, spx, am->dtype);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "grad_py", grad_py, 3, spy, am->dtype);
    if (rc == TN_OK && grad_lm) rc = tn_rnnt_internal_float(op, "grad_lm", grad_lm, 3, lm->shape, am->dtype);
    if (rc == TN_OK && grad_am) rc = tn_rnnt_internal_float(op, "grad_am", grad_am, 3, am->shape, am->dtype);
    if (rc == TN_OK && ((grad_lm && (grad_lm == lm || grad_lm == am)) || (grad_am && (grad_am == lm || grad_am == am))))
        rc = tn_error(TN_ERR_ARG, "%s: grad_lm / grad_am must not be lm or am", op);
    if (rc == TN_OK && (grad_lm || grad_am)) rc = simple_alloc(op, &c, 1);
    if (rc != TN_OK || (!grad_lm && !grad_am)) {
        free(c.mem);
        free(bnd);
        return rc;
    }
    int64_t bl, ba; /* the forward checked the values */
    simple_exp(&c, &bl, &ba);
    simple_norm(&c);
    (void)nt;
    /* effective gradients of the gathered px (forced -inf entries get none) and of py
     * (constrained: px[s] += py[s+1] passes grad_px on to py); Q = cs (gx + gy) / Z in place of Z */
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t b = 0; b < B; b++) {
        const int64_t pxo = b * S * T0, pyo = b * S1 * T;
        const tn_rnnt_bnd bd = bnd[b];
        double *gx = c.gx + b * S1 * T, *gy = c.gy + b * S1 * T;
        for (int64_t s = 0; s < S1; s++)
            for (int64_t t = 0; t < T; t++) {
                double vx = 0.0;
                if (s < S && !(rnnt_type == TN_RNNT_REGULAR && c.boundary_given && t == bd.t1))
                    vx = ld(grad_px->data, pxo + s * T0 + t, f64);
                double vy = ld(grad_py->data, pyo + s * T + t, f64);
                if (rnnt_type == TN_RNNT_CONSTRAINED && s >= 1) vy += ld(grad_px->data, pxo + (s - 1) * T0 + t, f64);
                gx[s * T + t] = vx;
                gy[s * T + t] = vy;
                const int64_t i = (b * S1 + s) * T + t;
                st(c.Z, i, f64, c.cs * (vx + vy) / z_at(&c, i));
            }
        if (c.smoothed)
            for (int64_t t = 0; t < T; t++)
                c.asum[b * T + t] = row_dot_u(at_(c.ap, (b * T + t) * C, f64), c.U, C, f64);
    }
    /* grad_lm[b] = Q[b] ap[b], grad_am[b] = Q[b]^T lp[b] (BLAS threads), then the rest per utterance */
    for (int64_t b = 0; b < B; b++) {
        const void *Q = at_(c.Z, b * S1 * T, f64);
        if (grad_lm) {
            void *glb = at_(grad_lm->data, b * S1 * C, f64);
            if (T > 0) rnnt_gemm(f64, 0, 0, S1, C, T, Q, T, at_(c.ap, b * T * C, f64), C, glb, C);
            else memset(glb, 0, (f64 ? 8 : 4) * (size_t)(S1 * C));
        }
        if (grad_am && T > 0)
            rnnt_gemm(f64, 1, 0, T, C, S1, Q, T, at_(c.lp, b * S1 * C, f64), C, at_(grad_am->data, b * T * C, f64), C);
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t b = 0; b < B; b++)
        simple_back_one(&c, b, grad_lm ? at_(grad_lm->data, b * S1 * C, f64) : NULL,
                        grad_am ? at_(grad_am->data, b * T * C, f64) : NULL);
    if (c.smoothed && grad_lm) { /* through the unigram: mean over (b, s) of softmax(lm[b, s]) */
        double *tot = c.part, *totl = c.part2; /* dL/dU, dL/dlogU: partials of b >= 1 added to b = 0's */
        for (int64_t b = 1; b < B; b++)
            for (int64_t k = 0; k < C; k++) tot[k] += c.part[b * C + k], totl[k] += c.part2[b * C + k];
        for (int64_t k = 0; k < C; k++) tot[k] += totl[k] / c.U[k];
        const double inv_n = 1.0 / (double)(B * S1);
        const int64_t rows = B * S1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
        for (int64_t r = 0; r < rows; r++) {
            const void *p = at_(c.lp, r * C, f64);
            const double inv = 1.0 / c.lsum[r];
            double dot = 0.0;
            for (int64_t k = 0; k < C; k++) dot += tot[k] * ld(p, k, f64) * inv;
            for (int64_t k = 0; k < C; k++)
                st(grad_lm->data, r * C + k, f64,
                   ld(grad_lm->data, r * C + k, f64) + inv_n * ld(p, k, f64) * inv * (tot[k] - dot));
        }
    }
    free(c.mem);
    free(bnd);
    return TN_OK;
}
