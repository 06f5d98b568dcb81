/*
 * fbank.c — Kaldi-compatible log-mel filterbanks (compute-fbank-feats), computed as
 * torchaudio.compliance.kaldi.fbank (0.13) does, through FFTW's real FFT.
 *
 * Per frame (window_size = int(sample_frequency * frame_length / 1000) samples, one every
 * window_shift): copy (snip_edges = 0: reflected at the ends, Kaldi's rule), dither, remove
 * the DC offset, raw log energy, pre-emphasis (x[j] -= c x[j-1], x[0] -= c x[0]), window, zero
 * pad to padded_window_size, |rfft|^2, triangular mel bins (sparse: only the FFT bins inside
 * each triangle), log(max(., FLT_EPSILON)). The mel bank is computed in f32 as torchaudio
 * does (same weights); the frame, its FFT (fftw3, double) and the sums run in f64, the output
 * is f32. Why f64: torchaudio's f32 result is itself up to ~8e-4 off the exact value in a mel
 * bin ~100 dB below the frame's peak (f32 FFT rounding); an f32 tern would add its own error of
 * that size and miss the 1e-3 match, while in f64 it stays within ~1e-5 of torchaudio's f64
 * run. The f64 FFT of 512 points costs little next to the rest (1 h of audio: ~1 s / thread).
 *
 * FFTW: planning is not thread-safe, execution of one plan on other arrays is (fftw_execute_dft
 * and friends, "new-array execute"). One plan per FFT size is created on first use under a
 * mutex with FFTW_ESTIMATE (deterministic: the same algorithm on every run, so features
 * cached on disk stay reproducible) and kept for the life of the process; every thread runs
 * it on its own fftw_malloc'd buffers (the alignment the plan was made with).
 * Parallelism: tn_fbank splits frames over OpenMP threads, tn_fbank_batch splits waveforms.
 * Without FFTW (TERN_HAVE_FFTW undefined) the entry points return TN_ERR_UNSUPPORTED.
 * No gradient.
 */
#include <float.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "kernels/audio.h"
#include "kernels/philox.h"

#ifdef TERN_HAVE_FFTW
#include <fftw3.h>
#include <pthread.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

int tn_audio_has_fftw(void) {
#ifdef TERN_HAVE_FFTW
    return 1;
#else
    return 0;
#endif
}

void tn_fbank_opts_init(tn_fbank_opts *o) {
    if (!o) return;
    memset(o, 0, sizeof *o);
    o->sample_frequency = 16000.0;
    o->frame_length = 25.0;
    o->frame_shift = 10.0;
    o->dither = 0.0;
    o->preemphasis_coefficient = 0.97;
    o->low_freq = 20.0;
    o->high_freq = 0.0;
    o->energy_floor = 1.0;
    o->blackman_coeff = 0.42;
    o->num_mel_bins = 80;
    o->window_type = TN_WINDOW_POVEY;
    o->remove_dc_offset = 1;
    o->round_to_power_of_two = 1;
    o->snip_edges = 1;
    o->raw_energy = 1;
    o->use_energy = 0;
    o->htk_compat = 0;
    o->use_log_fbank = 1;
    o->use_power = 1;
}

/* ---- options and geometry ------------------------------------------------------------------ */

typedef struct fb_geom {
    int64_t window_size, window_shift, padded;
} fb_geom;

static tn_status fb_check_opts(const char *op, const tn_fbank_opts *o, fb_geom *g) {
    if (!o) return tn_error(TN_ERR_ARG, "%s: opts is NULL (tn_fbank_opts_init gives the defaults)", op);
    if (!(o->sample_frequency > 0) || !isfinite(o->sample_frequency))
        return tn_error(TN_ERR_ARG, "%s: sample_frequency must be positive, got %g", op, o->sample_frequency);
    if (!(o->frame_length > 0) || !(o->frame_shift > 0) || !isfinite(o->frame_length) || !isfinite(o->frame_shift))
        return tn_error(TN_ERR_ARG, "%s: frame_length and frame_shift must be positive (ms), got %g and %g", op,
                        o->frame_length, o->frame_shift);
    /* int(sample_frequency * frame_shift * MILLISECONDS_TO_SECONDS), as torchaudio */
    double ws = o->sample_frequency * o->frame_shift * 0.001, wl = o->sample_frequency * o->frame_length * 0.001;
    if (wl > 1e9 || ws > 1e9)
        return tn_error(TN_ERR_ARG, "%s: frame_length %g ms / frame_shift %g ms at %g Hz are too long", op,
                        o->frame_length, o->frame_shift, o->sample_frequency);
    g->window_shift = (int64_t)ws;
    g->window_size = (int64_t)wl;
    if (g->window_shift < 1)
        return tn_error(TN_ERR_ARG, "%s: frame_shift %g ms at %g Hz is less than one sample", op, o->frame_shift,
                        o->sample_frequency);
    if (g->window_size < 2)
        return tn_error(TN_ERR_ARG, "%s: frame_length %g ms at %g Hz gives a window of %lld samples (need >= 2)", op,
                        o->frame_length, o->sample_frequency, (long long)g->window_size);
    int64_t p = g->window_size;
    if (o->round_to_power_of_two) {
        p = 1;
        while (p < g->window_size) p <<= 1;
    }
    g->padded = p;
    if (p % 2 != 0)
        return tn_error(TN_ERR_ARG, "%s: the FFT size %lld (window of %lld samples) must be even; use "
                        "round_to_power_of_two or change frame_length", op, (long long)p, (long long)g->window_size);
    if (!(o->preemphasis_coefficient >= 0.0 && o->preemphasis_coefficient <= 1.0))
        return tn_error(TN_ERR_ARG, "%s: preemphasis_coefficient must be in [0, 1], got %g", op,
                        o->preemphasis_coefficient);
    if (!(o->dither >= 0.0) || !isfinite(o->dither))
        return tn_error(TN_ERR_ARG, "%s: dither must be >= 0, got %g", op, o->dither);
    if (!(o->energy_floor >= 0.0) || !isfinite(o->energy_floor))
        return tn_error(TN_ERR_ARG, "%s: energy_floor must be >= 0, got %g", op, o->energy_floor);
    if (o->num_mel_bins <= 3)
        return tn_error(TN_ERR_ARG, "%s: num_mel_bins must be > 3, got %d", op, o->num_mel_bins);
    if (o->window_type < TN_WINDOW_HAMMING || o->window_type > TN_WINDOW_BLACKMAN)
        return tn_error(TN_ERR_ARG, "%s: window_type must be 0..4 (hamming, hanning, povey, rectangular, "
                        "blackman), got %d", op, o->window_type);
    double nyquist = 0.5 * o->sample_frequency, high = o->high_freq <= 0.0 ? o->high_freq + nyquist : o->high_freq;
    if (!(0.0 <= o->low_freq && o->low_freq < nyquist && 0.0 < high && high <= nyquist && o->low_freq < high))
        return tn_error(TN_ERR_ARG, "%s: bad low_freq %g and high_freq %g (-> %g) for Nyquist %g Hz "
                        "(need 0 <= low < high <= Nyquist; high <= 0 counts from Nyquist)", op, o->low_freq,
                        o->high_freq, high, nyquist);
    return TN_OK;
}

static int64_t fb_frames(const fb_geom *g, int64_t n, int snip_edges) {
    if (snip_edges) return n < g->window_size ? 0 : 1 + (n - g->window_size) / g->window_shift;
    return (n + g->window_shift / 2) / g->window_shift;
}

static tn_status fb_check_len(const char *op, const fb_geom *g, const tn_fbank_opts *o, int64_t n, int64_t which) {
    if (n < g->window_size) {
        char where[48] = "";
        if (which >= 0) snprintf(where, sizeof where, " (waveform %lld)", (long long)TN_D(which));
        return tn_error(TN_ERR_SHAPE, "%s: waveform%s has %lld samples, fewer than one frame of %lld samples "
                        "(frame_length %g ms at %g Hz)", op, where, (long long)n, (long long)g->window_size,
                        o->frame_length, o->sample_frequency);
    }
    return TN_OK;
}

tn_status tn_fbank_num_frames(int64_t *frames, int64_t num_samples, const tn_fbank_opts *opts) {
    static const char *op = "fbank";
    if (!frames) return tn_error(TN_ERR_ARG, "%s: frames is NULL", op);
    fb_geom g = {0, 0, 0};
    TN_TRY(fb_check_opts(op, opts, &g));
    TN_TRY(fb_check_len(op, &g, opts, num_samples, -1));
    *frames = fb_frames(&g, num_samples, opts->snip_edges);
    return TN_OK;
}

#ifndef TERN_HAVE_FFTW

static tn_status no_fftw(void) {
    return tn_error(TN_ERR_UNSUPPORTED,
                    "fbank: this build of tern has no FFTW (fftw3); install libfftw3-dev and rebuild");
}
tn_status tn_fbank(tn_tensor **out, const tn_tensor *wave, const tn_fbank_opts *opts) {
    (void)out, (void)wave, (void)opts;
    return no_fftw();
}
tn_status tn_fbank_batch(tn_tensor **outs, const tn_tensor *const *waves, int32_t n, const tn_fbank_opts *opts) {
    (void)outs, (void)waves, (void)n, (void)opts;
    return no_fftw();
}

#else

static tn_status check_wave(const char *op, const tn_tensor *w, int64_t which) {
    char name[40];
    if (which < 0) snprintf(name, sizeof name, "waveform");
    else snprintf(name, sizeof name, "waveform %lld", (long long)TN_D(which));
    TN_TRY(tn_check_tensor(op, name, w));
    TN_TRY(tn_check_cpu(op, w));
    if (w->dtype != TN_F32)
        return tn_error(TN_ERR_DTYPE, "%s: %s must be f32, got %s (shape %s)", op, name, tn_dtype_name(w->dtype),
                        TN_SHAPE(w));
    if (w->ndim != 1)
        return tn_error(TN_ERR_SHAPE, "%s: %s must be 1-D (samples), got shape %s", op, name, TN_SHAPE(w));
    return TN_OK;
}

/* ---- FFTW plan cache ----------------------------------------------------------------------- */

enum { PLAN_CACHE = 16 };
static struct {
    int64_t n;
    fftw_plan plan;
} plan_cache[PLAN_CACHE];
static int plan_count = 0;
static pthread_mutex_t plan_lock = PTHREAD_MUTEX_INITIALIZER;

/* The r2c plan of size n (created once; FFTW planning is serialised by plan_lock). */
static fftw_plan get_plan(int64_t n) {
    fftw_plan p = NULL;
    pthread_mutex_lock(&plan_lock);
    for (int i = 0; i < plan_count; i++)
        if (plan_cache[i].n == n) p = plan_cache[i].plan;
    if (!p) {
        double *in = fftw_malloc(sizeof(double) * (size_t)n);
        fftw_complex *out = fftw_malloc(sizeof(fftw_complex) * (size_t)(n / 2 + 1));
        if (in && out) p = fftw_plan_dft_r2c_1d((int)n, in, out, FFTW_ESTIMATE);
        fftw_free(in);
        fftw_free(out);
        if (p) {
            if (plan_count == PLAN_CACHE) { /* full: drop the oldest (not in use: see below) */
                /* Plans handed out earlier may still run on other threads; keep them alive
                 * rather than destroy them (a handful of distinct sizes in practice). */
                memmove(plan_cache, plan_cache + 1, sizeof plan_cache[0] * (PLAN_CACHE - 1));
                plan_count--;
            }
            plan_cache[plan_count].n = n;
            plan_cache[plan_count].plan = p;
            plan_count++;
        }
    }
    pthread_mutex_unlock(&plan_lock);
    return p;
}

/* ---- the filterbank setup ------------------------------------------------------------------- */

typedef struct fb_setup {
    fb_geom g;
    tn_fbank_opts o;
    int64_t nfft;           /* padded / 2 + 1 */
    int64_t cols;           /* num_mel_bins + use_energy */
    double *window;         /* (window_size) */
    int64_t *bin_lo, *bin_len, *bin_off; /* (num_mel_bins) FFT bins [lo, lo + len) of each mel bin */
    float *bin_w;           /* (sum of bin_len) weights */
    fftw_plan plan;
} fb_setup;

static void fb_setup_free(fb_setup *s) {
    free(s->window);
    free(s->bin_lo);
    free(s->bin_len);
    free(s->bin_off);
    free(s->bin_w);
}

static float mel_f32(float hz) { return 1127.0f * logf(1.0f + hz / 700.0f); }

static tn_status fb_setup_init(const char *op, fb_setup *s, const tn_fbank_opts *o) {
    memset(s, 0, sizeof *s);
    TN_TRY(fb_check_opts(op, o, &s->g));
    s->o = *o;
    int64_t w = s->g.window_size, padded = s->g.padded, nb = o->num_mel_bins;
    s->nfft = padded / 2 + 1;
    s->cols = nb + (o->use_energy ? 1 : 0);
    s->window = malloc(sizeof(double) * (size_t)w);
    s->bin_lo = malloc(sizeof(int64_t) * (size_t)nb);
    s->bin_len = malloc(sizeof(int64_t) * (size_t)nb);
    s->bin_off = malloc(sizeof(int64_t) * (size_t)nb);
    s->bin_w = malloc(sizeof(float) * (size_t)nb * (size_t)(padded / 2));
    float *mel = malloc(sizeof(float) * (size_t)(padded / 2));
    if (!s->window || !s->bin_lo || !s->bin_len || !s->bin_off || !s->bin_w || !mel) {
        free(mel);
        fb_setup_free(s);
        return tn_error(TN_ERR_OOM, "%s: out of memory for the filterbank", op);
    }
    for (int64_t i = 0; i < w; i++)
        s->window[i] = tn_kaldi_window(o->window_type, i, w, o->blackman_coeff);

    /* kaldi.get_mel_banks in f32 (torch default dtype); the Nyquist column gets no weight */
    double nyquist = 0.5 * o->sample_frequency;
    double high = o->high_freq <= 0.0 ? o->high_freq + nyquist : o->high_freq;
    double fft_bin_width = o->sample_frequency / (double)padded;
    double mel_low = tn_mel_scale(o->low_freq), mel_high = tn_mel_scale(high);
    double delta = (mel_high - mel_low) / (double)(nb + 1);
    /* torch: (f32) fft_bin_width * arange(f32), and mel_low + bin * delta with bin an integer
     * tensor: every product and sum rounded to f32 */
    float fbw = (float)fft_bin_width, fdelta = (float)delta, fml = (float)mel_low;
    for (int64_t k = 0; k < padded / 2; k++) mel[k] = mel_f32(fbw * (float)k);
    int64_t total = 0;
    for (int64_t b = 0; b < nb; b++) {
        float left = fml + (float)b * fdelta;
        float center = fml + (float)(b + 1) * fdelta;
        float right = fml + (float)(b + 2) * fdelta;
        int64_t lo = -1, hi = -1;
        for (int64_t k = 0; k < padded / 2; k++) {
            float up = (mel[k] - left) / (center - left), down = (right - mel[k]) / (right - center);
            float v = up < down ? up : down;
            if (v > 0.0f) {
                if (lo < 0) lo = k;
                hi = k;
            }
        }
        s->bin_off[b] = total;
        if (lo < 0) { /* an empty triangle (too many bins for the FFT size): all weights 0 */
            s->bin_lo[b] = 0;
            s->bin_len[b] = 0;
            continue;
        }
        s->bin_lo[b] = lo;
        s->bin_len[b] = hi - lo + 1;
        for (int64_t k = lo; k <= hi; k++) {
            float up = (mel[k] - left) / (center - left), down = (right - mel[k]) / (right - center);
            float v = up < down ? up : down;
            s->bin_w[total++] = v > 0.0f ? v : 0.0f;
        }
    }
    free(mel);
    s->plan = get_plan(padded);
    if (!s->plan) {
        fb_setup_free(s);
        return tn_error(TN_ERR_UNSUPPORTED, "%s: FFTW could not plan a real FFT of size %lld", op, (long long)padded);
    }
    return TN_OK;
}

/* Per-thread scratch: the frame (padded), its spectrum (nfft complex) and power (nfft). */
typedef struct fb_work {
    double *frame;          /* (padded) */
    fftw_complex *spec;     /* (nfft) */
    double *power;          /* (nfft) */
} fb_work;

static int fb_work_alloc(fb_work *w, const fb_setup *s) {
    w->frame = fftw_malloc(sizeof(double) * (size_t)s->g.padded);
    w->spec = fftw_malloc(sizeof(fftw_complex) * (size_t)s->nfft);
    w->power = fftw_malloc(sizeof(double) * (size_t)s->nfft);
    return w->frame && w->spec && w->power;
}

static void fb_work_free(fb_work *w) {
    fftw_free(w->frame);
    fftw_free(w->spec);
    fftw_free(w->power);
}

/* Frames [f0, f1) of waveform x (n) into rows of out (cols each). dither_base: the first RNG
 * counter of this waveform: samples j and j + 1 (j even) of frame f take the cosine and sine
 * Box-Muller normals of counter dither_base + f ceil(window_size / 2) + j / 2 (u1, u2 as
 * tn_philox_normal draws them). */
static void fb_frames_run(const fb_setup *s, fb_work *wk, float *out, const float *x, int64_t n, int64_t f0,
                          int64_t f1, uint64_t seed, uint64_t dither_base) {
    const tn_fbank_opts *o = &s->o;
    const int64_t w = s->g.window_size, shift = s->g.window_shift, padded = s->g.padded;
    const int64_t nb = o->num_mel_bins;
    const double eps = FLT_EPSILON;
    const double log_floor = o->energy_floor > 0 ? (double)(float)log(o->energy_floor) : -INFINITY;
    const double pre = o->preemphasis_coefficient;
    const int64_t e_col = o->htk_compat ? nb : 0, m_col = o->use_energy && !o->htk_compat ? 1 : 0;
    double *d = wk->frame;
    for (int64_t f = f0; f < f1; f++) {
        /* copy, with Kaldi's reflection at the ends when not snipping */
        if (o->snip_edges) {
            const float *src = x + f * shift;
            for (int64_t j = 0; j < w; j++) d[j] = src[j];
        } else {
            int64_t start = f * shift + shift / 2 - w / 2;
            for (int64_t j = 0; j < w; j++) {
                int64_t q = start + j;
                while (q < 0 || q >= n) { /* one reflection suffices when n >= w */
                    if (q < 0) q = -q - 1;
                    else q = 2 * n - 1 - q;
                }
                d[j] = x[q];
            }
        }
        if (o->dither > 0) { /* two normals per counter: Box-Muller's cosine and sine */
            uint64_t c0 = dither_base + (uint64_t)f * (uint64_t)((w + 1) / 2);
            for (int64_t j = 0; j < w; j += 2) {
                uint32_t r[4];
                tn_philox_at(seed, c0 + (uint64_t)(j / 2), r);
                double u1 = ((double)((((uint64_t)r[1] << 32) | r[0]) >> 11) + 1.0) * 1.1102230246251565404e-16;
                double u2 = tn_philox_u53(r[2], r[3]);
                double rad = o->dither * sqrt(-2.0 * log(u1)), th = 6.283185307179586476925 * u2;
                d[j] += rad * cos(th);
                if (j + 1 < w) d[j + 1] += rad * sin(th);
            }
        }
        if (o->remove_dc_offset) {
            double sum = 0;
            for (int64_t j = 0; j < w; j++) sum += d[j];
            double mean = sum / (double)w;
            for (int64_t j = 0; j < w; j++) d[j] -= mean;
        }
        double energy = 0;
        if (o->raw_energy)
            for (int64_t j = 0; j < w; j++) energy += d[j] * d[j];
        if (pre != 0.0) {
            for (int64_t j = w - 1; j > 0; j--) d[j] -= pre * d[j - 1];
            d[0] -= pre * d[0];
        }
        for (int64_t j = 0; j < w; j++) d[j] *= s->window[j];
        if (!o->raw_energy)
            for (int64_t j = 0; j < w; j++) energy += d[j] * d[j];
        for (int64_t j = w; j < padded; j++) d[j] = 0.0;
        float *row = out + f * s->cols;
        if (o->use_energy) {
            double le = log(energy > eps ? energy : eps);
            row[e_col] = (float)(le > log_floor ? le : log_floor);
        }

        fftw_execute_dft_r2c(s->plan, d, wk->spec);
        double *pw = wk->power;
        for (int64_t k = 0; k < s->nfft; k++) {
            double re = wk->spec[k][0], im = wk->spec[k][1];
            double p2 = re * re + im * im;
            pw[k] = o->use_power ? p2 : sqrt(p2);
        }
        for (int64_t b = 0; b < nb; b++) {
            const float *wt = s->bin_w + s->bin_off[b];
            const double *pk = pw + s->bin_lo[b];
            int64_t len = s->bin_len[b];
            double acc = 0.0;
            for (int64_t k = 0; k < len; k++) acc += (double)wt[k] * pk[k];
            if (o->use_log_fbank) acc = log(acc > eps ? acc : eps);
            row[m_col + b] = (float)acc;
        }
    }
}

/* Reserve count counters of the global generator: returns the seed and the first counter. */
static void reserve_counters(uint64_t count, uint64_t *seed, uint64_t *base) {
    tn_rng_get_state(seed, base);
    tn_rng_set_state(*seed, *base + count);
}

enum { FB_PARALLEL_MIN_FRAMES = 64 };

tn_status tn_fbank(tn_tensor **out, const tn_tensor *wave, const tn_fbank_opts *opts) {
    static const char *op = "fbank";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", op);
    TN_TRY(check_wave(op, wave, -1));
    fb_setup s;
    TN_TRY(fb_setup_init(op, &s, opts));
    int64_t n = wave->shape[0];
    tn_status st = fb_check_len(op, &s.g, opts, n, -1);
    if (st != TN_OK) {
        fb_setup_free(&s);
        return st;
    }
    int64_t frames = fb_frames(&s.g, n, opts->snip_edges);
    int64_t shape[2] = {frames, s.cols};
    int allocated = *out == NULL;
    tn_tensor *xc = NULL;
    st = tn_prepare_out(op, out, 2, shape, TN_F32, TN_CPU);
    if (st == TN_OK && !tn_tensor_is_contiguous(*out))
        st = tn_error(TN_ERR_ARG, "%s: out must be contiguous (shape %s)", op, TN_SHAPE(*out));
    if (st == TN_OK) st = tn_contiguous(&xc, wave);
    if (st != TN_OK) {
        fb_setup_free(&s);
        if (allocated && *out) {
            tn_tensor_free(*out);
            *out = NULL;
        }
        return st;
    }
    uint64_t seed = 0, base = 0;
    if (opts->dither > 0) reserve_counters((uint64_t)frames * (uint64_t)((s.g.window_size + 1) / 2), &seed, &base);
    int failed = 0;
    float *dst = (float *)(*out)->data;
    const float *x = (const float *)xc->data;
#pragma omp parallel if (frames >= FB_PARALLEL_MIN_FRAMES)
    {
        fb_work wk;
        int ok = fb_work_alloc(&wk, &s);
        if (!ok) __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
        int64_t nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        t = omp_get_thread_num();
#endif
        /* static split; a thread that could not allocate leaves its share and the call fails */
        int64_t f0 = frames * t / nt, f1 = frames * (t + 1) / nt;
        if (ok) fb_frames_run(&s, &wk, dst, x, n, f0, f1, seed, base);
        fb_work_free(&wk);
    }
    tn_tensor_free(xc);
    fb_setup_free(&s);
    if (failed) {
        if (allocated) {
            tn_tensor_free(*out);
            *out = NULL;
        }
        return tn_error(TN_ERR_OOM, "%s: out of memory for the FFT buffers", op);
    }
    return TN_OK;
}

tn_status tn_fbank_batch(tn_tensor **outs, const tn_tensor *const *waves, int32_t n, const tn_fbank_opts *opts) {
    static const char *op = "fbank_batch";
    if (!outs || (!waves && n > 0)) return tn_error(TN_ERR_ARG, "%s: outs or waves is NULL", op);
    if (n < 0) return tn_error(TN_ERR_ARG, "%s: n must be >= 0, got %d", op, n);
    for (int32_t i = 0; i < n; i++) outs[i] = NULL;
    fb_setup s;
    TN_TRY(fb_setup_init(op, &s, opts));
    tn_status st = TN_OK;
    for (int32_t i = 0; i < n && st == TN_OK; i++) {
        st = check_wave(op, waves[i], i);
        if (st == TN_OK && !tn_tensor_is_contiguous(waves[i]))
            st = tn_error(TN_ERR_ARG, "%s: waveform %lld must be contiguous (shape %s)", op, (long long)TN_D(i),
                          TN_SHAPE(waves[i]));
        if (st == TN_OK) st = fb_check_len(op, &s.g, opts, waves[i]->shape[0], i);
    }
    uint64_t *dbase = malloc(sizeof(uint64_t) * (size_t)(n > 0 ? n : 1));
    if (st == TN_OK && !dbase) st = tn_error(TN_ERR_OOM, "%s: out of memory", op);
    uint64_t total = 0;
    for (int32_t i = 0; i < n && st == TN_OK; i++) {
        int64_t frames = fb_frames(&s.g, waves[i]->shape[0], opts->snip_edges);
        int64_t shape[2] = {frames, s.cols};
        st = tn_tensor_empty(&outs[i], 2, shape, TN_F32, TN_CPU);
        dbase[i] = total;
        total += (uint64_t)frames * (uint64_t)((s.g.window_size + 1) / 2);
    }
    if (st != TN_OK) {
        for (int32_t i = 0; i < n; i++) {
            tn_tensor_free(outs[i]);
            outs[i] = NULL;
        }
        free(dbase);
        fb_setup_free(&s);
        return st;
    }
    uint64_t seed = 0, base = 0;
    if (opts->dither > 0) reserve_counters(total, &seed, &base);
    int failed = 0;
#pragma omp parallel if (n > 1)
    {
        fb_work wk;
        int ok = fb_work_alloc(&wk, &s);
        if (!ok) __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
#pragma omp for schedule(dynamic, 1)
        for (int32_t i = 0; i < n; i++) {
            if (!ok) continue;
            int64_t len = waves[i]->shape[0];
            fb_frames_run(&s, &wk, (float *)outs[i]->data, (const float *)waves[i]->data, len, 0,
                          outs[i]->shape[0], seed, base + dbase[i]);
        }
        fb_work_free(&wk);
    }
    free(dbase);
    fb_setup_free(&s);
    if (failed) {
        for (int32_t i = 0; i < n; i++) {
            tn_tensor_free(outs[i]);
            outs[i] = NULL;
        }
        return tn_error(TN_ERR_OOM, "%s: out of memory for the FFT buffers", op);
    }
    return TN_OK;
}

#endif /* TERN_HAVE_FFTW */
