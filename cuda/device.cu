/*
 * cuda/device.cu — CUDA device discovery and the CUDA allocator.
 *
 * Linked into libtern only in builds with TERN_HAVE_CUDA. At load time a constructor
 * registers the allocator for TN_CUDA storages (tn_allocator_set); it makes no CUDA call, so
 * loading the library on a machine without a GPU or driver costs nothing and fails nothing.
 * The allocator is a plain cudaMalloc/cudaFree on the current device for now; the caching
 * allocator arrives with the CUDA backend.
 *
 * Gradient policy: none (no kernels here).
 */
#include "common.cuh"

/* Number of visible CUDA devices; 0 when there is no driver, no device or any other error.
 * A missing GPU is an answer, not a failure, so this does not set the error message. */
extern "C" int tn_cuda_device_count(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* leave no sticky error for the next checked call */
        return 0;
    }
    return n;
}

/* nbytes 0 still returns a valid pointer (256 bytes), as the CPU allocator does; NULL means
 * failure and the error message says which call failed and why. Accounted per storage buffer
 * (tn_memory_note_alloc/free), as tensor.c requires of every allocator. */
static void *cuda_alloc(void *ctx, size_t nbytes) {
    (void)ctx;
    void *p = NULL;
    if (tn_cuda_device_count() == 0) {
        tn_error(TN_ERR_DEVICE, "no CUDA device is available (tern was built with CUDA, but the "
                                "driver reports no GPU)");
        return NULL;
    }
    if (TN_CUDA_CHECK(cudaMalloc(&p, nbytes == 0 ? 256 : nbytes)) != TN_OK) return NULL;
    tn_memory_note_alloc(TN_CUDA, nbytes);
    return p;
}

/* Frees are synchronous (cudaFree waits for the device). A failure cannot be returned from
 * here; it is recorded in the error message and the bytes are still taken off the count. */
static void cuda_free(void *ctx, void *ptr, size_t nbytes) {
    (void)ctx;
    if (!ptr) return;
    (void)TN_CUDA_CHECK(cudaFree(ptr));
    tn_memory_note_free(TN_CUDA, nbytes);
}

static const tn_allocator cuda_allocator = {cuda_alloc, cuda_free, NULL, TN_CUDA};

__attribute__((constructor)) static void tn_cuda_register(void) {
    tn_allocator_set(TN_CUDA, &cuda_allocator);
}
