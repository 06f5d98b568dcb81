/*
 * tensor.c — storages, tensors and views.
 *
 * A storage owns nbytes of device memory obtained from the allocator registered for its
 * device type; a tensor is a refcounted view (shape, strides in elements, offset in elements)
 * over one owned storage reference. Both refcounts are atomic. Views never copy: they retain
 * the storage and keep dtype and device; `data` is always storage->data + offset*elsize.
 *
 * Memory accounting: the allocators call tn_memory_note_alloc/free once per storage buffer
 * (the CPU allocator below does; a CUDA allocator registered by cuda/ must do the same), so
 * current/peak/live count the bytes of live storages per device type.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

enum { TN_NUM_DEVICES = 2 };

/* ---- memory accounting (atomics) --------------------------------------------------------- */

static int64_t mem_current[TN_NUM_DEVICES]; /* bytes of live storages */
static int64_t mem_peak[TN_NUM_DEVICES];    /* max of mem_current since the last reset */
static int64_t mem_live[TN_NUM_DEVICES];    /* number of live storages */

static int valid_device(int32_t device) { return device >= 0 && device < TN_NUM_DEVICES; }

void tn_memory_note_alloc(int32_t device, size_t nbytes) {
    if (!valid_device(device)) return;
    int64_t cur = __atomic_add_fetch(&mem_current[device], (int64_t)nbytes, __ATOMIC_RELAXED);
    __atomic_add_fetch(&mem_live[device], 1, __ATOMIC_RELAXED);
    int64_t peak = __atomic_load_n(&mem_peak[device], __ATOMIC_RELAXED);
    while (cur > peak && !__atomic_compare_exchange_n(&mem_peak[device], &peak, cur, 1,
                                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

void tn_memory_note_free(int32_t device, size_t nbytes) {
    if (!valid_device(device)) return;
    __atomic_sub_fetch(&mem_current[device], (int64_t)nbytes, __ATOMIC_RELAXED);
    __atomic_sub_fetch(&mem_live[device], 1, __ATOMIC_RELAXED);
}

int64_t tn_memory_current(int32_t device) {
    return valid_device(device) ? __atomic_load_n(&mem_current[device], __ATOMIC_RELAXED) : 0;
}
int64_t tn_memory_peak(int32_t device) {
    return valid_device(device) ? __atomic_load_n(&mem_peak[device], __ATOMIC_RELAXED) : 0;
}
int64_t tn_memory_live(int32_t device) {
    return valid_device(device) ? __atomic_load_n(&mem_live[device], __ATOMIC_RELAXED) : 0;
}
void tn_memory_reset_peak(int32_t device) {
    if (!valid_device(device)) return;
    __atomic_store_n(&mem_peak[device], __atomic_load_n(&mem_current[device], __ATOMIC_RELAXED),
                     __ATOMIC_RELAXED);
}

/* ---- CPU allocator and registry ------------------------------------------------------------ */

/*
 * The CPU allocator caches freed blocks in size classes, so the buffers that a training loop
 * frees (when the Lua GC finalises its tensors) are reused with their pages already mapped,
 * instead of being returned to the system and faulted in again. Classes: 64-byte multiples
 * up to 1 KiB, then four classes per power of two (at most 25% slack). Blocks above
 * TN_CACHE_MAX_BLOCK are not cached; the cache holds at most cache_limit bytes (default
 * 1 GiB, TERN_CPU_CACHE_MB overrides, 0 disables) and tn_memory_empty_cache() drains it.
 * Blocks are 64-byte aligned; nbytes 0 still returns a valid, unique pointer.
 */
#include <pthread.h>

enum { TN_NUM_CLASSES = 16 + 4 * 40 };
#define TN_CACHE_MAX_BLOCK ((size_t)1 << 30)

typedef struct cache_block { struct cache_block *next; } cache_block;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cache_block *cache_lists[TN_NUM_CLASSES]; /* free blocks per class */
static size_t cache_bytes;                       /* bytes held in cache_lists */
static int64_t cache_limit = -1;                 /* -1: not read from the environment yet */

/* class index and its block size for a request of n bytes (n > 0): 64-byte granule */
static int size_class(size_t n, size_t *block) { return tn_size_class(n, 64, block); }

static int64_t cache_limit_bytes(void) {
    int64_t lim = __atomic_load_n(&cache_limit, __ATOMIC_RELAXED);
    if (lim >= 0) return lim;
    const char *env = getenv("TERN_CPU_CACHE_MB");
#if defined(__SANITIZE_ADDRESS__)
    const int64_t dflt = 0; /* under ASan reuse would hide use-after-free: no cache by default */
#else
    const int64_t dflt = (int64_t)1 << 30;
#endif
    lim = env && *env ? (int64_t)atoll(env) * 1024 * 1024 : dflt;
    if (lim < 0) lim = 0;
    __atomic_store_n(&cache_limit, lim, __ATOMIC_RELAXED);
    return lim;
}

static void *cpu_alloc(void *ctx, size_t nbytes) {
    (void)ctx;
    size_t n = nbytes == 0 ? 64 : nbytes;
    if (n > SIZE_MAX / 2) return NULL;
    size_t block = 0;
    int cls = -1;
    if (n <= TN_CACHE_MAX_BLOCK) {
        cls = size_class(n, &block);
        pthread_mutex_lock(&cache_lock);
        cache_block *b = cache_lists[cls];
        if (b) {
            cache_lists[cls] = b->next;
            cache_bytes -= block;
        }
        pthread_mutex_unlock(&cache_lock);
        if (b) {
            tn_memory_note_alloc(TN_CPU, nbytes);
            return b;
        }
    } else {
        block = (n + 63) & ~(size_t)63;
    }
    void *p = NULL;
    if (posix_memalign(&p, 64, block) != 0) {
        /* drain the cache and try once more before reporting out of memory */
        tn_memory_empty_cache(TN_CPU);
        if (posix_memalign(&p, 64, block) != 0) return NULL;
    }
    tn_memory_note_alloc(TN_CPU, nbytes);
    return p;
}

static void cpu_free(void *ctx, void *ptr, size_t nbytes) {
    (void)ctx;
    if (!ptr) return;
    tn_memory_note_free(TN_CPU, nbytes);
    size_t n = nbytes == 0 ? 64 : nbytes;
    if (n <= TN_CACHE_MAX_BLOCK) {
        size_t block;
        int cls = size_class(n, &block);
        int64_t lim = cache_limit_bytes();
        pthread_mutex_lock(&cache_lock);
        if ((int64_t)(cache_bytes + block) <= lim) {
            cache_block *b = ptr;
            b->next = cache_lists[cls];
            cache_lists[cls] = b;
            cache_bytes += block;
            ptr = NULL;
        }
        pthread_mutex_unlock(&cache_lock);
    }
    free(ptr);
}

int64_t tn_memory_cached(int32_t device) {
#ifdef TERN_HAVE_CUDA
    if (device == TN_CUDA) return tn_cuda_pool_cached();
#endif
    if (device != TN_CPU) return 0;
    pthread_mutex_lock(&cache_lock);
    size_t b = cache_bytes;
    pthread_mutex_unlock(&cache_lock);
    return (int64_t)b;
}

void tn_memory_empty_cache(int32_t device) {
#ifdef TERN_HAVE_CUDA
    if (device == TN_CUDA) tn_cuda_pool_empty();
#endif
    if (device != TN_CPU) return;
    cache_block *lists[TN_NUM_CLASSES];
    pthread_mutex_lock(&cache_lock);
    memcpy(lists, cache_lists, sizeof lists);
    memset(cache_lists, 0, sizeof cache_lists);
    cache_bytes = 0;
    pthread_mutex_unlock(&cache_lock);
    for (int c = 0; c < TN_NUM_CLASSES; c++) {
        cache_block *b = lists[c];
        while (b) {
            cache_block *next = b->next;
            free(b);
            b = next;
        }
    }
}

void tn_memory_set_cache_limit(int32_t device, int64_t bytes) {
#ifdef TERN_HAVE_CUDA
    if (device == TN_CUDA) tn_cuda_pool_set_limit(bytes < 0 ? 0 : bytes);
#endif
    if (device != TN_CPU) return;
    __atomic_store_n(&cache_limit, bytes < 0 ? 0 : bytes, __ATOMIC_RELAXED);
    if (tn_memory_cached(TN_CPU) > (bytes < 0 ? 0 : bytes)) tn_memory_empty_cache(TN_CPU);
}

static const tn_allocator cpu_allocator = {cpu_alloc, cpu_free, NULL, TN_CPU};

static const tn_allocator *allocators[TN_NUM_DEVICES] = {&cpu_allocator, NULL};

const tn_allocator *tn_allocator_get(int32_t device) {
    if (!valid_device(device)) return NULL;
    return __atomic_load_n(&allocators[device], __ATOMIC_ACQUIRE);
}

/* a == NULL restores the default (the CPU allocator; none for CUDA). */
void tn_allocator_set(int32_t device, const tn_allocator *a) {
    if (!valid_device(device)) return;
    if (!a && device == TN_CPU) a = &cpu_allocator;
    __atomic_store_n(&allocators[device], a, __ATOMIC_RELEASE);
}

/* ---- storage ------------------------------------------------------------------------------- */

static void storage_release(tn_storage *s) {
    if (!s) return;
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    if (s->allocator) s->allocator->free(s->allocator->ctx, s->data, s->nbytes);
    free(s);
}

/* ---- shape strings ------------------------------------------------------------------------- */

const char *tn_dims_str(int32_t ndim, const int64_t *shape, char *buf, size_t buflen) {
    if (!buf || buflen == 0) return buf;
    size_t pos = 0;
    buf[0] = '\0';
    int n = snprintf(buf, buflen, "[");
    pos = (size_t)n;
    for (int32_t i = 0; i < ndim && shape && pos < buflen; i++) {
        n = snprintf(buf + pos, buflen - pos, i ? ", %lld" : "%lld", (long long)shape[i]);
        if (n < 0) break;
        pos += (size_t)n;
    }
    if (pos < buflen) snprintf(buf + pos, buflen - pos, "]");
    return buf;
}

const char *tn_shape_str(const tn_tensor *t, char *buf, size_t buflen) {
    if (!t) {
        if (buf && buflen) snprintf(buf, buflen, "(null)");
        return buf;
    }
    return tn_dims_str(t->ndim, t->shape, buf, buflen);
}

/* ---- tensor lifecycle ---------------------------------------------------------------------- */

static int valid_dtype(int32_t dtype) { return dtype >= 0 && dtype < TN_NUM_DTYPES; }

/* a * b, saturating at INT64_MAX (strides of empty tensors with huge sizes); a, b >= 0. */
static int64_t sat_mul(int64_t a, int64_t b) {
    int64_t r;
    return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

/* Row-major contiguous strides of shape (ndim) into strides (ndim). */
static void contiguous_strides(int32_t ndim, const int64_t *shape, int64_t *strides) {
    int64_t s = 1;
    for (int32_t i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s = sat_mul(s, shape[i] > 1 ? shape[i] : 1);
    }
}

static tn_status empty_impl(const char *opname, tn_tensor **out, int32_t ndim, const int64_t *shape,
                            int32_t dtype, int32_t device) {
    if (!out) return tn_error(TN_ERR_ARG, "%s: argument 'out' is NULL", opname);
    if (ndim < 0 || ndim > TN_MAX_DIMS)
        return tn_error(TN_ERR_ARG, "%s: ndim %d out of range 0..%d", opname, ndim, TN_MAX_DIMS);
    if (ndim > 0 && !shape) return tn_error(TN_ERR_ARG, "%s: argument 'shape' is NULL", opname);
    if (!valid_dtype(dtype)) return tn_error(TN_ERR_ARG, "%s: invalid dtype %d", opname, dtype);
    if (!valid_device(device)) return tn_error(TN_ERR_ARG, "%s: invalid device %d", opname, device);
    int64_t numel = 1;
    int overflow = 0;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return tn_error(TN_ERR_ARG, "%s: negative size %lld in dim %lld of shape %s", opname,
                            (long long)shape[i], TN_D(i), TN_DIMS(ndim, shape));
        if (__builtin_mul_overflow(numel, shape[i], &numel)) overflow = 1;
    }
    int64_t nbytes = 0;
    if (!overflow && numel != 0 &&
        __builtin_mul_overflow(numel, (int64_t)tn_dtype_size(dtype), &nbytes))
        overflow = 1;
    /* a zero size in a later dim makes the tensor empty whatever the product before it did */
    for (int32_t i = 0; i < ndim; i++)
        if (shape[i] == 0) overflow = 0, nbytes = 0;
    if (overflow || (uint64_t)nbytes > (uint64_t)SIZE_MAX)
        return tn_error(TN_ERR_ARG, "%s: shape %s (%s) is too large: its byte size overflows",
                        opname, TN_DIMS(ndim, shape), tn_dtype_name(dtype));
    const tn_allocator *a = tn_allocator_get(device);
    if (!a)
        return tn_error(TN_ERR_DEVICE, "%s: tern was built without %s (device %s requested)", opname,
                        device == TN_CUDA ? "CUDA" : tn_device_name(device), tn_device_name(device));

    tn_storage *s = malloc(sizeof *s);
    tn_tensor *t = calloc(1, sizeof *t);
    tn_clear_error();
    void *data = (s && t) ? a->alloc(a->ctx, (size_t)nbytes) : NULL;
    if (!data) {
        free(s);
        free(t);
        if (tn_last_status() != TN_OK) /* the allocator said why (no device, a CUDA error) */
            return tn_error(tn_last_status(), "%s: %s (shape %s, %s)", opname, tn_last_error(),
                            TN_DIMS(ndim, shape), tn_dtype_name(dtype));
        return tn_error(TN_ERR_OOM, "%s: out of %s memory allocating %lld bytes for shape %s (%s)",
                        opname, tn_device_name(device), (long long)nbytes, TN_DIMS(ndim, shape),
                        tn_dtype_name(dtype));
    }
    int32_t index = 0;
#ifdef TERN_HAVE_CUDA
    if (device == TN_CUDA) index = tn_cuda_current_index(); /* the allocator's device */
#endif
    s->data = data;
    s->nbytes = (size_t)nbytes;
    s->refcount = 1;
    s->device = device;
    s->device_index = index;
    s->allocator = a;

    t->data = data;
    t->storage = s; /* owns the storage's only reference */
    t->offset = 0;
    for (int32_t i = 0; i < ndim; i++) t->shape[i] = shape[i];
    contiguous_strides(ndim, shape, t->strides);
    t->ndim = ndim;
    t->dtype = dtype;
    t->device = device;
    t->device_index = index;
    t->refcount = 1;
    *out = t;
    return TN_OK;
}

tn_status tn_tensor_empty(tn_tensor **out, int32_t ndim, const int64_t *shape, int32_t dtype,
                          int32_t device) {
    return empty_impl("empty", out, ndim, shape, dtype, device);
}

tn_tensor *tn_tensor_retain(tn_tensor *t) {
    if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
    return t;
}

void tn_tensor_free(tn_tensor *t) {
    if (!t) return;
    if (__atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    storage_release(t->storage);
    free(t);
}

int64_t tn_tensor_numel(const tn_tensor *t) {
    if (!t) return 0;
    return tn_dims_numel(t->ndim, t->shape);
}

int tn_tensor_is_contiguous(const tn_tensor *t) {
    if (!t) return 0;
    int64_t expected = 1;
    for (int32_t i = t->ndim - 1; i >= 0; i--) {
        if (t->shape[i] == 0) return 1;
        if (t->shape[i] == 1) continue;
        if (t->strides[i] != expected) return 0;
        expected *= t->shape[i];
    }
    return 1;
}

tn_status tn_prepare_out(const char *opname, tn_tensor **out, int32_t ndim, const int64_t *shape,
                         int32_t dtype, int32_t device) {
    if (!out) return tn_error(TN_ERR_ARG, "%s: argument 'out' is NULL", opname);
    if (!*out) return empty_impl(opname, out, ndim, shape, dtype, device);
    const tn_tensor *o = *out;
    if (o->device != device)
        return tn_error(TN_ERR_DEVICE, "%s: out is on %s, expected %s", opname,
                        tn_device_name(o->device), tn_device_name(device));
    int same = o->ndim == ndim;
    for (int32_t i = 0; same && i < ndim; i++) same = o->shape[i] == shape[i];
    if (!same)
        return tn_error(TN_ERR_SHAPE, "%s: out has shape %s (%s), expected %s (%s)", opname,
                        TN_SHAPE(o), tn_dtype_name(o->dtype), TN_DIMS(ndim, shape),
                        tn_dtype_name(dtype));
    if (o->dtype != dtype)
        return tn_error(TN_ERR_DTYPE, "%s: out has dtype %s, expected %s (shape %s)", opname,
                        tn_dtype_name(o->dtype), tn_dtype_name(dtype), TN_SHAPE(o));
    return TN_OK;
}

/* ---- views --------------------------------------------------------------------------------- */

/* *out = a new tensor over t's storage with (ndim, shape, strides, offset); no checks. */
static tn_status make_view(const char *opname, tn_tensor **out, const tn_tensor *t, int32_t ndim,
                           const int64_t *shape, const int64_t *strides, int64_t offset) {
    tn_tensor *v = calloc(1, sizeof *v);
    if (!v) return tn_error(TN_ERR_OOM, "%s: out of memory allocating a tensor header", opname);
    __atomic_add_fetch(&t->storage->refcount, 1, __ATOMIC_RELAXED);
    v->storage = t->storage;
    v->offset = offset;
    v->data = (char *)t->storage->data + offset * (int64_t)tn_dtype_size(t->dtype);
    for (int32_t i = 0; i < ndim; i++) {
        v->shape[i] = shape[i];
        v->strides[i] = strides[i];
    }
    v->ndim = ndim;
    v->dtype = t->dtype;
    v->device = t->device;
    v->device_index = t->device_index;
    v->refcount = 1;
    *out = v;
    return TN_OK;
}

static tn_status check_view_args(const char *opname, tn_tensor **out, const tn_tensor *t) {
    if (!out) return tn_error(TN_ERR_ARG, "%s: argument 'out' is NULL", opname);
    return tn_check_tensor(opname, "t", t);
}

tn_status tn_as_strided(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape,
                        const int64_t *strides, int64_t offset) {
    TN_TRY(check_view_args("as_strided", out, t));
    if (ndim < 0 || ndim > TN_MAX_DIMS)
        return tn_error(TN_ERR_ARG, "as_strided: ndim %d out of range 0..%d", ndim, TN_MAX_DIMS);
    if (ndim > 0 && (!shape || !strides))
        return tn_error(TN_ERR_ARG, "as_strided: argument '%s' is NULL", !shape ? "shape" : "strides");
    if (offset < 0)
        return tn_error(TN_ERR_ARG, "as_strided: negative storage offset %lld (input shape %s)",
                        (long long)offset, TN_SHAPE(t));
    int64_t last = offset; /* element index of the furthest element */
    int nonempty = 1, overflow = 0;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0 || strides[i] < 0)
            return tn_error(TN_ERR_ARG,
                            "as_strided: negative size or stride: shape %s, strides %s (input %s)",
                            TN_DIMS(ndim, shape), TN_DIMS(ndim, strides), TN_SHAPE(t));
        if (shape[i] == 0) nonempty = 0;
    }
    int64_t elsize = (int64_t)tn_dtype_size(t->dtype);
    int64_t capacity = (int64_t)(t->storage->nbytes / (size_t)elsize); /* elements */
    if (nonempty) {
        for (int32_t i = 0; i < ndim; i++) {
            int64_t span;
            if (__builtin_mul_overflow(shape[i] - 1, strides[i], &span) ||
                __builtin_add_overflow(last, span, &last))
                overflow = 1;
        }
    }
    int64_t need = offset; /* elements the view needs in the storage */
    if (nonempty && __builtin_add_overflow(last, 1, &need)) overflow = 1;
    if (overflow || need > capacity)
        return tn_error(TN_ERR_INDEX,
                        "as_strided: shape %s, strides %s, offset %lld needs %s%lld elements but the "
                        "storage of input %s (%s) has %lld",
                        TN_DIMS(ndim, shape), TN_DIMS(ndim, strides), (long long)offset,
                        overflow ? "more than " : "", overflow ? (long long)INT64_MAX : (long long)need,
                        TN_SHAPE(t), tn_dtype_name(t->dtype), (long long)capacity);
    return make_view("as_strided", out, t, ndim, shape, strides, offset);
}

/* Resolves one -1 in shape (ndim) for numel elements into res; error names opname. */
static tn_status infer_shape(const char *opname, const tn_tensor *t, int32_t ndim,
                             const int64_t *shape, int64_t *res) {
    if (ndim < 0 || ndim > TN_MAX_DIMS)
        return tn_error(TN_ERR_ARG, "%s: ndim %d out of range 0..%d", opname, ndim, TN_MAX_DIMS);
    if (ndim > 0 && !shape) return tn_error(TN_ERR_ARG, "%s: argument 'shape' is NULL", opname);
    int64_t numel = tn_tensor_numel(t), prod = 1;
    int32_t infer = -1;
    for (int32_t i = 0; i < ndim; i++) {
        res[i] = shape[i];
        if (shape[i] == -1) {
            if (infer >= 0)
                return tn_error(TN_ERR_ARG, "%s: shape %s has more than one -1", opname,
                                TN_DIMS(ndim, shape));
            infer = i;
        } else if (shape[i] < 0) {
            return tn_error(TN_ERR_ARG, "%s: invalid size %lld in shape %s", opname,
                            (long long)shape[i], TN_DIMS(ndim, shape));
        } else if (__builtin_mul_overflow(prod, shape[i], &prod)) {
            return tn_error(TN_ERR_SHAPE, "%s: shape %s is invalid for input of size %lld (shape %s)",
                            opname, TN_DIMS(ndim, shape), (long long)numel, TN_SHAPE(t));
        }
    }
    if (infer >= 0) {
        if (prod == 0) {
            return tn_error(TN_ERR_SHAPE,
                            "%s: cannot infer the -1 of shape %s for input of size %lld (shape %s): "
                            "the other sizes multiply to 0",
                            opname, TN_DIMS(ndim, shape), (long long)numel, TN_SHAPE(t));
        }
        if (numel % prod != 0)
            return tn_error(TN_ERR_SHAPE, "%s: shape %s is invalid for input of size %lld (shape %s)",
                            opname, TN_DIMS(ndim, shape), (long long)numel, TN_SHAPE(t));
        res[infer] = numel / prod;
    } else if (prod != numel) {
        return tn_error(TN_ERR_SHAPE, "%s: shape %s is invalid for input of size %lld (shape %s)",
                        opname, TN_DIMS(ndim, shape), (long long)numel, TN_SHAPE(t));
    }
    return TN_OK;
}

/* Strides for viewing t as shape (ndim, numel equal to t's) without a copy, following
 * PyTorch's computeStride (aten/src/ATen/TensorUtils.cpp). Returns 0 when impossible. */
static int view_strides(const tn_tensor *t, int32_t ndim, const int64_t *shape, int64_t *strides) {
    int32_t ond = t->ndim;
    const int64_t *osh = t->shape, *ost = t->strides;
    if (ond == 0) {
        for (int32_t i = 0; i < ndim; i++) strides[i] = 1;
        return 1;
    }
    int64_t numel = tn_tensor_numel(t);
    if (numel == 0) {
        int same = ond == ndim;
        for (int32_t i = 0; same && i < ndim; i++) same = osh[i] == shape[i];
        if (same) {
            for (int32_t i = 0; i < ndim; i++) strides[i] = ost[i];
            return 1;
        }
        for (int32_t d = ndim - 1; d >= 0; d--)
            strides[d] = d == ndim - 1 ? 1 : sat_mul(shape[d + 1] > 1 ? shape[d + 1] : 1, strides[d + 1]);
        return 1;
    }
    int32_t view_d = ndim - 1;
    int64_t chunk_base_stride = ost[ond - 1], tensor_numel = 1, view_numel = 1;
    for (int32_t tensor_d = ond - 1; tensor_d >= 0; tensor_d--) {
        tensor_numel *= osh[tensor_d];
        if (tensor_d == 0 ||
            (osh[tensor_d - 1] != 1 && ost[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
            while (view_d >= 0 && (view_numel < tensor_numel || shape[view_d] == 1)) {
                strides[view_d] = view_numel * chunk_base_stride;
                view_numel *= shape[view_d];
                view_d--;
            }
            if (view_numel != tensor_numel) return 0;
            if (tensor_d > 0) {
                chunk_base_stride = ost[tensor_d - 1];
                tensor_numel = 1;
                view_numel = 1;
            }
        }
    }
    return view_d == -1;
}

tn_status tn_view(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape) {
    TN_TRY(check_view_args("view", out, t));
    int64_t res[TN_MAX_DIMS], strides[TN_MAX_DIMS];
    TN_TRY(infer_shape("view", t, ndim, shape, res));
    if (!view_strides(t, ndim, res, strides))
        return tn_error(TN_ERR_SHAPE,
                        "view: shape %s is not compatible with input size %s and strides %s; use reshape",
                        TN_DIMS(ndim, res), TN_SHAPE(t), TN_DIMS(t->ndim, t->strides));
    return make_view("view", out, t, ndim, res, strides, t->offset);
}

tn_status tn_reshape(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape) {
    TN_TRY(check_view_args("reshape", out, t));
    int64_t res[TN_MAX_DIMS], strides[TN_MAX_DIMS];
    TN_TRY(infer_shape("reshape", t, ndim, shape, res));
    if (view_strides(t, ndim, res, strides))
        return make_view("reshape", out, t, ndim, res, strides, t->offset);
    tn_tensor *c = NULL;
    TN_TRY(tn_contiguous(&c, t)); /* c: new contiguous tensor of t's shape */
    contiguous_strides(ndim, res, strides);
    tn_status s = make_view("reshape", out, c, ndim, res, strides, c->offset);
    tn_tensor_free(c);
    return s;
}

static tn_status check_dim(const char *opname, const tn_tensor *t, int32_t dim) {
    if (dim < 0 || dim >= t->ndim)
        return tn_error(TN_ERR_INDEX, "%s: dim %lld out of range for a %d-d tensor of shape %s", opname,
                        TN_D(dim), t->ndim, TN_SHAPE(t));
    return TN_OK;
}

tn_status tn_transpose(tn_tensor **out, const tn_tensor *t, int32_t dim0, int32_t dim1) {
    TN_TRY(check_view_args("transpose", out, t));
    TN_TRY(check_dim("transpose", t, dim0));
    TN_TRY(check_dim("transpose", t, dim1));
    int64_t shape[TN_MAX_DIMS], strides[TN_MAX_DIMS];
    for (int32_t i = 0; i < t->ndim; i++) shape[i] = t->shape[i], strides[i] = t->strides[i];
    shape[dim0] = t->shape[dim1], strides[dim0] = t->strides[dim1];
    shape[dim1] = t->shape[dim0], strides[dim1] = t->strides[dim0];
    return make_view("transpose", out, t, t->ndim, shape, strides, t->offset);
}

tn_status tn_permute(tn_tensor **out, const tn_tensor *t, const int32_t *dims) {
    TN_TRY(check_view_args("permute", out, t));
    if (t->ndim > 0 && !dims) return tn_error(TN_ERR_ARG, "permute: argument 'dims' is NULL");
    int64_t shape[TN_MAX_DIMS], strides[TN_MAX_DIMS], dd[TN_MAX_DIMS]; /* dd: dims as printed */
    int seen[TN_MAX_DIMS] = {0};
    int ok = 1;
    for (int32_t i = 0; i < t->ndim; i++) {
        dd[i] = TN_D(dims[i]);
        if (dims[i] < 0 || dims[i] >= t->ndim || seen[dims[i]]) ok = 0;
        else seen[dims[i]] = 1;
    }
    if (!ok)
        return tn_error(TN_ERR_ARG, "permute: dims %s are not a permutation of %lld..%lld (input shape %s)",
                        TN_DIMS(t->ndim, dd), TN_D(0), TN_D(t->ndim - 1), TN_SHAPE(t));
    for (int32_t i = 0; i < t->ndim; i++) shape[i] = t->shape[dims[i]], strides[i] = t->strides[dims[i]];
    return make_view("permute", out, t, t->ndim, shape, strides, t->offset);
}

tn_status tn_narrow(tn_tensor **out, const tn_tensor *t, int32_t dim, int64_t start, int64_t length) {
    TN_TRY(check_view_args("narrow", out, t));
    TN_TRY(check_dim("narrow", t, dim));
    int64_t size = t->shape[dim];
    if (start < 0 || length < 0 || start > size || length > size - start)
        return tn_error(TN_ERR_INDEX,
                        "narrow: start %lld, length %lld out of range for dim %lld of size %lld (shape %s)",
                        TN_D(start), (long long)length, TN_D(dim), (long long)size, TN_SHAPE(t));
    int64_t shape[TN_MAX_DIMS];
    for (int32_t i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
    shape[dim] = length;
    /* an empty result keeps t's offset so data stays inside the storage */
    int64_t offset = length > 0 ? t->offset + start * t->strides[dim] : t->offset;
    return make_view("narrow", out, t, t->ndim, shape, t->strides, offset);
}

tn_status tn_select(tn_tensor **out, const tn_tensor *t, int32_t dim, int64_t index) {
    TN_TRY(check_view_args("select", out, t));
    TN_TRY(check_dim("select", t, dim));
    int64_t size = t->shape[dim];
    if (index < 0 || index >= size)
        return tn_error(TN_ERR_INDEX, "select: index %lld out of range for dim %lld of size %lld (shape %s)",
                        TN_D(index), TN_D(dim), (long long)size, TN_SHAPE(t));
    int64_t shape[TN_MAX_DIMS], strides[TN_MAX_DIMS];
    int32_t nd = 0;
    for (int32_t i = 0; i < t->ndim; i++)
        if (i != dim) shape[nd] = t->shape[i], strides[nd] = t->strides[i], nd++;
    return make_view("select", out, t, nd, shape, strides, t->offset + index * t->strides[dim]);
}

tn_status tn_unsqueeze(tn_tensor **out, const tn_tensor *t, int32_t dim) {
    TN_TRY(check_view_args("unsqueeze", out, t));
    if (t->ndim >= TN_MAX_DIMS)
        return tn_error(TN_ERR_SHAPE, "unsqueeze: shape %s already has the maximum of %d dims",
                        TN_SHAPE(t), TN_MAX_DIMS);
    if (dim < 0 || dim > t->ndim)
        return tn_error(TN_ERR_INDEX, "unsqueeze: dim %lld out of range %lld..%lld for shape %s", TN_D(dim),
                        TN_D(0), TN_D(t->ndim), TN_SHAPE(t));
    int64_t shape[TN_MAX_DIMS], strides[TN_MAX_DIMS];
    for (int32_t i = 0, j = 0; i <= t->ndim; i++) {
        if (i == dim) {
            shape[i] = 1;
            strides[i] = dim < t->ndim ? t->shape[dim] * t->strides[dim] : 1;
        } else {
            shape[i] = t->shape[j], strides[i] = t->strides[j], j++;
        }
    }
    return make_view("unsqueeze", out, t, t->ndim + 1, shape, strides, t->offset);
}

tn_status tn_squeeze(tn_tensor **out, const tn_tensor *t, int32_t dim) {
    TN_TRY(check_view_args("squeeze", out, t));
    if (dim >= 0) TN_TRY(check_dim("squeeze", t, dim));
    int64_t shape[TN_MAX_DIMS], strides[TN_MAX_DIMS];
    int32_t nd = 0;
    for (int32_t i = 0; i < t->ndim; i++) {
        int drop = t->shape[i] == 1 && (dim < 0 || dim == i);
        if (!drop) shape[nd] = t->shape[i], strides[nd] = t->strides[i], nd++;
    }
    return make_view("squeeze", out, t, nd, shape, strides, t->offset);
}

tn_status tn_expand(tn_tensor **out, const tn_tensor *t, int32_t ndim, const int64_t *shape) {
    TN_TRY(check_view_args("expand", out, t));
    if (ndim < t->ndim || ndim > TN_MAX_DIMS)
        return tn_error(TN_ERR_SHAPE, "expand: cannot expand shape %s to %d dims (need %d..%d)",
                        TN_SHAPE(t), ndim, t->ndim, TN_MAX_DIMS);
    if (ndim > 0 && !shape) return tn_error(TN_ERR_ARG, "expand: argument 'shape' is NULL");
    int64_t res[TN_MAX_DIMS], strides[TN_MAX_DIMS];
    int32_t lead = ndim - t->ndim;
    for (int32_t i = 0; i < ndim; i++) {
        int64_t want = shape[i];
        if (i < lead) {
            if (want < 0)
                return tn_error(TN_ERR_SHAPE,
                                "expand: size %lld not allowed in new leading dim %lld (expanding %s to %s)",
                                (long long)want, TN_D(i), TN_SHAPE(t), TN_DIMS(ndim, shape));
            res[i] = want, strides[i] = 0;
            continue;
        }
        int64_t have = t->shape[i - lead];
        if (want == -1 || want == have) {
            res[i] = have, strides[i] = t->strides[i - lead];
        } else if (have == 1 && want >= 0) {
            res[i] = want, strides[i] = 0;
        } else {
            return tn_error(TN_ERR_SHAPE,
                            "expand: cannot expand shape %s to %s (dim %lld: size %lld to %lld; only "
                            "size-1 dims can change)",
                            TN_SHAPE(t), TN_DIMS(ndim, shape), TN_D(i), (long long)have, (long long)want);
        }
    }
    return make_view("expand", out, t, ndim, res, strides, t->offset);
}

tn_status tn_contiguous(tn_tensor **out, const tn_tensor *t) {
    TN_TRY(check_view_args("contiguous", out, t));
    if (tn_tensor_is_contiguous(t)) {
        *out = tn_tensor_retain((tn_tensor *)t);
        return TN_OK;
    }
    tn_tensor *c = NULL;
    TN_TRY(empty_impl("contiguous", &c, t->ndim, t->shape, t->dtype, t->device)); /* c: t's shape */
    tn_status s = tn_copy(c, t);
    if (s != TN_OK) {
        tn_tensor_free(c);
        return s;
    }
    *out = c;
    return TN_OK;
}

tn_status tn_broadcast_shape(int32_t *out_ndim, int64_t *out_shape, const tn_tensor *a,
                             const tn_tensor *b, const char *opname) {
    if (!opname) opname = "broadcast";
    TN_TRY(tn_check_tensor(opname, "a", a));
    TN_TRY(tn_check_tensor(opname, "b", b));
    if (!out_ndim || !out_shape) return tn_error(TN_ERR_ARG, "%s: broadcast output is NULL", opname);
    int32_t nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t res[TN_MAX_DIMS];
    for (int32_t i = 0; i < nd; i++) {
        int32_t ia = a->ndim - nd + i, ib = b->ndim - nd + i;
        int64_t sa = ia >= 0 ? a->shape[ia] : 1, sb = ib >= 0 ? b->shape[ib] : 1;
        if (sa == sb || sb == 1) res[i] = sa;
        else if (sa == 1) res[i] = sb;
        else
            return tn_error(TN_ERR_SHAPE, "%s: shapes %s and %s are not broadcastable", opname,
                            TN_SHAPE(a), TN_SHAPE(b));
    }
    *out_ndim = nd;
    for (int32_t i = 0; i < nd; i++) out_shape[i] = res[i];
    return TN_OK;
}
