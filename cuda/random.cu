/*
 * cuda/random.cu — tn_rand, tn_randn, tn_randint and tn_bernoulli on CUDA tensors
 * (tn_cuda_random_fill; core/random.c checks the arguments and reserves the counters).
 *
 * Element i of the output (its logical row-major index, whatever the strides) is
 * tn_rng_gen(seed, base + i) of kernels/random.h, the function the CPU loop calls, so a
 * CUDA tensor holds the same bits as a CPU tensor drawn from the same generator state.
 * An output with broadcast (stride 0) dims keeps, at each address, the draw of the last
 * element that maps there, as the CPU's sequential loop does.
 *
 * Gradient policy: none (random fills write out; nothing is differentiated).
 * Shapes: out is any tensor of numel n; counters base .. base + n - 1.
 */
#include "common.cuh"

#include "kernels/random.h"

/* out's dims that are neither broadcast nor of size 1, innermost first, neighbours merged where
 * they are contiguous both in memory and in the logical index. */
struct rng_layout {
    int32_t ndim;
    int64_t shape[TN_MAX_DIMS];   /* (ndim) */
    int64_t stride[TN_MAX_DIMS];  /* (ndim) in memory, elements */
    int64_t lstride[TN_MAX_DIMS]; /* (ndim) in the logical row-major index */
    int64_t e0;                   /* logical index of work item 0 (broadcast dims at their last index) */
    int64_t work;                 /* product of shape: the elements written */
};

/* Contiguous out: element i at data + i * elsize draws counter base + i. KIND: g.kind, fixed
 * at compile time so that the transform's switch folds away. */
template <int KIND>
__global__ void rng_flat_kernel(char *data /* (n) elements of g.dtype */, int64_t n, int64_t elsize,
                                tn_rng_params g, uint64_t seed, uint64_t base) {
    g.kind = KIND;
    TN_CUDA_GRID_LOOP(i, n) tn_rng_gen(data + i * elsize, &g, seed, base + (uint64_t)i);
}

/* Any layout: work item w -> its address and its logical index e; draws counter base + e. */
template <int KIND>
__global__ void rng_strided_kernel(char *data /* out's element 0 */, rng_layout l, int64_t elsize, tn_rng_params g,
                                   uint64_t seed, uint64_t base) {
    g.kind = KIND;
    TN_CUDA_GRID_LOOP(w, l.work) {
        int64_t r = w, off = 0, e = l.e0;
        for (int32_t k = 0; k < l.ndim; k++) {
            const int64_t i = r % l.shape[k];
            r /= l.shape[k];
            off += i * l.stride[k];
            e += i * l.lstride[k];
        }
        tn_rng_gen(data + off * elsize, &g, seed, base + (uint64_t)e);
    }
}

static rng_layout layout_of(const tn_tensor *t) {
    rng_layout l;
    l.ndim = 0;
    l.e0 = 0;
    l.work = 1;
    int64_t lmul = 1; /* logical stride of dim d */
    for (int32_t d = t->ndim - 1; d >= 0; d--) {
        const int64_t size = t->shape[d], st = t->strides[d];
        if (size != 1 && st == 0) {
            l.e0 += (size - 1) * lmul; /* the last element written there wins */
        } else if (size != 1) {
            const int32_t k = l.ndim;
            if (k > 0 && st == l.stride[k - 1] * l.shape[k - 1] && lmul == l.lstride[k - 1] * l.shape[k - 1]) {
                l.shape[k - 1] *= size;
            } else {
                l.shape[k] = size;
                l.stride[k] = st;
                l.lstride[k] = lmul;
                l.ndim++;
            }
            l.work *= size;
        }
        lmul *= size;
    }
    return l;
}

template <int KIND> static void launch(tn_tensor *out, const tn_rng_params &g, uint64_t seed, uint64_t base, cudaStream_t stream) {
    const int64_t n = tn_tensor_numel(out), es = (int64_t)tn_dtype_size(out->dtype);
    if (tn_tensor_is_contiguous(out)) {
        rng_flat_kernel<KIND><<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, stream>>>(out->data, n, es, g, seed, base);
    } else {
        const rng_layout l = layout_of(out);
        rng_strided_kernel<KIND><<<tn_cuda_blocks(l.work), TN_CUDA_THREADS, 0, stream>>>(out->data, l, es, g, seed, base);
    }
}

/* out: a CUDA tensor (checked by core/random.c) of g.dtype; base: the first of its numel
 * counters. Queued on the current stream. */
extern "C" tn_status tn_cuda_random_fill(tn_tensor *out, tn_rng_params g, uint64_t seed, uint64_t base) {
    if (tn_tensor_numel(out) == 0) return TN_OK;
    cudaStream_t stream = tn_cuda_stream_now();
    switch (g.kind) {
    case TN_RNG_UNIFORM: launch<TN_RNG_UNIFORM>(out, g, seed, base, stream); break;
    case TN_RNG_NORMAL: launch<TN_RNG_NORMAL>(out, g, seed, base, stream); break;
    case TN_RNG_INT: launch<TN_RNG_INT>(out, g, seed, base, stream); break;
    case TN_RNG_BERNOULLI: launch<TN_RNG_BERNOULLI>(out, g, seed, base, stream); break;
    default: return tn_error(TN_ERR_ARG, "random fill: invalid kind %d", (int)g.kind);
    }
    return TN_CUDA_CHECK_LAUNCH();
}
