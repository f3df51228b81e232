"""Numba kernels for BN + add + activation (the residual join of a ResNet block).

Activations are the codes of `activations.py`. The piecewise-linear family (identity, relu, leaky_relu) runs a
branch-free loop in the input's dtype (vectorized like the plain kernels); the other activations a general loop
in float64. (BN + activation alone runs on the kernels of `batch_norm`.)

With z = (x - center_c) * scale_c + shift_c + residual, the kernels are, per layout (channels-first
(N, C, S) and rows (R, C), as in `batch_norm`):
  affine_add_act   out = act(z)
  grad_add_act     g = dy * act'(z) (the residual's gradient, written out), sum(g)_c, sum(g * (x - center_c))_c
"""

import numba
import numpy as np
from numba import prange

from ..activations import act, act_grad, linear_act
from ..activations import slope as _slope
from ..config import NJIT_SERIAL
from ._loops import _compile, _sample_block, _split_center, _sum_blocks, center_remainder


@numba.njit(inline="always", **NJIT_SERIAL)
def _split(center, sample):
    """center (float64) as hi + lo in the dtype of `sample`: (x - hi) - lo keeps x - center's digits in float32."""
    hi = sample.dtype.type(center)
    return hi, sample.dtype.type(center_remainder(np.float64(center), np.float64(hi)))


# ----------------------------------------------------------------------------------------- channels-first
def _affine_add_act_cf(n_blocks, x, center, scale, shift, residual, code, param, out):
    n_batch, n_chan, n_space = x.shape
    linear = code <= 2
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        for c in range(first, stop):
            if linear:
                (mh, ml), k, t = _split(center[c], x), x.dtype.type(scale[c]), x.dtype.type(shift[c])
                slope, zero = x.dtype.type(_slope(code, param)), x.dtype.type(0.0)
                for s in range(n_space):
                    z = ((x[b, c, s] - mh) - ml) * k + t + residual[b, c, s]
                    out[b, c, s] = linear_act(z, code, slope, zero)
            else:
                m, k, t = center[c], scale[c], shift[c]
                for s in range(n_space):
                    out[b, c, s] = act((np.float64(x[b, c, s]) - m) * k + t + residual[b, c, s], code, param)


def _grad_add_act_cf(n_blocks, dy, x, center, scale, shift, residual, code, param, g_out, sum_g, sum_g_xc):
    n_batch, n_chan, n_space = x.shape
    p1 = np.empty((n_batch, n_chan))
    p2 = np.empty((n_batch, n_chan))
    linear = code <= 2
    slope = _slope(code, param)
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        for c in range(first, stop):
            m, k, t = center[c], scale[c], shift[c]
            a1 = 0.0
            a2 = 0.0
            if linear:  # the sign test repeats the forward's arithmetic, in the input's dtype
                (mh, ml), kt, tt = _split(m, x), x.dtype.type(k), x.dtype.type(t)
                for s in range(n_space):
                    g = np.float64(dy[b, c, s])
                    g = g if ((x[b, c, s] - mh) - ml) * kt + tt + residual[b, c, s] > 0 else slope * g
                    g_out[b, c, s] = g
                    a1 += g
                    a2 += g * (np.float64(x[b, c, s]) - m)
            else:
                for s in range(n_space):
                    xc = np.float64(x[b, c, s]) - m
                    g = dy[b, c, s] * act_grad(xc * k + t + residual[b, c, s], code, param)
                    g_out[b, c, s] = g
                    a1 += g
                    a2 += g * xc
            p1[b, c] = a1
            p2[b, c] = a2
    for c in prange(n_chan):
        sum_g[c], sum_g_xc[c] = _sum_blocks(p1, p2, c)


# ---------------------------------------------------------------------------------------------------- rows
def _affine_add_act_rows(n_blocks, x, center, scale, shift, residual, code, param, out):
    n_rows, n_chan = x.shape
    if code <= 2:
        mh, ml = _split_center(center, x)
        k, t = scale.astype(x.dtype), shift.astype(x.dtype)
        slope, zero = x.dtype.type(_slope(code, param)), x.dtype.type(0.0)
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    z = ((x[r, c] - mh[c]) - ml[c]) * k[c] + t[c] + residual[r, c]
                    out[r, c] = linear_act(z, code, slope, zero)
    else:
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    z = (np.float64(x[r, c]) - center[c]) * scale[c] + shift[c] + residual[r, c]
                    out[r, c] = act(z, code, param)


def _grad_add_act_rows(n_blocks, dy, x, center, scale, shift, residual, code, param, g_out, sum_g, sum_g_xc):
    n_rows, n_chan = x.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    slope = _slope(code, param)
    mh, ml = _split_center(center, x)
    k, t = scale.astype(x.dtype), shift.astype(x.dtype)
    if code <= 2:  # the sign test repeats the forward's arithmetic, in the input's dtype
        for blk in prange(n_blocks):
            a1 = np.zeros(n_chan)
            a2 = np.zeros(n_chan)
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    g = np.float64(dy[r, c])
                    g = g if ((x[r, c] - mh[c]) - ml[c]) * k[c] + t[c] + residual[r, c] > 0 else slope * g
                    g_out[r, c] = g
                    a1[c] += g
                    a2[c] += g * (np.float64(x[r, c]) - center[c])
            p1[blk] = a1
            p2[blk] = a2
    else:
        for blk in prange(n_blocks):
            a1 = np.zeros(n_chan)
            a2 = np.zeros(n_chan)
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    xc = np.float64(x[r, c]) - center[c]
                    g = dy[r, c] * act_grad(xc * scale[c] + shift[c] + residual[r, c], code, param)
                    g_out[r, c] = g
                    a1[c] += g
                    a2[c] += g * xc
            p1[blk] = a1
            p2[blk] = a2
    for c in range(n_chan):
        sum_g[c], sum_g_xc[c] = _sum_blocks(p1, p2, c)


affine_add_act_cf = _compile(_affine_add_act_cf)
grad_add_act_cf = _compile(_grad_add_act_cf)
affine_add_act_rows = _compile(_affine_add_act_rows)
grad_add_act_rows = _compile(_grad_add_act_rows)
