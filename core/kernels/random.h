/*
 * kernels/random.h — one element of tern's random fills (tn_rand, tn_randn, tn_randint,
 * tn_bernoulli) from the global generator's (seed, counter): the same function runs in the CPU
 * loop of core/random.c and in the kernel of cuda/random.cu, so both devices store the same
 * bits. The stream layout and the transforms are documented in kernels/philox.h.
 */
#ifndef TERN_KERNELS_RANDOM_H
#define TERN_KERNELS_RANDOM_H

#include <math.h>

#include "common.h"
#include "copy.h"   /* tn_elem_store_f64, tn_rn_* */
#include "half.h"
#include "philox.h"

typedef enum tn_rng_kind { TN_RNG_UNIFORM, TN_RNG_NORMAL, TN_RNG_INT, TN_RNG_BERNOULLI } tn_rng_kind;

/* What one call draws; passed by value to the CUDA kernel. */
typedef struct tn_rng_params {
    int32_t kind;    /* tn_rng_kind */
    int32_t dtype;   /* of the output */
    double a, b;     /* uniform: low, high; normal: mean, std; bernoulli: p */
    int64_t ilow;    /* randint: low */
    uint64_t irange; /* randint: high - low (> 0) */
} tn_rng_params;

/* Next representable value below a 16-bit float given as bits (f16 and bf16 alike: both are
 * sign-magnitude, so stepping the magnitude steps the value). */
static TN_HD uint16_t tn_rng_half_bits_below(uint16_t h) {
    if (h == 0x0000u) return 0x8001u; /* +0 -> smallest negative subnormal */
    if (h & 0x8000u) return (uint16_t)(h + 1u);
    return (uint16_t)(h - 1u);
}

/* Stores low + (high - low) * u rounded to dtype (a float dtype), kept strictly below high when
 * high > low. */
static TN_HD void tn_rng_store_uniform(char *p, int32_t dtype, double low, double high, const uint32_t w[4]) {
    switch (dtype) {
    case TN_F64: {
        double v = tn_rn_add(low, tn_rn_mul(tn_rn_sub(high, low), tn_philox_u53(w[0], w[1])));
        if (v >= high && high > low) v = nextafter(high, -HUGE_VAL);
        *(double *)p = v;
        break;
    }
    case TN_F32: {
        float v = (float)tn_rn_add(low, tn_rn_mul(tn_rn_sub(high, low), (double)tn_philox_u24(w[0])));
        while ((double)v >= high && high > low) v = nextafterf(v, -INFINITY);
        *(float *)p = v;
        break;
    }
    case TN_F16:
    case TN_BF16: {
        const float f = (float)tn_rn_add(low, tn_rn_mul(tn_rn_sub(high, low), (double)tn_philox_u24(w[0])));
        const int is16 = dtype == TN_F16;
        uint16_t h = is16 ? tn_float_to_half(f) : tn_float_to_bf16(f);
        for (int k = 0; k < 4 && high > low && (double)(is16 ? tn_half_to_float(h) : tn_bf16_to_float(h)) >= high; k++)
            h = tn_rng_half_bits_below(h);
        *(uint16_t *)p = h;
        break;
    }
    default: break;
    }
}

/* Element p of the output: the draw of counter ctr under seed. */
static TN_HD void tn_rng_gen(char *p, const tn_rng_params *g, uint64_t seed, uint64_t ctr) {
    uint32_t w[4];
    tn_philox_at(seed, ctr, w);
    switch (g->kind) {
    case TN_RNG_UNIFORM: tn_rng_store_uniform(p, g->dtype, g->a, g->b, w); break;
    case TN_RNG_NORMAL: tn_elem_store_f64(p, g->dtype, tn_rn_add(g->a, tn_rn_mul(g->b, tn_philox_normal(w)))); break;
    case TN_RNG_INT: {
        /* low + r mod range wraps in uint64 and lands in [low, high): exact in every dtype
         * whose range the caller checked */
        const int64_t v = (int64_t)((uint64_t)g->ilow + tn_philox_u64(w) % g->irange);
        switch (g->dtype) {
        case TN_I64: *(int64_t *)p = v; break;
        case TN_I32: *(int32_t *)p = (int32_t)v; break;
        case TN_U8: *(uint8_t *)p = (uint8_t)v; break;
        default: tn_elem_store_f64(p, g->dtype, (double)v); break;
        }
        break;
    }
    case TN_RNG_BERNOULLI: tn_elem_store_f64(p, g->dtype, tn_philox_u53(w[0], w[1]) < g->a ? 1.0 : 0.0); break;
    default: break;
    }
}

#endif /* TERN_KERNELS_RANDOM_H */
