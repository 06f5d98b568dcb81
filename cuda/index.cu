/*
 * cuda/index.cu — joining and indexing on the GPU: the CUDA backend of core/index.c (tn_gather,
 * tn_scatter_add, tn_index_select, tn_index_add, tn_cat) and of its index range check.
 *
 * Gradient policy: gather and index_select write their output (=); scatter_add and index_add
 * accumulate into out (+=) and are the backward of gather and index_select. cat writes (=); its
 * backward is narrow (a view), so it has no kernel.
 *
 * core/index.c checks the arguments, prepares the output and describes each launch as a
 * finished tn_iter (core/iter.h) over an iteration shape; the kernels only walk it. Operands,
 * in order, with o[k] the element offset of operand k at an iteration element:
 *   take           (index, d, x):     d[o1] = x[o2 + index[o0] * xdim_stride]
 *   put_add        (index, d, x):     x[o2 + index[o0] * xdim_stride] += d[o1]       (atomics)
 *   put_add_ordered (x, index, d, c): x[o0] += d[o2 + j * dstride] for j = 0 .. n-1 in order
 *                                     where index[o1 + j * istride] == c = o3 (no atomics)
 *   check          (index):           first row-major position whose value is not in [0, size)
 *   check_record   (1 thread):        that position's value etc. into the device's pending error
 *   copy           (dst, src):        dst[o0] = src[o1]
 * and cat_rows copies contiguous inputs into their column ranges of a contiguous output.
 *
 * Determinism. take, check, copy and cat_rows write every element once. put_add_ordered sums
 * each out element on one thread, in the CPU's order (index positions ascending along dim),
 * so its results equal the CPU's bit for bit; core/index.c chooses it when the list along dim
 * is short and the work small. Otherwise put_add uses atomics: integer adds wrap and commute, so
 * i32, i64 and u8 results still equal the CPU's exactly; f32 and f64 use atomicAdd (f32's
 * flushes subnormal inputs and results to zero, as PTX atom.add.f32 does), f16 and bf16 a
 * compare-and-swap loop on the aligned 32-bit word that holds the element (load -> f32 add ->
 * round-to-nearest-even store, one element at a time as on the CPU), so float results depend on
 * the order in which the additions land: equal to the CPU's within rounding, not bit for bit.
 * The 32-bit word of a narrow element (f16, bf16, u8) lies inside its storage block, since the
 * CUDA pool hands out 512-byte-aligned blocks of a multiple of 512 bytes.
 *
 * Values are moved as raw bits of their element size (take, copy, cat_rows), so every dtype
 * goes through the same kernels; adds run in the dtype through tn_cuda_load / tn_cuda_store
 * (kernels/half.h for f16 / bf16), as core/index.c's ix_add_run does on the CPU.
 *
 * Index values are read as i32 or i64 and widened to int64; element offsets are int64 all
 * through, so tensors beyond 2^31 elements index correctly. Every launch and copy goes to
 * tn_cuda_stream_now(); nothing waits for the stream except the synchronous range check
 * (tn_cuda_index_check, TERN_CUDA_SYNC_CHECKS / tn_cuda_set_sync_checks).
 *
 * Asynchronous range check (the default): tn_cuda_index_check_async queues the check and a
 * one-thread kernel that copies the first bad value (op, position, value, size, the index's
 * shape) into a per-device pending record in device memory, unless one is already there; the
 * op's kernels read the call's flag and write nothing when it holds a position, and skip any
 * value outside [0, size) regardless. The host reads the record at its next wait
 * (tn_cuda_check_pending: tn_cuda_synchronize, tn_cuda_stream_synchronize, device -> host
 * copies): one ~100-byte copy queued before the wait, and raises and clears it. A check on
 * another stream than the one waited for is seen at a wait that covers it.
 */
#include "common.cuh"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- element types ------------------------------------------------------------------------ */

/* The unsigned type that moves an element of ES bytes as raw bits. */
template <int ES> struct ix_raw;
template <> struct ix_raw<1> { typedef uint8_t type; };
template <> struct ix_raw<2> { typedef uint16_t type; };
template <> struct ix_raw<4> { typedef uint32_t type; };
template <> struct ix_raw<8> { typedef unsigned long long type; };
template <> struct ix_raw<16> { typedef uint4 type; };

/* a + b in the dtype, as core/index.c's ix_add_run: floats in their type, f16 / bf16 through
 * f32 with one rounding, integers wrapping (no signed-overflow UB). */
static __device__ __forceinline__ float ix_add(float a, float b) { return a + b; }
static __device__ __forceinline__ double ix_add(double a, double b) { return a + b; }
static __device__ __forceinline__ tn_f16 ix_add(tn_f16 a, tn_f16 b) {
    tn_f16 r;
    tn_cuda_store(&r, tn_cuda_load(&a) + tn_cuda_load(&b));
    return r;
}
static __device__ __forceinline__ tn_bf16 ix_add(tn_bf16 a, tn_bf16 b) {
    tn_bf16 r;
    tn_cuda_store(&r, tn_cuda_load(&a) + tn_cuda_load(&b));
    return r;
}
static __device__ __forceinline__ int32_t ix_add(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static __device__ __forceinline__ int64_t ix_add(int64_t a, int64_t b) { return (int64_t)((uint64_t)a + (uint64_t)b); }
static __device__ __forceinline__ uint8_t ix_add(uint8_t a, uint8_t b) { return (uint8_t)(a + b); }

/* The bits of a narrow element and back. */
static __device__ __forceinline__ unsigned ix_bits(tn_f16 x) { return x.bits; }
static __device__ __forceinline__ unsigned ix_bits(tn_bf16 x) { return x.bits; }
static __device__ __forceinline__ unsigned ix_bits(uint8_t x) { return x; }
template <typename T> static __device__ __forceinline__ T ix_of_bits(unsigned b);
template <> __device__ __forceinline__ tn_f16 ix_of_bits<tn_f16>(unsigned b) {
    tn_f16 r;
    r.bits = (uint16_t)b;
    return r;
}
template <> __device__ __forceinline__ tn_bf16 ix_of_bits<tn_bf16>(unsigned b) {
    tn_bf16 r;
    r.bits = (uint16_t)b;
    return r;
}
template <> __device__ __forceinline__ uint8_t ix_of_bits<uint8_t>(unsigned b) { return (uint8_t)b; }

/* *p += v for a 1- or 2-byte element: compare-and-swap on the aligned 32-bit word holding it,
 * leaving the word's other bytes as they are. */
template <typename T> static __device__ __forceinline__ void ix_atomic_add_narrow(T *p, T v) {
    static_assert(sizeof(T) == 1 || sizeof(T) == 2, "a narrow element");
    const uintptr_t a = (uintptr_t)p;
    unsigned int *w = (unsigned int *)(a & ~(uintptr_t)3);
    const unsigned shift = (unsigned)(a & 3u) * 8u; /* little-endian: byte k holds bits 8k.. */
    const unsigned mask = (sizeof(T) == 1 ? 0xffu : 0xffffu) << shift;
    unsigned old = *(volatile unsigned int *)w, seen;
    do {
        seen = old;
        const T cur = ix_of_bits<T>((seen & mask) >> shift);
        const unsigned nw = (seen & ~mask) | ((ix_bits(ix_add(cur, v)) << shift) & mask);
        old = atomicCAS(w, seen, nw);
    } while (old != seen);
}

static __device__ __forceinline__ void ix_atomic_add(float *p, float v) { atomicAdd(p, v); }
static __device__ __forceinline__ void ix_atomic_add(double *p, double v) { atomicAdd(p, v); }
static __device__ __forceinline__ void ix_atomic_add(int32_t *p, int32_t v) {
    atomicAdd((unsigned int *)p, (unsigned int)v); /* wraps like the CPU's uint32 add */
}
static __device__ __forceinline__ void ix_atomic_add(int64_t *p, int64_t v) {
    atomicAdd((unsigned long long *)p, (unsigned long long)v);
}
static __device__ __forceinline__ void ix_atomic_add(tn_f16 *p, tn_f16 v) { ix_atomic_add_narrow(p, v); }
static __device__ __forceinline__ void ix_atomic_add(tn_bf16 *p, tn_bf16 v) { ix_atomic_add_narrow(p, v); }
static __device__ __forceinline__ void ix_atomic_add(uint8_t *p, uint8_t v) { ix_atomic_add_narrow(p, v); }

/* ---- kernels -------------------------------------------------------------------------------- */

/* d = x at the index along dim (gather, index_select). U: raw element type; I: index type. */
template <typename U, typename I>
__global__ void __launch_bounds__(TN_CUDA_THREADS)
ix_take_kernel(const __grid_constant__ tn_iter it, /* (index, d, x) over the iteration shape;
                                                      x's stride along dim is 0 in it */
               int64_t xdim_stride,                /* x's stride along dim, elements */
               int64_t xdim_size,                  /* x's size along dim: valid values [0, size) */
               const unsigned long long *bad) {    /* (1) the check's first bad position or NULL */
    if (bad && *bad != ~0ull) return; /* a bad index: write nothing, as the CPU */
    const I *ip = (const I *)it.data[0];
    U *dp = (U *)it.data[1];
    const U *xp = (const U *)it.data[2];
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[3];
        tn_cuda_iter_offsets(it, 3, e, off);
        const int64_t v = (int64_t)ip[off[0]];
        if ((uint64_t)v >= (uint64_t)xdim_size) continue; /* never read out of range */
        dp[off[1]] = xp[off[2] + v * xdim_stride];
    }
}

/* x at the index along dim += d, with atomics (scatter_add, index_add). T: storage type. */
template <typename T, typename I>
__global__ void __launch_bounds__(TN_CUDA_THREADS)
ix_put_add_kernel(const __grid_constant__ tn_iter it, /* (index, d, x) over the index's shape
                                                         (scatter_add) or src's (index_add);
                                                         x's stride along dim is 0 in it */
                  int64_t xdim_stride,                /* x's stride along dim, elements */
                  int64_t xdim_size,                  /* x's size along dim: valid values [0, size) */
                  const unsigned long long *bad) {    /* (1) the check's first bad position or NULL */
    if (bad && *bad != ~0ull) return; /* a bad index: add nothing, as the CPU */
    const I *ip = (const I *)it.data[0];
    const T *dp = (const T *)it.data[1];
    T *xp = (T *)it.data[2];
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[3];
        tn_cuda_iter_offsets(it, 3, e, off);
        const int64_t v = (int64_t)ip[off[0]];
        if ((uint64_t)v >= (uint64_t)xdim_size) continue; /* never write out of range */
        ix_atomic_add(xp + off[2] + v * xdim_stride, dp[off[1]]);
    }
}

/* One thread per element of x that can receive a sum; it adds the matching d's in list order
 * (scatter_add, index_add without atomics). */
template <typename T, typename I>
__global__ void __launch_bounds__(TN_CUDA_THREADS)
ix_put_add_ordered_kernel(const __grid_constant__ tn_iter it, /* (x, index, d, c) over the
                                  iteration shape with dim's size replaced by x's; index's and
                                  d's strides along dim are 0, c's is 1 (c = coordinate on dim) */
                          int64_t n,       /* list length along dim (index's size there) */
                          int64_t istride, /* index's stride along dim, elements */
                          int64_t dstride, /* d's stride along dim, elements */
                          const unsigned long long *bad) { /* (1) the check's first bad position or NULL */
    if (bad && *bad != ~0ull) return; /* a bad index: add nothing, as the CPU (a bad value matches
                                         no coordinate c anyway) */
    T *xp = (T *)it.data[0];
    const I *ip = (const I *)it.data[1];
    const T *dp = (const T *)it.data[2];
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[4];
        tn_cuda_iter_offsets(it, 4, e, off);
        const int64_t c = off[3];
        const I *irow = ip + off[1];
        const T *drow = dp + off[2];
        T acc = T();
        bool hit = false;
        for (int64_t j = 0; j < n; j++) {
            if ((int64_t)irow[j * istride] != c) continue;
            const T d = drow[j * dstride];
            if (!hit) {
                acc = xp[off[0]];
                hit = true;
            }
            acc = ix_add(acc, d);
        }
        if (hit) xp[off[0]] = acc;
    }
}

/* *first_bad = min(*first_bad, row-major positions of values outside [0, size)). */
template <typename I>
__global__ void __launch_bounds__(TN_CUDA_THREADS)
ix_check_kernel(const __grid_constant__ tn_iter it, /* (index) over the index's shape */
                int64_t size,                       /* valid values: [0, size) */
                unsigned long long *first_bad) {    /* (1) device; ULLONG_MAX when none */
    const I *ip = (const I *)it.data[0];
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off;
        tn_cuda_iter_offsets(it, 1, e, &off);
        const int64_t v = (int64_t)ip[off];
        if ((uint64_t)v >= (uint64_t)size) atomicMin(first_bad, (unsigned long long)e);
    }
}

/* dst = src, both strided, raw elements. */
template <typename U>
__global__ void __launch_bounds__(TN_CUDA_THREADS)
ix_copy_kernel(const __grid_constant__ tn_iter it) { /* (dst, src) over their shape */
    U *dp = (U *)it.data[0];
    const U *sp = (const U *)it.data[1];
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[2];
        tn_cuda_iter_offsets(it, 2, e, off);
        dp[off[0]] = sp[off[1]];
    }
}

/* Up to IX_CAT_BATCH contiguous inputs of cat, each (rows, width[k]) units, into columns of a
 * contiguous out of (rows, pitch) units. */
enum { IX_CAT_BATCH = 32, IX_CAT_MAX_BLOCKS = 2048 };
struct ix_cat_batch {
    const char *src[IX_CAT_BATCH]; /* (count) input k: rows x width[k] units, contiguous */
    char *dst[IX_CAT_BATCH];       /* (count) input k's first unit in out */
    int64_t width[IX_CAT_BATCH];   /* (count) units per row of input k */
    int64_t rows;                  /* rows of every input and of out */
    int64_t pitch;                 /* units from one row of out to the next */
    int32_t count;
};

template <typename U>
__global__ void __launch_bounds__(TN_CUDA_THREADS)
ix_cat_rows_kernel(const __grid_constant__ ix_cat_batch b) { /* blockIdx.y: input k */
    const int k = (int)blockIdx.y;
    const U *src = (const U *)b.src[k];
    U *dst = (U *)b.dst[k];
    const int64_t w = b.width[k], n = b.rows * w, pitch = b.pitch;
    if (n <= (int64_t)UINT32_MAX) { /* 32-bit division: the common case */
        const uint32_t w32 = (uint32_t)w;
        TN_CUDA_GRID_LOOP(e, n) {
            const uint32_t r = (uint32_t)e / w32, c = (uint32_t)e - r * w32;
            dst[(int64_t)r * pitch + c] = src[e];
        }
    } else {
        TN_CUDA_GRID_LOOP(e, n) {
            const int64_t r = e / w, c = e - r * w;
            dst[r * pitch + c] = src[e];
        }
    }
}

/* ---- launches --------------------------------------------------------------------------------- */

/* k64 (an i64 index) or k32 (an i32 index) by itype, over it.numel elements on stream st. */
template <typename... A>
static tn_status ix_launch_itype(void (*k64)(tn_iter, A...), void (*k32)(tn_iter, A...), int32_t itype,
                                 cudaStream_t st, const tn_iter &it, A... args) {
    (itype == TN_I64 ? k64 : k32)<<<tn_cuda_blocks(it.numel), TN_CUDA_THREADS, 0, st>>>(it, args...);
    return TN_CUDA_CHECK_LAUNCH();
}

template <typename U> struct ix_take_run {
    static tn_status run(const tn_iter &it, int64_t xdim_stride, int64_t xdim_size, int32_t itype,
                         const unsigned long long *bad) {
        return ix_launch_itype(ix_take_kernel<U, int64_t>, ix_take_kernel<U, int32_t>, itype, tn_cuda_stream_now(),
                               it, xdim_stride, xdim_size, bad);
    }
};

template <typename T> struct ix_put_add_run {
    static tn_status run(const tn_iter &it, int64_t xdim_stride, int64_t xdim_size, int32_t itype,
                         const unsigned long long *bad) {
        return ix_launch_itype(ix_put_add_kernel<T, int64_t>, ix_put_add_kernel<T, int32_t>, itype,
                               tn_cuda_stream_now(), it, xdim_stride, xdim_size, bad);
    }
};

template <typename T> struct ix_put_add_ordered_run {
    static tn_status run(const tn_iter &it, int64_t n, int64_t istride, int64_t dstride, int32_t itype,
                         const unsigned long long *bad) {
        return ix_launch_itype(ix_put_add_ordered_kernel<T, int64_t>, ix_put_add_ordered_kernel<T, int32_t>, itype,
                               tn_cuda_stream_now(), it, n, istride, dstride, bad);
    }
};

template <typename U> struct ix_copy_run {
    static tn_status run(const tn_iter &it) {
        ix_copy_kernel<U><<<tn_cuda_blocks(it.numel), TN_CUDA_THREADS, 0, tn_cuda_stream_now()>>>(it);
        return TN_CUDA_CHECK_LAUNCH();
    }
};

template <typename U> struct ix_cat_rows_run {
    static tn_status run(const ix_cat_batch &b, int64_t max_units) {
        unsigned bx = tn_cuda_blocks(max_units);
        if (bx > IX_CAT_MAX_BLOCKS) bx = IX_CAT_MAX_BLOCKS; /* grid-stride loops cover the rest */
        const dim3 grid(bx, (unsigned)b.count);
        ix_cat_rows_kernel<U><<<grid, TN_CUDA_THREADS, 0, tn_cuda_stream_now()>>>(b);
        return TN_CUDA_CHECK_LAUNCH();
    }
};

/* F<raw type of es bytes>::run(args...); es is 1, 2, 4, 8 or 16. */
#define IX_DISPATCH_RAW(opname, es, F, ...)                                                      \
    ([&]() -> tn_status {                                                                       \
        switch (es) {                                                                           \
        case 1: return F<ix_raw<1>::type>::run(__VA_ARGS__);                                    \
        case 2: return F<ix_raw<2>::type>::run(__VA_ARGS__);                                    \
        case 4: return F<ix_raw<4>::type>::run(__VA_ARGS__);                                    \
        case 8: return F<ix_raw<8>::type>::run(__VA_ARGS__);                                    \
        case 16: return F<ix_raw<16>::type>::run(__VA_ARGS__);                                  \
        default: return tn_error(TN_ERR_DTYPE, "%s: invalid element size %lld", (opname),      \
                                 (long long)(es));                                              \
        }                                                                                       \
    }())

static tn_status ix_check_itype(const char *opname, int32_t itype) {
    if (itype != TN_I64 && itype != TN_I32)
        return tn_error(TN_ERR_DTYPE, "%s: index dtype %s is not i64 or i32", opname, tn_dtype_name(itype));
    return TN_OK;
}

/* [OUT] flag: a new (1) CUDA tensor that, once the check queued on st has run, holds the
 * row-major position of index's first value outside [0, size) (ULLONG_MAX when none); NULL on
 * failure. index is non-empty, of a checked itype. */
static tn_status ix_check_queue(tn_tensor **flag, const tn_tensor *index, int64_t size, cudaStream_t st) {
    tn_iter it;
    tn_iter_init(&it, index->ndim, index->shape);
    tn_iter_add_tensor(&it, index);
    tn_iter_finish(&it);
    const int64_t one = 1;
    *flag = NULL;
    TN_TRY(tn_tensor_empty(flag, 1, &one, TN_I64, TN_CUDA));
    unsigned long long *fp = (unsigned long long *)(*flag)->data;
    tn_status s = TN_CUDA_CHECK(cudaMemsetAsync(fp, 0xff, sizeof *fp, st));
    if (s == TN_OK)
        s = ix_launch_itype(ix_check_kernel<int64_t>, ix_check_kernel<int32_t>, index->dtype, st, it, size, fp);
    if (s != TN_OK) {
        tn_tensor_free(*flag);
        *flag = NULL;
    }
    return s;
}

/* ---- entry points (declared in core/index.c) --------------------------------------------------- */

/* [OUT] bad: the row-major position of the first value of index (CUDA, any strides) outside
 * [0, size), -1 when every value fits; [OUT] badv: that value. Waits for the stream: an error
 * check. */
extern "C" tn_status tn_cuda_index_check(int64_t *bad, int64_t *badv, const tn_tensor *index, int64_t size) {
    static const char *op = "index check";
    *bad = -1;
    *badv = 0;
    TN_TRY(ix_check_itype(op, index->dtype));
    const int64_t numel = tn_tensor_numel(index);
    if (numel == 0) return TN_OK;
    const cudaStream_t st = tn_cuda_stream_now();
    tn_tensor *flag = NULL; /* (1) the first bad position, ULLONG_MAX when none */
    TN_TRY(ix_check_queue(&flag, index, size, st));
    unsigned long long first = ~0ull;
    tn_status s = TN_CUDA_CHECK(cudaMemcpyAsync(&first, flag->data, sizeof first, cudaMemcpyDeviceToHost, st));
    if (s == TN_OK) s = TN_CUDA_CHECK(cudaStreamSynchronize(st));
    tn_tensor_free(flag);
    TN_TRY(s);
    if (first == ~0ull) return TN_OK;
    if (first >= (unsigned long long)numel) /* cannot happen: positions are below numel */
        return tn_error(TN_ERR_DEVICE, "%s: the device reported position %llu of %lld", op, first, (long long)numel);
    /* the value at that position, for the message (index's own shape and strides) */
    int64_t rem = (int64_t)first, off = 0;
    for (int32_t d = index->ndim - 1; d >= 0; d--) {
        off += (rem % index->shape[d]) * index->strides[d];
        rem /= index->shape[d];
    }
    const size_t is = tn_dtype_size(index->dtype);
    int64_t v64 = 0;
    int32_t v32 = 0;
    void *dst = index->dtype == TN_I64 ? (void *)&v64 : (void *)&v32;
    TN_TRY(TN_CUDA_CHECK(cudaMemcpyAsync(dst, index->data + off * (int64_t)is, is, cudaMemcpyDeviceToHost, st)));
    TN_TRY(TN_CUDA_CHECK(cudaStreamSynchronize(st)));
    *bad = (int64_t)first;
    *badv = index->dtype == TN_I64 ? v64 : (int64_t)v32;
    return TN_OK;
}

/* ---- the asynchronous range check and its pending error -------------------------------------- */

/* The first bad index of a device not yet reported: one per device, in device memory, zeroed at
 * creation and by the host once it has raised the error. Written by ix_check_record_kernel after
 * a check kernel found a bad value; read by tn_cuda_check_pending at the host's waits. */
struct ix_pending {
    unsigned int state;           /* 0 free, 1 being written, 2 holds an error */
    int32_t op;                   /* index into ix_op_names; -1 unknown */
    int32_t dim;                  /* the indexed dim, 0-based */
    int32_t ndim;                 /* the index's dims */
    long long pos;                /* row-major position of the bad value in the index */
    long long value;              /* the bad value */
    long long size;               /* valid values: [0, size) */
    long long shape[TN_MAX_DIMS]; /* (ndim) the index's shape */
};

static const char *const ix_op_names[] = {"gather", "scatter_add", "index_select", "index_add"};
enum { IX_NUM_OPS = (int)(sizeof ix_op_names / sizeof ix_op_names[0]), IX_MAX_DEVICES = 64 };

static int32_t ix_op_id(const char *opname) {
    for (int32_t k = 0; k < IX_NUM_OPS; k++)
        if (opname && strcmp(opname, ix_op_names[k]) == 0) return k;
    return -1;
}

/* What the record kernel needs of the index to report its first bad value. */
struct ix_check_desc {
    const void *data;             /* the index's first element */
    int32_t itype;                /* TN_I64 or TN_I32 */
    int32_t ndim, op, dim;
    int64_t size;
    int64_t shape[TN_MAX_DIMS];   /* (ndim) */
    int64_t strides[TN_MAX_DIMS]; /* (ndim) elements */
};

/* One thread: when the check found a bad value (*first_bad) and rec holds no error yet, writes
 * the error into rec. */
__global__ void ix_check_record_kernel(const __grid_constant__ ix_check_desc d,
                                       const unsigned long long *first_bad, /* (1) ULLONG_MAX: none */
                                       ix_pending *rec) {
    const unsigned long long first = *first_bad;
    if (first == ~0ull) return;
    if (atomicCAS(&rec->state, 0u, 1u) != 0u) return; /* an earlier error is still pending */
    int64_t rem = (int64_t)first, off = 0;
    for (int32_t k = d.ndim - 1; k >= 0; k--) {
        off += (rem % d.shape[k]) * d.strides[k];
        rem /= d.shape[k];
    }
    rec->op = d.op;
    rec->dim = d.dim;
    rec->ndim = d.ndim;
    rec->pos = (long long)first;
    rec->value = d.itype == TN_I64 ? (long long)((const int64_t *)d.data)[off]
                                   : (long long)((const int32_t *)d.data)[off];
    rec->size = (long long)d.size;
    for (int32_t k = 0; k < TN_MAX_DIMS; k++) rec->shape[k] = k < d.ndim ? (long long)d.shape[k] : 0;
    __threadfence();
    atomicExch(&rec->state, 2u);
}

static ix_pending *ix_pending_dev[IX_MAX_DEVICES]; /* created on first use, never freed */
static pthread_mutex_t ix_pending_lock = PTHREAD_MUTEX_INITIALIZER;

/* [OUT] rec: the pending record of the current device, created (zeroed) on first use when
 * create, else NULL when there is none yet; [OUT] dev: the current device. */
static tn_status ix_pending_of(int create, ix_pending **rec, int *dev) {
    *rec = NULL;
    TN_TRY(TN_CUDA_CHECK(cudaGetDevice(dev)));
    if (*dev < 0 || *dev >= IX_MAX_DEVICES)
        return tn_error(TN_ERR_DEVICE, "index check: device %d is beyond the %d tern supports", *dev, IX_MAX_DEVICES);
    ix_pending *p = __atomic_load_n(&ix_pending_dev[*dev], __ATOMIC_ACQUIRE);
    if (p || !create) {
        *rec = p;
        return TN_OK;
    }
    tn_status s = TN_OK;
    pthread_mutex_lock(&ix_pending_lock);
    p = ix_pending_dev[*dev];
    if (!p) {
        /* zeroed before any stream can use it: once per device, on the legacy stream, waited for */
        s = TN_CUDA_CHECK(cudaMalloc((void **)&p, sizeof *p));
        if (s == TN_OK) s = TN_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof *p, cudaStreamLegacy));
        if (s == TN_OK) s = TN_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
        if (s == TN_OK)
            __atomic_store_n(&ix_pending_dev[*dev], p, __ATOMIC_RELEASE);
        else if (p)
            (void)cudaFree(p), p = NULL;
    }
    pthread_mutex_unlock(&ix_pending_lock);
    *rec = p;
    return s;
}

/* [OUT] flag: a new (1) CUDA tensor that, once the queued check has run, holds the row-major
 * position of index's first value outside [0, size) (ULLONG_MAX when none); the op's kernels
 * take its data as `bad` and write nothing when it holds a position. A bad value is also
 * recorded as the device's pending error (the first one only), which tn_cuda_check_pending
 * raises at the next host wait. NULL for an empty index. Nothing waits for the device. */
extern "C" tn_status tn_cuda_index_check_async(tn_tensor **flag, const char *opname, const tn_tensor *index,
                                               int64_t size, int32_t dim) {
    *flag = NULL;
    TN_TRY(ix_check_itype(opname, index->dtype));
    if (tn_tensor_numel(index) == 0) return TN_OK;
    ix_pending *rec;
    int dev;
    TN_TRY(ix_pending_of(1, &rec, &dev));
    ix_check_desc d;
    memset(&d, 0, sizeof d);
    d.data = index->data;
    d.itype = index->dtype;
    d.ndim = index->ndim;
    d.op = ix_op_id(opname);
    d.dim = dim;
    d.size = size;
    for (int32_t k = 0; k < index->ndim; k++) d.shape[k] = index->shape[k], d.strides[k] = index->strides[k];
    const cudaStream_t st = tn_cuda_stream_now();
    TN_TRY(ix_check_queue(flag, index, size, st));
    ix_check_record_kernel<<<1, 1, 0, st>>>(d, (const unsigned long long *)(*flag)->data, rec);
    const tn_status s = TN_CUDA_CHECK_LAUNCH();
    if (s != TN_OK) {
        tn_tensor_free(*flag);
        *flag = NULL;
    }
    return s;
}

/* core/index.c: the CPU's message for a bad index value, with note appended. */
extern "C" tn_status tn_index_range_error(const char *opname, int64_t badv, int32_t dim, int64_t size,
                                          int32_t ndim, const int64_t *shape, int64_t bad, const char *note);

/* The read of the record queued by this thread (tn_cuda_check_pending(NULL)), in a page-locked
 * buffer of its own (freed when the thread exits). */
static __thread ix_pending *ix_host_rec;
static __thread int ix_queued_dev = -1;    /* the device whose record was read; -1: none queued */
static __thread cudaStream_t ix_queued_st; /* the stream the read went to */
static pthread_key_t ix_host_key;
static pthread_once_t ix_host_once = PTHREAD_ONCE_INIT;
static void ix_host_free(void *p) {
    if (p && cudaFreeHost(p) != cudaSuccess) (void)cudaGetLastError();
}
static void ix_host_key_make(void) { (void)pthread_key_create(&ix_host_key, ix_host_free); }

/* Queues a read of the current device's record on the current stream (nothing when the device
 * never ran an asynchronous check). */
static tn_status ix_pending_queue(void) {
    ix_queued_dev = -1;
    ix_pending *rec;
    int dev;
    TN_TRY(ix_pending_of(0, &rec, &dev));
    if (!rec) return TN_OK;
    if (!ix_host_rec) {
        void *h = NULL;
        TN_TRY(TN_CUDA_CHECK(cudaHostAlloc(&h, sizeof(ix_pending), cudaHostAllocPortable)));
        ix_host_rec = (ix_pending *)h;
        (void)pthread_once(&ix_host_once, ix_host_key_make);
        (void)pthread_setspecific(ix_host_key, h);
    }
    const cudaStream_t st = tn_cuda_stream_now();
    TN_TRY(TN_CUDA_CHECK(cudaMemcpyAsync(ix_host_rec, rec, sizeof(ix_pending), cudaMemcpyDeviceToHost, st)));
    ix_queued_dev = dev;
    ix_queued_st = st;
    return TN_OK;
}

static tn_status ix_check_pending(const char *op);

/* cuda/rnnt.cu: the RNN-T family's pending error (its value checks), raised after the index one */
extern "C" tn_status tn_cuda_rnnt_check_pending(const char *op);

/* op NULL: queues a read of the current device's pending index error on the current stream, to
 * go before a host wait for that stream. op non-NULL, after that wait: raises what the read
 * found (TN_ERR_INDEX, the CPU's message plus " (reported at the next synchronisation: op)")
 * and clears the record; without a queued read it queues one and waits for it itself. */
extern "C" tn_status tn_cuda_check_pending(const char *op) {
    const tn_status s = ix_check_pending(op);
    if (s != TN_OK || !op) return s;
    return tn_cuda_rnnt_check_pending(op);
}

static tn_status ix_check_pending(const char *op) {
    if (!op) return ix_pending_queue();
    int dev = -1;
    TN_TRY(TN_CUDA_CHECK(cudaGetDevice(&dev)));
    if (ix_queued_dev < 0 || ix_queued_dev != dev) {
        TN_TRY(ix_pending_queue());
        if (ix_queued_dev < 0) return TN_OK; /* no record on this device */
        const tn_status w = TN_CUDA_CHECK(cudaStreamSynchronize(ix_queued_st));
        if (w != TN_OK) {
            ix_queued_dev = -1;
            return w;
        }
    }
    ix_queued_dev = -1;
    ix_pending r; /* the host wait made the copied bytes visible */
    memcpy(&r, ix_host_rec, sizeof r);
    ix_host_rec->state = 0u; /* read once: a later read that never lands is not taken for this one */
    if (r.state != 2u) return TN_OK; /* none (or one still being written on another stream) */
    ix_pending *rec;
    TN_TRY(ix_pending_of(0, &rec, &dev));
    /* cleared after everything queued on that stream so far (the check that wrote it included),
     * and waited for (an error path), so that a check queued next on any stream records again */
    TN_TRY(TN_CUDA_CHECK(cudaMemsetAsync(rec, 0, sizeof *rec, ix_queued_st)));
    TN_TRY(TN_CUDA_CHECK(cudaStreamSynchronize(ix_queued_st)));
    int64_t shape[TN_MAX_DIMS];
    const int32_t nd = r.ndim < 0 ? 0 : r.ndim > TN_MAX_DIMS ? TN_MAX_DIMS : r.ndim;
    for (int32_t k = 0; k < nd; k++) shape[k] = (int64_t)r.shape[k] > 0 ? (int64_t)r.shape[k] : 1;
    char note[160];
    snprintf(note, sizeof note, " (reported at the next synchronisation: %s)", op);
    return tn_index_range_error(r.op >= 0 && r.op < IX_NUM_OPS ? ix_op_names[r.op] : "index check", r.value,
                                r.dim, r.size, nd, shape, r.pos, note);
}

/* ---- the synchronous-check switch (tern.h) -------------------------------------------------- */

static int ix_sync_checks = -1; /* -1: TERN_CUDA_SYNC_CHECKS not read yet */

extern "C" tn_status tn_cuda_set_sync_checks(int on) {
    __atomic_store_n(&ix_sync_checks, on ? 1 : 0, __ATOMIC_RELAXED);
    return TN_OK;
}

extern "C" int tn_cuda_get_sync_checks(void) {
    int v = __atomic_load_n(&ix_sync_checks, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    const char *e = getenv("TERN_CUDA_SYNC_CHECKS");
    int expected = -1;
    const int want = e && *e && strcmp(e, "0") != 0;
    (void)__atomic_compare_exchange_n(&ix_sync_checks, &expected, want, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return __atomic_load_n(&ix_sync_checks, __ATOMIC_RELAXED);
}

/* Over a finished iterator of (index, d, x), d[o1] = x[o2 + index[o0] * xdim_stride]; itype
 * i64 or i32; the elements of d and x have it->elsize[1] bytes. bad: NULL (values checked
 * before), or the device flag of tn_cuda_index_check_async: when it holds a position nothing is
 * written. A value outside [0, xdim_size) is skipped either way. */
extern "C" tn_status tn_cuda_index_take(const char *opname, const tn_iter *it, int64_t xdim_stride,
                                        int64_t xdim_size, int32_t itype, const void *bad) {
    TN_TRY(ix_check_itype(opname, itype));
    if (it->numel == 0) return TN_OK;
    return IX_DISPATCH_RAW(opname, it->elsize[1], ix_take_run, *it, xdim_stride, xdim_size, itype,
                           (const unsigned long long *)bad);
}

/* Over a finished iterator of (index, d, x), x[o2 + index[o0] * xdim_stride] += d[o1] in
 * dtype, with atomics (see the top of the file); bad as for tn_cuda_index_take. */
extern "C" tn_status tn_cuda_index_put_add(const char *opname, const tn_iter *it, int64_t xdim_stride,
                                           int64_t xdim_size, int32_t itype, int32_t dtype, const void *bad) {
    TN_TRY(ix_check_itype(opname, itype));
    if (it->numel == 0) return TN_OK;
    return TN_CUDA_DISPATCH(opname, dtype, ix_put_add_run, *it, xdim_stride, xdim_size, itype,
                            (const unsigned long long *)bad);
}

/* Over a finished iterator of (x, index, d, c), x[o0] += d[o2 + j * dstride] for j = 0 .. n-1
 * in order where index[o1 + j * istride] == o3; each x element on one thread, no atomics; bad
 * as for tn_cuda_index_take. */
extern "C" tn_status tn_cuda_index_put_add_ordered(const char *opname, const tn_iter *it, int64_t n,
                                                   int64_t istride, int64_t dstride, int32_t itype,
                                                   int32_t dtype, const void *bad) {
    TN_TRY(ix_check_itype(opname, itype));
    if (it->numel == 0 || n == 0) return TN_OK;
    return TN_CUDA_DISPATCH(opname, dtype, ix_put_add_ordered_run, *it, n, istride, dstride, itype,
                            (const unsigned long long *)bad);
}

/* Over a finished iterator of (dst, src) with elements of the same size, dst[o0] = src[o1]. */
extern "C" tn_status tn_cuda_index_copy(const char *opname, const tn_iter *it) {
    if (it->numel == 0) return TN_OK;
    if (it->elsize[0] != it->elsize[1])
        return tn_error(TN_ERR_DTYPE, "%s: copy between elements of %lld and %lld bytes", opname,
                        (long long)it->elsize[0], (long long)it->elsize[1]);
    if (tn_cuda_iter_flat(*it))
        return TN_CUDA_CHECK(cudaMemcpyAsync(it->data[0], it->data[1], (size_t)(it->numel * it->elsize[0]),
                                             cudaMemcpyDeviceToDevice, tn_cuda_stream_now()));
    return IX_DISPATCH_RAW(opname, it->elsize[0], ix_copy_run, *it);
}

/* cat of count contiguous inputs into a contiguous out of rows x pitch bytes: input k is rows x
 * width[k] bytes and goes to bytes [offset[k], offset[k] + width[k]) of every row of out. */
extern "C" tn_status tn_cuda_cat_rows(const char *opname,
                                      char *out,                /* (rows, pitch) bytes */
                                      int64_t rows, int64_t pitch, int32_t count,
                                      const char *const *src,   /* (count) each (rows, width[k]) bytes */
                                      const int64_t *offset,    /* (count) bytes into a row of out */
                                      const int64_t *width) {   /* (count) bytes per row of input k */
    if (rows <= 0) return TN_OK;
    for (int32_t k0 = 0; k0 < count; k0 += IX_CAT_BATCH) {
        ix_cat_batch b;
        memset(&b, 0, sizeof b);
        /* the widest unit (16, 8, 4, 2 or 1 bytes) that divides every address, width and pitch */
        uint64_t align = rows > 1 ? (uint64_t)pitch : 0;
        int64_t max_bytes = 0;
        for (int32_t k = k0; k < count && k - k0 < IX_CAT_BATCH; k++) {
            if (width[k] <= 0) continue;
            const int i = b.count++;
            b.src[i] = src[k];
            b.dst[i] = out + offset[k];
            b.width[i] = width[k];
            align |= (uint64_t)(uintptr_t)src[k] | (uint64_t)(uintptr_t)(out + offset[k]) | (uint64_t)width[k];
            if (width[k] > max_bytes) max_bytes = width[k];
        }
        if (b.count == 0) continue;
        int64_t unit = 16;
        while (unit > 1 && (align & (uint64_t)(unit - 1))) unit /= 2;
        for (int i = 0; i < b.count; i++) b.width[i] /= unit;
        b.rows = rows;
        b.pitch = pitch / unit;
        TN_TRY(IX_DISPATCH_RAW(opname, unit, ix_cat_rows_run, b, rows * (max_bytes / unit)));
    }
    return TN_OK;
}
