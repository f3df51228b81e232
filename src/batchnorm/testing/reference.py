"""Float64 NumPy reference of batch normalization: the oracle every kernel and layer is tested against.

Pure functions, no torch import. Inputs have the channel on axis 1: shape (N, C) or (N, C, ``*spatial``).
Statistics are per channel over the m = N * prod(spatial) values of that channel, computed in two passes
(mean first, then the mean of squared deviations), so they are exact to float64 rounding.

Formulas (Ioffe & Szegedy 2015, arXiv 1502.03167, Algorithms 1 and 2)::

    training:   mu_B = (1/m) sum_i x_i
                sigma2_B = (1/m) sum_i (x_i - mu_B)^2                (biased)
                x_hat_i = (x_i - mu_B) / sqrt(sigma2_B + eps)
                y_i = gamma * x_hat_i + beta
    inference:  y = gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta   (running statistics)
    running:    running_mean <- (1 - momentum) * running_mean + momentum * mu_B
                running_var  <- (1 - momentum) * running_var  + momentum * m/(m-1) * sigma2_B
                (momentum=None: cumulative average, factor 1/num_batches_tracked)

Backward pass in the compact form, with g = dL/dy::

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
    "update_running_moments",
    "update_running_stats_skip_nonfinite",
    "BatchRenormCache",
    "batch_renorm_limits",
    "batch_renorm_train_forward",
    "batch_renorm_backward",
    "GhostBatchNormCache",
    "ghost_batch_bounds",
    "ghost_batch_norm_train_forward",
    "ghost_batch_norm_backward",
    "ghost_running_moments",
    "MaskedBatchNormCache",
    "masked_batch_norm_train_forward",
    "masked_batch_norm_backward",
    "masked_running_moments",
    "frozen_batch_norm_forward",
    "frozen_batch_norm_backward",
]


class BatchNormCache(NamedTuple):
    """What the training forward pass keeps for the backward pass.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> _, cache = ref.batch_norm_train_forward(x)
        >>> cache.x_hat.shape, cache.count
        ((8, 3, 5), 40)
    """

    x_hat: np.ndarray  # normalized input, same shape as x
    inv_std: np.ndarray  # 1 / sqrt(sigma2_B + eps), shape (C,)
    mean: np.ndarray  # mu_B, shape (C,)
    var: np.ndarray  # sigma2_B (biased), shape (C,)
    count: int  # m, values per channel


class RunningStats(NamedTuple):
    """Running buffers after one update.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> stats = ref.update_running_stats(np.zeros(2), np.ones(2), 0, np.array([1.0, 2.0]), np.array([3.0, 3.0]), 4)
        >>> stats.num_batches_tracked
        1
    """

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
    """Two-pass per-channel mean and biased variance of x (N, C, ``*spatial``); returns (mean, var, m).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> mean, var, m = ref.batch_statistics(x)
        >>> m, bool(np.allclose(var, x.transpose(1, 0, 2).reshape(3, -1).var(axis=1)))
        (40, True)
    """
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
    """Training forward with batch statistics (Algorithm 1). Returns (y, BatchNormCache).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y, cache = ref.batch_norm_train_forward(x, weight=np.full(3, 2.0), bias=np.ones(3))
        >>> bool(np.allclose(y.mean(axis=(0, 2)), 1.0)), bool(np.allclose(y.std(axis=(0, 2)), 2.0, atol=1e-4))
        (True, True)
    """
    x = np.asarray(x, dtype=np.float64)
    mean, var, count = batch_statistics(x)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - _per_channel(mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    return _affine(x_hat, weight, bias), BatchNormCache(x_hat, inv_std, mean, var, count)


def batch_norm_eval_forward(x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5):
    """Inference forward with running statistics (Algorithm 2, step 11).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y = ref.batch_norm_eval_forward(x, np.zeros(3), np.ones(3), eps=0.0)
        >>> bool(np.allclose(y, x))
        True
    """
    x = np.asarray(x, dtype=np.float64)
    inv_std = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    x_hat = (x - _per_channel(running_mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    return _affine(x_hat, weight, bias)


def batch_norm_backward(grad_out, cache: BatchNormCache, weight=None):
    """Backward of the training forward in the compact form. Returns (dx, dgamma, dbeta).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y, cache = ref.batch_norm_train_forward(x)
        >>> dx, dgamma, dbeta = ref.batch_norm_backward(np.ones_like(y), cache)
        >>> bool(np.allclose(dx, 0.0)), dbeta       # a constant gradient does not reach x
        (True, array([40., 40., 40.]))
    """
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
    """Backward of the inference forward: statistics are constants. Returns (dx, dgamma, dbeta).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> dx, dgamma, dbeta = ref.batch_norm_eval_backward(np.ones_like(x), x, np.zeros(3), np.full(3, 4.0), eps=0.0)
        >>> float(dx.max())                          # 1 / sqrt(4)
        0.5
    """
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

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> stats = ref.update_running_stats(np.zeros(2), np.ones(2), 0, np.array([1.0, 2.0]), np.array([3.0, 3.0]),
        ...                                  count=4, momentum=0.5)
        >>> stats.running_mean, stats.running_var     # var stored unbiased: 3 * 4/3 = 4
        (array([0.5, 1. ]), array([2.5, 2.5]))
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


# ------------------------------------------------------------------------------------------------------------
# Statistics variants (batchnorm.nn.variants): the same transform, other sources of the statistics.
# ------------------------------------------------------------------------------------------------------------
def update_running_moments(running_mean, running_var, num_batches_tracked: int, mean, unbiased_var, count: int,
                           momentum: float | None = 0.1) -> RunningStats:
    """Running update from a mean and an already unbiased variance (the variants' pooled estimates).

    factor = momentum (or 1 / (num_batches_tracked + 1) when None); running <- (1 - factor) running + factor new.
    count 0 leaves the buffers unchanged and still counts the batch.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> ref.update_running_moments(np.zeros(1), np.ones(1), 0, np.array([2.0]), np.array([3.0]), 4, None)
        RunningStats(running_mean=array([2.]), running_var=array([3.]), num_batches_tracked=1)
    """
    tracked = int(num_batches_tracked) + 1
    running_mean = np.array(running_mean, dtype=np.float64)
    running_var = np.array(running_var, dtype=np.float64)
    if count == 0:
        return RunningStats(running_mean, running_var, tracked)
    factor = 1.0 / tracked if momentum is None else float(momentum)
    return RunningStats((1.0 - factor) * running_mean + factor * np.asarray(mean, dtype=np.float64),
                        (1.0 - factor) * running_var + factor * np.asarray(unbiased_var, dtype=np.float64), tracked)


def update_running_stats_skip_nonfinite(running_mean, running_var, num_batches_tracked: int, batch_mean, batch_var,
                                        count: int, momentum: float | None = 0.1) -> RunningStats:
    """`update_running_stats`, except that a batch whose mean or unbiased variance is not all finite changes
    nothing (not even num_batches_tracked): BatchNorm(skip_nonfinite=True).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> ref.update_running_stats_skip_nonfinite(np.zeros(1), np.ones(1), 5, np.array([np.nan]), np.ones(1), 4)
        RunningStats(running_mean=array([0.]), running_var=array([1.]), num_batches_tracked=5)
    """
    mean = np.asarray(batch_mean, dtype=np.float64)
    unbiased = np.asarray(batch_var, dtype=np.float64) * (count / (count - 1)) if count > 1 else np.full_like(mean, np.inf)
    if count > 0 and not (np.isfinite(mean).all() and np.isfinite(unbiased).all()):
        return RunningStats(np.array(running_mean, dtype=np.float64), np.array(running_var, dtype=np.float64),
                            int(num_batches_tracked))
    return update_running_stats(running_mean, running_var, num_batches_tracked, batch_mean, batch_var, count,
                                momentum)


# --- Batch Renormalization (Ioffe 2017, arXiv 1702.03275) ---------------------------------------------------
class BatchRenormCache(NamedTuple):
    """What the Batch Renorm training forward keeps for the backward pass.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> _, cache = ref.batch_renorm_train_forward(x, np.zeros(3), np.ones(3))
        >>> cache.r.shape, cache.d.shape
        ((3,), (3,))
    """

    x_hat: np.ndarray  # (x - mu_B) / sigma_B, before r and d
    inv_std: np.ndarray  # 1 / sigma_B = 1 / sqrt(sigma2_B + eps)
    mean: np.ndarray  # mu_B
    var: np.ndarray  # sigma2_B (biased)
    count: int  # m
    r: np.ndarray  # clip(sigma_B / sigma, 1/rmax, rmax)
    d: np.ndarray  # clip((mu_B - mu) / sigma, -dmax, dmax)


def batch_renorm_limits(step: int, rmax: float, dmax: float, warmup_steps: int, rmax_steps: int,
                        dmax_steps: int) -> tuple[float, float]:
    """The paper's schedule: (rmax_t, dmax_t) = (1, 0) up to step `warmup_steps` (steps count from 0), then
    linear growth reaching rmax at step `rmax_steps` and dmax at step `dmax_steps`, constant from there on.

    Example:
        >>> from batchnorm.testing import reference as ref
        >>> [ref.batch_renorm_limits(step, 3.0, 5.0, 10, 20, 30) for step in (0, 10, 15, 20, 40)]
        [(1.0, 0.0), (1.0, 0.0), (2.0, 1.25), (3.0, 2.5), (3.0, 5.0)]
    """
    def progress(end: int) -> float:
        if step >= end:
            return 1.0
        if step <= warmup_steps:
            return 0.0
        return (step - warmup_steps) / (end - warmup_steps)

    return 1.0 + (rmax - 1.0) * progress(rmax_steps), dmax * progress(dmax_steps)


def batch_renorm_train_forward(x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5,
                               rmax: float = 3.0, dmax: float = 5.0):
    """Batch Renorm training forward (Ioffe 2017, Algorithm 1) with sigma = sqrt(running_var + eps)::

        sigma_B = sqrt(sigma2_B + eps),  r = clip(sigma_B / sigma, 1/rmax, rmax),
        d = clip((mu_B - running_mean) / sigma, -dmax, dmax),
        y = gamma * ((x - mu_B) / sigma_B * r + d) + beta.

    The running statistics are updated afterwards as BatchNorm's (`update_running_stats`).
    Returns (y, BatchRenormCache).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y_renorm, _ = ref.batch_renorm_train_forward(x, np.zeros(3), np.ones(3), rmax=1.0, dmax=0.0)
        >>> y_bn, _ = ref.batch_norm_train_forward(x)
        >>> bool(np.allclose(y_renorm, y_bn))       # rmax = 1, dmax = 0: plain batch norm
        True
    """
    x = np.asarray(x, dtype=np.float64)
    mean, var, count = batch_statistics(x)
    sigma_batch = np.sqrt(var + eps)
    sigma = np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    r = np.clip(sigma_batch / sigma, 1.0 / rmax, rmax)
    d = np.clip((mean - np.asarray(running_mean, dtype=np.float64)) / sigma, -dmax, dmax)
    x_hat = (x - _per_channel(mean, x.ndim)) / _per_channel(sigma_batch, x.ndim)
    y = _affine(x_hat * _per_channel(r, x.ndim) + _per_channel(d, x.ndim), weight, bias)
    return y, BatchRenormCache(x_hat, 1.0 / sigma_batch, mean, var, count, r, d)


def batch_renorm_backward(grad_out, cache: BatchRenormCache, weight=None):
    """Backward of Batch Renorm with r and d held constant. Returns (dx, dgamma, dbeta).

        dbeta = sum g,  dgamma = sum g * (x_hat * r + d),  g_hat = g * gamma * r,
        dx = (1 / (m sigma_B)) * (m g_hat - sum g_hat - x_hat * sum(g_hat * x_hat)).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y, cache = ref.batch_renorm_train_forward(x, np.zeros(3), np.ones(3))
        >>> dx, dgamma, dbeta = ref.batch_renorm_backward(np.ones_like(y), cache)
        >>> dx.shape, dbeta
        ((8, 3, 5), array([40., 40., 40.]))
    """
    g = np.asarray(grad_out, dtype=np.float64)
    axes = _reduce_axes(g)
    r, d = _per_channel(cache.r, g.ndim), _per_channel(cache.d, g.ndim)
    gamma = np.ones_like(cache.inv_std) if weight is None else np.asarray(weight, dtype=np.float64)
    g_hat = g * _per_channel(gamma, g.ndim) * r
    m = max(cache.count, 1)
    dx = _per_channel(cache.inv_std / m, g.ndim) * (
        m * g_hat - g_hat.sum(axis=axes, keepdims=True) - cache.x_hat * (g_hat * cache.x_hat).sum(axis=axes, keepdims=True))
    return dx, (g * (cache.x_hat * r + d)).sum(axis=axes), g.sum(axis=axes)


# --- Ghost batch norm (Hoffer et al. 2017, arXiv 1705.08741) -----------------------------------------------
class GhostBatchNormCache(NamedTuple):
    """Chunk bounds and each chunk's BatchNormCache.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> _, cache = ref.ghost_batch_norm_train_forward(x, virtual_batch_size=4)
        >>> cache.bounds
        [(0, 4), (4, 8)]
    """

    bounds: list  # [(start, stop), ...] sample ranges
    caches: list  # BatchNormCache per chunk


def ghost_batch_bounds(batch_size: int, virtual_batch_size: int | None, values_per_sample: int) -> list:
    """Ghost batches: full chunks of `virtual_batch_size` samples, then the remainder as a chunk of its own,
    unless the remainder would hold one value per channel, in which case it joins the last full chunk.

    Example:
        >>> from batchnorm.testing import reference as ref
        >>> ref.ghost_batch_bounds(10, 4, values_per_sample=1)     # a remainder of 2 is its own chunk
        [(0, 4), (4, 8), (8, 10)]
        >>> ref.ghost_batch_bounds(9, 4, values_per_sample=1)      # a remainder of 1 joins the last chunk
        [(0, 4), (4, 9)]
    """
    if virtual_batch_size is None or batch_size <= virtual_batch_size:
        return [(0, batch_size)]
    full, remainder = divmod(batch_size, virtual_batch_size)
    bounds = [(k * virtual_batch_size, (k + 1) * virtual_batch_size) for k in range(full)]
    if remainder * values_per_sample == 1:
        bounds[-1] = (bounds[-1][0], batch_size)
    elif remainder:
        bounds.append((full * virtual_batch_size, batch_size))
    return bounds


def ghost_batch_norm_train_forward(x, virtual_batch_size: int | None, weight=None, bias=None, eps: float = 1e-5):
    """Ghost BN: each chunk of `ghost_batch_bounds` normalized with its own statistics (Algorithm 1 of the
    paper, per chunk). Returns (y, GhostBatchNormCache).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y, _ = ref.ghost_batch_norm_train_forward(x, virtual_batch_size=4)
        >>> bool(np.allclose(y[:4].mean(axis=(0, 2)), 0.0))    # each chunk is normalized on its own
        True
    """
    x = np.asarray(x, dtype=np.float64)
    values_per_sample = int(np.prod(x.shape[2:])) if x.ndim > 2 else 1
    bounds = ghost_batch_bounds(x.shape[0], virtual_batch_size, values_per_sample)
    y = np.empty_like(x)
    caches = []
    for start, stop in bounds:
        y[start:stop], cache = batch_norm_train_forward(x[start:stop], weight, bias, eps)
        caches.append(cache)
    return y, GhostBatchNormCache(bounds, caches)


def ghost_batch_norm_backward(grad_out, cache: GhostBatchNormCache, weight=None):
    """Backward of Ghost BN: each chunk's BatchNorm backward; gamma/beta gradients summed over chunks.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y, cache = ref.ghost_batch_norm_train_forward(x, virtual_batch_size=4)
        >>> dx, dgamma, dbeta = ref.ghost_batch_norm_backward(np.ones_like(y), cache)
        >>> bool(np.allclose(dx, 0.0)), dbeta
        (True, array([40., 40., 40.]))
    """
    g = np.asarray(grad_out, dtype=np.float64)
    dx = np.empty_like(g)
    dgamma = dbeta = 0.0
    for (start, stop), chunk_cache in zip(cache.bounds, cache.caches):
        dx[start:stop], chunk_dgamma, chunk_dbeta = batch_norm_backward(g[start:stop], chunk_cache, weight)
        dgamma, dbeta = dgamma + chunk_dgamma, dbeta + chunk_dbeta
    return dx, dgamma, dbeta


def ghost_running_moments(x, bounds) -> tuple[np.ndarray, np.ndarray, int]:
    """What Ghost BN averages into the running buffers: (mean of all values, pooled within-chunk unbiased
    variance sum_k sum_i (x_ki - mu_k)^2 / (m - K), m) for K non-empty chunks; m/(m-1) var_B for K = 1.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> mean, var, m = ref.ghost_running_moments(x, ref.ghost_batch_bounds(8, 4, 5))
        >>> m, bool(np.allclose(mean, x.mean(axis=(0, 2))))
        (40, True)
    """
    x = np.asarray(x, dtype=np.float64)
    axes = _reduce_axes(x)
    total = int(np.prod([x.shape[a] for a in axes]))
    squares = np.zeros(x.shape[1])
    chunks = 0
    for start, stop in bounds:
        chunk = x[start:stop]
        if chunk.size == 0:
            continue
        chunks += 1
        squares += ((chunk - _per_channel(chunk.mean(axis=axes), x.ndim)) ** 2).sum(axis=axes)
    unbiased = squares / (total - chunks) if total > chunks else np.full(x.shape[1], np.inf)
    return x.mean(axis=axes), unbiased, total


# --- Masked statistics (padded sequences) ---------------------------------------------------------------
class MaskedBatchNormCache(NamedTuple):
    """What the masked training forward keeps: x_hat (0 at padded positions), the valid-position weights,
    per-sample 1/sigma (of the sample's chunk, shape (N, C)), and each chunk's valid count per sample (N,).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> mask = np.arange(5) < np.array([5, 3, 2, 5, 1, 4, 5, 2])[:, None]
        >>> _, cache = ref.masked_batch_norm_train_forward(x, mask)
        >>> cache.count
        array([27., 27., 27., 27., 27., 27., 27., 27.])
    """

    x_hat: np.ndarray
    valid: np.ndarray  # 1.0 at valid positions, 0.0 at padded ones; shape (N, 1, L) or (N, 1)
    inv_std: np.ndarray  # (N, C): 1 / sqrt(var + eps) of the chunk each sample belongs to
    count: np.ndarray  # (N,): valid positions in the sample's chunk
    bounds: list


def masked_batch_norm_train_forward(x, mask, weight=None, bias=None, eps: float = 1e-5,
                                    virtual_batch_size: int | None = None):
    """BatchNorm over the valid positions of x (N, C, L) with mask (N, L) (or x (N, C), mask (N,))::

        m = sum(mask),  mu = sum_valid x / m,  sigma2 = sum_valid (x - mu)^2 / m,
        y = gamma (x - mu) / sqrt(sigma2 + eps) + beta at valid positions,  y = 0 at padded positions,

    per ghost chunk when `virtual_batch_size` is given (a chunk without valid positions outputs 0).
    Returns (y, MaskedBatchNormCache).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> mask = np.arange(5) < np.array([5, 3, 2, 5, 1, 4, 5, 2])[:, None]     # (N, L), True = valid
        >>> y, _ = ref.masked_batch_norm_train_forward(x, mask)
        >>> float(abs(y[1, :, 3:]).max())             # padded positions output 0
        0.0
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.asarray(mask, dtype=np.float64)[:, None, ...]
    per_sample = x.shape[2] if x.ndim == 3 else 1
    bounds = ghost_batch_bounds(x.shape[0], virtual_batch_size, per_sample)
    axes = _reduce_axes(x)
    x_hat = np.zeros_like(x)
    inv_std = np.ones((x.shape[0], x.shape[1]))
    count = np.zeros(x.shape[0])
    for start, stop in bounds:
        xs, vs = x[start:stop], valid[start:stop]
        m = vs.sum()
        count[start:stop] = m
        if m == 0:
            continue
        mean = (xs * vs).sum(axis=axes) / m
        centered = xs - _per_channel(mean, x.ndim)
        var = (centered ** 2 * vs).sum(axis=axes) / m
        inv_std[start:stop] = 1.0 / np.sqrt(var + eps)
        x_hat[start:stop] = centered * _per_channel(1.0 / np.sqrt(var + eps), x.ndim) * vs
    y = _affine(x_hat, weight, bias) * valid
    return y, MaskedBatchNormCache(x_hat, valid, inv_std, count, bounds)


def masked_batch_norm_backward(grad_out, cache: MaskedBatchNormCache, weight=None):
    """Backward of the masked forward: gradients only from and to valid positions. Returns (dx, dgamma, dbeta).

        g_v = g * valid,  dbeta = sum g_v,  dgamma = sum g_v x_hat,
        dx = valid * gamma / (m sigma) * (m g_v - sum_chunk g_v - x_hat sum_chunk(g_v x_hat)).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> mask = np.arange(5) < np.array([5, 3, 2, 5, 1, 4, 5, 2])[:, None]
        >>> y, cache = ref.masked_batch_norm_train_forward(x, mask)
        >>> dx, dgamma, dbeta = ref.masked_batch_norm_backward(np.ones_like(y), cache)
        >>> dbeta                                     # 27 valid positions per channel
        array([27., 27., 27.])
    """
    g = np.asarray(grad_out, dtype=np.float64) * cache.valid
    axes = _reduce_axes(g)
    gamma = np.ones(g.shape[1]) if weight is None else np.asarray(weight, dtype=np.float64)
    dx = np.zeros_like(g)
    for start, stop in cache.bounds:
        m = cache.count[start]
        if m == 0:
            continue
        gs, xh = g[start:stop], cache.x_hat[start:stop]
        scale = _per_channel(gamma * cache.inv_std[start] / m, g.ndim)
        dx[start:stop] = scale * (m * gs - gs.sum(axis=axes, keepdims=True)
                                  - xh * (gs * xh).sum(axis=axes, keepdims=True)) * cache.valid[start:stop]
    return dx, (g * cache.x_hat).sum(axis=axes), g.sum(axis=axes)


def masked_running_moments(x, mask, bounds) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean of the valid values, pooled within-chunk unbiased variance over valid values, valid count).

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> mask = np.arange(5) < np.array([5, 3, 2, 5, 1, 4, 5, 2])[:, None]
        >>> mean, var, m = ref.masked_running_moments(x, mask, [(0, 8)])
        >>> m, bool(np.isclose(mean[0], x[:, 0][mask].mean()))
        (27, True)
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.asarray(mask, dtype=np.float64)[:, None, ...]
    axes = _reduce_axes(x)
    total = int(valid.sum())
    if total == 0:
        return np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan), 0
    squares = np.zeros(x.shape[1])
    chunks = 0
    for start, stop in bounds:
        xs, vs = x[start:stop], valid[start:stop]
        m = vs.sum()
        if m == 0:
            continue
        chunks += 1
        mean = (xs * vs).sum(axis=axes) / m
        squares += ((xs - _per_channel(mean, x.ndim)) ** 2 * vs).sum(axis=axes)
    unbiased = squares / (total - chunks) if total > chunks else np.full(x.shape[1], np.inf)
    return (x * valid).sum(axis=axes) / total, unbiased, total


# --- Frozen statistics ----------------------------------------------------------------------------------
def frozen_batch_norm_forward(x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5):
    """Frozen BN (FrozenBatchNorm*, BatchNorm(freeze_stats=True)) in training and inference: the inference
    formula y = gamma (x - running_mean) / sqrt(running_var + eps) + beta; the buffers never change.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> y = ref.frozen_batch_norm_forward(x, np.full(3, 1.0), np.full(3, 4.0), eps=0.0)
        >>> bool(np.allclose(y, (x - 1.0) / 2.0))
        True
    """
    return batch_norm_eval_forward(x, running_mean, running_var, weight, bias, eps)


def frozen_batch_norm_backward(grad_out, x, running_mean, running_var, weight=None, eps: float = 1e-5):
    """Backward of frozen BN: statistics are constants, dx = gamma g / sqrt(running_var + eps).
    Returns (dx, dgamma, dbeta); dgamma and dbeta apply only when the affine parameters are trainable.

    Example:
        >>> import numpy as np
        >>> from batchnorm.testing import reference as ref
        >>> x = np.random.default_rng(0).standard_normal((8, 3, 5))
        >>> dx, dgamma, dbeta = ref.frozen_batch_norm_backward(np.ones_like(x), x, np.zeros(3), np.full(3, 4.0),
        ...                                                    eps=0.0)
        >>> float(dx.max()), dbeta
        (0.5, array([40., 40., 40.]))
    """
    return batch_norm_eval_backward(grad_out, x, running_mean, running_var, weight, eps)
