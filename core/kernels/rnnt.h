/*
 * kernels/rnnt.h — per-cell math of the RNN-T loss family (core/rnnt.c, core/rnnt_prune.c),
 * shared with the CUDA kernels so both run the same arithmetic.
 *
 *  - tn_rnnt_logadd_w: one cell of the mutual-information recursion: log(e^a + e^b) and the
 *    normalised weights e^(a - r), e^(b - r) of its two predecessors (they sum to 1). The
 *    weights come from the same exp the log-add needs, so the backward pass multiplies by them
 *    without any exp or log of its own.
 *  - tn_rnnt_simple_lp: one gathered entry of the simple / smoothed logprobs.
 *  - tn_rnnt_delay_penalty: k2's delay penalty λ ((T_b - 1) / 2 - t) added to px[b, s, t].
 *  - tn_rnnt_lsm_grad_*: the gradient of one logit through the fused log-softmax of the joint
 *    and pruned logprobs: d/dx_c of gx (x_sym - lse) + gy (x_term - lse).
 * Gradient policy of the callers: every gradient is an activation gradient, written (=).
 */
#ifndef TERN_KERNELS_RNNT_H
#define TERN_KERNELS_RNNT_H

#include <math.h>

#include "common.h"
#include "elementwise.h" /* tn_exp_f */

/* One utterance's boundary: symbols [s0, s1], frames [t0, t1] (end values inclusive in the
 * recursion's table, i.e. s1 = end_symbol, t1 = end_frame). */
typedef struct tn_rnnt_bnd {
    int64_t s0, t0, s1, t1;
} tn_rnnt_bnd;

/* r = log(exp(a) + exp(b)); *wa = exp(a - r), *wb = exp(b - r). Both -inf: r = -inf and both
 * weights 0 (an unreachable cell passes no occupation back). */
static TN_HD double tn_rnnt_logadd_w(double a, double b, double *wa, double *wb) {
    if (a >= b) {
        if (a == -INFINITY) { *wa = 0.0; *wb = 0.0; return -INFINITY; }
        const double e = exp(b - a), r = 1.0 / (1.0 + e);
        *wa = r;
        *wb = e * r;
        return a + log1p(e);
    }
    const double e = exp(a - b), r = 1.0 / (1.0 + e);
    *wb = r;
    *wa = e * r;
    return b + log1p(e);
}

/* One gathered simple / smoothed logprob (core/rnnt.c tn_rnnt_logprobs_simple and its CUDA
 * kernel): am_c + lm_c - norm, with smoothing cs (that) + ls (lm_c - lonly) + as (am_c + logU_c -
 * aonly), lonly / aonly the LM-only / AM-only normalisers and logU_c the log unigram of class c. */
static TN_HD double tn_rnnt_simple_lp(double am_c, double lm_c, double norm, int smoothed, double cs, double ls,
                                      double as, double lonly, double aonly, double logU_c) {
    double v = am_c + lm_c - norm;
    if (smoothed) v = cs * v + ls * (lm_c - lonly) + as * (am_c + logU_c - aonly);
    return v;
}

/* exp(x - y) for x, y <= a finite or -inf log-probability; 0 when y is -inf (an unreachable
 * successor: no occupation flows through it). */
static TN_HD double tn_rnnt_ratio(double x, double y) {
    return y == -INFINITY ? 0.0 : exp(x - y);
}

/* k2's delay penalty for frame t of an utterance with t_end frames. */
static TN_HD double tn_rnnt_delay_penalty(double lambda, int64_t t_end, int64_t t) {
    return lambda * ((double)(t_end - 1) * 0.5 - (double)t);
}

/* Gradient of one logit x (class c) of a row with log-normaliser lse, where the row feeds
 * px = x_sym - lse with gradient gx and py = x_term - lse with gradient gy. The class
 * indicator terms are added by the caller at c == sym and c == term. */
static TN_HD float tn_rnnt_lsm_grad_f(float x, float lse, float gsum) {
    return -gsum * tn_exp_f(x - lse);
}
static TN_HD double tn_rnnt_lsm_grad_d(double x, double lse, double gsum) {
    return -gsum * exp(x - lse);
}

/* The pruned joiner's hidden unit h = tanh(am + lm) and its input gradient g (1 - h^2), shared
 * by tn_rnnt_pruned_tanh(_backward) and the CUDA kernels. */
static TN_HD float tn_rnnt_joiner_h_f(float am, float lm) { return tn_tanh_f(am + lm); }
static TN_HD double tn_rnnt_joiner_h_d(double am, double lm) { return tanh(am + lm); }
static TN_HD float tn_rnnt_joiner_dz_f(float g, float h) { return g * (1.0f - h * h); }
static TN_HD double tn_rnnt_joiner_dz_d(double g, double h) { return g * (1.0 - h * h); }

#endif /* TERN_KERNELS_RNNT_H */
