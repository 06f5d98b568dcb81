/*
 * optim.c — fused optimizer updates over multi-tensor lists (tn_optim_sgd, tn_optim_adam,
 * tn_optim_novograd, tn_optim_larc), per-tensor norms, global-norm clipping, the
 * mixed-precision unscale-and-check (tn_amp_unscale_check) and zeroing. f32 parameters (with
 * f16/bf16 gradients and model copies for mixed precision) and f64.
 *
 * Devices: every entry of every list (and grad_ema, the out tensor of tn_optim_norms) must be
 * on the device of the first entry of the leading list; lists of CUDA tensors go, after the
 * same checks, to the tn_cuda_* functions of cuda/optim.cu (fused multi-tensor kernels, no
 * host synchronisation except the read-back of the host outputs total_norm, found_inf and
 * amax, once per call). The rest of this comment is about the CPU backend.
 *
 * Gradient policy: the optimizers update params and their state in place (=) and only read
 * grads; tn_optim_larc, tn_grad_clip_norm and tn_amp_unscale_check (when out == grads) rescale
 * gradients in place.
 *
 * Work layout: the elements of every list entry are cut into units of TN_OPTIM_UNIT elements
 * counted from the entry's start (an entry's last unit may be shorter); the units of all
 * entries are split statically over OpenMP threads (one parallel region per call, none below
 * TN_PAR_MIN elements). Reductions write one partial result per unit and combine them in unit
 * order afterwards, so norms, amax and therefore every update are bit-identical for any
 * thread count.
 *
 * f32 Adam runs each unit in blocks of TN_OPTIM_BLK: a vectorised moments loop, the square
 * roots of the block, a vectorised parameter loop, then the f16/bf16 write-back. gcc
 * vectorises sqrtf only under -fno-math-errno, which the library is not built with; the
 * square roots use _mm_sqrt_ps (the same correctly rounded IEEE square root) where SSE2 is
 * available. Two divisions and a square root per element make Adam compute-bound on SSE2, and
 * f16 conversions are slow in plain C: every f32 unit function has a second copy built for
 * AVX2 + F16C (without FMA, so every operation rounds as in the plain copy), picked at run
 * time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "internal.h"
#include "iter.h"
#include "kernels/optim.h"

#ifdef TERN_HAVE_CUDA
/* cuda/optim.cu. Called after the checks of the entry points below, with n > 0 and every
 * tensor on CUDA; each queues its kernels on the current stream and returns without waiting,
 * except tn_cuda_grad_clip_norm and tn_cuda_amp_unscale_check, which read their host outputs
 * back once (cudaMemcpyAsync + cudaStreamSynchronize). Coefficients as the CPU computes them. */
tn_status tn_cuda_optim_sgd(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                            tn_tensor *const *momentum_buf /* [OPTIONAL] used when cd->has_momentum */,
                            tn_tensor *const *model /* [OPTIONAL] */, int32_t pdt, int32_t gdt, int32_t mdt,
                            const tn_sgd_coef_f *cf, const tn_sgd_coef_d *cd);
tn_status tn_cuda_optim_adam(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                             tn_tensor *const *exp_avg, tn_tensor *const *exp_avg_sq,
                             tn_tensor *const *model /* [OPTIONAL] */, int32_t pdt, int32_t gdt, int32_t mdt,
                             const tn_adam_coef_f *cf, const tn_adam_coef_d *cd);
/* grad_ema: (n) params' dtype on the device, updated there */
tn_status tn_cuda_optim_novograd(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                                 tn_tensor *const *exp_avg, tn_tensor *grad_ema,
                                 tn_tensor *const *model /* [OPTIONAL] */, int32_t pdt, int32_t gdt, int32_t mdt,
                                 const tn_optim_hparams *h);
tn_status tn_cuda_optim_larc(int32_t n, tn_tensor *const *grads, tn_tensor *const *params, int32_t pdt,
                             double eta, double eps, double weight_decay, double lr, int32_t clip,
                             double grad_scale);
/* out: (n) f64 on the device */
tn_status tn_cuda_optim_norms(tn_tensor *out, int32_t n, tn_tensor *const *ts);
tn_status tn_cuda_grad_clip_norm(double *total_norm, int32_t n, tn_tensor *const *grads, double max_norm,
                                 double grad_scale);
tn_status tn_cuda_amp_unscale_check(int32_t *found_inf, double *amax, int32_t n, tn_tensor *const *out,
                                    tn_tensor *const *grads, double inv_scale);
tn_status tn_cuda_amp_sync_masters(int32_t n, tn_tensor *const *masters, tn_tensor *const *model);
tn_status tn_cuda_optim_zero(int32_t n, tn_tensor *const *ts);
#endif

#define TN_OPTIM_UNIT ((int64_t)8192) /* elements per work unit (and per reduction partial) */
enum { TN_OPTIM_BLK = 256 };           /* elements per block inside a unit (stack buffers) */
enum { TN_NORM_BLK = 64 };             /* squares summed in f32 per block, blocks in double */

#if defined(__GNUC__)
#define TN_OPTIM_INLINE static inline __attribute__((always_inline))
#else
#define TN_OPTIM_INLINE static inline
#endif

#define DT_BIT(d) (1u << (unsigned)(d))
#define DT_FLOAT (DT_BIT(TN_F32) | DT_BIT(TN_F64) | DT_BIT(TN_F16) | DT_BIT(TN_BF16))
#define DT_HALF (DT_BIT(TN_F16) | DT_BIT(TN_BF16))

/* ---- lists and the unit driver ------------------------------------------------------------ */

typedef struct tlist {
    int32_t n;
    int64_t *numel;  /* (n) */
    int64_t *ustart; /* (n + 1) first unit of each entry; ustart[n] = number of units */
    int64_t total;   /* elements of all entries */
} tlist;

static void tlist_free(tlist *L) {
    free(L->numel);
    free(L->ustart);
    L->numel = L->ustart = NULL;
}

/* tlist_free, passing on the status of the call it ends. */
static tn_status tlist_done(tlist *L, tn_status s) {
    tlist_free(L);
    return s;
}

static tn_status tlist_init(const char *op, tlist *L, int32_t n, tn_tensor *const *ts) {
    L->n = n;
    L->total = 0;
    L->numel = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    L->ustart = malloc(sizeof(int64_t) * (size_t)(n + 1));
    if (!L->numel || !L->ustart) {
        tlist_free(L);
        return tn_error(TN_ERR_OOM, "%s: out of memory for a list of %d tensors", op, (int)n);
    }
    L->ustart[0] = 0;
    for (int32_t i = 0; i < n; i++) {
        int64_t k = tn_tensor_numel(ts[i]);
        L->numel[i] = k;
        L->total += k;
        L->ustart[i + 1] = L->ustart[i] + (k + TN_OPTIM_UNIT - 1) / TN_OPTIM_UNIT;
    }
    return TN_OK;
}

static const char *dtype_set_str(unsigned mask, char *buf, size_t len) {
    buf[0] = 0;
    for (int32_t d = 0; d < TN_NUM_DTYPES; d++) {
        if (!(mask & DT_BIT(d))) continue;
        size_t k = strlen(buf);
        snprintf(buf + k, len - k, "%s%s", k ? " or " : "", tn_dtype_name(d));
    }
    return buf;
}

/* "cpu" or "cuda:<index>" into buf. */
static const char *device_str(const tn_tensor *t, char *buf, size_t len) {
    if (t->device == TN_CPU) snprintf(buf, len, "%s", tn_device_name(t->device));
    else snprintf(buf, len, "%s:%d", tn_device_name(t->device), (int)t->device_index);
    return buf;
}

/* Error unless t is on the device (type and index) of d; names both. */
static tn_status check_same_device(const char *op, const char *name, int32_t i, const tn_tensor *t,
                                   const char *dname, const tn_tensor *d) {
    if (t->device == d->device && (t->device == TN_CPU || t->device_index == d->device_index)) return TN_OK;
    char a[48], b[48];
    return tn_error(TN_ERR_DEVICE, "%s: %s[%lld] is on %s but %s is on %s (one device per call)", op, name,
                    TN_D(i), device_str(t, a, sizeof a), dname, device_str(d, b, sizeof b));
}

/* Checks list `name`: n non-NULL contiguous tensors of a backend that has these ops
 * (tn_check_backend: CPU, or CUDA in CUDA builds), all on the device of dev (dev NULL: of
 * ts[0]; dev_name names it in messages), with a dtype in mask, all of one dtype when
 * same_dtype, and numel[i] elements each when numel is given (ref names the list the sizes
 * come from). Stores the first entry's dtype in *dt (-1 for n = 0). */
static tn_status check_list(const char *op, const char *name, int32_t n, tn_tensor *const *ts,
                            unsigned mask, int same_dtype, const int64_t *numel, const char *ref,
                            int32_t *dt, const tn_tensor *dev, const char *dev_name) {
    if (n < 0) return tn_error(TN_ERR_ARG, "%s: n must be >= 0, got %d", op, (int)n);
    if (n > 0 && !ts) return tn_error(TN_ERR_ARG, "%s: list '%s' is NULL", op, name);
    for (int32_t i = 0; i < n; i++) {
        const tn_tensor *t = ts[i];
        if (!t) return tn_error(TN_ERR_ARG, "%s: %s[%lld] is NULL", op, name, TN_D(i));
        TN_TRY(tn_check_backend(op, t));
        if (dev) {
            TN_TRY(check_same_device(op, name, i, t, dev_name, dev));
        } else {
            char r[64];
            snprintf(r, sizeof r, "%s[%lld]", name, TN_D(0));
            TN_TRY(check_same_device(op, name, i, t, r, ts[0]));
        }
        if (!(mask & DT_BIT(t->dtype))) {
            char b[64];
            return tn_error(TN_ERR_DTYPE, "%s: %s[%lld] has dtype %s, expected %s", op, name, TN_D(i),
                            tn_dtype_name(t->dtype), dtype_set_str(mask, b, sizeof b));
        }
        if (same_dtype && t->dtype != ts[0]->dtype)
            return tn_error(TN_ERR_DTYPE, "%s: %s[%lld] has dtype %s but %s[%lld] has %s (one dtype per list)",
                            op, name, TN_D(i), tn_dtype_name(t->dtype), name, TN_D(0),
                            tn_dtype_name(ts[0]->dtype));
        if (!tn_tensor_is_contiguous(t))
            return tn_error(TN_ERR_ARG, "%s: %s[%lld] (shape %s) is not contiguous", op, name, TN_D(i),
                            TN_SHAPE(t));
        if (numel && tn_tensor_numel(t) != numel[i])
            return tn_error(TN_ERR_SHAPE, "%s: %s[%lld] has %lld elements (shape %s) but %s[%lld] has %lld",
                            op, name, TN_D(i), (long long)tn_tensor_numel(t), TN_SHAPE(t), ref, TN_D(i),
                            (long long)numel[i]);
    }
    *dt = n > 0 ? ts[0]->dtype : -1;
    return TN_OK;
}

typedef void (*unit_fn)(void *ctx, int32_t i, int64_t a, int64_t len, int64_t u);

/* Units [u0, u1): fn(ctx, entry, first element, length, unit index). */
static void units_range(const tlist *L, int64_t u0, int64_t u1, unit_fn fn, void *ctx) {
    if (u0 >= u1) return;
    int32_t lo = 0, hi = L->n - 1; /* the last entry whose first unit is <= u0 */
    while (lo < hi) {
        int32_t mid = lo + (hi - lo + 1) / 2;
        if (L->ustart[mid] <= u0) lo = mid; else hi = mid - 1;
    }
    int32_t i = lo;
    for (int64_t u = u0; u < u1; u++) {
        while (u >= L->ustart[i + 1]) i++;
        int64_t a = (u - L->ustart[i]) * TN_OPTIM_UNIT;
        int64_t len = L->numel[i] - a;
        if (len > TN_OPTIM_UNIT) len = TN_OPTIM_UNIT;
        fn(ctx, i, a, len, u);
    }
}

/* Every unit once, split statically over threads. */
static void run_units(const tlist *L, unit_fn fn, void *ctx) {
    const int64_t U = L->ustart[L->n];
    if (U == 0) return;
    int nt = tn_par_threads(L->total, TN_PAR_MIN);
    if (nt > U) nt = (int)U;
#ifdef _OPENMP
    if (nt > 1) {
#pragma omp parallel num_threads(nt)
        {
            int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
            units_range(L, U * t / T, U * (t + 1) / T, fn, ctx);
        }
        return;
    }
#endif
    units_range(L, 0, U, fn, ctx);
}

/* ---- element helpers ---------------------------------------------------------------------------
 * Each takes `avx` (a constant at every call site): 1 inside the AVX2 + F16C copies of the unit
 * functions (TN_OPTIM_AVX, chosen at run time by use_avx()), where the square roots and the
 * f16 conversions (vcvtph2ps / vcvtps2ph: round to nearest even, NaN kept quiet, exactly as
 * kernels/half.h) run 8 wide. Neither copy uses FMA, so both round every operation alike. */

#ifdef TN_AVX2_BUILD
#define TN_OPTIM_AVX __attribute__((target("avx2,f16c")))

/* AVX2 and F16C present (checked once). */
static int use_avx(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = tn_cpu_has_avx2_fma() && __builtin_cpu_supports("f16c");
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}

TN_OPTIM_AVX static void sqrt_block_avx(float *restrict dst, const float *restrict src, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, _mm256_sqrt_ps(_mm256_loadu_ps(src + j)));
    for (; j < n; j++) dst[j] = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(src[j])));
}
TN_OPTIM_AVX static void half_to_float_avx(float *restrict dst, const uint16_t *restrict src, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + j))));
    for (; j < n; j++) dst[j] = tn_half_to_float(src[j]);
}
/* the saturating rounding of 8 floats to f16 (min/max with the operands in this order keep NaN) */
TN_OPTIM_AVX static inline __m128i half_sat8(__m256 x) {
    const __m256 mx = _mm256_set1_ps(TN_F16_MAX), mn = _mm256_set1_ps(-TN_F16_MAX);
    return _mm256_cvtps_ph(_mm256_max_ps(mn, _mm256_min_ps(mx, x)), _MM_FROUND_TO_NEAREST_INT);
}
TN_OPTIM_AVX static void float_to_half_sat_avx(uint16_t *restrict dst, const float *restrict src, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) _mm_storeu_si128((__m128i *)(dst + j), half_sat8(_mm256_loadu_ps(src + j)));
    for (; j < n; j++) dst[j] = tn_float_to_half_sat(src[j]);
}
TN_OPTIM_AVX static void reseed_half_avx(float *restrict p, const uint16_t *restrict model, int64_t n) {
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 x = _mm256_loadu_ps(p + j);
        __m128i h = _mm_loadu_si128((const __m128i *)(model + j));
        __m128i differ = _mm_xor_si128(_mm_cmpeq_epi16(half_sat8(x), h), _mm_set1_epi16(-1));
        __m256 mask = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(differ));
        _mm256_storeu_ps(p + j, _mm256_blendv_ps(x, _mm256_cvtph_ps(h), mask));
    }
    for (; j < n; j++)
        if (tn_float_to_half_sat(p[j]) != model[j]) p[j] = tn_half_to_float(model[j]);
}
#endif

/* dst[j] = sqrt(src[j]), correctly rounded (vector square roots; see the top of the file). */
TN_OPTIM_INLINE void sqrt_block(float *restrict dst, const float *restrict src, int64_t n, const int avx) {
#ifdef TN_AVX2_BUILD
    if (avx) {
        sqrt_block_avx(dst, src, n);
        return;
    }
#endif
    (void)avx;
    int64_t j = 0;
#if defined(__SSE2__)
    for (; j + 4 <= n; j += 4) _mm_storeu_ps(dst + j, _mm_sqrt_ps(_mm_loadu_ps(src + j)));
    for (; j < n; j++) dst[j] = _mm_cvtss_f32(_mm_sqrt_ss(_mm_set_ss(src[j])));
#else
    for (; j < n; j++) dst[j] = sqrtf(src[j]);
#endif
}

/* The f32 values of n gradient elements from element a of data (dtype dt): data itself for
 * f32, else converted into buf (n <= TN_OPTIM_BLK). */
TN_OPTIM_INLINE const float *grad_block_f32(float *restrict buf, const char *data, int32_t dt, int64_t a, int64_t n,
                                            const int avx) {
    if (dt == TN_F32) return (const float *)data + a;
    const uint16_t *h = (const uint16_t *)data + a;
    if (dt == TN_F16) {
#ifdef TN_AVX2_BUILD
        if (avx) {
            half_to_float_avx(buf, h, n);
            return buf;
        }
#endif
        for (int64_t j = 0; j < n; j++) buf[j] = tn_half_to_float(h[j]);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) buf[j] = tn_bf16_to_float(h[j]);
    }
    (void)avx;
    return buf;
}

/* Saturating write-back of n updated f32 params into the f16/bf16 model copy. */
TN_OPTIM_INLINE void store_model(uint16_t *restrict dst, int32_t mdt, const float *restrict src, int64_t n,
                                 const int avx) {
    if (mdt == TN_F16) {
#ifdef TN_AVX2_BUILD
        if (avx) {
            float_to_half_sat_avx(dst, src, n);
            return;
        }
#endif
        for (int64_t j = 0; j < n; j++) dst[j] = tn_float_to_half_sat(src[j]);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) dst[j] = tn_float_to_bf16_sat(src[j]);
    }
    (void)avx;
}

/* masters = model where the saturating rounding of the master differs from the model weight. */
TN_OPTIM_INLINE void reseed_block(float *restrict p, const uint16_t *restrict model, int32_t mdt, int64_t n,
                                  const int avx) {
    if (mdt == TN_F16) {
#ifdef TN_AVX2_BUILD
        if (avx) {
            reseed_half_avx(p, model, n);
            return;
        }
#endif
        for (int64_t j = 0; j < n; j++)
            if (tn_float_to_half_sat(p[j]) != model[j]) p[j] = tn_half_to_float(model[j]);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            uint16_t r = tn_float_to_bf16_sat(p[j]);
            p[j] = r != model[j] ? tn_bf16_to_float(model[j]) : p[j];
        }
    }
    (void)avx;
}

/* The plain and the AVX2 + F16C copy of a unit function name##_body(ctx, i, a, len, avx), and
 * pick_<name>() choosing between them. */
#ifdef TN_AVX2_BUILD
#define UNIT_COPIES(name)                                                                          \
    static void name(void *c, int32_t i, int64_t a, int64_t len, int64_t u) {                      \
        (void)u;                                                                                   \
        name##_body(c, i, a, len, 0);                                                              \
    }                                                                                              \
    TN_OPTIM_AVX static void name##_avx(void *c, int32_t i, int64_t a, int64_t len, int64_t u) {   \
        (void)u;                                                                                   \
        name##_body(c, i, a, len, 1);                                                              \
    }                                                                                              \
    static unit_fn pick_##name(void) { return use_avx() ? name##_avx : name; }
#else
#define UNIT_COPIES(name)                                                                          \
    static void name(void *c, int32_t i, int64_t a, int64_t len, int64_t u) {                      \
        (void)u;                                                                                   \
        name##_body(c, i, a, len, 0);                                                              \
    }                                                                                              \
    static unit_fn pick_##name(void) { return name; }
#endif

/* Sum of squares of n elements from element a (f32 blocks of TN_NORM_BLK, summed in double). */
static double sumsq_range(const char *data, int32_t dt, int64_t a, int64_t n) {
    double s = 0;
    if (dt == TN_F64) {
        const double *x = (const double *)data + a;
        double acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < n; j++) acc += x[j] * x[j];
        return acc;
    }
    float buf[TN_OPTIM_BLK];
    for (int64_t o = 0; o < n; o += TN_OPTIM_BLK) {
        int64_t nb = n - o < TN_OPTIM_BLK ? n - o : TN_OPTIM_BLK;
        const float *x = grad_block_f32(buf, data, dt, a + o, nb, 0);
        for (int64_t b = 0; b < nb; b += TN_NORM_BLK) {
            int64_t e = nb - b < TN_NORM_BLK ? nb : b + TN_NORM_BLK;
            float acc = 0;
#pragma omp simd reduction(+ : acc)
            for (int64_t j = b; j < e; j++) acc += x[j] * x[j];
            s += acc;
        }
    }
    return s;
}

/* ---- argument checks shared by the optimizers ---------------------------------------------- */

typedef struct opt_lists {
    tlist L;
    int32_t pdt, gdt, mdt; /* params, grads, model (-1 when absent) */
} opt_lists;

/* params (f32/f64), grads (params' dtype, or f16/bf16 for f32), the state lists (params'
 * dtype, NULL entries in states[] skip a check), model [OPTIONAL] (f16/bf16, f32 params). */
static tn_status check_opt(const char *op, opt_lists *o, int32_t n, tn_tensor *const *params,
                           tn_tensor *const *grads, int nstate, tn_tensor *const *const *states,
                           const char *const *state_names, tn_tensor *const *model,
                           const tn_optim_hparams *h) {
    o->L.numel = o->L.ustart = NULL;
    if (!h) return tn_error(TN_ERR_ARG, "%s: hyperparameters are NULL", op);
    if (h->step < 1) return tn_error(TN_ERR_ARG, "%s: step must be >= 1, got %lld", op, (long long)h->step);
    TN_TRY(check_list(op, "params", n, params, DT_BIT(TN_F32) | DT_BIT(TN_F64), 1,
                      NULL, NULL, &o->pdt, NULL, NULL));
    TN_TRY(tlist_init(op, &o->L, n, params));
    o->gdt = o->mdt = -1;
    if (n == 0) return TN_OK;
    tn_status s = TN_OK;
    unsigned gmask = DT_BIT(o->pdt) | (o->pdt == TN_F32 ? DT_HALF : 0);
    char p0[64];
    snprintf(p0, sizeof p0, "params[%lld]", TN_D(0));
    s = check_list(op, "grads", n, grads, gmask, 1, o->L.numel, "params", &o->gdt, params[0], p0);
    for (int k = 0; s == TN_OK && k < nstate; k++) {
        if (!states[k]) continue;
        int32_t d;
        s = check_list(op, state_names[k], n, states[k], DT_BIT(o->pdt), 1,
                       o->L.numel, "params", &d, params[0], p0);
    }
    if (s == TN_OK && model) {
        if (o->pdt != TN_F32)
            s = tn_error(TN_ERR_DTYPE, "%s: a model copy needs f32 params (the masters), got %s", op,
                         tn_dtype_name(o->pdt));
        else
            s = check_list(op, "model", n, model, DT_HALF, 1, o->L.numel, "params",
                           &o->mdt, params[0], p0);
    }
    if (s != TN_OK) tlist_free(&o->L);
    return s;
}

/* ---- the f32 update loop shared by the optimizers ---------------------------------------------- */

/* The lists every optimizer reads; the first member of each optimizer's context. */
typedef struct opt_io {
    tn_tensor *const *params, *const *grads, *const *model;
    int32_t gdt, mdt;
} opt_io;

/* Updates the f32 params p (nb elements from element e of entry i) with the f32 gradients g. */
typedef void (*block_fn)(const void *ctx, int32_t i, int64_t e, float *p, const float *g, int64_t nb, int avx);

/* One unit of an f32 optimizer, in blocks of TN_OPTIM_BLK: the gradients as f32, the masters
 * reseeded from the model copy, step, the saturating write-back to the model copy. step is a
 * constant at every call site, and inlined as this is. */
TN_OPTIM_INLINE void f32_unit_blocks(const opt_io *io, const void *ctx, int32_t i, int64_t a, int64_t len,
                                     block_fn step, const int avx) {
    float *p = (float *)io->params[i]->data + a;
    uint16_t *model = io->model ? (uint16_t *)io->model[i]->data + a : NULL;
    float gb[TN_OPTIM_BLK];
    for (int64_t o = 0; o < len; o += TN_OPTIM_BLK) {
        int64_t nb = len - o < TN_OPTIM_BLK ? len - o : TN_OPTIM_BLK;
        const float *g = grad_block_f32(gb, io->grads[i]->data, io->gdt, a + o, nb, avx);
        float *pp = p + o;
        if (model) reseed_block(pp, model + o, io->mdt, nb, avx);
        step(ctx, i, a + o, pp, g, nb, avx);
        if (model) store_model(model + o, io->mdt, pp, nb, avx);
    }
}

/* The unit functions of optimizer `name` (its context type ctx_t starts with an opt_io):
 * name##_unit_f32 (UNIT_COPIES, pick_##name##_unit_f32) runs name##_block over f32 blocks,
 * name##_unit_f64 runs name##_f64(ctx, i, a, p, g, len) on the f64 params and grads. */
#define OPT_UNITS(name, ctx_t)                                                                     \
    TN_OPTIM_INLINE void name##_unit_f32_body(void *c, int32_t i, int64_t a, int64_t len,          \
                                              const int avx) {                                     \
        f32_unit_blocks(&((const ctx_t *)c)->io, c, i, a, len, name##_block, avx);                 \
    }                                                                                              \
    UNIT_COPIES(name##_unit_f32)                                                                   \
    static void name##_unit_f64(void *c, int32_t i, int64_t a, int64_t len, int64_t u) {           \
        (void)u;                                                                                   \
        const opt_io *io = &((const ctx_t *)c)->io;                                                \
        double *p = (double *)io->params[i]->data + a;                                             \
        name##_f64(c, i, a, p, (const double *)io->grads[i]->data + a, len);                       \
    }

/* ---- SGD --------------------------------------------------------------------------------------- */

typedef struct sgd_ctx {
    opt_io io;
    tn_tensor *const *buf;
    tn_sgd_coef_f cf;
    tn_sgd_coef_d cd;
} sgd_ctx;

TN_OPTIM_INLINE void sgd_block(const void *vctx, int32_t i, int64_t e, float *pp, const float *g, int64_t nb,
                               const int avx) {
    (void)avx;
    const sgd_ctx *x = vctx;
    const tn_sgd_coef_f c = x->cf;
    if (c.has_momentum) {
        float *bb = (float *)x->buf[i]->data + e;
#pragma omp simd
        for (int64_t j = 0; j < nb; j++) pp[j] = tn_sgd_f(pp[j], g[j], &bb[j], &c);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < nb; j++) {
            float unused = 0;
            pp[j] = tn_sgd_f(pp[j], g[j], &unused, &c);
        }
    }
}
TN_OPTIM_INLINE void sgd_f64(const void *vctx, int32_t i, int64_t a, double *p, const double *g, int64_t len) {
    const sgd_ctx *x = vctx;
    const tn_sgd_coef_d c = x->cd;
    if (c.has_momentum) {
        double *b = (double *)x->buf[i]->data + a;
#pragma omp simd
        for (int64_t j = 0; j < len; j++) p[j] = tn_sgd_d(p[j], g[j], &b[j], &c);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < len; j++) {
            double unused = 0;
            p[j] = tn_sgd_d(p[j], g[j], &unused, &c);
        }
    }
}
OPT_UNITS(sgd, sgd_ctx)

tn_status tn_optim_sgd(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                       tn_tensor *const *momentum_buf, tn_tensor *const *model, const tn_optim_hparams *h) {
    const char *op = "tn_optim_sgd";
    int has_m = h && h->momentum != 0;
    if (has_m && n > 0 && !momentum_buf)
        return tn_error(TN_ERR_ARG, "%s: momentum %g needs momentum_buf", op, h->momentum);
    tn_tensor *const *const states[1] = { has_m ? momentum_buf : NULL };
    const char *const names[1] = { "momentum_buf" };
    opt_lists o;
    TN_TRY(check_opt(op, &o, n, params, grads, 1, states, names, model, h));
    sgd_ctx x = { { params, grads, model, o.gdt, o.mdt }, momentum_buf, { .grad_scale = 0 }, { .grad_scale = 0 } };
    x.cd = (tn_sgd_coef_d){ h->grad_scale, h->weight_decay, h->momentum, 1.0 - h->dampening, -h->lr,
                            h->weight_decay != 0, has_m, h->nesterov != 0, h->step == 1 };
    x.cf = (tn_sgd_coef_f){ (float)x.cd.grad_scale, (float)x.cd.weight_decay, (float)x.cd.momentum,
                            (float)x.cd.one_minus_dampening, (float)x.cd.neg_lr,
                            x.cd.has_wd, x.cd.has_momentum, x.cd.nesterov, x.cd.first };
#ifdef TERN_HAVE_CUDA
    if (n > 0 && params[0]->device == TN_CUDA)
        return tlist_done(&o.L, tn_cuda_optim_sgd(n, params, grads, momentum_buf, model, o.pdt, o.gdt, o.mdt,
                                                  &x.cf, &x.cd));
#endif
    run_units(&o.L, o.pdt == TN_F64 ? sgd_unit_f64 : pick_sgd_unit_f32(), &x);
    return tlist_done(&o.L, TN_OK);
}

/* ---- Adam / AdamW ------------------------------------------------------------------------------ */

typedef struct adam_ctx {
    opt_io io;
    tn_tensor *const *m, *const *v;
    tn_adam_coef_f cf;
    tn_adam_coef_d cd;
} adam_ctx;

/* One block of f32 Adam (split at the square root: see kernels/optim.h). */
TN_OPTIM_INLINE void adam_block(const void *vctx, int32_t i, int64_t e, float *pp, const float *g, int64_t nb,
                                const int avx) {
    const adam_ctx *x = vctx;
    const tn_adam_coef_f c = x->cf;
    float *mm = (float *)x->m[i]->data + e, *vv = (float *)x->v[i]->data + e;
    float sq[TN_OPTIM_BLK];
#pragma omp simd
    for (int64_t j = 0; j < nb; j++) tn_adam_moments_f(g[j], pp[j], &mm[j], &vv[j], &c);
    sqrt_block(sq, vv, nb, avx);
#pragma omp simd
    for (int64_t j = 0; j < nb; j++) pp[j] = tn_adam_param_f(pp[j], mm[j], sq[j], &c);
}
TN_OPTIM_INLINE void adam_f64(const void *vctx, int32_t i, int64_t a, double *p, const double *g, int64_t len) {
    const adam_ctx *x = vctx;
    const tn_adam_coef_d c = x->cd;
    double *m = (double *)x->m[i]->data + a, *v = (double *)x->v[i]->data + a;
    for (int64_t j = 0; j < len; j++) {
        tn_adam_moments_d(g[j], p[j], &m[j], &v[j], &c);
        p[j] = tn_adam_param_d(p[j], m[j], sqrt(v[j]), &c);
    }
}
OPT_UNITS(adam, adam_ctx)

tn_status tn_optim_adam(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                        tn_tensor *const *exp_avg, tn_tensor *const *exp_avg_sq, tn_tensor *const *model,
                        const tn_optim_hparams *h) {
    const char *op = "tn_optim_adam";
    tn_tensor *const *const states[2] = { exp_avg, exp_avg_sq };
    const char *const names[2] = { "exp_avg", "exp_avg_sq" };
    if (n > 0 && (!exp_avg || !exp_avg_sq))
        return tn_error(TN_ERR_ARG, "%s: exp_avg and exp_avg_sq are required", op);
    opt_lists o;
    TN_TRY(check_opt(op, &o, n, params, grads, 2, states, names, model, h));
    adam_ctx x = { { params, grads, model, o.gdt, o.mdt }, exp_avg, exp_avg_sq, { .grad_scale = 0 },
                   { .grad_scale = 0 } };
    /* torch: bias_correction1 = 1 - beta1 ** step, step_size = lr / bias_correction1,
     * bias_correction2_sqrt = sqrt(1 - beta2 ** step), all in double */
    double t = (double)h->step;
    double bc1 = 1.0 - pow(h->beta1, t), bc2 = 1.0 - pow(h->beta2, t);
    int decoupled = h->decoupled != 0;
    x.cd = (tn_adam_coef_d){ h->grad_scale, h->weight_decay, 1.0 - h->lr * h->weight_decay, h->beta1,
                             1.0 - h->beta1, h->beta2, 1.0 - h->beta2, sqrt(bc2), h->eps, -(h->lr / bc1),
                             !decoupled && h->weight_decay != 0, decoupled };
    x.cf = (tn_adam_coef_f){ (float)x.cd.grad_scale, (float)x.cd.weight_decay, (float)x.cd.decay,
                             (float)x.cd.beta1, (float)x.cd.one_minus_beta1, (float)x.cd.beta2,
                             (float)x.cd.one_minus_beta2, (float)x.cd.bias_correction2_sqrt, (float)x.cd.eps,
                             (float)x.cd.neg_step_size, x.cd.has_wd, x.cd.decoupled };
#ifdef TERN_HAVE_CUDA
    if (n > 0 && params[0]->device == TN_CUDA)
        return tlist_done(&o.L, tn_cuda_optim_adam(n, params, grads, exp_avg, exp_avg_sq, model, o.pdt, o.gdt,
                                                   o.mdt, &x.cf, &x.cd));
#endif
    run_units(&o.L, o.pdt == TN_F64 ? adam_unit_f64 : pick_adam_unit_f32(), &x);
    return tlist_done(&o.L, TN_OK);
}

/* ---- per-tensor sums of squares -------------------------------------------------------------- */

typedef struct sumsq_ctx {
    tn_tensor *const *a, *const *b; /* b [OPTIONAL]: a second list summed alongside */
    double *part_a, *part_b;              /* (units) */
} sumsq_ctx;

static void sumsq_unit(void *vctx, int32_t i, int64_t a, int64_t len, int64_t u) {
    const sumsq_ctx *x = vctx;
    x->part_a[u] = sumsq_range(x->a[i]->data, x->a[i]->dtype, a, len);
    if (x->b) x->part_b[u] = sumsq_range(x->b[i]->data, x->b[i]->dtype, a, len);
}

/* sums_a[i] (and sums_b[i] when b) = sum of squares of entry i, combined in unit order.
 * sums_* have n entries. */
static tn_status sumsq_lists(const char *op, const tlist *L, tn_tensor *const *a,
                             tn_tensor *const *b, double *sums_a, double *sums_b) {
    int64_t U = L->ustart[L->n];
    double *part = malloc(sizeof(double) * (size_t)(2 * U + 1));
    if (!part) return tn_error(TN_ERR_OOM, "%s: out of memory for %lld partial sums", op, (long long)U);
    sumsq_ctx x = { a, b, part, part + U };
    run_units(L, sumsq_unit, &x);
    for (int32_t i = 0; i < L->n; i++) {
        double sa = 0, sb = 0;
        for (int64_t u = L->ustart[i]; u < L->ustart[i + 1]; u++) {
            sa += part[u];
            if (b) sb += part[U + u];
        }
        sums_a[i] = sa;
        if (b) sums_b[i] = sb;
    }
    free(part);
    return TN_OK;
}

/* ---- NovoGrad ---------------------------------------------------------------------------------- */

typedef struct novo_ctx {
    opt_io io;
    tn_tensor *const *m;
    const double *gscale; /* (n) grad_scale / (sqrt(v) + eps) per entry */
    tn_optim_hparams h;
} novo_ctx;

TN_OPTIM_INLINE void novo_block(const void *vctx, int32_t i, int64_t e, float *pp, const float *g, int64_t nb,
                                const int avx) {
    (void)avx;
    const novo_ctx *x = vctx;
    const tn_novograd_coef_f c = { (float)x->gscale[i], (float)x->h.weight_decay, (float)x->h.beta1,
                                   x->h.grad_averaging ? (float)(1.0 - x->h.beta1) : 1.0f, (float)-x->h.lr };
    float *mm = (float *)x->m[i]->data + e;
#pragma omp simd
    for (int64_t j = 0; j < nb; j++) pp[j] = tn_novograd_f(pp[j], g[j], &mm[j], &c);
}
TN_OPTIM_INLINE void novo_f64(const void *vctx, int32_t i, int64_t a, double *p, const double *g, int64_t len) {
    const novo_ctx *x = vctx;
    const tn_novograd_coef_d c = { x->gscale[i], x->h.weight_decay, x->h.beta1,
                                   x->h.grad_averaging ? 1.0 - x->h.beta1 : 1.0, -x->h.lr };
    double *m = (double *)x->m[i]->data + a;
#pragma omp simd
    for (int64_t j = 0; j < len; j++) p[j] = tn_novograd_d(p[j], g[j], &m[j], &c);
}
OPT_UNITS(novo, novo_ctx)

tn_status tn_optim_novograd(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                            tn_tensor *const *exp_avg, tn_tensor *grad_ema, tn_tensor *const *model,
                            const tn_optim_hparams *h) {
    const char *op = "tn_optim_novograd";
    tn_tensor *const *const states[1] = { exp_avg };
    const char *const names[1] = { "exp_avg" };
    if (n > 0 && !exp_avg) return tn_error(TN_ERR_ARG, "%s: exp_avg is required", op);
    TN_TRY(tn_check_tensor(op, "grad_ema", grad_ema));
    TN_TRY(tn_check_backend(op, grad_ema));
    opt_lists o;
    TN_TRY(check_opt(op, &o, n, params, grads, 1, states, names, model, h));
    tn_status s = TN_OK;
    int32_t pdt = n > 0 ? o.pdt : TN_F32;
    int32_t pdev = n > 0 ? params[0]->device : grad_ema->device;
    if ((n > 0 && (grad_ema->device != pdev ||
                   (pdev != TN_CPU && grad_ema->device_index != params[0]->device_index))) ||
        grad_ema->dtype != pdt || !tn_tensor_is_contiguous(grad_ema) || tn_tensor_numel(grad_ema) != n) {
        char d[48] = "cpu";
        if (n > 0) device_str(params[0], d, sizeof d);
        s = tn_error(TN_ERR_SHAPE, "%s: grad_ema must be a contiguous %s tensor of %d elements (one per "
                     "entry) on the params' device %s, got %s %s on %s", op, tn_dtype_name(pdt), (int)n, d,
                     tn_dtype_name(grad_ema->dtype), TN_SHAPE(grad_ema), tn_device_name(grad_ema->device));
    }
#ifdef TERN_HAVE_CUDA
    if (s == TN_OK && n > 0 && pdev == TN_CUDA)
        return tlist_done(&o.L, tn_cuda_optim_novograd(n, params, grads, exp_avg, grad_ema, model, pdt, o.gdt,
                                                       o.mdt, h));
#endif
    double *sums = s == TN_OK ? malloc(sizeof(double) * (size_t)(2 * n + 1)) : NULL;
    if (s == TN_OK && !sums) s = tn_error(TN_ERR_OOM, "%s: out of memory", op);
    if (s == TN_OK) s = sumsq_lists(op, &o.L, grads, NULL, sums, NULL);
    if (s == TN_OK) {
        double *gscale = sums + n;
        const double gs2 = h->grad_scale * h->grad_scale;
        for (int32_t i = 0; i < n; i++) {
            double g2 = gs2 * sums[i], v;
            if (pdt == TN_F64) {
                double *e = (double *)grad_ema->data + i;
                *e = h->step == 1 ? g2 : h->beta2 * *e + (1.0 - h->beta2) * g2;
                v = *e;
            } else {
                float *e = (float *)grad_ema->data + i;
                *e = (float)(h->step == 1 ? g2 : h->beta2 * (double)*e + (1.0 - h->beta2) * g2);
                v = *e;
            }
            gscale[i] = h->grad_scale / (sqrt(v) + h->eps);
        }
        novo_ctx x = { { params, grads, model, o.gdt, o.mdt }, exp_avg, gscale, *h };
        run_units(&o.L, pdt == TN_F64 ? novo_unit_f64 : pick_novo_unit_f32(), &x);
    }
    free(sums);
    return tlist_done(&o.L, s);
}

/* ---- LARC -------------------------------------------------------------------------------------- */

typedef struct larc_ctx {
    tn_tensor *const *grads;
    tn_tensor *const *params;
    const double *trust; /* (n) */
    const uint8_t *has;  /* (n) */
    double grad_scale, wd;
} larc_ctx;

static void larc_unit(void *vctx, int32_t i, int64_t a, int64_t len, int64_t u) {
    (void)u;
    const larc_ctx *x = vctx;
    const int has = x->has[i];
    if (x->grads[i]->dtype == TN_F64) {
        double *g = (double *)x->grads[i]->data + a;
        const double *w = (const double *)x->params[i]->data + a;
        const double gs = x->grad_scale, wd = x->wd, tr = x->trust[i];
#pragma omp simd
        for (int64_t j = 0; j < len; j++) g[j] = tn_larc_grad_d(g[j], w[j], gs, wd, tr, has);
    } else {
        float *g = (float *)x->grads[i]->data + a;
        const float *w = (const float *)x->params[i]->data + a;
        const float gs = (float)x->grad_scale, wd = (float)x->wd, tr = (float)x->trust[i];
#pragma omp simd
        for (int64_t j = 0; j < len; j++) g[j] = tn_larc_grad_f(g[j], w[j], gs, wd, tr, has);
    }
}

tn_status tn_optim_larc(int32_t n, tn_tensor *const *grads, tn_tensor *const *params, double eta,
                        double eps, double weight_decay, double lr, int32_t clip, double grad_scale) {
    const char *op = "tn_optim_larc";
    int32_t pdt, gdt;
    TN_TRY(check_list(op, "params", n, params, DT_BIT(TN_F32) | DT_BIT(TN_F64), 1, NULL, NULL, &pdt, NULL,
                      NULL));
    tlist L;
    TN_TRY(tlist_init(op, &L, n, params));
    char p0[64];
    snprintf(p0, sizeof p0, "params[%lld]", TN_D(0));
    tn_status s = check_list(op, "grads", n, grads, n > 0 ? DT_BIT(pdt) : DT_FLOAT, 1,
                             L.numel, "params", &gdt, n > 0 ? params[0] : NULL, p0);
    if (s == TN_OK && clip && !(lr > 0))
        s = tn_error(TN_ERR_ARG, "%s: clip mode divides by lr, which must be > 0, got %g", op, lr);
#ifdef TERN_HAVE_CUDA
    if (s == TN_OK && n > 0 && params[0]->device == TN_CUDA)
        return tlist_done(&L, tn_cuda_optim_larc(n, grads, params, pdt, eta, eps, weight_decay, lr, clip,
                                                 grad_scale));
#endif
    double *buf = s == TN_OK ? malloc(sizeof(double) * (size_t)(3 * n + 1)) : NULL;
    uint8_t *has = s == TN_OK ? malloc((size_t)n + 1) : NULL;
    if (s == TN_OK && (!buf || !has)) s = tn_error(TN_ERR_OOM, "%s: out of memory", op);
    if (s == TN_OK) s = sumsq_lists(op, &L, params, grads, buf, buf + n);
    if (s == TN_OK) {
        double *trust = buf + 2 * n;
        for (int32_t i = 0; i < n; i++) {
            /* apex: param_norm = ||p||, grad_norm = ||g||; only when both are nonzero */
            double pn = sqrt(buf[i]), gn = fabs(grad_scale) * sqrt(buf[n + i]);
            has[i] = pn != 0 && gn != 0;
            double tr = has[i] ? eta * pn / (gn + pn * weight_decay + eps) : 1.0;
            if (has[i] && clip) tr = fmin(tr / lr, 1.0);
            trust[i] = tr;
        }
        larc_ctx x = { grads, params, trust, has, grad_scale, weight_decay };
        run_units(&L, larc_unit, &x);
    }
    free(buf);
    free(has);
    return tlist_done(&L, s);
}

/* ---- norms and clipping --------------------------------------------------------------------- */

tn_status tn_optim_norms(tn_tensor *out, int32_t n, tn_tensor *const *ts) {
    const char *op = "tn_optim_norms";
    int32_t dt;
    TN_TRY(tn_check_tensor(op, "out", out));
    TN_TRY(tn_check_backend(op, out));
    TN_TRY(check_list(op, "ts", n, ts, DT_FLOAT, 0, NULL, NULL, &dt, NULL, NULL));
    if (out->dtype != TN_F64 || !tn_tensor_is_contiguous(out) || tn_tensor_numel(out) != n)
        return tn_error(TN_ERR_SHAPE, "%s: out must be a contiguous f64 tensor of %d elements, got %s %s",
                        op, (int)n, tn_dtype_name(out->dtype), TN_SHAPE(out));
    if (n > 0) {
        char t0[64];
        snprintf(t0, sizeof t0, "ts[%lld]", TN_D(0));
        TN_TRY(check_same_device(op, "out", 0, out, t0, ts[0]));
    } else if (out->device != TN_CPU) {
        return TN_OK; /* nothing to compute */
    }
#ifdef TERN_HAVE_CUDA
    if (n > 0 && ts[0]->device == TN_CUDA) return tn_cuda_optim_norms(out, n, ts);
#endif
    tlist L;
    TN_TRY(tlist_init(op, &L, n, ts));
    tn_status s = sumsq_lists(op, &L, ts, NULL, (double *)out->data, NULL);
    if (s == TN_OK)
        for (int32_t i = 0; i < n; i++) ((double *)out->data)[i] = sqrt(((double *)out->data)[i]);
    return tlist_done(&L, s);
}

typedef struct scale_ctx {
    tn_tensor *const *ts;
    double coef;
} scale_ctx;

static void scale_unit(void *vctx, int32_t i, int64_t a, int64_t len, int64_t u) {
    (void)u;
    const scale_ctx *x = vctx;
    char *d = x->ts[i]->data;
    switch (x->ts[i]->dtype) {
    case TN_F64: {
        double *g = (double *)d + a;
        const double c = x->coef;
#pragma omp simd
        for (int64_t j = 0; j < len; j++) g[j] = g[j] * c;
        break;
    }
    case TN_F32: {
        float *g = (float *)d + a;
        const float c = (float)x->coef;
#pragma omp simd
        for (int64_t j = 0; j < len; j++) g[j] = g[j] * c;
        break;
    }
    case TN_F16: {
        uint16_t *g = (uint16_t *)d + a;
        const float c = (float)x->coef;
        for (int64_t j = 0; j < len; j++) g[j] = tn_float_to_half(tn_half_to_float(g[j]) * c);
        break;
    }
    default: {
        uint16_t *g = (uint16_t *)d + a;
        const float c = (float)x->coef;
#pragma omp simd
        for (int64_t j = 0; j < len; j++) g[j] = tn_float_to_bf16(tn_bf16_to_float(g[j]) * c);
        break;
    }
    }
}

tn_status tn_grad_clip_norm(double *total_norm, int32_t n, tn_tensor *const *grads, double max_norm,
                            double grad_scale) {
    const char *op = "tn_grad_clip_norm";
    int32_t dt;
    if (!total_norm) return tn_error(TN_ERR_ARG, "%s: total_norm is NULL", op);
    if (!(max_norm > 0)) return tn_error(TN_ERR_ARG, "%s: max_norm must be > 0, got %g", op, max_norm);
    TN_TRY(check_list(op, "grads", n, grads, DT_FLOAT, 0, NULL, NULL, &dt, NULL, NULL));
#ifdef TERN_HAVE_CUDA
    if (n > 0 && grads[0]->device == TN_CUDA) return tn_cuda_grad_clip_norm(total_norm, n, grads, max_norm, grad_scale);
#endif
    tlist L;
    TN_TRY(tlist_init(op, &L, n, grads));
    double *sums = malloc(sizeof(double) * (size_t)(n + 1));
    tn_status s = sums ? TN_OK : tn_error(TN_ERR_OOM, "%s: out of memory", op);
    if (s == TN_OK) s = sumsq_lists(op, &L, grads, NULL, sums, NULL);
    if (s == TN_OK) {
        double tot = 0;
        for (int32_t i = 0; i < n; i++) tot += sums[i];
        double norm = fabs(grad_scale) * sqrt(tot);
        *total_norm = norm;
        double coef = max_norm / (norm + 1e-6);
        if (isfinite(norm) && coef < 1.0) {
            scale_ctx x = { grads, coef };
            run_units(&L, scale_unit, &x);
        }
    }
    free(sums);
    return tlist_done(&L, s);
}

/* ---- mixed precision: unscale and check --------------------------------------------------- */

typedef struct unscale_ctx {
    tn_tensor *const *out;
    tn_tensor *const *grads;
    double inv;
    double *amax; /* (units) */
    uint8_t *bad; /* (units) */
} unscale_ctx;

TN_OPTIM_INLINE void unscale_unit_body(void *vctx, int32_t i, int64_t a, int64_t len, int64_t u, const int avx) {
    const unscale_ctx *x = vctx;
    const tn_tensor *gt = x->grads[i];
    int fin_all = 1;
    if (gt->dtype == TN_F64) {
        const double *g = (const double *)gt->data + a;
        double *y = (double *)x->out[i]->data + a;
        const double inv = x->inv;
        double mx = 0;
        int fin = 1;
#pragma omp simd reduction(max : mx) reduction(& : fin)
        for (int64_t j = 0; j < len; j++) {
            double v = g[j] * inv;
            int f = (v - v) == 0.0;
            y[j] = v;
            double av = f ? fabs(v) : 0.0;
            mx = av > mx ? av : mx;
            fin &= f;
        }
        x->amax[u] = mx;
        fin_all = fin;
    } else {
        float *y = (float *)x->out[i]->data + a;
        const float inv = (float)x->inv;
        float gb[TN_OPTIM_BLK];
        float mx = 0;
        int fin = 1;
        for (int64_t o = 0; o < len; o += TN_OPTIM_BLK) {
            int64_t nb = len - o < TN_OPTIM_BLK ? len - o : TN_OPTIM_BLK;
            const float *g = grad_block_f32(gb, gt->data, gt->dtype, a + o, nb, avx);
            float *yy = y + o;
#pragma omp simd reduction(max : mx) reduction(& : fin)
            for (int64_t j = 0; j < nb; j++) {
                float v;
                int f;
                float av = tn_unscale_f(g[j], inv, &v, &f);
                yy[j] = v;
                mx = av > mx ? av : mx;
                fin &= f;
            }
        }
        x->amax[u] = mx;
        fin_all = fin;
    }
    x->bad[u] = (uint8_t)!fin_all;
}
static void unscale_unit(void *c, int32_t i, int64_t a, int64_t len, int64_t u) { unscale_unit_body(c, i, a, len, u, 0); }
#ifdef TN_AVX2_BUILD
TN_OPTIM_AVX static void unscale_unit_avx(void *c, int32_t i, int64_t a, int64_t len, int64_t u) {
    unscale_unit_body(c, i, a, len, u, 1);
}
#endif

tn_status tn_amp_unscale_check(int32_t *found_inf, double *amax, int32_t n, tn_tensor *const *out,
                               tn_tensor *const *grads, double inv_scale) {
    const char *op = "tn_amp_unscale_check";
    int32_t dt;
    if (!found_inf || !amax) return tn_error(TN_ERR_ARG, "%s: found_inf and amax must not be NULL", op);
    TN_TRY(check_list(op, "grads", n, grads, DT_FLOAT, 0, NULL, NULL, &dt, NULL, NULL));
    tlist L;
    TN_TRY(tlist_init(op, &L, n, grads));
    char g0[64];
    snprintf(g0, sizeof g0, "grads[%lld]", TN_D(0));
    tn_status s = check_list(op, "out", n, out, DT_BIT(TN_F32) | DT_BIT(TN_F64), 0,
                             L.numel, "grads", &dt, n > 0 ? grads[0] : NULL, g0);
    for (int32_t i = 0; s == TN_OK && i < n; i++) {
        int32_t want = grads[i]->dtype == TN_F64 ? TN_F64 : TN_F32;
        if (out[i]->dtype != want)
            s = tn_error(TN_ERR_DTYPE, "%s: out[%lld] has dtype %s, expected %s for %s grads[%lld]", op, TN_D(i),
                         tn_dtype_name(out[i]->dtype), tn_dtype_name(want), tn_dtype_name(grads[i]->dtype),
                         TN_D(i));
    }
#ifdef TERN_HAVE_CUDA
    if (s == TN_OK && n > 0 && grads[0]->device == TN_CUDA)
        return tlist_done(&L, tn_cuda_amp_unscale_check(found_inf, amax, n, out, grads, inv_scale));
#endif
    int64_t U = L.ustart[n];
    double *amx = s == TN_OK ? malloc(sizeof(double) * (size_t)(U + 1)) : NULL;
    uint8_t *bad = s == TN_OK ? malloc((size_t)U + 1) : NULL;
    if (s == TN_OK && (!amx || !bad)) s = tn_error(TN_ERR_OOM, "%s: out of memory", op);
    if (s == TN_OK) {
        unscale_ctx x = { out, grads, inv_scale, amx, bad };
        unit_fn fn = unscale_unit;
#ifdef TN_AVX2_BUILD
        if (use_avx()) fn = unscale_unit_avx;
#endif
        run_units(&L, fn, &x);
        double mx = 0;
        int any = 0;
        for (int64_t u = 0; u < U; u++) {
            if (amx[u] > mx) mx = amx[u];
            any |= bad[u];
        }
        *found_inf = any;
        *amax = mx;
    }
    free(amx);
    free(bad);
    return tlist_done(&L, s);
}

typedef struct sync_ctx {
    tn_tensor *const *masters;
    tn_tensor *const *model;
} sync_ctx;

TN_OPTIM_INLINE void sync_unit_body(void *vctx, int32_t i, int64_t a, int64_t len, const int avx) {
    const sync_ctx *x = vctx;
    reseed_block((float *)x->masters[i]->data + a, (const uint16_t *)x->model[i]->data + a, x->model[i]->dtype, len,
                 avx);
}
UNIT_COPIES(sync_unit)

tn_status tn_amp_sync_masters(int32_t n, tn_tensor *const *masters, tn_tensor *const *model) {
    const char *op = "tn_amp_sync_masters";
    int32_t dt;
    TN_TRY(check_list(op, "masters", n, masters, DT_BIT(TN_F32), 1, NULL, NULL, &dt, NULL, NULL));
    tlist L;
    TN_TRY(tlist_init(op, &L, n, masters));
    char m0[64];
    snprintf(m0, sizeof m0, "masters[%lld]", TN_D(0));
    tn_status s = check_list(op, "model", n, model, DT_HALF, 1, L.numel, "masters", &dt,
                             n > 0 ? masters[0] : NULL, m0);
#ifdef TERN_HAVE_CUDA
    if (s == TN_OK && n > 0 && masters[0]->device == TN_CUDA)
        return tlist_done(&L, tn_cuda_amp_sync_masters(n, masters, model));
#endif
    if (s == TN_OK) {
        sync_ctx x = { masters, model };
        run_units(&L, pick_sync_unit(), &x);
    }
    return tlist_done(&L, s);
}

/* ---- zero ---------------------------------------------------------------------------------------- */

typedef struct zero_ctx {
    tn_tensor *const *ts;
} zero_ctx;

static void zero_unit(void *vctx, int32_t i, int64_t a, int64_t len, int64_t u) {
    (void)u;
    const zero_ctx *x = vctx;
    size_t es = tn_dtype_size(x->ts[i]->dtype);
    memset(x->ts[i]->data + (size_t)a * es, 0, (size_t)len * es); /* all-zero bits are +0 in every dtype */
}

tn_status tn_optim_zero(int32_t n, tn_tensor *const *ts) {
    const char *op = "tn_optim_zero";
    int32_t dt;
    TN_TRY(check_list(op, "ts", n, ts, 0x7fu, 0, NULL, NULL, &dt, NULL, NULL));
#ifdef TERN_HAVE_CUDA
    if (n > 0 && ts[0]->device == TN_CUDA) return tn_cuda_optim_zero(n, ts);
#endif
    tlist L;
    TN_TRY(tlist_init(op, &L, n, ts));
    zero_ctx x = { ts };
    run_units(&L, zero_unit, &x);
    return tlist_done(&L, TN_OK);
}
