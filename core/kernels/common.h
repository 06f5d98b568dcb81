/*
 * kernels/common.h — TN_HD marks per-element math shared by the CPU loops in core/ and the
 * CUDA kernels in cuda/ (static inline __host__ __device__ under nvcc).
 */
#ifndef TERN_KERNELS_COMMON_H
#define TERN_KERNELS_COMMON_H

#ifdef __CUDACC__
#define TN_HD __host__ __device__ __forceinline__
#else
#define TN_HD inline
#endif

#include <stdint.h>

#endif /* TERN_KERNELS_COMMON_H */
