"""E1, E2, E3, E4, E8 and E13 at the quick scale: the result's structure (findings with effects and seeds, tuned
arms, plots with per-seed points) and one property per experiment that must hold even at that scale."""

from __future__ import annotations

import math

import numpy as np
import pytest

from batchnorm.lab.experiments import load_experiment
from batchnorm.lab.protocol import VERDICTS, Result, judge
from helpers.lab_quick import quick


def check_structure(result: Result, experiment: str) -> None:
    module = load_experiment(experiment)
    assert result.experiment == module.ID == experiment and result.title == module.TITLE
    assert result.findings and result.config["scale"] == "quick"
    count = result.config["seeds"]
    for f in result.findings:
        assert f.verdict in VERDICTS and f.verdict != "not run" and f.claim and f.anchor and f.criterion
        assert "arXiv" in f.anchor, "anchors name the paper's arXiv id"
        assert f.effect is not None and f.seeds == list(range(result.config["seed_base"], result.config["seed_base"]
                                                              + count))
        lo, hi = f.effect.ci95
        assert lo <= f.effect.estimate <= hi and math.isfinite(f.effect.estimate)
        if f.weaker is None or judge(f.effect) == "holds":
            assert f.verdict == judge(f.effect), "the verdict comes from the interval"
        assert "inf" not in f.evidence and "nan" not in f.evidence.lower()
    assert result.arms, "every experiment reports its tuned arms"
    for arm in result.arms:
        grid = arm["lr_grid"]
        assert len(grid) >= 4 and max(grid) / min(grid) >= 30 and arm["lr_chosen"] in grid
        assert len(arm["val_accuracy"]) == len(grid) and len(arm["test_accuracy"]) == count
    for plot in result.plots:
        for line in plot.lines.values():
            assert len(line["x"]) == len(line["y"])
            if "points" in line:
                assert len(line["points"]) == len(line["x"])
    assert result.numbers


def test_e1_bn_ahead_and_percentiles_steadier():
    r = quick("E1")
    check_structure(r, "E1")
    acc = r.numbers["final accuracy"]
    # Figure 1a at a tiny scale: after 200 steps of batch 60 the BN network is far ahead, at its tuned rate
    assert acc["with BN"] > acc["without BN"] + 0.3 and r.numbers["smallest lead"] > 0
    assert r.numbers["movement ratio"] < 1  # Figure 1b/c: the percentiles move less with BN
    lines = r.plots[1].lines
    for step in range(len(lines["15th percentile"]["y"])):  # percentiles are ordered at every checkpoint
        assert (lines["15th percentile"]["y"][step] <= lines["50th percentile"]["y"][step]
                <= lines["85th percentile"]["y"][step])


def test_e2_bn_tolerates_x30_and_the_speedup_is_a_ratio_of_reached_targets():
    r = quick("E2")
    check_structure(r, "E2")
    acc = r.numbers["final accuracy"]
    assert acc["BN x30"] > acc["no BN x30"] + 0.2
    steps = r.numbers["steps to target"]
    assert steps["BN"] < steps["no BN"]
    speedup = r.findings[1].effect.estimate
    assert speedup == pytest.approx(r.numbers["speedup"]) and speedup > 1
    assert r.numbers["fastest rate"]["BN"] in r.arms[1]["lr_grid"]


def test_e3_bn_trains_at_gain_1_where_the_plain_network_saturates():
    r = quick("E3")
    check_structure(r, "E3")
    acc = r.numbers["final accuracy"]
    assert acc["BN, gain 1"] > acc["no BN, gain 1"] + 0.3
    assert r.numbers["spread"]["BN"] < r.numbers["spread"]["no BN"]
    assert len(r.arms) == 2 * len(r.config["gains"]), "every (network, gain) is tuned"


def test_e4_train_accuracy_bounds_test_accuracy():
    r = quick("E4")
    check_structure(r, "E4")
    train, test = r.numbers["train accuracy"], r.numbers["test accuracy"]
    assert set(train) == {"plain", "dropout", "BN", "BN + dropout"}
    assert train["BN"] > 0.9 and all(train[k] >= test[k] - 0.02 for k in train)


def test_e8_precise_statistics_beat_the_ema_at_the_largest_rate():
    r = quick("E8")
    check_structure(r, "E8")
    assert r.numbers["judged lr"] in r.config["lr_grid"]
    assert r.numbers["precise - EMA"] > 0


def test_e13_rates_are_each_arms_validation_argmax():
    r = quick("E13")
    check_structure(r, "E13")
    for arm in r.arms:
        assert arm["lr_chosen"] == arm["lr_grid"][int(np.nanargmax(arm["val_accuracy"]))]
    assert r.numbers["MLP"]["before"] > 85 and r.numbers["MLP"]["after"] > 85
