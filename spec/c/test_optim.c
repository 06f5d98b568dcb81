/*
 * test_optim.c — core/optim.c: tn_optim_sgd / adam / novograd / larc, tn_optim_norms,
 * tn_grad_clip_norm, tn_amp_unscale_check, tn_optim_zero.
 *  - every update against a plain double loop written here from the published rule (torch
 *    1.13 SGD / Adam / AdamW, NovoGrad, apex LARC), over several steps and lists whose
 *    entries cross the unit and block boundaries (1, 7, 300, 20000 elements); f32 and f64;
 *  - mixed precision: f16 / bf16 grads with f32 masters, the saturating write-back into the
 *    model copy (65504 and the largest bfloat16 instead of inf, NaN kept);
 *  - unscale-and-check: in place and into f32 masters, inf / NaN flagged, amax of the finite;
 *  - clipping and norms against double sums; a non-finite norm leaves the grads untouched;
 *  - f32 Adam bit-identical to a float loop in torch's operation order (SSE2 or AVX2 copy);
 *  - bit-identical results for 1 and 2 threads;
 *  - errors: NULL lists, numel and dtype mismatches, non-contiguous tensors, bad options.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "kernels/optim.h"

#define SH(...) ((const int64_t[]){__VA_ARGS__})
enum { NE = 4 };
static const int64_t SIZES[NE] = { 1, 7, 300, 20000 };

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double rnd(void) { /* uniform in [-1, 1) */
    return (double)(xorshift64(&rng_state) >> 11) / 4503599627370496.0 - 1.0;
}
static tn_tensor *mk_fill(int32_t dtype, int64_t n, double v) {
    tn_tensor *t = mk(dtype, 1, SH(n));
    for (int64_t i = 0; i < n; i++) set(t, i, v);
    return t;
}
static tn_tensor *mk_rand(int32_t dtype, int64_t n, double scale) {
    tn_tensor *t = mk(dtype, 1, SH(n));
    for (int64_t i = 0; i < n; i++) set(t, i, scale * rnd());
    return t;
}
static tn_tensor *copy_as(const tn_tensor *t, int32_t dtype) {
    tn_tensor *o = mk(dtype, 1, SH(tn_tensor_numel(t)));
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) set(o, i, get(t, i));
    return o;
}
static void free_list(tn_tensor **ts, int n) {
    for (int i = 0; i < n; i++) tn_tensor_free(ts[i]);
}
/* max over entries of |got - want| / (1 + |want|) */
static double list_err(tn_tensor *const *got, tn_tensor *const *want, int n) {
    double e = 0;
    for (int k = 0; k < n; k++)
        for (int64_t i = 0; i < tn_tensor_numel(want[k]); i++) {
            double a = get(got[k], i), b = get(want[k], i);
            double d = fabs(a - b) / (1 + fabs(b));
            if (!(d <= e)) e = d; /* NaN propagates */
        }
    return e;
}
static int list_bits_equal(tn_tensor *const *a, tn_tensor *const *b, int n) {
    for (int k = 0; k < n; k++)
        if (memcmp(a[k]->data, b[k]->data, (size_t)tn_tensor_numel(a[k]) * tn_dtype_size(a[k]->dtype)))
            return 0;
    return 1;
}
static tn_optim_hparams hp(void) {
    tn_optim_hparams h;
    memset(&h, 0, sizeof h);
    h.lr = 0.01;
    h.beta1 = 0.9;
    h.beta2 = 0.999;
    h.eps = 1e-8;
    h.step = 1;
    h.grad_scale = 1;
    return h;
}

/* ---- references (double) ------------------------------------------------------------------ */

static void ref_sgd(double *p, double g, double *buf, const tn_optim_hparams *h) {
    double d = g * h->grad_scale + h->weight_decay * *p;
    if (h->momentum != 0) {
        *buf = h->step == 1 ? d : *buf * h->momentum + (1 - h->dampening) * d;
        d = h->nesterov ? d + h->momentum * *buf : *buf;
    }
    *p -= h->lr * d;
}
static void ref_adam(double *p, double g, double *m, double *v, const tn_optim_hparams *h) {
    double d = g * h->grad_scale;
    if (h->decoupled) *p *= 1 - h->lr * h->weight_decay;
    else d += h->weight_decay * *p;
    *m = h->beta1 * *m + (1 - h->beta1) * d;
    *v = h->beta2 * *v + (1 - h->beta2) * d * d;
    double bc1 = 1 - pow(h->beta1, (double)h->step), bc2 = 1 - pow(h->beta2, (double)h->step);
    *p -= h->lr / bc1 * *m / (sqrt(*v) / sqrt(bc2) + h->eps);
}

/* ---- optimizers against the references ---------------------------------------------------- */

/* which: 0 sgd, 1 adam; model_dt: -1 none, else f16/bf16 model copy with grads in that dtype */
static void run_against_ref(int which, int32_t pdt, int32_t model_dt, tn_optim_hparams h, int steps,
                            double tol, const char *what) {
    tn_tensor *p[NE], *g[NE], *s1[NE], *s2[NE], *model[NE], *rp[NE], *rs1[NE], *rs2[NE];
    for (int k = 0; k < NE; k++) {
        p[k] = mk_rand(pdt, SIZES[k], 1.0);
        s1[k] = mk_fill(pdt, SIZES[k], 0);
        s2[k] = mk_fill(pdt, SIZES[k], 0);
        model[k] = model_dt >= 0 ? copy_as(p[k], model_dt) : NULL;
        if (model_dt >= 0) { /* masters start as the model's values, as the optimizer makes them */
            tn_tensor_free(p[k]);
            p[k] = copy_as(model[k], TN_F32);
        }
        rp[k] = copy_as(p[k], TN_F64);
        rs1[k] = mk_fill(TN_F64, SIZES[k], 0);
        rs2[k] = mk_fill(TN_F64, SIZES[k], 0);
        g[k] = NULL;
    }
    for (int s = 1; s <= steps; s++) {
        h.step = s;
        for (int k = 0; k < NE; k++) {
            tn_tensor_free(g[k]);
            g[k] = mk_rand(model_dt >= 0 ? model_dt : pdt, SIZES[k], 0.5);
            for (int64_t i = 0; i < SIZES[k]; i++) {
                double *rpv = (double *)rp[k]->data + i, *a = (double *)rs1[k]->data + i;
                double *b = (double *)rs2[k]->data + i, gi = get(g[k], i);
                if (which == 0) ref_sgd(rpv, gi, a, &h);
                else ref_adam(rpv, gi, a, b, &h);
            }
        }
        if (which == 0)
            CHECK_OK(tn_optim_sgd(NE, p, g, h.momentum != 0 ? s1 : NULL, model_dt >= 0 ? model : NULL, &h));
        else
            CHECK_OK(tn_optim_adam(NE, p, g, s1, s2, model_dt >= 0 ? model : NULL, &h));
    }
    double e = list_err(p, rp, NE);
    if (!(e <= tol)) fprintf(stderr, "%s: max rel error %g > %g\n", what, e, tol);
    CHECK(e <= tol);
    if (model_dt >= 0) { /* the model copy is the rounded master */
        int ok = 1;
        for (int k = 0; k < NE; k++)
            for (int64_t i = 0; i < SIZES[k]; i++) {
                float m = ((float *)p[k]->data)[i];
                uint16_t want = model_dt == TN_F16 ? tn_float_to_half(m) : tn_float_to_bf16(m);
                if (((uint16_t *)model[k]->data)[i] != want) ok = 0;
            }
        CHECK(ok);
    }
    free_list(p, NE); free_list(g, NE); free_list(s1, NE); free_list(s2, NE); free_list(rp, NE);
    free_list(rs1, NE); free_list(rs2, NE);
    if (model_dt >= 0) free_list(model, NE);
}

static void test_sgd_adam(void) {
    tn_optim_hparams h = hp();
    run_against_ref(0, TN_F64, -1, h, 3, 1e-13, "sgd f64 plain");
    h.momentum = 0.9; h.weight_decay = 0.01;
    run_against_ref(0, TN_F64, -1, h, 4, 1e-13, "sgd f64 momentum");
    run_against_ref(0, TN_F32, -1, h, 4, 2e-6, "sgd f32 momentum");
    h.nesterov = 1;
    run_against_ref(0, TN_F32, -1, h, 4, 2e-6, "sgd f32 nesterov");
    h.nesterov = 0; h.dampening = 0.3; h.grad_scale = 0.5;
    run_against_ref(0, TN_F64, -1, h, 4, 1e-13, "sgd f64 dampening, grad_scale");
    run_against_ref(0, TN_F32, TN_F16, h, 3, 2e-6, "sgd f16 model");

    h = hp();
    run_against_ref(1, TN_F64, -1, h, 5, 1e-12, "adam f64");
    run_against_ref(1, TN_F32, -1, h, 5, 1e-5, "adam f32");
    h.weight_decay = 0.1; h.grad_scale = 0.25;
    run_against_ref(1, TN_F64, -1, h, 5, 1e-12, "adam f64 wd");
    run_against_ref(1, TN_F32, -1, h, 5, 1e-5, "adam f32 wd");
    h.decoupled = 1;
    run_against_ref(1, TN_F64, -1, h, 5, 1e-12, "adamw f64");
    run_against_ref(1, TN_F32, TN_F16, h, 4, 1e-5, "adamw f16 model");
    run_against_ref(1, TN_F32, TN_BF16, h, 4, 1e-5, "adamw bf16 model");
}

/* f32 Adam / AdamW are bit-identical to a float loop in torch's operation order (whichever
 * of the SSE2 / AVX2 copies runs here: neither contracts to FMA). */
static void test_adam_bits(void) {
    for (int decoupled = 0; decoupled <= 1; decoupled++) {
        tn_optim_hparams h = hp();
        h.weight_decay = 0.05; h.decoupled = decoupled; h.grad_scale = 0.5; h.eps = 1e-3;
        tn_tensor *p[NE], *g[NE], *m[NE], *v[NE], *rp[NE], *rm[NE], *rv[NE];
        for (int k = 0; k < NE; k++) {
            p[k] = mk_rand(TN_F32, SIZES[k], 1); rp[k] = copy_as(p[k], TN_F32);
            m[k] = mk_fill(TN_F32, SIZES[k], 0); rm[k] = mk_fill(TN_F32, SIZES[k], 0);
            v[k] = mk_fill(TN_F32, SIZES[k], 0); rv[k] = mk_fill(TN_F32, SIZES[k], 0);
            g[k] = NULL;
        }
        for (int s = 1; s <= 3; s++) {
            h.step = s;
            double bc1 = 1 - pow(h.beta1, s), bc2 = 1 - pow(h.beta2, s);
            const float gs = (float)h.grad_scale, wd = (float)h.weight_decay, b1 = (float)h.beta1,
                        omb1 = (float)(1 - h.beta1), b2 = (float)h.beta2, omb2 = (float)(1 - h.beta2),
                        bcs = (float)sqrt(bc2), eps = (float)h.eps, nss = (float)-(h.lr / bc1),
                        decay = (float)(1 - h.lr * h.weight_decay);
            for (int k = 0; k < NE; k++) {
                tn_tensor_free(g[k]);
                g[k] = mk_rand(TN_F32, SIZES[k], 0.5);
                float *P = (float *)rp[k]->data, *M = (float *)rm[k]->data, *Vv = (float *)rv[k]->data;
                const float *Gr = (const float *)g[k]->data;
                for (int64_t i = 0; i < SIZES[k]; i++) {
                    float d = Gr[i] * gs;
                    if (!decoupled) d = d + wd * P[i];
                    M[i] = M[i] * b1 + omb1 * d;
                    Vv[i] = Vv[i] * b2 + omb2 * d * d;
                    float denom = sqrtf(Vv[i]) / bcs + eps, w = P[i];
                    if (decoupled) w = w * decay;
                    P[i] = w + nss * M[i] / denom;
                }
            }
            CHECK_OK(tn_optim_adam(NE, p, g, m, v, NULL, &h));
        }
        CHECK(list_bits_equal(p, rp, NE));
        CHECK(list_bits_equal(m, rm, NE));
        CHECK(list_bits_equal(v, rv, NE));
        free_list(p, NE); free_list(g, NE); free_list(m, NE); free_list(v, NE);
        free_list(rp, NE); free_list(rm, NE); free_list(rv, NE);
    }
}

static void test_novograd(void) {
    tn_optim_hparams h = hp();
    h.lr = 0.05; h.beta1 = 0.95; h.beta2 = 0.98; h.weight_decay = 0.01; h.grad_scale = 0.5;
    for (int ga = 0; ga <= 1; ga++) {
        h.grad_averaging = ga;
        tn_tensor *p[NE], *g[NE], *m[NE], *rp[NE], *rm[NE];
        tn_tensor *ema = mk_fill(TN_F64, NE, 0);
        double rv[NE];
        for (int k = 0; k < NE; k++) {
            p[k] = mk_rand(TN_F64, SIZES[k], 1);
            m[k] = mk_fill(TN_F64, SIZES[k], 0);
            rp[k] = copy_as(p[k], TN_F64);
            rm[k] = mk_fill(TN_F64, SIZES[k], 0);
            g[k] = NULL;
        }
        for (int s = 1; s <= 3; s++) {
            h.step = s;
            for (int k = 0; k < NE; k++) {
                tn_tensor_free(g[k]);
                g[k] = mk_rand(TN_F64, SIZES[k], 0.3);
                double n2 = 0;
                for (int64_t i = 0; i < SIZES[k]; i++) n2 += pow(h.grad_scale * get(g[k], i), 2);
                rv[k] = s == 1 ? n2 : h.beta2 * rv[k] + (1 - h.beta2) * n2;
                for (int64_t i = 0; i < SIZES[k]; i++) {
                    double w = get(rp[k], i);
                    double d = h.grad_scale * get(g[k], i) / (sqrt(rv[k]) + h.eps) + h.weight_decay * w;
                    if (ga) d *= 1 - h.beta1;
                    double mm = h.beta1 * get(rm[k], i) + d;
                    set(rm[k], i, mm);
                    set(rp[k], i, w - h.lr * mm);
                }
            }
            CHECK_OK(tn_optim_novograd(NE, p, g, m, ema, NULL, &h));
        }
        CHECK(list_err(p, rp, NE) < 1e-12);
        CHECK(list_err(m, rm, NE) < 1e-12);
        for (int k = 0; k < NE; k++) CHECK_NEAR(get(ema, k), rv[k], 1e-12 * rv[k]);
        /* f32 params with bf16 grads and an f16 model follow the f64 result */
        free_list(p, NE); free_list(g, NE); free_list(m, NE); free_list(rp, NE); free_list(rm, NE);
        tn_tensor_free(ema);
    }
    /* f32 masters, f16 grads, f16 model: one step against f64 on the same (rounded) values */
    tn_tensor *p[NE], *g[NE], *m[NE], *model[NE], *p64[NE], *g64[NE], *m64[NE];
    tn_tensor *ema = mk_fill(TN_F32, NE, 0), *ema64 = mk_fill(TN_F64, NE, 0);
    for (int k = 0; k < NE; k++) {
        model[k] = mk_rand(TN_F16, SIZES[k], 1);
        p[k] = copy_as(model[k], TN_F32);
        p64[k] = copy_as(model[k], TN_F64);
        g[k] = mk_rand(TN_F16, SIZES[k], 0.3);
        g64[k] = copy_as(g[k], TN_F64);
        m[k] = mk_fill(TN_F32, SIZES[k], 0);
        m64[k] = mk_fill(TN_F64, SIZES[k], 0);
    }
    h.step = 1;
    CHECK_OK(tn_optim_novograd(NE, p, g, m, ema, model, &h));
    CHECK_OK(tn_optim_novograd(NE, p64, g64, m64, ema64, NULL, &h));
    CHECK(list_err(p, p64, NE) < 1e-6);
    CHECK(list_err(model, p64, NE) < 1e-3); /* f16 rounding */
    free_list(p, NE); free_list(g, NE); free_list(m, NE); free_list(model, NE);
    free_list(p64, NE); free_list(g64, NE); free_list(m64, NE);
    tn_tensor_free(ema); tn_tensor_free(ema64);
}

static void test_larc(void) {
    for (int clip = 0; clip <= 1; clip++) {
        const double eta = 0.02, eps = 1e-8, wd = 0.1, lr = 0.5, gs = 0.5;
        tn_tensor *p[NE], *g[NE], *want[NE];
        for (int k = 0; k < NE; k++) {
            p[k] = mk_rand(TN_F64, SIZES[k], 1);
            g[k] = mk_rand(TN_F64, SIZES[k], 2);
            want[k] = copy_as(g[k], TN_F64);
        }
        for (int64_t i = 0; i < SIZES[1]; i++) set(p[1], i, 0); /* ||w|| = 0: g only scaled */
        for (int k = 0; k < NE; k++) {
            double pn = 0, gn = 0;
            for (int64_t i = 0; i < SIZES[k]; i++) { pn += pow(get(p[k], i), 2); gn += pow(gs * get(g[k], i), 2); }
            pn = sqrt(pn); gn = sqrt(gn);
            double tr = eta * pn / (gn + pn * wd + eps);
            if (clip) tr = fmin(tr / lr, 1);
            for (int64_t i = 0; i < SIZES[k]; i++) {
                double d = gs * get(g[k], i);
                set(want[k], i, pn != 0 && gn != 0 ? (d + wd * get(p[k], i)) * tr : d);
            }
        }
        CHECK_OK(tn_optim_larc(NE, g, p, eta, eps, wd, lr, clip, gs));
        CHECK(list_err(g, want, NE) < 1e-12);
        free_list(p, NE); free_list(g, NE); free_list(want, NE);
    }
    tn_tensor *p = mk_rand(TN_F32, 5, 1), *g = mk_rand(TN_F32, 5, 1);
    CHECK(tn_optim_larc(1, &g, &p, 0.02, 1e-8, 0, 0, 1, 1) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "lr") != NULL);
    tn_tensor_free(p); tn_tensor_free(g);
}

/* ---- mixed precision ------------------------------------------------------------------------ */

static void test_saturation(void) {
    CHECK(tn_float_to_half_sat(1e6f) == 0x7bff);      /* 65504 */
    CHECK(tn_float_to_half_sat(-INFINITY) == 0xfbff); /* -65504 */
    CHECK(tn_float_to_half_sat(65519.0f) == 0x7bff);
    CHECK(tn_float_to_half_sat(1.0f) == 0x3c00);
    CHECK(isnan(tn_half_to_float(tn_float_to_half_sat(NAN))));
    CHECK(tn_float_to_bf16_sat(INFINITY) == 0x7f7f);
    CHECK(tn_float_to_bf16_sat(-3.4e38f) == 0xff7f);
    CHECK(tn_float_to_bf16_sat(1.0f) == 0x3f80);
    /* through an update: SGD with a huge step drives masters past the f16 range */
    tn_tensor *p = mk_fill(TN_F32, 3, 0), *g = mk_fill(TN_F16, 3, 0), *model = mk_fill(TN_F16, 3, 0);
    set(g, 0, -1); set(g, 1, 1); set(g, 2, 0.5);
    tn_optim_hparams h = hp();
    h.lr = 1e5;
    CHECK_OK(tn_optim_sgd(1, &p, &g, NULL, &model, &h));
    CHECK(get(p, 0) == 1e5 && get(model, 0) == 65504);
    CHECK(get(p, 1) == -1e5 && get(model, 1) == -65504);
    CHECK(get(model, 2) == tn_half_to_float(tn_float_to_half(-50000.0f)));
    /* a master whose rounding still equals the model weight stays (1e5 saturates to 65504); a
     * model weight written from outside is re-read before the next update (g = 0 here) */
    set(model, 2, 3.0);
    set(g, 0, 0); set(g, 1, 0); set(g, 2, 0);
    CHECK_OK(tn_optim_sgd(1, &p, &g, NULL, &model, &h));
    CHECK(get(p, 0) == 1e5 && get(p, 1) == -1e5 && get(p, 2) == 3.0);
    set(model, 1, 0.5);
    CHECK_OK(tn_amp_sync_masters(1, &p, &model));
    CHECK(get(p, 0) == 1e5 && get(p, 1) == 0.5 && get(p, 2) == 3.0);
    tn_tensor *p32 = mk_fill(TN_F32, 3, 0);
    CHECK(tn_amp_sync_masters(1, &p, &p32) == TN_ERR_DTYPE);
    tn_tensor_free(p32);
    /* bf16 model with Adam: re-read too */
    tn_tensor *bm = mk_fill(TN_BF16, 2, 1.0), *bp = mk_fill(TN_F32, 2, 1.0), *bg = mk_fill(TN_BF16, 2, 0);
    tn_tensor *bmm = mk_fill(TN_F32, 2, 0), *bv = mk_fill(TN_F32, 2, 0);
    set(bm, 1, -2.0);
    h = hp();
    CHECK_OK(tn_optim_adam(1, &bp, &bg, &bmm, &bv, &bm, &h));
    CHECK(get(bp, 0) == 1.0 && get(bp, 1) == -2.0 && get(bm, 1) == -2.0);
    tn_tensor_free(bm); tn_tensor_free(bp); tn_tensor_free(bg); tn_tensor_free(bmm); tn_tensor_free(bv);
    tn_tensor_free(p); tn_tensor_free(g); tn_tensor_free(model);
}

/* The vector (AVX2 + F16C) and scalar f16 paths agree with kernels/half.h on special values:
 * write-back (saturation, NaN, infinities, subnormals, -0) and the re-read of masters. */
static void test_half_paths(void) {
    const float special[] = { NAN, INFINITY, -INFINITY, 65504.0f, 65519.0f, 65520.0f, 1e5f, -1e5f, 1e-6f, 6e-8f,
                              2.9e-8f, -0.0f, 0.0f, 1.0f, -3.5f, 0.1f, 1e-4f, -65505.0f, 3e38f, -2e-7f };
    const int ns = (int)(sizeof special / sizeof special[0]);
    const int64_t n = 3 * ns + 5; /* vector blocks and a scalar tail */
    tn_tensor *p = mk(TN_F32, 1, SH(n)), *g = mk_fill(TN_F16, n, 0), *model = mk(TN_F16, 1, SH(n));
    for (int64_t i = 0; i < n; i++) {
        float v = special[i % ns] * (i >= ns && i < 2 * ns ? -1.0f : 1.0f);
        ((float *)p->data)[i] = v;
        ((uint16_t *)model->data)[i] = tn_float_to_half_sat(v);
    }
    tn_optim_hparams h = hp();
    h.lr = 0;
    CHECK_OK(tn_optim_sgd(1, &p, &g, NULL, &model, &h)); /* p unchanged: p + (-0) * 0 */
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        float v = ((float *)p->data)[i], want = special[i % ns] * (i >= ns && i < 2 * ns ? -1.0f : 1.0f);
        ok &= (v == want) || (isnan(v) && isnan(want));
        ok &= ((uint16_t *)model->data)[i] == tn_float_to_half_sat(want);
    }
    CHECK(ok);
    /* outside writes to the model are read back into the masters, the others stay */
    for (int64_t i = 0; i < n; i += 3) ((uint16_t *)model->data)[i] = tn_float_to_half((float)i * 0.25f);
    CHECK_OK(tn_amp_sync_masters(1, &p, &model));
    ok = 1;
    for (int64_t i = 0; i < n; i++) {
        float v = ((float *)p->data)[i], want = special[i % ns] * (i >= ns && i < 2 * ns ? -1.0f : 1.0f);
        if (i % 3 == 0 && ((uint16_t *)model->data)[i] != tn_float_to_half_sat(want)) want = (float)i * 0.25f;
        ok &= (v == want) || (isnan(v) && isnan(want));
    }
    CHECK(ok);
    /* f16 -> f32 of every bit pattern through the unscale path equals tn_half_to_float */
    tn_tensor *all = mk(TN_F16, 1, SH(65536)), *out = mk(TN_F32, 1, SH(65536));
    for (int64_t i = 0; i < 65536; i++) ((uint16_t *)all->data)[i] = (uint16_t)i;
    int32_t found;
    double amax;
    CHECK_OK(tn_amp_unscale_check(&found, &amax, 1, &out, &all, 1.0));
    ok = 1;
    for (int64_t i = 0; i < 65536; i++) {
        float v = ((float *)out->data)[i], want = tn_half_to_float((uint16_t)i);
        ok &= (memcmp(&v, &want, 4) == 0) || (isnan(v) && isnan(want));
    }
    CHECK(ok);
    CHECK(found == 1 && amax == 65504);
    tn_tensor_free(p); tn_tensor_free(g); tn_tensor_free(model); tn_tensor_free(all); tn_tensor_free(out);
}

static void test_unscale(void) {
    tn_tensor *g32 = mk_rand(TN_F32, 20000, 4), *g16 = mk_rand(TN_F16, 300, 4), *m16 = mk_fill(TN_F32, 300, 0);
    tn_tensor *g64 = mk_rand(TN_F64, 7, 4), *gbf = mk_rand(TN_BF16, 9, 4), *mbf = mk_fill(TN_F32, 9, 0);
    set(g32, 123, 1000); /* the largest: amax = 1000 * inv */
    double want_amax = 1000 * 0.125;
    tn_tensor *orig32 = copy_as(g32, TN_F64), *orig16 = copy_as(g16, TN_F64), *origbf = copy_as(gbf, TN_F64);
    tn_tensor *outs[4] = { g32, m16, g64, mbf };
    tn_tensor *ins[4] = { g32, g16, g64, gbf };
    int32_t found = -1;
    double amax = -1;
    CHECK_OK(tn_amp_unscale_check(&found, &amax, 4, outs, ins, 0.125));
    CHECK(found == 0);
    CHECK(amax == want_amax);
    int ok = 1;
    for (int64_t i = 0; i < 20000; i++) ok &= get(g32, i) == (double)(float)(get(orig32, i) * 0.125);
    for (int64_t i = 0; i < 300; i++) ok &= get(m16, i) == get(orig16, i) * 0.125;
    for (int64_t i = 0; i < 9; i++) ok &= get(mbf, i) == get(origbf, i) * 0.125;
    CHECK(ok);
    /* an inf in the f16 grads, a NaN in the f64 ones: flagged; amax over the finite values */
    set(g16, 17, INFINITY);
    CHECK_OK(tn_amp_unscale_check(&found, &amax, 2, &outs[1], &ins[1], 1.0));
    CHECK(found == 1);
    CHECK(isinf(get(m16, 17)));
    double mx = 0;
    for (int64_t i = 0; i < 300; i++) if (i != 17) mx = fmax(mx, fabs(get(g16, i)));
    for (int64_t i = 0; i < 7; i++) mx = fmax(mx, fabs(get(g64, i)));
    CHECK(amax == mx);
    set(g16, 17, 0);
    set(g64, 3, NAN);
    CHECK_OK(tn_amp_unscale_check(&found, &amax, 2, &outs[1], &ins[1], 1.0));
    CHECK(found == 1);
    /* finite grads overflowing after the multiplication count as inf */
    set(g64, 3, 1e300);
    CHECK_OK(tn_amp_unscale_check(&found, &amax, 1, &outs[2], &ins[2], 1e10));
    CHECK(found == 1);
    /* errors: an f16 out, a size mismatch */
    CHECK(tn_amp_unscale_check(&found, &amax, 1, &g16, &g16, 1) == TN_ERR_DTYPE);
    CHECK(tn_amp_unscale_check(&found, &amax, 1, &m16, &gbf, 1) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "out[0] has 300 elements") != NULL);
    CHECK(tn_amp_unscale_check(&found, &amax, 1, &m16, &g32, 1) == TN_ERR_SHAPE);
    tn_tensor_free(g32); tn_tensor_free(g16); tn_tensor_free(m16); tn_tensor_free(g64);
    tn_tensor_free(gbf); tn_tensor_free(mbf); tn_tensor_free(orig32); tn_tensor_free(orig16);
    tn_tensor_free(origbf);
}

static void test_norms_clip(void) {
    tn_tensor *g[3] = { mk_rand(TN_F32, 20000, 1), mk_rand(TN_F16, 300, 1), mk_rand(TN_F64, 7, 1) };
    double sq[3] = { 0, 0, 0 };
    for (int k = 0; k < 3; k++)
        for (int64_t i = 0; i < tn_tensor_numel(g[k]); i++) sq[k] += get(g[k], i) * get(g[k], i);
    tn_tensor *out = mk(TN_F64, 1, SH(3));
    CHECK_OK(tn_optim_norms(out, 3, g));
    for (int k = 0; k < 3; k++) CHECK_NEAR(get(out, k), sqrt(sq[k]), 1e-6 * sqrt(sq[k]));
    double total = sqrt(sq[0] + sq[1] + sq[2]), norm = 0;
    /* no clipping when the norm is below max_norm */
    tn_tensor *before = copy_as(g[0], TN_F64);
    CHECK_OK(tn_grad_clip_norm(&norm, 3, g, total * 2, 1.0));
    CHECK_NEAR(norm, total, 1e-6 * total);
    CHECK(list_err(&g[0], &before, 1) == 0);
    /* grad_scale: the norm of grad_scale * g */
    CHECK_OK(tn_grad_clip_norm(&norm, 3, g, 1e9, 0.5));
    CHECK_NEAR(norm, total * 0.5, 1e-6 * total);
    /* clipping to 1: every grad times 1 / (total + 1e-6) */
    CHECK_OK(tn_grad_clip_norm(&norm, 3, g, 1.0, 1.0));
    double coef = 1.0 / (total + 1e-6), err = 0;
    for (int64_t i = 0; i < 20000; i++) err = fmax(err, fabs(get(g[0], i) - get(before, i) * coef));
    CHECK(err < 1e-7);
    double after = 0;
    for (int k = 0; k < 3; k++)
        for (int64_t i = 0; i < tn_tensor_numel(g[k]); i++) after += get(g[k], i) * get(g[k], i);
    CHECK_NEAR(sqrt(after), 1.0, 2e-3); /* f16 rounding of one entry */
    /* non-finite: reported, grads untouched */
    tn_tensor_free(before);
    before = copy_as(g[0], TN_F64);
    set(g[2], 0, INFINITY);
    CHECK_OK(tn_grad_clip_norm(&norm, 3, g, 1.0, 1.0));
    CHECK(isinf(norm));
    CHECK(list_err(&g[0], &before, 1) == 0);
    set(g[2], 0, NAN);
    CHECK_OK(tn_grad_clip_norm(&norm, 3, g, 1.0, 1.0));
    CHECK(isnan(norm));
    CHECK(tn_grad_clip_norm(&norm, 3, g, 0.0, 1.0) == TN_ERR_ARG);
    CHECK(tn_grad_clip_norm(&norm, 3, g, NAN, 1.0) == TN_ERR_ARG);
    CHECK_OK(tn_grad_clip_norm(&norm, 0, NULL, 1.0, 1.0));
    CHECK(norm == 0);
    CHECK(tn_optim_norms(out, 2, g) == TN_ERR_SHAPE);
    /* zero */
    CHECK_OK(tn_optim_zero(3, g));
    int zero = 1;
    for (int k = 0; k < 3; k++)
        for (int64_t i = 0; i < tn_tensor_numel(g[k]); i++) zero &= get(g[k], i) == 0;
    CHECK(zero);
    free_list(g, 3);
    tn_tensor_free(out);
    tn_tensor_free(before);
}

/* ---- threads ---------------------------------------------------------------------------------- */

static void test_threads(void) {
    int64_t sizes[3] = { 100003, 8192, 77777 };
    tn_tensor *p[2][3], *g[2][3], *m[2][3], *v[2][3], *model[2][3];
    double amax[2], norm[2];
    int32_t found[2];
    tn_tensor *ema[2];
    for (int r = 0; r < 2; r++) {
        rng_state = 12345;
        for (int k = 0; k < 3; k++) {
            model[r][k] = mk_rand(TN_BF16, sizes[k], 1);
            p[r][k] = copy_as(model[r][k], TN_F32);
            g[r][k] = mk_rand(TN_F32, sizes[k], 100);
            m[r][k] = mk_fill(TN_F32, sizes[k], 0);
            v[r][k] = mk_fill(TN_F32, sizes[k], 0);
        }
        ema[r] = mk_fill(TN_F32, 3, 0);
        tn_set_num_threads(r + 1);
        tn_optim_hparams h = hp();
        CHECK_OK(tn_amp_unscale_check(&found[r], &amax[r], 3, g[r], g[r], 1.0 / 1024));
        CHECK_OK(tn_grad_clip_norm(&norm[r], 3, g[r], 1.0, 1.0));
        CHECK_OK(tn_optim_adam(3, p[r], g[r], m[r], v[r], model[r], &h));
        CHECK_OK(tn_optim_novograd(3, p[r], g[r], m[r], ema[r], model[r], &h));
    }
    tn_set_num_threads(0);
    CHECK(found[0] == found[1] && amax[0] == amax[1]);
    CHECK(norm[0] == norm[1]);
    CHECK(list_bits_equal(p[0], p[1], 3));
    CHECK(list_bits_equal(model[0], model[1], 3));
    CHECK(list_bits_equal(v[0], v[1], 3));
    CHECK(list_bits_equal(&ema[0], &ema[1], 1));
    for (int r = 0; r < 2; r++) {
        free_list(p[r], 3); free_list(g[r], 3); free_list(m[r], 3); free_list(v[r], 3);
        free_list(model[r], 3); tn_tensor_free(ema[r]);
    }
}

/* ---- errors ------------------------------------------------------------------------------------ */

static void test_errors(void) {
    tn_tensor *p = mk_fill(TN_F32, 4, 1), *g = mk_fill(TN_F32, 4, 1), *g5 = mk_fill(TN_F32, 5, 1);
    tn_tensor *m = mk_fill(TN_F32, 4, 0), *v = mk_fill(TN_F32, 4, 0), *d = mk_fill(TN_F64, 4, 0);
    tn_tensor *i32 = mk_fill(TN_I32, 4, 0), *h16 = mk_fill(TN_F16, 4, 0);
    tn_tensor *p2 = NULL, *pt = NULL;
    CHECK_OK(tn_tensor_empty(&p2, 2, SH(2, 2), TN_F32, TN_CPU));
    CHECK_OK(tn_transpose(&pt, p2, 0, 1));
    tn_optim_hparams h = hp();
    CHECK(tn_optim_adam(1, &p, &g5, &m, &v, NULL, &h) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "tn_optim_adam: grads[0] has 5 elements") != NULL);
    CHECK(tn_optim_adam(1, &p, &g, &m, &d, NULL, &h) == TN_ERR_DTYPE);
    CHECK(strstr(tn_last_error(), "exp_avg_sq[0] has dtype f64, expected f32") != NULL);
    CHECK(tn_optim_adam(1, &p, &g, NULL, &v, NULL, &h) == TN_ERR_ARG);
    CHECK(tn_optim_adam(1, &i32, &g, &m, &v, NULL, &h) == TN_ERR_DTYPE);
    CHECK(tn_optim_adam(1, &pt, &g, &m, &v, NULL, &h) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "not contiguous") != NULL);
    CHECK(tn_optim_adam(1, &d, &h16, &d, &d, NULL, &h) == TN_ERR_DTYPE); /* f16 grads need f32 params */
    CHECK(tn_optim_adam(1, &d, &d, &d, &d, &h16, &h) == TN_ERR_DTYPE);  /* model needs f32 masters */
    CHECK(strstr(tn_last_error(), "f32 params") != NULL);
    CHECK(tn_optim_adam(1, &p, &g, &m, &v, &g, &h) == TN_ERR_DTYPE);    /* model must be f16/bf16 */
    tn_tensor *two[2] = { p, d };
    tn_tensor *gg[2] = { g, d };
    CHECK(tn_optim_sgd(2, two, gg, NULL, NULL, &h) == TN_ERR_DTYPE);
    CHECK(strstr(tn_last_error(), "one dtype per list") != NULL);
    CHECK(tn_optim_sgd(1, &p, &g, NULL, NULL, NULL) == TN_ERR_ARG);
    h.step = 0;
    CHECK(tn_optim_sgd(1, &p, &g, NULL, NULL, &h) == TN_ERR_ARG);
    h.step = 1;
    h.momentum = 0.9;
    CHECK(tn_optim_sgd(1, &p, &g, NULL, NULL, &h) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "momentum_buf") != NULL);
    CHECK(tn_optim_novograd(1, &p, &g, &m, v, NULL, &h) == TN_ERR_SHAPE); /* grad_ema needs 1 element */
    CHECK(strstr(tn_last_error(), "grad_ema") != NULL);
    CHECK(tn_optim_sgd(-1, &p, &g, NULL, NULL, &h) == TN_ERR_ARG);
    CHECK_OK(tn_optim_sgd(0, NULL, NULL, NULL, NULL, &h)); /* nothing to do */
    CHECK(tn_optim_zero(1, NULL) == TN_ERR_ARG);
    tn_tensor_free(p); tn_tensor_free(g); tn_tensor_free(g5); tn_tensor_free(m); tn_tensor_free(v);
    tn_tensor_free(d); tn_tensor_free(i32); tn_tensor_free(h16); tn_tensor_free(p2); tn_tensor_free(pt);
}

int main(void) {
    test_sgd_adam();
    test_adam_bits();
    test_novograd();
    test_larc();
    test_saturation();
    test_half_paths();
    test_unscale();
    test_norms_clip();
    test_threads();
    test_errors();
    return check_report("test_optim");
}
