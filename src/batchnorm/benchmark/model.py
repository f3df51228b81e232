"""`batchnorm bench --model resnet18`: a whole network's training step and inference pass, torch's batch norm
against ours.

The network is a ResNet-18 (He et al. 2016, arXiv 1512.03385; torchvision's layout: a 3x3 stem for small
images, four stages of two BasicBlocks, `out += identity; out = relu(out)`), written here so that no
torchvision is needed. Variants, timed interleaved round by round in one process (A B C D A B C D ...):

    torch eager        torch's BatchNorm2d
    ours               `convert(model, to="batchnorm")`: our BatchNorm2d, same graph
    ours fused         `convert(model, to="fused")`: BN + ReLU -> BatchNormAct2d, BN + add + ReLU ->
                       BatchNormAddAct2d
    torch.compile      `torch.compile(model)` of the torch model (skipped with --no-compile)
    no batch norm      the torch model with every BatchNorm2d replaced by `nn.Identity`: not a network anyone
                       trains, but the floor of what any batch norm can save (the ReLUs and adds remain)

A training step is forward, cross-entropy, backward and an SGD update; inference is an eval-mode forward
under `torch.no_grad()`. Reported: the median milliseconds of each and the ratio to torch eager's median.

Example:
    batchnorm bench --model resnet18 --size 32 --batch 64
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["resnet18", "BasicBlock", "VARIANTS", "build_variants", "measure_model", "format_model_table"]

VARIANTS = ("torch eager", "ours", "ours fused", "torch.compile", "no batch norm")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, a ReLU between them and after the residual add."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class _ResNet(nn.Module):
    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 10, width: int = 64) -> nn.Module:
    """A ResNet-18 for small images (CIFAR-style 3x3 stem, no max-pool) with torch's BatchNorm2d.

    Args:
        num_classes: 10, outputs of the final linear layer.
        width: 64, channels of the first stage (doubled at each of the next three).

    Shape: (N, 3, H, W) -> (N, num_classes).

    Example:
        >>> model = resnet18(width=8)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    for name, value in (("num_classes", num_classes), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"resnet18 expected {name} to be a positive integer, got {value!r}")
    return _ResNet(num_classes, width)


def build_variants(model: nn.Module, compile_torch: bool = True) -> dict[str, nn.Module]:
    """The variants of `model` that `measure_model` times (same parameters and buffers in each)."""
    import copy

    from ..tools import convert

    variants = {"torch eager": model, "ours": convert(model, to="batchnorm"), "ours fused": convert(model, to="fused")}
    if compile_torch:
        variants["torch.compile"] = torch.compile(copy.deepcopy(model))
    variants["no batch norm"] = _without_batch_norm(copy.deepcopy(model))
    return variants


def _without_batch_norm(model: nn.Module) -> nn.Module:
    """model with every BatchNorm2d replaced by nn.Identity (in place)."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.Identity())
        else:
            _without_batch_norm(child)
    return model


def measure_model(size: int = 32, batch: int = 64, rounds: int = 9, threads: int = 2, width: int = 64,
                  compile_torch: bool = True, seed: int = 0) -> dict:
    """Median times (ms) of a training step and an inference pass of every variant, interleaved by round.

    Args:
        size: 32, input height and width. batch: 64. rounds: 9 measured rounds after 2 warm-up rounds.
        threads: 2, torch (and Numba) threads. width: 64 (ResNet-18). compile_torch: True, include torch.compile.
        seed: 0, for the weights, inputs and labels.

    Returns:
        {"config": {...}, "train": {variant: ms}, "inference": {variant: ms}, "train_ratio": {variant: ratio of
        the medians to torch eager's}, "train_round_ratio": {variant: [lowest, median, highest] of the per-round
        ratios to torch eager's time in the same round}, and the same three for "inference"}.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    models = build_variants(resnet18(width=width), compile_torch)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in models.items()}

    def train_step(name: str) -> None:
        model = models[name]
        model.train()
        optimizers[name].zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizers[name].step()

    def inference(name: str) -> None:
        model = models[name]
        model.eval()
        with torch.no_grad():
            model(x)

    report = {"config": dict(model="resnet18", size=size, batch=batch, rounds=rounds, threads=threads, width=width,
                             torch=torch.__version__)}
    for label, step in (("train", train_step), ("inference", inference)):
        times = {name: [] for name in models}
        for _ in range(2):
            for name in models:
                step(name)
        for _ in range(rounds):
            for name in models:
                start = time.perf_counter()
                step(name)
                times[name].append(time.perf_counter() - start)
        medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        report[label] = medians
        report[f"{label}_ratio"] = {name: ms / medians["torch eager"] for name, ms in medians.items()}
        report[f"{label}_round_ratio"] = {name: _spread([a / b for a, b in zip(t, times["torch eager"])])
                                          for name, t in times.items()}
    return report


def _spread(values: list[float]) -> list[float]:
    return [min(values), statistics.median(values), max(values)]


def format_model_table(report: dict) -> str:
    """The report as a Markdown table: variant, training step and inference (ms, ratio of the medians to torch
    eager's, and the lowest-highest per-round ratio)."""
    c = report["config"]
    lines = [f"ResNet-18 (width {c['width']}), input {c['batch']}x3x{c['size']}x{c['size']}, {c['threads']} threads, "
             f"medians of {c['rounds']} interleaved rounds, torch {c['torch']}; per round: the lowest and highest "
             f"ratio to torch eager's time in the same round",
             "", "| variant | training step (ms) | vs torch | per round | inference (ms) | vs torch | per round |",
             "|---|---|---|---|---|---|---|"]
    for name in report["train"]:
        cells = []
        for label in ("train", "inference"):
            low, _, high = report[f"{label}_round_ratio"][name]
            cells.append(f"{report[label][name]:.1f} | {report[f'{label}_ratio'][name]:.2f} | {low:.2f}-{high:.2f}")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)
