"""The shared transform and its backward through the kernels' primitives (float64 per-channel vectors)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .. import kernels
from ..kernels.algebra import float64_vector, input_grad_coefficients, inv_std, scale_shift


def _transform(x: Tensor, mean: np.ndarray, var: np.ndarray, weight: Optional[Tensor], bias: Optional[Tensor],
               eps: float, r: Optional[np.ndarray] = None, d: Optional[np.ndarray] = None,
               activation: str = "identity", activation_param: float = 0.0) -> Tensor:
    """y = act((xhat * r + d) * gamma + beta); r, d (Batch Renorm's per-channel constants) default to 1 and 0."""
    scale, shift = scale_shift(var, weight, bias, eps, r, d)
    return kernels.affine(x, mean, scale, shift, activation, activation_param)


def _transform_backward(dy: Tensor, x: Tensor, mean: np.ndarray, var: np.ndarray, weight: Optional[Tensor],
                        eps: float, batch_stats: bool, need_dx: bool, r: Optional[np.ndarray] = None,
                        d: Optional[np.ndarray] = None, bias: Optional[Tensor] = None, activation: str = "identity",
                        activation_param: float = 0.0, sums: Optional[tuple[np.ndarray, np.ndarray]] = None):
    """(dx or None, dgamma, dbeta), the last two as float64 NumPy vectors.

    With Batch Renorm's constants r, d (xhat' = xhat * r + d): dx is the backward with gamma * r in place of
    gamma, dgamma = r * sum(dy * xhat) + d * sum(dy). With an activation, every formula holds with dy replaced
    by g = dy * act'(z), the pre-activation z being recomputed from x (and bias) inside the kernels.
    `sums` = (sum(dy), sum(dy * (x - mean))) when a fused kernel has already computed them.
    """
    channels = x.shape[1]
    inverse = inv_std(var, eps)
    scale, shift = scale_shift(var, weight, bias, eps, r, d)
    if sums is not None:
        sum_dy, sum_dy_xc = sums
    else:
        sum_dy, sum_dy_xc = kernels.grad_sums(dy, x, mean, scale, shift, activation, activation_param)
    dx = None
    if need_dx:
        count = x.numel() // max(channels, 1)
        gamma = float64_vector(weight, channels, 1.0)
        if r is not None:
            gamma = gamma * r
        k_dy, k_x, k_0 = input_grad_coefficients(sum_dy, sum_dy_xc, inverse, gamma, count, batch_stats)
        dx = kernels.grad_input(dy, x, mean, k_dy, k_x, k_0, scale, shift, activation, activation_param)
    dgamma = sum_dy_xc * inverse
    if r is not None:
        dgamma = dgamma * r
    if d is not None:
        dgamma = dgamma + d * sum_dy
    return dx, dgamma, sum_dy


def _stats_tensor(v: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
