"""Numba kernels for in-place activated batch norm: the backward from the output y of an invertible activation.

Per layout (channels-first (N, C, S) and rows (R, C), as in `batch_norm`), with z = act^-1(y), g = dy * act'(z):
  grad_sums_out    sum(g)_c and sum(g * (z - center_c))_c
  grad_input_out   out = k_dy_c * g + k_x_c * (z - center_c) + k_0_c
The piecewise-linear family (identity, relu, leaky_relu) inverts by its slope in the input's dtype on the
channels-first layout; the other activations run in float64.
"""

import numpy as np
from numba import prange

from ..activations import act_inverse
from ..activations import slope as _slope
from ._loops import _compile, _sample_block, _sum_blocks


# ----------------------------------------------------------------------------------------- channels-first
def _grad_sums_out_cf(n_blocks, dy, y, center, code, param, sum_g, sum_g_zc):
    n_batch, n_chan, n_space = y.shape
    p1 = np.empty((n_batch, n_chan))
    p2 = np.empty((n_batch, n_chan))
    linear = code <= 2
    slope = _slope(code, param)
    inv_slope = 1.0 / slope if linear else 1.0
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        for c in range(first, stop):
            m = center[c]
            a1 = 0.0
            a2 = 0.0
            if linear:
                for s in range(n_space):
                    v = np.float64(y[b, c, s])
                    g = np.float64(dy[b, c, s])
                    positive = v > 0.0
                    g = g if positive else slope * g
                    a1 += g
                    a2 += g * ((v if positive else v * inv_slope) - m)
            else:
                for s in range(n_space):
                    z, d = act_inverse(np.float64(y[b, c, s]), code, param)
                    g = dy[b, c, s] * d
                    a1 += g
                    a2 += g * (z - m)
            p1[b, c] = a1
            p2[b, c] = a2
    for c in prange(n_chan):
        sum_g[c], sum_g_zc[c] = _sum_blocks(p1, p2, c)


def _grad_input_out_cf(n_blocks, dy, y, center, code, param, k_dy, k_x, k_0, out):
    n_batch, n_chan, n_space = y.shape
    linear = code <= 2
    for i in prange(n_batch * n_blocks):  # (sample, block of channels) pairs
        b, first, stop = _sample_block(i, n_blocks, n_chan)
        for c in range(first, stop):
            if linear:
                dt = y.dtype.type
                m, a, q, r = dt(center[c]), dt(k_dy[c]), dt(k_x[c]), dt(k_0[c])
                slope = dt(_slope(code, param))
                inv_slope = dt(1.0 / _slope(code, param))
                for s in range(n_space):
                    v = y[b, c, s]
                    positive = v > 0
                    g = dy[b, c, s] if positive else slope * dy[b, c, s]
                    out[b, c, s] = a * g + q * ((v if positive else v * inv_slope) - m) + r
            else:
                m, a, q, r = center[c], k_dy[c], k_x[c], k_0[c]
                for s in range(n_space):
                    z, d = act_inverse(np.float64(y[b, c, s]), code, param)
                    out[b, c, s] = a * (dy[b, c, s] * d) + q * (z - m) + r


# ---------------------------------------------------------------------------------------------------- rows
def _grad_sums_out_rows(n_blocks, dy, y, center, code, param, sum_g, sum_g_zc):
    n_rows, n_chan = y.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    for blk in prange(n_blocks):
        a1 = np.zeros(n_chan)
        a2 = np.zeros(n_chan)
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            for c in range(n_chan):
                z, d = act_inverse(np.float64(y[r, c]), code, param)
                g = dy[r, c] * d
                a1[c] += g
                a2[c] += g * (z - center[c])
        p1[blk] = a1
        p2[blk] = a2
    for c in range(n_chan):
        sum_g[c], sum_g_zc[c] = _sum_blocks(p1, p2, c)


def _grad_input_out_rows(n_blocks, dy, y, center, code, param, k_dy, k_x, k_0, out):
    n_rows, n_chan = y.shape
    for blk in prange(n_blocks):
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            for c in range(n_chan):
                z, d = act_inverse(np.float64(y[r, c]), code, param)
                out[r, c] = k_dy[c] * (dy[r, c] * d) + k_x[c] * (z - center[c]) + k_0[c]


grad_sums_out_cf = _compile(_grad_sums_out_cf)
grad_input_out_cf = _compile(_grad_input_out_cf)
grad_sums_out_rows = _compile(_grad_sums_out_rows)
grad_input_out_rows = _compile(_grad_input_out_rows)
