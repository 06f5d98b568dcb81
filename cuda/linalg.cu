/*
 * cuda/linalg.cu — matrix products on cuBLAS: the CUDA backend of tn_matmul, tn_bmm and tn_gemm,
 * and the TF32 switch (tn_cuda_set_tf32 / tn_cuda_get_tf32).
 *
 * core/linalg.c checks the arguments, prepares the output and the operands once for both
 * devices (an operand that shares storage with the output is copied, one whose matrices are
 * neither row- nor column-major is made contiguous), then calls tn_cuda_matmul:
 *
 *   C (batch..., n, m) = alpha * op(A) (batch..., n, k) op(B) (batch..., k, m) + beta * C
 *
 * A's and B's batch dims align to the right of the batch shape and broadcast (size 1 or
 * missing: batch stride 0); a 1-D A is a row (1, k), a 1-D B a column (k, 1). C's matrices are
 * row-major with row stride ldc and follow each other at n * ldc elements.
 *
 * Row-major on column-major cuBLAS: a row-major (rows, cols) matrix with row stride ld is, to
 * cuBLAS, its transpose (cols, rows) with leading dimension ld. So C = A B is computed as
 * C^T (m, n) = B^T (m, k) A^T (k, n): cublasGemmEx(opB, opA, m, n, k, B, ldb, A, lda, C, ldc).
 * A row-major operand (column stride 1) goes as CUBLAS_OP_N with ld = its row stride, a
 * transposed view (row stride 1) as CUBLAS_OP_T with ld = its column stride (the CBLAS
 * NoTrans / Trans of core/linalg.c, unchanged); neither is copied.
 *
 * Dtypes: f32 on TF32 tensor cores when tn_cuda_get_tf32() (the default) else in full f32;
 * f64 in f64; f16 and bf16 on tensor cores with f32 accumulation, f32 alpha / beta, reductions
 * kept in f32 (CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION) and one rounding of the result,
 * as the CPU's f32 product rounded into f16 / bf16. Integer dtypes never get here (core/linalg.c
 * refuses them on both devices).
 *
 * Batches: when B has no batch of its own and A's batch folds into its rows (row-major, each
 * batch right after the previous one), one GEMM with A's batch folded into n (a Linear layer
 * on (T, B, D) input). Otherwise the batch dims are merged where A, B and C all allow it; the
 * innermost merged dim is one cublasGemmStridedBatchedEx (batch stride 0 for a broadcast
 * operand), the outer ones a host loop of such calls. k = 0: C = beta * C (a memset for 0).
 *
 * Handles: one cublasHandle_t per device and host thread, made on first use (destroyed when
 * the thread exits; the main thread's live until the process ends). Before every call:
 * cublasSetStream(tn_cuda_stream_now()), then cublasSetWorkspace with the workspace of that
 * (device, stream) pair, a block of the caching allocator made on first use and kept until
 * tn.cuda.empty_cache() or the stream's destruction (32 MiB on sm_90 and later, 8 MiB before;
 * after WS_MAX pairs, cuBLAS's own default workspace).
 * No host synchronisation. Every cuBLAS status is checked (TN_CUBLAS_CHECK: file, line, call,
 * status name), and the message of a failing call is prefixed with the op, shapes and dtype.
 *
 * Gradient policy: forward only (the backward of a product is two products, autograd.lua).
 */
#include "common.cuh"

#include <cublas_v2.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- cuBLAS errors ------------------------------------------------------------------------- */

/* A failed cuBLAS call: "<file>:<line>: <call> failed: CUBLAS_STATUS_<name> (<description>)".
 * Allocation failures map to TN_ERR_OOM, everything else to TN_ERR_DEVICE. The CUDA runtime's
 * last-error slot is cleared too (an execution failure may have left one there). */
static tn_status tn_cublas_fail(cublasStatus_t st, const char *call, const char *file, int line) {
    (void)cudaGetLastError();
    return tn_error(st == CUBLAS_STATUS_ALLOC_FAILED ? TN_ERR_OOM : TN_ERR_DEVICE, "%s:%d: %s failed: %s (%s)", file,
                    line, call, cublasGetStatusName(st), cublasGetStatusString(st));
}

#define TN_CUBLAS_CHECK(call)                                                                         \
    ([&]() -> tn_status {                                                                             \
        cublasStatus_t tn_cublas_s_ = (call);                                                         \
        return tn_cublas_s_ == CUBLAS_STATUS_SUCCESS ? TN_OK                                          \
                                                     : tn_cublas_fail(tn_cublas_s_, #call, __FILE__, __LINE__); \
    }())

/* ---- TF32 switch --------------------------------------------------------------------------- */

static int tf32_on = 1; /* process-wide; read at every f32 product */

extern "C" tn_status tn_cuda_set_tf32(int on) {
    __atomic_store_n(&tf32_on, on ? 1 : 0, __ATOMIC_RELAXED);
    return TN_OK;
}

extern "C" int tn_cuda_get_tf32(void) { return __atomic_load_n(&tf32_on, __ATOMIC_RELAXED); }

/* ---- handles, one per device and host thread ------------------------------------------------ */

enum { LA_MAX_DEVICES = 64 }; /* as cuda/device.cu */

typedef struct thread_handles {
    cublasHandle_t h[LA_MAX_DEVICES]; /* (devices) NULL until first use */
} thread_handles;

static __thread thread_handles *my_handles;
static pthread_key_t handles_key;
static pthread_once_t handles_once = PTHREAD_ONCE_INIT;
static int handles_key_ok;

/* Thread exit: destroy the thread's handles, each with its device current. */
static void handles_destroy(void *p) {
    thread_handles *th = (thread_handles *)p;
    for (int d = 0; d < LA_MAX_DEVICES; d++) {
        if (!th->h[d]) continue;
        if (cudaSetDevice(d) == cudaSuccess) (void)cublasDestroy(th->h[d]);
        (void)cudaGetLastError();
    }
    free(th);
}

static void handles_key_make(void) { handles_key_ok = pthread_key_create(&handles_key, handles_destroy) == 0; }

/* The calling thread's handle for device dev (the current device), made on first use with
 * the math mode that keeps f16 / bf16 reductions in f32. */
static tn_status handle_get(int dev, cublasHandle_t *out) {
    if (!my_handles) {
        thread_handles *th = (thread_handles *)calloc(1, sizeof *th);
        if (!th) return tn_error(TN_ERR_OOM, "cublas handle: out of host memory");
        (void)pthread_once(&handles_once, handles_key_make);
        if (handles_key_ok) (void)pthread_setspecific(handles_key, th); /* else kept until exit */
        my_handles = th;
    }
    if (!my_handles->h[dev]) {
        cublasHandle_t h = NULL;
        TN_TRY(TN_CUBLAS_CHECK(cublasCreate(&h)));
        tn_status s = TN_CUBLAS_CHECK(
            cublasSetMathMode(h, (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
        if (s != TN_OK) {
            (void)cublasDestroy(h);
            return s;
        }
        my_handles->h[dev] = h;
    }
    *out = my_handles->h[dev];
    return TN_OK;
}

/* ---- workspaces, one per (device, stream) ---------------------------------------------------- */

enum { WS_MAX = 64 };

typedef struct ws_entry {
    int device;
    cudaStream_t stream;
    tn_tensor *buf; /* (bytes) u8, a caching-allocator block used only on stream */
} ws_entry;

static ws_entry ws_table[WS_MAX];
static int ws_count;
static pthread_mutex_t ws_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread ws_entry ws_last; /* this thread's last lookup, valid while ws_last_gen == ws_gen */
static __thread unsigned ws_last_gen;
static unsigned ws_gen = 1; /* bumped by every release (under ws_lock, read under ws_use) */
/* Held for reading from the workspace lookup until the GEMMs that use it are queued; for
 * writing by tn_cuda_blas_release, so a workspace is never handed back while a host thread is
 * about to queue work on it. */
static pthread_rwlock_t ws_use = PTHREAD_RWLOCK_INITIALIZER;

static int64_t ws_bytes(int dev) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        major = 0;
    }
    return (int64_t)(major >= 9 ? 32 : 8) << 20; /* cuBLAS's recommendation for Hopper; 8 MiB before */
}

/* The workspace of (dev, stream) in *ptr, *bytes; NULL / 0 when none could be had (the
 * caller then leaves cuBLAS its default workspace). Never fails. */
static void ws_get(int dev, cudaStream_t stream, void **ptr, size_t *bytes) {
    *ptr = NULL;
    *bytes = 0;
    if (ws_last.buf && ws_last_gen == ws_gen && ws_last.device == dev && ws_last.stream == stream) {
        *ptr = ws_last.buf->data;
        *bytes = (size_t)ws_last.buf->shape[0];
        return;
    }
    pthread_mutex_lock(&ws_lock);
    ws_entry *e = NULL;
    for (int i = 0; i < ws_count; i++)
        if (ws_table[i].device == dev && ws_table[i].stream == stream) e = &ws_table[i];
    if (!e && ws_count < WS_MAX) {
        const int64_t n = ws_bytes(dev);
        tn_tensor *buf = NULL;
        /* allocated on the current device and stream, which are dev and stream */
        if (tn_tensor_empty(&buf, 1, &n, TN_U8, TN_CUDA) == TN_OK) {
            e = &ws_table[ws_count++];
            e->device = dev;
            e->stream = stream;
            e->buf = buf;
        } else {
            tn_clear_error(); /* not an error: cuBLAS falls back on its default workspace */
        }
    }
    if (e) {
        ws_last = *e;
        ws_last_gen = ws_gen;
        *ptr = e->buf->data;
        *bytes = (size_t)e->buf->shape[0];
    }
    pthread_mutex_unlock(&ws_lock);
}

/* Hands the workspaces of stream (every stream when all) back to the caching allocator, which
 * reuses each once its stream has passed the GEMMs queued on it: tn_cuda_pool_empty calls it
 * for all (empty_cache then returns their memory to the driver), tn_cuda_stream_free for the
 * stream it destroys (a later stream may get the same handle value). A later GEMM on the
 * stream makes a new one. */
extern "C" void tn_cuda_blas_release(int all, cudaStream_t stream) {
    pthread_rwlock_wrlock(&ws_use);
    pthread_mutex_lock(&ws_lock);
    int kept = 0;
    for (int i = 0; i < ws_count; i++) {
        if (all || ws_table[i].stream == stream) {
            tn_tensor_free(ws_table[i].buf);
        } else {
            ws_table[kept++] = ws_table[i];
        }
    }
    if (kept != ws_count) {
        for (int i = kept; i < ws_count; i++) ws_table[i].buf = NULL;
        ws_count = kept;
        ws_gen++;
    }
    pthread_mutex_unlock(&ws_lock);
    pthread_rwlock_unlock(&ws_use);
}

/* The handle of the current device bound to this thread's current stream and its workspace.
 * The caller holds ws_use for reading until its GEMMs are queued. */
static tn_status handle_ready(cublasHandle_t *out) {
    int dev = -1;
    TN_TRY(TN_CUDA_CHECK(cudaGetDevice(&dev)));
    if (dev < 0 || dev >= LA_MAX_DEVICES)
        return tn_error(TN_ERR_DEVICE, "cublas handle: device %d is beyond the %d tern supports", dev, LA_MAX_DEVICES);
    cublasHandle_t h = NULL;
    TN_TRY(handle_get(dev, &h));
    const cudaStream_t stream = tn_cuda_stream_now();
    TN_TRY(TN_CUBLAS_CHECK(cublasSetStream(h, stream))); /* also resets the workspace to cuBLAS's */
    void *ws;
    size_t ws_n;
    ws_get(dev, stream, &ws, &ws_n);
    if (ws) TN_TRY(TN_CUBLAS_CHECK(cublasSetWorkspace(h, ws, ws_n)));
    *out = h;
    return TN_OK;
}

/* ---- C = beta * C for k = 0 -------------------------------------------------------------------- */

template <typename T>
__global__ void scale_rows_kernel(T *c,          // (rows, m) row stride ldc
                                  int64_t rows, int64_t m, int64_t ldc, double beta) {
    typedef typename tn_cuda_math<T>::type M;
    const M b = (M)beta;
    TN_CUDA_GRID_LOOP(e, rows * m) {
        T *p = c + (e / m) * ldc + e % m;
        tn_cuda_store(p, tn_cuda_load(p) * b);
    }
}

template <typename T> static tn_status scale_rows(void *c, int64_t rows, int64_t m, int64_t ldc, double beta) {
    scale_rows_kernel<T><<<tn_cuda_blocks(rows * m), TN_CUDA_THREADS, 0, tn_cuda_stream_now()>>>((T *)c, rows, m, ldc,
                                                                                                   beta);
    return TN_CUDA_CHECK_LAUNCH();
}

/* c (rows, m), row stride ldc, elements of es bytes: c = beta * c (c not read when beta is 0). */
static tn_status scale_c(int32_t dtype, void *c, int64_t rows, int64_t m, int64_t ldc, size_t es, double beta) {
    if (rows == 0 || m == 0) return TN_OK;
    if (beta == 0.0)
        return TN_CUDA_CHECK(cudaMemset2DAsync(c, (size_t)ldc * es, 0, (size_t)m * es, (size_t)rows, tn_cuda_stream_now()));
    switch (dtype) {
    case TN_F32: return scale_rows<float>(c, rows, m, ldc, beta);
    case TN_F64: return scale_rows<double>(c, rows, m, ldc, beta);
    case TN_F16: return scale_rows<tn_f16>(c, rows, m, ldc, beta);
    case TN_BF16: return scale_rows<tn_bf16>(c, rows, m, ldc, beta);
    default: return tn_error(TN_ERR_DTYPE, "matmul: internal error: dtype %s on cuBLAS", tn_dtype_name(dtype));
    }
}

/* ---- layouts ------------------------------------------------------------------------------------ */

/* cuBLAS operation and leading dimension of a row-major (rows, cols) matrix with strides (rs,
 * cs): tn_matrix_layout (core/internal.h), the same cases as the CPU's; 0 when neither a
 * row-major nor a column-major layout describes it. */
static int la_classify(int64_t rows, int64_t cols, int64_t rs, int64_t cs, cublasOperation_t *op, int64_t *ld) {
    int t = 0;
    const int ok = tn_matrix_layout(rows, cols, rs, cs, &t, ld);
    *op = t ? CUBLAS_OP_T : CUBLAS_OP_N;
    return ok;
}

/* The matrix strides of operand t (its last two dims, swapped when trans; a 1-D t is a row
 * (1, k) for A, a column (k, 1) for B) and its batch strides right-aligned in a batch of nb
 * dims (0 where t is missing the dim or has size 1). As mm_describe in core/linalg.c. */
static void la_describe(const tn_tensor *t, int is_b, int trans, int nb, int64_t *bstr, int64_t *rs, int64_t *cs) {
    const int nd = t->ndim;
    if (nd == 1) {
        if (is_b) { *rs = t->strides[0]; *cs = 1; }
        else { *rs = t->shape[0]; *cs = t->strides[0]; }
    } else {
        *rs = t->strides[nd - 2];
        *cs = t->strides[nd - 1];
        if (trans) { const int64_t x = *rs; *rs = *cs; *cs = x; }
    }
    const int tb = nd > 2 ? nd - 2 : 0;
    for (int i = 0; i < nb; i++) {
        const int j = i - (nb - tb);
        bstr[i] = (j >= 0 && t->shape[j] != 1) ? t->strides[j] : 0;
    }
}

static int fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* ---- the cuBLAS call ------------------------------------------------------------------------- */

/* One product's constants: types, scalars, the op and ld of each operand (row-major terms as
 * described at the top) and its sizes. */
typedef struct la_gemm {
    cublasHandle_t h;
    cudaDataType type;
    cublasComputeType_t compute;
    const void *alpha, *beta; /* host scalars: double for f64, float otherwise */
    cublasOperation_t opa, opb;
    int m, k;                 /* the product's m and k; n varies (folding) */
    int lda, ldb, ldc;
} la_gemm;

/* count products C_i (n, m) = alpha A_i B_i + beta C_i with A_i = a + i * sa (elements of es
 * bytes), and so on; count 1 is a plain GEMM. Returns the status of the cuBLAS call. */
static tn_status la_call(const la_gemm *g, size_t es, const char *a, int64_t sa, const char *b, int64_t sb, char *c,
                         int64_t sc, int n, int64_t count) {
    if (count == 1)
        return TN_CUBLAS_CHECK(cublasGemmEx(g->h, g->opb, g->opa, g->m, n, g->k, g->alpha, b, g->type, g->ldb, a,
                                            g->type, g->lda, g->beta, c, g->type, g->ldc, g->compute,
                                            CUBLAS_GEMM_DEFAULT));
    while (count > 0) { /* batchCount is an int: chunks of at most INT_MAX */
        const int chunk = count > INT_MAX ? INT_MAX : (int)count;
        TN_TRY(TN_CUBLAS_CHECK(cublasGemmStridedBatchedEx(g->h, g->opb, g->opa, g->m, n, g->k, g->alpha, b, g->type,
                                                          g->ldb, (long long)sb, a, g->type, g->lda, (long long)sa,
                                                          g->beta, c, g->type, g->ldc, (long long)sc, chunk,
                                                          g->compute, CUBLAS_GEMM_DEFAULT)));
        count -= chunk;
        a += (size_t)chunk * (size_t)sa * es; /* sa, sb >= 0; sc > 0 */
        b += (size_t)chunk * (size_t)sb * es;
        c += (size_t)chunk * (size_t)sc * es;
    }
    return TN_OK;
}

/* The failing call's message, prefixed with the op, the operands and the dtype. */
static tn_status with_context(tn_status s, const char *op, const tn_tensor *a, const tn_tensor *b, int32_t trans_a,
                              int32_t trans_b) {
    char msg[1024], sa[160], sb[160];
    snprintf(msg, sizeof msg, "%s", tn_last_error());
    return tn_error(s, "%s: a %s%s, b %s%s, %s on cuda: %s", op, tn_shape_str(a, sa, sizeof sa), trans_a ? "^T" : "",
                    tn_shape_str(b, sb, sizeof sb), trans_b ? "^T" : "", tn_dtype_name(a->dtype), msg);
}

static tn_status matmul_impl(const char *op, tn_tensor *c, const tn_tensor *a, const tn_tensor *b, int32_t trans_a,
                             int32_t trans_b, int32_t nb, const int64_t *bshape, int64_t n, int64_t k, int64_t m,
                             int64_t ldc, double alpha, double beta) {
    const int32_t dtype = a->dtype;
    if (b->dtype != dtype || c->dtype != dtype)
        return tn_error(TN_ERR_DTYPE, "%s: internal error: dtypes %s, %s, %s on cuBLAS", op, tn_dtype_name(a->dtype),
                        tn_dtype_name(b->dtype), tn_dtype_name(c->dtype));
    if (a->device != TN_CUDA || b->device != TN_CUDA || c->device != TN_CUDA)
        return tn_error(TN_ERR_DEVICE, "%s: internal error: operands on %s, %s, %s on cuBLAS", op,
                        tn_device_name(a->device), tn_device_name(b->device), tn_device_name(c->device));
    if (nb < 0 || nb > TN_MAX_DIMS || (nb > 0 && !bshape))
        return tn_error(TN_ERR_ARG, "%s: internal error: %d batch dims", op, (int)nb);
    const size_t es = tn_dtype_size(dtype);

    int64_t nbatch = 1;
    for (int i = 0; i < nb; i++) nbatch *= bshape[i];
    if (nbatch == 0 || n == 0 || m == 0) return TN_OK;
    if (ldc < (m > 1 ? m : 1))
        return tn_error(TN_ERR_ARG, "%s: internal error: ldc %lld < m %lld", op, (long long)ldc, (long long)m);
    if (k == 0) { /* c = beta * c; c's batches follow each other at n * ldc */
        tn_status s = scale_c(dtype, c->data, nbatch * n, m, ldc, es, beta);
        return s == TN_OK ? s : with_context(s, op, a, b, trans_a, trans_b);
    }

    /* per-matrix layouts and batch strides (elements) */
    int64_t astr[TN_MAX_DIMS], bstr[TN_MAX_DIMS], cstr[TN_MAX_DIMS]; /* (nb) */
    int64_t ars, acs, brs, bcs;
    la_describe(a, 0, trans_a, nb, astr, &ars, &acs);
    la_describe(b, 1, trans_b, nb, bstr, &brs, &bcs);
    {
        int64_t st = n * ldc;
        for (int i = nb - 1; i >= 0; i--) {
            cstr[i] = bshape[i] == 1 ? 0 : st;
            st *= bshape[i];
        }
    }
    la_gemm g;
    int64_t lda, ldb;
    if (!la_classify(n, k, ars, acs, &g.opa, &lda) || !la_classify(k, m, brs, bcs, &g.opb, &ldb))
        return tn_error(TN_ERR_ARG, "%s: internal error: operand layout not BLAS-compatible (a strides [%lld, %lld], "
                                    "b strides [%lld, %lld])",
                        op, (long long)ars, (long long)acs, (long long)brs, (long long)bcs);

    float alpha_f = (float)alpha, beta_f = (float)beta;
    switch (dtype) {
    case TN_F32:
        g.type = CUDA_R_32F;
        g.compute = tn_cuda_get_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
        break;
    case TN_F64: g.type = CUDA_R_64F; g.compute = CUBLAS_COMPUTE_64F; break;
    case TN_F16: g.type = CUDA_R_16F; g.compute = CUBLAS_COMPUTE_32F; break;
    case TN_BF16: g.type = CUDA_R_16BF; g.compute = CUBLAS_COMPUTE_32F; break;
    default:
        return tn_error(TN_ERR_DTYPE, "%s: internal error: %s on cuBLAS", op, tn_dtype_name(dtype));
    }
    g.alpha = dtype == TN_F64 ? (const void *)&alpha : (const void *)&alpha_f;
    g.beta = dtype == TN_F64 ? (const void *)&beta : (const void *)&beta_f;

    /* One GEMM when b is shared by the whole batch and a's batch folds into its rows. */
    int b_batched = 0;
    for (int i = 0; i < nb; i++) b_batched |= bshape[i] > 1 && bstr[i] != 0;
    if (nbatch > 1 && !b_batched && g.opa == CUBLAS_OP_N) {
        int64_t size[TN_MAX_DIMS + 1], as[TN_MAX_DIMS + 1], cs[TN_MAX_DIMS + 1];
        for (int i = 0; i < nb; i++) { size[i] = bshape[i]; as[i] = astr[i]; cs[i] = cstr[i]; }
        size[nb] = n; as[nb] = ars; cs[nb] = ldc;
        int64_t fars = ars, fcrs = ldc, flda;
        cublasOperation_t fop;
        const int64_t rows = nbatch * n;
        if (tn_dims_collapse(nb + 1, size, as, &fars) && tn_dims_collapse(nb + 1, size, cs, &fcrs) &&
            la_classify(rows, k, fars, acs, &fop, &flda) && fop == CUBLAS_OP_N && fcrs >= m && fits_int(rows) &&
            fits_int(flda) && fits_int(fcrs) && fits_int(m) && fits_int(k) && fits_int(ldb)) {
            g.m = (int)m, g.k = (int)k, g.lda = (int)flda, g.ldb = (int)ldb, g.ldc = (int)fcrs;
            tn_status s = handle_ready(&g.h);
            if (s == TN_OK) s = la_call(&g, es, a->data, 0, b->data, 0, c->data, 0, (int)rows, 1);
            return s == TN_OK ? s : with_context(s, op, a, b, trans_a, trans_b);
        }
    }

    if (!fits_int(n) || !fits_int(m) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) || !fits_int(ldc))
        return tn_error(TN_ERR_UNSUPPORTED, "%s: sizes [%lld, %lld] x [%lld, %lld] exceed the cuBLAS int range", op,
                        (long long)n, (long long)k, (long long)k, (long long)m);
    g.m = (int)m, g.k = (int)k, g.lda = (int)lda, g.ldb = (int)ldb, g.ldc = (int)ldc;

    /* Merge batch dims (outer into inner) where a, b and c all step uniformly across them. */
    int nd = 0;
    int64_t sz[TN_MAX_DIMS], sa[TN_MAX_DIMS], sb[TN_MAX_DIMS], sc[TN_MAX_DIMS]; /* (nd), outer first */
    for (int i = 0; i < nb; i++) {
        if (bshape[i] == 1) continue;
        if (nd > 0 && sa[nd - 1] == astr[i] * bshape[i] && sb[nd - 1] == bstr[i] * bshape[i] &&
            sc[nd - 1] == cstr[i] * bshape[i]) {
            sz[nd - 1] *= bshape[i];
            sa[nd - 1] = astr[i], sb[nd - 1] = bstr[i], sc[nd - 1] = cstr[i];
        } else {
            sz[nd] = bshape[i], sa[nd] = astr[i], sb[nd] = bstr[i], sc[nd] = cstr[i];
            nd++;
        }
    }
    tn_status s = handle_ready(&g.h);
    if (s != TN_OK) return with_context(s, op, a, b, trans_a, trans_b);
    if (nd == 0) {
        s = la_call(&g, es, a->data, 0, b->data, 0, c->data, 0, (int)n, 1);
        return s == TN_OK ? s : with_context(s, op, a, b, trans_a, trans_b);
    }
    /* the innermost dim is one strided-batched call; the outer ones loop on the host */
    const int64_t inner = sz[nd - 1];
    int64_t outer = 1;
    for (int i = 0; i < nd - 1; i++) outer *= sz[i];
    for (int64_t o = 0; o < outer; o++) {
        int64_t rem = o, ao = 0, bo = 0, co = 0;
        for (int d = nd - 2; d >= 0; d--) {
            const int64_t i = rem % sz[d];
            rem /= sz[d];
            ao += i * sa[d], bo += i * sb[d], co += i * sc[d];
        }
        s = la_call(&g, es, a->data + (size_t)ao * es, sa[nd - 1], b->data + (size_t)bo * es, sb[nd - 1],
                    c->data + (size_t)co * es, sc[nd - 1], (int)n, inner);
        if (s != TN_OK) return with_context(s, op, a, b, trans_a, trans_b);
    }
    return TN_OK;
}

/* c (batch..., n, m) = alpha * op(a) op(b) + beta * c on the current device and stream; the
 * contract is that of core/linalg.c's declaration. */
extern "C" tn_status tn_cuda_matmul(const char *op, tn_tensor *c, const tn_tensor *a, const tn_tensor *b,
                                    int32_t trans_a, int32_t trans_b, int32_t nb, const int64_t *bshape, int64_t n,
                                    int64_t k, int64_t m, int64_t ldc, double alpha, double beta) {
    if (!c || !a || !b) return tn_error(TN_ERR_ARG, "%s: internal error: NULL operand", op);
    pthread_rwlock_rdlock(&ws_use);
    const tn_status s = matmul_impl(op, c, a, b, trans_a, trans_b, nb, bshape, n, k, m, ldc, alpha, beta);
    pthread_rwlock_unlock(&ws_use);
    return s;
}
