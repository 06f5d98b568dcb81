/*
 * cuda/rnnt.cuh — what cuda/rnnt.cu and cuda/rnnt_prune.cu share: the device's pending RNN-T
 * error (the value checks of the family, raised at the next host wait), the boundary and index
 * loads, and the px post-processing kernel (fix_for_boundary, constrained, delay penalty).
 *
 * Value checks without host reads. A check is a kernel that atomicMin's the row-major position of
 * the first bad value (in the CPU's order of checking) into a flag (ULLONG_MAX: none), then a
 * one-thread kernel that, when the flag holds a position and no error is pending yet, decodes it
 * (reading the bad values on the device) into the device's pending record: kind, op and the
 * numbers of the CPU's message. tn_cuda_rnnt_check_pending (rnnt.cu), called by
 * tn_cuda_check_pending at every host wait, formats the CPU's message from them. Checks are
 * queued in the CPU's order, so the first one that fails is the one recorded, as on the CPU. The
 * kernels never index outside a tensor whatever the values (a bad boundary row makes its
 * utterance empty, bad symbols and ranges are clamped), so a bad value costs a wrong result
 * that the raised error discards, never a fault.
 */
#ifndef TERN_CUDA_RNNT_CUH
#define TERN_CUDA_RNNT_CUH

#include "common.cuh"

#include "kernels/rnnt.h"

enum rnnt_kind {
    RK_NONE = 0,
    RK_SYMBOLS,    /* b, s, value, C */
    RK_BND_RANGE,  /* b, s0, t0, s1, t1, S, T */
    RK_BND_FRAMES, /* b, s0, t0, s1, t1 */
    RK_BAND_RANGES,/* b, t, R-1, S+1-R, first value */
    RK_RANGE_VAL,  /* b, t, k, value, S+1 */
    RK_SRANGE,     /* R, B, T, R, S, regular, s_range the CPU gives */
    RK_MI_VALUE,   /* isx, b, s, t, isnan, px shape (3), py shape (3) */
    RK_SIMPLE_ROW, /* islm, b, row, shape (3) */
    RK_BAND_ROW    /* b, t, k, logits shape (4) */
};

enum { RNNT_NV = 16 };

/* The first bad value of a device not yet reported (one per device, device memory). */
struct rnnt_pending {
    unsigned int state; /* 0 free, 1 being written, 2 holds an error */
    int32_t kind;       /* rnnt_kind */
    int32_t op;         /* index into rnnt_op_names (rnnt.cu); -1 unknown */
    int32_t pad;
    long long v[RNNT_NV];
};

/* What a record kernel needs to decode a flag. */
struct rnnt_check_desc {
    int32_t kind, op;
    int32_t itype;          /* the index tensor's dtype (TN_I64 / TN_I32) */
    int32_t f64;            /* float operands are f64 */
    const void *idx;        /* the index tensor (symbols, boundary, ranges) */
    int64_t is0, is1, is2;  /* its strides, elements */
    const void *fx, *fy;    /* float operands (MI: px, py) */
    long long c[RNNT_NV];   /* constants: the message's numbers that do not depend on values */
};

/* ---- host side (rnnt.cu) ---- */
/* the current device's record, created on first use */
tn_status rnnt_pending_get(rnnt_pending **rec);
/* op name -> id of rnnt_op_names */
int32_t rnnt_op_id(const char *op);
/* a (n) ULLONG_MAX-filled flag buffer from the pool (free with tn_tensor_free) */
tn_status rnnt_flags_new(tn_tensor **t, int64_t n, cudaStream_t st);
/* queues the one-thread record kernel for d, flag */
tn_status rnnt_record(const rnnt_check_desc &d, const unsigned long long *flag, cudaStream_t st);

/* ---- device side ---- */

static __device__ __forceinline__ int64_t rnnt_ld_idx(const void *p, int32_t itype, int64_t off) {
    return itype == TN_I64 ? ((const int64_t *)p)[off] : (int64_t)((const int32_t *)p)[off];
}

/* Boundary row b (boundary NULL: [0, 0, S, T]); returns 0 and an empty rectangle when the row is
 * not valid (the check kernel reports it). need_t_ge_s: modified / constrained. */
struct rnnt_bnd_arg {
    const void *p;     /* (B, 4) or NULL */
    int32_t itype;
    int64_t s0, s1;    /* strides */
};
static __device__ __forceinline__ int rnnt_bnd_load(const rnnt_bnd_arg &a, int64_t b, int64_t S, int64_t T,
                                                    int need_t_ge_s, tn_rnnt_bnd *o) {
    if (!a.p) {
        *o = tn_rnnt_bnd{0, 0, S, T};
        return 1;
    }
    tn_rnnt_bnd v;
    v.s0 = rnnt_ld_idx(a.p, a.itype, b * a.s0);
    v.t0 = rnnt_ld_idx(a.p, a.itype, b * a.s0 + a.s1);
    v.s1 = rnnt_ld_idx(a.p, a.itype, b * a.s0 + 2 * a.s1);
    v.t1 = rnnt_ld_idx(a.p, a.itype, b * a.s0 + 3 * a.s1);
    const int ok = !(v.s0 < 0 || v.t0 < 0 || v.s1 < v.s0 || v.t1 < v.t0 || v.s1 > S || v.t1 > T) &&
                   !(need_t_ge_s && v.t1 - v.t0 < v.s1 - v.s0);
    if (!ok) v = tn_rnnt_bnd{0, 0, -1, -1}; /* empty: no cell */
    *o = v;
    return ok;
}

static inline rnnt_bnd_arg rnnt_bnd_of(const tn_tensor *boundary) {
    rnnt_bnd_arg a;
    memset(&a, 0, sizeof a);
    if (boundary) {
        a.p = boundary->data;
        a.itype = boundary->dtype;
        a.s0 = boundary->strides[0];
        a.s1 = boundary->strides[1];
    }
    return a;
}

/* ---- host helpers shared by both files (rnnt.cu) ---- */
/* symbols (B, S) in [0, C): check + record (RK_SYMBOLS) */
tn_status rnnt_check_symbols(const char *op, const tn_tensor *symbols, int64_t C, cudaStream_t st);
/* boundary rows (RK_BND_RANGE / RK_BND_FRAMES); nothing when boundary is NULL */
tn_status rnnt_check_boundary(const char *op, const tn_tensor *boundary, int64_t S, int64_t T, int need_t_ge_s,
                              cudaStream_t st);
/* fast_rnnt's px post-processing (core/rnnt.c tn_rnnt_internal_post) on the device; px (B, S, T0), py (B, S+1, T) */
tn_status rnnt_post(void *px, const void *py, int f64, const tn_tensor *boundary, int64_t B, int64_t S, int64_t T,
                    int32_t rnnt_type, double delay_penalty, cudaStream_t st);
/* symbols as contiguous i64 (B, S) into a new pool tensor, clamped to [0, C) */
tn_status rnnt_symbols_i64(tn_tensor **out, const tn_tensor *symbols, int64_t C, cudaStream_t st);

#endif /* TERN_CUDA_RNNT_CUH */
