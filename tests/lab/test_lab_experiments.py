"""The experiment registry, and the measurement E9 relies on. Each experiment's quick-scale tests live in
tests/lab/."""

from __future__ import annotations

import torch

from batchnorm.lab.experiments import EXPERIMENTS, load_experiment


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
