"""PyTorch's own CPU batch-norm unit tests (the `batchnorm` tests of its test/test_nn.py), ported.

Each test runs twice: with torch's classes and functional (the control, which must pass as it does in PyTorch's
suite) and with this package's (which must pass wherever torch's does). Written from the tests' intent, with
fresh random data; bfloat16 variants are left out (that dtype runs on torch's own kernels in our layers).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.nn import Parameter

import batchnorm.nn as bnn
from batchnorm import functional as bfunctional

IMPLEMENTATIONS = {
    "torch": SimpleNamespace(nn=torch.nn, F=torch.nn.functional),
    "ours": SimpleNamespace(nn=bnn, F=bfunctional),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request):
    return IMPLEMENTATIONS[request.param]


@pytest.mark.parametrize("shape", [(4, 8, 10, 10), (4, 1, 9, 9), (4, 9, 1, 1)])
def test_batchnorm_nhwc_cpu(impl, shape):
    channels = shape[1]
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    bn = impl.nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
    ref_x = x.detach().clone().contiguous().requires_grad_()
    ref_bn = torch.nn.BatchNorm2d(channels)
    ref_bn.load_state_dict(bn.state_dict())
    out = bn(x)
    out.backward(grad)
    ref_out = ref_bn(ref_x)
    ref_out.backward(grad.contiguous())
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(bn.weight.grad, ref_bn.weight.grad)
    torch.testing.assert_close(bn.bias.grad, ref_bn.bias.grad)
    torch.testing.assert_close(x.grad, ref_x.grad)


def test_batchnorm_non_contig_cpu(impl):
    x = torch.arange(6, dtype=torch.float).reshape(1, 3, 2, 1).permute(0, 2, 1, 3)
    bn = impl.nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.weight.uniform_()
        bn.bias.uniform_()
    ref_bn = torch.nn.BatchNorm2d(2).eval()
    ref_bn.load_state_dict(bn.state_dict())
    out = bn(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref_bn(x.contiguous()))


def test_batchnorm_raises_error_if_less_than_one_value_per_channel(impl):
    with pytest.raises(ValueError):
        impl.nn.BatchNorm1d(10)(torch.rand(10)[None, :, None])


@pytest.mark.parametrize("argument", ["running_mean", "running_var", "weight", "bias"])
def test_batchnorm_raises_error_if_argument_is_not_same_size_as_input(impl, argument):
    x = torch.rand(2, 10)
    for size in (9, 11):
        args = {"running_mean": torch.rand(10), "running_var": torch.rand(10)}
        kwargs = {}
        if argument in args:
            args[argument] = torch.rand(size)
        else:
            kwargs[argument] = Parameter(torch.rand(size))
        with pytest.raises(RuntimeError):
            impl.F.batch_norm(x, args["running_mean"], args["running_var"], **kwargs)


@pytest.mark.parametrize("dual_indices", [(0,), (1,), (1, 2), (0, 1), (0, 1, 2)])
def test_batchnorm_raises_error_if_running_var_or_running_mean_have_forward_grad(impl, dual_indices):
    args = (torch.randn(3, 2, 5), torch.randn(2), torch.randn(2).abs() + 0.1)
    tangents = tuple(torch.rand_like(a) for a in args)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(a, t) if i in dual_indices else a for i, (a, t) in enumerate(zip(args, tangents))]
        if (1 in dual_indices or 2 in dual_indices) and 0 in dual_indices:
            with pytest.raises(RuntimeError, match="batch_norm is not differentiable wrt running_mean and running_var"):
                impl.F.batch_norm(*duals, training=False, momentum=-1.2)
        else:
            out = impl.F.batch_norm(*duals, training=False, momentum=-1.2)
            if 0 in dual_indices:  # the tangent reaches the output (ours once carried none)
                expected = tangents[0] / torch.sqrt(args[2] + 1e-5).view(1, -1, 1)
                torch.testing.assert_close(fwAD.unpack_dual(out).tangent, expected)


def test_batchnorm_buffer_update_when_stats_are_not_tracked(impl):
    bn = impl.nn.BatchNorm1d(4, track_running_stats=True)
    bn.track_running_stats = False
    before = [bn.num_batches_tracked.clone(), bn.running_mean.clone(), bn.running_var.clone()]
    bn(torch.rand(32, 4))
    for old, new in zip(before, (bn.num_batches_tracked, bn.running_mean, bn.running_var)):
        assert torch.equal(old, new)


def test_batchnorm_update_stats(impl):
    bn = impl.nn.BatchNorm1d(3)
    data = torch.rand(4, 3)
    before = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    bn(data)
    assert not torch.equal(before[0], bn.running_mean) and not torch.equal(before[1], bn.running_var)
    assert int(bn.num_batches_tracked) == int(before[2]) + 1
    bn.eval()
    before = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    bn(data)
    for old, new in zip(before, (bn.running_mean, bn.running_var, bn.num_batches_tracked)):
        assert torch.equal(old, new)


def test_batchnorm_simple_average(impl):
    bn = impl.nn.BatchNorm1d(3, momentum=None)
    first, second = torch.rand(4, 3), torch.rand(4, 3)
    bn(first)
    bn(second)
    mean = (first.mean(0) + second.mean(0)) / 2
    var = (first.var(0) + second.var(0)) / 2
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    bn.reset_running_stats()
    bn(first)
    torch.testing.assert_close(bn.running_mean, first.mean(0))


def test_batchnorm_eval(impl):
    bn = impl.nn.BatchNorm1d(3).eval()
    data = torch.rand(4, 3, requires_grad=True)
    grad = torch.rand(4, 3)
    out1 = bn(data)
    out1.backward(grad)
    grad1 = data.grad.clone()
    data.grad = None
    out2 = bn(data)
    out2.backward(grad)
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(grad1, data.grad)
    # without running statistics eval normalizes with the batch, as training does
    bn = impl.nn.BatchNorm1d(3, track_running_stats=False)
    data = torch.rand(4, 3)
    torch.testing.assert_close(bn(data), bn.eval()(data))


@pytest.mark.parametrize("training", [False, True])
def test_batchnorm_grad(impl, training):
    """gradcheck and gradgradcheck (batched gradients included) of the functional in float64."""
    bs, n_feat, size_feat = 3, 2, 2
    x = torch.randn(bs, n_feat, size_feat, dtype=torch.float64, requires_grad=True)
    weight = (torch.rand(n_feat, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(n_feat, dtype=torch.float64, requires_grad=True)
    running_mean = torch.randn(n_feat, dtype=torch.float64)
    running_var = torch.rand(n_feat, dtype=torch.float64) + 0.5

    def fn(x_, w, b):  # fresh buffers per call: the running update must not change the function
        return impl.F.batch_norm(x_, running_mean.clone(), running_var.clone(), w, b, training, 0.1, 1e-4)

    assert torch.autograd.gradcheck(fn, (x, weight, bias), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(fn, (x, weight, bias), check_batched_grad=True)
