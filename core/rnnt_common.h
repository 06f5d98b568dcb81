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

/* Element i of an f32 (f64 == 0) or f64 buffer, as double. */
static inline double ld(const void *p, int64_t i, int f64) {
    return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void st(void *p, int64_t i, int f64, double v) {
    if (f64) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
}

#endif /* TERN_RNNT_COMMON_H */
