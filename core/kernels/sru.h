/*
 * kernels/sru.h — per-element math of the SRU recurrence (tn_sru_forward / tn_sru_backward in
 * core/sru.c): one time step of one (batch, direction, hidden unit) column, forward and
 * backward, in float (_f) and double (_d). The CPU loops call these inside `omp simd` loops
 * over consecutive hidden units; a CUDA kernel (one thread per column) can call the same.
 *
 * One step, as elementwise_recurrence_naive of the `sru` package 2.x:
 *   f = sigmoid((u1 + b_f) + v_f c_prev),  r = sigmoid((u2 + b_r) + v_r c_prev)
 *   c = u0 + (c_prev - u0) f,  g = c (act 0) or tanh(c) (act 1)
 *   h = x' + (g - x') m r  (skip)   or   h = g m r  (no skip),   m = dropout mask of h
 * Padding (c = c_prev, h = 0) is decided per (t, b) row by the caller, not here.
 *
 * The float sigmoid/tanh avoid libm (and rintf, which baseline x86-64 cannot vectorise) so
 * that the simd loops vectorise with plain SSE2: e^x rounds x/ln2 with the 1.5*2^23 trick
 * and reads the integer back from the bits of that sum, so no float->int conversion (and no
 * undefined behaviour for NaN) is involved. NaN inputs give NaN outputs.
 */
#ifndef TERN_KERNELS_SRU_H
#define TERN_KERNELS_SRU_H

#include <math.h>
#include <stdint.h>

#include "common.h"
#include "elementwise.h" /* tn_sigmoid_f, tn_tanh_f */
#include "half.h" /* tn_f32_bits, tn_bits_f32 */

/* ---- the arguments of one call ------------------------------------------------------------
 * What core/sru.c's argument checks hand to the loops (its CPU tiles and, in CUDA builds,
 * cuda/sru.cu): sizes, options and data pointers of contiguous tensors, offsets row-major over
 * (L, B, D*d[*k]). Pointers are typed void and cast by the dtype-specific code. */
typedef struct tn_sru_args {
    int64_t L, B, D, d, Dd, k;
    int act, skip;
    int32_t dtype;                      /* the dtype of every float tensor */
    double scale_x;
    /* forward */
    void *h, *c, *c_last;               /* (L, B, Dd), (L, B, Dd), (B, Dd) */
    const void *U;                      /* (L, B, Dd*k) */
    const void *x;                      /* (L, B, Dd) or NULL when unused */
    const void *weight_c, *bias;        /* (2*Dd); weight_c NULL = v1 */
    const void *c0, *mask_c;            /* (B, Dd) or NULL */
    const uint8_t *mask_pad;            /* (L, B) or NULL */
    /* backward */
    void *grad_U, *grad_x, *grad_c0;    /* (L, B, Dd*k), (L, B, Dd) or NULL, (B, Dd) or NULL */
    const void *grad_h, *grad_c_last;   /* (L, B, Dd), (B, Dd) or NULL */
    void *partial;                      /* [BUFFER] (B, 4, Dd): d v_f, d v_r, d b_f, d b_r */
} tn_sru_args;

/* ---- float ---------------------------------------------------------------------------- */

/* The float activations are tn_sigmoid_f and tn_tanh_f of kernels/elementwise.h: no libm
 * call, so the column loops vectorise on plain SSE2. */


/* Forward step: returns the new c; *h gets h. u0, u1, u2: U's first three values; xp = x'
 * (ignored without skip); vf, vr = weight_c (0 for v1); bf, br = bias; mc = mask (1 without). */
static TN_HD float tn_sru_fwd_f(float u0, float u1, float u2, float xp, float vf, float vr, float bf,
                                float br, float mc, float cp, int act, int skip, float *h) {
    const float f = tn_sigmoid_f((u1 + bf) + cp * vf);
    const float r = tn_sigmoid_f((u2 + br) + cp * vr);
    const float c = u0 + (cp - u0) * f;
    const float g = act ? tn_tanh_f(c) : c;
    *h = skip ? xp + (g - xp) * mc * r : g * mc * r;
    return c;
}

/* Backward step. gh = dL/dh_t, gc = dL/dc_t from later steps (and from c_last). Writes
 * du0, du1 (= dL/d pre-sigmoid of f, also the bias and (times cp) weight_c gradient of f),
 * du2 (same for r) and dxp = dL/dx' (0 without skip); returns dL/dc_prev. */
static TN_HD float tn_sru_bwd_f(float u0, float u1, float u2, float xp, float vf, float vr, float bf,
                                float br, float mc, float cp, float gh, float gc, int act, int skip,
                                float *du0, float *du1, float *du2, float *dxp) {
    const float f = tn_sigmoid_f((u1 + bf) + cp * vf);
    const float r = tn_sigmoid_f((u2 + br) + cp * vr);
    const float c = u0 + (cp - u0) * f;
    const float g = act ? tn_tanh_f(c) : c;
    const float ghm = gh * mc;
    const float dg = ghm * r;
    const float dr = skip ? ghm * (g - xp) : ghm * g;
    const float dc = gc + (act ? dg * (1.0f - g * g) : dg);
    const float daf = dc * (cp - u0) * (f * (1.0f - f));
    const float dar = dr * (r * (1.0f - r));
    *du0 = dc * (1.0f - f);
    *du1 = daf;
    *du2 = dar;
    *dxp = skip ? gh - dg : 0.0f; /* gh (1 - m r) */
    return dc * f + daf * vf + dar * vr;
}

/* ---- double --------------------------------------------------------------------------- */

static TN_HD double tn_sru_sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }
static TN_HD double tn_sru_tanh_d(double x) { return tanh(x); }

static TN_HD double tn_sru_fwd_d(double u0, double u1, double u2, double xp, double vf, double vr,
                                 double bf, double br, double mc, double cp, int act, int skip, double *h) {
    const double f = tn_sru_sigmoid_d((u1 + bf) + cp * vf);
    const double r = tn_sru_sigmoid_d((u2 + br) + cp * vr);
    const double c = u0 + (cp - u0) * f;
    const double g = act ? tn_sru_tanh_d(c) : c;
    *h = skip ? xp + (g - xp) * mc * r : g * mc * r;
    return c;
}

static TN_HD double tn_sru_bwd_d(double u0, double u1, double u2, double xp, double vf, double vr,
                                 double bf, double br, double mc, double cp, double gh, double gc, int act,
                                 int skip, double *du0, double *du1, double *du2, double *dxp) {
    const double f = tn_sru_sigmoid_d((u1 + bf) + cp * vf);
    const double r = tn_sru_sigmoid_d((u2 + br) + cp * vr);
    const double c = u0 + (cp - u0) * f;
    const double g = act ? tn_sru_tanh_d(c) : c;
    const double ghm = gh * mc;
    const double dg = ghm * r;
    const double dr = skip ? ghm * (g - xp) : ghm * g;
    const double dc = gc + (act ? dg * (1.0 - g * g) : dg);
    const double daf = dc * (cp - u0) * (f * (1.0 - f));
    const double dar = dr * (r * (1.0 - r));
    *du0 = dc * (1.0 - f);
    *du1 = daf;
    *du2 = dar;
    *dxp = skip ? gh - dg : 0.0;
    return dc * f + daf * vf + dar * vr;
}

#endif /* TERN_KERNELS_SRU_H */
