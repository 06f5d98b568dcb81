/*
 * spec/c/helpers.h — tensor helpers shared by C tests (test_audio.c, test_copy.c,
 * test_elementwise.c, test_optim.c, test_reduce.c, test_rnnt.c, test_sru.c): make a CPU tensor,
 * read and write element i in row-major logical order as double (any dtype, any strides) or of
 * a contiguous tensor through the library's conversions, compare with a relative tolerance.
 * static inline so a test that uses only some of them builds without unused-function warnings.
 */
#ifndef TERN_SPEC_HELPERS_H
#define TERN_SPEC_HELPERS_H

#include <math.h>
#include <stdint.h>

#include "check.h"
#include "common.h"
#include "internal.h"
#include "kernels/half.h"

/* A new contiguous CPU tensor (checked). */
static inline tn_tensor *mk(int32_t dtype, int32_t ndim, const int64_t *shape) {
    tn_tensor *t = NULL;
    CHECK_OK(tn_tensor_empty(&t, ndim, shape, dtype, TN_CPU));
    return t;
}
/* Element i as double. */
static inline double at(const tn_tensor *t, int64_t i) {
    const char *p = elem(t, i);
    switch (t->dtype) {
    case TN_F32: return *(const float *)p;
    case TN_F64: return *(const double *)p;
    case TN_F16: return tn_half_to_float(*(const uint16_t *)p);
    case TN_BF16: return tn_bf16_to_float(*(const uint16_t *)p);
    case TN_I32: return *(const int32_t *)p;
    case TN_I64: return (double)*(const int64_t *)p;
    default: return *(const uint8_t *)p;
    }
}
/* Stores v as element i (plain C conversion; no saturation). */
static inline void put(tn_tensor *t, int64_t i, double v) {
    char *p = elem(t, i);
    switch (t->dtype) {
    case TN_F32: *(float *)p = (float)v; break;
    case TN_F64: *(double *)p = v; break;
    case TN_F16: *(uint16_t *)p = tn_float_to_half((float)v); break;
    case TN_BF16: *(uint16_t *)p = tn_float_to_bf16((float)v); break;
    case TN_I32: *(int32_t *)p = (int32_t)v; break;
    case TN_I64: *(int64_t *)p = (int64_t)v; break;
    default: *(uint8_t *)p = (uint8_t)v; break;
    }
}
/* Element i of a contiguous tensor (storage order) as double, and the store back, through the
 * library's own conversions rather than at / put's. */
static inline double get(const tn_tensor *t, int64_t i) {
    return tn_load_f64(t->data + i * (int64_t)tn_dtype_size(t->dtype), t->dtype);
}
static inline void set(tn_tensor *t, int64_t i, double v) {
    tn_store_f64(t->data + i * (int64_t)tn_dtype_size(t->dtype), t->dtype, v);
}
/* got == want within rtol * (1 + |want|); NaN matches NaN, an infinity only itself. */
static inline int close_to(double got, double want, double rtol) {
    if (isnan(want)) return isnan(got);
    if (isinf(want)) return got == want;
    return fabs(got - want) <= rtol * (1 + fabs(want));
}

#endif /* TERN_SPEC_HELPERS_H */
