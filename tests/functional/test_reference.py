"""The float64 NumPy reference against torch (float64) and against its own defining properties."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from batchnorm.testing import reference
from helpers.cases import relative_error

SHAPES = [(9, 4), (5, 3, 7), (4, 3, 5, 6), (2, 3, 3, 4, 5)]


def _random(shape, seed, scale=3.0, offset=2.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * scale + offset


def test_importable_without_torch():
    code = "import sys, batchnorm.reference; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_training_forward_and_backward_match_torch(shape):
    x = _random(shape, 1)
    channels = shape[1]
    gamma, beta = _random(channels, 2), _random(channels, 3)
    grad = _random(shape, 4, 1.0, 0.0)
    y, cache = reference.batch_norm_train_forward(x, gamma, beta, eps=1e-5)
    dx, dgamma, dbeta = reference.batch_norm_backward(grad, cache, gamma)

    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-5)
    yt.backward(torch.tensor(grad))
    for ours, theirs in [(y, yt), (dx, xt.grad), (dgamma, gt.grad), (dbeta, bt.grad)]:
        assert relative_error(torch.tensor(ours), theirs.detach()) < 1e-12


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_eval_forward_and_backward_match_torch(shape):
    x = _random(shape, 5)
    channels = shape[1]
    gamma, beta = _random(channels, 6), _random(channels, 7)
    mean, var = _random(channels, 8), np.abs(_random(channels, 9)) + 0.1
    grad = _random(shape, 10, 1.0, 0.0)
    y = reference.batch_norm_eval_forward(x, mean, var, gamma, beta, eps=1e-3)
    dx, dgamma, dbeta = reference.batch_norm_eval_backward(grad, x, mean, var, gamma, eps=1e-3)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, torch.tensor(mean), torch.tensor(var), gt, bt, training=False,
                                        eps=1e-3)
    yt.backward(torch.tensor(grad))
    for ours, theirs in [(y, yt), (dx, xt.grad), (dgamma, gt.grad), (dbeta, bt.grad)]:
        assert relative_error(torch.tensor(ours), theirs.detach()) < 1e-12


@pytest.mark.parametrize("momentum", [0.1, 0.7, None], ids=["0.1", "0.7", "cumulative"])
def test_running_statistics_over_steps_match_torch(momentum):
    shape = (6, 3, 4)
    module = torch.nn.BatchNorm1d(3, momentum=momentum, dtype=torch.float64)
    running_mean, running_var, tracked = np.zeros(3), np.ones(3), 0
    for step in range(5):
        x = _random(shape, 20 + step, scale=step + 1.0, offset=step)
        module(torch.tensor(x))
        mean, var, count = reference.batch_statistics(x)
        running_mean, running_var, tracked = reference.update_running_stats(
            running_mean, running_var, tracked, mean, var, count, momentum)
        assert tracked == module.num_batches_tracked.item()
        assert relative_error(torch.tensor(running_mean), module.running_mean) < 1e-12
        assert relative_error(torch.tensor(running_var), module.running_var) < 1e-12


def test_empty_batch_leaves_running_statistics_unchanged():
    stats = reference.update_running_stats(np.zeros(2), np.ones(2), 3, np.full(2, np.nan), np.full(2, np.nan), 0)
    assert np.array_equal(stats.running_mean, np.zeros(2)) and np.array_equal(stats.running_var, np.ones(2))
    assert stats.num_batches_tracked == 4


def test_two_pass_statistics_are_exact_where_one_pass_float32_fails():
    x = _random((64, 2, 50), 30, scale=1.0, offset=1e4)
    mean, var, _ = reference.batch_statistics(x)
    exact_var = np.array([np.var(x[:, c, :], dtype=np.longdouble) for c in range(2)], dtype=np.float64)
    assert np.max(np.abs(var - exact_var) / exact_var) < 1e-9
    x32 = x.astype(np.float32)
    naive = (x32 ** 2).mean(axis=(0, 2)) - x32.mean(axis=(0, 2)) ** 2
    assert np.max(np.abs(naive - exact_var) / exact_var) > 0.1  # what two passes avoid


def test_training_output_has_zero_mean_unit_variance_and_backward_is_orthogonal():
    x = _random((32, 5, 6), 31, scale=7.0, offset=-3.0)
    y, cache = reference.batch_norm_train_forward(x, eps=0.0)
    assert np.allclose(y.mean(axis=(0, 2)), 0.0, atol=1e-12)
    assert np.allclose(y.var(axis=(0, 2)), 1.0, atol=1e-12)
    # dx is orthogonal to the constant and to x_hat per channel: BN output ignores shifts and scalings of x
    dx, _, _ = reference.batch_norm_backward(_random(x.shape, 32), cache)
    assert np.allclose(dx.sum(axis=(0, 2)), 0.0, atol=1e-9)
    assert np.allclose((dx * cache.x_hat).sum(axis=(0, 2)), 0.0, atol=1e-9)


def test_backward_matches_finite_differences():
    x = _random((4, 2, 3), 33)
    gamma, beta = _random(2, 34), _random(2, 35)
    grad = _random(x.shape, 36)
    _, cache = reference.batch_norm_train_forward(x, gamma, beta)
    dx, _, _ = reference.batch_norm_backward(grad, cache, gamma)
    h = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        numeric[index] = ((reference.batch_norm_train_forward(plus, gamma, beta)[0]
                           - reference.batch_norm_train_forward(minus, gamma, beta)[0]) * grad).sum() / (2 * h)
    assert np.max(np.abs(numeric - dx)) < 1e-6


def test_bad_shape_is_a_value_error():
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, \*spatial\), got shape \(5,\)"):
        reference.batch_statistics(np.zeros(5))
