/*
 * audio.c — audio files through libsndfile: tn_audio_info, tn_audio_load (mono f32, optional
 * resampling), tn_audio_save (16-bit PCM WAV or FLAC, atomic rename).
 *
 * libsndfile decodes integer formats to float scaled into [-1, 1) (SFC_SET_NORM_FLOAT, its
 * default), which is what torchaudio.load gives. Multi-channel files are averaged to mono.
 * Without libsndfile (TERN_HAVE_SNDFILE undefined) every entry point returns
 * TN_ERR_UNSUPPORTED naming the library.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#ifdef TERN_HAVE_SNDFILE
#include <sndfile.h>
#endif

int tn_audio_has_sndfile(void) {
#ifdef TERN_HAVE_SNDFILE
    return 1;
#else
    return 0;
#endif
}

#ifndef TERN_HAVE_SNDFILE

static tn_status no_sndfile(const char *op) {
    return tn_error(TN_ERR_UNSUPPORTED,
                    "%s: this build of tern has no libsndfile (audio files); install libsndfile1-dev "
                    "and rebuild",
                    op);
}

tn_status tn_audio_info(const char *path, int64_t *sample_rate, int64_t *frames, int32_t *channels) {
    (void)path, (void)sample_rate, (void)frames, (void)channels;
    return no_sndfile("audio.info");
}
tn_status tn_audio_load(tn_tensor **out, int64_t *sample_rate, const char *path, int64_t target_rate) {
    (void)out, (void)sample_rate, (void)path, (void)target_rate;
    return no_sndfile("audio.load");
}
tn_status tn_audio_save(const char *path, const tn_tensor *x, int64_t sample_rate) {
    (void)path, (void)x, (void)sample_rate;
    return no_sndfile("audio.save");
}

#else

/* Opens path for reading; on failure sets an error naming op, the path and libsndfile's reason. */
static tn_status open_read(const char *op, const char *path, SNDFILE **sf, SF_INFO *info) {
    if (!path) return tn_error(TN_ERR_ARG, "%s: path is NULL", op);
    memset(info, 0, sizeof *info);
    *sf = sf_open(path, SFM_READ, info);
    if (!*sf) {
        const char *why = sf_strerror(NULL);
        struct stat st;
        if (stat(path, &st) != 0)
            return tn_error(TN_ERR_IO, "%s: cannot open '%s': %s", op, path, strerror(errno));
        if (S_ISDIR(st.st_mode)) return tn_error(TN_ERR_IO, "%s: '%s' is a directory, not an audio file", op, path);
        if (st.st_size == 0) return tn_error(TN_ERR_IO, "%s: '%s' is empty (0 bytes)", op, path);
        return tn_error(TN_ERR_IO, "%s: cannot read '%s' as audio: %s", op, path, why);
    }
    if (info->channels < 1 || info->samplerate < 1) {
        sf_close(*sf);
        return tn_error(TN_ERR_IO, "%s: '%s' has %d channels at %d Hz", op, path, info->channels,
                        info->samplerate);
    }
    return TN_OK;
}

tn_status tn_audio_info(const char *path, int64_t *sample_rate, int64_t *frames, int32_t *channels) {
    SNDFILE *sf = NULL;
    SF_INFO info;
    TN_TRY(open_read("audio.info", path, &sf, &info));
    if (sample_rate) *sample_rate = info.samplerate;
    if (frames) *frames = (int64_t)info.frames;
    if (channels) *channels = info.channels;
    sf_close(sf);
    return TN_OK;
}

enum { LOAD_CHUNK = 1 << 16 }; /* frames per sf_readf_float call */

tn_status tn_audio_load(tn_tensor **out, int64_t *sample_rate, const char *path, int64_t target_rate) {
    static const char *op = "audio.load";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", op);
    if (target_rate < 0)
        return tn_error(TN_ERR_ARG, "%s: sample_rate must be positive (or 0 = the file's), got %lld", op,
                        (long long)target_rate);
    SNDFILE *sf = NULL;
    SF_INFO info;
    TN_TRY(open_read(op, path, &sf, &info));
    int64_t frames = (int64_t)info.frames, ch = info.channels;
    if (frames <= 0) {
        sf_close(sf);
        return tn_error(TN_ERR_IO, "%s: '%s' has no audio frames (empty file)", op, path);
    }
    tn_tensor *mono = NULL;
    int64_t shape[1] = {frames};
    tn_status s = tn_tensor_empty(&mono, 1, shape, TN_F32, TN_CPU);
    if (s != TN_OK) {
        sf_close(sf);
        return s;
    }
    float *dst = (float *)mono->data;
    float *buf = ch > 1 ? malloc((size_t)LOAD_CHUNK * (size_t)ch * sizeof(float)) : NULL;
    if (ch > 1 && !buf) {
        sf_close(sf);
        tn_tensor_free(mono);
        return tn_error(TN_ERR_OOM, "%s: out of memory reading '%s'", op, path);
    }
    int64_t got = 0;
    while (got < frames) {
        int64_t want = frames - got < LOAD_CHUNK ? frames - got : LOAD_CHUNK;
        sf_count_t r;
        if (ch == 1) {
            r = sf_readf_float(sf, dst + got, want);
        } else {
            r = sf_readf_float(sf, buf, want);
            for (sf_count_t i = 0; i < r; i++) {
                double acc = 0;
                for (int64_t c = 0; c < ch; c++) acc += buf[i * ch + c];
                dst[got + i] = (float)(acc / (double)ch);
            }
        }
        if (r <= 0) break;
        got += r;
    }
    free(buf);
    if (got < frames) {
        int err = sf_error(sf);
        tn_status st = tn_error(TN_ERR_IO, "%s: '%s' is truncated or corrupt: read %lld of %lld frames (%s)", op,
                                path, (long long)got, (long long)frames, err ? sf_strerror(sf) : "early end of data");
        sf_close(sf);
        tn_tensor_free(mono);
        return st;
    }
    sf_close(sf);
    int64_t rate = info.samplerate;
    if (target_rate > 0 && target_rate != rate) {
        tn_tensor *res = NULL;
        s = tn_audio_resample(&res, mono, rate, target_rate, 6, 0.99, TN_RESAMPLE_HANN, 0);
        tn_tensor_free(mono);
        if (s != TN_OK)
            return tn_error(s, "%s: resampling '%s' from %lld to %lld Hz: %s", op, path, (long long)rate,
                            (long long)target_rate, tn_last_error());
        mono = res;
        rate = target_rate;
    }
    if (sample_rate) *sample_rate = rate;
    *out = mono;
    return TN_OK;
}

static int ends_with_ci(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

tn_status tn_audio_save(const char *path, const tn_tensor *x, int64_t sample_rate) {
    static const char *op = "audio.save";
    if (!path) return tn_error(TN_ERR_ARG, "%s: path is NULL", op);
    TN_TRY(tn_check_tensor(op, "x", x));
    TN_TRY(tn_check_cpu(op, x));
    if (x->dtype != TN_F32 && x->dtype != TN_F64)
        return tn_error(TN_ERR_DTYPE, "%s: x must be f32 or f64, got %s (shape %s)", op, tn_dtype_name(x->dtype),
                        TN_SHAPE(x));
    if (x->ndim != 1 && x->ndim != 2)
        return tn_error(TN_ERR_SHAPE, "%s: x must be (frames) or (channels, frames), got shape %s", op,
                        TN_SHAPE(x));
    if (sample_rate <= 0 || sample_rate > 1000000)
        return tn_error(TN_ERR_ARG, "%s: sample_rate must be in [1, 1000000] Hz, got %lld", op,
                        (long long)sample_rate);
    int64_t ch = x->ndim == 2 ? x->shape[0] : 1, frames = x->shape[x->ndim - 1];
    if (ch < 1 || ch > 1024)
        return tn_error(TN_ERR_SHAPE, "%s: x must have 1 to 1024 channels, got shape %s", op, TN_SHAPE(x));
    int64_t es = (int64_t)tn_dtype_size(x->dtype);
    int64_t cs = x->ndim == 2 ? x->strides[0] : 0, fs = x->strides[x->ndim - 1];
    /* interleave (frames, channels) as 16-bit PCM: round(x * 32768) clipped to [-32768, 32767]
     * (sox / torchaudio's scale, the inverse of libsndfile's read normalisation 1/32768, so a
     * round trip is exact to half a step; libsndfile's own float writer scales by 32767) */
    short *buf = malloc((size_t)(frames > 0 ? frames : 1) * (size_t)ch * sizeof(short));
    if (!buf) return tn_error(TN_ERR_OOM, "%s: out of memory for %lld x %lld samples", op, (long long)ch, (long long)frames);
    for (int64_t c = 0; c < ch; c++)
        for (int64_t i = 0; i < frames; i++) {
            const char *p = x->data + (c * cs + i * fs) * es;
            double v = x->dtype == TN_F32 ? *(const float *)p : *(const double *)p;
            if (!isfinite(v)) {
                free(buf);
                return tn_error(TN_ERR_ARG, "%s: x holds a non-finite value (%g) at channel %lld, frame %lld (shape %s)",
                                op, v, (long long)TN_D(c), (long long)TN_D(i), TN_SHAPE(x));
            }
            double q = nearbyint(v * 32768.0);
            buf[i * ch + c] = (short)(q > 32767.0 ? 32767.0 : q < -32768.0 ? -32768.0 : q);
        }

    SF_INFO info;
    memset(&info, 0, sizeof info);
    info.samplerate = (int)sample_rate;
    info.channels = (int)ch;
    int flac = ends_with_ci(path, ".flac");
    info.format = (flac ? SF_FORMAT_FLAC : SF_FORMAT_WAV) | SF_FORMAT_PCM_16;
    size_t tl = strlen(path) + 32;
    char *tmp = malloc(tl);
    if (!tmp) {
        free(buf);
        return tn_error(TN_ERR_OOM, "%s: out of memory", op);
    }
    snprintf(tmp, tl, "%s.tmp-%ld", path, (long)getpid());
    SNDFILE *sf = sf_open(tmp, SFM_WRITE, &info);
    if (!sf) {
        tn_status st = tn_error(TN_ERR_IO, "%s: cannot write '%s' (%s, %d Hz, %d channels): %s", op, path,
                                flac ? "FLAC" : "WAV", info.samplerate, info.channels, sf_strerror(NULL));
        free(buf);
        free(tmp);
        return st;
    }
    sf_count_t w = frames > 0 ? sf_writef_short(sf, buf, frames) : 0;
    free(buf);
    tn_status st = TN_OK;
    if (w != frames)
        st = tn_error(TN_ERR_IO, "%s: writing '%s': wrote %lld of %lld frames: %s", op, path, (long long)w,
                      (long long)frames, sf_strerror(sf));
    sf_write_sync(sf);
    if (sf_close(sf) != 0 && st == TN_OK)
        st = tn_error(TN_ERR_IO, "%s: closing '%s' failed", op, path);
    if (st == TN_OK && rename(tmp, path) != 0)
        st = tn_error(TN_ERR_IO, "%s: cannot rename '%s' to '%s': %s", op, tmp, path, strerror(errno));
    if (st != TN_OK) unlink(tmp);
    free(tmp);
    return st;
}

#endif /* TERN_HAVE_SNDFILE */
