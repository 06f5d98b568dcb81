/*
 * linalg.c — matrix products on the CPU through CBLAS (OpenBLAS): tn_matmul, tn_bmm, tn_gemm.
 * Built with -DTERN_HAVE_OPENBLAS=1 (CMake's TERN_BLAS=ON, link -lopenblas); without it a
 * plain C gemm stands in (TERN_BLAS=OFF).
 *
 * Gradient policy: forward only. The backward of a product is two products composed by the
 * caller (autograd.lua: dA = dC B^T, dB = A^T dC, each reduced over broadcast batch dims).
 *
 * Layout: every operand is described as a batch of (rows, cols) matrices with a row stride
 * and a column stride in elements. An operand whose matrices are row-major (column stride 1,
 * row stride >= cols) goes to BLAS as NoTrans with ld = row stride; a transposed view (row
 * stride 1, column stride >= rows) goes as Trans with ld = column stride; neither layout is
 * copied. Anything else is made contiguous first. f16/bf16 operands are converted to f32
 * temporaries, multiplied with sgemm and rounded back into the output.
 *
 * Batches: when b has no batch of its own and a's batch folds into its rows, the whole product
 * is one gemm with a's batch folded into M. Otherwise one BLAS call per batch element; the
 * batch loop runs on OpenMP threads only when each product is small (then OpenBLAS runs it on
 * the calling thread); large products are left to OpenBLAS's own threads.
 *
 * CUDA tensors (builds with TERN_HAVE_CUDA): the same checks, output and operand preparation
 * (copies of operands that share storage with out, contiguous copies of layouts BLAS cannot
 * take), without the f32 conversion of f16/bf16 (cuBLAS takes them with f32 accumulation);
 * then cuda/linalg.cu (tn_cuda_matmul) runs the products on cuBLAS.
 */
#include <limits.h>
#include <stdlib.h>

#include "internal.h"

#ifdef TERN_HAVE_CUDA
/* cuda/linalg.cu: c (batch..., n, m) = alpha * op(a) (batch..., n, k) op(b) (batch..., k, m)
 * + beta * c on cuBLAS, on the current device and stream (asynchronous). All three on CUDA,
 * one float dtype; a's and b's matrices are their last two dims (swapped when trans_a /
 * trans_b; a 1-D a is a row (1, k), a 1-D b a column (k, 1)) with a layout mm_classify takes,
 * their batch dims right-aligned in bshape (nb dims, broadcast where size 1 or missing);
 * neither shares memory with c. c's matrices are row-major with row stride ldc >= max(m, 1),
 * batch after batch at n * ldc elements. beta 0: c is not read. */
tn_status tn_cuda_matmul(const char *op, tn_tensor *c, const tn_tensor *a, const tn_tensor *b, int32_t trans_a,
                         int32_t trans_b, int32_t nb, const int64_t *bshape, int64_t n, int64_t k, int64_t m,
                         int64_t ldc, double alpha, double beta);
#endif

#ifdef TERN_HAVE_OPENBLAS /* defined by CMakeLists.txt when TERN_BLAS=ON */
#include <cblas.h>
#else
/* TERN_BLAS=OFF: a plain C stand-in for the few CBLAS calls used below (row-major only,
 * rows of C on OpenMP threads). Correct but far slower than OpenBLAS. */
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };

static void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M,
                        int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                        float beta, float *C, int ldc) {
    (void)order;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)M * N * K > 65536.0)
#endif
    for (int i = 0; i < M; i++) {
        float *c = C + (int64_t)i * ldc; /* (N) */
        for (int j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        for (int p = 0; p < K; p++) {
            const float av = alpha * (ta == CblasNoTrans ? A[(int64_t)i * lda + p] : A[(int64_t)p * lda + i]);
            if (tb == CblasNoTrans) { const float *b = B + (int64_t)p * ldb; for (int j = 0; j < N; j++) c[j] += av * b[j]; }
            else for (int j = 0; j < N; j++) c[j] += av * B[(int64_t)j * ldb + p];
        }
    }
}
static void cblas_dgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M,
                        int N, int K, double alpha, const double *A, int lda, const double *B, int ldb,
                        double beta, double *C, int ldc) {
    (void)order;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if ((double)M * N * K > 65536.0)
#endif
    for (int i = 0; i < M; i++) {
        double *c = C + (int64_t)i * ldc; /* (N) */
        for (int j = 0; j < N; j++) c[j] = beta == 0.0 ? 0.0 : beta * c[j];
        for (int p = 0; p < K; p++) {
            const double av = alpha * (ta == CblasNoTrans ? A[(int64_t)i * lda + p] : A[(int64_t)p * lda + i]);
            if (tb == CblasNoTrans) { const double *b = B + (int64_t)p * ldb; for (int j = 0; j < N; j++) c[j] += av * b[j]; }
            else for (int j = 0; j < N; j++) c[j] += av * B[(int64_t)j * ldb + p];
        }
    }
}
/* y (rows of op(A)) = alpha op(A) x + beta y, A stored (M, N) row-major */
static void cblas_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int M, int N, float alpha,
                        const float *A, int lda, const float *x, int incx, float beta, float *y, int incy) {
    (void)order;
    const int ny = ta == CblasNoTrans ? M : N, nx = ta == CblasNoTrans ? N : M;
    for (int i = 0; i < ny; i++) {
        float s = 0.0f;
        for (int p = 0; p < nx; p++)
            s += (ta == CblasNoTrans ? A[(int64_t)i * lda + p] : A[(int64_t)p * lda + i]) * x[(int64_t)p * incx];
        float *yi = y + (int64_t)i * incy;
        *yi = alpha * s + (beta == 0.0f ? 0.0f : beta * *yi);
    }
}
static void cblas_dgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int M, int N, double alpha,
                        const double *A, int lda, const double *x, int incx, double beta, double *y, int incy) {
    (void)order;
    const int ny = ta == CblasNoTrans ? M : N, nx = ta == CblasNoTrans ? N : M;
    for (int i = 0; i < ny; i++) {
        double s = 0.0;
        for (int p = 0; p < nx; p++)
            s += (ta == CblasNoTrans ? A[(int64_t)i * lda + p] : A[(int64_t)p * lda + i]) * x[(int64_t)p * incx];
        double *yi = y + (int64_t)i * incy;
        *yi = alpha * s + (beta == 0.0 ? 0.0 : beta * *yi);
    }
}
static float cblas_sdot(int n, const float *x, int incx, const float *y, int incy) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += x[(int64_t)i * incx] * y[(int64_t)i * incy];
    return s;
}
static double cblas_ddot(int n, const double *x, int incx, const double *y, int incy) {
    double s = 0.0;
    for (int i = 0; i < n; i++) s += x[(int64_t)i * incx] * y[(int64_t)i * incy];
    return s;
}
#endif

/* OpenBLAS runs a gemm on one thread below m*n*k = 65536 * GEMM_MULTITHREAD_THRESHOLD (4);
 * below that size the batch loop is worth parallelising instead. */
#define TN_MM_SMALL_WORK 262144.0

/* One batched product: C (batch..., n, m) = alpha * A (batch..., n, k) B (batch..., k, m)
 * + beta * C. Batch strides are 0 where an operand is broadcast. C's column stride is 1. */
typedef struct mm_plan {
    int32_t dtype;                  /* TN_F32 or TN_F64 */
    int32_t nb;                     /* batch dims of the output */
    int64_t bshape[TN_MAX_DIMS];    /* (nb) output batch shape */
    int64_t astr[TN_MAX_DIMS];      /* (nb) a's batch strides, 0 = broadcast */
    int64_t bstr[TN_MAX_DIMS];      /* (nb) b's batch strides, 0 = broadcast */
    int64_t cstr[TN_MAX_DIMS];      /* (nb) c's batch strides */
    char *a, *b, *c;                /* first elements */
    int64_t n, k, m;
    int64_t ars, acs;               /* a's matrix strides, (n, k) */
    int64_t brs, bcs;               /* b's matrix strides, (k, m) */
    int64_t crs;                    /* c's row stride, (n, m); column stride 1 */
    double alpha, beta;
} mm_plan;

/* BLAS layout of a (rows, cols) matrix with strides (rs, cs) (tn_matrix_layout); 0 when neither
 * NoTrans (row-major) nor Trans (column-major) describes it. */
static int mm_classify(int64_t rows, int64_t cols, int64_t rs, int64_t cs,
                       enum CBLAS_TRANSPOSE *tr, int64_t *ld) {
    int t = 0;
    const int ok = tn_matrix_layout(rows, cols, rs, cs, &t, ld);
    *tr = t ? CblasTrans : CblasNoTrans;
    return ok;
}

/* The BLAS call for one matrix product with resolved layouts. c has n rows (row stride crs). */
typedef struct mm_layout {
    enum CBLAS_TRANSPOSE ta, tb;
    int64_t lda, ldb;
} mm_layout;

static void mm_one(const mm_plan *p, const mm_layout *L, const char *a, const char *b, char *c,
                   int64_t n) {
    const int64_t m = p->m, k = p->k;
    if (n == 0 || m == 0) return;
    if (k == 0) { /* C = beta * C */
        for (int64_t i = 0; i < n; i++) {
            char *row = c + i * p->crs * (int64_t)(p->dtype == TN_F64 ? 8 : 4);
            if (p->beta == 0.0) {
                memset(row, 0, (size_t)m * (p->dtype == TN_F64 ? 8 : 4));
            } else if (p->dtype == TN_F64) {
                for (int64_t j = 0; j < m; j++) ((double *)row)[j] *= p->beta;
            } else {
                for (int64_t j = 0; j < m; j++) ((float *)row)[j] *= (float)p->beta;
            }
        }
        return;
    }
    /* gemv/dot for vector shapes: strides of vectors are their BLAS increments (>= 1). */
    const int64_t inca = n == 1 ? (k == 1 ? 1 : p->acs) : 0;  /* a as a row vector (1, k) */
    const int64_t incb = m == 1 ? (k == 1 ? 1 : p->brs) : 0;  /* b as a column vector (k, 1) */
    const int64_t incc = n == 1 ? 1 : p->crs;                 /* c as a column (n, 1) */
    if (p->dtype == TN_F64) {
        const double *A = (const double *)a, *B = (const double *)b;
        double *C = (double *)c;
        if (n == 1 && m == 1) {
            double d = cblas_ddot((int)k, A, (int)inca, B, (int)incb);
            C[0] = p->alpha * d + (p->beta == 0.0 ? 0.0 : p->beta * C[0]);
        } else if (m == 1) { /* c (n) = op(A) (n, k) b (k) */
            if (p->beta == 0.0) for (int64_t i = 0; i < n; i++) C[i * incc] = 0.0;
            if (L->ta == CblasNoTrans)
                cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)k, p->alpha, A, (int)L->lda,
                            B, (int)incb, p->beta, C, (int)incc);
            else
                cblas_dgemv(CblasRowMajor, CblasTrans, (int)k, (int)n, p->alpha, A, (int)L->lda,
                            B, (int)incb, p->beta, C, (int)incc);
        } else if (n == 1) { /* c (m) = op(B)^T (m, k) a (k) */
            if (p->beta == 0.0) memset(C, 0, (size_t)m * sizeof(double));
            if (L->tb == CblasNoTrans)
                cblas_dgemv(CblasRowMajor, CblasTrans, (int)k, (int)m, p->alpha, B, (int)L->ldb,
                            A, (int)inca, p->beta, C, 1);
            else
                cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)m, (int)k, p->alpha, B, (int)L->ldb,
                            A, (int)inca, p->beta, C, 1);
        } else {
            cblas_dgemm(CblasRowMajor, L->ta, L->tb, (int)n, (int)m, (int)k, p->alpha, A,
                        (int)L->lda, B, (int)L->ldb, p->beta, C, (int)p->crs);
        }
    } else {
        const float *A = (const float *)a, *B = (const float *)b;
        float *C = (float *)c;
        const float alpha = (float)p->alpha, beta = (float)p->beta;
        if (n == 1 && m == 1) {
            float d = cblas_sdot((int)k, A, (int)inca, B, (int)incb);
            C[0] = alpha * d + (beta == 0.0f ? 0.0f : beta * C[0]);
        } else if (m == 1) {
            if (beta == 0.0f) for (int64_t i = 0; i < n; i++) C[i * incc] = 0.0f;
            if (L->ta == CblasNoTrans)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)n, (int)k, alpha, A, (int)L->lda,
                            B, (int)incb, beta, C, (int)incc);
            else
                cblas_sgemv(CblasRowMajor, CblasTrans, (int)k, (int)n, alpha, A, (int)L->lda,
                            B, (int)incb, beta, C, (int)incc);
        } else if (n == 1) {
            if (beta == 0.0f) memset(C, 0, (size_t)m * sizeof(float));
            if (L->tb == CblasNoTrans)
                cblas_sgemv(CblasRowMajor, CblasTrans, (int)k, (int)m, alpha, B, (int)L->ldb,
                            A, (int)inca, beta, C, 1);
            else
                cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)m, (int)k, alpha, B, (int)L->ldb,
                            A, (int)inca, beta, C, 1);
        } else {
            cblas_sgemm(CblasRowMajor, L->ta, L->tb, (int)n, (int)m, (int)k, alpha, A,
                        (int)L->lda, B, (int)L->ldb, beta, C, (int)p->crs);
        }
    }
}

static int mm_fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* Runs a plan whose operands already have BLAS layouts (mm_classify succeeds on a and b). */
static tn_status mm_run(const char *opname, const mm_plan *p) {
    mm_layout L;
    if (!mm_classify(p->n, p->k, p->ars, p->acs, &L.ta, &L.lda) ||
        !mm_classify(p->k, p->m, p->brs, p->bcs, &L.tb, &L.ldb))
        return tn_error(TN_ERR_ARG, "%s: internal error: operand layout not BLAS-compatible", opname);
    int64_t nbatch = 1;
    for (int i = 0; i < p->nb; i++) nbatch *= p->bshape[i];
    if (nbatch == 0 || p->n == 0 || p->m == 0) return TN_OK;

    /* One gemm when b is shared by the whole batch and a's batch folds into its rows. */
    int b_batched = 0;
    for (int i = 0; i < p->nb; i++) b_batched |= p->bshape[i] > 1 && p->bstr[i] != 0;
    if (nbatch > 1 && !b_batched && L.ta == CblasNoTrans) {
        int64_t size[TN_MAX_DIMS + 1], astride[TN_MAX_DIMS + 1], cstride[TN_MAX_DIMS + 1];
        for (int i = 0; i < p->nb; i++) { size[i] = p->bshape[i]; astride[i] = p->astr[i]; cstride[i] = p->cstr[i]; }
        size[p->nb] = p->n; astride[p->nb] = p->ars; cstride[p->nb] = p->crs;
        int64_t ars = p->ars, crs = p->crs, rows = nbatch * p->n;
        enum CBLAS_TRANSPOSE ta;
        int64_t lda;
        if (tn_dims_collapse(p->nb + 1, size, astride, &ars) && tn_dims_collapse(p->nb + 1, size, cstride, &crs) &&
            mm_classify(rows, p->k, ars, p->acs, &ta, &lda) && ta == CblasNoTrans && crs >= p->m &&
            mm_fits_int(rows) && mm_fits_int(lda) && mm_fits_int(crs)) {
            mm_plan q = *p;
            q.ars = ars;
            q.crs = crs;
            mm_layout L2 = L;
            L2.lda = lda;
            mm_one(&q, &L2, p->a, p->b, p->c, rows);
            return TN_OK;
        }
    }

    if (!mm_fits_int(p->n) || !mm_fits_int(p->m) || !mm_fits_int(p->k) || !mm_fits_int(L.lda) ||
        !mm_fits_int(L.ldb) || !mm_fits_int(p->crs) || !mm_fits_int(p->acs) || !mm_fits_int(p->brs))
        return tn_error(TN_ERR_UNSUPPORTED, "%s: sizes [%lld, %lld] x [%lld, %lld] exceed the BLAS int range",
                        opname, (long long)p->n, (long long)p->k, (long long)p->k, (long long)p->m);

    const int64_t es = p->dtype == TN_F64 ? 8 : 4;
    /* threads over the batch only when each product is small (BLAS would not thread it) and
     * the whole batch is worth a parallel region (~64K multiply-adds at least) */
    const double work = (double)p->n * (double)p->m * (double)p->k;
    const int parallel = nbatch > 1 && work < TN_MM_SMALL_WORK && work * (double)nbatch >= 65536.0;
    (void)parallel; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (parallel)
#endif
    for (int64_t bi = 0; bi < nbatch; bi++) {
        int64_t rem = bi, ao = 0, bo = 0, co = 0;
        for (int d = p->nb - 1; d >= 0; d--) {
            int64_t i = rem % p->bshape[d];
            rem /= p->bshape[d];
            ao += i * p->astr[d];
            bo += i * p->bstr[d];
            co += i * p->cstr[d];
        }
        mm_one(p, &L, p->a + ao * es, p->b + bo * es, p->c + co * es, p->n);
    }
    return TN_OK;
}

/* Fills the matrix part of an operand from the last dims of t (vec: 1-D operand, as a row
 * (1, k) for a and a column (k, 1) for b) and its batch strides right-aligned in p's batch. */
static void mm_describe(const tn_tensor *t, int is_b, int nb, int64_t *bstr, char **data,
                        int64_t *rs, int64_t *cs) {
    const int nd = t->ndim;
    *data = t->data;
    if (nd == 1) {
        if (is_b) { *rs = t->strides[0]; *cs = 1; }
        else { *rs = t->shape[0]; *cs = t->strides[0]; }
    } else {
        *rs = t->strides[nd - 2];
        *cs = t->strides[nd - 1];
    }
    const int tb = nd > 2 ? nd - 2 : 0;
    for (int i = 0; i < nb; i++) {
        int j = i - (nb - tb);
        bstr[i] = (j >= 0 && t->shape[j] != 1) ? t->strides[j] : 0;
    }
}

/* A new tensor holding a copy of t (contiguous), for operands that share memory with out. */
static tn_status mm_clone(tn_tensor **out, const tn_tensor *t) {
    TN_TRY(tn_tensor_empty(out, t->ndim, t->shape, t->dtype, t->device));
    tn_status s = tn_copy(*out, t);
    if (s != TN_OK) { tn_tensor_free(*out); *out = NULL; }
    return s;
}

/* *hold = t in a form BLAS takes: converted to work dtype, copied when it shares storage with
 * out, made contiguous when its (rows, cols) layout is neither row- nor column-major. The
 * trans flag swaps the last two dims of the view tested (tn_gemm's op()). */
static tn_status mm_operand(tn_tensor **hold, const tn_tensor *t, int32_t work_dtype, int is_b,
                            int trans, const tn_tensor *out) {
    if (t->dtype != work_dtype) return tn_to_dtype(hold, t, work_dtype);
    if (out && out->storage == t->storage) return mm_clone(hold, t);
    int64_t rows, cols, rs, cs;
    const int nd = t->ndim;
    if (nd == 1) {
        rows = is_b ? t->shape[0] : 1; cols = is_b ? 1 : t->shape[0];
        rs = is_b ? t->strides[0] : t->shape[0]; cs = is_b ? 1 : t->strides[0];
    } else {
        rows = t->shape[nd - 2]; cols = t->shape[nd - 1];
        rs = t->strides[nd - 2]; cs = t->strides[nd - 1];
    }
    if (trans) { int64_t x = rows; rows = cols; cols = x; x = rs; rs = cs; cs = x; }
    enum CBLAS_TRANSPOSE tr;
    int64_t ld;
    if (mm_classify(rows, cols, rs, cs, &tr, &ld)) { *hold = tn_tensor_retain((tn_tensor *)t); return TN_OK; }
    return tn_contiguous(hold, t);
}

static tn_status mm_check_pair(const char *opname, const tn_tensor *a, const tn_tensor *b) {
    TN_TRY(tn_check_tensor(opname, "a", a));
    TN_TRY(tn_check_tensor(opname, "b", b));
    TN_TRY(tn_check_same_device(opname, a, b));
    TN_TRY(tn_check_backend(opname, a));
    if (a->dtype != b->dtype)
        return tn_error(TN_ERR_DTYPE, "%s: dtypes differ: a %s %s, b %s %s", opname, TN_SHAPE(a),
                        tn_dtype_name(a->dtype), TN_SHAPE(b), tn_dtype_name(b->dtype));
    if (!tn_is_float_dtype(a->dtype))
        return tn_error(TN_ERR_DTYPE, "%s: %s is not supported (a %s, b %s); use a float dtype",
                        opname, tn_dtype_name(a->dtype), TN_SHAPE(a), TN_SHAPE(b));
    return TN_OK;
}

/* Shared body of matmul and bmm once out's shape is known: a, b already checked. */
static tn_status mm_product(const char *opname, tn_tensor *out, const tn_tensor *a, const tn_tensor *b,
                            int nb, const int64_t *bshape, int64_t n, int64_t k, int64_t m) {
    const int32_t dtype = a->dtype;
    const int cuda = out->device == TN_CUDA; /* cuBLAS takes every float dtype as it is */
    const int32_t work = cuda ? dtype : dtype == TN_F64 ? TN_F64 : TN_F32;
    tn_tensor *ha = NULL, *hb = NULL, *hc = NULL;
    tn_status s = mm_operand(&ha, a, work, 0, 0, out);
    if (s == TN_OK) s = mm_operand(&hb, b, work, 1, 0, out);
    if (s == TN_OK) {
        if (out->dtype == work && tn_tensor_is_contiguous(out)) hc = tn_tensor_retain(out);
        else s = tn_tensor_empty(&hc, out->ndim, out->shape, work, out->device); /* (out shape) */
    }
#ifdef TERN_HAVE_CUDA
    if (s == TN_OK && cuda) {
        /* hc is contiguous (batch..., n, m) with 1-D dims removed: row stride m */
        s = tn_cuda_matmul(opname, hc, ha, hb, 0, 0, nb, bshape, n, k, m, m > 1 ? m : 1, 1.0, 0.0);
        if (s == TN_OK && hc != out) s = tn_copy(out, hc);
    } else
#endif
    if (s == TN_OK) {
        mm_plan p;
        memset(&p, 0, sizeof p);
        p.dtype = work;
        p.nb = nb;
        for (int i = 0; i < nb; i++) p.bshape[i] = bshape[i];
        p.n = n; p.k = k; p.m = m;
        p.alpha = 1.0; p.beta = 0.0;
        mm_describe(ha, 0, nb, p.astr, &p.a, &p.ars, &p.acs);
        mm_describe(hb, 1, nb, p.bstr, &p.b, &p.brs, &p.bcs);
        /* hc is contiguous with out's shape = (batch..., n, m) with 1-D dims removed */
        p.c = hc->data;
        p.crs = m;
        int64_t st = n * m;
        for (int i = nb - 1; i >= 0; i--) { p.cstr[i] = st; st *= bshape[i]; }
        s = mm_run(opname, &p);
        if (s == TN_OK && hc != out) s = tn_copy(out, hc);
    }
    tn_tensor_free(ha);
    tn_tensor_free(hb);
    tn_tensor_free(hc);
    return s;
}

tn_status tn_matmul(tn_tensor **out, const tn_tensor *a, const tn_tensor *b) {
    static const char *op = "matmul";
    if (!out) return tn_error(TN_ERR_ARG, "matmul: out is NULL");
    TN_TRY(mm_check_pair(op, a, b));
    if (a->ndim == 0 || b->ndim == 0)
        return tn_error(TN_ERR_SHAPE, "matmul: both arguments need at least 1 dimension, got %s and %s, %s",
                        TN_SHAPE(a), TN_SHAPE(b), tn_dtype_name(a->dtype));
    const int na = a->ndim, nbd = b->ndim;
    const int64_t n = na == 1 ? 1 : a->shape[na - 2];
    const int64_t k = a->shape[na - 1];
    const int64_t kb = nbd == 1 ? b->shape[0] : b->shape[nbd - 2];
    const int64_t m = nbd == 1 ? 1 : b->shape[nbd - 1];
    if (k != kb)
        return tn_error(TN_ERR_SHAPE, "matmul: shapes %s and %s cannot be multiplied (%lld != %lld), %s",
                        TN_SHAPE(a), TN_SHAPE(b), (long long)k, (long long)kb, tn_dtype_name(a->dtype));
    /* Batch dims broadcast right-aligned, like torch.matmul. */
    const int ba = na > 2 ? na - 2 : 0, bb = nbd > 2 ? nbd - 2 : 0;
    const int nb = ba > bb ? ba : bb;
    int64_t bshape[TN_MAX_DIMS]; /* (nb) */
    for (int i = 0; i < nb; i++) {
        int ia = i - (nb - ba), ib = i - (nb - bb);
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        if (sa != sb && sa != 1 && sb != 1)
            return tn_error(TN_ERR_SHAPE,
                            "matmul: batch dims of %s and %s are not broadcastable (%lld vs %lld at batch dim %lld), %s",
                            TN_SHAPE(a), TN_SHAPE(b), (long long)sa, (long long)sb, TN_D(i), tn_dtype_name(a->dtype));
        bshape[i] = sa == 1 ? sb : sa;
    }
    int32_t ond = 0;
    int64_t oshape[TN_MAX_DIMS]; /* (ond) batch..., n if a is not 1-D, m if b is not 1-D */
    for (int i = 0; i < nb; i++) oshape[ond++] = bshape[i];
    if (na > 1) oshape[ond++] = n;
    if (nbd > 1) oshape[ond++] = m;
    const int allocated = *out == NULL;
    TN_TRY(tn_prepare_out(op, out, ond, oshape, a->dtype, a->device));
    tn_status s = mm_product(op, *out, a, b, nb, bshape, n, k, m);
    if (s != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
    return s;
}

tn_status tn_bmm(tn_tensor **out, const tn_tensor *a, const tn_tensor *b) {
    static const char *op = "bmm";
    if (!out) return tn_error(TN_ERR_ARG, "bmm: out is NULL");
    TN_TRY(mm_check_pair(op, a, b));
    if (a->ndim != 3 || b->ndim != 3)
        return tn_error(TN_ERR_SHAPE, "bmm: expected 3-D tensors, got %s and %s, %s", TN_SHAPE(a),
                        TN_SHAPE(b), tn_dtype_name(a->dtype));
    if (a->shape[0] != b->shape[0] || a->shape[2] != b->shape[1])
        return tn_error(TN_ERR_SHAPE, "bmm: shapes %s and %s cannot be multiplied (%s), %s", TN_SHAPE(a),
                        TN_SHAPE(b), a->shape[0] != b->shape[0] ? "batch sizes differ" : "inner sizes differ",
                        tn_dtype_name(a->dtype));
    const int64_t oshape[3] = {a->shape[0], a->shape[1], b->shape[2]}; /* (B, n, m) */
    const int allocated = *out == NULL;
    TN_TRY(tn_prepare_out(op, out, 3, oshape, a->dtype, a->device));
    tn_status s = mm_product(op, *out, a, b, 1, oshape, a->shape[1], a->shape[2], b->shape[2]);
    if (s != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
    return s;
}

tn_status tn_gemm(tn_tensor *out, const tn_tensor *a, const tn_tensor *b, int32_t trans_a,
                  int32_t trans_b, double alpha, double beta) {
    static const char *op = "gemm";
    TN_TRY(tn_check_tensor(op, "out", out));
    TN_TRY(mm_check_pair(op, a, b));
    TN_TRY(tn_check_same_device(op, out, a));
    if (out->dtype != a->dtype)
        return tn_error(TN_ERR_DTYPE, "gemm: out is %s %s but a and b are %s", TN_SHAPE(out),
                        tn_dtype_name(out->dtype), tn_dtype_name(a->dtype));
    if (a->ndim != 2 || b->ndim != 2 || out->ndim != 2)
        return tn_error(TN_ERR_SHAPE, "gemm: expected 2-D tensors, got out %s, a %s, b %s, %s", TN_SHAPE(out),
                        TN_SHAPE(a), TN_SHAPE(b), tn_dtype_name(a->dtype));
    const int64_t n = trans_a ? a->shape[1] : a->shape[0], k = trans_a ? a->shape[0] : a->shape[1];
    const int64_t kb = trans_b ? b->shape[1] : b->shape[0], m = trans_b ? b->shape[0] : b->shape[1];
    if (k != kb || out->shape[0] != n || out->shape[1] != m)
        return tn_error(TN_ERR_SHAPE,
                        "gemm: shapes out %s, a %s%s, b %s%s do not fit (op(a) [%lld, %lld], op(b) [%lld, %lld]), %s",
                        TN_SHAPE(out), TN_SHAPE(a), trans_a ? "^T" : "", TN_SHAPE(b), trans_b ? "^T" : "",
                        (long long)n, (long long)k, (long long)kb, (long long)m, tn_dtype_name(a->dtype));
    /* out's rows must be row-major (contiguous, or rows padded: column stride 1) */
    if ((m > 1 && out->strides[1] != 1) || (n > 1 && out->strides[0] < (m > 1 ? m : 1)))
        return tn_error(TN_ERR_ARG, "gemm: out %s must be contiguous (strides [%lld, %lld]), %s", TN_SHAPE(out),
                        (long long)out->strides[0], (long long)out->strides[1], tn_dtype_name(out->dtype));

    const int cuda = out->device == TN_CUDA; /* cuBLAS takes every float dtype as it is */
    const int32_t work = cuda ? a->dtype : a->dtype == TN_F64 ? TN_F64 : TN_F32;
    tn_tensor *ha = NULL, *hb = NULL, *hc = NULL;
    tn_status s = mm_operand(&ha, a, work, 0, trans_a, out);
    if (s == TN_OK) s = mm_operand(&hb, b, work, 1, trans_b, out);
    if (s == TN_OK) {
        if (out->dtype == work) hc = tn_tensor_retain(out);
        else if (beta != 0.0) s = tn_to_dtype(&hc, out, work);  /* (n, m) f32 */
        else s = tn_tensor_empty(&hc, 2, out->shape, work, out->device);
    }
#ifdef TERN_HAVE_CUDA
    if (s == TN_OK && cuda) {
        /* hc is out: column stride 1, row stride checked above (free for a single row) */
        const int64_t ldc = n > 1 ? hc->strides[0] : (m > 1 ? m : 1);
        s = tn_cuda_matmul(op, hc, ha, hb, trans_a, trans_b, 0, NULL, n, k, m, ldc, alpha, beta);
    } else
#endif
    if (s == TN_OK && !(n == 0 || m == 0)) {
        mm_plan p;
        memset(&p, 0, sizeof p);
        p.dtype = work;
        p.n = n; p.k = k; p.m = m;
        p.alpha = alpha; p.beta = beta;
        p.a = ha->data; p.b = hb->data; p.c = hc->data;
        p.ars = ha->strides[trans_a ? 1 : 0]; p.acs = ha->strides[trans_a ? 0 : 1];
        p.brs = hb->strides[trans_b ? 1 : 0]; p.bcs = hb->strides[trans_b ? 0 : 1];
        p.crs = n > 1 ? hc->strides[0] : (m > 1 ? m : 1); /* row stride of a single row is free */
        s = mm_run(op, &p);
        if (s == TN_OK && hc != out) s = tn_copy(out, hc);
    }
    tn_tensor_free(ha);
    tn_tensor_free(hb);
    tn_tensor_free(hc);
    return s;
}
