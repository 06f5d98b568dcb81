/*
 * io.c — atomic tensor file writes and positioned reads (the byte layer of safetensors).
 *
 * tn_io_write: u64 little-endian header length, header bytes, then each tensor's bytes in
 * row-major logical order (native byte order; tern targets little-endian hosts), written to
 * "<path>.tmp-<pid>", fsynced, renamed over path, and the directory fsynced (best effort).
 * On any failure the tmp file is removed and path is left untouched.
 * CPU tensors only in this module; the Lua layer moves CUDA tensors to the CPU first.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

enum { IO_CHUNK = 1 << 28 }; /* bytes per write/read syscall */

/* Writes all n bytes of buf to fd; returns 0 or an errno. */
static int write_all(int fd, const char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, buf, n < IO_CHUNK ? n : IO_CHUNK);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Fsyncs the directory holding path so the rename is durable; errors are ignored. */
static void sync_parent_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = NULL;
    if (!slash) dir = strdup(".");
    else if (slash == path) dir = strdup("/");
    else dir = strndup(path, (size_t)(slash - path));
    if (!dir) return;
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

tn_status tn_io_write(const char *path, const char *header, uint64_t header_len,
                      const tn_tensor *const *ts, int32_t n) {
    if (!path) return tn_error(TN_ERR_ARG, "write: argument 'path' is NULL");
    if (!header && header_len > 0) return tn_error(TN_ERR_ARG, "write: %s: header is NULL", path);
    if (n < 0 || (n > 0 && !ts))
        return tn_error(TN_ERR_ARG, "write: %s: bad tensor list (n = %d)", path, n);
    for (int32_t i = 0; i < n; i++) {
        if (!ts[i]) return tn_error(TN_ERR_ARG, "write: %s: tensor %lld is NULL", path, TN_D(i));
        if (ts[i]->device != TN_CPU)
            return tn_error(TN_ERR_DEVICE, "write: %s: tensor %lld %s (%s) is on %s; copy it to the cpu first",
                            path, TN_D(i), TN_SHAPE(ts[i]), tn_dtype_name(ts[i]->dtype),
                            tn_device_name(ts[i]->device));
    }

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp) return tn_error(TN_ERR_OOM, "write: %s: out of memory", path);
    snprintf(tmp, plen + 32, "%s.tmp-%ld", path, (long)getpid());

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (fd < 0) {
        tn_status s = tn_error(TN_ERR_IO, "write: %s: cannot create %s: %s", path, tmp, strerror(errno));
        free(tmp);
        return s;
    }

    int err = 0;                 /* errno of the first failure */
    const char *what = "write";  /* the failing step */
    tn_status status = TN_OK;    /* a non-IO failure (tn_contiguous) */
    unsigned char len_le[8];     /* header_len, u64 little endian */
    for (int k = 0; k < 8; k++) len_le[k] = (unsigned char)(header_len >> (8 * k));
    err = write_all(fd, (const char *)len_le, 8);
    if (!err && header_len > 0) err = write_all(fd, header, (size_t)header_len);
    for (int32_t i = 0; i < n && !err; i++) {
        tn_tensor *c = NULL; /* row-major copy of ts[i] (or ts[i] retained) */
        status = tn_contiguous(&c, ts[i]);
        if (status != TN_OK) break;
        size_t nbytes = (size_t)tn_tensor_numel(c) * tn_dtype_size(c->dtype);
        err = write_all(fd, c->data, nbytes);
        tn_tensor_free(c);
    }
    if (!err && status == TN_OK && fsync(fd) != 0) err = errno, what = "fsync";
    if (close(fd) != 0 && !err && status == TN_OK) err = errno, what = "close";
    if (!err && status == TN_OK && rename(tmp, path) != 0) err = errno, what = "rename";

    if (err || status != TN_OK) {
        unlink(tmp);
        free(tmp);
        if (status != TN_OK) return status; /* message set by tn_contiguous */
        return tn_error(TN_ERR_IO, "write: %s: %s failed: %s", path, what, strerror(err));
    }
    free(tmp);
    sync_parent_dir(path);
    return TN_OK;
}

tn_status tn_io_read(tn_tensor *out, const char *path, int64_t offset) {
    TN_TRY(tn_check_tensor("read", "out", out));
    if (!path) return tn_error(TN_ERR_ARG, "read: argument 'path' is NULL");
    TN_TRY(tn_check_cpu("read", out));
    if (!tn_tensor_is_contiguous(out))
        return tn_error(TN_ERR_ARG, "read: %s: out %s (%s) must be contiguous", path, TN_SHAPE(out),
                        tn_dtype_name(out->dtype));
    if (offset < 0)
        return tn_error(TN_ERR_ARG, "read: %s: negative offset %lld", path, (long long)offset);
    int64_t nbytes = tn_tensor_numel(out) * (int64_t)tn_dtype_size(out->dtype);

    int fd = open(path, O_RDONLY);
    if (fd < 0) return tn_error(TN_ERR_IO, "read: %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return tn_error(TN_ERR_IO, "read: %s: %s", path, strerror(e));
    }
    int64_t size = (int64_t)st.st_size;
    if (offset > size || nbytes > size - offset) {
        close(fd);
        return tn_error(TN_ERR_IO, "read: %s: expected %lld bytes at offset %lld, file has %lld", path,
                        (long long)nbytes, (long long)offset, (long long)size);
    }
    char *dst = out->data;
    int64_t done = 0;
    while (done < nbytes) {
        int64_t want = nbytes - done < IO_CHUNK ? nbytes - done : IO_CHUNK;
        ssize_t r = pread(fd, dst + done, (size_t)want, (off_t)(offset + done));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            close(fd);
            if (r == 0)
                return tn_error(TN_ERR_IO, "read: %s: file ended at %lld bytes (expected %lld bytes at offset %lld)",
                                path, (long long)(offset + done), (long long)nbytes, (long long)offset);
            return tn_error(TN_ERR_IO, "read: %s: %s", path, strerror(e));
        }
        done += r;
    }
    close(fd);
    return TN_OK;
}
