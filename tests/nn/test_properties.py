"""Property tests (hypothesis) of every batch-norm layer against the float64 reference (`batchnorm.reference`).

Random shapes (N, C, *spatial) of rank 2-5, layouts (contiguous, channels_last, sliced/strided views, views with
a storage offset, permuted views), float32/float64, momenta (0, 1, None, random), eps, affine on/off, and the
degenerate cases: N=1 with spatial size > 1, constant channels, huge (1e8) and tiny (1e-8) scales, +-1e4
offsets. Each example runs two training steps (outputs, running statistics, num_batches_tracked, input/weight/bias
gradients) and one eval step, and compares with the NumPy float64 reference run on the same values (the fused
activations go through torch's float64 activation on the reference's pre-activation).

Tolerances are forward-error bounds, not fudge factors: with u the unit roundoff of the input's dtype and, per
channel, kappa = max|x| / sqrt(var + eps) (how many digits the centering x - mean cancels),
    |y - y_ref| <= K u (1 + kappa) (|gamma| + |y_ref|)   and the same shape of bound for every other result.
K = 64; a wrong formula (biased for unbiased variance, eps outside the root, a missing term) gives errors of
order 1.

float16/bfloat16 inputs with float32 parameters route to torch: they must equal torch's module bit for bit.
The number of examples per test is explicit (`EXAMPLES`) and reported in the README's reliability table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchnorm.nn as bnn
from batchnorm.testing import reference as ref
from batchnorm.functional import torch_activation

EXAMPLES = 60          # hypothesis examples per layer family and per run
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
K = 64.0
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}
TINY = {torch.float32: 1e-35, torch.float64: 1e-300}   # below this a float32 result may underflow to 0
CLASSES = {
    "bn": (bnn.BatchNorm1d, bnn.BatchNorm2d, bnn.BatchNorm3d),
    "act": (bnn.BatchNormAct1d, bnn.BatchNormAct2d, bnn.BatchNormAct3d),
    "addact": (bnn.BatchNormAddAct1d, bnn.BatchNormAddAct2d, bnn.BatchNormAddAct3d),
    "inplace": (bnn.InPlaceABN1d, bnn.InPlaceABN2d, bnn.InPlaceABN3d),
    "renorm": (bnn.BatchRenorm1d, bnn.BatchRenorm2d, bnn.BatchRenorm3d),
    "frozen": (bnn.FrozenBatchNorm1d, bnn.FrozenBatchNorm2d, bnn.FrozenBatchNorm3d),
    "sync": (bnn.SyncBatchNorm,) * 3,
}
ACTIVATIONS = {"identity": 0.0, "relu": 0.0, "leaky_relu": 0.1, "elu": 0.7, "silu": 0.0, "gelu": 0.0,
               "gelu_tanh": 0.0}


def _class(kind: str, rank: int):
    return CLASSES[kind][{2: 0, 3: 0, 4: 1, 5: 2}[rank]]


# ------------------------------------------------------------------------------------------ inputs
@st.composite
def batches(draw, layouts=("contiguous", "channels_last", "strided", "offset", "permuted")):
    """(x as float64 values, shape, layout, dtype, per-channel constant flags) drawn at random."""
    rank = draw(st.sampled_from([2, 3, 4, 5]))
    spatial = [draw(st.integers(1, 4)) for _ in range(rank - 2)]
    n_min = 1 if int(np.prod(spatial)) > 1 else 2          # N=1 only when there is spatial extent
    n = draw(st.integers(n_min, 5))
    c = draw(st.integers(1, 5))
    shape = (n, c, *spatial)
    allowed = [lay for lay in layouts if lay != "channels_last" or rank >= 4]
    layout = draw(st.sampled_from(allowed))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    scale = draw(st.sampled_from([1.0, 1.0, 1e8, 1e-8, 3e-3, 40.0]))
    offset = draw(st.sampled_from([0.0, 0.0, 1e4, -1e4, 2.5]))
    constant = [draw(st.booleans()) and draw(st.booleans()) for _ in range(c)]   # ~1 in 4 channels constant
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape) * scale + offset
    for channel, flat in enumerate(constant):
        if flat:
            values[:, channel] = offset + scale * rng.standard_normal()
    return values, layout, dtype, seed


def _as_layout(values: np.ndarray, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """The tensor holding `values` in the requested memory layout (the values are the same)."""
    x = torch.from_numpy(values).to(dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if layout == "strided":        # every other element of a twice-as-long last dimension
        big = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=dtype)
        big[..., ::2] = x
        view = big[..., ::2]
        assert not view.is_contiguous() or x.shape[-1] == 1
        return view
    if layout == "offset":         # a contiguous view that starts inside a larger storage
        big = torch.zeros((x.shape[0] + 1,) + x.shape[1:], dtype=dtype)
        big[1:] = x
        return big[1:]
    if layout == "permuted" and x.dim() >= 3:   # N and the last dimension swapped in memory
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    return x.clone()


def _cl_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d


def _values(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy()


def _params(c: int, seed: int, affine: bool):
    if not affine:
        return None, None
    rng = np.random.default_rng(seed + 1)
    weight = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    bias = rng.standard_normal(c)
    return weight, bias


def _bc(v: np.ndarray, ndim: int) -> np.ndarray:
    return np.asarray(v).reshape((1, -1) + (1,) * (ndim - 2))


def _reduce(a: np.ndarray) -> tuple:
    return (0,) + tuple(range(2, a.ndim))


# ---------------------------------------------------------------------------------------- bounds
def _kappa(x64: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    """Per-channel conditioning of the centering: max|x| / sqrt(var + eps)."""
    return np.abs(x64).max(axis=_reduce(x64)) / np.sqrt(var + eps)


def _close(name: str, ours: np.ndarray, oracle: np.ndarray, bound: np.ndarray) -> None:
    ours, oracle = np.asarray(ours, dtype=np.float64), np.asarray(oracle, dtype=np.float64)
    assert ours.shape == oracle.shape, (name, ours.shape, oracle.shape)
    assert np.all(np.isfinite(ours) == np.isfinite(oracle)), f"{name}: non-finite values differ"
    error = np.abs(ours - oracle)
    error[~np.isfinite(oracle)] = 0.0
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else None
    assert np.all(error <= bound), (f"{name}: error {error[worst]:.3g} > bound {np.broadcast_to(bound, error.shape)[worst]:.3g} "
                                    f"at {worst} (ours {ours[worst]!r}, reference {oracle[worst]!r})")


# ------------------------------------------------------------------------------- the comparisons
def _run_training_steps(kind: str, values, layout, dtype, seed, momentum, eps, affine, activation="identity"):
    """Two training steps and an eval step of our layer and of the reference; compares everything."""
    rng = np.random.default_rng(seed + 2)
    ndim, c = values.ndim, values.shape[1]
    u = UNIT_ROUNDOFF[dtype]
    weight, bias = _params(c, seed, affine)
    kwargs = {"eps": eps, "momentum": momentum, "affine": affine}
    if kind in ("act", "inplace"):
        kwargs.update(activation=activation, activation_param=ACTIVATIONS[activation])
    if kind == "addact":
        kwargs.update(activation=activation, activation_param=ACTIVATIONS[activation])
    layer = _class(kind, ndim)(c, **kwargs).to(dtype)
    if affine:
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(weight))
            layer.bias.copy_(torch.from_numpy(bias))
    running_mean, running_var, tracked = np.zeros(c), np.ones(c), 0
    for step in range(3):
        training = step < 2
        layer.train(training)
        step_values = values if step == 0 else values * (1.0 + 0.5 * step) + rng.standard_normal(values.shape)
        x = _as_layout(step_values, dtype, layout)
        if kind == "inplace":
            leaf = x.clone().requires_grad_(True)
            x_in = leaf * 1.0                                  # not a leaf, nothing saved: may be overwritten
            if layout == "channels_last":
                x_in = x_in.contiguous(memory_format=_cl_format(x))
        else:
            leaf = x.requires_grad_(True)
            x_in = leaf
        x64 = _values(x)
        dy64 = rng.standard_normal(values.shape)
        residual64 = rng.standard_normal(values.shape) if kind == "addact" else None
        # ours
        if kind == "addact":
            y = layer(x_in, torch.from_numpy(residual64).to(dtype))
        else:
            y = layer(x_in)
        assert y.dtype == dtype and y.shape == x.shape
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=_cl_format(x)), "channels_last in, channels_last out"
        y.backward(torch.from_numpy(dy64).to(dtype))
        # reference
        if not training:  # eval reads the layer's running buffers, checked against the reference's at each training
            # step; the reference's own differ by that rounding, which 1 / sqrt(running_var + eps) can magnify
            running_mean, running_var = _values(layer.running_mean), _values(layer.running_var)
        running_mean_before = running_mean
        if training:
            mean, var, count = ref.batch_statistics(x64)
            z_ref, cache = ref.batch_norm_train_forward(x64, weight, bias, eps)
            norm_var = var
        else:
            z_ref = ref.batch_norm_eval_forward(x64, running_mean, running_var, weight, bias, eps)
            norm_var = running_var
        if residual64 is not None:
            z_ref = z_ref + residual64
        z_t = torch.from_numpy(z_ref).requires_grad_(True)
        y_t = torch_activation(z_t, activation, ACTIVATIONS[activation])
        (g,) = torch.autograd.grad(y_t, z_t, torch.from_numpy(dy64))
        y_ref, g = y_t.detach().numpy(), g.numpy()
        if training:
            dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_backward(g, cache, weight)
            running_mean, running_var, tracked = ref.update_running_stats(
                running_mean, running_var, tracked, mean, var, count, momentum)
        else:
            dx_ref, dgamma_ref, dbeta_ref = ref.batch_norm_eval_backward(g, x64, running_mean, running_var, weight,
                                                                         eps)
        # bounds: dz bounds the error of the pre-activation; an activation turns it into an error of
        # g = dy act'(z) of at most |dy| dz (|act''| <= 1 for the parameters used), or |dy| where z is within dz
        # of a kink (relu, leaky_relu at 0), which then reaches every gradient through the sums
        gamma = np.ones(c) if weight is None else np.abs(weight)
        kappa = _bc(1.0 + _kappa(x64, norm_var, eps), ndim)
        beta = np.zeros(c) if bias is None else np.abs(bias)
        floor = TINY[dtype]
        dz = K * u * (kappa * (_bc(gamma, ndim) + _bc(beta, ndim)) + np.abs(z_ref))
        _close(f"step {step} y", _values(y), y_ref, dz + K * u * np.abs(y_ref) + floor)
        inv_std = 1.0 / np.sqrt(norm_var + eps)
        x_hat = (x64 - _bc(ref.batch_statistics(x64)[0] if training else running_mean_before, ndim)) \
            * _bc(inv_std, ndim)
        dg = np.zeros_like(g)
        if activation != "identity":
            dg = np.abs(dy64) * dz
            if activation in ("relu", "leaky_relu"):
                dg = np.where(np.abs(z_ref) <= dz, np.abs(dy64), dg)
        axes = _reduce(g)
        m = max(g.size // max(c, 1), 1)
        dg_sum, dg_xhat_sum = dg.sum(axis=axes), (dg * np.abs(x_hat)).sum(axis=axes)
        g_scale = np.abs(g).max(axis=axes, initial=0.0)
        coupling = (_bc(dg_sum, ndim) + _bc(dg_xhat_sum, ndim) * np.abs(x_hat)) / m if training else 0.0
        if kind == "inplace" and activation == "elu" and training:
            # InPlaceABN recovers z = log1p(y / alpha) from its output: for z < 0 that costs u exp(-z) of z
            # (all of it once y rounds to -alpha, where z is clamped), which reaches dx through k_x (x - mean)
            # and dweight through sum g (z - beta) / gamma (g = dy alpha exp(z) keeps that product small)
            lost = np.where(z_ref < 0, np.minimum(K * u * np.exp(np.minimum(-z_ref, 700.0)), np.abs(z_ref) + 40.0),
                            0.0)
            k_z = np.abs(inv_std * dgamma_ref / m) if affine else np.abs(inv_std * (g * x_hat).sum(axis=axes) / m)
            coupling = coupling + _bc(k_z, ndim) * lost / _bc(gamma * inv_std, ndim)
            dg_xhat_sum = dg_xhat_sum + (np.abs(g) * lost).sum(axis=axes) / gamma
        _close(f"step {step} dx", _values(leaf.grad), dx_ref,
               K * u * kappa * _bc(gamma * inv_std * g_scale, ndim) * 4 + K * u * np.abs(dx_ref)
               + _bc(gamma * inv_std, ndim) * (dg + coupling) + floor)
        if affine:
            g_sum = np.abs(g).sum(axis=axes)
            _close(f"step {step} dweight", _values(layer.weight.grad), dgamma_ref,
                   K * u * (1.0 + _kappa(x64, norm_var, eps)) * g_sum * 2 + dg_xhat_sum + floor)
            _close(f"step {step} dbias", _values(layer.bias.grad), dbeta_ref, K * u * g_sum + dg_sum + floor)
            layer.weight.grad = layer.bias.grad = None
        if training:
            std = np.sqrt(var)
            xmax = np.abs(x64).max(axis=_reduce(x64))
            _close(f"step {step} running_mean", _values(layer.running_mean), running_mean,
                   K * u * (xmax + np.abs(running_mean)))
            _close(f"step {step} running_var", _values(layer.running_var), running_var,
                   K * u * (running_var + xmax * std * 4 + xmax ** 2 * (u if dtype == torch.float64 else 0.0)))
            assert int(layer.num_batches_tracked) == tracked


MOMENTA = st.sampled_from([0.1, 0.0, 1.0, None, 0.37])
EPSILONS = st.sampled_from([1e-5, 1e-3, 0.5, 1e-10])


@SETTINGS
@given(batch=batches(), momentum=MOMENTA, eps=EPSILONS, affine=st.booleans())
def test_batchnorm_matches_reference(batch, momentum, eps, affine):
    values, layout, dtype, seed = batch
    _run_training_steps("bn", values, layout, dtype, seed, momentum, eps, affine)


@SETTINGS
@given(batch=batches(), momentum=MOMENTA, eps=EPSILONS, activation=st.sampled_from(list(ACTIVATIONS)))
def test_batchnorm_act_matches_reference(batch, momentum, eps, activation):
    values, layout, dtype, seed = batch
    _run_training_steps("act", values, layout, dtype, seed, momentum, eps, True, activation)


@SETTINGS
@given(batch=batches(), momentum=MOMENTA, eps=EPSILONS, activation=st.sampled_from(["relu", "identity", "silu"]))
def test_batchnorm_add_act_matches_reference(batch, momentum, eps, activation):
    values, layout, dtype, seed = batch
    _run_training_steps("addact", values, layout, dtype, seed, momentum, eps, True, activation)


@SETTINGS
@given(batch=batches(layouts=("contiguous", "channels_last", "offset")), momentum=MOMENTA, eps=EPSILONS,
       activation=st.sampled_from(["identity", "leaky_relu", "elu"]))
def test_inplace_abn_matches_reference(batch, momentum, eps, activation):
    values, layout, dtype, seed = batch
    _run_training_steps("inplace", values, layout, dtype, seed, momentum, eps, True, activation)


@SETTINGS
@given(batch=batches(), momentum=MOMENTA, eps=EPSILONS, affine=st.booleans())
def test_sync_batchnorm_without_process_group_matches_reference(batch, momentum, eps, affine):
    """SyncBatchNorm outside torch.distributed is BatchNorm: run the same comparison through it."""
    values, layout, dtype, seed = batch
    _run_training_steps("sync", values, layout, dtype, seed, momentum, eps, affine)


# ------------------------------------------------------------------------ variants with own references
@SETTINGS
@given(batch=batches(), eps=EPSILONS, rmax=st.sampled_from([1.0, 1.5, 3.0]), dmax=st.sampled_from([0.0, 0.5, 5.0]))
def test_batch_renorm_matches_reference(batch, eps, rmax, dmax):
    """Limits in force from step 0 (warm-up 0), running statistics away from the batch's so r, d clip."""
    values, layout, dtype, seed = batch
    c, ndim, u = values.shape[1], values.ndim, UNIT_ROUNDOFF[dtype]
    weight, bias = _params(c, seed, True)
    layer = _class("renorm", ndim)(c, eps=eps, momentum=0.2, rmax=rmax, dmax=dmax, warmup_steps=0, rmax_steps=0,
                                   dmax_steps=0).to(dtype)
    rng = np.random.default_rng(seed + 3)
    running_mean = rng.standard_normal(c) * np.abs(values).max() * 0.1
    running_var = rng.uniform(0.1, 4.0, c) * (values.std() ** 2 + eps)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
        layer.running_mean.copy_(torch.from_numpy(running_mean))
        layer.running_var.copy_(torch.from_numpy(running_var))
    x = _as_layout(values, dtype, layout).requires_grad_(True)
    x64 = _values(x)
    dy64 = rng.standard_normal(values.shape)
    y = layer(x)
    y.backward(torch.from_numpy(dy64).to(dtype))
    running_mean, running_var = _values(layer.running_mean) * 0 + running_mean, running_var   # before the step
    y_ref, cache = ref.batch_renorm_train_forward(x64, running_mean, running_var, weight, bias, eps, rmax, dmax)
    dx_ref, dgamma_ref, dbeta_ref = ref.batch_renorm_backward(dy64, cache, weight)
    kappa = _bc(1.0 + _kappa(x64, cache.var, eps), ndim)
    scale = _bc(np.abs(weight) * (cache.r + np.abs(cache.d)) + np.abs(bias), ndim)
    # r and d are clipped ratios of statistics: near a clip boundary a rounding can pick the other side of min/max,
    # which moves them continuously, so the same bound applies
    _close("y", _values(y), y_ref, K * u * kappa * scale * 4 + K * u * np.abs(y_ref))
    g_scale = np.abs(dy64).max(axis=_reduce(dy64))
    _close("dx", _values(x.grad), dx_ref,
           K * u * kappa * _bc(np.abs(weight) * cache.r * cache.inv_std * g_scale, ndim) * 8 + K * u * np.abs(dx_ref))
    g_sum = np.abs(dy64).sum(axis=_reduce(dy64))
    _close("dweight", _values(layer.weight.grad), dgamma_ref, K * u * (1 + _kappa(x64, cache.var, eps)) * g_sum * 8)
    _close("dbias", _values(layer.bias.grad), dbeta_ref, K * u * g_sum + 1e-300)


@SETTINGS
@given(batch=batches(), eps=EPSILONS, virtual=st.integers(2, 4), momentum=MOMENTA)
def test_ghost_batchnorm_matches_reference(batch, eps, virtual, momentum):
    values, layout, dtype, seed = batch
    c, ndim, u = values.shape[1], values.ndim, UNIT_ROUNDOFF[dtype]
    weight, bias = _params(c, seed, True)
    layer = _class("bn", ndim)(c, eps=eps, momentum=momentum, virtual_batch_size=virtual).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    x = _as_layout(values, dtype, layout).requires_grad_(True)
    x64 = _values(x)
    dy64 = np.random.default_rng(seed + 4).standard_normal(values.shape)
    y = layer(x)
    y.backward(torch.from_numpy(dy64).to(dtype))
    y_ref, cache = ref.ghost_batch_norm_train_forward(x64, virtual, weight, bias, eps)
    dx_ref, dgamma_ref, dbeta_ref = ref.ghost_batch_norm_backward(dy64, cache, weight)
    mean, unbiased, count = ref.ghost_running_moments(x64, cache.bounds)
    stats = ref.update_running_moments(np.zeros(c), np.ones(c), 0, mean, unbiased, count, momentum)
    worst_var = np.min([chunk.var for chunk in cache.caches], axis=0)
    kappa = _bc(1.0 + _kappa(x64, worst_var, eps), ndim)
    _close("y", _values(y), y_ref, K * u * kappa * _bc(np.abs(weight) + np.abs(bias), ndim) + K * u * np.abs(y_ref))
    g_scale = np.abs(dy64).max(axis=_reduce(dy64))
    _close("dx", _values(x.grad), dx_ref,
           K * u * kappa * _bc(np.abs(weight) / np.sqrt(worst_var + eps) * g_scale, ndim) * 4 + K * u * np.abs(dx_ref))
    g_sum = np.abs(dy64).sum(axis=_reduce(dy64))
    _close("dweight", _values(layer.weight.grad), dgamma_ref, K * u * (1 + _kappa(x64, worst_var, eps)) * g_sum * 2)
    xmax = np.abs(x64).max(axis=_reduce(x64))
    _close("running_mean", _values(layer.running_mean), stats.running_mean, K * u * (xmax + 1.0))
    _close("running_var", _values(layer.running_var), stats.running_var,
           K * u * (stats.running_var + xmax ** 2 * (u if dtype == torch.float64 else 1.0) * 0 + xmax * np.sqrt(
               np.abs(unbiased)) * 4) + K * u)
    assert int(layer.num_batches_tracked) == 1


@SETTINGS
@given(batch=batches(), eps=st.sampled_from([1e-5, 1e-9, 0.3]), trainable=st.booleans())
def test_frozen_batchnorm_matches_reference(batch, eps, trainable):
    values, layout, dtype, seed = batch
    c, ndim, u = values.shape[1], values.ndim, UNIT_ROUNDOFF[dtype]
    weight, bias = _params(c, seed, True)
    rng = np.random.default_rng(seed + 5)
    running_mean = rng.standard_normal(c) * (np.abs(values).max() + 1.0) * 0.5
    running_var = rng.uniform(0.5, 2.0, c) * (values.var() + 1e-3)
    layer = _class("frozen", ndim)(c, eps=eps, affine_trainable=trainable).to(dtype)
    with torch.no_grad():
        for tensor, v in ((layer.weight, weight), (layer.bias, bias), (layer.running_mean, running_mean),
                          (layer.running_var, running_var)):
            tensor.copy_(torch.from_numpy(v))
    layer.train()
    x = _as_layout(values, dtype, layout).requires_grad_(True)
    x64 = _values(x)
    dy64 = rng.standard_normal(values.shape)
    y = layer(x)
    y.backward(torch.from_numpy(dy64).to(dtype))
    rm, rv = _values(layer.running_mean), _values(layer.running_var)   # as stored in the layer's dtype
    y_ref = ref.frozen_batch_norm_forward(x64, rm, rv, _values(layer.weight), _values(layer.bias), eps)
    dx_ref, dgamma_ref, dbeta_ref = ref.frozen_batch_norm_backward(dy64, x64, rm, rv, _values(layer.weight), eps)
    kappa_c = 1.0 + (np.abs(x64).max(axis=_reduce(x64)) + np.abs(rm)) / np.sqrt(rv + eps)
    kappa = _bc(kappa_c, ndim)
    _close("y", _values(y), y_ref, K * u * kappa * _bc(np.abs(weight) + np.abs(bias), ndim) + K * u * np.abs(y_ref))
    _close("dx", _values(x.grad), dx_ref, K * u * np.abs(dx_ref) + 1e-300)
    if trainable:
        g_sum = np.abs(dy64).sum(axis=_reduce(dy64))
        _close("dweight", _values(layer.weight.grad), dgamma_ref, K * u * kappa_c * g_sum)
        _close("dbias", _values(layer.bias.grad), dbeta_ref, K * u * g_sum + 1e-300)
    else:
        assert layer.weight.grad is None and layer.bias.grad is None
    assert np.array_equal(_values(layer.running_mean), rm) and int(layer.num_batches_tracked) == 0


# ----------------------------------------------------------------- float16 / bfloat16: exactly torch's
@SETTINGS
@given(batch=batches(layouts=("contiguous", "channels_last", "strided")),
       half=st.sampled_from([torch.float16, torch.bfloat16]), momentum=MOMENTA, affine=st.booleans(),
       kind=st.sampled_from(["bn", "act", "sync"]))
def test_half_precision_inputs_with_float32_parameters_behave_exactly_like_torch(batch, half, momentum, affine,
                                                                                 kind):
    values, layout, _, seed = batch
    values = np.clip(values, -2e4, 2e4) if half == torch.float16 else values   # x (1 + step) stays finite
    c, ndim = values.shape[1], values.ndim
    weight, bias = _params(c, seed, affine)
    if kind == "sync":
        ours = bnn.SyncBatchNorm(c, momentum=momentum, affine=affine)
    elif kind == "act":
        ours = _class("act", ndim)(c, momentum=momentum, affine=affine, activation="relu")
    else:
        ours = _class("bn", ndim)(c, momentum=momentum, affine=affine)
    theirs = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
              5: torch.nn.BatchNorm3d}[ndim](c, momentum=momentum, affine=affine)
    if affine:
        for layer in (ours, theirs):
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(weight))
                layer.bias.copy_(torch.from_numpy(bias))
    rng = np.random.default_rng(seed + 6)
    for step in range(3):
        for layer in (ours, theirs):
            layer.train(step < 2)
        x = _as_layout(values * (1 + step), half, layout)
        dy = torch.from_numpy(rng.standard_normal(values.shape)).to(half)
        outputs = []
        for layer, post in ((ours, lambda t: t), (theirs, torch.relu if kind == "act" else (lambda t: t))):
            leaf = x.detach().clone().requires_grad_(True)
            y = post(layer(leaf))
            y.backward(dy)
            outputs.append((y.detach(), leaf.grad, [p.grad.clone() for p in layer.parameters()]))
            for p in layer.parameters():
                p.grad = None
        (y1, dx1, g1), (y2, dx2, g2) = outputs
        assert y1.dtype == half and _same(y1, y2), f"step {step}: outputs differ from torch's"
        assert _same(dx1, dx2), f"step {step}: input gradients differ from torch's"
        assert all(_same(a, b) for a, b in zip(g1, g2))
        assert ours.weight is None or ours.weight.dtype == torch.float32
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert _same(getattr(ours, name), getattr(theirs, name)), f"step {step}: {name}"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equal values (NaN equal to NaN), same dtype and shape."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.all((a == b) | (a.isnan() & b.isnan())))
