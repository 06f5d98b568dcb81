#!/usr/bin/python3
"""PyTorch peer of recipes/bench_optim.lua: one optimizer step over --numel parameters in
--tensors tensors, torch.optim with foreach=True ("impl":"torch_foreach") and the default
single-tensor loop ("impl":"torch_single").

    /usr/bin/python3 recipes/bench_optim_torch.py --threads=1 --repeat=15 --numel=10000000 \
        --tensors=100 --cases=adam,adamw,sgd

Cases as in bench_optim.lua: adam (Adam lr 1e-3), adamw (AdamW lr 1e-3, weight_decay 1e-2),
sgd (SGD lr 1e-3, momentum 0.9, nesterov). Gradients are random and fixed. One JSON line per
(case, impl) with the median ms per step; when torch cannot be imported one JSON note, exit 0.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import peer  # noqa: E402  recipes/lib/peer.py

OPTS = peer.parse_args(sys.argv[1:], {"threads": "1", "repeat": "15", "numel": "10000000", "tensors": "100",
                                      "cases": "adam,adamw,sgd"}, __doc__)
THREADS = int(OPTS["threads"])
REPEAT = max(5, int(OPTS["repeat"]))
NT = int(OPTS["tensors"])
PER = int(OPTS["numel"]) // NT
peer.pin_threads(THREADS)

try:
    import torch
except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
    peer.no_peer("torch", THREADS, "torch", e)

torch.set_num_threads(THREADS)

MAKE = {
    "adam": lambda ps, fe: torch.optim.Adam(ps, lr=1e-3, foreach=fe),
    "adamw": lambda ps, fe: torch.optim.AdamW(ps, lr=1e-3, foreach=fe),
    "sgd": lambda ps, fe: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, nesterov=True, foreach=fe),
}


def run(case, foreach):
    torch.manual_seed(0)
    ps = [(torch.randn(PER) * 0.1).requires_grad_(True) for _ in range(NT)]
    for p in ps:
        p.grad = torch.randn(PER) * 0.01
    opt = MAKE[case](ps, foreach)
    for _ in range(3):
        opt.step()
    xs, cs = [], []
    for _ in range(REPEAT):
        c0, t0 = time.process_time(), time.perf_counter()
        opt.step()
        t1, c1 = time.perf_counter(), time.process_time()
        xs.append((t1 - t0) * 1e3)
        cs.append((c1 - c0) * 1e3)
    load1 = os.getloadavg()[0]
    print(json.dumps({"op": case, "impl": "torch_foreach" if foreach else "torch_single",
                      "shape": "%dx%d" % (NT, PER), "dtype": "f32", "device": "cpu", "threads": THREADS,
                      "median_ms": round(statistics.median(xs), 4), "min_ms": round(min(xs), 4),
                      "cpu_ms": round(statistics.median(cs), 4), "peak_bytes": None, "repeats": REPEAT,
                      "load1": load1, "torch_version": torch.__version__}), flush=True)


for case in [c for c in OPTS["cases"].split(",") if c]:
    for fe in (True, False):
        run(case, fe)
