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


def test_registry_lists_e1_to_e19_with_configs():
    assert list(EXPERIMENTS) == [f"E{i}" for i in range(1, 20)]
    for e in EXPERIMENTS:
        module = load_experiment(e)
        cfg = module.Config()
        assert cfg.data == "digits" and cfg.seeds >= 1
        for overrides in (module.QUICK, module.FULL):
            assert set(overrides) <= set(vars(cfg)), f"{e}: unknown fields in QUICK/FULL"


def test_e9_ics_is_zero_for_a_single_layer_and_grows_with_lr():
    from batchnorm.lab.experiments.e09_covariate_shift import internal_covariate_shift
    from batchnorm.lab.models import MLP

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))
    model = MLP(64, (32, 32), activation="relu")
    tiny, _ = internal_covariate_shift(model, x, y, 1e-6)
    large, cos = internal_covariate_shift(model, x, y, 1.0)
    assert tiny < 1e-3 < large and -1 <= cos <= 1
