"""Float64 NumPy reference of batch normalization: the oracle every kernel and layer is tested against.

Pure functions, no torch import. Inputs have the channel on axis 1: shape (N, C) or (N, C, *spatial).
Statistics are per channel over the m = N * prod(spatial) values of that channel, computed in two passes
(mean first, then the mean of squared deviations), so they are exact to float64 rounding.

Formulas (Ioffe & Szegedy 2015, arXiv 1502.03167, Algorithms 1 and 2):

    training:   mu_B = (1/m) sum_i x_i
                sigma2_B = (1/m) sum_i (x_i - mu_B)^2                (biased)
                x_hat_i = (x_i - mu_B) / sqrt(sigma2_B + eps)
                y_i = gamma * x_hat_i + beta
    inference:  y = gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta   (running statistics)
    running:    running_mean <- (1 - momentum) * running_mean + momentum * mu_B
                running_var  <- (1 - momentum) * running_var  + momentum * m/(m-1) * sigma2_B
                (momentum=None: cumulative average, factor 1/num_batches_tracked)

Backward pass in the compact form, with g = dL/dy:

    dbeta  = sum_i g_i
    dgamma = sum_i g_i * x_hat_i
    dx_i   = gamma / (m * sqrt(sigma2_B + eps)) * (m * g_i - dbeta - x_hat_i * dgamma)

and in inference (statistics are constants): dx_i = gamma * g_i / sqrt(Var[x] + eps).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "BatchNormCache",
    "RunningStats",
    "batch_statistics",
    "batch_norm_train_forward",
    "batch_norm_eval_forward",
    "batch_norm_backward",
    "batch_norm_eval_backward",
    "update_running_stats",
]


class BatchNormCache(NamedTuple):
    """What the training forward pass keeps for the backward pass."""

    x_hat: np.ndarray  # normalized input, same shape as x
    inv_std: np.ndarray  # 1 / sqrt(sigma2_B + eps), shape (C,)
    mean: np.ndarray  # mu_B, shape (C,)
    var: np.ndarray  # sigma2_B (biased), shape (C,)
    count: int  # m, values per channel


class RunningStats(NamedTuple):
    """Running buffers after one update."""

    running_mean: np.ndarray
    running_var: np.ndarray
    num_batches_tracked: int


def _reduce_axes(x: np.ndarray) -> tuple[int, ...]:
    if x.ndim < 2:
        raise ValueError(f"x must have shape (N, C, *spatial), got shape {x.shape}")
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a (C,) vector so that it broadcasts along axis 1 of an ndim-dimensional array."""
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def batch_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Two-pass per-channel mean and biased variance of x (N, C, *spatial); returns (mean, var, m)."""
    x = np.asarray(x, dtype=np.float64)
    axes = _reduce_axes(x)
    count = int(np.prod([x.shape[a] for a in axes]))
    if count == 0:
        nan = np.full(x.shape[1], np.nan)
        return nan, nan.copy(), 0
    mean = x.mean(axis=axes)
    var = ((x - _per_channel(mean, x.ndim)) ** 2).mean(axis=axes)
    return mean, var, count


def _affine(x_hat: np.ndarray, weight, bias) -> np.ndarray:
    y = x_hat
    if weight is not None:
        y = y * _per_channel(weight, x_hat.ndim)
    if bias is not None:
        y = y + _per_channel(bias, x_hat.ndim)
    return y


def batch_norm_train_forward(x, weight=None, bias=None, eps: float = 1e-5):
    """Training forward with batch statistics (Algorithm 1). Returns (y, BatchNormCache)."""
    x = np.asarray(x, dtype=np.float64)
    mean, var, count = batch_statistics(x)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    return _affine(x_hat, weight, bias), BatchNormCache(x_hat, inv_std, mean, var, count)


def batch_norm_eval_forward(x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5):
    """Inference forward with running statistics (Algorithm 2, step 11)."""
    x = np.asarray(x, dtype=np.float64)
    inv_std = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    x_hat = (x - _per_channel(running_mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    return _affine(x_hat, weight, bias)


def batch_norm_backward(grad_out, cache: BatchNormCache, weight=None):
    """Backward of the training forward in the compact form. Returns (dx, dgamma, dbeta)."""
    g = np.asarray(grad_out, dtype=np.float64)
    axes = _reduce_axes(g)
    dbeta = g.sum(axis=axes)
    dgamma = (g * cache.x_hat).sum(axis=axes)
    gamma = np.ones_like(cache.inv_std) if weight is None else np.asarray(weight, dtype=np.float64)
    m = max(cache.count, 1)
    scale = _per_channel(gamma * cache.inv_std / m, g.ndim)
    dx = scale * (m * g - _per_channel(dbeta, g.ndim) - cache.x_hat * _per_channel(dgamma, g.ndim))
    return dx, dgamma, dbeta


def batch_norm_eval_backward(grad_out, x, running_mean, running_var, weight=None, eps: float = 1e-5):
    """Backward of the inference forward: statistics are constants. Returns (dx, dgamma, dbeta)."""
    g = np.asarray(grad_out, dtype=np.float64)
    axes = _reduce_axes(g)
    inv_std = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    x_hat = (np.asarray(x, dtype=np.float64) - _per_channel(running_mean, g.ndim)) * _per_channel(inv_std, g.ndim)
    gamma = np.ones_like(inv_std) if weight is None else np.asarray(weight, dtype=np.float64)
    dx = g * _per_channel(gamma * inv_std, g.ndim)
    return dx, (g * x_hat).sum(axis=axes), g.sum(axis=axes)


def update_running_stats(running_mean, running_var, num_batches_tracked: int, batch_mean, batch_var,
                         count: int, momentum: float | None = 0.1) -> RunningStats:
    """One running-statistics update from a batch's mean and biased variance over `count` values.

    factor = momentum, or 1 / (num_batches_tracked + 1) when momentum is None (cumulative average);
    running_mean <- (1 - factor) running_mean + factor mu_B;
    running_var  <- (1 - factor) running_var + factor * count/(count-1) * sigma2_B.
    An empty batch (count 0) leaves the buffers unchanged but still counts as a tracked batch,
    as torch does.
    """
    tracked = int(num_batches_tracked) + 1
    running_mean = np.asarray(running_mean, dtype=np.float64)
    running_var = np.asarray(running_var, dtype=np.float64)
    if count == 0:
        return RunningStats(running_mean.copy(), running_var.copy(), tracked)
    factor = 1.0 / tracked if momentum is None else float(momentum)
    unbiased = np.asarray(batch_var, dtype=np.float64) * (count / (count - 1)) if count > 1 else np.full_like(running_var, np.inf)
    new_mean = (1.0 - factor) * running_mean + factor * np.asarray(batch_mean, dtype=np.float64)
    new_var = (1.0 - factor) * running_var + factor * unbiased
    return RunningStats(new_mean, new_var, tracked)
