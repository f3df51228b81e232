"""Dispatcher for the BN + add + activation and in-place activated BN kernels (rules of `batchnorm.kernels`).

`activation` is a name from `activations.ACTIVATIONS` with one float parameter (slope of leaky_relu, alpha
of elu; ignored by the others). Per-channel vectors are float64 NumPy arrays of length C.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _dense, _launch, _view, new_output_like
from . import fused_kernels as fk
from .activations import code

__all__ = ["affine_add_act", "grad_add_act", "grad_sums_from_output", "grad_input_from_output"]


def affine_add_act(x: torch.Tensor, center: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                   residual: torch.Tensor, activation: str, param: float) -> torch.Tensor:
    """out = act((x - center_c) * scale_c + shift_c + residual)."""
    x = _dense(x, x)
    residual = _dense(residual, x)
    out = new_output_like(x)
    if x.numel():
        xv = _view(x)
        _launch(fk.affine_add_act_cf, fk.affine_add_act_rows, x, xv, xv, center, scale, shift, _view(residual),
                code(activation), float(param), _view(out))
    return out


def grad_add_act(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray, scale: np.ndarray, shift: np.ndarray,
                 residual: torch.Tensor, activation: str, param: float):
    """(g, sum(g)_c, sum(g * (x - center_c))_c) with g = dy * act'(affine(x) + residual), the residual's grad."""
    x = _dense(x, x)
    dy = _dense(dy, x)
    residual = _dense(residual, x)
    g = new_output_like(x)
    sum_g, sum_g_xc = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    if x.numel():
        xv = _view(x)
        _launch(fk.grad_add_act_cf, fk.grad_add_act_rows, x, xv, _view(dy), xv, center, scale, shift,
                _view(residual), code(activation), float(param), _view(g), sum_g, sum_g_xc)
    return g, sum_g, sum_g_xc


def grad_sums_from_output(dy: torch.Tensor, y: torch.Tensor, center: np.ndarray, activation: str,
                          param: float) -> tuple[np.ndarray, np.ndarray]:
    """sum(g)_c, sum(g * (z - center_c))_c with z = act^-1(y), g = dy * act'(z) (invertible activations)."""
    y = _dense(y, y)
    dy = _dense(dy, y)
    sum_g, sum_g_zc = np.zeros(y.shape[1]), np.zeros(y.shape[1])
    if y.numel():
        yv = _view(y)
        _launch(fk.grad_sums_out_cf, fk.grad_sums_out_rows, y, yv, _view(dy), yv, center, code(activation),
                float(param), sum_g, sum_g_zc)
    return sum_g, sum_g_zc


def grad_input_from_output(dy: torch.Tensor, y: torch.Tensor, center: np.ndarray, activation: str, param: float,
                           k_dy: np.ndarray, k_x: np.ndarray, k_0: np.ndarray) -> torch.Tensor:
    """out = k_dy_c * g + k_x_c * (z - center_c) + k_0_c with z = act^-1(y), g = dy * act'(z)."""
    y = _dense(y, y)
    dy = _dense(dy, y)
    out = new_output_like(y)
    if y.numel():
        yv = _view(y)
        _launch(fk.grad_input_out_cf, fk.grad_input_out_rows, y, yv, _view(dy), yv, center, code(activation),
                float(param), k_dy, k_x, k_0, _view(out))
    return out
