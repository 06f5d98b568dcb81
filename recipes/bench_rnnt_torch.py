#!/usr/bin/python3
"""PyTorch peer of recipes/bench_rnnt.lua (issue 4): the transducer-loss benchmark of fast_rnnt
(encoder and decoder outputs of dim 512, vocabulary 500, blank 0, joiner = add, tanh,
Linear(512, 500)) scaled to a small CPU, f32.

    /usr/bin/python3 recipes/bench_rnnt_torch.py --threads=1 [--repeat=3] [--warmup=1]
        [--cases=8x200x60,2x450x110,4x100x30] [--ops=full,pruned] [--s-range=5] [--device=cpu|cuda]

Cases are BxTxS (all sequences full length: T frames, S symbols; symbols uniform in 1..V-1).
One step of each op, timed as a whole (parameter/input grads reset to None before each call):
  full    impl "torchaudio": logits = joiner(enc[:, :, None] + dec[:, None]) of shape
          (B, T, S+1, V); torchaudio.functional.rnnt_loss(logits, targets i32, logit_lengths,
          target_lengths, blank=0, reduction="sum") (fused log-softmax, its CPU kernel);
          backward to enc, dec and the joiner's parameters.
  pruned  impl "torch_ref": spec/fixtures/rnnt_reference.py, a *pure-Python/PyTorch reference
          port* of fast_rnnt's rnnt_loss.py (NOT fast_rnnt's C++/CUDA kernels, which are not
          installed here; its recursion is a Python loop over anti-diagonals): am =
          Linear(512, V)(enc), lm = Linear(512, V)(dec) (icefall's simple_am_proj /
          simple_lm_proj), rnnt_loss_simple(lm, am, ..., reduction="sum", return_grad=True),
          get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range), do_rnnt_pruning(enc,
          dec, ranges), logits = joiner(enc_pruned + dec_pruned) of shape (B, T, s_range, V),
          rnnt_loss_pruned(..., reduction="sum"), (simple + pruned).backward().
--device=cuda (recipes/bench_rnnt.lua --device=cuda): the same steps on the GPU (torchaudio's CUDA
rnnt_loss for full); each call ends with torch.cuda.synchronize(); peak_bytes = max over calls of
(torch.cuda.max_memory_allocated() after the call, reset before it, - memory_allocated() before
it) (peak_method "cuda_max_allocated"). Without a GPU one JSON line with a "note" says so.
Each case: `warmup` untimed calls, then the median wall time of `repeat` calls.
Peak memory: before each timed call the process's peak-RSS mark is reset
(`echo 5 > /proc/self/clear_refs`) and peak_bytes = max over calls of (VmHWM after the call -
VmRSS before it), i.e. the extra resident memory the step needed (peak_method "vmhwm").
glibc is told (mallopt) to return freed memory to the kernel, and malloc_trim(0) runs
before each call, so the RSS before a call is the live data (inputs, parameters) only.
Where clear_refs is not writable it falls back to the growth of getrusage's ru_maxrss over the
case (peak_method "maxrss_delta", 0 if an earlier case already reached a higher peak: run one
case per process then). tracemalloc does not see torch's allocations, so it is not used.
Prints one JSON line per case:
  {"op":"full"|"pruned","impl":"torchaudio"|"torch_ref","B":..,"T":..,"S":..,"V":500,
   "threads":..,"median_ms":..,"peak_bytes":..,"min_ms":..,"repeats":..,"peak_method":..,
   "dtype":"f32","device":"cpu","load1":..[,"s_range":..,"note":..]}

torch.set_num_threads does not reach the OpenBLAS behind Debian's torch: OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS and MKL_NUM_THREADS are set from --threads before torch is imported. If torch
or torchaudio cannot be imported, one JSON line with a "note" says so and the script exits 0.
"""
import gc
import json
import os
import resource
import statistics
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import peer  # noqa: E402  recipes/lib/peer.py

OPTS = peer.parse_args(sys.argv[1:], {
    "threads": "1", "repeat": "3", "warmup": "1", "cases": "8x200x60,2x450x110,4x100x30",
    "ops": "full,pruned", "s-range": "5", "device": "cpu",
}, __doc__)
DEVICE = OPTS["device"]
CUDA = DEVICE == "cuda"
THREADS = int(OPTS["threads"])
REPEAT = max(1, int(OPTS["repeat"]))
WARMUP = max(0, int(OPTS["warmup"]))
CASES = [tuple(int(y) for y in x.split("x")) for x in OPTS["cases"].split(",") if x]
OPS = [x for x in OPTS["ops"].split(",") if x]
S_RANGE = int(OPTS["s-range"])
D, V, BLANK = 512, 500, 0

peer.pin_threads(THREADS)


def _glibc_return_freed_memory():
    """Make glibc hand freed blocks back to the kernel (fixed mmap threshold 64 KiB, trim
    threshold 1 MiB), so that RSS follows live allocations and the VmHWM measurement below is
    not hidden by memory a previous step freed but malloc kept. Returns libc (or None)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024)
        return libc
    except Exception:  # noqa: BLE001 - not glibc: measure as is
        return None


LIBC = _glibc_return_freed_memory()

try:
    import torch
    from torchaudio.functional import rnnt_loss as ta_rnnt_loss
except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
    peer.no_peer("torchaudio", THREADS, "torch/torchaudio", e)
if CUDA and not torch.cuda.is_available():
    peer.no_peer("torchaudio", THREADS, "torch with CUDA", RuntimeError("torch.cuda.is_available() is False"))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "spec",
                                "fixtures"))
import rnnt_reference as R  # noqa: E402

torch.set_num_threads(THREADS)
torch.manual_seed(0)
now = time.perf_counter


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _can_reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except OSError:
        return False


HWM = _can_reset_hwm()


def measure_cuda(fn):
    for _ in range(WARMUP):
        fn()
        torch.cuda.synchronize()
    xs, peak = [], 0
    for _ in range(REPEAT):
        gc.collect()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = now()
        fn()
        torch.cuda.synchronize()
        xs.append((now() - t0) * 1e3)
        peak = max(peak, torch.cuda.max_memory_allocated() - base)
    return statistics.median(xs), min(xs), len(xs), peak


def measure(fn):
    if CUDA:
        return measure_cuda(fn)
    for _ in range(WARMUP):
        fn()
    xs, peak = [], 0
    ru0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for _ in range(REPEAT):
        gc.collect()
        if LIBC is not None:
            LIBC.malloc_trim(0)
        if HWM:
            base = _status_kb("VmRSS")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        t0 = now()
        fn()
        xs.append((now() - t0) * 1e3)
        if HWM:
            peak = max(peak, _status_kb("VmHWM") - base)
    if not HWM:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - ru0)
    return statistics.median(xs), min(xs), len(xs), peak


def emit(op, impl, Bc, Tc, Sc, med, mn, n, peak, extra=None):
    r = {"op": op, "impl": impl, "B": Bc, "T": Tc, "S": Sc, "V": V,
         "threads": torch.get_num_threads(), "median_ms": round(med, 3),
         "peak_bytes": int(peak), "min_ms": round(mn, 3), "repeats": n,
         "peak_method": "cuda_max_allocated" if CUDA else "vmhwm" if HWM else "maxrss_delta",
         "dtype": "f32", "device": DEVICE,
         "load1": round(os.getloadavg()[0], 2)}
    if extra:
        r.update(extra)
    print(json.dumps(r, separators=(",", ":")), flush=True)


def run_case(op, Bc, Tc, Sc):
    g = torch.Generator().manual_seed(1000 * Bc + Tc + Sc)
    enc = torch.randn(Bc, Tc, D, generator=g).to(DEVICE).requires_grad_(True)
    dec = torch.randn(Bc, Sc + 1, D, generator=g).to(DEVICE).requires_grad_(True)
    symbols = torch.randint(1, V, (Bc, Sc), generator=g).to(DEVICE)
    joiner = torch.nn.Linear(D, V).to(DEVICE)
    params = [enc, dec] + list(joiner.parameters())
    if op == "full":
        targets = symbols.int()
        t_len = torch.full((Bc,), Tc, dtype=torch.int32, device=DEVICE)
        s_len = torch.full((Bc,), Sc, dtype=torch.int32, device=DEVICE)

        def fn():
            for p in params:
                p.grad = None
            logits = joiner(torch.tanh(enc[:, :, None, :] + dec[:, None, :, :]))
            loss = ta_rnnt_loss(logits, targets, t_len, s_len, blank=BLANK, reduction="sum")
            loss.backward()
        med, mn, n, peak = measure(fn)
        emit(op, "torchaudio", Bc, Tc, Sc, med, mn, n, peak)
        return
    am_proj = torch.nn.Linear(D, V).to(DEVICE)
    lm_proj = torch.nn.Linear(D, V).to(DEVICE)
    params += list(am_proj.parameters()) + list(lm_proj.parameters())
    boundary = torch.tensor([[0, 0, Sc, Tc]] * Bc, dtype=torch.int64, device=DEVICE)

    def fn():
        for p in params:
            p.grad = None
        am = am_proj(enc)
        lm = lm_proj(dec)
        simple, (px_grad, py_grad) = R.rnnt_loss_simple(
            lm, am, symbols, BLANK, boundary=boundary, reduction="sum", return_grad=True)
        ranges = R.get_rnnt_prune_ranges(px_grad, py_grad, boundary, S_RANGE)
        enc_p, dec_p = R.do_rnnt_pruning(enc, dec, ranges)
        logits = joiner(torch.tanh(enc_p + dec_p))
        pruned = R.rnnt_loss_pruned(logits, symbols, ranges, BLANK, boundary=boundary,
                                    reduction="sum")
        (simple + pruned).backward()
    med, mn, n, peak = measure(fn)
    emit(op, "torch_ref", Bc, Tc, Sc, med, mn, n, peak,
         {"s_range": S_RANGE,
          "note": "Python reference port (spec/fixtures/rnnt_reference.py), not fast_rnnt's "
                  "C++; includes the simple am/lm projections Linear(512,500)"})


def main():
    for Bc, Tc, Sc in CASES:
        for op in OPS:
            run_case(op, Bc, Tc, Sc)


if __name__ == "__main__":
    main()
