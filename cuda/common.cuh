/*
 * cuda/common.cuh — what every .cu file of cuda/ includes first: the CUDA runtime, core's
 * internal.h with C linkage, and TN_CUDA_CHECK, which records a failing CUDA call with its
 * file and line in the thread-local error (tn_error) and evaluates to a tn_status.
 *
 *   TN_TRY(TN_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream)));
 *
 * cuda/ depends on core/, never the reverse (STYLE.md).
 */
#ifndef TERN_CUDA_COMMON_CUH
#define TERN_CUDA_COMMON_CUH

/* The C headers internal.h includes come first, with C++ linkage, so that wrapping internal.h
 * in extern "C" below wraps only tern's own declarations (libstdc++'s math.h declares
 * templates, which must not get C linkage). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cuda_fp16.h> /* before the extern "C" block: kernels/half.h uses it in device code */
#include <cuda_runtime.h>

extern "C" {
#include "internal.h"
}

/* A failed CUDA call: clear the runtime's last-error slot (so a later cudaGetLastError() after
 * a kernel launch does not report this one again) and record "<file>:<line>: <call>: <name>
 * (<description>)". Out-of-memory maps to TN_ERR_OOM, everything else to TN_ERR_DEVICE. */
static inline tn_status tn_cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
    (void)cudaGetLastError();
    return tn_error(e == cudaErrorMemoryAllocation ? TN_ERR_OOM : TN_ERR_DEVICE,
                    "%s:%d: %s failed: %s (%s)", file, line, call, cudaGetErrorName(e),
                    cudaGetErrorString(e));
}

#define TN_CUDA_CHECK(call)                                                                    \
    ([&]() -> tn_status {                                                                      \
        cudaError_t tn_cuda_e_ = (call);                                                       \
        return tn_cuda_e_ == cudaSuccess ? TN_OK                                               \
                                         : tn_cuda_fail(tn_cuda_e_, #call, __FILE__, __LINE__); \
    }())

/* After every kernel launch: TN_TRY(TN_CUDA_CHECK_LAUNCH()); */
#define TN_CUDA_CHECK_LAUNCH() TN_CUDA_CHECK(cudaGetLastError())

/* ---- shared by every kernel file ------------------------------------------------------------ */

#include "iter.h"          /* tn_iter: the broadcast / strided operand layout core/ prepares */
#include "kernels/half.h"  /* f16 / bf16 <-> f32, the same bits as on the CPU */

/* The stream this thread's work on the current device goes to (cuda/device.cu): the current
 * tn_cuda_stream_t when it belongs to the current device, else the default stream. Every launch
 * and async copy uses it. */
extern "C" cudaStream_t tn_cuda_stream_now(void);

enum { TN_CUDA_THREADS = 256 };

/* Blocks of TN_CUDA_THREADS for a grid-stride loop over n elements (at least 1, at most 65535 x
 * 32: grid-stride loops cover the rest). */
static inline unsigned tn_cuda_blocks(int64_t n) {
    int64_t b = (n + TN_CUDA_THREADS - 1) / TN_CUDA_THREADS;
    if (b < 1) b = 1;
    if (b > 65535 * 32) b = 65535 * 32;
    return (unsigned)b;
}

/* for (i = global thread; i < n; i += grid size) */
#define TN_CUDA_GRID_LOOP(i, n)                                                                  \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                   \
         i += (int64_t)blockDim.x * gridDim.x)

/* Element offsets (in elements) of linear element e (row-major over the iterator's broadcast
 * shape) for the first nops operands of a finished tn_iter (tn_iter_finish: dims innermost
 * first, size-1 dims dropped, contiguous dims merged). Pass the iterator to kernels by value. */
static __device__ __forceinline__ void tn_cuda_iter_offsets(const tn_iter &it, int nops, int64_t e, int64_t *off) {
    for (int k = 0; k < nops; k++) off[k] = 0;
    for (int32_t d = 0; d < it.ndim; d++) {
        const int64_t n = it.shape[d], i = e % n;
        e /= n;
        for (int k = 0; k < nops; k++) off[k] += i * it.stride[k][d];
    }
}

/* 1 when every operand of the finished iterator is contiguous (one dim, stride 1): kernels
 * then index with e directly. */
static inline int tn_cuda_iter_flat(const tn_iter &it) {
    if (it.ndim != 1) return 0;
    for (int k = 0; k < it.nops; k++)
        if (it.stride[k][0] != 1) return 0;
    return 1;
}

/* Storage type <-> the type the math runs in (float for f16 / bf16, as on the CPU). f16 and bf16
 * are stored as uint16_t; tn_f16 / tn_bf16 tell them apart in templates. */
struct tn_f16 { uint16_t bits; };
struct tn_bf16 { uint16_t bits; };
template <typename T> struct tn_cuda_math { typedef T type; };
template <> struct tn_cuda_math<tn_f16> { typedef float type; };
template <> struct tn_cuda_math<tn_bf16> { typedef float type; };
template <typename T> static __device__ __forceinline__ typename tn_cuda_math<T>::type tn_cuda_load(const T *p) { return *p; }
template <> __device__ __forceinline__ float tn_cuda_load<tn_f16>(const tn_f16 *p) { return tn_half_to_float(p->bits); }
template <> __device__ __forceinline__ float tn_cuda_load<tn_bf16>(const tn_bf16 *p) { return tn_bf16_to_float(p->bits); }
template <typename T, typename M> static __device__ __forceinline__ void tn_cuda_store(T *p, M v) { *p = (T)v; }
template <> __device__ __forceinline__ void tn_cuda_store<tn_f16, float>(tn_f16 *p, float v) { p->bits = tn_float_to_half(v); }
template <> __device__ __forceinline__ void tn_cuda_store<tn_bf16, float>(tn_bf16 *p, float v) { p->bits = tn_float_to_bf16(v); }

/* Calls F<T>::run(args...) with T the storage type of dtype (f32 float, f64 double, f16 tn_f16,
 * bf16 tn_bf16, i32 int32_t, i64 int64_t, u8 uint8_t); an invalid dtype is an error. */
#define TN_CUDA_DISPATCH(op, dtype, F, ...)                                                      \
    ([&]() -> tn_status {                                                                       \
        switch (dtype) {                                                                        \
        case TN_F32: return F<float>::run(__VA_ARGS__);                                         \
        case TN_F64: return F<double>::run(__VA_ARGS__);                                        \
        case TN_F16: return F<tn_f16>::run(__VA_ARGS__);                                        \
        case TN_BF16: return F<tn_bf16>::run(__VA_ARGS__);                                      \
        case TN_I32: return F<int32_t>::run(__VA_ARGS__);                                       \
        case TN_I64: return F<int64_t>::run(__VA_ARGS__);                                       \
        case TN_U8: return F<uint8_t>::run(__VA_ARGS__);                                        \
        default: return tn_error(TN_ERR_DTYPE, "%s: invalid dtype %d", (op), (int)(dtype));     \
        }                                                                                       \
    }())

/* ---- warp and block reductions ---------------------------------------------------------------- */

/* A full warp's xor shuffle of the scalar types; a state type of several fields gets an overload
 * tn_cuda_shfl_xor(S, int) next to it (found by argument-dependent lookup). */
static __device__ __forceinline__ float tn_cuda_shfl_xor(float v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }
static __device__ __forceinline__ double tn_cuda_shfl_xor(double v, int o) { return __shfl_xor_sync(0xffffffffu, v, o); }
static __device__ __forceinline__ int64_t tn_cuda_shfl_xor(int64_t v, int o) {
    return (int64_t)__shfl_xor_sync(0xffffffffu, (long long)v, o);
}

/* Op: typedef S (the state), static S init() (the identity), static S combine(S a, S b). */

/* Combines the states of each aligned group of `width` lanes (a power of two <= 32); every lane
 * ends with its group's total, combined in the same order on every lane up to the order of
 * combine's operands. Every lane of the warp must call it. */
template <typename Op>
__device__ __forceinline__ typename Op::S tn_cuda_group_reduce(typename Op::S s, int width) {
    for (int o = width >> 1; o > 0; o >>= 1) s = Op::combine(s, tn_cuda_shfl_xor(s, o));
    return s;
}

/* Combines the states of the block's threads (blockDim.x = TN_CUDA_THREADS): each warp reduces,
 * then every warp reduces the warps' partials in the same order, so every thread gets the total.
 * Every thread of the block must call it. */
template <typename Op>
__device__ __forceinline__ typename Op::S tn_cuda_block_reduce(typename Op::S s) {
    __shared__ typename Op::S part[TN_CUDA_THREADS / 32]; /* (warps) */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    s = tn_cuda_group_reduce<Op>(s, 32);
    if (lane == 0) part[w] = s;
    __syncthreads();
    s = lane < nw ? part[lane] : Op::init();
    s = tn_cuda_group_reduce<Op>(s, 32);
    __syncthreads(); /* part is written again by the block's next call */
    return s;
}

#endif /* TERN_CUDA_COMMON_CUH */
