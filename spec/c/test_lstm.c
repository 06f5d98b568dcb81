/*
 * test_lstm.c — tn_lstm_forward / tn_lstm_backward.
 *  - forward (f64 and f32) against a plain double reference written here, which walks each
 *    sequence by itself (t = 0..len-1, or len-1..0 when reverse) instead of masking;
 *  - backward (f64) against central finite differences of
 *      loss = sum(out * R_out) + sum(h_n * R_h) + sum(c_n * R_c)
 *    for xproj, w_hh, w_hr, h0 and c0; the f32 backward against the f64 one;
 *  - every configuration: projection or not, lengths or not (including steps where every row
 *    is padding), reverse or not, h0/c0 NULL or given; plus sizes that take the OpenMP path;
 *  - the gradient policy (= for activation gradients, += for parameter gradients), the
 *    allowed aliases (gates = xproj, h_n = h0), the fast float activations of kernels/lstm.h,
 *    and the error messages.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common.h"
#include "internal.h"
#include "kernels/lstm.h"

#define SH(...) ((const int64_t[]){__VA_ARGS__})

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static double rnd(void) { /* uniform in [-1, 1) */
    return (double)(xorshift64(&rng_state) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

static tn_tensor *empty(int nd, const int64_t *shape, int32_t dtype) {
    tn_tensor *t = NULL;
    CHECK_OK(tn_tensor_empty(&t, nd, shape, dtype, TN_CPU));
    return t;
}
/* A tensor of dtype holding the n doubles of v (converted). */
static tn_tensor *from(const double *v, int nd, const int64_t *shape, int32_t dtype) {
    tn_tensor *t = empty(nd, shape, dtype);
    const int64_t n = tn_tensor_numel(t), es = (int64_t)tn_dtype_size(dtype);
    for (int64_t i = 0; i < n; i++) tn_store_f64(t->data + i * es, dtype, v[i]);
    return t;
}
static double at(const tn_tensor *t, int64_t i) {
    return tn_load_f64(t->data + i * (int64_t)tn_dtype_size(t->dtype), t->dtype);
}
static double *rand_vec(int64_t n, double scale) {
    double *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) v[i] = scale * rnd();
    return v;
}
/* max |t[i] - ref[i]| */
static double max_diff(const tn_tensor *t, const double *ref) {
    double m = 0.0;
    const int64_t n = tn_tensor_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(at(t, i) - ref[i]);
        if (d > m || d != d) m = d != d ? INFINITY : d;
    }
    return m;
}

/* ---- the problem: sizes, options and inputs, kept in double ------------------------------- */

typedef struct prob {
    int64_t L, B, H, P;
    int proj, use_len, reverse, use_h0;
    int64_t len[16];   /* (B) */
    double *xproj;     /* (L, B, 4H) */
    double *w_hh;      /* (4H, P) */
    double *w_hr;      /* (P, H) when proj */
    double *h0, *c0;   /* (B, P), (B, H) when use_h0 */
    double *r_out, *r_h, *r_c; /* loss weights (L, B, P), (B, P), (B, H) */
} prob;

static void prob_init(prob *p, int64_t L, int64_t B, int64_t H, int64_t P, int proj, int use_len,
                      int reverse, int use_h0, int all_pad_step) {
    memset(p, 0, sizeof *p);
    p->L = L; p->B = B; p->H = H; p->P = proj ? P : H;
    p->proj = proj; p->use_len = use_len; p->reverse = reverse; p->use_h0 = use_h0;
    for (int64_t b = 0; b < B; b++) { /* a mix of full, 1 and in-between lengths */
        int64_t l = b % 3 == 0 ? L : b % 3 == 1 ? 1 : (L + 1) / 2;
        if (all_pad_step && l == L && L > 1) l = L - 1; /* then step L-1 is padding in every row */
        p->len[b] = use_len ? l : L;
    }
    const int64_t G = 4 * H;
    p->xproj = rand_vec(L * B * G, 1.0);
    p->w_hh = rand_vec(G * p->P, 0.6);
    p->w_hr = proj ? rand_vec(p->P * H, 0.7) : NULL;
    p->h0 = use_h0 ? rand_vec(B * p->P, 0.8) : NULL;
    p->c0 = use_h0 ? rand_vec(B * H, 0.8) : NULL;
    p->r_out = rand_vec(L * B * p->P, 1.0);
    p->r_h = rand_vec(B * p->P, 1.0);
    p->r_c = rand_vec(B * H, 1.0);
}
static void prob_free(prob *p) {
    free(p->xproj); free(p->w_hh); free(p->w_hr); free(p->h0); free(p->c0);
    free(p->r_out); free(p->r_h); free(p->r_c);
}

/* Reference forward in double: out (L, B, P), h_n (B, P), c_n (B, H), cells (L, B, H) (valid
 * steps only; padding left untouched). Each row walks its own sequence. */
static void ref_forward(const prob *p, double *out, double *h_n, double *c_n, double *cells) {
    const int64_t L = p->L, B = p->B, H = p->H, P = p->P, G = 4 * H;
    double *h = malloc(sizeof(double) * (size_t)P), *c = malloc(sizeof(double) * (size_t)H);
    double *a = malloc(sizeof(double) * (size_t)G), *hr = malloc(sizeof(double) * (size_t)H);
    memset(out, 0, sizeof(double) * (size_t)(L * B * P));
    for (int64_t b = 0; b < B; b++) {
        for (int64_t k = 0; k < P; k++) h[k] = p->h0 ? p->h0[b * P + k] : 0.0;
        for (int64_t j = 0; j < H; j++) c[j] = p->c0 ? p->c0[b * H + j] : 0.0;
        const int64_t len = p->len[b];
        for (int64_t s = 0; s < len; s++) {
            const int64_t t = p->reverse ? len - 1 - s : s;
            for (int64_t g = 0; g < G; g++) {
                double v = p->xproj[(t * B + b) * G + g];
                for (int64_t k = 0; k < P; k++) v += p->w_hh[g * P + k] * h[k];
                a[g] = v;
            }
            for (int64_t j = 0; j < H; j++) {
                const double i = 1.0 / (1.0 + exp(-a[j])), f = 1.0 / (1.0 + exp(-a[H + j]));
                const double gg = tanh(a[2 * H + j]), o = 1.0 / (1.0 + exp(-a[3 * H + j]));
                c[j] = f * c[j] + i * gg;
                hr[j] = o * tanh(c[j]);
                if (cells) cells[(t * B + b) * H + j] = c[j];
            }
            for (int64_t k = 0; k < P; k++) {
                if (p->proj) {
                    double v = 0.0;
                    for (int64_t j = 0; j < H; j++) v += p->w_hr[k * H + j] * hr[j];
                    h[k] = v;
                } else {
                    h[k] = hr[k];
                }
                out[(t * B + b) * P + k] = h[k];
            }
        }
        for (int64_t k = 0; k < P; k++) h_n[b * P + k] = h[k];
        for (int64_t j = 0; j < H; j++) c_n[b * H + j] = c[j];
    }
    free(h); free(c); free(a); free(hr);
}

/* ---- running tern ------------------------------------------------------------------------- */

typedef struct run {
    int32_t dtype;
    tn_tensor *xproj, *w_hh, *w_hr, *h0, *c0, *lengths;
    tn_tensor *out, *h_n, *c_n, *gates, *cells, *hraw;
} run;

static void run_make(run *r, const prob *p, int32_t dtype) {
    const int64_t L = p->L, B = p->B, H = p->H, P = p->P, G = 4 * H;
    memset(r, 0, sizeof *r);
    r->dtype = dtype;
    r->xproj = from(p->xproj, 3, SH(L, B, G), dtype);
    r->w_hh = from(p->w_hh, 2, SH(G, P), dtype);
    if (p->proj) r->w_hr = from(p->w_hr, 2, SH(P, H), dtype);
    if (p->use_h0) {
        r->h0 = from(p->h0, 2, SH(B, P), dtype);
        r->c0 = from(p->c0, 2, SH(B, H), dtype);
    }
    if (p->use_len) {
        double lv[16];
        for (int64_t b = 0; b < B; b++) lv[b] = (double)p->len[b];
        r->lengths = from(lv, 1, SH(B), TN_I64);
    }
    r->out = empty(3, SH(L, B, P), dtype);
    r->h_n = empty(2, SH(B, P), dtype);
    r->c_n = empty(2, SH(B, H), dtype);
    r->gates = empty(3, SH(L, B, G), dtype);
    r->cells = empty(3, SH(L, B, H), dtype);
    if (p->proj) r->hraw = empty(3, SH(L, B, H), dtype);
}
static void run_free(run *r) {
    tn_tensor *ts[] = {r->xproj, r->w_hh, r->w_hr, r->h0, r->c0, r->lengths,
                       r->out, r->h_n, r->c_n, r->gates, r->cells, r->hraw};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tn_tensor_free(ts[i]);
}
/* Copies the problem's current inputs (which finite differences perturb) into r's tensors. */
static void run_load(run *r, const prob *p) {
    const int64_t es = (int64_t)tn_dtype_size(r->dtype);
#define LOAD(T, V)                                                                             \
    if (r->T)                                                                                  \
        for (int64_t i = 0; i < tn_tensor_numel(r->T); i++) tn_store_f64(r->T->data + i * es, r->dtype, p->V[i]);
    LOAD(xproj, xproj) LOAD(w_hh, w_hh) LOAD(w_hr, w_hr) LOAD(h0, h0) LOAD(c0, c0)
#undef LOAD
}
static tn_status run_forward(run *r, const prob *p) {
    return tn_lstm_forward(r->out, r->h_n, r->c_n, r->gates, r->cells, r->hraw, r->xproj, r->w_hh,
                           r->w_hr, r->h0, r->c0, r->lengths, p->reverse);
}
/* Stores v[i] into the tensor made from the problem's array v (finite differences). */
static void run_set(run *r, const prob *p, const double *v, int64_t i) {
    tn_tensor *t = v == p->xproj ? r->xproj : v == p->w_hh ? r->w_hh : v == p->w_hr ? r->w_hr
                 : v == p->h0 ? r->h0 : r->c0;
    tn_store_f64(t->data + i * (int64_t)tn_dtype_size(r->dtype), r->dtype, v[i]);
}
static double run_loss(run *r, const prob *p) {
    CHECK_OK(run_forward(r, p));
    double s = 0.0;
    for (int64_t i = 0; i < tn_tensor_numel(r->out); i++) s += at(r->out, i) * p->r_out[i];
    for (int64_t i = 0; i < tn_tensor_numel(r->h_n); i++) s += at(r->h_n, i) * p->r_h[i];
    for (int64_t i = 0; i < tn_tensor_numel(r->c_n); i++) s += at(r->c_n, i) * p->r_c[i];
    return s;
}

/* Gradients from tn_lstm_backward, as double arrays. which: bit 0 grad_out, bit 1 grad_h_n,
 * bit 2 grad_c_n given (the missing ones are zero in the loss as well). Parameter gradients
 * start from `pre` (checks +=), activation gradients from garbage (checks =). */
typedef struct grads {
    double *xproj, *w_hh, *w_hr, *h0, *c0;
} grads;

static void grads_free(grads *g) { free(g->xproj); free(g->w_hh); free(g->w_hr); free(g->h0); free(g->c0); }

static double *to_vec(const tn_tensor *t) {
    const int64_t n = tn_tensor_numel(t);
    double *v = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++) v[i] = at(t, i);
    return v;
}

static void run_backward(run *r, const prob *p, int which, double pre, grads *g) {
    const int64_t L = p->L, B = p->B, H = p->H, P = p->P, G = 4 * H;
    const int32_t dt = r->dtype;
    run_load(r, p);
    CHECK_OK(run_forward(r, p));
    tn_tensor *gout = (which & 1) ? from(p->r_out, 3, SH(L, B, P), dt) : NULL;
    tn_tensor *ghn = (which & 2) ? from(p->r_h, 2, SH(B, P), dt) : NULL;
    tn_tensor *gcn = (which & 4) ? from(p->r_c, 2, SH(B, H), dt) : NULL;
    tn_tensor *gx = empty(3, SH(L, B, G), dt), *gwhh = empty(2, SH(G, P), dt);
    tn_tensor *gwhr = p->proj ? empty(2, SH(P, H), dt) : NULL;
    tn_tensor *gh0 = empty(2, SH(B, P), dt), *gc0 = empty(2, SH(B, H), dt);
    CHECK_OK(tn_fill(gx, 12345.0));
    CHECK_OK(tn_fill(gh0, -777.0));
    CHECK_OK(tn_fill(gc0, 555.0));
    CHECK_OK(tn_fill(gwhh, pre));
    if (gwhr) CHECK_OK(tn_fill(gwhr, pre));
    CHECK_OK(tn_lstm_backward(gx, gwhh, gwhr, gh0, gc0, gout, ghn, gcn, r->out, r->gates, r->cells, r->hraw,
                              r->w_hh, r->w_hr, r->h0, r->c0, r->lengths, p->reverse));
    g->xproj = to_vec(gx);
    g->w_hh = to_vec(gwhh);
    g->w_hr = gwhr ? to_vec(gwhr) : NULL;
    g->h0 = to_vec(gh0);
    g->c0 = to_vec(gc0);
    for (int64_t i = 0; i < G * P; i++) g->w_hh[i] -= pre;
    if (g->w_hr)
        for (int64_t i = 0; i < P * H; i++) g->w_hr[i] -= pre;
    tn_tensor *ts[] = {gout, ghn, gcn, gx, gwhh, gwhr, gh0, gc0};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) tn_tensor_free(ts[i]);
}

/* Central differences of the loss in f64 for n elements of v (every one when stride 1). */
static double fd_check(const char *what, const prob *p0, double *v, const double *grad, int64_t n,
                       int64_t stride, int which, const char *cfg) {
    /* rounding in the loss grows with its number of terms: a looser bound for big problems */
    const double tol = p0->B * p0->H > 256 ? 1e-6 : 1e-7;
    prob p = *p0;
    double *zo = NULL, *zh = NULL, *zc = NULL;
    if (!(which & 1)) { zo = calloc((size_t)(p.L * p.B * p.P), sizeof(double)); p.r_out = zo; }
    if (!(which & 2)) { zh = calloc((size_t)(p.B * p.P), sizeof(double)); p.r_h = zh; }
    if (!(which & 4)) { zc = calloc((size_t)(p.B * p.H), sizeof(double)); p.r_c = zc; }
    run r;
    run_make(&r, &p, TN_F64);
    const double eps = 1e-6;
    double worst = 0.0;
    int64_t wi = -1;
    for (int64_t i = 0; i < n; i += stride) {
        const double keep = v[i];
        v[i] = keep + eps;
        run_set(&r, &p, v, i);
        const double lp = run_loss(&r, &p);
        v[i] = keep - eps;
        run_set(&r, &p, v, i);
        const double lm = run_loss(&r, &p);
        v[i] = keep;
        run_set(&r, &p, v, i);
        const double num = (lp - lm) / (2 * eps);
        const double err = fabs(num - grad[i]) / (1.0 + fabs(num));
        if (err > worst) { worst = err; wi = i; }
    }
    CHECK(worst < tol);
    if (worst >= tol) fprintf(stderr, "  fd %s [%s]: worst rel err %g at %lld (analytic %g)\n", what, cfg, worst,
                               (long long)wi, wi >= 0 ? grad[wi] : 0.0);
    run_free(&r);
    free(zo); free(zh); free(zc);
    return worst;
}

static void cfg_name(char *buf, size_t n, const prob *p) {
    snprintf(buf, n, "L=%lld B=%lld H=%lld P=%lld proj=%d lengths=%d reverse=%d h0=%d", (long long)p->L,
             (long long)p->B, (long long)p->H, (long long)p->P, p->proj, p->use_len, p->reverse, p->use_h0);
}

/* Forward against the reference (f64 and f32); cells on valid steps. */
static void check_forward(const prob *p, const char *cfg) {
    const int64_t L = p->L, B = p->B, H = p->H, P = p->P;
    double *out = malloc(sizeof(double) * (size_t)(L * B * P)), *hn = malloc(sizeof(double) * (size_t)(B * P));
    double *cn = malloc(sizeof(double) * (size_t)(B * H)), *cells = malloc(sizeof(double) * (size_t)(L * B * H));
    ref_forward(p, out, hn, cn, cells);
    for (int k = 0; k < 2; k++) {
        const int32_t dt = k ? TN_F32 : TN_F64;
        const double tol = k ? 2e-5 * (double)(L + P) : 1e-12;
        run r;
        run_make(&r, p, dt);
        CHECK_OK(tn_fill(r.out, NAN));
        CHECK_OK(run_forward(&r, p));
        const double eo = max_diff(r.out, out), eh = max_diff(r.h_n, hn), ec = max_diff(r.c_n, cn);
        double ecell = 0.0;
        for (int64_t t = 0; t < L; t++)
            for (int64_t b = 0; b < B; b++)
                if (t < p->len[b])
                    for (int64_t j = 0; j < H; j++) {
                        const int64_t i = (t * B + b) * H + j;
                        ecell = fmax(ecell, fabs(at(r.cells, i) - cells[i]));
                    }
        CHECK(eo <= tol && eh <= tol && ec <= tol && ecell <= tol);
        if (!(eo <= tol && eh <= tol && ec <= tol && ecell <= tol))
            fprintf(stderr, "  forward %s [%s]: out %g h_n %g c_n %g cells %g (tol %g)\n", tn_dtype_name(dt), cfg,
                    eo, eh, ec, ecell, tol);
        run_free(&r);
    }
    free(out); free(hn); free(cn); free(cells);
}

/* Backward: f64 against finite differences (elements every `stride`), f32 against f64. */
static void check_backward(prob *p, const char *cfg, int which, int64_t stride) {
    const int64_t L = p->L, B = p->B, H = p->H, P = p->P, G = 4 * H;
    grads g, gf;
    run r, rf;
    run_make(&r, p, TN_F64);
    run_backward(&r, p, which, 0.25, &g);
    run_free(&r);
    fd_check("xproj", p, p->xproj, g.xproj, L * B * G, stride, which, cfg);
    fd_check("w_hh", p, p->w_hh, g.w_hh, G * P, stride, which, cfg);
    if (p->proj) fd_check("w_hr", p, p->w_hr, g.w_hr, P * H, stride, which, cfg);
    const int64_t s0 = stride > 1 ? 97 : 1;
    if (p->use_h0) {
        fd_check("h0", p, p->h0, g.h0, B * P, s0, which, cfg);
        fd_check("c0", p, p->c0, g.c0, B * H, s0, which, cfg);
    } else { /* the gradient of zero initial states is still defined: perturb zeros */
        double *z0 = calloc((size_t)(B * P), sizeof(double)), *zc = calloc((size_t)(B * H), sizeof(double));
        prob q = *p;
        q.use_h0 = 1; q.h0 = z0; q.c0 = zc;
        fd_check("h0 (NULL)", &q, z0, g.h0, B * P, s0, which, cfg);
        fd_check("c0 (NULL)", &q, zc, g.c0, B * H, s0, which, cfg);
        free(z0); free(zc);
    }
    /* padding steps give zero xproj gradients */
    int padded_zero = 1;
    for (int64_t t = 0; t < L; t++)
        for (int64_t b = 0; b < B; b++)
            if (t >= p->len[b])
                for (int64_t k = 0; k < G; k++) padded_zero &= g.xproj[(t * B + b) * G + k] == 0.0;
    CHECK(padded_zero);

    run_make(&rf, p, TN_F32);
    run_backward(&rf, p, which, 0.25, &gf);
    run_free(&rf);
    double e = 0.0, m = 0.0;
    const double *pa[] = {g.xproj, g.w_hh, g.w_hr, g.h0, g.c0}, *pb[] = {gf.xproj, gf.w_hh, gf.w_hr, gf.h0, gf.c0};
    const int64_t pn[] = {L * B * G, G * P, p->proj ? P * H : 0, B * P, B * H};
    for (int k = 0; k < 5; k++)
        for (int64_t i = 0; i < pn[k]; i++) {
            e = fmax(e, fabs(pa[k][i] - pb[k][i]));
            m = fmax(m, fabs(pa[k][i]));
        }
    CHECK(e <= 3e-5 * (1.0 + m) * (double)L);
    if (!(e <= 3e-5 * (1.0 + m) * (double)L))
        fprintf(stderr, "  backward f32 vs f64 [%s]: max diff %g (max |grad| %g)\n", cfg, e, m);
    grads_free(&g);
    grads_free(&gf);
}

static void test_configurations(void) {
    int n = 0;
    for (int proj = 0; proj < 2; proj++)
        for (int use_len = 0; use_len < 3; use_len++) /* 2: lengths with an all-padding step */
            for (int reverse = 0; reverse < 2; reverse++)
                for (int use_h0 = 0; use_h0 < 2; use_h0++) {
                    prob p;
                    prob_init(&p, 5, 3, 3, 2, proj, use_len > 0, reverse, use_h0, use_len == 2);
                    char cfg[160];
                    cfg_name(cfg, sizeof cfg, &p);
                    check_forward(&p, cfg);
                    const int which = (n % 4 == 1) ? 1 : (n % 4 == 2) ? 6 : 7; /* vary given grads */
                    check_backward(&p, cfg, which, 1);
                    prob_free(&p);
                    n++;
                }
}

/* Edge sizes: L = 1, B = 1, H = 1; bigger sizes that take the OpenMP path and split rows in
 * chunks (H > 256, B*H >= 4096), checked on a subset of elements. */
static void test_sizes(void) {
    struct { int64_t L, B, H, P; int proj, len, rev, h0; int64_t stride; } cs[] = {
        {1, 1, 1, 1, 0, 0, 0, 0, 1}, {1, 2, 2, 1, 1, 1, 1, 1, 1}, {3, 1, 1, 1, 1, 1, 0, 1, 1},
        {7, 4, 5, 3, 1, 1, 1, 1, 3}, {3, 16, 300, 300, 0, 1, 1, 1, 4999}, {2, 16, 260, 33, 1, 1, 0, 1, 1999},
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        prob p;
        prob_init(&p, cs[k].L, cs[k].B, cs[k].H, cs[k].P, cs[k].proj, cs[k].len, cs[k].rev, cs[k].h0, 0);
        char cfg[160];
        cfg_name(cfg, sizeof cfg, &p);
        check_forward(&p, cfg);
        check_backward(&p, cfg, 7, cs[k].stride);
        prob_free(&p);
    }
}

/* gates may be xproj itself and h_n/c_n may be h0/c0; L = 0 copies the initial state. */
static void test_aliases(void) {
    prob p;
    prob_init(&p, 4, 3, 4, 4, 0, 1, 1, 1, 0);
    run r;
    run_make(&r, &p, TN_F32);
    CHECK_OK(run_forward(&r, &p));
    double *out = to_vec(r.out), *hn = to_vec(r.h_n), *cn = to_vec(r.c_n), *gates = to_vec(r.gates);
    tn_tensor *x = from(p.xproj, 3, SH(4, 3, 16), TN_F32);
    tn_tensor *h = from(p.h0, 2, SH(3, 4), TN_F32), *c = from(p.c0, 2, SH(3, 4), TN_F32);
    CHECK_OK(tn_lstm_forward(r.out, h, c, x, r.cells, NULL, x, r.w_hh, NULL, h, c, r.lengths, 1));
    /* in place the GEMM adds h W_hh^T onto xproj; otherwise the pointwise pass adds xproj to
     * h W_hh^T: the same sums in another order */
    CHECK(max_diff(r.out, out) < 1e-6 && max_diff(h, hn) < 1e-6 && max_diff(c, cn) < 1e-6 &&
          max_diff(x, gates) < 1e-6);
    tn_tensor_free(x); tn_tensor_free(h); tn_tensor_free(c);
    free(out); free(hn); free(cn); free(gates);
    run_free(&r);
    prob_free(&p);

    /* L = 0: h_n = h0, c_n = c0; the backward passes grad_h_n, grad_c_n to grad_h0, grad_c0 */
    prob_init(&p, 0, 2, 3, 3, 0, 0, 0, 1, 0);
    run_make(&r, &p, TN_F64);
    CHECK_OK(run_forward(&r, &p));
    CHECK(max_diff(r.h_n, p.h0) == 0.0 && max_diff(r.c_n, p.c0) == 0.0);
    grads g;
    run_backward(&r, &p, 7, 1.0, &g);
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= g.h0[i] == p.r_h[i] && g.c0[i] == p.r_c[i];
    for (int i = 0; i < 12 * 3; i++) ok &= g.w_hh[i] == 0.0;
    CHECK(ok);
    grads_free(&g);
    run_free(&r);
    prob_free(&p);
}

/* The float activations of kernels/lstm.h against libm. */
static void test_activations(void) {
    double et = 0.0, es = 0.0;
    for (double x = -30.0; x <= 30.0; x += 1.0 / 1024.0) {
        const float xf = (float)x;
        const double t = tanh((double)xf), s = 1.0 / (1.0 + exp(-(double)xf));
        et = fmax(et, fabs(tn_tanh_f(xf) - t) / fmax(fabs(t), 1e-30));
        es = fmax(es, fabs(tn_sigmoid_f(xf) - s) / s);
    }
    CHECK(et < 5e-7);
    CHECK(es < 5e-7);
    CHECK(tn_tanh_f(100.0f) == 1.0f && tn_tanh_f(-INFINITY) == -1.0f);
    CHECK(tn_sigmoid_f(INFINITY) == 1.0f && tn_sigmoid_f(-200.0f) == 0.0f);
    CHECK(isnan(tn_tanh_f(NAN)) && isnan(tn_sigmoid_f(NAN)));
    CHECK(tn_tanh_f(1e-20f) == 1e-20f);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void expect_err(tn_status s, tn_status code, const char *a, const char *b) {
    CHECK(s == code);
    const char *m = tn_last_error();
    CHECK(strstr(m, a) != NULL);
    if (b) CHECK(strstr(m, b) != NULL);
    if (s != code || !strstr(m, a) || (b && !strstr(m, b)))
        fprintf(stderr, "  unexpected error (status %d): %s\n", s, m);
}

static void test_errors(void) {
    prob p;
    prob_init(&p, 4, 3, 2, 2, 1, 1, 0, 1, 0); /* proj: P = 2, H = 2 */
    run r;
    run_make(&r, &p, TN_F32);
    CHECK_OK(run_forward(&r, &p));
    tn_tensor *bad = NULL;

    /* NULL required arguments */
    expect_err(tn_lstm_forward(NULL, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, r.w_hh, r.w_hr, NULL,
                               NULL, NULL, 0), TN_ERR_ARG, "lstm_forward", "'out' is NULL");
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, NULL, r.xproj, r.w_hh, r.w_hr, NULL,
                               NULL, NULL, 0), TN_ERR_ARG, "'hraw'", "w_hr [2, 2]");
    /* xproj rank and last dim */
    bad = empty(2, SH(4, 24), TN_F32);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, bad, r.w_hh, r.w_hr, NULL, NULL,
                               NULL, 0), TN_ERR_SHAPE, "'xproj' must be (L, B, 4H)", "[4, 24]");
    tn_tensor_free(bad);
    bad = empty(3, SH(4, 3, 7), TN_F32);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, bad, r.w_hh, r.w_hr, NULL, NULL,
                               NULL, 0), TN_ERR_SHAPE, "'xproj'", "[4, 3, 7]");
    tn_tensor_free(bad);
    /* dtypes */
    bad = empty(3, SH(4, 3, 8), TN_I32);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, bad, r.w_hh, r.w_hr, NULL, NULL,
                               NULL, 0), TN_ERR_DTYPE, "'xproj' [4, 3, 8] is i32", "f32 and f64");
    tn_tensor_free(bad);
    bad = empty(2, SH(8, 2), TN_F64);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, bad, r.w_hr, NULL, NULL,
                               NULL, 0), TN_ERR_DTYPE, "'w_hh' [8, 2] is f64", "xproj is f32");
    tn_tensor_free(bad);
    /* shapes */
    bad = empty(2, SH(8, 3), TN_F32);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, bad, r.w_hr, NULL, NULL,
                               NULL, 0), TN_ERR_SHAPE, "'w_hr' has shape [2, 2] but (P, H) = [3, 2]", NULL);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, NULL, r.xproj, bad, NULL, NULL, NULL,
                               NULL, 0), TN_ERR_SHAPE, "'w_hh' [8, 3] needs P = H = 2", NULL);
    tn_tensor_free(bad);
    bad = empty(2, SH(3, 3), TN_F32);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, r.w_hh, r.w_hr, bad, NULL,
                               NULL, 0), TN_ERR_SHAPE, "'h0' has shape [3, 3] but (B, P) = [3, 2]", "L=4, B=3, H=2, P=2");
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, r.w_hh, r.w_hr, NULL, bad,
                               NULL, 0), TN_ERR_SHAPE, "'c0' has shape [3, 3]", NULL);
    tn_tensor_free(bad);
    bad = empty(3, SH(5, 3, 2), TN_F32);
    expect_err(tn_lstm_forward(bad, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, r.w_hh, r.w_hr, NULL, NULL,
                               NULL, 0), TN_ERR_SHAPE, "'out' has shape [5, 3, 2] but (L, B, P) = [4, 3, 2]", NULL);
    tn_tensor_free(bad);
    /* non-contiguous */
    bad = empty(2, SH(2, 8), TN_F32);
    tn_tensor *tr = NULL;
    CHECK_OK(tn_transpose(&tr, bad, 0, 1));
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, tr, r.w_hr, NULL, NULL,
                               NULL, 0), TN_ERR_ARG, "'w_hh' [8, 2] must be contiguous", NULL);
    tn_tensor_free(tr);
    tn_tensor_free(bad);
    /* lengths: values, shape, dtype */
    const double l0[3] = {4, 0, 2}, l5[3] = {4, 5, 2};
    bad = from(l0, 1, SH(3), TN_I64);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, r.w_hh, r.w_hr, NULL, NULL,
                               bad, 0), TN_ERR_INDEX, "lengths[1] = 0 is out of range 1..4", NULL);
    tn_tensor_free(bad);
    bad = from(l5, 1, SH(3), TN_I32);
    expect_err(tn_lstm_backward(r.xproj, r.w_hh, r.w_hr, NULL, NULL, r.out, NULL, NULL, r.out, r.gates, r.cells,
                                r.hraw, r.w_hh, r.w_hr, NULL, NULL, bad, 1),
               TN_ERR_INDEX, "lstm_backward: lengths[1] = 5 is out of range 1..4", NULL);
    tn_tensor_free(bad);
    bad = from(l5, 1, SH(2), TN_I64);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, r.w_hh, r.w_hr, NULL, NULL,
                               bad, 0), TN_ERR_SHAPE, "'lengths' has shape [2] but (B) = [3]", NULL);
    tn_tensor_free(bad);
    bad = from(l5, 1, SH(3), TN_F32);
    expect_err(tn_lstm_forward(r.out, r.h_n, r.c_n, r.gates, r.cells, r.hraw, r.xproj, r.w_hh, r.w_hr, NULL, NULL,
                               bad, 0), TN_ERR_DTYPE, "'lengths' [3] must be i64", NULL);
    tn_tensor_free(bad);
    /* backward */
    expect_err(tn_lstm_backward(r.xproj, r.w_hh, r.w_hr, NULL, NULL, NULL, NULL, NULL, r.out, r.gates, r.cells,
                                NULL, r.w_hh, NULL, NULL, NULL, NULL, 0),
               TN_ERR_ARG, "'grad_w_hr' [2, 2] is given but w_hr is NULL", NULL);
    bad = empty(3, SH(4, 3, 3), TN_F32);
    expect_err(tn_lstm_backward(r.xproj, r.w_hh, r.w_hr, NULL, NULL, bad, NULL, NULL, r.out, r.gates, r.cells,
                                r.hraw, r.w_hh, r.w_hr, NULL, NULL, NULL, 0),
               TN_ERR_SHAPE, "'grad_out' has shape [4, 3, 3] but (L, B, P) = [4, 3, 2]", NULL);
    tn_tensor_free(bad);
    expect_err(tn_lstm_backward(r.xproj, NULL, r.w_hr, NULL, NULL, NULL, NULL, NULL, r.out, r.gates, r.cells,
                                r.hraw, r.w_hh, r.w_hr, NULL, NULL, NULL, 0),
               TN_ERR_ARG, "lstm_backward: argument 'grad_w_hh' is NULL", NULL);
    run_free(&r);
    prob_free(&p);
}

int main(void) {
    test_activations();
    test_configurations();
    test_sizes();
    test_aliases();
    test_errors();
    tn_set_num_threads(1);
    test_sizes();
    tn_set_num_threads(0);
    return check_report("test_lstm");
}
