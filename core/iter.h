/*
 * iter.h — strided N-d iteration over up to TN_ITER_MAX_OPS operands that share one
 * broadcast shape (CPU only; header-only, static inline).
 *
 * Each operand is (data pointer, element size, strides in elements); a stride of 0 marks a
 * broadcast dim. tn_iter_finish() drops size-1 dims and coalesces neighbouring dims that are
 * contiguous for every operand, so a contiguous same-shape case becomes one flat loop. The
 * innermost dim is then handed to a kernel as one run:
 *
 *     kernel(ctx, ptrs, strides, n)   // ptrs[k]: operand k's first element of the run,
 *                                     // strides[k]: its stride in elements, n: run length
 *
 * Typed kernels test `strides[k] == 1` (or 0) for all k and take a vectorisable loop.
 * tn_iter_run() splits the linear element range [0, numel) evenly across OpenMP threads
 * when numel >= par_min (a run may start mid-row: the linear index is turned into
 * coordinates), else runs serially without entering an OpenMP region.
 *
 *     tn_iter it;
 *     tn_iter_init(&it, out->ndim, out->shape);      // the broadcast shape
 *     tn_iter_add_tensor(&it, out);                  // operand 0
 *     tn_iter_add_tensor(&it, a);                    // right-aligned; size-1 dims broadcast
 *     tn_iter_finish(&it);
 *     tn_iter_run(&it, kernel, &ctx, TN_PAR_MIN);
 *
 * Dims are stored innermost first: shape[0] is the inner run length.
 */
#ifndef TERN_ITER_H
#define TERN_ITER_H

#include <stdint.h>

#include "tern.h"

#ifdef _OPENMP
#include <omp.h>
#endif

enum { TN_ITER_MAX_OPS = 4 };

/* Below this many elements an op runs on the calling thread (no OpenMP region). */
#define TN_PAR_MIN ((int64_t)32768)

typedef void (*tn_iter_fn)(void *ctx, char **ptrs, const int64_t *strides, int64_t n);

typedef struct tn_iter {
    int32_t ndim;                                 /* >= 1 after finish */
    int32_t nops;
    int64_t numel;
    int64_t shape[TN_MAX_DIMS];                   /* (ndim), innermost first */
    int64_t stride[TN_ITER_MAX_OPS][TN_MAX_DIMS]; /* (nops, ndim), elements, innermost first */
    char *data[TN_ITER_MAX_OPS];                  /* (nops) */
    int64_t elsize[TN_ITER_MAX_OPS];              /* (nops) bytes */
} tn_iter;

/* Start an iterator over the broadcast shape (ndim, shape) (outermost first, as in tensors). */
static inline void tn_iter_init(tn_iter *it, int32_t ndim, const int64_t *shape) {
    it->ndim = ndim;
    it->nops = 0;
    it->numel = 1;
    for (int32_t i = 0; i < ndim; i++) {
        it->shape[i] = shape[ndim - 1 - i];
        it->numel *= shape[ndim - 1 - i];
    }
}

/* Add an operand; its dims align to the right of the iterator's; missing dims and dims of
 * size 1 broadcast (stride 0). The caller has checked that the shapes broadcast. */
static inline void tn_iter_add(tn_iter *it, void *data, size_t elsize, int32_t ndim,
                               const int64_t *shape, const int64_t *strides) {
    int k = it->nops++;
    it->data[k] = (char *)data;
    it->elsize[k] = (int64_t)elsize;
    for (int32_t i = 0; i < it->ndim; i++) {
        int32_t d = ndim - 1 - i; /* operand dim for iterator dim i */
        it->stride[k][i] = (d >= 0 && shape[d] != 1) ? strides[d] : 0;
    }
}

static inline void tn_iter_add_tensor(tn_iter *it, const tn_tensor *t) {
    tn_iter_add(it, t->data, tn_dtype_size(t->dtype), t->ndim, t->shape, t->strides);
}

/* Drop size-1 dims and merge dim i+1 into dim i where every operand is contiguous across them. */
static inline void tn_iter_finish(tn_iter *it) {
    int32_t nd = 0;
    for (int32_t i = 0; i < it->ndim; i++) {
        if (it->shape[i] == 1) continue;
        if (nd > 0) {
            int merge = 1;
            for (int k = 0; k < it->nops; k++)
                if (it->stride[k][i] != it->stride[k][nd - 1] * it->shape[nd - 1]) { merge = 0; break; }
            if (merge) {
                it->shape[nd - 1] *= it->shape[i];
                continue;
            }
        }
        it->shape[nd] = it->shape[i];
        for (int k = 0; k < it->nops; k++) it->stride[k][nd] = it->stride[k][i];
        nd++;
    }
    if (nd == 0) { /* scalar or all size-1 dims: one element */
        it->shape[0] = 1;
        for (int k = 0; k < it->nops; k++) it->stride[k][0] = 0;
        nd = 1;
    }
    it->ndim = nd;
}

/* Reorders a finished iterator's dims by operand k's strides, smallest innermost (stable; broadcast
 * dims outermost), and merges the dims that become contiguous: the same elements, visited in
 * another linear order (for kernels where the order is free, e.g. a reduction's). */
static inline int64_t tn_iter_dim_key(const tn_iter *it, int k, int32_t d) {
    const int64_t s = it->stride[k][d];
    return s == 0 ? INT64_MAX : s < 0 ? -s : s;
}
static inline void tn_iter_sort_dims(tn_iter *it, int k) {
    for (int32_t d = 1; d < it->ndim; d++) {
        for (int32_t e = d; e > 0 && tn_iter_dim_key(it, k, e) < tn_iter_dim_key(it, k, e - 1); e--) {
            const int64_t n = it->shape[e];
            it->shape[e] = it->shape[e - 1];
            it->shape[e - 1] = n;
            for (int q = 0; q < it->nops; q++) {
                const int64_t s = it->stride[q][e];
                it->stride[q][e] = it->stride[q][e - 1];
                it->stride[q][e - 1] = s;
            }
        }
    }
    tn_iter_finish(it);
}

/* A flat iterator: nops contiguous operands of n elements each. */
static inline void tn_iter_flat(tn_iter *it, int nops, char *const *data, const size_t *elsize,
                                int64_t n) {
    it->ndim = 1;
    it->nops = nops;
    it->numel = n;
    it->shape[0] = n;
    for (int k = 0; k < nops; k++) {
        it->data[k] = data[k];
        it->elsize[k] = (int64_t)elsize[k];
        it->stride[k][0] = 1;
    }
}

/* Run the kernel over linear elements [e0, e1) (row-major over the broadcast shape). */
static inline void tn_iter_range(const tn_iter *it, int64_t e0, int64_t e1, tn_iter_fn fn, void *ctx) {
    if (e0 >= e1) return;
    const int nops = it->nops, nd = it->ndim;
    const int64_t n0 = it->shape[0];
    int64_t idx[TN_MAX_DIMS], row[TN_ITER_MAX_OPS], s0[TN_ITER_MAX_OPS];
    char *p[TN_ITER_MAX_OPS];
    int64_t rest = e0 / n0, i = e0 % n0;
    for (int k = 0; k < nops; k++) { row[k] = 0; s0[k] = it->stride[k][0]; }
    for (int32_t d = 1; d < nd; d++) {
        idx[d] = rest % it->shape[d];
        rest /= it->shape[d];
        for (int k = 0; k < nops; k++) row[k] += idx[d] * it->stride[k][d];
    }
    int64_t e = e0;
    for (;;) {
        int64_t n = n0 - i < e1 - e ? n0 - i : e1 - e;
        for (int k = 0; k < nops; k++) p[k] = it->data[k] + (row[k] + i * s0[k]) * it->elsize[k];
        fn(ctx, p, s0, n);
        e += n;
        if (e >= e1) break;
        i = 0;
        for (int32_t d = 1; d < nd; d++) { /* next row: odometer increment */
            for (int k = 0; k < nops; k++) row[k] += it->stride[k][d];
            if (++idx[d] < it->shape[d]) break;
            for (int k = 0; k < nops; k++) row[k] -= it->stride[k][d] * it->shape[d];
            idx[d] = 0;
        }
    }
}

/* Threads to use for `work` elements (1 below par_min or inside a parallel region). */
static inline int tn_par_threads(int64_t work, int64_t par_min) {
#ifdef _OPENMP
    if (work < par_min || omp_in_parallel()) return 1;
    int nt = omp_get_max_threads();
    int64_t cap = work / (par_min / 4 > 0 ? par_min / 4 : 1); /* >= ~8K elements per thread */
    if (cap < nt) nt = (int)(cap > 1 ? cap : 1);
    return nt;
#else
    (void)work; (void)par_min;
    return 1;
#endif
}

/* for (int64_t var = 0; var < count; var++) { body } on nt threads (static schedule), or a
 * plain loop without an OpenMP region when nt <= 1. nt must name a variable in scope. */
#ifdef _OPENMP
#define TN_PARALLEL_FOR(nt, var, count, ...)                                                  \
    do {                                                                                      \
        const int64_t tn_pf_n_ = (count);                                                     \
        if ((nt) > 1) {                                                                       \
            _Pragma("omp parallel for num_threads(nt) schedule(static)")                      \
            for (int64_t var = 0; var < tn_pf_n_; var++) { __VA_ARGS__ }                     \
        } else {                                                                              \
            for (int64_t var = 0; var < tn_pf_n_; var++) { __VA_ARGS__ }                      \
        }                                                                                     \
    } while (0)
#else
#define TN_PARALLEL_FOR(nt, var, count, ...)                                                  \
    do {                                                                                      \
        (void)(nt);                                                                           \
        const int64_t tn_pf_n_ = (count);                                                     \
        for (int64_t var = 0; var < tn_pf_n_; var++) { __VA_ARGS__ }                          \
    } while (0)
#endif

/* Run the kernel over every element, in parallel when numel >= par_min. Thread chunks are
 * multiples of 64 elements so threads do not share cache lines of a contiguous output. */
static inline void tn_iter_run(const tn_iter *it, tn_iter_fn fn, void *ctx, int64_t par_min) {
    int nt = tn_par_threads(it->numel, par_min);
    if (nt <= 1) {
        tn_iter_range(it, 0, it->numel, fn, ctx);
        return;
    }
#ifdef _OPENMP
    int64_t chunk = (it->numel + nt - 1) / nt;
    chunk = (chunk + 63) & ~(int64_t)63;
#pragma omp parallel num_threads(nt)
    {
        int64_t t = omp_get_thread_num();
        int64_t e0 = t * chunk, e1 = e0 + chunk;
        if (e1 > it->numel) e1 = it->numel;
        tn_iter_range(it, e0, e1, fn, ctx);
    }
#endif
}

#endif /* TERN_ITER_H */
