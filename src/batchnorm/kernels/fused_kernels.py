"""Numba kernels that fuse an activation (and a residual add) into the batch-norm transform and its backward.

Activations are selected by an integer code (see `ACTIVATIONS`) with one float parameter:
  identity  y = z
  relu      y = max(z, 0)
  leaky     y = z if z > 0 else slope * z
  elu       y = z if z > 0 else alpha * (exp(z) - 1)
  silu      y = z * sigmoid(z)
  gelu      y = z * Phi(z)                        (exact, erf form: torch's default)
  gelu_tanh y = z/2 * (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))

Every kernel tests, once per row, whether the activation is piecewise linear (identity, relu, leaky_relu) and
then runs a branch-free loop in the input's dtype (vectorized like the plain kernels); the other activations
take a general loop in float64.

With z = (x - center_c) * scale_c + shift_c (+ residual), the kernels are, per layout (channels-first
(N, C, S) and rows (R, C), as in `numba_kernels`):
  affine_act       out = act(z)                        (out may be x itself: in-place)
  grad_sums_act    sum(g)_c, sum(g * (x - center_c))_c with g = dy * act'(z), z recomputed from x
  grad_input_act   out = k_dy_c * g + k_x_c * (x - center_c) + k_0_c, g recomputed
  grad_add_act     like grad_sums_act with z = affine + residual, and writes g (the residual's gradient)
  grad_sums_out    like grad_sums_act but from the output y of an invertible activation: z = act^-1(y), and
                   the sums are of g and g * (z - center_c)   (in-place activated BN)
  grad_input_out   out = k_dy_c * g + k_x_c * (z - center_c) + k_0_c with g, z from y
"""

import math

import numba
import numpy as np
from numba import prange

from .config import NJIT_SERIAL
from .numba_kernels import _compile

ACTIVATIONS = {"identity": 0, "relu": 1, "leaky_relu": 2, "elu": 3, "silu": 4, "gelu": 5, "gelu_tanh": 6}
INVERTIBLE = ("identity", "leaky_relu", "elu")

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_K = math.sqrt(2.0 / math.pi)


@numba.njit(inline="always", **NJIT_SERIAL)
def _split(center, sample):
    """center (float64) as hi + lo in the dtype of `sample`: (x - hi) - lo keeps x - center's digits in float32."""
    hi = sample.dtype.type(center)
    return hi, sample.dtype.type(center - np.float64(hi))


@numba.njit(inline="always", **NJIT_SERIAL)
def _split_rows(center, sample):
    """Per-channel hi, lo arrays of `_split` for the rows kernels."""
    hi = center.astype(sample.dtype)
    return hi, (center - hi.astype(np.float64)).astype(sample.dtype)


@numba.njit(inline="always", **NJIT_SERIAL)
def _slope(code, param):
    """identity, relu and leaky_relu are one piecewise-linear family: z if z > 0 else slope * z."""
    if code == 0:
        return 1.0
    if code == 1:
        return 0.0
    return param


@numba.njit(inline="always", **NJIT_SERIAL)
def _act(z, code, param):
    if code == 0:
        return z
    if code == 1:
        return z if z > 0.0 else 0.0 * z
    if code == 2:
        return z if z > 0.0 else param * z
    if code == 3:
        return z if z > 0.0 else param * (math.exp(z) - 1.0)
    if code == 4:
        return z / (1.0 + math.exp(-z))
    if code == 5:
        return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))
    inner = _TANH_K * (z + 0.044715 * z * z * z)
    return 0.5 * z * (1.0 + math.tanh(inner))


@numba.njit(inline="always", **NJIT_SERIAL)
def _act_grad(z, code, param):
    """d act / d z at z (at z = 0: relu 0, leaky slope, elu 1 * alpha, as torch's backward)."""
    if code == 0:
        return 1.0
    if code == 1:
        return 1.0 if z > 0.0 else 0.0
    if code == 2:
        return 1.0 if z > 0.0 else param
    if code == 3:  # a NaN z passes the gradient through, as torch's elu_backward (it tests z <= 0)
        return param * math.exp(z) if z <= 0.0 else 1.0
    if code == 4:
        s = 1.0 / (1.0 + math.exp(-z))
        return s * (1.0 + z * (1.0 - s))
    if code == 5:
        return 0.5 * (1.0 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)
    inner = _TANH_K * (z + 0.044715 * z * z * z)
    t = math.tanh(inner)
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _TANH_K * (1.0 + 3.0 * 0.044715 * z * z)


@numba.njit(inline="always", **NJIT_SERIAL)
def _act_inverse(y, code, param):
    """(z, act'(z)) from the output y of an invertible activation (identity, leaky_relu, elu)."""
    if code == 0:
        return y, 1.0
    if code == 2:
        return (y, 1.0) if y > 0.0 else (y / param, param)
    if not y <= 0.0:  # elu; a NaN y passes the gradient through, as torch's elu_backward
        return y, 1.0
    # a saturated output (y = -alpha, z below about -37 in float64) cannot be inverted: log1p(-1) = -inf would
    # make 0 * inf = NaN gradients. Clamp z to the most negative value y can resolve; act'(z) = y + alpha = 0 there
    return math.log1p(max(y / param, -1.0 + 1.1102230246251565e-16)), max(y + param, 0.0)


# ----------------------------------------------------------------------------------------- channels-first
def _affine_act_cf(x, center, scale, shift, code, param, out):
    n_batch, n_chan, n_space = x.shape
    linear = code <= 2
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        if linear:
            (mh, ml), k, t = _split(center[c], x), x.dtype.type(scale[c]), x.dtype.type(shift[c])
            slope = x.dtype.type(_slope(code, param))
            for s in range(n_space):
                z = ((x[b, c, s] - mh) - ml) * k + t
                out[b, c, s] = z if z > 0 else slope * z
        else:
            m, k, t = center[c], scale[c], shift[c]
            for s in range(n_space):
                out[b, c, s] = _act((np.float64(x[b, c, s]) - m) * k + t, code, param)


def _affine_add_act_cf(x, center, scale, shift, residual, code, param, out):
    n_batch, n_chan, n_space = x.shape
    linear = code <= 2
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        if linear:
            (mh, ml), k, t = _split(center[c], x), x.dtype.type(scale[c]), x.dtype.type(shift[c])
            slope = x.dtype.type(_slope(code, param))
            for s in range(n_space):
                z = ((x[b, c, s] - mh) - ml) * k + t + residual[b, c, s]
                out[b, c, s] = z if z > 0 else slope * z
        else:
            m, k, t = center[c], scale[c], shift[c]
            for s in range(n_space):
                out[b, c, s] = _act((np.float64(x[b, c, s]) - m) * k + t + residual[b, c, s], code, param)


def _grad_sums_act_cf(dy, x, center, scale, shift, code, param, sum_g, sum_g_xc):
    n_batch, n_chan, n_space = x.shape
    p1 = np.empty((n_batch, n_chan))
    p2 = np.empty((n_batch, n_chan))
    linear = code <= 2
    slope = _slope(code, param)
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        m, k, t = center[c], scale[c], shift[c]
        a1 = 0.0
        a2 = 0.0
        if linear:  # the sign test repeats the forward's arithmetic, in the input's dtype
            (mh, ml), kt, tt = _split(m, x), x.dtype.type(k), x.dtype.type(t)
            for s in range(n_space):
                g = np.float64(dy[b, c, s])
                g = g if ((x[b, c, s] - mh) - ml) * kt + tt > 0 else slope * g
                a1 += g
                a2 += g * (np.float64(x[b, c, s]) - m)
        else:
            for s in range(n_space):
                xc = np.float64(x[b, c, s]) - m
                g = dy[b, c, s] * _act_grad(xc * k + t, code, param)
                a1 += g
                a2 += g * xc
        p1[b, c] = a1
        p2[b, c] = a2
    for c in prange(n_chan):
        sum_g[c] = p1[:, c].sum()
        sum_g_xc[c] = p2[:, c].sum()


def _grad_input_act_cf(dy, x, center, scale, shift, code, param, k_dy, k_x, k_0, out):
    n_batch, n_chan, n_space = x.shape
    linear = code <= 2
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
        if linear:
            dt = x.dtype.type
            (mh, ml), k, t = _split(center[c], x), dt(scale[c]), dt(shift[c])
            a, q, r, slope = dt(k_dy[c]), dt(k_x[c]), dt(k_0[c]), dt(_slope(code, param))
            for s in range(n_space):
                xc = (x[b, c, s] - mh) - ml
                g = dy[b, c, s] if xc * k + t > 0 else slope * dy[b, c, s]
                out[b, c, s] = a * g + q * xc + r
        else:
            m, k, t = center[c], scale[c], shift[c]
            a, q, r = k_dy[c], k_x[c], k_0[c]
            for s in range(n_space):
                xc = np.float64(x[b, c, s]) - m
                g = dy[b, c, s] * _act_grad(xc * k + t, code, param)
                out[b, c, s] = a * g + q * xc + r


def _grad_add_act_cf(dy, x, center, scale, shift, residual, code, param, g_out, sum_g, sum_g_xc):
    n_batch, n_chan, n_space = x.shape
    p1 = np.empty((n_batch, n_chan))
    p2 = np.empty((n_batch, n_chan))
    linear = code <= 2
    slope = _slope(code, param)
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
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
                g = dy[b, c, s] * _act_grad(xc * k + t + residual[b, c, s], code, param)
                g_out[b, c, s] = g
                a1 += g
                a2 += g * xc
        p1[b, c] = a1
        p2[b, c] = a2
    for c in prange(n_chan):
        sum_g[c] = p1[:, c].sum()
        sum_g_xc[c] = p2[:, c].sum()


def _grad_sums_out_cf(dy, y, center, code, param, sum_g, sum_g_zc):
    n_batch, n_chan, n_space = y.shape
    p1 = np.empty((n_batch, n_chan))
    p2 = np.empty((n_batch, n_chan))
    linear = code <= 2
    slope = _slope(code, param)
    inv_slope = 1.0 / slope if linear else 1.0
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
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
                z, d = _act_inverse(np.float64(y[b, c, s]), code, param)
                g = dy[b, c, s] * d
                a1 += g
                a2 += g * (z - m)
        p1[b, c] = a1
        p2[b, c] = a2
    for c in prange(n_chan):
        sum_g[c] = p1[:, c].sum()
        sum_g_zc[c] = p2[:, c].sum()


def _grad_input_out_cf(dy, y, center, code, param, k_dy, k_x, k_0, out):
    n_batch, n_chan, n_space = y.shape
    linear = code <= 2
    for i in prange(n_batch * n_chan):
        b = i // n_chan
        c = i - b * n_chan
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
                z, d = _act_inverse(np.float64(y[b, c, s]), code, param)
                out[b, c, s] = a * (dy[b, c, s] * d) + q * (z - m) + r


# ---------------------------------------------------------------------------------------------------- rows
def _affine_act_rows(n_blocks, x, center, scale, shift, code, param, out):
    n_rows, n_chan = x.shape
    if code <= 2:
        mh, ml = _split_rows(center, x)
        k, t = scale.astype(x.dtype), shift.astype(x.dtype)
        slope = x.dtype.type(_slope(code, param))
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    z = ((x[r, c] - mh[c]) - ml[c]) * k[c] + t[c]
                    out[r, c] = z if z > 0 else slope * z
    else:
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    out[r, c] = _act((np.float64(x[r, c]) - center[c]) * scale[c] + shift[c], code, param)


def _affine_add_act_rows(n_blocks, x, center, scale, shift, residual, code, param, out):
    n_rows, n_chan = x.shape
    if code <= 2:
        mh, ml = _split_rows(center, x)
        k, t = scale.astype(x.dtype), shift.astype(x.dtype)
        slope = x.dtype.type(_slope(code, param))
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    z = ((x[r, c] - mh[c]) - ml[c]) * k[c] + t[c] + residual[r, c]
                    out[r, c] = z if z > 0 else slope * z
    else:
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    z = (np.float64(x[r, c]) - center[c]) * scale[c] + shift[c] + residual[r, c]
                    out[r, c] = _act(z, code, param)


def _grad_sums_act_rows(n_blocks, dy, x, center, scale, shift, code, param, sum_g, sum_g_xc):
    n_rows, n_chan = x.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    slope = _slope(code, param)
    mh, ml = _split_rows(center, x)
    k, t = scale.astype(x.dtype), shift.astype(x.dtype)
    if code <= 2:  # the sign test repeats the forward's arithmetic, in the input's dtype
        for blk in prange(n_blocks):
            a1 = np.zeros(n_chan)
            a2 = np.zeros(n_chan)
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    g = np.float64(dy[r, c])
                    g = g if ((x[r, c] - mh[c]) - ml[c]) * k[c] + t[c] > 0 else slope * g
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
                    g = dy[r, c] * _act_grad(xc * scale[c] + shift[c], code, param)
                    a1[c] += g
                    a2[c] += g * xc
            p1[blk] = a1
            p2[blk] = a2
    for c in range(n_chan):  # scalar loops: an array .sum() here would become a parallel region per channel
        t1 = 0.0
        t2 = 0.0
        for blk in range(n_blocks):
            t1 += p1[blk, c]
            t2 += p2[blk, c]
        sum_g[c] = t1
        sum_g_xc[c] = t2


def _grad_input_act_rows(n_blocks, dy, x, center, scale, shift, code, param, k_dy, k_x, k_0, out):
    n_rows, n_chan = x.shape
    if code <= 2:
        dt = x.dtype
        mh, ml = _split_rows(center, x)
        k, t = scale.astype(dt), shift.astype(dt)
        a, q, b0 = k_dy.astype(dt), k_x.astype(dt), k_0.astype(dt)
        slope = dt.type(_slope(code, param))
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    xc = (x[r, c] - mh[c]) - ml[c]
                    g = dy[r, c] if xc * k[c] + t[c] > 0 else slope * dy[r, c]
                    out[r, c] = a[c] * g + q[c] * xc + b0[c]
    else:
        for blk in prange(n_blocks):
            for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
                for c in range(n_chan):
                    xc = np.float64(x[r, c]) - center[c]
                    g = dy[r, c] * _act_grad(xc * scale[c] + shift[c], code, param)
                    out[r, c] = k_dy[c] * g + k_x[c] * xc + k_0[c]


def _grad_add_act_rows(n_blocks, dy, x, center, scale, shift, residual, code, param, g_out, sum_g, sum_g_xc):
    n_rows, n_chan = x.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    slope = _slope(code, param)
    mh, ml = _split_rows(center, x)
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
                    g = dy[r, c] * _act_grad(xc * scale[c] + shift[c] + residual[r, c], code, param)
                    g_out[r, c] = g
                    a1[c] += g
                    a2[c] += g * xc
            p1[blk] = a1
            p2[blk] = a2
    for c in range(n_chan):  # scalar loops: an array .sum() here would become a parallel region per channel
        t1 = 0.0
        t2 = 0.0
        for blk in range(n_blocks):
            t1 += p1[blk, c]
            t2 += p2[blk, c]
        sum_g[c] = t1
        sum_g_xc[c] = t2


def _grad_sums_out_rows(n_blocks, dy, y, center, code, param, sum_g, sum_g_zc):
    n_rows, n_chan = y.shape
    p1 = np.zeros((n_blocks, n_chan))
    p2 = np.zeros((n_blocks, n_chan))
    for blk in prange(n_blocks):
        a1 = np.zeros(n_chan)
        a2 = np.zeros(n_chan)
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            for c in range(n_chan):
                z, d = _act_inverse(np.float64(y[r, c]), code, param)
                g = dy[r, c] * d
                a1[c] += g
                a2[c] += g * (z - center[c])
        p1[blk] = a1
        p2[blk] = a2
    for c in range(n_chan):  # scalar loops: an array .sum() here would become a parallel region per channel
        t1 = 0.0
        t2 = 0.0
        for blk in range(n_blocks):
            t1 += p1[blk, c]
            t2 += p2[blk, c]
        sum_g[c] = t1
        sum_g_zc[c] = t2


def _grad_input_out_rows(n_blocks, dy, y, center, code, param, k_dy, k_x, k_0, out):
    n_rows, n_chan = y.shape
    for blk in prange(n_blocks):
        for r in range(blk * n_rows // n_blocks, (blk + 1) * n_rows // n_blocks):
            for c in range(n_chan):
                z, d = _act_inverse(np.float64(y[r, c]), code, param)
                out[r, c] = k_dy[c] * (dy[r, c] * d) + k_x[c] * (z - center[c]) + k_0[c]


affine_act_cf = _compile(_affine_act_cf)
affine_add_act_cf = _compile(_affine_add_act_cf)
grad_sums_act_cf = _compile(_grad_sums_act_cf)
grad_input_act_cf = _compile(_grad_input_act_cf)
grad_add_act_cf = _compile(_grad_add_act_cf)
grad_sums_out_cf = _compile(_grad_sums_out_cf)
grad_input_out_cf = _compile(_grad_input_out_cf)
affine_act_rows = _compile(_affine_act_rows)
affine_add_act_rows = _compile(_affine_add_act_rows)
grad_sums_act_rows = _compile(_grad_sums_act_rows)
grad_input_act_rows = _compile(_grad_input_act_rows)
grad_add_act_rows = _compile(_grad_add_act_rows)
grad_sums_out_rows = _compile(_grad_sums_out_rows)
grad_input_out_rows = _compile(_grad_input_out_rows)
