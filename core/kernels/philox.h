/*
 * kernels/philox.h — Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as
 * 1, 2, 3", SC'11; Random123) and the per-element transforms of tern's random ops. Shared by
 * core/random.c and the CUDA kernels, so both backends draw the same numbers.
 *
 * Stream layout (the contract the tests and the CUDA backend rely on):
 *   key     = { seed & 0xffffffff, seed >> 32 }                    (64-bit seed)
 *   counter = { c & 0xffffffff, c >> 32, 0, 0 }  with c = offset + i (mod 2^64)
 * where offset is the global generator offset at the start of the call and i is the element's
 * index in the logical row-major order of the output (whatever its strides). Each element uses
 * its own counter's 4 output words w[0..3] and nothing else, and every call advances the
 * global offset by numel. So element i depends only on (seed, offset, i): never on the thread
 * count, the output's strides or the device. The default seed is TN_RNG_DEFAULT_SEED (0x5eed),
 * with offset 0.
 *
 * Per element (w = philox(counter, key)):
 *   uniform f32/f16/bf16: u = (w[0] >> 8) * 2^-24                       in [0, 1), 24 bits
 *   uniform f64:          u = (((w[1] << 32) | w[0]) >> 11) * 2^-53      in [0, 1), 53 bits
 *                         value = low + (high - low) * u, computed in f64, then rounded to
 *                         the dtype and moved one ulp down if rounding reached high.
 *   normal (any float):   u1 = ((((w[1] << 32) | w[0]) >> 11) + 1) * 2^-53  in (0, 1]
 *                         u2 = (((w[3] << 32) | w[2]) >> 11) * 2^-53        in [0, 1)
 *                         z = sqrt(-2 ln u1) cos(2 pi u2)  (Box-Muller, one normal per counter)
 *                         value = mean + std * z
 *   randint [low, high):  r = (w[1] << 32) | w[0]; value = low + r mod (high - low)
 *   bernoulli(p):         1 if u53 < p else 0, with u53 the f64 uniform above
 */
#ifndef TERN_KERNELS_PHILOX_H
#define TERN_KERNELS_PHILOX_H

#include <math.h>

#include "common.h"

#define TN_RNG_DEFAULT_SEED 0x5eedULL

#define TN_PHILOX_M0 0xD2511F53u
#define TN_PHILOX_M1 0xCD9E8D57u
#define TN_PHILOX_W0 0x9E3779B9u
#define TN_PHILOX_W1 0xBB67AE85u

/* out[0..3] = Philox-4x32-10(ctr[0..3], key[0..1]). */
static TN_HD void tn_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += TN_PHILOX_W0;
            k1 += TN_PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)TN_PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)TN_PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* The 4 words of tern's stream for 64-bit seed at 64-bit counter c (= offset + i). */
static TN_HD void tn_philox_at(uint64_t seed, uint64_t c, uint32_t w[4]) {
    uint32_t ctr[4] = {(uint32_t)c, (uint32_t)(c >> 32), 0u, 0u};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    tn_philox4x32_10(ctr, key, w);
}

/* [0, 1) with 24 random bits (exact in f32). */
static TN_HD float tn_philox_u24(uint32_t w) { return (float)(w >> 8) * 5.9604644775390625e-8f; }

/* [0, 1) with 53 random bits (exact in f64). */
static TN_HD double tn_philox_u53(uint32_t lo, uint32_t hi) {
    return (double)((((uint64_t)hi << 32) | lo) >> 11) * 1.1102230246251565404e-16;
}

/* A standard normal from the 4 words of one counter (Box-Muller, cosine branch). */
static TN_HD double tn_philox_normal(const uint32_t w[4]) {
    double u1 = ((double)((((uint64_t)w[1] << 32) | w[0]) >> 11) + 1.0) * 1.1102230246251565404e-16;
    double u2 = tn_philox_u53(w[2], w[3]);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
}

/* 64 random bits of one counter, for randint. */
static TN_HD uint64_t tn_philox_u64(const uint32_t w[4]) { return ((uint64_t)w[1] << 32) | w[0]; }

#endif /* TERN_KERNELS_PHILOX_H */
