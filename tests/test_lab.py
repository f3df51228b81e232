"""Tests of the lab's framework: data and readers, models and norm choices, protocol statistics and verdicts,
training loop, progress bar, runner cache/resume, report and CLI."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from batchnorm.lab import data as lab_data
from batchnorm.lab import models, progress, protocol, runner, train
from batchnorm.lab.report import write_report


# ----------------------------------------------------------------------------------------------------- data
def test_digits_split_shapes_and_determinism():
    a, b = lab_data.load("digits"), lab_data.load("digits")
    assert a.x_train.shape == (1198, 1, 8, 8) and a.x_test.shape == (599, 1, 8, 8)
    assert a.sample_shape == (1, 8, 8) and a.num_inputs == 64 and a.num_classes == 10
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert set(a.y_train.tolist()) == set(range(10))
    # oracle: sklearn's raw data, /16; every test image is one of the raw images
    from sklearn.datasets import load_digits
    raw = load_digits().data / 16.0
    rows = {tuple(r) for r in np.round(raw, 6)}
    assert all(tuple(r) in rows for r in np.round(a.x_test.reshape(-1, 64).numpy().astype(float), 6)[:50])


def test_mnist1d_generated_offline_and_shifted_differs():
    d = lab_data.load("mnist1d")
    assert d.x_train.shape == (4000, 1, 40) and d.x_test.shape == (1000, 1, 40)
    state = np.random.get_state()[1].copy()
    s = lab_data.shifted(d)
    assert np.array_equal(np.random.get_state()[1], state), "make_dataset must not change NumPy's global state"
    assert s.x_train.shape == d.x_train.shape and not torch.allclose(s.x_train, d.x_train)
    assert abs(float(d.x_train.mean())) < 0.1  # make_dataset centres the data


def test_shifted_digits_is_the_documented_transform():
    d = lab_data.load("digits")
    s = lab_data.shifted(d, seed=3)
    residual = s.x_test - (lab_data.DIGITS_SHIFT["contrast"] * d.x_test + lab_data.DIGITS_SHIFT["brightness"])
    assert abs(float(residual.std()) - lab_data.DIGITS_SHIFT["noise"]) < 0.01
    assert abs(float(residual.mean())) < 0.01
    assert torch.equal(s.y_test, d.y_test)


def test_subset_and_as_sequence():
    d = lab_data.load("digits")
    sub = lab_data.subset(d, 100, seed=1)
    assert len(sub.y_train) == 100 and torch.equal(sub.x_test, d.x_test)
    seq = lab_data.as_sequence(d.x_test[:5])
    assert seq.shape == (5, 8, 8) and torch.equal(seq[:, 3], d.x_test[:5, 0, 3])
    assert lab_data.as_sequence(torch.randn(2, 1, 40)).shape == (2, 40, 1)
    with pytest.raises(ValueError, match="train_size must be in 1..1198"):
        lab_data.subset(d, 0)
    with pytest.raises(ValueError, match="as_sequence expects"):
        lab_data.as_sequence(torch.randn(2, 3))


def _write_idx(path, array, code=0x08):
    header = bytes([0, 0, code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def test_read_mnist_idx_on_tiny_files(tmp_path):
    rng = np.random.default_rng(0)
    images = {p: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for p, n in (("train", 7), ("t10k", 3))}
    labels = {p: rng.integers(0, 10, len(images[p]), dtype=np.uint8) for p in images}
    _write_idx(str(tmp_path / "train-images-idx3-ubyte"), images["train"])
    _write_idx(str(tmp_path / "train-labels-idx1-ubyte"), labels["train"])
    _write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), images["t10k"])
    _write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), labels["t10k"])
    d = lab_data.load(f"mnist:{tmp_path}")
    assert d.x_train.shape == (7, 1, 28, 28) and d.x_test.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(d.x_test[:, 0].numpy(), images["t10k"] / 255.0, rtol=1e-6)
    assert d.y_train.tolist() == labels["train"].tolist()


def test_read_mnist_idx_errors(tmp_path):
    with pytest.raises(ValueError, match="has none of train-images-idx3-ubyte"):
        lab_data.read_mnist_idx(str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x08\x03")
    with pytest.raises(ValueError, match="is not an IDX file"):
        lab_data.read_mnist_idx(str(tmp_path))


def test_read_cifar10_on_tiny_batches(tmp_path):
    rng = np.random.default_rng(1)
    batches = {}
    for name, n in (("data_batch_1", 4), ("data_batch_2", 3), ("test_batch", 2)):
        batches[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}
        with open(tmp_path / name, "wb") as f:
            pickle.dump(batches[name], f)
    d = lab_data.load(f"cifar10:{tmp_path}")
    assert d.x_train.shape == (7, 3, 32, 32) and d.sample_shape == (3, 32, 32)
    expected = np.concatenate([batches["data_batch_1"][b"data"], batches["data_batch_2"][b"data"]])
    np.testing.assert_allclose(d.x_train.reshape(7, -1).numpy(), expected / 255.0, rtol=1e-6)
    # channel-major layout: the first 1024 values are the red plane
    np.testing.assert_allclose(d.x_test[1, 0].flatten().numpy(), batches["test_batch"][b"data"][1, :1024] / 255.0,
                               rtol=1e-6)
    assert d.y_test.tolist() == batches["test_batch"][b"labels"]


def test_load_errors():
    with pytest.raises(ValueError, match="data must be one of digits, mnist1d"):
        lab_data.load("imagenet")
    with pytest.raises(TypeError, match="data must be a string"):
        lab_data.load(3)
    with pytest.raises(ValueError, match="must hold CIFAR-10's python batches"):
        lab_data.load("cifar10:/nonexistent-dir")


# --------------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("norm", ["none", "batch", "torch_batch", "group", "layer", "noisy_batch"])
def test_mlp_norm_choices(norm):
    torch.manual_seed(0)
    model = models.MLP(64, norm=norm) if norm not in ("group",) else models.MLP(64, norm=norm, groups=4)
    out = model(torch.rand(16, 1, 8, 8))
    assert out.shape == (16, 10) and torch.isfinite(out).all()
    assert len(model.activation_inputs()) == 3


def test_mlp_batch_norm_normalizes_the_sigmoid_inputs():
    torch.manual_seed(0)
    model = models.MLP(64, norm="batch")
    captured = []
    model.activation_inputs()[0].register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    model(torch.rand(256, 1, 8, 8) * 3 + 1)
    x = captured[0].double()
    assert x.mean(0).abs().max() < 1e-4 and (x.var(0, unbiased=False) - 1).abs().max() < 1e-2


@pytest.mark.parametrize("norm", ["none", "batch", "group", "layer", "instance", "renorm", "ghost"])
def test_cnn_and_resnet_norm_choices(norm):
    torch.manual_seed(0)
    for shape in ((1, 8, 8), (1, 40)):
        for cls in (models.CNN, models.ResNet):
            model = cls(shape, norm=norm, virtual_batch_size=4)
            assert model(torch.randn(8, *shape)).shape == (8, 10)


def test_layer_norm_choice_matches_torch_layer_norm():
    x = torch.randn(4, 6, 5, 5)
    ours = models.norm_layer("layer", 6, "2d")
    reference = torch.nn.functional.layer_norm(x, (6, 5, 5))
    torch.testing.assert_close(ours(x), reference, atol=1e-5, rtol=1e-5)
    inst = models.norm_layer("instance", 6, "2d")
    torch.testing.assert_close(inst(x), torch.nn.functional.instance_norm(x), atol=1e-5, rtol=1e-5)


def test_recurrent_and_transformer_models():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 8, 8)
    for kind in ("lstm", "bnlstm", "lnlstm"):
        try:
            model = models.RecurrentClassifier(8, 16, kind=kind)
        except models.LayerMissing:
            continue
        assert model(x).shape == (6, 10)
    for norm in ("layer", "batch", "none"):
        assert models.TinyTransformer(8, 8, norm=norm)(x).shape == (6, 10)


def test_noisy_shift_statistics():
    torch.manual_seed(0)
    layer = models.NoisyShift(3)
    x = torch.zeros(4000, 3)
    y = layer(x + 1.0)  # a = 1: y = s + m, s ~ N(sigma, 0.1), m ~ U(mu +- 0.1)
    mean = y.mean(0)
    assert ((mean > 0.5) & (mean < 1.75)).all()  # E = sigma + mu in [1 - 0.5, 1.25 + 0.5]
    assert ((y.std(0) > 0.08) & (y.std(0) < 0.15)).all()  # sqrt(0.1^2 + 0.2^2/12) = 0.115
    layer.eval()
    assert torch.equal(layer(x + 1.0), x + 1.0)


def test_model_errors():
    with pytest.raises(ValueError, match="norm must be one of none, batch"):
        models.norm_layer("weird", 4)
    with pytest.raises(ValueError, match="activation must be one of sigmoid"):
        models.MLP(4, activation="swish")
    with pytest.raises(ValueError, match="norm_position must be 'before' or 'after'"):
        models.MLP(4, norm_position="middle")
    with pytest.raises(ValueError, match="CNN expects sample_shape"):
        models.CNN((64,))


# -------------------------------------------------------------------------------------------------- protocol
def test_stat_matches_numpy_and_formats():
    rng = np.random.default_rng(5)
    values = rng.normal(size=7)
    s = protocol.stat(values)
    assert s.mean == pytest.approx(values.mean()) and s.std == pytest.approx(values.std())
    assert str(protocol.stat([0.9, 0.92])) == "0.910 +- 0.010"
    assert protocol.stat([0.5, 0.7]).format(percent=True) == "60.0 +- 10.0%"
    with pytest.raises(ValueError, match="at least one value"):
        protocol.stat([])


def test_verdict_and_finding_validation():
    assert protocol.verdict(True, False) == "holds"
    assert protocol.verdict(False, True) == "partly holds"
    assert protocol.verdict(False, False) == "does not hold"
    with pytest.raises(ValueError, match="verdict must be one of"):
        protocol.Finding("c", "a", "k", "probably", "e")


def test_result_json_round_trip():
    r = protocol.Result("E0", "t", [protocol.Finding("c", "a", "k", "holds", "e")],
                        [protocol.Table("t", ["a"], [["1"]])],
                        [protocol.Plot("p", "x", "y", {"l": {"x": [1, 2], "y": [3, 4]}})])
    back = protocol.Result.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r


# ------------------------------------------------------------------------------------------------ training
def test_train_learns_digits_and_evaluate_matches_manual_count():
    d = lab_data.load("digits")
    torch.manual_seed(0)
    model = models.MLP(64, activation="relu", norm="batch")
    history = train.train(model, d, steps=150, batch_size=32, lr=0.1, seed=0, eval_every=50)
    assert history.steps == [50, 100, 150] and not history.diverged
    assert history.final_accuracy > 0.8
    model.eval()
    with torch.no_grad():
        manual = float((model(d.x_test).argmax(1) == d.y_test).float().mean())
    assert train.evaluate(model, d.x_test, d.y_test, batch_size=100) == pytest.approx(manual)


def test_train_detects_divergence():
    d = lab_data.load("digits")
    torch.manual_seed(0)
    model = models.MLP(64, activation="relu", hidden=(100, 100, 100, 100))
    history = train.train(model, d, steps=200, batch_size=32, lr=50.0, momentum=0.9, seed=0)
    assert history.diverged and history.final_accuracy < 0.3


def test_batch_samplers():
    g = torch.Generator().manual_seed(0)
    it = train.shuffled_batches(10, 3, g)
    epoch = torch.cat([next(it) for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # no repeats within an epoch
    labels = torch.arange(100) % 10
    batch = next(train.class_clustered_batches(labels, 8, 2, g))
    assert len(batch) == 8 and len(set(labels[batch].tolist())) <= 2
    with pytest.raises(ValueError, match="must be a multiple of classes_per_batch"):
        next(train.class_clustered_batches(labels, 7, 2, g))
    with pytest.raises(ValueError, match="batch_size must be in 1..10"):
        next(train.shuffled_batches(10, 11, g))


def test_progress_bar_reports_jobs_and_eta():
    stream = io.StringIO()
    with progress.bar("demo", stream=stream):
        for _ in progress.jobs(range(4)):
            for step in range(5):
                progress.within((step + 1) / 5)
    text = stream.getvalue()
    assert "demo" in text and "100.0%" in text and "ETA" in text
    # outside a bar the calls are silent no-ops
    assert list(progress.jobs([1, 2])) == [1, 2]
    progress.within(0.5)


# --------------------------------------------------------------------------------------- runner and report
@dataclass
class _FakeConfig:
    data: str = "digits"  # dataset
    seeds: int = 3  # seeds
    scale_value: int = 10  # a number the fake experiment reports


def _fake_module(calls: list):
    module = types.ModuleType("batchnorm.lab.experiments._fake")
    module.__file__ = __file__
    module.ID, module.TITLE, module.Config = "E99", "fake", _FakeConfig
    module.QUICK, module.FULL = {"scale_value": 1}, {"scale_value": 100}

    def run(cfg):
        calls.append(cfg)
        for _ in progress.jobs(range(cfg.seeds)):
            pass
        value = protocol.stat(np.arange(cfg.seeds) * cfg.scale_value)
        return protocol.Result("E99", "fake", [protocol.Finding(
            "fake claim", "anchor", "holds if mean > 0", protocol.verdict(value.mean > 0), str(value))],
            plots=[protocol.Plot("p", "x", "y", {"a": {"x": [0, 1], "y": [1.0, 2.0], "err": [0.1, 0.1]}}),
                   protocol.Plot("b", "x", "y", {"a": {"x": ["u", "v"], "y": [1.0, 2.0]}}, kind="bar")])

    module.run = run
    return module


@pytest.fixture
def fake_experiment(monkeypatch):
    from batchnorm.lab import experiments

    calls = []
    module = _fake_module(calls)
    monkeypatch.setitem(sys.modules, "batchnorm.lab.experiments._fake", module)
    monkeypatch.setitem(experiments.EXPERIMENTS, "E99", "_fake")
    return calls


def test_config_for_scales():
    module = _fake_module([])
    assert runner.config_for(module, "quick").scale_value == 1
    assert runner.config_for(module, "full", data="mnist1d", seeds=2) == _FakeConfig("mnist1d", 2, 100)
    with pytest.raises(ValueError, match="scale must be one of quick, default, full"):
        runner.config_for(module, "huge")
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        runner.config_for(module, seeds=0)
    assert runner.cache_key(module, _FakeConfig()) != runner.cache_key(module, _FakeConfig(seeds=2))


def test_runner_caches_and_resumes(tmp_path, fake_experiment):
    stream = io.StringIO()
    results = runner.run_all(["E99"], "default", out=str(tmp_path), stream=stream)
    assert len(fake_experiment) == 1 and results[0].findings[0].verdict == "holds"
    assert results[0].config["seeds"] == 3 and results[0].versions["torch"] == torch.__version__
    cached = os.listdir(tmp_path / "cache")
    assert len(cached) == 1 and not any(name.startswith(".tmp") for name in cached)
    again = runner.run_all(["e99"], "default", out=str(tmp_path), stream=stream)
    assert len(fake_experiment) == 1, "a cached result must not run again"
    assert again[0].findings == results[0].findings and "cached result" in stream.getvalue()
    runner.run_all(["E99"], "quick", out=str(tmp_path), stream=stream)
    assert len(fake_experiment) == 2, "another config must run"
    runner.run_all(["E99"], "quick", out=str(tmp_path), stream=stream, force=True)
    assert len(fake_experiment) == 3
    with pytest.raises(ValueError, match="experiment must be one of"):
        runner.run_all(["E0"], out=str(tmp_path), stream=stream)


def test_write_atomic_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    runner.write_atomic(str(path), "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        runner.write_atomic(str(path), "new")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


def test_report_has_summary_sections_and_images(tmp_path, fake_experiment):
    results = runner.run_all(["E99"], out=str(tmp_path), stream=io.StringIO())
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Summary</h2>" in page and 'id="E99"' in page and "fake claim" in page
    for name in ("E99_0.png", "E99_1.png"):
        assert f'src="img/{name}"' in page
        assert (tmp_path / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    write_report(results + results, str(tmp_path))  # re-writing works


def test_cli_list_and_bad_experiment(capsys):
    from batchnorm.cli import main

    assert main(["lab", "--list"]) == 0
    assert "E1" in capsys.readouterr().out
    assert main(["lab", "E0", "--out", "/tmp/never-written-lab"]) == 2
    assert "experiment must be one of" in capsys.readouterr().err
