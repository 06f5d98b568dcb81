/*
 * elementwise.c — tn_binary, tn_binary_scalar, tn_unary, tn_clamp, tn_where, tn_masked_fill:
 * argument checks and output preparation for every device, the CPU loops, and the dispatch of
 * CUDA tensors to cuda/elementwise.cu (which gets the same finished tn_iter).
 *
 * Gradient policy: forward only; the autograd (Lua) composes backward passes from these ops.
 * Ownership: `tn_tensor **out` follows tern.h (allocated when *out == NULL, else written in
 * place; *out may be the input a).
 *
 * Dtypes: f32 and f64 compute natively; f16/bf16 load into f32 chunks, compute with the f32
 * kernels and round back; i32/i64/u8 support add sub mul div(trunc) maximum minimum and the
 * comparisons, and neg abs sign square relu floor ceil round logical_not; float-only ops on
 * integers fail with TN_ERR_DTYPE. Integer arithmetic wraps (two's complement) like torch.
 *
 * Speed: every loop goes through one tn_iter kernel per (dtype, op family) with an
 * op switch outside the element loop; the all-contiguous and the scalar-broadcast runs are
 * `omp simd` loops. Contiguous operands of the output's numel skip the broadcast set-up
 * (tn_iter_flat). Below TN_PAR_MIN elements nothing enters an OpenMP region. f32 exp (and so
 * f16/bf16 exp) runs vmath.h's AVX2+FMA expf on CPUs that have it (<= 1 ulp from libm expf,
 * like the plain tn_exp_f, whose results can differ from it by an ulp); f32/f16/bf16 sigmoid
 * and tanh run vmath.h's vector versions built on it there (<= 2 ulp from the double result).
 *
 * CUDA: the per-element math is the same kernels/elementwise.h; scalars travel as kernel
 * arguments; the integer-division-by-zero check runs on the device (same message). Host code
 * here never reads CUDA memory.
 */
#include <stdlib.h>

#include "internal.h"
#include "iter.h"
#include "kernels/elementwise.h"
#include "vmath.h"

#ifdef TERN_HAVE_CUDA
/* cuda/elementwise.cu. Each takes the finished iterator of core (operand 0 the output, then
 * the inputs in the order given), with numel > 0, and queues its kernel on the current
 * stream; no host synchronisation except tn_cuda_has_zero. */
/* operands out (u8 for comparisons, else dtype), a, b (dtype); any op valid for dtype */
tn_status tn_cuda_binary(const tn_iter *it, int32_t op, int32_t dtype);
/* operands out, a: out = a op s (reverse 0) or s op a (reverse 1); scalar: the value as the
 * CPU path stores it (f32 for f32/f16/bf16, f64, or the integer dtype), low bytes first;
 * not for integer comparisons (tn_cuda_icmp_scalar) */
tn_status tn_cuda_binary_scalar(const tn_iter *it, int32_t op, int32_t dtype, int32_t reverse, uint64_t scalar);
/* operands out (u8), a (integer dtype): a op s compared exactly (op a comparison) */
tn_status tn_cuda_icmp_scalar(const tn_iter *it, int32_t op, int32_t dtype, double s);
/* operands out (u8 for logical_not, else dtype), a (dtype) */
tn_status tn_cuda_unary(const tn_iter *it, int32_t op, int32_t dtype);
/* operands out, a (dtype); floats use lo, hi; integers ilo, ihi (made integral, saturated) */
tn_status tn_cuda_clamp(const tn_iter *it, int32_t dtype, double lo, double hi, int64_t ilo, int64_t ihi);
/* operands out, cond (u8), a, b: elements of elsize bytes (1, 2, 4 or 8) */
tn_status tn_cuda_where(const tn_iter *it, int32_t elsize);
/* operands out, a, mask (u8): value: the fill value's bytes in the dtype, low bytes first */
tn_status tn_cuda_masked_fill(const tn_iter *it, int32_t elsize, uint64_t value);
/* [OUT] found: 1 when the one operand (integer dtype) holds a zero; waits for the stream */
tn_status tn_cuda_has_zero(int *found, const tn_iter *it, int32_t dtype);
#endif

static const char *const binop_names[TN_NUM_BINOPS] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum",
                                                       "atan2", "eq", "ne", "lt", "le", "gt", "ge"};
static const char *const unop_names[TN_NUM_UNOPS] = {
    "neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "relu", "sign", "log1p", "expm1",
    "sin", "cos", "reciprocal", "square", "floor", "ceil", "round", "logical_not"};

static int is_cmp(int32_t op) { return op >= TN_EQ && op <= TN_GE; }

/* ---- binary kernels: operands 0 = out (n), 1 = a, 2 = b ------------------------------------ */

typedef struct op_ctx {
    int32_t op;
} op_ctx;

/* One run of `o = EXPR(x, y)`: all-contiguous and scalar-broadcast runs vectorise. */
#define BIN_LOOP(TO, TI, EXPR)                                                                 \
    do {                                                                                       \
        TO *o_ = (TO *)p[0];                                                                   \
        const TI *a_ = (const TI *)p[1], *b_ = (const TI *)p[2];                               \
        if (s[0] == 1 && s[1] == 1 && s[2] == 1) {                                             \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                              \
                TI x = a_[i], y = b_[i];                                                       \
                o_[i] = (TO)(EXPR);                                                            \
            }                                                                                  \
        } else if (s[0] == 1 && s[1] == 1 && s[2] == 0) {                                      \
            const TI y = b_[0];                                                                \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                              \
                TI x = a_[i];                                                                  \
                o_[i] = (TO)(EXPR);                                                            \
            }                                                                                  \
        } else if (s[0] == 1 && s[1] == 0 && s[2] == 1) {                                      \
            const TI x = a_[0];                                                                \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                              \
                TI y = b_[i];                                                                  \
                o_[i] = (TO)(EXPR);                                                            \
            }                                                                                  \
        } else {                                                                               \
            const int64_t so = s[0], sa = s[1], sb = s[2];                                     \
            for (int64_t i = 0; i < n; i++) {                                                  \
                TI x = a_[i * sa], y = b_[i * sb];                                             \
                o_[i * so] = (TO)(EXPR);                                                       \
            }                                                                                  \
        }                                                                                      \
    } while (0)

#define CMP_CASES(T)                                                                           \
    case TN_EQ: BIN_LOOP(uint8_t, T, x == y); break;                                           \
    case TN_NE: BIN_LOOP(uint8_t, T, x != y); break;                                           \
    case TN_LT: BIN_LOOP(uint8_t, T, x < y); break;                                            \
    case TN_LE: BIN_LOOP(uint8_t, T, x <= y); break;                                           \
    case TN_GT: BIN_LOOP(uint8_t, T, x > y); break;                                            \
    case TN_GE: BIN_LOOP(uint8_t, T, x >= y); break;

#define BIN_FLOAT_KERNEL(name, T, S)                                                           \
    static void name(void *ctx, char **p, const int64_t *s, int64_t n) {                       \
        switch (((const op_ctx *)ctx)->op) {                                                   \
        case TN_ADD: BIN_LOOP(T, T, tn_add_##S(x, y)); break;                                  \
        case TN_SUB: BIN_LOOP(T, T, tn_sub_##S(x, y)); break;                                  \
        case TN_MUL: BIN_LOOP(T, T, tn_mul_##S(x, y)); break;                                  \
        case TN_DIV: BIN_LOOP(T, T, tn_div_##S(x, y)); break;                                  \
        case TN_POW: BIN_LOOP(T, T, tn_pow_##S(x, y)); break;                                  \
        case TN_MAXIMUM: BIN_LOOP(T, T, tn_maximum_##S(x, y)); break;                          \
        case TN_MINIMUM: BIN_LOOP(T, T, tn_minimum_##S(x, y)); break;                          \
        case TN_ATAN2: BIN_LOOP(T, T, tn_atan2_##S(x, y)); break;                              \
            CMP_CASES(T)                                                                       \
        default: break;                                                                        \
        }                                                                                      \
    }

BIN_FLOAT_KERNEL(bin_f32, float, f)
BIN_FLOAT_KERNEL(bin_f64, double, d)

#define BIN_INT_KERNEL(name, T, S)                                                             \
    static void name(void *ctx, char **p, const int64_t *s, int64_t n) {                       \
        switch (((const op_ctx *)ctx)->op) {                                                   \
        case TN_ADD: BIN_LOOP(T, T, tn_add_##S(x, y)); break;                                  \
        case TN_SUB: BIN_LOOP(T, T, tn_sub_##S(x, y)); break;                                  \
        case TN_MUL: BIN_LOOP(T, T, tn_mul_##S(x, y)); break;                                  \
        case TN_DIV: BIN_LOOP(T, T, tn_div_##S(x, y)); break; /* no zero divisor: checked */   \
        case TN_MAXIMUM: BIN_LOOP(T, T, tn_maximum_##S(x, y)); break;                          \
        case TN_MINIMUM: BIN_LOOP(T, T, tn_minimum_##S(x, y)); break;                          \
            CMP_CASES(T)                                                                       \
        default: break;                                                                        \
        }                                                                                      \
    }

BIN_INT_KERNEL(bin_i32, int32_t, i32)
BIN_INT_KERNEL(bin_i64, int64_t, i64)
BIN_INT_KERNEL(bin_u8, uint8_t, u8)

/* ---- f16/bf16: convert chunks to f32, run the f32 kernel, round back ---------------------- */

enum { HALF_CHUNK = 512 };

typedef struct half_ctx {
    tn_iter_fn fn; /* the f32 kernel */
    void *ctx;
    int nops;
    int32_t dtype[TN_ITER_MAX_OPS]; /* operand dtypes; only f16/bf16 operands are converted */
} half_ctx;

static int is_half(int32_t d) { return d == TN_F16 || d == TN_BF16; }

static void half_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    const half_ctx *h = (const half_ctx *)ctx;
    float buf[TN_ITER_MAX_OPS][HALF_CHUNK]; /* (nops, HALF_CHUNK) f32 staging */
    char *q[TN_ITER_MAX_OPS];
    int64_t qs[TN_ITER_MAX_OPS];
    for (int64_t i0 = 0; i0 < n; i0 += HALF_CHUNK) {
        int64_t m = n - i0 < HALF_CHUNK ? n - i0 : HALF_CHUNK;
        for (int k = 0; k < h->nops; k++) {
            int32_t dt = h->dtype[k];
            if (!is_half(dt)) {
                q[k] = p[k] + i0 * s[k] * (int64_t)tn_dtype_size(dt);
                qs[k] = s[k];
                continue;
            }
            const uint16_t *src = (const uint16_t *)p[k] + i0 * s[k];
            q[k] = (char *)buf[k];
            qs[k] = 1;
            if (k == 0) continue; /* output: written after the kernel */
            if (s[k] == 0) {
                buf[k][0] = dt == TN_F16 ? tn_half_to_float(src[0]) : tn_bf16_to_float(src[0]);
                qs[k] = 0;
            } else if (dt == TN_F16) {
                for (int64_t i = 0; i < m; i++) buf[k][i] = tn_half_to_float(src[i * s[k]]);
            } else {
                for (int64_t i = 0; i < m; i++) buf[k][i] = tn_bf16_to_float(src[i * s[k]]);
            }
        }
        h->fn(h->ctx, q, qs, m);
        if (is_half(h->dtype[0])) {
            uint16_t *dst = (uint16_t *)p[0] + i0 * s[0];
            if (h->dtype[0] == TN_F16)
                for (int64_t i = 0; i < m; i++) dst[i * s[0]] = tn_float_to_half(buf[0][i]);
            else
                for (int64_t i = 0; i < m; i++) dst[i * s[0]] = tn_float_to_bf16(buf[0][i]);
        }
    }
}

/* The iterator over nops tensors; ts[0] is the output and carries the broadcast shape. Flat
 * when every operand is contiguous with the output's numel. Returns 0 (iterator unset) when
 * there is nothing to do. */
static int ew_iter(tn_iter *it, int nops, const tn_tensor *const *ts) {
    int64_t n = tn_tensor_numel(ts[0]);
    if (n == 0) return 0;
    int flat = 1;
    for (int k = 0; k < nops && flat; k++) flat = tn_tensor_is_contiguous(ts[k]) && tn_tensor_numel(ts[k]) == n;
    if (flat) {
        char *d[TN_ITER_MAX_OPS];
        size_t es[TN_ITER_MAX_OPS];
        for (int k = 0; k < nops; k++) { d[k] = ts[k]->data; es[k] = tn_dtype_size(ts[k]->dtype); }
        tn_iter_flat(it, nops, d, es, n);
    } else {
        tn_iter_init(it, ts[0]->ndim, ts[0]->shape);
        for (int k = 0; k < nops; k++) tn_iter_add_tensor(it, ts[k]);
        tn_iter_finish(it);
    }
    return 1;
}

/* Run fn over nops tensors on the CPU (see ew_iter). When half_wrap is set, fn is an f32
 * kernel and f16/bf16 operands are staged through f32. */
static void run_ew(tn_iter_fn fn, void *ctx, int nops, const tn_tensor *const *ts, int half_wrap) {
    tn_iter it;
    if (!ew_iter(&it, nops, ts)) return;
    if (half_wrap) {
        half_ctx h = {fn, ctx, nops, {0}};
        for (int k = 0; k < nops; k++) h.dtype[k] = ts[k]->dtype;
        tn_iter_run(&it, half_kernel, &h, TN_PAR_MIN);
    } else {
        tn_iter_run(&it, fn, ctx, TN_PAR_MIN);
    }
}

/* ---- shared checks -------------------------------------------------------------------------- */

static tn_status check_in(const char *op, const char *arg, const tn_tensor *t) {
    TN_TRY(tn_check_tensor(op, arg, t));
    TN_TRY(tn_check_backend(op, t));
    if (t->dtype < 0 || t->dtype >= TN_NUM_DTYPES) return tn_error(TN_ERR_DTYPE, "%s: %s has invalid dtype %d", op, arg, (int)t->dtype);
    return TN_OK;
}

/* Two operands: both valid, on the same device (checked before the backend check, so a
 * device mismatch is reported as such), then on a device this build has. */
static tn_status check_pair(const char *op, const char *an, const tn_tensor *a, const char *bn,
                            const tn_tensor *b) {
    TN_TRY(tn_check_tensor(op, an, a));
    TN_TRY(tn_check_tensor(op, bn, b));
    TN_TRY(tn_check_same_device(op, a, b));
    TN_TRY(check_in(op, an, a));
    return check_in(op, bn, b);
}

static tn_iter_fn bin_kernel(int32_t dtype) {
    switch (dtype) {
    case TN_F64: return bin_f64;
    case TN_I32: return bin_i32;
    case TN_I64: return bin_i64;
    case TN_U8: return bin_u8;
    default: return bin_f32; /* f32, and f16/bf16 through half_kernel */
    }
}

typedef struct zero_ctx {
    int32_t dtype;
    int found;
} zero_ctx;

static void zero_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    zero_ctx *z = (zero_ctx *)ctx;
    int64_t es = (int64_t)tn_dtype_size(z->dtype);
    for (int64_t i = 0; i < n && !z->found; i++) z->found = tn_load_i64(p[0] + i * s[0] * es, z->dtype) == 0;
}

/* [OUT] found: 1 when the integer tensor t holds a zero (read on the device for CUDA). */
static tn_status has_zero(int *found, const tn_tensor *t) {
    *found = 0;
    tn_iter it;
    tn_iter_init(&it, t->ndim, t->shape);
    tn_iter_add_tensor(&it, t);
    tn_iter_finish(&it);
    if (it.numel == 0) return TN_OK;
#ifdef TERN_HAVE_CUDA
    if (t->device == TN_CUDA) return tn_cuda_has_zero(found, &it, t->dtype);
#endif
    zero_ctx z = {t->dtype, 0};
    tn_iter_range(&it, 0, it.numel, zero_kernel, &z);
    *found = z.found;
    return TN_OK;
}

/* Output, then the kernel; a and b are tensors of dtype on one device. */
static tn_status binary_run(tn_tensor **out, const tn_tensor *a, const tn_tensor *b, int32_t op, int32_t dtype,
                            int32_t ndim, const int64_t *shape) {
    TN_TRY(tn_prepare_out(binop_names[op], out, ndim, shape, is_cmp(op) ? TN_U8 : dtype, a->device));
    const tn_tensor *ts[3] = {*out, a, b};
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) {
        tn_iter it;
        return ew_iter(&it, 3, ts) ? tn_cuda_binary(&it, op, dtype) : TN_OK;
    }
#endif
    op_ctx c = {op};
    run_ew(bin_kernel(dtype), &c, 3, ts, is_half(dtype));
    return TN_OK;
}

static tn_status check_binop(const char *opname, int32_t op, int32_t dtype) {
    if (tn_is_int_dtype(dtype) && (op == TN_POW || op == TN_ATAN2))
        return tn_error(TN_ERR_DTYPE, "%s: not supported for dtype %s (convert to a float dtype first)", opname,
                        tn_dtype_name(dtype));
    return TN_OK;
}

tn_status tn_binary(tn_tensor **out, const tn_tensor *a, const tn_tensor *b, int32_t op) {
    if (op < 0 || op >= TN_NUM_BINOPS) return tn_error(TN_ERR_ARG, "binary: invalid op %d", (int)op);
    const char *name = binop_names[op];
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", name);
    TN_TRY(check_pair(name, "a", a, "b", b));
    if (a->dtype != b->dtype)
        return tn_error(TN_ERR_DTYPE, "%s: dtypes %s and %s differ (a %s, b %s)", name, tn_dtype_name(a->dtype),
                        tn_dtype_name(b->dtype), TN_SHAPE(a), TN_SHAPE(b));
    TN_TRY(check_binop(name, op, a->dtype));
    int32_t ndim;
    int64_t shape[TN_MAX_DIMS];
    TN_TRY(tn_broadcast_shape(&ndim, shape, a, b, name));
    if (op == TN_DIV && tn_is_int_dtype(a->dtype)) {
        int zero;
        TN_TRY(has_zero(&zero, b));
        if (zero)
            return tn_error(TN_ERR_ARG, "div: integer division by zero (a %s %s, b %s %s)", TN_SHAPE(a),
                            tn_dtype_name(a->dtype), TN_SHAPE(b), tn_dtype_name(b->dtype));
    }
    return binary_run(out, a, b, op, a->dtype, ndim, shape);
}

/* Integer tensor compared with a double scalar: exact for every integer and any scalar. */
typedef struct icmp_ctx {
    int32_t op, dtype;
    double s;
} icmp_ctx;

static void icmp_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    const icmp_ctx *c = (const icmp_ctx *)ctx;
    int64_t es = (int64_t)tn_dtype_size(c->dtype);
    const tn_icmp_scalar sc = tn_icmp_prepare(c->s);
    const int k = c->op - TN_EQ;
    for (int64_t i = 0; i < n; i++) {
        int64_t x = tn_load_i64(p[1] + i * s[1] * es, c->dtype);
        *(uint8_t *)(p[0] + i * s[0]) = tn_cmp_of_order(k, tn_icmp_order(x, sc));
    }
}

tn_status tn_binary_scalar(tn_tensor **out, const tn_tensor *a, double s, int32_t op, int32_t reverse) {
    if (op < 0 || op >= TN_NUM_BINOPS) return tn_error(TN_ERR_ARG, "binary_scalar: invalid op %d", (int)op);
    const char *name = binop_names[op];
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", name);
    TN_TRY(check_in(name, "a", a));
    TN_TRY(check_binop(name, op, a->dtype));
    int32_t dt = a->dtype;
    if (tn_is_int_dtype(dt) && is_cmp(op)) {
        static const int32_t flip[] = {TN_EQ, TN_NE, TN_GT, TN_GE, TN_LT, TN_LE}; /* s op a == a flip(op) s */
        int32_t cop = reverse ? flip[op - TN_EQ] : op;
        TN_TRY(tn_prepare_out(name, out, a->ndim, a->shape, TN_U8, a->device));
        const tn_tensor *ts[2] = {*out, a};
#ifdef TERN_HAVE_CUDA
        if (a->device == TN_CUDA) {
            tn_iter it;
            return ew_iter(&it, 2, ts) ? tn_cuda_icmp_scalar(&it, cop, dt, s) : TN_OK;
        }
#endif
        icmp_ctx c = {cop, dt, s};
        run_ew(icmp_kernel, &c, 2, ts, 0);
        return TN_OK;
    }
    union {
        float f;
        double d;
        int32_t i;
        int64_t l;
        uint8_t u;
    } v;
    memset(&v, 0, sizeof v);
    tn_tensor st; /* a 0-d tensor over v: broadcast as a stride-0 operand */
    memset(&st, 0, sizeof st);
    st.data = (char *)&v;
    st.device = a->device;
    st.refcount = 1;
    if (tn_is_int_dtype(dt)) {
        if (s != floor(s) || !(fabs(s) < 9.2233720368547758e18))
            return tn_error(TN_ERR_DTYPE, "%s: scalar %g is not an integer, tensor %s has dtype %s (convert it to a float dtype first)",
                            name, s, TN_SHAPE(a), tn_dtype_name(dt));
        int64_t si = (int64_t)s;
        st.dtype = dt;
        if (dt == TN_I64) v.l = si;
        else if (dt == TN_I32) v.i = (int32_t)(uint32_t)(uint64_t)si; /* wraps like a cast */
        else v.u = (uint8_t)(uint64_t)si;
        if (op == TN_DIV) { /* the divisor as the dtype holds it: 2^32 wraps to 0 in i32 */
            int zero = 0;
            if (reverse) TN_TRY(has_zero(&zero, a));
            else zero = dt == TN_I64 ? v.l == 0 : dt == TN_I32 ? v.i == 0 : v.u == 0;
            if (zero)
                return tn_error(TN_ERR_ARG, "div: integer division by zero (tensor %s %s, scalar %g%s)", TN_SHAPE(a),
                                tn_dtype_name(dt), s, reverse ? " divided by the tensor" : "");
        }
    } else if (dt == TN_F64) {
        st.dtype = TN_F64;
        v.d = s;
    } else { /* f32, f16, bf16: the scalar stays f32 (the compute type) */
        st.dtype = TN_F32;
        v.f = (float)s;
    }
    TN_TRY(tn_prepare_out(name, out, a->ndim, a->shape, is_cmp(op) ? TN_U8 : dt, a->device));
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) { /* the scalar goes by value: v is host memory */
        const tn_tensor *tsc[2] = {*out, a};
        uint64_t bits;
        memcpy(&bits, &v, sizeof bits);
        tn_iter it;
        return ew_iter(&it, 2, tsc) ? tn_cuda_binary_scalar(&it, op, dt, reverse, bits) : TN_OK;
    }
#endif
    const tn_tensor *x = reverse ? &st : a, *y = reverse ? a : &st;
    op_ctx c = {op};
    const tn_tensor *ts[3] = {*out, x, y};
    run_ew(bin_kernel(dt), &c, 3, ts, is_half(dt));
    return TN_OK;
}

/* ---- unary ------------------------------------------------------------------------------------ */

#define UN_LOOP(TO, TI, EXPR)                                                                  \
    do {                                                                                       \
        TO *o_ = (TO *)p[0];                                                                   \
        const TI *a_ = (const TI *)p[1];                                                       \
        if (s[0] == 1 && s[1] == 1) {                                                          \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                              \
                TI x = a_[i];                                                                  \
                o_[i] = (TO)(EXPR);                                                            \
            }                                                                                  \
        } else {                                                                               \
            const int64_t so = s[0], sa = s[1];                                                \
            for (int64_t i = 0; i < n; i++) {                                                  \
                TI x = a_[i * sa];                                                             \
                o_[i * so] = (TO)(EXPR);                                                       \
            }                                                                                  \
        }                                                                                      \
    } while (0)

#define UN_FLOAT_KERNEL(name, T, S)                                                            \
    static void name(void *ctx, char **p, const int64_t *s, int64_t n) {                       \
        switch (((const op_ctx *)ctx)->op) {                                                   \
        case TN_NEG: UN_LOOP(T, T, tn_neg_##S(x)); break;                                      \
        case TN_ABS: UN_LOOP(T, T, tn_abs_##S(x)); break;                                      \
        case TN_EXP: UN_LOOP(T, T, tn_exp_##S(x)); break;                                      \
        case TN_LOG: UN_LOOP(T, T, tn_log_##S(x)); break;                                      \
        case TN_SQRT: UN_LOOP(T, T, tn_sqrt_##S(x)); break;                                    \
        case TN_RSQRT: UN_LOOP(T, T, tn_rsqrt_##S(x)); break;                                  \
        case TN_TANH: UN_LOOP(T, T, tn_tanh_##S(x)); break;                                    \
        case TN_SIGMOID: UN_LOOP(T, T, tn_sigmoid_##S(x)); break;                              \
        case TN_RELU: UN_LOOP(T, T, tn_relu_##S(x)); break;                                    \
        case TN_SIGN: UN_LOOP(T, T, tn_sign_##S(x)); break;                                    \
        case TN_LOG1P: UN_LOOP(T, T, tn_log1p_##S(x)); break;                                  \
        case TN_EXPM1: UN_LOOP(T, T, tn_expm1_##S(x)); break;                                  \
        case TN_SIN: UN_LOOP(T, T, tn_sin_##S(x)); break;                                      \
        case TN_COS: UN_LOOP(T, T, tn_cos_##S(x)); break;                                      \
        case TN_RECIPROCAL: UN_LOOP(T, T, tn_reciprocal_##S(x)); break;                        \
        case TN_SQUARE: UN_LOOP(T, T, tn_square_##S(x)); break;                                \
        case TN_FLOOR: UN_LOOP(T, T, tn_floor_##S(x)); break;                                  \
        case TN_CEIL: UN_LOOP(T, T, tn_ceil_##S(x)); break;                                    \
        case TN_ROUND: UN_LOOP(T, T, tn_round_##S(x)); break;                                  \
        case TN_LOGICAL_NOT: UN_LOOP(uint8_t, T, tn_logical_not_##S(x)); break;                \
        default: break;                                                                        \
        }                                                                                      \
    }

UN_FLOAT_KERNEL(un_f32_plain, float, f)
UN_FLOAT_KERNEL(un_f64, double, d)

/* f32 (and f16/bf16 through half_kernel): exp, sigmoid and tanh run vmath.h's AVX2+FMA
 * versions where the CPU has it (contiguous or strided, the same result for each element either
 * way), else the plain loop. */
static void un_f32(void *ctx, char **p, const int64_t *s, int64_t n) {
#ifdef TN_AVX2_BUILD
    const int32_t op = ((const op_ctx *)ctx)->op;
    if ((op == TN_EXP || op == TN_SIGMOID || op == TN_TANH) && tn_cpu_has_avx2_fma()) {
        tn_vmap_f32_avx2(op == TN_EXP ? tn_vexp_f32_contig : op == TN_SIGMOID ? tn_vsigmoid_f32_contig : tn_vtanh_f32_contig,
                         (float *)p[0], s[0], (const float *)p[1], s[1], n);
        return;
    }
#endif
    un_f32_plain(ctx, p, s, n);
}

#define UN_INT_KERNEL(name, T, S)                                                              \
    static void name(void *ctx, char **p, const int64_t *s, int64_t n) {                       \
        switch (((const op_ctx *)ctx)->op) {                                                   \
        case TN_NEG: UN_LOOP(T, T, tn_neg_##S(x)); break;                                      \
        case TN_ABS: UN_LOOP(T, T, tn_abs_##S(x)); break;                                      \
        case TN_SIGN: UN_LOOP(T, T, tn_sign_##S(x)); break;                                    \
        case TN_SQUARE: UN_LOOP(T, T, tn_square_##S(x)); break;                                \
        case TN_RELU: UN_LOOP(T, T, tn_relu_##S(x)); break;                                    \
        case TN_FLOOR:                                                                         \
        case TN_CEIL:                                                                          \
        case TN_ROUND: UN_LOOP(T, T, x); break; /* the identity on integers */                 \
        case TN_LOGICAL_NOT: UN_LOOP(uint8_t, T, tn_logical_not_i64(x)); break;                \
        default: break;                                                                        \
        }                                                                                      \
    }

UN_INT_KERNEL(un_i32, int32_t, i32)
UN_INT_KERNEL(un_i64, int64_t, i64)
UN_INT_KERNEL(un_u8, uint8_t, u8)

static int unop_int_ok(int32_t op) {
    switch (op) {
    case TN_NEG: case TN_ABS: case TN_SIGN: case TN_SQUARE: case TN_RELU: case TN_FLOOR: case TN_CEIL:
    case TN_ROUND: case TN_LOGICAL_NOT: return 1;
    default: return 0;
    }
}

tn_status tn_unary(tn_tensor **out, const tn_tensor *a, int32_t op) {
    if (op < 0 || op >= TN_NUM_UNOPS) return tn_error(TN_ERR_ARG, "unary: invalid op %d", (int)op);
    const char *name = unop_names[op];
    if (!out) return tn_error(TN_ERR_ARG, "%s: out is NULL", name);
    TN_TRY(check_in(name, "a", a));
    int32_t dt = a->dtype;
    if (tn_is_int_dtype(dt) && !unop_int_ok(op))
        return tn_error(TN_ERR_DTYPE, "%s: not supported for dtype %s (tensor %s; convert to a float dtype first)", name,
                        tn_dtype_name(dt), TN_SHAPE(a));
    TN_TRY(tn_prepare_out(name, out, a->ndim, a->shape, op == TN_LOGICAL_NOT ? TN_U8 : dt, a->device));
    const tn_tensor *ts[2] = {*out, a};
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) {
        tn_iter it;
        return ew_iter(&it, 2, ts) ? tn_cuda_unary(&it, op, dt) : TN_OK;
    }
#endif
    tn_iter_fn fn = dt == TN_F64 ? un_f64 : dt == TN_I32 ? un_i32 : dt == TN_I64 ? un_i64 : dt == TN_U8 ? un_u8 : un_f32;
    op_ctx c = {op};
    run_ew(fn, &c, 2, ts, is_half(dt));
    return TN_OK;
}

/* ---- clamp ------------------------------------------------------------------------------------- */

typedef struct clamp_ctx {
    double lo, hi;     /* float bounds */
    int64_t ilo, ihi;  /* integer bounds: ceil(lo), floor(hi), saturated */
} clamp_ctx;

static void clamp_f32(void *ctx, char **p, const int64_t *s, int64_t n) {
    const clamp_ctx *c = (const clamp_ctx *)ctx;
    const float lo = (float)c->lo, hi = (float)c->hi;
    UN_LOOP(float, float, tn_clamp_f(x, lo, hi));
}
static void clamp_f64(void *ctx, char **p, const int64_t *s, int64_t n) {
    const clamp_ctx *c = (const clamp_ctx *)ctx;
    const double lo = c->lo, hi = c->hi;
    UN_LOOP(double, double, tn_clamp_d(x, lo, hi));
}
#define CLAMP_INT(name, T)                                                                     \
    static void name(void *ctx, char **p, const int64_t *s, int64_t n) {                       \
        const clamp_ctx *c = (const clamp_ctx *)ctx;                                           \
        const int64_t lo = c->ilo, hi = c->ihi;                                                \
        UN_LOOP(T, T, tn_clamp_i64((int64_t)x, lo, hi));                                       \
    }
CLAMP_INT(clamp_i32, int32_t)
CLAMP_INT(clamp_i64, int64_t)
CLAMP_INT(clamp_u8, uint8_t)

static int64_t sat_i64(double v, int64_t if_nan) {
    if (v != v) return if_nan;
    return v >= 9.2233720368547758e18 ? INT64_MAX : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v;
}

tn_status tn_clamp(tn_tensor **out, const tn_tensor *a, double lo, double hi) {
    if (!out) return tn_error(TN_ERR_ARG, "clamp: out is NULL");
    TN_TRY(check_in("clamp", "a", a));
    int32_t dt = a->dtype;
    clamp_ctx c = {lo, hi, sat_i64(ceil(lo), INT64_MIN), sat_i64(floor(hi), INT64_MAX)};
    if (c.ihi < c.ilo) c.ilo = c.ihi; /* lo > hi: everything becomes hi, like torch */
    TN_TRY(tn_prepare_out("clamp", out, a->ndim, a->shape, dt, a->device));
    const tn_tensor *ts[2] = {*out, a};
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) {
        tn_iter it;
        return ew_iter(&it, 2, ts) ? tn_cuda_clamp(&it, dt, lo, hi, c.ilo, c.ihi) : TN_OK;
    }
#endif
    tn_iter_fn fn = dt == TN_F64 ? clamp_f64 : dt == TN_I32 ? clamp_i32 : dt == TN_I64 ? clamp_i64 : dt == TN_U8 ? clamp_u8 : clamp_f32;
    run_ew(fn, &c, 2, ts, is_half(dt));
    return TN_OK;
}

/* ---- where, masked_fill: byte-width kernels, any dtype ------------------------------------------ */

#define WHERE_LOOP(T)                                                                          \
    do {                                                                                       \
        T *o_ = (T *)p[0];                                                                     \
        const uint8_t *c_ = (const uint8_t *)p[1];                                             \
        const T *a_ = (const T *)p[2], *b_ = (const T *)p[3];                                  \
        if (s[0] == 1 && s[1] == 1 && s[2] == 1 && s[3] == 1) {                                \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) o_[i] = c_[i] ? a_[i] : b_[i]; \
        } else {                                                                               \
            for (int64_t i = 0; i < n; i++) o_[i * s[0]] = c_[i * s[1]] ? a_[i * s[2]] : b_[i * s[3]]; \
        }                                                                                      \
    } while (0)

static void where_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    switch (*(const int *)ctx) { /* element size */
    case 1: WHERE_LOOP(uint8_t); break;
    case 2: WHERE_LOOP(uint16_t); break;
    case 4: WHERE_LOOP(uint32_t); break;
    default: WHERE_LOOP(uint64_t); break;
    }
}

tn_status tn_where(tn_tensor **out, const tn_tensor *cond, const tn_tensor *a, const tn_tensor *b) {
    if (!out) return tn_error(TN_ERR_ARG, "where: out is NULL");
    TN_TRY(check_pair("where", "cond", cond, "a", a));
    TN_TRY(check_pair("where", "a", a, "b", b));
    if (cond->dtype != TN_U8)
        return tn_error(TN_ERR_DTYPE, "where: cond must be u8, got %s (cond %s)", tn_dtype_name(cond->dtype), TN_SHAPE(cond));
    if (a->dtype != b->dtype)
        return tn_error(TN_ERR_DTYPE, "where: dtypes %s and %s differ (a %s, b %s)", tn_dtype_name(a->dtype),
                        tn_dtype_name(b->dtype), TN_SHAPE(a), TN_SHAPE(b));
    tn_tensor ab; /* shape-only stand-in for broadcast(a, b) */
    memset(&ab, 0, sizeof ab);
    TN_TRY(tn_broadcast_shape(&ab.ndim, ab.shape, a, b, "where"));
    int32_t ndim;
    int64_t shape[TN_MAX_DIMS];
    TN_TRY(tn_broadcast_shape(&ndim, shape, cond, &ab, "where"));
    TN_TRY(tn_prepare_out("where", out, ndim, shape, a->dtype, a->device));
    int es = (int)tn_dtype_size(a->dtype);
    const tn_tensor *ts[4] = {*out, cond, a, b};
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) {
        tn_iter it;
        return ew_iter(&it, 4, ts) ? tn_cuda_where(&it, es) : TN_OK;
    }
#endif
    run_ew(where_kernel, &es, 4, ts, 0);
    return TN_OK;
}

typedef struct mfill_ctx {
    uint64_t bits; /* value in the dtype, low bytes first */
    int elsize;
} mfill_ctx;

#define MFILL_LOOP(T)                                                                          \
    do {                                                                                       \
        T v;                                                                                   \
        memcpy(&v, &c->bits, sizeof v);                                                        \
        T *o_ = (T *)p[0];                                                                     \
        const T *a_ = (const T *)p[1];                                                         \
        const uint8_t *m_ = (const uint8_t *)p[2];                                             \
        if (s[0] == 1 && s[1] == 1 && s[2] == 1) {                                             \
            _Pragma("omp simd") for (int64_t i = 0; i < n; i++) o_[i] = m_[i] ? v : a_[i];     \
        } else {                                                                               \
            for (int64_t i = 0; i < n; i++) o_[i * s[0]] = m_[i * s[2]] ? v : a_[i * s[1]];    \
        }                                                                                      \
    } while (0)

static void mfill_kernel(void *ctx, char **p, const int64_t *s, int64_t n) {
    const mfill_ctx *c = (const mfill_ctx *)ctx;
    switch (c->elsize) {
    case 1: MFILL_LOOP(uint8_t); break;
    case 2: MFILL_LOOP(uint16_t); break;
    case 4: MFILL_LOOP(uint32_t); break;
    default: MFILL_LOOP(uint64_t); break;
    }
}

tn_status tn_masked_fill(tn_tensor **out, const tn_tensor *a, const tn_tensor *mask, double value) {
    if (!out) return tn_error(TN_ERR_ARG, "masked_fill: out is NULL");
    TN_TRY(check_pair("masked_fill", "a", a, "mask", mask));
    if (mask->dtype != TN_U8)
        return tn_error(TN_ERR_DTYPE, "masked_fill: mask must be u8, got %s (mask %s)", tn_dtype_name(mask->dtype),
                        TN_SHAPE(mask));
    int32_t ndim;
    int64_t shape[TN_MAX_DIMS];
    TN_TRY(tn_broadcast_shape(&ndim, shape, a, mask, "masked_fill"));
    int same = ndim == a->ndim;
    for (int32_t i = 0; same && i < ndim; i++) same = shape[i] == a->shape[i];
    if (!same)
        return tn_error(TN_ERR_SHAPE, "masked_fill: mask %s does not broadcast to a %s (%s)", TN_SHAPE(mask), TN_SHAPE(a),
                        tn_dtype_name(a->dtype));
    TN_TRY(tn_prepare_out("masked_fill", out, a->ndim, a->shape, a->dtype, a->device));
    mfill_ctx c = {0, (int)tn_dtype_size(a->dtype)};
    tn_store_f64(&c.bits, a->dtype, value);
    const tn_tensor *ts[3] = {*out, a, mask};
#ifdef TERN_HAVE_CUDA
    if (a->device == TN_CUDA) {
        tn_iter it;
        return ew_iter(&it, 3, ts) ? tn_cuda_masked_fill(&it, c.elsize, c.bits) : TN_OK;
    }
#endif
    run_ew(mfill_kernel, &c, 3, ts, 0);
    return TN_OK;
}
