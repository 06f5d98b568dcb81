/*
 * pool.c — a caching pool for memory the host must not touch (CUDA device memory, pinned host
 * staging buffers): all bookkeeping lives in host-side block records, nothing is written into
 * the blocks themselves. cuda/ plugs the raw calls in (tn_pool_ops); the pool's logic has no
 * CUDA in it, so spec/c/test_pool.c checks it on the CPU with a mock device.
 *
 *  - Size classes: multiples of the granule up to 16 granules, then four classes per power of
 *    two (at most 25% slack), as the CPU cache (tn_size_class). A request is served from a
 *    cached block of its class freed on the same stream, else from a new raw block; blocks
 *    are never split, so a class's blocks are interchangeable.
 *  - Streams: a block belongs to the stream it was allocated on. Freed, it is reusable at once
 *    on that stream (the stream's own order makes that safe, as in PyTorch's caching
 *    allocator). A block also used on other streams (tn_pool_record_use) gets an event
 *    recorded on each of them when freed and waits in a pending list until every event has
 *    completed.
 *  - Out of memory: when a raw allocation fails, the pool synchronises the device, returns
 *    every cached block and retries once; a second failure is an error that names the pool,
 *    the request and the pool's bytes (and what ops->describe adds: free/total device memory).
 *  - Stats: bytes in use (by requests, as tn_memory_current counts them), the peak, bytes
 *    reserved from the raw allocator, cached, and counters of raw allocations, cache hits and
 *    frees; tn_pool_empty returns the cached blocks; a limit bounds the cached bytes.
 * Thread-safe (one mutex per pool).
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

enum { POOL_CLASSES = 16 + 4 * 48 };

typedef struct pool_block {
    void *ptr;
    size_t size;  /* the class size: what the raw allocator gave */
    size_t req;   /* bytes asked for (in use accounting) */
    void *stream; /* the stream it was allocated on */
    int cls;
    int in_use;
    int n_uses;   /* other streams it was used on (tn_pool_record_use) */
    void **uses;  /* those streams; on free, the events recorded on them */
    struct pool_block *hnext; /* hash chain (every block) */
    struct pool_block *fnext; /* free list of its class, or the pending list */
} pool_block;

struct tn_pool {
    tn_pool_ops ops;
    char name[48];
    size_t granule;
    pthread_mutex_t lock;
    pool_block **hash; /* by ptr */
    size_t nbuckets, nblocks;
    pool_block *free_lists[POOL_CLASSES];
    pool_block *pending;
    int64_t limit; /* cached bytes kept at most; -1 = no bound */
    tn_pool_stats st;
};

static size_t hash_ptr(const void *p, size_t n) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)(x & (n - 1));
}

static int hash_grow(tn_pool *p) {
    const size_t n = p->nbuckets ? 2 * p->nbuckets : 256;
    pool_block **h = (pool_block **)calloc(n, sizeof *h);
    if (!h) return 0;
    for (size_t i = 0; i < p->nbuckets; i++)
        for (pool_block *b = p->hash[i], *next; b; b = next) {
            next = b->hnext;
            const size_t k = hash_ptr(b->ptr, n);
            b->hnext = h[k];
            h[k] = b;
        }
    free(p->hash);
    p->hash = h;
    p->nbuckets = n;
    return 1;
}

static pool_block *hash_find(const tn_pool *p, const void *ptr) {
    if (!p->nbuckets) return NULL;
    for (pool_block *b = p->hash[hash_ptr(ptr, p->nbuckets)]; b; b = b->hnext)
        if (b->ptr == ptr) return b;
    return NULL;
}

static void hash_remove(tn_pool *p, pool_block *blk) {
    pool_block **pp = &p->hash[hash_ptr(blk->ptr, p->nbuckets)];
    while (*pp != blk) pp = &(*pp)->hnext;
    *pp = blk->hnext;
    p->nblocks--;
}

tn_status tn_pool_new(tn_pool **out, const tn_pool_ops *ops, const char *name, size_t granule) {
    *out = NULL;
    if (!ops || !ops->raw_alloc || !ops->raw_free)
        return tn_error(TN_ERR_ARG, "pool_new: ops must give raw_alloc and raw_free");
    if (granule == 0 || (granule & (granule - 1)))
        return tn_error(TN_ERR_ARG, "pool_new: granule %zu is not a power of two", granule);
    tn_pool *p = (tn_pool *)calloc(1, sizeof *p);
    if (!p) return tn_error(TN_ERR_OOM, "pool_new: out of memory");
    p->ops = *ops;
    snprintf(p->name, sizeof p->name, "%s", name ? name : "pool");
    p->granule = granule;
    p->limit = -1;
    pthread_mutex_init(&p->lock, NULL);
    if (!hash_grow(p)) {
        free(p);
        return tn_error(TN_ERR_OOM, "pool_new: out of memory");
    }
    *out = p;
    return TN_OK;
}

static void block_destroy(tn_pool *p, pool_block *b) {
    hash_remove(p, b);
    p->ops.raw_free(p->ops.ctx, b->ptr, b->size);
    p->st.reserved -= (int64_t)b->size;
    free(b->uses);
    free(b);
}

static void pool_trim(tn_pool *p, int64_t keep);

/* Moves pending blocks whose events have all completed to their free lists (then trims the
 * cache down to the limit, as a release does). Locked. */
static void pool_poll(tn_pool *p) {
    int moved = 0;
    for (pool_block **pp = &p->pending; *pp;) {
        pool_block *b = *pp;
        int done = 1;
        for (int i = 0; i < b->n_uses && done; i++)
            if (b->uses[i] && !p->ops.event_query(p->ops.ctx, b->uses[i])) done = 0;
        if (!done) {
            pp = &b->fnext;
            continue;
        }
        *pp = b->fnext;
        for (int i = 0; i < b->n_uses; i++)
            if (b->uses[i]) p->ops.event_free(p->ops.ctx, b->uses[i]);
        free(b->uses);
        b->uses = NULL, b->n_uses = 0;
        b->fnext = p->free_lists[b->cls];
        p->free_lists[b->cls] = b;
        p->st.pending -= (int64_t)b->size;
        p->st.cached += (int64_t)b->size;
        moved = 1;
    }
    if (moved && p->limit >= 0 && p->st.cached > p->limit) pool_trim(p, p->limit);
}

/* Returns the cached blocks (all, or down to `keep` bytes) to the raw allocator. Locked. */
static void pool_trim(tn_pool *p, int64_t keep) {
    for (int c = POOL_CLASSES - 1; c >= 0 && p->st.cached > keep; c--)
        while (p->free_lists[c] && p->st.cached > keep) {
            pool_block *b = p->free_lists[c];
            p->free_lists[c] = b->fnext;
            p->st.cached -= (int64_t)b->size;
            block_destroy(p, b);
        }
}

void tn_pool_free(tn_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    if (p->pending && p->ops.synchronize) p->ops.synchronize(p->ops.ctx);
    for (size_t i = 0; i < p->nbuckets; i++)
        for (pool_block *b = p->hash[i], *next; b; b = next) {
            next = b->hnext;
            for (int k = 0; k < b->n_uses; k++)
                if (b->uses[k] && !b->in_use) p->ops.event_free(p->ops.ctx, b->uses[k]);
            p->ops.raw_free(p->ops.ctx, b->ptr, b->size);
            free(b->uses);
            free(b);
        }
    free(p->hash);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static const char *fmt_bytes(double v, char *buf, size_t n) {
    static const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (v >= 1024.0 && u < 4) v /= 1024.0, u++;
    snprintf(buf, n, u ? "%.2f %s" : "%.0f %s", v, unit[u]);
    return buf;
}
#define POOL_BYTES(v) fmt_bytes((double)(v), (char[32]){0}, 32)

void *tn_pool_alloc(tn_pool *p, size_t nbytes, void *stream) {
    size_t size = 0;
    const size_t n = nbytes ? nbytes : 1;
    if (n > ((size_t)1 << 52)) {
        tn_error(TN_ERR_OOM, "%s: out of memory: %zu bytes is beyond any device", p->name, nbytes);
        return NULL;
    }
    const int cls = tn_size_class(n, p->granule, &size);
    pthread_mutex_lock(&p->lock);
    if (p->pending) pool_poll(p);
    pool_block *b = NULL;
    for (pool_block **pp = &p->free_lists[cls]; *pp; pp = &(*pp)->fnext)
        if ((*pp)->stream == stream) {
            b = *pp;
            *pp = b->fnext;
            p->st.cached -= (int64_t)b->size;
            p->st.hits++;
            break;
        }
    if (!b) {
        void *ptr = p->ops.raw_alloc(p->ops.ctx, size);
        if (!ptr) { /* give back what the pool holds, then try once more */
            char first[256];
            snprintf(first, sizeof first, "%s", tn_last_error());
            if (p->ops.synchronize) p->ops.synchronize(p->ops.ctx);
            if (p->pending) pool_poll(p);
            const int64_t freed = p->st.cached;
            pool_trim(p, 0);
            ptr = p->ops.raw_alloc(p->ops.ctx, size);
            if (!ptr) {
                char dev[160] = "";
                if (p->ops.describe) p->ops.describe(p->ops.ctx, dev, sizeof dev);
                const tn_pool_stats s = p->st;
                pthread_mutex_unlock(&p->lock);
                tn_error(TN_ERR_OOM,
                         "%s: out of memory allocating %s (block %s): the pool holds %s in use by tensors "
                         "(%s reserved, %s waiting for other streams); %s cached freed and retried%s%s "
                         "(first failure: %s)",
                         p->name, POOL_BYTES(nbytes), POOL_BYTES(size), POOL_BYTES(s.in_use), POOL_BYTES(s.reserved),
                         POOL_BYTES(s.pending), POOL_BYTES(freed), *dev ? "; " : "", dev, first);
                return NULL;
            }
        }
        b = (pool_block *)calloc(1, sizeof *b);
        if (!b || (p->nblocks + 1 > p->nbuckets && !hash_grow(p))) {
            p->ops.raw_free(p->ops.ctx, ptr, size);
            free(b);
            pthread_mutex_unlock(&p->lock);
            tn_error(TN_ERR_OOM, "%s: out of host memory for the block records", p->name);
            return NULL;
        }
        b->ptr = ptr, b->size = size, b->cls = cls, b->stream = stream;
        const size_t k = hash_ptr(ptr, p->nbuckets);
        b->hnext = p->hash[k];
        p->hash[k] = b;
        p->nblocks++;
        p->st.reserved += (int64_t)size;
        p->st.raw_allocs++;
    }
    b->in_use = 1;
    b->req = nbytes;
    b->fnext = NULL;
    p->st.in_use += (int64_t)nbytes;
    if (p->st.in_use > p->st.peak) p->st.peak = p->st.in_use;
    p->st.allocs++;
    void *ptr = b->ptr;
    pthread_mutex_unlock(&p->lock);
    return ptr;
}

/* 1 when ptr is a block of this pool in use. */
int tn_pool_owns(tn_pool *p, const void *ptr) {
    pthread_mutex_lock(&p->lock);
    const pool_block *b = hash_find(p, ptr);
    const int r = b && b->in_use;
    pthread_mutex_unlock(&p->lock);
    return r;
}

tn_status tn_pool_record_use(tn_pool *p, const void *ptr, void *stream) {
    pthread_mutex_lock(&p->lock);
    pool_block *b = hash_find(p, ptr);
    tn_status rc = TN_OK;
    if (!b || !b->in_use) {
        rc = tn_error(TN_ERR_ARG, "%s: record_stream: %p is not a block in use of this pool", p->name, ptr);
    } else if (stream != b->stream) {
        int seen = 0;
        for (int i = 0; i < b->n_uses; i++) seen |= b->uses[i] == stream;
        if (!seen) {
            void **u = (void **)realloc(b->uses, sizeof(void *) * (size_t)(b->n_uses + 1));
            if (!u) {
                rc = tn_error(TN_ERR_OOM, "%s: record_stream: out of host memory", p->name);
            } else {
                u[b->n_uses++] = stream;
                b->uses = u;
            }
        }
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

tn_status tn_pool_release(tn_pool *p, void *ptr) {
    if (!ptr) return TN_OK;
    pthread_mutex_lock(&p->lock);
    pool_block *b = hash_find(p, ptr);
    if (!b || !b->in_use) {
        pthread_mutex_unlock(&p->lock);
        return tn_error(TN_ERR_ARG, "%s: release of %p, which is not a block in use of this pool", p->name, ptr);
    }
    b->in_use = 0;
    p->st.in_use -= (int64_t)b->req;
    p->st.frees++;
    tn_status rc = TN_OK;
    int pending = 0;
    /* the streams it was used on get an event each; it waits until all have passed */
    for (int i = 0; i < b->n_uses; i++) {
        void *ev = p->ops.event_record ? p->ops.event_record(p->ops.ctx, b->uses[i]) : NULL;
        if (!ev) { /* no event: wait for the device instead (correct, slower) */
            if (rc == TN_OK && p->ops.event_record)
                rc = tn_error(TN_ERR_DEVICE, "%s: could not record an event for a cross-stream free: %s", p->name,
                              tn_last_error());
            if (p->ops.synchronize) p->ops.synchronize(p->ops.ctx);
        }
        b->uses[i] = ev;
        pending |= ev != NULL;
    }
    if (pending) {
        b->fnext = p->pending;
        p->pending = b;
        p->st.pending += (int64_t)b->size;
    } else {
        free(b->uses);
        b->uses = NULL, b->n_uses = 0;
        b->fnext = p->free_lists[b->cls];
        p->free_lists[b->cls] = b;
        p->st.cached += (int64_t)b->size;
        if (p->limit >= 0 && p->st.cached > p->limit) pool_trim(p, p->limit);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void tn_pool_empty(tn_pool *p) {
    pthread_mutex_lock(&p->lock);
    if (p->pending && p->ops.synchronize) p->ops.synchronize(p->ops.ctx);
    if (p->pending) pool_poll(p);
    pool_trim(p, 0);
    pthread_mutex_unlock(&p->lock);
}

void tn_pool_set_limit(tn_pool *p, int64_t bytes) {
    pthread_mutex_lock(&p->lock);
    p->limit = bytes < 0 ? -1 : bytes;
    if (p->limit >= 0) pool_trim(p, p->limit);
    pthread_mutex_unlock(&p->lock);
}

tn_pool_stats tn_pool_get_stats(tn_pool *p) {
    pthread_mutex_lock(&p->lock);
    if (p->pending) pool_poll(p);
    tn_pool_stats s = p->st;
    pthread_mutex_unlock(&p->lock);
    return s;
}

void tn_pool_reset_peak(tn_pool *p) {
    pthread_mutex_lock(&p->lock);
    p->st.peak = p->st.in_use;
    pthread_mutex_unlock(&p->lock);
}
