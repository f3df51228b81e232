"""Every lab experiment at quick scale: the result's structure, and at least one property that must hold even at
that scale (a large, robust effect, or an identity of the measurement)."""

from __future__ import annotations

import math

import pytest
import torch

from batchnorm.lab import runner
from batchnorm.lab.experiments import EXPERIMENTS, load_experiment
from batchnorm.lab.protocol import VERDICTS, Result

_cache: dict[str, Result] = {}


def quick(experiment: str) -> Result:
    """Run an experiment at quick scale once per test session (one thread, as the lab runs)."""
    if experiment not in _cache:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _cache[experiment], _ = runner.run_one(experiment, "quick", out=None)
        finally:
            torch.set_num_threads(threads)
    return _cache[experiment]


def check_structure(result: Result, experiment: str) -> None:
    module = load_experiment(experiment)
    assert result.experiment == module.ID == experiment and result.title == module.TITLE
    assert result.findings, "an experiment makes at least one finding"
    for f in result.findings:
        assert f.verdict in VERDICTS and f.claim and f.anchor and f.criterion and f.evidence
        if f.verdict != "not run":
            assert any(ch.isdigit() for ch in f.evidence), "the evidence gives numbers"
    assert result.config["seeds"] >= 1 and result.config["scale"] == "quick" and result.versions["torch"]
    for plot in result.plots:
        for line in plot.lines.values():
            assert len(line["x"]) == len(line["y"])
    assert result.numbers, "the key numbers are in result.numbers"


def finite_fractions(values):
    for v in values:
        assert 0.0 <= v <= 1.0


def test_registry_lists_e1_to_e15_with_configs():
    assert list(EXPERIMENTS) == [f"E{i}" for i in range(1, 16)]
    for e in EXPERIMENTS:
        module = load_experiment(e)
        cfg = module.Config()
        assert cfg.data == "digits" and cfg.seeds >= 1
        for overrides in (module.QUICK, module.FULL):
            assert set(overrides) <= set(vars(cfg)), f"{e}: unknown fields in QUICK/FULL"


def test_e1_figure1():
    r = quick("E1")
    check_structure(r, "E1")
    acc = r.numbers["final accuracy"]
    # the paper's Figure 1a at a tiny scale: the BN network is far ahead early in training
    assert acc["with BN"] > acc["without BN"] + 0.3
    assert r.numbers["fraction of checkpoints BN higher"] >= 0.8
    movement = r.numbers["movement"]
    assert all(m > 0 for m in movement.values())
    # Figure 1b/c: with BN the sigmoid input's percentiles move less than without, at the same learning rate
    assert movement["with BN"] < movement["without BN"]
    percentile_plot = r.plots[1].lines
    for step in range(len(percentile_plot["15th percentile"]["y"])):  # percentiles are ordered
        assert (percentile_plot["15th percentile"]["y"][step] <= percentile_plot["50th percentile"]["y"][step]
                <= percentile_plot["85th percentile"]["y"][step])


def test_e2_learning_rate():
    r = quick("E2")
    check_structure(r, "E2")
    acc = r.numbers["final accuracy"]
    finite_fractions(acc.values())
    assert acc["BN x30"] > acc["no BN x30"] + 0.2


def test_e3_initialization():
    r = quick("E3")
    check_structure(r, "E3")
    acc = r.numbers["final accuracy"]
    assert acc["BN, gain 1"] > acc["no BN, gain 1"] + 0.3
    assert acc["BN, gain 0.1"] > 0.5  # scale invariance: tiny weights train with BN


def test_e4_regularization():
    r = quick("E4")
    check_structure(r, "E4")
    train_acc, test_acc = r.numbers["train accuracy"], r.numbers["test accuracy"]
    assert train_acc["plain"] > test_acc["plain"]  # the small training set is overfitted
    assert min(test_acc.values()) > 0.7
    for k in train_acc:
        assert r.numbers["gap"][k] == pytest.approx(train_acc[k] - test_acc[k])


def test_e5_batch_size():
    r = quick("E5")
    check_structure(r, "E5")
    acc = r.numbers["final accuracy"]
    assert acc["BN, batch 32"] > 0.6
    for name, drop in r.numbers["drop"].items():
        assert drop == pytest.approx(acc[f"{name}, batch 32"] - acc[f"{name}, batch 2"])
    assert any(f.claim.startswith("Batch Renorm") for f in r.findings)


def test_e6_ghost_batch():
    r = quick("E6")
    check_structure(r, "E6")
    if r.findings[0].verdict == "not run":
        pytest.fail("ghost BN (virtual_batch_size) has landed; E6 must run")
    acc = list(r.numbers["final accuracy"].values())
    small, large = acc[0], acc[1]
    assert small > large  # a few large-batch steps do not match many small ones
    assert r.numbers["gap"] == pytest.approx(small - large)


def test_e7_non_iid():
    r = quick("E7")
    check_structure(r, "E7")
    acc = r.numbers["final accuracy"]
    assert acc["BN, non-i.i.d."] < acc["BN, i.i.d."] - 0.05


def test_e8_precise_statistics():
    r = quick("E8")
    check_structure(r, "E8")
    n = r.numbers
    assert n["precise, lr 0.2"] >= n["EMA, lr 0.2"] - 0.02  # at worst a tie at this tiny scale
    assert n["error, lr 0.2"] > 0 and n["error, lr 0.02"] > 0


def test_e9_covariate_shift():
    r = quick("E9")
    check_structure(r, "E9")
    assert set(r.numbers["relative ICS"]) == {"no BN", "BN"}
    for name in ("no BN", "BN"):
        assert r.numbers["relative ICS"][name] > 0 and -1 <= r.numbers["cos"][name] <= 1
        assert r.numbers["beta"][name] > 0
    acc = r.numbers["final accuracy"]
    assert acc["BN"] > acc["no BN"] and acc["noisy BN"] > acc["no BN"]


def test_e9_ics_is_zero_for_a_single_layer_and_grows_with_lr():
    from batchnorm.lab.experiments.e09_covariate_shift import internal_covariate_shift
    from batchnorm.lab.models import MLP

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))
    model = MLP(64, (32, 32), activation="relu")
    tiny, _ = internal_covariate_shift(model, x, y, 1e-6)
    large, cos = internal_covariate_shift(model, x, y, 1.0)
    assert tiny < 1e-3 < large and -1 <= cos <= 1


def test_e10_domain_shift():
    r = quick("E10")
    check_structure(r, "E10")
    n = r.numbers
    assert n["BN, target, AdaBN"] > n["BN, target"]
    assert n["BN, source"] > n["BN, target"]  # the shift costs accuracy


def test_e11_transformer():
    r = quick("E11")
    check_structure(r, "E11")
    acc = r.numbers["final accuracy"]
    assert min(acc.values()) > 0.3
    assert "layer norm" in r.findings[0].anchor.lower() or "layer_norm" in r.findings[0].anchor


def test_e12_recurrent():
    r = quick("E12")
    check_structure(r, "E12")
    if r.findings[0].verdict == "not run":
        pytest.fail("BNLSTM/LNLSTM have landed; E12 must run")
    for name, area in r.numbers["area"].items():
        assert 0 < area <= r.numbers["final accuracy"][name] + 0.2
    assert max(r.numbers["final accuracy"].values()) > 0.5


def test_e13_norm_position():
    r = quick("E13")
    check_structure(r, "E13")
    assert set(r.numbers) == {"CNN, before", "CNN, after", "MLP, before", "MLP, after"}
    assert min(r.numbers.values()) > 0.6


def test_e14_transfer():
    r = quick("E14")
    check_structure(r, "E14")
    n = r.numbers
    assert n["BN trainable"] > n["no fine-tuning"]  # labelled target data helps
    assert n["BN recalibrated + frozen"] >= n["BN frozen"]


def test_e15_wall_clock():
    r = quick("E15")
    check_structure(r, "E15")
    ms = r.numbers["ms per step"]
    assert all(0 < v < 1e4 for v in ms.values())
    assert r.numbers["ratio ours/torch"] == pytest.approx(ms["BN (ours)"] / ms["BN (torch)"])
    assert r.numbers["final accuracy"]["BN (ours)"] > 0.5
    assert math.isfinite(r.numbers["seconds to target"]["BN (ours)"]) or r.findings[0].verdict != "holds"
