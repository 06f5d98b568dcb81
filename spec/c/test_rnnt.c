/*
 * test_rnnt.c — the RNN-T loss family (core/rnnt.c, core/rnnt_prune.c).
 *  - mutual information: scores against a naive double DP written here (regular and modified,
 *    random boundaries including S_b = 0); the one-pass occupation gradients against central
 *    finite differences (f64) and against tn_rnnt_mutual_information_backward from p; f32
 *    against f64;
 *  - simple logprobs against a brute-force materialised lm + am log-softmax, every rnnt_type,
 *    boundary or not, delay penalty; smoothed against the fast_rnnt formula written out here;
 *    backward (simple and smoothed) against finite differences;
 *  - joint logprobs (full loss) on lm + am logits equal the simple ones; backward against finite
 *    differences and in place; full loss = MI over the joint logprobs with gradients by FD;
 *  - pruned: with R = S+1 from tn_rnnt_prune_ranges it equals the full loss; random bands
 *    against brute force; backward by FD; prune ranges constraints; do_pruning and backward;
 *  - error cases with their messages;
 *  - the same bits at 1 and 3 threads over the batch, and in wave mode (a team on the
 *    anti-diagonals of one utterance) against the row-major sweep, errors included.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

#define SH(...) ((const int64_t[]){__VA_ARGS__})
#define NINF (-INFINITY)

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static double rnd(void) { /* uniform in [-1, 1) */
    return (double)(xorshift64(&rng_state) >> 11) / 4503599627370496.0 - 1.0;
}
static int64_t rndi(int64_t n) { return (int64_t)((rnd() + 1.0) * 0.5 * (double)n) % n; }

static tn_tensor *mk_rand(int32_t dtype, int32_t nd, const int64_t *shape, double scale) {
    tn_tensor *t = mk(dtype, nd, shape);
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) set(t, i, scale * rnd());
    return t;
}
static tn_tensor *conv(const tn_tensor *t, int32_t dtype) {
    tn_tensor *o = mk(dtype, t->ndim, t->shape);
    for (int64_t i = 0; i < tn_tensor_numel(t); i++) set(o, i, get(t, i));
    return o;
}
/* max |a - b| over elements, with equal infinities counting as 0 and a mismatch as inf */
static double maxdiff(const tn_tensor *a, const tn_tensor *b) {
    double m = 0.0;
    for (int64_t i = 0; i < tn_tensor_numel(a); i++) {
        const double x = get(a, i), y = get(b, i);
        if (isinf(x) || isinf(y)) {
            if (x != y) return INFINITY;
            continue;
        }
        const double d = fabs(x - y);
        if (!(d <= m)) m = d;
    }
    return m;
}
static tn_tensor *symbols_rand(int64_t B, int64_t S, int64_t C) {
    tn_tensor *s = mk(TN_I64, 2, SH(B, S));
    for (int64_t i = 0; i < B * S; i++) ((int64_t *)s->data)[i] = rndi(C);
    return s;
}
/* random boundary: S_b in [0, S] (0 allowed), T_b in [max(1, S_b) (non-regular) or 1, T], begins 0
 * or small */
static tn_tensor *boundary_rand(int64_t B, int64_t S, int64_t T, int regular, int begins) {
    tn_tensor *bd = mk(TN_I64, 2, SH(B, 4));
    int64_t *v = (int64_t *)bd->data;
    for (int64_t b = 0; b < B; b++) {
        int64_t s0 = begins ? rndi(2) : 0, t0 = begins ? rndi(2) : 0;
        int64_t s1 = s0 + rndi(S - s0 + 1);
        int64_t tmin = regular ? t0 : t0 + (s1 - s0);
        if (tmin > T) s1 = s0, tmin = t0;
        int64_t t1 = tmin + rndi(T - tmin + 1);
        if (b == 0) s1 = s0;            /* a zero-length target */
        if (b == B - 1 && !begins) s1 = S, t1 = T; /* a full one */
        if (!regular && t1 - t0 < s1 - s0) t1 = T, s1 = s0 + (T - t0 < s1 - s0 ? T - t0 : s1 - s0);
        v[b * 4] = s0, v[b * 4 + 1] = t0, v[b * 4 + 2] = s1, v[b * 4 + 3] = t1;
    }
    return bd;
}
static void bnd_of(const tn_tensor *bd, int64_t b, int64_t S, int64_t T, int64_t *v) {
    if (!bd) {
        v[0] = 0, v[1] = 0, v[2] = S, v[3] = T;
        return;
    }
    for (int k = 0; k < 4; k++) v[k] = ((const int64_t *)bd->data)[b * 4 + k];
}

static double logadd(double a, double b) {
    if (a == NINF) return b;
    if (b == NINF) return a;
    const double m = a > b ? a : b;
    return m + log(exp(a - m) + exp(b - m));
}

/* ---- mutual information ------------------------------------------------------------------------ */

static void ref_mi(double *scores, const tn_tensor *px, const tn_tensor *py, const tn_tensor *bd) {
    const int64_t B = py->shape[0], S = py->shape[1] - 1, T = py->shape[2], T0 = px->shape[2];
    const int o = T0 == T;
    double *p = (double *)malloc(sizeof(double) * (size_t)((S + 1) * (T + 1)));
    for (int64_t b = 0; b < B; b++) {
        int64_t v[4];
        bnd_of(bd, b, S, T, v);
        for (int64_t i = 0; i < (S + 1) * (T + 1); i++) p[i] = NINF;
        for (int64_t s = v[0]; s <= v[2]; s++)
            for (int64_t t = v[1]; t <= v[3]; t++) {
                if (s == v[0] && t == v[1]) {
                    p[s * (T + 1) + t] = 0.0;
                    continue;
                }
                double a = NINF, c = NINF;
                if (s > v[0] && t - o >= v[1])
                    a = p[(s - 1) * (T + 1) + t - o] + get(px, (b * S + s - 1) * T0 + t - o);
                if (t > v[1]) c = p[s * (T + 1) + t - 1] + get(py, (b * (S + 1) + s) * T + t - 1);
                p[s * (T + 1) + t] = logadd(a, c);
            }
        scores[b] = p[v[2] * (T + 1) + v[3]];
    }
    free(p);
}

static double sum_scores(const tn_tensor *px, const tn_tensor *py, const tn_tensor *bd) {
    double sc[16], tot = 0.0;
    ref_mi(sc, px, py, bd);
    for (int64_t b = 0; b < py->shape[0]; b++) tot += sc[b];
    return tot;
}

static void test_mi(int regular, int with_boundary, int begins) {
    const int64_t B = 4, S = 4, T = 6, T0 = regular ? T + 1 : T;
    tn_tensor *px = mk_rand(TN_F64, 3, SH(B, S, T0), 2.0), *py = mk_rand(TN_F64, 3, SH(B, S + 1, T), 2.0);
    if (regular) /* as the logprobs give it: a -inf column */
        for (int64_t b = 0; b < B; b++)
            for (int64_t s = 0; s < S; s++) set(px, (b * S + s) * T0 + T, NINF);
    tn_tensor *bd = with_boundary ? boundary_rand(B, S, T, regular, begins) : NULL;
    tn_tensor *sc = mk(TN_F64, 1, SH(B)), *pxg = mk(TN_F64, 3, px->shape), *pyg = mk(TN_F64, 3, py->shape);
    tn_tensor *p = mk(TN_F64, 3, SH(B, S + 1, T + 1));
    double ref[8];
    ref_mi(ref, px, py, bd);
    CHECK_OK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, px, py, bd));
    for (int64_t b = 0; b < B; b++) CHECK_NEAR(get(sc, b), ref[b], 1e-12);
    CHECK_OK(tn_rnnt_mutual_information(sc, pxg, pyg, p, px, py, bd));
    for (int64_t b = 0; b < B; b++) CHECK_NEAR(get(sc, b), ref[b], 1e-12);
    /* occupations = d sum(scores) / d px, py by central differences */
    const double h = 1e-6;
    double worst = 0.0;
    for (int pass = 0; pass < 2; pass++) {
        tn_tensor *x = pass ? py : px, *g = pass ? pyg : pxg;
        for (int64_t i = 0; i < tn_tensor_numel(x); i++) {
            const double v = get(x, i);
            if (v == NINF) {
                CHECK(get(g, i) == 0.0);
                continue;
            }
            set(x, i, v + h);
            const double fp = sum_scores(px, py, bd);
            set(x, i, v - h);
            const double fm = sum_scores(px, py, bd);
            set(x, i, v);
            const double d = fabs((fp - fm) / (2 * h) - get(g, i));
            if (d > worst) worst = d;
        }
    }
    CHECK(worst < 1e-7);
    /* occupations sum to the number of moves of each utterance (each path makes S_b + T_b moves
     * regular, T_b modified) */
    for (int64_t b = 0; b < B; b++) {
        int64_t v[4];
        bnd_of(bd, b, S, T, v);
        double tot = 0.0;
        for (int64_t i = 0; i < S * T0; i++) tot += get(pxg, b * S * T0 + i);
        for (int64_t i = 0; i < (S + 1) * T; i++) tot += get(pyg, b * (S + 1) * T + i);
        CHECK_NEAR(tot, regular ? (double)(v[2] - v[0] + v[3] - v[1]) : (double)(v[3] - v[1]), 1e-9);
    }
    /* backward from p with grad_scores */
    tn_tensor *gs = mk_rand(TN_F64, 1, SH(B), 1.0), *pxg2 = mk(TN_F64, 3, px->shape), *pyg2 = mk(TN_F64, 3, py->shape);
    CHECK_OK(tn_rnnt_mutual_information_backward(pxg2, pyg2, gs, px, py, bd, p));
    double w2 = 0.0;
    for (int64_t b = 0; b < B; b++) {
        for (int64_t i = 0; i < S * T0; i++) {
            double d = fabs(get(pxg2, b * S * T0 + i) - get(gs, b) * get(pxg, b * S * T0 + i));
            if (d > w2) w2 = d;
        }
        for (int64_t i = 0; i < (S + 1) * T; i++) {
            double d = fabs(get(pyg2, b * (S + 1) * T + i) - get(gs, b) * get(pyg, b * (S + 1) * T + i));
            if (d > w2) w2 = d;
        }
    }
    CHECK(w2 < 1e-12);
    /* f32 against f64 */
    tn_tensor *px32 = conv(px, TN_F32), *py32 = conv(py, TN_F32), *sc32 = mk(TN_F32, 1, SH(B));
    tn_tensor *pxg32 = mk(TN_F32, 3, px->shape), *pyg32 = mk(TN_F32, 3, py->shape);
    CHECK_OK(tn_rnnt_mutual_information(sc32, pxg32, pyg32, NULL, px32, py32, bd));
    for (int64_t b = 0; b < B; b++) CHECK_NEAR(get(sc32, b), ref[b], 1e-4);
    CHECK(maxdiff(pxg32, pxg) < 1e-5 && maxdiff(pyg32, pyg) < 1e-5);
    tn_tensor *all[] = {px, py, bd, sc, pxg, pyg, p, gs, pxg2, pyg2, px32, py32, sc32, pxg32, pyg32};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
}

/* ---- logprobs references ----------------------------------------------------------------------- */

/* px, py from materialised logits L(b, t, s, c) (a callback), then fast_rnnt's post-processing */
typedef double (*logit_fn)(const void *ctx, int64_t b, int64_t t, int64_t s, int64_t c);

static void ref_logprobs(tn_tensor *px, tn_tensor *py, logit_fn L, const void *ctx, const tn_tensor *symbols,
                         const tn_tensor *bd, int64_t C, int64_t term, int type, double delay) {
    const int64_t B = py->shape[0], S = py->shape[1] - 1, T = py->shape[2], T0 = px->shape[2];
    for (int64_t i = 0; i < tn_tensor_numel(px); i++) set(px, i, NINF);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t s = 0; s <= S; s++) {
                double m = NINF, sum = 0.0;
                for (int64_t c = 0; c < C; c++) m = fmax(m, L(ctx, b, t, s, c));
                if (m == NINF) { /* band: row absent */
                    set(py, (b * (S + 1) + s) * T + t, NINF);
                    continue;
                }
                for (int64_t c = 0; c < C; c++) sum += exp(L(ctx, b, t, s, c) - m);
                const double lse = m + log(sum);
                set(py, (b * (S + 1) + s) * T + t, L(ctx, b, t, s, term) - lse);
                if (s < S) set(px, (b * S + s) * T0 + t, L(ctx, b, t, s, ((int64_t *)symbols->data)[b * S + s]) - lse);
            }
    for (int64_t b = 0; b < B; b++) {
        int64_t v[4];
        bnd_of(bd, b, S, T, v);
        for (int64_t s = 0; s < S; s++) {
            if (type == TN_RNNT_REGULAR && bd) set(px, (b * S + s) * T0 + v[3], NINF);
            for (int64_t t = 0; t < T0; t++) {
                double x = get(px, (b * S + s) * T0 + t);
                if (type == TN_RNNT_CONSTRAINED) x += get(py, (b * (S + 1) + s + 1) * T + t);
                if (delay > 0) x += delay * ((double)((bd ? v[3] : T) - 1) / 2.0 - (double)t);
                set(px, (b * S + s) * T0 + t, x);
            }
        }
    }
}

typedef struct add_ctx { const tn_tensor *lm, *am; int64_t S, T, C; } add_ctx;
static double add_logit(const void *vc, int64_t b, int64_t t, int64_t s, int64_t c) {
    const add_ctx *a = (const add_ctx *)vc;
    return get(a->lm, (b * (a->S + 1) + s) * a->C + c) + get(a->am, (b * a->T + t) * a->C + c);
}
typedef struct band_ref { const tn_tensor *logits, *ranges; int64_t T, R, C; } band_ref;
static double band_logit(const void *vc, int64_t b, int64_t t, int64_t s, int64_t c) {
    const band_ref *a = (const band_ref *)vc;
    const int64_t s0 = a->ranges ? ((const int64_t *)a->ranges->data)[(b * a->T + t) * a->R] : 0;
    if (s < s0 || s >= s0 + a->R) return NINF;
    return get(a->logits, ((b * a->T + t) * a->R + (s - s0)) * a->C + c);
}

/* fast_rnnt get_rnnt_logprobs_smoothed, written out in double */
static void ref_smoothed(tn_tensor *px, tn_tensor *py, const tn_tensor *lm, const tn_tensor *am,
                         const tn_tensor *symbols, const tn_tensor *bd, int64_t term, int type, double ls, double as) {
    const int64_t B = am->shape[0], T = am->shape[1], C = am->shape[2], S = lm->shape[1] - 1, T0 = px->shape[2];
    double *U = (double *)calloc((size_t)C, sizeof(double));
    for (int64_t r = 0; r < B * (S + 1); r++) {
        double m = NINF, sum = 0.0;
        for (int64_t c = 0; c < C; c++) m = fmax(m, get(lm, r * C + c));
        for (int64_t c = 0; c < C; c++) sum += exp(get(lm, r * C + c) - m);
        for (int64_t c = 0; c < C; c++) U[c] += exp(get(lm, r * C + c) - m) / sum / (double)(B * (S + 1));
    }
    const double cs = 1.0 - ls - as;
    for (int64_t b = 0; b < B; b++)
        for (int64_t s = 0; s <= S; s++) {
            double lonly = NINF;
            for (int64_t c = 0; c < C; c++) lonly = logadd(lonly, get(lm, (b * (S + 1) + s) * C + c));
            for (int64_t t = 0; t < T; t++) {
                double norm = NINF, aonly = NINF;
                for (int64_t c = 0; c < C; c++) {
                    const double a = get(am, (b * T + t) * C + c), l = get(lm, (b * (S + 1) + s) * C + c);
                    norm = logadd(norm, a + l);
                    aonly = logadd(aonly, a + log(U[c]));
                }
                const double at = get(am, (b * T + t) * C + term), lt = get(lm, (b * (S + 1) + s) * C + term);
                set(py, (b * (S + 1) + s) * T + t,
                    cs * (at + lt - norm) + ls * (lt - lonly) + as * (at + log(U[term]) - aonly));
                if (s < S) {
                    const int64_t k = ((int64_t *)symbols->data)[b * S + s];
                    const double ak = get(am, (b * T + t) * C + k), lk = get(lm, (b * (S + 1) + s) * C + k);
                    set(px, (b * S + s) * T0 + t, cs * (ak + lk - norm) + ls * (lk - lonly) + as * (ak + log(U[k]) - aonly));
                }
            }
            if (s < S && T0 > T) set(px, (b * S + s) * T0 + T, NINF);
        }
    for (int64_t b = 0; b < B; b++) {
        int64_t v[4];
        bnd_of(bd, b, S, T, v);
        for (int64_t s = 0; s < S; s++) {
            if (type == TN_RNNT_REGULAR && bd) set(px, (b * S + s) * T0 + v[3], NINF);
            if (type == TN_RNNT_CONSTRAINED)
                for (int64_t t = 0; t < T; t++)
                    set(px, (b * S + s) * T0 + t, get(px, (b * S + s) * T0 + t) + get(py, (b * (S + 1) + s + 1) * T + t));
        }
    }
    free(U);
}

/* J = <wx, px> + <wy, py> over the finite entries of px, py */
static double dotJ(const tn_tensor *px, const tn_tensor *py, const tn_tensor *wx, const tn_tensor *wy) {
    double j = 0.0;
    for (int64_t i = 0; i < tn_tensor_numel(px); i++)
        if (get(px, i) != NINF) j += get(wx, i) * get(px, i);
    for (int64_t i = 0; i < tn_tensor_numel(py); i++)
        if (get(py, i) != NINF) j += get(wy, i) * get(py, i);
    return j;
}
/* weights for J, zero where the forward output is -inf (those entries carry no gradient) */
static void weights_for(tn_tensor *wx, tn_tensor *wy, const tn_tensor *px, const tn_tensor *py) {
    for (int64_t i = 0; i < tn_tensor_numel(px); i++) set(wx, i, get(px, i) == NINF ? 0.0 : rnd());
    for (int64_t i = 0; i < tn_tensor_numel(py); i++) set(wy, i, get(py, i) == NINF ? 0.0 : rnd());
}

static void test_simple(int type, int with_boundary, double ls, double as, double delay) {
    const int64_t B = 3, S = 3, T = 5, C = 5, T0 = type == TN_RNNT_REGULAR ? T + 1 : T, term = 0;
    tn_tensor *lm = mk_rand(TN_F64, 3, SH(B, S + 1, C), 2.0), *am = mk_rand(TN_F64, 3, SH(B, T, C), 2.0);
    tn_tensor *sy = symbols_rand(B, S, C);
    tn_tensor *bd = with_boundary ? boundary_rand(B, S, T, type == TN_RNNT_REGULAR, 0) : NULL;
    tn_tensor *px = mk(TN_F64, 3, SH(B, S, T0)), *py = mk(TN_F64, 3, SH(B, S + 1, T));
    tn_tensor *rx = mk(TN_F64, 3, SH(B, S, T0)), *ry = mk(TN_F64, 3, SH(B, S + 1, T));
    CHECK_OK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, bd, term, type, ls, as, delay));
    if (ls == 0.0 && as == 0.0) {
        add_ctx a = {lm, am, S, T, C};
        ref_logprobs(rx, ry, add_logit, &a, sy, bd, C, term, type, delay);
    } else {
        ref_smoothed(rx, ry, lm, am, sy, bd, term, type, ls, as);
    }
    CHECK(maxdiff(px, rx) < 1e-10 && maxdiff(py, ry) < 1e-10);
    if (!(maxdiff(px, rx) < 1e-10 && maxdiff(py, ry) < 1e-10))
        fprintf(stderr, "  simple type %d boundary %d ls %g as %g: px diff %g, py diff %g\n", type, with_boundary, ls,
                as, maxdiff(px, rx), maxdiff(py, ry));
    /* f32 */
    tn_tensor *lm32 = conv(lm, TN_F32), *am32 = conv(am, TN_F32), *px32 = mk(TN_F32, 3, px->shape), *py32 = mk(TN_F32, 3, py->shape);
    CHECK_OK(tn_rnnt_logprobs_simple(px32, py32, lm32, am32, sy, bd, term, type, ls, as, delay));
    CHECK(maxdiff(px32, px) < 1e-4 && maxdiff(py32, py) < 1e-4);
    /* backward by finite differences of J */
    if (delay == 0.0) {
        tn_tensor *wx = mk(TN_F64, 3, px->shape), *wy = mk(TN_F64, 3, py->shape);
        weights_for(wx, wy, px, py);
        tn_tensor *glm = mk(TN_F64, 3, lm->shape), *gam = mk(TN_F64, 3, am->shape);
        CHECK_OK(tn_rnnt_logprobs_simple_backward(glm, gam, wx, wy, lm, am, sy, bd, term, type, ls, as));
        const double h = 1e-6;
        double worst = 0.0;
        for (int pass = 0; pass < 2; pass++) {
            tn_tensor *x = pass ? am : lm, *g = pass ? gam : glm;
            for (int64_t i = 0; i < tn_tensor_numel(x); i++) {
                const double v = get(x, i);
                set(x, i, v + h);
                CHECK_OK(tn_rnnt_logprobs_simple(rx, ry, lm, am, sy, bd, term, type, ls, as, 0.0));
                const double fp = dotJ(rx, ry, wx, wy);
                set(x, i, v - h);
                CHECK_OK(tn_rnnt_logprobs_simple(rx, ry, lm, am, sy, bd, term, type, ls, as, 0.0));
                const double fm = dotJ(rx, ry, wx, wy);
                set(x, i, v);
                const double d = fabs((fp - fm) / (2 * h) - get(g, i));
                if (d > worst) worst = d;
            }
        }
        CHECK(worst < 1e-6);
        if (!(worst < 1e-6)) fprintf(stderr, "  simple backward type %d ls %g as %g: worst %g\n", type, ls, as, worst);
        tn_tensor_free(wx), tn_tensor_free(wy), tn_tensor_free(glm), tn_tensor_free(gam);
    }
    tn_tensor *all[] = {lm, am, sy, bd, px, py, rx, ry, lm32, am32, px32, py32};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
}

/* logits (B, T, S+1, C) = lm + am */
static tn_tensor *add_logits(const tn_tensor *lm, const tn_tensor *am) {
    const int64_t B = am->shape[0], T = am->shape[1], C = am->shape[2], S1 = lm->shape[1];
    tn_tensor *l = mk(am->dtype, 4, SH(B, T, S1, C));
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t s = 0; s < S1; s++)
                for (int64_t c = 0; c < C; c++)
                    set(l, ((b * T + t) * S1 + s) * C + c, get(lm, (b * S1 + s) * C + c) + get(am, (b * T + t) * C + c));
    return l;
}

/* sum of MI scores of joint logprobs of logits (the full loss, negated and summed) */
static double full_score(const tn_tensor *logits, const tn_tensor *sy, const tn_tensor *bd, int64_t term, int type,
                         double delay) {
    const int64_t B = logits->shape[0], T = logits->shape[1], S = logits->shape[2] - 1;
    const int64_t T0 = type == TN_RNNT_REGULAR ? T + 1 : T;
    tn_tensor *px = mk(TN_F64, 3, SH(B, S, T0)), *py = mk(TN_F64, 3, SH(B, S + 1, T)), *sc = mk(TN_F64, 1, SH(B));
    CHECK_OK(tn_rnnt_logprobs_joint(px, py, NULL, logits, sy, bd, term, type, delay));
    CHECK_OK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, px, py, bd));
    double tot = 0.0;
    for (int64_t b = 0; b < B; b++) tot += get(sc, b);
    tn_tensor_free(px), tn_tensor_free(py), tn_tensor_free(sc);
    return tot;
}

static void test_joint(int type, int with_boundary, double delay) {
    const int64_t B = 3, S = 3, T = 4, C = 4, T0 = type == TN_RNNT_REGULAR ? T + 1 : T, term = 1;
    tn_tensor *lm = mk_rand(TN_F64, 3, SH(B, S + 1, C), 2.0), *am = mk_rand(TN_F64, 3, SH(B, T, C), 2.0);
    tn_tensor *sy = symbols_rand(B, S, C);
    tn_tensor *bd = with_boundary ? boundary_rand(B, S, T, type == TN_RNNT_REGULAR, 1) : NULL;
    tn_tensor *logits = add_logits(lm, am);
    tn_tensor *px = mk(TN_F64, 3, SH(B, S, T0)), *py = mk(TN_F64, 3, SH(B, S + 1, T));
    tn_tensor *sx = mk(TN_F64, 3, SH(B, S, T0)), *sy2 = mk(TN_F64, 3, SH(B, S + 1, T));
    tn_tensor *lse = mk(TN_F64, 3, SH(B, T, S + 1));
    CHECK_OK(tn_rnnt_logprobs_joint(px, py, lse, logits, sy, bd, term, type, delay));
    CHECK_OK(tn_rnnt_logprobs_simple(sx, sy2, lm, am, sy, bd, term, type, 0.0, 0.0, delay));
    CHECK(maxdiff(px, sx) < 1e-10 && maxdiff(py, sy2) < 1e-10); /* simple = full with an additive joiner */
    /* full loss: gradient of sum(scores) wrt logits through MI occupations, by FD */
    tn_tensor *sc = mk(TN_F64, 1, SH(B)), *pxg = mk(TN_F64, 3, px->shape), *pyg = mk(TN_F64, 3, py->shape);
    CHECK_OK(tn_rnnt_mutual_information(sc, pxg, pyg, NULL, px, py, bd));
    tn_tensor *gl = mk(TN_F64, 4, logits->shape), *gl2 = mk(TN_F64, 4, logits->shape);
    CHECK_OK(tn_rnnt_logprobs_joint_backward(gl, pxg, pyg, logits, lse, sy, bd, term, type));
    CHECK_OK(tn_rnnt_logprobs_joint_backward(gl2, pxg, pyg, logits, NULL, sy, bd, term, type));
    CHECK(maxdiff(gl, gl2) < 1e-14);
    const double h = 1e-6;
    double worst = 0.0;
    for (int64_t i = 0; i < tn_tensor_numel(logits); i++) {
        const double v = get(logits, i);
        set(logits, i, v + h);
        const double fp = full_score(logits, sy, bd, term, type, delay);
        set(logits, i, v - h);
        const double fm = full_score(logits, sy, bd, term, type, delay);
        set(logits, i, v);
        const double d = fabs((fp - fm) / (2 * h) - get(gl, i));
        if (d > worst) worst = d;
    }
    CHECK(worst < 1e-6);
    if (!(worst < 1e-6)) fprintf(stderr, "  joint backward type %d boundary %d: worst %g\n", type, with_boundary, worst);
    /* generic grad_px / grad_py by FD of J */
    tn_tensor *wx = mk(TN_F64, 3, px->shape), *wy = mk(TN_F64, 3, py->shape);
    weights_for(wx, wy, px, py);
    CHECK_OK(tn_rnnt_logprobs_joint_backward(gl, wx, wy, logits, lse, sy, bd, term, type));
    worst = 0.0;
    for (int64_t i = 0; i < tn_tensor_numel(logits); i++) {
        const double v = get(logits, i);
        set(logits, i, v + h);
        CHECK_OK(tn_rnnt_logprobs_joint(sx, sy2, NULL, logits, sy, bd, term, type, delay));
        const double fp = dotJ(sx, sy2, wx, wy);
        set(logits, i, v - h);
        CHECK_OK(tn_rnnt_logprobs_joint(sx, sy2, NULL, logits, sy, bd, term, type, delay));
        const double fm = dotJ(sx, sy2, wx, wy);
        set(logits, i, v);
        const double d = fabs((fp - fm) / (2 * h) - get(gl, i));
        if (d > worst) worst = d;
    }
    CHECK(worst < 1e-6);
    /* in place: the gradient overwrites the logits */
    tn_tensor *lcopy = conv(logits, TN_F64);
    CHECK_OK(tn_rnnt_logprobs_joint_backward(lcopy, wx, wy, lcopy, lse, sy, bd, term, type));
    CHECK(maxdiff(lcopy, gl) < 1e-14);
    /* f32 */
    tn_tensor *l32 = conv(logits, TN_F32), *px32 = mk(TN_F32, 3, px->shape), *py32 = mk(TN_F32, 3, py->shape);
    CHECK_OK(tn_rnnt_logprobs_joint(px32, py32, NULL, l32, sy, bd, term, type, delay));
    CHECK(maxdiff(px32, px) < 1e-5 && maxdiff(py32, py) < 1e-5);
    tn_tensor *wx32 = conv(wx, TN_F32), *wy32 = conv(wy, TN_F32);
    CHECK_OK(tn_rnnt_logprobs_joint_backward(l32, wx32, wy32, l32, NULL, sy, bd, term, type));
    CHECK(maxdiff(l32, gl) < 1e-5);
    tn_tensor *all[] = {lm, am, sy, bd, logits, px, py, sx, sy2, lse, sc, pxg, pyg, gl, gl2, wx, wy, lcopy, l32, px32, py32, wx32, wy32};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
}

/* ---- pruning ----------------------------------------------------------------------------------- */

static tn_tensor *gather_band(const tn_tensor *logits, const tn_tensor *ranges) {
    const int64_t B = logits->shape[0], T = logits->shape[1], S1 = logits->shape[2], C = logits->shape[3];
    const int64_t R = ranges->shape[2];
    tn_tensor *o = mk(logits->dtype, 4, SH(B, T, R, C));
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t k = 0; k < R; k++) {
                const int64_t s = ((const int64_t *)ranges->data)[(b * T + t) * R + k];
                for (int64_t c = 0; c < C; c++) set(o, ((b * T + t) * R + k) * C + c, get(logits, ((b * T + t) * S1 + s) * C + c));
            }
    return o;
}

static void check_ranges(const tn_tensor *ranges, const tn_tensor *bd, int64_t S, int regular) {
    const int64_t B = ranges->shape[0], T = ranges->shape[1], R = ranges->shape[2];
    const int64_t *r = (const int64_t *)ranges->data;
    int ok = 1;
    for (int64_t b = 0; b < B; b++) {
        int64_t v[4];
        bnd_of(bd, b, S, T, v);
        if (r[b * T * R] != 0) ok = 0; /* starts at symbol 0 */
        for (int64_t t = 0; t < T; t++) {
            const int64_t s0 = r[(b * T + t) * R];
            if (s0 < 0 || s0 + R > S + 1) ok = 0;
            for (int64_t k = 1; k < R; k++) ok &= r[(b * T + t) * R + k] == s0 + k;
            if (t > 0) {
                const int64_t d = s0 - r[(b * T + t - 1) * R];
                if (d < 0 || d >= (regular ? R : 2)) ok = 0;
            }
        }
        if (v[3] >= 1 && v[3] <= T) { /* the last valid frame's band reaches end_symbol (modified:
                                         * or end_symbol - 1, consumed with that frame) */
            const int64_t s0 = r[(b * T + v[3] - 1) * R];
            if (!(s0 <= v[2] && v[2] < s0 + R + (regular ? 0 : 1))) ok = 0;
        }
    }
    CHECK(ok);
    if (!ok)
        for (int64_t b = 0; b < B; b++) {
            int64_t v[4];
            bnd_of(bd, b, S, T, v);
            fprintf(stderr, "  ranges R %lld regular %d b %lld bnd [%lld %lld %lld %lld]:", (long long)R, regular,
                    (long long)b, (long long)v[0], (long long)v[1], (long long)v[2], (long long)v[3]);
            for (int64_t t = 0; t < T; t++) fprintf(stderr, " %lld", (long long)r[(b * T + t) * R]);
            fprintf(stderr, "\n");
        }
}

static void test_pruned(int type, int with_boundary) {
    const int64_t B = 3, S = 4, T = 6, C = 5, T0 = type == TN_RNNT_REGULAR ? T + 1 : T, term = 0;
    const int regular = type == TN_RNNT_REGULAR;
    tn_tensor *lm = mk_rand(TN_F64, 3, SH(B, S + 1, C), 2.0), *am = mk_rand(TN_F64, 3, SH(B, T, C), 2.0);
    tn_tensor *sy = symbols_rand(B, S, C);
    tn_tensor *bd = with_boundary ? boundary_rand(B, S, T, regular, 0) : NULL;
    tn_tensor *logits = mk_rand(TN_F64, 4, SH(B, T, S + 1, C), 2.0);
    /* simple loss with return_grad, then ranges */
    tn_tensor *px = mk(TN_F64, 3, SH(B, S, T0)), *py = mk(TN_F64, 3, SH(B, S + 1, T)), *sc = mk(TN_F64, 1, SH(B));
    tn_tensor *pxg = mk(TN_F64, 3, px->shape), *pyg = mk(TN_F64, 3, py->shape);
    CHECK_OK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, bd, term, type, 0.0, 0.0, 0.0));
    CHECK_OK(tn_rnnt_mutual_information(sc, pxg, pyg, NULL, px, py, bd));
    int64_t R = 0;
    CHECK_OK(tn_rnnt_prune_s_range(&R, pxg, pyg, bd, S + 3));
    CHECK(R == S + 1);
    tn_tensor *ranges = mk(TN_I64, 3, SH(B, T, R));
    CHECK_OK(tn_rnnt_prune_ranges(ranges, pxg, pyg, bd));
    check_ranges(ranges, bd, S, regular);
    /* pruned with R = S+1 equals the full loss */
    tn_tensor *lp = gather_band(logits, ranges);
    tn_tensor *qx = mk(TN_F64, 3, px->shape), *qy = mk(TN_F64, 3, py->shape), *sc2 = mk(TN_F64, 1, SH(B));
    CHECK_OK(tn_rnnt_logprobs_pruned(qx, qy, NULL, lp, sy, ranges, bd, term, type, 0.5));
    CHECK_OK(tn_rnnt_logprobs_joint(px, py, NULL, logits, sy, bd, term, type, 0.5));
    CHECK(maxdiff(qx, px) < 1e-12 && maxdiff(qy, py) < 1e-12);
    CHECK_OK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, px, py, bd));
    CHECK_OK(tn_rnnt_mutual_information(sc2, NULL, NULL, NULL, qx, qy, bd));
    CHECK(maxdiff(sc, sc2) < 1e-12);
    tn_tensor_free(ranges), tn_tensor_free(lp);
    /* narrow bands: s_range 2 (regular minimum) / 1 (modified), ranges constraints, pruned
     * logprobs against brute force and their backward by FD */
    for (int64_t want = 1; want <= 3; want++) {
        CHECK_OK(tn_rnnt_prune_s_range(&R, pxg, pyg, bd, want));
        CHECK(R >= want && R <= S + 1 && (!regular || R >= 2));
        ranges = mk(TN_I64, 3, SH(B, T, R));
        CHECK_OK(tn_rnnt_prune_ranges(ranges, pxg, pyg, bd));
        check_ranges(ranges, bd, S, regular);
        lp = gather_band(logits, ranges);
        tn_tensor *lse = mk(TN_F64, 3, SH(B, T, R));
        CHECK_OK(tn_rnnt_logprobs_pruned(qx, qy, lse, lp, sy, ranges, bd, term, type, 0.0));
        band_ref br = {lp, ranges, T, R, C};
        ref_logprobs(px, py, band_logit, &br, sy, bd, C, term, type, 0.0);
        CHECK(maxdiff(qx, px) < 1e-12 && maxdiff(qy, py) < 1e-12);
        tn_tensor *wx = mk(TN_F64, 3, px->shape), *wy = mk(TN_F64, 3, py->shape), *gl = mk(TN_F64, 4, lp->shape);
        weights_for(wx, wy, qx, qy);
        CHECK_OK(tn_rnnt_logprobs_pruned_backward(gl, wx, wy, lp, lse, sy, ranges, bd, term, type));
        const double h = 1e-6;
        double worst = 0.0;
        for (int64_t i = 0; i < tn_tensor_numel(lp); i++) {
            const double v = get(lp, i);
            set(lp, i, v + h);
            CHECK_OK(tn_rnnt_logprobs_pruned(px, py, NULL, lp, sy, ranges, bd, term, type, 0.0));
            const double fp = dotJ(px, py, wx, wy);
            set(lp, i, v - h);
            CHECK_OK(tn_rnnt_logprobs_pruned(px, py, NULL, lp, sy, ranges, bd, term, type, 0.0));
            const double fm = dotJ(px, py, wx, wy);
            set(lp, i, v);
            const double d = fabs((fp - fm) / (2 * h) - get(gl, i));
            if (d > worst) worst = d;
        }
        CHECK(worst < 1e-6);
        /* the pruned loss of a path-covering band is finite */
        CHECK_OK(tn_rnnt_mutual_information(sc2, NULL, NULL, NULL, qx, qy, bd));
        for (int64_t b = 0; b < B; b++) {
            /* (constrained with R = 1 has no symbol moves: py[s+1, t] is outside the band) */
            if (!isfinite(get(sc, b)) || (type == TN_RNNT_CONSTRAINED && R == 1)) continue;
            CHECK(isfinite(get(sc2, b)));
            if (!isfinite(get(sc2, b))) {
                int64_t v[4];
                bnd_of(bd, b, S, T, v);
                fprintf(stderr, "  type %d R %lld b %lld bnd [%lld %lld %lld %lld] ranges:", type, (long long)R, (long long)b,
                        (long long)v[0], (long long)v[1], (long long)v[2], (long long)v[3]);
                for (int64_t t = 0; t < T; t++) fprintf(stderr, " %lld", (long long)((int64_t *)ranges->data)[(b * T + t) * R]);
                fprintf(stderr, "\n");
            }
        }
        tn_tensor *all[] = {ranges, lp, lse, wx, wy, gl};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
    }
    /* do_pruning and its backward */
    ranges = mk(TN_I64, 3, SH(B, T, 2));
    CHECK_OK(tn_rnnt_prune_s_range(&R, pxg, pyg, bd, 2));
    if (R == 2) {
        CHECK_OK(tn_rnnt_prune_ranges(ranges, pxg, pyg, bd));
        const int64_t D = 3;
        tn_tensor *dec = mk_rand(TN_F64, 3, SH(B, S + 1, D), 1.0), *dp = mk(TN_F64, 4, SH(B, T, 2, D));
        CHECK_OK(tn_rnnt_do_pruning(dp, dec, ranges));
        int ok = 1;
        for (int64_t b = 0; b < B; b++)
            for (int64_t t = 0; t < T; t++)
                for (int64_t k = 0; k < 2; k++)
                    for (int64_t d = 0; d < D; d++)
                        ok &= get(dp, ((b * T + t) * 2 + k) * D + d) ==
                              get(dec, (b * (S + 1) + ((int64_t *)ranges->data)[(b * T + t) * 2 + k]) * D + d);
        CHECK(ok);
        tn_tensor *g = mk_rand(TN_F64, 4, dp->shape, 1.0), *gd = mk(TN_F64, 3, dec->shape);
        CHECK_OK(tn_rnnt_do_pruning_backward(gd, g, ranges));
        double dot1 = 0.0, dot2 = 0.0; /* <g, P x> = <P^T g, x> */
        for (int64_t i = 0; i < tn_tensor_numel(dp); i++) dot1 += get(g, i) * get(dp, i);
        for (int64_t i = 0; i < tn_tensor_numel(dec); i++) dot2 += get(gd, i) * get(dec, i);
        CHECK_NEAR(dot1, dot2, 1e-12);
        tn_tensor_free(dec), tn_tensor_free(dp), tn_tensor_free(g), tn_tensor_free(gd);
    }
    tn_tensor *all[] = {lm, am, sy, bd, logits, px, py, sc, pxg, pyg, ranges, qx, qy, sc2};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
}

/* the s_range minimum for regular RNN-T: (end_symbol - 1) / end_frame + 2, then clamp to S+1 */
static void test_s_range(void) {
    const int64_t B = 2, S = 10, T = 4;
    tn_tensor *pxg = mk_rand(TN_F32, 3, SH(B, S, T + 1), 1.0), *pyg = mk_rand(TN_F32, 3, SH(B, S + 1, T), 1.0);
    tn_tensor *bd = mk(TN_I64, 2, SH(B, 4));
    int64_t *v = (int64_t *)bd->data, R = 0;
    v[0] = 0, v[1] = 0, v[2] = 9, v[3] = 4; /* 9 symbols in 4 frames: (9-1)/4 + 2 = 4 */
    v[4] = 0, v[5] = 0, v[6] = 2, v[7] = 3;
    CHECK_OK(tn_rnnt_prune_s_range(&R, pxg, pyg, bd, 2));
    CHECK(R == 4);
    CHECK_OK(tn_rnnt_prune_s_range(&R, pxg, pyg, bd, 5));
    CHECK(R == 5);
    CHECK_OK(tn_rnnt_prune_s_range(&R, pxg, pyg, bd, 50));
    CHECK(R == S + 1);
    tn_tensor *ranges = mk(TN_I64, 3, SH(B, T, 2));
    CHECK(tn_rnnt_prune_ranges(ranges, pxg, pyg, bd) == TN_ERR_SHAPE); /* 2 is below the minimum */
    CHECK(strstr(tn_last_error(), "tn_rnnt_prune_s_range gives 4") != NULL);
    tn_tensor_free(ranges), tn_tensor_free(pxg), tn_tensor_free(pyg), tn_tensor_free(bd);
    /* S = 0: one position, R = 1, ranges all 0 */
    pxg = mk(TN_F64, 3, SH(2, 0, 4)), pyg = mk_rand(TN_F64, 3, SH(2, 1, 3), 1.0);
    CHECK_OK(tn_rnnt_prune_s_range(&R, pxg, pyg, NULL, 5));
    CHECK(R == 1);
    ranges = mk(TN_I64, 3, SH(2, 3, 1));
    CHECK_OK(tn_rnnt_prune_ranges(ranges, pxg, pyg, NULL));
    int ok = 1;
    for (int64_t i = 0; i < 6; i++) ok &= ((int64_t *)ranges->data)[i] == 0;
    CHECK(ok);
    tn_tensor_free(ranges), tn_tensor_free(pxg), tn_tensor_free(pyg);
}

/* ---- errors ------------------------------------------------------------------------------------ */

static void test_errors(void) {
    const int64_t B = 2, S = 3, T = 4, C = 5;
    tn_tensor *lm = mk_rand(TN_F32, 3, SH(B, S + 1, C), 1.0), *am = mk_rand(TN_F32, 3, SH(B, T, C), 1.0);
    tn_tensor *sy = symbols_rand(B, S, C);
    tn_tensor *px = mk(TN_F32, 3, SH(B, S, T + 1)), *py = mk(TN_F32, 3, SH(B, S + 1, T)), *sc = mk(TN_F32, 1, SH(B));
    CHECK_OK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0));
    /* symbols out of range */
    ((int64_t *)sy->data)[4] = C;
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_INDEX);
    CHECK(strstr(tn_last_error(), "symbols at position [1, 1] is 5, outside [0, C = 5)") != NULL);
    ((int64_t *)sy->data)[4] = -1;
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_INDEX);
    ((int64_t *)sy->data)[4] = 1;
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, C, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_INDEX);
    CHECK(strstr(tn_last_error(), "termination_symbol 5") != NULL);
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, 7, 0, 0, 0) == TN_ERR_ARG);
    /* boundary outside the tensors, end < begin, T_b < S_b for modified */
    tn_tensor *bd = mk(TN_I64, 2, SH(B, 4));
    int64_t *v = (int64_t *)bd->data;
    v[0] = 0, v[1] = 0, v[2] = S, v[3] = T + 1, v[4] = 0, v[5] = 0, v[6] = 1, v[7] = 2;
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, bd, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_INDEX);
    CHECK(strstr(tn_last_error(), "boundary row 0 = [0, 0, 3, 5]") != NULL);
    v[3] = T, v[4] = 2, v[6] = 1;
    CHECK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, px, py, bd) == TN_ERR_INDEX);
    CHECK(strstr(tn_last_error(), "boundary row 1") != NULL);
    v[4] = 0, v[6] = 3, v[7] = 2;
    tn_tensor *pxm = mk(TN_F32, 3, SH(B, S, T));
    CHECK(tn_rnnt_logprobs_simple(pxm, py, lm, am, sy, bd, 0, TN_RNNT_MODIFIED, 0, 0, 0) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "has 2 frames for 3 symbols") != NULL);
    CHECK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, pxm, py, bd) == TN_ERR_SHAPE);
    CHECK_OK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, bd, 0, TN_RNNT_REGULAR, 0, 0, 0)); /* regular: fine */
    /* NaN / inf inputs */
    CHECK_OK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0));
    set(py, (1 * (S + 1) + 2) * T + 1, NAN);
    CHECK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, px, py, NULL) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "py at position [1, 2, 1] is NaN") != NULL);
    set(py, (1 * (S + 1) + 2) * T + 1, INFINITY);
    CHECK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, px, py, NULL) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "is +inf") != NULL);
    set(am, 7, NAN);
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "am row [0, 1] holds NaN or inf") != NULL);
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0.1, 0.1, 0) == TN_ERR_ARG);
    set(am, 7, 0.5);
    set(lm, 3, -INFINITY);
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "lm row [0, 0]") != NULL);
    set(lm, 3, 0.5);
    tn_tensor *logits = mk_rand(TN_F32, 4, SH(B, T, S + 1, C), 1.0);
    set(logits, ((1 * T + 2) * (S + 1) + 1) * C + 3, NAN);
    CHECK(tn_rnnt_logprobs_joint(px, py, NULL, logits, sy, NULL, 0, TN_RNNT_REGULAR, 0) == TN_ERR_ARG);
    CHECK(strstr(tn_last_error(), "logits row [1, 2, 1]") != NULL);
    set(logits, ((1 * T + 2) * (S + 1) + 1) * C + 3, INFINITY);
    CHECK(tn_rnnt_logprobs_joint(px, py, NULL, logits, sy, NULL, 0, TN_RNNT_REGULAR, 0) == TN_ERR_ARG);
    set(logits, ((1 * T + 2) * (S + 1) + 1) * C + 3, -INFINITY); /* a masked class is fine */
    CHECK_OK(tn_rnnt_logprobs_joint(px, py, NULL, logits, sy, NULL, 0, TN_RNNT_REGULAR, 0));
    /* dtypes and shapes */
    tn_tensor *lm16 = mk(TN_F16, 3, lm->shape);
    CHECK(tn_rnnt_logprobs_simple(px, py, lm16, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_DTYPE);
    CHECK(strstr(tn_last_error(), "'lm' is f16; the RNN-T kernels take f32 or f64") != NULL);
    tn_tensor *am64 = conv(am, TN_F64);
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am64, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_DTYPE);
    CHECK(tn_rnnt_logprobs_simple(pxm, py, lm, am, sy, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_SHAPE);
    CHECK(strstr(tn_last_error(), "'px' has shape [2, 3, 4], expected [2, 3, 5]") != NULL);
    tn_tensor *pybad = mk(TN_F32, 3, SH(B, S, T));
    CHECK(tn_rnnt_mutual_information(sc, NULL, NULL, NULL, px, pybad, NULL) == TN_ERR_SHAPE);
    tn_tensor *sy32 = mk(TN_F32, 2, SH(B, S));
    CHECK(tn_rnnt_logprobs_simple(px, py, lm, am, sy32, NULL, 0, TN_RNNT_REGULAR, 0, 0, 0) == TN_ERR_DTYPE);
    CHECK(tn_rnnt_mutual_information(sc, px, NULL, NULL, px, py, NULL) == TN_ERR_ARG);
    tn_tensor *lp = mk_rand(TN_F32, 4, SH(B, T, 2, C), 1.0), *rg = mk(TN_I64, 3, SH(B, T, 2));
    for (int64_t i = 0; i < B * T; i++) ((int64_t *)rg->data)[2 * i] = 0, ((int64_t *)rg->data)[2 * i + 1] = 2;
    CHECK(tn_rnnt_logprobs_pruned(px, py, NULL, lp, sy, rg, NULL, 0, TN_RNNT_REGULAR, 0) == TN_ERR_INDEX);
    for (int64_t i = 0; i < B * T; i++) ((int64_t *)rg->data)[2 * i] = 3, ((int64_t *)rg->data)[2 * i + 1] = 4;
    CHECK(tn_rnnt_logprobs_pruned(px, py, NULL, lp, sy, rg, NULL, 0, TN_RNNT_REGULAR, 0) == TN_ERR_INDEX);
    for (int64_t i = 0; i < B * T; i++) ((int64_t *)rg->data)[2 * i] = 2, ((int64_t *)rg->data)[2 * i + 1] = 3;
    CHECK_OK(tn_rnnt_logprobs_pruned(px, py, NULL, lp, sy, rg, NULL, 0, TN_RNNT_REGULAR, 0));
    tn_tensor *all[] = {lm, am, sy, px, py, sc, bd, pxm, logits, lm16, am64, pybad, sy32, lp, rg};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
}

/* a larger case on several threads against the serial reference */
static void test_threads(void) {
    const int64_t B = 6, S = 20, T = 40, C = 30;
    tn_tensor *logits = mk_rand(TN_F32, 4, SH(B, T, S + 1, C), 3.0), *sy = symbols_rand(B, S, C);
    tn_tensor *bd = boundary_rand(B, S, T, 1, 0);
    tn_tensor *px = mk(TN_F32, 3, SH(B, S, T + 1)), *py = mk(TN_F32, 3, SH(B, S + 1, T)), *sc = mk(TN_F32, 1, SH(B));
    tn_tensor *pxg = mk(TN_F32, 3, px->shape), *pyg = mk(TN_F32, 3, py->shape), *sc1 = mk(TN_F32, 1, SH(B));
    tn_tensor *pxg1 = mk(TN_F32, 3, px->shape), *pyg1 = mk(TN_F32, 3, py->shape);
    const int nt0 = tn_get_num_threads();
    tn_set_num_threads(1);
    CHECK_OK(tn_rnnt_logprobs_joint(px, py, NULL, logits, sy, bd, 0, TN_RNNT_REGULAR, 0));
    CHECK_OK(tn_rnnt_mutual_information(sc1, pxg1, pyg1, NULL, px, py, bd));
    tn_set_num_threads(3);
    CHECK_OK(tn_rnnt_logprobs_joint(px, py, NULL, logits, sy, bd, 0, TN_RNNT_REGULAR, 0));
    CHECK_OK(tn_rnnt_mutual_information(sc, pxg, pyg, NULL, px, py, bd));
    tn_set_num_threads(nt0);
    CHECK(maxdiff(sc, sc1) == 0.0 && maxdiff(pxg, pxg1) == 0.0 && maxdiff(pyg, pyg1) == 0.0);
    double ref[8];
    tn_tensor *px64 = conv(px, TN_F64), *py64 = conv(py, TN_F64);
    ref_mi(ref, px64, py64, bd);
    for (int64_t b = 0; b < B; b++) {
        CHECK(get(sc, b) == ref[b] || fabs(get(sc, b) - ref[b]) <= 1e-3 + 1e-6 * fabs(ref[b]));
        if (get(sc, b) != ref[b] && !(fabs(get(sc, b) - ref[b]) <= 1e-3 + 1e-6 * fabs(ref[b]))) fprintf(stderr, "  threads b %lld: %.9g vs %.9g\n", (long long)b, get(sc, b), ref[b]);
    }
    tn_tensor *all[] = {logits, sy, bd, px, py, sc, pxg, pyg, sc1, pxg1, pyg1, px64, py64};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
}

/* Few long utterances on more threads than utterances run along anti-diagonals (wave mode):
 * the same bits as the row-major sweep on one thread, for the scores, the one-pass occupations,
 * the table p and the backward from p; a NaN input gives the same error message. */
static void test_mi_waves(int regular) {
    const int64_t B = 2, S = regular ? 400 : 300, T = 400, T0 = regular ? T + 1 : T;
    tn_tensor *px = mk_rand(TN_F64, 3, SH(B, S, T0), 2.0), *py = mk_rand(TN_F64, 3, SH(B, S + 1, T), 2.0);
    tn_tensor *bd = mk(TN_I64, 2, SH(B, 4));
    const int64_t rows[8] = {0, 0, S, T, 3, 1, S - 2, T - 5};
    memcpy(bd->data, rows, sizeof rows);
    tn_tensor *sc[2], *pxg[2], *pyg[2], *p[2], *pxg2[2], *pyg2[2];
    tn_tensor *gs = mk_rand(TN_F64, 1, SH(B), 1.0);
    char msg[2][512];
    const int nt0 = tn_get_num_threads();
    for (int run = 0; run < 2; run++) {
        tn_set_num_threads(run ? 4 : 1); /* 4 >= 2B threads and waves of >= 48 x 4 cells: wave mode */
        sc[run] = mk(TN_F64, 1, SH(B)), pxg[run] = mk(TN_F64, 3, px->shape), pyg[run] = mk(TN_F64, 3, py->shape);
        p[run] = mk(TN_F64, 3, SH(B, S + 1, T + 1));
        pxg2[run] = mk(TN_F64, 3, px->shape), pyg2[run] = mk(TN_F64, 3, py->shape);
        CHECK_OK(tn_rnnt_mutual_information(sc[run], pxg[run], pyg[run], p[run], px, py, bd));
        CHECK_OK(tn_rnnt_mutual_information_backward(pxg2[run], pyg2[run], gs, px, py, bd, p[run]));
        const double v = get(py, (1 * (S + 1) + 150) * T + 120), vx = get(px, (1 * S + 100) * T0 + 180);
        set(py, (1 * (S + 1) + 150) * T + 120, NAN);
        set(px, (1 * S + 100) * T0 + 180, INFINITY);
        CHECK(tn_rnnt_mutual_information(sc[run], NULL, NULL, NULL, px, py, bd) == TN_ERR_ARG);
        snprintf(msg[run], sizeof msg[run], "%s", tn_last_error());
        set(py, (1 * (S + 1) + 150) * T + 120, v);
        set(px, (1 * S + 100) * T0 + 180, vx);
    }
    tn_set_num_threads(nt0);
    CHECK(maxdiff(sc[0], sc[1]) == 0.0 && maxdiff(p[0], p[1]) == 0.0);
    CHECK(maxdiff(pxg[0], pxg[1]) == 0.0 && maxdiff(pyg[0], pyg[1]) == 0.0);
    CHECK(maxdiff(pxg2[0], pxg2[1]) == 0.0 && maxdiff(pyg2[0], pyg2[1]) == 0.0);
    double occ = 0.0, occ2 = 0.0; /* utterance 1 makes S-5 symbol moves: not all zero */
    for (int64_t i = S * T0; i < 2 * S * T0; i++) occ += get(pxg[1], i), occ2 += get(pxg2[1], i);
    CHECK_NEAR(occ, (double)(S - 5), 1e-9 * S);
    CHECK_NEAR(occ2, get(gs, 1) * (double)(S - 5), 1e-9 * S);
    double ref[2];
    ref_mi(ref, px, py, bd);
    for (int64_t b = 0; b < B; b++) CHECK_NEAR(get(sc[1], b), ref[b], 1e-9 * fabs(ref[b]));
    CHECK(strcmp(msg[0], msg[1]) == 0 && strstr(msg[0], "[1, 100, 180] is +inf") != NULL);
    if (strcmp(msg[0], msg[1]) != 0) fprintf(stderr, "  waves: '%s' vs '%s'\n", msg[0], msg[1]);
    tn_tensor *all[] = {px, py, bd, gs, sc[0], sc[1], pxg[0], pxg[1], pyg[0], pyg[1], p[0], p[1],
                        pxg2[0], pxg2[1], pyg2[0], pyg2[1]};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) tn_tensor_free(all[i]);
}

int main(void) {
    for (int regular = 0; regular < 2; regular++) {
        test_mi(regular, 0, 0);
        test_mi(regular, 1, 0);
        test_mi(regular, 1, 1);
    }
    for (int type = 0; type < 3; type++)
        for (int wb = 0; wb < 2; wb++) {
            test_simple(type, wb, 0.0, 0.0, 0.0);
            test_simple(type, wb, 0.0, 0.0, 0.3);
            test_simple(type, wb, 0.1, 0.2, 0.0);
            test_simple(type, wb, 0.25, 0.0, 0.0);
            test_joint(type, wb, 0.0);
            test_joint(type, wb, 0.2);
            test_pruned(type, wb);
        }
    test_s_range();
    test_errors();
    test_threads();
    test_mi_waves(1);
    test_mi_waves(0);
    return check_report("test_rnnt");
}
