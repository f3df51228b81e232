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
  affine       out = act((x - center_c) * scale_c + shift_c);
  grad_sums    sum(g)_c and sum(g * (x - center_c))_c, g = dy * act'(z), in one read of dy and x (float64
               accumulation as stats);
  grad_input   out = k_dy_c * g + k_x_c * (x - center_c) + k_0_c (k_dy_c * g alone with fixed statistics).
x - center is computed as (x - center_hi) - center_lo with the center split into its x-dtype rounding and the
remainder, so that float32 data far from zero keep their digits in y and dx.

Fused kernels (one call per layer and pass; the per-channel algebra happens inside them):
  train_forward     stats + running-statistics update + normalize. The channels-first version works on one
                    block of channels at a time per thread (sized by the dispatcher to stay in the core's cache,
                    walked sample by sample so that reads are contiguous), so the second read of x (to
                    normalize) comes from the cache: x is read once from memory, y written once;
  normalize         y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c from given statistics (inference);
  train_backward    both gradient sums, dweight, dbias, and dx in the same per-block sweep (the second read
                    of dy and x again from the cache in the channels-first version).
Optional per-channel arrays (weight, bias, running buffers, dx, dweight) are passed as length-0 arrays when
absent.

Activations (`activations.py`, an integer `code` and a float `param`) are fused into every elementwise pass:
the forward writes act(z) with z the affine output, and the backward recomputes z from x (and the scale and
shift) to replace dy by g = dy * act'(z) in the sums and in dx. The piecewise-linear family (identity, relu,
leaky_relu) runs in the input's dtype like the plain transform; the other activations in float64. The loops
of `_loops.py` hold every elementwise loop once; the kernels only differ in how they walk the data.

Every kernel takes `n_blocks` first: rows kernels the number of row blocks that
run in parallel (each keeps C partial sums), the fused channels-first kernels the number of channel blocks,
the other channels-first kernels the channel blocks per sample of their (sample, channel block) pairs.
Each primitive is compiled twice from the same Python function: a parallel version (prange over rows or
blocks) and a serial one for small inputs. Kernels take arrays and scalars only; the entry points in
`batchnorm.kernels` (through `dispatch`) choose layout, dtype and variant.
"""

import numpy as np
from numba import prange

from ._loops import (_blend, _compile, _forward_block, _forward_rows, _given_statistics_constants, _grad_input_block,
                     _grad_input_rows_range, _grad_sums_block, _mean_var, _moments_block, _row_block_grad_sums,
                     _row_block_moments, _row_shift, _sample_block, _scale_value, _split_center, _sum_blocks,
                     _unbiased, _vector64)


# ----------------------------------------------------------------------------------------- channels-first
def _stats_cf(n_blocks, x, mean, var):
    n_batch, n_chan, n_space = x.shape
    s1 = np.zeros((n_batch, n_chan))
    s2 = np.zeros((n_batch, n_chan))
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        _moments_block(x, b, b + 1, first, stop, s1[b], s2[b])
    count = n_batch * n_space
    for c in prange(n_chan):
        a1, a2 = _sum_blocks(s1, s2, c)
        mean[c], var[c] = _mean_var(np.float64(x[0, c, 0]), a1, a2, count)


def _affine_cf(n_blocks, x, center, scale, shift, code, param, out):
    n_batch, n_chan, n_space = x.shape
    hi, lo = _split_center(center, x)
    k = scale.astype(x.dtype)
    t = shift.astype(x.dtype)
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        _forward_block(x, out, b, b + 1, first, stop, hi, lo, k, t, code, param)


def _grad_sums_cf(n_blocks, dy, x, center, scale, shift, code, param, sum_dy, sum_dy_xc):
    n_batch, n_chan, n_space = x.shape
    hi, lo = _split_center(center, x)
    k = scale.astype(x.dtype)
    t = shift.astype(x.dtype)
    p1 = np.zeros((n_batch, n_chan))
    p2 = np.zeros((n_batch, n_chan))
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        _grad_sums_block(dy, x, b, b + 1, first, stop, center, hi, lo, k, t, code, param, p1[b], p2[b])
    for c in prange(n_chan):
        a1, a2 = _sum_blocks(p1, p2, c)
        sum_dy[c] = a1
        sum_dy_xc[c] = a2


def _grad_input_cf(n_blocks, dy, x, center, scale, shift, k_dy, k_x, k_0, batch_stats, code, param, out):
    n_batch, n_chan, n_space = x.shape
    hi, lo = _split_center(center, x)
    k = scale.astype(x.dtype)
    t = shift.astype(x.dtype)
    a = k_dy.astype(x.dtype)
    q = k_x.astype(x.dtype)
    r0 = k_0.astype(x.dtype)
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        _grad_input_block(dy, x, out, b, b + 1, first, stop, hi, lo, k, t, a, q, r0, batch_stats, code, param)


# ------------------------------------------------------------------------------ channels-first, fused
def _train_forward_cf(n_blocks, x, weight, bias, eps, momentum, running_mean, running_var, code, param, y, mean,
                      var):
    n_batch, n_chan, n_space = x.shape
    w64 = _vector64(weight, n_chan, 1.0)
    b64 = _vector64(bias, n_chan, 0.0)
    update_mean = running_mean.shape[0] > 0 and n_batch * n_space > 0
    update_var = running_var.shape[0] > 0 and n_batch * n_space > 0
    count = n_batch * n_space
    hi = np.empty(n_chan, x.dtype)
    lo = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    for blk in prange(n_blocks):
        first, stop = blk * n_chan // n_blocks, (blk + 1) * n_chan // n_blocks
        for c in range(first, stop):  # mean, var hold the shifted sums until the block is summed up
            mean[c] = 0.0
            var[c] = 0.0
        _moments_block(x, 0, n_batch, first, stop, mean, var)
        # (per-channel work is written out here and in the rows kernel: a helper taking the arrays would pay
        # Numba's reference counting of every array argument per channel, 4 us per call at C=100)
        for c in range(first, stop):
            m, v = _mean_var(np.float64(x[0, c, 0]), mean[c], var[c], count)
            mean[c] = m
            var[c] = v
            if update_mean:
                running_mean[c] = _blend(running_mean[c], m, momentum)
            if update_var:
                running_var[c] = _blend(running_var[c], _unbiased(v, count), momentum)
            hi[c] = m
            lo[c] = m - np.float64(hi[c])
            scale[c] = _scale_value(w64[c], v, eps)
            offset[c] = b64[c]
        # the block's data come back from the cache
        _forward_block(x, y, 0, n_batch, first, stop, hi, lo, scale, offset, code, param)


def _normalize_cf(n_blocks, x, mean, var, weight, bias, eps, code, param, y):
    n_batch, n_chan, n_space = x.shape
    hi, lo, scale, offset = _given_statistics_constants(x, mean, var, weight, bias, eps)
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        _forward_block(x, y, b, b + 1, first, stop, hi, lo, scale, offset, code, param)


def _train_backward_cf(n_blocks, dy, x, mean, var, weight, bias, eps, batch_stats, code, param, dx, dweight,
                       dbias):
    n_batch, n_chan, n_space = x.shape
    w64 = _vector64(weight, n_chan, 1.0)
    b64 = _vector64(bias, n_chan, 0.0)
    count = max(n_batch * n_space, 1)
    hi = np.empty(n_chan, x.dtype)
    lo = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    k_dy = np.empty(n_chan, x.dtype)
    k_x = np.empty(n_chan, x.dtype)
    k_0 = np.empty(n_chan, x.dtype)
    sum_g = np.zeros(n_chan)
    sum_gx = np.zeros(n_chan)
    need_x = batch_stats or dweight.shape[0] or code != 0
    for blk in prange(n_blocks):
        first, stop = blk * n_chan // n_blocks, (blk + 1) * n_chan // n_blocks
        for c in range(first, stop):
            hi[c] = mean[c]
            lo[c] = mean[c] - np.float64(hi[c])
            scale[c] = _scale_value(w64[c], var[c], eps)
            offset[c] = b64[c]
        if need_x:
            _grad_sums_block(dy, x, 0, n_batch, first, stop, mean, hi, lo, scale, offset, code, param, sum_g, sum_gx)
        else:
            for b in range(n_batch):
                for c in range(first, stop):
                    gs = dy[b, c]
                    a1 = 0.0
                    for s in range(n_space):
                        a1 += np.float64(gs[s])
                    sum_g[c] += a1
        for c in range(first, stop):
            inv_std = 1.0 / np.sqrt(var[c] + eps)
            dbias[c] = sum_g[c]
            if dweight.shape[0]:
                dweight[c] = sum_gx[c] * inv_std
            k_dy64 = w64[c] * inv_std
            k_dy[c] = k_dy64
            k_x[c] = -k_dy64 * inv_std * inv_std * sum_gx[c] / count if batch_stats else 0.0
            k_0[c] = -k_dy64 * sum_g[c] / count if batch_stats else 0.0
        if dx.shape[0]:  # the block's data come back from the cache
            _grad_input_block(dy, x, dx, 0, n_batch, first, stop, hi, lo, scale, offset, k_dy, k_x, k_0, batch_stats,
                              code, param)


# ---------------------------------------------------------------------------------------------------- rows
def _stats_rows(n_blocks, x, mean, var):
    n_rows, n_chan = x.shape
    s1 = np.zeros((n_blocks, n_chan))
    s2 = np.zeros((n_blocks, n_chan))
    shift = _row_shift(x)
    for blk in prange(n_blocks):
        _row_block_moments(x, shift, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, s1[blk], s2[blk])
    for c in range(n_chan):
        a1, a2 = _sum_blocks(s1, s2, c)
        mean[c], var[c] = _mean_var(np.float64(shift[c]), a1, a2, n_rows)


def _affine_rows(n_blocks, x, center, scale, shift, code, param, out):
    n_rows, n_chan = x.shape
    hi, lo = _split_center(center, x)
    k = scale.astype(x.dtype)
    t = shift.astype(x.dtype)
    for blk in prange(n_blocks):
        _forward_rows(x, out, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, hi, lo, k, t, code, param)


def _grad_sums_rows(n_blocks, dy, x, center, scale, shift, code, param, sum_dy, sum_dy_xc):
    n_rows, n_chan = x.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    hi, lo = _split_center(center, x)
    k = scale.astype(x.dtype)
    t = shift.astype(x.dtype)
    for blk in prange(n_blocks):
        _row_block_grad_sums(dy, x, hi, lo, k, t, code, param, blk * n_rows // n_blocks,
                             (blk + 1) * n_rows // n_blocks, p1[blk], p2[blk])
    for c in range(n_chan):
        sum_dy[c], sum_dy_xc[c] = _sum_blocks(p1, p2, c)


def _grad_input_rows(n_blocks, dy, x, center, scale, shift, k_dy, k_x, k_0, batch_stats, code, param, out):
    n_rows, n_chan = x.shape
    hi, lo = _split_center(center, x)
    k = scale.astype(x.dtype)
    t = shift.astype(x.dtype)
    a = k_dy.astype(x.dtype)
    q = k_x.astype(x.dtype)
    r0 = k_0.astype(x.dtype)
    for blk in prange(n_blocks):
        _grad_input_rows_range(dy, x, out, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, hi, lo, k, t,
                               a, q, r0, batch_stats, code, param)


# -------------------------------------------------------------------------------------------- rows, fused
def _train_forward_rows(n_blocks, x, weight, bias, eps, momentum, running_mean, running_var, code, param, y,
                        mean, var):
    n_rows, n_chan = x.shape
    w64 = _vector64(weight, n_chan, 1.0)
    b64 = _vector64(bias, n_chan, 0.0)
    update_mean = running_mean.shape[0] > 0 and n_rows > 0
    update_var = running_var.shape[0] > 0 and n_rows > 0
    s1 = np.zeros((n_blocks, n_chan))
    s2 = np.zeros((n_blocks, n_chan))
    shift = _row_shift(x)
    for blk in prange(n_blocks):
        _row_block_moments(x, shift, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, s1[blk], s2[blk])
    hi = np.empty(n_chan, x.dtype)
    lo = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    for c in prange(n_chan):  # written out as in _train_forward_cf, a deliberate speed copy (see the note there)
        a1, a2 = _sum_blocks(s1, s2, c)
        m, v = _mean_var(np.float64(shift[c]), a1, a2, n_rows)
        mean[c] = m
        var[c] = v
        if update_mean:
            running_mean[c] = _blend(running_mean[c], m, momentum)
        if update_var:
            running_var[c] = _blend(running_var[c], _unbiased(v, n_rows), momentum)
        hi[c] = m
        lo[c] = m - np.float64(hi[c])
        scale[c] = _scale_value(w64[c], v, eps)
        offset[c] = b64[c]
    for blk in prange(n_blocks):
        _forward_rows(x, y, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, hi, lo, scale, offset, code,
                      param)


def _normalize_rows(n_blocks, x, mean, var, weight, bias, eps, code, param, y):
    n_rows, n_chan = x.shape
    hi, lo, scale, offset = _given_statistics_constants(x, mean, var, weight, bias, eps)
    for blk in prange(n_blocks):
        _forward_rows(x, y, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, hi, lo, scale, offset, code,
                      param)


def _train_backward_rows(n_blocks, dy, x, mean, var, weight, bias, eps, batch_stats, code, param, dx, dweight,
                         dbias):
    n_rows, n_chan = x.shape
    w64 = _vector64(weight, n_chan, 1.0)
    b64 = _vector64(bias, n_chan, 0.0)
    hi, lo = _split_center(mean, x)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    for c in prange(n_chan):
        scale[c] = _scale_value(w64[c], var[c], eps)
        offset[c] = b64[c]
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    for blk in prange(n_blocks):
        _row_block_grad_sums(dy, x, hi, lo, scale, offset, code, param, blk * n_rows // n_blocks,
                             (blk + 1) * n_rows // n_blocks, p1[blk], p2[blk])
    count = max(n_rows, 1)
    k_dy = np.empty(n_chan, x.dtype)
    k_x = np.empty(n_chan, x.dtype)
    k_0 = np.empty(n_chan, x.dtype)
    for c in prange(n_chan):
        a1, a2 = _sum_blocks(p1, p2, c)
        inv_std = 1.0 / np.sqrt(var[c] + eps)
        dbias[c] = a1
        if dweight.shape[0]:
            dweight[c] = a2 * inv_std
        k_dy64 = w64[c] * inv_std
        k_dy[c] = k_dy64
        k_x[c] = -k_dy64 * inv_std * inv_std * a2 / count if batch_stats else 0.0
        k_0[c] = -k_dy64 * a1 / count if batch_stats else 0.0
    if dx.shape[0]:
        for blk in prange(n_blocks):
            _grad_input_rows_range(dy, x, dx, blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks, hi, lo,
                                   scale, offset, k_dy, k_x, k_0, batch_stats, code, param)


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
