/*
 * cuda/common.cuh — what every .cu file of cuda/ includes first: the CUDA runtime, core's
 * internal.h with C linkage, and TN_CUDA_CHECK, which records a failing CUDA call with its
 * file and line in the thread-local error (tn_error) and evaluates to a tn_status.
 *
 *   TN_TRY(TN_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream)));
 *
 * cuda/ depends on core/, never the reverse (STYLE.md).
 */
#ifndef TERN_CUDA_COMMON_CUH
#define TERN_CUDA_COMMON_CUH

/* The C headers internal.h includes come first, with C++ linkage, so that wrapping internal.h
 * in extern "C" below wraps only tern's own declarations (libstdc++'s math.h declares
 * templates, which must not get C linkage). */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cuda_runtime.h>

extern "C" {
#include "internal.h"
}

/* A failed CUDA call: clear the runtime's last-error slot (so a later cudaGetLastError() after
 * a kernel launch does not report this one again) and record "<file>:<line>: <call>: <name>
 * (<description>)". Out-of-memory maps to TN_ERR_OOM, everything else to TN_ERR_DEVICE. */
static inline tn_status tn_cuda_fail(cudaError_t e, const char *call, const char *file, int line) {
    (void)cudaGetLastError();
    return tn_error(e == cudaErrorMemoryAllocation ? TN_ERR_OOM : TN_ERR_DEVICE,
                    "%s:%d: %s failed: %s (%s)", file, line, call, cudaGetErrorName(e),
                    cudaGetErrorString(e));
}

#define TN_CUDA_CHECK(call)                                                                    \
    ([&]() -> tn_status {                                                                      \
        cudaError_t tn_cuda_e_ = (call);                                                       \
        return tn_cuda_e_ == cudaSuccess ? TN_OK                                               \
                                         : tn_cuda_fail(tn_cuda_e_, #call, __FILE__, __LINE__); \
    }())

/* After every kernel launch: TN_TRY(TN_CUDA_CHECK_LAUNCH()); */
#define TN_CUDA_CHECK_LAUNCH() TN_CUDA_CHECK(cudaGetLastError())

#endif /* TERN_CUDA_COMMON_CUH */
