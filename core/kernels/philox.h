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
 *                         value = mean + std * z, in f64, then rounded to the dtype
 *                         ln and cos are tern's own (tn_philox_log, tn_philox_cos_2pi below:
 *                         fdlibm's polynomials, < 1 ulp), not the C library's or CUDA's, and
 *                         every f64 product and sum is rounded on its own (tn_rn_*: no fma), so
 *                         the CPU and the GPU give the same bits.
 *   randint [low, high):  r = (w[1] << 32) | w[0]; value = low + r mod (high - low)
 *   bernoulli(p):         1 if u53 < p else 0, with u53 the f64 uniform above
 */
#ifndef TERN_KERNELS_PHILOX_H
#define TERN_KERNELS_PHILOX_H

#include <math.h>

#include "common.h"
#include "copy.h" /* tn_rn_add, tn_rn_sub, tn_rn_mul */

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

static TN_HD uint64_t tn_philox_f64_bits(double d) { uint64_t u; memcpy(&u, &d, 8); return u; }
static TN_HD double tn_philox_bits_f64(uint64_t u) { double d; memcpy(&d, &u, 8); return d; }

/* ln x for a positive normal double x (fdlibm e_log.c: x = 2^k (1 + f), ln(1 + f) from
 * s = f / (2 + f) and a degree-14 polynomial in s; error < 1 ulp). Each operation is rounded on
 * its own (tn_rn_*), so every device gets the same bits. */
static TN_HD double tn_philox_log(double x) {
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                 Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                 Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                 Lg7 = 1.479819860511658591e-01;
    const uint64_t bits = tn_philox_f64_bits(x);
    int32_t hx = (int32_t)(bits >> 32);
    const uint32_t lx = (uint32_t)bits;
    int32_t k = (hx >> 20) - 1023;
    hx &= 0x000fffff;
    int32_t i = (hx + 0x95f64) & 0x100000;
    /* x or x / 2, normalised into [sqrt(2)/2, sqrt(2)) */
    x = tn_philox_bits_f64(((uint64_t)(uint32_t)(hx | (i ^ 0x3ff00000)) << 32) | lx);
    k += i >> 20;
    const double f = tn_rn_sub(x, 1.0), dk = (double)k;
    if ((0x000fffff & (2 + hx)) < 3) { /* |f| < 2^-20 */
        if (f == 0.0) return k == 0 ? 0.0 : tn_rn_add(tn_rn_mul(dk, ln2_hi), tn_rn_mul(dk, ln2_lo));
        const double R = tn_rn_mul(tn_rn_mul(f, f), tn_rn_sub(0.5, tn_rn_mul(0.33333333333333333, f)));
        if (k == 0) return tn_rn_sub(f, R);
        return tn_rn_sub(tn_rn_mul(dk, ln2_hi), tn_rn_sub(tn_rn_sub(R, tn_rn_mul(dk, ln2_lo)), f));
    }
    const double s = f / tn_rn_add(2.0, f);
    const double z = tn_rn_mul(s, s), w = tn_rn_mul(z, z);
    const int32_t j = 0x6b851 - hx;
    i = hx - 0x6147a;
    const double t1 = tn_rn_mul(w, tn_rn_add(Lg2, tn_rn_mul(w, tn_rn_add(Lg4, tn_rn_mul(w, Lg6)))));
    const double t2 = tn_rn_mul(z, tn_rn_add(Lg1, tn_rn_mul(w, tn_rn_add(Lg3, tn_rn_mul(w, tn_rn_add(Lg5, tn_rn_mul(w, Lg7)))))));
    const double R = tn_rn_add(t2, t1);
    if ((i | j) > 0) {
        const double hfsq = tn_rn_mul(tn_rn_mul(0.5, f), f);
        const double sr = tn_rn_mul(s, tn_rn_add(hfsq, R));
        if (k == 0) return tn_rn_sub(f, tn_rn_sub(hfsq, sr));
        return tn_rn_sub(tn_rn_mul(dk, ln2_hi), tn_rn_sub(tn_rn_sub(hfsq, tn_rn_add(sr, tn_rn_mul(dk, ln2_lo))), f));
    }
    const double sr = tn_rn_mul(s, tn_rn_sub(f, R));
    if (k == 0) return tn_rn_sub(f, sr);
    return tn_rn_sub(tn_rn_mul(dk, ln2_hi), tn_rn_sub(tn_rn_sub(sr, tn_rn_mul(dk, ln2_lo)), f));
}

/* sin y and cos y for |y| <= pi/4 (fdlibm k_sin.c / k_cos.c with no tail; error < 1 ulp). */
static TN_HD double tn_philox_ksin(double y) {
    const double S1 = -1.66666666666666324348e-01, S2 = 8.33333333332248946124e-03,
                 S3 = -1.98412698298579493134e-04, S4 = 2.75573137070700676789e-06,
                 S5 = -2.50507602534068634195e-08, S6 = 1.58969099521155010221e-10;
    const double z = tn_rn_mul(y, y), v = tn_rn_mul(z, y);
    const double r = tn_rn_add(S2, tn_rn_mul(z, tn_rn_add(S3, tn_rn_mul(z, tn_rn_add(S4, tn_rn_mul(z, tn_rn_add(S5, tn_rn_mul(z, S6))))))));
    return tn_rn_add(y, tn_rn_mul(v, tn_rn_add(S1, tn_rn_mul(z, r))));
}
static TN_HD double tn_philox_kcos(double y) {
    const double C1 = 4.16666666666666019037e-02, C2 = -1.38888888888741095749e-03,
                 C3 = 2.48015872894767294178e-05, C4 = -2.75573143513906633035e-07,
                 C5 = 2.08757232129817482790e-09, C6 = -1.13596475577881948265e-11;
    const uint32_t ix = (uint32_t)(tn_philox_f64_bits(y) >> 32) & 0x7fffffffu;
    if (ix < 0x3e400000u) return 1.0; /* |y| < 2^-27 */
    const double z = tn_rn_mul(y, y);
    const double r = tn_rn_mul(z, tn_rn_add(C1, tn_rn_mul(z, tn_rn_add(C2, tn_rn_mul(z, tn_rn_add(C3, tn_rn_mul(z, tn_rn_add(C4, tn_rn_mul(z, tn_rn_add(C5, tn_rn_mul(z, C6)))))))))));
    const double zr = tn_rn_mul(z, r), hz0 = tn_rn_mul(0.5, z);
    if (ix < 0x3fd33333u) return tn_rn_sub(1.0, tn_rn_sub(hz0, zr)); /* |y| < 0.3 */
    const double qx = ix > 0x3fe90000u ? 0.28125 : tn_philox_bits_f64((uint64_t)(ix - 0x00200000u) << 32); /* ~|y| / 4 */
    return tn_rn_sub(tn_rn_sub(1.0, qx), tn_rn_sub(tn_rn_sub(hz0, qx), zr));
}

/* cos(2 pi u) for u = m 2^-53, 0 <= m < 2^53 (u from tn_philox_u53). The reduction to a
 * quarter turn is exact on m: m = q 2^51 + r with |r| <= 2^50, angle r 2^-53 2 pi, |.| <= pi/4. */
static TN_HD double tn_philox_cos_2pi(uint64_t m) {
    const uint64_t q = (m + ((uint64_t)1 << 50)) >> 51;                  /* 0..4 quarter turns */
    const double r = (double)((int64_t)m - (int64_t)(q << 51));          /* exact */
    const double y = tn_rn_mul(r, 0x1.921fb54442d18p-51); /* 2 pi 2^-53 (2 pi rounded) */
    switch (q & 3) {
    case 0: return tn_philox_kcos(y);
    case 1: return -tn_philox_ksin(y);
    case 2: return -tn_philox_kcos(y);
    default: return tn_philox_ksin(y);
    }
}

/* A standard normal from the 4 words of one counter (Box-Muller, cosine branch). */
static TN_HD double tn_philox_normal(const uint32_t w[4]) {
    double u1 = ((double)((((uint64_t)w[1] << 32) | w[0]) >> 11) + 1.0) * 1.1102230246251565404e-16;
    return tn_rn_mul(sqrt(-2.0 * tn_philox_log(u1)), tn_philox_cos_2pi((((uint64_t)w[3] << 32) | w[2]) >> 11));
}

/* 64 random bits of one counter, for randint. */
static TN_HD uint64_t tn_philox_u64(const uint32_t w[4]) { return ((uint64_t)w[1] << 32) | w[0]; }

#endif /* TERN_KERNELS_PHILOX_H */
