/*
 * loader.c — the feature store and the background batch loader of tn.data (tern.h, section
 * "data loader").
 *
 * Design. LuaJIT has no threads, so a training loop that assembled its batches in Lua would
 * stop for every read. Here a loader owns one pthread worker that walks a fixed list of
 * batches (decided in Lua by tn.data.Batches for one epoch and one rank) and prepares each
 * into fresh tensors, at most `prefetch` batches ahead of the consumer: a ring of K slots
 * guarded by one mutex and two condition variables (space / ready). tn_loader_next takes the
 * next slot's tensors (ownership moves to the caller), so the consumer never copies and the
 * worker never writes into memory the consumer holds. Assembling a batch is: pread of each
 * utterance's stored rows (f32 straight into its place in the batch, f16 through a scratch
 * buffer), checksum check, (x - mean) * istd, zero padding, SpecAugment masks drawn from a
 * Philox stream keyed by (seed, batch, position), so prefetching or not gives the same bytes.
 *
 * Shutdown: tn_loader_free sets `stop`, wakes the worker, joins it and frees every batch still
 * in the ring. Errors: the worker records the status and its thread-local message in the slot
 * of the failing batch and exits; the consumer returns that error from tn_loader_next (and from
 * every later call). Nothing here blocks without a producer that is guaranteed to make
 * progress or to have exited.
 *
 * Nothing here has a gradient. CPU only.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "kernels/half.h"
#include "kernels/philox.h"

enum { LOADER_MAX_PREFETCH = 1024, LOADER_ERR_LEN = 1024 };

/* ---- checksum and stat ------------------------------------------------------------------ */

static inline uint64_t splitmix64_finish(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

uint64_t tn_data_checksum(const void *data, size_t nbytes) {
    /* Four independent lanes h = (h ^ w) * P (P odd): each step is a bijection of h and of w,
     * so a change of one word changes its lane's final value, and each lane goes through a
     * bijective finish before the xor. */
    const uint64_t P = 0x9E3779B97F4A7C15ULL;
    const unsigned char *p = (const unsigned char *)data;
    uint64_t h0 = 0x243F6A8885A308D3ULL ^ (uint64_t)nbytes, h1 = 0x13198A2E03707344ULL,
             h2 = 0xA4093822299F31D0ULL, h3 = 0x082EFA98EC4E6C89ULL;
    size_t i = 0;
    for (; i + 32 <= nbytes; i += 32) {
        uint64_t w[4];
        memcpy(w, p + i, 32);
        h0 = (h0 ^ w[0]) * P;
        h1 = (h1 ^ w[1]) * P;
        h2 = (h2 ^ w[2]) * P;
        h3 = (h3 ^ w[3]) * P;
    }
    if (i < nbytes) {
        uint64_t w[4] = {0, 0, 0, 0};
        memcpy(w, p + i, nbytes - i);
        h0 = (h0 ^ w[0]) * P;
        h1 = (h1 ^ w[1]) * P;
        h2 = (h2 ^ w[2]) * P;
        h3 = (h3 ^ w[3]) * P;
    }
    return splitmix64_finish(h0) ^ splitmix64_finish(h1 + 1) ^ splitmix64_finish(h2 + 2) ^
           splitmix64_finish(h3 + 3);
}

tn_status tn_file_stat(const char *path, int64_t *size, int64_t *mtime_ns, int32_t *is_dir) {
    if (!path) return tn_error(TN_ERR_ARG, "data.file_stat: path is NULL");
    struct stat st;
    if (stat(path, &st) != 0) return tn_error(TN_ERR_IO, "data.file_stat: '%s': %s", path, strerror(errno));
    if (size) *size = (int64_t)st.st_size;
    if (mtime_ns) *mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000LL + (int64_t)st.st_mtim.tv_nsec;
    if (is_dir) *is_dir = S_ISDIR(st.st_mode) ? 1 : 0;
    return TN_OK;
}

/* ---- feature store ----------------------------------------------------------------------- */

struct tn_featstore {
    int64_t refcount;          /* atomic */
    int32_t num_shards;
    char **paths;              /* (num_shards) */
    int *fds;                  /* (num_shards) -1 until first read; guarded by lock */
    int64_t *data_offsets;     /* (num_shards) */
    int64_t *data_bytes;       /* (num_shards) */
    int32_t dtype;             /* TN_F32 or TN_F16 */
    size_t elsize;
    int64_t dim;
    int64_t num_utts;
    int32_t *utt_shard;        /* (num_utts) */
    int64_t *utt_row;          /* (num_utts) */
    int64_t *utt_frames;       /* (num_utts) */
    uint64_t *utt_checksum;    /* (num_utts) */
    int64_t max_frames;        /* longest utterance */
    pthread_mutex_t lock;
};

static void store_destroy(tn_featstore_t *s) {
    if (!s) return;
    if (s->paths)
        for (int32_t i = 0; i < s->num_shards; i++) free(s->paths[i]);
    if (s->fds)
        for (int32_t i = 0; i < s->num_shards; i++)
            if (s->fds[i] >= 0) close(s->fds[i]);
    free(s->paths);
    free(s->fds);
    free(s->data_offsets);
    free(s->data_bytes);
    free(s->utt_shard);
    free(s->utt_row);
    free(s->utt_frames);
    free(s->utt_checksum);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

tn_status tn_featstore_open(tn_featstore_t **out, int32_t num_shards, const char *const *paths,
                            const int64_t *data_offsets, const int64_t *data_bytes, int32_t dtype,
                            int64_t dim, int64_t num_utts, const int32_t *utt_shard, const int64_t *utt_row,
                            const int64_t *utt_frames, const uint64_t *utt_checksum) {
    static const char *op = "data.featstore_open";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", op);
    *out = NULL;
    if (num_shards < 0 || num_utts < 0)
        return tn_error(TN_ERR_ARG, "%s: negative counts (%d shards, %lld utterances)", op, num_shards,
                        (long long)num_utts);
    if (num_shards > 0 && (!paths || !data_offsets || !data_bytes))
        return tn_error(TN_ERR_ARG, "%s: shard arrays are NULL", op);
    if (num_utts > 0 && (!utt_shard || !utt_row || !utt_frames || !utt_checksum))
        return tn_error(TN_ERR_ARG, "%s: utterance arrays are NULL", op);
    if (dtype != TN_F32 && dtype != TN_F16)
        return tn_error(TN_ERR_DTYPE, "%s: stored dtype must be f32 or f16, got %s", op, tn_dtype_name(dtype));
    if (dim < 1) return tn_error(TN_ERR_ARG, "%s: dim must be positive, got %lld", op, (long long)dim);
    size_t elsize = tn_dtype_size(dtype);
    int64_t row_bytes = dim * (int64_t)elsize;

    for (int32_t i = 0; i < num_shards; i++) {
        if (!paths[i]) return tn_error(TN_ERR_ARG, "%s: path of shard %lld is NULL", op, TN_D(i));
        if (data_offsets[i] < 0 || data_bytes[i] < 0 || data_bytes[i] % row_bytes != 0)
            return tn_error(TN_ERR_ARG, "%s: '%s': bad rows region (offset %lld, %lld bytes, rows of %lld bytes)",
                            op, paths[i], (long long)data_offsets[i], (long long)data_bytes[i],
                            (long long)row_bytes);
        struct stat st;
        if (stat(paths[i], &st) != 0)
            return tn_error(TN_ERR_IO, "%s: feature cache file '%s': %s", op, paths[i], strerror(errno));
        if ((int64_t)st.st_size < data_offsets[i] + data_bytes[i])
            return tn_error(TN_ERR_IO,
                            "%s: feature cache file '%s' is corrupt: %lld bytes, its header needs %lld "
                            "(truncated?); delete it to recompute",
                            op, paths[i], (long long)st.st_size, (long long)(data_offsets[i] + data_bytes[i]));
    }
    for (int64_t u = 0; u < num_utts; u++) {
        int32_t sh = utt_shard[u];
        if (sh < 0 || sh >= num_shards)
            return tn_error(TN_ERR_INDEX, "%s: utterance %lld is in shard %d, outside [0, %d)", op, TN_D(u), sh,
                            num_shards);
        int64_t rows = data_bytes[sh] / row_bytes;
        if (utt_frames[u] < 1 || utt_row[u] < 0 || utt_row[u] + utt_frames[u] > rows)
            return tn_error(TN_ERR_INDEX, "%s: utterance %lld (rows %lld + %lld) lies outside the %lld rows of '%s'",
                            op, TN_D(u), (long long)utt_row[u], (long long)utt_frames[u], (long long)rows,
                            paths[sh]);
    }

    tn_featstore_t *s = calloc(1, sizeof *s);
    if (!s) return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    if (pthread_mutex_init(&s->lock, NULL) != 0) {
        free(s);
        return tn_error(TN_ERR_OOM, "%s: cannot create a mutex", op);
    }
    s->refcount = 1;
    s->num_shards = num_shards;
    s->dtype = dtype;
    s->elsize = elsize;
    s->dim = dim;
    s->num_utts = num_utts;
    size_t ns = (size_t)(num_shards > 0 ? num_shards : 1), nu = (size_t)(num_utts > 0 ? num_utts : 1);
    s->paths = calloc(ns, sizeof *s->paths);
    s->fds = malloc(ns * sizeof *s->fds);
    s->data_offsets = malloc(ns * sizeof *s->data_offsets);
    s->data_bytes = malloc(ns * sizeof *s->data_bytes);
    s->utt_shard = malloc(nu * sizeof *s->utt_shard);
    s->utt_row = malloc(nu * sizeof *s->utt_row);
    s->utt_frames = malloc(nu * sizeof *s->utt_frames);
    s->utt_checksum = malloc(nu * sizeof *s->utt_checksum);
    if (!s->paths || !s->fds || !s->data_offsets || !s->data_bytes || !s->utt_shard || !s->utt_row ||
        !s->utt_frames || !s->utt_checksum) {
        s->num_shards = 0; /* fds not initialised */
        store_destroy(s);
        return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    }
    for (int32_t i = 0; i < num_shards; i++) {
        s->fds[i] = -1;
        s->paths[i] = strdup(paths[i]);
        if (!s->paths[i]) {
            store_destroy(s);
            return tn_error(TN_ERR_OOM, "%s: out of memory", op);
        }
        s->data_offsets[i] = data_offsets[i];
        s->data_bytes[i] = data_bytes[i];
    }
    if (num_utts > 0) {
        memcpy(s->utt_shard, utt_shard, (size_t)num_utts * sizeof *utt_shard);
        memcpy(s->utt_row, utt_row, (size_t)num_utts * sizeof *utt_row);
        memcpy(s->utt_frames, utt_frames, (size_t)num_utts * sizeof *utt_frames);
        memcpy(s->utt_checksum, utt_checksum, (size_t)num_utts * sizeof *utt_checksum);
    }
    for (int64_t u = 0; u < num_utts; u++)
        if (utt_frames[u] > s->max_frames) s->max_frames = utt_frames[u];
    *out = s;
    return TN_OK;
}

void tn_featstore_free(tn_featstore_t *s) {
    if (!s) return;
    if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
    store_destroy(s);
}

int64_t tn_featstore_num_utts(const tn_featstore_t *s) { return s ? s->num_utts : 0; }

/* The file descriptor of shard sh, opened on first use. */
static tn_status store_fd(tn_featstore_t *s, int32_t sh, int *fd) {
    pthread_mutex_lock(&s->lock);
    if (s->fds[sh] < 0) s->fds[sh] = open(s->paths[sh], O_RDONLY | O_CLOEXEC);
    *fd = s->fds[sh];
    int err = errno;
    pthread_mutex_unlock(&s->lock);
    if (*fd < 0) return tn_error(TN_ERR_IO, "data: feature cache file '%s': %s", s->paths[sh], strerror(err));
    return TN_OK;
}

/* Reads utterance u into dst (frames * dim floats, f32), checking its checksum. scratch /
 * scratch_cap: a growable buffer for f16 shards (freed by the caller). */
static tn_status store_read_rows(tn_featstore_t *s, int64_t u, float *dst, void **scratch, size_t *scratch_cap) {
    int32_t sh = s->utt_shard[u];
    int64_t n = s->utt_frames[u] * s->dim;
    size_t nbytes = (size_t)n * s->elsize;
    int fd;
    TN_TRY(store_fd(s, sh, &fd));
    void *buf = dst;
    if (s->dtype != TN_F32) {
        if (*scratch_cap < nbytes) {
            void *p = realloc(*scratch, nbytes);
            if (!p) return tn_error(TN_ERR_OOM, "data: out of memory reading %zu bytes", nbytes);
            *scratch = p;
            *scratch_cap = nbytes;
        }
        buf = *scratch;
    }
    off_t pos = (off_t)(s->data_offsets[sh] + s->utt_row[u] * s->dim * (int64_t)s->elsize);
    size_t done = 0;
    while (done < nbytes) {
        ssize_t r = pread(fd, (char *)buf + done, nbytes - done, pos + (off_t)done);
        if (r < 0) {
            if (errno == EINTR) continue;
            return tn_error(TN_ERR_IO, "data: reading feature cache file '%s': %s", s->paths[sh], strerror(errno));
        }
        if (r == 0)
            return tn_error(TN_ERR_IO,
                            "data: feature cache file '%s' is corrupt: it ends inside rows %lld..%lld "
                            "(truncated?); delete it to recompute",
                            s->paths[sh], (long long)s->utt_row[u], (long long)(s->utt_row[u] + s->utt_frames[u] - 1));
        done += (size_t)r;
    }
    if (tn_data_checksum(buf, nbytes) != s->utt_checksum[u])
        return tn_error(TN_ERR_IO,
                        "data: feature cache file '%s' is corrupt: checksum mismatch in rows %lld..%lld "
                        "(utterance %lld of the store); delete it to recompute",
                        s->paths[sh], (long long)s->utt_row[u], (long long)(s->utt_row[u] + s->utt_frames[u] - 1),
                        TN_D(u));
    if (s->dtype == TN_F16) {
        const uint16_t *h = (const uint16_t *)buf;
        for (int64_t i = 0; i < n; i++) dst[i] = tn_half_to_float(h[i]);
    }
    return TN_OK;
}

static tn_status check_utt(const char *op, const tn_featstore_t *s, int64_t u) {
    if (u < 0 || u >= s->num_utts)
        return tn_error(TN_ERR_INDEX, "%s: utterance %lld outside [0, %lld)", op, (long long)u, (long long)s->num_utts);
    return TN_OK;
}

tn_status tn_featstore_read(tn_tensor **out, tn_featstore_t *s, int64_t u) {
    static const char *op = "data.featstore_read";
    if (!out || !s) return tn_error(TN_ERR_ARG, "%s: out or store is NULL", op);
    TN_TRY(check_utt(op, s, u));
    int64_t shape[2] = {s->utt_frames[u], s->dim};
    int fresh = *out == NULL;
    TN_TRY(tn_prepare_out(op, out, 2, shape, TN_F32, TN_CPU));
    if (!tn_tensor_is_contiguous(*out)) return tn_error(TN_ERR_ARG, "%s: out must be contiguous", op);
    void *scratch = NULL;
    size_t cap = 0;
    tn_status st = store_read_rows(s, u, (float *)(*out)->data, &scratch, &cap);
    free(scratch);
    if (st != TN_OK && fresh) {
        tn_tensor_free(*out);
        *out = NULL;
    }
    return st;
}

tn_status tn_featstore_cmvn(tn_tensor *stats, int64_t *count, tn_featstore_t *s, const int64_t *utts, int64_t n) {
    static const char *op = "data.featstore_cmvn";
    if (!s || !count || (n > 0 && !utts)) return tn_error(TN_ERR_ARG, "%s: NULL argument", op);
    TN_TRY(tn_check_tensor(op, "stats", stats));
    if (stats->dtype != TN_F64 || stats->ndim != 2 || stats->shape[0] != 2 || stats->shape[1] != s->dim ||
        !tn_tensor_is_contiguous(stats) || stats->device != TN_CPU)
        return tn_error(TN_ERR_SHAPE, "%s: stats must be a contiguous (2, %lld) f64 cpu tensor, got %s %s", op,
                        (long long)s->dim, TN_SHAPE(stats), tn_dtype_name(stats->dtype));
    for (int64_t i = 0; i < n; i++) TN_TRY(check_utt(op, s, utts[i]));
    float *rows = malloc((size_t)(s->max_frames > 0 ? s->max_frames : 1) * (size_t)s->dim * sizeof(float));
    if (!rows) return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    double *sum = (double *)stats->data, *sq = sum + s->dim;
    void *scratch = NULL;
    size_t cap = 0;
    tn_status st = TN_OK;
    for (int64_t i = 0; i < n && st == TN_OK; i++) {
        int64_t u = utts[i];
        st = store_read_rows(s, u, rows, &scratch, &cap);
        if (st != TN_OK) break;
        for (int64_t t = 0; t < s->utt_frames[u]; t++) {
            const float *r = rows + t * s->dim;
            for (int64_t f = 0; f < s->dim; f++) {
                double v = r[f];
                sum[f] += v;
                sq[f] += v * v;
            }
        }
        *count += s->utt_frames[u];
    }
    free(scratch);
    free(rows);
    return st;
}

/* ---- loader ------------------------------------------------------------------------------ */

typedef struct loader_slot {
    tn_tensor *feats;
    tn_tensor *lens;
    tn_status status;
    char err[LOADER_ERR_LEN];
} loader_slot;

struct tn_loader {
    tn_featstore_t *store;     /* one reference */
    int64_t num_batches;
    int64_t *offsets;          /* (num_batches + 1) */
    int64_t *utts;             /* (offsets[num_batches]) */
    float *mean, *istd;        /* (dim) each; NULL = identity */
    tn_loader_opts opts;
    int32_t k;                 /* ring size = opts.prefetch (0: synchronous) */
    loader_slot *slots;        /* (k) */
    /* guarded by lock */
    int64_t produced, consumed;
    int stop;
    pthread_mutex_t lock;
    pthread_cond_t space, ready;
    pthread_t thread;
    int has_thread;
    /* consumer side */
    int failed;
    tn_status fail_status;
    char fail_msg[LOADER_ERR_LEN];
    double wait_s, work_s;     /* work_s guarded by lock when a worker runs */
    void *scratch;             /* synchronous mode's f16 buffer */
    size_t scratch_cap;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Uniform integer in [0, m] from two Philox words. */
static inline int64_t uniform_upto(uint32_t lo, uint32_t hi, int64_t m) {
    int64_t v = (int64_t)(tn_philox_u53(lo, hi) * (double)(m + 1));
    return v > m ? m : v;
}

/* SpecAugment masks on one utterance x (len, dim) whose rows are dim apart. */
static void spec_augment(float *x, int64_t len, int64_t dim, const tn_loader_opts *o, int64_t batch, int64_t b) {
    uint32_t key[2] = {(uint32_t)o->seed, (uint32_t)(o->seed >> 32)};
    float value = (float)o->mask_value;
    for (int32_t j = 0; j < o->time_masks; j++) {
        int64_t w_max = o->time_width >= 1.0 ? (int64_t)o->time_width : (int64_t)floor(o->time_width * (double)len);
        if (w_max > len) w_max = len;
        uint32_t ctr[4] = {(uint32_t)j, (uint32_t)b, (uint32_t)batch, (uint32_t)((uint64_t)batch >> 32)}, w[4];
        tn_philox4x32_10(ctr, key, w);
        int64_t width = uniform_upto(w[0], w[1], w_max);
        int64_t start = uniform_upto(w[2], w[3], len - width);
        for (int64_t t = start; t < start + width; t++)
            for (int64_t f = 0; f < dim; f++) x[t * dim + f] = value;
    }
    for (int32_t j = 0; j < o->freq_masks; j++) {
        int64_t w_max = o->freq_width < dim ? o->freq_width : dim;
        uint32_t ctr[4] = {(uint32_t)(o->time_masks + j), (uint32_t)b, (uint32_t)batch,
                           (uint32_t)((uint64_t)batch >> 32)}, w[4];
        tn_philox4x32_10(ctr, key, w);
        int64_t width = uniform_upto(w[0], w[1], w_max);
        int64_t start = uniform_upto(w[2], w[3], dim - width);
        for (int64_t t = 0; t < len; t++)
            for (int64_t f = start; f < start + width; f++) x[t * dim + f] = value;
    }
}

/* Builds batch i into new tensors *feats, *lens (both NULL on error). */
static tn_status assemble(tn_loader_t *l, int64_t i, tn_tensor **feats, tn_tensor **lens, void **scratch,
                          size_t *scratch_cap) {
    tn_featstore_t *s = l->store;
    const int64_t *u = l->utts + l->offsets[i];
    int64_t B = l->offsets[i + 1] - l->offsets[i], T = 0, D = s->dim;
    for (int64_t b = 0; b < B; b++)
        if (s->utt_frames[u[b]] > T) T = s->utt_frames[u[b]];
    *feats = *lens = NULL;
    int64_t fshape[3] = {B, T, D}, lshape[1] = {B};
    tn_status st = tn_tensor_empty(feats, 3, fshape, TN_F32, TN_CPU);
    if (st == TN_OK) st = tn_tensor_empty(lens, 1, lshape, TN_I64, TN_CPU);
    for (int64_t b = 0; b < B && st == TN_OK; b++) {
        int64_t n = s->utt_frames[u[b]];
        float *x = (float *)(*feats)->data + b * T * D;
        ((int64_t *)(*lens)->data)[b] = n;
        st = store_read_rows(s, u[b], x, scratch, scratch_cap);
        if (st != TN_OK) break;
        if (l->mean) {
            for (int64_t t = 0; t < n; t++) {
                float *r = x + t * D;
                for (int64_t f = 0; f < D; f++) r[f] = (r[f] - l->mean[f]) * l->istd[f];
            }
        }
        if (n < T) memset(x + n * D, 0, (size_t)((T - n) * D) * sizeof(float));
        if (l->opts.time_masks > 0 || l->opts.freq_masks > 0)
            spec_augment(x, n, D, &l->opts, i + l->opts.batch_base, b);
    }
    if (st != TN_OK) {
        tn_tensor_free(*feats);
        tn_tensor_free(*lens);
        *feats = *lens = NULL;
    }
    return st;
}

static void *loader_worker(void *arg) {
    tn_loader_t *l = (tn_loader_t *)arg;
    void *scratch = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&l->lock);
        while (!l->stop && l->produced < l->num_batches && l->produced - l->consumed >= l->k)
            pthread_cond_wait(&l->space, &l->lock);
        if (l->stop || l->produced >= l->num_batches) {
            pthread_mutex_unlock(&l->lock);
            break;
        }
        int64_t i = l->produced;
        pthread_mutex_unlock(&l->lock);

        tn_tensor *feats = NULL, *lens = NULL;
        double t0 = now_s();
        tn_status st = assemble(l, i, &feats, &lens, &scratch, &cap);
        double t1 = now_s();

        pthread_mutex_lock(&l->lock);
        loader_slot *slot = &l->slots[i % l->k];
        slot->feats = feats;
        slot->lens = lens;
        slot->status = st;
        if (st != TN_OK) snprintf(slot->err, sizeof slot->err, "%s", tn_last_error());
        l->produced = i + 1;
        l->work_s += t1 - t0;
        pthread_cond_signal(&l->ready);
        pthread_mutex_unlock(&l->lock);
        if (st != TN_OK) break;
    }
    free(scratch);
    return NULL;
}

static void loader_destroy(tn_loader_t *l) {
    if (!l) return;
    if (l->has_thread) {
        pthread_mutex_lock(&l->lock);
        l->stop = 1;
        pthread_cond_broadcast(&l->space);
        pthread_mutex_unlock(&l->lock);
        pthread_join(l->thread, NULL);
    }
    if (l->slots) {
        for (int64_t i = l->consumed; i < l->produced; i++) {
            loader_slot *slot = &l->slots[i % l->k];
            tn_tensor_free(slot->feats);
            tn_tensor_free(slot->lens);
        }
        free(l->slots);
    }
    if (l->k > 0) {
        pthread_cond_destroy(&l->space);
        pthread_cond_destroy(&l->ready);
        pthread_mutex_destroy(&l->lock);
    }
    tn_featstore_free(l->store);
    free(l->offsets);
    free(l->utts);
    free(l->mean);
    free(l->istd);
    free(l->scratch);
    free(l);
}

void tn_loader_free(tn_loader_t *l) { loader_destroy(l); }

tn_status tn_loader_create(tn_loader_t **out, tn_featstore_t *store, const tn_tensor *cmvn, int64_t num_batches,
                           const int64_t *batch_offsets, const int64_t *utts, const tn_loader_opts *opts) {
    static const char *op = "data.loader_create";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", op);
    *out = NULL;
    if (!store) return tn_error(TN_ERR_ARG, "%s: store is NULL", op);
    if (num_batches < 0) return tn_error(TN_ERR_ARG, "%s: num_batches is negative (%lld)", op, (long long)num_batches);
    if (!batch_offsets || (num_batches > 0 && !utts)) return tn_error(TN_ERR_ARG, "%s: batch lists are NULL", op);
    tn_loader_opts o = {0, 0, 0.0, 0, 0, 0.0, 0, 0};
    if (opts) o = *opts;
    if (o.prefetch < 0 || o.prefetch > LOADER_MAX_PREFETCH)
        return tn_error(TN_ERR_ARG, "%s: prefetch must be in [0, %d], got %d", op, LOADER_MAX_PREFETCH, o.prefetch);
    if (o.batch_base < 0)
        return tn_error(TN_ERR_ARG, "%s: batch_base must be non-negative, got %lld", op, (long long)o.batch_base);
    if (o.time_masks < 0 || o.freq_masks < 0 || !(o.time_width >= 0) || o.freq_width < 0 || !isfinite(o.mask_value))
        return tn_error(TN_ERR_ARG,
                        "%s: SpecAugment options must be non-negative (time_masks %d, time_width %g, freq_masks %d, "
                        "freq_width %lld, mask_value %g)",
                        op, o.time_masks, o.time_width, o.freq_masks, (long long)o.freq_width, o.mask_value);
    if (batch_offsets[0] != 0) return tn_error(TN_ERR_ARG, "%s: batch_offsets[0] must be 0, got %lld", op, (long long)batch_offsets[0]);
    for (int64_t i = 0; i < num_batches; i++)
        if (batch_offsets[i + 1] <= batch_offsets[i])
            return tn_error(TN_ERR_ARG, "%s: batch %lld is empty or its offsets decrease (%lld, %lld)", op, TN_D(i),
                            (long long)batch_offsets[i], (long long)batch_offsets[i + 1]);
    int64_t total = batch_offsets[num_batches];
    for (int64_t j = 0; j < total; j++)
        if (utts[j] < 0 || utts[j] >= store->num_utts)
            return tn_error(TN_ERR_INDEX, "%s: utterance %lld (entry %lld of the batch lists) outside [0, %lld)", op,
                            (long long)utts[j], TN_D(j), (long long)store->num_utts);
    if (cmvn) {
        TN_TRY(tn_check_tensor(op, "cmvn", cmvn));
        if (cmvn->ndim != 2 || cmvn->shape[0] != 2 || cmvn->shape[1] != store->dim || cmvn->device != TN_CPU ||
            (cmvn->dtype != TN_F32 && cmvn->dtype != TN_F64))
            return tn_error(TN_ERR_SHAPE, "%s: cmvn must be a (2, %lld) f32 or f64 cpu tensor (mean; 1/std), got %s %s",
                            op, (long long)store->dim, TN_SHAPE(cmvn), tn_dtype_name(cmvn->dtype));
    }

    tn_loader_t *l = calloc(1, sizeof *l);
    if (!l) return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    l->num_batches = num_batches;
    l->opts = o;
    l->k = o.prefetch;
    l->offsets = malloc((size_t)(num_batches + 1) * sizeof *l->offsets);
    l->utts = malloc((size_t)(total > 0 ? total : 1) * sizeof *l->utts);
    if (cmvn) {
        l->mean = malloc((size_t)store->dim * sizeof(float));
        l->istd = malloc((size_t)store->dim * sizeof(float));
    }
    if (l->k > 0) l->slots = calloc((size_t)l->k, sizeof *l->slots);
    if (!l->offsets || !l->utts || (cmvn && (!l->mean || !l->istd)) || (l->k > 0 && !l->slots)) {
        l->k = 0;
        loader_destroy(l);
        return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    }
    memcpy(l->offsets, batch_offsets, (size_t)(num_batches + 1) * sizeof *l->offsets);
    if (total > 0) memcpy(l->utts, utts, (size_t)total * sizeof *l->utts);
    if (cmvn) {
        size_t el = tn_dtype_size(cmvn->dtype);
        for (int64_t f = 0; f < store->dim; f++) {
            l->mean[f] = (float)tn_load_f64(cmvn->data + f * cmvn->strides[1] * (int64_t)el, cmvn->dtype);
            l->istd[f] = (float)tn_load_f64(cmvn->data + (cmvn->strides[0] + f * cmvn->strides[1]) * (int64_t)el,
                                            cmvn->dtype);
        }
    }
    __atomic_add_fetch(&store->refcount, 1, __ATOMIC_RELAXED);
    l->store = store;
    if (l->k > 0) {
        int ok = pthread_mutex_init(&l->lock, NULL) == 0;
        ok = ok && pthread_cond_init(&l->space, NULL) == 0;
        ok = ok && pthread_cond_init(&l->ready, NULL) == 0;
        ok = ok && pthread_create(&l->thread, NULL, loader_worker, l) == 0;
        if (!ok) {
            /* the primitives are trivially destroyable on Linux even when one init failed */
            loader_destroy(l);
            return tn_error(TN_ERR_OOM, "%s: cannot start the worker thread", op);
        }
        l->has_thread = 1;
    }
    *out = l;
    return TN_OK;
}

static tn_status loader_fail(tn_loader_t *l, tn_status st, const char *msg) {
    l->failed = 1;
    l->fail_status = st;
    snprintf(l->fail_msg, sizeof l->fail_msg, "%s", msg);
    return tn_error(st, "%s", l->fail_msg);
}

tn_status tn_loader_next(tn_loader_t *l, tn_tensor **feats, tn_tensor **lens, int64_t *batch) {
    static const char *op = "data.loader_next";
    if (!l || !feats || !lens) return tn_error(TN_ERR_ARG, "%s: NULL argument", op);
    *feats = *lens = NULL;
    if (batch) *batch = -1;
    if (l->failed) return tn_error(l->fail_status, "%s", l->fail_msg);
    double t0 = now_s();
    if (l->k == 0) {
        if (l->consumed >= l->num_batches) return TN_OK;
        int64_t i = l->consumed;
        tn_status st = assemble(l, i, feats, lens, &l->scratch, &l->scratch_cap);
        double dt = now_s() - t0;
        l->wait_s += dt;
        l->work_s += dt;
        if (st != TN_OK) return loader_fail(l, st, tn_last_error());
        l->consumed = i + 1;
        if (batch) *batch = i + l->opts.batch_base;
        return TN_OK;
    }
    pthread_mutex_lock(&l->lock);
    if (l->consumed >= l->num_batches) {
        pthread_mutex_unlock(&l->lock);
        return TN_OK;
    }
    while (l->produced <= l->consumed) pthread_cond_wait(&l->ready, &l->lock);
    int64_t i = l->consumed;
    loader_slot *slot = &l->slots[i % l->k];
    tn_status st = slot->status;
    *feats = slot->feats;
    *lens = slot->lens;
    slot->feats = slot->lens = NULL;
    l->consumed = i + 1;
    pthread_cond_signal(&l->space);
    pthread_mutex_unlock(&l->lock);
    l->wait_s += now_s() - t0;
    if (st != TN_OK) return loader_fail(l, st, slot->err);
    if (batch) *batch = i + l->opts.batch_base;
    return TN_OK;
}

void tn_loader_stats(const tn_loader_t *l, double *wait_s, double *work_s) {
    if (!l) {
        if (wait_s) *wait_s = 0;
        if (work_s) *work_s = 0;
        return;
    }
    if (wait_s) *wait_s = l->wait_s;
    if (work_s) {
        if (l->k > 0) {
            pthread_mutex_lock((pthread_mutex_t *)&l->lock);
            *work_s = l->work_s;
            pthread_mutex_unlock((pthread_mutex_t *)&l->lock);
        } else {
            *work_s = l->work_s;
        }
    }
}
