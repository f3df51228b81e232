"""Tests of batchnorm.tools.freeze/unfreeze and convert: persistence across .train(), round trips, GroupNorm."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import batchnorm.nn as bnn
from batchnorm.tools import convert, freeze, unfreeze


def _randomized(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            c = m.running_mean.numel()
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=generator))
                m.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                m.weight.copy_(torch.randn(c, generator=generator))
                m.bias.copy_(torch.randn(c, generator=generator))
                m.num_batches_tracked.fill_(11)
    return model


def make_mixed():
    """torch's and our batch norms, 1d and 2d, one in eval mode."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, bias=False), bnn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 8), bnn.BatchNorm1d(8),
                          nn.Linear(8, 4), nn.BatchNorm1d(4))
    _randomized(model).train()
    model[11].eval()
    model[10].weight.requires_grad_(False)
    return model


def _bn_layers(model):
    return [m for m in model.modules() if hasattr(m, "running_mean")]


@pytest.mark.parametrize("affine_trainable", [True, False])
def test_freeze_survives_train_and_keeps_statistics(affine_trainable):
    torch.manual_seed(0)
    model = make_mixed()
    original = copy.deepcopy(model)
    frozen = freeze(model, affine_trainable=affine_trainable)
    frozen.train()                                          # the freeze must survive this
    x = torch.randn(8, 3, 9, 9)
    out = frozen(x)
    out.sum().backward()
    # oracle: the original model in eval mode (running statistics), on the same input
    with torch.no_grad():
        expected = copy.deepcopy(original).eval()(x)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
    for before, after in zip(_bn_layers(original), _bn_layers(frozen)):
        assert torch.equal(before.running_mean, after.running_mean)
        assert torch.equal(before.running_var, after.running_var)
        assert after.weight.requires_grad is affine_trainable
        assert (after.weight.grad is not None) is affine_trainable
    # torch's layers became FrozenBatchNorm, ours keep their class with freeze_stats=True
    kinds = [type(m).__name__ for m in _bn_layers(frozen)]
    assert kinds[0] == "FrozenBatchNorm2d" and kinds[3] == "FrozenBatchNorm1d"
    assert type(frozen[4]) is bnn.BatchNorm2d and frozen[4].freeze_stats is True
    # the original is untouched
    assert type(model[1]) is nn.BatchNorm2d and not getattr(model[4], "freeze_stats", False)
    assert model[4].weight.requires_grad


def test_unfreeze_restores_classes_training_and_updates():
    model = make_mixed()
    restored = unfreeze(freeze(model, affine_trainable=False))
    assert [type(m) for m in _bn_layers(restored)] == [type(m) for m in _bn_layers(model)]
    assert [m.training for m in restored.modules()] == [m.training for m in model.modules()]
    assert all(m.weight.requires_grad for m in _bn_layers(restored))
    state, reference = restored.state_dict(), model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    before = restored[1].running_mean.clone()
    restored.train()(torch.randn(8, 3, 9, 9))
    assert not torch.equal(restored[1].running_mean, before)       # statistics move again in training


def test_convert_round_trip_torch_ours_torch():
    torch.manual_seed(1)
    model = make_mixed()
    ours = convert(model, to="batchnorm")
    assert [type(m) for m in _bn_layers(ours)] == [bnn.BatchNorm2d, bnn.BatchNorm2d, bnn.BatchNorm1d, bnn.BatchNorm1d]
    back = convert(ours, to="torch")
    assert [type(m) for m in _bn_layers(back)] == [nn.BatchNorm2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.BatchNorm1d]
    for converted in (ours, back):
        state, reference = converted.state_dict(), model.state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference)
        assert [m.training for m in converted.modules()] == [m.training for m in model.modules()]
        assert [p.requires_grad for p in converted.parameters()] == [p.requires_grad for p in model.parameters()]
    # same outputs (training mode with batch statistics) and the same running updates as the original
    x = torch.randn(6, 3, 9, 9)
    reference_model = copy.deepcopy(model)
    expected = reference_model(x)
    for converted in (ours, back):
        torch.testing.assert_close(converted(x), expected, rtol=1e-5, atol=1e-5)
        for a, b in zip(_bn_layers(converted), _bn_layers(reference_model)):
            torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-5, atol=1e-6)
    # the original is untouched
    assert [type(m) for m in _bn_layers(model)][1] is bnn.BatchNorm2d and type(model[1]) is nn.BatchNorm2d


def test_convert_frozen_and_back():
    model = make_mixed()
    frozen = convert(model, to="frozen")
    assert all(type(m).__name__.startswith("FrozenBatchNorm") for m in _bn_layers(frozen))
    assert frozen[10].weight.requires_grad is False and frozen[1].weight.requires_grad is True  # kept per layer
    x = torch.randn(5, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(frozen.train()(x), copy.deepcopy(model).eval()(x), rtol=1e-5, atol=1e-5)
    back = convert(frozen, to="batchnorm")
    assert [type(m) for m in _bn_layers(back)] == [bnn.BatchNorm2d, bnn.BatchNorm2d, bnn.BatchNorm1d, bnn.BatchNorm1d]
    assert all(torch.equal(a.running_var, b.running_var) for a, b in zip(_bn_layers(back), _bn_layers(model)))


def test_convert_groupnorm_keeps_affine_and_matches_group_norm():
    model = make_mixed()
    grouped = convert(model, to="groupnorm", num_groups=2)
    norms = [m for m in grouped.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 4 and not _bn_layers(grouped)
    for norm, bn in zip(norms, _bn_layers(model)):
        assert norm.num_groups == 2 and norm.num_channels == bn.num_features and norm.eps == bn.eps
        assert torch.equal(norm.weight, bn.weight) and torch.equal(norm.bias, bn.bias)
        assert norm.training == bn.training
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(norms[0](x), F.group_norm(x, 2, model[1].weight, model[1].bias, model[1].eps))
    with pytest.raises(ValueError, match="needs num_groups, a positive integer"):
        convert(model, to="groupnorm")
    with pytest.raises(ValueError, match="num_groups=3 for 1 with 4 channels"):
        convert(model, to="groupnorm", num_groups=3)


def test_convert_sync_single_process_behaves_like_batchnorm():
    model = make_mixed()
    synced = convert(model, to="sync")
    assert all(type(m) is bnn.SyncBatchNorm for m in _bn_layers(synced))
    x = torch.randn(6, 3, 9, 9)
    torch.testing.assert_close(synced(x), copy.deepcopy(model)(x), rtol=1e-5, atol=1e-5)
    back = convert(synced, to="torch")
    assert all(type(m) is nn.SyncBatchNorm for m in _bn_layers(back))


def test_convert_leaves_variants_with_a_warning_and_validates_arguments():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bnn.BatchNormAct2d(4), nn.BatchNorm2d(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = convert(model, to="torch")
    assert type(converted[1]) is bnn.BatchNormAct2d and type(converted[2]) is nn.BatchNorm2d
    assert any("left 1 layer(s)" in str(w.message) and "BatchNormAct2d" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="convert got to='keras'; expected one of batchnorm, fused, torch, sync, frozen"):
        convert(model, to="keras")
    with pytest.raises(TypeError, match="convert expected model to be a torch.nn.Module"):
        convert([model], to="torch")
    single = convert(nn.BatchNorm2d(3), to="batchnorm")       # a lone layer is converted itself
    assert type(single) is bnn.BatchNorm2d
