#!/usr/bin/python3
"""torchaudio peer of recipes/bench_audio.lua: the same cases and JSON schema, "impl":"torch".

    /usr/bin/python3 recipes/bench_audio_torch.py --threads=1 --repeat=7 --seconds=60 --cases=fbank

Cases (seeded random signal, as the Lua side): fbank (kaldi.fbank of one 16 kHz waveform,
num_mel_bins=80), fbank_batch (kaldi.fbank over a list of 1 s waveforms in a Python loop),
resample (44.1 kHz -> 16 kHz, torchaudio.functional.resample defaults), speed (resample 11 -> 10).
When torch / torchaudio cannot be imported it prints one JSON note and exits 0.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import peer  # noqa: E402  recipes/lib/peer.py

OPTS = peer.parse_args(sys.argv[1:], {"threads": "1", "repeat": "7", "cases": "all", "seconds": "60"},
                       __doc__)
THREADS = int(OPTS["threads"])
REPEAT = max(5, int(OPTS["repeat"]))
SECONDS = float(OPTS["seconds"])
peer.pin_threads(THREADS)

try:
    import torch
    import torchaudio.compliance.kaldi as kaldi
    import torchaudio.functional as AF
except Exception as e:  # noqa: BLE001 - any import failure means "no peer"
    peer.no_peer("torch", THREADS, "torchaudio", e)

torch.set_num_threads(THREADS)
torch.set_grad_enabled(False)


def bench(fn):
    for _ in range(2):
        fn()
    xs, cs = [], []
    for _ in range(REPEAT):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        xs.append((t1 - t0) * 1e3)
        cs.append((c1 - c0) * 1e3)
    return statistics.median(xs), min(xs), statistics.median(cs)


def signal(rate):
    torch.manual_seed(0)
    return torch.randn(int(rate * SECONDS)) * 0.1


def case(op):
    if op == "fbank":
        x = signal(16000)[None]
        return lambda: kaldi.fbank(x, num_mel_bins=80)
    if op == "fbank_batch":
        torch.manual_seed(0)
        xs = [torch.randn(1, 16000) * 0.1 for _ in range(int(SECONDS))]
        return lambda: [kaldi.fbank(x, num_mel_bins=80) for x in xs]
    if op == "resample":
        x = signal(44100)
        return lambda: AF.resample(x, 44100, 16000)
    if op == "speed":
        x = signal(16000)
        return lambda: AF.resample(x, 11, 10)
    raise SystemExit("bench_audio_torch: unknown case " + op)


def load1():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


ops = ["fbank", "fbank_batch", "resample", "speed"] if OPTS["cases"] == "all" else OPTS["cases"].split(",")
for op in ops:
    med, mn, cpu = bench(case(op))
    print(json.dumps({"op": op, "impl": "torch", "audio_s": SECONDS, "threads": torch.get_num_threads(),
                      "median_ms": round(med, 4), "min_ms": round(mn, 4), "cpu_ms": round(cpu, 4),
                      "rtf": med / 1000 / SECONDS, "x_realtime": SECONDS / (med / 1000), "repeats": REPEAT,
                      "peak_bytes": None, "device": "cpu", "dtype": "f32", "load1": load1()},
                     separators=(",", ":")), flush=True)
