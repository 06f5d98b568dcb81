/*
 * test_random.c — Philox-4x32-10 known answers, the generator state, and tn_rand / tn_randn /
 * tn_randint / tn_bernoulli (core/random.c, core/kernels/philox.h).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "internal.h"
#include "kernels/philox.h"

static int has(const char *needle) { return strstr(tn_last_error(), needle) != NULL; }

static tn_tensor *empty1(int64_t n, int32_t dtype) {
    tn_tensor *t = NULL;
    int64_t s[1] = {n};
    if (tn_tensor_empty(&t, 1, s, dtype, TN_CPU) != TN_OK) return NULL;
    return t;
}

static void test_philox_kat(void) {
    /* Random123 kat_vectors: philox4x32 10 rounds */
    uint32_t out[4];
    const uint32_t c0[4] = {0, 0, 0, 0}, k0[2] = {0, 0};
    tn_philox4x32_10(c0, k0, out);
    CHECK(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu && out[3] == 0x9b00dbd8u);
    const uint32_t c1[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, k1[2] = {0xffffffffu, 0xffffffffu};
    tn_philox4x32_10(c1, k1, out);
    CHECK(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u && out[3] == 0x6d5451fdu);
    const uint32_t c2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
    const uint32_t k2[2] = {0xa4093822u, 0x299f31d0u};
    tn_philox4x32_10(c2, k2, out);
    CHECK(out[0] == 0xd16cfe09u && out[1] == 0x94fdccebu && out[2] == 0x5001e420u && out[3] == 0x24126ea1u);

    /* the stream layout: counter (lo, hi, 0, 0), key (seed lo, seed hi) */
    uint32_t w[4];
    tn_philox_at(0, 0, w);
    CHECK(w[0] == 0x6627e8d5u && w[3] == 0x9b00dbd8u);
    tn_philox_at(UINT64_C(0x0102030405060708), UINT64_C(0x1112131415161718), w);
    const uint32_t c3[4] = {0x15161718u, 0x11121314u, 0, 0}, k3[2] = {0x05060708u, 0x01020304u};
    tn_philox4x32_10(c3, k3, out);
    CHECK(memcmp(w, out, sizeof w) == 0);

    CHECK(tn_philox_u24(0xffffffffu) < 1.0f && tn_philox_u24(0) == 0.0f);
    CHECK(tn_philox_u53(0xffffffffu, 0xffffffffu) < 1.0 && tn_philox_u53(0, 0) == 0.0);
    const uint32_t zeros[4] = {0, 0, 0, 0};
    CHECK(isfinite(tn_philox_normal(zeros))); /* u1 = 2^-53, never log(0) */
}

static void test_state(void) {
    uint64_t seed, off;
    tn_manual_seed(1234);
    tn_rng_get_state(&seed, &off);
    CHECK(seed == 1234 && off == 0);
    tn_tensor *t = empty1(10, TN_F32);
    CHECK_OK(tn_rand(t, 0, 1));
    tn_rng_get_state(&seed, &off);
    CHECK(seed == 1234 && off == 10);
    float first[10];
    memcpy(first, t->data, sizeof first);
    CHECK_OK(tn_rand(t, 0, 1));
    CHECK(memcmp(first, t->data, sizeof first) != 0);
    tn_rng_set_state(1234, 0);
    CHECK_OK(tn_rand(t, 0, 1));
    CHECK(memcmp(first, t->data, sizeof first) == 0);
    /* elements at offset 5.. equal elements 5.. of the first draw */
    tn_rng_set_state(1234, 5);
    CHECK_OK(tn_rand(t, 0, 1));
    CHECK(memcmp(first + 5, t->data, 5 * sizeof(float)) == 0);
    tn_rng_get_state(NULL, &off);
    CHECK(off == 15);
    /* element 0 is philox(seed, offset) by the documented formula */
    tn_rng_set_state(99, 7);
    CHECK_OK(tn_rand(t, 0, 1));
    uint32_t w[4];
    tn_philox_at(99, 7, w);
    CHECK(((float *)t->data)[0] == (float)(w[0] >> 8) * 0x1p-24f);
    tn_tensor *d = empty1(3, TN_F64);
    tn_rng_set_state(99, 8);
    CHECK_OK(tn_rand(d, -2, 2));
    tn_philox_at(99, 9, w);
    CHECK(((double *)d->data)[1] == -2.0 + 4.0 * (double)((((uint64_t)w[1] << 32) | w[0]) >> 11) * 0x1p-53);
    tn_tensor_free(d);
    /* another seed gives another stream */
    tn_manual_seed(1235);
    CHECK_OK(tn_rand(t, 0, 1));
    CHECK(memcmp(first, t->data, sizeof first) != 0);
    tn_tensor_free(t);
}

static double mean_of(const tn_tensor *t) {
    double s = 0;
    int64_t n = tn_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) s += tn_load_f64(t->data + i * (int64_t)tn_dtype_size(t->dtype), t->dtype);
    return s / (double)n;
}
static double var_of(const tn_tensor *t) {
    double m = mean_of(t), s = 0;
    int64_t n = tn_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double x = tn_load_f64(t->data + i * (int64_t)tn_dtype_size(t->dtype), t->dtype) - m;
        s += x * x;
    }
    return s / (double)n;
}

static void test_distributions(void) {
    tn_manual_seed(42);
    const int64_t n = 200000;
    for (int32_t dt = 0; dt < 4; dt++) { /* f32, f64, f16, bf16 */
        tn_tensor *t = empty1(n, dt);
        CHECK_OK(tn_rand(t, -1, 3));
        double lo = 1e9, hi = -1e9;
        for (int64_t i = 0; i < n; i++) {
            double x = tn_load_f64(t->data + i * (int64_t)tn_dtype_size(dt), dt);
            lo = x < lo ? x : lo, hi = x > hi ? x : hi;
        }
        CHECK(lo >= -1 && hi < 3);
        CHECK_NEAR(mean_of(t), 1.0, 0.02);
        CHECK_NEAR(var_of(t), 16.0 / 12.0, 0.02);
        CHECK_OK(tn_randn(t, 2, 0.5));
        CHECK_NEAR(mean_of(t), 2.0, 0.01);
        CHECK_NEAR(var_of(t), 0.25, 0.01);
        tn_tensor_free(t);
    }
    /* bf16 [0, 1): rounding up to 1.0 happens for ~1/512 of the draws; must be stepped down */
    tn_tensor *b = empty1(n, TN_BF16);
    CHECK_OK(tn_rand(b, 0, 1));
    int below = 1;
    for (int64_t i = 0; i < n; i++) below &= tn_bf16_to_float(((uint16_t *)b->data)[i]) < 1.0f;
    CHECK(below);
    tn_tensor_free(b);
    tn_tensor *h = empty1(1000, TN_F16);
    CHECK_OK(tn_rand(h, 5, 5)); /* empty range: all low */
    CHECK(mean_of(h) == 5.0);
    tn_tensor_free(h);

    /* randn normality: fraction within one sigma */
    tn_tensor *g = empty1(n, TN_F64);
    CHECK_OK(tn_randn(g, 0, 1));
    int64_t in1 = 0;
    for (int64_t i = 0; i < n; i++) in1 += fabs(((double *)g->data)[i]) < 1.0;
    CHECK_NEAR((double)in1 / (double)n, 0.6827, 0.005);
    CHECK_OK(tn_randn(g, 1.5, 0)); /* std 0: constant */
    CHECK(mean_of(g) == 1.5 && var_of(g) == 0);
    tn_tensor_free(g);

    /* randint: every dtype, range and frequencies */
    for (int32_t dt = 0; dt < TN_NUM_DTYPES; dt++) {
        tn_tensor *t = empty1(70000, dt);
        CHECK_OK(dt == TN_U8 ? tn_randint(t, 250, 256) : tn_randint(t, -3, 4));
        int64_t cnt[7] = {0}, bad = 0;
        int64_t lo = dt == TN_U8 ? 250 : -3, k = dt == TN_U8 ? 6 : 7;
        for (int64_t i = 0; i < 70000; i++) {
            double x = tn_load_f64(t->data + i * (int64_t)tn_dtype_size(dt), dt);
            int64_t v = (int64_t)x;
            if ((double)v != x || v < lo || v >= lo + k) bad++;
            else cnt[v - lo]++;
        }
        CHECK(bad == 0);
        for (int64_t j = 0; j < k; j++) CHECK_NEAR((double)cnt[j] / 70000.0, 1.0 / (double)k, 0.01);
        tn_tensor_free(t);
    }
    tn_tensor *big = empty1(1000, TN_I64);
    CHECK_OK(tn_randint(big, INT64_MIN, INT64_MAX)); /* full-width range, no overflow */
    int neg = 0, pos = 0;
    for (int i = 0; i < 1000; i++) neg += ((int64_t *)big->data)[i] < 0, pos += ((int64_t *)big->data)[i] > 0;
    CHECK(neg > 400 && pos > 400);
    tn_tensor_free(big);

    /* bernoulli */
    for (int32_t dt = 0; dt < TN_NUM_DTYPES; dt++) {
        tn_tensor *t = empty1(n, dt);
        CHECK_OK(tn_bernoulli(t, 0.3));
        int ok = 1;
        for (int64_t i = 0; i < n; i++) {
            double x = tn_load_f64(t->data + i * (int64_t)tn_dtype_size(dt), dt);
            ok &= x == 0.0 || x == 1.0;
        }
        CHECK(ok);
        CHECK_NEAR(mean_of(t), 0.3, 0.005);
        CHECK_OK(tn_bernoulli(t, 0));
        CHECK(mean_of(t) == 0);
        CHECK_OK(tn_bernoulli(t, 1));
        CHECK(mean_of(t) == 1);
        tn_tensor_free(t);
    }
}

static void test_errors(void) {
    tn_tensor *i = empty1(4, TN_I64), *f = empty1(4, TN_F32), *u = empty1(4, TN_U8);
    CHECK(tn_rand(i, 0, 1) == TN_ERR_DTYPE && has("rand:") && has("i64"));
    CHECK(tn_randn(u, 0, 1) == TN_ERR_DTYPE && has("randn:") && has("u8"));
    CHECK(tn_rand(f, 2, 1) == TN_ERR_ARG && has("rand:"));
    CHECK(tn_rand(f, 0, INFINITY) == TN_ERR_ARG);
    CHECK(tn_randn(f, 0, -1) == TN_ERR_ARG && has("std"));
    CHECK(tn_randint(i, 3, 3) == TN_ERR_ARG && has("randint: need low < high"));
    CHECK(tn_randint(u, -1, 5) == TN_ERR_ARG && has("u8"));
    CHECK(tn_randint(u, 0, 257) == TN_ERR_ARG);
    CHECK_OK(tn_randint(u, 0, 256));
    CHECK(tn_bernoulli(f, 1.5) == TN_ERR_ARG && has("bernoulli: p must be in [0, 1]"));
    CHECK(tn_bernoulli(f, NAN) == TN_ERR_ARG);
    CHECK(tn_rand(NULL, 0, 1) == TN_ERR_ARG && has("rand: argument 'out' is NULL"));
    /* a failed call does not advance the offset */
    uint64_t o0, o1;
    tn_rng_get_state(NULL, &o0);
    (void)tn_rand(i, 0, 1);
    tn_rng_get_state(NULL, &o1);
    CHECK(o0 == o1);
    tn_tensor fake = *f; /* header only: never dereferenced */
    fake.device = TN_CUDA;
    CHECK(tn_rand(&fake, 0, 1) == TN_ERR_DEVICE && has("rand: not implemented for cuda"));
    tn_tensor_free(i);
    tn_tensor_free(f);
    tn_tensor_free(u);
}

/* Same numbers for 1 and several threads, and for strided outputs (logical order). */
static void test_determinism(void) {
    const int64_t n = 3 * 100003; /* above the parallel threshold, not a chunk multiple */
    int kinds = 4;
    for (int k = 0; k < kinds; k++) {
        tn_tensor *a = empty1(n, TN_F32), *b = empty1(n, TN_F32);
        for (int pass = 0; pass < 2; pass++) {
            tn_tensor *t = pass ? b : a;
            tn_set_num_threads(pass ? 4 : 1);
            tn_rng_set_state(7, 1000);
            tn_status s = k == 0 ? tn_rand(t, 0, 1) : k == 1 ? tn_randn(t, 0, 1)
                        : k == 2 ? tn_randint(t, 0, 1000) : tn_bernoulli(t, 0.5);
            CHECK_OK(s);
        }
        CHECK(memcmp(a->data, b->data, (size_t)n * 4) == 0);

        /* strided out: the transpose of a (100003, 3) buffer, filled as a (3, 100003) tensor */
        tn_tensor *buf = NULL, *tr = NULL;
        int64_t s2[2] = {100003, 3};
        CHECK_OK(tn_tensor_empty(&buf, 2, s2, TN_F32, TN_CPU));
        CHECK_OK(tn_transpose(&tr, buf, 0, 1));
        tn_rng_set_state(7, 1000);
        tn_status s = k == 0 ? tn_rand(tr, 0, 1) : k == 1 ? tn_randn(tr, 0, 1)
                    : k == 2 ? tn_randint(tr, 0, 1000) : tn_bernoulli(tr, 0.5);
        CHECK_OK(s);
        int same = 1;
        for (int64_t r = 0; r < 3; r++)
            for (int64_t j = 0; j < 100003; j++)
                same &= ((float *)buf->data)[j * 3 + r] == ((float *)a->data)[r * 100003 + j];
        CHECK(same);
        tn_tensor_free(tr);
        tn_tensor_free(buf);
        tn_tensor_free(a);
        tn_tensor_free(b);
    }
    tn_set_num_threads(0);

    /* a strided narrow view of a 3-d tensor, multi-threaded */
    tn_tensor *base = NULL, *v = NULL, *ref = NULL;
    int64_t s3[3] = {40, 50, 60}, sv[3] = {40, 50, 30};
    CHECK_OK(tn_tensor_empty(&base, 3, s3, TN_F64, TN_CPU));
    CHECK_OK(tn_narrow(&v, base, 2, 10, 30));
    CHECK_OK(tn_tensor_empty(&ref, 3, sv, TN_F64, TN_CPU));
    tn_set_num_threads(3);
    tn_rng_set_state(11, 0);
    CHECK_OK(tn_randn(v, 0, 1));
    tn_set_num_threads(1);
    tn_rng_set_state(11, 0);
    CHECK_OK(tn_randn(ref, 0, 1));
    int same = 1;
    for (int64_t i = 0; i < 40; i++)
        for (int64_t j = 0; j < 50; j++)
            for (int64_t k = 0; k < 30; k++)
                same &= ((double *)v->data)[i * 3000 + j * 60 + k] == ((double *)ref->data)[(i * 50 + j) * 30 + k];
    CHECK(same);
    tn_set_num_threads(0);
    tn_tensor_free(v);
    tn_tensor_free(base);
    tn_tensor_free(ref);

    /* scalar and empty outputs */
    tn_tensor *sc = NULL, *e = empty1(0, TN_F32);
    CHECK_OK(tn_tensor_empty(&sc, 0, NULL, TN_F32, TN_CPU));
    uint64_t o0, o1;
    tn_rng_get_state(NULL, &o0);
    CHECK_OK(tn_rand(sc, 0, 1));
    CHECK_OK(tn_rand(e, 0, 1));
    tn_rng_get_state(NULL, &o1);
    CHECK(o1 == o0 + 1);
    tn_tensor_free(sc);
    tn_tensor_free(e);
}

int main(void) {
    int64_t cur0 = tn_memory_current(TN_CPU);
    test_philox_kat();
    test_state();
    test_distributions();
    test_errors();
    test_determinism();
    CHECK(tn_memory_current(TN_CPU) == cur0);
    return check_report("test_random");
}
