/*
 * internal.h — helpers shared by the C files of core/. Not installed, not part of the API.
 */
#ifndef TERN_INTERNAL_H
#define TERN_INTERNAL_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "tern.h"
#include "kernels/half.h"
#include "kernels/copy.h"

#if defined(__GNUC__)
#define TN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define TN_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define TN_PRINTF(a, b)
#define TN_UNLIKELY(x) (x)
#endif

/* Sets the thread-local error message (printf format) and returns code. Usage:
 *   return tn_error(TN_ERR_SHAPE, "add: shapes %s and %s are not broadcastable", sa, sb); */
tn_status tn_error(tn_status code, const char *fmt, ...) TN_PRINTF(2, 3);

/* A dimension number, position, start/index argument or list position as printed in an error
 * message: shifted by tn_get_dim_base() (1 under Lua). Print with %lld. Not for values read
 * from index tensors, nor for sizes or counts. */
#define TN_D(d) ((long long)(d) + (long long)tn_get_dim_base())

/* Status of the last tn_error on this thread (TN_OK after tn_clear_error). */
tn_status tn_last_status(void);

/* Propagate a failing status. */
#define TN_TRY(expr)                                                                          \
    do {                                                                                      \
        tn_status tn_try_s_ = (expr);                                                         \
        if (TN_UNLIKELY(tn_try_s_ != TN_OK)) return tn_try_s_;                               \
    } while (0)

/* Short shape strings for messages: TN_SHAPE(t) expands to a string valid until the end of
 * the full expression that contains it (a compound-literal buffer). */
#define TN_SHAPE(t) tn_shape_str((t), (char[160]){0}, 160)

/* Common argument checks; each sets the error naming opname and returns its status. */
tn_status tn_check_tensor(const char *opname, const char *argname, const tn_tensor *t);
tn_status tn_check_same_device(const char *opname, const tn_tensor *a, const tn_tensor *b);
tn_status tn_check_cpu(const char *opname, const tn_tensor *t);
/* t is on a device whose backend this build has: the CPU, or CUDA in a build with CUDA (ops
 * that dispatch CUDA tensors to cuda/ check with this instead of tn_check_cpu). */
tn_status tn_check_backend(const char *opname, const tn_tensor *t);
tn_status tn_check_float(const char *opname, const char *argname, const tn_tensor *t);
tn_status tn_check_index_dtype(const char *opname, const char *argname, const tn_tensor *t);

/* Output handling for `tn_tensor **out` arguments (see tern.h): when *out is NULL, allocate a
 * contiguous tensor of (ndim, shape, dtype) on device; else check that *out has exactly that
 * shape and dtype (error names opname). */
tn_status tn_prepare_out(const char *opname, tn_tensor **out, int32_t ndim, const int64_t *shape,
                         int32_t dtype, int32_t device);

static inline int tn_is_float_dtype(int32_t d) { return d == TN_F32 || d == TN_F64 || d == TN_F16 || d == TN_BF16; }
static inline int tn_is_int_dtype(int32_t d) { return d == TN_I32 || d == TN_I64 || d == TN_U8; }

/* Element load/store through a dtype switch, for generic (slow-path) loops: the functions of
 * kernels/copy.h, which cuda/ shares (saturating into integer dtypes, NaN stores 0; round to
 * nearest even into f16 / bf16). */
static inline double tn_load_f64(const void *p, int32_t dtype) { return tn_elem_load_f64(p, dtype); }
static inline int64_t tn_load_i64(const void *p, int32_t dtype) { return tn_elem_load_i64(p, dtype); }
static inline void tn_store_f64(void *p, int32_t dtype, double v) { tn_elem_store_f64(p, dtype, v); }

/* Memory accounting hooks used by allocators (tensor.c). */
void tn_memory_note_alloc(int32_t device, size_t nbytes);
void tn_memory_note_free(int32_t device, size_t nbytes);

/* The registered allocator of a device type (CPU always; CUDA when cuda/ registered one). */
const tn_allocator *tn_allocator_get(int32_t device);
void tn_allocator_set(int32_t device, const tn_allocator *a);

/* ---- added by state.c / tensor.c ----------------------------------------------------------- */

/* Defined by cuda/device.cu in builds with TERN_HAVE_CUDA (the CUDA pools behind
 * tn_memory_cached / _empty_cache / _set_cache_limit for TN_CUDA). */
int64_t tn_cuda_pool_cached(void);
void tn_cuda_pool_empty(void);
void tn_cuda_pool_set_limit(int64_t bytes);
/* Defined by cuda/index.cu in builds with TERN_HAVE_CUDA: the pending error of the asynchronous
 * index range checks (gather, scatter_add, index_select, index_add on CUDA). op NULL: queues a
 * read of the current device's record on the current stream, before a host wait for it. op
 * non-NULL, after that wait: a TN_ERR_INDEX error with the CPU's message plus " (reported at the
 * next synchronisation: op)" when a check found a bad value (the record is then cleared), else
 * TN_OK; without a queued read it queues one and waits for it. */
tn_status tn_cuda_check_pending(const char *op);
/* Defined by cuda/device.cu in builds with TERN_HAVE_CUDA: the current device's index (0 when
 * it cannot be had), recorded in every new CUDA tensor; tn_cuda_check_current: a TN_ERR_DEVICE
 * error naming op when the CUDA tensor t is not on the current device (kernels run there);
 * tn_cuda_copy_peer: nbytes from device sdev to device ddev, ordered after the work queued
 * before it on both devices' current streams, without a host wait. */
int32_t tn_cuda_current_index(void);
tn_status tn_cuda_check_current(const char *op, const tn_tensor *t);
tn_status tn_cuda_copy_peer(void *dst, int32_t ddev, const void *src, int32_t sdev, size_t nbytes);
/* The storage half of tn_check_backend: a CUDA tensor must sit in CUDA memory. */
tn_status tn_check_memory(const char *opname, const tn_tensor *t);

/* Formats a shape given as (ndim, shape) like tn_shape_str: "[2, 3]", "[]" for ndim 0.
 * Always NUL-terminated; returns buf. */
const char *tn_dims_str(int32_t ndim, const int64_t *shape, char *buf, size_t buflen);
/* TN_DIMS(ndim, shape): like TN_SHAPE for a bare shape array (or a strides array). */
#define TN_DIMS(n, s) tn_dims_str((n), (s), (char[160]){0}, 160)

/* Number of elements of a shape (1 for ndim 0; 0 as soon as one size is 0). */
static inline int64_t tn_dims_numel(int32_t ndim, const int64_t *shape) {
    for (int32_t i = 0; i < ndim; i++)
        if (shape[i] == 0) return 0;
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

/* BLAS layout of a row-major (rows, cols) matrix with strides (rs, cs): *trans 0 (row-major,
 * NoTrans / CUBLAS_OP_N, ld = the row stride) or 1 (column-major, Trans / CUBLAS_OP_T, ld = the
 * column stride); returns 0 when neither describes it. The stride of a size-1 dim is free; every
 * result meets BLAS's ld >= max(1, stored rows). Shared by core/linalg.c and cuda/linalg.cu. */
static inline int tn_matrix_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs, int *trans, int64_t *ld) {
    if (rows == 0 || cols == 0) { *trans = 0; *ld = cols > 1 ? cols : 1; return 1; } /* nothing read */
    if (rows <= 1 && cols <= 1) { *trans = 0; *ld = 1; return 1; }
    if (rows <= 1) {
        if (cs == 1) { *trans = 0; *ld = cols; return 1; }
        if (cs >= 1) { *trans = 1; *ld = cs; return 1; }
        return 0;
    }
    if (cols <= 1) {
        if (rs == 1) { *trans = 1; *ld = rows; return 1; }
        if (rs >= 1) { *trans = 0; *ld = rs; return 1; }
        return 0;
    }
    if (cs == 1 && rs >= cols) { *trans = 0; *ld = rs; return 1; }
    if (rs == 1 && cs >= rows) { *trans = 1; *ld = cs; return 1; }
    return 0;
}

/* Collapses dims (size, stride), outer to inner, into one dim of stride *rs; size-1 dims are
 * skipped. Returns 0 when they do not collapse. With no dim of size > 1, *rs is left alone.
 * Shared by core/linalg.c and cuda/linalg.cu (batch dims of matrix products). */
static inline int tn_dims_collapse(int nd, const int64_t *size, const int64_t *stride, int64_t *rs) {
    int64_t expect = -1; /* stride the next-outer dim must have */
    for (int i = nd - 1; i >= 0; i--) {
        if (size[i] == 1) continue;
        if (expect < 0) *rs = stride[i];
        else if (stride[i] != expect) return 0;
        expect = size[i] * stride[i];
    }
    return 1;
}

/* ---- size classes and the caching pool (tensor.c, pool.c) ---------------------------------- */

/* The size class of a request of n > 0 bytes with a power-of-two granule g: multiples of g up
 * to 16 g, then four classes per power of two (at most 25% slack). Returns the class index
 * (0-based, below 16 + 4 * 48 for any n < 2^52) and sets *block to the class's size. */
static inline int tn_size_class(size_t n, size_t g, size_t *block) {
    if (n <= 16 * g) {
        size_t c = (n + g - 1) / g; /* 1..16 */
        *block = c * g;
        return (int)c - 1;
    }
    const int lg = 63 - __builtin_clzll((unsigned long long)(16 * g));
    const int e = 63 - __builtin_clzll((unsigned long long)(n - 1)); /* 2^e < n <= 2^(e+1) */
    const size_t base = (size_t)1 << e, step = base / 4;
    const size_t k = (n - base + step - 1) / step; /* 1..4 */
    *block = base + k * step;
    return 16 + (e - lg) * 4 + (int)k - 1;
}

/* The raw calls a tn_pool caches; cuda/ gives cudaMalloc / cudaFree and events, the specs a
 * mock. Every function gets ctx. */
typedef struct tn_pool_ops {
    void *(*raw_alloc)(void *ctx, size_t nbytes);     /* NULL on failure, with tn_error set */
    void (*raw_free)(void *ctx, void *ptr, size_t nbytes);
    /* [OPTIONAL] cross-stream use: an event marking the stream's current position (NULL on
     * failure, error set), whether it has completed, its release */
    void *(*event_record)(void *ctx, void *stream);
    int (*event_query)(void *ctx, void *event);
    void (*event_free)(void *ctx, void *event);
    void (*synchronize)(void *ctx); /* [OPTIONAL] wait for all work (before freeing on OOM) */
    void (*describe)(void *ctx, char *buf, size_t n); /* [OPTIONAL] e.g. "device 0: 1.2 GiB free of 80 GiB" */
    void *ctx;
} tn_pool_ops;

/* tn_pool_stats is public (tern.h): tn_cuda_memory_stats returns it. */

typedef struct tn_pool tn_pool;

/* [OUT] out: a new pool over ops (copied), named in its error messages; granule: the smallest
 * class (a power of two, e.g. 512). */
tn_status tn_pool_new(tn_pool **out, const tn_pool_ops *ops, const char *name, size_t granule);
/* Returns every block to the raw allocator, live ones included. NULL-safe. */
void tn_pool_free(tn_pool *p);
/* A block of at least nbytes for use on stream (any tag; NULL is a stream too); NULL with the
 * error set on failure. */
void *tn_pool_alloc(tn_pool *p, size_t nbytes, void *stream);
/* Gives a block back: reusable at once on its own stream, after events on the others. */
tn_status tn_pool_release(tn_pool *p, void *ptr);
/* The block at ptr is also used on stream (its release then waits for that stream). */
tn_status tn_pool_record_use(tn_pool *p, const void *ptr, void *stream);
int tn_pool_owns(tn_pool *p, const void *ptr); /* 1 when ptr is a block in use of p */
void tn_pool_empty(tn_pool *p);                 /* returns the cached blocks to the raw allocator */
void tn_pool_set_limit(tn_pool *p, int64_t bytes); /* cached bytes kept at most; < 0: no bound */
tn_pool_stats tn_pool_get_stats(tn_pool *p);
void tn_pool_reset_peak(tn_pool *p);

/* ---- CPU features (state.c) --------------------------------------------------------------- */

/* TN_AVX2_BUILD is 1 where a kernel may be compiled a second time with
 * __attribute__((target("avx2,fma"))) (GCC/Clang on x86-64; the library itself targets
 * baseline x86-64). tn_cpu_has_avx2_fma() says whether such a build may run here: 1 when the
 * CPU has AVX2 and FMA, else 0 (always 0 where TN_AVX2_BUILD is not defined). Checked once and
 * cached; concurrent first calls store the same value. */
#if defined(__x86_64__) && defined(__GNUC__)
#define TN_AVX2_BUILD 1
#endif
int tn_cpu_has_avx2_fma(void);

#endif /* TERN_INTERNAL_H */
