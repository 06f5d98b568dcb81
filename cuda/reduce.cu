/*
 * cuda/reduce.cu — the CUDA backend of tn_reduce, tn_max_dim and tn_sum_to: core/reduce.c
 * checks the arguments, prepares the outputs and builds the two iterators, then calls
 * tn_cuda_reduce, which runs the kernels on the current device and stream (asynchronous; no
 * host synchronisation).
 *
 * Gradient policy: forward only, as core/reduce.c; tn_sum_to writes (=) its preallocated out.
 *
 * Shapes: M outputs, each reducing N elements of a. The kept iterator `kit` has one entry per
 * output (operands 0 = out, 1 = a, 2 = values of tn_max_dim); the reduced iterator `rit` walks
 * an output's N elements (operand 0 = a's strides; its linear position j is the ARG index).
 * Element j of output i is a[kit offset(1, i) + rit offset(0, j)].
 *
 * Accumulation as on the CPU: f32 for f32 / f16 / bf16 (loaded to f32), f64 for f64, wrapping
 * i64 for i32 / i64 / u8 (integer results are truncated into an integer out dtype). MEAN divides
 * the sum; VAR and LOGSUMEXP run two passes like the CPU's rows: the mean (resp. the max) of
 * each output into an accumulator-type buffer `cen` (M), then the sum of (x - mean)^2 (resp.
 * exp(x - max)). The per-element steps and row results are kernels/reduce.h. Partial results
 * are combined in a fixed tree (per thread, warp shuffles, shared memory, then split partials
 * in order), so results are the same from run to run and differ from the CPU's pairwise order
 * by rounding only. No atomics.
 *
 * Layouts (plan_of): the reduced dims are sorted by a's stride (not for ARGMAX / ARGMIN, whose
 * index is the row-major position) and the kept dims too, then
 *   row:    a's reduced elements are contiguous (innermost reduced stride 1): a group of
 *           G = 2..32 lanes per output for rows up to RED_ROW_BLOCK_MIN elements, else a block
 *           of TN_CUDA_THREADS per output; fewer than RED_TARGET_BLOCKS long rows (a full
 *           reduction of a large tensor) are split in chunks across blocks that write partial
 *           states `ws` (nsplit, M), combined per output in a second kernel (a thread per
 *           output, or a block per output for many partials): two passes;
 *   column: otherwise one thread per output looping over its elements, adjacent threads on
 *           adjacent outputs (coalesced when a's innermost kept stride is 1, e.g. the I column
 *           sums of an (N, I) matrix); fewer than RED_TARGET_THREADS outputs with many elements
 *           each are split in chunks the same way.
 * Strided, transposed and broadcast operands go through the iterators' offsets.
 */
#include "common.cuh"

#include <type_traits>

#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace {

const char *const red_names[TN_NUM_REDOPS] = {"sum", "mean", "max", "min", "prod",
                                              "logsumexp", "var", "argmax", "argmin"};

/* ---- accumulator types and the helpers of kernels/reduce.h by type ------------------------- */

template <typename T> struct acc_of { typedef int64_t type; }; /* i32, i64, u8 */
template <> struct acc_of<float> { typedef float type; };
template <> struct acc_of<double> { typedef double type; };
template <> struct acc_of<tn_f16> { typedef float type; };
template <> struct acc_of<tn_bf16> { typedef float type; };

__device__ __forceinline__ float red_add(float a, float b) { return a + b; }
__device__ __forceinline__ double red_add(double a, double b) { return a + b; }
__device__ __forceinline__ int64_t red_add(int64_t a, int64_t b) { return tn_add_i64(a, b); }
__device__ __forceinline__ float red_mul(float a, float b) { return a * b; }
__device__ __forceinline__ double red_mul(double a, double b) { return a * b; }
__device__ __forceinline__ int64_t red_mul(int64_t a, int64_t b) { return tn_mul_i64(a, b); }
__device__ __forceinline__ float red_max(float m, float x) { return tn_red_max_f(m, x); }
__device__ __forceinline__ double red_max(double m, double x) { return tn_red_max_d(m, x); }
__device__ __forceinline__ int64_t red_max(int64_t m, int64_t x) { return tn_red_max_i64(m, x); }
__device__ __forceinline__ float red_min(float m, float x) { return tn_red_min_f(m, x); }
__device__ __forceinline__ double red_min(double m, double x) { return tn_red_min_d(m, x); }
__device__ __forceinline__ int64_t red_min(int64_t m, int64_t x) { return tn_red_min_i64(m, x); }
__device__ __forceinline__ int arg_better(float x, int64_t i, float b, int64_t bi, int is_min) {
    return tn_red_arg_better_f(x, i, b, bi, is_min);
}
__device__ __forceinline__ int arg_better(double x, int64_t i, double b, int64_t bi, int is_min) {
    return tn_red_arg_better_d(x, i, b, bi, is_min);
}
__device__ __forceinline__ int arg_better(int64_t x, int64_t i, int64_t b, int64_t bi, int is_min) {
    return tn_red_arg_better_i64(x, i, b, bi, is_min);
}
__device__ __forceinline__ int arg_later(float x, float b, int is_min) { return tn_red_arg_later_f(x, b, is_min); }
__device__ __forceinline__ int arg_later(double x, double b, int is_min) { return tn_red_arg_later_d(x, b, is_min); }
__device__ __forceinline__ int arg_later(int64_t x, int64_t b, int is_min) { return tn_red_arg_later_i64(x, b, is_min); }
__device__ __forceinline__ float red_sqdev(float x, float c) { return tn_red_sqdev_f(x, c); }
__device__ __forceinline__ double red_sqdev(double x, double c) { return tn_red_sqdev_d(x, c); }
__device__ __forceinline__ float red_expdev(float x, float c) { return tn_red_expdev_f(x, c); }
__device__ __forceinline__ double red_expdev(double x, double c) { return tn_red_expdev_d(x, c); }
__device__ __forceinline__ float red_mean(float s, int64_t n) { return tn_red_mean_f(s, n); }
__device__ __forceinline__ double red_mean(double s, int64_t n) { return tn_red_mean_d(s, n); }
__device__ __forceinline__ float red_var(float s, int64_t n, int32_t c) { return tn_red_var_f(s, n, c); }
__device__ __forceinline__ double red_var(double s, int64_t n, int32_t c) { return tn_red_var_d(s, n, c); }
__device__ __forceinline__ double red_lse(float m, float s) { return tn_red_lse_f(m, s); }
__device__ __forceinline__ double red_lse(double m, double s) { return tn_red_lse_d(m, s); }

/* ---- the reduction ops: a state S, its identity, one element, two partial states ------------ */

enum { XF_ID, XF_SQ, XF_EXP }; /* the term summed: x, (x - c)^2, exp(x - c); c the output's cen */

template <typename A, int XF> struct OpSum {
    typedef A S;
    static __device__ __forceinline__ S init() { return (A)0; }
    static __device__ __forceinline__ S step(S s, A x, int64_t, A c) {
        if constexpr (XF == XF_SQ) return s + red_sqdev(x, c);
        else if constexpr (XF == XF_EXP) return s + red_expdev(x, c);
        else return red_add(s, x);
    }
    static __device__ __forceinline__ S combine(S a, S b) { return red_add(a, b); }
};

template <typename A> struct OpProd {
    typedef A S;
    static __device__ __forceinline__ S init() { return (A)1; }
    static __device__ __forceinline__ S step(S s, A x, int64_t, A) { return red_mul(s, x); }
    static __device__ __forceinline__ S combine(S a, S b) { return red_mul(a, b); }
};

/* MAX (IS_MIN 0) / MIN: the identity is -inf / +inf (INT64_MIN / INT64_MAX for integers) */
template <typename A, int IS_MIN> struct OpExt {
    typedef A S;
    static __device__ __forceinline__ S init() {
        if constexpr (std::is_floating_point<A>::value) return IS_MIN ? (A)INFINITY : (A)-INFINITY;
        else return IS_MIN ? (A)INT64_MAX : (A)INT64_MIN;
    }
    static __device__ __forceinline__ S step(S s, A x, int64_t, A) { return IS_MIN ? red_min(s, x) : red_max(s, x); }
    static __device__ __forceinline__ S combine(S a, S b) { return IS_MIN ? red_min(a, b) : red_max(a, b); }
};

/* ARGMAX / ARGMIN: the best value and its index; i = -1 is the empty state */
template <typename A> struct ArgState {
    A v;
    int64_t i;
};
template <typename A, int IS_MIN> struct OpArg {
    typedef ArgState<A> S;
    static __device__ __forceinline__ S init() {
        S s;
        s.v = (A)0;
        s.i = -1;
        return s;
    }
    /* a thread's elements come in increasing j: the sequential scan of the CPU */
    static __device__ __forceinline__ S step(S s, A x, int64_t j, A) {
        if (s.i < 0 || (s.v == s.v && arg_later(x, s.v, IS_MIN))) {
            s.v = x;
            s.i = j;
        }
        return s;
    }
    static __device__ __forceinline__ S combine(S a, S b) {
        if (b.i < 0) return a;
        if (a.i < 0) return b;
        return arg_better(b.v, b.i, a.v, a.i, IS_MIN) ? b : a;
    }
};

/* ---- arguments, offsets, shuffles ------------------------------------------------------------ */

/* What an output's final state becomes: written to out (and values) or, in the first pass of
 * VAR / LOGSUMEXP, to cen. */
enum { FIN_STORE, FIN_MEAN, FIN_VAR, FIN_LSE, FIN_ARG, FIN_CEN_MEAN, FIN_CEN_MAX };

template <typename A> struct RedArgs {
    tn_iter kit;           /* (M) kept dims: operands 0 out (odt), 1 a, 2 values (vdt) when nops 3 */
    tn_iter rit;           /* (N) reduced dims of a: operand 0 (data unused) */
    int64_t M, N;
    int64_t nsplit, chunk; /* an output's N elements in nsplit chunks of chunk (the last shorter) */
    int32_t fin, corr, odt, vdt;
    A *cen;                /* (M) the mean / max of each output: written by pass 1, read by pass 2 */
    void *ws;              /* (nsplit, M) partial states (Op::S) when nsplit > 1 */
};

/* Offset (elements) of operand k at linear element e of a finished iterator. Unrolled over
 * TN_MAX_DIMS so that every index is a constant and the iterator stays in parameter space. */
__device__ __forceinline__ int64_t iter_off(const tn_iter &it, int k, int64_t e) {
    int64_t off = 0;
#pragma unroll
    for (int d = 0; d < TN_MAX_DIMS; d++) {
        if (d >= it.ndim) break;
        if (d == it.ndim - 1) { /* the outermost dim: e < shape[d] already */
            off += e * it.stride[k][d];
            break;
        }
        const int64_t n = it.shape[d], q = e / n;
        off += (e - q * n) * it.stride[k][d];
        e = q;
    }
    return off;
}

/* tn_cuda_group_reduce / tn_cuda_block_reduce (common.cuh) shuffle an arg state field by field */
template <typename A> __device__ __forceinline__ ArgState<A> tn_cuda_shfl_xor(ArgState<A> v, int o) {
    ArgState<A> r;
    r.v = ::tn_cuda_shfl_xor(v.v, o);
    r.i = ::tn_cuda_shfl_xor(v.i, o);
    return r;
}

/* The state of output i over its elements j0, j0 + step, ... < j1. */
template <typename T, typename Op, typename A>
__device__ __forceinline__ typename Op::S reduce_part(const RedArgs<A> &p, int64_t i, int64_t j0, int64_t j1,
                                                      int64_t step) {
    typename Op::S s = Op::init();
    const T *a = (const T *)p.kit.data[1] + iter_off(p.kit, 1, i);
    const A c = (p.fin == FIN_VAR || p.fin == FIN_LSE) ? p.cen[i] : (A)0;
    if (p.rit.ndim == 1) {
        const int64_t rs = p.rit.stride[0][0];
#pragma unroll 4
        for (int64_t j = j0; j < j1; j += step) s = Op::step(s, (A)tn_cuda_load<T>(a + j * rs), j, c);
    } else {
        for (int64_t j = j0; j < j1; j += step) s = Op::step(s, (A)tn_cuda_load<T>(a + iter_off(p.rit, 0, j)), j, c);
    }
    return s;
}

/* out[off] = v in dtype dt (integer dtypes truncate an i64, as the CPU's store of integer
 * results; float results round to f16 / bf16 through f32, as tn_store_f64). */
template <typename V> __device__ __forceinline__ void store_dt(void *base, int32_t dt, int64_t off, V v) {
    switch (dt) {
    case TN_F32: ((float *)base)[off] = (float)v; break;
    case TN_F64: ((double *)base)[off] = (double)v; break;
    case TN_F16: ((uint16_t *)base)[off] = tn_float_to_half((float)v); break;
    case TN_BF16: ((uint16_t *)base)[off] = tn_float_to_bf16((float)v); break;
    case TN_I32: ((int32_t *)base)[off] = (int32_t)v; break;
    case TN_I64: ((int64_t *)base)[off] = (int64_t)v; break;
    case TN_U8: ((uint8_t *)base)[off] = (uint8_t)v; break;
    default: break;
    }
}

/* Output i's final state s: its result to out (or to cen in pass 1 of VAR / LOGSUMEXP). */
template <typename A> __device__ __forceinline__ void finish(const RedArgs<A> &p, int64_t i, A s) {
    if (p.fin == FIN_CEN_MAX) {
        p.cen[i] = s;
        return;
    }
    void *o = p.kit.data[0];
    if constexpr (std::is_floating_point<A>::value) {
        switch (p.fin) {
        case FIN_CEN_MEAN: p.cen[i] = red_mean(s, p.N); return;
        case FIN_MEAN: store_dt(o, p.odt, iter_off(p.kit, 0, i), red_mean(s, p.N)); return;
        case FIN_VAR: store_dt(o, p.odt, iter_off(p.kit, 0, i), red_var(s, p.N, p.corr)); return;
        case FIN_LSE: store_dt(o, p.odt, iter_off(p.kit, 0, i), red_lse(p.cen[i], s)); return;
        default: break;
        }
    }
    store_dt(o, p.odt, iter_off(p.kit, 0, i), s);
}
template <typename A> __device__ __forceinline__ void finish(const RedArgs<A> &p, int64_t i, ArgState<A> s) {
    ((int64_t *)p.kit.data[0])[iter_off(p.kit, 0, i)] = s.i;
    if (p.kit.nops > 2) store_dt(p.kit.data[2], p.vdt, iter_off(p.kit, 2, i), s.v);
}

/* ---- kernels ------------------------------------------------------------------------------ */

/* Groups of G = 1 << lg lanes, one per item = (split sp, output i) = sp * M + i, items
 * < M * nsplit; the loop runs per warp so that every lane of a warp takes part in the shuffles.
 * nsplit 1: the item's state is finished; else written to ws[item]. */
template <typename T, typename Op, typename A>
__global__ void __launch_bounds__(TN_CUDA_THREADS) reduce_group_kernel(const RedArgs<A> p, int lg) {
    typedef typename Op::S S;
    const int G = 1 << lg, lane = threadIdx.x & (G - 1);
    const int64_t items = p.M * p.nsplit, per_warp = 32 >> lg;
    const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; w * per_warp < items; w += nwarps) {
        const int64_t it = w * per_warp + ((threadIdx.x & 31) >> lg);
        S s = Op::init();
        int64_t i = 0;
        if (it < items) {
            const int64_t sp = it / p.M, j0 = sp * p.chunk;
            i = it - sp * p.M;
            s = reduce_part<T, Op>(p, i, j0 + lane, min(j0 + p.chunk, p.N), G);
        }
        s = tn_cuda_group_reduce<Op>(s, G);
        if (it < items && lane == 0) {
            if (p.nsplit > 1) ((S *)p.ws)[it] = s;
            else finish(p, i, s);
        }
    }
}

/* One block of TN_CUDA_THREADS per item (as above). */
template <typename T, typename Op, typename A>
__global__ void __launch_bounds__(TN_CUDA_THREADS) reduce_block_kernel(const RedArgs<A> p) {
    typedef typename Op::S S;
    const int64_t items = p.M * p.nsplit;
    for (int64_t it = blockIdx.x; it < items; it += gridDim.x) { /* uniform across the block */
        const int64_t sp = it / p.M, i = it - sp * p.M, j0 = sp * p.chunk;
        S s = reduce_part<T, Op>(p, i, j0 + threadIdx.x, min(j0 + p.chunk, p.N), blockDim.x);
        s = tn_cuda_block_reduce<Op>(s);
        if (threadIdx.x == 0) {
            if (p.nsplit > 1) ((S *)p.ws)[it] = s;
            else finish(p, i, s);
        }
    }
}

/* The second pass of split reductions: output i combines ws[0..nsplit) (, i) in order. */
template <typename Op, typename A>
__global__ void __launch_bounds__(TN_CUDA_THREADS) reduce_combine_kernel(const RedArgs<A> p) {
    typedef typename Op::S S;
    const S *ws = (const S *)p.ws;
    TN_CUDA_GRID_LOOP(i, p.M) {
        S s = Op::init();
        for (int64_t sp = 0; sp < p.nsplit; sp++) s = Op::combine(s, ws[sp * p.M + i]);
        finish(p, i, s);
    }
}

/* The same with a block per output, for many partials (nsplit >= RED_COMBINE_BLOCK_MIN): the
 * threads take every blockDim.x-th partial, then a fixed tree. */
template <typename Op, typename A>
__global__ void __launch_bounds__(TN_CUDA_THREADS) reduce_combine_block_kernel(const RedArgs<A> p) {
    typedef typename Op::S S;
    const S *ws = (const S *)p.ws;
    for (int64_t i = blockIdx.x; i < p.M; i += gridDim.x) { /* uniform across the block */
        S s = Op::init();
        for (int64_t sp = threadIdx.x; sp < p.nsplit; sp += blockDim.x) s = Op::combine(s, ws[sp * p.M + i]);
        s = tn_cuda_block_reduce<Op>(s);
        if (threadIdx.x == 0) finish(p, i, s);
    }
}

/* ---- host side ------------------------------------------------------------------------------ */

enum {
    RED_ROW_BLOCK_MIN = 4096,    /* rows longer than this get a block, shorter ones a group of lanes */
    RED_SPLIT_CHUNK = 4096,      /* the least elements per block of a split row */
    RED_TARGET_BLOCKS = 1024,    /* split rows when there are fewer */
    RED_TARGET_THREADS = 131072, /* split columns when there are fewer outputs */
    RED_COL_CHUNK = 32,          /* the least elements per thread of a split column */
    RED_COMBINE_BLOCK_MIN = 64   /* partials per output combined by a block rather than a thread */
};

struct Plan {
    int block;             /* 1: a block per item; 0: a group of 1 << lg lanes */
    int lg;
    int64_t nsplit, chunk; /* as in RedArgs */
};

int ceil_log2(int64_t n) {
    int l = 0;
    while (((int64_t)1 << l) < n) l++;
    return l;
}

Plan plan_of(const tn_iter &rit, int64_t M, int64_t N) {
    Plan P = {0, 0, 1, N > 0 ? N : 1};
    const int row = N > 1 && rit.stride[0][0] == 1 && (rit.ndim == 1 || rit.shape[0] >= 16);
    if (row) {
        if (N <= 32) {
            P.lg = ceil_log2(N);
        } else if (N <= RED_ROW_BLOCK_MIN) {
            P.lg = 5;
        } else {
            P.block = 1;
            if (M < RED_TARGET_BLOCKS) {
                const int64_t want = (RED_TARGET_BLOCKS + M - 1) / M, most = (N + RED_SPLIT_CHUNK - 1) / RED_SPLIT_CHUNK;
                P.nsplit = want < most ? want : most;
            }
        }
    } else if (M < RED_TARGET_THREADS && N >= 2 * RED_COL_CHUNK) {
        const int64_t want = RED_TARGET_THREADS / M, most = N / RED_COL_CHUNK;
        P.nsplit = want < most ? want : most;
    }
    if (P.nsplit > 1) {
        P.chunk = (N + P.nsplit - 1) / P.nsplit;
        P.nsplit = (N + P.chunk - 1) / P.chunk;
    }
    return P;
}


/* Runs Op over every output with plan P (and its second pass when split). */
template <typename T, typename Op, typename A> tn_status launch(RedArgs<A> p, const Plan &P) {
    typedef typename Op::S S;
    const cudaStream_t stream = tn_cuda_stream_now();
    tn_tensor *ws = NULL; /* (nsplit, M) states, bytes */
    p.nsplit = P.nsplit;
    p.chunk = P.chunk;
    p.ws = NULL;
    if (P.nsplit > 1) {
        const int64_t nbytes = P.nsplit * p.M * (int64_t)sizeof(S);
        TN_TRY(tn_tensor_empty(&ws, 1, &nbytes, TN_U8, TN_CUDA));
        p.ws = ws->data;
    }
    const int64_t items = p.M * P.nsplit;
    if (P.block) {
        const unsigned blocks = (unsigned)(items < 65535 * 32 ? items : 65535 * 32);
        reduce_block_kernel<T, Op, A><<<blocks, TN_CUDA_THREADS, 0, stream>>>(p);
    } else {
        reduce_group_kernel<T, Op, A><<<tn_cuda_blocks(items << P.lg), TN_CUDA_THREADS, 0, stream>>>(p, P.lg);
    }
    tn_status rc = TN_CUDA_CHECK_LAUNCH();
    if (rc == TN_OK && P.nsplit > 1) {
        if (P.nsplit >= RED_COMBINE_BLOCK_MIN) { /* then M <= RED_TARGET_THREADS / 64 */
            const unsigned blocks = (unsigned)(p.M < 65535 * 32 ? p.M : 65535 * 32);
            reduce_combine_block_kernel<Op, A><<<blocks, TN_CUDA_THREADS, 0, stream>>>(p);
        } else {
            reduce_combine_kernel<Op, A><<<tn_cuda_blocks(p.M), TN_CUDA_THREADS, 0, stream>>>(p);
        }
        rc = TN_CUDA_CHECK_LAUNCH();
    }
    tn_tensor_free(ws); /* stream-ordered: reused only by work queued after these kernels */
    return rc;
}

/* VAR / LOGSUMEXP: pass 1 (Op1, fin1) writes each output's centre to cen, pass 2 (Op2, fin2)
 * sums the terms around it and writes the result. */
template <typename T, typename Op1, typename Op2, typename A>
tn_status launch_two_pass(RedArgs<A> p, const Plan &P, int32_t fin1, int32_t fin2) {
    tn_tensor *cen = NULL; /* (M) accumulator type, bytes */
    const int64_t nbytes = p.M * (int64_t)sizeof(A);
    TN_TRY(tn_tensor_empty(&cen, 1, &nbytes, TN_U8, TN_CUDA));
    p.cen = (A *)cen->data;
    p.fin = fin1;
    tn_status rc = launch<T, Op1>(p, P);
    if (rc == TN_OK) {
        p.fin = fin2;
        rc = launch<T, Op2>(p, P);
    }
    tn_tensor_free(cen);
    return rc;
}

template <typename T> struct RunReduce {
    static tn_status run(const tn_iter *kit, const tn_iter *rit, int32_t op, int32_t corr, int32_t adt,
                         int32_t odt, int32_t vdt, const Plan &P) {
        typedef typename acc_of<T>::type A;
        RedArgs<A> p;
        memset(&p, 0, sizeof p);
        p.kit = *kit;
        p.rit = *rit;
        p.M = kit->numel;
        p.N = rit->numel;
        p.corr = corr;
        p.odt = odt;
        p.vdt = vdt;
        switch (op) {
        case TN_RED_SUM: p.fin = FIN_STORE; return launch<T, OpSum<A, XF_ID>>(p, P);
        case TN_RED_PROD: p.fin = FIN_STORE; return launch<T, OpProd<A>>(p, P);
        case TN_RED_MAX: p.fin = FIN_STORE; return launch<T, OpExt<A, 0>>(p, P);
        case TN_RED_MIN: p.fin = FIN_STORE; return launch<T, OpExt<A, 1>>(p, P);
        case TN_RED_ARGMAX: p.fin = FIN_ARG; return launch<T, OpArg<A, 0>>(p, P);
        case TN_RED_ARGMIN: p.fin = FIN_ARG; return launch<T, OpArg<A, 1>>(p, P);
        default: break;
        }
        if constexpr (std::is_floating_point<A>::value) {
            switch (op) {
            case TN_RED_MEAN: p.fin = FIN_MEAN; return launch<T, OpSum<A, XF_ID>>(p, P);
            case TN_RED_VAR:
                return launch_two_pass<T, OpSum<A, XF_ID>, OpSum<A, XF_SQ>>(p, P, FIN_CEN_MEAN, FIN_VAR);
            case TN_RED_LOGSUMEXP:
                return launch_two_pass<T, OpExt<A, 0>, OpSum<A, XF_EXP>>(p, P, FIN_CEN_MAX, FIN_LSE);
            default: break;
            }
        }
        /* core/reduce.c rejects these before dispatching */
        return tn_error(TN_ERR_DTYPE, "%s: needs a float dtype, got %s", red_names[op], tn_dtype_name(adt));
    }
};

} // namespace

extern "C" tn_status tn_cuda_reduce(const tn_iter *kept, const tn_iter *reduced, int32_t op, int32_t correction,
                                    int32_t adtype, int32_t odtype, int32_t vdtype) {
    if (op < 0 || op >= TN_NUM_REDOPS) return tn_error(TN_ERR_ARG, "reduce: invalid op %d", (int)op);
    if (kept->numel == 0) return TN_OK;
    tn_iter kit = *kept, rit = *reduced;
    tn_iter_sort_dims(&kit, 1); /* adjacent outputs on adjacent elements of a where possible */
    if (op != TN_RED_ARGMAX && op != TN_RED_ARGMIN) tn_iter_sort_dims(&rit, 0); /* the order of j is free */
    const Plan P = plan_of(rit, kit.numel, rit.numel);
    return TN_CUDA_DISPATCH(red_names[op], adtype, RunReduce, &kit, &rit, op, correction, adtype, odtype,
                             vdtype, P);
}
