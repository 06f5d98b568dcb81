/*
 * random.c — the global counter-based generator and the CPU random fills.
 *
 * The stream layout (key, counter, per-element transforms) is documented in kernels/philox.h.
 * Each call reserves numel counters [offset, offset + numel) atomically and fills element i
 * (logical row-major index over any strided out) from counter offset + i, so results are the
 * same for every thread count and every output layout.
 */
#include "internal.h"
#include "kernels/philox.h"

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

/* ---- per-element generation -------------------------------------------------------------- */

typedef enum { GEN_UNIFORM, GEN_NORMAL, GEN_INT, GEN_BERNOULLI } gen_kind;

typedef struct gen_params {
    gen_kind kind;
    int32_t dtype;
    double a, b;        /* uniform: low, high; normal: mean, std; bernoulli: p */
    int64_t ilow;       /* randint: low */
    uint64_t irange;    /* randint: high - low (> 0) */
} gen_params;

/* Next representable value below a 16-bit float given as bits (f16 and bf16 alike: both are
 * sign-magnitude, so stepping the magnitude steps the value). */
static uint16_t half_bits_below(uint16_t h) {
    if (h == 0x0000u) return 0x8001u; /* +0 -> smallest negative subnormal */
    if (h & 0x8000u) return (uint16_t)(h + 1u);
    return (uint16_t)(h - 1u);
}

/* Stores low + (high - low) * u rounded to dtype, kept strictly below high when high > low. */
static void store_uniform(char *p, int32_t dtype, double low, double high, const uint32_t w[4]) {
    switch (dtype) {
    case TN_F64: {
        double v = low + (high - low) * tn_philox_u53(w[0], w[1]);
        if (v >= high && high > low) v = nextafter(high, -INFINITY);
        *(double *)p = v;
        break;
    }
    case TN_F32: {
        float v = (float)(low + (high - low) * (double)tn_philox_u24(w[0]));
        while ((double)v >= high && high > low) v = nextafterf(v, -INFINITY);
        *(float *)p = v;
        break;
    }
    case TN_F16:
    case TN_BF16: {
        float f = (float)(low + (high - low) * (double)tn_philox_u24(w[0]));
        int is16 = dtype == TN_F16;
        uint16_t h = is16 ? tn_float_to_half(f) : tn_float_to_bf16(f);
        for (int k = 0; k < 4 && high > low &&
                        (double)(is16 ? tn_half_to_float(h) : tn_bf16_to_float(h)) >= high;
             k++)
            h = half_bits_below(h);
        *(uint16_t *)p = h;
        break;
    }
    default: break;
    }
}

static inline void gen_one(char *p, const gen_params *g, uint64_t seed, uint64_t ctr) {
    uint32_t w[4];
    tn_philox_at(seed, ctr, w);
    switch (g->kind) {
    case GEN_UNIFORM: store_uniform(p, g->dtype, g->a, g->b, w); break;
    case GEN_NORMAL: tn_store_f64(p, g->dtype, g->a + g->b * tn_philox_normal(w)); break;
    case GEN_INT: {
        int64_t v = (int64_t)((uint64_t)g->ilow + tn_philox_u64(w) % g->irange);
        switch (g->dtype) {
        case TN_I64: *(int64_t *)p = v; break;
        case TN_I32: *(int32_t *)p = (int32_t)v; break;
        case TN_U8: *(uint8_t *)p = (uint8_t)v; break;
        default: tn_store_f64(p, g->dtype, (double)v); break;
        }
        break;
    }
    case GEN_BERNOULLI: tn_store_f64(p, g->dtype, tn_philox_u53(w[0], w[1]) < g->a ? 1.0 : 0.0); break;
    }
}

enum { RNG_CHUNK = 1 << 14, RNG_PARALLEL_MIN = 1 << 15 };

/* Fills out (any strides) element by element in logical row-major order, from counters
 * offset .. offset + numel - 1, then advances the global offset by numel. */
static void gen_fill(tn_tensor *out, const gen_params *g) {
    int64_t n = tn_tensor_numel(out);
    if (n == 0) return;
    uint64_t seed = __atomic_load_n(&rng_seed, __ATOMIC_ACQUIRE);
    uint64_t base = __atomic_fetch_add(&rng_offset, (uint64_t)n, __ATOMIC_ACQ_REL);
    int64_t elsize = (int64_t)tn_dtype_size(out->dtype);
    int32_t nd = out->ndim;
    int64_t nchunks = (n + RNG_CHUNK - 1) / RNG_CHUNK;

    if (tn_tensor_is_contiguous(out)) {
        char *data = out->data;
#pragma omp parallel for schedule(static) if (n >= RNG_PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++) gen_one(data + i * elsize, g, seed, base + (uint64_t)i);
        return;
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
            gen_one(out->data + off * elsize, g, seed, base + (uint64_t)i);
            for (int32_t d = nd - 1; d >= 0; d--) { /* row-major increment */
                off += out->strides[d];
                if (++idx[d] < out->shape[d]) break;
                off -= idx[d] * out->strides[d];
                idx[d] = 0;
            }
        }
    }
}

static tn_status check_out(const char *opname, const tn_tensor *out) {
    TN_TRY(tn_check_tensor(opname, "out", out));
    return tn_check_cpu(opname, out);
}

tn_status tn_rand(tn_tensor *out, double low, double high) {
    TN_TRY(check_out("rand", out));
    if (!tn_is_float_dtype(out->dtype))
        return tn_error(TN_ERR_DTYPE, "rand: out must be a float tensor (f32, f64, f16, bf16), got %s (shape %s)",
                        tn_dtype_name(out->dtype), TN_SHAPE(out));
    if (!isfinite(low) || !isfinite(high) || low > high)
        return tn_error(TN_ERR_ARG, "rand: need finite low <= high, got [%g, %g) (out %s %s)", low, high,
                        TN_SHAPE(out), tn_dtype_name(out->dtype));
    gen_params g = {GEN_UNIFORM, out->dtype, low, high, 0, 0};
    gen_fill(out, &g);
    return TN_OK;
}

tn_status tn_randn(tn_tensor *out, double mean, double std) {
    TN_TRY(check_out("randn", out));
    if (!tn_is_float_dtype(out->dtype))
        return tn_error(TN_ERR_DTYPE, "randn: out must be a float tensor (f32, f64, f16, bf16), got %s (shape %s)",
                        tn_dtype_name(out->dtype), TN_SHAPE(out));
    if (!isfinite(mean) || !isfinite(std) || std < 0)
        return tn_error(TN_ERR_ARG, "randn: need finite mean and std >= 0, got mean %g, std %g (out %s %s)",
                        mean, std, TN_SHAPE(out), tn_dtype_name(out->dtype));
    gen_params g = {GEN_NORMAL, out->dtype, mean, std, 0, 0};
    gen_fill(out, &g);
    return TN_OK;
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
    gen_params g = {GEN_INT, out->dtype, 0, 0, low, (uint64_t)high - (uint64_t)low};
    gen_fill(out, &g);
    return TN_OK;
}

tn_status tn_bernoulli(tn_tensor *out, double p) {
    TN_TRY(check_out("bernoulli", out));
    if (!(p >= 0.0 && p <= 1.0))
        return tn_error(TN_ERR_ARG, "bernoulli: p must be in [0, 1], got %g (out %s %s)", p, TN_SHAPE(out),
                        tn_dtype_name(out->dtype));
    gen_params g = {GEN_BERNOULLI, out->dtype, p, 0, 0, 0};
    gen_fill(out, &g);
    return TN_OK;
}
