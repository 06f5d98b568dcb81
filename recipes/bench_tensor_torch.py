#!/usr/bin/python3
"""PyTorch peer of recipes/bench_tensor.lua: the same cases, the same JSON schema, "impl":"torch".

    /usr/bin/python3 recipes/bench_tensor_torch.py --threads=1 --repeat=7 --cases=add_16,matmul_1024

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

OPTS = peer.parse_args(sys.argv[1:], {"threads": "1", "repeat": "7", "cases": "all"}, None)
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


def bench(fn, iters, warmup=2):
    """Median wall ms per call over REPEAT batches; LAST_CPU[0] = median process CPU ms per call."""
    for _ in range(warmup):
        fn(iters)
    xs, cs = [], []
    for _ in range(REPEAT):
        c0, t0 = time.process_time(), now()
        fn(iters)
        t1, c1 = now(), time.process_time()
        xs.append((t1 - t0) * 1e3 / iters)
        cs.append((c1 - c0) * 1e3 / iters)
    LAST_CPU[0] = statistics.median(cs)
    return statistics.median(xs)


def emit(case, op, shape, ms, **extra):
    r = {"op": op, "shape": shape, "device": "cpu", "dtype": "f32", "impl": "torch",
         "median_ms": round(ms, 6), "peak_bytes": None, "threads": torch.get_num_threads(),
         "case": case, "cpu_ms": round(LAST_CPU[0], 6)}
    if extra.get("per_call"):
        r["us_per_call"] = round(ms * 1e3, 4)
    if "bytes" in extra:
        r["bytes_moved"] = extra["bytes"]
        r["GBps"] = round(extra["bytes"] / (ms * 1e-3) / 1e9, 3)
    if "gflops" in extra:
        r["GFLOPs"] = round(extra["gflops"], 3)
    if "note" in extra:
        r["note"] = extra["note"]
    print(json.dumps(r, separators=(",", ":")), flush=True)


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

if __name__ == "__main__":
    wanted = ALL if OPTS["cases"] == "all" else [c for c in OPTS["cases"].split(",") if c]
    for c in wanted:
        fn = globals().get("case_" + c)
        if fn is None:
            print(json.dumps({"impl": "torch", "case": c, "note": "unknown case"}, separators=(",", ":")), flush=True)
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - report and go on with the next case
            print(json.dumps({"impl": "torch", "case": c, "error": repr(e)}, separators=(",", ":")), flush=True)
