"""Where torch's batch norm + add + ReLU beats this package's BatchNormAddAct on the kernels, to set the
("add_act") entries of `kernels.config.TORCH_BELOW`.

For each shape: the median over 9 rounds of ours/torch, each round timing the same number of calls of
`BatchNormAddAct(C)(x, residual)` (kernels forced: BATCHNORM_BACKEND=numba) and of torch's `relu_(bn(x) + residual)`,
in training (forward + `.backward(dy)`) and in eval under `torch.no_grad()`.

Usage: python bench/crossover_add_act.py  (run it on a quiet machine; it prints a Markdown table)
"""

import statistics
import timeit

import torch

import batchnorm.nn as bnn
from batchnorm.kernels import config

SHAPES = [(8, 16, 8, 8), (16, 32, 8, 8), (32, 64, 8, 8), (64, 64, 8, 8), (64, 128, 8, 8), (64, 512, 4, 4),
          (64, 64, 16, 16), (64, 128, 16, 16), (64, 64, 32, 32), (256, 128), (512, 256), (1024, 256), (1024, 512),
          (2048, 512), (4096, 512), ((8, 64, 32, 32), "cl"), ((32, 64, 16, 16), "cl"), ((64, 64, 16, 16), "cl")]


def ratios(shape, channels_last: bool) -> tuple[float, float, float]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x, residual, dy = (torch.randn(shape).contiguous(memory_format=layout) for _ in range(3))
    x_grad, residual_grad = x.clone().requires_grad_(), residual.clone().requires_grad_()
    ours = (bnn.BatchNormAddAct2d if len(shape) == 4 else bnn.BatchNormAddAct1d)(shape[1])
    bn = (torch.nn.BatchNorm2d if len(shape) == 4 else torch.nn.BatchNorm1d)(shape[1])

    def train_ours():
        x_grad.grad = residual_grad.grad = None
        ours(x_grad, residual_grad).backward(dy)

    def train_torch():
        x_grad.grad = residual_grad.grad = None
        torch.relu_(bn(x_grad) + residual_grad).backward(dy)

    def eval_ours():
        with torch.no_grad():
            ours(x, residual)

    def eval_torch():
        with torch.no_grad():
            torch.relu_(bn(x) + residual)

    number = max(1, 20000 // (x.numel() // 1000 + 1))
    result = []
    for training, a, b in ((True, train_ours, train_torch), (False, eval_ours, eval_torch)):
        ours.train(training)
        bn.train(training)
        result.append(statistics.median(timeit.timeit(a, number=number) / timeit.timeit(b, number=number)
                                        for _ in range(9)))
    return result[0], result[1], timeit.timeit(train_torch, number=number) / number * 1e6


def main() -> None:
    torch.set_num_threads(2)
    config.BACKEND = "numba"
    print("| shape | elements | torch train f+b (us) | ours/torch train f+b | ours/torch eval |")
    print("|---|---:|---:|---:|---:|")
    for entry in SHAPES:
        shape, channels_last = (entry[0], True) if entry[-1] == "cl" else (entry, False)
        train, evaluation, torch_us = ratios(shape, channels_last)
        numel = 1
        for n in shape:
            numel *= n
        name = "x".join(map(str, shape)) + (" (channels_last)" if channels_last else "")
        print(f"| {name} | 2^{numel.bit_length() - 1} | {torch_us:.0f} | {train:.2f} | {evaluation:.2f} |", flush=True)


if __name__ == "__main__":
    main()
