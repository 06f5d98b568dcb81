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
 * The float versions use tn_sigmoid_f and tn_tanh_f of kernels/elementwise.h, which call no
 * libm function (not even rintf), so the CPU loops vectorise under `omp simd` on plain SSE2.
 * The double versions use libm (they serve f64 runs and gradient checks).
 */
#ifndef TERN_KERNELS_LSTM_H
#define TERN_KERNELS_LSTM_H

#include <math.h>

#include "common.h"
#include "elementwise.h" /* tn_sigmoid_f, tn_tanh_f, tn_sigmoid_d */
#include "half.h"        /* tn_f32_bits, tn_bits_f32 */


/* Forward of one hidden unit. *gi, *gf, *gg, *go hold the pre-activations on entry and the
 * activated gates on return; returns the new cell state c and stores o tanh(c) in *hr. */
static TN_HD float tn_lstm_cell_fwd_f(float *gi, float *gf, float *gg, float *go, float c_prev,
                                      float *hr) {
    const float i = tn_sigmoid_f(*gi), f = tn_sigmoid_f(*gf);
    const float g = tn_tanh_f(*gg), o = tn_sigmoid_f(*go);
    *gi = i; *gf = f; *gg = g; *go = o;
    const float c = f * c_prev + i * g;
    *hr = o * tn_tanh_f(c);
    return c;
}

/* Backward of one hidden unit: i, f, g, o the activated gates, c this step's cell state,
 * c_prev the previous one, dhr the gradient of o tanh(c), dc the gradient of c from the next
 * step. Stores the gradients of the four pre-activations; returns the gradient of c_prev. */
static TN_HD float tn_lstm_cell_bwd_f(float i, float f, float g, float o, float c, float c_prev,
                                      float dhr, float dc, float *dai, float *daf, float *dag,
                                      float *dao) {
    const float tc = tn_tanh_f(c);
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
