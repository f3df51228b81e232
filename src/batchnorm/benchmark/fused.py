"""Benchmarks of the fused layers: BN+ReLU speed against torch, and the peak memory of a conv-BN-act stack.

Speed: training forward+backward of BN followed by ReLU, per shape, timed round-robin in one run:
    copy          `dst.copy_(x)` (the memory floor);
    torch         torch.nn.functional.batch_norm then torch.relu;
    ours fused    batchnorm.nn.BatchNormAct (one kernel per pass);
    ours plain    batchnorm.functional.batch_norm without activation (what fusion should cost nothing over).
Medians after warm-up, as multiples of the copy, plus ours/torch and fused/plain ratios.

Memory: one training step (forward + backward) of 16 blocks conv3x3(64->64) -> norm -> activation on a
(32, 64, 56, 56) float32 batch, each variant in a fresh process; the figure is the peak resident memory during
the step minus the resident memory just before it (model, input and compiled kernels already loaded), sampled
every 0.2 ms by a background thread.

Example:
    batchnorm bench --fused                 # BN+ReLU table on the suite
    batchnorm bench --memory                # the three-variant memory table
    python bench/run_fused.py               # both, saved to bench/results_fused.*
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time

import torch

__all__ = ["measure_fused_shape", "fused_table", "format_fused", "peak_step_memory", "memory_table",
           "format_memory", "MEMORY_VARIANTS"]

MEMORY_VARIANTS = ("torch BN+ReLU", "ours BatchNormAct", "ours InPlaceABN")


def measure_fused_shape(dims: tuple[int, ...], channels_last: bool = False, repeats: int = 15,
                        warmup: int = 3, min_round_seconds: float = 0.02) -> dict:
    """Copy / torch BN+ReLU / our fused BN+ReLU / our plain BN, training fwd+bwd (float32), interleaved round by
    round; each measurement repeats its call for about `min_round_seconds` (small shapes) and takes the mean.

    Returns the median seconds, the medians over rounds of time / copy time of the same round, and the medians
    over rounds of fused/torch and fused/plain.
    """
    from ._timing import calls_per_round, timer
    from ..functional import batch_norm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(dims, generator=generator) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    x.requires_grad_()
    dy = torch.randn(x.shape, generator=generator).contiguous(memory_format=torch.channels_last) \
        if channels_last and x.dim() == 4 else torch.randn(x.shape, generator=generator)
    channels = dims[1]
    weight = torch.ones(channels, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    destination = torch.empty_like(x)

    def clear():
        x.grad = None
        weight.grad = None
        bias.grad = None

    def copy():
        destination.copy_(x.detach())

    def torch_bn_relu():
        clear()
        torch.relu(torch.nn.functional.batch_norm(x, None, None, weight, bias, True)).backward(dy)

    def ours_fused():
        clear()
        batch_norm(x, None, None, weight, bias, True, activation="relu").backward(dy)

    def ours_plain():
        clear()
        batch_norm(x, None, None, weight, bias, True).backward(dy)

    cases = {"copy": copy, "torch": torch_bn_relu, "ours_fused": ours_fused, "ours_plain": ours_plain}
    inner = {name: calls_per_round(fn, min_round_seconds) for name, fn in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(warmup + repeats):
        for name, fn in cases.items():
            elapsed = timer(fn, inner[name])
            if round_index >= warmup:
                times[name].append(elapsed)

    def ratio(a, b):
        return statistics.median(t / u for t, u in zip(times[a], times[b]))

    return {
        "shape": "x".join(map(str, dims)) + (" (channels_last)" if channels_last else ""),
        "seconds": {name: statistics.median(values) for name, values in times.items()},
        "x_copy": {name: ratio(name, "copy") for name in ("torch", "ours_fused", "ours_plain")},
        "fused_over_torch": ratio("ours_fused", "torch"),
        "fused_over_plain": ratio("ours_fused", "ours_plain"),
    }


_FUSED_SCRIPT = """
import json, torch
torch.set_num_threads({threads})
from batchnorm.benchmark.fused import measure_fused_shape
print(json.dumps(measure_fused_shape({dims!r}, {channels_last!r}, {repeats})))
"""


def fused_table(shapes, threads: int = 2, repeats: int = 15, omp_passive: bool = False, progress=None) -> dict:
    """`measure_fused_shape` for every shape, each in a fresh process; rows plus the medians of the ratios."""
    from ._timing import environment

    rows = []
    for shape in shapes:
        script = _FUSED_SCRIPT.format(threads=threads, dims=tuple(shape.dims), channels_last=shape.channels_last,
                                      repeats=repeats)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env=environment(omp_passive))
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if progress:
            progress(rows[-1])
    return {"rows": rows,
            "median fused/torch": statistics.median(r["fused_over_torch"] for r in rows),
            "median fused/plain": statistics.median(r["fused_over_plain"] for r in rows)}


def format_fused(report: dict) -> str:
    """The BN+ReLU table as Markdown."""
    lines = ["BN+ReLU training forward+backward, float32, as multiples of a copy of the same tensor (medians over "
             "rounds):", "",
             "| shape | torch BN+ReLU | ours BatchNormAct | ours plain BN | fused / torch | fused / plain |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        c = r["x_copy"]
        lines.append(f"| {r['shape']} | {c['torch']:.2f} | {c['ours_fused']:.2f} | {c['ours_plain']:.2f} | "
                     f"{r['fused_over_torch']:.2f} | {r['fused_over_plain']:.2f} |")
    lines += ["", f"median fused/torch: {report['median fused/torch']:.2f}",
              f"median fused/plain: {report['median fused/plain']:.2f}"]
    return "\n".join(lines)


def format_memory(report: dict) -> str:
    """The peak-memory table as Markdown."""
    lines = ["Peak resident memory of one training step of 16 conv3x3-BN-activation blocks (32x64x56x56 "
             "float32) above the state before it, each run in a fresh process (median of the runs):", "",
             "| variant | peak extra (MB), median | / torch | every run (MB) |", "|---|---:|---:|---|"]
    for r in report["rows"]:
        every = ", ".join(f"{p / 1e6:.0f}" for p in r.get("peaks", [r["peak_extra_bytes"]]))
        lines.append(f"| {r['variant']} | {r['peak_extra_bytes'] / 1e6:.0f} | {r['ratio_to_torch']:.2f} | {every} |")
    return "\n".join(lines)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def _build_stack(variant: str, blocks: int, channels: int) -> torch.nn.Sequential:
    from .. import nn as bnn

    layers = []
    for _ in range(blocks):
        layers.append(torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False))
        if variant == "torch BN+ReLU":
            layers += [torch.nn.BatchNorm2d(channels), torch.nn.ReLU()]
        elif variant == "ours BatchNormAct":
            layers.append(bnn.BatchNormAct2d(channels, activation="relu"))
        elif variant == "ours InPlaceABN":
            layers.append(bnn.InPlaceABN2d(channels, activation="leaky_relu", activation_param=0.01))
        else:
            raise ValueError(f"unknown memory variant {variant!r}; expected one of {', '.join(MEMORY_VARIANTS)}")
    return torch.nn.Sequential(*layers)


def peak_step_memory(variant: str, batch: int = 32, channels: int = 64, size: int = 56, blocks: int = 16) -> dict:
    """Peak extra resident memory (bytes) of one training step of the stack, in this process."""
    torch.manual_seed(0)
    model = _build_stack(variant, blocks, channels)
    x = torch.randn(batch, channels, size, size)
    model(torch.randn(2, channels, 8, 8)).sum().backward()  # compile/load kernels, allocate grads
    model(x[:4]).sum().backward()
    model.zero_grad(set_to_none=False)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    baseline = _resident_bytes()
    peak = baseline
    running = True

    def sample():
        nonlocal peak
        while running:
            peak = max(peak, _resident_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    model(x).sum().backward()
    running = False
    sampler.join()
    return {"variant": variant, "peak_extra_bytes": peak - baseline, "parameter_bytes": parameter_bytes,
            "activation_bytes_per_tensor": x.numel() * x.element_size()}


def memory_table(threads: int = 2, repeats: int = 3) -> dict:
    """Run `peak_step_memory` for each variant `repeats` times, each in a fresh process, rounds interleaved;
    returns the median peak of each variant, every run's peak, and the ratios of the medians to torch's."""
    runs: dict[str, list[dict]] = {variant: [] for variant in MEMORY_VARIANTS}
    for _ in range(repeats):
        for variant in MEMORY_VARIANTS:
            code = (f"import json, torch; torch.set_num_threads({threads}); "
                    f"from batchnorm.benchmark.fused import peak_step_memory; "
                    f"print(json.dumps(peak_step_memory({variant!r})))")
            completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(completed.stdout.strip().splitlines()[-1]))
    results = []
    for variant, measured in runs.items():
        peaks = [run["peak_extra_bytes"] for run in measured]
        results.append(dict(measured[0], peak_extra_bytes=statistics.median(peaks), peaks=peaks))
    torch_peak = results[0]["peak_extra_bytes"]
    for row in results:
        row["ratio_to_torch"] = row["peak_extra_bytes"] / torch_peak
    return {"rows": results}


if __name__ == "__main__":
    print(format_memory(memory_table()))
