"""The dispatcher between this package's kernels and torch's native batch norm (`kernels.config.BACKEND`,
`kernels.config.TORCH_BELOW`): both paths agree with the float64 reference and with each other, the switch sends
each input where the crossover says, errors are the same on both paths, and the environment variable is parsed."""

import os
import subprocess
import sys

import pytest
import torch

import batchnorm.nn as bnn
from batchnorm import functional
from batchnorm.kernels import config

TOL = dict(rtol=1e-4, atol=1e-5)  # float32 against the float64 reference


@pytest.fixture
def backend(monkeypatch):
    def use(name):
        monkeypatch.setattr(config, "BACKEND", name)
    return use


def _path(x, training=True, requires_grad=True):
    """'torch' or 'numba': which path served a BatchNorm forward, read from the autograd node."""
    layer = bnn.BatchNorm2d(x.shape[1]) if x.dim() == 4 else bnn.BatchNorm1d(x.shape[1])
    layer.train(training)
    y = layer(x.detach().requires_grad_(requires_grad))
    return "torch" if "NativeBatchNorm" in type(y.grad_fn).__name__ else "numba"


CASES = [((6, 5), False), ((4, 3, 5, 7), False), ((4, 3, 5, 7), True), ((3, 4, 9), False)]


@pytest.mark.parametrize("name", ["numba", "torch", "auto"])
@pytest.mark.parametrize("shape,channels_last", CASES)
def test_every_path_matches_float64_torch(backend, name, shape, channels_last):
    backend(name)
    gen = torch.Generator().manual_seed(len(shape) * 7 + channels_last)
    x = torch.randn(shape, generator=gen) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape, generator=gen)
    layer = bnn.BatchNorm2d(shape[1]) if len(shape) == 4 else bnn.BatchNorm1d(shape[1])
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5, generator=gen)
        layer.bias.normal_(generator=gen)
    xg = x.clone().requires_grad_()
    y = layer(xg)
    y.backward(dy)
    expected = torch.nn.functional.batch_norm(x.double(), None, None, layer.weight.double(), layer.bias.double(),
                                              True, 0.1, 1e-5)
    assert torch.allclose(y.double(), expected, **TOL)
    x64 = x.double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    b64 = layer.bias.detach().double().requires_grad_()
    torch.nn.functional.batch_norm(x64, None, None, w64, b64, True, 0.1, 1e-5).backward(dy.double())
    assert torch.allclose(xg.grad.double(), x64.grad, **TOL)
    assert torch.allclose(layer.weight.grad.double(), w64.grad, **TOL)
    assert torch.allclose(layer.bias.grad.double(), b64.grad, **TOL)
    dims = [0] + list(range(2, len(shape)))
    assert torch.allclose(layer.running_mean.double(), 0.1 * x.double().mean(dims), **TOL)
    unbiased = x.double().var(dims, unbiased=True)
    assert torch.allclose(layer.running_var.double(), 0.9 + 0.1 * unbiased, **TOL)
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x)
    expected = (x.double() - layer.running_mean.double().view([1, -1] + [1] * (len(shape) - 2))) / torch.sqrt(
        layer.running_var.double() + 1e-5).view([1, -1] + [1] * (len(shape) - 2))
    expected = expected * layer.weight.double().view([1, -1] + [1] * (len(shape) - 2)) + \
        layer.bias.double().view([1, -1] + [1] * (len(shape) - 2))
    assert torch.allclose(y_eval.double(), expected.detach(), **TOL)
    if len(shape) == 4:
        assert y_eval.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "silu", "gelu"])
def test_fused_activation_on_the_torch_path(backend, activation):
    backend("torch")
    x = torch.randn(8, 4, 3, 3, requires_grad=True)
    layer = bnn.BatchNormAct2d(4, activation=activation)
    y = layer(x)
    backend("numba")
    expected = bnn.BatchNormAct2d(4, activation=activation)(x)
    assert torch.allclose(y, expected, **TOL)
    g_torch, = torch.autograd.grad(y.sum(), x)
    g_numba, = torch.autograd.grad(expected.sum(), x)
    assert torch.allclose(g_torch, g_numba, **TOL)


def test_the_switch_follows_the_crossover(backend, monkeypatch):
    backend("auto")
    monkeypatch.setitem(config.TORCH_BELOW, ("train", "cf", "plain"), 1000)
    monkeypatch.setitem(config.TORCH_BELOW, ("train", "rows", "plain"), 50)
    monkeypatch.setattr(config, "ROWS_MIN", 2)
    monkeypatch.setattr(config, "ROWS_MIN_CHANNELS_LAST", 2)
    assert _path(torch.randn(4, 8, 5, 5)) == "torch"  # cf, 800 elements < 1000
    assert _path(torch.randn(40, 8, 5, 5)) == "numba"  # cf, 8000
    assert _path(torch.randn(4, 8, 5, 5).contiguous(memory_format=torch.channels_last)) == "numba"  # rows, 800
    assert _path(torch.randn(4, 10)) == "torch"  # rows, 40 < 50
    assert _path(torch.randn(8, 10)) == "numba"  # rows, 80
    backend("numba")
    assert _path(torch.randn(4, 8, 5, 5)) == "numba"
    backend("torch")
    assert _path(torch.randn(40, 8, 5, 5)) == "torch"


def test_few_channels_have_their_own_crossover(backend, monkeypatch):
    backend("auto")
    monkeypatch.setitem(config.TORCH_BELOW, ("train", "cf", "plain"), 100)
    monkeypatch.setattr(config, "FEW_CHANNELS_TRAIN_BELOW", 10_000)
    assert _path(torch.randn(16, 3, 10, 10)) == "torch"  # 4800 elements, 3 channels: below 10000
    assert _path(torch.randn(16, 3, 20, 20)) == "numba"  # 19200
    assert _path(torch.randn(16, 16, 10, 10)) == "numba"  # enough channels: the cf crossover (100)


def test_few_rows_go_to_torch(backend, monkeypatch):
    backend("auto")
    monkeypatch.setitem(config.TORCH_BELOW, ("train", "rows", "plain"), 0)
    monkeypatch.setattr(config, "ROWS_MIN", 20)
    assert _path(torch.randn(16, 64)) == "torch"  # 16 rows < 20
    assert _path(torch.randn(32, 64)) == "numba"
    monkeypatch.setattr(config, "ROWS_MIN_CHANNELS_LAST", 40)
    assert _path(torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)) == "torch"  # 32 rows < 40
    assert _path(torch.randn(3, 8, 4, 4).contiguous(memory_format=torch.channels_last)) == "numba"  # 48 rows


def test_modes_have_their_own_crossover(backend, monkeypatch):
    backend("auto")
    for key in config.TORCH_BELOW:
        monkeypatch.setitem(config.TORCH_BELOW, key, 0)
    monkeypatch.setitem(config.TORCH_BELOW, ("eval", "cf", "plain"), 10 ** 9)
    x = torch.randn(4, 8, 5, 5)
    layer = bnn.BatchNorm2d(8)
    calls = []
    original = torch.batch_norm
    monkeypatch.setattr(torch, "batch_norm", lambda *a: calls.append(a[5]) or original(*a))
    layer(x)  # training: kernels
    with torch.no_grad():
        layer(x)  # training without autograd: kernels
        layer.eval()
        layer(x)  # eval: torch
    assert calls == [False]


def test_empty_input_stays_on_the_kernels(backend):
    backend("torch")
    layer = bnn.BatchNorm2d(3)
    y = layer(torch.randn(0, 3, 4, 4))
    assert y.shape == (0, 3, 4, 4)
    assert torch.equal(layer.running_mean, torch.zeros(3)) and torch.equal(layer.running_var, torch.ones(3))


@pytest.mark.parametrize("name", ["numba", "torch"])
def test_errors_are_the_same_on_both_paths(backend, name):
    backend(name)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnn.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        functional.batch_norm(torch.randn(4, 3), None, None, training=False)
    with pytest.raises(ValueError, match="weight"):
        functional.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), torch.ones(5), None, True)
    with pytest.raises(ValueError, match="eps must be positive"):
        functional.batch_norm(torch.randn(4, 3), None, None, training=True, eps=0.0)


def test_mixed_dtype_weights_are_served(backend):
    """A per-channel tensor torch's native kernel rejects (float64 weight for a float32 input) falls through
    to the kernels' path, which accepts it, with the running buffers updated once."""
    backend("torch")
    x = torch.randn(6, 3)
    rm, rv = torch.zeros(3), torch.ones(3)
    y = functional.batch_norm(x, rm, rv, torch.ones(3, dtype=torch.float64), None, True)
    assert torch.allclose(y, torch.nn.functional.batch_norm(x, None, None, training=True), **TOL)
    assert torch.allclose(rm, 0.1 * x.mean(0), **TOL)


def test_environment_variable_forces_a_path():
    script = "from batchnorm.kernels import config; print(config.BACKEND)"
    env = dict(os.environ, BATCHNORM_BACKEND="Torch")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "torch", out.stderr
    env["BATCHNORM_BACKEND"] = "cuda"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "BATCHNORM_BACKEND='cuda' is invalid: expected one of auto, numba, torch" in out.stderr


def test_torch_path_keeps_torchs_autograd_features(backend):
    """Below the crossover the call is torch's own op: double backward and in-place activations on
    channels_last outputs work as with torch's layer."""
    backend("torch")
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    layer = bnn.BatchNorm2d(3).double()
    y = torch.relu_(layer(x))
    assert y.is_contiguous(memory_format=torch.channels_last)
    g, = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    g.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.autograd.gradcheck(lambda t: layer(t), (torch.randn(4, 3, 2, 2, dtype=torch.float64,
                                                                    requires_grad=True),))


def _add_act_case(shape, channels_last, seed):
    gen = torch.Generator().manual_seed(seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x, residual, dy = (torch.randn(shape, generator=gen).contiguous(memory_format=layout) for _ in range(3))
    return x * 2 + 1, residual, dy


@pytest.mark.parametrize("name", ["numba", "torch"])
@pytest.mark.parametrize("shape,channels_last", [((6, 5), False), ((4, 3, 5, 7), False), ((4, 3, 5, 7), True)])
def test_add_act_paths_match_float64_torch(backend, name, shape, channels_last):
    backend(name)
    x, residual, dy = _add_act_case(shape, channels_last, seed=len(shape) + 3 * channels_last)
    layer = (bnn.BatchNormAddAct2d if len(shape) == 4 else bnn.BatchNormAddAct1d)(shape[1])
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    xg, rg = x.clone().requires_grad_(), residual.clone().requires_grad_()
    y = layer(xg, rg)
    y.backward(dy)
    x64, r64 = x.double().requires_grad_(), residual.double().requires_grad_()
    w64, b64 = (p.detach().double().requires_grad_() for p in (layer.weight, layer.bias))
    running = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    expected = torch.relu(torch.nn.functional.batch_norm(x64, *running, w64, b64, True, 0.1, 1e-5) + r64)
    expected.backward(dy.double())
    assert torch.allclose(y.double(), expected, **TOL)
    pairs = ((xg.grad, x64.grad), (rg.grad, r64.grad), (layer.weight.grad, w64.grad), (layer.bias.grad, b64.grad),
             (layer.running_mean, running[0]), (layer.running_var, running[1]))
    for ours, oracle in pairs:
        assert torch.allclose(ours.double(), oracle, **TOL)
    if len(shape) == 4:
        assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    layer.eval()
    with torch.no_grad():
        y_eval = layer(x, residual)
    expected = torch.relu(torch.nn.functional.batch_norm(x.double(), *running, w64.detach(), b64.detach(), False,
                                                         0.1, 1e-5) + residual.double())
    assert torch.allclose(y_eval.double(), expected, **TOL)


def test_add_act_follows_its_own_crossover(backend, monkeypatch):
    backend("auto")
    monkeypatch.setitem(config.TORCH_BELOW, ("train", "cf", "add_act"), 1000)
    monkeypatch.setitem(config.TORCH_BELOW, ("train", "cf", "plain"), 0)
    layer = bnn.BatchNormAddAct2d(8)

    def path(n):
        x = torch.randn(n, 8, 5, 5, requires_grad=True)
        y = layer(x, torch.randn(n, 8, 5, 5))
        names = []
        node = y.grad_fn
        while node is not None:
            names.append(type(node).__name__)
            node = node.next_functions[0][0] if node.next_functions else None
        return "torch" if any("NativeBatchNorm" in n for n in names) else "numba"

    assert path(4) == "torch"  # 800 elements < 1000
    assert path(40) == "numba"
    backend("torch")
    assert path(40) == "torch"


def test_add_act_errors_are_the_same_on_both_paths(backend):
    messages = {}
    for name in ("numba", "torch"):
        backend(name)
        with pytest.raises(ValueError) as wrong_residual:
            bnn.BatchNormAddAct2d(4)(torch.randn(4, 4, 3, 3), torch.randn(4, 4, 3, 2))
        with pytest.raises(ValueError) as single_value:
            bnn.BatchNormAddAct1d(4)(torch.randn(1, 4), torch.randn(1, 4))
        messages[name] = (str(wrong_residual.value), str(single_value.value))
    assert messages["numba"] == messages["torch"]
    assert "residual" in messages["numba"][0], messages
