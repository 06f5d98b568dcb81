/*
 * test_sru.c — tn_sru_forward / tn_sru_backward.
 *  - forward against a plain double loop written here (elementwise_recurrence_naive of the
 *    `sru` package 2.x), in every configuration: uni/bi, k = 3/4, has_skip on/off, v1
 *    (weight_c NULL), activation 0/1, mask_pad, mask_c, c0 NULL/given; f32 and f64;
 *  - backward against central finite differences (f64) of J = <w_h, h> + <w_c, c_last> for
 *    every element of U, x, weight_c, bias, c0 in each configuration (and the v = 0 gradient
 *    of v1); f32 backward against the f64 one; += on parameter gradients, = on the others;
 *  - bit-identical results for 1, 2 and 3 threads at a size that runs in parallel (several
 *    tiles per row, a ragged last tile);
 *  - L = 0, and the error cases (dtype, shape, NULL, contiguity, options) with their messages.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

#define SH(...) ((const int64_t[]){__VA_ARGS__})

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double rnd(void) { /* uniform in [-1, 1) */
    return (double)(xorshift64(&rng_state) >> 11) / 4503599627370496.0 - 1.0;
}
static tn_tensor *mk_fill(int32_t dtype, int32_t nd, const int64_t *shape, double v) {
    tn_tensor *t = mk(dtype, nd, shape);
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) set(t, i, v);
    return t;
}
static tn_tensor *mk_rand(int32_t dtype, int32_t nd, const int64_t *shape, double scale) {
    tn_tensor *t = mk(dtype, nd, shape);
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) set(t, i, scale * rnd());
    return t;
}
/* a copy of t in dtype (same values, rounded) */
static tn_tensor *as(const tn_tensor *t, int32_t dtype) {
    if (!t) return NULL;
    tn_tensor *o = mk(dtype, t->ndim, t->shape);
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) set(o, i, get(t, i));
    return o;
}

/* ---- a configuration and its inputs ------------------------------------------------------ */

typedef struct cfg {
    int64_t L, B, d, D, k;
    int skip, v1, act, pad, mc, c0;
    double scale_x;
} cfg;

typedef struct inputs {
    tn_tensor *U, *x, *wc, *bias, *c0, *mc, *pad; /* optional ones NULL when off */
} inputs;

static void inputs_free(inputs *in) {
    tn_tensor_free(in->U), tn_tensor_free(in->x), tn_tensor_free(in->wc), tn_tensor_free(in->bias);
    tn_tensor_free(in->c0), tn_tensor_free(in->mc), tn_tensor_free(in->pad);
    memset(in, 0, sizeof *in);
}

/* Random inputs in dtype; x always exists (the Lua layer passes the layer input). */
static inputs make_inputs(const cfg *g, int32_t dtype) {
    const int64_t Dd = g->D * g->d;
    inputs in = {0};
    in.U = mk_rand(dtype, 3, SH(g->L, g->B, Dd * g->k), 1.0);
    in.x = mk_rand(dtype, 3, SH(g->L, g->B, Dd), 1.0);
    in.wc = g->v1 ? NULL : mk_rand(dtype, 1, SH(2 * Dd), 0.8);
    in.bias = mk_rand(dtype, 1, SH(2 * Dd), 0.5);
    in.c0 = g->c0 ? mk_rand(dtype, 2, SH(g->B, Dd), 1.0) : NULL;
    if (g->mc) { /* dropout-like: 0 or 1/(1-p) */
        in.mc = mk(dtype, 2, SH(g->B, Dd));
        for (int64_t i = 0; i < g->B * Dd; i++) set(in.mc, i, rnd() < -0.4 ? 0.0 : 1.0 / 0.7);
    }
    if (g->pad) { /* b = 0 never padded, b = 1 padded at the end, others at random places */
        in.pad = mk(TN_U8, 2, SH(g->L, g->B));
        for (int64_t t = 0; t < g->L; t++)
            for (int64_t b = 0; b < g->B; b++)
                set(in.pad, t * g->B + b, b == 0 ? 0 : b == 1 ? (t >= g->L / 2) : (rnd() < -0.3));
    }
    return in;
}

/* ---- the reference: a straightforward loop in double ---------------------------------------- */

static double sigm(double z) { return 1.0 / (1.0 + exp(-z)); }

/* h, c (L, B, Dd), c_last (B, Dd), all row-major double arrays */
static void ref_forward(const cfg *g, const inputs *in, double *h, double *c, double *c_last) {
    const int64_t L = g->L, B = g->B, d = g->d, D = g->D, k = g->k, Dd = D * d;
    for (int64_t di = 0; di < D; di++)
        for (int64_t b = 0; b < B; b++)
            for (int64_t j = 0; j < d; j++) {
                const int64_t col = di * d + j;
                double cprev = in->c0 ? get(in->c0, b * Dd + col) : 0.0;
                const double vf = in->wc ? get(in->wc, col) : 0.0, vr = in->wc ? get(in->wc, Dd + col) : 0.0;
                const double bf = get(in->bias, col), br = get(in->bias, Dd + col);
                const double m = in->mc ? get(in->mc, b * Dd + col) : 1.0;
                for (int64_t s = 0; s < L; s++) {
                    const int64_t t = di == 0 ? s : L - 1 - s, o = (t * B + b) * Dd + col;
                    const double u0 = get(in->U, o * k), u1 = get(in->U, o * k + 1), u2 = get(in->U, o * k + 2);
                    const double fg = sigm(u1 + bf + cprev * vf), rg = sigm(u2 + br + cprev * vr);
                    double ct = u0 + (cprev - u0) * fg;
                    const int padded = in->pad && get(in->pad, t * B + b) != 0;
                    if (padded) ct = cprev;
                    const double gc = g->act ? tanh(ct) : ct;
                    double ht;
                    if (g->skip) {
                        const double xp = k == 4 ? get(in->U, o * k + 3) : g->scale_x * get(in->x, o);
                        ht = xp + (gc - xp) * m * rg;
                    } else {
                        ht = gc * m * rg;
                    }
                    if (padded) ht = 0.0;
                    h[o] = ht;
                    c[o] = ct;
                    cprev = ct;
                }
                c_last[b * Dd + col] = cprev;
            }
}

/* ---- calling the library ------------------------------------------------------------------ */

typedef struct outs {
    tn_tensor *h, *c, *c_last;
} outs;

static tn_status run_forward(const cfg *g, const inputs *in, int32_t dtype, outs *o) {
    const int64_t Dd = g->D * g->d;
    o->h = mk_fill(dtype, 3, SH(g->L, g->B, Dd), NAN);
    o->c = mk_fill(dtype, 3, SH(g->L, g->B, Dd), NAN);
    o->c_last = mk_fill(dtype, 2, SH(g->B, Dd), NAN);
    return tn_sru_forward(o->h, o->c, o->c_last, in->U, in->x, in->wc, in->bias, in->c0, in->mc, in->pad, g->scale_x,
                          g->act, g->skip, g->D == 2);
}
static void outs_free(outs *o) {
    tn_tensor_free(o->h), tn_tensor_free(o->c), tn_tensor_free(o->c_last);
    memset(o, 0, sizeof *o);
}

typedef struct grads {
    tn_tensor *U, *x, *wc, *bias, *c0;
} grads;
static void grads_free(grads *gr) {
    tn_tensor_free(gr->U), tn_tensor_free(gr->x), tn_tensor_free(gr->wc), tn_tensor_free(gr->bias),
        tn_tensor_free(gr->c0);
    memset(gr, 0, sizeof *gr);
}

/* Backward with grad_U, grad_x, grad_c0 prefilled with NaN (they must be overwritten) and
 * grad_weight_c, grad_bias prefilled with pre (they accumulate). grad_weight_c is requested
 * even for v1 (the gradient at v = 0). */
static tn_status run_backward(const cfg *g, const inputs *in, const outs *fw, const tn_tensor *gh,
                              const tn_tensor *gcl, int32_t dtype, double pre, grads *gr) {
    const int64_t Dd = g->D * g->d;
    gr->U = mk_fill(dtype, 3, in->U->shape, NAN);
    gr->x = mk_fill(dtype, 3, SH(g->L, g->B, Dd), NAN);
    gr->wc = mk_fill(dtype, 1, SH(2 * Dd), pre);
    gr->bias = mk_fill(dtype, 1, SH(2 * Dd), pre);
    gr->c0 = mk_fill(dtype, 2, SH(g->B, Dd), NAN);
    return tn_sru_backward(gr->U, gr->x, gr->wc, gr->bias, gr->c0, gh, gcl, in->U, in->x, in->wc, in->bias, in->c0,
                           fw->c, in->mc, in->pad, g->scale_x, g->act, g->skip, g->D == 2);
}

/* J = <wh, h> + <wcl, c_last> through the library's f64 forward */
static double objective(const cfg *g, const inputs *in, const tn_tensor *wh, const tn_tensor *wcl) {
    outs o = {0};
    CHECK_OK(run_forward(g, in, TN_F64, &o));
    double J = 0;
    for (int64_t i = 0; i < tn_tensor_numel(o.h); i++) J += get(wh, i) * get(o.h, i);
    for (int64_t i = 0; i < tn_tensor_numel(o.c_last); i++) J += get(wcl, i) * get(o.c_last, i);
    outs_free(&o);
    return J;
}

static double max_abs_diff_rel(const tn_tensor *a, const double *ref, int64_t n, double *worst_ref) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(get(a, i) - ref[i]) / (1.0 + fabs(ref[i]));
        if (!(e <= worst)) { worst = e; if (worst_ref) *worst_ref = ref[i]; }
    }
    return worst;
}

static void describe(const cfg *g, char *buf, size_t n) {
    snprintf(buf, n, "L=%lld B=%lld d=%lld D=%lld k=%lld skip=%d v1=%d act=%d pad=%d mc=%d c0=%d",
             (long long)g->L, (long long)g->B, (long long)g->d, (long long)g->D, (long long)g->k, g->skip, g->v1,
             g->act, g->pad, g->mc, g->c0);
}

/* ---- forward against the reference ---------------------------------------------------------- */

static void check_forward(const cfg *g, int32_t dtype) {
    inputs in = make_inputs(g, dtype);
    const int64_t Dd = g->D * g->d, n = g->L * g->B * Dd;
    double *h = malloc((size_t)n * sizeof(double)), *c = malloc((size_t)n * sizeof(double));
    double *cl = malloc((size_t)(g->B * Dd) * sizeof(double));
    ref_forward(g, &in, h, c, cl);
    outs o = {0};
    CHECK_OK(run_forward(g, &in, dtype, &o));
    const double tol = dtype == TN_F64 ? 1e-13 : 3e-6;
    double eh = max_abs_diff_rel(o.h, h, n, NULL), ec = max_abs_diff_rel(o.c, c, n, NULL);
    double el = max_abs_diff_rel(o.c_last, cl, g->B * Dd, NULL);
    CHECK(eh <= tol && ec <= tol && el <= tol);
    if (!(eh <= tol && ec <= tol && el <= tol)) {
        char buf[200];
        describe(g, buf, sizeof buf);
        fprintf(stderr, "  forward %s %s: h err %g, c err %g, c_last err %g\n", tn_dtype_name(dtype), buf, eh, ec, el);
    }
    outs_free(&o);
    inputs_free(&in);
    free(h), free(c), free(cl);
}

/* ---- backward against finite differences ------------------------------------------------------ */

/* Compares the analytic gradient of one input tensor t (elements perturbed in place) with
 * central differences; returns the worst relative error. */
static double fd_check(const cfg *g, inputs *in, tn_tensor *t, const tn_tensor *an, double pre,
                       const tn_tensor *wh, const tn_tensor *wcl) {
    const double eps = 1e-6;
    double worst = 0;
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) {
        const double v = get(t, i);
        set(t, i, v + eps);
        const double jp = objective(g, in, wh, wcl);
        set(t, i, v - eps);
        const double jm = objective(g, in, wh, wcl);
        set(t, i, v);
        const double fd = (jp - jm) / (2 * eps), a = get(an, i) - pre;
        const double e = fabs(a - fd) / (1.0 + fabs(fd));
        if (!(e <= worst)) worst = e;
    }
    return worst;
}

static void check_backward(const cfg *g) {
    char buf[200];
    describe(g, buf, sizeof buf);
    const int64_t Dd = g->D * g->d;
    inputs in = make_inputs(g, TN_F64);
    tn_tensor *wh = mk_rand(TN_F64, 3, SH(g->L, g->B, Dd), 1.0), *wcl = mk_rand(TN_F64, 2, SH(g->B, Dd), 1.0);
    outs fw = {0};
    CHECK_OK(run_forward(g, &in, TN_F64, &fw));
    grads gr = {0};
    const double pre = 0.25; /* parameter gradients start here and must accumulate */
    CHECK_OK(run_backward(g, &in, &fw, wh, wcl, TN_F64, pre, &gr));

    const double tol = 1e-6;
    double eU = fd_check(g, &in, in.U, gr.U, 0, wh, wcl);
    double eb = fd_check(g, &in, in.bias, gr.bias, pre, wh, wcl);
    double ex = 0, ew = 0, ec0 = 0;
    if (g->k == 3 && g->skip) {
        ex = fd_check(g, &in, in.x, gr.x, 0, wh, wcl);
    } else { /* x unused: grad_x is all zeros */
        for (int64_t i = 0; i < tn_tensor_numel(gr.x); i++) ex = fmax(ex, fabs(get(gr.x, i)));
    }
    if (in.wc) {
        ew = fd_check(g, &in, in.wc, gr.wc, pre, wh, wcl);
    } else { /* v1: the gradient at v = 0 equals the one of an explicit zero weight_c */
        in.wc = mk_fill(TN_F64, 1, SH(2 * Dd), 0.0);
        ew = fd_check(g, &in, in.wc, gr.wc, pre, wh, wcl);
        tn_tensor_free(in.wc);
        in.wc = NULL;
    }
    if (in.c0) {
        ec0 = fd_check(g, &in, in.c0, gr.c0, 0, wh, wcl);
    } else { /* c0 NULL = zeros: grad_c0 is still the gradient there */
        in.c0 = mk_fill(TN_F64, 2, SH(g->B, Dd), 0.0);
        ec0 = fd_check(g, &in, in.c0, gr.c0, 0, wh, wcl);
        tn_tensor_free(in.c0);
        in.c0 = NULL;
    }
    const int ok = eU <= tol && eb <= tol && ex <= tol && ew <= tol && ec0 <= tol;
    CHECK(ok);
    if (!ok)
        fprintf(stderr, "  backward %s: U %g bias %g x %g weight_c %g c0 %g\n", buf, eU, eb, ex, ew, ec0);

    /* grad_c_last NULL means zero: compare with an explicit zero tensor */
    {
        tn_tensor *z = mk_fill(TN_F64, 2, SH(g->B, Dd), 0.0);
        grads g1 = {0}, g2 = {0};
        CHECK_OK(run_backward(g, &in, &fw, wh, NULL, TN_F64, 0, &g1));
        CHECK_OK(run_backward(g, &in, &fw, wh, z, TN_F64, 0, &g2));
        CHECK(memcmp(g1.U->data, g2.U->data, (size_t)tn_tensor_numel(g1.U) * 8) == 0);
        CHECK(memcmp(g1.c0->data, g2.c0->data, (size_t)tn_tensor_numel(g1.c0) * 8) == 0);
        grads_free(&g1), grads_free(&g2);
        tn_tensor_free(z);
    }

    /* f32 backward on the same (rounded) inputs agrees with the f64 one */
    {
        inputs in32 = {as(in.U, TN_F32), as(in.x, TN_F32), as(in.wc, TN_F32), as(in.bias, TN_F32),
                       as(in.c0, TN_F32), as(in.mc, TN_F32), in.pad ? tn_tensor_retain(in.pad) : NULL};
        inputs in64 = {as(in32.U, TN_F64), as(in32.x, TN_F64), as(in32.wc, TN_F64), as(in32.bias, TN_F64),
                       as(in32.c0, TN_F64), as(in32.mc, TN_F64), in.pad ? tn_tensor_retain(in.pad) : NULL};
        tn_tensor *wh32 = as(wh, TN_F32), *wcl32 = as(wcl, TN_F32), *wh64 = as(wh32, TN_F64), *wcl64 = as(wcl32, TN_F64);
        outs f32 = {0}, f64 = {0};
        grads g32 = {0}, g64 = {0};
        CHECK_OK(run_forward(g, &in32, TN_F32, &f32));
        CHECK_OK(run_forward(g, &in64, TN_F64, &f64));
        CHECK_OK(run_backward(g, &in32, &f32, wh32, wcl32, TN_F32, 0, &g32));
        CHECK_OK(run_backward(g, &in64, &f64, wh64, wcl64, TN_F64, 0, &g64));
        tn_tensor *pairs[5][2] = {{g32.U, g64.U}, {g32.x, g64.x}, {g32.wc, g64.wc}, {g32.bias, g64.bias}, {g32.c0, g64.c0}};
        double worst = 0;
        for (int p = 0; p < 5; p++)
            for (int64_t i = 0; i < tn_tensor_numel(pairs[p][0]); i++) {
                double r = get(pairs[p][1], i), e = fabs(get(pairs[p][0], i) - r) / (1.0 + fabs(r));
                if (!(e <= worst)) worst = e;
            }
        CHECK(worst <= 2e-5);
        if (!(worst <= 2e-5)) fprintf(stderr, "  f32 backward %s: worst %g\n", buf, worst);
        outs_free(&f32), outs_free(&f64), grads_free(&g32), grads_free(&g64);
        inputs_free(&in32), inputs_free(&in64);
        tn_tensor_free(wh32), tn_tensor_free(wcl32), tn_tensor_free(wh64), tn_tensor_free(wcl64);
    }

    grads_free(&gr);
    outs_free(&fw);
    tn_tensor_free(wh), tn_tensor_free(wcl);
    inputs_free(&in);
}

static void test_configurations(void) {
    int n = 0;
    for (int D = 1; D <= 2; D++)
        for (int k = 3; k <= 4; k++)
            for (int mask = 0; mask < 64; mask++) {
                cfg g = {.L = 5, .B = 4, .d = 3, .D = D, .k = k, .skip = mask & 1, .v1 = (mask >> 1) & 1,
                         .act = (mask >> 2) & 1, .pad = (mask >> 3) & 1, .mc = (mask >> 4) & 1, .c0 = (mask >> 5) & 1,
                         .scale_x = (mask & 1) ? 1.3 : 1.0};
                check_forward(&g, TN_F64);
                check_forward(&g, TN_F32);
                check_backward(&g);
                n++;
            }
    printf("  %d configurations checked\n", n);
}

/* A forward at a size with several tiles per row and a ragged last tile, f32 vs the reference
 * (including large pre-activations that saturate the gates). */
static void test_wide(void) {
    cfg g = {.L = 3, .B = 2, .d = 600, .D = 2, .k = 3, .skip = 1, .v1 = 0, .act = 1, .pad = 1, .mc = 1, .c0 = 1,
             .scale_x = 1.0};
    inputs in = make_inputs(&g, TN_F32);
    for (int64_t i = 0; i < tn_tensor_numel(in.U); i += 7) set(in.U, i, 60.0 * rnd());
    const int64_t Dd = g.D * g.d, n = g.L * g.B * Dd;
    double *h = malloc((size_t)n * sizeof(double)), *c = malloc((size_t)n * sizeof(double));
    double *cl = malloc((size_t)(g.B * Dd) * sizeof(double));
    ref_forward(&g, &in, h, c, cl);
    outs o = {0};
    CHECK_OK(run_forward(&g, &in, TN_F32, &o));
    CHECK(max_abs_diff_rel(o.h, h, n, NULL) <= 3e-6);
    CHECK(max_abs_diff_rel(o.c, c, n, NULL) <= 3e-6);
    CHECK(max_abs_diff_rel(o.c_last, cl, g.B * Dd, NULL) <= 3e-6);
    outs_free(&o);
    inputs_free(&in);
    free(h), free(c), free(cl);
}

/* NaN in U comes out as NaN (the vectorised sigmoid/tanh keep it) */
static void test_nan(void) {
    cfg g = {.L = 2, .B = 1, .d = 8, .D = 1, .k = 3, .skip = 1, .act = 1, .scale_x = 1.0};
    inputs in = make_inputs(&g, TN_F32);
    set(in.U, 3 * 2 + 1, NAN); /* f pre-activation of unit 2 at t = 0 */
    outs o = {0};
    CHECK_OK(run_forward(&g, &in, TN_F32, &o));
    CHECK(isnan(get(o.h, 2)) && isnan(get(o.c_last, 2)) && !isnan(get(o.h, 1)));
    outs_free(&o);
    inputs_free(&in);
}

/* ---- thread-count independence ------------------------------------------------------------------ */

static int same_bits(const tn_tensor *a, const tn_tensor *b) {
    return memcmp(a->data, b->data, (size_t)tn_tensor_numel(a) * tn_dtype_size(a->dtype)) == 0;
}

static void test_threads(int32_t dtype) {
    cfg g = {.L = 9, .B = 6, .d = 333, .D = 2, .k = 3, .skip = 1, .v1 = 0, .act = 1, .pad = 1, .mc = 1, .c0 = 1,
             .scale_x = 1.0};
    inputs in = make_inputs(&g, dtype);
    const int64_t Dd = g.D * g.d;
    tn_tensor *wh = mk_rand(dtype, 3, SH(g.L, g.B, Dd), 1.0), *wcl = mk_rand(dtype, 2, SH(g.B, Dd), 1.0);
    outs o[3] = {{0}};
    grads gr[3] = {{0}};
    const int nth[3] = {1, 2, 3};
    for (int r = 0; r < 3; r++) {
        tn_set_num_threads(nth[r]);
        CHECK_OK(run_forward(&g, &in, dtype, &o[r]));
        CHECK_OK(run_backward(&g, &in, &o[r], wh, wcl, dtype, 0.5, &gr[r]));
    }
    tn_set_num_threads(0);
    for (int r = 1; r < 3; r++) {
        CHECK(same_bits(o[0].h, o[r].h) && same_bits(o[0].c, o[r].c) && same_bits(o[0].c_last, o[r].c_last));
        CHECK(same_bits(gr[0].U, gr[r].U) && same_bits(gr[0].x, gr[r].x) && same_bits(gr[0].c0, gr[r].c0));
        CHECK(same_bits(gr[0].wc, gr[r].wc) && same_bits(gr[0].bias, gr[r].bias));
    }
    for (int r = 0; r < 3; r++) outs_free(&o[r]), grads_free(&gr[r]);
    tn_tensor_free(wh), tn_tensor_free(wcl);
    inputs_free(&in);
}

/* ---- L = 0 ------------------------------------------------------------------------------------------ */

static void test_empty(void) {
    cfg g = {.L = 0, .B = 2, .d = 3, .D = 2, .k = 3, .skip = 1, .c0 = 1, .scale_x = 1.0};
    inputs in = make_inputs(&g, TN_F64);
    outs o = {0};
    CHECK_OK(run_forward(&g, &in, TN_F64, &o));
    CHECK(same_bits(o.c_last, in.c0));
    tn_tensor *gcl = mk_rand(TN_F64, 2, SH(2, 6), 1.0), *gh = mk(TN_F64, 3, SH(0, 2, 6));
    grads gr = {0};
    CHECK_OK(run_backward(&g, &in, &o, gh, gcl, TN_F64, 0, &gr));
    CHECK(same_bits(gr.c0, gcl));
    CHECK(get(gr.bias, 0) == 0.0);
    grads_free(&gr);
    outs_free(&o);
    tn_tensor_free(gcl), tn_tensor_free(gh);
    inputs_free(&in);
}

/* ---- errors --------------------------------------------------------------------------------------- */

static int has(const char *needle) { return strstr(tn_last_error(), needle) != NULL; }

static void test_errors(void) {
    /* L = 4, B = 3, D = 2, d = 3: U (4, 3, 18), h (4, 3, 6) */
    cfg g = {.L = 4, .B = 3, .d = 3, .D = 2, .k = 3, .skip = 1, .pad = 1, .mc = 1, .c0 = 1, .scale_x = 1.0};
    inputs in = make_inputs(&g, TN_F32);
    tn_tensor *h = mk(TN_F32, 3, SH(4, 3, 6)), *c = mk(TN_F32, 3, SH(4, 3, 6)), *cl = mk(TN_F32, 2, SH(3, 6));
    tn_status s;
#define FWD(U_, x_, wc_, b_, c0_, mc_, pad_, act_, skip_, bi_)                                            \
    tn_sru_forward(h, c, cl, U_, x_, wc_, b_, c0_, mc_, pad_, 1.0, act_, skip_, bi_)
    CHECK_OK(FWD(in.U, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1));

    tn_tensor *h64 = mk(TN_F64, 3, SH(4, 3, 6));
    s = tn_sru_forward(h64, c, cl, in.U, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 1.0, 0, 1, 1);
    CHECK(s == TN_ERR_DTYPE && has("'h'") && has("f64") && has("f32") && has("[4, 3, 6]"));
    tn_tensor *Ui = mk_fill(TN_I32, 3, SH(4, 3, 18), 0);
    CHECK(FWD(Ui, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1) == TN_ERR_DTYPE && has("'U'") && has("i32"));
    tn_tensor *U5 = mk_fill(TN_F32, 3, SH(4, 3, 30), 0);
    s = FWD(U5, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("'U'") && has("[4, 3, 30]") && has("[4, 3, 6]") && has("k = 3 or 4"));
    tn_tensor *U2 = mk_fill(TN_F32, 3, SH(4, 2, 18), 0);
    s = FWD(U2, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("'h'") && has("[4, 2, 18]"));
    s = FWD(in.U, NULL, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_ARG && has("'x'") && has("has_skip"));
    CHECK_OK(FWD(in.U, NULL, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 0, 1)); /* no skip: x not needed */
    tn_tensor *xw = mk_fill(TN_F32, 3, SH(4, 3, 5), 0);
    s = FWD(in.U, xw, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("'x'") && has("[4, 3, 5]") && has("[4, 3, 6]"));
    CHECK_OK(FWD(in.U, xw, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 0, 1)); /* unused x is not checked */
    tn_tensor *xt = NULL;
    CHECK_OK(tn_transpose(&xt, in.x, 0, 1));
    tn_tensor *xnc = NULL; /* (4, 3, 6) view that is not contiguous */
    CHECK_OK(tn_as_strided(&xnc, in.x, 3, SH(4, 3, 6), SH(6, 24, 1), 0));
    s = FWD(in.U, xnc, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_ARG && has("'x'") && has("contiguous"));
    tn_tensor *padw = mk_fill(TN_U8, 2, SH(3, 4), 0), *padf = mk_fill(TN_F32, 2, SH(4, 3), 0);
    s = FWD(in.U, in.x, in.wc, in.bias, in.c0, in.mc, padw, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("mask_pad") && has("[3, 4]") && has("[4, 3]"));
    s = FWD(in.U, in.x, in.wc, in.bias, in.c0, in.mc, padf, 0, 1, 1);
    CHECK(s == TN_ERR_DTYPE && has("mask_pad") && has("u8"));
    tn_tensor *bd = mk_fill(TN_F32, 2, SH(3, 5), 1), *bdd = mk_fill(TN_F32, 3, SH(3, 2, 3), 1);
    s = FWD(in.U, in.x, in.wc, in.bias, in.c0, bd, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("mask_c") && has("[3, 5]") && has("[3, 6]"));
    s = FWD(in.U, in.x, in.wc, in.bias, bdd, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("c0") && has("[3, 2, 3]") && has("[3, 6]"));
    tn_tensor *w11 = mk_fill(TN_F32, 1, SH(11), 0), *w236 = mk_fill(TN_F32, 3, SH(2, 2, 3), 0);
    s = FWD(in.U, in.x, w11, in.bias, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("weight_c") && has("[11]") && has("[12]"));
    s = FWD(in.U, in.x, in.wc, w11, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("bias") && has("[11]"));
    CHECK_OK(FWD(in.U, in.x, w236, w236, in.c0, in.mc, in.pad, 0, 1, 1)); /* (2, D, d) is accepted */
    s = FWD(in.U, in.x, in.wc, NULL, in.c0, in.mc, in.pad, 0, 1, 1);
    CHECK(s == TN_ERR_ARG && has("'bias'"));
    s = FWD(in.U, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 2, 1, 1);
    CHECK(s == TN_ERR_ARG && has("activation"));
    s = tn_sru_forward(h, NULL, cl, in.U, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 1.0, 0, 1, 1);
    CHECK(s == TN_ERR_ARG && has("'c'"));
    tn_tensor *cl2 = mk(TN_F32, 2, SH(3, 7));
    s = tn_sru_forward(h, c, cl2, in.U, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 1.0, 0, 1, 1);
    CHECK(s == TN_ERR_SHAPE && has("c_last") && has("[3, 7]"));
    { /* bidirectional needs an even h width; U 3-D */
        tn_tensor *h5 = mk(TN_F32, 3, SH(4, 3, 5)), *c5 = mk(TN_F32, 3, SH(4, 3, 5));
        s = tn_sru_forward(h5, c5, cl, in.U, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 1.0, 0, 1, 1);
        CHECK(s == TN_ERR_SHAPE && has("'h'") && has("bidirectional"));
        tn_tensor *U4 = NULL;
        CHECK_OK(tn_unsqueeze(&U4, in.U, 0));
        s = FWD(U4, in.x, in.wc, in.bias, in.c0, in.mc, in.pad, 0, 1, 1);
        CHECK(s == TN_ERR_SHAPE && has("'U'") && has("3-D"));
        tn_tensor_free(h5), tn_tensor_free(c5), tn_tensor_free(U4);
    }
#undef FWD

    /* backward */
    tn_tensor *gU = mk(TN_F32, 3, SH(4, 3, 18)), *gb = mk_fill(TN_F32, 1, SH(12), 0), *gh = mk_fill(TN_F32, 3, SH(4, 3, 6), 1);
    tn_tensor *gUw = mk(TN_F32, 3, SH(4, 3, 24));
#define BWD(gU_, gx_, gw_, gb_, gc0_, gh_, gcl_, c_)                                                          \
    tn_sru_backward(gU_, gx_, gw_, gb_, gc0_, gh_, gcl_, in.U, in.x, in.wc, in.bias, in.c0, c_, in.mc, in.pad, 1.0, \
                    0, 1, 1)
    CHECK_OK(BWD(gU, NULL, NULL, gb, NULL, gh, NULL, c));
    s = BWD(gUw, NULL, NULL, gb, NULL, gh, NULL, c);
    CHECK(s == TN_ERR_SHAPE && has("grad_U") && has("[4, 3, 24]") && has("[4, 3, 18]"));
    s = BWD(gU, NULL, NULL, NULL, NULL, gh, NULL, c);
    CHECK(s == TN_ERR_ARG && has("grad_bias"));
    s = BWD(gU, NULL, NULL, gb, NULL, gh, NULL, NULL);
    CHECK(s == TN_ERR_ARG && has("'c'"));
    s = BWD(gU, NULL, NULL, gb, NULL, gh, NULL, h64);
    CHECK(s == TN_ERR_DTYPE && has("'c'"));
    s = BWD(gU, NULL, NULL, gb, NULL, gh, cl2, c);
    CHECK(s == TN_ERR_SHAPE && has("grad_c_last") && has("[3, 7]"));
    s = BWD(gU, NULL, w11, gb, NULL, gh, NULL, c);
    CHECK(s == TN_ERR_SHAPE && has("grad_weight_c") && has("[11]"));
    s = BWD(gU, xw, NULL, gb, NULL, gh, NULL, c);
    CHECK(s == TN_ERR_SHAPE && has("grad_x") && has("[4, 3, 5]"));
    s = BWD(gU, NULL, NULL, gb, cl2, gh, NULL, c);
    CHECK(s == TN_ERR_SHAPE && has("grad_c0"));
    s = BWD(gU, NULL, NULL, gb, NULL, NULL, NULL, c);
    CHECK(s == TN_ERR_ARG && has("grad_h"));
#undef BWD

    tn_tensor *ts[] = {h, c, cl, h64, Ui, U5, U2, xw, xt, xnc, padw, padf, bd, bdd, w11, w236, cl2, gU, gb, gh, gUw};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tn_tensor_free(ts[i]);
    inputs_free(&in);
}

int main(void) {
    test_configurations();
    test_wide();
    test_nan();
    test_threads(TN_F32);
    test_threads(TN_F64);
    test_empty();
    test_errors();
    return check_report("test_sru");
}
