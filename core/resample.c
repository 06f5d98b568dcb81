/*
 * resample.c — band-limited resampling as torchaudio.functional.resample (0.13) does it, and
 * speed perturbation on top of it.
 *
 * With the rates reduced by their gcd to orig -> new, torchaudio builds one windowed-sinc
 * filter per output phase p in [0, new) over 2 width + orig input taps
 * (width = ceil(lowpass_filter_width * orig / base), base = min(orig, new) * rolloff) and
 * runs them as a strided conv1d over the input zero-padded by width on the left:
 *   y[j new + p] = sum_k x[j orig + k - width] K[p][k].
 * Most taps of a phase lie beyond lowpass_filter_width zero crossings, where the window
 * makes them (numerically) 0; this file keeps only the taps inside (plus one on each side),
 * so the cost is about 2 lowpass_filter_width orig / base multiply-adds per output instead of
 * 2 width + orig, and the filter of two coprime rates like 44100 -> 16001 still fits in
 * memory. The taps are computed in f64 as torchaudio does and rounded to f32; the sums run
 * in f32. No gradient.
 */
#include <stdlib.h>

#include "internal.h"
#include "kernels/audio.h"

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Per-phase trimmed filters: phase p has taps [lo[p], lo[p] + len[p]) of the full 2 width +
 * orig, stored at taps + off[p]. */
typedef struct rs_filter {
    int64_t orig, new_, width;
    int64_t *lo, *len, *off; /* (new_) */
    float *taps;             /* (sum of len) */
} rs_filter;

static void rs_filter_free(rs_filter *f) {
    free(f->lo);
    free(f->len);
    free(f->off);
    free(f->taps);
}

static tn_status rs_filter_build(rs_filter *f, int64_t orig, int64_t new_, int32_t lpw, double rolloff,
                                 int32_t method, double beta) {
    memset(f, 0, sizeof *f);
    double base = (double)(orig < new_ ? orig : new_) * rolloff;
    int64_t width = (int64_t)ceil((double)lpw * (double)orig / base);
    int64_t ktot = 2 * width + orig;
    f->orig = orig, f->new_ = new_, f->width = width;
    f->lo = malloc((size_t)new_ * sizeof(int64_t));
    f->len = malloc((size_t)new_ * sizeof(int64_t));
    f->off = malloc((size_t)new_ * sizeof(int64_t));
    if (!f->lo || !f->len || !f->off) goto oom;
    double reach = (double)lpw / base * (double)orig; /* half support, in input samples */
    int64_t total = 0;
    for (int64_t p = 0; p < new_; p++) {
        double c = (double)width + (double)orig * (double)p / (double)new_;
        int64_t lo = (int64_t)floor(c - reach) - 1, hi = (int64_t)ceil(c + reach) + 1;
        if (lo < 0) lo = 0;
        if (hi > ktot - 1) hi = ktot - 1;
        f->lo[p] = lo;
        f->len[p] = hi - lo + 1;
        f->off[p] = total;
        total += f->len[p];
    }
    f->taps = malloc((size_t)total * sizeof(float));
    if (!f->taps) goto oom;
    int kaiser = method == TN_RESAMPLE_KAISER;
    double beta_f = (double)(float)beta;                       /* torch.tensor(float(beta)): f32 */
    double i0_beta = kaiser ? (double)(float)tn_bessel_i0(beta_f) : 1.0; /* torch.i0 of that f32 tensor */
    double scale = base / (double)orig;
    for (int64_t p = 0; p < new_; p++) {
        /* torch.arange(0, -new, -1) / new is an f32 division; + idx (f64) promotes to f64 */
        double tp = (double)((float)(-p) / (float)new_);
        float *dst = f->taps + f->off[p];
        for (int64_t k = 0; k < f->len[p]; k++) {
            double idx = (double)(f->lo[p] + k - width) / (double)orig;
            dst[k] = (float)tn_sinc_tap((tp + idx) * base, (double)lpw, scale, kaiser, beta_f, i0_beta);
        }
    }
    return TN_OK;
oom:
    rs_filter_free(f);
    return tn_error(TN_ERR_OOM, "audio.resample: out of memory for the %lld-phase filter", (long long)new_);
}

/* y (m) from x (n) through f: block j of new_ outputs reads the input from j orig on. */
static void rs_apply(float *y, int64_t m, const float *x, int64_t n, const rs_filter *f) {
    const int64_t orig = f->orig, new_ = f->new_, width = f->width;
    const int64_t blocks = (m + new_ - 1) / new_;
#pragma omp parallel for schedule(static) if (m >= 16384)
    for (int64_t j = 0; j < blocks; j++) {
        int64_t pend = m - j * new_ < new_ ? m - j * new_ : new_;
        for (int64_t p = 0; p < pend; p++) {
            const float *k = f->taps + f->off[p];
            const int64_t len = f->len[p];
            const int64_t s = j * orig + f->lo[p] - width; /* input index of tap 0 */
            float acc = 0.0f;
            if (s >= 0 && s + len <= n) {
                const float *xs = x + s;
#pragma omp simd reduction(+ : acc)
                for (int64_t i = 0; i < len; i++) acc += xs[i] * k[i];
            } else {
                for (int64_t i = 0; i < len; i++) {
                    int64_t q = s + i;
                    if (q >= 0 && q < n) acc += x[q] * k[i];
                }
            }
            y[j * new_ + p] = acc;
        }
    }
}

tn_status tn_audio_resample(tn_tensor **out, const tn_tensor *x, int64_t from_rate, int64_t to_rate,
                            int32_t lowpass_filter_width, double rolloff, int32_t method, double beta) {
    static const char *op = "audio.resample";
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", op);
    TN_TRY(tn_check_tensor(op, "x", x));
    TN_TRY(tn_check_cpu(op, x));
    if (x->dtype != TN_F32)
        return tn_error(TN_ERR_DTYPE, "%s: x must be f32, got %s (shape %s)", op, tn_dtype_name(x->dtype), TN_SHAPE(x));
    if (x->ndim < 1)
        return tn_error(TN_ERR_SHAPE, "%s: x must have at least 1 dim (..., samples), got shape %s", op, TN_SHAPE(x));
    if (from_rate <= 0 || to_rate <= 0)
        return tn_error(TN_ERR_ARG, "%s: rates must be positive integers, got from %lld to %lld Hz", op,
                        (long long)from_rate, (long long)to_rate);
    if (lowpass_filter_width <= 0)
        return tn_error(TN_ERR_ARG, "%s: lowpass_filter_width must be positive, got %d", op, lowpass_filter_width);
    if (!(rolloff > 0.0 && rolloff <= 1.0))
        return tn_error(TN_ERR_ARG, "%s: rolloff must be in (0, 1], got %g", op, rolloff);
    if (method != TN_RESAMPLE_HANN && method != TN_RESAMPLE_KAISER)
        return tn_error(TN_ERR_ARG, "%s: method must be 0 (hann) or 1 (kaiser), got %d", op, method);
    if (method == TN_RESAMPLE_KAISER && beta <= 0) beta = 14.769656459379492;
    if (!isfinite(beta) || beta > 50)
        return tn_error(TN_ERR_ARG, "%s: kaiser beta must be in (0, 50], got %g", op, beta);

    int64_t g = gcd64(from_rate, to_rate), orig = from_rate / g, new_ = to_rate / g;
    if (new_ > 10000000)
        return tn_error(TN_ERR_ARG, "%s: %lld -> %lld Hz needs %lld filter phases (rates reduced by their gcd "
                        "%lld); choose rates with a larger common divisor", op, (long long)from_rate,
                        (long long)to_rate, (long long)new_, (long long)g);
    int64_t n = x->shape[x->ndim - 1];
    int64_t rows = n > 0 ? tn_tensor_numel(x) / n : 0;
    int64_t m = orig == new_ ? n : (int64_t)ceil((double)(new_ * n) / (double)orig);
    int64_t shape[TN_MAX_DIMS];
    memcpy(shape, x->shape, sizeof(int64_t) * (size_t)x->ndim);
    shape[x->ndim - 1] = m;
    int allocated = *out == NULL;
    TN_TRY(tn_prepare_out(op, out, x->ndim, shape, TN_F32, TN_CPU));
    tn_tensor *y = *out, *xc = NULL;
    tn_status s = TN_OK;
    rs_filter f;
    if (!tn_tensor_is_contiguous(y)) {
        s = tn_error(TN_ERR_ARG, "%s: out must be contiguous (shape %s)", op, TN_SHAPE(y));
    } else if (orig == new_) {
        s = tn_copy(y, x);
    } else if (rows > 0 && m > 0 && (s = tn_contiguous(&xc, x)) == TN_OK &&
               (s = rs_filter_build(&f, orig, new_, lowpass_filter_width, rolloff, method, beta)) == TN_OK) {
        for (int64_t r = 0; r < rows; r++)
            rs_apply((float *)y->data + r * m, m, (const float *)xc->data + r * n, n, &f);
        rs_filter_free(&f);
    }
    tn_tensor_free(xc);
    if (s != TN_OK && allocated) {
        tn_tensor_free(*out);
        *out = NULL;
    }
    return s;
}

tn_status tn_audio_speed(tn_tensor **out, const tn_tensor *x, double factor) {
    if (!(factor >= 0.1 && factor <= 10.0))
        return tn_error(TN_ERR_ARG, "audio.speed: factor must be in [0.1, 10], got %g", factor);
    int64_t from = (int64_t)llround(factor * 1000.0);
    return tn_audio_resample(out, x, from, 1000, 6, 0.99, TN_RESAMPLE_HANN, 0);
}
