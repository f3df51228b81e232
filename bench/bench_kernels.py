"""The channels-first kernels alone, called back to back into preallocated outputs, as multiples of a copy.

Interleaved rounds, no autograd, no allocation: this is what the kernels cost when x, dy and the
outputs stay in the caches, next to a copy timed the same way (`batchnorm bench` times whole layer calls).

    python bench/bench_kernels.py                          # 32x64x56x56 float32, 2 threads
    python bench/bench_kernels.py --shape 32,2048,7,7 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from batchnorm.kernels import config, dispatch
from batchnorm.kernels.numba import batch_norm as nk


def ratios_to_copy(cases: dict, calls: int = 5, rounds: int = 9) -> dict:
    """Per case: (median ms per call, median over rounds of time / copy time of the same round). Rounds run
    every case once, interleaved, after one warm-up call each."""
    for fn in cases.values():
        fn()
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    copies = times["copy (torch, dst.copy_(x))"]
    return {name: (statistics.median(t) * 1e3, statistics.median(a / b for a, b in zip(t, copies)))
            for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="32,64,56,56", help="N,C,H,W (channels-first)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    n, c = shape[:2]
    x, dy = torch.randn(shape), torch.randn(shape)
    dst = torch.empty_like(x)
    xv, dyv = x.numpy().reshape(n, c, -1), dy.numpy().reshape(n, c, -1)
    y, dx = np.empty_like(xv), np.empty_like(xv)
    threads = dispatch.threads_for(x.numel())
    which = 1 if threads > 1 else 0  # the parallel or the serial twin, as the dispatcher would choose
    pairs = config.sample_blocks(n, c, threads)
    blocks = config.channel_blocks(n, c, xv.shape[2], xv.itemsize, threads)
    mean, var = np.empty(c), np.empty(c)
    weight, bias, absent = np.ones(c, np.float32), np.zeros(c, np.float32), np.empty(0, np.float32)
    zeros, ones = np.zeros(c), np.ones(c)
    dweight, dbias = np.empty(c, np.float32), np.empty(c, np.float32)
    nk.stats_cf[which](pairs, xv, mean, var)
    cases = {
        "copy (torch, dst.copy_(x))": lambda: dst.copy_(x),
        "stats (one read of x)": lambda: nk.stats_cf[which](pairs, xv, mean, var),
        "normalize (eval)": lambda: nk.normalize_cf[which](pairs, xv, mean, var, weight, bias, 1e-5, 0, 0.0, y),
        "train_forward (fused)": lambda: nk.train_forward_cf[which](blocks, xv, weight, bias, 1e-5, 0.1, absent,
                                                                    absent, 0, 0.0, y, mean, var),
        "grad_sums (dy, x)": lambda: nk.grad_sums_cf[which](pairs, dyv, xv, mean, ones, zeros, 0, 0.0, zeros.copy(),
                                                            zeros.copy()),
        "grad_input (dx)": lambda: nk.grad_input_cf[which](pairs, dyv, xv, mean, ones, zeros, ones, ones, ones, True,
                                                           0, 0.0, dx),
        "train_backward (fused)": lambda: nk.train_backward_cf[which](blocks, dyv, xv, mean, var, weight, bias,
                                                                      1e-5, True, 0, 0.0, dx, dweight, dbias),
    }
    print(f"{args.shape} float32, {args.threads} thread(s): median ms per call, median multiple of the copy "
          f"of the same round")
    for name, (ms, ratio) in ratios_to_copy(cases).items():
        print(f"{name:28s} {ms:8.3f} ms {ratio:6.2f}x")

if __name__ == "__main__":
    main()
