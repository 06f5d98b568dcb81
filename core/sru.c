/*
 * sru.c — tn_sru_forward / tn_sru_backward: the elementwise recurrence of the `sru` package
 * 2.x (elementwise_recurrence_naive in sru/ops.py) on the CPU, f32 and f64.
 *
 * Devices: every tensor must be on U's device. CUDA tensors (builds with TERN_HAVE_CUDA) go,
 * after the checks below, to cuda/sru.cu (same semantics; there f16 / bf16 tensors are
 * accepted too, with the recurrence in f32); a CPU-only build refuses them.
 *
 * Gradient policy: activation gradients (grad_U, grad_x, grad_c0) are written (=); parameter
 * gradients (grad_weight_c, grad_bias) accumulate (+=). grad_x, when given but unused by the
 * recurrence (k == 4 or no skip term), is filled with zeros. grad_weight_c with weight_c NULL
 * (v1) gets the gradient at v = 0.
 *
 * Work layout: a column is one (b, dir, j); a tile is up to TN_SRU_TILE consecutive j of one
 * (b, dir), so every per-step access of a tile is one contiguous run (U's run is k times
 * longer: its innermost dim is k). Each tile walks time once (forward in its direction's
 * order, backward in reverse) with its cell state in a stack array. Per step, U's run is split
 * into k contiguous stack arrays (grad_U merged back after), then an `omp simd` loop over j
 * calls the per-element step of kernels/sru.h on full vectors. Tiles are split over OpenMP
 * threads (static chunks); work below TN_SRU_PAR_MIN elements runs serially without entering
 * a parallel region. f32 has an AVX2 + FMA copy picked at run time (see sru_pick).
 *
 * Determinism: the tiling depends on the shapes only, and the parameter gradients are summed
 * without atomics: each tile accumulates its columns over time in registers, writes the
 * per-(b, column) partial sums to a scratch buffer (B, 4, D*d), and a second pass reduces
 * them over b in a fixed order (in double) and adds them to grad_weight_c / grad_bias. The
 * results are bit-identical for any thread count.
 *
 * Padding (mask_pad nonzero at (t, b)) follows the package: c carries (c_t = c_{t-1}), h = 0;
 * backward, the gradient of c passes through unchanged and U, x get zero gradient there.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kernels/sru.h"

#ifdef TERN_HAVE_CUDA
/* cuda/sru.cu: the same calls on CUDA tensors, after the checks below (a filled in except the
 * CPU-only partial buffer). Queued on the current stream; no host synchronisation. Forward
 * handles L == 0 (c_last = c0 or zeros); backward everything after the checks (grad_x zeros
 * when unused, L == 0, the (B, 4, D*d) partials and their reduction into the += gradients). */
tn_status tn_cuda_sru_forward(const tn_sru_args *a);
tn_status tn_cuda_sru_backward(const tn_sru_args *a, void *grad_x_all, void *grad_weight_c, void *grad_bias);
#endif

#ifndef TN_SRU_TILE
#define TN_SRU_TILE 256 /* columns (consecutive j) per tile; 64..512 measured alike */
#endif
#define TN_SRU_PAR_MIN 32768 /* L*B*D*d below which no parallel region is entered */

#if defined(__GNUC__)
#define TN_SRU_INLINE static inline __attribute__((always_inline))
#else
#define TN_SRU_INLINE static inline
#endif

/* Everything a tile needs (tn_sru_args of kernels/sru.h, shared with cuda/sru.cu). */
typedef tn_sru_args sru_args;

/* ---- per-tile loops, one body per dtype ------------------------------------------------------
 * SRU_FWD_TILE / SRU_BWD_TILE define static always-inline functions taking k, skip, act as
 * compile-time constants (the dispatchers below call them with literals), so each of the
 * eight variants is its own loop with U's stride known and the unused terms gone. SIMD is the
 * pragma of the loop over j. */

/* U's innermost dim is k: a step of a tile reads n*k interleaved values. Splitting them into
 * k contiguous arrays first (and merging grad_U back after) lets the math loop run on full
 * vectors; gcc vectorises a stride-3 access itself only two floats wide on SSE2. */
#define SRU_SPLIT_MERGE(T, SFX)                                                                    \
    TN_SRU_INLINE void sru_split_##SFX(const T *restrict u, int64_t n, const int K, T *restrict u0, \
                                       T *restrict u1, T *restrict u2, T *restrict u3) {           \
        for (int64_t j = 0; j < n; j++) {                                                          \
            u0[j] = u[j * K];                                                                      \
            u1[j] = u[j * K + 1];                                                                  \
            u2[j] = u[j * K + 2];                                                                  \
            if (K == 4) u3[j] = u[j * K + 3];                                                      \
        }                                                                                          \
    }                                                                                              \
    TN_SRU_INLINE void sru_merge_##SFX(T *restrict g, int64_t n, const int K, const T *restrict g0, \
                                       const T *restrict g1, const T *restrict g2,                 \
                                       const T *restrict g3) {                                     \
        for (int64_t j = 0; j < n; j++) {                                                          \
            g[j * K] = g0[j];                                                                      \
            g[j * K + 1] = g1[j];                                                                  \
            g[j * K + 2] = g2[j];                                                                  \
            if (K == 4) g[j * K + 3] = g3[j];                                                      \
        }                                                                                          \
    }
SRU_SPLIT_MERGE(float, f)
SRU_SPLIT_MERGE(double, d)

#define SRU_FWD_TILE(T, SFX, SIMD)                                                                       \
    TN_SRU_INLINE void sru_fwd_tile_##SFX(const sru_args *a, int64_t b, int64_t dir, int64_t j0,   \
                                          int64_t n, const int K, const int skip, const int act) { \
        const int64_t L = a->L, B = a->B, Dd = a->Dd, col0 = dir * a->d + j0;                      \
        const T sx = (T)a->scale_x;                                                                \
        T cp[TN_SRU_TILE], ones[TN_SRU_TILE], zeros[TN_SRU_TILE];                                  \
        T u0[TN_SRU_TILE], u1[TN_SRU_TILE], u2[TN_SRU_TILE], u3[TN_SRU_TILE];                      \
        for (int64_t j = 0; j < n; j++) ones[j] = 1, zeros[j] = 0;                                 \
        const T *wc = (const T *)a->weight_c, *bs = (const T *)a->bias;                            \
        const T *restrict vf = wc ? wc + col0 : zeros, *restrict vr = wc ? wc + Dd + col0 : zeros; \
        const T *restrict bf = bs + col0, *restrict br = bs + Dd + col0;                           \
        const T *restrict mc = a->mask_c ? (const T *)a->mask_c + b * Dd + col0 : ones;            \
        if (a->c0) memcpy(cp, (const T *)a->c0 + b * Dd + col0, (size_t)n * sizeof(T));           \
        else memset(cp, 0, (size_t)n * sizeof(T));                                                 \
        for (int64_t s = 0; s < L; s++) {                                                          \
            const int64_t t = dir ? L - 1 - s : s, row = (t * B + b) * Dd + col0;                  \
            T *restrict hr = (T *)a->h + row, *restrict cr = (T *)a->c + row;                      \
            if (a->mask_pad && a->mask_pad[t * B + b]) {                                           \
                for (int64_t j = 0; j < n; j++) cr[j] = cp[j], hr[j] = 0;                          \
                continue;                                                                          \
            }                                                                                      \
            sru_split_##SFX((const T *)a->U + row * K, n, K, u0, u1, u2, u3);                      \
            const T *restrict xr = (K == 3 && skip) ? (const T *)a->x + row : zeros;               \
            SIMD for (int64_t j = 0; j < n; j++) {                                       \
                const T xp = K == 4 ? u3[j] : sx * xr[j];                                          \
                T hv;                                                                              \
                const T cn = tn_sru_fwd_##SFX(u0[j], u1[j], u2[j], xp, vf[j], vr[j], bf[j], br[j],  \
                                              mc[j], cp[j], act, skip, &hv);                       \
                cp[j] = cn;                                                                        \
                cr[j] = cn;                                                                        \
                hr[j] = hv;                                                                        \
            }                                                                                      \
        }                                                                                          \
        memcpy((T *)a->c_last + b * Dd + col0, cp, (size_t)n * sizeof(T));                         \
    }

#define SRU_BWD_TILE(T, SFX, SIMD)                                                                       \
    TN_SRU_INLINE void sru_bwd_tile_##SFX(const sru_args *a, int64_t b, int64_t dir, int64_t j0,   \
                                          int64_t n, const int K, const int skip, const int act) { \
        const int64_t L = a->L, B = a->B, Dd = a->Dd, col0 = dir * a->d + j0;                      \
        const T sx = (T)a->scale_x;                                                                \
        T gc[TN_SRU_TILE], ones[TN_SRU_TILE], zeros[TN_SRU_TILE], sink[TN_SRU_TILE];               \
        T avf[TN_SRU_TILE], avr[TN_SRU_TILE], abf[TN_SRU_TILE], abr[TN_SRU_TILE];                  \
        T u0[TN_SRU_TILE], u1[TN_SRU_TILE], u2[TN_SRU_TILE], u3[TN_SRU_TILE];                      \
        T g0[TN_SRU_TILE], g1[TN_SRU_TILE], g2[TN_SRU_TILE], g3[TN_SRU_TILE];                      \
        for (int64_t j = 0; j < n; j++)                                                            \
            ones[j] = 1, zeros[j] = 0, avf[j] = 0, avr[j] = 0, abf[j] = 0, abr[j] = 0;             \
        const T *wc = (const T *)a->weight_c, *bs = (const T *)a->bias;                            \
        const T *restrict vf = wc ? wc + col0 : zeros, *restrict vr = wc ? wc + Dd + col0 : zeros; \
        const T *restrict bf = bs + col0, *restrict br = bs + Dd + col0;                           \
        const T *restrict mc = a->mask_c ? (const T *)a->mask_c + b * Dd + col0 : ones;            \
        const T *c0r = a->c0 ? (const T *)a->c0 + b * Dd + col0 : zeros;                           \
        if (a->grad_c_last) memcpy(gc, (const T *)a->grad_c_last + b * Dd + col0, (size_t)n * sizeof(T)); \
        else memset(gc, 0, (size_t)n * sizeof(T));                                                 \
        for (int64_t s = L - 1; s >= 0; s--) {                                                     \
            const int64_t t = dir ? L - 1 - s : s, row = (t * B + b) * Dd + col0;                  \
            T *restrict gu = (T *)a->grad_U + row * K;                                             \
            T *restrict gxr = (K == 3 && skip && a->grad_x) ? (T *)a->grad_x + row : sink;         \
            if (a->mask_pad && a->mask_pad[t * B + b]) {                                           \
                memset(gu, 0, (size_t)(n * K) * sizeof(T));                                        \
                if (K == 3 && skip && a->grad_x) memset(gxr, 0, (size_t)n * sizeof(T));            \
                continue;                                                                          \
            }                                                                                      \
            const int64_t tp = dir ? t + 1 : t - 1;                                                \
            const T *restrict cpr = s == 0 ? c0r : (const T *)a->c + (tp * B + b) * Dd + col0;      \
            sru_split_##SFX((const T *)a->U + row * K, n, K, u0, u1, u2, u3);                      \
            const T *restrict xr = (K == 3 && skip) ? (const T *)a->x + row : zeros;               \
            const T *restrict ghr = (const T *)a->grad_h + row;                                    \
            SIMD for (int64_t j = 0; j < n; j++) {                                       \
                const T xp = K == 4 ? u3[j] : sx * xr[j];                                          \
                const T cpj = cpr[j];                                                              \
                T du0, du1, du2, dxp;                                                              \
                gc[j] = tn_sru_bwd_##SFX(u0[j], u1[j], u2[j], xp, vf[j], vr[j], bf[j], br[j],       \
                                         mc[j], cpj, ghr[j], gc[j], act, skip, &du0, &du1, &du2,   \
                                         &dxp);                                                    \
                g0[j] = du0;                                                                       \
                g1[j] = du1;                                                                       \
                g2[j] = du2;                                                                       \
                g3[j] = dxp;                                                                       \
                gxr[j] = sx * dxp;                                                                 \
                avf[j] += du1 * cpj;                                                               \
                avr[j] += du2 * cpj;                                                               \
                abf[j] += du1;                                                                     \
                abr[j] += du2;                                                                     \
            }                                                                                      \
            sru_merge_##SFX(gu, n, K, g0, g1, g2, g3);                                             \
        }                                                                                          \
        if (a->grad_c0) memcpy((T *)a->grad_c0 + b * Dd + col0, gc, (size_t)n * sizeof(T));       \
        T *pt = (T *)a->partial + b * 4 * Dd + col0;                                               \
        memcpy(pt, avf, (size_t)n * sizeof(T));                                                    \
        memcpy(pt + Dd, avr, (size_t)n * sizeof(T));                                               \
        memcpy(pt + 2 * Dd, abf, (size_t)n * sizeof(T));                                           \
        memcpy(pt + 3 * Dd, abr, (size_t)n * sizeof(T));                                           \
    }

/* f64 calls libm's exp and tanh, which do not vectorise without -ffast-math: no simd pragma */
#define SRU_SIMD _Pragma("omp simd")
#define SRU_NO_SIMD
SRU_FWD_TILE(float, f, SRU_SIMD)
SRU_FWD_TILE(double, d, SRU_NO_SIMD)
SRU_BWD_TILE(float, f, SRU_SIMD)
SRU_BWD_TILE(double, d, SRU_NO_SIMD)

/* One tile by index: tiles run over (b, dir, j-tile) with j-tiles innermost. The switch hands
 * the variant's constants to the always-inline body. */
#define SRU_DISPATCH(FN, a, tile)                                                                  \
    do {                                                                                           \
        const int64_t ntj_ = ((a)->d + TN_SRU_TILE - 1) / TN_SRU_TILE, jt_ = (tile) % ntj_;        \
        const int64_t bd_ = (tile) / ntj_, b_ = bd_ / (a)->D, dir_ = bd_ % (a)->D;                 \
        const int64_t j0_ = jt_ * TN_SRU_TILE;                                                     \
        const int64_t n_ = (a)->d - j0_ < TN_SRU_TILE ? (a)->d - j0_ : TN_SRU_TILE;                \
        switch (((a)->k == 4) * 4 + (a)->skip * 2 + (a)->act) {                                    \
        case 0: FN(a, b_, dir_, j0_, n_, 3, 0, 0); break;                                          \
        case 1: FN(a, b_, dir_, j0_, n_, 3, 0, 1); break;                                          \
        case 2: FN(a, b_, dir_, j0_, n_, 3, 1, 0); break;                                          \
        case 3: FN(a, b_, dir_, j0_, n_, 3, 1, 1); break;                                          \
        case 4: FN(a, b_, dir_, j0_, n_, 4, 0, 0); break;                                          \
        case 5: FN(a, b_, dir_, j0_, n_, 4, 0, 1); break;                                          \
        case 6: FN(a, b_, dir_, j0_, n_, 4, 1, 0); break;                                          \
        default: FN(a, b_, dir_, j0_, n_, 4, 1, 1); break;                                         \
        }                                                                                          \
    } while (0)

typedef void (*sru_tile_fn)(const sru_args *, int64_t);

static void sru_fwd_tile_f32(const sru_args *a, int64_t tile) { SRU_DISPATCH(sru_fwd_tile_f, a, tile); }
static void sru_fwd_tile_f64(const sru_args *a, int64_t tile) { SRU_DISPATCH(sru_fwd_tile_d, a, tile); }
static void sru_bwd_tile_f32(const sru_args *a, int64_t tile) { SRU_DISPATCH(sru_bwd_tile_f, a, tile); }
static void sru_bwd_tile_f64(const sru_args *a, int64_t tile) { SRU_DISPATCH(sru_bwd_tile_d, a, tile); }

/* The build targets baseline x86-64 (SSE2). On x86-64 the f32 tiles are compiled a second time
 * for AVX2 + FMA and picked at run time when the CPU has both: eight lanes instead of four and
 * fused multiply-adds make the recurrence about 2.5x faster. The same variant runs every tile
 * of a call, so results stay independent of the thread count (they may differ in the last bits
 * between a CPU with and one without AVX2). f64 calls libm's exp and gains nothing here. */
#if defined(TN_AVX2_BUILD) && !defined(TN_SRU_NO_AVX2)
#define TN_SRU_AVX2 1
__attribute__((target("avx2,fma"))) static void sru_fwd_tile_f32_avx2(const sru_args *a, int64_t tile) {
    SRU_DISPATCH(sru_fwd_tile_f, a, tile);
}
__attribute__((target("avx2,fma"))) static void sru_bwd_tile_f32_avx2(const sru_args *a, int64_t tile) {
    SRU_DISPATCH(sru_bwd_tile_f, a, tile);
}
#endif

static sru_tile_fn sru_pick(int32_t dtype, int backward) {
#ifdef TN_SRU_AVX2
    if (dtype == TN_F32 && tn_cpu_has_avx2_fma()) return backward ? sru_bwd_tile_f32_avx2 : sru_fwd_tile_f32_avx2;
#endif
    if (dtype == TN_F32) return backward ? sru_bwd_tile_f32 : sru_fwd_tile_f32;
    return backward ? sru_bwd_tile_f64 : sru_fwd_tile_f64;
}

/* Runs fn over every tile: statically chunked over the OpenMP threads when the work is large
 * enough, else a plain loop. */
static void sru_run_tiles(const sru_args *a, sru_tile_fn fn) {
    const int64_t ntiles = a->B * a->D * ((a->d + TN_SRU_TILE - 1) / TN_SRU_TILE);
    const double work = (double)a->L * (double)a->B * (double)a->Dd;
    if (ntiles > 1 && work >= TN_SRU_PAR_MIN) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < ntiles; i++) fn(a, i);
    } else {
        for (int64_t i = 0; i < ntiles; i++) fn(a, i);
    }
}

/* ---- argument checks ---------------------------------------------------------------------- */

/* t must be a contiguous tensor of dtype want on U's device (name for messages). */
static tn_status sru_check_layout(const char *op, const char *name, const tn_tensor *t, int32_t want,
                                  const tn_tensor *U) {
    /* every tensor on U's device: the CPU, or CUDA in a build with CUDA (cuda/sru.cu) */
    if (t->device != U->device || t->device_index != U->device_index)
        return tn_error(TN_ERR_DEVICE, "%s: argument '%s' (shape %s) is on %s:%d but U (shape %s) is on %s:%d; all "
                        "tensors must be on one device", op, name, TN_SHAPE(t), tn_device_name(t->device),
                        t->device_index, TN_SHAPE(U), tn_device_name(U->device), U->device_index);
    if (t == U) TN_TRY(tn_check_backend(op, t)); /* "not implemented for cuda tensors in this build" */
    if (t->dtype != want) {
        if (want == TN_U8)
            return tn_error(TN_ERR_DTYPE, "%s: argument '%s' (shape %s) must be u8, got %s", op, name,
                            TN_SHAPE(t), tn_dtype_name(t->dtype));
        return tn_error(TN_ERR_DTYPE,
                        "%s: argument '%s' (shape %s) has dtype %s but U (shape %s) has %s; all float "
                        "tensors must share U's dtype",
                        op, name, TN_SHAPE(t), tn_dtype_name(t->dtype), TN_SHAPE(U), tn_dtype_name(want));
    }
    if (!tn_tensor_is_contiguous(t))
        return tn_error(TN_ERR_ARG, "%s: argument '%s' (shape %s, strides %s) must be contiguous", op, name,
                        TN_SHAPE(t), TN_DIMS(t->ndim, t->strides));
    return TN_OK;
}

/* Exact shape check: t must have shape (n, shape) — the message names both shapes and what
 * they derive from. */
static tn_status sru_check_shape(const char *op, const char *name, const tn_tensor *t, int32_t n,
                                 const int64_t *shape, const char *expect) {
    int ok = t->ndim == n;
    for (int32_t i = 0; ok && i < n; i++) ok = t->shape[i] == shape[i];
    if (!ok)
        return tn_error(TN_ERR_SHAPE, "%s: argument '%s' has shape %s, expected %s = %s", op, name, TN_SHAPE(t),
                        expect, TN_DIMS(n, shape));
    return TN_OK;
}

/* weight_c / bias and their gradients: 2*D*d values, as (2*D*d), (2, D*d) or (2, D, d). */
static tn_status sru_check_param(const char *op, const char *name, const tn_tensor *t, const sru_args *a) {
    const int64_t *s = t->shape;
    int ok = (t->ndim == 1 && s[0] == 2 * a->Dd) || (t->ndim == 2 && s[0] == 2 && s[1] == a->Dd) ||
             (t->ndim == 3 && s[0] == 2 && s[1] == a->D && s[2] == a->d);
    if (!ok)
        return tn_error(TN_ERR_SHAPE, "%s: argument '%s' has shape %s, expected (2*D*d) = [%lld] (D = %lld, d = %lld)",
                        op, name, TN_SHAPE(t), (long long)(2 * a->Dd), (long long)a->D, (long long)a->d);
    return TN_OK;
}

/* Common part of forward and backward: sizes from U and ref (h forward, grad_h backward),
 * then every optional input. */
static tn_status sru_check_common(const char *op, sru_args *a, const tn_tensor *ref, const char *refname,
                                  const tn_tensor *U, const tn_tensor *x, const tn_tensor *weight_c,
                                  const tn_tensor *bias, const tn_tensor *c0, const tn_tensor *mask_c,
                                  const tn_tensor *mask_pad, double scale_x, int32_t activation,
                                  int32_t has_skip, int32_t bidirectional) {
    TN_TRY(tn_check_tensor(op, "U", U));
    TN_TRY(tn_check_tensor(op, refname, ref));
    TN_TRY(tn_check_tensor(op, "bias", bias));
    if (activation != 0 && activation != 1)
        return tn_error(TN_ERR_ARG, "%s: activation must be 0 (identity) or 1 (tanh), got %d", op, activation);
    TN_TRY(sru_check_layout(op, "U", U, U->dtype, U)); /* device first: the dtypes allowed depend on it */
    /* CUDA also takes f16 / bf16 (the recurrence runs in f32 there); the CPU loops f32 / f64 */
    const int half_ok = U->device == TN_CUDA && (U->dtype == TN_F16 || U->dtype == TN_BF16);
    if (U->dtype != TN_F32 && U->dtype != TN_F64 && !half_ok)
        return tn_error(TN_ERR_DTYPE, "%s: argument 'U' (shape %s) must be f32 or f64%s, got %s", op, TN_SHAPE(U),
                        U->device == TN_CUDA ? " (or f16 / bf16 on cuda)" : "", tn_dtype_name(U->dtype));
    const int32_t dt = U->dtype;
    TN_TRY(sru_check_layout(op, refname, ref, dt, U));
    if (U->ndim != 3)
        return tn_error(TN_ERR_SHAPE, "%s: argument 'U' must be 3-D (L, B, D*d*k), got shape %s", op, TN_SHAPE(U));
    if (ref->ndim != 3)
        return tn_error(TN_ERR_SHAPE, "%s: argument '%s' must be 3-D (L, B, D*d), got shape %s", op, refname,
                        TN_SHAPE(ref));
    a->L = U->shape[0];
    a->B = U->shape[1];
    a->D = bidirectional ? 2 : 1;
    if (ref->shape[0] != a->L || ref->shape[1] != a->B || ref->shape[2] % a->D != 0)
        return tn_error(TN_ERR_SHAPE,
                        "%s: argument '%s' has shape %s, expected (L, B, D*d) with L, B from U (shape %s)%s", op,
                        refname, TN_SHAPE(ref), TN_SHAPE(U), a->D == 2 ? " and an even last dim (bidirectional)" : "");
    a->Dd = ref->shape[2];
    a->d = a->Dd / a->D;
    if (a->Dd == 0 ? U->shape[2] != 0 : (U->shape[2] % a->Dd != 0 || (U->shape[2] / a->Dd != 3 && U->shape[2] / a->Dd != 4)))
        return tn_error(TN_ERR_SHAPE,
                        "%s: argument 'U' has shape %s but '%s' has shape %s: U's last dim must be D*d*k with "
                        "D*d = %lld and k = 3 or 4",
                        op, TN_SHAPE(U), refname, TN_SHAPE(ref), (long long)a->Dd);
    a->k = a->Dd == 0 ? 3 : U->shape[2] / a->Dd;
    a->dtype = dt;
    a->act = activation;
    a->skip = has_skip != 0;
    a->scale_x = scale_x;

    const int64_t lbd[3] = {a->L, a->B, a->Dd}, bd[2] = {a->B, a->Dd}, lb[2] = {a->L, a->B};
    TN_TRY(sru_check_layout(op, "bias", bias, dt, U));
    TN_TRY(sru_check_param(op, "bias", bias, a));
    if (weight_c) {
        TN_TRY(sru_check_layout(op, "weight_c", weight_c, dt, U));
        TN_TRY(sru_check_param(op, "weight_c", weight_c, a));
    }
    if (a->k == 3 && a->skip) {
        if (!x)
            return tn_error(TN_ERR_ARG, "%s: argument 'x' is NULL but has_skip is set and k = 3 (U shape %s): "
                            "the skip term needs x (L, B, D*d)", op, TN_SHAPE(U));
        TN_TRY(sru_check_layout(op, "x", x, dt, U));
        TN_TRY(sru_check_shape(op, "x", x, 3, lbd, "(L, B, D*d)"));
    }
    if (c0) {
        TN_TRY(sru_check_layout(op, "c0", c0, dt, U));
        TN_TRY(sru_check_shape(op, "c0", c0, 2, bd, "(B, D*d)"));
    }
    if (mask_c) {
        TN_TRY(sru_check_layout(op, "mask_c", mask_c, dt, U));
        TN_TRY(sru_check_shape(op, "mask_c", mask_c, 2, bd, "(B, D*d)"));
    }
    if (mask_pad) {
        TN_TRY(sru_check_layout(op, "mask_pad", mask_pad, TN_U8, U));
        TN_TRY(sru_check_shape(op, "mask_pad", mask_pad, 2, lb, "(L, B)"));
    }
    a->U = U->data;
    a->x = (a->k == 3 && a->skip) ? x->data : NULL; /* x is not read otherwise (its size may differ) */
    a->weight_c = weight_c ? weight_c->data : NULL;
    a->bias = bias->data;
    a->c0 = c0 ? c0->data : NULL;
    a->mask_c = mask_c ? mask_c->data : NULL;
    a->mask_pad = mask_pad ? (const uint8_t *)mask_pad->data : NULL;
    return TN_OK;
}

/* A required or optional tensor of U's dtype with an exact shape. */
static tn_status sru_check_arg(const char *op, const char *name, const tn_tensor *t, int required,
                               const tn_tensor *U, int32_t n, const int64_t *shape, const char *expect) {
    if (!t) return required ? tn_error(TN_ERR_ARG, "%s: argument '%s' is NULL", op, name) : TN_OK;
    TN_TRY(sru_check_layout(op, name, t, U->dtype, U));
    return sru_check_shape(op, name, t, n, shape, expect);
}

/* grad_weight_c / grad_bias += the partials (B, 4, D*d) summed over b in order, for the
 * reduced entries i0 .. i1-1 of (4 - q0, D*d); q0 = 2 skips weight_c. */
static void sru_reduce(const sru_args *a, void *gw, void *gb, int64_t q0, int64_t i0, int64_t i1) {
    const int64_t Dd = a->Dd, B = a->B;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t q = q0 + i / Dd, col = i % Dd, o = (q & 1) * Dd + col;
        double sum = 0;
        if (a->dtype == TN_F32) {
            const float *p = (const float *)a->partial + q * Dd + col;
            for (int64_t b = 0; b < B; b++) sum += p[b * 4 * Dd];
            float *g = (float *)(q < 2 ? gw : gb) + o;
            *g = (float)((double)*g + sum);
        } else {
            const double *p = (const double *)a->partial + q * Dd + col;
            for (int64_t b = 0; b < B; b++) sum += p[b * 4 * Dd];
            double *g = (double *)(q < 2 ? gw : gb) + o;
            *g += sum;
        }
    }
}

/* ---- entry points ------------------------------------------------------------------------- */

tn_status tn_sru_forward(tn_tensor *h, tn_tensor *c, tn_tensor *c_last, const tn_tensor *U, const tn_tensor *x,
                         const tn_tensor *weight_c, const tn_tensor *bias, const tn_tensor *c0,
                         const tn_tensor *mask_c, const tn_tensor *mask_pad, double scale_x, int32_t activation,
                         int32_t has_skip, int32_t bidirectional) {
    const char *op = "sru_forward";
    sru_args a;
    memset(&a, 0, sizeof a);
    TN_TRY(tn_check_tensor(op, "h", h));
    TN_TRY(sru_check_common(op, &a, h, "h", U, x, weight_c, bias, c0, mask_c, mask_pad, scale_x, activation,
                            has_skip, bidirectional));
    const int64_t lbd[3] = {a.L, a.B, a.Dd}, bd[2] = {a.B, a.Dd};
    TN_TRY(sru_check_arg(op, "c", c, 1, U, 3, lbd, "(L, B, D*d)"));
    TN_TRY(sru_check_arg(op, "c_last", c_last, 1, U, 2, bd, "(B, D*d)"));
    a.h = h->data;
    a.c = c->data;
    a.c_last = c_last->data;
#ifdef TERN_HAVE_CUDA
    if (U->device == TN_CUDA) return tn_cuda_sru_forward(&a);
#endif
    if (a.L == 0) { /* no steps: the last state is the initial one */
        if (c0) memcpy(c_last->data, c0->data, (size_t)(a.B * a.Dd) * tn_dtype_size(U->dtype));
        else memset(c_last->data, 0, (size_t)(a.B * a.Dd) * tn_dtype_size(U->dtype));
        return TN_OK;
    }
    sru_run_tiles(&a, sru_pick(U->dtype, 0));
    return TN_OK;
}

tn_status tn_sru_backward(tn_tensor *grad_U, tn_tensor *grad_x, tn_tensor *grad_weight_c, tn_tensor *grad_bias,
                          tn_tensor *grad_c0, const tn_tensor *grad_h, const tn_tensor *grad_c_last,
                          const tn_tensor *U, const tn_tensor *x, const tn_tensor *weight_c, const tn_tensor *bias,
                          const tn_tensor *c0, const tn_tensor *c, const tn_tensor *mask_c,
                          const tn_tensor *mask_pad, double scale_x, int32_t activation, int32_t has_skip,
                          int32_t bidirectional) {
    const char *op = "sru_backward";
    sru_args a;
    memset(&a, 0, sizeof a);
    TN_TRY(sru_check_common(op, &a, grad_h, "grad_h", U, x, weight_c, bias, c0, mask_c, mask_pad, scale_x,
                            activation, has_skip, bidirectional));
    const int64_t lbd[3] = {a.L, a.B, a.Dd}, bd[2] = {a.B, a.Dd};
    TN_TRY(sru_check_arg(op, "c", c, 1, U, 3, lbd, "(L, B, D*d)"));
    TN_TRY(sru_check_arg(op, "grad_U", grad_U, 1, U, 3, U->shape, "U's shape"));
    TN_TRY(sru_check_arg(op, "grad_x", grad_x, 0, U, 3, lbd, "(L, B, D*d)"));
    TN_TRY(sru_check_arg(op, "grad_c0", grad_c0, 0, U, 2, bd, "(B, D*d)"));
    TN_TRY(sru_check_arg(op, "grad_c_last", grad_c_last, 0, U, 2, bd, "(B, D*d)"));
    TN_TRY(tn_check_tensor(op, "grad_bias", grad_bias));
    TN_TRY(sru_check_layout(op, "grad_bias", grad_bias, U->dtype, U));
    TN_TRY(sru_check_param(op, "grad_bias", grad_bias, &a));
    if (grad_weight_c) {
        TN_TRY(sru_check_layout(op, "grad_weight_c", grad_weight_c, U->dtype, U));
        TN_TRY(sru_check_param(op, "grad_weight_c", grad_weight_c, &a));
    }
    const size_t es = tn_dtype_size(U->dtype);
    const int64_t nbd = a.B * a.Dd;
    a.c = (void *)c->data;
    a.grad_U = grad_U->data;
    a.grad_x = (grad_x && a.k == 3 && a.skip) ? grad_x->data : NULL; /* the recurrence's x' only */
    a.grad_c0 = grad_c0 ? grad_c0->data : NULL;
    a.grad_h = grad_h->data;
    a.grad_c_last = grad_c_last ? grad_c_last->data : NULL;
#ifdef TERN_HAVE_CUDA
    if (U->device == TN_CUDA)
        return tn_cuda_sru_backward(&a, grad_x ? grad_x->data : NULL, grad_weight_c ? grad_weight_c->data : NULL,
                                    grad_bias->data);
#endif
    /* grad_x is written only where x' = scale_x * x; elsewhere it is zero */
    if (grad_x && !(a.k == 3 && a.skip)) memset(grad_x->data, 0, (size_t)(a.L * nbd) * es);
    if (a.L == 0) { /* no steps: d c_last / d c0 = identity */
        if (grad_c0) {
            if (grad_c_last) memcpy(grad_c0->data, grad_c_last->data, (size_t)nbd * es);
            else memset(grad_c0->data, 0, (size_t)nbd * es);
        }
        return TN_OK;
    }
    if (nbd == 0) return TN_OK;
    a.partial = malloc((size_t)(4 * nbd) * es);
    if (!a.partial)
        return tn_error(TN_ERR_OOM, "%s: cannot allocate %zu bytes of scratch for (B, 4, D*d) = [%lld, 4, %lld]", op,
                        (size_t)(4 * nbd) * es, (long long)a.B, (long long)a.Dd);
    sru_run_tiles(&a, sru_pick(U->dtype, 1));

    /* Reduce the partials over b in a fixed order; q = 0, 1 go to weight_c (v_f, v_r), q = 2, 3
     * to bias (b_f, b_r); both are laid out (2, D*d). */
    const int64_t q0 = grad_weight_c ? 0 : 2, nred = (4 - q0) * a.Dd;
    void *gw = grad_weight_c ? grad_weight_c->data : NULL;
    if ((double)nred * (double)a.B >= TN_SRU_PAR_MIN) {
        const int64_t nchunks = (nred + 255) / 256;
#pragma omp parallel for schedule(static)
        for (int64_t ch = 0; ch < nchunks; ch++)
            sru_reduce(&a, gw, grad_bias->data, q0, ch * 256, ch * 256 + 256 < nred ? ch * 256 + 256 : nred);
    } else {
        sru_reduce(&a, gw, grad_bias->data, q0, 0, nred);
    }
    free(a.partial);
    return TN_OK;
}
