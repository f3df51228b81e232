"""Statistics variants against their float64 NumPy references: Batch Renorm, Ghost BN, masked BN, frozen BN,
non-finite-safe running updates; gradcheck, state-dict interchange, argument errors."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import batchnorm.nn as bnn
from batchnorm.testing import reference
from batchnorm.nn._statistics import ghost_chunk_bounds
from batchnorm.nn.renorm import renorm_limits
from helpers.cases import random_affine_, relative_error

EXACT = 1e-12
RENORM = {1: bnn.BatchRenorm1d, 2: bnn.BatchRenorm2d, 3: bnn.BatchRenorm3d}
PLAIN = {1: bnn.BatchNorm1d, 2: bnn.BatchNorm2d, 3: bnn.BatchNorm3d}
FROZEN = {1: bnn.FrozenBatchNorm1d, 2: bnn.FrozenBatchNorm2d, 3: bnn.FrozenBatchNorm3d}
SHAPES = {"NC": (1, (9, 4)), "NCL": (1, (5, 4, 6)), "NCHW": (2, (5, 4, 3, 2)), "NCDHW": (3, (3, 4, 2, 3, 2))}


def _np(t):
    return None if t is None else t.detach().to(torch.float64).numpy().copy()


def _close(name, actual, expected, tol=EXACT):
    error = relative_error(torch.as_tensor(actual), torch.as_tensor(np.asarray(expected)))
    assert error < tol, f"{name}: relative error {error:.3g} >= {tol}"


def _grad_step(layer, x, generator, *args):
    """One forward + backward with a random upstream gradient; returns (y, dx, dweight, dbias, upstream)."""
    x = x.clone().requires_grad_()
    y = layer(x, *args)
    upstream = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    y.backward(upstream)
    weight = getattr(layer, "weight", None)
    grads = [None if p is None or p.grad is None else p.grad.clone() for p in (weight, getattr(layer, "bias", None))]
    for p in (weight, getattr(layer, "bias", None)):
        if p is not None:
            p.grad = None
    return y, x.grad, grads[0], grads[1], upstream


def _compare_step(layer, y, dx, dweight, dbias, expected, tol=EXACT):
    y_ref, dx_ref, dgamma_ref, dbeta_ref = expected
    _close("output", y, y_ref, tol)
    _close("input grad", dx, dx_ref, tol)
    if layer.weight is not None and layer.weight.requires_grad:
        _close("weight grad", dweight, dgamma_ref, tol)
        _close("bias grad", dbias, dbeta_ref, tol)


def _shifted_batch(shape, generator, step, dtype=torch.float64):
    """A batch whose per-channel location and scale drift with the step (so Renorm's r and d get clipped)."""
    channels = shape[1]
    view = (1, channels) + (1,) * (len(shape) - 2)
    location = torch.linspace(-2.0, 2.0, channels, dtype=torch.float64).view(view) * (1 + 0.5 * step)
    scale = torch.linspace(0.2, 4.0, channels, dtype=torch.float64).view(view) * (1 + 0.3 * (step % 3))
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + location).to(dtype)


# ------------------------------------------------------------------------------------------ Batch Renorm
def test_renorm_limits_follow_the_papers_schedule():
    """Hand-derived values: (1, 0) through the warm-up, then linear to rmax at rmax_steps and dmax at dmax_steps."""
    schedule = dict(rmax=3.0, dmax=5.0, warmup_steps=10, rmax_steps=30, dmax_steps=20)
    expected = {0: (1.0, 0.0), 9: (1.0, 0.0), 10: (1.0, 0.0), 15: (1.5, 2.5), 20: (2.0, 5.0), 25: (2.5, 5.0),
                30: (3.0, 5.0), 10_000: (3.0, 5.0)}
    for step, (rmax_t, dmax_t) in expected.items():
        for limits in (renorm_limits(step, **schedule), reference.batch_renorm_limits(step, **schedule)):
            assert limits == pytest.approx((rmax_t, dmax_t), abs=1e-15), step
    switch = dict(rmax=2.0, dmax=1.0, warmup_steps=4, rmax_steps=4, dmax_steps=6)  # rmax switched on at step 4
    for step, limits in {3: (1.0, 0.0), 4: (2.0, 0.0), 5: (2.0, 0.5), 6: (2.0, 1.0)}.items():
        assert renorm_limits(step, **switch) == pytest.approx(limits, abs=1e-15), step
        assert reference.batch_renorm_limits(step, **switch) == pytest.approx(limits, abs=1e-15), step
    defaults = bnn.BatchRenorm2d(3)
    assert (defaults.rmax, defaults.dmax, defaults.warmup_steps, defaults.rmax_steps, defaults.dmax_steps,
            defaults.momentum) == (3.0, 5.0, 5000, 40000, 25000, 0.01)
    assert renorm_limits(22_500, 3.0, 5.0, 5000, 40000, 25000) == pytest.approx((2.0, 4.375))


@pytest.mark.parametrize("momentum", [0.3, None], ids=["momentum-0.3", "momentum-None"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("kind", list(SHAPES), ids=str)
def test_renorm_matches_reference_across_the_schedule(kind, affine, momentum):
    """9 training steps through warm-up, both ramps and beyond, then eval: outputs, gradients, buffers."""
    dims, shape = SHAPES[kind]
    schedule = dict(rmax=1.6, dmax=0.7, warmup_steps=2, rmax_steps=6, dmax_steps=4)
    layer = RENORM[dims](shape[1], momentum=momentum, affine=affine, dtype=torch.float64, **schedule)
    generator = torch.Generator().manual_seed(21)
    random_affine_(layer, generator)
    running_mean, running_var, tracked = _np(layer.running_mean), _np(layer.running_var), 0
    weight, bias = _np(layer.weight), _np(layer.bias)
    clipped_r = clipped_d = False
    for step in range(9):
        x = _shifted_batch(shape, generator, step)
        rmax_t, dmax_t = reference.batch_renorm_limits(step, **schedule)
        y_ref, cache = reference.batch_renorm_train_forward(_np(x), running_mean, running_var, weight, bias,
                                                            layer.eps, rmax_t, dmax_t)
        y, dx, dweight, dbias, upstream = _grad_step(layer, x, generator)
        dx_ref, dgamma_ref, dbeta_ref = reference.batch_renorm_backward(_np(upstream), cache, weight)
        _compare_step(layer, y, dx, dweight, dbias, (y_ref, dx_ref, dgamma_ref, dbeta_ref))
        running_mean, running_var, tracked = reference.update_running_stats(
            running_mean, running_var, tracked, cache.mean, cache.var, cache.count, momentum)
        _close("running_mean", layer.running_mean, running_mean)
        _close("running_var", layer.running_var, running_var)
        assert int(layer.num_batches_tracked) == tracked == step + 1
        if step <= schedule["warmup_steps"]:
            assert np.all(cache.r == 1.0) and np.all(cache.d == 0.0)
        clipped_r |= bool(np.any(np.isclose(cache.r, rmax_t) | np.isclose(cache.r, 1 / rmax_t)) and rmax_t > 1)
        clipped_d |= bool(np.any(np.isclose(np.abs(cache.d), dmax_t)) and dmax_t > 0)
    assert clipped_r and clipped_d, "the inputs must drive r and d into their clipping limits"
    layer.eval()
    x = _shifted_batch(shape, generator, 9)
    y, dx, dweight, dbias, upstream = _grad_step(layer, x, generator)
    _close("eval output", y, reference.batch_norm_eval_forward(_np(x), running_mean, running_var, weight, bias,
                                                               layer.eps))
    _close("eval input grad", dx, reference.batch_norm_eval_backward(_np(upstream), _np(x), running_mean,
                                                                     running_var, weight, layer.eps)[0])


def test_renorm_float32_matches_reference():
    layer = bnn.BatchRenorm2d(4, momentum=0.2, warmup_steps=0, rmax_steps=0, dmax_steps=0, rmax=1.5, dmax=0.5)
    generator = torch.Generator().manual_seed(22)
    random_affine_(layer, generator)
    running_mean, running_var = _np(layer.running_mean), _np(layer.running_var)
    for step in range(3):
        x = _shifted_batch((6, 4, 5, 5), generator, step, torch.float32)
        y_ref, cache = reference.batch_renorm_train_forward(_np(x), running_mean, running_var, _np(layer.weight),
                                                            _np(layer.bias), layer.eps, 1.5, 0.5)
        y, dx, dweight, dbias, upstream = _grad_step(layer, x, generator)
        dx_ref, dgamma_ref, dbeta_ref = reference.batch_renorm_backward(_np(upstream), cache, _np(layer.weight))
        _compare_step(layer, y, dx, dweight, dbias, (y_ref, dx_ref, dgamma_ref, dbeta_ref), tol=2e-5)
        running_mean, running_var, _ = reference.update_running_stats(running_mean, running_var, step, cache.mean,
                                                                      cache.var, cache.count, 0.2)
        _close("running_var", layer.running_var, running_var, 2e-6)


def test_renorm_in_warmup_is_torch_batchnorm():
    generator = torch.Generator().manual_seed(23)
    ours = bnn.BatchRenorm2d(3, momentum=0.1, dtype=torch.float64)
    random_affine_(ours, generator)
    theirs = torch.nn.BatchNorm2d(3, momentum=0.1, dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())
    for step in range(3):
        x = _shifted_batch((4, 3, 5, 5), generator, step)
        y, dx, dweight, dbias, upstream = _grad_step(ours, x, generator)
        x_theirs = x.clone().requires_grad_()
        y_theirs = theirs(x_theirs)
        y_theirs.backward(upstream)
        _close("output", y, y_theirs.detach())
        _close("input grad", dx, x_theirs.grad)
        _close("weight grad", dweight, theirs.weight.grad)
        theirs.weight.grad = theirs.bias.grad = None
    for key, value in theirs.state_dict().items():
        _close(key, ours.state_dict()[key], value)


def test_renorm_gradcheck_with_active_corrections():
    generator = torch.Generator().manual_seed(24)
    layer = bnn.BatchRenorm1d(3, momentum=0.0, rmax=1.2, dmax=0.3, warmup_steps=0, rmax_steps=0, dmax_steps=0,
                              dtype=torch.float64)
    random_affine_(layer, generator)
    x = _shifted_batch((5, 3, 4), generator, 1).requires_grad_()
    with torch.no_grad():
        mean, var = torch.ops.batchnorm.batch_stats(x)
        r, d = layer.corrections(mean, var)
    assert not torch.all(r == 1) and not torch.all(d == 0), "r and d must be active in this check"
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: layer_forward(layer, x, w, b), (x, weight, bias))


def layer_forward(layer, x, weight, bias, *args):
    """Call a layer with weight and bias given as tensors (so gradcheck can perturb them)."""
    saved = layer._parameters["weight"], layer._parameters["bias"]
    layer._parameters["weight"], layer._parameters["bias"] = weight, bias
    try:
        return layer(x, *args)
    finally:
        layer._parameters["weight"], layer._parameters["bias"] = saved


def test_renorm_state_dict_interchanges_with_batchnorm_and_eval_is_batchnorm():
    generator = torch.Generator().manual_seed(25)
    torch_bn = torch.nn.BatchNorm2d(5, dtype=torch.float64)
    random_affine_(torch_bn, generator)
    torch_bn.num_batches_tracked.fill_(6000)
    renorm = bnn.BatchRenorm2d(5, dtype=torch.float64)
    renorm.load_state_dict(torch_bn.state_dict())
    assert renorm.state_dict().keys() == torch_bn.state_dict().keys()
    assert renorm.current_limits() == pytest.approx(renorm_limits(6000, 3.0, 5.0, 5000, 40000, 25000))
    renorm.eval(), torch_bn.eval()
    x = torch.randn(3, 5, 4, 4, generator=generator, dtype=torch.float64)
    _close("eval output", renorm(x), torch_bn(x).detach())
    renorm.train()
    renorm(_shifted_batch((3, 5, 4, 4), generator, 2))
    back = torch.nn.BatchNorm2d(5, dtype=torch.float64)
    back.load_state_dict(renorm.state_dict())
    for key, value in renorm.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert isinstance(renorm, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("kwargs, match", [
    ({"rmax": 0.5}, r"rmax must be a finite number >= 1.*got rmax=0\.5"),
    ({"dmax": -1.0}, r"dmax must be a finite number >= 0.*got dmax=-1\.0"),
    ({"warmup_steps": -1}, r"warmup_steps must be >= 0, got warmup_steps=-1"),
    ({"warmup_steps": 100, "rmax_steps": 50}, r"rmax_steps must be >= warmup_steps=100, got rmax_steps=50"),
    ({"warmup_steps": 100, "dmax_steps": 50}, r"dmax_steps must be >= warmup_steps=100, got dmax_steps=50"),
])
def test_renorm_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bnn.BatchRenorm2d(4, **kwargs)


# --------------------------------------------------------------------------------------------- Ghost BN
GHOST_CASES = [  # (shape kind, shape, virtual batch size): remainders, a merged single-value remainder, one chunk
    ("NC", (9, 4), 4), ("NC", (10, 4), 4), ("NCL", (7, 3, 5), 3), ("NCL", (7, 3, 5), 2), ("NCHW", (7, 3, 2, 3), 4),
    ("NCDHW", (5, 3, 2, 2, 3), 2), ("NCHW", (4, 3, 2, 3), 8),
]


@pytest.mark.parametrize("momentum", [0.2, None], ids=["momentum-0.2", "momentum-None"])
@pytest.mark.parametrize("kind, shape, size", GHOST_CASES, ids=lambda v: str(v))
def test_ghost_matches_reference(kind, shape, size, momentum):
    """4 training steps then eval: per-chunk outputs and gradients, pooled running statistics."""
    layer = PLAIN[len(shape) - 2 if len(shape) > 2 else 1](shape[1], momentum=momentum, virtual_batch_size=size,
                                                           dtype=torch.float64)
    generator = torch.Generator().manual_seed(31)
    random_affine_(layer, generator)
    running_mean, running_var, tracked = _np(layer.running_mean), _np(layer.running_var), 0
    weight, bias = _np(layer.weight), _np(layer.bias)
    for step in range(4):
        x = _shifted_batch(shape, generator, step)
        y_ref, cache = reference.ghost_batch_norm_train_forward(_np(x), size, weight, bias, layer.eps)
        y, dx, dweight, dbias, upstream = _grad_step(layer, x, generator)
        dx_ref, dgamma_ref, dbeta_ref = reference.ghost_batch_norm_backward(_np(upstream), cache, weight)
        _compare_step(layer, y, dx, dweight, dbias, (y_ref, dx_ref, dgamma_ref, dbeta_ref))
        mean, unbiased, count = reference.ghost_running_moments(_np(x), cache.bounds)
        running_mean, running_var, tracked = reference.update_running_moments(
            running_mean, running_var, tracked, mean, unbiased, count, momentum)
        _close("running_mean", layer.running_mean, running_mean)
        _close("running_var", layer.running_var, running_var)
        assert int(layer.num_batches_tracked) == tracked
    layer.eval()
    x = _shifted_batch(shape, generator, 5)
    _close("eval output", layer(x), reference.batch_norm_eval_forward(_np(x), running_mean, running_var, weight,
                                                                      bias, layer.eps))


def test_ghost_chunks_are_normalized_separately_and_bounds_agree_with_reference():
    x = _shifted_batch((10, 3, 4), torch.Generator().manual_seed(32), 1)
    y = bnn.BatchNorm1d(3, affine=False, virtual_batch_size=4, dtype=torch.float64)(x)
    for start, stop in [(0, 4), (4, 8), (8, 10)]:
        chunk = y[start:stop].transpose(0, 1).reshape(3, -1)
        assert chunk.mean(dim=1).abs().max() < 1e-12
        assert (chunk.var(dim=1, unbiased=False) - 1).abs().max() < 1e-3
    for batch, size, per_sample in [(9, 4, 1), (9, 4, 2), (8, 4, 1), (3, 4, 1), (17, 5, 1), (0, 4, 1), (5, 2, 1)]:
        assert ghost_chunk_bounds(batch, size, per_sample) == reference.ghost_batch_bounds(batch, size,
                                                                                                   per_sample)
    assert ghost_chunk_bounds(9, 4, 1) == [(0, 4), (4, 9)]
    assert ghost_chunk_bounds(9, 4, 2) == [(0, 4), (4, 8), (8, 9)]


def test_ghost_with_a_large_virtual_batch_is_torch_batchnorm():
    generator = torch.Generator().manual_seed(33)
    ours = bnn.BatchNorm2d(3, virtual_batch_size=64, dtype=torch.float64)
    theirs = torch.nn.BatchNorm2d(3, dtype=torch.float64)
    for _ in range(3):
        x = torch.randn(6, 3, 4, 4, generator=generator, dtype=torch.float64)
        _close("output", ours(x), theirs(x).detach())
    for key, value in theirs.state_dict().items():
        _close(key, ours.state_dict()[key], value)


def test_ghost_gradcheck():
    generator = torch.Generator().manual_seed(34)
    layer = bnn.BatchNorm2d(3, virtual_batch_size=2, dtype=torch.float64)
    random_affine_(layer, generator)
    x = torch.randn(5, 3, 2, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: layer_forward(layer, x, w, b), (x, weight, bias))


@pytest.mark.parametrize("value, error, match", [
    (1, ValueError, r"virtual_batch_size must be >= 2, got virtual_batch_size=1"),
    (0, ValueError, r"virtual_batch_size must be >= 2, got virtual_batch_size=0"),
    (2.5, TypeError, r"virtual_batch_size must be an integer >= 2, got 2\.5"),
])
def test_ghost_rejects_bad_virtual_batch_size(value, error, match):
    with pytest.raises(error, match=match):
        bnn.BatchNorm2d(4, virtual_batch_size=value)


# ------------------------------------------------------------------------------------------- masked BN
def _random_mask(shape, generator):
    mask = torch.rand(shape, generator=generator) > 0.35
    mask[1] = False  # one fully padded sample
    mask[0, ...].view(-1)[0] = True
    mask[2, ...].view(-1)[-1] = True
    return mask


MASK_CASES = [("NCL", (6, 3, 7), None), ("NCL", (6, 3, 7), 2), ("NCL", (7, 3, 5), 3), ("NC", (8, 3), None),
              ("NC", (8, 3), 3)]


@pytest.mark.parametrize("momentum", [0.25, None], ids=["momentum-0.25", "momentum-None"])
@pytest.mark.parametrize("kind, shape, size", MASK_CASES, ids=lambda v: str(v))
def test_masked_matches_reference(kind, shape, size, momentum):
    """4 training steps then eval: valid-position statistics, zeros and no gradient at padded positions."""
    layer = bnn.BatchNorm1d(shape[1], momentum=momentum, virtual_batch_size=size, dtype=torch.float64)
    generator = torch.Generator().manual_seed(41)
    random_affine_(layer, generator)
    running_mean, running_var, tracked = _np(layer.running_mean), _np(layer.running_var), 0
    weight, bias = _np(layer.weight), _np(layer.bias)
    mask_shape = (shape[0], shape[2]) if len(shape) == 3 else (shape[0],)
    for step in range(4):
        x = _shifted_batch(shape, generator, step)
        mask = _random_mask(mask_shape, generator)
        y_ref, cache = reference.masked_batch_norm_train_forward(_np(x), mask.numpy(), weight, bias, layer.eps,
                                                                 size)
        y, dx, dweight, dbias, upstream = _grad_step(layer, x, generator, mask)
        dx_ref, dgamma_ref, dbeta_ref = reference.masked_batch_norm_backward(_np(upstream), cache, weight)
        _compare_step(layer, y, dx, dweight, dbias, (y_ref, dx_ref, dgamma_ref, dbeta_ref))
        padded = ~mask.unsqueeze(1).expand(y.shape)
        assert torch.all(y[padded] == 0) and torch.all(dx[padded] == 0)
        mean, unbiased, count = reference.masked_running_moments(_np(x), mask.numpy(), cache.bounds)
        running_mean, running_var, tracked = reference.update_running_moments(
            running_mean, running_var, tracked, mean, unbiased, count, momentum)
        _close("running_mean", layer.running_mean, running_mean)
        _close("running_var", layer.running_var, running_var)
        assert int(layer.num_batches_tracked) == tracked
    layer.eval()
    x = _shifted_batch(shape, generator, 5)
    mask = _random_mask(mask_shape, generator)
    valid = mask.numpy()[:, None, ...].astype(np.float64)
    _close("eval output", layer(x, mask), reference.batch_norm_eval_forward(_np(x), running_mean, running_var,
                                                                            weight, bias, layer.eps) * valid)


def test_masked_with_all_valid_positions_is_torch_batchnorm():
    generator = torch.Generator().manual_seed(42)
    ours = bnn.BatchNorm1d(3, dtype=torch.float64)
    theirs = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    x = torch.randn(4, 3, 6, generator=generator, dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.bool)
    y, dx, dweight, _, upstream = _grad_step(ours, x, generator, mask)
    x_theirs = x.clone().requires_grad_()
    y_theirs = theirs(x_theirs)
    y_theirs.backward(upstream)
    _close("output", y, y_theirs.detach())
    _close("input grad", dx, x_theirs.grad)
    _close("weight grad", dweight, theirs.weight.grad)
    for key, value in theirs.state_dict().items():
        _close(key, ours.state_dict()[key], value)


def test_masked_gradcheck():
    generator = torch.Generator().manual_seed(43)
    layer = bnn.BatchNorm1d(2, dtype=torch.float64)
    random_affine_(layer, generator)
    x = torch.randn(3, 2, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: layer_forward(layer, x, w, b, mask), (x, weight, bias))


@pytest.mark.parametrize("mask, error, match", [
    (torch.ones(4, 5, dtype=torch.bool), ValueError,
     r"mask must have shape \(N, L\) = \(4, 6\).*got mask of shape \(4, 5\)"),
    (torch.ones(4, 6), ValueError, r"mask must have dtype torch\.bool.*got dtype torch\.float32"),
    (torch.ones(4, 6, dtype=torch.long), ValueError, r"mask must have dtype torch\.bool.*got dtype torch\.int64"),
    ([[True] * 6] * 4, TypeError, r"mask must be a boolean torch\.Tensor or None, got list"),
])
def test_masked_rejects_bad_masks(mask, error, match):
    with pytest.raises(error, match=match):
        bnn.BatchNorm1d(3)(torch.randn(4, 3, 6), mask)


def test_masked_single_valid_value_is_refused_in_training():
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[2, 3] = True
    with pytest.raises(ValueError, match="more than 1 valid value per channel"):
        bnn.BatchNorm1d(3)(torch.randn(4, 3, 6), mask)


# ------------------------------------------------------------------------------------------- Frozen BN
@pytest.mark.parametrize("affine_trainable", [False, True], ids=["fixed-affine", "trainable-affine"])
@pytest.mark.parametrize("kind", list(SHAPES), ids=str)
def test_frozen_matches_reference_in_training_mode(kind, affine_trainable):
    dims, shape = SHAPES[kind]
    generator = torch.Generator().manual_seed(51)
    torch_bn = {1: torch.nn.BatchNorm1d, 2: torch.nn.BatchNorm2d, 3: torch.nn.BatchNorm3d}[dims](
        shape[1], dtype=torch.float64)
    random_affine_(torch_bn, generator)
    torch_bn.num_batches_tracked.fill_(11)
    frozen = FROZEN[dims](shape[1], affine_trainable=affine_trainable, dtype=torch.float64)
    frozen.load_state_dict(torch_bn.state_dict())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.train()
    for step in range(3):
        x = _shifted_batch(shape, generator, step)
        args = (_np(frozen.running_mean), _np(frozen.running_var), _np(frozen.weight))
        y, dx, dweight, dbias, upstream = _grad_step(frozen, x, generator)
        _close("output", y, reference.frozen_batch_norm_forward(_np(x), args[0], args[1], args[2],
                                                                _np(frozen.bias), frozen.eps))
        dx_ref, dgamma_ref, dbeta_ref = reference.frozen_batch_norm_backward(_np(upstream), _np(x), *args,
                                                                             eps=frozen.eps)
        _close("input grad", dx, dx_ref)
        if affine_trainable:
            _close("weight grad", dweight, dgamma_ref)
            _close("bias grad", dbias, dbeta_ref)
        else:
            assert dweight is None and dbias is None
            assert not frozen.weight.requires_grad and not frozen.bias.requires_grad
    for key, value in frozen.state_dict().items():
        assert torch.equal(value, before[key]), key
    back = type(torch_bn)(shape[1], dtype=torch.float64)
    back.load_state_dict(frozen.state_dict())
    assert back.state_dict().keys() == frozen.state_dict().keys()
    assert frozen.state_dict()._metadata[""]["version"] == torch_bn.state_dict()._metadata[""]["version"]
    for key, value in back.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_frozen_loads_torchvision_style_state_dict_and_copies_a_layer():
    generator = torch.Generator().manual_seed(52)
    torch_bn = torch.nn.BatchNorm2d(4, dtype=torch.float64, eps=1e-3)
    random_affine_(torch_bn, generator)
    state = {k: v for k, v in torch_bn.state_dict().items() if k != "num_batches_tracked"}
    frozen = bnn.FrozenBatchNorm2d(4, eps=1e-3, dtype=torch.float64)
    frozen.load_state_dict(state)
    torch_bn.eval()
    x = torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64)
    _close("output", frozen(x), torch_bn(x).detach())
    copied = bnn.FrozenBatchNorm2d.from_batchnorm(torch_bn, affine_trainable=True)
    assert copied.eps == 1e-3 and copied.weight.requires_grad
    _close("copied output", copied(x), torch_bn(x).detach())
    assert not isinstance(frozen, torch.nn.modules.batchnorm._BatchNorm)
    import inspect
    assert list(inspect.signature(bnn.FrozenBatchNorm2d).parameters) == [
        "num_features", "eps", "affine", "affine_trainable", "device", "dtype"]


def test_frozen_gradcheck():
    generator = torch.Generator().manual_seed(53)
    layer = bnn.FrozenBatchNorm2d(3, affine_trainable=True, dtype=torch.float64)
    random_affine_(layer, generator)
    x = torch.randn(2, 3, 2, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: layer_forward(layer, x, w, b), (x, weight, bias))


def test_frozen_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"affine_trainable=True needs affine=True.*got affine=False"):
        bnn.FrozenBatchNorm2d(4, affine=False, affine_trainable=True)
    with pytest.raises(ValueError, match=r"num_features must be >= 1, got num_features=0"):
        bnn.FrozenBatchNorm2d(0)
    with pytest.raises(ValueError, match=r"FrozenBatchNorm2d expected input of shape \(N, C=4, H, W\)"):
        bnn.FrozenBatchNorm2d(4)(torch.randn(2, 3, 4, 4))


def test_freeze_stats_survives_train_and_normalizes_with_running_statistics():
    generator = torch.Generator().manual_seed(54)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, bias=False, dtype=torch.float64),
                                bnn.BatchNorm2d(3, freeze_stats=True, dtype=torch.float64))
    bn = model[1]
    random_affine_(bn, generator)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    model.eval()
    model.train()  # the classic pitfall: .train() undoes .eval(); freeze_stats must survive it
    assert bn.training and bn.freeze_stats
    x = torch.randn(4, 2, 6, 6, generator=generator, dtype=torch.float64)
    features = model[0](x).detach()
    y, dx, dweight, dbias, upstream = _grad_step(bn, features, generator)
    weight = _np(bn.weight)
    _close("output", y, reference.frozen_batch_norm_forward(_np(features), before["running_mean"].numpy(),
                                                            before["running_var"].numpy(), weight,
                                                            _np(bn.bias), bn.eps))
    dx_ref, dgamma_ref, dbeta_ref = reference.frozen_batch_norm_backward(
        _np(upstream), _np(features), before["running_mean"].numpy(), before["running_var"].numpy(), weight,
        eps=bn.eps)
    _close("input grad", dx, dx_ref)
    _close("weight grad", dweight, dgamma_ref)
    _close("bias grad", dbias, dbeta_ref)
    model(x).sum().backward()
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    bn.freeze_stats = False
    bn(features)
    assert int(bn.num_batches_tracked) == int(before["num_batches_tracked"]) + 1


def test_freeze_stats_needs_running_statistics():
    with pytest.raises(ValueError, match=r"freeze_stats=True needs running statistics, got track_running_stats=False"):
        bnn.BatchNorm2d(3, track_running_stats=False, freeze_stats=True)


# --------------------------------------------------------------------------------- non-finite-safe stats
@pytest.mark.parametrize("momentum", [None, 0.1, 0.0], ids=["momentum-None", "momentum-0.1", "momentum-0"])
@pytest.mark.parametrize("kind", ["NC", "NCHW"], ids=str)
def test_skip_nonfinite_leaves_buffers_and_counter_alone_and_warns_once(kind, momentum):
    dims, shape = SHAPES[kind]
    generator = torch.Generator().manual_seed(61)
    layer = PLAIN[dims](shape[1], momentum=momentum, skip_nonfinite=True, dtype=torch.float64)
    random_affine_(layer, generator)
    running_mean, running_var, tracked = _np(layer.running_mean), _np(layer.running_var), 0
    bad_steps = {1: float("nan"), 3: float("inf"), 4: float("-inf")}
    caught = []
    for step in range(6):
        x = _shifted_batch(shape, generator, step)
        if step in bad_steps:
            x.view(-1)[int(torch.randint(x.numel(), (1,), generator=generator))] = bad_steps[step]
        with np.errstate(invalid="ignore"):
            mean, var, count = reference.batch_statistics(_np(x))
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            y = layer(x)
        caught += [w for w in record if issubclass(w.category, RuntimeWarning)]
        running_mean, running_var, tracked = reference.update_running_stats_skip_nonfinite(
            running_mean, running_var, tracked, mean, var, count, momentum)
        _close("running_mean", layer.running_mean, running_mean)
        _close("running_var", layer.running_var, running_var)
        assert int(layer.num_batches_tracked) == tracked
        if step not in bad_steps:
            _close("output", y, reference.batch_norm_train_forward(_np(x), _np(layer.weight), _np(layer.bias),
                                                                   layer.eps)[0])
    assert tracked == 3
    assert len(caught) == 1 and "non-finite" in str(caught[0].message)
    poisoned = PLAIN[dims](shape[1], dtype=torch.float64)
    x = _shifted_batch(shape, generator, 0)
    x.view(-1)[0] = float("nan")
    poisoned(x)
    assert torch.isnan(poisoned.running_mean).any(), "without skip_nonfinite a NaN batch poisons the statistics"


def test_skip_nonfinite_with_ghost_batches():
    layer = bnn.BatchNorm1d(2, virtual_batch_size=2, skip_nonfinite=True, dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(62))
    x[5, 1] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        layer(x)
    assert int(layer.num_batches_tracked) == 0
    assert torch.equal(layer.running_mean, torch.zeros(2, dtype=torch.float64))


# ------------------------------------------------------------------------------------ drop-in guarantees
def test_default_keywords_keep_torchs_state_dict_and_repr():
    for ours, theirs in [(bnn.BatchNorm1d, torch.nn.BatchNorm1d), (bnn.BatchNorm2d, torch.nn.BatchNorm2d),
                         (bnn.BatchNorm3d, torch.nn.BatchNorm3d)]:
        a, b = ours(4), theirs(4)
        assert repr(a) == repr(b)
        assert a.state_dict().keys() == b.state_dict().keys()
        c = ours(4, virtual_batch_size=8, freeze_stats=True, skip_nonfinite=True)
        assert c.state_dict().keys() == b.state_dict().keys()
        assert "virtual_batch_size=8" in repr(c) and "freeze_stats=True" in repr(c)
        b.load_state_dict(c.state_dict())
        c.load_state_dict(b.state_dict())
    moved = copy.deepcopy(bnn.BatchNorm2d(4, virtual_batch_size=2))
    assert moved.virtual_batch_size == 2


def test_variant_keywords_do_not_change_inference():
    generator = torch.Generator().manual_seed(71)
    plain = bnn.BatchNorm2d(3, dtype=torch.float64)
    random_affine_(plain, generator)
    x = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    expected = plain.eval()(x)
    for kwargs in ({"virtual_batch_size": 2}, {"freeze_stats": True}, {"skip_nonfinite": True}):
        layer = bnn.BatchNorm2d(3, dtype=torch.float64, **kwargs)
        layer.load_state_dict(plain.state_dict())
        assert torch.equal(layer.eval()(x), expected), kwargs


def test_routed_dtype_ghost_and_renorm_follow_the_reference_loosely():
    """bfloat16 goes to torch's implementation (and torch ops for Renorm); same formulas, bfloat16 precision."""
    generator = torch.Generator().manual_seed(72)
    x = _shifted_batch((8, 3, 4), generator, 1)
    ghost = bnn.BatchNorm1d(3, virtual_batch_size=4, dtype=torch.bfloat16)
    y = ghost(x.to(torch.bfloat16))
    _close("ghost bfloat16", y.to(torch.float64), reference.ghost_batch_norm_train_forward(_np(x), 4)[0], 2e-2)
    renorm = bnn.BatchRenorm1d(3, warmup_steps=0, rmax_steps=0, dmax_steps=0, rmax=1.2, dmax=0.2,
                               dtype=torch.bfloat16)
    xb = x.to(torch.bfloat16)
    y = renorm(xb.requires_grad_())
    y.float().sum().backward()
    expected = reference.batch_renorm_train_forward(_np(xb), np.zeros(3), np.ones(3), np.ones(3), np.zeros(3),
                                                    1e-5, 1.2, 0.2)[0]
    _close("renorm bfloat16", y.to(torch.float64), expected, 2e-2)


def test_renorm_skip_nonfinite():
    layer = bnn.BatchRenorm1d(2, warmup_steps=0, rmax_steps=0, dmax_steps=0, skip_nonfinite=True,
                              dtype=torch.float64)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(63))
    x[0, 0] = float("inf")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        layer(x)
    assert int(layer.num_batches_tracked) == 0 and torch.equal(layer.running_var, torch.ones(2, dtype=torch.float64))


# ------------------------------------------------------------------------------- layouts, edges, subclasses
def test_ghost_channels_last_and_empty_batch():
    generator = torch.Generator().manual_seed(81)
    x = _shifted_batch((7, 3, 4, 5), generator, 1)
    dense = bnn.BatchNorm2d(3, virtual_batch_size=3, dtype=torch.float64)
    strided = copy.deepcopy(dense)
    y, dx, dweight, _, upstream = _grad_step(dense, x, torch.Generator().manual_seed(1))
    y_cl, dx_cl, dweight_cl, _, _ = _grad_step(strided, x.contiguous(memory_format=torch.channels_last),
                                               torch.Generator().manual_seed(1))
    _close("channels_last output", y_cl, y.detach())
    _close("channels_last input grad", dx_cl, dx)
    _close("channels_last weight grad", dweight_cl, dweight)
    _close("channels_last running_var", strided.running_var, dense.running_var)
    empty = bnn.BatchNorm2d(3, virtual_batch_size=2)
    assert empty(torch.randn(0, 3, 4, 4)).shape == (0, 3, 4, 4)
    assert int(empty.num_batches_tracked) == 1 and torch.equal(empty.running_mean, torch.zeros(3))


def _leaky(z, slope):
    return np.where(z > 0, z, slope * z), np.where(z > 0, 1.0, slope)


def test_batchnorm_act_gets_ghost_masked_and_frozen_statistics():
    """BatchNormAct (a subclass of our BatchNorm) with the variant keywords = the variant's reference + act."""
    from batchnorm.nn.activated import BatchNormAct1d, BatchNormAct2d

    generator = torch.Generator().manual_seed(82)
    slope = 0.1
    layer = BatchNormAct2d(3, virtual_batch_size=2, activation="leaky_relu", activation_param=slope,
                           dtype=torch.float64)
    random_affine_(layer, generator)
    x = _shifted_batch((5, 3, 2, 3), generator, 1)
    weight, bias = _np(layer.weight), _np(layer.bias)
    z, cache = reference.ghost_batch_norm_train_forward(_np(x), 2, weight, bias, layer.eps)
    y, dx, dweight, dbias, upstream = _grad_step(layer, x, generator)
    y_ref, slope_ref = _leaky(z, slope)
    dx_ref, dgamma_ref, dbeta_ref = reference.ghost_batch_norm_backward(_np(upstream) * slope_ref, cache, weight)
    _compare_step(layer, y, dx, dweight, dbias, (y_ref, dx_ref, dgamma_ref, dbeta_ref))

    masked = BatchNormAct1d(3, activation="leaky_relu", activation_param=slope, dtype=torch.float64)
    random_affine_(masked, generator)
    x = _shifted_batch((4, 3, 5), generator, 2)
    mask = _random_mask((4, 5), generator)
    z, cache = reference.masked_batch_norm_train_forward(_np(x), mask.numpy(), _np(masked.weight),
                                                         _np(masked.bias), masked.eps)
    y, dx, dweight, dbias, upstream = _grad_step(masked, x, generator, mask)
    y_ref, slope_ref = _leaky(z, slope)
    expected = reference.masked_batch_norm_backward(_np(upstream) * slope_ref, cache, _np(masked.weight))
    _compare_step(masked, y, dx, dweight, dbias, (y_ref,) + tuple(expected))

    frozen = BatchNormAct2d(3, freeze_stats=True, activation="relu", dtype=torch.float64)
    random_affine_(frozen, generator)
    x = _shifted_batch((4, 3, 2, 2), generator, 0)
    expected = reference.frozen_batch_norm_forward(_np(x), _np(frozen.running_mean), _np(frozen.running_var),
                                                   _np(frozen.weight), _np(frozen.bias), frozen.eps)
    _close("frozen act output", frozen(x), np.maximum(expected, 0.0))
    assert int(frozen.num_batches_tracked) == 0


def test_all_padded_batch_and_nonpositive_eps():
    layer = bnn.BatchNorm1d(3)
    x = torch.randn(4, 3, 5, requires_grad=True)
    y = layer(x, torch.zeros(4, 5, dtype=torch.bool))
    y.sum().backward()
    assert torch.all(y == 0) and torch.all(x.grad == 0)
    assert int(layer.num_batches_tracked) == 1 and torch.equal(layer.running_var, torch.ones(3))
    for make in (lambda: bnn.BatchNorm1d(3, eps=0.0, virtual_batch_size=2), lambda: bnn.BatchRenorm1d(3, eps=0.0)):
        with pytest.raises(ValueError, match=r"eps must be a finite number > 0 .*got eps=0\.0"):
            make()
    for layer in (bnn.BatchNorm1d(3, virtual_batch_size=2), bnn.BatchRenorm1d(3)):
        layer.eps = 0.0  # set after construction: the training forward still refuses it
        with pytest.raises(ValueError, match=r"eps must be positive during training, got eps=0\.0"):
            layer(torch.randn(4, 3))


def _compile_check(backend):
    torch.manual_seed(91)
    model = torch.nn.Sequential(bnn.BatchNorm2d(4, virtual_batch_size=3),
                                bnn.BatchRenorm2d(4, warmup_steps=0, rmax_steps=0, dmax_steps=0, rmax=1.1, dmax=0.1),
                                bnn.BatchNorm2d(4, freeze_stats=True))
    compiled_copy = copy.deepcopy(model)
    compiled = torch.compile(compiled_copy, fullgraph=True, backend=backend)
    x = torch.randn(8, 4, 5, 5)
    _close("output", compiled(x).detach(), model(x).detach(), 1e-5)
    for (name, ours), (_, theirs) in zip(compiled_copy.state_dict().items(), model.state_dict().items()):
        _close(name, ours, theirs, 1e-6)


def test_variants_trace_without_graph_breaks():
    """Quick twin of the inductor test: dynamo's fullgraph tracing with the eager backend."""
    _compile_check("eager")


@pytest.mark.slow
def test_variants_compile_fullgraph_with_inductor():
    _compile_check("inductor")


def test_skip_nonfinite_when_buffers_are_already_nonfinite():
    """Buffers loaded with an inf: the exact path decides on the batch's statistics, as the reference does."""
    generator = torch.Generator().manual_seed(64)
    layer = bnn.BatchNorm2d(3, skip_nonfinite=True, dtype=torch.float64)
    with torch.no_grad():
        layer.running_var[1] = float("inf")
    running_mean, running_var, tracked = _np(layer.running_mean), _np(layer.running_var), 0
    for step, bad in enumerate([False, True, False]):
        x = _shifted_batch((4, 3, 2, 2), generator, step)
        if bad:
            x[0, 2, 1, 1] = float("nan")
        with np.errstate(invalid="ignore"):
            mean, var, count = reference.batch_statistics(_np(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            layer(x)
        running_mean, running_var, tracked = reference.update_running_stats_skip_nonfinite(
            running_mean, running_var, tracked, mean, var, count, 0.1)
        assert int(layer.num_batches_tracked) == tracked
        _close("running_mean", layer.running_mean, running_mean)
        finite = np.isfinite(running_var)
        _close("running_var", layer.running_var[finite], running_var[finite])
        assert torch.isinf(layer.running_var[1])
    assert tracked == 2
