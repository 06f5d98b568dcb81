/*
 * index.c — joining and indexing: tn_cat, tn_gather, tn_scatter_add, tn_index_select,
 * tn_index_add. The CPU backend is here; CUDA tensors go, after the same argument checks and
 * output preparation, to cuda/index.cu, which gets each launch as a finished tn_iter.
 *
 * Gradient policy: gather and index_select write their output (=); scatter_add and index_add
 * accumulate into out (+=) and are the backward of gather and index_select. cat's backward is
 * narrow (a view), so it has no kernel here.
 *
 * Index values (i64 or i32) are 0-based and are all range-checked before anything is written;
 * an out-of-range or negative value is an error naming the op, the value, its position in the
 * index tensor and the valid range. Inputs may have any strides (views, expanded dims).
 *
 * Threads: gather and index_select write each output element once, so any dim of the
 * iteration is split across threads. scatter_add and index_add write out[..., index, ...]
 * with possible duplicates along dim, so they split only a dim other than `dim` (slices that
 * never write the same element); the order of additions into an element is the serial order,
 * so results do not depend on the thread count. f16/bf16 accumulate as load -> f32 add ->
 * round-to-nearest-even store.
 *
 * CUDA: index values are range-checked on the device, queued with the op and never waited for
 * (the op then writes nothing; the error is raised at the next host wait, tn_cuda_check_pending);
 * with tn_cuda_set_sync_checks / TERN_CUDA_SYNC_CHECKS on, ix_check_values reads the verdict back
 * at the call instead, as before, which waits for the stream. scatter_add and
 * index_add sum in the CPU's order on one thread per out element (same bits as the CPU) when
 * the list along dim is short and the work small (ix_cuda_ordered), else with atomics: integer
 * results are still exact, float results equal the CPU's within rounding (cuda/index.cu).
 */
#include <stdio.h>
#include <stdlib.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"
#include "iter.h"

#ifdef TERN_HAVE_CUDA
/* cuda/index.cu; iterators are finished (tn_iter_finish), opname names the op in errors. */
/* [OUT] bad: row-major position of the first value of index outside [0, size), -1 if none;
 * [OUT] badv: that value. Waits for the stream (an error check). */
tn_status tn_cuda_index_check(int64_t *bad, int64_t *badv, const tn_tensor *index, int64_t size);
/* [OUT] flag: a new (1) CUDA tensor (NULL for an empty index) that, once the queued check has
 * run, holds the first bad position of index (ULLONG_MAX when none); a bad value also becomes
 * the device's pending error, raised at the next host wait (tn_cuda_check_pending). No wait. */
tn_status tn_cuda_index_check_async(tn_tensor **flag, const char *opname, const tn_tensor *index, int64_t size,
                                    int32_t dim);
/* The launches take bad: NULL, or the data of the flag above, which makes them write nothing
 * when it holds a position; a value outside [0, xdim_size) is skipped either way. */
/* (index, d, x): d[o1] = x[o2 + index[o0] * xdim_stride]. */
tn_status tn_cuda_index_take(const char *opname, const tn_iter *it, int64_t xdim_stride, int64_t xdim_size,
                             int32_t itype, const void *bad);
/* (index, d, x): x[o2 + index[o0] * xdim_stride] += d[o1], atomics. */
tn_status tn_cuda_index_put_add(const char *opname, const tn_iter *it, int64_t xdim_stride, int64_t xdim_size,
                                int32_t itype, int32_t dtype, const void *bad);
/* (x, index, d, c): x[o0] += d[o2 + j * dstride] for j < n in order where index[o1 + j * istride] == o3. */
tn_status tn_cuda_index_put_add_ordered(const char *opname, const tn_iter *it, int64_t n, int64_t istride,
                                        int64_t dstride, int32_t itype, int32_t dtype, const void *bad);
/* (dst, src): dst[o0] = src[o1], same element size. */
tn_status tn_cuda_index_copy(const char *opname, const tn_iter *it);
/* count contiguous inputs (rows, width[k]) bytes into bytes [offset[k], offset[k] + width[k])
 * of each row of a contiguous out (rows, pitch) bytes. */
tn_status tn_cuda_cat_rows(const char *opname, char *out, int64_t rows, int64_t pitch, int32_t count,
                           const char *const *src, const int64_t *offset, const int64_t *width);
#endif

#define TN_IX_PARALLEL_MIN 32768    /* elements below which the index kernels stay serial */
#define TN_CAT_PARALLEL_BYTES (1 << 20)

static int ix_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int64_t ix_load_index(const char *p, int32_t itype) {
    return itype == TN_I64 ? *(const int64_t *)p : (int64_t)*(const int32_t *)p;
}

/* ---- the shared kernel ------------------------------------------------------------------- */

/* One indexed loop over an iteration shape. With accumulate = 0 (gather, index_select):
 *   d[c] = x[c with c[dim] replaced by index[c]]
 * with accumulate = 1 (scatter_add, index_add):
 *   x[c with c[dim] replaced by index[c]] += d[c]
 * The index is read with strides istr (0 along dims it does not vary, as for index_select's
 * 1-D index). xstr[dim] is 0; the index value times xdim_stride takes its place. */
typedef struct ix_plan {
    int32_t nd;                     /* iteration dims, >= 1 */
    int32_t dim;                    /* the indexed dim */
    int64_t shape[TN_MAX_DIMS];     /* (nd) iteration shape */
    int64_t istr[TN_MAX_DIMS];      /* (nd) index strides, elements */
    int64_t dstr[TN_MAX_DIMS];      /* (nd) direct operand strides (out of gather, src of adds) */
    int64_t xstr[TN_MAX_DIMS];      /* (nd) indexed operand strides, xstr[dim] = 0 */
    int64_t xdim_stride;            /* indexed operand's stride along dim */
    int64_t xdim_size;              /* indexed operand's size along dim (1 for 0-d) */
    const char *ip;                 /* index data */
    char *dp;                       /* direct operand data (read when accumulating) */
    char *xp;                       /* indexed operand data (written when accumulating) */
    int32_t itype;                  /* TN_I64 or TN_I32 */
    int32_t dtype;                  /* data dtype of d and x */
    int accumulate;
    const tn_tensor *ix;            /* the index (CUDA: checked on the device against xdim_size) */
} ix_plan;

/* x[i * xs] += d[i * ds], i < n, in dtype (integers wrap like torch; no signed overflow UB). */
static void ix_add_run(char *x, int64_t xs, const char *d, int64_t ds, int64_t n, int32_t dtype) {
    switch (dtype) {
    case TN_F32: {
        float *X = (float *)x; const float *D = (const float *)d;
        for (int64_t i = 0; i < n; i++) X[i * xs] += D[i * ds];
        break;
    }
    case TN_F64: {
        double *X = (double *)x; const double *D = (const double *)d;
        for (int64_t i = 0; i < n; i++) X[i * xs] += D[i * ds];
        break;
    }
    case TN_F16: {
        uint16_t *X = (uint16_t *)x; const uint16_t *D = (const uint16_t *)d;
        for (int64_t i = 0; i < n; i++)
            X[i * xs] = tn_float_to_half(tn_half_to_float(X[i * xs]) + tn_half_to_float(D[i * ds]));
        break;
    }
    case TN_BF16: {
        uint16_t *X = (uint16_t *)x; const uint16_t *D = (const uint16_t *)d;
        for (int64_t i = 0; i < n; i++)
            X[i * xs] = tn_float_to_bf16(tn_bf16_to_float(X[i * xs]) + tn_bf16_to_float(D[i * ds]));
        break;
    }
    case TN_I32: {
        int32_t *X = (int32_t *)x; const int32_t *D = (const int32_t *)d;
        for (int64_t i = 0; i < n; i++) X[i * xs] = (int32_t)((uint32_t)X[i * xs] + (uint32_t)D[i * ds]);
        break;
    }
    case TN_I64: {
        int64_t *X = (int64_t *)x; const int64_t *D = (const int64_t *)d;
        for (int64_t i = 0; i < n; i++) X[i * xs] = (int64_t)((uint64_t)X[i * xs] + (uint64_t)D[i * ds]);
        break;
    }
    case TN_U8: {
        uint8_t *X = (uint8_t *)x; const uint8_t *D = (const uint8_t *)d;
        for (int64_t i = 0; i < n; i++) X[i * xs] = (uint8_t)(X[i * xs] + D[i * ds]);
        break;
    }
    default: break;
    }
}

/* d[i * ds] = x[i * xs], i < n, for an element size es. */
static void ix_copy_run(char *d, int64_t ds, const char *x, int64_t xs, int64_t n, size_t es) {
    if (ds == 1 && xs == 1) { memcpy(d, x, (size_t)n * es); return; }
    switch (es) {
    case 8: for (int64_t i = 0; i < n; i++) ((uint64_t *)d)[i * ds] = ((const uint64_t *)x)[i * xs]; break;
    case 4: for (int64_t i = 0; i < n; i++) ((uint32_t *)d)[i * ds] = ((const uint32_t *)x)[i * xs]; break;
    case 2: for (int64_t i = 0; i < n; i++) ((uint16_t *)d)[i * ds] = ((const uint16_t *)x)[i * xs]; break;
    default: for (int64_t i = 0; i < n; i++) ((uint8_t *)d)[i * ds] = ((const uint8_t *)x)[i * xs]; break;
    }
}

/* The plan restricted to coordinates lo <= c[pd] < hi; every other dim in full. */
static void ix_run_range(const ix_plan *p, int pd, int64_t lo, int64_t hi) {
    const int nd = p->nd, last = nd - 1;
    const size_t es = tn_dtype_size(p->dtype), is = tn_dtype_size(p->itype);
    int64_t shape[TN_MAX_DIMS]; /* (nd) */
    for (int i = 0; i < nd; i++) shape[i] = p->shape[i];
    shape[pd] = hi - lo;
    for (int i = 0; i < nd; i++) if (shape[i] == 0) return;
    const char *ip = p->ip + lo * p->istr[pd] * (int64_t)is;
    char *dp = p->dp + lo * p->dstr[pd] * (int64_t)es;
    char *xp = p->xp + lo * p->xstr[pd] * (int64_t)es;
    const int64_t n = shape[last], is_l = p->istr[last], ds_l = p->dstr[last], xs_l = p->xstr[last];
    const int64_t xdim = p->xdim_stride;
    int64_t outer = 1;
    for (int i = 0; i < last; i++) outer *= shape[i];
    int64_t c[TN_MAX_DIMS] = {0}; /* (nd - 1) odometer over the outer dims */
    int64_t io = 0, dof = 0, xo = 0;
    for (int64_t o = 0; o < outer; o++) {
        const char *irow = ip + io * (int64_t)is;
        char *drow = dp + dof * (int64_t)es;
        char *xrow = xp + xo * (int64_t)es;
        if (is_l == 0) { /* one index value for the whole row (index_select / index_add rows) */
            int64_t v = ix_load_index(irow, p->itype);
            char *xr = xrow + v * xdim * (int64_t)es;
            if (p->accumulate) ix_add_run(xr, xs_l, drow, ds_l, n, p->dtype);
            else ix_copy_run(drow, ds_l, xr, xs_l, n, es);
        } else {
            for (int64_t j = 0; j < n; j++) {
                int64_t v = ix_load_index(irow + j * is_l * (int64_t)is, p->itype);
                char *xe = xrow + (j * xs_l + v * xdim) * (int64_t)es;
                char *de = drow + j * ds_l * (int64_t)es;
                if (p->accumulate) ix_add_run(xe, 0, de, 0, 1, p->dtype);
                else ix_copy_run(de, 0, xe, 0, 1, es);
            }
        }
        for (int d = last - 1; d >= 0; d--) { /* advance the odometer */
            if (++c[d] < shape[d]) { io += p->istr[d]; dof += p->dstr[d]; xo += p->xstr[d]; break; }
            c[d] = 0;
            io -= (shape[d] - 1) * p->istr[d];
            dof -= (shape[d] - 1) * p->dstr[d];
            xo -= (shape[d] - 1) * p->xstr[d];
        }
    }
}

/* Runs the plan, split across threads along one dim when it is big enough; accumulating
 * plans never split along dim (duplicate indices write the same elements). */
static void ix_run(const ix_plan *p) {
    int64_t total = 1;
    for (int i = 0; i < p->nd; i++) total *= p->shape[i];
    if (total == 0) return;
    const int nt = ix_max_threads();
    int pd = -1;
    if (nt > 1 && total >= TN_IX_PARALLEL_MIN) {
        for (int i = 0; i < p->nd && pd < 0; i++) /* outermost dim with work for every thread */
            if (!(p->accumulate && i == p->dim) && p->shape[i] >= nt) pd = i;
        for (int i = 0; pd < 0 && i < p->nd; i++) /* else the largest */
            if (!(p->accumulate && i == p->dim) && p->shape[i] > 1 && (pd < 0 || p->shape[i] > p->shape[pd])) pd = i;
    }
    if (pd < 0) { ix_run_range(p, 0, 0, p->shape[0]); return; }
    const int64_t ext = p->shape[pd];
#ifdef _OPENMP
#pragma omp parallel
#endif
    {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
#else
        const int64_t t = 0, T = 1;
#endif
        int64_t lo = ext * t / T, hi = ext * (t + 1) / T;
        if (lo < hi) ix_run_range(p, pd, lo, hi);
    }
}

/* ---- the CUDA launches ----------------------------------------------------------------- */

#ifdef TERN_HAVE_CUDA
/* The ordered (atomic-free, CPU-order) sum is used when the list along dim has at most
 * TN_IX_ORDERED_MAX_LIST entries (a thread's loop) and either x's size along dim is at most
 * TN_IX_ORDERED_MAX_SIZE (the loop work is then at most that many times the atomic version's)
 * or the loop work (list length x threads = iteration elements x x's size along dim) is at
 * most TN_IX_ORDERED_MAX_WORK. */
#define TN_IX_ORDERED_MAX_LIST 1024
#define TN_IX_ORDERED_MAX_SIZE 16
#define TN_IX_ORDERED_MAX_WORK ((int64_t)1 << 24)

static int ix_cuda_ordered(const ix_plan *p, int64_t total) {
    const int64_t n = p->shape[p->dim], size = p->xdim_size;
    if (n > TN_IX_ORDERED_MAX_LIST) return 0;
    return size <= TN_IX_ORDERED_MAX_SIZE || total <= TN_IX_ORDERED_MAX_WORK / size;
}

/* ix_run for CUDA operands. The plan's iteration becomes a tn_iter of (index, d, x); the
 * ordered sum iterates instead over x's elements that can receive a sum (dim's size replaced
 * by x's), with a fourth, data-less operand whose offset is the coordinate along dim. */
static tn_status ix_run_cuda_launch(const char *opname, const ix_plan *p, const void *bad) {
    int64_t total = 1;
    for (int i = 0; i < p->nd; i++) total *= p->shape[i];
    if (total == 0) return TN_OK;
    const size_t es = tn_dtype_size(p->dtype), is = tn_dtype_size(p->itype);
    tn_iter it;
    if (!p->accumulate || !ix_cuda_ordered(p, total)) {
        tn_iter_init(&it, p->nd, p->shape);
        tn_iter_add(&it, (void *)p->ip, is, p->nd, p->shape, p->istr);
        tn_iter_add(&it, p->dp, es, p->nd, p->shape, p->dstr);
        tn_iter_add(&it, p->xp, es, p->nd, p->shape, p->xstr);
        tn_iter_finish(&it);
        if (!p->accumulate) return tn_cuda_index_take(opname, &it, p->xdim_stride, p->xdim_size, p->itype, bad);
        return tn_cuda_index_put_add(opname, &it, p->xdim_stride, p->xdim_size, p->itype, p->dtype, bad);
    }
    int64_t rshape[TN_MAX_DIMS], istr[TN_MAX_DIMS], dstr[TN_MAX_DIMS], xstr[TN_MAX_DIMS], cstr[TN_MAX_DIMS];
    for (int i = 0; i < p->nd; i++) {
        rshape[i] = p->shape[i];
        istr[i] = p->istr[i];
        dstr[i] = p->dstr[i];
        xstr[i] = p->xstr[i];
        cstr[i] = 0;
    }
    rshape[p->dim] = p->xdim_size;
    istr[p->dim] = 0;
    dstr[p->dim] = 0;
    xstr[p->dim] = p->xdim_stride;
    cstr[p->dim] = 1;
    tn_iter_init(&it, p->nd, rshape);
    tn_iter_add(&it, p->xp, es, p->nd, rshape, xstr);
    tn_iter_add(&it, (void *)p->ip, is, p->nd, rshape, istr);
    tn_iter_add(&it, p->dp, es, p->nd, rshape, dstr);
    tn_iter_add(&it, NULL, 0, p->nd, rshape, cstr);
    tn_iter_finish(&it);
    return tn_cuda_index_put_add_ordered(opname, &it, p->shape[p->dim], p->istr[p->dim], p->dstr[p->dim],
                                         p->itype, p->dtype, bad);
}

/* Unless checks are synchronous (ix_check_values did them), queues the device-side range check
 * of the plan's index first; the launches then write nothing when it finds a bad value, and the
 * error is raised at the next host wait. Nothing here waits for the device. */
static tn_status ix_run_cuda(const char *opname, const ix_plan *p) {
    tn_tensor *flag = NULL;
    if (!tn_cuda_get_sync_checks()) TN_TRY(tn_cuda_index_check_async(&flag, opname, p->ix, p->xdim_size, p->dim));
    const tn_status s = ix_run_cuda_launch(opname, p, flag ? (const void *)flag->data : NULL);
    tn_tensor_free(flag); /* stream-ordered pool: reused only after the queued launches */
    return s;
}

/* dst = src for CUDA tensors of one shape and dtype. */
static tn_status ix_copy_cuda(const char *opname, tn_tensor *dst, const tn_tensor *src) {
    tn_iter it;
    tn_iter_init(&it, dst->ndim, dst->shape);
    tn_iter_add_tensor(&it, dst);
    tn_iter_add_tensor(&it, src);
    tn_iter_finish(&it);
    return tn_cuda_index_copy(opname, &it);
}
#endif

/* Runs the plan on the device of its operands. */
static tn_status ix_exec(const char *opname, const ix_plan *p, int32_t device) {
#ifdef TERN_HAVE_CUDA
    if (device == TN_CUDA) return ix_run_cuda(opname, p);
#endif
    (void)opname, (void)device;
    ix_run(p);
    return TN_OK;
}

/* ---- argument helpers -------------------------------------------------------------------- */

/* Every value of index must lie in [0, size); the error names the first bad one (row-major
 * order) and its position in index. */
static void ix_find_bad(int64_t *bad_out, int64_t *badv_out, const tn_tensor *index, int64_t size) {
    const int nd = index->ndim;
    const int64_t numel = tn_tensor_numel(index);
    const size_t is = tn_dtype_size(index->dtype);
    int64_t bad = -1, badv = 0;
    if (tn_tensor_is_contiguous(index)) {
        for (int64_t i = 0; i < numel; i++) {
            int64_t v = ix_load_index(index->data + i * (int64_t)is, index->dtype);
            if (TN_UNLIKELY((uint64_t)v >= (uint64_t)size)) { bad = i; badv = v; break; }
        }
    } else {
        for (int64_t i = 0; i < numel; i++) {
            int64_t rem = i, off = 0;
            for (int d = nd - 1; d >= 0; d--) { off += (rem % index->shape[d]) * index->strides[d]; rem /= index->shape[d]; }
            int64_t v = ix_load_index(index->data + off * (int64_t)is, index->dtype);
            if (TN_UNLIKELY((uint64_t)v >= (uint64_t)size)) { bad = i; badv = v; break; }
        }
    }
    *bad_out = bad;
    *badv_out = badv;
}

/* The error for value badv at row-major position bad of an index of shape (ndim) shape, outside
 * [0, size) along dim; note (may be "") ends the message. Also used by cuda/index.cu for the
 * errors its asynchronous check reports later. */
tn_status tn_index_range_error(const char *opname, int64_t badv, int32_t dim, int64_t size, int32_t ndim,
                               const int64_t *shape, int64_t bad, const char *note);
tn_status tn_index_range_error(const char *opname, int64_t badv, int32_t dim, int64_t size, int32_t ndim,
                               const int64_t *shape, int64_t bad, const char *note) {
    const int nd = ndim;
    char pos[200]; /* "[i, j, ...]" */
    int64_t c[TN_MAX_DIMS], rem = bad;
    for (int d = nd - 1; d >= 0; d--) { c[d] = rem % shape[d]; rem /= shape[d]; }
    size_t len = 0;
    len += (size_t)snprintf(pos + len, sizeof pos - len, "[");
    for (int d = 0; d < nd && len < sizeof pos; d++)
        len += (size_t)snprintf(pos + len, sizeof pos - len, d ? ", %lld" : "%lld", TN_D(c[d]));
    if (len < sizeof pos) snprintf(pos + len, sizeof pos - len, "]");
    /* badv is a value of index (0-based data): printed as it is; dim and position are not */
    return tn_error(TN_ERR_INDEX, "%s: index %lld is out of range for dim %lld of size %lld (at position %s)%s",
                    opname, (long long)badv, TN_D(dim), (long long)size, pos, note);
}

static tn_status ix_check_values(const char *opname, const tn_tensor *index, int32_t dim, int64_t size) {
    int64_t bad = -1, badv = 0;
#ifdef TERN_HAVE_CUDA
    if (index->device == TN_CUDA) {
        /* asynchronous by default: ix_run_cuda queues the check with the op */
        if (!tn_cuda_get_sync_checks()) return TN_OK;
        TN_TRY(tn_cuda_index_check(&bad, &badv, index, size));
    } else
#endif
    ix_find_bad(&bad, &badv, index, size);
    if (bad < 0) return TN_OK;
    return tn_index_range_error(opname, badv, dim, size, index->ndim, index->shape, bad, "");
}

/* Rejects outputs updated in place whose elements overlap (expanded dims of stride 0). */
static tn_status ix_check_no_overlap(const char *opname, const tn_tensor *out) {
    for (int i = 0; i < out->ndim; i++)
        if (out->strides[i] == 0 && out->shape[i] > 1 && tn_tensor_numel(out) > 0)
            return tn_error(TN_ERR_ARG, "%s: out %s has overlapping elements (expanded dim %lld, stride 0), %s",
                            opname, TN_SHAPE(out), TN_D(i), tn_dtype_name(out->dtype));
    return TN_OK;
}

/* *hold = t, or a fresh contiguous copy when t shares storage with out. */
static tn_status ix_unalias(tn_tensor **hold, const tn_tensor *t, const tn_tensor *out) {
    if (t->storage != out->storage) { *hold = tn_tensor_retain((tn_tensor *)t); return TN_OK; }
    TN_TRY(tn_tensor_empty(hold, t->ndim, t->shape, t->dtype, t->device));
    tn_status s;
#ifdef TERN_HAVE_CUDA
    if (t->device == TN_CUDA) s = ix_copy_cuda("copy", *hold, t);
    else
#endif
    s = tn_copy(*hold, t);
    if (s != TN_OK) { tn_tensor_free(*hold); *hold = NULL; }
    return s;
}

static tn_status ix_check_dim(const char *opname, const tn_tensor *t, int32_t dim, int allow_0d) {
    const int nd = t->ndim > 0 ? t->ndim : (allow_0d ? 1 : 0);
    if (dim < 0 || dim >= nd)
        return tn_error(TN_ERR_ARG, "%s: dim %lld is out of range for %s (%d-D), %s", opname, TN_D(dim),
                        TN_SHAPE(t), (int)t->ndim, tn_dtype_name(t->dtype));
    return TN_OK;
}

/* Fills the plan dims from the iteration shape (0-d becomes [1]). */
static void ix_plan_dims(ix_plan *p, const tn_tensor *iter) {
    p->nd = iter->ndim > 0 ? iter->ndim : 1;
    for (int i = 0; i < p->nd; i++) p->shape[i] = iter->ndim > 0 ? iter->shape[i] : 1;
}
static void ix_plan_strides(int64_t *dst, const tn_tensor *t, int nd) {
    for (int i = 0; i < nd; i++) dst[i] = t->ndim > 0 ? t->strides[i] : 0;
}

/* The checks gather, index_select (t is a) and scatter_add, index_add (t is out, with src) share:
 * the operands, their device and backend, index's dtype, a 1-D index when index_1d, and src's
 * dtype. */
static tn_status ix_check_operands(const char *opname, const char *tname, const tn_tensor *t, const tn_tensor *index,
                                   const tn_tensor *src, int index_1d) {
    TN_TRY(tn_check_tensor(opname, tname, t));
    TN_TRY(tn_check_tensor(opname, "index", index));
    if (src) TN_TRY(tn_check_tensor(opname, "src", src));
    TN_TRY(tn_check_same_device(opname, t, index));
    if (src) TN_TRY(tn_check_same_device(opname, t, src));
    TN_TRY(tn_check_backend(opname, t));
    TN_TRY(tn_check_index_dtype(opname, "index", index));
    if (index_1d && index->ndim > 1)
        return tn_error(TN_ERR_SHAPE, "%s: index must be 1-D, got %s %s", opname, TN_SHAPE(index),
                        tn_dtype_name(index->dtype));
    if (src && t->dtype != src->dtype)
        return tn_error(TN_ERR_DTYPE, "%s: out %s is %s but src %s is %s", opname, TN_SHAPE(t),
                        tn_dtype_name(t->dtype), TN_SHAPE(src), tn_dtype_name(src->dtype));
    return TN_OK;
}

/* Runs the op once its arguments are checked: with accumulate = 0 (gather, index_select)
 * out = operand at the index along dim, with accumulate = 1 (scatter_add, index_add) out at
 * the index += operand. The iteration is index's shape, or with index_1d (index_select,
 * index_add) the direct operand's (out, or src), index then varying along dim only. Operands
 * over out's storage are read from copies. */
static tn_status ix_apply(const char *opname, tn_tensor *out, const tn_tensor *operand, int32_t dim,
                          const tn_tensor *index, int index_1d, int64_t xdim_size, int accumulate) {
    tn_tensor *ho = NULL, *hi = NULL;
    tn_status s = ix_unalias(&ho, operand, out);
    if (s == TN_OK) s = ix_unalias(&hi, index, out);
    if (s == TN_OK) {
        tn_tensor *d = accumulate ? ho : out; /* direct operand, read only when accumulating */
        tn_tensor *x = accumulate ? out : ho; /* indexed operand, read only when not */
        ix_plan p;
        memset(&p, 0, sizeof p);
        ix_plan_dims(&p, index_1d ? d : index);
        p.dim = dim;
        if (index_1d) p.istr[dim] = hi->ndim == 1 ? hi->strides[0] : 0;
        else ix_plan_strides(p.istr, hi, p.nd);
        ix_plan_strides(p.dstr, d, p.nd);
        ix_plan_strides(p.xstr, x, p.nd);
        p.xdim_stride = p.xstr[dim];
        p.xdim_size = xdim_size;
        p.xstr[dim] = 0;
        p.ip = hi->data;
        p.dp = d->data;
        p.xp = x->data;
        p.itype = index->dtype;
        p.dtype = x->dtype;
        p.accumulate = accumulate;
        p.ix = hi;
        s = ix_exec(opname, &p, x->device);
    }
    tn_tensor_free(ho);
    tn_tensor_free(hi);
    return s;
}

/* gather / index_select after the checks: out prepared as (ndim) shape of a's dtype, then
 * ix_apply; an out allocated here is freed again on failure. */
static tn_status ix_apply_take(const char *opname, tn_tensor **out, int32_t ndim, const int64_t *shape,
                               const tn_tensor *a, int32_t dim, const tn_tensor *index, int index_1d, int64_t size) {
    const int allocated = *out == NULL;
    TN_TRY(tn_prepare_out(opname, out, ndim, shape, a->dtype, a->device));
    const tn_status s = ix_apply(opname, *out, a, dim, index, index_1d, size, 0);
    if (s != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
    return s;
}

/* ---- gather / scatter_add ------------------------------------------------------------------ */

tn_status tn_gather(tn_tensor **out, const tn_tensor *a, int32_t dim, const tn_tensor *index) {
    static const char *op = "gather";
    if (!out) return tn_error(TN_ERR_ARG, "gather: out is NULL");
    TN_TRY(ix_check_operands(op, "a", a, index, NULL, 0));
    TN_TRY(ix_check_dim(op, a, dim, 1));
    if (index->ndim != a->ndim)
        return tn_error(TN_ERR_SHAPE, "gather: index %s must have as many dims as a %s, %s", TN_SHAPE(index),
                        TN_SHAPE(a), tn_dtype_name(a->dtype));
    for (int d = 0; d < a->ndim; d++)
        if (d != dim && index->shape[d] > a->shape[d])
            return tn_error(TN_ERR_SHAPE, "gather: index %s is larger than a %s in dim %lld, %s", TN_SHAPE(index),
                            TN_SHAPE(a), TN_D(d), tn_dtype_name(a->dtype));
    const int64_t size = a->ndim > 0 ? a->shape[dim] : 1;
    TN_TRY(ix_check_values(op, index, dim, size));
    return ix_apply_take(op, out, index->ndim, index->shape, a, dim, index, 0, size);
}

tn_status tn_scatter_add(tn_tensor *out, int32_t dim, const tn_tensor *index, const tn_tensor *src) {
    static const char *op = "scatter_add";
    TN_TRY(ix_check_operands(op, "out", out, index, src, 0));
    TN_TRY(ix_check_dim(op, out, dim, 1));
    if (index->ndim != out->ndim || src->ndim != out->ndim)
        return tn_error(TN_ERR_SHAPE, "scatter_add: out %s, index %s and src %s must have the same number of dims, %s",
                        TN_SHAPE(out), TN_SHAPE(index), TN_SHAPE(src), tn_dtype_name(out->dtype));
    for (int d = 0; d < out->ndim; d++)
        if (index->shape[d] > src->shape[d] || (d != dim && index->shape[d] > out->shape[d]))
            return tn_error(TN_ERR_SHAPE,
                            "scatter_add: index %s is larger than src %s or out %s in dim %lld, %s", TN_SHAPE(index),
                            TN_SHAPE(src), TN_SHAPE(out), TN_D(d), tn_dtype_name(out->dtype));
    TN_TRY(ix_check_no_overlap(op, out));
    const int64_t size = out->ndim > 0 ? out->shape[dim] : 1;
    TN_TRY(ix_check_values(op, index, dim, size));
    return ix_apply(op, out, src, dim, index, 0, size, 1);
}

/* ---- index_select / index_add -------------------------------------------------------------- */

tn_status tn_index_select(tn_tensor **out, const tn_tensor *a, int32_t dim, const tn_tensor *index) {
    static const char *op = "index_select";
    if (!out) return tn_error(TN_ERR_ARG, "index_select: out is NULL");
    TN_TRY(ix_check_operands(op, "a", a, index, NULL, 1));
    TN_TRY(ix_check_dim(op, a, dim, 0));
    TN_TRY(ix_check_values(op, index, dim, a->shape[dim]));
    int64_t oshape[TN_MAX_DIMS]; /* (a->ndim) a's shape with shape[dim] = numel(index) */
    for (int i = 0; i < a->ndim; i++) oshape[i] = a->shape[i];
    oshape[dim] = tn_tensor_numel(index);
    return ix_apply_take(op, out, a->ndim, oshape, a, dim, index, 1, a->shape[dim]);
}

tn_status tn_index_add(tn_tensor *out, int32_t dim, const tn_tensor *index, const tn_tensor *src) {
    static const char *op = "index_add";
    TN_TRY(ix_check_operands(op, "out", out, index, src, 1));
    TN_TRY(ix_check_dim(op, out, dim, 0));
    int fits = src->ndim == out->ndim && src->shape[dim] == tn_tensor_numel(index);
    for (int d = 0; fits && d < out->ndim; d++) fits = d == dim || src->shape[d] == out->shape[d];
    if (!fits)
        return tn_error(TN_ERR_SHAPE,
                        "index_add: src %s must match out %s except in dim %lld, where it needs index's size %lld, %s",
                        TN_SHAPE(src), TN_SHAPE(out), TN_D(dim), (long long)tn_tensor_numel(index),
                        tn_dtype_name(out->dtype));
    TN_TRY(ix_check_no_overlap(op, out));
    TN_TRY(ix_check_values(op, index, dim, out->shape[dim]));
    return ix_apply(op, out, src, dim, index, 1, out->shape[dim], 1);
}

/* ---- cat ----------------------------------------------------------------------------------- */

/* Copies nblocks blocks of block bytes (strides in bytes), on threads when it is large. */
static void cat_copy_blocks(char *dst, int64_t dst_stride, const char *src, int64_t src_stride,
                            int64_t nblocks, int64_t block) {
    const int64_t total = nblocks * block;
    if (total < TN_CAT_PARALLEL_BYTES || ix_max_threads() == 1) {
        for (int64_t i = 0; i < nblocks; i++) memcpy(dst + i * dst_stride, src + i * src_stride, (size_t)block);
        return;
    }
    if (nblocks >= ix_max_threads()) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (int64_t i = 0; i < nblocks; i++) memcpy(dst + i * dst_stride, src + i * src_stride, (size_t)block);
        return;
    }
    const int64_t chunk = 1 << 18; /* few large blocks: split each into chunks */
    const int64_t nchunks = (block + chunk - 1) / chunk;
    for (int64_t i = 0; i < nblocks; i++) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
        for (int64_t c = 0; c < nchunks; c++) {
            int64_t off = c * chunk, len = block - off < chunk ? block - off : chunk;
            memcpy(dst + i * dst_stride + off, src + i * src_stride + off, (size_t)len);
        }
    }
}

/* torch's legacy rule: a 1-D empty tensor is skipped whatever the others' shape. */
static int cat_skipped(const tn_tensor *t, const tn_tensor *ref) {
    return t != ref && t->ndim == 1 && t->shape[0] == 0 && ref->ndim != 1;
}

#ifdef TERN_HAVE_CUDA
enum { CAT_CUDA_BATCH = 32 };

/* Frees the batch's holds after queueing its copies (their memory returns to the stream-ordered
 * CUDA pool, so the queued kernel still reads it intact). */
static tn_status cat_cuda_flush(tn_tensor *o, int64_t rows, int64_t pitch, int32_t *count, const char **src,
                                const int64_t *offset, const int64_t *width, tn_tensor **holds) {
    tn_status s = *count > 0 ? tn_cuda_cat_rows("cat", o->data, rows, pitch, *count, src, offset, width) : TN_OK;
    for (int32_t k = 0; k < *count; k++) tn_tensor_free(holds[k]);
    *count = 0;
    return s;
}

/* cat into a prepared CUDA out (its shape oshape, outer and inner as in tn_cat): contiguous inputs into a contiguous out go
 * in batches through one kernel each; the others through a strided copy into their narrow of
 * out. */
static tn_status cat_cuda(tn_tensor *o, const tn_tensor *const *ts, int32_t n, int32_t dim, const tn_tensor *ref,
                          const int64_t *oshape, int64_t outer, int64_t inner) {
    if (tn_tensor_numel(o) == 0) return TN_OK;
    const int64_t es = (int64_t)tn_dtype_size(ref->dtype);
    const int64_t pitch = oshape[dim] * inner * es; /* bytes per row of out (out contiguous) */
    const int out_contig = tn_tensor_is_contiguous(o);
    const char *src[CAT_CUDA_BATCH];
    int64_t offset[CAT_CUDA_BATCH], width[CAT_CUDA_BATCH];
    tn_tensor *holds[CAT_CUDA_BATCH];
    int32_t count = 0;
    tn_status s = TN_OK;
    int64_t pos = 0; /* offset along dim */
    for (int i = 0; i < n && s == TN_OK; i++) {
        const tn_tensor *t = ts[i];
        if (cat_skipped(t, ref)) continue;
        const int64_t len = t->shape[dim];
        if (len == 0) continue;
        /* an input over out's storage is copied once the inputs before it are in out, as on
         * the CPU: queue the pending batch first */
        if (t->storage == o->storage) s = cat_cuda_flush(o, outer, pitch, &count, src, offset, width, holds);
        if (s != TN_OK) break;
        tn_tensor *h = NULL;
        s = ix_unalias(&h, t, o);
        if (s != TN_OK) break;
        if (out_contig && tn_tensor_is_contiguous(h)) {
            src[count] = h->data;
            offset[count] = pos * inner * es;
            width[count] = len * inner * es;
            holds[count++] = h;
            if (count == CAT_CUDA_BATCH) s = cat_cuda_flush(o, outer, pitch, &count, src, offset, width, holds);
        } else {
            tn_tensor *view = NULL;
            s = tn_narrow(&view, o, dim, pos, len);
            if (s == TN_OK) s = ix_copy_cuda("cat", view, h);
            tn_tensor_free(view);
            tn_tensor_free(h);
        }
        pos += len;
    }
    const tn_status sf = cat_cuda_flush(o, outer, pitch, &count, src, offset, width, holds);
    return s != TN_OK ? s : sf;
}
#endif

tn_status tn_cat(tn_tensor **out, const tn_tensor *const *ts, int32_t n, int32_t dim) {
    static const char *op = "cat";
    if (!out) return tn_error(TN_ERR_ARG, "cat: out is NULL");
    if (!ts || n <= 0) return tn_error(TN_ERR_ARG, "cat: expected a non-empty list of tensors (n = %d)", (int)n);
    const tn_tensor *ref = NULL;
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "tensor %lld", TN_D(i));
        TN_TRY(tn_check_tensor(op, name, ts[i]));
        if (!ref && !(ts[i]->ndim == 1 && ts[i]->shape[0] == 0)) ref = ts[i];
    }
    if (!ref) ref = ts[0];
    int refi = 0;
    while (ts[refi] != ref) refi++;
    TN_TRY(tn_check_backend(op, ref));
    if (ref->ndim == 0)
        return tn_error(TN_ERR_SHAPE, "cat: zero-dimensional tensor (tensor %lld, %s) cannot be concatenated", TN_D(refi),
                        tn_dtype_name(ref->dtype));
    TN_TRY(ix_check_dim(op, ref, dim, 0));
    int64_t oshape[TN_MAX_DIMS]; /* (ref->ndim) ref's shape with the sizes along dim summed */
    for (int d = 0; d < ref->ndim; d++) oshape[d] = ref->shape[d];
    oshape[dim] = 0;
    for (int i = 0; i < n; i++) {
        const tn_tensor *t = ts[i];
        TN_TRY(tn_check_same_device(op, ref, t));
        if (t->dtype != ref->dtype)
            return tn_error(TN_ERR_DTYPE, "cat: tensor %lld is %s %s but tensor %lld is %s %s", TN_D(i), TN_SHAPE(t),
                            tn_dtype_name(t->dtype), TN_D(refi), TN_SHAPE(ref), tn_dtype_name(ref->dtype));
        if (cat_skipped(t, ref)) continue;
        int fits = t->ndim == ref->ndim;
        for (int d = 0; fits && d < ref->ndim; d++) fits = d == dim || t->shape[d] == ref->shape[d];
        if (!fits)
            return tn_error(TN_ERR_SHAPE, "cat: tensor %lld has shape %s but tensor %lld has %s; sizes must match except in dim %lld, %s",
                            TN_D(i), TN_SHAPE(t), TN_D(refi), TN_SHAPE(ref), TN_D(dim), tn_dtype_name(ref->dtype));
        oshape[dim] += t->shape[dim];
    }
    const int allocated = *out == NULL;
    TN_TRY(tn_prepare_out(op, out, ref->ndim, oshape, ref->dtype, ref->device));
    tn_tensor *o = *out;
    int64_t outer = 1, inner = 1; /* dims before dim, elements after dim */
    for (int d = 0; d < dim; d++) outer *= oshape[d];
    for (int d = dim + 1; d < ref->ndim; d++) inner *= oshape[d];
#ifdef TERN_HAVE_CUDA
    if (o->device == TN_CUDA) {
        const tn_status sc = cat_cuda(o, ts, n, dim, ref, oshape, outer, inner);
        if (sc != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
        return sc;
    }
#endif
    const size_t es = tn_dtype_size(ref->dtype);
    const int out_contig = tn_tensor_is_contiguous(o);
    tn_status s = TN_OK;
    int64_t pos = 0; /* offset along dim */
    for (int i = 0; i < n && s == TN_OK; i++) {
        const tn_tensor *t = ts[i];
        if (cat_skipped(t, ref)) continue;
        const int64_t len = t->shape[dim];
        if (len == 0) continue;
        tn_tensor *h = NULL;
        s = ix_unalias(&h, t, o);
        if (s != TN_OK) break;
        if (out_contig && tn_tensor_is_contiguous(h)) {
            /* (outer) blocks of len*inner elements into rows of oshape[dim]*inner elements */
            cat_copy_blocks(o->data + pos * inner * (int64_t)es, oshape[dim] * inner * (int64_t)es, h->data,
                            len * inner * (int64_t)es, outer, len * inner * (int64_t)es);
        } else {
            tn_tensor *view = NULL;
            s = tn_narrow(&view, o, dim, pos, len);
            if (s == TN_OK) s = tn_copy(view, h);
            tn_tensor_free(view);
        }
        tn_tensor_free(h);
        pos += len;
    }
    if (s != TN_OK && allocated) { tn_tensor_free(*out); *out = NULL; }
    return s;
}
