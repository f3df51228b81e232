"""Shared test cases: the table of named layer configurations and shapes that drives the generic tests."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import batchnorm.nn as bnn


@dataclass(frozen=True)
class LayerCase:
    """One constructor configuration, with the input shape to feed it."""

    name: str
    ours: type
    theirs: type
    shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)

    def __str__(self) -> str:  # pytest id
        return self.name


_KINDS = [
    ("1d-NC", bnn.BatchNorm1d, torch.nn.BatchNorm1d, (7, 5)),
    ("1d-NCL", bnn.BatchNorm1d, torch.nn.BatchNorm1d, (4, 5, 6)),
    ("2d", bnn.BatchNorm2d, torch.nn.BatchNorm2d, (3, 5, 4, 6)),
    ("3d", bnn.BatchNorm3d, torch.nn.BatchNorm3d, (2, 5, 3, 2, 4)),
]

_CONFIGS = [
    ("default", {}),
    ("momentum-None", {"momentum": None}),
    ("momentum-0.3-eps-1e-3", {"momentum": 0.3, "eps": 1e-3}),
    ("affine-False", {"affine": False}),
    ("bias-False", {"bias": False}),
    ("no-running-stats", {"track_running_stats": False}),
    ("no-affine-no-running-stats", {"affine": False, "track_running_stats": False}),
]

LAYER_CASES = [
    LayerCase(f"{kind}-{config}", ours, theirs, shape, kwargs)
    for kind, ours, theirs, shape in _KINDS
    for config, kwargs in _CONFIGS
]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (absolute error when expected is all zeros)."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def random_affine_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give a module random (non-trivial) affine parameters and running statistics."""
    with torch.no_grad():
        if getattr(module, "weight", None) is not None:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator, dtype=torch.float64) + 1)
        if getattr(module, "bias", None) is not None:
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator, dtype=torch.float64))
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator,
                                                  dtype=torch.float64))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator,
                                                dtype=torch.float64) + 0.5)
