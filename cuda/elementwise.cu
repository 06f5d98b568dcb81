/*
 * cuda/elementwise.cu — tn_binary, tn_binary_scalar, tn_unary, tn_clamp, tn_where and
 * tn_masked_fill on CUDA tensors, and the device-side check for integer division by zero.
 *
 * core/elementwise.c checks the arguments, prepares the output and builds the finished tn_iter
 * (operand 0 the output, then the inputs); the tn_cuda_* functions here queue one kernel on
 * the current stream (tn_cuda_stream_now) and return without waiting. Only tn_cuda_has_zero
 * waits: it is an error check, read back before the division runs.
 *
 * Gradient policy: forward only; the autograd (Lua) composes backward passes from these ops.
 *
 * Shapes: every operand spans the iterator's broadcast shape (numel elements; stride 0 on
 * broadcast dims). Scalars (the number of tn_binary_scalar, clamp bounds, the fill value) are
 * kernel arguments, never device memory.
 *
 * Math: the per-element functions of core/kernels/elementwise.h, the ones the CPU loops call.
 * f16/bf16 load into f32 (tn_cuda_load), compute with the f32 functions and round back to
 * nearest even (tn_cuda_store), as the CPU does. nvcc contracts a * b + c into FMAs where the
 * CPU build rounds twice, so f32/f64 results may differ from the CPU's in the last bit;
 * integer, comparison, min/max, rounding and selection results are identical.
 *
 * Kernels: an op family (binary arithmetic, comparisons, either with a scalar, unary,
 * logical_not, clamp, where, masked_fill, integer comparison with a double) per storage type
 * gets two kernels:
 *   ew_flat     every operand contiguous and aligned to its vector: each thread moves 16 bytes
 *               of the widest operand per step (V elements of every operand), the op chosen
 *               by a switch outside the element loop; a scalar tail of < V elements;
 *   ew_strided  anything else: offsets from the iterator's shape and strides (32-bit division
 *               when numel < 2^32, none for 1-d iterators), the op chosen per element.
 * Both are grid-stride loops over 64-bit element indices.
 */
#include "common.cuh"

#include "kernels/elementwise.h"

#include <type_traits>

namespace { /* every template and kernel here is private to this file */

/* ---- per-element math: overloads over the math type, to core/kernels/elementwise.h ---------- */

#define EW_FLOAT_2(name)                                                                         \
    static __device__ __forceinline__ float ew_##name(float x, float y) { return tn_##name##_f(x, y); } \
    static __device__ __forceinline__ double ew_##name(double x, double y) { return tn_##name##_d(x, y); }
#define EW_FLOAT_1(name)                                                                         \
    static __device__ __forceinline__ float ew_##name(float x) { return tn_##name##_f(x); }     \
    static __device__ __forceinline__ double ew_##name(double x) { return tn_##name##_d(x); }
#define EW_INT_2(name)                                                                           \
    static __device__ __forceinline__ int32_t ew_##name(int32_t x, int32_t y) { return tn_##name##_i32(x, y); } \
    static __device__ __forceinline__ int64_t ew_##name(int64_t x, int64_t y) { return tn_##name##_i64(x, y); } \
    static __device__ __forceinline__ uint8_t ew_##name(uint8_t x, uint8_t y) { return tn_##name##_u8(x, y); }
#define EW_INT_1(name)                                                                           \
    static __device__ __forceinline__ int32_t ew_##name(int32_t x) { return tn_##name##_i32(x); } \
    static __device__ __forceinline__ int64_t ew_##name(int64_t x) { return tn_##name##_i64(x); } \
    static __device__ __forceinline__ uint8_t ew_##name(uint8_t x) { return tn_##name##_u8(x); }

EW_FLOAT_2(add) EW_FLOAT_2(sub) EW_FLOAT_2(mul) EW_FLOAT_2(div) EW_FLOAT_2(pow) EW_FLOAT_2(maximum)
EW_FLOAT_2(minimum) EW_FLOAT_2(atan2)
EW_INT_2(add) EW_INT_2(sub) EW_INT_2(mul) EW_INT_2(div) EW_INT_2(maximum) EW_INT_2(minimum)
EW_FLOAT_1(neg) EW_FLOAT_1(abs) EW_FLOAT_1(exp) EW_FLOAT_1(log) EW_FLOAT_1(sqrt) EW_FLOAT_1(rsqrt)
EW_FLOAT_1(tanh) EW_FLOAT_1(sigmoid) EW_FLOAT_1(relu) EW_FLOAT_1(sign) EW_FLOAT_1(log1p) EW_FLOAT_1(expm1)
EW_FLOAT_1(sin) EW_FLOAT_1(cos) EW_FLOAT_1(reciprocal) EW_FLOAT_1(square) EW_FLOAT_1(floor) EW_FLOAT_1(ceil)
EW_FLOAT_1(round)
EW_INT_1(neg) EW_INT_1(abs) EW_INT_1(sign) EW_INT_1(square) EW_INT_1(relu)

static __device__ __forceinline__ uint8_t ew_logical_not(float x) { return tn_logical_not_f(x); }
static __device__ __forceinline__ uint8_t ew_logical_not(double x) { return tn_logical_not_d(x); }
static __device__ __forceinline__ uint8_t ew_logical_not(int32_t x) { return tn_logical_not_i64(x); }
static __device__ __forceinline__ uint8_t ew_logical_not(int64_t x) { return tn_logical_not_i64(x); }
static __device__ __forceinline__ uint8_t ew_logical_not(uint8_t x) { return tn_logical_not_i64(x); }

template <class M> struct ew_is_float { enum { value = std::is_same<M, float>::value || std::is_same<M, double>::value }; };

/* The ops of tn_binop for math type M, one `body(g)` call with g(x, y) the op's element
 * function. Arithmetic (g returns M; pow and atan2 on floats only) and comparisons (g returns
 * 0/1) are separate so that each family's output type is fixed. Ops the dtype does not take
 * were refused by core. */
template <class M, class Body> static __device__ __forceinline__ void ew_arith_ops(int32_t op, const Body &body) {
    switch (op) {
    case TN_ADD: body([](M x, M y) { return ew_add(x, y); }); break;
    case TN_SUB: body([](M x, M y) { return ew_sub(x, y); }); break;
    case TN_MUL: body([](M x, M y) { return ew_mul(x, y); }); break;
    case TN_DIV: body([](M x, M y) { return ew_div(x, y); }); break; /* integers: no zero divisor (checked) */
    case TN_MAXIMUM: body([](M x, M y) { return ew_maximum(x, y); }); break;
    case TN_MINIMUM: body([](M x, M y) { return ew_minimum(x, y); }); break;
    default:
        if constexpr (ew_is_float<M>::value) {
            if (op == TN_POW) body([](M x, M y) { return ew_pow(x, y); });
            else if (op == TN_ATAN2) body([](M x, M y) { return ew_atan2(x, y); });
        }
        break;
    }
}

template <class M, class Body> static __device__ __forceinline__ void ew_cmp_ops(int32_t op, const Body &body) {
    switch (op) { /* the C comparisons, as the CPU's CMP_CASES: NaN compares unequal to everything */
    case TN_EQ: body([](M x, M y) { return (uint8_t)(x == y); }); break;
    case TN_NE: body([](M x, M y) { return (uint8_t)(x != y); }); break;
    case TN_LT: body([](M x, M y) { return (uint8_t)(x < y); }); break;
    case TN_LE: body([](M x, M y) { return (uint8_t)(x <= y); }); break;
    case TN_GT: body([](M x, M y) { return (uint8_t)(x > y); }); break;
    default: body([](M x, M y) { return (uint8_t)(x >= y); }); break; /* TN_GE */
    }
}

template <class M, class Body> static __device__ __forceinline__ void ew_unary_ops(int32_t op, const Body &body) {
    if constexpr (ew_is_float<M>::value) {
        switch (op) {
        case TN_NEG: body([](M x) { return ew_neg(x); }); break;
        case TN_ABS: body([](M x) { return ew_abs(x); }); break;
        case TN_EXP: body([](M x) { return ew_exp(x); }); break;
        case TN_LOG: body([](M x) { return ew_log(x); }); break;
        case TN_SQRT: body([](M x) { return ew_sqrt(x); }); break;
        case TN_RSQRT: body([](M x) { return ew_rsqrt(x); }); break;
        case TN_TANH: body([](M x) { return ew_tanh(x); }); break;
        case TN_SIGMOID: body([](M x) { return ew_sigmoid(x); }); break;
        case TN_RELU: body([](M x) { return ew_relu(x); }); break;
        case TN_SIGN: body([](M x) { return ew_sign(x); }); break;
        case TN_LOG1P: body([](M x) { return ew_log1p(x); }); break;
        case TN_EXPM1: body([](M x) { return ew_expm1(x); }); break;
        case TN_SIN: body([](M x) { return ew_sin(x); }); break;
        case TN_COS: body([](M x) { return ew_cos(x); }); break;
        case TN_RECIPROCAL: body([](M x) { return ew_reciprocal(x); }); break;
        case TN_SQUARE: body([](M x) { return ew_square(x); }); break;
        case TN_FLOOR: body([](M x) { return ew_floor(x); }); break;
        case TN_CEIL: body([](M x) { return ew_ceil(x); }); break;
        case TN_ROUND: body([](M x) { return ew_round(x); }); break;
        default: break; /* logical_not: its own family (u8 output) */
        }
    } else {
        switch (op) {
        case TN_NEG: body([](M x) { return ew_neg(x); }); break;
        case TN_ABS: body([](M x) { return ew_abs(x); }); break;
        case TN_SIGN: body([](M x) { return ew_sign(x); }); break;
        case TN_SQUARE: body([](M x) { return ew_square(x); }); break;
        case TN_RELU: body([](M x) { return ew_relu(x); }); break;
        case TN_FLOOR:
        case TN_CEIL:
        case TN_ROUND: body([](M x) { return x; }); break; /* the identity on integers */
        default: break;
        }
    }
}

/* ---- op families ------------------------------------------------------------------------------
 *
 * A family names the storage types of its operands (out_t; in0_t .. in2_t, unused ones
 * uint8_t and never read), nin (1..3 inputs), the per-launch arguments (args) and
 * dispatch(args, body), which calls body(f) once with f(x0[, x1[, x2]]) the element function
 * of args.op on math values (tn_cuda_load), its result stored with tn_cuda_store. */

/* Which operand of a binary op is a scalar argument: none (two tensors), b or a. */
enum { EW_TT = 0, EW_TS = 1, EW_ST = 2 };

template <class M> static inline M ew_scalar_from_bits(uint64_t bits) {
    M v;
    memcpy(&v, &bits, sizeof v); /* the low bytes (little-endian host and device) */
    return v;
}

/* The operand storage types of a family: out_t, in0_t .. in2_t (unused ones uint8_t), nin. */
template <class Out, class In0, class In1, class In2, int N> struct ew_types {
    typedef Out out_t;
    typedef In0 in0_t;
    typedef In1 in1_t;
    typedef In2 in2_t;
    enum { nin = N };
};

/* The op tables of the binary families, selected by a tag. */
struct ew_arith_tag {
    template <class M, class Body> static __device__ __forceinline__ void run(int32_t op, const Body &body) {
        ew_arith_ops<M>(op, body);
    }
};
struct ew_cmp_tag {
    template <class M, class Body> static __device__ __forceinline__ void run(int32_t op, const Body &body) {
        ew_cmp_ops<M>(op, body);
    }
};

/* out = a op b (EW_TT), a op s (EW_TS) or s op a (EW_ST) with the ops of Tag; a: T, out: Out */
template <class T, int Side, class Out, class Tag>
struct fam_binary
    : ew_types<Out, T, typename std::conditional<Side == EW_TT, T, uint8_t>::type, uint8_t, Side == EW_TT ? 2 : 1> {
    typedef typename tn_cuda_math<T>::type M;
    struct args {
        int32_t op;
        M s; /* the scalar (EW_TS, EW_ST) in the math type, as the CPU's 0-d operand holds it */
    };
    template <class Body> static __device__ __forceinline__ void dispatch(const args &a, const Body &body) {
        Tag::template run<M>(a.op, [&](const auto &g) {
            if constexpr (Side == EW_TT) {
                body(g);
            } else {
                const M s = a.s;
                if constexpr (Side == EW_TS) body([&](M x) { return g(x, s); });
                else body([&](M x) { return g(s, x); });
            }
        });
    }
};

/* out = a op b, a op s or s op a; out, a: T */
template <class T, int Side> using fam_arith = fam_binary<T, Side, T, ew_arith_tag>;
/* out (u8) = a cmp b, a cmp s or s cmp a; a: T (integers with a scalar go to fam_icmp) */
template <class T, int Side> using fam_cmp = fam_binary<T, Side, uint8_t, ew_cmp_tag>;

/* out (u8) = a cmp s, a an integer T compared exactly with the double s (the CPU's icmp) */
template <class T> struct fam_icmp : ew_types<uint8_t, T, uint8_t, uint8_t, 1> {
    struct args {
        int32_t k; /* the comparison, counted from TN_EQ */
        tn_icmp_scalar c;
    };
    template <class Body> static __device__ __forceinline__ void dispatch(const args &a, const Body &body) {
        const int k = a.k;
        const tn_icmp_scalar c = a.c;
        body([&](T x) { return tn_cmp_of_order(k, tn_icmp_order((int64_t)x, c)); });
    }
};

/* out = op(a); out, a: T */
template <class T> struct fam_unary : ew_types<T, T, uint8_t, uint8_t, 1> {
    typedef typename tn_cuda_math<T>::type M;
    struct args {
        int32_t op;
    };
    template <class Body> static __device__ __forceinline__ void dispatch(const args &a, const Body &body) {
        ew_unary_ops<M>(a.op, body);
    }
};

/* out (u8) = logical_not(a); a: T */
template <class T> struct fam_not : ew_types<uint8_t, T, uint8_t, uint8_t, 1> {
    typedef typename tn_cuda_math<T>::type M;
    struct args {
        int32_t unused;
    };
    template <class Body> static __device__ __forceinline__ void dispatch(const args &, const Body &body) {
        body([](M x) { return ew_logical_not(x); });
    }
};

/* out = clamp(a, lo, hi); out, a: T. Floats clamp in the math type (bounds rounded to f32 for
 * f32/f16/bf16, as the CPU), integers in int64 against integral bounds, then cast to T. */
template <class T> struct fam_clamp : ew_types<T, T, uint8_t, uint8_t, 1> {
    typedef typename tn_cuda_math<T>::type M;
    typedef typename std::conditional<ew_is_float<M>::value, M, int64_t>::type B;
    struct args {
        B lo, hi;
    };
    template <class Body> static __device__ __forceinline__ void dispatch(const args &a, const Body &body) {
        const B lo = a.lo, hi = a.hi;
        if constexpr (std::is_same<M, float>::value) body([&](M x) { return tn_clamp_f(x, lo, hi); });
        else if constexpr (std::is_same<M, double>::value) body([&](M x) { return tn_clamp_d(x, lo, hi); });
        else body([&](M x) { return (T)tn_clamp_i64((int64_t)x, lo, hi); });
    }
};

/* out = cond ? a : b; cond u8, out, a, b: U (any dtype by its bytes) */
template <class U> struct fam_where : ew_types<U, uint8_t, U, U, 3> {
    struct args {
        int32_t unused;
    };
    template <class Body> static __device__ __forceinline__ void dispatch(const args &, const Body &body) {
        body([](uint8_t c, U x, U y) { return c ? x : y; });
    }
};

/* out = mask ? value : a; out, a: U (any dtype by its bytes), mask u8 */
template <class U> struct fam_mfill : ew_types<U, U, uint8_t, uint8_t, 2> {
    struct args {
        U v;
    };
    template <class Body> static __device__ __forceinline__ void dispatch(const args &a, const Body &body) {
        const U v = a.v;
        body([&](U x, uint8_t m) { return m ? v : x; });
    }
};

/* ---- the two kernels of a family ------------------------------------------------------------- */

static constexpr size_t ew_max(size_t a, size_t b) { return a > b ? a : b; }

/* Elements per thread and step in ew_flat: 16 bytes of the widest operand. */
template <class Fam> struct ew_width {
    static constexpr int value =
        (int)(16 / ew_max(ew_max(sizeof(typename Fam::out_t), sizeof(typename Fam::in0_t)),
                          ew_max(sizeof(typename Fam::in1_t), sizeof(typename Fam::in2_t))));
};

/* N elements of T moved as one load / store (N * sizeof(T) is 2, 4, 8 or 16 bytes). */
template <class T, int N> struct alignas(sizeof(T) * N) ew_vec {
    T v[N];
};

/* One element: o = f(x0[, x1[, x2]]) through the math type. */
template <class Fam, class F>
static __device__ __forceinline__ void ew_elem(const F &f, typename Fam::out_t *o, const typename Fam::in0_t *x0,
                                               const typename Fam::in1_t *x1, const typename Fam::in2_t *x2) {
    if constexpr (Fam::nin == 1) tn_cuda_store(o, f(tn_cuda_load(x0)));
    else if constexpr (Fam::nin == 2) tn_cuda_store(o, f(tn_cuda_load(x0), tn_cuda_load(x1)));
    else tn_cuda_store(o, f(tn_cuda_load(x0), tn_cuda_load(x1), tn_cuda_load(x2)));
}

template <class Fam> struct ew_flat_params {
    char *data[4];  /* (1 + nin) operand k's first element; all contiguous, aligned to V elements */
    int64_t n;      /* elements of every operand */
    typename Fam::args a;
};

template <class Fam> __global__ void __launch_bounds__(TN_CUDA_THREADS) ew_flat(const ew_flat_params<Fam> P) {
    typedef typename Fam::out_t TO;
    typedef typename Fam::in0_t T0;
    typedef typename Fam::in1_t T1;
    typedef typename Fam::in2_t T2;
    constexpr int V = ew_width<Fam>::value;
    TO *const o = (TO *)P.data[0];
    const T0 *const x0 = (const T0 *)P.data[1];
    const T1 *const x1 = (const T1 *)P.data[2]; /* unused operands: never dereferenced */
    const T2 *const x2 = (const T2 *)P.data[3];
    const int64_t nv = P.n / V; /* whole vectors */
    const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t step = (int64_t)blockDim.x * gridDim.x;
    Fam::dispatch(P.a, [&](const auto &f) {
        for (int64_t v = tid; v < nv; v += step) {
            const int64_t i = v * V;
            ew_vec<T0, V> a0 = *(const ew_vec<T0, V> *)(x0 + i);
            ew_vec<T1, V> a1{};
            ew_vec<T2, V> a2{};
            if constexpr (Fam::nin >= 2) a1 = *(const ew_vec<T1, V> *)(x1 + i);
            if constexpr (Fam::nin >= 3) a2 = *(const ew_vec<T2, V> *)(x2 + i);
            ew_vec<TO, V> r;
#pragma unroll
            for (int j = 0; j < V; j++) ew_elem<Fam>(f, &r.v[j], &a0.v[j], &a1.v[j], &a2.v[j]);
            *(ew_vec<TO, V> *)(o + i) = r;
        }
        const int64_t i = nv * V + tid; /* the tail: fewer than V elements, one per thread */
        if (i < P.n) {
            const T1 *p1 = x1;
            const T2 *p2 = x2;
            if constexpr (Fam::nin >= 2) p1 = x1 + i;
            if constexpr (Fam::nin >= 3) p2 = x2 + i;
            ew_elem<Fam>(f, o + i, x0 + i, p1, p2);
        }
    });
}

/* Element offsets of linear element e (row-major over the iterator's shape) for the first
 * NOPS operands. 32-bit division when numel < 2^32; the outermost dim needs none. */
template <int NOPS> static __device__ __forceinline__ void ew_offsets(const tn_iter &it, int64_t e, int64_t *off) {
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] = 0;
    const int32_t last = it.ndim - 1;
    if (it.numel <= (int64_t)UINT32_MAX) {
        uint32_t r = (uint32_t)e;
        for (int32_t d = 0; d < last; d++) {
            const uint32_t n = (uint32_t)it.shape[d], q = r / n, i = r - q * n;
            r = q;
#pragma unroll
            for (int k = 0; k < NOPS; k++) off[k] += (int64_t)i * it.stride[k][d];
        }
#pragma unroll
        for (int k = 0; k < NOPS; k++) off[k] += (int64_t)r * it.stride[k][last];
    } else {
        int64_t r = e;
        for (int32_t d = 0; d < last; d++) {
            const int64_t n = it.shape[d], q = r / n, i = r - q * n;
            r = q;
#pragma unroll
            for (int k = 0; k < NOPS; k++) off[k] += i * it.stride[k][d];
        }
#pragma unroll
        for (int k = 0; k < NOPS; k++) off[k] += r * it.stride[k][last];
    }
}

template <class Fam> struct ew_params {
    tn_iter it; /* finished; operands 0 (out) .. nin (in, in the family's order) */
    typename Fam::args a;
};

template <class Fam> __global__ void __launch_bounds__(TN_CUDA_THREADS) ew_strided(const ew_params<Fam> P) {
    typedef typename Fam::out_t TO;
    typedef typename Fam::in0_t T0;
    typedef typename Fam::in1_t T1;
    typedef typename Fam::in2_t T2;
    constexpr int NOPS = 1 + Fam::nin;
    TN_CUDA_GRID_LOOP(e, P.it.numel) {
        int64_t off[4] = {0, 0, 0, 0};
        ew_offsets<NOPS>(P.it, e, off);
        TO *const o = (TO *)P.it.data[0] + off[0];
        const T0 *const x0 = (const T0 *)P.it.data[1] + off[1];
        const T1 *const x1 = NOPS > 2 ? (const T1 *)P.it.data[2] + off[2] : nullptr;
        const T2 *const x2 = NOPS > 3 ? (const T2 *)P.it.data[3] + off[3] : nullptr;
        Fam::dispatch(P.a, [&](const auto &f) { ew_elem<Fam>(f, o, x0, x1, x2); });
    }
}

/* Queues the family's kernel over the iterator on the current stream. */
template <class Fam> static tn_status ew_launch(const char *op, const tn_iter *it, const typename Fam::args &a) {
    constexpr int nops = 1 + Fam::nin;
    if (it->nops != nops)
        return tn_error(TN_ERR_ARG, "%s (cuda): the iterator has %d operands, expected %d", op, (int)it->nops, nops);
    if (it->numel <= 0) return TN_OK;
    cudaStream_t stream = tn_cuda_stream_now();
    constexpr int V = ew_width<Fam>::value;
    const size_t vbytes[4] = {V * sizeof(typename Fam::out_t), V * sizeof(typename Fam::in0_t),
                              V * sizeof(typename Fam::in1_t), V * sizeof(typename Fam::in2_t)};
    int flat = tn_cuda_iter_flat(*it);
    for (int k = 0; k < nops && flat; k++) flat = (uintptr_t)it->data[k] % vbytes[k] == 0;
    if (flat) {
        ew_flat_params<Fam> P;
        memset(&P, 0, sizeof P);
        for (int k = 0; k < nops; k++) P.data[k] = it->data[k];
        P.n = it->numel;
        P.a = a;
        const int64_t nv = P.n / V, tail = P.n - nv * V;
        ew_flat<Fam><<<tn_cuda_blocks(nv > tail ? nv : tail), TN_CUDA_THREADS, 0, stream>>>(P);
    } else {
        ew_params<Fam> P;
        memset(&P, 0, sizeof P);
        P.it = *it;
        P.a = a;
        ew_strided<Fam><<<tn_cuda_blocks(it->numel), TN_CUDA_THREADS, 0, stream>>>(P);
    }
    TN_TRY(TN_CUDA_CHECK_LAUNCH());
    return TN_OK;
}

/* ---- the entry points' dtype dispatch ---------------------------------------------------------- */

static int ew_is_cmp(int32_t op) { return op >= TN_EQ && op <= TN_GE; }

template <class T> struct run_binary {
    static tn_status run(const tn_iter *it, int32_t op) {
        typedef typename tn_cuda_math<T>::type M;
        if (ew_is_cmp(op)) {
            typename fam_cmp<T, EW_TT>::args a = {op, M()};
            return ew_launch<fam_cmp<T, EW_TT>>("binary", it, a);
        }
        typename fam_arith<T, EW_TT>::args a = {op, M()};
        return ew_launch<fam_arith<T, EW_TT>>("binary", it, a);
    }
};

template <class T> struct run_binary_scalar {
    template <int Side> static tn_status side(const tn_iter *it, int32_t op, uint64_t scalar) {
        typedef typename tn_cuda_math<T>::type M;
        const M s = ew_scalar_from_bits<M>(scalar);
        if constexpr (ew_is_float<M>::value) {
            if (ew_is_cmp(op)) {
                typename fam_cmp<T, Side>::args a = {op, s};
                return ew_launch<fam_cmp<T, Side>>("binary_scalar", it, a);
            }
        } else if (ew_is_cmp(op)) {
            return tn_error(TN_ERR_ARG, "binary_scalar (cuda): integer comparisons go to tn_cuda_icmp_scalar");
        }
        typename fam_arith<T, Side>::args a = {op, s};
        return ew_launch<fam_arith<T, Side>>("binary_scalar", it, a);
    }
    static tn_status run(const tn_iter *it, int32_t op, int32_t reverse, uint64_t scalar) {
        return reverse ? side<EW_ST>(it, op, scalar) : side<EW_TS>(it, op, scalar);
    }
};

template <class T> static tn_status ew_icmp(const tn_iter *it, int32_t op, double s) {
    typename fam_icmp<T>::args a;
    a.k = op - TN_EQ;
    a.c = tn_icmp_prepare(s);
    return ew_launch<fam_icmp<T>>("binary_scalar", it, a);
}

template <class T> struct run_unary {
    static tn_status run(const tn_iter *it, int32_t op) {
        if (op == TN_LOGICAL_NOT) {
            typename fam_not<T>::args a = {0};
            return ew_launch<fam_not<T>>("unary", it, a);
        }
        typename fam_unary<T>::args a = {op};
        return ew_launch<fam_unary<T>>("unary", it, a);
    }
};

template <class T> struct run_clamp {
    static tn_status run(const tn_iter *it, double lo, double hi, int64_t ilo, int64_t ihi) {
        typedef fam_clamp<T> F;
        typename F::args a;
        if constexpr (ew_is_float<typename F::M>::value) {
            a.lo = (typename F::B)lo; /* f32 / f16 / bf16: (float)lo, as the CPU's clamp_f32 */
            a.hi = (typename F::B)hi;
        } else {
            a.lo = ilo;
            a.hi = ihi;
        }
        return ew_launch<F>("clamp", it, a);
    }
};

template <class U> static tn_status ew_where(const tn_iter *it) {
    const typename fam_where<U>::args a = {0};
    return ew_launch<fam_where<U>>("where", it, a);
}

template <class U> static tn_status ew_mfill(const tn_iter *it, uint64_t value) {
    typename fam_mfill<U>::args a;
    memcpy(&a.v, &value, sizeof a.v); /* the low bytes: the value in the dtype (tn_store_f64) */
    return ew_launch<fam_mfill<U>>("masked_fill", it, a);
}

/* ---- integer division by zero: a flag on the device, read back ------------------------------ */

/* *flag = 1 when some element of operand 0 (T, it.numel elements) is zero. */
template <class T> __global__ void __launch_bounds__(TN_CUDA_THREADS) ew_has_zero(const tn_iter it, int32_t *flag /* (1) */) {
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[1];
        ew_offsets<1>(it, e, off);
        if (tn_logical_not_i64((int64_t)((const T *)it.data[0])[off[0]])) *flag = 1; /* racing writers all store 1 */
    }
}

} /* namespace */

/* ---- entry points (declared in core/elementwise.c) ------------------------------------------ */

extern "C" tn_status tn_cuda_binary(const tn_iter *it, int32_t op, int32_t dtype) {
    if (op < 0 || op >= TN_NUM_BINOPS) return tn_error(TN_ERR_ARG, "binary (cuda): invalid op %d", (int)op);
    if (tn_is_int_dtype(dtype) && (op == TN_POW || op == TN_ATAN2))
        return tn_error(TN_ERR_DTYPE, "binary (cuda): op %d not supported for dtype %s", (int)op, tn_dtype_name(dtype));
    return TN_CUDA_DISPATCH("binary", dtype, run_binary, it, op);
}

extern "C" tn_status tn_cuda_binary_scalar(const tn_iter *it, int32_t op, int32_t dtype, int32_t reverse,
                                           uint64_t scalar) {
    if (op < 0 || op >= TN_NUM_BINOPS) return tn_error(TN_ERR_ARG, "binary_scalar (cuda): invalid op %d", (int)op);
    if (tn_is_int_dtype(dtype) && (op == TN_POW || op == TN_ATAN2))
        return tn_error(TN_ERR_DTYPE, "binary_scalar (cuda): op %d not supported for dtype %s", (int)op,
                        tn_dtype_name(dtype));
    return TN_CUDA_DISPATCH("binary_scalar", dtype, run_binary_scalar, it, op, reverse, scalar);
}

extern "C" tn_status tn_cuda_icmp_scalar(const tn_iter *it, int32_t op, int32_t dtype, double s) {
    if (!ew_is_cmp(op)) return tn_error(TN_ERR_ARG, "binary_scalar (cuda): op %d is not a comparison", (int)op);
    switch (dtype) {
    case TN_I32: return ew_icmp<int32_t>(it, op, s);
    case TN_I64: return ew_icmp<int64_t>(it, op, s);
    case TN_U8: return ew_icmp<uint8_t>(it, op, s);
    default:
        return tn_error(TN_ERR_DTYPE, "binary_scalar (cuda): exact comparison needs an integer dtype, got %s",
                        tn_dtype_name(dtype));
    }
}

extern "C" tn_status tn_cuda_unary(const tn_iter *it, int32_t op, int32_t dtype) {
    if (op < 0 || op >= TN_NUM_UNOPS) return tn_error(TN_ERR_ARG, "unary (cuda): invalid op %d", (int)op);
    return TN_CUDA_DISPATCH("unary", dtype, run_unary, it, op);
}

extern "C" tn_status tn_cuda_clamp(const tn_iter *it, int32_t dtype, double lo, double hi, int64_t ilo, int64_t ihi) {
    return TN_CUDA_DISPATCH("clamp", dtype, run_clamp, it, lo, hi, ilo, ihi);
}

extern "C" tn_status tn_cuda_where(const tn_iter *it, int32_t elsize) {
    switch (elsize) {
    case 1: return ew_where<uint8_t>(it);
    case 2: return ew_where<uint16_t>(it);
    case 4: return ew_where<uint32_t>(it);
    case 8: return ew_where<uint64_t>(it);
    default: return tn_error(TN_ERR_DTYPE, "where (cuda): invalid element size %d", (int)elsize);
    }
}

extern "C" tn_status tn_cuda_masked_fill(const tn_iter *it, int32_t elsize, uint64_t value) {
    switch (elsize) {
    case 1: return ew_mfill<uint8_t>(it, value);
    case 2: return ew_mfill<uint16_t>(it, value);
    case 4: return ew_mfill<uint32_t>(it, value);
    case 8: return ew_mfill<uint64_t>(it, value);
    default: return tn_error(TN_ERR_DTYPE, "masked_fill (cuda): invalid element size %d", (int)elsize);
    }
}

extern "C" tn_status tn_cuda_has_zero(int *found, const tn_iter *it, int32_t dtype) {
    static const char *op = "div";
    *found = 0;
    if (it->nops != 1) return tn_error(TN_ERR_ARG, "%s (cuda): zero check over %d operands, expected 1", op, (int)it->nops);
    if (!tn_is_int_dtype(dtype)) return tn_error(TN_ERR_DTYPE, "%s (cuda): zero check of dtype %s", op, tn_dtype_name(dtype));
    if (it->numel <= 0) return TN_OK;
    tn_tensor *flag = NULL; /* one i32 on the device, from the caching pool */
    TN_TRY(tn_tensor_empty(&flag, 0, NULL, TN_I32, TN_CUDA));
    int32_t *dflag = (int32_t *)flag->data;
    int32_t host = 0;
    cudaStream_t stream = tn_cuda_stream_now();
    const unsigned blocks = tn_cuda_blocks(it->numel);
    tn_status rc = TN_CUDA_CHECK(cudaMemsetAsync(dflag, 0, sizeof *dflag, stream));
    if (rc == TN_OK) {
        switch (dtype) {
        case TN_I32: ew_has_zero<int32_t><<<blocks, TN_CUDA_THREADS, 0, stream>>>(*it, dflag); break;
        case TN_I64: ew_has_zero<int64_t><<<blocks, TN_CUDA_THREADS, 0, stream>>>(*it, dflag); break;
        default: ew_has_zero<uint8_t><<<blocks, TN_CUDA_THREADS, 0, stream>>>(*it, dflag); break;
        }
        rc = TN_CUDA_CHECK_LAUNCH();
    }
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaMemcpyAsync(&host, dflag, sizeof host, cudaMemcpyDeviceToHost, stream));
    if (rc == TN_OK) rc = TN_CUDA_CHECK(cudaStreamSynchronize(stream)); /* an error check: waiting is fine */
    tn_tensor_free(flag);
    TN_TRY(rc);
    *found = host != 0;
    return TN_OK;
}
