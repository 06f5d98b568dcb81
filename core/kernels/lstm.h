/*
 * kernels/lstm.h — per-element math of one LSTM cell (PyTorch nn.LSTM: gates i, f, g, o),
 * float (_f) and double (_d). Shared by the CPU loops of core/lstm.c and the CUDA kernels of
 * cuda/, so both run the same arithmetic.
 *
 *   i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
 *   c = f c_prev + i g,  hr = o tanh(c)        (h = hr, or W_hr hr with a projection)
 *
 * Backward, from d(hr) and the cell gradient dc carried from the next step:
 *   dct = dc + d(hr) o (1 - tanh(c)^2)
 *   da_i = dct g i (1 - i), da_f = dct c_prev f (1 - f), da_g = dct i (1 - g^2),
 *   da_o = d(hr) tanh(c) o (1 - o),  dc_prev = dct f
 * using the activated gates saved by the forward (tanh(c) is recomputed from c).
 *
 * The float versions use tn_lstm_sigmoid_f and tn_lstm_tanh_f below, which call no libm
 * function (not even rintf), so the CPU loops vectorise under `omp simd` on plain SSE2.
 * The double versions use libm (they serve f64 runs and gradient checks).
 */
#ifndef TERN_KERNELS_LSTM_H
#define TERN_KERNELS_LSTM_H

#include <math.h>

#include "common.h"
#include "elementwise.h" /* tn_sigmoid_d */
#include "half.h"        /* tn_f32_bits, tn_bits_f32 */

/* exp(x) for x <= 0 (the sign of x is ignored: exp(-|x|)), NaN stays NaN. Cephes expf as
 * tn_exp_f (kernels/elementwise.h), but n = round(x / ln2) uses the 1.5 * 2^23 trick instead
 * of rintf: baseline x86-64 (SSE2) has no vector rint, and a rintf call keeps gcc from
 * vectorising the loop. |x| is clamped to 104 (exp(-104) underflows to 0 through the two
 * half scalings). */
static TN_HD float tn_lstm_expneg_f(float x) {
    const uint32_t xb = tn_f32_bits(x);
    const uint32_t nanm = 0u - (uint32_t)((xb & 0x7fffffffu) > 0x7f800000u);
    uint32_t ab = xb & 0x7fffffffu;
    ab = ab > 0x42d00000u ? 0x42d00000u : ab;
    const float xc = tn_bits_f32(0x80000000u | ab); /* -min(|x|, 104) */
    const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t ni = (int32_t)n, n1 = ni / 2, n2 = ni - n1;
    const float s1 = tn_bits_f32((uint32_t)(n1 + 127) << 23), s2 = tn_bits_f32((uint32_t)(n2 + 127) << 23);
    const float y = p * s1 * s2;
    return tn_bits_f32((tn_f32_bits(y) & ~nanm) | (xb & nanm));
}

/* sigmoid as tn_sigmoid_f, on tn_lstm_expneg_f: 1 / (1 + z) or z / (1 + z), z = exp(-|x|). */
static TN_HD float tn_lstm_sigmoid_f(float x) {
    const float z = tn_lstm_expneg_f(x);
    const float pos = 1.0f / (1.0f + z), neg = z * pos;
    const uint32_t m = 0u - (tn_f32_bits(x) >> 31);
    return tn_bits_f32((tn_f32_bits(pos) & ~m) | (tn_f32_bits(neg) & m));
}

/* tanhf without libm (Cephes tanhf, ~2 ulp): |x| < 0.625 an odd polynomial in x, else
 * (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.29 (no cancellation); both are computed and one
 * is picked with an integer select so the loop stays branch-free. Saturates to +-1; NaN stays
 * NaN (the exp branch is picked for NaN bits). */
static TN_HD float tn_lstm_tanh_f(float x) {
    const uint32_t xb = tn_f32_bits(x), ab = xb & 0x7fffffffu, sg = xb & 0x80000000u;
    const float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const float small = p * z * x + x;
    const float e = tn_lstm_expneg_f(2.0f * x);
    const float large = tn_bits_f32(tn_f32_bits((1.0f - e) / (1.0f + e)) | sg);
    const uint32_t m = 0u - (uint32_t)(ab >= 0x3f200000u); /* |x| >= 0.625 */
    return tn_bits_f32((tn_f32_bits(large) & m) | (tn_f32_bits(small) & ~m));
}

/* Forward of one hidden unit. *gi, *gf, *gg, *go hold the pre-activations on entry and the
 * activated gates on return; returns the new cell state c and stores o tanh(c) in *hr. */
static TN_HD float tn_lstm_cell_fwd_f(float *gi, float *gf, float *gg, float *go, float c_prev,
                                      float *hr) {
    const float i = tn_lstm_sigmoid_f(*gi), f = tn_lstm_sigmoid_f(*gf);
    const float g = tn_lstm_tanh_f(*gg), o = tn_lstm_sigmoid_f(*go);
    *gi = i; *gf = f; *gg = g; *go = o;
    const float c = f * c_prev + i * g;
    *hr = o * tn_lstm_tanh_f(c);
    return c;
}

/* Backward of one hidden unit: i, f, g, o the activated gates, c this step's cell state,
 * c_prev the previous one, dhr the gradient of o tanh(c), dc the gradient of c from the next
 * step. Stores the gradients of the four pre-activations; returns the gradient of c_prev. */
static TN_HD float tn_lstm_cell_bwd_f(float i, float f, float g, float o, float c, float c_prev,
                                      float dhr, float dc, float *dai, float *daf, float *dag,
                                      float *dao) {
    const float tc = tn_lstm_tanh_f(c);
    const float dct = dc + dhr * o * (1.0f - tc * tc);
    *dai = dct * g * i * (1.0f - i);
    *daf = dct * c_prev * f * (1.0f - f);
    *dag = dct * i * (1.0f - g * g);
    *dao = dhr * tc * o * (1.0f - o);
    return dct * f;
}

static TN_HD double tn_lstm_cell_fwd_d(double *gi, double *gf, double *gg, double *go,
                                       double c_prev, double *hr) {
    const double i = tn_sigmoid_d(*gi), f = tn_sigmoid_d(*gf);
    const double g = tanh(*gg), o = tn_sigmoid_d(*go);
    *gi = i; *gf = f; *gg = g; *go = o;
    const double c = f * c_prev + i * g;
    *hr = o * tanh(c);
    return c;
}

static TN_HD double tn_lstm_cell_bwd_d(double i, double f, double g, double o, double c,
                                       double c_prev, double dhr, double dc, double *dai,
                                       double *daf, double *dag, double *dao) {
    const double tc = tanh(c);
    const double dct = dc + dhr * o * (1.0 - tc * tc);
    *dai = dct * g * i * (1.0 - i);
    *daf = dct * c_prev * f * (1.0 - f);
    *dag = dct * i * (1.0 - g * g);
    *dao = dhr * tc * o * (1.0 - o);
    return dct * f;
}

#endif /* TERN_KERNELS_LSTM_H */
