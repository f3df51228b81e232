"""Tests of batchnorm.tools.recalibrate: exact pooled statistics (checked against NumPy), flags restored."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm.nn as bnn
from batchnorm.tools import recalibrate


def _pooled(arrays):
    """NumPy oracle: per-channel mean and unbiased variance over all samples and positions of all batches."""
    values = np.concatenate([np.moveaxis(a, 1, 0).reshape(a.shape[1], -1) for a in arrays], axis=1)
    return values.mean(axis=1), values.var(axis=1, ddof=1)


def _ragged_batches(seed, sizes, shape, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    # batch-dependent offsets and scales: the average of per-batch variances differs from the pooled variance
    return [torch.randn((n,) + shape, generator=generator, dtype=dtype) * (1 + i) + 3 * i
            for i, n in enumerate(sizes)]


@pytest.mark.parametrize("layer, shape", [(bnn.BatchNorm2d, (3, 5, 4)), (nn.BatchNorm2d, (3, 5, 4)),
                                          (bnn.BatchNorm1d, (3,)), (nn.BatchNorm3d, (3, 2, 3, 2))])
def test_first_layer_statistics_are_exactly_the_pooled_ones(layer, shape):
    bn = layer(3, dtype=torch.float64)
    data = _ragged_batches(0, (7, 2, 5), shape)
    model, report = recalibrate(nn.Sequential(bn), data)
    mean, var = _pooled([d.numpy() for d in data])
    np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-12)
    # not the average of per-batch variances (what an EMA with momentum 1 averaged over batches would give)
    per_batch = np.mean([_pooled([d.numpy()])[1] for d in data], axis=0)
    assert np.all(np.abs(per_batch - var) > 0.1 * var)
    assert report.num_batches == 3 and report.num_samples == 14 and report.updated == ["0"]
    assert model[0] is bn                               # in place by default


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
        self.bn1 = bnn.BatchNorm2d(4, dtype=torch.float64)
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(4, 5, 3, dtype=torch.float64)
        self.bn2 = nn.BatchNorm2d(5, dtype=torch.float64)
        self.fc = nn.Linear(5, 6, dtype=torch.float64)
        self.bn3 = nn.BatchNorm1d(6, dtype=torch.float64)

    def forward(self, x):
        x = self.bn2(self.conv2(self.drop(torch.relu(self.bn1(self.conv1(x))))))
        return self.bn3(self.fc(x.mean((2, 3))))


def test_deeper_layers_get_the_pooled_statistics_of_their_training_mode_inputs():
    torch.manual_seed(0)
    model = TwoLayer()
    model.train()
    model.bn2.eval()                                      # mixed flags: all must come back as they were
    flags = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    tracked = {name: int(m.num_batches_tracked) for name, m in model.named_modules() if hasattr(m, "running_var")}
    data = _ragged_batches(1, (6, 3, 9, 4), (3, 6, 6))

    # oracle: the inputs each batch norm sees in a training-mode pass (BN in training, dropout off), pooled in NumPy
    twin = copy.deepcopy(model).eval()
    seen = {"bn1": [], "bn2": [], "bn3": []}
    for name in seen:
        getattr(twin, name).train()
        getattr(twin, name).register_forward_pre_hook(lambda m, inputs, key=name: seen[key].append(
            inputs[0].detach().numpy().copy()))
    with torch.no_grad():
        for batch in data:
            twin(batch)

    _, report = recalibrate(model, data)
    for name, arrays in seen.items():
        mean, var = _pooled(arrays)
        bn = getattr(model, name)
        np.testing.assert_allclose(bn.running_mean.numpy(), mean, rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(bn.running_var.numpy(), var, rtol=1e-10, err_msg=name)
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert {name: m.momentum for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)} == momenta
    assert {name: int(m.num_batches_tracked) for name, m in model.named_modules()
            if hasattr(m, "running_var")} == tracked
    assert sorted(report.updated) == ["bn1", "bn2", "bn3"]
    assert report.values_per_channel["bn3"] == 22 and report.values_per_channel["bn1"] == 22 * 36


def test_num_batches_uses_the_first_batches_and_raises_when_data_runs_out():
    data = _ragged_batches(2, (4, 5, 6), (2,))
    model = nn.Sequential(nn.BatchNorm1d(2, dtype=torch.float64))
    recalibrate(model, iter(data), num_batches=2)          # a one-pass iterator works
    mean, var = _pooled([d.numpy() for d in data[:2]])
    np.testing.assert_allclose(model[0].running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(model[0].running_var.numpy(), var, rtol=1e-12)
    before = model[0].running_mean.clone()
    with pytest.raises(ValueError, match=r"num_batches=5 but the data ran out after 3 batch\(es\)"):
        recalibrate(model, data, num_batches=5)
    assert torch.equal(model[0].running_mean, before)     # nothing written when it fails
    with pytest.raises(ValueError, match="num_batches must be a positive integer or None"):
        recalibrate(model, data, num_batches=0)
    with pytest.raises(ValueError, match="data yielded no batches"):
        recalibrate(model, [])
    with pytest.raises(TypeError, match="recalibrate expected model to be a torch.nn.Module"):
        recalibrate("model", data)


def test_labelled_batches_inplace_false_and_float32():
    generator = torch.Generator().manual_seed(3)
    data = [(torch.randn(n, 4, 5, generator=generator) * 2 + 1, torch.randint(0, 3, (n,), generator=generator))
            for n in (8, 3)]
    model = nn.Sequential(nn.Conv1d(4, 4, 1), nn.BatchNorm1d(4)).eval()
    original = copy.deepcopy(model.state_dict())
    new, _ = recalibrate(model, data, inplace=False)
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        conv_out = [model[0](x).double().numpy() for x, _ in data]
    mean, var = _pooled(conv_out)
    np.testing.assert_allclose(new[1].running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new[1].running_var.numpy(), var, rtol=1e-5)
    assert not new.training and not new[1].training


def test_frozen_and_statistics_free_layers_are_left_and_reported():
    from batchnorm.nn import FrozenBatchNorm1d

    frozen = FrozenBatchNorm1d(3)
    model = nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False), frozen, nn.BatchNorm1d(3))
    _, report = recalibrate(model, _ragged_batches(4, (5, 5), (3,), dtype=torch.float32))
    reasons = dict(report.skipped)
    assert "track_running_stats=False" in reasons["0"] and "frozen" in reasons["1"]
    assert report.updated == ["2"]
    assert torch.equal(frozen.running_mean, torch.zeros(3)) and torch.equal(frozen.running_var, torch.ones(3))


def test_adabn_target_domain_statistics_normalize_the_target_data():
    """AdaBN: after recalibrating on shifted target-domain data, the eval-mode output is standardized again."""
    generator = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 4, dtype=torch.float64), nn.BatchNorm1d(4, affine=False, dtype=torch.float64))
    source = [torch.randn(32, 4, generator=generator, dtype=torch.float64) for _ in range(4)]
    target = [torch.randn(32, 4, generator=generator, dtype=torch.float64) * 3 + 5 for _ in range(4)]
    recalibrate(model, source)
    model.eval()
    with torch.no_grad():
        shifted = torch.cat([model(t) for t in target])
    assert shifted.mean(0).abs().max() > 1.0                 # source statistics do not fit the target domain
    recalibrate(model, target)
    with torch.no_grad():
        adapted = torch.cat([model(t) for t in target]).numpy()
    np.testing.assert_allclose(adapted.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(adapted.var(0, ddof=1), 1, rtol=1e-4)  # eps = 1e-5 inside the square root


def test_moments_are_merged_across_processes_through_merge_moments(monkeypatch):
    """Distributed-aware: the per-process moments go through batchnorm.distributed.merge_moments; a fake merge
    that adds another process's data must give the pooled statistics of both processes' data."""
    import batchnorm.distributed

    local = _ragged_batches(6, (5, 4), (3,))
    other = _ragged_batches(7, (6,), (3,))
    values = other[0].numpy()
    calls = []

    def fake_merge(count, mean, m2, group=None):
        calls.append(group)
        n_other = values.shape[0]
        other_mean = torch.from_numpy(values.mean(0))
        other_m2 = torch.from_numpy(((values - values.mean(0)) ** 2).sum(0))
        total = count + n_other
        delta = other_mean - mean
        return total, mean + delta * n_other / total, m2 + other_m2 + delta ** 2 * count * n_other / total

    monkeypatch.setattr(batchnorm.distributed, "merge_moments", fake_merge)
    model = nn.Sequential(nn.BatchNorm1d(3, dtype=torch.float64))
    recalibrate(model, local, process_group="group-sentinel")
    mean, var = _pooled([d.numpy() for d in local + other])
    np.testing.assert_allclose(model[0].running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(model[0].running_var.numpy(), var, rtol=1e-12)
    assert calls == ["group-sentinel"]
