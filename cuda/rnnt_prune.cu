/*
 * cuda/rnnt_prune.cu — the CUDA backend of core/rnnt_prune.c: the joint and pruned logprobs
 * (tn_rnnt_logprobs_joint / _pruned and their backward), tn_rnnt_prune_ranges,
 * tn_rnnt_do_pruning(_backward) and the fused joiner unit tn_rnnt_pruned_tanh(_backward);
 * f32 and f64 (do_pruning: every float dtype, moved as bits).
 *
 * Gradient policy: every gradient here is an activation gradient and is written (=).
 *
 * Band logprobs: one warp per logits row (b, t, k) (8 rows per block), as the CPU's row loop:
 * max, sum of exp and lse by warp shuffles (f32: tn_exp_f and the sum in float, lse through
 * double as on the CPU), then the two gathers; the backward writes each row once, in place when
 * grad_logits is the logits tensor (every lane reads x[j] before writing g[j], the symbol and
 * termination additions follow a __syncwarp on lane 0). px / py outside the band are filled with
 * -inf first; each (b, s, t) inside it belongs to one row.
 *
 * prune_ranges: one thread per (b, t) for the argmax over the band start (sums in the dtype, in
 * the CPU's order), then one thread per utterance for k2's _adjust_pruning_lower_bound (two
 * monotone sweeps over T) and the write of (B, T, R). The s_range check
 * (tn_rnnt_prune_s_range's rule) runs on one device thread.
 *
 * do_pruning_backward and pruned_tanh_backward: one thread per (b, d) column owns its entries of
 * grad_lm[b] (and grad_am[b]) and walks (t, k) in the CPU's order: no atomics, the CPU's sums.
 */
#include "rnnt.cuh"

#include <float.h>

extern "C" {
#include "rnnt_common.h"
}

enum { BAND_WARPS = 8 };

struct band_dev {
    int64_t B, T, R, S, C, T0, term;
    int32_t type;
    const void *rng;      /* ranges (B, T, R) or NULL (joint: s_begin 0) */
    int32_t ritype;
    int64_t rs0, rs1;     /* its strides (elements) of dims 0, 1 */
    const int64_t *sym;   /* (B, S), clamped */
    rnnt_bnd_arg bnd;
};

/* the band start of frame (b, t), clamped to [0, S+1-R] */
static __device__ __forceinline__ int64_t band_start(const band_dev &c, int64_t b, int64_t t) {
    if (!c.rng) return 0;
    int64_t s0 = rnnt_ld_idx(c.rng, c.ritype, b * c.rs0 + t * c.rs1);
    const int64_t hi = c.S + 1 - c.R;
    return s0 < 0 ? 0 : s0 > hi ? hi : s0;
}

/* Log-sum-exp of a row of C logits of storage type L (f16 / bf16 read as f32), by one warp. */
template <typename F> struct band_math;
template <> struct band_math<float> {
    template <typename L>
    static __device__ __forceinline__ double lse(const L *x, int64_t C, int lane) {
        float m = -INFINITY;
        for (int64_t c = lane; c < C; c += 32) {
            const float v = tn_cuda_load(x + c);
            m = v > m ? v : m;
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, m, o);
            m = v > m ? v : m;
        }
        float sum = 0.0f;
        for (int64_t c = lane; c < C; c += 32) sum += tn_exp_f(tn_cuda_load(x + c) - m);
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        return (double)(float)((double)m + log((double)sum));
    }
};
template <> struct band_math<double> {
    static __device__ __forceinline__ double lse(const double *x, int64_t C, int lane) {
        double m = -INFINITY;
        for (int64_t c = lane; c < C; c += 32) m = x[c] > m ? x[c] : m;
        for (int o = 16; o > 0; o >>= 1) {
            const double v = __shfl_xor_sync(0xffffffffu, m, o);
            m = v > m ? v : m;
        }
        double sum = 0.0;
        for (int64_t c = lane; c < C; c += 32) sum += exp(x[c] - m);
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        return m + log(sum);
    }
};

template <typename F>
__global__ void band_fill_kernel(F *p, int64_t n) {
    TN_CUDA_GRID_LOOP(i, n) p[i] = (F)-INFINITY;
}

/* L: the logits' storage type (float, double, tn_f16, tn_bf16); F: the math and output type */
template <typename L, typename F = typename tn_cuda_math<L>::type>
__global__ void __launch_bounds__(BAND_WARPS * 32) band_fwd_kernel(const band_dev c, const L *logits, F *px, F *py,
                                                                   F *lse, unsigned long long *flag) {
    const int lane = threadIdx.x & 31;
    const int64_t nrows = c.B * c.T * c.R, S = c.S, T = c.T, R = c.R, C = c.C;
    for (int64_t r = (int64_t)blockIdx.x * BAND_WARPS + (threadIdx.x >> 5); r < nrows;
         r += (int64_t)gridDim.x * BAND_WARPS) {
        const int64_t b = r / (T * R), t = (r / R) % T, k = r % R, s = band_start(c, b, t) + k;
        const L *x = logits + r * C;
        const double l = band_math<F>::lse(x, C, lane);
        if (lane != 0) continue;
        if (!(fabs(l) <= DBL_MAX)) {
            atomicMin(flag, (unsigned long long)r);
            continue;
        }
        if (lse) lse[r] = (F)l;
        const F lf = (F)l;
        py[(b * (S + 1) + s) * T + t] = (F)tn_cuda_load(x + c.term) - lf;
        if (s < S) px[(b * S + s) * c.T0 + t] = (F)tn_cuda_load(x + c.sym[b * S + s]) - lf;
    }
}

template <typename L, typename F = typename tn_cuda_math<L>::type>
__global__ void __launch_bounds__(BAND_WARPS * 32) band_bwd_kernel(const band_dev c, const L *logits, L *grad,
                                                                   const F *gpx, const F *gpy, const F *lse) {
    const int lane = threadIdx.x & 31;
    const int64_t nrows = c.B * c.T * c.R, S = c.S, T = c.T, R = c.R, C = c.C, T0 = c.T0;
    for (int64_t r = (int64_t)blockIdx.x * BAND_WARPS + (threadIdx.x >> 5); r < nrows;
         r += (int64_t)gridDim.x * BAND_WARPS) {
        const int64_t b = r / (T * R), t = (r / R) % T, k = r % R, s = band_start(c, b, t) + k;
        tn_rnnt_bnd bd;
        rnnt_bnd_load(c.bnd, b, S, T, 0, &bd);
        double gx = 0.0, gy = (double)gpy[(b * (S + 1) + s) * T + t];
        if (s < S && !(c.type == TN_RNNT_REGULAR && c.bnd.p && t == bd.t1)) gx = (double)gpx[(b * S + s) * T0 + t];
        if (c.type == TN_RNNT_CONSTRAINED && s >= 1) gy += (double)gpx[(b * S + s - 1) * T0 + t];
        const L *x = logits + r * C;
        L *g = grad + r * C;
        const F l = lse ? lse[r] : (F)band_math<F>::lse(x, C, lane);
        const F gs = (F)(gx + gy);
        const int64_t sym = s < S ? c.sym[b * S + s] : -1;
        /* each lane reads x[j] and then writes g[j] (in place: g may be x); the symbol and
         * termination terms are added before the store, in the CPU's order, so an f16 / bf16
         * gradient is rounded once */
        for (int64_t j = lane; j < C; j += 32) {
            F v;
            if (sizeof(F) == 8) v = (F)tn_rnnt_lsm_grad_d((double)tn_cuda_load(x + j), (double)l, (double)gs);
            else v = (F)tn_rnnt_lsm_grad_f((float)tn_cuda_load(x + j), (float)l, (float)gs);
            if (j == sym) v += (F)gx;
            if (j == c.term) v += (F)gy;
            tn_cuda_store(g + j, v);
        }
    }
}

/* ranges (B, T, R) of the pruned band: s_begin, s_begin+1, ... with 0 <= s_begin <= S+1-R */
__global__ void band_ranges_check_kernel(const void *rng, int32_t itype, int64_t s0, int64_t s1, int64_t s2, int64_t B,
                                         int64_t T, int64_t R, int64_t S, unsigned long long *flag) {
    TN_CUDA_GRID_LOOP(i, B * T) {
        const int64_t b = i / T, t = i % T, base = b * s0 + t * s1, v0 = rnnt_ld_idx(rng, itype, base);
        int ok = v0 >= 0 && v0 + R <= S + 1;
        for (int64_t k = 1; ok && k < R; k++) ok = rnnt_ld_idx(rng, itype, base + k * s2) == v0 + k;
        if (!ok) atomicMin(flag, (unsigned long long)i);
    }
}

static band_dev band_dev_of(const tn_tensor *logits, const tn_tensor *symbols, const tn_tensor *ranges,
                            const tn_tensor *boundary, int64_t term, int32_t rnnt_type) {
    band_dev c;
    memset(&c, 0, sizeof c);
    c.B = logits->shape[0], c.T = logits->shape[1], c.R = logits->shape[2], c.C = logits->shape[3];
    c.S = symbols->shape[1], c.term = term, c.type = rnnt_type;
    c.T0 = rnnt_type == TN_RNNT_REGULAR ? c.T + 1 : c.T;
    if (ranges) c.rng = ranges->data, c.ritype = ranges->dtype, c.rs0 = ranges->strides[0], c.rs1 = ranges->strides[1];
    c.bnd = rnnt_bnd_of(boundary);
    return c;
}

static unsigned band_blocks(int64_t rows) {
    int64_t n = (rows + BAND_WARPS - 1) / BAND_WARPS;
    if (n < 1) n = 1;
    if (n > 65535 * 32) n = 65535 * 32;
    return (unsigned)n;
}

/* band_setup's value checks on the device, in its order: symbols, boundary rows, ranges */
static tn_status band_checks(const char *op, const band_dev &c, const tn_tensor *symbols, const tn_tensor *ranges,
                             const tn_tensor *boundary, int32_t rnnt_type, cudaStream_t st) {
    TN_TRY(rnnt_check_symbols(op, symbols, c.C, st));
    TN_TRY(rnnt_check_boundary(op, boundary, c.S, c.T, rnnt_type != TN_RNNT_REGULAR, st));
    if (!ranges || c.B * c.T == 0) return TN_OK;
    tn_tensor *flag = NULL;
    TN_TRY(rnnt_flags_new(&flag, 1, st));
    unsigned long long *fl = (unsigned long long *)flag->data;
    band_ranges_check_kernel<<<tn_cuda_blocks(c.B * c.T), TN_CUDA_THREADS, 0, st>>>(
        ranges->data, ranges->dtype, ranges->strides[0], ranges->strides[1], ranges->strides[2], c.B, c.T, c.R, c.S, fl);
    tn_status rc = TN_CUDA_CHECK_LAUNCH();
    if (rc == TN_OK) {
        rnnt_check_desc d;
        memset(&d, 0, sizeof d);
        d.op = rnnt_op_id(op), d.kind = RK_BAND_RANGES, d.itype = ranges->dtype, d.idx = ranges->data;
        d.is0 = ranges->strides[0], d.is1 = ranges->strides[1];
        d.c[0] = c.T, d.c[1] = c.R - 1, d.c[2] = c.S + 1 - c.R;
        rc = rnnt_record(d, fl, st);
    }
    tn_tensor_free(flag);
    return rc;
}

extern "C" tn_status tn_cuda_rnnt_band(const char *op, tn_tensor *px, tn_tensor *py, tn_tensor *lse,
                                       const tn_tensor *logits, const tn_tensor *symbols, const tn_tensor *ranges,
                                       const tn_tensor *boundary, int64_t term, int32_t rnnt_type,
                                       double delay_penalty) {
    const cudaStream_t st = tn_cuda_stream_now();
    band_dev c = band_dev_of(logits, symbols, ranges, boundary, term, rnnt_type);
    const int f64 = logits->dtype == TN_F64; /* px, py, lse: f64, or f32 for f32 / f16 / bf16 logits */
    const int64_t nrows = c.B * c.T * c.R;
    /* the CPU's order of checks: symbols, boundary, ranges; then the rows */
    TN_TRY(band_checks(op, c, symbols, ranges, boundary, rnnt_type, st));
    tn_tensor *flag = NULL, *sym = NULL;
    TN_TRY(rnnt_flags_new(&flag, 1, st));
    unsigned long long *fl = (unsigned long long *)flag->data;
    rnnt_check_desc d;
    tn_status rc = rnnt_symbols_i64(&sym, symbols, c.C, st);
    if (rc == TN_OK) {
        c.sym = (const int64_t *)sym->data;
        const int64_t npx = c.B * c.S * c.T0, npy = c.B * (c.S + 1) * c.T;
        if (f64) {
            if (npx) band_fill_kernel<double><<<tn_cuda_blocks(npx), TN_CUDA_THREADS, 0, st>>>((double *)px->data, npx);
            if (npy) band_fill_kernel<double><<<tn_cuda_blocks(npy), TN_CUDA_THREADS, 0, st>>>((double *)py->data, npy);
        } else {
            if (npx) band_fill_kernel<float><<<tn_cuda_blocks(npx), TN_CUDA_THREADS, 0, st>>>((float *)px->data, npx);
            if (npy) band_fill_kernel<float><<<tn_cuda_blocks(npy), TN_CUDA_THREADS, 0, st>>>((float *)py->data, npy);
        }
        rc = TN_CUDA_CHECK_LAUNCH();
    }
    if (rc == TN_OK && nrows > 0) {
        const unsigned nb = band_blocks(nrows), nt = BAND_WARPS * 32;
        float *pxf = (float *)px->data, *pyf = (float *)py->data, *lf = lse ? (float *)lse->data : NULL;
        switch (logits->dtype) {
        case TN_F64:
            band_fwd_kernel<double><<<nb, nt, 0, st>>>(c, (const double *)logits->data, (double *)px->data,
                                                       (double *)py->data, lse ? (double *)lse->data : NULL, fl);
            break;
        case TN_F16:
            band_fwd_kernel<tn_f16><<<nb, nt, 0, st>>>(c, (const tn_f16 *)logits->data, pxf, pyf, lf, fl);
            break;
        case TN_BF16:
            band_fwd_kernel<tn_bf16><<<nb, nt, 0, st>>>(c, (const tn_bf16 *)logits->data, pxf, pyf, lf, fl);
            break;
        default:
            band_fwd_kernel<float><<<nb, nt, 0, st>>>(c, (const float *)logits->data, pxf, pyf, lf, fl);
            break;
        }
        rc = TN_CUDA_CHECK_LAUNCH();
        if (rc == TN_OK) {
            memset(&d, 0, sizeof d);
            d.op = rnnt_op_id(op), d.kind = RK_BAND_ROW;
            for (int k = 0; k < 4; k++) d.c[3 + k] = logits->shape[k];
            rc = rnnt_record(d, fl, st);
        }
    }
    /* the CPU skips the post-processing after a bad row; here the error discards the result */
    if (rc == TN_OK)
        rc = rnnt_post(px->data, py->data, f64, boundary, c.B, c.S, c.T, rnnt_type, delay_penalty, st);
    tn_tensor_free(sym);
    tn_tensor_free(flag);
    return rc;
}

extern "C" tn_status tn_cuda_rnnt_band_backward(const char *op, tn_tensor *grad_logits, const tn_tensor *grad_px,
                                                const tn_tensor *grad_py, const tn_tensor *logits, const tn_tensor *lse,
                                                const tn_tensor *symbols, const tn_tensor *ranges,
                                                const tn_tensor *boundary, int64_t term, int32_t rnnt_type) {
    const cudaStream_t st = tn_cuda_stream_now();
    band_dev c = band_dev_of(logits, symbols, ranges, boundary, term, rnnt_type);
    const int64_t nrows = c.B * c.T * c.R;
    TN_TRY(band_checks(op, c, symbols, ranges, boundary, rnnt_type, st)); /* as the CPU's backward */
    if (nrows == 0) return TN_OK;
    tn_tensor *sym = NULL;
    TN_TRY(rnnt_symbols_i64(&sym, symbols, c.C, st));
    c.sym = (const int64_t *)sym->data;
    const unsigned nb = band_blocks(nrows), nt = BAND_WARPS * 32;
    const float *gxf = (const float *)grad_px->data, *gyf = (const float *)grad_py->data;
    const float *lf = lse ? (const float *)lse->data : NULL;
    switch (logits->dtype) {
    case TN_F64:
        band_bwd_kernel<double><<<nb, nt, 0, st>>>(c, (const double *)logits->data, (double *)grad_logits->data,
                                                   (const double *)grad_px->data, (const double *)grad_py->data,
                                                   lse ? (const double *)lse->data : NULL);
        break;
    case TN_F16:
        band_bwd_kernel<tn_f16><<<nb, nt, 0, st>>>(c, (const tn_f16 *)logits->data, (tn_f16 *)grad_logits->data, gxf,
                                                   gyf, lf);
        break;
    case TN_BF16:
        band_bwd_kernel<tn_bf16><<<nb, nt, 0, st>>>(c, (const tn_bf16 *)logits->data, (tn_bf16 *)grad_logits->data,
                                                    gxf, gyf, lf);
        break;
    default:
        band_bwd_kernel<float><<<nb, nt, 0, st>>>(c, (const float *)logits->data, (float *)grad_logits->data, gxf, gyf,
                                                  lf);
        break;
    }
    const tn_status rc = TN_CUDA_CHECK_LAUNCH();
    tn_tensor_free(sym);
    return rc;
}

/* ---- prune ranges ----------------------------------------------------------------------------- */

/* tn_rnnt_prune_s_range's rule (core/rnnt_prune.c prune_s_range_of) on one thread; a value other
 * than R goes to flag */
__global__ void prune_srange_kernel(rnnt_bnd_arg ba, int64_t B, int64_t S, int64_t T, int regular, int64_t R,
                                    unsigned long long *flag) {
    int64_t s_range = R;
    if (S == 0) {
        s_range = 1;
    } else {
        if (regular) {
            int64_t mn = 2;
            for (int64_t b = 0; b < B; b++) {
                tn_rnnt_bnd bd;
                rnnt_bnd_load(ba, b, S, T, 0, &bd);
                if (bd.t1 > 0) {
                    const int64_t v = (bd.s1 - 1) / bd.t1 + 2;
                    if (v > mn) mn = v;
                }
            }
            if (s_range < mn) s_range = mn;
        } else if (s_range < 1) {
            s_range = 1;
        }
        if (s_range > S) s_range = S + 1;
    }
    if (s_range != R) *flag = (unsigned long long)s_range;
}

/* sbeg[b, t]: the argmax over the band start, one thread per (b, t) (core/rnnt_prune.c) */
template <typename F>
__global__ void prune_argmax_kernel(const F *pxg, const F *pyg, rnnt_bnd_arg ba, int64_t B, int64_t S, int64_t T,
                                    int64_t T0, int64_t R, int need, int64_t *sbeg) {
    const int64_t S1 = S + 1;
    TN_CUDA_GRID_LOOP(i, B * T) {
        const int64_t b = i / T, t = i % T;
        tn_rnnt_bnd bd;
        rnnt_bnd_load(ba, b, S, T, need, &bd);
        if (!ba.p) bd = tn_rnnt_bnd{0, 0, S, T};
        int64_t pad = bd.s1 - R + 1;
        if (pad < 0) pad = 0;
        if (S == 0 || t >= bd.t1 - 1) {
            sbeg[i] = S == 0 ? 0 : pad;
            continue;
        }
        const F *px = pxg + b * S * T0, *py = pyg + b * S1 * T;
        int64_t best_j = 0;
        double best = 0.0;
        for (int64_t j = 0; j + R <= S1; j++) {
            F sum = (F)0;
            for (int64_t k = 0; k < R; k++) sum += py[(j + k) * T + t];
            const double v = (double)(F)(sum - (j > 0 ? px[(j - 1) * T0 + t] : (F)0));
            if (j == 0 || v > best) best = v, best_j = j;
        }
        sbeg[i] = best_j;
    }
}

/* k2's _adjust_pruning_lower_bound and the write of ranges, one thread per utterance */
__global__ void prune_adjust_kernel(int64_t *sbeg, int64_t B, int64_t T, int64_t step) {
    TN_CUDA_GRID_LOOP(b, B) {
        int64_t *x = sbeg + b * T;
        for (int64_t i = T - 2; i >= 0; i--)
            if (x[i + 1] < x[i]) x[i] = x[i + 1];
        for (int64_t t = 0; t < T; t++) x[t] = -(x[t] - (step - 1) * t);
        for (int64_t i = T - 2; i >= 0; i--)
            if (x[i + 1] < x[i]) x[i] = x[i + 1];
        for (int64_t t = 0; t < T; t++) {
            const int64_t v = x[t] < 0 ? 0 : x[t];
            x[t] = -(v - (step - 1) * t);
        }
    }
}

__global__ void prune_write_kernel(const int64_t *sbeg, int64_t *out, int64_t n, int64_t R) {
    TN_CUDA_GRID_LOOP(i, n) out[i] = sbeg[i / R] + i % R;
}

extern "C" tn_status tn_cuda_rnnt_prune_ranges(const char *op, tn_tensor *ranges, const tn_tensor *px_grad,
                                               const tn_tensor *py_grad, const tn_tensor *boundary) {
    const cudaStream_t st = tn_cuda_stream_now();
    const int64_t B = py_grad->shape[0], S = py_grad->shape[1] - 1, T = py_grad->shape[2], T0 = px_grad->shape[2];
    const int64_t R = ranges->shape[2];
    const int regular = T0 == T + 1;
    TN_TRY(rnnt_check_boundary(op, boundary, S, T, !regular, st));
    tn_tensor *flag = NULL, *sb = NULL;
    TN_TRY(rnnt_flags_new(&flag, 1, st));
    unsigned long long *fl = (unsigned long long *)flag->data;
    prune_srange_kernel<<<1, 1, 0, st>>>(rnnt_bnd_of(boundary), B, S, T, regular, R, fl);
    tn_status rc = TN_CUDA_CHECK_LAUNCH();
    if (rc == TN_OK) {
        rnnt_check_desc d;
        memset(&d, 0, sizeof d);
        d.kind = RK_SRANGE, d.op = rnnt_op_id(op);
        d.c[0] = R, d.c[1] = B, d.c[2] = T, d.c[3] = R, d.c[4] = S, d.c[5] = regular;
        rc = rnnt_record(d, fl, st);
    }
    const int64_t n = B * T > 0 ? B * T : 1;
    if (rc == TN_OK) rc = tn_tensor_empty(&sb, 1, &n, TN_I64, TN_CUDA);
    if (rc == TN_OK && B * T > 0) {
        if (py_grad->dtype == TN_F64)
            prune_argmax_kernel<double><<<tn_cuda_blocks(B * T), TN_CUDA_THREADS, 0, st>>>(
                (const double *)px_grad->data, (const double *)py_grad->data, rnnt_bnd_of(boundary), B, S, T, T0, R,
                !regular, (int64_t *)sb->data);
        else
            prune_argmax_kernel<float><<<tn_cuda_blocks(B * T), TN_CUDA_THREADS, 0, st>>>(
                (const float *)px_grad->data, (const float *)py_grad->data, rnnt_bnd_of(boundary), B, S, T, T0, R,
                !regular, (int64_t *)sb->data);
        rc = TN_CUDA_CHECK_LAUNCH();
        if (rc == TN_OK) {
            prune_adjust_kernel<<<tn_cuda_blocks(B), TN_CUDA_THREADS, 0, st>>>((int64_t *)sb->data, B, T,
                                                                               regular ? R : 2);
            rc = TN_CUDA_CHECK_LAUNCH();
        }
        if (rc == TN_OK) {
            prune_write_kernel<<<tn_cuda_blocks(B * T * R), TN_CUDA_THREADS, 0, st>>>((const int64_t *)sb->data,
                                                                                     (int64_t *)ranges->data,
                                                                                     B * T * R, R);
            rc = TN_CUDA_CHECK_LAUNCH();
        }
    }
    tn_tensor_free(sb);
    tn_tensor_free(flag);
    return rc;
}

/* ---- do_pruning and the fused joiner unit ---------------------------------------------------- */

struct rng_arg {
    const void *p;
    int32_t itype;
    int64_t s0, s1, s2;
    int64_t T, R, S1;
};

static rng_arg rng_of(const tn_tensor *ranges, int64_t S1) {
    rng_arg a;
    a.p = ranges->data, a.itype = ranges->dtype;
    a.s0 = ranges->strides[0], a.s1 = ranges->strides[1], a.s2 = ranges->strides[2];
    a.T = ranges->shape[1], a.R = ranges->shape[2], a.S1 = S1;
    return a;
}

/* ranges[b, t, k] for row = (b T + t) R + k, clamped to [0, S+1) */
static __device__ __forceinline__ int64_t rng_at(const rng_arg &a, int64_t row) {
    const int64_t b = row / (a.T * a.R), t = (row / a.R) % a.T, k = row % a.R;
    const int64_t v = rnnt_ld_idx(a.p, a.itype, b * a.s0 + t * a.s1 + k * a.s2);
    return v < 0 ? 0 : v >= a.S1 ? a.S1 - 1 : v;
}

__global__ void rng_check_kernel(const rng_arg a, int64_t n, unsigned long long *flag) {
    TN_CUDA_GRID_LOOP(i, n) {
        const int64_t b = i / (a.T * a.R), t = (i / a.R) % a.T, k = i % a.R;
        const int64_t v = rnnt_ld_idx(a.p, a.itype, b * a.s0 + t * a.s1 + k * a.s2);
        if (v < 0 || v >= a.S1) atomicMin(flag, (unsigned long long)i);
    }
}

/* pruning_check's value check on the device (RK_RANGE_VAL) */
static tn_status rng_check(const char *op, const tn_tensor *ranges, int64_t S1, cudaStream_t st) {
    const int64_t n = tn_tensor_numel(ranges);
    if (n == 0) return TN_OK;
    tn_tensor *flag;
    TN_TRY(rnnt_flags_new(&flag, 1, st));
    unsigned long long *fl = (unsigned long long *)flag->data;
    rng_check_kernel<<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(rng_of(ranges, S1), n, fl);
    tn_status rc = TN_CUDA_CHECK_LAUNCH();
    if (rc == TN_OK) {
        rnnt_check_desc d;
        memset(&d, 0, sizeof d);
        d.kind = RK_RANGE_VAL, d.op = rnnt_op_id(op), d.itype = ranges->dtype, d.idx = ranges->data;
        d.is0 = ranges->strides[0], d.is1 = ranges->strides[1], d.is2 = ranges->strides[2];
        d.c[0] = ranges->shape[1], d.c[1] = ranges->shape[2], d.c[2] = S1;
        rc = rnnt_record(d, fl, st);
    }
    tn_tensor_free(flag);
    return rc;
}

template <typename E>
__global__ void pruning_kernel(E *out, const E *lm, const rng_arg a, int64_t n, int64_t D) {
    TN_CUDA_GRID_LOOP(i, n) {
        const int64_t row = i / D, d = i % D, b = row / (a.T * a.R);
        out[i] = lm[(b * a.S1 + rng_at(a, row)) * D + d];
    }
}

extern "C" tn_status tn_cuda_rnnt_do_pruning(const char *op, tn_tensor *lm_pruned, const tn_tensor *lm,
                                             const tn_tensor *ranges) {
    const cudaStream_t st = tn_cuda_stream_now();
    const int64_t S1 = lm->shape[1], D = lm->shape[2], n = tn_tensor_numel(lm_pruned);
    TN_TRY(rng_check(op, ranges, S1, st));
    if (n == 0 || S1 == 0) return TN_OK;
    const rng_arg a = rng_of(ranges, S1);
    switch (tn_dtype_size(lm->dtype)) {
    case 8: pruning_kernel<uint64_t><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>((uint64_t *)lm_pruned->data, (const uint64_t *)lm->data, a, n, D); break;
    case 4: pruning_kernel<uint32_t><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>((uint32_t *)lm_pruned->data, (const uint32_t *)lm->data, a, n, D); break;
    case 2: pruning_kernel<uint16_t><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>((uint16_t *)lm_pruned->data, (const uint16_t *)lm->data, a, n, D); break;
    default: pruning_kernel<uint8_t><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>((uint8_t *)lm_pruned->data, (const uint8_t *)lm->data, a, n, D); break;
    }
    return TN_CUDA_CHECK_LAUNCH();
}

/* one thread per (b, d): grad_lm[b, :, d] = 0, then += grad_lm_pruned[b, t, k, d] in (t, k) order */
template <typename F>
__global__ void pruning_back_kernel(F *__restrict__ g, const F *__restrict__ src, const rng_arg a, int64_t B,
                                    int64_t D) {
    TN_CUDA_GRID_LOOP(i, B * D) {
        const int64_t b = i / D, d = i % D;
        F *gb = g + b * a.S1 * D + d;
        for (int64_t s = 0; s < a.S1; s++) gb[s * D] = (F)0;
        for (int64_t tk = 0; tk < a.T * a.R; tk++) {
            const int64_t row = b * a.T * a.R + tk;
            gb[rng_at(a, row) * D] += src[row * D + d];
        }
    }
}

extern "C" tn_status tn_cuda_rnnt_do_pruning_backward(const char *op, tn_tensor *grad_lm,
                                                      const tn_tensor *grad_lm_pruned, const tn_tensor *ranges) {
    const cudaStream_t st = tn_cuda_stream_now();
    const int64_t B = grad_lm->shape[0], S1 = grad_lm->shape[1], D = grad_lm->shape[2];
    TN_TRY(rng_check(op, ranges, S1, st));
    if (B * D == 0 || S1 == 0) return TN_OK;
    const rng_arg a = rng_of(ranges, S1);
    if (grad_lm->dtype == TN_F64)
        pruning_back_kernel<double><<<tn_cuda_blocks(B * D), TN_CUDA_THREADS, 0, st>>>(
            (double *)grad_lm->data, (const double *)grad_lm_pruned->data, a, B, D);
    else
        pruning_back_kernel<float><<<tn_cuda_blocks(B * D), TN_CUDA_THREADS, 0, st>>>(
            (float *)grad_lm->data, (const float *)grad_lm_pruned->data, a, B, D);
    return TN_CUDA_CHECK_LAUNCH();
}

template <typename F> static __device__ __forceinline__ F joiner_h(F am, F lm);
template <> __device__ __forceinline__ float joiner_h<float>(float am, float lm) { return tn_rnnt_joiner_h_f(am, lm); }
template <> __device__ __forceinline__ double joiner_h<double>(double am, double lm) { return tn_rnnt_joiner_h_d(am, lm); }
template <typename F> static __device__ __forceinline__ F joiner_dz(F g, F h);
template <> __device__ __forceinline__ float joiner_dz<float>(float g, float h) { return tn_rnnt_joiner_dz_f(g, h); }
template <> __device__ __forceinline__ double joiner_dz<double>(double g, double h) { return tn_rnnt_joiner_dz_d(g, h); }

template <typename F>
__global__ void tanh_fwd_kernel(F *h, const F *am, const F *lm, const rng_arg a, int64_t n, int64_t D) {
    TN_CUDA_GRID_LOOP(i, n) {
        const int64_t row = i / D, d = i % D, bt = row / a.R, b = bt / a.T;
        h[i] = joiner_h<F>(am[bt * D + d], lm[(b * a.S1 + rng_at(a, row)) * D + d]);
    }
}

/* one thread per (b, d): grad_am[b, t, d] = sum_k dz, grad_lm[b, s, d] = sum over (t, k) with
 * ranges = s of dz, dz = grad_h (1 - h^2), in the CPU's order */
template <typename F>
__global__ void tanh_bwd_kernel(F *__restrict__ gam, F *__restrict__ glm, const F *__restrict__ gh,
                                const F *__restrict__ h, const rng_arg a, int64_t B, int64_t D) {
    TN_CUDA_GRID_LOOP(i, B * D) {
        const int64_t b = i / D, d = i % D;
        F *gl = glm ? glm + b * a.S1 * D + d : NULL;
        if (gl)
            for (int64_t s = 0; s < a.S1; s++) gl[s * D] = (F)0;
        for (int64_t t = 0; t < a.T; t++) {
            F acc = (F)0;
            for (int64_t k = 0; k < a.R; k++) {
                const int64_t row = (b * a.T + t) * a.R + k;
                const F z = joiner_dz<F>(gh[row * D + d], h[row * D + d]);
                acc += z;
                if (gl) gl[rng_at(a, row) * D] += z;
            }
            if (gam) gam[(b * a.T + t) * D + d] = acc;
        }
    }
}

extern "C" tn_status tn_cuda_rnnt_pruned_tanh(const char *op, tn_tensor *h, const tn_tensor *am, const tn_tensor *lm,
                                              const tn_tensor *ranges) {
    const cudaStream_t st = tn_cuda_stream_now();
    const int64_t S1 = lm->shape[1], D = lm->shape[2], n = tn_tensor_numel(h);
    TN_TRY(rng_check(op, ranges, S1, st));
    if (n == 0 || S1 == 0) return TN_OK;
    const rng_arg a = rng_of(ranges, S1);
    if (am->dtype == TN_F64)
        tanh_fwd_kernel<double><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(
            (double *)h->data, (const double *)am->data, (const double *)lm->data, a, n, D);
    else
        tanh_fwd_kernel<float><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(
            (float *)h->data, (const float *)am->data, (const float *)lm->data, a, n, D);
    return TN_CUDA_CHECK_LAUNCH();
}

extern "C" tn_status tn_cuda_rnnt_pruned_tanh_backward(const char *op, tn_tensor *grad_am, tn_tensor *grad_lm,
                                                       const tn_tensor *grad_h, const tn_tensor *h,
                                                       const tn_tensor *am, const tn_tensor *lm,
                                                       const tn_tensor *ranges) {
    const cudaStream_t st = tn_cuda_stream_now();
    const int64_t B = am->shape[0], S1 = lm->shape[1], D = lm->shape[2];
    TN_TRY(rng_check(op, ranges, S1, st));
    if (B * D == 0 || (!grad_am && !grad_lm)) return TN_OK;
    if (S1 == 0) { /* no ranges rows can exist (R >= 1 needs S1 >= 1 values): grad_am is zero */
        return grad_am ? TN_CUDA_CHECK(cudaMemsetAsync(grad_am->data, 0, (size_t)tn_tensor_numel(grad_am) *
                                                                             tn_dtype_size(grad_am->dtype), st))
                       : TN_OK;
    }
    const rng_arg a = rng_of(ranges, S1);
    if (am->dtype == TN_F64)
        tanh_bwd_kernel<double><<<tn_cuda_blocks(B * D), TN_CUDA_THREADS, 0, st>>>(
            grad_am ? (double *)grad_am->data : NULL, grad_lm ? (double *)grad_lm->data : NULL,
            (const double *)grad_h->data, (const double *)h->data, a, B, D);
    else
        tanh_bwd_kernel<float><<<tn_cuda_blocks(B * D), TN_CUDA_THREADS, 0, st>>>(
            grad_am ? (float *)grad_am->data : NULL, grad_lm ? (float *)grad_lm->data : NULL,
            (const float *)grad_h->data, (const float *)h->data, a, B, D);
    return TN_CUDA_CHECK_LAUNCH();
}
