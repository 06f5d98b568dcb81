/*
 * cuda/copy.cu — the CUDA side of tn_copy, tn_fill, tn_to_dtype and tn_arange (core/copy.c keeps
 * the argument checks, builds the tn_iter and calls these for CUDA memory):
 *
 *   tn_cuda_copy_iter  device -> device over a tn_iter (dst, src): strided, broadcasting,
 *                      converting between any two dtypes with kernels/copy.h's rounding; same
 *                      dtype and both contiguous is one cudaMemcpyAsync
 *   tn_cuda_copy_h2d   pageable host -> device, staged through pinned buffers in chunks of at
 *                      most 32 MiB (two buffers alternate); returns once the host memory may
 *                      be reused, possibly before the device has finished
 *   tn_cuda_copy_d2h   device -> pageable host, the same staging; returns when the host
 *                      memory holds the values (the stream is waited for)
 *   tn_cuda_fill       one element pattern into every element of a tn_iter's operand 0
 *                      (cudaMemsetAsync when all its bytes are equal)
 *   tn_cuda_arange     element i of arange, kernels/copy.h's tn_arange_f64 / tn_arange_i64
 *
 * Everything is queued on tn_cuda_stream_now(); the only host waits are device -> host copies.
 * Gradient policy: none (copies and conversions; the autograd handles them in Lua).
 * Shapes: an iterator's operands share its broadcast shape (it.numel elements); flat kernels
 * take n elements; contiguous vector paths N elements per thread.
 */
#include "common.cuh"

#include "kernels/copy.h"

/* cuda/device.cu: page-locked host buffers for copies on the current stream. */
extern "C" void *tn_cuda_pinned_alloc(size_t nbytes);
extern "C" tn_status tn_cuda_pinned_release(void *ptr);

/* ---- conversions ---------------------------------------------------------------------------- */

/* An element on its way between dtypes, as on the CPU (kernels/copy.h): int64_t from an integer
 * dtype, double from f64, float from f32 / f16 / bf16 (the CPU goes through double there, and
 * float -> double -> float is the identity, so float carries the same value). */
static __device__ __forceinline__ int64_t up(int32_t v) { return v; }
static __device__ __forceinline__ int64_t up(int64_t v) { return v; }
static __device__ __forceinline__ int64_t up(uint8_t v) { return v; }
static __device__ __forceinline__ double up(double v) { return v; }
static __device__ __forceinline__ float up(float v) { return v; }
static __device__ __forceinline__ float up(tn_f16 v) { return tn_half_to_float(v.bits); }
static __device__ __forceinline__ float up(tn_bf16 v) { return tn_bf16_to_float(v.bits); }

/* down<TD>::from(carrier): the carrier stored into TD with kernels/copy.h's rounding and
 * saturation. */
template <typename TD> struct down;
template <> struct down<float> {
    static __device__ __forceinline__ float from(int64_t v) { return (float)v; }
    static __device__ __forceinline__ float from(double v) { return (float)v; }
    static __device__ __forceinline__ float from(float v) { return v; }
};
template <> struct down<double> {
    static __device__ __forceinline__ double from(int64_t v) { return (double)v; }
    static __device__ __forceinline__ double from(double v) { return v; }
    static __device__ __forceinline__ double from(float v) { return (double)v; }
};
template <> struct down<tn_f16> {
    static __device__ __forceinline__ tn_f16 from(int64_t v) { return tn_f16{tn_float_to_half((float)v)}; }
    static __device__ __forceinline__ tn_f16 from(double v) { return tn_f16{tn_float_to_half((float)v)}; }
    static __device__ __forceinline__ tn_f16 from(float v) { return tn_f16{tn_float_to_half(v)}; }
};
template <> struct down<tn_bf16> {
    static __device__ __forceinline__ tn_bf16 from(int64_t v) { return tn_bf16{tn_float_to_bf16((float)v)}; }
    static __device__ __forceinline__ tn_bf16 from(double v) { return tn_bf16{tn_float_to_bf16((float)v)}; }
    static __device__ __forceinline__ tn_bf16 from(float v) { return tn_bf16{tn_float_to_bf16(v)}; }
};
template <> struct down<int32_t> {
    static __device__ __forceinline__ int32_t from(int64_t v) { return tn_sat_i64_i32(v); }
    static __device__ __forceinline__ int32_t from(double v) { return tn_sat_f64_i32(v); }
    static __device__ __forceinline__ int32_t from(float v) { return tn_sat_f64_i32((double)v); }
};
template <> struct down<int64_t> {
    static __device__ __forceinline__ int64_t from(int64_t v) { return v; }
    static __device__ __forceinline__ int64_t from(double v) { return tn_sat_f64_i64(v); }
    static __device__ __forceinline__ int64_t from(float v) { return tn_sat_f64_i64((double)v); }
};
template <> struct down<uint8_t> {
    static __device__ __forceinline__ uint8_t from(int64_t v) { return tn_sat_i64_u8(v); }
    static __device__ __forceinline__ uint8_t from(double v) { return tn_sat_f64_u8(v); }
    static __device__ __forceinline__ uint8_t from(float v) { return tn_sat_f64_u8((double)v); }
};

template <typename TD, typename TS> static __device__ __forceinline__ TD cvt(TS x) { return down<TD>::from(up(x)); }

/* N elements of T loaded or stored as one access (N * sizeof(T) is 2..16 bytes, a power of 2). */
template <typename T, int N> struct alignas(sizeof(T) * N) tn_vec { T v[N]; };

/* ---- kernels -------------------------------------------------------------------------------- */

/* d[i] = cvt(s[i]) for i < n. The first nvec * N elements go N at a time (d and s are then
 * aligned to N elements; nvec may be 0), the rest one at a time. */
template <typename TD, typename TS, int N>
__global__ void convert_flat_kernel(TD *__restrict__ d,       /* (n) */
                                    const TS *__restrict__ s, /* (n) */
                                    int64_t nvec, int64_t n) {
    TN_CUDA_GRID_LOOP(q, nvec) {
        const tn_vec<TS, N> a = reinterpret_cast<const tn_vec<TS, N> *>(s)[q];
        tn_vec<TD, N> b;
#pragma unroll
        for (int k = 0; k < N; k++) b.v[k] = cvt<TD, TS>(a.v[k]);
        reinterpret_cast<tn_vec<TD, N> *>(d)[q] = b;
    }
    const int64_t done = nvec * N;
    TN_CUDA_GRID_LOOP(i, n - done) d[done + i] = cvt<TD, TS>(s[done + i]);
}

/* Operand 0 (TD) = cvt(operand 1 (TS)) at every element of the iterator's shape. */
template <typename TD, typename TS>
__global__ void convert_strided_kernel(tn_iter it /* operands (dst, src), it.numel elements */) {
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[2];
        tn_cuda_iter_offsets(it, 2, e, off);
        reinterpret_cast<TD *>(it.data[0])[off[0]] = cvt<TD, TS>(reinterpret_cast<const TS *>(it.data[1])[off[1]]);
    }
}

/* Same dtype, any layout: the element's bits (U: an unsigned integer of the element's size). */
template <typename U>
__global__ void copy_strided_kernel(tn_iter it /* operands (dst, src), it.numel elements */) {
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[2];
        tn_cuda_iter_offsets(it, 2, e, off);
        reinterpret_cast<U *>(it.data[0])[off[0]] = reinterpret_cast<const U *>(it.data[1])[off[1]];
    }
}

/* d[i] = v for i < n; the first nvec 16-byte blocks (d 16-byte aligned; nvec may be 0) as the
 * pattern pat (v repeated), the rest one element at a time. */
template <typename U>
__global__ void fill_flat_kernel(U *__restrict__ d /* (n) */, U v, uint4 pat, int64_t nvec, int64_t n) {
    TN_CUDA_GRID_LOOP(q, nvec) reinterpret_cast<uint4 *>(d)[q] = pat;
    const int64_t done = nvec * (int64_t)(16 / sizeof(U));
    TN_CUDA_GRID_LOOP(i, n - done) d[done + i] = v;
}

template <typename U>
__global__ void fill_strided_kernel(tn_iter it /* operand (dst), it.numel elements */, U v) {
    TN_CUDA_GRID_LOOP(e, it.numel) {
        int64_t off[1];
        tn_cuda_iter_offsets(it, 1, e, off);
        reinterpret_cast<U *>(it.data[0])[off[0]] = v;
    }
}

/* Element i of arange into d (n elements of dtype): arange_kernel of core/copy.c. */
__global__ void arange_kernel(char *d /* (n) elements of dtype */, int64_t n, int32_t dtype, int64_t elsize,
                              double start, double step, int64_t istart, int64_t istep, int32_t exact_int) {
    TN_CUDA_GRID_LOOP(i, n) {
        if (dtype == TN_F32)
            reinterpret_cast<float *>(d)[i] = (float)tn_arange_f64(start, step, i);
        else if (exact_int)
            tn_elem_store_i64(d + i * elsize, dtype, tn_arange_i64(istart, istep, i));
        else
            tn_elem_store_f64(d + i * elsize, dtype, tn_arange_f64(start, step, i));
    }
}

/* ---- device -> device ---------------------------------------------------------------------- */

static inline int aligned_to(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* The iterator's operands are both contiguous (flat: one dim, stride 1). */
template <typename TD> struct convert_to {
    template <typename TS> struct from {
        static tn_status run(const tn_iter &it, cudaStream_t stream) {
            if (tn_cuda_iter_flat(it)) {
                constexpr int N = (int)(16 / (sizeof(TD) > sizeof(TS) ? sizeof(TD) : sizeof(TS)));
                TD *d = reinterpret_cast<TD *>(it.data[0]);
                const TS *s = reinterpret_cast<const TS *>(it.data[1]);
                const int64_t n = it.numel;
                const int64_t nvec = aligned_to(d, sizeof(TD) * N) && aligned_to(s, sizeof(TS) * N) ? n / N : 0;
                const int64_t rest = n - nvec * N;
                convert_flat_kernel<TD, TS, N>
                    <<<tn_cuda_blocks(nvec > rest ? nvec : rest), TN_CUDA_THREADS, 0, stream>>>(d, s, nvec, n);
            } else {
                convert_strided_kernel<TD, TS><<<tn_cuda_blocks(it.numel), TN_CUDA_THREADS, 0, stream>>>(it);
            }
            return TN_CUDA_CHECK_LAUNCH();
        }
    };
    static tn_status run(const tn_iter &it, int32_t src_dtype, cudaStream_t stream) {
        return TN_CUDA_DISPATCH("copy", src_dtype, from, it, stream);
    }
};

extern "C" tn_status tn_cuda_copy_iter(const tn_iter *it, int32_t dst_dtype, int32_t src_dtype) {
    if (it->numel == 0) return TN_OK;
    cudaStream_t stream = tn_cuda_stream_now();
    if (dst_dtype != src_dtype) return TN_CUDA_DISPATCH("copy", dst_dtype, convert_to, *it, src_dtype, stream);
    const size_t es = tn_dtype_size(dst_dtype);
    if (tn_cuda_iter_flat(*it))
        return TN_CUDA_CHECK(cudaMemcpyAsync(it->data[0], it->data[1], (size_t)it->numel * es, cudaMemcpyDeviceToDevice, stream));
    const unsigned blocks = tn_cuda_blocks(it->numel);
    switch (es) {
    case 1: copy_strided_kernel<uint8_t><<<blocks, TN_CUDA_THREADS, 0, stream>>>(*it); break;
    case 2: copy_strided_kernel<uint16_t><<<blocks, TN_CUDA_THREADS, 0, stream>>>(*it); break;
    case 4: copy_strided_kernel<uint32_t><<<blocks, TN_CUDA_THREADS, 0, stream>>>(*it); break;
    case 8: copy_strided_kernel<uint64_t><<<blocks, TN_CUDA_THREADS, 0, stream>>>(*it); break;
    default: return tn_error(TN_ERR_DTYPE, "copy: invalid dtype %d", (int)dst_dtype);
    }
    return TN_CUDA_CHECK_LAUNCH();
}

/* ---- host <-> device --------------------------------------------------------------------------- */

enum { STAGE_CHUNK = 32 << 20 }; /* bytes per pinned staging buffer */

/* A pinned buffer of nbytes into *buf; the pool's message on failure. */
static tn_status stage_alloc(void **buf, size_t nbytes) {
    tn_clear_error();
    *buf = tn_cuda_pinned_alloc(nbytes);
    if (*buf) return TN_OK;
    const tn_status s = tn_last_status();
    return s != TN_OK ? s : tn_error(TN_ERR_OOM, "copy: out of pinned host memory (%zu bytes)", nbytes);
}

/* Releases what stage_setup took (the pool reuses a buffer once the stream has passed the copies
 * queued on it, so this is safe while they run); the first failure wins over st's TN_OK. */
static tn_status stage_release(tn_status st, void *buf[2], cudaEvent_t ev[2]) {
    for (int b = 0; b < 2; b++) {
        if (ev[b]) { /* its resources go once its work completes */
            const tn_status r = TN_CUDA_CHECK(cudaEventDestroy(ev[b]));
            if (st == TN_OK) st = r;
        }
        const tn_status r = tn_cuda_pinned_release(buf[b]);
        if (st == TN_OK) st = r;
    }
    return st;
}

/* Two staging buffers of STAGE_CHUNK bytes with an event each. */
static tn_status stage_setup(void *buf[2], cudaEvent_t ev[2]) {
    buf[0] = buf[1] = NULL;
    ev[0] = ev[1] = NULL;
    for (int b = 0; b < 2; b++) {
        TN_TRY(stage_alloc(&buf[b], STAGE_CHUNK));
        TN_TRY(TN_CUDA_CHECK(cudaEventCreateWithFlags(&ev[b], cudaEventDisableTiming)));
    }
    return TN_OK;
}

extern "C" tn_status tn_cuda_copy_h2d(void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0) return TN_OK;
    cudaStream_t stream = tn_cuda_stream_now();
    if (nbytes <= (size_t)STAGE_CHUNK) {
        void *buf;
        TN_TRY(stage_alloc(&buf, nbytes));
        memcpy(buf, src, nbytes);
        const tn_status st = TN_CUDA_CHECK(cudaMemcpyAsync(dst, buf, nbytes, cudaMemcpyHostToDevice, stream));
        const tn_status r = tn_cuda_pinned_release(buf);
        return st != TN_OK ? st : r;
    }
    /* chunk k goes through buffer k % 2, which the copy of chunk k - 2 must have left */
    void *buf[2];
    cudaEvent_t ev[2];
    tn_status st = stage_setup(buf, ev);
    int queued[2] = {0, 0};
    for (size_t off = 0, k = 0; st == TN_OK && off < nbytes; k++) {
        const size_t len = nbytes - off < (size_t)STAGE_CHUNK ? nbytes - off : (size_t)STAGE_CHUNK;
        const int b = (int)(k & 1);
        if (queued[b]) st = TN_CUDA_CHECK(cudaEventSynchronize(ev[b]));
        if (st != TN_OK) break;
        memcpy(buf[b], (const char *)src + off, len);
        st = TN_CUDA_CHECK(cudaMemcpyAsync((char *)dst + off, buf[b], len, cudaMemcpyHostToDevice, stream));
        if (st == TN_OK) st = TN_CUDA_CHECK(cudaEventRecord(ev[b], stream));
        queued[b] = 1;
        off += len;
    }
    return stage_release(st, buf, ev);
}

extern "C" tn_status tn_cuda_copy_d2h(void *dst, const void *src, size_t nbytes) {
    if (nbytes == 0) return TN_OK;
    cudaStream_t stream = tn_cuda_stream_now();
    if (nbytes <= (size_t)STAGE_CHUNK) {
        void *buf;
        TN_TRY(stage_alloc(&buf, nbytes));
        tn_status st = TN_CUDA_CHECK(cudaMemcpyAsync(buf, src, nbytes, cudaMemcpyDeviceToHost, stream));
        if (st == TN_OK) st = TN_CUDA_CHECK(cudaStreamSynchronize(stream));
        if (st == TN_OK) memcpy(dst, buf, nbytes);
        const tn_status r = tn_cuda_pinned_release(buf);
        return st != TN_OK ? st : r;
    }
    /* chunk k lands in buffer k % 2; while it travels, chunk k - 1 is copied out of the other */
    void *buf[2];
    cudaEvent_t ev[2];
    tn_status st = stage_setup(buf, ev);
    size_t prev_off = 0, prev_len = 0; /* the chunk in flight in buffer prev_b */
    int prev_b = 0;
    for (size_t off = 0, k = 0; st == TN_OK && off < nbytes; k++) {
        const size_t len = nbytes - off < (size_t)STAGE_CHUNK ? nbytes - off : (size_t)STAGE_CHUNK;
        const int b = (int)(k & 1);
        st = TN_CUDA_CHECK(cudaMemcpyAsync(buf[b], (const char *)src + off, len, cudaMemcpyDeviceToHost, stream));
        if (st == TN_OK) st = TN_CUDA_CHECK(cudaEventRecord(ev[b], stream));
        if (st == TN_OK && prev_len) {
            st = TN_CUDA_CHECK(cudaEventSynchronize(ev[prev_b]));
            if (st == TN_OK) memcpy((char *)dst + prev_off, buf[prev_b], prev_len);
        }
        prev_off = off, prev_len = len, prev_b = b;
        off += len;
    }
    if (st == TN_OK && prev_len) { /* the last chunk */
        st = TN_CUDA_CHECK(cudaEventSynchronize(ev[prev_b]));
        if (st == TN_OK) memcpy((char *)dst + prev_off, buf[prev_b], prev_len);
    }
    return stage_release(st, buf, ev);
}

/* ---- fill ------------------------------------------------------------------------------------ */

template <typename U> static tn_status fill_run(const tn_iter &it, uint64_t bits, cudaStream_t stream) {
    U v;
    memcpy(&v, &bits, sizeof v); /* the low bytes (little-endian, as core/copy.c wrote them) */
    if (!tn_cuda_iter_flat(it)) {
        fill_strided_kernel<U><<<tn_cuda_blocks(it.numel), TN_CUDA_THREADS, 0, stream>>>(it, v);
        return TN_CUDA_CHECK_LAUNCH();
    }
    U *d = reinterpret_cast<U *>(it.data[0]);
    const int64_t n = it.numel;
    unsigned char rep[16]; /* v repeated over 16 bytes */
    for (size_t k = 0; k < 16; k += sizeof(U)) memcpy(rep + k, &v, sizeof(U));
    uint4 pat;
    memcpy(&pat, rep, sizeof pat);
    const int64_t per = (int64_t)(16 / sizeof(U));
    const int64_t nvec = aligned_to(d, 16) ? n / per : 0, rest = n - nvec * per;
    fill_flat_kernel<U><<<tn_cuda_blocks(nvec > rest ? nvec : rest), TN_CUDA_THREADS, 0, stream>>>(d, v, pat, nvec, n);
    return TN_CUDA_CHECK_LAUNCH();
}

extern "C" tn_status tn_cuda_fill(const tn_iter *it, uint64_t bits, int32_t elsize) {
    if (it->numel == 0) return TN_OK;
    cudaStream_t stream = tn_cuda_stream_now();
    if (tn_cuda_iter_flat(*it)) { /* every byte the same (zeros, u8, ...): a memset */
        const unsigned char *b = reinterpret_cast<const unsigned char *>(&bits);
        int same = 1;
        for (int k = 1; k < elsize; k++) same &= b[k] == b[0];
        if (same)
            return TN_CUDA_CHECK(cudaMemsetAsync(it->data[0], b[0], (size_t)it->numel * (size_t)elsize, stream));
    }
    switch (elsize) {
    case 1: return fill_run<uint8_t>(*it, bits, stream);
    case 2: return fill_run<uint16_t>(*it, bits, stream);
    case 4: return fill_run<uint32_t>(*it, bits, stream);
    case 8: return fill_run<uint64_t>(*it, bits, stream);
    default: return tn_error(TN_ERR_DTYPE, "fill: invalid element size %d", (int)elsize);
    }
}

/* ---- arange ----------------------------------------------------------------------------------- */

extern "C" tn_status tn_cuda_arange(void *data, int64_t n, int32_t dtype, double start, double step, int64_t istart,
                                    int64_t istep, int32_t exact_int) {
    if (n == 0) return TN_OK;
    const size_t es = tn_dtype_size(dtype);
    if (es == 0) return tn_error(TN_ERR_DTYPE, "arange: invalid dtype %d", (int)dtype);
    arange_kernel<<<tn_cuda_blocks(n), TN_CUDA_THREADS, 0, tn_cuda_stream_now()>>>(
        static_cast<char *>(data), n, dtype, (int64_t)es, start, step, istart, istep, exact_int);
    return TN_CUDA_CHECK_LAUNCH();
}
