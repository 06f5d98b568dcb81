/*
 * kernels/optim.h — per-element math of the optimizers (SGD, Adam/AdamW, NovoGrad, the LARC
 * gradient rescale), of the mixed-precision unscale-and-check and of the saturating write-back
 * of FP32 master weights into f16/bf16 model weights. Shared by core/optim.c and cuda/.
 *
 * Every update reads its coefficients from a small struct the caller fills once per call, in
 * the precision of the parameters (_f: float, _d: double), the way PyTorch 1.13 casts its
 * Python scalars to the tensor dtype; the operations run in torch.optim's order
 * (_single_tensor_sgd / _single_tensor_adam / _single_tensor_adamw), one rounding each, so
 * results agree with torch to float rounding. Gradients are multiplied by grad_scale first
 * (1 / iter_size for gradient accumulation; 1 is exact).
 *
 * Adam is split at the square root: tn_adam_moments_* updates m and v, the caller takes
 * sqrt(v) (the CPU loop does it in blocks with vector square roots), tn_adam_param_* applies
 * the step. A CUDA kernel calls the three in a row.
 */
#ifndef TERN_KERNELS_OPTIM_H
#define TERN_KERNELS_OPTIM_H

#include <math.h>

#include "common.h"
#include "half.h"

/* The float (_f) and double (_d) version of each coefficient struct and update below come from
 * one macro instantiated for both types (C has no templates), so that the two precisions cannot
 * drift apart; the expressions are the same in both, hence so is the rounding. */

/* ---- SGD (torch.optim.SGD: momentum, dampening, nesterov, L2 weight decay) ------------------ */

/* tn_sgd_coef_S and tn_sgd_S, which returns the new parameter and updates *buf when
 * c->has_momentum. */
#define TN_SGD_DEFINE(T, S)                                                                        \
    typedef struct tn_sgd_coef_##S {                                                               \
        T grad_scale, weight_decay, momentum, one_minus_dampening, neg_lr;                         \
        int has_wd, has_momentum, nesterov, first; /* first: the momentum buffer starts as d_p */  \
    } tn_sgd_coef_##S;                                                                             \
    static TN_HD T tn_sgd_##S(T p, T g, T *buf, const tn_sgd_coef_##S *c) {                        \
        T d = g * c->grad_scale;                                                                   \
        if (c->has_wd) d = d + c->weight_decay * p;                                                \
        if (c->has_momentum) {                                                                     \
            T b = c->first ? d : *buf * c->momentum + c->one_minus_dampening * d;                  \
            *buf = b;                                                                              \
            d = c->nesterov ? d + c->momentum * b : b;                                             \
        }                                                                                          \
        return p + c->neg_lr * d;                                                                  \
    }
TN_SGD_DEFINE(float, f)
TN_SGD_DEFINE(double, d)
#undef TN_SGD_DEFINE

/* ---- Adam / AdamW (amsgrad off; eps added after the square root, as torch) ---------------- */

/* tn_adam_coef_S, tn_adam_moments_S and tn_adam_param_S.
 * moments: m = m * beta1 + (1 - beta1) * g;  v = v * beta2 + ((1 - beta2) * g) * g
 * param: p (times decay for AdamW) + (-step_size * m) / (sqrt_v / sqrt(1 - beta2^t) + eps) */
#define TN_ADAM_DEFINE(T, S)                                                                       \
    typedef struct tn_adam_coef_##S {                                                              \
        T grad_scale;                                                                              \
        T weight_decay;   /* Adam's L2 term (grad += wd * p); has_wd = 0 for AdamW */              \
        T decay;          /* AdamW: p *= 1 - lr * wd before the step (1 for Adam) */               \
        T beta1, one_minus_beta1, beta2, one_minus_beta2;                                          \
        T bias_correction2_sqrt; /* sqrt(1 - beta2^t) */                                           \
        T eps;                                                                                     \
        T neg_step_size;  /* -lr / (1 - beta1^t) */                                                \
        int has_wd, decoupled;                                                                     \
    } tn_adam_coef_##S;                                                                            \
    static TN_HD void tn_adam_moments_##S(T g, T p, T *m, T *v, const tn_adam_coef_##S *c) {       \
        T d = g * c->grad_scale;                                                                   \
        if (c->has_wd) d = d + c->weight_decay * p;                                                \
        *m = *m * c->beta1 + c->one_minus_beta1 * d;                                               \
        *v = *v * c->beta2 + c->one_minus_beta2 * d * d;                                           \
    }                                                                                              \
    static TN_HD T tn_adam_param_##S(T p, T m, T sqrt_v, const tn_adam_coef_##S *c) {              \
        T denom = sqrt_v / c->bias_correction2_sqrt + c->eps;                                      \
        if (c->decoupled) p = p * c->decay;                                                        \
        return p + c->neg_step_size * m / denom;                                                   \
    }
TN_ADAM_DEFINE(float, f)
TN_ADAM_DEFINE(double, d)
#undef TN_ADAM_DEFINE

/* ---- NovoGrad (Ginsburg et al. 2019; OpenSeq2Seq) --------------------------------------------
 * Per tensor: v = ||g||^2 at the first step, then beta2 v + (1 - beta2) ||g||^2; the caller
 * passes gnorm_scale = grad_scale / (sqrt(v) + eps). Per element:
 *   m = beta1 m + (g / (sqrt(v) + eps) + wd p) [* (1 - beta1) with grad averaging];  p -= lr m */

/* tn_novograd_coef_S and tn_novograd_S */
#define TN_NOVOGRAD_DEFINE(T, S)                                                                   \
    typedef struct tn_novograd_coef_##S {                                                          \
        T gnorm_scale, weight_decay, beta1, avg, neg_lr; /* avg: 1 - beta1 or 1 */                 \
    } tn_novograd_coef_##S;                                                                        \
    static TN_HD T tn_novograd_##S(T p, T g, T *m, const tn_novograd_coef_##S *c) {                \
        T d = (g * c->gnorm_scale + c->weight_decay * p) * c->avg;                                 \
        T mm = c->beta1 * *m + d;                                                                  \
        *m = mm;                                                                                   \
        return p + c->neg_lr * mm;                                                                 \
    }
TN_NOVOGRAD_DEFINE(float, f)
TN_NOVOGRAD_DEFINE(double, d)
#undef TN_NOVOGRAD_DEFINE

/* ---- LARC (NVIDIA apex LARC) ----------------------------------------------------------------
 * The caller computes per tensor trust = eta ||w|| / (||g|| + wd ||w|| + eps) (clip mode:
 * min(trust / lr, 1)) when ||w|| and ||g|| are both nonzero (has_trust), and the gradient
 * becomes (g + wd w) * trust; otherwise it stays g (apex drops the weight decay then too). */

/* tn_larc_grad_S */
#define TN_LARC_DEFINE(T, S)                                                                       \
    static TN_HD T tn_larc_grad_##S(T g, T w, T grad_scale, T wd, T trust, int has_trust) {        \
        T d = g * grad_scale;                                                                      \
        return has_trust ? (d + wd * w) * trust : d;                                               \
    }
TN_LARC_DEFINE(float, f)
TN_LARC_DEFINE(double, d)
#undef TN_LARC_DEFINE

/* ---- mixed precision ------------------------------------------------------------------------ */

/* y = g * inv_scale; *finite = 0 for inf/NaN y; returns |y| for finite y, else 0 (the amax
 * of the finite gradients). Branch-free so that loops vectorise. */
static TN_HD float tn_unscale_f(float g, float inv_scale, float *y, int *finite) {
    float v = g * inv_scale;
    int fin = (v - v) == 0.0f; /* inf - inf and NaN - NaN are NaN */
    *y = v;
    *finite = fin;
    return fin ? fabsf(v) : 0.0f;
}

/* Largest finite binary16 and bfloat16 values. */
#define TN_F16_MAX 65504.0f
#define TN_BF16_MAX 3.38953138925153547590e38f

/* Round to nearest even, saturating: out-of-range values (infinities included) become the
 * largest finite value of that sign instead of infinity; NaN stays NaN. */
static TN_HD uint16_t tn_float_to_half_sat(float x) {
    float c = x > TN_F16_MAX ? TN_F16_MAX : x < -TN_F16_MAX ? -TN_F16_MAX : x;
    return tn_float_to_half(c);
}
static TN_HD uint16_t tn_float_to_bf16_sat(float x) {
    float c = x > TN_BF16_MAX ? TN_BF16_MAX : x < -TN_BF16_MAX ? -TN_BF16_MAX : x;
    return tn_float_to_bf16(c);
}

#endif /* TERN_KERNELS_OPTIM_H */
