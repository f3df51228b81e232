"""Measure where torch's native batch norm beats this package's kernels, to set `kernels.config.TORCH_BELOW`.

For input sizes from 2^10 to 2^22 elements, in several shape families per layout, the script times our module
as users call it on each path (`BATCHNORM_BACKEND` numba and torch, switched at run time) and torch's own
module, interleaved round by round, medians of the per-round times. Modes: "train" (`module(x)` then
`.backward(dy)`), "train_nograd" (a training forward under `torch.no_grad()`) and "eval" (`torch.no_grad()`).
The whole sweep runs `--runs` times (default 3). For each (mode, layout) and size, the kernels' time over torch's
path is the geometric mean over that size's shapes and the runs; the crossover is the smallest size from which
that mean is at most WIN (0.95) at every larger size; inputs below it go to torch. (One sweep decides ties by
noise: three sweeps of the same code put the training crossover of the rows layout at 2^19, 2^20 and 2^21, with
single shapes moving by 15% between sweeps.)

    python bench/crossover.py                    # writes bench/crossover.md and bench/crossover.json
    python bench/crossover.py --fused --out bench/crossover-fused   # BatchNormAct(relu) vs BN + ReLU

Run it on a quiet machine: the decision is about microseconds.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics

import torch

from batchnorm import _atomic
from batchnorm.benchmark import _timing, suite
from batchnorm import nn as ours_nn
from batchnorm.kernels import config

SIZES = [1 << k for k in range(10, 23)]  # 1K ... 4M elements
MODES = ("train", "train_nograd", "eval")
WIN = 0.95  # the kernels' time over torch's path from which a size goes to the kernels


def families(numel: int) -> dict[str, list[tuple[tuple[int, ...], bool]]]:
    """Shapes of about `numel` elements per layout: (dims, channels_last)."""
    def spatial(n: int, c: int) -> int:
        return max(1, round((numel / (n * c)) ** 0.5))

    return {
        "cf": [((8, 16, spatial(8, 16), spatial(8, 16)), False),
               ((max(2, numel // (256 * 16)), 256, 4, 4), False),
               ((8, 64, max(2, numel // 512)), False)],
        "rows": [((max(2, numel // 256), 256), False),
                 ((max(2, numel // 512), 512), False),
                 ((max(2, numel // 2048), 2048), False),
                 ((8, 64, spatial(8, 64), spatial(8, 64)), True),
                 ((2, 512, spatial(2, 512), spatial(2, 512)), True)],
    }


def _module(cls, dims: tuple[int, ...], fused: bool = False) -> torch.nn.Module:
    """BatchNorm of torch or ours; with `fused`, ours is BatchNormAct(relu) and torch's is BatchNorm + ReLU."""
    suffix = {2: "1d", 3: "1d", 4: "2d", 5: "3d"}[len(dims)]
    if not fused:
        return getattr(cls, "BatchNorm" + suffix)(dims[1])
    if cls is torch.nn:
        return torch.nn.Sequential(getattr(torch.nn, "BatchNorm" + suffix)(dims[1]), torch.nn.ReLU(inplace=True))
    return getattr(cls, "BatchNormAct" + suffix)(dims[1], activation="relu")


def _calls(module: torch.nn.Module, x: torch.Tensor, x_grad: torch.Tensor, dy: torch.Tensor, backend=None):
    def switched(fn):
        if backend is None:
            return fn

        def run():
            config.BACKEND = backend
            fn()
        return run

    def train():
        module.train()
        x_grad.grad = None
        module.zero_grad(set_to_none=True)
        module(x_grad).backward(dy)

    def train_nograd():
        module.train()
        with torch.no_grad():
            module(x)

    def evaluate():
        module.eval()
        with torch.no_grad():
            module(x)

    return {"train": switched(train), "train_nograd": switched(train_nograd), "eval": switched(evaluate)}


def measure(dims: tuple[int, ...], channels_last: bool, repeats: int, fused: bool = False,
            min_round_seconds: float = 0.01) -> dict:
    """Median seconds per call of each (contender, mode) for one shape, interleaved round by round."""
    x = torch.randn(dims) * 2.0 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    x_grad = x.clone().requires_grad_()
    contenders = {
        "numba": _calls(_module(ours_nn, dims, fused), x, x_grad, dy, "numba"),
        "routed": _calls(_module(ours_nn, dims, fused), x, x_grad, dy, "torch"),
        "auto": _calls(_module(ours_nn, dims, fused), x, x_grad, dy, "auto"),
        "torch": _calls(_module(torch.nn, dims, fused), x, x_grad, dy),
    }
    fns = {(name, mode): fn for name, modes in contenders.items() for mode, fn in modes.items()}
    inner = {key: _timing.calls_per_round(fn, min_round_seconds) for key, fn in fns.items()}
    samples = {key: [] for key in fns}
    for round_index in range(2 + repeats):
        for key, fn in fns.items():
            seconds = _timing.timer(fn, inner[key])
            if round_index >= 2:
                samples[key].append(seconds)
    return {f"{name}/{mode}": statistics.median(v) for (name, mode), v in samples.items()}


def kernel_over_torch(rows: list[dict], mode: str, layout: str) -> dict[int, float]:
    """Per size: the geometric mean, over the shapes of that size and layout and over the runs, of our module's
    time on the kernels over its time routed to torch."""
    logs: dict[int, list[float]] = {}
    for row in rows:
        if row["layout"] == layout:
            for seconds in row["runs"]:
                ratio = seconds[f"numba/{mode}"] / seconds[f"routed/{mode}"]
                logs.setdefault(row["size"], []).append(math.log(ratio))
    return {size: math.exp(sum(v) / len(v)) for size, v in sorted(logs.items())}


def crossover(rows: list[dict], mode: str, layout: str) -> int:
    """The smallest size from which the kernels' mean time over torch's path is at most WIN at every larger
    size (the TORCH_BELOW value)."""
    below = SIZES[0]
    for size, ratio in kernel_over_torch(rows, mode, layout).items():
        if ratio > WIN:
            below = 2 * size
    return below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="measured rounds per shape (default 9)")
    parser.add_argument("--threads", type=int, default=2, help="torch and Numba threads (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="sweeps of all sizes, combined (default 3)")
    parser.add_argument("--fused", action="store_true",
                        help="BatchNormAct(relu) against torch's BatchNorm + ReLU(inplace=True)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parent / "crossover"),
                        help="path prefix of the .md and .json written (default bench/crossover)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = suite._header(args.threads, torch.float32)
    rows = [{"layout": layout, "shape": list(dims), "channels_last": channels_last, "numel": math.prod(dims),
             "size": size, "runs": []}
            for size in SIZES for layout, shapes in families(size).items() for dims, channels_last in shapes]
    for run in range(args.runs):
        for row in rows:
            dims, channels_last = tuple(row["shape"]), row["channels_last"]
            seconds = measure(dims, channels_last, args.repeats, args.fused)
            row["runs"].append(seconds)
            print(f"run {run + 1} {row['layout']:4} {str(dims) + (' cl' if channels_last else ''):24} " + "  ".join(
                f"{mode} {seconds[f'numba/{mode}'] * 1e6:8.1f} {seconds[f'routed/{mode}'] * 1e6:8.1f} "
                f"{seconds[f'torch/{mode}'] * 1e6:8.1f}" for mode in MODES), flush=True)
    for row in rows:  # per contender and mode: the median over the runs of each run's median
        row["seconds"] = {key: statistics.median(s[key] for s in row["runs"]) for key in row["runs"][0]}
    config.BACKEND = "auto"
    below = {f"{mode}/{layout}": crossover(rows, mode, layout) for mode in MODES for layout in ("cf", "rows")}
    what = "BatchNormAct(relu) vs BatchNorm + ReLU" if args.fused else "batch norm"
    lines = [f"# Crossover of {what}: our kernels vs torch's native batch norm", "",
             f"`python bench/crossover.py --repeats {args.repeats} --threads {args.threads} --runs {args.runs}`; "
             f"{header['machine']} "
             f"({header['logical_cpus']} logical CPUs), load average at start {header['load_average_at_start']}; "
             f"torch {header['torch']}, numba {header['numba']}; {header['date_utc']} UTC.", "",
             "Median microseconds per call of our module on the kernels (numba), our module routed to torch's "
             "native batch norm (routed), our module with the crossover in force (auto), and torch's module "
             "(the median over the runs); train = forward + backward; auto/torch is the ratio of the medians.", "",
             "| layout | shape | elements | " + " | ".join(
                 f"{m} numba | {m} routed | {m} auto | {m} torch | {m} auto/torch" for m in MODES) + " |",
             "|---|---|---:|" + "---:|" * (5 * len(MODES))]
    for row in rows:
        shape = "x".join(map(str, row["shape"])) + (" cl" if row["channels_last"] else "")
        cells = []
        for m in MODES:
            cells += [f"{row['seconds'][f'{who}/{m}'] * 1e6:.1f}" for who in ("numba", "routed", "auto", "torch")]
            cells.append(f"{row['seconds'][f'auto/{m}'] / row['seconds'][f'torch/{m}']:.2f}")
        lines.append(f"| {row['layout']} | {shape} | {row['numel']} | " + " | ".join(cells) + " |")
    worst = {m: max(row["seconds"][f"auto/{m}"] / row["seconds"][f"torch/{m}"] for row in rows) for m in MODES}
    lines += ["", "Largest auto/torch ratio per mode: " + ", ".join(f"{m} {v:.2f}" for m, v in worst.items())]
    lines += ["", f"Kernels over torch's path (geometric mean over the shapes of a size and the {args.runs} runs):", "",
              "| mode | layout | " + " | ".join(f"2^{size.bit_length() - 1}" for size in SIZES) + " |",
              "|---|---|" + "---:|" * len(SIZES)]
    for mode in MODES:
        for layout in ("cf", "rows"):
            ratios = kernel_over_torch(rows, mode, layout)
            lines.append(f"| {mode} | {layout} | " + " | ".join(f"{ratios[size]:.2f}" for size in SIZES) + " |")
    lines += ["", f"Crossover (inputs with fewer elements go to torch; the kernels' mean at most {WIN} from there on): "
              + ", ".join(f"{key} 2^{value.bit_length() - 1}" for key, value in below.items()), ""]
    _atomic.atomic_write(args.out + ".md", "\n".join(lines))
    _atomic.atomic_write(args.out + ".json", json.dumps({"header": header, "fused": args.fused, "rows": rows,
                                                         "torch_below": below},
                                                        indent=1))
    print("\n".join(lines[-4:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
