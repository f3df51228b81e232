"""Argument checks shared by the layers: each raises ValueError/TypeError naming the argument, the constraint,
what was given and the fix."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .. import functional

__all__ = ["check_eps_momentum", "check_input_dtype", "check_input_shape", "check_integer", "check_training_eps"]


def check_eps_momentum(where: str, eps, momentum, momentum_allowed: bool = True) -> None:
    """Raise ValueError for an eps that is not a finite number > 0, or a momentum outside [0, 1] (None allowed:
    the cumulative average). torch accepts both silently and then normalizes with NaN or drifting statistics."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (0.0 < eps < math.inf):
        raise ValueError(f"{where} eps must be a finite number > 0 (it is added to the variance inside the square "
                         f"root), got eps={eps!r}: use eps=1e-5 (torch's default)")
    if not momentum_allowed or momentum is None:
        return
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not (0.0 <= momentum <= 1.0):
        raise ValueError(f"{where} momentum must be a number in [0, 1] (the weight of the new batch in the running "
                         f"average) or None (cumulative average), got momentum={momentum!r}: use momentum=0.1 "
                         f"(torch's default); a Keras/Flax decay of 0.99 is momentum=0.01")


def check_training_eps(where: str, eps) -> None:
    """Raise ValueError unless eps > 0 when normalizing with batch statistics (a batch variance can be 0)."""
    if not eps > 0.0:
        raise ValueError(f"{where} eps must be positive during training, got eps={eps}: the batch variance can be 0; "
                         f"use eps=1e-5 (torch's default)")


def check_input_dtype(where: str, input: Tensor) -> None:
    """Raise UnsupportedDtypeError (a TypeError, and torch's NotImplementedError) for an integer, bool or complex
    input."""
    if not input.dtype.is_floating_point:
        raise functional.UnsupportedDtypeError(
            f"{where} expected a floating-point input (float32 or float64 on this package's kernels; float16 and "
            f"bfloat16 on torch's), got dtype {input.dtype}: convert it with input.float()")


def check_input_shape(module: torch.nn.Module, input: Tensor) -> None:
    """Raise for an input whose rank is not in `module._input_shapes`, whose dtype is not floating point, or whose
    channel dimension is not `module.num_features`."""
    if isinstance(input, torch.fx.Proxy):  # symbolic tracing of torch's forward (the layer is the root)
        return
    name = type(module).__name__
    if input.dim() not in module._input_shapes:
        expected = " or ".join(module._input_shapes.values())
        raise ValueError(f"{name} expected input of shape {expected}, got a {input.dim()}-D input of shape "
                         f"{tuple(input.shape)}")
    if not input.dtype.is_floating_point:
        check_input_dtype(name, input)
    if input.shape[1] != module.num_features:
        shape = module._input_shapes[input.dim()].replace("C", f"C={module.num_features}", 1)
        raise functional.ArgumentShapeError(
            f"{name} expected input of shape {shape}, got {tuple(input.shape)}: num_features="
            f"{module.num_features} does not match the channel dimension {input.shape[1]}; "
            f"use {name}({input.shape[1]}) or check the layer before it")


def check_integer(value, argument: str, where: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where} {argument} must be an integer >= {minimum}, got {value!r} of type "
                        f"{type(value).__name__}: {fix}")
    if value < minimum:
        raise ValueError(f"{where} {argument} must be >= {minimum}, got {argument}={value}: {fix}")
    return int(value)
