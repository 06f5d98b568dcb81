/*
 * random.c — the global counter-based generator and the random fills (tn_rand, tn_randn,
 * tn_randint, tn_bernoulli) on the CPU; CUDA tensors go to cuda/random.cu.
 *
 * The stream layout (key, counter, per-element transforms) is documented in kernels/philox.h.
 * Each call reserves numel counters [offset, offset + numel) atomically and fills element i
 * (logical row-major index over any strided out) from counter offset + i with tn_rng_gen
 * (kernels/random.h), so results are the same for every thread count, every output layout and
 * both devices.
 *
 * Gradient policy: none (random fills write out; nothing is differentiated). Shapes: out is any
 * tensor; its dtype decides the transform's rounding.
 */
#include "internal.h"
#include "kernels/random.h" /* tn_rng_gen: the per-element draw, shared with cuda/random.cu */

#ifdef TERN_HAVE_CUDA
/* cuda/random.cu: fills the CUDA tensor out (any strides) with the draws of counters
 * base + i, i the logical row-major element index, under seed; queued on the current stream. */
tn_status tn_cuda_random_fill(tn_tensor *out, tn_rng_params g, uint64_t seed, uint64_t base);
#endif

/* Global generator state. Read and advanced atomically; setting seed and offset together is
 * not atomic with respect to concurrent draws (set the state from one thread). */
static uint64_t rng_seed = TN_RNG_DEFAULT_SEED;
static uint64_t rng_offset = 0;

void tn_manual_seed(uint64_t seed) { tn_rng_set_state(seed, 0); }

void tn_rng_get_state(uint64_t *seed, uint64_t *offset) {
    if (seed) *seed = __atomic_load_n(&rng_seed, __ATOMIC_ACQUIRE);
    if (offset) *offset = __atomic_load_n(&rng_offset, __ATOMIC_ACQUIRE);
}

void tn_rng_set_state(uint64_t seed, uint64_t offset) {
    __atomic_store_n(&rng_seed, seed, __ATOMIC_RELEASE);
    __atomic_store_n(&rng_offset, offset, __ATOMIC_RELEASE);
}

/* ---- fills --------------------------------------------------------------------------------- */

enum { RNG_CHUNK = 1 << 14, RNG_PARALLEL_MIN = 1 << 15 };

/* Fills out (any strides) element by element in logical row-major order, from counters
 * offset .. offset + numel - 1, after advancing the global offset by numel. */
static tn_status gen_fill(tn_tensor *out, const tn_rng_params *g) {
    int64_t n = tn_tensor_numel(out);
    if (n == 0) return TN_OK;
    uint64_t seed = __atomic_load_n(&rng_seed, __ATOMIC_ACQUIRE);
    uint64_t base = __atomic_fetch_add(&rng_offset, (uint64_t)n, __ATOMIC_ACQ_REL);
#ifdef TERN_HAVE_CUDA
    if (out->device == TN_CUDA) return tn_cuda_random_fill(out, *g, seed, base);
#endif
    int64_t elsize = (int64_t)tn_dtype_size(out->dtype);
    int32_t nd = out->ndim;
    int64_t nchunks = (n + RNG_CHUNK - 1) / RNG_CHUNK;

    if (tn_tensor_is_contiguous(out)) {
        char *data = out->data;
#pragma omp parallel for schedule(static) if (n >= RNG_PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++) tn_rng_gen(data + i * elsize, g, seed, base + (uint64_t)i);
        return TN_OK;
    }

#pragma omp parallel for schedule(static) if (n >= RNG_PARALLEL_MIN)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t start = c * RNG_CHUNK, end = start + RNG_CHUNK < n ? start + RNG_CHUNK : n;
        int64_t idx[TN_MAX_DIMS]; /* (nd) multi-index of element start */
        int64_t rem = start, off = 0;
        for (int32_t d = nd - 1; d >= 0; d--) {
            idx[d] = rem % out->shape[d];
            rem /= out->shape[d];
            off += idx[d] * out->strides[d];
        }
        for (int64_t i = start; i < end; i++) {
            tn_rng_gen(out->data + off * elsize, g, seed, base + (uint64_t)i);
            for (int32_t d = nd - 1; d >= 0; d--) { /* row-major increment */
                off += out->strides[d];
                if (++idx[d] < out->shape[d]) break;
                off -= idx[d] * out->strides[d];
                idx[d] = 0;
            }
        }
    }
    return TN_OK;
}

static tn_status check_out(const char *opname, const tn_tensor *out) {
    TN_TRY(tn_check_tensor(opname, "out", out));
    return tn_check_backend(opname, out);
}

tn_status tn_rand(tn_tensor *out, double low, double high) {
    TN_TRY(check_out("rand", out));
    if (!tn_is_float_dtype(out->dtype))
        return tn_error(TN_ERR_DTYPE, "rand: out must be a float tensor (f32, f64, f16, bf16), got %s (shape %s)",
                        tn_dtype_name(out->dtype), TN_SHAPE(out));
    if (!isfinite(low) || !isfinite(high) || low > high)
        return tn_error(TN_ERR_ARG, "rand: need finite low <= high, got [%g, %g) (out %s %s)", low, high,
                        TN_SHAPE(out), tn_dtype_name(out->dtype));
    tn_rng_params g = {TN_RNG_UNIFORM, out->dtype, low, high, 0, 0};
    return gen_fill(out, &g);
}

tn_status tn_randn(tn_tensor *out, double mean, double std) {
    TN_TRY(check_out("randn", out));
    if (!tn_is_float_dtype(out->dtype))
        return tn_error(TN_ERR_DTYPE, "randn: out must be a float tensor (f32, f64, f16, bf16), got %s (shape %s)",
                        tn_dtype_name(out->dtype), TN_SHAPE(out));
    if (!isfinite(mean) || !isfinite(std) || std < 0)
        return tn_error(TN_ERR_ARG, "randn: need finite mean and std >= 0, got mean %g, std %g (out %s %s)",
                        mean, std, TN_SHAPE(out), tn_dtype_name(out->dtype));
    tn_rng_params g = {TN_RNG_NORMAL, out->dtype, mean, std, 0, 0};
    return gen_fill(out, &g);
}

tn_status tn_randint(tn_tensor *out, int64_t low, int64_t high) {
    TN_TRY(check_out("randint", out));
    if (low >= high)
        return tn_error(TN_ERR_ARG, "randint: need low < high, got [%lld, %lld) (out %s %s)", (long long)low,
                        (long long)high, TN_SHAPE(out), tn_dtype_name(out->dtype));
    /* every value in [low, high) must be exact in the out dtype */
    int64_t lo_ok, hi_ok;
    switch (out->dtype) {
    case TN_U8: lo_ok = 0, hi_ok = 256; break;
    case TN_I32: lo_ok = INT32_MIN, hi_ok = (int64_t)INT32_MAX + 1; break;
    case TN_F16: lo_ok = -2048, hi_ok = 2049; break;           /* integers exact in f16 */
    case TN_BF16: lo_ok = -256, hi_ok = 257; break;            /* integers exact in bf16 */
    case TN_F32: lo_ok = -(1 << 24), hi_ok = (1 << 24) + 1; break;
    case TN_F64: lo_ok = -(INT64_C(1) << 53), hi_ok = (INT64_C(1) << 53) + 1; break;
    default: lo_ok = INT64_MIN, hi_ok = INT64_MAX; break;      /* i64 */
    }
    if (low < lo_ok || high > hi_ok)
        return tn_error(TN_ERR_ARG, "randint: range [%lld, %lld) does not fit dtype %s (out %s)", (long long)low,
                        (long long)high, tn_dtype_name(out->dtype), TN_SHAPE(out));
    tn_rng_params g = {TN_RNG_INT, out->dtype, 0, 0, low, (uint64_t)high - (uint64_t)low};
    return gen_fill(out, &g);
}

tn_status tn_bernoulli(tn_tensor *out, double p) {
    TN_TRY(check_out("bernoulli", out));
    if (!(p >= 0.0 && p <= 1.0))
        return tn_error(TN_ERR_ARG, "bernoulli: p must be in [0, 1], got %g (out %s %s)", p, TN_SHAPE(out),
                        tn_dtype_name(out->dtype));
    tn_rng_params g = {TN_RNG_BERNOULLI, out->dtype, p, 0, 0, 0};
    return gen_fill(out, &g);
}
