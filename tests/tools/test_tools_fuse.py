"""Fusing batch norm with the activation (and residual add) after it: the fused model computes what the original
computes (torch's layers as the oracle), in training and eval, forward and backward, and fuses only safe patterns."""

import pytest
import torch
from torch import nn

import batchnorm.nn as bnn
from batchnorm.benchmark.model import resnet18
from batchnorm.tools import convert, fuse_activations


def _train_steps(model, x, y, steps=2):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    outputs = []
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
        outputs.append(out.detach())
    return outputs


def test_resnet18_fused_trains_and_infers_like_torchs():
    torch.manual_seed(0)
    model = resnet18(width=8).double()
    fused = convert(model, to="fused")
    kinds = [type(m).__name__ for m in fused.modules()]
    assert kinds.count("BatchNormAct2d") == 9 and kinds.count("BatchNormAddAct2d") == 8
    assert set(fused.state_dict()) == set(model.state_dict())   # checkpoints carry over
    x, y = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))
    for ours, theirs in zip(_train_steps(fused, x, y), _train_steps(model, x, y)):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
    state = fused.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(state[key].to(value.dtype), value, rtol=1e-9, atol=1e-9)
    model.eval(), fused.eval()
    torch.testing.assert_close(fused(x), model(x), rtol=1e-9, atol=1e-9)


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.a, self.b, self.c = nn.BatchNorm2d(4), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x):
        h = torch.relu(self.a(self.conv(x)))
        h = self.act(h + self.b(h))          # residual first, the BN output second
        shared = self.c(h)                   # two users: must not be fused
        return nn.functional.relu(shared) + shared


def test_functional_forms_fuse_and_a_shared_output_is_left():
    torch.manual_seed(1)
    model = Functional().double()
    fused, report = fuse_activations(model)
    assert isinstance(fused.a, bnn.BatchNormAct2d) and fused.a.activation == "relu"
    assert isinstance(fused.b, bnn.BatchNormAddAct2d) and fused.b.activation == "leaky_relu"
    assert fused.b.activation_param == pytest.approx(0.2)
    assert type(fused.c) is nn.BatchNorm2d and any(entry.startswith("c (its output has 2 users)")
                                                   for entry in report.left)
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    expected = model(x)
    grad_expected = torch.autograd.grad(expected.square().sum(), x)[0]
    got = fused(x)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.autograd.grad(got.square().sum(), x)[0], grad_expected, rtol=1e-8, atol=1e-9)


def test_untraceable_model_is_refused_with_the_way_out():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x):
            return torch.relu(self.bn(x)) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="needs a model torch.fx can trace.*convert\\(model, to='batchnorm'\\)"):
        fuse_activations(DataDependent())
    with pytest.raises(TypeError, match="torch.nn.Module, got int"):
        fuse_activations(3)
