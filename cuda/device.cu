/*
 * cuda/device.cu — CUDA devices, streams and the caching allocator.
 *
 * Linked into libtern only in builds with TERN_HAVE_CUDA. At load time a constructor
 * registers the allocator for TN_CUDA storages (tn_allocator_set); it makes no CUDA call, so
 * loading the library on a machine without a GPU or driver costs nothing and fails nothing.
 *
 * Memory: one tn_pool (core/pool.c: size classes of 512 bytes and up, stream-aware reuse,
 * free-and-retry on out-of-memory) per device over cudaMalloc / cudaFree, created on first
 * use; a block belongs to the stream current when it was allocated (tn_cuda_set_stream), and
 * tn_cuda_record_stream marks a tensor used on another one. Pinned host buffers for copies come
 * from a second pool over cudaHostAlloc (tn_cuda_pinned_alloc / _release).
 *
 * Streams: tn_cuda_stream_t wraps a non-blocking cudaStream_t of one device; the current
 * stream is per host thread (NULL = the device's default stream).
 *
 * Gradient policy: none (no kernels here).
 */
#include "common.cuh"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

enum { TN_CUDA_MAX_DEVICES = 64 };

extern "C" void tn_cuda_blas_release(int all, cudaStream_t stream); /* cuda/linalg.cu */

struct tn_cuda_stream {
    cudaStream_t s;
    int device;
};

/* Number of visible CUDA devices; 0 when there is no driver, no device or any other error.
 * A missing GPU is an answer, not a failure, so this does not set the error message. */
extern "C" int tn_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* leave no sticky error for the next checked call */
        return 0;
    }
    return n;
}

/* op NULL: the message has no prefix (the allocator's caller, tensor.c, adds its own). */
static tn_status need_device(const char *op) {
    if (tn_cuda_device_count() == 0)
        return tn_error(TN_ERR_DEVICE, "%s%sno CUDA device is available (tern was built with CUDA, but the "
                                       "driver reports no GPU)", op ? op : "", op ? ": " : "");
    return TN_OK;
}

static tn_status current_device(const char *op, int *dev) {
    TN_TRY(need_device(op));
    TN_TRY(TN_CUDA_CHECK(cudaGetDevice(dev)));
    if (*dev < 0 || *dev >= TN_CUDA_MAX_DEVICES)
        return tn_error(TN_ERR_DEVICE, "%s: device %d is beyond the %d tern supports", op ? op : "cuda", *dev,
                        TN_CUDA_MAX_DEVICES);
    return TN_OK;
}

/* ---- streams --------------------------------------------------------------------------------- */

static __thread tn_cuda_stream_t *current_stream; /* NULL: the default stream */

/* The stream work on the current device goes to: the thread's current stream when it belongs
 * to that device, else the default stream. */
extern "C" cudaStream_t tn_cuda_stream_now(void) {
    tn_cuda_stream_t *s = current_stream;
    if (!s) return 0;
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return s->device == dev ? s->s : 0;
}

extern "C" tn_status tn_cuda_stream_new(tn_cuda_stream_t **out) {
    static const char *op = "cuda_stream_new";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", op);
    *out = NULL;
    int dev;
    TN_TRY(current_device(op, &dev));
    tn_cuda_stream_t *s = (tn_cuda_stream_t *)calloc(1, sizeof *s);
    if (!s) return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    tn_status rc = TN_CUDA_CHECK(cudaStreamCreateWithFlags(&s->s, cudaStreamNonBlocking));
    if (rc != TN_OK) {
        free(s);
        return rc;
    }
    s->device = dev;
    *out = s;
    return TN_OK;
}

/* Waits for the stream's work, then destroys it; the current stream falls back to the default
 * stream if it was this one. NULL-safe. */
extern "C" void tn_cuda_stream_free(tn_cuda_stream_t *s) {
    if (!s) return;
    if (current_stream == s) current_stream = NULL;
    (void)TN_CUDA_CHECK(cudaStreamSynchronize(s->s));
    tn_cuda_blas_release(0, s->s);
    (void)TN_CUDA_CHECK(cudaStreamDestroy(s->s));
    free(s);
}

/* Also raises the pending index error of s's device (tn_cuda_check_pending) when that device
 * is current; its read goes onto s before the wait. */
extern "C" tn_status tn_cuda_stream_synchronize(tn_cuda_stream_t *s) {
    if (!s) return tn_cuda_synchronize();
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) (void)cudaGetLastError();
    const int check = dev == s->device;
    if (check) { /* queue the read on s: tn_cuda_stream_now() follows the current stream */
        tn_cuda_stream_t *prev = current_stream;
        current_stream = s;
        const tn_status q = tn_cuda_check_pending(NULL);
        current_stream = prev;
        TN_TRY(q);
    }
    TN_TRY(TN_CUDA_CHECK(cudaStreamSynchronize(s->s)));
    return check ? tn_cuda_check_pending("cuda_stream_synchronize") : TN_OK;
}

extern "C" tn_status tn_cuda_set_stream(tn_cuda_stream_t *s) {
    if (s) TN_TRY(TN_CUDA_CHECK(cudaSetDevice(s->device)));
    current_stream = s;
    return TN_OK;
}

extern "C" tn_cuda_stream_t *tn_cuda_get_stream(void) { return current_stream; }

extern "C" tn_status tn_cuda_set_device(int32_t index) {
    static const char *op = "cuda_set_device";
    const int n = tn_cuda_device_count();
    if (index < 0 || index >= n)
        return tn_error(TN_ERR_DEVICE, "%s: device %d does not exist (%d CUDA device%s visible)", op, (int)index, n,
                        n == 1 ? "" : "s");
    return TN_CUDA_CHECK(cudaSetDevice(index));
}

extern "C" tn_status tn_cuda_get_device(int32_t *index) {
    int dev;
    TN_TRY(current_device("cuda_get_device", &dev));
    *index = dev;
    return TN_OK;
}

extern "C" int32_t tn_cuda_current_index(void) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        (void)cudaGetLastError();
        dev = 0;
    }
    return dev;
}

extern "C" tn_status tn_cuda_check_current(const char *op, const tn_tensor *t) {
    int dev = -1;
    TN_TRY(TN_CUDA_CHECK(cudaGetDevice(&dev)));
    if (t->device_index != dev)
        return tn_error(TN_ERR_DEVICE,
                        "%s: a tensor on cuda:%d, but the current device is cuda:%d (kernels run on the "
                        "current device: tn.cuda.set_device(%d) first, or move the tensor with t:to(\"cuda\"))",
                        op, (int)t->device_index, dev, (int)t->device_index);
    return TN_OK;
}

/* Ordered on both sides with events: the copy, on ddev's current stream, waits for what sdev's
 * current stream had queued (the writes of src), and sdev's stream waits for the copy before
 * anything queued on it later (a reuse of src's memory). The current device is restored. */
extern "C" tn_status tn_cuda_copy_peer(void *dst, int32_t ddev, const void *src, int32_t sdev, size_t nbytes) {
    int cur = -1;
    TN_TRY(TN_CUDA_CHECK(cudaGetDevice(&cur)));
    cudaEvent_t ready = NULL, done = NULL;
    cudaStream_t ss = 0, ds = 0;
    tn_status rc = TN_CUDA_CHECK(cudaSetDevice(sdev));
    if (rc == TN_OK) {
        ss = tn_cuda_stream_now();
        rc = TN_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    }
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaEventRecord(ready, ss));
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaSetDevice(ddev));
    if (rc == TN_OK) {
        ds = tn_cuda_stream_now();
        rc = TN_CUDA_CHECK(cudaStreamWaitEvent(ds, ready, 0));
    }
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaMemcpyPeerAsync(dst, ddev, src, sdev, nbytes, ds));
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaEventRecord(done, ds));
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaSetDevice(sdev));
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaStreamWaitEvent(ss, done, 0));
    /* events are released once their work completes; a failure above leaves the stream
     * waits as they were queued, and the error names the call */
    if (ready && cudaEventDestroy(ready) != cudaSuccess) (void)cudaGetLastError();
    if (done && cudaEventDestroy(done) != cudaSuccess) (void)cudaGetLastError();
    if (cudaSetDevice(cur) != cudaSuccess) (void)cudaGetLastError();
    if (rc != TN_OK)
        return tn_error(rc, "copy from cuda:%d to cuda:%d (%zu bytes): %s", (int)sdev, (int)ddev, nbytes,
                        tn_last_error());
    return TN_OK;
}

/* Also raises the device's pending index error (tn_cuda_check_pending), read once every stream
 * is done, since a check on any stream may have written it: a copy of ~100 bytes and a wait
 * on an idle device (nothing when the device never ran an asynchronous check). */
extern "C" tn_status tn_cuda_synchronize(void) {
    TN_TRY(need_device("cuda_synchronize"));
    TN_TRY(TN_CUDA_CHECK(cudaDeviceSynchronize()));
    TN_TRY(tn_cuda_check_pending(NULL));
    TN_TRY(TN_CUDA_CHECK(cudaStreamSynchronize(tn_cuda_stream_now())));
    return tn_cuda_check_pending("cuda_synchronize");
}

/* ---- pools ------------------------------------------------------------------------------------ */

typedef struct pool_dev {
    int device; /* -1: pinned host memory */
} pool_dev;

static pool_dev pool_devs[TN_CUDA_MAX_DEVICES];
static pool_dev pinned_dev = {-1};
static tn_pool *pools[TN_CUDA_MAX_DEVICES];
static tn_pool *pinned_pool;
static pthread_mutex_t pools_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t pool_limit = -1; /* cached bytes per pool; -1: no bound */

static void *dev_raw_alloc(void *ctx, size_t n) {
    (void)ctx; /* the pool of the current device */
    void *p = NULL;
    return TN_CUDA_CHECK(cudaMalloc(&p, n)) == TN_OK ? p : NULL;
}
static void dev_raw_free(void *ctx, void *p, size_t n) {
    (void)n;
    int prev = -1;
    (void)cudaGetDevice(&prev);
    (void)cudaSetDevice(((pool_dev *)ctx)->device);
    (void)TN_CUDA_CHECK(cudaFree(p));
    if (prev >= 0) (void)cudaSetDevice(prev);
}
static void *host_raw_alloc(void *ctx, size_t n) {
    (void)ctx;
    void *p = NULL;
    return TN_CUDA_CHECK(cudaHostAlloc(&p, n, cudaHostAllocPortable)) == TN_OK ? p : NULL;
}
static void host_raw_free(void *ctx, void *p, size_t n) {
    (void)ctx, (void)n;
    (void)TN_CUDA_CHECK(cudaFreeHost(p));
}
/* Makes ctx's device current (pinned host memory, device -1: leaves the current one); *prev
 * receives the device to restore (-1: nothing to restore). A free can run with any device
 * current, and an event must be created on the device of the stream it is recorded on. */
static void enter_device(void *ctx, int *prev) {
    *prev = -1;
    const int dev = ((pool_dev *)ctx)->device;
    if (dev < 0) return;
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    if (cur == dev) return;
    if (cudaSetDevice(dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return;
    }
    *prev = cur;
}
static void leave_device(int prev) {
    if (prev >= 0 && cudaSetDevice(prev) != cudaSuccess) (void)cudaGetLastError();
}
static void *ev_record(void *ctx, void *stream) {
    int prev;
    enter_device(ctx, &prev);
    cudaEvent_t e = NULL;
    if (TN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming)) != TN_OK) {
        e = NULL;
    } else if (TN_CUDA_CHECK(cudaEventRecord(e, (cudaStream_t)stream)) != TN_OK) {
        (void)cudaEventDestroy(e);
        e = NULL;
    }
    leave_device(prev);
    return (void *)e;
}
static int ev_query(void *ctx, void *ev) {
    (void)ctx;
    const cudaError_t e = cudaEventQuery((cudaEvent_t)ev);
    if (e == cudaSuccess) return 1;
    /* clear the runtime's last-error slot, cudaErrorNotReady included (as PyTorch does after a
     * query): else the next launch check (cudaGetLastError) would report it */
    (void)cudaGetLastError();
    return e == cudaErrorNotReady ? 0 : 1; /* a failed event cannot be waited for: done */
}
static void ev_free(void *ctx, void *ev) {
    (void)ctx;
    (void)cudaEventDestroy((cudaEvent_t)ev);
}
static void dev_sync(void *ctx) {
    int prev;
    enter_device(ctx, &prev); /* the pool's device, not whichever is current */
    (void)TN_CUDA_CHECK(cudaDeviceSynchronize());
    leave_device(prev);
}
static void dev_describe(void *ctx, char *buf, size_t n) {
    const int dev = ((pool_dev *)ctx)->device;
    size_t fr = 0, tot = 0;
    cudaDeviceProp prop;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(buf, n, "device %d", dev);
        return;
    }
    snprintf(buf, n, "device %d (%s): %.2f GiB free of %.2f GiB", dev, prop.name, (double)fr / 1073741824.0,
             (double)tot / 1073741824.0);
}

/* The pool of device dev (-1: pinned host), created on first use. */
static tn_pool *pool_of(int dev) {
    tn_pool **slot = dev < 0 ? &pinned_pool : &pools[dev];
    tn_pool *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (p) return p;
    pthread_mutex_lock(&pools_lock);
    p = *slot;
    if (!p) {
        char name[32];
        tn_pool_ops ops;
        memset(&ops, 0, sizeof ops);
        if (dev < 0) {
            snprintf(name, sizeof name, "cuda pinned host pool");
            ops.raw_alloc = host_raw_alloc, ops.raw_free = host_raw_free, ops.ctx = &pinned_dev;
        } else {
            snprintf(name, sizeof name, "cuda:%d", dev);
            pool_devs[dev].device = dev;
            ops.raw_alloc = dev_raw_alloc, ops.raw_free = dev_raw_free, ops.ctx = &pool_devs[dev];
            ops.describe = dev_describe;
        }
        ops.event_record = ev_record, ops.event_query = ev_query, ops.event_free = ev_free;
        ops.synchronize = dev_sync;
        if (tn_pool_new(&p, &ops, name, 512) == TN_OK) {
            /* the limit bounds device memory (tn_cuda_pool_set_limit); the pinned staging pool
             * keeps its buffers, or every copy would pay cudaHostAlloc and cudaFreeHost */
            if (dev >= 0 && pool_limit >= 0) tn_pool_set_limit(p, pool_limit);
            __atomic_store_n(slot, p, __ATOMIC_RELEASE);
        }
    }
    pthread_mutex_unlock(&pools_lock);
    return p;
}

/* nbytes 0 still returns a valid pointer (a 512-byte block), as the CPU allocator does; NULL
 * means failure and the error message says which call failed and why. Accounted per storage
 * buffer (tn_memory_note_alloc/free), as tensor.c requires of every allocator. */
static void *cuda_alloc(void *ctx, size_t nbytes) {
    (void)ctx;
    int dev;
    if (current_device(NULL, &dev) != TN_OK) return NULL;
    tn_pool *p = pool_of(dev);
    if (!p) return NULL;
    void *ptr = tn_pool_alloc(p, nbytes, (void *)tn_cuda_stream_now());
    if (ptr) tn_memory_note_alloc(TN_CUDA, nbytes);
    return ptr;
}

/* The pool that holds ptr: the current device's first, then the others. */
static tn_pool *pool_holding(const void *ptr) {
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) (void)cudaGetLastError();
    if (dev >= 0 && dev < TN_CUDA_MAX_DEVICES) {
        tn_pool *p = __atomic_load_n(&pools[dev], __ATOMIC_ACQUIRE);
        if (p && tn_pool_owns(p, ptr)) return p;
    }
    for (int d = 0; d < TN_CUDA_MAX_DEVICES; d++) {
        tn_pool *p = __atomic_load_n(&pools[d], __ATOMIC_ACQUIRE);
        if (p && tn_pool_owns(p, ptr)) return p;
    }
    return NULL;
}

/* A failure cannot be returned from here; it is recorded in the error message and the bytes
 * are still taken off the count. */
static void cuda_free(void *ctx, void *ptr, size_t nbytes) {
    (void)ctx;
    if (!ptr) return;
    tn_pool *p = pool_holding(ptr);
    if (p)
        (void)tn_pool_release(p, ptr);
    else
        tn_error(TN_ERR_ARG, "cuda free: %p is not a block of any tern CUDA pool", ptr);
    tn_memory_note_free(TN_CUDA, nbytes);
}

static const tn_allocator cuda_allocator = {cuda_alloc, cuda_free, NULL, TN_CUDA};

__attribute__((constructor)) static void tn_cuda_register(void) {
    tn_allocator_set(TN_CUDA, &cuda_allocator);
}

extern "C" tn_status tn_cuda_record_stream(const tn_tensor *t, tn_cuda_stream_t *s) {
    static const char *op = "cuda_record_stream";
    TN_TRY(tn_check_tensor(op, "t", t));
    if (t->device != TN_CUDA)
        return tn_error(TN_ERR_DEVICE, "%s: t is a %s tensor, not a CUDA one", op, tn_device_name(t->device));
    tn_pool *p = pool_holding(t->storage->data);
    if (!p) return tn_error(TN_ERR_ARG, "%s: t's storage is not a block of any tern CUDA pool", op);
    return tn_pool_record_use(p, t->storage->data, s ? (void *)s->s : NULL);
}

extern "C" tn_status tn_cuda_memory_stats(tn_pool_stats *out, int32_t device_index) {
    static const char *op = "cuda_memory_stats";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", op);
    memset(out, 0, sizeof *out);
    int dev = device_index;
    if (dev < 0) TN_TRY(current_device(op, &dev));
    if (dev >= TN_CUDA_MAX_DEVICES || dev >= tn_cuda_device_count())
        return tn_error(TN_ERR_DEVICE, "%s: device %d does not exist", op, (int)dev);
    tn_pool *p = __atomic_load_n(&pools[dev], __ATOMIC_ACQUIRE);
    if (p) *out = tn_pool_get_stats(p);
    return TN_OK;
}

extern "C" tn_status tn_cuda_memory_reset_peak(int32_t device_index) {
    int dev = device_index;
    if (dev < 0) TN_TRY(current_device("cuda_memory_reset_peak", &dev));
    if (dev < TN_CUDA_MAX_DEVICES) {
        tn_pool *p = __atomic_load_n(&pools[dev], __ATOMIC_ACQUIRE);
        if (p) tn_pool_reset_peak(p);
    }
    return TN_OK;
}

/* ---- the hooks of tn_memory_cached / _empty_cache / _set_cache_limit (tensor.c) ---------- */

extern "C" int64_t tn_cuda_pool_cached(void) {
    int64_t n = 0;
    for (int d = 0; d < TN_CUDA_MAX_DEVICES; d++) {
        tn_pool *p = __atomic_load_n(&pools[d], __ATOMIC_ACQUIRE);
        if (p) {
            const tn_pool_stats s = tn_pool_get_stats(p);
            n += s.cached + s.pending;
        }
    }
    return n;
}

extern "C" void tn_cuda_pool_empty(void) {
    tn_cuda_blas_release(1, 0); /* the cuBLAS workspaces go back to the pools first */
    for (int d = 0; d < TN_CUDA_MAX_DEVICES; d++) {
        tn_pool *p = __atomic_load_n(&pools[d], __ATOMIC_ACQUIRE);
        if (p) tn_pool_empty(p);
    }
    tn_pool *h = __atomic_load_n(&pinned_pool, __ATOMIC_ACQUIRE);
    if (h) tn_pool_empty(h);
}

extern "C" void tn_cuda_pool_set_limit(int64_t bytes) {
    pthread_mutex_lock(&pools_lock);
    pool_limit = bytes;
    pthread_mutex_unlock(&pools_lock);
    for (int d = 0; d < TN_CUDA_MAX_DEVICES; d++) {
        tn_pool *p = __atomic_load_n(&pools[d], __ATOMIC_ACQUIRE);
        if (p) tn_pool_set_limit(p, bytes);
    }
}

/* ---- pinned host buffers ---------------------------------------------------------------------- */

/* A page-locked host buffer of at least nbytes for copies on the current stream; NULL with the
 * error set on failure. */
extern "C" void *tn_cuda_pinned_alloc(size_t nbytes) {
    if (need_device("cuda_pinned_alloc") != TN_OK) return NULL;
    tn_pool *p = pool_of(-1);
    /* owned by the host (tag &pinned_dev), whose writes no stream orders: a buffer is reused
     * only after the stream that read or wrote it has passed the release */
    return p ? tn_pool_alloc(p, nbytes, &pinned_dev) : NULL;
}

/* Gives the buffer back; it is reused once the current stream has passed what was queued on it
 * (a copy from or into the buffer). */
extern "C" tn_status tn_cuda_pinned_release(void *ptr) {
    if (!ptr) return TN_OK;
    tn_pool *p = pool_of(-1);
    if (!p) return tn_error(TN_ERR_ARG, "cuda_pinned_release: no pinned pool");
    cudaStream_t stream = tn_cuda_stream_now();
    const tn_status rc = tn_pool_record_use(p, ptr, (void *)stream);
    if (rc != TN_OK) { /* no record: wait for the stream here rather than leak the buffer */
        if (cudaStreamSynchronize(stream) != cudaSuccess) (void)cudaGetLastError();
        (void)tn_pool_release(p, ptr);
        return rc;
    }
    return tn_pool_release(p, ptr);
}
