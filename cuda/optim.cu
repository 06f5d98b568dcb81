/*
 * cuda/optim.cu — the CUDA backend of core/optim.c: tn_optim_sgd, tn_optim_adam (AdamW),
 * tn_optim_novograd, tn_optim_larc, tn_optim_norms, tn_grad_clip_norm, tn_amp_unscale_check,
 * tn_amp_sync_masters and tn_optim_zero on lists of CUDA tensors.
 *
 * core/optim.c checks the lists (contiguous, dtypes, sizes, every entry on the device of
 * params[0] / ts[0]) and computes the coefficient structs of core/kernels/optim.h; the
 * tn_cuda_* functions here queue their kernels on the current stream (tn_cuda_stream_now).
 *
 * Gradient policy: as core/optim.c — the optimizers update params, their state and the
 * f16/bf16 model copies in place (=) and only read grads; tn_optim_larc, tn_grad_clip_norm and
 * tn_amp_unscale_check (when out == grads) rescale gradients in place.
 *
 * Host synchronisation: none in the optimizer updates, tn_optim_larc, tn_optim_norms (out is a
 * device tensor), tn_amp_sync_masters and tn_optim_zero: per-tensor norms, trust ratios,
 * NovoGrad's grad_ema and clip coefficients stay in device memory and the kernels read them
 * there. Only the values the C API returns through host pointers are read back, once per
 * call, with cudaMemcpyAsync on tn_cuda_stream_now() followed by cudaStreamSynchronize:
 * total_norm of tn_grad_clip_norm (after the scaling kernel is queued: the skip decision
 * itself stays on the device) and found_inf / amax of tn_amp_unscale_check (the one
 * device-to-host read of a mixed-precision step, see lua/tern/amp.lua).
 *
 * Multi-tensor launches: up to MT_MAX list entries per launch, their pointers, sizes and
 * dtypes in a kernel-parameter struct (mt_list, < 4 KiB); longer lists take several launches.
 * Each entry is cut into chunks of MT_CHUNK elements, one thread block per chunk; a block
 * finds its entry by a linear search over the launch's chunk starts.
 *
 * Reductions (sums of squares, amax, found_inf) are deterministic: each block writes one
 * partial per chunk into a device buffer from the caching allocator (tn_tensor_empty on
 * TN_CUDA, freed stream-ordered right after queuing), and a second kernel combines the
 * partials of an entry in chunk order with a fixed-shape tree, so norms and every update that
 * depends on them are the same on every run. Sums of squares run in double on the device (the
 * CPU sums f32 squares in blocks of 64 then in double), so norms agree with the CPU to double
 * rounding of the f32 squares, not bit for bit.
 *
 * Math: the per-element functions of core/kernels/optim.h, the ones the CPU loops call; f16 /
 * bf16 load into f32 (tn_cuda_load) and model copies are written with the saturating
 * rounding of kernels/optim.h. nvcc contracts a * b + c into FMAs where the CPU rounds twice,
 * so f32 / f64 results may differ from the CPU's in the last bits; found_inf is identical.
 */
#include "common.cuh"

#include "kernels/optim.h"

namespace { /* every kernel and helper here is private to this file */

enum { MT_LISTS = 5, MT_MAX = 36 };
enum { MT_THREADS = TN_CUDA_THREADS };
#define MT_CHUNK ((int64_t)16384) /* elements per block (64 per thread) */

/* One launch's share of the lists: slot s is list entry entry[s]. */
struct mt_list {
    void *ptr[MT_LISTS][MT_MAX];  /* (lists, slots) data pointers; NULL for an absent list */
    int64_t numel[MT_MAX];        /* (slots) elements of the entry */
    int64_t cstart[MT_MAX + 1];   /* (slots + 1) first block of each slot in this launch */
    int64_t chunk0;               /* global chunk index of this launch's block 0 (partials) */
    int32_t entry[MT_MAX];        /* (slots) index in the full list */
    int8_t dt[MT_LISTS][MT_MAX];  /* (lists, slots) dtypes */
    int32_t count;                /* slots used */
};
static_assert(sizeof(mt_list) < 4000, "mt_list must fit the 4 KiB kernel parameter space");

/* The slot and element range [a, e) of this block. */
static __device__ __forceinline__ void mt_locate(const mt_list &L, int *s, int64_t *a, int64_t *e) {
    int k = 0;
    const int64_t b = blockIdx.x;
    while (k + 1 < L.count && b >= L.cstart[k + 1]) k++;
    *s = k;
    *a = (b - L.cstart[k]) * MT_CHUNK;
    const int64_t end = *a + MT_CHUNK;
    *e = end < L.numel[k] ? end : L.numel[k];
}

/* Deterministic block reductions (fixed tree over MT_THREADS threads); result in thread 0. */
static __device__ double block_sum(double v) {
    __shared__ double sh[MT_THREADS];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = MT_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}
static __device__ double block_max(double v) {
    __shared__ double sh[MT_THREADS];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = MT_THREADS / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) sh[threadIdx.x] = fmax(sh[threadIdx.x], sh[threadIdx.x + w]);
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

/* Element j of a float tensor of dtype dt, as double (f16 / bf16 / f32 exactly). */
static __device__ __forceinline__ double load_any(const void *p, int dt, int64_t j) {
    switch (dt) {
    case TN_F64: return ((const double *)p)[j];
    case TN_F32: return ((const float *)p)[j];
    case TN_F16: return tn_half_to_float(((const uint16_t *)p)[j]);
    default: return tn_bf16_to_float(((const uint16_t *)p)[j]); /* TN_BF16 */
    }
}

/* ---- model copies: MD 0 none, 1 f16, 2 bf16 ----------------------------------------------- */

/* The master p, or the model weight where the saturating rounding of p differs from it. */
template <int MD> static __device__ __forceinline__ float model_reseed(float p, const uint16_t *m, int64_t j) {
    if constexpr (MD == 1) {
        const uint16_t h = m[j];
        return tn_float_to_half_sat(p) != h ? tn_half_to_float(h) : p;
    } else if constexpr (MD == 2) {
        const uint16_t h = m[j];
        return tn_float_to_bf16_sat(p) != h ? tn_bf16_to_float(h) : p;
    } else {
        (void)m;
        (void)j;
        return p;
    }
}
template <int MD> static __device__ __forceinline__ void model_store(uint16_t *m, int64_t j, float p) {
    if constexpr (MD == 1) m[j] = tn_float_to_half_sat(p);
    else if constexpr (MD == 2) m[j] = tn_float_to_bf16_sat(p);
    else {
        (void)m;
        (void)j;
        (void)p;
    }
}

/* ---- per-element update functors (P params, G grads, MD model copy) ------------------------- */

static __device__ __forceinline__ float sgd_el(float p, float g, float *b, const tn_sgd_coef_f *c) { return tn_sgd_f(p, g, b, c); }
static __device__ __forceinline__ double sgd_el(double p, double g, double *b, const tn_sgd_coef_d *c) { return tn_sgd_d(p, g, b, c); }
static __device__ __forceinline__ void adam_moments_el(float g, float p, float *m, float *v, const tn_adam_coef_f *c) { tn_adam_moments_f(g, p, m, v, c); }
static __device__ __forceinline__ void adam_moments_el(double g, double p, double *m, double *v, const tn_adam_coef_d *c) { tn_adam_moments_d(g, p, m, v, c); }
static __device__ __forceinline__ float adam_param_el(float p, float m, float v, const tn_adam_coef_f *c) { return tn_adam_param_f(p, m, sqrtf(v), c); }
static __device__ __forceinline__ double adam_param_el(double p, double m, double v, const tn_adam_coef_d *c) { return tn_adam_param_d(p, m, sqrt(v), c); }
static __device__ __forceinline__ float novo_el(float p, float g, float *m, const tn_novograd_coef_f *c) { return tn_novograd_f(p, g, m, c); }
static __device__ __forceinline__ double novo_el(double p, double g, double *m, const tn_novograd_coef_d *c) { return tn_novograd_d(p, g, m, c); }

/* lists: 0 params, 1 grads, 2 momentum_buf (NULL without momentum), 3 model */
template <class P, class G, int MD, class C> struct sgd_op {
    C c;
    __device__ __forceinline__ void operator()(const mt_list &L, int s, int64_t j) const {
        P *p = (P *)L.ptr[0][s];
        P *buf = (P *)L.ptr[2][s];
        uint16_t *mo = (uint16_t *)L.ptr[3][s];
        P pv = p[j];
        if constexpr (MD != 0) pv = model_reseed<MD>(pv, mo, j);
        P b = (P)0;
        if (c.has_momentum && !c.first) b = buf[j]; /* step 1: the buffer starts as d_p */
        pv = sgd_el(pv, (P)tn_cuda_load((const G *)L.ptr[1][s] + j), &b, &c);
        if (c.has_momentum) buf[j] = b;
        p[j] = pv;
        if constexpr (MD != 0) model_store<MD>(mo, j, (float)pv);
    }
};

/* lists: 0 params, 1 grads, 2 exp_avg, 3 exp_avg_sq, 4 model */
template <class P, class G, int MD, class C> struct adam_op {
    C c;
    __device__ __forceinline__ void operator()(const mt_list &L, int s, int64_t j) const {
        P *p = (P *)L.ptr[0][s], *m = (P *)L.ptr[2][s], *v = (P *)L.ptr[3][s];
        uint16_t *mo = (uint16_t *)L.ptr[4][s];
        P pv = p[j], mv = m[j], vv = v[j];
        if constexpr (MD != 0) pv = model_reseed<MD>(pv, mo, j);
        adam_moments_el((P)tn_cuda_load((const G *)L.ptr[1][s] + j), pv, &mv, &vv, &c);
        m[j] = mv;
        v[j] = vv;
        pv = adam_param_el(pv, mv, vv, &c);
        p[j] = pv;
        if constexpr (MD != 0) model_store<MD>(mo, j, (float)pv);
    }
};

/* lists: 0 params, 1 grads, 2 exp_avg, 3 model; gscale (n entries, device) per entry */
template <class P, class G, int MD, class C> struct novo_op {
    C c; /* gnorm_scale filled per entry from gscale */
    const double *gscale;
    __device__ __forceinline__ void operator()(const mt_list &L, int s, int64_t j) const {
        C cc = c;
        cc.gnorm_scale = (P)gscale[L.entry[s]];
        P *p = (P *)L.ptr[0][s], *m = (P *)L.ptr[2][s];
        uint16_t *mo = (uint16_t *)L.ptr[3][s];
        P pv = p[j], mv = m[j];
        if constexpr (MD != 0) pv = model_reseed<MD>(pv, mo, j);
        pv = novo_el(pv, (P)tn_cuda_load((const G *)L.ptr[1][s] + j), &mv, &cc);
        m[j] = mv;
        p[j] = pv;
        if constexpr (MD != 0) model_store<MD>(mo, j, (float)pv);
    }
};

/* lists: 0 grads (rescaled in place), 1 params; trust / has per entry (device) */
template <class P> struct larc_op {
    double grad_scale, wd;
    const double *trust;
    const uint8_t *has;
    __device__ __forceinline__ void operator()(const mt_list &L, int s, int64_t j) const {
        P *g = (P *)L.ptr[0][s];
        const P *w = (const P *)L.ptr[1][s];
        const int i = L.entry[s];
        if constexpr (sizeof(P) == 8)
            g[j] = tn_larc_grad_d(g[j], w[j], grad_scale, wd, trust[i], has[i]);
        else
            g[j] = tn_larc_grad_f(g[j], w[j], (float)grad_scale, (float)wd, (float)trust[i], has[i]);
    }
};

/* lists: 0 the tensors (any float dtype, per slot); coef[1] != 0: multiply by coef[0] */
struct scale_op {
    const double *coef; /* (3) from clip_total: norm, coef, apply */
    __device__ __forceinline__ void operator()(const mt_list &L, int s, int64_t j) const {
        if (coef[2] == 0) return;
        void *d = L.ptr[0][s];
        switch (L.dt[0][s]) {
        case TN_F64: ((double *)d)[j] = ((double *)d)[j] * coef[1]; break;
        case TN_F32: ((float *)d)[j] = ((float *)d)[j] * (float)coef[1]; break;
        case TN_F16: {
            uint16_t *h = (uint16_t *)d;
            h[j] = tn_float_to_half(tn_half_to_float(h[j]) * (float)coef[1]);
            break;
        }
        default: {
            uint16_t *h = (uint16_t *)d;
            h[j] = tn_float_to_bf16(tn_bf16_to_float(h[j]) * (float)coef[1]);
            break;
        }
        }
    }
};

/* lists: 0 masters (f32), 1 model */
template <int MD> struct reseed_op {
    __device__ __forceinline__ void operator()(const mt_list &L, int s, int64_t j) const {
        float *p = (float *)L.ptr[0][s];
        p[j] = model_reseed<MD>(p[j], (const uint16_t *)L.ptr[1][s], j);
    }
};

template <class Op> __global__ void __launch_bounds__(MT_THREADS) mt_apply(mt_list L, Op op) {
    int s;
    int64_t a, e;
    mt_locate(L, &s, &a, &e);
    for (int64_t j = a + threadIdx.x; j < e; j += MT_THREADS) op(L, s, j);
}

/* ---- reductions --------------------------------------------------------------------------------- */

/* part_a[chunk] = sum of squares of list 0's chunk (and part_b of list 1's when part_b). */
__global__ void __launch_bounds__(MT_THREADS) mt_sumsq(mt_list L, double *part_a, double *part_b) {
    int s;
    int64_t a, e;
    mt_locate(L, &s, &a, &e);
    double sa = 0, sb = 0;
    for (int64_t j = a + threadIdx.x; j < e; j += MT_THREADS) {
        const double x = load_any(L.ptr[0][s], L.dt[0][s], j);
        sa += x * x;
        if (part_b) {
            const double y = load_any(L.ptr[1][s], L.dt[1][s], j);
            sb += y * y;
        }
    }
    sa = block_sum(sa);
    if (part_b) sb = block_sum(sb);
    if (threadIdx.x == 0) {
        part_a[L.chunk0 + blockIdx.x] = sa;
        if (part_b) part_b[L.chunk0 + blockIdx.x] = sb;
    }
}

/* One block per slot: sums[entry] = the slot's partials summed in chunk order (sqrt_out:
 * its square root). */
__global__ void __launch_bounds__(MT_THREADS) mt_sum_parts(mt_list L, const double *part, double *sums,
                                                           int sqrt_out) {
    const int s = blockIdx.x;
    const int64_t c0 = L.chunk0 + L.cstart[s], c1 = L.chunk0 + L.cstart[s + 1];
    double acc = 0;
    for (int64_t c = c0 + threadIdx.x; c < c1; c += MT_THREADS) acc += part[c];
    acc = block_sum(acc);
    if (threadIdx.x == 0) sums[L.entry[s]] = sqrt_out ? sqrt(acc) : acc;
}

/* unscale: out = g * inv_scale; part_amax[chunk] = max finite |out|, part_bad[chunk] = 1 when
 * some out is inf/NaN. lists: 0 out (f32 / f64), 1 grads. */
__global__ void __launch_bounds__(MT_THREADS) mt_unscale(mt_list L, double inv, double *part_amax,
                                                         double *part_bad) {
    int s;
    int64_t a, e;
    mt_locate(L, &s, &a, &e);
    const int gdt = L.dt[1][s];
    double mx = 0;
    int fin = 1;
    if (gdt == TN_F64) {
        const double *g = (const double *)L.ptr[1][s];
        double *y = (double *)L.ptr[0][s];
        for (int64_t j = a + threadIdx.x; j < e; j += MT_THREADS) {
            const double v = g[j] * inv;
            const int f = (v - v) == 0.0;
            y[j] = v;
            const double av = f ? fabs(v) : 0.0;
            mx = av > mx ? av : mx;
            fin &= f;
        }
    } else {
        float *y = (float *)L.ptr[0][s];
        const float invf = (float)inv;
        for (int64_t j = a + threadIdx.x; j < e; j += MT_THREADS) {
            float g;
            if (gdt == TN_F32) g = ((const float *)L.ptr[1][s])[j];
            else if (gdt == TN_F16) g = tn_half_to_float(((const uint16_t *)L.ptr[1][s])[j]);
            else g = tn_bf16_to_float(((const uint16_t *)L.ptr[1][s])[j]);
            float v;
            int f;
            const float av = tn_unscale_f(g, invf, &v, &f);
            y[j] = v;
            mx = (double)av > mx ? (double)av : mx;
            fin &= f;
        }
    }
    mx = block_max(mx);
    const double bad = block_max(fin ? 0.0 : 1.0);
    if (threadIdx.x == 0) {
        part_amax[L.chunk0 + blockIdx.x] = mx;
        part_bad[L.chunk0 + blockIdx.x] = bad;
    }
}

/* res[0] = max of part_amax, res[1] = 1 when some part_bad (one block; max is order-free). */
__global__ void __launch_bounds__(MT_THREADS) unscale_finish(const double *part_amax, const double *part_bad,
                                                             int64_t chunks, double *res) {
    double mx = 0, bad = 0;
    for (int64_t c = threadIdx.x; c < chunks; c += MT_THREADS) {
        mx = fmax(mx, part_amax[c]);
        bad = fmax(bad, part_bad[c]);
    }
    mx = block_max(mx);
    bad = block_max(bad);
    if (threadIdx.x == 0) {
        res[0] = mx;
        res[1] = bad;
    }
}

/* NovoGrad's per-entry second moment, as the CPU loop: ema[i] (P) = ||gs g||^2 at step 1, then
 * beta2 ema + (1 - beta2) ||gs g||^2; gscale[i] = grad_scale / (sqrt(ema) + eps). */
template <class P>
__global__ void novo_ema(P *ema, double *gscale, const double *sums, int32_t n, int first, double beta2,
                         double grad_scale, double eps) {
    const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const double g2 = grad_scale * grad_scale * sums[i];
    const P e = (P)(first ? g2 : beta2 * (double)ema[i] + (1.0 - beta2) * g2);
    ema[i] = e;
    gscale[i] = grad_scale / (sqrt((double)e) + eps);
}

/* LARC's trust ratio per entry, as the CPU loop (apex). */
__global__ void larc_trust(double *trust, uint8_t *has, const double *sp, const double *sg, int32_t n, double eta,
                           double eps, double wd, double lr, int clip, double grad_scale) {
    const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const double pn = sqrt(sp[i]), gn = fabs(grad_scale) * sqrt(sg[i]);
    const int h = pn != 0 && gn != 0;
    double tr = h ? eta * pn / (gn + pn * wd + eps) : 1.0;
    if (h && clip) tr = fmin(tr / lr, 1.0);
    has[i] = (uint8_t)h;
    trust[i] = tr;
}

/* res = {norm, coef, apply}: the global norm from the per-entry sums (summed in entry order). */
__global__ void clip_total(double *res, const double *sums, int32_t n, double max_norm, double grad_scale) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double tot = 0;
    for (int32_t i = 0; i < n; i++) tot += sums[i];
    const double norm = fabs(grad_scale) * sqrt(tot);
    const double coef = max_norm / (norm + 1e-6);
    res[0] = norm;
    res[1] = coef;
    res[2] = isfinite(norm) && coef < 1.0 ? 1.0 : 0.0;
}

/* ---- host side -------------------------------------------------------------------------------- */

static int64_t chunks_of(int64_t numel) { return (numel + MT_CHUNK - 1) / MT_CHUNK; }

/* Total chunks of list ts (n entries). */
static int64_t total_chunks(int32_t n, tn_tensor *const *ts) {
    int64_t c = 0;
    for (int32_t i = 0; i < n; i++) c += chunks_of(tn_tensor_numel(ts[i]));
    return c;
}

/* Calls launch(L, blocks) for consecutive groups of at most MT_MAX entries of the lists
 * (lists[k] NULL: slot pointers NULL); numel from lists[0]. with_empty: entries of 0 elements
 * still take a slot (reductions must write their sum), else they are skipped. */
template <class F>
static tn_status mt_for_each(int32_t n, int nlists, tn_tensor *const *const *lists, int with_empty, F launch) {
    mt_list L;
    memset(&L, 0, sizeof L);
    int64_t chunk = 0;
    for (int32_t i = 0; i < n; i++) {
        const int64_t k = tn_tensor_numel(lists[0][i]);
        if (k == 0 && !with_empty) continue;
        const int s = L.count;
        for (int l = 0; l < nlists; l++) {
            L.ptr[l][s] = lists[l] ? (void *)lists[l][i]->data : NULL;
            L.dt[l][s] = (int8_t)(lists[l] ? lists[l][i]->dtype : -1);
        }
        L.numel[s] = k;
        L.entry[s] = i;
        L.cstart[s + 1] = L.cstart[s] + chunks_of(k);
        L.count = s + 1;
        if (L.count == MT_MAX) {
            TN_TRY(launch(L, L.cstart[L.count]));
            chunk += L.cstart[L.count];
            memset(&L, 0, sizeof L);
            L.chunk0 = chunk;
        }
    }
    if (L.count > 0) TN_TRY(launch(L, L.cstart[L.count]));
    return TN_OK;
}

/* Queues op over every element of the lists (entries of 0 elements skipped). */
template <class Op>
static tn_status mt_run(int32_t n, int nlists, tn_tensor *const *const *lists, const Op &op) {
    cudaStream_t st = tn_cuda_stream_now();
    return mt_for_each(n, nlists, lists, 0, [&](const mt_list &L, int64_t blocks) -> tn_status {
        if (blocks == 0) return TN_OK;
        mt_apply<Op><<<(unsigned)blocks, MT_THREADS, 0, st>>>(L, op);
        return TN_CUDA_CHECK_LAUNCH();
    });
}

/* A device scratch tensor of count f64 values (at least 1): *t owns it; tn_tensor_free after
 * the kernels using it are queued (stream-ordered reuse). */
static tn_status scratch(tn_tensor **t, int64_t count) {
    const int64_t shape = count > 0 ? count : 1;
    *t = NULL;
    return tn_tensor_empty(t, 1, &shape, TN_F64, TN_CUDA);
}

/* sums_a[i] (and sums_b[i] when b) = sum of squares of entry i on the device; sqrt_out takes
 * square roots. sums_* are device arrays of n doubles. */
static tn_status sumsq_lists(int32_t n, tn_tensor *const *a, tn_tensor *const *b, double *sums_a, double *sums_b,
                             int sqrt_out) {
    const int64_t C = total_chunks(n, a);
    tn_tensor *part = NULL;
    TN_TRY(scratch(&part, 2 * C));
    double *pa = (double *)part->data, *pb = b ? pa + C : NULL;
    cudaStream_t st = tn_cuda_stream_now();
    tn_tensor *const *const lists[2] = {a, b};
    tn_status s = mt_for_each(n, b ? 2 : 1, lists, 1, [&](const mt_list &L, int64_t blocks) -> tn_status {
        if (blocks > 0) {
            mt_sumsq<<<(unsigned)blocks, MT_THREADS, 0, st>>>(L, pa, pb);
            TN_TRY(TN_CUDA_CHECK_LAUNCH());
        }
        mt_sum_parts<<<(unsigned)L.count, MT_THREADS, 0, st>>>(L, pa, sums_a, sqrt_out);
        TN_TRY(TN_CUDA_CHECK_LAUNCH());
        if (pb) {
            mt_sum_parts<<<(unsigned)L.count, MT_THREADS, 0, st>>>(L, pb, sums_b, sqrt_out);
            TN_TRY(TN_CUDA_CHECK_LAUNCH());
        }
        return TN_OK;
    });
    tn_tensor_free(part);
    return s;
}

/* An update functor with coefficients c (other members zero). */
template <class Op, class C> static Op make_op(const C &c) {
    Op o{};
    o.c = c;
    return o;
}

/* Dispatch of the update functors over (P, G, MD): f64 params take f64 grads and no model;
 * f32 params f32 / f16 / bf16 grads and an f16 / bf16 model or none. */
template <template <class, class, int, class> class Op, class CF, class CD, class Run>
static tn_status dispatch_update(const char *op, int32_t pdt, int32_t gdt, int32_t mdt, const CF &cf,
                                 const CD &cd, const Run &run) {
    if (pdt == TN_F64) return run(make_op<Op<double, double, 0, CD>>(cd));
    const int md = mdt == TN_F16 ? 1 : mdt == TN_BF16 ? 2 : 0;
#define TN_OPTIM_G(G)                                                                              \
    switch (md) {                                                                                  \
    case 1: return run(make_op<Op<float, G, 1, CF>>(cf));                                          \
    case 2: return run(make_op<Op<float, G, 2, CF>>(cf));                                          \
    default: return run(make_op<Op<float, G, 0, CF>>(cf));                                         \
    }
    switch (gdt) {
    case TN_F32: TN_OPTIM_G(float)
    case TN_F16: TN_OPTIM_G(tn_f16)
    case TN_BF16: TN_OPTIM_G(tn_bf16)
    default: break;
    }
#undef TN_OPTIM_G
    return tn_error(TN_ERR_DTYPE, "%s: unsupported dtypes params %s, grads %s on cuda", op, tn_dtype_name(pdt),
                    tn_dtype_name(gdt));
}

} /* namespace */

/* ---- entry points (declared in core/optim.c) ------------------------------------------------- */

extern "C" tn_status tn_cuda_optim_sgd(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                                       tn_tensor *const *momentum_buf, tn_tensor *const *model, int32_t pdt,
                                       int32_t gdt, int32_t mdt, const tn_sgd_coef_f *cf,
                                       const tn_sgd_coef_d *cd) {
    tn_tensor *const *const lists[4] = {params, grads, cd->has_momentum ? momentum_buf : NULL, model};
    return dispatch_update<sgd_op>("tn_optim_sgd", pdt, gdt, mdt, *cf, *cd,
                                   [&](const auto &op) { return mt_run(n, 4, lists, op); });
}

extern "C" tn_status tn_cuda_optim_adam(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                                        tn_tensor *const *exp_avg, tn_tensor *const *exp_avg_sq,
                                        tn_tensor *const *model, int32_t pdt, int32_t gdt, int32_t mdt,
                                        const tn_adam_coef_f *cf, const tn_adam_coef_d *cd) {
    tn_tensor *const *const lists[5] = {params, grads, exp_avg, exp_avg_sq, model};
    return dispatch_update<adam_op>("tn_optim_adam", pdt, gdt, mdt, *cf, *cd,
                                    [&](const auto &op) { return mt_run(n, 5, lists, op); });
}

extern "C" tn_status tn_cuda_optim_novograd(int32_t n, tn_tensor *const *params, tn_tensor *const *grads,
                                            tn_tensor *const *exp_avg, tn_tensor *grad_ema,
                                            tn_tensor *const *model, int32_t pdt, int32_t gdt, int32_t mdt,
                                            const tn_optim_hparams *h) {
    if (n == 0) return TN_OK;
    tn_tensor *buf = NULL;
    TN_TRY(scratch(&buf, 2 * (int64_t)n));
    double *sums = (double *)buf->data, *gscale = sums + n;
    cudaStream_t st = tn_cuda_stream_now();
    tn_status s = sumsq_lists(n, grads, NULL, sums, NULL, 0);
    if (s == TN_OK) {
        const unsigned blocks = (unsigned)((n + MT_THREADS - 1) / MT_THREADS);
        const int first = h->step == 1;
        if (pdt == TN_F64)
            novo_ema<double><<<blocks, MT_THREADS, 0, st>>>((double *)grad_ema->data, gscale, sums, n, first, h->beta2,
                                                            h->grad_scale, h->eps);
        else
            novo_ema<float><<<blocks, MT_THREADS, 0, st>>>((float *)grad_ema->data, gscale, sums, n, first, h->beta2,
                                                           h->grad_scale, h->eps);
        s = TN_CUDA_CHECK_LAUNCH();
    }
    if (s == TN_OK) {
        /* as the CPU: the per-entry coefficients in the params' precision */
        const tn_novograd_coef_d cd = {0.0, h->weight_decay, h->beta1, h->grad_averaging ? 1.0 - h->beta1 : 1.0,
                                       -h->lr};
        const tn_novograd_coef_f cf = {0.0f, (float)h->weight_decay, (float)h->beta1,
                                       h->grad_averaging ? (float)(1.0 - h->beta1) : 1.0f, (float)-h->lr};
        tn_tensor *const *const lists[4] = {params, grads, exp_avg, model};
        s = dispatch_update<novo_op>("tn_optim_novograd", pdt, gdt, mdt, cf, cd, [&](auto op) {
            op.gscale = gscale;
            return mt_run(n, 4, lists, op);
        });
    }
    tn_tensor_free(buf);
    return s;
}

extern "C" tn_status tn_cuda_optim_larc(int32_t n, tn_tensor *const *grads, tn_tensor *const *params, int32_t pdt,
                                        double eta, double eps, double weight_decay, double lr, int32_t clip,
                                        double grad_scale) {
    if (n == 0) return TN_OK;
    /* sums of squares of params and grads, trust (n doubles each), then n bytes of has */
    tn_tensor *buf = NULL;
    TN_TRY(scratch(&buf, 3 * (int64_t)n + ((int64_t)n + 7) / 8));
    double *sp = (double *)buf->data, *sg = sp + n, *trust = sg + n;
    uint8_t *has = (uint8_t *)(trust + n);
    cudaStream_t st = tn_cuda_stream_now();
    tn_status s = sumsq_lists(n, params, grads, sp, sg, 0);
    if (s == TN_OK) {
        const unsigned blocks = (unsigned)((n + MT_THREADS - 1) / MT_THREADS);
        larc_trust<<<blocks, MT_THREADS, 0, st>>>(trust, has, sp, sg, n, eta, eps, weight_decay, lr, clip != 0,
                                                  grad_scale);
        s = TN_CUDA_CHECK_LAUNCH();
    }
    if (s == TN_OK) {
        tn_tensor *const *const lists[2] = {grads, params};
        if (pdt == TN_F64) s = mt_run(n, 2, lists, larc_op<double>{grad_scale, weight_decay, trust, has});
        else s = mt_run(n, 2, lists, larc_op<float>{grad_scale, weight_decay, trust, has});
    }
    tn_tensor_free(buf);
    return s;
}

extern "C" tn_status tn_cuda_optim_norms(tn_tensor *out, int32_t n, tn_tensor *const *ts) {
    if (n == 0) return TN_OK;
    return sumsq_lists(n, ts, NULL, (double *)out->data, NULL, 1);
}

extern "C" tn_status tn_cuda_grad_clip_norm(double *total_norm, int32_t n, tn_tensor *const *grads,
                                            double max_norm, double grad_scale) {
    if (n == 0) {
        *total_norm = 0;
        return TN_OK;
    }
    tn_tensor *buf = NULL;
    TN_TRY(scratch(&buf, (int64_t)n + 3));
    double *sums = (double *)buf->data, *res = sums + n;
    cudaStream_t st = tn_cuda_stream_now();
    tn_status s = sumsq_lists(n, grads, NULL, sums, NULL, 0);
    if (s == TN_OK) {
        clip_total<<<1, 1, 0, st>>>(res, sums, n, max_norm, grad_scale);
        s = TN_CUDA_CHECK_LAUNCH();
    }
    tn_tensor *const *const lists[1] = {grads};
    if (s == TN_OK) s = mt_run(n, 1, lists, scale_op{res});
    double norm = 0;
    if (s == TN_OK) s = TN_CUDA_CHECK(cudaMemcpyAsync(&norm, res, sizeof norm, cudaMemcpyDeviceToHost, st));
    if (s == TN_OK) s = TN_CUDA_CHECK(cudaStreamSynchronize(st));
    if (s == TN_OK) *total_norm = norm;
    tn_tensor_free(buf);
    return s;
}

extern "C" tn_status tn_cuda_amp_unscale_check(int32_t *found_inf, double *amax, int32_t n, tn_tensor *const *out,
                                               tn_tensor *const *grads, double inv_scale) {
    const int64_t C = total_chunks(n, grads);
    tn_tensor *buf = NULL;
    TN_TRY(scratch(&buf, 2 * C + 2));
    double *pa = (double *)buf->data, *pb = pa + C, *res = pb + C;
    cudaStream_t st = tn_cuda_stream_now();
    tn_tensor *const *const lists[2] = {out, grads};
    /* entries of 0 elements take no chunk: the partials are numbered over the others */
    int64_t base = 0;
    tn_status s = mt_for_each(n, 2, lists, 0, [&](const mt_list &L, int64_t blocks) -> tn_status {
        base = L.chunk0 + blocks;
        if (blocks == 0) return TN_OK;
        mt_unscale<<<(unsigned)blocks, MT_THREADS, 0, st>>>(L, inv_scale, pa, pb);
        return TN_CUDA_CHECK_LAUNCH();
    });
    if (s == TN_OK) {
        unscale_finish<<<1, MT_THREADS, 0, st>>>(pa, pb, base, res);
        s = TN_CUDA_CHECK_LAUNCH();
    }
    double host[2] = {0, 0};
    if (s == TN_OK) s = TN_CUDA_CHECK(cudaMemcpyAsync(host, res, sizeof host, cudaMemcpyDeviceToHost, st));
    if (s == TN_OK) s = TN_CUDA_CHECK(cudaStreamSynchronize(st));
    if (s == TN_OK) {
        *amax = host[0];
        *found_inf = host[1] != 0;
    }
    tn_tensor_free(buf);
    return s;
}

extern "C" tn_status tn_cuda_amp_sync_masters(int32_t n, tn_tensor *const *masters, tn_tensor *const *model) {
    if (n == 0) return TN_OK;
    tn_tensor *const *const lists[2] = {masters, model};
    if (model[0]->dtype == TN_F16) return mt_run(n, 2, lists, reseed_op<1>{});
    return mt_run(n, 2, lists, reseed_op<2>{});
}

extern "C" tn_status tn_cuda_optim_zero(int32_t n, tn_tensor *const *ts) {
    cudaStream_t st = tn_cuda_stream_now();
    for (int32_t i = 0; i < n; i++) {
        const size_t bytes = (size_t)tn_tensor_numel(ts[i]) * tn_dtype_size(ts[i]->dtype);
        if (bytes) TN_TRY(TN_CUDA_CHECK(cudaMemsetAsync(ts[i]->data, 0, bytes, st)));
    }
    return TN_OK;
}
