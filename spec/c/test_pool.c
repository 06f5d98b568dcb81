/*
 * test_pool.c — the caching pool of core/pool.c (the CUDA allocator's logic) on a mock device:
 * raw allocations from malloc with a byte budget (to provoke out-of-memory), events that
 * complete when the test says so, counters of every raw call.
 *  - size classes (tn_size_class) at the granule and above;
 *  - reuse of a freed block by a request of the same class on the same stream, none across
 *    classes or streams; stats (in use, peak, reserved, cached, hits, raw allocations);
 *  - a block used on another stream waits for its event before reuse;
 *  - out of memory: the pool synchronises, returns its cached blocks, retries, and reports the
 *    request and its bytes when that fails too;
 *  - empty, a cache limit, misuse (double release, unknown pointer).
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "internal.h"

typedef struct mock {
    size_t budget, used;
    int raw_allocs, raw_frees, syncs, events_live;
    int done; /* events recorded so far complete when set */
} mock;

typedef struct mock_event {
    mock *m;
} mock_event;

static void *m_alloc(void *ctx, size_t n) {
    mock *m = (mock *)ctx;
    if (m->used + n > m->budget) {
        tn_error(TN_ERR_OOM, "mock: out of memory (%zu bytes)", n);
        return NULL;
    }
    m->used += n;
    m->raw_allocs++;
    return malloc(n);
}
static void m_free(void *ctx, void *p, size_t n) {
    mock *m = (mock *)ctx;
    m->used -= n;
    m->raw_frees++;
    free(p);
}
static void *m_record(void *ctx, void *stream) {
    (void)stream;
    mock *m = (mock *)ctx;
    mock_event *e = (mock_event *)malloc(sizeof *e);
    e->m = m;
    m->events_live++;
    return e;
}
static int m_query(void *ctx, void *ev) {
    (void)ev;
    return ((mock *)ctx)->done;
}
static void m_event_free(void *ctx, void *ev) {
    ((mock *)ctx)->events_live--;
    free(ev);
}
static void m_sync(void *ctx) {
    mock *m = (mock *)ctx;
    m->syncs++;
    m->done = 1;
}
static void m_describe(void *ctx, char *buf, size_t n) {
    mock *m = (mock *)ctx;
    snprintf(buf, n, "mock device: %zu of %zu bytes used", m->used, m->budget);
}

static tn_pool *mk_pool(mock *m, size_t budget) {
    memset(m, 0, sizeof *m);
    m->budget = budget;
    tn_pool_ops ops = {m_alloc, m_free, m_record, m_query, m_event_free, m_sync, m_describe, m};
    tn_pool *p = NULL;
    CHECK_OK(tn_pool_new(&p, &ops, "mock pool", 512));
    return p;
}

static void test_classes(void) {
    size_t b;
    CHECK(tn_size_class(1, 512, &b) == 0 && b == 512);
    CHECK(tn_size_class(512, 512, &b) == 0 && b == 512);
    CHECK(tn_size_class(513, 512, &b) == 1 && b == 1024);
    CHECK(tn_size_class(8192, 512, &b) == 15 && b == 8192);
    CHECK(tn_size_class(8193, 512, &b) == 16 && b == 10240);
    CHECK(tn_size_class(16384, 512, &b) == 19 && b == 16384);
    CHECK(tn_size_class(16385, 512, &b) == 20 && b == 20480);
    CHECK(tn_size_class((size_t)3 << 30, 512, &b) >= 0 && b == ((size_t)3 << 30));
    /* at most 25% slack, and classes grow with n */
    int last = -1;
    for (size_t n = 1; n < ((size_t)1 << 40); n = n * 5 / 4 + 7) {
        const int c = tn_size_class(n, 512, &b);
        CHECK(b >= n && (n <= 8192 || b <= n + n / 4 + 1) && c >= last && c < 16 + 4 * 48);
        last = c;
    }
    /* the CPU cache's granule */
    CHECK(tn_size_class(1000, 64, &b) == 15 && b == 1024);
    CHECK(tn_size_class(1025, 64, &b) == 16 && b == 1280);
}

static void test_reuse(void) {
    mock m;
    tn_pool *p = mk_pool(&m, (size_t)1 << 30);
    int s1 = 0, s2 = 0; /* two streams: any distinct tags */
    void *a = tn_pool_alloc(p, 1000, &s1);
    CHECK(a != NULL && m.raw_allocs == 1 && m.used == 1024);
    tn_pool_stats st = tn_pool_get_stats(p);
    CHECK(st.in_use == 1000 && st.peak == 1000 && st.reserved == 1024 && st.cached == 0);
    CHECK(tn_pool_owns(p, a) == 1);
    CHECK_OK(tn_pool_release(p, a));
    CHECK(tn_pool_owns(p, a) == 0);
    st = tn_pool_get_stats(p);
    CHECK(st.in_use == 0 && st.peak == 1000 && st.cached == 1024 && st.reserved == 1024);
    /* same class, same stream: the same block, no raw call */
    void *b = tn_pool_alloc(p, 900, &s1);
    CHECK(b == a && m.raw_allocs == 1 && tn_pool_get_stats(p).hits == 1);
    /* same class, other stream: a new block */
    void *c = tn_pool_alloc(p, 900, &s2);
    CHECK(c != NULL && c != a && m.raw_allocs == 2);
    /* other class: a new block */
    CHECK_OK(tn_pool_release(p, b));
    void *d = tn_pool_alloc(p, 5000, &s1);
    CHECK(d != NULL && d != a && m.raw_allocs == 3);
    st = tn_pool_get_stats(p);
    CHECK(st.in_use == 5900 && st.cached == 1024 && st.reserved == 1024 + 1024 + 5120 && st.allocs == 4);
    tn_pool_reset_peak(p);
    CHECK(tn_pool_get_stats(p).peak == 5900);
    /* misuse */
    CHECK(tn_pool_release(p, a) == TN_ERR_ARG && strstr(tn_last_error(), "not a block in use") != NULL);
    int x;
    CHECK(tn_pool_release(p, &x) == TN_ERR_ARG);
    CHECK(tn_pool_record_use(p, &x, &s2) == TN_ERR_ARG);
    CHECK_OK(tn_pool_release(p, NULL));
    /* empty returns the cached block only */
    tn_pool_empty(p);
    st = tn_pool_get_stats(p);
    CHECK(st.cached == 0 && st.reserved == 1024 + 5120 && m.raw_frees == 1 && m.used == 1024 + 5120);
    CHECK_OK(tn_pool_release(p, c));
    CHECK_OK(tn_pool_release(p, d));
    tn_pool_free(p);
    CHECK(m.used == 0 && m.raw_frees == 3);
}

static void test_streams(void) {
    mock m;
    tn_pool *p = mk_pool(&m, (size_t)1 << 30);
    int s1 = 0, s2 = 0;
    void *a = tn_pool_alloc(p, 4096, &s1);
    CHECK_OK(tn_pool_record_use(p, a, &s2));
    CHECK_OK(tn_pool_record_use(p, a, &s2)); /* once per stream */
    CHECK_OK(tn_pool_record_use(p, a, &s1)); /* its own stream: nothing to wait for */
    CHECK_OK(tn_pool_release(p, a));
    CHECK(m.events_live == 1);
    tn_pool_stats st = tn_pool_get_stats(p);
    CHECK(st.pending == 4096 && st.cached == 0);
    /* the event has not completed: a new block */
    void *b = tn_pool_alloc(p, 4096, &s1);
    CHECK(b != a && m.raw_allocs == 2);
    m.done = 1; /* the other stream passed the free */
    void *c = tn_pool_alloc(p, 4096, &s1);
    CHECK(c == a && m.raw_allocs == 2 && m.events_live == 0);
    st = tn_pool_get_stats(p);
    CHECK(st.pending == 0 && st.cached == 0 && st.in_use == 8192);
    CHECK_OK(tn_pool_release(p, b));
    CHECK_OK(tn_pool_release(p, c));
    /* a block that leaves the pending list is trimmed to the cache limit, as a release is */
    tn_pool_set_limit(p, 0);
    m.done = 0;
    void *e = tn_pool_alloc(p, 2048, &s1);
    const int frees = m.raw_frees;
    CHECK_OK(tn_pool_record_use(p, e, &s2));
    CHECK_OK(tn_pool_release(p, e));
    CHECK(tn_pool_get_stats(p).pending == 2048 && m.raw_frees == frees);
    m.done = 1;
    st = tn_pool_get_stats(p);
    CHECK(st.pending == 0 && st.cached == 0 && m.raw_frees == frees + 1 && m.events_live == 0);
    tn_pool_set_limit(p, -1);
    /* pending blocks at free: the pool synchronises and frees their events */
    m.done = 0;
    void *d = tn_pool_alloc(p, 100, &s1);
    CHECK_OK(tn_pool_record_use(p, d, &s2));
    CHECK_OK(tn_pool_release(p, d));
    CHECK(m.events_live == 1);
    tn_pool_free(p);
    CHECK(m.events_live == 0 && m.used == 0 && m.syncs == 1);
}

static void test_oom(void) {
    mock m;
    tn_pool *p = mk_pool(&m, 64 * 1024);
    int s = 0;
    void *a = tn_pool_alloc(p, 40 * 1024, &s);
    CHECK(a != NULL);
    CHECK_OK(tn_pool_release(p, a)); /* cached: 40 KiB */
    /* 30 KiB does not fit beside the cached 40 KiB: sync, return the cache, retry */
    void *b = tn_pool_alloc(p, 30 * 1024, &s);
    CHECK(b != NULL && m.syncs == 1 && m.raw_frees == 1 && tn_pool_get_stats(p).cached == 0);
    /* 40 KiB cannot fit beside 30 KiB in use: a clear error */
    void *c = tn_pool_alloc(p, 40 * 1024, &s);
    CHECK(c == NULL);
    const char *e = tn_last_error();
    CHECK(strstr(e, "mock pool: out of memory allocating 40.00 KiB") != NULL);
    CHECK(strstr(e, "30.00 KiB in use") != NULL && strstr(e, "mock device: 32768 of 65536 bytes used") != NULL);
    CHECK(strstr(e, "first failure: mock: out of memory") != NULL);
    CHECK(tn_pool_alloc(p, (size_t)1 << 60, &s) == NULL && strstr(tn_last_error(), "beyond any device"));
    /* still usable */
    CHECK_OK(tn_pool_release(p, b));
    void *d = tn_pool_alloc(p, 60 * 1024, &s);
    CHECK(d != NULL);
    CHECK_OK(tn_pool_release(p, d));
    tn_pool_free(p);
    CHECK(m.used == 0);
}

static void test_limit(void) {
    mock m;
    tn_pool *p = mk_pool(&m, (size_t)1 << 30);
    int s = 0;
    void *a = tn_pool_alloc(p, 10000, &s), *b = tn_pool_alloc(p, 100000, &s);
    tn_pool_set_limit(p, 20000);
    CHECK_OK(tn_pool_release(p, a));
    CHECK(tn_pool_get_stats(p).cached == 10240);
    CHECK_OK(tn_pool_release(p, b)); /* over the limit: trimmed, largest first */
    tn_pool_stats st = tn_pool_get_stats(p);
    CHECK(st.cached <= 20000 && st.cached == 10240 && m.raw_frees == 1);
    tn_pool_set_limit(p, 0);
    CHECK(tn_pool_get_stats(p).cached == 0 && m.raw_frees == 2);
    tn_pool_set_limit(p, -1);
    void *c = tn_pool_alloc(p, 100, &s);
    CHECK_OK(tn_pool_release(p, c));
    CHECK(tn_pool_get_stats(p).cached == 512);
    tn_pool_free(p);
    /* bad arguments */
    tn_pool_ops none = {0};
    tn_pool *q = NULL;
    CHECK(tn_pool_new(&q, &none, "x", 512) == TN_ERR_ARG && q == NULL);
    tn_pool_ops ops = {m_alloc, m_free, NULL, NULL, NULL, NULL, NULL, &m};
    CHECK(tn_pool_new(&q, &ops, "x", 500) == TN_ERR_ARG && strstr(tn_last_error(), "power of two"));
    tn_pool_free(NULL);
}

/* many blocks: the hash grows and every block is found again */
static void test_many(void) {
    mock m;
    tn_pool *p = mk_pool(&m, (size_t)1 << 34);
    int s = 0;
    enum { N = 3000 };
    void **v = (void **)malloc(sizeof(void *) * N);
    for (int i = 0; i < N; i++) v[i] = tn_pool_alloc(p, (size_t)(i % 37 + 1) * 700, &s);
    int ok = 1;
    for (int i = 0; i < N; i++) ok &= tn_pool_owns(p, v[i]);
    CHECK(ok);
    for (int i = 0; i < N; i += 2) CHECK_OK(tn_pool_release(p, v[i]));
    const int raw = m.raw_allocs;
    for (int i = 0; i < N; i += 2) v[i] = tn_pool_alloc(p, (size_t)(i % 37 + 1) * 700, &s);
    CHECK(m.raw_allocs == raw); /* all served from the cache */
    for (int i = 0; i < N; i++) CHECK_OK(tn_pool_release(p, v[i]));
    CHECK(tn_pool_get_stats(p).in_use == 0);
    free(v);
    tn_pool_free(p);
    CHECK(m.used == 0);
}

int main(void) {
    test_classes();
    test_reuse();
    test_streams();
    test_oom();
    test_limit();
    test_many();
    return check_report("test_pool");
}
