/*
 * test_tensor.c — library state, tensor lifecycle, memory accounting and views (core/state.c,
 * core/tensor.c).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "internal.h"

static int has(const char *needle) { return strstr(tn_last_error(), needle) != NULL; }

/* f32 tensor of shape with values 0, 1, 2, ... (new reference). */
static tn_tensor *arange_f32(int32_t ndim, const int64_t *shape) {
    tn_tensor *t = NULL;
    if (tn_tensor_empty(&t, ndim, shape, TN_F32, TN_CPU) != TN_OK) return NULL;
    float *p = (float *)t->data;
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) p[i] = (float)i;
    return t;
}

/* Element at a multi-index of an f32 tensor, through its strides. */
static float at(const tn_tensor *t, const int64_t *idx) {
    int64_t off = 0;
    for (int32_t d = 0; d < t->ndim; d++) off += idx[d] * t->strides[d];
    return ((const float *)t->data)[off];
}

static int data_ok(const tn_tensor *t) {
    return t->data == (char *)t->storage->data + t->offset * (int64_t)tn_dtype_size(t->dtype);
}

static void test_state(void) {
    CHECK(strcmp(tn_version(), "0.1.0") == 0);
    tn_clear_error();
    CHECK(strcmp(tn_last_error(), "") == 0);
    CHECK(tn_error(TN_ERR_SHAPE, "op: %s %d", "x", 3) == TN_ERR_SHAPE);
    CHECK(strcmp(tn_last_error(), "op: x 3") == 0);
    /* wrapping the previous message: the argument is the buffer being written */
    tn_error(TN_ERR_IO, "outer: %s (%d)", tn_last_error(), 7);
    CHECK(strcmp(tn_last_error(), "outer: op: x 3 (7)") == 0);
    CHECK(tn_last_status() == TN_ERR_IO);
    char big[3000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    tn_error(TN_ERR_ARG, "%s", big); /* truncated, still terminated */
    CHECK(strlen(tn_last_error()) > 500 && strlen(tn_last_error()) < sizeof big - 1);
    tn_clear_error();
    CHECK(tn_last_error()[0] == '\0');

    CHECK(tn_has_cuda() == 0 || tn_has_cuda() == 1);
    CHECK(tn_has_mpi() == 0 || tn_has_mpi() == 1);
    CHECK(tn_has_nccl() == 0 || tn_has_nccl() == 1);

    int n0 = tn_get_num_threads();
    CHECK(n0 >= 1);
    tn_set_num_threads(1);
    CHECK(tn_get_num_threads() == 1);
    tn_set_num_threads(0);
    CHECK(tn_get_num_threads() == n0);

    CHECK(tn_get_dim_base() == 0); /* the default, for C callers */
    tn_set_dim_base(1);
    CHECK(tn_get_dim_base() == 1);
    tn_set_dim_base(7); /* any nonzero base means 1 */
    CHECK(tn_get_dim_base() == 1);
    tn_set_dim_base(0);
    CHECK(tn_get_dim_base() == 0);

    static const char *names[] = {"f32", "f64", "f16", "bf16", "i32", "i64", "u8"};
    static const size_t sizes[] = {4, 8, 2, 2, 4, 8, 1};
    for (int d = 0; d < TN_NUM_DTYPES; d++) {
        CHECK(strcmp(tn_dtype_name(d), names[d]) == 0);
        CHECK(tn_dtype_size(d) == sizes[d]);
    }
    CHECK(tn_dtype_size(-1) == 0 && tn_dtype_size(TN_NUM_DTYPES) == 0);
    CHECK(strcmp(tn_dtype_name(99), "?") == 0);
    CHECK(strcmp(tn_device_name(TN_CPU), "cpu") == 0);
    CHECK(strcmp(tn_device_name(TN_CUDA), "cuda") == 0);

    CHECK(tn_f32_to_f16(1.0f) == 0x3c00);
    CHECK(tn_f16_to_f32(0xc000) == -2.0f);
    CHECK(tn_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(tn_bf16_to_f32(0x4040) == 3.0f);
    CHECK(tn_f16_to_f32(tn_f32_to_f16(65504.0f)) == 65504.0f);
}

static void test_checks(void) {
    int64_t s[1] = {2};
    tn_tensor *f = NULL, *i = NULL;
    CHECK_OK(tn_tensor_empty(&f, 1, s, TN_F32, TN_CPU));
    CHECK_OK(tn_tensor_empty(&i, 1, s, TN_I64, TN_CPU));
    CHECK(tn_check_tensor("op", "x", NULL) == TN_ERR_ARG && has("op: argument 'x' is NULL"));
    CHECK_OK(tn_check_tensor("op", "x", f));
    CHECK_OK(tn_check_same_device("op", f, i));
    CHECK_OK(tn_check_cpu("op", f));
    CHECK_OK(tn_check_float("op", "x", f));
    CHECK(tn_check_float("op", "x", i) == TN_ERR_DTYPE &&
          has("op: argument 'x' must be a float tensor (f32, f64, f16, bf16), got i64"));
    CHECK_OK(tn_check_index_dtype("op", "idx", i));
    CHECK(tn_check_index_dtype("op", "idx", f) == TN_ERR_DTYPE && has("got f32"));
    /* a fake cuda header (never dereferenced) to reach the device checks */
    tn_tensor fake = *f;
    fake.device = TN_CUDA;
    CHECK(tn_check_same_device("op", f, &fake) == TN_ERR_DEVICE &&
          has("op: tensors on different devices (cpu and cuda)"));
    CHECK(tn_check_cpu("op", &fake) == TN_ERR_DEVICE &&
          has("op: not implemented for cuda tensors in this build"));
    tn_tensor_free(f);
    tn_tensor_free(i);
}

static void test_empty_and_memory(void) {
    int64_t cur0 = tn_memory_current(TN_CPU), live0 = tn_memory_live(TN_CPU);
    int64_t shape[2] = {2, 3};
    tn_tensor *t = NULL;
    CHECK_OK(tn_tensor_empty(&t, 2, shape, TN_F32, TN_CPU));
    CHECK(t != NULL && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3);
    CHECK(t->strides[0] == 3 && t->strides[1] == 1 && t->offset == 0);
    CHECK(t->dtype == TN_F32 && t->device == TN_CPU && t->refcount == 1);
    CHECK(((uintptr_t)t->data & 63) == 0 && data_ok(t));
    CHECK(t->storage->nbytes == 24 && t->storage->refcount == 1);
    CHECK(tn_tensor_numel(t) == 6 && tn_tensor_is_contiguous(t));
    CHECK(tn_memory_current(TN_CPU) == cur0 + 24);
    CHECK(tn_memory_live(TN_CPU) == live0 + 1);
    char buf[64];
    CHECK(strcmp(tn_shape_str(t, buf, sizeof buf), "[2, 3]") == 0);
    char tiny[4];
    tn_shape_str(t, tiny, sizeof tiny);
    CHECK(strlen(tiny) == 3); /* truncated, terminated */

    tn_memory_reset_peak(TN_CPU);
    int64_t peak0 = tn_memory_peak(TN_CPU);
    CHECK(peak0 == tn_memory_current(TN_CPU));
    tn_tensor *big = NULL;
    int64_t bshape[1] = {1000};
    CHECK_OK(tn_tensor_empty(&big, 1, bshape, TN_F64, TN_CPU));
    CHECK(tn_memory_peak(TN_CPU) == peak0 + 8000);
    tn_tensor_free(big);
    CHECK(tn_memory_peak(TN_CPU) == peak0 + 8000);
    CHECK(tn_memory_current(TN_CPU) == peak0);
    tn_memory_reset_peak(TN_CPU);
    CHECK(tn_memory_peak(TN_CPU) == peak0);

    /* refcounts */
    CHECK(tn_tensor_retain(t) == t && t->refcount == 2);
    tn_tensor_free(t);
    CHECK(t->refcount == 1);
    tn_tensor *v = NULL;
    CHECK_OK(tn_transpose(&v, t, 0, 1));
    CHECK(t->storage->refcount == 2 && v->storage == t->storage);
    tn_tensor_free(t); /* storage survives through v */
    CHECK(v->storage->refcount == 1 && tn_memory_live(TN_CPU) == live0 + 1);
    tn_tensor_free(v);
    CHECK(tn_memory_current(TN_CPU) == cur0 && tn_memory_live(TN_CPU) == live0);
    tn_tensor_free(NULL);
    CHECK(tn_tensor_retain(NULL) == NULL);

    /* scalar and empty tensors */
    tn_tensor *sc = NULL, *z = NULL;
    CHECK_OK(tn_tensor_empty(&sc, 0, NULL, TN_I64, TN_CPU));
    CHECK(tn_tensor_numel(sc) == 1 && tn_tensor_is_contiguous(sc));
    CHECK(strcmp(tn_shape_str(sc, buf, sizeof buf), "[]") == 0);
    int64_t zs[3] = {4, 0, 5};
    CHECK_OK(tn_tensor_empty(&z, 3, zs, TN_U8, TN_CPU));
    CHECK(z->data != NULL && tn_tensor_numel(z) == 0 && tn_tensor_is_contiguous(z));
    tn_tensor_free(sc);
    tn_tensor_free(z);

    /* errors */
    tn_tensor *e = NULL;
    int64_t bad[2] = {2, -1};
    CHECK(tn_tensor_empty(&e, 2, bad, TN_F32, TN_CPU) == TN_ERR_ARG && has("[2, -1]") && e == NULL);
    CHECK(tn_tensor_empty(&e, 9, shape, TN_F32, TN_CPU) == TN_ERR_ARG && has("ndim 9"));
    CHECK(tn_tensor_empty(&e, -1, shape, TN_F32, TN_CPU) == TN_ERR_ARG);
    CHECK(tn_tensor_empty(&e, 2, shape, 7, TN_CPU) == TN_ERR_ARG && has("dtype"));
    CHECK(tn_tensor_empty(&e, 2, shape, TN_F32, 5) == TN_ERR_ARG && has("device"));
    CHECK(tn_tensor_empty(&e, 2, NULL, TN_F32, TN_CPU) == TN_ERR_ARG);
    int64_t huge[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
    CHECK(tn_tensor_empty(&e, 2, huge, TN_F32, TN_CPU) == TN_ERR_ARG &&
          has("[1099511627776, 1099511627776]"));
    int64_t huge0[3] = {INT64_C(1) << 40, INT64_C(1) << 40, 0}; /* overflowing but empty */
    CHECK_OK(tn_tensor_empty(&e, 3, huge0, TN_F32, TN_CPU));
    tn_tensor_free(e);
    e = NULL;
    int64_t oom[1] = {INT64_C(1) << 60}; /* 8 EiB: the allocator refuses */
    CHECK(tn_tensor_empty(&e, 1, oom, TN_F64, TN_CPU) != TN_OK && e == NULL);
    CHECK(has("empty:"));
#ifndef __SANITIZE_ADDRESS__ /* ASan aborts on huge requests unless allocator_may_return_null=1 */
    int64_t oom2[1] = {INT64_C(1) << 58}; /* 2^61 bytes: fits int64, too big for malloc */
    CHECK(tn_tensor_empty(&e, 1, oom2, TN_F64, TN_CPU) == TN_ERR_OOM && has("2305843009213693952 bytes"));
#endif
    if (!tn_has_cuda()) {
        /* a CPU-only build has no CUDA allocator; a CUDA build on a machine without a GPU
         * has one, which reports the missing device */
        int built_with_cuda = tn_allocator_get(TN_CUDA) != NULL;
        CHECK(tn_tensor_empty(&e, 2, shape, TN_F32, TN_CUDA) == TN_ERR_DEVICE && e == NULL);
        CHECK(built_with_cuda ? has("empty: no CUDA device is available")
                              : has("empty: tern was built without CUDA (device cuda requested)"));
    }
    CHECK(tn_tensor_empty(NULL, 2, shape, TN_F32, TN_CPU) == TN_ERR_ARG);
    CHECK(tn_memory_current(TN_CPU) == cur0 && tn_memory_live(TN_CPU) == live0);
}

static void *failing_alloc(void *ctx, size_t nbytes) {
    (void)ctx, (void)nbytes;
    return NULL;
}
static void plain_free(void *ctx, void *p, size_t nbytes) {
    (void)ctx;
    free(p);
    tn_memory_note_free(TN_CUDA, nbytes);
}
static void *plain_alloc(void *ctx, size_t nbytes) {
    (*(int *)ctx)++;
    void *p = malloc(nbytes ? nbytes : 1);
    if (p) tn_memory_note_alloc(TN_CUDA, nbytes);
    return p;
}

static void test_allocator_registry(void) {
    const tn_allocator *cpu = tn_allocator_get(TN_CPU);
    CHECK(cpu != NULL && cpu->device == TN_CPU);
    const tn_allocator *cuda0 = tn_allocator_get(TN_CUDA); /* NULL in a CPU-only build */
    CHECK(tn_allocator_get(7) == NULL);
    void *p = cpu->alloc(cpu->ctx, 0);
    CHECK(p != NULL && ((uintptr_t)p & 63) == 0);
    cpu->free(cpu->ctx, p, 0);
    tn_allocator_set(TN_CPU, NULL); /* restores the default */
    CHECK(tn_allocator_get(TN_CPU) == cpu);

    /* an allocator that fails: OOM names the bytes and the shape */
    tn_allocator bad = {failing_alloc, plain_free, NULL, TN_CPU};
    tn_allocator_set(TN_CPU, &bad);
    tn_tensor *t = NULL;
    int64_t s[2] = {5, 7};
    CHECK(tn_tensor_empty(&t, 2, s, TN_F64, TN_CPU) == TN_ERR_OOM && t == NULL &&
          has("empty: out of cpu memory allocating 280 bytes for shape [5, 7] (f64)"));
    tn_allocator_set(TN_CPU, NULL);
    CHECK(tn_allocator_get(TN_CPU) == cpu);

    /* a registered device allocator (a fake "cuda" on host memory, never touched by kernels):
     * storages carry it, accounting is per device */
    if (!tn_has_cuda()) {
        int calls = 0;
        tn_allocator fake = {plain_alloc, plain_free, &calls, TN_CUDA};
        int64_t c0 = tn_memory_current(TN_CUDA), cpu0 = tn_memory_current(TN_CPU);
        tn_allocator_set(TN_CUDA, &fake);
        CHECK_OK(tn_tensor_empty(&t, 2, s, TN_F32, TN_CUDA));
        CHECK(calls == 1 && t->device == TN_CUDA && t->storage->allocator == &fake);
        CHECK(tn_memory_current(TN_CUDA) == c0 + 140 && tn_memory_live(TN_CUDA) == 1);
        CHECK(tn_memory_current(TN_CPU) == cpu0);
        tn_tensor *v = NULL;
        CHECK_OK(tn_transpose(&v, t, 0, 1));
        CHECK(v->device == TN_CUDA);
        tn_tensor_free(v);
        tn_tensor_free(t);
        CHECK(tn_memory_current(TN_CUDA) == c0 && tn_memory_live(TN_CUDA) == 0);
        tn_allocator_set(TN_CUDA, cuda0); /* put back what the build registered */
        CHECK(tn_allocator_get(TN_CUDA) == cuda0);
    }
}

static void test_prepare_out(void) {
    int64_t s23[2] = {2, 3}, s32[2] = {3, 2};
    tn_tensor *o = NULL;
    CHECK_OK(tn_prepare_out("add", &o, 2, s23, TN_F32, TN_CPU));
    CHECK(o && o->shape[0] == 2 && o->shape[1] == 3 && o->dtype == TN_F32);
    tn_tensor *same = o;
    CHECK_OK(tn_prepare_out("add", &o, 2, s23, TN_F32, TN_CPU));
    CHECK(o == same && o->refcount == 1);
    CHECK(tn_prepare_out("add", &o, 2, s32, TN_F32, TN_CPU) == TN_ERR_SHAPE &&
          has("add: out has shape [2, 3] (f32), expected [3, 2] (f32)"));
    CHECK(tn_prepare_out("add", &o, 2, s23, TN_F64, TN_CPU) == TN_ERR_DTYPE && has("add:") && has("f64"));
    CHECK(tn_prepare_out("add", &o, 2, s23, TN_F32, TN_CUDA) == TN_ERR_DEVICE);
    tn_tensor_free(o);
    tn_tensor *n = NULL;
    int64_t neg[1] = {-3};
    CHECK(tn_prepare_out("mul", &n, 1, neg, TN_F32, TN_CPU) == TN_ERR_ARG && has("mul:") && n == NULL);
}

static void test_as_strided(void) {
    int64_t s[1] = {12};
    tn_tensor *t = arange_f32(1, s), *v = NULL;
    int64_t sh[2] = {3, 2}, st[2] = {4, 1};
    CHECK_OK(tn_as_strided(&v, t, 2, sh, st, 1));
    CHECK(v->offset == 1 && data_ok(v) && v->storage == t->storage);
    CHECK(at(v, (int64_t[]){2, 1}) == 10.0f && at(v, (int64_t[]){0, 0}) == 1.0f);
    tn_tensor_free(v);
    v = NULL;
    /* last element: 2 + 2*4 + 1*1 = 11 fits, offset 3 gives 12 > 11 */
    CHECK_OK(tn_as_strided(&v, t, 2, sh, st, 2));
    tn_tensor_free(v);
    v = NULL;
    CHECK(tn_as_strided(&v, t, 2, sh, st, 3) == TN_ERR_INDEX && has("as_strided") && has("[3, 2]") && v == NULL);
    CHECK(tn_as_strided(&v, t, 2, sh, st, -1) == TN_ERR_ARG && has("negative storage offset"));
    int64_t nst[2] = {-1, 1};
    CHECK(tn_as_strided(&v, t, 2, sh, nst, 11) == TN_ERR_ARG && has("[-1, 1]"));
    int64_t bigst[2] = {INT64_MAX / 2, 1};
    CHECK(tn_as_strided(&v, t, 2, sh, bigst, 0) == TN_ERR_INDEX);
    int64_t ez[2] = {0, 5};
    CHECK_OK(tn_as_strided(&v, t, 2, ez, st, 12)); /* empty view at the end */
    CHECK(tn_tensor_numel(v) == 0);
    tn_tensor_free(v);
    v = NULL;
    CHECK(tn_as_strided(&v, t, 2, ez, st, 13) == TN_ERR_INDEX);
    int64_t zst[2] = {0, 0};
    CHECK_OK(tn_as_strided(&v, t, 2, sh, zst, 11)); /* broadcast of one element */
    CHECK(at(v, (int64_t[]){2, 1}) == 11.0f);
    tn_tensor_free(v);
    tn_tensor_free(t);
}

static void test_view_reshape(void) {
    int64_t cur0 = tn_memory_current(TN_CPU);
    int64_t s[3] = {2, 3, 4};
    tn_tensor *t = arange_f32(3, s), *v = NULL, *w = NULL;
    int64_t ns[2] = {6, -1};
    CHECK_OK(tn_view(&v, t, 2, ns));
    CHECK(v->ndim == 2 && v->shape[0] == 6 && v->shape[1] == 4 && v->strides[0] == 4 && v->strides[1] == 1);
    CHECK(v->storage == t->storage && at(v, (int64_t[]){5, 3}) == 23.0f);
    tn_tensor_free(v);
    v = NULL;

    /* a transposed tensor: (2, 3, 4) -> transpose(1, 2) = (2, 4, 3) strides (12, 1, 4) */
    CHECK_OK(tn_transpose(&w, t, 1, 2));
    CHECK(!tn_tensor_is_contiguous(w));
    int64_t flat[1] = {24};
    CHECK(tn_view(&v, w, 1, flat) == TN_ERR_SHAPE &&
          has("view: shape [24] is not compatible with input size [2, 4, 3] and strides [12, 1, 4]; use reshape"));
    /* merging only the leading dim with nothing, splitting dim 0 is fine */
    int64_t split[4] = {1, 2, 4, 3};
    CHECK_OK(tn_view(&v, w, 4, split));
    CHECK(v->strides[1] == 12 && v->strides[2] == 1 && v->strides[3] == 4);
    CHECK(at(v, (int64_t[]){0, 1, 3, 2}) == at(w, (int64_t[]){1, 3, 2}));
    tn_tensor_free(v);
    v = NULL;
    /* split a non-contiguous dim: (2, 4, 3) view (2, 2, 2, 3) */
    int64_t split2[4] = {2, 2, 2, 3};
    CHECK_OK(tn_view(&v, w, 4, split2));
    CHECK(v->strides[0] == 12 && v->strides[1] == 2 && v->strides[2] == 1 && v->strides[3] == 4);
    tn_tensor_free(v);
    v = NULL;

    /* reshape copies when a view is impossible */
    CHECK_OK(tn_reshape(&v, w, 1, flat));
    CHECK(v->storage != t->storage && tn_tensor_is_contiguous(v));
    int ok = 1;
    for (int64_t i = 0; i < 2; i++)
        for (int64_t j = 0; j < 4; j++)
            for (int64_t k = 0; k < 3; k++)
                ok &= ((float *)v->data)[i * 12 + j * 3 + k] == at(w, (int64_t[]){i, j, k});
    CHECK(ok);
    tn_tensor_free(v);
    v = NULL;
    CHECK_OK(tn_reshape(&v, t, 2, ns)); /* a view */
    CHECK(v->storage == t->storage);
    tn_tensor_free(v);
    v = NULL;

    /* shape errors */
    int64_t two_neg[2] = {-1, -1}, bad7[2] = {7, -1}, badn[1] = {-2}, wrong[2] = {5, 5}, zneg[2] = {0, -1};
    CHECK(tn_view(&v, t, 2, two_neg) == TN_ERR_ARG && has("more than one -1"));
    CHECK(tn_view(&v, t, 2, bad7) == TN_ERR_SHAPE && has("[7, -1]") && has("24"));
    CHECK(tn_view(&v, t, 1, badn) == TN_ERR_ARG);
    CHECK(tn_reshape(&v, t, 2, wrong) == TN_ERR_SHAPE && has("reshape:") && has("[5, 5]") && has("[2, 3, 4]"));
    CHECK(tn_view(&v, t, 2, zneg) == TN_ERR_SHAPE);
    CHECK(tn_view(&v, t, 9, wrong) == TN_ERR_ARG);
    CHECK(tn_view(&v, NULL, 2, wrong) == TN_ERR_ARG && has("view: argument 't' is NULL"));
    CHECK(v == NULL);

    /* scalar <-> [1, 1]; empty tensors */
    tn_tensor *sc = arange_f32(0, NULL);
    int64_t ones[2] = {1, 1};
    CHECK_OK(tn_view(&v, sc, 2, ones));
    CHECK(v->ndim == 2 && tn_tensor_numel(v) == 1);
    tn_tensor_free(w); /* the transpose from above */
    w = NULL;
    CHECK_OK(tn_view(&w, v, 0, NULL));
    CHECK(w->ndim == 0 && tn_tensor_numel(w) == 1);
    tn_tensor_free(w);
    tn_tensor_free(v);
    tn_tensor_free(sc);
    v = w = NULL;
    int64_t es[2] = {0, 4}, es2[3] = {2, 0, -1};
    tn_tensor *e = arange_f32(2, es);
    CHECK(tn_view(&v, e, 3, es2) == TN_ERR_SHAPE); /* -1 with a 0: ambiguous */
    int64_t es3[3] = {2, 0, 8};
    CHECK_OK(tn_view(&v, e, 3, es3));
    CHECK(tn_tensor_numel(v) == 0);
    tn_tensor_free(v);
    tn_tensor_free(e);
    tn_tensor_free(t);
    CHECK(tn_memory_current(TN_CPU) == cur0);
}

static void test_transpose_permute(void) {
    int64_t s[3] = {2, 3, 4};
    tn_tensor *t = arange_f32(3, s), *v = NULL;
    CHECK_OK(tn_transpose(&v, t, 0, 2));
    CHECK(v->shape[0] == 4 && v->shape[2] == 2 && v->strides[0] == 1 && v->strides[2] == 12);
    CHECK(at(v, (int64_t[]){3, 1, 1}) == 1 * 12 + 1 * 4 + 3);
    tn_tensor_free(v);
    v = NULL;
    CHECK(tn_transpose(&v, t, 0, 3) == TN_ERR_INDEX && has("transpose: dim 3 out of range") && has("[2, 3, 4]"));
    CHECK(tn_transpose(&v, t, -1, 0) == TN_ERR_INDEX);
    int32_t perm[3] = {2, 0, 1};
    CHECK_OK(tn_permute(&v, t, perm));
    CHECK(v->shape[0] == 4 && v->shape[1] == 2 && v->shape[2] == 3);
    CHECK(v->strides[0] == 1 && v->strides[1] == 12 && v->strides[2] == 4);
    CHECK(at(v, (int64_t[]){3, 1, 2}) == 12 + 8 + 3);
    tn_tensor_free(v);
    v = NULL;
    int32_t dup[3] = {0, 0, 1}, oor[3] = {0, 1, 3};
    CHECK(tn_permute(&v, t, dup) == TN_ERR_ARG && has("[0, 0, 1]") && has("not a permutation"));
    CHECK(tn_permute(&v, t, oor) == TN_ERR_ARG);
    CHECK(tn_permute(&v, t, NULL) == TN_ERR_ARG);
    CHECK(tn_permute(&v, t, dup) == TN_ERR_ARG && has("dims [0, 0, 1] are not a permutation of 0..2"));
    tn_set_dim_base(1); /* permutation entries and the dim range 1-based; the shape is not */
    CHECK(tn_permute(&v, t, dup) == TN_ERR_ARG && has("dims [1, 1, 2] are not a permutation of 1..3") &&
          has("[2, 3, 4]"));
    CHECK(tn_transpose(&v, t, 0, 3) == TN_ERR_INDEX && has("transpose: dim 4 out of range for a 3-d tensor"));
    tn_set_dim_base(0);
    CHECK(v == NULL);
    tn_tensor_free(t);
}

static void test_narrow_select(void) {
    int64_t s[2] = {4, 5};
    tn_tensor *t = arange_f32(2, s), *v = NULL, *w = NULL;
    CHECK_OK(tn_narrow(&v, t, 1, 1, 3));
    CHECK(v->shape[0] == 4 && v->shape[1] == 3 && v->offset == 1 && data_ok(v));
    CHECK(at(v, (int64_t[]){2, 2}) == 13.0f && !tn_tensor_is_contiguous(v));
    CHECK_OK(tn_narrow(&w, v, 0, 2, 2));
    CHECK(w->offset == 11 && at(w, (int64_t[]){1, 0}) == 16.0f && data_ok(w));
    tn_tensor_free(w);
    w = NULL;
    CHECK_OK(tn_select(&w, v, 0, 3));
    CHECK(w->ndim == 1 && w->shape[0] == 3 && w->offset == 16 && at(w, (int64_t[]){2}) == 18.0f);
    tn_tensor_free(w);
    w = NULL;
    CHECK_OK(tn_select(&w, t, 1, 4));
    CHECK(w->ndim == 1 && w->shape[0] == 4 && w->strides[0] == 5 && at(w, (int64_t[]){3}) == 19.0f);
    tn_tensor_free(w);
    w = NULL;
    CHECK_OK(tn_narrow(&w, t, 0, 4, 0)); /* empty at the end */
    CHECK(tn_tensor_numel(w) == 0 && data_ok(w));
    tn_tensor_free(w);
    w = NULL;
    CHECK(tn_narrow(&w, t, 0, 3, 2) == TN_ERR_INDEX && has("narrow: start 3, length 2") && has("size 4") &&
          has("[4, 5]"));
    CHECK(tn_narrow(&w, t, 0, -1, 1) == TN_ERR_INDEX);
    CHECK(tn_narrow(&w, t, 0, 0, -1) == TN_ERR_INDEX);
    CHECK(tn_narrow(&w, t, 2, 0, 1) == TN_ERR_INDEX && has("dim 2"));
    CHECK(tn_select(&w, t, 1, 5) == TN_ERR_INDEX && has("select: index 5 out of range for dim 1 of size 5") &&
          has("[4, 5]"));
    CHECK(tn_select(&w, t, 0, -1) == TN_ERR_INDEX && has("index -1"));
    CHECK(tn_select(&w, t, 2, 0) == TN_ERR_INDEX);
    tn_set_dim_base(1); /* start and index arguments and dims 1-based; length and size are not */
    CHECK(tn_narrow(&w, t, 0, 3, 2) == TN_ERR_INDEX &&
          has("narrow: start 4, length 2 out of range for dim 1 of size 4 (shape [4, 5])"));
    CHECK(tn_narrow(&w, t, 2, 0, 1) == TN_ERR_INDEX && has("dim 3"));
    CHECK(tn_select(&w, t, 1, 5) == TN_ERR_INDEX &&
          has("select: index 6 out of range for dim 2 of size 5 (shape [4, 5])"));
    tn_set_dim_base(0);
    CHECK(w == NULL);
    /* select down to a scalar */
    tn_tensor *r = NULL, *sc = NULL;
    CHECK_OK(tn_select(&r, t, 0, 2));
    CHECK_OK(tn_select(&sc, r, 0, 3));
    CHECK(sc->ndim == 0 && *(float *)sc->data == 13.0f);
    CHECK(tn_select(&w, sc, 0, 0) == TN_ERR_INDEX);
    tn_tensor_free(sc);
    tn_tensor_free(r);
    tn_tensor_free(v);
    tn_tensor_free(t);
}

static void test_squeeze_unsqueeze_expand(void) {
    int64_t s[3] = {2, 1, 3};
    tn_tensor *t = arange_f32(3, s), *v = NULL, *w = NULL;
    CHECK_OK(tn_squeeze(&v, t, -1));
    CHECK(v->ndim == 2 && v->shape[0] == 2 && v->shape[1] == 3 && tn_tensor_is_contiguous(v));
    tn_tensor_free(v);
    v = NULL;
    CHECK_OK(tn_squeeze(&v, t, 0)); /* size 2: unchanged */
    CHECK(v->ndim == 3);
    tn_tensor_free(v);
    v = NULL;
    CHECK_OK(tn_squeeze(&v, t, 1));
    CHECK(v->ndim == 2);
    tn_tensor_free(v);
    v = NULL;
    CHECK(tn_squeeze(&v, t, 3) == TN_ERR_INDEX && has("squeeze"));

    CHECK_OK(tn_unsqueeze(&v, t, 3));
    CHECK(v->ndim == 4 && v->shape[3] == 1 && v->strides[3] == 1);
    tn_tensor_free(v);
    v = NULL;
    CHECK_OK(tn_unsqueeze(&v, t, 0));
    CHECK(v->ndim == 4 && v->shape[0] == 1 && v->strides[0] == 6 && tn_tensor_is_contiguous(v));
    tn_tensor_free(v);
    v = NULL;
    CHECK(tn_unsqueeze(&v, t, 4) == TN_ERR_INDEX && has("unsqueeze: dim 4 out of range 0..3") && has("[2, 1, 3]"));
    tn_set_dim_base(1);
    CHECK(tn_unsqueeze(&v, t, 4) == TN_ERR_INDEX && has("unsqueeze: dim 5 out of range 1..4 for shape [2, 1, 3]"));
    tn_set_dim_base(0);
    CHECK(tn_unsqueeze(&v, t, -1) == TN_ERR_INDEX);
    int64_t s8[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    tn_tensor *t8 = arange_f32(8, s8);
    CHECK(tn_unsqueeze(&v, t8, 0) == TN_ERR_SHAPE);
    tn_tensor_free(t8);

    /* expand (2, 1, 3) -> (4, 2, 5, 3) */
    int64_t es[4] = {4, 2, 5, -1};
    CHECK_OK(tn_expand(&v, t, 4, es));
    CHECK(v->shape[0] == 4 && v->shape[2] == 5 && v->shape[3] == 3);
    CHECK(v->strides[0] == 0 && v->strides[1] == 3 && v->strides[2] == 0 && v->strides[3] == 1);
    CHECK(at(v, (int64_t[]){3, 1, 4, 2}) == 5.0f && !tn_tensor_is_contiguous(v));
    /* contiguous of an expanded view is a copy */
    CHECK_OK(tn_contiguous(&w, v));
    CHECK(w != v && tn_tensor_is_contiguous(w) && tn_tensor_numel(w) == 120);
    CHECK(((float *)w->data)[119] == 5.0f && ((float *)w->data)[1] == 1.0f && ((float *)w->data)[16] == 4.0f);
    tn_tensor_free(w);
    w = NULL;
    tn_tensor_free(v);
    v = NULL;
    int64_t bad[3] = {3, 1, 3}, lead[4] = {-1, 2, 1, 3}, few[2] = {1, 3};
    CHECK(tn_expand(&v, t, 3, bad) == TN_ERR_SHAPE && has("expand: cannot expand shape [2, 1, 3] to [3, 1, 3]"));
    CHECK(tn_expand(&v, t, 4, lead) == TN_ERR_SHAPE && has("[-1, 2, 1, 3]"));
    CHECK(tn_expand(&v, t, 2, few) == TN_ERR_SHAPE);
    CHECK(v == NULL);

    /* contiguous of a contiguous tensor retains it */
    CHECK_OK(tn_contiguous(&w, t));
    CHECK(w == t && t->refcount == 2);
    tn_tensor_free(w);
    tn_tensor_free(t);
}

static void test_is_contiguous(void) {
    int64_t s[2] = {3, 1};
    tn_tensor *t = arange_f32(2, s), *v = NULL;
    t->strides[1] = 17; /* size-1 dims ignore strides */
    CHECK(tn_tensor_is_contiguous(t));
    t->strides[1] = 1;
    CHECK_OK(tn_transpose(&v, t, 0, 1));
    CHECK(tn_tensor_is_contiguous(v)); /* (1, 3) strides (1, 1) */
    tn_tensor_free(v);
    tn_tensor_free(t);
}

static void test_broadcast_shape(void) {
    int64_t sa[2] = {2, 3}, sb[1] = {4}, sc[3] = {5, 1, 3}, sd[1] = {1}, se[2] = {0, 1};
    tn_tensor *a = arange_f32(2, sa), *b = arange_f32(1, sb), *c = arange_f32(3, sc), *d = arange_f32(1, sd);
    tn_tensor *e = arange_f32(2, se), *s = arange_f32(0, NULL);
    int32_t nd = -1;
    int64_t out[TN_MAX_DIMS];
    CHECK_OK(tn_broadcast_shape(&nd, out, a, c, "add"));
    CHECK(nd == 3 && out[0] == 5 && out[1] == 2 && out[2] == 3);
    CHECK_OK(tn_broadcast_shape(&nd, out, d, a, "add"));
    CHECK(nd == 2 && out[0] == 2 && out[1] == 3);
    CHECK_OK(tn_broadcast_shape(&nd, out, s, s, "add"));
    CHECK(nd == 0);
    CHECK(tn_broadcast_shape(&nd, out, e, a, "add") == TN_ERR_SHAPE); /* (0, 1) with (2, 3) */
    tn_tensor *e2 = NULL;
    int64_t se2[2] = {0, 3};
    CHECK_OK(tn_tensor_empty(&e2, 2, se2, TN_F32, TN_CPU));
    CHECK_OK(tn_broadcast_shape(&nd, out, e2, d, "add"));
    CHECK(nd == 2 && out[0] == 0 && out[1] == 3);
    nd = -1;
    CHECK(tn_broadcast_shape(&nd, out, a, b, "mul") == TN_ERR_SHAPE &&
          has("mul: shapes [2, 3] and [4] are not broadcastable") && nd == -1);
    CHECK(tn_broadcast_shape(&nd, out, a, NULL, "mul") == TN_ERR_ARG && has("mul: argument 'b' is NULL"));
    tn_tensor_free(a);
    tn_tensor_free(b);
    tn_tensor_free(c);
    tn_tensor_free(d);
    tn_tensor_free(e);
    tn_tensor_free(e2);
    tn_tensor_free(s);
}

static void test_view_data_invariant(void) {
    /* f64 and u8 views keep data = storage->data + offset * elsize */
    int64_t s[2] = {3, 4};
    for (int32_t dt = 0; dt < TN_NUM_DTYPES; dt++) {
        tn_tensor *t = NULL, *a = NULL, *b = NULL;
        CHECK_OK(tn_tensor_empty(&t, 2, s, dt, TN_CPU));
        CHECK_OK(tn_narrow(&a, t, 1, 2, 2));
        CHECK_OK(tn_select(&b, a, 0, 2));
        CHECK(data_ok(a) && data_ok(b) && b->offset == 10 && b->dtype == dt && b->device == TN_CPU);
        tn_tensor_free(b);
        tn_tensor_free(a);
        tn_tensor_free(t);
    }
}

int main(void) {
    int64_t cur0 = tn_memory_current(TN_CPU), live0 = tn_memory_live(TN_CPU);
    test_state();
    test_checks();
    test_empty_and_memory();
    test_allocator_registry();
    test_prepare_out();
    test_as_strided();
    test_view_reshape();
    test_transpose_permute();
    test_narrow_select();
    test_squeeze_unsqueeze_expand();
    test_is_contiguous();
    test_broadcast_shape();
    test_view_data_invariant();
    CHECK(tn_memory_current(TN_CPU) == cur0);
    CHECK(tn_memory_live(TN_CPU) == live0);
    return check_report("test_tensor");
}
