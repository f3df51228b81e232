"""Hostile input to `batchnorm fold|recalibrate|doctor|bench`: every bad input exits 2 with one line on stderr,
nothing is lost (writes that fail partway leave the old file byte-identical), nothing from the working directory
runs in place of an installed package, non-finite statistics are refused, environment variables are checked.

Writes that fail partway are real: the command runs in a subprocess under a file-size limit (RLIMIT_FSIZE), so
the operating system cuts torch.save's write in the middle.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from batchnorm.cli import main

FACTORY = textwrap.dedent('''
    """Models and data sources for the hostile-input tests."""
    import torch
    from torch import nn

    import batchnorm.nn as bnn


    def make_net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


    def failing_batches():
        generator = torch.Generator().manual_seed(0)
        yield torch.randn(8, 3, 6, 6, generator=generator)
        raise OSError("the data server went away")


    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = bnn.BatchNorm1d(3)

        def forward(self, x, mask):
            return self.norm(x, mask)


    def make_masked():
        return Masked()
''')


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "hostile_factories.py").write_text(FACTORY)
    namespace = {}
    exec(FACTORY, namespace)
    torch.save(namespace["make_net"]().state_dict(), root / "weights.pt")
    generator = torch.Generator().manual_seed(1)
    torch.save(torch.randn(24, 3, 6, 6, generator=generator) * 2 + 1, root / "data.pt")
    torch.save(torch.randn(24, 5, 6, 6, generator=generator), root / "five_channels.pt")
    torch.save(torch.randint(0, 9, (24, 3, 6, 6), generator=generator), root / "integers.pt")
    poisoned = torch.randn(24, 3, 6, 6, generator=generator)
    poisoned[13, 1, 2, 3] = float("nan")
    torch.save(poisoned, root / "nan_data.pt")
    return root


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


def _run(root: Path, args: list[str], capsys) -> tuple[int, str]:
    """main(args) in `root`: (exit code, stderr); argparse's exits count as exit codes. stdout goes to LAST_OUT."""
    old = os.getcwd()
    os.chdir(root)
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        os.chdir(old)
    captured = capsys.readouterr()
    LAST_OUT[0] = captured.out
    return code, captured.err


LAST_OUT = [""]


def _subprocess(root: Path, args: list[str], file_size_limit: int | None = None, env: dict | None = None):
    prefix = ("import resource, sys\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size_limit}, {file_size_limit}))\n"
              if file_size_limit else "import sys\n")
    code = prefix + "from batchnorm.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=root, capture_output=True, text=True,
                          timeout=300, env=env)


# ------------------------------------------------------------------------------------------ atomic outputs
def test_recalibrate_onto_its_own_weights_with_a_write_cut_partway_keeps_the_checkpoint(workdir, tmp_path, capsys):
    precious = tmp_path / "precious.pt"
    precious.write_bytes((workdir / "weights.pt").read_bytes())
    before = precious.read_bytes()
    done = _subprocess(workdir, ["recalibrate", "hostile_factories:make_net", "--weights", str(precious), "--data",
                                 "data.pt", "--out", str(precious)], file_size_limit=len(before) // 2)
    assert done.returncode == 2, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("batchnorm recalibrate: error: could not write --out") and "left as it was" in line
    assert precious.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.pt"]          # no temporary file left
    # without the limit the same command replaces the file with a loadable, recalibrated state_dict
    code, err = _run(workdir, ["recalibrate", "hostile_factories:make_net", "--weights", str(precious), "--data",
                               "data.pt", "--out", str(precious)], capsys)
    assert code == 0, err
    state = torch.load(precious, weights_only=True)
    assert not torch.equal(state["1.running_mean"], torch.zeros(8))


def test_fold_out_on_a_full_disk_leaves_no_partial_file(workdir, tmp_path):
    target = tmp_path / "folded.pt"
    done = _subprocess(workdir, ["fold", "hostile_factories:make_net", "--weights", "weights.pt", "--out",
                                 str(target)], file_size_limit=1000)
    assert done.returncode == 2, done.stderr
    assert "could not write --out" in _one_line(done.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("option", ["--out", "--onnx"])
def test_output_paths_that_cannot_be_written_are_refused_before_any_work(workdir, tmp_path, capsys, option):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if os.access(readonly, os.W_OK):       # root ignores permissions: use a directory no one can create files in
        readonly = Path("/proc/sys")
    assert not os.access(readonly, os.W_OK)
    (tmp_path / "adir").mkdir()
    cases = {str(tmp_path / "no" / "such" / "dir" / "out"): "does not exist",
             str(readonly / "out"): "is not writable",
             str(tmp_path / "adir"): "is a directory"}
    for path, message in cases.items():
        args = ["fold", "hostile_factories:make_net", "--input-shape", "2,3,6,6", option, path]
        code, err = _run(workdir, args, capsys)
        assert code == 2, err
        line = _one_line(err)
        assert line.startswith(f"batchnorm fold: error: {option} ") and message in line, line
    code, err = _run(workdir, ["recalibrate", "hostile_factories:make_net", "--data", "data.pt", "--out",
                               str(tmp_path / "adir")], capsys)
    assert code == 2 and "is a directory" in _one_line(err)
    readonly.chmod(0o755) if readonly.is_relative_to(tmp_path) else None


# ------------------------------------------------------------------------------ the working directory
def test_a_module_in_the_working_directory_never_shadows_an_installed_package(workdir, tmp_path):
    """onnx.py and numpy.py in the working directory would create a marker file if imported."""
    marker = tmp_path / "SHADOW_RAN"
    for name in ("onnx", "numpy"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write('{name}')\n")
    (tmp_path / "local_models.py").write_text("import torch\n\ndef make():\n    return torch.nn.Linear(3, 2)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
    done = subprocess.run([sys.executable, "-m", "batchnorm", "fold", "torch.nn:Identity", "--input-shape", "2,3",
                           "--onnx", "out.onnx"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out.onnx").stat().st_size > 0
    # a spec naming a module that only the working directory has is still found there
    done = subprocess.run([sys.executable, "-m", "batchnorm", "fold", "local_models:make", "--input-shape", "2,3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists(), f"a shadowing module ran: {marker.read_text()}"


# ------------------------------------------------------------------------------------ bad data, one line
@pytest.mark.parametrize("data, message", [
    ("five_channels.pt", r"failed on a --data 'five_channels.pt' batch of inputs \(16, 5, 6, 6\) float32: "
                         r"RuntimeError: .*channels"),
    ("integers.pt", r"batch of inputs \(16, 3, 6, 6\) int64: RuntimeError: "),
    ("hostile_factories:failing_batches", r"producing batch 1 \(counting from 0\) failed: OSError: the data "
                                          r"server went away"),
])
@pytest.mark.parametrize("command", ["recalibrate", "doctor"])
def test_data_the_model_cannot_use_exits_2_with_one_line(workdir, tmp_path, capsys, command, data, message):
    args = [command, "hostile_factories:make_net", "--data", data, "--batch-size", "16"]
    if command == "recalibrate":
        args += ["--out", str(tmp_path / "out.pt")]
    code, err = _run(workdir, args, capsys)
    assert code == 2, err
    line = _one_line(err)
    assert line.startswith(f"batchnorm {command}: error: ")
    assert re.search(message, line), line
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("args, message", [
    (["bench", "--threads", "0"], "batchnorm bench: error: --threads must be at least 1, got 0"),
    (["bench", "--repeats", "-1"], "batchnorm bench: error: --repeats must be at least 1, got -1"),
    (["fold", "hostile_factories:make_net", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["recalibrate", "hostile_factories:make_net"], "the following arguments are required: --data, --out"),
    (["doctor", "hostile_factories:make_net", "--batch-size", "many"],
     "argument --batch-size: expected an integer >= 1, got 'many'"),
    (["doctor", "hostile_factories:make_net", "--data", "data.pt", "--num-batches", "0"],
     "argument --num-batches: expected an integer >= 1, got 0"),
])
def test_bad_options_exit_2_with_one_line(workdir, capsys, args, message):
    code, err = _run(workdir, args, capsys)
    assert code == 2, err
    assert message in _one_line(err)


def test_bench_json_path_is_checked_before_measuring(workdir, tmp_path, capsys):
    code, err = _run(workdir, ["bench", "--json", str(tmp_path / "missing" / "b.json"), "--shapes", "8,4"], capsys)
    assert code == 2 and "does not exist" in _one_line(err)


def test_a_malicious_pickle_is_refused_in_one_line_without_torch_warning(workdir, tmp_path, capsys):
    import pickle
    import warnings
    marker = tmp_path / "PWNED"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Exploit(), protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = _run(workdir, ["fold", "hostile_factories:make_net", "--weights", str(tmp_path / "evil.pt")],
                         capsys)
    assert code == 2
    line = _one_line(err)
    assert "could not be read with torch.load(weights_only=True)" in line and not marker.exists()
    assert not [w for w in caught if "pickle protocol" in str(w.message)], "torch's warning was not silenced"


# ------------------------------------------------------------------------------------ non-finite statistics
def test_recalibrate_refuses_nan_data_and_skips_it_when_asked(workdir, tmp_path, capsys):
    out = tmp_path / "out.pt"
    args = ["recalibrate", "hostile_factories:make_net", "--data", "nan_data.pt", "--batch-size", "8",
            "--out", str(out)]
    code, err = _run(workdir, args, capsys)
    assert code == 2
    line = _one_line(err)
    assert "batch 1 (counting from 0) gives non-finite statistics at layer '1'" in line and "--skip-nonfinite" in line
    assert not out.exists()
    code, err = _run(workdir, args + ["--skip-nonfinite"], capsys)
    assert code == 0, err
    state = torch.load(out, weights_only=True)
    # oracle: NumPy pooled statistics of the conv outputs over batches 0 and 2 (samples 0-7 and 16-23)
    namespace = {}
    exec(FACTORY, namespace)
    model = namespace["make_net"]()
    data = torch.load(workdir / "nan_data.pt", weights_only=True)
    with torch.no_grad():
        conv = model[0](torch.cat([data[:8], data[16:]])).double().numpy()
    values = np.moveaxis(conv, 1, 0).reshape(8, -1)
    np.testing.assert_allclose(state["1.running_mean"].numpy(), values.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["1.running_var"].numpy(), values.var(1, ddof=1), rtol=1e-5)


def test_doctor_flags_the_checkpoint_a_nan_recalibration_would_have_written(workdir, tmp_path, capsys):
    namespace = {}
    exec(FACTORY, namespace)
    state = namespace["make_net"]().state_dict()
    state["1.running_mean"][2] = float("nan")
    torch.save(state, tmp_path / "nan_stats.pt")
    code, _ = _run(workdir, ["doctor", "hostile_factories:make_net", "--weights", str(tmp_path / "nan_stats.pt")],
                   capsys)
    assert code == 1
    assert "error     nonfinite-statistics  1 of 8 channel(s)" in LAST_OUT[0], LAST_OUT[0]
    code, err = _run(workdir, ["doctor", "hostile_factories:make_net", "--weights", str(tmp_path / "nan_stats.pt"),
                               "--fail-on", "never"], capsys)
    assert code == 0


def test_recalibrate_uses_the_mask_of_a_masked_batchnorm():
    from batchnorm.tools import recalibrate

    namespace = {}
    exec(FACTORY, namespace)
    model = namespace["make_masked"]()
    generator = torch.Generator().manual_seed(5)
    batches = []
    for n, length in ((4, 7), (3, 5)):
        x = torch.randn(n, 3, length, generator=generator, dtype=torch.float32) * 2 + 1
        mask = torch.rand(n, length, generator=generator) > 0.4
        mask[:, 0] = True
        x = torch.where(mask.unsqueeze(1), x, torch.full_like(x, 1e4))   # padding far off the data
        batches.append((x, mask))
    recalibrate(model, batches, forward=lambda m, batch: m(*batch))
    valid = np.concatenate([x.double().numpy().transpose(1, 0, 2)[:, mask.numpy()] for x, mask in batches], axis=1)
    np.testing.assert_allclose(model.norm.running_mean.numpy(), valid.mean(1), rtol=1e-5)
    np.testing.assert_allclose(model.norm.running_var.numpy(), valid.var(1, ddof=1), rtol=1e-5)


# ------------------------------------------------------------------------------------ environment variables
BAD_ENVIRONMENT = [
    ("BATCHNORM_POOL_MB", "abc", "a finite number of MiB"),
    ("BATCHNORM_POOL_MB", "nan", "a finite number of MiB"),
    ("BATCHNORM_POOL_MB", "inf", "a finite number of MiB"),
    ("BATCHNORM_POOL_MB", "-5", "from 0 to 1048576"),
    ("BATCHNORM_PARALLEL_MIN_ELEMENTS", "abc", "an integer >= 0"),
    ("BATCHNORM_PARALLEL_MIN_ELEMENTS", "1.5e0", "an integer >= 0"),
    ("BATCHNORM_THREADING_LAYER", "gnu", "one of omp, workqueue, tbb"),
]


def test_invalid_environment_variables_are_named_with_their_accepted_range(workdir):
    """Each bad value makes `import batchnorm.nn` fail with the variable, its value and the accepted range; one
    process re-imports the configuration module once per value (a process per value would cost seconds each)."""
    script = textwrap.dedent(f"""
        import importlib, os, sys
        results = []
        for name, value, _ in {BAD_ENVIRONMENT!r}:
            os.environ[name] = value
            for module in [m for m in sys.modules if m.startswith("batchnorm")]:
                del sys.modules[module]
            try:
                import batchnorm.nn
                results.append("imported")
            except Exception as error:
                results.append(f"{{type(error).__name__}}: {{error}}")
            del os.environ[name]
        print("\\n".join(results))
        # the command: exit 2 and one line on stderr
        import contextlib, io
        os.environ["BATCHNORM_POOL_MB"] = "-5"
        for module in [m for m in sys.modules if m.startswith("batchnorm")]:
            del sys.modules[module]
        from batchnorm.cli import main
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(["doctor", "hostile_factories:make_net"])
        print(f"exit {{code}}")
        print(stderr.getvalue(), end="")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=workdir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(BAD_ENVIRONMENT) + 2, done.stdout
    for (name, value, accepted), line in zip(BAD_ENVIRONMENT, lines):
        assert line.startswith(f"ConfigurationError: environment variable {name}={value!r} is invalid"), line
        assert accepted in line, line
    assert lines[-2] == "exit 2", done.stdout
    assert lines[-1].startswith("batchnorm doctor: error: ") and "BATCHNORM_POOL_MB='-5'" in lines[-1], lines[-1]


def test_environment_variables_parse_in_one_place(monkeypatch):
    from batchnorm.kernels import config

    monkeypatch.setenv("BATCHNORM_PARALLEL_MIN_ELEMENTS", "1e5")
    assert config.integer_from_environment("BATCHNORM_PARALLEL_MIN_ELEMENTS", 7) == 100000
    monkeypatch.setenv("BATCHNORM_POOL_MB", "0")
    assert config.number_from_environment("BATCHNORM_POOL_MB", 256, 0, 1 << 20) == 0.0
    monkeypatch.delenv("BATCHNORM_POOL_MB")
    assert config.number_from_environment("BATCHNORM_POOL_MB", 256, 0, 1 << 20) == 256
    source = (Path(config.__file__).parent.parent)
    readers = [p.relative_to(source) for p in source.rglob("*.py")
               if "os.environ.get(\"BATCHNORM" in p.read_text() or "getenv(\"BATCHNORM" in p.read_text()]
    assert readers == [], f"BATCHNORM_* variables read outside kernels/config.py: {readers}"
