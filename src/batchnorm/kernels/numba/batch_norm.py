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
leaky_relu) runs in the input's dtype like the plain transform; the other activations in float64. The block
helpers below hold every elementwise loop once; the kernels only differ in how they walk the data.

Every kernel takes `n_blocks` first: rows kernels the number of row blocks that
run in parallel (each keeps C partial sums), the fused channels-first kernels the number of channel blocks,
the other channels-first kernels the channel blocks per sample of their (sample, channel block) pairs.
Each primitive is compiled twice from the same Python function: a parallel version (prange over rows or
blocks) and a serial one for small inputs. Kernels take arrays and scalars only; the entry points in
`batchnorm.kernels` (through `dispatch`) choose layout, dtype and variant.
"""

import types

import numba
import numpy as np
from numba import prange

from ..activations import LINEAR_MAX_CODE, act, act_grad, linear_act, linear_grad, slope
from ..config import NJIT_ELEMENTWISE, NJIT_INLINE, NJIT_PARALLEL, NJIT_SERIAL, ROW_FOLD, SHIFT_ROWS


@numba.njit(**NJIT_INLINE)
def _clip_variance(v):
    """Negative rounding residue -> 0; NaN stays NaN."""
    return v if v > 0.0 else (v if v != v else 0.0)


@numba.njit(**NJIT_INLINE)
def _vector64(values, n, default):
    """An optional per-channel array as float64 of length n, `default` everywhere when absent (length 0).
    Kernels convert once per call: a per-channel helper taking the array would pay Numba's reference counting
    of the array on every call (measured: 3 us of a 6 us call at C=100)."""
    out = np.full(n, default)
    if values.shape[0]:
        for c in range(n):
            out[c] = values[c]
    return out


@numba.njit(**NJIT_INLINE)
def _blend(running, batch, momentum):
    """The running-statistics update (1 - momentum) * running + momentum * batch."""
    return (1.0 - momentum) * running + momentum * batch


@numba.njit(**NJIT_INLINE)
def _unbiased(var, count):
    """The unbiased variance count / (count - 1) * var stored in running_var (inf for a single value)."""
    return var * count / (count - 1) if count > 1 else np.inf


# The center of a float32 channel is split into center_hi (its float32 rounding) and center_lo (the rest), so
# that x - center keeps float64 accuracy where it matters: x - center_hi is exact for x near the mean (Sterbenz),
# which is what keeps a +1e4 offset from costing digits in y and dx. These helpers are compiled without
# 'reassoc' (LLVM keeps per-instruction flags when it inlines them), so (x - hi) - lo is never re-associated
# into x - (hi + lo).
@numba.njit(**NJIT_ELEMENTWISE)
def _affine_value(v, center_hi, center_lo, scale, shift):
    """The forward's elementwise map before the activation: (x - center) * scale + shift."""
    return ((v - center_hi) - center_lo) * scale + shift


@numba.njit(**NJIT_INLINE)
def center_remainder(center, hi):
    """center - hi, the low part of a center split as hi + lo (float64 in, float64 out); 0 when hi is infinite,
    so that (x - hi) - lo gives x - inf = -inf as torch does, not inf - inf = NaN."""
    if np.isinf(hi):
        return 0.0
    return center - hi


@numba.njit(**NJIT_ELEMENTWISE)
def _centered(v, center_hi, center_lo):
    """x - center, from the hi/lo split."""
    return (v - center_hi) - center_lo


@numba.njit(**NJIT_ELEMENTWISE)
def _grad_value(g, v, center_hi, center_lo, k_dy, k_x, k_0):
    """The backward's elementwise map dx = k_dy * dy + k_x * (x - center) + k_0."""
    return k_dy * g + k_x * ((v - center_hi) - center_lo) + k_0


@numba.njit(**NJIT_INLINE)
def _scale_value(weight_c, var_c, eps):
    """weight_c / sqrt(var_c + eps) in float64: one expression for every kernel, so that the backward's z is
    bit-identical to the forward's (the sign test of relu/leaky_relu must see the same z)."""
    return weight_c / np.sqrt(var_c + eps)


# ------------------------------------------------------------------------ elementwise loops (fused activation)
# cf kernels walk blocks of samples x channels of (N, C, S), rows kernels ranges of rows of (R, C). Per-channel
# arrays are in x's dtype: hi, lo (the split center), k (scale), t (shift), k_dy, k_x, k_0 (dx coefficients).
# The activation (and whether the statistics are the batch's) is chosen outside the loops: a choice inside
# them keeps LLVM from vectorizing (measured: the rows dx loop ran 5x slower).
@numba.njit(**NJIT_INLINE)
def _mean_var(shift, sum_d, sum_d2, count):
    """(mean, biased variance) from shifted sums of d = x - shift over `count` values."""
    d_mean = sum_d / count
    return shift + d_mean, _clip_variance(sum_d2 / count - d_mean * d_mean)


@numba.njit(**NJIT_INLINE)
def _sample_block(i, n_blocks, n_chan):
    """(sample b, first channel, stop channel) of the i-th (sample, block of channels) pair."""
    b = i // n_blocks
    blk = i - b * n_blocks
    return b, blk * n_chan // n_blocks, (blk + 1) * n_chan // n_blocks


@numba.njit(**NJIT_INLINE)
def _moments_block(x, b0, b1, c0, c1, s1, s2):
    """s1[c] += sum(x - shift_c), s2[c] += sum((x - shift_c)^2) in float64 over samples [b0, b1) and channels
    [c0, c1) of (N, C, S), with shift_c = x[0, c, 0] (one value of the channel: no precision lost to an offset)."""
    for b in range(b0, b1):
        for c in range(c0, c1):
            xs = x[b, c]
            shift = np.float64(x[0, c, 0])
            a1 = 0.0
            a2 = 0.0
            for s in range(xs.shape[0]):
                d = np.float64(xs[s]) - shift
                a1 += d
                a2 += d * d
            s1[c] += a1
            s2[c] += a2


@numba.njit(**NJIT_INLINE)
def _forward_block(x, y, b0, b1, c0, c1, hi, lo, k, t, code, param):
    """y[b, c] = act((x[b, c] - center_c) * k_c + t_c) for samples [b0, b1) and channels [c0, c1) of (N, C, S)."""
    if code == 0:
        for b in range(b0, b1):
            for c in range(c0, c1):
                xs, ys, h, low, kc, tc = x[b, c], y[b, c], hi[c], lo[c], k[c], t[c]
                for s in range(xs.shape[0]):
                    ys[s] = _affine_value(xs[s], h, low, kc, tc)
    elif code <= LINEAR_MAX_CODE:
        a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
        for b in range(b0, b1):
            for c in range(c0, c1):
                xs, ys, h, low, kc, tc = x[b, c], y[b, c], hi[c], lo[c], k[c], t[c]
                for s in range(xs.shape[0]):
                    ys[s] = linear_act(_affine_value(xs[s], h, low, kc, tc), code, a, zero)
    else:
        for b in range(b0, b1):
            for c in range(c0, c1):
                xs, ys = x[b, c], y[b, c]
                m, k64, t64 = np.float64(hi[c]) + np.float64(lo[c]), np.float64(k[c]), np.float64(t[c])
                for s in range(xs.shape[0]):
                    ys[s] = act((np.float64(xs[s]) - m) * k64 + t64, code, param)


@numba.njit(**NJIT_INLINE)
def _grad_sums_block(dy, x, b0, b1, c0, c1, mean, hi, lo, k, t, code, param, sum_g, sum_gx):
    """sum_g[c] += sum g, sum_gx[c] += sum g (x - mean_c) in float64 over samples [b0, b1), channels [c0, c1),
    with g = dy * act'(z) (dy itself for identity)."""
    if code == 0:
        for b in range(b0, b1):
            for c in range(c0, c1):
                gs, xs, m = dy[b, c], x[b, c], mean[c]
                a1 = 0.0
                a2 = 0.0
                for s in range(xs.shape[0]):
                    g = np.float64(gs[s])
                    a1 += g
                    a2 += g * (np.float64(xs[s]) - m)
                sum_g[c] += a1
                sum_gx[c] += a2
    elif code <= LINEAR_MAX_CODE:
        a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
        for b in range(b0, b1):
            for c in range(c0, c1):
                gs, xs, m, h, low, kc, tc = dy[b, c], x[b, c], mean[c], hi[c], lo[c], k[c], t[c]
                a1 = 0.0
                a2 = 0.0
                for s in range(xs.shape[0]):
                    g = np.float64(linear_grad(gs[s], _affine_value(xs[s], h, low, kc, tc), code, a, zero))
                    a1 += g
                    a2 += g * (np.float64(xs[s]) - m)
                sum_g[c] += a1
                sum_gx[c] += a2
    else:
        for b in range(b0, b1):
            for c in range(c0, c1):
                gs, xs, m, k64, t64 = dy[b, c], x[b, c], mean[c], np.float64(k[c]), np.float64(t[c])
                a1 = 0.0
                a2 = 0.0
                for s in range(xs.shape[0]):
                    xc = np.float64(xs[s]) - m
                    g = np.float64(gs[s]) * act_grad(xc * k64 + t64, code, param)
                    a1 += g
                    a2 += g * xc
                sum_g[c] += a1
                sum_gx[c] += a2


@numba.njit(**NJIT_INLINE)
def _grad_input_block(dy, x, dx, b0, b1, c0, c1, hi, lo, k, t, k_dy, k_x, k_0, batch_stats, code, param):
    """dx = k_dy g + k_x (x - center) + k_0 with g = dy * act'(z), over samples [b0, b1) and channels [c0, c1).
    Without batch statistics dx = k_dy g: x then enters only through act'(z), so a NaN/inf input element never
    becomes 0 * NaN in its gradient (as torch). Every choice is made outside the loops (one inside them keeps
    LLVM from vectorizing)."""
    if code == 0 and batch_stats:
        for b in range(b0, b1):
            for c in range(c0, c1):
                gs, xs, ds, h, low, kd, kx, k0 = dy[b, c], x[b, c], dx[b, c], hi[c], lo[c], k_dy[c], k_x[c], k_0[c]
                for s in range(xs.shape[0]):
                    ds[s] = _grad_value(gs[s], xs[s], h, low, kd, kx, k0)
    elif code == 0:
        for b in range(b0, b1):
            for c in range(c0, c1):
                gs, ds, kd = dy[b, c], dx[b, c], k_dy[c]
                for s in range(gs.shape[0]):
                    ds[s] = kd * gs[s]
    elif code <= LINEAR_MAX_CODE:
        a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
        for b in range(b0, b1):
            for c in range(c0, c1):
                gs, xs, ds, h, low, kc, tc = dy[b, c], x[b, c], dx[b, c], hi[c], lo[c], k[c], t[c]
                kd, kx, k0 = k_dy[c], k_x[c], k_0[c]
                if batch_stats:
                    for s in range(xs.shape[0]):
                        g = linear_grad(gs[s], _affine_value(xs[s], h, low, kc, tc), code, a, zero)
                        ds[s] = _grad_value(g, xs[s], h, low, kd, kx, k0)
                else:
                    for s in range(xs.shape[0]):
                        ds[s] = kd * linear_grad(gs[s], _affine_value(xs[s], h, low, kc, tc), code, a, zero)
    else:
        for b in range(b0, b1):
            for c in range(c0, c1):
                gs, xs, ds = dy[b, c], x[b, c], dx[b, c]
                m, k64, t64 = np.float64(hi[c]) + np.float64(lo[c]), np.float64(k[c]), np.float64(t[c])
                kd, kx, k0 = np.float64(k_dy[c]), np.float64(k_x[c]), np.float64(k_0[c])
                if batch_stats:
                    for s in range(xs.shape[0]):
                        xc = np.float64(xs[s]) - m
                        ds[s] = kd * np.float64(gs[s]) * act_grad(xc * k64 + t64, code, param) + kx * xc + k0
                else:
                    for s in range(xs.shape[0]):
                        xc = np.float64(xs[s]) - m
                        ds[s] = kd * np.float64(gs[s]) * act_grad(xc * k64 + t64, code, param)


@numba.njit(**NJIT_INLINE)
def _forward_rows(x, y, start, stop, hi, lo, k, t, code, param):
    """y[r] = act((x[r] - center) * k + t) for rows [start, stop) of the rows layout (per-channel arrays).
    The activation is chosen outside the loops (a choice inside them keeps LLVM from vectorizing)."""
    n_chan = x.shape[1]
    if code == 0:
        for r in range(start, stop):
            for c in range(n_chan):
                y[r, c] = _affine_value(x[r, c], hi[c], lo[c], k[c], t[c])
    elif code <= LINEAR_MAX_CODE:
        a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
        for r in range(start, stop):
            for c in range(n_chan):
                y[r, c] = linear_act(_affine_value(x[r, c], hi[c], lo[c], k[c], t[c]), code, a, zero)
    else:
        for r in range(start, stop):
            for c in range(n_chan):
                z = (np.float64(x[r, c]) - (np.float64(hi[c]) + np.float64(lo[c]))) * np.float64(k[c]) \
                    + np.float64(t[c])
                y[r, c] = act(z, code, param)


@numba.njit(**NJIT_INLINE)
def _grad_input_rows_range(dy, x, dx, start, stop, hi, lo, k, t, k_dy, k_x, k_0, batch_stats, code, param):
    """`_grad_input_span` for rows [start, stop) of the rows layout, every choice made outside the loops."""
    n_chan = x.shape[1]
    if code == 0 and batch_stats:
        for r in range(start, stop):
            for c in range(n_chan):
                dx[r, c] = _grad_value(dy[r, c], x[r, c], hi[c], lo[c], k_dy[c], k_x[c], k_0[c])
    elif code == 0:
        for r in range(start, stop):
            for c in range(n_chan):
                dx[r, c] = k_dy[c] * dy[r, c]
    elif code <= LINEAR_MAX_CODE:
        a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
        if batch_stats:
            for r in range(start, stop):
                for c in range(n_chan):
                    g = linear_grad(dy[r, c], _affine_value(x[r, c], hi[c], lo[c], k[c], t[c]), code, a, zero)
                    dx[r, c] = _grad_value(g, x[r, c], hi[c], lo[c], k_dy[c], k_x[c], k_0[c])
        else:
            for r in range(start, stop):
                for c in range(n_chan):
                    g = linear_grad(dy[r, c], _affine_value(x[r, c], hi[c], lo[c], k[c], t[c]), code, a, zero)
                    dx[r, c] = k_dy[c] * g
    else:
        for r in range(start, stop):
            for c in range(n_chan):
                xc = np.float64(x[r, c]) - (np.float64(hi[c]) + np.float64(lo[c]))
                g = np.float64(dy[r, c]) * act_grad(xc * np.float64(k[c]) + np.float64(t[c]), code, param)
                if batch_stats:
                    dx[r, c] = np.float64(k_dy[c]) * g + np.float64(k_x[c]) * xc + np.float64(k_0[c])
                else:  # fixed statistics: dx = k_dy g, no 0 * NaN from x
                    dx[r, c] = np.float64(k_dy[c]) * g


@numba.njit(**NJIT_INLINE)
def _split_center(center, dtype_sample):
    """Per-channel (hi, lo) arrays in the dtype of `dtype_sample`: hi = center rounded, lo = the remainder
    (0 for an infinite center, so x - inf gives -inf as in torch, not inf - inf = NaN)."""
    hi = center.astype(dtype_sample.dtype)
    lo = np.empty_like(hi)
    for c in range(hi.shape[0]):
        lo[c] = center_remainder(center[c], np.float64(hi[c]))
    return hi, lo


@numba.njit(**NJIT_INLINE)
def _given_statistics_constants(x, mean, var, weight, bias, eps):
    """Per-channel (hi, lo, scale, offset) in x's dtype for the transform with given statistics (inference):
    y = ((x - hi) - lo) * scale + offset = (x - mean) / sqrt(var + eps) * weight + bias."""
    n_chan = mean.shape[0]
    w64 = _vector64(weight, n_chan, 1.0)
    b64 = _vector64(bias, n_chan, 0.0)
    hi = np.empty(n_chan, x.dtype)
    lo = np.empty(n_chan, x.dtype)
    scale = np.empty(n_chan, x.dtype)
    offset = np.empty(n_chan, x.dtype)
    for c in range(n_chan):
        hi[c] = mean[c]
        lo[c] = center_remainder(np.float64(mean[c]), np.float64(hi[c]))
        scale[c] = _scale_value(w64[c], np.float64(var[c]), eps)
        offset[c] = b64[c]
    return hi, lo, scale, offset


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
def _row_block_grad_sums(dy, x, hi, lo, k, t, code, param, start, stop, a1, a2):
    """a1 += sum(g), a2 += sum(g * (x - center)) over rows [start, stop), g = dy * act'(z): folded like
    `_row_block_moments` for the piecewise-linear family, in float64 for the other activations."""
    n_chan = x.shape[1]
    if code > LINEAR_MAX_CODE:
        for r in range(start, stop):
            for c in range(n_chan):
                xc = np.float64(x[r, c]) - (np.float64(hi[c]) + np.float64(lo[c]))
                g = np.float64(dy[r, c]) * act_grad(xc * np.float64(k[c]) + np.float64(t[c]), code, param)
                a1[c] += g
                a2[c] += g * xc
        return
    a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
    t1 = np.zeros(n_chan, x.dtype)
    t2 = np.zeros(n_chan, x.dtype)
    for begin in range(start, stop, ROW_FOLD):
        end = min(begin + ROW_FOLD, stop)
        if code == 0:
            for r in range(begin, end):
                for c in range(n_chan):
                    g = dy[r, c]
                    t1[c] += g
                    t2[c] += g * _centered(x[r, c], hi[c], lo[c])
        else:
            for r in range(begin, end):
                for c in range(n_chan):
                    g = linear_grad(dy[r, c], _affine_value(x[r, c], hi[c], lo[c], k[c], t[c]), code, a, zero)
                    t1[c] += g
                    t2[c] += g * _centered(x[r, c], hi[c], lo[c])
        for c in range(n_chan):
            a1[c] += t1[c]
            a2[c] += t2[c]
            t1[c] = 0.0
            t2[c] = 0.0


@numba.njit(**NJIT_INLINE)
def _sum_blocks(p1, p2, c):
    """(sum over blocks of p1[:, c], of p2[:, c]) in scalar loops (an array .sum() inside a parallel kernel would
    become a parallel region of its own)."""
    a1 = 0.0
    a2 = 0.0
    for blk in range(p1.shape[0]):
        a1 += p1[blk, c]
        a2 += p2[blk, c]
    return a1, a2


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
    for c in range(n_chan):  # written out as in _train_forward_cf, a deliberate speed copy (see the note there)
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
    for c in range(n_chan):
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
    for c in range(n_chan):
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
