"""Lab experiments E11, E12, E15-E19 at the quick scale: the result's structure (findings with effects and
intervals, tuned arms) and one property of each that must hold; plus the deep models they use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batchnorm.lab.experiments import EXPERIMENTS, load_experiment
from batchnorm.lab.models_deep import DeepMLP, ResidualMLP
from batchnorm.lab.protocol import VERDICTS, Result, judge
from helpers.lab_quick import quick


def check_structure(result: Result, experiment: str, tuned: bool = True) -> None:
    module = load_experiment(experiment)
    assert result.experiment == module.ID == experiment and result.title == module.TITLE
    assert result.findings
    for f in result.findings:
        assert f.verdict in VERDICTS and f.verdict != "not run"
        assert f.claim and f.anchor and f.criterion and any(ch.isdigit() for ch in f.evidence)
        assert f.verdict == judge(f.effect) or (f.verdict == "partly holds" and judge(f.weaker) == "holds")
        lo, hi = f.effect.ci95
        assert lo <= f.effect.estimate <= hi and f.seeds == list(range(result.config["seeds"]))
        assert "e+" not in f.evidence and "nan" not in f.evidence.lower() and "inf" not in f.evidence
    if tuned:
        assert result.arms
        for arm in result.arms:
            grid = arm["lr_grid"]
            assert len(grid) >= 4 and max(grid) / min(grid) >= 30 and arm["lr_chosen"] in grid
            assert len(arm["val_accuracy"]) == len(grid) and len(arm["test_accuracy"]) == result.config["seeds"]
            scores = [v if math.isfinite(v) else -1.0 for v in arm["val_accuracy"]]
            assert scores[grid.index(arm["lr_chosen"])] == max(scores), "the rate with the best validation score"
    for plot in result.plots:
        for line in plot.lines.values():
            assert len(line["x"]) == len(line["y"])
    assert result.numbers


def test_registry_has_e16_to_e19_after_e1_to_e15():
    assert list(EXPERIMENTS)[15:] == ["E16", "E17", "E18", "E19"]
    for e in ("E11", "E12", "E15", "E16", "E17", "E18", "E19"):
        module = load_experiment(e)
        cfg = module.Config()
        assert cfg.data == "digits" and cfg.seeds >= 5 and cfg.seed_base == 0
        assert set(module.QUICK) <= set(vars(cfg)) and set(module.FULL) <= set(vars(cfg))


def test_e11_transformer_effect_is_the_paired_difference():
    r = quick("E11")
    check_structure(r, "E11")
    arms = {a["name"]: a for a in r.arms}
    assert set(arms) == {"LN (BERT's)", "BN", "no norm"}
    differences = 100 * (np.array(arms["LN (BERT's)"]["test_accuracy"]) - np.array(arms["BN"]["test_accuracy"]))
    assert r.findings[0].effect.estimate == pytest.approx(differences.mean())
    assert r.findings[0].effect.direction == "below"


def test_e12_reads_one_pixel_per_step():
    from batchnorm.lab.data import load
    from batchnorm.lab.experiments.e12_recurrent import pixel_sequences
    from batchnorm.lab.models import RecurrentClassifier

    data = pixel_sequences("digits")
    assert data.x_train.shape[1:] == (1, 64) and data.x_test.shape[1:] == (1, 64)
    assert torch.equal(data.x_val[3].reshape(8, 8), load("digits").x_val[3, 0])
    assert RecurrentClassifier(1, 8, kind="bnlstm", max_length=64)(data.x_val[:5]).shape == (5, 10)
    r = quick("E12")
    check_structure(r, "E12")
    assert {a["name"] for a in r.arms} == {"LSTM", "BN-LSTM", "LN-LSTM"}
    assert "64 steps" in r.notes[0]


def test_e15_our_bn_trains_like_torch_bn():
    from batchnorm.lab.experiments.e15_wall_clock import train_cnn

    kwargs = dict(data="digits", lr=0.1, seed=3, steps=25, batch_size=32, eval_every=5, channels=[8, 16])
    ours, theirs = train_cnn(norm="batch", **kwargs), train_cnn(norm="torch_batch", **kwargs)
    assert abs(ours["test_accuracy"] - theirs["test_accuracy"]) <= 0.02
    assert np.allclose(ours["val_curve"], theirs["val_curve"], atol=0.02)
    r = quick("E15")
    check_structure(r, "E15")
    assert 0 < r.numbers["target"] <= 1
    assert all(0 < s <= r.config["steps"] for s in r.numbers["steps to target"].values()), "every run reaches it"


def test_e16_bn_without_shortcuts_has_the_largest_gradient_ratio():
    r = quick("E16")
    check_structure(r, "E16", tuned=False)
    deepest = str(max(r.config["depths"]))
    ratio = {arm: values[deepest] for arm, values in r.numbers["log10 ratio"].items()}
    assert ratio["BN, no shortcuts"] > ratio["no BN (He init)"] + 0.5
    assert ratio["BN, no shortcuts"] > ratio["BN + shortcuts"]


def test_deep_mlp_gradient_norms_one_per_layer():
    from batchnorm.lab.experiments.e16_gradient_explosion import gradient_norms

    out = gradient_norms("digits", depth=7, width=16, norm="batch", residual=True, batch_size=32, seed=1)
    assert len(out["norms"]) == 7 and all(n > 0 for n in out["norms"])
    assert out["log10_ratio"] == pytest.approx(math.log10(out["norms"][0] / out["norms"][-1]))
    with pytest.raises(ValueError, match="depth must be >= 1"):
        DeepMLP(64, depth=0)


def test_e17_weight_decay_mechanism():
    from batchnorm.lab.experiments.e17_weight_decay import train_bn_mlp

    common = dict(data="digits", lr=0.1, seed=2, steps=30, batch_size=32, hidden=[16, 16], weight_decay=5e-2,
                  record_every=10)
    fixed = train_bn_mlp(treatment="project", **common)
    assert fixed["norm_growth"] == pytest.approx(1.0, abs=1e-5)
    assert fixed["relative_effective_lr"] == pytest.approx([1.0] * len(fixed["record_steps"]), abs=1e-4)
    free, decayed = train_bn_mlp(treatment="none", **common), train_bn_mlp(treatment="decay", **common)
    assert free["norm_growth"] > 1.0 and decayed["norm_growth"] < free["norm_growth"]
    assert decayed["effective_lr_end"] > free["effective_lr_end"]
    r = quick("E17")
    check_structure(r, "E17")
    assert r.numbers["output change"] < 1e-3 and r.numbers["norm growth"] > 1.0


def test_e18_single_class_batches_break_train_mode():
    r = quick("E18")
    check_structure(r, "E18")
    assert r.numbers["mixed class"] > r.numbers["single class"] + 0.1
    assert set(r.numbers["train mode"]) == {"1", "8", "599"}
    same = [f for f in r.findings if "the same accuracy" in f.claim]
    assert len(same) == 1 and same[0].effect.direction == "within", "'the same' is a two-sided claim"


def test_claims_of_sameness_are_judged_two_sided():
    r = quick("E17")
    does_too = [f for f in r.findings if "does too" in f.claim]
    assert len(does_too) == 1 and does_too[0].effect.direction == "within"
    assert "inside (-1, +1)" in does_too[0].criterion


def test_e19_fixup_and_skipinit_start_as_identity_blocks():
    x = torch.randn(16, 32)
    for scheme in ("fixup", "skipinit"):
        model = ResidualMLP(32, blocks=5, width=32, scheme=scheme)
        assert torch.equal(model.blocks(x), x)
    plain = ResidualMLP(32, blocks=12, width=32, scheme="none")
    assert plain.blocks(x).std() > 20 * x.std(), "without normalization or rescaling the signal grows with depth"
    with pytest.raises(ValueError, match="scheme must be one of"):
        ResidualMLP(32, blocks=2, scheme="fix-up")
    r = quick("E19")
    check_structure(r, "E19")
    assert len(r.arms) == 4 * len(r.config["blocks"])
