/*
 * rnnt_common.h — what rnnt.c and rnnt_prune.c share: the argument checks and the px
 * post-processing (fix_for_boundary, constrained, delay penalty), defined in rnnt.c, and the
 * f32/f64 element access of both files. Not installed, not part of the API.
 */
#ifndef TERN_RNNT_COMMON_H
#define TERN_RNNT_COMMON_H

#include "internal.h"
#include "kernels/rnnt.h"

tn_status tn_rnnt_internal_float(const char *op, const char *name, const tn_tensor *t, int32_t ndim,
                                 const int64_t *shape, int32_t dtype);
tn_status tn_rnnt_internal_boundary(const char *op, const tn_tensor *boundary, int64_t B, int64_t S,
                                    int64_t T, int need_t_ge_s, tn_rnnt_bnd **out);
tn_status tn_rnnt_internal_symbols(const char *op, const tn_tensor *symbols, int64_t B, int64_t S,
                                   int64_t C);
tn_status tn_rnnt_internal_options(const char *op, int64_t termination_symbol, int64_t C,
                                   int32_t rnnt_type, double delay_penalty);
void tn_rnnt_internal_post(void *px, void *py, const tn_rnnt_bnd *bnd, int boundary_given, int64_t B,
                           int64_t S, int64_t T, int32_t rnnt_type, double delay_penalty, int f64);

/* Every tensor of a call on one device: the name/tensor pairs after op (a NULL tensor is skipped,
 * a NULL name ends the list) must all be on ref's device type (tn_check_backend, called on each
 * by the checks above, puts CUDA tensors on the current device). */
tn_status tn_rnnt_internal_device(const char *op, const char *ref_name, const tn_tensor *ref, ...);

#ifdef TERN_HAVE_CUDA
/* cuda/rnnt.cu and cuda/rnnt_prune.cu: the CUDA backend of the entry points of rnnt.c and
 * rnnt_prune.c, called after their checks of shapes, dtypes and devices with every tensor on the
 * current CUDA device. The checks that read values (symbols in [0, C), boundary rows, ranges,
 * finiteness, s_range) run on the device: a bad value is recorded in the device's pending RNN-T
 * error (the CPU's message), raised at the next host wait (tn_cuda_check_pending), and the
 * kernels stay inside the tensors whatever the values. Nothing waits for the device. */
tn_status tn_cuda_rnnt_mi(const char *op, tn_tensor *scores, tn_tensor *px_grad /* [OPTIONAL] */,
                          tn_tensor *py_grad /* [OPTIONAL] */, tn_tensor *p /* [OPTIONAL] */, const tn_tensor *px,
                          const tn_tensor *py, const tn_tensor *boundary /* [OPTIONAL] */);
tn_status tn_cuda_rnnt_mi_backward(const char *op, tn_tensor *px_grad, tn_tensor *py_grad,
                                   const tn_tensor *grad_scores /* [OPTIONAL] */, const tn_tensor *px,
                                   const tn_tensor *py, const tn_tensor *boundary /* [OPTIONAL] */,
                                   const tn_tensor *p);
tn_status tn_cuda_rnnt_simple(const char *op, tn_tensor *px, tn_tensor *py, const tn_tensor *lm, const tn_tensor *am,
                              const tn_tensor *symbols, const tn_tensor *boundary /* [OPTIONAL] */, int64_t term,
                              int32_t rnnt_type, double lm_only_scale, double am_only_scale, double delay_penalty);
tn_status tn_cuda_rnnt_simple_backward(const char *op, tn_tensor *grad_lm /* [OPTIONAL] */,
                                       tn_tensor *grad_am /* [OPTIONAL] */, const tn_tensor *grad_px,
                                       const tn_tensor *grad_py, const tn_tensor *lm, const tn_tensor *am,
                                       const tn_tensor *symbols, const tn_tensor *boundary /* [OPTIONAL] */,
                                       int64_t term, int32_t rnnt_type, double lm_only_scale, double am_only_scale);
tn_status tn_cuda_rnnt_band(const char *op, tn_tensor *px, tn_tensor *py, tn_tensor *lse /* [OPTIONAL] */,
                            const tn_tensor *logits, const tn_tensor *symbols, const tn_tensor *ranges /* [OPTIONAL] */,
                            const tn_tensor *boundary /* [OPTIONAL] */, int64_t term, int32_t rnnt_type,
                            double delay_penalty);
tn_status tn_cuda_rnnt_band_backward(const char *op, tn_tensor *grad_logits, const tn_tensor *grad_px,
                                     const tn_tensor *grad_py, const tn_tensor *logits,
                                     const tn_tensor *lse /* [OPTIONAL] */, const tn_tensor *symbols,
                                     const tn_tensor *ranges /* [OPTIONAL] */,
                                     const tn_tensor *boundary /* [OPTIONAL] */, int64_t term, int32_t rnnt_type);
tn_status tn_cuda_rnnt_prune_ranges(const char *op, tn_tensor *ranges, const tn_tensor *px_grad,
                                    const tn_tensor *py_grad, const tn_tensor *boundary /* [OPTIONAL] */);
tn_status tn_cuda_rnnt_do_pruning(const char *op, tn_tensor *lm_pruned, const tn_tensor *lm, const tn_tensor *ranges);
tn_status tn_cuda_rnnt_do_pruning_backward(const char *op, tn_tensor *grad_lm, const tn_tensor *grad_lm_pruned,
                                           const tn_tensor *ranges);
tn_status tn_cuda_rnnt_pruned_tanh(const char *op, tn_tensor *h, const tn_tensor *am, const tn_tensor *lm,
                                   const tn_tensor *ranges);
tn_status tn_cuda_rnnt_pruned_tanh_backward(const char *op, tn_tensor *grad_am /* [OPTIONAL] */,
                                            tn_tensor *grad_lm /* [OPTIONAL] */, const tn_tensor *grad_h,
                                            const tn_tensor *h, const tn_tensor *am, const tn_tensor *lm,
                                            const tn_tensor *ranges);
/* The device's pending RNN-T error (cuda/rnnt.cu), read at the host's waits by
 * tn_cuda_check_pending (cuda/index.cu): as there, op NULL queues the read, op non-NULL raises it. */
tn_status tn_cuda_rnnt_check_pending(const char *op);
#endif

/* Element i of an f32 (f64 == 0) or f64 buffer, as double. */
static inline double ld(const void *p, int64_t i, int f64) {
    return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void st(void *p, int64_t i, int f64, double v) {
    if (f64) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
}

#endif /* TERN_RNNT_COMMON_H */
