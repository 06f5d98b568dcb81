#!/usr/bin/python3
"""PyTorch peer of recipes/bench_tensor.lua: the same cases, the same JSON schema, "impl":"torch".

    /usr/bin/python3 recipes/bench_tensor_torch.py --threads=1 --repeat=7 --cases=add_16,matmul_1024
    python3 recipes/bench_tensor_torch.py --device=cuda --repeat=7 --cases=add_16,matmul_8192

--device=cuda runs the CUDA cases of bench_tensor.lua --device=cuda (progress on stderr).

Run by bench_tensor.lua (which echoes these lines next to tern's and prints the ratios); each
line carries "case" (the bench_tensor.lua case name) so the two sides can be matched. When
torch cannot be imported it prints one JSON note and exits 0. peak_bytes is null: PyTorch's
CPU allocator keeps no peak statistic.
"""
import json
import os
import statistics
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import peer  # noqa: E402  recipes/lib/peer.py

OPTS = peer.parse_args(sys.argv[1:], {"threads": "1", "repeat": "7", "cases": "all", "device": "cpu"}, None)
THREADS = int(OPTS["threads"])
REPEAT = max(5, int(OPTS["repeat"]))

# torch.set_num_threads does not reach the OpenBLAS behind Debian's torch (BLAS_INFO=generic):
# pin its pthread pool through the environment before torch loads it.
peer.pin_threads(THREADS, ("OPENBLAS_NUM_THREADS",))

try:
    import torch
except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
    peer.no_peer("torch", THREADS, "torch", e)

torch.set_num_threads(THREADS)
torch.set_grad_enabled(False)
now = time.perf_counter


LAST_CPU = [None]


def bench(fn, iters, warmup=2, sync=None):
    """Median wall ms per call over REPEAT batches; LAST_CPU[0] = median process CPU ms per call.
    sync (CUDA) runs after each warm-up batch and on both sides of each timed batch."""
    for _ in range(warmup):
        fn(iters)
        if sync:
            sync()
    xs, cs = [], []
    for _ in range(REPEAT):
        if sync:
            sync()
        c0, t0 = time.process_time(), now()
        fn(iters)
        if sync:
            sync()
        t1, c1 = now(), time.process_time()
        xs.append((t1 - t0) * 1e3 / iters)
        cs.append((c1 - c0) * 1e3 / iters)
    LAST_CPU[0] = statistics.median(cs)
    return statistics.median(xs)


def result(case, op, shape, ms, device, dtype, peak, threads, extra):
    """The fields every result line starts with, either device, in this order (the caller adds
    its FLOP rate, then print_result the note)."""
    r = {"op": op, "shape": shape, "device": device, "dtype": dtype, "impl": "torch",
         "median_ms": round(ms, 6), "peak_bytes": peak, "threads": threads,
         "case": case, "cpu_ms": round(LAST_CPU[0], 6)}
    if extra.get("per_call"):
        r["us_per_call"] = round(ms * 1e3, 4)
    if "bytes" in extra:
        r["bytes_moved"] = extra["bytes"]
        r["GBps"] = round(extra["bytes"] / (ms * 1e-3) / 1e9, 3)
    return r


def print_result(r, extra):
    if "note" in extra:
        r["note"] = extra["note"]
    print(json.dumps(r, separators=(",", ":")), flush=True)


def emit(case, op, shape, ms, **extra):
    r = result(case, op, shape, ms, "cpu", "f32", None, torch.get_num_threads(), extra)
    if "gflops" in extra:
        r["GFLOPs"] = round(extra["gflops"], 3)
    print_result(r, extra)


def case_add_16():
    a, b = torch.rand(16), torch.rand(16)

    def f(n):
        for _ in range(n):
            c = a + b
        return c
    emit("add_16", "add", "16", bench(f, 20000), per_call=True)
    o = torch.empty(16)

    def g(n):
        for _ in range(n):
            torch.add(a, b, out=o)
    emit("add_16", "add_out", "16", bench(g, 20000), per_call=True, note="torch.add(a, b, out=o)")


def case_muladdsum_16():
    a, b = torch.rand(16), torch.rand(16)

    def f(n):
        for _ in range(n):
            s = (a * b + a).sum()
        return s
    emit("muladdsum_16", "muladdsum", "16", bench(f, 10000), per_call=True,
         note="(a*b+a).sum(), 3 ops per call")


M16 = 16 * 1024 * 1024
_big = {}


def big_inputs():
    if not _big:
        torch.manual_seed(0)
        _big["a"], _big["b"] = torch.rand(M16), torch.rand(M16)
        _big["o"] = torch.zeros(M16)
    return _big["a"], _big["b"], _big["o"]


def elementwise(case, name, fn, fn_out, streams):
    a, b, o = big_inputs()
    nbytes = streams * 4 * M16

    def f(_):
        c = fn(a, b)
        del c
    emit(case, name, "16M", bench(f, 1), bytes=nbytes, note="out-of-place")

    def g(_):
        fn_out(a, b, o)
    emit(case, name + "_out", "16M", bench(g, 1), bytes=nbytes, note="out= preallocated")


def case_add_16M():
    elementwise("add_16M", "add", lambda a, b: a + b, lambda a, b, o: torch.add(a, b, out=o), 3)


def case_mul_16M():
    elementwise("mul_16M", "mul", lambda a, b: a * b, lambda a, b, o: torch.mul(a, b, out=o), 3)


def case_exp_16M():
    elementwise("exp_16M", "exp", lambda a, b: a.exp(), lambda a, b, o: torch.exp(a, out=o), 2)


def case_copyT_4096():
    torch.manual_seed(1)
    x = torch.rand(4096, 4096)
    xt = x.t()
    o = torch.zeros(4096, 4096)
    nbytes = 2 * 4 * 4096 * 4096

    def f(_):
        c = xt.contiguous()
        del c
    emit("copyT_4096", "contiguous_T", "4096x4096", bench(f, 1), bytes=nbytes,
         note="x.t().contiguous()")

    def g(_):
        o.copy_(xt)
    emit("copyT_4096", "copy_T", "4096x4096", bench(g, 1), bytes=nbytes, note="o.copy_(x.t())")


def matmul(case, n):
    torch.manual_seed(2)
    a, b = torch.randn(n, n), torch.randn(n, n)
    iters = 1 if n >= 1024 else 20
    flops = 2 * n ** 3

    def f(k):
        for _ in range(k):
            c = a @ b
        return c
    ms = bench(f, iters)
    emit(case, "matmul", "%dx%dx%d" % (n, n, n), ms, gflops=flops / (ms * 1e-3) / 1e9)


def case_matmul_1024():
    matmul("matmul_1024", 1024)


def case_matmul_256():
    matmul("matmul_256", 256)


def case_sum_4096():
    torch.manual_seed(3)
    x = torch.rand(4096, 4096)
    for dim in (1, 2):
        def f(k):
            for _ in range(k):
                s = x.sum(dim - 1)
            return s
        emit("sum_4096", "sum_dim%d" % dim, "4096x4096", bench(f, 3), bytes=4 * 4096 * 4096,
             note="x.sum(%d)" % (dim - 1))


def case_softmax_4096():
    torch.manual_seed(4)
    x = torch.randn(4096, 4096)

    def f(_):
        s = x.softmax(1)
        del s
    emit("softmax_4096", "softmax_rows", "4096x4096", bench(f, 1), bytes=2 * 4 * 4096 * 4096,
         note="x.softmax(1)")


ALL = ["add_16", "muladdsum_16", "add_16M", "mul_16M", "exp_16M", "copyT_4096", "matmul_1024",
       "matmul_256", "sum_4096", "softmax_4096"]

# ---- --device=cuda: the cases of bench_tensor.lua --device=cuda ----------------------------------
# Each timed batch sits between two torch.cuda.synchronize() calls (host clock), after warm-up;
# median_ms is per call; peak_bytes is torch.cuda.max_memory_allocated() over the case.

def cuda_log(msg):
    print("bench_tensor_torch: [%.1f s] %s" % (now() - T0, msg), file=sys.stderr, flush=True)


def cbench(fn, iters, warmup=2):
    """Median wall ms per call over REPEAT batches of iters calls, synchronised around each."""
    return bench(fn, iters, warmup, torch.cuda.synchronize)


def cpeak_reset():
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()


def cemit(case, op, shape, ms, dtype="f32", **extra):
    r = result(case, op, shape, ms, "cuda", dtype, torch.cuda.max_memory_allocated(), None, extra)
    if "flops" in extra:
        r["TFLOPs"] = round(extra["flops"] / (ms * 1e-3) / 1e12, 3)
    print_result(r, extra)


NSMALL = 5000


def cuda_add_16():
    a, b = torch.rand(16, device="cuda"), torch.rand(16, device="cuda")

    def f(n):
        for _ in range(n):
            c = a + b
        return c
    cpeak_reset()
    cemit("add_16", "add", "16", cbench(f, NSMALL), per_call=True,
          note="a + b on CUDA tensors, %d calls then one torch.cuda.synchronize()" % NSMALL)
    o = torch.zeros(16, device="cuda")

    def g(n):
        for _ in range(n):
            torch.add(a, b, out=o)
    cpeak_reset()
    cemit("add_16", "add_out", "16", cbench(g, NSMALL), per_call=True, note="torch.add(a, b, out=o)")


def cuda_muladdsum_16():
    a, b = torch.rand(16, device="cuda"), torch.rand(16, device="cuda")

    def f(n):
        for _ in range(n):
            s = (a * b + a).sum()
        return s
    cpeak_reset()
    cemit("muladdsum_16", "muladdsum", "16", cbench(f, NSMALL // 2), per_call=True,
          note="(a*b+a).sum() on CUDA, 3 ops per call")


M256 = 256 * 1024 * 1024
EW_ITERS = 10
ESZ = {"f32": 4, "f16": 2}
TDT = {}
_cbig = {}
_copied = set()


def cbig_inputs(dt):
    if dt not in _cbig:
        torch.manual_seed(0)
        a = torch.rand(M256, device="cuda", dtype=TDT[dt])
        b = torch.rand(M256, device="cuda", dtype=TDT[dt])
        _cbig[dt] = (a, b, torch.zeros(M256, device="cuda", dtype=TDT[dt]))
    return _cbig[dt]


def ccopy_baseline(case, dt):
    if dt in _copied:
        return
    _copied.add(dt)
    a, _, o = cbig_inputs(dt)
    nbytes = ESZ[dt] * M256

    def f(k):
        for _ in range(k):
            o.copy_(a)
    cpeak_reset()
    cemit(case, "copy_" + dt, "256M", cbench(f, EW_ITERS), dtype=dt, bytes=2 * nbytes,
          note="o.copy_(a) device to device")


def cuda_elementwise(case, name, dt, fn, fn_out, streams):
    ccopy_baseline(case, dt)
    a, b, o = cbig_inputs(dt)
    nbytes = streams * ESZ[dt] * M256

    def f(k):
        for _ in range(k):
            c = fn(a, b)
        del c
    cpeak_reset()
    cemit(case, name, "256M", cbench(f, EW_ITERS), dtype=dt, bytes=nbytes, note="out-of-place")

    def g(k):
        for _ in range(k):
            fn_out(a, b, o)
    cpeak_reset()
    cemit(case, name + "_out", "256M", cbench(g, EW_ITERS), dtype=dt, bytes=nbytes, note="out= preallocated")


def cuda_add_256M():
    cuda_elementwise("add_256M", "add", "f32", lambda a, b: a + b, lambda a, b, o: torch.add(a, b, out=o), 3)


def cuda_mul_256M():
    cuda_elementwise("mul_256M", "mul", "f32", lambda a, b: a * b, lambda a, b, o: torch.mul(a, b, out=o), 3)


def cuda_exp_256M():
    cuda_elementwise("exp_256M", "exp", "f32", lambda a, b: a.exp(), lambda a, b, o: torch.exp(a, out=o), 2)


def cuda_add_f16_256M():
    cuda_elementwise("add_f16_256M", "add_f16", "f16", lambda a, b: a + b,
                     lambda a, b, o: torch.add(a, b, out=o), 3)


def cuda_copyT_8192():
    ccopy_baseline("copyT_8192", "f32")
    torch.manual_seed(1)
    x = torch.rand(8192, 8192, device="cuda")
    xt = x.t()
    o = torch.zeros(8192, 8192, device="cuda")
    nbytes = 2 * 4 * 8192 * 8192

    def f(k):
        for _ in range(k):
            c = xt.contiguous()
        del c
    cpeak_reset()
    cemit("copyT_8192", "contiguous_T", "8192x8192", cbench(f, EW_ITERS), bytes=nbytes, note="x.t().contiguous()")

    def g(k):
        for _ in range(k):
            o.copy_(xt)
    cpeak_reset()
    cemit("copyT_8192", "copy_T", "8192x8192", cbench(g, EW_ITERS), bytes=nbytes, note="o.copy_(x.t())")


def cuda_matmul_8192():
    n = 8192
    flops = 2 * n ** 3
    shape = "%dx%dx%d" % (n, n, n)
    was = torch.backends.cuda.matmul.allow_tf32
    try:
        ins = {}
        for name, dt, tf32, iters in (("tf32", "f32", True, 10), ("f32", "f32", False, 3),
                                      ("f16", "f16", None, 20), ("bf16", "bf16", None, 20)):
            cuda_log("matmul_8192 " + name)
            if dt not in ins:
                ins = {}
                torch.cuda.empty_cache()
                torch.manual_seed(2)
                a = torch.randn(n, n, device="cuda", dtype=TDT[dt])
                b = torch.randn(n, n, device="cuda", dtype=TDT[dt])
                ins[dt] = (a, b, torch.zeros(n, n, device="cuda", dtype=TDT[dt]))
            a, b, o = ins[dt]
            if tf32 is not None:
                torch.backends.cuda.matmul.allow_tf32 = tf32
            mode = "" if tf32 is None else (", allow_tf32=%s" % tf32)

            def f(k):
                for _ in range(k):
                    c = a @ b
                return c
            cpeak_reset()
            cemit("matmul_8192", "matmul_" + name, shape, cbench(f, iters), dtype=dt, flops=flops,
                  note="a @ b" + mode)

            def g(k):
                for _ in range(k):
                    torch.matmul(a, b, out=o)
            cpeak_reset()
            cemit("matmul_8192", "matmul_" + name + "_out", shape, cbench(g, iters), dtype=dt, flops=flops,
                  note="torch.matmul(a, b, out=o)" + mode)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was


def cuda_sum_8192():
    torch.manual_seed(3)
    x = torch.rand(8192, 8192, device="cuda")
    for dim in (1, 2):
        def f(k):
            for _ in range(k):
                s = x.sum(dim - 1)
            return s
        cpeak_reset()
        cemit("sum_8192", "sum_dim%d" % dim, "8192x8192", cbench(f, 50), bytes=4 * 8192 * 8192,
              note="x.sum(%d)" % (dim - 1))


def cuda_softmax_8192():
    torch.manual_seed(4)
    x = torch.randn(8192, 8192, device="cuda")

    def f(k):
        for _ in range(k):
            s = x.softmax(1)
        return s
    cpeak_reset()
    cemit("softmax_8192", "softmax_rows", "8192x8192", cbench(f, 20), bytes=2 * 4 * 8192 * 8192,
          note="x.softmax(1)")


CUDA_ALL = ["add_16", "muladdsum_16", "add_256M", "mul_256M", "exp_256M", "add_f16_256M", "copyT_8192",
            "matmul_8192", "sum_8192", "softmax_8192"]


def main_cuda():
    if not torch.cuda.is_available():
        print(json.dumps({"impl": "torch", "device": "cuda", "case": None,
                          "note": "torch %s with %s: torch.cuda.is_available() is false"
                          % (torch.__version__, sys.executable)}), flush=True)
        sys.exit(0)
    TDT.update({"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16})
    print(json.dumps({"impl": "torch", "device": "cuda", "case": None,
                      "note": "torch %s, CUDA %s, %s, %s" % (torch.__version__, torch.version.cuda,
                                                            torch.cuda.get_device_name(0), sys.executable)}),
          flush=True)
    wanted = CUDA_ALL if OPTS["cases"] == "all" else [c for c in OPTS["cases"].split(",") if c]
    ews = [w for w in wanted if w.endswith("_256M") or w == "copyT_8192"]
    last_ew = ews[-1] if ews else None
    for c in wanted:
        fn = globals().get("cuda_" + c)
        cuda_log(c)
        if not run_case(c, fn):
            continue
        if c == last_ew:  # the big inputs are shared by the elementwise cases
            _cbig.clear()
            torch.cuda.empty_cache()


def run_case(c, fn):
    """Runs case c (fn None: not a case here); an unknown name or an exception becomes a JSON
    line and the next case goes on. False for an unknown name."""
    if fn is None:
        print(json.dumps({"impl": "torch", "case": c, "note": "unknown case"}, separators=(",", ":")), flush=True)
        return False
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report and go on with the next case
        print(json.dumps({"impl": "torch", "case": c, "error": repr(e)}, separators=(",", ":")), flush=True)
    return True


T0 = now()

if __name__ == "__main__" and OPTS["device"] == "cuda":
    main_cuda()
    sys.exit(0)

if __name__ == "__main__":
    wanted = ALL if OPTS["cases"] == "all" else [c for c in OPTS["cases"].split(",") if c]
    for c in wanted:
        run_case(c, globals().get("case_" + c))
