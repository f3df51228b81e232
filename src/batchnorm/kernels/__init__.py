"""Thin dispatcher from torch tensors to the Numba kernels: layout, variant and thread-count decisions.

Routing (documented here and tested):
  * layout: a 2-D input (N, C) and a channels_last 4-D/5-D input run on the rows kernels (R, C) with
    R = N * spatial; a contiguous (N, C, *spatial) input on the channels-first kernels (N, C, S); anything
    else (sliced or permuted views) is first copied to contiguous memory (torch does the same);
  * variant: inputs with fewer than `config.PARALLEL_MIN_ELEMENTS` elements run single-threaded, larger
    ones on `torch.get_num_threads()` Numba threads;
  * a gradient `dy` is brought into the layout of its `x` before the kernels read both.

Only CPU float32/float64 tensors reach this module; `batchnorm.functional` routes everything else to torch.
Per-channel vectors are float64 NumPy arrays of length C.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from . import config
from . import numba_kernels as nk

__all__ = ["is_channels_last", "empty_output_like", "batch_stats", "affine", "grad_sums", "grad_input"]


def is_channels_last(x: torch.Tensor) -> bool:
    """True if x is a 4-D/5-D tensor stored channels_last (and not also plain contiguous)."""
    if x.dim() == 4:
        fmt = torch.channels_last
    elif x.dim() == 5:
        fmt = torch.channels_last_3d
    else:
        return False
    return x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if is_channels_last(x):
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


def empty_output_like(x: torch.Tensor) -> torch.Tensor:
    """The output tensor a kernel writes for input x: channels_last stays channels_last, all else contiguous."""
    return torch.empty_like(x, memory_format=_memory_format(x))


def _dense(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t in the memory layout the kernels use for `like` (a no-op when it already is)."""
    return t.contiguous(memory_format=_memory_format(like))


def _view(t: torch.Tensor) -> np.ndarray:
    """NumPy view of a dense tensor: (R, C) for 2-D and channels_last, (N, C, S) otherwise."""
    a = t.detach().numpy()
    if t.dim() == 2:
        return a
    if is_channels_last(t):
        return a.transpose((0,) + tuple(range(2, t.dim())) + (1,)).reshape(-1, t.shape[1])
    return a.reshape(t.shape[0], t.shape[1], -1)


def _variant(kernel, x: torch.Tensor):
    """The serial or the parallel compiled kernel for x, with Numba's thread count set to torch's."""
    serial, parallel = kernel
    if x.numel() < config.PARALLEL_MIN_ELEMENTS:
        return serial
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)
    return parallel


def _launch(channels_first, rows, x: torch.Tensor, xv: np.ndarray, *args) -> None:
    """Run the channels-first or the rows kernel (serial or parallel) for x, whose NumPy view is xv."""
    if xv.ndim == 3:
        _variant(channels_first, x)(*args)
        return
    kernel = _variant(rows, x)
    n_blocks = 1 if kernel is rows[0] else config.row_blocks(xv.shape[0], numba.get_num_threads())
    kernel(n_blocks, *args)


def batch_stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance of x (float64 arrays of length C); x must be non-empty."""
    x = _dense(x, x)
    xv = _view(x)
    mean = np.empty(x.shape[1])
    var = np.empty(x.shape[1])
    _launch(nk.stats_cf, nk.stats_rows, x, xv, xv, mean, var)
    return mean, var


def affine(x: torch.Tensor, center: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> torch.Tensor:
    """out = (x - center_c) * scale_c + shift_c, in the layout `empty_output_like(x)` gives."""
    x = _dense(x, x)
    out = empty_output_like(x)
    if x.numel():
        xv = _view(x)
        _launch(nk.affine_cf, nk.affine_rows, x, xv, xv, center, scale, shift, _view(out))
    return out


def grad_sums(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sum(dy)_c and sum(dy * (x - center_c))_c as float64 arrays of length C."""
    x = _dense(x, x)
    dy = _dense(dy, x)
    sum_dy = np.zeros(x.shape[1])
    sum_dy_xc = np.zeros(x.shape[1])
    if x.numel():
        xv = _view(x)
        _launch(nk.grad_sums_cf, nk.grad_sums_rows, x, xv, _view(dy), xv, center, sum_dy, sum_dy_xc)
    return sum_dy, sum_dy_xc


def grad_input(dy: torch.Tensor, x: torch.Tensor, center: np.ndarray, k_dy: np.ndarray, k_x: np.ndarray,
               k_0: np.ndarray) -> torch.Tensor:
    """out = k_dy_c * dy + k_x_c * (x - center_c) + k_0_c, in the layout of `empty_output_like(x)`."""
    x = _dense(x, x)
    dy = _dense(dy, x)
    out = empty_output_like(x)
    if x.numel():
        xv = _view(x)
        _launch(nk.grad_input_cf, nk.grad_input_rows, x, xv, _view(dy), xv, center, k_dy, k_x, k_0, _view(out))
    return out
