/*
 * test_io.c — tn_io_write / tn_io_read (core/io.c): layout, round trip, strided tensors,
 * atomic replacement, tmp file cleanup and error messages.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "internal.h"

static int has(const char *needle) { return strstr(tn_last_error(), needle) != NULL; }

static char dir[256];

/* Number of entries in dir whose name contains ".tmp-". */
static int tmp_files(void) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) n += strstr(e->d_name, ".tmp-") != NULL;
    closedir(d);
    return n;
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static unsigned char *slurp(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    *n = file_size(path);
    unsigned char *b = malloc((size_t)*n + 1);
    if (b && fread(b, 1, (size_t)*n, f) != (size_t)*n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    return b;
}

static void test_round_trip(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    int64_t s23[2] = {2, 3}, s4[1] = {4};
    tn_tensor *a = NULL, *b = NULL, *at = NULL, *sc = NULL;
    CHECK_OK(tn_tensor_empty(&a, 2, s23, TN_F32, TN_CPU));
    for (int i = 0; i < 6; i++) ((float *)a->data)[i] = (float)i + 0.5f;
    CHECK_OK(tn_tensor_empty(&b, 1, s4, TN_I64, TN_CPU));
    for (int i = 0; i < 4; i++) ((int64_t *)b->data)[i] = -1000000000000LL * i;
    CHECK_OK(tn_transpose(&at, a, 0, 1)); /* (3, 2), written row-major: 0.5 3.5 1.5 4.5 2.5 5.5 */
    CHECK_OK(tn_tensor_empty(&sc, 0, NULL, TN_U8, TN_CPU));
    *(uint8_t *)sc->data = 200;

    const char *header = "{\"a\":1}";
    const tn_tensor *ts[4] = {a, b, at, sc};
    CHECK_OK(tn_io_write(path, header, strlen(header), ts, 4));
    CHECK(tmp_files() == 0);
    long n = 0;
    unsigned char *bytes = slurp(path, &n);
    CHECK(bytes != NULL && n == 8 + 7 + 24 + 32 + 24 + 1);
    if (bytes && n == 96) {
        CHECK(bytes[0] == 7 && bytes[1] == 0 && bytes[7] == 0);
        CHECK(memcmp(bytes + 8, header, 7) == 0);
        CHECK(memcmp(bytes + 15, a->data, 24) == 0);
        CHECK(memcmp(bytes + 39, b->data, 32) == 0);
        float tr[6];
        memcpy(tr, bytes + 71, 24);
        CHECK(tr[0] == 0.5f && tr[1] == 3.5f && tr[2] == 1.5f && tr[5] == 5.5f);
        CHECK(bytes[95] == 200);
    }
    free(bytes);

    /* read back at offsets */
    tn_tensor *ra = NULL, *rb = NULL, *rt = NULL;
    CHECK_OK(tn_tensor_empty(&ra, 2, s23, TN_F32, TN_CPU));
    CHECK_OK(tn_tensor_empty(&rb, 1, s4, TN_I64, TN_CPU));
    int64_t s32[2] = {3, 2};
    CHECK_OK(tn_tensor_empty(&rt, 2, s32, TN_F32, TN_CPU));
    CHECK_OK(tn_io_read(ra, path, 15));
    CHECK_OK(tn_io_read(rb, path, 39));
    CHECK_OK(tn_io_read(rt, path, 71));
    CHECK(memcmp(ra->data, a->data, 24) == 0 && memcmp(rb->data, b->data, 32) == 0);
    CHECK(((float *)rt->data)[1] == 3.5f && ((float *)rt->data)[4] == 2.5f);

    /* read errors */
    CHECK(tn_io_read(rb, path, 70) == TN_ERR_IO && has("read: ") && has(path) &&
          has("expected 32 bytes at offset 70, file has 96"));
    CHECK(tn_io_read(rb, path, 1000) == TN_ERR_IO && has("file has 96"));
    CHECK(tn_io_read(rb, path, -1) == TN_ERR_ARG);
    char missing[300];
    snprintf(missing, sizeof missing, "%s/missing.bin", dir);
    CHECK(tn_io_read(rb, missing, 0) == TN_ERR_IO && has(missing) && has("No such file"));
    CHECK(tn_io_read(at, path, 0) == TN_ERR_ARG && has("contiguous"));
    CHECK(tn_io_read(NULL, path, 0) == TN_ERR_ARG);
    CHECK(tn_io_read(ra, NULL, 0) == TN_ERR_ARG);

    /* overwrite: atomically replaced, shorter file */
    CHECK_OK(tn_io_write(path, "", 0, NULL, 0));
    CHECK(file_size(path) == 8 && tmp_files() == 0);
    CHECK_OK(tn_io_write(path, NULL, 0, ts + 3, 1));
    CHECK(file_size(path) == 9);

    /* an empty tensor writes no bytes */
    tn_tensor *e = NULL;
    int64_t s0[2] = {0, 5};
    CHECK_OK(tn_tensor_empty(&e, 2, s0, TN_F64, TN_CPU));
    const tn_tensor *es[1] = {e};
    CHECK_OK(tn_io_write(path, "x", 1, es, 1));
    CHECK(file_size(path) == 9);
    CHECK_OK(tn_io_read(e, path, 9)); /* 0 bytes at the end */
    tn_tensor_free(e);

    tn_tensor_free(ra);
    tn_tensor_free(rb);
    tn_tensor_free(rt);
    tn_tensor_free(a);
    tn_tensor_free(b);
    tn_tensor_free(at);
    tn_tensor_free(sc);
    unlink(path);
}

static void test_write_errors(void) {
    char path[300];
    snprintf(path, sizeof path, "%s/no/such/dir/x.bin", dir);
    int64_t s[1] = {3};
    tn_tensor *t = NULL;
    CHECK_OK(tn_tensor_empty(&t, 1, s, TN_F32, TN_CPU));
    const tn_tensor *ts[2] = {t, NULL};
    CHECK(tn_io_write(path, "", 0, ts, 1) == TN_ERR_IO && has("write: ") && has(path) && has("No such file"));
    CHECK(tmp_files() == 0);

    /* renaming over a directory fails after the tmp file was written: tmp file removed */
    char dpath[300];
    snprintf(dpath, sizeof dpath, "%s/adir", dir);
    CHECK(mkdir(dpath, 0700) == 0);
    char sub[320];
    snprintf(sub, sizeof sub, "%s/keep", dpath); /* non-empty: rename cannot replace it */
    FILE *f = fopen(sub, "w");
    if (f) fclose(f);
    CHECK(tn_io_write(dpath, "{}", 2, ts, 1) == TN_ERR_IO && has("rename failed") && has(dpath));
    CHECK(tmp_files() == 0);
    unlink(sub);
    rmdir(dpath);

    CHECK(tn_io_write(NULL, "", 0, ts, 1) == TN_ERR_ARG);
    CHECK(tn_io_write(dpath, NULL, 5, ts, 1) == TN_ERR_ARG && has("header"));
    CHECK(tn_io_write(dpath, "", 0, ts, 2) == TN_ERR_ARG && has("tensor 1 is NULL"));
    tn_set_dim_base(1); /* list positions 1-based */
    CHECK(tn_io_write(dpath, "", 0, ts, 2) == TN_ERR_ARG && has("tensor 2 is NULL"));
    tn_set_dim_base(0);
    CHECK(tn_io_write(dpath, "", 0, NULL, 1) == TN_ERR_ARG);
    CHECK(tn_io_write(dpath, "", 0, ts, -1) == TN_ERR_ARG);
    tn_tensor fake = *t; /* header only: never dereferenced */
    fake.device = TN_CUDA;
    const tn_tensor *fs[1] = {&fake};
    CHECK(tn_io_write(dpath, "", 0, fs, 1) == TN_ERR_DEVICE && has("cuda"));
    CHECK(access(dpath, F_OK) != 0 && tmp_files() == 0); /* nothing created */
    tn_tensor_free(t);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/tern_test_io_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    int64_t cur0 = tn_memory_current(TN_CPU);
    test_round_trip();
    test_write_errors();
    CHECK(tn_memory_current(TN_CPU) == cur0);
    rmdir(dir);
    return check_report("test_io");
}
