"""Tests of batchnorm.tools.fold and export_onnx on ResNet-, MobileNet-, DenseNet-style and transformer models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import batchnorm.nn as bnn
from batchnorm.tools import export_onnx, fold

RTOL = 1e-5


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every batch norm (fresh ones are 0/1)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if getattr(module, "running_mean", None) is not None and hasattr(module, "running_var"):
            c = module.running_mean.numel()
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(c, generator=generator))
                module.running_var.copy_(torch.rand(c, generator=generator) * 2 + 0.2)
                if getattr(module, "weight", None) is not None:
                    module.weight.copy_(torch.randn(c, generator=generator))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(c, generator=generator))
    return model


# ------------------------------------------------------------------------------------------- architectures
class TimmStyleBatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d convention: a BatchNorm2d subclass applying `.drop` then `.act` after the affine."""

    def __init__(self, num_features, act_layer=nn.ReLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                         self.momentum or 0.0, self.eps)
        return self.act(self.drop(x))


class BasicBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, + identity or downsample conv-BN, ReLU; ours fuses the last BN, add and ReLU."""

    def __init__(self, cin, cout, stride, ours):
        super().__init__()
        self.ours = ours
        norm = bnn.BatchNorm2d if ours else nn.BatchNorm2d
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bnn.BatchNormAddAct2d(cout) if ours else nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.ours:
            return self.bn2(self.conv2(out), identity)           # act(BN(x) + residual) in one layer
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetStyle(nn.Module):
    def __init__(self, ours=False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = BasicBlock(8, 8, 1, ours)
        self.layer2 = BasicBlock(8, 16, 2, ours)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class MobileNetStyle(nn.Module):
    """Inverted residual: pointwise conv-BN-ReLU6, depthwise conv-BN-act (timm's and ours), pointwise conv-BN."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.expand = nn.Conv2d(8, 24, 1, bias=False)
        self.bn_expand = TimmStyleBatchNormAct2d(24, nn.ReLU6)
        self.depthwise = nn.Conv2d(24, 24, 3, 1, 1, groups=24, bias=False)
        self.bn_depthwise = bnn.BatchNormAct2d(24, activation="leaky_relu", activation_param=0.2)
        self.project = nn.Conv2d(24, 8, 1, bias=False)
        self.bn_project = bnn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.bn_project(self.project(self.bn_depthwise(self.depthwise(self.bn_expand(self.expand(x))))))
        return self.head((x + y).mean((2, 3)))


class DenseLayer(nn.Module):
    """Pre-activation: BN -> ReLU -> conv (the BN cannot be folded into a conv before it)."""

    def __init__(self, cin, growth):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return torch.cat([x, out], 1)


class DenseNetStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.layer1 = DenseLayer(8, 4)
        self.layer2 = DenseLayer(12, 4)
        self.norm_final = nn.BatchNorm2d(16)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        x = self.layer2(self.layer1(self.conv0(x)))
        return self.classifier(F.relu(self.norm_final(x)).mean((2, 3)))


class TinyTransformer(nn.Module):
    """A transformer encoder (LayerNorm, untouched) with a Linear -> BatchNorm1d head on the pooled tokens."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 12)
        self.head_bn = nn.BatchNorm1d(12)

    def forward(self, x):
        return self.head_bn(self.head(self.norm(self.encoder(self.embed(x))).mean(1)))


def _batchnorm_count(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) or type(m).__name__.startswith("FrozenBatchNorm")
               for m in model.modules())


def _check_equal(original, folded, x):
    with torch.no_grad():
        expected, got = original(x), folded(x)
    scale = expected.abs().max()
    assert torch.allclose(got, expected, rtol=0, atol=RTOL * float(scale)), float((got - expected).abs().max() / scale)


ARCHITECTURES = {
    "resnet-torch": (lambda: ResNetStyle(ours=False), (2, 3, 16, 16), 6, []),
    "resnet-ours": (lambda: ResNetStyle(ours=True), (2, 3, 16, 16), 6, []),
    "mobilenet": (MobileNetStyle, (2, 3, 16, 16), 4, []),
    "densenet-preactivation": (DenseNetStyle, (2, 3, 8, 8), 2, ["layer1.norm1", "layer2.norm1", "norm_final"]),
    "transformer": (TinyTransformer, (4, 5, 6), 1, []),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_fold_matches_original_and_removes_foldable_batchnorms(name):
    make, shape, expected_folded, expected_left = ARCHITECTURES[name]
    torch.manual_seed(1)
    model = randomize_statistics(make(), seed=2).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(shape) * 2 + 0.3
    folded, report = fold(model, x)

    _check_equal(model, folded, x)
    _check_equal(model, folded, torch.randn(shape))            # fresh inputs, not only the example ones
    assert report.max_rel_error is not None and report.max_rel_error < RTOL
    assert len(report.folded) == expected_folded
    assert sorted(s.batchnorm for s in report.skipped) == sorted(expected_left)
    assert _batchnorm_count(folded) == len(expected_left)
    # the original is untouched
    assert _batchnorm_count(model) == expected_folded + len(expected_left)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_densenet_preactivation_batchnorms_are_reported_with_the_reason():
    model = randomize_statistics(DenseNetStyle()).eval()
    _, report = fold(model, torch.randn(2, 3, 8, 8))
    reasons = {s.batchnorm: s.reason for s in report.skipped}
    # conv0 -> norm1 of the first layer, but conv0's output is also concatenated: folding would change that path
    assert "the output of conv0 also feeds function cat" in reasons["layer1.norm1"]
    # the others normalize a concatenation
    assert "comes from function cat, not from a Conv/ConvTranspose/Linear" in reasons["layer2.norm1"]
    assert "comes from function cat, not from a Conv/ConvTranspose/Linear" in reasons["norm_final"]
    assert {f.batchnorm: f.into for f in report.folded} == {"layer1.norm2": "layer1.conv1",
                                                            "layer2.norm2": "layer2.conv1"}


def test_transformer_layernorm_untouched():
    model = randomize_statistics(TinyTransformer()).eval()
    folded, report = fold(model, torch.randn(3, 5, 6))
    layer_norms = [m for m in folded.modules() if isinstance(m, nn.LayerNorm)]
    assert len(layer_norms) == 3                      # two in the encoder layer, one of our own
    for (name, a), b in zip(((n, m) for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)), layer_norms):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), name
    assert [f.into for f in report.folded] == ["head"]


def test_batchnorm_add_activation_leaves_add_activation():
    model = randomize_statistics(ResNetStyle(ours=True)).eval()
    folded, report = fold(model, torch.randn(2, 3, 16, 16))
    by_name = {f.batchnorm: f for f in report.folded}
    assert by_name["layer1.bn2"].into == "layer1.conv2" and by_name["layer1.bn2"].activation == "add + ReLU"
    assert type(folded.layer1.bn2).__name__ == "AddActivation" and isinstance(folded.layer1.bn2.activation, nn.ReLU)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded.layer1.bn2(x, -x.flip(0)), torch.relu(x - x.flip(0)))


def test_activation_layers_keep_their_activation():
    model = randomize_statistics(MobileNetStyle()).eval()
    folded, report = fold(model, torch.randn(2, 3, 16, 16))
    by_name = {f.batchnorm: f for f in report.folded}
    assert isinstance(folded.bn_expand, nn.ReLU6)
    assert isinstance(folded.bn_depthwise, nn.LeakyReLU) and folded.bn_depthwise.negative_slope == pytest.approx(0.2)
    assert isinstance(folded.bn_project, nn.Identity)
    assert by_name["bn_depthwise"].into == "depthwise" and by_name["bn_depthwise"].activation == "LeakyReLU"


@pytest.mark.parametrize("layer, bn, shape", [
    (nn.Conv1d(4, 6, 3, bias=True), nn.BatchNorm1d(6), (3, 4, 9)),
    (nn.Conv2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6), (3, 4, 7, 7)),
    (nn.Conv3d(4, 6, 2, bias=True), nn.BatchNorm3d(6), (2, 4, 4, 4, 4)),
    (nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(6), (2, 4, 5, 5)),
    (nn.ConvTranspose1d(6, 9, 3, groups=3, bias=True), nn.BatchNorm1d(9), (2, 6, 8)),
    (nn.ConvTranspose3d(4, 4, 2, groups=4, bias=False), nn.BatchNorm3d(4), (2, 4, 3, 3, 3)),
    (nn.Linear(5, 7), nn.BatchNorm1d(7), (6, 5)),
])
def test_fold_formula_against_numpy_for_each_layer_kind(layer, bn, shape):
    torch.manual_seed(3)
    model = randomize_statistics(nn.Sequential(layer, bn), seed=4).eval()
    folded, report = fold(model, torch.randn(shape))
    assert len(report.folded) == 1 and isinstance(folded[1], nn.Identity)
    # oracle: the folding formula in float64 NumPy, written out per layer kind
    w = layer.weight.detach().double().numpy()
    b = np.zeros(bn.num_features) if layer.bias is None else layer.bias.detach().double().numpy()
    scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    shift = bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * scale
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        g = layer.groups
        expected_w = w.copy()
        per_group_in, per_group_out = w.shape[0] // g, w.shape[1]
        for out_channel in range(bn.num_features):
            group, j = divmod(out_channel, per_group_out)
            expected_w[group * per_group_in:(group + 1) * per_group_in, j] *= scale[out_channel]
    else:
        expected_w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
    np.testing.assert_allclose(folded[0].weight.detach().double().numpy(), expected_w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(folded[0].bias.detach().double().numpy(), b * scale + shift, rtol=1e-6, atol=1e-6)
    _check_equal(model, folded, torch.randn(shape))


class TwoUsers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y            # the conv output also feeds the addition


class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(4)
        self.bn_b = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn_a(self.conv(x)) + self.bn_b(self.conv(x * 2))


class NotBatchNormInEval(nn.BatchNorm2d):
    """A subclass whose eval forward is not the affine transform of its running statistics."""

    def forward(self, x):
        return super().forward(x) * 2


class ThreeDLinear(nn.Module):
    """Linear on (N, L, F) followed by BatchNorm1d over dim 1 = L: L == F, so only shapes tell them apart."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x):
        return self.bn(self.fc(x))


@pytest.mark.parametrize("make, shape, reason", [
    (TwoUsers, (2, 3, 6, 6), "also feeds"),
    (SharedConv, (2, 4, 6, 6), "called 2 times"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), NotBatchNormInEval(4)), (2, 3, 6, 6), "not the affine transform"),
    (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), (2, 3, 6, 6),
     "no running statistics"),
    (ThreeDLinear, (3, 6, 6), "outputs a 3-D tensor"),
])
def test_unfoldable_batchnorms_are_left_and_reported(make, shape, reason):
    torch.manual_seed(5)
    model = randomize_statistics(make()).eval()
    x = torch.randn(shape)
    folded, report = fold(model, x)
    assert not report.folded
    assert report.skipped and all(reason in s.reason for s in report.skipped), report.skipped
    _check_equal(model, folded, x)


def test_batchnorm_in_training_mode_is_left_and_the_original_keeps_its_statistics():
    model = randomize_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()))
    model.train()
    before = model[1].running_mean.clone()
    folded, report = fold(model, torch.randn(4, 3, 6, 6))
    assert [s.batchnorm for s in report.skipped] == ["1"] and "training mode" in report.skipped[0].reason
    assert torch.equal(model[1].running_mean, before) and torch.equal(folded[1].running_mean, before)
    assert model.training and model[1].training


def test_frozen_batchnorm_is_folded_even_in_training_mode():
    from batchnorm.nn import FrozenBatchNorm2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4, affine_trainable=True))
    randomize_statistics(model).train()
    folded, report = fold(model, torch.randn(2, 3, 6, 6))
    assert [f.batchnorm for f in report.folded] == ["1"]
    _check_equal(model, folded, torch.randn(3, 3, 6, 6))
    # ours with freeze_stats=True normalizes with its running statistics in training mode too
    ours = randomize_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), bnn.BatchNorm2d(4), nn.ReLU())).train()
    ours[1].freeze_stats = True
    folded, report = fold(ours, torch.randn(2, 3, 6, 6))
    assert [f.batchnorm for f in report.folded] == ["1"] and isinstance(folded[1], nn.Identity)
    _check_equal(ours, folded, torch.randn(3, 3, 6, 6))


class Untraceable(nn.Module):
    """Data-dependent control flow at the top: torch.fx cannot trace it whole, but it can trace the blocks."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block2 = BasicBlock(6, 6, 1, ours=True)
        self.bn_top = nn.BatchNorm2d(6)
        self.conv_top = nn.Conv2d(6, 6, 1)

    def forward(self, x):
        x = self.block1(x)
        if x.mean() > 100:               # data-dependent branch
            x = x * 0
        return self.bn_top(self.conv_top(self.block2(x)))


def test_fallback_traces_submodules_when_the_model_cannot_be_traced():
    model = randomize_statistics(Untraceable()).eval()
    x = torch.randn(2, 3, 8, 8)
    folded, report = fold(model, x)
    assert report.untraced and report.untraced[0][0] == "(model)"
    assert sorted(f.batchnorm for f in report.folded) == ["block1.1", "block2.bn1", "block2.bn2"]
    assert [s.batchnorm for s in report.skipped] == ["bn_top"] and "could not trace" in report.skipped[0].reason
    _check_equal(model, folded, x)


def test_fold_without_example_inputs_and_errors():
    model = randomize_statistics(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))).eval()
    folded, report = fold(model)
    assert report.max_rel_error is None and len(report.folded) == 1 and "assumed" in report.notes[0]
    _check_equal(model, folded, torch.randn(5, 4))
    assert "folded" in str(report) and "into 0" in report.table()
    with pytest.raises(TypeError, match="fold expected model to be a torch.nn.Module, got OrderedDict: pass the model"):
        fold(model.state_dict())


# ------------------------------------------------------------------------------------------------- ONNX
def _onnx_run(path, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _onnx_ops(path):
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("name, batchnorm_nodes", [("resnet-ours", 0), ("mobilenet", 0),
                                                   ("densenet-preactivation", 3)])
def test_export_onnx_runs_in_onnxruntime_without_foldable_batchnorms(tmp_path, name, batchnorm_nodes):
    make, shape, _, _ = ARCHITECTURES[name]
    torch.manual_seed(6)
    model = randomize_statistics(make()).eval()
    path = tmp_path / "model.onnx"
    report = export_onnx(model, torch.randn(shape), path)
    assert _onnx_ops(path).count("BatchNormalization") == batchnorm_nodes == len(report.skipped)
    x = torch.randn((5,) + shape[1:])                     # another batch size: the batch axis is dynamic
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_onnx_run(path, x), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    # without our folding (torch's exporter still fuses plain conv -> BN itself): same numbers
    without_folding = tmp_path / "unfolded.onnx"
    assert export_onnx(model, torch.randn(shape), without_folding, fold_batchnorm=False) is None
    np.testing.assert_allclose(_onnx_run(without_folding, x), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_blocks_defined_in_this_package_outside_nn_are_traced_through():
    """Only layers (batchnorm.nn) are fx leaves: a block of a model defined in the package (the lab's models)
    must be traced into, or its batch norms would be invisible."""

    class LabBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.norm = bnn.BatchNorm2d(4)

        def forward(self, x):
            return torch.relu(self.norm(self.conv(x)))

    LabBlock.__module__ = "batchnorm.lab.models"
    model = randomize_statistics(nn.Sequential(LabBlock(), nn.Flatten())).eval()
    folded, report = fold(model, torch.randn(2, 3, 6, 6))
    assert [(f.batchnorm, f.into) for f in report.folded] == [("0.norm", "0.conv")]
    _check_equal(model, folded, torch.randn(2, 3, 6, 6))
