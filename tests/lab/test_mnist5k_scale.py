"""The lab's per-dataset settings (`batchnorm.lab.scales`): mnist5k gets its own CNN, budgets and E12 input, the
digits settings stay as they are; and the E12 row-by-row reading that lets per-time-step and per-sample norms
train on 28x28 MNIST."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from batchnorm.lab import runner, scales
from batchnorm.lab.experiments import EXPERIMENTS, load_experiment
from batchnorm.lab.experiments._cnn import cnn_job
from batchnorm.lab.models import RecurrentClassifier
from helpers.lab_quick import quick


def test_every_table_entry_names_settings_of_its_experiment():
    for data, table in scales.DATA_SCALES.items():
        for experiment, settings in table.items():
            assert experiment in EXPERIMENTS
            fields = {f.name for f in dataclasses.fields(load_experiment(experiment).Config)}
            assert set(settings) <= fields, (data, experiment, set(settings) - fields)


def test_config_for_applies_the_dataset_settings_under_the_scale_and_the_command_line():
    e5 = load_experiment("E5")
    digits = runner.config_for(e5)
    assert digits.channels == (16, 32) and digits.epochs == 8.0  # digits: the Config defaults, unchanged
    mnist = runner.config_for(e5, data="mnist5k")
    assert mnist.channels == scales.CNN_28X28 and mnist.epochs == 3.0
    quick_mnist = runner.config_for(e5, "quick", data="mnist5k")
    assert quick_mnist.channels == scales.CNN_28X28 and quick_mnist.epochs == e5.QUICK["epochs"]  # model only
    full_mnist = runner.config_for(e5, "full", data="mnist5k")
    assert full_mnist.epochs == e5.FULL["epochs"] and full_mnist.channels == scales.CNN_28X28
    assert runner.config_for(load_experiment("E12"), data="mnist5k").sequence == "rows"
    assert runner.config_for(load_experiment("E12")).sequence == "pixels"  # the 64-step digits setting
    # E10 and E14 run on the 8x8 digit-domain pair whatever --data says: no 28x28 model for them
    assert runner.config_for(load_experiment("E10"), data="mnist5k").channels == (16, 32)
    # the settings are part of the config, so of the cache key
    assert runner.cache_key(e5, mnist) != runner.cache_key(e5, dataclasses.replace(mnist, channels=(16, 32)))


def test_the_28x28_cnn_learns_mnist5k_where_the_digits_cnn_does_not():
    """The reason for the table's CNN: two layers see a 5x5 patch of a 28x28 digit before global pooling."""
    def accuracy(channels) -> list[float]:
        return [cnn_job(lr=0.1, seed=seed, data="mnist5k", norm="batch", batch_size=32, steps=80,
                        channels=channels)["val_accuracy"] for seed in (0, 1)]

    small, deep = accuracy((16, 32)), accuracy(scales.CNN_28X28)
    assert min(deep) > max(small) + 0.15, (small, deep)


def test_e12_rows_are_28_steps_of_centred_pixels_with_one_blank_step():
    from batchnorm.lab.experiments.e12_recurrent import blank_steps, sequence_shape, sequences

    assert sequence_shape("mnist5k", "rows") == (28, 28) and sequence_shape("mnist5k", "pixels") == (784, 1)
    assert sequence_shape("digits", "pixels") == (64, 1)
    rows = sequences("mnist5k", "rows")
    assert rows.x_train.shape[1:] == (1, 28, 28)
    assert float(rows.x_train.mean(0).abs().max()) < 1e-5  # every pixel centred over the training set
    assert blank_steps("mnist5k", "pixels") > 20  # MNIST's blank top: the BN-LSTM's zero-variance steps
    assert blank_steps("mnist5k", "rows") <= 2
    with pytest.raises(ValueError, match="sequence must be one of pixels, rows"):
        sequences("digits", "columns")


@pytest.mark.parametrize("kind", ["lnlstm", "bnlstm"])
def test_normalized_lstms_have_finite_gradients_on_mnist_rows(kind):
    from batchnorm.lab.experiments.e12_recurrent import sequences

    from batchnorm.lab.data import load

    def largest_gradient(x: torch.Tensor, y: torch.Tensor) -> float:
        torch.manual_seed(0)
        model = RecurrentClassifier(28, 16, kind=kind, max_length=28)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        return max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)

    data = sequences("mnist5k", "rows")
    # one row blank in every image: at most one amplification by 1/sqrt(eps) ~ 316
    assert largest_gradient(data.x_train[:64], data.y_train[:64]) < 1e5
    if kind == "lnlstm":  # uncentred, each image's own blank top rows compound it (the run diverges)
        raw = load("mnist5k")
        assert largest_gradient(raw.x_train[:64], raw.y_train[:64]) > 1e10


def test_e12_on_mnist5k_reads_rows_and_no_run_diverges():
    result, _ = runner.run_one("E12", "quick", data="mnist5k", jobs=1)
    assert {a["name"] for a in result.arms} == {"LSTM", "BN-LSTM", "LN-LSTM"}
    assert "one image row per time step (28 steps of 28 values" in result.notes[0]
    assert "diverged" not in " ".join(f.evidence for f in result.findings)
    assert any("Why rows here" in note for note in result.notes)
    assert quick("E12").config["sequence"] == "pixels"
