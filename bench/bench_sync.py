"""Benchmark: a SyncBatchNorm training step on 2 CPU ranks (gloo) vs local BatchNorm on the same per-rank batch.

    python bench/bench_sync.py                                  # launches 2 ranks on 127.0.0.1 itself
    python bench/bench_sync.py --shapes 16,64,56,56 30,100 --repeats 30 --json sync.json
    torchrun --nproc_per_node=2 bench/bench_sync.py             # or under torchrun

Every rank holds the per-rank batch of the given shape and, round by round (interleaved, so that a noisy shared
machine slows all of them alike), times a training step = forward + backward(dy) of:

    copy     `dst.copy_(x)` of the per-rank tensor (the memory floor);
    local    this package's BatchNorm (`batchnorm.nn.BatchNorm*`) on the per-rank batch, no communication;
    sync     `batchnorm.nn.SyncBatchNorm` on the same batch: statistics of the 2-rank global batch (one all_gather
             in the forward, one all_reduce in the backward);
    torch    torch's BatchNorm on the per-rank batch (torch's own SyncBatchNorm refuses CPU tensors);
    comm     the two collectives alone (merge_moments of C channels + all_reduce_sum of a (2, C) tensor).

Before each measurement the ranks meet at a barrier; a measurement runs the call k times in a row (k chosen on
rank 0 so that k local steps take >= 20 ms, at most 100) and divides; a round's time is the maximum over the ranks
(a step is as slow as its slowest rank). Reported: medians after warm-up, in ms and as multiples of the copy,
and sync/local.
Each rank uses `--threads` torch/Numba threads (default 1: 2 ranks on 2 cores); NUMBA_NUM_THREADS is set to it
unless already set (a larger Numba pool than the rank's cores slows everything down, see `worker`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist

DEFAULT_SHAPES = ("16,64,56,56", "16,256,28,28", "16,2048,7,7", "2048,1024", "30,100")
MODES = ("copy", "local", "sync", "torch", "comm")
MIN_MEASURE_SECONDS = 0.02   # calls per measurement: enough local steps to fill this (at most 100)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ValueError(f"--shapes expected comma-separated integers like 16,64,56,56, got {text!r}") from None
    if not 2 <= len(dims) <= 5 or min(dims) < 1:
        raise ValueError(f"--shapes expected 2 to 5 positive dimensions (N, C, *spatial), got {text!r}")
    return dims


def _layers(channels: int, dims: int):
    import batchnorm.nn as bnn

    ours = {2: bnn.BatchNorm1d, 3: bnn.BatchNorm1d, 4: bnn.BatchNorm2d, 5: bnn.BatchNorm3d}[dims](channels)
    theirs = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
              5: torch.nn.BatchNorm3d}[dims](channels)
    return ours, bnn.SyncBatchNorm(channels), theirs


def measure(shape: tuple[int, ...], repeats: int, warmup: int) -> dict:
    """Per mode, the median over rounds of the slowest rank's time (seconds). Collective: every rank calls it."""
    from batchnorm import distributed

    rank = dist.get_rank()
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(shape, generator=generator).requires_grad_(True)
    dy = torch.randn(shape, generator=generator)
    dst = torch.empty_like(x)
    local, sync, theirs = _layers(shape[1], len(shape))
    channels = shape[1]
    moments = (torch.tensor(float(x.numel() // channels), dtype=torch.float64),
               torch.randn(channels, dtype=torch.float64), torch.rand(channels, dtype=torch.float64))
    sums = torch.randn(2, channels, dtype=torch.float64)

    def step(layer):
        def run():
            layer(x).backward(dy)
        return run

    def comm():
        distributed.merge_moments(*moments)
        distributed.all_reduce_sum(sums)

    calls = {"copy": lambda: dst.copy_(x.detach()), "local": step(local), "sync": step(sync),
             "torch": step(theirs), "comm": comm}
    for mode in MODES:                       # compile / warm every path once
        calls[mode]()
    start = time.perf_counter()
    calls["local"]()
    inner = torch.tensor([max(1, min(100, int(MIN_MEASURE_SECONDS / max(time.perf_counter() - start, 1e-7))))])
    dist.broadcast(inner, src=0)             # the same number of calls on every rank (the collectives must pair)
    inner = int(inner.item())
    times = {mode: [] for mode in MODES}
    for round_index in range(warmup + repeats):
        for mode in MODES:
            dist.barrier()
            start = time.perf_counter()
            for _ in range(inner):
                calls[mode]()
            elapsed = (time.perf_counter() - start) / inner
            if round_index >= warmup:
                times[mode].append(elapsed)
            x.grad = None
    slowest = {}
    for mode in MODES:
        mine = torch.tensor(times[mode], dtype=torch.float64)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        slowest[mode] = statistics.median(mine.tolist())
    return slowest


def format_table(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| per-rank shape | copy ms | local BN ms (x copy) | SyncBN ms (x copy) | torch BN ms | comm ms | "
             "sync / local |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        t = row["seconds"]
        lines.append(f"| {row['shape']} | {t['copy'] * 1e3:.3f} | {t['local'] * 1e3:.3f} "
                     f"({t['local'] / t['copy']:.1f}) | {t['sync'] * 1e3:.3f} ({t['sync'] / t['copy']:.1f}) | "
                     f"{t['torch'] * 1e3:.3f} | {t['comm'] * 1e3:.3f} | {t['sync'] / t['local']:.2f} |")
    return "\n".join(lines)


def worker(args) -> None:
    # Numba's thread pool must not be larger than the rank's share of the cores: with the OpenMP layer, idle
    # pool threads of 2 ranks on 2 cores made every step (even a plain copy) ~100x slower in our measurements.
    # Numba reads this when it is first imported (batchnorm is imported lazily, after this line).
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    if dist.get_world_size() < 2:
        raise ValueError(f"bench_sync expected at least 2 ranks, got world size {dist.get_world_size()}: run it "
                         f"without torchrun (it launches 2 ranks) or with torchrun --nproc_per_node=2")
    rows = []
    for text in args.shapes:
        shape = _parse_shape(text)
        rows.append({"shape": "x".join(map(str, shape)), "seconds": measure(shape, args.repeats, args.warmup)})
    if dist.get_rank() == 0:
        header = (f"SyncBatchNorm training step (forward + backward), {dist.get_world_size()} CPU ranks over gloo "
                  f"on 127.0.0.1, {args.threads} thread(s) per rank; median of {args.repeats} rounds after "
                  f"{args.warmup} warm-up, slowest rank per round; torch {torch.__version__}, "
                  f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
        print(format_table(rows, header), flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"header": header, "rows": rows}, f, indent=1)
    dist.destroy_process_group()


def launch(argv: list[str], world: int, timeout: float) -> int:
    """Start `world` ranks of this script on 127.0.0.1 (a free port) and wait for them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__)] + argv, env=env))
    deadline = time.monotonic() + timeout
    code = 0
    try:
        for proc in procs:
            code = code or proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        print(f"bench_sync: the ranks did not finish within {timeout} s; killed", file=sys.stderr)
        return 1
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES), help="per-rank shapes N,C[,...]")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch/Numba threads per rank (1)")
    parser.add_argument("--world", type=int, default=2, help="ranks to launch when not under torchrun (2)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before the launcher gives up")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    for text in args.shapes:
        _parse_shape(text)
    if "RANK" in os.environ:
        worker(args)
    else:
        sys.exit(launch(sys.argv[1:], args.world, args.timeout))


if __name__ == "__main__":
    main()
