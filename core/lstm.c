/*
 * lstm.c — tn_lstm_forward and tn_lstm_backward: one direction of one layer of PyTorch's
 * nn.LSTM over a whole sequence on the CPU (gates i, f, g, o; optional projection
 * h = W_hr (o tanh c); per-sequence lengths with packed-sequence semantics).
 *
 * Devices: every tensor must be on xproj's (grad_xproj's) device, except lengths, which may
 * also be on the CPU (the cheap way on a GPU: read on the host, uploaded without a wait).
 * CUDA tensors (builds with TERN_HAVE_CUDA) go, after the checks below, to cuda/lstm.cu, which
 * runs the same algorithm with cuBLAS GEMMs; a CPU-only build refuses them.
 *
 * Gradient policy: activation gradients (grad_xproj, grad_h0, grad_c0) are written (=);
 * parameter gradients (grad_w_hh, grad_w_hr) accumulate (+=).
 *
 * Shapes: L steps, B batch, H hidden units, P = proj_size or H, G = 4H.
 *
 * Forward, for each step t (t = 0..L-1, or L-1..0 when reverse):
 *   gates[t] = h W_hh^T                   one GEMM (B, P) x (P, G) (beta 1 onto xproj when gates is xproj)
 *   pointwise (kernels/lstm.h)            + xproj[t], activations in place, c, o tanh(c)
 *   out[t] = hraw[t] W_hr^T               one GEMM (B, H) x (H, P), only with a projection
 * h_n and c_n are the running state (initialised from h0, c0), so no other scratch is needed.
 * With lengths, a row b at a step t >= lengths[b] is padding: its state is carried (h_n, c_n
 * keep it, cells[t] stores the carried cell state), out[t], hraw[t] and gates[t] get zeros.
 * Walking t = L-1..0 with that rule gives PyTorch's reverse direction of a packed sequence:
 * row b meets its padding first (state stays h0, c0), then visits t = lengths[b]-1 .. 0.
 * So the state before a valid step t of row b is out[t-1] / cells[t-1] (forward; h0, c0 at
 * t = 0) or out[t+1] / cells[t+1] (reverse; h0 and the carried c0 at t = lengths[b]-1).
 *
 * Backward walks the steps in the opposite order, carrying dh (B, P) and dc (B, H), kept in
 * grad_h0 / grad_c0 when given:
 *   dht = dh + grad_out[t]                      (valid rows; padding passes dh, dc unchanged)
 *   dhraw = dht W_hr                            one GEMM, with a projection
 *   pointwise: grad_xproj[t] = d gates, dc = d c_prev   (padding rows: zeros, dc unchanged)
 *   dh = (padding ? dh : 0) + grad_xproj[t] W_hh        one GEMM (B, G) x (G, P), beta 1
 * and after the loop, each parameter gradient is one GEMM over all steps:
 *   grad_w_hh += sum_t grad_xproj[t]^T h_prev[t]: h_prev[t] is out[t-1] (out[t+1] when
 *     reverse) except at the first step of each sequence, so it is a GEMM of grad_xproj and
 *     out shifted by one step, (G, (L-1) B) x ((L-1) B, P), without gathering; a padded
 *     row contributes 0 (its gradient is 0, and out is 0 where reverse pairs a first step
 *     with padding), plus a (G, B) x (B, P) GEMM for the h0 rows when h0 is given.
 *   grad_w_hr += sum_t dht[t]^T hraw[t]         ((P, L B) x (L B, H); dht saved per step)
 *
 * Aliasing: gates may be xproj itself (the projection is overwritten by the gates), h_n may be
 * h0 and c_n may be c0; grad_h0 may be grad_h_n and grad_c0 may be grad_c_n. No other outputs
 * may share memory with inputs or with each other.
 *
 * BLAS: CBLAS (OpenBLAS, which threads each GEMM itself) when TERN_HAVE_OPENBLAS, else a plain
 * C stand-in. The pointwise passes split B x H in chunks over OpenMP threads above
 * LSTM_PAR_MIN units, except with a pthreads OpenBLAS (see lstm_threads); their f32 kernels
 * have an AVX2+FMA build picked at run time.
 */
#include <limits.h>
#include <stdlib.h>
#include <strings.h> /* strcasecmp */

#include "internal.h"
#include "iter.h"
#include "kernels/lstm.h"

#ifdef TERN_HAVE_OPENBLAS /* defined by CMakeLists.txt when TERN_BLAS=ON */
#include <cblas.h>
#endif

#ifdef TERN_HAVE_CUDA
/* cuda/lstm.cu: the same calls on CUDA tensors, after the checks below; len is the host array
 * of lstm_lengths (or NULL), uploaded by the callee. Queued on the current stream; no host
 * synchronisation. */
tn_status tn_cuda_lstm_forward(tn_tensor *out, tn_tensor *h_n, tn_tensor *c_n, tn_tensor *gates, tn_tensor *cells,
                               tn_tensor *hraw, const tn_tensor *xproj, const tn_tensor *w_hh, const tn_tensor *w_hr,
                               const tn_tensor *h0, const tn_tensor *c0, const int64_t *len, int32_t reverse);
tn_status tn_cuda_lstm_backward(tn_tensor *grad_xproj, tn_tensor *grad_w_hh, tn_tensor *grad_w_hr, tn_tensor *grad_h0,
                                tn_tensor *grad_c0, const tn_tensor *grad_out, const tn_tensor *grad_h_n,
                                const tn_tensor *grad_c_n, const tn_tensor *out, const tn_tensor *gates,
                                const tn_tensor *cells, const tn_tensor *hraw, const tn_tensor *w_hh,
                                const tn_tensor *w_hr, const tn_tensor *h0, const tn_tensor *c0, const int64_t *len,
                                int32_t reverse);
#endif

/* Pointwise work (B x H units of a step) from which threads are used; a unit costs ~5
 * exponentials, so this is lower than the plain elementwise TN_PAR_MIN. */
#define LSTM_PAR_MIN ((int64_t)4096)
/* Hidden units per parallel chunk: rows are split so that small B still spreads over threads. */
enum { LSTM_JB = 256 };

/* ---- GEMM ---------------------------------------------------------------------------------- */

#ifndef TERN_HAVE_OPENBLAS
/* TERN_BLAS=OFF: C (M, N) = op(A) op(B) + beta C, row-major; rows of C on OpenMP threads. */
static void lstm_plain_sgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, const float *A,
                             int64_t lda, const float *Bm, int64_t ldb, float beta, float *C,
                             int64_t ldc) {
    const int nt = tn_par_threads(M * N * K, (int64_t)1 << 18);
    TN_PARALLEL_FOR(nt, i, M, {
        float *c = C + i * ldc; /* (N) */
        for (int64_t j = 0; j < N; j++) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
        for (int64_t p = 0; p < K; p++) {
            const float av = ta ? A[p * lda + i] : A[i * lda + p];
            if (!tb) { const float *b = Bm + p * ldb; for (int64_t j = 0; j < N; j++) c[j] += av * b[j]; }
            else for (int64_t j = 0; j < N; j++) c[j] += av * Bm[j * ldb + p];
        }
    });
}
static void lstm_plain_dgemm(int ta, int tb, int64_t M, int64_t N, int64_t K, const double *A,
                             int64_t lda, const double *Bm, int64_t ldb, double beta, double *C,
                             int64_t ldc) {
    const int nt = tn_par_threads(M * N * K, (int64_t)1 << 18);
    TN_PARALLEL_FOR(nt, i, M, {
        double *c = C + i * ldc; /* (N) */
        for (int64_t j = 0; j < N; j++) c[j] = beta == 0.0 ? 0.0 : beta * c[j];
        for (int64_t p = 0; p < K; p++) {
            const double av = ta ? A[p * lda + i] : A[i * lda + p];
            if (!tb) { const double *b = Bm + p * ldb; for (int64_t j = 0; j < N; j++) c[j] += av * b[j]; }
            else for (int64_t j = 0; j < N; j++) c[j] += av * Bm[j * ldb + p];
        }
    });
}
#endif

/* C (M, N) = op(A) op(B) + beta C, row-major, beta 0 or 1. op(A) is (M, K): A is stored (M, K)
 * or, with ta, (K, M); op(B) is (K, N): B is stored (K, N) or, with tb, (N, K). Leading
 * dimensions in elements. Sizes are checked against INT_MAX by the callers. */
static void lstm_gemm(int32_t dtype, int ta, int tb, int64_t M, int64_t N, int64_t K,
                      const void *A, int64_t lda, const void *Bm, int64_t ldb, double beta,
                      void *C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0) {
        if (beta == 0.0)
            for (int64_t i = 0; i < M; i++)
                memset((char *)C + i * ldc * (int64_t)tn_dtype_size(dtype), 0, (size_t)N * tn_dtype_size(dtype));
        return;
    }
#ifdef TERN_HAVE_OPENBLAS
    const enum CBLAS_TRANSPOSE tra = ta ? CblasTrans : CblasNoTrans, trb = tb ? CblasTrans : CblasNoTrans;
    if (dtype == TN_F64)
        cblas_dgemm(CblasRowMajor, tra, trb, (int)M, (int)N, (int)K, 1.0, (const double *)A, (int)lda,
                    (const double *)Bm, (int)ldb, beta, (double *)C, (int)ldc);
    else
        cblas_sgemm(CblasRowMajor, tra, trb, (int)M, (int)N, (int)K, 1.0f, (const float *)A, (int)lda,
                    (const float *)Bm, (int)ldb, (float)beta, (float *)C, (int)ldc);
#else
    if (dtype == TN_F64)
        lstm_plain_dgemm(ta, tb, M, N, K, (const double *)A, lda, (const double *)Bm, ldb, beta, (double *)C, ldc);
    else
        lstm_plain_sgemm(ta, tb, M, N, K, (const float *)A, lda, (const float *)Bm, ldb, (float)beta, (float *)C, ldc);
#endif
}

/* ---- pointwise passes ---------------------------------------------------------------------- */

#ifdef TERN_HAVE_OPENBLAS
int openblas_get_parallel(void); /* OpenBLAS: 0 sequential, 1 pthreads, 2 OpenMP build */

/* 1 when libgomp's idle workers sleep instead of spinning: OMP_WAIT_POLICY=passive (which
 * lua/tern/lib.lua sets before libgomp loads) or GOMP_SPINCOUNT=0. Read once. */
static int lstm_omp_passive(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        const char *w = getenv("OMP_WAIT_POLICY"), *sc = getenv("GOMP_SPINCOUNT");
        v = (w && strcasecmp(w, "passive") == 0) || (sc && strcmp(sc, "0") == 0);
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

/* Threads for a pointwise pass of `work` units. With a pthreads OpenBLAS and spinning OpenMP
 * workers the pass stays on the calling thread: OpenBLAS's workers wait for the next GEMM
 * spinning and yielding, libgomp's spin after each region, and alternating the two every step
 * oversubscribes the cores (measured 10-30x slower at 2 threads on 2 cores). With passive
 * OpenMP workers, an OpenMP OpenBLAS (one libgomp pool) or the plain C GEMM (OpenMP itself)
 * the pass runs on OpenMP threads. */
static int lstm_threads(int64_t work) {
#ifdef TERN_HAVE_OPENBLAS
    if (openblas_get_parallel() == 1 && !lstm_omp_passive()) return 1;
#endif
    return tn_par_threads(work, LSTM_PAR_MIN);
}

/* ---- f32 chunk kernels: units [0, n) of one row, vectorised; an AVX2+FMA build of each is
 * picked at run time on x86-64 CPUs that have it (the library itself is built for baseline
 * SSE2, where the pointwise pass costs ~2.5x more). */

#if defined(__GNUC__)
#define LSTM_INLINE static inline __attribute__((always_inline)) /* into each target build below */
#else
#define LSTM_INLINE static inline
#endif

/* gi, gf, gg, go (n): pre-activations in (x's four parts added when x is not NULL: x (4H)
 * strided like the gates), activated gates out; cr (n) cells[t]; hr (n) o tanh(c); cst (n)
 * the running cell state. */
LSTM_INLINE void fwd_chunk_f_body(float *restrict gi, float *restrict gf, float *restrict gg,
                                    float *restrict go, const float *restrict x, int64_t H,
                                    float *restrict cr, float *restrict hr, float *restrict cst, int64_t n) {
    if (x) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            float ai = gi[j] + x[j], af = gf[j] + x[H + j], ag = gg[j] + x[2 * H + j], ao = go[j] + x[3 * H + j], h;
            const float c = tn_lstm_cell_fwd_f(&ai, &af, &ag, &ao, cst[j], &h);
            gi[j] = ai; gf[j] = af; gg[j] = ag; go[j] = ao;
            cr[j] = c;
            cst[j] = c;
            hr[j] = h;
        }
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            float ai = gi[j], af = gf[j], ag = gg[j], ao = go[j], h;
            const float c = tn_lstm_cell_fwd_f(&ai, &af, &ag, &ao, cst[j], &h);
            gi[j] = ai; gf[j] = af; gg[j] = ag; go[j] = ao;
            cr[j] = c;
            cst[j] = c;
            hr[j] = h;
        }
    }
}

/* gi, gf, gg, go (n) activated gates; cr (n) cells[t]; cp (n) the previous cell state or NULL
 * (zeros); dhr (n) the gradient of o tanh(c); dc (n) the carried cell gradient, replaced by
 * that of c_prev; di, df, dg, dO (n) [OUT] the gradients of the pre-activations. */
LSTM_INLINE void bwd_chunk_f_body(const float *restrict gi, const float *restrict gf,
                                    const float *restrict gg, const float *restrict gO,
                                    const float *restrict cr, const float *restrict cp,
                                    const float *restrict dhr, float *restrict dc, float *restrict di,
                                    float *restrict df, float *restrict dg, float *restrict dO, int64_t n) {
    if (cp) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            dc[j] = tn_lstm_cell_bwd_f(gi[j], gf[j], gg[j], gO[j], cr[j], cp[j], dhr[j], dc[j], di + j, df + j,
                                       dg + j, dO + j);
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++)
            dc[j] = tn_lstm_cell_bwd_f(gi[j], gf[j], gg[j], gO[j], cr[j], 0.0f, dhr[j], dc[j], di + j, df + j,
                                       dg + j, dO + j);
    }
}

#define LSTM_FWD_ARGS float *restrict gi, float *restrict gf, float *restrict gg, float *restrict go, \
                      const float *restrict x, int64_t H, float *restrict cr, float *restrict hr,    \
                      float *restrict cst, int64_t n
#define LSTM_BWD_ARGS const float *restrict gi, const float *restrict gf, const float *restrict gg,   \
                      const float *restrict gO, const float *restrict cr, const float *restrict cp,  \
                      const float *restrict dhr, float *restrict dc, float *restrict di,             \
                      float *restrict df, float *restrict dg, float *restrict dO, int64_t n
typedef void (*lstm_fwd_chunk_fn)(LSTM_FWD_ARGS);
typedef void (*lstm_bwd_chunk_fn)(LSTM_BWD_ARGS);

static void fwd_chunk_f_base(LSTM_FWD_ARGS) { fwd_chunk_f_body(gi, gf, gg, go, x, H, cr, hr, cst, n); }
static void bwd_chunk_f_base(LSTM_BWD_ARGS) {
    bwd_chunk_f_body(gi, gf, gg, gO, cr, cp, dhr, dc, di, df, dg, dO, n);
}

#ifdef TN_AVX2_BUILD
__attribute__((target("avx2,fma"))) static void fwd_chunk_f_avx2(LSTM_FWD_ARGS) {
    fwd_chunk_f_body(gi, gf, gg, go, x, H, cr, hr, cst, n);
}
__attribute__((target("avx2,fma"))) static void bwd_chunk_f_avx2(LSTM_BWD_ARGS) {
    bwd_chunk_f_body(gi, gf, gg, gO, cr, cp, dhr, dc, di, df, dg, dO, n);
}
#endif

static lstm_fwd_chunk_fn lstm_fwd_chunk(void) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) return fwd_chunk_f_avx2;
#endif
    return fwd_chunk_f_base;
}
static lstm_bwd_chunk_fn lstm_bwd_chunk(void) {
#ifdef TN_AVX2_BUILD
    if (tn_cpu_has_avx2_fma()) return bwd_chunk_f_avx2;
#endif
    return bwd_chunk_f_base;
}

/* Forward pointwise pass of step t. G (B, 4H): pre-activations in (plus X (B, 4H) when X is
 * not NULL), activated gates out; C (B, H) cells[t]; HR (B, H) o tanh(c) (out[t], or hraw[t] with a projection); cs (B, H)
 * the running cell state; hs (B, H) the running h without a projection, else NULL. Rows with
 * t >= len[b] are padding. */
static void fwd_point_f(int64_t B, int64_t H, int64_t t, const int64_t *len, float *G, const float *X,
                        float *C, float *HR, float *cs, float *hs) {
    const int64_t nblk = (H + LSTM_JB - 1) / LSTM_JB;
    const int nt = lstm_threads(B * H);
    const lstm_fwd_chunk_fn chunk = lstm_fwd_chunk();
    TN_PARALLEL_FOR(nt, idx, B * nblk, {
        const int64_t b = idx / nblk, j0 = (idx % nblk) * LSTM_JB;
        const int64_t j1 = j0 + LSTM_JB < H ? j0 + LSTM_JB : H;
        float *gi = G + b * 4 * H + j0, *gf = gi + H, *gg = gf + H, *go = gg + H;
        float *cr = C + b * H + j0, *hr = HR + b * H + j0, *cst = cs + b * H + j0;
        if (!len || t < len[b]) {
            chunk(gi, gf, gg, go, X ? X + b * 4 * H + j0 : NULL, H, cr, hr, cst, j1 - j0);
            if (hs) memcpy(hs + b * H + j0, hr, (size_t)(j1 - j0) * sizeof(float));
        } else {
            for (int64_t j = 0; j < j1 - j0; j++) {
                gi[j] = 0.0f; gf[j] = 0.0f; gg[j] = 0.0f; go[j] = 0.0f;
                cr[j] = cst[j];
                hr[j] = 0.0f;
            }
        }
    });
}

static void fwd_point_d(int64_t B, int64_t H, int64_t t, const int64_t *len, double *G, const double *X,
                        double *C, double *HR, double *cs, double *hs) {
    const int64_t nblk = (H + LSTM_JB - 1) / LSTM_JB;
    const int nt = lstm_threads(B * H);
    TN_PARALLEL_FOR(nt, idx, B * nblk, {
        const int64_t b = idx / nblk, j0 = (idx % nblk) * LSTM_JB;
        const int64_t j1 = j0 + LSTM_JB < H ? j0 + LSTM_JB : H;
        double *restrict gi = G + b * 4 * H, *restrict gf = gi + H, *restrict gg = gf + H, *restrict go = gg + H;
        double *restrict cr = C + b * H, *restrict hr = HR + b * H, *restrict cst = cs + b * H;
        if (!len || t < len[b]) {
            if (X) {
                const double *x = X + b * 4 * H;
                for (int64_t j = j0; j < j1; j++) {
                    gi[j] += x[j]; gf[j] += x[H + j]; gg[j] += x[2 * H + j]; go[j] += x[3 * H + j];
                }
            }
            for (int64_t j = j0; j < j1; j++) {
                double h;
                const double c = tn_lstm_cell_fwd_d(gi + j, gf + j, gg + j, go + j, cst[j], &h);
                cr[j] = c;
                cst[j] = c;
                hr[j] = h;
            }
            if (hs) memcpy(hs + b * H + j0, hr + j0, (size_t)(j1 - j0) * sizeof(double));
        } else {
            for (int64_t j = j0; j < j1; j++) {
                gi[j] = 0.0; gf[j] = 0.0; gg[j] = 0.0; go[j] = 0.0;
                cr[j] = cst[j];
                hr[j] = 0.0;
            }
        }
    });
}

/* Backward pointwise pass of step t. DG (B, 4H) [OUT] gradients of the pre-activations;
 * Gt (B, 4H) activated gates; Ct (B, H) cells[t]; Cp (B, H) the cell state before step t, or
 * NULL for zeros; dhr (B, H) the gradient of o tanh(c) (dh itself without a projection, then
 * go (B, H) grad_out[t] or NULL is added first and zero_dhr clears it afterwards); dc (B, H)
 * the carried cell gradient, replaced by that of c_prev. Padding rows: DG = 0, the rest kept. */
static void bwd_point_f(int64_t B, int64_t H, int64_t t, const int64_t *len, float *DG,
                        const float *Gt, const float *Ct, const float *Cp, float *dhr,
                        const float *go, int zero_dhr, float *dc) {
    const int64_t nblk = (H + LSTM_JB - 1) / LSTM_JB;
    const int nt = lstm_threads(B * H);
    const lstm_bwd_chunk_fn chunk = lstm_bwd_chunk();
    TN_PARALLEL_FOR(nt, idx, B * nblk, {
        const int64_t b = idx / nblk, j0 = (idx % nblk) * LSTM_JB;
        const int64_t j1 = j0 + LSTM_JB < H ? j0 + LSTM_JB : H, n = j1 - j0;
        float *di = DG + b * 4 * H + j0, *df = di + H, *dg = df + H, *dO = dg + H;
        if (!len || t < len[b]) {
            const float *gi = Gt + b * 4 * H + j0, *gf = gi + H, *gg = gf + H, *gO = gg + H;
            float *restrict dhrr = dhr + b * H + j0;
            if (go) {
                const float *restrict gor = go + b * H + j0;
                for (int64_t j = 0; j < n; j++) dhrr[j] += gor[j];
            }
            chunk(gi, gf, gg, gO, Ct + b * H + j0, Cp ? Cp + b * H + j0 : NULL, dhrr, dc + b * H + j0, di, df, dg,
                  dO, n);
            if (zero_dhr) memset(dhrr, 0, (size_t)n * sizeof(float));
        } else {
            for (int64_t j = 0; j < n; j++) { di[j] = 0.0f; df[j] = 0.0f; dg[j] = 0.0f; dO[j] = 0.0f; }
        }
    });
}

static void bwd_point_d(int64_t B, int64_t H, int64_t t, const int64_t *len, double *DG,
                        const double *Gt, const double *Ct, const double *Cp, double *dhr,
                        const double *go, int zero_dhr, double *dc) {
    const int64_t nblk = (H + LSTM_JB - 1) / LSTM_JB;
    const int nt = lstm_threads(B * H);
    TN_PARALLEL_FOR(nt, idx, B * nblk, {
        const int64_t b = idx / nblk, j0 = (idx % nblk) * LSTM_JB;
        const int64_t j1 = j0 + LSTM_JB < H ? j0 + LSTM_JB : H;
        double *restrict di = DG + b * 4 * H, *restrict df = di + H, *restrict dg = df + H, *restrict dO = dg + H;
        if (!len || t < len[b]) {
            const double *restrict gi = Gt + b * 4 * H, *restrict gf = gi + H, *restrict gg = gf + H,
                                   *restrict gO = gg + H;
            const double *restrict cr = Ct + b * H;
            double *restrict dhrr = dhr + b * H, *restrict dcr = dc + b * H;
            if (go)
                for (int64_t j = j0; j < j1; j++) dhrr[j] += go[b * H + j];
            for (int64_t j = j0; j < j1; j++)
                dcr[j] = tn_lstm_cell_bwd_d(gi[j], gf[j], gg[j], gO[j], cr[j], Cp ? Cp[b * H + j] : 0.0,
                                            dhrr[j], dcr[j], di + j, df + j, dg + j, dO + j);
            if (zero_dhr) memset(dhrr + j0, 0, (size_t)(j1 - j0) * sizeof(double));
        } else {
            for (int64_t j = j0; j < j1; j++) { di[j] = 0.0; df[j] = 0.0; dg[j] = 0.0; dO[j] = 0.0; }
        }
    });
}

/* ---- argument checks ----------------------------------------------------------------------- */

typedef struct lstm_dims {
    int64_t L, B, H, P;
    int32_t dtype;               /* TN_F32 or TN_F64 */
    int32_t device, device_index; /* of xproj (forward) / grad_xproj (backward): every tensor's */
} lstm_dims;

#define LSTM_DIMS_FMT "(L=%lld, B=%lld, H=%lld, P=%lld)"
#define LSTM_DIMS_ARGS(d) (long long)(d)->L, (long long)(d)->B, (long long)(d)->H, (long long)(d)->P

/* t must be on d's device (the CPU, or CUDA in a build with CUDA) */
static tn_status lstm_check_device(const char *op, const char *name, const tn_tensor *t, const lstm_dims *d) {
    if (t->device != d->device || t->device_index != d->device_index)
        return tn_error(TN_ERR_DEVICE, "%s: argument '%s' %s is on %s:%d but xproj is on %s:%d; all tensors must be "
                        "on one device", op, name, TN_SHAPE(t), tn_device_name(t->device), t->device_index,
                        tn_device_name(d->device), d->device_index);
    return TN_OK;
}

/* t must be a tensor of d's device and dtype, contiguous, with shape (nd, shape); what names
 * the shape symbolically for the message, e.g. "(L, B, 4H)". */
static tn_status lstm_check_arg(const char *op, const char *name, const tn_tensor *t, const lstm_dims *d,
                                int32_t nd, const int64_t *shape, const char *what) {
    TN_TRY(lstm_check_device(op, name, t, d));
    if (t->dtype != d->dtype)
        return tn_error(TN_ERR_DTYPE, "%s: argument '%s' %s is %s but xproj is %s (all tensors must share one dtype)",
                        op, name, TN_SHAPE(t), tn_dtype_name(t->dtype), tn_dtype_name(d->dtype));
    int same = t->ndim == nd;
    for (int32_t i = 0; same && i < nd; i++) same = t->shape[i] == shape[i];
    if (!same)
        return tn_error(TN_ERR_SHAPE, "%s: argument '%s' has shape %s but %s = %s was expected " LSTM_DIMS_FMT ", %s",
                        op, name, TN_SHAPE(t), what, TN_DIMS(nd, shape), LSTM_DIMS_ARGS(d),
                        tn_dtype_name(d->dtype));
    if (!tn_tensor_is_contiguous(t))
        return tn_error(TN_ERR_ARG, "%s: argument '%s' %s must be contiguous (strides %s)", op, name,
                        TN_SHAPE(t), TN_DIMS(t->ndim, t->strides));
    return TN_OK;
}

/* Reads L, B, H (from xproj or grad_xproj, named xname) and P (from w_hh) and checks what
 * they rest on; the other arguments are checked against d afterwards. */
static tn_status lstm_dims_from(const char *op, lstm_dims *d, const char *xname, const tn_tensor *x,
                                const tn_tensor *w_hh, const tn_tensor *w_hr) {
    TN_TRY(tn_check_backend(op, x)); /* the CPU, or CUDA in a build with CUDA (cuda/lstm.cu) */
    d->device = x->device;
    d->device_index = x->device_index;
    if (x->dtype != TN_F32 && x->dtype != TN_F64)
        return tn_error(TN_ERR_DTYPE, "%s: argument '%s' %s is %s; the LSTM supports f32 and f64", op, xname,
                        TN_SHAPE(x), tn_dtype_name(x->dtype));
    if (x->ndim != 3 || x->shape[2] % 4 != 0)
        return tn_error(TN_ERR_SHAPE, "%s: argument '%s' must be (L, B, 4H), got %s, %s", op, xname,
                        TN_SHAPE(x), tn_dtype_name(x->dtype));
    if (w_hh->ndim != 2)
        return tn_error(TN_ERR_SHAPE, "%s: argument 'w_hh' must be (4H, P), got %s (%s %s), %s", op,
                        TN_SHAPE(w_hh), xname, TN_SHAPE(x), tn_dtype_name(w_hh->dtype));
    d->L = x->shape[0];
    d->B = x->shape[1];
    d->H = x->shape[2] / 4;
    d->P = w_hh->shape[1];
    d->dtype = x->dtype;
    if (!w_hr && d->P != d->H)
        return tn_error(TN_ERR_SHAPE,
                        "%s: argument 'w_hh' %s needs P = H = %lld without a projection (w_hr is NULL; "
                        "%s %s), %s",
                        op, TN_SHAPE(w_hh), (long long)d->H, xname, TN_SHAPE(x), tn_dtype_name(x->dtype));
    const int64_t lim = INT_MAX;
    if (d->L * d->B > lim || 4 * d->H > lim || d->P > lim)
        return tn_error(TN_ERR_UNSUPPORTED, "%s: sizes " LSTM_DIMS_FMT " exceed the BLAS int range", op,
                        LSTM_DIMS_ARGS(d));
    return TN_OK;
}

/* *len = NULL without lengths, else a new host array (B) of the lengths, each checked in 1..L.
 * lengths may be on the CPU whatever d's device (the fast way for CUDA calls: nothing waits),
 * or on d's device (a CUDA tensor is copied to the host first, which waits for the device). */
static tn_status lstm_lengths(const char *op, int64_t **len, const tn_tensor *lengths, const lstm_dims *d) {
    *len = NULL;
    if (!lengths) return TN_OK;
    if (lengths->device != TN_CPU) {
        TN_TRY(lstm_check_device(op, "lengths", lengths, d));
        if (lengths->dtype != TN_I64 && lengths->dtype != TN_I32)
            return tn_error(TN_ERR_DTYPE, "%s: argument 'lengths' %s must be i64 (or i32), got %s", op,
                            TN_SHAPE(lengths), tn_dtype_name(lengths->dtype));
        tn_tensor *host = NULL;
        tn_status s = tn_tensor_empty(&host, lengths->ndim, lengths->shape, lengths->dtype, TN_CPU);
        if (s == TN_OK) s = tn_copy(host, lengths);
        if (s == TN_OK) s = lstm_lengths(op, len, host, d);
        tn_tensor_free(host);
        return s;
    }
    if (lengths->dtype != TN_I64 && lengths->dtype != TN_I32)
        return tn_error(TN_ERR_DTYPE, "%s: argument 'lengths' %s must be i64 (or i32), got %s", op,
                        TN_SHAPE(lengths), tn_dtype_name(lengths->dtype));
    if (lengths->ndim != 1 || lengths->shape[0] != d->B)
        return tn_error(TN_ERR_SHAPE, "%s: argument 'lengths' has shape %s but (B) = [%lld] was expected " LSTM_DIMS_FMT,
                        op, TN_SHAPE(lengths), (long long)d->B, LSTM_DIMS_ARGS(d));
    int64_t *l = malloc((size_t)(d->B > 0 ? d->B : 1) * sizeof(int64_t));
    if (!l) return tn_error(TN_ERR_OOM, "%s: out of memory for %lld lengths", op, (long long)d->B);
    const size_t es = tn_dtype_size(lengths->dtype);
    for (int64_t b = 0; b < d->B; b++) {
        l[b] = tn_load_i64(lengths->data + b * lengths->strides[0] * (int64_t)es, lengths->dtype);
        if (l[b] < 1 || l[b] > d->L) {
            tn_status s = tn_error(TN_ERR_INDEX,
                                   "%s: lengths[%lld] = %lld is out of range 1..%lld (each length must be >= 1 "
                                   "and <= the sequence length L; lengths %s, " LSTM_DIMS_FMT ")",
                                   op, (long long)b, (long long)l[b], (long long)d->L, TN_SHAPE(lengths),
                                   LSTM_DIMS_ARGS(d));
            free(l);
            return s;
        }
    }
    *len = l;
    return TN_OK;
}

/* A scratch buffer of n elements of dtype (through the tensor allocator, so it is counted and
 * cached); *hold owns it. */
static tn_status lstm_scratch(const char *op, tn_tensor **hold, int64_t n, int32_t dtype, char **data) {
    const int64_t shape[1] = {n > 0 ? n : 1};
    if (tn_tensor_empty(hold, 1, shape, dtype, TN_CPU) != TN_OK)
        return tn_error(TN_ERR_OOM, "%s: cannot allocate %lld scratch elements of %s", op, (long long)n,
                        tn_dtype_name(dtype));
    *data = (*hold)->data;
    return TN_OK;
}

/* Number of rows that are not padding at step t. */
static int64_t lstm_active(const int64_t *len, int64_t B, int64_t t) {
    if (!len) return B;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++) n += t < len[b];
    return n;
}

/* dst (n bytes) = src, or zeros when src is NULL; a no-op when they are the same buffer. */
static void lstm_init_state(char *dst, const tn_tensor *src, size_t n) {
    if (!src) memset(dst, 0, n);
    else if (src->data != dst) memmove(dst, src->data, n);
}

/* ---- forward ------------------------------------------------------------------------------- */

tn_status tn_lstm_forward(tn_tensor *out, tn_tensor *h_n, tn_tensor *c_n, tn_tensor *gates,
                          tn_tensor *cells, tn_tensor *hraw, const tn_tensor *xproj,
                          const tn_tensor *w_hh, const tn_tensor *w_hr, const tn_tensor *h0,
                          const tn_tensor *c0, const tn_tensor *lengths, int32_t reverse) {
    static const char *op = "lstm_forward";
    TN_TRY(tn_check_tensor(op, "out", out));
    TN_TRY(tn_check_tensor(op, "h_n", h_n));
    TN_TRY(tn_check_tensor(op, "c_n", c_n));
    TN_TRY(tn_check_tensor(op, "gates", gates));
    TN_TRY(tn_check_tensor(op, "cells", cells));
    TN_TRY(tn_check_tensor(op, "xproj", xproj));
    TN_TRY(tn_check_tensor(op, "w_hh", w_hh));
    if (w_hr && !hraw)
        return tn_error(TN_ERR_ARG, "%s: argument 'hraw' (L, B, H) is required with a projection (w_hr %s)", op,
                        TN_SHAPE(w_hr));
    if (hraw && !w_hr)
        return tn_error(TN_ERR_ARG, "%s: argument 'hraw' %s is given but w_hr is NULL (no projection)", op,
                        TN_SHAPE(hraw));
    lstm_dims d;
    TN_TRY(lstm_dims_from(op, &d, "xproj", xproj, w_hh, w_hr));
    const int64_t L = d.L, B = d.B, H = d.H, P = d.P, G = 4 * H;
    TN_TRY(lstm_check_arg(op, "xproj", xproj, &d, 3, (int64_t[]){L, B, G}, "(L, B, 4H)"));
    TN_TRY(lstm_check_arg(op, "w_hh", w_hh, &d, 2, (int64_t[]){G, P}, "(4H, P)"));
    if (w_hr) TN_TRY(lstm_check_arg(op, "w_hr", w_hr, &d, 2, (int64_t[]){P, H}, "(P, H)"));
    if (h0) TN_TRY(lstm_check_arg(op, "h0", h0, &d, 2, (int64_t[]){B, P}, "(B, P)"));
    if (c0) TN_TRY(lstm_check_arg(op, "c0", c0, &d, 2, (int64_t[]){B, H}, "(B, H)"));
    TN_TRY(lstm_check_arg(op, "out", out, &d, 3, (int64_t[]){L, B, P}, "(L, B, P)"));
    TN_TRY(lstm_check_arg(op, "h_n", h_n, &d, 2, (int64_t[]){B, P}, "(B, P)"));
    TN_TRY(lstm_check_arg(op, "c_n", c_n, &d, 2, (int64_t[]){B, H}, "(B, H)"));
    TN_TRY(lstm_check_arg(op, "gates", gates, &d, 3, (int64_t[]){L, B, G}, "(L, B, 4H)"));
    TN_TRY(lstm_check_arg(op, "cells", cells, &d, 3, (int64_t[]){L, B, H}, "(L, B, H)"));
    if (hraw) TN_TRY(lstm_check_arg(op, "hraw", hraw, &d, 3, (int64_t[]){L, B, H}, "(L, B, H)"));
    int64_t *len = NULL;
    TN_TRY(lstm_lengths(op, &len, lengths, &d));
#ifdef TERN_HAVE_CUDA
    if (d.device == TN_CUDA) {
        tn_status s = tn_cuda_lstm_forward(out, h_n, c_n, gates, cells, hraw, xproj, w_hh, w_hr, h0, c0, len, reverse);
        free(len);
        return s;
    }
#endif

    const int32_t dt = d.dtype;
    const int64_t es = (int64_t)tn_dtype_size(dt);
    char *hs = h_n->data, *cs = c_n->data; /* (B, P), (B, H): the running state */
    lstm_init_state(hs, h0, (size_t)(B * P * es));
    lstm_init_state(cs, c0, (size_t)(B * H * es));

    for (int64_t s = 0; s < L; s++) {
        const int64_t t = reverse ? L - 1 - s : s;
        char *gt = gates->data + t * B * G * es;             /* (B, 4H) */
        const char *xt = xproj->data + t * B * G * es;       /* (B, 4H) */
        char *ct = cells->data + t * B * H * es;             /* (B, H) */
        char *ot = out->data + t * B * P * es;               /* (B, P) */
        char *hrt = w_hr ? hraw->data + t * B * H * es : ot; /* (B, H) o tanh(c) */
        const int64_t nact = lstm_active(len, B, t);
        /* gates[t] = h W_hh^T, and the pointwise pass adds xproj[t]; when gates is xproj, the
         * GEMM adds onto it instead. h is all zeros before the first step without h0 (padding
         * keeps it so): no GEMM then. */
        const char *xadd = NULL;
        if (nact > 0 && (s > 0 || h0)) {
            const int alias = gt == xt;
            lstm_gemm(dt, 0, 1, B, G, P, hs, P, w_hh->data, P, alias ? 1.0 : 0.0, gt, G);
            if (!alias) xadd = xt;
        } else if (gt != xt) {
            memcpy(gt, xt, (size_t)(B * G * es));
        }
        if (dt == TN_F64)
            fwd_point_d(B, H, t, len, (double *)gt, (const double *)xadd, (double *)ct, (double *)hrt, (double *)cs,
                        w_hr ? NULL : (double *)hs);
        else
            fwd_point_f(B, H, t, len, (float *)gt, (const float *)xadd, (float *)ct, (float *)hrt, (float *)cs,
                        w_hr ? NULL : (float *)hs);
        if (w_hr) {
            if (nact > 0) lstm_gemm(dt, 0, 1, B, P, H, hrt, H, w_hr->data, H, 0.0, ot, P);
            for (int64_t b = 0; b < B; b++) {
                if (nact > 0 && (!len || t < len[b])) memcpy(hs + b * P * es, ot + b * P * es, (size_t)(P * es));
                else memset(ot + b * P * es, 0, (size_t)(P * es));
            }
        }
    }
    free(len);
    return TN_OK;
}

/* ---- backward ------------------------------------------------------------------------------ */

tn_status tn_lstm_backward(tn_tensor *grad_xproj, tn_tensor *grad_w_hh, tn_tensor *grad_w_hr,
                           tn_tensor *grad_h0, tn_tensor *grad_c0, const tn_tensor *grad_out,
                           const tn_tensor *grad_h_n, const tn_tensor *grad_c_n, const tn_tensor *out,
                           const tn_tensor *gates, const tn_tensor *cells, const tn_tensor *hraw,
                           const tn_tensor *w_hh, const tn_tensor *w_hr, const tn_tensor *h0,
                           const tn_tensor *c0, const tn_tensor *lengths, int32_t reverse) {
    static const char *op = "lstm_backward";
    TN_TRY(tn_check_tensor(op, "grad_xproj", grad_xproj));
    TN_TRY(tn_check_tensor(op, "grad_w_hh", grad_w_hh));
    TN_TRY(tn_check_tensor(op, "out", out));
    TN_TRY(tn_check_tensor(op, "gates", gates));
    TN_TRY(tn_check_tensor(op, "cells", cells));
    TN_TRY(tn_check_tensor(op, "w_hh", w_hh));
    if (w_hr && !hraw)
        return tn_error(TN_ERR_ARG, "%s: argument 'hraw' (L, B, H) from the forward is required with a projection "
                        "(w_hr %s)", op, TN_SHAPE(w_hr));
    if (!w_hr && (hraw || grad_w_hr))
        return tn_error(TN_ERR_ARG, "%s: argument '%s' %s is given but w_hr is NULL (no projection)", op,
                        hraw ? "hraw" : "grad_w_hr", TN_SHAPE(hraw ? hraw : grad_w_hr));
    lstm_dims d;
    TN_TRY(lstm_dims_from(op, &d, "grad_xproj", grad_xproj, w_hh, w_hr));
    const int64_t L = d.L, B = d.B, H = d.H, P = d.P, G = 4 * H;
    TN_TRY(lstm_check_arg(op, "grad_xproj", grad_xproj, &d, 3, (int64_t[]){L, B, G}, "(L, B, 4H)"));
    TN_TRY(lstm_check_arg(op, "w_hh", w_hh, &d, 2, (int64_t[]){G, P}, "(4H, P)"));
    TN_TRY(lstm_check_arg(op, "grad_w_hh", grad_w_hh, &d, 2, (int64_t[]){G, P}, "(4H, P)"));
    if (w_hr) TN_TRY(lstm_check_arg(op, "w_hr", w_hr, &d, 2, (int64_t[]){P, H}, "(P, H)"));
    if (grad_w_hr) TN_TRY(lstm_check_arg(op, "grad_w_hr", grad_w_hr, &d, 2, (int64_t[]){P, H}, "(P, H)"));
    if (grad_h0) TN_TRY(lstm_check_arg(op, "grad_h0", grad_h0, &d, 2, (int64_t[]){B, P}, "(B, P)"));
    if (grad_c0) TN_TRY(lstm_check_arg(op, "grad_c0", grad_c0, &d, 2, (int64_t[]){B, H}, "(B, H)"));
    if (grad_out) TN_TRY(lstm_check_arg(op, "grad_out", grad_out, &d, 3, (int64_t[]){L, B, P}, "(L, B, P)"));
    if (grad_h_n) TN_TRY(lstm_check_arg(op, "grad_h_n", grad_h_n, &d, 2, (int64_t[]){B, P}, "(B, P)"));
    if (grad_c_n) TN_TRY(lstm_check_arg(op, "grad_c_n", grad_c_n, &d, 2, (int64_t[]){B, H}, "(B, H)"));
    TN_TRY(lstm_check_arg(op, "out", out, &d, 3, (int64_t[]){L, B, P}, "(L, B, P)"));
    TN_TRY(lstm_check_arg(op, "gates", gates, &d, 3, (int64_t[]){L, B, G}, "(L, B, 4H)"));
    TN_TRY(lstm_check_arg(op, "cells", cells, &d, 3, (int64_t[]){L, B, H}, "(L, B, H)"));
    if (hraw) TN_TRY(lstm_check_arg(op, "hraw", hraw, &d, 3, (int64_t[]){L, B, H}, "(L, B, H)"));
    if (h0) TN_TRY(lstm_check_arg(op, "h0", h0, &d, 2, (int64_t[]){B, P}, "(B, P)"));
    if (c0) TN_TRY(lstm_check_arg(op, "c0", c0, &d, 2, (int64_t[]){B, H}, "(B, H)"));
    int64_t *len = NULL;
    TN_TRY(lstm_lengths(op, &len, lengths, &d));
#ifdef TERN_HAVE_CUDA
    if (d.device == TN_CUDA) {
        tn_status s = tn_cuda_lstm_backward(grad_xproj, grad_w_hh, grad_w_hr, grad_h0, grad_c0, grad_out, grad_h_n,
                                            grad_c_n, out, gates, cells, hraw, w_hh, w_hr, h0, c0, len, reverse);
        free(len);
        return s;
    }
#endif

    const int32_t dt = d.dtype;
    const int64_t es = (int64_t)tn_dtype_size(dt);
    tn_tensor *hold_dh = NULL, *hold_dc = NULL, *hold_dht = NULL, *hold_dhr = NULL, *hold_first = NULL;
    char *dh = NULL, *dc = NULL, *dht = NULL, *dhraw = NULL, *first = NULL;
    tn_status st = TN_OK;
    if (grad_h0) dh = grad_h0->data; /* (B, P) carried gradient of h */
    else st = lstm_scratch(op, &hold_dh, B * P, dt, &dh);
    if (st == TN_OK) {
        if (grad_c0) dc = grad_c0->data; /* (B, H) carried gradient of c */
        else st = lstm_scratch(op, &hold_dc, B * H, dt, &dc);
    }
    /* dht: (L, B, P) every step's gradient of h, kept for grad_w_hr; (B, P) when not needed */
    if (st == TN_OK && w_hr) st = lstm_scratch(op, &hold_dht, (grad_w_hr ? L : 1) * B * P, dt, &dht);
    if (st == TN_OK && w_hr) st = lstm_scratch(op, &hold_dhr, B * H, dt, &dhraw); /* (B, H) */
    if (st != TN_OK) goto done;
    lstm_init_state(dh, grad_h_n, (size_t)(B * P * es));
    lstm_init_state(dc, grad_c_n, (size_t)(B * H * es));

    for (int64_t s = 0; s < L; s++) {
        const int64_t t = reverse ? s : L - 1 - s;
        char *dgt = grad_xproj->data + t * B * G * es;                                   /* (B, 4H) */
        const char *gt = gates->data + t * B * G * es;                                   /* (B, 4H) */
        const char *ct = cells->data + t * B * H * es;                                   /* (B, H) */
        const char *got = grad_out ? grad_out->data + t * B * P * es : NULL;             /* (B, P) */
        char *dhtt = w_hr ? dht + (grad_w_hr ? t : 0) * B * P * es : NULL;              /* (B, P) */
        const int64_t nact = lstm_active(len, B, t);
        if (nact == 0) { /* all padding: dh, dc pass through */
            memset(dgt, 0, (size_t)(B * G * es));
            if (dhtt) memset(dhtt, 0, (size_t)(B * P * es));
            continue;
        }
        /* the cell state before step t (see the top of the file) */
        const int first_step = reverse ? t == L - 1 : t == 0;
        const char *cp = first_step ? (c0 ? c0->data : NULL) : cells->data + (reverse ? t + 1 : t - 1) * B * H * es;
        char *dhr = dh;
        if (w_hr) {
            /* dht = dh + grad_out[t] on valid rows (dh cleared there), 0 on padding rows */
            for (int64_t b = 0; b < B; b++) {
                char *drow = dhtt + b * P * es, *hrow = dh + b * P * es;
                if (len && t >= len[b]) { memset(drow, 0, (size_t)(P * es)); continue; }
                if (dt == TN_F64) {
                    const double *g = got ? (const double *)(got + b * P * es) : NULL;
                    double *o = (double *)drow, *h = (double *)hrow;
                    for (int64_t k = 0; k < P; k++) o[k] = h[k] + (g ? g[k] : 0.0);
                } else {
                    const float *g = got ? (const float *)(got + b * P * es) : NULL;
                    float *o = (float *)drow, *h = (float *)hrow;
                    for (int64_t k = 0; k < P; k++) o[k] = h[k] + (g ? g[k] : 0.0f);
                }
                memset(hrow, 0, (size_t)(P * es));
            }
            lstm_gemm(dt, 0, 0, B, H, P, dhtt, P, w_hr->data, H, 0.0, dhraw, H);
            dhr = dhraw;
            got = NULL;
        }
        if (dt == TN_F64)
            bwd_point_d(B, H, t, len, (double *)dgt, (const double *)gt, (const double *)ct, (const double *)cp,
                        (double *)dhr, (const double *)got, !w_hr, (double *)dc);
        else
            bwd_point_f(B, H, t, len, (float *)dgt, (const float *)gt, (const float *)ct, (const float *)cp,
                        (float *)dhr, (const float *)got, !w_hr, (float *)dc);
        /* dh (padding rows kept, valid rows cleared above) += d gates W_hh; after the last step
         * dh is grad_h0, not needed without it */
        if (s < L - 1 || grad_h0) lstm_gemm(dt, 0, 0, B, P, G, dgt, G, w_hh->data, P, 1.0, dh, P);
    }

    /* grad_w_hh += sum_t d gates[t]^T h_prev[t] (see the top of the file) */
    if (L > 1) {
        const char *a = grad_xproj->data + (reverse ? 0 : B * G * es);
        const char *hp = out->data + (reverse ? B * P * es : 0);
        lstm_gemm(dt, 1, 0, G, P, (L - 1) * B, a, G, hp, P, 1.0, grad_w_hh->data, P);
    }
    if (h0 && L > 0) {
        /* the first step of each sequence: t = 0, or lengths[b]-1 (L-1) when reverse */
        const char *a = grad_xproj->data + (reverse ? (L - 1) * B * G * es : 0);
        if (reverse && len) {
            st = lstm_scratch(op, &hold_first, B * G, dt, &first); /* (B, 4H) */
            if (st != TN_OK) goto done;
            for (int64_t b = 0; b < B; b++)
                memcpy(first + b * G * es, grad_xproj->data + ((len[b] - 1) * B + b) * G * es, (size_t)(G * es));
            a = first;
        }
        lstm_gemm(dt, 1, 0, G, P, B, a, G, h0->data, P, 1.0, grad_w_hh->data, P);
    }
    /* grad_w_hr += sum_t dht[t]^T hraw[t] */
    if (grad_w_hr) lstm_gemm(dt, 1, 0, P, H, L * B, dht, P, hraw->data, H, 1.0, grad_w_hr->data, H);

done:
    tn_tensor_free(hold_dh);
    tn_tensor_free(hold_dc);
    tn_tensor_free(hold_dht);
    tn_tensor_free(hold_dhr);
    tn_tensor_free(hold_first);
    free(len);
    return st;
}
