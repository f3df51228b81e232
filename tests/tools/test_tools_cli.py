"""Tests of `batchnorm fold|recalibrate|doctor`: end to end in a subprocess on a factory written here, and the
error paths (bad import path, missing file, mismatching or unsafe weights) in process."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from batchnorm.cli import main

FACTORY = textwrap.dedent('''
    """Model factories for the CLI tests."""
    import torch
    from torch import nn


    def make_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


    def make_other():
        return nn.Sequential(nn.Linear(3, 3))


    def broken():
        raise RuntimeError("the factory failed on purpose")
''')

UNPICKLED = []


class Payload:
    """An arbitrary object: a weights file holding it must be refused, and its state never restored."""

    def __setstate__(self, state):
        UNPICKLED.append(state)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "cli_factories.py").write_text(FACTORY)
    namespace = {}
    exec(FACTORY, namespace)
    model = namespace["make_net"]()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model[1].running_mean.copy_(torch.randn(8, generator=generator))
        model[1].running_var.copy_(torch.rand(8, generator=generator) + 0.5)
        model[1].weight.copy_(torch.randn(8, generator=generator))
        model[1].bias.copy_(torch.randn(8, generator=generator))
        model[5].weight.copy_(torch.randn(4, 8, generator=generator))
    torch.save(model.state_dict(), root / "weights.pt")
    inputs = torch.randn(40, 3, 6, 6, generator=generator) * 1.5 + 0.5
    labels = torch.randint(0, 4, (40,), generator=generator)
    torch.save({"inputs": inputs, "labels": labels}, root / "data.pt")
    torch.save(namespace["make_other"]().state_dict(), root / "other.pt")
    stale = {k: v.clone() for k, v in model.state_dict().items()}
    stale["1.running_mean"] += 50.0
    torch.save(stale, root / "stale.pt")
    torch.save({"weight": Payload()}, root / "unsafe.pt")
    return root, model, inputs


def _cli(root, *args):
    return subprocess.run([sys.executable, "-m", "batchnorm", *args], cwd=root, capture_output=True, text=True,
                          timeout=300)


def test_fold_end_to_end_with_onnx(workdir):
    import onnx
    import onnxruntime

    root, model, _ = workdir
    result = _cli(root, "fold", "cli_factories:make_net", "--weights", "weights.pt", "--input-shape", "2,3,6,6",
                  "--onnx", "net.onnx", "--out", "folded.pt")
    assert result.returncode == 0, result.stderr
    assert "1 batch norm(s) folded, 0 left" in result.stdout and "into 0" in result.stdout
    assert "BatchNormalization" not in [node.op_type for node in onnx.load(str(root / "net.onnx")).graph.node]
    x = torch.randn(7, 3, 6, 6)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = onnxruntime.InferenceSession(str(root / "net.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    folded_state = torch.load(root / "folded.pt", weights_only=True)
    assert "1.running_mean" not in folded_state and "0.bias" in folded_state


def test_recalibrate_and_doctor_end_to_end(workdir, monkeypatch, capsys):
    root, model, inputs = workdir
    result = _cli(root, "recalibrate", "cli_factories:make_net", "--weights", "weights.pt", "--data", "data.pt",
                  "--batch-size", "16", "--out", "recalibrated.pt")
    assert result.returncode == 0, result.stderr
    assert "from 3 batch(es), 40 sample(s)" in result.stdout
    state = torch.load(root / "recalibrated.pt", weights_only=True)
    # oracle: NumPy pooled statistics of the conv outputs over all 40 samples
    with torch.no_grad():
        conv_out = model[0](inputs).double().numpy()
    values = np.moveaxis(conv_out, 1, 0).reshape(8, -1)
    np.testing.assert_allclose(state["1.running_mean"].numpy(), values.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["1.running_var"].numpy(), values.var(1, ddof=1), rtol=1e-5)
    assert torch.equal(state["5.weight"], model.state_dict()["5.weight"])

    # doctor in process (the subprocess path is the same `main`; one interpreter start-up less)
    monkeypatch.chdir(root)
    assert main(["doctor", "cli_factories.py:make_net", "--weights", "recalibrated.pt", "--data", "data.pt",
                 "--batch-size", "20"]) == 0
    out = capsys.readouterr().out
    assert "0 error(s), 0 warning(s)" in out and "BatchNorm2d" in out


def test_doctor_exit_code_follows_fail_on(workdir, monkeypatch, capsys):
    root, _, _ = workdir
    monkeypatch.chdir(root)
    args = ["doctor", "cli_factories.py:make_net", "--weights", "stale.pt", "--data", "data.pt"]
    assert main(args) == 1
    assert "stale-statistics" in capsys.readouterr().out
    assert main(args + ["--fail-on", "never"]) == 0


@pytest.mark.parametrize("args, message", [
    (["fold", "no_such_module_xyz:make_net"], "cannot import module 'no_such_module_xyz'"),
    (["fold", "cli_factories.make_net"], "MODEL must be given as module:name"),
    (["fold", "cli_factories.py:make_nothing"], "has no attribute 'make_nothing'"),
    (["fold", "missing_dir/models.py:make_net"], "no such file"),
    (["fold", "cli_factories.py:broken"], "calling the factory failed: RuntimeError: the factory failed on purpose"),
    (["fold", "cli_factories.py:make_net", "--weights", "nothing.pt"], "--weights 'nothing.pt': no such file"),
    (["fold", "cli_factories.py:make_net", "--weights", "other.pt"],
     "does not match MODEL Sequential: missing: 1.weight.*unexpected: 0.bias.*wrong shape: 0.weight"),
    (["fold", "cli_factories.py:make_net", "--weights", "unsafe.pt"], r"torch.load\(weights_only=True\)"),
    (["fold", "cli_factories.py:make_net", "--onnx", "x.onnx"], "--onnx needs --input-shape"),
    (["fold", "cli_factories.py:make_net", "--input-shape", "2,x"], "--input-shape must be positive integers"),
    (["recalibrate", "cli_factories.py:make_net", "--data", "nothing.pt", "--out", "r.pt"],
     "--data 'nothing.pt': no such file"),
    (["recalibrate", "cli_factories.py:make_net", "--data", "data.pt", "--num-batches", "9", "--out", "r.pt"],
     "num_batches=9 but the data ran out after 1 batch"),
])
def test_bad_input_exits_with_code_2_and_a_clear_message(workdir, monkeypatch, capsys, args, message):
    root, _, _ = workdir
    monkeypatch.chdir(root)
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"batchnorm {args[0]}: error: ")
    assert re.search(message, error), error
    assert not UNPICKLED                          # the unsafe file was never unpickled


def test_npz_data_and_data_from_a_function(workdir, monkeypatch, capsys):
    root, _, inputs = workdir
    monkeypatch.chdir(root)
    np.savez(root / "data.npz", inputs=inputs.numpy(), labels=np.zeros(40, dtype=np.int64))
    (root / "cli_batches.py").write_text(
        "import torch\n\ndef batches():\n    g = torch.Generator().manual_seed(0)\n"
        "    return [torch.randn(10, 3, 6, 6, generator=g) for _ in range(2)]\n")
    assert main(["recalibrate", "cli_factories.py:make_net", "--data", "data.npz", "--batch-size", "15",
                 "--out", "from_npz.pt"]) == 0
    assert "from 3 batch(es), 40 sample(s)" in capsys.readouterr().out
    assert main(["recalibrate", "cli_factories.py:make_net", "--data", "cli_batches.py:batches",
                 "--out", "from_function.pt"]) == 0
    assert "from 2 batch(es), 20 sample(s)" in capsys.readouterr().out


def test_import_batchnorm_does_not_import_torch_and_reexports_the_tools():
    code = ("import sys, batchnorm, batchnorm.reference\n"
            "assert 'torch' not in sys.modules, 'importing batchnorm imported torch'\n"
            "from batchnorm.tools import fold, doctor\n"
            "assert batchnorm.fold is fold and batchnorm.doctor is doctor\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
