"""Numba CPU kernels: the four per-channel primitives every batch-norm layer is built from.

Two memory layouts, both C-contiguous NumPy arrays:
  * channels-first  `x3` of shape (N, C, S): NCL, NCHW, NCDHW with the spatial dims flattened into S;
  * rows            `x2` of shape (R, C):    (N, C) input, and channels_last NHWC/NDHWC with R = N*H*W(*D).

The primitives (c is the channel, sums run over all other positions):
  stats        mean_c, var_c (biased) in one read of x from shifted sums d = x - shift_c,
               mean = shift + sum(d)/m, var = sum(d^2)/m - (sum(d)/m)^2, so that an offset of 1e4 costs no
               precision. Channels-first: float64 sums, shift = the channel's first value. Rows: sums over
               ROW_FOLD rows in x's dtype (vectorized across channels) folded into float64, shift = mean of
               the first SHIFT_ROWS rows (float32 variance to about 1e-6 relative; float64 exact);
  affine       out = (x - center_c) * scale_c + shift_c;
  grad_sums    sum(dy)_c and sum(dy * (x - center_c))_c in one read of dy and x (float64 accumulation as stats);
  grad_input   out = k_dy_c * dy + k_x_c * (x - center_c) + k_0_c.
x - center is computed as (x - center_hi) - center_lo with the center split into its x-dtype rounding and the
remainder, so that float32 data far from zero keep their digits in y and dx.

Fused kernels (one call per layer and pass; the per-channel algebra happens inside them):
  train_forward     stats + running-statistics update + normalize. The channels-first version works one
                    channel at a time per thread, so the second read of x (to normalize) comes from the cache:
                    x is read once from memory, y written once;
  normalize         y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c from given statistics (inference);
  train_backward    both gradient sums, dweight, dbias, and dx in the same per-channel sweep (the second read
                    of dy and x again from the cache in the channels-first version).
Optional per-channel arrays (weight, bias, running buffers, dx, dweight) are passed as length-0 arrays when
absent. Elementwise work goes through `_affine_value`/`_grad_value` so that fused activations can be added
in one place later.

Rows kernels take `n_blocks`, the number of row blocks that run in parallel (each keeps C partial sums).
Each primitive is compiled twice from the same Python function: a parallel version (prange over rows or
blocks) and a serial one for small inputs. Kernels take arrays and scalars only; the dispatcher in
`batchnorm.kernels` chooses layout, dtype and variant.
"""

import types

import numba
import numpy as np
from numba import prange

from .config import NJIT_ELEMENTWISE, NJIT_INLINE, NJIT_PARALLEL, NJIT_SERIAL, ROW_FOLD, SHIFT_ROWS


@numba.njit(**NJIT_INLINE)
def _clip_variance(v):
    """Negative rounding residue -> 0; NaN stays NaN."""
    return v if v > 0.0 else (v if v != v else 0.0)


@numba.njit(**NJIT_INLINE)
def _optional(values, c, default):
    """values[c] as float64, or `default` when the optional array is absent (length 0)."""
    return np.float64(values[c]) if values.shape[0] else default


@numba.njit(**NJIT_INLINE)
def _update_running(running_mean, running_var, c, mean, var, count, momentum):
    """running <- (1 - momentum) * running + momentum * batch (unbiased variance), when the buffers exist."""
    if count == 0:
        return
    if running_mean.shape[0]:
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
    if running_var.shape[0]:
        unbiased = var * count / (count - 1) if count > 1 else np.inf
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * unbiased


# The center of a float32 channel is split into center_hi (its float32 rounding) and center_lo (the rest), so
# that x - center keeps float64 accuracy where it matters: x - center_hi is exact for x near the mean (Sterbenz),
# which is what keeps a +1e4 offset from costing digits in y and dx. These helpers are compiled without
# 'reassoc' (LLVM keeps per-instruction flags when it inlines them), so (x - hi) - lo is never re-associated
# into x - (hi + lo).
@numba.njit(**NJIT_ELEMENTWISE)
def _affine_value(v, center_hi, center_lo, scale, shift):
    """The forward's elementwise map ((x - center) * scale + shift; the place where a fused activation goes)."""
    return ((v - center_hi) - center_lo) * scale + shift


@numba.njit(**NJIT_ELEMENTWISE)
def _centered(v, center_hi, center_lo):
    """x - center, from the hi/lo split."""
    return (v - center_hi) - center_lo


@numba.njit(**NJIT_ELEMENTWISE)
def _grad_value(g, v, center_hi, center_lo, k_dy, k_x, k_0):
    """The backward's elementwise map dx = k_dy * dy + k_x * (x - center) + k_0."""
    return k_dy * g + k_x * ((v - center_hi) - center_lo) + k_0


# ----------------------------------------------------------------------------------------- channels-first
def _stats_cf(x, mean, var):
    n_batch, n_chan, n_space = x.shape
    s1 = np.empty((n_batch, n_chan))
    s2 = np.empty((n_batch, n_chan))
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        shift = np.float64(x[0, c, 0])
        a1 = 0.0
        a2 = 0.0
        for s in range(n_space):
            d = np.float64(x[b, c, s]) - shift
            a1 += d
            a2 += d * d
        s1[b, c] = a1
        s2[b, c] = a2
    count = n_batch * n_space
    for c in prange(n_chan):
        a1 = 0.0
        a2 = 0.0
        for b in range(n_batch):
            a1 += s1[b, c]
            a2 += s2[b, c]
        d_mean = a1 / count
        mean[c] = np.float64(x[0, c, 0]) + d_mean
        v = a2 / count - d_mean * d_mean
        var[c] = v if v > 0.0 else (v if v != v else 0.0)  # clip negatives, keep NaN


def _affine_cf(x, center, scale, shift, out):
    n_batch, n_chan, n_space = x.shape
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        hi = x.dtype.type(center[c])
        lo = x.dtype.type(center[c] - np.float64(hi))
        k = x.dtype.type(scale[c])
        t = x.dtype.type(shift[c])
        xb = x[b, c]
        ob = out[b, c]
        for s in range(n_space):
            ob[s] = _affine_value(xb[s], hi, lo, k, t)


def _grad_sums_cf(dy, x, center, sum_dy, sum_dy_xc):
    n_batch, n_chan, n_space = x.shape
    p1 = np.empty((n_batch, n_chan))
    p2 = np.empty((n_batch, n_chan))
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        m = center[c]
        a1 = 0.0
        a2 = 0.0
        for s in range(n_space):
            g = np.float64(dy[b, c, s])
            a1 += g
            a2 += g * (np.float64(x[b, c, s]) - m)
        p1[b, c] = a1
        p2[b, c] = a2
    for c in prange(n_chan):
        a1 = 0.0
        a2 = 0.0
        for b in range(n_batch):
            a1 += p1[b, c]
            a2 += p2[b, c]
        sum_dy[c] = a1
        sum_dy_xc[c] = a2


def _grad_input_cf(dy, x, center, k_dy, k_x, k_0, out):
    n_batch, n_chan, n_space = x.shape
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        hi = x.dtype.type(center[c])
        lo = x.dtype.type(center[c] - np.float64(hi))
        a = x.dtype.type(k_dy[c])
        k = x.dtype.type(k_x[c])
        t = x.dtype.type(k_0[c])
        gb = dy[b, c]
        xb = x[b, c]
        ob = out[b, c]
        for s in range(n_space):
            ob[s] = _grad_value(gb[s], xb[s], hi, lo, a, k, t)


# ------------------------------------------------------------------------------ channels-first, fused
def _train_forward_cf(x, weight, bias, eps, momentum, running_mean, running_var, y, mean, var):
    n_batch, n_chan, n_space = x.shape
    count = n_batch * n_space
    for c in prange(n_chan):
        shift = np.float64(x[0, c, 0])
        a1 = 0.0
        a2 = 0.0
        for b in range(n_batch):
            xb = x[b, c]
            for s in range(n_space):
                d = np.float64(xb[s]) - shift
                a1 += d
                a2 += d * d
        d_mean = a1 / count
        m = shift + d_mean
        v = _clip_variance(a2 / count - d_mean * d_mean)
        mean[c] = m
        var[c] = v
        _update_running(running_mean, running_var, c, m, v, count, momentum)
        k64 = _optional(weight, c, 1.0) / np.sqrt(v + eps)
        hi = x.dtype.type(m)
        lo = x.dtype.type(m - np.float64(hi))
        scale = x.dtype.type(k64)
        offset = x.dtype.type(_optional(bias, c, 0.0))
        for b in range(n_batch):
            xb = x[b, c]
            yb = y[b, c]
            for s in range(n_space):
                yb[s] = _affine_value(xb[s], hi, lo, scale, offset)


def _normalize_cf(x, mean, var, weight, bias, eps, y):
    n_batch, n_chan, n_space = x.shape
    hi = np.empty(n_chan, x.dtype)
    lo = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    for c in range(n_chan):
        hi[c] = mean[c]
        lo[c] = np.float64(mean[c]) - np.float64(hi[c])
        scale[c] = _optional(weight, c, 1.0) / np.sqrt(np.float64(var[c]) + eps)
        offset[c] = _optional(bias, c, 0.0)
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        h = hi[c]
        low = lo[c]
        k = scale[c]
        t = offset[c]
        xb = x[b, c]
        yb = y[b, c]
        for s in range(n_space):
            yb[s] = _affine_value(xb[s], h, low, k, t)


def _train_backward_cf(dy, x, mean, var, weight, eps, batch_stats, dx, dweight, dbias):
    n_batch, n_chan, n_space = x.shape
    count = max(n_batch * n_space, 1)
    for c in prange(n_chan):
        m = mean[c]
        a1 = 0.0
        a2 = 0.0
        if batch_stats or dweight.shape[0]:
            for b in range(n_batch):
                gb = dy[b, c]
                xb = x[b, c]
                for s in range(n_space):
                    g = np.float64(gb[s])
                    a1 += g
                    a2 += g * (np.float64(xb[s]) - m)
        else:
            for b in range(n_batch):
                gb = dy[b, c]
                for s in range(n_space):
                    a1 += np.float64(gb[s])
        inv_std = 1.0 / np.sqrt(var[c] + eps)
        dbias[c] = a1
        if dweight.shape[0]:
            dweight[c] = a2 * inv_std
        if dx.shape[0]:
            k_dy64 = _optional(weight, c, 1.0) * inv_std
            k_dy = x.dtype.type(k_dy64)
            k_x = x.dtype.type(-k_dy64 * inv_std * inv_std * a2 / count if batch_stats else 0.0)
            k_0 = x.dtype.type(-k_dy64 * a1 / count if batch_stats else 0.0)
            hi = x.dtype.type(m)
            lo = x.dtype.type(m - np.float64(hi))
            for b in range(n_batch):
                gb = dy[b, c]
                xb = x[b, c]
                ob = dx[b, c]
                for s in range(n_space):
                    ob[s] = _grad_value(gb[s], xb[s], hi, lo, k_dy, k_x, k_0)


# ---------------------------------------------------------------------------------------------------- rows
@numba.njit(**NJIT_INLINE)
def _row_shift(x):
    """Per-channel shift for the sums: the mean of the first rows (at most SHIFT_ROWS), rounded to x's dtype."""
    n_rows, n_chan = x.shape
    head = min(n_rows, SHIFT_ROWS)
    acc = np.zeros(n_chan)
    for r in range(head):
        for c in range(n_chan):
            acc[c] += x[r, c]
    return (acc / head).astype(x.dtype)


@numba.njit(**NJIT_INLINE)
def _row_block_moments(x, shift, start, stop, a1, a2):
    """a1 += sum(x - shift), a2 += sum((x - shift)^2) over rows [start, stop): ROW_FOLD rows at a time in x's
    dtype (one vector lane per channel), folded into the float64 a1, a2."""
    n_chan = x.shape[1]
    t1 = np.zeros(n_chan, x.dtype)
    t2 = np.zeros(n_chan, x.dtype)
    for begin in range(start, stop, ROW_FOLD):
        for r in range(begin, min(begin + ROW_FOLD, stop)):
            xr = x[r]
            for c in range(n_chan):
                d = xr[c] - shift[c]
                t1[c] += d
                t2[c] += d * d
        for c in range(n_chan):
            a1[c] += t1[c]
            a2[c] += t2[c]
            t1[c] = 0.0
            t2[c] = 0.0


@numba.njit(**NJIT_INLINE)
def _row_block_grad_sums(dy, x, hi, lo, start, stop, a1, a2):
    """a1 += sum(dy), a2 += sum(dy * (x - center)) over rows [start, stop), folded like `_row_block_moments`."""
    n_chan = x.shape[1]
    t1 = np.zeros(n_chan, x.dtype)
    t2 = np.zeros(n_chan, x.dtype)
    for begin in range(start, stop, ROW_FOLD):
        for r in range(begin, min(begin + ROW_FOLD, stop)):
            gr = dy[r]
            xr = x[r]
            for c in range(n_chan):
                g = gr[c]
                t1[c] += g
                t2[c] += g * _centered(xr[c], hi[c], lo[c])
        for c in range(n_chan):
            a1[c] += t1[c]
            a2[c] += t2[c]
            t1[c] = 0.0
            t2[c] = 0.0


def _stats_rows(n_blocks, x, mean, var):
    n_rows, n_chan = x.shape
    s1 = np.zeros((n_blocks, n_chan))
    s2 = np.zeros((n_blocks, n_chan))
    shift = _row_shift(x)
    for blk in prange(n_blocks):
        _row_block_moments(x, shift, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, s1[blk], s2[blk])
    for c in range(n_chan):
        a1 = 0.0
        a2 = 0.0
        for blk in range(n_blocks):
            a1 += s1[blk, c]
            a2 += s2[blk, c]
        d_mean = a1 / n_rows
        mean[c] = np.float64(shift[c]) + d_mean
        var[c] = _clip_variance(a2 / n_rows - d_mean * d_mean)


def _affine_rows(n_blocks, x, center, scale, shift, out):
    n_rows, n_chan = x.shape
    hi = center.astype(x.dtype)
    lo = (center - hi.astype(np.float64)).astype(x.dtype)
    k = scale.astype(x.dtype)
    t = shift.astype(x.dtype)
    for blk in prange(n_blocks):
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            xr = x[r]
            outr = out[r]
            for c in range(n_chan):
                outr[c] = _affine_value(xr[c], hi[c], lo[c], k[c], t[c])


def _grad_sums_rows(n_blocks, dy, x, center, sum_dy, sum_dy_xc):
    n_rows, n_chan = x.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    hi = center.astype(x.dtype)
    lo = (center - hi.astype(np.float64)).astype(x.dtype)
    for blk in prange(n_blocks):
        _row_block_grad_sums(dy, x, hi, lo, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, p1[blk],
                             p2[blk])
    for c in range(n_chan):
        a1 = 0.0
        a2 = 0.0
        for blk in range(n_blocks):
            a1 += p1[blk, c]
            a2 += p2[blk, c]
        sum_dy[c] = a1
        sum_dy_xc[c] = a2


def _grad_input_rows(n_blocks, dy, x, center, k_dy, k_x, k_0, out):
    n_rows, n_chan = x.shape
    hi = center.astype(x.dtype)
    lo = (center - hi.astype(np.float64)).astype(x.dtype)
    a = k_dy.astype(x.dtype)
    k = k_x.astype(x.dtype)
    t = k_0.astype(x.dtype)
    for blk in prange(n_blocks):
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            gr = dy[r]
            xr = x[r]
            outr = out[r]
            for c in range(n_chan):
                outr[c] = _grad_value(gr[c], xr[c], hi[c], lo[c], a[c], k[c], t[c])


# -------------------------------------------------------------------------------------------- rows, fused
def _train_forward_rows(n_blocks, x, weight, bias, eps, momentum, running_mean, running_var, y, mean, var):
    n_rows, n_chan = x.shape
    s1 = np.zeros((n_blocks, n_chan))
    s2 = np.zeros((n_blocks, n_chan))
    shift = _row_shift(x)
    for blk in prange(n_blocks):
        _row_block_moments(x, shift, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, s1[blk], s2[blk])
    hi = np.empty(n_chan, x.dtype)
    lo = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    for c in range(n_chan):
        a1 = 0.0
        a2 = 0.0
        for blk in range(n_blocks):
            a1 += s1[blk, c]
            a2 += s2[blk, c]
        d_mean = a1 / n_rows
        m = np.float64(shift[c]) + d_mean
        v = _clip_variance(a2 / n_rows - d_mean * d_mean)
        mean[c] = m
        var[c] = v
        _update_running(running_mean, running_var, c, m, v, n_rows, momentum)
        hi[c] = m
        lo[c] = m - np.float64(hi[c])
        scale[c] = _optional(weight, c, 1.0) / np.sqrt(v + eps)
        offset[c] = _optional(bias, c, 0.0)
    for blk in prange(n_blocks):
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            xr = x[r]
            yr = y[r]
            for c in range(n_chan):
                yr[c] = _affine_value(xr[c], hi[c], lo[c], scale[c], offset[c])


def _normalize_rows(n_blocks, x, mean, var, weight, bias, eps, y):
    n_rows, n_chan = x.shape
    hi = np.empty(n_chan, x.dtype)
    lo = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    for c in range(n_chan):
        hi[c] = mean[c]
        lo[c] = np.float64(mean[c]) - np.float64(hi[c])
        scale[c] = _optional(weight, c, 1.0) / np.sqrt(np.float64(var[c]) + eps)
        offset[c] = _optional(bias, c, 0.0)
    for blk in prange(n_blocks):
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            xr = x[r]
            yr = y[r]
            for c in range(n_chan):
                yr[c] = _affine_value(xr[c], hi[c], lo[c], scale[c], offset[c])


def _train_backward_rows(n_blocks, dy, x, mean, var, weight, eps, batch_stats, dx, dweight, dbias):
    n_rows, n_chan = x.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    hi = mean.astype(x.dtype)
    lo = (mean - hi.astype(np.float64)).astype(x.dtype)
    for blk in prange(n_blocks):
        _row_block_grad_sums(dy, x, hi, lo, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, p1[blk],
                             p2[blk])
    count = max(n_rows, 1)
    k_dy = np.empty(n_chan, x.dtype)
    k_x = np.empty(n_chan, x.dtype)
    k_0 = np.empty(n_chan, x.dtype)
    for c in range(n_chan):
        a1 = 0.0
        a2 = 0.0
        for blk in range(n_blocks):
            a1 += p1[blk, c]
            a2 += p2[blk, c]
        inv_std = 1.0 / np.sqrt(var[c] + eps)
        dbias[c] = a1
        if dweight.shape[0]:
            dweight[c] = a2 * inv_std
        k_dy64 = _optional(weight, c, 1.0) * inv_std
        k_dy[c] = k_dy64
        k_x[c] = -k_dy64 * inv_std * inv_std * a2 / count if batch_stats else 0.0
        k_0[c] = -k_dy64 * a1 / count if batch_stats else 0.0
    if dx.shape[0]:
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                gr = dy[r]
                xr = x[r]
                outr = dx[r]
                for c in range(n_chan):
                    outr[c] = _grad_value(gr[c], xr[c], hi[c], lo[c], k_dy[c], k_x[c], k_0[c])


def _compile(fn):
    """(serial, parallel) compiled versions of one kernel function.

    The parallel one is compiled from a copy with its own name, so the two never share a disk-cache entry.
    """
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    return numba.njit(**NJIT_SERIAL)(fn), numba.njit(**NJIT_PARALLEL)(twin)


stats_cf = _compile(_stats_cf)
affine_cf = _compile(_affine_cf)
grad_sums_cf = _compile(_grad_sums_cf)
grad_input_cf = _compile(_grad_input_cf)
stats_rows = _compile(_stats_rows)
affine_rows = _compile(_affine_rows)
grad_sums_rows = _compile(_grad_sums_rows)
grad_input_rows = _compile(_grad_input_rows)
train_forward_cf = _compile(_train_forward_cf)
normalize_cf = _compile(_normalize_cf)
train_backward_cf = _compile(_train_backward_cf)
train_forward_rows = _compile(_train_forward_rows)
normalize_rows = _compile(_normalize_rows)
train_backward_rows = _compile(_train_backward_rows)
