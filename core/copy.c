/*
 * copy.c — tn_copy, tn_fill, tn_to_dtype, tn_arange: argument checks, the CPU loops, and the
 * dispatch of CUDA tensors to cuda/copy.cu (copies between the CPU and CUDA included).
 *
 * Gradient policy: none here (copies and conversions are identity or casts for the autograd,
 * which handles them in Lua). Ownership: tn_copy and tn_fill write into the caller's dst;
 * tn_to_dtype and tn_arange store a new reference in *out.
 *
 * Conversions: float -> integer truncates toward zero and saturates (NaN -> 0); integer ->
 * integer saturates without passing through double (i64 stays exact); float -> f16/bf16
 * rounds to nearest even (f64 -> f16 goes through f32, a double rounding in rare ties).
 * The per-element conversions and arange's values are kernels/copy.h, shared with the GPU.
 * Fast paths: same-dtype contiguous -> memcpy (split across threads when big); f32 <-> f16,
 * bf16, f64 typed loops; transposes into a contiguous dst tiled (copy_tiled); everything else a
 * strided loop over tn_iter.
 *
 * Devices: CUDA tensors run the same checks and the same tn_iter here, then cuda/copy.cu.
 * tn_copy between the CPU and CUDA (builds with CUDA) moves the bytes once, contiguous and in
 * one dtype (copy_across): broadcasting, strides and conversions happen on the device, a
 * non-contiguous CPU side goes through a contiguous CPU temporary. Device -> host returns once
 * the host memory holds the values; host -> device may return before the device is done.
 */
#include <stdlib.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "internal.h"
#include "iter.h"
#include "kernels/copy.h"

#ifdef TERN_HAVE_CUDA
/* cuda/copy.cu; every call queues its work on the current stream (tn_cuda_stream_now). */
/* Device -> device over a finished iterator: operand 0 dst (dst_dtype), operand 1 src
 * (src_dtype), both CUDA memory that does not overlap (or the same view), src converted as on
 * the CPU. */
tn_status tn_cuda_copy_iter(const tn_iter *it, int32_t dst_dtype, int32_t src_dtype);
/* nbytes from pageable host memory src to device memory dst through pinned buffers; src may be
 * reused at once, the device may still be copying. */
tn_status tn_cuda_copy_h2d(void *dst, const void *src, size_t nbytes);
/* nbytes from device memory src to pageable host memory dst; returns when dst holds them. */
tn_status tn_cuda_copy_d2h(void *dst, const void *src, size_t nbytes);
/* Every element of operand 0 of the finished iterator (CUDA memory, elsize 1, 2, 4 or 8 bytes)
 * = the elsize low bytes of bits. */
tn_status tn_cuda_fill(const tn_iter *it, uint64_t bits, int32_t elsize);
/* data[i] = element i of arange for i < n (data: CUDA memory, n elements of dtype): exact_int
 * ? istart + i * istep saturated : start + i * step rounded to dtype, as arange_kernel. */
tn_status tn_cuda_arange(void *data, int64_t n, int32_t dtype, double start, double step, int64_t istart,
                         int64_t istep, int32_t exact_int);
#endif

/* ---- element conversion kernels (tn_iter_fn; operand 0 = dst, 1 = src) ------------------- */

typedef struct conv_ctx {
    int32_t dst, src; /* dtypes */
} conv_ctx;

/* Typed conversion loop: contiguous branch vectorises, strided branch is general. */
#define CONV_KERNEL(name, TD, TS, EXPR)                                                       \
    static void name(void *ctx, char **p, const int64_t *s, int64_t n) {                      \
        (void)ctx;                                                                             \
        TD *d = (TD *)p[0];                                                                    \
        const TS *x = (const TS *)p[1];                                                        \
        if (s[0] == 1 && s[1] == 1) {                                                          \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) { TS v = x[i]; d[i] = (EXPR); } \
        } else {                                                                               \
            const int64_t sd = s[0], sx = s[1];                                                \
            for (int64_t i = 0; i < n; i++) { TS v = x[i * sx]; d[i * sd] = (EXPR); }          \
        }                                                                                      \
    }

CONV_KERNEL(conv_f32_f16, float, uint16_t, tn_half_to_float(v))
CONV_KERNEL(conv_f32_bf16, float, uint16_t, tn_bf16_to_float(v))
CONV_KERNEL(conv_f16_f32, uint16_t, float, tn_float_to_half(v))
CONV_KERNEL(conv_bf16_f32, uint16_t, float, tn_float_to_bf16(v))
CONV_KERNEL(conv_f32_f64, float, double, (float)v)
CONV_KERNEL(conv_f64_f32, double, float, (double)v)
CONV_KERNEL(conv_f32_i32, float, int32_t, (float)v)
CONV_KERNEL(conv_f32_u8, float, uint8_t, (float)v)
CONV_KERNEL(conv_i64_i32, int64_t, int32_t, (int64_t)v)
CONV_KERNEL(conv_i32_i64, int32_t, int64_t, tn_sat_i64_i32(v))
CONV_KERNEL(copy_1, uint8_t, uint8_t, v)
CONV_KERNEL(copy_2, uint16_t, uint16_t, v)
CONV_KERNEL(copy_4, uint32_t, uint32_t, v)
CONV_KERNEL(copy_8, uint64_t, uint64_t, v)

/* Same dtype: memcpy for a contiguous run, else a strided loop by element size. */
static void copy_same(void *ctx, char **p, const int64_t *s, int64_t n) {
    size_t es = tn_dtype_size(((const conv_ctx *)ctx)->dst);
    if (s[0] == 1 && s[1] == 1) {
        memcpy(p[0], p[1], (size_t)n * es);
        return;
    }
    switch (es) {
    case 1: copy_1(ctx, p, s, n); break;
    case 2: copy_2(ctx, p, s, n); break;
    case 4: copy_4(ctx, p, s, n); break;
    default: copy_8(ctx, p, s, n); break;
    }
}

/* Any dtype pair, one element at a time. */
static void conv_generic(void *ctx, char **p, const int64_t *s, int64_t n) {
    const conv_ctx *c = (const conv_ctx *)ctx;
    const int64_t bd = s[0] * (int64_t)tn_dtype_size(c->dst), bs = s[1] * (int64_t)tn_dtype_size(c->src);
    char *d = p[0];
    const char *x = p[1];
    if (tn_is_int_dtype(c->src)) {
        for (int64_t i = 0; i < n; i++) tn_elem_store_i64(d + i * bd, c->dst, tn_elem_load_i64(x + i * bs, c->src));
    } else {
        for (int64_t i = 0; i < n; i++) tn_elem_store_f64(d + i * bd, c->dst, tn_elem_load_f64(x + i * bs, c->src));
    }
}

static tn_iter_fn conv_pick(int32_t dst, int32_t src) {
    if (dst == src) return copy_same;
#define PAIR(D, S, fn) if (dst == D && src == S) return fn;
    PAIR(TN_F32, TN_F16, conv_f32_f16)
    PAIR(TN_F32, TN_BF16, conv_f32_bf16)
    PAIR(TN_F16, TN_F32, conv_f16_f32)
    PAIR(TN_BF16, TN_F32, conv_bf16_f32)
    PAIR(TN_F32, TN_F64, conv_f32_f64)
    PAIR(TN_F64, TN_F32, conv_f64_f32)
    PAIR(TN_F32, TN_I32, conv_f32_i32)
    PAIR(TN_F32, TN_U8, conv_f32_u8)
    PAIR(TN_I64, TN_I32, conv_i64_i32)
    PAIR(TN_I32, TN_I64, conv_i32_i64)
#undef PAIR
    return conv_generic;
}

/* ---- tiled transposes ---------------------------------------------------------------------
 * A copy into a contiguous dst whose src is contiguous along another dim than dst's innermost
 * one (x:t(), the last two dims of (B, T, C) -> (B, C, T)): the strided loop walks dst's rows
 * reading src a row apart per element, one cache line and often one TLB entry per element. The
 * tiled path copies blocks of TILE_I x TILE_J elements of those two dims (a: dst's stride 1, b:
 * src's stride 1), for every index of the other dims; a thread takes all of a for one block of b
 * (TILE_J dst rows, written as TILE_J streams). One dtype moves the bits (SIMD sub-blocks); a
 * conversion moves a block of src into a buffer laid out as dst, then runs the conversion kernel
 * on contiguous rows. Every element is written once from its own src element through the same
 * per-element expression, so the result is the strided loop's bit for bit; dst is contiguous, so
 * no element is written twice and the order of the writes does not matter. Sub-blocks: SSE2 for
 * 1 and 2 bytes, AVX for 4 and 8 where tn_cpu_has_avx2_fma(), else scalar. TILE_I 64, TILE_J 256
 * measured best of 32-512 on the 4096^2 transposes of every element size (2-core EPYC, 1 thread:
 * f32 8.3 ms against the strided loop's 122 ms and torch's 19 ms). */

enum { TILE_I = 64, TILE_J = 256, TILE_CONV_J = 32, TILE_MIN_DIM = 8, TILE_MIN_NUMEL = 4096 };

/* A block of one element size: d[i + j * dsb] = s[i * ssa + j] for i < ni, j < nj (strides in
 * elements). */
typedef void (*tile_fn)(char *d, const char *s, int64_t dsb, int64_t ssa, int64_t ni, int64_t nj);

#define TILE_SCALAR(name, T)                                                                  \
    static void name(char *d_, const char *s_, int64_t dsb, int64_t ssa, int64_t ni, int64_t nj) { \
        T *d = (T *)d_;                                                                        \
        const T *s = (const T *)s_;                                                            \
        for (int64_t j = 0; j < nj; j++)                                                       \
            for (int64_t i = 0; i < ni; i++) d[j * dsb + i] = s[i * ssa + j];                  \
    }
TILE_SCALAR(tile_1_scalar, uint8_t)
TILE_SCALAR(tile_2_scalar, uint16_t)
TILE_SCALAR(tile_4_scalar, uint32_t)
TILE_SCALAR(tile_8_scalar, uint64_t)

/* The parts of a block outside its (ni0, nj0) corner of whole sub-blocks, by the scalar kernel. */
static void tile_rims(tile_fn scalar, size_t es, char *d, const char *s, int64_t dsb, int64_t ssa, int64_t ni,
                      int64_t nj, int64_t ni0, int64_t nj0) {
    const int64_t e = (int64_t)es;
    if (ni0 < ni) scalar(d + ni0 * e, s + ni0 * ssa * e, dsb, ssa, ni - ni0, nj0);
    if (nj0 < nj) scalar(d + nj0 * dsb * e, s + nj0 * e, dsb, ssa, ni, nj - nj0);
}

/* A block kernel (tile_fn) from sub(o, q, dsb, ssa), which transposes the B x B sub-block at
 * src q into dst o, and the scalar kernel for the rims; ATTR: a target attribute, or nothing. */
#if defined(__GNUC__)
#define TILE_SUB static inline __attribute__((always_inline)) /* the sub-block in the loop */
#else
#define TILE_SUB static inline
#endif
#define TILE_SIMD(name, T, B, ATTR, sub, scalar)                                              \
    ATTR static void name(char *d_, const char *s_, int64_t dsb, int64_t ssa, int64_t ni, int64_t nj) { \
        T *d = (T *)d_;                                                                        \
        const T *s = (const T *)s_;                                                            \
        const int64_t ni0 = ni & ~(int64_t)(B - 1), nj0 = nj & ~(int64_t)(B - 1);              \
        for (int64_t j = 0; j < nj0; j += B)                                                   \
            for (int64_t i = 0; i < ni0; i += B) sub(d + j * dsb + i, s + i * ssa + j, dsb, ssa); \
        tile_rims(scalar, sizeof(T), d_, s_, dsb, ssa, ni, nj, ni0, nj0);                     \
    }

#if defined(__SSE2__)
/* 1 byte, 16 x 16 (SSE2, baseline x86-64). Each round interleaves row k with row k + 8, which
 * rotates the 8-bit (row, column) index of every byte left by one bit: four rounds swap row
 * and column. */
TILE_SUB void sub_1(uint8_t *o, const uint8_t *q, int64_t dsb, int64_t ssa) {
    __m128i r[16], t[16];
    for (int k = 0; k < 16; k++) r[k] = _mm_loadu_si128((const __m128i *)(q + k * ssa));
    for (int round = 0; round < 4; round++) {
        for (int k = 0; k < 8; k++) {
            t[2 * k] = _mm_unpacklo_epi8(r[k], r[k + 8]);
            t[2 * k + 1] = _mm_unpackhi_epi8(r[k], r[k + 8]);
        }
        for (int k = 0; k < 16; k++) r[k] = t[k];
    }
    for (int k = 0; k < 16; k++) _mm_storeu_si128((__m128i *)(o + k * dsb), r[k]);
}
TILE_SIMD(tile_1, uint8_t, 16, , sub_1, tile_1_scalar)

/* 2 bytes, 8 x 8 (SSE2). */
TILE_SUB void sub_2(uint16_t *o, const uint16_t *q, int64_t dsb, int64_t ssa) {
    __m128i r[8], a[8], b[8];
    for (int k = 0; k < 8; k++) r[k] = _mm_loadu_si128((const __m128i *)(q + k * ssa));
    for (int k = 0; k < 8; k += 2) {
        a[k / 2] = _mm_unpacklo_epi16(r[k], r[k + 1]);
        a[k / 2 + 4] = _mm_unpackhi_epi16(r[k], r[k + 1]);
    }
    /* a[0..3]: columns 0-3 of row pairs (0,1)..(6,7); a[4..7]: columns 4-7 */
    for (int h = 0; h < 8; h += 4) {
        b[h] = _mm_unpacklo_epi32(a[h], a[h + 1]);
        b[h + 1] = _mm_unpackhi_epi32(a[h], a[h + 1]);
        b[h + 2] = _mm_unpacklo_epi32(a[h + 2], a[h + 3]);
        b[h + 3] = _mm_unpackhi_epi32(a[h + 2], a[h + 3]);
    }
    /* b[h + 0/1]: columns (h, h+1) / (h+2, h+3) of rows 0-3; b[h + 2/3]: the same of rows 4-7 */
    for (int h = 0; h < 8; h += 4)
        for (int k = 0; k < 2; k++) {
            _mm_storeu_si128((__m128i *)(o + (h + 2 * k) * dsb), _mm_unpacklo_epi64(b[h + k], b[h + k + 2]));
            _mm_storeu_si128((__m128i *)(o + (h + 2 * k + 1) * dsb), _mm_unpackhi_epi64(b[h + k], b[h + k + 2]));
        }
}
TILE_SIMD(tile_2, uint16_t, 8, , sub_2, tile_2_scalar)
#else
#define tile_1 tile_1_scalar
#define tile_2 tile_2_scalar
#endif

#ifdef TN_AVX2_BUILD
#define TILE_AVX2 __attribute__((target("avx2,fma")))
/* 4 bytes, 8 x 8 through AVX shuffles (bit moves: NaN payloads and integers kept). */
TILE_AVX2 TILE_SUB void sub_4(float *o, const float *q, int64_t dsb, int64_t ssa) {
    __m256 r[8], t[8], u[8];
    for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(q + k * ssa);
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
        u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
        u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
    }
    /* u[k], k < 4: columns k and k + 4 of rows 0-3 (by 128-bit lane); u[k + 4]: rows 4-7 */
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_ps(o + k * dsb, _mm256_permute2f128_ps(u[k], u[k + 4], 0x20));
        _mm256_storeu_ps(o + (k + 4) * dsb, _mm256_permute2f128_ps(u[k], u[k + 4], 0x31));
    }
}
TILE_SIMD(tile_4_avx2, float, 8, TILE_AVX2, sub_4, tile_4_scalar)

/* 8 bytes, 4 x 4. */
TILE_AVX2 TILE_SUB void sub_8(double *o, const double *q, int64_t dsb, int64_t ssa) {
    __m256d r0 = _mm256_loadu_pd(q), r1 = _mm256_loadu_pd(q + ssa), r2 = _mm256_loadu_pd(q + 2 * ssa),
            r3 = _mm256_loadu_pd(q + 3 * ssa);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(o, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(o + dsb, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(o + 2 * dsb, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(o + 3 * dsb, _mm256_permute2f128_pd(t1, t3, 0x31));
}
TILE_SIMD(tile_8_avx2, double, 4, TILE_AVX2, sub_8, tile_8_scalar)
#endif

static tile_fn tile_pick(size_t es) {
    switch (es) {
    case 1: return tile_1;
    case 2: return tile_2;
#ifdef TN_AVX2_BUILD
    case 4: return tn_cpu_has_avx2_fma() ? tile_4_avx2 : tile_4_scalar;
    case 8: return tn_cpu_has_avx2_fma() ? tile_8_avx2 : tile_8_scalar;
#else
    case 4: return tile_4_scalar;
    case 8: return tile_8_scalar;
#endif
    default: return NULL;
    }
}

typedef struct tile_plan {
    const tn_iter *it;
    int32_t b;            /* the iterator dim along which src's stride is 1 (a is dim 0) */
    int64_t tj, nbb;      /* block size along b (TILE_J or less), blocks along b */
    tile_fn move;         /* the block kernel of src's element size */
    tn_iter_fn conv;      /* a conversion: its kernel, run on contiguous rows; else NULL */
    conv_ctx *ctx;
} tile_plan;

/* Work item w: outer index w / nbb (every dim but 0 and b), block w % nbb along b, all of a. */
static void tile_item(const tile_plan *pl, int64_t w) {
    const tn_iter *it = pl->it;
    const int32_t b = pl->b;
    const int64_t na = it->shape[0], nb = it->shape[b];
    int64_t o = w / pl->nbb, j0 = (w % pl->nbb) * pl->tj;
    int64_t offd = j0 * it->stride[0][b], offs = j0 * it->stride[1][b];
    for (int32_t dim = 1; dim < it->ndim; dim++) {
        if (dim == b) continue;
        const int64_t idx = o % it->shape[dim];
        o /= it->shape[dim];
        offd += idx * it->stride[0][dim];
        offs += idx * it->stride[1][dim];
    }
    const int64_t esd = it->elsize[0], ess = it->elsize[1];
    const int64_t dsb = it->stride[0][b], ssa = it->stride[1][0];
    const int64_t nj = nb - j0 < pl->tj ? nb - j0 : pl->tj;
    char *d = it->data[0] + offd * esd;
    const char *s = it->data[1] + offs * ess;
    for (int64_t i0 = 0; i0 < na; i0 += TILE_I) {
        const int64_t ni = na - i0 < TILE_I ? na - i0 : TILE_I;
        char *dt = d + i0 * esd;
        const char *st = s + i0 * ssa * ess;
        if (!pl->conv) {
            pl->move(dt, st, dsb, ssa, ni, nj);
            continue;
        }
        uint64_t buf[TILE_I * TILE_CONV_J]; /* src elements of TILE_CONV_J dst rows, TILE_I apart */
        const int64_t str[2] = {1, 1};
        for (int64_t jc = 0; jc < nj; jc += TILE_CONV_J) {
            const int64_t nc = nj - jc < TILE_CONV_J ? nj - jc : TILE_CONV_J;
            pl->move((char *)buf, st + jc * ess, TILE_I, ssa, ni, nc);
            for (int64_t j = 0; j < nc; j++) {
                char *p[2] = {dt + (jc + j) * dsb * esd, (char *)buf + j * TILE_I * ess};
                pl->conv(pl->ctx, p, str, ni);
            }
        }
    }
}

/* Runs the copy over the finished iterator (operand 0 dst, contiguous; 1 src) tiled when it is
 * such a transpose; returns 0 (nothing done) when it is not. */
static int copy_tiled(const tn_iter *it, conv_ctx *c, int64_t par) {
    if (it->ndim < 2 || it->numel < TILE_MIN_NUMEL || it->stride[0][0] != 1 || it->shape[0] < TILE_MIN_DIM)
        return 0;
    int32_t b = 0;
    for (int32_t dim = 1; dim < it->ndim && !b; dim++)
        if (it->stride[1][dim] == 1 && it->shape[dim] >= TILE_MIN_DIM) b = dim;
    if (!b) return 0;
    tile_plan pl = {it, b, TILE_J, 0, tile_pick((size_t)it->elsize[1]), NULL, c};
    if (c->dst != c->src) pl.conv = conv_pick(c->dst, c->src);
    if (!pl.move) return 0;
    const int64_t outer = it->numel / (it->shape[0] * it->shape[b]);
    /* one dtype: a tiled 512^2 f32 (1 MiB) took 56 us on one thread, 80 on two; 1024^2 400 and 250 */
    const int nt = tn_par_threads(it->numel, pl.conv ? par : 2 * par);
    /* smaller blocks along b where there would be too few items to share among the threads */
    while (pl.tj > TILE_CONV_J && outer * ((it->shape[b] + pl.tj - 1) / pl.tj) < 4 * nt) pl.tj /= 2;
    pl.nbb = (it->shape[b] + pl.tj - 1) / pl.tj;
    const int64_t items = outer * pl.nbb;
    const int ntu = nt < items ? nt : (int)items;
    TN_PARALLEL_FOR(ntu, w, items, tile_item(&pl, w););
    return 1;
}

/* Byte range [lo, hi) a tensor's elements span. */
static void byte_span(const tn_tensor *t, uintptr_t *lo, uintptr_t *hi) {
    int64_t mn = 0, mx = 0;
    for (int32_t i = 0; i < t->ndim; i++) {
        if (t->shape[i] == 0) { *lo = *hi = (uintptr_t)t->data; return; }
        int64_t e = (t->shape[i] - 1) * t->strides[i];
        if (e < 0) mn += e; else mx += e;
    }
    int64_t es = (int64_t)tn_dtype_size(t->dtype);
    *lo = (uintptr_t)(t->data + mn * es);
    *hi = (uintptr_t)(t->data + (mx + 1) * es);
}

static int same_view(const tn_tensor *a, const tn_tensor *b) {
    if (a->data != b->data || a->dtype != b->dtype || a->ndim != b->ndim) return 0;
    for (int32_t i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i] || (a->shape[i] != 1 && a->strides[i] != b->strides[i])) return 0;
    return 1;
}

#ifdef TERN_HAVE_CUDA
static tn_status copy_across(tn_tensor *dst, const tn_tensor *src);
#endif

/* Copy without argument checks (callers validated); src broadcasts to dst. */
static tn_status copy_impl(tn_tensor *dst, const tn_tensor *src) {
    int64_t n = tn_tensor_numel(dst);
    if (n == 0) return TN_OK;
#ifdef TERN_HAVE_CUDA
    if (dst->device != src->device) return copy_across(dst, src);
#endif
    if (same_view(dst, src)) return TN_OK;
    uintptr_t dlo, dhi, slo, shi;
    byte_span(dst, &dlo, &dhi);
    byte_span(src, &slo, &shi);
    if (dlo < shi && slo < dhi) { /* overlapping memory: go through a temporary */
        tn_tensor *tmp = NULL;
        TN_TRY(tn_tensor_empty(&tmp, src->ndim, src->shape, src->dtype, src->device));
        tn_status st = copy_impl(tmp, src);
        if (st == TN_OK) st = copy_impl(dst, tmp);
        tn_tensor_free(tmp);
        return st;
    }
    conv_ctx c = {dst->dtype, src->dtype};
    tn_iter it;
    if (tn_tensor_is_contiguous(dst) && tn_tensor_is_contiguous(src) && tn_tensor_numel(src) == n) {
        char *d[2] = {dst->data, src->data};
        size_t es[2] = {tn_dtype_size(dst->dtype), tn_dtype_size(src->dtype)};
        tn_iter_flat(&it, 2, d, es, n);
    } else {
        tn_iter_init(&it, dst->ndim, dst->shape);
        tn_iter_add_tensor(&it, dst);
        tn_iter_add_tensor(&it, src);
        tn_iter_finish(&it);
    }
#ifdef TERN_HAVE_CUDA
    if (dst->device == TN_CUDA) return tn_cuda_copy_iter(&it, dst->dtype, src->dtype);
#endif
    /* a memcpy is cheap per byte: only split it across threads when it is large */
    int64_t par = dst->dtype == src->dtype ? (int64_t)(1 << 20) / (int64_t)tn_dtype_size(dst->dtype) : TN_PAR_MIN;
    if (tn_tensor_is_contiguous(dst) && copy_tiled(&it, &c, par)) return TN_OK;
    tn_iter_run(&it, conv_pick(dst->dtype, src->dtype), &c, par);
    return TN_OK;
}

#ifdef TERN_HAVE_CUDA
/* src's header with its broadcast dims (stride 0) cut to size 1: it broadcasts to the same dst,
 * and a contiguous copy of it holds each distinct element once. A header only (no reference
 * taken), valid while src is. */
static tn_tensor unbroadcast(const tn_tensor *src) {
    tn_tensor v = *src;
    for (int32_t d = 0; d < v.ndim; d++)
        if (v.strides[d] == 0) v.shape[d] = 1;
    return v;
}

/* t can take the n contiguous elements of dtype that cross between the devices as they are. */
static int takes_flat(const tn_tensor *t, int32_t dtype, int64_t n) {
    return t->dtype == dtype && tn_tensor_numel(t) == n && tn_tensor_is_contiguous(t);
}

/* dst and src on different devices (one CPU, one CUDA; n > 0). The bytes cross once, contiguous
 * and in one dtype: host -> device sends src's dtype and converts, broadcasts and scatters on the
 * device; device -> host converts to dst's dtype on the device first; a non-contiguous CPU side
 * goes through a contiguous CPU temporary. */
static tn_status copy_across(tn_tensor *dst, const tn_tensor *src) {
    const tn_tensor v = unbroadcast(src);
    const int64_t n = tn_tensor_numel(&v);
    tn_tensor *tmp_cpu = NULL, *tmp_dev = NULL;
    tn_status st = TN_OK;
    if (dst->device == TN_CUDA) { /* host -> device */
        const tn_tensor *h = &v; /* contiguous, v's shape and dtype */
        if (!tn_tensor_is_contiguous(&v)) {
            st = tn_tensor_empty(&tmp_cpu, v.ndim, v.shape, v.dtype, TN_CPU);
            if (st == TN_OK) st = copy_impl(tmp_cpu, &v);
            h = tmp_cpu;
        }
        const size_t nbytes = (size_t)n * tn_dtype_size(v.dtype);
        if (st == TN_OK && takes_flat(dst, v.dtype, n)) {
            st = tn_cuda_copy_h2d(dst->data, h->data, nbytes);
        } else if (st == TN_OK) {
            st = tn_tensor_empty(&tmp_dev, v.ndim, v.shape, v.dtype, TN_CUDA);
            if (st == TN_OK) st = tn_cuda_copy_h2d(tmp_dev->data, h->data, nbytes);
            if (st == TN_OK) st = copy_impl(dst, tmp_dev);
        }
    } else { /* device -> host */
        const tn_tensor *dv = &v; /* contiguous, v's shape, dst's dtype */
        if (!tn_tensor_is_contiguous(&v) || v.dtype != dst->dtype) {
            st = tn_tensor_empty(&tmp_dev, v.ndim, v.shape, dst->dtype, TN_CUDA);
            if (st == TN_OK) st = copy_impl(tmp_dev, &v);
            dv = tmp_dev;
        }
        const size_t nbytes = (size_t)n * tn_dtype_size(dst->dtype);
        /* a pending index error (cuda/index.cu) is read on the stream before the copy's wait and
         * raised after it */
        if (st == TN_OK) st = tn_cuda_check_pending(NULL);
        if (st == TN_OK && takes_flat(dst, dst->dtype, n)) {
            st = tn_cuda_copy_d2h(dst->data, dv->data, nbytes);
        } else if (st == TN_OK) {
            st = tn_tensor_empty(&tmp_cpu, v.ndim, v.shape, dst->dtype, TN_CPU);
            if (st == TN_OK) st = tn_cuda_copy_d2h(tmp_cpu->data, dv->data, nbytes);
            if (st == TN_OK) st = copy_impl(dst, tmp_cpu);
        }
        if (st == TN_OK) st = tn_cuda_check_pending("copy to host");
    }
    /* the device reads tmp_dev on the current stream, which the CUDA pool orders a reuse after */
    tn_tensor_free(tmp_cpu);
    tn_tensor_free(tmp_dev);
    return st;
}
#endif

static tn_status check_dtype(const char *op, int32_t dtype) {
    if (dtype < 0 || dtype >= TN_NUM_DTYPES) return tn_error(TN_ERR_DTYPE, "%s: invalid dtype %d", op, (int)dtype);
    return TN_OK;
}

#ifdef TERN_HAVE_CUDA
/* Between two CUDA devices the bytes move as they are (cudaMemcpyPeerAsync): one dtype, one
 * shape, both contiguous; a conversion or a strided copy happens on one device first. */
static tn_status copy_peer(tn_tensor *dst, const tn_tensor *src) {
    TN_TRY(tn_check_memory("copy", dst));
    TN_TRY(tn_check_memory("copy", src));
    int same = dst->dtype == src->dtype && dst->ndim == src->ndim && tn_tensor_is_contiguous(dst) && tn_tensor_is_contiguous(src);
    for (int32_t i = 0; same && i < dst->ndim; i++) same = dst->shape[i] == src->shape[i];
    if (!same)
        return tn_error(TN_ERR_UNSUPPORTED,
                        "copy: between cuda:%d and cuda:%d only contiguous tensors of one dtype and shape are "
                        "copied (dst %s %s, src %s %s); convert or make src contiguous on its own device first",
                        (int)src->device_index, (int)dst->device_index, TN_SHAPE(dst), tn_dtype_name(dst->dtype),
                        TN_SHAPE(src), tn_dtype_name(src->dtype));
    const size_t nbytes = (size_t)tn_tensor_numel(dst) * tn_dtype_size(dst->dtype);
    if (nbytes == 0) return TN_OK;
    return tn_cuda_copy_peer(dst->data, dst->device_index, src->data, src->device_index, nbytes);
}
#endif

tn_status tn_copy(tn_tensor *dst, const tn_tensor *src) {
    TN_TRY(tn_check_tensor("copy", "dst", dst));
    TN_TRY(tn_check_tensor("copy", "src", src));
#ifdef TERN_HAVE_CUDA
    /* one CPU and one CUDA tensor is a copy between the devices */
    const int across = (dst->device == TN_CPU && src->device == TN_CUDA) ||
                       (dst->device == TN_CUDA && src->device == TN_CPU);
    if (dst->device == TN_CUDA && src->device == TN_CUDA && dst->device_index != src->device_index)
        return copy_peer(dst, src);
#else
    const int across = 0;
#endif
    if (!across) TN_TRY(tn_check_same_device("copy", dst, src));
    TN_TRY(tn_check_backend("copy", dst));
    TN_TRY(tn_check_backend("copy", src));
    TN_TRY(check_dtype("copy", dst->dtype));
    TN_TRY(check_dtype("copy", src->dtype));
    int ok = src->ndim <= dst->ndim;
    for (int32_t i = 0; ok && i < src->ndim; i++) {
        int64_t ss = src->shape[src->ndim - 1 - i], ds = dst->shape[dst->ndim - 1 - i];
        ok = ss == ds || ss == 1;
    }
    if (!ok)
        return tn_error(TN_ERR_SHAPE, "copy: src %s (%s) does not broadcast to dst %s (%s)", TN_SHAPE(src),
                        tn_dtype_name(src->dtype), TN_SHAPE(dst), tn_dtype_name(dst->dtype));
    return copy_impl(dst, src);
}

/* ---- fill -------------------------------------------------------------------------------- */

typedef struct fill_ctx {
    uint64_t bits; /* the value's bytes in the dtype, low bytes first */
    int32_t elsize;
} fill_ctx;

#define FILL_LOOP(T)                                                                          \
    do {                                                                                      \
        T v;                                                                                  \
        memcpy(&v, &c->bits, sizeof v);                                                       \
        T *d = (T *)p[0];                                                                     \
        if (s[0] == 1) { _Pragma("omp simd") for (int64_t i = 0; i < n; i++) d[i] = v; }       \
        else for (int64_t i = 0; i < n; i++) d[i * s[0]] = v;                                 \
    } while (0)

static void fill_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    const fill_ctx *c = (const fill_ctx *)ctx;
    if (c->bits == 0 && s[0] == 1) { memset(p[0], 0, (size_t)n * (size_t)c->elsize); return; }
    switch (c->elsize) {
    case 1: FILL_LOOP(uint8_t); break;
    case 2: FILL_LOOP(uint16_t); break;
    case 4: FILL_LOOP(uint32_t); break;
    default: FILL_LOOP(uint64_t); break;
    }
}

tn_status tn_fill(tn_tensor *dst, double value) {
    TN_TRY(tn_check_tensor("fill", "dst", dst));
    TN_TRY(tn_check_backend("fill", dst));
    TN_TRY(check_dtype("fill", dst->dtype));
    fill_ctx c = {0, (int32_t)tn_dtype_size(dst->dtype)};
    tn_elem_store_f64(&c.bits, dst->dtype, value); /* exact for integral values in i64 range */
    tn_iter it;
    tn_iter_init(&it, dst->ndim, dst->shape);
    tn_iter_add_tensor(&it, dst);
    tn_iter_finish(&it);
    if (it.numel == 0) return TN_OK;
#ifdef TERN_HAVE_CUDA
    if (dst->device == TN_CUDA) return tn_cuda_fill(&it, c.bits, c.elsize);
#endif
    tn_iter_run(&it, fill_kernel, &c, (int64_t)(1 << 20) / c.elsize);
    return TN_OK;
}

/* ---- dtype conversion, arange -------------------------------------------------------------- */

tn_status tn_to_dtype(tn_tensor **out, const tn_tensor *src, int32_t dtype) {
    if (!out) return tn_error(TN_ERR_ARG, "to_dtype: out is NULL");
    TN_TRY(tn_check_tensor("to_dtype", "src", src));
    TN_TRY(tn_check_backend("to_dtype", src));
    TN_TRY(check_dtype("to_dtype", dtype));
    if (dtype == src->dtype && tn_tensor_is_contiguous(src)) {
        *out = tn_tensor_retain((tn_tensor *)src);
        return TN_OK;
    }
    tn_tensor *t = NULL;
    TN_TRY(tn_tensor_empty(&t, src->ndim, src->shape, dtype, src->device));
    tn_status st = copy_impl(t, src);
    if (st != TN_OK) { tn_tensor_free(t); return st; }
    *out = t;
    return TN_OK;
}

typedef struct arange_ctx {
    double start, step;
    int64_t istart, istep;
    const char *base; /* the output's first element: a run's index is (p - base) / elsize */
    int32_t dtype, exact_int; /* exact_int: integer dtype with integral start and step */
} arange_ctx;

static void arange_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    (void)s;
    const arange_ctx *c = (const arange_ctx *)ctx;
    size_t es = tn_dtype_size(c->dtype);
    int64_t i0 = (int64_t)((size_t)(p[0] - c->base) / es);
    char *d = p[0];
    if (c->dtype == TN_F32) {
        float *f = (float *)d;
        for (int64_t i = 0; i < n; i++) f[i] = (float)tn_arange_f64(c->start, c->step, i0 + i);
    } else if (c->exact_int) {
        for (int64_t i = 0; i < n; i++) tn_elem_store_i64(d + i * es, c->dtype, tn_arange_i64(c->istart, c->istep, i0 + i));
    } else {
        for (int64_t i = 0; i < n; i++) tn_elem_store_f64(d + i * es, c->dtype, tn_arange_f64(c->start, c->step, i0 + i));
    }
}

tn_status tn_arange(tn_tensor **out, double start, double end, double step, int32_t dtype, int32_t device) {
    if (!out) return tn_error(TN_ERR_ARG, "arange: out is NULL");
    TN_TRY(check_dtype("arange", dtype));
#ifdef TERN_HAVE_CUDA
    if (device != TN_CPU && device != TN_CUDA)
#else
    if (device != TN_CPU)
#endif
        return tn_error(TN_ERR_DEVICE, "arange: device %s is not supported by the CPU backend", tn_device_name(device));
    if (!isfinite(start) || !isfinite(end) || !isfinite(step))
        return tn_error(TN_ERR_ARG, "arange: start %g, end %g and step %g must be finite", start, end, step);
    if (step == 0) return tn_error(TN_ERR_ARG, "arange: step must be nonzero");
    if ((step > 0 && end < start) || (step < 0 && end > start))
        return tn_error(TN_ERR_ARG, "arange: step %g has the wrong sign for start %g and end %g", step, start, end);
    double cnt = ceil((end - start) / step);
    if (!(cnt < 4.0e18)) return tn_error(TN_ERR_ARG, "arange: %g elements are too many", cnt);
    int64_t n = (int64_t)cnt;
    arange_ctx c = {start, step, 0, 0, NULL, dtype, 0};
    if (tn_is_int_dtype(dtype) && start == floor(start) && step == floor(step) && fabs(start) < 9.0e18 &&
        fabs(step) < 9.0e18) {
        c.exact_int = 1;
        c.istart = (int64_t)start;
        c.istep = (int64_t)step;
    }
    int64_t shape[1] = {n};
    tn_tensor *t = NULL;
    TN_TRY(tn_tensor_empty(&t, 1, shape, dtype, device));
#ifdef TERN_HAVE_CUDA
    if (device == TN_CUDA) {
        tn_status st = n == 0 ? TN_OK : tn_cuda_arange(t->data, n, dtype, start, step, c.istart, c.istep, c.exact_int);
        if (st != TN_OK) {
            tn_tensor_free(t);
            return st;
        }
        *out = t;
        return TN_OK;
    }
#endif
    c.base = t->data;
    char *d[1] = {t->data};
    size_t es[1] = {tn_dtype_size(dtype)};
    tn_iter it;
    tn_iter_flat(&it, 1, d, es, n);
    tn_iter_run(&it, arange_kernel, &c, TN_PAR_MIN);
    *out = t;
    return TN_OK;
}
