/*
 * augment.c — SpecAugment masks (in place) and global mean / variance statistics of features.
 *
 * SpecAugment random numbers: per utterance b and mask m (time masks first, then frequency
 * masks) one Philox counter base + b (time_masks + freq_masks) + m of the global generator
 * (kernels/philox.h); its words give u1 = u53(w0, w1) for the width, floor(u1 (W + 1)) in
 * [0, W], and u2 = u53(w2, w3) for the start, floor(u2 (L - width + 1)) in [0, L - width]. So a
 * seed fixes the masks, whatever the thread count. No gradient.
 */
#include "internal.h"
#include "kernels/philox.h"

static int64_t draw_below(double u, int64_t n) { /* floor(u n) in [0, n) for u in [0, 1) */
    int64_t v = (int64_t)(u * (double)n);
    return v < n ? v : n - 1;
}

tn_status tn_spec_augment(tn_tensor *feats, const tn_tensor *lengths, int32_t time_masks, double time_width,
                          int32_t freq_masks, int64_t freq_width, double value) {
    static const char *op = "spec_augment";
    TN_TRY(tn_check_tensor(op, "feats", feats));
    TN_TRY(tn_check_cpu(op, feats));
    if (feats->dtype != TN_F32)
        return tn_error(TN_ERR_DTYPE, "%s: feats must be f32, got %s (shape %s)", op, tn_dtype_name(feats->dtype),
                        TN_SHAPE(feats));
    if (feats->ndim != 2 && feats->ndim != 3)
        return tn_error(TN_ERR_SHAPE, "%s: feats must be (T, F) or (B, T, F), got shape %s", op, TN_SHAPE(feats));
    if (!tn_tensor_is_contiguous(feats))
        return tn_error(TN_ERR_ARG, "%s: feats must be contiguous (shape %s)", op, TN_SHAPE(feats));
    if (time_masks < 0 || freq_masks < 0)
        return tn_error(TN_ERR_ARG, "%s: time_masks and freq_masks must be >= 0, got %d and %d", op, time_masks,
                        freq_masks);
    if (!(time_width >= 0) || !isfinite(time_width))
        return tn_error(TN_ERR_ARG, "%s: time_width must be >= 0 (frames, or a fraction of the length when < 1), "
                        "got %g", op, time_width);
    if (freq_width < 0) return tn_error(TN_ERR_ARG, "%s: freq_width must be >= 0, got %lld", op, (long long)freq_width);
    int64_t B = feats->ndim == 3 ? feats->shape[0] : 1;
    int64_t T = feats->shape[feats->ndim - 2], F = feats->shape[feats->ndim - 1];
    if (lengths) {
        TN_TRY(tn_check_tensor(op, "lengths", lengths));
        TN_TRY(tn_check_cpu(op, lengths));
        if (lengths->dtype != TN_I64 && lengths->dtype != TN_I32)
            return tn_error(TN_ERR_DTYPE, "%s: lengths must be i64 or i32, got %s", op, tn_dtype_name(lengths->dtype));
        if (lengths->ndim != 1 || lengths->shape[0] != B)
            return tn_error(TN_ERR_SHAPE, "%s: lengths must be (B) = (%lld) for feats %s, got shape %s", op,
                            (long long)B, TN_SHAPE(feats), TN_SHAPE(lengths));
        for (int64_t b = 0; b < B; b++) {
            int64_t L = tn_load_i64(lengths->data + b * lengths->strides[0] * (int64_t)tn_dtype_size(lengths->dtype),
                                    lengths->dtype);
            if (L < 0 || L > T)
                return tn_error(TN_ERR_INDEX, "%s: lengths[%lld] = %lld is outside [0, T = %lld] (feats %s)", op,
                                (long long)TN_D(b), (long long)L, (long long)T, TN_SHAPE(feats));
        }
    }
    int64_t per = (int64_t)time_masks + freq_masks;
    if (per == 0 || B == 0 || T == 0 || F == 0) return TN_OK;
    uint64_t seed, base;
    tn_rng_get_state(&seed, &base);
    tn_rng_set_state(seed, base + (uint64_t)(B * per));
    float v = (float)value;
#pragma omp parallel for schedule(static) if (B * T * F >= 1 << 18)
    for (int64_t b = 0; b < B; b++) {
        float *x = (float *)feats->data + b * T * F;
        int64_t L = lengths ? tn_load_i64(lengths->data + b * lengths->strides[0] * (int64_t)tn_dtype_size(lengths->dtype),
                                          lengths->dtype)
                            : T;
        int64_t Wt = time_width < 1.0 ? (int64_t)floor(time_width * (double)L) : (int64_t)time_width;
        if (Wt > L) Wt = L;
        int64_t Wf = freq_width < F ? freq_width : F;
        for (int64_t m = 0; m < per; m++) {
            uint32_t w[4];
            tn_philox_at(seed, base + (uint64_t)(b * per + m), w);
            double u1 = tn_philox_u53(w[0], w[1]), u2 = tn_philox_u53(w[2], w[3]);
            if (m < time_masks) {
                int64_t width = draw_below(u1, Wt + 1), start = draw_below(u2, L - width + 1);
                for (int64_t t = start; t < start + width; t++)
                    for (int64_t f = 0; f < F; f++) x[t * F + f] = v;
            } else {
                int64_t width = draw_below(u1, Wf + 1), start = draw_below(u2, F - width + 1);
                for (int64_t t = 0; t < L; t++)
                    for (int64_t f = start; f < start + width; f++) x[t * F + f] = v;
            }
        }
    }
    return TN_OK;
}

tn_status tn_cmvn_accumulate(tn_tensor *stats, int64_t *count, const tn_tensor *feats) {
    static const char *op = "cmvn_stats";
    TN_TRY(tn_check_tensor(op, "stats", stats));
    TN_TRY(tn_check_tensor(op, "feats", feats));
    TN_TRY(tn_check_cpu(op, stats));
    TN_TRY(tn_check_cpu(op, feats));
    if (!count) return tn_error(TN_ERR_ARG, "%s: count is NULL", op);
    if (feats->ndim != 2 || (feats->dtype != TN_F32 && feats->dtype != TN_F64))
        return tn_error(TN_ERR_SHAPE, "%s: feats must be (T, F) f32 or f64, got shape %s %s", op, TN_SHAPE(feats),
                        tn_dtype_name(feats->dtype));
    int64_t T = feats->shape[0], F = feats->shape[1];
    if (stats->ndim != 2 || stats->shape[0] != 2 || stats->shape[1] != F || stats->dtype != TN_F64 ||
        !tn_tensor_is_contiguous(stats))
        return tn_error(TN_ERR_SHAPE, "%s: stats must be contiguous (2, %lld) f64 for feats %s, got shape %s %s", op,
                        (long long)F, TN_SHAPE(feats), TN_SHAPE(stats), tn_dtype_name(stats->dtype));
    double *sum = (double *)stats->data, *sq = sum + F;
    int64_t es = (int64_t)tn_dtype_size(feats->dtype);
    for (int64_t t = 0; t < T; t++) {
        const char *row = feats->data + t * feats->strides[0] * es;
        for (int64_t f = 0; f < F; f++) {
            double x = tn_load_f64(row + f * feats->strides[1] * es, feats->dtype);
            sum[f] += x;
            sq[f] += x * x;
        }
    }
    *count += T;
    return TN_OK;
}
