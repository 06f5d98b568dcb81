/*
 * cuda/sru.cu — the CUDA backend of tn_sru_forward / tn_sru_backward (core/sru.c): the
 * elementwise recurrence of the `sru` package 2.x on the GPU. core/sru.c checks the arguments
 * (every tensor contiguous, on U's device, of U's dtype) and hands over a filled tn_sru_args
 * (kernels/sru.h); the per-element math is tn_sru_fwd_f / _d and tn_sru_bwd_f / _d of
 * kernels/sru.h, the very functions the CPU loops call.
 *
 * Gradient policy: activation gradients (grad_U, grad_x, grad_c0) are written (=); parameter
 * gradients (grad_weight_c, grad_bias) accumulate (+=). grad_x, when given but unused by the
 * recurrence (k == 4 or no skip term), is filled with zeros.
 *
 * Dtypes: f32 and f64 as on the CPU; f16 and bf16 storage (every float tensor of the call in
 * the one dtype) with the recurrence, the cell state carried between steps and the parameter
 * gradient sums in f32. The stored c (L, B, D*d) is rounded to the storage dtype, as the `sru`
 * package's CUDA kernel does; the backward recomputes the gates from that rounded c.
 *
 * Threading. A column is one (b, dir, j); column index col = b * D*d + dir * d + j, so
 * consecutive threads of a warp touch consecutive elements of h, c, x, grad_h (and runs of k
 * consecutive values of U): every step's accesses are coalesced. One thread per column walks
 * time: forward in its direction's order, backward in reverse, with the cell state (forward)
 * or its gradient (backward) in a register. The next step's loads (U, x, grad_h, c_prev, the
 * padding flag) are issued before the current step's math, so their latency overlaps it.
 * Blocks of SRU_THREADS = 128 threads (B * D*d = 16384 columns at the paper's d = 512 make 128
 * blocks, about one per SM of an H100 / H200); a grid-stride loop covers more columns than
 * one grid holds.
 *
 * Parameter gradients without atomics: the backward thread of a column sums its d v_f, d v_r,
 * d b_f, d b_r over time in registers (float for f32 / f16 / bf16, double for f64, as the CPU)
 * and writes them to a scratch buffer partial (B, 4, D*d) from the caching allocator; a second
 * kernel, one thread per entry of (4, D*d) (or (2, D*d) without weight_c), sums the B partials
 * in a fixed order in double and adds the sum to grad_weight_c / grad_bias once. The results
 * do not depend on the launch configuration and are the same from run to run.
 *
 * Padding (mask_pad nonzero at (t, b)), as on the CPU: c carries (c_t = c_{t-1}), h = 0;
 * backward, the gradient of c passes through unchanged and U, x get zero gradient there.
 *
 * Everything is queued on tn_cuda_stream_now(); no host synchronisation. Every launch is
 * followed by TN_CUDA_CHECK_LAUNCH() and every runtime call is checked.
 */
#include "common.cuh"

#include "kernels/sru.h"

enum { SRU_THREADS = 128 };

/* ---- math type and the shared per-element step ------------------------------------------------ */

static __device__ __forceinline__ float sru_fwd(float u0, float u1, float u2, float xp, float vf, float vr, float bf,
                                                float br, float mc, float cp, int act, int skip, float *h) {
    return tn_sru_fwd_f(u0, u1, u2, xp, vf, vr, bf, br, mc, cp, act, skip, h);
}
static __device__ __forceinline__ double sru_fwd(double u0, double u1, double u2, double xp, double vf, double vr,
                                                 double bf, double br, double mc, double cp, int act, int skip,
                                                 double *h) {
    return tn_sru_fwd_d(u0, u1, u2, xp, vf, vr, bf, br, mc, cp, act, skip, h);
}
static __device__ __forceinline__ float sru_bwd(float u0, float u1, float u2, float xp, float vf, float vr, float bf,
                                                float br, float mc, float cp, float gh, float gc, int act, int skip,
                                                float *du0, float *du1, float *du2, float *dxp) {
    return tn_sru_bwd_f(u0, u1, u2, xp, vf, vr, bf, br, mc, cp, gh, gc, act, skip, du0, du1, du2, dxp);
}
static __device__ __forceinline__ double sru_bwd(double u0, double u1, double u2, double xp, double vf, double vr,
                                                 double bf, double br, double mc, double cp, double gh, double gc,
                                                 int act, int skip, double *du0, double *du1, double *du2,
                                                 double *dxp) {
    return tn_sru_bwd_d(u0, u1, u2, xp, vf, vr, bf, br, mc, cp, gh, gc, act, skip, du0, du1, du2, dxp);
}

/* One step's inputs of a column. */
template <typename M> struct sru_in {
    M u0, u1, u2, u3, x; /* U's k values; x (0 when unused) */
    int pad;             /* mask_pad nonzero at (t, b) */
};

/* The inputs of step (t, b) of the column at row offset row = (t * B + b) * Dd + cd. */
template <typename T, typename M>
static __device__ __forceinline__ sru_in<M> sru_load(const T *U, const T *x, const uint8_t *mask_pad, int64_t t,
                                                     int64_t b, int64_t B, int64_t row, int K) {
    sru_in<M> in;
    in.pad = mask_pad ? mask_pad[t * B + b] != 0 : 0;
    const T *u = U + row * K;
    in.u0 = tn_cuda_load(u);
    in.u1 = tn_cuda_load(u + 1);
    in.u2 = tn_cuda_load(u + 2);
    in.u3 = K == 4 ? (M)tn_cuda_load(u + 3) : (M)0;
    in.x = x ? (M)tn_cuda_load(x + row) : (M)0;
    return in;
}

/* A column's constants: v_f, v_r (0 for v1), b_f, b_r, and its dropout mask value (1 without). */
template <typename M> struct sru_col {
    M vf, vr, bf, br, mc;
};

template <typename T, typename M>
static __device__ __forceinline__ sru_col<M> sru_col_load(const T *weight_c, const T *bias, const T *mask_c,
                                                          int64_t cd, int64_t col, int64_t Dd) {
    sru_col<M> p;
    p.vf = weight_c ? (M)tn_cuda_load(weight_c + cd) : (M)0;
    p.vr = weight_c ? (M)tn_cuda_load(weight_c + Dd + cd) : (M)0;
    p.bf = tn_cuda_load(bias + cd);
    p.br = tn_cuda_load(bias + Dd + cd);
    p.mc = mask_c ? (M)tn_cuda_load(mask_c + col) : (M)1;
    return p;
}

/* ---- forward ------------------------------------------------------------------------------------ */

/* One thread per column (b, cd), cd = dir * d + j in [0, Dd). */
template <typename T>
__global__ void __launch_bounds__(SRU_THREADS)
sru_fwd_kernel(T *h,                 // (L, B, Dd)
               T *c,                 // (L, B, Dd)
               T *c_last,            // (B, Dd)
               const T *U,           // (L, B, Dd*k)
               const T *x,           // (L, B, Dd) or NULL (k == 4 or no skip)
               const T *weight_c,    // (2, Dd) or NULL (v1)
               const T *bias,        // (2, Dd)
               const T *c0,          // (B, Dd) or NULL
               const T *mask_c,      // (B, Dd) or NULL
               const uint8_t *mask_pad, // (L, B) or NULL
               int64_t L, int64_t B, int64_t d, int64_t Dd, int K, int act, int skip, double scale_x) {
    typedef typename tn_cuda_math<T>::type M;
    const M sx = (M)scale_x;
    TN_CUDA_GRID_LOOP(col, B * Dd) {
        const int64_t b = col / Dd, cd = col % Dd, dir = cd / d;
        const sru_col<M> k = sru_col_load<T, M>(weight_c, bias, mask_c, cd, col, Dd);
        M cp = c0 ? (M)tn_cuda_load(c0 + col) : (M)0;
        int64_t t = dir ? L - 1 : 0;
        sru_in<M> nx = sru_load<T, M>(U, x, mask_pad, t, b, B, t * B * Dd + col, K);
        for (int64_t s = 0; s < L; s++) {
            const sru_in<M> in = nx;
            const int64_t row = t * B * Dd + col;
            const int64_t tn = dir ? t - 1 : t + 1;
            if (s + 1 < L) nx = sru_load<T, M>(U, x, mask_pad, tn, b, B, tn * B * Dd + col, K); /* prefetch */
            if (in.pad) {
                tn_cuda_store(c + row, cp);
                tn_cuda_store(h + row, (M)0);
            } else {
                const M xp = K == 4 ? in.u3 : sx * in.x;
                M hv;
                cp = sru_fwd(in.u0, in.u1, in.u2, xp, k.vf, k.vr, k.bf, k.br, k.mc, cp, act, skip, &hv);
                tn_cuda_store(c + row, cp);
                tn_cuda_store(h + row, hv);
            }
            t = tn;
        }
        tn_cuda_store(c_last + col, cp);
    }
}

/* ---- backward ----------------------------------------------------------------------------------- */

/* One thread per column, walking its direction's steps in reverse. P is the type of the
 * partial sums (float, or double for f64). */
template <typename T, typename P>
__global__ void __launch_bounds__(SRU_THREADS)
sru_bwd_kernel(T *grad_U,            // (L, B, Dd*k)
               T *grad_x,            // (L, B, Dd) or NULL (not written: k == 4, no skip, or not wanted)
               T *grad_c0,           // (B, Dd) or NULL
               P *partial,           // (B, 4, Dd): d v_f, d v_r, d b_f, d b_r of each column
               const T *grad_h,      // (L, B, Dd)
               const T *grad_c_last, // (B, Dd) or NULL
               const T *U,           // (L, B, Dd*k)
               const T *x,           // (L, B, Dd) or NULL
               const T *weight_c,    // (2, Dd) or NULL
               const T *bias,        // (2, Dd)
               const T *c0,          // (B, Dd) or NULL
               const T *c,           // (L, B, Dd) from the forward
               const T *mask_c,      // (B, Dd) or NULL
               const uint8_t *mask_pad, // (L, B) or NULL
               int64_t L, int64_t B, int64_t d, int64_t Dd, int K, int act, int skip, double scale_x) {
    typedef typename tn_cuda_math<T>::type M;
    const M sx = (M)scale_x;
    TN_CUDA_GRID_LOOP(col, B * Dd) {
        const int64_t b = col / Dd, cd = col % Dd, dir = cd / d;
        const sru_col<M> k = sru_col_load<T, M>(weight_c, bias, mask_c, cd, col, Dd);
        const M c0v = c0 ? (M)tn_cuda_load(c0 + col) : (M)0;
        M gc = grad_c_last ? (M)tn_cuda_load(grad_c_last + col) : (M)0;
        P avf = 0, avr = 0, abf = 0, abr = 0;
        /* step s = L-1 .. 0 of the direction's order is time t = s (dir 0) or L-1-s (dir 1);
         * the step before it (s - 1) is time t - 1 (dir 0) or t + 1 (dir 1) */
        int64_t s = L - 1, t = dir ? 0 : L - 1;
        const int64_t back = dir ? 1 : -1; /* time of step s - 1 = t + back */
        sru_in<M> nx = sru_load<T, M>(U, x, mask_pad, t, b, B, t * B * Dd + col, K);
        M ngh = tn_cuda_load(grad_h + t * B * Dd + col);
        M ncp = s > 0 ? (M)tn_cuda_load(c + (t + back) * B * Dd + col) : c0v;
        for (; s >= 0; s--) {
            const sru_in<M> in = nx;
            const M gh = ngh, cp = ncp;
            const int64_t row = t * B * Dd + col;
            const int64_t tn = t + back;
            if (s > 0) { /* prefetch step s - 1 (time tn) */
                nx = sru_load<T, M>(U, x, mask_pad, tn, b, B, tn * B * Dd + col, K);
                ngh = tn_cuda_load(grad_h + tn * B * Dd + col);
                ncp = s > 1 ? (M)tn_cuda_load(c + (tn + back) * B * Dd + col) : c0v;
            }
            T *gu = grad_U + row * K;
            if (in.pad) {
                for (int q = 0; q < K; q++) tn_cuda_store(gu + q, (M)0);
                if (grad_x) tn_cuda_store(grad_x + row, (M)0);
            } else {
                const M xp = K == 4 ? in.u3 : sx * in.x;
                M du0, du1, du2, dxp;
                gc = sru_bwd(in.u0, in.u1, in.u2, xp, k.vf, k.vr, k.bf, k.br, k.mc, cp, gh, gc, act, skip, &du0, &du1, &du2,
                             &dxp);
                tn_cuda_store(gu, du0);
                tn_cuda_store(gu + 1, du1);
                tn_cuda_store(gu + 2, du2);
                if (K == 4) tn_cuda_store(gu + 3, dxp);
                if (grad_x) tn_cuda_store(grad_x + row, sx * dxp);
                avf += (P)(du1 * cp);
                avr += (P)(du2 * cp);
                abf += (P)du1;
                abr += (P)du2;
            }
            t = tn;
        }
        if (grad_c0) tn_cuda_store(grad_c0 + col, gc);
        P *pt = partial + b * 4 * Dd + cd;
        pt[0] = avf;
        pt[Dd] = avr;
        pt[2 * Dd] = abf;
        pt[3 * Dd] = abr;
    }
}

/* grad_weight_c / grad_bias += the partials summed over b in order (in double), one thread per
 * reduced entry i of (4 - q0, Dd): q = q0 + i / Dd (0, 1: weight_c's v_f, v_r; 2, 3: bias's
 * b_f, b_r), column i % Dd. */
template <typename T, typename P>
__global__ void sru_reduce_kernel(T *gw,             // (2, Dd) or NULL (q0 == 2)
                                  T *gb,             // (2, Dd)
                                  const P *partial,  // (B, 4, Dd)
                                  int64_t B, int64_t Dd, int64_t q0) {
    typedef typename tn_cuda_math<T>::type M;
    TN_CUDA_GRID_LOOP(i, (4 - q0) * Dd) {
        const int64_t q = q0 + i / Dd, colj = i % Dd, o = (q & 1) * Dd + colj;
        const P *p = partial + q * Dd + colj;
        double sum = 0;
        for (int64_t b = 0; b < B; b++) sum += (double)p[b * 4 * Dd];
        T *g = (q < 2 ? gw : gb) + o;
        tn_cuda_store(g, (M)((double)tn_cuda_load(g) + sum));
    }
}

/* ---- launches ---------------------------------------------------------------------------------- */

static unsigned sru_blocks(int64_t n) {
    int64_t b = (n + SRU_THREADS - 1) / SRU_THREADS;
    if (b < 1) b = 1;
    if (b > 65535 * 32) b = 65535 * 32;
    return (unsigned)b;
}

template <typename T> struct sru_forward_run {
    static tn_status run(const tn_sru_args *a) {
        const cudaStream_t st = tn_cuda_stream_now();
        const int64_t nbd = a->B * a->Dd;
        const size_t es = sizeof(T);
        if (a->L == 0) { /* no steps: the last state is the initial one */
            if (nbd == 0) return TN_OK;
            if (a->c0)
                return TN_CUDA_CHECK(cudaMemcpyAsync(a->c_last, a->c0, (size_t)nbd * es, cudaMemcpyDeviceToDevice, st));
            return TN_CUDA_CHECK(cudaMemsetAsync(a->c_last, 0, (size_t)nbd * es, st)); /* 0 bits: +0 in every float */
        }
        if (nbd == 0) return TN_OK;
        sru_fwd_kernel<T><<<sru_blocks(nbd), SRU_THREADS, 0, st>>>(
            (T *)a->h, (T *)a->c, (T *)a->c_last, (const T *)a->U, (const T *)a->x, (const T *)a->weight_c,
            (const T *)a->bias, (const T *)a->c0, (const T *)a->mask_c, a->mask_pad, a->L, a->B, a->d, a->Dd,
            (int)a->k, a->act, a->skip, a->scale_x);
        return TN_CUDA_CHECK_LAUNCH();
    }
};

template <typename T> struct sru_backward_run {
    static tn_status run(const tn_sru_args *a, void *grad_x_all, void *gw, void *gb) {
        typedef typename tn_cuda_math<T>::type M;
        typedef M P; /* partial sums: float (f32 / f16 / bf16) or double (f64), as the CPU's T */
        const cudaStream_t st = tn_cuda_stream_now();
        const int64_t nbd = a->B * a->Dd;
        const size_t es = sizeof(T);
        /* grad_x is written only where x' = scale_x * x; elsewhere it is zero */
        if (grad_x_all && !(a->k == 3 && a->skip) && a->L * nbd > 0)
            TN_TRY(TN_CUDA_CHECK(cudaMemsetAsync(grad_x_all, 0, (size_t)(a->L * nbd) * es, st)));
        if (a->L == 0) { /* no steps: d c_last / d c0 = identity */
            if (a->grad_c0 && nbd > 0) {
                if (a->grad_c_last)
                    return TN_CUDA_CHECK(cudaMemcpyAsync(a->grad_c0, a->grad_c_last, (size_t)nbd * es,
                                                         cudaMemcpyDeviceToDevice, st));
                return TN_CUDA_CHECK(cudaMemsetAsync(a->grad_c0, 0, (size_t)nbd * es, st));
            }
            return TN_OK;
        }
        if (nbd == 0) return TN_OK;
        tn_tensor *partial = NULL;
        const int64_t pshape[3] = {a->B, 4, a->Dd};
        if (tn_tensor_empty(&partial, 3, pshape, sizeof(P) == 8 ? TN_F64 : TN_F32, TN_CUDA) != TN_OK)
            return tn_error(TN_ERR_OOM, "sru_backward: cannot allocate scratch (B, 4, D*d) = [%lld, 4, %lld] on cuda: %s",
                            (long long)a->B, (long long)a->Dd, tn_last_error());
        sru_bwd_kernel<T, P><<<sru_blocks(nbd), SRU_THREADS, 0, st>>>(
            (T *)a->grad_U, (T *)a->grad_x, (T *)a->grad_c0, (P *)partial->data, (const T *)a->grad_h,
            (const T *)a->grad_c_last, (const T *)a->U, (const T *)a->x, (const T *)a->weight_c, (const T *)a->bias,
            (const T *)a->c0, (const T *)a->c, (const T *)a->mask_c, a->mask_pad, a->L, a->B, a->d, a->Dd,
            (int)a->k, a->act, a->skip, a->scale_x);
        tn_status s = TN_CUDA_CHECK_LAUNCH();
        if (s == TN_OK) {
            const int64_t q0 = gw ? 0 : 2, nred = (4 - q0) * a->Dd;
            sru_reduce_kernel<T, P><<<tn_cuda_blocks(nred), TN_CUDA_THREADS, 0, st>>>(
                (T *)gw, (T *)gb, (const P *)partial->data, a->B, a->Dd, q0);
            s = TN_CUDA_CHECK_LAUNCH();
        }
        /* the pool frees the block for reuse on this stream, after the kernels queued on it */
        tn_tensor_free(partial);
        return s;
    }
};

extern "C" tn_status tn_cuda_sru_forward(const tn_sru_args *a) {
    switch (a->dtype) {
    case TN_F32: return sru_forward_run<float>::run(a);
    case TN_F64: return sru_forward_run<double>::run(a);
    case TN_F16: return sru_forward_run<tn_f16>::run(a);
    case TN_BF16: return sru_forward_run<tn_bf16>::run(a);
    default: return tn_error(TN_ERR_DTYPE, "sru_forward: internal error: dtype %s on cuda", tn_dtype_name(a->dtype));
    }
}

extern "C" tn_status tn_cuda_sru_backward(const tn_sru_args *a, void *grad_x_all, void *grad_weight_c,
                                          void *grad_bias) {
    switch (a->dtype) {
    case TN_F32: return sru_backward_run<float>::run(a, grad_x_all, grad_weight_c, grad_bias);
    case TN_F64: return sru_backward_run<double>::run(a, grad_x_all, grad_weight_c, grad_bias);
    case TN_F16: return sru_backward_run<tn_f16>::run(a, grad_x_all, grad_weight_c, grad_bias);
    case TN_BF16: return sru_backward_run<tn_bf16>::run(a, grad_x_all, grad_weight_c, grad_bias);
    default: return tn_error(TN_ERR_DTYPE, "sru_backward: internal error: dtype %s on cuda", tn_dtype_name(a->dtype));
    }
}
