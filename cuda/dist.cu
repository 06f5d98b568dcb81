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
 * The communicator is non-blocking (NCCL >= 2.14): creating it, the first collective (which
 * connects the peers) and finalising it may answer ncclInProgress and go on in NCCL's threads;
 * core/dist.c's tn_dist_nccl_settle then waits for it like for every other wait, bounded by the
 * timeout, so that a peer that died during setup is an error instead of a hang.
 * No gradients: data movement only. Every CUDA and NCCL call is checked.
 */
#include "common.cuh"

#include <nccl.h>

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
#define TN_NCCL_NONBLOCKING 1
#else
#define TN_NCCL_NONBLOCKING 0
#endif

/* core/dist.c: waits until tn_nccl_state() is no longer 0, bounded by the timeout; on a timeout
 * or a signal it aborts the communicator (tn_nccl_comm_free(1)) and marks the job broken */
extern "C" tn_status tn_dist_nccl_settle(const char *what);

static tn_status tn_nccl_fail(ncclResult_t r, const char *call, const char *file, int line) {
    return tn_error(TN_ERR_DEVICE, "%s:%d: %s failed: %s", file, line, call, ncclGetErrorString(r));
}

static tn_status tn_nccl_done(ncclResult_t r, const char *call, const char *file, int line) {
    if (r == ncclSuccess) return TN_OK;
#if TN_NCCL_NONBLOCKING
    if (r == ncclInProgress) return tn_dist_nccl_settle(call);
#endif
    return tn_nccl_fail(r, call, file, line);
}
#define TN_NCCL_CHECK(call) tn_nccl_done((call), #call, __FILE__, __LINE__)

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

/* 1: the communicator is ready; 0: an operation on it is still in progress (non-blocking);
 * -1: it failed or was aborted (the error is set; a failed communicator is aborted here). */
extern "C" int tn_nccl_state(void) {
    if (!N.comm) {
        tn_error(TN_ERR_DEVICE, "dist: the NCCL communicator was aborted");
        return -1;
    }
    ncclResult_t st = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(N.comm, &st);
    if (r != ncclSuccess) {
        tn_nccl_fail(r, "ncclCommGetAsyncError", __FILE__, __LINE__);
        return -1;
    }
    if (st == ncclSuccess) return 1;
#if TN_NCCL_NONBLOCKING
    if (st == ncclInProgress) return 0;
#endif
    tn_error(TN_ERR_DEVICE, "dist: NCCL reported an asynchronous error: %s (a peer rank probably "
             "died); the communicator was aborted", ncclGetErrorString(st));
    ncclCommAbort(N.comm);
    N.comm = nullptr;
    return -1;
}

extern "C" tn_status tn_nccl_comm_init(const void *id, int32_t rank, int32_t size, int32_t device) {
    TN_TRY(tn_cuda_set_device(device));
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
#if TN_NCCL_NONBLOCKING
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&N.comm, size, u, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
        if (N.comm) ncclCommAbort(N.comm);
        N.comm = nullptr;
        return tn_nccl_fail(r, "ncclCommInitRankConfig", __FILE__, __LINE__);
    }
    /* on a timeout, a signal or an error the settle has aborted the communicator already */
    TN_TRY(tn_dist_nccl_settle("init(nccl): creating the NCCL communicator"));
#else
    TN_TRY(TN_NCCL_CHECK(ncclCommInitRank(&N.comm, size, u, rank)));
#endif
    /* the communication stream, through tn_cuda_stream_new so that record_stream knows it */
    tn_cuda_stream_t *prev = tn_cuda_get_stream();
    tn_status s = tn_cuda_stream_new(&N.stream);
    if (s == TN_OK) s = tn_cuda_set_stream(N.stream);
    if (s == TN_OK) N.cs = tn_cuda_stream_now();
    tn_status s2 = tn_cuda_set_stream(prev);
    if (s == TN_OK) s = s2;
    if (s != TN_OK) {
        ncclCommAbort(N.comm); /* nothing ran on it: no need to wait for a finalisation */
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

/* abort_comm = 0: finalise (waits for the queued collectives, bounded by the timeout) and
 * destroy; on failure the communicator is aborted and the error returned. abort_comm = 1: abort
 * at once (a peer died or a wait timed out); the stream is left, its work may never end. */
extern "C" tn_status tn_nccl_comm_free(int abort_comm) {
    tn_status s = TN_OK;
    if (N.comm && !abort_comm) {
#if TN_NCCL_NONBLOCKING
        s = TN_NCCL_CHECK(ncclCommFinalize(N.comm)); /* a failed settle has aborted it */
#endif
        if (s == TN_OK && N.comm) {
            /* frees local resources only (finalised above); the handle is gone even if it fails */
            ncclResult_t r = ncclCommDestroy(N.comm);
            N.comm = nullptr;
            if (r != ncclSuccess && r != ncclInProgress)
                s = tn_nccl_fail(r, "ncclCommDestroy", __FILE__, __LINE__);
        }
        if (s != TN_OK) abort_comm = 1;
    }
    if (N.comm && abort_comm) ncclCommAbort(N.comm);
    N.comm = nullptr;
    if (!abort_comm && N.stream) tn_cuda_stream_free(N.stream); /* waits for its work */
    N.stream = nullptr;
    N.device = -1;
    return s;
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
    return tn_nccl_state() < 0 ? -1 : 0; /* an error aborts the communicator */
}

extern "C" tn_status tn_nccl_finish(void *ev) {
    nccl_work *w = (nccl_work *)ev;
    tn_status s = TN_CUDA_CHECK(cudaStreamWaitEvent(tn_cuda_stream_now(), w->done, 0));
    tn_nccl_event_free(w);
    return s;
}
