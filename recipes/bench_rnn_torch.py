#!/usr/bin/python3
"""PyTorch / `sru` package peer of recipes/bench_rnn.lua: nn.LSTM and sru.SRU on the CPU or one
GPU, f32.

    /usr/bin/python3 recipes/bench_rnn_torch.py --threads=1 [--repeat=7] [--layers=1,2]
        [--shapes=32x256,128x512] [--batch=32] [--ops=lstm,sru_pkg] [--modes=fwd,fwdbwd]
        [--sru-bwd-repeat=5] [--device=cpu|cuda]

--device=cuda: module and input on the current GPU; nn.LSTM runs cuDNN's fused LSTM (TF32 as
torch's default allows), sru.SRU the package's CUDA kernel (compiled by the package at import;
when that fails, a note line). Every timed call ends with torch.cuda.synchronize(); peak_bytes
is torch.cuda.max_memory_allocated() over the timed calls. Without a GPU visible to torch, one
JSON line with a "note" and exit 0.

Cases are the SRU paper's shapes (batch 32; length 32 with d 256, length 128 with d 512) for
`nn.LSTM(d, d, num_layers)` and `sru.SRU(d, d, num_layers)` (defaults otherwise: no dropout,
unidirectional, input (L, B, d), zero initial state). Modes:
  fwd     forward under torch.no_grad(), module in eval();
  fwdbwd  forward with grad enabled (module in train(), dropout 0) then output.sum().backward();
          the input does not require grad, parameter grads are reset to None between calls.
Each case: 2 warm-up calls, then the median wall time of `repeat` single calls (>= 5).
Prints one JSON line per case:
  {"op":"lstm"|"sru_pkg","impl":"torch"|"sru","mode":"fwd"|"fwdbwd","L":..,"B":..,"d":..,
   "layers":..,"threads":..,"median_ms":.., "min_ms":.., "repeats":.., "dtype":"f32",
   "device":"cpu","case":"<op>_<mode>_L<L>_d<d>_l<layers>","load1":..[, "note":..]}
(load1 = the 1-minute load average after the case: a value above the core count means the
machine was shared and the timing is not to be trusted; omp_wait_policy = the inherited
OMP_WAIT_POLICY.) On a shared machine, threads > 1 with libgomp's default (spinning) wait
policy can run 10-20x slower than 1 thread; export OMP_WAIT_POLICY=PASSIVE for both tern and
this peer there (the script inherits it and does not set it itself).

What the `sru` package runs on the CPU (sru 2.6.0): with grad disabled, SRUCell goes through
`elementwise_recurrence_inference`, i.e. the package's C++ kernel (sru/csrc/sru_cpu_impl.cpp,
JIT-compiled by torch.utils.cpp_extension at import, f32 only, single-threaded loop); with grad
enabled it runs `elementwise_recurrence_naive`, a Python loop over time steps whose backward is
autograd over every step. That training path is slow, so its repeats are capped by
--sru-bwd-repeat (default 5, the minimum) and its lines carry a "note".

torch.set_num_threads does not reach the OpenBLAS behind Debian's torch: OPENBLAS_NUM_THREADS
(and OMP_NUM_THREADS) are set from --threads before torch is imported. If torch or sru cannot
be imported, one JSON line with a "note" is printed for what is missing and the script exits 0
(or carries on with the other op).
"""
import json
import os
import statistics
import sys
import time
import warnings


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import peer  # noqa: E402  recipes/lib/peer.py

OPTS = peer.parse_args(sys.argv[1:], {
    "threads": "1", "repeat": "7", "layers": "1,2", "shapes": "32x256,128x512", "batch": "32",
    "ops": "lstm,sru_pkg", "modes": "fwd,fwdbwd", "sru-bwd-repeat": "5", "device": "cpu",
}, __doc__)
DEVICE = OPTS["device"]
THREADS = int(OPTS["threads"])
REPEAT = max(5, int(OPTS["repeat"]))
SRU_BWD_REPEAT = max(5, int(OPTS["sru-bwd-repeat"]))
B = int(OPTS["batch"])
LAYERS = [int(x) for x in OPTS["layers"].split(",") if x]
SHAPES = [tuple(int(y) for y in x.split("x")) for x in OPTS["shapes"].split(",") if x]
OPS = [x for x in OPTS["ops"].split(",") if x]
MODES = [x for x in OPTS["modes"].split(",") if x]

peer.pin_threads(THREADS)

try:
    import torch
except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
    peer.no_peer("torch", THREADS, "torch", e)

torch.set_num_threads(THREADS)
torch.manual_seed(0)
CUDA = DEVICE == "cuda"
if CUDA and not torch.cuda.is_available():
    print(json.dumps({"impl": "torch", "threads": THREADS, "case": None, "device": DEVICE,
                      "note": "no CUDA device for torch (torch.cuda.is_available() is False with %s)"
                      % sys.executable}))
    sys.exit(0)


def sync():
    if CUDA:
        torch.cuda.synchronize()

SRU_ERR = None
if "sru_pkg" in OPS:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "JIT ... CUDA kernels ... unsuccessful" on CPU hosts
            import sru
    except Exception as e:  # noqa: BLE001
        SRU_ERR = "sru not importable with %s: %s" % (sys.executable, e)

now = time.perf_counter


def timeit(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    xs = []
    for _ in range(repeat):
        t0 = now()
        fn()
        xs.append((now() - t0) * 1e3)
    return statistics.median(xs), min(xs), len(xs)


def emit(op, impl, mode, L, d, layers, med, mn, n, note=None, peak=None):
    r = {"op": op, "impl": impl, "mode": mode, "L": L, "B": B, "d": d, "layers": layers,
         "threads": torch.get_num_threads(), "median_ms": round(med, 4), "min_ms": round(mn, 4),
         "repeats": n, "dtype": "f32", "device": DEVICE,
         "case": "%s_%s_L%d_d%d_l%d" % (op, mode, L, d, layers),
         "load1": round(os.getloadavg()[0], 2),
         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    if peak is not None:
        r["peak_bytes"] = peak
    if note:
        r["note"] = note
    print(json.dumps(r, separators=(",", ":")), flush=True)


def make_module(op, d, layers):
    if op == "lstm":
        return torch.nn.LSTM(d, d, num_layers=layers)
    return sru.SRU(d, d, num_layers=layers)


def run_case(op, mode, L, d, layers):
    m = make_module(op, d, layers).to(DEVICE)
    x = torch.randn(L, B, d, device=DEVICE)
    params = list(m.parameters())
    if mode == "fwd":
        m.eval()

        def fn():
            with torch.no_grad():
                m(x)
            sync()
        repeat, note = REPEAT, None
        if op == "sru_pkg" and not CUDA:
            note = "no_grad: sru C++ CPU kernel (elementwise_recurrence_inference)"
    else:
        m.train()

        def fn():
            for p in params:
                p.grad = None
            out = m(x)[0]
            out.sum().backward()
            sync()
        repeat, note = REPEAT, None
        if op == "sru_pkg" and not CUDA:
            repeat = min(REPEAT, SRU_BWD_REPEAT)
            note = ("grad enabled: pure-Python elementwise_recurrence_naive + autograd "
                    "(repeats capped at %d)" % repeat)
    if CUDA:
        sync()
        torch.cuda.reset_peak_memory_stats()
        note = "cudnn" if op == "lstm" and torch.backends.cudnn.enabled else note
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Running SRU on CPU with grad_enabled=True"
        med, mn, n = timeit(fn, repeat)
    peak = torch.cuda.max_memory_allocated() if CUDA else None
    emit(op, "torch" if op == "lstm" else "sru", mode, L, d, layers, med, mn, n, note, peak)


def main():
    for L, d in SHAPES:
        for layers in LAYERS:
            for op in OPS:
                if op == "sru_pkg" and SRU_ERR:
                    continue
                for mode in MODES:
                    try:
                        run_case(op, mode, L, d, layers)
                    except Exception as e:  # noqa: BLE001 - e.g. the sru package's CUDA kernel fails to build
                        print(json.dumps({"op": op, "impl": "torch" if op == "lstm" else "sru", "mode": mode,
                                          "L": L, "d": d, "layers": layers, "device": DEVICE,
                                          "case": "%s_%s_L%d_d%d_l%d" % (op, mode, L, d, layers),
                                          "note": "failed: %s: %s" % (type(e).__name__, e)}), flush=True)
    if "sru_pkg" in OPS and SRU_ERR:
        print(json.dumps({"op": "sru_pkg", "impl": "sru", "threads": THREADS, "case": None,
                          "note": SRU_ERR}))


if __name__ == "__main__":
    main()
