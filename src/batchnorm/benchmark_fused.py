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
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time

import torch

__all__ = ["measure_fused_shape", "peak_step_memory", "memory_table", "MEMORY_VARIANTS"]

MEMORY_VARIANTS = ("torch BN+ReLU", "ours BatchNormAct", "ours InPlaceABN")


def measure_fused_shape(dims: tuple[int, ...], channels_last: bool = False, repeats: int = 15,
                        warmup: int = 3) -> dict:
    """Median seconds of copy / torch BN+ReLU / our fused BN+ReLU / our plain BN, training fwd+bwd (float32)."""
    from .functional import batch_norm

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(dims, generator=generator) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    x.requires_grad_()
    dy = torch.randn_like(x)
    channels = dims[1]
    weight = torch.ones(channels, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    destination = torch.empty_like(x)

    def copy():
        destination.copy_(x.detach())

    def torch_bn_relu():
        torch.relu(torch.nn.functional.batch_norm(x, None, None, weight, bias, True)).backward(dy)

    def ours_fused():
        batch_norm(x, None, None, weight, bias, True, activation="relu").backward(dy)

    def ours_plain():
        batch_norm(x, None, None, weight, bias, True).backward(dy)

    cases = {"copy": copy, "torch": torch_bn_relu, "ours_fused": ours_fused, "ours_plain": ours_plain}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_index in range(warmup + repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "shape": "x".join(map(str, dims)) + (" (channels_last)" if channels_last else ""),
        "seconds": medians,
        "x_copy": {name: medians[name] / medians["copy"] for name in ("torch", "ours_fused", "ours_plain")},
        "fused_over_torch": medians["ours_fused"] / medians["torch"],
        "fused_over_plain": medians["ours_fused"] / medians["ours_plain"],
    }


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def _build_stack(variant: str, blocks: int, channels: int) -> torch.nn.Sequential:
    from . import nn as bnn

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


def memory_table(threads: int = 2) -> dict:
    """Run `peak_step_memory` for each variant in a fresh process; returns the figures and the ratios to torch."""
    results = []
    for variant in MEMORY_VARIANTS:
        code = (f"import json, torch; torch.set_num_threads({threads}); "
                f"from batchnorm.benchmark_fused import peak_step_memory; "
                f"print(json.dumps(peak_step_memory({variant!r})))")
        completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
    torch_peak = results[0]["peak_extra_bytes"]
    for row in results:
        row["ratio_to_torch"] = row["peak_extra_bytes"] / torch_peak
    return {"rows": results}


if __name__ == "__main__":
    print(json.dumps(memory_table(), indent=2))
