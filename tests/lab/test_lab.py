"""Tests of the lab's framework: data and readers, models and norm choices, results as JSON,
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
from batchnorm.lab import models, progress, protocol, report, runner, train
from batchnorm.lab.report import write_report


# ----------------------------------------------------------------------------------------------------- data
def test_digits_split_shapes_and_determinism():
    a, b = lab_data.load("digits"), lab_data.load("digits")
    assert a.x_train.shape == (999, 1, 8, 8) and a.x_val.shape == (199, 1, 8, 8) and a.x_test.shape == (599, 1, 8, 8)
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
    assert len(d.y_train) + len(d.y_val) == 4000 and d.x_train.shape[1:] == (1, 40) and d.x_test.shape == (1000, 1, 40)
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
    with pytest.raises(ValueError, match="train_size must be in 1..999"):
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
        model = models.RecurrentClassifier(8, 16, kind=kind)
        assert model(x).shape == (6, 10)
    assert type(models.RecurrentClassifier(8, 16, kind="bnlstm").rnn).__name__ == "BNLSTM"
    with pytest.raises(ValueError, match="kind must be one of lstm, bnlstm, lnlstm"):
        models.RecurrentClassifier(8, 16, kind="gru")
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
def test_result_json_round_trip():
    effect = protocol.Effect("difference (points)", 2.0, (1.5, 2.5), threshold=1.0)
    r = protocol.Result("E0", "t", [protocol.Finding("c", "a", "k", "e", effect, [0, 1])],
                        [protocol.Table("t", ["a"], [["1"]])],
                        [protocol.Plot("p", "x", "y", {"l": {"x": [1, 2], "y": [3, 4]}})])
    back = protocol.Result.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r and back.findings[0].verdict == "holds"


# ------------------------------------------------------------------------------------------------ training
def test_train_learns_digits_and_evaluate_matches_manual_count():
    d = lab_data.load("digits")
    torch.manual_seed(0)
    model = models.MLP(64, activation="relu", norm="batch")
    history = train.train(model, d, steps=150, batch_size=32, lr=0.1, seed=0, eval_every=50)
    assert history.steps == [50, 100, 150] and not history.diverged and len(history.val_accuracy) == 3
    assert history.test_accuracy > 0.8 and history.final_val > 0.8
    model.eval()
    with torch.no_grad():   # the same batches of 100: a product over the whole set may round differently
        correct = sum(int((model(d.x_test[i:i + 100]).argmax(1) == d.y_test[i:i + 100]).sum())
                      for i in range(0, len(d.y_test), 100))
    assert train.evaluate(model, d.x_test, d.y_test, batch_size=100) == correct / len(d.y_test)


def test_train_detects_divergence():
    d = lab_data.load("digits")
    torch.manual_seed(0)
    model = models.MLP(64, activation="relu", hidden=(100, 100, 100, 100))
    history = train.train(model, d, steps=200, batch_size=32, lr=50.0, momentum=0.9, seed=0)
    assert history.diverged and history.test_accuracy < 0.3


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
    # jobs submitted in stages (tuning, then the other seeds) add up on one bar
    with progress.bar("stages", stream=io.StringIO()) as staged:
        list(progress.jobs(range(2)))
        assert (staged.done, staged.total) == (2, 2)
        list(progress.jobs(range(3)))
        assert (staged.done, staged.total) == (5, 5)
    # outside a bar the calls are silent no-ops
    assert list(progress.jobs([1, 2])) == [1, 2]
    progress.within(0.5)


# --------------------------------------------------------------------------------------- runner and report
@dataclass
class _FakeConfig:
    data: str = "digits"  # dataset
    seeds: int = 3  # seeds
    seed_base: int = 0  # first seed
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
        seeds = protocol.seeds(cfg)
        values = [cfg.scale_value * (1 + 0.1 * (s % 3)) for s in seeds]
        estimate, ci = protocol.mean_ci(values)
        effect = protocol.Effect("fake difference (points)", estimate, ci, threshold=0.5)
        return protocol.Result("E99", "fake", [protocol.Finding(
            "fake claim", "Ioffe & Szegedy 2015: the anchor; Wu & Johnson 2021 (arXiv 2105.07576)",
            "holds if the interval lies above 0.5", protocol.fmt_ci(estimate, ci, "points"), effect, seeds)],
            plots=[protocol.Plot("p", "x", "y", {"a": {"x": [0, 1], "y": [1.0, 2.0], "err": [0.1, 0.1],
                                                       "points": [[0.9, 1.1], [1.8, 2.2]]}}),
                   protocol.Plot("b", "x", "y", {"a": {"x": ["u", "v"], "y": [1.0, 2.0], "points": [[1.0], [2.0]]},
                                                 "b": {"x": ["u", "v"], "y": [1.5, 2.5]}}, kind="bar")],
            arms=[{"name": "arm", "lr_grid": [0.01, 0.1, 0.3, 1.0], "lr_chosen": 0.1,
                   "val_accuracy": [0.5, 0.9, 0.8, 0.1], "test_accuracy": [0.9, 0.91, 0.92], "seeds": seeds}],
            numbers={"values": values})

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


def test_config_for_scales_and_seed_base():
    module = _fake_module([])
    assert runner.config_for(module, "quick").scale_value == 1
    assert runner.config_for(module, "full", data="mnist1d", seeds=2, seed_base=100) == \
        _FakeConfig("mnist1d", 2, 100, 100)
    with pytest.raises(ValueError, match="scale must be one of quick, default, full"):
        runner.config_for(module, "huge")
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        runner.config_for(module, seeds=0)
    with pytest.raises(ValueError, match="seed_base must be an integer >= 0"):
        runner.config_for(module, seed_base=-1)


def test_cache_key_covers_config_seed_base_package_source_and_versions(tmp_path, monkeypatch):
    module = _fake_module([])
    key = runner.cache_key(module, _FakeConfig())
    assert key == runner.cache_key(module, _FakeConfig())
    assert key != runner.cache_key(module, _FakeConfig(seeds=2))
    assert key != runner.cache_key(module, _FakeConfig(seed_base=100))
    # the digest reads every .py file of the package: a change anywhere (here a kernel file) changes it
    package = tmp_path / "batchnorm"
    (package / "kernels").mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    (package / "kernels" / "forward.py").write_text("def f():\n    return 1\n")
    (package / "kernels" / "notes.txt").write_text("not code")
    before = runner.package_digest(str(package))
    (package / "kernels" / "notes.txt").write_text("still not code")
    assert runner.package_digest(str(package)) == before
    (package / "kernels" / "forward.py").write_text("def f():\n    return 2\n")
    changed = runner.package_digest(str(package))
    assert changed != before
    monkeypatch.setattr(runner, "package_digest", lambda root=None: changed)
    other_code = runner.cache_key(module, _FakeConfig())
    assert other_code != key
    monkeypatch.setattr(runner, "_library_versions", lambda: {"torch": "0.0", "numpy": "0.0", "numba": "0.0"})
    assert runner.cache_key(module, _FakeConfig()) not in (key, other_code)
    # the real digest covers this package's own files
    assert runner.package_digest() == runner.package_digest(os.path.dirname(os.path.dirname(runner.__file__)))


def test_runner_caches_and_resumes(tmp_path, fake_experiment):
    stream = io.StringIO()
    results = runner.run_all(["E99"], "default", out=str(tmp_path), stream=stream)
    assert len(fake_experiment) == 1 and results[0].findings[0].verdict == "holds"
    assert results[0].config["seeds"] == 3 and results[0].versions["torch"] == torch.__version__
    cached = os.listdir(tmp_path / "cache")
    assert len(cached) == 1 and not any(name.startswith(".") for name in cached)
    again = runner.run_all(["e99"], "default", out=str(tmp_path), stream=stream)
    assert len(fake_experiment) == 1, "a cached result must not run again"
    assert again[0].findings == results[0].findings and "cached result" in stream.getvalue()
    runner.run_all(["E99"], "quick", out=str(tmp_path), stream=stream)
    assert len(fake_experiment) == 2, "another config must run"
    runner.run_all(["E99"], "quick", out=str(tmp_path), stream=stream, force=True)
    assert len(fake_experiment) == 3
    other = runner.run_all(["E99"], "quick", out=str(tmp_path), stream=stream, seed_base=100)
    assert len(fake_experiment) == 4 and fake_experiment[-1].seed_base == 100, "other seeds must run"
    assert other[0].findings[0].seeds == [100, 101, 102]
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


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_report_and_cache_files_follow_the_umask(tmp_path, fake_experiment, umask):
    old = os.umask(umask)
    try:
        runner.run_all(["E99"], out=str(tmp_path / "out"), stream=io.StringIO())
    finally:
        os.umask(old)
    files = [tmp_path / "out" / "index.html", tmp_path / "out" / "results.json", tmp_path / "out" / "img" / "E99_0.png",
             *(tmp_path / "out" / "cache").glob("E99-*.json")]
    assert len(files) == 4
    for path in files:
        assert (path.stat().st_mode & 0o777) == 0o666 & ~umask, path


def test_report_has_summary_columns_sections_images_and_results_json(tmp_path, fake_experiment):
    results = runner.run_all(["E99"], out=str(tmp_path), stream=io.StringIO(), seed_base=7)
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Summary</h2>" in page and 'id="E99"' in page and "fake claim" in page
    for column in ("effect [95% CI]", "threshold", "seeds", "reproduce"):
        assert f"<th>{column}</th>" in page
    finding = results[0].findings[0]
    lo, hi = finding.effect.ci95
    assert report.fmt_interval(finding.effect.estimate, lo, hi) in page
    assert "&gt; 0.5<" in page and "3 (7&ndash;9)" in page
    assert "<code>bash bin/lab E99 --force --seed-base 7</code>" in page
    assert '<a href="results.json">' in page or "href='results.json'" in page
    assert 'href="https://arxiv.org/abs/1502.03167"' in page and 'href="https://arxiv.org/abs/2105.07576"' in page
    assert "chosen rate" in page and "<b>0.100</b>" in page  # the arms table
    for name in ("E99_0.png", "E99_1.png"):
        assert f'src="img/{name}"' in page
        assert (tmp_path / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "results.json").read_text())
    (experiment,) = data["experiments"]
    assert experiment["id"] == "E99" and experiment["title"] == "fake" and experiment["seconds"] >= 0
    assert experiment["config"]["seed_base"] == 7 and experiment["reproduce"].startswith("bash bin/lab E99 --force")
    (f,) = experiment["findings"]
    assert f["verdict"] == finding.verdict and f["criterion"] and f["seeds"] == [7, 8, 9]
    assert set(f["effect"]) >= {"name", "estimate", "ci95", "threshold"} and f["effect"]["ci95"] == [lo, hi]
    (arm,) = experiment["arms"]
    assert set(arm) >= {"name", "lr_grid", "lr_chosen", "val_accuracy", "test_accuracy"}
    assert data["versions"]["torch"] == torch.__version__
    write_report(results + results, str(tmp_path))  # re-writing works


def test_fmt_numbers_for_people():
    assert report.fmt(583.3333333333334) == "583" and report.fmt(float("inf")) == "not reached"
    assert report.fmt(float("nan")) == "n/a" and report.fmt(0.91234) == "0.912" and report.fmt(12.345) == "12.3"
    assert report.fmt(3) == "3" and report.fmt(0.0001234) == "0.000123"
    assert report.fmt_interval(-0.101, -1.13, 0.925) == "-0.10 [-1.13, 0.93]"
    assert report.fmt_interval(583.33, 500.1, 666.6) == "583 [500, 667]"
    assert report.fmt_interval(0.0123, 0.004, 0.0206) == "0.012 [0.004, 0.021]"


def test_cli_list_bad_experiment_and_bad_options(capsys, tmp_path):
    from batchnorm.cli import main

    assert main(["lab", "--list"]) == 0
    assert "E1" in capsys.readouterr().out
    for argv, message in ((["E0"], "experiment must be one of"), (["E1", "--jobs", "0"], "--jobs must be >= 1"),
                          (["E1", "--seed-base", "-1"], "--seed-base must be >= 0"),
                          (["E1", "--threads", "0"], "--threads must be >= 1")):
        assert main(["lab", *argv, "--out", str(tmp_path / "never")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_cli_out_naming_a_file_is_refused_before_any_work(capsys, tmp_path, fake_experiment):
    from batchnorm.cli import main

    target = tmp_path / "report.txt"
    target.write_text("precious")
    assert main(["lab", "E99", "--out", str(target), "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and len(err.strip().splitlines()) == 1
    assert fake_experiment == [] and target.read_text() == "precious"
    assert main(["lab", "E99", "--out", str(target / "sub"), "--jobs", "1"]) == 2
    assert "cannot create the report directory" in capsys.readouterr().err and fake_experiment == []


def test_plot_bands_of_accuracies_stay_in_the_attainable_range(tmp_path):
    line = {"x": ["a", "b"], "y": [78.4, 50.0], "err": [47.4, 5.0], "points": [[99.0, 98.0, 10.0], [45.0, 55.0]]}
    accuracy = protocol.Plot("t", "", "test accuracy (%)", {"test": line}, kind="bar")
    low, high = report._band(accuracy, line)
    assert low == pytest.approx([31.0, 45.0]) and high == pytest.approx([100.0, 55.0])
    assert report._value_range(accuracy)[1] < 110  # the axis is not stretched by an impossible 125.8%
    loss = protocol.Plot("t", "", "training loss", {"test": line}, kind="bar")
    assert report._band(loss, line)[1] == pytest.approx([125.8, 55.0])  # unbounded quantities are not clipped
    report.draw_plot(accuracy, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_arms_that_choose_an_edge_of_their_grid_are_flagged(tmp_path, fake_experiment):
    assert protocol.grid_edge({"lr_grid": [0.01, 0.03, 0.1, 0.3], "lr_chosen": 0.01}) == "lowest"
    assert protocol.grid_edge({"lr_grid": [0.01, 0.03, 0.1, 0.3], "lr_chosen": 0.03}) is None
    stream = io.StringIO()
    results = runner.run_all(["E99"], out=str(tmp_path), stream=stream)
    assert protocol.grid_edge(results[0].arms[0]) is None  # the fake arm chooses 0.1 of [0.01, 0.1, 0.3, 1.0]
    assert "Grid edges:" not in (tmp_path / "index.html").read_text() and "edge of the" not in stream.getvalue()
    results[0].arms[0]["lr_chosen"] = 1.0
    write_report(results, str(tmp_path))
    (arm,) = json.loads((tmp_path / "results.json").read_text())["experiments"][0]["arms"]
    assert arm["grid_edge"] == "highest"
    page = (tmp_path / "index.html").read_text()
    assert "Grid edges:</b> 1 tuned arm(s)" in page and "E99 arm (highest, 1)" in page and "(highest of the grid)" in page
