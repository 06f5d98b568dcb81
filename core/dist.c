/*
 * dist.c — collectives between the ranks of an MPI job (tern.h, "distributed"): init, rank /
 * size / local_rank, barrier, allreduce (blocking and started-then-waited), broadcast and
 * allgather, in place on contiguous tensors.
 *
 * Every collective is a non-blocking MPI call (or an NCCL launch, cuda/dist.cu) polled with
 * MPI_Test / an event query plus short sleeps, so that a dead or stuck peer turns into an error
 * after the timeout instead of a hang: "rank 1: allreduce of f32[1000] waited 30 s; ...". A
 * timed-out collective leaves the communicator unusable (MPI cannot cancel a collective), so the
 * state is marked broken and every later call fails at once.
 *
 * Before each collective the ranks exchange (op, dtype, shape, root) in one small allgather and
 * fail with both ranks' descriptions when they differ (MPI itself would crash or hang on
 * mismatched counts). tn_dist_set_checks(0) skips that round trip.
 *
 * f16 / bf16 allreduce on MPI: converted to an f32 scratch buffer, reduced in f32, converted
 * back (MPI has no 16-bit float type). CUDA tensors on the MPI backend are staged through host
 * memory. The NCCL backend sends CUDA tensors through NCCL (cuda/dist.cu) and CPU tensors
 * through MPI.
 *
 * No gradients here: these are data movement, not differentiable ops.
 */
#include "internal.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>


static double dist_timeout_s = -1.0; /* < 0: not read from the environment yet */
static int dist_checks = 1;

static double dist_default_timeout(void) {
    const char *e = getenv("TERN_DIST_TIMEOUT");
    if (e && *e) {
        char *end = NULL;
        double v = strtod(e, &end);
        if (end != e && v > 0) return v;
    }
    return 300.0;
}

double tn_dist_get_timeout(void) {
    if (dist_timeout_s < 0) dist_timeout_s = dist_default_timeout();
    return dist_timeout_s;
}

tn_status tn_dist_set_timeout(double seconds) {
    if (!(seconds > 0))
        return tn_error(TN_ERR_ARG, "dist.set_timeout: seconds must be > 0, got %g", seconds);
    dist_timeout_s = seconds;
    return TN_OK;
}

void tn_dist_set_checks(int on) { dist_checks = on != 0; }

#ifndef TERN_HAVE_MPI

static const char dist_no_mpi[] =
    "tern was built without MPI, so distributed training is not available. Install OpenMPI "
    "(Debian: apt-get install libopenmpi-dev openmpi-bin) and rebuild tern (cmake -S . -B build "
    "&& cmake --build build; the configure summary then says 'MPI on'), then launch with "
    "mpirun -np N luajit script.lua";

int tn_dist_available(char *reason, size_t cap) {
    if (reason && cap) snprintf(reason, cap, "%s", dist_no_mpi);
    return 0;
}
#define DIST_NO_MPI(name) return tn_error(TN_ERR_UNSUPPORTED, "dist.%s: %s", name, dist_no_mpi)
tn_status tn_dist_init(int32_t backend, double timeout_s) { (void)backend; (void)timeout_s; DIST_NO_MPI("init"); }
tn_status tn_dist_finalize(void) { return TN_OK; }
int tn_dist_is_initialized(void) { return 0; }
int32_t tn_dist_get_backend(void) { return -1; }
tn_status tn_dist_rank(int32_t *out) { (void)out; DIST_NO_MPI("rank"); }
tn_status tn_dist_size(int32_t *out) { (void)out; DIST_NO_MPI("size"); }
tn_status tn_dist_local_rank(int32_t *out) { (void)out; DIST_NO_MPI("local_rank"); }
tn_status tn_dist_local_size(int32_t *out) { (void)out; DIST_NO_MPI("local_size"); }
tn_status tn_dist_abort(int32_t code) { (void)code; DIST_NO_MPI("abort"); }
tn_status tn_dist_barrier(void) { DIST_NO_MPI("barrier"); }
tn_status tn_dist_allreduce(tn_tensor *t, int32_t op) { (void)t; (void)op; DIST_NO_MPI("allreduce"); }
tn_status tn_dist_allreduce_start(tn_dist_work_t **out, tn_tensor *t, int32_t op) {
    (void)out; (void)t; (void)op;
    DIST_NO_MPI("allreduce_async");
}
tn_status tn_dist_work_wait(tn_dist_work_t *w) { (void)w; DIST_NO_MPI("wait"); }
tn_status tn_dist_work_test(tn_dist_work_t *w, int32_t *done) { (void)w; (void)done; DIST_NO_MPI("test"); }
void tn_dist_work_free(tn_dist_work_t *w) { (void)w; }
tn_status tn_dist_broadcast(tn_tensor *t, int32_t root) { (void)t; (void)root; DIST_NO_MPI("broadcast"); }
tn_status tn_dist_allgather(tn_tensor **out, const tn_tensor *t) { (void)out; (void)t; DIST_NO_MPI("allgather"); }

#else /* TERN_HAVE_MPI */

#include <limits.h>
#include <signal.h>
#include <unistd.h>
#include <mpi.h>

static const char *const dist_op_names[] = { "sum", "avg", "max" };
static const char *const dist_backend_names[] = { "auto", "mpi", "nccl" };

#ifdef TERN_HAVE_NCCL
/* cuda/dist.cu */
tn_status tn_nccl_unique_id(void *id, size_t cap);
tn_status tn_nccl_comm_init(const void *id, int32_t rank, int32_t size, int32_t device);
tn_status tn_nccl_comm_free(int abort_comm);
int32_t tn_nccl_device(void);
/* 1 the communicator is ready, 0 a non-blocking call on it is still in progress, < 0 an error
 * (set; the communicator is aborted) */
int tn_nccl_state(void);
/* kind: 0 allreduce (op), 1 broadcast (root), 2 allgather (into out); own_stream: run on the
 * communication stream after the current stream's work (async) instead of the current stream */
tn_status tn_nccl_start(void **ev, tn_tensor *t, tn_tensor *out, int32_t kind, int32_t op,
                        int32_t root, int own_stream);
/* 1 done, 0 in flight; < 0 an error (set) */
int tn_nccl_poll(void *ev);
/* the current stream waits for ev; frees it */
tn_status tn_nccl_finish(void *ev);
void tn_nccl_event_free(void *ev);
#endif

static struct {
    int initialized;
    int we_init_mpi;   /* tn_dist_init called MPI_Init_thread (so finalize calls MPI_Finalize) */
    int broken;        /* a collective timed out: the communicator is unusable */
    char broken_why[256];
    int32_t backend;   /* TN_DIST_MPI or TN_DIST_NCCL */
    int32_t rank, size, local_rank, local_size;
    MPI_Comm comm;     /* a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN */
    int nccl;          /* the NCCL communicator exists */
} D = { .comm = MPI_COMM_NULL };

struct tn_dist_work {
    MPI_Request *reqs;  /* (nreq) the chunks' MPI_Iallreduce */
    int nreq;
    void *buf;          /* host buffer reduced: t's data, the staging copy or the scratch */
    int64_t n, esz;
    MPI_Datatype mt;
    tn_tensor *t;       /* owned reference: the user's tensor */
    tn_tensor *host;    /* [OPTIONAL] owned: host staging copy of a CUDA tensor (MPI backend) */
    float *scratch;     /* [OPTIONAL] f32 buffer of an f16 / bf16 tensor, (numel) */
    void *nccl_ev;      /* [OPTIONAL] NCCL work (cuda/dist.cu) */
    int32_t op;
    int active;         /* started and not yet completed */
    double t0;
    char what[224];     /* "allreduce of f32[1000]" */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap(double elapsed) {
    /* MPI's non-blocking collectives (OpenMPI's libnbc) advance only inside MPI calls, so any
     * sleep between two MPI_Test stalls the transfer: poll with only a yield for the first second
     * (a 256 MiB allreduce of 2 ranks takes 0.3 s), then sleep 100 us (a peer still computing)
     * and 1 ms after 10 s (a peer probably stuck) between polls. */
    if (elapsed < 1.0) {
        sched_yield();
        return;
    }
    struct timespec ts = { 0, elapsed < 10.0 ? 100000 : 1000000 };
    nanosleep(&ts, NULL);
}

/* Bytes per MPI_Iallreduce of a large allreduce: TERN_DIST_CHUNK_KB (default 65536 = 64 MiB),
 * read once. Keeps every MPI count below 2^31. 1 MiB chunks were tried on 2 CPU ranks of a
 * shared 2-core machine (recipes/bench_dist.lua): within its noise (0.6-1.0 GB/s at 16-256 MiB
 * either way), so the default leaves a fusion buffer of up to 64 MiB whole. */
static int64_t dist_chunk_bytes(void) {
    static int64_t bytes = 0;
    if (bytes == 0) {
        const char *e = getenv("TERN_DIST_CHUNK_KB");
        long long kb = e && *e ? atoll(e) : 0;
        bytes = (kb > 0 ? kb : 65536) * 1024;
        if (bytes > ((int64_t)1 << 30)) bytes = (int64_t)1 << 30;
    }
    return bytes;
}

static const char *what_str(char *buf, size_t n, const char *op, const tn_tensor *t) {
    if (t) snprintf(buf, n, "%s of %s%s", op, tn_dtype_name(t->dtype), TN_SHAPE(t));
    else snprintf(buf, n, "%s", op);
    return buf;
}

static tn_status mpi_fail(int rc, const char *what) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
    return tn_error(TN_ERR_IO, "dist: rank %d: %s failed: %s", (int)D.rank, what, s);
}

/* The communicator is unusable from now on; why (formatted) is named by every later call. */
static void mark_broken(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void mark_broken(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(D.broken_why, sizeof D.broken_why, fmt, ap);
    va_end(ap);
    D.broken = 1;
}

static tn_status timed_out(const char *what, double waited) {
    mark_broken("rank %d: %.200s timed out after %.0f s", (int)D.rank, what, waited);
    return tn_error(TN_ERR_IO,
                    "dist: rank %d: %s waited %.0f s (timeout %g s); a peer rank probably died or "
                    "never reached this call. The communicator is unusable now: end the job "
                    "(dist.abort() calls MPI_Abort, or exit non-zero and mpirun ends the other "
                    "ranks); the timeout is set by dist.init{timeout=s} or TERN_DIST_TIMEOUT",
                    (int)D.rank, what, waited, tn_dist_get_timeout());
}

static tn_status check_ready(const char *name) {
    if (!D.initialized)
        return tn_error(TN_ERR_ARG, "dist.%s: not initialised; call dist.init() first (and "
                                    "launch with mpirun -np N)", name);
    if (D.broken)
        return tn_error(TN_ERR_IO, "dist.%s: the communicator is unusable since %s; end the job "
                                   "(dist.abort())", name, D.broken_why);
    return TN_OK;
}

/* ---- a rank ended by mpirun while it waits ----------------------------------------------------
 * When one rank exits non-zero, mpirun ends the others with SIGTERM (then SIGKILL). A rank
 * waiting in a collective then says so on stderr before it dies, so that its last words name
 * the collective it was stuck in instead of nothing. Installed by init only where SIGTERM has
 * its default action (a handler of the host program, e.g. tn_signal_catch, is left alone: the
 * wait loops then return an error when it counted a signal). */
static char dist_wait_what[320];  /* "dist: rank 0: allreduce of f32[1000]" */
static size_t dist_wait_len;
static volatile sig_atomic_t dist_waiting;
static int dist_sig_installed;
static struct sigaction dist_sig_old;

static void dist_on_term(int sig) {
    if (dist_waiting) {
        static const char tail[] = ": ended by SIGTERM while waiting for the other ranks; another "
                                   "rank probably failed or exited (see mpirun's report)\n";
        ssize_t r = write(2, dist_wait_what, dist_wait_len);
        r = write(2, tail, sizeof tail - 1);
        (void)r;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void dist_sig_install(void) {
    struct sigaction cur;
    if (dist_sig_installed || sigaction(SIGTERM, NULL, &cur) != 0 || cur.sa_handler != SIG_DFL) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = dist_on_term;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, &dist_sig_old) == 0) dist_sig_installed = 1;
}

static void dist_sig_remove(void) {
    struct sigaction cur;
    if (!dist_sig_installed) return;
    /* only when ours is still the handler (tn_signal_catch may have replaced it) */
    if (sigaction(SIGTERM, NULL, &cur) == 0 && cur.sa_handler == dist_on_term)
        sigaction(SIGTERM, &dist_sig_old, NULL);
    dist_sig_installed = 0;
}

static void wait_begin(const char *what) {
    int n = snprintf(dist_wait_what, sizeof dist_wait_what, "dist: rank %d: %s", (int)D.rank, what);
    dist_wait_len = n < 0 ? 0 : (size_t)n < sizeof dist_wait_what ? (size_t)n : sizeof dist_wait_what - 1;
    dist_waiting = 1;
}

static void wait_end(void) { dist_waiting = 0; }

/* A signal the host program counts (tn_signal_catch) ends the wait with an error. */
static tn_status wait_interrupted(const char *what, double waited) {
    int sig = tn_signal_pending();
    if (!sig) return TN_OK;
    mark_broken("rank %d: %.200s was interrupted by signal %d", (int)D.rank, what, sig);
    return tn_error(TN_ERR_IO, "dist: rank %d: %s interrupted by signal %d after %.1f s of "
                    "waiting; the communicator is unusable now: end the job", (int)D.rank, what,
                    sig, waited);
}

/* Polls req until it completes or the timeout passes (t0: when the op began). */
static tn_status mpi_wait(MPI_Request *req, const char *what, double t0) {
    const double limit = tn_dist_get_timeout();
    tn_status s = TN_OK;
    wait_begin(what);
    for (;;) {
        int flag = 0;
        int rc = MPI_Test(req, &flag, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) { s = mpi_fail(rc, what); break; }
        if (flag) break;
        double el = now_s() - t0;
        if (el > limit) { s = timed_out(what, el); break; }
        if ((s = wait_interrupted(what, el)) != TN_OK) break;
        nap(el);
    }
    wait_end();
    return s;
}

#ifdef TERN_HAVE_NCCL
/* Called by cuda/dist.cu when an NCCL call on the non-blocking communicator answered
 * ncclInProgress (its creation, the first collective that connects the peers, finalisation):
 * waits until the communicator is ready, bounded by the timeout like every other wait. On a
 * timeout or a signal the communicator is aborted (nothing else may touch it while a call is in
 * progress) and the job is marked broken. */
tn_status tn_dist_nccl_settle(const char *what);
tn_status tn_dist_nccl_settle(const char *what) {
    const double t0 = now_s(), limit = tn_dist_get_timeout();
    tn_status s = TN_OK;
    wait_begin(what);
    for (;;) {
        int r = tn_nccl_state();
        if (r > 0) break;
        if (r < 0) {
            mark_broken("rank %d: %.200s failed", (int)D.rank, what);
            s = tn_last_status();
            break;
        }
        double el = now_s() - t0;
        if (el > limit) { (void)tn_nccl_comm_free(1); s = timed_out(what, el); break; }
        if ((s = wait_interrupted(what, el)) != TN_OK) { (void)tn_nccl_comm_free(1); break; }
        nap(el);
    }
    wait_end();
    return s;
}
#endif

/* ---- the cross-rank check ------------------------------------------------------------------ */

enum { DESC_N = 5 + TN_MAX_DIMS }; /* kind, dtype, ndim, op, root, shape */


static void desc_str(char *buf, size_t n, const int64_t *d) {
    static const char *const kinds[] = { "allreduce", "broadcast", "allgather", "barrier" };
    int64_t sh[TN_MAX_DIMS];
    int32_t nd = (int32_t)(d[2] < 0 ? 0 : d[2] > TN_MAX_DIMS ? TN_MAX_DIMS : d[2]);
    for (int i = 0; i < nd; i++) sh[i] = d[5 + i];
    const char *k = d[0] >= 0 && d[0] < 4 ? kinds[d[0]] : "?";
    if (d[0] == 0)
        snprintf(buf, n, "%s(%s) of %s%s", k, d[3] >= 0 && d[3] < 3 ? dist_op_names[d[3]] : "?",
                 tn_dtype_name((int32_t)d[1]), TN_DIMS(nd, sh));
    else if (d[0] == 1)
        snprintf(buf, n, "%s(root %lld) of %s%s", k, (long long)d[4], tn_dtype_name((int32_t)d[1]),
                 TN_DIMS(nd, sh));
    else
        snprintf(buf, n, "%s of %s%s", k, tn_dtype_name((int32_t)d[1]), TN_DIMS(nd, sh));
}

/* Every rank passes the same kind (0 allreduce, 1 broadcast, 2 allgather), op, dtype, shape
 * and root; else an error naming this rank's call and the first rank that differs. */
static void desc_fill(int64_t *mine, int32_t kind, const tn_tensor *t, int32_t op, int32_t root) {
    memset(mine, 0, sizeof(int64_t) * DESC_N);
    mine[0] = kind; mine[1] = t->dtype; mine[2] = t->ndim; mine[3] = op; mine[4] = root;
    for (int i = 0; i < t->ndim; i++) mine[5 + i] = t->shape[i];
}

/* all: (D.size, DESC_N) gathered descriptions */
static tn_status desc_compare(const int64_t *all, const int64_t *mine) {
    for (int r = 0; r < D.size; r++) {
        if (memcmp(all + (size_t)r * DESC_N, mine, sizeof(int64_t) * DESC_N) != 0) {
            char a[200], b[200];
            desc_str(a, sizeof a, mine);
            desc_str(b, sizeof b, all + (size_t)r * DESC_N);
            return tn_error(TN_ERR_SHAPE, "dist: rank %d: %s does not match rank %d's %s; every "
                            "rank must make the same collective calls with the same dtypes and "
                            "shapes, in the same order", (int)D.rank, a, r, b);
        }
    }
    return TN_OK;
}

static tn_status check_same(int32_t kind, const tn_tensor *t, int32_t op, int32_t root,
                            const char *what) {
    if (!dist_checks || D.size == 1) return TN_OK;
    int64_t mine[DESC_N];
    desc_fill(mine, kind, t, op, root);
    int64_t *all = malloc(sizeof(int64_t) * DESC_N * (size_t)D.size);
    if (!all) return tn_error(TN_ERR_OOM, "dist: %s: out of memory", what);
    MPI_Request req;
    double t0 = now_s();
    int rc = MPI_Iallgather(mine, DESC_N, MPI_INT64_T, all, DESC_N, MPI_INT64_T, D.comm, &req);
    tn_status s = rc == MPI_SUCCESS ? mpi_wait(&req, what, t0) : mpi_fail(rc, what);
    if (s == TN_OK) s = desc_compare(all, mine);
    free(all);
    return s;
}

/* ---- init and queries ---------------------------------------------------------------------- */

int tn_dist_available(char *reason, size_t cap) {
    if (reason && cap) {
        const char *n = getenv("OMPI_COMM_WORLD_SIZE");
        if (!n) n = getenv("PMI_SIZE");
        if (!n) n = getenv("PMIX_SIZE");
        if (n) snprintf(reason, cap, "built with MPI%s; launched by mpirun (%s ranks)",
                        tn_has_nccl() ? " and NCCL" : "", n);
        else snprintf(reason, cap, "built with MPI%s; not launched by mpirun: dist.init() makes a "
                      "single rank (launch with mpirun -np N for more)",
                      tn_has_nccl() ? " and NCCL" : "");
    }
    return 1;
}

int tn_dist_is_initialized(void) { return D.initialized; }
int32_t tn_dist_get_backend(void) { return D.initialized ? D.backend : -1; }

static tn_status dist_setup_nccl(void) {
#ifdef TERN_HAVE_NCCL
    char id[256];
    tn_status s = TN_OK;
    const int ndev = tn_cuda_device_count();
    if (ndev <= 0)
        s = tn_error(TN_ERR_DEVICE, "dist.init(nccl): rank %d sees no CUDA device (use "
                     "backend='mpi' for CPU ranks)", (int)D.rank);
    else if (D.rank == 0)
        s = tn_nccl_unique_id(id, sizeof id);
    /* every rank learns whether all can go on before any enters ncclCommInitRank (a blocking
     * collective that would wait forever for a rank that gave up) */
    int ok = s == TN_OK, all_ok = 0;
    MPI_Request req;
    double t0 = now_s();
    int rc = MPI_Iallreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, D.comm, &req);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "init(nccl): status exchange");
    TN_TRY(mpi_wait(&req, "init(nccl): status exchange", t0));
    if (!all_ok) {
        if (s != TN_OK) return s;
        return tn_error(TN_ERR_DEVICE, "dist.init(nccl): rank %d: another rank could not set up "
                        "NCCL (no CUDA device there, or rank 0 could not make the NCCL id); see "
                        "its message", (int)D.rank);
    }
    rc = MPI_Ibcast(id, (int)sizeof id, MPI_BYTE, 0, D.comm, &req);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "init(nccl): broadcast of the NCCL id");
    TN_TRY(mpi_wait(&req, "init(nccl): broadcast of the NCCL id", t0));
    TN_TRY(tn_nccl_comm_init(id, D.rank, D.size, D.local_rank % ndev));
    D.nccl = 1;
    return TN_OK;
#else
    return tn_error(TN_ERR_UNSUPPORTED, "dist.init: backend 'nccl' needs a build with CUDA and "
                    "NCCL (this one has %s); use backend='mpi' or 'auto', or install NCCL "
                    "(libnccl-dev, or set NCCL_HOME) and rebuild", tn_has_cuda() ? "CUDA but not NCCL" :
                    "neither");
#endif
}

tn_status tn_dist_init(int32_t backend, double timeout_s) {
    if (backend < TN_DIST_AUTO || backend > TN_DIST_NCCL)
        return tn_error(TN_ERR_ARG, "dist.init: unknown backend %d", (int)backend);
#ifndef TERN_HAVE_NCCL
    if (backend == TN_DIST_NCCL) return dist_setup_nccl(); /* the error, before MPI is touched */
#endif
    if (timeout_s > 0) dist_timeout_s = timeout_s;
    if (D.initialized) {
        if (backend != TN_DIST_AUTO && backend != D.backend)
            return tn_error(TN_ERR_ARG, "dist.init: already initialised with backend '%s', asked "
                            "for '%s'", dist_backend_names[D.backend], dist_backend_names[backend]);
        return TN_OK;
    }
    int flag = 0;
    MPI_Finalized(&flag);
    if (flag)
        return tn_error(TN_ERR_ARG, "dist.init: MPI was finalised in this process and cannot be "
                                    "initialised again");
    MPI_Initialized(&flag);
    if (!flag) {
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) return mpi_fail(rc, "init (MPI_Init_thread)");
        D.we_init_mpi = 1;
    }
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &D.comm);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "init (MPI_Comm_dup)");
    MPI_Comm_set_errhandler(D.comm, MPI_ERRORS_RETURN);
    int r, n;
    MPI_Comm_rank(D.comm, &r);
    MPI_Comm_size(D.comm, &n);
    D.rank = r;
    D.size = n;
    MPI_Comm local;
    rc = MPI_Comm_split_type(D.comm, MPI_COMM_TYPE_SHARED, r, MPI_INFO_NULL, &local);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "init (MPI_Comm_split_type)");
    MPI_Comm_rank(local, &r);
    MPI_Comm_size(local, &n);
    D.local_rank = r;
    D.local_size = n;
    MPI_Comm_free(&local);
    D.broken = 0;
    D.initialized = 1;
    dist_sig_install();

    int32_t b = backend;
    if (b == TN_DIST_AUTO) b = (tn_has_nccl() && tn_cuda_device_count() > 0) ? TN_DIST_NCCL : TN_DIST_MPI;
    D.backend = TN_DIST_MPI;
    if (b == TN_DIST_NCCL) {
        tn_status s = dist_setup_nccl();
        if (s != TN_OK) {
            /* back to not initialised, MPI kept (it cannot be initialised twice): a later
             * init{backend="mpi"} still works */
            MPI_Comm_free(&D.comm);
            D.initialized = 0;
            dist_sig_remove();
            return s;
        }
        D.backend = TN_DIST_NCCL;
    }
    return TN_OK;
}

tn_status tn_dist_finalize(void) {
    if (!D.initialized) return TN_OK;
    if (D.broken)
        return tn_error(TN_ERR_IO, "dist.finalize: not finalising MPI since %s (MPI_Finalize "
                        "would wait for the dead peer); end the job with dist.abort() or a "
                        "non-zero exit", D.broken_why);
#ifdef TERN_HAVE_NCCL
    if (D.nccl) {
        D.nccl = 0;
        /* finalising waits for the queued collectives; a failure (a dead peer) aborts it */
        TN_TRY(tn_nccl_comm_free(0));
    }
#endif
    D.nccl = 0;
    MPI_Comm_free(&D.comm);
    D.initialized = 0;
    dist_sig_remove();
    if (D.we_init_mpi) {
        int flag = 0;
        MPI_Finalized(&flag);
        if (!flag) MPI_Finalize();
        D.we_init_mpi = 0;
    }
    return TN_OK;
}

tn_status tn_dist_rank(int32_t *out) { TN_TRY(check_ready("rank")); *out = D.rank; return TN_OK; }
tn_status tn_dist_size(int32_t *out) { TN_TRY(check_ready("size")); *out = D.size; return TN_OK; }
tn_status tn_dist_local_rank(int32_t *out) { TN_TRY(check_ready("local_rank")); *out = D.local_rank; return TN_OK; }
tn_status tn_dist_local_size(int32_t *out) { TN_TRY(check_ready("local_size")); *out = D.local_size; return TN_OK; }

tn_status tn_dist_abort(int32_t code) {
    int flag = 0;
    MPI_Initialized(&flag);
    if (!flag) return tn_error(TN_ERR_UNSUPPORTED, "dist.abort: MPI is not initialised");
#ifdef TERN_HAVE_NCCL
    if (D.nccl) (void)tn_nccl_comm_free(1);
#endif
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    return tn_error(TN_ERR_IO, "dist.abort: MPI_Abort returned");
}

tn_status tn_dist_barrier(void) {
    TN_TRY(check_ready("barrier"));
    MPI_Request req;
    double t0 = now_s();
    int rc = MPI_Ibarrier(D.comm, &req);
    if (rc != MPI_SUCCESS) return mpi_fail(rc, "barrier");
    return mpi_wait(&req, "barrier", t0);
}

/* ---- argument checks --------------------------------------------------------------------- */

static tn_status check_tensor_arg(const char *name, const tn_tensor *t) {
    TN_TRY(tn_check_tensor(name, "t", t));
    if (!tn_tensor_is_contiguous(t))
        return tn_error(TN_ERR_ARG, "dist.%s: the tensor must be contiguous, got %s%s with strides "
                        "%s (call :contiguous() first)", name, tn_dtype_name(t->dtype), TN_SHAPE(t),
                        TN_DIMS(t->ndim, t->strides));
    if (t->device == TN_CUDA && !tn_has_cuda())
        return tn_error(TN_ERR_DEVICE, "dist.%s: a CUDA tensor but no CUDA device", name);
    return TN_OK;
}

/* CUDA tensor that goes through NCCL? (Checks it is on the communicator's device.) */
static tn_status use_nccl(const char *name, const tn_tensor *t, int *yes) {
    (void)name;
    *yes = 0;
    if (t->device != TN_CUDA || D.backend != TN_DIST_NCCL) return TN_OK;
#ifdef TERN_HAVE_NCCL
    if (t->device_index != tn_nccl_device())
        return tn_error(TN_ERR_DEVICE, "dist.%s: rank %d's NCCL communicator is on cuda:%d (local "
                        "rank %d) but the tensor %s%s is on cuda:%d", name, (int)D.rank,
                        (int)tn_nccl_device(), (int)D.local_rank, tn_dtype_name(t->dtype),
                        TN_SHAPE(t), (int)t->device_index);
    *yes = 1;
#endif
    return TN_OK;
}

static MPI_Datatype mpi_type(int32_t dtype) {
    switch (dtype) {
    case TN_F32: return MPI_FLOAT;
    case TN_F64: return MPI_DOUBLE;
    case TN_I32: return MPI_INT32_T;
    case TN_I64: return MPI_INT64_T;
    case TN_U8: return MPI_UINT8_T;
    case TN_F16: case TN_BF16: return MPI_FLOAT; /* through the f32 scratch */
    default: return MPI_DATATYPE_NULL;
    }
}

/* ---- allreduce ----------------------------------------------------------------------------- */

static void scale_avg(void *p, int32_t dtype, int64_t n, double inv) {
    if (dtype == TN_F64) {
        double *x = p;
        for (int64_t i = 0; i < n; i++) x[i] *= inv;
    } else { /* f32, or the f32 scratch of f16 / bf16 */
        float *x = p;
        const float f = (float)inv;
        for (int64_t i = 0; i < n; i++) x[i] *= f;
    }
}

/* The MPI part is done: average, convert back from the scratch, copy back to the device. */
static tn_status work_complete(tn_dist_work_t *w) {
    w->active = 0;
    tn_tensor *h = w->host ? w->host : w->t;
    const int64_t n = tn_tensor_numel(h);
    if (w->nccl_ev) {
#ifdef TERN_HAVE_NCCL
        void *ev = w->nccl_ev;
        w->nccl_ev = NULL;
        return tn_nccl_finish(ev);
#endif
    }
    void *buf = w->scratch ? (void *)w->scratch : (void *)h->data;
    if (w->op == TN_DIST_AVG) scale_avg(buf, w->scratch ? TN_F32 : h->dtype, n, 1.0 / D.size);
    if (w->scratch) {
        uint16_t *x = (uint16_t *)h->data;
        if (h->dtype == TN_F16)
            for (int64_t i = 0; i < n; i++) x[i] = tn_f32_to_f16(w->scratch[i]);
        else
            for (int64_t i = 0; i < n; i++) x[i] = tn_f32_to_bf16(w->scratch[i]);
    }
    if (w->host) return tn_copy(w->t, w->host);
    return TN_OK;
}

static void work_release(tn_dist_work_t *w) {
    tn_tensor_free(w->t);
    tn_tensor_free(w->host);
    free(w->scratch);
    free(w->reqs);
#ifdef TERN_HAVE_NCCL
    if (w->nccl_ev) tn_nccl_event_free(w->nccl_ev);
#endif
    free(w);
}

/* Starts the MPI_Iallreduce of each chunk of w->buf (n elements of esz bytes), all at once, in
 * the same order on every rank. */
static tn_status issue_chunks(tn_dist_work_t *w) {
    const int64_t n = w->n, esz = w->esz;
    const int64_t chunk = dist_chunk_bytes() / esz > 0 ? dist_chunk_bytes() / esz : 1;
    const int64_t nreq = n > 0 ? (n + chunk - 1) / chunk : 1;
    w->reqs = malloc(sizeof(MPI_Request) * (size_t)nreq);
    if (!w->reqs) return tn_error(TN_ERR_OOM, "dist.%s: out of memory", w->what);
    for (int64_t k = 0; k < nreq; k++) {
        const int64_t off = k * chunk, cnt = n - off < chunk ? n - off : chunk;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)w->buf + off * esz, (int)cnt, w->mt,
                                w->op == TN_DIST_MAX ? MPI_MAX : MPI_SUM, D.comm, &w->reqs[k]);
        if (rc != MPI_SUCCESS) {
            tn_status s = mpi_fail(rc, w->what);
            if (k > 0) { /* chunks in flight: the ranks are out of step now */
                mark_broken("an allreduce failed half-started");
            }
            return s;
        }
        w->nreq = (int)(k + 1);
    }
    return TN_OK;
}

tn_status tn_dist_allreduce_start(tn_dist_work_t **out, tn_tensor *t, int32_t op) {
    if (!out) return tn_error(TN_ERR_ARG, "dist.allreduce: out is NULL");
    *out = NULL;
    TN_TRY(check_ready("allreduce"));
    TN_TRY(check_tensor_arg("allreduce", t));
    if (op < TN_DIST_SUM || op > TN_DIST_MAX)
        return tn_error(TN_ERR_ARG, "dist.allreduce: unknown op %d (sum, avg, max)", (int)op);
    MPI_Datatype mt = mpi_type(t->dtype);
    if (mt == MPI_DATATYPE_NULL)
        return tn_error(TN_ERR_DTYPE, "dist.allreduce: dtype %s not supported", tn_dtype_name(t->dtype));
    if (op == TN_DIST_AVG && !tn_is_float_dtype(t->dtype))
        return tn_error(TN_ERR_DTYPE, "dist.allreduce: op avg needs a float tensor, got %s%s (use "
                        "sum and divide)", tn_dtype_name(t->dtype), TN_SHAPE(t));
    const int64_t n = tn_tensor_numel(t);
    int nccl = 0;
    TN_TRY(use_nccl("allreduce", t, &nccl));

    tn_dist_work_t *w = calloc(1, sizeof *w);
    if (!w) return tn_error(TN_ERR_OOM, "dist.allreduce: out of memory");
    w->op = op;
    w->t = tn_tensor_retain(t);
    what_str(w->what, sizeof w->what, "allreduce", t);
    /* Blocking, also for a started allreduce: a check that completed later would make the order
     * in which the ranks start their data collectives depend on timing (MPI matches collectives
     * by order), so the ranks meet here. init{check=false} skips it. */
    tn_status s = check_same(0, t, op, -1, w->what);
    if (s != TN_OK) goto fail;
    w->t0 = now_s();
    if (nccl) {
#ifdef TERN_HAVE_NCCL
        s = tn_nccl_start(&w->nccl_ev, t, NULL, 0, op, 0, 1);
        if (s != TN_OK) goto fail;
#endif
    } else {
        tn_tensor *h = t;
        if (t->device != TN_CPU) {
            s = tn_tensor_empty(&w->host, t->ndim, t->shape, t->dtype, TN_CPU);
            if (s == TN_OK) s = tn_copy(w->host, t);
            if (s != TN_OK) goto fail;
            h = w->host;
        }
        void *buf = h->data;
        if (t->dtype == TN_F16 || t->dtype == TN_BF16) {
            w->scratch = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
            if (!w->scratch) { s = tn_error(TN_ERR_OOM, "dist.%s: out of memory", w->what); goto fail; }
            const uint16_t *x = (const uint16_t *)h->data;
            if (t->dtype == TN_F16)
                for (int64_t i = 0; i < n; i++) w->scratch[i] = tn_f16_to_f32(x[i]);
            else
                for (int64_t i = 0; i < n; i++) w->scratch[i] = tn_bf16_to_f32(x[i]);
            buf = w->scratch;
        }
        w->buf = buf;
        w->n = n;
        w->esz = (int64_t)(w->scratch ? sizeof(float) : tn_dtype_size(t->dtype));
        w->mt = mt;
        s = issue_chunks(w);
        if (s != TN_OK) {
            if (w->nreq > 0) return s; /* w leaks: MPI may still write its buffers */
            goto fail;
        }
    }
    w->active = 1;
    *out = w;
    return TN_OK;
fail:
    work_release(w);
    return s;
}

tn_status tn_dist_work_test(tn_dist_work_t *w, int32_t *done) {
    if (!w || !done) return tn_error(TN_ERR_ARG, "dist: handle:test(): NULL argument");
    *done = 0;
    if (!w->active) { *done = 1; return TN_OK; }
    if (D.broken) return check_ready("handle:test");
    double el = now_s() - w->t0;
    if (w->nccl_ev) {
#ifdef TERN_HAVE_NCCL
        int r = tn_nccl_poll(w->nccl_ev);
        if (r < 0) { mark_broken("%s failed", w->what); return tn_last_status(); }
        if (r == 0) return el > tn_dist_get_timeout() ? ((void)tn_nccl_comm_free(1), timed_out(w->what, el)) : TN_OK;
#endif
    } else {
        int flag = 0;
        int rc = MPI_Testall(w->nreq, w->reqs, &flag, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS) { w->active = 0; return mpi_fail(rc, w->what); }
        if (!flag) return el > tn_dist_get_timeout() ? timed_out(w->what, el) : TN_OK;
    }
    *done = 1;
    return work_complete(w);
}

tn_status tn_dist_work_wait(tn_dist_work_t *w) {
    if (!w) return tn_error(TN_ERR_ARG, "dist: handle:wait(): NULL handle");
    if (!w->active) return TN_OK;
    tn_status s = TN_OK;
    wait_begin(w->what);
    for (;;) {
        int32_t done = 0;
        if ((s = tn_dist_work_test(w, &done)) != TN_OK || done) break;
        double el = now_s() - w->t0;
        if ((s = wait_interrupted(w->what, el)) != TN_OK) break;
        nap(el);
    }
    wait_end();
    return s;
}

void tn_dist_work_free(tn_dist_work_t *w) {
    if (!w) return;
    if (w->active && !D.broken && D.initialized) {
        /* MPI must not see the buffers go while it may still write them */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", tn_last_error());
        (void)tn_dist_work_wait(w);
        tn_error(tn_last_status(), "%s", msg);
    }
    if (w->active && w->nreq > 0) {
        /* broken: the request can never complete; leak its buffers rather than hand MPI freed memory */
        return;
    }
    work_release(w);
}

tn_status tn_dist_allreduce(tn_tensor *t, int32_t op) {
    tn_dist_work_t *w = NULL;
    TN_TRY(tn_dist_allreduce_start(&w, t, op));
    tn_status s = tn_dist_work_wait(w);
    if (s == TN_OK) {
        tn_dist_work_free(w);
    } else if (!w->active || w->nreq == 0) {
        work_release(w);
    }
    return s;
}

/* ---- broadcast and allgather ---------------------------------------------------------------- */

/* Runs the blocking MPI collective fn on host memory (staging a CUDA tensor), bounded by the timeout. */
tn_status tn_dist_broadcast(tn_tensor *t, int32_t root) {
    TN_TRY(check_ready("broadcast"));
    TN_TRY(check_tensor_arg("broadcast", t));
    if (root < 0 || root >= D.size)
        return tn_error(TN_ERR_INDEX, "dist.broadcast: root %d is out of range (0 .. %d: ranks are "
                        "0-based)", (int)root, (int)D.size - 1);
    const size_t nbytes = (size_t)tn_tensor_numel(t) * tn_dtype_size(t->dtype);
    if (nbytes > INT_MAX)
        return tn_error(TN_ERR_SHAPE, "dist.broadcast: %s%s is over 2 GiB; split it",
                        tn_dtype_name(t->dtype), TN_SHAPE(t));
    char what[224];
    what_str(what, sizeof what, "broadcast", t);
    int nccl = 0;
    TN_TRY(use_nccl("broadcast", t, &nccl));
    TN_TRY(check_same(1, t, 0, root, what));
    double t0 = now_s();
    if (nccl) {
#ifdef TERN_HAVE_NCCL
        tn_dist_work_t w = { .t = t, .active = 1, .t0 = t0 };
        snprintf(w.what, sizeof w.what, "%s", what);
        TN_TRY(tn_nccl_start(&w.nccl_ev, t, NULL, 1, 0, root, 0));
        tn_status s = tn_dist_work_wait(&w);
        if (w.nccl_ev) tn_nccl_event_free(w.nccl_ev);
        return s;
#endif
    }
    tn_tensor *h = t;
    if (t->device != TN_CPU) {
        h = NULL;
        TN_TRY(tn_tensor_empty(&h, t->ndim, t->shape, t->dtype, TN_CPU));
        if (D.rank == root) {
            tn_status s = tn_copy(h, t);
            if (s != TN_OK) { tn_tensor_free(h); return s; }
        }
    }
    MPI_Request req;
    tn_status s;
    int rc = MPI_Ibcast(h->data, (int)nbytes, MPI_BYTE, root, D.comm, &req);
    s = rc == MPI_SUCCESS ? mpi_wait(&req, what, t0) : mpi_fail(rc, what);
    if (h != t) {
        if (s == TN_OK && D.rank != root) s = tn_copy(t, h);
        if (!D.broken) tn_tensor_free(h);
    }
    return s;
}

tn_status tn_dist_allgather(tn_tensor **out, const tn_tensor *t) {
    if (!out) return tn_error(TN_ERR_ARG, "dist.allgather: out is NULL");
    TN_TRY(check_ready("allgather"));
    TN_TRY(check_tensor_arg("allgather", t));
    int64_t shape[TN_MAX_DIMS];
    int32_t nd = t->ndim > 0 ? t->ndim : 1;
    if (t->ndim == 0) shape[0] = D.size;
    else {
        for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
        shape[0] *= D.size;
    }
    const size_t nbytes = (size_t)tn_tensor_numel(t) * tn_dtype_size(t->dtype);
    if (nbytes * (size_t)D.size > INT_MAX)
        return tn_error(TN_ERR_SHAPE, "dist.allgather: %s%s times %d ranks is over 2 GiB; split it",
                        tn_dtype_name(t->dtype), TN_SHAPE(t), (int)D.size);
    char what[224];
    what_str(what, sizeof what, "allgather", t);
    int nccl = 0;
    TN_TRY(use_nccl("allgather", t, &nccl));
    TN_TRY(check_same(2, t, 0, -1, what));
#ifdef TERN_HAVE_NCCL
    /* a new out is made on the current device (and stream): the communicator's, as t */
    if (nccl) TN_TRY(tn_cuda_set_device(t->device_index));
#endif
    TN_TRY(tn_prepare_out("dist.allgather", out, nd, shape, t->dtype, t->device));
    /* the collective writes out's bytes linearly (NCCL: on t's device) */
    if (!tn_tensor_is_contiguous(*out) || (nccl && (*out)->device_index != t->device_index))
        return tn_error(TN_ERR_ARG, "dist.allgather: out %s%s must be contiguous%s", tn_dtype_name((*out)->dtype),
                        TN_SHAPE(*out), nccl ? " and on t's device" : "");
    double t0 = now_s();
    if (nccl) {
#ifdef TERN_HAVE_NCCL
        tn_dist_work_t w = { .t = (tn_tensor *)t, .active = 1, .t0 = t0 };
        snprintf(w.what, sizeof w.what, "%s", what);
        TN_TRY(tn_nccl_start(&w.nccl_ev, (tn_tensor *)t, *out, 2, 0, 0, 0));
        tn_status s = tn_dist_work_wait(&w);
        if (w.nccl_ev) tn_nccl_event_free(w.nccl_ev);
        return s;
#endif
    }
    const tn_tensor *h = t;
    tn_tensor *hin = NULL, *hout = NULL;
    if (t->device != TN_CPU) {
        TN_TRY(tn_tensor_empty(&hin, t->ndim, t->shape, t->dtype, TN_CPU));
        tn_status s = tn_copy(hin, t);
        if (s == TN_OK) s = tn_tensor_empty(&hout, nd, shape, t->dtype, TN_CPU);
        if (s != TN_OK) { tn_tensor_free(hin); return s; }
        h = hin;
    }
    void *dst = hout ? hout->data : (*out)->data;
    MPI_Request req;
    int rc = MPI_Iallgather(h->data, (int)nbytes, MPI_BYTE, dst, (int)nbytes, MPI_BYTE, D.comm, &req);
    tn_status s = rc == MPI_SUCCESS ? mpi_wait(&req, what, t0) : mpi_fail(rc, what);
    if (hout && s == TN_OK) s = tn_copy(*out, hout);
    if (!D.broken) {
        tn_tensor_free(hin);
        tn_tensor_free(hout);
    }
    return s;
}

#endif /* TERN_HAVE_MPI */
