/*
 * vmath.h — CPU-only vector math: an AVX2+FMA expf on 8 lanes and the f32 loops built on it
 * (elementwise exp in elementwise.c, the softmax row and column passes in softmax.c, the
 * logsumexp sum in reduce.c). x86-64 GCC/Clang only (TN_AVX2_BUILD); never
 * included by a .cu (the kernels/ headers hold the math shared with CUDA). Every function here is
 * compiled with __attribute__((target("avx2,fma"))); callers pick it at run time with
 * tn_cpu_has_avx2_fma() and keep the plain loops (kernels/elementwise.h tn_exp_f) otherwise.
 *
 * Also here: tn_vsigmoid8 / tn_vtanh8 (f32 sigmoid and tanh in elementwise.c) and the log_softmax
 * backward line of softmax.c, all on tn_vexp8.
 *
 * tn_vexp8: Cephes-style expf with FMA: n = rint(x log2 e), r = x - n ln2 (ln2 in two parts,
 * each step one FMA), exp(r) = 1 + r + r^2 P(r) (the degree-5 P of tn_exp_f), times 2^n built
 * in the exponent bits. Max error 1 ulp against glibc's expf over every f32 in [-104, 89]
 * (spec/c/test_elementwise.c checks <= 2 ulp on 1e8 spread inputs; TN_EXP_EXHAUSTIVE=1 there
 * runs all of them). Vectors with a lane outside [-87, 88] (or NaN) take a second, exact
 * scaling by 2^n1 2^n2 (n1 + n2 = n) so that overflow gives inf (x > 88.72), deep underflow
 * 0 and the subnormal range a single rounding; NaN in gives the NaN back, -inf 0, +inf inf.
 */
#ifndef TERN_VMATH_H
#define TERN_VMATH_H

#include "internal.h"

#ifdef TN_AVX2_BUILD
#include <immintrin.h>

#define TN_VMATH_AVX2 __attribute__((target("avx2,fma")))

TN_VMATH_AVX2 static inline __m256 tn_vexp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.0f), hi = _mm256_set1_ps(88.0f);
    /* all lanes ordered and in [-87, 88]: 2^n with n in [-126, 127] is one normal float */
    const int fast = _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ),
                                                      _mm256_cmp_ps(x, hi, _CMP_LE_OQ))) == 0xff;
    /* clamp (a NaN lane becomes -104 here and is put back at the end) */
    const __m256 xc = fast ? x : _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0f)), _mm256_set1_ps(88.8f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i ni = _mm256_cvtps_epi32(n), bias = _mm256_set1_epi32(127);
    if (fast) return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, bias), 23)));
    /* n in [-150, 128]: two factors, each a normal float */
    const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
    const __m256 e = _mm256_mul_ps(_mm256_mul_ps(y, s1), s2);
    return _mm256_blendv_ps(e, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

/* tn_vsigmoid8: 1 / (1 + exp(-x)) as n / (1 + z) with z = exp(-|x|) (never overflows) and n = 1
 * (x >= 0) or z (x < 0): one division, so the negative side is not z times a rounded 1 / (1 + z).
 * Saturates to exactly 1 (z below half an ulp of 1) and to the correctly rounded subnormal /
 * 0 for x < -87 (z itself); +-inf give 1 / 0, NaN gives NaN. */
TN_VMATH_AVX2 static inline __m256 tn_vsigmoid8(__m256 x) {
    const __m256 sgn = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 z = tn_vexp8(_mm256_or_ps(x, sgn)); /* exp(-|x|) */
    return _mm256_div_ps(_mm256_blendv_ps(one, z, x), _mm256_add_ps(one, z));
}

/* tn_vtanh8: the two branches of tn_tanh_f (kernels/elementwise.h): |x| < 0.625 the odd
 * polynomial x + x^3 P(x^2) with x's sign (no cancellation: tiny x gives x, -0 gives -0, where
 * tn_tanh_f gives +0), else
 * sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 0.29], exactly +-1 once e is below half an
 * ulp of 1 (|x| > ~9) and for +-inf; NaN takes the exp branch and comes back NaN. Both
 * branches are computed for every lane and blended (branch-free: a per-vector test mispredicts
 * on mixed data). */
TN_VMATH_AVX2 static inline __m256 tn_vtanh8(__m256 x) {
    const __m256 sgn = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    const __m256 ax = _mm256_andnot_ps(sgn, x);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    /* |result| from either branch, then x's sign (also on the polynomial: fma(-0, -0, -0) is +0) */
    const __m256 ys = _mm256_andnot_ps(sgn, _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x));
    const __m256 e = tn_vexp8(_mm256_mul_ps(ax, _mm256_set1_ps(-2.0f)));
    const __m256 yl = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    const __m256 y = _mm256_blendv_ps(yl, ys, _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ));
    return _mm256_or_ps(y, _mm256_and_ps(x, sgn));
}

/* Lane mask of the first k (0..8) lanes. */
TN_VMATH_AVX2 static inline __m256i tn_vmask8(int64_t k) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* tn_v<f>_f32_contig(y, x, n): y[i] = f(x[i]) for i < n, x and y contiguous (y may be x), for f =
 * exp, sigmoid, tanh. */
#define TN_VMAP_CONTIG(name, F8)                                                               \
    TN_VMATH_AVX2 static inline void name(float *y, const float *x, int64_t n) {               \
        int64_t i = 0;                                                                         \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, F8(_mm256_loadu_ps(x + i)));        \
        if (i < n) {                                                                           \
            const __m256i m = tn_vmask8(n - i);                                                \
            _mm256_maskstore_ps(y + i, m, F8(_mm256_maskload_ps(x + i, m)));                   \
        }                                                                                      \
    }
TN_VMAP_CONTIG(tn_vexp_f32_contig, tn_vexp8)
TN_VMAP_CONTIG(tn_vsigmoid_f32_contig, tn_vsigmoid8)
TN_VMAP_CONTIG(tn_vtanh_f32_contig, tn_vtanh8)

/* y[i sy] = f(x[i sx]) for i < n (element strides, any sign, 0 allowed for x) with f one of the
 * contig functions above: contiguous runs directly, others through a stack buffer so every
 * element gets the same vector result. */
TN_VMATH_AVX2 static inline void tn_vmap_f32_avx2(void (*contig)(float *, const float *, int64_t), float *y,
                                                  int64_t sy, const float *x, int64_t sx, int64_t n) {
    if (sy == 1 && sx == 1) {
        contig(y, x, n);
        return;
    }
    float buf[256];
    for (int64_t i0 = 0; i0 < n; i0 += 256) {
        const int64_t m = n - i0 < 256 ? n - i0 : 256;
        for (int64_t i = 0; i < m; i++) buf[i] = x[(i0 + i) * sx];
        contig(buf, buf, m);
        for (int64_t i = 0; i < m; i++) y[(i0 + i) * sy] = buf[i];
    }
}

/* Horizontal sum of the 8 lanes. */
TN_VMATH_AVX2 static inline float tn_vhsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* NaN-propagating max of x[0..n), n >= 1 (a NaN anywhere gives NaN; -inf for an all -inf row). */
TN_VMATH_AVX2 static inline float tn_vmax_f32(const float *x, int64_t n) {
    __m256 m = _mm256_set1_ps(-INFINITY), bad = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        m = _mm256_max_ps(m, v);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    float r = -INFINITY;
    int nan = _mm256_movemask_ps(bad) != 0;
    for (; i < n; i++) {
        nan |= x[i] != x[i];
        r = x[i] > r ? x[i] : r;
    }
    if (nan) return NAN;
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float v = _mm_cvtss_f32(h);
    return v > r ? v : r;
}

/* Sum of exp(x[i] - m) over i < n; the terms are stored to y[i] when y is not NULL. */
TN_VMATH_AVX2 static inline float tn_vexp_sub_sum_f32(float *y, const float *x, float m, int64_t n) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 e0 = tn_vexp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        const __m256 e1 = tn_vexp8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm));
        if (y) {
            _mm256_storeu_ps(y + i, e0);
            _mm256_storeu_ps(y + i + 8, e1);
        }
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    for (; i < n; i += 8) {
        const __m256i k = tn_vmask8(n - i);
        const __m256 e = tn_vexp8(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), vm));
        if (y) _mm256_maskstore_ps(y + i, k, e);
        s0 = _mm256_add_ps(s0, _mm256_and_ps(e, _mm256_castsi256_ps(k)));
    }
    return tn_vhsum8(_mm256_add_ps(s0, s1));
}

/* e = exp(x[j] - m[j]), s[j] += e, and y[j] = e when y is not NULL, for j < n (the column
 * pass of softmax). */
TN_VMATH_AVX2 static inline void tn_vexp_sub_acc_f32(float *y, const float *x, const float *m, float *s, int64_t n) {
    for (int64_t j = 0; j < n; j += 8) {
        const __m256i k = tn_vmask8(n - j);
        const __m256 e = tn_vexp8(_mm256_sub_ps(_mm256_maskload_ps(x + j, k), _mm256_maskload_ps(m + j, k)));
        if (y) _mm256_maskstore_ps(y + j, k, e);
        _mm256_maskstore_ps(s + j, k, _mm256_add_ps(_mm256_maskload_ps(s + j, k), e));
    }
}

/* gi[j] = g[j] - exp(y[j]) s (s = sv[0]) or s = sv[j] (s_vec), for j < n: the log_softmax
 * backward (one FMA after the exp); gi may be g or y. */
TN_VMATH_AVX2 static inline void tn_vlog_softmax_bwd_f32(float *gi, const float *g, const float *y, const float *sv,
                                                         int s_vec, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 s = s_vec ? _mm256_loadu_ps(sv + j) : _mm256_broadcast_ss(sv);
        _mm256_storeu_ps(gi + j, _mm256_fnmadd_ps(tn_vexp8(_mm256_loadu_ps(y + j)), s, _mm256_loadu_ps(g + j)));
    }
    if (j < n) {
        const __m256i k = tn_vmask8(n - j);
        const __m256 s = s_vec ? _mm256_maskload_ps(sv + j, k) : _mm256_broadcast_ss(sv);
        _mm256_maskstore_ps(gi + j, k, _mm256_fnmadd_ps(tn_vexp8(_mm256_maskload_ps(y + j, k)), s, _mm256_maskload_ps(g + j, k)));
    }
}

#endif /* TN_AVX2_BUILD */
#endif /* TERN_VMATH_H */
