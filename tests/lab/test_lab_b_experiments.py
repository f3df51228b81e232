"""E5, E6, E7, E9, E10 and E14 at the quick scale: the result's structure (tuned arms, effects with intervals,
verdicts computed from them), and properties of each design that must hold at any scale."""

from __future__ import annotations

import math

import pytest
import torch

from batchnorm.lab import runner
from batchnorm.lab.data import load
from batchnorm.lab.experiments import load_experiment
from batchnorm.lab.protocol import VERDICTS, Result, judge
from helpers.lab_quick import quick


@pytest.fixture(autouse=True)
def restore_threads():
    """Tests here set one torch thread (as the lab's workers run); the next tests get the count back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def check_structure(result: Result, experiment: str) -> None:
    module = load_experiment(experiment)
    cfg = runner.config_for(module, "quick")
    assert result.experiment == module.ID == experiment and result.title == module.TITLE
    assert result.findings and result.arms and result.notes
    for finding in result.findings:
        assert finding.verdict in VERDICTS and finding.claim and finding.anchor and finding.criterion
        assert "arXiv" in finding.anchor, "anchors name their paper's arXiv id"
        if finding.verdict == "not run":
            continue
        effect = finding.effect
        lo, hi = effect.ci95
        assert lo <= effect.estimate <= hi and math.isfinite(effect.estimate)
        assert finding.verdict == judge(effect) or (finding.verdict == "partly holds" and finding.weaker)
        assert finding.seeds == list(range(cfg.seed_base, cfg.seed_base + cfg.seeds))
        assert "nan" not in finding.evidence and "inf" not in finding.evidence.replace("info", "")
    for arm in result.arms:
        grid = arm["lr_grid"]
        assert len(grid) >= 4 and max(grid) / min(grid) >= 30 and arm["lr_chosen"] in grid
        assert len(arm["val_accuracy"]) == len(grid)
        assert arm["lr_chosen"] == grid[max(range(len(grid)), key=lambda i: (arm["val_accuracy"][i], -i))]
        assert all(0 <= a <= 1 for a in arm["test_accuracy"])
    for plot in result.plots:
        for line in plot.lines.values():
            assert len(line["x"]) == len(line["y"])


def test_e5_structure_and_arms():
    r = quick("E5")
    check_structure(r, "E5")
    names = [a["name"] for a in r.arms]
    assert {"BN, batch 32", "BN, batch 32, norm batch 4", "GN, batch 32", "LN, batch 32", "IN, batch 32",
            "BN, batch 8", "GN, batch 8", "Batch Renorm, batch 8"} <= set(names) or len(names) == 8
    acc = r.numbers["test accuracy"]
    assert any(name.startswith("IN, ") for name in acc), "Instance Norm is one of the alternatives"


def test_e5_ghost_bn_with_the_whole_batch_is_plain_bn():
    """Part (a) varies only the normalization batch: a ghost batch as large as the SGD batch is plain BN."""
    from batchnorm.lab.experiments._cnn import cnn_job

    torch.set_num_threads(1)
    common = dict(lr=0.05, seed=3, data="digits", batch_size=16, steps=30)
    plain = cnn_job(norm="batch", **common)
    ghost = cnn_job(norm="ghost", virtual_batch_size=16, **common)
    smaller = cnn_job(norm="ghost", virtual_batch_size=2, **common)
    n_val = len(load("digits").y_val)
    assert abs(plain["val_accuracy"] - ghost["val_accuracy"]) <= 1.5 / n_val
    assert smaller["val_accuracy"] != plain["val_accuracy"]  # and a small one is not


def test_e6_has_the_more_steps_control_and_train_accuracy():
    r = quick("E6")
    check_structure(r, "E6")
    test, train = r.numbers["test accuracy"], r.numbers["train accuracy"]
    assert set(test) == set(train) and len(test) == 5
    assert any("steps" in k and "ghost" not in k for k in test), "the control: more steps without ghost BN"
    assert all(0 <= v <= 1 for v in train.values())
    steps = {row[0]: int(row[-1].split(", ")[1].split()[0]) for row in r.tables[0].rows}
    large = next(k for k in steps if k.startswith("large (batch"))
    control = next(k for k in steps if "steps" in k and "ghost" not in k)
    assert steps[control] == r.config.get("regime_factor", 2) * steps[large]


def test_e7_sampler_is_class_balanced_and_groups_by_ink():
    from batchnorm.lab.experiments._cnn import ink_clustered_batches

    data = load("digits")
    ink = data.x_train.reshape(len(data.x_train), -1).sum(1)
    generator = torch.Generator().manual_seed(0)
    batches = ink_clustered_batches(data.x_train, data.y_train, 40, 4, generator)
    means = []
    for _ in range(40):
        index = next(batches)
        assert torch.bincount(data.y_train[index], minlength=10).tolist() == [4] * 10
        means.append(float(ink[index].mean()))
    iid = [float(ink[torch.randperm(len(ink), generator=generator)[:40]].mean()) for _ in range(40)]
    # batches from one ink bin have means far more spread than i.i.d. batches
    assert torch.tensor(means).std() > 3 * torch.tensor(iid).std()
    with pytest.raises(ValueError, match="batch_size must be a multiple of the number of classes"):
        next(ink_clustered_batches(data.x_train, data.y_train, 32, 4, generator))


def test_e7_structure_and_controls():
    r = quick("E7")
    check_structure(r, "E7")
    acc = r.numbers["test accuracy"]
    for label in ("BN", "GN", "LN"):
        assert f"{label}, i.i.d." in acc and f"{label}, grouped by ink" in acc
    assert r.numbers["control"] in ("GN", "LN")


def test_e9_matched_loss_measurement():
    from batchnorm.lab.experiments.e09_covariate_shift import measure_job

    torch.set_num_threads(1)
    out = measure_job(lr=0.3, seed=0, data="digits", norm="batch", steps=120, batch_size=64, hidden=(32, 32, 32),
                      loss_levels=(2.0, 1.0, 1e-6), probe_lr=0.1, step_multipliers=(0.5, 1.0), probe_size=64)
    steps = out["step"]
    assert steps[0] < steps[1] and math.isnan(steps[2])  # levels in order; the unreachable one stays NaN
    for i in range(2):
        assert out["ics"][i] > 0 and -1 <= out["cos"][i] <= 1 and out["beta"][i] > 0 and out["range"][i] >= 0
    assert math.isnan(out["ics"][2])


def test_e9_structure():
    r = quick("E9")
    check_structure(r, "E9")
    assert r.numbers["matched levels"], "the quick scale reaches at least one loss level in both networks"
    assert r.numbers["ICS ratio"] > 0 and r.numbers["beta ratio"] > 0
    noisy = [f for f in r.findings if "about as well" in f.claim]
    assert len(noisy) == 1 and noisy[0].effect.direction == "within" and noisy[0].effect.threshold == 3.0


def test_e10_tuning_never_sees_the_target():
    """The rate is chosen on source validation: it is the same whatever the target is."""
    from batchnorm.lab.experiments.e10_domain_shift import adapt_job

    torch.set_num_threads(1)
    common = dict(lr=0.1, seed=1, source="digits", norm="batch", standardize=False, steps=40, batch_size=32,
                  channels=(8, 16), adapt_batch=64)
    real = adapt_job(target="mnist5k-8x8", **common)
    other = adapt_job(target="digits", **common)
    assert real["val_accuracy"] == other["val_accuracy"]
    assert other["real AdaBN"] == pytest.approx(other["real precise"], abs=0.01)  # same domain: nothing to adapt
    assert real["test_accuracy"] == real["real"]


def test_e10_structure():
    r = quick("E10")
    check_structure(r, "E10")
    assert set(r.numbers) == {"real", "synthetic"}
    claims = " ".join(f.claim for f in r.findings)
    assert "synthetic" in claims and "real" in claims and "Group Norm" in claims and "standardization" in claims


def test_e14_modes_share_the_pretrained_network_and_subset():
    r = quick("E14")
    check_structure(r, "E14")
    assert set(r.numbers["test accuracy"]) == {"BN trainable", "BN frozen", "BN recalibrated + frozen"}
    assert 0 < r.numbers["before"] <= 1 and 0 < r.numbers["before recalibrated"] <= 1
    from batchnorm.lab.experiments.e14_transfer import finetune_job

    torch.set_num_threads(1)
    common = dict(lr=0.01, seed=0, source="digits", target="mnist5k-8x8", pretrain_lr=0.1, pretrain_steps=30,
                  finetune_steps=5, target_size=30, batch_size=10, channels=(8, 16))
    runs = [finetune_job(mode=mode, **common) for mode in ("trainable", "frozen", "recalibrated")]
    assert len({run["before"] for run in runs}) == 1 and len({run["before recalibrated"] for run in runs}) == 1


def test_real_shift_direction_follows_the_data_choice():
    from batchnorm.lab.experiments._cnn import domain_pair

    assert domain_pair("digits") == ("digits", "mnist5k-8x8")
    assert domain_pair("mnist5k") == domain_pair("mnist5k-8x8") == ("mnist5k-8x8", "digits")
    source, target = (load(name) for name in domain_pair("mnist5k"))
    assert source.sample_shape == target.sample_shape == (1, 8, 8)
