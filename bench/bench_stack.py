"""A whole small network: conv3x3-BN-ReLU blocks with torch's BatchNorm2d, ours, and our BatchNormAct2d.

Times one training step (forward + backward) and one inference forward of each variant, interleaved round by
round; prints the medians (ms) and the ratios to torch. Convolutions dominate such a network, so this shows
what the batch-norm speed-up is worth end to end.

    python bench/bench_stack.py                       # 4 blocks, batch 16, 64 channels, 56x56, 2 threads
    python bench/bench_stack.py --blocks 8 --batch 32 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import batchnorm.nn as bnn

VARIANTS = ("torch BN + ReLU", "ours BN + ReLU", "ours BatchNormAct")


def build(variant: str, blocks: int, channels: int) -> torch.nn.Sequential:
    layers = []
    for _ in range(blocks):
        layers.append(torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False))
        if variant == VARIANTS[0]:
            layers += [torch.nn.BatchNorm2d(channels), torch.nn.ReLU()]
        elif variant == VARIANTS[1]:
            layers += [bnn.BatchNorm2d(channels), torch.nn.ReLU()]
        else:
            layers.append(bnn.BatchNormAct2d(channels, activation="relu"))
    return torch.nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    for name in ("blocks", "batch", "channels", "size", "threads", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {variant: build(variant, args.blocks, args.channels) for variant in VARIANTS}
    state = models[VARIANTS[0]].state_dict()
    models[VARIANTS[1]].load_state_dict(state)  # same layer indices; BatchNormAct's differ (no ReLU module)
    x = torch.randn(args.batch, args.channels, args.size, args.size)

    def train_step(model):
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    def inference(model):
        model.eval()
        with torch.no_grad():
            model(x)

    print(f"{args.blocks} blocks conv3x3({args.channels}->{args.channels})-BN-ReLU, input "
          f"{tuple(x.shape)}, {args.threads} threads, medians of {args.rounds} interleaved rounds")
    for label, step in (("training step", train_step), ("inference", inference)):
        times = {variant: [] for variant in VARIANTS}
        for model in models.values():
            step(model)
        for _ in range(args.rounds):
            for variant, model in models.items():
                start = time.perf_counter()
                step(model)
                times[variant].append(time.perf_counter() - start)
        base = statistics.median(times[VARIANTS[0]])
        cells = ", ".join(f"{v} {statistics.median(t) * 1e3:.1f} ms ({statistics.median(t) / base:.2f})"
                          for v, t in times.items())
        print(f"{label}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
