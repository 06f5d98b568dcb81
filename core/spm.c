/*
 * spm.c — SentencePiece tokens (tn_spm_*): load a model, encode text to ids, decode ids to text,
 * look pieces up, and train a model (the flags of spm_train). The library is Debian's
 * libsentencepiece (C++), reached through the extern "C" functions of spm_impl.cc; a build
 * without it keeps these entry points, which then return TN_ERR_UNSUPPORTED naming the package.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int tn_spm_available(void) {
#ifdef TERN_HAVE_SENTENCEPIECE
    return 1;
#else
    return 0;
#endif
}

#ifndef TERN_HAVE_SENTENCEPIECE

static tn_status no_spm(const char *op) {
    return tn_error(TN_ERR_UNSUPPORTED,
                    "%s: this build of tern has no SentencePiece; install libsentencepiece-dev and rebuild", op);
}

tn_status tn_spm_load(const char *path, tn_spm **out) {
    (void)path;
    if (out) *out = NULL;
    return no_spm("spm.load");
}
void tn_spm_free(tn_spm *spm) { (void)spm; }
int32_t tn_spm_size(const tn_spm *spm) { (void)spm; return 0; }
int32_t tn_spm_kind(const tn_spm *spm, int32_t id) { (void)spm, (void)id; return -1; }
int32_t tn_spm_piece_to_id(const tn_spm *spm, const char *piece) { (void)spm, (void)piece; return -1; }
tn_status tn_spm_piece(const tn_spm *spm, int32_t id, char *out, int64_t cap, int64_t *len) {
    (void)spm, (void)id, (void)out, (void)cap, (void)len;
    return no_spm("spm.piece");
}
tn_status tn_spm_encode(const tn_spm *spm, const char *text, int32_t *ids, int64_t cap, int64_t *n) {
    (void)spm, (void)text, (void)ids, (void)cap, (void)n;
    return no_spm("spm.encode");
}
tn_status tn_spm_decode(const tn_spm *spm, const int32_t *ids, int64_t n, char *out, int64_t cap, int64_t *len) {
    (void)spm, (void)ids, (void)n, (void)out, (void)cap, (void)len;
    return no_spm("spm.decode");
}
tn_status tn_spm_train(const char *args) {
    (void)args;
    return no_spm("spm.train");
}

#else

void *tern_spm_impl_load(const char *path, char *err, size_t errlen);
void tern_spm_impl_free(void *h);
int32_t tern_spm_impl_size(const void *h);
int32_t tern_spm_impl_kind(const void *h, int32_t id);
int32_t tern_spm_impl_piece_to_id(const void *h, const char *piece);
int64_t tern_spm_impl_piece(const void *h, int32_t id, char *out, int64_t cap);
int64_t tern_spm_impl_encode(const void *h, const char *text, int32_t *ids, int64_t cap, char *err, size_t errlen);
int64_t tern_spm_impl_decode(const void *h, const int32_t *ids, int64_t n, char *out, int64_t cap, char *err,
                             size_t errlen);
int tern_spm_impl_train(const char *args, char *err, size_t errlen);

struct tn_spm {
    void *h;
    int32_t size;
};

tn_status tn_spm_load(const char *path, tn_spm **out) {
    if (!out) return tn_error(TN_ERR_ARG, "spm.load: out is NULL");
    *out = NULL;
    if (!path || !*path) return tn_error(TN_ERR_ARG, "spm.load: path is empty");
    char err[512] = {0};
    void *h = tern_spm_impl_load(path, err, sizeof err);
    if (!h) return tn_error(TN_ERR_IO, "spm.load: cannot load SentencePiece model %s: %s", path, err);
    tn_spm *s = (tn_spm *)malloc(sizeof *s);
    if (!s) {
        tern_spm_impl_free(h);
        return tn_error(TN_ERR_OOM, "spm.load: out of memory");
    }
    s->h = h;
    s->size = tern_spm_impl_size(h);
    *out = s;
    return TN_OK;
}

void tn_spm_free(tn_spm *spm) {
    if (!spm) return;
    tern_spm_impl_free(spm->h);
    free(spm);
}

int32_t tn_spm_size(const tn_spm *spm) { return spm ? spm->size : 0; }

int32_t tn_spm_kind(const tn_spm *spm, int32_t id) {
    if (!spm || id < 0 || id >= spm->size) return -1;
    return tern_spm_impl_kind(spm->h, id);
}

int32_t tn_spm_piece_to_id(const tn_spm *spm, const char *piece) {
    if (!spm || !piece) return -1;
    return tern_spm_impl_piece_to_id(spm->h, piece);
}

tn_status tn_spm_piece(const tn_spm *spm, int32_t id, char *out, int64_t cap, int64_t *len) {
    if (!spm || !out || !len) return tn_error(TN_ERR_ARG, "spm.piece: NULL argument");
    if (id < 0 || id >= spm->size)
        return tn_error(TN_ERR_ARG, "spm.piece: id %d is outside the vocabulary [0, %d)", (int)id, (int)spm->size);
    *len = tern_spm_impl_piece(spm->h, id, out, cap);
    return TN_OK;
}

tn_status tn_spm_encode(const tn_spm *spm, const char *text, int32_t *ids, int64_t cap, int64_t *n) {
    if (!spm || !text || !n || (cap > 0 && !ids)) return tn_error(TN_ERR_ARG, "spm.encode: NULL argument");
    char err[512] = {0};
    const int64_t k = tern_spm_impl_encode(spm->h, text, ids, cap, err, sizeof err);
    if (k < 0) return tn_error(TN_ERR_ARG, "spm.encode: %s", err);
    *n = k;
    return TN_OK;
}

tn_status tn_spm_decode(const tn_spm *spm, const int32_t *ids, int64_t n, char *out, int64_t cap, int64_t *len) {
    if (!spm || (n > 0 && !ids) || !len || (cap > 0 && !out)) return tn_error(TN_ERR_ARG, "spm.decode: NULL argument");
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= spm->size)
            return tn_error(TN_ERR_ARG, "spm.decode: ids[%lld] = %d is outside the vocabulary [0, %d)", (long long)i,
                            (int)ids[i], (int)spm->size);
    char err[512] = {0};
    const int64_t k = tern_spm_impl_decode(spm->h, ids, n, out, cap, err, sizeof err);
    if (k < 0) return tn_error(TN_ERR_ARG, "spm.decode: %s", err);
    *len = k;
    return TN_OK;
}

tn_status tn_spm_train(const char *args) {
    if (!args) return tn_error(TN_ERR_ARG, "spm.train: args is NULL");
    char err[1024] = {0};
    if (tern_spm_impl_train(args, err, sizeof err) != 0) return tn_error(TN_ERR_ARG, "spm.train: %s", err);
    return TN_OK;
}

#endif
