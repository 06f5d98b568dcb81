/*
 * test_audio.c — the audio entry points in C (core/audio.c, resample.c, fbank.c, augment.c):
 * file round trips and errors, resampler properties, fbank geometry / batch / thread / dither
 * invariants, SpecAugment masks and CMVN sums. The numeric match with torchaudio is checked
 * against fixtures by spec/audio_spec.lua. Parts whose library is missing in this build check
 * that they say so (TN_ERR_UNSUPPORTED naming the library) instead.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "helpers.h"
#include "internal.h"
#include "kernels/audio.h"

static int has(const char *needle) { return strstr(tn_last_error(), needle) != NULL; }

static tn_tensor *vec(int64_t n) {
    int64_t s[1] = {n};
    return mk(TN_F32, 1, s);
}

/* A tone of freq Hz at rate sr, amplitude a, n samples. */
static tn_tensor *tone(int64_t n, double freq, double sr, double a) {
    tn_tensor *t = vec(n);
    float *p = (float *)t->data;
    for (int64_t i = 0; i < n; i++) p[i] = (float)(a * sin(2 * TN_AUDIO_PI * freq * (double)i / sr));
    return t;
}

static int same_tensor(const tn_tensor *a, const tn_tensor *b) {
    if (!a || !b || a->ndim != b->ndim) return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return 0;
    return memcmp(a->data, b->data, (size_t)tn_tensor_numel(a) * tn_dtype_size(a->dtype)) == 0;
}

static char dir[256];

static void path_in(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", dir, name); }

/* ---- files --------------------------------------------------------------------------------- */

static void test_files(void) {
    char wav[300], flac[300], stereo[300], bad[300], empty[300];
    path_in(wav, sizeof wav, "a.wav");
    path_in(flac, sizeof flac, "a.flac");
    path_in(stereo, sizeof stereo, "st.wav");
    path_in(bad, sizeof bad, "text.wav");
    path_in(empty, sizeof empty, "empty.wav");
    tn_tensor *x = tone(8000, 440, 16000, 0.5), *y = NULL;
    int64_t sr = 0, frames = 0;
    int32_t ch = 0;
    if (!tn_audio_has_sndfile()) {
        CHECK(tn_audio_save(wav, x, 16000) == TN_ERR_UNSUPPORTED && has("libsndfile"));
        CHECK(tn_audio_load(&y, &sr, wav, 0) == TN_ERR_UNSUPPORTED && has("libsndfile"));
        tn_tensor_free(x);
        return;
    }
    /* WAV and FLAC round trips: 16-bit PCM, so within half a step of 1/32768 */
    const char *paths[2] = {wav, flac};
    for (int k = 0; k < 2; k++) {
        CHECK_OK(tn_audio_save(paths[k], x, 16000));
        CHECK_OK(tn_audio_info(paths[k], &sr, &frames, &ch));
        CHECK(sr == 16000 && frames == 8000 && ch == 1);
        y = NULL;
        CHECK_OK(tn_audio_load(&y, &sr, paths[k], 0));
        CHECK(y && y->ndim == 1 && y->shape[0] == 8000 && y->dtype == TN_F32 && sr == 16000);
        double worst = 0;
        for (int64_t i = 0; y && i < 8000; i++) worst = fmax(worst, fabs(at(y, i) - at(x, i)));
        CHECK(worst <= 0.5 / 32768 + 1e-7);
        tn_tensor_free(y);
    }
    /* no tmp file is left behind */
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld", wav, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);

    /* load with a target rate resamples */
    y = NULL;
    CHECK_OK(tn_audio_load(&y, &sr, wav, 8000));
    CHECK(y && y->shape[0] == 4000 && sr == 8000);
    tn_tensor_free(y);

    /* stereo (channels, frames) is written interleaved and averaged back to mono */
    int64_t s2[2] = {2, 100};
    tn_tensor *st = mk(TN_F32, 2, s2);
    for (int64_t i = 0; i < 100; i++) put(st, i, 0.5), put(st, 100 + i, -0.25);
    CHECK_OK(tn_audio_save(stereo, st, 8000));
    CHECK_OK(tn_audio_info(stereo, &sr, &frames, &ch));
    CHECK(ch == 2 && frames == 100 && sr == 8000);
    y = NULL;
    CHECK_OK(tn_audio_load(&y, &sr, stereo, 0));
    CHECK(y && y->shape[0] == 100 && fabs(at(y, 37) - 0.125) < 1e-4);
    tn_tensor_free(y);
    tn_tensor_free(st);

    /* clipping, not wrapping */
    tn_tensor *loud = vec(4);
    put(loud, 0, 2.0), put(loud, 1, -3.0), put(loud, 2, 0.0), put(loud, 3, 1.0);
    CHECK_OK(tn_audio_save(wav, loud, 16000));
    y = NULL;
    CHECK_OK(tn_audio_load(&y, &sr, wav, 0));
    CHECK(y && at(y, 0) > 0.99 && at(y, 1) < -0.99 && at(y, 2) == 0.0);
    tn_tensor_free(y);
    put(loud, 2, NAN);
    CHECK(tn_audio_save(wav, loud, 16000) == TN_ERR_ARG && has("non-finite"));
    tn_tensor_free(loud);

    /* errors name the path */
    char missing[300];
    path_in(missing, sizeof missing, "nope.wav");
    y = NULL;
    CHECK(tn_audio_load(&y, &sr, missing, 0) == TN_ERR_IO && has(missing) && has("No such file") && !y);
    CHECK(tn_audio_info(missing, &sr, &frames, &ch) == TN_ERR_IO && has(missing));
    FILE *f = fopen(bad, "w");
    if (f) fputs("this is not audio, just text\n", f), fclose(f);
    CHECK(tn_audio_load(&y, &sr, bad, 0) == TN_ERR_IO && has(bad) && has("as audio") && !y);
    f = fopen(empty, "w");
    if (f) fclose(f);
    CHECK(tn_audio_load(&y, &sr, empty, 0) == TN_ERR_IO && has(empty) && has("empty") && !y);
    tn_tensor *none = vec(0);
    CHECK_OK(tn_audio_save(empty, none, 16000)); /* a valid WAV header, no frames */
    CHECK_OK(tn_audio_info(empty, &sr, &frames, &ch));
    CHECK(frames == 0);
    CHECK(tn_audio_load(&y, &sr, empty, 0) == TN_ERR_IO && has("no audio frames") && !y);
    tn_tensor_free(none);
    CHECK(tn_audio_load(&y, &sr, dir, 0) == TN_ERR_IO && has("directory"));
    CHECK(tn_audio_load(&y, &sr, wav, -5) == TN_ERR_ARG && has("sample_rate"));
    CHECK(tn_audio_save(wav, x, 0) == TN_ERR_ARG && has("sample_rate"));
    char nodir[320];
    path_in(nodir, sizeof nodir, "no/such/dir/x.wav");
    CHECK(tn_audio_save(nodir, x, 16000) == TN_ERR_IO && has(nodir));
    int64_t s3[3] = {1, 2, 3};
    tn_tensor *t3 = mk(TN_F32, 3, s3);
    CHECK(tn_audio_save(wav, t3, 16000) == TN_ERR_SHAPE && has("[1, 2, 3]"));
    tn_tensor_free(t3);
    tn_tensor_free(x);
}

/* ---- resample ---------------------------------------------------------------------------------- */

/* RMS of y[from, to) minus a reference tone (amplitude a, freq Hz at rate sr). */
static double tone_err(const tn_tensor *y, int64_t from, int64_t to, double freq, double sr, double a) {
    double e = 0;
    for (int64_t i = from; i < to; i++) {
        double d = at(y, i) - a * sin(2 * TN_AUDIO_PI * freq * (double)i / sr);
        e += d * d;
    }
    return sqrt(e / (double)(to - from));
}

static double rms(const tn_tensor *y, int64_t from, int64_t to) {
    double e = 0;
    for (int64_t i = from; i < to; i++) e += at(y, i) * at(y, i);
    return sqrt(e / (double)(to - from));
}

static void test_resample(void) {
    tn_tensor *x = tone(16000, 1000, 16000, 0.5), *y = NULL;
    /* lengths: ceil(n * to / from) */
    CHECK_OK(tn_audio_resample(&y, x, 16000, 8000, 6, 0.99, TN_RESAMPLE_HANN, 0));
    CHECK(y && y->shape[0] == 8000);
    /* a 1 kHz tone stays a 1 kHz tone (interior, away from the zero-padded edges) */
    CHECK(y && tone_err(y, 100, 7900, 1000, 8000, 0.5) < 1e-3);
    tn_tensor_free(y), y = NULL;
    CHECK_OK(tn_audio_resample(&y, x, 16000, 44100, 6, 0.99, TN_RESAMPLE_KAISER, 0));
    CHECK(y && y->shape[0] == 44100 && tone_err(y, 300, 43800, 1000, 44100, 0.5) < 1e-3);
    tn_tensor_free(y), y = NULL;
    /* a tone above the new Nyquist is removed (anti-aliasing) */
    tn_tensor *hi = tone(16000, 6000, 16000, 0.5);
    CHECK_OK(tn_audio_resample(&y, hi, 16000, 8000, 6, 0.99, TN_RESAMPLE_HANN, 0));
    CHECK(y && rms(y, 100, 7900) < 0.01 * 0.5);
    tn_tensor_free(y), y = NULL;
    tn_tensor_free(hi);
    /* equal rates copy; coprime large rates still work (trimmed polyphase filter) */
    CHECK_OK(tn_audio_resample(&y, x, 16000, 16000, 6, 0.99, TN_RESAMPLE_HANN, 0));
    CHECK(same_tensor(x, y));
    tn_tensor_free(y), y = NULL;
    tn_tensor *shortx = tone(441, 1000, 44100, 0.5);
    CHECK_OK(tn_audio_resample(&y, shortx, 44100, 16001, 6, 0.99, TN_RESAMPLE_HANN, 0));
    CHECK(y && y->shape[0] == 161);
    tn_tensor_free(y), y = NULL;
    tn_tensor_free(shortx);
    /* thread count does not change the result */
    tn_tensor *a = NULL, *b = NULL;
    tn_set_num_threads(1);
    CHECK_OK(tn_audio_resample(&a, x, 16000, 22050, 6, 0.99, TN_RESAMPLE_HANN, 0));
    tn_set_num_threads(2);
    CHECK_OK(tn_audio_resample(&b, x, 16000, 22050, 6, 0.99, TN_RESAMPLE_HANN, 0));
    CHECK(same_tensor(a, b));
    tn_tensor_free(a), tn_tensor_free(b);
    /* speed perturbation: about n / factor samples */
    const double factors[3] = {0.9, 1.0, 1.1};
    const int64_t lens[3] = {17778, 16000, 14546};
    for (int k = 0; k < 3; k++) {
        CHECK_OK(tn_audio_speed(&y, x, factors[k]));
        CHECK(y && y->shape[0] == lens[k]);
        tn_tensor_free(y), y = NULL;
    }
    /* errors */
    CHECK(tn_audio_resample(&y, x, -16000, 8000, 6, 0.99, 0, 0) == TN_ERR_ARG && has("-16000") && !y);
    CHECK(tn_audio_resample(&y, x, 16000, 0, 6, 0.99, 0, 0) == TN_ERR_ARG && has("positive"));
    CHECK(tn_audio_resample(&y, x, 16000, 8000, 0, 0.99, 0, 0) == TN_ERR_ARG && has("lowpass_filter_width"));
    CHECK(tn_audio_resample(&y, x, 16000, 8000, 6, 1.5, 0, 0) == TN_ERR_ARG && has("rolloff"));
    CHECK(tn_audio_resample(&y, x, 16000, 8000, 6, 0.99, 7, 0) == TN_ERR_ARG && has("method"));
    CHECK(tn_audio_speed(&y, x, 0.0) == TN_ERR_ARG && has("factor"));
    int64_t s1[1] = {10};
    tn_tensor *i64 = mk(TN_I64, 1, s1);
    CHECK(tn_audio_resample(&y, i64, 16000, 8000, 6, 0.99, 0, 0) == TN_ERR_DTYPE && has("i64"));
    tn_tensor_free(i64);
    tn_tensor_free(x);
}

/* ---- fbank --------------------------------------------------------------------------------------- */

static void test_fbank(void) {
    tn_fbank_opts o;
    tn_fbank_opts_init(&o);
    CHECK(o.num_mel_bins == 80 && o.sample_frequency == 16000 && o.window_type == TN_WINDOW_POVEY &&
          o.snip_edges == 1 && o.dither == 0 && o.use_log_fbank == 1 && o.energy_floor == 1.0);
    int64_t frames = -1;
    CHECK_OK(tn_fbank_num_frames(&frames, 16000, &o));
    CHECK(frames == 98);
    o.snip_edges = 0;
    CHECK_OK(tn_fbank_num_frames(&frames, 16000, &o));
    CHECK(frames == 100);
    o.snip_edges = 1;
    CHECK(tn_fbank_num_frames(&frames, 399, &o) == TN_ERR_SHAPE && has("399 samples") && has("400"));

    tn_tensor *x = tone(16000, 1000, 16000, 0.5), *y = NULL;
    if (!tn_audio_has_fftw()) {
        CHECK(tn_fbank(&y, x, &o) == TN_ERR_UNSUPPORTED && has("FFTW"));
        tn_tensor_free(x);
        return;
    }
    /* a 1 kHz tone: the loudest mel bin is the one whose centre is nearest 1 kHz */
    CHECK_OK(tn_fbank(&y, x, &o));
    CHECK(y && y->shape[0] == 98 && y->shape[1] == 80);
    int best = 0;
    for (int b = 1; b < 80; b++)
        if (at(y, 50 * 80 + b) > at(y, 50 * 80 + best)) best = b;
    double ml = tn_mel_scale(20.0), mh = tn_mel_scale(8000.0);
    double centre = 700.0 * (exp((ml + (best + 1) * (mh - ml) / 81.0) / 1127.0) - 1.0);
    double step = 700.0 * (exp((ml + (best + 2) * (mh - ml) / 81.0) / 1127.0) - 1.0) - centre;
    CHECK(fabs(centre - 1000.0) <= step);
    tn_tensor_free(y), y = NULL;

    /* silence: every bin is log(FLT_EPSILON) */
    tn_tensor *z = vec(1000);
    memset(z->data, 0, 1000 * sizeof(float));
    CHECK_OK(tn_fbank(&y, z, &o));
    CHECK(y && y->shape[0] == 4 && fabs(at(y, 0) - log(FLT_EPSILON)) < 1e-6 && fabs(at(y, 319) - log(FLT_EPSILON)) < 1e-6);
    tn_tensor_free(y), y = NULL;

    /* batch == one by one, for every thread count; parallel frames == serial frames */
    tn_tensor *waves[3] = {x, z, tone(4321, 300, 16000, 0.1)};
    tn_tensor *outs[3], *single[3];
    tn_set_num_threads(1);
    for (int i = 0; i < 3; i++) {
        single[i] = NULL;
        CHECK_OK(tn_fbank(&single[i], waves[i], &o));
    }
    for (int th = 1; th <= 2; th++) {
        tn_set_num_threads(th);
        CHECK_OK(tn_fbank_batch(outs, (const tn_tensor *const *)waves, 3, &o));
        for (int i = 0; i < 3; i++) {
            CHECK(same_tensor(outs[i], single[i]));
            tn_tensor_free(outs[i]);
        }
        CHECK_OK(tn_fbank(&y, x, &o));
        CHECK(same_tensor(y, single[0]));
        tn_tensor_free(y), y = NULL;
    }
    /* batch errors: every input checked first, outs left NULL */
    tn_tensor *shortw = vec(100);
    tn_tensor *bad[3] = {x, shortw, z};
    CHECK(tn_fbank_batch(outs, (const tn_tensor *const *)bad, 3, &o) == TN_ERR_SHAPE && has("waveform 1") &&
          has("100 samples") && outs[0] == NULL && outs[2] == NULL);
    CHECK(tn_fbank(&y, shortw, &o) == TN_ERR_SHAPE && has("100 samples") && !y);

    /* dither: deterministic for a seed, independent of the thread count, batch == single */
    o.dither = 1.0;
    tn_tensor *d1 = NULL, *d2 = NULL, *d3 = NULL;
    tn_manual_seed(7);
    tn_set_num_threads(1);
    CHECK_OK(tn_fbank(&d1, z, &o));
    uint64_t seed, off;
    tn_rng_get_state(&seed, &off);
    CHECK(seed == 7 && off == 4 * 200); /* frames * ceil(400 / 2) counters */
    tn_manual_seed(7);
    tn_set_num_threads(2);
    CHECK_OK(tn_fbank(&d2, z, &o));
    CHECK(same_tensor(d1, d2));
    CHECK_OK(tn_fbank(&d3, z, &o)); /* the generator moved on */
    CHECK(!same_tensor(d1, d3));
    tn_manual_seed(7);
    tn_tensor *zz[2] = {z, z};
    CHECK_OK(tn_fbank_batch(outs, (const tn_tensor *const *)zz, 2, &o));
    CHECK(same_tensor(outs[0], d1) && same_tensor(outs[1], d3));
    tn_tensor_free(outs[0]), tn_tensor_free(outs[1]);
    /* silence dithered by N(0, 1): raw log energy of a frame ~ log(399) (DC removed) */
    o.use_energy = 1;
    tn_tensor *long_z = vec(160000), *de = NULL;
    memset(long_z->data, 0, 160000 * sizeof(float));
    CHECK_OK(tn_fbank(&de, long_z, &o));
    double mean_e = 0;
    for (int64_t f = 0; f < de->shape[0]; f++) mean_e += at(de, f * 81);
    mean_e /= (double)de->shape[0];
    CHECK(fabs(mean_e - log(399.0)) < 0.01);
    tn_tensor_free(de), tn_tensor_free(long_z);
    o.use_energy = 0;
    tn_tensor_free(d1), tn_tensor_free(d2), tn_tensor_free(d3);
    o.dither = 0;

    /* option errors */
    tn_fbank_opts b = o;
    b.num_mel_bins = 3;
    CHECK(tn_fbank(&y, x, &b) == TN_ERR_ARG && has("num_mel_bins"));
    b = o, b.high_freq = 9000;
    CHECK(tn_fbank(&y, x, &b) == TN_ERR_ARG && has("high_freq"));
    b = o, b.frame_shift = 0;
    CHECK(tn_fbank(&y, x, &b) == TN_ERR_ARG && has("frame_shift"));
    b = o, b.preemphasis_coefficient = 1.5;
    CHECK(tn_fbank(&y, x, &b) == TN_ERR_ARG && has("preemphasis"));
    b = o, b.round_to_power_of_two = 0, b.frame_length = 25.0625; /* 401 samples: odd FFT */
    CHECK(tn_fbank(&y, x, &b) == TN_ERR_ARG && has("even"));
    b = o, b.window_type = 9;
    CHECK(tn_fbank(&y, x, &b) == TN_ERR_ARG && has("window_type"));
    int64_t s2[2] = {2, 800};
    tn_tensor *two = mk(TN_F32, 2, s2);
    CHECK(tn_fbank(&y, two, &o) == TN_ERR_SHAPE && has("[2, 800]"));
    tn_tensor_free(two);
    CHECK(!y);

    tn_tensor_free(shortw);
    for (int i = 0; i < 3; i++) tn_tensor_free(single[i]);
    tn_tensor_free(waves[2]);
    tn_tensor_free(z);
    tn_tensor_free(x);
}

/* ---- SpecAugment and CMVN ------------------------------------------------------------------------------ */

static int64_t count_value(const tn_tensor *t, float v) {
    int64_t n = 0, N = tn_tensor_numel(t);
    for (int64_t i = 0; i < N; i++) n += at(t, i) == v;
    return n;
}

static void test_spec_augment(void) {
    int64_t s3[3] = {3, 50, 20};
    tn_tensor *a = mk(TN_F32, 3, s3), *b = mk(TN_F32, 3, s3);
    for (int64_t i = 0; i < 3000; i++) put(a, i, 1.0), put(b, i, 1.0);
    int64_t sl[1] = {3};
    tn_tensor *len = mk(TN_I64, 1, sl);
    put(len, 0, 50), put(len, 1, 30), put(len, 2, 0);
    tn_manual_seed(3);
    CHECK_OK(tn_spec_augment(a, len, 2, 10, 2, 5, -7.0));
    uint64_t seed, off;
    tn_rng_get_state(&seed, &off);
    CHECK(off == 3 * 4);
    tn_manual_seed(3);
    CHECK_OK(tn_spec_augment(b, len, 2, 10, 2, 5, -7.0));
    CHECK(same_tensor(a, b));
    int64_t masked = count_value(a, -7.0f);
    CHECK(masked > 0);
    /* nothing masked beyond an utterance's length (utterance 1: frames 30..49; utterance 2: all) */
    int64_t outside = 0;
    for (int64_t t = 30; t < 50; t++)
        for (int64_t f = 0; f < 20; f++) outside += at(a, (1 * 50 + t) * 20 + f) == -7.0;
    for (int64_t i = 2 * 1000; i < 3000; i++) outside += at(a, i) == -7.0;
    CHECK(outside == 0);
    /* a time mask covers whole frames, at most 2 * 10 of them per utterance */
    int64_t full_rows = 0;
    for (int64_t t = 0; t < 50; t++) {
        int all = 1;
        for (int64_t f = 0; f < 20; f++) all &= at(a, t * 20 + f) == -7.0;
        full_rows += all;
    }
    CHECK(full_rows <= 20);
    /* a different seed gives different masks */
    for (int64_t i = 0; i < 3000; i++) put(b, i, 1.0);
    tn_manual_seed(4);
    CHECK_OK(tn_spec_augment(b, len, 2, 10, 2, 5, -7.0));
    CHECK(!same_tensor(a, b));
    /* fraction widths: 0.5 of 50 frames; zero masks leave the input alone */
    for (int64_t i = 0; i < 3000; i++) put(b, i, 1.0);
    CHECK_OK(tn_spec_augment(b, NULL, 0, 0.5, 0, 27, 0.0));
    CHECK(count_value(b, 0.0f) == 0);
    int64_t s2[2] = {50, 20};
    tn_tensor *c = mk(TN_F32, 2, s2);
    for (int64_t i = 0; i < 1000; i++) put(c, i, 1.0);
    CHECK_OK(tn_spec_augment(c, NULL, 1, 0.5, 0, 0, 0.0));
    int64_t z = count_value(c, 0.0f);
    CHECK(z % 20 == 0 && z <= 25 * 20);
    /* errors */
    CHECK(tn_spec_augment(c, NULL, -1, 10, 2, 5, 0) == TN_ERR_ARG && has("time_masks"));
    put(len, 1, 51);
    CHECK(tn_spec_augment(a, len, 2, 10, 2, 5, 0) == TN_ERR_INDEX && has("51"));
    CHECK(tn_spec_augment(c, len, 2, 10, 2, 5, 0) == TN_ERR_SHAPE && has("lengths"));
    tn_tensor_free(a), tn_tensor_free(b), tn_tensor_free(c), tn_tensor_free(len);
}

static void test_cmvn(void) {
    int64_t s[2] = {4, 3}, ss[2] = {2, 3};
    tn_tensor *f = mk(TN_F32, 2, s), *st = mk(TN_F64, 2, ss);
    for (int64_t i = 0; i < 12; i++) put(f, i, (double)i);
    for (int64_t i = 0; i < 6; i++) put(st, i, 0.0);
    int64_t count = 0;
    CHECK_OK(tn_cmvn_accumulate(st, &count, f));
    CHECK_OK(tn_cmvn_accumulate(st, &count, f));
    CHECK(count == 8);
    CHECK(at(st, 0) == 2 * (0 + 3 + 6 + 9) && at(st, 3) == 2 * (0 + 9 + 36 + 81));
    int64_t bs[2] = {2, 4};
    tn_tensor *wrong = mk(TN_F64, 2, bs);
    CHECK(tn_cmvn_accumulate(wrong, &count, f) == TN_ERR_SHAPE && has("(2, 3)"));
    tn_tensor_free(f), tn_tensor_free(st), tn_tensor_free(wrong);
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/tern_test_audio_XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_files();
    test_resample();
    test_fbank();
    test_spec_augment();
    test_cmvn();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_report("test_audio");
}
