"""Shared plumbing of the PyTorch peers of recipes/bench_*.lua (bench_*_torch.py): --key=value
options, pinning the BLAS/OpenMP thread pools before torch loads them, and the one JSON note a
peer prints (exiting 0) when what it compares against cannot be imported."""
import json
import os
import sys

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args(argv, defaults, doc=None):
    """defaults updated by every --key=value of argv; -h/--help prints doc and exits (when given)."""
    opts = dict(defaults)
    for a in argv:
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
        elif doc is not None and a in ("-h", "--help"):
            print(doc)
            sys.exit(0)
    return opts


def pin_threads(threads, names=THREAD_VARS):
    """Set the thread-count variables; must run before torch is imported."""
    for name in names:
        os.environ[name] = str(threads)


def no_peer(impl, threads, what, err):
    """Print the JSON note for a missing peer and exit 0 (the bench then skips the ratios)."""
    print(json.dumps({"impl": impl, "threads": threads, "case": None,
                      "note": "%s not importable with %s: %s" % (what, sys.executable, err)}))
    sys.exit(0)
