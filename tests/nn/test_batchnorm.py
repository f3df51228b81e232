"""Our drop-in BatchNorm1d/2d/3d against torch.nn.BatchNorm*: every constructor configuration, layouts, errors."""

from __future__ import annotations

import copy

import pytest
import torch

import batchnorm.nn as bnn
from batchnorm import functional
from helpers.cases import LAYER_CASES, relative_error, random_affine_

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def _pair(case, dtype, seed):
    """Our layer and torch's, with identical random parameters and buffers."""
    generator = torch.Generator().manual_seed(seed)
    ours = case.ours(case.shape[1], dtype=dtype, **case.kwargs)
    random_affine_(ours, generator)
    theirs = case.theirs(case.shape[1], dtype=dtype, **case.kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _step(ours, theirs, x, generator):
    """One forward+backward on both; returns the pairs to compare."""
    x_ours = x.clone().requires_grad_()
    x_theirs = x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    grad = torch.randn(y_theirs.shape, generator=generator, dtype=x.dtype)
    y_ours.backward(grad)
    y_theirs.backward(grad)
    pairs = [("output", y_ours, y_theirs), ("input grad", x_ours.grad, x_theirs.grad)]
    for name in ("weight", "bias"):
        p_ours, p_theirs = getattr(ours, name), getattr(theirs, name)
        assert (p_ours is None) == (p_theirs is None)
        if p_ours is not None:
            pairs.append((f"{name} grad", p_ours.grad, p_theirs.grad))
            p_ours.grad = p_theirs.grad = None
    return pairs


def _compare_buffers(ours, theirs, tol):
    for name, buffer in theirs.named_buffers():
        mine = dict(ours.named_buffers())[name]
        if name == "num_batches_tracked":
            assert mine.item() == buffer.item()
        else:
            assert relative_error(mine, buffer) <= tol, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_matches_torch_over_training_then_eval(case, dtype):
    """5 training steps with fresh inputs, then an eval step: outputs, all gradients, running statistics."""
    ours, theirs = _pair(case, dtype, seed=1)
    generator = torch.Generator().manual_seed(2)
    tol = TOLERANCE[dtype]
    for step in range(5):
        x = torch.randn(case.shape, generator=generator, dtype=dtype) * (step + 1) + step
        for name, a, b in _step(ours, theirs, x, generator):
            assert relative_error(a, b) < tol, f"step {step}: {name}"
        _compare_buffers(ours, theirs, tol)
    ours.eval()
    theirs.eval()
    x = torch.randn(case.shape, generator=generator, dtype=dtype) * 2 + 1
    for name, a, b in _step(ours, theirs, x, generator):
        assert relative_error(a, b) < tol, f"eval: {name}"
    _compare_buffers(ours, theirs, tol)


@pytest.mark.parametrize("flip_to", [False, True])
def test_track_running_stats_flipped_after_construction(flip_to):
    ours = bnn.BatchNorm2d(4, dtype=torch.float64, track_running_stats=not flip_to)
    theirs = torch.nn.BatchNorm2d(4, dtype=torch.float64, track_running_stats=not flip_to)
    ours.track_running_stats = theirs.track_running_stats = flip_to
    generator = torch.Generator().manual_seed(3)
    for mode in ("train", "train", "eval"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x = torch.randn(3, 4, 5, 5, generator=generator, dtype=torch.float64) * 3 + 1
        for name, a, b in _step(ours, theirs, x, generator):
            assert relative_error(a, b) < 1e-12, f"{mode}: {name}"
        _compare_buffers(ours, theirs, 1e-12)


def test_same_constructor_parameters_buffers_and_state_dict_as_torch():
    import inspect

    for ours, theirs in [(bnn.BatchNorm1d, torch.nn.BatchNorm1d), (bnn.BatchNorm2d, torch.nn.BatchNorm2d),
                         (bnn.BatchNorm3d, torch.nn.BatchNorm3d)]:
        assert inspect.signature(ours.__init__).parameters.keys() >= inspect.signature(theirs.__init__).parameters.keys()
        a, b = ours(6, bias=False), theirs(6, bias=False)
        assert isinstance(a, theirs)
        assert a.state_dict().keys() == b.state_dict().keys()
        assert a.state_dict()._metadata[""]["version"] == b.state_dict()._metadata[""]["version"] == 2
        assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()] == ["weight"]
        assert repr(a).split("(", 1)[1] == repr(b).split("(", 1)[1]


def test_checkpoints_interchange_both_ways():
    generator = torch.Generator().manual_seed(4)
    theirs = torch.nn.BatchNorm2d(5)
    random_affine_(theirs, generator)
    theirs.num_batches_tracked.fill_(7)
    ours = bnn.BatchNorm2d(5)
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.BatchNorm2d(5)
    back.load_state_dict(ours.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 5, 3, 3, generator=generator)
    assert relative_error(ours(x), theirs(x)) < 1e-6
    # an old checkpoint without num_batches_tracked (version 1) loads as in torch
    old = {k: v for k, v in theirs.state_dict().items() if k != "num_batches_tracked"}
    old_meta = type(theirs.state_dict())(old)
    old_meta._metadata = {"": {"version": 1}}
    ours.load_state_dict(old_meta)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("dims", [4, 5])
def test_channels_last_input_gives_channels_last_output(dims, dtype):
    shape = (3, 5, 6, 4) if dims == 4 else (2, 5, 3, 4, 6)
    fmt = torch.channels_last if dims == 4 else torch.channels_last_3d
    case = next(c for c in LAYER_CASES if c.name == ("2d-default" if dims == 4 else "3d-default"))
    ours, theirs = _pair(case, dtype, seed=5)
    generator = torch.Generator().manual_seed(6)
    x = (torch.randn(shape, generator=generator, dtype=dtype) * 3 + 2).to(memory_format=fmt)
    pairs = _step(ours, theirs, x, generator)
    assert pairs[0][1].is_contiguous(memory_format=fmt)
    for name, a, b in pairs:
        assert relative_error(a, b) < TOLERANCE[dtype], name
    _compare_buffers(ours, theirs, TOLERANCE[dtype])


@pytest.mark.parametrize("view", ["sliced", "permuted", "expanded-grad"])
def test_non_contiguous_input(view):
    case = next(c for c in LAYER_CASES if c.name == "2d-default")
    ours, theirs = _pair(case, torch.float64, seed=7)
    generator = torch.Generator().manual_seed(8)
    base = torch.randn(6, 5, 8, 9, generator=generator, dtype=torch.float64)
    if view == "sliced":
        x = base[::2, :, 1::2, ::3]
    elif view == "permuted":
        x = base.permute(0, 1, 3, 2)
    else:
        x = base
    assert view == "expanded-grad" or not x.is_contiguous()
    x_ours = x.detach().requires_grad_()
    x_theirs = x.detach().clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert relative_error(y_ours, y_theirs) < 1e-12
    if view == "expanded-grad":
        # .sum() hands backward a stride-0 gradient of ones; then dx is 0 up to rounding
        y_ours.sum().backward()
        y_theirs.sum().backward()
        assert (x_ours.grad - x_theirs.grad).abs().max().item() < 1e-12
    else:
        grad = torch.randn(y_theirs.shape, generator=generator, dtype=torch.float64)
        y_ours.backward(grad)
        y_theirs.backward(grad)
        assert relative_error(x_ours.grad, x_theirs.grad) < 1e-12
    assert relative_error(ours.bias.grad, theirs.bias.grad) < 1e-12


def test_zero_size_batch_like_torch():
    case = next(c for c in LAYER_CASES if c.name == "2d-default")
    ours, theirs = _pair(case, torch.float32, seed=9)
    x = torch.randn(0, 5, 4, 6)
    generator = torch.Generator().manual_seed(10)
    for name, a, b in _step(ours, theirs, x, generator):
        assert a.shape == b.shape, name
        assert relative_error(a, b) == 0.0, name
    _compare_buffers(ours, theirs, 0.0)
    assert ours.num_batches_tracked.item() == 1


def test_dtype_and_device_arguments():
    bn = bnn.BatchNorm1d(3, dtype=torch.float64, device="cpu")
    for tensor in list(bn.parameters()) + [bn.running_mean, bn.running_var]:
        assert tensor.dtype == torch.float64 and tensor.device.type == "cpu"
    assert bn.num_batches_tracked.dtype == torch.long
    assert bn(torch.randn(4, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_other_dtypes_route_to_torch(dtype):
    x = torch.randn(4, 3, 5, 5).to(dtype)
    assert not functional.uses_own_kernels(x)
    assert functional.uses_own_kernels(x.float()) and functional.uses_own_kernels(x.double())
    ours, theirs = bnn.BatchNorm2d(3).to(dtype), torch.nn.BatchNorm2d(3).to(dtype)
    assert torch.equal(ours(x), theirs(x))
    assert torch.equal(ours.running_var, theirs.running_var)


def test_training_output_is_normalized_per_channel():
    generator = torch.Generator().manual_seed(11)
    x = torch.randn(16, 7, 5, 5, generator=generator, dtype=torch.float64) * torch.arange(1, 8).view(1, 7, 1, 1) + 50
    y = bnn.BatchNorm2d(7, dtype=torch.float64, eps=0.0 + 1e-12)(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(7, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(7, dtype=torch.float64), atol=1e-8)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("cls, shape, pattern", [
    (bnn.BatchNorm1d, (4, 3, 2, 2), r"BatchNorm1d expected input of shape \(N, C\) or \(N, C, L\), got a 4-D input of shape \(4, 3, 2, 2\)"),
    (bnn.BatchNorm2d, (4, 3, 5), r"BatchNorm2d expected input of shape \(N, C, H, W\), got a 3-D input of shape \(4, 3, 5\)"),
    (bnn.BatchNorm3d, (4, 3, 5, 5), r"BatchNorm3d expected input of shape \(N, C, D, H, W\), got a 4-D input"),
])
def test_wrong_rank_is_a_clear_value_error(cls, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(3)(torch.randn(shape))


def test_channel_mismatch_names_expected_actual_and_fix():
    with pytest.raises(ValueError, match=r"BatchNorm2d expected input of shape \(N, C=64, H, W\), got "
                                         r"\(32, 3, 24, 24\): num_features=64 does not match the channel "
                                         r"dimension 3; use BatchNorm2d\(3\)"):
        bnn.BatchNorm2d(64)(torch.randn(32, 3, 24, 24))


def test_one_value_per_channel_in_training_is_a_clear_value_error():
    bn = bnn.BatchNorm1d(5)
    with pytest.raises(ValueError, match=r"expected more than 1 value per channel when training, got input of "
                                         r"shape \(1, 5\).*call model.eval\(\)"):
        bn(torch.randn(1, 5))
    theirs = torch.nn.BatchNorm1d(5)
    with pytest.raises(ValueError):
        theirs(torch.randn(1, 5))
    assert bn.num_batches_tracked.item() == theirs.num_batches_tracked.item()  # counted before failing, as torch
    bn.eval()
    assert bn(torch.randn(1, 5)).shape == (1, 5)
    bn.train()
    assert bn(torch.randn(1, 5, 2)).shape == (1, 5, 2)  # two values per channel are enough


# ---------------------------------------------------------------------------------- autograd and compile
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 4, 3)], ids=["NC", "NCHW"])
def test_gradcheck(shape, training):
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape[1], generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(shape[1], generator=generator, dtype=torch.float64, requires_grad=True)
    mean = torch.randn(shape[1], generator=generator, dtype=torch.float64)
    var = torch.rand(shape[1], generator=generator, dtype=torch.float64) + 0.5

    def fn(x, weight, bias):
        return functional.batch_norm(x, mean.clone(), var.clone(), weight, bias, training, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, weight, bias))


def test_torch_compile_fullgraph_matches_eager():
    """float64, so that any difference would be a real one and not float32 rounding amplified by the backward."""
    torch.manual_seed(13)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, bias=False), bnn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 6),
                                bnn.BatchNorm1d(6)).double()
    compiled_copy = copy.deepcopy(model)
    compiled = torch.compile(compiled_copy, fullgraph=True)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    y_eager, y_compiled = model(x), compiled(x)
    assert relative_error(y_compiled, y_eager) < 1e-10
    y_eager.square().sum().backward()
    y_compiled.square().sum().backward()
    for (name, p_eager), p_compiled in zip(model.named_parameters(), compiled_copy.parameters()):
        # (the bias of the linear layer before a BN has a gradient of exactly 0 up to rounding: atol)
        assert torch.allclose(p_compiled.grad, p_eager.grad, rtol=1e-10, atol=1e-12), name
    for (name, b_eager), b_compiled in zip(model.named_buffers(), compiled_copy.buffers()):
        assert relative_error(b_compiled, b_eager) < 1e-10, name
    model.eval()
    compiled_copy.eval()
    assert relative_error(compiled(x), model(x)) < 1e-10
