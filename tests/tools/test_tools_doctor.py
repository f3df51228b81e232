"""Tests of batchnorm.tools.doctor: nothing on a clean model, each planted problem found, the model untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import batchnorm.nn as bnn
from batchnorm.tools import doctor, recalibrate


def make_clean():
    """conv-BN-ReLU twice, pooled, Linear-BN1d-ReLU, Linear: the paper's placement, no biases before BN."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), bnn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.Linear(16, 5))


def make_data(batch_size=32, batches=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, 3, 6, 6, generator=generator) * 2 + 1,
             torch.randint(0, 5, (batch_size,), generator=generator)) for _ in range(batches)]


def prepared(model, data):
    """Running statistics that fit the data (as after a good training run), in eval mode."""
    torch.manual_seed(0)
    model, _ = recalibrate(model, data)
    return model.eval()


def test_clean_model_has_no_findings():
    torch.manual_seed(1)
    data = make_data()
    model = prepared(make_clean(), data)
    report = doctor(model, data)
    assert report.findings == [], str(report)
    assert [name for name, _ in report.layers] == ["1", "4", "9"]
    assert report.measured["(model)"]["output_mismatch"] < 0.3
    assert report.measured["1"]["values_per_channel"] == 32 * 6 * 6 and report.measured["9"]["batch"] == 32
    assert report.worst is None and "ok" in report.table()


def _momentum(model):
    model[1].momentum = 0.99


def _dead(model):
    with torch.no_grad():
        model[4].weight[[2, 5]] = 0.0


def _bias(model):
    model[3] = nn.Conv2d(8, 8, 3, padding=1, bias=True)


def _after_activation(model):
    model[0] = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())


def _no_running_statistics(model):
    model[9] = nn.BatchNorm1d(16, track_running_stats=False)


PLANTED_BEFORE_RECALIBRATION = {
    "momentum-convention": (_momentum, "1", "warning"),
    "dead-channels": (_dead, "4", "warning"),
    "redundant-bias": (_bias, "4", "info"),
    "after-activation": (_after_activation, "1", "info"),
    "batch-statistics-in-eval": (_no_running_statistics, "9", "info"),
}


@pytest.mark.parametrize("check", list(PLANTED_BEFORE_RECALIBRATION))
def test_static_problem_is_found_on_its_layer_only(check):
    plant, layer, severity = PLANTED_BEFORE_RECALIBRATION[check]
    torch.manual_seed(2)
    data = make_data(seed=3)
    model = make_clean()
    plant(model)
    model = prepared(model, data)
    report = doctor(model, data)
    found = [f for f in report.findings if f.check == check]
    assert [(f.layer, f.severity) for f in found] == [(layer, severity)], str(report)
    assert found[0].fix
    # nothing else that the planted change does not explain
    others = {f.check for f in report.findings} - {check}
    assert not others, str(report)
    assert (layer, check) in doctor(model).checks()          # these checks need no data


def test_stale_statistics_and_train_eval_mismatch_are_found():
    torch.manual_seed(4)
    data = make_data(seed=5)
    model = prepared(make_clean(), data)
    with torch.no_grad():
        std = model[4].running_var.sqrt()
        model[4].running_mean.add_(2.0 * std)            # 2 standard deviations off in every channel
        fitted_var = model[9].running_var.double().clone()
        model[9].running_var.mul_(30.0)
    report = doctor(model, data)
    checks = report.checks()
    assert ("4", "stale-statistics") in checks and ("9", "stale-statistics") in checks
    assert ("1", "stale-statistics") not in checks
    assert report.measured["4"]["shift_std"] == pytest.approx(2.0, rel=1e-3)
    eps = model[9].eps                                     # the ratio compares var + eps
    expected_ratio = float(((30.0 * fitted_var + eps) / (fitted_var + eps)).max())
    assert report.measured["9"]["var_ratio"] == pytest.approx(expected_ratio, rel=1e-5)
    assert ("(model)", "train-eval-mismatch") in checks
    # the accuracies in the report are those of the two modes, computed here independently
    train_twin = copy.deepcopy(model)
    for m in train_twin.modules():
        if isinstance(m, nn.BatchNorm2d) or isinstance(m, nn.BatchNorm1d):
            m.train()
    with torch.no_grad():
        eval_correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data)
        train_correct = sum(int((train_twin(x).argmax(1) == y).sum()) for x, y in data)
    assert report.measured["(model)"]["eval_accuracy"] == eval_correct / (32 * len(data))
    assert report.measured["(model)"]["train_accuracy"] == train_correct / (32 * len(data))


@pytest.mark.parametrize("batch_size, severity", [(4, "warning"), (2, "error")])
def test_small_effective_batch_is_found(batch_size, severity):
    torch.manual_seed(6)
    data = make_data()
    model = prepared(make_clean(), data)
    small = [(x[i:i + batch_size], y[i:i + batch_size]) for x, y in data[:1] for i in range(0, 16, batch_size)]
    report = doctor(model, small)
    found = {f.layer: f for f in report.findings if f.check == "small-batch"}
    assert found["9"].severity == severity                    # BatchNorm1d: N values per channel
    assert found["1"].severity == "warning"                   # N < 8 even with 64 positions per sample
    assert report.measured["9"]["values_per_channel"] == batch_size


def test_doctor_does_not_modify_the_model_and_validates():
    data = make_data(batches=2)
    model = make_clean()
    model.train()
    model[4].momentum = 0.9
    state = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    doctor(model, data)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == flags
    with pytest.raises(TypeError, match="doctor expected model to be a torch.nn.Module"):
        doctor(None)
    with pytest.raises(ValueError, match="data that yielded no batches"):
        doctor(model, [])


def test_nonfinite_and_degenerate_buffers_are_errors():
    """A NaN running_mean and an all-zero running_var (eval divides by sqrt(eps)) are errors, with data or not."""
    data = make_data()
    model = prepared(make_clean(), data)
    with torch.no_grad():
        model[1].running_mean[3] = float("nan")
        model[4].running_var[:] = 0.0
        model[9].running_var[[2, 7]] = -1.0
    for report in (doctor(model), doctor(model, data)):
        found = {(f.layer, f.check): f for f in report.findings}
        assert found[("1", "nonfinite-statistics")].severity == "error"
        assert "1 of 8 channel(s)" in found[("1", "nonfinite-statistics")].message
        assert "8 of 8 channel(s) have running_var <= 0" in found[("4", "degenerate-variance")].message
        assert "2 of 16 channel(s)" in found[("9", "degenerate-variance")].message and "channels 2, 7" in \
            found[("9", "degenerate-variance")].message
        assert report.worst == "error"
        assert not any(f.layer == "1" and f.check == "stale-statistics" for f in report.findings)


def test_dropout_before_batchnorm_is_flagged_and_after_it_is_not():
    """Dropout -> Conv -> BN (through a conv and an activation) shifts the variance (Li et al. 2019); dropout after
    the last batch norm, before the classifier, does not."""
    before = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                           nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                           nn.Linear(8 * 2 * 2, 5))
    after = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Dropout(0.3), nn.Linear(8 * 4 * 4, 5))
    report = doctor(before)
    flagged = [f for f in report.findings if f.check == "dropout-before-batchnorm"]
    assert [(f.layer, f.severity) for f in flagged] == [("5", "warning")] and "dropout 3" in flagged[0].message
    assert not [f for f in doctor(after).findings if f.check == "dropout-before-batchnorm"]


def test_nonfinite_input_batches_are_reported_and_left_out():
    data = make_data(batches=4)
    model = prepared(make_clean(), data)
    poisoned = [(x.clone(), y) for x, y in data]
    poisoned[2][0][5, 1, 2, 2] = float("inf")
    report = doctor(model, poisoned)
    found = [f for f in report.findings if f.check == "nonfinite-input"]
    assert [(f.layer, f.severity) for f in found] == [("1", "error")]
    assert "1 of 4 batch(es)" in found[0].message and "batch 2" in found[0].message
    assert not any(f.check == "stale-statistics" for f in report.findings)    # the other 3 batches fit
