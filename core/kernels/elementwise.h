/*
 * kernels/elementwise.h — per-element math of every tn_binop and tn_unop, in float (_f) and
 * double (_d), plus the integer helpers. Shared by the CPU loops (core/elementwise.c) and
 * the CUDA kernels (cuda/), so both run the same arithmetic.
 *
 * Semantics follow PyTorch: maximum/minimum propagate NaN, round is half-to-even (rint in
 * the default rounding mode), relu keeps NaN, sigmoid is stable for large |x|.
 * sign keeps NaN (numpy; torch.sign gives 0) and keeps the sign of zero.
 * Comparisons return 0/1 as uint8_t; logical_not(NaN) = 0 (NaN is "true").
 */
#ifndef TERN_KERNELS_ELEMENTWISE_H
#define TERN_KERNELS_ELEMENTWISE_H

#include <math.h>

#include "common.h"
#include "half.h" /* tn_bits_f32 */

/* ---- float ---------------------------------------------------------------------------- */

static TN_HD float tn_add_f(float a, float b) { return a + b; }
static TN_HD float tn_sub_f(float a, float b) { return a - b; }
static TN_HD float tn_mul_f(float a, float b) { return a * b; }
static TN_HD float tn_div_f(float a, float b) { return a / b; }
static TN_HD float tn_pow_f(float a, float b) { return powf(a, b); }
static TN_HD float tn_maximum_f(float a, float b) { return (a != a || a > b) ? a : b; }
static TN_HD float tn_minimum_f(float a, float b) { return (a != a || a < b) ? a : b; }
static TN_HD float tn_atan2_f(float a, float b) { return atan2f(a, b); }

static TN_HD float tn_neg_f(float x) { return -x; }
static TN_HD float tn_abs_f(float x) { return fabsf(x); }
/* expf without libm so that `omp simd` loops vectorise it (glibc's vector expf needs
 * -ffast-math): n = rint(x / ln2), r = x - n ln2 in two parts, a degree-6 polynomial
 * (Cephes expf, ~1 ulp), scaled by 2^n in two halves so overflow gives inf and deep
 * underflow 0. NaN stays NaN. */
static TN_HD float tn_exp_f(float x) {
    /* branch-free, integer selects only (float compares block if-conversion): clamp |x| to
     * 104 (x < 0) or 88.8 (x >= 0) on the bits; NaN clamps too and is put back at the end */
    const uint32_t xb = tn_f32_bits(x);
    const uint32_t nanm = 0u - (uint32_t)((xb & 0x7fffffffu) > 0x7f800000u);
    const uint32_t sg = xb & 0x80000000u, lim = sg ? 0x42d00000u : 0x42b1999au;
    uint32_t ab = xb & 0x7fffffffu;
    ab = ab > lim ? lim : ab;
    const float xc = tn_bits_f32(sg | ab);
    /* round to nearest even by adding and subtracting 1.5 * 2^23 (|xc log2 e| < 2^22): unlike
     * rintf this vectorises on plain SSE2 */
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t ni = (int32_t)n, n1 = ni / 2, n2 = ni - n1;
    float s1 = tn_bits_f32((uint32_t)(n1 + 127) << 23), s2 = tn_bits_f32((uint32_t)(n2 + 127) << 23);
    float y = p * s1 * s2;
    return tn_bits_f32((tn_f32_bits(y) & ~nanm) | (xb & nanm));
}
static TN_HD float tn_log_f(float x) { return logf(x); }
static TN_HD float tn_sqrt_f(float x) { return sqrtf(x); }
static TN_HD float tn_rsqrt_f(float x) { return 1.0f / sqrtf(x); }
/* Cephes tanhf (~2 ulp) without libm: |x| < 0.625 an odd polynomial in x, else
 * (1 - e) / (1 + e) with e = exp(-2|x|) <= 0.29 (no cancellation); both are computed and one
 * picked with an integer select so loops stay branch-free and vectorise. Saturates to +-1;
 * NaN stays NaN. */
static TN_HD float tn_tanh_f(float x) {
    const uint32_t xb = tn_f32_bits(x), ab = xb & 0x7fffffffu, sg = xb & 0x80000000u;
    const float z = x * x;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    const float small = tn_bits_f32(tn_f32_bits(p * z * x + x) | sg); /* tanh(-0) = -0 */
    const float e = tn_exp_f(-2.0f * tn_bits_f32(ab));
    const float large = tn_bits_f32(tn_f32_bits((1.0f - e) / (1.0f + e)) | sg);
    const uint32_t m = 0u - (uint32_t)(ab >= 0x3f200000u); /* |x| >= 0.625 */
    return tn_bits_f32((tn_f32_bits(large) & m) | (tn_f32_bits(small) & ~m));
}
static TN_HD float tn_sigmoid_f(float x) {
    /* exp of a non-positive number only: never overflows; the sign picks 1/(1+z) or z/(1+z)
     * with an integer select so the loop vectorises */
    float z = tn_exp_f(-fabsf(x));
    float pos = 1.0f / (1.0f + z), neg = z * pos;
    uint32_t m = 0u - (tn_f32_bits(x) >> 31);
    return tn_bits_f32((tn_f32_bits(pos) & ~m) | (tn_f32_bits(neg) & m));
}
static TN_HD float tn_relu_f(float x) { return x < 0.0f ? 0.0f : x; }
static TN_HD float tn_sign_f(float x) { return x > 0.0f ? 1.0f : x < 0.0f ? -1.0f : x; }
static TN_HD float tn_log1p_f(float x) { return log1pf(x); }
static TN_HD float tn_expm1_f(float x) { return expm1f(x); }
static TN_HD float tn_sin_f(float x) { return sinf(x); }
static TN_HD float tn_cos_f(float x) { return cosf(x); }
static TN_HD float tn_reciprocal_f(float x) { return 1.0f / x; }
static TN_HD float tn_square_f(float x) { return x * x; }
static TN_HD float tn_floor_f(float x) { return floorf(x); }
static TN_HD float tn_ceil_f(float x) { return ceilf(x); }
static TN_HD float tn_round_f(float x) { return rintf(x); } /* half to even */
static TN_HD float tn_clamp_f(float x, float lo, float hi) { /* NaN x stays NaN */
    x = x < lo ? lo : x;
    return x > hi ? hi : x;
}

/* ---- double --------------------------------------------------------------------------- */

static TN_HD double tn_add_d(double a, double b) { return a + b; }
static TN_HD double tn_sub_d(double a, double b) { return a - b; }
static TN_HD double tn_mul_d(double a, double b) { return a * b; }
static TN_HD double tn_div_d(double a, double b) { return a / b; }
static TN_HD double tn_pow_d(double a, double b) { return pow(a, b); }
static TN_HD double tn_maximum_d(double a, double b) { return (a != a || a > b) ? a : b; }
static TN_HD double tn_minimum_d(double a, double b) { return (a != a || a < b) ? a : b; }
static TN_HD double tn_atan2_d(double a, double b) { return atan2(a, b); }

static TN_HD double tn_neg_d(double x) { return -x; }
static TN_HD double tn_abs_d(double x) { return fabs(x); }
static TN_HD double tn_exp_d(double x) { return exp(x); }
static TN_HD double tn_log_d(double x) { return log(x); }
static TN_HD double tn_sqrt_d(double x) { return sqrt(x); }
static TN_HD double tn_rsqrt_d(double x) { return 1.0 / sqrt(x); }
static TN_HD double tn_tanh_d(double x) { return tanh(x); }
static TN_HD double tn_sigmoid_d(double x) {
    double z = exp(-fabs(x));
    return x >= 0.0 ? 1.0 / (1.0 + z) : z / (1.0 + z);
}
static TN_HD double tn_relu_d(double x) { return x < 0.0 ? 0.0 : x; }
static TN_HD double tn_sign_d(double x) { return x > 0.0 ? 1.0 : x < 0.0 ? -1.0 : x; }
static TN_HD double tn_log1p_d(double x) { return log1p(x); }
static TN_HD double tn_expm1_d(double x) { return expm1(x); }
static TN_HD double tn_sin_d(double x) { return sin(x); }
static TN_HD double tn_cos_d(double x) { return cos(x); }
static TN_HD double tn_reciprocal_d(double x) { return 1.0 / x; }
static TN_HD double tn_square_d(double x) { return x * x; }
static TN_HD double tn_floor_d(double x) { return floor(x); }
static TN_HD double tn_ceil_d(double x) { return ceil(x); }
static TN_HD double tn_round_d(double x) { return rint(x); }
static TN_HD double tn_clamp_d(double x, double lo, double hi) {
    x = x < lo ? lo : x;
    return x > hi ? hi : x;
}

/* ---- integers (two's complement wrap-around like torch; no signed-overflow UB) --------- */

static TN_HD int64_t tn_add_i64(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static TN_HD int64_t tn_sub_i64(int64_t a, int64_t b) { return (int64_t)((uint64_t)a - (uint64_t)b); }
static TN_HD int64_t tn_mul_i64(int64_t a, int64_t b) { return (int64_t)((uint64_t)a * (uint64_t)b); }
static TN_HD int64_t tn_neg_i64(int64_t a) { return (int64_t)(0u - (uint64_t)a); }
/* Truncating division; b != 0 is checked by the caller; INT64_MIN / -1 wraps. */
static TN_HD int64_t tn_div_i64(int64_t a, int64_t b) { return b == -1 ? tn_neg_i64(a) : a / b; }
static TN_HD int32_t tn_add_i32(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static TN_HD int32_t tn_sub_i32(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }
static TN_HD int32_t tn_mul_i32(int32_t a, int32_t b) { return (int32_t)((uint32_t)a * (uint32_t)b); }
static TN_HD int32_t tn_neg_i32(int32_t a) { return (int32_t)(0u - (uint32_t)a); }
static TN_HD int32_t tn_div_i32(int32_t a, int32_t b) { return b == -1 ? tn_neg_i32(a) : a / b; }
static TN_HD uint8_t tn_add_u8(uint8_t a, uint8_t b) { return (uint8_t)(a + b); }
static TN_HD uint8_t tn_sub_u8(uint8_t a, uint8_t b) { return (uint8_t)(a - b); }
static TN_HD uint8_t tn_mul_u8(uint8_t a, uint8_t b) { return (uint8_t)((unsigned)a * (unsigned)b); }
static TN_HD uint8_t tn_neg_u8(uint8_t a) { return (uint8_t)(0u - (unsigned)a); }
static TN_HD uint8_t tn_div_u8(uint8_t a, uint8_t b) { return (uint8_t)(a / b); } /* b != 0 checked */

static TN_HD int64_t tn_maximum_i64(int64_t a, int64_t b) { return a > b ? a : b; }
static TN_HD int64_t tn_minimum_i64(int64_t a, int64_t b) { return a < b ? a : b; }
static TN_HD int32_t tn_maximum_i32(int32_t a, int32_t b) { return a > b ? a : b; }
static TN_HD int32_t tn_minimum_i32(int32_t a, int32_t b) { return a < b ? a : b; }
static TN_HD uint8_t tn_maximum_u8(uint8_t a, uint8_t b) { return a > b ? a : b; }
static TN_HD uint8_t tn_minimum_u8(uint8_t a, uint8_t b) { return a < b ? a : b; }

/* abs wraps at the most negative value (abs(INT_MIN) = INT_MIN, like torch); sign is -1/0/1;
 * floor, ceil and round are the identity on integers. */
static TN_HD int64_t tn_abs_i64(int64_t x) { return x < 0 ? tn_neg_i64(x) : x; }
static TN_HD int32_t tn_abs_i32(int32_t x) { return x < 0 ? tn_neg_i32(x) : x; }
static TN_HD uint8_t tn_abs_u8(uint8_t x) { return x; }
static TN_HD int64_t tn_sign_i64(int64_t x) { return (int64_t)((x > 0) - (x < 0)); }
static TN_HD int32_t tn_sign_i32(int32_t x) { return (int32_t)((x > 0) - (x < 0)); }
static TN_HD uint8_t tn_sign_u8(uint8_t x) { return (uint8_t)(x > 0); }
static TN_HD int64_t tn_relu_i64(int64_t x) { return x < 0 ? 0 : x; }
static TN_HD int32_t tn_relu_i32(int32_t x) { return x < 0 ? 0 : x; }
static TN_HD uint8_t tn_relu_u8(uint8_t x) { return x; }
static TN_HD int64_t tn_square_i64(int64_t x) { return tn_mul_i64(x, x); }
static TN_HD int32_t tn_square_i32(int32_t x) { return tn_mul_i32(x, x); }
static TN_HD uint8_t tn_square_u8(uint8_t x) { return tn_mul_u8(x, x); }

/* Integer clamp in int64 with bounds already made integral (ceil(lo), floor(hi), saturated);
 * the caller casts the result to the tensor's type. */
static TN_HD int64_t tn_clamp_i64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

/* ---- logical_not and comparisons ------------------------------------------------------- */

/* 1 where x is zero (-0 included); NaN is "true", so logical_not(NaN) = 0. */
static TN_HD uint8_t tn_logical_not_f(float x) { return x == 0.0f; }
static TN_HD uint8_t tn_logical_not_d(double x) { return x == 0.0; }
static TN_HD uint8_t tn_logical_not_i64(int64_t x) { return x == 0; }

/* An integer compared exactly with a double scalar s, for every integer and any s (no
 * rounding of x to double): prepare s once with tn_icmp_prepare, then tn_icmp_order(x, c) is
 * -1 if x < s, 0 if x == s, 1 if x > s and 2 if s is NaN (unordered). */
typedef struct tn_icmp_scalar {
    int64_t si; /* floor(s) when it fits in int64 */
    int nan_;   /* s is NaN */
    int frac;   /* s has a fractional part */
    int above;  /* floor(s) >= 2^63: above every int64 */
    int below;  /* floor(s) < -2^63: below every int64 */
} tn_icmp_scalar;

static TN_HD tn_icmp_scalar tn_icmp_prepare(double s) {
    tn_icmp_scalar c;
    c.nan_ = s != s;
    const double fl = c.nan_ ? 0.0 : floor(s);
    c.frac = !c.nan_ && s != fl;
    c.above = fl >= 9.2233720368547758e18;
    c.below = fl < -9.2233720368547758e18;
    c.si = c.above || c.below ? 0 : (int64_t)fl;
    return c;
}

static TN_HD int tn_icmp_order(int64_t x, tn_icmp_scalar c) {
    return c.nan_ ? 2 : c.above ? -1 : c.below ? 1 : x < c.si ? -1 : x > c.si ? 1 : (c.frac ? -1 : 0);
}

/* Comparison k of an order from tn_icmp_order: k counts the comparisons of tn_binop from
 * TN_EQ (0 eq, 1 ne, 2 lt, 3 le, 4 gt, 5 ge). Unordered (2) is only "ne". */
static TN_HD uint8_t tn_cmp_of_order(int k, int cmp) {
    switch (k) {
    case 0: return cmp == 0;
    case 1: return cmp != 0;
    case 2: return cmp == -1;
    case 3: return cmp == -1 || cmp == 0;
    case 4: return cmp == 1;
    default: return cmp == 1 || cmp == 0;
    }
}

#endif /* TERN_KERNELS_ELEMENTWISE_H */
