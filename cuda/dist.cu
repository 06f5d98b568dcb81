/*
 * cuda/dist.cu — the NCCL side of core/dist.c (compiled only in builds with CUDA and NCCL).
 * core/dist.c owns the MPI bootstrap (rank 0's ncclUniqueId is broadcast over MPI), the
 * cross-rank checks and the timeout loop; this file makes the communicator on the device
 * local_rank selects, launches collectives and reports their progress through events:
 *   - blocking collectives run on the current stream; an event recorded after them is polled
 *     (with ncclCommGetAsyncError) by core/dist.c against the timeout;
 *   - started allreduces (tn_dist_allreduce_start) run on the communicator's own stream after
 *     the current stream's work (an event), so that they overlap later kernels; finishing one
 *     makes the current stream wait for it.
 * No gradients: data movement only. Every CUDA and NCCL call is checked.
 */
#include "common.cuh"

#include <nccl.h>

static tn_status tn_nccl_fail(ncclResult_t r, const char *call, const char *file, int line) {
    return tn_error(TN_ERR_DEVICE, "%s:%d: %s failed: %s", file, line, call, ncclGetErrorString(r));
}
#define TN_NCCL_CHECK(call)                                                                   \
    ([&]() -> tn_status {                                                                     \
        ncclResult_t tn_nccl_r_ = (call);                                                     \
        return tn_nccl_r_ == ncclSuccess ? TN_OK                                              \
                                         : tn_nccl_fail(tn_nccl_r_, #call, __FILE__, __LINE__); \
    }())

static struct {
    ncclComm_t comm;
    tn_cuda_stream_t *stream; /* the communication stream (async allreduces) */
    cudaStream_t cs;
    int device;
    int size;
} N = { nullptr, nullptr, nullptr, -1, 0 };

struct nccl_work {
    cudaEvent_t done; /* recorded after the collective on the stream it ran on */
    tn_tensor *t;     /* owned reference: the buffer stays alive while NCCL uses it */
    tn_tensor *out;   /* [OPTIONAL] owned reference (allgather) */
};

extern "C" tn_status tn_nccl_unique_id(void *id, size_t cap) {
    if (cap < sizeof(ncclUniqueId))
        return tn_error(TN_ERR_ARG, "dist: ncclUniqueId needs %zu bytes", sizeof(ncclUniqueId));
    ncclUniqueId u;
    TN_TRY(TN_NCCL_CHECK(ncclGetUniqueId(&u)));
    memcpy(id, &u, sizeof u);
    return TN_OK;
}

extern "C" tn_status tn_nccl_comm_init(const void *id, int32_t rank, int32_t size, int32_t device) {
    TN_TRY(tn_cuda_set_device(device));
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    TN_TRY(TN_NCCL_CHECK(ncclCommInitRank(&N.comm, size, u, rank)));
    /* the communication stream, through tn_cuda_stream_new so that record_stream knows it */
    tn_cuda_stream_t *prev = tn_cuda_get_stream();
    tn_status s = tn_cuda_stream_new(&N.stream);
    if (s == TN_OK) s = tn_cuda_set_stream(N.stream);
    if (s == TN_OK) N.cs = tn_cuda_stream_now();
    tn_status s2 = tn_cuda_set_stream(prev);
    if (s == TN_OK) s = s2;
    if (s != TN_OK) {
        ncclCommDestroy(N.comm);
        N.comm = nullptr;
        tn_cuda_stream_free(N.stream);
        N.stream = nullptr;
        return s;
    }
    N.device = device;
    N.size = size;
    return TN_OK;
}

extern "C" int32_t tn_nccl_device(void) { return N.device; }

extern "C" void tn_nccl_comm_free(int abort_comm) {
    if (N.comm) {
        if (abort_comm) ncclCommAbort(N.comm);
        else ncclCommDestroy(N.comm);
    }
    N.comm = nullptr;
    if (!abort_comm && N.stream) tn_cuda_stream_free(N.stream); /* waits for its work */
    N.stream = nullptr;
    N.device = -1;
}

static ncclDataType_t nccl_type(int32_t dtype) {
    switch (dtype) {
    case TN_F32: return ncclFloat32;
    case TN_F64: return ncclFloat64;
    case TN_F16: return ncclFloat16;
    case TN_BF16: return ncclBfloat16;
    case TN_I32: return ncclInt32;
    case TN_I64: return ncclInt64;
    default: return ncclUint8;
    }
}

extern "C" void tn_nccl_event_free(void *ev) {
    nccl_work *w = (nccl_work *)ev;
    if (!w) return;
    cudaEventDestroy(w->done);
    tn_tensor_free(w->t);
    tn_tensor_free(w->out);
    delete w;
}

extern "C" tn_status tn_nccl_start(void **ev, tn_tensor *t, tn_tensor *out, int32_t kind,
                                   int32_t op, int32_t root, int own_stream) {
    *ev = nullptr;
    if (!N.comm) return tn_error(TN_ERR_ARG, "dist: the NCCL communicator is not initialised");
    TN_TRY(tn_cuda_set_device(N.device));
    cudaStream_t cur = tn_cuda_stream_now();
    cudaStream_t st = own_stream ? N.cs : cur;
    nccl_work *w = new nccl_work();
    w->t = tn_tensor_retain(t);
    w->out = tn_tensor_retain(out);
    tn_status s = TN_CUDA_CHECK(cudaEventCreateWithFlags(&w->done, cudaEventDisableTiming));
    if (s != TN_OK) { w->done = nullptr; tn_tensor_free(w->t); tn_tensor_free(w->out); delete w; return s; }
    if (own_stream) {
        /* the communication stream starts after the work queued so far on the current stream */
        cudaEvent_t ready;
        s = TN_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
        if (s == TN_OK) {
            s = TN_CUDA_CHECK(cudaEventRecord(ready, cur));
            if (s == TN_OK) s = TN_CUDA_CHECK(cudaStreamWaitEvent(st, ready, 0));
            cudaEventDestroy(ready);
        }
        if (s == TN_OK) s = tn_cuda_record_stream(t, N.stream);
        if (s != TN_OK) { tn_nccl_event_free(w); return s; }
    }
    const size_t n = (size_t)tn_tensor_numel(t);
    const ncclDataType_t dt = nccl_type(t->dtype);
    if (kind == 0) {
        ncclRedOp_t rop = op == 2 ? ncclMax : op == 1 ? ncclAvg : ncclSum;
        s = TN_NCCL_CHECK(ncclAllReduce(t->data, t->data, n, dt, rop, N.comm, st));
    } else if (kind == 1) {
        s = TN_NCCL_CHECK(ncclBroadcast(t->data, t->data, n, dt, root, N.comm, st));
    } else {
        s = TN_NCCL_CHECK(ncclAllGather(t->data, out->data, n, dt, N.comm, st));
    }
    if (s == TN_OK) s = TN_CUDA_CHECK(cudaEventRecord(w->done, st));
    if (s != TN_OK) { tn_nccl_event_free(w); return s; }
    *ev = w;
    return TN_OK;
}

extern "C" int tn_nccl_poll(void *ev) {
    nccl_work *w = (nccl_work *)ev;
    cudaError_t e = cudaEventQuery(w->done);
    if (e == cudaSuccess) return 1;
    if (e != cudaErrorNotReady) {
        tn_cuda_fail(e, "cudaEventQuery(NCCL collective)", __FILE__, __LINE__);
        return -1;
    }
    ncclResult_t async_err = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(N.comm, &async_err);
    if (r != ncclSuccess) { tn_nccl_fail(r, "ncclCommGetAsyncError", __FILE__, __LINE__); return -1; }
    if (async_err != ncclSuccess && async_err != ncclInProgress) {
        tn_error(TN_ERR_DEVICE, "dist: NCCL reported an asynchronous error: %s (a peer rank "
                 "probably died); the communicator was aborted", ncclGetErrorString(async_err));
        ncclCommAbort(N.comm);
        N.comm = nullptr;
        return -1;
    }
    return 0;
}

extern "C" tn_status tn_nccl_finish(void *ev) {
    nccl_work *w = (nccl_work *)ev;
    tn_status s = TN_CUDA_CHECK(cudaStreamWaitEvent(tn_cuda_stream_now(), w->done, 0));
    tn_nccl_event_free(w);
    return s;
}
