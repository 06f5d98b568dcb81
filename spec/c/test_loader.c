/*
 * test_loader.c — the feature store and the batch loader (core/loader.c): reads, checksums,
 * CMVN statistics, batch assembly (CMVN, zero padding, SpecAugment), identical results for
 * every prefetch depth, errors from the worker thread, shutdown with batches still in flight.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "internal.h"

static int has(const char *needle) { return strstr(tn_last_error(), needle) != NULL; }

static char dir[256], path32[300], path16[300];

enum { D = 4, NU = 5, PREFIX = 24 };
static const int64_t frames[NU] = {3, 7, 2, 5, 4};
static int64_t rows[NU];
static uint64_t sums[NU];
static int32_t shard0[NU];

static float value(int64_t u, int64_t t, int64_t f) { return (float)(u * 100 + t * 4 + f) * 0.25f; }

/* A file of PREFIX junk bytes, then the rows of the NU utterances as f32. */
static void write_shard32(void) {
    FILE *fp = fopen(path32, "wb");
    CHECK(fp != NULL);
    if (!fp) return;
    for (int i = 0; i < PREFIX; i++) fputc('#', fp);
    int64_t row = 0;
    for (int64_t u = 0; u < NU; u++) {
        float buf[64];
        for (int64_t t = 0; t < frames[u]; t++)
            for (int64_t f = 0; f < D; f++) buf[t * D + f] = value(u, t, f);
        fwrite(buf, sizeof(float), (size_t)(frames[u] * D), fp);
        sums[u] = tn_data_checksum(buf, (size_t)(frames[u] * D) * sizeof(float));
        rows[u] = row;
        row += frames[u];
        shard0[u] = 0;
    }
    fclose(fp);
}

static tn_featstore_t *open32(void) {
    const char *paths[1] = {path32};
    int64_t total = 0;
    for (int u = 0; u < NU; u++) total += frames[u];
    int64_t off[1] = {PREFIX}, bytes[1] = {total * D * 4};
    tn_featstore_t *s = NULL;
    CHECK_OK(tn_featstore_open(&s, 1, paths, off, bytes, TN_F32, D, NU, shard0, rows, frames, sums));
    return s;
}

static void test_checksum(void) {
    unsigned char a[37];
    for (int i = 0; i < 37; i++) a[i] = (unsigned char)(i * 11);
    uint64_t h = tn_data_checksum(a, 37);
    CHECK(h == tn_data_checksum(a, 37));
    for (int i = 0; i < 37; i++) {
        a[i] ^= 4;
        CHECK(tn_data_checksum(a, 37) != h);
        a[i] ^= 4;
    }
    CHECK(tn_data_checksum(a, 36) != h);
    CHECK(tn_data_checksum(a, 0) == tn_data_checksum(NULL, 0));
    int64_t size = 0, mtime = 0;
    int32_t isdir = -1;
    CHECK_OK(tn_file_stat(dir, &size, &mtime, &isdir));
    CHECK(isdir == 1 && mtime > 0);
    CHECK(tn_file_stat("/no/such/file", NULL, NULL, NULL) == TN_ERR_IO && has("/no/such/file"));
}

static void test_store(void) {
    tn_featstore_t *s = open32();
    if (!s) return;
    CHECK(tn_featstore_num_utts(s) == NU);
    for (int64_t u = 0; u < NU; u++) {
        tn_tensor *x = NULL;
        CHECK_OK(tn_featstore_read(&x, s, u));
        if (!x) continue;
        CHECK(x->shape[0] == frames[u] && x->shape[1] == D && x->dtype == TN_F32);
        int ok = 1;
        for (int64_t t = 0; t < frames[u]; t++)
            for (int64_t f = 0; f < D; f++) ok &= ((float *)x->data)[t * D + f] == value(u, t, f);
        CHECK(ok);
        tn_tensor_free(x);
    }
    tn_tensor *x = NULL;
    CHECK(tn_featstore_read(&x, s, NU) == TN_ERR_INDEX && x == NULL);

    /* CMVN statistics over utterances 1 and 3 */
    int64_t shape[2] = {2, D}, count = 0, us[2] = {1, 3};
    tn_tensor *stats = NULL;
    CHECK_OK(tn_tensor_empty(&stats, 2, shape, TN_F64, TN_CPU));
    CHECK_OK(tn_fill(stats, 0));
    CHECK_OK(tn_featstore_cmvn(stats, &count, s, us, 2));
    CHECK(count == frames[1] + frames[3]);
    double want0 = 0, want1 = 0;
    for (int k = 0; k < 2; k++)
        for (int64_t t = 0; t < frames[us[k]]; t++) {
            want0 += value(us[k], t, 2);
            want1 += (double)value(us[k], t, 2) * value(us[k], t, 2);
        }
    CHECK_NEAR(((double *)stats->data)[2], want0, 1e-9);
    CHECK_NEAR(((double *)stats->data)[D + 2], want1, 1e-6);
    tn_tensor_free(stats);
    tn_featstore_free(s);

    /* bad stores */
    const char *paths[1] = {path32};
    int64_t off[1] = {PREFIX}, bytes[1] = {19 * D * 4}, big[1] = {1000 * D * 4};
    tn_featstore_t *bad = NULL;
    CHECK(tn_featstore_open(&bad, 1, paths, off, big, TN_F32, D, NU, shard0, rows, frames, sums) == TN_ERR_IO &&
          has("corrupt") && has(path32) && bad == NULL);
    int64_t far[NU] = {0, 3, 10, 12, 17}; /* utterance 4 would end at row 21 > 19 */
    CHECK(tn_featstore_open(&bad, 1, paths, off, bytes, TN_F32, D, NU, shard0, far, frames, sums) == TN_ERR_INDEX &&
          has("outside"));
    const char *missing[1] = {"/no/such/shard.safetensors"};
    CHECK(tn_featstore_open(&bad, 1, missing, off, bytes, TN_F32, D, NU, shard0, rows, frames, sums) == TN_ERR_IO &&
          has("/no/such/shard.safetensors"));
    CHECK(tn_featstore_open(&bad, 1, paths, off, bytes, TN_I32, D, NU, shard0, rows, frames, sums) == TN_ERR_DTYPE);
    tn_featstore_free(NULL);
}

static void test_store_f16(void) {
    /* one utterance of 3 frames, stored as f16 after an 8-byte prefix */
    uint16_t h[3 * D];
    for (int i = 0; i < 3 * D; i++) h[i] = tn_float_to_half(0.5f * (float)i - 1.0f);
    FILE *fp = fopen(path16, "wb");
    CHECK(fp != NULL);
    if (!fp) return;
    fwrite("12345678", 1, 8, fp);
    fwrite(h, 2, 3 * D, fp);
    fclose(fp);
    const char *paths[1] = {path16};
    int64_t off[1] = {8}, bytes[1] = {3 * D * 2}, row[1] = {0}, fr[1] = {3};
    int32_t sh[1] = {0};
    uint64_t sum[1] = {tn_data_checksum(h, sizeof h)};
    tn_featstore_t *s = NULL;
    CHECK_OK(tn_featstore_open(&s, 1, paths, off, bytes, TN_F16, D, 1, sh, row, fr, sum));
    tn_tensor *x = NULL;
    CHECK_OK(tn_featstore_read(&x, s, 0));
    if (x) {
        int ok = 1;
        for (int i = 0; i < 3 * D; i++) ok &= ((float *)x->data)[i] == 0.5f * (float)i - 1.0f;
        CHECK(ok);
    }
    tn_tensor_free(x);
    tn_featstore_free(s);
}

/* Batches {0, 1}, {2}, {3, 4, 0}, {4}. */
static const int64_t boff[5] = {0, 2, 3, 6, 7};
static const int64_t butt[7] = {0, 1, 2, 3, 4, 0, 4};

static tn_loader_opts opts_of(int32_t prefetch, int masks, uint64_t seed) {
    tn_loader_opts o = {prefetch, masks ? 2 : 0, 0.5, masks ? 2 : 0, 2, -9.0, seed, 0};
    return o;
}

/* Every batch of a loader, in order, as flat float copies; returns the number of batches. */
static int drain(tn_loader_t *l, float **out, int64_t *numel, int max) {
    int n = 0;
    for (;;) {
        tn_tensor *f = NULL, *len = NULL;
        int64_t b = -2;
        if (tn_loader_next(l, &f, &len, &b) != TN_OK) return -1;
        if (!f) {
            CHECK(len == NULL && b == -1);
            return n;
        }
        CHECK(b == n);
        if (n < max) {
            numel[n] = tn_tensor_numel(f);
            out[n] = malloc((size_t)numel[n] * sizeof(float));
            memcpy(out[n], f->data, (size_t)numel[n] * sizeof(float));
        }
        n++;
        tn_tensor_free(f);
        tn_tensor_free(len);
    }
}

static void test_loader(void) {
    tn_featstore_t *s = open32();
    if (!s) return;
    int64_t cshape[2] = {2, D};
    tn_tensor *cmvn = NULL;
    CHECK_OK(tn_tensor_empty(&cmvn, 2, cshape, TN_F32, TN_CPU));
    for (int f = 0; f < D; f++) {
        ((float *)cmvn->data)[f] = 1.0f;       /* mean */
        ((float *)cmvn->data)[D + f] = 0.5f;   /* 1 / std */
    }

    /* contents without masks */
    tn_loader_t *l = NULL;
    tn_loader_opts o = opts_of(2, 0, 0);
    CHECK_OK(tn_loader_create(&l, s, cmvn, 4, boff, butt, &o));
    tn_featstore_free(s); /* the loader keeps its own reference */
    for (int i = 0; i < 4 && l; i++) {
        tn_tensor *f = NULL, *len = NULL;
        int64_t b = -1;
        CHECK_OK(tn_loader_next(l, &f, &len, &b));
        if (!f || !len) break;
        int64_t B = boff[i + 1] - boff[i], T = 0;
        for (int64_t k = 0; k < B; k++) T = frames[butt[boff[i] + k]] > T ? frames[butt[boff[i] + k]] : T;
        CHECK(b == i && f->shape[0] == B && f->shape[1] == T && f->shape[2] == D && len->dtype == TN_I64);
        int ok = 1;
        for (int64_t k = 0; k < B; k++) {
            int64_t u = butt[boff[i] + k];
            ok &= ((int64_t *)len->data)[k] == frames[u];
            for (int64_t t = 0; t < T; t++)
                for (int64_t d = 0; d < D; d++) {
                    float got = ((float *)f->data)[(k * T + t) * D + d];
                    float want = t < frames[u] ? (value(u, t, d) - 1.0f) * 0.5f : 0.0f;
                    ok &= got == want;
                }
        }
        CHECK(ok);
        tn_tensor_free(f);
        tn_tensor_free(len);
    }
    tn_tensor *f = NULL, *len = NULL;
    int64_t b = 0;
    CHECK_OK(tn_loader_next(l, &f, &len, &b));
    CHECK(f == NULL && len == NULL && b == -1);
    CHECK_OK(tn_loader_next(l, &f, &len, &b)); /* still the end */
    CHECK(f == NULL && b == -1);
    double wait_s = -1, work_s = -1;
    tn_loader_stats(l, &wait_s, &work_s);
    CHECK(wait_s >= 0 && work_s > 0);
    tn_loader_free(l);

    /* identical for every prefetch depth, masks included; masks depend on the seed */
    s = open32();
    float *ref[4] = {0}, *got[4] = {0}, *other[4] = {0};
    int64_t n_ref[4], n_got[4], n_other[4];
    o = opts_of(0, 1, 42);
    CHECK_OK(tn_loader_create(&l, s, cmvn, 4, boff, butt, &o));
    CHECK(drain(l, ref, n_ref, 4) == 4);
    tn_loader_free(l);
    for (int k = 1; k <= 5; k += 2) {
        o = opts_of(k, 1, 42);
        CHECK_OK(tn_loader_create(&l, s, cmvn, 4, boff, butt, &o));
        CHECK(drain(l, got, n_got, 4) == 4);
        tn_loader_free(l);
        for (int i = 0; i < 4; i++) {
            CHECK(n_got[i] == n_ref[i] && memcmp(got[i], ref[i], (size_t)n_ref[i] * sizeof(float)) == 0);
            free(got[i]);
        }
    }
    o = opts_of(1, 1, 43);
    CHECK_OK(tn_loader_create(&l, s, cmvn, 4, boff, butt, &o));
    CHECK(drain(l, other, n_other, 4) == 4);
    tn_loader_free(l);
    int differ = 0, masked = 0, pad_ok = 1;
    for (int i = 0; i < 4; i++) {
        differ += memcmp(other[i], ref[i], (size_t)n_ref[i] * sizeof(float)) != 0;
        int64_t B = boff[i + 1] - boff[i], T = n_ref[i] / (B * D);
        for (int64_t k = 0; k < B; k++) {
            int64_t u = butt[boff[i] + k];
            for (int64_t t = 0; t < T; t++)
                for (int64_t d = 0; d < D; d++) {
                    float v = ref[i][(k * T + t) * D + d];
                    if (t >= frames[u]) pad_ok &= v == 0.0f; /* masks stay inside the utterance */
                    masked += v == -9.0f;
                }
        }
        free(other[i]);
        free(ref[i]);
    }
    CHECK(differ > 0 && masked > 0 && pad_ok);

    /* argument errors */
    tn_loader_t *bad = NULL;
    int64_t off_bad[3] = {0, 2, 2};
    CHECK(tn_loader_create(&bad, s, cmvn, 2, off_bad, butt, NULL) == TN_ERR_ARG && has("empty") && bad == NULL);
    int64_t utt_bad[2] = {0, NU};
    CHECK(tn_loader_create(&bad, s, cmvn, 1, boff, utt_bad, NULL) == TN_ERR_INDEX);
    o = opts_of(-1, 0, 0);
    CHECK(tn_loader_create(&bad, s, cmvn, 4, boff, butt, &o) == TN_ERR_ARG && has("prefetch"));
    tn_tensor *c3 = NULL;
    int64_t s3[2] = {3, D};
    CHECK_OK(tn_tensor_empty(&c3, 2, s3, TN_F32, TN_CPU));
    CHECK(tn_loader_create(&bad, s, c3, 4, boff, butt, NULL) == TN_ERR_SHAPE && has("cmvn"));
    tn_tensor_free(c3);

    /* stopping early: many batches queued, one taken, then freed (the worker is waiting) */
    enum { MANY = 200 };
    int64_t *moff = malloc((MANY + 1) * sizeof(int64_t)), *mutt = malloc(MANY * sizeof(int64_t));
    for (int i = 0; i <= MANY; i++) moff[i] = i;
    for (int i = 0; i < MANY; i++) mutt[i] = i % NU;
    int64_t live0 = tn_memory_live(TN_CPU);
    for (int k = 0; k < 3; k++) {
        o = opts_of(4, 1, 1);
        CHECK_OK(tn_loader_create(&l, s, cmvn, MANY, moff, mutt, &o));
        if (k > 0) {
            CHECK_OK(tn_loader_next(l, &f, &len, &b));
            tn_tensor_free(f);
            tn_tensor_free(len);
        }
        if (k == 2) { /* let the ring fill */
            struct timespec ts = {0, 20000000};
            nanosleep(&ts, NULL);
        }
        tn_loader_free(l);
    }
    CHECK(tn_memory_live(TN_CPU) == live0);
    free(moff);
    free(mutt);
    tn_loader_free(NULL);
    tn_featstore_free(s);
    tn_tensor_free(cmvn);
}

/* A shard corrupted after the store was opened: the batch that reads it fails, in the
 * worker and in the synchronous path, and every later next() repeats the error. */
static void test_loader_errors(void) {
    for (int prefetch = 0; prefetch <= 2; prefetch += 2) {
        write_shard32();
        tn_featstore_t *s = open32();
        if (!s) return;
        /* flip one byte inside utterance 3 (rows 12..16) */
        FILE *fp = fopen(path32, "r+b");
        CHECK(fp != NULL);
        if (!fp) return;
        fseek(fp, PREFIX + (rows[3] + 1) * D * 4 + 2, SEEK_SET);
        fputc(0x7f, fp);
        fclose(fp);
        tn_loader_t *l = NULL;
        tn_loader_opts o = opts_of(prefetch, 0, 0);
        CHECK_OK(tn_loader_create(&l, s, NULL, 4, boff, butt, &o));
        tn_tensor *f = NULL, *len = NULL;
        int64_t b;
        for (int i = 0; i < 2; i++) { /* batches {0, 1} and {2} are fine */
            CHECK_OK(tn_loader_next(l, &f, &len, &b));
            CHECK(f != NULL && b == i);
            tn_tensor_free(f);
            tn_tensor_free(len);
        }
        CHECK(tn_loader_next(l, &f, &len, &b) == TN_ERR_IO && has("checksum mismatch") && has(path32) && f == NULL &&
              b == -1);
        CHECK(tn_loader_next(l, &f, &len, &b) == TN_ERR_IO && has("checksum mismatch"));
        tn_loader_free(l);

        /* truncated under the store */
        CHECK(truncate(path32, PREFIX + 10 * D * 4) == 0);
        CHECK_OK(tn_loader_create(&l, s, NULL, 4, boff, butt, &o));
        CHECK_OK(tn_loader_next(l, &f, &len, &b)); /* rows 0..9 */
        tn_tensor_free(f);
        tn_tensor_free(len);
        /* utterance 2: rows 10..11 are gone */
        CHECK(tn_loader_next(l, &f, &len, &b) == TN_ERR_IO && has("truncated") && has(path32) && f == NULL);
        tn_loader_free(l);
        tn_featstore_free(s);
    }
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tern_test_loader_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path32, sizeof path32, "%s/shard32.bin", dir);
    snprintf(path16, sizeof path16, "%s/shard16.bin", dir);
    write_shard32();
    test_checksum();
    test_store();
    test_store_f16();
    test_loader();
    test_loader_errors();
    unlink(path32);
    unlink(path16);
    rmdir(dir);
    return check_report("test_loader");
}
