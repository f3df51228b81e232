"""The per-value and per-block loops every batch-norm kernel is built from (inlined into the kernels), and
`_compile`, which compiles each kernel twice (serial and parallel).

cf loops walk blocks of samples x channels of (N, C, S), rows loops ranges of rows of (R, C). Per-channel
arrays are in x's dtype: hi, lo (the split center), k (scale), t (shift), k_dy, k_x, k_0 (dx coefficients).
x - center is computed as (x - center_hi) - center_lo with the center split into its x-dtype rounding and the
remainder, so that float32 data far from zero keep their digits in y and dx.
"""

import types

import numba
import numpy as np

from ..activations import LINEAR_MAX_CODE, act, act_grad, linear_act, linear_grad, slope
from ..config import (NJIT_ELEMENTWISE, NJIT_INLINE, NJIT_PARALLEL, NJIT_SERIAL, ROW_FOLD, ROW_TILE, ROW_TILE_MAX_ROWS,
                      SHIFT_ROWS)


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
def _tiles_pay(x):
    """Whether the rows loops walk x's channels in tiles of ROW_TILE: more than ROW_TILE channels in at most
    ROW_TILE_MAX_ROWS rows (see ROW_TILE)."""
    return x.shape[1] > ROW_TILE and x.shape[0] <= ROW_TILE_MAX_ROWS


@numba.njit(**NJIT_INLINE)
def _forward_rows_direct(x, y, start, stop, hi, lo, k, t, code, param):
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
def _forward_rows_tiled(x, y, start, stop, hi, lo, k, t, code, param):
    """y[r] = act((x[r] - center) * k + t) for rows [start, stop) of the rows layout (per-channel arrays), one
    tile of ROW_TILE channels at a time. The activation is chosen outside the loops over channels (a choice inside
    them keeps LLVM from vectorizing)."""
    n_chan = x.shape[1]
    a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
    for c0 in range(0, n_chan, ROW_TILE):
        c1 = min(c0 + ROW_TILE, n_chan)
        h, l, kk, tt = hi[c0:c1], lo[c0:c1], k[c0:c1], t[c0:c1]
        for r in range(start, stop):
            xr, yr = x[r, c0:c1], y[r, c0:c1]
            if code == 0:
                for c in range(c1 - c0):
                    yr[c] = _affine_value(xr[c], h[c], l[c], kk[c], tt[c])
            elif code <= LINEAR_MAX_CODE:
                for c in range(c1 - c0):
                    yr[c] = linear_act(_affine_value(xr[c], h[c], l[c], kk[c], tt[c]), code, a, zero)
            else:
                for c in range(c1 - c0):
                    z = (np.float64(xr[c]) - (np.float64(h[c]) + np.float64(l[c]))) * np.float64(kk[c]) \
                        + np.float64(tt[c])
                    yr[c] = act(z, code, param)


@numba.njit(**NJIT_INLINE)
def _forward_rows(x, y, start, stop, hi, lo, k, t, code, param):
    """`_forward_rows_tiled` where `_tiles_pay(x)`, else `_forward_rows_direct`."""
    if _tiles_pay(x):
        _forward_rows_tiled(x, y, start, stop, hi, lo, k, t, code, param)
    else:
        _forward_rows_direct(x, y, start, stop, hi, lo, k, t, code, param)


@numba.njit(**NJIT_INLINE)
def _grad_input_rows_range_direct(dy, x, dx, start, stop, hi, lo, k, t, k_dy, k_x, k_0, batch_stats, code, param):
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
def _grad_input_rows_range_tiled(dy, x, dx, start, stop, hi, lo, k, t, k_dy, k_x, k_0, batch_stats, code, param):
    """`_grad_input_span` for rows [start, stop) of the rows layout, one tile of ROW_TILE channels at a time,
    every choice made outside the loops over channels."""
    n_chan = x.shape[1]
    a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
    for c0 in range(0, n_chan, ROW_TILE):
        c1 = min(c0 + ROW_TILE, n_chan)
        h, l, kk, tt = hi[c0:c1], lo[c0:c1], k[c0:c1], t[c0:c1]
        kd, kx, k0 = k_dy[c0:c1], k_x[c0:c1], k_0[c0:c1]
        for r in range(start, stop):
            gr, xr, dr = dy[r, c0:c1], x[r, c0:c1], dx[r, c0:c1]
            if code == 0 and batch_stats:
                for c in range(c1 - c0):
                    dr[c] = _grad_value(gr[c], xr[c], h[c], l[c], kd[c], kx[c], k0[c])
            elif code == 0:
                for c in range(c1 - c0):
                    dr[c] = kd[c] * gr[c]
            elif code <= LINEAR_MAX_CODE and batch_stats:
                for c in range(c1 - c0):
                    g = linear_grad(gr[c], _affine_value(xr[c], h[c], l[c], kk[c], tt[c]), code, a, zero)
                    dr[c] = _grad_value(g, xr[c], h[c], l[c], kd[c], kx[c], k0[c])
            elif code <= LINEAR_MAX_CODE:
                for c in range(c1 - c0):
                    g = linear_grad(gr[c], _affine_value(xr[c], h[c], l[c], kk[c], tt[c]), code, a, zero)
                    dr[c] = kd[c] * g
            else:
                for c in range(c1 - c0):
                    xc = np.float64(xr[c]) - (np.float64(h[c]) + np.float64(l[c]))
                    g = np.float64(gr[c]) * act_grad(xc * np.float64(kk[c]) + np.float64(tt[c]), code, param)
                    if batch_stats:
                        dr[c] = np.float64(kd[c]) * g + np.float64(kx[c]) * xc + np.float64(k0[c])
                    else:  # fixed statistics: dx = k_dy g, no 0 * NaN from x
                        dr[c] = np.float64(kd[c]) * g


@numba.njit(**NJIT_INLINE)
def _grad_input_rows_range(dy, x, dx, start, stop, hi, lo, k, t, k_dy, k_x, k_0, batch_stats, code, param):
    """`_grad_input_rows_range_tiled` where `_tiles_pay(x)`, else `_grad_input_rows_range_direct`."""
    if _tiles_pay(x):
        _grad_input_rows_range_tiled(dy, x, dx, start, stop, hi, lo, k, t, k_dy, k_x, k_0, batch_stats, code, param)
    else:
        _grad_input_rows_range_direct(dy, x, dx, start, stop, hi, lo, k, t, k_dy, k_x, k_0, batch_stats, code, param)


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


# ---------------------------------------------------------------------------------------- rows
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
def _fold(a1, a2, t1, t2):
    """a1 += t1, a2 += t2 (float64 totals of x-dtype partial sums over ROW_FOLD rows), then t1 = t2 = 0."""
    for c in range(t1.shape[0]):
        a1[c] += t1[c]
        a2[c] += t2[c]
        t1[c] = 0.0
        t2[c] = 0.0


@numba.njit(**NJIT_INLINE)
def _row_block_moments_direct(x, shift, start, stop, a1, a2):
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
        _fold(a1, a2, t1, t2)


@numba.njit(**NJIT_INLINE)
def _row_block_moments_tiled(x, shift, start, stop, a1, a2):
    """a1 += sum(x - shift), a2 += sum((x - shift)^2) over rows [start, stop), one tile of ROW_TILE channels at a
    time: ROW_FOLD rows at a time in x's dtype (one vector lane per channel), folded into the float64 a1, a2."""
    n_chan = x.shape[1]
    t1 = np.zeros(min(n_chan, ROW_TILE), x.dtype)
    t2 = np.zeros(min(n_chan, ROW_TILE), x.dtype)
    for c0 in range(0, n_chan, ROW_TILE):
        c1 = min(c0 + ROW_TILE, n_chan)
        sh, u1, u2 = shift[c0:c1], t1[:c1 - c0], t2[:c1 - c0]
        for begin in range(start, stop, ROW_FOLD):
            for r in range(begin, min(begin + ROW_FOLD, stop)):
                xr = x[r, c0:c1]
                for c in range(c1 - c0):
                    d = xr[c] - sh[c]
                    u1[c] += d
                    u2[c] += d * d
            _fold(a1[c0:c1], a2[c0:c1], u1, u2)


@numba.njit(**NJIT_INLINE)
def _row_block_moments(x, shift, start, stop, a1, a2):
    """`_row_block_moments_tiled` where `_tiles_pay(x)`, else `_row_block_moments_direct`."""
    if _tiles_pay(x):
        _row_block_moments_tiled(x, shift, start, stop, a1, a2)
    else:
        _row_block_moments_direct(x, shift, start, stop, a1, a2)


@numba.njit(**NJIT_INLINE)
def _row_block_grad_sums_direct(dy, x, hi, lo, k, t, code, param, start, stop, a1, a2):
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
        _fold(a1, a2, t1, t2)


@numba.njit(**NJIT_INLINE)
def _row_block_grad_sums_tiled(dy, x, hi, lo, k, t, code, param, start, stop, a1, a2):
    """a1 += sum(g), a2 += sum(g * (x - center)) over rows [start, stop), g = dy * act'(z), one tile of ROW_TILE
    channels at a time: folded like `_row_block_moments` for the piecewise-linear family, in float64 for the
    other activations."""
    n_chan = x.shape[1]
    a, zero = x.dtype.type(slope(code, param)), x.dtype.type(0.0)
    t1 = np.zeros(min(n_chan, ROW_TILE), x.dtype)
    t2 = np.zeros(min(n_chan, ROW_TILE), x.dtype)
    for c0 in range(0, n_chan, ROW_TILE):
        c1 = min(c0 + ROW_TILE, n_chan)
        h, l, kk, tt, b1, b2 = hi[c0:c1], lo[c0:c1], k[c0:c1], t[c0:c1], a1[c0:c1], a2[c0:c1]
        u1, u2 = t1[:c1 - c0], t2[:c1 - c0]
        if code > LINEAR_MAX_CODE:
            for r in range(start, stop):
                gr, xr = dy[r, c0:c1], x[r, c0:c1]
                for c in range(c1 - c0):
                    xc = np.float64(xr[c]) - (np.float64(h[c]) + np.float64(l[c]))
                    g = np.float64(gr[c]) * act_grad(xc * np.float64(kk[c]) + np.float64(tt[c]), code, param)
                    b1[c] += g
                    b2[c] += g * xc
            continue
        for begin in range(start, stop, ROW_FOLD):
            for r in range(begin, min(begin + ROW_FOLD, stop)):
                gr, xr = dy[r, c0:c1], x[r, c0:c1]
                if code == 0:
                    for c in range(c1 - c0):
                        g = gr[c]
                        u1[c] += g
                        u2[c] += g * _centered(xr[c], h[c], l[c])
                else:
                    for c in range(c1 - c0):
                        g = linear_grad(gr[c], _affine_value(xr[c], h[c], l[c], kk[c], tt[c]), code, a, zero)
                        u1[c] += g
                        u2[c] += g * _centered(xr[c], h[c], l[c])
            _fold(b1, b2, u1, u2)


@numba.njit(**NJIT_INLINE)
def _row_block_grad_sums(dy, x, hi, lo, k, t, code, param, start, stop, a1, a2):
    """`_row_block_grad_sums_tiled` where `_tiles_pay(x)`, else `_row_block_grad_sums_direct`."""
    if _tiles_pay(x):
        _row_block_grad_sums_tiled(dy, x, hi, lo, k, t, code, param, start, stop, a1, a2)
    else:
        _row_block_grad_sums_direct(dy, x, hi, lo, k, t, code, param, start, stop, a1, a2)


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


def _compile(fn):
    """(serial, parallel) compiled versions of one kernel function.

    The parallel one is compiled from a copy with its own name, so the two never share a disk-cache entry.
    """
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    return numba.njit(**NJIT_SERIAL)(fn), numba.njit(**NJIT_PARALLEL)(twin)
