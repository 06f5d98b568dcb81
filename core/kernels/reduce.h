/*
 * kernels/reduce.h — the per-element steps and per-row results of reductions and softmax,
 * in float (_f), double (_d) and the i64 accumulator of integer dtypes (_i64). Shared by the
 * CPU loops (core/reduce.c, core/softmax.c) and the CUDA kernels (cuda/reduce.cu,
 * cuda/softmax.cu), so both run the same arithmetic; only the order in which a row's partial
 * results are combined differs (pairwise blocks on the CPU, thread trees on the GPU).
 *
 * MAX / MIN propagate NaN (the first NaN a running value meets sticks). ARGMAX / ARGMIN pick
 * the first NaN if there is one, else the first extreme (ties to the lower index), as torch.
 */
#ifndef TERN_KERNELS_REDUCE_H
#define TERN_KERNELS_REDUCE_H

#include <math.h>

#include "common.h"
#include "elementwise.h" /* tn_exp_f, tn_exp_d */

/* ---- running max / min: m is the value so far, x the next element ------------------------ */

static TN_HD float tn_red_max_f(float m, float x) { return (x > m || x != x) ? x : m; }
static TN_HD float tn_red_min_f(float m, float x) { return (x < m || x != x) ? x : m; }
static TN_HD double tn_red_max_d(double m, double x) { return (x > m || x != x) ? x : m; }
static TN_HD double tn_red_min_d(double m, double x) { return (x < m || x != x) ? x : m; }
static TN_HD int64_t tn_red_max_i64(int64_t m, int64_t x) { return x > m ? x : m; }
static TN_HD int64_t tn_red_min_i64(int64_t m, int64_t x) { return x < m ? x : m; }

/* ---- ARGMAX / ARGMIN: does x at index i beat the best b at index bi? ------------------------
 * A NaN beats every number and an earlier NaN; between numbers the larger (smaller for
 * is_min) wins, equal values go to the lower index. Associative and commutative, so partial
 * bests of any split of a row combine to the sequential answer. */
static TN_HD int tn_red_arg_better_f(float x, int64_t i, float b, int64_t bi, int is_min) {
    if (b != b) return x != x && i < bi;
    if (x != x) return 1;
    if (x == b) return i < bi;
    return is_min ? x < b : x > b;
}
static TN_HD int tn_red_arg_better_d(double x, int64_t i, double b, int64_t bi, int is_min) {
    if (b != b) return x != x && i < bi;
    if (x != x) return 1;
    if (x == b) return i < bi;
    return is_min ? x < b : x > b;
}
static TN_HD int tn_red_arg_better_i64(int64_t x, int64_t i, int64_t b, int64_t bi, int is_min) {
    if (x == b) return i < bi;
    return is_min ? x < b : x > b;
}

/* The sequential scan's step (the CPU's rows, a GPU thread's elements): does x, which comes
 * after the best b in the row, replace it? b must not be NaN: a NaN best is final, the scan
 * stops there. */
static TN_HD int tn_red_arg_later_f(float x, float b, int is_min) { return x != x || (is_min ? x < b : x > b); }
static TN_HD int tn_red_arg_later_d(double x, double b, int is_min) { return x != x || (is_min ? x < b : x > b); }
static TN_HD int tn_red_arg_later_i64(int64_t x, int64_t b, int is_min) { return is_min ? x < b : x > b; }

/* ---- per-element terms of the second pass of VAR (c = the mean) and LOGSUMEXP (c = the max) - */

static TN_HD float tn_red_sqdev_f(float x, float c) { return (x - c) * (x - c); }
static TN_HD double tn_red_sqdev_d(double x, double c) { return (x - c) * (x - c); }
static TN_HD float tn_red_expdev_f(float x, float c) { return tn_exp_f(x - c); }
static TN_HD double tn_red_expdev_d(double x, double c) { return tn_exp_d(x - c); }

/* ---- results from a row's accumulators (n elements) ------------------------------------------ */

/* MEAN from the sum; n == 0 gives NaN. */
static TN_HD float tn_red_mean_f(float s, int64_t n) { return s / (float)n; }
static TN_HD double tn_red_mean_d(double s, int64_t n) { return s / (double)n; }
/* VAR from sq = sum (x - mean)^2: divisor n - corr, clamped at 0 (so n <= corr gives NaN or
 * inf, as torch). */
static TN_HD float tn_red_var_f(float sq, int64_t n, int32_t corr) {
    const int64_t d = n - corr;
    return sq / (float)(d > 0 ? d : 0);
}
static TN_HD double tn_red_var_d(double sq, int64_t n, int32_t corr) {
    const int64_t d = n - corr;
    return sq / (double)(d > 0 ? d : 0);
}
/* LOGSUMEXP from the row's max m and s = sum exp(x - m), in double: an infinite or NaN m is the
 * result itself (s is then not used: pass 0). */
static TN_HD int tn_red_lse_direct_f(float m) { return isinf(m) || m != m; }
static TN_HD int tn_red_lse_direct_d(double m) { return isinf(m) || m != m; }
static TN_HD double tn_red_lse_f(float m, float s) {
    return tn_red_lse_direct_f(m) ? (double)m : (double)m + log((double)s);
}
static TN_HD double tn_red_lse_d(double m, double s) { return tn_red_lse_direct_d(m) ? m : m + log(s); }

/* ---- softmax / log_softmax along a row with max m and s = sum exp(x - m) ----------------------
 * forward:  softmax y = exp(x - m) * inv with inv = 1 / s;  log_softmax y = (x - m) - ls with
 *           ls = log(s) (taken in double)
 * backward: softmax gi = y * (g - s) with s = sum g * y;  log_softmax gi = g - exp(y) * s with
 *           s = sum g */

static TN_HD float tn_softmax_f(float x, float m, float inv) { return tn_exp_f(x - m) * inv; }
static TN_HD double tn_softmax_d(double x, double m, double inv) { return tn_exp_d(x - m) * inv; }
static TN_HD float tn_softmax_lognorm_f(float s) { return (float)log((double)s); }
static TN_HD double tn_softmax_lognorm_d(double s) { return log(s); }
static TN_HD float tn_log_softmax_f(float x, float m, float ls) { return (x - m) - ls; }
static TN_HD double tn_log_softmax_d(double x, double m, double ls) { return (x - m) - ls; }
static TN_HD float tn_softmax_bwd_f(float g, float y, float s) { return y * (g - s); }
static TN_HD double tn_softmax_bwd_d(double g, double y, double s) { return y * (g - s); }
static TN_HD float tn_log_softmax_bwd_f(float g, float y, float s) { return g - tn_exp_f(y) * s; }
static TN_HD double tn_log_softmax_bwd_d(double g, double y, double s) { return g - tn_exp_d(y) * s; }

#endif /* TERN_KERNELS_REDUCE_H */
