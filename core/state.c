/*
 * state.c — library state: the thread-local error message, version and build features,
 * the CPU thread count, the dim base of error messages, dtype/device names, the public
 * f16/bf16 scalar conversions and the argument checks shared by every entry point (internal.h).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef TERN_HAVE_OPENBLAS
extern void openblas_set_num_threads(int);
#endif

/* ---- error message ------------------------------------------------------------------------ */

enum { TN_ERROR_BUF = 1024 };
static _Thread_local char tn_error_buf[TN_ERROR_BUF]; /* NUL-terminated, "" = no error */
static _Thread_local tn_status tn_error_code;            /* status of the last tn_error */

/* Formats into a local buffer first: callers may pass tn_last_error() (this very buffer) as
 * an argument to wrap the previous message ("%s: ...: %s", ..., tn_last_error()). */
tn_status tn_error(tn_status code, const char *fmt, ...) {
    char msg[TN_ERROR_BUF];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) snprintf(msg, sizeof msg, "error %d (unformattable message)", code);
    memcpy(tn_error_buf, msg, sizeof msg);
    tn_error_code = code;
    return code;
}

tn_status tn_last_status(void) { return tn_error_buf[0] ? tn_error_code : TN_OK; }

const char *tn_last_error(void) { return tn_error_buf; }

void tn_clear_error(void) { tn_error_buf[0] = '\0'; }

/* ---- version and features ------------------------------------------------------------------ */

const char *tn_version(void) { return "0.1.0"; }

int tn_has_cuda(void) { return tn_cuda_device_count() > 0; }

#ifndef TERN_HAVE_CUDA
/* ---- the CUDA entry points of a build without CUDA (cuda/device.cu defines them otherwise) -- */

static tn_status no_cuda(const char *op) {
    return tn_error(TN_ERR_DEVICE, "%s: tern was built without CUDA (no nvcc was found at build time; install "
                                   "the CUDA toolkit and rebuild, see README.md)", op);
}
int tn_cuda_device_count(void) { return 0; }
tn_status tn_cuda_set_device(int32_t index) { (void)index; return no_cuda("cuda_set_device"); }
tn_status tn_cuda_get_device(int32_t *index) { (void)index; return no_cuda("cuda_get_device"); }
tn_status tn_cuda_synchronize(void) { return no_cuda("cuda_synchronize"); }
tn_status tn_cuda_stream_new(tn_cuda_stream_t **out) {
    if (out) *out = NULL;
    return no_cuda("cuda_stream_new");
}
void tn_cuda_stream_free(tn_cuda_stream_t *s) { (void)s; }
tn_status tn_cuda_stream_synchronize(tn_cuda_stream_t *s) { (void)s; return no_cuda("cuda_stream_synchronize"); }
tn_status tn_cuda_set_stream(tn_cuda_stream_t *s) { return s ? no_cuda("cuda_set_stream") : TN_OK; }
tn_cuda_stream_t *tn_cuda_get_stream(void) { return NULL; }
tn_status tn_cuda_record_stream(const tn_tensor *t, tn_cuda_stream_t *s) {
    (void)t, (void)s;
    return no_cuda("cuda_record_stream");
}
tn_status tn_cuda_memory_stats(tn_pool_stats *out, int32_t device_index) {
    (void)device_index;
    if (out) memset(out, 0, sizeof *out);
    return no_cuda("cuda_memory_stats");
}
tn_status tn_cuda_memory_reset_peak(int32_t device_index) {
    (void)device_index;
    return no_cuda("cuda_memory_reset_peak");
}
/* a setting, not a device call: kept in every build (tern.h) */
static int tn_tf32 = 1;
tn_status tn_cuda_set_tf32(int on) {
    __atomic_store_n(&tn_tf32, on ? 1 : 0, __ATOMIC_RELAXED);
    return TN_OK;
}
int tn_cuda_get_tf32(void) { return __atomic_load_n(&tn_tf32, __ATOMIC_RELAXED); }
/* a setting too (cuda/index.cu in builds with CUDA); -1: TERN_CUDA_SYNC_CHECKS not read yet */
static int tn_sync_checks = -1;
tn_status tn_cuda_set_sync_checks(int on) {
    __atomic_store_n(&tn_sync_checks, on ? 1 : 0, __ATOMIC_RELAXED);
    return TN_OK;
}
int tn_cuda_get_sync_checks(void) {
    const int v = __atomic_load_n(&tn_sync_checks, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    const char *e = getenv("TERN_CUDA_SYNC_CHECKS");
    int expected = -1;
    (void)__atomic_compare_exchange_n(&tn_sync_checks, &expected, e && *e && strcmp(e, "0") != 0, 0,
                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return __atomic_load_n(&tn_sync_checks, __ATOMIC_RELAXED);
}
#endif

int tn_has_mpi(void) {
#ifdef TERN_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int tn_has_nccl(void) {
#ifdef TERN_HAVE_NCCL
    return 1;
#else
    return 0;
#endif
}

int tn_cpu_has_avx2_fma(void) {
#ifdef TN_AVX2_BUILD
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
#else
    return 0;
#endif
}

/* ---- threads ------------------------------------------------------------------------------- */

#ifdef _OPENMP
/* The thread count OpenMP chose before the first tn_set_num_threads (OMP_NUM_THREADS or the
 * number of processors): what n <= 0 restores. 0 = not captured yet. */
static int tn_default_threads = 0;

static int default_threads(void) {
    int d = __atomic_load_n(&tn_default_threads, __ATOMIC_ACQUIRE);
    if (d <= 0) {
        int expected = 0;
        d = omp_get_max_threads();
        if (!__atomic_compare_exchange_n(&tn_default_threads, &expected, d, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            d = expected;
    }
    return d;
}
#endif

void tn_set_num_threads(int n) {
#ifdef _OPENMP
    int d = default_threads();
    if (n <= 0) n = d;
    omp_set_num_threads(n);
#else
    if (n <= 0) n = 1;
#endif
#ifdef TERN_HAVE_OPENBLAS
    openblas_set_num_threads(n);
#endif
}

int tn_get_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ---- dim base of error messages ------------------------------------------------------------- */

static int32_t tn_dim_base = 0; /* 0 or 1; read by TN_D (internal.h) */

void tn_set_dim_base(int32_t base) { __atomic_store_n(&tn_dim_base, base ? 1 : 0, __ATOMIC_RELAXED); }

int32_t tn_get_dim_base(void) { return __atomic_load_n(&tn_dim_base, __ATOMIC_RELAXED); }

/* ---- dtypes and devices -------------------------------------------------------------------- */

size_t tn_dtype_size(int32_t dtype) {
    switch (dtype) {
    case TN_F32: return 4;
    case TN_F64: return 8;
    case TN_F16: return 2;
    case TN_BF16: return 2;
    case TN_I32: return 4;
    case TN_I64: return 8;
    case TN_U8: return 1;
    default: return 0;
    }
}

const char *tn_dtype_name(int32_t dtype) {
    switch (dtype) {
    case TN_F32: return "f32";
    case TN_F64: return "f64";
    case TN_F16: return "f16";
    case TN_BF16: return "bf16";
    case TN_I32: return "i32";
    case TN_I64: return "i64";
    case TN_U8: return "u8";
    default: return "?";
    }
}

const char *tn_device_name(int32_t device) {
    switch (device) {
    case TN_CPU: return "cpu";
    case TN_CUDA: return "cuda";
    default: return "?";
    }
}

/* ---- scalar 16-bit float conversions (kernels/half.h) --------------------------------------- */

float tn_f16_to_f32(uint16_t h) { return tn_half_to_float(h); }
uint16_t tn_f32_to_f16(float f) { return tn_float_to_half(f); }
float tn_bf16_to_f32(uint16_t h) { return tn_bf16_to_float(h); }
uint16_t tn_f32_to_bf16(float f) { return tn_float_to_bf16(f); }

/* ---- argument checks ----------------------------------------------------------------------- */

tn_status tn_check_tensor(const char *opname, const char *argname, const tn_tensor *t) {
    if (!t) return tn_error(TN_ERR_ARG, "%s: argument '%s' is NULL", opname, argname);
    return TN_OK;
}

tn_status tn_check_same_device(const char *opname, const tn_tensor *a, const tn_tensor *b) {
    if (a->device != b->device || a->device_index != b->device_index) {
        if (a->device == b->device)
            return tn_error(TN_ERR_DEVICE, "%s: tensors on different devices (%s:%d and %s:%d)",
                            opname, tn_device_name(a->device), a->device_index,
                            tn_device_name(b->device), b->device_index);
        return tn_error(TN_ERR_DEVICE, "%s: tensors on different devices (%s and %s)", opname,
                        tn_device_name(a->device), tn_device_name(b->device));
    }
    return TN_OK;
}

tn_status tn_check_cpu(const char *opname, const tn_tensor *t) {
    if (t->device != TN_CPU)
        return tn_error(TN_ERR_DEVICE, "%s: not implemented for %s tensors in this build", opname,
                        tn_device_name(t->device));
    return TN_OK;
}

tn_status tn_check_memory(const char *opname, const tn_tensor *t) {
    /* a CUDA tensor must sit in CUDA memory: a header whose device field was edited by hand (a
     * CPU view marked cuda, as spec/errors_spec.lua builds) would hand host memory to a kernel */
    if (t->device == TN_CUDA && (!t->storage || t->storage->device != TN_CUDA))
        return tn_error(TN_ERR_DEVICE, "%s: not implemented for cuda tensors over %s memory", opname,
                        t->storage ? tn_device_name(t->storage->device) : "unknown");
    return TN_OK;
}

tn_status tn_check_backend(const char *opname, const tn_tensor *t) {
    TN_TRY(tn_check_memory(opname, t));
#ifdef TERN_HAVE_CUDA
    if (t->device == TN_CUDA) return tn_cuda_check_current(opname, t); /* kernels run on the current device */
#endif
    return tn_check_cpu(opname, t);
}

tn_status tn_check_float(const char *opname, const char *argname, const tn_tensor *t) {
    if (!tn_is_float_dtype(t->dtype))
        return tn_error(TN_ERR_DTYPE,
                        "%s: argument '%s' must be a float tensor (f32, f64, f16, bf16), got %s",
                        opname, argname, tn_dtype_name(t->dtype));
    return TN_OK;
}

tn_status tn_check_index_dtype(const char *opname, const char *argname, const tn_tensor *t) {
    if (t->dtype != TN_I64 && t->dtype != TN_I32)
        return tn_error(TN_ERR_DTYPE, "%s: argument '%s' must be an index tensor (i64 or i32), got %s",
                        opname, argname, tn_dtype_name(t->dtype));
    return TN_OK;
}

/* ---- interrupts for long jobs -------------------------------------------------------------- */

static volatile sig_atomic_t tn_sig_pending = 0;
static struct sigaction tn_sig_old_int, tn_sig_old_term;
static int tn_sig_installed = 0;

static void tn_sig_handler(int sig) {
    if (tn_sig_pending && sig == SIGINT) { /* second Ctrl-C: give up on the clean exit */
        signal(SIGINT, SIG_DFL);
        raise(SIGINT);
        return;
    }
    tn_sig_pending = sig;
}

int tn_signal_catch(int on) {
    if (on && !tn_sig_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = tn_sig_handler;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGINT, &sa, &tn_sig_old_int) != 0) return -1;
        if (sigaction(SIGTERM, &sa, &tn_sig_old_term) != 0) return -1;
        tn_sig_installed = 1;
        tn_sig_pending = 0;
    } else if (!on && tn_sig_installed) {
        sigaction(SIGINT, &tn_sig_old_int, NULL);
        sigaction(SIGTERM, &tn_sig_old_term, NULL);
        tn_sig_installed = 0;
    }
    return 0;
}

int tn_signal_pending(void) { return (int)tn_sig_pending; }
