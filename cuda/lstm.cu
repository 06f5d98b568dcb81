/*
 * cuda/lstm.cu — the CUDA backend of tn_lstm_forward / tn_lstm_backward (core/lstm.c): one
 * direction of one layer of PyTorch's nn.LSTM over a whole sequence on the GPU, f32 and f64
 * (the Lua layer runs f16 / bf16 models' recurrences in f32, as on the CPU).
 *
 * Gradient policy: activation gradients (grad_xproj, grad_h0, grad_c0) are written (=);
 * parameter gradients (grad_w_hh, grad_w_hr) accumulate (+=).
 *
 * Shapes: L steps, B batch, H hidden units, P = proj_size or H, G = 4H.
 *
 * The algorithm is core/lstm.c's, step for step (see the top of that file): the input
 * projections of all steps are one GEMM done by the caller (xproj); each step is one cuBLAS
 * GEMM with W_hh (beta 1 onto xproj when gates is xproj), one fused pointwise kernel for the
 * gates (kernels/lstm.h, the CPU's arithmetic), and with a projection one GEMM with W_hr plus
 * a small kernel that moves the valid rows into the running h. The backward walks the steps
 * in the opposite order with the same per-step GEMMs and a fused pointwise kernel; the
 * parameter gradients are each one GEMM over all steps after the loop (no atomics).
 *
 * GEMMs go through tn_cuda_matmul (cuda/linalg.cu: cuBLAS handle, stream and workspace, TF32
 * for f32 when tn_cuda_get_tf32(), checked calls) on 2-D descriptors of the step's rows; no
 * new cuBLAS plumbing here. Pointwise kernels: one thread per (b, j) unit of a step, grid-
 * stride loops of TN_CUDA_THREADS-thread blocks; consecutive threads take consecutive j, so
 * every access of a gate block, cell row or h row is coalesced.
 *
 * Lengths: core/lstm.c validates them on the host (the Lua layer keeps them on the CPU, so
 * nothing waits); they are uploaded once per call into a pooled device buffer (through a
 * pinned staging buffer, tn_cuda_copy_h2d: no wait) and read by the kernels. The host copy
 * also decides, as on the CPU, which steps have no valid row (their GEMMs are skipped). No
 * host synchronisation.
 *
 * Scratch (the carried gradients dh, dc when grad_h0 / grad_c0 are not given, dht, dhraw,
 * the first-step rows of reverse + lengths + h0) comes from the caching allocator and is
 * released at the end of the call, ordered on the stream.
 */
#include "common.cuh"

#include "kernels/lstm.h"

/* cuda/linalg.cu (declared in core/linalg.c): c (n, m) = alpha op(a) op(b) + beta c on cuBLAS,
 * on the current device and stream. */
extern "C" tn_status tn_cuda_matmul(const char *op, tn_tensor *c, const tn_tensor *a, const tn_tensor *b,
                                    int32_t trans_a, int32_t trans_b, int32_t nb, const int64_t *bshape, int64_t n,
                                    int64_t k, int64_t m, int64_t ldc, double alpha, double beta);

/* cuda/copy.cu: pageable host -> device on the current stream, staged through pinned memory;
 * returns once src may be reused. */
extern "C" tn_status tn_cuda_copy_h2d(void *dst, const void *src, size_t nbytes);

/* ---- GEMM on raw device pointers ------------------------------------------------------------- */

/* A 2-D row-major view (rows, cols) with row stride ld over CUDA memory, for tn_cuda_matmul
 * (which reads data, dtype, device, ndim, shape and strides only). */
static tn_tensor lg_view(const void *p, int32_t dtype, int64_t rows, int64_t cols, int64_t ld) {
    tn_tensor t;
    memset(&t, 0, sizeof t);
    t.data = (char *)p;
    t.ndim = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.strides[0] = ld;
    t.strides[1] = 1;
    t.dtype = dtype;
    t.device = TN_CUDA;
    t.refcount = 1;
    return t;
}

/* C (M, N) = op(A) op(B) + beta C, row-major, as lstm_gemm of core/lstm.c: op(A) is (M, K),
 * A stored (M, K) or, with ta, (K, M); op(B) is (K, N), B stored (K, N) or, with tb, (N, K);
 * leading dimensions in elements. */
static tn_status lg_gemm(const char *op, int32_t dtype, int ta, int tb, int64_t M, int64_t N, int64_t K, const void *A,
                         int64_t lda, const void *Bm, int64_t ldb, double beta, void *C, int64_t ldc) {
    if (M == 0 || N == 0) return TN_OK;
    tn_tensor a = lg_view(A, dtype, ta ? K : M, ta ? M : K, lda);
    tn_tensor b = lg_view(Bm, dtype, tb ? N : K, tb ? K : N, ldb);
    tn_tensor c = lg_view(C, dtype, M, N, ldc);
    return tn_cuda_matmul(op, &c, &a, &b, ta, tb, 0, NULL, M, K, N, ldc, 1.0, beta);
}

/* ---- per-element math: the shared cell of kernels/lstm.h by type ------------------------------ */

static __device__ __forceinline__ float lstm_fwd(float *gi, float *gf, float *gg, float *go, float cp, float *hr) {
    return tn_lstm_cell_fwd_f(gi, gf, gg, go, cp, hr);
}
static __device__ __forceinline__ double lstm_fwd(double *gi, double *gf, double *gg, double *go, double cp,
                                                  double *hr) {
    return tn_lstm_cell_fwd_d(gi, gf, gg, go, cp, hr);
}
static __device__ __forceinline__ float lstm_bwd(float i, float f, float g, float o, float c, float cp, float dhr,
                                                 float dc, float *dai, float *daf, float *dag, float *dao) {
    return tn_lstm_cell_bwd_f(i, f, g, o, c, cp, dhr, dc, dai, daf, dag, dao);
}
static __device__ __forceinline__ double lstm_bwd(double i, double f, double g, double o, double c, double cp,
                                                  double dhr, double dc, double *dai, double *daf, double *dag,
                                                  double *dao) {
    return tn_lstm_cell_bwd_d(i, f, g, o, c, cp, dhr, dc, dai, daf, dag, dao);
}

/* ---- kernels (one thread per unit) ------------------------------------------------------------- */

/* Forward pointwise pass of step t, as fwd_point_f / _d of core/lstm.c. Rows with
 * t >= len[b] are padding: gates 0, cells[t] = the carried state, hr = 0. */
template <typename T>
__global__ void lstm_fwd_point(T *Gt,            // (B, 4H) pre-activations in (GEMM part), activated gates out
                               const T *X,       // (B, 4H) added to Gt first, or NULL
                               T *Ct,            // (B, H) cells[t]
                               T *HR,            // (B, H) o tanh(c): out[t], or hraw[t] with a projection
                               T *cs,            // (B, H) running cell state
                               T *hs,            // (B, H) running h without a projection, else NULL
                               const int64_t *len, // (B) or NULL
                               int64_t B, int64_t H, int64_t t) {
    TN_CUDA_GRID_LOOP(e, B * H) {
        const int64_t b = e / H, j = e % H;
        T *g = Gt + b * 4 * H + j;
        if (!len || t < len[b]) {
            T ai = g[0], af = g[H], ag = g[2 * H], ao = g[3 * H], hv;
            if (X) {
                const T *x = X + b * 4 * H + j;
                ai += x[0], af += x[H], ag += x[2 * H], ao += x[3 * H];
            }
            const T c = lstm_fwd(&ai, &af, &ag, &ao, cs[e], &hv);
            g[0] = ai, g[H] = af, g[2 * H] = ag, g[3 * H] = ao;
            Ct[e] = c;
            cs[e] = c;
            HR[e] = hv;
            if (hs) hs[e] = hv;
        } else {
            g[0] = 0, g[H] = 0, g[2 * H] = 0, g[3 * H] = 0;
            Ct[e] = cs[e];
            HR[e] = 0;
        }
    }
}

/* With a projection, after out[t] = hraw[t] W_hr^T: valid rows become the running h, padding
 * rows of out[t] get zeros (h keeps its value). */
template <typename T>
__global__ void lstm_proj_rows(T *Ot,             // (B, P) out[t]
                               T *hs,             // (B, P) running h
                               const int64_t *len, // (B) or NULL
                               int64_t B, int64_t P, int64_t t) {
    TN_CUDA_GRID_LOOP(e, B * P) {
        const int64_t b = e / P;
        if (!len || t < len[b]) hs[e] = Ot[e];
        else Ot[e] = 0;
    }
}

/* Backward pointwise pass of step t, as bwd_point_f / _d of core/lstm.c. dhr is the gradient
 * of o tanh(c) (dh itself without a projection: go is then added first and zero_dhr clears it
 * afterwards); dc is the carried cell gradient, replaced by that of c_prev. Padding rows:
 * DG = 0, dhr and dc kept. */
template <typename T>
__global__ void lstm_bwd_point(T *DG,             // (B, 4H) [OUT] gradients of the pre-activations
                               const T *Gt,       // (B, 4H) activated gates
                               const T *Ct,       // (B, H) cells[t]
                               const T *Cp,       // (B, H) the cell state before step t, or NULL (zeros)
                               T *dhr,            // (B, H)
                               const T *go,       // (B, H) grad_out[t] or NULL
                               int zero_dhr,
                               T *dc,             // (B, H)
                               const int64_t *len, // (B) or NULL
                               int64_t B, int64_t H, int64_t t) {
    TN_CUDA_GRID_LOOP(e, B * H) {
        const int64_t b = e / H, j = e % H;
        T *d = DG + b * 4 * H + j;
        if (!len || t < len[b]) {
            const T *g = Gt + b * 4 * H + j;
            T dh = dhr[e];
            if (go) dh += go[e];
            T di, df, dg, dO;
            dc[e] = lstm_bwd(g[0], g[H], g[2 * H], g[3 * H], Ct[e], Cp ? Cp[e] : (T)0, dh, dc[e], &di, &df, &dg, &dO);
            d[0] = di, d[H] = df, d[2 * H] = dg, d[3 * H] = dO;
            if (zero_dhr) dhr[e] = 0;
            else if (go) dhr[e] = dh;
        } else {
            d[0] = 0, d[H] = 0, d[2 * H] = 0, d[3 * H] = 0;
        }
    }
}

/* With a projection: dht = dh + grad_out[t] on valid rows (dh cleared there), 0 on padding
 * rows (dh kept). */
template <typename T>
__global__ void lstm_dht_rows(T *dht,             // (B, P) [OUT]
                              T *dh,              // (B, P) carried gradient of h
                              const T *go,        // (B, P) grad_out[t] or NULL
                              const int64_t *len, // (B) or NULL
                              int64_t B, int64_t P, int64_t t) {
    TN_CUDA_GRID_LOOP(e, B * P) {
        const int64_t b = e / P;
        if (!len || t < len[b]) {
            dht[e] = dh[e] + (go ? go[e] : (T)0);
            dh[e] = 0;
        } else {
            dht[e] = 0;
        }
    }
}

/* first[b] = grad_xproj[len[b] - 1][b] (the first step of each reversed sequence). */
template <typename T>
__global__ void lstm_first_rows(T *first,          // (B, 4H) [OUT]
                                const T *dx,       // (L, B, 4H) grad_xproj
                                const int64_t *len, // (B)
                                int64_t B, int64_t G) {
    TN_CUDA_GRID_LOOP(e, B * G) {
        const int64_t b = e / G, k = e % G;
        first[e] = dx[((len[b] - 1) * B + b) * G + k];
    }
}

/* ---- helpers ------------------------------------------------------------------------------------ */

/* Number of rows that are not padding at step t (host lengths). */
static int64_t lstm_active(const int64_t *len, int64_t B, int64_t t) {
    if (!len) return B;
    int64_t n = 0;
    for (int64_t b = 0; b < B; b++) n += t < len[b];
    return n;
}

/* A scratch buffer of n elements of dtype on CUDA; *hold owns it. */
static tn_status lstm_scratch(const char *op, tn_tensor **hold, int64_t n, int32_t dtype, char **data) {
    const int64_t shape[1] = {n > 0 ? n : 1};
    if (tn_tensor_empty(hold, 1, shape, dtype, TN_CUDA) != TN_OK)
        return tn_error(TN_ERR_OOM, "%s: cannot allocate %lld scratch elements of %s on cuda: %s", op, (long long)n,
                        tn_dtype_name(dtype), tn_last_error());
    *data = (*hold)->data;
    return TN_OK;
}

/* The host lengths (B) in a new device buffer (*hold), or *dlen = NULL without lengths. */
static tn_status lstm_upload_len(const char *op, tn_tensor **hold, const int64_t *len, int64_t B,
                                 const int64_t **dlen) {
    *dlen = NULL;
    if (!len || B == 0) return TN_OK;
    char *p = NULL;
    TN_TRY(lstm_scratch(op, hold, B, TN_I64, &p));
    /* staged through a pinned buffer (cuda/copy.cu): returns as soon as len may be freed, without
     * waiting for the stream, which a plain cudaMemcpyAsync from pageable memory may do */
    TN_TRY(tn_cuda_copy_h2d(p, len, (size_t)B * sizeof(int64_t)));
    *dlen = (const int64_t *)p;
    return TN_OK;
}

/* dst (n bytes) = src, or zeros when src is NULL; nothing when they are the same buffer. */
static tn_status lstm_init_state(char *dst, const tn_tensor *src, size_t n) {
    if (n == 0) return TN_OK;
    if (!src) return TN_CUDA_CHECK(cudaMemsetAsync(dst, 0, n, tn_cuda_stream_now()));
    if (src->data == dst) return TN_OK;
    return TN_CUDA_CHECK(cudaMemcpyAsync(dst, src->data, n, cudaMemcpyDeviceToDevice, tn_cuda_stream_now()));
}

/* ---- forward ------------------------------------------------------------------------------------ */

template <typename T> struct lstm_forward_run {
    static tn_status run(tn_tensor *out, tn_tensor *h_n, tn_tensor *c_n, tn_tensor *gates, tn_tensor *cells,
                         tn_tensor *hraw, const tn_tensor *xproj, const tn_tensor *w_hh, const tn_tensor *w_hr,
                         const tn_tensor *h0, const tn_tensor *c0, const int64_t *len, int32_t reverse) {
        static const char *op = "lstm_forward";
        const int32_t dt = xproj->dtype;
        const int64_t L = xproj->shape[0], B = xproj->shape[1], H = xproj->shape[2] / 4, G = 4 * H;
        const int64_t P = w_hh->shape[1];
        const cudaStream_t st = tn_cuda_stream_now();
        tn_tensor *hold_len = NULL;
        const int64_t *dlen = NULL;
        T *hs = (T *)h_n->data, *cs = (T *)c_n->data; /* (B, P), (B, H): the running state */
        tn_status s = lstm_init_state((char *)hs, h0, (size_t)(B * P) * sizeof(T));
        if (s == TN_OK) s = lstm_init_state((char *)cs, c0, (size_t)(B * H) * sizeof(T));
        if (s == TN_OK) s = lstm_upload_len(op, &hold_len, len, B, &dlen);
        /* B > 0, not B * H > 0: with a projection and H = 0 the steps still write out (zeros) and h */
        for (int64_t step = 0; s == TN_OK && step < L && B > 0; step++) {
            const int64_t t = reverse ? L - 1 - step : step;
            T *gt = (T *)gates->data + t * B * G;                  /* (B, 4H) */
            const T *xt = (const T *)xproj->data + t * B * G;      /* (B, 4H) */
            T *ct = (T *)cells->data + t * B * H;                  /* (B, H) */
            T *ot = (T *)out->data + t * B * P;                    /* (B, P) */
            T *hrt = w_hr ? (T *)hraw->data + t * B * H : ot;      /* (B, H) o tanh(c) */
            const int64_t nact = lstm_active(len, B, t);
            /* gates[t] = h W_hh^T (+ xproj[t] in the pointwise kernel, or beta 1 when gates is
             * xproj); no GEMM while h is all zeros (first step without h0) or no row is valid */
            const T *xadd = NULL;
            if (nact > 0 && (step > 0 || h0)) {
                const int alias = gt == xt;
                s = lg_gemm(op, dt, 0, 1, B, G, P, hs, P, w_hh->data, P, alias ? 1.0 : 0.0, gt, G);
                if (!alias) xadd = xt;
            } else if (gt != xt) {
                s = TN_CUDA_CHECK(cudaMemcpyAsync(gt, xt, (size_t)(B * G) * sizeof(T), cudaMemcpyDeviceToDevice, st));
            }
            if (s != TN_OK) break;
            lstm_fwd_point<T><<<tn_cuda_blocks(B * H), TN_CUDA_THREADS, 0, st>>>(gt, xadd, ct, hrt, cs,
                                                                                  w_hr ? NULL : hs, dlen, B, H, t);
            s = TN_CUDA_CHECK_LAUNCH();
            if (s == TN_OK && w_hr && B * P > 0) {
                if (nact > 0) s = lg_gemm(op, dt, 0, 1, B, P, H, hrt, H, w_hr->data, H, 0.0, ot, P);
                if (s == TN_OK) {
                    lstm_proj_rows<T><<<tn_cuda_blocks(B * P), TN_CUDA_THREADS, 0, st>>>(ot, hs, dlen, B, P, t);
                    s = TN_CUDA_CHECK_LAUNCH();
                }
            }
        }
        tn_tensor_free(hold_len);
        return s;
    }
};

/* ---- backward ----------------------------------------------------------------------------------- */

template <typename T> struct lstm_backward_run {
    static tn_status run(tn_tensor *grad_xproj, tn_tensor *grad_w_hh, tn_tensor *grad_w_hr, tn_tensor *grad_h0,
                         tn_tensor *grad_c0, const tn_tensor *grad_out, const tn_tensor *grad_h_n,
                         const tn_tensor *grad_c_n, const tn_tensor *out, const tn_tensor *gates,
                         const tn_tensor *cells, const tn_tensor *hraw, const tn_tensor *w_hh, const tn_tensor *w_hr,
                         const tn_tensor *h0, const tn_tensor *c0, const int64_t *len, int32_t reverse) {
        static const char *op = "lstm_backward";
        const int32_t dt = grad_xproj->dtype;
        const int64_t L = grad_xproj->shape[0], B = grad_xproj->shape[1], H = grad_xproj->shape[2] / 4, G = 4 * H;
        const int64_t P = w_hh->shape[1];
        const size_t es = sizeof(T);
        const cudaStream_t st = tn_cuda_stream_now();
        tn_tensor *hold_dh = NULL, *hold_dc = NULL, *hold_dht = NULL, *hold_dhr = NULL, *hold_first = NULL,
                  *hold_len = NULL;
        char *dh = NULL, *dc = NULL, *dht = NULL, *dhraw = NULL, *first = NULL;
        const int64_t *dlen = NULL;
        tn_status s = TN_OK;
        if (grad_h0) dh = grad_h0->data; /* (B, P) carried gradient of h */
        else s = lstm_scratch(op, &hold_dh, B * P, dt, &dh);
        if (s == TN_OK) {
            if (grad_c0) dc = grad_c0->data; /* (B, H) carried gradient of c */
            else s = lstm_scratch(op, &hold_dc, B * H, dt, &dc);
        }
        /* dht: (L, B, P) every step's gradient of h, kept for grad_w_hr; (B, P) when not needed */
        if (s == TN_OK && w_hr) s = lstm_scratch(op, &hold_dht, (grad_w_hr ? L : 1) * B * P, dt, &dht);
        if (s == TN_OK && w_hr) s = lstm_scratch(op, &hold_dhr, B * H, dt, &dhraw); /* (B, H) */
        if (s == TN_OK) s = lstm_init_state(dh, grad_h_n, (size_t)(B * P) * es);
        if (s == TN_OK) s = lstm_init_state(dc, grad_c_n, (size_t)(B * H) * es);
        if (s == TN_OK) s = lstm_upload_len(op, &hold_len, len, B, &dlen);
        if (s != TN_OK) goto done;

        for (int64_t step = 0; step < L && B > 0; step++) {
            const int64_t t = reverse ? step : L - 1 - step;
            T *dgt = (T *)grad_xproj->data + t * B * G;                                   /* (B, 4H) */
            const T *gt = (const T *)gates->data + t * B * G;                             /* (B, 4H) */
            const T *ct = (const T *)cells->data + t * B * H;                             /* (B, H) */
            const T *got = grad_out ? (const T *)grad_out->data + t * B * P : NULL;       /* (B, P) */
            T *dhtt = w_hr ? (T *)dht + (grad_w_hr ? t : 0) * B * P : NULL;               /* (B, P) */
            const int64_t nact = lstm_active(len, B, t);
            if (nact == 0) { /* all padding: dh, dc pass through */
                s = TN_CUDA_CHECK(cudaMemsetAsync(dgt, 0, (size_t)(B * G) * es, st));
                if (s == TN_OK && dhtt) s = TN_CUDA_CHECK(cudaMemsetAsync(dhtt, 0, (size_t)(B * P) * es, st));
                if (s != TN_OK) goto done;
                continue;
            }
            /* the cell state before step t (see the top of core/lstm.c) */
            const int first_step = reverse ? t == L - 1 : t == 0;
            const T *cp = first_step ? (c0 ? (const T *)c0->data : NULL)
                                     : (const T *)cells->data + (reverse ? t + 1 : t - 1) * B * H;
            T *dhr = (T *)dh;
            if (w_hr) {
                if (P > 0) {
                    lstm_dht_rows<T><<<tn_cuda_blocks(B * P), TN_CUDA_THREADS, 0, st>>>(dhtt, (T *)dh, got, dlen, B,
                                                                                        P, t);
                    s = TN_CUDA_CHECK_LAUNCH();
                }
                if (s == TN_OK) s = lg_gemm(op, dt, 0, 0, B, H, P, dhtt, P, w_hr->data, H, 0.0, dhraw, H);
                if (s != TN_OK) goto done;
                dhr = (T *)dhraw;
                got = NULL;
            }
            lstm_bwd_point<T><<<tn_cuda_blocks(B * H), TN_CUDA_THREADS, 0, st>>>(dgt, gt, ct, cp, dhr, got, !w_hr,
                                                                                  (T *)dc, dlen, B, H, t);
            s = TN_CUDA_CHECK_LAUNCH();
            /* dh (padding rows kept, valid rows cleared) += d gates W_hh; after the last step dh
             * is grad_h0, not needed without it */
            if (s == TN_OK && (step < L - 1 || grad_h0)) s = lg_gemm(op, dt, 0, 0, B, P, G, dgt, G, w_hh->data, P, 1.0, dh, P);
            if (s != TN_OK) goto done;
        }

        /* grad_w_hh += sum_t d gates[t]^T h_prev[t] (see the top of core/lstm.c) */
        if (L > 1) {
            const char *a = grad_xproj->data + (reverse ? 0 : B * G * (int64_t)es);
            const char *hp = out->data + (reverse ? B * P * (int64_t)es : 0);
            s = lg_gemm(op, dt, 1, 0, G, P, (L - 1) * B, a, G, hp, P, 1.0, grad_w_hh->data, P);
            if (s != TN_OK) goto done;
        }
        if (h0 && L > 0) {
            /* the first step of each sequence: t = 0, or lengths[b]-1 (L-1) when reverse */
            const char *a = grad_xproj->data + (reverse ? (L - 1) * B * G * (int64_t)es : 0);
            if (reverse && dlen && B * G > 0) {
                s = lstm_scratch(op, &hold_first, B * G, dt, &first); /* (B, 4H) */
                if (s != TN_OK) goto done;
                lstm_first_rows<T><<<tn_cuda_blocks(B * G), TN_CUDA_THREADS, 0, st>>>(
                    (T *)first, (const T *)grad_xproj->data, dlen, B, G);
                s = TN_CUDA_CHECK_LAUNCH();
                if (s != TN_OK) goto done;
                a = first;
            }
            s = lg_gemm(op, dt, 1, 0, G, P, B, a, G, h0->data, P, 1.0, grad_w_hh->data, P);
            if (s != TN_OK) goto done;
        }
        /* grad_w_hr += sum_t dht[t]^T hraw[t] */
        if (grad_w_hr) s = lg_gemm(op, dt, 1, 0, P, H, L * B, dht, P, hraw->data, H, 1.0, grad_w_hr->data, H);

    done:
        tn_tensor_free(hold_dh);
        tn_tensor_free(hold_dc);
        tn_tensor_free(hold_dht);
        tn_tensor_free(hold_dhr);
        tn_tensor_free(hold_first);
        tn_tensor_free(hold_len);
        return s;
    }
};

/* ---- entry points (called by core/lstm.c after its checks) ---------------------------------------- */

extern "C" tn_status tn_cuda_lstm_forward(tn_tensor *out, tn_tensor *h_n, tn_tensor *c_n, tn_tensor *gates,
                                          tn_tensor *cells, tn_tensor *hraw, const tn_tensor *xproj,
                                          const tn_tensor *w_hh, const tn_tensor *w_hr, const tn_tensor *h0,
                                          const tn_tensor *c0, const int64_t *len, int32_t reverse) {
    if (xproj->dtype == TN_F64)
        return lstm_forward_run<double>::run(out, h_n, c_n, gates, cells, hraw, xproj, w_hh, w_hr, h0, c0, len, reverse);
    if (xproj->dtype == TN_F32)
        return lstm_forward_run<float>::run(out, h_n, c_n, gates, cells, hraw, xproj, w_hh, w_hr, h0, c0, len, reverse);
    return tn_error(TN_ERR_DTYPE, "lstm_forward: internal error: dtype %s on cuda", tn_dtype_name(xproj->dtype));
}

extern "C" tn_status tn_cuda_lstm_backward(tn_tensor *grad_xproj, tn_tensor *grad_w_hh, tn_tensor *grad_w_hr,
                                           tn_tensor *grad_h0, tn_tensor *grad_c0, const tn_tensor *grad_out,
                                           const tn_tensor *grad_h_n, const tn_tensor *grad_c_n,
                                           const tn_tensor *out, const tn_tensor *gates, const tn_tensor *cells,
                                           const tn_tensor *hraw, const tn_tensor *w_hh, const tn_tensor *w_hr,
                                           const tn_tensor *h0, const tn_tensor *c0, const int64_t *len,
                                           int32_t reverse) {
    if (grad_xproj->dtype == TN_F64)
        return lstm_backward_run<double>::run(grad_xproj, grad_w_hh, grad_w_hr, grad_h0, grad_c0, grad_out, grad_h_n,
                                              grad_c_n, out, gates, cells, hraw, w_hh, w_hr, h0, c0, len, reverse);
    if (grad_xproj->dtype == TN_F32)
        return lstm_backward_run<float>::run(grad_xproj, grad_w_hh, grad_w_hr, grad_h0, grad_c0, grad_out, grad_h_n,
                                             grad_c_n, out, gates, cells, hraw, w_hh, w_hr, h0, c0, len, reverse);
    return tn_error(TN_ERR_DTYPE, "lstm_backward: internal error: dtype %s on cuda", tn_dtype_name(grad_xproj->dtype));
}
