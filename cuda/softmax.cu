/*
 * cuda/softmax.cu — the CUDA backend of tn_softmax and tn_softmax_backward (softmax and
 * log_softmax along one dim): core/softmax.c checks the arguments, prepares the output and
 * builds the row iterator, then calls tn_cuda_softmax / tn_cuda_softmax_backward, which run on
 * the current device and stream (asynchronous; no host synchronisation).
 *
 * Gradient policy: tn_cuda_softmax_backward writes (=) grad_in, an activation gradient:
 *   softmax:      grad_in = y * (grad_out - sum(grad_out * y))
 *   log_softmax:  grad_in = grad_out - exp(y) * sum(grad_out)
 *
 * Shapes: R rows (the iterator `rows` over every dim but the softmax dim; forward operands
 * 0 = out, 1 = a; backward 0 = grad_in, 1 = grad_out, 2 = y), each of D elements at stride
 * ds[k] of operand k. Operands are read and written in place with their strides (no copies);
 * f16 / bf16 are loaded to f32, computed in f32 and rounded once, as on the CPU; f64 in double.
 *
 * Arithmetic (kernels/reduce.h): the row's max m and s = sum exp(x - m), then
 * y = exp(x - m) * (1 / s) or y = (x - m) - log(s) (log in double), as the CPU. m and s come
 * from one pass: each thread keeps a running (m, s), rescaling s when m grows, and the
 * threads' pairs are combined in a fixed tree (deterministic). Elements equal to -inf add
 * nothing; a row whose max is +-inf or NaN gives NaN everywhere, as the CPU's exp(inf - inf).
 * The backward pass sums g * y (or g) the same way, then writes grad_in.
 *
 * Layouts (plan_of): contiguous rows (ds 1 for every operand) get a group of G = 2..32 lanes
 * (rows up to SM_ROW_BLOCK_MIN) or a block of TN_CUDA_THREADS per row; otherwise (softmax over
 * a dim that is not innermost) one thread per row walks the dim, adjacent threads on adjacent
 * rows (coalesced for a contiguous tensor), unless there are few rows: then a warp or a block
 * per row. The rows' dims are sorted by operand 1's stride first.
 */
#include "common.cuh"

#include <type_traits>

#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace {

/* ---- math by type (the _f / _d helpers of kernels/) ------------------------------------------ */

__device__ __forceinline__ float sm_exp(float x) { return tn_exp_f(x); }
__device__ __forceinline__ double sm_exp(double x) { return tn_exp_d(x); }
__device__ __forceinline__ float sm_max(float m, float x) { return tn_red_max_f(m, x); }
__device__ __forceinline__ double sm_max(double m, double x) { return tn_red_max_d(m, x); }
__device__ __forceinline__ float sm_fwd(float x, float m, float inv) { return tn_softmax_f(x, m, inv); }
__device__ __forceinline__ double sm_fwd(double x, double m, double inv) { return tn_softmax_d(x, m, inv); }
__device__ __forceinline__ float sm_lognorm(float s) { return tn_softmax_lognorm_f(s); }
__device__ __forceinline__ double sm_lognorm(double s) { return tn_softmax_lognorm_d(s); }
__device__ __forceinline__ float sm_logfwd(float x, float m, float ls) { return tn_log_softmax_f(x, m, ls); }
__device__ __forceinline__ double sm_logfwd(double x, double m, double ls) { return tn_log_softmax_d(x, m, ls); }
__device__ __forceinline__ float sm_bwd(float g, float y, float s) { return tn_softmax_bwd_f(g, y, s); }
__device__ __forceinline__ double sm_bwd(double g, double y, double s) { return tn_softmax_bwd_d(g, y, s); }
__device__ __forceinline__ float sm_logbwd(float g, float y, float s) { return tn_log_softmax_bwd_f(g, y, s); }
__device__ __forceinline__ double sm_logbwd(double g, double y, double s) { return tn_log_softmax_bwd_d(g, y, s); }


/* ---- the row states: (max, sum of exp) forward, a plain sum backward ------------------------- */

template <typename C> struct MaxSum {
    C m, s; /* running max, sum of exp(x - m) over the elements seen */
};
/* tn_cuda_group_reduce / tn_cuda_block_reduce (common.cuh) shuffle the state field by field */
template <typename C> __device__ __forceinline__ MaxSum<C> tn_cuda_shfl_xor(MaxSum<C> v, int o) {
    MaxSum<C> r;
    r.m = ::tn_cuda_shfl_xor(v.m, o);
    r.s = ::tn_cuda_shfl_xor(v.s, o);
    return r;
}

template <typename C> struct OpMaxSum {
    typedef MaxSum<C> S;
    static __device__ __forceinline__ S init() {
        S r;
        r.m = (C)-INFINITY;
        r.s = (C)0;
        return r;
    }
    /* one element: a new max (or a NaN) rescales the sum; -inf adds nothing */
    static __device__ __forceinline__ S step(S st, C x) {
        if (x > st.m || x != x) {
            st.s = st.s * sm_exp(st.m - x) + (C)1;
            st.m = x;
        } else if (x != (C)-INFINITY) {
            st.s += sm_exp(x - st.m);
        }
        return st;
    }
    /* s == 0 only for a state that has seen nothing but -inf: it adds nothing (and no NaN from
     * exp(-inf - -inf)) */
    static __device__ __forceinline__ S combine(S a, S b) {
        S r;
        r.m = sm_max(a.m, b.m);
        r.s = (a.s == (C)0 ? (C)0 : a.s * sm_exp(a.m - r.m)) + (b.s == (C)0 ? (C)0 : b.s * sm_exp(b.m - r.m));
        return r;
    }
};

template <typename C> struct OpSumC {
    typedef C S;
    static __device__ __forceinline__ S init() { return (C)0; }
    static __device__ __forceinline__ S combine(S a, S b) { return a + b; }
};


/* ---- arguments and offsets ------------------------------------------------------------------- */

struct SmArgs {
    tn_iter rows;  /* (R) every dim but the softmax dim: fwd 0 out, 1 a; bwd 0 grad_in, 1 grad_out, 2 y */
    int64_t ds[3]; /* (nops) strides along the softmax dim */
    int64_t D;     /* elements per row, >= 1 */
    int32_t log;
};

/* Offset (elements) of operand k at linear element e of a finished iterator, unrolled over
 * TN_MAX_DIMS (constant indices: the iterator stays in parameter space). */
__device__ __forceinline__ int64_t iter_off(const tn_iter &it, int k, int64_t e) {
    int64_t off = 0;
#pragma unroll
    for (int d = 0; d < TN_MAX_DIMS; d++) {
        if (d >= it.ndim) break;
        if (d == it.ndim - 1) {
            off += e * it.stride[k][d];
            break;
        }
        const int64_t n = it.shape[d], q = e / n;
        off += (e - q * n) * it.stride[k][d];
        e = q;
    }
    return off;
}

/* ---- per-row work, for a thread that handles elements d0, d0 + step, ... of row r ------------ */

template <typename T, typename C>
__device__ __forceinline__ MaxSum<C> fwd_part(const SmArgs &p, int64_t r, int64_t d0, int64_t step) {
    MaxSum<C> st = OpMaxSum<C>::init();
    const T *x = (const T *)p.rows.data[1] + iter_off(p.rows, 1, r);
    const int64_t dx = p.ds[1];
    for (int64_t d = d0; d < p.D; d += step) st = OpMaxSum<C>::step(st, (C)tn_cuda_load<T>(x + d * dx));
    return st;
}

template <typename T, typename C>
__device__ __forceinline__ void fwd_write(const SmArgs &p, int64_t r, int64_t d0, int64_t step, MaxSum<C> st) {
    const T *x = (const T *)p.rows.data[1] + iter_off(p.rows, 1, r);
    T *y = (T *)p.rows.data[0] + iter_off(p.rows, 0, r);
    const int64_t dx = p.ds[1], dy = p.ds[0];
    if (isinf(st.m)) st.s = (C)NAN; /* as the CPU's exp(inf - inf) (all -inf, or a +inf) */
    if (p.log) {
        const C ls = sm_lognorm(st.s);
        for (int64_t d = d0; d < p.D; d += step) tn_cuda_store<T, C>(y + d * dy, sm_logfwd((C)tn_cuda_load<T>(x + d * dx), st.m, ls));
    } else {
        const C inv = (C)1 / st.s;
        for (int64_t d = d0; d < p.D; d += step) tn_cuda_store<T, C>(y + d * dy, sm_fwd((C)tn_cuda_load<T>(x + d * dx), st.m, inv));
    }
}

template <typename T, typename C>
__device__ __forceinline__ C bwd_part(const SmArgs &p, int64_t r, int64_t d0, int64_t step) {
    const T *g = (const T *)p.rows.data[1] + iter_off(p.rows, 1, r);
    const T *y = (const T *)p.rows.data[2] + iter_off(p.rows, 2, r);
    const int64_t dg = p.ds[1], dy = p.ds[2];
    C s = 0;
    if (p.log) {
        for (int64_t d = d0; d < p.D; d += step) s += (C)tn_cuda_load<T>(g + d * dg);
    } else {
        for (int64_t d = d0; d < p.D; d += step) s += (C)tn_cuda_load<T>(g + d * dg) * (C)tn_cuda_load<T>(y + d * dy);
    }
    return s;
}

template <typename T, typename C>
__device__ __forceinline__ void bwd_write(const SmArgs &p, int64_t r, int64_t d0, int64_t step, C s) {
    T *gi = (T *)p.rows.data[0] + iter_off(p.rows, 0, r);
    const T *g = (const T *)p.rows.data[1] + iter_off(p.rows, 1, r);
    const T *y = (const T *)p.rows.data[2] + iter_off(p.rows, 2, r);
    const int64_t di = p.ds[0], dg = p.ds[1], dy = p.ds[2];
    if (p.log) {
        for (int64_t d = d0; d < p.D; d += step)
            tn_cuda_store<T, C>(gi + d * di, sm_logbwd((C)tn_cuda_load<T>(g + d * dg), (C)tn_cuda_load<T>(y + d * dy), s));
    } else {
        for (int64_t d = d0; d < p.D; d += step)
            tn_cuda_store<T, C>(gi + d * di, sm_bwd((C)tn_cuda_load<T>(g + d * dg), (C)tn_cuda_load<T>(y + d * dy), s));
    }
}

/* ---- kernels: BWD 0 forward, 1 backward ------------------------------------------------------ */

/* Groups of G = 1 << lg lanes, one per row; the loop runs per warp so that every lane of a warp
 * takes part in the shuffles. */
template <typename T, int BWD>
__global__ void __launch_bounds__(TN_CUDA_THREADS) softmax_group_kernel(const SmArgs p, int lg) {
    typedef typename tn_cuda_math<T>::type C;
    const int G = 1 << lg, lane = threadIdx.x & (G - 1);
    const int64_t R = p.rows.numel, per_warp = 32 >> lg;
    const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; w * per_warp < R; w += nwarps) {
        const int64_t r = w * per_warp + ((threadIdx.x & 31) >> lg);
        const bool ok = r < R;
        if constexpr (BWD) {
            C s = ok ? bwd_part<T, C>(p, r, lane, G) : (C)0;
            s = tn_cuda_group_reduce<OpSumC<C>>(s, G);
            if (ok) bwd_write<T, C>(p, r, lane, G, s);
        } else {
            MaxSum<C> st = ok ? fwd_part<T, C>(p, r, lane, G) : OpMaxSum<C>::init();
            st = tn_cuda_group_reduce<OpMaxSum<C>>(st, G);
            if (ok) fwd_write<T, C>(p, r, lane, G, st);
        }
    }
}

/* One block of TN_CUDA_THREADS per row. */
template <typename T, int BWD>
__global__ void __launch_bounds__(TN_CUDA_THREADS) softmax_block_kernel(const SmArgs p) {
    typedef typename tn_cuda_math<T>::type C;
    for (int64_t r = blockIdx.x; r < p.rows.numel; r += gridDim.x) { /* uniform across the block */
        if constexpr (BWD) {
            const C s = tn_cuda_block_reduce<OpSumC<C>>(bwd_part<T, C>(p, r, threadIdx.x, blockDim.x));
            bwd_write<T, C>(p, r, threadIdx.x, blockDim.x, s);
        } else {
            const MaxSum<C> st = tn_cuda_block_reduce<OpMaxSum<C>>(fwd_part<T, C>(p, r, threadIdx.x, blockDim.x));
            fwd_write<T, C>(p, r, threadIdx.x, blockDim.x, st);
        }
    }
}

/* ---- host side ------------------------------------------------------------------------------ */

enum {
    SM_ROW_BLOCK_MIN = 1024,   /* contiguous rows longer than this get a block, shorter a group */
    SM_COL_THREAD_ROWS = 8192, /* strided rows: a thread each when at least this many */
    SM_COL_WARP_ROWS = 256     /* ... else a warp each when at least this many (or short), else a block */
};

struct Plan {
    int block; /* 1: a block per row; 0: a group of 1 << lg lanes */
    int lg;
};

int ceil_log2(int64_t n) {
    int l = 0;
    while (((int64_t)1 << l) < n) l++;
    return l;
}

Plan plan_of(const SmArgs &p, int nops) {
    Plan P = {0, 0};
    const int64_t R = p.rows.numel, D = p.D;
    int contiguous = 1;
    for (int k = 0; k < nops; k++) contiguous = contiguous && p.ds[k] == 1;
    if (D <= 1) return P;
    if (contiguous) {
        if (D <= 32) P.lg = ceil_log2(D);
        else if (D <= SM_ROW_BLOCK_MIN) P.lg = 5;
        else P.block = 1;
    } else if (R < SM_COL_THREAD_ROWS && D >= 64) {
        if (R >= SM_COL_WARP_ROWS || D <= SM_ROW_BLOCK_MIN) P.lg = 5;
        else P.block = 1;
    }
    return P;
}


template <typename T> struct RunSoftmax {
    static tn_status run(const SmArgs *args, int bwd) {
        if constexpr (std::is_same<typename tn_cuda_math<T>::type, float>::value ||
                      std::is_same<typename tn_cuda_math<T>::type, double>::value) {
            const SmArgs &p = *args;
            const Plan P = plan_of(p, bwd ? 3 : 2);
            const cudaStream_t stream = tn_cuda_stream_now();
            const int64_t R = p.rows.numel;
            if (P.block) {
                const unsigned blocks = (unsigned)(R < 65535 * 32 ? R : 65535 * 32);
                if (bwd) softmax_block_kernel<T, 1><<<blocks, TN_CUDA_THREADS, 0, stream>>>(p);
                else softmax_block_kernel<T, 0><<<blocks, TN_CUDA_THREADS, 0, stream>>>(p);
            } else {
                const unsigned blocks = tn_cuda_blocks(R << P.lg);
                if (bwd) softmax_group_kernel<T, 1><<<blocks, TN_CUDA_THREADS, 0, stream>>>(p, P.lg);
                else softmax_group_kernel<T, 0><<<blocks, TN_CUDA_THREADS, 0, stream>>>(p, P.lg);
            }
            TN_TRY(TN_CUDA_CHECK_LAUNCH());
            return TN_OK;
        } else { /* core/softmax.c accepts float dtypes only */
            return tn_error(TN_ERR_DTYPE, "%s: argument 'a' must be a float tensor (f32, f64, f16, bf16)",
                            bwd ? (args->log ? "log_softmax_backward" : "softmax_backward")
                                : (args->log ? "log_softmax" : "softmax"));
        }
    }
};

tn_status run(const char *name, const tn_iter *rows, const int64_t *dstride, int64_t D, int32_t dtype, int32_t log,
              int bwd) {
    if (rows->numel == 0 || D == 0) return TN_OK;
    SmArgs p;
    memset(&p, 0, sizeof p);
    p.rows = *rows;
    tn_iter_sort_dims(&p.rows, 1);
    for (int k = 0; k < (bwd ? 3 : 2); k++) p.ds[k] = dstride[k];
    p.D = D;
    p.log = log;
    return TN_CUDA_DISPATCH(name, dtype, RunSoftmax, &p, bwd);
}

} // namespace

extern "C" tn_status tn_cuda_softmax(const tn_iter *rows, const int64_t *dstride, int64_t D, int32_t dtype,
                                     int32_t log) {
    return run(log ? "log_softmax" : "softmax", rows, dstride, D, dtype, log, 0);
}

extern "C" tn_status tn_cuda_softmax_backward(const tn_iter *rows, const int64_t *dstride, int64_t D, int32_t dtype,
                                              int32_t log) {
    return run(log ? "log_softmax_backward" : "softmax_backward", rows, dstride, D, dtype, log, 1);
}
