/*
 * spec/c/common.h — what every C test may share whatever its own tensor constructor and
 * accessors (their signatures differ from test to test): the xorshift64 step the tests draw
 * their random numbers from, the address of an element in row-major logical order, and a
 * transposed view.
 */
#ifndef TERN_SPEC_COMMON_H
#define TERN_SPEC_COMMON_H

#include <stdint.h>

#include "check.h"

/* One xorshift64 (13, 7, 17) step of *s; each test keeps its own seed and maps the word to the
 * values it wants, so the sequences are those the expectations were written against. */
static inline uint64_t xorshift64(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
/* Address of element i in row-major logical order (any strides). */
static inline char *elem(const tn_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int32_t d = t->ndim - 1; d >= 0; d--) { off += (i % t->shape[d]) * t->strides[d]; i /= t->shape[d]; }
    return t->data + off * (int64_t)tn_dtype_size(t->dtype);
}
/* The (d0, d1) transposed view of t, which it consumes: a strided input in one call. */
static inline tn_tensor *transposed(tn_tensor *t, int d0, int d1) {
    tn_tensor *v = NULL;
    CHECK_OK(tn_transpose(&v, t, d0, d1));
    tn_tensor_free(t);
    return v;
}

#endif /* TERN_SPEC_COMMON_H */
