/*
 * cuda/rnnt.cu — the CUDA backend of core/rnnt.c: the mutual-information recursion
 * (tn_rnnt_mutual_information(_backward)) and the simple / smoothed logprobs
 * (tn_rnnt_logprobs_simple(_backward)), f32 and f64; plus what cuda/rnnt_prune.cu shares (the
 * device's pending RNN-T error, the symbol and boundary checks, the px post-processing; see
 * cuda/rnnt.cuh).
 *
 * Gradient policy: every gradient here is an activation gradient and is written (=).
 *
 * Mutual information. One block per utterance walks its boundary rectangle wave by wave, as the
 * CPU's wave mode does: cell (s, t) needs (s-1, t-o) and (s, t-1), so wave k = (1-o)(s - s0) +
 * (t - t0) (anti-diagonals for regular, columns for modified) needs only wave k-1. The threads
 * of the block split each wave (cell i = s - s0 on thread i mod blockDim), __syncthreads between
 * waves; two waves of the table live in shared memory as doubles indexed by s - s0 (global
 * scratch beyond 3072 symbols). Each cell runs the CPU's arithmetic (kernels/rnnt.h
 * tn_rnnt_logadd_w in double) and, with return_grad, stores the normalised weights where px_grad
 * / py_grad will be; the backward sweep then walks the waves in reverse turning them into
 * occupations in place, as on the CPU: the same bits as the CPU's for every dtype. NaN / +inf in
 * px or py is found by the cell that reads it: the smallest (b, s, t, px-before-py) key goes to a
 * flag, so the error names the entry the CPU's row-major sweep meets first.
 *
 * Simple logprobs. The CPU's phases on the device: exp(x - rowmax) of lm and am rows (one block
 * per row), the normaliser Z = lp ap^T as one strided-batched cuBLAS product (tn_cuda_matmul;
 * TF32 for f32 when tn.cuda.set_tf32 allows it, as every f32 product), the O(S T) gathers on one
 * thread per (b, s, t), then the post-processing. The backward forms Q = cs (gx + gy) / Z, two
 * batched products (grad_lm = Q ap, grad_am = Q^T lp) and row kernels for the rest; the additions
 * at the symbol and termination columns run in the CPU's order on one thread per row. Sums over
 * the batch (the smoothed unigram and its gradient) loop over b in order on one thread per class.
 *
 * No host reads: boundary rows, symbols and finiteness are checked on the device (rnnt.cuh).
 */
#include "rnnt.cuh"

#include <float.h>
#include <pthread.h>
#include <stdio.h>

extern "C" {
#include "rnnt_common.h"
}

/* cuda/linalg.cu (declared in core/linalg.c): batched products on cuBLAS */
extern "C" tn_status tn_cuda_matmul(const char *op, tn_tensor *c, const tn_tensor *a, const tn_tensor *b,
                                    int32_t trans_a, int32_t trans_b, int32_t nb, const int64_t *bshape, int64_t n,
                                    int64_t k, int64_t m, int64_t ldc, double alpha, double beta);

/* ---- the pending error -------------------------------------------------------------------------- */

static const char *const rnnt_op_names[] = {
    "rnnt_mutual_information", "rnnt_mutual_information_backward", "rnnt_logprobs_simple",
    "rnnt_logprobs_simple_backward", "rnnt_logprobs_joint", "rnnt_logprobs_joint_backward",
    "rnnt_logprobs_pruned", "rnnt_logprobs_pruned_backward", "rnnt_prune_ranges", "rnnt_do_pruning",
    "rnnt_do_pruning_backward", "rnnt_pruned_tanh", "rnnt_pruned_tanh_backward", "rnnt_prune_s_range"};
enum { RNNT_NUM_OPS = (int)(sizeof rnnt_op_names / sizeof rnnt_op_names[0]), RNNT_MAX_DEVICES = 64 };

int32_t rnnt_op_id(const char *op) {
    for (int32_t k = 0; k < RNNT_NUM_OPS; k++)
        if (op && strcmp(op, rnnt_op_names[k]) == 0) return k;
    return -1;
}

static rnnt_pending *rnnt_pending_dev[RNNT_MAX_DEVICES]; /* created on first use, never freed */
static pthread_mutex_t rnnt_pending_lock = PTHREAD_MUTEX_INITIALIZER;

static tn_status rnnt_pending_of(int create, rnnt_pending **rec) {
    *rec = NULL;
    int dev = 0;
    TN_TRY(TN_CUDA_CHECK(cudaGetDevice(&dev)));
    if (dev < 0 || dev >= RNNT_MAX_DEVICES)
        return tn_error(TN_ERR_DEVICE, "rnnt: device %d is beyond the %d tern supports", dev, RNNT_MAX_DEVICES);
    rnnt_pending *p = __atomic_load_n(&rnnt_pending_dev[dev], __ATOMIC_ACQUIRE);
    if (p || !create) {
        *rec = p;
        return TN_OK;
    }
    tn_status s = TN_OK;
    pthread_mutex_lock(&rnnt_pending_lock);
    p = rnnt_pending_dev[dev];
    if (!p) {
        s = TN_CUDA_CHECK(cudaMalloc((void **)&p, sizeof *p));
        if (s == TN_OK) s = TN_CUDA_CHECK(cudaMemsetAsync(p, 0, sizeof *p, cudaStreamLegacy));
        if (s == TN_OK) s = TN_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
        if (s == TN_OK)
            __atomic_store_n(&rnnt_pending_dev[dev], p, __ATOMIC_RELEASE);
        else if (p)
            (void)cudaFree(p), p = NULL;
    }
    pthread_mutex_unlock(&rnnt_pending_lock);
    *rec = p;
    return s;
}

tn_status rnnt_pending_get(rnnt_pending **rec) { return rnnt_pending_of(1, rec); }

tn_status rnnt_flags_new(tn_tensor **t, int64_t n, cudaStream_t st) {
    *t = NULL;
    TN_TRY(tn_tensor_empty(t, 1, &n, TN_I64, TN_CUDA));
    const tn_status s = TN_CUDA_CHECK(cudaMemsetAsync((*t)->data, 0xff, sizeof(unsigned long long) * (size_t)n, st));
    if (s != TN_OK) {
        tn_tensor_free(*t);
        *t = NULL;
    }
    return s;
}

static __device__ __forceinline__ double rnnt_ldf(const void *p, int f64, int64_t i) {
    return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* One thread: decodes *flag (a position, ULLONG_MAX: none) into rec unless an error is pending. */
__global__ void rnnt_record_kernel(const __grid_constant__ rnnt_check_desc d, const unsigned long long *flag,
                                   rnnt_pending *rec) {
    const unsigned long long f = *flag;
    if (f == ~0ull) return;
    if (atomicCAS(&rec->state, 0u, 1u) != 0u) return; /* an earlier error is still pending */
    long long v[RNNT_NV];
    for (int k = 0; k < RNNT_NV; k++) v[k] = d.c[k];
    const long long pos = (long long)f;
    switch (d.kind) {
    case RK_SYMBOLS: { /* c: S, C */
        const long long S = d.c[0], b = pos / S, s = pos % S;
        v[0] = b, v[1] = s, v[2] = rnnt_ld_idx(d.idx, d.itype, b * d.is0 + s * d.is1), v[3] = d.c[1];
        break;
    }
    case RK_BND_RANGE:
    case RK_BND_FRAMES: { /* pos = 2 b + (frames); c: S, T */
        const long long b = pos >> 1, S = d.c[0], T = d.c[1];
        v[0] = b;
        for (int k = 0; k < 4; k++) v[1 + k] = rnnt_ld_idx(d.idx, d.itype, b * d.is0 + k * d.is1);
        v[5] = S, v[6] = T;
        break;
    }
    case RK_BAND_RANGES: { /* pos = b T + t; c: T, R-1, S+1-R */
        const long long T = d.c[0], b = pos / T, t = pos % T;
        v[0] = b, v[1] = t, v[2] = d.c[1], v[3] = d.c[2], v[4] = rnnt_ld_idx(d.idx, d.itype, b * d.is0 + t * d.is1);
        break;
    }
    case RK_RANGE_VAL: { /* pos = (b T + t) R + k; c: T, R, S+1 */
        const long long T = d.c[0], R = d.c[1], b = pos / (T * R), t = (pos / R) % T, k = pos % R;
        v[0] = b, v[1] = t, v[2] = k, v[3] = rnnt_ld_idx(d.idx, d.itype, b * d.is0 + t * d.is1 + k * d.is2);
        v[4] = d.c[2];
        break;
    }
    case RK_SRANGE: /* pos = the s_range the CPU gives; c: R, B, T, R, S, regular */
        v[6] = pos;
        break;
    case RK_MI_VALUE: { /* pos = ((b (S+1) + s) (T+1) + t) 2 + (py); c[5..10]: px, py shapes */
        const long long S = d.c[9] - 1, T = d.c[10], T0 = d.c[7], o = T0 == T ? 1 : 0; /* py (B, S+1, T) */
        const long long sub = pos & 1, cell = pos >> 1, T1 = T + 1;
        const long long b = cell / ((S + 1) * T1), s = (cell / T1) % (S + 1), t = cell % T1;
        double x;
        if (sub == 0) {
            v[0] = 1, v[1] = b, v[2] = s - 1, v[3] = t - o;
            x = rnnt_ldf(d.fx, d.f64, (b * S + s - 1) * T0 + t - o);
        } else {
            v[0] = 0, v[1] = b, v[2] = s, v[3] = t - 1;
            x = rnnt_ldf(d.fy, d.f64, (b * (S + 1) + s) * T + t - 1);
        }
        v[4] = x != x;
        break;
    }
    case RK_SIMPLE_ROW: { /* pos = b * rows + row; c: islm, rows per utterance (S+1 or T), -, shape (3) */
        const long long per = d.c[1] > 0 ? d.c[1] : 1;
        v[1] = pos / per, v[2] = pos % per;
        break;
    }
    case RK_BAND_ROW: { /* pos = (b T + t) R + k; c[3..6]: logits shape */
        const long long T = d.c[4], R = d.c[5];
        v[0] = pos / (T * R), v[1] = (pos / R) % T, v[2] = pos % R;
        break;
    }
    default: break;
    }
    rec->kind = d.kind;
    rec->op = d.op;
    for (int k = 0; k < RNNT_NV; k++) rec->v[k] = v[k];
    __threadfence();
    atomicExch(&rec->state, 2u);
}

tn_status rnnt_record(const rnnt_check_desc &d, const unsigned long long *flag, cudaStream_t st) {
    rnnt_pending *rec;
    TN_TRY(rnnt_pending_get(&rec));
    rnnt_record_kernel<<<1, 1, 0, st>>>(d, flag, rec);
    return TN_CUDA_CHECK_LAUNCH();
}

/* The CPU's message for a decoded record (core/rnnt.c, core/rnnt_prune.c). */
static tn_status rnnt_raise(const rnnt_pending &r, const char *at) {
    const char *op = r.op >= 0 && r.op < RNNT_NUM_OPS ? rnnt_op_names[r.op] : "rnnt";
    const long long *v = r.v;
    char note[160], d1[160], d2[160];
    snprintf(note, sizeof note, " (reported at the next synchronisation: %s)", at);
    switch (r.kind) {
    case RK_SYMBOLS:
        return tn_error(TN_ERR_INDEX, "%s: symbols at position [%lld, %lld] is %lld, outside [0, C = %lld)%s", op,
                        TN_D(v[0]), TN_D(v[1]), v[2], v[3], note);
    case RK_BND_RANGE:
        return tn_error(TN_ERR_INDEX,
                        "%s: boundary row %lld = [%lld, %lld, %lld, %lld] must satisfy 0 <= begin_symbol <= "
                        "end_symbol <= S = %lld and 0 <= begin_frame <= end_frame <= T = %lld%s",
                        op, TN_D(v[0]), v[1], v[2], v[3], v[4], v[5], v[6], note);
    case RK_BND_FRAMES:
        return tn_error(TN_ERR_SHAPE,
                        "%s: boundary row %lld = [%lld, %lld, %lld, %lld] has %lld frames for %lld symbols; "
                        "modified / constrained RNN-T needs frames >= symbols%s",
                        op, TN_D(v[0]), v[1], v[2], v[3], v[4], v[4] - v[2], v[3] - v[1], note);
    case RK_BAND_RANGES:
        return tn_error(TN_ERR_INDEX,
                        "%s: ranges at [%lld, %lld] must be s_begin, s_begin+1, ..., s_begin+%lld with "
                        "0 <= s_begin <= S+1-R = %lld (got first value %lld)%s",
                        op, TN_D(v[0]), TN_D(v[1]), v[2], v[3], v[4], note);
    case RK_RANGE_VAL:
        return tn_error(TN_ERR_INDEX, "%s: ranges at [%lld, %lld, %lld] is %lld, outside [0, S+1 = %lld)%s", op,
                        TN_D(v[0]), TN_D(v[1]), TN_D(v[2]), v[3], v[4], note);
    case RK_SRANGE: {
        const int64_t sh[3] = {v[1], v[2], v[3]};
        return tn_error(TN_ERR_SHAPE,
                        "%s: s_range %lld (ranges %s) cannot be used for S = %lld, %s RNN-T with these boundaries: "
                        "tn_rnnt_prune_s_range gives %lld%s",
                        op, v[0], tn_dims_str(3, sh, d1, sizeof d1), v[4], v[5] ? "regular" : "modified/constrained", v[6], note);
    }
    case RK_MI_VALUE: {
        const int64_t sx[3] = {v[5], v[6], v[7]}, sy[3] = {v[8], v[9], v[10]};
        return tn_error(TN_ERR_ARG,
                        "%s: %s at position [%lld, %lld, %lld] is %s (px %s, py %s); only finite values and -inf are "
                        "allowed%s",
                        op, v[0] ? "px" : "py", TN_D(v[1]), TN_D(v[2]), TN_D(v[3]), v[4] ? "NaN" : "+inf",
                        tn_dims_str(3, sx, d1, sizeof d1), tn_dims_str(3, sy, d2, sizeof d2), note);
    }
    case RK_SIMPLE_ROW: {
        const int64_t sh[3] = {v[3], v[4], v[5]};
        return tn_error(TN_ERR_ARG, "%s: %s row [%lld, %lld] holds NaN or inf (%s %s)%s", op, v[0] ? "lm" : "am",
                        TN_D(v[1]), TN_D(v[2]), v[0] ? "lm" : "am", tn_dims_str(3, sh, d1, sizeof d1), note);
    }
    case RK_BAND_ROW: {
        const int64_t sh[4] = {v[3], v[4], v[5], v[6]};
        return tn_error(TN_ERR_ARG,
                        "%s: logits row [%lld, %lld, %lld] holds NaN or +inf or only -inf (logits %s): its "
                        "log-sum-exp is not finite%s",
                        op, TN_D(v[0]), TN_D(v[1]), TN_D(v[2]), tn_dims_str(4, sh, d1, sizeof d1), note);
    }
    default:
        return tn_error(TN_ERR_ARG, "%s: invalid input%s", op, note);
    }
}

/* Called by tn_cuda_check_pending (cuda/index.cu) after the host waited: reads the current
 * device's record (when RNN-T ever ran a check there), raises and clears it. */
extern "C" tn_status tn_cuda_rnnt_check_pending(const char *op) {
    if (!op) return TN_OK;
    rnnt_pending *rec;
    TN_TRY(rnnt_pending_of(0, &rec));
    if (!rec) return TN_OK;
    const cudaStream_t st = tn_cuda_stream_now();
    rnnt_pending r;
    TN_TRY(TN_CUDA_CHECK(cudaMemcpyAsync(&r, rec, sizeof r, cudaMemcpyDeviceToHost, st)));
    TN_TRY(TN_CUDA_CHECK(cudaStreamSynchronize(st)));
    if (r.state != 2u) return TN_OK;
    TN_TRY(TN_CUDA_CHECK(cudaMemsetAsync(rec, 0, sizeof *rec, st)));
    TN_TRY(TN_CUDA_CHECK(cudaStreamSynchronize(st)));
    return rnnt_raise(r, op);
}

/* ---- symbol and boundary checks, post-processing -------------------------------------------------- */

__global__ void rnnt_symbols_check_kernel(const void *sym, int32_t itype, int64_t s0, int64_t s1, int64_t B, int64_t S,
                                          int64_t C, unsigned long long *flag) {
    TN_CUDA_GRID_LOOP(i, B * S) {
        const int64_t b = i / S, s = i % S, v = rnnt_ld_idx(sym, itype, b * s0 + s * s1);
        if (v < 0 || v >= C) atomicMin(flag, (unsigned long long)i);
    }
}

tn_status rnnt_check_symbols(const char *op, const tn_tensor *symbols, int64_t C, cudaStream_t st) {
    const int64_t B = symbols->shape[0], S = symbols->shape[1];
    if (B * S == 0) return TN_OK;
    tn_tensor *flag;
    TN_TRY(rnnt_flags_new(&flag, 1, st));
    unsigned long long *fp = (unsigned long long *)flag->data;
    rnnt_symbols_check_kernel<<<tn_cuda_blocks(B * S), TN_CUDA_THREADS, 0, st>>>(
        symbols->data, symbols->dtype, symbols->strides[0], symbols->strides[1], B, S, C, fp);
    tn_status s = TN_CUDA_CHECK_LAUNCH();
    if (s == TN_OK) {
        rnnt_check_desc d;
        memset(&d, 0, sizeof d);
        d.kind = RK_SYMBOLS, d.op = rnnt_op_id(op), d.itype = symbols->dtype, d.idx = symbols->data;
        d.is0 = symbols->strides[0], d.is1 = symbols->strides[1];
        d.c[0] = S, d.c[1] = C;
        s = rnnt_record(d, fp, st);
    }
    tn_tensor_free(flag);
    return s;
}

__global__ void rnnt_boundary_check_kernel(rnnt_bnd_arg a, int64_t B, int64_t S, int64_t T, int need,
                                           unsigned long long *flag) {
    TN_CUDA_GRID_LOOP(b, B) {
        const int64_t s0 = rnnt_ld_idx(a.p, a.itype, b * a.s0), t0 = rnnt_ld_idx(a.p, a.itype, b * a.s0 + a.s1);
        const int64_t s1 = rnnt_ld_idx(a.p, a.itype, b * a.s0 + 2 * a.s1);
        const int64_t t1 = rnnt_ld_idx(a.p, a.itype, b * a.s0 + 3 * a.s1);
        if (s0 < 0 || t0 < 0 || s1 < s0 || t1 < t0 || s1 > S || t1 > T)
            atomicMin(flag, (unsigned long long)(2 * b));
        else if (need && t1 - t0 < s1 - s0)
            atomicMin(flag, (unsigned long long)(2 * b + 1));
    }
}

/* the kind of a boundary flag is decided by its low bit: record kernels of both kinds, only the
 * matching one fires (the other sees a flag of the wrong parity and the CAS order keeps one) */
__global__ void rnnt_bnd_split_kernel(const unsigned long long *flag, unsigned long long *range_flag,
                                      unsigned long long *frames_flag) {
    const unsigned long long f = *flag;
    *range_flag = f != ~0ull && !(f & 1ull) ? f : ~0ull;
    *frames_flag = f != ~0ull && (f & 1ull) ? f : ~0ull;
}

tn_status rnnt_check_boundary(const char *op, const tn_tensor *boundary, int64_t S, int64_t T, int need_t_ge_s,
                              cudaStream_t st) {
    if (!boundary || boundary->shape[0] == 0) return TN_OK;
    const int64_t B = boundary->shape[0];
    tn_tensor *flag;
    TN_TRY(rnnt_flags_new(&flag, 3, st));
    unsigned long long *fp = (unsigned long long *)flag->data;
    rnnt_boundary_check_kernel<<<tn_cuda_blocks(B), TN_CUDA_THREADS, 0, st>>>(rnnt_bnd_of(boundary), B, S, T,
                                                                              need_t_ge_s, fp);
    tn_status s = TN_CUDA_CHECK_LAUNCH();
    if (s == TN_OK) {
        rnnt_bnd_split_kernel<<<1, 1, 0, st>>>(fp, fp + 1, fp + 2);
        s = TN_CUDA_CHECK_LAUNCH();
    }
    rnnt_check_desc d;
    memset(&d, 0, sizeof d);
    d.op = rnnt_op_id(op), d.itype = boundary->dtype, d.idx = boundary->data;
    d.is0 = boundary->strides[0], d.is1 = boundary->strides[1];
    d.c[0] = S, d.c[1] = T;
    d.kind = RK_BND_RANGE;
    if (s == TN_OK) s = rnnt_record(d, fp + 1, st);
    d.kind = RK_BND_FRAMES;
    if (s == TN_OK) s = rnnt_record(d, fp + 2, st);
    tn_tensor_free(flag);
    return s;
}

/* core/rnnt.c tn_rnnt_internal_post, one thread per px element (b, s, t) */
template <typename F>
__global__ void rnnt_post_kernel(F *px, const F *py, rnnt_bnd_arg ba, int64_t B, int64_t S, int64_t T, int64_t T0,
                                 int32_t type, double dp) {
    TN_CUDA_GRID_LOOP(i, B * S * T0) {
        const int64_t b = i / (S * T0), s = (i / T0) % S, t = i % T0;
        tn_rnnt_bnd bd;
        rnnt_bnd_load(ba, b, S, T, 0, &bd);
        if (!ba.p) bd = tn_rnnt_bnd{0, 0, S, T};
        double v = (double)px[i];
        int set = 0;
        if (type == TN_RNNT_REGULAR && ba.p && t == bd.t1) v = -INFINITY, set = 1;
        if (type == TN_RNNT_CONSTRAINED && t < T) v = (double)(F)(v + (double)py[(b * (S + 1) + s + 1) * T + t]), set = 1;
        if (dp > 0.0) {
            const int64_t tb = ba.p ? bd.t1 : T;
            v = (double)(F)(v + tn_rnnt_delay_penalty(dp, tb, t));
            set = 1;
        }
        if (set) px[i] = (F)v;
    }
}

tn_status rnnt_post(void *px, const void *py, int f64, const tn_tensor *boundary, int64_t B, int64_t S, int64_t T,
                    int32_t rnnt_type, double delay_penalty, cudaStream_t st) {
    const int64_t T0 = rnnt_type == TN_RNNT_REGULAR ? T + 1 : T, n = B * S * T0;
    if (n == 0) return TN_OK;
    if (!(rnnt_type == TN_RNNT_REGULAR && boundary) && rnnt_type != TN_RNNT_CONSTRAINED && !(delay_penalty > 0.0))
        return TN_OK;
    if (f64)
        rnnt_post_kernel<double><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(
            (double *)px, (const double *)py, rnnt_bnd_of(boundary), B, S, T, T0, rnnt_type, delay_penalty);
    else
        rnnt_post_kernel<float><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(
            (float *)px, (const float *)py, rnnt_bnd_of(boundary), B, S, T, T0, rnnt_type, delay_penalty);
    return TN_CUDA_CHECK_LAUNCH();
}

__global__ void rnnt_symbols_i64_kernel(int64_t *out, const void *sym, int32_t itype, int64_t s0, int64_t s1, int64_t B,
                                        int64_t S, int64_t C) {
    TN_CUDA_GRID_LOOP(i, B * S) {
        int64_t v = rnnt_ld_idx(sym, itype, (i / S) * s0 + (i % S) * s1);
        out[i] = v < 0 || v >= C ? 0 : v;
    }
}

tn_status rnnt_symbols_i64(tn_tensor **out, const tn_tensor *symbols, int64_t C, cudaStream_t st) {
    const int64_t B = symbols->shape[0], S = symbols->shape[1], n = B * S > 0 ? B * S : 1;
    TN_TRY(tn_tensor_empty(out, 1, &n, TN_I64, TN_CUDA));
    if (B * S == 0) return TN_OK;
    rnnt_symbols_i64_kernel<<<tn_cuda_blocks(B * S), TN_CUDA_THREADS, 0, st>>>(
        (int64_t *)(*out)->data, symbols->data, symbols->dtype, symbols->strides[0], symbols->strides[1], B, S, C);
    const tn_status s = TN_CUDA_CHECK_LAUNCH();
    if (s != TN_OK) tn_tensor_free(*out), *out = NULL;
    return s;
}

/* ---- mutual information ----------------------------------------------------------------------- */

enum { MI_THREADS = 256, MI_SMEM_MAX = 48 * 1024 };

struct mi_args {
    const void *px, *py, *p_in, *grad_scores;
    void *scores, *pxg, *pyg, *p;
    rnnt_bnd_arg bnd;
    int64_t S, T, T0;
    int o;
    int grad; /* return_grad: px_grad / py_grad given (their data may be NULL when S = 0) */
    double *gscratch; /* (B, 2, S+1) when the waves do not fit in shared memory, else NULL */
    unsigned long long *flag;
};

/* wave k of the rectangle (Sb + 1 symbols, W + 1 frames): i = s - s0 over [lo, hi] */
static __device__ __forceinline__ void mi_wave(int64_t k, int64_t Sb, int64_t W, int o, int64_t *lo, int64_t *hi) {
    *lo = o ? 0 : (k > W ? k - W : 0);
    *hi = o ? Sb : (k < Sb ? k : Sb);
}

/* The reverse sweep of utterance b over its K waves (core/rnnt.c mi_rev_cell): g(s, t) = d score /
 * d p(s, t) = sum over the successors of g(successor) * weight of the move, each term also written
 * as the gradient of that move's px / py entry; g(s1, t1) = 1, or grad_scores[b] when the backward
 * from p_in is given it. SAVED = false: the weight is the normalised one the forward stored in
 * pxg / pyg (overwritten in place); true: exp(p + px - p(successor)) from the saved table p_in.
 * nxt and cur are the two wave buffers (nxt is only read for cells after the first wave swept). */
template <typename F, bool SAVED>
static __device__ __forceinline__ void mi_rev_sweep(const mi_args &a, int64_t b, const tn_rnnt_bnd &bd, int64_t K,
                                                    double *nxt, double *cur) {
    const int64_t S = a.S, T = a.T, T0 = a.T0, T1 = T + 1;
    const int o = a.o;
    const F *px = (const F *)a.px, *py = (const F *)a.py, *pin = (const F *)a.p_in;
    F *pxg = (F *)a.pxg, *pyg = (F *)a.pyg;
    const int64_t pxo = b * S * T0, pyo = b * (S + 1) * T, po = b * (S + 1) * T1;
    const int64_t Sb = bd.s1 - bd.s0, W = bd.t1 - bd.t0;
    for (int64_t kk = 0; kk < K; kk++) {
        const int64_t k = K - 1 - kk;
        int64_t lo, hi;
        mi_wave(k, Sb, W, o, &lo, &hi);
        for (int64_t i = lo + threadIdx.x; i <= hi; i += blockDim.x) {
            const int64_t s = bd.s0 + i, t = bd.t0 + k - (o ? 0 : i);
            double g;
            if (s == bd.s1 && t == bd.t1) {
                g = SAVED && a.grad_scores ? (double)((const F *)a.grad_scores)[b] : 1.0;
            } else {
                g = 0.0;
                const double pst = SAVED ? (double)pin[po + s * T1 + t] : 0.0;
                if (s < bd.s1 && t + o <= bd.t1) {
                    const int64_t j = pxo + s * T0 + t;
                    const double w = SAVED ? tn_rnnt_ratio(pst + (double)px[j], (double)pin[po + (s + 1) * T1 + t + o])
                                           : (double)pxg[j];
                    const double gx = nxt[i + 1] * w;
                    pxg[j] = (F)gx;
                    g += gx;
                }
                if (t < bd.t1) {
                    const int64_t j = pyo + s * T + t;
                    const double w = SAVED ? tn_rnnt_ratio(pst + (double)py[j], (double)pin[po + s * T1 + t + 1])
                                           : (double)pyg[j];
                    const double gy = nxt[i] * w;
                    pyg[j] = (F)gy;
                    g += gy;
                }
            }
            cur[i] = g;
        }
        __syncthreads();
        double *sw = nxt;
        nxt = cur, cur = sw;
    }
}

/* Forward, and with pxg the in-place backward, of utterance blockIdx.x. */
template <typename F>
__global__ void __launch_bounds__(MI_THREADS) mi_fwd_kernel(const mi_args a) {
    extern __shared__ double mi_sm[];
    const int64_t b = blockIdx.x, S = a.S, T = a.T, T0 = a.T0, T1 = T + 1;
    const int o = a.o;
    const F *px = (const F *)a.px, *py = (const F *)a.py;
    F *pxg = (F *)a.pxg, *pyg = (F *)a.pyg, *p = (F *)a.p;
    const int64_t pxo = b * S * T0, pyo = b * (S + 1) * T;
    tn_rnnt_bnd bd;
    rnnt_bnd_load(a.bnd, b, S, T, o, &bd);
    double *w0 = a.gscratch ? a.gscratch + b * 2 * (S + 1) : mi_sm, *w1 = w0 + (S + 1);
    if (a.grad) {
        for (int64_t i = threadIdx.x; i < S * T0; i += blockDim.x) pxg[pxo + i] = (F)0;
        for (int64_t i = threadIdx.x; i < (S + 1) * T; i += blockDim.x) pyg[pyo + i] = (F)0;
    }
    if (p)
        for (int64_t i = threadIdx.x; i < (S + 1) * T1; i += blockDim.x) p[b * (S + 1) * T1 + i] = (F)-INFINITY;
    __syncthreads();
    const int64_t Sb = bd.s1 - bd.s0, W = bd.t1 - bd.t0;
    if (Sb < 0) { /* a bad boundary row: reported by the check */
        if (threadIdx.x == 0) ((F *)a.scores)[b] = (F)NAN;
        return;
    }
    const int64_t K = (o ? 0 : Sb) + W + 1;
    double *prev = w0, *cur = w1;
    for (int64_t k = 0; k < K; k++) {
        int64_t lo, hi;
        mi_wave(k, Sb, W, o, &lo, &hi);
        for (int64_t i = lo + threadIdx.x; i <= hi; i += blockDim.x) {
            const int64_t s = bd.s0 + i, t = bd.t0 + k - (o ? 0 : i);
            double v;
            if (s == bd.s0 && t == bd.t0) {
                v = 0.0;
            } else {
                double x1 = -INFINITY, y2 = -INFINITY, wa, wb;
                const int hx = s > bd.s0 && t - o >= bd.t0, hy = t > bd.t0;
                if (hx) {
                    const double x = (double)px[pxo + (s - 1) * T0 + t - o];
                    if (!(x < INFINITY))
                        atomicMin(a.flag, (unsigned long long)(((b * (S + 1) + s) * T1 + t) * 2));
                    x1 = prev[i - 1] + x;
                }
                if (hy) {
                    const double y = (double)py[pyo + s * T + t - 1];
                    if (!(y < INFINITY)) /* a bad px of the same cell has the smaller key */
                        atomicMin(a.flag, (unsigned long long)(((b * (S + 1) + s) * T1 + t) * 2 + 1));
                    y2 = prev[i] + y;
                }
                v = tn_rnnt_logadd_w(x1, y2, &wa, &wb);
                if (a.grad) {
                    if (hx) pxg[pxo + (s - 1) * T0 + t - o] = (F)wa;
                    if (hy) pyg[pyo + s * T + t - 1] = (F)wb;
                }
            }
            cur[i] = v;
            if (p) p[(b * (S + 1) + s) * T1 + t] = (F)v;
        }
        __syncthreads();
        double *sw = prev;
        prev = cur, cur = sw;
    }
    const double score = prev[Sb]; /* every thread reads it before the backward's second wave */
    if (threadIdx.x == 0) ((F *)a.scores)[b] = (F)score;
    if (!a.grad) return;
    if (score == -INFINITY) { /* nothing reaches the end: no occupation */
        for (int64_t i = threadIdx.x; i < S * T0; i += blockDim.x) pxg[pxo + i] = (F)0;
        for (int64_t i = threadIdx.x; i < (S + 1) * T; i += blockDim.x) pyg[pyo + i] = (F)0;
        return;
    }
    mi_rev_sweep<F, false>(a, b, bd, K, prev, cur);
}

/* Backward from the saved table p_in (core/rnnt.c mi_back_cell). */
template <typename F>
__global__ void __launch_bounds__(MI_THREADS) mi_back_kernel(const mi_args a) {
    extern __shared__ double mi_sm[];
    const int64_t b = blockIdx.x, S = a.S, T = a.T, T0 = a.T0, T1 = T + 1;
    const int o = a.o;
    const F *pin = (const F *)a.p_in;
    F *pxg = (F *)a.pxg, *pyg = (F *)a.pyg;
    const int64_t pxo = b * S * T0, pyo = b * (S + 1) * T, po = b * (S + 1) * T1;
    tn_rnnt_bnd bd;
    rnnt_bnd_load(a.bnd, b, S, T, o, &bd);
    double *cur = a.gscratch ? a.gscratch + b * 2 * (S + 1) : mi_sm, *nxt = cur + (S + 1);
    for (int64_t i = threadIdx.x; i < S * T0; i += blockDim.x) pxg[pxo + i] = (F)0;
    for (int64_t i = threadIdx.x; i < (S + 1) * T; i += blockDim.x) pyg[pyo + i] = (F)0;
    __syncthreads();
    const int64_t Sb = bd.s1 - bd.s0, W = bd.t1 - bd.t0;
    if (Sb < 0) return;
    if ((double)pin[po + bd.s1 * T1 + bd.t1] == -INFINITY) return;
    mi_rev_sweep<F, true>(a, b, bd, (o ? 0 : Sb) + W + 1, nxt, cur);
}

/* threads per block: the longest wave rounded up to warps, at most MI_THREADS */
static unsigned mi_threads(int64_t S, int64_t T, int o) {
    int64_t w = o ? S + 1 : (S + 1 < T + 1 ? S + 1 : T + 1);
    if (w < 32) w = 32;
    w = (w + 31) / 32 * 32;
    return (unsigned)(w > (int64_t)MI_THREADS ? (int64_t)MI_THREADS : w);
}

/* shared memory for two waves, or a global scratch (returned in *scr) when they do not fit */
static tn_status mi_buffers(mi_args *a, int64_t B, size_t *smem, tn_tensor **scr) {
    *scr = NULL;
    const size_t need = sizeof(double) * 2 * (size_t)(a->S + 1);
    if (need <= MI_SMEM_MAX) {
        *smem = need;
        a->gscratch = NULL;
        return TN_OK;
    }
    *smem = 0;
    const int64_t n = B * 2 * (a->S + 1);
    TN_TRY(tn_tensor_empty(scr, 1, &n, TN_F64, TN_CUDA));
    a->gscratch = (double *)(*scr)->data;
    return TN_OK;
}

extern "C" tn_status tn_cuda_rnnt_mi(const char *op, tn_tensor *scores, tn_tensor *px_grad, tn_tensor *py_grad,
                                     tn_tensor *p, const tn_tensor *px, const tn_tensor *py, const tn_tensor *boundary) {
    const int64_t B = py->shape[0], S = py->shape[1] - 1, T = py->shape[2], T0 = px->shape[2];
    const int o = T0 == T ? 1 : 0, f64 = py->dtype == TN_F64;
    if (B == 0) return TN_OK;
    const cudaStream_t st = tn_cuda_stream_now();
    TN_TRY(rnnt_check_boundary(op, boundary, S, T, o, st));
    mi_args a;
    memset(&a, 0, sizeof a);
    a.px = px->data, a.py = py->data, a.scores = scores->data;
    a.pxg = px_grad ? px_grad->data : NULL, a.pyg = py_grad ? py_grad->data : NULL, a.p = p ? p->data : NULL;
    a.grad = px_grad != NULL;
    a.bnd = rnnt_bnd_of(boundary);
    a.S = S, a.T = T, a.T0 = T0, a.o = o;
    size_t smem;
    tn_tensor *scr = NULL, *flag = NULL;
    TN_TRY(mi_buffers(&a, B, &smem, &scr));
    tn_status s = rnnt_flags_new(&flag, 1, st);
    if (s == TN_OK) {
        a.flag = (unsigned long long *)flag->data;
        const unsigned nt = mi_threads(S, T, o);
        if (f64) mi_fwd_kernel<double><<<(unsigned)B, nt, smem, st>>>(a);
        else mi_fwd_kernel<float><<<(unsigned)B, nt, smem, st>>>(a);
        s = TN_CUDA_CHECK_LAUNCH();
    }
    if (s == TN_OK) {
        rnnt_check_desc d;
        memset(&d, 0, sizeof d);
        d.kind = RK_MI_VALUE, d.op = rnnt_op_id(op), d.f64 = f64, d.fx = px->data, d.fy = py->data;
        for (int k = 0; k < 3; k++) d.c[5 + k] = px->shape[k], d.c[8 + k] = py->shape[k];
        s = rnnt_record(d, a.flag, st);
    }
    tn_tensor_free(flag);
    tn_tensor_free(scr);
    return s;
}

extern "C" tn_status tn_cuda_rnnt_mi_backward(const char *op, tn_tensor *px_grad, tn_tensor *py_grad,
                                              const tn_tensor *grad_scores, const tn_tensor *px, const tn_tensor *py,
                                              const tn_tensor *boundary, const tn_tensor *p) {
    const int64_t B = py->shape[0], S = py->shape[1] - 1, T = py->shape[2], T0 = px->shape[2];
    const int o = T0 == T ? 1 : 0, f64 = py->dtype == TN_F64;
    if (B == 0) return TN_OK;
    const cudaStream_t st = tn_cuda_stream_now();
    TN_TRY(rnnt_check_boundary(op, boundary, S, T, o, st));
    mi_args a;
    memset(&a, 0, sizeof a);
    a.px = px->data, a.py = py->data, a.p_in = p->data, a.grad_scores = grad_scores ? grad_scores->data : NULL;
    a.pxg = px_grad->data, a.pyg = py_grad->data, a.grad = 1;
    a.bnd = rnnt_bnd_of(boundary);
    a.S = S, a.T = T, a.T0 = T0, a.o = o;
    size_t smem;
    tn_tensor *scr = NULL;
    TN_TRY(mi_buffers(&a, B, &smem, &scr));
    const unsigned nt = mi_threads(S, T, o);
    if (f64) mi_back_kernel<double><<<(unsigned)B, nt, smem, st>>>(a);
    else mi_back_kernel<float><<<(unsigned)B, nt, smem, st>>>(a);
    const tn_status s = TN_CUDA_CHECK_LAUNCH();
    tn_tensor_free(scr);
    return s;
}

/* ---- simple logprobs ---------------------------------------------------------------------------- */

struct RMaxD {
    typedef double S;
    static __device__ __forceinline__ double init() { return -INFINITY; }
    static __device__ __forceinline__ double combine(double a, double b) { return a > b ? a : b; }
};
struct RSumD {
    typedef double S;
    static __device__ __forceinline__ double init() { return 0.0; }
    static __device__ __forceinline__ double combine(double a, double b) { return a + b; }
};

/* One block (TN_CUDA_THREADS) per row r of x (rows, C): y = exp(x - rowmax), mx[r] = rowmax;
 * with lsum, lsum[r] = sum of y (double); a row holding NaN or inf puts r + base into flag. */
template <typename F>
__global__ void __launch_bounds__(TN_CUDA_THREADS) simple_exp_kernel(const F *x, F *y, double *mx, double *lsum,
                                                                     int64_t C, unsigned long long *flag) {
    const int64_t r = blockIdx.x;
    const F *xr = x + r * C;
    F *yr = y + r * C;
    double m = -INFINITY, bad = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        const double v = (double)xr[c];
        if (!(fabs(v) <= (sizeof(F) == 8 ? DBL_MAX : (double)FLT_MAX))) bad = 1.0;
        m = v > m ? v : m;
    }
    m = tn_cuda_block_reduce<RMaxD>(m);
    bad = tn_cuda_block_reduce<RMaxD>(bad);
    if (bad > 0.0 && threadIdx.x == 0) atomicMin(flag, (unsigned long long)r);
    const F mf = (F)m;
    double sum = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
        F e;
        if (sizeof(F) == 8) e = (F)exp((double)xr[c] - (double)mf);
        else e = (F)tn_exp_f((float)xr[c] - (float)mf);
        yr[c] = e;
        sum += (double)e;
    }
    if (threadIdx.x == 0) mx[r] = (double)mf;
    if (lsum) {
        sum = tn_cuda_block_reduce<RSumD>(sum);
        if (threadIdx.x == 0) lsum[r] = sum;
    }
}

/* smoothed unigram, the CPU's order: part[b, k] = sum over s of softmax(lm[b, s])[k] (one
 * thread per (b, k)), then U[k] = sum over b of part[b, k] (one thread per k) */
template <typename F>
__global__ void simple_unigram_part_kernel(const F *lp, const double *lsum, double *part, int64_t B, int64_t S1,
                                           int64_t C) {
    TN_CUDA_GRID_LOOP(i, B * C) {
        const int64_t b = i / C, k = i % C;
        double pb = 0.0;
        for (int64_t s = 0; s < S1; s++) pb += (double)lp[(b * S1 + s) * C + k] * (1.0 / lsum[b * S1 + s]);
        part[i] = pb;
    }
}
template <typename F>
__global__ void simple_unigram_kernel(const double *part, double *U, double *logU, int64_t B, int64_t S1, int64_t C) {
    TN_CUDA_GRID_LOOP(k, C) {
        double u = 0.0;
        for (int64_t b = 0; b < B; b++) u += part[b * C + k];
        const double n = (double)(B * S1);
        u = sizeof(F) == 8 ? u / n + DBL_MIN : (double)(float)((float)(u / n) + FLT_MIN);
        U[k] = u;
        logU[k] = log(u);
    }
}

/* asum[r] = sum_c ap[r, c] U[c], one block per row */
template <typename F>
__global__ void __launch_bounds__(TN_CUDA_THREADS) simple_asum_kernel(const F *ap, const double *U, double *asum,
                                                                      int64_t C) {
    const int64_t r = blockIdx.x;
    double s = 0.0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += (double)ap[r * C + c] * U[c];
    s = tn_cuda_block_reduce<RSumD>(s);
    if (threadIdx.x == 0) asum[r] = s;
}

struct simple_dev {
    int64_t B, S, T, C, T0, term;
    int smoothed;
    double cs, ls, as;
    const int64_t *sym;   /* (B, S) clamped */
    const void *lm, *am;  /* (B, S+1, C), (B, T, C) */
    const void *lp, *ap;  /* exp(x - rowmax) */
    void *Z;              /* (B, S+1, T) */
    const double *lmax, *amax, *lsum, *asum, *U, *logU;
};

template <typename F>
static __device__ __forceinline__ double simple_z(const simple_dev &c, int64_t i) {
    return sizeof(F) == 8 ? ((const double *)c.Z)[i] + DBL_MIN : (double)(((const float *)c.Z)[i] + FLT_MIN);
}

/* px, py, one thread per (b, s, t) of (B, S+1, T) (core/rnnt.c tn_rnnt_logprobs_simple) */
template <typename F>
__global__ void simple_gather_kernel(const simple_dev c, F *px, F *py) {
    const int64_t S = c.S, S1 = S + 1, T = c.T, C = c.C, T0 = c.T0, term = c.term;
    TN_CUDA_GRID_LOOP(i, c.B * S1 * T) {
        const int64_t b = i / (S1 * T), s = (i / T) % S1, t = i % T;
        const F *lmb = (const F *)c.lm + b * S1 * C, *amb = (const F *)c.am + b * T * C;
        const int64_t sym = s < S ? c.sym[b * S + s] : 0;
        const double lm_sym = (double)lmb[s * C + sym], lm_term = (double)lmb[s * C + term];
        const double lonly = c.smoothed ? log(c.lsum[b * S1 + s]) + c.lmax[b * S1 + s] : 0.0;
        const double norm = log(simple_z<F>(c, i)) + c.lmax[b * S1 + s] + c.amax[b * T + t];
        const double am_term = (double)amb[t * C + term];
        const double aonly = c.smoothed ? log(c.asum[b * T + t]) + c.amax[b * T + t] : 0.0;
        const double vy = tn_rnnt_simple_lp(am_term, lm_term, norm, c.smoothed, c.cs, c.ls, c.as, lonly, aonly,
                                            c.smoothed ? c.logU[term] : 0.0);
        py[(b * S1 + s) * T + t] = (F)vy;
        if (s < S) {
            const double am_sym = (double)amb[t * C + sym];
            const double vx = tn_rnnt_simple_lp(am_sym, lm_sym, norm, c.smoothed, c.cs, c.ls, c.as, lonly, aonly,
                                                c.smoothed ? c.logU[sym] : 0.0);
            px[(b * S + s) * T0 + t] = (F)vx;
            if (T0 > T && t == T - 1) px[(b * S + s) * T0 + T] = (F)-INFINITY;
        }
    }
}

__global__ void simple_px_tail_kernel(void *px, int f64, int64_t B, int64_t S, int64_t T0) { /* T == 0, regular */
    TN_CUDA_GRID_LOOP(i, B * S) {
        if (f64) ((double *)px)[i * T0 + T0 - 1] = -INFINITY;
        else ((float *)px)[i * T0 + T0 - 1] = -INFINITY;
    }
}

/* Everything simple forward and backward share: options, the clamped symbols, exp rows, unigram,
 * asum and Z. */
struct simple_state {
    simple_dev d;
    int f64;
    tn_tensor *sym, *lp, *ap, *Z, *dbl, *flag;
};

static void simple_free(simple_state *s) {
    tn_tensor_free(s->sym);
    tn_tensor_free(s->lp);
    tn_tensor_free(s->ap);
    tn_tensor_free(s->Z);
    tn_tensor_free(s->dbl);
    tn_tensor_free(s->flag);
}

static tn_status simple_prepare(const char *op, simple_state *s, const tn_tensor *lm, const tn_tensor *am,
                                const tn_tensor *symbols, const tn_tensor *boundary, int64_t term, int32_t rnnt_type,
                                double lm_only_scale, double am_only_scale, int check, cudaStream_t st) {
    memset(s, 0, sizeof *s);
    simple_dev &d = s->d;
    const int64_t B = am->shape[0], T = am->shape[1], C = am->shape[2], S = lm->shape[1] - 1, S1 = S + 1;
    d.B = B, d.S = S, d.T = T, d.C = C, d.term = term;
    d.T0 = rnnt_type == TN_RNNT_REGULAR ? T + 1 : T;
    s->f64 = am->dtype == TN_F64;
    d.smoothed = lm_only_scale != 0.0 || am_only_scale != 0.0;
    d.cs = 1.0 - lm_only_scale - am_only_scale;
    d.ls = lm_only_scale == 0.0 ? 1.0e-20 : lm_only_scale;
    d.as = am_only_scale == 0.0 ? 1.0e-20 : am_only_scale;
    if (!d.smoothed) d.cs = 1.0, d.ls = 0.0, d.as = 0.0;
    if (check & 1) { /* as the CPU's simple_setup, forward and backward */
        TN_TRY(rnnt_check_symbols(op, symbols, C, st));
        TN_TRY(rnnt_check_boundary(op, boundary, S, T, rnnt_type != TN_RNNT_REGULAR, st));
    }
    tn_status rc = rnnt_symbols_i64(&s->sym, symbols, C, st);
    const int64_t slp[3] = {B, S1, C}, sap[3] = {B, T, C}, sz[3] = {B, S1, T};
    const int64_t nd = 2 * B * S1 + 2 * B * T + 2 * C + B * C + 1;
    if (rc == TN_OK) rc = tn_tensor_empty(&s->lp, 3, slp, am->dtype, TN_CUDA);
    if (rc == TN_OK) rc = tn_tensor_empty(&s->ap, 3, sap, am->dtype, TN_CUDA);
    if (rc == TN_OK) rc = tn_tensor_empty(&s->Z, 3, sz, am->dtype, TN_CUDA);
    if (rc == TN_OK) rc = tn_tensor_empty(&s->dbl, 1, &nd, TN_F64, TN_CUDA);
    if (rc == TN_OK) rc = rnnt_flags_new(&s->flag, 2, st);
    if (rc != TN_OK) return rc;
    double *p = (double *)s->dbl->data;
    double *lmax = p, *lsum = p + B * S1, *amax = p + 2 * B * S1, *asum = amax + B * T, *U = asum + B * T, *logU = U + C;
    double *upart = logU + C; /* (B, C) */
    d.lmax = lmax, d.lsum = lsum, d.amax = amax, d.asum = asum, d.U = U, d.logU = logU;
    d.sym = (const int64_t *)s->sym->data;
    d.lm = lm->data, d.am = am->data, d.lp = s->lp->data, d.ap = s->ap->data, d.Z = s->Z->data;
    unsigned long long *fl = (unsigned long long *)s->flag->data;
    if (B * S1 > 0) {
        if (s->f64)
            simple_exp_kernel<double><<<(unsigned)(B * S1), TN_CUDA_THREADS, 0, st>>>(
                (const double *)lm->data, (double *)s->lp->data, lmax, d.smoothed ? lsum : NULL, C, fl);
        else
            simple_exp_kernel<float><<<(unsigned)(B * S1), TN_CUDA_THREADS, 0, st>>>(
                (const float *)lm->data, (float *)s->lp->data, lmax, d.smoothed ? lsum : NULL, C, fl);
        TN_TRY(TN_CUDA_CHECK_LAUNCH());
    }
    if (B * T > 0) {
        if (s->f64)
            simple_exp_kernel<double><<<(unsigned)(B * T), TN_CUDA_THREADS, 0, st>>>(
                (const double *)am->data, (double *)s->ap->data, amax, NULL, C, fl + 1);
        else
            simple_exp_kernel<float><<<(unsigned)(B * T), TN_CUDA_THREADS, 0, st>>>(
                (const float *)am->data, (float *)s->ap->data, amax, NULL, C, fl + 1);
        TN_TRY(TN_CUDA_CHECK_LAUNCH());
    }
    if (check & 2) { /* forward only: the lm rows first, as the CPU reports them */
        rnnt_check_desc dd;
        memset(&dd, 0, sizeof dd);
        dd.kind = RK_SIMPLE_ROW, dd.op = rnnt_op_id(op);
        dd.c[0] = 1, dd.c[1] = S1, dd.c[3] = lm->shape[0], dd.c[4] = lm->shape[1], dd.c[5] = lm->shape[2];
        TN_TRY(rnnt_record(dd, fl, st));
        dd.c[0] = 0, dd.c[1] = T, dd.c[3] = am->shape[0], dd.c[4] = am->shape[1], dd.c[5] = am->shape[2];
        TN_TRY(rnnt_record(dd, fl + 1, st));
    }
    if (d.smoothed) {
        if (B > 0) {
            if (s->f64)
                simple_unigram_part_kernel<double><<<tn_cuda_blocks(B * C), TN_CUDA_THREADS, 0, st>>>(
                    (const double *)s->lp->data, lsum, upart, B, S1, C);
            else
                simple_unigram_part_kernel<float><<<tn_cuda_blocks(B * C), TN_CUDA_THREADS, 0, st>>>(
                    (const float *)s->lp->data, lsum, upart, B, S1, C);
            TN_TRY(TN_CUDA_CHECK_LAUNCH());
        }
        if (s->f64)
            simple_unigram_kernel<double><<<tn_cuda_blocks(C), TN_CUDA_THREADS, 0, st>>>(upart, U, logU, B, S1, C);
        else
            simple_unigram_kernel<float><<<tn_cuda_blocks(C), TN_CUDA_THREADS, 0, st>>>(upart, U, logU, B, S1, C);
        TN_TRY(TN_CUDA_CHECK_LAUNCH());
        if (B * T > 0) {
            if (s->f64)
                simple_asum_kernel<double><<<(unsigned)(B * T), TN_CUDA_THREADS, 0, st>>>(
                    (const double *)s->ap->data, U, asum, C);
            else
                simple_asum_kernel<float><<<(unsigned)(B * T), TN_CUDA_THREADS, 0, st>>>(
                    (const float *)s->ap->data, U, asum, C);
            TN_TRY(TN_CUDA_CHECK_LAUNCH());
        }
    }
    if (T > 0 && B > 0) { /* Z[b] = lp[b] ap[b]^T */
        const int64_t bs[1] = {B};
        TN_TRY(tn_cuda_matmul(op, s->Z, s->lp, s->ap, 0, 1, 1, bs, S1, C, T, T, 1.0, 0.0));
    }
    return TN_OK;
}

extern "C" tn_status tn_cuda_rnnt_simple(const char *op, tn_tensor *px, tn_tensor *py, const tn_tensor *lm,
                                         const tn_tensor *am, const tn_tensor *symbols, const tn_tensor *boundary,
                                         int64_t term, int32_t rnnt_type, double lm_only_scale, double am_only_scale,
                                         double delay_penalty) {
    const cudaStream_t st = tn_cuda_stream_now();
    simple_state s;
    tn_status rc = simple_prepare(op, &s, lm, am, symbols, boundary, term, rnnt_type, lm_only_scale, am_only_scale, 3, st);
    const simple_dev &d = s.d;
    const int64_t n = d.B * (d.S + 1) * d.T;
    if (rc == TN_OK && n > 0) {
        if (s.f64) simple_gather_kernel<double><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(d, (double *)px->data, (double *)py->data);
        else simple_gather_kernel<float><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(d, (float *)px->data, (float *)py->data);
        rc = TN_CUDA_CHECK_LAUNCH();
    }
    if (rc == TN_OK && d.T == 0 && d.T0 > 0 && d.B * d.S > 0) {
        simple_px_tail_kernel<<<tn_cuda_blocks(d.B * d.S), TN_CUDA_THREADS, 0, st>>>(px->data, s.f64, d.B, d.S, d.T0);
        rc = TN_CUDA_CHECK_LAUNCH();
    }
    if (rc == TN_OK)
        rc = rnnt_post(px->data, py->data, s.f64, boundary, d.B, d.S, d.T, rnnt_type, delay_penalty, st);
    simple_free(&s);
    return rc;
}

/* backward step 1, one thread per (b, s, t): gx, gy (the effective gradients of the gathered
 * px and of py) and Q = cs (gx + gy) / Z in place of Z */
template <typename F>
__global__ void simple_q_kernel(const simple_dev c, const F *gpx, const F *gpy, rnnt_bnd_arg ba, int32_t type,
                                double *gx, double *gy) {
    const int64_t S = c.S, S1 = S + 1, T = c.T, T0 = c.T0;
    TN_CUDA_GRID_LOOP(i, c.B * S1 * T) {
        const int64_t b = i / (S1 * T), s = (i / T) % S1, t = i % T;
        tn_rnnt_bnd bd;
        rnnt_bnd_load(ba, b, S, T, 0, &bd);
        double vx = 0.0;
        if (s < S && !(type == TN_RNNT_REGULAR && ba.p && t == bd.t1)) vx = (double)gpx[(b * S + s) * T0 + t];
        double vy = (double)gpy[(b * S1 + s) * T + t];
        if (type == TN_RNNT_CONSTRAINED && s >= 1) vy += (double)gpx[(b * S + s - 1) * T0 + t];
        gx[i] = vx;
        gy[i] = vy;
        const double z = simple_z<F>(c, i);
        ((F *)c.Z)[i] = (F)(c.cs * (vx + vy) / z);
    }
}

/* row sums over t (rows (b, s)) and column sums over s (columns (b, t)) of gx, gy */
__global__ void simple_rowsum_kernel(const double *gx, const double *gy, double *sx, double *sy, int64_t B, int64_t S1,
                                     int64_t T) {
    TN_CUDA_GRID_LOOP(r, B * S1) {
        double a = 0.0, c = 0.0;
        for (int64_t t = 0; t < T; t++) a += gx[r * T + t], c += gy[r * T + t];
        sx[r] = a, sy[r] = c;
    }
}
__global__ void simple_colsum_kernel(const double *gx, const double *gy, double *cx, double *cy, int64_t B, int64_t S1,
                                     int64_t T) {
    TN_CUDA_GRID_LOOP(j, B * T) {
        const int64_t b = j / T, t = j % T;
        double a = 0.0, c = 0.0;
        for (int64_t s = 0; s < S1; s++) {
            c += gy[(b * S1 + s) * T + t];
            if (s < S1 - 1) a += gx[(b * S1 + s) * T + t];
        }
        cx[j] = a, cy[j] = c;
    }
}

/* grad_lm rows, one block per (b, s) (core/rnnt.c simple_back_one, the glb part) */
template <typename F>
__global__ void __launch_bounds__(TN_CUDA_THREADS) simple_glm_kernel(const simple_dev c, F *glm, const double *sx,
                                                                     const double *sy) {
    const int64_t r = blockIdx.x, S1 = c.S + 1, b = r / S1, s = r % S1, C = c.C;
    const F *lp = (const F *)c.lp + r * C;
    F *g = glm + r * C;
    for (int64_t k = threadIdx.x; k < C; k += blockDim.x) g[k] = (F)(-(double)lp[k] * (double)g[k]);
    __syncthreads();
    const int64_t sym = s < c.S ? c.sym[b * c.S + s] : -1;
    if (threadIdx.x == 0) {
        if (sym >= 0) g[sym] = (F)((double)g[sym] + c.cs * sx[r]);
        g[c.term] = (F)((double)g[c.term] + c.cs * sy[r]);
    }
    __syncthreads();
    if (!c.smoothed) return;
    const double Lx = c.ls * sx[r], Ly = c.ls * sy[r], inv = c.lsum[r];
    for (int64_t k = threadIdx.x; k < C; k += blockDim.x)
        g[k] = (F)((double)g[k] - (Lx + Ly) * (double)lp[k] / inv);
    __syncthreads();
    if (threadIdx.x == 0) {
        if (sym >= 0) g[sym] = (F)((double)g[sym] + Lx);
        g[c.term] = (F)((double)g[c.term] + Ly);
    }
}

/* grad_am rows, one block per (b, t) (the gab part). Each thread owns classes k and applies, in
 * the CPU's order and with the CPU's rounding after every step, -ap g, the cs gx of the
 * positions s whose symbol is k (s ascending), cs cy at the termination symbol and, smoothed, the
 * AM-only part: no serial loop over the symbols on one thread, no atomics. The symbols of the
 * utterance are read by every thread at once (one broadcast load per s). */
template <typename F>
__global__ void __launch_bounds__(TN_CUDA_THREADS) simple_gam_kernel(const simple_dev c, F *gam, const double *gx,
                                                                     const double *cx, const double *cy) {
    const int64_t r = blockIdx.x, T = c.T, b = r / T, t = r % T, C = c.C, S = c.S, S1 = S + 1;
    const F *ap = (const F *)c.ap + r * C;
    const int64_t *sym = c.sym + b * S;
    const double *gxt = gx + b * S1 * T + t; /* gx[b, s, t] = gxt[s T] */
    F *g = gam + r * C;
    const double Gtt = c.smoothed ? c.as * (cx[r] + cy[r]) : 0.0, asum = c.smoothed ? c.asum[r] : 1.0;
    for (int64_t k = threadIdx.x; k < C; k += blockDim.x) {
        F v = (F)(-(double)ap[k] * (double)g[k]);
        for (int64_t s = 0; s < S; s++)
            if (sym[s] == k) v = (F)((double)v + c.cs * gxt[s * T]);
        if (k == c.term) v = (F)((double)v + c.cs * cy[r]);
        if (c.smoothed) {
            v = (F)((double)v - Gtt * (double)ap[k] * c.U[k] / asum);
            for (int64_t s = 0; s < S; s++)
                if (sym[s] == k) v = (F)((double)v + c.as * gxt[s * T]);
            if (k == c.term) v = (F)((double)v + c.as * cy[r]);
        }
        g[k] = v;
    }
}

/* smoothed, grad_lm: utterance b's dU[b, k] and dLogU[b, k] (core/rnnt.c simple_back_one), one
 * thread per (b, k); then tot[k] = sum_b dU[b, k] + (sum_b dLogU[b, k]) / U[k], one thread per k */
template <typename F>
__global__ void simple_dpart_kernel(const simple_dev c, const double *sx, const double *cx, const double *cy,
                                    double *du, double *dl) {
    const int64_t B = c.B, S = c.S, S1 = S + 1, T = c.T, C = c.C;
    TN_CUDA_GRID_LOOP(i, B * C) {
        const int64_t b = i / C, k = i % C;
        double pu = 0.0, pl = 0.0;
        for (int64_t t = 0; t < T; t++) {
            const int64_t j = b * T + t;
            pu -= c.as * (cx[j] + cy[j]) * (double)((const F *)c.ap)[j * C + k] / c.asum[j];
            if (k == c.term) pl += c.as * cy[j];
        }
        for (int64_t s = 0; s < S; s++)
            if (c.sym[b * S + s] == k) pl += c.as * sx[b * S1 + s];
        du[i] = pu, dl[i] = pl;
    }
}
__global__ void simple_tot_kernel(const double *du, const double *dl, const double *U, double *tot, int64_t B,
                                  int64_t C) {
    TN_CUDA_GRID_LOOP(k, C) {
        double a = 0.0, l = 0.0;
        for (int64_t b = 0; b < B; b++) a += du[b * C + k], l += dl[b * C + k];
        tot[k] = a + l / U[k];
    }
}

/* smoothed, grad_lm: through the unigram, one block per lm row */
template <typename F>
__global__ void __launch_bounds__(TN_CUDA_THREADS) simple_unigram_back_kernel(const simple_dev c, F *glm,
                                                                              const double *tot) {
    const int64_t r = blockIdx.x, C = c.C;
    const F *p = (const F *)c.lp + r * C;
    const double inv = 1.0 / c.lsum[r], inv_n = 1.0 / (double)(c.B * (c.S + 1));
    double dot = 0.0;
    for (int64_t k = threadIdx.x; k < C; k += blockDim.x) dot += tot[k] * (double)p[k] * inv;
    dot = tn_cuda_block_reduce<RSumD>(dot);
    for (int64_t k = threadIdx.x; k < C; k += blockDim.x)
        glm[r * C + k] = (F)((double)glm[r * C + k] + inv_n * (double)p[k] * inv * (tot[k] - dot));
}

template <typename F>
static tn_status simple_backward_run(const char *op, simple_state &s, tn_tensor *glm, tn_tensor *gam,
                                     const tn_tensor *gpx, const tn_tensor *gpy, const tn_tensor *boundary,
                                     int32_t rnnt_type, cudaStream_t st) {
    const simple_dev &d = s.d;
    const int64_t B = d.B, S1 = d.S + 1, T = d.T, C = d.C, n = B * S1 * T;
    const int64_t nd = 2 * n + 2 * B * S1 + 2 * B * T + C + 2 * B * C + 1;
    tn_tensor *scr = NULL;
    TN_TRY(tn_tensor_empty(&scr, 1, &nd, TN_F64, TN_CUDA));
    double *gx = (double *)scr->data, *gy = gx + n, *sx = gy + n, *sy = sx + B * S1, *cx = sy + B * S1, *cy = cx + B * T,
           *tot = cy + B * T, *du = tot + C, *dl = du + B * C;
    tn_status rc = TN_OK;
#define SB_LAUNCH(...)                                  \
    do {                                                \
        if (rc == TN_OK) {                              \
            __VA_ARGS__;                                \
            rc = TN_CUDA_CHECK_LAUNCH();                \
        }                                               \
    } while (0)
    if (n > 0) {
        SB_LAUNCH((simple_q_kernel<F><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, st>>>(
            d, (const F *)gpx->data, (const F *)gpy->data, rnnt_bnd_of(boundary), rnnt_type, gx, gy)));
    }
    const int64_t bs[1] = {B};
    if (glm && rc == TN_OK) {
        if (T > 0) rc = tn_cuda_matmul(op, glm, s.Z, s.ap, 0, 0, 1, bs, S1, T, C, C, 1.0, 0.0);
        else rc = TN_CUDA_CHECK(cudaMemsetAsync(glm->data, 0, sizeof(F) * (size_t)(B * S1 * C), st));
    }
    if (gam && T > 0 && rc == TN_OK) rc = tn_cuda_matmul(op, gam, s.Z, s.lp, 1, 0, 1, bs, T, S1, C, C, 1.0, 0.0);
    if (B * S1 > 0) SB_LAUNCH((simple_rowsum_kernel<<<tn_cuda_blocks(B * S1), TN_CUDA_THREADS, 0, st>>>(gx, gy, sx, sy, B, S1, T)));
    if (B * T > 0) SB_LAUNCH((simple_colsum_kernel<<<tn_cuda_blocks(B * T), TN_CUDA_THREADS, 0, st>>>(gx, gy, cx, cy, B, S1, T)));
    if (glm && B * S1 > 0)
        SB_LAUNCH((simple_glm_kernel<F><<<(unsigned)(B * S1), TN_CUDA_THREADS, 0, st>>>(d, (F *)glm->data, sx, sy)));
    if (gam && B * T > 0)
        SB_LAUNCH((simple_gam_kernel<F><<<(unsigned)(B * T), TN_CUDA_THREADS, 0, st>>>(d, (F *)gam->data, gx, cx, cy)));
    if (d.smoothed && glm && B * S1 > 0) {
        SB_LAUNCH((simple_dpart_kernel<F><<<tn_cuda_blocks(B * C), TN_CUDA_THREADS, 0, st>>>(d, sx, cx, cy, du, dl)));
        SB_LAUNCH((simple_tot_kernel<<<tn_cuda_blocks(C), TN_CUDA_THREADS, 0, st>>>(du, dl, d.U, tot, B, C)));
        SB_LAUNCH((simple_unigram_back_kernel<F><<<(unsigned)(B * S1), TN_CUDA_THREADS, 0, st>>>(d, (F *)glm->data, tot)));
    }
#undef SB_LAUNCH
    tn_tensor_free(scr);
    return rc;
}

extern "C" tn_status tn_cuda_rnnt_simple_backward(const char *op, tn_tensor *grad_lm, tn_tensor *grad_am,
                                                  const tn_tensor *grad_px, const tn_tensor *grad_py,
                                                  const tn_tensor *lm, const tn_tensor *am, const tn_tensor *symbols,
                                                  const tn_tensor *boundary, int64_t term, int32_t rnnt_type,
                                                  double lm_only_scale, double am_only_scale) {
    const cudaStream_t st = tn_cuda_stream_now();
    if (!grad_lm && !grad_am) { /* nothing to compute, but the CPU still checks symbols and boundary */
        TN_TRY(rnnt_check_symbols(op, symbols, am->shape[2], st));
        return rnnt_check_boundary(op, boundary, lm->shape[1] - 1, am->shape[1], rnnt_type != TN_RNNT_REGULAR, st);
    }
    simple_state s;
    /* symbols and boundary checked as by the CPU's backward; the finiteness of lm / am is the
     * forward's check (the CPU's backward does not repeat it either) */
    tn_status rc = simple_prepare(op, &s, lm, am, symbols, boundary, term, rnnt_type, lm_only_scale, am_only_scale, 1, st);
    if (rc == TN_OK) {
        if (s.f64) rc = simple_backward_run<double>(op, s, grad_lm, grad_am, grad_px, grad_py, boundary, rnnt_type, st);
        else rc = simple_backward_run<float>(op, s, grad_lm, grad_am, grad_px, grad_py, boundary, rnnt_type, st);
    }
    simple_free(&s);
    return rc;
}
