/*
 * kernels/audio.h — per-element math of the audio features (core/fbank.c, core/resample.c),
 * written as torchaudio 0.13 computes it (torchaudio/compliance/kaldi.py and
 * functional/functional.py) so a CUDA feature kernel can share it.
 *
 * Nothing here has a gradient.
 */
#ifndef TERN_KERNELS_AUDIO_H
#define TERN_KERNELS_AUDIO_H

#include <math.h>

#include "common.h"

#define TN_AUDIO_PI 3.14159265358979323846

/* Kaldi's mel scale (natural log, 1127 / 700). */
static TN_HD double tn_mel_scale(double hz) { return 1127.0 * log(1.0 + hz / 700.0); }
static TN_HD double tn_mel_inverse(double mel) { return 700.0 * (exp(mel / 1127.0) - 1.0); }

/* Weight of FFT bin frequency `mel` (already on the mel scale) in the triangle (left, center,
 * right): max(0, min(up slope, down slope)), kaldi.get_mel_banks without VTLN. */
static TN_HD double tn_mel_triangle(double mel, double left, double center, double right) {
    double up = (mel - left) / (center - left);
    double down = (right - mel) / (right - center);
    double w = up < down ? up : down;
    return w > 0.0 ? w : 0.0;
}

/* Sample i of a Kaldi analysis window of n samples (n >= 2). type: tn_window_type
 * (0 hamming, 1 hanning, 2 povey, 3 rectangular, 4 blackman). Symmetric windows
 * (torch.hann_window(periodic=False)). */
static TN_HD double tn_kaldi_window(int type, int64_t i, int64_t n, double blackman_coeff) {
    double a = 2.0 * TN_AUDIO_PI / (double)(n - 1);
    switch (type) {
    case 0: return 0.54 - 0.46 * cos(a * (double)i);
    case 1: return 0.5 - 0.5 * cos(a * (double)i);
    case 2: return pow(0.5 - 0.5 * cos(a * (double)i), 0.85);
    case 3: return 1.0;
    default:
        return blackman_coeff - 0.5 * cos(a * (double)i) + (0.5 - blackman_coeff) * cos(2.0 * a * (double)i);
    }
}

/* Modified Bessel function of the first kind, order 0 (power series; converges for the
 * arguments of a Kaiser window, |x| < 50, to double rounding). */
static TN_HD double tn_bessel_i0(double x) {
    double q = 0.25 * x * x, term = 1.0, sum = 1.0;
    for (int k = 1; k < 500; k++) {
        term *= q / ((double)k * (double)k);
        sum += term;
        if (term < sum * 1e-17) break;
    }
    return sum;
}

/* One tap of torchaudio's sinc resampling kernel (_get_sinc_resample_kernel), before the
 * conversion to f32: t is (time offset in input samples / orig) * base_freq, i.e. in
 * zero crossings; width = lowpass_filter_width; scale = base_freq / orig. kaiser: 0 = the
 * Hann (cos^2) window, 1 = the Kaiser window with beta (i0_beta = i0(beta) as torchaudio
 * rounds it, to f32). */
static TN_HD double tn_sinc_tap(double t, double width, double scale, int kaiser, double beta,
                                double i0_beta) {
    if (t < -width) t = -width;
    if (t > width) t = width;
    double window;
    if (kaiser) {
        double r = t / width;
        window = tn_bessel_i0(beta * sqrt(1.0 - r * r)) / i0_beta;
    } else {
        double c = cos(t * TN_AUDIO_PI / width / 2.0);
        window = c * c;
    }
    t *= TN_AUDIO_PI;
    double k = t == 0.0 ? 1.0 : sin(t) / t;
    return k * window * scale;
}

#endif /* TERN_KERNELS_AUDIO_H */
