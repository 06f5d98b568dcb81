/*
 * tern.h — the one public header of libtern.
 *
 * Conventions (ARCHITECTURE.md, STYLE.md):
 *  - Every entry point takes outputs first, then inputs, then sizes and options, and
 *    returns a tn_status (TN_OK = 0). On failure it sets a thread-local message, read with
 *    tn_last_error(), that names the op, the shapes and the dtypes. Nothing here exits or
 *    aborts.
 *  - Dimensions in the C API are 0-based and already normalised (no negative dims); the Lua
 *    layer converts its 1-based / negative positions before calling.
 *  - Output arguments `tn_tensor **out`: when *out == NULL the op allocates a new contiguous
 *    tensor and stores a new reference in *out (the caller owns it and releases it with
 *    tn_tensor_free). When *out != NULL the op writes into that tensor, which must have the
 *    exact result shape and dtype ([OUT] preallocated); no reference changes hands then.
 *  - Values stored in index tensors (i64 or i32) are 0-based.
 *
 * The region between TN_CDEF_BEGIN and TN_CDEF_END is turned into the LuaJIT cdef at build
 * time (cmake/gen_cdef.cmake): keep it free of macros; constants are enums.
 */
#ifndef TERN_H
#define TERN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* TN_CDEF_BEGIN */

enum { TN_MAX_DIMS = 8 };

typedef enum tn_dtype {
    TN_F32 = 0, TN_F64 = 1, TN_F16 = 2, TN_BF16 = 3, TN_I32 = 4, TN_I64 = 5, TN_U8 = 6,
    TN_NUM_DTYPES = 7
} tn_dtype;

typedef enum tn_device_type { TN_CPU = 0, TN_CUDA = 1 } tn_device_type;

typedef int tn_status;
enum {
    TN_OK = 0,
    TN_ERR_ARG = 1,         /* bad argument value (negative size, bad enum, NULL) */
    TN_ERR_SHAPE = 2,       /* shapes do not fit */
    TN_ERR_DTYPE = 3,       /* dtype not supported or mismatched */
    TN_ERR_DEVICE = 4,      /* mismatched devices, or a device this build lacks */
    TN_ERR_INDEX = 5,       /* index out of range */
    TN_ERR_OOM = 6,         /* allocation failed */
    TN_ERR_IO = 7,          /* file error */
    TN_ERR_UNSUPPORTED = 8  /* op/dtype/device combination not implemented */
};

/* ---- allocator and storage ------------------------------------------------------------ */

typedef struct tn_allocator {
    void *(*alloc)(void *ctx, size_t nbytes);          /* returns NULL on failure */
    void (*free)(void *ctx, void *ptr, size_t nbytes);
    void *ctx;
    int32_t device;                                   /* tn_device_type */
} tn_allocator;

typedef struct tn_storage {
    void *data;                    /* nbytes bytes, 64-byte aligned on the CPU */
    size_t nbytes;
    int64_t refcount;              /* atomic */
    int32_t device;                /* tn_device_type */
    int32_t device_index;
    const tn_allocator *allocator; /* frees data; NULL = borrowed memory, not freed */
} tn_storage;

/* A tensor is a refcounted view over a refcounted storage. */
typedef struct tn_tensor {
    char *data;                    /* address of the first element: storage->data + offset*elsize */
    tn_storage *storage;           /* owned reference */
    int64_t offset;                /* in elements */
    int64_t shape[TN_MAX_DIMS];    /* (ndim) */
    int64_t strides[TN_MAX_DIMS];  /* (ndim), in elements; 0 for expanded dims */
    int32_t ndim;                  /* 0 = scalar tensor with one element */
    int32_t dtype;                 /* tn_dtype */
    int32_t device;                /* tn_device_type */
    int32_t device_index;
    int64_t refcount;              /* atomic */
} tn_tensor;

/* ---- library state ---------------------------------------------------------------------- */

const char *tn_last_error(void);        /* message of the last failed call on this thread */
void tn_clear_error(void);
const char *tn_version(void);
int tn_has_cuda(void);                  /* 1 when built with CUDA and a device is present */
int tn_has_mpi(void);                   /* 1 when built with MPI */
int tn_has_nccl(void);                  /* 1 when built with NCCL */
void tn_set_num_threads(int n);         /* OpenMP threads for CPU ops; n <= 0 = default */
int tn_get_num_threads(void);
/* Interrupts for long jobs: tn_signal_catch(1) installs SIGINT / SIGTERM handlers that only
 * count the signals (a training loop polls tn_signal_pending() between steps, saves and exits
 * cleanly); a second SIGINT while one is pending restores the default action and re-raises
 * (the process ends at once). tn_signal_catch(0) restores the previous handlers.
 * tn_signal_pending returns the signal number received (SIGINT = 2, SIGTERM = 15) or 0. */
int tn_signal_catch(int on);
int tn_signal_pending(void);
/* Base (0 or 1) added to every dimension number, position, start/index argument and list
 * position printed in error messages ("dim 1", "start 2", "tensor 1 of cat", "at position
 * [0, 2]"). Default 0, matching the 0-based dims of this API; the Lua layer sets 1. Values read
 * from index tensors and sizes are printed as they are. Any nonzero base means 1. */
void tn_set_dim_base(int32_t base);
int32_t tn_get_dim_base(void);

size_t tn_dtype_size(int32_t dtype);    /* bytes per element; 0 for an invalid dtype */
const char *tn_dtype_name(int32_t dtype); /* "f32", ...; "?" for an invalid dtype */
const char *tn_device_name(int32_t device);

/* Native memory accounting, per device type: bytes currently allocated by tern storages,
 * the peak since the last reset, and the number of live storages. */
int64_t tn_memory_current(int32_t device);
int64_t tn_memory_peak(int32_t device);
int64_t tn_memory_live(int32_t device);
void tn_memory_reset_peak(int32_t device);
/* The CPU allocator keeps freed blocks for reuse (size classes, bounded; TERN_CPU_CACHE_MB
 * sets the bound, default 1024), and so do the CUDA pools (no bound by default; a block freed
 * while other streams still use it counts too). Bytes held in that cache, not counted in
 * current: */
int64_t tn_memory_cached(int32_t device);
/* Return every cached block to the system. */
void tn_memory_empty_cache(int32_t device);
/* Set the cache bound in bytes (0 disables caching); drains the cache when over it. */
void tn_memory_set_cache_limit(int32_t device, int64_t bytes);

/* ---- CUDA devices, streams and memory (cuda/device.cu) ----------------------------------
 * In a build without CUDA, or where the driver reports no GPU, these return TN_ERR_DEVICE
 * with a message saying which (tn_cuda_device_count returns 0; tn_cuda_get_stream NULL). */

typedef struct tn_cuda_stream tn_cuda_stream_t; /* a non-blocking CUDA stream of one device */

/* Figures of a caching pool (a device's memory pool, bytes and counts). */
typedef struct tn_pool_stats {
    int64_t in_use;   /* bytes of live requests (storages) */
    int64_t peak;     /* max of in_use since the pool was made or tn_cuda_memory_reset_peak */
    int64_t reserved; /* bytes held from the driver: in use (rounded to size classes) + cached + pending */
    int64_t cached;   /* bytes of free blocks ready for reuse */
    int64_t pending;  /* bytes of freed blocks waiting for work on other streams */
    int64_t allocs, frees, hits, raw_allocs; /* requests, releases, requests served from the cache, driver calls */
} tn_pool_stats;

int tn_cuda_device_count(void);                     /* visible devices; 0 without driver or GPU */
tn_status tn_cuda_set_device(int32_t index);        /* the calling thread's current device */
tn_status tn_cuda_get_device(int32_t *index);       /* [OUT] index */
tn_status tn_cuda_synchronize(void);                /* waits for all work of the current device */
/* [OUT] out: a new stream on the current device; free with tn_cuda_stream_free (which waits for
 * its work first; NULL-safe). */
tn_status tn_cuda_stream_new(tn_cuda_stream_t **out);
void tn_cuda_stream_free(tn_cuda_stream_t *s);
tn_status tn_cuda_stream_synchronize(tn_cuda_stream_t *s); /* NULL: the whole device */
/* The calling thread's current stream (also makes its device current); NULL = the default
 * stream. Kernels, copies and allocations of this thread go to it. */
tn_status tn_cuda_set_stream(tn_cuda_stream_t *s);
tn_cuda_stream_t *tn_cuda_get_stream(void);
/* t's memory is also used on stream s: when t's storage is freed, its block is reused only
 * after s has passed that point (PyTorch's record_stream). */
tn_status tn_cuda_record_stream(const tn_tensor *t, tn_cuda_stream_t *s);
/* [OUT] out: the pool figures of device device_index (< 0: the current device). */
tn_status tn_cuda_memory_stats(tn_pool_stats *out, int32_t device_index);
tn_status tn_cuda_memory_reset_peak(int32_t device_index);
/* TF32 tensor cores for f32 matrix products on CUDA (tn_matmul, tn_bmm, tn_gemm; cuda/linalg.cu):
 * on (nonzero) rounds the f32 inputs of each product to TF32 (10-bit mantissa, relative error
 * about 1e-3) and accumulates in f32, several times faster on A100 / H100; off computes in full
 * f32. Default ON (PyTorch's default for cuDNN convolutions; its matmul default is off).
 * Process-wide, read at each product. Unlike the calls above, a setting: it works in every
 * build (a CPU build keeps the flag, and the CPU never uses TF32). f16 / bf16 products always
 * run on tensor cores with f32 accumulation; f64 never uses TF32. */
tn_status tn_cuda_set_tf32(int on);
int tn_cuda_get_tf32(void); /* 1 when on */
/* Index range checks of gather, scatter_add, index_select and index_add (embedding) on CUDA
 * (cuda/index.cu). Off (the default): checked on the device without waiting for it; a bad
 * value makes the op write nothing and is raised (TN_ERR_INDEX, the CPU's message plus
 * " (reported at the next synchronisation: <where>)") by the next host wait: tn_cuda_synchronize,
 * tn_cuda_stream_synchronize, or a copy from the device to the host (item, tolist, cpu). On
 * (nonzero; debugging): each call waits for its check and fails itself, as on the CPU. The
 * default comes from the environment variable TERN_CUDA_SYNC_CHECKS (set and not "0": on),
 * read once. Process-wide; a setting that works in every build, like TF32. */
tn_status tn_cuda_set_sync_checks(int on);
int tn_cuda_get_sync_checks(void); /* 1 when on */

/* Scalar conversions of the 16-bit float formats (round to nearest even). */
float tn_f16_to_f32(uint16_t h);
uint16_t tn_f32_to_f16(float f);
float tn_bf16_to_f32(uint16_t h);
uint16_t tn_f32_to_bf16(float f);

/* ---- tensor lifecycle and views ---------------------------------------------------------- */

/* [OUT] out: a new contiguous tensor (new reference), uninitialised memory. */
tn_status tn_tensor_empty(tn_tensor **out, int32_t ndim, const int64_t *shape, int32_t dtype,
                          int32_t device);
/* Returns t with its refcount raised (new reference). NULL-safe. */
tn_tensor *tn_tensor_retain(tn_tensor *t);
/* Drops one reference; frees the tensor (and its storage's reference) at zero. NULL is a no-op. */
void tn_tensor_free(tn_tensor *t);

int64_t tn_tensor_numel(const tn_tensor *t);
int tn_tensor_is_contiguous(const tn_tensor *t);
/* Formats "[2, 3]" into buf (always NUL-terminated); returns buf. */
const char *tn_shape_str(const tn_tensor *t, char *buf, size_t buflen);

/* Views: each stores a new tensor (new reference) sharing t's storage in *out. */
/* General strided view; checked against the storage bounds. */
tn_status tn_as_strided(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape,
                        const int64_t *strides, int64_t offset);
/* PyTorch view semantics: shape may hold one -1; fails if the strides cannot express it. */
tn_status tn_view(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape);
/* View when possible, else a contiguous copy. */
tn_status tn_reshape(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape);
tn_status tn_transpose(tn_tensor **out, const tn_tensor *t, int32_t dim0, int32_t dim1);
tn_status tn_permute(tn_tensor **out, const tn_tensor *t, const int32_t *dims); /* (t->ndim) */
tn_status tn_narrow(tn_tensor **out, const tn_tensor *t, int32_t dim, int64_t start, int64_t length);
tn_status tn_select(tn_tensor **out, const tn_tensor *t, int32_t dim, int64_t index);
tn_status tn_unsqueeze(tn_tensor **out, const tn_tensor *t, int32_t dim);
/* dim < 0: remove every size-1 dim; else remove dim if its size is 1 (else a plain view). */
tn_status tn_squeeze(tn_tensor **out, const tn_tensor *t, int32_t dim);
/* Broadcast view to shape (ndim >= t->ndim; -1 keeps a size); expanded dims get stride 0. */
tn_status tn_expand(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape);
/* t itself (retained) when contiguous, else a contiguous copy. */
tn_status tn_contiguous(tn_tensor **out, const tn_tensor *t);

/* Broadcasting shape of a and b: writes ndim and shape; error names both shapes. */
tn_status tn_broadcast_shape(int32_t *out_ndim, int64_t *out_shape, const tn_tensor *a,
                             const tn_tensor *b, const char *opname);

/* ---- copy, fill, conversion, random ---------------------------------------------------- */

/* dst[...] = src[...], src broadcast to dst's shape, any dtypes (converted, saturating to
 * the range of integer types; floats to f16/bf16 round to nearest even). */
tn_status tn_copy(tn_tensor *dst, const tn_tensor *src);
tn_status tn_fill(tn_tensor *dst, double value);
/* *out = src converted to dtype (new contiguous tensor; a retained src when dtype matches and
 * src is contiguous). */
tn_status tn_to_dtype(tn_tensor **out, const tn_tensor *src, int32_t dtype);
/* start, start+step, ... < end (> end for step < 0). */
tn_status tn_arange(tn_tensor **out, double start, double end, double step, int32_t dtype,
                    int32_t device);

/* Counter-based RNG (Philox-4x32-10). The global generator holds (seed, offset); each call
 * draws numel numbers at counters offset .. offset+numel-1 by element index, then advances
 * offset, so results do not depend on the thread count. */
void tn_manual_seed(uint64_t seed);
void tn_rng_get_state(uint64_t *seed, uint64_t *offset);
void tn_rng_set_state(uint64_t seed, uint64_t offset);
tn_status tn_rand(tn_tensor *out, double low, double high);        /* uniform [low, high) */
tn_status tn_randn(tn_tensor *out, double mean, double std);       /* normal */
tn_status tn_randint(tn_tensor *out, int64_t low, int64_t high);   /* integers in [low, high) */
tn_status tn_bernoulli(tn_tensor *out, double p);                  /* 1 with probability p */

/* ---- elementwise ----------------------------------------------------------------------- */

typedef enum tn_binop {
    TN_ADD = 0, TN_SUB, TN_MUL, TN_DIV, TN_POW, TN_MAXIMUM, TN_MINIMUM, TN_ATAN2,
    TN_EQ, TN_NE, TN_LT, TN_LE, TN_GT, TN_GE,  /* comparisons: output u8 (0/1) */
    TN_NUM_BINOPS
} tn_binop;

typedef enum tn_unop {
    TN_NEG = 0, TN_ABS, TN_EXP, TN_LOG, TN_SQRT, TN_RSQRT, TN_TANH, TN_SIGMOID, TN_RELU,
    TN_SIGN, TN_LOG1P, TN_EXPM1, TN_SIN, TN_COS, TN_RECIPROCAL, TN_SQUARE, TN_FLOOR, TN_CEIL,
    TN_ROUND, TN_LOGICAL_NOT, /* logical_not: output u8 */
    TN_NUM_UNOPS
} tn_unop;

/* *out = a op b with broadcasting. a and b must share a dtype (the Lua layer promotes);
 * the result has that dtype (u8 for comparisons). f16/bf16 compute in f32. Integer DIV
 * truncates toward zero and reports division by zero as an error. *out may be a itself
 * (in-place) when a already has the result shape. */
tn_status tn_binary(tn_tensor **out, const tn_tensor *a, const tn_tensor *b, int32_t op);
/* *out = a op s (reverse = 0) or s op a (reverse = 1). */
tn_status tn_binary_scalar(tn_tensor **out, const tn_tensor *a, double s, int32_t op,
                           int32_t reverse);
tn_status tn_unary(tn_tensor **out, const tn_tensor *a, int32_t op);
/* Clamp into [lo, hi]; pass -INFINITY / INFINITY for an open side. */
tn_status tn_clamp(tn_tensor **out, const tn_tensor *a, double lo, double hi);
/* *out = cond ? a : b, all broadcast; cond u8; a and b share a dtype. */
tn_status tn_where(tn_tensor **out, const tn_tensor *cond, const tn_tensor *a, const tn_tensor *b);
/* *out = mask ? value : a; mask u8, broadcast to a's shape. */
tn_status tn_masked_fill(tn_tensor **out, const tn_tensor *a, const tn_tensor *mask, double value);

/* ---- reductions ------------------------------------------------------------------------ */

typedef enum tn_redop {
    TN_RED_SUM = 0, TN_RED_MEAN, TN_RED_MAX, TN_RED_MIN, TN_RED_PROD, TN_RED_LOGSUMEXP,
    TN_RED_VAR, TN_RED_ARGMAX, TN_RED_ARGMIN,
    TN_NUM_REDOPS
} tn_redop;

/* Reduce a over the ndims dims listed in dims (0-based, distinct); ndims = 0 reduces over all
 * dims. keepdim keeps reduced dims with size 1. correction: VAR's divisor is N - correction.
 * ARGMAX/ARGMIN take exactly one dim (or all: index into the flattened tensor) and give i64.
 * Float results accumulate in f64 for f64 input, f32 otherwise (pairwise per row); integer
 * SUM/PROD give i64; MEAN/LOGSUMEXP/VAR need a float dtype. Reducing an empty dim is an
 * error for MAX/MIN/ARG*, 0 for SUM, NaN for MEAN. */
tn_status tn_reduce(tn_tensor **out, const tn_tensor *a, int32_t ndims, const int32_t *dims,
                    int32_t op, int32_t keepdim, int32_t correction);
/* values and i64 indices of the max (is_min = 0) or min along dim. */
tn_status tn_max_dim(tn_tensor **values, tn_tensor **indices, const tn_tensor *a, int32_t dim,
                     int32_t keepdim, int32_t is_min);
/* Sum a down to out's shape, where out's shape broadcasts to a's (the gradient of broadcasting).
 * [OUT] out preallocated. */
tn_status tn_sum_to(tn_tensor *out, const tn_tensor *a);

/* softmax (log = 0) or log_softmax (log = 1) along dim; float dtypes; f16/bf16 compute in f32. */
tn_status tn_softmax(tn_tensor **out, const tn_tensor *a, int32_t dim, int32_t log);
/* grad_in = d(loss)/d(a) from grad_out and the forward output y = softmax/log_softmax(a). */
tn_status tn_softmax_backward(tn_tensor **grad_in, const tn_tensor *grad_out, const tn_tensor *y,
                              int32_t dim, int32_t log);

/* ---- linear algebra -------------------------------------------------------------------- */

/* torch.matmul semantics: 1-D x 1-D dot, 2-D x 2-D, 1-D promoted and removed, batch dims
 * broadcast. f32/f64 through BLAS; f16/bf16 convert to f32, multiply, round back. Transposed
 * (column-major) operands go to BLAS without a copy. */
tn_status tn_matmul(tn_tensor **out, const tn_tensor *a, const tn_tensor *b);
/* a (B, n, k) x b (B, k, m) -> (B, n, m), no broadcasting. */
tn_status tn_bmm(tn_tensor **out, const tn_tensor *a, const tn_tensor *b);
/* out (n, m) = alpha * op(a) op(b) + beta * out, 2-D, out preallocated and contiguous. */
tn_status tn_gemm(tn_tensor *out, const tn_tensor *a, const tn_tensor *b, int32_t trans_a,
                  int32_t trans_b, double alpha, double beta);

/* ---- joining and indexing -------------------------------------------------------------- */

/* Concatenate n tensors along dim (same dtype; other dims equal). */
tn_status tn_cat(tn_tensor **out, const tn_tensor *const *ts, int32_t n, int32_t dim);
/* out[i][j] = a[index[i][j]][j] (dim 0) etc.; index i64/i32 with a's ndim; out has index's shape. */
tn_status tn_gather(tn_tensor **out, const tn_tensor *a, int32_t dim, const tn_tensor *index);
/* out[index[i][j]][j] += src[i][j] (dim 0) etc., in place on out. */
tn_status tn_scatter_add(tn_tensor *out, int32_t dim, const tn_tensor *index, const tn_tensor *src);
/* Slices of a at the 1-D index along dim. */
tn_status tn_index_select(tn_tensor **out, const tn_tensor *a, int32_t dim, const tn_tensor *index);
/* out.narrow(dim, index[i], 1) += src.narrow(dim, i, 1), in place on out (duplicates add up). */
tn_status tn_index_add(tn_tensor *out, int32_t dim, const tn_tensor *index, const tn_tensor *src);

/* ---- SRU recurrence (sru.c) -------------------------------------------------------------
 * The elementwise recurrence of the `sru` package 2.x (EMNLP 2018), one fused pass over time
 * for every (batch, direction, hidden unit) column. L steps, B batch, D = 1 or 2 directions
 * (direction 1 walks time backwards), d hidden units, k = 3 or 4 values per unit.
 * Layouts as the package, flattened as the argument shapes below say: U (L, B, D*d*k) is
 * (L, B, D, d, k) holding per unit [x~, f, r, (x')] before the bias; weight_c and bias
 * (2*D*d) are (2, D, d) = [v_f | v_r] and [b_f | b_r]; c0, mask_c (B, D*d) and h, c
 * (L, B, D*d) are direction-major; mask_pad (L, B), nonzero = padding. x is read only when
 * k == 3 with the skip term (with k == 4 the skip is U's fourth value).
 *   f = sigmoid(U1 + v_f c_prev + b_f), r = sigmoid(U2 + v_r c_prev + b_r)
 *   c = U0 + (c_prev - U0) f              (padding: c = c_prev)
 *   h = x' + (g(c) - x') mask_c r        (no skip term: h = g(c) mask_c r; padding: h = 0)
 * with g = identity (activation 0) or tanh (1), x' = U3 when k == 4, else scale_x * x.
 * dtypes: f32 or f64; on CUDA also f16 / bf16 (the recurrence in f32, the saved cell state
 * rounded to the storage dtype, as the package's CUDA kernel does); all tensors alike,
 * contiguous and on one device.
 * Gradient policy: activation gradients (grad_U, grad_x, grad_c0) are written (=); parameter
 * gradients (grad_weight_c, grad_bias) accumulate (+=). */
tn_status tn_sru_forward(tn_tensor *h,              /* [OUT] (L, B, D*d) */
                         tn_tensor *c,              /* [OUT] (L, B, D*d) every step's cell state */
                         tn_tensor *c_last,         /* [OUT] (B, D*d) last cell state per direction */
                         const tn_tensor *U,        /* (L, B, D*d*k) */
                         const tn_tensor *x,        /* [OPTIONAL] (L, B, D*d), when k == 3 and has_skip */
                         const tn_tensor *weight_c, /* [OPTIONAL] (2*D*d); NULL = v1 (no v terms) */
                         const tn_tensor *bias,     /* (2*D*d) */
                         const tn_tensor *c0,       /* [OPTIONAL] (B, D*d); NULL = zeros */
                         const tn_tensor *mask_c,   /* [OPTIONAL] (B, D*d) dropout mask on h */
                         const tn_tensor *mask_pad, /* [OPTIONAL] (L, B) u8 */
                         double scale_x, int32_t activation, int32_t has_skip, int32_t bidirectional);
tn_status tn_sru_backward(tn_tensor *grad_U,              /* [OUT] (L, B, D*d*k) = */
                          tn_tensor *grad_x,              /* [OPTIONAL][OUT] (L, B, D*d) = */
                          tn_tensor *grad_weight_c,       /* [OPTIONAL] (2*D*d) += */
                          tn_tensor *grad_bias,           /* (2*D*d) += */
                          tn_tensor *grad_c0,             /* [OPTIONAL][OUT] (B, D*d) = */
                          const tn_tensor *grad_h,        /* (L, B, D*d) */
                          const tn_tensor *grad_c_last,   /* [OPTIONAL] (B, D*d) */
                          const tn_tensor *U, const tn_tensor *x, const tn_tensor *weight_c,
                          const tn_tensor *bias, const tn_tensor *c0,
                          const tn_tensor *c,             /* (L, B, D*d) from the forward */
                          const tn_tensor *mask_c, const tn_tensor *mask_pad,
                          double scale_x, int32_t activation, int32_t has_skip, int32_t bidirectional);

/* ---- LSTM recurrence (lstm.c) ----------------------------------------------------------
 * One direction of one layer of PyTorch's nn.LSTM over a whole sequence: gates i, f, g, o.
 * The caller computes xproj = x W_ih^T + b_ih + b_hh for all steps (one GEMM); each step here
 * is one GEMM with W_hh plus one fused pointwise pass (and one GEMM with W_hr when proj_size
 * > 0: h = W_hr (o tanh c)). H hidden, P = proj_size or H.
 * lengths (B) i64 [OPTIONAL]: steps t >= lengths[b] keep h and c and write zeros to out, so
 * h_n, c_n come from each sequence's last valid step (PyTorch packed sequences). reverse = 1
 * walks t = lengths[b]-1 .. 0 (each sequence reversed within its length, as PyTorch's reverse
 * direction of a packed sequence). dtypes f32 or f64, all alike, contiguous.
 * Gradient policy: grad_xproj, grad_h0, grad_c0 are written (=); grad_w_hh, grad_w_hr
 * accumulate (+=). */
tn_status tn_lstm_forward(tn_tensor *out,            /* [OUT] (L, B, P) */
                          tn_tensor *h_n,            /* [OUT] (B, P) */
                          tn_tensor *c_n,            /* [OUT] (B, H) */
                          tn_tensor *gates,          /* [OUT][BUFFER] (L, B, 4H) activated i, f, g, o */
                          tn_tensor *cells,          /* [OUT][BUFFER] (L, B, H) cell state of each step */
                          tn_tensor *hraw,           /* [OPTIONAL][OUT][BUFFER] (L, B, H) o tanh(c), when w_hr */
                          const tn_tensor *xproj,    /* (L, B, 4H) */
                          const tn_tensor *w_hh,     /* (4H, P) */
                          const tn_tensor *w_hr,     /* [OPTIONAL] (P, H) */
                          const tn_tensor *h0,       /* [OPTIONAL] (B, P); NULL = zeros */
                          const tn_tensor *c0,       /* [OPTIONAL] (B, H); NULL = zeros */
                          const tn_tensor *lengths,  /* [OPTIONAL] (B) i64, 1 <= lengths[b] <= L */
                          int32_t reverse);
tn_status tn_lstm_backward(tn_tensor *grad_xproj,      /* [OUT] (L, B, 4H) = */
                           tn_tensor *grad_w_hh,       /* (4H, P) += */
                           tn_tensor *grad_w_hr,       /* [OPTIONAL] (P, H) += */
                           tn_tensor *grad_h0,         /* [OPTIONAL][OUT] (B, P) = */
                           tn_tensor *grad_c0,         /* [OPTIONAL][OUT] (B, H) = */
                           const tn_tensor *grad_out,  /* [OPTIONAL] (L, B, P) */
                           const tn_tensor *grad_h_n,  /* [OPTIONAL] (B, P) */
                           const tn_tensor *grad_c_n,  /* [OPTIONAL] (B, H) */
                           const tn_tensor *out, const tn_tensor *gates, const tn_tensor *cells,
                           const tn_tensor *hraw, const tn_tensor *w_hh, const tn_tensor *w_hr,
                           const tn_tensor *h0, const tn_tensor *c0, const tn_tensor *lengths,
                           int32_t reverse);

/* ---- RNN-T loss family (rnnt.c, rnnt_prune.c) --------------------------------------------
 * The kernels behind k2 / fast_rnnt's rnnt_loss.py and mutual_information.py, same shapes and
 * semantics. B batch, S symbols (padded max), T frames (padded max), C classes (including the
 * termination symbol), R = s_range, D = a feature dim. dtypes: f32 or f64, every float tensor
 * of one call alike (f16/bf16 give TN_ERR_DTYPE: the Lua layer converts, losses run in f32);
 * every tensor contiguous; CPU.
 *  - boundary (B, 4) i64, [OPTIONAL] everywhere: per utterance [begin_symbol, begin_frame,
 *    end_symbol, end_frame] (0-based values), NULL = [0, 0, S, T]. Needs 0 <= begin <= end,
 *    end_symbol <= S, end_frame <= T. S_b = end_symbol - begin_symbol may be 0.
 *  - symbols (B, S) i64 in [0, C); termination_symbol in [0, C).
 *  - rnnt_type (tn_rnnt_type): REGULAR: px (B, S, T+1) with px[:, :, T] = -inf and, with a
 *    boundary, px[b, :, end_frame] = -inf (fast_rnnt's fix_for_boundary); MODIFIED: px
 *    (B, S, T), a symbol also consumes a frame; CONSTRAINED: as MODIFIED with px[b, s, t] +=
 *    py[b, s+1, t]. MODIFIED and CONSTRAINED need T_b >= S_b (T_b = end_frame - begin_frame).
 *  - delay_penalty λ (k2): px[b, s, t] += λ ((T_b' - 1) / 2 - t) with T_b' = end_frame (T
 *    without boundary), applied only when λ > 0 as k2 does. The logprobs functions below
 *    apply it, so their px, py are exactly what fast_rnnt's rnnt_loss_simple / rnnt_loss /
 *    rnnt_loss_pruned hand to mutual_information_recursion (get_rnnt_logprobs*: pass 0).
 *  - Scores are per-utterance log-likelihoods (loss = -score); nothing here reduces over the
 *    batch: the Lua layer negates and applies reduction none / mean / sum.
 *  - Bad input (symbols or boundary out of range, T_b < S_b where not allowed, ranges that are
 *    not a band inside [0, S]) gives an error naming the argument, the position and the shapes.
 *    Non-finite values: lm, am must be finite; a logits row must have a finite log-sum-exp (no
 *    NaN or +inf, not all -inf; single -inf entries are masks and fine); px, py may hold -inf (a
 *    forbidden move), never NaN or +inf. Entries of px that fast_rnnt forces to -inf (column T
 *    and, with a boundary, column end_frame in the regular case; moves outside a pruned band)
 *    get no gradient; with rnnt_type CONSTRAINED grad_px[s, t] also flows to py[s+1, t].
 * Gradient policy: every gradient here is an activation gradient and is written (=). */
typedef enum tn_rnnt_type {
    TN_RNNT_REGULAR = 0, TN_RNNT_MODIFIED = 1, TN_RNNT_CONSTRAINED = 2
} tn_rnnt_type;

/* Mutual-information recursion (fast_rnnt mutual_information_recursion):
 *   p[b, s_begin, t_begin] = 0
 *   p[b, s, t] = log_add(p[b, s-1, t-o] + px[b, s-1, t-o], p[b, s, t-1] + py[b, s, t-1])
 * inside the boundary, o = 0 when px is (B, S, T+1) (regular), o = 1 when px is (B, S, T)
 * (modified / constrained; needs T_b >= S_b); scores[b] = p[b, end_symbol, end_frame].
 * return_grad: with px_grad and py_grad (both or neither) the same call runs the backward pass
 * too and writes the occupation probabilities px_grad = d scores[b] / d px[b], py_grad =
 * d scores[b] / d py[b] (fast_rnnt's return_grad; zero outside each boundary, all zero for an
 * utterance whose score is -inf). The forward keeps its normalised transition weights in
 * px_grad / py_grad and the backward turns them into occupations in place: no exp or log in
 * the backward. An autograd backward is then grad_px = grad_scores[b] * px_grad[b].
 * p (B, S+1, T+1) [OPTIONAL]: the whole table, for tn_rnnt_mutual_information_backward;
 * entries outside the boundary are -inf. */
tn_status tn_rnnt_mutual_information(tn_tensor *scores,          /* [OUT] (B) */
                                     tn_tensor *px_grad,         /* [OPTIONAL][OUT] px's shape = */
                                     tn_tensor *py_grad,         /* [OPTIONAL][OUT] (B, S+1, T) = */
                                     tn_tensor *p,               /* [OPTIONAL][OUT][BUFFER] (B, S+1, T+1) */
                                     const tn_tensor *px,        /* (B, S, T+1) or (B, S, T) */
                                     const tn_tensor *py,        /* (B, S+1, T) */
                                     const tn_tensor *boundary); /* [OPTIONAL] (B, 4) i64 */
/* Backward from a saved table p (from the call above): px_grad[b] = grad_scores[b] *
 * d scores[b] / d px[b], likewise py_grad. One pass, two exp per cell (the one-pass
 * return_grad of tn_rnnt_mutual_information needs none). */
tn_status tn_rnnt_mutual_information_backward(tn_tensor *px_grad,          /* [OUT] px's shape = */
                                              tn_tensor *py_grad,          /* [OUT] (B, S+1, T) = */
                                              const tn_tensor *grad_scores, /* [OPTIONAL] (B); NULL = ones */
                                              const tn_tensor *px,         /* (B, S, T+1) or (B, S, T) */
                                              const tn_tensor *py,         /* (B, S+1, T) */
                                              const tn_tensor *boundary,   /* [OPTIONAL] (B, 4) i64 */
                                              const tn_tensor *p);         /* (B, S+1, T+1) */

/* px, py of the "simple" joiner lm + am (fast_rnnt get_rnnt_logprobs, and with lm_only_scale
 * or am_only_scale nonzero get_rnnt_logprobs_smoothed, where a zero scale among the two becomes
 * 1e-20 as there), plus the delay penalty. The normaliser log sum_c exp(lm[b,s,c] + am[b,t,c])
 * is one GEMM per utterance of exp(lm - max) (S+1, C) and exp(am - max)^T (C, T); nothing of
 * size B x T x (S+1) x C exists. The smoothed unigram is the mean of softmax(lm) over the
 * whole batch and all S+1 positions, as in fast_rnnt. */
tn_status tn_rnnt_logprobs_simple(tn_tensor *px,               /* [OUT] (B, S, T+1) regular, else (B, S, T) */
                                  tn_tensor *py,               /* [OUT] (B, S+1, T) */
                                  const tn_tensor *lm,         /* (B, S+1, C) */
                                  const tn_tensor *am,         /* (B, T, C) */
                                  const tn_tensor *symbols,    /* (B, S) i64 */
                                  const tn_tensor *boundary,   /* [OPTIONAL] (B, 4) i64 */
                                  int64_t termination_symbol, int32_t rnnt_type,
                                  double lm_only_scale, double am_only_scale, double delay_penalty);
/* grad_lm, grad_am (each [OPTIONAL]: NULL skips it) from grad_px, grad_py, same options as the
 * forward (recomputes the normaliser: three GEMMs per utterance). */
tn_status tn_rnnt_logprobs_simple_backward(tn_tensor *grad_lm,         /* [OPTIONAL][OUT] (B, S+1, C) = */
                                           tn_tensor *grad_am,         /* [OPTIONAL][OUT] (B, T, C) = */
                                           const tn_tensor *grad_px,   /* px's shape */
                                           const tn_tensor *grad_py,   /* (B, S+1, T) */
                                           const tn_tensor *lm,        /* (B, S+1, C) */
                                           const tn_tensor *am,        /* (B, T, C) */
                                           const tn_tensor *symbols,   /* (B, S) i64 */
                                           const tn_tensor *boundary,  /* [OPTIONAL] (B, 4) i64 */
                                           int64_t termination_symbol, int32_t rnnt_type,
                                           double lm_only_scale, double am_only_scale);

/* px, py of the full joiner output (fast_rnnt get_rnnt_logprobs_joint, plus the delay penalty):
 * a fused log-softmax over C, reading each logits row once. lse (B, T, S+1) [OPTIONAL] keeps the
 * log-normalisers for the backward. */
tn_status tn_rnnt_logprobs_joint(tn_tensor *px,               /* [OUT] (B, S, T+1) regular, else (B, S, T) */
                                 tn_tensor *py,               /* [OUT] (B, S+1, T) */
                                 tn_tensor *lse,              /* [OPTIONAL][OUT][BUFFER] (B, T, S+1) */
                                 const tn_tensor *logits,     /* (B, T, S+1, C) */
                                 const tn_tensor *symbols,    /* (B, S) i64 */
                                 const tn_tensor *boundary,   /* [OPTIONAL] (B, 4) i64 */
                                 int64_t termination_symbol, int32_t rnnt_type, double delay_penalty);
/* grad_logits from grad_px, grad_py through the fused log-softmax. grad_logits may be logits
 * itself: the gradient then overwrites the logits in place (no second B x T x (S+1) x C
 * tensor). lse NULL = recomputed. */
tn_status tn_rnnt_logprobs_joint_backward(tn_tensor *grad_logits,     /* [OUT] (B, T, S+1, C) =, may be logits */
                                          const tn_tensor *grad_px,   /* px's shape */
                                          const tn_tensor *grad_py,   /* (B, S+1, T) */
                                          const tn_tensor *logits,    /* (B, T, S+1, C) */
                                          const tn_tensor *lse,       /* [OPTIONAL] (B, T, S+1) from the forward */
                                          const tn_tensor *symbols,   /* (B, S) i64 */
                                          const tn_tensor *boundary,  /* [OPTIONAL] (B, 4) i64 */
                                          int64_t termination_symbol, int32_t rnnt_type);

/* Pruning. ranges (B, T, R) i64: ranges[b, t, k] = s_begin[b, t] + k, 0 <= s_begin and
 * s_begin + R <= S+1 (what tn_rnnt_prune_ranges writes; checked).
 * tn_rnnt_prune_s_range: the s_range to use for a requested one: raised to the minimum that
 * lets the band climb every utterance (regular: max(2, max_b trunc((end_symbol - 1) /
 * end_frame) + 2) over rows with end_frame > 0, i.e. (s_range - 1) T_b + 1 >= S_b + 1;
 * modified / constrained: 1), then clamped to S+1 when > S; S = 0 gives 1. The Lua layer
 * allocates ranges with it and warns once when it is above the request (a clamp to S+1 is
 * silent, as in fast_rnnt). */
tn_status tn_rnnt_prune_s_range(int64_t *s_range_out,         /* [OUT] */
                                const tn_tensor *px_grad,     /* (B, S, T+1) or (B, S, T) */
                                const tn_tensor *py_grad,     /* (B, S+1, T) */
                                const tn_tensor *boundary,    /* [OPTIONAL] (B, 4) i64 */
                                int64_t s_range);
/* fast_rnnt get_rnnt_prune_ranges with R = ranges->shape[2] (R must be a value
 * tn_rnnt_prune_s_range returns unchanged, else TN_ERR_SHAPE): per frame the start of the
 * R-symbol band of largest occupation (sum of py_grad over the band minus the px_grad entering
 * it; first maximum), frames t >= end_frame - 1 set to max(end_symbol - R + 1, 0), then the
 * monotonic fix-up (non-decreasing, starts at 0, steps < R regular, < 2 modified /
 * constrained). px_grad, py_grad: tn_rnnt_mutual_information's occupations of the simple loss.
 * boundary NULL = [0, 0, S, T]. */
tn_status tn_rnnt_prune_ranges(tn_tensor *ranges,             /* [OUT] (B, T, R) i64 */
                               const tn_tensor *px_grad,      /* (B, S, T+1) or (B, S, T) */
                               const tn_tensor *py_grad,      /* (B, S+1, T) */
                               const tn_tensor *boundary);    /* [OPTIONAL] (B, 4) i64 */
/* fast_rnnt do_rnnt_pruning, the lm half: lm_pruned[b, t, k] = lm[b, ranges[b, t, k]]. The am
 * half is a view: am (B, T, D) unsqueezed and expanded to (B, T, R, D) (tn_expand, no copy).
 * The backward scatter-adds rows: grad_lm[b, s] = sum over (t, k) with ranges[b, t, k] = s. */
tn_status tn_rnnt_do_pruning(tn_tensor *lm_pruned,            /* [OUT] (B, T, R, D) */
                             const tn_tensor *lm,             /* (B, S+1, D) */
                             const tn_tensor *ranges);        /* (B, T, R) i64 */
tn_status tn_rnnt_do_pruning_backward(tn_tensor *grad_lm,             /* [OUT] (B, S+1, D) = */
                                      const tn_tensor *grad_lm_pruned, /* (B, T, R, D) */
                                      const tn_tensor *ranges);        /* (B, T, R) i64 */
/* The pruned joiner's hidden unit fused with do_pruning: h[b, t, k] = tanh(am[b, t] +
 * lm[b, ranges[b, t, k]]) (icefall's joiner tanh(am_pruned + lm_pruned) without forming
 * lm_pruned or the sum). The backward writes grad_am[b, t] = sum_k dz[b, t, k] and
 * grad_lm[b, s] = sum of dz[b, t, k] over ranges[b, t, k] = s, with dz = grad_h (1 - h^2), in
 * one pass and without a (B, T, R, D) temporary; either output may be NULL. f32/f64, contiguous
 * am, lm, h, grad_h; results do not depend on the thread count. */
tn_status tn_rnnt_pruned_tanh(tn_tensor *h,                     /* [OUT] (B, T, R, D) */
                              const tn_tensor *am,              /* (B, T, D) */
                              const tn_tensor *lm,              /* (B, S+1, D) */
                              const tn_tensor *ranges);         /* (B, T, R) i64 in [0, S+1) */
tn_status tn_rnnt_pruned_tanh_backward(tn_tensor *grad_am,        /* [OPTIONAL][OUT] (B, T, D) = */
                                       tn_tensor *grad_lm,        /* [OPTIONAL][OUT] (B, S+1, D) = */
                                       const tn_tensor *grad_h,   /* (B, T, R, D) */
                                       const tn_tensor *h,        /* (B, T, R, D), the forward's output */
                                       const tn_tensor *am,       /* (B, T, D) */
                                       const tn_tensor *lm,       /* (B, S+1, D) */
                                       const tn_tensor *ranges);  /* (B, T, R) i64 */

/* px, py of the pruned joiner output (fast_rnnt get_rnnt_logprobs_pruned, plus the delay
 * penalty): logits[b, t, k] scores symbol position ranges[b, t, k]; every (s, t) outside the
 * band gets -inf. Fused log-softmax as tn_rnnt_logprobs_joint; with R = S+1 and ranges[b, t, k]
 * = k it equals the joint version. */
tn_status tn_rnnt_logprobs_pruned(tn_tensor *px,              /* [OUT] (B, S, T+1) regular, else (B, S, T) */
                                  tn_tensor *py,              /* [OUT] (B, S+1, T) */
                                  tn_tensor *lse,             /* [OPTIONAL][OUT][BUFFER] (B, T, R) */
                                  const tn_tensor *logits,    /* (B, T, R, C) */
                                  const tn_tensor *symbols,   /* (B, S) i64 */
                                  const tn_tensor *ranges,    /* (B, T, R) i64 */
                                  const tn_tensor *boundary,  /* [OPTIONAL] (B, 4) i64 */
                                  int64_t termination_symbol, int32_t rnnt_type, double delay_penalty);
tn_status tn_rnnt_logprobs_pruned_backward(tn_tensor *grad_logits,    /* [OUT] (B, T, R, C) =, may be logits */
                                           const tn_tensor *grad_px,  /* px's shape */
                                           const tn_tensor *grad_py,  /* (B, S+1, T) */
                                           const tn_tensor *logits,   /* (B, T, R, C) */
                                           const tn_tensor *lse,      /* [OPTIONAL] (B, T, R) from the forward */
                                           const tn_tensor *symbols,  /* (B, S) i64 */
                                           const tn_tensor *ranges,   /* (B, T, R) i64 */
                                           const tn_tensor *boundary, /* [OPTIONAL] (B, 4) i64 */
                                           int64_t termination_symbol, int32_t rnnt_type);

/* ---- audio (audio.c, resample.c, fbank.c, augment.c) ---------------------------------------
 * Audio files through libsndfile (WAV, FLAC, ...), band-limited resampling, Kaldi-compatible
 * log-mel filterbanks through FFTW (computed in f64, output f32), SpecAugment masks and
 * global mean / variance statistics. Waveforms are f32 tensors in [-1, 1] (as libsndfile and torchaudio.load
 * give them; multiply by 32768 for Kaldi's int16 scale). CPU only. A build without libsndfile
 * or FFTW still has these entry points: they return TN_ERR_UNSUPPORTED with a message naming
 * the missing library (tn_audio_has_sndfile / tn_audio_has_fftw say which are in). Nothing
 * here has a gradient. */

int tn_audio_has_sndfile(void);   /* 1 when built with libsndfile (audio files) */
int tn_audio_has_fftw(void);      /* 1 when built with FFTW (fbank) */

/* Header of an audio file: sample rate (Hz), frames (samples per channel), channels. */
tn_status tn_audio_info(const char *path, int64_t *sample_rate, int64_t *frames, int32_t *channels);
/* Decode path into a new mono f32 tensor (frames) (channels averaged); *sample_rate = the
 * file's rate, or target_rate when target_rate > 0 (then resampled with the defaults of
 * tn_audio_resample when the rates differ). A missing, unreadable, undecodable or empty (no
 * frames) file is TN_ERR_IO naming the path and libsndfile's reason. */
tn_status tn_audio_load(tn_tensor **out,            /* [OUT] (frames) f32, new reference */
                        int64_t *sample_rate,       /* [OUT] */
                        const char *path, int64_t target_rate);
/* Write x as 16-bit PCM, round(x * 32768) clipped to [-32768, 32767] (a load gives x back to
 * half a step, 1/65536): FLAC when path ends in .flac (any case), else
 * WAV. x (frames) mono or (channels, frames); f32 or f64; finite. Written to
 * path.tmp-<pid> and renamed over path (atomic; path untouched on failure). */
tn_status tn_audio_save(const char *path, const tn_tensor *x, int64_t sample_rate);

/* torchaudio.functional.resample (0.13): windowed-sinc polyphase filter, zero-crossing width
 * lowpass_filter_width, cutoff rolloff * min(from, to) / 2; the Hann window is
 * "sinc_interpolation" (cos^2), Kaiser is "kaiser_window" with beta (<= 0: torchaudio's
 * 14.769656459379492). Along the last dim of x (f32; any leading dims), output length
 * ceil(n * to / from) after reducing the rates by their gcd. from == to gives a copy. */
typedef enum tn_resample_method { TN_RESAMPLE_HANN = 0, TN_RESAMPLE_KAISER = 1 } tn_resample_method;
tn_status tn_audio_resample(tn_tensor **out,         /* [OUT] (..., ceil(n * to / from)) f32 */
                            const tn_tensor *x,       /* (..., n) f32 */
                            int64_t from_rate, int64_t to_rate, int32_t lowpass_filter_width,
                            double rolloff, int32_t method, double beta);
/* Speed perturbation (Kaldi / icefall: tempo and pitch together): resample x as if it were
 * recorded at factor * rate, i.e. from round(1000 factor) to 1000 reduced by their gcd; the
 * length becomes about n / factor. factor in [0.1, 10]; 1 gives a copy. */
tn_status tn_audio_speed(tn_tensor **out, const tn_tensor *x, double factor);

/* torchaudio.compliance.kaldi.fbank options (same names and meanings; times in ms). */
typedef enum tn_window_type {
    TN_WINDOW_HAMMING = 0, TN_WINDOW_HANNING = 1, TN_WINDOW_POVEY = 2, TN_WINDOW_RECTANGULAR = 3,
    TN_WINDOW_BLACKMAN = 4
} tn_window_type;
typedef struct tn_fbank_opts {
    double sample_frequency;        /* 16000 */
    double frame_length;            /* 25 ms */
    double frame_shift;             /* 10 ms */
    double dither;                  /* 0: off; > 0 adds dither * N(0, 1) per frame sample (Philox) */
    double preemphasis_coefficient; /* 0.97, in [0, 1] */
    double low_freq;                /* 20 Hz */
    double high_freq;               /* 0: Nyquist; < 0: offset from Nyquist */
    double energy_floor;            /* 1.0 (torchaudio's default; Kaldi's is 0) */
    double blackman_coeff;          /* 0.42 */
    int32_t num_mel_bins;           /* 80 (> 3) */
    int32_t window_type;            /* tn_window_type, TN_WINDOW_POVEY */
    int32_t remove_dc_offset;       /* 1 */
    int32_t round_to_power_of_two;  /* 1 */
    int32_t snip_edges;             /* 1 */
    int32_t raw_energy;             /* 1 */
    int32_t use_energy;             /* 0: log energy as an extra column */
    int32_t htk_compat;             /* 0: energy column last instead of first */
    int32_t use_log_fbank;          /* 1 */
    int32_t use_power;              /* 1 */
} tn_fbank_opts;
/* The defaults above. */
void tn_fbank_opts_init(tn_fbank_opts *opts);
/* Frames fbank gives for num_samples samples (checks the options and the length). */
tn_status tn_fbank_num_frames(int64_t *frames, int64_t num_samples, const tn_fbank_opts *opts);
/* Log-mel filterbank of one waveform (n) f32 -> (frames, num_mel_bins + use_energy) f32,
 * parallel over frames. Fewer samples than one frame (or any bad option) is an error naming
 * the length / option. Dither takes frames * ceil(window_size / 2) counters of the global
 * generator (two normals per counter). */
tn_status tn_fbank(tn_tensor **out,                  /* [OUT] (frames, num_mel_bins + use_energy) */
                   const tn_tensor *wave,            /* (n) f32 */
                   const tn_fbank_opts *opts);
/* tn_fbank over n waveforms, parallel over waveforms; outs[i] (each NULL on entry) receives a
 * new reference. Every input is checked before any work; on error every outs[i] is NULL.
 * Dither counters are taken in list order, so results do not depend on the thread count. */
tn_status tn_fbank_batch(tn_tensor **outs,                 /* [OUT] (n) new references */
                         const tn_tensor *const *waves,    /* (n) each (len_i) f32 */
                         int32_t n, const tn_fbank_opts *opts);

/* SpecAugment (Park et al. 2019), in place: per utterance time_masks bands of frames and
 * freq_masks bands of bins set to value. A band's width is uniform in [0, W] and its start
 * uniform over the positions where it fits; time W = time_width frames (>= 1) or
 * floor(time_width * length) (0 < time_width < 1), at most the length; freq W = min(freq_width,
 * F). Widths and starts come from the global generator: (time_masks + freq_masks) counters per
 * utterance, in batch order. feats (T, F) or (B, T, F) f32 contiguous; lengths (B) i64
 * [OPTIONAL] (NULL = T): masks stay inside each utterance's frames. */
tn_status tn_spec_augment(tn_tensor *feats,          /* [OUT] (T, F) or (B, T, F) f32, in place */
                          const tn_tensor *lengths,  /* [OPTIONAL] (B) i64 */
                          int32_t time_masks, double time_width, int32_t freq_masks,
                          int64_t freq_width, double value);
/* Global mean / variance statistics: stats[0, f] += sum_t feats[t, f], stats[1, f] += sum_t
 * feats[t, f]^2, *count += T (f64 accumulation). */
tn_status tn_cmvn_accumulate(tn_tensor *stats,       /* [OUT] (2, F) f64 += */
                             int64_t *count,         /* [OUT] += T */
                             const tn_tensor *feats); /* (T, F) f32 or f64 */

/* ---- optimizers and mixed precision (optim.c) ------------------------------------------ */

/* Multi-tensor lists. Each entry point takes n tensors per role as parallel arrays (n
 * entries each); entry i of every list has the same number of elements. Every tensor is a
 * contiguous CPU tensor, read as a flat array; all tensors of one list share a dtype. The Lua
 * optimizers pass the runs of parameters that lie back to back in one storage (one run per
 * flat buffer for nn modules) or, for per-tensor rules (NovoGrad, LARC), one entry per
 * parameter. Updates are elementwise and split over OpenMP threads across all entries;
 * reductions (norms, amax) combine fixed blocks in a fixed order, so every result is
 * independent of the thread count.
 *
 * Mixed precision: params may be the FP32 masters of f16/bf16 model weights. Then grads may be
 * the f16/bf16 model gradients (converted on the fly) or f32, and the [OPTIONAL] list model
 * receives the updated params rounded to nearest even, saturating: values beyond the largest
 * finite f16/bf16 (infinities too) become that value, NaN stays NaN. Before the update, a
 * master whose rounding no longer equals its model weight (written from outside) is re-read
 * from the model weight (see tn_amp_sync_masters).
 * Updates follow PyTorch 1.13 torch.optim operation by operation (see core/kernels/optim.h). */
typedef struct tn_optim_hparams {
    double lr;
    double beta1, beta2;          /* Adam, AdamW, NovoGrad */
    double eps;                   /* Adam, AdamW, NovoGrad */
    double weight_decay;          /* L2 (SGD, Adam, NovoGrad); decoupled (AdamW) */
    double momentum, dampening;   /* SGD */
    int32_t nesterov;             /* SGD */
    int32_t decoupled;            /* 1: AdamW's p *= 1 - lr * weight_decay instead of L2 */
    int32_t grad_averaging;       /* NovoGrad: the momentum input is scaled by 1 - beta1 */
    int64_t step;                 /* the number of this update, 1 for the first */
    double grad_scale;            /* gradients are multiplied by it first (1 / iter_size) */
} tn_optim_hparams;

/* torch.optim.SGD. momentum_buf (params' dtype) is required when momentum != 0 (step 1
 * initialises it to the gradient, as torch), else ignored. */
tn_status tn_optim_sgd(int32_t n,
                       tn_tensor *const *params,        /* [OUT] (n) f32 or f64, updated in place */
                       tn_tensor *const *grads,         /* (n) params' dtype; f16/bf16 for f32 params */
                       tn_tensor *const *momentum_buf,  /* [OPTIONAL][OUT] (n) params' dtype */
                       tn_tensor *const *model,         /* [OPTIONAL][OUT] (n) f16/bf16 copies of f32 params */
                       const tn_optim_hparams *h);
/* torch.optim.Adam (decoupled = 0) and AdamW (decoupled = 1), amsgrad off. */
tn_status tn_optim_adam(int32_t n,
                        tn_tensor *const *params,       /* [OUT] (n) f32 or f64 */
                        tn_tensor *const *grads,        /* (n) params' dtype; f16/bf16 for f32 params */
                        tn_tensor *const *exp_avg,      /* [OUT] (n) params' dtype */
                        tn_tensor *const *exp_avg_sq,   /* [OUT] (n) params' dtype */
                        tn_tensor *const *model,        /* [OPTIONAL][OUT] (n) f16/bf16 */
                        const tn_optim_hparams *h);
/* NovoGrad with one second moment per entry (per layer): the entries must be the parameter
 * tensors themselves. grad_ema (n) holds v: ||g||^2 at step 1, then the running average. */
tn_status tn_optim_novograd(int32_t n,
                            tn_tensor *const *params,   /* [OUT] (n) f32 or f64 */
                            tn_tensor *const *grads,    /* (n) params' dtype; f16/bf16 for f32 params */
                            tn_tensor *const *exp_avg,  /* [OUT] (n) params' dtype */
                            tn_tensor *grad_ema,        /* [OUT] (n) params' dtype */
                            tn_tensor *const *model,    /* [OPTIONAL][OUT] (n) f16/bf16 */
                            const tn_optim_hparams *h);
/* apex LARC on one entry per parameter tensor: with pn = ||param||, gn = ||grad_scale *
 * grad||, when both are nonzero trust = eta pn / (gn + weight_decay pn + eps) (clip != 0:
 * min(trust / lr, 1)) and grad = (grad_scale grad + weight_decay param) trust; else grad =
 * grad_scale grad. The wrapped optimizer then steps without weight decay. */
tn_status tn_optim_larc(int32_t n,
                        tn_tensor *const *grads,        /* [OUT] (n) f32 or f64, in place */
                        tn_tensor *const *params, /* (n) grads' dtype */
                        double eta, double eps, double weight_decay, double lr, int32_t clip,
                        double grad_scale);
/* out[i] = ||ts[i]||_2 (sums of squares accumulated in FP32 blocks, combined in double). */
tn_status tn_optim_norms(tn_tensor *out,                  /* [OUT] (n) f64 */
                         int32_t n, tn_tensor *const *ts); /* (n) any float dtype */
/* Global gradient-norm clipping (torch.nn.utils.clip_grad_norm_): total = grad_scale *
 * ||all grads||_2 (FP32 accumulation); when total is finite and max_norm / (total + 1e-6) < 1
 * every gradient is multiplied by that factor. A non-finite total leaves the gradients
 * untouched. The grads may mix dtypes. */
tn_status tn_grad_clip_norm(double *total_norm,          /* [OUT] */
                            int32_t n, tn_tensor *const *grads, /* [OUT] (n) float, in place */
                            double max_norm, double grad_scale);
/* One pass per gradient: out = grads * inv_scale in FP32 (f64 for f64 grads), found_inf = 1
 * when any result is inf or NaN, amax = the largest |result| among the finite ones (0 when
 * none). out[i] may be grads[i] itself (f32/f64 gradients unscaled in place); for f16/bf16
 * gradients it is the f32 master gradient. */
tn_status tn_amp_unscale_check(int32_t *found_inf,       /* [OUT] */
                               double *amax,             /* [OUT] */
                               int32_t n,
                               tn_tensor *const *out,    /* [OUT] (n) f32 (f64 for f64 grads) */
                               tn_tensor *const *grads, /* (n) f32, f64, f16 or bf16 */
                               double inv_scale);
/* Re-read FP32 masters from their f16/bf16 model weights where they disagree: masters[i][j] =
 * model[i][j] wherever the saturating rounding of masters[i][j] differs from model[i][j] (the
 * model weights were written from outside, e.g. loaded). The optimizer updates do the same
 * check per element before updating when given a model list. */
tn_status tn_amp_sync_masters(int32_t n,
                              tn_tensor *const *masters,      /* [OUT] (n) f32 */
                              tn_tensor *const *model); /* (n) f16 or bf16 */
/* Zero every tensor of the list (any dtypes). */
tn_status tn_optim_zero(int32_t n, tn_tensor *const *ts);

/* ---- data loader (loader.c) -------------------------------------------------------------
 * The feature store and the background batch loader under tn.data (lua/tern/data/).
 *
 * A feature store reads utterance feature matrices (frames, dim) from shard files. A shard
 * holds its utterances' rows back to back in one region (f32 or f16, row-major) starting at a
 * byte offset: the "feats" tensor of a safetensors file written by tn.data.FeatureCache. Reads
 * use pread, never mmap (a shard truncated under a running job is an error, not a SIGBUS).
 * Each utterance carries the tn_data_checksum of its stored bytes, checked on every read: a
 * corrupt shard is an error naming the file and the rows.
 *
 * A loader assembles a fixed list of batches (lists of utterance numbers), in order, into new
 * tensors: feats (B, T, dim) f32 with T = the longest utterance of the batch, holding
 * (x - mean) * istd on each utterance's frames and 0 on the padding; lens (B) i64; then
 * SpecAugment masks (optional) inside each utterance's frames. With prefetch K > 0 one
 * pthread worker prepares up to K batches ahead of tn_loader_next; with K = 0 tn_loader_next
 * assembles on the calling thread. Both give identical results: the masks of batch i,
 * utterance b come from Philox-4x32-10 with key = seed and counter = {mask j, b, i low, i high},
 * never from the global generator. An error in the worker (I/O, checksum, memory) stops it and
 * is returned by the next tn_loader_next with the worker's message, then by every later one. */

typedef struct tn_featstore tn_featstore_t; /* opaque, refcounted */
typedef struct tn_loader tn_loader_t;       /* opaque */

/* Opens a store over num_shards shard files and num_utts utterances (utterance u = rows
 * [utt_row[u], utt_row[u] + utt_frames[u]) of shard utt_shard[u]). Checks that every file
 * exists and is large enough, and that every utterance lies inside its shard's region. The
 * arrays and strings are copied. *out: new store (one reference). */
tn_status tn_featstore_open(tn_featstore_t **out,
                            int32_t num_shards,
                            const char *const *paths,      /* (num_shards) */
                            const int64_t *data_offsets,   /* (num_shards) byte offset of the rows */
                            const int64_t *data_bytes,     /* (num_shards) bytes of the rows */
                            int32_t dtype,                 /* TN_F32 or TN_F16 (as stored) */
                            int64_t dim,                   /* features per frame */
                            int64_t num_utts,
                            const int32_t *utt_shard,      /* (num_utts) */
                            const int64_t *utt_row,        /* (num_utts) first row in the shard */
                            const int64_t *utt_frames,     /* (num_utts) >= 1 */
                            const uint64_t *utt_checksum); /* (num_utts) tn_data_checksum of the stored bytes */
/* Drops one reference (loaders hold one each); closes the files at zero. NULL is a no-op. */
void tn_featstore_free(tn_featstore_t *store);
int64_t tn_featstore_num_utts(const tn_featstore_t *store);
/* Utterance utt (0-based) as a new (frames, dim) f32 tensor, checksum checked. */
tn_status tn_featstore_read(tn_tensor **out,               /* [OUT] (frames, dim) f32 */
                            tn_featstore_t *store, int64_t utt);
/* Global mean / variance statistics over n utterances: stats[0, f] += sum of x[t, f],
 * stats[1, f] += sum of x[t, f]^2 (f64), *count += frames. */
tn_status tn_featstore_cmvn(tn_tensor *stats,              /* [OUT] (2, dim) f64 += */
                            int64_t *count,                /* [OUT] += frames */
                            tn_featstore_t *store,
                            const int64_t *utts, int64_t n); /* (n) utterance numbers */

typedef struct tn_loader_opts {
    int32_t prefetch;     /* batches prepared ahead by the worker thread; 0 = synchronous */
    int32_t time_masks;   /* SpecAugment: time bands per utterance (0 = none) */
    double time_width;    /* max band width: frames (>= 1) or a fraction of the length (< 1) */
    int32_t freq_masks;   /* frequency bands per utterance (0 = none) */
    int64_t freq_width;   /* max band width in bins */
    double mask_value;    /* value written into the bands (0 = the mean after CMVN) */
    uint64_t seed;        /* key of the masks' Philox stream */
    int64_t batch_base;   /* added to batch numbers (masks' counters, *batch of tn_loader_next):
                             a loader over the tail of a list draws the masks the whole list would */
} tn_loader_opts;

/* A loader over num_batches batches: batch i is utts[batch_offsets[i] .. batch_offsets[i+1])
 * (each non-empty). Holds a reference to store; copies the lists and cmvn. With prefetch > 0
 * the worker starts at once. */
tn_status tn_loader_create(tn_loader_t **out,
                           tn_featstore_t *store,
                           const tn_tensor *cmvn,         /* [OPTIONAL] (2, dim) f32 or f64: mean; 1 / std */
                           int64_t num_batches,
                           const int64_t *batch_offsets,  /* (num_batches + 1), from 0, increasing */
                           const int64_t *utts,           /* (batch_offsets[num_batches]) utterance numbers */
                           const tn_loader_opts *opts);   /* [OPTIONAL] NULL = no prefetch, no masks */
/* The next batch: new references in *feats (B, T, dim) f32 and *lens (B) i64, *batch = its
 * number (0-based, + opts.batch_base). After the last batch: *feats = *lens = NULL, *batch = -1,
 * TN_OK. */
tn_status tn_loader_next(tn_loader_t *loader,
                         tn_tensor **feats,               /* [OUT] (B, T, dim) f32 */
                         tn_tensor **lens,                /* [OUT] (B) i64 */
                         int64_t *batch);                 /* [OUT] */
/* Seconds tn_loader_next spent waiting for the worker (or assembling, without prefetch), and
 * seconds the assembly itself took, since creation. */
void tn_loader_stats(const tn_loader_t *loader, double *wait_s, double *work_s);
/* Stops and joins the worker, frees the batches not taken and the store reference. NULL is a
 * no-op. */
void tn_loader_free(tn_loader_t *loader);

/* A 64-bit checksum of nbytes bytes (4 multiply-xor lanes over little-endian u64 words, a
 * splitmix64 finish): any change of one 8-byte word changes it. */
uint64_t tn_data_checksum(const void *data, size_t nbytes);
/* Size in bytes, modification time (ns since the epoch) and kind (1 directory, 0 other) of a
 * file, each [OPTIONAL]; TN_ERR_IO naming the path when stat fails. */
tn_status tn_file_stat(const char *path, int64_t *size, int64_t *mtime_ns, int32_t *is_dir);

/* ---- SentencePiece tokens (spm.c, spm_impl.cc) ---------------------------------------------
 * Debian's libsentencepiece behind a C API: ids are the model's (0-based). A build without it
 * keeps these entry points; they return TN_ERR_UNSUPPORTED naming the package (tn_spm_available
 * says which). */
typedef struct tn_spm tn_spm;
int tn_spm_available(void);       /* 1 when built with libsentencepiece */
/* Load a .model file; TN_ERR_IO naming the path and the library's reason when it fails. */
tn_status tn_spm_load(const char *path, tn_spm **out);
void tn_spm_free(tn_spm *spm);
int32_t tn_spm_size(const tn_spm *spm);                       /* pieces in the vocabulary */
int32_t tn_spm_kind(const tn_spm *spm, int32_t id);           /* 0 normal, 1 unknown, 2 control, 3 unused, 4 byte; -1 bad id */
int32_t tn_spm_piece_to_id(const tn_spm *spm, const char *piece); /* -1 when not in the vocabulary */
/* The piece of id into out (cap bytes, NUL-terminated when *len < cap). */
tn_status tn_spm_piece(const tn_spm *spm, int32_t id, char *out, int64_t cap, int64_t *len);
/* text -> ids (at most cap written); *n = the number of ids the text has (call again with a
 * larger buffer when *n > cap). */
tn_status tn_spm_encode(const tn_spm *spm, const char *text, int32_t *ids, int64_t cap, int64_t *n);
/* ids -> text into out (cap bytes, NUL-terminated when *len < cap); *len = the text's length. */
tn_status tn_spm_decode(const tn_spm *spm, const int32_t *ids, int64_t n, char *out, int64_t cap, int64_t *len);
/* Train a model: spm_train's flags in one string ("--input=a.txt --model_prefix=m --vocab_size=500 ..."). */
tn_status tn_spm_train(const char *args);

/* ---- distributed (dist.c, cuda/dist.cu) ---------------------------------------------------
 * Horovod-style collectives between the ranks of an MPI job (mpirun -np N ...), in place on
 * contiguous tensors. Backends: TN_DIST_MPI (CPU tensors; CUDA tensors are staged through host
 * memory), TN_DIST_NCCL (CUDA tensors through NCCL on the device local_rank selects; CPU
 * tensors still go through MPI), TN_DIST_AUTO (NCCL when built with it and a GPU is present,
 * else MPI). Every collective is bounded by a timeout (default 300 s, or TERN_DIST_TIMEOUT
 * seconds from the environment, or tn_dist_set_timeout): past it the call fails naming the op,
 * the shape, the rank and the time waited; the communicator is then unusable and the job should
 * end (tn_dist_abort, or exit non-zero so that mpirun ends the other ranks). Before each
 * collective the ranks compare op, dtype and shape (one small allgather) unless
 * tn_dist_set_checks(0). On MPI a large allreduce goes as several MPI_Iallreduce of
 * TERN_DIST_CHUNK_KB (default 65536) each, and MPI advances them only inside MPI calls: a started
 * allreduce progresses while the caller polls tn_dist_work_test (or waits). Not thread-safe: call
 * from one thread. In a build without MPI every call returns TN_ERR_UNSUPPORTED saying how to
 * get MPI. Ranks and roots are 0-based. */

typedef enum tn_dist_backend { TN_DIST_AUTO = 0, TN_DIST_MPI = 1, TN_DIST_NCCL = 2 } tn_dist_backend;
typedef enum tn_dist_op { TN_DIST_SUM = 0, TN_DIST_AVG = 1, TN_DIST_MAX = 2 } tn_dist_op;
typedef struct tn_dist_work tn_dist_work_t; /* an allreduce in flight (tn_dist_allreduce_start) */

/* 1 when built with MPI; [OPTIONAL] reason (cap bytes, NUL-terminated): why not, or how the
 * process was launched ("launched by mpirun (OMPI_COMM_WORLD_SIZE=2)" / "not under mpirun:
 * init makes a single rank"). */
int tn_dist_available(char *reason, size_t cap);
/* Initialises MPI (MPI_Init_thread, or adopts an MPI the host program initialised) and the
 * backend. timeout_s <= 0: keep the current timeout. Calling it again with the same backend (or
 * AUTO) is a no-op; another backend is an error. */
tn_status tn_dist_init(int32_t backend, double timeout_s);
/* Frees the communicators and finalises MPI when tn_dist_init initialised it (MPI cannot be
 * initialised again in this process afterwards). After a timed-out collective it only returns
 * an error (MPI_Finalize would wait for the dead peer). No-op when not initialised. */
tn_status tn_dist_finalize(void);
int tn_dist_is_initialized(void);
int32_t tn_dist_get_backend(void);          /* tn_dist_backend in use; -1 when not initialised */
tn_status tn_dist_rank(int32_t *out);       /* [OUT] this process's rank, 0 .. size-1 */
tn_status tn_dist_size(int32_t *out);       /* [OUT] number of ranks */
tn_status tn_dist_local_rank(int32_t *out); /* [OUT] rank among the ranks of this node */
tn_status tn_dist_local_size(int32_t *out); /* [OUT] ranks on this node */
tn_status tn_dist_set_timeout(double seconds); /* > 0 */
double tn_dist_get_timeout(void);
void tn_dist_set_checks(int on);            /* cross-rank op / dtype / shape check; default on */
/* Ends every rank of the job (MPI_Abort on the world communicator). Returns only when MPI is
 * not initialised (or the build has none): TN_ERR_UNSUPPORTED. */
tn_status tn_dist_abort(int32_t code);
tn_status tn_dist_barrier(void);
/* t (contiguous; f32, f64, f16, bf16, i32, i64, u8; avg needs a float dtype) = op over the
 * ranks of t, in place. f16 / bf16 are summed in f32 on MPI. */
tn_status tn_dist_allreduce(tn_tensor *t, int32_t op);
/* Starts the same allreduce and returns at once: [OUT] out (new handle; release with
 * tn_dist_work_free after it completed). t must stay alive and untouched until then. */
tn_status tn_dist_allreduce_start(tn_dist_work_t **out, tn_tensor *t, int32_t op);
/* Waits (bounded by the timeout) until the work completed; t then holds the result. On CUDA the
 * current stream is made to wait for the communication (no host wait is needed after). */
tn_status tn_dist_work_wait(tn_dist_work_t *w);
/* [OUT] done: 1 when completed (the result is then in t, as after wait), else 0. Fails when the
 * timeout passed. */
tn_status tn_dist_work_test(tn_dist_work_t *w, int32_t *done);
/* Releases the handle; a work still in flight is waited for first. NULL is a no-op. */
void tn_dist_work_free(tn_dist_work_t *w);
/* t (contiguous, any dtype) = t of rank root, in place. */
tn_status tn_dist_broadcast(tn_tensor *t, int32_t root);
/* [OUT] out: (size * t.shape[0], t.shape[1:]) (a 0-dim t gives (size)), the ranks' t stacked in
 * rank order; same dtype and device as t. */
tn_status tn_dist_allgather(tn_tensor **out, const tn_tensor *t);

/* ---- files ----------------------------------------------------------------------------- */

/* Atomically write path: header (header_len bytes) preceded by its length as u64 little
 * endian, then the bytes of each tensor in order (row-major, native little-endian), written
 * to path.tmp-<pid>, fsynced and renamed over path. This is the safetensors layout when
 * header is its JSON. */
tn_status tn_io_write(const char *path, const char *header, uint64_t header_len,
                      const tn_tensor *const *ts, int32_t n);
/* Fill the contiguous tensor out with numel*elsize bytes of path read from byte offset. */
tn_status tn_io_read(tn_tensor *out, const char *path, int64_t offset);

/* TN_CDEF_END */

#ifdef __cplusplus
}
#endif

#endif /* TERN_H */
