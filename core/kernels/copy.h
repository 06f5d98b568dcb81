/*
 * kernels/copy.h — the per-element math of tn_copy, tn_fill, tn_to_dtype and tn_arange: dtype
 * conversions and arange's values. Shared by core/copy.c (CPU), cuda/copy.cu and the random
 * fills (kernels/random.h), so every device converts with the same rounding.
 *
 * Conversions (the contract of tn_copy):
 *   float -> integer   truncates toward zero and saturates; NaN -> 0
 *   integer -> integer saturates, without passing through double (i64 stays exact)
 *   integer -> float   rounds to nearest (i64 -> f16 / bf16 through f32)
 *   float -> f16/bf16  rounds to nearest even (kernels/half.h); f64 -> f16 goes through f32
 * A value travels as int64_t when the source dtype is an integer one, else as double.
 */
#ifndef TERN_KERNELS_COPY_H
#define TERN_KERNELS_COPY_H

#include <math.h>

#include "common.h"
#include "half.h"
#include "tern.h"

/* Double arithmetic that is never fused into an fma: nvcc contracts a * b + c by default,
 * the baseline x86-64 CPU build cannot, and values that must be equal on every device (arange,
 * the random transforms) are computed with these. */
static TN_HD double tn_rn_add(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}
static TN_HD double tn_rn_sub(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dsub_rn(a, b);
#else
    return a - b;
#endif
}
static TN_HD double tn_rn_mul(double a, double b) {
#ifdef __CUDA_ARCH__
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

/* ---- saturating conversions ---------------------------------------------------------------- */

static TN_HD int32_t tn_sat_f64_i32(double v) {
    return v != v ? 0 : v >= 2147483647.0 ? INT32_MAX : v <= -2147483648.0 ? INT32_MIN : (int32_t)v;
}
static TN_HD int64_t tn_sat_f64_i64(double v) {
    return v != v ? 0
         : v >= 9223372036854775807.0 ? INT64_MAX
         : v <= -9223372036854775808.0 ? INT64_MIN
         : (int64_t)v;
}
static TN_HD uint8_t tn_sat_f64_u8(double v) { return v != v ? 0 : v >= 255.0 ? 255 : v <= 0.0 ? 0 : (uint8_t)v; }
static TN_HD int32_t tn_sat_i64_i32(int64_t v) {
    return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : (int32_t)v;
}
static TN_HD uint8_t tn_sat_i64_u8(int64_t v) { return v > 255 ? 255 : v < 0 ? 0 : (uint8_t)v; }

/* ---- element load / store through a dtype switch (generic paths) --------------------------- */

/* Element at p (dtype) as a double; NaN for an invalid dtype. */
static TN_HD double tn_elem_load_f64(const void *p, int32_t dtype) {
    switch (dtype) {
    case TN_F32: return *(const float *)p;
    case TN_F64: return *(const double *)p;
    case TN_F16: return tn_half_to_float(*(const uint16_t *)p);
    case TN_BF16: return tn_bf16_to_float(*(const uint16_t *)p);
    case TN_I32: return *(const int32_t *)p;
    case TN_I64: return (double)*(const int64_t *)p;
    case TN_U8: return *(const uint8_t *)p;
    default: return NAN;
    }
}

/* Element at p (an integer dtype) as an int64_t; float dtypes go through double. */
static TN_HD int64_t tn_elem_load_i64(const void *p, int32_t dtype) {
    switch (dtype) {
    case TN_I32: return *(const int32_t *)p;
    case TN_I64: return *(const int64_t *)p;
    case TN_U8: return *(const uint8_t *)p;
    default: return (int64_t)tn_elem_load_f64(p, dtype);
    }
}

/* Stores v into p (dtype): saturating into integer dtypes (NaN stores 0), round to nearest
 * even into f16 / bf16. */
static TN_HD void tn_elem_store_f64(void *p, int32_t dtype, double v) {
    switch (dtype) {
    case TN_F32: *(float *)p = (float)v; break;
    case TN_F64: *(double *)p = v; break;
    case TN_F16: *(uint16_t *)p = tn_float_to_half((float)v); break;
    case TN_BF16: *(uint16_t *)p = tn_float_to_bf16((float)v); break;
    case TN_I32: *(int32_t *)p = tn_sat_f64_i32(v); break;
    case TN_I64: *(int64_t *)p = tn_sat_f64_i64(v); break;
    case TN_U8: *(uint8_t *)p = tn_sat_f64_u8(v); break;
    default: break;
    }
}

/* Stores the integer v into p (dtype): saturating into narrower integers, rounded into floats. */
static TN_HD void tn_elem_store_i64(void *p, int32_t dtype, int64_t v) {
    switch (dtype) {
    case TN_I64: *(int64_t *)p = v; break;
    case TN_I32: *(int32_t *)p = tn_sat_i64_i32(v); break;
    case TN_U8: *(uint8_t *)p = tn_sat_i64_u8(v); break;
    case TN_F32: *(float *)p = (float)v; break;
    case TN_F64: *(double *)p = (double)v; break;
    case TN_F16: *(uint16_t *)p = tn_float_to_half((float)v); break;
    case TN_BF16: *(uint16_t *)p = tn_float_to_bf16((float)v); break;
    default: break;
    }
}

/* ---- arange ---------------------------------------------------------------------------------- */

/* Element i of arange(start, step) in floating point: start + i * step, rounded once per
 * operation (f32 outputs round this double to float). */
static TN_HD double tn_arange_f64(double start, double step, int64_t i) {
    return tn_rn_add(start, tn_rn_mul((double)i, step));
}

/* Element i of an integer arange with integral start and step (wraps modulo 2^64 rather than
 * overflowing; the caller saturates into the dtype). */
static TN_HD int64_t tn_arange_i64(int64_t start, int64_t step, int64_t i) {
    return (int64_t)((uint64_t)start + (uint64_t)i * (uint64_t)step);
}

#endif /* TERN_KERNELS_COPY_H */
