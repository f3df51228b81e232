"""Entry points of the batch-norm kernels (and BN + activation): torch tensors in, routed by `dispatch`.

The four primitives (`batch_stats`, `affine`, `grad_sums`, `grad_input`) serve the custom ops (the
`torch.compile` path) and the variants; the whole-pass entry points (`train_forward`, `normalize`,
`train_backward`) do a layer's pass in one kernel call and serve the eager `batchnorm.functional.batch_norm`:
  * channels-first with at least `config.FUSED_MIN_CHANNELS_PER_THREAD` channels per thread: one block of
    channels at a time per thread (`config.channel_blocks`: statistics, then the normalize/dx sweep while the
    block is still in the cache);
  * channels-first with fewer channels (e.g. C=1 with a large image): statistics parallel over (sample,
    channel block) pairs, then the transform, through the four primitives;
  * rows: row blocks in parallel, partial sums per block, then the transform over the same blocks.
Optional per-channel tensors (weight, bias, running buffers) must be contiguous 1-D CPU tensors or None;
running buffers are updated in place by the kernel. A gradient `dy` is brought into the layout of its `x`
before the kernels read both.

Every entry point takes an activation name and its parameter (`activations.ACTIVATIONS`, "identity" by
default), applied where the output is written; the backward entry points recompute the pre-activation.
Only CPU float32/float64 tensors reach this module; `batchnorm.functional` routes everything else to torch.
Per-channel vectors returned or taken by the primitives are float64 NumPy arrays of length C.
"""

from __future__ import annotations

import numpy as np
import torch

from . import config
from .activations import code
from .algebra import float64_vector, input_grad_coefficients, inv_std, scale_shift, unbiased_variance, update_running
from .dispatch import (ABSENT, NUMPY_DTYPE, array, call, channel_blocks, dense, dense_rows, fused_channels_first,
                       launch, new_like, new_output_like, output_for, threads_for, vector, view)
from .numba import batch_norm as nk

def batch_stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x (float64 arrays of length C); x must be non-empty."""
    x = dense(x, x)
    xv = view(x)
    mean = np.empty(x.shape[1])
    var = np.empty(x.shape[1])
    launch(nk.stats_cf, nk.stats_rows, x, xv, xv, mean, var)
    return mean, var


def affine(x: torch.Tensor, center: np.ndarray, scale: np.ndarray, shift: np.ndarray, activation: str = "identity",
           param: float = 0.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """out = act((x - center_c) * scale_c + shift_c), by default in the layout `empty_output_like(x)` gives;
    `out` may be x itself (dense) for an in-place update."""
    x = dense(x, x)
    out = new_output_like(x) if out is None else out
    if x.numel():
        xv = view(x)
        launch(nk.affine_cf, nk.affine_rows, x, xv, xv, center, scale, shift, code(activation), float(param),
               view(out))
    return out


def _identity_affine(scale, shift, channels: int):
    """(scale, shift) for the kernels' z; only an activation reads them (ones and zeros when absent)."""
    return (np.ones(channels) if scale is None else scale), (np.zeros(channels) if shift is None else shift)


def grad_sums(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray, scale: np.ndarray | None = None,
              shift: np.ndarray | None = None, activation: str = "identity",
              param: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """sum(g)_c and sum(g * (x - center_c))_c as float64 arrays of length C, with g = dy * act'(z) and
    z = (x - center_c) * scale_c + shift_c (g = dy for the identity, which needs no scale/shift)."""
    x = dense(x, x)
    dy = dense(dy, x)
    sum_dy = np.zeros(x.shape[1])
    sum_dy_xc = np.zeros(x.shape[1])
    if x.numel():
        xv = view(x)
        scale, shift = _identity_affine(scale, shift, x.shape[1])
        launch(nk.grad_sums_cf, nk.grad_sums_rows, x, xv, view(dy), xv, center, scale, shift, code(activation),
               float(param), sum_dy, sum_dy_xc)
    return sum_dy, sum_dy_xc


def grad_input(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray, k_dy: np.ndarray, k_x: np.ndarray,
               k_0: np.ndarray, scale: np.ndarray | None = None, shift: np.ndarray | None = None,
               activation: str = "identity", param: float = 0.0) -> torch.Tensor:
    """out = k_dy_c * g + k_x_c * (x - center_c) + k_0_c (g as in `grad_sums`), in the layout of
    `empty_output_like(x)`. With k_x = k_0 = 0 (fixed statistics) out = k_dy_c * g, never 0 * a NaN/inf input."""
    x = dense(x, x)
    dy = dense(dy, x)
    out = new_output_like(x)
    if x.numel():
        xv = view(x)
        scale, shift = _identity_affine(scale, shift, x.shape[1])
        batch_stats = bool(np.any(k_x) or np.any(k_0))
        launch(nk.grad_input_cf, nk.grad_input_rows, x, xv, view(dy), xv, center, scale, shift, k_dy, k_x, k_0,
               batch_stats, code(activation), float(param), view(out))
    return out


def _written_in_place(*tensors) -> None:
    """Tell autograd that a kernel changed these tensors through their NumPy views (their version counters), as
    torch's in-place operations do."""
    for t in tensors:
        if isinstance(t, torch.Tensor):
            torch.autograd.graph.increment_version(t)


def train_forward(x: torch.Tensor, weight, bias, eps: float, momentum: float = 0.0, running_mean=None,
                  running_var=None, activation: str = "identity", param: float = 0.0,
                  out: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(y, mean, var): batch statistics (float64 NumPy, biased variance), running update, normalized output.

    y = act((x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c), written to `out` if given (x itself is
    allowed: every block's statistics are complete before it is overwritten), else to a new tensor. The running
    buffers (if given) are updated in place: running <- (1 - momentum) * running + momentum * batch, with the
    unbiased variance (their version counters move, as with torch's in-place operations). An empty batch gives an
    empty y, mean 0 and var 1, and leaves the running buffers alone.
    """
    x, rows = dense_rows(x)
    channels = x.shape[1]
    y, yv = output_for(x, out, rows)
    numel = x.numel()
    if numel == 0:
        return y, np.zeros(channels), np.ones(channels)
    xv = array(x, rows)
    mean = np.empty(channels)
    var = np.empty(channels)
    dtype = xv.dtype
    w, b = vector(weight, dtype), vector(bias, dtype)
    rm, rv = vector(running_mean, dtype), vector(running_var, dtype)
    threads = threads_for(numel)
    act = code(activation)
    if rows:
        n_blocks = 1 if threads == 1 else config.row_blocks(xv.shape[0], threads)
        call(nk.train_forward_rows, threads, n_blocks, xv, w, b, float(eps), float(momentum), rm, rv, act,
             float(param), yv, mean, var)
        _written_in_place(running_mean, running_var)
        return y, mean, var
    if fused_channels_first(threads, channels):
        call(nk.train_forward_cf, threads, channel_blocks(xv, threads), xv, w, b, float(eps), float(momentum), rm,
             rv, act, float(param), yv, mean, var)
        _written_in_place(running_mean, running_var)
        return y, mean, var
    mean, var = batch_stats(x)
    update_running(running_mean, running_var, mean, unbiased_variance(var, numel // channels), momentum)
    scale, shift = scale_shift(var, w if w.size else None, b if b.size else None, eps)
    return affine(x, mean, scale, shift, activation, param, out=y), mean, var


def normalize(x: torch.Tensor, mean, var, weight, bias, eps: float, activation: str = "identity",
              param: float = 0.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """y = act((x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c) with given statistics (tensors or arrays),
    written to `out` if given (x itself is allowed), else to a new tensor."""
    x, rows = dense_rows(x)
    y, yv = output_for(x, out, rows)
    numel = x.numel()
    if numel == 0:
        return y
    xv = array(x, rows)
    dtype = xv.dtype
    args = (vector(mean, dtype), vector(var, dtype), vector(weight, dtype), vector(bias, dtype), float(eps),
            code(activation), float(param), yv)
    threads = threads_for(numel)
    if rows:
        call(nk.normalize_rows, threads, 1 if threads == 1 else config.row_blocks(xv.shape[0], threads), xv, *args)
    else:
        call(nk.normalize_cf, threads, config.sample_blocks(xv.shape[0], xv.shape[1], threads), xv, *args)
    return y


def train_backward(dy: torch.Tensor, x: torch.Tensor, mean: np.ndarray, var: np.ndarray, weight, eps: float,
                   batch_stats: bool, need_dx: bool = True, need_dweight: bool = True, bias=None,
                   activation: str = "identity", param: float = 0.0):
    """(dx or None, dweight or None, dbias) of y = act(z), z = (x - mean) / sqrt(var + eps) * weight + bias.

    With g = dy * act'(z) (z recomputed from x, weight and bias; g = dy for the identity), inv_std =
    1 / sqrt(var + eps), m values per channel: dbias = sum g, dweight = inv_std * sum g (x - mean), and
    dx = k_dy g + k_x (x - mean) + k_0 where k_dy = weight * inv_std and, when `batch_stats` (mean, var are
    x's own statistics), k_x = -k_dy inv_std^2 sum g (x - mean) / m, k_0 = -k_dy sum g / m; otherwise
    dx = k_dy g (a NaN/inf input element never turns its gradient into 0 * NaN, as torch). `mean`, `var` are
    float64 arrays. dweight and dbias have weight's dtype (x's when weight is None).
    """
    x, rows = dense_rows(x)
    channels = x.shape[1]
    param_dtype = NUMPY_DTYPE[x.dtype if weight is None else weight.dtype]
    numel = x.numel()
    if numel == 0:
        dweight = torch.zeros(channels, dtype=weight.dtype if weight is not None else x.dtype)
        return (new_like(x, rows)[0] if need_dx else None), (dweight if need_dweight else None), \
            torch.zeros_like(dweight)
    threads = threads_for(numel)
    fused = rows or fused_channels_first(threads, channels)  # else dx comes from `grad_input` below
    dx, dxv = new_like(x, rows) if need_dx and fused else (None, None)
    dbias_np = np.empty(channels, param_dtype)
    dweight_np = np.empty(channels, param_dtype) if need_dweight else ABSENT[param_dtype]
    if dy.stride() != x.stride():
        dy = dy.contiguous(memory_format=torch.channels_last if rows and x.dim() == 4 else
                           torch.channels_last_3d if rows and x.dim() == 5 else torch.contiguous_format)
    xv = array(x, rows)
    np_dtype = xv.dtype
    args = (array(dy, rows), xv, mean, var, vector(weight, np_dtype), vector(bias, np_dtype), float(eps),
            bool(batch_stats), code(activation), float(param),
            dxv if dx is not None else np.empty((0,) * xv.ndim, np_dtype), dweight_np, dbias_np)
    dbias = torch.from_numpy(dbias_np)
    dweight = torch.from_numpy(dweight_np) if need_dweight else None
    if rows:
        call(nk.train_backward_rows, threads, 1 if threads == 1 else config.row_blocks(xv.shape[0], threads),
             *args)
        return dx, dweight, dbias
    if fused:
        call(nk.train_backward_cf, threads, channel_blocks(xv, threads), *args)
        return dx, dweight, dbias
    scale, shift = scale_shift(var, weight, bias, eps)
    sum_dy, sum_dy_xc = grad_sums(dy, x, mean, scale, shift, activation, param)
    inverse = inv_std(var, eps)
    dbias.copy_(torch.from_numpy(sum_dy))
    if dweight is not None:
        dweight.copy_(torch.from_numpy(sum_dy_xc * inverse))
    if need_dx:
        gamma = float64_vector(weight, channels, 1.0)
        k_dy, k_x, k_0 = input_grad_coefficients(sum_dy, sum_dy_xc, inverse, gamma, numel // channels, batch_stats)
        dx = grad_input(dy, x, mean, k_dy, k_x, k_0, scale, shift, activation, param)
    return dx, dweight, dbias
