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
 * on one thread, 2.4 ms on two). When threads outnumber utterances (nt >= 2B: one long
 * utterance, say) and the waves are long, the whole team walks one utterance at a time along
 * its anti-diagonals (columns for modified), a spinning barrier between waves: 1.25-2.5x at
 * 100-160 cells per wave on 2 cores (recipes/bench_rnnt.lua --steps=mi, README); below
 * MI_WAVE_MIN cells per wave and thread the barriers cost what they save, so the utterance stays
 * on one thread. Both orders give the same bits.
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
#include <sched.h>
#include <stdarg.h>
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
    TN_TRY(tn_check_backend(op, t));
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
    tn_status st_ = tn_check_backend(op, boundary);
    if (st_ == TN_OK) st_ = tn_check_index_dtype(op, "boundary", boundary);
    if (st_ == TN_OK && (boundary->ndim != 2 || boundary->shape[0] != B || boundary->shape[1] != 4))
        st_ = tn_error(TN_ERR_SHAPE, "%s: boundary has shape %s, expected [%lld, 4]", op, TN_SHAPE(boundary),
                       (long long)B);
    if (st_ != TN_OK || boundary->device != TN_CPU) { /* CUDA: the rows are checked on the device */
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
    TN_TRY(tn_check_backend(op, symbols));
    TN_TRY(tn_check_index_dtype(op, "symbols", symbols));
    if (symbols->ndim != 2 || symbols->shape[0] != B || symbols->shape[1] != S)
        return tn_error(TN_ERR_SHAPE, "%s: symbols has shape %s, expected [%lld, %lld] (B, S)", op,
                        TN_SHAPE(symbols), (long long)B, (long long)S);
    if (symbols->device != TN_CPU) return TN_OK; /* CUDA: the values are checked on the device */
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s < S; s++) {
            int64_t v = ldi(symbols, b, s);
            if (v < 0 || v >= C)
                return tn_error(TN_ERR_INDEX, "%s: symbols at position [%lld, %lld] is %lld, outside [0, C = %lld)",
                                op, TN_D(b), TN_D(s), (long long)v, (long long)C);
        }
    return TN_OK;
}

tn_status tn_rnnt_internal_device(const char *op, const char *ref_name, const tn_tensor *ref, ...) {
    va_list ap;
    va_start(ap, ref);
    tn_status rc = TN_OK;
    for (;;) {
        const char *name = va_arg(ap, const char *);
        if (!name) break;
        const tn_tensor *t = va_arg(ap, const tn_tensor *);
        if (t && (t->device != ref->device || t->device_index != ref->device_index)) {
            rc = tn_error(TN_ERR_DEVICE,
                          "%s: '%s' is on %s:%d but '%s' is on %s:%d; every tensor of the call must be on one device",
                          op, name, tn_device_name(t->device), (int)t->device_index, ref_name,
                          tn_device_name(ref->device), (int)ref->device_index);
            break;
        }
    }
    va_end(ap);
    return rc;
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
    int64_t rmask; /* row s of the table is tab[(s & rmask) * (T+1) ...]: 1 = two rows, -1 = whole table */
    const tn_rnnt_bnd *bnd;
    const void *px, *py, *p_in, *grad_scores;
    void *pxg, *pyg, *p, *scores;
    int64_t *bad; /* (B, 3): which (0 ok, 1 px, 2 py), s, t */
    int *stop;    /* wave mode: 1 + the first wave in which a cell met a bad input, 0 while none did */
    struct mi_bar *bar; /* wave mode: the team's barrier */
} mi_ctx;

/* One cell (s, t) of utterance b: returns 0, or 1 / 2 when the px / py entry it reads is NaN or
 * +inf. tab holds the recursion's values (forward) or the gradients g (backward) in doubles. */
typedef int (*mi_cell)(const mi_ctx *c, int64_t b, double *tab, int64_t s, int64_t t);

#define MI_AT(c, s, t) (((s) & (c)->rmask) * ((c)->T + 1) + (t))

/* Forward: p(s, t) = log(e^(p(s-1, t-o) + px(s-1, t-o)) + e^(p(s, t-1) + py(s, t-1))); with
 * return_grad the two normalised weights go where px_grad / py_grad of those moves will be. */
static inline int mi_fwd_cell(const mi_ctx *c, int64_t b, double *tab, int64_t s, int64_t t) {
    const tn_rnnt_bnd bd = c->bnd[b];
    const int64_t S = c->S, T = c->T, T0 = c->T0;
    const int o = c->o, f64 = c->f64;
    const int64_t pxo = b * S * T0, pyo = b * (S + 1) * T;
    double v;
    if (s == bd.s0 && t == bd.t0) {
        v = 0.0;
    } else {
        double a = -INFINITY, y2 = -INFINITY, wa, wb;
        const int hx = s > bd.s0 && t - o >= bd.t0, hy = t > bd.t0;
        if (hx) {
            const double x = ld(c->px, pxo + (s - 1) * T0 + t - o, f64);
            if (TN_UNLIKELY(!(x < INFINITY))) return 1;
            a = tab[MI_AT(c, s - 1, t - o)] + x;
        }
        if (hy) {
            const double y = ld(c->py, pyo + s * T + t - 1, f64);
            if (TN_UNLIKELY(!(y < INFINITY))) return 2;
            y2 = tab[MI_AT(c, s, t - 1)] + y;
        }
        v = tn_rnnt_logadd_w(a, y2, &wa, &wb);
        if (c->pxg) {
            if (hx) st(c->pxg, pxo + (s - 1) * T0 + t - o, f64, wa);
            if (hy) st(c->pyg, pyo + s * T + t - 1, f64, wb);
        }
    }
    tab[MI_AT(c, s, t)] = v;
    if (c->p) st(c->p, (b * (S + 1) + s) * (T + 1) + t, f64, v);
    return 0;
}

/* Reverse step of utterance b: g(s, t) = d score / d p(s, t) = sum over the successors of
 * g(successor) * weight of the move, each term also written as the gradient of that move's px / py
 * entry; g(s1, t1) = 1, or grad_scores[b] when the backward from p_in is given it. The two
 * backward passes differ only in where a weight comes from: saved == 0, the normalised weight the
 * forward stored in px_grad / py_grad (no exp or log; overwritten in place); saved == 1,
 * exp(p + px - p(successor)) from the saved table p_in. Always inlined with a constant `saved`, so
 * each pass keeps only its own loads. */
static inline __attribute__((always_inline)) int mi_rev_cell(const mi_ctx *c, int64_t b, double *tab, int64_t s,
                                                             int64_t t, int saved) {
    const tn_rnnt_bnd bd = c->bnd[b];
    const int64_t S = c->S, T = c->T, T0 = c->T0, T1 = T + 1;
    const int o = c->o, f64 = c->f64;
    const int64_t po = b * (S + 1) * T1;
    double g;
    if (s == bd.s1 && t == bd.t1) {
        g = saved && c->grad_scores ? ld(c->grad_scores, b, f64) : 1.0;
    } else {
        g = 0.0;
        const double pst = saved ? ld(c->p_in, po + s * T1 + t, f64) : 0.0;
        if (s < bd.s1 && t + o <= bd.t1) {
            const int64_t i = b * S * T0 + s * T0 + t;
            const double w = saved ? tn_rnnt_ratio(pst + ld(c->px, i, f64), ld(c->p_in, po + (s + 1) * T1 + t + o, f64))
                                   : ld(c->pxg, i, f64);
            const double gx = tab[MI_AT(c, s + 1, t + o)] * w;
            st(c->pxg, i, f64, gx);
            g += gx;
        }
        if (t < bd.t1) {
            const int64_t i = b * (S + 1) * T + s * T + t;
            const double w = saved ? tn_rnnt_ratio(pst + ld(c->py, i, f64), ld(c->p_in, po + s * T1 + t + 1, f64))
                                   : ld(c->pyg, i, f64);
            const double gy = tab[MI_AT(c, s, t + 1)] * w;
            st(c->pyg, i, f64, gy);
            g += gy;
        }
    }
    tab[MI_AT(c, s, t)] = g;
    return 0;
}

/* Backward from the weights the forward stored. */
static inline int mi_grad_cell(const mi_ctx *c, int64_t b, double *tab, int64_t s, int64_t t) {
    return mi_rev_cell(c, b, tab, s, t, 0);
}

/* Backward from the saved table p_in. */
static inline int mi_back_cell(const mi_ctx *c, int64_t b, double *tab, int64_t s, int64_t t) {
    return mi_rev_cell(c, b, tab, s, t, 1);
}

/* A barrier for the team of a wave-mode sweep. OpenMP's own barrier sleeps in a futex under
 * OMP_WAIT_POLICY=passive (tern's default, lua/tern/lib.lua), 10-40 us per wave; this one spins
 * (pausing, yielding after a while) on a generation counter, which costs well under a microsecond
 * while the team's threads are running. */
typedef struct mi_bar {
    int n;     /* threads in the team */
    int count; /* arrived at the current barrier */
    int gen;   /* barriers completed */
} mi_bar;

static void mi_barrier(mi_bar *bar) {
    const int gen = __atomic_load_n(&bar->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&bar->count, 1, __ATOMIC_ACQ_REL) == bar->n) {
        __atomic_store_n(&bar->count, 0, __ATOMIC_RELAXED);
        __atomic_add_fetch(&bar->gen, 1, __ATOMIC_RELEASE);
        return;
    }
    for (unsigned spins = 0; __atomic_load_n(&bar->gen, __ATOMIC_ACQUIRE) == gen; spins++) {
        if (spins >= 4096) {
            sched_yield();
        } else {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        }
    }
}

static inline int tn_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static inline int mi_tid(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Wave mode needs MI_WAVE_MIN cells per wave and thread on average (measured on 2 cores: 1.25-2.5x
 * at 100-160 cells a wave, no gain or a loss at 50-65); a wave of fewer than MI_SPLIT_MIN cells
 * runs on thread 0 alone. */
#define MI_WAVE_MIN 48
#define MI_SPLIT_MIN 16

/* Visits utterance b's boundary rectangle with `cell`, forward or in reverse, and returns the
 * first non-zero result (0 when every cell succeeded; -1 in wave mode, where which bad input was
 * met first depends on the threads). Row-major (s outer) on the calling thread, or (waves: every
 * thread of the team calls this) wave by wave: cell (s, t) needs (s-1, t-o) and (s, t-1), so
 * wave k = (1-o)(s - s0) + (t - t0) needs only wave k-1; each thread runs a contiguous part of
 * a wave, then all meet at the barrier. Every cell does the same arithmetic in either order, so
 * both give the same bits. Inlined with a constant `cell`, so the call is direct. */
static inline __attribute__((always_inline)) int mi_sweep(const mi_ctx *c, int64_t b, double *tab, int waves,
                                                          int reverse, mi_cell cell) {
    const tn_rnnt_bnd bd = c->bnd[b];
    const int o = c->o;
    const int64_t Sb = bd.s1 - bd.s0, W = bd.t1 - bd.t0;
    if (!waves) {
        for (int64_t i = 0; i <= Sb; i++) {
            const int64_t s = reverse ? bd.s1 - i : bd.s0 + i;
            for (int64_t j = 0; j <= W; j++) {
                const int64_t t = reverse ? bd.t1 - j : bd.t0 + j;
                const int r = cell(c, b, tab, s, t);
                if (TN_UNLIKELY(r)) {
                    c->bad[b * 3] = r, c->bad[b * 3 + 1] = r == 1 ? s - 1 : s, c->bad[b * 3 + 2] = r == 1 ? t - o : t - 1;
                    return r;
                }
            }
        }
        return 0;
    }
    const int64_t K = (o ? 0 : Sb) + W + 1, tid = mi_tid(), nt = c->bar->n;
    for (int64_t kk = 0; kk < K; kk++) {
        const int64_t k = reverse ? K - 1 - kk : kk;
        /* i = s - s0 over [lo, hi], t = t0 + k - (1-o) i */
        const int64_t lo = o ? 0 : (k > W ? k - W : 0), hi = o ? Sb : (k < Sb ? k : Sb), n = hi - lo + 1;
        const int64_t i0 = n < MI_SPLIT_MIN ? (tid ? hi + 1 : lo) : lo + n * tid / nt;
        const int64_t i1 = n < MI_SPLIT_MIN ? hi + 1 : lo + n * (tid + 1) / nt;
        for (int64_t i = i0; i < i1; i++)
            if (TN_UNLIKELY(cell(c, b, tab, bd.s0 + i, bd.t0 + k - (o ? 0 : i)))) {
                __atomic_store_n(c->stop, (int)kk + 1, __ATOMIC_RELAXED);
                break;
            }
        mi_barrier(c->bar);
        /* a thread already past this barrier can only write kk+2 (wave kk+1), so every thread
         * agrees on leaving after wave kk */
        const int stop = __atomic_load_n(c->stop, __ATOMIC_RELAXED);
        if (stop && stop <= kk + 1) return -1;
    }
    return 0;
}

/* Runs stmt on thread 0 of the team, then a barrier, in wave mode; on the calling thread otherwise. */
#define MI_ONCE(c, waves, ...)                    \
    do {                                          \
        if (!(waves) || mi_tid() == 0) {          \
            __VA_ARGS__;                          \
        }                                         \
        if (waves) mi_barrier((c)->bar);          \
    } while (0)

/* Zeroes utterance b's slices of px_grad and py_grad. */
static void mi_zero_grads(const mi_ctx *c, int64_t b) {
    const size_t es = c->f64 ? 8 : 4;
    memset((char *)c->pxg + (size_t)(b * c->S * c->T0) * es, 0, (size_t)(c->S * c->T0) * es);
    memset((char *)c->pyg + (size_t)(b * (c->S + 1) * c->T) * es, 0, (size_t)((c->S + 1) * c->T) * es);
}

/* Forward (and with pxg, the in-place backward) of utterance b. */
static void mi_one(const mi_ctx *c, int64_t b, double *tab, int waves) {
    const tn_rnnt_bnd bd = c->bnd[b];
    const int64_t S = c->S, T1 = c->T + 1;
    MI_ONCE(c, waves, {
        if (c->pxg) mi_zero_grads(c, b);
        if (c->p)
            for (int64_t i = 0; i < (S + 1) * T1; i++) st(c->p, b * (S + 1) * T1 + i, c->f64, -INFINITY);
    });
    if (mi_sweep(c, b, tab, waves, 0, mi_fwd_cell)) {
        /* wave mode: find the bad input row-major first cell, as the serial sweep reports it */
        if (waves) MI_ONCE(c, waves, mi_sweep(c, b, tab, 0, 0, mi_fwd_cell));
        return;
    }
    const double score = tab[MI_AT(c, bd.s1, bd.t1)];
    MI_ONCE(c, waves, {
        st(c->scores, b, c->f64, score);
        if (c->pxg && score == -INFINITY) mi_zero_grads(c, b); /* nothing reaches the end: no occupation */
    });
    if (c->pxg && score != -INFINITY) mi_sweep(c, b, tab, waves, 1, mi_grad_cell);
}

/* Backward of utterance b from the saved table p_in. */
static void mi_back_one(const mi_ctx *c, int64_t b, double *tab, int waves) {
    const tn_rnnt_bnd bd = c->bnd[b];
    const int64_t T1 = c->T + 1;
    MI_ONCE(c, waves, mi_zero_grads(c, b));
    if (ld(c->p_in, (b * (c->S + 1) + bd.s1) * T1 + bd.t1, c->f64) == -INFINITY) return;
    mi_sweep(c, b, tab, waves, 1, mi_back_cell);
}

/* Runs fn over the batch. Utterances on OpenMP threads, each with two rows of the table, or, when
 * at least half the threads would have no utterance (nt >= 2B) and an utterance's waves give
 * every thread MI_WAVE_MIN cells on average, utterance after utterance with the whole team on the
 * waves of one (whole table). Returns TN_ERR_OOM when a table failed. */
static tn_status mi_run(const char *op, mi_ctx *c, void (*fn)(const mi_ctx *, int64_t, double *, int)) {
    const int64_t B = c->B, T1 = c->T + 1;
    int nt = tn_par_threads(B * (c->S + 1) * T1, 2048);
    double wave = 0.0; /* the most cells per wave of any utterance */
    for (int64_t b = 0; b < B; b++) {
        const int64_t sb = c->bnd[b].s1 - c->bnd[b].s0 + 1, wb = c->bnd[b].t1 - c->bnd[b].t0 + 1;
        const double w = (double)(sb * wb) / (double)(c->o ? wb : sb + wb - 1);
        if (w > wave) wave = w;
    }
    const int waves = nt > 1 && nt >= 2 * B && wave >= (double)MI_WAVE_MIN * nt;
    if (!waves && nt > B) nt = (int)(B > 0 ? B : 1);
    c->rmask = waves ? -1 : 1;
    const int64_t tabsz = waves ? (c->S + 1) * T1 : 2 * T1;
    int oom = 0, stop = 0;
    c->stop = &stop;
    if (waves) {
        double *tab = (double *)malloc(sizeof(double) * (size_t)tabsz);
        mi_bar bar = {nt, 0, 0};
        c->bar = &bar;
        if (tab) {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
            {
#ifdef _OPENMP
#pragma omp single
#endif
                bar.n = tn_team_size(); /* the team may be smaller than asked */
                for (int64_t b = 0; b < B; b++) {
                    fn(c, b, tab, 1);
                    /* a bad input stops its own utterance only, as in the row-major sweep; reset
                     * once every thread has read the flag */
                    mi_barrier(&bar);
                    MI_ONCE(c, 1, stop = 0);
                }
            }
        } else {
            oom = 1;
        }
        free(tab);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : oom)
#endif
        {
            double *tab = (double *)malloc(sizeof(double) * (size_t)tabsz);
            if (!tab) oom = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t b = 0; b < B; b++)
                if (tab) fn(c, b, tab, 0);
            free(tab);
        }
    }
    if (oom) return tn_error(TN_ERR_OOM, "%s: out of memory (a table of %lld doubles)", op, (long long)tabsz);
    return TN_OK;
}

/* Checks px and py and fills the shared part of the context (the rest zero). */
static tn_status mi_check(const char *op, mi_ctx *c, const tn_tensor *px, const tn_tensor *py,
                          const tn_tensor *boundary, tn_rnnt_bnd **bnd) {
    memset(c, 0, sizeof *c);
    if (!px) return tn_error(TN_ERR_ARG, "%s: argument 'px' is NULL", op);
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

/* Checks px_grad, py_grad (px's and py's shapes) and the table p (B, S+1, T+1): the forward's
 * optional outputs (a NULL one is skipped), the backward's required arguments. */
static tn_status mi_check_grads(const char *op, const mi_ctx *c, const tn_tensor *px, const tn_tensor *py,
                                const tn_tensor *px_grad, const tn_tensor *py_grad, const tn_tensor *p,
                                int required) {
    const int64_t sp[3] = {c->B, c->S + 1, c->T + 1};
    tn_status rc = TN_OK;
    if (required || px_grad) rc = tn_rnnt_internal_float(op, "px_grad", px_grad, 3, px->shape, py->dtype);
    if (rc == TN_OK && (required || py_grad))
        rc = tn_rnnt_internal_float(op, "py_grad", py_grad, 3, py->shape, py->dtype);
    if (rc == TN_OK && (required || p)) rc = tn_rnnt_internal_float(op, "p", p, 3, sp, py->dtype);
    return rc;
}

tn_status tn_rnnt_mutual_information(tn_tensor *scores, tn_tensor *px_grad, tn_tensor *py_grad, tn_tensor *p,
                                     const tn_tensor *px, const tn_tensor *py, const tn_tensor *boundary) {
    static const char *op = "rnnt_mutual_information";
    mi_ctx c;
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(mi_check(op, &c, px, py, boundary, &bnd));
    tn_status rc = TN_OK;
    const int64_t B = c.B, S = c.S, T = c.T;
    const int64_t sb[1] = {B};
    if ((px_grad == NULL) != (py_grad == NULL))
        rc = tn_error(TN_ERR_ARG, "%s: give both px_grad and py_grad (return_grad) or neither", op);
    if (rc == TN_OK) rc = tn_rnnt_internal_float(op, "scores", scores, 1, sb, py->dtype);
    if (rc == TN_OK) rc = mi_check_grads(op, &c, px, py, px_grad, py_grad, p, 0);
    if (rc == TN_OK && (px_grad == px || px_grad == py || py_grad == px || py_grad == py))
        rc = tn_error(TN_ERR_ARG, "%s: px_grad / py_grad must not be px or py", op);
    if (rc == TN_OK)
        rc = tn_rnnt_internal_device(op, "px", px, "py", py, "boundary", boundary, "scores", scores, "px_grad",
                                     px_grad, "py_grad", py_grad, "p", p, (const char *)NULL);
#ifdef TERN_HAVE_CUDA
    if (rc == TN_OK && px->device == TN_CUDA) {
        free(bnd);
        return tn_cuda_rnnt_mi(op, scores, px_grad, py_grad, p, px, py, boundary);
    }
#endif
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
    tn_rnnt_bnd *bnd = NULL;
    TN_TRY(mi_check(op, &c, px, py, boundary, &bnd));
    const int64_t sb[1] = {c.B};
    tn_status rc = mi_check_grads(op, &c, px, py, px_grad, py_grad, p, 1);
    if (rc == TN_OK && grad_scores) rc = tn_rnnt_internal_float(op, "grad_scores", grad_scores, 1, sb, py->dtype);
    if (rc == TN_OK)
        rc = tn_rnnt_internal_device(op, "px", px, "py", py, "boundary", boundary, "px_grad", px_grad, "py_grad",
                                     py_grad, "p", p, "grad_scores", grad_scores, (const char *)NULL);
#ifdef TERN_HAVE_CUDA
    if (rc == TN_OK && px->device == TN_CUDA) {
        free(bnd);
        return tn_cuda_rnnt_mi_backward(op, px_grad, py_grad, grad_scores, px, py, boundary, p);
    }
#endif
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
    TN_TRY(tn_check_tensor(op, "symbols", symbols));
    TN_TRY(tn_rnnt_internal_device(op, "am", am, "lm", lm, "symbols", symbols, "boundary", boundary,
                                   (const char *)NULL));
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
    if (rc == TN_OK) rc = tn_rnnt_internal_device(op, "am", am, "px", px, "py", py, (const char *)NULL);
#ifdef TERN_HAVE_CUDA
    if (rc == TN_OK && am->device == TN_CUDA) {
        free(bnd);
        return tn_cuda_rnnt_simple(op, px, py, lm, am, symbols, boundary, termination_symbol, rnnt_type, lm_only_scale,
                                   am_only_scale, delay_penalty);
    }
#endif
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
                    const double vy = tn_rnnt_simple_lp(am_term, lm_term, norm, c.smoothed, c.cs, c.ls, c.as, lonly,
                                                        aonly, c.smoothed ? c.logU[term] : 0.0);
                    st(py->data, pyo + s * T + t, f64, vy);
                    if (s < S) {
                        const double am_sym = ld(amb, t * C + sym, f64);
                        const double vx = tn_rnnt_simple_lp(am_sym, lm_sym, norm, c.smoothed, c.cs, c.ls, c.as, lonly,
                                                            aonly, c.smoothed ? c.logU[sym] : 0.0);
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
    if (rc == TN_OK)
        rc = tn_rnnt_internal_device(op, "am", am, "grad_px", grad_px, "grad_py", grad_py, "grad_lm", grad_lm,
                                     "grad_am", grad_am, (const char *)NULL);
#ifdef TERN_HAVE_CUDA
    if (rc == TN_OK && am->device == TN_CUDA) {
        free(bnd);
        return tn_cuda_rnnt_simple_backward(op, grad_lm, grad_am, grad_px, grad_py, lm, am, symbols, boundary,
                                            termination_symbol, rnnt_type, lm_only_scale, am_only_scale);
    }
#endif
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
