/*
 * kernels/half.h — IEEE binary16 and bfloat16 <-> binary32 conversions, round to nearest
 * even, NaN kept NaN, overflow to infinity. Shared by core/ and cuda/.
 */
#ifndef TERN_KERNELS_HALF_H
#define TERN_KERNELS_HALF_H

#include <string.h>

#include "common.h"

#ifdef __CUDACC__
#include <cuda_fp16.h> /* device code converts f16 with the hardware's cvt (same rounding) */
#endif

static TN_HD uint32_t tn_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static TN_HD float tn_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static TN_HD float tn_half_to_float(uint16_t h) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h)); /* exact, as below (a NaN's payload may differ) */
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1fu) return tn_bits_f32(sign | 0x7f800000u | (mant << 13)); /* inf / nan */
    if (exp == 0) {
        if (mant == 0) return tn_bits_f32(sign);
        /* subnormal: value = mant * 2^-24 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return tn_bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
#endif
}

static TN_HD uint16_t tn_float_to_half(float f) {
#ifdef __CUDA_ARCH__
    return __half_as_ushort(__float2half_rn(f)); /* round to nearest even, as below (NaN stays NaN) */
#else
    uint32_t u = tn_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (a < 0x38800000u) { /* below the smallest normal half 2^-14: subnormal or zero */
        if (a < 0x33000000u) return sign; /* < 2^-25 rounds to zero */
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = a - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
#endif
}

static TN_HD float tn_bf16_to_float(uint16_t h) { return tn_bits_f32((uint32_t)h << 16); }

static TN_HD uint16_t tn_float_to_bf16(float f) {
    uint32_t u = tn_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet nan */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif /* TERN_KERNELS_HALF_H */
