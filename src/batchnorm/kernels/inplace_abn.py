"""Entry points of the in-place activated BN kernels (the backward from the output), routed by `dispatch`.

`activation` is an invertible name from `activations.INVERTIBLE` with one float parameter (slope of
leaky_relu, alpha of elu). Per-channel vectors are float64 NumPy arrays of length C.
"""

from __future__ import annotations

import numpy as np
import torch

from .activations import code
from .dispatch import dense, launch, new_output_like, view
from .numba import inplace_abn as jit

__all__ = ["grad_sums_from_output", "grad_input_from_output"]


def grad_sums_from_output(dy: torch.Tensor, y: torch.Tensor, center: np.ndarray, activation: str,
                          param: float) -> tuple[np.ndarray, np.ndarray]:
    """sum(g)_c, sum(g * (z - center_c))_c with z = act^-1(y), g = dy * act'(z) (invertible activations)."""
    y = dense(y, y)
    dy = dense(dy, y)
    sum_g, sum_g_zc = np.zeros(y.shape[1]), np.zeros(y.shape[1])
    if y.numel():
        yv = view(y)
        launch(jit.grad_sums_out_cf, jit.grad_sums_out_rows, y, yv, view(dy), yv, center, code(activation),
               float(param), sum_g, sum_g_zc)
    return sum_g, sum_g_zc


def grad_input_from_output(dy: torch.Tensor, y: torch.Tensor, center: np.ndarray, activation: str, param: float,
                           k_dy: np.ndarray, k_x: np.ndarray, k_0: np.ndarray) -> torch.Tensor:
    """out = k_dy_c * g + k_x_c * (z - center_c) + k_0_c with z = act^-1(y), g = dy * act'(z)."""
    y = dense(y, y)
    dy = dense(dy, y)
    out = new_output_like(y)
    if y.numel():
        yv = view(y)
        launch(jit.grad_input_out_cf, jit.grad_input_out_rows, y, yv, view(dy), yv, center, code(activation),
               float(param), k_dy, k_x, k_0, view(out))
    return out
