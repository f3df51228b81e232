"""The per-channel algebra of batch norm, in one place for every path (fused kernels aside, which inline it).

With inv_std = 1 / sqrt(var + eps) and m values per channel:

    transform        y = (x - mean) * scale + shift,  scale = gamma * r / sqrt(var + eps),  shift = beta + gamma * d
                     (r = 1, d = 0 except for Batch Renorm's corrections)
    input gradient   dx = k_dy * g + k_x * (x - mean) + k_0,  k_dy = gamma * inv_std and, with the batch's own
                     statistics, k_x = -k_dy * inv_std^2 * sum(g * (x - mean)) / m,  k_0 = -k_dy * sum(g) / m
    running update   running <- (1 - momentum) * running + momentum * batch, with the unbiased variance
                     m / (m - 1) * var stored (inf for a single value)

Per-channel vectors are float64 NumPy arrays of length C; the running buffers are torch tensors updated in place.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

__all__ = ["float64_vector", "inv_std", "scale_shift", "input_grad_coefficients", "unbiased_variance",
           "update_running"]


def float64_vector(t, channels: int, fill: float) -> np.ndarray:
    """A per-channel tensor or array as a float64 NumPy vector of length `channels` (`fill` everywhere for None)."""
    if t is None:
        return np.full(channels, fill)
    values = t.detach().numpy() if isinstance(t, torch.Tensor) else t
    return np.asarray(values, dtype=np.float64).reshape(channels)


def inv_std(var: np.ndarray, eps: float) -> np.ndarray:
    """1 / sqrt(var + eps)."""
    return 1.0 / np.sqrt(var + eps)


def scale_shift(var: np.ndarray, weight, bias, eps: float, r: Optional[np.ndarray] = None,
                d: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) with ((x - mean) / sqrt(var + eps) * r + d) * gamma + beta = (x - mean) * scale +
    shift. gamma / sqrt(var + eps) is the fused kernels' own expression (`_scale_value`), so that every path
    computes the same pre-activation z (the sign test of relu/leaky_relu in the backward must see the forward's)."""
    channels = var.shape[0]
    gamma = float64_vector(weight, channels, 1.0)
    scale = gamma / np.sqrt(var + eps)
    shift = float64_vector(bias, channels, 0.0)
    if r is not None:
        scale = scale * r
    if d is not None:
        shift = shift + gamma * d
    return scale, shift


def input_grad_coefficients(sum_dy: np.ndarray, sum_dy_xc: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray,
                            count: int, batch_stats: bool):
    """Per-channel (k_dy, k_x, k_0) with dx = k_dy * dy + k_x * (x - mean) + k_0.

    From the two gradient sums over all `count` values of a channel (on one process or reduced over many):
    k_dy = gamma * inv_std and, when the statistics are the batch's own,
    k_x = -k_dy * inv_std^2 * sum(dy * (x - mean)) / count,  k_0 = -k_dy * sum(dy) / count; else k_x = k_0 = 0.
    """
    k_dy = gamma * inv_std
    if not batch_stats:
        zeros = np.zeros_like(k_dy)
        return k_dy, zeros, zeros
    count = max(count, 1)
    return k_dy, -k_dy * inv_std * inv_std * sum_dy_xc / count, -k_dy * sum_dy / count


def unbiased_variance(var, count: int):
    """count / (count - 1) * var, the variance stored in `running_var` (inf for a single value); tensor or array."""
    if count > 1:
        return var * (count / (count - 1))
    return torch.full_like(var, math.inf) if isinstance(var, torch.Tensor) else np.full_like(var, math.inf)


def update_running(running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor], mean, unbiased,
                   momentum: float) -> None:
    """In place: running <- (1 - momentum) * running + momentum * batch, for each buffer that is not None (the
    batch statistics may be tensors or float64 arrays)."""
    with torch.no_grad():
        for running, batch in ((running_mean, mean), (running_var, unbiased)):
            if running is not None:
                batch = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
                running.mul_(1.0 - momentum).add_(batch.to(running), alpha=momentum)
