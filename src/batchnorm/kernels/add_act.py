"""Entry points of the BN + add + activation kernels (the residual join), routed by `dispatch`.

`activation` is a name from `activations.ACTIVATIONS` with one float parameter (slope of leaky_relu, alpha
of elu; ignored by the others). Per-channel vectors are float64 NumPy arrays of length C.
"""

from __future__ import annotations

import numpy as np
import torch

from .activations import code
from .dispatch import dense, launch, new_output_like, view
from .numba import add_act as jit

__all__ = ["affine_add_act", "grad_add_act"]


def affine_add_act(x: torch.Tensor, center: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                   residual: torch.Tensor, activation: str, param: float) -> torch.Tensor:
    """out = act((x - center_c) * scale_c + shift_c + residual)."""
    x = dense(x, x)
    residual = dense(residual, x)
    out = new_output_like(x)
    if x.numel():
        xv = view(x)
        launch(jit.affine_add_act_cf, jit.affine_add_act_rows, x, xv, xv, center, scale, shift, view(residual),
               code(activation), float(param), view(out))
    return out


def grad_add_act(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                 residual: torch.Tensor, activation: str, param: float):
    """(g, sum(g)_c, sum(g * (x - center_c))_c) with g = dy * act'(affine(x) + residual), the residual's grad."""
    x = dense(x, x)
    dy = dense(dy, x)
    residual = dense(residual, x)
    g = new_output_like(x)
    sum_g, sum_g_xc = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    if x.numel():
        xv = view(x)
        launch(jit.grad_add_act_cf, jit.grad_add_act_rows, x, xv, view(dy), xv, center, scale, shift,
               view(residual), code(activation), float(param), view(g), sum_g, sum_g_xc)
    return g, sum_g, sum_g_xc
